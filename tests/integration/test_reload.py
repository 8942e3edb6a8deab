#!/usr/bin/python3
"""SIGHUP reload: a new generation of workers on the same listening sockets,
the old one drains; invalid configs are refused; gwctl changes survive.
SIGUSR2 binary upgrade: a new master inherits the sockets, the old one drains."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
import httpbackend as hb  # noqa: E402
from gwtest import GwTestCase, T, host, pool, upstream, tcp_listener, free_port, wait_until, write_json  # noqa: E402

LO = gwtest.LOOPBACK
RELOADS = 20
WRK = "/usr/bin/wrk"


def read_text(path):
    """The file's text, or "" while it does not exist."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


class KeepAliveClient:
    """Threads that send HTTP/1.1 requests over keep-alive connections, as a
    careful client does: a request that fails before any byte of its response
    on a connection that already carried one (the server closed an idle
    connection) is sent again on a new connection (RFC 9112 9.3.1); every
    other failure counts."""

    def __init__(self, port, threads=2):
        self.port = port
        self.ok = 0
        self.reconnects = 0
        self.errors = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(T(15))

    def count(self):
        with self.lock:
            return self.ok

    def _run(self):
        sock, used = None, False
        while not self._stop.is_set():
            try:
                if sock is None:
                    sock, used = hb.connect(self.port, timeout=T(10)), False
                try:
                    sock.sendall(b"GET /ka HTTP/1.1\r\nHost: test\r\n\r\n")
                    resp = hb.read_response(sock)
                except (ConnectionResetError, BrokenPipeError):
                    if not used:
                        raise
                    resp = None
                if resp is None:
                    if not used:
                        raise AssertionError("EOF before a response on a new connection")
                    # closed while idle: retry on a new connection
                    sock.close()
                    sock = None
                    with self.lock:
                        self.reconnects += 1
                    continue
                if resp.status != 200:
                    raise AssertionError(f"status {resp.status}")
                used = True
                with self.lock:
                    self.ok += 1
                if (resp.header("connection") or "").lower() == "close":
                    sock.close()
                    sock = None
            except (OSError, AssertionError, hb.HttpError) as e:
                with self.lock:
                    self.errors.append(f"{time.monotonic():.3f} {e!r}")
                if sock is not None:
                    sock.close()
                sock = None
        if sock is not None:
            sock.close()


class ReloadTest(GwTestCase):
    needs = ("gwd", "gwctl", "gw-backend")

    def config(self, n, web=None, workers=2, **top):
        """tcp listener l4 -> upstream app (python name backend n); with `web`
        (a gw-backend in http mode) also http listener web -> upstream web."""
        cfg = self.make_config([pool("primary", [host("n", n)])], workers=workers, **top)
        if web is not None:
            cfg["upstreams"].append(upstream("web", [pool("primary", [host("w", web.address)])]))
            cfg["listeners"].append({"name": "web", "listen": f"{LO}:{free_port()}", "protocol": "http",
                                     "upstream": "web", "backlog": 1024})
        return cfg

    def rewrite(self, gw, cfg):
        gw.config = cfg
        if gwtest.ENGINE and "event_engine" not in cfg:
            cfg["event_engine"] = gwtest.ENGINE
        write_json(gw.conf_path, cfg)

    def reload(self, gw, expect_ok=True):
        """SIGHUP, then wait for the new generation and for the old one to exit."""
        old = set(gw.worker_pids())
        log_before = len(gw.log_text())
        gw.send_signal(signal.SIGHUP)
        if not expect_ok:
            wait_until(lambda: re.search(r"reload (failed|refused)", gw.log_text()[log_before:]), T(10),
                       msg="reload failed/refused in the log")
            return old
        wait_until(lambda: "reloaded:" in gw.log_text()[log_before:], T(10), msg="'reloaded:' in the log")
        want = gw.expected_workers()

        def settled():
            ws = gw.worker_pids()
            kids = gwtest.children(gw.pid)
            return len(ws) == want and not (set(ws) & old) and all(p in kids for p in ws)
        wait_until(settled, T(20), interval=0.05, msg="new workers only (old ones drained and exited)")
        new = set(gw.worker_pids())
        gw.remember(new)
        self.assertFalse(new & old)
        return old

    # ------------------------------------------------------------------

    def test_reloads_under_load_lose_nothing(self):
        """20 SIGHUP reloads while wrk (HTTP keep-alive), a keep-alive client and
        short TCP connections run: no failed request or connection."""
        if not os.access(WRK, os.X_OK):
            self.skipTest("wrk is not installed")
        n = self.backend("n", "name")
        web = self.external_backend("w", mode="http", threads=2)
        cfg = self.config(n, web)
        gw = self.gateway(cfg)
        web_port = gw.ports[1]
        self.assertEqual(hb.request(web_port, "GET", "/").status, 200)
        tcp = gwtest.LoadClient(gw.port, "n", threads=1).start()
        self.addCleanup(tcp.stop)
        ka = KeepAliveClient(web_port, threads=1).start()
        self.addCleanup(ka.stop)
        wrk = subprocess.Popen([WRK, "-t1", "-c8", "-d120s", "--timeout", "5s", f"http://{LO}:{web_port}/"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, preexec_fn=gwtest._child_preexec)
        self.addCleanup(lambda: wrk.poll() is None and wrk.kill())
        wait_until(lambda: tcp.count() >= 20 and ka.count() >= 20, T(10), msg="load running")
        for i in range(RELOADS):
            before = (tcp.count(), ka.count())
            # alternate a setting, so each reload really applies a new config
            cfg["upstreams"][0]["connect_timeout_ms"] = 2000 + (i % 2)
            self.rewrite(gw, cfg)
            self.reload(gw)
            wait_until(lambda: tcp.count() > before[0] and ka.count() > before[1], T(10),
                       msg=f"load going on after reload {i + 1}")
        time.sleep(0.3)
        wrk.send_signal(signal.SIGINT)
        out, _ = wrk.communicate(timeout=T(20))
        tcp.stop()
        ka.stop()
        m = re.search(r"(\d+) requests in", out)
        self.assertIsNotNone(m, out)
        requests = int(m.group(1))
        sys.stderr.write(f"[{RELOADS} reloads: wrk {requests} requests, keep-alive client {ka.ok} "
                         f"({ka.reconnects} idle closes retried), tcp {tcp.ok} connections] ")
        self.assertNotIn("Socket errors", out, f"wrk saw socket errors:\n{out}")
        self.assertNotIn("Non-2xx", out, f"wrk saw failed responses:\n{out}")
        self.assertGreater(requests, 1000, out)
        self.assertEqual(tcp.errors, [], "tcp connections failed across reloads")
        self.assertEqual(ka.errors, [], "keep-alive requests failed across reloads")
        self.assertEqual(len(re.findall(r"reloaded:", gw.log_text())), RELOADS)
        self.assertEqual(gw.stop(), 0)

    def test_invalid_config_keeps_the_old_one(self):
        n = self.backend("n", "name")
        cfg = self.config(n)
        gw = self.gateway(cfg)
        workers = sorted(gw.worker_pids())
        bad = json.loads(json.dumps(cfg))
        bad["workers"] = "many"
        bad["listeners"][0]["listen"] = "127.0.0.1:99999"
        write_json(gw.conf_path, bad)
        log_before = len(gw.log_text())
        self.reload(gw, expect_ok=False)
        log = gw.log_text()[log_before:]
        self.assertRegex(log, r"reload: \S+: workers: ")
        self.assertRegex(log, r"reload: \S+: listeners\[0\]\.listen: ")
        self.assertRegex(log, r"reload failed: 2 error\(s\) in \S+; the running configuration stays")
        self.assertEqual(sorted(gw.worker_pids()), workers, "workers changed on a failed reload")
        self.assertNames(gw.port, 6, {"n"})
        # the old config still applies in full, and a fixed file reloads
        self.rewrite(gw, cfg)
        self.reload(gw)
        self.assertNames(gw.port, 6, {"n"})
        self.assertEqual(gw.stop(), 0)

    def test_capacity_change_is_refused(self):
        n = self.backend("n", "name")
        cfg = self.config(n, workers=1)
        gw = self.gateway(cfg)
        workers = sorted(gw.worker_pids())
        for change, why in ((lambda c: c["shm"].update(max_hosts=512), r"shm capacities changed \(shm.max_hosts \d+ -> 512\)"),
                            (lambda c: c.update(workers=3), r"3 workers: the shm segment has worker rows for 2")):
            bad = json.loads(json.dumps(cfg))
            change(bad)
            write_json(gw.conf_path, bad)
            # gwd -t said a plain ok: a restart takes the config, and it now
            # says too that the running gwd's reload refuses it, and why
            r = gwtest.run_gwd_test(gw.conf_path)
            self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)
            self.assertRegex(r.stderr, rf'warning: the gwd running with shm "{gw.shm}" \(pid {gw.pid}\) refuses this '
                                       r"config on a reload \(SIGHUP\): .*" + why + r".*restart")
            log_before = len(gw.log_text())
            self.reload(gw, expect_ok=False)
            self.assertRegex(gw.log_text()[log_before:], r"reload refused: .*" + why + r".*restart")
            self.assertEqual(sorted(gw.worker_pids()), workers)
            self.assertNames(gw.port, 4, {"n"})
        self.assertEqual(gw.stop(), 0)

    def test_log_file_it_cannot_open_fails_the_reload(self):
        """A log_file that `gwd -t` refuses fails the reload too, as nginx's
        does: the old configuration stays, and the error is logged where the
        log goes (before, the reload went on and said so in one error line,
        leaving gwd on a config -t refuses)."""
        n = self.backend("n", "name")
        cfg = self.config(n)
        gw = self.gateway(cfg)
        workers = sorted(gw.worker_pids())
        bad = json.loads(json.dumps(cfg))
        bad["log_file"] = os.path.join(self.tmp, "missing-dir", "gw.log")
        bad["upstreams"][0]["connect_timeout_ms"] = 1234
        self.rewrite(gw, bad)
        r = gwtest.run_gwd_test(gw.conf_path)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("log_file: ", r.stderr)
        log_before = len(gw.log_text())
        self.reload(gw, expect_ok=False)
        log = gw.log_text()[log_before:]
        self.assertRegex(log, r"reload failed: log_file: cannot open log file \S+/missing-dir/gw\.log: No such file "
                              r"or directory; the running configuration stays")
        self.assertNotIn("reloaded:", log)
        self.assertEqual(sorted(gw.worker_pids()), workers, "workers changed on a failed reload")
        self.assertNotIn("config_reloaded", "\n".join(gw.event_texts()))
        self.assertNames(gw.port, 4, {"n"})
        # a log_file that can be opened reloads, and the log goes there
        good = json.loads(json.dumps(bad))
        good["log_file"] = os.path.join(self.tmp, "gw-new.log")
        self.rewrite(gw, good)
        gw.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded:" in read_text(good["log_file"]), T(10),
                   msg="'reloaded:' in the new log_file")
        self.assertEqual(gw.stop(), 0)

    def test_listener_added_and_removed_by_reload(self):
        n, m = self.backend("n", "name"), self.backend("m", "name")
        cfg = self.config(n)
        gw = self.gateway(cfg)
        old_port = gw.port
        added = json.loads(json.dumps(cfg))
        added["upstreams"].append(upstream("other", [pool("p", [host("m", m)])]))
        added["listeners"].append(tcp_listener("l4b", "other"))
        self.rewrite(gw, added)
        self.reload(gw)
        new_port = gw.ports[1]
        self.assertNames(new_port, 6, {"m"})
        self.assertNames(old_port, 6, {"n"})
        rc, out, err = gw.gwctl("check")
        self.assertEqual(rc, 0, err)
        self.assertIn("2 listener(s)", out)
        # and removed again: the port closes once the old workers are gone
        self.rewrite(gw, cfg)
        self.reload(gw)
        wait_until(lambda: not gwtest.port_listening(new_port), T(5), msg="removed listener closed")
        with self.assertRaises(ConnectionRefusedError):
            gwtest.connect(new_port, timeout=T(2)).close()
        self.assertNames(old_port, 6, {"n"})
        self.assertEqual(gw.stop(), 0)

    def test_backlog_of_a_kept_listener_follows_reload_and_upgrade(self):
        """A listener whose address stays keeps its sockets across a reload
        and a binary upgrade, and takes the new config's backlog (listen(2)
        on a listening socket sets it, as nginx and HAProxy do on a reload):
        it used to keep the backlog it was started with."""
        ss = shutil.which("ss")
        if not ss:
            self.skipTest("ss (iproute2) is not installed")
        n = self.backend("n", "name")
        cfg = self.config(n, workers=2)
        cfg["listeners"][0]["backlog"] = 100
        gw = self.gateway(cfg)

        def backlogs():
            # a listening socket's Send-Q is its backlog
            out = subprocess.run([ss, "-ltnH", f"sport = :{gw.port}"], capture_output=True, text=True,
                                 timeout=T(10)).stdout
            return sorted(int(line.split()[2]) for line in out.splitlines() if line.strip())
        self.assertEqual(backlogs(), [100, 100])
        cfg["listeners"][0]["backlog"] = 37
        self.rewrite(gw, cfg)
        self.reload(gw)
        self.assertEqual(backlogs(), [37, 37])
        self.assertNames(gw.port, 4, {"n"})
        cfg["listeners"][0]["backlog"] = 55
        self.rewrite(gw, cfg)
        old = gw.pid
        gw.send_signal(signal.SIGUSR2)
        self.assertEqual(gw.wait_exit(T(15)), 0, "the old master did not hand over and exit")
        new = gw.status()["master_pid"]
        self.assertNotEqual(new, old)
        gw.remember([new])
        gw.remember(gwtest.children(new))
        self.assertEqual(backlogs(), [55, 55])
        self.assertNames(gw.port, 4, {"n"})
        os.kill(new, signal.SIGTERM)
        self.assertEqual(gwtest.wait_pids_gone({new}, T(15)), set())

    def test_protocols_swapped_between_two_addresses_by_a_reload(self):
        """The tcp listener's address becomes http and the http one's tcp: the
        sockets stay (same addresses), a connection relayed before the reload
        goes on in its old worker, and new connections speak the new protocols."""
        web = self.external_backend("w", mode="http")
        n = self.backend("n", "name")
        cfg = self.config(n, web)
        gw = self.gateway(cfg)
        held = gwtest.connect(gw.port, timeout=T(5))
        self.addCleanup(held.close)
        held.sendall(b"hi\n")
        self.assertEqual(gwtest.recv_line(held), "n")
        self.assertEqual(gwtest.recv_line(held), "hi")
        swapped = json.loads(json.dumps(cfg))
        swapped["listeners"][0].update({"protocol": "http", "upstream": "web"})
        swapped["listeners"][1].update({"protocol": "tcp", "upstream": "app"})
        self.rewrite(gw, swapped)
        log_before = len(gw.log_text())
        gw.send_signal(signal.SIGHUP)
        # (until both old workers stop accepting, one could still take a new connection)
        wait_until(lambda: gw.log_text()[log_before:].count("SIGWINCH (reload): stop accepting") == 2, T(10),
                   msg="the old workers no longer accepting")
        held.sendall(b"again\n")
        self.assertEqual(gwtest.recv_line(held), "again")
        for _ in range(10):
            self.assertEqual(hb.request(gw.ports[0], "GET", "/").status, 200)
            self.assertEqual(gwtest.hello(gw.ports[1]), "n")
        held.close()
        self.assertEqual(gw.stop(), 0)

    def test_backlog_of_a_failed_upgrade_is_the_old_masters_again(self):
        """A new master takes the old one's sockets and gives them its
        config's backlog; stopped before the hand-over (a roll-back), the old
        master serves on with its own backlog again. (The old master is held
        with SIGSTOP until the new one has exited.)"""
        ss = shutil.which("ss")
        if not ss:
            self.skipTest("ss (iproute2) is not installed")
        n = self.backend("n", "name")
        cfg = self.config(n, workers=1)
        cfg["listeners"][0]["backlog"] = 100
        gw = self.gateway(cfg)

        def backlogs():
            out = subprocess.run([ss, "-ltnH", f"sport = :{gw.port}"], capture_output=True, text=True,
                                 timeout=T(10)).stdout
            return sorted(int(line.split()[2]) for line in out.splitlines() if line.strip())
        cfg["listeners"][0]["backlog"] = 55
        self.rewrite(gw, cfg)
        old = gw.pid
        before = len(gw.log_text())
        gw.send_signal(signal.SIGUSR2)
        started = wait_until(lambda: re.search(r"binary upgrade: started .* \(pid (\d+)\)", gw.log_text()[before:]),
                             T(5), msg="the new master started")
        new = int(started.group(1))
        gwtest.stop_old_master(self, gw, old)
        self.addCleanup(lambda: os.kill(old, signal.SIGCONT) if gwtest.pid_alive(old) else None)
        gw.remember([new])
        wait_until(lambda: f"master[{new}]: binary upgrade: serving" in gw.log_text(), T(10),
                   msg="the new master ready (its hand-over signal waits in the stopped old master)")
        if f"master[{old}]: binary upgrade: the new master (pid {new}) serves" in gw.log_text()[before:]:
            # The new master ran its workers and signalled before this test
            # stopped the old one (a loaded machine): the hand-over happened,
            # and the failed upgrade this test is about cannot.
            os.kill(old, signal.SIGCONT)
            self.skipTest("the old master took the hand-over before the test could stop it")
        self.assertEqual(backlogs(), [55])
        os.kill(new, signal.SIGTERM)
        wait_until(lambda: f"master[{new}]: stopped" in gw.log_text(), T(10), msg="the new master stopped")
        wait_until(lambda: gwtest.proc_state(new) in ("Z", None), T(10), msg="the new master exited")
        os.kill(old, signal.SIGCONT)
        try:
            wait_until(lambda: "binary upgrade failed" in gw.log_text()[before:], T(5), msg="the failure logged")
        except AssertionError as e:
            raise AssertionError(f"{e}; the log since SIGUSR2:\n{gw.log_text()[before:]}") from None
        self.assertEqual(backlogs(), [100])
        self.assertNames(gw.port, 4, {"n"})
        self.assertEqual(gw.stop(), 0)

    def test_reload_reopens_the_log_file(self):
        """A reload opens log_file again, as nginx's opens its error_log (and
        as the new logger opens the access logs): after a rotation by rename
        and a SIGHUP, the master and the new workers write to a new file at
        the path. Before, only a changed path was opened: everything went on
        into the renamed file."""
        n = self.backend("n", "name")
        log = os.path.join(self.tmp, "gw.log")
        cfg = self.config(n)
        gw = self.gateway(cfg)
        cfg["log_file"] = log
        self.rewrite(gw, cfg)
        gw.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded:" in read_text(log), T(10),
                   msg="'reloaded:' in log_file")
        os.rename(log, log + ".1")
        gw.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded:" in read_text(log), T(10),
                   msg="'reloaded:' in a new file at the log_file path")
        with open(log + ".1") as f:
            self.assertEqual(f.read().count("reloaded:"), 1, "the second reload logged into the renamed file")
        self.assertEqual(gw.stop(), 0)
        with open(log) as f:
            self.assertRegex(f.read(), r"worker \d+\[\d+\]: SIGTERM", "the new workers log into the new file")

    def test_admin_requests_under_way_are_answered_across_a_reload(self):
        """A reload stopped the admin server at once (SIGQUIT): a request whose
        head was still coming in got no answer, only a closed connection. The
        old admin server now answers what is under way (with Connection:
        close), closes its idle keep-alive connections, and exits; the new
        one accepts on the same socket."""
        n = self.backend("n", "name")
        admin_port = free_port()
        cfg = self.config(n, admin={"listen": f"{LO}:{admin_port}"})
        gw = self.gateway(cfg)

        def connect():
            s = socket.create_connection((LO, admin_port), timeout=T(5))
            return s

        def read_answer(s):
            rd = hb.Reader(s)
            return hb.read_response(rd)

        def answers():
            try:
                with connect() as s:
                    s.sendall(b"GET /status HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    return read_answer(s).status == 200
            except OSError:
                return False
        wait_until(answers, T(10), msg="the admin server answers")
        idle = connect()
        idle.sendall(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n")
        r = read_answer(idle)
        self.assertEqual(r.status, 200)
        partial = connect()
        partial.sendall(b"GET /status HTTP/1.1\r\nHost: a\r\n")  # the head's end still to come
        time.sleep(0.2)
        self.reload(gw)
        partial.sendall(b"\r\n")
        r = read_answer(partial)
        self.assertIsNotNone(r, "no answer to the request under way")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("connection"), "close")
        self.assertEqual(partial.recv(1), b"")  # then the connection closes
        partial.close()
        # the idle keep-alive connection was closed by the old server (a FIN, no answer)
        idle.settimeout(T(5))
        self.assertEqual(idle.recv(1), b"")
        idle.close()
        # the new admin server answers
        s = connect()
        s.sendall(b"GET /status HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        self.assertEqual(read_answer(s).status, 200)
        s.close()
        self.assertEqual(gw.stop(), 0)

    def test_address_passed_between_admin_server_and_listener(self):
        """A reload that gives the admin server's address to a listener (or a
        listener's to the admin server) cannot bind it while the running one
        holds it. It is refused with a line that says so and how to do it,
        not blamed on "another process"; the running configuration stays, and
        two reloads do it."""
        n = self.backend("n", "name")
        admin_port, other_admin = free_port(), free_port()
        cfg = self.config(n, admin={"listen": f"{LO}:{admin_port}"})
        gw = self.gateway(cfg)
        old_port = gw.port
        workers = sorted(gw.worker_pids())
        for change, what, addr, holder in (
                (lambda c: (c["listeners"][0].update(listen=f"{LO}:{admin_port}"),
                            c["admin"].update(listen=f"{LO}:{other_admin}")),
                 'listener "l4"', f"{LO}:{admin_port}", "admin.listen"),
                (lambda c: (c["listeners"][0].update(listen=f"{LO}:{free_port()}"),
                            c["admin"].update(listen=f"{LO}:{old_port}")),
                 "admin.listen", f"{LO}:{old_port}", 'listener "l4"')):
            bad = json.loads(json.dumps(cfg))
            change(bad)
            write_json(gw.conf_path, bad)
            log_before = len(gw.log_text())
            self.reload(gw, expect_ok=False)
            log = gw.log_text()[log_before:]
            self.assertNotIn("another process", log)
            self.assertIn(f"reload failed: {what}: {addr} is still this gwd's {holder}", log)
            self.assertIn("two reloads", log)
            self.assertEqual(sorted(gw.worker_pids()), workers)
            self.assertNames(old_port, 4, {"n"})
        # in two reloads: the admin server moves, then the listener takes its address
        step = json.loads(json.dumps(cfg))
        step["admin"]["listen"] = f"{LO}:{other_admin}"
        self.rewrite(gw, step)
        self.reload(gw)
        step["listeners"][0]["listen"] = f"{LO}:{admin_port}"
        self.rewrite(gw, step)
        self.reload(gw)
        self.assertNames(admin_port, 4, {"n"})
        self.assertEqual(gw.stop(), 0)

    def test_listener_counters_follow_their_listener_across_reloads(self):
        """The listener counters of /metrics are kept by listener name: a
        reload that reorders the listeners, adds one in front and later
        removes one moves no listener's history to another (the rows were by
        config index: the reordered listeners swapped their counts)."""
        n, m = self.backend("n", "name"), self.backend("m", "name")
        admin_port = free_port()
        cfg = self.config(n, admin={"listen": f"{LO}:{admin_port}"})
        cfg["upstreams"].append(upstream("other", [pool("p", [host("m", m)])]))
        cfg["listeners"].append(tcp_listener("l4b", "other"))
        gw = self.gateway(cfg)
        port_a, port_b = gw.ports[0], gw.ports[1]

        def accepted():
            import urllib.request
            try:
                with urllib.request.urlopen(f"http://{LO}:{admin_port}/metrics", timeout=T(5)) as r:
                    text = r.read().decode()
            except OSError:
                return None
            return {k: int(v) for k, v in re.findall(r'^gw_listener_accepted_total\{listener="([^"]+)"[^}]*\} (\d+)$',
                                                       text, re.M)}
        wait_until(lambda: accepted() is not None, T(10), msg="the admin server answers")
        self.assertNames(port_a, 5, {"n"})
        wait_until(lambda: accepted().get("l4") == 5, T(5), msg="5 connections counted on l4")
        self.assertEqual(accepted().get("l4b"), 0)

        # l4b first, then l4, and a new listener l4c in front of both
        moved = json.loads(json.dumps(cfg))
        moved["listeners"] = [tcp_listener("l4c", "other"), moved["listeners"][1], moved["listeners"][0]]
        self.rewrite(gw, moved)
        self.reload(gw)
        self.assertEqual(accepted(), {"l4c": 0, "l4b": 0, "l4": 5})
        self.assertNames(port_b, 2, {"m"})
        wait_until(lambda: accepted().get("l4b") == 2, T(5), msg="2 connections counted on l4b")
        self.assertEqual(accepted(), {"l4c": 0, "l4b": 2, "l4": 5})

        # l4 removed, then a listener of another name added: it starts at 0
        again = json.loads(json.dumps(moved))
        again["listeners"] = [moved["listeners"][1], tcp_listener("l4d", "app")]
        self.rewrite(gw, again)
        self.reload(gw)
        self.assertEqual(accepted(), {"l4b": 2, "l4d": 0})
        self.assertEqual(gw.stop(), 0)

    def test_gwctl_changes_survive_reload(self):
        a, b, c = self.backend("a", "name"), self.backend("b", "name"), self.backend("c", "name")
        cfg = self.config(a)
        cfg["upstreams"][0]["pools"][0]["hosts"] = [host("a", a), host("b", b)]
        gw = self.gateway(cfg)
        self.assertGwctlOk(gw, "add", "host", "app/primary", "c", c.address)
        self.assertGwctlOk(gw, "down", "host", "app/primary", "a")
        self.assertNames(gw.port, 8, {"b", "c"}, must_include={"b", "c"})
        gen = gw.status()["generation"]
        # the new config changes an upstream setting; the pools and hosts stay the live ones
        cfg["upstreams"][0]["tries"] = 2
        self.rewrite(gw, cfg)
        self.reload(gw)
        self.assertHost(gw, "app/primary/c", address=c.address, admin="up")
        self.assertHost(gw, "app/primary/a", admin="down")
        self.assertHost(gw, "app/primary/b", admin="up")
        self.assertGreater(gw.status()["generation"], gen)
        self.assertNames(gw.port, 8, {"b", "c"}, must_include={"b", "c"})
        self.assertEvent(gw, r"^config_reloaded pid=\d+: 1 upstream\(s\), 1 pool\(s\), 3 host\(s\)$")
        # The runtime state differing from the config is said, not silent:
        # in the log (in full) and in the events.
        self.assertIn('upstream "app": its pools and hosts come from the runtime state (gwctl changes win over the '
                      'config), which differs from the config: host "primary/c" is at runtime only.', gw.log_text())
        self.assertEvent(gw, r'^config_not_applied: upstream "app": ')
        # An edit of the config's hosts is not applied by a reload, and says so.
        cfg["upstreams"][0]["pools"][0]["hosts"] = [host("a", a), host("b", b, weight=5), host("n2", c)]
        self.rewrite(gw, cfg)
        log_before = len(gw.log_text())
        self.reload(gw)
        drift = gw.log_text()[log_before:]
        for part in ('host "primary/b" has weight 5 in the config, 1 at runtime', 'host "primary/n2" is in the config '
                     'only', 'host "primary/c" is at runtime only', "Make such changes with gwctl"):
            self.assertIn(part, drift)
        self.assertHost(gw, "app/primary/b", weight=1)
        # and a gwctl change after the reload works as before
        self.assertGwctlOk(gw, "up", "host", "app/primary", "a")
        self.assertNames(gw.port, 12, {"a", "b", "c"}, must_include={"a"})
        self.assertEqual(gw.stop(), 0)

    def test_a_reload_behind_a_held_writer_lock_does_not_stall_the_master(self):
        """A gwctl holds the shm writer lock (its state file's fsync stalls
        6 s, as on a stalled disk; strace delays it) when a SIGHUP comes: the
        master waited for the lock in its loop, up to 10 s, and a worker killed
        meanwhile came back only after that. It now tries again every 250 ms:
        the worker is respawned at once, and the reload is made once the gwctl
        is done, with the gwctl's change kept."""
        strace = shutil.which("strace")
        if not strace:
            self.skipTest("strace is not installed (tools/setup.sh installs it)")
        a, b = self.backend("a", "name"), self.backend("b", "name")
        cfg = self.config(a)
        cfg["upstreams"][0]["pools"][0]["hosts"] = [host("a", a), host("b", b)]
        gw = self.gateway(cfg)
        held = subprocess.Popen([strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync,fdatasync", "-e",
                                 "inject=fsync,fdatasync:delay_enter=6000000:when=1", gwtest.GWCTL, "--shm", gw.shm,
                                 "down", "host", "app/primary", "b"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                # (LeakSanitizer cannot run under ptrace: an ASan build's gwctl would fail at exit)
                                env={**os.environ, "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0"})
        self.addCleanup(held.kill)
        time.sleep(1)  # the gwctl takes the lock and waits in its state file's fsync
        cfg["upstreams"][0]["tries"] = 2
        self.rewrite(gw, cfg)
        log_before = len(gw.log_text())
        gw.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload waits for the shm writer lock" in gw.log_text()[log_before:], T(5),
                   msg="the reload waits for the lock")
        victim = gw.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in gw.worker_pids() and all(p in gwtest.children(gw.pid)
                                                                  for p in gw.worker_pids()),
                   T(4), interval=0.05, msg="the killed worker respawned")
        self.assertIsNone(held.poll(), "the worker came back only once the gwctl let the lock go")
        self.assertEqual(held.wait(T(20)), 0, held.stderr.read())
        wait_until(lambda: "reloaded:" in gw.log_text()[log_before:], T(10), msg="the reload made")
        self.assertNotIn("reload failed", gw.log_text()[log_before:])
        self.assertEqual(gw.log_text()[log_before:].count("reload waits for the shm writer lock"), 1)
        self.assertHost(gw, "app/primary/b", admin="down")
        self.assertEvent(gw, r"^config_reloaded pid=\d+: 1 upstream\(s\), 1 pool\(s\), 2 host\(s\)$")
        self.assertEqual(gw.stop(), 0)

    def test_long_lived_connection_closed_after_worker_shutdown_timeout(self):
        n = self.backend("n", "name")
        cfg = self.config(n, shutdown_timeout_ms=30000, worker_shutdown_timeout_ms=1500)
        gw = self.gateway(cfg)
        s = gwtest.connect(gw.port, timeout=T(5))
        self.addCleanup(s.close)
        s.sendall(b"hi\n")
        self.assertEqual(gwtest.recv_line(s), "n")
        self.assertEqual(gwtest.recv_line(s), "hi")
        old = set(gw.worker_pids())
        log_before = len(gw.log_text())
        t0 = time.monotonic()
        gw.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded:" in gw.log_text()[log_before:], T(10), msg="'reloaded:' in the log")
        # the new workers serve new connections while the old one drains...
        self.assertNames(gw.port, 4, {"n"})
        self.assertRoundTrip(s, b"still here\n")
        self.assertTrue(old & gwtest.children(gw.pid), "the old worker holding the connection is gone early")
        # ...and closes it after worker_shutdown_timeout_ms (not shutdown_timeout_ms)
        self.assertConnectionClosed(s, 1.5 + T(5))
        took = time.monotonic() - t0
        self.assertGreater(took, 1.2, f"closed after {took:.2f}s, before worker_shutdown_timeout_ms=1500")
        left = gwtest.wait_pids_gone(old, T(5))
        self.assertFalse(left, f"old workers still running: {left}")
        self.assertRegex(gw.log_text(), r"worker_shutdown_timeout_ms \(1500\) passed with 1 connection\(s\) open")
        self.assertNames(gw.port, 4, {"n"})
        self.assertEqual(gw.stop(), 0)

    def test_request_whose_upstream_a_reload_removes_still_times_out(self):
        """An http request waiting on a host whose upstream the reload drops keeps that
        upstream's read_timeout_ms (1 s): 504, not a wait until worker_shutdown_timeout_ms."""
        hang = hb.HttpBackend("hang", action="hang")
        ok = hb.HttpBackend("ok")
        self.addCleanup(hang.stop)
        self.addCleanup(ok.stop)
        cfg = self.make_config([pool("p", [host("h", hang.address)])], workers=1, shutdown_timeout_ms=20000,
                               worker_shutdown_timeout_ms=20000)
        cfg["upstreams"][0]["read_timeout_ms"] = 1000
        cfg["upstreams"].append(upstream("other", [pool("p", [host("h", ok.address)])]))
        cfg["listeners"] = [{"name": "web", "listen": f"{LO}:{free_port()}", "protocol": "http",
                             "upstream": cfg["upstreams"][0]["name"]}]
        gw = self.gateway(cfg)
        s = gwtest.connect(gw.port, timeout=T(15))
        self.addCleanup(s.close)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: hang.requests >= 1, T(5), msg="the request to reach the host")
        cfg2 = json.loads(json.dumps(cfg))
        cfg2["upstreams"] = cfg2["upstreams"][1:]
        cfg2["listeners"][0]["upstream"] = "other"
        self.rewrite(gw, cfg2)
        t0 = time.monotonic()
        log_before = len(gw.log_text())
        gw.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded:" in gw.log_text()[log_before:], T(10), msg="'reloaded:' in the log")
        data = b""
        while b"\r\n\r\n" not in data:
            d = s.recv(4096)
            if not d:
                break
            data += d
        took = time.monotonic() - t0
        self.assertTrue(data.startswith(b"HTTP/1.1 504 "), f"after {took:.1f} s: {data[:80]!r}")
        self.assertLess(took, T(5), "the request waited past its read timeout")

    def test_reload_waits_for_rows_held_by_draining_workers(self):
        """workers=1 gives the segment 2 worker rows: a second reload while the
        first one's old worker still drains waits for it, then runs."""
        n = self.backend("n", "name")
        cfg = self.config(n, workers=1, worker_shutdown_timeout_ms=1500)
        gw = self.gateway(cfg)
        s = gwtest.connect(gw.port, timeout=T(5))
        self.addCleanup(s.close)
        s.sendall(b"hi\n")
        self.assertEqual(gwtest.recv_line(s), "n")
        self.assertEqual(gwtest.recv_line(s), "hi")
        first = set(gw.worker_pids())
        log_before = len(gw.log_text())
        gw.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded:" in gw.log_text()[log_before:], T(10), msg="first reload")
        gw.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload deferred" in gw.log_text()[log_before:], T(10), msg="second reload deferred")
        # A third SIGHUP meanwhile says it is still deferred (it said only
        # "SIGHUP: reloading").
        gw.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload still deferred" in gw.log_text()[log_before:], T(10), msg="third SIGHUP deferred")
        self.assertNames(gw.port, 4, {"n"})  # the first reload's worker serves meanwhile
        self.assertConnectionClosed(s, 1.5 + T(5))  # worker_shutdown_timeout_ms
        wait_until(lambda: gw.log_text()[log_before:].count("reloaded:") == 2, T(10), msg="second reload ran")
        self.assertFalse(gwtest.wait_pids_gone(first, T(5)))
        wait_until(lambda: len(gw.worker_pids()) == 1, T(10), msg="one worker")
        self.assertNames(gw.port, 4, {"n"})
        self.assertEqual(gw.stop(), 0)

    def test_binary_upgrade_under_load(self):
        """SIGUSR2: a new master (the binary, executed again) inherits the
        listening sockets and starts its workers; the old master drains and
        exits. No request or connection fails across it."""
        if not os.access(WRK, os.X_OK):
            self.skipTest("wrk is not installed")
        n = self.backend("n", "name")
        web = self.external_backend("w", mode="http", threads=2)
        gw = self.gateway(self.config(n, web))
        web_port = gw.ports[1]
        old_master = gw.pid
        old = gw.all_pids() - {old_master}
        gw.remember(old)
        tcp = gwtest.LoadClient(gw.port, "n", threads=1).start()
        self.addCleanup(tcp.stop)
        ka = KeepAliveClient(web_port, threads=1).start()
        self.addCleanup(ka.stop)
        wrk = subprocess.Popen([WRK, "-t1", "-c8", "-d60s", "--timeout", "5s", f"http://{LO}:{web_port}/"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, preexec_fn=gwtest._child_preexec)
        self.addCleanup(lambda: wrk.poll() is None and wrk.kill())
        wait_until(lambda: tcp.count() >= 20 and ka.count() >= 20, T(10), msg="load running")
        gw.send_signal(signal.SIGUSR2)
        new_master = wait_until(lambda: gw.status().get("master_pid") not in (old_master, None, 0)
                                and gw.status()["master_pid"], T(15), msg="a new master in status")
        gw.remember([new_master])
        gw.remember(gwtest.children(new_master))  # (not children of gw.proc: teardown finds them here)
        rc = gw.wait_exit(T(20))
        self.assertEqual(rc, 0, "the old master's exit code after the upgrade")
        self.assertFalse(gwtest.wait_pids_gone(old, T(10)), "the old master's children are still running")
        before = (tcp.count(), ka.count())
        wait_until(lambda: tcp.count() > before[0] + 20 and ka.count() > before[1] + 20, T(10),
                   msg="load going on after the old master exited")
        wrk.send_signal(signal.SIGINT)
        out, _ = wrk.communicate(timeout=T(20))
        tcp.stop()
        ka.stop()
        m = re.search(r"(\d+) requests in", out)
        self.assertIsNotNone(m, out)
        sys.stderr.write(f"[binary upgrade: wrk {m.group(1)} requests, keep-alive client {ka.ok}, "
                         f"tcp {tcp.ok} connections] ")
        self.assertNotIn("Socket errors", out, f"wrk saw socket errors:\n{out}")
        self.assertNotIn("Non-2xx", out, f"wrk saw failed responses:\n{out}")
        self.assertEqual(tcp.errors, [], "tcp connections failed across the upgrade")
        self.assertEqual(ka.errors, [], "keep-alive requests failed across the upgrade")
        # the new master runs the gateway: its workers in status, gwctl check ok
        new_workers = gwtest.children(new_master)
        gw.remember(new_workers)
        ws = gw.worker_pids()
        self.assertEqual(len(ws), 2)
        self.assertTrue(set(ws) <= new_workers, f"workers {ws} are not children of the new master {new_workers}")
        rc, out, err = gw.gwctl("check")
        self.assertEqual(rc, 0, err)
        self.assertRegex(gw.log_text(), r"binary upgrade: serving; the old master \(pid %d\) drains and exits" % old_master)
        self.assertNames(gw.port, 4, {"n"})
        # and it stops like any master
        os.kill(new_master, signal.SIGTERM)
        self.assertFalse(gwtest.wait_pids_gone({new_master} | new_workers, T(15)), "the new master did not stop")
        self.assertFalse(gwtest.port_listening(gw.port))

    def test_binary_upgrades_lose_no_gwctl_change(self):
        """gwctl keeps adding hosts while the master is upgraded (SIGUSR2) three
        times over: every add that returned 0 is live afterwards and in the state
        file. (The new master once merged a table it read before taking the writer
        lock, and copied it over the changes the old master's writers made in
        between: some acknowledged adds were lost in every upgrade.)"""
        n = self.backend("n", "name")
        cfg = self.config(n)
        cfg["shm"]["max_hosts"] = 2048
        gw = self.gateway(cfg)
        acked, failed = [], []
        stop = threading.Event()

        def adder():
            i = 0
            while not stop.is_set():
                i += 1
                rc, _, err = gw.gwctl("add", "host", "app/primary", f"h{i}", f"{LO}:{20000 + i % 1000}")
                (acked if rc == 0 else failed).append((f"h{i}", err.strip()))
        t = threading.Thread(target=adder, daemon=True)
        t.start()
        self.addCleanup(stop.set)
        master = gw.pid
        for _ in range(3):
            wait_until(lambda: len(acked) >= 5, T(10), msg="gwctl adds going on")
            before = len(acked)
            os.kill(master, signal.SIGUSR2)
            new_master = wait_until(lambda: gw.status().get("master_pid") not in (master, None, 0)
                                    and gw.status()["master_pid"], T(15), msg="a new master in status")
            gw.remember([new_master])
            self.assertFalse(gwtest.wait_pids_gone({master}, T(20)), "the old master did not exit")
            gw.remember(gwtest.children(new_master))
            master = new_master
            wait_until(lambda: len(acked) >= before + 5, T(10), msg="gwctl adds going on after the upgrade")
        stop.set()
        t.join(T(15))
        sys.stderr.write(f"[{len(acked)} adds acknowledged, {len(failed)} refused] ")
        st = gw.status()
        live = {h["id"] for u in st["upstreams"] for p in u["pools"] for h in p["hosts"]}
        with open(cfg["state_file"]) as f:
            saved = json.load(f)
        persisted = {h["id"] for u in saved["upstreams"] for p in u["pools"] for h in p["hosts"]}
        ids = [h for h, _ in acked]
        self.assertEqual([h for h in ids if h not in live], [], "acknowledged adds missing from the live table")
        self.assertEqual([h for h in ids if h not in persisted], [], "acknowledged adds missing from the state file")
        # a refusal is only ever "the master is changing" (the upgrade's window), never a lost write
        for h, err in failed:
            self.assertNotIn(h, live | persisted, f"refused add {h} was applied: {err}")
        os.kill(master, signal.SIGTERM)
        self.assertFalse(gwtest.wait_pids_gone({master} | gwtest.children(master), T(15)), "the last master did not stop")

    def test_binary_upgrade_failing_for_rows_leaves_gwctl_working(self):
        """A new master that fails after it claimed the segment (no free worker
        rows: a reload's old worker still drains) hands it back: gwctl changes
        go on working against the old master (they were refused, the master
        named in the segment being gone)."""
        n = self.backend("n", "name")
        cfg = self.config(n, workers=1, worker_shutdown_timeout_ms=30000)
        gw = self.gateway(cfg)
        s = gwtest.connect(gw.port, timeout=T(5))
        self.addCleanup(s.close)
        s.sendall(b"hi\n")
        self.assertEqual(gwtest.recv_line(s), "n")
        self.assertEqual(gwtest.recv_line(s), "hi")
        log_before = len(gw.log_text())
        gw.send_signal(signal.SIGHUP)  # the old worker drains, holding its row: both rows in use
        wait_until(lambda: "reloaded:" in gw.log_text()[log_before:], T(10), msg="reload")
        gw.send_signal(signal.SIGUSR2)
        wait_until(lambda: "binary upgrade failed" in gw.log_text()[log_before:], T(15), msg="upgrade failure logged")
        self.assertRegex(gw.log_text()[log_before:], r"free worker row\(s\)")
        self.assertEqual(gw.status()["master_pid"], gw.pid)
        self.assertGwctlOk(gw, "down", "host", "app/primary", "n")
        self.assertHost(gw, "app/primary/n", admin="down")
        s.close()
        self.assertEqual(gw.stop(), 0)

    def test_binary_upgrade_refuses_a_changed_state_file(self):
        """A reload refuses a changed state_file; a binary upgrade took it: the
        new master read its table from the other file (a newer one there
        dropped the live changes) and named it in the segment, where a failed
        upgrade left it, so gwctl persisted to a file the old master never
        read and its changes were lost at the next reboot. It is refused now,
        and gwctl changes go on into the running state file."""
        n = self.backend("n", "name")
        cfg = self.config(n)
        gw = self.gateway(cfg)
        old_state = cfg["state_file"]
        bad = json.loads(json.dumps(cfg))
        bad["state_file"] = os.path.join(self.tmp, "other.state.json")
        write_json(gw.conf_path, bad)
        log_before = len(gw.log_text())
        gw.send_signal(signal.SIGUSR2)
        wait_until(lambda: "binary upgrade failed" in gw.log_text()[log_before:], T(10), msg="upgrade failure logged")
        self.assertIn(f'binary upgrade: state_file changed ("{old_state}" -> "{bad["state_file"]}"), '
                      "which a reload refuses too; a restart is needed for that", gw.log_text()[log_before:])
        self.assertEqual(gw.status()["master_pid"], gw.pid)
        write_json(gw.conf_path, cfg)
        self.assertGwctlOk(gw, "down", "host", "app/primary", "n")
        with open(old_state) as f:
            self.assertEqual(json.load(f)["upstreams"][0]["pools"][0]["hosts"][0]["down"], True)
        self.assertFalse(os.path.exists(bad["state_file"]))
        self.assertEqual(gw.stop(), 0)

    def test_binary_upgrade_that_fails_keeps_the_old_master(self):
        n = self.backend("n", "name")
        cfg = self.config(n)
        gw = self.gateway(cfg)
        workers = sorted(gw.worker_pids())
        bad = json.loads(json.dumps(cfg))
        bad["shm"]["max_hosts"] = 512  # the running segment cannot take it
        write_json(gw.conf_path, bad)
        log_before = len(gw.log_text())
        gw.send_signal(signal.SIGUSR2)
        wait_until(lambda: "binary upgrade failed" in gw.log_text()[log_before:], T(10), msg="upgrade failure logged")
        self.assertRegex(gw.log_text()[log_before:], r"binary upgrade: the running shm segment .* a restart is needed")
        self.assertEqual(gw.status()["master_pid"], gw.pid)
        self.assertEqual(sorted(gw.worker_pids()), workers)
        self.assertNames(gw.port, 4, {"n"})
        rc, out, err = gw.gwctl("check")
        self.assertEqual(rc, 0, err)
        self.assertEqual(gw.stop(), 0)

    def test_binary_upgrade_failing_on_its_config_says_why_in_the_log_file(self):
        """With log_file set, a new master that fails on its config said why on
        its stderr only (a systemd journal, or nowhere), and the log said
        "exited with code 1". The old master's log line now quotes it."""
        n = self.backend("n", "name")
        cfg = self.config(n)
        log_file = os.path.join(self.tmp, "gw-error.log")
        cfg["log_file"] = log_file
        gw = self.gateway(cfg, start=False)
        gw.start(wait=False)
        gw.log_path = log_file  # where "ready" and the rest are written
        gw.wait_ready()
        bad = json.loads(json.dumps(cfg))
        bad["upstreams"][0]["pools"][0]["hosts"][0]["weight"] = "0"
        bad["bogus"] = 1
        write_json(gw.conf_path, bad)
        gw.send_signal(signal.SIGUSR2)

        wait_until(lambda: "binary upgrade failed" in gw.log_text(), T(10), msg="upgrade failure logged")
        line = next(x for x in gw.log_text().splitlines() if "binary upgrade failed" in x)
        self.assertRegex(line, r"binary upgrade failed: the new master \(pid \d+\) exited with code 1: ")
        self.assertIn(f"{gw.conf_path}: bogus: unknown key", line)
        self.assertIn('hosts[0].weight: expected an integer 0..1000, got string "0"', line)
        self.assertTrue(line.endswith("; this one goes on serving"), line)
        self.assertEqual(gw.status()["master_pid"], gw.pid)
        self.assertNames(gw.port, 2, {"n"})
        write_json(gw.conf_path, cfg)
        self.assertEqual(gw.stop(), 0)

    def test_binary_upgrade_failing_on_a_port_puts_the_old_config_back(self):
        """The new master published its config, then failed to bind a port:
        the old master serves on with its own config, not the new table (its
        listener used to lose its upstream, renamed by the new config)."""
        n = self.backend("n", "name")
        cfg = self.config(n)
        gw = self.gateway(cfg)
        self.assertNames(gw.port, 2, {"n"})
        m = self.backend("m", "name")
        self.assertGwctlOk(gw, "add", "host", "app/primary", "m", m.address)
        busy = socket.socket()  # a port in use, without SO_REUSEPORT
        busy.bind((LO, 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        bad = json.loads(json.dumps(cfg))
        bad["upstreams"][0]["name"] = "app2"
        bad["listeners"][0]["upstream"] = "app2"
        bad["listeners"].append(tcp_listener("extra", "app2", port=busy.getsockname()[1]))
        write_json(gw.conf_path, bad)
        log_before = len(gw.log_text())
        gw.send_signal(signal.SIGUSR2)
        wait_until(lambda: "binary upgrade failed" in gw.log_text()[log_before:], T(10), msg="upgrade failure logged")
        self.assertEqual(gw.status()["master_pid"], gw.pid)
        self.assertEqual([u["name"] for u in gw.status()["upstreams"]], ["app"])
        # The new master fails before it publishes anything (the port is tried
        # first): the host gwctl added to the upstream it would drop is kept.
        self.assertHost(gw, "app/primary/m", admin="up")
        self.assertNames(gw.port, 8, {"n", "m"})
        rc, out, err = gw.gwctl("check")
        self.assertEqual(rc, 0, err)
        self.assertIn("1 listener(s)", out)
        self.assertEqual(gw.stop(), 0)

    def test_sighup_to_the_old_master_during_an_upgrade_waits(self):
        """A SIGHUP to the old master while its new one starts: the reload
        used to take the rows the new master had picked but its workers had
        not yet written, and the upgrade never completed (two masters served
        on). It is put off; the upgrade completes."""
        n = self.backend("n", "name")
        for delay in (0.004, 0.008):
            cfg = self.config(n, workers=1)
            gw = self.gateway(cfg)
            old = gw.pid
            log_before = len(gw.log_text())
            os.kill(old, signal.SIGUSR2)
            time.sleep(delay)
            os.kill(old, signal.SIGHUP)
            self.assertEqual(gw.wait_exit(T(10)), 0, "the old master did not hand over and exit")
            self.assertIn("a binary upgrade", gw.log_text()[log_before:])
            new = gw.status()["master_pid"]
            self.assertNotEqual(new, old)
            gw.remember([new])
            gw.remember(gwtest.children(new))
            self.assertNames(gw.port, 2, {"n"})
            os.kill(new, signal.SIGTERM)
            gwtest.wait_pids_gone({new}, T(10))

    def test_reload_deferred_in_an_upgraded_master_runs_when_the_old_workers_go(self):
        """A master started by a binary upgrade, reloaded while the old
        master's worker still drains (its row is busy): the reload runs once
        that worker exits. It used to wait for one of its own workers to
        exit, which never came."""
        n = self.backend("n", "name")
        cfg = self.config(n, workers=1, shutdown_timeout_ms=4000)
        gw = self.gateway(cfg)
        held = gwtest.connect(gw.port)
        self.assertEqual(gwtest.recv_line(held), "n")  # kept by the old master's worker
        old = gw.pid
        gw.send_signal(signal.SIGUSR2)
        wait_until(lambda: gw.status().get("master_pid") not in (old, None, 0), T(15), msg="the new master")
        new = gw.status()["master_pid"]
        gw.remember([new])
        wait_until(lambda: "serving; the old master" in gw.log_text(), T(10), msg="the upgrade completed")
        gw.remember(gwtest.children(new))
        more = json.loads(json.dumps(cfg))
        more["listeners"].append(tcp_listener("l5", "app"))
        write_json(gw.conf_path, more)
        os.kill(new, signal.SIGHUP)
        wait_until(lambda: "reload deferred" in gw.log_text(), T(10), msg="the reload deferred")
        held.close()  # the old worker exits
        port5 = int(more["listeners"][1]["listen"].rsplit(":", 1)[1])
        wait_until(lambda: gwtest.port_listening(port5), T(10), msg="the reload ran: the new listener listens")
        gw.remember(gwtest.children(new))
        os.kill(new, signal.SIGTERM)
        gwtest.wait_pids_gone({new}, T(10))

    def test_draining_workers_logs_survive_sigterm_and_rotation(self):
        """Connections held by the old workers of a reload: after a log
        rotation (rename, SIGUSR1) their lines go to the new files, and a
        SIGTERM before they end loses none of them. The old workers and
        logger were not told to reopen, and SIGTERM stopped the old logger
        at once."""
        n = self.backend("n", "name")
        acc = os.path.join(self.tmp, "acc.log")
        cfg = self.config(n, workers=1, worker_shutdown_timeout_ms=20000, shutdown_timeout_ms=20000)
        cfg["listeners"][0]["access_log"] = {"path": acc}
        gw = self.gateway(cfg)
        held = []
        for _ in range(3):
            s = gwtest.connect(gw.port)
            self.assertEqual(gwtest.recv_line(s), "n")
            held.append(s)
        gw.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded:" in gw.log_text(), T(10), msg="reloaded")
        os.rename(acc, acc + ".1")
        gw.send_signal(signal.SIGUSR1)
        wait_until(lambda: os.path.exists(acc), T(5), msg="the access log reopened")
        time.sleep(0.3)  # the old generation reopens too
        held[0].close()  # ended before the stop: its line goes to the new file
        time.sleep(0.3)
        gw.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        for s in held[1:]:
            s.close()  # ended while the gateway stops
        self.assertEqual(gw.wait_exit(T(30)), 0)
        with open(acc) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 3, f"access log after rotation: {lines}")

    def test_connections_queued_in_a_removed_slot_are_served(self):
        """A reload to fewer workers drops slots: the socket of one stays in
        the port's SO_REUSEPORT group until its old worker closes it, and the
        connections queued there meanwhile (the worker busy; here stopped,
        SIGSTOP, until after the reload) are served by it as it drains, not
        reset."""
        n = self.backend("n", "name")
        cfg = self.config(n, workers=2)
        gw = self.gateway(cfg)
        old = gw.worker_pids()
        conns = []
        for p in old:
            os.kill(p, signal.SIGSTOP)
        try:
            cfg["workers"] = 1
            self.rewrite(gw, cfg)
            log_before = len(gw.log_text())
            gw.send_signal(signal.SIGHUP)
            wait_until(lambda: "reloaded:" in gw.log_text()[log_before:], T(10), msg="'reloaded:' in the log")
            for _ in range(16):  # over both slots' sockets (SO_REUSEPORT hashes the client ports)
                s = gwtest.connect(gw.port, timeout=T(5))
                self.addCleanup(s.close)
                s.sendall(b"hi\n")
                conns.append(s)
        finally:
            for p in old:
                os.kill(p, signal.SIGCONT)
        for s in conns:
            self.assertEqual(gwtest.recv_line(s), "n")
            self.assertEqual(gwtest.recv_line(s), "hi")
            s.close()
        self.assertEqual(gw.stop(), 0)

    def test_reload_with_no_drain_time_leaves_the_queue_to_the_new_worker(self):
        """worker_shutdown_timeout_ms 0: the old worker closes its connections
        at once. The connections queued in the listening socket that the new
        worker shares are not taken (only to be closed): the new worker
        serves them. (Under io_uring the old worker's accepts in flight took
        the wake-ups of what arrived while it was stopped, and it left
        without passing them on: the new worker's accepts slept on a full
        queue until another connection came.)"""
        n = self.backend("n", "name")
        gw = self.gateway(self.config(n, workers=1, worker_shutdown_timeout_ms=0))
        (old,) = gw.worker_pids()
        conns = []
        new = None
        os.kill(old, signal.SIGSTOP)
        try:
            log_before = len(gw.log_text())
            gw.send_signal(signal.SIGHUP)
            wait_until(lambda: "reloaded:" in gw.log_text()[log_before:], T(10), msg="'reloaded:' in the log")
            wait_until(lambda: [p for p in gw.worker_pids() if p != old], T(5), msg="the new worker")
            (new,) = [p for p in gw.worker_pids() if p != old]
            os.kill(new, signal.SIGSTOP)  # the old worker's SIGWINCH is pending; now the queue fills
            for _ in range(3):
                s = gwtest.connect(gw.port, timeout=T(5))
                self.addCleanup(s.close)
                s.sendall(b"hi\n")
                conns.append(s)
            os.kill(old, signal.SIGCONT)
            wait_until(lambda: "old worker (pid" in gw.log_text()[log_before:], T(5), msg="the old worker gone")
        finally:
            if os.path.exists(f"/proc/{old}"):
                os.kill(old, signal.SIGCONT)
            if new:
                os.kill(new, signal.SIGCONT)
        for s in conns:
            self.assertEqual(gwtest.recv_line(s), "n")
            self.assertEqual(gwtest.recv_line(s), "hi")
            s.close()
        self.assertEqual(gw.stop(), 0)

    def test_connections_queued_in_a_shared_socket_are_left_to_the_new_worker(self):
        """The old worker of a reload leaves what is queued in a listening
        socket the new worker shares to that worker, as nginx's old workers
        do: it took those connections as it began to drain, and then closed
        them at its worker_shutdown_timeout_ms (here 1.5 s), although the
        new worker would have served them for as long as they last."""
        n = self.backend("n", "name")
        gw = self.gateway(self.config(n, workers=1, worker_shutdown_timeout_ms=1500))
        (old,) = gw.worker_pids()
        conns = []
        new = None
        os.kill(old, signal.SIGSTOP)
        try:
            log_before = len(gw.log_text())
            gw.send_signal(signal.SIGHUP)
            wait_until(lambda: "reloaded:" in gw.log_text()[log_before:], T(10), msg="'reloaded:' in the log")
            wait_until(lambda: [p for p in gw.worker_pids() if p != old], T(5), msg="the new worker")
            (new,) = [p for p in gw.worker_pids() if p != old]
            os.kill(new, signal.SIGSTOP)  # the old worker's SIGWINCH is pending; now the queue fills
            for _ in range(3):
                s = gwtest.connect(gw.port, timeout=T(5))
                self.addCleanup(s.close)
                s.sendall(b"hi\n")
                conns.append(s)
            os.kill(old, signal.SIGCONT)
            wait_until(lambda: "draining" in gw.log_text()[log_before:], T(5), msg="the old worker draining")
            time.sleep(0.2)  # (it would take the queue now)
        finally:
            if os.path.exists(f"/proc/{old}"):
                os.kill(old, signal.SIGCONT)
            if new:
                os.kill(new, signal.SIGCONT)
        for s in conns:
            self.assertEqual(gwtest.recv_line(s), "n")
            self.assertEqual(gwtest.recv_line(s), "hi")
        self.assertFalse(gwtest.wait_pids_gone({old}, T(5)), "the old worker still runs")
        for s in conns:  # the old worker is gone: the new one serves them
            self.assertRoundTrip(s, b"still here\n")
            s.close()
        self.assertNotIn("passed with", gw.log_text()[log_before:])
        self.assertEqual(gw.stop(), 0)

    def test_connections_queued_at_a_binary_upgrade_are_left_to_the_new_masters_worker(self):
        """The same at a binary upgrade: the old master's worker, stopping
        (SIGTERM) after the hand-over, leaves what is queued in a socket the
        new master's worker inherited to that worker; it took those
        connections and closed them at its shutdown_timeout_ms (1.5 s)."""
        n = self.backend("n", "name")
        gw = self.gateway(self.config(n, workers=1, shutdown_timeout_ms=1500))
        old_master = gw.pid
        (old,) = gw.worker_pids()
        gw.remember([old])
        conns = []
        new = None
        os.kill(old, signal.SIGSTOP)
        try:
            log_before = len(gw.log_text())
            gw.send_signal(signal.SIGUSR2)
            new_master = wait_until(lambda: gw.status().get("master_pid") not in (old_master, None, 0)
                                    and gw.status()["master_pid"], T(15), msg="a new master in status")
            gw.remember([new_master])
            new = wait_until(lambda: [p for p in gw.worker_pids() if p != old], T(10), msg="the new worker")[0]
            gw.remember([new])
            os.kill(new, signal.SIGSTOP)
            wait_until(lambda: "stopping this one's workers gracefully" in gw.log_text()[log_before:], T(10),
                       msg="the hand-over")
            for _ in range(3):
                s = gwtest.connect(gw.port, timeout=T(5))
                self.addCleanup(s.close)
                s.sendall(b"hi\n")
                conns.append(s)
            os.kill(old, signal.SIGCONT)
            wait_until(lambda: "SIGTERM: stop accepting" in gw.log_text()[log_before:], T(5),
                       msg="the old worker draining")
            time.sleep(0.2)  # (it would take the queue now)
        finally:
            if os.path.exists(f"/proc/{old}"):
                os.kill(old, signal.SIGCONT)
            if new:
                os.kill(new, signal.SIGCONT)
        for s in conns:
            self.assertEqual(gwtest.recv_line(s), "n")
            self.assertEqual(gwtest.recv_line(s), "hi")
        self.assertEqual(gw.wait_exit(T(20)), 0, "the old master's exit code after the upgrade")
        self.assertFalse(gwtest.wait_pids_gone({old}, T(5)), "the old worker still runs")
        for s in conns:  # the old master and its worker are gone: the new one serves them
            self.assertRoundTrip(s, b"still here\n")
            s.close()
        self.assertNotIn("passed with", gw.log_text()[log_before:])
        os.kill(new_master, signal.SIGTERM)
        self.assertFalse(gwtest.wait_pids_gone({new_master, new}, T(15)), "the new master did not stop")

    def test_a_failed_reload_resets_nothing_queued_in_a_new_slot(self):
        """A reload to more workers makes a socket for each new slot on the
        addresses that stay; until the reload commits it takes no connection,
        so one that then fails (here on its log_file, after its open of an
        access log was held for 3 s by strace's fault injection) resets
        nothing: before, the socket listened at once, its share of the port's
        connections (SO_REUSEPORT) queued there with no worker, and they were
        reset when the failed reload closed it. (The hold was an access log
        that is a FIFO with no reader, until that open stopped waiting.)"""
        strace = shutil.which("strace")
        if not strace:
            self.skipTest("strace is not installed (it holds the master in an open)")
        n = self.backend("n", "name")
        cfg = self.config(n, workers=2)
        gw = self.gateway(cfg)
        cfg["workers"] = 1  # rows for 2 + 2: one worker may grow to two again
        self.rewrite(gw, cfg)
        self.reload(gw)

        def listening():
            return sum(1 for lip, lport, _, st, _ in gwtest._proc_net_tcp() if lport == gw.port and st == "0A")
        self.assertEqual(listening(), 1)
        held = os.path.join(self.tmp, "held-access.log")
        bad = json.loads(json.dumps(cfg))
        bad["workers"] = 2
        bad["listeners"][0]["access_log"] = {"path": held, "format": "combined"}
        bad["log_file"] = os.path.join(self.tmp, "missing-dir", "gw.log")
        self.rewrite(gw, bad)
        tracer = subprocess.Popen([strace, "-qq", "-p", str(gw.pid), "-P", held, "-e", "trace=openat",
                                   "-e", "inject=openat:delay_enter=3s", "-o", os.devnull],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (tracer.poll() is None and tracer.terminate(), tracer.wait()))
        wait_until(lambda: read_text(f"/proc/{gw.pid}/status").find("TracerPid:\t0") < 0, T(10),
                   msg="strace attached to the master")
        log_before = len(gw.log_text())
        gw.send_signal(signal.SIGHUP)
        conns = []

        def in_held_open():  # stopped at the entry of an openat, the same one twice 0.2 s apart
            first = read_text(f"/proc/{gw.pid}/syscall")
            if not first.startswith("257 "):
                return False
            time.sleep(0.2)
            return read_text(f"/proc/{gw.pid}/syscall") == first
        # the master held in the access log's open, the new slot's socket made
        wait_until(in_held_open, T(10), interval=0.01, msg="the master held in the open of the access log")
        for _ in range(16):  # over both slots' sockets (SO_REUSEPORT hashes the client ports)
            s = gwtest.connect(gw.port, timeout=T(5))
            self.addCleanup(s.close)
            s.sendall(b"hi\n")
            conns.append(s)
        wait_until(lambda: "reload failed: log_file" in gw.log_text()[log_before:], T(10), msg="the reload failed")
        tracer.terminate()  # (strace detaches)
        tracer.wait()
        failed = []
        for i, s in enumerate(conns):
            try:
                self.assertEqual(gwtest.recv_line(s), "n")
                self.assertEqual(gwtest.recv_line(s), "hi")
            except (OSError, EOFError) as e:
                failed.append(f"connection {i}: {e!r}")
            s.close()
        self.assertEqual(failed, [], "connections reset by a failed reload")
        self.assertEqual(listening(), 1)
        self.assertNames(gw.port, 4, {"n"})
        # the same reload without the errors: the new slot's socket listens
        cfg["workers"] = 2
        self.rewrite(gw, cfg)
        self.reload(gw)
        self.assertEqual(listening(), 2)
        self.assertNames(gw.port, 8, {"n"})
        self.assertEqual(gw.stop(), 0)

    def test_reloads_leak_no_fd_process_or_segment(self):
        """20 reloads (every helper running: checker, admin server, logger; a
        listener added and removed, a reload failing on a port) leave the
        master with the fds, children and /dev/shm entries it had."""
        web = self.external_backend("w", mode="http")
        n = self.backend("n", "name")
        cfg = self.config(n, web, admin={"listen": f"{LO}:{free_port()}"}, worker_shutdown_timeout_ms=200)
        cfg["upstreams"][0]["health"] = {"type": "tcp", "interval_ms": 200, "timeout_ms": 200}
        cfg["listeners"][1]["access_log"] = {"path": os.path.join(self.tmp, "access.log"), "format": "combined"}
        gw = self.gateway(cfg)
        added = json.loads(json.dumps(cfg))
        added["listeners"].append(tcp_listener("l4b", "app"))
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind((LO, 0))
        taken.listen(1)
        busy = json.loads(json.dumps(cfg))
        busy["listeners"].append(tcp_listener("l4c", "app", port=taken.getsockname()[1]))

        def fds():
            # (a reload makes new access-log socket pairs: sockets by count)
            out = []
            for f in os.listdir(f"/proc/{gw.pid}/fd"):
                try:
                    out.append(re.sub(r"socket:\[\d+\]", "socket", os.readlink(f"/proc/{gw.pid}/fd/{f}")))
                except FileNotFoundError:
                    pass  # listdir's own
            return sorted(out)

        def shm_entries():
            return sorted(f for f in os.listdir("/dev/shm") if f.startswith(gw.config["shm"]["name"].lstrip("/")))

        def settled_children():
            return len(gwtest.children(gw.pid, include_zombies=True)) == len(gwtest.children(gw.pid))

        self.reload(gw)
        time.sleep(0.3)
        before, shm_before = fds(), shm_entries()
        kids_before = len(gwtest.children(gw.pid, include_zombies=True))
        for i in range(RELOADS):
            step = [cfg, added, busy][i % 3]
            self.rewrite(gw, step)
            self.reload(gw, expect_ok=step is not busy)
            self.assertEqual(hb.request(gw.ports[1], "GET", "/").status, 200)
        self.rewrite(gw, cfg)
        self.reload(gw)
        wait_until(lambda: fds() == before, T(5), msg="master fds as before")
        self.assertEqual(fds(), before)
        self.assertEqual(shm_entries(), shm_before)
        wait_until(settled_children, T(5), msg="no zombie child")
        wait_until(lambda: len(gwtest.children(gw.pid, include_zombies=True)) == kids_before, T(5),
                   msg="as many children as before")
        self.assertEqual(gw.stop(), 0)

    def test_access_log_across_reload(self):
        web = self.external_backend("w", mode="http")
        n = self.backend("n", "name")
        cfg = self.config(n, web)
        log = os.path.join(self.tmp, "access.log")
        cfg["listeners"][1]["access_log"] = {"path": log, "format": "combined"}
        gw = self.gateway(cfg)
        web_port = gw.ports[1]
        for i in range(3):
            self.assertEqual(hb.request(web_port, "GET", f"/before/{i}").status, 200)
        self.reload(gw)
        for i in range(3):
            self.assertEqual(hb.request(web_port, "GET", f"/after/{i}").status, 200)

        def lines():
            try:
                with open(log) as f:
                    return f.read()
            except FileNotFoundError:
                return ""
        wait_until(lambda: len(re.findall(r'"GET /(before|after)/\d', lines())) == 6, T(5),
                   msg="6 access log lines, 3 from before the reload and 3 after")
        # one logger runs (the old one exited with the old workers)
        def loggers():
            out = []
            for p in gwtest.children(gw.pid):
                try:
                    with open(f"/proc/{p}/comm") as f:
                        if f.read().strip() == "gwd-logger":
                            out.append(p)
                except OSError:
                    pass
            return out
        wait_until(lambda: len(loggers()) == 1, T(5), msg="one logger process")
        self.assertEqual(gw.stop(), 0)


if __name__ == "__main__":
    gwtest.main()
