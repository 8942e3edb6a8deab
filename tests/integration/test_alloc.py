"""No heap allocation per connection or request after warm-up, in the real worker.

gwd runs with build/tests/gw-malloc-count.so preloaded (tests/integration/
malloc_count.cpp): every process counts its malloc, calloc, realloc,
reallocarray, posix_memalign, aligned_alloc, memalign, valloc and pvalloc
calls (operator new and libc's own allocations reach malloc) into a file of
this test's temp dir, which the test reads while gwd runs. Each test warms the
worker up with the same load it then measures, reads the worker's count,
drives 10,000 requests, connections or frames through it with real clients
(wrk, gwload), waits until the listener holds no connection, and asserts the
count did not move.

An AddressSanitizer or ThreadSanitizer gwd (tools/test.sh's second run) brings
its own malloc, which a preloaded one would fight: there every test skips.
"""

import functools
import json
import os
import shutil
import struct
import subprocess
import unittest

import gwtest
from gwtest import host, pool, upstream

N = 10_000        # requests, connections or frames measured
WARM = 2_000      # the same load before the first reading
LIB = os.environ.get("GW_MALLOC_COUNT_LIB") or os.path.join(gwtest.BUILD_DIR, "tests", "gw-malloc-count.so")
GWLOAD = os.path.join(gwtest.BUILD_DIR, "gwload")
WRK = shutil.which("wrk")
SLOTS = ("total", "malloc", "calloc", "realloc", "reallocarray", "aligned")

# wrk's requests cycle through 8 users (X-User, the route's hash key), every
# other one with X-Canary: 1 (the gray rule's match); GW_ALLOC_CLOSE=1 adds
# Connection: close.
WRK_SCRIPT = r"""
local close = os.getenv("GW_ALLOC_CLOSE") == "1"
local reqs, sent = {}, 0
for i = 0, 7 do
  local h = {["Host"] = "gw.test", ["X-User"] = "user" .. i}
  if i % 2 == 1 then h["X-Canary"] = "1" end
  if close then h["Connection"] = "close" end
  reqs[#reqs + 1] = wrk.format("GET", "/item/" .. i, h)
end
function request()
  sent = sent + 1
  return reqs[sent % #reqs + 1]
end
"""


@functools.cache
def gwd_sanitized():
    """Does gwd carry a sanitizer runtime (its own malloc)?"""
    try:
        with open(gwtest.GWD, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return any(m in data for m in (b"__asan_init", b"__tsan_init", b"__msan_init"))


class AllocTest(gwtest.GwTestCase):
    needs = ("gwd", "gwctl", "gw-backend", "gwload")

    def setUp(self):
        if gwd_sanitized():
            self.skipTest("gwd is built with a sanitizer, whose own malloc a preloaded counter would fight")
        if not os.path.exists(LIB):
            raise AssertionError(f"{LIB} is missing (cmake --build builds gw-malloc-count)")
        super().setUp()
        self.counts_dir = os.path.join(self.tmp, "counts")
        os.mkdir(self.counts_dir)

    def start(self, listeners, upstreams):
        cfg = self.make_config([], listeners=listeners)
        cfg["upstreams"] = upstreams
        gw = self.gateway(cfg, env={"LD_PRELOAD": LIB, "GW_MALLOC_COUNT_DIR": self.counts_dir})
        pids = gw.worker_pids()
        self.assertEqual(len(pids), 1)
        return gw, pids[0]

    def counts(self, pid):
        with open(os.path.join(self.counts_dir, f"{pid}.count"), "rb") as f:
            return dict(zip(SLOTS, struct.unpack("6Q16x", f.read(64))))

    def listener(self, gw, name):
        return next(l for l in gw.status()["listeners"] if l["name"] == name)

    def quiet(self, gw, name):
        """Waits until listener `name` holds no connection (every close done)."""
        gwtest.wait_until(lambda: self.listener(gw, name)["active"] == 0, gwtest.T(30),
                          msg=f"listener {name} without connections")

    def assertNoAllocations(self, gw, worker, name, load):
        """load(n) drives at least n units through listener `name`; the worker
        must allocate nothing over N of them after a warm-up of WARM."""
        load(WARM)
        self.quiet(gw, name)
        self.assertEqual(gw.worker_pids(), [worker], "the worker was replaced")
        before = self.counts(worker)
        self.assertGreater(before["total"], 0, "the worker counted nothing: is the library preloaded?")
        accepted = self.listener(gw, name)["accepted"]
        load(N)
        self.quiet(gw, name)
        after = self.counts(worker)
        self.assertEqual(gw.worker_pids(), [worker], "the worker was replaced")
        grown = {k: after[k] - before[k] for k in SLOTS if after[k] != before[k]}
        self.assertEqual(grown, {}, f"worker {worker} allocated over {N} units on listener {name} "
                                    f"(+{self.listener(gw, name)['accepted'] - accepted} connections): {grown}")
        return after

    # -- clients
    def wrk(self, port, n, close, conns=10):
        """Runs wrk (2 s at a time) until at least n answers came, all 2xx."""
        if WRK is None:
            self.skipTest("wrk is not installed (tools/setup.sh installs it)")
        script = os.path.join(self.tmp, "alloc.lua")
        with open(script, "w") as f:
            f.write(WRK_SCRIPT)
        env = {**os.environ, "GW_ALLOC_CLOSE": "1" if close else "0"}
        total = 0
        while total < n:
            r = subprocess.run([WRK, "-t1", f"-c{conns}", "-d2s", "-s", script, f"http://{gwtest.LOOPBACK}:{port}/"],
                               capture_output=True, text=True, env=env, timeout=gwtest.T(60), stdin=subprocess.DEVNULL)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertNotIn("Non-2xx", r.stdout)
            self.assertNotIn("Socket errors", r.stdout)
            done = int(next(l for l in r.stdout.splitlines() if "requests in" in l).split()[0])
            self.assertGreater(done, 0, r.stdout)
            total += done

    def gwload(self, port, args, want, key):
        """Runs gwload until its reports' `key` add up to `want`."""
        total = 0
        while total < want:
            r = subprocess.run([GWLOAD, "--target", f"{gwtest.LOOPBACK}:{port}", "--json",
                                "--src", "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5", *args],
                               capture_output=True, text=True, timeout=gwtest.T(120), stdin=subprocess.DEVNULL)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            rep = json.loads(r.stdout)
            self.assertEqual(rep["errors"], 0, r.stdout)
            self.assertGreater(rep[key], 0, r.stdout)
            total += rep[key]

    # -- the tests
    def http_gateway(self):
        be = {n: self.external_backend(n, mode="http") for n in ("prod1", "prod2", "pre")}
        log = os.path.join(self.tmp, "access.log")
        routes = [{"name": "main", "path": "/", "upstream": "prod", "hash_key": "header:X-User",
                   "rules": [{"id": "canary", "header": "X-Canary=1", "upstream": "pre"}]}]
        listeners = [{"name": "web", "listen": f"{gwtest.LOOPBACK}:{gwtest.free_port()}", "protocol": "http",
                      "routes": routes, "access_log": {"path": log, "format": "combined"}}]
        upstreams = [upstream("prod", [pool("p", [host("a", be["prod1"].address), host("b", be["prod2"].address)],
                                            method="chash")]),
                     upstream("pre", [pool("p", [host("c", be["pre"].address)])])]
        gw, worker = self.start(listeners, upstreams)
        return gw, worker, log

    def test_http_keepalive(self):
        """10 kept-alive clients, 10,000 requests: an access log, a gray rule
        matching every other request, a header hash key over a chash pool."""
        gw, worker, log = self.http_gateway()
        self.assertNoAllocations(gw, worker, "web", lambda n: self.wrk(gw.port, n, close=False))
        self.assertGreater(os.path.getsize(log), 0)
        hits = {r["id"]: r["hits"] for r in gw.status()["routes"][0]["rules"]}
        self.assertGreaterEqual(hits["canary"], (WARM + N) // 2 - 10)

    def test_http_close(self):
        """The same gateway, every request on its own connection (Connection: close)."""
        gw, worker, _ = self.http_gateway()
        self.assertNoAllocations(gw, worker, "web", lambda n: self.wrk(gw.port, n, close=True))

    def test_tcp(self):
        """A tcp listener (with an access log): 10,000 short connections."""
        be = self.external_backend("b", mode="http")
        listeners = [gwtest.tcp_listener("l4", "app", access_log={"path": os.path.join(self.tmp, "access.log"),
                                                                   "format": "main"})]
        gw, worker = self.start(listeners, [upstream("app", [pool("p", [host("b", be.address)])])])
        self.assertNoAllocations(gw, worker, "l4", lambda n: self.wrk(gw.port, n, close=True))

    def frame_gateway(self, mode):
        be = [self.external_backend(f"d{i}", mode="device") for i in range(2)]
        listeners = [{"name": "dev", "listen": f"{gwtest.LOOPBACK}:{gwtest.free_port()}", "protocol": "frame",
                      "upstream": "dev", "frame": {"mode": mode},
                      "access_log": {"path": os.path.join(self.tmp, "access.log"), "format": "main"}}]
        return self.start(listeners, [upstream("dev", [pool("p", [host(f"d{i}", b.address)
                                                                  for i, b in enumerate(be)])])])

    def frame_load(self, gw, n):
        """n login round trips on short connections (connect, login, echo,
        close), then n heartbeats on 20 held connections."""
        self.gwload(gw.port, ["--churn", "-c", "10", "-T", "1"], n, "churn_connects")
        self.gwload(gw.port, ["-c", "20", "-r", "250", "-T", str(max(1, n // 5000))], n, "hb_received")

    def test_frame_connection(self):
        gw, worker = self.frame_gateway("connection")
        self.assertNoAllocations(gw, worker, "dev", lambda n: self.frame_load(gw, n))

    def test_frame_per_frame(self):
        gw, worker = self.frame_gateway("frame")
        self.assertNoAllocations(gw, worker, "dev", lambda n: self.frame_load(gw, n))


if __name__ == "__main__":
    unittest.main()
