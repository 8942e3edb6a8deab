"""Access logs: http requests and tcp/frame connections, in the combined, main
and json formats; lines parse back with the right values; SIGUSR1 reopens the
files (logrotate); a stopped logger never stalls the workers."""

import json
import os
import re
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
import httpbackend as hb  # noqa: E402
from gwtest import GwTestCase, T, free_port, host, pool, upstream, wait_until  # noqa: E402

LO = "127.0.0.1"

# nginx's combined: $remote_addr - $remote_user [$time_local] "$request" $status
# $body_bytes_sent "$http_referer" "$http_user_agent"
COMBINED = re.compile(
    r'^(?P<client>\S+) - (?P<user>\S+) \[(?P<time>\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} \+0000)\] '
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"'
    r'(?P<rest>.*)$')
MAIN_REST = re.compile(
    r'^ rt=(?P<rt>\d+\.\d{3}) uaddr=(?P<uaddr>\S+) ustatus=(?P<ustatus>\S+) urt=(?P<urt>\S+) '
    r'route=(?P<route>\S+) rule=(?P<rule>\S+) consumer=(?P<consumer>\S+) retries=(?P<retries>\d+) '
    r'host="(?P<host>[^"]*)"$')


def http_listener(name, log, fmt, **extra):
    l = {"name": name, "listen": f"{LO}:{free_port()}", "protocol": "http",
         "access_log": {"path": log, "format": fmt}}
    l.update(extra)
    return l


def read_lines(path):
    """The complete lines of `path`: a read racing the logger's write(2) may
    see the first part of a chunk (reads are not atomic with writes), and a
    line without its newline is not written yet."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return [l.decode() for l in data[:data.rfind(b"\n") + 1].splitlines()]


class AccessLogTest(GwTestCase):
    needs = ("gwd", "gwctl", "gw-backend")

    def setUp(self):
        super().setUp()
        self.backends_ = []

    def hb(self, name, **kw):
        b = hb.HttpBackend(name, **kw)
        self.addCleanup(b.stop)
        return b

    def wait_lines(self, path, n, timeout=None):
        got = []

        def enough():
            got[:] = read_lines(path)
            return len(got) >= n
        wait_until(enough, timeout or T(5), msg=f"{n} line(s) in {path}")
        return got

    def test_http_lines_in_every_format_parse_back(self):
        a = self.hb("alpha")
        pre = self.hb("pre")
        logs = {f: os.path.join(self.tmp, f"{f}.log") for f in ("combined", "main", "json")}
        routes = [{"name": "api", "path": "/api/", "upstream": "app",
                   "rules": [{"id": "canary", "header": "X-Canary=1", "upstream": "pre"}]},
                  {"name": "rest", "upstream": "app"}]
        listeners = [http_listener(f"web_{f}", logs[f], f, routes=routes) for f in logs]
        cfg = self.make_config([pool("p", [host("a", a.address)])], listeners=listeners)
        cfg["upstreams"].append(upstream("pre", [pool("p", [host("c", pre.address)])]))
        gw = self.gateway(cfg)
        ports = {f: int(l["listen"].rsplit(":", 1)[1]) for f, l in zip(logs, listeners)}
        for f, port in ports.items():
            r = hb.request(port, "GET", "/api/x?q=\"1\"", headers=[("Host", "h.example"), ("Referer", "http://r/"),
                                                                 ("User-Agent", "ua \"quoted\"")])
            self.assertEqual(r.status, 200)
            body_len = len(r.body)
            r2 = hb.request(port, "GET", "/api/other", headers=[("Host", "h.example"), ("X-Canary", "1")])
            self.assertEqual(r2.status, 200)
            self.assertEqual(r2.json()["backend"], "pre")
            # A bad header after a whole request line: the line is logged (as
            # nginx logs a 400's); a bad request line: "-".
            r3 = hb.request(port, "GET", "/x", headers=[("Host", "a"), ("Host", "b")], host=None)
            self.assertEqual(r3.status, 400)
            with socket.create_connection((LO, port), timeout=T(5)) as s:
                s.sendall(b"G@T /y HTTP/1.1\r\nHost: a\r\n\r\n")
                self.assertIn(b" 400 ", s.recv(4096))
            lines = self.wait_lines(logs[f], 4)
            self.assertEqual(len(lines), 4, lines)
            if f == "json":
                recs = [json.loads(l) for l in lines]
                j = recs[0]
                self.assertEqual((j["client"], j["method"], j["target"], j["version"]), (LO, "GET", "/api/x?q=\"1\"", "HTTP/1.1"))
                self.assertEqual((j["status"], j["bytes"], j["host"]), (200, body_len, "h.example"))
                self.assertEqual((j["referer"], j["user_agent"]), ("http://r/", "ua \"quoted\""))
                self.assertEqual(j["upstream_addr"], a.address)
                self.assertEqual((j["upstream_status"], j["route"], j["rule"], j["retries"]), (200, "api", "", 0))
                self.assertGreaterEqual(j["upstream_time_ms"], 0)
                self.assertGreaterEqual(j["request_time_ms"], j["upstream_time_ms"])
                self.assertEqual(j["listener"], "web_json")
                self.assertRegex(j["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
                self.assertEqual((recs[1]["rule"], recs[1]["route"], recs[1]["upstream_addr"]), ("canary", "api", pre.address))
                self.assertEqual((recs[2]["status"], recs[2]["method"], recs[2]["target"], recs[2]["upstream_addr"]),
                                 (400, "GET", "/x", ""))
                self.assertEqual((recs[3]["status"], recs[3]["method"], recs[3]["target"]), (400, "", ""))
                continue
            m = COMBINED.match(lines[0])
            self.assertIsNotNone(m, lines[0])
            # nginx escapes '"' in values as \x22
            self.assertEqual(m["request"], 'GET /api/x?q=\\x221\\x22 HTTP/1.1')
            self.assertEqual((m["client"], m["status"], int(m["bytes"])), (LO, "200", body_len))
            self.assertEqual((m["referer"], m["agent"]), ("http://r/", "ua \\x22quoted\\x22"))
            m3 = COMBINED.match(lines[2])
            self.assertEqual((m3["request"], m3["status"], m3["referer"]), ("GET /x HTTP/1.1", "400", "-"))
            m4 = COMBINED.match(lines[3])
            self.assertEqual((m4["request"], m4["status"]), ("-", "400"))
            if f == "combined":
                self.assertEqual(m["rest"], "", "combined is exactly nginx's")
                continue
            x = MAIN_REST.match(m["rest"])
            self.assertIsNotNone(x, m["rest"])
            self.assertEqual((x["uaddr"], x["ustatus"], x["route"], x["rule"], x["retries"], x["host"]),
                             (a.address, "200", "api", "-", "0", "h.example"))
            x2 = MAIN_REST.match(COMBINED.match(lines[1])["rest"])
            self.assertEqual((x2["rule"], x2["uaddr"]), ("canary", pre.address))
            x3 = MAIN_REST.match(m3["rest"])
            self.assertEqual((x3["uaddr"], x3["ustatus"], x3["urt"]), ("-", "-", "-"))

    def test_retries_and_failures_are_logged(self):
        a = self.hb("alpha")
        dead = free_port()  # nothing listens: refused, then the next host answers
        log = os.path.join(self.tmp, "r.log")
        cfg = self.make_config([pool("p", [host("dead", dead), host("a", a.address)])],
                               listeners=[http_listener("web", log, "json", upstream="app")])
        cfg["upstreams"][0]["pools"][0]["method"] = "round_robin"
        gw = self.gateway(cfg)
        port = gw.ports[0]
        statuses = []
        for _ in range(4):
            statuses.append(hb.request(port, "GET", "/").status)
        self.assertEqual(statuses, [200] * 4)
        recs = [json.loads(l) for l in self.wait_lines(log, 4)]
        self.assertTrue(all(r["upstream_addr"] == a.address for r in recs), recs)
        self.assertIn(1, [r["retries"] for r in recs], recs)  # the refused host was tried first once
        # all hosts gone: 502 logged without an upstream status
        a.stop()
        gw.gwctl("down", "host", "app/p", "dead")
        r = hb.request(port, "GET", "/")
        self.assertEqual(r.status, 502)
        last = json.loads(self.wait_lines(log, 5)[-1])
        self.assertEqual((last["status"], last["upstream_status"], last["upstream_time_ms"]), (502, 0, -1))

    def test_a_retried_status_is_logged_as_the_hosts_answer(self):
        # Both hosts answer 404, listed in retry.on, with more tries than
        # hosts: gw answers 404 itself, and the log still says the last host
        # answered 404 ($upstream_status), not "none".
        a, b = self.hb("alpha", status=404), self.hb("beta", status=404)
        log = os.path.join(self.tmp, "s.log")
        cfg = self.make_config([pool("p", [host("a", a.address), host("b", b.address)])],
                               upstream_opts={"retry": {"on": ["error", "404"], "tries": 3}},
                               listeners=[http_listener("web", log, "json", upstream="app")])
        gw = self.gateway(cfg)
        self.assertEqual(hb.request(gw.ports[0], "GET", "/").status, 404)
        j = json.loads(self.wait_lines(log, 1)[0])
        self.assertEqual((j["status"], j["retries"], j["upstream_status"]), (404, 1, 404), j)
        self.assertIn(j["upstream_addr"], (a.address, b.address))
        self.assertGreaterEqual(j["upstream_time_ms"], 0)

    def test_tcp_and_frame_connections_logged_when_they_close(self):
        echo = gwtest.Backend("echo", mode="echo")
        self._backends.append(echo)
        log = os.path.join(self.tmp, "stream.log")
        tcp = {"name": "l4", "listen": f"{LO}:{free_port()}", "protocol": "tcp", "upstream": "app",
               "access_log": {"path": log, "format": "json"}}
        frame = {"name": "dev", "listen": f"{LO}:{free_port()}", "protocol": "frame", "upstream": "app",
                 "hash_key": "frame", "access_log": {"path": log, "format": "main"}}
        cfg = self.make_config([pool("p", [host("e", echo)], method="chash")], listeners=[tcp, frame])
        gw = self.gateway(cfg)
        p_tcp, p_frame = gw.ports
        with socket.create_connection((LO, p_tcp)) as s:
            s.sendall(b"x" * 1000)
            got = b""
            while len(got) < 1000:
                got += s.recv(65536)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        body = b'{"devid": "dev-42"}'
        fr = struct.pack(">BBHH", 1, 1, 0, len(body)) + body
        with socket.create_connection((LO, p_frame)) as s:
            s.sendall(fr)
            got = b""
            while len(got) < len(fr):
                got += s.recv(65536)
        lines = self.wait_lines(log, 2)
        j = json.loads(next(l for l in lines if l.startswith("{")))
        self.assertEqual((j["protocol"], j["listener"], j["bytes_in"], j["bytes_out"], j["end"]),
                         ("tcp", "l4", 1000, 1000, "closed"))
        self.assertEqual(j["upstream_addr"], echo.address)
        m = next(l for l in lines if not l.startswith("{"))
        self.assertRegex(m, r'^127\.0\.0\.1 \[\d{2}/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] frame listener=dev '
                            rf'in={len(fr)} out={len(fr)} time=\d+\.\d{{3}} upstream="{re.escape(echo.address)}" '
                            r'key="dev-42" end=closed$')

    def test_per_frame_devices_logged_when_they_close(self):
        # mode "frame": one line per device connection, with the bytes each
        # way, the first frame's key, no single host, and why it ended.
        echo = gwtest.Backend("echo", mode="echo")
        self._backends.append(echo)
        log = os.path.join(self.tmp, "mux.log")
        dev = {"name": "mux", "listen": f"{LO}:{free_port()}", "protocol": "frame", "upstream": "app",
               "hash_key": "frame", "frame": {"mode": "frame"}, "access_log": {"path": log, "format": "json"}}
        cfg = self.make_config([pool("p", [host("e", echo)], method="chash")], listeners=[dev])
        gw = self.gateway(cfg)
        (port,) = gw.ports

        def frame(devid):
            body = json.dumps({"devid": devid}).encode()
            return struct.pack(">BBHH", 1, 1, 0, len(body)) + body
        sent = frame("dev-a") + frame("dev-b")
        with socket.create_connection((LO, port)) as s:
            s.sendall(sent)
            got = b""
            while len(got) < len(sent):
                got += s.recv(65536)
        with socket.create_connection((LO, port)) as s:
            s.sendall(frame("dev-c") + struct.pack(">BBHH", 1, 1, 0, 3) + b"{x}")  # the second is not JSON
            s.settimeout(T(5))
            while s.recv(65536):
                pass
        lines = [json.loads(l) for l in self.wait_lines(log, 2)]
        lines.sort(key=lambda j: j["frame_key"])
        a, c = lines
        self.assertEqual((a["protocol"], a["listener"], a["frame_key"], a["bytes_in"], a["bytes_out"], a["end"]),
                         ("frame", "mux", "dev-a", len(sent), len(sent), "closed"))
        self.assertEqual(a["client"], LO)
        self.assertIn(a["upstream_addr"], ("", "-", None))
        self.assertEqual((c["frame_key"], c["end"]), ("dev-c", "bad_json"))
        self.assertEqual(c["bytes_in"], len(frame("dev-c")))

    def test_sigusr1_reopens_the_files(self):
        a = self.hb("alpha")
        log = os.path.join(self.tmp, "access.log")
        cfg = self.make_config([pool("p", [host("a", a.address)])],
                               listeners=[http_listener("web", log, "combined", upstream="app")])
        gw = self.gateway(cfg)
        port = gw.ports[0]
        self.assertEqual(hb.request(port, "GET", "/before").status, 200)
        self.wait_lines(log, 1)
        os.rename(log, log + ".1")
        self.assertEqual(hb.request(port, "GET", "/between").status, 200)
        wait_until(lambda: len(read_lines(log + ".1")) == 2, T(5), msg="a line into the renamed file")
        os.kill(gw.pid, signal.SIGUSR1)
        wait_until(lambda: os.path.exists(log), T(5), msg="the access log reopened")
        self.assertEqual(hb.request(port, "GET", "/after").status, 200)
        lines = self.wait_lines(log, 1)
        self.assertIn("GET /after HTTP/1.1", lines[0])
        self.assertEqual(len(read_lines(log + ".1")), 2)
        wait_until(lambda: "SIGUSR1: reopening" in gw.log_text(), T(5), msg="the reopen logged")

    def test_a_fifo_without_a_reader_never_blocks_the_master(self):
        """An access log that is a FIFO no process reads (a log shipper not
        started yet): gwd starts and serves (before, the master's open(2)
        waited for a reader and gwd never came up), says so, drops the lines
        meanwhile, and writes to the FIFO once a reader opens it, and again
        after that reader went and another came. A reload with it too."""
        a = self.hb("alpha")
        log = os.path.join(self.tmp, "access.fifo")
        os.mkfifo(log)
        cfg = self.make_config([pool("p", [host("a", a.address)])],
                               listeners=[http_listener("web", log, "combined", upstream="app")])
        gw = self.gateway(cfg, start=False)
        gw.start(wait=False)
        gw.wait_ready(T(10))
        port = gw.ports[0]
        self.assertEqual(hb.request(port, "GET", "/unread").status, 200)
        wait_until(lambda: "is a FIFO that no process reads" in gw.log_text(), T(5), msg="the warning")
        log_before = len(gw.log_text())
        gw.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded:" in gw.log_text()[log_before:], T(10), msg="'reloaded:' in the log")

        def read_from_fifo(path):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            buf = b""

            def got_line():
                nonlocal buf
                self.assertEqual(hb.request(port, "GET", "/read").status, 200)
                try:
                    buf += os.read(fd, 65536)
                except BlockingIOError:
                    pass
                return b"GET /read HTTP/1.1" in buf
            try:
                wait_until(got_line, T(10), interval=0.3, msg="a line through the FIFO")
            finally:
                os.close(fd)
            self.assertNotIn(b"/unread", buf)
        read_from_fifo(log)
        # The reader went: the next write fails (EPIPE), and the logger opens
        # the FIFO again once another reader comes.
        self.assertEqual(hb.request(port, "GET", "/gap").status, 200)
        wait_until(lambda: "Broken pipe" in gw.log_text(), T(5), msg="the failed write logged")
        read_from_fifo(log)
        self.assertEqual(hb.request(port, "GET", "/still").status, 200)

    def test_sigusr1_reopens_the_loggers_error_log(self):
        """After a rotation of log_file (rename, SIGUSR1) the logger's own
        lines go to the new file too: it reopened only the access logs, and
        its errors (a full disk, a file that would not open) went on into the
        rotated error log."""
        a = self.hb("alpha")
        log = os.path.join(self.tmp, "access.log")
        err = os.path.join(self.tmp, "error.log")
        cfg = self.make_config([pool("p", [host("a", a.address)])], log_file=err,
                               listeners=[http_listener("web", log, "combined", upstream="app")])
        gw = self.gateway(cfg, start=False)
        gw.start(wait=False)
        gw.log_path = err  # where "ready" and the rest are written
        gw.wait_ready()
        os.rename(err, err + ".1")
        os.kill(gw.pid, signal.SIGUSR1)
        wait_until(lambda: "reopening 1 access log(s)" in gw.log_text(), T(5),
                   msg="the logger's reopen line in the new error log")
        self.assertRegex(gw.log_text(), r"logger\[\d+\]: SIGUSR1: reopening 1 access log\(s\)")
        with open(err + ".1") as f:
            self.assertNotIn("reopening 1 access log(s)", f.read())

    def test_a_stopped_logger_never_stalls_the_workers(self):
        a = self.hb("alpha")
        log = os.path.join(self.tmp, "access.log")
        cfg = self.make_config([pool("p", [host("a", a.address)])],
                               listeners=[http_listener("web", log, "main", upstream="app",
                                                        http={"keepalive_requests": 100000})])
        gw = self.gateway(cfg)
        port = gw.ports[0]
        self.assertEqual(hb.request(port, "GET", "/warm").status, 200)
        self.wait_lines(log, 1)
        def comm(p):
            with open(f"/proc/{p}/comm") as f:
                return f.read().strip()
        logger = [p for p in gw.children() if comm(p) == "gwd-logger"]
        self.assertEqual(len(logger), 1, gw.children())
        os.kill(logger[0], signal.SIGSTOP)
        try:
            # Far more than the socket and the worker's staging hold: requests must
            # keep being answered promptly; lines beyond the queue are dropped.
            t0 = time.monotonic()
            n = 0
            with socket.create_connection((LO, port)) as s:
                s.settimeout(T(5))
                reader = hb.Reader(s)
                pad = "p" * 3000
                for i in range(3000):
                    s.sendall(f"GET /{i}/{pad} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                    r = hb.read_response(reader)
                    self.assertIsNotNone(r)
                    self.assertEqual(r.status, 200)
                    n += 1
            elapsed = time.monotonic() - t0
            self.assertEqual(n, 3000)
            self.assertLess(elapsed, T(30), "requests stalled while the logger was stopped")
        finally:
            os.kill(logger[0], signal.SIGCONT)
        # The queued lines arrive once it runs again (at least the socket's worth).
        lines = self.wait_lines(log, 200, timeout=T(10))
        self.assertGreater(len(lines), 200)
        self.assertLessEqual(len(lines), 3001)
        for l in lines[:50]:
            self.assertIsNotNone(COMBINED.match(l), l)
        # The lines that did not fit are dropped, and the gap is said in the
        # error log (it was silent).
        if len(lines) < 3001:
            wait_until(lambda: "line(s) dropped" in gw.log_text(), T(5), msg="the dropped lines reported")

    def test_a_stop_keeps_the_lines_a_worker_still_queues_for_a_slow_logger(self):
        """A worker that exits (graceful stop) while its logger is behind
        waits a moment for the logger to take its queued chunks: they were
        dropped without a count at exit (up to 512 KiB of lines per file)."""
        a = self.hb("alpha")
        log = os.path.join(self.tmp, "access.log")
        cfg = self.make_config([pool("p", [host("a", a.address)])],
                               listeners=[http_listener("web", log, "main", upstream="app",
                                                        http={"keepalive_requests": 100000})])
        gw = self.gateway(cfg)
        port = gw.ports[0]
        self.assertEqual(hb.request(port, "GET", "/warm").status, 200)
        self.wait_lines(log, 1)

        def comm(p):
            with open(f"/proc/{p}/comm") as f:
                return f.read().strip()
        (logger,) = [p for p in gw.children() if comm(p) == "gwd-logger"]
        os.kill(logger, signal.SIGSTOP)
        self.addCleanup(lambda: gwtest.pid_alive(logger) and os.kill(logger, signal.SIGCONT))
        total = 3000
        with socket.create_connection((LO, port)) as s:
            s.settimeout(T(5))
            reader = hb.Reader(s)
            pad = "p" * 3000
            for i in range(total):
                s.sendall(f"GET /{i}/{pad} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                self.assertEqual(hb.read_response(reader).status, 200)
        gw.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the worker has drained and waits for the logger
        os.kill(logger, signal.SIGCONT)
        self.assertEqual(gw.wait_exit(T(15)), 0)
        dropped = [int(m) for m in re.findall(r"line\(s\) dropped: .* \((\d+) dropped in all\)", gw.log_text())]
        lost = max(dropped, default=0)
        self.assertEqual(len(read_lines(log)), 1 + total - lost,
                         f"{lost} line(s) reported dropped; the others must all be in the file")

    def test_long_values_are_cut_to_their_budget_with_dots(self):
        # README: a value whose escaped form would not fit is cut and ends in
        # "..." (the target at 4,096 escaped bytes, Referer and User-Agent at
        # 1,024, Host at 512, the method at 256). Plain bytes: the same lengths.
        a = self.hb("alpha")
        log = os.path.join(self.tmp, "cut.log")
        cfg = self.make_config([pool("p", [host("a", a.address)])],
                               listeners=[http_listener("web", log, "json", upstream="app")])
        gw = self.gateway(cfg)
        method, target = "M" * 300, "/" + "t" * 5000
        hostname, agent = "h" * 600, "u" * 1100
        with socket.create_connection((LO, gw.ports[0]), timeout=T(10)) as s:
            s.sendall(f"{method} {target} HTTP/1.1\r\nHost: {hostname}\r\nUser-Agent: {agent}\r\n"
                      f"Referer: {agent}\r\nConnection: close\r\n\r\n".encode())
            while s.recv(65536):
                pass
        j = json.loads(self.wait_lines(log, 1)[0])
        self.assertEqual(j["method"], "M" * 253 + "...")
        self.assertEqual(j["target"], target[:4093] + "...")
        self.assertEqual(j["host"], "h" * 509 + "...")
        self.assertEqual(j["user_agent"], "u" * 1021 + "...")
        self.assertEqual(j["referer"], "u" * 1021 + "...")

    def test_request_length_and_bytes_sent_are_each_requests_own(self):
        # nginx's $request_length (head and body as on the wire) and
        # $bytes_sent (head and body), exact, for requests pipelined in one
        # write too: each request counts its own bytes, not the read's.
        a = self.hb("alpha")
        log = os.path.join(self.tmp, "sizes.log")
        cfg = self.make_config([pool("p", [host("a", a.address)])],
                               listeners=[http_listener("web", log, "json",
                                                        routes=[{"name": "api", "path": "/api/", "upstream": "app"}])])
        gw = self.gateway(cfg)

        def exchange(raw, answers):
            """Sends `raw` in one write; returns the sizes (head, body) of
            `answers` responses read in order, then checks that nothing follows."""
            with socket.create_connection((LO, gw.ports[0]), timeout=T(10)) as s:
                s.sendall(raw)
                rd = hb.Reader(s)
                sizes = []
                for _ in range(answers):
                    head = rd.read_head()
                    self.assertIsNotNone(head)
                    _, headers = hb.parse_head(head)
                    n = int(hb.hget(headers, "Content-Length"))
                    rd.read_exact(n)
                    sizes.append((len(head), n))
                self.assertEqual(rd.read_to_eof(), b"")
                return sizes

        get = b"GET /api/get HTTP/1.1\r\nHost: sizes.test\r\nUser-Agent: t\r\nConnection: close\r\n\r\n"
        post = (b"POST /api/cl HTTP/1.1\r\nHost: sizes.test\r\nContent-Length: 11\r\nConnection: close\r\n\r\n"
                b"hello world")
        chunked = (b"POST /api/chunked HTTP/1.1\r\nHost: sizes.test\r\nTransfer-Encoding: chunked\r\n"
                   b"Connection: close\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n")
        p1 = b"POST /api/p1 HTTP/1.1\r\nHost: sizes.test\r\nContent-Length: 3\r\n\r\nabc"
        p2 = b"GET /no-route HTTP/1.1\r\nHost: sizes.test\r\n\r\n"  # gw's own 404
        p3 = b"\r\nGET /api/p3 HTTP/1.1\r\nHost: sizes.test\r\nConnection: close\r\n\r\n"  # an empty line first
        expect = {}  # target -> (status, request_length, bytes_sent, bytes)
        for req, target in ((get, "/api/get"), (post, "/api/cl"), (chunked, "/api/chunked")):
            (h, n), = exchange(req, 1)
            expect[target] = (200, len(req), h + n, n)
        sizes = exchange(p1 + p2 + p3, 3)
        for req, target, status, (h, n) in zip((p1, p2, p3), ("/api/p1", "/no-route", "/api/p3"), (200, 404, 200),
                                               sizes):
            expect[target] = (status, len(req), h + n, n)
        recs = [json.loads(l) for l in self.wait_lines(log, len(expect))]
        got = {r["target"]: (r["status"], r["request_length"], r["bytes_sent"], r["bytes"]) for r in recs}
        self.assertEqual(got, expect)
        # The fields follow "bytes", as in the README.
        self.assertRegex(read_lines(log)[0], r'"bytes":\d+,"request_length":\d+,"bytes_sent":\d+,"request_time_ms"')
        self.assertEqual(a.counts()[1], 5)  # all but the 404 went to the host

    def timeout_408s(self, reqs):
        """Sends each request head or part on its own connection to a listener
        with 600 ms client header and body timeouts; returns the log records."""
        a = self.hb("alpha")
        log = os.path.join(self.tmp, "t.log")
        cfg = self.make_config([pool("p", [host("a", a.address)])],
                               listeners=[http_listener("web", log, "json", upstream="app",
                                                        http={"client_header_timeout_ms": 600,
                                                              "client_body_timeout_ms": 600})])
        gw = self.gateway(cfg)
        for req in reqs:
            with socket.create_connection((LO, gw.ports[0]), timeout=T(10)) as s:
                s.sendall(req)
                got = b""
                while d := s.recv(65536):
                    got += d
                self.assertTrue(got.startswith(b"HTTP/1.1 408 "), got)
        return [json.loads(l) for l in self.wait_lines(log, len(reqs))]

    def test_a_head_timeout_is_logged(self):
        # Every request gets its line: a head that never ends gets 408 after
        # client_header_timeout_ms, logged with "-" for the request (nginx's 408).
        reqs = [b"GET /head HTTP/1.1\r\nHost: x\r\n", b"GE"]
        recs = self.timeout_408s(reqs)
        self.assertEqual([(r["status"], r["method"], r["target"]) for r in recs], [(408, "", "")] * 2, recs)
        # request_length: what gw had read of the head it refused.
        self.assertEqual(sorted(r["request_length"] for r in recs), sorted(len(q) for q in reqs), recs)

    def test_request_time_of_an_error_answer_counts_to_the_answer(self):
        # An answer that closes the connection (408 here) is logged with the
        # time from the request's first byte to the answer, not ~0.
        recs = self.timeout_408s([b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
                                  b"GET /head HTTP/1.1\r\nHost: x\r\n"])
        self.assertEqual([(r["status"], r["target"]) for r in recs], [(408, "/body"), (408, "")], recs)
        for r in recs:
            self.assertGreaterEqual(r["request_time_ms"], 500, r)
            self.assertLess(r["request_time_ms"], T(2000), r)

    def test_config_errors(self):
        base = self.make_config([pool("p", [host("a", 1)])],
                                listeners=[{"name": "web", "listen": f"{LO}:{free_port()}", "protocol": "http",
                                            "upstream": "app", "access_log": {"format": "xml", "buffer": 1}}])
        self.assertConfigErrors(base, ["listeners[0].access_log.format", "listeners[0].access_log.buffer",
                                       "listeners[0].access_log"])


if __name__ == "__main__":
    gwtest.main()
