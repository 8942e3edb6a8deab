#!/usr/bin/python3
"""Large L4 transfers through gw: splice(2) against plain copies, per engine and body size.

    bench/bulk.py [--build-dir DIR] [--rounds N] [--sizes 64K,256K,1M,4M,16M] [--mib M] [--append]

Starts one gw-backend in echo mode and four gwd instances (one worker each) in front of
it: {epoll, io_uring} x {copy (splice_after_bytes 0), splice (splice_after_bytes 1)}.
For each body size, each round runs, on every instance in a rotating order, fresh
connections that send the body and read its echo (so the relay moves the body both
ways) until about M MiB (default 64) have gone through. Reported per instance and
size, as medians over the rounds: the gwd worker's CPU time per MiB relayed (from
/proc/PID/schedstat, nanosecond resolution: what the proxy pays) and the wall-clock
MiB/s of the transfers. With --append the table is appended to bench/RESULTS.md.
Loopback only; everything started here is stopped on exit.
"""

import argparse
import datetime
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def parse_size(t):
    t = t.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(t[-1:], 1)
    return int(t[:-1] if t[-1:] in "KM" else t) * mult


def label(n):
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def wait_port(port, proc, what, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited during start-up")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port}")


def cpu_ns(pids):
    t = 0
    for p in pids:
        with open(f"/proc/{p}/schedstat") as f:
            t += int(f.read().split()[0])
    return t


def one_transfer(port, body):
    """Sends body and reads its echo on a fresh connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        err = []

        def send():
            try:
                s.sendall(body)
                s.shutdown(socket.SHUT_WR)
            except OSError as e:
                err.append(e)
        th = threading.Thread(target=send)
        th.start()
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        got = 0
        while True:
            n = s.recv_into(view)
            if n == 0:
                break
            got += n
        th.join()
        if err:
            raise err[0]
        if got != len(body):
            raise SystemExit(f"echo through port {port}: {got} of {len(body)} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build-release"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="64K,256K,1M,4M,16M")
    ap.add_argument("--mib", type=int, default=64, help="MiB per instance, size and round (default 64)")
    ap.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    a = ap.parse_args()
    gwd = os.path.join(a.build_dir, "gwd")
    backend_bin = os.path.join(a.build_dir, "gw-backend")
    for b in (gwd, backend_bin):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"{b} not found (build the Release tree, or pass --build-dir)")
    sizes = [parse_size(x) for x in a.sizes.split(",")]
    tmp = tempfile.mkdtemp(prefix="gwbulk.")
    procs = []
    shms = []

    def cleanup():
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for n in shms:
            for path in (f"/dev/shm/{n}", f"/dev/shm/{n}.lock"):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)

    try:
        bport = free_port()
        be = subprocess.Popen([backend_bin, "--listen", f"127.0.0.1:{bport}", "--name", "e", "--mode", "echo",
                               "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(be)
        wait_port(bport, be, "gw-backend")
        instances = []
        for engine in ("epoll", "io_uring"):
            for mode, after in (("copy", 0), ("splice", 1)):
                name = f"{engine}/{mode}"
                port = free_port()
                shm = f"gwbulk-{os.getpid()}-{engine}-{mode}"
                shms.append(shm)
                conf = os.path.join(tmp, f"{engine}-{mode}.json")
                with open(conf, "w") as f:
                    f.write(f'''{{"workers": 1, "event_engine": "{engine}", "splice_after_bytes": {after},
  "log_level": "warn", "shm": {{"name": "{shm}"}},
  "listeners": [{{"name": "l", "listen": "127.0.0.1:{port}", "upstream": "app"}}],
  "upstreams": [{{"name": "app", "pools": [{{"id": "p", "hosts": [{{"id": "e", "address": "127.0.0.1:{bport}"}}]}}]}}]}}
''')
                log = open(os.path.join(tmp, f"{engine}-{mode}.log"), "w")
                p = subprocess.Popen([gwd, "-c", conf, "--foreground"], stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
                procs.append(p)
                wait_port(port, p, f"gwd {name}")
                time.sleep(0.2)
                with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                    workers = [int(x) for x in f.read().split()]
                with open(os.path.join(tmp, f"{engine}-{mode}.log")) as f:
                    if "event_engine io_uring" in f.read():
                        raise SystemExit(f"gwd {name} fell back to epoll")
                instances.append((name, port, workers))

        body_cache = {}
        results = {}  # (name, size) -> [(cpu_ms_per_mib, mib_per_s)]
        n = len(instances)
        for size in sizes:
            body = body_cache.setdefault(size, os.urandom(size))
            count = max(1, (a.mib << 20) // size)
            for r in range(a.rounds):
                for k in range(n):
                    name, port, workers = instances[(r + k) % n]
                    c0, t0 = cpu_ns(workers), time.monotonic()
                    for _ in range(count):
                        one_transfer(port, body)
                    c1, t1 = cpu_ns(workers), time.monotonic()
                    mib = 2 * size * count / (1 << 20)  # the relay carries the body both ways
                    results.setdefault((name, size), []).append(((c1 - c0) / 1e6 / mib, mib / (t1 - t0)))
                sys.stderr.write(f"== {label(size)}: round {r + 1}/{a.rounds} done\n")

        names = [i[0] for i in instances]
        head = "| size | " + " | ".join(f"{x} ms/MiB" for x in names) + " | " + \
            " | ".join(f"{x} MiB/s" for x in names) + " |"
        lines = [head, "|" + "---|" * (1 + 2 * n)]
        for size in sizes:
            cpu = [statistics.median(v[0] for v in results[(x, size)]) for x in names]
            wall = [statistics.median(v[1] for v in results[(x, size)]) for x in names]
            lines.append(f"| {label(size)} | " + " | ".join(f"{c:.3f}" for c in cpu) + " | " +
                         " | ".join(f"{w:.0f}" for w in wall) + " |")
        table = "\n".join(lines)
        print(table)
        if a.append:
            rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                                 text=True).stdout.strip() or "uncommitted"
            with open(os.path.join(ROOT, "bench", "RESULTS.md"), "a") as f:
                f.write(f"\n## bulk (splice vs copy), {datetime.datetime.utcnow():%Y-%m-%d %H:%M:%S} UTC\n\n")
                f.write(f"`bench/bulk.py --rounds {a.rounds} --sizes {a.sizes} --mib {a.mib}`; kernel "
                        f"`{platform.release()}`, nproc {os.cpu_count()}, gw {rev}; one worker per gwd, "
                        f"echo backend, each body relayed both ways; gwd worker CPU per MiB relayed "
                        f"(lower is better) and wall MiB/s, medians of the rounds\n\n")
                f.write(table + "\n")
    finally:
        cleanup()


if __name__ == "__main__":
    main()
