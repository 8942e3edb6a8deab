#!/usr/bin/python3
"""TCP relay: bytes both ways, big transfers, half-close, balancing, failover,
passive health, idle timeout."""

import fcntl
import os
import socket
import struct
import sys
import termios
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import GwTestCase, T, host, pool  # noqa: E402

MB = 1024 * 1024


def unacked(sock):
    """Bytes sent on sock that the peer has not acknowledged yet (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def transfer(port, payload, read_delay=0.0, on_stalled=None):
    """Sends payload through port to an echo backend while reading the echo.

    The reader starts after read_delay seconds (then on_stalled() is called while
    nothing is read). Returns (echoed bytes, seconds)."""
    t0 = time.monotonic()
    with gwtest.connect(port, timeout=T(30)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = []

        def send():
            try:
                view = memoryview(payload)
                for off in range(0, len(payload), 256 * 1024):
                    s.sendall(view[off:off + 256 * 1024])
                s.shutdown(socket.SHUT_WR)
            except OSError as e:
                err.append(e)
        th = threading.Thread(target=send, daemon=True)
        th.start()
        if read_delay:
            time.sleep(read_delay)
            if on_stalled:
                on_stalled()
        buf = bytearray()
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
        th.join(T(30))
        if err:
            raise err[0]
    return bytes(buf), time.monotonic() - t0


class RelayTest(GwTestCase):

    def test_bytes_both_ways(self):
        a = self.backend("alpha", "name")
        gw = self.gateway(self.make_config([pool("primary", [host("a", a)])]))
        with gwtest.connect(gw.port) as s:
            s.sendall(b"first\n")
            self.assertEqual(gwtest.recv_line(s), "alpha")       # backend -> client
            self.assertEqual(gwtest.recv_line(s), "first")       # client -> backend -> client
            blob = bytes(range(256)) * 64
            self.assertRoundTrip(s, blob)                        # binary, all byte values
            for i in range(20):
                self.assertRoundTrip(s, f"msg {i}\n".encode())
        self.assertEqual(a.count, 1)

    def test_big_transfer_each_direction(self):
        """20 MB up and 20 MB back through an echo backend arrive intact."""
        e = self.backend("echo", "echo")
        gw = self.gateway(self.make_config([pool("primary", [host("e", e)])]))
        payload = os.urandom(20 * MB)
        got, secs = transfer(gw.port, payload)
        self.assertEqual(len(got), len(payload), "echoed length differs")
        self.assertEqual(gwtest.sha256(got), gwtest.sha256(payload), "echoed bytes differ")
        sys.stderr.write(f"[20 MB each way in {secs:.2f}s] ")

    def test_big_transfer_gw_backend(self):
        """The same through gw-backend in echo mode (and its half-close)."""
        e = self.external_backend("gecho", "echo")
        gw = self.gateway(self.make_config([pool("primary", [host("e", e.address)])]))
        payload = os.urandom(20 * MB)
        got, _ = transfer(gw.port, payload)
        self.assertEqual(len(got), len(payload), "echoed length differs")
        self.assertEqual(gwtest.sha256(got), gwtest.sha256(payload), "echoed bytes differ")

    def test_back_pressure_slow_reader(self):
        """A client that does not read: the gateway must stop reading instead of
        buffering (its memory stays flat), and everything still arrives intact."""
        e = self.backend("echo", "echo")
        gw = self.gateway(self.make_config([pool("primary", [host("e", e)])]))
        workers = gw.worker_pids()
        rss0 = sum(gwtest.vm_rss_kb(p) for p in workers)
        payload = os.urandom(32 * MB)
        grown = []
        got, _ = transfer(gw.port, payload, read_delay=2.0,
                          on_stalled=lambda: grown.append(sum(gwtest.vm_rss_kb(p) for p in workers) - rss0))
        self.assertEqual(gwtest.sha256(got), gwtest.sha256(payload), "echoed bytes differ")
        sys.stderr.write(f"[worker RSS +{grown[0]} kB while stalled] ")
        self.assertLess(grown[0], 8 * 1024,
                        f"worker RSS grew by {grown[0]} kB while the client did not read (no back-pressure?)")

    def test_half_close(self):
        """client SHUT_WR -> backend sees EOF -> backend's late reply arrives -> EOF."""
        b = self.backend("late", "eof_reply")
        gw = self.gateway(self.make_config([pool("primary", [host("b", b)])]))
        with gwtest.connect(gw.port) as s:
            s.sendall(b"x" * 1000)
            s.shutdown(socket.SHUT_WR)
            gwtest.wait_until(lambda: b.eofs == 1, T(5), msg="backend to see EOF")
            self.assertEqual(gwtest.recv_line(s), "late got 1000 bytes")
            self.assertEqual(s.recv(100), b"", "expected EOF after the reply")

    def test_half_close_echo(self):
        """Echo backend: after the client's SHUT_WR everything still comes back, then EOF."""
        e = self.backend("echo", "echo")
        gw = self.gateway(self.make_config([pool("primary", [host("e", e)])]))
        with gwtest.connect(gw.port) as s:
            payload = b"half-close " * 1000
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(gwtest.recv_all(s), payload)
        gwtest.wait_until(lambda: e.eofs == 1, T(5), msg="backend to see EOF")

    def test_backend_close_reaches_client(self):
        """The backend closing after its reply is seen by the client as EOF."""
        b = self.backend("late", "eof_reply")
        gw = self.gateway(self.make_config([pool("primary", [host("b", b)])]))
        with gwtest.connect(gw.port) as s:
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(gwtest.recv_all(s), b"late got 0 bytes\n")

    def test_smooth_weighted_round_robin(self):
        a, b, c = self.backend("a"), self.backend("b"), self.backend("c")
        gw = self.gateway(self.make_config(
            [pool("primary", [host("a", a, 5), host("b", b, 1), host("c", c, 1)])], workers=1))
        seq = gwtest.names(gw.port, 14)
        self.assertEqual(seq, list("aabacaa") * 2)

    def test_failover_to_backup_pool(self):
        dead = gwtest.free_port()       # nothing listens there: connection refused
        bk = self.backend("backup")
        gw = self.gateway(self.make_config(
            [pool("primary", [host("p1", dead)], priority=0),
             pool("backup", [host("bk", bk)], priority=1)], workers=1))
        self.assertNames(gw.port, 3, {"backup"})

    def test_connect_failure_marks_host_down(self):
        dead = gwtest.free_port()
        live = self.backend("live")
        gw = self.gateway(self.make_config(
            [pool("primary", [host("dead", dead), host("live", live)])], workers=1,
            upstream_opts={"max_fails": 1, "fail_timeout_ms": 30000}))
        # every connection succeeds (the failed connect is retried on the live host)
        self.assertNames(gw.port, 4, {"live"})
        gwtest.wait_until(lambda: gwtest.find_host(gw.status(), "app/primary/dead")["health"] == "down",
                          T(5), msg="dead host health down in status")
        h = self.assertHost(gw, "app/primary/dead", health="down", admin="up")
        self.assertGreaterEqual(h.get("failures", 0), 1, h)
        self.assertHost(gw, "app/primary/live", health="up")
        self.assertEvent(gw, r"^host_down app/primary/dead\b")

    def test_clients_of_a_blackholed_host_do_not_stall_other_connections(self):
        """300 clients of a host whose connects hang (its accept queue is full:
        SYNs dropped) each send a few bytes; a connection through another
        listener to a live host is still answered at once. Under io_uring the
        clients' receives used to be armed before the connect, each holding a
        buffer of the worker's shared ring until its connect timed out: the
        ring ran dry and every connection of the worker waited."""
        echo = self.backend("echo", "echo")
        hole = socket.socket()
        hole.bind((gwtest.LOOPBACK, 0))
        hole.listen(0)  # never accepted: once full, the kernel drops the SYNs
        self.addCleanup(hole.close)
        cfg = self.make_config([pool("p", [host("hole", f"{gwtest.LOOPBACK}:{hole.getsockname()[1]}")])],
                               upstream_opts={"connect_timeout_ms": 15000, "tries": 1, "max_fails": 0})
        cfg["upstreams"].append(gwtest.upstream("live", [pool("p", [host("e", echo)])]))
        cfg["listeners"].append(gwtest.tcp_listener("l2", "live"))
        gw = self.gateway(cfg)
        clients = []
        self.addCleanup(lambda: [c.close() for c in clients])
        for _ in range(300):
            c = gwtest.connect(gw.port, timeout=T(5))
            c.sendall(b"x" * 27)
            clients.append(c)
        time.sleep(0.3)  # the accepts and receives of all 300 are done
        t0 = time.monotonic()
        with gwtest.connect(gw.ports[1], timeout=T(10)) as s:
            s.sendall(b"ping\n")
            self.assertEqual(gwtest.recv_line(s), "ping")
        self.assertLess(time.monotonic() - t0, 2.0, "a live host's connection waited on the blackholed clients")

    def test_retry_after_a_connect_timeout_is_routed_by_the_table_of_that_moment(self):
        """A connect hangs (the host's accept queue is full); meanwhile gwctl
        brings another host up. The retry after the connect timeout goes to
        it. With nothing else to wake it, the worker ran the timer with the
        table of the accept (read only with a batch of events, or once a
        second), which had no other host: the client was closed."""
        live = self.backend("live")
        hole = socket.socket()
        hole.bind((gwtest.LOOPBACK, 0))
        hole.listen(0)  # never accepted: once full, the kernel drops the SYNs
        self.addCleanup(hole.close)
        filler = socket.create_connection(hole.getsockname(), timeout=T(5))
        self.addCleanup(filler.close)
        gw = self.gateway(self.make_config(
            [pool("p", [host("hole", f"{gwtest.LOOPBACK}:{hole.getsockname()[1]}"), host("live", live)])],
            upstream_opts={"connect_timeout_ms": 300, "tries": 2, "max_fails": 0}))

        def current():
            st = gw.status()
            return all(w["generation"] == st["generation"] for w in st["workers"])
        for i in range(3):
            self.assertGwctlOk(gw, "down", "host", "app/p", "live")
            gwtest.wait_until(current, T(5), interval=0.02, msg="the worker on the new table generation")
            with gwtest.connect(gw.port, timeout=T(5)) as c:
                c.sendall(b"x")
                self.assertGwctlOk(gw, "up", "host", "app/p", "live")
                self.assertEqual(gwtest.recv_line(c), "live", f"round {i}: the retry after the connect timeout")

    def test_clients_that_stop_reading_do_not_stall_other_connections(self):
        """150 clients send bulk data to an echo host and never read the echo:
        both directions of each session stall (the client does not read, so
        the host stops reading). A connection through another listener is
        still answered at once. Under io_uring a blocked send held its ring
        buffers (up to 4 per direction) until the session moved or timed
        out, and some 32 such sessions left the worker's shared ring dry;
        they now wait in the worker's own buffers, as under epoll."""
        echo = self.backend("echo", "echo")
        live = self.backend("live", "echo")
        # Copies only (no splice), so that every stalled byte sits in gw's buffers.
        cfg = self.make_config([pool("p", [host("e", echo)])], splice_after_bytes=0)
        cfg["upstreams"].append(gwtest.upstream("live", [pool("p", [host("l", live)])]))
        cfg["listeners"].append(gwtest.tcp_listener("l2", "live"))
        gw = self.gateway(cfg)
        clients = []
        self.addCleanup(lambda: [c.close() for c in clients])
        blob = b"s" * (64 * 1024)

        def stuff(c):
            # Send until nothing more is taken for a while: every buffer on
            # the way (the host's, gw's, the kernel's) is full.
            c.setblocking(False)
            idle_since = time.monotonic()
            while time.monotonic() - idle_since < 1.0:
                try:
                    c.send(blob)
                    idle_since = time.monotonic()
                except BlockingIOError:
                    time.sleep(0.02)
                except OSError:
                    return
        for _ in range(150):
            clients.append(gwtest.connect(gw.port, timeout=T(5)))
        threads = [threading.Thread(target=stuff, args=(c,), daemon=True) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(T(60))
        t0 = time.monotonic()
        with gwtest.connect(gw.ports[1], timeout=T(10)) as s:
            s.sendall(b"ping\n")
            self.assertEqual(gwtest.recv_line(s), "ping")
        self.assertLess(time.monotonic() - t0, 2.0, "a live host's connection waited on the stalled sessions")

    def test_idle_timeout(self):
        a = self.backend("a")
        gw = self.gateway(self.make_config([pool("primary", [host("a", a)])],
                                           upstream_opts={"idle_timeout_ms": 300}))
        # Traffic every 50 ms keeps a connection alive well past the timeout. (On a
        # badly overloaded machine this process may itself pause for 300 ms; such
        # a round is retried rather than blamed on the gateway.)
        for attempt in range(3):
            with gwtest.connect(gw.port) as s:
                sent = time.monotonic()        # before the last bytes: gw's idle clock restarts after this
                s.sendall(b"hi\n")
                self.assertEqual(gwtest.recv_line(s), "a")
                self.assertEqual(gwtest.recv_line(s), "hi")
                last = time.monotonic()
                worst = 0.0
                try:
                    t_end = time.monotonic() + 1.0
                    while time.monotonic() < t_end:
                        time.sleep(0.05)
                        worst = max(worst, time.monotonic() - last)
                        sent = time.monotonic()
                        self.assertRoundTrip(s, b"tick\n")
                        last = time.monotonic()
                except (OSError, EOFError, AssertionError) as e:
                    gap = time.monotonic() - last
                    if max(worst, gap) >= 0.25:
                        sys.stderr.write(f"[idle round {attempt}: paused {max(worst, gap):.3f}s, retrying] ")
                        continue
                    self.fail(f"connection with traffic every 50 ms was closed (idle_timeout_ms=300): {e!r}")
                # ...and idleness closes it. Timed from before the last tick was sent (the last
                # traffic gw saw is its echo, after that), not from when this process got around
                # to reading the echo: the close cannot come sooner than 300 ms from there (less
                # 50 ms for gw's loop clock), however late this process runs.
                self.assertConnectionClosed(s, T(5))
                t = time.monotonic() - sent
                self.assertGreater(t, 0.25, f"closed {t:.3f}s after the last traffic, before idle_timeout_ms=300")
                break
        else:
            self.fail("machine too busy: could not keep a 50 ms rhythm for 1 s")
        gwtest.wait_until(lambda: a.active == 0, T(5), msg="backend side closed too")

    def test_backend_that_speaks_first_and_closes(self):
        """A backend that sends a line and closes at once (a "too many connections"
        banner): the FIN can arrive with the connect event; every client must get
        the line and then EOF, not wait for the idle timeout."""
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((gwtest.LOOPBACK, 0))
        srv.listen(512)
        stop = threading.Event()

        def serve():
            srv.settimeout(0.1)
            while not stop.is_set():
                try:
                    c, _ = srv.accept()
                except OSError:
                    continue
                try:
                    c.sendall(b"BUSY\n")
                finally:
                    c.close()
        th = threading.Thread(target=serve, daemon=True)
        th.start()
        self.addCleanup(lambda: (stop.set(), th.join(2), srv.close()))
        gw = self.gateway(self.make_config([pool("p", [host("x", srv.getsockname()[1])])], workers=1,
                                           upstream_opts={"max_fails": 0}))
        failures = []

        def client(n):
            for _ in range(n):
                with gwtest.connect(gw.port, timeout=T(3)) as s:
                    try:
                        got = gwtest.recv_all(s)
                    except socket.timeout:
                        failures.append("no EOF within the timeout")
                        continue
                    if got != b"BUSY\n":
                        failures.append(repr(got))
        threads = [threading.Thread(target=client, args=(50,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(T(60))
        self.assertEqual(failures, [])

    def test_backend_reply_before_reset_reaches_client(self):
        """A backend that stops reading, answers and closes with the client's
        bytes unread: the kernel sends a reset, not a FIN (an HTTP server
        refusing a too-large upload does this). Its whole answer was in gw's
        socket before the reset, and gw's next write to the backend fails. The
        answer must still reach the client, which reads slowly: a failed write
        to the backend must not throw away what the backend already sent."""
        answer = os.urandom(64 * 1024)
        srv = socket.socket()
        srv.bind((gwtest.LOOPBACK, 0))
        srv.listen(16)
        self.addCleanup(srv.close)
        conns, drained, sent = [], [], threading.Event()
        self.addCleanup(lambda: [c.close() for c in conns])

        def serve():
            c, _ = srv.accept()
            conns.append(c)
            time.sleep(0.3)            # not reading: the client's upload fills every buffer on the way
            c.sendall(answer)
            deadline = time.monotonic() + T(5)
            while unacked(c) and time.monotonic() < deadline:
                time.sleep(0.01)       # all of it is in gw's socket
            drained.append(unacked(c) == 0)
            sent.set()
            c.close()                  # unread bytes: a reset
        threading.Thread(target=serve, daemon=True).start()
        gw = self.gateway(self.make_config([pool("p", [host("x", srv.getsockname()[1])])],
                                           upstream_opts={"max_fails": 0}))
        s = socket.socket()
        self.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # the answer waits in gw
        s.settimeout(T(10))
        s.connect((gwtest.LOOPBACK, gw.port))

        def upload():
            try:
                while True:
                    s.sendall(b"u" * 65536)
            except OSError:
                pass
        threading.Thread(target=upload, daemon=True).start()
        self.assertTrue(sent.wait(T(10)))
        self.assertEqual(drained, [True], "the answer did not get to gw before the reset")
        time.sleep(0.2)                # the reset has reached gw
        got = bytearray()
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
        self.assertEqual(len(got), len(answer), "the backend's answer before its reset was cut")
        self.assertEqual(bytes(got), answer)

    def test_client_reset_ends_the_session_of_a_streaming_backend(self):
        """A backend that streams without end (a feed, a log tail) and clients
        that read a little and reset. A write to such a client fails; what the
        backend sends after that is dropped, but the session must end once the
        client is gone both ways and the backend has what the client sent: it
        must not drain the stream until the backend closes (never), holding
        two descriptors and the host's active count."""
        srv = socket.socket()
        srv.bind((gwtest.LOOPBACK, 0))
        srv.listen(64)
        self.addCleanup(srv.close)
        stop = threading.Event()
        self.addCleanup(stop.set)

        def stream(c):
            with c:
                try:
                    while not stop.is_set():
                        c.sendall(b"x" * 65536)
                except OSError:
                    pass

        def serve():
            while not stop.is_set():
                try:
                    c, _ = srv.accept()
                except OSError:
                    return
                threading.Thread(target=stream, args=(c,), daemon=True).start()
        threading.Thread(target=serve, daemon=True).start()
        gw = self.gateway(self.make_config([pool("p", [host("s", srv.getsockname()[1])])],
                                           upstream_opts={"max_fails": 0}))
        (worker,) = gw.worker_pids()
        sockets_before = gwtest.socket_inodes(worker)
        for i in range(10):
            s = socket.create_connection((gwtest.LOOPBACK, gw.port), timeout=T(5))
            if i % 2:
                s.sendall(b"hello\n")
                s.shutdown(socket.SHUT_WR)
            self.assertTrue(s.recv(1000))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()                  # a reset, with the stream still coming
            time.sleep(0.02)

        def settled():
            st = gw.status()
            return (st["workers"][0]["connections"] == 0 and gwtest.find_host(st, "app/p/s")["active"] == 0
                    and gwtest.socket_inodes(worker) == sockets_before)   # (the pipe pool keeps its pipes)
        gwtest.wait_until(settled, T(3), msg="the sessions of the reset clients end")

    def test_client_reset_after_its_fin_ends_the_session(self):
        """A client half-closes (its FIN reaches the backend), the backend keeps
        its side open and sends nothing, then the client resets. Nothing can
        reach the client any more and the backend has all it sent: the session
        ends at once, as under epoll (EPOLLERR). Under io_uring no receive was
        left on the client after its FIN, so the reset went unseen until
        idle_timeout_ms (30 s here)."""
        srv = socket.socket()
        srv.bind((gwtest.LOOPBACK, 0))
        srv.listen(8)
        self.addCleanup(srv.close)
        got_eof = threading.Event()
        conns = []
        self.addCleanup(lambda: [c.close() for c in conns])

        def serve():
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            try:
                while c.recv(4096):
                    pass
                got_eof.set()   # the client's FIN, passed on; this side stays open
            except OSError:
                pass
        threading.Thread(target=serve, daemon=True).start()
        gw = self.gateway(self.make_config([pool("p", [host("b", srv.getsockname()[1])])],
                                           upstream_opts={"idle_timeout_ms": 30000, "max_fails": 1}))
        c = gwtest.connect(gw.port, timeout=T(5))
        c.sendall(b"hello\n")
        c.shutdown(socket.SHUT_WR)
        self.assertTrue(got_eof.wait(T(5)), "the client's FIN did not reach the backend")
        time.sleep(0.2)
        st = gw.status()
        self.assertEqual(st["workers"][0]["connections"], 1, "the half-closed session ended before the reset")
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()   # a reset after the FIN
        t0 = time.monotonic()

        def ended():
            st = gw.status()
            return st["workers"][0]["connections"] == 0 and gwtest.find_host(st, "app/p/b")["active"] == 0
        gwtest.wait_until(ended, T(3), msg="the session of a client reset after its FIN ends")
        self.assertLess(time.monotonic() - t0, 3.0)
        # gw's upstream socket is closed: a write of the backend is answered with a reset.
        (b,) = conns
        b.settimeout(T(3))
        with self.assertRaises((ConnectionResetError, BrokenPipeError)):
            b.sendall(b"x")
            time.sleep(0.1)
            b.sendall(b"x")
            b.recv(1)
        self.assertHost(gw, "app/p/b", health="up", failures=0)

    def test_client_reset_during_a_slow_connect_abandons_it(self):
        """The upstream connect hangs (the host's accept queue is full: SYNs
        dropped) and the client resets meanwhile. The attempt is abandoned at
        once, as under epoll, with no failure counted against the host: it was
        the client who left. Under io_uring the client was not watched while
        connecting, so the session lived until connect_timeout_ms (20 s here)
        and the timeout then marked the host down."""
        hole = socket.socket()
        hole.bind((gwtest.LOOPBACK, 0))
        hole.listen(0)  # never accepted: once full, the kernel drops the SYNs
        self.addCleanup(hole.close)
        filler = socket.create_connection(hole.getsockname(), timeout=T(5))   # fills its accept queue
        self.addCleanup(filler.close)
        gw = self.gateway(self.make_config(
            [pool("p", [host("hole", f"{gwtest.LOOPBACK}:{hole.getsockname()[1]}")])],
            upstream_opts={"connect_timeout_ms": 20000, "tries": 1, "max_fails": 1, "fail_timeout_ms": 60000}))
        c = gwtest.connect(gw.port, timeout=T(5))
        self.addCleanup(c.close)
        gwtest.wait_until(lambda: gwtest.find_host(gw.status(), "app/p/hole")["active"] == 1, T(5),
                          msg="the upstream connect is pending")
        time.sleep(0.3)
        self.assertEqual(gw.status()["workers"][0]["connections"], 1, "the connect ended before the reset")
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()   # a reset while connecting
        t0 = time.monotonic()

        def abandoned():
            st = gw.status()
            return st["workers"][0]["connections"] == 0 and gwtest.find_host(st, "app/p/hole")["active"] == 0
        gwtest.wait_until(abandoned, T(3), msg="the connect of a client that reset is abandoned")
        self.assertLess(time.monotonic() - t0, 3.0)
        self.assertHost(gw, "app/p/hole", health="up", failures=0)

    def test_host_that_resets_before_the_connect_is_seen_is_connected(self):
        """A host accepts gw's connection, sends a banner and resets it (SO_LINGER
        0) before the worker has handled its connect: SO_ERROR (or the io_uring
        connect's result) then says ECONNRESET. The handshake was done: that is
        a connected session that ended with a reset, not a failed connect. The
        host gets no passive failure (max_fails 1 would take it out), no other
        host is tried (the host may have had the client's bytes), and the
        client gets the banner, then the end. It used to be a connect failure:
        the host went down and the client was moved to the backup host.

        The race is made deterministic with the worker stopped (see
        gwtest.ResetHost)."""
        rst = gwtest.ResetHost()
        self.addCleanup(rst.close)
        backup = self.backend("backup")
        gw = self.gateway(self.make_config(
            [pool("p", [host("rst", rst.address)], priority=0), pool("b", [host("backup", backup)], priority=1)],
            upstream_opts={"connect_timeout_ms": 20000, "max_fails": 1, "fail_timeout_ms": 60000,
                           "idle_timeout_ms": 30000}))
        (worker,) = gw.worker_pids()
        c = gwtest.connect(gw.port, timeout=T(10))
        self.addCleanup(c.close)
        c.sendall(b"hello\n")
        rst.reset_next(worker, b"FULL\n")
        got, end = bytearray(), "EOF"
        c.settimeout(T(5))
        try:
            while True:
                chunk = c.recv(4096)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            end = "reset"
        except socket.timeout:
            end = "no end"
        self.assertEqual((bytes(got), end != "no end"), (b"FULL\n", True),
                         f"the client got {bytes(got)!r}, then {end}, not the host's banner and an end")

        def ended():
            st = gw.status()
            return st["workers"][0]["connections"] == 0 and gwtest.find_host(st, "app/p/rst")["active"] == 0
        gwtest.wait_until(ended, T(5), msg="the session ends")
        self.assertEqual(backup.count, 0, "the client was moved to another host")
        self.assertHost(gw, "app/p/rst", health="up", failures=0)

    def test_backend_reset_after_its_fin_ends_the_session(self):
        """A backend answers, half-closes (its FIN reaches the client) and then
        resets (SO_LINGER 0), while the client keeps its side open and sends
        nothing. The backend is gone both ways and the client has all it sent:
        the session ends at once, not when the client next writes or at
        idle_timeout_ms (30 s here). Under epoll the upstream's EPOLLERR was
        ignored after its EOF; under io_uring nothing watched the upstream
        after its FIN."""
        self.check_backend_reset_after_fin(wait_for_client=True)

    def test_backend_reset_right_after_its_fin_ends_the_session(self):
        """As above, with the reset right behind the FIN: gw may read the EOF
        and meet the reset in one go, before the client has acknowledged the
        FIN (a delayed ACK, some 40 ms on loopback). (The backend answers only
        once the client's first bytes reach it: gw is connected by then.)"""
        self.check_backend_reset_after_fin(wait_for_client=False)

    def test_backend_reset_without_fin_ends_the_session(self):
        """A backend answers and resets without a FIN: the answer and then a
        FIN reach the client, and once the client has acknowledged them the
        session ends, though the client sends nothing and keeps its side open
        (it used to last until the client closed, or idle_timeout_ms)."""
        self.check_backend_reset_after_fin(wait_for_client=False, fin=False)

    def check_backend_reset_after_fin(self, wait_for_client, fin=True):
        srv = socket.socket()
        srv.bind((gwtest.LOOPBACK, 0))
        srv.listen(8)
        self.addCleanup(srv.close)
        conns = []
        self.addCleanup(lambda: [b.close() for b in conns])

        def serve():
            try:
                b, _ = srv.accept()
            except OSError:
                return
            conns.append(b)
            if not wait_for_client:
                b.recv(16)
            b.sendall(b"bye\n")
            if fin:
                b.shutdown(socket.SHUT_WR)
            if not wait_for_client:
                b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                b.close()   # a reset right after the FIN
        threading.Thread(target=serve, daemon=True).start()
        gw = self.gateway(self.make_config([pool("p", [host("b", srv.getsockname()[1])])],
                                           upstream_opts={"idle_timeout_ms": 30000, "max_fails": 1}))
        c = gwtest.connect(gw.port, timeout=T(5))
        self.addCleanup(c.close)
        if not wait_for_client:
            c.sendall(b"hi\n")
        self.assertEqual(gwtest.recv_all(c), b"bye\n")   # the answer, then the backend's FIN
        if wait_for_client:
            time.sleep(0.2)
            st = gw.status()
            self.assertEqual(st["workers"][0]["connections"], 1, "the half-closed session ended before the reset")
            (b,) = conns
            b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            b.close()   # a reset after the FIN
            conns.clear()
        t0 = time.monotonic()

        def ended():
            st = gw.status()
            return st["workers"][0]["connections"] == 0 and gwtest.find_host(st, "app/p/b")["active"] == 0
        gwtest.wait_until(ended, T(3), msg="the session of a backend reset after its FIN ends")
        self.assertLess(time.monotonic() - t0, T(3))
        # gw's client socket is closed: a write of the client is answered with a reset.
        with self.assertRaises((ConnectionResetError, BrokenPipeError)):
            c.sendall(b"x")
            time.sleep(0.1)
            c.sendall(b"x")
        self.assertHost(gw, "app/p/b", health="up", failures=0)

    def test_client_reset_while_its_reads_are_paused_ends_the_session(self):
        """A backend that does not read, and a client that writes until every
        buffer on the way is full (gw has stopped reading it: back-pressure),
        then resets. The session ends at once and the upstream is closed, not
        when the backend starts reading (never here) or at idle_timeout_ms
        (30 s here): the reset was seen only by a read of the client."""
        srv = socket.socket()
        srv.bind((gwtest.LOOPBACK, 0))
        srv.listen(8)
        self.addCleanup(srv.close)
        conns = []
        self.addCleanup(lambda: [b.close() for b in conns])

        def serve():
            try:
                b, _ = srv.accept()
            except OSError:
                return
            conns.append(b)   # never read
        threading.Thread(target=serve, daemon=True).start()
        gw = self.gateway(self.make_config([pool("p", [host("b", srv.getsockname()[1])])],
                                           upstream_opts={"idle_timeout_ms": 30000, "max_fails": 1}))
        c = gwtest.connect(gw.port, timeout=T(5))
        self.addCleanup(c.close)
        c.setblocking(False)
        chunk = b"u" * 65536
        stalls = []

        def stalled():
            # Three rounds in a row, 50 ms apart, in which nothing more goes in:
            # gw no longer reads the client.
            sent = 0
            try:
                while True:
                    sent += c.send(chunk)
            except BlockingIOError:
                pass
            stalls.append(sent == 0)
            time.sleep(0.05)
            return stalls[-3:] == [True] * 3
        gwtest.wait_until(stalled, T(10), interval=0, msg="the client's writes stall")
        st = gw.status()
        self.assertEqual(st["workers"][0]["connections"], 1)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()   # a reset while gw does not read it
        t0 = time.monotonic()

        def ended():
            st = gw.status()
            return st["workers"][0]["connections"] == 0 and gwtest.find_host(st, "app/p/b")["active"] == 0
        gwtest.wait_until(ended, T(3), msg="the session of a client reset while paused ends")
        self.assertLess(time.monotonic() - t0, T(3))
        # gw's upstream socket is closed: the backend reads what was queued, then EOF or a reset.
        (b,) = conns
        b.settimeout(T(5))
        try:
            while b.recv(1 << 20):
                pass
        except ConnectionResetError:
            pass
        self.assertHost(gw, "app/p/b", health="up", failures=0)

    def test_client_bytes_before_its_reset_reach_the_backend(self):
        """A client sends a few buffers' worth and resets at once (SO_LINGER 0):
        the bytes and the reset reach the worker together. The kernel lets a
        read return every byte that came before the reset (a direct connection
        gives the backend all of them), and so must gw, to a backend that
        reads, under both engines. Under io_uring the multishot receive ran
        ahead of the sends to the backend, and the reset's completion ended
        the session with what it had read still queued in the worker (all but
        the first 16 KiB lost)."""
        payload = os.urandom(48 * 1024)
        srv = socket.socket()
        srv.bind((gwtest.LOOPBACK, 0))
        srv.listen(64)
        self.addCleanup(srv.close)
        got, held = [], []
        self.addCleanup(lambda: [c.close() for c in held])

        def serve():
            while True:
                try:
                    c, _ = srv.accept()
                except OSError:
                    return
                n = 0
                held.append(c)   # kept open after the EOF: gw must end the session by itself
                try:
                    c.sendall(b"hi")   # the client waits for it: the session is relayed
                    while True:
                        chunk = c.recv(1 << 20)
                        if not chunk:
                            break
                        n += len(chunk)
                except OSError:
                    pass
                got.append(n)
        threading.Thread(target=serve, daemon=True).start()

        def burst_then_reset(port, rounds):
            del got[:]
            for _ in range(rounds):
                s = gwtest.connect(port, timeout=T(10))
                with s:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.assertEqual(s.recv(2), b"hi")
                    s.sendall(payload)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                gwtest.wait_until(lambda: len(got) == 1, T(10), msg="the backend to see the end")
                n = got.pop()
                if n != len(payload):
                    return n
                if port != srv.getsockname()[1]:
                    def ended():
                        st = gw.status()
                        return st["workers"][0]["connections"] == 0 and gwtest.find_host(st, "app/p/b")["active"] == 0
                    gwtest.wait_until(ended, T(3), msg="the session of the reset client ends")
            return len(payload)
        self.assertEqual(burst_then_reset(srv.getsockname()[1], 5), len(payload), "direct")
        for splice in (16384, 0):
            gw = self.gateway(self.make_config([pool("p", [host("b", srv.getsockname()[1])])],
                                               upstream_opts={"max_fails": 0, "idle_timeout_ms": 30000},
                                               splice_after_bytes=splice))
            self.assertEqual(burst_then_reset(gw.port, 30), len(payload), f"bytes lost through gw (splice {splice})")
            gw.stop()

    def test_client_fin_during_a_slow_connect_still_delivers_its_bytes(self):
        """The upstream connect hangs (the host's accept queue is full), and the
        client sends its request and half-closes meanwhile. Once the connect
        completes, the host gets the request and the FIN, and its answer and
        FIN reach the client."""
        hole = socket.socket()
        hole.bind((gwtest.LOOPBACK, 0))
        hole.listen(0)
        self.addCleanup(hole.close)
        filler = socket.create_connection(hole.getsockname(), timeout=T(5))
        self.addCleanup(filler.close)
        gw = self.gateway(self.make_config(
            [pool("p", [host("hole", f"{gwtest.LOOPBACK}:{hole.getsockname()[1]}")])],
            upstream_opts={"connect_timeout_ms": 20000, "tries": 1, "max_fails": 0}))
        c = gwtest.connect(gw.port, timeout=T(10))
        self.addCleanup(c.close)
        gwtest.wait_until(lambda: gwtest.find_host(gw.status(), "app/p/hole")["active"] == 1, T(5),
                          msg="the upstream connect is pending")
        request = os.urandom(100 * 1024)
        c.sendall(request)
        c.shutdown(socket.SHUT_WR)
        time.sleep(0.3)
        f, _ = hole.accept()   # the filler: room for gw's next SYN
        f.close()
        hole.settimeout(T(10))
        b, _ = hole.accept()
        with b:
            b.settimeout(T(10))
            got = bytearray()
            while True:
                chunk = b.recv(1 << 20)
                if not chunk:
                    break
                got += chunk
            self.assertEqual(bytes(got), request, "the request sent before the connect completed")
            b.sendall(b"answer")
        self.assertEqual(gwtest.recv_all(c), b"answer")

if __name__ == "__main__":
    gwtest.main()
