#!/usr/bin/python3
"""HTTP listener: proxying, RFC 9112 strictness, header rewriting, routes,
hash keys (and nginx compatibility), keep-alive both sides, retries,
timeouts, back-pressure, half-close, graceful stop.

The behaviour checked is gw's HTTP spec (protocol "http" listeners); every
test asserts exact statuses, headers, bodies and counts. Backends are
httpbackend.HttpBackend (threaded, in this process)."""

import email.utils
import hashlib
import json
import http.client
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
import httpbackend as hb  # noqa: E402
from gwtest import GwTestCase, T, pool, upstream, free_port, wait_until  # noqa: E402

MB = 1024 * 1024
LO = "127.0.0.1"

REASONS = {400: "Bad Request", 404: "Not Found", 408: "Request Timeout", 414: "URI Too Long",
           431: "Request Header Fields Too Large", 501: "Not Implemented", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported"}

NGINX = next((p for p in (shutil.which("nginx"), "/usr/sbin/nginx") if p and os.access(p, os.X_OK)), None)


# ----------------------------------------------------------------------------
# helpers

def host(hid, target, weight=1):
    """gwtest.host() that also takes an HttpBackend (anything with .address)."""
    if hasattr(target, "address") and not isinstance(target, gwtest.Backend):
        target = target.address
    return gwtest.host(hid, target, weight)


def http_listener(name="web", upstream_name="app", routes=None, port=None, http=None, hash_key=None):
    l = {"name": name, "listen": f"{LO}:{port or free_port()}", "protocol": "http"}
    if routes is not None:
        l["routes"] = routes
    else:
        l["upstream"] = upstream_name
    if http:
        l["http"] = http
    if hash_key:
        l["hash_key"] = hash_key
    return l


def raw_request(method="GET", target="/", headers=(("Host", "test"),), body=b"", version="HTTP/1.1"):
    head = f"{method} {target} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    return head.encode("latin-1") + body


def chunked(parts, trailers=()):
    out = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts if p)
    return out + b"0\r\n" + b"".join(f"{n}: {v}\r\n".encode() for n, v in trailers) + b"\r\n"


class Client:
    """A raw keep-alive client connection (socket + buffered reader)."""

    def __init__(self, port, timeout=None):
        self.s = hb.connect(port, timeout or T(5))
        self.rd = hb.Reader(self.s)

    def send(self, data):
        self.s.sendall(data)

    def response(self, method="GET"):
        return hb.read_response(self.rd, method)

    def request(self, method="GET", target="/", headers=(), body=None, host="test", version="HTTP/1.1"):
        hs = list(headers)
        if host is not None and not any(n.lower() == "host" for n, _ in hs):
            hs.insert(0, ("Host", host))
        if body is not None and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in hs):
            hs.append(("Content-Length", str(len(body))))
        self.send(raw_request(method, target, hs, body or b"", version))
        return self.response(method)

    def eof_within(self, secs):
        """True if the peer closes (EOF or reset) within secs and sends nothing more."""
        if self.rd.buf:
            return False
        self.s.settimeout(secs)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
                self.rd.buf += d
                return False
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def get(port, target="/", headers=(), host="test", method="GET", body=None, timeout=None):
    return hb.request(port, method, target, headers=list(headers), host=host, body=body, timeout=timeout or T(10))


def http_totals(gw):
    """Sum over workers of the http counters, plus the worker-level no_host and hash_fallbacks."""
    st = gw.status()
    tot = {"w_no_host": 0, "hash_fallbacks": 0}
    for w in st["workers"]:
        for k, v in w["http"].items():
            tot[k] = tot.get(k, 0) + v
        tot["w_no_host"] += w["no_host"]
        tot["hash_fallbacks"] += w["hash_fallbacks"]
    return tot


def delta(after, before):
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


class Blackhole:
    """A loopback listener whose accept queue is full: connects to it hang (SYNs dropped)."""

    def __init__(self):
        self.l = socket.socket()
        self.l.bind((LO, 0))
        self.l.listen(0)
        self.port = self.l.getsockname()[1]
        self.address = f"{LO}:{self.port}"
        self.fill = []
        for _ in range(2):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((LO, self.port))
            self.fill.append(s)
        time.sleep(0.05)

    def stop(self):
        for s in self.fill + [self.l]:
            s.close()


class HttpCase(GwTestCase):
    """GwTestCase plus HTTP backends and an http-listener gateway factory."""

    def setUp(self):
        super().setUp()
        self.addCleanup(self._check_crashes)

    def _check_crashes(self):
        for gw in self._gateways:
            for path in gw.logs:
                try:
                    with open(path, errors="replace") as f:
                        bad = [l for l in f if "killed by signal" in l]
                except OSError:
                    continue
                if bad:
                    raise AssertionError(f"gwd worker crashed ({path}):\n" + "".join(bad[:5]))

    def hb(self, name, **kw):
        b = hb.HttpBackend(name, **kw)
        self._backends.append(b)
        return b

    def http_gw(self, pools, listener=None, upstream_opts=None, upstreams=None, workers=1, http=None,
                hash_key=None, shm=None, start=True):
        """A gateway with one http listener (`web`, every request to upstream `app`, unless
        `listener` is given) and upstream `app` (pools); `upstreams`: more upstreams."""
        lst = listener if listener is not None else [http_listener(http=http, hash_key=hash_key)]
        if isinstance(lst, dict):
            lst = [lst]
        cfg = self.make_config(pools, workers=workers, upstream_opts=upstream_opts, listeners=lst,
                               shm=shm or {"max_upstreams": 16})
        if upstreams:
            cfg["upstreams"] += upstreams
        return self.gateway(cfg, start=start)

    def assertGwError(self, r, status, close=True):
        self.assertIsNotNone(r, f"no response (expected {status})")
        self.assertEqual(r.status, status, f"status; response {r!r} body {r.body[:200]!r}")
        self.assertEqual(r.version, "HTTP/1.1")
        self.assertEqual(r.reason, REASONS[status])
        self.assertEqual(r.header("Server"), "gw")
        self.assertIsNotNone(r.header("Date"))
        self.assertTrue((r.header("Content-Type") or "").startswith("text/plain"), r.headers)
        self.assertEqual(r.body, f"{status} {REASONS[status]}\n".encode())
        if close:
            self.assertIn("close", r.conn_tokens(), f"expected Connection: close: {r.headers}")

    def assertBackend(self, r, name, status=200):
        self.assertIsNotNone(r, "no response")
        self.assertEqual(r.status, status, f"{r!r} body {r.body[:300]!r}")
        j = r.json()
        self.assertEqual(j["backend"], name, f"answered by {j['backend']}, expected {name}: {j['target']}")
        return j


class SharedGwCase(HttpCase):
    """One gateway (and its backends) for the whole class: subclasses define
    configure(cls) which creates backends with cls.shared_hb() and returns
    (listeners, upstreams). Saves a gateway start per test."""

    @classmethod
    def shared_hb(cls, name, **kw):
        b = hb.HttpBackend(name, **kw)
        cls.shared_backends.append(b)
        return b

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.shared_backends = []
        cls.holder = types.SimpleNamespace(tmp=tempfile.mkdtemp(prefix=f"gwtest-{os.getpid()}-{cls.__name__}-"))
        cls.shm_name = gwtest.unique_shm_name()
        gwtest.remove_shm(cls.shm_name)
        cls.gw = None
        try:
            listeners, upstreams = cls.configure()
            cfg = {
                "workers": 1, "log_file": "", "log_level": "info", "shutdown_timeout_ms": 10000,
                "shm": {"name": cls.shm_name, "max_upstreams": 16, "max_pools": 32, "max_hosts": 256},
                "state_file": os.path.join(cls.holder.tmp, "state.json"),
                "listeners": listeners, "upstreams": upstreams,
            }
            cls.gw = gwtest.Gateway(cls.holder, cfg)
            cls.gw.start()
        except BaseException:
            cls._class_cleanup()
            raise

    @classmethod
    def _class_cleanup(cls):
        try:
            if cls.gw is not None:
                cls.gw.kill_all()
        finally:
            for b in cls.shared_backends:
                b.stop()
            gwtest.remove_shm(cls.shm_name)
            if not gwtest.KEEP:
                shutil.rmtree(cls.holder.tmp, ignore_errors=True)

    @classmethod
    def tearDownClass(cls):
        log = cls.gw.log_text() if cls.gw is not None else ""
        cls._class_cleanup()
        if "killed by signal" in log:
            raise AssertionError(f"gwd worker crashed during {cls.__name__}:\n" + gwtest.tail(log, 40))

    def tearDown(self):
        bad = [l for l in self.gw.log_text().splitlines() if "killed by signal" in l]
        if bad:
            self.fail("gwd worker crashed:\n" + "\n".join(bad))
        if self._failed():
            sys.stderr.write(f"\n--- {self.gw.log_path} ---\n{gwtest.tail(self.gw.log_text(), 30)}\n")


# ----------------------------------------------------------------------------
# 1. basic proxying

class BasicProxyTest(HttpCase):

    def test_get_head_post_put_content_length(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            r = c.request("GET", "/path/x?q=1&r=%20", headers=[("X-Custom", "v1"), ("X-Custom", "v2")])
            j = self.assertBackend(r, "alpha")
            self.assertEqual((j["method"], j["target"], j["version"]), ("GET", "/path/x?q=1&r=%20", "HTTP/1.1"))
            self.assertEqual([v for n, v in j["headers"] if n == "X-Custom"], ["v1", "v2"], "repeated fields, in order")
            self.assertEqual(j["body_len"], 0)
            self.assertFalse(any(n.lower() in ("content-length", "transfer-encoding") for n, _ in j["headers"]),
                             f"a GET without body got framing headers: {j['headers']}")
            # HEAD: the head says 5000 bytes, none follow (the next response parses cleanly)
            r = c.request("HEAD", "/h", headers=[("X-Be-Body-Size", "5000")])
            self.assertEqual(r.status, 200)
            self.assertEqual(r.header("Content-Length"), "5000")
            self.assertEqual(r.body, b"")
            self.assertEqual(a.last().method, "HEAD")
            body = os.urandom(300000)
            for m in ("POST", "PUT"):
                r = c.request(m, "/up", body=body)
                j = self.assertBackend(r, "alpha")
                self.assertEqual(j["method"], m)
                self.assertEqual(j["body_len"], len(body))
                self.assertEqual(j["body_sha256"], hashlib.sha256(body).hexdigest())
                self.assertEqual([v for n, v in j["headers"] if n.lower() == "content-length"], [str(len(body))])
                self.assertFalse(j["chunked"])
            # a body in the response too
            r = c.request("GET", "/d", headers=[("X-Be-Body-Size", "123457")])
            self.assertEqual(r.status, 200)
            self.assertEqual(r.header("Content-Length"), "123457")
            self.assertEqual(r.body, hb.pattern_bytes(123457))
        self.assertEqual(a.connections, 1, "one upstream connection for the whole keep-alive client connection")
        self.assertEqual(a.requests, 5)

    def test_chunked_request_forwarded_with_framing(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        parts = [os.urandom(1000), b"hello", os.urandom(70000)]
        data = b"".join(parts)
        with Client(gw.port) as c:
            c.send(raw_request("PUT", "/c", [("Host", "t"), ("Transfer-Encoding", "chunked")],
                               chunked(parts, trailers=[("X-Trailer", "t1")])))
            j = self.assertBackend(c.response(), "alpha")
            self.assertTrue(j["chunked"])
            self.assertEqual(j["chunks"], [1000, 5, 70000, 0], "chunk framing forwarded as sent")
            self.assertEqual(j["trailers"], [["X-Trailer", "t1"]])
            self.assertEqual(j["body_len"], len(data))
            self.assertEqual(j["body_sha256"], hashlib.sha256(data).hexdigest())
            self.assertEqual([v for n, v in j["headers"] if n.lower() == "transfer-encoding"], ["chunked"])
            self.assertFalse(any(n.lower() == "content-length" for n, _ in j["headers"]))
            # a known coding before chunked: accepted, the value forwarded as is
            c.send(raw_request("POST", "/g", [("Host", "t"), ("Transfer-Encoding", "gzip, chunked")], chunked([b"abc"])))
            j = self.assertBackend(c.response(), "alpha")
            self.assertEqual([v for n, v in j["headers"] if n.lower() == "transfer-encoding"], ["gzip, chunked"])
            self.assertEqual(j["body_len"], 3)
            # spellings that mean chunked (RFC 9110 5.6.1: empty list elements, case) go upstream
            # as plain "chunked", one line: a host must not read other framing than gw did
            for tes, want in (([("Transfer-Encoding", "chunked,")], "chunked"),
                              ([("Transfer-Encoding", " , CHUNKED")], "chunked"),
                              ([("Transfer-Encoding", "Chunked , ")], "chunked"),
                              ([("Transfer-Encoding", "gzip,"), ("Transfer-Encoding", ",Chunked")], "gzip, chunked"),
                              ([("Transfer-Encoding", 'gzip;x="a,b" ,chunked')], 'gzip;x="a,b", chunked')):
                c.send(raw_request("POST", "/te", [("Host", "t")] + tes, chunked([b"abcd"])))
                j = self.assertBackend(c.response("POST"), "alpha")
                self.assertEqual([v for n, v in j["headers"] if n.lower() == "transfer-encoding"], [want], tes)
                self.assertEqual((j["body_len"], j["chunks"]), (4, [4, 0]), tes)
            # chunked response to an HTTP/1.1 client: passed on chunked
            r = c.request("GET", "/r", headers=[("X-Be-Framing", "chunked"), ("X-Be-Body-Size", "200000"),
                                                ("X-Be-Chunk-Size", "7000")])
            self.assertEqual(r.status, 200)
            self.assertEqual(r.header("Transfer-Encoding"), "chunked")
            self.assertIsNone(r.header("Content-Length"))
            self.assertEqual(r.body, hb.pattern_bytes(200000))

    def test_204_304_no_body(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            for st in (204, 304, 204):
                r = c.request("GET", f"/s{st}", headers=[("X-Be-Status", str(st))])
                self.assertEqual(r.status, st)
                self.assertEqual(r.body, b"")
                self.assertIsNone(r.header("Transfer-Encoding"))
            j = self.assertBackend(c.request("GET", "/after"), "alpha")   # the connection is in sync
            self.assertEqual(j["target"], "/after")
            self.assertEqual(j["seq"], 4)
        # a Content-Length from the host: dropped on a 204 (RFC 9110 8.6: never sent with 204),
        # kept on a 304, where it describes the representation
        a.set(headers=[("Content-Length", "5")])
        with Client(gw.port) as c:
            for st, method, want in ((204, "GET", None), (304, "GET", "5"), (204, "HEAD", None), (304, "HEAD", "5")):
                r = c.request(method, f"/cl{st}", headers=[("X-Be-Status", str(st))])
                self.assertEqual((r.status, r.header("Content-Length")), (st, want), f"{method} {st}: {r.headers}")
                self.assertEqual(r.body, b"")

    def test_bodiless_response_content_length_sent_once(self):
        """A Content-Length kept on a bodiless response (304, HEAD) goes as one
        field line with its value: "5, 5", "005" or a repeated line are merged
        before forwarding (RFC 9110 8.6), as on a response with a body. They
        were passed on as sent, which strict clients (llhttp) refuse."""
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        for sent in ([("Content-Length", "5, 5")], [("Content-Length", "005")],
                     [("Content-Length", "5"), ("Content-Length", "5")]):
            a.set(headers=sent)
            with Client(gw.port) as c:
                for st, method in ((304, "GET"), (304, "HEAD"), (200, "HEAD")):
                    # A HEAD 200 from the backend carries its own Content-Length too (X-Be-Body-Size).
                    r = c.request(method, f"/cl{st}", headers=[("X-Be-Status", str(st)), ("X-Be-Body-Size", "5")])
                    self.assertEqual((r.status, r.body), (st, b""))
                    self.assertEqual(hb.hall(r.headers, "Content-Length"), ["5"], f"{sent} {method} {st}: {r.headers}")

    def test_transfer_coding_without_chunked_kept(self):
        """A response whose transfer codings do not end in chunked is read until
        the close and forwarded as it came, so its Transfer-Encoding must stay
        (RFC 9112 6.1, 7): without it the client takes the coded bytes as content."""
        a = self.hb("alpha", framing="close", body_size=5000, headers=[("Transfer-Encoding", "gzip")])
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            c.send(raw_request("GET", "/gz"))
            head = c.rd.read_head()
            self.assertIsNotNone(head)
            self.assertIn(b"\r\nTransfer-Encoding: gzip\r\n", head, head)
            self.assertNotIn(b"Content-Length", head, head)
            self.assertIn(b"\r\nConnection: close\r\n", head, head)
            self.assertEqual(c.rd.read_to_eof(), hb.pattern_bytes(5000))

    def test_transfer_coding_to_http10_client_is_502(self):
        """An HTTP/1.0 client cannot be sent Transfer-Encoding (RFC 9112 6.1) and gw
        does not undo gzip, so such an answer becomes a 502 rather than coded bytes the
        client would take as content; the host, whose answer was valid, is not blamed,
        and an HTTP/1.1 client of the same host still gets the coded answer."""
        a = self.hb("alpha", framing="close", body_size=500, headers=[("Transfer-Encoding", "gzip")])
        gw = self.http_gw([pool("p", [host("a", a)])], upstream_opts={"max_fails": 1})
        with Client(gw.port) as c:
            c.send(raw_request("GET", "/gz10", version="HTTP/1.0"))
            head = c.rd.read_head()
            self.assertIsNotNone(head)
            self.assertTrue(head.startswith(b"HTTP/1.1 502 "), head)
            self.assertNotIn(b"Transfer-Encoding", head, head)
        self.assertEqual(gwtest.find_host(gw.status(), "app/p/a")["failures"], 0, "the host was blamed")
        with Client(gw.port) as c:
            c.send(raw_request("GET", "/gz11"))
            head = c.rd.read_head()
            self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
            self.assertIn(b"\r\nTransfer-Encoding: gzip\r\n", head, head)
            self.assertEqual(c.rd.read_to_eof(), hb.pattern_bytes(500))

    def test_chunked_transfer_coding_to_http10_client_is_502(self):
        """The same with chunked last ("gzip, chunked"): gw de-chunks the body for an
        HTTP/1.0 client but does not undo gzip, so the client would take the coded
        bytes as content: a 502 too, the host not blamed."""
        a = self.hb("alpha", framing="chunked", body_size=500, headers=[("Transfer-Encoding", "gzip")])
        gw = self.http_gw([pool("p", [host("a", a)])], upstream_opts={"max_fails": 1})
        with Client(gw.port) as c:
            c.send(raw_request("GET", "/gzc10", version="HTTP/1.0"))
            head = c.rd.read_head()
            self.assertIsNotNone(head)
            self.assertTrue(head.startswith(b"HTTP/1.1 502 "), head)
        self.assertEqual(gwtest.find_host(gw.status(), "app/p/a")["failures"], 0, "the host was blamed")
        with Client(gw.port) as c:
            c.send(raw_request("GET", "/gzc11"))
            r = c.response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.header("Transfer-Encoding"), "gzip, chunked")
            self.assertEqual(r.body, hb.pattern_bytes(500))

    def test_fragment_in_target_is_400(self):
        """A '#' never belongs in a request-target (RFC 9112 3.2): 400, nothing forwarded."""
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        for target in ("/a#f", "/a?x=1#/../admin", "http://test/x#y"):
            with Client(gw.port) as c:
                c.send(raw_request("GET", target))
                head = c.rd.read_head()
                self.assertIsNotNone(head, target)
                self.assertTrue(head.startswith(b"HTTP/1.1 400 "), (target, head))
        self.assertEqual(a.requests, 0, "forwarded")

    def test_response_until_close_without_codings(self):
        """A response with neither Content-Length nor Transfer-Encoding is read
        until the close and forwarded with Connection: close, and no
        Transfer-Encoding field appears (gw once sent an empty one)."""
        a = self.hb("alpha", framing="close", body_size=3000)
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            c.send(raw_request("GET", "/plain"))
            head = c.rd.read_head()
            self.assertIsNotNone(head)
            self.assertNotIn(b"Transfer-Encoding", head, head)
            self.assertNotIn(b"Content-Length", head, head)
            self.assertIn(b"\r\nConnection: close\r\n", head, head)
            self.assertEqual(c.rd.read_to_eof(), hb.pattern_bytes(3000))

    def test_early_response_says_close(self):
        """A host that answers before the request body is all there (413, 401, ...):
        gw closes the client connection after that answer, as it cannot tell the
        rest of the body from a next request, and the answer says so."""
        a = self.hb("alpha", status=413, read_body=False)
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            c.send(raw_request("POST", "/up", [("Host", "t"), ("Content-Length", "100000")], b"x" * 1000))
            r = c.response("POST")
            self.assertEqual(r.status, 413)
            self.assertIn("close", r.conn_tokens(), f"no Connection: close before the close: {r.headers}")
            self.assertTrue(c.eof_within(T(5)))
        # a body that is all there keeps the connection
        with Client(gw.port) as c:
            r = c.request("POST", "/small", body=b"y" * 1000)
            self.assertEqual(r.status, 413)
            self.assertNotIn("close", r.conn_tokens())
            self.assertEqual(c.request("GET", "/next").status, 413)

    def test_100_continue_relayed(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            c.send(raw_request("POST", "/e", [("Host", "t"), ("Expect", "100-continue"), ("Content-Length", "5")]))
            c.s.settimeout(T(5))
            head = c.rd.read_head()
            self.assertIsNotNone(head, "no 100 Continue before the body was sent")
            self.assertTrue(head.startswith(b"HTTP/1.1 100 "), head)
            c.send(b"abcde")
            j = self.assertBackend(c.response("POST"), "alpha")
            self.assertEqual(j["body_len"], 5)
            self.assertEqual(hb.hget(j["headers"], "Expect"), "100-continue")

    def test_100_continue_from_http10_ignored(self):
        # RFC 9110 10.1.1: ignored from HTTP/1.0, so neither passed on (the host
        # would send a 100 for it) nor answered with a 100 by gw.
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            c.send(raw_request("POST", "/e10", [("Host", "t"), ("Expect", "100-continue"), ("Content-Length", "5")],
                               b"abcde", version="HTTP/1.0"))
            r = hb.read_response(c.rd, "POST", skip_interim=False)  # a 100 would be this
            j = self.assertBackend(r, "alpha")
            self.assertEqual(j["body_len"], 5)
            self.assertIsNone(hb.hget(j["headers"], "Expect"), j["headers"])
            self.assertTrue(c.eof_within(T(5)))

    @staticmethod
    def padded_head(total, target="/pad"):
        """A GET head of exactly `total` bytes (final CRLFCRLF included)."""
        base = f"GET {target} HTTP/1.1\r\nHost: t\r\nX-Pad: ".encode()
        pad = total - len(base) - 4
        return base + b"p" * pad + b"\r\n\r\n"

    def test_head_size_limits_default(self):
        """Default max_header_bytes (15360, HAProxy's bufsize less maxrewrite): a head of
        15360 bytes is forwarded whole (gw's added headers still fit), 15361 is 431."""
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        for size, want in ((8000, 200), (15000, 200), (15360, 200), (15361, 431)):
            with Client(gw.port) as c:
                c.send(self.padded_head(size))
                r = c.response()
                self.assertIsNotNone(r, f"head of {size} bytes: no response")
                self.assertEqual(r.status, want, f"head of {size} bytes (max_header_bytes 15360): {r!r}")
                if want == 200:
                    self.assertEqual(len(hb.hget(r.json()["headers"], "X-Pad")), size - 39)
                else:
                    self.assertGwError(r, 431)

    def test_head_size_limits_configured(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])], http={"max_header_bytes": 4096})
        for size, want in ((4096, 200), (4097, 431)):
            with Client(gw.port) as c:
                c.send(self.padded_head(size))
                r = c.response()
                self.assertEqual(r.status, want, f"head of {size} bytes (max_header_bytes 4096): {r!r}")
        # A request line that has not ended within max_header_bytes (below the
        # default max_request_line, 8192) is a line too long: 414, as nginx.
        with Client(gw.port) as c:
            c.send(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
            r = c.response()
            self.assertIsNotNone(r, "a 5000-byte request line: no response")
            self.assertGwError(r, 414)

    def _rss_sampler(self, pids):
        base = sum(gwtest.vm_rss_kb(p) for p in pids)
        peak = [base]
        stop = threading.Event()

        def run():
            while not stop.is_set():
                peak[0] = max(peak[0], sum(gwtest.vm_rss_kb(p) for p in pids))
                time.sleep(0.02)
        th = threading.Thread(target=run, daemon=True)
        th.start()

        def finish():
            stop.set()
            th.join(T(2))
            return peak[0] - base
        return finish

    def test_50mb_upload_streamed(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        size = 50 * MB
        finish = self._rss_sampler(gw.worker_pids())
        t0 = time.monotonic()
        with Client(gw.port, timeout=T(60)) as c:
            c.send(raw_request("POST", "/big", [("Host", "t"), ("Content-Length", str(size))]))
            for part in hb.iter_pattern(size, 1 << 20):
                c.s.sendall(part)
            j = self.assertBackend(c.response("POST"), "alpha")
        grown = finish()
        sys.stderr.write(f"[50 MB up in {time.monotonic() - t0:.1f}s, worker RSS +{grown} kB] ")
        self.assertEqual(j["body_len"], size)
        self.assertEqual(j["body_sha256"], hb.pattern_sha256(size))
        self.assertLess(grown, 16 * 1024, f"worker RSS grew by {grown} kB during a 50 MB upload (buffered?)")

    def test_50mb_download_streamed(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        size = 50 * MB
        finish = self._rss_sampler(gw.worker_pids())
        t0 = time.monotonic()
        for framing in ("length", "chunked"):
            h = hashlib.sha256()
            r = None
            with Client(gw.port, timeout=T(60)) as c:
                c.send(raw_request("GET", "/big", [("Host", "t"), ("X-Be-Body-Size", str(size)),
                                                   ("X-Be-Framing", framing)]))
                r = hb.read_response(c.rd, "GET", sink=h.update)
            self.assertEqual(r.status, 200)
            if framing == "length":
                self.assertEqual(r.header("Content-Length"), str(size))
            else:
                self.assertEqual(r.header("Transfer-Encoding"), "chunked")
            self.assertEqual(h.hexdigest(), hb.pattern_sha256(size), f"{framing} body differs")
        grown = finish()
        sys.stderr.write(f"[2 x 50 MB down in {time.monotonic() - t0:.1f}s, worker RSS +{grown} kB] ")
        self.assertLess(grown, 16 * 1024, f"worker RSS grew by {grown} kB during 50 MB downloads (buffered?)")

    def test_invalid_responses_502(self):
        """te_cl, bad status line, garbage, oversized head, bare LF: 502 (not retried by default)."""
        a = self.hb("alpha")
        b = self.hb("beta")
        gw = self.http_gw([pool("p", [host("a", a), host("b", b)])], upstream_opts={"max_fails": 100})
        before = http_totals(gw)
        n = 0
        for action in ("te_cl", "bad_status", "garbage", "huge_headers", "bare_lf"):
            a.set(action=action)
            b.set(action=action)
            r = get(gw.port, "/inv", headers=[("X-Be-Body-Size", "10")])
            self.assertGwError(r, 502, close=False)
            n += 1
        d = delta(http_totals(gw), before)
        self.assertEqual(a.requests + b.requests, n, "an invalid response is not retried unless invalid_response is in retry.on")
        self.assertEqual(d["bad_gateway"], n)

    def test_invalid_response_retried_when_listed(self):
        a = self.hb("alpha", action="te_cl")
        b = self.hb("beta")
        gw = self.http_gw([pool("p", [host("a", a), host("b", b)])],
                          upstream_opts={"max_fails": 100, "retry": {"on": ["error", "invalid_response"]}})
        for i in range(4):
            self.assertBackend(get(gw.port, f"/{i}"), "beta")
        self.assertGreaterEqual(a.requests, 1)

    def test_response_cut_mid_body(self):
        a = self.hb("alpha", action="close_mid_body", body_size=100000)
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            c.send(raw_request("GET", "/cut"))
            with self.assertRaises(hb.HttpError, msg="a cut body must not look complete"):
                c.response()


# ----------------------------------------------------------------------------
# 2. RFC 9112 strictness: one gateway for the class

RFC_CASES = [
    # name, request bytes, status
    ("te_and_cl", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    ("cl_and_te", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                  b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("cl_conflicting_lines", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("cl_conflicting_list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd", 400),
    ("cl_plus", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
    ("cl_negative", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\nabc", 400),
    ("cl_hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc", 400),
    ("cl_trailing_garbage", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3a\r\n\r\nabc", 400),
    ("cl_empty", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\nabc", 400),
    ("cl_overflow", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\nabc", 400),
    ("te_chunked_identity", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    ("te_identity_chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te_xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("te_xchunked_chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te_chunked_twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_chunked_param", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n", 400),
    ("te_ctl_before_chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400),
    ("te_space_before_colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_leading_space_line", b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: a\r\n\r\n0\r\n\r\n", 400),
    ("te_in_http10", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("chunk_size_not_hex", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk_size_negative", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk_size_overflow", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\na\r\n0\r\n\r\n", 400),
    ("chunk_size_empty", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk_line_bare_lf", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", 400),
    ("chunk_ext_bad", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk_data_overrun", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", 400),
    # the trailer section is fields too: over its limit (8 KiB) it is 431, as a head over max_header_bytes
    ("trailer_section_too_large", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
                                  b"X-Big: " + b"t" * 9000 + b"\r\n\r\n", 431),
    ("space_before_colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400),
    ("obs_fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),
    ("cr_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400),
    ("lf_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\nc: d\r\n\r\n", 400),
    ("nul_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400),
    ("del_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n", 400),
    ("bare_lf_head", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("missing_host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("duplicate_host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("bad_host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("host_port_only", b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", 400),
    ("double_space_request_line", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("bad_version", b"GET / HTTP/1.x\r\nHost: a\r\n\r\n", 400),
    ("request_line_too_long", b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    ("header_section_too_long", b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 900) for i in range(4)) + b"\r\n", 431),
    ("too_many_headers", b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(30)) + b"\r\n", 431),
    ("http2_request_line", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("http3_request_line", b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
    # absolute-form: the authority becomes Host, so it must be a valid host[:port] with a host
    ("absolute_no_authority", b"GET http:foo HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("absolute_empty_host", b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("absolute_port_only", b"GET http://:80/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("absolute_userinfo", b"GET http://u:p@a/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("absolute_bad_host", b"GET http://a%zz/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("connect_method", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
]


class RfcStrictnessTest(SharedGwCase):
    """Each malformed request gets its status, Connection: close, then the
    connection closes; nothing reaches the backend."""

    @classmethod
    def configure(cls):
        cls.backend_ = cls.shared_hb("alpha")
        return ([http_listener(http={"max_request_line": 1024, "max_header_bytes": 2048,
                                     "max_headers": 20, "client_header_timeout_ms": 5000})],
                [upstream("app", [pool("p", [host("a", cls.backend_)])])])

    def check_case(self, data, status):
        before = self.backend_.requests
        with Client(self.gw.port) as c:
            c.send(data)
            r = c.response("GET")
            self.assertGwError(r, status)
            self.assertTrue(c.eof_within(T(3)), "the connection stays open after a parse error")
        time.sleep(0.02)
        self.assertEqual(self.backend_.requests, before, f"a request reached the backend: {self.backend_.last()}")

    def test_valid_request_passes(self):
        """Control: the same gateway answers a well-formed request (the cases are not refused for another reason)."""
        r = get(self.gw.port, "/ok", host="a")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["backend"], "alpha")

    def test_bad_request_counted(self):
        before = http_totals(self.gw)
        self.check_case(RFC_CASES[0][1], 400)
        d = delta(http_totals(self.gw), before)
        self.assertEqual(d["bad_request"], 1)
        self.assertEqual(d["requests"], 1)

    def test_head_request_refused_without_content(self):
        """A HEAD refused for a bad or too large header section, after its whole
        request line, gets its error without content (RFC 9110 9.3.2), as nginx
        answers it: the head with its Content-Length, then the close. The body
        used to follow, read by the client as the start of a next answer."""
        # An error in the request line itself after the method (505, a bad or
        # overlong target) too: the body followed there (a review found it).
        for data, status in ((b"HEAD / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400),
                             (b"HEAD / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(30)) + b"\r\n",
                              431),
                             (b"HEAD /x HTTP/2.0\r\nHost: a\r\n\r\n", 505),
                             (b"HEAD /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
                             (b"HEAD http://u@h/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
                             (b"HEAD /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414)):
            with Client(self.gw.port) as c:
                c.send(data)
                r = c.response("HEAD")
                self.assertIsNotNone(r, f"no response to {data[:40]!r}")
                self.assertEqual(r.status, status)
                self.assertIn("close", r.conn_tokens())
                self.assertEqual(c.rd.read_to_eof(), b"", f"content after the head of a {status} to HEAD")

    def test_chunk_error_in_later_packet(self):
        """The bad chunk comes after the head was forwarded: the client still gets
        400 + close, and the backend never sees a complete body."""
        with Client(self.gw.port) as c:
            c.send(b"POST /late HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            time.sleep(0.2)
            c.send(b"zz\r\n")
            r = c.response("POST")
            self.assertGwError(r, 400)
            self.assertTrue(c.eof_within(T(3)))
        for rec in list(self.backend_.records):
            if rec.target == "/late":
                self.assertFalse(rec.complete, "the backend received a complete body for a bad chunked request")


class EarlyRefusalTest(SharedGwCase):
    """Bytes that cannot begin a request are refused (400, close) when they
    arrive, not when a whole head or client_header_timeout_ms has come."""

    @classmethod
    def configure(cls):
        cls.backend_ = cls.shared_hb("alpha")
        return ([http_listener(http={"client_header_timeout_ms": 10000})],
                [upstream("app", [pool("p", [host("a", cls.backend_)])])])

    def refused_at_once(self, *parts, status=400):
        with Client(self.gw.port) as c:
            for p in parts:
                c.send(p)
                time.sleep(0.05)
            c.s.settimeout(5)  # well before client_header_timeout_ms (10 s)
            r = c.response("GET")
            self.assertGwError(r, status)
            self.assertTrue(c.eof_within(T(3)), "the connection stays open after a bad request line")

    def test_tls_client_hello(self):
        # A TLS client on a plain HTTP port; the socket stays open.
        self.refused_at_once(b"\x16\x03\x01\x00\xa5\x01\x00")

    def test_bad_byte_after_a_valid_prefix(self):
        self.refused_at_once(b"GET /x HT", b"TP/1.1 ")

    def test_complete_bad_request_line(self):
        self.refused_at_once(b"GET /x HTTP/2.0\r\n", status=505)

    def test_valid_request_line_still_waits(self):
        with Client(self.gw.port) as c:
            c.send(b"GET /x HTTP/1.1\r\n")
            self.assertFalse(c.eof_within(1), "a valid request line was refused")
            c.send(b"Host: a\r\n\r\n")
            self.assertEqual(c.response().status, 200)


def _make_rfc_test(data, status):
    def t(self):
        self.check_case(data, status)
    return t


for _name, _data, _status in RFC_CASES:
    setattr(RfcStrictnessTest, f"test_{_name}_{_status}", _make_rfc_test(_data, _status))


# ----------------------------------------------------------------------------
# 3. header rewriting

class HeaderRewriteTest(HttpCase):

    def test_hop_by_hop_removed_request(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            r = c.request("GET", "/hop", headers=[
                ("Connection", "X-Secret, keep-alive, Host, Content-Length"), ("X-Secret", "s"),
                ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Upgrade", "h2c"),
                ("Proxy-Connection", "keep-alive"), ("X-Kept", "k"), ("Content-Length", "0")])
            j = self.assertBackend(r, "alpha")
        names = [n.lower() for n, _ in j["headers"]]
        for gone in ("connection", "x-secret", "keep-alive", "te", "upgrade", "proxy-connection"):
            self.assertNotIn(gone, names, f"hop-by-hop {gone} forwarded: {j['headers']}")
        self.assertEqual(hb.hget(j["headers"], "X-Kept"), "k")
        self.assertEqual(hb.hall(j["headers"], "Host"), ["test"], "Host named in Connection must stay")
        self.assertEqual(hb.hall(j["headers"], "Content-Length"), ["0"], "Content-Length named in Connection must stay")

    def test_hop_by_hop_removed_response(self):
        a = self.hb("alpha", headers=[("Connection", "X-Private"), ("X-Private", "p"), ("Keep-Alive", "timeout=9"),
                                      ("Proxy-Connection", "keep-alive"), ("Upgrade", "foo"), ("X-Public", "ok")])
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            r = c.request("GET", "/")
            self.assertEqual(r.status, 200)
            names = [n.lower() for n, _ in r.headers]
            for gone in ("x-private", "keep-alive", "proxy-connection", "upgrade"):
                self.assertNotIn(gone, names, f"hop-by-hop {gone} passed to the client: {r.headers}")
            self.assertEqual(r.header("X-Public"), "ok")
            self.assertNotIn("close", r.conn_tokens())
            self.assertEqual(c.request("GET", "/2").status, 200, "the client connection stays usable")

    def test_hop_by_hop_removed_request_trailers(self):
        """A field the request's Connection names is hop-by-hop in its chunked
        trailer section too, as are Connection, TE, Keep-Alive, ... there; the
        other trailer fields pass. A trailer line cut across packets is held
        until it is whole, then dropped or forwarded."""
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            c.send(raw_request("POST", "/t", [("Host", "t"), ("Connection", "X-Secret, keep-alive"),
                                             ("X-Secret", "h"), ("Transfer-Encoding", "chunked")]))
            c.send(b"5\r\nhello\r\n0\r\nX-Kept: 1\r\nX-Sec")
            time.sleep(0.2)
            c.send(b"ret: s\r\nTE: trailers\r\nConnection: close\r\nKeep-Alive: 1\r\n"
                   b"Proxy-Connection: x\r\nUpgrade: h2c\r\nX-Last: 2\r\n\r\n")
            j = self.assertBackend(c.response(), "alpha")
            self.assertEqual(j["body_len"], 5)
            self.assertEqual(j["trailers"], [["X-Kept", "1"], ["X-Last", "2"]])
            self.assertNotIn("x-secret", [n.lower() for n, _ in j["headers"]])
            self.assertEqual(c.request("GET", "/2").status, 200, "the client connection stays usable")

    def test_hop_by_hop_removed_response_trailers(self):
        """The same for a response's trailers: the field its Connection names
        and the fixed hop-by-hop names do not reach the client; the rest do,
        byte for byte."""
        lst = socket.socket()
        lst.bind((LO, 0))
        lst.listen(4)
        self.addCleanup(lst.close)

        def serve():
            c, _ = lst.accept()
            with c:
                hb.Reader(c).read_head()
                c.sendall(b"HTTP/1.1 200 OK\r\nConnection: X-Private\r\nX-Private: h\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Pub: 1\r\nx-priv")
                time.sleep(0.2)
                c.sendall(b"ate: p\r\nConnection: close\r\nTransfer-Encoding: gzip\r\nX-End: 2\r\n\r\n")
                time.sleep(T(1))
        th = threading.Thread(target=serve, daemon=True)
        th.start()
        gw = self.http_gw([pool("p", [host("a", f"{LO}:{lst.getsockname()[1]}")])])
        with Client(gw.port) as c:
            c.send(raw_request("GET", "/tr"))
            head = c.rd.read_head()
            self.assertNotIn(b"x-private", head.lower())
            self.assertEqual(c.rd.read_until(b"\r\n\r\n", limit=4096),
                             b"2\r\nok\r\n0\r\nX-Pub: 1\r\nX-End: 2\r\n\r\n")
        th.join(T(5))

    def test_hop_by_hop_removed_interim_response(self):
        """A 1xx is a message too: the fields its Connection names, Connection
        itself and Keep-Alive are not relayed (RFC 9110 7.6.1); the rest are."""
        lst = socket.socket()
        lst.bind((LO, 0))
        lst.listen(4)
        self.addCleanup(lst.close)

        def serve():
            c, _ = lst.accept()
            with c:
                hb.Reader(c).read_head()
                c.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n"
                          b"Connection: X-Hop, close\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\n"
                          b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                time.sleep(T(1))
        th = threading.Thread(target=serve, daemon=True)
        th.start()
        gw = self.http_gw([pool("p", [host("a", f"{LO}:{lst.getsockname()[1]}")])])
        with Client(gw.port) as c:
            c.send(raw_request("GET", "/hints"))
            self.assertEqual(c.rd.read_head(),
                             b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
            r = c.response()
            self.assertEqual((r.status, r.body), (200, b"ok"))
        th.join(T(5))

    def test_final_head_shorter_than_interim_in_a_later_packet(self):
        """A 1xx (here a 103 with Link fields), then, in a later packet, a final
        head shorter than it: the search for the final head's end must start at
        its first byte, not where the 1xx ended (the buffer starts over once the
        1xx is sent). It used to wait for more bytes until read_timeout_ms."""
        lst = socket.socket()
        lst.bind((LO, 0))
        lst.listen(4)
        self.addCleanup(lst.close)

        def serve():
            c, _ = lst.accept()
            with c:
                hb.Reader(c).read_head()
                c.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n"
                          b"Link: </script.js>; rel=preload; as=script\r\n\r\n")
                time.sleep(0.3)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                time.sleep(T(2))
        th = threading.Thread(target=serve, daemon=True)
        th.start()
        gw = self.http_gw([pool("p", [host("a", f"{LO}:{lst.getsockname()[1]}")])],
                          upstream_opts={"read_timeout_ms": 1500, "retry": {"on": ["error"]}})
        with Client(gw.port) as c:
            c.send(raw_request("GET", "/hints-then-short"))
            self.assertTrue(c.rd.read_head().startswith(b"HTTP/1.1 103 Early Hints\r\n"))
            r = c.response()
            self.assertEqual((r.status, r.body), (200, b"ok"))
        th.join(T(5))

    def test_interim_connection_close_not_reused(self):
        """Connection: close on a 1xx closes the connection (RFC 9112 9.6), even
        when the final response says nothing of it: it is not kept for the next
        request, which goes on a new connection (the host here keeps the old one
        open a while, then closes it, as a late FIN would)."""
        lst = socket.socket()
        lst.bind((LO, 0))
        lst.listen(4)
        self.addCleanup(lst.close)
        seen = []  # (connection number, target)

        def conn(n, c):
            with c:
                c.settimeout(T(2))
                rd = hb.Reader(c)
                try:
                    while (head := rd.read_head()) is not None:
                        seen.append((n, head.split(b" ")[1]))
                        interim = b"HTTP/1.1 103 Early Hints\r\nConnection: close\r\n\r\n" if n == 0 else b""
                        c.sendall(interim + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                except OSError:
                    pass

        def serve():
            for n in range(2):
                try:
                    c, _ = lst.accept()
                except OSError:
                    return
                threading.Thread(target=conn, args=(n, c), daemon=True).start()
        threading.Thread(target=serve, daemon=True).start()
        gw = self.http_gw([pool("p", [host("a", f"{LO}:{lst.getsockname()[1]}")])])
        with Client(gw.port) as c:
            self.assertEqual(c.request("GET", "/1").status, 200)
            self.assertEqual(c.request("GET", "/2").status, 200)
        self.assertEqual(seen, [(0, b"/1"), (1, b"/2")])

    def test_date_added_when_missing(self):
        """RFC 9110 6.6.1: a recipient with a clock that forwards a response
        without Date adds one; a host's own Date is passed on as it is."""
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            for target, st in (("/plain", "200"), ("/nc", "204"), ("/chunk", "200")):
                hs = [("X-Be-Status", st)] + ([("X-Be-Framing", "chunked")] if target == "/chunk" else [])
                r = c.request("GET", target, headers=hs)
                dates = [v for n, v in r.headers if n.lower() == "date"]
                self.assertEqual(len(dates), 1, f"{target}: {r.headers}")
                self.assertLess(abs(email.utils.parsedate_to_datetime(dates[0]).timestamp() - time.time()), 5)
            a.set(headers=[("Date", "Sun, 06 Nov 1994 08:49:37 GMT")])
            r = c.request("GET", "/own")
            self.assertEqual([v for n, v in r.headers if n.lower() == "date"], ["Sun, 06 Nov 1994 08:49:37 GMT"])

    def test_forwarded_headers(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            j = self.assertBackend(c.request("GET", "/xff"), "alpha")
            self.assertEqual(hb.hall(j["headers"], "X-Forwarded-For"), ["127.0.0.1"])
            self.assertEqual(hb.hall(j["headers"], "X-Real-IP"), ["127.0.0.1"])
            self.assertEqual(hb.hall(j["headers"], "X-Forwarded-Proto"), ["http"])
            # incoming XFF lines are merged and the client appended; spoofed X-Real-IP/Proto replaced
            j = self.assertBackend(c.request("GET", "/xff2", headers=[
                ("X-Forwarded-For", "1.2.3.4"), ("X-Real-IP", "6.6.6.6"), ("X-Forwarded-For", "5.6.7.8, 9.9.9.9"),
                ("X-Forwarded-Proto", "https")]), "alpha")
            self.assertEqual(hb.hall(j["headers"], "X-Forwarded-For"), ["1.2.3.4, 5.6.7.8, 9.9.9.9, 127.0.0.1"])
            self.assertEqual(hb.hall(j["headers"], "X-Real-IP"), ["127.0.0.1"])
            self.assertEqual(hb.hall(j["headers"], "X-Forwarded-Proto"), ["http"])
            # Host kept exactly; the upstream request is HTTP/1.1 even for an HTTP/1.0 client
            j = self.assertBackend(c.request("GET", "/h", host="Example.COM:8080"), "alpha")
            self.assertEqual(hb.hall(j["headers"], "Host"), ["Example.COM:8080"])
        with Client(gw.port) as c:
            j = self.assertBackend(c.request("GET", "/v10", version="HTTP/1.0", host="h10"), "alpha")
            self.assertEqual(j["version"], "HTTP/1.1")
            self.assertEqual(hb.hall(j["headers"], "Host"), ["h10"])

    def test_underscore_fields_dropped(self):
        """As nginx by default: request fields whose names hold '_' are not passed
        upstream, since CGI, WSGI and PHP hosts read '-' and '_' alike
        ("X_Consumer_Username" would pass for the field gw sets);
        http.underscores_in_headers: true passes them."""
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        hs = [("X_Consumer_Username", "mallory"), ("Content_Length", "5"), ("X-Plain", "1"), ("Foo_Bar", "2")]
        with Client(gw.port) as c:
            j = self.assertBackend(c.request("GET", "/u", headers=hs), "alpha")
            names = [n.lower() for n, _ in j["headers"]]
            for n in ("x_consumer_username", "content_length", "foo_bar"):
                self.assertNotIn(n, names, j["headers"])
            self.assertEqual(hb.hall(j["headers"], "X-Plain"), ["1"])
        gw2 = self.http_gw([pool("p", [host("a", a)])], http={"underscores_in_headers": True})
        with Client(gw2.port) as c:
            j = self.assertBackend(c.request("GET", "/u", headers=hs), "alpha")
            self.assertEqual(hb.hall(j["headers"], "Foo_Bar"), ["2"])
            # ...but not a spelling of a field gw sets itself
            self.assertEqual(hb.hall(j["headers"], "X_Consumer_Username"), [])

    def test_set_host_and_absolute_form(self):
        a = self.hb("alpha")
        b = self.hb("beta")
        routes = [{"name": "rw", "host": "rewrite.test", "path": "/", "upstream": "app", "set_host": "backend.internal"},
                  {"name": "abs", "host": "abs.example", "path": "/", "upstream": "other"},
                  {"name": "any", "host": "*", "path": "/", "upstream": "app"}]
        gw = self.http_gw([pool("p", [host("a", a)])], listener=http_listener(routes=routes),
                          upstreams=[upstream("other", [pool("p", [host("b", b)])])])
        with Client(gw.port) as c:
            j = self.assertBackend(c.request("GET", "/x", host="rewrite.test"), "alpha")
            self.assertEqual(hb.hall(j["headers"], "Host"), ["backend.internal"])
            # absolute-form: the authority is the host (routing and Host), origin-form upstream
            c.send(raw_request("GET", "http://abs.example/p/q?x=1", [("Host", "ignored.test")]))
            j = self.assertBackend(c.response(), "beta")
            self.assertEqual(j["target"], "/p/q?x=1")
            self.assertEqual(hb.hall(j["headers"], "Host"), ["abs.example"])
            c.send(raw_request("GET", "http://abs.example?y=2", [("Host", "abs.example")]))
            j = self.assertBackend(c.response(), "beta")
            self.assertEqual(j["target"], "/?y=2")
            c.send(raw_request("GET", "http://abs.example", [("Host", "abs.example")]))
            j = self.assertBackend(c.response(), "beta")
            self.assertEqual(j["target"], "/")
            # OPTIONS with an empty path and no query is about the server: "*" (RFC 9112 3.2.4)
            c.send(raw_request("OPTIONS", "http://abs.example:8001", [("Host", "abs.example:8001")]))
            j = self.assertBackend(c.response("OPTIONS"), "beta")
            self.assertEqual((j["method"], j["target"]), ("OPTIONS", "*"))
            self.assertEqual(hb.hall(j["headers"], "Host"), ["abs.example:8001"])
            for t, want in (("http://abs.example/", "/"), ("http://abs.example?q", "/?q")):
                c.send(raw_request("OPTIONS", t, [("Host", "abs.example")]))
                self.assertEqual(self.assertBackend(c.response("OPTIONS"), "beta")["target"], want, t)


# ----------------------------------------------------------------------------
# 4. routes

class RouteTest(SharedGwCase):

    @classmethod
    def configure(cls):
        names = ["exact", "v1", "suffix", "deep", "any", "static", "img", "empty"]
        cls.bk = {n: cls.shared_hb(n) for n in names}
        routes = [
            {"name": "exact", "host": "api.example.com", "path": "/", "upstream": "u_exact"},
            {"name": "v1", "host": "api.example.com", "path": "/v1/", "upstream": "u_v1"},
            {"name": "suffix", "host": "*.example.com", "upstream": "u_suffix"},
            {"name": "deep", "host": "*.deep.example.com", "upstream": "u_deep"},
            {"name": "any", "host": "*", "path": "/", "upstream": "u_any"},
            {"name": "static", "host": "*", "path": "/static/", "upstream": "u_static"},
            {"name": "img", "path": "/static/img/", "upstream": "u_img"},
            {"name": "empty", "host": "empty.test", "path": "/", "upstream": "u_empty"},
        ]
        strict = [{"name": "only", "host": "only.example", "path": "/x/", "upstream": "u_exact"}]
        return ([http_listener("web", routes=routes), http_listener("strict", routes=strict)],
                [upstream(f"u_{n}", [pool("p", [host(n, cls.bk[n])])]) for n in names])

    def route_of(self, c, target, hostname, raw=None):
        if raw is not None:
            c.send(raw)
            r = c.response()
        else:
            r = c.request("GET", target, host=hostname)
        if r.status == 301:  # a route's path without its final '/'
            return f"301 {r.header('Location')}"
        self.assertEqual(r.status, 200, f"{hostname} {target}: {r!r} {r.body[:100]!r}")
        return r.json()["backend"]

    def test_host_and_path_matching(self):
        cases = [
            ("api.example.com", "/", "exact"),
            ("api.example.com", "/other", "exact"),
            ("API.Example.COM:8080", "/v1/users", "v1"),
            ("api.example.com", "/v1x", "exact"),              # "/v1/" is a prefix of the path only with the slash
            ("api.example.com", "/v1", "301 /v1/"),            # ...and "/v1" is sent to it (nginx's auto_redirect)
            ("api.example.com", "/v1?x=/v1/", "301 /v1/?x=/v1/"),  # the query is not part of the path
            ("www.example.com", "/v1/x", "suffix"),            # the suffix host's own routes only
            ("a.b.example.com", "/", "suffix"),
            ("x.deep.example.com", "/", "deep"),               # the longest suffix wins
            ("deep.example.com", "/", "suffix"),               # "*.deep.example.com" does not match the bare suffix
            ("example.com", "/", "any"),                       # nor "*.example.com"
            ("other.org", "/", "any"),
            ("other.org", "/static/a.css", "static"),
            ("other.org", "/static/img/a.png", "img"),         # the longest prefix wins
            ("other.org", "/static", "301 /static/"),
            ("other.org", "/stati", "any"),
            ("other.org", "/STATIC/a", "any"),                 # paths are case-sensitive
            ("other.org", "/%73tatic/a", "static"),            # the normalised path: %XX decoded,
            ("other.org", "//static/a", "static"),             # slashes merged,
            ("other.org", "/x/../static/a", "static"),         # dot segments resolved (nginx's $uri)
            ("other.org", "/static/img?x", "301 /static/img/?x"),
            ("other.org", "/static/im", "static"),
        ]
        got = []
        with Client(self.gw.port) as c:
            for h, t, want in cases:
                got.append((h, t, self.route_of(c, t, h), want))
            # absolute-form: the authority decides
            got.append(("abs", "http://api.example.com/v1/z",
                        self.route_of(c, None, None, raw_request("GET", "http://api.example.com/v1/z",
                                                                 [("Host", "other.org")])), "v1"))
        wrong = [g for g in got if g[2] != g[3]]
        self.assertFalse(wrong, "routed wrong (host, target, got, want): " + repr(wrong))

    def test_no_route_404_keeps_connection(self):
        strict_port = self.gw.ports[1]
        before = http_totals(self.gw)
        with Client(strict_port) as c:
            r = c.request("GET", "/x/a", host="nope.example")
            self.assertGwError(r, 404, close=False)
            self.assertNotIn("close", r.conn_tokens())
            r = c.request("GET", "/y", host="only.example")
            self.assertGwError(r, 404, close=False)
            r = c.request("POST", "/zz", host="other", body=b"a body to skip")
            self.assertGwError(r, 404, close=False)
            j = self.assertBackend(c.request("GET", "/x/a", host="only.example"), "exact")
            self.assertEqual(j["target"], "/x/a")
        d = delta(http_totals(self.gw), before)
        self.assertEqual(d["no_route"], 3)
        self.assertEqual(d["requests"], 4)

    def test_refused_request_with_a_bad_body_still_gets_its_answer(self):
        """A request refused before it is sent (no route, a path above the
        root) whose chunked body is already bad: 400, then close. The body's
        400 used to be dropped by the refusal's own answer (nothing at all)."""
        strict_port = self.gw.ports[1]
        for target, host_name in (("/x/a", "nope.example"), ("/../x", "only.example")):
            with self.subTest(target=target):
                with Client(strict_port) as c:
                    c.send(f"POST {target} HTTP/1.1\r\nHost: {host_name}\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "5\r\nhelloXX".encode())
                    r = c.response()
                    self.assertGwError(r, 400, close=True)

    def test_no_usable_host_503(self):
        self.assertGwctlOk(self.gw, "down", "host", "u_empty/p", "empty")
        before = http_totals(self.gw)
        r = get(self.gw.port, "/", host="empty.test")
        self.assertGwError(r, 503, close=False)
        d = delta(http_totals(self.gw), before)
        self.assertEqual(d["no_host"], 1, "http.no_host")
        self.assertEqual(d["w_no_host"], 1, "worker no_host")
        self.assertEqual(self.bk["empty"].requests, 0)
        # the others still work
        with Client(self.gw.port) as c:
            self.assertEqual(self.route_of(c, "/", "api.example.com"), "exact")


# ----------------------------------------------------------------------------
# 5. hash keys

class HashKeyTest(SharedGwCase):

    @classmethod
    def configure(cls):
        cls.bs = [cls.shared_hb(f"h{i}") for i in range(4)]
        routes = [{"name": "hdr", "path": "/h/", "upstream": "app", "hash_key": "header:X-User"},
                  {"name": "ck", "path": "/c/", "upstream": "app", "hash_key": "cookie:sid"},
                  {"name": "arg", "path": "/a/", "upstream": "app", "hash_key": "arg:k"},
                  {"name": "uri", "path": "/u/", "upstream": "app", "hash_key": "uri"}]
        return ([http_listener(routes=routes)],
                [upstream("app", [pool("p", [host(f"h{i}", b) for i, b in enumerate(cls.bs)], method="chash")])])

    def sticky(self, make):
        """make(key) -> (target, headers); every key must land on one backend."""
        seen = {}
        keys = [f"key-{i}" for i in range(12)]
        with Client(self.gw.port) as ka:
            for rnd in range(3):
                for k in keys:
                    t, hs = make(k)
                    if rnd == 1:
                        r = ka.request("GET", t, headers=hs)        # kept-alive connection
                    else:
                        r = get(self.gw.port, t, headers=hs)        # a new connection each
                    self.assertEqual(r.status, 200)
                    seen.setdefault(k, set()).add(r.json()["backend"])
        split = {k: v for k, v in seen.items() if len(v) != 1}
        self.assertFalse(split, f"keys reached several backends: {split}")
        used = set().union(*seen.values())
        self.assertGreaterEqual(len(used), 2, f"12 keys all on {used}: not hashed?")
        return seen

    def test_header_key(self):
        before = http_totals(self.gw)
        self.sticky(lambda k: ("/h/x", [("X-User", k)]))
        self.assertEqual(delta(http_totals(self.gw), before)["hash_fallbacks"], 0)

    def test_cookie_key(self):
        self.sticky(lambda k: ("/c/x", [("Cookie", f"a=1; sid={k}; b=2")]))

    def test_arg_key(self):
        self.sticky(lambda k: (f"/a/x?z=1&k={k}&y=2", []))

    def test_uri_key(self):
        self.sticky(lambda k: (f"/u/{k}?q=1", []))

    def test_uri_key_absolute_form(self):
        """nginx's $request_uri of "GET http://test/u/k?q=1" is "/u/k?q=1": both forms of one
        target hash alike (the scheme and authority used to be hashed too)."""
        seen = self.sticky(lambda k: (f"/u/{k}?q=1", []))
        for k, backends in seen.items():
            r = get(self.gw.port, f"http://test/u/{k}?q=1")
            self.assertEqual(r.status, 200)
            self.assertEqual({r.json()["backend"]}, backends, f"key {k}: absolute form went elsewhere")

    def test_missing_key_round_robin_counted(self):
        before = http_totals(self.gw)
        got = [get(self.gw.port, t, headers=hs).json()["backend"]
               for t, hs in [("/h/x", [])] * 4 + [("/c/x", [("Cookie", "other=1")])] * 4 + [("/a/x?kk=1", [])] * 4]
        d = delta(http_totals(self.gw), before)
        self.assertEqual(d["hash_fallbacks"], 12, "requests without their hash key must be counted")
        self.assertGreaterEqual(len(set(got)), 3, f"missing keys not balanced round robin: {got}")


@unittest.skipIf(NGINX is None, "nginx is not installed")
class NginxHttpHashTest(HttpCase):
    """gw (hash_key arg:k, chash) and nginx (hash $arg_k consistent) send each key to the same backend."""

    CONF = """daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log notice;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/cb; proxy_temp_path {tmp}/pt; fastcgi_temp_path {tmp}/ft;
    uwsgi_temp_path {tmp}/ut; scgi_temp_path {tmp}/st;
    keepalive_requests 100000;
    upstream u {{
        {hash}
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://u; proxy_next_upstream off;
            proxy_http_version 1.1; proxy_set_header Connection "";
        }}
    }}
}}
"""

    def start_nginx(self, servers, hash_directive="hash $arg_k consistent;"):
        ntmp = os.path.join(self.tmp, "nginx")
        os.makedirs(ntmp, exist_ok=True)
        for _ in range(5):
            port = free_port()
            conf = os.path.join(ntmp, "nginx.conf")
            with open(conf, "w") as f:
                f.write(self.CONF.format(tmp=ntmp, port=port, servers=servers, hash=hash_directive))
            out = open(os.path.join(ntmp, "out"), "ab")
            p = subprocess.Popen([NGINX, "-p", ntmp + "/", "-c", conf, "-e", os.path.join(ntmp, "error.log")],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
            out.close()

            def stop(p=p):
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(T(5))
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
            self.addCleanup(stop)
            deadline = time.monotonic() + T(10)
            while time.monotonic() < deadline and p.poll() is None:
                if gwtest.port_listening(port):
                    return port
                time.sleep(0.02)
            stop()
        self.fail("nginx did not start")

    def picks(self, port, keys, repeat=1):
        """{key: backend} for GET /p?x=1&k=KEY on one keep-alive connection; with repeat > 1
        each key is asked that many times in a row and the value is the list of answers."""
        out = {}
        conn = http.client.HTTPConnection(LO, port, timeout=T(10))
        try:
            for k in keys:
                got = []
                for _ in range(repeat):
                    conn.request("GET", f"/p?x=1&k={k}")
                    r = conn.getresponse()
                    body = r.read()
                    self.assertEqual(r.status, 200, f"port {port} key {k}: {body[:200]!r}")
                    got.append(json.loads(body)["backend"])
                    if r.will_close:
                        conn.close()
                        conn = http.client.HTTPConnection(LO, port, timeout=T(10))
                out[k] = got[0] if repeat == 1 else got
        finally:
            conn.close()
        return out

    def test_same_backend_as_nginx(self):
        weights = [1, 2, 3]
        bs = [self.hb(f"n{i}") for i in range(3)]
        servers = "\n".join(f"        server {b.address} weight={w};" for b, w in zip(bs, weights))
        nport = self.start_nginx(servers)
        gw = self.http_gw([pool("p", [host(f"n{i}", b, w) for i, (b, w) in enumerate(zip(bs, weights))],
                                method="chash")], hash_key="arg:k")
        keys = [f"user-{i}" for i in range(280)] + [f"a%20b{i}" for i in range(10)] + [f"K{i}.x_y~" for i in range(10)]
        # Keys past 128 bytes with a common first 128 (gw hashed only those, so all of
        # them went to one host).
        keys += ["p" * 128 + f"-{i}" for i in range(30)] + [f"{i}-" + "q" * (100 + 37 * i) for i in range(30)]

        ngx = self.picks(nport, keys)
        gwp = self.picks(gw.port, keys)
        self.assertEqual(len(set(ngx.values())), 3, "nginx did not use every backend")
        diff = [(k, ngx[k], gwp[k]) for k in keys if ngx[k] != gwp[k]]
        self.assertFalse(diff, f"{len(diff)} of {len(keys)} keys differ (key, nginx, gw): {diff[:10]}")

    def cookie_picks(self, port, cookies):
        """{cookie header: backend} for GET /p with that Cookie field, on one connection."""
        out = {}
        conn = http.client.HTTPConnection(LO, port, timeout=T(10))
        try:
            for c in cookies:
                conn.request("GET", "/p", headers={"Cookie": c})
                r = conn.getresponse()
                body = r.read()
                self.assertEqual(r.status, 200, f"port {port} cookie {c!r}: {body[:200]!r}")
                out[c] = json.loads(body)["backend"]
        finally:
            conn.close()
        return out

    def test_cookie_key_same_backend_as_nginx(self):
        """hash_key cookie:k against nginx's hash $cookie_k: the name matched
        case-insensitively, blanks around '=', the value raw (quotes and
        blanks before ';' kept), pairs after ',' too. gw read the cookie as
        its gray rules do (case-sensitive, quotes dropped, no blank before
        '='): those keys went elsewhere, or round robin."""
        bs = [self.hb(f"n{i}") for i in range(4)]
        servers = "\n".join(f"        server {b.address};" for b in bs)
        nport = self.start_nginx(servers, "hash $cookie_k consistent;")
        gw = self.http_gw([pool("p", [host(f"n{i}", b) for i, b in enumerate(bs)], method="chash")],
                          hash_key="cookie:k")
        forms = ["k={v}", "K={v}", "k = {v}", 'k="{v}"', "a=1; K={v}", "a=1, k={v}", "kk=1; k={v}",
                 "k={v} ; x=1", "k={v},x=1", "x=1;k={v}", "sid=1; k=  {v}"]
        cookies = [f.format(v=f"user-{i}") for f in forms for i in range(25)]
        ngx = self.cookie_picks(nport, cookies)
        gwp = self.cookie_picks(gw.port, cookies)
        self.assertEqual(len(set(ngx.values())), 4, "nginx did not use every backend")
        diff = [(c, ngx[c], gwp[c]) for c in cookies if ngx[c] != gwp[c]]
        self.assertFalse(diff, f"{len(diff)} of {len(cookies)} cookies differ (cookie, nginx, gw): {diff[:10]}")

    def test_same_backend_as_nginx_most_hosts_down(self):
        """20 hosts, 18 of them down (nginx `down`, gwctl down host): a key whose point is a
        down host's walks on over the following points, 21 in all, then falls back to round
        robin, in both. Keys that nginx hashes (the same host twice in a row; round robin
        alternates between the two live hosts) must go to that host in gw too."""
        live = [self.hb(f"n{i}") for i in range(2)]
        addrs = [b.address for b in live] + [f"{LO}:{free_port()}" for _ in range(18)]
        servers = "\n".join(f"        server {a}{'' if i < 2 else ' down'};" for i, a in enumerate(addrs))
        nport = self.start_nginx(servers)
        gw = self.http_gw([pool("p", [host(f"h{i}", a) for i, a in enumerate(addrs)], method="chash")],
                          hash_key="arg:k")
        for i in range(2, 20):
            rc, _, err = gw.gwctl("down", "host", "app/p", f"h{i}")
            self.assertEqual(rc, 0, err)
        keys = [f"key{i}" for i in range(400)]
        ngx = self.picks(nport, keys, repeat=2)
        gwp = self.picks(gw.port, keys, repeat=2)
        hashed = [k for k in keys if ngx[k][0] == ngx[k][1]]
        self.assertGreater(len(hashed), 200, "nginx hashed few keys: the test shows little")
        self.assertLess(len(hashed), len(keys), "nginx fell back on no key: the 21-point limit is not exercised")
        diff = [(k, ngx[k], gwp[k]) for k in hashed if gwp[k] != ngx[k]]
        self.assertFalse(diff, f"{len(diff)} of {len(hashed)} hashed keys differ (key, nginx, gw): {diff[:10]}")


# ----------------------------------------------------------------------------
# 6. client keep-alive and pipelining

class ClientKeepAliveTest(HttpCase):

    def test_pipelining_in_order(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        reqs = []
        for i in range(10):
            if i % 3 == 1:
                body = f"body-{i}".encode() * (i + 1)
                reqs.append(raw_request("POST", f"/p{i}", [("Host", "t"), ("Content-Length", str(len(body)))], body))
            elif i % 3 == 2:
                reqs.append(raw_request("POST", f"/p{i}", [("Host", "t"), ("Transfer-Encoding", "chunked")],
                                        chunked([b"x" * i, b"y"])))
            else:
                reqs.append(raw_request("GET", f"/p{i}", [("Host", "t"), ("X-Be-Body-Size", str(1000 * i))]))
        with Client(gw.port) as c:
            c.send(b"".join(reqs))
            for i in range(10):
                r = c.response()
                self.assertIsNotNone(r, f"connection closed before response {i}")
                self.assertEqual(r.status, 200)
                if i % 3 == 0:
                    self.assertEqual(r.body, hb.pattern_bytes(1000 * i), f"response {i} body")
                    self.assertEqual(a.records[i].target, f"/p{i}")
                else:
                    j = r.json()
                    self.assertEqual(j["target"], f"/p{i}", f"response {i} out of order")
                    self.assertEqual(j["body_len"], len(f"body-{i}") * (i + 1) if i % 3 == 1 else i + 1)
            self.assertEqual(c.request("GET", "/last").json()["target"], "/last")
        self.assertEqual([r.target for r in a.records], [f"/p{i}" for i in range(10)] + ["/last"])

    def test_heads_in_pieces(self):
        """Request heads that arrive in pieces (byte by byte, split inside the final CRLFCRLF)
        on a kept-alive connection, each the same size as the one before."""
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        req = raw_request("GET", "/same", [("Host", "t")])
        with Client(gw.port) as c:
            c.send(req)
            self.assertEqual(c.response().json()["target"], "/same")
            for b in req:                       # byte by byte
                c.send(bytes([b]))
                time.sleep(0.003)
            self.assertEqual(c.response().json()["target"], "/same")
            for cut in (len(req) - 1, len(req) - 2, len(req) - 3, 5):
                c.send(req[:cut])
                time.sleep(0.05)
                c.send(req[cut:])
                r = c.response()
                self.assertEqual(r.json()["target"], "/same", f"split at {cut}")
            # a body split from its head, then a pipelined request right behind it
            c.send(raw_request("POST", "/b", [("Host", "t"), ("Content-Length", "6")]))
            time.sleep(0.05)
            c.send(b"abc")
            time.sleep(0.05)
            c.send(b"def" + req)
            self.assertEqual(c.response().json()["body_len"], 6)
            self.assertEqual(c.response().json()["target"], "/same")
        self.assertEqual(a.requests, 8)

    def test_http10(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:     # no keep-alive: answer, then close
            r = c.request("GET", "/a", version="HTTP/1.0")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.version, "HTTP/1.1")
            self.assertIn("close", r.conn_tokens())
            self.assertTrue(c.eof_within(T(3)), "HTTP/1.0 without keep-alive must be closed")
        with Client(gw.port) as c:     # keep-alive
            for i in range(3):
                r = c.request("GET", f"/k{i}", version="HTTP/1.0", headers=[("Connection", "keep-alive")])
                self.assertEqual(r.status, 200)
                self.assertIn("keep-alive", r.conn_tokens(), r.headers)
                self.assertEqual(r.json()["target"], f"/k{i}")
            # a chunked response is de-chunked for HTTP/1.0, then the connection closes
            r = c.request("GET", "/chunky", version="HTTP/1.0", headers=[
                ("Connection", "keep-alive"), ("X-Be-Framing", "chunked"), ("X-Be-Body-Size", "100000"),
                ("X-Be-Chunk-Size", "3000")])
            self.assertEqual(r.status, 200)
            self.assertIsNone(r.header("Transfer-Encoding"), r.headers)
            self.assertIn("close", r.conn_tokens())
            self.assertEqual(r.body, hb.pattern_bytes(100000))
            self.assertTrue(c.eof_within(T(3)))
        with Client(gw.port) as c:     # HTTP/1.0 may omit Host: the listener's address is sent
            r = c.request("GET", "/nohost", version="HTTP/1.0", host=None)
            self.assertEqual(r.status, 200)
            hosts = [v for n, v in r.json()["headers"] if n.lower() == "host"]
            self.assertEqual(hosts, [f"127.0.0.1:{gw.port}"])

    def test_http10_without_host_on_a_wildcard_listener(self):
        """An HTTP/1.0 request may omit Host; it goes upstream as HTTP/1.1,
        which needs one. gw sent the listener's address, for a listener on
        0.0.0.0:P or [::]:P an address no client can reach: a host that builds
        links or picks a virtual host from it got `0.0.0.0:P`. It is now the
        address the client connected to, the connection's local address and
        port (RFC 9112 3.3), so never a wildcard."""
        a = self.hb("alpha")
        p4, p6 = gwtest.wildcard_free_port(), gwtest.wildcard_free_port(socket.AF_INET6)
        l4, l6 = http_listener("web4", port=p4), http_listener("web6", port=p6)
        l4["listen"], l6["listen"] = f"0.0.0.0:{p4}", f"[::]:{p6}"
        gw = self.http_gw([pool("p", [host("a", a)])], listener=[l4, l6])
        for ip, port, want in (("127.0.0.1", p4, f"127.0.0.1:{p4}"), ("127.0.0.2", p4, f"127.0.0.2:{p4}"),
                               ("::1", p6, f"[::1]:{p6}")):
            with socket.create_connection((ip, port), timeout=T(5)) as s:
                s.sendall(raw_request("GET", "/nohost", [], b"", "HTTP/1.0"))
                r = hb.read_response(hb.Reader(s), "GET")
            self.assertEqual(r.status, 200)
            hosts = [v for n, v in r.json()["headers"] if n.lower() == "host"]
            self.assertEqual(hosts, [want], f"connected to {ip} port {port}")
        with Client(gw.port) as c:   # a Host sent is passed on as it is
            r = c.request("GET", "/host", version="HTTP/1.0", host="h10")
            self.assertEqual([v for n, v in r.json()["headers"] if n.lower() == "host"], ["h10"])

    def test_keepalive_requests_limit(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])], http={"keepalive_requests": 3})
        with Client(gw.port) as c:
            for i in range(3):
                r = c.request("GET", f"/{i}")
                self.assertEqual(r.status, 200)
                if i < 2:
                    self.assertNotIn("close", r.conn_tokens(), f"request {i + 1}: {r.headers}")
                else:
                    self.assertIn("close", r.conn_tokens(), "the last allowed request must say Connection: close")
            self.assertTrue(c.eof_within(T(3)))

    def test_keepalive_timeout_closes_idle(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])], http={"keepalive_timeout_ms": 400})
        with Client(gw.port) as c:
            # Timed from before the request: gw starts the idle timer after it answers, so
            # the close cannot come sooner than 400 ms from here (less the 50 ms slack for
            # gw's loop clock), however late this process gets to read the answer.
            t0 = time.monotonic()
            self.assertEqual(c.request("GET", "/").status, 200)
            self.assertTrue(c.eof_within(T(4)), "an idle keep-alive connection was not closed")
            dt = time.monotonic() - t0
            self.assertGreater(dt, 0.35, f"closed {dt:.2f}s after the request, keepalive_timeout_ms is 400")
        with Client(gw.port) as c:    # activity within the timeout keeps it open
            for _ in range(4):
                self.assertEqual(c.request("GET", "/").status, 200)
                time.sleep(0.2)
            self.assertEqual(c.request("GET", "/").status, 200)


    def test_keepalive_timeout_zero_still_waits_for_the_first_request(self):
        # keepalive_timeout_ms 0 turns keep-alive off; a new connection still
        # has client_header_timeout_ms for its request (it was closed at once
        # unless its request was already there).
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])], http={"keepalive_timeout_ms": 0})
        with Client(gw.port) as c:
            time.sleep(0.3)
            r = c.request("GET", "/")
            self.assertIsNotNone(r, "the connection was closed before its first request")
            self.assertEqual(r.status, 200)
            self.assertIn("close", r.conn_tokens())
            self.assertTrue(c.eof_within(T(3)))


# ----------------------------------------------------------------------------
# 7. upstream keep-alive

class UpstreamKeepAliveTest(HttpCase):

    def test_reuse_one_connection(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        before = http_totals(gw)
        for i in range(10):
            self.assertBackend(get(gw.port, f"/{i}"), "alpha")          # new client connection each
        with Client(gw.port) as c:
            for i in range(10):
                self.assertBackend(c.request("GET", f"/k{i}"), "alpha")
        self.assertEqual(a.connections, 1, "sequential requests must reuse one upstream connection")
        self.assertFalse(any(r.header("Connection") for r in a.records), "no Connection header upstream with keepalive")
        d = delta(http_totals(gw), before)
        self.assertEqual(d["keepalive_reused"], 19)
        self.assertEqual(d["requests"], 20)

    def test_an_interim_answer_then_a_close_on_a_reused_connection_is_the_hosts_failure(self):
        """A kept-alive connection reused for a request that the host answers
        with a 103 and then closes: the host had the request, so this is not
        the keep-alive race (a close before any byte). The client gets the
        103 and a 502, the host one failure, and the request is not sent
        again. It was sent again unasked (to another host, past `tries`),
        counting nothing, and the client got two hosts' answers."""
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])],
                          upstream_opts={"tries": 1, "max_fails": 100, "retry": {"on": [], "tries": 1}})
        with Client(gw.port) as c:
            self.assertBackend(c.request("GET", "/warm"), "alpha")  # leaves an idle connection
            n0 = a.requests
            before = gwtest.find_host(gw.status(), "app/p/a")["failures"]
            r = c.request("GET", "/hints", headers=[("X-Be-Action", "interim_then_close")])
            self.assertEqual(r.status, 502)
            self.assertEqual([s for s, _ in r.interim], [103])
        self.assertEqual(a.requests - n0, 1, "the request was sent again")
        self.assertEqual(a.connections, 1, "it came on the reused connection")
        self.assertEqual(gwtest.find_host(gw.status(), "app/p/a")["failures"] - before, 1)
        self.assertGreaterEqual(gwtest.find_host(gw.status(), "app/p/a")["responses"]["1xx"], 1,
                                "the 103 counts in the host's responses")

    def test_max_requests_rotates(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])], upstream_opts={"keepalive": {"max_requests": 4}})
        for i in range(12):
            self.assertBackend(get(gw.port, f"/{i}"), "alpha")
        self.assertEqual(a.connections, 3)
        self.assertEqual(sorted({r.seq for r in a.records}), [1, 2, 3, 4])

    def test_max_idle_burst_reuses_the_surplus(self):
        """A burst of more requests in flight than max_idle: the connections
        released beyond max_idle are kept a second, so a second burst right
        after reuses them all (closing them at once, as nginx does, would open
        two new ones here); then the surplus is closed down to max_idle."""
        a = self.hb("alpha", delay_head=0.3)
        gw = self.http_gw([pool("p", [host("a", a)])], upstream_opts={"keepalive": {"max_idle": 1}})
        clients = [Client(gw.port) for _ in range(3)]
        for c in clients:
            self.addCleanup(c.close)
        before = http_totals(gw)
        for burst in range(2):
            for c in clients:
                c.send(raw_request("GET", f"/{burst}", [("Host", "t")]))
            for c in clients:
                self.assertBackend(c.response(), "alpha")
        self.assertEqual(a.connections, 3, "the second burst opened new upstream connections")
        self.assertEqual(delta(http_totals(gw), before)["keepalive_reused"], 3)
        wait_until(lambda: a.active == 1, T(5), msg="the surplus closed down to max_idle")
        self.assertBackend(clients[0].request("GET", "/after"), "alpha")
        self.assertEqual(a.connections, 3, "max_idle's connection was kept")

    def test_max_idle_surplus_taken_keeps_its_idle_timeout(self):
        """The surplus is gone before its second is up (a request took a
        connection): the connection left idle is not closed then, and its
        keepalive.idle_timeout_ms still applies."""
        a = self.hb("alpha", delay_head=0.3)
        gw = self.http_gw([pool("p", [host("a", a)])],
                          upstream_opts={"keepalive": {"max_idle": 1, "idle_timeout_ms": 2500}})
        c1, c2 = Client(gw.port), Client(gw.port)
        self.addCleanup(c1.close)
        self.addCleanup(c2.close)
        for c in (c1, c2):
            c.send(raw_request("GET", "/first", [("Host", "t")]))
        for c in (c1, c2):
            self.assertBackend(c.response(), "alpha")
        t0 = time.monotonic()
        a.set(delay_head=4.0)
        c1.send(raw_request("GET", "/long", [("Host", "t")]))  # takes one: one idle left, not surplus
        time.sleep(1.5)
        self.assertEqual((a.connections, a.active, a.responses), (2, 2, 2),
                         "the idle connection was closed as surplus after the surplus was gone")
        # Closed by its idle timeout (2.5 s), while the long request is still out.
        wait_until(lambda: a.active == 1, T(3.8) - (time.monotonic() - t0), interval=0.05,
                   msg="the idle connection closed by keepalive.idle_timeout_ms")
        self.assertEqual(a.responses, 2, "closed only once the long request was answered")
        self.assertBackend(c1.response(), "alpha")

    def test_max_idle_keeps_the_most_recent(self):
        """Over max_idle the surplus closed is the connections idle longest,
        not the ones released last: four connections released in turn with
        max_idle 2 leave the last two idle, and two requests at once reuse
        exactly those."""
        a = self.hb("alpha", delay_head=1.5)
        gw = self.http_gw([pool("p", [host("a", a)])], upstream_opts={"keepalive": {"max_idle": 2}})
        clients = []
        for i in range(4):  # all in flight, each received 0.3 s after the last: released in this order
            c = Client(gw.port)
            self.addCleanup(c.close)
            c.send(raw_request("GET", f"/{i}", [("Host", "t")]))
            clients.append(c)
            wait_until(lambda: a.requests == i + 1, T(3), msg=f"request {i} at the backend")
            time.sleep(0.3)
        for c in clients:
            self.assertBackend(c.response(), "alpha")
        self.assertEqual(a.connections, 4)
        wait_until(lambda: a.active == 2, T(3), msg="two idle connections left")
        conn_of = {r.target: r.conn for r in a.records}
        before = http_totals(gw)
        a.set(delay_head=0.3)
        for c in clients[:2]:
            c.send(raw_request("GET", "/again", [("Host", "t")]))
        for c in clients[:2]:
            self.assertBackend(c.response(), "alpha")
        self.assertEqual(a.connections, 4, "no new upstream connection")
        self.assertEqual(delta(http_totals(gw), before)["keepalive_reused"], 2)
        self.assertEqual(sorted(r.conn for r in a.records if r.target == "/again"),
                         sorted([conn_of["/2"], conn_of["/3"]]), "the two released last were kept")

    def test_max_idle_zero(self):
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])], upstream_opts={"keepalive": {"max_idle": 0}})
        for i in range(5):
            self.assertBackend(get(gw.port, f"/{i}"), "alpha")
        self.assertEqual(a.connections, 5)
        self.assertEqual([r.header_all("Connection") for r in a.records], [["close"]] * 5)

    def test_upstream_close_keeps_client_connection(self):
        """Connection is hop-by-hop: an upstream "Connection: close" (max_idle 0, or a backend
        without keep-alive) ends the upstream connection, not the client's (as nginx)."""
        a = self.hb("alpha", keepalive=False)
        gw = self.http_gw([pool("p", [host("a", a)])], upstream_opts={"keepalive": {"max_idle": 0}})
        with Client(gw.port) as c:
            for i in range(3):
                r = c.request("GET", f"/{i}")
                self.assertIsNotNone(r, f"request {i}: the client connection was closed")
                self.assertBackend(r, "alpha")
                self.assertNotIn("close", r.conn_tokens(), f"request {i}: {r.headers}")
        self.assertEqual(a.connections, 3)

    def test_backend_closes_idle_connection(self):
        a = self.hb("alpha", idle_close=0.2)
        gw = self.http_gw([pool("p", [host("a", a)])])
        for i in range(3):
            self.assertBackend(get(gw.port, f"/{i}"), "alpha")
            wait_until(lambda: a.closes >= i + 1, T(3), msg="the backend to close the idle connection")
            time.sleep(0.05)
        self.assertEqual(a.requests, 3, "a request was sent on a dead connection")
        self.assertEqual(a.connections, 3)
        self.assertEqual(gwtest.find_host(gw.status(), "app/p/a")["failures"], 0, "the host was blamed")

    def test_backend_closes_right_after_response(self):
        """close_after=1: the backend closes silently after each response (no Connection: close)."""
        a = self.hb("alpha", close_after=1)
        gw = self.http_gw([pool("p", [host("a", a)])])
        for i in range(15):
            self.assertBackend(get(gw.port, f"/{i}"), "alpha")
        self.assertEqual(a.requests, 15)
        self.assertEqual(gwtest.find_host(gw.status(), "app/p/a")["failures"], 0, "the keep-alive race blamed the host")

    def test_idle_close_queued_behind_request(self):
        """The backend's FIN on the idle connection and the next request reach the worker in one
        epoll batch, the request first: a POST (never retried once sent) must not be sent on the
        dead connection. The worker is frozen while both happen."""
        a = self.hb("alpha", idle_close=0.6)
        gw = self.http_gw([pool("p", [host("a", a)])])
        (wpid,) = gw.worker_pids()
        with Client(gw.port) as c:
            self.assertBackend(c.request("POST", "/1", body=b"one"), "alpha")
            os.kill(wpid, signal.SIGSTOP)
            try:
                c.send(raw_request("POST", "/2", [("Host", "test"), ("Content-Length", "3")], b"two"))
                wait_until(lambda: a.closes >= 1, T(3), msg="the backend to close the idle connection")
                time.sleep(0.05)
            finally:
                os.kill(wpid, signal.SIGCONT)
            r = c.response("POST")
            self.assertIsNotNone(r, "the client connection was closed")
            self.assertEqual(r.status, 200, f"{r.status} {r.headers}")
            self.assertBackend(r, "alpha")
        self.assertEqual(a.requests, 2, "a request was sent on a dead connection")
        self.assertEqual(a.connections, 2)

    def test_idle_close_queued_behind_get(self):
        """As above with a GET, within 50 ms of the last answer: gw reuses such a connection
        for a request that can go again without a MSG_PEEK. The FIN's event, in the same
        batch behind the request, still closes the idle connection before the request is
        dispatched (close_idle_in): the GET goes on a new connection, and is not sent on the
        dead one to be retried. The worker is frozen for about 25 ms."""
        a = self.hb("alpha", idle_close=0.02)
        gw = self.http_gw([pool("p", [host("a", a)])])
        (wpid,) = gw.worker_pids()
        before = http_totals(gw)
        with Client(gw.port) as c:
            self.assertBackend(c.request("GET", "/1"), "alpha")
            os.kill(wpid, signal.SIGSTOP)
            try:
                # Stopped for real: a worker still on its way out of epoll_wait could take the
                # request alone in a batch of its own.
                wait_until(lambda: gwtest.proc_state(wpid) == "T", T(2), interval=0.001, msg="the worker to stop")
                c.send(raw_request("GET", "/2", [("Host", "test")]))
                deadline = time.monotonic() + T(3)
                while a.closes < 1 and time.monotonic() < deadline:
                    time.sleep(0.001)
                self.assertEqual(a.closes, 1, "the backend did not close the idle connection")
                time.sleep(0.002)  # the FIN reaches gw's socket
            finally:
                os.kill(wpid, signal.SIGCONT)
            r = c.response("GET")
            self.assertIsNotNone(r, "the client connection was closed")
            self.assertEqual(r.status, 200, f"{r.status} {r.headers}")
            self.assertBackend(r, "alpha")
        self.assertEqual(a.requests, 2)
        self.assertEqual(a.connections, 2)
        d = delta(http_totals(gw), before)
        self.assertEqual(d["keepalive_reused"], 0, "the request took the connection the host had closed")
        self.assertEqual(gwtest.find_host(gw.status(), "app/p/a")["failures"], 0)


# ----------------------------------------------------------------------------
# 8. retries

class RetryTest(HttpCase):

    def test_refused_host_retried(self):
        live = self.hb("live")
        dead_port = free_port()
        gw = self.http_gw([pool("p", [host("dead", dead_port), host("live", live)])], upstream_opts={"max_fails": 100})
        before = http_totals(gw)
        for i in range(6):
            m = "POST" if i % 2 else "GET"     # nothing was sent on a refused connect: POST is retried too
            self.assertBackend(get(gw.port, f"/{i}", method=m, body=b"x" if m == "POST" else None), "live")
        self.assertEqual(live.requests, 6)
        self.assertGreaterEqual(gwtest.find_host(gw.status(), "app/p/dead")["failures"], 1, "passive failure not recorded")
        self.assertGreaterEqual(delta(http_totals(gw), before)["retries"], 1)

    def test_reset_before_head_get_retried_post_not(self):
        bad = self.hb("bad", action="reset_after_head")
        good = self.hb("good")
        gw = self.http_gw([pool("p", [host("bad", bad), host("good", good)])], upstream_opts={"max_fails": 100})
        for i in range(4):
            self.assertBackend(get(gw.port, f"/g{i}"), "good")
        self.assertGreaterEqual(bad.requests, 1)
        bad_before, good_before = bad.requests, good.requests
        statuses = [get(gw.port, f"/p{i}", method="POST", body=b"data").status for i in range(4)]
        n502 = statuses.count(502)
        self.assertGreaterEqual(n502, 1, f"round robin never sent a POST to the resetting host: {statuses}")
        self.assertEqual(set(statuses), {200, 502}, statuses)
        self.assertEqual(bad.requests - bad_before, n502, "each 502 is one POST the bad host got")
        self.assertEqual(good.requests - good_before, 4 - n502, "a POST was retried on another host after it was sent")

    def test_retry_on_503(self):
        a = self.hb("a503", status=503)
        b = self.hb("ok")
        gw = self.http_gw([pool("p", [host("a", a), host("b", b)])], upstream_opts={"retry": {"on": ["503"]}})
        before = http_totals(gw)
        for i in range(6):
            self.assertBackend(get(gw.port, f"/{i}"), "ok")
        self.assertGreaterEqual(a.requests, 1)
        self.assertGreaterEqual(delta(http_totals(gw), before)["retries"], 1)
        self.assertGreaterEqual(gwtest.find_host(gw.status(), "app/p/a")["failures"], 1)

    def test_all_hosts_503(self):
        a = self.hb("a", status=503)
        b = self.hb("b", status=503)
        gw = self.http_gw([pool("p", [host("a", a), host("b", b)])],
                          upstream_opts={"max_fails": 100, "retry": {"on": ["503"]}})
        r = get(gw.port, "/")
        self.assertEqual(r.status, 503)
        self.assertEqual((a.requests, b.requests), (1, 1), "each host tried once")
        # tries 3 (the default), and no third host: the last host's own answer
        # goes on, as nginx passes its last try on, not gw's page.
        self.assertIn(r.json()["backend"], ("a", "b"), r.body[:300])

    def test_retry_tries_bound(self):
        bs = [self.hb(f"r{i}", action="reset_after_head") for i in range(4)]
        gw = self.http_gw([pool("p", [host(f"r{i}", b) for i, b in enumerate(bs)])],
                          upstream_opts={"max_fails": 100, "tries": 4, "retry": {"tries": 2}})
        self.assertGwError(get(gw.port, "/"), 502, close=False)
        self.assertEqual(sum(b.requests for b in bs), 2, "retry.tries 2 allows 2 attempts")

    def test_retry_timeout_bound(self):
        bs = [self.hb(f"s{i}", status=503, delay_head=0.4) for i in range(4)]
        gw = self.http_gw([pool("p", [host(f"s{i}", b) for i, b in enumerate(bs)])],
                          upstream_opts={"max_fails": 100, "tries": 4, "retry": {"on": ["503"], "timeout_ms": 600}})
        t0 = time.monotonic()
        r = get(gw.port, "/")
        dt = time.monotonic() - t0
        self.assertEqual(r.status, 503)
        self.assertEqual(sum(b.requests for b in bs), 2, f"retry.timeout_ms 600 with 400 ms answers: 2 attempts ({dt:.2f}s)")

    def test_read_timeout_504_retried(self):
        a = self.hb("slow1", delay_head=5)
        b = self.hb("slow2", delay_head=5)
        gw = self.http_gw([pool("p", [host("a", a), host("b", b)])],
                          upstream_opts={"max_fails": 100, "read_timeout_ms": 300})
        before = http_totals(gw)
        t0 = time.monotonic()
        self.assertGwError(get(gw.port, "/"), 504, close=False)
        dt = time.monotonic() - t0
        self.assertEqual((a.requests, b.requests), (1, 1), "timeout is in the default retry.on: both hosts tried")
        self.assertGreater(dt, 0.5)
        self.assertLess(dt, T(4))
        d = delta(http_totals(gw), before)
        self.assertEqual(d["gateway_timeout"], 1)
        self.assertEqual(d["retries"], 1)

    def test_read_timeout_504_not_retried(self):
        a = self.hb("slow1", delay_head=5)
        b = self.hb("slow2", delay_head=5)
        gw = self.http_gw([pool("p", [host("a", a), host("b", b)])],
                          upstream_opts={"max_fails": 100, "read_timeout_ms": 300, "retry": {"on": ["error"]}})
        self.assertGwError(get(gw.port, "/"), 504, close=False)
        self.assertEqual(a.requests + b.requests, 1, "timeout not in retry.on: one attempt")

    def test_connect_timeout_504(self):
        bh1, bh2 = Blackhole(), Blackhole()
        self.addCleanup(bh1.stop)
        self.addCleanup(bh2.stop)
        gw = self.http_gw([pool("p", [host("b1", bh1.address), host("b2", bh2.address)])],
                          upstream_opts={"max_fails": 100, "connect_timeout_ms": 300})
        t0 = time.monotonic()
        self.assertGwError(get(gw.port, "/"), 504, close=False)
        dt = time.monotonic() - t0
        self.assertGreater(dt, 0.5, "two connect timeouts of 300 ms (timeout is in the default retry.on)")
        self.assertLess(dt, T(4))
        st = gw.status()
        self.assertGreaterEqual(gwtest.find_host(st, "app/p/b1")["failures"], 1)
        self.assertGreaterEqual(gwtest.find_host(st, "app/p/b2")["failures"], 1)

    def test_read_timeout_not_while_the_client_does_not_read(self):
        # read_timeout_ms is the host's silence while gw waits for it. A client
        # that stops reading a large answer for a while (within send_timeout_ms)
        # stops gw reading the host: the host is not silent, and the answer
        # must not be cut.
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])], upstream_opts={"read_timeout_ms": 400})
        size = 8 * MB
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        s.settimeout(T(10))
        s.connect((LO, gw.port))
        try:
            s.sendall(raw_request("GET", "/big", [("Host", "t"), ("X-Be-Body-Size", str(size))]))
            first = s.recv(4096)
            self.assertTrue(first.startswith(b"HTTP/1.1 200"), first[:100])
            time.sleep(1.5)  # the client reads nothing for well over read_timeout_ms
            rd = hb.Reader(s)
            rd.buf += first
            r = hb.read_response(rd)
        finally:
            s.close()
        self.assertIsNotNone(r)
        self.assertEqual(len(r.body), size, "the answer was cut while the client paused")

    def test_read_timeout_not_while_the_request_body_comes(self):
        # The host cannot answer before it has the whole body: a client pausing
        # within client_body_timeout_ms is no reason for a 504 (nginx starts
        # proxy_read_timeout once the request is sent).
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])], upstream_opts={"read_timeout_ms": 400})
        with Client(gw.port) as c:
            c.send(raw_request("POST", "/slow-up", [("Host", "t"), ("Content-Length", "20")], b"x" * 10))
            time.sleep(1.2)
            c.send(b"y" * 10)
            r = c.response()
        j = self.assertBackend(r, "alpha")
        self.assertEqual(j["body_len"], 20)


# ----------------------------------------------------------------------------
# 9. client timeouts

class ClientTimeoutTest(SharedGwCase):

    @classmethod
    def configure(cls):
        cls.a = cls.shared_hb("alpha")
        return ([http_listener(http={"client_header_timeout_ms": 400, "client_body_timeout_ms": 400})],
                [upstream("app", [pool("p", [host("a", cls.a)])])])

    def test_client_header_timeout_408(self):
        gw, a = self.gw, self.a
        before = http_totals(gw)
        req_before = a.requests
        with Client(gw.port) as c:
            t0 = time.monotonic()
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
            time.sleep(0.1)
            c.send(b"X-Slow: 1\r\n")
            r = c.response()
            dt = time.monotonic() - t0
            self.assertGwError(r, 408)
            self.assertTrue(c.eof_within(T(3)))
        self.assertGreater(dt, 0.3)
        self.assertLess(dt, T(3))
        self.assertEqual(a.requests, req_before)
        self.assertEqual(delta(http_totals(gw), before)["client_timeout"], 1)

    def test_client_header_timeout_408_on_a_kept_alive_connection(self):
        # The same on a connection that has carried requests before (a HEAD
        # last: the 408 has its body all the same).
        gw, a = self.gw, self.a
        before = http_totals(gw)
        for first in ("GET", "HEAD"):
            with Client(gw.port) as c:
                self.assertEqual(c.request(first, "/first").status, 200)
                t0 = time.monotonic()
                c.send(b"GET /second HTTP/1.1\r\nHost: t\r\n")
                r = c.response()
                dt = time.monotonic() - t0
                self.assertGwError(r, 408)
                self.assertTrue(c.eof_within(T(3)))
            self.assertGreater(dt, 0.3)
            self.assertLess(dt, T(3))
        self.assertEqual(delta(http_totals(gw), before)["client_timeout"], 2)

    def test_silent_new_connection_closed_after_client_header_timeout(self):
        # A new connection that sends nothing waits for its first request as
        # long as a head may take (nginx's client_header_timeout), not the
        # keep-alive wait between requests (75 s here); no answer, no 408.
        gw = self.gw
        with Client(gw.port) as c:
            t0 = time.monotonic()
            self.assertTrue(c.eof_within(T(5)), "a silent new connection was left open")
            self.assertGreater(time.monotonic() - t0, 0.3)

    def test_client_body_timeout_408(self):
        gw, a = self.gw, self.a
        before = http_totals(gw)
        with Client(gw.port) as c:
            t0 = time.monotonic()
            c.send(raw_request("POST", "/b408", [("Host", "t"), ("Content-Length", "100")], b"x" * 10))
            r = c.response()
            dt = time.monotonic() - t0
            self.assertGwError(r, 408)
            self.assertTrue(c.eof_within(T(3)))
        self.assertGreater(dt, 0.3)
        self.assertLess(dt, T(3))
        self.assertEqual(delta(http_totals(gw), before)["client_timeout"], 1)
        self.assertFalse(any(r.complete for r in a.records if r.target == "/b408"), "the backend got a complete body")


# ----------------------------------------------------------------------------
# 10. back-pressure, 11. half-close, 12. graceful stop

class FlowTest(HttpCase):

    def test_backpressure_download(self):
        """A client that does not read: the backend's writes stall, gw's memory stays flat."""
        a = self.hb("alpha")
        gw = self.http_gw([pool("p", [host("a", a)])])
        workers = gw.worker_pids()
        rss0 = sum(gwtest.vm_rss_kb(p) for p in workers)
        size = 1024 * MB
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.settimeout(T(10))
        s.connect((LO, gw.port))
        try:
            s.sendall(raw_request("GET", "/huge", [("Host", "t"), ("X-Be-Body-Size", str(size))]))
            got = s.recv(4096)
            self.assertTrue(got.startswith(b"HTTP/1.1 200"), got[:100])

            def stalled():
                x = a.body_bytes_sent
                time.sleep(0.5)
                return a.body_bytes_sent == x and x
            sent = wait_until(stalled, T(10), interval=0.05, msg="the backend's writes to stall")
            grown = sum(gwtest.vm_rss_kb(p) for p in workers) - rss0
            sys.stderr.write(f"[backend stalled after {sent // 1024} kB, worker RSS +{grown} kB] ")
            self.assertLess(sent, 96 * MB, "the gateway keeps reading a response the client does not take")
            self.assertLess(grown, 8 * 1024, f"worker RSS grew by {grown} kB while the client did not read")
            # reading resumes the flow
            n = 0
            t0 = time.monotonic()
            while n < 8 * MB and time.monotonic() - t0 < T(10):
                n += len(s.recv(1 << 20))
            wait_until(lambda: a.body_bytes_sent > sent, T(5), msg="the backend to write again")
        finally:
            s.close()

    def test_backpressure_upload(self):
        """A backend that does not read: the client's sends stall, gw's memory stays flat; then it all arrives."""
        gate = threading.Event()
        a = self.hb("alpha", body_gate=gate, rcvbuf=64 * 1024)
        gw = self.http_gw([pool("p", [host("a", a)])])
        workers = gw.worker_pids()
        rss0 = sum(gwtest.vm_rss_kb(p) for p in workers)
        size = 128 * MB
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        s.connect((LO, gw.port))
        try:
            s.sendall(raw_request("POST", "/up", [("Host", "t"), ("Content-Length", str(size))]))
            s.setblocking(False)
            it = hb.iter_pattern(size, 1 << 16)
            pending = memoryview(b"")
            sent = 0
            last_progress = time.monotonic()
            while time.monotonic() - last_progress < 0.7:
                if not len(pending):
                    pending = next(it)
                try:
                    n = s.send(pending)
                    sent += n
                    pending = pending[n:]
                    last_progress = time.monotonic()
                except BlockingIOError:
                    time.sleep(0.02)
            grown = sum(gwtest.vm_rss_kb(p) for p in workers) - rss0
            sys.stderr.write(f"[client stalled after {sent // 1024} kB, worker RSS +{grown} kB] ")
            self.assertLess(sent, 48 * MB, "the gateway keeps reading a body the backend does not take")
            self.assertLess(grown, 8 * 1024, f"worker RSS grew by {grown} kB while the backend did not read")
            gate.set()
            s.setblocking(True)
            s.settimeout(T(30))
            if len(pending):
                s.sendall(pending)
            for part in it:
                s.sendall(part)
            r = hb.read_response(s, "POST")
            j = self.assertBackend(r, "alpha")
            self.assertEqual(j["body_len"], size)
            self.assertEqual(j["body_sha256"], hb.pattern_sha256(size))
        finally:
            s.close()

    def test_client_body_timeout_not_while_the_host_does_not_read(self):
        # client_body_timeout_ms is the client's silence while gw waits for it.
        # A host that stops reading the body for a while (within
        # send_timeout_ms) stops gw reading the client: the client is not
        # silent, and must not get a 408.
        gate = threading.Event()
        a = self.hb("alpha", body_gate=gate, rcvbuf=64 * 1024)
        gw = self.http_gw([pool("p", [host("a", a)])], http={"client_body_timeout_ms": 400})
        size = 8 * MB
        opener = threading.Timer(1.5, gate.set)
        self.addCleanup(opener.cancel)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        s.settimeout(T(10))
        s.connect((LO, gw.port))
        try:
            s.sendall(raw_request("POST", "/up", [("Host", "t"), ("Content-Length", str(size))]))
            opener.start()
            try:
                for part in hb.iter_pattern(size, 1 << 16):
                    s.sendall(part)
            except OSError:
                pass  # cut off: the answer says why
            r = hb.read_response(s, "POST")
        finally:
            s.close()
        j = self.assertBackend(r, "alpha")
        self.assertEqual(j["body_len"], size)

    def test_half_close_after_request(self):
        a = self.hb("alpha", delay_head=0.3)
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            c.send(raw_request("GET", "/hc"))
            c.s.shutdown(socket.SHUT_WR)
            j = self.assertBackend(c.response(), "alpha")
            self.assertEqual(j["target"], "/hc")
            self.assertTrue(c.eof_within(T(3)), "the connection must close after the response")
        with Client(gw.port) as c:
            body = os.urandom(100000)
            c.send(raw_request("POST", "/hcp", [("Host", "t"), ("Content-Length", str(len(body)))], body))
            c.s.shutdown(socket.SHUT_WR)
            j = self.assertBackend(c.response("POST"), "alpha")
            self.assertEqual(j["body_sha256"], hashlib.sha256(body).hexdigest())

    def test_half_close_after_pipelined_requests(self):
        """Requests pipelined before the client's FIN are all answered, in order;
        the last answer says Connection: close, then gw closes."""
        a = self.hb("alpha", delay_head=0.3)
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            c.send(raw_request("POST", "/p1", [("Host", "t"), ("Content-Length", "3")], b"abc") +
                   raw_request("GET", "/p2") + raw_request("GET", "/p3"))
            c.s.shutdown(socket.SHUT_WR)
            for t in ("/p1", "/p2", "/p3"):
                r = c.response("POST" if t == "/p1" else "GET")
                self.assertIsNotNone(r, f"no answer to {t}, pipelined before the FIN")
                self.assertEqual(self.assertBackend(r, "alpha")["target"], t)
            self.assertIn("close", r.conn_tokens(), r.headers)
            self.assertTrue(c.eof_within(T(3)), "the connection must close after the last response")

    def test_half_close_cuts_a_pipelined_body(self):
        """A request pipelined before the FIN whose body the FIN cuts short can
        never be whole: it is not sent upstream, and gw closes at once after
        answering the requests before it."""
        a = self.hb("alpha", delay_head=0.3)
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port) as c:
            c.send(raw_request("GET", "/a") +
                   raw_request("POST", "/b", [("Host", "t"), ("Content-Length", "10")], b"abc"))
            c.s.shutdown(socket.SHUT_WR)
            r = c.response()
            self.assertIsNotNone(r, "no answer to the request before the cut one")
            self.assertEqual(self.assertBackend(r, "alpha")["target"], "/a")
            self.assertTrue(c.eof_within(T(3)), "gw must close: the cut request can never be whole")
        self.assertEqual(a.requests, 1, "the cut request went upstream")

    def test_half_close_behind_request_sent_while_busy(self):
        """The next request and the FIN arrive while gw waits for the previous
        answer: that request is answered (and not left until keepalive_timeout)."""
        a = self.hb("alpha", delay_head=0.5)
        gw = self.http_gw([pool("p", [host("a", a)])])
        with Client(gw.port, timeout=T(3)) as c:
            c.send(raw_request("GET", "/first"))
            wait_until(lambda: a.requests == 1, T(5), msg="the first request upstream")
            c.send(raw_request("GET", "/second"))
            c.s.shutdown(socket.SHUT_WR)
            self.assertEqual(self.assertBackend(c.response(), "alpha")["target"], "/first")
            r = c.response()
            self.assertIsNotNone(r, "no answer to the request sent before the FIN")
            self.assertEqual(self.assertBackend(r, "alpha")["target"], "/second")
            self.assertIn("close", r.conn_tokens(), r.headers)
            self.assertTrue(c.eof_within(T(3)))

    def test_reset_after_half_close_aborts_the_request(self):
        """A client half-closes after its request (not an abort), then resets
        while the host has not answered. After the FIN a read reports no
        reset (recv says 0 again), only EPOLLERR does: gw must take it as the
        abort it is, not hold the connection and the host's until
        read_timeout_ms."""
        a = self.hb("alpha", action="hang")
        gw = self.http_gw([pool("p", [host("a", a)])])
        (worker,) = gw.worker_pids()
        sockets_before = gwtest.socket_inodes(worker)
        for i in range(5):
            s = socket.create_connection((LO, gw.port), timeout=T(3))
            s.sendall(raw_request("GET", f"/r{i}"))
            s.shutdown(socket.SHUT_WR)
            wait_until(lambda: a.requests == i + 1, T(5), msg="the request upstream")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

        def settled():
            st = gw.status()
            return (st["workers"][0]["connections"] == 0 and gwtest.find_host(st, "app/p/a")["active"] == 0
                    and gwtest.socket_inodes(worker) == sockets_before)
        wait_until(settled, T(3), msg="the reset connections and their upstream ones to close")

    def test_fin_and_reset_in_one_report_abort_the_request(self):
        """As above, but the FIN and the reset reach the worker in one epoll
        report (it was stopped while both came): the read it makes for the
        EPOLLIN says 0 (the FIN), never the reset, and no later report comes
        for it (edge-triggered), so the EPOLLERR of that same report is what
        must abort the request."""
        a = self.hb("alpha", action="hang")
        gw = self.http_gw([pool("p", [host("a", a)])])
        (worker,) = gw.worker_pids()
        sockets_before = gwtest.socket_inodes(worker)
        s = socket.create_connection((LO, gw.port), timeout=T(3))
        s.sendall(raw_request("GET", "/r"))
        wait_until(lambda: a.requests == 1, T(5), msg="the request upstream")
        os.kill(worker, signal.SIGSTOP)
        try:
            # On loopback both segments are in gw's socket when these return.
            s.shutdown(socket.SHUT_WR)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        finally:
            os.kill(worker, signal.SIGCONT)

        def settled():
            st = gw.status()
            return (st["workers"][0]["connections"] == 0 and gwtest.find_host(st, "app/p/a")["active"] == 0
                    and gwtest.socket_inodes(worker) == sockets_before)
        wait_until(settled, T(3), msg="the reset connection and its upstream one to close")

    def test_reset_behind_pipelined_bytes_aborts_the_request(self):
        """A client resets (no FIN) while the host has not answered, with the
        first bytes of its next request still unread in gw's socket (they came
        after the head was read, so gw only peeked at them): a read, even a
        peek, gives those bytes and never the reset, so only EPOLLERR reports
        it. gw must abort, not hold the connection and the host's until
        read_timeout_ms."""
        a = self.hb("alpha", action="hang")
        gw = self.http_gw([pool("p", [host("a", a)])])
        (worker,) = gw.worker_pids()
        sockets_before = gwtest.socket_inodes(worker)
        s = socket.create_connection((LO, gw.port), timeout=T(3))
        s.sendall(raw_request("GET", "/r"))
        wait_until(lambda: a.requests == 1, T(5), msg="the request upstream")
        s.sendall(b"GET /next HTTP/1.1\r\n")  # pipelined, left in gw's socket
        time.sleep(0.2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

        def settled():
            st = gw.status()
            return (st["workers"][0]["connections"] == 0 and gwtest.find_host(st, "app/p/a")["active"] == 0
                    and gwtest.socket_inodes(worker) == sockets_before)
        wait_until(settled, T(3), msg="the reset connection and its upstream one to close")

    def test_reset_while_the_host_does_not_take_the_body_aborts_the_request(self):
        """A host that does not read the request body stops gw reading the
        client (back-pressure); the client then resets. No read is made to
        report the reset, and the EPOLLERR is reported once (edge-triggered):
        it must abort the request, not hold it and the host's connection
        until send_timeout_ms."""
        gate = threading.Event()
        self.addCleanup(gate.set)
        a = self.hb("alpha", body_gate=gate, rcvbuf=64 * 1024)
        gw = self.http_gw([pool("p", [host("a", a)])])
        (worker,) = gw.worker_pids()
        sockets_before = gwtest.socket_inodes(worker)
        size = 128 * MB
        for i in range(2):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            s.settimeout(T(3))
            s.connect((LO, gw.port))
            s.sendall(raw_request("POST", f"/up{i}", [("Host", "t"), ("Content-Length", str(size))]))
            s.setblocking(False)
            chunk = b"x" * 65536
            deadline = time.monotonic() + T(30)
            last_progress = time.monotonic()
            while time.monotonic() - last_progress < T(0.5):
                self.assertLess(time.monotonic(), deadline, "the client's sends never stalled")
                try:
                    s.send(chunk)
                    last_progress = time.monotonic()
                except BlockingIOError:
                    time.sleep(0.02)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

        def settled():
            st = gw.status()
            return (st["workers"][0]["connections"] == 0 and gwtest.find_host(st, "app/p/a")["active"] == 0
                    and gwtest.socket_inodes(worker) == sockets_before)
        wait_until(settled, T(3), msg="the reset connections and their upstream ones to close")

    def test_graceful_stop(self):
        a = self.hb("alpha", delay_head=1.0, body_size=200000)
        gw = self.http_gw([pool("p", [host("a", a)])])
        result = {}

        def client():
            try:
                result["r"] = get(gw.port, "/slow", headers=[("Connection", "keep-alive")], timeout=T(15))
            except Exception as e:   # noqa: BLE001
                result["e"] = e
        th = threading.Thread(target=client, daemon=True)
        th.start()
        a.wait_requests(1, T(5))
        gw.send_signal(signal.SIGTERM)
        # new connections are refused once the listener is closed
        wait_until(lambda: not gwtest.port_listening(gw.port), T(3), msg="the listener to close")
        with self.assertRaises(OSError):
            socket.create_connection((LO, gw.port), timeout=T(2)).close()
        th.join(T(15))
        self.assertNotIn("e", result, f"the in-flight request failed: {result.get('e')!r}")
        r = result["r"]
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, hb.pattern_bytes(200000))
        self.assertIn("close", r.conn_tokens(), "a draining gateway answers with Connection: close")
        rc = gw.wait_exit(T(10))
        self.assertEqual(rc, 0, f"gwd exit code\n{gwtest.tail(gw.log_text(), 30)}")


if __name__ == "__main__":
    gwtest.main()
