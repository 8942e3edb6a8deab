#!/usr/bin/python3
"""Gray release and traffic split: rules per route, in shm, live.

Rules from the config and from `gwctl add/set/remove rule`: client IP in a
CIDR list (clients bind to 127.0.0.x source addresses), header equals, cookie
equals, a stable percentage (crc32 of the route's hash key, else of the
client IP, % 10000 < percent * 100), all matchers of a rule must hold, the
first matching rule wins. A change applies to the very next request, also on
an open keep-alive connection; bad input is a one-line gwctl error that
changes nothing; rules are shown by `gwctl status` (text and JSON) and
`gwctl events`, persisted like every change (crash with the segment kept,
and reboot with it gone), and changed 1,000 times under load without a
failed request.

Backends are gw-backend --mode http: every answer is "backend NAME\\n".
"""

import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import GwTestCase, T, host, pool, upstream  # noqa: E402
from httpbackend import Reader, read_response  # noqa: E402


def bucket(key):
    """The percentage bucket of a client key (spec: crc32(key) % 10000)."""
    return zlib.crc32(key.encode()) % 10000


class Client:
    """One keep-alive HTTP/1.1 connection from a chosen 127.0.0.x source."""

    def __init__(self, port, src="127.0.0.1", timeout=None):
        self.src = src
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind((src, 0))
        self.sock.settimeout(timeout or T(10))
        self.sock.connect((gwtest.LOOPBACK, port))
        self.rd = Reader(self.sock)

    @staticmethod
    def req(path="/", headers=()):
        h = "".join(f"{n}: {v}\r\n" for n, v in headers)
        return f"GET {path} HTTP/1.1\r\nHost: gray.test\r\n{h}\r\n".encode()

    def get(self, path="/", headers=()):
        """The backend name that answered (or "STATUS" for an answer of gw's own)."""
        return self.pipeline([(path, headers)])[0]

    def pipeline(self, reqs):
        self.sock.sendall(b"".join(self.req(p, h) for p, h in reqs))
        out = []
        for _ in reqs:
            r = read_response(self.rd)
            if r is None:
                raise AssertionError(f"gw closed the keep-alive connection from {self.src} "
                                     f"after {len(out)} of {len(reqs)} answers")
            out.append(side_of(r))
            if "close" in r.conn_tokens() and len(out) < len(reqs):
                raise AssertionError(f"gw answered Connection: close after {len(out)} of {len(reqs)} "
                                     f"pipelined requests: {r}")
        return out

    def close(self):
        self.sock.close()


def side_of(r):
    if r.status == 200 and r.body.startswith(b"backend "):
        return r.body.decode().strip()[len("backend "):]
    return str(r.status)


def get(port, path="/", headers=(), src="127.0.0.1"):
    c = Client(port, src)
    try:
        return c.get(path, headers)
    finally:
        c.close()


class _ReadThenClose:
    """A host that reads a request head, waits `delay` s and closes without answering."""

    def __init__(self, delay):
        self.delay = delay
        self.heads = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((gwtest.LOOPBACK, 0))
        self.sock.listen(16)
        self.address = f"{gwtest.LOOPBACK}:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        with c:
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = c.recv(4096)
                if not d:
                    return
                buf += d
            self.heads += 1
            time.sleep(self.delay)

    def stop(self):
        self.sock.close()


class GrayTest(GwTestCase):
    needs = ("gwd", "gwctl", "gw-backend")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # one set of backends for the class: fewer processes to start on a busy machine
        cls.backends = {}
        try:
            for n in ("prod", "pre", "edge"):
                cls.backends[n] = gwtest.ExternalBackend(n, "http", threads=2)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for b in cls.backends.values():
            b.stop()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.be = self.backends
        for n, b in self.be.items():
            if b.proc.poll() is not None:
                raise AssertionError(f"gw-backend {n} exited with {b.proc.returncode}")

    def gray_config(self, main_rules=None, api_rules=None, workers=1, main_hash="cookie:uid", shm=None):
        """Listener "web" (http): route "main" ("/", prod, hash key cookie:uid)
        and route "api" ("/api/", prod, hash key ip); upstreams prod, pre and
        edge; plus a tcp listener "l4"."""
        shm_name = self.shm_name()
        routes = [{"name": "main", "path": "/", "upstream": "prod", "hash_key": main_hash},
                  {"name": "api", "path": "/api/", "upstream": "prod", "hash_key": "ip"}]
        if main_rules is not None:
            routes[0]["rules"] = main_rules
        if api_rules is not None:
            routes[1]["rules"] = api_rules
        shm_caps = {"name": shm_name, "max_upstreams": 8, "max_pools": 16, "max_hosts": 64}
        shm_caps.update(shm or {})
        return {
            "workers": workers, "log_file": "", "log_level": "info", "shutdown_timeout_ms": 5000,
            "shm": shm_caps,
            "state_file": os.path.join(self.tmp, f"{shm_name}.state.json"),
            "listeners": [{"name": "web", "listen": f"{gwtest.LOOPBACK}:{gwtest.free_port()}",
                           "protocol": "http", "routes": routes, "backlog": 1024},
                          gwtest.tcp_listener("l4", "prod")],
            "upstreams": [upstream(n, [pool("p", [host("h", self.be[n].address)])])
                          for n in ("prod", "pre", "edge")],
        }

    CONFIG_RULES = [{"id": "ips", "ip": ["127.0.0.2", "127.0.0.16/28"], "upstream": "pre"},
                    {"id": "hdr", "header": "X-Canary=1", "upstream": "pre"},
                    {"id": "ck", "cookie": "beta=yes", "upstream": "edge"}]

    # -- helpers
    def routes(self, gw):
        """The rules of each route as specified (their "hits" counters left out)."""
        return {(r["listener"], r["route"]): [{k: v for k, v in rule.items() if k != "hits"} for rule in r["rules"]]
                for r in gw.status()["routes"]}

    def hits(self, gw, route="main"):
        """{rule id: requests it matched} from gwctl status --json."""
        return {rule["id"]: rule["hits"] for r in gw.status()["routes"] if r["route"] == route for rule in r["rules"]}

    def rule_ids(self, gw, route="main"):
        return [r["id"] for r in self.routes(gw)[("web", route)]]

    def assertSides(self, gw, cases):
        """cases: [(src, headers, path, want side)]; each on a new connection."""
        got = [(src, headers, path, get(gw.port, path, headers, src)) for src, headers, path, _ in cases]
        want = [(src, headers, path, w) for src, headers, path, w in cases]
        self.assertEqual(got, want)

    def rule(self, gw, verb, rid, *opts, route="main"):
        args = [verb, "rule", "web", route, rid]
        if verb != "remove":
            args += list(opts)
        return self.assertGwctlOk(gw, *args)

    # ------------------------------------------------------------------------

    def test_config_rules_ip_header_cookie(self):
        gw = self.gateway(self.gray_config(self.CONFIG_RULES))
        self.assertSides(gw, [
            ("127.0.0.1", (), "/", "prod"),
            ("127.0.0.2", (), "/", "pre"),          # listed address
            ("127.0.0.3", (), "/", "prod"),
            ("127.0.0.15", (), "/", "prod"),        # just below 127.0.0.16/28
            ("127.0.0.16", (), "/", "pre"),
            ("127.0.0.17", (), "/", "pre"),
            ("127.0.0.31", (), "/", "pre"),         # last address of the /28
            ("127.0.0.32", (), "/", "prod"),
            ("127.0.0.40", (), "/", "prod"),
            ("127.0.0.1", (("X-Canary", "1"),), "/", "pre"),
            ("127.0.0.1", (("x-canary", "1"),), "/", "pre"),          # field names are case-insensitive
            ("127.0.0.1", (("X-Canary", "  1 "),), "/", "pre"),       # OWS is not part of the value
            ("127.0.0.1", (("X-Canary", "10"),), "/", "prod"),
            ("127.0.0.1", (("X-Canary", "0"),), "/", "prod"),
            ("127.0.0.1", (("X-Canary-Not", "1"),), "/", "prod"),
            ("127.0.0.1", (("Cookie", "beta=yes"),), "/", "edge"),
            ("127.0.0.1", (("Cookie", "a=1; beta=yes; c=2"),), "/", "edge"),
            ("127.0.0.1", (("Cookie", "beta=yess"),), "/", "prod"),
            ("127.0.0.1", (("Cookie", "xbeta=yes"),), "/", "prod"),
            ("127.0.0.1", (("Cookie", "beta=no"),), "/", "prod"),
            ("127.0.0.1", (("X-Beta", "beta=yes"),), "/", "prod"),
            # first match wins: ips before hdr before ck
            ("127.0.0.2", (("Cookie", "beta=yes"),), "/", "pre"),
            ("127.0.0.1", (("X-Canary", "1"), ("Cookie", "beta=yes")), "/", "pre"),
            # rules belong to their route: /api/ has none
            ("127.0.0.2", (("X-Canary", "1"), ("Cookie", "beta=yes")), "/api/x", "prod"),
        ])
        self.assertEqual(self.routes(gw), {
            ("web", "main"): [{"id": "ips", "upstream": "pre", "ip": ["127.0.0.2/32", "127.0.0.16/28"]},
                              {"id": "hdr", "upstream": "pre", "header": {"name": "X-Canary", "value": "1"}},
                              {"id": "ck", "upstream": "edge", "cookie": {"name": "beta", "value": "yes"}}],
            ("web", "api"): []})

    def test_live_change_applies_to_next_request_on_keepalive(self):
        """Each change is seen by the very next request on a connection that
        stays open (no reload, no reconnect)."""
        gw = self.gateway(self.gray_config())
        c40 = Client(gw.port, "127.0.0.40")
        c41 = Client(gw.port, "127.0.0.41")
        hdr = (("X-Canary", "1"),)
        try:
            self.assertEqual([c40.get(), c41.get(), c41.get("/", hdr)], ["prod", "prod", "prod"])
            steps = [
                (("add", "r40", "--ip", "127.0.0.40", "--upstream", "pre"), ["pre", "prod", "prod"]),
                (("set", "r40", "--ip", "127.0.0.41", "--upstream", "edge"), ["prod", "edge", "edge"]),
                (("add", "h", "--header", "X-Canary=1", "--upstream", "pre"), ["prod", "edge", "edge"]),
                (("set", "r40", "--ip", "127.0.0.40/32", "--upstream", "pre"), ["pre", "prod", "pre"]),
                (("remove", "r40"), ["prod", "prod", "pre"]),
                (("set", "h", "--header", "X-Canary=2", "--upstream", "pre"), ["prod", "prod", "prod"]),
                (("add", "all", "--ip", "127.0.0.0/8", "--upstream", "edge"), ["edge", "edge", "edge"]),
                (("remove", "all"), ["prod", "prod", "prod"]),
            ]
            for (verb, rid, *opts), want in steps:
                self.rule(gw, verb, rid, *opts)
                got = [c40.get(), c41.get(), c41.get("/", hdr)]
                self.assertEqual(got, want, f"after {verb} rule {rid} {' '.join(opts)}")
        finally:
            c40.close()
            c41.close()
        st = gw.status()
        self.assertEqual(sum(w["accepted"] for w in st["workers"]), 2, "the clients were reconnected")
        texts = [t for t in gw.event_texts() if t.startswith("rule_changed")]
        self.assertEqual(texts, [
            "rule_changed web/main/r40 added ip=127.0.0.40/32 -> pre",
            "rule_changed web/main/r40 set ip=127.0.0.41/32 -> edge",
            "rule_changed web/main/h added header=X-Canary=1 -> pre",
            "rule_changed web/main/r40 set ip=127.0.0.40/32 -> pre",
            "rule_changed web/main/r40 removed",
            "rule_changed web/main/h set header=X-Canary=2 -> pre",
            "rule_changed web/main/all added ip=127.0.0.0/8 -> edge",
            "rule_changed web/main/all removed"])

    def test_percent_split_is_stable_and_close_to_asked(self):
        gw = self.gateway(self.gray_config())
        n = 2000
        keys = [f"user-{i:05d}-{random.Random(i).getrandbits(32):08x}" for i in range(n)]

        def sides(keys=keys):
            # fresh connections each round: this test is about the split, not
            # about when a change reaches an open connection (another test)
            out = {}
            conns = [Client(gw.port) for _ in range(4)]
            try:
                for ci, c in enumerate(conns):
                    part = keys[ci::len(conns)]
                    for off in range(0, len(part), 100):
                        batch = part[off:off + 100]
                        got = c.pipeline([("/", (("Cookie", f"a=b; uid={k}"),)) for k in batch])
                        out.update(zip(batch, got))
            finally:
                for c in conns:
                    c.close()
            return out

        self.assertEqual(set(sides(keys[:200]).values()), {"prod"})
        self.rule(gw, "add", "pct", "--percent", "5", "--upstream", "pre")
        first = sides()
        again = sides()
        self.assertEqual(first, again, "a key changed sides between two rounds")
        share = sum(v == "pre" for v in first.values()) / n
        sys.stderr.write(f"[5% asked: {share * 100:.2f}% of {n} keys] ")
        self.assertLess(abs(share - 0.05), 0.015, f"share {share:.4f} for 5%")
        self.assertEqual(set(first.values()), {"prod", "pre"})
        # exactly as specified: crc32(key) % 10000 < percent * 100
        wrong = [k for k in keys if first[k] != ("pre" if bucket(k) < 500 else "prod")]
        self.assertEqual(wrong[:10], [], f"{len(wrong)} keys on the other side than crc32(key) % 10000 < 500")
        # growing the share keeps every key that was in it
        self.rule(gw, "set", "pct", "--percent", "50", "--upstream", "pre")
        half = sides()
        share = sum(v == "pre" for v in half.values()) / n
        sys.stderr.write(f"[50% asked: {share * 100:.2f}%] ")
        self.assertLess(abs(share - 0.5), 0.04, f"share {share:.4f} for 50%")
        lost = [k for k in keys if first[k] == "pre" and half[k] != "pre"]
        self.assertEqual(lost, [], "keys left the share when it grew")
        self.rule(gw, "set", "pct", "--percent", "12.34", "--upstream", "pre")
        frac = sides()
        wrong = [k for k in keys if frac[k] != ("pre" if bucket(k) < 1234 else "prod")]
        self.assertEqual(wrong[:10], [], f"{len(wrong)} keys wrong at 12.34%")
        self.assertEqual(self.routes(gw)[("web", "main")],
                         [{"id": "pct", "upstream": "pre", "percent": 12.34}])
        # Every request sent to "pre" was a hit of the rule ("set rule" keeps its counter).
        sent_pre = sum(sum(v == "pre" for v in d.values()) for d in (first, again, half, frac))
        self.assertEqual(self.hits(gw), {"pct": sent_pre})
        self.rule(gw, "set", "pct", "--percent", "0", "--upstream", "pre")
        self.assertEqual(set(sides(keys[:400]).values()), {"prod"}, "percent 0")
        self.rule(gw, "set", "pct", "--percent", "100", "--upstream", "pre")
        self.assertEqual(set(sides(keys[:400]).values()), {"pre"}, "percent 100")

    def test_percent_without_key_hashes_client_ip(self):
        """A request without the route's hash key is split by its client
        address (the text nginx's $remote_addr gives)."""
        gw = self.gateway(self.gray_config())
        self.rule(gw, "add", "pct", "--percent", "50", "--upstream", "pre")
        srcs = [f"127.0.0.{i}" for i in range(1, 81)]
        got = {s: get(gw.port, "/", (), s) for s in srcs}
        want = {s: "pre" if bucket(s) < 5000 else "prod" for s in srcs}
        self.assertEqual(got, want)
        self.assertEqual(len(set(got.values())), 2)
        # the same again: stable
        self.assertEqual({s: get(gw.port, "/", (), s) for s in srcs[:20]}, {s: want[s] for s in srcs[:20]})
        # on a route whose hash key is the ip, the same
        got = {s: get(gw.port, "/api/x", (), s) for s in srcs[:30]}
        self.assertEqual(got, {s: "prod" for s in srcs[:30]}, "route api has no rules")
        self.rule(gw, "add", "pct", "--percent", "50", "--upstream", "edge", route="api")
        got = {s: get(gw.port, "/api/x", (), s) for s in srcs[:30]}
        self.assertEqual(got, {s: "edge" if bucket(s) < 5000 else "prod" for s in srcs[:30]})

    def test_combination_and_first_match_order(self):
        gw = self.gateway(self.gray_config())
        H = ("X-Canary", "1")
        C = ("Cookie", "beta=yes")
        self.rule(gw, "add", "combo", "--ip", "127.0.0.16/28", "--header", "X-Canary=1", "--cookie", "beta=yes",
                  "--upstream", "edge")
        self.rule(gw, "add", "hdr2", "--header", "X-Canary=1", "--upstream", "pre")
        self.assertEqual(self.rule_ids(gw), ["combo", "hdr2"])
        self.assertSides(gw, [
            ("127.0.0.17", (H, C), "/", "edge"),     # every matcher holds
            ("127.0.0.17", (H,), "/", "pre"),        # no cookie: combo fails, hdr2 holds
            ("127.0.0.40", (H, C), "/", "pre"),      # outside the block
            ("127.0.0.17", (C,), "/", "prod"),       # no header
            ("127.0.0.17", (), "/", "prod"),
        ])
        # combination with a percentage: 100% and a header
        self.rule(gw, "add", "pc", "--percent", "100", "--cookie", "beta=yes", "--upstream", "edge")
        self.assertSides(gw, [("127.0.0.1", (C,), "/", "edge"), ("127.0.0.1", (), "/", "prod")])
        self.rule(gw, "set", "pc", "--percent", "0", "--cookie", "beta=yes", "--upstream", "edge")
        self.assertSides(gw, [("127.0.0.1", (C,), "/", "prod")])
        self.rule(gw, "remove", "pc")
        # set keeps the position: combo now takes every X-Canary request, first
        self.rule(gw, "set", "combo", "--header", "X-Canary=1", "--upstream", "edge")
        self.assertEqual(self.rule_ids(gw), ["combo", "hdr2"])
        self.assertSides(gw, [("127.0.0.40", (H,), "/", "edge"), ("127.0.0.17", (H,), "/", "edge")])
        # remove and add again: now last, so hdr2 wins
        self.rule(gw, "remove", "combo")
        self.rule(gw, "add", "combo", "--header", "X-Canary=1", "--upstream", "edge")
        self.assertEqual(self.rule_ids(gw), ["hdr2", "combo"])
        self.assertSides(gw, [("127.0.0.40", (H,), "/", "pre")])
        # config rules come first, live ones after them
        gw2 = self.gateway(self.gray_config(self.CONFIG_RULES))
        self.rule(gw2, "add", "late", "--ip", "127.0.0.2", "--upstream", "edge")
        self.assertEqual(self.rule_ids(gw2), ["ips", "hdr", "ck", "late"])
        self.assertSides(gw2, [("127.0.0.2", (), "/", "pre")])
        self.rule(gw2, "remove", "ips")
        self.assertSides(gw2, [("127.0.0.2", (), "/", "edge"), ("127.0.0.2", (H,), "/", "pre")])

    def test_cookie_rule_with_quoted_value(self):
        """A cookie's value may be sent quoted (RFC 6265 4.1.1: beta="yes"),
        and gw compares it without its quotes; a rule written with them
        (copied from a Cookie field) means the same value, so it matches
        beta=yes and beta="yes" alike. Before, it was taken and matched
        nothing (the request's quotes were dropped, the rule's kept)."""
        gw = self.gateway(self.gray_config())
        self.rule(gw, "add", "q", "--cookie", 'beta="yes"', "--upstream", "edge")
        self.assertSides(gw, [
            ("127.0.0.1", (("Cookie", 'beta="yes"'),), "/", "edge"),
            ("127.0.0.1", (("Cookie", "a=1; beta=yes"),), "/", "edge"),
            ("127.0.0.1", (("Cookie", 'beta="no"'),), "/", "prod"),
            ("127.0.0.1", (("Cookie", 'beta=""'),), "/", "prod"),
        ])
        # shown and kept as given
        self.assertEqual(self.routes(gw)[("web", "main")],
                         [{"id": "q", "upstream": "edge", "cookie": {"name": "beta", "value": '"yes"'}}])

    def test_bad_input_is_one_line_error_and_changes_nothing(self):
        gw = self.gateway(self.gray_config(self.CONFIG_RULES))
        empty = os.path.join(self.tmp, "empty.txt")
        with open(empty, "w") as f:
            f.write("# nothing here\n\n")
        badfile = os.path.join(self.tmp, "bad.txt")
        with open(badfile, "w") as f:
            f.write("127.0.0.5\n127.0.0.999\n")
        ok = ["--ip", "127.0.0.3"]
        cases = [
            ["add", "rule", "web", "nosuch", "r", *ok, "--upstream", "pre"],          # missing route
            ["add", "rule", "nol", "main", "r", *ok, "--upstream", "pre"],            # missing listener
            ["add", "rule", "l4", "main", "r", *ok, "--upstream", "pre"],             # not an http listener
            ["add", "rule", "web", "main", "r", *ok, "--upstream", "nosuch"],         # missing upstream
            ["add", "rule", "web", "main", "r", *ok],                                 # no upstream
            ["add", "rule", "web", "main", "r", "--ip", "127.0.0.300", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--ip", "127.0.0.0/33", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--ip", "127.0.0.0/", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--ip", "localhost", "--upstream", "pre"],
            # no address at all (an empty variable beside a separator): no matcher would be
            # left, and with --header the rule would match every client
            ["add", "rule", "web", "main", "r", "--ip", ",", "--header", "X-A=1", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--ip", " ", "--header", "X-A=1", "--upstream", "pre"],
            # an empty value (an unset variable): read as no matcher, it matched every client
            ["add", "rule", "web", "main", "r", "--ip", "", "--header", "X-A=1", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--ip-file", "", "--header", "X-A=1", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--header", "", *ok, "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--cookie", "", *ok, "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--percent", "", *ok, "--upstream", "pre"],
            ["set", "rule", "web", "main", "ips", "--ip", "", "--header", "X-A=1", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--ip", "127.0.0.2,bogus", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--ip", "127.0.0.17/28", "--upstream", "pre"],   # bits past prefix
            ["add", "rule", "web", "main", "r", "--ip", "::1/64", "--upstream", "pre"],          # bits past prefix
            ["add", "rule", "web", "main", "r", "--ip-file", badfile, "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--ip-file", empty, "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--ip-file", os.path.join(self.tmp, "missing.txt"), "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--percent", "101", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--percent", "-1", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--percent", "abc", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--percent", "5%", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--upstream", "pre"],                 # no matcher
            ["add", "rule", "web", "main", "ips", *ok, "--upstream", "pre"],          # duplicate id (config)
            ["add", "rule", "web", "main", "bad id", *ok, "--upstream", "pre"],       # bad id
            ["add", "rule", "web", "main", "r", "--header", "X Canary=1", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--header", "X-Canary:=1", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--header", "=1", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--header", "X-Canary", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--header", "X-Canary=a\x01b", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--cookie", "be ta=yes", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--cookie", "beta", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--cookie", "beta=a;b", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", *ok, "--upstream", "pre", "--bogus", "1"],
            ["set", "rule", "web", "main", "nosuch", *ok, "--upstream", "pre"],       # set a missing rule
            ["set", "rule", "web", "main", "ips", "--upstream", "pre"],               # set without a matcher
            ["set", "rule", "web", "main", "ips", "--ip", "127.0.0.1/8", "--upstream", "pre"],
            ["set", "rule", "web", "main", "ips", *ok, "--upstream", "nosuch"],
            ["set", "rule", "web", "api", "ips", *ok, "--upstream", "pre"],           # id of another route
            ["remove", "rule", "web", "main", "nosuch"],
            ["remove", "rule", "web", "api", "ips"],
            ["remove", "rule", "web", "nosuch", "ips"],
            ["remove", "rule", "nol", "main", "ips"],
            ["add", "rule", "web", "main", "r", "--percent", "nan", "--upstream", "pre"],
            ["add", "rule", "web", "main", "r", "--percent", "nan", *ok, "--upstream", "pre"],
        ]
        # a duplicate of a live rule too
        self.rule(gw, "add", "live", "--ip", "127.0.0.5", "--upstream", "edge")
        cases.append(["add", "rule", "web", "main", "live", "--ip", "127.0.0.6", "--upstream", "pre"])
        # each a one-line error that commits nothing
        lines = self.assertGwctlErrors(gw, [(" ".join(args), args) for args in cases])
        # routing is as before
        self.assertSides(gw, [("127.0.0.3", (), "/", "prod"), ("127.0.0.2", (), "/", "pre"),
                              ("127.0.0.5", (), "/", "edge"), ("127.0.0.6", (), "/", "prod")])
        self.assertEqual(self.rule_ids(gw), ["ips", "hdr", "ck", "live"])
        self.assertEqual(self.rule_ids(gw, "api"), [])
        # the messages name the problem
        self.assertRegex(lines["add rule web main r --ip 127.0.0.17/28 --upstream pre"], r"past|prefix")
        self.assertRegex(lines["add rule web main r --percent 101 --upstream pre"], r"percent")
        self.assertRegex(lines["add rule web main r --upstream pre"], r"matcher")
        self.assertRegex(lines["add rule web main r --ip 127.0.0.3 --upstream nosuch"], r"nosuch")
        self.assertRegex(lines["add rule web nosuch r --ip 127.0.0.3 --upstream pre"], r"nosuch")
        self.assertRegex(lines["add rule web main ips --ip 127.0.0.3 --upstream pre"], r"ips")

    def test_status_text_and_json_show_rules(self):
        gw = self.gateway(self.gray_config(self.CONFIG_RULES))
        self.rule(gw, "add", "pct", "--percent", "2.5", "--header", "X-Canary=yes", "--upstream", "edge")
        self.rule(gw, "add", "many", "--ip", ",".join(f"127.0.1.{i}" for i in range(1, 13)), "--upstream", "pre",
                  route="api")
        rc, out, err = gw.gwctl("status")
        self.assertEqual(rc, 0, err)
        m = re.search(r"(?ms)^LISTENER/ROUTE/RULE.*", out)
        self.assertIsNotNone(m, f"no rules section in gwctl status:\n{out}")
        sect = [l.rstrip() for l in m.group(0).splitlines()[1:] if l.strip()]
        self.assertEqual([l.split()[0] for l in sect], ["web/main", "ips", "hdr", "ck", "pct", "web/api", "many"], out)
        rows = {l.split()[0]: " ".join(l.split()[1:]) for l in sect}
        self.assertEqual(rows["ips"], "ip=127.0.0.2/32,127.0.0.16/28 -> pre")
        self.assertEqual(rows["hdr"], "header=X-Canary=1 -> pre")
        self.assertEqual(rows["ck"], "cookie=beta=yes -> edge")
        self.assertEqual(rows["pct"], "header=X-Canary=yes percent=2.5 -> edge")
        self.assertIn("(12 in all)", rows["many"])
        self.assertTrue(rows["many"].endswith("-> pre"), rows["many"])
        js = self.routes(gw)
        self.assertEqual(js[("web", "main")][3],
                         {"id": "pct", "upstream": "edge", "header": {"name": "X-Canary", "value": "yes"},
                          "percent": 2.5})
        self.assertEqual(js[("web", "api")][0]["ip"], [f"127.0.1.{i}/32" for i in range(1, 13)])
        self.assertEvent(gw, r"^rule_changed web/api/many added ip=127\.0\.1\.1/32,")

    # ------------------------------------------------------------------------
    # persistence

    def crash(self, gw):
        gw.kill_all()
        self.assertIsNotNone(gw.proc.poll(), "gwd master survived SIGKILL")
        self.assertFalse(gwtest.port_listening(gw.port), "listener still open after SIGKILL of every gw process")

    def test_rules_survive_crash_and_reboot(self):
        cfg = self.gray_config(self.CONFIG_RULES, api_rules=[{"id": "only", "cookie": "beta=yes", "upstream": "pre"}],
                               workers=2)
        gw = self.gateway(cfg)
        shm_path = f"/dev/shm/{gw.shm}"
        ipfile = os.path.join(self.tmp, "ips.txt")
        addrs = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(999)] + ["127.0.0.50"]
        with open(ipfile, "w") as f:
            f.write("# 1,000 client addresses\n" + "\n".join(addrs) + "\n")
        self.rule(gw, "add", "file", "--ip-file", ipfile, "--upstream", "edge")
        self.rule(gw, "add", "pct", "--percent", "7.5", "--cookie", "grp=a", "--upstream", "pre")
        self.rule(gw, "set", "hdr", "--header", "X-Canary=2", "--upstream", "edge")
        self.rule(gw, "remove", "ips")
        self.rule(gw, "remove", "only", route="api")      # api's config rules all removed
        self.rule(gw, "add", "tmp", "--ip", "127.0.0.9", "--upstream", "pre")
        self.rule(gw, "remove", "tmp")
        want = self.routes(gw)
        self.assertEqual([r["id"] for r in want[("web", "main")]], ["hdr", "ck", "file", "pct"])
        self.assertEqual(want[("web", "api")], [])
        self.assertEqual(len(want[("web", "main")][2]["ip"]), 1000)

        def check(when):
            self.assertEqual(self.routes(gw), want, f"rules differ {when}")
            self.assertSides(gw, [
                ("127.0.0.2", (), "/", "prod"),                       # ips was removed
                ("127.0.0.50", (), "/", "edge"),                      # in the file
                ("127.0.0.51", (), "/", "prod"),
                ("127.0.0.1", (("X-Canary", "2"),), "/", "edge"),     # hdr as set
                ("127.0.0.1", (("X-Canary", "1"),), "/", "prod"),
                ("127.0.0.1", (("Cookie", "beta=yes"),), "/api/x", "prod"),   # api stays empty
                ("127.0.0.1", (("Cookie", "beta=yes"),), "/", "edge"),
            ])

        check("before the crash")
        with open(cfg["state_file"]) as f:
            state = json.load(f)
        self.assertIn("routes", state)
        # 1. SIGKILL every gw process; the segment stays
        self.crash(gw)
        self.assertTrue(os.path.exists(shm_path))
        gw.start()
        check("after a crash (segment kept)")
        # 2. and with the segment removed (a reboot): the state file restores them
        self.crash(gw)
        os.unlink(shm_path)
        gw.start()
        check("after a reboot (segment removed)")
        # 3. a change after the restore persists too
        self.rule(gw, "remove", "file")
        want[("web", "main")] = [r for r in want[("web", "main")] if r["id"] != "file"]
        self.crash(gw)
        os.unlink(shm_path)
        gw.start()
        self.assertEqual(self.routes(gw), want)
        self.assertSides(gw, [("127.0.0.50", (), "/", "prod")])

    def test_graceful_restart_keeps_rules(self):
        gw = self.gateway(self.gray_config(self.CONFIG_RULES))
        self.rule(gw, "add", "x", "--ip", "127.0.0.60", "--upstream", "edge")
        self.rule(gw, "remove", "hdr")
        want = self.routes(gw)
        self.assertEqual(gw.stop(), 0)
        gwtest.remove_shm(gw.shm)
        gw.start()
        self.assertEqual(self.routes(gw), want)
        self.assertSides(gw, [("127.0.0.60", (), "/", "edge"), ("127.0.0.1", (("X-Canary", "1"),), "/", "prod")])

    def reload(self, gw, config):
        """Writes `config` and SIGHUPs the master; returns once the reload is done."""
        gwtest.write_json(gw.conf_path, config)
        n = len(gw.log_text())
        gw.send_signal(signal.SIGHUP)
        gwtest.wait_until(lambda: "reloaded:" in gw.log_text()[n:], T(10), msg="the reload")

    def test_reload_keeps_rule_hits(self):
        """A rule keeps its hit counters across a reload (as hosts and listeners keep theirs);
        every reload used to give each rule a new counter column, at 0."""
        cfg = self.gray_config(self.CONFIG_RULES)
        gw = self.gateway(cfg)
        for _ in range(5):
            self.assertEqual(get(gw.port, "/", (("X-Canary", "1"),)), "pre")
        self.assertEqual(self.hits(gw)["hdr"], 5)
        self.reload(gw, cfg)
        self.assertEqual(self.hits(gw)["hdr"], 5)
        self.assertEqual(get(gw.port, "/", (("X-Canary", "1"),)), "pre")
        gwtest.wait_until(lambda: self.hits(gw)["hdr"] == 6, T(5), msg="the next hit to be counted")

    def test_inflight_retry_after_reload_stays_on_its_upstream(self):
        """A request in flight when a reload removes another upstream (so that its own moves
        to another position in the table) is retried on its own upstream, never on the one
        that took its old position: here pre has one host, which closes without answering,
        so the answer is 502 (it was edge's)."""
        slow = _ReadThenClose(1.5)
        self.addCleanup(slow.stop)
        cfg = self.gray_config([{"id": "hdr", "header": "X-Canary=1", "upstream": "pre"}])
        ups = {u["name"]: u for u in cfg["upstreams"]}
        ups["pre"] = upstream("pre", [pool("p", [host("slow", slow.address)])],
                              retry={"on": ["error", "timeout"], "tries": 2})
        zzz = upstream("zzz", [pool("p", [host("z", self.be["prod"].address)])])
        cfg["upstreams"] = [zzz, ups["pre"], ups["edge"], ups["prod"]]
        gw = self.gateway(cfg)
        result = {}

        def request():
            c = Client(gw.port, timeout=T(15))
            try:
                result["side"] = c.get("/", (("X-Canary", "1"),))
            except Exception as e:  # noqa: BLE001 -- reported by the assertion below
                result["side"] = repr(e)
            finally:
                c.close()
        th = threading.Thread(target=request)
        th.start()
        try:
            gwtest.wait_until(lambda: slow.heads >= 1, T(5), msg="the request to reach pre's host")
            cfg2 = json.loads(json.dumps(cfg))
            cfg2["upstreams"] = [u for u in cfg2["upstreams"] if u["name"] != "zzz"]
            self.reload(gw, cfg2)
        finally:
            th.join(T(20))
        self.assertEqual(result.get("side"), "502", "the retry went to another upstream")

    # ------------------------------------------------------------------------
    # under load

    def test_rule_changes_under_load(self):
        """Keep-alive clients (several source addresses) send requests
        continuously while 1,000 rule changes (add, set, remove; ip, header,
        cookie and percent matchers) are made: no request fails and every
        answer comes from prod or pre. On a sanitizer build, 250 changes: a
        gwctl run there takes 0.3-0.5 s rather than 0.03 s (process start-up
        under ASan), and 1,000 took 469 s."""
        gw = self.gateway(self.gray_config(self.CONFIG_RULES, workers=2))
        rounds = 63 if gwtest.sanitized_build() else 252
        stop = threading.Event()
        lock = threading.Lock()
        counts = {}
        errors = []

        def load(i):
            src = f"127.0.0.{[1, 2, 17, 40][i % 4]}"
            rng = random.Random(i)
            c = None
            n = 0
            while not stop.is_set():
                try:
                    if c is None:
                        c = Client(gw.port, src, timeout=T(10))
                    hdrs = [("Cookie", f"uid=u{rng.getrandbits(20)}")]
                    if rng.random() < 0.3:
                        hdrs.append(("X-Canary", "1"))
                    got = c.pipeline([("/", tuple(hdrs))] * 4)
                    with lock:
                        for g in got:
                            counts[g] = counts.get(g, 0) + 1
                    n += 1
                    time.sleep(0.005)  # a few hundred requests/s per thread: leave gwctl some CPU
                    if n % 50 == 0:   # some new connections too
                        c.close()
                        c = None
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    with lock:
                        errors.append(f"{src}: {e!r}")
                    if c is not None:
                        c.close()
                    c = None
            if c is not None:
                c.close()

        threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        ops = 0
        t0 = time.monotonic()
        try:
            for i in range(rounds):
                r = f"live{i % 5}"
                if i >= 5:
                    self.rule(gw, "remove", r)
                    ops += 1
                self.rule(gw, "add", r, "--ip", f"127.0.0.{[2, 40, 17, 1, 99][i % 5]}", "--upstream",
                          "pre" if i % 2 else "prod")
                ops += 1
                self.rule(gw, "set", r, "--percent", str(i % 101), "--cookie", "uid=u1" if i % 3 else "x=y",
                          "--upstream", "pre")
                ops += 1
                self.rule(gw, "set", "hdr", "--header", f"X-Canary={i % 2}", "--upstream",
                          "pre" if i % 3 else "prod")
                ops += 1
        finally:
            secs = time.monotonic() - t0
            stop.set()
            for t in threads:
                t.join(T(15))
        total = sum(counts.values())
        sys.stderr.write(f"[{ops} rule changes in {secs:.1f}s = {ops / secs:.0f}/s; {total} requests "
                         f"= {total / secs:.0f}/s: {counts}] ")
        self.assertGreaterEqual(ops, 4 * rounds - 5)
        self.assertEqual(errors[:5], [], f"{len(errors)} failed requests")
        self.assertEqual(set(counts) - {"prod", "pre"}, set(), f"answers from elsewhere: {counts}")
        self.assertGreater(total / secs, 200, "the load was too light to mean anything")
        self.assertEqual(set(counts), {"prod", "pre"})
        st = gw.status()
        self.assertEqual(sum_http(st, "bad_gateway") + sum_http(st, "no_host") + sum_http(st, "bad_request"), 0)
        # the final rules are what the last changes made, and gw routes by them
        self.assertEqual(self.rule_ids(gw), ["ips", "hdr", "ck"] + [f"live{i % 5}" for i in range(rounds - 5, rounds)])


def sum_http(st, key):
    return sum((w.get("http") or {}).get(key, 0) for w in st["workers"])


if __name__ == "__main__":
    gwtest.main()
