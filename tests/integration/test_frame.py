#!/usr/bin/python3
"""The device-protocol ("frame") listener through the real gwd.

Frames: a 6-byte big-endian header `u8 type, u8 version, u16 time, u16
body_len`, then a JSON body whose "devid" (or a configured JSON pointer) is
the routing key. Backends are `gw-backend --mode device` (answers a heartbeat,
type 2, with {"devid":..,"backend":NAME}; echoes every other frame) or the
harness's Python echo backend.

Covered: byte-exact replay of the first frame and what follows (in one
segment, dripped byte by byte, larger than a relay buffer); devid stickiness
and spread (and the mapping gw-hashpick gives); minimal movement when a host
is added; on_host_remove keep/close for removed and downed hosts; per-frame
routing (mode "frame") on one connection, strict stream parsing, order per
host, frames_routed; every reject reason with its counter and no backend
connection; JSON pointer keys; a dead owner's frames replayed to the next
host; hash_key "ip"; a custom header layout; big frames and half-close in
mode "frame"; many concurrent devices; the per-device link limit (eviction of
a quiet link, closing the device when none is quiet); host replies delimited
by their length field only; a host stalled inside a frame to the device cut
off after frame_timeout_ms without progress; a frame waiting on a removed
host's link sent to the new owner at once; a frame sent again after its link
broke counted once in the device's log line; a frame whose fresh link broke
under it sent again on a new link to its only host; a host that takes
nothing of a frame for send_timeout_ms failing its link (the whole-frame
buffer freed); a device streaming a backlog
does not starve another device of the same worker; rate-limited reject logging; the per-frame read
deadline and the whole-frame buffer cap; maglev, round_robin and least_conn
on frame listeners; gwload against gw.
"""

import collections
import concurrent.futures
import datetime
import json
import os
import re
import resource
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
import netns  # noqa: E402
from gwtest import GwTestCase, T, host  # noqa: E402

HDR = struct.Struct(">BBHH")
HEADER = HDR.size
LOGIN, HEARTBEAT, DATA = 1, 2, 3


# ----------------------------------------------------------------------------
# frames

def body_bytes(body):
    if isinstance(body, (dict, list)):
        return json.dumps(body, separators=(",", ":")).encode()
    if isinstance(body, str):
        return body.encode()
    return bytes(body)


def frame(body, ftype=HEARTBEAT, ver=1, t=0x1234, length=None):
    """One frame; `length` overrides the header's body_len (for lies)."""
    b = body_bytes(body)
    return HDR.pack(ftype, ver, t, len(b) if length is None else length) + b


def hb(devid, t=0x1234):
    return frame({"devid": devid}, HEARTBEAT, 1, t)


def read_frame(sock):
    """Reads exactly one whole frame: (type, version, time, body bytes)."""
    hdr = gwtest.recv_exact(sock, HEADER)
    ftype, ver, t, n = HDR.unpack(hdr)
    return ftype, ver, t, gwtest.recv_exact(sock, n)


def read_heartbeat_reply(sock, t=None):
    """Reads one heartbeat reply strictly; returns (devid, backend, time)."""
    ftype, ver, rt, body = read_frame(sock)
    if ftype != HEARTBEAT or ver != 1:
        raise AssertionError(f"expected a heartbeat reply (type 2, version 1), got type {ftype} version {ver} "
                             f"body {body[:100]!r}")
    if t is not None and rt != t:
        raise AssertionError(f"heartbeat reply carries time {rt:#x}, the heartbeat had {t:#x}")
    try:
        j = json.loads(body)
    except ValueError as e:
        raise AssertionError(f"heartbeat reply body is not JSON ({e}): {body[:200]!r}")
    return j.get("devid"), j.get("backend"), rt


def heartbeat(sock, devid, t=0x1234):
    """Sends a heartbeat for devid on sock and returns the backend that answered."""
    sock.sendall(hb(devid, t))
    got, backend, _ = read_heartbeat_reply(sock, t)
    if got != devid:
        raise AssertionError(f"heartbeat for {devid!r} answered for devid {got!r} (by {backend})")
    return backend


def owner(port, devid, body=None):
    """A fresh connection's first frame (a heartbeat for devid): the backend that answers it."""
    with gwtest.connect(port) as s:
        if body is None:
            return heartbeat(s, devid)
        s.sendall(frame(body, HEARTBEAT, 1, 0x4242))
        return read_heartbeat_reply(s, 0x4242)[1]


def owners(port, devids, threads=8):
    """devid -> backend name, one fresh connection per devid (a few in parallel)."""
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        return dict(zip(devids, ex.map(lambda d: owner(port, d), devids)))


def closed_within(sock, within):
    """Seconds until the peer closes sock (EOF or reset), or None if still open after `within`."""
    t0 = time.monotonic()
    deadline = t0 + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return None
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - t0
        if not data:
            return time.monotonic() - t0


def bytes_until_eof(sock, within):
    """(bytes received, seconds) until the peer closes sock; seconds is None if
    it is still open after `within`."""
    t0 = time.monotonic()
    deadline = t0 + within
    got = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(got), None
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return bytes(got), None
        except (ConnectionResetError, BrokenPipeError):
            return bytes(got), time.monotonic() - t0
        if not data:
            return bytes(got), time.monotonic() - t0
        got += data


def no_more_bytes(sock, wait=0.3):
    """True if nothing arrives on sock within `wait` seconds (and it is not closed)."""
    sock.settimeout(wait)
    try:
        data = sock.recv(65536)
    except socket.timeout:
        return True
    raise AssertionError(f"unexpected bytes after the last expected frame: {data[:100]!r}")


def hashpick(hosts, keys, method="chash"):
    """key -> host id as gw-hashpick computes it for `method`."""
    exe = os.path.join(gwtest.BUILD_DIR, "gw-hashpick")
    args = [exe, "--method", method] + [
        a for h in hosts for a in ("--host", f"{h['id']}={h['address']}:{h['weight']}")]
    out = subprocess.run(args, input="\n".join(keys) + "\n", capture_output=True, encoding="utf-8",
                         timeout=T(10), check=True).stdout
    return dict(line.split("\t") for line in out.splitlines())


# ----------------------------------------------------------------------------
# config and backends

def frame_listener(name, upstream_name="app", port=None, frame_opts=None, **opts):
    l = {"name": name, "listen": f"{gwtest.LOOPBACK}:{port or gwtest.free_port()}", "protocol": "frame",
         "upstream": upstream_name}
    l.update(opts)
    if frame_opts is not None:
        l["frame"] = frame_opts
    return l


def dev_pool(pid, hosts, priority=0):
    """A pool without "method": a frame listener's upstream defaults it to chash."""
    return {"id": pid, "priority": priority, "hosts": list(hosts)}


def port_of(listener):
    return int(listener["listen"].rsplit(":", 1)[1])


class DeviceBackend:
    """gw-backend --mode device (or echo) with its --stats server."""

    def __init__(self, tmp, name, mode="device"):
        self.name = name
        self.mode = mode
        self.port = gwtest.free_port()
        self.stats_port = gwtest.free_port()
        self.address = f"{gwtest.LOOPBACK}:{self.port}"
        self.log_path = os.path.join(tmp, f"backend-{name}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [gwtest.GW_BACKEND, "--listen", self.address, "--name", name, "--mode", mode,
                 "--stats", f"{gwtest.LOOPBACK}:{self.stats_port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=gwtest._child_preexec)
        gwtest.remember_pids([self.proc.pid], self.proc.pid)
        gwtest.wait_until(lambda: (gwtest.port_listening(self.port) and gwtest.port_listening(self.stats_port))
                          or self.proc.poll() is not None, T(5), msg=f"gw-backend {name} on {self.address}")
        if self.proc.poll() is not None:
            with open(self.log_path, "rb") as f:
                raise AssertionError(f"gw-backend {name} exited with {self.proc.returncode}: {f.read()[-500:]!r}")

    def __repr__(self):
        return f"DeviceBackend({self.name!r}, {self.mode}, {self.address}, stats {self.stats_port})"

    def _get(self, path):
        with gwtest.connect(self.stats_port) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            raw = gwtest.recv_all(s)
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise AssertionError(f"gw-backend {self.name} stats {path}: {raw[:200]!r}")
        return json.loads(body)

    def stats(self):
        """{"name", "connections" (open now), "frames" (received in total), "devids"}."""
        return self._get("/devids")

    def reset(self):
        return self._get("/reset")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(T(5))
        except subprocess.TimeoutExpired:
            pass


class PushBackend:
    """A Python device backend: for each whole frame it receives (as a
    (type, version, time, body) tuple), it sends the frames `answer` returns."""

    def __init__(self, name, answer):
        self.name = name
        self.answer = answer
        self.frames = 0
        self._stop = False
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((gwtest.LOOPBACK, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.address = f"{gwtest.LOOPBACK}:{self.port}"
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def __repr__(self):
        return f"PushBackend({self.name!r}, {self.address}, frames={self.frames})"

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(T(30))
        try:
            with c:
                while True:
                    f = read_frame(c)
                    self.frames += 1
                    c.sendall(b"".join(self.answer(f)))
        except (OSError, EOFError, ValueError):
            pass

    def stop(self):
        self._stop = True
        self.sock.close()
        self.thread.join(T(2))


class ScriptBackend:
    """A Python device backend that calls `behaviour(conn, frame)` for each
    whole frame it receives, in the connection's own thread (so it may sleep
    between sends, or stop sending)."""

    def __init__(self, name, behaviour):
        self.name = name
        self.behaviour = behaviour
        self._stop = False
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((gwtest.LOOPBACK, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.address = f"{gwtest.LOOPBACK}:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(T(30))
        try:
            with c:
                while True:
                    self.behaviour(c, read_frame(c))
        except (OSError, EOFError, ValueError):
            pass

    def stop(self):
        self._stop = True
        self.sock.close()
        self.thread.join(T(2))


class SinkBackend:
    """A host that reads whatever it is sent as fast as it can (no framing, no
    answer) and counts the bytes."""

    def __init__(self, name):
        self.name = name
        self.received = 0
        self._stop = False
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((gwtest.LOOPBACK, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.address = f"{gwtest.LOOPBACK}:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            with c:
                while True:
                    n = len(c.recv(1 << 20))
                    if n == 0:
                        return
                    self.received += n
        except OSError:
            pass

    def stop(self):
        self._stop = True
        self.sock.close()
        self.thread.join(T(2))


# Frames with a 4-byte length (type, version, time, u32 body_len), for frames
# of megabytes: more than the socket buffers of a link can hold, so the first
# frame on a fresh link is still being written when the host acts.
BIG_HDR = struct.Struct(">BBHI")
BIG_OPTS = {"header_size": 8, "length_offset": 4, "length_size": 4, "max_body": 8 << 20, "mode": "frame",
            "max_frame_buffers": 1}


def big_frame(body, ftype=DATA, t=0):
    b = body_bytes(body)
    return BIG_HDR.pack(ftype, 1, t, len(b)) + b


def read_big_frame(sock):
    ftype, ver, t, n = BIG_HDR.unpack(gwtest.recv_exact(sock, BIG_HDR.size))
    return ftype, ver, t, gwtest.recv_exact(sock, n)


class BigFrameHost:
    """A host for BIG_HDR frames. Its links behave as `plan` says, in the
    order they are accepted (the last entry for all later ones): "answer"
    reads each whole frame and answers it with a small one, {"devid", "len",
    "link"}; "reset" reads 1000 bytes of the first frame and resets the link;
    "eof" reads 1000 bytes, then closes its side (FIN) and reads no more;
    "stall" reads nothing and keeps the link open. Its socket buffer is small,
    so a link that is not read fills at once."""

    def __init__(self, plan):
        self.plan = list(plan)
        self.links = 0
        self._stop = False
        self._held = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by the links
        self.sock.bind((gwtest.LOOPBACK, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.address = f"{gwtest.LOOPBACK}:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            i = self.links
            self.links += 1
            how = self.plan[min(i, len(self.plan) - 1)]
            if how == "stall":
                self._held.append(c)
                continue
            threading.Thread(target=self._serve, args=(c, i, how), daemon=True).start()

    def _serve(self, c, i, how):
        c.settimeout(T(30))
        if how == "eof":
            try:
                gwtest.recv_exact(c, 1000)
                c.shutdown(socket.SHUT_WR)
            except (OSError, EOFError):
                pass
            self._held.append(c)
            return
        try:
            with c:
                if how == "reset":
                    gwtest.recv_exact(c, 1000)
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                while True:
                    _, _, t, body = read_big_frame(c)
                    devid = json.loads(body)["devid"]
                    c.sendall(big_frame({"devid": devid, "len": len(body), "link": i}, HEARTBEAT, t))
        except (OSError, EOFError, ValueError):
            pass

    def stop(self):
        self._stop = True
        self.sock.close()
        self.thread.join(T(2))
        for c in self._held:
            c.close()


def worker_sum(st, key):
    return sum(w[key] for w in st["workers"])


def host_totals(st):
    """host id -> total connections gw opened to it (every pool of every upstream)."""
    return {h["id"]: h["total"] for u in st["upstreams"] for p in u["pools"] for h in p["hosts"]}


class FrameTest(GwTestCase):

    needs = ("gwd", "gwctl", "gw-backend")

    # -- helpers
    def device_backend(self, name, mode="device"):
        b = DeviceBackend(self.tmp, name, mode)
        self._backends.append(b)
        return b

    def device_backends(self, names):
        return [self.device_backend(n) for n in names]

    def frame_gateway(self, backends, listeners, workers=2, method=None, **upstream_opts):
        hosts = [host(b.name, b.address) for b in backends]
        p = dev_pool("primary", hosts)
        if method:
            p["method"] = method
        cfg = self.make_config([p], workers=workers, listeners=listeners, upstream_opts=upstream_opts)
        gw = self.gateway(cfg)
        return gw, hosts

    def wait_workers_current(self, gw):
        """Every worker has applied the table generation gwctl just published."""
        def current():
            st = gw.status()
            return all(w["generation"] == st["generation"] for w in st["workers"])
        gwtest.wait_until(current, T(5), interval=0.02, msg="every worker on the new table generation")

    def assert_idle(self, gw):
        """Once every client is gone: the workers' connection gauge and every
        host's active count are back to 0."""
        def idle():
            st = gw.status()
            active = {h["id"]: h["active"] for u in st["upstreams"] for p in u["pools"] for h in p["hosts"]}
            return worker_sum(st, "connections") == 0 and not any(active.values())
        try:
            gwtest.wait_until(idle, T(5), interval=0.05, msg="no connections left")
        except AssertionError:
            st = gw.status()
            self.fail("after every client closed, expected workers' connections 0 and hosts' active 0; got "
                      f"connections {[w['connections'] for w in st['workers']]}, hosts "
                      f"{[(h['id'], h['active']) for u in st['upstreams'] for p in u['pools'] for h in p['hosts']]}")

    def gwctl_ok(self, gw, *args):
        return self.assertGwctlOk(gw, *args)

    # ------------------------------------------------------------------------
    # 1. byte-exact replay in connection mode

    def test_connection_mode_replays_first_frame_and_rest_byte_exact(self):
        """The first frame and everything after it reach an echo backend and
        come back byte for byte: sent in one segment, dripped one byte per
        send, and as a first frame larger than a relay buffer."""
        echo = self.backend("echo", mode="echo")
        lst = frame_listener("dev", frame_opts={"first_frame_timeout_ms": 5000})
        gw, _ = self.frame_gateway([echo], [lst], workers=1)
        port = port_of(lst)

        first = frame({"devid": "dev-exact", "fw": "1.2.3"}, LOGIN, 1, 0xBEEF)
        extra = bytes(range(256)) * 3 + b"\x00\xff not-a-frame \x02\x01"
        with gwtest.connect(port) as s:
            s.sendall(first + extra)              # one segment: first frame plus extra bytes
            got = gwtest.recv_exact(s, len(first) + len(extra))
            self.assertEqual(got, first + extra, "one-segment send: echo differs from what was sent")
            s.sendall(b"and more after the first round trip")
            self.assertEqual(gwtest.recv_exact(s, 35), b"and more after the first round trip")
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(gwtest.recv_all(s), b"", "half-close: nothing more, then EOF")

        # dripped: every byte of the first frame its own send (TCP_NODELAY), under the timeout
        first = frame({"devid": "dev-drip"}, LOGIN, 1, 7)
        tail_bytes = b"tail bytes after the frame"
        with gwtest.connect(port) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t0 = time.monotonic()
            for i in range(len(first)):
                s.sendall(first[i:i + 1])
                time.sleep(0.01)
            self.assertLess(time.monotonic() - t0, 4.0, "the drip itself must stay under first_frame_timeout_ms")
            s.sendall(tail_bytes)
            got = gwtest.recv_exact(s, len(first) + len(tail_bytes))
            self.assertEqual(got, first + tail_bytes, "dripped first frame: echo differs")

        # a first frame larger than a 16 KiB relay buffer (max_body 65536 by default)
        big = frame({"devid": "dev-big", "blob": "x" * 60000}, DATA, 1, 99)
        more = os.urandom(50000)
        with gwtest.connect(port) as s:
            s.sendall(big + more)
            got = gwtest.recv_exact(s, len(big) + len(more))
            self.assertTrue(got == big + more, f"{len(big)}-byte first frame + {len(more)} bytes: echo differs")
        self.assertEqual(echo.count, 3, f"one backend connection per client connection: {echo!r}")
        self.assertEqual(sum(gw.status()["frame_rejects"].values()), 0, "no rejects expected")

    # ------------------------------------------------------------------------
    # 2. stickiness and spread

    def test_same_devid_same_backend_and_devids_spread(self):
        """50 devids, 3 reconnects each, 3 backends (pools default to chash):
        a devid always lands on the same backend, the devids use every
        backend, and the mapping is the one gw-hashpick gives."""
        backends = self.device_backends(["a", "b", "c"])
        lst = frame_listener("dev")
        gw, hosts = self.frame_gateway(backends, [lst])
        self.assertEqual(gw.status()["upstreams"][0]["pools"][0]["method"], "chash",
                         "a pool without \"method\" under a frame listener must default to chash")
        devids = [f"dev-{i:04d}" for i in range(50)]
        seen = collections.defaultdict(set)
        for _ in range(3):
            for d, b in owners(port_of(lst), devids).items():
                seen[d].add(b)
        moving = {d: sorted(b) for d, b in seen.items() if len(b) != 1}
        self.assertEqual(moving, {}, "each devid must always land on the same backend")
        mapping = {d: next(iter(b)) for d, b in seen.items()}
        used = collections.Counter(mapping.values())
        self.assertEqual(set(used), {"a", "b", "c"}, f"50 devids should spread over all 3 backends: {dict(used)}")
        self.assertEqual(mapping, hashpick(hosts, devids), "gw's mapping differs from gw-hashpick --method chash")
        # each backend saw exactly its devids
        for b in backends:
            mine = sorted(d for d, n in mapping.items() if n == b.name)
            self.assertEqual(b.stats()["devids"], mine, f"devids recorded by backend {b.name}")
        # keys are hashed as their unescaped UTF-8 bytes, up to max_key (128) bytes
        special = ['dev-"quoted"', "dév-ünï-设备", "back\\slash", "a/b~c", "k" * 128, " spaced key "]
        want = hashpick(hosts, special)
        port = port_of(lst)
        for d in special:
            self.assertEqual(owner(port, d), want[d], f"devid {d!r} (\\u-escaped in JSON)")
            raw = json.dumps({"devid": d}, ensure_ascii=False).encode()
            self.assertEqual(owner(port, None, raw), want[d], f"devid {d!r} (raw UTF-8 in JSON)")
        self.assertEqual(worker_sum(gw.status(), "frames_routed"), 0,
                         "connection mode does not count frames_routed")

    # ------------------------------------------------------------------------
    # 3. adding a host moves ~1/(n+1) of the devids, all to the new host

    def test_add_host_moves_only_its_share_to_the_new_host(self):
        """Reconnecting devices: about 1/(n+1) of 300 devids move, all to the new
        host. Established connections (on_host_remove "keep", the default) of
        devids that move stay on their host: their heartbeats across `gwctl add
        host` keep reaching the same backend over the same connection."""
        backends = self.device_backends(["a", "b", "c", "d"])
        lst = frame_listener("dev")
        gw, hosts = self.frame_gateway(backends, [lst])
        port = port_of(lst)
        devids = [f"sensor-{i}" for i in range(300)]
        before = owners(port, devids)
        self.assertEqual(set(before.values()), {"a", "b", "c", "d"}, "300 devids should use all 4 backends")

        e = self.device_backend("e")
        movers = [d for d, h in hashpick(hosts + [host("e", e.address)], devids).items() if h == "e"][:8]
        self.assertEqual(len(movers), 8)
        held = {}
        for d in movers:
            s = gwtest.connect(port)
            self.addCleanup(s.close)
            self.assertEqual(heartbeat(s, d, 1), before[d])
            held[d] = s
        self.gwctl_ok(gw, "add", "host", "app/primary", "e", e.address)
        self.wait_workers_current(gw)
        after = owners(port, devids)
        for t in (2, 3):
            for d, s in held.items():
                self.assertEqual(heartbeat(s, d, t), before[d], f"{d}: an established connection must stay on "
                                                                f"{before[d]} after host e was added (keep)")
        self.assertEqual({d: after[d] for d in movers}, {d: "e" for d in movers},
                         "while the old connections stay, new connections of the same devids go to e")
        for s in held.values():
            s.close()

        moved = {d: (before[d], after[d]) for d in devids if before[d] != after[d]}
        wrong = {d: m for d, m in moved.items() if m[1] != "e"}
        self.assertEqual(wrong, {}, "a devid may only move to the new host e (old -> new)")
        ideal = len(devids) / 5
        self.assertTrue(0.5 * ideal <= len(moved) <= 1.6 * ideal,
                        f"{len(moved)} of {len(devids)} devids moved; expected about 1/(n+1) = {ideal:.0f} "
                        f"(between {0.5 * ideal:.0f} and {1.6 * ideal:.0f})")
        hosts.append(host("e", e.address))
        self.assertEqual(after, hashpick(hosts, devids), "after the add: mapping differs from gw-hashpick")

    # ------------------------------------------------------------------------
    # 4. on_host_remove keep / close

    def test_on_host_remove_keep_and_close(self):
        """Listener `keep` and listener `close` on one upstream (a..d). A host
        removed, then another downed: `keep` connections to them still work;
        `close` connections to them are closed within ~2 s and counted in
        host_closed, the others are untouched; a reconnect lands on the new
        owner. A per-frame (mode "frame") device with on_host_remove close
        loses only its link: its next frame for that devid goes to the new owner."""
        backends = self.device_backends(["a", "b", "c", "d"])
        keep = frame_listener("keep", on_host_remove="keep")
        close = frame_listener("close", on_host_remove="close")
        muxl = frame_listener("mux", on_host_remove="close", frame_opts={"mode": "frame"})
        gw, hosts = self.frame_gateway(backends, [keep, close, muxl])
        kp, cp, mp = port_of(keep), port_of(close), port_of(muxl)

        cands = [f"unit-{i}" for i in range(200)]
        pick = hashpick(hosts, cands)
        by_owner = {}
        for d in cands:
            by_owner.setdefault(pick[d], d)
        self.assertEqual(sorted(by_owner), ["a", "b", "c", "d"])
        dev_a, dev_b, dev_c = by_owner["a"], by_owner["b"], by_owner["c"]

        def open_dev(port, devid, want):
            s = gwtest.connect(port)
            self.addCleanup(s.close)
            got = heartbeat(s, devid)
            self.assertEqual(got, want, f"{devid} on port {port}: first heartbeat")
            return s

        k_a, k_b = open_dev(kp, dev_a, "a"), open_dev(kp, dev_b, "b")
        c_a, c_b, c_c = open_dev(cp, dev_a, "a"), open_dev(cp, dev_b, "b"), open_dev(cp, dev_c, "c")
        m = gwtest.connect(mp)
        self.addCleanup(m.close)
        for d, want in ((dev_a, "a"), (dev_b, "b"), (dev_c, "c")):
            self.assertEqual(heartbeat(m, d), want, f"per-frame device: {d}")
        self.assertEqual(worker_sum(gw.status(), "host_closed"), 0)

        # -- remove host a
        self.gwctl_ok(gw, "remove", "host", "app/primary", "a")
        # Closed when the workers see the new table (event-driven, no timer):
        # the bound only allows for a loaded machine.
        dt = closed_within(c_a, T(10))
        self.assertIsNotNone(dt, "on_host_remove close: the connection to removed host a is still open after 10 s")
        self.wait_workers_current(gw)
        self.assertEqual(heartbeat(k_a, dev_a, 1), "a", "on_host_remove keep: connection to removed host a "
                                                        "must stay usable and still reach a")
        self.assertEqual(heartbeat(c_b, dev_b, 2), "b", "close listener: connection to b must be untouched")
        self.assertEqual(heartbeat(c_c, dev_c, 3), "c", "close listener: connection to c must be untouched")
        want_a = hashpick(hosts[1:], [dev_a])[dev_a]
        self.assertNotEqual(want_a, "a")
        self.assertEqual(owner(cp, dev_a), want_a, f"reconnect of {dev_a} after removing a: new chash owner")
        self.assertEqual(owner(kp, dev_a), want_a, f"new connection of {dev_a} on the keep listener")
        # per-frame device: still open; the next frame for dev_a goes to the new owner
        self.assertEqual(heartbeat(m, dev_a, 4), want_a, "per-frame device: dev_a after removing a")
        self.assertEqual(heartbeat(m, dev_c, 5), "c", "per-frame device: dev_c")
        gwtest.wait_until(lambda: worker_sum(gw.status(), "host_closed") == 2, T(3), interval=0.05,
                          msg="host_closed == 2 (1 connection + 1 per-frame link to a)")

        # -- down host b
        self.gwctl_ok(gw, "down", "host", "app/primary", "b")
        # Closed when the workers see the new table (event-driven, no timer):
        # the bound only allows for a loaded machine.
        dt = closed_within(c_b, T(10))
        self.assertIsNotNone(dt, "on_host_remove close: the connection to downed host b is still open after 10 s")
        self.wait_workers_current(gw)
        self.assertEqual(heartbeat(k_b, dev_b, 6), "b", "on_host_remove keep: connection to downed host b "
                                                        "must stay usable and still reach b")
        self.assertEqual(heartbeat(k_a, dev_a, 7), "a", "keep: connection to removed a still usable")
        self.assertEqual(heartbeat(c_c, dev_c, 8), "c", "close listener: connection to c must be untouched")
        new_b = owner(cp, dev_b)
        self.assertIn(new_b, ("c", "d"), f"reconnect of {dev_b} with a removed and b down")
        self.assertEqual(new_b, owner(kp, dev_b), "both listeners agree on the new owner")
        self.assertEqual(new_b, hashpick(hosts[2:], [dev_b])[dev_b],
                         "with b down, dev_b should go where chash over the usable hosts (c, d) puts it")
        self.assertEqual(heartbeat(m, dev_b, 9), new_b, "per-frame device: dev_b after downing b")
        gwtest.wait_until(lambda: worker_sum(gw.status(), "host_closed") == 4, T(3), interval=0.05,
                          msg="host_closed == 4 (2 connections + 2 per-frame links)")
        for s in (k_a, k_b, c_c, m):
            no_more_bytes(s, 0.05)

    def test_first_frame_after_a_gwctl_change_is_routed_by_the_new_table(self):
        """A device connects, then gwctl moves its upstream to another host
        before the device's first frame: that frame is routed by the new table,
        not by the one the worker had when it accepted. The worker is idle in
        between (no other event): under io_uring the frame's receive completion
        routed with the table of the accept (the table was read only after the
        batch of completions), under epoll the readiness dispatch reads it first."""
        a = gwtest.Backend("a", mode="name")
        b = gwtest.Backend("b", mode="name")
        self._backends += [a, b]
        p = dev_pool("primary", [host("a", a), host("b", b)])
        p["method"] = "round_robin"
        lst = frame_listener("dev", frame_opts={"first_frame_timeout_ms": 10000})
        gw = self.gateway(self.make_config([p], workers=1, listeners=[lst]))
        port = port_of(lst)
        self.gwctl_ok(gw, "down", "host", "app/primary", "b")
        self.wait_workers_current(gw)
        up, down = "a", "b"
        for i in range(4):
            up, down = down, up
            with gwtest.connect(port, timeout=T(5)) as s:
                time.sleep(0.2)  # accepted (and the table read) by now
                self.gwctl_ok(gw, "up", "host", "app/primary", up)
                self.gwctl_ok(gw, "down", "host", "app/primary", down)
                s.sendall(hb(f"dev-{i}"))
                got = s.recv(64).split(b"\n")[0].decode()
            self.assertEqual(got, up, f"round {i}: {down} was downed before the first frame, {up} brought up")

    # ------------------------------------------------------------------------
    # 5. per-frame routing

    def test_frame_mode_routes_each_frame_by_its_devid(self):
        """One connection, 100 devids pipelined: each heartbeat is answered by
        the backend that owns its devid (as a connection-mode listener on the
        same upstream says), replies arrive whole and in order per backend,
        frames_routed grows by 100; dripped frames route the same; other
        frames come back byte for byte; a half-close ends it cleanly."""
        backends = self.device_backends(["a", "b", "c"])
        conn = frame_listener("conn")
        mux = frame_listener("mux", frame_opts={"mode": "frame"})
        gw, hosts = self.frame_gateway(backends, [conn, mux])
        devids = [f"meter-{i:03d}" for i in range(100)]
        expected = owners(port_of(conn), devids)
        self.assertEqual(set(expected.values()), {"a", "b", "c"})
        routed0 = worker_sum(gw.status(), "frames_routed")

        with gwtest.connect(port_of(mux), timeout=T(10)) as s:
            s.sendall(b"".join(hb(d, i) for i, d in enumerate(devids)))
            replies = [read_heartbeat_reply(s) for _ in devids]
            no_more_bytes(s)
            got = {}
            per_backend = collections.defaultdict(list)
            for devid, backend, t in replies:
                self.assertLess(t, len(devids), f"reply with an unknown time {t}")
                self.assertEqual(devid, devids[t], f"reply for time {t} names devid {devid!r}")
                self.assertNotIn(devid, got, f"two replies for {devid}")
                got[devid] = backend
                per_backend[backend].append(t)
            wrong = {d: (got[d], expected[d]) for d in devids if got.get(d) != expected[d]}
            self.assertEqual(wrong, {}, "per-frame routing: devid -> (answered by, owner on a connection listener)")
            for b, ts in per_backend.items():
                self.assertEqual(ts, sorted(ts), f"replies from {b} out of order")
            gwtest.wait_until(lambda: worker_sum(gw.status(), "frames_routed") - routed0 == 100, T(3),
                              msg="frames_routed grown by exactly 100")

            # dripped, one byte per send, several devids in a row
            drip = devids[:6]
            data = b"".join(hb(d, 1000 + i) for i, d in enumerate(drip))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(data)):
                s.sendall(data[i:i + 1])
                time.sleep(0.002)
            s.settimeout(T(10))
            seen = {}
            for _ in drip:
                devid, backend, t = read_heartbeat_reply(s)
                self.assertEqual(devid, drip[t - 1000])
                seen[devid] = backend
            self.assertEqual(seen, {d: expected[d] for d in drip}, "dripped frames: devid -> backend")

            # non-heartbeat frames are echoed whole, each by its owner
            datas = [frame({"devid": d, "payload": "p" * (i * 37)}, DATA, 1, 2000 + i) for i, d in enumerate(devids[:10])]
            s.sendall(b"".join(datas))
            echoed = []
            for _ in datas:
                ftype, ver, t, body = read_frame(s)
                echoed.append(HDR.pack(ftype, ver, t, len(body)) + body)
            self.assertEqual(sorted(echoed), sorted(datas), "data frames must come back byte for byte")
            no_more_bytes(s)
            gwtest.wait_until(lambda: worker_sum(gw.status(), "frames_routed") - routed0 == 116, T(3),
                              msg="frames_routed grown by exactly 116")
            per_host = {b.name: len(b.stats()["devids"]) for b in backends}
            self.assertEqual(per_host, dict(collections.Counter(expected.values())),
                             "each backend saw exactly the devids it owns")
            s.shutdown(socket.SHUT_WR)
            dt = closed_within(s, T(5))
            self.assertIsNotNone(dt, "after the device's half-close, gw should close the connection")
        self.assertEqual(sum(gw.status()["frame_rejects"].values()), 0)
        self.assert_idle(gw)

    def test_byte_counters_of_both_frame_modes(self):
        """Data frames through a connection-mode and a frame-mode listener,
        echoed by their owners: each listener's bytes are what its device sent
        and received, the hosts' the same in sum (gwctl status --json)."""
        backends = self.device_backends(["a", "b", "c"])
        conn = frame_listener("conn")
        mux = frame_listener("mux", frame_opts={"mode": "frame"})
        gw, _ = self.frame_gateway(backends, [conn, mux])
        sent, got = {}, {}
        for l in (conn, mux):
            datas = [frame({"devid": f"m-{i:02d}", "payload": "p" * (i * 53)}, DATA, 1, 3000 + i)
                     for i in range(20 if l is mux else 1)]
            with gwtest.connect(port_of(l), timeout=T(10)) as s:
                n_in = 0
                for d in datas:  # one at a time: a connection-mode device keeps its first frame's host
                    s.sendall(d)
                    ftype, ver, t, body = read_frame(s)
                    self.assertEqual(HDR.pack(ftype, ver, t, len(body)) + body, d)
                    n_in += HEADER + len(body)
                s.shutdown(socket.SHUT_WR)
                self.assertIsNotNone(closed_within(s, T(5)))
            sent[l["name"]], got[l["name"]] = sum(map(len, datas)), n_in

        def counts():
            st = gw.status()
            ls = {x["name"]: (x["received_bytes"], x["sent_bytes"]) for x in st["listeners"]}
            hs = [h for u in st["upstreams"] for p in u["pools"] for h in p["hosts"]]
            return (ls["conn"], ls["mux"], sum(h["sent_bytes"] for h in hs), sum(h["received_bytes"] for h in hs))

        want = ((sent["conn"], got["conn"]), (sent["mux"], got["mux"]), sent["conn"] + sent["mux"],
                got["conn"] + got["mux"])
        gwtest.wait_until(lambda: counts() == want, T(10), msg=f"byte counters == {want}")

    def test_frame_mode_big_frames_stay_whole_and_half_close_drains(self):
        """Mode "frame": 30 frames of 20..49 KB (above the 16 KiB buffers) for
        devids on 3 hosts, pipelined and followed at once by the device's FIN:
        every frame comes back whole and byte for byte (frames from several
        hosts are never interleaved), then gw closes. The same for 30
        heartbeats + FIN, and in connection mode."""
        backends = self.device_backends(["a", "b", "c"])
        conn = frame_listener("conn")
        mux = frame_listener("mux", frame_opts={"mode": "frame"})
        gw, hosts = self.frame_gateway(backends, [conn, mux])
        devids = [f"cam-{i}" for i in range(30)]
        self.assertEqual(set(hashpick(hosts, devids).values()), {"a", "b", "c"})
        frames = [frame({"devid": d, "blob": chr(65 + i % 26) * (20000 + i * 1000)}, DATA, 1, i)
                  for i, d in enumerate(devids)]
        with gwtest.connect(port_of(mux), timeout=T(10)) as s:
            s.sendall(b"".join(frames))
            s.shutdown(socket.SHUT_WR)
            got = []
            for _ in frames:
                ftype, ver, t, body = read_frame(s)
                got.append(HDR.pack(ftype, ver, t, len(body)) + body)
                self.assertEqual(got[-1], frames[t] if t < len(frames) else None,
                                 f"frame with time {t} did not come back whole and unchanged")
            self.assertIsNotNone(closed_within(s, T(5)), "gw must close the device after its FIN, once all "
                                                         "answers are out")
        self.assertEqual(sorted(got), sorted(frames))
        with gwtest.connect(port_of(mux), timeout=T(10)) as s:
            s.sendall(b"".join(hb(d, i) for i, d in enumerate(devids)))
            s.shutdown(socket.SHUT_WR)
            answered = {read_heartbeat_reply(s)[0] for _ in devids}
            self.assertEqual(answered, set(devids), "heartbeats followed by FIN: every one answered")
            self.assertIsNotNone(closed_within(s, T(5)), "gw must close after the FIN once all answers are out")
        with gwtest.connect(port_of(conn), timeout=T(10)) as s:
            s.sendall(frames[0] + hb(devids[0], 77))
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(gwtest.recv_exact(s, len(frames[0])), frames[0])
            self.assertEqual(read_heartbeat_reply(s, 77)[0], devids[0])
            self.assertIsNotNone(closed_within(s, T(5)), "connection mode: EOF after the half-close")
        self.assertEqual(sum(gw.status()["frame_rejects"].values()), 0)
        self.assert_idle(gw)

    def test_frame_mode_link_limit_evicts_a_quiet_link_or_closes_the_device(self):
        """Mode "frame" with max_links 2 and link_idle_ms 1500, hosts a, b, c.
        (1) Links to a and b both used just now, then a frame for c: no link
        is quiet, so gw closes the device at once (within half of
        link_idle_ms), sends nothing more to it, and c never gets the frame.
        (2) A link to a quiet for 1.8 s and one to b used just now: a frame
        for c closes the link to a (the least recently used quiet one) and
        goes to c; b keeps its link; a frame for a right after finds no quiet
        link and closes the device, a never getting it.

        link_idle_ms is 1.5 s rather than a few hundred ms so that a slow
        machine (ASan, a loaded CI host) cannot turn a busy link quiet while
        the test checks status with gwctl between two frames, and so that
        "at once" has a bound with room on both sides."""
        backends = self.device_backends(["a", "b", "c"])
        link_idle = 1.5                                 # seconds
        log = os.path.join(self.tmp, "mux.log")
        mux = frame_listener("mux", frame_opts={"mode": "frame", "max_links": 2,
                                                "link_idle_ms": int(link_idle * 1000)},
                             access_log={"path": log, "format": "json"})
        gw, hosts = self.frame_gateway(backends, [mux], workers=1)
        a, b, c = backends
        pick = hashpick(hosts, [f"link-{i}" for i in range(200)])
        da, db, dc = (next(d for d in sorted(pick) if pick[d] == n) for n in ("a", "b", "c"))
        port = port_of(mux)

        def frames_seen():
            return {x.name: x.stats()["frames"] for x in backends}

        def open_links():
            return {x.name: x.stats()["connections"] for x in backends}

        # (1) no quiet link: the device connection is closed, nothing lost silently
        with gwtest.connect(port) as s:
            self.assertEqual(heartbeat(s, da, 1), "a")
            self.assertEqual(heartbeat(s, db, 2), "b")
            seen0 = frames_seen()
            t0 = time.monotonic()
            s.sendall(hb(dc, 3))
            data, dt = bytes_until_eof(s, T(3))
            self.assertIsNotNone(dt, "a frame for a 3rd host with max_links 2 and no quiet link: gw must close "
                                     "the device connection")
            self.assertEqual(data, b"", "nothing may reach the device after the frame it could not route")
            # A gw that waited for a's link to turn quiet would close about link_idle after a's
            # heartbeat, i.e. well after link_idle / 2 from here.
            self.assertLess(time.monotonic() - t0, link_idle / 2, "the device must be closed at once, not "
                                                                  "after link_idle_ms")
        time.sleep(0.2)
        self.assertEqual(frames_seen(), seen0, "no host may receive the frame for c (nor anything else)")
        gwtest.wait_until(lambda: open_links() == {"a": 0, "b": 0, "c": 0}, T(3), interval=0.05,
                          msg="the device's links to a and b closed with it")

        # (2) a link quiet for link_idle_ms makes room; a busy one never does
        totals0 = host_totals(gw.status())
        with gwtest.connect(port) as s:
            self.assertEqual(heartbeat(s, da, 10), "a")
            time.sleep(link_idle + 0.3)                # a's link is now quiet (> link_idle_ms)
            self.assertEqual(heartbeat(s, db, 11), "b")
            self.assertEqual(heartbeat(s, dc, 12), "c", "the frame for c must take the quiet link's place")
            gwtest.wait_until(lambda: open_links() == {"a": 0, "b": 1, "c": 1}, T(3), interval=0.05,
                              msg="a's link closed (evicted); b's and c's open")
            self.assertEqual(heartbeat(s, db, 13), "b", "b's link is kept and still used")
            self.assertEqual(heartbeat(s, dc, 14), "c")
            totals1 = host_totals(gw.status())
            self.assertEqual({k: totals1[k] - totals0[k] for k in totals0}, {"a": 1, "b": 1, "c": 1},
                             "one host connection each: b's and c's links were reused, not reopened")
            seen0 = frames_seen()
            s.sendall(hb(da, 15))                      # b and c both used within link_idle_ms
            data, dt = bytes_until_eof(s, T(3))
            self.assertIsNotNone(dt, "a frame for a with both links busy must close the device")
            self.assertEqual(data, b"")
        time.sleep(0.2)
        self.assertEqual(frames_seen(), seen0, "a must not receive the frame that closed the device")
        self.assertEqual(worker_sum(gw.status(), "frames_routed"), 2 + 5)
        self.assertEqual(sum(gw.status()["frame_rejects"].values()), 0)
        # the access log says why: gw closed them for the link limit (it said "closed", as for a device's own close)
        gwtest.wait_until(lambda: os.path.exists(log) and open(log).read().count("\n") == 2, T(5), interval=0.05,
                          msg="the devices' log lines")
        self.assertEqual([json.loads(l)["end"] for l in open(log).read().splitlines()], ["link_limit"] * 2)
        self.assert_idle(gw)

    def test_frame_mode_out_of_descriptors_waits_or_lets_a_quiet_link_go(self):
        """Mode "frame", one worker, hosts a, b, c; the worker's open-files
        limit is lowered until it has no descriptor left. (1) A frame for b,
        with the link to a quiet for link_idle_ms: the link to a is let go for
        b's. (2) A frame for c with b's link just used: nothing may be let go,
        so the frame waits for a descriptor, and goes to c once the limit is
        raised. (3) Out of descriptors again, a frame for a waits
        connect_timeout_ms and the device is closed as a local error (logged
        with the errno); no host is blamed in any step, and no host gets that
        frame. Before, the EMFILE was taken as that host's failure to connect:
        the frame went to another host (one the device already had a link
        to) or the device was closed as "no live host".

        link_idle_ms (3 s) is longer than connect_timeout_ms (2 s), and both
        links are used just before the frame of (3), so neither turns quiet
        while that frame waits (every retry looks for a quiet link again)."""
        backends = self.device_backends(["a", "b", "c"])
        link_idle = 3.0
        # The fillers below send no frame: first_frame_timeout_ms must not close them.
        mux = frame_listener("mux", frame_opts={"mode": "frame", "link_idle_ms": int(link_idle * 1000),
                                                "first_frame_timeout_ms": 60000})
        gw, hosts = self.frame_gateway(backends, [mux], workers=1, connect_timeout_ms=2000)
        (worker,) = gw.worker_pids()
        pick = hashpick(hosts, [f"fd-{i}" for i in range(200)])
        da, db, dc = (next(d for d in sorted(pick) if pick[d] == n) for n in ("a", "b", "c"))
        port = port_of(mux)
        soft, hard = resource.prlimit(worker, resource.RLIMIT_NOFILE)
        self.addCleanup(lambda: os.path.exists(f"/proc/{worker}") and
                        resource.prlimit(worker, resource.RLIMIT_NOFILE, (soft, hard)))

        def open_fds():
            return {int(fd) for fd in os.listdir(f"/proc/{worker}/fd")}

        def open_links():
            return {x.name: x.stats()["connections"] for x in backends}

        def frames_seen():
            return {x.name: x.stats()["frames"] for x in backends}

        def exhaust():
            """No descriptor left: the limit just above the highest one in use,
            and idle device connections (no frame, so no link) fill the free
            numbers below it. Those the worker cannot accept wait in its queue."""
            limit = max(open_fds()) + 1
            resource.prlimit(worker, resource.RLIMIT_NOFILE, (limit, hard))
            n = 0
            while not set(range(limit)) <= open_fds() and n < limit:
                fillers.append(gwtest.connect(port))
                self.addCleanup(fillers[-1].close)
                n += 1
                time.sleep(0.05)
            gwtest.wait_until(lambda: set(range(limit)) <= open_fds(), T(5), interval=0.05,
                              msg=f"every descriptor number below {limit} in use")

        fillers = []
        s = gwtest.connect(port)
        self.addCleanup(s.close)
        self.assertEqual(heartbeat(s, da, 1), "a")
        exhaust()

        # (1) a's link has been quiet for link_idle_ms: it makes room for b's
        time.sleep(link_idle + 0.3)
        self.assertEqual(heartbeat(s, db, 2), "b", "the frame for b must go to b, over a link that took the "
                                                    "quiet link's descriptor")
        gwtest.wait_until(lambda: open_links() == {"a": 0, "b": 1, "c": 0}, T(3), interval=0.05,
                          msg="a's link let go, b's open")

        # (2) b's link was just used: the frame for c waits for a descriptor
        self.assertEqual(heartbeat(s, db, 3), "b")
        seen0 = frames_seen()
        s.sendall(hb(dc, 4))
        time.sleep(0.5)
        self.assertTrue(no_more_bytes(s, 0.1), "the device must wait, open")
        self.assertEqual(frames_seen(), seen0, "no host may get the waiting frame yet")
        resource.prlimit(worker, resource.RLIMIT_NOFILE, (soft, hard))
        s.settimeout(T(5))
        got, backend, _ = read_heartbeat_reply(s, 4)
        self.assertEqual((got, backend), (dc, "c"), "once there is a descriptor the frame goes to c")

        # (3) no descriptor for connect_timeout_ms: the device is closed
        exhaust()
        self.assertEqual(heartbeat(s, db, 6), "b")      # both links busy (used just now)
        self.assertEqual(heartbeat(s, dc, 7), "c")
        seen0 = frames_seen()
        t0 = time.monotonic()
        s.sendall(hb(da, 5))
        data, dt = bytes_until_eof(s, T(10))
        self.assertIsNotNone(dt, "a frame that finds no descriptor within connect_timeout_ms must close the device")
        self.assertEqual(data, b"")
        self.assertGreater(time.monotonic() - t0, 1.5, "the frame must wait about connect_timeout_ms (2 s) first")
        gwtest.wait_until(lambda: "cannot connect upstream: Too many open files for connect_timeout_ms (a local "
                          "error: no host is blamed" in gw.log_text(), T(3), msg="the local error is logged")
        self.assertIn("Too many open files; pausing accepts", gw.log_text())
        self.assertNotIn("no live host", gw.log_text())
        time.sleep(0.2)
        self.assertEqual(frames_seen(), seen0, "no host may get the frame")
        for u in gw.status()["upstreams"]:
            for p in u["pools"]:
                for h in p["hosts"]:
                    self.assertEqual((h["id"], h["failures"], h["health"]), (h["id"], 0, "up"),
                                     "a local error must not count against a host")
        self.assertEqual(sum(gw.status()["frame_rejects"].values()), 0)

        # Room again: a new device is routed as before.
        resource.prlimit(worker, resource.RLIMIT_NOFILE, (soft, hard))
        self.assertEqual(owner(port, dc), "c")
        self.assertEqual(gw.worker_pids(), [worker], "the worker must not have been replaced")
        for f in fillers:
            f.close()
        self.assert_idle(gw)

    def test_frame_mode_host_replies_are_delimited_by_length_only(self):
        """Mode "frame" with allowed_types [1, 2, 3], allowed_versions [1] and
        max_body 200: a host answering with type 0x7f, version 9 and a 60,000-byte
        body (and a 0-byte one) is relayed whole; the device rules apply to what
        devices send, not to what hosts send."""
        big = PushBackend("push", lambda f: [HDR.pack(0x7F, 9, f[2], 60000) + bytes(range(256)) * 234 + b"x" * 96,
                                             HDR.pack(0x80, 0, f[2], 0),
                                             HDR.pack(*f[:3], len(f[3])) + f[3]])
        self._backends.append(big)
        mux = frame_listener("mux", frame_opts={"mode": "frame", "allowed_types": [1, 2, 3],
                                                "allowed_versions": [1], "max_body": 200})
        gw, _ = self.frame_gateway([big], [mux], workers=1)
        with gwtest.connect(port_of(mux), timeout=T(10)) as s:
            for t in (1, 2, 3):
                f = hb(f"push-{t}", t)
                s.sendall(f)
                self.assertEqual(read_frame(s), (0x7F, 9, t, bytes(range(256)) * 234 + b"x" * 96),
                                 "a host frame of another type, version and above max_body must arrive whole")
                self.assertEqual(read_frame(s), (0x80, 0, t, b""), "an empty host frame of another type")
                self.assertEqual(read_frame(s)[:3], (HEARTBEAT, 1, t), "and the echo after it")
            no_more_bytes(s, 0.2)
        self.assertEqual(big.frames, 3)
        self.assertEqual(sum(gw.status()["frame_rejects"].values()), 0)
        self.assert_idle(gw)

    def test_frame_mode_host_closing_inside_a_header_drops_its_link(self):
        """A host that sends part of a frame header and closes: nothing of that
        frame reached the device, so the link is closed (and logged) and the
        device stays; the link used to stay open, holding its descriptor and the
        host's active count until the idle timeout."""
        class HalfHeader:
            def __init__(self):
                self.name = "half"
                self.sock = socket.socket()
                self.sock.bind((gwtest.LOOPBACK, 0))
                self.sock.listen(16)
                self.address = f"{gwtest.LOOPBACK}:{self.sock.getsockname()[1]}"
                self.thread = threading.Thread(target=self._run, daemon=True)
                self.thread.start()

            def _run(self):
                try:
                    while True:
                        c, _ = self.sock.accept()
                        with c:
                            read_frame(c)
                            c.sendall(b"\x01\x01\x00")  # 3 bytes of a header, then the close
                except OSError:
                    pass

            def stop(self):
                self.sock.close()
        half = HalfHeader()
        self._backends.append(half)
        mux = frame_listener("mux", frame_opts={"mode": "frame"})
        gw, _ = self.frame_gateway([half], [mux], workers=1)
        with gwtest.connect(port_of(mux), timeout=T(10)) as s:
            s.sendall(hb("half-1", 1))
            gwtest.wait_until(lambda: "closed its connection inside a frame header" in gw.log_text(), T(5),
                              msg="the cut header logged")

            def link_gone():
                st = gw.status()
                return all(h["active"] == 0 for u in st["upstreams"] for p in u["pools"] for h in p["hosts"])
            gwtest.wait_until(link_gone, T(5), interval=0.05, msg="the host's link closed")
            self.assertEqual(worker_sum(gw.status(), "connections"), 1, "the device was closed")
        self.assert_idle(gw)

    def test_frame_mode_host_closing_inside_a_frame_not_yet_begun_drops_its_link(self):
        """Host "s" holds the device's write side (16 of its 106-byte frame
        out) while host "c" sends a header saying 100 bytes, 10 of them, and
        closes. Nothing of c's frame has reached the device, as with a header
        cut short, so only c's link goes (with a warning) and the device stays.
        c's link used to take the write side after s's frame, send the device
        16 bytes of a frame that could never be finished, and close the device
        with it."""
        go = threading.Event()
        c_closed = threading.Event()

        def part(c, f):
            c.sendall(HDR.pack(9, 1, f[2], 100) + b"x" * 10)
            go.wait(T(10))
            c.sendall(b"y" * 90)

        def cut(c, f):
            c.sendall(HDR.pack(8, 1, f[2], 100) + b"z" * 10)
            c.shutdown(socket.SHUT_RDWR)
            c_closed.set()
            raise EOFError
        sb = ScriptBackend("s", part)
        cb = ScriptBackend("c", cut)
        self._backends += [sb, cb]
        b = self.device_backend("b")
        mux = frame_listener("mux", frame_opts={"mode": "frame", "frame_timeout_ms": 30000})
        gw, hosts = self.frame_gateway([sb, cb, b], [mux], workers=1)
        pick = hashpick(hosts, [f"dev-{i}" for i in range(300)])
        ks = next(k for k, h in pick.items() if h == "s")
        kc = next(k for k, h in pick.items() if h == "c")
        kb = next(k for k, h in pick.items() if h == "b")
        with gwtest.connect(port_of(mux), timeout=T(10)) as d:
            d.sendall(frame({"devid": ks}, DATA, 1, 7))
            self.assertEqual(gwtest.recv_exact(d, 16), HDR.pack(9, 1, 7, 100) + b"x" * 10)
            d.sendall(frame({"devid": kc}, DATA, 1, 8))
            self.assertTrue(c_closed.wait(T(5)), "c got its frame")
            time.sleep(0.2)  # gw reads c's part and its close (s holds the device's write side)
            go.set()
            self.assertEqual(gwtest.recv_exact(d, 90), b"y" * 90, "the rest of s's frame")
            self.assertIsNone(closed_within(d, 0.3), "the device was closed for c's unfinished frame")
            self.assertEqual(heartbeat(d, kb, 9), "b", "the device goes on")
            gwtest.wait_until(lambda: "closed its connection inside a frame" in gw.log_text(), T(5),
                              msg="the cut frame logged")
        self.assert_idle(gw)

    def test_frame_mode_host_closing_mid_frame_closes_the_device_and_logs_why(self):
        """A host sends 16 bytes of a 106-byte frame to the device, then
        closes: the device cannot be given the rest, so gw closes it. Its
        access log line said end=closed, as if the device had closed; it says
        host_closed_mid_frame."""
        def cut(c, f):
            c.sendall(HDR.pack(9, 1, f[2], 100) + b"x" * 10)
            time.sleep(0.2)  # the part reaches the device first
            raise EOFError
        cb = ScriptBackend("c", cut)
        self._backends.append(cb)
        log = os.path.join(self.tmp, "mux.log")
        mux = frame_listener("mux", frame_opts={"mode": "frame"}, access_log={"path": log, "format": "json"})
        gw, _ = self.frame_gateway([cb], [mux], workers=1)
        with gwtest.connect(port_of(mux), timeout=T(10)) as d:
            d.sendall(frame({"devid": "dev-1"}, DATA, 1, 7))
            data, dt = bytes_until_eof(d, T(5))
            self.assertIsNotNone(dt, "the device is closed")
            self.assertEqual(data, HDR.pack(9, 1, 7, 100) + b"x" * 10)
        gwtest.wait_until(lambda: os.path.exists(log) and open(log).read().endswith("\n"), T(5), interval=0.05,
                          msg="the device's log line")
        (line,) = [json.loads(l) for l in open(log).read().splitlines()]
        self.assertEqual((line["end"], line["bytes_out"]), ("host_closed_mid_frame", 16))
        self.assert_idle(gw)

    def test_frame_mode_frames_sent_right_before_a_device_reset_reach_the_host(self):
        """A device that closes with a host's push unread makes the kernel send
        a reset, not a FIN; so does one that aborts (SO_LINGER 0). The frames it
        wrote just before are in gw's socket ahead of the reset, and the kernel
        returns them to a read before it reports the reset. Mode "frame" closed
        the device on the error event without reading them: the host got none
        of the 5 (the tcp listener and mode connection passed them on). Now
        each reaches its host, and the device is closed after."""
        got = []

        def answer(c, f):
            # Every frame is answered (a push the device will never read);
            # an answer that finds the link gone does not stop the reading.
            got.append(f)
            try:
                c.sendall(frame({"push": 1}, DATA, 1, f[2]))
            except OSError:
                pass
        host = ScriptBackend("a", answer)
        self._backends.append(host)
        mux = frame_listener("mux", frame_opts={"mode": "frame"})
        gw, _ = self.frame_gateway([host], [mux], workers=1)
        for abort in (False, True):
            with self.subTest(abort=abort):
                before = len(got)
                d = gwtest.connect(port_of(mux), timeout=T(10))
                d.sendall(frame({"devid": "dev-1"}, DATA, 1, 0))
                # the host's push is in the device's receive queue, unread
                gwtest.wait_until(lambda: select.select([d], [], [], 0)[0], T(5), interval=0.02,
                                  msg="the host's push at the device")
                time.sleep(0.2)  # the worker idle: the frames and the reset wake it together
                d.sendall(b"".join(frame({"devid": "dev-1", "n": i}, DATA, 1, i + 1) for i in range(5)))
                if abort:
                    d.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                d.close()
                gwtest.wait_until(lambda: len(got) - before >= 6, T(5), interval=0.02,
                                  msg="the 6 frames at the host")
                self.assertEqual([(f[2], json.loads(f[3]).get("n")) for f in got[before:]],
                                 [(0, None)] + [(i + 1, i) for i in range(5)])
                self.assert_idle(gw)

    def test_frame_mode_host_stalled_mid_frame_is_cut_off_after_frame_timeout(self):
        """Mode "frame", frame_timeout_ms 1000, hosts "slow" (a Python host)
        and "b": a host that answers slowly but steadily (a 60-byte frame in
        six parts 0.2 s apart, 1.2 s in all) keeps the device's write side; a
        host that stops inside its frame (16 of 106 bytes, then nothing) is
        cut off after ~1 s without progress, like a host that closes
        mid-frame: its link and the device connection are closed (the device
        has part of a frame that cannot be finished). Host b's answers used
        to wait behind it for good while the device's own heartbeats kept the
        idle timeout away."""
        def slow(c, f):
            ftype, ver, t, body = f
            if b"stall" in body:
                c.sendall(HDR.pack(9, 1, t, 100) + b"x" * 10)   # a frame started, never finished
                return
            whole = HDR.pack(9, 1, t, 54) + b"y" * 54
            for i in range(0, len(whole), 10):
                c.sendall(whole[i:i + 10])
                time.sleep(0.2)
        sb = ScriptBackend("slow", slow)
        self._backends.append(sb)
        b = self.device_backend("b")
        log = os.path.join(self.tmp, "mux.log")
        mux = frame_listener("mux", frame_opts={"mode": "frame", "frame_timeout_ms": 1000},
                             access_log={"path": log, "format": "json"})
        gw, hosts = self.frame_gateway([sb, b], [mux], workers=1)
        pick = hashpick(hosts, [f"dev-{i}" for i in range(200)])
        ks = [k for k, h in pick.items() if h == "slow"][:2]
        kb = next(k for k, h in pick.items() if h == "b")

        with gwtest.connect(port_of(mux), timeout=T(10)) as s:
            self.assertEqual(heartbeat(s, kb, 1), "b")
            # slow but steady: 1.2 s for one frame, never 1 s without a byte
            s.sendall(frame({"devid": ks[0], "drip": 1}, DATA, 1, 2))
            self.assertEqual(read_frame(s), (9, 1, 2, b"y" * 54), "a slow host frame arrives whole")
            self.assertEqual(heartbeat(s, kb, 3), "b")
            # stalled: 16 bytes of a 106-byte frame, then nothing
            s.sendall(frame({"devid": ks[1], "stall": 1}, DATA, 1, 4))
            self.assertEqual(gwtest.recv_exact(s, 16), HDR.pack(9, 1, 4, 100) + b"x" * 10)
            t0 = time.monotonic()
            closed = None
            answered = 0
            for i in range(int(T(4) / 0.1)):   # heartbeats to b meanwhile, as a device would
                try:
                    s.sendall(hb(kb, 100 + i))
                except OSError:
                    closed = time.monotonic() - t0
                    break
                data, dt = bytes_until_eof(s, 0.1)
                answered += len(data)
                if dt is not None:
                    closed = time.monotonic() - t0
                    break
            self.assertIsNotNone(closed, "a host stalled mid-frame must be cut off after frame_timeout_ms "
                                         "(it held b's answers to the device)")
            self.assertEqual(answered, 0, "nothing may follow a frame that was cut (b's answers wait behind it)")
            self.assertTrue(0.8 <= closed <= T(3), f"closed {closed:.2f}s after the host stalled (want ~1)")
        self.assertIn("inside a frame to a device", gw.log_text())
        gwtest.wait_until(lambda: os.path.exists(log) and open(log).read().endswith("\n"), T(5), interval=0.05,
                          msg="the device's log line")
        self.assertEqual([json.loads(l)["end"] for l in open(log).read().splitlines()], ["host_frame_timeout"])
        # a new device connection works as before
        with gwtest.connect(port_of(mux), timeout=T(10)) as s:
            self.assertEqual(heartbeat(s, kb, 1), "b")
        self.assertEqual(sum(gw.status()["frame_rejects"].values()), 0)
        self.assert_idle(gw)

    def test_frame_mode_removed_host_mid_frame_keeps_the_device(self):
        """Mode "frame", on_host_remove "close": host "s" is removed while its
        frame to the device is half out (16 of 106 bytes). Its link used to be
        closed at once, and the device with it (a frame cut short cannot be
        finished). Now the link stays until that frame is out, then closes;
        the device stays connected and its next frame for that key goes to
        the new owner."""
        go = threading.Event()

        def part(c, f):
            ftype, ver, t, body = f
            c.sendall(HDR.pack(9, 1, t, 100) + b"x" * 10)
            go.wait(T(10))
            c.sendall(b"y" * 90)
        sb = ScriptBackend("s", part)
        self._backends.append(sb)
        b = self.device_backend("b")
        mux = frame_listener("mux", on_host_remove="close", frame_opts={"mode": "frame", "frame_timeout_ms": 30000})
        gw, hosts = self.frame_gateway([sb, b], [mux], workers=1)
        pick = hashpick(hosts, [f"dev-{i}" for i in range(200)])
        ks = next(k for k, h in pick.items() if h == "s")
        with gwtest.connect(port_of(mux), timeout=T(10)) as d:
            d.sendall(frame({"devid": ks}, DATA, 1, 7))
            self.assertEqual(gwtest.recv_exact(d, 16), HDR.pack(9, 1, 7, 100) + b"x" * 10)
            self.gwctl_ok(gw, "remove", "host", "app/primary", "s")
            self.wait_workers_current(gw)
            self.assertIsNone(closed_within(d, 0.5), "the device was closed with the removed host's link")
            go.set()
            self.assertEqual(gwtest.recv_exact(d, 90), b"y" * 90, "the rest of the removed host's frame")
            gwtest.wait_until(lambda: worker_sum(gw.status(), "host_closed") == 1, T(5), interval=0.05,
                              msg="the removed host's link closed once its frame was out")
            self.assertEqual(heartbeat(d, ks, 8), "b", "the key's next frame goes to its new owner")
        self.assert_idle(gw)

    def test_frame_mode_removed_host_frames_already_in_gw_reach_the_device(self):
        """Mode "frame", on_host_remove "close": host "s" holds the device's
        write side (16 of its 106-byte frame out), so host "t"'s answer, read
        whole by gw, waits behind it in t's link. t is removed: its link was
        closed at once and the answer gw already held was dropped, while the
        device stayed connected (nothing told it). Now a removed host's link
        stays until what gw holds of it is out (no new frame goes to it, and
        nothing more is read from it), then closes."""
        go = threading.Event()
        t_answered = threading.Event()

        def part(c, f):
            ftype, ver, t, body = f
            c.sendall(HDR.pack(9, 1, t, 100) + b"x" * 10)
            go.wait(T(10))
            c.sendall(b"y" * 90)

        t_closed = threading.Event()

        def answer(c, f):
            c.sendall(HDR.pack(8, 1, f[2], 5) + b"hello")
            t_answered.set()
            if c.recv(1) == b"":  # gw closes t's link: no other frame comes on it
                t_closed.set()
            raise EOFError
        sb = ScriptBackend("s", part)
        tb = ScriptBackend("t", answer)
        self._backends += [sb, tb]
        b = self.device_backend("b")
        mux = frame_listener("mux", on_host_remove="close", frame_opts={"mode": "frame", "frame_timeout_ms": 30000})
        gw, hosts = self.frame_gateway([sb, tb, b], [mux], workers=1)
        keys = [f"dev-{i}" for i in range(300)]
        pick = hashpick(hosts, keys)
        after = hashpick([h for h in hosts if h["id"] != "t"], keys)
        ks = next(k for k, h in pick.items() if h == "s")
        kt = next(k for k, h in pick.items() if h == "t" and after[k] == "b")
        with gwtest.connect(port_of(mux), timeout=T(10)) as d:
            d.sendall(frame({"devid": ks}, DATA, 1, 7))
            self.assertEqual(gwtest.recv_exact(d, 16), HDR.pack(9, 1, 7, 100) + b"x" * 10)
            d.sendall(frame({"devid": kt}, DATA, 1, 8))
            self.assertTrue(t_answered.wait(T(5)), "t got its frame")
            time.sleep(0.2)  # gw reads t's answer into t's link (s holds the device's write side)
            self.gwctl_ok(gw, "remove", "host", "app/primary", "t")
            self.wait_workers_current(gw)
            self.assertIsNone(closed_within(d, 0.3), "the device was closed with the removed host's link")
            go.set()
            self.assertEqual(gwtest.recv_exact(d, 90), b"y" * 90, "the rest of s's frame")
            d.settimeout(T(3))
            try:
                got = gwtest.recv_exact(d, 11)
            except (socket.timeout, EOFError, OSError):
                got = None
            self.assertEqual(got, HDR.pack(8, 1, 8, 5) + b"hello", "t's answer, already in gw, reached the device")
            self.assertTrue(t_closed.wait(T(5)), "the removed host's link closed once its answer was out")
            self.assertEqual(heartbeat(d, kt, 9), "b", "the key's next frame goes to its new owner")
        self.assert_idle(gw)

    def test_frame_mode_frame_waiting_on_a_removed_host_goes_to_its_new_owner(self):
        """Mode "frame", on_host_remove "close": host "s" holds the device's
        write side (16 of its 106-byte frame out) and stops reading, so the
        device's frame at the head waits on s's link. s is removed: its link
        stays until its frame is out, and no new frame may go to it. The
        frame that waited on it stayed routed there (it went to the removed
        host once s read again, and the device's frames all waited behind a
        host that reads nothing). Now it goes again, whole, to the key's new
        owner at once, as when a link is closed for the removal (a part of
        it that s may have got ends with s's connection, as there); the
        device stays connected and s's frame still reaches it whole."""
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited: s's link fills soon
        ls.bind((gwtest.LOOPBACK, 0))
        ls.listen(8)
        self.addCleanup(ls.close)
        got_b = []
        bb = ScriptBackend("b", lambda c, f: got_b.append(json.loads(f[3])["n"]))
        self._backends.append(bb)
        hosts = [host("s", f"{gwtest.LOOPBACK}:{ls.getsockname()[1]}"), host("b", bb.address)]
        mux = frame_listener("mux", on_host_remove="close", frame_opts={"mode": "frame", "frame_timeout_ms": 30000})
        gw = self.gateway(self.make_config([dev_pool("primary", hosts)], workers=1, listeners=[mux]))
        pick = hashpick(hosts, [f"dev-{i}" for i in range(200)])
        ks = next(k for k, h in pick.items() if h == "s")
        frames = [frame({"devid": ks, "n": i, "pad": "x" * 4000}, DATA, 1, i % 65536) for i in range(4000)]
        blob = b"".join(frames)
        with gwtest.connect(port_of(mux), timeout=T(10)) as d:
            ls.settimeout(T(5))
            d.sendall(frames[0])
            sent = len(frames[0])
            s, _ = ls.accept()
            self.addCleanup(s.close)
            s.sendall(HDR.pack(9, 1, 7, 100) + b"x" * 10)  # s takes the device's write side, then reads nothing
            self.assertEqual(gwtest.recv_exact(d, 16), HDR.pack(9, 1, 7, 100) + b"x" * 10)
            d.setblocking(False)
            stalled_since = None
            while sent < len(blob):
                try:
                    sent += d.send(blob[sent:sent + 65536])
                    stalled_since = None
                except BlockingIOError:
                    if stalled_since is None:
                        stalled_since = time.monotonic()
                    elif time.monotonic() - stalled_since > 0.5:
                        break  # gw stopped reading the device: its head frame waits on s's full link
                    time.sleep(0.02)
            self.assertLess(sent, len(blob), "host s, reading nothing, never pushed back")
            self.gwctl_ok(gw, "remove", "host", "app/primary", "s")
            self.wait_workers_current(gw)
            try:
                gwtest.wait_until(lambda: got_b, T(3), interval=0.02, msg="b to get a frame")
            except AssertionError:
                self.fail("the frame that waited on removed host s's link did not go to the key's new owner b "
                          "(s still holds the device's write side and reads nothing)")
            d.settimeout(T(10))
            d.sendall(blob[sent:])
            gwtest.wait_until(lambda: got_b and got_b[-1] == len(frames) - 1, T(20), interval=0.05,
                              msg="b to get the device's last frame")
            self.assertEqual(got_b, list(range(got_b[0], len(frames))), "b's frames in order, none lost")
            # s reads now: the frames it was sent before the removal, whole, and at most a part of the next
            s.settimeout(0.5)
            at_s = b""
            while True:
                try:
                    chunk = s.recv(1 << 20)
                except socket.timeout:
                    break
                if not chunk:
                    break
                at_s += chunk
            whole, off = 0, 0
            while at_s[off:off + len(frames[whole])] == frames[whole]:
                off += len(frames[whole])
                whole += 1
            self.assertEqual(whole, got_b[0], "s got the frames before b's first, whole; none went to both")
            self.assertTrue(frames[whole].startswith(at_s[off:]), "after them s got at most a part of b's first")
            self.assertIsNone(closed_within(d, 0.2), "the device was closed")
            s.sendall(b"y" * 90)
            d.settimeout(T(10))
            self.assertEqual(gwtest.recv_exact(d, 90), b"y" * 90, "the rest of the removed host's frame")
            gwtest.wait_until(lambda: worker_sum(gw.status(), "host_closed") == 1, T(5), interval=0.05,
                              msg="the removed host's link closed once its frame was out")
        self.assert_idle(gw)

    def test_frame_mode_no_frame_goes_to_a_host_that_closed(self):
        """Mode "frame": host "s" answers a frame and closes its connection
        while host "b" holds the device's write side (inside a frame), so s's
        link stays open with its answer waiting. The device's next frame for
        s's key was sent on that link, to a host that had closed it: reset
        and lost, with the device never told. Now a new link is opened."""
        go = threading.Event()
        got = []

        def s_host(c, f):
            ftype, ver, t, body = f
            got.append(json.loads(body)["n"])
            c.sendall(HDR.pack(9, 1, t, 2) + b"ok")
            if got == [1]:
                c.shutdown(socket.SHUT_RDWR)  # the first connection ends after its answer

        def b_host(c, f):
            ftype, ver, t, body = f
            c.sendall(HDR.pack(9, 1, t, 100) + b"x" * 10)
            go.wait(T(10))
            c.sendall(b"y" * 90)
        sb, bb = ScriptBackend("s", s_host), ScriptBackend("b", b_host)
        self._backends += [sb, bb]
        mux = frame_listener("mux", frame_opts={"mode": "frame", "frame_timeout_ms": 30000})
        gw, hosts = self.frame_gateway([sb, bb], [mux], workers=1)
        pick = hashpick(hosts, [f"dev-{i}" for i in range(200)])
        ks = next(k for k, h in pick.items() if h == "s")
        kb = next(k for k, h in pick.items() if h == "b")
        with gwtest.connect(port_of(mux), timeout=T(10)) as d:
            d.sendall(frame({"devid": kb}, DATA, 1, 1))
            self.assertEqual(gwtest.recv_exact(d, 16), HDR.pack(9, 1, 1, 100) + b"x" * 10)
            d.sendall(frame({"devid": ks, "n": 1}, DATA, 1, 2))
            gwtest.wait_until(lambda: got == [1], T(5), interval=0.02, msg="s to get the first frame")
            time.sleep(0.3)  # gw reads s's answer and its FIN (the link stays: b holds the write side)
            d.sendall(frame({"devid": ks, "n": 2}, DATA, 1, 3))
            gwtest.wait_until(lambda: got == [1, 2], T(5), interval=0.02,
                              msg="s to get the frame sent after it closed its first connection")
            go.set()
            self.assertEqual(gwtest.recv_exact(d, 90), b"y" * 90)
            answers = sorted(read_frame(d)[2] for _ in range(2))
            self.assertEqual(answers, [2, 3], "both of s's answers reach the device")
        self.assert_idle(gw)

    def test_frame_mode_frame_waiting_on_a_host_that_closes_goes_to_a_new_link(self):
        """Mode "frame": the host stops reading, so the device's frame at the
        head waits on its link (the link's socket is full), and then the host
        closes its side (FIN, no reset). gw lets that link go; the frame that
        waited on it goes again, to a host picked afresh, at once. It used to
        wait for some other event of the device's (one that may never come:
        the device waits for answers), and the device was closed at
        idle_timeout_ms with its frames undelivered."""
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited: the first link fills soon
        ls.bind((gwtest.LOOPBACK, 0))
        ls.listen(8)
        self.addCleanup(ls.close)
        mux = frame_listener("mux", frame_opts={"mode": "frame"})
        cfg = self.make_config([dev_pool("primary", [host("h", f"{gwtest.LOOPBACK}:{ls.getsockname()[1]}")])],
                               workers=1, listeners=[mux])
        gw = self.gateway(cfg)
        frames = [frame({"devid": "dev-1", "n": i, "pad": "x" * 4000}, DATA, 1, i % 65536) for i in range(4000)]
        blob = b"".join(frames)
        with gwtest.connect(port_of(mux), timeout=T(10)) as d:
            ls.settimeout(T(5))
            d.sendall(frames[0])
            sent = len(frames[0])
            first, _ = ls.accept()  # the link of the first frame; never read
            self.addCleanup(first.close)
            d.setblocking(False)
            stalled_since = None
            while sent < len(blob):
                try:
                    sent += d.send(blob[sent:sent + 65536])
                    stalled_since = None
                except BlockingIOError:
                    if stalled_since is None:
                        stalled_since = time.monotonic()
                    elif time.monotonic() - stalled_since > 0.5:
                        break  # gw stopped reading the device: its head frame waits on the full link
                    time.sleep(0.02)
            self.assertLess(sent, len(blob), "the host that reads nothing never pushed back")
            first.shutdown(socket.SHUT_WR)  # the host is done (and still reads nothing)
            ls.settimeout(T(0.5))  # at once, not when some later event of the device's comes
            try:
                second, _ = ls.accept()  # the waiting frame's new link
            except socket.timeout:
                self.fail("no new link within 0.5 s after the host closed the link a frame waited on")
            with second:
                second.settimeout(T(10))
                d.settimeout(T(10))
                rest = threading.Thread(target=d.sendall, args=(blob[sent:],))  # the host reads meanwhile
                rest.start()
                n = -1
                try:
                    while n != len(frames) - 1:
                        _, _, _, body = read_frame(second)
                        m = json.loads(body)["n"]
                        self.assertGreater(m, n, "frames out of order on the new link")
                        n = m
                finally:
                    rest.join()
        self.assert_idle(gw)

    def test_frame_mode_log_counts_a_frame_sent_again_once(self):
        """Mode "frame", access log on: the host stops reading, so the frame
        at the head is partly written to its link when the host resets it;
        the frame goes again, whole, on a new link. The device's log line
        counted the part written to the dead link and the whole frame again:
        `in` said the device had sent more than it had. It counts each byte
        the device sent to hosts once (the host's sent_bytes counter still
        has every byte written to its sockets)."""
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited: the first link fills soon
        ls.bind((gwtest.LOOPBACK, 0))
        ls.listen(8)
        self.addCleanup(ls.close)
        log = os.path.join(self.tmp, "mux.log")
        mux = frame_listener("mux", frame_opts={"mode": "frame"}, access_log={"path": log, "format": "json"})
        cfg = self.make_config([dev_pool("primary", [host("h", f"{gwtest.LOOPBACK}:{ls.getsockname()[1]}")])],
                               workers=1, listeners=[mux])
        gw = self.gateway(cfg)
        frames = [frame({"devid": "dev-1", "n": i, "pad": "x" * 4000}, DATA, 1, i % 65536) for i in range(4000)]
        blob = b"".join(frames)
        with gwtest.connect(port_of(mux), timeout=T(10)) as d:
            ls.settimeout(T(5))
            d.sendall(frames[0])
            sent = len(frames[0])
            first, _ = ls.accept()  # never read
            d.setblocking(False)
            stalled_since = None
            while sent < len(blob):
                try:
                    sent += d.send(blob[sent:sent + 65536])
                    stalled_since = None
                except BlockingIOError:
                    if stalled_since is None:
                        stalled_since = time.monotonic()
                    elif time.monotonic() - stalled_since > 0.5:
                        break  # gw stopped reading the device: its head frame waits on the full link
                    time.sleep(0.02)
            self.assertLess(sent, len(blob), "the host that reads nothing never pushed back")
            first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            first.close()  # a reset: what gw wrote to it is lost, and the head frame goes again
            with ls.accept()[0] as second:
                second.settimeout(T(10))
                d.settimeout(T(10))
                rest = threading.Thread(target=d.sendall, args=(blob[sent:],))
                rest.start()
                n = -1
                try:
                    while n != len(frames) - 1:
                        _, _, _, body = read_frame(second)
                        m = json.loads(body)["n"]
                        self.assertGreater(m, n, "frames out of order on the new link")
                        n = m
                finally:
                    rest.join()
            d.shutdown(socket.SHUT_WR)
            self.assertIsNotNone(closed_within(d, T(5)), "the device is closed once its hosts are done")
        gwtest.wait_until(lambda: os.path.exists(log) and open(log).read().endswith("\n"), T(5), interval=0.05,
                          msg="the device's log line")
        (line,) = [json.loads(l) for l in open(log).read().splitlines()]
        self.assertEqual((line["protocol"], line["bytes_out"]), ("frame", 0))
        # every byte written to the host's sockets: the device's, and the part of the frame sent twice
        to_host = sum(h["sent_bytes"] for u in gw.status()["upstreams"] for p in u["pools"] for h in p["hosts"])
        self.assertGreaterEqual(to_host, len(blob), "the host's sent_bytes")
        self.assert_idle(gw)
        if to_host == len(blob):
            self.skipTest("the head frame had not been partly written to the link that was reset")
        self.assertEqual(line["bytes_in"], len(blob), f"bytes_in counts each device byte once "
                                                      f"({line['bytes_in'] - len(blob)} more than the device sent)")

    def test_frame_mode_fresh_link_broken_mid_frame_is_retried_on_its_host(self):
        """Mode "frame", one host, max_fails 3: the host takes 1000 bytes of
        the device's first frame (6 MB: the rest is still being written) on
        the link opened for it, then resets that link (or closes its side,
        FIN, and reads no more), then behaves. The frame goes again, whole, on
        a new link to the same host, and the device gets its answer; the host
        has one passive failure and stays up. The host whose fresh link broke
        was left out of the retry, and with no other host the device was
        closed (no_host)."""
        for how in ("reset", "eof"):
            with self.subTest(how=how):
                h = BigFrameHost([how, "answer"])
                self.addCleanup(h.stop)
                mux = frame_listener("mux", frame_opts=dict(BIG_OPTS))
                cfg = self.make_config([dev_pool("primary", [host("h", h.address)])], workers=1, listeners=[mux],
                                       upstream_opts={"max_fails": 3})
                gw = self.gateway(cfg)
                f = big_frame({"devid": "dev-1", "blob": "b" * (6 << 20)}, DATA, 7)
                with gwtest.connect(port_of(mux), timeout=T(20)) as d:
                    d.sendall(f)
                    try:
                        _, _, t, body = read_big_frame(d)
                    except (EOFError, ConnectionResetError):
                        self.fail(f"{how}: the device was closed instead of answered; no_host "
                                  f"{worker_sum(gw.status(), 'no_host')}, host links {h.links}")
                    self.assertEqual((t, json.loads(body)),
                                     (7, {"devid": "dev-1", "len": len(f) - BIG_HDR.size, "link": 1}),
                                     f"{how}: answered on the second link, the whole frame")
                self.assertEqual(worker_sum(gw.status(), "no_host"), 0)
                self.assertHost(gw, "app/primary/h", health="up", failures=1)
                self.assert_idle(gw)
                gw.stop()

    def test_frame_mode_link_that_takes_nothing_for_send_timeout_fails(self):
        """Mode "frame", max_frame_buffers 1, send_timeout_ms 300: the host of
        the primary pool accepts a link and reads nothing, so a device's 6 MB
        frame cannot be written whole. After send_timeout_ms without a byte
        taken, gw closes that link, counts a passive failure (max_fails 1: the
        host is out) and sends the frame whole to the backup pool's host,
        which answers; the whole-frame buffer is then free for another
        device's big frame. The frame used to wait on the stalled link until
        the device's idle timeout, holding the listener's only whole-frame
        buffer: the device got no answer and the next big frame was refused
        (no_frame_buffer)."""
        stall = BigFrameHost(["stall"])
        self.addCleanup(stall.stop)
        good = BigFrameHost(["answer"])
        self.addCleanup(good.stop)
        mux = frame_listener("mux", frame_opts=dict(BIG_OPTS))
        cfg = self.make_config([dev_pool("primary", [host("stall", stall.address)]),
                                dev_pool("backup", [host("good", good.address)], 1)],
                               workers=1, listeners=[mux], upstream_opts={"send_timeout_ms": 300})
        gw = self.gateway(cfg)
        for i in (1, 2):
            f = big_frame({"devid": f"dev-{i}", "blob": "s" * (6 << 20)}, DATA, i)
            with gwtest.connect(port_of(mux), timeout=T(20)) as d:
                d.sendall(f)
                try:
                    _, _, t, body = read_big_frame(d)
                except (EOFError, ConnectionResetError, socket.timeout) as e:
                    self.fail(f"device {i}: no answer ({e!r}); frame_rejects {gw.status()['frame_rejects']}, "
                              f"links to the stalled host {stall.links}")
                self.assertEqual((t, json.loads(body)["devid"]), (i, f"dev-{i}"), f"device {i}: the good host's answer")
        self.assertEqual(stall.links, 1, "the stalled host got one link (it is out after its failure)")
        self.assertHost(gw, "app/primary/stall", health="down", failures=1)
        self.assertEqual(sum(gw.status()["frame_rejects"].values()), 0)
        self.assert_idle(gw)

    def test_frame_mode_a_streaming_device_does_not_starve_the_others(self):
        """Mode "frame", one worker: device A streams small frames (87 bytes)
        as fast as it can for 2.5 s to a host that reads them at once; device
        B meanwhile does heartbeat round trips to another host. Each of B's
        round trips is answered within 1 s (they take milliseconds): one
        device's backlog is taken in bounded slices. Reading a device used to
        go on until its socket was empty, so B waited as long as A kept it
        full. Every byte A sent reaches the sink, in whole frames. A tcp
        listener is there too, so that under io_uring the worker runs the
        ring with the per-frame devices on its nested epoll loop."""
        sink = SinkBackend("sink")
        self._backends.append(sink)
        b = self.device_backend("b")
        mux = frame_listener("mux", frame_opts={"mode": "frame"})
        gw, hosts = self.frame_gateway([sink, b], [mux, gwtest.tcp_listener("l4", "app")], workers=1)
        pick = hashpick(hosts, [f"dev-{i}" for i in range(100)])
        ka = next(k for k, h in pick.items() if h == "sink")
        kb = next(k for k, h in pick.items() if h == "b")
        with gwtest.connect(port_of(mux), timeout=T(10)) as bs, gwtest.connect(port_of(mux), timeout=T(30)) as a:
            self.assertEqual(heartbeat(bs, kb, 1), "b")
            first = hb(ka, 1)
            a.sendall(first)          # A's link to the sink is open before the stream starts
            gwtest.wait_until(lambda: sink.received == len(first), T(5), msg="A's first frame at the sink")
            one = frame({"devid": ka, "p": "x" * 60}, DATA, 1, 7)
            chunk = one * ((1 << 20) // len(one))
            sent = [len(first)]

            def stream():
                end = time.monotonic() + T(2.5)
                while time.monotonic() < end:
                    a.sendall(chunk)
                    sent[0] += len(chunk)
            writer = threading.Thread(target=stream)
            writer.start()
            time.sleep(0.05)
            rtts = []
            try:
                i = 0
                while writer.is_alive():
                    t0 = time.monotonic()
                    bs.sendall(hb(kb, 100 + i % 1000))
                    self.assertEqual(read_heartbeat_reply(bs, 100 + i % 1000)[0], kb)
                    rtts.append(time.monotonic() - t0)
                    i += 1
                    time.sleep(0.02)
            finally:
                writer.join()
            self.assertGreater(sent[0], 20 * len(chunk), "A's stream was not much of a stream")
            self.assertLessEqual(max(rtts), T(1), f"B's slowest round trip while A streamed {sent[0] >> 20} MiB: "
                                                  f"{max(rtts):.2f}s ({len(rtts)} round trips)")
            self.assertGreaterEqual(len(rtts), 3, "B's round trips while A streamed")
            gwtest.wait_until(lambda: sink.received == sent[0], T(10), interval=0.05,
                              msg=f"every byte A sent at the sink ({sent[0]})")
            self.assertEqual(heartbeat(bs, kb, 2), "b")
        self.assertEqual(sum(gw.status()["frame_rejects"].values()), 0)
        self.assert_idle(gw)

    def test_reject_logging_is_rate_limited_per_worker(self):
        """Bad frames sent fast (about 2.3 s) to a connection-mode and a per-frame
        listener on 2 workers: every one is counted, and each worker logs at
        most one reject line per second (the relay and the per-frame
        multiplexer share the limit), each line saying how many the worker
        has refused so far."""
        backends = self.device_backends(["a"])
        conn = frame_listener("conn")
        mux = frame_listener("mux", frame_opts={"mode": "frame"})
        gw, _ = self.frame_gateway(backends, [conn, mux], workers=2)
        bad = frame('{"devid": oops}')
        sent = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.3:
            for port in (port_of(conn), port_of(mux)):
                with gwtest.connect(port) as s:
                    s.sendall(bad)
                sent += 1
        gwtest.wait_until(lambda: gw.status()["frame_rejects"]["bad_json"] == sent, T(5), interval=0.05,
                          msg=f"bad_json == {sent}")
        st = gw.status()
        self.assertTrue(all(sum(w["frame_rejects"].values()) > 0 for w in st["workers"]),
                        "both workers refused some connections")
        line_re = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z warn worker \d+\[(\d+)\]: "
                             r"frame connection from \S+ refused: (\w+) \(this worker has refused (\d+) so far")
        per_pid = collections.defaultdict(list)
        for line in gw.log_text().splitlines():
            m = line_re.match(line)
            if m:
                ts = datetime.datetime.fromisoformat(m.group(1)).timestamp()
                per_pid[int(m.group(2))].append((ts, m.group(3), int(m.group(4))))
        worker_pids = {w["pid"]: w for w in st["workers"]}
        self.assertEqual(set(per_pid), set(worker_pids), f"reject lines by pid: { {p: len(v) for p, v in per_pid.items()} }")
        for pid, lines in per_pid.items():
            gaps = [round(b[0] - a[0], 3) for a, b in zip(lines, lines[1:])]
            self.assertTrue(all(g >= 0.99 for g in gaps), f"worker {pid}: reject lines closer than 1 s: {gaps}")
            self.assertTrue(2 <= len(lines) <= 4, f"worker {pid}: {len(lines)} reject lines in ~2.3 s (want 2..4)")
            self.assertEqual({r for _, r, _ in lines}, {"bad_json"})
            counts = [n for _, _, n in lines]
            self.assertEqual(counts, sorted(counts), f"worker {pid}: 'so far' counts must grow: {counts}")
            refused = sum(worker_pids[pid]["frame_rejects"].values())
            self.assertLessEqual(counts[-1], refused)
            self.assertGreater(counts[-1], len(lines), f"worker {pid}: the count includes the unlogged refusals")
        self.assert_idle(gw)

    def test_custom_header_layout(self):
        """An 8-byte header: magic, type at 2, version at 3, a little-endian u32
        length at 4 that includes the header; key /meta/sn. Routing is by the
        key (sticky, as gw-hashpick says); the frame and the bytes behind it
        are replayed exactly; header rules are enforced."""
        names = [self.backend(n, mode="name") for n in ("p", "q", "r")]
        opts = {"header_size": 8, "length_offset": 4, "length_size": 4, "byte_order": "little",
                "length_includes_header": True, "type_offset": 2, "version_offset": 3,
                "allowed_types": [0x10, 0x11], "allowed_versions": [7], "key": "/meta/sn", "max_body": 200}
        lst = frame_listener("custom", frame_opts=opts)
        gw, hosts = self.frame_gateway(names, [lst])
        self.assertEqual(gw.status()["upstreams"][0]["pools"][0]["method"], "chash")

        def cframe(sn, ftype=0x10, ver=7, length=None, extra=b""):
            body = body_bytes({"meta": {"sn": sn}, "v": 1}) + extra
            n = 8 + len(body) if length is None else length
            return b"\xab\xcd" + bytes([ftype, ver]) + struct.pack("<I", n) + body

        sns = [f"SN{i:05d}" for i in range(30)]
        want = hashpick(hosts, sns)
        self.assertGreater(len(set(want.values())), 1)
        for sn in sns:
            for k in range(2):
                f = cframe(sn, ftype=0x10 + k)
                rest = b"\x00raw" * k
                with gwtest.connect(port_of(lst)) as s:
                    s.sendall(f + rest)
                    self.assertEqual(gwtest.recv_line(s), want[sn], f"custom header: key {sn}")
                    self.assertEqual(gwtest.recv_exact(s, len(f + rest)), f + rest, f"custom header: echo of {sn}")
        for name, reason, data in (
                ("length below the header it includes", "bad_length", cframe("x", length=7)),
                ("length above header + max_body", "body_too_large", cframe("x", length=8 + 201)[:8]),
                ("type 0x12 not allowed", "bad_type", cframe("x", ftype=0x12)),
                ("version 6 not allowed", "bad_version", cframe("x", ver=6))):
            before = gw.status()["frame_rejects"][reason]
            with gwtest.connect(port_of(lst)) as s:
                s.sendall(data)
                self.assertIsNotNone(closed_within(s, T(3)), f"custom header: {name}: expected a close")
            gwtest.wait_until(lambda: gw.status()["frame_rejects"][reason] == before + 1, T(3),
                              msg=f"custom header: {name}: {reason} +1")
        # exactly max_body is fine
        f = cframe("SN-max", extra=b" " * (200 - len(body_bytes({"meta": {"sn": "SN-max"}, "v": 1}))))
        self.assertEqual(len(f), 208)
        with gwtest.connect(port_of(lst)) as s:
            s.sendall(f)
            self.assertIn(gwtest.recv_line(s), ("p", "q", "r"))
            self.assertEqual(gwtest.recv_exact(s, len(f)), f)

    def test_many_concurrent_devices_in_both_modes(self):
        """200 clients at once over 2 workers, half per-frame (20 heartbeats
        and a 30 KB data frame pipelined), half connection mode (20
        heartbeats, one at a time): every answer from the devid's owner."""
        backends = self.device_backends(["a", "b", "c", "d"])
        conn = frame_listener("conn")
        mux = frame_listener("mux", frame_opts={"mode": "frame"})
        gw, hosts = self.frame_gateway(backends, [conn, mux])
        devids = [f"z-{i}" for i in range(400)]
        want = hashpick(hosts, devids)

        def run(k):
            errs = []
            if k % 2:
                mine = devids[(k * 7) % 380:(k * 7) % 380 + 20]
                big = frame({"devid": mine[0], "x": "y" * 30000}, DATA, 1, 999)
                with gwtest.connect(port_of(mux), timeout=T(15)) as s:
                    s.sendall(b"".join(hb(d, i) for i, d in enumerate(mine)) + big)
                    for _ in range(len(mine) + 1):
                        ftype, ver, t, body = read_frame(s)
                        if ftype == DATA:
                            if HDR.pack(ftype, ver, t, len(body)) + body != big:
                                errs.append(f"client {k}: data frame came back altered")
                            continue
                        j = json.loads(body)
                        if t >= len(mine) or (j["devid"], j["backend"]) != (mine[t], want[mine[t]]):
                            errs.append(f"client {k}: reply {t} {j}")
            else:
                d = devids[k]
                with gwtest.connect(port_of(conn), timeout=T(15)) as s:
                    for t in range(20):
                        b = heartbeat(s, d, t)
                        if b != want[d]:
                            errs.append(f"client {k}: {d} answered by {b}, owner {want[d]}")
            return errs

        with concurrent.futures.ThreadPoolExecutor(64) as ex:
            errs = [e for r in ex.map(run, range(200)) for e in r]
        self.assertEqual(errs[:10], [], f"{len(errs)} wrong answers")
        st = gw.status()
        self.assertEqual(worker_sum(st, "frames_routed"), 100 * 21)
        self.assertTrue(all(w["accepted"] > 0 for w in st["workers"]), "both workers took connections")
        self.assertEqual(sum(st["frame_rejects"].values()), 0)
        self.assert_idle(gw)

    # ------------------------------------------------------------------------
    # 6. bad input

    def test_bad_input_is_refused_counted_and_never_reaches_a_backend(self):
        backends = self.device_backends(["a", "b"])
        common = {"max_body": 1000, "first_frame_timeout_ms": 500, "max_depth": 4, "max_key": 16,
                  "allowed_types": [1, 2, 3], "allowed_versions": [1]}
        conn = frame_listener("conn", frame_opts=dict(common))
        mux = frame_listener("mux", frame_opts=dict(common, mode="frame"))
        incl = frame_listener("incl", frame_opts=dict(common, length_includes_header=True))
        gw, _ = self.frame_gateway(backends, [conn, mux, incl])

        def lie(n):
            return HDR.pack(HEARTBEAT, 1, 0, n)

        cases = [
            # (name, reason, bytes to send, then FIN?)
            ("header cut short", "header_truncated", b"\x02\x01\x00", True),
            ("body shorter than declared", "body_truncated", lie(20) + b'{"devid":"x"', True),
            ("body_len above max_body", "body_too_large", lie(2000), False),
            ("invalid JSON", "bad_json", frame('{"devid":"x",'), False),
            ("not JSON at all", "bad_json", frame("devid=x"), False),
            ("too deep JSON", "json_too_deep", frame('{"devid":"x","a":[[[[[[1]]]]]]}'), False),
            ("non-UTF-8 body", "bad_utf8", frame(b'{"devid":"x","n":"\xff\xfe"}'), False),
            ("missing key", "key_missing", frame({"id": "x"}), False),
            ("body not an object", "key_missing", frame(["devid", "x"]), False),
            ("empty key", "key_empty", frame({"devid": ""}), False),
            ("number key", "key_not_string", frame({"devid": 123}), False),
            ("null key", "key_not_string", frame({"devid": None}), False),
            ("overlong key", "key_too_long", frame({"devid": "k" * 17}), False),
            ("control character in key", "key_bad_char", frame('{"devid":"ab\\u0001c"}'), False),
            ("DEL in key", "key_bad_char", frame(b'{"devid":"ab\x7f"}'), False),
            ("duplicated key", "key_duplicate", frame('{"devid":"a","devid":"b"}'), False),
            ("type not allowed", "bad_type", frame({"devid": "x"}, ftype=9), False),
            ("version not allowed", "bad_version", frame({"devid": "x"}, ver=2), False),
        ]

        def snapshot():
            st = gw.status()
            return (dict(st["frame_rejects"]), host_totals(st),
                    {b.name: b.stats()["frames"] for b in backends})

        def check(where, name, reason, send, fin=False, within=T(3), timing=None):
            rej0, totals0, frames0 = snapshot()
            with gwtest.connect(where[1]) as s:
                t0 = time.monotonic()
                if callable(send):
                    dt = send(s)
                else:
                    s.sendall(send)
                    if fin:
                        s.shutdown(socket.SHUT_WR)
                    dt = closed_within(s, within)
                if dt is None:
                    self.fail(f"{where[0]}: {name}: expected gw to close the connection ({reason}) "
                              f"within {within:.1f}s; still open")
                if timing:
                    lo, hi = timing
                    el = time.monotonic() - t0
                    self.assertTrue(lo <= el <= hi, f"{where[0]}: {name}: closed after {el:.2f}s, "
                                                    f"want {lo}..{hi}s")
            want = dict(rej0)
            want[reason] += 1

            def counted():
                return snapshot()[0] == want
            try:
                gwtest.wait_until(counted, T(3), interval=0.02, msg="reject counter")
            except AssertionError:
                rej1 = snapshot()[0]
                diff = {k: rej1[k] - rej0[k] for k in rej1 if rej1[k] != rej0[k]}
                self.fail(f"{where[0]}: {name}: expected frame_rejects.{reason} +1 and nothing else; "
                          f"changes: {diff}")
            _, totals1, frames1 = snapshot()
            self.assertEqual(totals1, totals0, f"{where[0]}: {name}: gw opened a backend connection "
                                               f"(per-host total before/after)")
            self.assertEqual(frames1, frames0, f"{where[0]}: {name}: a backend received frames")

        def slow_drip(s):
            """Header declaring 50 bytes, then one byte every 100 ms: never a whole frame in 500 ms."""
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(lie(50) + b"{")
            t0 = time.monotonic()
            while time.monotonic() - t0 < T(4):
                try:
                    s.sendall(b" ")
                except OSError:
                    return time.monotonic() - t0
                dt = closed_within(s, 0.1)
                if dt is not None:
                    return time.monotonic() - t0
            return None

        def reset_after(data):
            """Sends `data`, then resets (SO_LINGER 0): the end of what the
            device sent, counted as a FIN after it is (mode connection
            counted nothing)."""
            def send(s):
                s.sendall(data)
                time.sleep(0.1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
                return 0.0
            return send

        for where in (("conn", port_of(conn)), ("mux", port_of(mux))):
            for name, reason, data, fin in cases:
                check(where, name, reason, data, fin)
            check(where, "reset inside the header", "header_truncated", reset_after(b"\x02\x01\x00"))
            check(where, "reset inside the body", "body_truncated", reset_after(lie(20) + b'{"devid":"x"'))
            check(where, "slow drip past first_frame_timeout_ms", "first_frame_timeout", slow_drip,
                  timing=(0.4, T(1.6)))
            check(where, "silent client", "first_frame_timeout", lambda s: closed_within(s, T(3)),
                  timing=(0.4, T(1.6)))
        check(("incl", port_of(incl)), "length smaller than the header it includes", "bad_length",
              HDR.pack(HEARTBEAT, 1, 0, 3) + b"{}")
        check(("incl", port_of(incl)), "body_len above max_body (header included)", "body_too_large",
              HDR.pack(HEARTBEAT, 1, 0, 1007))

        # a port probe (connect, close without a byte) is no bad frame
        rej0 = gw.status()["frame_rejects"]
        for port in (port_of(conn), port_of(mux)):
            with gwtest.connect(port) as s:
                s.shutdown(socket.SHUT_WR)
                self.assertIsNotNone(closed_within(s, T(3)), "a probe's FIN should end the connection")
            gwtest.connect(port).close()
        time.sleep(0.2)
        self.assertEqual(gw.status()["frame_rejects"], rej0, "a connection closed before its first byte "
                                                            "must not count as a reject")

        # per-frame mode: a bad frame after good ones closes the device too
        rej0 = gw.status()["frame_rejects"]
        with gwtest.connect(port_of(mux)) as s:
            self.assertIn(heartbeat(s, "good-1"), ("a", "b"))
            s.sendall(frame({"devid": "x"}, ftype=7))
            self.assertIsNotNone(closed_within(s, T(3)), "mux: a bad later frame must close the device connection")
        gwtest.wait_until(lambda: gw.status()["frame_rejects"]["bad_type"] == rej0["bad_type"] + 1, T(3),
                          msg="mux: bad_type counted for a later frame")

        # valid connections still work, at the limits
        totals0 = sum(host_totals(gw.status()).values())
        pad = 1000 - len(body_bytes({"devid": "limit-body", "pad": ""}))
        for where in (("conn", port_of(conn)), ("mux", port_of(mux))):
            with gwtest.connect(where[1]) as s:
                self.assertIn(heartbeat(s, "k" * 16), ("a", "b"), f"{where[0]}: a 16-byte key (max_key 16)")
            with gwtest.connect(where[1]) as s:
                s.sendall(frame({"devid": "limit-body", "pad": "x" * pad}, HEARTBEAT, 1, 5))
                self.assertEqual(read_heartbeat_reply(s, 5)[0], "limit-body",
                                 f"{where[0]}: a body of exactly max_body (1000) bytes")
            with gwtest.connect(where[1]) as s:
                s.sendall(frame('{"devid":"deep-ok","a":[[1]]}', HEARTBEAT, 1, 6))
                self.assertEqual(read_heartbeat_reply(s, 6)[0], "deep-ok", f"{where[0]}: nesting depth 3")
            with gwtest.connect(where[1]) as s:
                s.sendall(frame({"devid": "login-1"}, LOGIN, 1, 8))
                self.assertEqual(read_frame(s), (LOGIN, 1, 8, body_bytes({"devid": "login-1"})),
                                 f"{where[0]}: a login frame (type 1) is echoed")
        self.assertGreater(sum(host_totals(gw.status()).values()), totals0)
        self.assertEqual(gw.status()["frame_rejects"]["bad_type"], rej0["bad_type"] + 1)
        self.assert_idle(gw)

    def test_json_depth_limit_boundary(self):
        """max_depth 4: nesting of exactly 4 is accepted, 5 is json_too_deep."""
        backends = self.device_backends(["a"])
        lst = frame_listener("dev", frame_opts={"max_depth": 4})
        gw, _ = self.frame_gateway(backends, [lst], workers=1)
        with gwtest.connect(port_of(lst)) as s:
            s.sendall(frame('{"devid":"d4","a":[[[1]]]}', HEARTBEAT, 1, 4))   # object + 3 arrays = 4
            try:
                got = read_heartbeat_reply(s, 4)[0]
            except (EOFError, ConnectionResetError):
                self.fail("nesting depth 4 with max_depth 4 was refused (frame_rejects: "
                          f"{ {k: v for k, v in gw.status()['frame_rejects'].items() if v} })")
            self.assertEqual(got, "d4")
        with gwtest.connect(port_of(lst)) as s:
            s.sendall(frame('{"devid":"d5","a":[[[[1]]]]}', HEARTBEAT, 1, 5))  # depth 5
            self.assertIsNotNone(closed_within(s, T(3)), "depth 5 with max_depth 4 must be refused")
        gwtest.wait_until(lambda: gw.status()["frame_rejects"]["json_too_deep"] == 1, T(3),
                          msg="json_too_deep == 1")

    # ------------------------------------------------------------------------
    # a dead owner: the frame goes to the next host, replayed whole

    def test_unreachable_owner_fails_over_with_the_frame_replayed(self):
        """The owner of a devid refuses connections (its process is gone, gw
        still lists it; max_fails 0 so it stays listed as usable): in
        connection mode the first frame and the bytes behind it are replayed
        to the next host (chash's next point); in frame mode the frame is
        sent whole to that host."""
        backends = self.device_backends(["a", "b", "c"])
        conn = frame_listener("conn")
        mux = frame_listener("mux", frame_opts={"mode": "frame"})
        gw, hosts = self.frame_gateway(backends, [conn, mux], max_fails=0)
        cands = [f"tracker-{i}" for i in range(100)]
        pick = hashpick(hosts, cands)
        on_a = [d for d in cands if pick[d] == "a"][:5]
        self.assertEqual(len(on_a), 5)
        nxt = hashpick(hosts[1:], on_a)
        for d in on_a:
            self.assertEqual(owner(port_of(conn), d), "a")
        backends[0].stop()
        for i, d in enumerate(on_a):
            login = frame({"devid": d, "fw": "x" * i}, LOGIN, 1, 10 + i)
            with gwtest.connect(port_of(conn)) as s:
                s.sendall(login + hb(d, 20 + i))
                self.assertEqual(gwtest.recv_exact(s, len(login)), login,
                                 f"{d}: login echo after failing over from dead host a")
                got, backend, _ = read_heartbeat_reply(s, 20 + i)
                self.assertEqual((got, backend), (d, nxt[d]), f"{d}: owner a is dead; want chash's next host")
        with gwtest.connect(port_of(mux)) as s:
            s.sendall(b"".join(hb(d, 30 + i) for i, d in enumerate(on_a)))
            got = {}
            for _ in on_a:
                devid, backend, t = read_heartbeat_reply(s)
                self.assertEqual(devid, on_a[t - 30])
                got[devid] = backend
            self.assertEqual(got, nxt, "per-frame: frames for dead host a's devids go to chash's next host")
        st = gw.status()
        self.assertEqual(sum(st["frame_rejects"].values()), 0)
        self.assertEqual(worker_sum(st, "no_host"), 0)
        self.assert_idle(gw)

    def test_host_that_resets_before_the_connect_is_seen_is_connected(self):
        """A host accepts gw's connection and resets it before the worker has
        handled the connect (SO_ERROR says ECONNRESET; see gwtest.ResetHost):
        the handshake was done, so the connect is no passive failure (max_fails
        1 would take it out). In connection mode the session is connected and
        ends: the device gets the host's banner, then the end, and no other host
        is tried (the host may have had the first frame). In frame mode the
        link is connected and broke before the frame opened for it was written,
        as a fresh link reset later does: that is one passive failure (so the
        host is out), and the frame goes whole to the backup host. Both used to
        be failed connects."""
        rst = gwtest.ResetHost()
        self.addCleanup(rst.close)
        (b,) = self.device_backends(["b"])
        conn = frame_listener("conn")
        mux = frame_listener("mux", frame_opts={"mode": "frame"})
        cfg = self.make_config([dev_pool("p", [host("rst", rst.address)]), dev_pool("bk", [host("b", b.address)], 1)],
                               workers=1, listeners=[conn, mux],
                               upstream_opts={"connect_timeout_ms": 20000, "max_fails": 1, "fail_timeout_ms": 60000})
        gw = self.gateway(cfg)
        (worker,) = gw.worker_pids()
        with gwtest.connect(port_of(conn), timeout=T(10)) as s:
            s.sendall(hb("dev-1"))
            rst.reset_next(worker, b"FULL\n")
            got, secs = bytes_until_eof(s, T(5))
            self.assertEqual((got, secs is not None), (b"FULL\n", True),
                             "connection mode: the host's banner, then the end")
        self.assertHost(gw, "app/p/rst", health="up", failures=0)
        with gwtest.connect(port_of(mux), timeout=T(10)) as s:
            s.sendall(hb("dev-2", 7))
            rst.reset_next(worker)
            self.assertEqual(read_heartbeat_reply(s, 7)[:2], ("dev-2", "b"), "frame mode: the frame goes to b")
        self.assertHost(gw, "app/p/rst", health="down", failures=1)
        self.assert_idle(gw)

    # ------------------------------------------------------------------------
    # hash_key "ip" on a frame listener

    def test_hash_key_ip_hashes_the_client_address_and_still_checks_frames(self):
        backends = self.device_backends(["a", "b", "c"])
        lst = frame_listener("dev", hash_key="ip", frame_opts={"allowed_types": [1, 2, 3]})
        # No pool method: a frame listener's pools default to chash whatever its hash_key.
        gw, hosts = self.frame_gateway(backends, [lst])
        sources = [f"127.0.{i // 200}.{i % 200 + 2}" for i in range(24)]
        want = hashpick(hosts, sources)
        self.assertGreater(len(set(want.values())), 1)
        for n, src in enumerate(sources):
            seen = set()
            for k in range(3):
                with socket.socket() as s:
                    s.settimeout(T(5))
                    s.bind((src, 0))
                    s.connect((gwtest.LOOPBACK, port_of(lst)))
                    seen.add(heartbeat(s, f"d-{n}-{k}"))   # a different devid each time
            self.assertEqual(seen, {want[src]}, f"hash_key ip: client {src} must stick to its chash host")
        with gwtest.connect(port_of(lst)) as s:
            s.sendall(frame({"devid": "x"}, ftype=9))
            self.assertIsNotNone(closed_within(s, T(3)), "hash_key ip: a first frame with a type not in "
                                                         "allowed_types must still be refused")
        gwtest.wait_until(lambda: gw.status()["frame_rejects"]["bad_type"] == 1, T(3), msg="bad_type == 1")
        # The body is checked too, key included, though the key is not hashed.
        with gwtest.connect(port_of(lst)) as s:
            s.sendall(frame('{"devid": nope}'))
            self.assertIsNotNone(closed_within(s, T(3)), "hash_key ip: invalid JSON must still be refused")
        with gwtest.connect(port_of(lst)) as s:
            s.sendall(frame({"id": "x"}))
            self.assertIsNotNone(closed_within(s, T(3)), "hash_key ip: a frame without the key must be refused")
        gwtest.wait_until(lambda: gw.status()["frame_rejects"]["bad_json"] == 1 and
                          gw.status()["frame_rejects"]["key_missing"] == 1, T(3), msg="bad_json, key_missing == 1")

    # ------------------------------------------------------------------------
    # other balancing methods on frame listeners

    def test_other_balancing_methods_on_frame_listeners(self):
        """maglev (a hash method) over the frame key: a devid always lands on
        the same backend, the one gw-hashpick --method maglev gives.
        round_robin ignores the key: 30 connections of one devid split
        10/10/10, and in mode "frame" 9 frames of one devid on one connection
        split 3/3/3. least_conn ignores the key too: 6 held connections of one
        devid take 2 per backend."""
        backends = self.device_backends(["a", "b", "c"])
        hosts = [host(b.name, b.address) for b in backends]
        mg, rr, rrmux, lc = (frame_listener("mg", "mg"), frame_listener("rr", "rr"),
                             frame_listener("rrmux", "rr", frame_opts={"mode": "frame"}), frame_listener("lc", "lc"))
        cfg = self.make_config([dev_pool("primary", hosts)], workers=2, listeners=[mg, rr, rrmux, lc])
        cfg["upstreams"] += [gwtest.upstream(n, [gwtest.pool("p", hosts, method=m)])
                             for n, m in (("mg", "maglev"), ("rr", "round_robin"), ("lc", "least_conn"))]
        gw = self.gateway(cfg)

        devids = [f"mg-{i}" for i in range(40)]
        want = hashpick(hosts, devids, "maglev")
        self.assertEqual(set(want.values()), {"a", "b", "c"})
        for _ in range(2):
            self.assertEqual(owners(port_of(mg), devids), want, "maglev: devid -> backend, as gw-hashpick says")

        got = collections.Counter(owner(port_of(rr), "one-devid") for _ in range(30))
        self.assertEqual(got, {"a": 10, "b": 10, "c": 10}, "round_robin: 30 connections of one devid")
        with gwtest.connect(port_of(rrmux)) as s:
            s.sendall(b"".join(hb("one-devid", t) for t in range(9)))
            got = collections.Counter(read_heartbeat_reply(s)[1] for _ in range(9))
        self.assertEqual(got, {"a": 3, "b": 3, "c": 3}, "round_robin, mode frame: 9 frames of one devid")

        held = []
        for t in range(6):
            s = gwtest.connect(port_of(lc))
            self.addCleanup(s.close)
            held.append(heartbeat(s, "one-devid", t))
        self.assertEqual(collections.Counter(held), {"a": 2, "b": 2, "c": 2},
                         f"least_conn: 6 held connections of one devid, in order {held}")
        self.assertEqual(worker_sum(gw.status(), "hash_fallbacks"), 0)

    # ------------------------------------------------------------------------
    # bounded memory: the per-frame read deadline and the whole-frame buffer cap

    def test_frame_timeout_bounds_each_later_frame(self):
        """Mode "frame", frame_timeout_ms 500 (first_frame_timeout_ms 5000):
        frames that each take 300 ms to drip in are fine however long the
        connection lives, but a frame dripped past 500 ms closes the device
        (frame_timeout), although a byte arrives every 100 ms."""
        backends = self.device_backends(["a"])
        mux = frame_listener("mux", frame_opts={"mode": "frame", "frame_timeout_ms": 500,
                                                "first_frame_timeout_ms": 5000})
        gw, _ = self.frame_gateway(backends, [mux], workers=1)
        with gwtest.connect(port_of(mux)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.assertEqual(heartbeat(s, "drip-1", 1), "a")
            for t in (2, 3, 4):                         # 3 frames, 300 ms each: 900 ms in all
                f = hb("drip-1", t)
                for chunk in (f[:3], f[3:10], f[10:]):
                    s.sendall(chunk)
                    time.sleep(0.1)
                self.assertEqual(read_heartbeat_reply(s, t)[0], "drip-1")
            s.sendall(HDR.pack(HEARTBEAT, 1, 5, 50) + b"{")
            t0 = time.monotonic()
            closed = None
            while closed is None and time.monotonic() - t0 < T(4):
                try:
                    s.sendall(b" ")
                except OSError:
                    closed = time.monotonic() - t0
                    break
                data, dt = bytes_until_eof(s, 0.1)
                self.assertEqual(data, b"")
                if dt is not None:
                    closed = time.monotonic() - t0
            self.assertIsNotNone(closed, "a frame dripped past frame_timeout_ms must close the device")
            self.assertTrue(0.4 <= closed <= T(1.5), f"closed {closed:.2f}s after the frame started (want ~0.5)")
        gwtest.wait_until(lambda: gw.status()["frame_rejects"]["frame_timeout"] == 1, T(3), msg="frame_timeout 1")
        self.assertEqual(sum(gw.status()["frame_rejects"].values()), 1)
        self.assert_idle(gw)

    def test_whole_frame_buffers_are_capped_per_worker(self):
        """max_frame_buffers 2, frames up to 60 KB (above the 16 KiB relay
        buffers), one worker: two devices holding half-sent big frames take
        both whole-frame buffers; a third is refused at once (no_frame_buffer)
        and reaches no backend; once one frame is whole and sent its buffer is
        free for the next device. In both modes, each listener with its own cap."""
        echo = self.backend("echo", mode="echo")
        dev = self.device_backend("d")
        opts = {"max_body": 60000, "max_frame_buffers": 2}
        conn = frame_listener("conn", frame_opts=dict(opts))
        mux = frame_listener("mux", "dev", frame_opts=dict(opts, mode="frame"))
        cfg = self.make_config([dev_pool("primary", [host("echo", echo.address)])], workers=1,
                               listeners=[conn, mux])
        cfg["upstreams"].append(gwtest.upstream("dev", [dev_pool("p", [host("d", dev.address)])]))
        gw = self.gateway(cfg)

        def big(devid, t):
            return frame({"devid": devid, "blob": "z" * 50000}, DATA, 1, t)

        for name, port in (("conn", port_of(conn)), ("mux", port_of(mux))):
            frames = {k: big(f"{name}-{k}", k) for k in range(1, 5)}
            half = 30000
            s1, s2 = gwtest.connect(port), gwtest.connect(port)
            self.addCleanup(s1.close)
            self.addCleanup(s2.close)
            s1.sendall(frames[1][:half])
            s2.sendall(frames[2][:half])
            time.sleep(0.3)                             # both moved into whole-frame buffers
            rej0 = gw.status()["frame_rejects"]["no_frame_buffer"]
            with gwtest.connect(port) as s3:
                s3.sendall(frames[3][:half])
                data, dt = bytes_until_eof(s3, T(3))
                self.assertIsNotNone(dt, f"{name}: a 3rd big frame with max_frame_buffers 2 must be refused")
                self.assertLess(dt, 1.0, f"{name}: refused at once")
                self.assertEqual(data, b"")
            self.assertEqual(gw.status()["frame_rejects"]["no_frame_buffer"], rej0 + 1, f"{name}: counted")
            s1.sendall(frames[1][half:])
            self.assertEqual(gwtest.recv_exact(s1, len(frames[1])), frames[1], f"{name}: frame 1 whole")
            with gwtest.connect(port) as s4:           # frame 1's buffer is free again
                s4.sendall(frames[4][:half])
                time.sleep(0.2)
                s4.sendall(frames[4][half:])
                self.assertEqual(gwtest.recv_exact(s4, len(frames[4])), frames[4], f"{name}: frame 4 whole")
            s2.sendall(frames[2][half:])
            self.assertEqual(gwtest.recv_exact(s2, len(frames[2])), frames[2], f"{name}: frame 2 whole")
            s1.close()
            s2.close()
        self.assertEqual(echo.count, 3, "conn: frames 1, 2 and 4 reached the echo backend, frame 3 nothing")
        self.assertEqual(dev.stats()["frames"], 3, "mux: frames 1, 2 and 4 reached the device backend")
        st = gw.status()
        self.assertEqual({k: v for k, v in st["frame_rejects"].items() if v}, {"no_frame_buffer": 2})
        self.assert_idle(gw)

    def test_frame_mode_whole_frame_buffer_goes_back_while_small_frames_follow(self):
        """Mode "frame", max_frame_buffers 1, one worker: a device sends a big
        frame and, in the same segment as its last bytes, the start of a
        heartbeat (a device streaming small frames has one on the way). Once
        the big frame is out its whole-frame buffer is given back, though the
        device's socket never drained with nothing buffered: a second device's
        big frame is taken, not refused (no_frame_buffer)."""
        dev = self.device_backend("d")
        mux = frame_listener("mux", frame_opts={"mode": "frame", "max_body": 60000, "max_frame_buffers": 1})
        gw, _ = self.frame_gateway([dev], [mux], workers=1)
        port = port_of(mux)
        big1 = frame({"devid": "big-1", "blob": "y" * 50000}, DATA, 1, 1)
        big2 = frame({"devid": "big-2", "blob": "z" * 50000}, DATA, 1, 2)
        beat = hb("big-1", 7)
        with gwtest.connect(port, timeout=T(5)) as s1:
            s1.sendall(big1[:-10])
            time.sleep(0.2)                            # in the whole-frame buffer, waiting for its end
            s1.sendall(big1[-10:] + beat[:HEADER + 2])  # one read: the frame's end and a partial heartbeat
            self.assertEqual(gwtest.recv_exact(s1, len(big1)), big1, "the big frame went out and came back")
            with gwtest.connect(port, timeout=T(5)) as s2:
                s2.sendall(big2)
                try:
                    got = gwtest.recv_exact(s2, len(big2))
                except (EOFError, ConnectionResetError):  # refused: no_frame_buffer
                    got = None
                self.assertEqual(got, big2, "the first device's whole-frame buffer must be free once its frame "
                                            f"is out; frame_rejects {gw.status()['frame_rejects']}")
            s1.sendall(beat[HEADER + 2:])
            self.assertEqual(read_heartbeat_reply(s1, 7)[0], "big-1", "the heartbeat kept across the move")
        self.assertEqual(sum(gw.status()["frame_rejects"].values()), 0)
        self.assert_idle(gw)

    # ------------------------------------------------------------------------
    # gwload through gw

    def test_gwload_through_gw(self):
        """gwload (2 processes, 60 devices, 5 heartbeats/s each for 2 s) through
        a frame listener to 2 device backends: its JSON report has every
        device established, no error, a heartbeat rate near 300/s, hold
        latencies in order, and the backends saw exactly its 60 devids, each
        on its chash owner."""
        backends = self.device_backends(["a", "b"])
        lst = frame_listener("dev")
        gw, hosts = self.frame_gateway(backends, [lst])
        exe = os.path.join(gwtest.BUILD_DIR, "gwload")
        cmd = [exe, "--target", f"{gwtest.LOOPBACK}:{port_of(lst)}", "-c", "60", "--connect-rate", "300", "-r", "5",
               "-T", "2", "--procs", "2", "--devid-prefix", "gl-", "--json"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=T(30), stdin=subprocess.DEVNULL)
        self.assertEqual(out.returncode, 0, f"gwload failed: {out.stderr[-1000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual((r["mode"], r["procs"], r["connections"], r["established"]), ("hold", 2, 60, 60))
        self.assertEqual((r["errors"], r["connect_errors"], r["error_detail"]), (0, 0, {}))
        self.assertTrue(0.1 <= r["ramp_s"] <= T(3), f"ramp {r['ramp_s']} s for 60 at 300/s")
        self.assertTrue(1.9 <= r["duration_s"] <= T(3), r["duration_s"])
        self.assertTrue(200 <= r["frames_per_s"] <= 400, f"hold replies/s {r['frames_per_s']} (want ~300)")
        self.assertTrue(200 <= r["hb_sent_per_s"] <= 400, r["hb_sent_per_s"])
        self.assertEqual(r["hb_sent"], r["hb_received"], "the replies due at the end of the hold are awaited")
        hold, ramp, first = r["hb_latency_us"], r["hb_ramp_latency_us"], r["first_latency_us"]
        self.assertEqual(hold["count"] + ramp["count"], r["hb_received"], "every reply timed, in one phase")
        self.assertTrue(abs(hold["count"] - r["frames_per_s"] * r["duration_s"]) <= 5, (hold, r["frames_per_s"]))
        self.assertEqual(first["count"], 60)
        for name, h in (("hold", hold), ("first", first)):
            self.assertTrue(0 < h["p50"] <= h["p99"] <= h["p999"] <= h["max"] < 5_000_000, f"{name}: {h}")
            self.assertTrue(0 < h["mean"] <= h["max"], f"{name}: {h}")
        want = hashpick(hosts, [f"gl-{i}" for i in range(60)])
        for b in backends:
            self.assertEqual(b.stats()["devids"], sorted(d for d, n in want.items() if n == b.name),
                             f"devids seen by {b.name}")
        st = gw.status()
        self.assertEqual(worker_sum(st, "accepted"), 60)
        self.assertEqual(sum(st["frame_rejects"].values()), 0)
        self.assert_idle(gw)
        # Several targets (how the benchmark reaches the backends directly):
        # connection i goes to target i modulo 2.
        for b in backends:
            b.reset()
        cmd = [exe, "--target", ",".join(b.address for b in backends), "-c", "20", "--connect-rate", "0", "-r", "2",
               "-T", "1", "--devid-prefix", "direct-", "--json"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=T(30), stdin=subprocess.DEVNULL)
        self.assertEqual(out.returncode, 0, f"gwload failed: {out.stderr[-1000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual((r["established"], r["errors"]), (20, 0))
        for k, b in enumerate(backends):
            self.assertEqual(b.stats()["devids"], sorted(f"direct-{i}" for i in range(k, 20, 2)),
                             f"--target A,B: {b.name} gets connections {k}, {k + 2}, ...")

    def test_gwload_counts_heartbeats_never_answered(self):
        """A target that echoes the login but never answers a heartbeat: a hold
        shorter than --timeout-ms ended with those heartbeats in flight and
        gwload reported no error and exited 0. After the hold it waits for the
        replies still due, at most --timeout-ms, and counts the missing ones:
        one timeout per connection, exit 1."""
        srv = socket.socket()
        self.addCleanup(srv.close)
        srv.bind((gwtest.LOOPBACK, 0))
        srv.listen(16)
        conns = []
        self.addCleanup(lambda: [c.close() for c in conns])

        def serve():
            # Echo each connection's login frame (the first 6 + body_len bytes); read
            # and ignore everything after it.
            while True:
                try:
                    c, _ = srv.accept()
                except OSError:
                    return
                conns.append(c)
                threading.Thread(target=echo_login, args=(c,), daemon=True).start()

        def echo_login(c):
            buf = b""
            try:
                while len(buf) < 6 or len(buf) < 6 + struct.unpack(">H", buf[4:6])[0]:
                    chunk = c.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                c.sendall(buf[:6 + struct.unpack(">H", buf[4:6])[0]])
                while c.recv(4096):
                    pass
            except OSError:
                pass
        threading.Thread(target=serve, daemon=True).start()
        exe = os.path.join(gwtest.BUILD_DIR, "gwload")
        cmd = [exe, "--target", "%s:%d" % srv.getsockname(), "-c", "3", "--connect-rate", "0", "-r", "10",
               "-T", "0.5", "--timeout-ms", "1500", "--json"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=T(30), stdin=subprocess.DEVNULL)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual((r["established"], r["hb_received"]), (3, 0))
        self.assertTrue(r["hb_sent"] >= 3, r)
        self.assertEqual((r["errors"], r["error_detail"]), (3, {"timeout": 3}))
        self.assertEqual(out.returncode, 1, out.stderr[-1000:])
        self.assertTrue(0.4 <= r["duration_s"] <= T(2), r["duration_s"])

    def test_gwload_churn_counts_logins_still_unanswered_at_the_end(self):
        """A target that echoes the first 10 logins and then never answers
        one (it keeps those connections open): the churn slots stall on their
        login, and with -T shorter than --timeout-ms gwload ended the run with
        them under way, reported no error, a first-frame latency of the
        finished cycles only, and exited 0. Now the cycles under way at the
        end are followed, at most --timeout-ms, to their echo or a timeout:
        one per stalled slot, exit 1; the rate still counts the cycles done
        within -T."""
        srv = socket.socket()
        self.addCleanup(srv.close)
        srv.bind((gwtest.LOOPBACK, 0))
        srv.listen(64)
        conns = []
        self.addCleanup(lambda: [c.close() for c in conns])

        def serve():
            while True:
                try:
                    c, _ = srv.accept()
                except OSError:
                    return
                conns.append(c)
                threading.Thread(target=echo_login, args=(c, len(conns) <= 10), daemon=True).start()

        def echo_login(c, answer):
            buf = b""
            try:
                while len(buf) < 6 or len(buf) < 6 + struct.unpack(">H", buf[4:6])[0]:
                    chunk = c.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                if answer:
                    c.sendall(buf[:6 + struct.unpack(">H", buf[4:6])[0]])
                while c.recv(4096):
                    pass
            except OSError:
                pass
        threading.Thread(target=serve, daemon=True).start()
        exe = os.path.join(gwtest.BUILD_DIR, "gwload")
        cmd = [exe, "--target", "%s:%d" % srv.getsockname(), "--churn", "-c", "3", "--connect-rate", "0",
               "-T", "0.5", "--timeout-ms", "1500", "--json"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=T(30), stdin=subprocess.DEVNULL)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual((r["mode"], r["churn_connects"], r["established"]), ("churn", 10, 10), r)
        self.assertEqual(r["first_latency_us"]["count"], 10)
        self.assertEqual((r["errors"], r["error_detail"]), (3, {"timeout": 3}))
        self.assertEqual(out.returncode, 1, out.stderr[-1000:])
        self.assertTrue(0.4 <= r["duration_s"] <= T(2), r["duration_s"])
        self.assertTrue(15 <= r["churn_connects_per_s"] <= 25, r)  # 10 cycles / 0.5 s

    def test_gwload_ipv6_src_picks_its_port_per_destination(self):
        """--src with IPv6: gwload set IP_BIND_ADDRESS_NO_PORT on IPv4 sockets
        only, so an IPv6 bind took a port of its own at once, and a source
        address ran out of ports after one local port range in all (churn: no
        TIME_WAIT reuse either) instead of one per destination. In a network
        namespace of its own with a local port range of 2 ports, 4 connections
        from [::1] to 2 device backends on [::1]: 2 failed with
        connect:EADDRINUSE; now all 4 are established."""
        unshare = netns.tool("unshare")
        self.assertIsNotNone(unshare, "unshare(1) (util-linux) is needed")
        script = r"""
set -e
ip link set lo up
"$1" --mode device --listen "[::1]:7101" --name a >/dev/null 2>&1 & a=$!
"$1" --mode device --listen "[::1]:7102" --name b >/dev/null 2>&1 & b=$!
trap 'kill $a $b' EXIT
for _ in $(seq 50); do
  python3 -c 'import socket; [socket.create_connection(("::1", p), 1).close() for p in (7101, 7102)]' 2>/dev/null && break
  sleep 0.1
done
echo "40000 40001" >/proc/sys/net/ipv4/ip_local_port_range  # after the probes: they take ports too
"$2" --target "[::1]:7101,[::1]:7102" --src ::1 -c 4 --connect-rate 0 -r 0 -T 0.2 --json
"""
        out = subprocess.run([unshare, "--net", "bash", "-c", script, "sh",
                              os.path.join(gwtest.BUILD_DIR, "gw-backend"), os.path.join(gwtest.BUILD_DIR, "gwload")],
                             capture_output=True, text=True, timeout=T(30), stdin=subprocess.DEVNULL)
        self.assertTrue(out.stdout.strip(), f"no report: {out.stderr[-1000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual((r["established"], r["errors"], r["error_detail"]), (4, 0, {}), r)
        self.assertEqual(out.returncode, 0, out.stderr[-1000:])

    def test_backend_usage_errors_are_one_line_exit_2(self):
        """gw-backend (the device backends here, the demo's and the benches')
        answers a command-line error with one line and exit 2, as gwd and gwctl
        do; --help prints the usage on stdout and exits 0 (it exited 2). An
        unknown option last on the line is named as unknown (it was "missing
        value for")."""
        exe = os.path.join(gwtest.BUILD_DIR, "gw-backend")
        ok = ["--listen", f"{gwtest.LOOPBACK}:0", "--name", "x"]
        for args, says in ((ok + ["--bogus"], "unknown option --bogus"),
                           (ok + ["--threads", "0"], "--threads must be an integer in 1..256"),
                           (["--listen", f"{gwtest.LOOPBACK}:0"], "--name is required"),
                           (ok + ["--mode"], "missing value for --mode"),
                           (["--listen", "nowhere", "--name", "x"], "bad --listen address")):
            r = subprocess.run([exe] + args, capture_output=True, text=True, timeout=T(10),
                               stdin=subprocess.DEVNULL)
            self.assertEqual(r.returncode, 2, f"{args}: {r.stderr!r}")
            self.assertEqual(len(r.stderr.splitlines()), 1, f"{args}: {r.stderr!r}")
            self.assertIn(says, r.stderr, args)
            self.assertTrue(r.stderr.startswith("gw-backend: ") and "(see gw-backend --help)" in r.stderr, r.stderr)
        r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=T(10), stdin=subprocess.DEVNULL)
        self.assertEqual((r.returncode, r.stderr), (0, ""))
        self.assertTrue(r.stdout.startswith("usage: gw-backend --listen IP:PORT --name NAME"), r.stdout)

    # ------------------------------------------------------------------------
    # 7. JSON pointer keys

    def test_json_pointer_key_routes_like_the_plain_key(self):
        """key "/device/id" routes {"device":{"id":X}} where key "devid" routes
        {"devid":X} (a decoy top-level devid is ignored), in both modes."""
        backends = self.device_backends(["a", "b", "c"])
        plain = frame_listener("plain")
        ptr = frame_listener("ptr", frame_opts={"key": "/device/id"})
        ptr_mux = frame_listener("ptrmux", frame_opts={"key": "/device/id", "mode": "frame"})
        gw, _ = self.frame_gateway(backends, [plain, ptr, ptr_mux])
        ids = [f"node-{i}" for i in range(40)]
        want = owners(port_of(plain), ids)
        self.assertEqual(set(want.values()), {"a", "b", "c"})

        def body(i):
            return {"devid": "decoy", "device": {"model": "x1", "id": i}}
        got = {i: owner(port_of(ptr), None, body(i)) for i in ids}
        self.assertEqual(got, want, "key /device/id must route like key devid for the same id")
        with gwtest.connect(port_of(ptr_mux)) as s:
            s.sendall(b"".join(frame(body(i), HEARTBEAT, 1, n) for n, i in enumerate(ids)))
            got = {}
            for _ in ids:
                _, backend, t = read_heartbeat_reply(s)
                got[ids[t]] = backend
        self.assertEqual(got, want, "per-frame, key /device/id")
        # the pointer's target missing or not a string
        for b, reason in (({"devid": "x"}, "key_missing"), ({"device": "x"}, "key_missing"),
                          ({"device": {"id": 7}}, "key_not_string")):
            before = gw.status()["frame_rejects"][reason]
            with gwtest.connect(port_of(ptr)) as s:
                s.sendall(frame(b))
                self.assertIsNotNone(closed_within(s, T(3)), f"body {b} must be refused ({reason})")
            gwtest.wait_until(lambda: gw.status()["frame_rejects"][reason] == before + 1, T(3),
                              msg=f"{reason} counted for body {b}")


if __name__ == "__main__":
    gwtest.main()
