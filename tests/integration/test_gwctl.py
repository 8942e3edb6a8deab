#!/usr/bin/python3
"""gwctl: runtime changes take effect on the next connection; bad input is
refused with one `gwctl:` line and changes nothing; events and status."""

import http.client
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import GwTestCase, T, host, pool  # noqa: E402

N = 12   # connections per check; with 2 workers some worker gets >= 6 of them


class GwctlTest(GwTestCase):

    def start(self, pools, **kw):
        kw.setdefault("workers", 2)
        return self.gateway(self.make_config(pools, **kw))

    def test_add_and_remove_host(self):
        a, b, c = self.backend("a"), self.backend("b"), self.backend("c")
        gw = self.start([pool("primary", [host("a", a)])])
        self.assertNames(gw.port, N, {"a"})

        self.assertGwctlOk(gw, "add", "host", "app/primary", "b", b.address)
        self.assertHost(gw, "app/primary/b", address=b.address, weight=1, admin="up")
        self.assertNames(gw.port, N, {"a", "b"}, must_include={"b"})

        self.assertGwctlOk(gw, "add", "host", "app/primary", "c", c.address, "--weight", "3")
        self.assertHost(gw, "app/primary/c", address=c.address, weight=3)
        self.assertNames(gw.port, N, {"a", "b", "c"}, must_include={"c"})

        self.assertGwctlOk(gw, "remove", "host", "app/primary", "a")
        self.assertNoHost(gw, "app/primary/a")
        before = a.count
        self.assertNames(gw.port, N, {"b", "c"})
        self.assertEqual(a.count, before, "removed host still got connections")

        esc = re.escape
        self.assertEvent(gw, rf"^host_added app/primary/b {esc(b.address)} weight=1$")
        self.assertEvent(gw, rf"^host_added app/primary/c {esc(c.address)} weight=3$")
        self.assertEvent(gw, r"^host_removed app/primary/a \S+$")

    def test_down_and_up_host(self):
        a, b = self.backend("a"), self.backend("b")
        gw = self.start([pool("primary", [host("a", a), host("b", b)])],
                        upstream_opts={"max_fails": 1, "fail_timeout_ms": 200})
        self.assertNames(gw.port, N, {"a", "b"}, must_include={"a", "b"})

        self.assertGwctlOk(gw, "down", "host", "app/primary", "a")
        self.assertHost(gw, "app/primary/a", admin="down")
        before = a.count
        self.assertNames(gw.port, N, {"b"})
        # still down well after fail_timeout_ms: only `up` brings it back
        time.sleep(0.6)
        self.assertNames(gw.port, N, {"b"})
        self.assertHost(gw, "app/primary/a", admin="down")
        self.assertEqual(a.count, before, "a host that is down got new connections")

        self.assertGwctlOk(gw, "up", "host", "app/primary", "a")
        self.assertHost(gw, "app/primary/a", admin="up")
        self.assertNames(gw.port, N, {"a", "b"}, must_include={"a"})

        self.assertEvent(gw, r"^host_down app/primary/a \S+ \(admin: gwctl down\)$")
        self.assertEvent(gw, r"^host_up app/primary/a \S+ \(admin: gwctl up\)$")

    def test_set_host_weight(self):
        """gwctl set host --weight changes a live host's weight (there was no
        way but remove and add): the balancers follow it at once, 0 drains the
        host, the same weight is an "already" answer, and it survives a restart
        without the segment (the state file)."""
        a, b = self.backend("a"), self.backend("b")
        gw = self.start([pool("primary", [host("a", a), host("b", b)])])
        self.assertNames(gw.port, N, {"a", "b"}, must_include={"a", "b"})
        self.assertGwctlOk(gw, "set", "host", "app/primary", "b", "--weight", "0")
        self.assertHost(gw, "app/primary/b", weight=0, admin="up")
        before = b.count
        self.assertNames(gw.port, N, {"a"})
        self.assertEqual(b.count, before, "a host of weight 0 got new connections")
        rc, out, err = gw.gwctl("set", "host", "app/primary", "b", "--weight", "0")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"^ok: host app/primary/b already has weight 0 \(generation \d+\)\n$")
        self.assertGwctlOk(gw, "set", "host", "app/primary", "b", "--weight", "3")
        self.assertHost(gw, "app/primary/b", weight=3)
        self.assertNames(gw.port, N, {"a", "b"}, must_include={"b"})
        esc = re.escape
        self.assertEvent(gw, rf"^host_changed app/primary/b {esc(b.address)} weight=0 \(was 1\)$")
        self.assertEvent(gw, rf"^host_changed app/primary/b {esc(b.address)} weight=3 \(was 0\)$")
        for what, args in (("weight out of range", ["--weight", "1001"]), ("not a number", ["--weight", "x"]),
                           ("empty", ["--weight", ""])):
            with self.subTest(what):
                self.assertGwctlError(gw, "set", "host", "app/primary", "b", *args, rc_want=1)
        self.assertGwctlError(gw, "set", "host", "app/primary", "nope", "--weight", "2", rc_want=1)
        self.assertGwctlError(gw, "set", "host", "app/primary", "b", rc_want=2)  # --weight is required
        self.assertHost(gw, "app/primary/b", weight=3)
        gw.kill_all()
        os.unlink(f"/dev/shm/{gw.shm}")
        gw.start()
        self.assertHost(gw, "app/primary/b", weight=3)

    def test_chash_pool_past_the_ring_bound_warns(self):
        """A live change that takes a chash pool past the ring's bound (a
        total weight of 6,553: 160 points per unit within 2^20) is made, and
        gwctl says on stderr that its keys no longer map as nginx's; a change
        that leaves it at the bound says nothing."""
        a, b = self.backend("a"), self.backend("b")
        hosts = [host(f"h{i}", 9 + i, 1000) for i in range(5)]  # ports nothing listens on: never picked twice
        gw = self.start([pool("primary", [host("a", a, 1000), host("b", b, 553)] + hosts, method="chash")])
        rc, out, err = gw.gwctl("set", "host", "app/primary", "b", "--weight", "554")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"^ok: set host app/primary/b weight=554 \(generation \d+\)\n$")
        self.assertEqual(err, "gwctl: warning: pool app/primary: chash over a total weight of 6554, more than 6553: "
                              "its ring is scaled down to 1048576 points, so keys split by weight but do not map to "
                              "the hosts nginx's `hash consistent` picks\n")
        self.assertHost(gw, "app/primary/b", weight=554)
        rc, out, err = gw.gwctl("set", "host", "app/primary", "b", "--weight", "553")
        self.assertEqual((rc, err), (0, ""))
        rc, out, err = gw.gwctl("add", "host", "app/primary", "c", "127.0.0.1:8", "--weight", "1")
        self.assertEqual(rc, 0, err)
        self.assertIn("gwctl: warning: pool app/primary: chash over a total weight of 6554,", err)
        self.assertHost(gw, "app/primary/c", weight=1)

    def test_pools(self):
        a, b = self.backend("a"), self.backend("b")
        gw = self.start([pool("primary", [host("a", a)], priority=5)])

        self.assertGwctlOk(gw, "add", "pool", "app", "backup", "--priority", "10")
        p = gwtest.find_pool(gw.status(), "app/backup")
        self.assertIsNotNone(p, "pool backup not in status")
        self.assertEqual((p["priority"], p["method"], p["hosts"]), (10, "round_robin", []))
        self.assertGwctlOk(gw, "add", "host", "app/backup", "b", b.address)
        self.assertNames(gw.port, N, {"a"})            # primary still preferred

        self.assertGwctlOk(gw, "set", "pool", "app", "backup", "--priority", "1", "--method", "round_robin")
        self.assertEqual(gwtest.find_pool(gw.status(), "app/backup")["priority"], 1)
        self.assertNames(gw.port, N, {"b"})            # now backup is preferred

        self.assertGwctlOk(gw, "set", "pool", "app", "backup", "--priority", "7")
        self.assertNames(gw.port, N, {"a"})

        self.assertGwctlOk(gw, "down", "host", "app/primary", "a")
        self.assertNames(gw.port, N, {"b"})            # failover when primary has no live host
        self.assertGwctlOk(gw, "up", "host", "app/primary", "a")

        self.assertGwctlOk(gw, "remove", "host", "app/backup", "b")
        self.assertGwctlOk(gw, "remove", "pool", "app", "backup")
        self.assertIsNone(gwtest.find_pool(gw.status(), "app/backup"))
        self.assertNames(gw.port, N, {"a"})

        self.assertEvent(gw, r"^pool_changed app/backup added priority=10 method=round_robin$")
        self.assertEvent(gw, r"^pool_changed app/backup priority=1 method=round_robin$")
        self.assertEvent(gw, r"^pool_changed app/backup removed$")

    def test_bad_input_changes_nothing(self):
        a, b = self.backend("a"), self.backend("b")
        gw = self.start([pool("primary", [host("a", a), host("b", b)])])
        free = f"127.0.0.1:{gwtest.free_port()}"
        cases = [
            ("unknown upstream", ["add", "host", "nope/primary", "x", free]),
            ("unknown pool", ["add", "host", "app/nope", "x", free]),
            ("unknown host (remove)", ["remove", "host", "app/primary", "nope"]),
            ("unknown host (down)", ["down", "host", "app/primary", "nope"]),
            ("unknown host (up)", ["up", "host", "app/primary", "nope"]),
            ("unknown upstream (remove)", ["remove", "host", "nope/primary", "a"]),
            ("duplicate host id", ["add", "host", "app/primary", "a", free]),
            ("bad address", ["add", "host", "app/primary", "x", "1.2.3"]),
            ("bad address no port", ["add", "host", "app/primary", "x", "127.0.0.1"]),
            ("bad port", ["add", "host", "app/primary", "x", "127.0.0.1:70000"]),
            ("unspecified address", ["add", "host", "app/primary", "x", "0.0.0.0:" + free.split(":")[1]]),
            ("weight out of range", ["add", "host", "app/primary", "x", free, "--weight", "5000"]),
            ("weight not a number", ["add", "host", "app/primary", "x", free, "--weight", "abc"]),
            ("duplicate pool", ["add", "pool", "app", "primary"]),
            ("pool in unknown upstream", ["add", "pool", "nope", "x"]),
            ("unknown method", ["add", "pool", "app", "x", "--method", "bogus"]),
            ("remove non-empty pool", ["remove", "pool", "app", "primary"]),
            ("remove unknown pool", ["remove", "pool", "app", "nope"]),
            ("set unknown pool", ["set", "pool", "app", "nope", "--priority", "1"]),
            # a name with a newline: still one line on stderr
            ("newline in a host id", ["add", "host", "app/primary", "a\nb", free]),
            ("newline in an upstream", ["add", "host", "app\n/primary", "x", free]),
            ("newline in an address", ["add", "host", "app/primary", "x", free + "\nfoo"]),
            # an empty value is not the default (an unset shell variable)
            ("empty weight", ["add", "host", "app/primary", "x", free, "--weight", ""]),
            ("empty priority", ["add", "pool", "app", "x", "--priority", ""]),
            ("empty method", ["add", "pool", "app", "x", "--method", ""]),
        ]
        self.assertGwctlErrors(gw, cases, rc_want=1)
        usage = [
            ("missing arguments", ["add", "host", "app/primary"]),
            ("unknown command", ["frobnicate"]),
            ("unknown option", ["status", "--frob"]),
        ]
        self.assertGwctlErrors(gw, usage, rc_want=2)
        # and the gateway still serves exactly as before
        self.assertNames(gw.port, N, {"a", "b"}, must_include={"a", "b"})

    def test_full_capacity(self):
        a, b, c = self.backend("a"), self.backend("b"), self.backend("c")
        cfg = self.make_config([pool("primary", [host("a", a), host("b", b)])], workers=2,
                               shm={"max_upstreams": 1, "max_pools": 2, "max_hosts": 2})
        gw = self.gateway(cfg)
        self.assertGwctlError(gw, "add", "host", "app/primary", "c", c.address)
        # a freed slot can be used again
        self.assertGwctlOk(gw, "remove", "host", "app/primary", "a")
        self.assertGwctlOk(gw, "add", "host", "app/primary", "c", c.address)
        self.assertNames(gw.port, N, {"b", "c"}, must_include={"c"})
        self.assertGwctlError(gw, "add", "host", "app/primary", "a", a.address)

    def test_no_running_gateway(self):
        missing = gwtest.unique_shm_name() + "-missing"
        self.assertFalse(os.path.exists(f"/dev/shm/{missing}"))
        self.assertGwctlError(None, "status", "--json", shm=missing)
        self.assertGwctlError(None, "status", shm=missing)
        self.assertGwctlError(None, "add", "host", "app/primary", "x", "127.0.0.1:9", shm=missing)
        self.assertGwctlError(None, "events", shm=missing)
        self.assertFalse(os.path.exists(f"/dev/shm/{missing}"), "gwctl created a shm segment")

    def test_config_option(self):
        """`-c CONFIG` finds the gateway through the config's shm.name."""
        a, b = self.backend("a"), self.backend("b")
        gw = self.start([pool("primary", [host("a", a)])])
        rc, out, err = gwtest.run_gwctl("add", "host", "app/primary", "b", b.address, config=gw.conf_path)
        self.assertEqual(rc, 0, err)
        rc, out, err = gwtest.run_gwctl("status", "--json", config=gw.conf_path)
        self.assertEqual(rc, 0, err)
        self.assertIsNotNone(gwtest.find_host(json.loads(out), "app/primary/b"))
        self.assertNames(gw.port, N, {"a", "b"}, must_include={"b"})

    def test_config_option_with_errors_in_the_config(self):
        """-c refused every command while the config had any error (an
        operator editing it during an incident lost gwctl -c). gwctl needs
        only shm.name: if the file still gives it, without an error of its
        own, gwctl uses it and warns once; otherwise it refuses as before."""
        a, b = self.backend("a"), self.backend("b")
        gw = self.start([pool("primary", [host("a", a)])], workers=1)
        cfg = json.loads(json.dumps(gw.config))
        cfg["wrokers"] = 2
        cfg["upstreams"][0]["pools"][0]["hosts"][0]["weight"] = "x"
        broken = gwtest.write_json(os.path.join(self.tmp, "broken.json"), cfg)
        rc, out, err = gwtest.run_gwctl("add", "host", "app/primary", "b", b.address, config=broken)
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"^ok: add host app/primary/b ")
        self.assertEqual(err, f"gwctl: warning: {broken} has 2 errors (first: wrokers: unknown key; gwd -t -c {broken} "
                              f'lists them); using shm.name "{gw.shm}" from it\n')
        self.assertIsNotNone(gwtest.find_host(gw.status(), "app/primary/b"))
        rc, out, err = gwtest.run_gwctl("events", config=broken)   # looks the name up twice: one warning
        self.assertEqual((rc, len(err.splitlines())), (0, 1), err)
        # No shm.name to go by, or a bad one: refused, not the default "gw" (another gateway perhaps).
        for what, shm in [("no shm.name", None), ("a bad shm.name", "a/b")]:
            with self.subTest(what):
                c = json.loads(json.dumps(cfg))
                if shm is None:
                    del c["shm"]["name"]
                else:
                    c["shm"]["name"] = shm
                path = gwtest.write_json(os.path.join(self.tmp, "worse.json"), c)
                rc, out, err = gwtest.run_gwctl("status", config=path)
                self.assertEqual((rc, out), (1, ""))
                self.assertEqual(len(err.splitlines()), 1, err)
                self.assertTrue(err.startswith(f"gwctl: {path}: "), err)
        with open(broken, "w") as f:
            f.write('{"shm": {"name": "' + gw.shm + '"}')   # not JSON: nothing is read from it
        rc, out, err = gwtest.run_gwctl("status", config=broken)
        self.assertEqual(rc, 1)
        self.assertRegex(err, rf"^gwctl: {re.escape(broken)}: \(document\): invalid JSON at line 1, column \d+: [^\n]*\n$")

    def test_events_follow(self):
        a, b = self.backend("a"), self.backend("b")
        gw = self.start([pool("primary", [host("a", a)])])
        p = subprocess.Popen(gwtest.gwctl_argv(["events", "--follow"], shm=gw.shm), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)

        def cleanup():
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()
        self.addCleanup(cleanup)
        os.set_blocking(p.stdout.fileno(), False)
        buf = bytearray()

        def saw(text):
            try:
                chunk = p.stdout.read()
            except BlockingIOError:
                chunk = None
            if chunk:
                buf.extend(chunk)
            return text in buf.decode(errors="replace")
        gwtest.wait_until(lambda: saw("gwd_started"), T(5), msg="the start event in `events --follow`")
        self.assertGwctlOk(gw, "add", "host", "app/primary", "b", b.address)
        gwtest.wait_until(lambda: saw(f"host_added app/primary/b {b.address} weight=1"), T(5),
                          msg="the new event in `events --follow`")
        self.assertIsNone(p.poll(), "`events --follow` exited")
        p.terminate()
        self.assertIsNotNone(gwtest.wait_until(lambda: p.poll() is not None, T(5), msg="events --follow to exit"))

        # Its reader gone (`| grep -m1 ...` matched), it ends on a quiet
        # gateway too, as tail -f does; it waited for the next event to fail
        # its write, and the pipeline hung.
        sh = subprocess.run(["bash", "-c", " ".join(gwtest.gwctl_argv(["events", "--follow"], shm=gw.shm)) +
                             " | grep -m1 -q gwd_started; echo ${PIPESTATUS[0]}"],
                            capture_output=True, text=True, timeout=T(10), stdin=subprocess.DEVNULL)
        self.assertEqual(sh.stdout.strip(), "0", sh.stderr)

    def test_ip_file_is_read_up_to_a_limit(self):
        """--ip-file read without a bound (/dev/zero grew gwctl to GBs, then
        bad_alloc); it stops past 64 bytes a block of shm.max_rule_cidrs (at
        least 1 MiB) with one line naming the file and the limit."""
        a = self.backend("a")
        gw = self.start([pool("primary", [host("a", a)])], workers=1)
        big = os.path.join(self.tmp, "big.txt")
        with open(big, "w") as f:   # 2 MiB of comments: no block in it, but too large to read
            f.write("# a comment line, no address in it\n" * 60000)
        limit = 1 << 20
        for path in (big, "/dev/zero"):
            with self.subTest(path):
                args = ["add", "rule", "web", "main", "r", "--ip-file", path, "--upstream", "app"]
                # 256 MiB of address space: without the limit /dev/zero ends in
                # bad_alloc. (Not under ASan, whose shadow memory needs more.)
                limit_as = None if gwtest.sanitized_build() else \
                    (lambda: resource.setrlimit(resource.RLIMIT_AS, (256 << 20, 256 << 20)))
                p = subprocess.run(gwtest.gwctl_argv(args, shm=gw.shm), capture_output=True, text=True,
                                   timeout=T(10), stdin=subprocess.DEVNULL, preexec_fn=limit_as)
                self.assertEqual((p.returncode, p.stdout), (1, ""), p.stderr)
                self.assertEqual(p.stderr, f"gwctl: --ip-file {path}: larger than the limit of {limit} bytes "
                                           "(64 bytes for each of shm.max_rule_cidrs = 4096 blocks, at least 1 MiB)\n")

    def test_usage_errors_name_what_was_not_understood(self):
        """A misspelt command or object, or an unknown option before a missing
        argument, all said "A subcommand is required" (or "address is
        required"); each now names the word (exit 2, one line)."""
        see = " (see gwctl --help)\n"
        cases = [
            (["stauts"], 'gwctl: unknown command "stauts"'),
            (["add", "hots", "x"], 'gwctl: unknown object "hots" for "add" (expected host, pool, rule, consumer)'),
            (["set", "hots", "x"], 'gwctl: unknown object "hots" for "set" (expected host, pool, rule)'),
            (["down", "pool", "x"], 'gwctl: unknown object "pool" for "down" (expected host)'),
            (["add", "host", "app/primary", "-x", "127.0.0.1:1"],
             'gwctl: unknown option "-x" for "add host" (a name or id that starts with \'-\' goes after "--")'),
            (["status", "--frob"], 'gwctl: unknown option "--frob" for "status"'),
            (["status", "--json", "extra"], 'gwctl: unexpected argument "extra" for "status"'),
            (["add"], 'gwctl: "add" needs an object (host, pool, rule, consumer)'),
            ([], "gwctl: a command is required (status, check, events, add, remove, down, up, set)"),
        ]
        for args, want in cases:
            with self.subTest(args=args):
                p = subprocess.run([gwtest.GWCTL, *args], capture_output=True, text=True, timeout=T(10),
                                   stdin=subprocess.DEVNULL)
                self.assertEqual((p.returncode, p.stdout, p.stderr), (2, "", want + see))
        # A command line that cannot run as given is a usage error too (exit 2),
        # not a refused change (1).
        for args, want in (
                (["set", "pool", "app", "p", "--shm", "x"], "gwctl: set pool needs --priority and/or --method"),
                (["add", "consumer", "z", "--shm", "x"], "gwctl: add consumer needs --key KEY or --key-file FILE"),
                (["add", "consumer", "z", "--key", "k", "--key-file", "f", "--shm", "x"],
                 "gwctl: give either --key or --key-file, not both"),
                (["status", "--shm", "x", "-c", "y.json"], "gwctl: give either --shm or -c, not both"),
                (["status", "--shm", "x", "--prefix", "/gw/"], "gwctl: --prefix goes with --etcd (it names etcd keys)"),
                (["add", "rule", "web", "r", "x", "--upstream", "a", "--header", "X=1", "--header", "Y=2"],
                 "gwctl: --header may be given only once (a rule has one header and one cookie matcher)"),
                (["status", "--shm", "a", "--shm", "b"], "gwctl: --shm may be given only once")):
            with self.subTest(args=args):
                p = subprocess.run([gwtest.GWCTL, *args], capture_output=True, text=True, timeout=T(10),
                                   stdin=subprocess.DEVNULL)
                self.assertEqual((p.returncode, p.stdout, p.stderr), (2, "", want + see))
        for args in (["--version"], ["-V"]):   # as gwd -V
            with self.subTest(args=args):
                p = subprocess.run([gwtest.GWCTL, *args], capture_output=True, text=True, timeout=T(10),
                                   stdin=subprocess.DEVNULL)
                self.assertEqual((p.returncode, p.stderr), (0, ""))
                self.assertRegex(p.stdout, r"^gwctl \d+\.\d+\.\d+\n$")

    def test_a_failed_write_to_stdout_is_an_error(self):
        """`status > /dev/full`, `check`, `add host` exited 0 (the add made,
        its ok line lost); `status --json` and `events` said "cannot write to
        file" without naming stdout. Each now exits 1 with one line naming
        standard output, and says so when the change was made."""
        a, b = self.backend("a"), self.backend("b")
        gw = self.start([pool("primary", [host("a", a)])], workers=1)
        nospace = "No space left on device"

        def to_full(*args):
            with open("/dev/full", "w") as full:
                p = subprocess.run(gwtest.gwctl_argv(args, shm=gw.shm), stdout=full, stderr=subprocess.PIPE,
                                   text=True, timeout=T(10), stdin=subprocess.DEVNULL)
            return p.returncode, p.stderr
        for args in (["status"], ["status", "--json"], ["check"], ["events"]):
            with self.subTest(args=args):
                self.assertEqual(to_full(*args), (1, f"gwctl: cannot write to standard output: {nospace}\n"))
        self.assertEqual(to_full("add", "host", "app/primary", "b", b.address),
                         (1, "gwctl: the change was made, but its report could not be written to standard output: "
                             f"{nospace}\n"))
        self.assertHost(gw, "app/primary/b", address=b.address)
        # nothing changed: not "the change was made"
        self.assertEqual(to_full("up", "host", "app/primary", "b"),
                         (1, f"gwctl: cannot write to standard output: {nospace}\n"))
        # --version and --help as well (they exited 0).
        for args in (["-V"], ["--help"], ["add", "--help"]):
            with self.subTest(args=args):
                self.assertEqual(to_full(*args), (1, f"gwctl: cannot write to standard output: {nospace}\n"))

    def test_shm_names_the_config_refuses_are_refused_alike(self):
        """shm.name "." or "NAME.lock" is a config error; gwctl --shm said
        "cannot open shm /.: Invalid argument", or opened the instance's lock
        file and called it an empty segment."""
        cases = [(".", 'gwctl: shm name "." is not a segment name\n'),
                 ("..", 'gwctl: shm name ".." is not a segment name\n'),
                 ("gw.lock", 'gwctl: shm name "gw.lock" is not a segment name (NAME.lock is the lock file of NAME)\n')]
        for name, want in cases:
            for args in (["status"], ["add", "host", "app/primary", "h9", "127.0.0.1:9"], ["events"]):
                with self.subTest(name=name, args=args):
                    p = subprocess.run([gwtest.GWCTL, "--shm", name, *args], capture_output=True, text=True,
                                       timeout=T(10), stdin=subprocess.DEVNULL)
                    self.assertEqual((p.returncode, p.stdout, p.stderr), (1, "", want))

    def test_bytes_a_terminal_acts_on_are_escaped(self):
        """The C1 control CSI (U+009B, bytes c2 9b) and bytes that are not
        UTF-8 were written raw to stderr; they are escaped as \\xNN like the
        ASCII controls."""
        missing = gwtest.unique_shm_name() + "-missing"
        cases = [
            ([b"--shm", b"x\xff", b"status"], b'gwctl: shm name "x\\xff" may contain only letters, digits and . _ -\n'),
            ([b"--shm", missing.encode(), b"add", b"host", b"app/primary", b"h9", b"1.2.3.4:5\xc2\x9b31m"],
             b'gwctl: bad address "1.2.3.4:5\\xc2\\x9b31m": port must be an integer 1..65535, '
             b'got "5\\xc2\\x9b31m"\n'),
        ]
        for args, want in cases:
            with self.subTest(args=args):
                p = subprocess.run([gwtest.GWCTL.encode(), *args], capture_output=True, timeout=T(10),
                                   stdin=subprocess.DEVNULL)
                self.assertEqual((p.returncode, p.stderr), (1, want))

    def test_bytes_a_terminal_acts_on_are_escaped_in_ok_status_and_events(self):
        """A rule's header value may hold a C1 control (U+009B, CSI: valid
        UTF-8, bytes a header may carry). The ok line, `status` and `events`
        wrote it raw, where a terminal acts on it; they escape it as \\xNN, as
        the error lines do. status --json keeps the value (JSON is UTF-8)."""
        gw = self.web_gateway()
        argv = [gwtest.GWCTL.encode(), b"--shm", gw.shm.encode(), b"add", b"rule", b"web", b"main", b"r",
                b"--header", b"X-T=a\xc2\x9b31mb", b"--upstream", b"app"]
        p = subprocess.run(argv, capture_output=True, timeout=T(10), stdin=subprocess.DEVNULL)
        self.assertEqual((p.returncode, p.stderr), (0, b""))
        self.assertEqual(re.sub(rb"generation \d+", b"generation N", p.stdout),
                         b"ok: add rule web/main/r header=X-T=a\\xc2\\x9b31mb -> app (generation N)\n")
        for args in (["status"], ["events"]):
            with self.subTest(args=args):
                p = subprocess.run(gwtest.gwctl_argv(args, shm=gw.shm), capture_output=True, timeout=T(10),
                                   stdin=subprocess.DEVNULL)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertNotIn(b"\xc2\x9b", p.stdout)
                self.assertIn(b"header=X-T=a\\xc2\\x9b31mb", p.stdout)
        self.assertEqual(gw.status()["routes"][0]["rules"][0]["header"], {"name": "X-T", "value": "a\u009b31mb"})

    def test_bytes_a_terminal_acts_on_are_escaped_in_gwd_log(self):
        """gwd logs each committed change ("event: rule_changed ..."). It wrote a
        C1 control (U+009B, CSI) in a rule's header value raw, where a
        terminal showing the log acts on it; it escapes it as \\xNN, as
        gwctl does, and the record stays one line."""
        gw = self.web_gateway()
        argv = [gwtest.GWCTL.encode(), b"--shm", gw.shm.encode(), b"add", b"rule", b"web", b"main", b"r",
                b"--header", b"X-T=a\xc2\x9b31mb", b"--upstream", b"app"]
        p = subprocess.run(argv, capture_output=True, timeout=T(10), stdin=subprocess.DEVNULL)
        self.assertEqual((p.returncode, p.stderr), (0, b""))
        want = b"event: rule_changed web/main/r added header=X-T=a\\xc2\\x9b31mb -> app\n"

        def logged():
            with open(gw.log_path, "rb") as f:
                return f.read()
        gwtest.wait_until(lambda: b"event: rule_changed web/main/r " in logged(), T(10), msg="the event in gwd's log")
        log = logged()
        self.assertNotIn(b"\xc2\x9b", log)
        self.assertIn(want, log)

    def web_gateway(self):
        """A gateway with an http listener "web" whose route "main" takes rules."""
        a = self.backend("a")
        web = {"name": "web", "listen": f"{gwtest.LOOPBACK}:{gwtest.free_port()}", "protocol": "http",
               "routes": [{"name": "main", "upstream": "app"}]}
        return self.start([pool("primary", [host("a", a)])], workers=1, listeners=[web])

    def test_rule_values_are_not_changed_silently(self):
        """--percent 0.001 became 0 (a rule that never matches), and a block
        given twice took two slots: both are refused now; an overlapping
        but different block is still a block of its own."""
        gw = self.web_gateway()
        ipfile = os.path.join(self.tmp, "ips.txt")
        with open(ipfile, "w") as f:
            f.write("10.1.0.0/16\n# a comment\n10.0.0.1/32\n")
        rule = ["add", "rule", "web", "main", "r"]
        for args, want in [
            (["--percent", "0.001"], 'gwctl: --percent must be a number 0..100 in steps of 0.01, got "0.001"'),
            (["--percent", "12.345"], 'gwctl: --percent must be a number 0..100 in steps of 0.01, got "12.345"'),
            (["--ip", "10.0.0.1,10.0.0.1"], "gwctl: --ip: address block 10.0.0.1/32 is given twice"),
            # an IPv4-mapped IPv6 block is the IPv4 block
            (["--ip", "10.0.0.1,::ffff:10.0.0.1"], "gwctl: --ip: address block 10.0.0.1/32 is given twice"),
            (["--ip", "10.0.0.1", "--ip-file", ipfile],
             f"gwctl: --ip-file {ipfile}: address block 10.0.0.1/32 is given twice (also in --ip)"),
        ]:
            with self.subTest(args=args):
                rc, line = self.assertGwctlError(gw, *rule, *args, "--upstream", "app", rc_want=1)
                self.assertEqual(line, want)
        self.assertGwctlOk(gw, *rule, "--ip", "10.0.0.0/8,10.0.0.1,::ffff:192.0.2.0/120,::1", "--percent", "12.34",
                           "--upstream", "app")
        r = gw.status()["routes"][0]["rules"][0]
        self.assertEqual((r["ip"], r["percent"]), (["10.0.0.0/8", "10.0.0.1/32", "192.0.2.0/24", "::1/128"], 12.34))

    def test_dot_ids_are_refused(self):
        """Ids "." and ".." were taken, and no admin API URL path can name
        them (clients resolve such segments); gwctl refuses them as the config
        and the admin API do (one shared check)."""
        gw = self.web_gateway()
        why = 'must not be "." or ".." (no admin API URL path can name it)'
        for args, what in [
            (["add", "host", "app/primary", ".", "127.0.0.1:9"], 'host id "."'),
            (["add", "pool", "app", ".."], 'pool id ".."'),
            (["add", "rule", "web", "main", ".", "--ip", "10.0.0.1", "--upstream", "app"], 'rule id "."'),
            (["add", "consumer", "..", "--key", "k-123"], 'consumer name ".."'),
        ]:
            with self.subTest(args=args):
                rc, line = self.assertGwctlError(gw, *args, rc_want=1)
                self.assertEqual(line, f"gwctl: {what} {why}")
        self.assertGwctlOk(gw, "add", "host", "app/primary", "...", "127.0.0.1:9")   # only . and .. are paths

    def test_empty_shm_is_not_the_default_gateway(self):
        rc, out, err = gwtest.run_gwctl("--shm", "", "status")
        self.assertEqual(rc, 1, out)
        self.assertEqual(err.strip(), "gwctl: --shm: an empty value")

    def test_events_follow_reports_lost_events_and_follows_a_new_segment(self):
        """A follower that falls more than the ring (4,096 events) behind
        says how many it lost (they used to vanish silently), and one whose
        gwd made its segment again (new capacities) follows the new one (it
        used to stay on the unlinked one and print nothing more)."""
        a = self.backend("a")
        admin_port = gwtest.free_port()
        gw = self.start([pool("primary", [host("a", a)])], admin={"listen": f"127.0.0.1:{admin_port}",
                                                                  "token": "t0123456789abcdef"})
        out_path = os.path.join(self.tmp, "follow.out")
        out = open(out_path, "wb")

        def followed():
            with open(out_path, "rb") as f:
                return f.read()
        p = subprocess.Popen(gwtest.gwctl_argv(["events", "--follow"], shm=gw.shm), stdout=out,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.addCleanup(lambda: (p.poll() is None and p.kill(), p.wait(), out.close()))
        gwtest.wait_until(lambda: b"gwd_started" in followed(), T(5), msg="the follower runs")
        os.kill(p.pid, signal.SIGSTOP)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=T(10))
            for i in range(4200):
                conn.request("POST", f"/upstreams/app/pools/primary/hosts/a/{'down' if i % 2 == 0 else 'up'}",
                             headers={"Authorization": "Bearer t0123456789abcdef"})
                r = conn.getresponse()
                r.read()
                self.assertEqual(r.status, 200)
            conn.close()
        finally:
            os.kill(p.pid, signal.SIGCONT)
        gwtest.wait_until(lambda: followed().count(b"host_") >= 4000, T(20),
                          msg="the follower catches up")
        # gwd stopped and started with other capacities: the segment is made again
        self.assertEqual(gw.stop(), 0)
        gw.config["shm"]["max_hosts"] = gw.config["shm"]["max_hosts"] * 2
        gwtest.write_json(gw.conf_path, gw.config)
        gw.start()
        b = self.backend("b")
        self.assertGwctlOk(gw, "add", "host", "app/primary", "b", b.address)
        gwtest.wait_until(lambda: f"host_added app/primary/b {b.address}".encode() in followed(),
                          T(10), msg="the follower sees the new segment's events")
        p.terminate()
        _, err = p.communicate(timeout=T(5))
        err = err.decode()
        m = re.search(r"gwctl: (\d+) event\(s\) lost: the ring \(4096 entries\) wrapped", err)
        self.assertIsNotNone(m, err)
        self.assertGreater(int(m.group(1)), 0)
        self.assertIn("was made again (gwd restarted); following the new segment", err)

    def test_events_neither_the_master_nor_gwctl_could_read_are_reported(self):
        """Events the ring wrote over before the master read them (4,200
        written while it was stopped) and an event whose writer died while
        writing it: the master logs how many it neither logged nor ran a hook
        for (it skipped them without a word, so a host_down hook could silently
        not run), and `gwctl events` says it skipped the unfinished one (it
        dropped it silently)."""
        a = self.backend("a")
        gw = self.start([pool("primary", [host("a", a)])])
        emit = os.path.join(gwtest.BUILD_DIR, "tests", "gw-emit-events")
        os.kill(gw.pid, signal.SIGSTOP)
        try:
            subprocess.run([emit, gw.shm, "4200"], check=True, timeout=T(30))
        finally:
            os.kill(gw.pid, signal.SIGCONT)
        pat = r"warn master\[\d+\]: (\d+) event\(s\) written over in the event ring \(4096 entries\) before the " \
              r"master read them: not logged, and no hook ran for them"
        gwtest.wait_until(lambda: re.search(pat, gw.log_text()), T(10), msg="the master says it lost events")
        self.assertGreaterEqual(int(re.search(pat, gw.log_text()).group(1)), 4200 - 4096)
        rc, out, err = gw.gwctl("events")
        self.assertEqual((rc, err), (0, ""))
        self.assertEqual(len(out.splitlines()), 4096)

        r = subprocess.run([emit, gw.shm, "--claim-only"], capture_output=True, text=True, timeout=T(10))
        self.assertEqual(r.returncode, 0, r.stderr)
        claimed = int(r.stdout)
        self.assertGwctlOk(gw, "down", "host", "app/primary", "a")  # an event after it
        gwtest.wait_until(lambda: "1 event(s) never finished by their writer (killed while writing one): not logged, "
                          "and no hook ran for them" in gw.log_text(), T(10),
                          msg="the master says it skipped the unfinished event")
        rc, out, err = gw.gwctl("events")
        self.assertEqual(rc, 0, err)
        self.assertEqual(err, "gwctl: 1 event(s) skipped: their writer never finished them (killed while writing "
                              "one)\n")
        self.assertNotIn(f" #{claimed} ", out)
        self.assertIn(f" #{claimed + 1} gen=", out.splitlines()[-1])
        self.assertIn("host_down app/primary/a", out.splitlines()[-1])

    def test_status_table_and_json(self):
        a, b, c = self.backend("a"), self.backend("b"), self.backend("c")
        gw = self.start([pool("primary", [host("alpha-host", a), host("bravo-host", b, 2)]),
                         pool("dr-pool", [host("charlie-host", c)], priority=1)])
        out = self.assertGwctlOk(gw, "status")
        for word in ("app", "primary", "dr-pool", "alpha-host", "bravo-host", "charlie-host",
                     a.address, b.address, c.address):
            self.assertIn(word, out, f"`gwctl status` does not mention {word}:\n{out}")
        st = gw.status()
        self.assertEqual(st["shm"], gw.shm)
        self.assertEqual(st["master_pid"], gw.pid)
        self.assertEqual(len(st["workers"]), 2)
        self.assertEqual(sorted(w["slot"] for w in st["workers"]), [0, 1])
        self.assertIsInstance(st["generation"], int)
        h = gwtest.find_host(st, "app/primary/bravo-host")
        for key in ("id", "address", "weight", "admin", "health", "active", "total", "failures"):
            self.assertIn(key, h)
        self.assertEqual((h["address"], h["weight"], h["admin"], h["health"]), (b.address, 2, "up", "up"))
        # counters: connections are counted per host
        gwtest.names(gw.port, 6)

        def total():
            st = gw.status()
            return sum(gwtest.find_host(st, f"app/primary/{x}")["total"] for x in ("alpha-host", "bravo-host"))
        gwtest.wait_until(lambda: total() == 6, T(5), msg="total connections 6 in status")

    def test_status_of_a_killed_gateway_shows_no_open_connection(self):
        """Workers SIGKILLed with their master leave their per-host "active"
        counters as they were: status showed a stopped gateway's host with a
        connection open. With no master running it shows 0 (totals stay:
        they are history)."""
        a = self.backend("a")
        gw = self.start([pool("primary", [host("a", a)])])
        with socket.create_connection((gwtest.LOOPBACK, gw.port), timeout=T(5)) as s:
            s.sendall(b"x")
            gwtest.wait_until(lambda: gwtest.find_host(gw.status(), "app/primary/a")["active"] == 1, T(5),
                              msg="the connection counted as active")
            gw.kill_all()
            st = json.loads(self.assertGwctlOk(gw, "status", "--json"))
            self.assertEqual((st["master_pid"], st["workers"]), (0, []))
            h = gwtest.find_host(st, "app/primary/a")
            self.assertEqual((h["active"], h["total"]), (0, 1))
            out = self.assertGwctlOk(gw, "status")
            self.assertIn("master NOT RUNNING", out)
            row = next(line for line in out.splitlines() if line.split()[:2] == ["a", a.address])
            self.assertEqual(row.split()[5:7], ["0", "1"], out)

    def test_status_shows_http_retry_tries_where_they_differ(self):
        # `tries` counts tcp and frame connects; an http request's attempts
        # come from retry.tries, which status shows only where it differs.
        a = self.backend("a")
        gw = self.start([pool("primary", [host("a", a)])], upstream_opts={"tries": 3, "retry": {"tries": 2}})
        out = self.assertGwctlOk(gw, "status")
        self.assertRegex(out, r"(?m)^app \(connect \d+ ms, .*, tries 3, http retry\.tries 2\)$")
        plain = self.start([pool("primary", [host("a", a)])], upstream_opts={"tries": 2})
        out = self.assertGwctlOk(plain, "status")
        self.assertRegex(out, r"(?m)^app \(connect \d+ ms, .*, tries 2\)$")

    def test_events(self):
        a, b = self.backend("a"), self.backend("b")
        gw = self.start([pool("primary", [host("a", a)])])
        gen0 = gw.status()["generation"]
        steps = [
            (["add", "host", "app/primary", "b", b.address], f"host_added app/primary/b {b.address} weight=1"),
            (["down", "host", "app/primary", "b"], f"host_down app/primary/b {b.address} (admin: gwctl down)"),
            (["up", "host", "app/primary", "b"], f"host_up app/primary/b {b.address} (admin: gwctl up)"),
            (["add", "pool", "app", "backup", "--priority", "1"], "pool_changed app/backup added priority=1 method=round_robin"),
            (["set", "pool", "app", "backup", "--priority", "2"], "pool_changed app/backup priority=2 method=round_robin"),
            (["remove", "pool", "app", "backup"], "pool_changed app/backup removed"),
            (["remove", "host", "app/primary", "b"], f"host_removed app/primary/b {b.address}"),
        ]
        for args, _ in steps:
            self.assertGwctlOk(gw, *args)
        lines = gw.events()
        parsed = []
        for line in lines:
            m = gwtest.EVENT_RE.match(line)
            self.assertIsNotNone(m, f"malformed event line {line!r}")
            parsed.append((int(m.group(1)), int(m.group(2)), m.group(3)))
        seqs = [p[0] for p in parsed]
        self.assertEqual(seqs, sorted(seqs), "event sequence numbers not increasing")
        texts = [p[2] for p in parsed]
        idx = []
        for _, want in steps:
            self.assertIn(want, texts, f"event {want!r} missing from:\n" + "\n".join(lines))
            idx.append(texts.index(want))
        self.assertEqual(idx, sorted(idx), "events out of order:\n" + "\n".join(lines))
        gens = [parsed[i][1] for i in idx]
        self.assertTrue(all(x < y for x, y in zip(gens, gens[1:])),
                        f"each change should get a new, higher generation: {gens}")
        self.assertGreater(gens[0], gen0)
        self.assertEqual(gw.status()["generation"], gens[-1])

    def test_check(self):
        """gwctl check (keepalived's vrrp_script): 0 while master, workers and
        listeners are fine; 1 with a one-line reason otherwise."""
        a = self.backend("a")
        missing = gwtest.unique_shm_name() + "-missing"
        rc, line = self.assertGwctlError(None, "check", shm=missing, rc_want=1)
        self.assertIn("no running gateway", line)

        gw = self.start([pool("primary", [host("a", a)])], workers=1,
                        listeners=[gwtest.tcp_listener("l4", "app", backlog=1)])
        rc, out, err = gw.gwctl("check")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, rf"^ok: master pid {gw.pid}, 1 worker\(s\) running, 1 listener\(s\) accepting\n$")

        # A stopped worker (its socket takes connections that then wait).
        wpid = gw.worker_pids()[0]
        os.kill(wpid, signal.SIGSTOP)
        try:
            rc, line = self.assertGwctlError(gw, "check", rc_want=1)
            self.assertRegex(line, rf"^gwctl: check failed: worker pid {wpid} is stopped \(SIGSTOP or a debugger\)")
        finally:
            os.kill(wpid, signal.SIGCONT)
        gwtest.wait_until(lambda: gw.gwctl("check")[0] == 0, T(5), msg="check ok again")

        # A hung worker that is not stopped (frozen by the cgroup freezer, as a
        # worker stuck in a loop): at first its accept queue fills up and new
        # connects time out; once it has missed its loop rounds for 3 s, that
        # says so whatever the queue.
        freezer = f"/sys/fs/cgroup/freezer/{gw.shm}"
        try:
            os.mkdir(freezer)
        except OSError:
            freezer = None
        if freezer:
            self.addCleanup(lambda: os.path.isdir(freezer) and os.rmdir(freezer))
            held = []
            try:
                with open(f"{freezer}/tasks", "w") as f:
                    f.write(str(wpid))
                with open(f"{freezer}/freezer.state", "w") as f:
                    f.write("FROZEN")
                gwtest.wait_until(lambda: open(f"{freezer}/freezer.state").read().strip() == "FROZEN", T(5),
                                  msg="the worker is frozen")
                for _ in range(8):
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", gw.port))
                    held.append(s)
                time.sleep(0.2)
                rc, out, err = gw.gwctl("check", "--timeout-ms", "300")
                self.assertEqual(rc, 1, out)
                self.assertRegex(err.strip(), rf"^gwctl: check failed: (listener l4 \(127\.0\.0\.1:{gw.port}\) does "
                                              r"not accept connections: connect timed out|worker pid \d+ has not run "
                                              r"its event loop for \d+ ms \(stuck\?\))$")
                gwtest.wait_until(lambda: "has not run its event loop" in gw.gwctl("check")[2], T(10),
                                  msg="the frozen worker is named")
            finally:
                with open(f"{freezer}/freezer.state", "w") as f:
                    f.write("THAWED")
                with open("/sys/fs/cgroup/freezer/tasks", "w") as f:
                    f.write(str(wpid))
                for s in held:
                    s.close()
            gwtest.wait_until(lambda: gw.gwctl("check")[0] == 0, T(5), msg="check ok again")

        # Reloads: the new workers are waited for (up to --timeout-ms) while
        # they build their tables; checks failed for 50-100 ms after each.
        cfg = gw.config
        cfg["workers"] = 2
        gwtest.write_json(gw.conf_path, cfg)
        fails = []
        for _ in range(5):
            os.kill(gw.pid, signal.SIGHUP)
            end = time.monotonic() + 0.3
            while time.monotonic() < end:
                rc, _, err = gw.gwctl("check", "--timeout-ms", str(int(T(5) * 1000)))
                if rc != 0:
                    fails.append(err.strip())
        self.assertEqual(fails, [])

        # The master gone (its workers drain and exit on their own).
        os.kill(gw.pid, signal.SIGKILL)
        gw.proc.wait(T(5))
        rc, line = self.assertGwctlError(None, "check", shm=gw.shm, rc_want=1)
        self.assertRegex(line, rf"^gwctl: check failed: the master \(pid {gw.pid}\) is not running$")


if __name__ == "__main__":
    gwtest.main()
