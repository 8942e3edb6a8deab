#!/usr/bin/python3
"""gw's `chash` and `hash` balancing methods against a real nginx.

`chash` must pick exactly the server nginx picks with `hash $key consistent`
(ketama, 160 points per weight unit, CRC32 points seeded from "HOST\\0PORT"),
and `hash` exactly the server nginx picks with plain `hash $key` (the
Cache::Memcached formula). For every case this test

  1. starts N tiny HTTP backends on loopback; each answers with its own ID;
  2. starts a real nginx (`upstream u { hash $arg_k [consistent]; server
     IP:PORT weight=W; ... }`) in a private prefix and asks it for
     `/?k=KEY` for 1,000 deterministic keys, noting which backend answered;
  3. feeds the same keys, exactly as nginx sees them, to
     `$GW_BUILD_DIR/gw-hashpick --method chash|hash --host ID=IP:PORT:W ...`;
  4. asserts all 1,000 picks are equal.

$arg_k is the raw query value: nginx hashes it still percent-encoded, so the
keys handed to gw-hashpick are the on-the-wire (encoded) strings, never the
decoded ones.

On a mismatch the failure lists the first differing keys with nginx's pick,
gw's pick and what a Python model of nginx's algorithm (see nginx's
ngx_http_upstream_hash_module.c) yields, to tell a test bug from a gw bug.

Skipped only when nginx is not installed; fails when gw-hashpick is missing.
Environment: GW_BUILD_DIR (default /work/main/build), GW_TEST_KEEP=1 keeps the
temp dirs, GW_TEST_TIMEOUT_SCALE multiplies the timeouts. Python 3 stdlib only.
"""

import atexit
import bisect
import http.client
import http.server
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import uuid
import zlib

BUILD_DIR = os.path.abspath(os.environ.get("GW_BUILD_DIR") or "/work/main/build")
HASHPICK = os.path.join(BUILD_DIR, "gw-hashpick")
KEEP = os.environ.get("GW_TEST_KEEP") == "1"
SCALE = float(os.environ.get("GW_TEST_TIMEOUT_SCALE") or "1")
NKEYS = 1000


def T(seconds):
    return seconds * SCALE


def find_nginx():
    for cand in (shutil.which("nginx"), "/usr/sbin/nginx", "/usr/local/sbin/nginx",
                 "/usr/local/nginx/sbin/nginx"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


NGINX = find_nginx()

# Safety net: nginx processes still running when the interpreter exits.
_live = set()


def _atexit_kill():
    for proc in list(_live):
        if proc.poll() is None:
            try:
                proc.kill()
                proc.wait(timeout=5)
            except Exception:
                pass


atexit.register(_atexit_kill)


# ----------------------------------------------------------------------------
# keys: 1,000 deterministic strings in the form nginx sees them ($arg_k, raw)

def _enc(s):
    """Percent-encodes everything but RFC 3986 unreserved characters (UTF-8)."""
    return urllib.parse.quote(s, safe="-._~")


def _enc_lower(s):
    """Like _enc but with lower-case hex digits (nginx does not normalise)."""
    parts = _enc(s).split("%")
    return parts[0] + "".join("%" + p[:2].lower() + p[2:] for p in parts[1:])


def make_keys():
    """Returns NKEYS distinct wire-form keys (what follows `k=` in the URL)."""
    rng = random.Random(0x9E3779B9)
    keys = []
    # plain ASCII, no encoding needed
    keys += ["k%d" % i for i in range(600)]
    # UUID-like
    keys += [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(150)]
    # unicode (UTF-8, percent-encoded; a few with lower-case hex)
    words = ["ключ", "键", "clé", "schlüssel", "🔑", "κλειδί", "מפתח", "キー", "ñandú", "Ωμέγα"]
    for i in range(100):
        s = "%s-%d" % (words[i % len(words)], i)
        keys.append(_enc_lower(s) if i % 10 == 3 else _enc(s))
    # long keys (100..3000 bytes), only unreserved characters
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"
    for i in range(80):
        n = 100 + (i * 2900) // 79
        keys.append("long%d-" % i + "".join(rng.choice(alphabet) for _ in range(n)))
    # reserved characters: percent-encoded, or raw where a query allows them
    # (sub-delims except '&', ':', '@', '/', '?'); nginx keeps both as sent
    specials = [" ", "&", "+", "=", "/", "%", "#", "?", "@", ":", ",", ";", "!", "$", "'", "(", ")", "*"]
    for i in range(70):
        c = specials[i % len(specials)]
        s = "sp%d%sx%sy" % (i, c, c)
        if (i // len(specials)) % 2 == 1 or c in " &%#":
            keys.append(_enc(s))
        else:
            keys.append(s)
    assert len(keys) == NKEYS, len(keys)
    assert len(set(keys)) == NKEYS
    for k in keys:
        assert k and all(0x21 <= ord(c) < 0x7f for c in k) and "&" not in k and "#" not in k, k
    return keys


KEYS = make_keys()


# ----------------------------------------------------------------------------
# Python model of nginx 1.22's ngx_http_upstream_hash_module (diagnostics only)

def _split_host_port(server):
    """nginx: the port is the all-digit tail after the last ':'."""
    j = 0
    while j < len(server):
        c = server[len(server) - j - 1]
        if c == ":":
            return server[:len(server) - j - 1], server[len(server) - j:]
        if not "0" <= c <= "9":
            break
        j += 1
    return server, ""


def model_chash(hosts, keys):
    """hosts: [(id, "IP:PORT", weight)] -> {key: id} like `hash $key consistent`."""
    points = []
    for idx, (_, server, weight) in enumerate(hosts):
        host, port = _split_host_port(server)
        base = host.encode() + b"\0" + port.encode()
        prev = 0
        for _ in range(160 * weight):
            h = zlib.crc32(base + struct.pack("<I", prev))
            points.append((h, idx))
            prev = h
    points.sort(key=lambda p: p[0])  # nginx's qsort is not stable: ties are ambiguous
    uniq = [points[0]]
    for p in points[1:]:
        if p[0] != uniq[-1][0]:
            uniq.append(p)
    hashes = [p[0] for p in uniq]
    out = {}
    for k in keys:
        h = zlib.crc32(k.encode())
        i = bisect.bisect_left(hashes, h) % len(uniq)
        out[k] = hosts[uniq[i][1]][0]
    return out


def model_hash(hosts, keys):
    """hosts: [(id, "IP:PORT", weight)] -> {key: id} like `hash $key` (all up)."""
    total = sum(w for _, _, w in hosts)
    out = {}
    for k in keys:
        h = (zlib.crc32(k.encode()) >> 16) & 0x7FFF  # first try: no rehash prefix
        w = h % total
        p = 0
        while w >= hosts[p][2]:
            w -= hosts[p][2]
            p += 1
        out[k] = hosts[p][0]
    return out


# ----------------------------------------------------------------------------
# backends

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        body = self.server.backend_id.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 128


class Backend:
    """An HTTP server on (ip, port) answering every request with its ID."""

    def __init__(self, backend_id, ip, port=0):
        self.id = backend_id
        self.srv = _Server((ip, port), _Handler)
        self.srv.backend_id = backend_id
        self.ip, self.port = self.srv.server_address[:2]
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="backend-" + self.id, daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread is not None:
            self.srv.shutdown()
            self.thread.join(T(5))
        self.srv.server_close()

    @property
    def addr(self):
        return "%s:%d" % (self.ip, self.port)


def free_port(ip="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------
# nginx

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log notice;

events {{
    worker_connections 256;
}}

http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body_temp;
    proxy_temp_path {tmp}/proxy_temp;
    fastcgi_temp_path {tmp}/fastcgi_temp;
    uwsgi_temp_path {tmp}/uwsgi_temp;
    scgi_temp_path {tmp}/scgi_temp;
    keepalive_requests 100000;
    keepalive_timeout 60s;

    upstream u {{
        {hash_directive}
{servers}
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://u;
            proxy_next_upstream off;
            proxy_connect_timeout 5s;
            proxy_read_timeout 10s;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, tmp, hash_directive, hosts):
        """hosts: [(id, "IP:PORT", weight)] in config order."""
        self.tmp = tmp
        self.proc = None
        self.port = None
        self.hash_directive = hash_directive
        self.servers = "\n".join("        server %s weight=%d;" % (addr, w) for _, addr, w in hosts)

    def error_log(self):
        try:
            with open(os.path.join(self.tmp, "error.log"), errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def start(self):
        last = ""
        for _attempt in range(5):
            self.port = free_port()
            conf = os.path.join(self.tmp, "nginx.conf")
            with open(conf, "w") as f:
                f.write(NGINX_CONF.format(tmp=self.tmp, port=self.port, hash_directive=self.hash_directive,
                                          servers=self.servers))
            out = open(os.path.join(self.tmp, "nginx.out"), "ab")
            try:
                self.proc = subprocess.Popen([NGINX, "-p", self.tmp + "/", "-c", conf, "-e",
                                              os.path.join(self.tmp, "error.log")],
                                             stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                             start_new_session=True)
            finally:
                out.close()
            _live.add(self.proc)
            deadline = time.monotonic() + T(10)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return
                except OSError:
                    time.sleep(0.02)
            self.stop()
            last = self.error_log()
            if "Address already in use" not in last:
                break
        raise AssertionError("nginx did not start; error.log:\n" + last)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=T(5))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=T(5))
        _live.discard(self.proc)
        self.proc = None


class NginxClient:
    """Keep-alive HTTP/1.1 client; reconnects when nginx closes the connection."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def get(self, path):
        last = None
        for _attempt in range(3):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=T(10))
            try:
                self.conn.request("GET", path)
                resp = self.conn.getresponse()
                body = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, body, resp.getheader("X-Upstream")
            except (http.client.HTTPException, ConnectionError, BrokenPipeError) as e:
                last = e
                self.close()
        raise AssertionError("GET %s failed: %r" % (path, last))

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ----------------------------------------------------------------------------
# the test case

class NginxHashCompat(unittest.TestCase):
    def setUp(self):
        if NGINX is None:
            self.skipTest("nginx is not installed (looked in PATH and /usr/sbin, /usr/local/sbin)")
        self.tmp = tempfile.mkdtemp(prefix="gw-nginx-hash-")
        self.addCleanup(self._remove_tmp)
        self.backends = []

    def _remove_tmp(self):
        if KEEP:
            sys.stderr.write("\nkept %s\n" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def require_hashpick(self):
        if not (os.path.isfile(HASHPICK) and os.access(HASHPICK, os.X_OK)):
            self.fail("gw-hashpick not found (or not executable) at %s; build it, or set GW_BUILD_DIR" % HASHPICK)

    # -- backends --------------------------------------------------------

    def _add_backend(self, b):
        self.backends.append(b)
        self.addCleanup(b.stop)
        b.start()
        return b

    def start_backends(self, weights, ips=None):
        """Returns [(id, "IP:PORT", weight)]; ips defaults to 127.0.0.1 for all."""
        hosts = []
        for i, w in enumerate(weights):
            ip = ips[i] if ips else "127.0.0.1"
            b = self._add_backend(Backend("b%d" % i, ip))
            hosts.append((b.id, b.addr, w))
        return hosts

    def start_backends_same_port(self, weights, ips):
        """Backends on distinct addresses sharing one port (the hashed server
        text then differs in the host part only). Falls back to any ports."""
        for _attempt in range(20):
            made = []
            try:
                first = Backend("b0", ips[0])
                made.append(first)
                for i in range(1, len(ips)):
                    made.append(Backend("b%d" % i, ips[i], first.port))
            except OSError:
                for b in made:
                    b.stop()
                continue
            hosts = []
            for b, w in zip(made, weights):
                self._add_backend(b)
                hosts.append((b.id, b.addr, w))
            return hosts
        return self.start_backends(weights, ips)

    # -- nginx and gw ----------------------------------------------------

    def nginx_picks(self, hash_directive, hosts):
        ngx = Nginx(self.tmp, hash_directive, hosts)
        self.addCleanup(ngx.stop)
        ngx.start()
        by_addr = {addr: bid for bid, addr, _ in hosts}
        client = NginxClient(ngx.port)
        self.addCleanup(client.close)
        picks = {}
        for k in KEYS:
            status, body, upstream = client.get("/?k=" + k)
            if status != 200:
                self.fail("nginx answered %d for key %r (upstream %s); error.log:\n%s"
                          % (status, k, upstream, ngx.error_log()))
            bid = body.decode("ascii", "replace")
            self.assertEqual(by_addr.get(upstream), bid,
                             "nginx's $upstream_addr %r disagrees with the body %r" % (upstream, bid))
            picks[k] = bid
        client.close()
        ngx.stop()
        return picks

    def gw_picks(self, method, hosts):
        self.require_hashpick()
        cmd = [HASHPICK, "--method", method]
        for bid, addr, w in hosts:
            cmd += ["--host", "%s=%s:%d" % (bid, addr, w)]
        try:
            r = subprocess.run(cmd, input=("\n".join(KEYS) + "\n").encode(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=T(30))
        except subprocess.TimeoutExpired:
            self.fail("gw-hashpick did not finish in %.0f s: %s" % (T(30), " ".join(cmd)))
        err = r.stderr.decode(errors="replace")[-2000:]
        self.assertEqual(r.returncode, 0, "gw-hashpick exited %d: %s\nstderr:\n%s"
                         % (r.returncode, " ".join(cmd), err))
        lines = r.stdout.decode(errors="replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self.assertEqual(len(lines), len(KEYS), "gw-hashpick printed %d lines for %d keys; stderr:\n%s"
                         % (len(lines), len(KEYS), err))
        picks = {}
        for k, line in zip(KEYS, lines):
            key, sep, bid = line.rpartition("\t")
            self.assertTrue(sep, "gw-hashpick line without a TAB: %r" % line)
            self.assertEqual(key, k, "gw-hashpick echoed key %r for input %r" % (key, k))
            picks[k] = bid
        return picks, cmd

    def check(self, method, hosts):
        """Runs nginx and gw-hashpick on the same hosts and keys; all picks must agree."""
        self.require_hashpick()  # fail fast, before the nginx round
        directive = "hash $arg_k consistent;" if method == "chash" else "hash $arg_k;"
        ngx = self.nginx_picks(directive, hosts)
        # sanity of the nginx side: the keys are spread over every backend
        used = {bid for bid in ngx.values()}
        self.assertEqual(used, {bid for bid, _, _ in hosts},
                         "nginx did not use every backend: %s" % sorted(used))
        gw, cmd = self.gw_picks(method, hosts)
        diff = [k for k in KEYS if ngx[k] != gw[k]]
        if diff:
            model = (model_chash if method == "chash" else model_hash)(hosts, diff[:10])
            rows = ["  %-60.60s nginx=%-4s gw=%-4s model=%s" % (k, ngx[k], gw[k], model[k]) for k in diff[:10]]
            self.fail("%s: gw-hashpick disagrees with nginx on %d of %d keys\n"
                      "nginx: %s\ngw: %s\nfirst differing keys (model = Python model of nginx):\n%s"
                      % (method, len(diff), len(KEYS), directive,
                         " ".join(cmd), "\n".join(rows)))

    # -- cases -----------------------------------------------------------

    def test_chash_weighted(self):
        self.check("chash", self.start_backends([1, 2, 3, 1, 5]))

    def test_chash_unweighted(self):
        self.check("chash", self.start_backends([1] * 10))

    def test_chash_multi_address(self):
        ips = ["127.0.0.%d" % i for i in range(2, 7)]
        self.check("chash", self.start_backends_same_port([2, 1, 1, 3, 1], ips))

    def test_chash_multi_address_distinct_ports(self):
        ips = ["127.0.0.%d" % i for i in range(2, 7)]
        self.check("chash", self.start_backends([1] * 5, ips))

    def test_hash_weighted(self):
        self.check("hash", self.start_backends([1, 2, 3, 1, 5]))

    def test_hash_unweighted(self):
        self.check("hash", self.start_backends([1] * 10))


if __name__ == "__main__":
    unittest.main(verbosity=2)
