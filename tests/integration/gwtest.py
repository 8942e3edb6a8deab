"""gwtest: harness for gw's integration tests (real gwd, real backends).

In the spirit of nginx-tests: every test generates a config, starts the real
`gwd` from the build directory against backends that live in this Python
process, talks to it over loopback, and inspects it with the real `gwctl`.

Only the Python 3.11 standard library is used. Environment:
  GW_BUILD_DIR            build directory holding gwd, gwctl, gw-backend
                          (default /work/main/build)
  GW_TEST_KEEP=1          keep the per-test temp dirs (configs, logs, state)
  GW_TEST_TIMEOUT_SCALE   multiply every generous timeout (not the 100 ms
                          respawn requirement) on a very slow machine
  GW_TEST_VERBOSE=1       dump gateway logs even for passing tests
  GW_ENGINE               event_engine written into every generated gateway
                          config that does not set one ("epoll" or "io_uring";
                          unset = the config default, epoll). ctest runs the
                          suite once per engine.

Everything that waits is bounded; every process started here is killed at
teardown, also when a test fails or the interpreter exits early.
"""

import atexit
import collections
import ctypes
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

BUILD_DIR = os.environ.get("GW_BUILD_DIR") or "/work/main/build"
GWD = os.path.join(BUILD_DIR, "gwd")
GWCTL = os.path.join(BUILD_DIR, "gwctl")
GW_BACKEND = os.path.join(BUILD_DIR, "gw-backend")
SCALE = float(os.environ.get("GW_TEST_TIMEOUT_SCALE") or "1")
KEEP = os.environ.get("GW_TEST_KEEP") == "1"
VERBOSE = os.environ.get("GW_TEST_VERBOSE") == "1"
ENGINE = os.environ.get("GW_ENGINE") or None
if ENGINE not in (None, "epoll", "io_uring"):
    raise SystemExit(f"GW_ENGINE must be epoll or io_uring, not {ENGINE!r}")
LOOPBACK = "127.0.0.1"

# Event lines of `gwctl events`: "2026-11-21T23:40:00.123Z #12 gen=5 <text>".
EVENT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z #(\d+) gen=(\d+) (.+)$")


def T(seconds):
    """A generous timeout, scaled by GW_TEST_TIMEOUT_SCALE."""
    return seconds * SCALE


# ----------------------------------------------------------------------------
# process bookkeeping (atexit safety net, subreaper, /proc helpers)

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# Become a child subreaper: workers orphaned by a SIGKILLed master are
# re-parented to us (PID 1 of this container does not reap), so we can reap
# them and never leave zombies behind.
_prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

_live_pids = {}           # every gw pid we know of -> its session id, for the atexit net
_live_lock = threading.Lock()


def _child_preexec():
    # Dies with the test process even if it is SIGKILLed (safety net only).
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _is_ours(pid):
    """True if pid still runs one of the gw binaries (guards against pid reuse)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    exe = exe.replace(" (deleted)", "")
    return exe in (os.path.realpath(GWD), os.path.realpath(GW_BACKEND), os.path.realpath(GWCTL))


def kill_if_ours(pid, sid):
    """SIGKILLs pid only if it is still a gw process of session sid (never a reused pid)."""
    if pid_alive(pid) and proc_sid(pid) == sid and _is_ours(pid):
        try:
            os.kill(pid, signal.SIGKILL)
            return True
        except OSError:
            pass
    return False


def _atexit_kill():
    with _live_lock:
        pids = dict(_live_pids)
    for pid, sid in pids.items():
        kill_if_ours(pid, sid)
    for pid in pids:
        reap(pid)


atexit.register(_atexit_kill)


def remember_pids(pids, sid):
    with _live_lock:
        for p in pids:
            if p and p > 0:
                _live_pids[p] = sid


def proc_sid(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # after "(comm) ": state ppid pgrp session tty_nr ...
        return int(data[data.rindex(b")") + 2:].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def reap(pid):
    """Collects a zombie if it is our child (orphans re-parented to us included)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def proc_state(pid):
    """The state letter from /proc/PID/stat ('R', 'S', 'T', 'Z', ...) or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        return data[data.rindex(b")") + 2:data.rindex(b")") + 3].decode()
    except ValueError:
        return None


def pid_alive(pid):
    """True for a running (not zombie) process."""
    if not pid or pid <= 0:
        return False
    st = proc_state(pid)
    if st in ("Z", "X"):
        reap(pid)
    return st is not None and st not in ("Z", "X")


def children(pid, include_zombies=False):
    """Children of pid, from /proc/PID/task/*/children (cheap enough to poll every ms)."""
    out = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out.update(int(x) for x in f.read().split())
        except OSError:
            pass
    if not include_zombies:
        out = {c for c in out if pid_alive(c)}
    return out


def pgrep_children(pid):
    """Children of pid as `pgrep -P` sees them."""
    try:
        r = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=T(5))
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {int(x) for x in r.stdout.split() if x.strip().isdigit()}


def wait_pids_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    pids = set(pids)
    while True:
        alive = {p for p in pids if pid_alive(p)}
        if not alive:
            for p in pids:
                reap(p)
            return set()
        if time.monotonic() > deadline:
            return alive
        time.sleep(0.01)


_RESPAWN_PROBE = r"""
import json, os, signal, sys, time
master, victim, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
before = set(int(x) for x in sys.argv[4].split(",") if x)
def kids():
    out = set()
    try:
        tasks = os.listdir(f"/proc/{master}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{master}/task/{t}/children") as f:
                out.update(int(x) for x in f.read().split())
        except OSError:
            pass
    return out
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
os.kill(victim, signal.SIGKILL)
new = set()
polls = 0
while time.monotonic() - t0 < limit:
    new = kids() - before - {victim}
    polls += 1
    if new:
        break
    time.sleep(0.001)
dt = time.monotonic() - t0
print(json.dumps({"dt": dt, "new": sorted(new), "polls": polls}), flush=True)
"""


def kill_and_time_respawn(master, victim, before, limit=5.0):
    """SIGKILLs victim and measures, by polling the master's children every 1 ms,
    how long until a new child appears. Runs in a separate, single-threaded
    process so that this process's threads (load, backends) cannot delay the
    measurement. Returns (seconds, new child pids)."""
    p = subprocess.Popen([sys.executable, "-c", _RESPAWN_PROBE, str(master), str(victim), str(limit),
                          ",".join(str(x) for x in before)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if p.stdout.readline().strip() != "ready":
            raise AssertionError("respawn probe did not start")
        p.stdin.write("go\n")
        p.stdin.flush()
        out, _ = p.communicate(timeout=limit + T(10))
        r = json.loads(out)
        return r["dt"], set(r["new"])
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def vm_rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _proc_net_tcp():
    """Rows of /proc/net/tcp as (local_ip_hex, local_port, rem_port, state_hex, inode)."""
    rows = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    p = line.split()
                    if len(p) < 10:
                        continue
                    lip, lport = p[1].rsplit(":", 1)
                    _, rport = p[2].rsplit(":", 1)
                    rows.append((lip, int(lport, 16), int(rport, 16), p[3], int(p[9])))
        except OSError:
            pass
    return rows


def port_listening(port):
    """True once something is in LISTEN state on 127.0.0.1:port or [::1]:port, or on
    the wildcard address (does not connect)."""
    for lip, lport, _, st, _ in _proc_net_tcp():
        if lport == port and st == "0A" and lip in ("0100007F", "00000000", "0" * 32, "0" * 24 + "01000000"):
            return True
    return False


def socket_inodes(pid):
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def client_ports_held_by(pid, listen_port):
    """Client ports of the connections accepted on listen_port that process pid holds open."""
    inodes = socket_inodes(pid)
    return {rport for _, lport, rport, st, ino in _proc_net_tcp()
            if ino in inodes and lport == listen_port and st != "0A"}


# ----------------------------------------------------------------------------
# ports, names, waiting

_shm_counter = itertools.count(1)

def sanitized_build():
    """True if gwctl (and so the build) carries AddressSanitizer, which
    reserves terabytes of address space: a test's RLIMIT_AS cannot apply."""
    try:
        with open(GWCTL, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer")


_recent_ports = collections.deque(maxlen=512)


def free_port():
    """A loopback port that was free a moment ago (bind port 0, close), and not
    one this process handed out recently: the kernel may give the same port to
    two calls in a row, and two listeners of one config then share it
    (SO_REUSEPORT), each getting the other's connections."""
    for _ in range(64):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _recent_ports:
            _recent_ports.append(port)
            return port
    raise AssertionError("no free loopback port that was not handed out recently")


def wildcard_free_port(family=socket.AF_INET):
    """A port no socket on any local address of the family held a moment ago
    (bind 0.0.0.0:0, or [::]:0 IPV6_V6ONLY as gwd binds it, then close), for a
    listener on the wildcard. free_port() only checks 127.0.0.1: a port it
    gives may be held on 127.0.0.2, by a connection or its TIME_WAIT, and a
    bind to 0.0.0.0 of that port fails until it goes."""
    for _ in range(64):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            port = s.getsockname()[1]
        if port not in _recent_ports:
            _recent_ports.append(port)
            return port
    raise AssertionError("no free wildcard port that was not handed out recently")


def unique_shm_name():
    return f"gwtest-{os.getpid()}-{next(_shm_counter)}"


def remove_shm(name):
    """Removes the segment and gwd's instance lock beside it (NAME.lock)."""
    for path in (f"/dev/shm/{name}", f"/dev/shm/{name}.lock"):
        try:
            os.unlink(path)
        except OSError:
            pass


def wait_until(pred, timeout, interval=0.01, msg="condition"):
    """Polls pred() until it returns a truthy value; returns it or raises AssertionError."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # keep polling; report the last problem
            last_exc = e
        if time.monotonic() > deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {msg}{extra}")
        time.sleep(interval)


class ResetHost:
    """A host that accepts a connection, sends `banner` and resets it (SO_LINGER
    0) before the process that connected has looked at its connect: that
    process then sees SO_ERROR (or an io_uring connect result) ECONNRESET.

    Made deterministic: the host's accept queue is full (listen(0) and a
    connection never accepted), so the kernel drops the connecting SYN
    (SYN-SENT, retransmitted after 1 s). reset_next(pid) waits until a socket
    of process pid is in SYN-SENT towards the host, stops pid (SIGSTOP), frees
    the queue so that the retransmitted SYN completes, accepts, sends the
    banner, resets, waits until the reset has closed pid's socket, and lets pid
    go on (SIGCONT, always). Returns the inode of pid's socket."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(0)  # once full, the kernel drops the SYNs
        self.port = self.sock.getsockname()[1]
        self.address = f"{LOOPBACK}:{self.port}"
        self.filler = socket.create_connection(self.sock.getsockname(), timeout=T(5))  # fills the queue

    def syn_sent(self, pid):
        inodes = socket_inodes(pid)
        return [ino for _, _, rport, st, ino in _proc_net_tcp() if ino in inodes and rport == self.port and st == "02"]

    def reset_next(self, pid, banner=b""):
        wait_until(lambda: self.syn_sent(pid), T(5), msg=f"a connect of pid {pid} to the host in SYN-SENT")
        (ino,) = self.syn_sent(pid)
        os.kill(pid, signal.SIGSTOP)
        try:
            f, _ = self.sock.accept()  # the filler: the retransmitted SYN now completes
            f.close()
            self.sock.settimeout(T(10))
            b, _ = self.sock.accept()  # pid's connection
            if banner:
                b.sendall(banner)
            b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            b.close()  # a reset
            # A socket closed by a reset is in no table.
            wait_until(lambda: ino not in {r[4] for r in _proc_net_tcp()}, T(5), msg="the reset reached the socket")
        finally:
            os.kill(pid, signal.SIGCONT)
        self.filler.close()
        self.filler = socket.create_connection(self.sock.getsockname(), timeout=T(5))  # full again: ready for more
        return ino

    def close(self):
        self.filler.close()
        self.sock.close()


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    return path


# ----------------------------------------------------------------------------
# config generation

def host(hid, target, weight=1):
    """A host entry; target is a Backend, a port number or an "IP:PORT" string."""
    if isinstance(target, Backend):
        addr = target.address
    elif isinstance(target, int):
        addr = f"{LOOPBACK}:{target}"
    else:
        addr = target
    return {"id": hid, "address": addr, "weight": weight}


def pool(pid, hosts, priority=0, method="round_robin"):
    return {"id": pid, "priority": priority, "method": method, "hosts": list(hosts)}


def upstream(name, pools, **opts):
    u = {"name": name, "connect_timeout_ms": 2000, "idle_timeout_ms": 600000,
         "max_fails": 1, "fail_timeout_ms": 10000, "tries": 3, "pools": list(pools)}
    u.update(opts)
    return u


def tcp_listener(name, upstream_name, port=None, **opts):
    l = {"name": name, "listen": f"{LOOPBACK}:{port or free_port()}", "protocol": "tcp",
         "upstream": upstream_name, "backlog": 1024}
    l.update(opts)
    return l


# ----------------------------------------------------------------------------
# Python backends

class Backend:
    """A threaded TCP server on 127.0.0.1 (one thread per connection).

    modes:
      name       sends "NAME\\n" on accept, then echoes; on EOF echoes the rest
                 and shuts down its write side (half-close), then closes.
      echo       echoes every byte; half-close as above.
      eof_reply  reads until EOF, then sends "NAME got N bytes\\n" and closes.
    Counts connections (accepted total, currently active) and records EOFs.
    """

    def __init__(self, name, mode="name", port=None):
        self.name = name
        self.mode = mode
        self.lock = threading.Lock()
        self.accepted = 0
        self.active = 0
        self.eofs = 0
        self.errors = []
        self._stop = False
        self._conns = set()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, port or 0))
        self.sock.listen(4096)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.address = f"{LOOPBACK}:{self.port}"
        self.thread = threading.Thread(target=self._accept_loop, name=f"backend-{name}", daemon=True)
        self.thread.start()

    def __repr__(self):
        return (f"Backend({self.name!r}, {self.mode}, {self.address}, accepted={self.accepted}, "
                f"active={self.active}, eofs={self.eofs}, errors={self.errors[:3]})")

    @property
    def count(self):
        with self.lock:
            return self.accepted

    def _accept_loop(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop:
                    return
                time.sleep(0.01)
                continue
            c.settimeout(T(60))
            with self.lock:
                self.accepted += 1
                self.active += 1
                self._conns.add(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            if self.mode == "name":
                c.sendall(f"{self.name}\n".encode())
            if self.mode in ("name", "echo"):
                while True:
                    data = c.recv(65536)
                    if not data:
                        with self.lock:
                            self.eofs += 1
                        c.shutdown(socket.SHUT_WR)
                        # wait for the peer's close (bounded by the socket timeout)
                        try:
                            while c.recv(65536):
                                pass
                        except OSError:
                            pass
                        break
                    c.sendall(data)
            elif self.mode == "eof_reply":
                n = 0
                while True:
                    data = c.recv(65536)
                    if not data:
                        break
                    n += len(data)
                with self.lock:
                    self.eofs += 1
                c.sendall(f"{self.name} got {n} bytes\n".encode())
                c.shutdown(socket.SHUT_WR)
            else:
                raise ValueError(self.mode)
        except OSError as e:
            if not self._stop:
                with self.lock:
                    self.errors.append(repr(e))
        finally:
            with self.lock:
                self.active -= 1
                self._conns.discard(c)
            try:
                c.close()
            except OSError:
                pass

    def stop(self):
        self._stop = True
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(T(2))


class ExternalBackend:
    """gw-backend from the build dir (http or echo mode)."""

    def __init__(self, name, mode="echo", port=None, threads=1):
        self.name = name
        self.port = port or free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        self.proc = subprocess.Popen(
            [GW_BACKEND, "--listen", self.address, "--name", name, "--mode", mode, "--threads", str(threads)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_child_preexec)
        remember_pids([self.proc.pid], self.proc.pid)
        wait_until(lambda: port_listening(self.port) or self.proc.poll() is not None, T(5),
                   msg=f"gw-backend on {self.address}")
        if self.proc.poll() is not None:
            raise AssertionError(f"gw-backend exited with {self.proc.returncode}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(T(5))
        except subprocess.TimeoutExpired:
            pass


# ----------------------------------------------------------------------------
# client helpers

def connect(port, timeout=None):
    return socket.create_connection((LOOPBACK, port), timeout=timeout or T(5))


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_line(sock, limit=4096):
    buf = bytearray()
    while not buf.endswith(b"\n"):
        b = sock.recv(1)
        if not b:
            raise EOFError(f"EOF after {bytes(buf)!r} while reading a line")
        buf += b
        if len(buf) > limit:
            raise AssertionError(f"line too long: {bytes(buf[:80])!r}")
    return bytes(buf[:-1]).decode()


def recv_all(sock):
    """Reads until EOF."""
    buf = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(buf)
        buf += chunk


def hello(port, timeout=None):
    """One full connection through the gateway to a `name` backend; returns its name.

    The client speaks first (so it works whether the gateway connects upstream on
    accept or on first data), reads the backend's name and the echo, closes.
    """
    with connect(port, timeout) as s:
        s.sendall(b"hi\n")
        name = recv_line(s)
        echo = recv_line(s)
        if echo != "hi":
            raise AssertionError(f"echo through {name} was {echo!r}")
        return name


def names(port, n):
    """Names seen by n sequential connections."""
    return [hello(port) for _ in range(n)]


class LoadClient:
    """Threads that open short connections to a `name` backend continuously.

    Every failure (connect error, reset, EOF, wrong bytes, timeout) is recorded
    with the client's local port, so it can be matched against connections that
    a killed process held.
    """

    def __init__(self, port, backend_name, threads=2, timeout=None):
        self.port = port
        self.expect = f"{backend_name}\nping\n".encode()
        self.timeout = timeout or T(10)
        self.ok = 0
        self.errors = []          # (local_port, description)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True, name=f"load-{i}")
                        for i in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(self.timeout + T(5))

    def count(self):
        with self.lock:
            return self.ok

    def _run(self):
        while not self._stop.is_set():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            lport = None
            try:
                s.connect((LOOPBACK, self.port))
                lport = s.getsockname()[1]
                s.sendall(b"ping\n")
                buf = b""
                while len(buf) < len(self.expect):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                if buf != self.expect:
                    raise AssertionError(f"got {buf!r}, expected {self.expect!r}")
                with self.lock:
                    self.ok += 1
            except (OSError, AssertionError) as e:
                with self.lock:
                    self.errors.append((lport, f"{time.monotonic():.3f} {e!r}"))
            finally:
                s.close()


# ----------------------------------------------------------------------------
# the gateway under test

class Gateway:
    """One gwd instance (master + workers) started from a generated config."""

    _starts = itertools.count(1)

    def __init__(self, tc, config, conf_name="gw.json"):
        self.tc = tc
        self.dir = tc.tmp
        self.config = config
        self.shm = config["shm"]["name"]
        if ENGINE and "event_engine" not in config:
            config["event_engine"] = ENGINE
        self.conf_path = write_json(os.path.join(self.dir, conf_name), config)
        self.proc = None
        self.log_path = None
        self.logs = []
        self.known = {}   # pid -> session id of every gw process seen (all starts)
        # Another network namespace to run gwd in (a path such as
        # /proc/PID/ns/net, entered with nsenter): test_vip's nodes.
        self.netns = None

    def remember(self, pids):
        sid = self.pid
        for p in pids:
            if p and p > 0:
                self.known[p] = sid
        remember_pids(pids, sid)

    # -- config facts
    @property
    def ports(self):
        return [int(l["listen"].rsplit(":", 1)[1]) for l in self.config.get("listeners", [])]

    @property
    def port(self):
        return self.ports[0]

    def expected_workers(self):
        w = self.config.get("workers", "auto")
        return os.cpu_count() if w == "auto" else int(w)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    # -- lifecycle
    def start(self, wait=True, extra_args=(), env=None):
        """env: variables added to this environment for gwd (test_alloc's LD_PRELOAD)."""
        n = next(self._starts)
        self.log_path = os.path.join(self.dir, f"gwd-{n}.log")
        self.logs.append(self.log_path)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*self.in_netns(), GWD, "-c", self.conf_path, "--foreground", *extra_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True, preexec_fn=_child_preexec,
                env={**os.environ, **env} if env else None)
        self.remember([self.proc.pid])
        if wait:
            self.wait_ready()
        return self

    def in_netns(self):
        """The argv prefix that runs a command in this gateway's network
        namespace (nsenter execs it: the pid stays the command's)."""
        if self.netns is None:
            return []
        import netns  # this directory's: only the namespace tests need it
        return [netns.tool("nsenter") or "nsenter", f"--net={self.netns}"]

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except (OSError, TypeError):
            return ""

    def _fail(self, msg):
        raise AssertionError(f"{msg}\n--- {self.log_path} ---\n{tail(self.log_text())}")

    def wait_ready(self, timeout=None):
        """Waits until gwd logged `ready`, every listener is in LISTEN state and
        `gwctl status --json` shows every worker slot with a live child pid."""
        timeout = timeout or T(15)
        deadline = time.monotonic() + timeout
        want = self.expected_workers()
        last = "nothing yet"
        while True:
            if self.proc.poll() is not None:
                self._fail(f"gwd exited with {self.proc.returncode} before it was ready")
            ok = ": ready: " in self.log_text()  # the master's line (not a word like "already")
            if not ok:
                last = "no 'ready' line in the log"
            if ok and ENGINE == "io_uring" and self.config.get("event_engine") == "io_uring" \
                    and "engine io_uring" not in self.log_text():
                # The engine under test must really run (gwd falls back to
                # epoll, with a warning, on a kernel without what it needs).
                self._fail("gwd did not start the io_uring engine")
            if ok and self.netns is None:
                missing = [p for p in self.ports if not port_listening(p)]
                if missing:
                    ok, last = False, f"listeners not listening: {missing}"
            elif ok:
                # In another namespace /proc/net/tcp is not ours to read:
                # `gwctl check` there connects to every listener.
                r = subprocess.run([*self.in_netns(), GWCTL, "check", "-c", self.conf_path], capture_output=True,
                                   text=True, timeout=T(10), stdin=subprocess.DEVNULL)
                if r.returncode != 0:
                    ok, last = False, f"gwctl check: {r.stderr.strip()}"
            if ok:
                rc, out, err = self.gwctl("status", "--json")
                if rc != 0:
                    ok, last = False, f"gwctl status --json: rc={rc} {err.strip()}"
                else:
                    try:
                        st = json.loads(out)
                        ws = st.get("workers", [])
                        kids = children(self.pid)
                        pids = [w.get("pid", 0) for w in ws]
                        if len(ws) != want:
                            ok, last = False, f"{len(ws)} workers in status, want {want}"
                        elif not all(p in kids for p in pids):
                            ok, last = False, f"worker pids {pids} are not all live children {sorted(kids)}"
                        elif st.get("master_pid") != self.pid:
                            ok, last = False, f"master_pid {st.get('master_pid')} != gwd pid {self.pid}"
                        else:
                            self.remember(pids)
                    except (ValueError, AttributeError, TypeError) as e:
                        ok, last = False, f"status json unparsable ({e}): {out[:300]!r}"
            if ok:
                return
            if time.monotonic() > deadline:
                self._fail(f"gwd not ready after {timeout:.0f}s: {last}")
            time.sleep(0.02)

    def children(self):
        return children(self.pid)

    def all_pids(self):
        pids = set()
        if self.proc and self.proc.poll() is None:
            pids.add(self.pid)
            pids |= children(self.pid) | pgrep_children(self.pid)
        return pids

    def send_signal(self, sig):
        os.kill(self.pid, sig)

    def wait_exit(self, timeout):
        """Waits for the master to exit; returns its exit code (None on timeout)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, timeout=None):
        """Signals the master and waits for it and its children; returns the exit code."""
        timeout = timeout or T(15)
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        kids = self.all_pids() - {self.pid}
        self.remember(kids)
        self.send_signal(sig)
        rc = self.wait_exit(timeout)
        left = wait_pids_gone(kids, T(5))
        if rc is None or left:
            self.kill_all()
            raise AssertionError(f"gwd did not stop on {signal.Signals(sig).name} within {timeout}s "
                                 f"(rc={rc}, children left: {sorted(left)})\n{tail(self.log_text())}")
        return rc

    def kill_all(self):
        """SIGKILLs master, workers and checker (as a crash would), waits until all are gone."""
        if self.proc is None:
            return
        master_unreaped = self.proc.poll() is None
        if master_unreaped:
            try:
                os.kill(self.pid, signal.SIGSTOP)   # no respawn while we kill its children
            except OSError:
                pass
            kids = (children(self.pid, include_zombies=True) | pgrep_children(self.pid))
        else:
            kids = set()
        self.remember(kids)
        for p in kids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        # orphans of an earlier master death (re-parented to us, the subreaper)
        for p, sid in list(self.known.items()):
            if p not in kids and p != self.pid and kill_if_ours(p, sid):
                kids.add(p)
        if master_unreaped:
            # the master's pid cannot have been reused while it is unreaped
            try:
                os.killpg(self.pid, signal.SIGKILL)     # anything else in gwd's session
            except OSError:
                pass
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait(T(10))
        except subprocess.TimeoutExpired:
            pass
        left = wait_pids_gone(kids, T(10))
        if left:
            raise AssertionError(f"gw processes survived SIGKILL: {sorted(left)}")

    # -- control plane
    def gwctl(self, *args, timeout=None):
        return run_gwctl(*args, shm=self.shm, timeout=timeout)

    def status(self):
        rc, out, err = self.gwctl("status", "--json")
        if rc != 0:
            raise AssertionError(f"gwctl status --json failed rc={rc}: {err.strip()}")
        try:
            return json.loads(out)
        except ValueError as e:
            raise AssertionError(f"gwctl status --json is not JSON ({e}): {out[:500]!r}")

    def worker_pids(self):
        return [w["pid"] for w in self.status()["workers"]]

    def events(self):
        """Lines of `gwctl events`."""
        rc, out, err = self.gwctl("events")
        if rc != 0:
            raise AssertionError(f"gwctl events failed rc={rc}: {err.strip()}")
        return [l for l in out.splitlines() if l.strip()]

    def event_texts(self):
        texts = []
        for line in self.events():
            m = EVENT_RE.match(line)
            if not m:
                raise AssertionError(f"malformed event line: {line!r}")
            texts.append(m.group(3))
        return texts


def tail(text, lines=120):
    ls = text.splitlines()
    head = f"[... {len(ls) - lines} earlier lines ...]\n" if len(ls) > lines else ""
    return head + "\n".join(ls[-lines:])


# gwctl: where `--shm NAME` goes. The contract says every command takes it; we
# put it after the command's own arguments.
def gwctl_argv(args, shm=None, config=None):
    argv = [GWCTL, *args]
    if shm is not None:
        argv += ["--shm", shm]
    if config is not None:
        argv += ["-c", config]
    return argv


def run_gwctl(*args, shm=None, config=None, timeout=None):
    """Runs gwctl; returns (rc, stdout, stderr)."""
    argv = gwctl_argv(args, shm, config)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout or T(10),
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{' '.join(argv)} did not finish within {e.timeout}s")
    return r.returncode, r.stdout, r.stderr


def find_host(status, path):
    """path 'upstream/pool/host' -> host dict from status json, or None."""
    u, p, h = path.split("/")
    for up in status.get("upstreams", []):
        if up.get("name") != u:
            continue
        for po in up.get("pools", []):
            if po.get("id") != p:
                continue
            for ho in po.get("hosts", []):
                if ho.get("id") == h:
                    return ho
    return None


def find_pool(status, path):
    u, p = path.split("/")
    for up in status.get("upstreams", []):
        if up.get("name") == u:
            for po in up.get("pools", []):
                if po.get("id") == p:
                    return po
    return None


def table_snapshot(status, rules=False):
    """The configuration part of a status (no counters, no health, no pids);
    with rules, the routes' gray rules too (without their hit counters)."""
    snap = {"generation": status.get("generation"), "upstreams": []}
    if rules:
        snap["routes"] = [(r.get("listener"), r.get("route"),
                           [{k: v for k, v in rule.items() if k != "hits"} for rule in r.get("rules", [])])
                          for r in status.get("routes", [])]
    for up in status.get("upstreams", []):
        pools = []
        for po in up.get("pools", []):
            hosts = [(h.get("id"), h.get("address"), h.get("weight"), h.get("admin"))
                     for h in po.get("hosts", [])]
            pools.append((po.get("id"), po.get("priority"), po.get("method"), hosts))
        snap["upstreams"].append((up.get("name"), pools))
    return snap


# ----------------------------------------------------------------------------
# the test case base class

class GwTestCase(unittest.TestCase):
    """Base class: temp dir per test, backends, gateways, cleanup and assertions."""

    maxDiff = None
    needs = ("gwd", "gwctl")     # binaries this class needs

    @classmethod
    def setUpClass(cls):
        for b in (os.path.join(BUILD_DIR, x) for x in cls.needs):
            if not os.access(b, os.X_OK):
                raise AssertionError(f"{b} is missing or not executable (set GW_BUILD_DIR)")

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix=f"gwtest-{os.getpid()}-{self._testMethodName}-")
        self._gateways = []
        self._backends = []
        self._shm_names = []
        self.addCleanup(self._teardown_all)

    def _failed(self):
        """Has this test failed so far? (Python 3.11 reports failures to the
        result at once, so the cleanups can see them.)"""
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return True
        for t, _ in list(getattr(result, "failures", [])) + list(getattr(result, "errors", [])):
            if t is self or getattr(t, "test_case", None) is self:
                return True
        return False

    def _teardown_all(self):
        failed = self._failed()
        problems = []
        if failed or VERBOSE:
            self.dump()
        for gw in self._gateways:
            try:
                gw.kill_all()
            except Exception as e:
                problems.append(repr(e))
            # A sanitizer build (tools/test.sh runs the suite under ASan+UBSan)
            # reports into gwd's log; any report fails the test.
            for path in gw.logs:
                try:
                    with open(path, "rb") as f:
                        text = f.read().decode(errors="replace")
                except OSError:
                    continue
                for marker in SANITIZER_MARKERS:
                    if marker in text:
                        problems.append(f"{marker!r} in {path}:\n{tail(text)}")
                        break
        for b in self._backends:
            try:
                b.stop()
            except Exception as e:
                problems.append(repr(e))
        for name in self._shm_names:
            remove_shm(name)
        if KEEP or (failed and os.environ.get("GW_TEST_KEEP_FAILED") == "1"):
            sys.stderr.write(f"\n[gwtest] kept {self.tmp}\n")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if problems:
            raise AssertionError("teardown: " + "; ".join(problems))

    def dump(self):
        out = [f"\n===== {self.id()}: diagnostics (temp dir {self.tmp}) ====="]
        for b in self._backends:
            out.append(f"backend: {b!r}")
        for gw in self._gateways:
            out.append(f"gateway shm={gw.shm} pid={gw.pid} conf={gw.conf_path}")
            if gw.proc is not None and gw.proc.poll() is None:
                try:
                    rc, so, se = gw.gwctl("status", "--json", timeout=T(3))
                    out.append(f"--- gwctl status --json (rc={rc}) ---\n{so.strip()}{se.strip()}")
                    rc, so, se = gw.gwctl("events", timeout=T(3))
                    out.append(f"--- gwctl events (rc={rc}) ---\n{tail(so, 40)}{se.strip()}")
                except Exception as e:
                    out.append(f"(gwctl failed: {e!r})")
            for path in gw.logs:
                try:
                    with open(path, "rb") as f:
                        text = f.read().decode(errors="replace")
                except OSError:
                    text = "(missing)"
                out.append(f"--- {path} ---\n{tail(text)}")
        sys.stderr.write("\n".join(out) + "\n")
        sys.stderr.flush()

    # -- factories
    def shm_name(self):
        name = unique_shm_name()
        self._shm_names.append(name)
        remove_shm(name)
        return name

    def backend(self, name, mode="name", port=None):
        b = Backend(name, mode, port)
        self._backends.append(b)
        return b

    def external_backend(self, name, mode="echo", threads=1):
        b = ExternalBackend(name, mode, threads=threads)
        self._backends.append(b)
        return b

    def make_config(self, pools, workers=1, upstream_opts=None, listeners=None, shm=None, **top):
        """A full config: one upstream `app` with the given pools, one tcp listener `l4`."""
        shm_name = self.shm_name()
        cfg = {
            "workers": workers,
            "log_file": "",
            "log_level": "info",
            "shutdown_timeout_ms": 10000,
            "shm": {"name": shm_name, "max_upstreams": 8, "max_pools": 32, "max_hosts": 256},
            # one state file per config: a gateway restores its state file over the config
            "state_file": os.path.join(self.tmp, f"{shm_name}.state.json"),
            "listeners": listeners if listeners is not None else [tcp_listener("l4", "app")],
            "upstreams": [upstream("app", pools, **(upstream_opts or {}))],
        }
        if shm:
            cfg["shm"].update(shm)
        cfg.update(top)
        return cfg

    def gateway(self, config, start=True, **kw):
        gw = Gateway(self, config)
        self._gateways.append(gw)
        if start:
            gw.start(**kw)
        return gw

    # -- common assertions
    def assertGwctlOk(self, gw, *args):
        rc, out, err = gw.gwctl(*args)
        self.assertEqual(rc, 0, f"gwctl {' '.join(args)}: rc={rc}, stderr={err.strip()!r}")
        return out

    def assertGwctlError(self, gw, *args, shm=None, rc_want=None):
        """gwctl fails: nonzero exit (rc_want if given), exactly one stderr line
        starting with `gwctl:`, and (with a running gateway) the table, the
        gray rules and the event ring are unchanged."""
        before = events_before = None
        if gw is not None:
            before = table_snapshot(gw.status(), rules=True)
            events_before = len(gw.events())
            rc, out, err = gw.gwctl(*args)
        else:
            rc, out, err = run_gwctl(*args, shm=shm)
        cmd = "gwctl " + " ".join(args)
        self.assertNotEqual(rc, 0, f"{cmd}: expected failure, got rc=0 stdout={out!r}")
        if rc_want is not None:
            self.assertEqual(rc, rc_want, f"{cmd}: exit code (stderr {err!r})")
        lines = [l for l in err.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, f"{cmd}: expected one stderr line, got {err!r}")
        self.assertTrue(lines[0].startswith("gwctl:"), f"{cmd}: stderr line must start with 'gwctl:': {lines[0]!r}")
        if gw is not None:
            self.assertEqual(table_snapshot(gw.status(), rules=True), before, f"{cmd} changed the table")
            self.assertEqual(len(gw.events()), events_before, f"{cmd} emitted an event")
        return rc, lines[0]

    def assertGwctlErrors(self, gw, cases, rc_want=None):
        """Each of cases, (name, args), fails as assertGwctlError asks, and
        none commits: the state file stays byte for byte (every commit
        rewrites it with the next generation). The table, the gray rules and
        the event ring are compared once, after all of them: each comparison
        is two more gwctl runs, and gwctl takes 0.17 s to start under ASan.
        Returns {name: the stderr line}."""
        path = gw.config.get("state_file")

        def state():
            try:
                with open(path, "rb") as f:
                    return f.read()
            except (OSError, TypeError):
                return None

        before = table_snapshot(gw.status(), rules=True)
        events_before = len(gw.events())
        lines = {}
        for what, args in cases:
            with self.subTest(what):
                st = state()
                _, lines[what] = self.assertGwctlError(None, *args, shm=gw.shm, rc_want=rc_want)
                self.assertEqual(state(), st, f"gwctl {' '.join(args)} rewrote the state file")
        self.assertEqual(table_snapshot(gw.status(), rules=True), before, "a failed gwctl changed the table")
        self.assertEqual(len(gw.events()), events_before, "a failed gwctl emitted an event")
        return lines

    def assertHost(self, gw, path, **want):
        st = gw.status()
        h = find_host(st, path)
        self.assertIsNotNone(h, f"host {path} not in status: {json.dumps(st.get('upstreams'))}")
        for k, v in want.items():
            self.assertEqual(h.get(k), v, f"{path}.{k}: {json.dumps(h)}")
        return h

    def assertNoHost(self, gw, path):
        st = gw.status()
        self.assertIsNone(find_host(st, path), f"host {path} still in status: {json.dumps(st.get('upstreams'))}")

    def assertEvent(self, gw, pattern, timeout=None):
        """Some event's text matches the regex pattern (waits, bounded)."""
        rx = re.compile(pattern)
        seen = []

        def check():
            seen[:] = gw.event_texts()
            return any(rx.search(t) for t in seen)
        try:
            wait_until(check, timeout or T(5), interval=0.05, msg=f"event /{pattern}/")
        except AssertionError as e:
            raise AssertionError(f"{e}; events: {seen}")

    def assertNames(self, port, n, allowed, must_include=()):
        """n sequential connections reach only `allowed` backends (and each of must_include)."""
        got = names(port, n)
        bad = [x for x in got if x not in allowed]
        self.assertFalse(bad, f"connections reached {bad}; allowed {sorted(allowed)}; sequence {got}")
        for m in must_include:
            self.assertIn(m, got, f"no connection reached {m}: {got}")
        return got

    def assertConnectionClosed(self, sock, within):
        """The peer closes sock (EOF or reset) within `within` seconds; returns elapsed time."""
        t0 = time.monotonic()
        sock.settimeout(within)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
        except socket.timeout:
            self.fail(f"connection still open after {within:.1f}s")
        except ConnectionResetError:
            pass
        return time.monotonic() - t0

    def assertRoundTrip(self, sock, payload=b"ping\n"):
        sock.sendall(payload)
        got = recv_exact(sock, len(payload))
        self.assertEqual(got, payload)

    def assertConfigErrors(self, config, expected_paths, raw=None):
        """gwd -t -c on config (dict, or raw text) exits 1 and prints an error
        line `FILE: PATH: message` for each expected path (a regex fragment allowed
        via re.compile objects)."""
        path = os.path.join(self.tmp, f"bad-{next(_shm_counter)}.json")
        if raw is not None:
            with open(path, "w") as f:
                f.write(raw)
        else:
            write_json(path, config)
        r = run_gwd_test(path)
        self.assertEqual(r.returncode, 1, f"gwd -t -c {path}: rc={r.returncode}, stdout={r.stdout!r}, stderr={r.stderr!r}")
        self.assertNotRegex(r.stdout, r"(?m)^ok$", "printed ok for a bad config")
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        for p in expected_paths:
            frag = p.pattern if isinstance(p, re.Pattern) else re.escape(p)
            rx = re.compile("^" + re.escape(path) + ": " + frag + ": .+")
            self.assertTrue(any(rx.match(l) for l in lines),
                            f"no error line '{path}: {p}: ...' in stderr:\n{r.stderr}")
        self.assertGreaterEqual(len(lines), len(expected_paths), r.stderr)
        return lines


def run_gwd_test(conf_path):
    try:
        return subprocess.run([GWD, "-t", "-c", conf_path], capture_output=True, text=True,
                              timeout=T(10), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"gwd -t -c {conf_path} did not finish within {T(10)}s")


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def main():
    unittest.main(verbosity=2)


def stop_old_master(test, gw, old):
    """SIGSTOPs the old master of a binary upgrade and waits until it is stopped.
    A new master can be ready and send its hand-over signal within ~15 ms of
    its start, before the test's poll has seen "started" and stopped the old
    one: the old master has then handed over already, and the scenario the
    test is about cannot happen. The test is skipped then, saying so."""
    os.kill(old, signal.SIGSTOP)
    wait_until(lambda: proc_state(old) in ("T", "t", "Z", None), T(5), msg="the old master stopped")
    if f"master[{old}]: binary upgrade: the new master (pid" in gw.log_text():
        if pid_alive(old):
            os.kill(old, signal.SIGCONT)
        test.skipTest("the old master took the hand-over before the test could stop it")
