#!/usr/bin/python3
"""Active health checks through the real gwd: one checker process for the
gateway, fall/rise with real backends stopped and restarted, `down` by hand
survives passing checks, failover to the DR pool and back, HTTP status checks."""

import os
import resource
import signal
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
    """Answers every HTTP request with a settable status code; with `want_host`
    set, a request whose Host header is not that gets a 404 (a virtual-hosted
    backend: nginx's server_name)."""

    def __init__(self, want_host=None):
        self.status = 200
        self.want_host = want_host
        self.hosts = []  # the Host header of each request, None if it had none
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
                    lines = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
                    hosts = [v.strip() for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "host"]
                    self.requests.append(lines[0])
                    self.hosts.append(hosts[0] if len(hosts) == 1 else None)
                    status = self.status
                    if self.want_host is not None and self.hosts[-1] != self.want_host:
                        status = 404
                    c.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
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

    def test_checker_with_fewer_descriptors_than_hosts_checks_them_all(self):
        """The checker has one descriptor free for three hosts: the checks
        take turns on it, and two stopped hosts are taken down. Every host fell
        due at the same moment, the first took the descriptor, the others found
        none and were put off to the next interval, where the same happened:
        the hosts after the first were never checked again (up for ever)."""
        a, b, c = self.backend("a"), self.backend("b"), self.backend("c")
        gw = self.gateway(self.make_config([pool("primary", [host("a", a), host("b", b), host("c", c)])],
                                           upstream_opts=FAST))
        for h in ("a", "b", "c"):
            gwtest.wait_until(lambda: host_health(gw, h)["health"] == "up", T(5), msg=f"{h} checked up")
        (checker,) = [p for p in gwtest.children(gw.pid) if open(f"/proc/{p}/comm").read().strip() == "gwd-checker"]
        fds = {int(fd) for fd in os.listdir(f"/proc/{checker}/fd")}
        lowest_free = min(set(range(max(fds) + 2)) - fds)
        soft, hard = resource.prlimit(checker, resource.RLIMIT_NOFILE)
        resource.prlimit(checker, resource.RLIMIT_NOFILE, (lowest_free + 1, hard))
        self.addCleanup(lambda: os.path.exists(f"/proc/{checker}") and
                        resource.prlimit(checker, resource.RLIMIT_NOFILE, (soft, hard)))
        b.stop()
        c.stop()
        for h in ("b", "c"):
            gwtest.wait_until(lambda: host_health(gw, h)["health"] == "down", T(5), msg=f"{h} down after fall")
        self.assertEqual(host_health(gw, "a")["health"], "up")
        self.assertEqual(gwtest.names(gw.port, 4), ["a"] * 4)

    def test_checks_run_at_their_interval(self):
        """A check runs every interval_ms, not at the checker's next 20 ms
        tick after it: an interval of 10 ms ran every 20 (50 ms every 60)."""
        lsock = socket.socket()
        lsock.bind((gwtest.LOOPBACK, 0))
        lsock.listen(512)
        self.addCleanup(lsock.close)
        accepted = []

        def serve():
            while True:
                try:
                    c, _ = lsock.accept()
                except OSError:
                    return
                accepted.append(time.monotonic())
                c.close()
        threading.Thread(target=serve, daemon=True).start()
        opts = {"health": {"type": "tcp", "interval_ms": 10, "timeout_ms": 200, "rise": 1, "fall": 1}}
        gw = self.gateway(self.make_config([pool("p", [host("a", f"{gwtest.LOOPBACK}:{lsock.getsockname()[1]}")])],
                                           upstream_opts=opts))
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "up", T(5), msg="a checked up")
        time.sleep(0.5)
        start = len(accepted)
        time.sleep(2)
        seen = accepted[start:]
        # Gaps under 16 ms, which a 20 ms tick never gives. A busy machine
        # only makes gaps longer, so a few dozen of the ~200 are enough: no
        # count of checks per second is asserted.
        short = sum(1 for x, y in zip(seen, seen[1:]) if y - x < 0.016)
        self.assertGreaterEqual(short, 20, f"{short} of {len(seen)} checks in 2 s came under 16 ms after the one "
                                "before, at an interval of 10 ms")

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

    def test_checks_of_an_admin_down_host_run_no_hook_and_say_it_stays_out(self):
        """A host downed by hand that fails its checks, then passes them again:
        its verdict changes no routing, so the checker's events are
        health_down / health_up saying it stays out, and no host_up hook runs
        (the checker used to emit host_up, and the hook told a script the
        host was back while it was still out)."""
        a, b = self.backend("a"), self.backend("b")
        out = os.path.join(self.tmp, "hooks.log")
        hooks = {"host_down": f'echo "$GW_EVENT $GW_HOST" >> {out}', "host_up": f'echo "$GW_EVENT $GW_HOST" >> {out}'}
        gw = self.gateway(self.make_config([pool("primary", [host("a", a), host("b", b)])], upstream_opts=FAST,
                                           hooks=hooks))
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "up", T(5), msg="a checked up")
        rc, _, err = gw.gwctl("down", "host", "app/primary", "a")
        self.assertEqual(rc, 0, err)
        port = a.port
        a.stop()
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "down", T(5), msg="a's checks fail")
        self.backend("a", port=port)
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "up", T(5), msg="a's checks pass again")
        events = gw.event_texts()
        after = events[next(i for i, e in enumerate(events) if e.startswith("host_down app/primary/a ")) + 1:]
        mine = [e for e in after if " app/primary/a " in e]
        self.assertEqual(len(mine), 2, events)
        self.assertTrue(mine[0].startswith("health_down app/primary/a ") and "admin down" in mine[0], mine)
        self.assertTrue(mine[1].startswith("health_up app/primary/a ") and "admin down" in mine[1], mine)
        time.sleep(0.5)  # a hook would have run by now

        def lines():
            with open(out) as f:
                return f.read().splitlines()
        gwtest.wait_until(lambda: os.path.exists(out) and "host_down a" in lines(), T(5), msg="the gwctl down hook")
        # the gwctl down's hook only: the first check's verdict moved no traffic (health_up)
        self.assertEqual(sorted(l for l in lines() if l.endswith(" a")), ["host_down a"])
        self.assertEqual(set(gwtest.names(gw.port, 6)), {"b"})

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

    def test_http_check_sends_health_host(self):
        """A virtual-hosted backend answers 200 only to its own name, 404 to
        the default Host (the host's address): the check passes with
        health.host set to that name, and fails without it."""
        s = StatusServer(want_host="api.example.com:8443")
        self.addCleanup(s.stop)
        b = self.backend("b")
        check = {"type": "http", "path": "/healthz", "interval_ms": 100, "timeout_ms": 300, "rise": 1, "fall": 1}
        gw = self.gateway(self.make_config([pool("p", [host("s", s.address), host("b", b)])],
                                           upstream_opts={"health": dict(check, host="api.example.com:8443")}))
        gwtest.wait_until(lambda: host_health(gw, "s")["health"] == "up", T(5), msg="the check with the right Host passes")
        self.assertTrue(s.hosts and set(s.hosts) == {"api.example.com:8443"}, s.hosts)
        gw.stop()

        s2 = StatusServer(want_host="api.example.com:8443")
        self.addCleanup(s2.stop)
        gw = self.gateway(self.make_config([pool("p", [host("s", s2.address), host("b", b)])],
                                           upstream_opts={"health": check}))
        gwtest.wait_until(lambda: host_health(gw, "s")["health"] == "down", T(5), msg="the default Host gets a 404")
        self.assertEqual(set(s2.hosts), {s2.address}, "the default Host is the host's address")
        self.assertTrue(any("last: HTTP status 404" in e for e in gw.events()), gw.events())

    def test_reload_changes_health_host(self):
        """health.host set, changed and removed by SIGHUP reloads: each takes
        effect on the next checks (the checker reads the host from the table)."""
        s = StatusServer(want_host="api.example.com")
        self.addCleanup(s.stop)
        b = self.backend("b")
        check = {"type": "http", "interval_ms": 100, "timeout_ms": 300, "rise": 1, "fall": 1}
        cfg = self.make_config([pool("p", [host("s", s.address), host("b", b)])],
                               upstream_opts={"health": dict(check, host="other.example.com")})
        gw = self.gateway(cfg)
        gwtest.wait_until(lambda: host_health(gw, "s")["health"] == "down", T(5), msg="the wrong Host gets a 404")
        cfg["upstreams"][0]["health"]["host"] = "api.example.com"
        self.reload(gw, cfg)
        gwtest.wait_until(lambda: host_health(gw, "s")["health"] == "up", T(5), msg="the reloaded Host passes")
        self.assertEqual(s.hosts[-1], "api.example.com")
        del cfg["upstreams"][0]["health"]["host"]
        self.reload(gw, cfg)
        gwtest.wait_until(lambda: host_health(gw, "s")["health"] == "down", T(5), msg="the default Host again")
        self.assertEqual(s.hosts[-1], s.address)

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

    def test_a_first_verdict_that_moves_no_traffic_runs_no_hook(self):
        """Every start ran every healthy host's host_up hook: the first check
        of a host that health.unknown "usable" let take traffic already said
        host_up. A first verdict that changes nothing now says health_up (or
        health_down where "unusable" kept the host out), and no hook runs;
        one that moves traffic still says host_up / host_down."""
        a, b = self.backend("a"), self.backend("b")
        dead = f"127.0.0.1:{gwtest.free_port()}"
        out = os.path.join(self.tmp, "hooks.log")
        hooks = {"host_down": f'echo "$GW_EVENT $GW_HOST" >> {out}', "host_up": f'echo "$GW_EVENT $GW_HOST" >> {out}'}

        def lines():
            try:
                with open(out) as f:
                    return sorted(f.read().splitlines())
            except FileNotFoundError:
                return []
        for unknown, hooked in (("usable", ["host_down d"]), ("unusable", ["host_up a", "host_up b"])):
            with self.subTest(unknown=unknown):
                if os.path.exists(out):
                    os.unlink(out)
                gw = self.gateway(self.make_config(
                    [pool("primary", [host("a", a), host("b", b), host("d", dead)])],
                    upstream_opts={"health": dict(FAST["health"], unknown=unknown)}, hooks=hooks))
                for h in ("a", "b", "d"):
                    gwtest.wait_until(lambda: host_health(gw, h)["health"] != "unknown", T(5), msg=f"{h} checked")
                gwtest.wait_until(lambda: lines() == hooked, T(5), msg=f"the hooks with {unknown}")
                texts = [e for e in gw.event_texts() if " app/primary/" in e]
                if unknown == "usable":
                    self.assertEqual(sorted(t.split(" (")[0] for t in texts), [
                        f"health_up app/primary/a {a.address}", f"health_up app/primary/b {b.address}",
                        f"host_down app/primary/d {dead}"])
                    self.assertIn("(active: 1 passed check(s); the first verdict, and the host took traffic "
                                  "until then: health.unknown is usable)", texts[0] + texts[1])
                else:
                    self.assertEqual(sorted(t.split(" (")[0] for t in texts), [
                        f"health_down app/primary/d {dead}", f"host_up app/primary/a {a.address}",
                        f"host_up app/primary/b {b.address}"])
                    self.assertIn("the first verdict, and the host took none until then: health.unknown is unusable)",
                                  " ".join(texts))
                time.sleep(0.3)  # a late hook would show here
                self.assertEqual(lines(), hooked)
                gw.stop()

    def test_hooks_past_the_32_running_wait_their_turn(self):
        """40 hosts downed by hand while each host_down hook waits: the hooks
        past the 32 that may run at once were skipped (8 of 40 lost). They
        now wait for a running one to end, in order, and all 40 run."""
        a = self.backend("a")
        out = os.path.join(self.tmp, "hooks.log")
        go = os.path.join(self.tmp, "go")
        # Each hook waits for `go` (not a fixed sleep: under ASan 40 gwctl runs
        # take longer than a sleep, and the first hooks ended before the 33rd).
        hooks = {"host_down": f'while [ ! -e {go} ]; do sleep 0.05; done; echo "$GW_HOST" >> {out}'}
        hosts = [host("a", a)] + [host(f"h{i}", f"127.0.0.1:{gwtest.free_port()}") for i in range(40)]
        gw = self.gateway(self.make_config([pool("primary", hosts)], hooks=hooks))
        for i in range(40):
            rc, _, err = gw.gwctl("down", "host", "app/primary", f"h{i}")
            self.assertEqual(rc, 0, err)
        gwtest.wait_until(lambda: "32 hooks are running: the next ones wait for them to end" in gw.log_text(), T(10),
                          msg="the 33rd hook to wait")
        with open(go, "w"):
            pass

        def lines():
            try:
                with open(out) as f:
                    return f.read().splitlines()
            except FileNotFoundError:
                return []
        gwtest.wait_until(lambda: len(lines()) >= 40, T(15), msg="40 hook runs")
        time.sleep(0.5)
        self.assertEqual(sorted(lines()), sorted(f"h{i}" for i in range(40)))
        log = gw.log_text()
        self.assertIn("32 hooks are running: the next ones wait for them to end", log)
        self.assertNotIn("not run", log)

    def test_a_stop_waits_for_running_hooks_then_ends_them(self):
        """A hook still running when gwd stopped was neither waited for nor
        ended: it outlived gwd. A graceful stop waits for hooks up to
        shutdown_timeout_ms (the host_up hook finishes), then sends the
        process group of each one still running SIGTERM, and SIGKILL 2 s later
        (the host_down hook ignores SIGTERM, as does the sleep it started),
        logs each, and exits when they are gone."""
        a = self.backend("a")
        pids, out = os.path.join(self.tmp, "hook.pids"), os.path.join(self.tmp, "hooks.log")
        hooks = {"host_down": f"trap '' TERM; sleep 60 & echo $$ $! > {pids}; wait",
                 "host_up": f"sleep 0.3; echo finished >> {out}"}
        gw = self.gateway(self.make_config([pool("primary", [host("a", a)])], hooks=hooks, shutdown_timeout_ms=3000))
        for verb in ("down", "up"):
            rc, _, err = gw.gwctl(verb, "host", "app/primary", "a")
            self.assertEqual(rc, 0, err)

        def hook_pids():
            try:
                with open(pids) as f:
                    return [int(p) for p in f.read().split()]
            except (FileNotFoundError, ValueError):
                return []
        stubborn = gwtest.wait_until(lambda: len(hook_pids()) == 2 and hook_pids(), T(10), msg="the host_down hook")
        self.assertEqual(gw.stop(), 0)
        self.assertEqual(gwtest.wait_pids_gone(set(stubborn), T(5)), set(), "the hook outlived gwd")
        with open(out) as f:
            self.assertEqual(f.read(), "finished\n")   # waited for
        log = gw.log_text()
        self.assertIn(f"hook pid {stubborn[0]} still running at the stop; sending it SIGTERM", log)
        self.assertIn(f"hook pid {stubborn[0]} still running 2000 ms after SIGTERM; killing it", log)
        self.assertEqual(log.count("still running at the stop"), 1, log)

    def test_a_fast_stop_ends_running_hooks_at_once(self):
        a = self.backend("a")
        pids = os.path.join(self.tmp, "hook.pids")
        hooks = {"host_down": f"sleep 60 & echo $$ $! > {pids}; wait"}
        gw = self.gateway(self.make_config([pool("primary", [host("a", a)])], hooks=hooks))
        rc, _, err = gw.gwctl("down", "host", "app/primary", "a")
        self.assertEqual(rc, 0, err)

        def hook_pids():
            try:
                with open(pids) as f:
                    return [int(p) for p in f.read().split()]
            except (FileNotFoundError, ValueError):
                return []
        hook = gwtest.wait_until(lambda: len(hook_pids()) == 2 and hook_pids(), T(10), msg="the host_down hook")
        self.assertEqual(gw.stop(signal.SIGINT), 0)
        self.assertEqual(gwtest.wait_pids_gone(set(hook), T(5)), set(), "the hook outlived gwd")
        log = gw.log_text()
        self.assertIn(f"hook pid {hook[0]} still running at the stop; sending it SIGTERM", log)
        self.assertNotIn("after SIGTERM; killing it", log)

    def test_a_stop_ends_what_an_exited_hook_left_running(self):
        """A hook that started a background process (`cmd &`) and exited: gwd
        tracked only the hook's own process, so that one outlived gwd. The stop
        now ends what is left in the hook's process group too (SIGTERM; gwd
        does not wait shutdown_timeout_ms for it, as it does for a hook still
        running), and gwd exits once it is gone."""
        a = self.backend("a")
        pids = os.path.join(self.tmp, "left.pid")
        hooks = {"host_down": f"sleep 300 & echo $$ $! > {pids}.tmp; mv {pids}.tmp {pids}"}
        gw = self.gateway(self.make_config([pool("primary", [host("a", a)])], hooks=hooks,
                                           shutdown_timeout_ms=20000))
        rc, _, err = gw.gwctl("down", "host", "app/primary", "a")
        self.assertEqual(rc, 0, err)

        def left_pid():
            try:
                with open(pids) as f:
                    return [int(p) for p in f.read().split()]
            except (FileNotFoundError, ValueError):
                return None
        hook, left = gwtest.wait_until(left_pid, T(10), msg="the host_down hook")

        def kill_left():
            try:
                with open(f"/proc/{left}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[:2] == [b"sleep", b"300"]:
                        os.kill(left, signal.SIGKILL)
            except OSError:
                pass
        self.addCleanup(kill_left)
        time.sleep(0.3)   # the hook itself has exited (its sleep runs on)
        self.assertTrue(gwtest.pid_alive(left))
        self.assertIn("sleep", open(f"/proc/{left}/cmdline").read())
        t0 = time.monotonic()
        self.assertEqual(gw.stop(), 0)
        took = time.monotonic() - t0
        self.assertEqual(gwtest.wait_pids_gone({left}, T(5)), set(), "what the hook left outlived gwd")
        self.assertLess(took, 5, "the stop waited for what the hook left running")
        self.assertIn(f"what hook pid {hook} left is still running at the stop; sending it SIGTERM", gw.log_text())

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

    def test_answer_to_a_request_sent_before_the_host_went_down_does_not_bring_it_back(self):
        """Host a takes a request, then stops accepting (its listening socket
        closed, as a draining backend does) and answers that request 1.5 s
        later. A second request's connect is refused: a is down (max_fails 1,
        fail_timeout 60 s) and the request goes to the backup pool. The late
        answer to the first request used to bring a back at once ("host_up ...
        a connection succeeded"), while it still refused every new one."""
        lsock = socket.socket()
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((gwtest.LOOPBACK, 0))
        lsock.listen(8)
        a_addr = f"{gwtest.LOOPBACK}:{lsock.getsockname()[1]}"
        took = threading.Event()

        def serve_one():
            c, _ = lsock.accept()
            with c:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += c.recv(4096)
                lsock.close()  # new connections are refused from now on
                took.set()
                time.sleep(1.5)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\na")
        threading.Thread(target=serve_one, daemon=True).start()
        backup = StatusServer()
        self.addCleanup(backup.stop)
        web = gwtest.free_port()
        cfg = self.make_config(
            [pool("p", [host("a", a_addr)]), pool("dr", [host("b", backup.address)], priority=1)],
            upstream_opts={"max_fails": 1, "fail_timeout_ms": 60000,
                           "keepalive": {"max_idle": 0, "idle_timeout_ms": 1000, "max_requests": 1}},
            listeners=[{"name": "web", "listen": f"{gwtest.LOOPBACK}:{web}", "protocol": "http",
                        "upstream": "app"}])
        gw = self.gateway(cfg)
        first = {}
        t = threading.Thread(target=lambda: first.setdefault("status", _status(web)), daemon=True)
        t.start()
        self.assertTrue(took.wait(T(5)), "a never took the first request")
        self.assertEqual(_status(web), 200)  # refused by a, answered by b (the backup pool)
        self.assertEqual(host_health(gw, "a")["health"], "down")
        t.join(T(10))
        self.assertEqual(first.get("status"), 200, "the first request's answer")
        time.sleep(0.2)
        self.assertEqual(host_health(gw, "a")["health"], "down",
                         "the answer to a request sent before a went down brought it back")
        self.assertFalse([e for e in gw.event_texts() if e.startswith("host_up ")], gw.event_texts())
        self.assertEqual(_status(web), 200)
        self.assertEqual(len(backup.requests), 2)

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


    def reload(self, gw, config):
        """Writes `config` and SIGHUPs the master; returns once the reload is done."""
        gwtest.write_json(gw.conf_path, config)
        n = len(gw.log_text())
        gw.send_signal(signal.SIGHUP)
        gwtest.wait_until(lambda: "reloaded:" in gw.log_text()[n:], T(10), msg="the reload")

    def test_verdict_of_checks_turned_off_closes_no_connection(self):
        """A host the http check took down (a plain TCP backend fails it), then
        a reload without the health block: the host takes traffic again, and
        with on_host_remove "close" its connections stay open. The workers
        read the old verdict, left in shm, as "failed by active checks" and
        closed every connection to it within a second."""
        a = self.backend("a")
        check = {"type": "http", "interval_ms": 100, "timeout_ms": 300, "rise": 1, "fall": 1}
        cfg = self.make_config([pool("primary", [host("a", a)])], upstream_opts={"max_fails": 0, "health": check},
                               listeners=[gwtest.tcp_listener("l4", "app", on_host_remove="close")])
        gw = self.gateway(cfg)
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "down", T(5), msg="a fails the http check")
        del cfg["upstreams"][0]["health"]
        self.reload(gw, cfg)
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "up", T(5), msg="a usable without checks")
        # It takes traffic again: a host_up (and its hook), once.
        ups = [e for e in gw.event_texts() if e.startswith("host_up app/primary/a ")]
        self.assertEqual(ups, [f"host_up app/primary/a {a.address} (active checks turned off by the config)"])
        with gwtest.connect(gw.port, timeout=T(5)) as c:
            self.assertEqual(gwtest.recv_line(c), "a")
            time.sleep(2.5)  # two of the workers' rounds that close connections of hosts checked down
            c.sendall(b"ping\n")
            self.assertEqual(gwtest.recv_line(c), "ping", "the connection to a was closed")

    def test_passive_health_turned_off_or_an_admin_change_runs_each_hook_once(self):
        """a refuses a connection: passive health takes it out (host_down and
        its hook). gwctl down and up in between move no traffic: admin_down /
        admin_up, no hook (they were a second host_down and an early host_up).
        A reload to max_fails 0 sends traffic to it again: host_up and its
        hook, where it used to stay marked down in silence."""
        a, b = self.backend("a"), self.backend("b")
        out = os.path.join(self.tmp, "hooks.log")
        hooks = {"host_down": f'echo "$GW_EVENT $GW_HOST" >> {out}', "host_up": f'echo "$GW_EVENT $GW_HOST" >> {out}'}
        cfg = self.make_config([pool("primary", [host("a", a), host("b", b)])],
                               upstream_opts={"max_fails": 1, "fail_timeout_ms": 60000}, hooks=hooks)
        gw = self.gateway(cfg)

        def lines():
            try:
                with open(out) as f:
                    return [l for l in f.read().splitlines() if l.endswith(" a")]
            except FileNotFoundError:
                return []
        port = a.port
        a.stop()
        gwtest.wait_until(lambda: (gwtest.names(gw.port, 2), host_health(gw, "a")["health"] == "down")[1], T(5),
                          msg="a fails a connection")
        gwtest.wait_until(lambda: lines() == ["host_down a"], T(5), msg="the host_down hook")
        for verb in ("down", "up"):
            rc, _, err = gw.gwctl(verb, "host", "app/primary", "a")
            self.assertEqual(rc, 0, err)
        mine = [e for e in gw.event_texts() if "(admin: gwctl" in e]
        self.assertEqual(mine, [
            f"admin_down app/primary/a {a.address} (admin: gwctl down; the host was already out: passive health, "
            "until a connection's trial passes)",
            f"admin_up app/primary/a {a.address} (admin: gwctl up; the host stays out: passive health, until a "
            "connection's trial passes)"])
        self.backend("a", port=port)
        cfg["upstreams"][0]["max_fails"] = 0
        self.reload(gw, cfg)
        gwtest.wait_until(lambda: lines() == ["host_down a", "host_up a"], T(5), msg="the host_up hook")
        ups = [e for e in gw.event_texts() if e.startswith("host_up app/primary/a ")]
        self.assertEqual(ups, [f"host_up app/primary/a {a.address} (passive health turned off by the config)"])
        self.assertEqual(host_health(gw, "a")["health"], "up")
        gwtest.wait_until(lambda: "a" in gwtest.names(gw.port, 4), T(5), msg="a takes traffic")
        time.sleep(0.5)  # a second hook would have run by now
        self.assertEqual(lines(), ["host_down a", "host_up a"])

    def test_a_host_passive_health_took_out_is_down_until_its_trial_passes(self):
        """Past its fail_timeout_ms a host out on passive health may take one
        trial connection, but it is still down (host_down was said, host_up
        comes only from the trial): status, hosts_usable and the metrics say
        so until a trial passes. They said "up", with no host_up, for a host
        still dead and with no traffic to try it."""
        a, b = self.backend("a"), self.backend("b")
        cfg = self.make_config([pool("primary", [host("a", a), host("b", b)])], workers=2,
                               upstream_opts={"max_fails": 1, "fail_timeout_ms": 500})
        gw = self.gateway(cfg)
        port = a.port
        a.stop()
        gwtest.wait_until(lambda: (gwtest.names(gw.port, 2), host_health(gw, "a")["health"] == "down")[1], T(5),
                          msg="a fails a connection")
        time.sleep(0.8)  # its fail_timeout is over; no connection has tried it
        self.assertEqual(host_health(gw, "a")["health"], "down")
        self.assertEqual(gw.status()["upstreams"][0]["hosts_usable"], 1)
        self.assertFalse([e for e in gw.event_texts() if e.startswith("host_up app/primary/a ")])
        # The trial: refused again, still down; then passing, up.
        gwtest.names(gw.port, 2)
        self.assertEqual(host_health(gw, "a")["health"], "down")
        self.backend("a", port=port)
        time.sleep(0.8)
        gwtest.wait_until(lambda: (gwtest.names(gw.port, 2), host_health(gw, "a")["health"] == "up")[1], T(5),
                          msg="a's trial passes")
        self.assertEqual(gw.status()["upstreams"][0]["hosts_usable"], 2)
        self.assertTrue([e for e in gw.event_texts() if e.startswith("host_up app/primary/a ")])

    def test_tcp_check_of_a_host_that_resets_before_the_connect_is_seen_passes(self):
        """A tcp check's connect completes, and the host resets the connection
        (SO_LINGER 0) before the checker has looked at it: SO_ERROR then says
        ECONNRESET. The handshake was done: a plain tcp check passed (it used
        to be a failed check, and with fall 1 the host went down).

        Made deterministic with the checker stopped (see gwtest.ResetHost)."""
        rst = gwtest.ResetHost()
        self.addCleanup(rst.close)
        gw = self.gateway(self.make_config(
            [pool("primary", [host("a", rst.address)])],
            upstream_opts={"max_fails": 0, "health": {"type": "tcp", "interval_ms": 60000, "timeout_ms": 20000,
                                                       "rise": 1, "fall": 1}}))
        (checker,) = [p for p in gwtest.children(gw.pid) if open(f"/proc/{p}/comm").read().strip() == "gwd-checker"]
        ino = rst.reset_next(checker)
        # The probe is judged and its socket closed (no longer the checker's).
        gwtest.wait_until(lambda: ino not in gwtest.socket_inodes(checker), T(5), msg="the check is judged")
        self.assertEqual(host_health(gw, "a")["health"], "up")
        self.assertFalse([e for e in gw.events() if "host_down" in e], "the check failed")

    def test_checks_turned_on_again_start_from_unknown(self):
        """Checks took host a down; a reload turned them off (a was repaired
        meanwhile); a reload turns them on again. The first check decides, as
        for any host not checked yet: a is up at once. The verdict of the
        first checks, left in shm, made a need `rise` passes (here one
        interval of 60 s) before it took traffic again."""
        a = self.backend("a")
        port = a.port
        cfg = self.make_config([pool("primary", [host("a", a)])],
                               upstream_opts={"max_fails": 0, "health": FAST["health"]})
        gw = self.gateway(cfg)
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "up", T(5), msg="a checked up")
        a.stop()
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "down", T(5), msg="a down after fall")
        health = cfg["upstreams"][0].pop("health")
        self.reload(gw, cfg)
        self.backend("a", port=port)
        cfg["upstreams"][0]["health"] = dict(health, interval_ms=60000)
        self.reload(gw, cfg)
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "up", T(5), msg="a up after its first check")
        self.assertEqual(gwtest.names(gw.port, 3), ["a"] * 3)


    def test_http_check_of_a_host_that_does_not_speak_http_says_so(self):
        """An http check answered by something that is not HTTP (here a TCP
        echo server that greets with its name) fails, and the event says the
        answer was not HTTP. It said "last: HTTP status TTP" (three bytes of
        the echoed request), and a status line such as "HTTP/1.1 2xx" with no
        number passed as a 2xx."""
        a = self.backend("a")
        lsock = socket.socket()
        lsock.bind((gwtest.LOOPBACK, 0))
        lsock.listen(64)
        self.addCleanup(lsock.close)

        def serve():  # answers "HTTP/1.1 2xx": no status code
            while True:
                try:
                    c, _ = lsock.accept()
                except OSError:
                    return
                with c:
                    try:
                        c.recv(4096)
                        c.sendall(b"HTTP/1.1 2xx OK\r\nContent-Length: 0\r\n\r\n")
                    except OSError:
                        pass
        threading.Thread(target=serve, daemon=True).start()
        opts = {"max_fails": 0, "health": {"type": "http", "interval_ms": 100, "timeout_ms": 300, "rise": 1,
                                           "fall": 1}}
        gw = self.gateway(self.make_config(
            [pool("p", [host("a", a), host("x", f"{gwtest.LOOPBACK}:{lsock.getsockname()[1]}")])],
            upstream_opts=opts))
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "down", T(5), msg="a fails the http check")
        gwtest.wait_until(lambda: host_health(gw, "x")["health"] == "down", T(5), msg="x fails the http check")
        texts = gw.event_texts()
        down_a = [e for e in texts if e.startswith("host_down app/p/a ")]
        self.assertTrue(down_a and down_a[0].endswith("last: not an HTTP response)"), texts)
        down_x = [e for e in texts if e.startswith("host_down app/p/x ")]
        self.assertTrue(down_x and down_x[0].endswith("last: not an HTTP response)"), texts)

    def test_http_check_answered_short_then_closed_says_so(self):
        """An http check answered by less than a status line ("HTTP/1.1 2")
        and a clean close, or by a close with no answer at all, fails, and the
        event says what came: "not an HTTP response", "closed without an
        answer". Both said "last: Connection reset by peer", though no host
        reset anything."""
        def listener(reply):
            lsock = socket.socket()
            lsock.bind((gwtest.LOOPBACK, 0))
            lsock.listen(64)
            self.addCleanup(lsock.close)

            def serve():
                while True:
                    try:
                        c, _ = lsock.accept()
                    except OSError:
                        return
                    with c:
                        try:
                            c.recv(4096)
                            c.sendall(reply)
                            c.shutdown(socket.SHUT_WR)
                            c.recv(4096)  # the checker closes first: no reset from here
                        except OSError:
                            pass
            threading.Thread(target=serve, daemon=True).start()
            return f"{gwtest.LOOPBACK}:{lsock.getsockname()[1]}"

        opts = {"max_fails": 0, "health": {"type": "http", "interval_ms": 100, "timeout_ms": 300, "rise": 1,
                                           "fall": 1}}
        gw = self.gateway(self.make_config(
            [pool("p", [host("s", listener(b"HTTP/1.1 2")), host("e", listener(b""))])], upstream_opts=opts))
        gwtest.wait_until(lambda: host_health(gw, "s")["health"] == "down", T(5), msg="s fails the http check")
        gwtest.wait_until(lambda: host_health(gw, "e")["health"] == "down", T(5), msg="e fails the http check")
        texts = gw.event_texts()
        down_s = [e for e in texts if e.startswith("host_down app/p/s ")]
        self.assertTrue(down_s and down_s[0].endswith("last: not an HTTP response)"), texts)
        down_e = [e for e in texts if e.startswith("host_down app/p/e ")]
        self.assertTrue(down_e and down_e[0].endswith("last: closed without an answer)"), texts)

    def test_http_check_status_code_is_three_digits(self):
        """A status line whose status code has four digits ("HTTP/1.1 2000")
        is no HTTP response: the check fails and says so, as nginx's check
        module refuses it. The first three digits were judged ("200": a pass).
        A status line that ends right after its code (a close, or a CR) is
        fine."""
        def listener(reply):
            lsock = socket.socket()
            lsock.bind((gwtest.LOOPBACK, 0))
            lsock.listen(64)
            self.addCleanup(lsock.close)

            def serve():
                while True:
                    try:
                        c, _ = lsock.accept()
                    except OSError:
                        return
                    with c:
                        try:
                            c.recv(4096)
                            c.sendall(reply)
                            c.shutdown(socket.SHUT_WR)
                            c.recv(4096)
                        except OSError:
                            pass
            threading.Thread(target=serve, daemon=True).start()
            return f"{gwtest.LOOPBACK}:{lsock.getsockname()[1]}"

        opts = {"max_fails": 0, "health": {"type": "http", "interval_ms": 100, "timeout_ms": 300, "rise": 1,
                                           "fall": 1}}
        gw = self.gateway(self.make_config(
            [pool("p", [host("four", listener(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n")),
                        host("bare", listener(b"HTTP/1.0 200")),
                        host("crlf", listener(b"HTTP/1.1 204\r\n\r\n"))])], upstream_opts=opts))
        for h in ("four", "bare", "crlf"):
            gwtest.wait_until(lambda: host_health(gw, h)["health"] != "unknown", T(5), msg=f"{h} checked")
        time.sleep(0.5)  # a few more checks each
        self.assertEqual(host_health(gw, "four")["health"], "down")
        self.assertEqual(host_health(gw, "bare")["health"], "up")
        self.assertEqual(host_health(gw, "crlf")["health"], "up")
        texts = gw.event_texts()
        down = [e for e in texts if e.startswith("host_down app/p/four ")]
        self.assertTrue(down and down[0].endswith("last: not an HTTP response)"), texts)

    def test_checks_of_a_host_passive_health_holds_out_run_no_hook(self):
        """Host a dies: a connection finds it refusing first (passive health:
        host_down, hook), then its checks fail. It was out already: the
        checker says health_down, and no second host_down hook runs. Its
        checks pass again while passive health still holds it out (a long
        fail_timeout): health_up, no host_up hook yet. The checker said
        host_down and host_up, and each ran its hook, for no change of
        whether a takes traffic."""
        a, b = self.backend("a"), self.backend("b")
        out = os.path.join(self.tmp, "hooks.log")
        hooks = {"host_down": f'echo "$GW_EVENT $GW_HOST" >> {out}', "host_up": f'echo "$GW_EVENT $GW_HOST" >> {out}'}
        check = {"type": "tcp", "interval_ms": 300, "timeout_ms": 200, "rise": 2, "fall": 3}
        gw = self.gateway(self.make_config([pool("primary", [host("a", a), host("b", b)])], hooks=hooks,
                                           upstream_opts={"max_fails": 1, "fail_timeout_ms": 60000, "health": check}))
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "up", T(5), msg="a checked up")
        port = a.port
        a.stop()
        self.assertEqual(set(gwtest.names(gw.port, 4)), {"b"})  # a refused one: passive host_down

        def a_events():
            return [e for e in gw.event_texts() if " app/primary/a " in e]
        gwtest.wait_until(lambda: any("failed check(s)" in e for e in a_events()), T(5), msg="a checked down")
        texts = a_events()
        self.assertEqual([e.split(" ")[0] for e in texts], ["health_up", "host_down", "health_down"], texts)
        self.assertIn("(passive: ", texts[1])
        self.backend("a", port=port)
        gwtest.wait_until(lambda: len(a_events()) == 4, T(5), msg="a checked up again")
        texts = a_events()
        self.assertTrue(texts[3].startswith("health_up app/primary/a "), texts)

        def lines():
            try:
                with open(out) as f:
                    return f.read().splitlines()
            except FileNotFoundError:
                return []
        gwtest.wait_until(lambda: len([x for x in lines() if x.endswith(" a")]) >= 1, T(5), msg="the hooks")
        time.sleep(0.5)
        self.assertEqual([x for x in lines() if x.endswith(" a")], ["host_down a"])

    def test_admin_changes_of_a_host_its_checks_hold_down_run_no_hook(self):
        """Host a fails its checks (host_down, hook). gwctl down, then gwctl up:
        a is out all along, so these are admin_down / admin_up events saying
        so, and no hook runs; a host_up hook runs once the checks pass again.
        gwctl up used to be a host_up event whose hook told a script that a
        was back while its checks still held it out (and gwctl down ran the
        host_down hook a second time)."""
        a, b = self.backend("a"), self.backend("b")
        out = os.path.join(self.tmp, "hooks.log")
        hooks = {"host_down": f'echo "$GW_EVENT $GW_HOST" >> {out}', "host_up": f'echo "$GW_EVENT $GW_HOST" >> {out}'}
        gw = self.gateway(self.make_config([pool("primary", [host("a", a), host("b", b)])],
                                           upstream_opts=dict(FAST, max_fails=0), hooks=hooks))

        def lines():
            try:
                with open(out) as f:
                    return [l for l in f.read().splitlines() if l.endswith(" a")]
            except FileNotFoundError:
                return []
        gwtest.wait_until(lambda: host_health(gw, "a")["health"] == "up", T(5), msg="a checked up")
        port = a.port
        a.stop()
        gwtest.wait_until(lambda: lines() == ["host_down a"], T(5), msg="a checked down")
        for verb in ("down", "up"):
            rc, _, err = gw.gwctl(verb, "host", "app/primary", "a")
            self.assertEqual(rc, 0, err)
        mine = [e for e in gw.event_texts() if "(admin: gwctl" in e]
        self.assertEqual(len(mine), 2, mine)
        self.assertTrue(mine[0].startswith(f"admin_down app/primary/a {a.address} (admin: gwctl down; the host was "
                                           "already out: its health check fails)"), mine)
        self.assertTrue(mine[1].startswith(f"admin_up app/primary/a {a.address} (admin: gwctl up; the host stays "
                                           "out: its health check fails)"), mine)
        time.sleep(0.5)  # a hook would have run by now
        self.assertEqual(lines(), ["host_down a"])
        self.assertEqual(set(gwtest.names(gw.port, 4)), {"b"})
        self.backend("a", port=port)
        gwtest.wait_until(lambda: lines() == ["host_down a", "host_up a"], T(5),
                          msg="the host_up hook once the checks pass")

    def test_hooks_run_with_default_signal_dispositions(self):
        """The master ignores SIGPIPE (a write to a closed socket must not kill
        it); a hook it runs gets SIGPIPE back to the default, as a shell
        started by hand has it, so that `producer | head -1` ends the producer.
        The hook inherited "ignored" through exec (and a shell cannot trap a
        signal ignored at its start)."""
        a, b = self.backend("a"), self.backend("b")
        out = os.path.join(self.tmp, "sigign")
        gw = self.gateway(self.make_config([pool("primary", [host("a", a), host("b", b)])],
                                           hooks={"host_down": f"grep SigIgn /proc/self/status > {out}.tmp && "
                                                               f"mv {out}.tmp {out}"}))
        rc, _, err = gw.gwctl("down", "host", "app/primary", "a")
        self.assertEqual(rc, 0, err)
        gwtest.wait_until(lambda: os.path.exists(out), T(5), msg="the hook ran")
        with open(out) as f:
            mask = int(f.read().split()[1], 16)
        self.assertFalse(mask & (1 << (signal.SIGPIPE - 1)), f"SIGPIPE ignored in the hook (SigIgn {mask:x})")

def _status(port):
    with socket.create_connection((gwtest.LOOPBACK, port), timeout=T(10)) as c:
        c.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := c.recv(4096):
            data += chunk
    return int(data.split(b" ", 2)[1])


if __name__ == "__main__":
    gwtest.main()
