#!/usr/bin/python3
"""Active health checks through the real gwd: one checker process for the
gateway, fall/rise with real backends stopped and restarted, `down` by hand
survives passing checks, failover to the DR pool and back, HTTP status checks."""

import os
import resource
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import GwTestCase, T, host, pool  # noqa: E402

FAST = {"health": {"type": "tcp", "interval_ms": 100, "timeout_ms": 200, "rise": 2, "fall": 3}}


def host_health(gw, hid):
    for p in gw.status()["upstreams"][0]["pools"]:
        for h in p["hosts"]:
            if h["id"] == hid:
                return h
    raise AssertionError(f"no host {hid}")


class StatusServer:
    """Answers every HTTP request with a settable status code."""

    def __init__(self):
        self.status = 200
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((gwtest.LOOPBACK, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.address = f"{gwtest.LOOPBACK}:{self.port}"
        self._stop = False
        self.requests = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            with c:
                c.settimeout(2)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = c.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    self.requests.append(data.split(b"\r\n", 1)[0].decode())
                    c.sendall(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
                except OSError:
                    pass

    def stop(self):
        self._stop = True
        self.sock.close()
        self.thread.join(2)


class HealthTest(GwTestCase):

    def test_down_after_fall_and_back_after_rise(self):
        a, b = self.backend("a"), self.backend("b")
        gw = self.gateway(self.make_config([pool("primary", [host("a", a), host("b", b)])], upstream_opts=FAST))
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "up", T(5), msg="a checked up")
        port = a.port
        a.stop()
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "down", T(5), msg="a down after fall")
        self.assertEqual(set(gwtest.names(gw.port, 6)), {"b"})
        self.assertTrue(any("host_down app/primary/a " + a.address + " (active: 3 failed check(s)" in e for e in gw.events()),
                        gw.events())
        a2 = self.backend("a", port=port)
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "up", T(5), msg="a up after rise")
        self.assertTrue(any("host_up app/primary/a " + a2.address + " (active: 2 passed check(s))" in e for e in gw.events()))
        self.assertEqual(set(gwtest.names(gw.port, 6)), {"a", "b"})
        self.assertGreater(a2.count, 0)

    def test_checker_out_of_descriptors_keeps_hosts_up(self):
        """The checker process's open-files limit is lowered until it has no
        descriptor left: every check fails in socket() (EMFILE), which says
        nothing of the hosts. Those checks are skipped and logged, and the
        hosts stay up; before, `fall` of them took every host down for every
        worker. With the limit back, a stopped host is still taken down."""
        a, b = self.backend("a"), self.backend("b")
        gw = self.gateway(self.make_config([pool("primary", [host("a", a), host("b", b)])], upstream_opts=FAST))
        for h in ("a", "b"):
            gwtest.wait_until(lambda: host_health(gw, h)["health"] == "up", T(5), msg=f"{h} checked up")
        (checker,) = [p for p in gwtest.children(gw.pid) if open(f"/proc/{p}/comm").read().strip() == "gwd-checker"]
        fds = {int(fd) for fd in os.listdir(f"/proc/{checker}/fd")}
        lowest_free = min(set(range(max(fds) + 2)) - fds)
        soft, hard = resource.prlimit(checker, resource.RLIMIT_NOFILE)
        resource.prlimit(checker, resource.RLIMIT_NOFILE, (lowest_free, hard))
        self.addCleanup(lambda: os.path.exists(f"/proc/{checker}") and
                        resource.prlimit(checker, resource.RLIMIT_NOFILE, (soft, hard)))
        gwtest.wait_until(lambda: "Too many open files (a local error: the check is skipped, the host's state "
                          "stays)" in gw.log_text(), T(5), msg="the skipped check is logged")
        time.sleep(1.0)  # ten intervals: more than `fall` (3) checks
        for h in ("a", "b"):
            self.assertEqual(host_health(gw, h)["health"], "up", f"{h} must stay up")
        self.assertFalse([e for e in gw.events() if "host_down" in e], "no host may be taken down")
        self.assertEqual(set(gwtest.names(gw.port, 6)), {"a", "b"})
        self.assertLessEqual(gw.log_text().count("a local error: the check is skipped"), 3,
                             "logged at most once a second")

        resource.prlimit(checker, resource.RLIMIT_NOFILE, (soft, hard))
        a.stop()
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "down", T(5), msg="a down after fall")
        self.assertEqual(host_health(gw, "b")["health"], "up")

    def test_admin_down_survives_passing_checks(self):
        a, b = self.backend("a"), self.backend("b")
        gw = self.gateway(self.make_config([pool("primary", [host("a", a), host("b", b)])], upstream_opts=FAST))
        rc, _, err = gw.gwctl("down", "host", "app/primary", "a")
        self.assertEqual(rc, 0, err)
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "up", T(5), msg="checks pass for a")
        # (a's own connection count also grows with the checker's probes, so the
        # routing is judged by the names the clients get.)
        self.assertEqual(set(gwtest.names(gw.port, 10)), {"b"})
        self.assertEqual(host_health(gw, "a")["admin"], "down")
        self.assertEqual(host_health(gw, "a")["total"], 0)

    def test_failover_to_dr_pool_and_back(self):
        a, dr = self.backend("a"), self.backend("dr")
        gw = self.gateway(self.make_config(
            [pool("primary", [host("a", a)], priority=0), pool("dr", [host("dr", dr)], priority=1)],
            upstream_opts=FAST))
        self.assertEqual(set(gwtest.names(gw.port, 3)), {"a"})
        port = a.port
        a.stop()
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "down", T(5), msg="primary down")
        self.assertEqual(set(gwtest.names(gw.port, 3)), {"dr"})
        self.backend("a", port=port)
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "up", T(5), msg="primary back")
        self.assertEqual(set(gwtest.names(gw.port, 3)), {"a"})

    def test_http_check_expects_a_status_class(self):
        s = StatusServer()
        self.addCleanup(s.stop)
        b = self.backend("b")
        opts = {"health": {"type": "http", "path": "/healthz", "expect_status": "2xx", "interval_ms": 100,
                           "timeout_ms": 300, "rise": 1, "fall": 2}}
        gw = self.gateway(self.make_config([pool("p", [host("s", s.address), host("b", b)])], upstream_opts=opts))
        gwtest.wait_until(lambda: host_health(gw, "s")["health"] == "up", T(5), msg="http check passes")
        self.assertTrue(s.requests and s.requests[0] == "GET /healthz HTTP/1.0", s.requests[:1])
        s.status = 503
        gwtest.wait_until(lambda: host_health(gw, "s")["health"] == "down", T(5), msg="503 fails the check")
        self.assertTrue(any("last: HTTP status 503" in e for e in gw.events()), gw.events())
        s.status = 204
        gwtest.wait_until(lambda: host_health(gw, "s")["health"] == "up", T(5), msg="204 passes again")

    def test_new_host_is_checked_at_once(self):
        a = self.backend("a")
        gw = self.gateway(self.make_config([pool("primary", [host("a", a)])],
                                           upstream_opts={"health": dict(FAST["health"], interval_ms=60000)}))
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "up", T(5), msg="a checked")
        dead = gwtest.free_port()
        rc, _, err = gw.gwctl("add", "host", "app/primary", "z", f"127.0.0.1:{dead}")
        self.assertEqual(rc, 0, err)
        # With a 60 s interval only the immediate first check can say this in time.
        gwtest.wait_until(lambda: host_health(gw, "z")["health"] == "down", T(5), msg="new host checked at once")

    def test_hooks_run_by_the_master_with_details_and_never_block(self):
        a, b = self.backend("a"), self.backend("b")
        out = os.path.join(self.tmp, "hooks.log")
        line = '"$GW_EVENT $GW_UPSTREAM $GW_POOL $GW_HOST $GW_ADDRESS"'
        hooks = {"host_down": f"sleep 30 & echo {line} >> {out}; sleep 20",  # slow on purpose
                 "host_up": f"echo {line} >> {out}; exit 3"}                 # and failing
        gw = self.gateway(self.make_config([pool("primary", [host("a", a), host("b", b)])], hooks=hooks))
        for verb in ("down", "up", "down", "up"):
            rc, _, err = gw.gwctl(verb, "host", "app/primary", "a")
            self.assertEqual(rc, 0, err)

        def lines():
            try:
                with open(out) as f:
                    return f.read().splitlines()
            except FileNotFoundError:
                return []
        gwtest.wait_until(lambda: len(lines()) == 4, T(10), msg="4 hook runs")
        self.assertEqual(sorted(lines()), sorted([f"host_down app primary a {a.address}",
                                                  f"host_up app primary a {a.address}"] * 2))
        # The slow hooks are still running; the gateway serves and changes go through.
        self.assertEqual(set(gwtest.names(gw.port, 4)), {"a", "b"})
        rc, _, err = gw.gwctl("down", "host", "app/primary", "b")
        self.assertEqual(rc, 0, err)

    def test_slow_start_never_refuses_the_only_host(self):
        a = self.backend("a")
        gw = self.gateway(self.make_config([pool("primary", [host("a", a, 10)])],
                                           upstream_opts={"slow_start_ms": 60000}))
        for verb in ("down", "up"):
            rc, _, err = gw.gwctl(verb, "host", "app/primary", "a")
            self.assertEqual(rc, 0, err)
        self.assertEqual(gwtest.names(gw.port, 20), ["a"] * 20)

    def test_slow_start_keeps_traffic_in_the_primary_pool(self):
        """A primary host ramping up after `up` still takes all the traffic of
        its pool: slow start shapes its share within the pool and never sends
        connections to the backup pool (it once sent ~99% there at the start of
        the ramp)."""
        a, dr = self.backend("a"), self.backend("dr")
        gw = self.gateway(self.make_config(
            [pool("primary", [host("a", a, 10)], priority=0), pool("dr", [host("dr", dr)], priority=1)],
            upstream_opts={"slow_start_ms": 60000}))
        for verb in ("down", "up"):
            rc, _, err = gw.gwctl(verb, "host", "app/primary", "a")
            self.assertEqual(rc, 0, err)
        self.assertEqual(gwtest.names(gw.port, 20), ["a"] * 20)

    def test_http_host_that_accepts_and_never_answers_is_taken_out(self):
        """max_fails counts read timeouts even though every connect succeeds (a
        connect is no success over HTTP: the answer is), so a hung host goes
        down after max_fails; after fail_timeout exactly one request tries it
        (over all workers), and its timeout keeps it out again."""
        good = StatusServer()
        self.addCleanup(good.stop)
        hung = socket.socket()
        hung.bind((gwtest.LOOPBACK, 0))
        hung.listen(256)  # accepts (the kernel does), never answers
        self.addCleanup(hung.close)
        hung_addr = f"{gwtest.LOOPBACK}:{hung.getsockname()[1]}"
        web = gwtest.free_port()
        cfg = self.make_config(
            [pool("p", [host("good", good.address), host("hung", hung_addr)])], workers=2,
            upstream_opts={"max_fails": 2, "fail_timeout_ms": 1500, "read_timeout_ms": 300,
                           "keepalive": {"max_idle": 0, "idle_timeout_ms": 1000, "max_requests": 1}},
            listeners=[{"name": "web", "listen": f"{gwtest.LOOPBACK}:{web}", "protocol": "http",
                        "upstream": "app"}])
        gw = self.gateway(cfg)

        def slow_requests(n):
            slow = 0
            for _ in range(n):
                t0 = time.monotonic()
                with socket.create_connection((gwtest.LOOPBACK, web), timeout=T(10)) as c:
                    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := c.recv(4096):
                        data += chunk
                self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data[:100])  # retried on good
                slow += time.monotonic() - t0 >= 0.25
            return slow

        self.assertLessEqual(slow_requests(30), 2, "requests kept waiting on the hung host")
        self.assertEqual(host_health(gw, "hung")["health"], "down")
        self.assertEqual(host_health(gw, "good")["health"], "up")
        time.sleep(1.6)  # fail_timeout: one trial, which times out
        self.assertEqual(slow_requests(12), 1, "not exactly one trial of the hung host")
        self.assertEqual(host_health(gw, "hung")["health"], "down")
        self.assertEqual(host_health(gw, "hung")["failures"], 3)

    def test_404_is_not_a_failure_of_the_host(self):
        """retry.on may list 4xx statuses (tried elsewhere), but a 4xx is the
        request's doing: it never counts against the host (nginx does not count
        403 or 404 either), so clients asking for missing paths cannot take
        hosts out. A listed 5xx does count, even with no try left."""
        srv = StatusServer()
        self.addCleanup(srv.stop)
        srv.status = 404
        web = gwtest.free_port()
        cfg = self.make_config(
            [pool("p", [host("a", srv.address)])],
            upstream_opts={"max_fails": 1, "fail_timeout_ms": 60000, "retry": {"on": ["404", "503"]}},
            listeners=[{"name": "web", "listen": f"{gwtest.LOOPBACK}:{web}", "protocol": "http",
                        "upstream": "app"}])
        gw = self.gateway(cfg)
        for _ in range(3):
            self.assertEqual(_status(web), 404)
        self.assertEqual(host_health(gw, "a")["health"], "up")
        self.assertEqual(host_health(gw, "a")["failures"], 0)
        srv.status = 503
        self.assertEqual(_status(web), 503)
        self.assertEqual(host_health(gw, "a")["health"], "down")


def _status(port):
    with socket.create_connection((gwtest.LOOPBACK, port), timeout=T(10)) as c:
        c.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := c.recv(4096):
            data += chunk
    return int(data.split(b" ", 2)[1])


if __name__ == "__main__":
    gwtest.main()
