#!/usr/bin/python3
"""The device-gateway benchmark (frame listeners), in three parts:

  hold   N concurrent device connections through gw (default 50,000) with
         heartbeats, once per listener mode (--hold-modes: "connection" routes
         once per connection, "frame" routes every frame and keeps a link per
         host; "tcp" is a plain L4 listener); gw's memory per proxied idle connection (summed RSS and PSS of
         the master and workers over the connections, and the growth over an
         idle gateway).
  rtt    heartbeat round trip through gw against straight to the same
         backends (gwload spreads the direct connections over all of them),
         interleaved rounds, same load; only replies after every connection
         is up count.
  churn  first-frame routing throughput (new device connections per second:
         connect, login frame, its echo, close) through gw against nginx
         stream with the same backends and worker count, interleaved rounds.
         `bench/compare.sh frame` runs the same gwload --churn load in the
         shared harness: gw with both engines, nginx, direct, at 50, 1,000 and
         10,000 clients, with CPU per connection, RSS and a chart.

Everything runs on loopback; backends are `gw-backend --mode device`, load is
`gwload`. Prints a summary and appends it to bench/RESULTS.md.

  bench/frame_scale.py [--parts hold,rtt,churn] [--connections 50000]
                       [--hold-modes connection,frame] [--workers 8]
                       [--rounds 3] [--duration 10]
  [--no-record]   print the summary without appending it to bench/RESULTS.md
  env: GW_BUILD_DIR (default build-release, built here in Release if missing)
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def log(msg):
    print("== " + msg, file=sys.stderr, flush=True)


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_port(port, proc, what, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"frame_scale: {what} exited with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"frame_scale: {what} does not listen on {port}")


def tree_pids(pid):
    """pid and its direct children (gwd workers and checker, nginx workers)."""
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except OSError:
        pass
    return pids


def memory_kb(pids):
    """Summed RSS and PSS (kB) of the processes."""
    rss = pss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def timewait_sockets():
    """TCP sockets in TIME_WAIT (from `ss -s`), or 0 if unknown."""
    try:
        out = subprocess.run(["ss", "-s"], capture_output=True, text=True).stdout
        return int(out.split("timewait", 1)[1].split(")", 1)[0].strip(" ,"))
    except (OSError, IndexError, ValueError):
        return 0


def settle(limit=5000, max_wait=120):
    """Waits (up to max_wait s) until fewer than `limit` sockets are in TIME_WAIT.
    Tens of thousands of them make every loopback connect() scan long lists of
    used ports (kernel time that grows with each connection), which skews a
    run that starts right after another."""
    deadline = time.time() + max_wait
    n = timewait_sockets()
    if n >= limit:
        log(f"waiting for {n} TIME_WAIT sockets to expire")
    while n >= limit and time.time() < deadline:
        time.sleep(2)
        n = timewait_sockets()


def stop(proc):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except OSError:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Bench:
    def __init__(self, args):
        self.args = args
        self.build = os.environ.get("GW_BUILD_DIR", os.path.join(ROOT, "build-release"))
        self.tmp = tempfile.mkdtemp(prefix="gw-frame-bench-")
        self.procs = []
        self.shm = f"gwframebench{os.getpid()}"

    def bin(self, name):
        return os.path.join(self.build, name)

    def ensure_build(self):
        need = ["gwd", "gwctl", "gw-backend", "gwload"]
        if all(os.path.exists(self.bin(n)) for n in need):
            return
        log(f"building Release in {self.build}")
        subprocess.run(["cmake", "-S", ROOT, "-B", self.build, "-DCMAKE_BUILD_TYPE=Release"], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", self.build, "-j2", "--target"] + need, check=True,
                       stdout=subprocess.DEVNULL)

    def spawn(self, cmd, logname):
        f = open(os.path.join(self.tmp, logname), "w")
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def cleanup(self):
        for p in reversed(self.procs):
            stop(p)
        for suffix in ("", ".lock"):
            try:
                os.unlink(f"/dev/shm/{self.shm}{suffix}")
            except OSError:
                pass

    def start_backends(self, n):
        ports = free_ports(n)
        for i, port in enumerate(ports):
            p = self.spawn([self.bin("gw-backend"), "--listen", f"127.0.0.1:{port}", "--name", f"b{i}",
                            "--mode", "device"], f"backend{i}.log")
            wait_port(port, p, f"backend b{i}")
        return ports

    def start_gw(self, backends, workers, mode="connection"):
        port = free_ports(1)[0]
        cfg = {
            "workers": workers, "shm": {"name": self.shm}, "state_file": "", "log_level": "warn",
            # mode "tcp": a plain L4 listener (round robin), the same devices and backends.
            "listeners": [{"name": "dev", "listen": f"127.0.0.1:{port}", "protocol": "tcp", "upstream": "dev",
                           "backlog": 4096} if mode == "tcp" else
                          {"name": "dev", "listen": f"127.0.0.1:{port}", "protocol": "frame", "upstream": "dev",
                           "backlog": 4096, "frame": {"mode": mode}}],
            "upstreams": [{"name": "dev", "idle_timeout_ms": 3600000, "pools": [{"id": "p", "hosts": [
                {"id": f"b{i}", "address": f"127.0.0.1:{bp}"} for i, bp in enumerate(backends)]}]}],
        }
        path = os.path.join(self.tmp, f"gw-{workers}-{mode}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        p = self.spawn([self.bin("gwd"), "-c", path], f"gwd-{workers}-{mode}.log")
        wait_port(port, p, "gwd")
        time.sleep(0.3)
        return p, port

    def start_nginx(self, backends, workers):
        port = free_ports(1)[0]
        d = os.path.join(self.tmp, "nginx")
        os.makedirs(os.path.join(d, "logs"), exist_ok=True)
        servers = "\n".join(f"        server 127.0.0.1:{bp};" for bp in backends)
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(f"""load_module {NGINX_STREAM_MODULE};
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 9000; }}
stream {{
    upstream devices {{
        hash $remote_addr consistent;
{servers}
    }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        proxy_pass devices;
        proxy_connect_timeout 2s;
        proxy_timeout 1h;
    }}
}}
""")
        p = self.spawn(["nginx", "-p", d, "-e", f"{d}/logs/error.log", "-c", f"{d}/nginx.conf"], "nginx.log")
        wait_port(port, p, "nginx")
        return p, port

    def gwload(self, target, extra, logname, procs=1, srcs=None):
        """target: a port on 127.0.0.1, or "IP:PORT[,IP:PORT...]"."""
        if isinstance(target, int):
            target = f"127.0.0.1:{target}"
        cmd = [self.bin("gwload"), "--target", target, "--json", "--procs", str(procs)] + extra
        if srcs:
            cmd += ["--src", ",".join(srcs)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        with open(os.path.join(self.tmp, logname), "w") as f:
            f.write(out.stderr)
        try:
            return json.loads(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            sys.exit(f"frame_scale: gwload failed (exit {out.returncode}): {out.stderr[-2000:]}")

    # --- parts ---------------------------------------------------------------

    def part_hold(self, backends):
        out = {}
        for mode in self.args.hold_modes.split(","):
            settle()
            out[mode] = self.hold(backends, mode)
        return out

    def hold(self, backends, mode):
        a = self.args
        gw, port = self.start_gw(backends, a.workers, mode)
        pids = tree_pids(gw.pid)
        base_rss, base_pss = memory_kb(pids)
        log(f"hold ({mode} mode): {a.connections} device connections through gw ({a.workers} workers), "
            f"idle gateway RSS {base_rss} kB")
        procs = max(1, -(-a.connections // 15000))
        # connect() picks source ports of one parity first: past ~14k
        # connections per (source, destination) pair every connect scans the
        # whole half range. Keep each pair well below that.
        srcs = [f"127.0.0.{i}" for i in range(2, 2 + max(2, -(-a.connections // 7000)))]
        cmd = [self.bin("gwload"), "--target", f"127.0.0.1:{port}", "--json", "--procs", str(procs),
               "-c", str(a.connections), "--connect-rate", str(a.connect_rate), "-r", str(a.hb_rate),
               "-T", str(a.hold), "--timeout-ms", str(a.timeout_ms), "--src", ",".join(srcs)]
        load_log = open(os.path.join(self.tmp, f"hold-{mode}-gwload.log"), "w")
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=load_log, text=True, start_new_session=True)
        self.procs.append(load)
        # Sample memory while every connection is up (halfway through the hold).
        peak = None
        ramp = a.connections / a.connect_rate if a.connect_rate else 10
        deadline = time.time() + ramp + a.hold / 2 + 5
        conns = 0
        while time.time() < deadline and load.poll() is None:
            time.sleep(1)
            st = json.loads(subprocess.run([self.bin("gwctl"), "--shm", self.shm, "status", "--json"],
                                           capture_output=True, text=True).stdout)
            conns = sum(w["connections"] for w in st["workers"])
            if conns >= a.connections and peak is None:
                time.sleep(min(5, a.hold / 4))
                rss, pss = memory_kb(tree_pids(gw.pid))
                st = json.loads(subprocess.run([self.bin("gwctl"), "--shm", self.shm, "status", "--json"],
                                               capture_output=True, text=True).stdout)
                peak = (rss, pss, sum(w["connections"] for w in st["workers"]),
                        [w["connections"] for w in st["workers"]])
                log(f"hold ({mode} mode): {peak[2]} connections, gateway RSS {rss} kB, PSS {pss} kB")
        out, _ = load.communicate()
        res = json.loads(out.strip().splitlines()[-1])
        stop(gw)
        if peak is None:
            sys.exit(f"frame_scale: the gateway never held {a.connections} connections (last count {conns}); "
                     f"see {self.tmp}/hold-{mode}-gwload.log")
        rss, pss, held, per_worker = peak
        return {
            "mode": mode, "connections": held, "per_worker": per_worker, "workers": a.workers,
            "rss_kb": rss, "pss_kb": pss, "idle_rss_kb": base_rss, "idle_pss_kb": base_pss,
            "rss_per_conn": rss * 1024 / held, "pss_per_conn": pss * 1024 / held,
            "delta_rss_per_conn": (rss - base_rss) * 1024 / held, "load": res,
        }

    def part_rtt(self, backends):
        a = self.args
        gw, port = self.start_gw(backends, 2)
        n = min(a.connections, 10000)
        rows = {"gw": [], "direct": []}
        # Direct: the same connections spread over the same backends gw uses.
        direct = ",".join(f"127.0.0.1:{bp}" for bp in backends)
        for r in range(a.rounds):
            order = ["gw", "direct"] if r % 2 == 0 else ["direct", "gw"]
            for who in order:
                target = port if who == "gw" else direct
                res = self.gwload(target, ["-c", str(n), "--connect-rate", str(a.connect_rate), "-r", str(a.rtt_hb_rate), "-T",
                                           str(a.duration), "--timeout-ms", str(a.timeout_ms)],
                                  f"rtt-{who}-{r}.log", procs=1,
                                  srcs=["127.0.0.2", "127.0.0.3"])
                rows[who].append(res)
                log(f"rtt round {r + 1} {who}: hb p50 {res['hb_latency_us']['p50']} us, "
                    f"p99 {res['hb_latency_us']['p99']} us, errors {res['errors']}")
        stop(gw)
        return {"connections": n, "rows": rows}

    def part_churn(self, backends):
        a = self.args
        gw, gport = self.start_gw(backends, 2)
        ng, nport = self.start_nginx(backends, 2)
        rows = {"gw": [], "nginx": []}
        for r in range(a.rounds):
            order = ["gw", "nginx"] if r % 2 == 0 else ["nginx", "gw"]
            for who in order:
                res = self.gwload(gport if who == "gw" else nport,
                                  ["--churn", "-c", "100", "--connect-rate", "0", "-T", str(a.duration)],
                                  f"churn-{who}-{r}.log", procs=1, srcs=["127.0.0.2", "127.0.0.3", "127.0.0.4"])
                rows[who].append(res)
                log(f"churn round {r + 1} {who}: {res.get('churn_connects_per_s', 0):.0f} connects/s, "
                    f"first-frame p99 {res['first_latency_us']['p99']} us, errors {res['errors']}")
                time.sleep(2)  # let TIME_WAIT settle a little between contenders
        stop(ng)
        stop(gw)
        return {"rows": rows}


def med(xs):
    return statistics.median(xs) if xs else 0


def report(args, results, build):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    kernel = os.uname().release
    try:
        rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                             text=True).stdout.strip()
    except OSError:
        rev = "?"
    lines = [f"## frame (device gateway), {now}", "",
             f"kernel `{kernel}`, nproc {os.cpu_count()}, gw {rev}, build {build}; "
             f"`bench/frame_scale.py {' '.join(sys.argv[1:])}`", ""]
    if "hold" in results:
        for mode, h in results["hold"].items():
            ld = h["load"]
            what = {"connection": "routed once, on the first frame",
                    "frame": "every frame routed by its own key, one link per host",
                    "tcp": "a plain tcp listener, round robin: an idle L4 proxied connection"}[mode]
            lines += [
                f"**Hold, mode `{mode}`** ({what}): {h['connections']} concurrent device connections through gw "
                f"({h['workers']} workers; per worker {h['per_worker']}), heartbeats at {args.hb_rate}/s each for "
                f"{args.hold} s; gwload: {ld['established']} established, {ld['errors']} errors, connect rate "
                f"{ld['connect_rate']:.0f}/s, hold heartbeat p50 {ld['hb_latency_us']['p50']} µs, "
                f"p99 {ld['hb_latency_us']['p99']} µs (ramp: p99 {ld['hb_ramp_latency_us']['p99']} µs).", "",
                "| gateway memory | total | per connection |", "|---|---:|---:|",
                f"| summed RSS (master + workers) | {h['rss_kb'] / 1024:.1f} MiB | **{h['rss_per_conn']:.0f} B** |",
                f"| summed PSS | {h['pss_kb'] / 1024:.1f} MiB | {h['pss_per_conn']:.0f} B |",
                f"| RSS growth over the idle gateway ({h['idle_rss_kb'] / 1024:.1f} MiB) | "
                f"{(h['rss_kb'] - h['idle_rss_kb']) / 1024:.1f} MiB | {h['delta_rss_per_conn']:.0f} B |", ""]
        lines += ["Target ≤ 2 KiB per connection (summed RSS over connections); nginx stream measured here: "
                  "about 9.3 KB.", ""]
    if "rtt" in results:
        r = results["rtt"]
        lines += [f"**Heartbeat round trip**, {r['connections']} connections at {args.rtt_hb_rate:g} heartbeat/s each, "
                  f"{args.duration} s "
                  f"once every connection is up (replies during the ramp not counted), medians of {args.rounds} "
                  f"interleaved rounds; gw with 2 workers over {args.backends} backends, direct spread over the "
                  f"same {args.backends} backends:", "",
                  "| path | hb p50 µs | hb p99 µs | hb p999 µs | errors |", "|---|---:|---:|---:|---:|"]
        for who in ("gw", "direct"):
            rs = r["rows"][who]
            lines.append(f"| {'through gw' if who == 'gw' else 'direct to the backends'} | "
                         f"{med([x['hb_latency_us']['p50'] for x in rs]):.0f} | "
                         f"{med([x['hb_latency_us']['p99'] for x in rs]):.0f} | "
                         f"{med([x['hb_latency_us']['p999'] for x in rs]):.0f} | {sum(x['errors'] for x in rs)} |")
        lines.append("")
    if "churn" in results:
        c = results["churn"]["rows"]
        g = med([x.get("churn_connects_per_s", 0) for x in c["gw"]])
        n = med([x.get("churn_connects_per_s", 0) for x in c["nginx"]])
        lines += [f"**First-frame routing throughput**: 100 concurrent clients each looping connect → login frame → "
                  f"echo → close for {args.duration} s, medians of {args.rounds} interleaved rounds, 2 workers each "
                  "(gw parses the frame and hashes its devid; nginx stream hashes the client address, as it cannot "
                  "read the frame without Lua):", "",
                  "| contender | new connections/s | first-frame p50 µs | p99 µs | vs nginx | errors |",
                  "|---|---:|---:|---:|---:|---:|"]
        for who, v in (("gw", g), ("nginx", n)):
            rs = c[who]
            lines.append(f"| {who} | {v:.0f} | {med([x['first_latency_us']['p50'] for x in rs]):.0f} | "
                         f"{med([x['first_latency_us']['p99'] for x in rs]):.0f} | {v / n if n else 0:.2f} | "
                         f"{sum(x['errors'] for x in rs)} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.no_record:
        return
    with open(os.path.join(ROOT, "bench", "RESULTS.md"), "a") as f:
        f.write("\n" + text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="hold,rtt,churn")
    ap.add_argument("--connections", type=int, default=50000)
    ap.add_argument("--workers", type=int, default=8, help="gw workers for the hold part")
    ap.add_argument("--hold-modes", default="connection,frame", help="listener modes the hold part runs")
    ap.add_argument("--rtt-hb-rate", type=float, default=1.0, help="rtt: heartbeats per second per connection")
    ap.add_argument("--connect-rate", type=int, default=5000, help="hold and rtt: new connections per second")
    ap.add_argument("--timeout-ms", type=int, default=5000,
                    help="hold and rtt: gwload's limit for a login echo or a heartbeat reply (a shared, busy machine "
                         "needs more)")
    ap.add_argument("--hb-rate", type=float, default=0.2, help="heartbeats per second per connection (hold)")
    ap.add_argument("--hold", type=int, default=30, help="seconds to hold every connection")
    ap.add_argument("--backends", type=int, default=8,
                    help="device backends (gw's connections to each stay well under 14k ports)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = ap.parse_args()
    for m in args.hold_modes.split(","):
        if m not in ("connection", "frame", "tcp"):
            sys.exit(f"frame_scale: unknown hold mode {m!r} (connection, frame, tcp)")
    parts = [p for p in args.parts.split(",") if p]
    for p in parts:
        if p not in ("hold", "rtt", "churn"):
            sys.exit(f"frame_scale: unknown part {p!r} (hold, rtt, churn)")
    if "churn" in parts and not (shutil.which("nginx") and os.path.exists(NGINX_STREAM_MODULE)):
        sys.exit("frame_scale: nginx with the stream module is needed for the churn part (tools/setup.sh)")
    b = Bench(args)
    results = {}
    try:
        b.ensure_build()
        backends = b.start_backends(args.backends)
        for p in parts:
            settle()
            results[p] = getattr(b, "part_" + p)(backends)
    finally:
        b.cleanup()
    report(args, results, b.build)
    log(f"logs in {b.tmp}")


if __name__ == "__main__":
    main()
