#!/usr/bin/python3
"""Cluster: three gw nodes share pools and hosts through a 3-member etcd
cluster started here (Debian's etcd-server, loopback ports, data in the test's
temp dir). gwctl --etcd changes are routed by every node within 1 s; losing one
member changes nothing; losing all of them leaves the nodes serving and saying
so; a node that was cut off resumes from its last revision, or re-lists after
compaction, and ends with exactly etcd's state, each change applied once;
concurrent writers never lose each other's change."""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import GwTestCase, T, host, pool, upstream  # noqa: E402

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def b64(s):
    return base64.b64encode(s.encode()).decode()


class EtcdCluster:
    """Three etcd members on free loopback ports, data dirs under `tmp`."""

    def __init__(self, tmp, n=3):
        self.tmp = tmp
        self.n = n
        self.client = [gwtest.free_port() for _ in range(n)]
        self.peer = [gwtest.free_port() for _ in range(n)]
        self.procs = [None] * n
        self.urls = [f"http://127.0.0.1:{p}" for p in self.client]
        self.initial = ",".join(f"m{i}=http://127.0.0.1:{self.peer[i]}" for i in range(n))
        self.token = f"gwtest-{os.getpid()}-{self.client[0]}"
        self.extra = []  # more flags for every member started from now on

    def start(self, i):
        log = open(os.path.join(self.tmp, f"etcd-m{i}.log"), "ab")
        self.procs[i] = subprocess.Popen(
            [ETCD, "--name", f"m{i}", "--data-dir", os.path.join(self.tmp, f"etcd-m{i}"),
             "--listen-client-urls", self.urls[i], "--advertise-client-urls", self.urls[i],
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
             "--initial-cluster", self.initial, "--initial-cluster-state", "new",
             "--initial-cluster-token", self.token,
             "--heartbeat-interval", "50", "--election-timeout", "500", *self.extra],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=gwtest._child_preexec)
        log.close()

    def start_all(self):
        for i in range(self.n):
            self.start(i)
        self.wait_healthy(range(self.n))

    def kill(self, i):
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(T(10))
        self.procs[i] = None

    def stop_all(self):
        for i in range(self.n):
            self.kill(i)

    def healthy(self, i):
        try:
            with urllib.request.urlopen(self.urls[i] + "/health", timeout=1) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def wait_healthy(self, members):
        for i in members:
            gwtest.wait_until(lambda: self.healthy(i), T(20), interval=0.05, msg=f"etcd member m{i} healthy")

    def post(self, path, body, member=None):
        members = [member] if member is not None else range(self.n)
        last = None
        for i in members:
            if self.procs[i] is None:
                continue
            req = urllib.request.Request(self.urls[i] + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=T(5)) as r:
                    return json.loads(r.read())
            except (OSError, urllib.error.HTTPError) as e:
                last = e
        raise AssertionError(f"no etcd member answered {path}: {last!r}")

    def get_prefix(self, prefix):
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        r = self.post("/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)})
        kvs = {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
               for kv in r.get("kvs", [])}
        return int(r["header"]["revision"]), kvs

    def put(self, key, value):
        return self.post("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def compact(self, revision):
        return self.post("/v3/kv/compaction", {"revision": str(revision), "physical": True})


class DropTxnProxy:
    """An HTTP proxy to one etcd member that forwards every request, but
    answers the first /v3/kv/txn by closing the connection once etcd has
    applied it: an answer lost after the change was made."""

    def __init__(self, target_url, after_txn=None):
        self.target = target_url
        self.after_txn = after_txn  # called once etcd applied the txn whose answer is dropped
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.dropped = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def close(self):
        self.sock.close()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        with c:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            n = next(int(l.split(b":", 1)[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
            while len(body) < n:
                body += c.recv(65536)
            path = head.split(b" ")[1].decode()
            req = urllib.request.Request(self.target + path, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=T(5)) as r:
                    out, status = r.read(), r.status
            except OSError:  # the member stopped (the test's end), or a watch stream outlived T(5)
                return
            if path == "/v3/kv/txn" and self.dropped == 0:
                self.dropped += 1
                if self.after_txn:
                    self.after_txn()
                return  # applied by etcd; the client never hears
            c.sendall(b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                      b"Connection: close\r\n\r\n" % (status, len(out)) + out)


class ClusterTest(GwTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not os.access(ETCD, os.X_OK):
            raise __import__("unittest").SkipTest(f"etcd is not installed ({ETCD} missing; tools/setup.sh installs etcd-server)")

    def setUp(self):
        super().setUp()
        self.etcd = EtcdCluster(self.tmp)
        self.addCleanup(self._stop_etcd)
        self.etcd.start_all()
        self.prefix = f"/gwtest-{os.getpid()}-{self._testMethodName}/"
        self.a = self.backend("a")

    def _stop_etcd(self):
        self.etcd.stop_all()
        if self._failed():
            for i in range(self.etcd.n):
                try:
                    with open(os.path.join(self.tmp, f"etcd-m{i}.log"), "rb") as f:
                        sys.stderr.write(f"--- etcd m{i} ---\n{gwtest.tail(f.read().decode(errors='replace'), 30)}\n")
                except OSError:
                    pass

    # -- nodes
    def node(self, i, n=3):
        urls = self.etcd.urls[i % n:] + self.etcd.urls[:i % n]   # node i prefers member i
        admin_port = gwtest.free_port()
        cfg = self.make_config([pool("primary", [host("a", self.a)])], workers=1,
                               cluster={"etcd": urls, "prefix": self.prefix, "timeout_ms": 1000,
                                        "reconnect_max_ms": 500},
                               admin={"listen": f"127.0.0.1:{admin_port}"})
        gw = gwtest.Gateway(self, cfg, conf_name=f"node{i}.json")
        gw.admin_port = admin_port
        self._gateways.append(gw)
        return gw.start()

    def cluster_metrics(self, gw):
        """The gw_cluster_* samples of the node's GET /metrics: {"state": ..., "revision": N}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{gw.admin_port}/metrics", timeout=T(5)) as r:
            text = r.read().decode()
        states = re.findall(r'(?m)^gw_cluster_state\{state="(\w+)"\} 1$', text)
        rev = re.search(r"(?m)^gw_cluster_revision (\d+)$", text)
        return {"state": states[0] if len(states) == 1 else states, "revision": int(rev.group(1)) if rev else None}

    def nodes(self, n=3):
        gws = [self.node(i) for i in range(n)]
        for gw in gws:
            self.wait_state(gw, "synced")
        return gws

    def cluster(self, gw):
        return gw.status()["cluster"]

    def wait_state(self, gw, state, timeout=None):
        seen = {}

        def ok():
            seen.update(self.cluster(gw) or {})
            return seen.get("state") == state
        try:
            gwtest.wait_until(ok, timeout or T(10), interval=0.05, msg=f"{gw.shm} cluster state {state}")
        except AssertionError as e:
            raise AssertionError(f"{e}; last cluster status {seen}")
        return seen

    def sync_pid(self, gw):
        pid = self.cluster(gw)["sync_pid"]
        self.assertIn(pid, gw.children(), "sync_pid is not a child of the master")
        return pid

    def ctl_etcd(self, *args, member=None, env=None):
        urls = self.etcd.urls if member is None else [self.etcd.urls[member]]
        argv = [gwtest.GWCTL, *args, "--etcd", ",".join(urls), "--prefix", self.prefix]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})

    def etcd_ok(self, *args, member=None):
        p = self.ctl_etcd(*args, member=member)
        out, err = p.communicate(timeout=T(15))
        self.assertEqual(p.returncode, 0, f"gwctl {' '.join(args)} --etcd: {err.strip()}")
        self.assertRegex(out, r"^ok: .* \(etcd revision \d+\)\n$")
        return out

    def assert_one_line_error(self, rc, err, what):
        self.assertEqual(rc, 1, f"{what}: rc={rc} stderr={err!r}")
        lines = [l for l in err.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, f"{what}: expected one stderr line, got {err!r}")
        self.assertTrue(lines[0].startswith("gwctl: "), lines[0])
        return lines[0]

    def routes_to(self, gw, name, tries=4):
        return name in gwtest.names(gw.port, tries)

    def wait_routed(self, gws, name, timeout):
        t0 = time.monotonic()
        pending = list(gws)
        while pending:
            pending = [gw for gw in pending if not self.routes_to(gw, name)]
            if pending and time.monotonic() - t0 > timeout:
                self.fail(f"{name} not routed by {[g.shm for g in pending]} within {timeout:.1f}s")
        return time.monotonic() - t0

    def config_of(self, gw):
        """The shared part of a node's table: pools and hosts (no generation, no counters)."""
        snap = gwtest.table_snapshot(gw.status())
        return snap["upstreams"]

    def assert_same_tables(self, gws):
        want = self.config_of(gws[0])
        for gw in gws[1:]:
            gwtest.wait_until(lambda: self.config_of(gw) == want, T(5), interval=0.05,
                              msg=f"{gw.shm} to hold the table of {gws[0].shm}: {want}")

    def count_events(self, gw, text):
        return sum(1 for t in gw.event_texts() if t == text)

    # ------------------------------------------------------------------ tests

    def test_seed_propagate_and_lose_one_member(self):
        gws = self.nodes()
        rev, kvs = self.etcd.get_prefix(self.prefix)
        self.assertEqual(kvs.get(self.prefix + "upstreams/app"), "{}")
        self.assertEqual(json.loads(kvs[self.prefix + "upstreams/app/pools/primary/hosts/a"]),
                         {"address": self.a.address, "weight": 1, "down": False})
        seeded = sum("seeded etcd with upstream \"app\"" in gw.log_text() for gw in gws)
        self.assertEqual(seeded, 1, "exactly one node seeds an empty prefix")
        for gw in gws:
            self.assertEqual(gw.gwctl("check")[0], 0)
            self.assertTrue(self.routes_to(gw, "a"))

        b = self.backend("b")
        self.etcd_ok("add", "host", "app/primary", "b", b.address, member=0)
        dt = self.wait_routed(gws, "b", T(1.0))
        sys.stderr.write(f"[cluster] add host routed by 3 nodes in {dt * 1000:.0f} ms\n")
        for gw in gws:
            self.assertEvent(gw, rf"^host_added app/primary/b {re.escape(b.address)} weight=1$")

        # Kill node 0's member: node 0 moves to another member; nothing else changes.
        self.etcd.kill(0)
        for gw in gws:
            self.assertTrue(self.routes_to(gw, "a") or self.routes_to(gw, "b"))
        c = self.backend("c")
        self.etcd_ok("add", "host", "app/primary", "c", c.address, member=1)
        dt = self.wait_routed(gws, "c", T(1.0))
        sys.stderr.write(f"[cluster] with a member down, routed by 3 nodes in {dt * 1000:.0f} ms\n")
        for gw in gws:
            st = self.wait_state(gw, "synced")
            self.assertNotEqual(st["endpoint"], self.etcd.urls[0], f"{gw.shm} still on the dead member")
            self.assertEqual(self.count_events(gw, f"host_added app/primary/c {c.address} weight=1"), 1)
        self.assert_same_tables(gws)

    def test_all_members_down_then_resume_without_loss(self):
        gws = self.nodes()
        b = self.backend("b")
        self.etcd.stop_all()
        for gw in gws:
            st = self.wait_state(gw, "disconnected", T(10))
            self.assertTrue(st["error"], st)
            self.assertTrue(st["since"], st)
            self.assertTrue(self.routes_to(gw, "a"), "a node stopped serving when etcd went away")
            _, out, _ = gw.gwctl("status")
            self.assertRegex(out, r"(?m)^cluster: etcd DISCONNECTED since \S+, reconnecting; serving the table of revision \d+")
            self.assertEqual(gw.gwctl("check")[0], 0, "gwctl check must not fail over because of etcd")
            self.assertEqual(self.cluster_metrics(gw)["state"], "disconnected", "GET /metrics: gw_cluster_state")
        # A node restarted while etcd is away serves its state file's table and
        # says it has not synced since it started (it said "the table of
        # revision 0", as if it served nothing from etcd).
        gws[0].stop()
        gws[0].start()
        st = self.wait_state(gws[0], "disconnected", T(10))
        self.assertEqual(st["revision"], 0, st)
        self.assertTrue(self.routes_to(gws[0], "a"), "a node restarted while etcd is away does not serve")
        _, out, _ = gws[0].gwctl("status")
        self.assertRegex(out, r"(?m)^cluster: etcd DISCONNECTED since \S+, reconnecting; serving the local table "
                              r"\(not synced with etcd since gwd started or reloaded\); last error: \S")
        self.assertIn("etcd unreachable, serving the local table (not synced with etcd since gwd started or reloaded)",
                      gws[0].log_text())
        p = self.ctl_etcd("add", "host", "app/primary", "b", b.address)
        out, err = p.communicate(timeout=T(30))
        self.assertIn("etcd", self.assert_one_line_error(p.returncode, err, "gwctl --etcd with etcd down"))

        for i in range(3):
            self.etcd.start(i)
        self.etcd.wait_healthy(range(3))
        for gw in gws:
            self.wait_state(gw, "synced", T(10))
            m = self.cluster_metrics(gw)
            self.assertEqual(m["state"], "synced", "GET /metrics: gw_cluster_state after etcd came back")
            self.assertGreater(m["revision"], 0)

        # Cut node 2 off while changes are made: stop its sync process, kill
        # the member it watches, change things through another member, let
        # it go on. It must reconnect elsewhere and resume from its last
        # revision + 1 (no re-list), applying each change exactly once.
        victim = gws[2]
        relists = self.cluster(victim)["relists"]
        spid = self.sync_pid(victim)
        os.kill(spid, signal.SIGSTOP)
        # member 2, which node 2 prefers, unless it moved off it at start
        watched = self.etcd.urls.index(self.cluster(victim)["endpoint"])
        alive = [i for i in range(self.etcd.n) if i != watched]
        try:
            self.etcd.kill(watched)
            self.etcd_ok("add", "host", "app/primary", "b", b.address, member=alive[0])
            self.etcd_ok("down", "host", "app/primary", "a", member=alive[0])
            self.etcd_ok("add", "pool", "app", "dr", "--priority", "5", member=alive[1])
            self.etcd_ok("set", "pool", "app", "dr", "--priority", "7", "--method", "chash", member=alive[1])
            self.wait_routed(gws[:2], "b", T(1.0))
            self.assertTrue(self.routes_to(victim, "a"), "the stopped node changed its table")
        finally:
            os.kill(spid, signal.SIGCONT)
        self.wait_routed([victim], "b", T(5))
        self.assert_same_tables(gws)
        st = self.wait_state(victim, "synced")
        self.assertEqual(st["relists"], relists, "resumed by re-listing, not from the last revision")
        self.assertEqual(st["revision"], self.etcd.get_prefix(self.prefix)[0])
        for text in (f"host_added app/primary/b {b.address} weight=1",
                     f"host_down app/primary/a {self.a.address} (admin: etcd)",
                     "pool_changed app/dr added priority=5 method=round_robin",
                     "pool_changed app/dr priority=7 method=chash"):
            for gw in gws:
                self.assertEqual(self.count_events(gw, text), 1, f"{gw.shm}: event {text!r} not exactly once")
        self.assertFalse(self.routes_to(victim, "a"), "a is down in etcd")

    def test_compaction_then_relist(self):
        gws = self.nodes()
        b = self.backend("b")
        victim = gws[2]
        relists = self.cluster(victim)["relists"]
        spid = self.sync_pid(victim)
        os.kill(spid, signal.SIGSTOP)
        # The member the victim watches goes: a watch left open would be sent
        # the changes as they happen, and no compaction would touch it. That
        # is member 2, which the victim prefers, unless it moved off it at
        # start (a loaded machine: member 2 slow to answer at first).
        watched = self.etcd.urls.index(self.cluster(victim)["endpoint"])
        alive = [i for i in range(self.etcd.n) if i != watched]
        try:
            self.etcd.kill(watched)
            self.etcd_ok("add", "host", "app/primary", "b", b.address, member=alive[0])
            self.etcd_ok("remove", "host", "app/primary", "a", member=alive[0])
            self.etcd_ok("set", "pool", "app", "primary", "--priority", "3", member=alive[0])
            rev, _ = self.etcd.get_prefix(self.prefix)
            self.etcd.compact(rev)
        finally:
            os.kill(spid, signal.SIGCONT)
        gwtest.wait_until(lambda: self.cluster(victim)["relists"] > relists, T(10), interval=0.05,
                          msg="a re-list after compaction")
        self.assertIn("compacted its history", victim.log_text())
        self.assert_same_tables(gws)
        self.wait_routed([victim], "b", T(2))
        self.assertEqual(gwtest.find_pool(victim.status(), "app/primary")["priority"], 3)
        self.assertIsNone(gwtest.find_host(victim.status(), "app/primary/a"))
        for text in (f"host_added app/primary/b {b.address} weight=1", f"host_removed app/primary/a {self.a.address}",
                     "pool_changed app/primary priority=3 method=round_robin"):
            self.assertEqual(self.count_events(victim, text), 1, f"event {text!r} not exactly once")
        # and the watch goes on after the re-list
        c = self.backend("c")
        self.etcd_ok("add", "host", "app/primary", "c", c.address, member=alive[1])
        self.wait_routed(gws, "c", T(1.0))

    def test_concurrent_writers(self):
        gws = self.nodes(1)
        gw = gws[0]
        slow = {"GW_TEST_ETCD_TXN_DELAY_MS": "400"}   # both read before either writes

        def race(args1, args2):
            p1 = self.ctl_etcd(*args1, env=slow)
            p2 = self.ctl_etcd(*args2, env=slow)
            r = []
            for p in (p1, p2):
                out, err = p.communicate(timeout=T(20))
                r.append((p.returncode, out, err))
            return r

        # the same key: exactly one add lands, the other says why
        r = race(["add", "host", "app/primary", "x", "127.0.0.1:9001"], ["add", "host", "app/primary", "x", "127.0.0.1:9002"])
        ok = [x for x in r if x[0] == 0]
        self.assertEqual(len(ok), 1, r)
        bad = [x for x in r if x[0] != 0][0]
        self.assertIn("already exists", self.assert_one_line_error(bad[0], bad[2], "second add"))
        winner = "127.0.0.1:9001" if r[0][0] == 0 else "127.0.0.1:9002"
        gwtest.wait_until(lambda: (gwtest.find_host(gw.status(), "app/primary/x") or {}).get("address") == winner,
                          T(2), msg=f"x at {winner}")

        # read-modify-write of one pool: one fails clearly, nothing is lost silently
        r = race(["set", "pool", "app", "primary", "--priority", "5"], ["set", "pool", "app", "primary", "--method", "chash"])
        self.assertEqual(sorted(x[0] for x in r), [0, 1], r)
        bad = [x for x in r if x[0] != 0][0]
        self.assertIn("changed by another writer", self.assert_one_line_error(bad[0], bad[2], "second set"))
        want = (5, "round_robin") if r[0][0] == 0 else (0, "chash")
        gwtest.wait_until(lambda: (lambda p: (p["priority"], p["method"]))(gwtest.find_pool(gw.status(), "app/primary")) == want,
                          T(2), msg=f"pool primary {want}")

        # different keys: both land
        r = race(["add", "host", "app/primary", "y", "127.0.0.1:9003"], ["add", "host", "app/primary", "z", "127.0.0.1:9004"])
        self.assertEqual([x[0] for x in r], [0, 0], r)
        for h in ("y", "z"):
            gwtest.wait_until(lambda: gwtest.find_host(gw.status(), f"app/primary/{h}"), T(2), msg=f"host {h}")

        # removing an empty pool while a host is added to it: never a host without its pool
        self.etcd_ok("add", "pool", "app", "tmp")
        r = race(["remove", "pool", "app", "tmp"], ["add", "host", "app/tmp", "t", "127.0.0.1:9005"])
        self.assertEqual(sorted(x[0] for x in r), [0, 1], r)
        bad = [x for x in r if x[0] != 0][0]
        self.assert_one_line_error(bad[0], bad[2], "the losing writer")
        _, kvs = self.etcd.get_prefix(self.prefix)
        has_pool = self.prefix + "upstreams/app/pools/tmp" in kvs
        has_host = self.prefix + "upstreams/app/pools/tmp/hosts/t" in kvs
        self.assertEqual(has_pool, has_host, kvs)
        self.assertEqual(has_pool, r[1][0] == 0)

    def test_gwctl_etcd_set_pool_to_what_it_is_writes_nothing(self):
        """gwctl --etcd set pool with the pool's own priority and method wrote
        the key again: a new etcd revision, and every node committed a new
        generation with a pool_changed event. It says "already", as set host
        --weight and down/up do, and writes nothing."""
        gw = self.nodes(1)[0]
        rev, _ = self.etcd.get_prefix(self.prefix)
        gen = gw.status()["generation"]
        out = self.etcd_ok("set", "pool", "app", "primary", "--priority", "0", "--method", "round_robin")
        self.assertRegex(out, r"^ok: pool app/primary already has priority=0 method=round_robin \(etcd revision \d+\)\n$")
        self.assertEqual(self.etcd.get_prefix(self.prefix)[0], rev, "etcd was written")
        self.etcd_ok("set", "pool", "app", "primary", "--priority", "4")
        gwtest.wait_until(lambda: gwtest.find_pool(gw.status(), "app/primary")["priority"] == 4, T(5),
                          msg="the new priority on the node")
        self.assertEqual(gw.status()["generation"], gen + 1)
        self.assertEqual(self.count_events(gw, "pool_changed app/primary priority=4 method=round_robin"), 1)

    def test_chash_pool_past_the_ring_bound_warns_from_gwctl_etcd_and_the_node(self):
        """A chash pool whose hosts' weights sum past 6,553 (the ring is scaled
        down, and keys no longer map as nginx's): gwd -t, gwctl and the admin
        API warned, gwctl --etcd and the node's etcd sync said nothing. gwctl
        --etcd now makes the change and prints gwctl's warning line (exit 0),
        and the node logs the warning once per state, not on every sync."""
        gw = self.nodes(1)[0]

        def ctl(*args):
            p = self.ctl_etcd(*args)
            out, err = p.communicate(timeout=T(15))
            self.assertEqual(p.returncode, 0, f"gwctl {' '.join(args)} --etcd: {err.strip()}")
            self.assertRegex(out, r"^ok: .* \(etcd revision \d+\)\n$")
            return err

        def bound(total):
            return (f"pool app/primary: chash over a total weight of {total}, more than 6553: its ring is scaled "
                    "down to 1048576 points")

        for i in range(6):
            self.assertEqual(ctl("add", "host", "app/primary", f"h{i}", f"127.0.0.1:{9101 + i}", "--weight", "1000"),
                             "", "round_robin: no warning")
        self.assertEqual(ctl("set", "pool", "app", "primary", "--method", "chash"), "", "6,001: nginx's ring")
        err = ctl("set", "host", "app/primary", "a", "--weight", "600")
        self.assertTrue(err.startswith(f"gwctl: warning: {bound(6600)}"), err)
        self.assertEqual(len(err.splitlines()), 1, err)
        # (Applied before the next change: revisions that come in one watch
        # read are one state, warned of as the last of them leaves it.)
        gwtest.wait_until(lambda: bound(6600) in gw.log_text(), T(10), interval=0.05, msg="the node's warning")
        err = ctl("add", "host", "app/primary", "h6", "127.0.0.1:9107")
        self.assertTrue(err.startswith(f"gwctl: warning: {bound(6601)}"), err)
        err = ctl("set", "pool", "app", "primary", "--priority", "2", "--method", "chash")
        self.assertTrue(err.startswith(f"gwctl: warning: {bound(6601)}"), err)
        _, kvs = self.etcd.get_prefix(self.prefix)
        self.assertEqual(json.loads(kvs[self.prefix + "upstreams/app/pools/primary/hosts/a"])["weight"], 600)
        self.assertIn(self.prefix + "upstreams/app/pools/primary/hosts/h6", kvs)
        gwtest.wait_until(lambda: gwtest.find_pool(gw.status(), "app/primary")["priority"] == 2, T(10),
                          interval=0.05, msg="the pool's priority 2 applied")
        # The node: one line per state. A change that leaves the total as it
        # was (a host down) logs nothing more.
        self.assertEqual(ctl("down", "host", "app/primary", "h0"), "")
        gwtest.wait_until(lambda: gwtest.find_host(gw.status(), "app/primary/h0")["admin"] == "down", T(10),
                          interval=0.05, msg="h0 down applied")
        log = gw.log_text()
        self.assertNotIn(bound(6001), log)
        self.assertEqual(log.count(bound(6600)), 1, log)
        self.assertEqual(log.count(bound(6601)), 1, log)
        # Hosts written under a pool key that is not there yet: a chash pool
        # added over them takes them all.
        for i in range(7):
            self.etcd.put(self.prefix + f"upstreams/app/pools/big/hosts/b{i}",
                          json.dumps({"address": f"127.0.0.1:{9201 + i}", "weight": 1000}))
        err = ctl("add", "pool", "app", "big", "--method", "chash")
        self.assertTrue(err.startswith("gwctl: warning: pool app/big: chash over a total weight of 7000, "), err)
        gwtest.wait_until(lambda: "pool app/big: chash over a total weight of 7000" in gw.log_text(), T(10),
                          interval=0.05, msg="the node's warning about app/big")

    def test_local_changes_refused_and_bad_input(self):
        gw = self.nodes(1)[0]
        rc, _, err = gw.gwctl("add", "host", "app/primary", "x", "127.0.0.1:9001")
        self.assertIn("takes its pools and hosts from etcd", self.assert_one_line_error(rc, err, "local add"))
        cases = [
            (["add", "host", "app/primary", "x", "127.0.0.1:9001", "--etcd", "https://127.0.0.1:1"], "https is not supported"),
            (["add", "host", "app/primary", "x", "127.0.0.1:9001", "--etcd", "http://localhost:2379"], "host names are not resolved"),
            (["add", "host", "app/nope", "x", "127.0.0.1:9001", "--etcd", self.etcd.urls[0], "--prefix", self.prefix], "unknown pool"),
            (["add", "host", "nope/p", "x", "127.0.0.1:9001", "--etcd", self.etcd.urls[0], "--prefix", self.prefix], "unknown upstream"),
            (["remove", "host", "app/primary", "nope", "--etcd", self.etcd.urls[0], "--prefix", self.prefix], "unknown host"),
            (["remove", "pool", "app", "primary", "--etcd", self.etcd.urls[0], "--prefix", self.prefix], "still has 1 host(s)"),
            (["add", "host", "app/primary", "x", "1.2.3", "--etcd", self.etcd.urls[0], "--prefix", self.prefix], "bad address"),
            (["status", "--etcd", self.etcd.urls[0]], "--etcd goes with a change"),
            (["add", "host", "app/primary", "x", "127.0.0.1:9001", "--etcd", f"http://127.0.0.1:{gwtest.free_port()}"], "cannot connect"),
        ]
        for args, want in cases:
            with self.subTest(args=args):
                rc, out, err = gwtest.run_gwctl(*args, timeout=T(15))
                self.assertIn(want, self.assert_one_line_error(rc, err, " ".join(args)))
        # -c CONFIG gives the prefix even with an unrelated error in the file
        # (with a warning), as it gives shm.name; an error in "cluster" refuses.
        with open(gw.conf_path) as f:
            cfg = json.load(f)
        cfg["workers"] = 0
        bad = os.path.join(self.tmp, "bad-workers.json")
        gwtest.write_json(bad, cfg)
        rc, out, err = gwtest.run_gwctl("up", "host", "app/primary", "a", "--etcd", self.etcd.urls[0], "-c", bad,
                                        timeout=T(15))
        self.assertEqual(rc, 0, err)
        self.assertIn(f'using cluster.prefix "{self.prefix}" from it', err)
        cfg["workers"] = 1
        cfg["cluster"]["prefix"] = "no-slash"
        gwtest.write_json(bad, cfg)
        rc, out, err = gwtest.run_gwctl("up", "host", "app/primary", "a", "--etcd", self.etcd.urls[0], "-c", bad,
                                        timeout=T(15))
        self.assertIn("cluster.prefix", self.assert_one_line_error(rc, err, "-c with a bad cluster.prefix"))
        _, kvs = self.etcd.get_prefix(self.prefix)
        self.assertEqual(len(kvs), 3, f"bad input changed etcd: {kvs}")
        # a value no schema accepts is not applied by the nodes, with a warning
        self.etcd.put(self.prefix + "upstreams/app/pools/primary/hosts/bad", '{"address": "nope"}')
        gwtest.wait_until(lambda: "hosts/bad not applied" in gw.log_text(), T(5), msg="a warning about the bad value")
        self.assertTrue(self.routes_to(gw, "a"))

    def test_progress_notifications_move_a_quiet_prefix_past_a_compaction(self):
        """Nothing changes under the prefix while etcd's revision grows (other
        keys) and etcd compacts its history: the node's revision stayed at its
        last change, so after a break its watch resumed from a compacted
        revision and it listed everything again. The watch now asks for
        progress notifications (etcd sends them every 200 ms here) and the
        node's revision follows them, so it resumes after the compaction
        without a re-list."""
        self.etcd.stop_all()
        self.etcd.extra = ["--experimental-watch-progress-notify-interval", "200ms"]
        self.etcd.start_all()
        gw = self.nodes(1)[0]
        st = self.cluster(gw)
        relists, member = st["relists"], self.etcd.urls.index(st["endpoint"])
        for i in range(5):
            r = self.etcd.put(f"/gwtest-{os.getpid()}-other/k{i}", "x")
        rev = int(r["header"]["revision"])
        self.assertGreater(rev, st["revision"])
        gwtest.wait_until(lambda: self.cluster(gw)["revision"] >= rev, T(10), interval=0.05,
                          msg=f"the node's revision to follow etcd's {rev} on a quiet prefix: {self.cluster(gw)}")
        self.etcd.compact(rev)
        self.etcd.kill(member)  # the watch breaks; the node resumes on another member
        gwtest.wait_until(lambda: self.cluster(gw)["endpoint"] != self.etcd.urls[member], T(10), interval=0.05,
                          msg="the node on another member")
        st = self.wait_state(gw, "synced")
        b = self.backend("b")
        self.etcd_ok("add", "host", "app/primary", "b", b.address)
        self.wait_routed([gw], "b", T(5))
        st = self.cluster(gw)
        self.assertEqual(st["relists"], relists, f"listed again after the compaction: {st}")
        self.assertNotIn("compacted its history", gw.log_text())

    def test_watched_values_that_do_not_parse_are_skipped_and_the_watch_goes_on(self):
        """Watched changes whose values do not parse (bad JSON for a host, a
        field of the wrong type for a pool, an unknown field in the upstream
        key): each key is logged once with its name and why, the node keeps
        what it had for it, and the watch goes on (no reconnect, no re-list):
        later good changes are applied. A review took such a value for one
        that made the sync process reconnect and list again in a loop; this
        checks that it does not."""
        gw = self.nodes(1)[0]
        st = self.cluster(gw)
        reconnects, relists = st["reconnects"], st["relists"]
        hosts = self.prefix + "upstreams/app/pools/primary/hosts/"
        self.etcd.put(hosts + "a", '{"address": "127.0.0.1:1", "weight": }')
        self.etcd.put(self.prefix + "upstreams/app/pools/primary", '{"priority": "high"}')
        b = self.backend("b")
        rev = int(self.etcd.put(hosts + "b", json.dumps({"address": b.address, "weight": 1}))["header"]["revision"])
        gwtest.wait_until(lambda: self.cluster(gw)["revision"] >= rev, T(10), interval=0.05,
                          msg=f"revision {rev} applied: {self.cluster(gw)}")
        self.wait_routed([gw], "b", T(5))
        self.assertTrue(self.routes_to(gw, "a"), "a, whose new value does not parse, is kept as it was")
        self.assertEqual(gwtest.find_host(gw.status(), "app/primary/a")["address"], self.a.address)
        self.assertEqual(gwtest.find_pool(gw.status(), "app/primary")["priority"], 0)
        # another revision, read on its own: the warnings are not repeated
        self.etcd.put(hosts + "b", json.dumps({"address": b.address, "weight": 3}))
        gwtest.wait_until(lambda: gwtest.find_host(gw.status(), "app/primary/b")["weight"] == 3, T(10),
                          interval=0.05, msg="b's weight 3 applied")
        log = gw.log_text()
        self.assertEqual(log.count(f"etcd key {hosts}a not applied: weight: invalid JSON at line 1, column 38: "
                                   "expected a value, found '}'; the node keeps the host as it has it"), 1, log)
        self.assertEqual(log.count(f"etcd key {self.prefix}upstreams/app/pools/primary not applied: priority: "
                                   "expected an integer -1000000..1000000; the node keeps the pool as it has it"), 1,
                         log)
        # The upstream key: its pools and hosts stay as the node has them (c
        # is not added) until the key parses again.
        ukey = self.prefix + "upstreams/app"
        self.etcd.put(ukey, '{"newer": 1}')
        c = self.backend("c")
        self.etcd.put(hosts + "c", json.dumps({"address": c.address, "weight": 1}))
        gwtest.wait_until(lambda: f"etcd key {ukey} not applied: newer: unknown key" in gw.log_text(), T(10),
                          interval=0.05, msg="a warning about the upstream key")
        rev = int(self.etcd.put(hosts + "b", json.dumps({"address": b.address, "weight": 2}))["header"]["revision"])
        gwtest.wait_until(lambda: self.cluster(gw)["revision"] >= rev, T(10), interval=0.05,
                          msg=f"revision {rev} applied: {self.cluster(gw)}")
        self.assertIsNone(gwtest.find_host(gw.status(), "app/primary/c"), "c added under an upstream key held")
        self.assertEqual(gwtest.find_host(gw.status(), "app/primary/b")["weight"], 3)
        # the reason is in the status at once (it came only with a later list)
        self.assertTrue(self.cluster(gw)["error"].startswith(
            'upstream "app" stays local: its etcd key holds a value that does not parse (see the log); fix or '
            'delete it (/gwtest-'), self.cluster(gw))  # (the status holds 200 bytes of it)
        self.etcd.put(ukey, "{}")
        self.wait_routed([gw], "c", T(5))
        self.assertEqual(self.cluster(gw)["error"], "")
        self.assertEqual(gwtest.find_host(gw.status(), "app/primary/b")["weight"], 2)
        log = gw.log_text()
        self.assertEqual(log.count(f"etcd key {ukey} not applied: "), 1, log)
        st = self.cluster(gw)
        self.assertEqual((st["state"], st["reconnects"], st["relists"]), ("synced", reconnects, relists), st)

    def test_ids_dot_and_dotdot_from_etcd_are_ignored(self):
        """gwctl --etcd refuses a host or pool id `.` or `..`, but keys put by
        hand with such ids were applied (no admin API URL can name them)."""
        gw = self.nodes(1)[0]
        hosts = self.prefix + "upstreams/app/pools/primary/hosts/"
        b = self.backend("b")
        self.etcd.put(hosts + "..", json.dumps({"address": b.address, "weight": 1}))
        self.etcd.put(self.prefix + "upstreams/app/pools/.", json.dumps({"priority": 1, "method": "round_robin"}))
        rev = int(self.etcd.put(hosts + "b", json.dumps({"address": b.address, "weight": 1}))["header"]["revision"])
        gwtest.wait_until(lambda: self.cluster(gw)["revision"] >= rev, T(10), interval=0.05, msg="b applied")
        self.assertEqual([p["id"] for p in gw.status()["upstreams"][0]["pools"]], ["primary"])
        self.assertIsNone(gwtest.find_host(gw.status(), "app/primary/.."))
        log = gw.log_text()
        self.assertIn(f'etcd key {hosts}.. ignored: host id ".." must not be "." or ".."', log)
        self.assertIn(f'etcd key {self.prefix}upstreams/app/pools/. ignored: pool id "." must not be', log)

    def test_a_change_one_node_cannot_hold_holds_back_no_other_upstream(self):
        """A node with room for 4 hosts: etcd's upstream app grows to 4 hosts
        (5 with api's), which it cannot hold. Every later change, also an
        urgent `down` in another upstream, was left unapplied on that node,
        which said "synced" with the revision it had. Each upstream is now
        applied on its own: api's `down` goes in, app keeps what it has, and
        the status names app and why."""
        ups = [upstream("app", [pool("primary", [host("a", self.a)])]),
               upstream("api", [pool("main", [host("b", self.backend("b"))])])]
        cfgs = []
        for i, max_hosts in enumerate((64, 4)):
            cfg = self.make_config([], workers=1, shm={"max_hosts": max_hosts},
                                   cluster={"etcd": self.etcd.urls, "prefix": self.prefix, "timeout_ms": 1000,
                                            "reconnect_max_ms": 500})
            cfg["upstreams"] = json.loads(json.dumps(ups))
            cfgs.append(cfg)
        big = self.gateway(cfgs[0])
        self.wait_state(big, "synced")
        small = self.gateway(cfgs[1])
        self.wait_state(small, "synced")
        for i in range(3):
            self.etcd_ok("add", "host", "app/primary", f"h{i}", f"127.0.0.{i + 2}:9")
        self.etcd_ok("down", "host", "api/main", "b")
        gwtest.wait_until(lambda: gwtest.find_host(small.status(), "api/main/b")["admin"] == "down", T(10),
                          interval=0.05, msg="api's down applied on the small node")
        self.assertEqual(gwtest.find_host(big.status(), "app/primary/h2")["admin"], "up")
        self.assertIsNone(gwtest.find_host(small.status(), "app/primary/h2"))
        st = self.cluster(small)
        self.assertEqual(st["state"], "synced")
        self.assertRegex(st["error"], r"^etcd revision \d+ not applied to upstream\(s\) app: host table is full "
                         r"\(shm.max_hosts = 4\); the node keeps what it has for them and applies the others$")
        # logged once, not on each retry
        time.sleep(2.5)
        self.assertEqual(small.log_text().count("not applied to upstream(s) app"), 1, small.log_text())
        # room again: everything goes in, and the error goes
        self.etcd_ok("remove", "host", "app/primary", "h2")
        self.etcd_ok("remove", "host", "app/primary", "h1")
        gwtest.wait_until(lambda: gwtest.find_host(small.status(), "app/primary/h0") is not None, T(10),
                          interval=0.05, msg="app applied on the small node")
        gwtest.wait_until(lambda: self.cluster(small)["error"] == "", T(5), interval=0.05, msg="the error cleared")

    def test_a_member_without_a_leader_is_not_synced(self):
        """The node's member is up but has no leader (the two others
        stopped): it confirms a watch that brings nothing. The node said
        "synced" and counted a reconnect every few seconds; the probe that
        found the member cut off came only after. It now asks for a quorum
        read before it says synced."""
        gw = self.node(0)
        self.wait_state(gw, "synced")
        reconnects = self.cluster(gw)["reconnects"]
        for i in (1, 2):
            os.kill(self.etcd.procs[i].pid, signal.SIGSTOP)
        try:
            self.wait_state(gw, "disconnected", T(15))
            seen = set()
            t_end = time.monotonic() + 6
            while time.monotonic() < t_end:
                seen.add(self.cluster(gw)["state"])
                time.sleep(0.1)
            self.assertEqual(seen, {"disconnected"})
            self.assertEqual(self.cluster(gw)["reconnects"], reconnects)
        finally:
            for i in (1, 2):
                os.kill(self.etcd.procs[i].pid, signal.SIGCONT)
        self.wait_state(gw, "synced", T(20))

    def test_an_outage_of_every_member_is_logged_once(self):
        """With every member down, each round of the backoff logged a
        "cannot connect ...; trying NEXT" line per member for the whole
        outage (1,400 lines an hour). It is said once."""
        gw = self.node(0)
        self.wait_state(gw, "synced")
        for i in range(3):
            self.etcd.kill(i)
        self.wait_state(gw, "disconnected", T(10))
        time.sleep(1)
        before = gw.log_text()
        time.sleep(4)  # several backoff rounds at reconnect_max_ms 500
        during = gw.log_text()[len(before):]
        self.assertNotIn("; trying http", during)
        self.assertNotIn("etcd unreachable", during)

    def test_etcd_back_at_a_lower_revision_is_listed_again(self):
        """etcd (one member here) comes back with its data dir wiped: its
        revision starts over, below what the node applied. The node used to
        resume its watch at its old revision, say "synced", and never see a
        change made below it (a host added and acknowledged by gwctl --etcd
        was never routed). Now it lists again."""
        self.etcd.stop_all()
        solo = os.path.join(self.tmp, "solo")
        os.makedirs(solo)
        self.etcd = EtcdCluster(solo, n=1)
        self.etcd.start_all()
        gw = self.node(0, n=1)
        self.wait_state(gw, "synced")
        for i in range(6):
            self.etcd_ok("down" if i % 2 == 0 else "up", "host", "app/primary", "a")
        # gwctl returns once etcd has the change; the node applies it a moment later.
        rev, _ = self.etcd.get_prefix(self.prefix)
        self.assertGreater(rev, 4)
        gwtest.wait_until(lambda: self.cluster(gw)["revision"] == rev, T(5), interval=0.05,
                          msg=f"the node to apply etcd revision {rev}")
        self.etcd.kill(0)
        shutil.rmtree(os.path.join(solo, "etcd-m0"))
        self.etcd.start(0)
        self.etcd.wait_healthy([0])
        # The node lists the empty prefix again (and seeds it from its table).
        gwtest.wait_until(lambda: "below the" in gw.log_text(), T(10), msg="the rewound etcd noticed")
        self.wait_state(gw, "synced")
        b = self.backend("b")
        self.etcd_ok("add", "host", "app/primary", "b", b.address)
        self.wait_routed([gw], "b", T(5))

    def test_etcd_created_anew_past_the_nodes_revision_is_listed_again(self):
        """etcd (one member here) is wiped and created anew (another cluster:
        a new data dir and cluster token), then written past the revision the
        node applied before it reconnects. Its revision says nothing is
        missing; the node used to resume its watch at its old revision and
        keep serving the old cluster's hosts for ever, never seeing the new
        cluster's keys (written below that revision). The header's cluster_id
        changed: the node now drops its revision and lists the new cluster."""
        self.etcd.stop_all()
        solo = os.path.join(self.tmp, "solo")
        os.makedirs(solo)
        self.etcd = EtcdCluster(solo, n=1)
        self.etcd.start_all()
        gw = self.node(0, n=1)
        self.wait_state(gw, "synced")
        for i in range(6):
            self.etcd_ok("down" if i % 2 == 0 else "up", "host", "app/primary", "a")
        old = self.etcd.post("/v3/kv/range", {"key": b64(self.prefix)})["header"]
        old_rev = int(old["revision"])
        gwtest.wait_until(lambda: self.cluster(gw)["revision"] == old_rev, T(5), interval=0.05,
                          msg=f"the node to apply etcd revision {old_rev}")
        self.assertTrue(self.routes_to(gw, "a"))
        self.etcd.kill(0)
        shutil.rmtree(os.path.join(solo, "etcd-m0"))
        # The new cluster is written on another client port first, so the node
        # cannot see it before its revision is past the node's.
        self.etcd.token += "-anew"
        url = self.etcd.urls[0]
        self.etcd.urls[0] = f"http://127.0.0.1:{gwtest.free_port()}"
        self.etcd.start(0)
        self.etcd.wait_healthy([0])
        b = self.backend("b")
        self.etcd.put(self.prefix + "upstreams/app/pools/primary", '{"priority": 0, "method": "round_robin"}')
        self.etcd.put(self.prefix + "upstreams/app/pools/primary/hosts/b",
                      json.dumps({"address": b.address, "weight": 1, "down": False}))
        self.etcd.put(self.prefix + "upstreams/app", "{}")
        while True:  # past the node's revision with keys the node does not watch
            new = self.etcd.put(f"/gwtest-pad-{os.getpid()}", "x")["header"]
            if int(new["revision"]) >= old_rev + 3:
                break
        self.assertNotEqual(new["cluster_id"], old["cluster_id"])
        self.etcd.kill(0)
        self.etcd.urls[0] = url
        self.etcd.start(0)
        self.etcd.wait_healthy([0])
        self.wait_state(gw, "synced")
        hosts = lambda: [h[0] for _, pools in self.config_of(gw) for p in pools for h in p[3]]  # noqa: E731
        gwtest.wait_until(lambda: hosts() == ["b"], T(10), interval=0.05,
                          msg="the node to hold the new cluster's hosts only (b)")
        self.wait_routed([gw], "b", T(5))
        self.assertFalse(self.routes_to(gw, "a"))
        self.assertIn("belongs to another cluster", gw.log_text())
        self.assertGreaterEqual(self.cluster(gw)["revision"], old_rev + 3)

    def _fake_endpoint(self, status, forward_to=None):
        """An HTTP endpoint on a free loopback port that answers every POST
        with `status` (a proxy in front, a member without the v3 gateway, a
        rate limit), or with `forward_to` every POST but a txn is forwarded
        there; returns its URL and the list of paths it was asked."""
        import http.server
        asked = []

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                asked.append(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if forward_to and self.path != "/v3/kv/txn":
                    req = urllib.request.Request(forward_to + self.path, data=body,
                                                 headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(req, timeout=T(5)) as r:
                        out = r.read()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    return
                self.send_error(status)

            def log_message(self, *a):
                pass
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.addCleanup(srv.server_close)
        self.addCleanup(srv.shutdown)
        return f"http://127.0.0.1:{srv.server_address[1]}", asked

    def test_gwctl_etcd_tries_the_next_endpoint_on_404_and_429(self):
        """An endpoint listed first that answers 404 (no v3 gateway there) or
        429 (a rate limit) used to end gwctl --etcd with that error, though
        the next endpoint was a working etcd. It now tries the next one (its
        txns are guarded by compares, so sending one again is safe), and when
        every endpoint fails says why for each on one line."""
        gw = self.node(0)
        self.wait_state(gw, "synced")
        f404, asked404 = self._fake_endpoint(404)
        f429, asked429 = self._fake_endpoint(429)
        b, c = self.backend("b"), self.backend("c")
        for fake, asked, host_id, addr in ((f404, asked404, "b", b.address), (f429, asked429, "c", c.address)):
            argv = [gwtest.GWCTL, "add", "host", "app/primary", host_id, addr, "--etcd",
                    f"{fake},{self.etcd.urls[0]}", "--prefix", self.prefix]
            p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=T(15))
            self.assertEqual(p.returncode, 0, f"{fake}: {p.stderr!r}")
            self.assertRegex(p.stdout, rf"^ok: add host app/primary/{host_id} .* \(etcd revision \d+\)\n$")
            self.assertIn("/v3/kv/range", asked)
        _, kvs = self.etcd.get_prefix(self.prefix)
        self.assertIn(self.prefix + "upstreams/app/pools/primary/hosts/b", kvs)
        self.assertIn(self.prefix + "upstreams/app/pools/primary/hosts/c", kvs)
        self.wait_routed([gw], "b", T(5))
        # A txn refused with 404 did not run: when its compares then fail on
        # another writer's change, nothing of this one's was applied, and gwctl
        # says so (not that its change may have been applied first).
        txn404, asked_txn = self._fake_endpoint(404, forward_to=self.etcd.urls[0])
        argv = [gwtest.GWCTL, "down", "host", "app/primary", "c", "--etcd", f"{txn404},{self.etcd.urls[0]}",
                "--prefix", self.prefix]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL, env={**os.environ, "GW_TEST_ETCD_TXN_DELAY_MS": "1500"})
        time.sleep(0.5)   # it has read the key, and waits before its txn
        self.etcd_ok("set", "host", "app/primary", "c", "--weight", "3")
        _, err = p.communicate(timeout=T(15))
        line = self.assert_one_line_error(p.returncode, err, "a txn after a 404 whose compares fail")
        self.assertIn("nothing was changed", line)
        self.assertIn("/v3/kv/txn", asked_txn)
        # Every endpoint fails: one line names each one's error.
        argv = [gwtest.GWCTL, "remove", "host", "app/primary", "b", "--etcd", f"{f404},{f429}",
                "--prefix", self.prefix]
        p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=T(15))
        line = self.assert_one_line_error(p.returncode, p.stderr, "every endpoint failing")
        self.assertIn(f"etcd {f404}: HTTP 404: ", line)
        self.assertIn(f"etcd {f429}: HTTP 429: ", line)
        self.assertIn(self.prefix + "upstreams/app/pools/primary/hosts/b", self.etcd.get_prefix(self.prefix)[1])

    def test_gwctl_etcd_change_whose_answer_was_lost(self):
        """etcd applied the txn, and its answer was lost: gwctl sends it to the
        next member, where its compares fail on its own write. It used to say
        "nothing was changed" (or "already exists") for a change it made; it
        now finds its change in etcd and reports it done."""
        gw = self.node(0)
        self.wait_state(gw, "synced")
        b = self.backend("b")
        self.etcd_ok("add", "host", "app/primary", "b", b.address)
        for args, key_after in ((("remove", "host", "app/primary", "b"), None),
                                (("add", "host", "app/primary", "c", f"{gwtest.LOOPBACK}:9"), "c")):
            proxy = DropTxnProxy(self.etcd.urls[0])
            self.addCleanup(proxy.close)
            argv = [gwtest.GWCTL, *args, "--etcd", f"{proxy.url},{self.etcd.urls[1]}", "--prefix", self.prefix]
            p = subprocess.run(argv, capture_output=True, text=True, timeout=T(30), stdin=subprocess.DEVNULL)
            self.assertEqual(proxy.dropped, 1, "the proxy dropped no answer")
            self.assertEqual(p.returncode, 0, f"gwctl {' '.join(args)}: {p.stderr.strip()}")
            self.assertRegex(p.stdout, r"^ok: .* \(etcd revision \d+\)\n$")
        _, kvs = self.etcd.get_prefix(self.prefix)
        self.assertNotIn(self.prefix + "upstreams/app/pools/primary/hosts/b", kvs)
        self.assertIn(self.prefix + "upstreams/app/pools/primary/hosts/c", kvs)

    def test_gwctl_etcd_answer_lost_then_another_writer(self):
        """The answer to gwctl's txn is lost and another writer changes the key
        before gwctl sends it again: gwctl cannot tell whose change came first
        and says so, in one line that names a check that works (it named
        `gwctl status --etcd`, which gwctl refuses)."""
        gw = self.node(0)
        self.wait_state(gw, "synced")
        key = self.prefix + "upstreams/app/pools/primary/hosts/a"
        other = json.dumps({"address": self.a.address, "weight": 2, "down": False})
        proxy = DropTxnProxy(self.etcd.urls[0], after_txn=lambda: self.etcd.put(key, other))
        self.addCleanup(proxy.close)
        argv = [gwtest.GWCTL, "down", "host", "app/primary", "a", "--etcd", f"{proxy.url},{self.etcd.urls[1]}",
                "--prefix", self.prefix]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=T(30), stdin=subprocess.DEVNULL)
        self.assertEqual(proxy.dropped, 1, "the proxy dropped no answer")
        line = self.assert_one_line_error(p.returncode, p.stderr, "down host after a lost answer and another writer")
        self.assertIn("may have been applied before that writer's", line)
        self.assertNotIn("--etcd", line.split("check ", 1)[1], f"the check it names is refused by gwctl: {line}")
        self.assertEqual(self.etcd.get_prefix(self.prefix)[1][key], other)

    def test_gwctl_etcd_refuses_hosts_under_a_missing_upstream_key(self):
        """The upstream key alone deleted: every node ignores that upstream's
        pools and hosts, so gwctl --etcd must not acknowledge a host added
        there (it said ok, and no node ever routed it)."""
        gw = self.node(0)
        self.wait_state(gw, "synced")
        self.etcd.post("/v3/kv/deleterange", {"key": b64(self.prefix + "upstreams/app")})
        p = self.ctl_etcd("add", "host", "app/primary", "b", f"{gwtest.LOOPBACK}:9")
        out, err = p.communicate(timeout=T(15))
        line = self.assert_one_line_error(p.returncode, err, "add host under a missing upstream key")
        self.assertIn('unknown upstream "app" in etcd', line)

        # The upstream key deleted between gwctl's read and its txn: the txn
        # compares it, for `remove pool` too (it said ok, and no node applied it).
        self.etcd.put(self.prefix + "upstreams/app", "{}")
        self.etcd_ok("add", "pool", "app", "tmp")
        p = self.ctl_etcd("remove", "pool", "app", "tmp", env={"GW_TEST_ETCD_TXN_DELAY_MS": "2000"})
        time.sleep(1.0)  # gwctl has read the keys and waits
        self.etcd.post("/v3/kv/deleterange", {"key": b64(self.prefix + "upstreams/app")})
        out, err = p.communicate(timeout=T(15))
        line = self.assert_one_line_error(p.returncode, err, "remove pool while its upstream key is deleted")
        # The key named is the one that changed: the upstream's, not the pool's.
        self.assertIn(f"etcd key {self.prefix}upstreams/app was changed by another writer", line)
        self.assertIn(self.prefix + "upstreams/app/pools/tmp", self.etcd.get_prefix(self.prefix)[1])

        # An upstream key whose value the nodes do not accept (a newer gw's
        # field) has them ignore the upstream too: no change under it is
        # acknowledged (gwctl said ok, and no node applied it).
        log_at = len(gw.log_text())
        self.etcd.put(self.prefix + "upstreams/app", '{"retries": 1}')
        gwtest.wait_until(lambda: "upstreams/app not applied: retries: unknown key; the node keeps the upstream's "
                          "pools and hosts as it has them" in gw.log_text(), T(5), msg="the node ignoring the upstream key")
        # One warning: its pools and hosts were each said to lack a key etcd holds.
        self.assertNotIn("is missing", gw.log_text()[log_at:])
        for args in (("add", "host", "app/primary", "b", f"{gwtest.LOOPBACK}:9"), ("add", "pool", "app", "p2"),
                     ("down", "host", "app/primary", "a")):
            with self.subTest(args=args):
                p = self.ctl_etcd(*args)
                out, err = p.communicate(timeout=T(15))
                line = self.assert_one_line_error(p.returncode, err, f"{args} under an invalid upstream value")
                self.assertIn("holds an invalid value (retries: unknown key): no node applies a change under it", line)
        self.assertNotIn(self.prefix + "upstreams/app/pools/p2", self.etcd.get_prefix(self.prefix)[1])

    def test_superseded_sync_process_stops_committing_and_stops(self):
        """A reload (or a binary upgrade) resets the segment's sync_pid for the
        sync process it starts, and only then stops the old one. An etcd change
        the old one read in between had it retry its commit for ever (it found
        sync_pid not its own, gave up the step and tried again), holding the
        writer lock over and over and never reading its stop signal. Here the
        reset is made by hand: the process must commit nothing, and stop on
        SIGQUIT; the master then starts another, which applies the change."""
        gw = self.node(0)
        self.wait_state(gw, "synced")
        old = self.sync_pid(gw)
        # ClusterRuntime (64-byte aligned) opens with state (kClusterSynced = 2)
        # and sync_pid: find that pair in the header and zero sync_pid, as the
        # master's reset_cluster_state() does.
        path = f"/dev/shm/{gw.shm}"
        with open(path, "r+b") as f:
            head = f.read(64 * 1024)
            want = struct.pack("<Ii", 2, old)
            at = [o for o in range(0, len(head) - 8, 64) if head[o:o + 8] == want]
            self.assertEqual(len(at), 1, f"ClusterRuntime not found once in {path}: {at}")
            f.seek(at[0] + 4)
            f.write(struct.pack("<i", 0))
        gen = gw.status()["generation"]
        b = self.backend("b")
        self.etcd_ok("add", "host", "app/primary", "b", b.address)
        gwtest.wait_until(lambda: "applies nothing more" in gw.log_text(), T(5), interval=0.05,
                          msg="the old sync process to see it was superseded")
        self.assertEqual(gw.status()["generation"], gen, "a superseded sync process committed")
        os.kill(old, signal.SIGQUIT)
        gwtest.wait_until(lambda: old not in gw.children(), T(5), interval=0.05,
                          msg=f"the superseded sync process (pid {old}) to stop on SIGQUIT")
        gwtest.wait_until(lambda: self.cluster(gw)["sync_pid"] not in (0, old), T(10), interval=0.05,
                          msg="a new sync process")
        self.wait_routed([gw], "b", T(10))

    def test_orphan_keys(self):
        """Keys under an upstream without its upstream key (a seed that
        stopped halfway): the upstream stays local, and gwctl status says so
        and what to do in full (the text was cut at the status's 183 bytes
        before the remedy); deleting the keys and reloading a node seeds it."""
        # A long prefix (up to 128 bytes): the status cuts the text, never the remedy.
        self.prefix = f"/gwtest-{os.getpid()}-{'orphan' * 16}/"
        orphan = self.prefix + "upstreams/app/pools/primary"
        # Not what this node would write (its pool has priority 0): keys of
        # another table, which a node never takes over.
        self.etcd.put(orphan, '{"priority": 7, "method": "round_robin"}')
        gw = self.node(0)
        st = self.wait_state(gw, "synced")
        self.assertTrue(st["error"].startswith('upstream "app" stays local: etcd has keys under it but not its key; '
                                               'delete them, then reload a node, to seed it again ('), st)
        self.assertTrue(self.prefix.startswith(st["error"].split(" (", 1)[1]), st)
        self.etcd.post("/v3/kv/deleterange", {"key": b64(orphan)})
        gw.send_signal(signal.SIGHUP)
        gwtest.wait_until(lambda: self.prefix + "upstreams/app" in self.etcd.get_prefix(self.prefix)[1], T(10),
                          interval=0.05, msg="the upstream seeded after the reload")
        gwtest.wait_until(lambda: self.cluster(gw)["error"] == "", T(10), interval=0.05, msg="the reason cleared")

    def test_reasons_of_two_local_upstreams(self):
        """Two upstreams stay local (keys under each, not their keys). The
        status kept the reason of one of them only, and dropped it once that
        one was in etcd after all, so it said nothing while the other still
        stayed local. It now keeps a reason per upstream until etcd has it."""
        for u in ("app", "web"):
            self.etcd.put(self.prefix + f"upstreams/{u}/pools/primary", '{"priority": 7, "method": "round_robin"}')
        admin_port = gwtest.free_port()
        cfg = self.make_config([pool("primary", [host("a", self.a)])], workers=1,
                               cluster={"etcd": self.etcd.urls, "prefix": self.prefix, "timeout_ms": 1000,
                                        "reconnect_max_ms": 500},
                               admin={"listen": f"127.0.0.1:{admin_port}"})
        cfg["upstreams"].append(upstream("web", [pool("primary", [host("w", self.a)])]))
        gw = gwtest.Gateway(self, cfg, conf_name="two.json")
        self._gateways.append(gw)
        gw.start()
        st = self.wait_state(gw, "synced")
        self.assertIn("stays local", st["error"], st)
        # web's key comes (another node seeded it): web is taken from etcd,
        # app still stays local, and the status still says so.
        self.etcd.put(self.prefix + "upstreams/web", "{}")
        gwtest.wait_until(lambda: (gwtest.find_pool(gw.status(), "web/primary") or {}).get("priority") == 7, T(5),
                          interval=0.05, msg="web's pool from etcd")
        self.assertEqual(gwtest.find_pool(gw.status(), "app/primary")["priority"], 0, "app is local")
        st = self.cluster(gw)
        self.assertTrue(st["error"].startswith('upstream "app" stays local: etcd has keys under it but not its key'),
                        st)

    def test_upstream_key_that_does_not_parse_is_not_seeded_over(self):
        """The upstream key is there with a value this gw does not parse (a
        newer gw's field). The node took the upstream for missing and tried
        to seed it: its txn failed on the key, and it logged that another node
        had seeded it meanwhile, which none had; with keys under the key it
        said "etcd has keys under it but not its key". It now says what it is:
        the upstream stays local because its key's value does not parse."""
        ukey = self.prefix + "upstreams/app"
        self.etcd.put(ukey, '{"newer": 1}')
        gw = self.node(0)
        st = self.wait_state(gw, "synced")
        self.assertNotIn("by another node", gw.log_text())
        self.assertTrue(st["error"].startswith('upstream "app" stays local: its etcd key holds a value that does not '
                                               'parse'), st)
        self.assertEqual(self.etcd.get_prefix(self.prefix)[1], {ukey: '{"newer": 1}'}, "etcd was changed")
        self.assertTrue(self.routes_to(gw, "a"))
        # fixed in etcd: the upstream is etcd's, the reason goes
        self.etcd.put(ukey, "{}")
        gwtest.wait_until(lambda: self.cluster(gw)["error"] == "", T(5), interval=0.05, msg="the reason cleared")

    def test_reload_warning_names_etcd_not_gwctl(self):
        """A reload of a node whose etcd table differs from its config warned
        that the pools and hosts "come from the runtime state (gwctl changes
        win over the config)" and to "make such changes with gwctl, or ...
        delete the state file": on a clustered node gwctl's local changes are
        refused and a deleted state file changes nothing (etcd wins). The
        warning now says that they come from etcd and to use gwctl --etcd."""
        gw = self.nodes(1)[0]
        b = self.backend("b")
        self.etcd_ok("add", "host", "app/primary", "b", b.address)
        self.wait_routed([gw], "b", T(5))
        gw.send_signal(signal.SIGHUP)
        gwtest.wait_until(lambda: 'reload: upstream "app"' in gw.log_text(), T(10), interval=0.05,
                          msg="the reload's warning about app")
        line = next(l for l in gw.log_text().splitlines() if 'reload: upstream "app"' in l)
        self.assertIn("come from etcd", line)
        self.assertIn("gwctl --etcd", line)
        self.assertNotIn("gwctl changes win", line)
        self.assertNotIn("delete the state file", line)
        self.wait_routed([gw], "b", T(5))

    def test_own_partial_seed_is_finished(self):
        """Keys under an upstream without its upstream key that hold exactly
        what this node would write (its own seed, cut off between two txns by
        an etcd outage or a stop): the next list finishes the seed. It used to
        leave the upstream local on every node until an operator deleted the
        keys by hand."""
        self.etcd.put(self.prefix + "upstreams/app/pools/primary", '{"priority": 0, "method": "round_robin"}')
        gw = self.node(0)
        st = self.wait_state(gw, "synced")
        self.assertEqual(st.get("error", ""), "", st)
        _, kvs = self.etcd.get_prefix(self.prefix)
        self.assertEqual(kvs.get(self.prefix + "upstreams/app"), "{}")
        self.assertIn(self.prefix + "upstreams/app/pools/primary/hosts/a", kvs)
        self.assertIn("finishing a seed that had stopped halfway", gw.log_text())
        self.etcd_ok("down", "host", "app/primary", "a")
        gwtest.wait_until(lambda: gwtest.find_host(gw.status(), "app/primary/a")["admin"] == "down", T(5),
                          msg="a down from etcd")
        # gwctl set host --weight --etcd: the node applies the new weight
        self.etcd_ok("set", "host", "app/primary", "a", "--weight", "4")
        gwtest.wait_until(lambda: gwtest.find_host(gw.status(), "app/primary/a")["weight"] == 4, T(5),
                          msg="a's weight from etcd")
        out = self.etcd_ok("set", "host", "app/primary", "a", "--weight", "4")
        self.assertIn("already has weight 4", out)
        self.assertIn('"weight": 4', self.etcd.get_prefix(self.prefix)[1][self.prefix + "upstreams/app/pools/primary/hosts/a"])

    def big_node(self, etcd_urls, name="big.json"):
        hosts = [host("a", self.a)] + [host(f"h{i:03d}", f"{gwtest.LOOPBACK}:{20000 + i}") for i in range(130)]
        admin_port = gwtest.free_port()
        cfg = self.make_config([pool("primary", hosts)], workers=1, shm={"max_hosts": 256},
                               cluster={"etcd": etcd_urls, "prefix": self.prefix, "timeout_ms": 1000,
                                        "reconnect_max_ms": 500},
                               admin={"listen": f"127.0.0.1:{admin_port}"})
        gw = gwtest.Gateway(self, cfg, conf_name=name)
        gw.admin_port = admin_port
        self._gateways.append(gw)
        return gw.start()

    def test_seed_txn_whose_answer_was_lost(self):
        """The first txn of a seed in several txns is applied by etcd and its
        answer lost: the node sends it to the next member, where its compare
        ("nothing under the upstream yet") fails on its own puts. The seed
        stopped there, logged as another node's, and the upstream stayed local
        on every node. It now reads its puts back and goes on."""
        proxy = DropTxnProxy(self.etcd.urls[0])
        self.addCleanup(proxy.close)
        gw = self.big_node([proxy.url, self.etcd.urls[1]])
        st = self.wait_state(gw, "synced")
        self.assertEqual(proxy.dropped, 1, "the proxy dropped no answer")
        self.assertEqual(st.get("error", ""), "", st)
        _, kvs = self.etcd.get_prefix(self.prefix)
        self.assertEqual(kvs.get(self.prefix + "upstreams/app"), "{}")
        self.assertEqual(sum(k.startswith(self.prefix + "upstreams/app/pools/primary/hosts/") for k in kvs), 131)
        self.assertNotIn("by another node", gw.log_text())

    def test_an_upstream_larger_than_one_txn_is_seeded(self):
        """130 hosts: more puts than etcd takes in one txn (--max-txn-ops,
        128 by default). The seed used to fail (logged only), and then the
        upstream could be changed neither locally nor with --etcd. It now goes
        in batches, the upstream key last."""
        gw = self.big_node(self.etcd.urls)
        st = self.wait_state(gw, "synced")
        self.assertEqual(st.get("error", ""), "", st)
        _, kvs = self.etcd.get_prefix(self.prefix)
        self.assertIn(self.prefix + "upstreams/app", kvs)
        self.assertEqual(sum(k.startswith(self.prefix + "upstreams/app/pools/primary/hosts/") for k in kvs), 131)
        self.etcd_ok("down", "host", "app/primary", "h000")
        gwtest.wait_until(lambda: gwtest.find_host(gw.status(), "app/primary/h000")["admin"] == "down", T(5),
                          msg="h000 down from etcd")



class FakeEtcdMember:
    """A stand-in for one etcd member's JSON gateway: lists `kvs`, accepts a
    watch (created, then silent), answers the sync process's probes (count
    only ranges) with 503 "no leader" while `fail_probes` > 0, and ends its
    watch streams on demand."""

    def __init__(self, kvs, fail_probes=0, end_watch_after_failed_probes=None):
        self.kvs = kvs
        self.fail_probes = fail_probes
        self.end_watch_after = end_watch_after_failed_probes
        self.failed_probes = 0
        self.watches = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._loop, daemon=True).start()

    def close(self):
        self.sock.close()
        for c in self.watches:
            c.close()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _answer(c, status, body):
        out = json.dumps(body).encode()
        c.sendall(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n" % (status, len(out)) + out)

    def _serve(self, c):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                return c.close()
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        n = next(int(l.split(b":", 1)[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
        while len(body) < n:
            body += c.recv(65536)
        path = head.split(b" ")[1].decode()
        req = json.loads(body)
        header = {"cluster_id": "1", "member_id": "2", "revision": "5", "raft_term": "2"}
        if path == "/v3/watch":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            line = json.dumps({"result": {"header": header, "created": True}}).encode() + b"\n"
            c.sendall(b"%x\r\n%s\r\n" % (len(line), line))
            with self.lock:
                self.watches.append(c)
            return
        with c:
            if path != "/v3/kv/range":
                return self._answer(c, 404, {"error": "not in this fake", "code": 12})
            if req.get("count_only"):
                with self.lock:
                    fail = self.fail_probes > 0
                    if fail:
                        self.fail_probes -= 1
                        self.failed_probes += 1
                    end = fail and self.failed_probes == self.end_watch_after
                if fail:
                    self._answer(c, 503, {"error": "etcdserver: no leader", "message": "etcdserver: no leader",
                                          "code": 14})
                else:
                    self._answer(c, 200, {"header": header, "count": str(len(self.kvs))})
                if end:  # the member goes away: its watch streams end
                    with self.lock:
                        for w in self.watches:
                            w.sendall(b"0\r\n\r\n")
                            w.close()
                return
            self._answer(c, 200, {"header": header, "count": str(len(self.kvs)),
                                  "kvs": [{"key": b64(k), "value": b64(v), "create_revision": "2",
                                           "mod_revision": "2", "version": "1"} for k, v in self.kvs.items()]})


class PagedEtcdMember:
    """A stand-in for an etcd member's JSON gateway with a history: every
    change is a revision, a range may ask for a `limit` of keys and an older
    `revision` (400, code 11 once that revision is compacted), its header
    carries the latest revision as etcd's does, and a watch from a revision
    gets every change from it on. A range of more than `max_page` keys in one
    answer is refused (429, ResourceExhausted), standing in for what stops one
    answer with thousands of keys: etcd's gRPC message limit, a proxy's, the
    request's timeout. `after_first_page(self)` runs once, after the first page
    of a list is read and before it is answered."""

    def __init__(self, kvs, max_page=1000, after_first_page=None):
        self.rev = 5
        self.history = {5: dict(kvs)}
        self.events = []          # (revision, key, value or None)
        self.compacted = 0
        self.max_page = max_page
        self.after_first_page = after_first_page
        self.ranges = []          # (limit, revision, refused) of every range that is not count_only
        self.lock = threading.Lock()
        self.conns = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._loop, daemon=True).start()

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()

    def change(self, key, value):
        """A put (or a delete: value None) as the next revision."""
        with self.lock:
            kvs = dict(self.history[self.rev])
            if value is None:
                kvs.pop(key, None)
            else:
                kvs[key] = value
            self.rev += 1
            self.history[self.rev] = kvs
            self.events.append((self.rev, key, value))

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def progress(self, others=0):
        """`others` revisions of keys outside every watched prefix, then a
        progress notification (a header, nothing else) on every open watch."""
        with self.lock:
            for _ in range(others):
                self.rev += 1
                self.history[self.rev] = self.history[self.rev - 1]
            line = json.dumps({"result": {"header": self._header()}}).encode() + b"\n"
            for c in self.conns:
                try:
                    c.sendall(b"%x\r\n%s\r\n" % (len(line), line))
                except OSError:  # a watch the node closed
                    pass

    def _header(self):
        return {"cluster_id": "1", "member_id": "2", "revision": str(self.rev), "raft_term": "2"}

    def _serve(self, c):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                return c.close()
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        n = next(int(l.split(b":", 1)[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
        while len(body) < n:
            body += c.recv(65536)
        path = head.split(b" ")[1].decode()
        req = json.loads(body)
        if path == "/v3/watch":
            start = int(req["create_request"].get("start_revision", "0"))
            with self.lock:
                self.conns.append(c)
                msgs = [{"header": self._header(), "created": True}]
                for rev, key, value in self.events:
                    if rev >= start:
                        kv = {"key": b64(key), "mod_revision": str(rev)}
                        ev = {"kv": kv} if value is not None else {"type": "DELETE", "kv": kv}
                        if value is not None:
                            kv.update(value=b64(value), create_revision=str(rev), version="1")
                        msgs.append({"header": {**self._header(), "revision": str(rev)}, "events": [ev]})
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            for m in msgs:
                line = json.dumps({"result": m}).encode() + b"\n"
                c.sendall(b"%x\r\n%s\r\n" % (len(line), line))
            return
        with c:
            if path != "/v3/kv/range":
                return FakeEtcdMember._answer(c, 404, {"error": "not in this fake", "code": 12})
            key = base64.b64decode(req["key"])
            end = base64.b64decode(req.get("range_end", ""))
            limit, revision = int(req.get("limit", "0")), int(req.get("revision", "0"))
            with self.lock:
                if revision and revision < self.compacted:
                    self.ranges.append((limit, revision, "compacted"))
                    msg = "etcdserver: mvcc: required revision has been compacted"
                    return FakeEtcdMember._answer(c, 400, {"error": msg, "message": msg, "code": 11})
                kvs = self.history[revision or self.rev]
                keys = sorted(k for k in kvs if key <= k.encode() < end) if end else [k for k in kvs if k.encode() == key]
                if req.get("count_only"):
                    return FakeEtcdMember._answer(c, 200, {"header": self._header(), "count": str(len(keys))})
                page = keys[:limit] if limit else keys
                if len(page) > self.max_page:
                    self.ranges.append((limit, revision, "refused"))
                    msg = "grpc: trying to send message larger than max"
                    return FakeEtcdMember._answer(c, 429, {"error": msg, "message": msg, "code": 8})
                self.ranges.append((limit, revision, "ok"))
                out = {"header": self._header(), "count": str(len(keys)),
                       "kvs": [{"key": b64(k), "value": b64(kvs[k]), "create_revision": "2", "mod_revision": "2",
                                "version": "1"} for k in page]}
                if len(page) < len(keys):
                    out["more"] = True
                first = revision == 0 and limit and len(page) < len(keys)
            # before the answer goes: the node asks for the next page as soon
            # as it has this one, and the hook must have run by then
            if first and self.after_first_page:
                hook, self.after_first_page = self.after_first_page, None
                hook(self)
            FakeEtcdMember._answer(c, 200, out)


class FakeEtcdTest(GwTestCase):
    """The sync process against stand-in etcd members (no etcd needed)."""

    def test_watch_that_ends_at_once_is_retried_with_backoff(self):
        """Members that confirm a watch and end it at once: the node counted
        each confirmation as a working connection (failures and backoff
        reset), so it reconnected in a tight loop, some 40 watches and log
        lines a second, never backing off. A watch now counts as working once
        a probe on it succeeded; until then the backoff goes on."""
        class Flapping(FakeEtcdMember):
            def _serve(self, c):
                super()._serve(c)
                with self.lock:
                    for w in self.watches:
                        try:
                            w.sendall(b"0\r\n\r\n")
                            w.close()
                        except OSError:
                            pass

        prefix = "/gwtest-fake/"
        a = self.backend("a")
        kvs = {prefix + "upstreams/app": "{}",
               prefix + "upstreams/app/pools/primary": '{"priority": 0, "method": "round_robin"}',
               prefix + "upstreams/app/pools/primary/hosts/a": json.dumps(
                   {"address": a.address, "weight": 1, "down": False})}
        ms = [Flapping(kvs), Flapping(kvs)]
        for m in ms:
            self.addCleanup(m.close)
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1,
                               cluster={"etcd": [m.url for m in ms], "prefix": prefix, "timeout_ms": 1000,
                                        "reconnect_max_ms": 500})
        gw = self.gateway(cfg)
        gwtest.wait_until(lambda: sum(len(m.watches) for m in ms) > 0, T(10), interval=0.05, msg="a first watch")
        time.sleep(3)
        n = sum(len(m.watches) for m in ms)
        # 2 members per round, rounds 100, 200, 400, 500, 500 ... ms apart: about 16 in 3 s
        self.assertLess(n, 30, f"{n} watches in 3 s: no backoff")
        self.assertIn("a", gwtest.names(gw.port, 2), "the node stopped serving")

    def test_probe_failures_of_another_member_do_not_count(self):
        """Probes failed twice on member A, then A's watch ended: the node
        went on to member B, but kept A's count of failed probes, so B's
        first failed probe (an election under way) ended B's watch too,
        where 3 in a row should. The count now starts over with each watch."""
        prefix = "/gwtest-fake/"
        a = self.backend("a")
        kvs = {prefix + "upstreams/app": "{}",
               prefix + "upstreams/app/pools/primary": '{"priority": 0, "method": "round_robin"}',
               prefix + "upstreams/app/pools/primary/hosts/a": json.dumps(
                   {"address": a.address, "weight": 1, "down": False})}
        ma = FakeEtcdMember(kvs, fail_probes=2, end_watch_after_failed_probes=2)
        mb = FakeEtcdMember(kvs)
        self.addCleanup(ma.close)
        self.addCleanup(mb.close)
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1,
                               cluster={"etcd": [ma.url, mb.url], "prefix": prefix, "timeout_ms": 1000,
                                        "reconnect_max_ms": 500})
        gw = self.gateway(cfg)
        gwtest.wait_until(lambda: len(mb.watches) == 1, T(10), interval=0.05, msg="the node to watch member B")
        with mb.lock:
            mb.fail_probes = 1  # one probe fails on B: its watch stays
        gwtest.wait_until(lambda: mb.fail_probes == 0, T(5), interval=0.05, msg="a failed probe on B")
        time.sleep(T(1.5))
        self.assertEqual(len(ma.watches), 1, "the node left member B after one failed probe")
        st = gw.status()["cluster"]
        self.assertEqual((st["state"], st["endpoint"]), ("synced", mb.url), st)

    def test_sync_counters_never_go_back_after_a_respawn_or_a_reload(self):
        """The sync process's counters (status's reconnects, relists, applied;
        gw_cluster_*_total in /metrics) count on when the sync process is
        killed and respawned and when gwd reloads. Before, a reload set them
        to 0 again (Prometheus saw its counters go back); the state and the
        revision still start over with each sync process."""
        from test_admin import Admin, metric
        prefix = "/gwtest-fake/"
        a, b = self.backend("a"), self.backend("b")
        hosts = prefix + "upstreams/app/pools/primary/hosts/"
        kvs = {prefix + "upstreams/app": "{}",
               prefix + "upstreams/app/pools/primary": '{"priority": 0, "method": "round_robin"}',
               hosts + "a": json.dumps({"address": a.address, "weight": 1, "down": False}),
               hosts + "b": json.dumps({"address": b.address, "weight": 1, "down": False})}  # b from etcd only
        m = FakeEtcdMember(kvs)
        self.addCleanup(m.close)
        admin_port = gwtest.free_port()
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1,
                               admin={"listen": f"{gwtest.LOOPBACK}:{admin_port}"},
                               cluster={"etcd": [m.url], "prefix": prefix, "timeout_ms": 1000,
                                        "reconnect_max_ms": 500})
        gw = self.gateway(cfg)
        admin = Admin(admin_port)
        keys = ("reconnects", "relists", "applied")

        def synced_anew(old_pid):
            st = gw.status()["cluster"]
            return st["state"] == "synced" and st["sync_pid"] not in (0, old_pid) and st["reconnects"] > 0

        def counts():
            st = gw.status()["cluster"]
            mt = admin.metrics()
            got = tuple(st[k] for k in keys)
            self.assertEqual(got, tuple(metric(mt, f"gw_cluster_{k}_total") for k in keys), "status and /metrics")
            return got

        gwtest.wait_until(lambda: synced_anew(None), T(10), interval=0.05, msg="synced")
        gwtest.wait_until(lambda: gwtest.find_host(gw.status(), "app/primary/b") is not None, T(10), interval=0.05,
                          msg="host b from etcd")
        first = counts()
        self.assertTrue(all(first), first)

        # The sync process killed: the master starts another, which lists again.
        victim = gw.status()["cluster"]["sync_pid"]
        os.kill(victim, signal.SIGKILL)
        gwtest.wait_until(lambda: synced_anew(victim), T(20), interval=0.05, msg="a respawned sync process synced")
        respawned = counts()
        self.assertGreater(respawned[1], first[1], respawned)
        self.assertTrue(all(x >= y for x, y in zip(respawned, first)), (first, respawned))

        # A reload: the sync process is started again, and lists again.
        old = gw.status()["cluster"]["sync_pid"]
        log_before = len(gw.log_text())
        gw.send_signal(signal.SIGHUP)
        gwtest.wait_until(lambda: "reloaded:" in gw.log_text()[log_before:], T(10), msg="'reloaded:' in the log")
        gwtest.wait_until(lambda: synced_anew(old), T(20), interval=0.05, msg="the reload's sync process synced")
        gw.remember(set(gw.worker_pids()) | {gw.status()["cluster"]["sync_pid"]})
        reloaded = counts()
        self.assertTrue(all(x >= y for x, y in zip(reloaded, respawned)), (first, respawned, reloaded))
        self.assertGreater(reloaded[1], respawned[1], reloaded)
        st = gw.status()["cluster"]
        self.assertEqual((st["state"], st["revision"]), ("synced", 5), st)

    def _large_prefix(self, prefix, a, n):
        kvs = {prefix + "upstreams/app": "{}",
               prefix + "upstreams/app/pools/primary": '{"priority": 0, "method": "round_robin"}',
               prefix + "upstreams/app/pools/primary/hosts/a": json.dumps(
                   {"address": a.address, "weight": 1, "down": False})}
        for i in range(n):
            kvs[prefix + f"upstreams/app/pools/primary/hosts/h{i:04d}"] = json.dumps(
                {"address": f"{gwtest.LOOPBACK}:{20000 + i}", "weight": 1, "down": False})
        return kvs

    def _paged_node(self, m, a, prefix):
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1, shm={"max_hosts": 4096},
                               cluster={"etcd": [m.url], "prefix": prefix, "timeout_ms": 2000,
                                        "reconnect_max_ms": 500})
        return self.gateway(cfg)

    def _wait_synced_at(self, gw, revision):
        gwtest.wait_until(lambda: (gw.status()["cluster"]["state"], gw.status()["cluster"]["revision"])
                          == ("synced", revision), T(20), interval=0.1,
                          msg=f"synced at revision {revision}: {gw.status()['cluster']}")

    def test_large_prefix_is_listed_in_pages_at_one_revision(self):
        """2,500 hosts under the prefix: the list was one range for every key,
        one answer that etcd (its gRPC message limit), a proxy or the timeout
        may not let through; the node then never listed. It now reads pages of
        1,000 keys, each next one after the last key read and at the first
        page's revision (etcd's header says its latest revision, also for a
        page read at an older one), so the list is one snapshot and changes
        made while it runs come with the watch from that revision on."""
        prefix = "/gwtest-paged/"
        a, b = self.backend("a"), self.backend("b")
        hosts = prefix + "upstreams/app/pools/primary/hosts/"

        def meanwhile(m):   # between the pages: a new host (in the first page's range), one gone from the last
            m.change(hosts + "b", json.dumps({"address": b.address, "weight": 1, "down": False}))
            m.change(hosts + "h2400", None)
        m = PagedEtcdMember(self._large_prefix(prefix, a, 2500), after_first_page=meanwhile)
        self.addCleanup(m.close)
        gw = self._paged_node(m, a, prefix)
        self._wait_synced_at(gw, 7)
        self.assertEqual([r for r in m.ranges if r[2] != "ok"], [], m.ranges[:10])
        self.assertEqual([r[:2] for r in m.ranges], [(1000, 0), (1000, 5), (1000, 5)])
        st = gw.status()
        self.assertEqual(len(gwtest.find_pool(st, "app/primary")["hosts"]), 2501)
        self.assertIsNone(gwtest.find_host(st, "app/primary/h2400"))
        for h in ("a", "h0000", "h0999", "h1000", "h2499"):
            self.assertIsNotNone(gwtest.find_host(st, f"app/primary/{h}"), h)
        self.assertEqual(gwtest.find_host(st, "app/primary/b")["address"], b.address, "b, added while the list ran")

    def test_progress_notification_moves_the_revision_of_a_quiet_prefix(self):
        """etcd's revision grows by changes outside the prefix, then a
        progress notification says so on the watch: the node's revision
        follows it (it stayed at the list's, so a watch resumed after a break
        could ask for a compacted revision)."""
        prefix = "/gwtest-paged/"
        a = self.backend("a")
        m = PagedEtcdMember(self._large_prefix(prefix, a, 0))
        self.addCleanup(m.close)
        gw = self._paged_node(m, a, prefix)
        self._wait_synced_at(gw, 5)
        gwtest.wait_until(lambda: len(m.conns) == 1, T(10), interval=0.05, msg="the watch")
        m.progress(others=3)
        self._wait_synced_at(gw, 8)
        self.assertEqual(len([r for r in m.ranges if r[:2] == (1000, 0)]), 1, f"listed again: {m.ranges}")

    def test_list_whose_revision_is_compacted_between_pages_starts_over(self):
        """etcd compacts the first page's revision before the second page is
        read: that page fails (ErrCompacted) and the list starts over at the
        latest revision, with what changed meanwhile."""
        prefix = "/gwtest-paged/"
        a = self.backend("a")
        hosts = prefix + "upstreams/app/pools/primary/hosts/"

        def compact(m):
            m.change(hosts + "h0001", None)
            m.compacted = m.rev
        m = PagedEtcdMember(self._large_prefix(prefix, a, 1500), after_first_page=compact)
        self.addCleanup(m.close)
        gw = self._paged_node(m, a, prefix)
        self._wait_synced_at(gw, 6)
        self.assertEqual([r[:3] for r in m.ranges], [(1000, 0, "ok"), (1000, 5, "compacted"), (1000, 0, "ok"),
                                                      (1000, 6, "ok")])
        st = gw.status()
        self.assertEqual(len(gwtest.find_pool(st, "app/primary")["hosts"]), 1500)
        self.assertIsNone(gwtest.find_host(st, "app/primary/h0001"))
        self.assertIsNotNone(gwtest.find_host(st, "app/primary/h1499"))


if __name__ == "__main__":
    gwtest.main()
