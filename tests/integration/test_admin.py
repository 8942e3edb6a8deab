#!/usr/bin/python3
"""The admin server (config "admin"): GET /metrics checked by a strict
Prometheus text-format parser (and promtool when installed) while real
traffic flows through tcp, http and frame listeners; GET /status against
`gwctl status --json`; the admin API's writes seen by gwctl and gwctl's by the
API; every 4xx answer; bad and slow clients; the admin process killed and
respawned; and the dashboard rendered by headless Chromium, updating after
`gwctl down host` (its screenshot goes to the build's test-output directory).

Python standard library only (Chromium is driven over its DevTools protocol
with a small WebSocket client written here)."""

import base64
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
import httpbackend as hb  # noqa: E402
from gwtest import GwTestCase, T, free_port, pool, upstream, wait_until  # noqa: E402

LO = "127.0.0.1"
TOKEN = "test-admin-token-0123456789"
PROMTOOL = shutil.which("promtool") or ("/usr/bin/promtool" if os.access("/usr/bin/promtool", os.X_OK) else None)
CHROMIUM = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
OUTPUT_DIR = os.environ.get("GW_TEST_OUTPUT_DIR") or os.path.join(gwtest.BUILD_DIR, "test-output")


# ----------------------------------------------------------------------------
# a strict parser of the Prometheus text exposition format 0.0.4

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class PromError(AssertionError):
    pass


def _parse_value(text, where):
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    if text == "NaN":
        return math.nan
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", text):
        raise PromError(f"{where}: bad value {text!r}")
    return float(text)


def _parse_labels(s, i, where):
    """Parses {a="x",b="y"} from s[i] == '{'; returns (dict, index after '}')."""
    labels = {}
    i += 1
    while True:
        if i < len(s) and s[i] == "}":
            return labels, i + 1
        m = LABEL_RE.match(s, i)
        if not m:
            raise PromError(f"{where}: bad label name at {s[i:i + 20]!r}")
        name = m.group(0)
        i = m.end()
        if s[i:i + 2] != '="':
            raise PromError(f"{where}: expected =\" after label {name}")
        i += 2
        val = []
        while True:
            if i >= len(s):
                raise PromError(f"{where}: unterminated label value")
            c = s[i]
            if c == "\\":
                nxt = s[i + 1:i + 2]
                if nxt == "\\":
                    val.append("\\")
                elif nxt == '"':
                    val.append('"')
                elif nxt == "n":
                    val.append("\n")
                else:
                    raise PromError(f"{where}: bad escape \\{nxt} in a label value")
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == "\n":
                raise PromError(f"{where}: raw newline in a label value")
            else:
                val.append(c)
                i += 1
        if name in labels:
            raise PromError(f"{where}: label {name} twice")
        labels[name] = "".join(val)
        if i < len(s) and s[i] == ",":
            i += 1
            continue
        if i < len(s) and s[i] == "}":
            return labels, i + 1
        raise PromError(f"{where}: expected , or }} after a label")


def parse_prometheus(text):
    """Parses and checks an exposition; returns {"families": {name: type},
    "samples": {(name, frozenset(labels.items())): value}}. Raises PromError."""
    if not text.endswith("\n"):
        raise PromError("the exposition does not end with a newline")
    families = {}      # name -> type
    helps = set()
    done = set()       # families whose group has ended
    current = None
    samples = {}
    hist = {}          # (family, labels without le) -> [(le, value)], plus _sum/_count
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = f"line {n}"
        if line == "":
            raise PromError(f"{where}: empty line")
        if line.startswith("#"):
            m = re.fullmatch(r"# (HELP|TYPE) (\S+) ?(.*)", line)
            if not m:
                raise PromError(f"{where}: a comment that is not HELP or TYPE: {line!r}")
            kind, name, rest = m.groups()
            if not NAME_RE.fullmatch(name):
                raise PromError(f"{where}: bad metric name {name!r}")
            if name in done:
                raise PromError(f"{where}: family {name} appears in two groups")
            if current != name and current is not None:
                done.add(current)
            current = name
            if kind == "HELP":
                if name in helps:
                    raise PromError(f"{where}: HELP {name} twice")
                if re.search(r"\\[^\\n]", rest.replace("\\\\", "")):
                    raise PromError(f"{where}: bad escape in HELP")
                helps.add(name)
            else:
                if name in families:
                    raise PromError(f"{where}: TYPE {name} twice")
                if rest not in TYPES:
                    raise PromError(f"{where}: unknown type {rest!r}")
                families[name] = rest
            continue
        m = NAME_RE.match(line)
        if not m:
            raise PromError(f"{where}: bad sample line {line!r}")
        name = m.group(0)
        i = m.end()
        labels = {}
        if i < len(line) and line[i] == "{":
            labels, i = _parse_labels(line, i, where)
        if line[i:i + 1] != " ":
            raise PromError(f"{where}: expected a space before the value")
        parts = line[i + 1:].split(" ")
        if len(parts) not in (1, 2):
            raise PromError(f"{where}: expected a value and an optional timestamp")
        value = _parse_value(parts[0], where)
        fam = name
        ftype = families.get(name)
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[:-len(suffix)]
            if name.endswith(suffix) and families.get(base) == "histogram":
                fam, ftype = base, "histogram"
        if ftype is None:
            raise PromError(f"{where}: sample {name} before (or without) its TYPE line")
        if fam != current:
            raise PromError(f"{where}: sample of {fam} inside the group of {current}")
        if ftype == "counter" and not value >= 0:
            raise PromError(f"{where}: counter {name} is {value}")
        key = (name, frozenset(labels.items()))
        if key in samples:
            raise PromError(f"{where}: series {name}{labels} twice")
        samples[key] = value
        if ftype == "histogram":
            if name == fam:
                raise PromError(f"{where}: histogram {fam} sample without a suffix")
            rest = {k: v for k, v in labels.items() if k != "le"}
            h = hist.setdefault((fam, frozenset(rest.items())), {"buckets": [], "sum": None, "count": None})
            if name.endswith("_bucket"):
                if "le" not in labels:
                    raise PromError(f"{where}: bucket without le")
                h["buckets"].append((_parse_value(labels["le"], where), value))
            elif name.endswith("_sum"):
                h["sum"] = value
            else:
                h["count"] = value
    for (fam, rest), h in hist.items():
        b = h["buckets"]
        where = f"histogram {fam}{dict(rest)}"
        if not b or b[-1][0] != math.inf:
            raise PromError(f"{where}: no +Inf bucket last")
        if any(b[k][0] >= b[k + 1][0] for k in range(len(b) - 1)):
            raise PromError(f"{where}: le bounds not ascending")
        if any(b[k][1] > b[k + 1][1] for k in range(len(b) - 1)):
            raise PromError(f"{where}: buckets not cumulative")
        if h["count"] is None or h["sum"] is None:
            raise PromError(f"{where}: _sum or _count missing")
        if h["count"] != b[-1][1]:
            raise PromError(f"{where}: _count {h['count']} != +Inf bucket {b[-1][1]}")
    return {"families": families, "samples": samples}


def metric(parsed, name, **labels):
    """The value of one series (labels must match exactly), or None."""
    return parsed["samples"].get((name, frozenset(labels.items())))


def metric_sum(parsed, name, **labels):
    """Sum over the series of `name` whose labels include `labels`."""
    total = 0
    for (n, ls), v in parsed["samples"].items():
        d = dict(ls)
        if n == name and all(d.get(k) == v2 for k, v2 in labels.items()):
            total += v
    return total


def _stat_fields(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.index(b"(") + 1:data.rindex(b")")].decode(errors="replace"), data[data.rindex(b")") + 2:].split()
    except (OSError, ValueError):
        return None, []


def _comm(pid):
    return _stat_fields(pid)[0]


def _ppid(pid):
    f = _stat_fields(pid)[1]
    return int(f[1]) if len(f) > 1 else None


# ----------------------------------------------------------------------------
# HTTP to the admin server

class Admin:
    def __init__(self, port):
        self.port = port

    def req(self, method, path, body=None, token=None, headers=(), timeout=None):
        hs = list(headers)
        if token is not None:
            hs.append(("Authorization", f"Bearer {token}"))
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        return hb.request(self.port, method, path, headers=hs, body=body, host=f"{LO}:{self.port}",
                          timeout=timeout or T(10))

    def get_json(self, path):
        r = self.req("GET", path)
        if r.status != 200:
            raise AssertionError(f"GET {path}: {r.status} {r.body!r}")
        return json.loads(r.body)

    def metrics(self):
        r = self.req("GET", "/metrics")
        if r.status != 200:
            raise AssertionError(f"GET /metrics: {r.status} {r.body[:300]!r}")
        if r.header("Content-Type") != "text/plain; version=0.0.4; charset=utf-8":
            raise AssertionError(f"GET /metrics Content-Type {r.header('Content-Type')!r}")
        text = r.body.decode()
        parsed = parse_prometheus(text)
        if PROMTOOL:
            p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                               timeout=T(30))
            if p.returncode != 0 or p.stdout.strip() or p.stderr.strip():
                raise AssertionError(f"promtool check metrics: rc={p.returncode} {p.stdout}{p.stderr}")
        return parsed


def frame(body, ftype=1, version=1):
    return struct.pack(">BBHH", ftype, version, 0, len(body)) + body


# ----------------------------------------------------------------------------
# Chromium over the DevTools protocol: a minimal WebSocket client (RFC 6455)

class CDP:
    def __init__(self, ws_url, timeout):
        u = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = self.sock.recv(4096)
            if not d:
                raise AssertionError("DevTools closed the WebSocket handshake")
            buf += d
        head, self.buf = buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise AssertionError(f"DevTools WebSocket handshake: {head[:200]!r}")
        self.next_id = 1

    def _send(self, payload, opcode=1):
        mask = os.urandom(4)
        n = len(payload)
        hdr = bytes([0x80 | opcode])
        if n < 126:
            hdr += bytes([0x80 | n])
        elif n < 65536:
            hdr += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            hdr += bytes([0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _read(self, n):
        while len(self.buf) < n:
            d = self.sock.recv(1 << 16)
            if not d:
                raise AssertionError("DevTools closed the WebSocket")
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _message(self):
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            op = b0 & 0x0F
            if op == 9:
                self._send(data, 10)
                continue
            if op == 8:
                raise AssertionError("DevTools sent a close frame")
            if op in (0, 1, 2):
                parts.append(data)
                if b0 & 0x80:
                    return json.loads(b"".join(parts))

    def call(self, method, **params):
        mid = self.next_id
        self.next_id += 1
        self._send(json.dumps({"id": mid, "method": method, "params": params}).encode())
        while True:
            m = self._message()
            if m.get("id") == mid:
                if "error" in m:
                    raise AssertionError(f"{method}: {m['error']}")
                return m.get("result", {})

    def evaluate(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return r.get("result", {}).get("value")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def read_text(path):
    with open(path) as f:
        return f.read()


def session_pids(sid):
    """Processes whose session id is sid (Chromium and every child it forked)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and gwtest.proc_sid(int(d)) == sid and gwtest.pid_alive(int(d)):
            out.append(int(d))
    return out


# ----------------------------------------------------------------------------
# the tests

class StrictParserTest(unittest.TestCase):
    """The parser the metrics are checked with refuses what the format refuses."""

    GOOD = ('# HELP a_total A.\n# TYPE a_total counter\na_total{x="1",y="q\\"\\\\\\n"} 3\n'
            '# HELP h_seconds H.\n# TYPE h_seconds histogram\n'
            'h_seconds_bucket{le="0.1"} 1\nh_seconds_bucket{le="+Inf"} 2\nh_seconds_sum 0.5\nh_seconds_count 2\n')

    def test_good_and_bad(self):
        p = parse_prometheus(self.GOOD)
        self.assertEqual(metric(p, "a_total", x="1", y='q"\\\n'), 3)
        self.assertEqual(p["families"], {"a_total": "counter", "h_seconds": "histogram"})
        bad = {
            "no final newline": self.GOOD[:-1],
            "sample before TYPE": "a 1\n",
            "bad escape": '# TYPE a gauge\na{x="\\t"} 1\n',
            "unterminated value": '# TYPE a gauge\na{x="1} 1\n',
            "duplicate series": "# TYPE a gauge\na 1\na 2\n",
            "family in two groups": "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# HELP a again\n",
            "interleaved sample": "# TYPE a gauge\n# TYPE b gauge\na 1\n",
            "negative counter": "# TYPE a_total counter\na_total -1\n",
            "bad value": "# TYPE a gauge\na one\n",
            "unknown type": "# TYPE a meter\na 1\n",
            "stray comment": "# hello\n",
            "no +Inf": '# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n',
            "not cumulative": '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
            "count != +Inf": '# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 2\n',
            "empty line": "# TYPE a gauge\n\na 1\n",
        }
        for why, text in bad.items():
            with self.subTest(why):
                with self.assertRaises(PromError):
                    parse_prometheus(text)


class AdminTest(GwTestCase):

    def http_backend(self, name, **kw):
        b = hb.HttpBackend(name, **kw)
        self._backends.append(b)
        return b

    def admin_gateway(self, token=TOKEN, workers=2, shm=None, extra=None, timeout_ms=1000, l4=None, devs_x=None,
                      devs_health=None):
        """Upstreams app (a, b), pre (c) and devs (x: at devs_x, checked by
        devs_health); listeners l4 (tcp), web (http) and dev (frame)."""
        self.a = self.http_backend("a")
        self.b = self.http_backend("b")
        self.c = self.http_backend("c")
        admin = {"listen": f"{LO}:{free_port()}", "timeout_ms": timeout_ms}
        if token:
            admin["token"] = token
        listeners = [
            dict(gwtest.tcp_listener("l4", "app"), **(l4 or {})),
            {"name": "web", "listen": f"{LO}:{free_port()}", "protocol": "http", "upstream": "app"},
            {"name": "dev", "listen": f"{LO}:{free_port()}", "protocol": "frame", "upstream": "devs"},
        ]
        cfg = self.make_config([pool("primary", [gwtest.host("a", self.a.address), gwtest.host("b", self.b.address)])],
                               workers=workers, listeners=listeners, shm=shm, admin=admin)
        cfg["upstreams"].append(upstream("pre", [pool("main", [gwtest.host("c", self.c.address)])]))
        cfg["upstreams"].append(upstream("devs", [pool("main", [gwtest.host("x", devs_x or f"{LO}:{free_port()}")])]))
        if devs_health:
            cfg["upstreams"][-1]["health"] = devs_health
        if extra:
            cfg.update(extra)
        gw = self.gateway(cfg)
        gw.admin = Admin(int(admin["listen"].rsplit(":", 1)[1]))
        gw.web = cfg["listeners"][1]["listen"].rsplit(":", 1)[1]
        gw.dev = cfg["listeners"][2]["listen"].rsplit(":", 1)[1]
        wait_until(lambda: self._admin_up(gw), T(10), msg="the admin server answers")
        return gw

    def _admin_up(self, gw):
        try:
            return gw.admin.req("GET", "/status", timeout=T(2)).status == 200
        except OSError:
            return False

    def test_answers_held_for_clients_that_do_not_read_are_bounded(self):
        """/metrics of 4,000 hosts is 22 MB, built whole per request: 20
        clients that asked and read nothing held 480 MB of the admin server
        (2.8 GB at its 128 connections). Past 128 MiB of answers waiting, a
        large one is a 503 with Retry-After instead; once they go, 200."""
        hosts = [gwtest.host(f"h{i}", f"{LO}:{20000 + i}") for i in range(4000)]
        admin_port = free_port()
        cfg = self.make_config([pool("p", hosts)], shm={"max_hosts": 4096}, admin={"listen": f"{LO}:{admin_port}"})
        gw = self.gateway(cfg)
        api = Admin(admin_port)
        wait_until(lambda: api.req("GET", "/status", timeout=T(5)).status == 200, T(10), msg="the admin server")
        stuck = []
        for _ in range(8):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((LO, admin_port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            stuck.append(s)
            self.addCleanup(s.close)
        time.sleep(1)  # their answers built (0.2 s each)
        r = api.req("GET", "/metrics", timeout=T(30))
        self.assertEqual(r.status, 503, r.body[:200])
        self.assertEqual(r.header("Retry-After"), "1")
        self.assertIn(b"bytes of answers wait for their clients to read them; try again", r.body)
        self.assertEqual(api.req("GET", "/upstreams/app/pools/p/hosts/h1").status, 200, "a small answer is made")
        for s in stuck:
            s.close()
        wait_until(lambda: api.req("GET", "/metrics", timeout=T(30)).status == 200, T(10), msg="/metrics again")

    def test_reads_are_answered_while_a_write_waits_for_the_writer_lock(self):
        """A gwctl holds the shm writer lock (its state file fsync stalls 5 s,
        as on a stalled disk; strace delays it) and an API write waits for
        it: the admin server answered nothing else meanwhile (a /metrics
        scrape or the dashboard stood still for up to 10 s). Writes now run
        on a thread of their own: GET /metrics and /status are answered while
        the write still waits, and the write is made after the gwctl's."""
        strace = shutil.which("strace")
        if not strace:
            self.skipTest("strace is not installed (tools/setup.sh installs it)")
        gw = self.admin_gateway(workers=1)
        held = subprocess.Popen([strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync,fdatasync", "-e",
                                 "inject=fsync,fdatasync:delay_enter=5000000:when=1", gwtest.GWCTL, "--shm", gw.shm,
                                 "down", "host", "app/primary", "a"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                # (LeakSanitizer cannot run under ptrace: an ASan build's gwctl would fail at exit)
                                env={**os.environ, "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0"})
        self.addCleanup(held.kill)
        time.sleep(1)  # the gwctl takes the lock and waits in its state file's fsync (in ms; held 5 s)
        answer = {}

        def write():
            answer["r"] = gw.admin.req("POST", "/upstreams/app/pools/primary/hosts/b/down", token=TOKEN, timeout=T(30))
        t = threading.Thread(target=write)
        t.start()
        time.sleep(0.3)  # the write is in, waiting for the lock
        self.assertIsNone(held.poll(), "the gwctl ended before the reads: the lock was not held")
        for path in ("/metrics", "/status"):
            r = gw.admin.req("GET", path, timeout=T(30))
            self.assertEqual(r.status, 200)
            self.assertTrue(t.is_alive(), f"GET {path} was answered only after the write")
        self.assertIsNone(held.poll(), "the gwctl ended before the reads were answered")
        t.join(T(30))
        self.assertEqual(held.wait(T(10)), 0, held.stderr.read())
        self.assertEqual(answer["r"].status, 200, answer["r"].body)
        self.assertEqual(gwtest.find_host(gw.status(), "app/primary/b")["admin"], "down")

    def assertApiError(self, gw, status, method, path, body=None, token=TOKEN, headers=(), message=None):
        """An error answer: the status, {"error": one line}, and nothing changed."""
        before = gwtest.table_snapshot(gw.status())
        events = len(gw.events())
        r = gw.admin.req(method, path, body=body, token=token, headers=headers)
        self.assertEqual(r.status, status, f"{method} {path}: {r.status} {r.body!r}")
        self.assertEqual(r.header("Content-Type"), "application/json")
        j = json.loads(r.body)
        self.assertEqual(list(j), ["error"], r.body)
        self.assertNotIn("\n", j["error"])
        self.assertTrue(j["error"])
        if message is not None:
            self.assertEqual(j["error"], message)
        self.assertEqual(gwtest.table_snapshot(gw.status()), before, f"{method} {path} changed the table")
        self.assertEqual(len(gw.events()), events, f"{method} {path} emitted an event")
        return r, j["error"]

    # ------------------------------------------------------------------ metrics

    def test_a_client_gone_before_its_accept_is_no_limit_conn_refusal(self):
        # Clients that connect and reset while the worker is stopped wait in
        # its accept queue as closed sockets, with a live client behind them:
        # the worker takes them all in one go once it runs. A gone client has
        # no address left (getpeername: ENOTCONN) and is closed uncounted,
        # under either engine. Under epoll, whose accept returns the address
        # even then, each took a limit_conn place until its first read failed,
        # so the live client of the same batch was refused (max 2, 5 gone).
        gw = self.admin_gateway(workers=1, l4={"limit_conn": {"key": "ip", "max": 2}})
        (pid,) = gw.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(5):
                s = socket.create_connection((LO, gw.port), timeout=T(5))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()  # a reset, before the worker has accepted it
            live = socket.create_connection((LO, gw.port), timeout=T(5))  # queued behind them
        finally:
            os.kill(pid, signal.SIGCONT)

        def served(c):
            with c:
                try:
                    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    return c.recv(64)
                except ConnectionResetError:
                    return b"(reset)"

        got = served(live)
        self.assertTrue(got.startswith(b"HTTP/1."),
                        f"the live client accepted with the gone ones was refused by limit_conn: {got!r}")
        # And after them, once they were taken.
        for _ in range(4):
            self.assertTrue(served(socket.create_connection((LO, gw.port), timeout=T(5))).startswith(b"HTTP/1."))
        m = gw.admin.metrics()
        self.assertEqual(metric(m, "gw_listener_rejected_total", listener="l4", protocol="tcp", reason="limit_conn"),
                         0, "clients gone before their accept were counted as limit_conn refusals")
        self.assertEqual(metric_sum(m, "gw_worker_limit_conn_rejected_total"), 0)
        wait_until(lambda: gw.status()["limits"]["connections"] == 0, T(5), msg="every connection released")

    def test_limit_metrics(self):
        # limit_conn on the tcp listener: the refusal shows as a listener
        # reject, in the guard's per-worker counter, and in the limit table.
        gw = self.admin_gateway(l4={"limit_conn": {"key": "ip", "max": 2}})
        m0 = gw.admin.metrics()
        self.assertEqual(metric(m0, "gw_limit_entries", state="capacity"),
                         gw.status()["limits"]["capacity"])
        self.assertEqual(metric(m0, "gw_listener_rejected_total", listener="l4", protocol="tcp",
                                reason="limit_conn"), 0)
        held = [socket.create_connection((LO, gw.port)) for _ in range(2)]
        try:
            wait_until(lambda: metric(gw.admin.metrics(), "gw_limit_connections") == 2, T(5),
                       msg="gw_limit_connections == 2")
            extra = socket.create_connection((LO, gw.port))
            extra.settimeout(T(5))
            self.assertEqual(extra.recv(1), b"", "the third connection from one address must be closed")
            extra.close()
            m1 = gw.admin.metrics()
            self.assertEqual(metric(m1, "gw_listener_rejected_total", listener="l4", protocol="tcp",
                                    reason="limit_conn"), 1)
            self.assertEqual(metric_sum(m1, "gw_worker_limit_conn_rejected_total"), 1)
            self.assertGreaterEqual(metric(m1, "gw_limit_entries", state="pinned"), 1)
        finally:
            for c in held:
                c.close()
        wait_until(lambda: metric(gw.admin.metrics(), "gw_limit_connections") == 0, T(5),
                   msg="gw_limit_connections back to 0")
        self.assertIn("gw_worker_auth_total", gw.admin.metrics()["families"])

    def test_http_host_that_resets_before_the_connect_is_seen_counts_a_connect(self):
        """An http listener's host accepts and resets before the worker has
        handled the connect (SO_ERROR says ECONNRESET; see gwtest.ResetHost).
        A reset before any answer is a failure of the request (passive failure,
        retried on the next host per retry.on "error"), but not a failed
        connect: the connect is counted in gw_upstream_host_connect_seconds
        (it used to be missing there)."""
        rst = gwtest.ResetHost()
        self.addCleanup(rst.close)
        bk = self.http_backend("bk")
        admin = {"listen": f"{LO}:{free_port()}", "timeout_ms": 1000}
        web = {"name": "web", "listen": f"{LO}:{free_port()}", "protocol": "http", "upstream": "app"}
        cfg = self.make_config([pool("p", [gwtest.host("rst", rst.address)]),
                                pool("b", [gwtest.host("bk", bk.address)], priority=1)],
                               workers=1, listeners=[web], admin=admin,
                               upstream_opts={"connect_timeout_ms": 20000, "max_fails": 5,
                                              "retry": {"on": ["error"]}})
        gw = self.gateway(cfg)
        gw.admin = Admin(int(admin["listen"].rsplit(":", 1)[1]))
        wait_until(lambda: self._admin_up(gw), T(10), msg="the admin server answers")
        (worker,) = gw.worker_pids()
        got = []
        th = threading.Thread(target=lambda: got.append(
            hb.request(int(web["listen"].rsplit(":", 1)[1]), "GET", "/x", timeout=T(20))), daemon=True)
        th.start()
        rst.reset_next(worker, b"HTTP/1.1 503 Full\r\n")
        th.join(T(20))
        self.assertEqual(len(got), 1, "no answer")
        self.assertEqual(got[0].status, 200, "retried on the next host")
        self.assertEqual(bk.requests, 1)
        m = gw.admin.metrics()
        labels = dict(upstream="app", pool="p", host="rst", address=rst.address)
        self.assertEqual(metric(m, "gw_upstream_host_failures_total", **labels), 1, "a failure of the request")
        self.assertEqual(metric(m, "gw_upstream_host_connect_seconds_count", **labels), 1, "the connect is counted")

    def test_metrics_parse_and_move_with_traffic(self):
        gw = self.admin_gateway()
        m0 = gw.admin.metrics()
        for fam in ("gw_listener_accepted_total", "gw_listener_active", "gw_listener_rejected_total",
                    "gw_upstream_host_requests_total", "gw_upstream_host_responses_total",
                    "gw_upstream_host_failures_total", "gw_upstream_host_active", "gw_upstream_host_health",
                    "gw_upstream_host_admin_up", "gw_upstream_host_connect_seconds",
                    "gw_upstream_host_response_seconds", "gw_rule_hits_total", "gw_worker_accepted_total",
                    "gw_worker_http_outcomes_total"):
            self.assertIn(fam, m0["families"])
        self.assertEqual(m0["families"]["gw_upstream_host_connect_seconds"], "histogram")
        self.assertEqual(metric(m0, "gw_upstream_host_admin_up", upstream="app", pool="primary", host="a",
                                address=self.a.address), 1)
        self.assertEqual(metric(m0, "gw_upstream_host_health", upstream="app", pool="primary", host="a",
                                address=self.a.address, state="up"), 1)

        # A rule through the API, so that rule hits move too.
        r = gw.admin.req("POST", "/listeners/web/routes/default/rules",
                         {"id": "canary", "upstream": "pre", "header": "X-Canary=1"}, token=TOKEN)
        self.assertEqual(r.status, 201, r.body)
        self.assertEqual(r.header("Location"), "/listeners/web/routes/default/rules/canary")

        n_http, n_tcp = 12, 6
        for i in range(n_http):
            r = hb.request(int(gw.web), "GET", f"/x{i}")
            self.assertEqual(r.status, 200)
        for i in range(n_tcp):
            r = hb.request(gw.port, "GET", f"/y{i}")  # an HTTP request relayed at L4
            self.assertEqual(r.status, 200)
        for _ in range(3):
            self.assertEqual(hb.request(int(gw.web), "GET", "/c", headers=[("X-Canary", "1")]).status, 200)
        self.assertEqual(hb.request(int(gw.web), "GET", "/e", headers=[("X-Be-Status", "503")]).status, 503)
        with socket.create_connection((LO, int(gw.web)), timeout=T(5)) as s:  # gw answers 400 itself
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            self.assertEqual(hb.read_response(s).status, 400)
        with socket.create_connection((LO, int(gw.dev)), timeout=T(5)) as s:  # a bad first frame
            s.sendall(frame(b"{not json"))
            self.assertEqual(s.recv(100), b"")
        held = socket.create_connection((LO, gw.port), timeout=T(5))  # an open L4 connection
        try:
            def moved():
                m = gw.admin.metrics()
                return metric(m, "gw_listener_active", listener="l4", protocol="tcp") == 1 and m
            m1 = wait_until(moved, T(5), msg="an open tcp connection in gw_listener_active")
            d = lambda name, **l: metric_sum(m1, name, **l) - metric_sum(m0, name, **l)  # noqa: E731
            self.assertEqual(d("gw_listener_accepted_total", listener="web"), n_http + 3 + 1 + 1)
            self.assertEqual(d("gw_listener_accepted_total", listener="l4"), n_tcp + 1)
            self.assertEqual(d("gw_listener_accepted_total", listener="dev"), 1)
            self.assertEqual(d("gw_listener_http_requests_total", listener="web"), n_http + 3 + 1 + 1)
            self.assertEqual(metric(m1, "gw_listener_http_errors_total", listener="web", protocol="http", code="400"),
                             1)
            self.assertEqual(metric(m1, "gw_listener_rejected_total", listener="dev", protocol="frame",
                                    reason="bad_json"), 1)
            self.assertEqual(metric_sum(m1, "gw_worker_frame_rejects_total", reason="bad_json"), 1)
            # Hosts: app's two got the http requests (not the canary ones) and the tcp connections.
            self.assertEqual(d("gw_upstream_host_requests_total", upstream="app"), n_http + 1 + n_tcp + 1)
            self.assertEqual(d("gw_upstream_host_requests_total", upstream="pre"), 3)
            self.assertEqual(d("gw_upstream_host_responses_total", upstream="app", **{"class": "2xx"}), n_http)
            self.assertEqual(d("gw_upstream_host_responses_total", upstream="app", **{"class": "5xx"}), 1)
            self.assertEqual(d("gw_upstream_host_responses_total", upstream="pre", **{"class": "2xx"}), 3)
            self.assertEqual(d("gw_upstream_host_response_seconds_count", upstream="app"), n_http + 1)
            self.assertGreater(d("gw_upstream_host_response_seconds_sum", upstream="app"), 0)
            # Every tcp connection connects; http connections may be reused (keep-alive).
            self.assertGreaterEqual(d("gw_upstream_host_connect_seconds_count", upstream="app"), n_tcp + 1)
            self.assertEqual(metric_sum(m1, "gw_upstream_host_active", upstream="app"), 1)
            self.assertEqual(metric(m1, "gw_rule_hits_total", listener="web", route="default", rule="canary",
                                    upstream="pre"), 3)
            self.assertEqual(d("gw_worker_accepted_total"), n_http + n_tcp + 3 + 1 + 1 + 1 + 1)
        finally:
            held.close()
        m2 = wait_until(lambda: (lambda m: metric(m, "gw_listener_active", listener="l4", protocol="tcp") == 0 and m)(
            gw.admin.metrics()), T(5), msg="the tcp connection closed in gw_listener_active")
        self.assertEqual(metric_sum(m2, "gw_upstream_host_active", upstream="app"), 0)

        # Admin state and health gauges follow gwctl.
        self.assertGwctlOk(gw, "down", "host", "app/primary", "b")
        m3 = gw.admin.metrics()
        self.assertEqual(metric(m3, "gw_upstream_host_admin_up", upstream="app", pool="primary", host="b",
                                address=self.b.address), 0)
        self.assertEqual(metric(m3, "gw_upstream_hosts_usable", upstream="app"), 1)
        self.b.stop()
        for _ in range(2):
            hb.request(gw.port, "GET", "/z")  # b is down by admin; a serves
        self.assertGwctlOk(gw, "up", "host", "app/primary", "b")
        # b is stopped: a connection to it fails and passive health takes it down.
        wait_until(lambda: (hb.request(gw.port, "GET", "/w").status == 200 and
                            metric(gw.admin.metrics(), "gw_upstream_host_health", upstream="app", pool="primary",
                                   host="b", address=self.b.address, state="down") == 1),
                   T(10), msg="host b down in gw_upstream_host_health")
        m4 = gw.admin.metrics()
        self.assertGreaterEqual(metric(m4, "gw_upstream_host_failures_total", upstream="app", pool="primary",
                                       host="b", address=self.b.address), 1)

    def test_worker_counters_never_go_back_after_a_respawn_or_a_reload(self):
        """What exited workers counted stays in every total over the workers:
        status --json's frame_rejects, gwctl status's lines, and a sum of
        gw_worker_*_total series (as nginx-vts and HAProxy keep counting across
        a reload). Before, those summed the running workers only: a reload
        took the old generation's counts out of them."""
        gw = self.admin_gateway()
        for _ in range(3):
            with socket.create_connection((LO, int(gw.dev)), timeout=T(5)) as s:  # a bad first frame
                s.sendall(frame(b"{not json"))
                self.assertEqual(s.recv(100), b"")
        self.assertEqual(hb.request(int(gw.web), "GET", "/x").status, 200)

        def counts():
            st = gw.status()
            m = gw.admin.metrics()
            rc, text, err = gw.gwctl("status")
            self.assertEqual(rc, 0, err)
            return (st["frame_rejects"]["bad_json"], metric_sum(m, "gw_worker_frame_rejects_total", reason="bad_json"),
                    metric_sum(m, "gw_worker_accepted_total"), metric_sum(m, "gw_worker_http_requests_total"), text)
        wait_until(lambda: counts()[0] == 3, T(5), msg="3 bad_json rejects counted")
        before = counts()
        self.assertEqual(before[:2], (3, 3))
        self.assertIn("frame connections refused: bad_json 3", before[4])

        # A worker killed and respawned (in its row), then a reload (a new
        # generation in other rows; the old one exits).
        victim = gw.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(gw.worker_pids()) == 2 and victim not in gw.worker_pids(), T(10),
                   msg="the killed worker respawned")
        old = set(gw.worker_pids())
        log_before = len(gw.log_text())
        gw.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded:" in gw.log_text()[log_before:], T(10), msg="'reloaded:' in the log")
        wait_until(lambda: len(gw.worker_pids()) == 2 and not set(gw.worker_pids()) & old, T(20),
                   msg="the old generation exited")
        gw.remember(set(gw.worker_pids()))
        wait_until(lambda: self._admin_up(gw), T(10), msg="the admin server answers after the reload")
        after = counts()
        self.assertEqual(after[:2], (3, 3), after[4])
        self.assertGreaterEqual(after[2], before[2])
        self.assertGreaterEqual(after[3], before[3])
        self.assertIn("frame connections refused: bad_json 3", after[4])
        # The running workers' gauges only: two rows, not four.
        m = gw.admin.metrics()
        self.assertEqual(len([k for k in m["samples"] if k[0] == "gw_worker_connections"]), 2)

    def test_byte_counters_are_exact(self):
        # The bytes each side put on the wire, counted per listener and per
        # host, in /metrics and in the status document: a tcp listener (N
        # bytes up, the backend's M-byte answer down) and an http listener
        # (a raw client and a raw backend, so every byte is known).
        tcp_be = gwtest.Backend("t", mode="eof_reply")
        self.addCleanup(tcp_be.stop)
        resp_body = b"r" * 5000
        response = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + resp_body
        got = {"bytes": 0, "conns": 0}
        lock = threading.Lock()
        srv = socket.create_server((LO, 0))
        self.addCleanup(srv.close)

        def serve(c):
            with c:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                    with lock:
                        got["bytes"] += len(d)
                head, _, body = buf.partition(b"\r\n\r\n")
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                left = int(m.group(1)) - len(body) if m else 0
                while left > 0:
                    d = c.recv(65536)
                    if not d:
                        return
                    left -= len(d)
                    with lock:
                        got["bytes"] += len(d)
                c.sendall(response)
                while True:  # until gw closes it (kept alive or not)
                    try:
                        d = c.recv(65536)
                    except OSError:
                        return
                    if not d:
                        return
                    with lock:
                        got["bytes"] += len(d)

        def accept_loop():
            while True:
                try:
                    c, _ = srv.accept()
                except OSError:
                    return
                with lock:
                    got["conns"] += 1
                threading.Thread(target=serve, args=(c,), daemon=True).start()

        threading.Thread(target=accept_loop, daemon=True).start()
        raw_addr = f"{LO}:{srv.getsockname()[1]}"
        admin = {"listen": f"{LO}:{free_port()}", "token": TOKEN}
        listeners = [gwtest.tcp_listener("l4", "app"),
                     {"name": "web", "listen": f"{LO}:{free_port()}", "protocol": "http", "upstream": "raw"}]
        cfg = self.make_config([pool("primary", [gwtest.host("t", tcp_be.address)])], workers=2,
                               listeners=listeners, admin=admin)
        cfg["upstreams"].append(upstream("raw", [pool("main", [gwtest.host("r", raw_addr)])]))
        gw = self.gateway(cfg)
        gw.admin = Admin(int(admin["listen"].rsplit(":", 1)[1]))
        web = int(cfg["listeners"][1]["listen"].rsplit(":", 1)[1])
        wait_until(lambda: self._admin_up(gw), T(10), msg="the admin server answers")

        # tcp: N bytes up, the backend's answer down.
        n_up = 300000
        with socket.create_connection((LO, gw.port), timeout=T(10)) as c:
            c.sendall(hb.pattern_bytes(n_up))
            c.shutdown(socket.SHUT_WR)
            answer = gwtest.recv_all(c)
        self.assertEqual(answer, f"t got {n_up} bytes\n".encode())
        n_down = len(answer)

        # http: a request with a body, Connection: close; the answer to EOF.
        request = (b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1234\r\nConnection: close\r\n\r\n" +
                   b"q" * 1234)
        with socket.create_connection((LO, web), timeout=T(10)) as c:
            c.sendall(request)
            reply = gwtest.recv_all(c)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply[:200])
        self.assertTrue(reply.endswith(resp_body))

        def exact():
            m = gw.admin.metrics()
            host_l = dict(upstream="app", pool="primary", host="t", address=tcp_be.address)
            raw_l = dict(upstream="raw", pool="main", host="r", address=raw_addr)
            with lock:
                backend_got = got["bytes"]
            want = {
                ("gw_listener_received_bytes_total", (("listener", "l4"), ("protocol", "tcp"))): n_up,
                ("gw_listener_sent_bytes_total", (("listener", "l4"), ("protocol", "tcp"))): n_down,
                ("gw_upstream_host_sent_bytes_total", tuple(host_l.items())): n_up,
                ("gw_upstream_host_received_bytes_total", tuple(host_l.items())): n_down,
                ("gw_listener_received_bytes_total", (("listener", "web"), ("protocol", "http"))): len(request),
                ("gw_listener_sent_bytes_total", (("listener", "web"), ("protocol", "http"))): len(reply),
                ("gw_upstream_host_sent_bytes_total", tuple(raw_l.items())): backend_got,
                ("gw_upstream_host_received_bytes_total", tuple(raw_l.items())): len(response),
            }
            have = {k: metric(m, k[0], **dict(k[1])) for k in want}
            return have == want and backend_got > 0

        wait_until(exact, T(10), msg="the byte counters reach the bytes on the wire")
        self.assertEqual(gw.admin.metrics()["families"]["gw_upstream_host_sent_bytes_total"], "counter")
        with lock:
            backend_got = got["bytes"]
        # The status document (gwctl status --json and GET /status) has them too.
        for st in (gw.status(), json.loads(gw.admin.req("GET", "/status").body)):
            t = gwtest.find_host(st, "app/primary/t")
            self.assertEqual((t["sent_bytes"], t["received_bytes"]), (n_up, n_down))
            r = gwtest.find_host(st, "raw/main/r")
            self.assertEqual((r["sent_bytes"], r["received_bytes"]), (backend_got, len(response)))
            ls = {x["name"]: x for x in st["listeners"]}
            self.assertEqual((ls["l4"]["received_bytes"], ls["l4"]["sent_bytes"]), (n_up, n_down))
            self.assertEqual((ls["web"]["received_bytes"], ls["web"]["sent_bytes"]), (len(request), len(reply)))
            self.assertEqual(ls["web"]["http_requests"], 1)

    def test_text_status_shows_byte_counters(self):
        # gwctl status (text): SENT and RECEIVED of each host and a LISTENER
        # table with each listener's bytes, the figures of status --json in
        # binary units. A name longer than its column and a count in MiB
        # widen the columns: every cell stays under its title.
        be = gwtest.Backend("t", mode="eof_reply")
        self.addCleanup(be.stop)
        long_host = "a-host-whose-name-is-wider-than-its-column-01"
        long_listener = "a-listener-with-a-name-wider-than-28"
        listener = gwtest.tcp_listener(long_listener, "app")
        cfg = self.make_config([pool("primary", [gwtest.host(long_host, be.address)])], workers=2,
                               listeners=[listener])
        gw = self.gateway(cfg)
        port = int(listener["listen"].rsplit(":", 1)[1])
        up = 0
        down = 0

        def send(n):
            nonlocal up, down
            with socket.create_connection((LO, port), timeout=T(10)) as c:
                c.sendall(hb.pattern_bytes(n))
                c.shutdown(socket.SHUT_WR)
                answer = gwtest.recv_all(c)
            self.assertEqual(answer, f"t got {n} bytes\n".encode())
            up += n
            down += len(answer)

        def counted():
            st = gw.status()
            h = gwtest.find_host(st, f"app/primary/{long_host}")
            ls = {x["name"]: x for x in st["listeners"]}[long_listener]
            return ((h["sent_bytes"], h["received_bytes"], ls["received_bytes"], ls["sent_bytes"], ls["active"]) ==
                    (up, down, up, down, 0))

        def text_tables():
            rc, out, err = gw.gwctl("status")
            self.assertEqual(rc, 0, err)
            lines = out.splitlines()

            def first(start, prefix):
                i = next((i for i in range(start, len(lines)) if lines[i].startswith(prefix)), None)
                self.assertIsNotNone(i, f"no line starting {prefix!r} in gwctl status:\n{out}")
                return i

            head = first(0, "UPSTREAM/POOL/HOST")
            lhead = first(0, "LISTENER ")
            row = lines[first(head, f"    {long_host} ")]
            lrow = lines[first(lhead, f"{long_listener} ")]
            return out, (lines[head], row), (lines[lhead], lrow)

        def cells(title, row, names):
            # Each cell ends where its (right-aligned) title ends.
            got = {}
            for name in names:
                end = title.index(name) + len(name)
                start = row.rfind("  ", 0, end) + 2
                got[name] = row[start:end]
            return got

        for n, want_up, want_down in ((1000, "1000 B", "17 B"), (1572864, "1.5 MiB", "37 B")):
            send(n)
            wait_until(counted, T(10), msg=f"status --json counts {up} bytes up and {down} down")
            out, (title, row), (ltitle, lrow) = text_tables()
            self.assertTrue(title.endswith("SENT   RECEIVED"), out)
            self.assertEqual(cells(title, row, ["SENT", "RECEIVED"]), {"SENT": want_up, "RECEIVED": want_down}, out)
            self.assertEqual(len(row), len(title), out)
            self.assertEqual(row.split()[:2], [long_host, be.address], out)
            self.assertEqual(lrow.split()[:2], [long_listener, listener["listen"]], out)
            self.assertEqual(cells(ltitle, lrow, ["ACTIVE", "RECEIVED", "SENT"]),
                             {"ACTIVE": "0", "RECEIVED": want_up, "SENT": want_down}, out)
            self.assertEqual(len(lrow), len(ltitle), out)
        # The exact figures stay in status --json.
        self.assertEqual((up, down), (1573864, 37))

    # ------------------------------------------------------------------ API <-> gwctl

    def test_api_and_gwctl_see_each_others_writes(self):
        gw = self.admin_gateway()
        api = gw.admin
        # GET /status is gwctl status --json (the same function builds both).
        st_api, st_ctl = api.get_json("/status"), gw.status()
        self.assertEqual(gwtest.table_snapshot(st_api), gwtest.table_snapshot(st_ctl))
        self.assertEqual(set(st_api), set(st_ctl))

        # API writes -> gwctl.
        r = api.req("POST", "/upstreams/app/pools/primary/hosts", {"id": "d", "address": f"{LO}:9", "weight": 7},
                    token=TOKEN)
        self.assertEqual(r.status, 201, r.body)
        self.assertEqual(r.json()["message"], f"add host app/primary/d {LO}:9 weight=7")
        self.assertHost(gw, "app/primary/d", address=f"{LO}:9", weight=7, admin="up")
        r = api.req("POST", "/upstreams/app/pools/primary/hosts/d/down", token=TOKEN)
        self.assertEqual((r.status, r.json()["changed"]), (200, True))
        self.assertHost(gw, "app/primary/d", admin="down")
        r = api.req("POST", "/upstreams/app/pools/primary/hosts/d/down", token=TOKEN)
        self.assertEqual(r.json(), {"ok": True, "changed": False, "message": "host app/primary/d is already down",
                                    "generation": gw.status()["generation"]})
        self.assertEvent(gw, rf"^host_down app/primary/d {LO}:9 \(admin: api down\)$")
        # PUT of a host: its weight and admin state, in one commit; GET's body
        # sent back with an edit works (read, edit, write); an address does
        # not change in place.
        r = api.req("PUT", "/upstreams/app/pools/primary/hosts/d", {"weight": 2, "admin": "up"}, token=TOKEN)
        self.assertEqual((r.status, r.json()["message"]), (200, "set host app/primary/d weight=2 admin up"), r.body)
        self.assertHost(gw, "app/primary/d", weight=2, admin="up")
        body = api.get_json("/upstreams/app/pools/primary/hosts/d")
        body["weight"] = 9
        r = api.req("PUT", "/upstreams/app/pools/primary/hosts/d", body, token=TOKEN)
        self.assertEqual((r.status, r.json()["message"]), (200, "set host app/primary/d weight=9 admin up"), r.body)
        self.assertHost(gw, "app/primary/d", weight=9)
        self.assertEvent(gw, rf"^host_changed app/primary/d {LO}:9 weight=9 \(was 2\)$")
        r = api.req("PUT", "/upstreams/app/pools/primary/hosts/d", body, token=TOKEN)
        self.assertEqual(r.json()["message"], "host app/primary/d already has weight 9 and is up")
        self.assertApiError(gw, 400, "PUT", "/upstreams/app/pools/primary/hosts/d", {**body, "address": f"{LO}:11"},
                            message=f"body.address: {LO}:11 is not the host's address ({LO}:9): an address does not "
                                    "change in place; remove the host and add it")
        self.assertApiError(gw, 400, "PUT", "/upstreams/app/pools/primary/hosts/d", {"health": "up"},
                            message="body: nothing to change: give \"weight\" and/or \"admin\"")
        self.assertApiError(gw, 400, "PUT", "/upstreams/app/pools/primary/hosts/d", {"id": "x", "weight": 1},
                            message="body.id: \"x\" differs from the host in the path, \"d\"")
        self.assertApiError(gw, 404, "PUT", "/upstreams/app/pools/primary/hosts/nope", {"weight": 1})
        self.assertEqual(api.req("POST", "/upstreams/app/pools/primary/hosts/d/down", token=TOKEN).status, 200)
        self.assertEqual(api.req("POST", "/upstreams/app/pools", {"id": "dr", "priority": 5}, token=TOKEN).status, 201)
        self.assertEqual(api.req("PUT", "/upstreams/app/pools/dr", {"method": "least_conn"}, token=TOKEN).status, 200)
        p = gwtest.find_pool(gw.status(), "app/dr")
        self.assertEqual((p["priority"], p["method"]), (5, "least_conn"))
        self.assertEqual(api.req("POST", "/listeners/web/routes/default/rules",
                                 {"id": "gray", "upstream": "pre", "ip": ["127.0.0.2", "10.0.0.0/8"], "percent": 5},
                                 token=TOKEN).status, 201)
        rules = gw.status()["routes"][0]["rules"]
        self.assertEqual([(x["id"], x["upstream"], x["ip"], x["percent"]) for x in rules],
                         [("gray", "pre", ["127.0.0.2/32", "10.0.0.0/8"], 5)])
        self.assertEqual(api.req("PUT", "/listeners/web/routes/default/rules/gray",
                                 {"upstream": "pre", "cookie": "beta=yes"}, token=TOKEN).status, 200)
        rules = gw.status()["routes"][0]["rules"]
        self.assertEqual(rules[0]["cookie"], {"name": "beta", "value": "yes"})
        self.assertNotIn("ip", rules[0])
        rc, out, err = gw.gwctl("status")
        self.assertIn("gray", out)
        # The state file has what the API did (the same writer path persists it).
        with open(gw.config["state_file"]) as f:
            state = json.load(f)
        hosts = [h["id"] for u in state["upstreams"] if u["name"] == "app" for p in u["pools"] for h in p["hosts"]]
        self.assertIn("d", hosts)

        # gwctl writes -> API.
        self.assertGwctlOk(gw, "add", "host", "app/primary", "e", f"{LO}:10", "--weight", "3")
        self.assertEqual(api.get_json("/upstreams/app/pools/primary/hosts/e")["weight"], 3)
        self.assertGwctlOk(gw, "down", "host", "app/primary", "a")
        self.assertEqual(api.get_json("/upstreams/app/pools/primary/hosts/a")["admin"], "down")
        self.assertGwctlOk(gw, "remove", "host", "app/primary", "e")
        self.assertEqual(api.req("GET", "/upstreams/app/pools/primary/hosts/e").status, 404)
        self.assertGwctlOk(gw, "remove", "rule", "web", "default", "gray")
        self.assertEqual(api.get_json("/listeners/web/routes/default/rules")["rules"], [])
        self.assertGwctlOk(gw, "set", "pool", "app", "dr", "--priority", "9")
        self.assertEqual(api.get_json("/upstreams/app/pools/dr")["priority"], 9)

        # key-auth consumers, both ways (names only: keys are kept as SHA-256).
        r = api.req("POST", "/consumers", {"name": "alice", "key": "alice-key-1"}, token=TOKEN)
        self.assertEqual((r.status, r.json()["message"]), (201, "add consumer alice"), r.body)
        self.assertEqual(r.header("Location"), "/consumers/alice")
        self.assertEqual(gw.status()["consumers"], [{"name": "alice"}])
        self.assertNotIn("alice-key-1", json.dumps(gw.status()))
        self.assertGwctlOk(gw, "add", "consumer", "bob", "--key", "bob-key-2")
        self.assertEqual(api.get_json("/consumers")["consumers"], [{"name": "alice"}, {"name": "bob"}])
        self.assertEqual(api.get_json("/consumers/bob"), {"name": "bob"})
        self.assertApiError(gw, 409, "POST", "/consumers", {"name": "carol", "key": "bob-key-2"},
                            message="consumer \"bob\" already has this key; a key must identify one consumer")
        self.assertApiError(gw, 409, "POST", "/consumers", {"name": "bob", "key": "other"},
                            message="consumer \"bob\" already exists")
        self.assertApiError(gw, 400, "POST", "/consumers", {"name": "carol", "key": "a b"},
                            message="body.key: expected a key of 1..512 visible ASCII characters")
        self.assertEqual(api.req("DELETE", "/consumers/alice", token=TOKEN).status, 200)
        self.assertApiError(gw, 404, "DELETE", "/consumers/alice", message="unknown consumer \"alice\"")
        self.assertEqual(api.req("GET", "/consumers/alice").status, 404)
        self.assertGwctlOk(gw, "remove", "consumer", "bob")
        self.assertEqual(api.get_json("/consumers")["consumers"], [])
        self.assertEvent(gw, r"^consumer_changed alice added$")
        self.assertEvent(gw, r"^consumer_changed bob removed$")

        # API removes; events both ways; /events paging.
        self.assertEqual(api.req("DELETE", "/upstreams/app/pools/dr", token=TOKEN).status, 200)
        self.assertEqual(api.req("DELETE", "/upstreams/app/pools/primary/hosts/d", token=TOKEN).status, 200)
        self.assertNoHost(gw, "app/primary/d")
        texts = gw.event_texts()
        ev = api.get_json("/events?since=0")
        self.assertEqual([e["text"] for e in ev["events"]], texts)
        self.assertEqual(ev["next"], len(texts))
        self.assertEqual([e["seq"] for e in ev["events"]], list(range(len(texts))))
        tail = api.get_json(f"/events?since={len(texts) - 2}&limit=1")
        self.assertEqual([e["text"] for e in tail["events"]], texts[-2:-1])
        self.assertEqual(api.get_json(f"/events?since={len(texts)}")["events"], [])

    # ------------------------------------------------------------------ 4xx

    def test_every_error_answer(self):
        gw = self.admin_gateway(shm={"max_hosts": 5, "max_pools": 4})
        api = gw.admin
        good = {"id": "d", "address": f"{LO}:9"}
        H = "/upstreams/app/pools/primary/hosts"
        # 400
        self.assertApiError(gw, 400, "POST", H, "{not json")
        self.assertApiError(gw, 400, "POST", H, "[1]", message="body: expected a JSON object, got an array")
        self.assertApiError(gw, 400, "POST", H, {"id": "d"}, message="body: missing required key \"address\"")
        self.assertApiError(gw, 400, "POST", H, {"id": "d", "address": f"{LO}:9", "weight": 5000},
                            message="body.weight: expected an integer 0..1000, got 5000")
        self.assertApiError(gw, 400, "POST", H, {"id": "d", "address": f"{LO}:9", "colour": 1},
                            message="body.colour: unknown key")
        self.assertApiError(gw, 400, "POST", H, {"id": "d", "address": f"{LO}:70000"},
                            message=f"body.address: bad address \"{LO}:70000\": port must be an integer 1..65535, "
                                    "got \"70000\"")
        self.assertApiError(gw, 400, "POST", "/upstreams/app/pools", {"id": "x", "method": "fastest"})
        self.assertApiError(gw, 400, "PUT", "/upstreams/app/pools/primary", {})
        self.assertApiError(gw, 400, "POST", "/listeners/web/routes/default/rules", {"id": "r", "upstream": "pre"},
                            message="body: a rule needs at least one matcher (ip, header, cookie or percent)")
        self.assertApiError(gw, 400, "PUT", "/listeners/web/routes/default/rules/r",
                            {"id": "other", "upstream": "pre", "percent": 1})
        self.assertApiError(gw, 400, "GET", "/events?since=-1")
        self.assertApiError(gw, 400, "GET", "/events?sinse=5",
                            message="GET /events: unknown query argument \"sinse\" (it takes since, limit)")
        self.assertApiError(gw, 400, "GET", "/status?json=1",
                            message="GET /status: unknown query argument \"json\" (it takes none)")
        self.assertApiError(gw, 400, "GET", "/upstreams/a%2Fb", token=None)
        # 401, with WWW-Authenticate
        r, _ = self.assertApiError(gw, 401, "POST", H, good, token=None,
                                   message="this needs the admin token: send Authorization: Bearer TOKEN")
        self.assertEqual(r.header("WWW-Authenticate"), 'Bearer realm="gw"')
        r, _ = self.assertApiError(gw, 401, "POST", H, good, token=TOKEN[:-1] + "X", message="invalid admin token")
        self.assertEqual(r.header("WWW-Authenticate"), 'Bearer realm="gw", error="invalid_token"')
        self.assertApiError(gw, 401, "POST", H, good, token=TOKEN + "0")
        self.assertApiError(gw, 401, "DELETE", H + "/a", token=None, headers=[("Authorization", f"Basic {TOKEN}")])
        # 404
        self.assertApiError(gw, 404, "GET", "/nope", token=None, message="no such endpoint: /nope")
        self.assertApiError(gw, 404, "POST", "/upstreams/nope/pools/primary/hosts", good,
                            message="unknown upstream \"nope\"")
        self.assertApiError(gw, 404, "POST", "/upstreams/app/pools/nope/hosts", good, message="unknown pool \"app/nope\"")
        self.assertApiError(gw, 404, "DELETE", H + "/zz", message="unknown host \"app/primary/zz\"")
        self.assertApiError(gw, 404, "POST", H + "/zz/down", message="unknown host \"app/primary/zz\"")
        self.assertApiError(gw, 404, "POST", "/listeners/web/routes/nope/rules",
                            {"id": "r", "upstream": "pre", "percent": 1},
                            message="listener \"web\" has no route \"nope\"")
        self.assertApiError(gw, 404, "DELETE", "/listeners/web/routes/default/rules/ghost",
                            message="unknown rule \"web/default/ghost\"")
        # 405, with Allow
        r, _ = self.assertApiError(gw, 405, "DELETE", "/metrics")
        self.assertEqual(r.header("Allow"), "GET, HEAD")
        r, _ = self.assertApiError(gw, 405, "POST", H + "/a", {"weight": 1})
        self.assertEqual(r.header("Allow"), "GET, HEAD, PUT, DELETE")
        r, _ = self.assertApiError(gw, 405, "GET", H + "/a/down", token=None)
        self.assertEqual(r.header("Allow"), "POST")
        # 409: duplicates, a pool that still has hosts
        self.assertApiError(gw, 409, "POST", H, {"id": "a", "address": f"{LO}:9"},
                            message="host app/primary/a already exists")
        self.assertApiError(gw, 409, "POST", "/upstreams/app/pools", {"id": "primary"},
                            message="pool app/primary already exists")
        self.assertApiError(gw, 409, "DELETE", "/upstreams/app/pools/primary",
                            message="pool app/primary still has 2 host(s); remove them first")
        # 507: the host table is full (5 slots: a, b, c, x + one).
        self.assertEqual(api.req("POST", H, good, token=TOKEN).status, 201)
        self.assertApiError(gw, 507, "POST", H, {"id": "e", "address": f"{LO}:9"},
                            message="host table is full (shm.max_hosts = 5)")
        # 413, 414, 431: the server's limits (the connection closes after them).
        big = json.dumps({"id": "f", "address": f"{LO}:9", "pad": "x" * 70000})
        r, _ = self.assertApiError(gw, 413, "POST", H, big)
        self.assertEqual(r.header("Connection"), "close")
        with socket.create_connection((LO, api.port), timeout=T(5)) as s:  # chunked, growing past the limit
            s.sendall(f"POST {H} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n".encode())
            try:
                for _ in range(10):
                    s.sendall(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
            except OSError:
                pass
            self.assertEqual(hb.read_response(s).status, 413)
        self.assertApiError(gw, 414, "GET", "/" + "x" * 5000, token=None)
        self.assertApiError(gw, 431, "GET", "/status", token=None, headers=[("X-Pad", "y" * 9000)])
        self.assertApiError(gw, 431, "GET", "/status", token=None, headers=[(f"X-F{i}", "1") for i in range(70)])
        # The gateway still answers and serves.
        self.assertEqual(api.req("GET", "/status").status, 200)
        self.assertEqual(hb.request(gw.port, "GET", "/").status, 200)

    def test_writes_refused_without_token_and_on_a_clustered_node(self):
        gw = self.admin_gateway(token=None)
        r, msg = self.assertApiError(gw, 403, "POST", "/upstreams/app/pools/primary/hosts/a/down", token=TOKEN)
        self.assertEqual(msg, "writes are disabled: the gateway's config has no admin.token")
        self.assertEqual(gw.admin.req("GET", "/").status, 200)  # reads need no token
        self.assertEqual(gw.admin.req("GET", "/metrics").status, 200)

        # A clustered node (etcd unreachable here: it serves and keeps trying):
        # pool and host writes are refused as gwctl refuses them; rules stay local.
        gw2 = self.admin_gateway(extra={"cluster": {"etcd": [f"http://{LO}:{free_port()}"]}})
        r, msg = self.assertApiError(gw2, 409, "POST", "/upstreams/app/pools/primary/hosts/a/down")
        rc, _, err = gw2.gwctl("down", "host", "app/primary", "a")
        self.assertEqual(rc, 1)
        self.assertEqual(err.strip(), "gwctl: " + msg)
        r = gw2.admin.req("POST", "/listeners/web/routes/default/rules", {"id": "r", "upstream": "pre", "percent": 1},
                          token=TOKEN)
        self.assertEqual(r.status, 201, r.body)

    # ------------------------------------------------------------------ the server itself

    def test_bad_and_slow_clients_do_not_hang_the_server(self):
        gw = self.admin_gateway(timeout_ms=1000)
        api = gw.admin
        # Idle connections and ones that send half a head (slowloris).
        idle = [socket.create_connection((LO, api.port), timeout=T(5)) for _ in range(20)]
        slow = []
        for _ in range(10):
            s = socket.create_connection((LO, api.port), timeout=T(5))
            s.sendall(b"GET /met")
            slow.append(s)
        t0 = time.monotonic()
        self.assertEqual(api.req("GET", "/metrics").status, 200)
        self.assertLess(time.monotonic() - t0, T(2))
        # They are closed by admin.timeout_ms (1 s), not held forever; a request begun
        # gets a 408 first (it was closed with no answer, as if the server had died).
        r = hb.read_response(slow[3])
        self.assertEqual(r.status, 408, r.body)
        self.assertIn(b"the request head did not come in whole within admin.timeout_ms (1000 ms)", r.body)
        for s in idle[:3] + slow[:4]:
            self.assertConnectionClosed(s, T(4))
        for s in idle + slow:
            s.close()
        with socket.create_connection((LO, api.port), timeout=T(5)) as s:
            s.sendall(b"POST /upstreams/app/pools HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                      b"\r\nContent-Length: 20\r\n\r\n{\"id\"")
            r = hb.read_response(s)
            self.assertEqual(r.status, 408, r.body)
            self.assertIn(b"the request body did not come in whole", r.body)
            self.assertConnectionClosed(s, T(4))
        # More connections than slots (128): the newest request is still served.
        flood = [socket.create_connection((LO, api.port), timeout=T(5)) for _ in range(140)]
        try:
            self.assertEqual(api.req("GET", "/status").status, 200)
        finally:
            for s in flood:
                s.close()
        # Garbage: 400 and close.
        with socket.create_connection((LO, api.port), timeout=T(5)) as s:
            s.sendall(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
            r = hb.read_response(s)
            self.assertEqual(r.status, 400)
            self.assertEqual(s.recv(100), b"")
        # Keep-alive, pipelining, HEAD, a half-closed client, Expect: 100-continue.
        with socket.create_connection((LO, api.port), timeout=T(5)) as s:
            rd = hb.Reader(s)
            s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\nHEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            r1 = hb.read_response(rd)
            r2 = hb.read_response(rd, "HEAD")
            r3 = hb.read_response(rd)
            self.assertEqual((r1.status, r2.status, r3.status), (200, 200, 404))
            self.assertEqual(json.loads(r1.body)["shm"], gw.shm)
            self.assertEqual(r2.body, b"")
            self.assertGreater(int(r2.header("Content-Length")), 1000)
            s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(hb.read_response(rd).status, 200)
        with socket.create_connection((LO, api.port), timeout=T(5)) as s:
            s.sendall(b"GET /events HTTP/1.0\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            r = hb.read_response(s)
            self.assertEqual(r.status, 200)
            self.assertIn("events", json.loads(r.body))
        r = api.req("POST", "/upstreams/app/pools/primary/hosts/a/down", token=TOKEN,
                    headers=[("Expect", "100-continue")], body=b"")
        self.assertEqual(r.status, 200)
        with socket.create_connection((LO, api.port), timeout=T(5)) as s:
            body = json.dumps({"id": "q", "address": f"{LO}:9"}).encode()
            s.sendall(f"POST /upstreams/app/pools/primary/hosts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                      f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
            rd = hb.Reader(s)
            self.assertTrue(rd.read_head().startswith(b"HTTP/1.1 100 Continue"))
            s.sendall(body)
            self.assertEqual(hb.read_response(rd).status, 201)
        # A body that never comes: closed after the timeout; the server serves others meanwhile.
        with socket.create_connection((LO, api.port), timeout=T(5)) as s:
            s.sendall(f"POST /upstreams/app/pools HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                      "Content-Length: 100\r\n\r\n{".encode())
            self.assertEqual(api.req("GET", "/status").status, 200)
            self.assertConnectionClosed(s, T(4))
        # The admin process killed: the master respawns it; the data plane never noticed.
        pid = next(p for p in gw.children() if read_text(f"/proc/{p}/comm").strip() == "gwd-admin")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: self._admin_up(gw), T(5), msg="the admin server is respawned")
        self.assertEqual(hb.request(gw.port, "GET", "/").status, 200)
        self.assertNotIn(pid, gw.children())

    def test_trickled_bodies_do_not_lock_clients_out(self):
        """128 connections each trickle a request body (a byte every 20 ms)
        and one more connects every round: a client whose request comes 60 ms
        after its connect is still answered. The slot of the connection
        nearest its deadline used to go, and a trickled byte pushed that
        deadline out: the client was always the one evicted."""
        gw = self.admin_gateway(timeout_ms=1000)
        port = gw.admin.port
        head = b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n"
        stop = threading.Event()
        held = []

        def new():
            s = socket.create_connection((LO, port), timeout=T(5))
            s.sendall(head)
            return s

        def attacker():
            while not stop.is_set():
                for s in list(held):
                    try:
                        s.send(b"a")
                    except OSError:
                        held.remove(s)
                        s.close()
                try:
                    held.append(new())
                except OSError:
                    pass
                time.sleep(0.02)
        for _ in range(128):
            held.append(new())
        th = threading.Thread(target=attacker, daemon=True)
        th.start()
        answered = []
        try:
            time.sleep(1.0)
            for _ in range(10):
                with socket.create_connection((LO, port), timeout=T(5)) as s:
                    time.sleep(0.06)
                    try:
                        s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        r = hb.read_response(s)
                        answered.append(r.status if r else "closed unanswered")
                    except (OSError, EOFError, AssertionError) as e:
                        answered.append(repr(e))
        finally:
            stop.set()
            th.join(T(5))
            for s in held:
                s.close()
        self.assertEqual(answered, [200] * 10)

    def test_eviction_takes_an_idle_keep_alive_connection_and_spares_a_lingering_close(self):
        """All 128 slots taken: one connection whose answer is sent and not
        yet read (a lingering close, the oldest of all), 126 that sent
        nothing, and one idle keep-alive connection (the youngest, its answer
        read). The 129th connection evicts the keep-alive one. The lingering
        one used to go (oldest, past the grace period): its client's next
        bytes then met a reset, which may destroy the answer it had not read."""
        gw = self.admin_gateway(timeout_ms=30000)
        port = gw.admin.port

        def conn():
            s = socket.create_connection((LO, port), timeout=T(5))
            self.addCleanup(s.close)
            return s
        lingering = conn()
        lingering.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        wait_until(lambda: lingering.recv(1, socket.MSG_PEEK), T(5), msg="the answer is sent")
        answered = time.monotonic()  # the lingering close lasts 2 s from about here
        for _ in range(126):
            conn()
        keep_alive = conn()
        keep_alive.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(hb.read_response(keep_alive).status, 200)
        time.sleep(max(0.0, answered + 1.2 - time.monotonic()))  # past the 1 s grace, within the 2 s linger
        with socket.create_connection((LO, port), timeout=T(5)) as s:
            s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            self.assertEqual(hb.read_response(s).status, 200, "the 129th connection is served")
        self.assertConnectionClosed(keep_alive, T(2))
        lingering.sendall(b"leftover bytes of a client that has not read the answer yet")
        r = hb.read_response(lingering)
        self.assertEqual(r.status, 200, "the lingering connection's answer is read whole")
        self.assertEqual(r.header("Connection"), "close")
        lingering.settimeout(T(5))
        self.assertEqual(lingering.recv(100), b"", "and then a FIN at the end of the lingering close, no reset")

    def test_out_of_descriptors_it_pauses_and_idle_clients_cannot_lock_it_out(self):
        """The admin server's descriptors run out (its RLIMIT_NOFILE lowered
        under it) with idle clients holding them: a new client evicts one, as
        when all 128 slots are taken, and is served; accept() failing again
        pauses accepts for 100 ms with one log line a second. It polled the
        still-readable socket in a loop, a log line a turn (100,000 lines a
        second at 100% CPU), and no new client was served."""
        import resource
        gw = self.admin_gateway(timeout_ms=30000)
        port = gw.admin.port
        admin_pid = next(int(d) for d in os.listdir("/proc") if d.isdigit() and _comm(int(d)) == "gwd-admin"
                         and _ppid(int(d)) == gw.pid)
        fds = len(os.listdir(f"/proc/{admin_pid}/fd"))
        soft, hard = resource.prlimit(admin_pid, resource.RLIMIT_NOFILE)
        resource.prlimit(admin_pid, resource.RLIMIT_NOFILE, (fds + 20, hard))
        self.addCleanup(lambda: resource.prlimit(admin_pid, resource.RLIMIT_NOFILE, (soft, hard))
                        if _comm(admin_pid) == "gwd-admin" else None)
        # The clients all wait in the queue at once (the server stopped while
        # they connect): one at a time, each would be served by an eviction
        # and accept() would never fail twice in a round.
        os.kill(admin_pid, signal.SIGSTOP)
        self.addCleanup(lambda: os.kill(admin_pid, signal.SIGCONT) if _comm(admin_pid) == "gwd-admin" else None)
        idle = []
        for _ in range(40):
            s = socket.create_connection((LO, port), timeout=T(5))
            self.addCleanup(s.close)
            idle.append(s)
        start = time.monotonic()
        os.kill(admin_pid, signal.SIGCONT)
        time.sleep(1.0)
        for _ in range(3):
            with socket.create_connection((LO, port), timeout=T(10)) as s:
                s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                self.assertEqual(hb.read_response(s).status, 200, "a new client is served")
        elapsed = time.monotonic() - start
        lines = gw.log_text().count("admin: accept: Too many open files")
        self.assertGreaterEqual(lines, 1)
        self.assertLessEqual(lines, int(elapsed) + 1, f"one line a second at most ({elapsed:.1f} s)")
        self.assertIn("pausing accepts for 100 ms", gw.log_text())

    def test_refused_before_the_body_and_http10_keep_alive(self):
        """A write without the token is refused once its head is in: no 100
        Continue, and no body read first. An HTTP/1.0 keep-alive request is
        answered with Connection: keep-alive (it used to get none, so a 1.0
        client waited for a close that came only at the timeout)."""
        gw = self.admin_gateway(timeout_ms=5000)
        port = gw.admin.port
        with socket.create_connection((LO, port), timeout=T(5)) as s:
            s.sendall(b"POST /upstreams/app/pools HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n"
                      b"Expect: 100-continue\r\n\r\n")
            r = hb.read_response(s)
            self.assertEqual(r.status, 401, r.body)
            self.assertEqual(r.header("Connection"), "close")
        with socket.create_connection((LO, port), timeout=T(5)) as s:
            s.sendall(b"PUT /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n")
            self.assertEqual(hb.read_response(s).status, 404)
        with socket.create_connection((LO, port), timeout=T(5)) as s:
            rd = hb.Reader(s)
            for _ in range(2):
                s.sendall(b"GET /events HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                r = hb.read_response(rd)
                self.assertEqual(r.status, 200)
                self.assertEqual((r.header("Connection") or "").lower(), "keep-alive")
            s.sendall(b"GET /events HTTP/1.0\r\n\r\n")
            r = hb.read_response(rd)
            self.assertEqual(r.header("Connection"), "close")
            self.assertEqual(s.recv(100), b"")

    def test_absolute_form_targets(self):
        """A server must take a request target in absolute form (RFC 9112
        3.2.2): its path and query are served as the origin form's would be
        (it was a 400 "expected a path" that closed the connection)."""
        gw = self.admin_gateway()
        port = gw.admin.port
        with socket.create_connection((LO, port), timeout=T(5)) as s:
            rd = hb.Reader(s)
            s.sendall(f"GET http://{LO}:{port}/status HTTP/1.1\r\nHost: {LO}:{port}\r\n\r\n".encode())
            r = hb.read_response(rd)
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(json.loads(r.body)["shm"], gw.shm)
            self.assertNotEqual(r.header("Connection"), "close")
            # The query goes with the path; an empty path is "/" (the dashboard,
            # which takes no query argument: an empty query is none).
            s.sendall(f"GET http://{LO}:{port}/events?since=0&limit=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                      f"HEAD HTTP://{LO}:{port}? HTTP/1.1\r\nHost: x\r\n\r\n"
                      f"GET http://{LO}:{port}?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                      f"GET http://{LO}:{port}/metrics/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            r = hb.read_response(rd)
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(len(json.loads(r.body)["events"]), 1)
            r = hb.read_response(rd, "HEAD")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.header("Content-Type"), "text/html; charset=utf-8")
            r = hb.read_response(rd)
            self.assertEqual(r.status, 400, r.body)
            self.assertIn("unknown query argument \"x\"", json.loads(r.body)["error"])
            r = hb.read_response(rd)
            self.assertEqual(r.status, 200)
            self.assertIn(b"# TYPE gw_info gauge", r.body)
        # Writes too, with the token; a write's absolute target is routed by its path.
        with socket.create_connection((LO, port), timeout=T(5)) as s:
            s.sendall(f"POST http://{LO}:{port}/upstreams/app/pools/primary/hosts/a/down HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n".encode())
            r = hb.read_response(s)
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(json.loads(r.body)["message"], "down host app/primary/a")
        # Other forms still name no path here.
        with socket.create_connection((LO, port), timeout=T(5)) as s:
            s.sendall(f"CONNECT {LO}:{port} HTTP/1.1\r\nHost: {LO}:{port}\r\n\r\n".encode())
            r = hb.read_response(s)
            self.assertEqual(r.status, 400)
            self.assertEqual(r.header("Connection"), "close")

    def test_options_asterisk_and_percent_encoded_paths(self):
        """OPTIONS * asks about the server: a 200 whose Allow lists the admin
        server's methods, on a connection kept alive (it was a 400 that
        closed it). A path's percent-encoded unreserved characters are the
        characters (RFC 3986 6.2.2.2): /st%61tus is /status (it was a 404);
        %2F is never a separator; a bad escape is a 400."""
        gw = self.admin_gateway()
        port = gw.admin.port
        with socket.create_connection((LO, port), timeout=T(5)) as s:
            rd = hb.Reader(s)
            s.sendall(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
            r = hb.read_response(rd)
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(r.header("Allow"), "GET, HEAD, POST, PUT, DELETE, OPTIONS")
            self.assertEqual(r.body, b"")
            self.assertNotEqual(r.header("Connection"), "close")
            s.sendall(b"GET /st%61tus HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /upstreams/%61pp HTTP/1.1\r\nHost: x\r\n\r\n")
            r = hb.read_response(rd)
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(json.loads(r.body)["shm"], gw.shm)
            r = hb.read_response(rd)
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(json.loads(r.body)["name"], "app")
        self.assertApiError(gw, 400, "GET", "/st%zztus", token=None)
        self.assertApiError(gw, 400, "GET", "/status%", token=None)
        self.assertApiError(gw, 404, "GET", "/upstreams%2Fapp", token=None)
        # A name segment reaches the handler decoded, in writes too.
        r = gw.admin.req("POST", "/upstreams/%61pp/pools/primary/hosts/a/d%6Fwn", token=TOKEN)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(json.loads(r.body)["message"], "down host app/primary/a")

    # ------------------------------------------------------------------ dashboard

    @unittest.skipUnless(CHROMIUM, "Debian chromium is not installed (tools/setup.sh installs it)")
    def test_dashboard_in_headless_chromium(self):
        # devs/main/x: its HTTP check waits for an answer that never comes, so
        # its health stays "unknown", and such a host is usable.
        silent = socket.create_server((LO, 0))
        self.addCleanup(silent.close)
        gw = self.admin_gateway(devs_x=f"{LO}:{silent.getsockname()[1]}",
                                devs_health={"type": "http", "timeout_ms": 3600000, "interval_ms": 3600000})
        for i in range(5):
            hb.request(int(gw.web), "GET", f"/d{i}")
        profile = tempfile.mkdtemp(prefix="gw-chromium-", dir=self.tmp)
        url = f"http://{LO}:{gw.admin.port}/"
        log = open(os.path.join(self.tmp, "chromium.log"), "wb")
        proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,900",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", url],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=gwtest._child_preexec)
        log.close()
        cdp = None

        def stop_chromium():
            if cdp:
                try:
                    cdp.call("Browser.close")
                except (AssertionError, OSError):
                    pass
                cdp.close()
            deadline = time.monotonic() + T(10)
            while time.monotonic() < deadline:
                pids = session_pids(proc.pid)
                if not pids:
                    break
                for p in pids:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
                time.sleep(0.05)
            try:
                proc.wait(T(10))
            except subprocess.TimeoutExpired:
                pass
            for p in session_pids(proc.pid):
                gwtest.reap(p)
            left = session_pids(proc.pid)
            if left:
                raise AssertionError(f"chromium processes left: {left}")
        self.addCleanup(stop_chromium)

        port_file = os.path.join(profile, "DevToolsActivePort")
        wait_until(lambda: os.path.exists(port_file) and read_text(port_file).count("\n") >= 1, T(20),
                   msg="Chromium's DevToolsActivePort")
        devtools = int(read_text(port_file).split("\n")[0])

        def page_target():
            with urllib.request.urlopen(f"http://{LO}:{devtools}/json/list", timeout=T(5)) as f:
                for t in json.load(f):
                    if t.get("type") == "page" and t.get("url", "").startswith(url):
                        return t["webSocketDebuggerUrl"]
            return None
        ws = wait_until(page_target, T(20), msg="the dashboard page in Chromium")
        cdp = CDP(ws, T(10))
        cdp.call("Runtime.enable")

        def cell(host, col):
            return cdp.evaluate(f'(() => {{ const e = document.querySelector(\'tr[data-host="{host}"] .{col}\'); '
                                f'return e ? e.textContent : null; }})()')
        wait_until(lambda: cell("app/primary/a", "admin") == "up", T(20), msg="the dashboard renders host a")
        self.assertEqual(cell("app/primary/b", "address"), self.b.address)
        self.assertEqual(cell("pre/main/c", "health"), "up")
        self.assertEqual(cdp.evaluate("document.getElementById('shm').textContent"), gw.shm)
        # "usable" as the balancer and gw_upstream_hosts_usable count it: x, not checked yet, is usable.
        self.assertEqual(cell("devs/main/x", "health"), "unknown")
        self.assertEqual(metric(gw.admin.metrics(), "gw_upstream_hosts_usable", upstream="devs"), 1)
        self.assertEqual(cdp.evaluate("document.querySelector('section[data-upstream=\"devs\"] h2 small').textContent"),
                         "1 of 1 host(s) usable")
        self.assertEqual(cdp.evaluate("document.querySelector('section[data-upstream=\"app\"] h2 small').textContent"),
                         "2 of 2 host(s) usable")
        # Traffic shows as a rate after two polls.
        for i in range(20):
            hb.request(int(gw.web), "GET", f"/r{i}")
        wait_until(lambda: (cell("app/primary/a", "rps") or "-") not in ("-", "0.0"), T(5),
                   msg="a request rate on the dashboard")
        # The host's bytes (status sent_bytes, received_bytes), formatted.
        wait_until(lambda: re.fullmatch(r"\d+(\.\d)? (B|KiB)", cell("app/primary/a", "received") or "") and
                   cell("app/primary/a", "sent") not in (None, "0 B"), T(5), msg="the host's bytes on the dashboard")
        # The same units and rounding as gwctl's text status (gw::admin::byte_size).
        self.assertEqual(cdp.evaluate("[0, 1023, 1024, 1536, 1048524, 1048525, 1572864, 1099511627776 * 1024 * 3,"
                                      " 2 ** 60 * 15].map(fmtBytes).join('|')"),
                         "0 B|1023 B|1.0 KiB|1.5 KiB|1023.9 KiB|1.0 MiB|1.5 MiB|3.0 PiB|15.0 EiB")

        # gwctl down host: the page shows it within a couple of seconds (it polls once a second).
        self.assertGwctlOk(gw, "down", "host", "app/primary", "a")
        t0 = time.monotonic()
        wait_until(lambda: cell("app/primary/a", "admin") == "down", T(5), interval=0.05,
                   msg="the dashboard shows host a down")
        self.assertLess(time.monotonic() - t0, T(2.5))
        self.assertEqual(cell("app/primary/b", "admin"), "up")
        wait_until(lambda: "host_down app/primary/a" in (cdp.evaluate(
            "document.getElementById('events').textContent") or ""), T(3), msg="the event on the dashboard")
        self.assertIn("live", cdp.evaluate("document.getElementById('conn').textContent"))
        # A removed host's rate sample goes with it: a page left open under
        # host churn does not keep one for every host it has seen.
        sampled = 'prev.has("h:app/primary/e")'
        self.assertGwctlOk(gw, "add", "host", "app/primary", "e", f"{LO}:10")
        wait_until(lambda: cell("app/primary/e", "address") == f"{LO}:10", T(5), msg="the dashboard shows host e")
        self.assertIs(cdp.evaluate(sampled), True)
        self.assertGwctlOk(gw, "remove", "host", "app/primary", "e")
        wait_until(lambda: cell("app/primary/e", "address") is None and cell("app/primary/b", "address"), T(5),
                   msg="the dashboard drops host e")
        self.assertIs(cdp.evaluate(sampled), False, "the removed host's rate sample is pruned")
        self.assertIs(cdp.evaluate('prev.has("h:app/primary/b")'), True)
        # No request for anything but the admin server (no CDN, no fonts).
        resources = cdp.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
        self.assertTrue(all(r.startswith(url) for r in resources), resources)

        # The viewport the screenshot shows: 1200 x 900 CSS pixels, whatever the
        # headless window's own frame takes.
        cdp.call("Emulation.setDeviceMetricsOverride", width=1200, height=900, deviceScaleFactor=1, mobile=False)
        wait_until(lambda: cdp.evaluate("window.innerHeight") == 900, T(5), msg="the 1200x900 viewport")
        shot = cdp.call("Page.captureScreenshot", format="png")
        png = base64.b64decode(shot["data"])
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        width, height = struct.unpack(">II", png[16:24])
        self.assertEqual((width, height), (1200, 900))
        os.makedirs(OUTPUT_DIR, exist_ok=True)
        path = os.path.join(OUTPUT_DIR, "admin-dashboard.png")
        with open(path, "wb") as f:
            f.write(png)
        sys.stderr.write(f"\n[test_admin] dashboard screenshot: {path}\n")


if __name__ == "__main__":
    gwtest.main()
