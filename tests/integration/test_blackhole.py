#!/usr/bin/python3
"""A blackholed backend, made with nftables: what the client gets, whether gw
tries another host, and what passive (or active) health makes of the host, for
http and tcp listeners, the way nginx-tests and HAProxy's reg-tests check a
dead upstream.

A blackhole drops packets silently: no RST, no ICMP, so only a timeout can
tell gw. This file re-executes itself in a fresh network namespace (`unshare
--net`, with `--user --map-root-user` when not root or when root may not
create one), brings `lo` up there, and runs the usual harness (gwtest: the
real gwd with a generated config, Python backends) entirely inside it. A set
in an nftables table of that namespace holds the blackholed `address . port`
pairs; two rules on the output hook drop every TCP packet to or from them.
Nothing outside 127.0.0.0/8 of that namespace is ever used, and the rules go
away with it. The blackholed host listens on its own loopback address
(127.0.0.5), so removing its element brings it back at once.

Without unshare(1), nft(8) (Debian: nftables, installed by tools/setup.sh) or
ip(8), or if the namespace cannot be made, the file fails with a message: it
does not skip.

Cases (max_fails 1 unless said):
  connect blackholed (SYNs dropped):  http with a good host: 200 from it
      after connect_timeout_ms, one failure, host down; http alone: 504
      after connect_timeout_ms, then 503 (no usable host); tcp with a good
      host: relayed to it after connect_timeout_ms, the host comes back
      after fail_timeout_ms; tcp alone: the connection is closed after
      connect_timeout_ms.
  blackholed after connect:  http, a kept-alive upstream connection goes
      dark: the GET goes to the good host after read_timeout_ms (timeout is
      in the default retry.on), or 504 when retry.on lacks it; alone, the
      answer to a request already at the host is lost: 504 after
      read_timeout_ms; a POST whose body was streaming to it: 504 after
      send_timeout_ms, not retried on the fallback pool; each is one failure
      of the host. tcp: gw cannot tell a dark peer from a quiet one, so
      idle_timeout_ms closes the session and the host is not blamed (as
      nginx's stream proxy_timeout).
  rule removed:  passive, the host is used again after fail_timeout_ms and
      a success marks it up; active tcp checks take it down while dark and
      up when the rule is gone."""

import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netns  # noqa: E402

if __name__ == "__main__" and netns.NETNS_ENV not in os.environ:
    netns.reexec_in_netns(__file__, "test_blackhole")

import gwtest  # noqa: E402
import httpbackend as hb  # noqa: E402
from gwtest import T, pool, tcp_listener, wait_until  # noqa: E402
from test_http import HttpCase, delta, get, host, http_totals  # noqa: E402

DEAD = "127.0.0.5"          # the blackholed host's own loopback address
CONNECT_MS = 400
READ_MS = 500
FAIL_MS = 1500
IDLE_MS = 800
EARLY = 0.05                # slack: gw stamps times with its loop clock, read before our own
TIMED_OUT = r"last: Connection timed out\)"
NO_ANSWER = r"last: no answer within read_timeout_ms\)"


class Nft:
    """The nftables table of this test's network namespace: a set of
    `address . port` pairs and two output-hook rules dropping TCP to and from
    them (loopback traffic passes the output hook in both directions)."""

    TABLE = "gw_blackhole"

    def __init__(self, exe):
        self.exe = exe
        self.run_script(f"""
table inet {self.TABLE} {{
  set blackholed {{ type ipv4_addr . inet_service; }}
  chain output {{
    type filter hook output priority 0; policy accept;
    ip daddr . tcp dport @blackholed counter drop
    ip saddr . tcp sport @blackholed counter drop
  }}
}}
""")

    def run_script(self, script):
        r = subprocess.run([self.exe, "-f", "-"], input=script, capture_output=True, text=True,
                           timeout=T(10))
        if r.returncode != 0:
            raise AssertionError(f"nft -f failed ({r.returncode}): {r.stderr.strip()}\n{script}")

    @staticmethod
    def _elem(address):
        ip, port = address.rsplit(":", 1)
        return f"{{ {ip} . {int(port)} }}"

    def drop(self, address):
        """From now on every TCP packet to or from address ("IP:PORT") is dropped."""
        self.run_script(f"add element inet {self.TABLE} blackholed {self._elem(address)}\n")

    def undrop(self, address):
        self.run_script(f"delete element inet {self.TABLE} blackholed {self._elem(address)}\n")

    def flush(self):
        self.run_script(f"flush set inet {self.TABLE} blackholed\n")

    def dropped(self):
        """Packets the two drop rules have dropped so far."""
        r = subprocess.run([self.exe, "-j", "list", "chain", "inet", self.TABLE, "output"],
                           capture_output=True, text=True, timeout=T(10))
        if r.returncode != 0:
            raise AssertionError(f"nft -j list chain failed: {r.stderr.strip()}")
        n = 0
        for item in json.loads(r.stdout).get("nftables", []):
            for e in item.get("rule", {}).get("expr", []):
                if "counter" in e:
                    n += e["counter"]["packets"]
        return n


NFT = None


def setUpModule():
    """Checks that this process runs in its own network namespace, brings lo up
    and creates the nftables table there."""
    global NFT
    netns.assert_own_netns("test_blackhole", "nft rules would hit the host")
    ip, nft = netns.tool("ip"), netns.tool("nft")
    if ip is None:
        raise AssertionError("ip(8) not found (Debian package iproute2, installed by tools/setup.sh)")
    if nft is None:
        raise AssertionError("nft(8) not found (Debian package nftables, installed by tools/setup.sh)")
    r = subprocess.run([ip, "link", "set", "lo", "up"], capture_output=True, text=True, timeout=T(10))
    if r.returncode != 0:
        raise AssertionError(f"ip link set lo up: {r.stderr.strip()}")
    NFT = Nft(nft)


class BlackholeCase(HttpCase):

    def setUp(self):
        super().setUp()
        NFT.flush()
        self.addCleanup(NFT.flush)

    def gw_with(self, hosts, listener=None, **opts):
        """A gateway with upstream app = one pool `p` of hosts (id -> backend)."""
        return self.http_gw([pool("p", [host(hid, b) for hid, b in hosts.items()])],
                            listener=listener, upstream_opts={"max_fails": 1, "fail_timeout_ms": 60000, **opts})

    def tcp_gw(self, hosts, **opts):
        return self.gw_with(hosts, listener=tcp_listener("l4", "app"), **opts)

    def bad_host(self, gw):
        return gwtest.find_host(gw.status(), "app/p/bad")

    def until_bad_failed(self, gw, send, good_name="good"):
        """Sends (send(i) -> Response) until the host `bad` has a failure, at most
        4 times (round robin starts anywhere). Every request before must be a
        200 from the good host. Returns (response, seconds, start time) of the
        one that met it: gw recorded the failure between start + the timeout
        and the answer."""
        seen = []
        for i in range(4):
            t0 = time.monotonic()
            r = send(i)
            dt = time.monotonic() - t0
            seen.append((r.status if r else None, round(dt, 3)))
            if self.bad_host(gw)["failures"] > 0:
                return r, dt, t0
            self.assertBackend(r, good_name)
        self.fail(f"the blackholed host never met a request: {seen}")

    def assertDown(self, gw, failures=1):
        h = self.bad_host(gw)
        self.assertEqual(h["failures"], failures, f"passive failures of the blackholed host: {h}")
        self.assertEqual(h["health"], "down", f"max_fails 1: the blackholed host is out: {h}")
        self.assertEqual(h["active"], 0, f"a timed-out attempt still counts as an active connection: {h}")

    def assertDropped(self, before):
        self.assertGreater(NFT.dropped(), before, "the nft rules dropped nothing: the fault was not the blackhole")

    def read_until_closed(self, sock, within):
        """What the peer sends until it closes sock (EOF or reset), failing after `within` seconds."""
        got = bytearray()
        deadline = time.monotonic() + within
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.fail(f"connection still open after {within:.1f}s (got {bytes(got[:80])!r})")
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    return bytes(got)
                got += data
        except TimeoutError:
            self.fail(f"connection still open after {within:.1f}s (got {bytes(got[:80])!r})")
        except ConnectionResetError:
            return bytes(got)

    def no_host(self, gw):
        return sum(w["no_host"] for w in gw.status()["workers"])


# ----------------------------------------------------------------------------
# http listener

class HttpBlackholeTest(BlackholeCase):

    def test_connect_blackholed_retried_on_good_host(self):
        bad, good = self.hb("bad", host=DEAD), self.hb("good")
        NFT.drop(bad.address)
        dropped = NFT.dropped()
        gw = self.gw_with({"bad": bad, "good": good}, connect_timeout_ms=CONNECT_MS)
        before = http_totals(gw)
        r, dt, _ = self.until_bad_failed(gw, lambda i: get(gw.port, f"/{i}"))
        self.assertBackend(r, "good")
        self.assertGreaterEqual(dt, CONNECT_MS / 1000 - EARLY, "answered before connect_timeout_ms")
        self.assertLess(dt, T(CONNECT_MS / 1000 + 2.5))
        self.assertDown(gw)
        self.assertEqual(bad.connections, 0, "a SYN got through")
        self.assertDropped(dropped)
        d = delta(http_totals(gw), before)
        self.assertEqual((d["retries"], d["gateway_timeout"]), (1, 0), d)
        self.assertEvent(gw, rf"host_down app/p/bad {DEAD}:{bad.port} "
                             rf"\(passive: 1 failure\(s\) within 60000 ms, {TIMED_OUT}")
        # While it is down nothing tries it: no second connect timeout, no second failure.
        for i in range(6):
            self.assertBackend(get(gw.port, f"/after{i}"), "good")
        self.assertDown(gw)
        self.assertEqual(delta(http_totals(gw), before)["retries"], 1)

    def test_connect_blackholed_only_host_504(self):
        bad = self.hb("bad", host=DEAD)
        NFT.drop(bad.address)
        gw = self.gw_with({"bad": bad}, connect_timeout_ms=CONNECT_MS)
        before = http_totals(gw)
        t0 = time.monotonic()
        r = get(gw.port, "/")
        dt = time.monotonic() - t0
        self.assertGwError(r, 504, close=False)
        self.assertGreaterEqual(dt, CONNECT_MS / 1000 - EARLY, "504 before connect_timeout_ms")
        self.assertLess(dt, T(CONNECT_MS / 1000 + 2.5), "one attempt: the host is not tried twice")
        self.assertDown(gw)
        d = delta(http_totals(gw), before)
        self.assertEqual((d["gateway_timeout"], d["retries"]), (1, 0), d)
        # Down and alone: no usable host, 503 at once (gw does not retry a
        # downed host, unlike nginx's lone server that is never marked down).
        no_host = self.no_host(gw)
        self.assertGwError(get(gw.port, "/again"), 503, close=False)
        self.assertEqual(self.no_host(gw) - no_host, 1)
        self.assertDown(gw)
        self.assertEqual(bad.connections, 0)

    def _keepalive_goes_dark(self, retry_on):
        """Warms a kept-alive upstream connection to `bad`, blackholes it, and
        sends GETs until one meets it. Returns (gw, bad, good, response, seconds, totals delta)."""
        bad, good = self.hb("bad", host=DEAD), self.hb("good")
        opts = {"read_timeout_ms": READ_MS}
        if retry_on is not None:
            opts["retry"] = {"on": retry_on}
        gw = self.gw_with({"bad": bad, "good": good}, **opts)
        for i in range(4):
            self.assertEqual(get(gw.port, f"/warm{i}").status, 200)
            if bad.requests:
                break
        self.assertEqual((bad.requests, bad.connections), (1, 1), "warm-up: one request to bad")
        dropped = NFT.dropped()
        NFT.drop(bad.address)
        before = http_totals(gw)
        r, dt, _ = self.until_bad_failed(gw, lambda i: get(gw.port, f"/dark{i}"))
        self.assertGreaterEqual(dt, READ_MS / 1000 - EARLY, "answered before read_timeout_ms")
        self.assertLess(dt, T(READ_MS / 1000 + 2.5))
        self.assertDropped(dropped)
        self.assertEqual((bad.requests, bad.connections), (1, 1),
                         "the request went out on the kept-alive connection and never arrived")
        self.assertDown(gw)
        # a read timeout, named so (it said "Connection timed out", read as a connect's)
        self.assertEvent(gw, rf"host_down app/p/bad {DEAD}:{bad.port} .*{NO_ANSWER}")
        d = delta(http_totals(gw), before)
        self.assertGreaterEqual(d["keepalive_reused"], 1, d)
        return gw, bad, good, r, d

    def test_keepalive_blackholed_get_retried(self):
        gw, bad, good, r, d = self._keepalive_goes_dark(None)
        self.assertBackend(r, "good")
        self.assertEqual((d["retries"], d["gateway_timeout"]), (1, 0),
                         f"timeout is in the default retry.on: {d}")
        for i in range(4):
            self.assertBackend(get(gw.port, f"/after{i}"), "good")
        self.assertDown(gw)

    def test_keepalive_blackholed_504_without_retry_on_timeout(self):
        gw, bad, good, r, d = self._keepalive_goes_dark(["error"])
        self.assertGwError(r, 504, close=False)
        self.assertEqual((d["retries"], d["gateway_timeout"]), (0, 1), f"retry.on [error]: no retry {d}")
        good_before = good.requests
        for i in range(4):
            self.assertBackend(get(gw.port, f"/after{i}"), "good")
        self.assertEqual(good.requests - good_before, 4)
        self.assertDown(gw)

    def test_answer_blackholed_only_host_504(self):
        # A fresh connection: the request reaches the host, then the rule
        # goes in, and only then does the host answer: into the blackhole.
        ruled = threading.Event()
        bad = self.hb("bad", host=DEAD, handler=lambda rec: ruled.wait(T(10)) and None)
        gw = self.gw_with({"bad": bad}, read_timeout_ms=READ_MS)
        before = http_totals(gw)
        dropped = NFT.dropped()
        with hb.connect(gw.port, T(10)) as s:
            t0 = time.monotonic()
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
            bad.wait_requests(1, T(5))
            NFT.drop(bad.address)
            ruled.set()
            r = hb.read_response(s)
            dt = time.monotonic() - t0
        self.assertGwError(r, 504, close=False)
        self.assertGreaterEqual(dt, READ_MS / 1000 - EARLY, "504 before read_timeout_ms")
        self.assertLess(dt, T(READ_MS / 1000 + 2.5))
        wait_until(lambda: bad.responses == 1, T(5), msg="the host answered (into the blackhole)")
        self.assertDropped(dropped)
        self.assertDown(gw)
        d = delta(http_totals(gw), before)
        self.assertEqual((d["gateway_timeout"], d["retries"]), (1, 0), d)

    def test_upload_blackholed_mid_body_504(self):
        # The host goes dark while a POST body streams to it: once the socket
        # buffer is full nothing more is written, send_timeout_ms ends it
        # (read_timeout_ms stays long), and a POST already sent is not retried
        # on the fallback pool's host (a GET would be: timeout is in retry.on).
        bad, good = self.hb("bad", host=DEAD), self.hb("good")
        gw = self.http_gw([pool("p", [host("bad", bad)]), pool("q", [host("good", good)], priority=1)],
                          upstream_opts={"max_fails": 1, "fail_timeout_ms": 60000, "send_timeout_ms": READ_MS})
        before = http_totals(gw)
        size = 64 << 20
        sent = [0]
        with hb.connect(gw.port, T(10)) as s:
            s.sendall(f"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: {size}\r\n\r\n".encode())

            def pump():
                piece = b"u" * 65536
                try:
                    while sent[0] < size:
                        s.sendall(piece)
                        sent[0] += len(piece)
                        time.sleep(0.001)
                except OSError:
                    pass    # gw answered and closed
            th = threading.Thread(target=pump, daemon=True)
            th.start()
            self.addCleanup(th.join, T(5))
            bad.wait_requests(1, T(5))
            time.sleep(0.05)
            NFT.drop(bad.address)
            at_drop = sent[0]
            t0 = time.monotonic()
            r = hb.read_response(s, "POST")
            dt = time.monotonic() - t0
        self.assertLess(at_drop, size // 2, "the rule went in after most of the body: not mid-body")
        self.assertGwError(r, 504)
        self.assertGreaterEqual(dt, READ_MS / 1000 - EARLY, "504 before send_timeout_ms")
        self.assertLess(dt, T(READ_MS / 1000 + 2.5))
        self.assertDown(gw)
        self.assertEqual((bad.requests, bad.responses, good.requests), (1, 0, 0))
        d = delta(http_totals(gw), before)
        self.assertEqual((d["gateway_timeout"], d["retries"]), (1, 0), d)
        # The GET that follows goes to the fallback pool (bad is down).
        self.assertBackend(get(gw.port, "/after"), "good")

    def test_back_after_fail_timeout(self):
        bad, good = self.hb("bad", host=DEAD), self.hb("good")
        NFT.drop(bad.address)
        gw = self.gw_with({"bad": bad, "good": good}, connect_timeout_ms=CONNECT_MS, fail_timeout_ms=FAIL_MS)
        _, _, t0 = self.until_bad_failed(gw, lambda i: get(gw.port, f"/{i}"))
        t_fail = t0 + CONNECT_MS / 1000 - EARLY      # the failure was recorded no earlier
        self.assertDown(gw)
        NFT.undrop(bad.address)
        # The rule is gone but the host stays out for fail_timeout_ms.
        sent = 0
        while sent == 0 or time.monotonic() - t_fail < FAIL_MS / 1000 / 2:
            self.assertBackend(get(gw.port, f"/out{sent}"), "good")
            sent += 1
        self.assertEqual(bad.connections, 0, "a downed host got a connection within fail_timeout_ms")
        # Past fail_timeout_ms it may take a trial, and stays down until one passes.
        time.sleep(max(0.0, t_fail + FAIL_MS / 1000 + 0.1 - time.monotonic()))
        self.assertEqual(self.bad_host(gw)["health"], "down")
        end = time.monotonic() + T(3)  # (the failure's own time is a little after t_fail)
        i = 0
        while not bad.requests and time.monotonic() < end:
            r = get(gw.port, f"/back{i}")
            self.assertEqual(r.status, 200)
            i += 1
            time.sleep(0.02)
        self.assertEqual(bad.requests, 1, "the host serves again")
        self.assertEvent(gw, rf"host_up app/p/bad {DEAD}:{bad.port} \(passive: a connection succeeded\)")
        h = self.bad_host(gw)
        self.assertEqual((h["failures"], h["health"]), (1, "up"), h)

    def test_active_checks_take_it_out_and_back(self):
        bad, good = self.hb("bad", host=DEAD), self.hb("good")
        gw = self.gw_with({"bad": bad, "good": good},
                          health={"type": "tcp", "interval_ms": 100, "timeout_ms": 200, "rise": 2, "fall": 2})
        wait_until(lambda: self.bad_host(gw)["health"] == "up", T(5), msg="bad checked up")
        NFT.drop(bad.address)
        wait_until(lambda: self.bad_host(gw)["health"] == "down", T(5), msg="checks take the blackholed host down")
        self.assertEvent(gw, rf"host_down app/p/bad {DEAD}:{bad.port} \(active: 2 failed check\(s\)")
        before = http_totals(gw)
        for i in range(6):
            self.assertBackend(get(gw.port, f"/{i}"), "good")
        self.assertEqual(bad.requests, 0)
        self.assertEqual(self.bad_host(gw)["failures"], 0, "no client request met the blackhole")
        self.assertEqual(delta(http_totals(gw), before)["retries"], 0)
        NFT.undrop(bad.address)
        wait_until(lambda: self.bad_host(gw)["health"] == "up", T(5), msg="checks bring the host back")
        self.assertEvent(gw, rf"host_up app/p/bad {DEAD}:{bad.port} \(active: 2 passed check\(s\)\)")
        for i in range(4):
            self.assertEqual(get(gw.port, f"/back{i}").status, 200)
            if bad.requests:
                break
        self.assertEqual(bad.requests, 1, "the host serves again")


# ----------------------------------------------------------------------------
# tcp listener (the same HTTP backends, relayed as bytes)

class TcpBlackholeTest(BlackholeCase):

    def test_connect_blackholed_relayed_to_good_host_then_back(self):
        bad, good = self.hb("bad", host=DEAD), self.hb("good")
        NFT.drop(bad.address)
        dropped = NFT.dropped()
        gw = self.tcp_gw({"bad": bad, "good": good}, connect_timeout_ms=CONNECT_MS, fail_timeout_ms=FAIL_MS)
        r, dt, t0 = self.until_bad_failed(gw, lambda i: get(gw.port, f"/{i}"))
        t_fail = t0 + CONNECT_MS / 1000 - EARLY      # the failure was recorded no earlier
        self.assertBackend(r, "good")
        self.assertGreaterEqual(dt, CONNECT_MS / 1000 - EARLY, "relayed before connect_timeout_ms")
        self.assertLess(dt, T(CONNECT_MS / 1000 + 2.5))
        self.assertDown(gw)
        self.assertEqual(bad.connections, 0)
        self.assertDropped(dropped)
        self.assertEvent(gw, rf"host_down app/p/bad {DEAD}:{bad.port} .*{TIMED_OUT}")
        NFT.undrop(bad.address)
        if time.monotonic() - t_fail < FAIL_MS / 1000 / 2:
            self.assertBackend(get(gw.port, "/out"), "good")
        # Past fail_timeout_ms it may take a trial, and stays down until one passes.
        time.sleep(max(0.0, t_fail + FAIL_MS / 1000 + 0.1 - time.monotonic()))
        self.assertEqual(self.bad_host(gw)["health"], "down")
        end = time.monotonic() + T(3)  # (the failure's own time is a little after t_fail)
        i = 0
        while not bad.requests and time.monotonic() < end:
            self.assertEqual(get(gw.port, f"/back{i}").status, 200)
            i += 1
            time.sleep(0.02)
        self.assertEqual(bad.requests, 1, "the host serves again")
        h = self.bad_host(gw)
        self.assertEqual((h["failures"], h["health"]), (1, "up"), h)

    def test_connect_blackholed_only_host_closed(self):
        bad = self.hb("bad", host=DEAD)
        NFT.drop(bad.address)
        gw = self.tcp_gw({"bad": bad}, connect_timeout_ms=CONNECT_MS)
        no_host = self.no_host(gw)
        with hb.connect(gw.port, T(10)) as s:
            t0 = time.monotonic()
            s.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            got = self.read_until_closed(s, T(CONNECT_MS / 1000 + 5))
            dt = time.monotonic() - t0
        self.assertEqual(got, b"", "bytes came from the blackholed host")
        self.assertGreaterEqual(dt, CONNECT_MS / 1000 - EARLY, "closed before connect_timeout_ms")
        self.assertLess(dt, T(CONNECT_MS / 1000 + 2.5))
        self.assertDown(gw)
        self.assertEqual(self.no_host(gw) - no_host, 1, "no host left after the timed-out connect")
        # Down and alone: the next connection is closed without a connect attempt.
        with hb.connect(gw.port, T(10)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            self.assertEqual(self.read_until_closed(s, T(5)), b"")
        self.assertEqual(self.no_host(gw) - no_host, 2)
        self.assertDown(gw)
        self.assertEqual(bad.connections, 0)

    def test_blackholed_after_connect_idle_timeout_not_a_failure(self):
        bad = self.hb("bad", host=DEAD)
        gw = self.tcp_gw({"bad": bad}, idle_timeout_ms=IDLE_MS)
        dropped = NFT.dropped()
        with hb.connect(gw.port, T(10)) as s:
            rd = hb.Reader(s)
            s.sendall(b"GET /1 HTTP/1.1\r\nHost: test\r\n\r\n")
            self.assertBackend(hb.read_response(rd), "bad")
            NFT.drop(bad.address)
            t0 = time.monotonic()
            s.sendall(b"GET /2 HTTP/1.1\r\nHost: test\r\n\r\n")
            got = bytes(rd.buf) + self.read_until_closed(s, T(IDLE_MS / 1000 + 5))
            dt = time.monotonic() - t0
        self.assertEqual(got, b"", "bytes came back through the blackhole")
        self.assertGreaterEqual(dt, IDLE_MS / 1000 - EARLY, "closed before idle_timeout_ms")
        self.assertLess(dt, T(IDLE_MS / 1000 + 2.5))
        self.assertDropped(dropped)
        self.assertEqual(bad.requests, 1, "the second request never arrived")
        # An L4 relay cannot tell a dark peer from a quiet one: not a failure.
        h = self.bad_host(gw)
        self.assertEqual((h["failures"], h["health"]), (0, "up"), h)
        NFT.undrop(bad.address)
        self.assertBackend(get(gw.port, "/3"), "bad")


if __name__ == "__main__":
    gwtest.main()
