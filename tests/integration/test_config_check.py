#!/usr/bin/python3
"""gwd -t -c: config validation with JSON paths in every error."""

import copy
import hashlib
import ctypes
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import GwTestCase, host, pool, tcp_listener  # noqa: E402


class ConfigCheckTest(GwTestCase):
    needs = ("gwd",)

    def valid_config(self):
        """The contract's full example, with every key, on free ports."""
        return {
            "workers": 2,
            "log_file": "",
            "log_level": "info",
            "shutdown_timeout_ms": 10000,
            "shm": {"name": self.shm_name(), "max_upstreams": 64, "max_pools": 256, "max_hosts": 4096},
            "state_file": "state/gw.state.json",
            "listeners": [tcp_listener("l4", "app", backlog=511)],
            "upstreams": [{
                "name": "app", "connect_timeout_ms": 2000, "idle_timeout_ms": 600000,
                "max_fails": 1, "fail_timeout_ms": 10000, "tries": 3,
                "pools": [pool("primary", [host("a", "127.0.0.1:8081", 1), host("b", "127.0.0.1:8082", 2)]),
                          pool("backup", [host("c", "127.0.0.1:8083", 1)], priority=1)],
            }],
        }

    def test_valid_config_ok(self):
        cfg = self.valid_config()
        path = gwtest.write_json(os.path.join(self.tmp, "good.json"), cfg)
        r = gwtest.run_gwd_test(path)
        self.assertEqual(r.returncode, 0, f"stdout={r.stdout!r} stderr={r.stderr!r}")
        self.assertRegex(r.stdout, r"(?m)^ok$")
        # a check starts nothing and creates no shm segment
        self.assertFalse(os.path.exists(f"/dev/shm/{cfg['shm']['name']}"), "gwd -t created the shm segment")

    def test_files_gwd_cannot_write_fail_the_check(self):
        """gwd -t said ok for a log file, an access log or a state file that
        gwd then failed to open at start; it checks them now (creating
        nothing), as nginx -t opens its logs."""
        cfg = self.valid_config()
        os.makedirs(os.path.join(self.tmp, "adir"))
        cfg["log_file"] = os.path.join(self.tmp, "no-such-dir", "gw.log")
        cfg["state_file"] = os.path.join(self.tmp, "adir")
        cfg["listeners"][0]["access_log"] = {"path": os.path.join(self.tmp, "nope", "access.log")}
        path = gwtest.write_json(os.path.join(self.tmp, "files.json"), cfg)
        r = gwtest.run_gwd_test(path)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("log_file: the directory", r.stderr)
        self.assertIn("access_log: the directory", r.stderr)
        self.assertIn("state_file: " + os.path.join(self.tmp, "adir") + " is a directory", r.stderr)
        self.assertIn("3 error(s)", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "no-such-dir")))
        # A state file in directories that do not exist yet is fine: gwd creates them.
        cfg = self.valid_config()
        cfg["state_file"] = os.path.join(self.tmp, "new", "deeper", "gw.state.json")
        r = gwtest.run_gwd_test(gwtest.write_json(os.path.join(self.tmp, "files2.json"), cfg))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_state_file_is_checked_as_a_start_reads_it(self):
        """gwd -t said ok for a truncated state file, and for one whose table
        no longer fits shm.max_hosts; the start then failed (the latter without
        naming the file or the count). -t reads it as a start does and names
        the file; it changes neither the file nor creates a segment."""
        cfg = self.valid_config()
        state = os.path.join(self.tmp, "gw.state.json")
        cfg["state_file"] = state
        cfg["shm"]["max_hosts"] = 4
        path = gwtest.write_json(os.path.join(self.tmp, "state.json"), cfg)
        hosts = [{"id": f"h{i}", "address": f"127.0.0.1:{20000 + i}", "weight": 1, "down": False}
                 for i in range(6)]
        good = json.dumps({"gw_state": 1, "generation": 5, "upstreams": [
            {"name": "app", "pools": [{"id": "primary", "priority": 0, "method": "round_robin",
                                       "hosts": hosts[:3]}]}]})
        for text, want in [
            (good, None),
            (good[:len(good) // 2], f"{path}: state file {state}: "),
            (good.replace('"hosts": [', '"hosts": [' + ", ".join(json.dumps(h) for h in hosts[3:]) + ", "),
             f"{path}: the table from state file {state} needs 6 hosts, more than shm.max_hosts = 4"),
        ]:
            with self.subTest(want=want):
                with open(state, "w") as f:
                    f.write(text)
                before = os.stat(state)
                r = gwtest.run_gwd_test(path)
                self.assertEqual(os.stat(state).st_mtime_ns, before.st_mtime_ns, "gwd -t changed the state file")
                self.assertFalse(os.path.exists(f"/dev/shm/{cfg['shm']['name']}"), "gwd -t created the segment")
                if want is None:
                    self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)
                    # valid, but the config's hosts are not what a start would run: said
                    self.assertRegex(r.stderr, rf'^{re.escape(path)}: warning: upstream "app": its pools and hosts '
                                               r'come from the runtime state .*host "primary/h0" is at runtime only')
                    continue
                self.assertEqual(r.returncode, 1, r.stdout)
                self.assertEqual(r.stderr.splitlines()[1:], [f"{path}: 1 error(s)"], r.stderr)
                self.assertTrue(r.stderr.startswith(want), r.stderr)
                # and the start fails for the same reason, in the same words
                g = subprocess.run([gwtest.GWD, "-c", path], capture_output=True, text=True, timeout=gwtest.T(10),
                                   stdin=subprocess.DEVNULL)
                self.assertEqual(g.returncode, 1, g.stderr)
                self.assertIn(r.stderr.splitlines()[0][len(path) + 2:], g.stderr)
                self.assertFalse(os.path.exists(f"/dev/shm/{cfg['shm']['name']}"), "a failed start left a segment")

    def test_log_file_fifo_without_reader_fails_the_check_as_the_start(self):
        """gwd -t checked log_file with access(2) only: it said ok for a FIFO
        that no process reads, which a start (and a reload) refuses at once
        (the master opens it without waiting for a reader). -t opens it as the
        start does, and says why in the start's words. An access log that is
        such a FIFO passes both (its logger waits for a reader)."""
        cfg = self.valid_config()
        fifo = os.path.join(self.tmp, "gw.fifo")
        os.mkfifo(fifo)
        cfg["log_file"] = fifo
        path = gwtest.write_json(os.path.join(self.tmp, "fifo.json"), cfg)
        r = gwtest.run_gwd_test(path)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        why = f"cannot open log file {fifo}: No such device or address (a FIFO that no process reads)"
        self.assertEqual(r.stderr.splitlines(), [f"{path}: log_file: {why}", f"{path}: 1 error(s)"])
        g = subprocess.run([gwtest.GWD, "-c", path], capture_output=True, text=True, timeout=gwtest.T(10),
                           stdin=subprocess.DEVNULL)
        self.assertEqual(g.returncode, 1, g.stderr)
        self.assertIn(why, g.stderr)
        self.assertFalse(os.path.exists(f"/dev/shm/{cfg['shm']['name']}"), "a failed start left a segment")
        # With a reader it passes.
        rd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            r = gwtest.run_gwd_test(path)
        finally:
            os.close(rd)
        self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)
        cfg["log_file"] = ""
        cfg["listeners"][0]["access_log"] = {"path": fifo}
        r = gwtest.run_gwd_test(gwtest.write_json(os.path.join(self.tmp, "fifo-access.json"), cfg))
        self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)

    def test_access_log_the_start_refuses_fails_the_check_in_its_words(self):
        """An access log that exists is opened as the start opens it: gwd -t
        refused a directory in words of its own (`X is a directory`), the
        start with `cannot open access log X: Is a directory`."""
        cfg = self.valid_config()
        adir = os.path.join(self.tmp, "logs")
        os.makedirs(adir)
        cfg["listeners"][0]["access_log"] = {"path": adir}
        path = gwtest.write_json(os.path.join(self.tmp, "access-dir.json"), cfg)
        r = gwtest.run_gwd_test(path)
        why = f"cannot open access log {adir}: Is a directory"
        self.assertEqual(r.stderr.splitlines(), [f"{path}: access_log: {why}", f"{path}: 1 error(s)"])
        self.assertEqual(r.returncode, 1, r.stdout)
        g = subprocess.run([gwtest.GWD, "-c", path], capture_output=True, text=True, timeout=gwtest.T(10),
                           stdin=subprocess.DEVNULL, cwd=self.tmp)
        self.assertEqual(g.returncode, 1, g.stderr)
        # The start (and a reload) name the listener, as a bind error does.
        self.assertIn(f'listener "{cfg["listeners"][0]["name"]}": access_log: {why}', g.stderr)
        self.assertFalse(os.path.exists(f"/dev/shm/{cfg['shm']['name']}"), "a failed start left a segment")

    def test_shm_segment_is_checked_as_a_start_reads_it(self):
        """Without a state file, the shm segment a stopped gwd left is the
        runtime state the next start takes. gwd -t read only the state file:
        it said ok (and warned of nothing) for a config whose shm.max_hosts the
        segment's table no longer fits, and the start then failed."""
        cfg = self.make_config([pool("primary", [host("a", "127.0.0.1:8081")])])
        del cfg["state_file"]
        gw = self.gateway(cfg)
        for i in range(5):
            self.assertGwctlOk(gw, "add", "host", "app/primary", f"h{i}", f"127.0.0.1:{20000 + i}")
        self.assertEqual(gw.stop(), 0)
        path = gw.conf_path
        r = gwtest.run_gwd_test(path)
        self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)
        self.assertRegex(r.stderr, rf'^{re.escape(path)}: warning: upstream "app": its pools and hosts '
                                   r'come from the runtime state .*host "primary/h0" is at runtime only')
        cfg["shm"]["max_hosts"] = 4
        path = gwtest.write_json(os.path.join(self.tmp, "fewer.json"), cfg)
        r = gwtest.run_gwd_test(path)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        why = f'the table from shm segment "{cfg["shm"]["name"]}" needs 6 hosts, more than shm.max_hosts = 4'
        self.assertEqual(r.stderr.splitlines(), [f"{path}: {why}", f"{path}: 1 error(s)"])
        # and the start fails for the same reason, in the same words
        g = subprocess.run([gwtest.GWD, "-c", path], capture_output=True, text=True, timeout=gwtest.T(10),
                           stdin=subprocess.DEVNULL, cwd=self.tmp)
        self.assertEqual(g.returncode, 1, g.stderr)
        self.assertIn(why, g.stderr)

    def test_drift_warning_says_a_method_is_the_frame_default(self):
        """A pool without "method" under a frame listener's upstream is chash
        by default; when the runtime state has another method, -t's warning
        says the chash is that default (the operator wrote no chash)."""
        cfg = self.valid_config()
        state = os.path.join(self.tmp, "gw.state.json")
        cfg["state_file"] = state
        cfg["listeners"] = [{"name": "dev", "listen": f"{gwtest.LOOPBACK}:{gwtest.free_port()}",
                             "protocol": "frame", "upstream": "app"}]
        for p in cfg["upstreams"][0]["pools"]:
            del p["method"]
        cfg["upstreams"][0]["pools"][1]["method"] = "chash"
        path = gwtest.write_json(os.path.join(self.tmp, "frame.json"), cfg)
        pools = [{"id": p["id"], "priority": p["priority"], "method": "round_robin",
                  "hosts": [dict(h, down=False) for h in p["hosts"]]} for p in cfg["upstreams"][0]["pools"]]
        with open(state, "w") as f:
            json.dump({"gw_state": 1, "generation": 5, "upstreams": [{"name": "app", "pools": pools}]}, f)
        r = gwtest.run_gwd_test(path)
        self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)
        self.assertIn('pool "primary" has method chash in the config (the default for an upstream of a frame '
                      'listener), round_robin at runtime', r.stderr)
        self.assertIn('pool "backup" has method chash in the config, round_robin at runtime', r.stderr)

    def test_drift_warning_says_round_robin_is_the_default(self):
        """A pool without "method" under a tcp listener's upstream is
        round_robin: the warning called that "the default for an upstream of
        a frame listener", whose default is chash."""
        cfg = self.valid_config()
        state = os.path.join(self.tmp, "gw.state.json")
        cfg["state_file"] = state
        for p in cfg["upstreams"][0]["pools"]:
            del p["method"]
        path = gwtest.write_json(os.path.join(self.tmp, "tcp.json"), cfg)
        pools = [{"id": p["id"], "priority": p["priority"], "method": "chash",
                  "hosts": [dict(h, down=False) for h in p["hosts"]]} for p in cfg["upstreams"][0]["pools"]]
        with open(state, "w") as f:
            json.dump({"gw_state": 1, "generation": 5, "upstreams": [{"name": "app", "pools": pools}]}, f)
        r = gwtest.run_gwd_test(path)
        self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)
        self.assertIn('pool "primary" has method round_robin in the config (the default), chash at runtime', r.stderr)
        self.assertNotIn("frame", r.stderr)

    def test_rule_or_consumer_edited_in_the_config_warns(self):
        """The runtime state's rules and consumers win over the config's. A
        config rule whose id the runtime state has, with other matchers, or a
        consumer with another key (a rotated key) was not applied and not
        mentioned either: the old matcher and the old key stayed in force in
        silence. Each now gets a warning; an unchanged one (address blocks in
        another order included) gets none."""
        cfg = self.valid_config()
        state = os.path.join(self.tmp, "gw.state.json")
        cfg["state_file"] = state
        cfg["upstreams"].append({"name": "pre", "pools": [pool("p", [host("c", "127.0.0.1:8084", 1)])]})
        cfg["listeners"].append({
            "name": "web", "listen": f"{gwtest.LOOPBACK}:{gwtest.free_port()}", "protocol": "http",
            "routes": [{"name": "default", "upstream": "app", "rules": [
                {"id": "canary", "header": "X-Canary=3", "upstream": "pre"},
                {"id": "net", "ip": ["10.0.0.0/8", "127.0.0.2"], "upstream": "pre"}]}]})
        cfg["consumers"] = [{"name": "alice", "key": "new-alice-key"}, {"name": "bob", "key": "bob-key"}]
        path = gwtest.write_json(os.path.join(self.tmp, "edited.json"), cfg)
        pools = [{"id": p["id"], "priority": p["priority"], "method": p["method"],
                  "hosts": [dict(h, down=False) for h in p["hosts"]]} for p in cfg["upstreams"][0]["pools"]]
        pre = [{"id": "p", "priority": 0, "method": "round_robin",
                "hosts": [{"id": "c", "address": "127.0.0.1:8084", "weight": 1, "down": False}]}]
        sha = lambda key: hashlib.sha256(key.encode()).hexdigest()  # noqa: E731
        with open(state, "w") as f:
            json.dump({"gw_state": 1, "generation": 5,
                       "upstreams": [{"name": "app", "pools": pools}, {"name": "pre", "pools": pre}],
                       "routes": [{"listener": "web", "route": "default", "rules": [
                           {"id": "canary", "upstream": "pre", "header": {"name": "X-Canary", "value": "1"}},
                           {"id": "net", "upstream": "pre", "ip": ["127.0.0.2/32", "10.0.0.0/8"]}]}],
                       "consumers": [{"name": "alice", "key_sha256": sha("old-alice-key")},
                                     {"name": "bob", "key_sha256": sha("bob-key")}]}, f)
        r = gwtest.run_gwd_test(path)
        self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)
        warnings = [line for line in r.stderr.splitlines() if ": warning: " in line]
        self.assertEqual(len(warnings), 2, r.stderr)
        self.assertIn("rule web/default/canary is header=X-Canary=3 -> pre in the config, header=X-Canary=1 -> pre "
                      "at runtime", warnings[0])
        self.assertIn("change it with gwctl set rule", warnings[0])
        self.assertIn('consumer "alice" has another key in the config than at runtime', warnings[1])
        self.assertNotIn("old-alice-key", r.stderr)
        self.assertNotIn("new-alice-key", r.stderr)

    def test_chash_pool_past_the_ring_bound_warns(self):
        """A chash pool whose weights would give more than 2^20 points as
        nginx builds them (total weight over 6,553) gets a scaled-down ring:
        valid, with a warning that its keys no longer map as nginx's. At the
        bound, no warning."""
        cfg = self.valid_config()
        hosts = [host(f"h{i}", f"127.0.0.1:{9000 + i}", 1000) for i in range(6)]
        cfg["upstreams"][0]["pools"][0] = pool("primary", hosts + [host("h6", "127.0.0.1:9006", 553)],
                                               method="chash")
        path = gwtest.write_json(os.path.join(self.tmp, "at.json"), cfg)
        r = gwtest.run_gwd_test(path)
        self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)
        self.assertNotIn("warning", r.stderr)
        cfg["upstreams"][0]["pools"][0]["hosts"][6]["weight"] = 554
        path = gwtest.write_json(os.path.join(self.tmp, "over.json"), cfg)
        r = gwtest.run_gwd_test(path)
        self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)
        self.assertIn(f'{path}: warning: upstream "app" pool "primary": chash over a total weight of 6554, more '
                      'than 6553: its ring is scaled down to 1048576 points', r.stderr)

    def test_usage_errors(self):
        """A bad command line was two lines without "gwd:" and exit 109 or
        114 (CLI11's own); now one line and exit 2, as gwctl does."""
        cases = [
            (["--bogus"], "gwd: The following argument was not expected: --bogus (see gwd --help)"),
            (["-t", "-c"], "gwd: --config: 1 required TEXT missing (see gwd --help)"),
            (["extra", "-t", "-c", "x.json"], "gwd: The following argument was not expected: extra (see gwd --help)"),
        ]
        for args, want in cases:
            with self.subTest(args=args):
                r = subprocess.run([gwtest.GWD, *args], capture_output=True, text=True, timeout=gwtest.T(10),
                                   stdin=subprocess.DEVNULL)
                self.assertEqual((r.returncode, r.stdout, r.stderr), (2, "", want + "\n"))
        for args in (["--help"], ["-V"], ["--version"]):
            with self.subTest(args=args):
                r = subprocess.run([gwtest.GWD, *args], capture_output=True, text=True, timeout=gwtest.T(10),
                                   stdin=subprocess.DEVNULL)
                self.assertEqual((r.returncode, r.stderr), (0, ""))
                self.assertRegex(r.stdout, r"^gwd[: ]")

    def test_valid_config_auto_workers(self):
        cfg = self.valid_config()
        cfg["workers"] = "auto"
        path = gwtest.write_json(os.path.join(self.tmp, "good.json"), cfg)
        r = gwtest.run_gwd_test(path)
        self.assertEqual(r.returncode, 0, f"stdout={r.stdout!r} stderr={r.stderr!r}")
        self.assertRegex(r.stdout, r"(?m)^ok$")

    def test_weight_as_string(self):
        cfg = self.valid_config()
        cfg["upstreams"][0]["pools"][0]["hosts"][1]["weight"] = "0"
        self.assertConfigErrors(cfg, ["upstreams[0].pools[0].hosts[1].weight"])

    def test_every_error_on_its_own_line(self):
        """A misspelt key no longer hides the missing one beside it, and a key
        or value with a control character is escaped, so that each error is
        one line of "FILE: PATH: message"."""
        cfg = self.valid_config()
        h = cfg["upstreams"][0]["pools"][0]["hosts"][0]
        h["ids"] = h.pop("id")
        h["weig\nht"] = 1
        cfg["upstreams"][0]["pools"][0]["hosts"][1]["weight"] = "a\x01b"
        path = gwtest.write_json(os.path.join(self.tmp, "lines.json"), cfg)
        r = gwtest.run_gwd_test(path)
        self.assertEqual(r.returncode, 1, r.stdout)
        lines = r.stderr.splitlines()
        self.assertIn(f"{path}: upstreams[0].pools[0].hosts[0].ids: unknown key", lines)
        self.assertIn(f'{path}: upstreams[0].pools[0].hosts[0]: missing required key "id"', lines)
        self.assertIn(f"{path}: upstreams[0].pools[0].hosts[0][\"weig\\nht\"]: unknown key", lines)
        self.assertIn(f'{path}: upstreams[0].pools[0].hosts[1].weight: expected an integer 0..1000, '
                      f'got string "a\\x01b"', lines)
        self.assertIn(f"{path}: 4 error(s)", lines)
        self.assertEqual(len(lines), 5, r.stderr)

    def test_weight_out_of_range(self):
        cfg = self.valid_config()
        cfg["upstreams"][0]["pools"][1]["hosts"][0]["weight"] = -1
        self.assertConfigErrors(cfg, ["upstreams[0].pools[1].hosts[0].weight"])

    def test_unknown_keys(self):
        cfg = self.valid_config()
        cfg["listeners"][0]["frobnicate"] = True
        cfg["upstreams"][0]["pools"][0]["hosts"][0]["colour"] = "red"
        cfg["shm"]["size"] = 1
        self.assertConfigErrors(cfg, ["listeners[0].frobnicate",
                                      "upstreams[0].pools[0].hosts[0].colour",
                                      "shm.size"])

    def test_unknown_top_level_key(self):
        cfg = self.valid_config()
        cfg["bogus_key"] = 1
        # the root may be spelled "bogus_key", ".bogus_key" or "$.bogus_key"
        self.assertConfigErrors(cfg, [re.compile(r"(\$\.|\.)?bogus_key")])

    def test_bad_addresses(self):
        cfg = self.valid_config()
        hs = cfg["upstreams"][0]["pools"][0]["hosts"]
        hs[0]["address"] = "127.0.0.1"            # no port
        hs[1]["address"] = "300.1.1.1:80"         # bad IP
        cfg["upstreams"][0]["pools"][1]["hosts"][0]["address"] = "127.0.0.1:70000"   # bad port
        cfg["listeners"][0]["listen"] = "1.2.3:80"
        self.assertConfigErrors(cfg, ["upstreams[0].pools[0].hosts[0].address",
                                      "upstreams[0].pools[0].hosts[1].address",
                                      "upstreams[0].pools[1].hosts[0].address",
                                      "listeners[0].listen"])

    def test_listen_addresses_bind_refuses_fail_the_check(self):
        # gw's IPv6 listening sockets are IPV6_V6ONLY: bind(2) refuses an
        # IPv4-mapped address, and a link-local one without an interface.
        # `gwd -t` said ok; the start then failed with "Invalid argument".
        cfg = self.valid_config()
        port = cfg["listeners"][0]["listen"].rsplit(":", 1)[1]
        cfg["listeners"][0]["listen"] = f"[::ffff:127.0.0.1]:{port}"
        cfg["listeners"].append(tcp_listener("l6", "app"))
        cfg["listeners"][1]["listen"] = "[fe80::1]:" + cfg["listeners"][1]["listen"].rsplit(":", 1)[1]
        path = gwtest.write_json(os.path.join(self.tmp, "mapped.json"), cfg)
        r = gwtest.run_gwd_test(path)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(f'listeners[0].listen: bad address "[::ffff:127.0.0.1]:{port}": an IPv4-mapped IPv6 address',
                      r.stderr)
        self.assertIn("write 127.0.0.1:" + port, r.stderr)
        self.assertIn('listeners[1].listen: bad address "[fe80::1]:', r.stderr)
        self.assertIn("2 error(s)", r.stderr)

    def test_duplicate_host_id(self):
        cfg = self.valid_config()
        cfg["upstreams"][0]["pools"][0]["hosts"][1]["id"] = "a"
        # reported on the second host (the path may end in .id)
        self.assertConfigErrors(cfg, [re.compile(r"upstreams\[0\]\.pools\[0\]\.hosts\[1\](\.id)?")])

    def test_listener_unknown_upstream(self):
        cfg = self.valid_config()
        cfg["listeners"][0]["upstream"] = "nope"
        self.assertConfigErrors(cfg, ["listeners[0].upstream"])

    def test_bad_workers_and_shm_name(self):
        for workers in (0, 65, "many"):
            with self.subTest(workers=workers):
                cfg = self.valid_config()
                cfg["workers"] = workers
                self.assertConfigErrors(cfg, ["workers"])
        cfg = self.valid_config()
        cfg["shm"]["name"] = "bad/name"
        self.assertConfigErrors(cfg, ["shm.name"])

    def test_invalid_json(self):
        path_lines = self.assertConfigErrors(None, [], raw='{"workers": 1, "listeners": [')
        self.assertGreaterEqual(len(path_lines), 1)
        for raw in ('', 'not json', '{"workers": 1,}', '[]'):
            with self.subTest(raw=raw):
                lines = self.assertConfigErrors(None, [], raw=raw)
                self.assertGreaterEqual(len(lines), 1, "no error printed")

    def test_invalid_json_names_file(self):
        path = os.path.join(self.tmp, "broken.json")
        with open(path, "w") as f:
            f.write('{"workers": 1,')
        r = gwtest.run_gwd_test(path)
        self.assertEqual(r.returncode, 1)
        self.assertTrue(r.stderr.strip(), "nothing on stderr")
        for line in r.stderr.splitlines():
            if line.strip():
                self.assertTrue(line.startswith(path + ": "), f"error line does not start with the file: {line!r}")

    def test_missing_file(self):
        path = os.path.join(self.tmp, "does-not-exist.json")
        r = gwtest.run_gwd_test(path)
        self.assertEqual(r.returncode, 1, f"stdout={r.stdout!r} stderr={r.stderr!r}")
        self.assertIn(path, r.stderr)

    def test_multiple_errors_all_printed(self):
        cfg = self.valid_config()
        cfg["upstreams"][0]["pools"][0]["hosts"][1]["weight"] = "0"
        cfg["upstreams"][0]["pools"][0]["hosts"][0]["address"] = "1.2.3"
        cfg["upstreams"][0]["pools"][1]["hosts"].append(copy.deepcopy(cfg["upstreams"][0]["pools"][1]["hosts"][0]))
        cfg["listeners"][0]["upstream"] = "nope"
        cfg["listeners"][0]["frobnicate"] = 1
        self.assertConfigErrors(cfg, ["upstreams[0].pools[0].hosts[1].weight",
                                      "upstreams[0].pools[0].hosts[0].address",
                                      re.compile(r"upstreams\[0\]\.pools\[1\]\.hosts\[1\](\.id)?"),
                                      "listeners[0].upstream",
                                      "listeners[0].frobnicate"])


    # -- the README's examples

    README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "README.md")

    def readme_json_blocks(self):
        """(line, text) of every ```json block of the README."""
        blocks, cur, start = [], None, 0
        with open(self.README, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if cur is None and line.rstrip() == "```json":
                    cur, start = [], n
                elif cur is not None and line.rstrip() == "```":
                    blocks.append((start, "".join(cur)))
                    cur = None
                elif cur is not None:
                    cur.append(line)
        return blocks

    def complete_example(self, obj):
        """A README example made a whole config the obvious way: a listener
        alone goes into "listeners", a top-level fragment ("admin": ...) gets a
        listener, every upstream named but not defined gets one host, and what
        names the machine (shm, state file, files read) is made the test's."""
        if "listen" in obj and "name" in obj:
            obj = {"listeners": [obj]}
        cfg = copy.deepcopy(obj)
        cfg.setdefault("listeners", [{"name": "l4", "listen": "127.0.0.1:1", "upstream": "app"}])
        cfg.setdefault("upstreams", [])
        cfg.setdefault("shm", {})["name"] = self.shm_name()
        cfg["state_file"] = os.path.join(self.tmp, "gw.state.json")
        defined = {u["name"] for u in cfg["upstreams"]}
        named = []
        for ls in cfg["listeners"]:
            named.append(ls.get("upstream"))
            if "access_log" in ls:
                ls["access_log"]["path"] = os.path.join(self.tmp, "access.log")
            for r in ls.get("routes", []):
                named.append(r.get("upstream"))
                named += [rule.get("upstream") for rule in r.get("rules", [])]
        for n in named:
            if n and n not in defined:
                defined.add(n)
                cfg["upstreams"].append({"name": n, "pools": [{"id": "p", "hosts": [
                    {"id": "h", "address": "127.0.0.1:9", "weight": 1}]}]})

        def placeholders(v):
            if isinstance(v, dict):
                return {k: placeholders(x) for k, x in v.items()}
            if isinstance(v, list):
                return [placeholders(x) for x in v]
            if isinstance(v, str) and v.endswith("$..."):  # "$2b$10$...": a crypt hash
                crypt = ctypes.CDLL("libcrypt.so.1")
                crypt.crypt.restype = crypt.crypt_gensalt.restype = ctypes.c_char_p
                crypt.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
                crypt.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
                return crypt.crypt(b"secret", crypt.crypt_gensalt(v[:4].encode(), 4, None, 0)).decode()
            if isinstance(v, str) and v.startswith("@/") and v.endswith(".pem"):
                key = os.path.join(self.tmp, "key.pem")
                if not os.path.exists(key):
                    subprocess.run(["openssl", "genrsa", "-out", key + ".priv", "2048"], check=True,
                                   capture_output=True, timeout=gwtest.T(60))
                    subprocess.run(["openssl", "rsa", "-in", key + ".priv", "-pubout", "-out", key], check=True,
                                   capture_output=True, timeout=gwtest.T(60))
                return "@" + key
            return v
        return placeholders(cfg)

    def test_readme_examples_pass(self):
        """Every ```json block of the README, completed the obvious way, and
        conf/gateway.json (the Quick start's) pass gwd -t."""
        blocks = self.readme_json_blocks()
        self.assertGreaterEqual(len(blocks), 6, "the README's ```json blocks were not found")
        with open(os.path.join(os.path.dirname(self.README), "conf", "gateway.json")) as f:
            blocks.append(("conf/gateway.json", f.read()))
        for line, text in blocks:
            with self.subTest(readme_line=line):
                t = text.strip()
                obj = json.loads("{" + t + "}" if t.startswith('"') else t)
                cfg = self.complete_example(obj)
                path = gwtest.write_json(os.path.join(self.tmp, f"readme-{line}.json".replace("/", "-")), cfg)
                r = gwtest.run_gwd_test(path)
                self.assertEqual((r.returncode, r.stdout.strip()), (0, "ok"),
                                 f"README line {line}: {r.stderr}\n{json.dumps(cfg, indent=1)}")


if __name__ == "__main__":
    gwtest.main()
