#!/usr/bin/python3
"""Balancing through the real gwd: round robin that follows the weights across
workers, and hash methods keyed by the client IP on a tcp listener."""

import collections
import os
import socket
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import GwTestCase, T, host, pool  # noqa: E402


def hello_from(port, source_ip):
    """The backend name seen by one connection from source_ip."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(T(5))
        s.bind((source_ip, 0))
        s.connect((gwtest.LOOPBACK, port))
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(64)
            if not chunk:
                break
            buf += chunk
        return buf.decode().strip()
    finally:
        s.close()


class BalanceTest(GwTestCase):

    def test_round_robin_weights_hold_across_workers(self):
        """2 workers, weights 5:3:2, 10,000 connections from 4 client threads:
        each host's share is within 1% of its weight's share."""
        a, b, c = self.backend("a"), self.backend("b"), self.backend("c")
        gw = self.gateway(self.make_config(
            [pool("primary", [host("a", a, 5), host("b", b, 3), host("c", c, 2)])], workers=2))
        counts = collections.Counter()
        lock = threading.Lock()
        errors = []

        def run(n):
            local = collections.Counter()
            try:
                for _ in range(n):
                    local[gwtest.hello(gw.port)] += 1
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
            with lock:
                counts.update(local)

        threads = [threading.Thread(target=run, args=(2500,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(T(120))
        self.assertEqual(errors, [])
        total = sum(counts.values())
        self.assertEqual(total, 10000)
        workers = gw.status()["workers"]
        self.assertEqual(len(workers), 2)
        for name, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
            got = counts[name] / total
            self.assertLess(abs(got - share), 0.01, f"host {name}: {got:.4f} of connections, weight share {share}")

    def test_chash_by_client_ip_matches_gw_hashpick(self):
        """method chash on a tcp listener hashes the client IP: every source
        address keeps its host, and the mapping is the one gw-hashpick (and so
        nginx `hash $remote_addr consistent`) gives."""
        hashpick = os.path.join(gwtest.BUILD_DIR, "gw-hashpick")
        backends = [self.backend(n) for n in ("a", "b", "c", "d")]
        hosts = [host(n, b, w) for n, b, w in zip("abcd", backends, (1, 2, 1, 3))]
        gw = self.gateway(self.make_config([pool("primary", hosts, method="chash")], workers=2))
        sources = [f"127.0.{i // 200}.{i % 200 + 2}" for i in range(60)]
        seen = {}
        for src in sources:
            got = {hello_from(gw.port, src) for _ in range(3)}
            self.assertEqual(len(got), 1, f"{src} went to {got}")
            seen[src] = got.pop()
        args = [hashpick, "--method", "chash"] + [
            a for h in hosts for a in ("--host", f"{h['id']}={h['address']}:{h['weight']}")]
        out = subprocess.run(args, input="\n".join(sources) + "\n", capture_output=True, text=True,
                             timeout=T(10), check=True).stdout
        expected = dict(line.split("\t") for line in out.splitlines())
        self.assertEqual(seen, expected)
        self.assertGreater(len(set(seen.values())), 2, "keys spread over the hosts")

    def test_hashpick_refuses_a_bad_weight(self):
        """gw-hashpick takes a host's weight whole, 0..1000 as a config does:
        "2x" is refused (it was read as 2), and "x" is refused naming the
        weight (the error was only "stoul")."""
        hashpick = os.path.join(gwtest.BUILD_DIR, "gw-hashpick")
        for weight in ("2x", "x", "", "1001", "-1"):
            r = subprocess.run([hashpick, "--method", "chash", "--host", f"a=127.0.0.1:8081:{weight}",
                                "--host", "b=127.0.0.1:8082"], input="k\n", capture_output=True, text=True,
                               timeout=T(10))
            self.assertEqual(r.returncode, 2, f"weight {weight!r}: {r.stdout!r} {r.stderr!r}")
            self.assertIn(f'the weight must be an integer 0..1000, got "{weight}"', r.stderr)
        # Without a weight, a bad port is the address's error, not the weight's.
        r = subprocess.run([hashpick, "--method", "chash", "--host", "a=127.0.0.1:99999"], input="k\n",
                           capture_output=True, text=True, timeout=T(10))
        self.assertEqual(r.returncode, 2, f"{r.stdout!r} {r.stderr!r}")
        self.assertIn('port must be an integer 1..65535, got "99999"', r.stderr)
        r = subprocess.run([hashpick, "--method", "chash", "--host", "a=127.0.0.1:8081:1000",
                            "--host", "b=127.0.0.1:8082:0"], input="k\n", capture_output=True, text=True,
                           timeout=T(10), check=True)
        self.assertEqual(r.stdout, "k\ta\n")

    def test_hashpick_usage_errors_exit_2(self):
        """A command-line error of gw-hashpick exits 2 like its other refusals
        (an unknown option exited 106, a missing --host 106: CLI11's codes);
        --help exits 0."""
        hashpick = os.path.join(gwtest.BUILD_DIR, "gw-hashpick")
        for args, says in ((["--host", "a=127.0.0.1:8081", "--bogus"], "--bogus"), ([], "--host is required"),
                           (["--host"], "--host"), (["--host", "a=127.0.0.1:8081", "--method"], "--method")):
            r = subprocess.run([hashpick] + args, input="k\n", capture_output=True, text=True, timeout=T(10))
            self.assertEqual(r.returncode, 2, f"{args}: {r.stdout!r} {r.stderr!r}")
            self.assertIn(says, r.stderr, args)
            self.assertEqual(r.stdout, "", args)
        r = subprocess.run([hashpick, "--help"], capture_output=True, text=True, timeout=T(10))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("--host", r.stdout)

    def test_set_pool_method_live(self):
        """gwctl set pool --method switches a live pool to chash: a client IP then
        sticks to one host; back to round_robin it alternates again."""
        a, b = self.backend("a"), self.backend("b")
        gw = self.gateway(self.make_config([pool("primary", [host("a", a), host("b", b)])], workers=1))
        self.assertEqual(len(set(gwtest.names(gw.port, 4))), 2)
        rc, _, err = gw.gwctl("set", "pool", "app", "primary", "--method", "chash")
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(set(gwtest.names(gw.port, 6))), 1)
        self.assertEqual(gw.status()["upstreams"][0]["pools"][0]["method"], "chash")
        rc, _, err = gw.gwctl("set", "pool", "app", "primary", "--method", "fastest")
        self.assertNotEqual(rc, 0)
        self.assertIn("unknown method", err)
        rc, _, err = gw.gwctl("set", "pool", "app", "primary", "--method", "round_robin")
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(set(gwtest.names(gw.port, 4))), 2)

    def test_no_usable_host_closes_at_once_and_is_counted(self):
        a = self.backend("a")
        gw = self.gateway(self.make_config([pool("primary", [host("a", a)])], workers=1))
        rc, _, err = gw.gwctl("down", "host", "app/primary", "a")
        self.assertEqual(rc, 0, err)
        with gwtest.connect(gw.port) as s:
            s.settimeout(T(2))
            self.assertEqual(s.recv(16), b"")  # closed at once, no bytes
        gwtest.wait_until(lambda: gw.status()["workers"][0]["no_host"] == 1, T(5), msg="no_host counted")

    def test_missing_key_fallback_is_counted(self):
        """An IPv4 client always has a key; the counter stays 0 with chash."""
        a, b = self.backend("a"), self.backend("b")
        gw = self.gateway(self.make_config([pool("primary", [host("a", a), host("b", b)], method="chash")]))
        gwtest.names(gw.port, 3)
        self.assertEqual(gw.status()["workers"][0]["hash_fallbacks"], 0)


if __name__ == "__main__":
    gwtest.main()
