#!/usr/bin/python3
"""Changes made with gwctl survive a crash of every gw process (shm segment
kept) and a reboot (shm segment gone; the state file restores them)."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import GwTestCase, T, host, pool  # noqa: E402

N = 12


class PersistenceTest(GwTestCase):

    def make_changes(self, gw, b, c):
        self.assertGwctlOk(gw, "add", "host", "app/primary", "b", b.address, "--weight", "2")
        self.assertGwctlOk(gw, "down", "host", "app/primary", "a")
        self.assertGwctlOk(gw, "add", "pool", "app", "backup", "--priority", "3")
        self.assertGwctlOk(gw, "add", "host", "app/backup", "c", c.address)

    def assertChanges(self, gw, a, b, c, expect_snapshot=None):
        st = gw.status()
        self.assertHost(gw, "app/primary/a", address=a.address, admin="down")
        self.assertHost(gw, "app/primary/b", address=b.address, weight=2, admin="up")
        self.assertHost(gw, "app/backup/c", address=c.address, weight=1, admin="up")
        p = gwtest.find_pool(st, "app/backup")
        self.assertEqual(p["priority"], 3, p)
        if expect_snapshot is not None:
            snap = gwtest.table_snapshot(st)
            snap.pop("generation")
            self.assertEqual(snap, expect_snapshot)
        # and the workers use it: a is down, so only b gets connections
        before = a.count
        self.assertNames(gw.port, N, {"b"})
        self.assertEqual(a.count, before, "host a is down but got connections")

    def crash(self, gw):
        gw.kill_all()
        self.assertIsNotNone(gw.proc.poll(), "gwd master survived SIGKILL")
        if gw.config.get("event_engine") == "io_uring":
            # A SIGKILLed worker's ring is torn down by a kernel worker after
            # the process is gone; its pending accepts hold the listening
            # socket until then: 0.06-0.7 s on a quiet machine, over 3 s
            # measured under a load average of 14. It must still go.
            gwtest.wait_until(lambda: not gwtest.port_listening(gw.port), gwtest.T(15),
                              msg="the listener to close after SIGKILL of every gw process")
        self.assertFalse(gwtest.port_listening(gw.port), "listener still open after SIGKILL of every gw process")

    def test_changes_survive_crash_and_reboot(self):
        a, b, c = self.backend("a"), self.backend("b"), self.backend("c")
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=2)
        gw = self.gateway(cfg)
        shm_path = f"/dev/shm/{gw.shm}"
        self.make_changes(gw, b, c)
        snap = gwtest.table_snapshot(gw.status())
        snap.pop("generation")
        self.assertChanges(gw, a, b, c, snap)

        state_file = cfg["state_file"]
        self.assertTrue(os.path.exists(state_file), f"no state file {state_file} after committed changes")
        with open(state_file) as f:
            json.load(f)    # valid JSON (written atomically)

        # 1. crash: SIGKILL every gw process; the shm segment stays
        self.crash(gw)
        self.assertTrue(os.path.exists(shm_path), f"{shm_path} vanished after SIGKILL")
        # a change tried while no gateway runs either fails loudly or is kept
        rc, out, err = gw.gwctl("add", "host", "app/primary", "offline", "127.0.0.1:9")
        if rc != 0:
            lines = [l for l in err.splitlines() if l.strip()]
            self.assertEqual(len(lines), 1, err)
            self.assertTrue(lines[0].startswith("gwctl:"), err)
        gw.start()
        if rc != 0:
            self.assertNoHost(gw, "app/primary/offline")
        else:
            self.assertHost(gw, "app/primary/offline")
            self.assertGwctlOk(gw, "remove", "host", "app/primary", "offline")
        self.assertChanges(gw, a, b, c, snap)

        # 2. reboot: SIGKILL everything and remove the segment; the state file restores it
        self.crash(gw)
        os.unlink(shm_path)
        gw.start()
        self.assertTrue(os.path.exists(shm_path), "gwd did not create the shm segment")
        self.assertChanges(gw, a, b, c, snap)

        # 3. and changes made after the restore persist too
        self.assertGwctlOk(gw, "up", "host", "app/primary", "a")
        self.assertGwctlOk(gw, "remove", "host", "app/backup", "c")
        self.crash(gw)
        os.unlink(shm_path)
        gw.start()
        self.assertHost(gw, "app/primary/a", admin="up")
        self.assertNoHost(gw, "app/backup/c")
        self.assertNames(gw.port, N, {"a", "b"}, must_include={"a", "b"})

    def test_generation_never_goes_back(self):
        """The table generation keeps growing across a crash and a reboot (the
        state file records it), so a generation seen once is never reused."""
        a, b = self.backend("a"), self.backend("b")
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1)
        gw = self.gateway(cfg)
        for _ in range(3):
            self.assertGwctlOk(gw, "down", "host", "app/primary", "a")
            self.assertGwctlOk(gw, "up", "host", "app/primary", "a")
        gen = gw.status()["generation"]
        with open(cfg["state_file"]) as f:
            self.assertEqual(json.load(f).get("generation"), gen, "state file generation")
        self.crash(gw)
        gw.start()
        gen2 = gw.status()["generation"]
        self.assertGreaterEqual(gen2, gen, "generation went backwards after a crash (segment kept)")
        self.crash(gw)
        os.unlink(f"/dev/shm/{gw.shm}")
        gw.start()
        gen3 = gw.status()["generation"]
        self.assertGreaterEqual(gen3, gen2, f"generation went backwards after a reboot (state file had "
                                            f"generation {gen2}, the restored table has {gen3})")

    def test_a_state_file_generation_out_of_range_is_refused(self):
        """A state file whose "generation" is 2^63 or more (a garbled or hand-made
        file) was taken as it was: the table was published as `gen << 1 | slot`,
        which drops the top bit, so no reader found the generation it names.
        gwd started and then every gwctl change failed ("the published table is
        inconsistent ...; restart gwd"), and a restart read the same file. gwd
        now refuses such a file at start, in one line naming it and the field,
        and leaves it as it is."""
        a = self.backend("a")
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1)
        gw = self.gateway(cfg)
        self.assertGwctlOk(gw, "down", "host", "app/primary", "a")
        self.crash(gw)
        os.unlink(f"/dev/shm/{gw.shm}")
        state_file = cfg["state_file"]
        with open(state_file) as f:
            state = json.load(f)
        for gen in (2 ** 63, 2 ** 64 - 1):
            state["generation"] = gen
            with open(state_file, "w") as f:
                json.dump(state, f)
            with open(state_file) as f:
                before = f.read()
            gw.start(wait=False)
            try:
                rc = gw.proc.wait(timeout=T(10))
            except subprocess.TimeoutExpired:
                rc2, out, err = gw.gwctl("up", "host", "app/primary", "a")
                gw.kill_all()
                self.fail(f"gwd started from a state file of generation {gen}; gwctl up host: rc={rc2} {err.strip()}")
            self.assertNotEqual(rc, 0)
            self.assertRegex(gw.log_text(), rf"state file {re.escape(state_file)}: \"generation\" {gen} is out of "
                                            r"range")
            with open(state_file) as f:
                self.assertEqual(f.read(), before, "the state file was changed")
            self.assertFalse(os.path.exists(f"/dev/shm/{gw.shm}"), "a segment was made")

    def test_a_state_file_listing_a_name_twice_is_refused(self):
        """A state file (hand-edited, or merged by a tool) that lists an
        upstream twice had its first entry dropped in silence: gwd started with
        the second one's pools and hosts (here none), and its next commit
        rewrote the file without the first. One that lists a host twice
        stopped gwd with "host app/primary/a already exists", which names
        neither the state file nor the config. Each is now refused at start in
        one line naming the file and what is listed twice, and the file is
        left as it is."""
        a = self.backend("a")
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1)
        gw = self.gateway(cfg)
        self.assertGwctlOk(gw, "down", "host", "app/primary", "a")
        self.crash(gw)
        os.unlink(f"/dev/shm/{gw.shm}")
        state_file = cfg["state_file"]
        with open(state_file) as f:
            good = json.load(f)
        twice_upstream = json.loads(json.dumps(good))
        twice_upstream["upstreams"].append({"name": "app", "pools": []})
        twice_host = json.loads(json.dumps(good))
        hosts = twice_host["upstreams"][0]["pools"][0]["hosts"]
        hosts.append(dict(hosts[0]))
        for state, why in ((twice_upstream, 'upstream "app" is listed twice'),
                           (twice_host, "host app/primary/a is listed twice")):
            with open(state_file, "w") as f:
                json.dump(state, f)
            with open(state_file) as f:
                before = f.read()
            gw.start(wait=False)
            try:
                rc = gw.proc.wait(timeout=T(10))
            except subprocess.TimeoutExpired:
                st = gw.status()
                gw.kill_all()
                self.fail(f"gwd started from a state file where {why}: {gwtest.table_snapshot(st)}")
            self.assertNotEqual(rc, 0)
            self.assertIn(f"state file {state_file}: {why}", gw.log_text())
            with open(state_file) as f:
                self.assertEqual(f.read(), before, "the state file was changed")
            if os.path.exists(f"/dev/shm/{gw.shm}"):
                os.unlink(f"/dev/shm/{gw.shm}")

    def test_graceful_restart_keeps_changes(self):
        a, b, c = self.backend("a"), self.backend("b"), self.backend("c")
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1)
        gw = self.gateway(cfg)
        self.make_changes(gw, b, c)
        self.assertEqual(gw.stop(), 0, "gwd exit code after SIGTERM")
        gwtest.remove_shm(gw.shm)
        gw.start()
        self.assertChanges(gw, a, b, c)

    def test_an_upstream_dropped_by_a_config_typo_is_kept_beside_the_state_file(self):
        """An upstream renamed by mistake in the config: the start drops the
        runtime state of the old name (with a warning) and rewrites the state
        file without it, so every gwctl change made to it was gone for good,
        even once the typo was fixed. The runtime state before that start is
        now kept in STATE.before-GEN, which the warning names, and moving it
        back (gwd stopped, segment deleted) brings the changes back. A reload
        that drops one keeps it the same way."""
        a, b, c = self.backend("a"), self.backend("b"), self.backend("c")
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1)
        cfg["upstreams"].append({"name": "extra", "pools": [pool("p", [host("b", b)])]})
        cfg["listeners"].append({"name": "l2", "listen": f"{gwtest.LOOPBACK}:{gwtest.free_port()}",
                                 "protocol": "tcp", "upstream": "extra"})
        gw = self.gateway(cfg)
        self.assertGwctlOk(gw, "add", "host", "extra/p", "c", c.address, "--weight", "7")
        self.assertGwctlOk(gw, "down", "host", "extra/p", "b")
        gen = gw.status()["generation"]
        state = cfg["state_file"]
        self.crash(gw)  # the segment stays: it is the newer source
        typo = json.loads(json.dumps(cfg))
        typo["upstreams"][1]["name"] = "extar"
        typo["listeners"][1]["upstream"] = "extar"
        gwtest.write_json(gw.conf_path, typo)
        gw.config = typo
        gw.start()
        kept = f"{state}.before-{gen}"
        log = gw.log_text()
        self.assertIn('upstream "extra" from the runtime state is not in the config; its pools and hosts are dropped',
                      log)
        self.assertIn(f"the runtime state as it was before (generation {gen}) is kept in {kept}", log)
        with open(state) as f:
            self.assertNotIn('"extra"', f.read())
        with open(kept) as f:
            saved = json.load(f)
        (extra,) = [u for u in saved["upstreams"] if u["name"] == "extra"]
        self.assertEqual(sorted((h["id"], h["weight"], h["down"]) for h in extra["pools"][0]["hosts"]),
                         [("b", 1, True), ("c", 7, False)])
        # the way back, as the warning says
        self.assertEqual(gw.stop(), 0)
        gwtest.write_json(gw.conf_path, cfg)
        gw.config = cfg
        os.replace(kept, state)
        gwtest.remove_shm(gw.shm)
        gw.start()
        self.assertHost(gw, "extra/p/b", admin="down")
        self.assertHost(gw, "extra/p/c", address=c.address, weight=7)
        # A reload that drops it keeps it too (from the live table).
        gen = gw.status()["generation"]
        gwtest.write_json(gw.conf_path, typo)
        log_before = len(gw.log_text())
        gw.send_signal(signal.SIGHUP)
        gwtest.wait_until(lambda: "reloaded:" in gw.log_text()[log_before:], T(10), msg="the reload")
        self.assertIn(f"is kept in {state}.before-{gen}", gw.log_text()[log_before:])
        with open(f"{state}.before-{gen}") as f:
            self.assertIn('"extra"', f.read())
        # A start from the state file (the segment gone, as after a reboot)
        # keeps that file's text.
        self.assertEqual(gw.stop(), 0)
        os.replace(f"{state}.before-{gen}", state)
        with open(state) as f:
            text = f.read()
        gwtest.remove_shm(gw.shm)
        gw.start()
        self.assertIn(f"is kept in {state}.before-{gen}", gw.log_text())
        with open(f"{state}.before-{gen}") as f:
            self.assertEqual(f.read(), text)

    def test_a_state_file_keeps_its_permissions(self):
        """Each write replaces the state file by a new one (rename), made 0644:
        an operator's chmod (600: the file lists the consumers' key hashes) was
        undone by the next change. The new file now takes the old one's mode."""
        a, b, c = self.backend("a"), self.backend("b"), self.backend("c")
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1)
        gw = self.gateway(cfg)
        self.assertGwctlOk(gw, "add", "host", "app/primary", "b", b.address)
        state_file = cfg["state_file"]
        os.chmod(state_file, 0o604)   # (no umask makes that)
        self.assertGwctlOk(gw, "add", "host", "app/primary", "c", c.address)
        with open(state_file) as f:
            self.assertIn('"c"', f.read())
        self.assertEqual(oct(os.stat(state_file).st_mode & 0o777), oct(0o604))

    def test_a_state_file_keeps_its_owner_and_group(self):
        """The new file was the writer's (root's here): a state file chowned to
        the user gwd runs as became root's at the next gwctl change (and, with
        a chmod 600, unreadable to that user). It now keeps owner and group
        when the writer may give them."""
        if os.geteuid() != 0:
            self.skipTest("needs root (chown)")
        a, b = self.backend("a"), self.backend("b")
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1)
        gw = self.gateway(cfg)
        self.assertGwctlOk(gw, "add", "host", "app/primary", "b", b.address)
        state_file = cfg["state_file"]
        os.chown(state_file, 12345, 12345)
        self.assertGwctlOk(gw, "set", "host", "app/primary", "b", "--weight", "3")
        with open(state_file) as f:
            self.assertIn('"weight": 3', f.read())
        st = os.stat(state_file)
        self.assertEqual((st.st_uid, st.st_gid), (12345, 12345))

    def test_state_file_relative_path(self):
        """A relative state_file is relative to gwd's current directory."""
        a, b = self.backend("a"), self.backend("b")
        os.mkdir(os.path.join(self.tmp, "state"))
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1,
                               state_file="state/gw.state.json")
        gw = self.gateway(cfg)       # the harness runs gwd in self.tmp
        self.assertGwctlOk(gw, "add", "host", "app/primary", "b", b.address)
        self.assertTrue(os.path.exists(os.path.join(self.tmp, "state", "gw.state.json")))
        self.crash(gw)
        os.unlink(f"/dev/shm/{gw.shm}")
        gw.start()
        self.assertHost(gw, "app/primary/b", address=b.address)

    def test_new_state_file_directories_are_synced_in_their_parents(self):
        """gwd creates a missing state_file directory (and its missing parents)
        and fsyncs each new one's parent: without that a power cut after the
        first acknowledged change could take the new directory, state file and
        all, away. Seen with strace: each parent is opened O_DIRECTORY and
        that descriptor is fsynced."""
        strace = shutil.which("strace")
        if not strace:
            self.skipTest("strace is not installed (tools/setup.sh installs it)")
        a = self.backend("a")
        top = os.path.join(self.tmp, "new")
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1,
                               state_file=os.path.join(top, "deeper", "gw.state.json"))
        trace = os.path.join(self.tmp, "strace.out")
        gw = self.gateway(cfg, start=False)
        gw.in_netns = lambda: [strace, "-f", "-qq", "-o", trace, "-e", "trace=openat,fsync,close"]
        gw.start(wait=False)   # gw.pid is strace's: wait_ready would look for workers under it
        gwtest.wait_until(lambda: ": ready: " in gw.log_text() or gw.proc.poll() is not None, T(15),
                          msg="gwd to log ready")
        self.assertIn(": ready: ", gw.log_text())
        self.assertTrue(os.path.isdir(os.path.join(top, "deeper")))
        masters = gwtest.children(gw.pid)
        self.assertEqual(len(masters), 1, masters)
        os.kill(masters.pop(), signal.SIGTERM)
        gw.wait_exit(T(15))
        with open(trace) as f:
            lines = f.read().splitlines()
        for parent in (self.tmp, top):
            synced = False
            opened = {}   # pid -> fd of parent, open now
            for line in lines:
                m = re.match(r'(\d+) +openat\(AT_FDCWD, "([^"]*)", ([A-Z_|]+)\) = (\d+)', line)
                if m and m.group(2) == parent and "O_DIRECTORY" in m.group(3):
                    opened[m.group(1)] = m.group(4)
                    continue
                m = re.match(r"(\d+) +(fsync|close)\((\d+)\) += (-?\d+)", line)
                if m and opened.get(m.group(1)) == m.group(3):
                    if m.group(2) == "fsync" and m.group(4) == "0":
                        synced = True
                    if m.group(2) == "close":
                        del opened[m.group(1)]
            self.assertTrue(synced, f"{parent} (parent of a directory gwd made) was not fsynced")

    def test_acknowledged_changes_survive_random_kills(self):
        """Randomized (seeded; GW_CRASH_SEED to vary): rounds of concurrent gwctl
        adds, removes and downs, some gwctl SIGKILLed at random offsets (inside
        a commit or not), then SIGKILL of every gw process, sometimes while
        gwctl still runs, and a start with the segment kept or gone. Every
        change a gwctl acknowledged (rc 0) is there; one it did not may or may
        not be, and its host is not looked at again."""
        seed = int(os.environ.get("GW_CRASH_SEED", "20261204"))
        rnd = random.Random(seed)
        a = self.backend("a")
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1)
        gw = self.gateway(cfg)
        present, absent, down = set(), set(), set()   # what acknowledged changes promise
        n = 0
        for rnd_i in range(12):
            ops = []
            for _ in range(8):
                live = sorted(present - down)
                kind = rnd.choice(["add", "add", "remove", "down"]) if live else "add"
                if kind == "add":
                    n += 1
                    hid = f"h{n}"
                    args = ["add", "host", "app/primary", hid, f"127.0.0.1:{1024 + n}"]
                else:
                    hid = rnd.choice(live)
                    args = ["remove" if kind == "remove" else "down", "host", "app/primary", hid]
                if any(o[1] == hid for o in ops):
                    continue
                present.discard(hid)    # unknown until acknowledged
                p = subprocess.Popen(gwtest.gwctl_argv(args, shm=gw.shm), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
                ops.append((kind, hid, p, rnd.random() < 0.5, rnd.uniform(0, 0.015)))
            t0 = time.monotonic()
            crash_at = rnd.uniform(0, 0.02) if rnd.random() < 0.3 else None
            events = sorted([(d, p) for _, _, p, kill, d in ops if kill] +
                            ([(crash_at, None)] if crash_at is not None else []), key=lambda e: e[0])
            for d, p in events:
                time.sleep(max(0.0, t0 + d - time.monotonic()))
                if p is None:
                    gw.kill_all()       # the gateway dies while gwctl may still commit
                else:
                    p.send_signal(signal.SIGKILL)
            for kind, hid, p, killed, _ in ops:
                _, err = p.communicate(timeout=T(20))
                if p.returncode == 0:
                    if kind == "add":
                        present.add(hid)
                    elif kind == "remove":
                        absent.add(hid)
                    else:
                        present.add(hid)
                        down.add(hid)
                elif p.returncode > 0:
                    # refused: one line that says why (after the warning of a
                    # lock it recovered from a killed writer, if it did)
                    lines = err.splitlines()
                    self.assertTrue(err.endswith("\n") and lines and lines[-1].startswith("gwctl: "), err)
                    self.assertTrue(all(re.search(r" warn gwctl\[\d+\]: a previous writer died while holding the "
                                                  r"shm writer lock; recovered it$", l) for l in lines[:-1]), err)
                else:
                    # only the SIGKILL sent here ends a gwctl by a signal (not a crash)
                    self.assertTrue(killed and p.returncode == -signal.SIGKILL, (p.returncode, err))
            self.crash(gw)    # and, with io_uring, its listening socket gone
            if rnd.random() < 0.5:
                os.unlink(f"/dev/shm/{gw.shm}")
            gw.start()
            st = gw.status()
            hosts = {h["id"]: h for up in st["upstreams"] for po in up["pools"] for h in po["hosts"]}
            where = f"seed {seed}, round {rnd_i}"
            self.assertEqual(present - hosts.keys(), set(), f"acknowledged hosts lost ({where})")
            self.assertEqual(absent & hosts.keys(), set(), f"acknowledged removes undone ({where})")
            self.assertEqual({h for h in down if hosts[h]["admin"] != "down"}, set(),
                             f"acknowledged downs undone ({where})")

    def test_state_file_on_a_full_or_read_only_disk(self):
        """A state file that cannot be written (disk full, file system read-only)
        refuses the change with one line that says it was not made; nothing is
        published, the state file is the one before, no temp file is left; once
        the disk takes writes again, changes persist as before."""
        d = os.path.join(self.tmp, "state")
        os.mkdir(d)
        if subprocess.call(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) != 0:
            self.skipTest("needs to mount a small tmpfs (root)")
        self.addCleanup(subprocess.call, ["umount", "-l", d])
        a, b = self.backend("a"), self.backend("b")
        state_file = os.path.join(d, "gw.state.json")
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1, state_file=state_file)
        gw = self.gateway(cfg)

        def refused(why):
            gen = gw.status()["generation"]
            with open(state_file) as f:
                before = f.read()
            for args in (["add", "host", "app/primary", "b", b.address], ["down", "host", "app/primary", "a"]):
                rc, out, err = gw.gwctl(*args)
                self.assertEqual(rc, 1, out + err)
                self.assertRegex(err, rf"^gwctl: cannot write state file {re.escape(state_file)}: .*{why}.*; "
                                      r"the change was not made\n$")
            self.assertEqual(gw.status()["generation"], gen)
            self.assertNoHost(gw, "app/primary/b")
            self.assertHost(gw, "app/primary/a", admin="up")
            with open(state_file) as f:
                self.assertEqual(f.read(), before)
            self.assertEqual([n for n in os.listdir(d) if ".tmp." in n], [], "a temp file left")

        fill = os.path.join(d, "fill")
        fd = os.open(fill, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            pass
        os.close(fd)
        refused("No space left on device")
        # A start that cannot persist its table does not start, and says so
        # once, as a start (no "change" was asked for).
        self.crash(gw)
        os.unlink(f"/dev/shm/{gw.shm}")
        gw.start(wait=False)
        self.assertEqual(gw.proc.wait(timeout=T(10)), 1, gw.log_text())
        self.assertRegex(gw.log_text(), rf"cannot write state file {re.escape(state_file)}: .*No space left on device; "
                                        r"gwd cannot start without persisting its table\n")
        self.assertNotIn("the change was not made", gw.log_text())
        with open(state_file) as f:
            self.assertIn('"generation": 1,', f.read())
        os.unlink(fill)
        gw.start()
        subprocess.check_call(["mount", "-o", "remount,ro", d])
        refused("Read-only file system")
        subprocess.check_call(["mount", "-o", "remount,rw", d])
        self.assertGwctlOk(gw, "add", "host", "app/primary", "b", b.address)
        self.crash(gw)
        os.unlink(f"/dev/shm/{gw.shm}")
        gw.start()
        self.assertHost(gw, "app/primary/b", address=b.address)
        self.assertHost(gw, "app/primary/a", admin="up")

    @unittest.skipUnless(shutil.which("gdb"), "needs gdb to stop a gwctl inside its commit")
    def test_change_never_published_does_not_come_back_in_a_segment_made_again(self):
        """A gwctl killed after its state file was renamed into place but
        before it published the change (it never said ok) leaves the file ahead
        of the live table; the next writer puts it back. A gwd started with
        other capacities (a new segment) retired the old one and then read the
        file, ahead as it was: the change that was never live, and never
        reported done, was in the new segment. Retiring now puts the file back
        first, as any next writer does."""
        a = self.backend("a")
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1)
        gw = self.gateway(cfg)
        argv = ["gdb", "-q", "-batch", "-nx", "-ex", "set breakpoint pending on",
                "-ex", "break gw::shm::write_state_file", "-ex", "run", "-ex", "finish", "-ex", "kill",
                "--args", *gwtest.gwctl_argv(["down", "host", "app/primary", "a"], shm=gw.shm)]
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             stdin=subprocess.DEVNULL, timeout=T(60)).stdout
        self.assertNotRegex(out, r"(?m)^ok: ", "gwctl was to be killed before it said ok")
        with open(cfg["state_file"]) as f:
            self.assertIn('"down": true', f.read(), f"gwctl did not stop after its state file: {out}")
        self.assertHost(gw, "app/primary/a", admin="up")   # never published
        self.crash(gw)
        gw.config["workers"] = 2          # a segment with more stats rows: made again
        gwtest.write_json(gw.conf_path, gw.config)
        gw.start()
        self.assertHost(gw, "app/primary/a", admin="up")
        with open(cfg["state_file"]) as f:
            self.assertNotIn('"down": true', f.read())

    @unittest.skipUnless(shutil.which("gdb"), "needs gdb to hold a gwctl inside its commit")
    def test_change_committed_into_a_segment_being_replaced_is_kept(self):
        """A gwctl that committed into the segment while a restarted gwd made it
        again (more workers: more stats rows) had its change dropped: gwd read
        the state file before the commit and published the new segment without
        it, though gwctl printed ok. Such a change must be in the new segment
        (or be refused)."""
        a, b = self.backend("a"), self.backend("b")
        cfg = self.make_config([pool("primary", [host("a", a)])], workers=1)
        gw = self.gateway(cfg)
        go, held = os.path.join(self.tmp, "go"), os.path.join(self.tmp, "held")
        # gwctl stops inside its commit (writer lock held) until `go` exists.
        argv = ["gdb", "-q", "-batch", "-nx", "-ex", "set breakpoint pending on",
                "-ex", "break gw::shm::write_state_file", "-ex", "run",
                "-ex", f"shell touch {held}; while [ ! -e {go} ]; do sleep 0.02; done", "-ex", "continue",
                "--args", *gwtest.gwctl_argv(["add", "host", "app/primary", "b", b.address], shm=gw.shm)]
        ctl = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               stdin=subprocess.DEVNULL, start_new_session=True)
        self.addCleanup(lambda: ctl.poll() is None and os.killpg(ctl.pid, signal.SIGKILL))
        gwtest.wait_until(lambda: os.path.exists(held) or ctl.poll() is not None, T(30),
                          msg="gwctl to stop inside its commit")
        if not os.path.exists(held):
            self.fail(f"gwctl did not stop in its commit: {ctl.communicate()[0]}")
        self.crash(gw)
        gw.config["workers"] = 2          # a segment with more stats rows: made again
        gwtest.write_json(gw.conf_path, gw.config)
        gw.start(wait=False)
        time.sleep(T(0.5))
        open(go, "w").close()
        out, _ = ctl.communicate(timeout=T(30))
        gw.wait_ready()
        acked = re.search(r"^ok: add host", out, re.M) is not None
        if acked:
            self.assertHost(gw, "app/primary/b", address=b.address)
            self.crash(gw)
            os.unlink(f"/dev/shm/{gw.shm}")
            gw.start()
            self.assertHost(gw, "app/primary/b", address=b.address)
        else:
            self.assertIn("gwctl:", out)
            self.assertNoHost(gw, "app/primary/b")


if __name__ == "__main__":
    gwtest.main()
