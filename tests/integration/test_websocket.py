#!/usr/bin/python3
"""WebSocket through gw's http listener (RFC 6455 over RFC 9110 Upgrade).

A real client and server (python3-websockets, asyncio API: Debian's 10.4 has
no sync API) talk through gw: text and binary echo, fragmented messages (the
fragment boundaries reach the other side unchanged), 16 MiB messages, ping and
pong both ways, close codes and reasons both ways, 50 sessions at once.
Raw sockets check the smuggling guard (a 426 or 200 answer to an Upgrade
request keeps HTTP: the next bytes are parsed and routed as a request), 101
without an Upgrade request (502), early data and half-close in the tunnel, the
tunnel idle timeout (upstream idle_timeout_ms), sticky sessions by hash key
(over two workers; a host downed or dead moves only its keys; on_host_remove
"close" ends its tunnels), 16 MiB with slow readers both ways, the access log
line, host active counts and metrics of tunnels ended by a close or a reset
from either side, a host's bytes before its reset reaching a slow client, and the `tunnels` counter of `gwctl status --json`. Every
gateway also has a tcp listener, so that under GW_ENGINE=io_uring the workers
run the ring (http listeners on its nested epoll), not the plain epoll loop.
"""

import asyncio
import collections
import fcntl
import hashlib
import json
import os
import queue
import select
import socket
import struct
import sys
import termios
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import GwTestCase, T, host, pool, upstream  # noqa: E402
from httpbackend import HttpBackend, Reader, parse_head, hget, read_response  # noqa: E402
from httpbackend import iter_pattern as hb_iter_pattern  # noqa: E402
from httpbackend import pattern_bytes as hb_pattern  # noqa: E402
from httpbackend import pattern_sha256 as hb_pattern_sha256  # noqa: E402
from httpbackend import request as hb_request  # noqa: E402

try:
    import websockets
    import websockets.exceptions
    from websockets.legacy.client import WebSocketClientProtocol
    from websockets.legacy.server import WebSocketServerProtocol
except ImportError:  # pragma: no cover
    sys.stderr.write("test_websocket: python3-websockets is missing (tools/setup.sh installs it)\n")
    raise

MiB = 1024 * 1024
BIG = 16 * MiB
MAX_SIZE = 32 * MiB
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
WS_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# ----------------------------------------------------------------------------
# frame recording protocols: which data frames made up each message

class _FrameLog:
    def _init_log(self):
        self.msg_frames = collections.deque()   # per message: [(opcode, fin, length)]
        self._cur = []

    async def read_message(self):
        self._cur = []
        msg = await super().read_message()
        if msg is not None:
            self.msg_frames.append(list(self._cur))
        return msg

    async def read_data_frame(self, max_size):
        f = await super().read_data_frame(max_size)
        if f is not None:
            self._cur.append((int(f.opcode), bool(f.fin), len(f.data)))
        return f


class RecServerProtocol(_FrameLog, WebSocketServerProtocol):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._init_log()


class RecClientProtocol(_FrameLog, WebSocketClientProtocol):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._init_log()


def split_like(msg, sizes):
    out, off = [], 0
    for n in sizes:
        out.append(msg[off:off + n])
        off += n
    return out


# ----------------------------------------------------------------------------
# the WebSocket backend: a websockets server on its own event loop thread

class WsBackend:
    """Echo server. Every message is echoed with the same fragmentation it
    arrived with. Text commands:
      "__name__"            -> the backend's name
      "__ping__"            -> the server pings the client, waits for the pong,
                               then sends "server ping answered"
      "__close__ CODE WHY"  -> the server closes with that code and reason
      "__push__ N MS"       -> N text messages "tick I", one every MS ms
    The 101 answer carries "X-Backend: NAME". Each session is recorded
    (path, request headers, per-message frames, the close code and reason the
    server received, errors)."""

    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.sessions = []
        self.errors = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=f"ws-{name}")
        self.thread.start()

        async def start():
            return await websockets.serve(
                self._handler, gwtest.LOOPBACK, 0, create_protocol=RecServerProtocol,
                max_size=MAX_SIZE, max_queue=64, ping_interval=None, close_timeout=5,
                extra_headers=[("X-Backend", name)], compression=None)
        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(T(10))
        self.port = self.server.sockets[0].getsockname()[1]
        self.address = f"{gwtest.LOOPBACK}:{self.port}"

    def __repr__(self):
        return f"WsBackend({self.name!r}, {self.address}, sessions={len(self.sessions)}, errors={self.errors[:3]})"

    @property
    def count(self):
        with self.lock:
            return len(self.sessions)

    async def _handler(self, ws, path):
        rec = {"path": path, "headers": list(ws.request_headers.raw_items()), "messages": [],
               "close": None, "done": False}
        with self.lock:
            self.sessions.append(rec)
        try:
            while True:
                try:
                    msg = await ws.recv()
                except websockets.exceptions.ConnectionClosed:
                    break
                frames = ws.msg_frames.popleft() if ws.msg_frames else []
                rec["messages"].append(frames)
                if isinstance(msg, str) and msg.startswith("__"):
                    cmd = msg.split(" ", 2)
                    if cmd[0] == "__name__":
                        await ws.send(self.name)
                    elif cmd[0] == "__ping__":
                        waiter = await ws.ping(b"server-ping")
                        await asyncio.wait_for(waiter, T(5))
                        await ws.send("server ping answered")
                    elif cmd[0] == "__close__":
                        await ws.close(int(cmd[1]), cmd[2] if len(cmd) > 2 else "")
                    elif cmd[0] == "__push__":
                        n, ms = int(cmd[1]), int(cmd[2])
                        for i in range(n):
                            await asyncio.sleep(ms / 1000)
                            await ws.send(f"tick {i}")
                    else:
                        await ws.send("unknown command")
                    continue
                # websockets sends an iterable as one frame per item and then an
                # empty FIN continuation: echo the items, it adds that frame
                sizes = [f[2] for f in frames]
                if len(sizes) > 1 and frames[-1] == (0, True, 0):
                    sizes = sizes[:-1]
                if len(sizes) > 1 and sum(sizes) == len(msg if isinstance(msg, bytes) else msg.encode()):
                    if isinstance(msg, str):
                        raw = msg.encode()
                        await ws.send([p.decode() for p in split_like(raw, sizes)])
                    else:
                        await ws.send(split_like(msg, sizes))
                else:
                    await ws.send(msg)
        except Exception as e:  # noqa: BLE001 - recorded, the test checks
            with self.lock:
                self.errors.append(repr(e))
        finally:
            await ws.wait_closed()
            rec["close"] = (ws.close_code, ws.close_reason)
            rec["done"] = True

    def stop(self):
        if self.loop.is_closed():
            return  # stopped already (a test stopped it)

        async def shut():
            self.server.close()
            await asyncio.wait_for(self.server.wait_closed(), T(5))
        try:
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(T(10))
        except Exception:  # noqa: BLE001
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(T(5))
        if not self.thread.is_alive():
            self.loop.close()


# ----------------------------------------------------------------------------
# a raw backend: answers the upgrade request with a fixed head, then echoes

class RawUpgradeBackend:
    """Per connection: reads one request head, records it, sends `answer`
    (bytes, e.g. a 101 head plus early data), then echoes every byte; on the
    client's EOF it sends "bye\\n" and half-closes."""

    def __init__(self, name, answer, rst_after=None, slow=None):
        """rst_after: once that many bytes have come and been echoed, reset
        the connection (SO_LINGER 0) instead of echoing on. slow: read at most
        16 KiB at a time and sleep this many seconds after each echo (a slow
        reader, and a slow writer when the client does not read)."""
        self.name = name
        self.answer = answer
        self.rst_after = rst_after
        self.slow = slow
        self.resets = 0
        self.lock = threading.Lock()
        self.heads = []
        self.eofs = 0
        self.received = []
        self._stop = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((gwtest.LOOPBACK, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.address = f"{gwtest.LOOPBACK}:{self.port}"
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(T(20))
        try:
            rd = Reader(c)
            raw = rd.read_head()
            if raw is None:
                return
            with self.lock:
                self.heads.append(raw)
            c.sendall(self.answer)
            got = bytearray(rd.buf)
            if got:
                c.sendall(bytes(got))
            while True:
                if self.rst_after is not None and len(got) >= self.rst_after:
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    with self.lock:
                        self.resets += 1
                    return
                data = c.recv(16384 if self.slow else 65536)
                if not data:
                    break
                got += data
                c.sendall(data)
                if self.slow:
                    time.sleep(self.slow)
            with self.lock:
                self.eofs += 1
                self.received.append(bytes(got))
            c.sendall(b"bye\n")
            c.shutdown(socket.SHUT_WR)
            try:
                while c.recv(65536):
                    pass
            except OSError:
                pass
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self._stop = True
        try:
            self.sock.close()
        except OSError:
            pass
        self.thread.join(T(2))


# ----------------------------------------------------------------------------
# helpers

def upgrade_request(target="/chat", host_="ws.test", extra=""):
    return (f"GET {target} HTTP/1.1\r\nHost: {host_}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


def ws_101(extra=b""):
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + WS_ACCEPT.encode() + b"\r\n" + extra + b"\r\n")


def read_response_rest(s):
    """Everything `s` receives until EOF."""
    out = bytearray()
    while True:
        data = s.recv(65536)
        if not data:
            return bytes(out)
        out += data


def sum_http(st, key):
    return sum((w.get("http") or {}).get(key, 0) for w in st["workers"])


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, T(timeout)))


def ws_connect(port, path="/chat", headers=None, **kw):
    return websockets.connect(
        f"ws://{gwtest.LOOPBACK}:{port}{path}", create_protocol=RecClientProtocol, max_size=MAX_SIZE,
        max_queue=64, ping_interval=None, close_timeout=T(5), open_timeout=T(10), compression=None,
        extra_headers=headers or [], **kw)


class WebSocketTest(GwTestCase):

    # -- config
    def http_gw(self, upstreams, routes=None, listener_opts=None, workers=1, **top):
        """upstreams: {name: ([(host id, address)], {upstream options})}; routes:
        list of route dicts, or None for a listener with "upstream": first name.
        The gateway also gets an unused tcp listener: under GW_ENGINE=io_uring a
        gateway of http listeners alone runs the epoll loop (README, Event
        engines), so without it the io_uring runs would not test the ring's
        nested epoll path that http listeners take there."""
        shm_name = self.shm_name()
        ups = []
        for name, (hosts, opts) in upstreams.items():
            method = opts.pop("method", "round_robin")
            ups.append(upstream(name, [pool("p", [host(h, a) for h, a in hosts], method=method)], **opts))
        ups.append(upstream("ring", [pool("p", [host("unused", f"{gwtest.LOOPBACK}:9")])]))
        lst = {"name": "web", "listen": f"{gwtest.LOOPBACK}:{gwtest.free_port()}", "protocol": "http",
               "backlog": 1024}
        if routes is None:
            lst["upstream"] = next(iter(upstreams))
        else:
            lst["routes"] = routes
        lst.update(listener_opts or {})
        ring = {"name": "ring", "listen": f"{gwtest.LOOPBACK}:{gwtest.free_port()}", "protocol": "tcp",
                "upstream": "ring"}
        cfg = {"workers": workers, "log_file": "", "log_level": "info", "shutdown_timeout_ms": 5000,
               "shm": {"name": shm_name, "max_upstreams": 8, "max_pools": 16, "max_hosts": 64},
               "state_file": os.path.join(self.tmp, f"{shm_name}.state.json"),
               "listeners": [lst, ring], "upstreams": ups}
        cfg.update(top)
        gw = self.gateway(cfg)
        if cfg.get("event_engine") == "io_uring":
            # The fallback's log line (the phrase tested before was a comment's).
            self.assertNotIn("on the epoll loop", gw.log_text(), "the workers run epoll, not the ring")
        return gw

    def ws_backend(self, name):
        b = WsBackend(name)
        self._backends.append(b)
        return b

    def http_backend(self, name, **kw):
        b = HttpBackend(name, **kw)
        self._backends.append(b)
        return b

    def raw_backend(self, name, answer, **kw):
        b = RawUpgradeBackend(name, answer, **kw)
        self._backends.append(b)
        return b

    def one_ws(self, **opts):
        b = self.ws_backend("wsa")
        gw = self.http_gw({"app": ([("a", b.address)], dict(opts))})
        return b, gw

    def assertNoBackendErrors(self, *bs):
        for b in bs:
            self.assertEqual(b.errors, [], f"{b!r}: errors")

    # ------------------------------------------------------------------------
    # echo through a real client and server

    def test_text_and_binary_echo(self):
        b, gw = self.one_ws()

        async def go():
            async with ws_connect(gw.port, "/chat?x=1") as ws:
                self.assertEqual(ws.response_headers.get("X-Backend"), "wsa", "101 headers not passed on")
                self.assertEqual(ws.response_headers.get("Sec-WebSocket-Accept") is not None, True)
                for i in range(20):
                    msg = f"hello {i} " + "é€" * i
                    await ws.send(msg)
                    self.assertEqual(await ws.recv(), msg)
                blob = bytes(range(256)) * 300
                await ws.send(blob)
                got = await ws.recv()
                self.assertIsInstance(got, bytes)
                self.assertEqual(got, blob)
                await ws.send(b"")
                self.assertEqual(await ws.recv(), b"")
                await ws.send("")
                self.assertEqual(await ws.recv(), "")
                # several messages in flight before reading
                for i in range(50):
                    await ws.send(f"burst {i}")
                for i in range(50):
                    self.assertEqual(await ws.recv(), f"burst {i}")
        run(go())
        gwtest.wait_until(lambda: b.sessions and b.sessions[0]["done"], T(5), msg="backend session end")
        s = b.sessions[0]
        self.assertEqual(s["path"], "/chat?x=1")
        hdrs = {n.lower(): v for n, v in s["headers"]}
        self.assertEqual(hdrs.get("upgrade", "").lower(), "websocket", s["headers"])
        self.assertIn("upgrade", hdrs.get("connection", "").lower(), s["headers"])
        self.assertEqual(hdrs.get("x-real-ip"), "127.0.0.1", s["headers"])
        self.assertEqual(s["close"], (1000, ""))
        self.assertNoBackendErrors(b)

    def test_fragmented_messages(self):
        """A message sent as fragments arrives at the server in the same
        fragments (gw does not reframe), and the server's fragmented echo
        arrives at the client the same way."""
        b, gw = self.one_ws()
        text_parts = ["frag-one ", "frag-two ", "", "frag-three-é"]
        bin_parts = [os.urandom(n) for n in (1, 125, 126, 65535, 65536, 70000, 3)]

        async def go():
            async with ws_connect(gw.port) as ws:
                await ws.send(iter(text_parts))
                self.assertEqual(await ws.recv(), "".join(text_parts))
                await ws.send(iter(bin_parts))
                self.assertEqual(await ws.recv(), b"".join(bin_parts))
                # an async iterator that yields control between fragments, with
                # a ping in the middle of the fragmented message
                async def slow():
                    for i in range(5):
                        yield f"slow{i};"
                        await asyncio.sleep(0.02)
                pong = await ws.ping(b"mid")
                await ws.send(slow())
                await asyncio.wait_for(pong, T(5))
                self.assertEqual(await ws.recv(), "".join(f"slow{i};" for i in range(5)))
                return [list(m) for m in ws.msg_frames]
        client_frames = run(go())
        gwtest.wait_until(lambda: b.sessions and b.sessions[0]["done"], T(5), msg="backend session end")
        srv = b.sessions[0]["messages"]
        # websockets sends one frame per item, then an empty FIN continuation
        want_text = [(1 if i == 0 else 0, False, len(p.encode())) for i, p in enumerate(text_parts)] + [(0, True, 0)]
        want_bin = [(2 if i == 0 else 0, False, len(p)) for i, p in enumerate(bin_parts)] + [(0, True, 0)]
        want_slow = [(1 if i == 0 else 0, False, 6) for i in range(5)] + [(0, True, 0)]
        self.assertEqual(srv[0], want_text, "server saw different fragments (text)")
        self.assertEqual(srv[1], want_bin, "server saw different fragments (binary)")
        self.assertEqual(srv[2], want_slow, "server saw different fragments (async)")
        self.assertEqual(client_frames, [want_text, want_bin, want_slow], "client saw different fragments")
        self.assertNoBackendErrors(b)

    def test_16mib_message_each_way(self):
        b, gw = self.one_ws()
        payload = os.urandom(BIG)
        text = ("0123456789abcdef" * (BIG // 16))

        async def go():
            async with ws_connect(gw.port) as ws:
                t0 = time.monotonic()
                await ws.send(payload)
                got = await ws.recv()
                secs = time.monotonic() - t0
                self.assertEqual(len(got), BIG)
                self.assertEqual(hashlib.sha256(got).digest(), hashlib.sha256(payload).digest(),
                                 "16 MiB binary echo differs")
                await ws.send(text)
                got = await ws.recv()
                self.assertEqual(len(got), len(text))
                self.assertTrue(got == text, "16 MiB text echo differs")
                # and a small one after it: the stream is still in sync
                await ws.send("after")
                self.assertEqual(await ws.recv(), "after")
                return secs
        secs = run(go(), 90)
        sys.stderr.write(f"[16 MiB each way in {secs:.2f}s] ")
        gwtest.wait_until(lambda: b.sessions and b.sessions[0]["done"], T(5), msg="backend session end")
        self.assertEqual(b.sessions[0]["messages"][0], [(2, True, BIG)], "the server saw other frames")
        self.assertNoBackendErrors(b)

    def test_ping_pong_both_ways(self):
        b, gw = self.one_ws()

        async def go():
            async with ws_connect(gw.port) as ws:
                for i in range(5):
                    waiter = await ws.ping(f"client-{i}".encode())
                    latency = await asyncio.wait_for(waiter, T(5))
                    self.assertGreaterEqual(latency, 0)
                # the server pings: the client library answers, the server waits for it
                await ws.send("__ping__")
                self.assertEqual(await asyncio.wait_for(ws.recv(), T(10)), "server ping answered")
                await ws.send("still there")
                self.assertEqual(await ws.recv(), "still there")
        run(go())
        self.assertNoBackendErrors(b)

    def test_close_code_and_reason_both_ways(self):
        b, gw = self.one_ws()

        async def client_closes():
            ws = await ws_connect(gw.port)
            await ws.send("x")
            self.assertEqual(await ws.recv(), "x")
            await ws.close(4001, "client says bye")
            await asyncio.wait_for(ws.wait_closed(), T(5))
            # the server echoes the close frame: its code and reason come back
            return ws.close_code, ws.close_reason

        async def server_closes():
            ws = await ws_connect(gw.port)
            await ws.send("__close__ 4002 server says bye")
            try:
                await asyncio.wait_for(ws.recv(), T(5))
                self.fail("a message after the server's close")
            except websockets.exceptions.ConnectionClosed as e:
                code, reason = e.code, e.reason
            await asyncio.wait_for(ws.wait_closed(), T(5))
            return code, reason

        self.assertEqual(run(client_closes()), (4001, "client says bye"))
        gwtest.wait_until(lambda: b.count == 1 and b.sessions[0]["done"], T(5), msg="backend session 1 end")
        self.assertEqual(b.sessions[0]["close"], (4001, "client says bye"), "server got another close")
        self.assertEqual(run(server_closes()), (4002, "server says bye"))
        gwtest.wait_until(lambda: b.count == 2 and b.sessions[1]["done"], T(5), msg="backend session 2 end")
        self.assertEqual(b.sessions[1]["close"], (4002, "server says bye"))
        # the TCP connections through gw are gone too (client and upstream side)
        gwtest.wait_until(lambda: not gwtest.client_ports_held_by(gw.worker_pids()[0], gw.port), T(5),
                          msg="gw to close the client connections after the close handshake")
        self.assertNoBackendErrors(b)

    def test_50_concurrent_sessions(self):
        b, gw = self.one_ws()
        n, rounds = 50, 20

        async def session(i):
            async with ws_connect(gw.port, f"/s{i}") as ws:
                for r in range(rounds):
                    msg = f"session {i} round {r} " + "x" * (i * 37 % 500)
                    await ws.send(msg)
                    got = await ws.recv()
                    if got != msg:
                        return f"session {i}: sent {msg[:40]!r}, got {got[:40]!r}"
                    await ws.send(msg.encode())
                    got = await ws.recv()
                    if got != msg.encode():
                        return f"session {i}: binary echo differs"
            return None

        async def go():
            return await asyncio.gather(*(session(i) for i in range(n)), return_exceptions=True)
        t0 = time.monotonic()
        res = run(go())
        secs = time.monotonic() - t0
        bad = [r for r in res if r is not None]
        self.assertEqual(bad, [], "sessions failed")
        self.assertEqual(b.count, n)
        self.assertEqual(sorted(s["path"] for s in b.sessions), sorted(f"/s{i}" for i in range(n)))
        gwtest.wait_until(lambda: sum_http(gw.status(), "tunnels") == n, T(5),
                          msg=f"tunnels counter == {n}")
        sys.stderr.write(f"[{n} sessions x {2 * rounds} echoes in {secs:.2f}s] ")
        self.assertNoBackendErrors(b)

    # ------------------------------------------------------------------------
    # raw tunnel: early data both ways, arbitrary bytes, half-close

    def test_raw_tunnel_early_data_and_half_close(self):
        """The server's bytes right behind its 101 head and the client's bytes
        right behind its request (sent before the 101) pass through; after the
        101 any bytes pass unchanged; the client's FIN reaches the backend and
        the backend's late reply and FIN come back."""
        rb = self.raw_backend("raw", ws_101(b"X-Backend: raw\r\nContent-Length: 0\r\n") + b"EARLY-SERVER-BYTES")
        gw = self.http_gw({"app": ([("r", rb.address)], {})})
        with gwtest.connect(gw.port, timeout=T(10)) as s:
            s.sendall(upgrade_request() + b"EARLY-CLIENT-BYTES")
            rd = Reader(s)
            start, headers = parse_head(rd.read_head())
            self.assertTrue(start.startswith("HTTP/1.1 101 "), start)
            self.assertEqual((hget(headers, "Upgrade") or "").lower(), "websocket", headers)
            self.assertIn("upgrade", (hget(headers, "Connection") or "").lower(), headers)
            self.assertEqual(hget(headers, "Sec-WebSocket-Accept"), WS_ACCEPT, headers)
            self.assertEqual(hget(headers, "X-Backend"), "raw", headers)
            self.assertIsNone(hget(headers, "Content-Length"), f"a 1xx never has one (RFC 9110 8.6): {headers}")
            want = b"EARLY-SERVER-BYTES" + b"EARLY-CLIENT-BYTES"
            self.assertEqual(rd.read_exact(len(want)), want)
            # bytes that look like HTTP are not parsed any more: this is a tunnel
            blob = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 512
            s.sendall(blob)
            self.assertEqual(rd.read_exact(len(blob)), blob)
            s.shutdown(socket.SHUT_WR)
            gwtest.wait_until(lambda: rb.eofs == 1, T(5), msg="backend to see the client's FIN")
            self.assertEqual(rd.read_exact(4), b"bye\n")
            s.settimeout(T(5))
            self.assertEqual(rd.read_to_eof(), b"", "expected EOF after the backend's FIN")
        self.assertEqual(len(rb.heads), 1)
        self.assertEqual(rb.received[0], b"EARLY-CLIENT-BYTES" + blob)

    def test_tunnel_byte_counters(self):
        """The listener's and the host's byte counters (gwctl status --json)
        are the bytes on each socket: the upgrade request and the 101 head as
        on the wire, then the tunnel's bytes both ways."""
        answer = ws_101(b"X-Backend: raw\r\n") + b"EARLY-SERVER-BYTES"
        rb = self.raw_backend("raw", answer)
        gw = self.http_gw({"app": ([("r", rb.address)], {})}, workers=2)
        request = upgrade_request() + b"EARLY-CLIENT-BYTES"
        blob = bytes(range(256)) * 700
        with gwtest.connect(gw.port, timeout=T(10)) as s:
            s.sendall(request)
            rd = Reader(s)
            head = rd.read_head()
            self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
            want = b"EARLY-SERVER-BYTES" + b"EARLY-CLIENT-BYTES"
            self.assertEqual(rd.read_exact(len(want)), want)
            s.sendall(blob)
            self.assertEqual(rd.read_exact(len(blob)), blob)
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(rd.read_exact(4), b"bye\n")
            s.settimeout(T(5))
            self.assertEqual(rd.read_to_eof(), b"")
        client_got = len(head) + len(want) + len(blob) + 4
        gwtest.wait_until(lambda: rb.eofs == 1, T(5), msg="backend to see the client's FIN")
        backend_got = len(rb.heads[0]) + len(rb.received[0])
        self.assertEqual(rb.received[0], b"EARLY-CLIENT-BYTES" + blob)
        backend_sent = len(answer) + len(b"EARLY-CLIENT-BYTES") + len(blob) + 4

        def counts():
            st = gw.status()
            h = gwtest.find_host(st, "app/p/r")
            web = {x["name"]: x for x in st["listeners"]}["web"]
            return (h["sent_bytes"], h["received_bytes"], web["received_bytes"], web["sent_bytes"])

        want_counts = (backend_got, backend_sent, len(request) + len(blob), client_got)
        gwtest.wait_until(lambda: counts() == want_counts, T(10),
                          msg=f"byte counters == {want_counts} (host sent, received; listener received, sent)")

    def test_tunnel_sizes_in_the_access_log(self):
        """The json access log's request_length and bytes_sent of a request
        that became a tunnel are the bytes each way for the whole of it: the
        upgrade request (with the client's bytes behind it) and the frames the
        client sent through the tunnel; the 101 head and every byte gw sent
        back. The line is written when the tunnel closes."""
        log = os.path.join(self.tmp, "ws.log")
        rb = self.raw_backend("raw", ws_101(b"X-Backend: raw\r\n") + b"EARLY-SERVER-BYTES")
        gw = self.http_gw({"app": ([("r", rb.address)], {})},
                          listener_opts={"access_log": {"path": log, "format": "json"}})

        def frame(payload, opcode=0x2):
            # A client frame (masked, RFC 6455 5.2); gw passes it on as bytes.
            n = len(payload)
            head = bytes([0x80 | opcode])
            if n < 126:
                head += bytes([0x80 | n])
            elif n < 65536:
                head += bytes([0x80 | 126]) + struct.pack("!H", n)
            else:
                head += bytes([0x80 | 127]) + struct.pack("!Q", n)
            mask = b"\x01\x02\x03\x04"
            return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

        request = upgrade_request()
        early = frame(b"early frame")  # behind the request, before the 101
        frames = frame(b"x" * 100) + frame(bytes(range(256)) * 40) + frame(b"", 0x8)
        with gwtest.connect(gw.port, timeout=T(10)) as s:
            s.sendall(request + early)
            rd = Reader(s)
            head = rd.read_head()
            self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
            want = b"EARLY-SERVER-BYTES" + early
            self.assertEqual(rd.read_exact(len(want)), want)
            s.sendall(frames)
            self.assertEqual(rd.read_exact(len(frames)), frames)  # the backend echoes
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(rd.read_exact(4), b"bye\n")
            s.settimeout(T(5))
            self.assertEqual(rd.read_to_eof(), b"")
        client_sent = len(request) + len(early) + len(frames)
        client_got = len(head) + len(want) + len(frames) + 4

        def lines():
            try:
                with open(log) as f:
                    return [json.loads(l) for l in f.read().splitlines(keepends=True) if l.endswith("\n")]
            except FileNotFoundError:
                return []
        gwtest.wait_until(lambda: len(lines()) == 1, T(5), msg="the tunnel's log line")
        e = lines()[0]
        self.assertEqual((e["status"], e["target"]), (101, "/chat"), e)
        self.assertEqual((e["request_length"], e["bytes_sent"]), (client_sent, client_got), e)
        self.assertEqual(e["bytes"], client_got - len(head), e)

    def test_upgrade_request_body_not_yet_sent_reaches_backend(self):
        """An Upgrade request with a body the backend does not read before its
        101: body bytes gw had read but not yet sent upstream when the 101
        came go on through the tunnel, none dropped, in order."""
        body = hb_pattern(8 * MiB)
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # a small window: gw's sends block soon
        lst.bind((gwtest.LOOPBACK, 0))
        lst.listen(4)
        self.addCleanup(lst.close)
        got = {}

        def serve():
            c, _ = lst.accept()
            c.settimeout(T(20))
            with c:
                rd = Reader(c)
                got["head"] = rd.read_head()
                time.sleep(0.3)            # gw fills this socket and its buffer: its sends block
                c.sendall(ws_101())
                got["bytes"] = rd.read_to_eof()
        th = threading.Thread(target=serve, daemon=True)
        th.start()
        gw = self.http_gw({"app": ([("r", f"{gwtest.LOOPBACK}:{lst.getsockname()[1]}")], {"max_fails": 0})})
        with gwtest.connect(gw.port, timeout=T(20)) as s:
            def send():
                try:
                    s.sendall(upgrade_request(extra=f"Content-Length: {len(body)}\r\n") + body + b"TAIL")
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            start, _ = parse_head(Reader(s).read_head())
            self.assertTrue(start.startswith("HTTP/1.1 101 "), start)
            th.join(T(30))
            sender.join(T(5))
        self.assertFalse(th.is_alive(), "the backend did not see the client's FIN")
        data = got["bytes"]
        self.assertEqual(len(data), len(body) + 4, "body bytes lost or added between the request and the tunnel")
        self.assertTrue(data == body + b"TAIL", "the bytes upstream differ from the body the client sent")

    # ------------------------------------------------------------------------
    # the smuggling guard

    def smuggle_gw(self, public_status):
        """Routes: "/" -> public (answers every request with public_status),
        "/internal/" -> internal (another backend)."""
        pub = self.http_backend("public", status=public_status)
        internal = self.http_backend("internal")
        gw = self.http_gw({"public": ([("p", pub.address)], {}), "internal": ([("i", internal.address)], {})},
                          routes=[{"name": "pub", "path": "/", "upstream": "public"},
                                  {"name": "int", "path": "/internal/", "upstream": "internal"}])
        return pub, internal, gw

    def check_no_tunnel(self, public_status, pipelined):
        pub, internal, gw = self.smuggle_gw(public_status)
        smuggled = b"GET /internal/secret HTTP/1.1\r\nHost: ws.test\r\n\r\n"
        with gwtest.connect(gw.port, timeout=T(10)) as s:
            rd = Reader(s)
            if pipelined:
                s.sendall(upgrade_request() + smuggled)
            else:
                s.sendall(upgrade_request())
            r1 = read_response(rd)
            self.assertIsNotNone(r1, "no answer to the upgrade request")
            self.assertEqual(r1.status, public_status, r1)
            self.assertEqual(r1.header("X-Backend"), "public", r1)
            self.assertIsNone(r1.header("Upgrade"), f"an Upgrade header in a {public_status} answer: {r1}")
            if not pipelined:
                s.sendall(smuggled)
            r2 = read_response(rd)
            self.assertIsNotNone(r2, f"gw closed the connection after a {public_status} answer to an Upgrade "
                                     f"request instead of keeping HTTP")
            self.assertEqual(r2.status, 200, r2)
            self.assertEqual(r2.header("X-Backend"), "internal",
                             f"the second request was not routed as HTTP (a tunnel to the public backend?): {r2}")
            self.assertEqual(r2.json()["target"], "/internal/secret")
            # and an invalid request on the same connection is a 400 from gw itself
            s.sendall(b"GET /x HTTP/1.1\r\nHost: ws.test\r\nBad Header: 1\r\n\r\n")
            r3 = read_response(rd)
            self.assertIsNotNone(r3, "no answer to an invalid request")
            self.assertEqual(r3.status, 400, r3)
            self.assertEqual(r3.header("Server"), "gw", r3)
        self.assertEqual(pub.requests, 1, f"public backend saw {pub.requests} requests: "
                                          f"{[(r.method, r.target) for r in pub.records]}")
        self.assertEqual(internal.requests, 1)
        up = pub.records[0]
        self.assertEqual((up.header("Upgrade") or "").lower(), "websocket", up.headers)
        self.assertIsNone(internal.records[0].header("Upgrade"), internal.records[0].headers)
        self.assertEqual(sum_http(gw.status(), "tunnels"), 0, "a tunnel was counted")

    def test_426_keeps_http(self):
        self.check_no_tunnel(426, pipelined=False)

    def test_426_keeps_http_pipelined(self):
        """The smuggled request is sent right behind the Upgrade request, before
        the answer: after the 426 it is still parsed and routed as HTTP."""
        self.check_no_tunnel(426, pipelined=True)

    def test_200_keeps_http(self):
        self.check_no_tunnel(200, pipelined=False)

    def test_200_keeps_http_pipelined(self):
        self.check_no_tunnel(200, pipelined=True)

    def test_101_without_upgrade_request_is_502(self):
        """A 101 to a request that did not ask to upgrade is an invalid
        response (RFC 9110 15.2.2: a server sends 101 only to an Upgrade
        request): 502 from gw, nothing tunnelled."""
        bad = self.http_backend("bad101", status=101, headers=[("Upgrade", "websocket"),
                                                                ("Connection", "Upgrade")])
        rb = self.raw_backend("raw", ws_101())
        gw = self.http_gw({"a": ([("b", bad.address)], {"tries": 1, "max_fails": 0}),
                           "b": ([("r", rb.address)], {"tries": 1, "max_fails": 0})},
                          routes=[{"name": "a", "path": "/", "upstream": "a"},
                                  {"name": "b", "path": "/raw", "upstream": "b"}])
        for target in ("/plain", "/raw"):
            with gwtest.connect(gw.port, timeout=T(10)) as s:
                # "Upgrade" named without "Connection: upgrade" is no upgrade request either
                s.sendall(f"GET {target} HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\n"
                          f"Connection: keep-alive\r\n\r\n".encode())
                r = read_response(Reader(s))
                self.assertIsNotNone(r, f"{target}: no answer")
                self.assertEqual(r.status, 502, f"{target}: {r}")
                self.assertEqual(r.header("Server"), "gw", r)
            with gwtest.connect(gw.port, timeout=T(10)) as s:
                s.sendall(f"GET {target} HTTP/1.1\r\nHost: ws.test\r\n\r\n".encode())
                r = read_response(Reader(s))
                self.assertIsNotNone(r, f"{target}: no answer")
                self.assertEqual(r.status, 502, f"{target}: {r}")
        # HTTP/1.0 cannot upgrade (RFC 9110 7.8: Upgrade is ignored in 1.0):
        # nothing asked upstream, and a 101 answer is invalid
        n_heads = len(rb.heads)
        with gwtest.connect(gw.port, timeout=T(10)) as s:
            s.sendall(b"GET /raw HTTP/1.0\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: " + WS_KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
            r = read_response(Reader(s))
            self.assertIsNotNone(r, "HTTP/1.0: no answer")
            self.assertEqual(r.status, 502, f"HTTP/1.0 upgrade: {r}")
        gwtest.wait_until(lambda: len(rb.heads) > n_heads, T(5), msg="the HTTP/1.0 request upstream")
        fwd = rb.heads[-1].decode("latin-1").lower()
        self.assertNotIn("\r\nupgrade:", fwd, f"an HTTP/1.0 request was forwarded with Upgrade: {fwd!r}")
        self.assertNotRegex(fwd, r"\r\nconnection:[^\r]*upgrade", fwd)
        st = gw.status()
        self.assertEqual(sum_http(st, "tunnels"), 0)
        self.assertEqual(sum_http(st, "bad_gateway"), 5)

    def test_only_websocket_becomes_a_tunnel(self):
        """Upgrade: h2c (or any protocol but websocket) is forwarded as a plain
        request without it, so no tunnel can carry later requests past gw's
        routes, auth and limits (h2c smuggling); a host's 101 to it is a 502.
        Of a list, only websocket is asked for upstream, and a 101 must name it."""
        h2c = (b"GET /h2 HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
        sw_h2c = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        rb = self.raw_backend("raw", sw_h2c)
        ok = self.http_backend("ok")
        ws = self.raw_backend("ws", ws_101())
        # a 101 with two Upgrade lines, websocket on the second: the client is told websocket
        ws2 = self.raw_backend("ws2", ws_101().replace(b"Upgrade: websocket\r\n", b"Upgrade: foo\r\nUpgrade: websocket\r\n"))
        gw = self.http_gw({"raw": ([("r", rb.address)], {"tries": 1, "max_fails": 0}),
                           "ok": ([("o", ok.address)], {}),
                           "ws": ([("w", ws.address)], {}),
                           "ws2": ([("w2", ws2.address)], {})},
                          routes=[{"name": "raw", "path": "/h2", "upstream": "raw"},
                                  {"name": "ok", "path": "/plain", "upstream": "ok"},
                                  {"name": "ws", "path": "/chat", "upstream": "ws"},
                                  {"name": "ws2", "path": "/two", "upstream": "ws2"}])
        # a host that switches to h2c anyway: 502, nothing tunnelled, no Upgrade sent
        with gwtest.connect(gw.port, timeout=T(10)) as s:
            s.sendall(h2c)
            r = read_response(Reader(s))
            self.assertIsNotNone(r)
            self.assertEqual(r.status, 502, r)
        fwd = rb.heads[-1].decode("latin-1").lower()
        self.assertNotIn("\r\nupgrade:", fwd, fwd)
        self.assertNotRegex(fwd, r"\r\nconnection:[^\r]*upgrade", fwd)
        self.assertNotIn("http2-settings", fwd, "a field named in Connection is hop-by-hop")
        # a host that ignores it: an ordinary answer on a connection that stays HTTP
        with gwtest.connect(gw.port, timeout=T(10)) as s:
            s.sendall(h2c.replace(b"/h2", b"/plain"))
            rd = Reader(s)
            r = read_response(rd)
            self.assertIsNotNone(r)
            self.assertEqual(r.status, 200, r)
            s.sendall(b"GET /plain/2 HTTP/1.1\r\nHost: ws.test\r\n\r\n")
            self.assertEqual(read_response(rd).status, 200, "the connection stays HTTP")
        # of "h2c, websocket" only websocket is asked for; the tunnel works
        with gwtest.connect(gw.port, timeout=T(10)) as s:
            s.sendall(upgrade_request().replace(b"Upgrade: websocket", b"Upgrade: h2c, websocket"))
            rd = Reader(s)
            start, _ = parse_head(rd.read_head())
            self.assertTrue(start.startswith("HTTP/1.1 101 "), start)
            s.sendall(b"ping")
            self.assertEqual(rd.read_exact(4), b"ping")
        self.assertRegex(ws.heads[-1].decode("latin-1"), r"\r\nUpgrade: websocket\r\n")
        with gwtest.connect(gw.port, timeout=T(10)) as s:
            s.sendall(upgrade_request(target="/two"))
            start, headers = parse_head(Reader(s).read_head())
            self.assertTrue(start.startswith("HTTP/1.1 101 "), start)
            self.assertEqual(hget(headers, "Upgrade"), "websocket", headers)
        # and a 101 naming another protocol than the websocket asked for is a 502
        with gwtest.connect(gw.port, timeout=T(10)) as s:
            s.sendall(upgrade_request(target="/h2"))
            r = read_response(Reader(s))
            self.assertIsNotNone(r)
            self.assertEqual(r.status, 502, r)
        self.assertEqual(sum_http(gw.status(), "tunnels"), 2)

    def test_101_without_upgrade_field_is_502(self):
        """A 101 that names no protocol (no Upgrade field) breaks RFC 9110
        15.2.2 ("The server MUST generate an Upgrade header field"): an invalid
        response, so 502 and no tunnel; never a relayed "Upgrade: " with an
        empty value."""
        bad = self.http_backend("bad101", status=101)
        gw = self.http_gw({"app": ([("b", bad.address)], {"tries": 1, "max_fails": 0})})
        with gwtest.connect(gw.port, timeout=T(10)) as s:
            s.sendall(upgrade_request())
            r = read_response(Reader(s))
            self.assertIsNotNone(r)
            self.assertEqual(r.status, 502, r)
        self.assertEqual(sum_http(gw.status(), "tunnels"), 0)

    # ------------------------------------------------------------------------
    # tunnel idle timeout

    def test_a_tunnel_client_that_stops_reading_meets_send_timeout(self):
        """A host pushes without pause to a client that stops reading and
        sends a byte every 300 ms: http.send_timeout_ms never applied to a
        tunnel, and the client's bytes kept its idle timer going, so it stayed
        open for good (a silent one until idle_timeout_ms). It now closes
        send_timeout_ms after the last write the client took, as a plain
        answer does and as nginx times an upgraded connection's writes."""
        pushed = []

        def push(c):
            c.settimeout(T(20))
            rd = Reader(c)
            if rd.read_head() is None:
                return
            c.sendall(ws_101())
            c.setblocking(False)
            try:
                while True:
                    r, w, _ = select.select([c], [c], [], 1)
                    if r and not c.recv(65536):
                        return
                    if w:
                        pushed.append(c.send(b"p" * 16384))
            except OSError:
                pass
            finally:
                c.close()
        srv = socket.socket()
        srv.bind((gwtest.LOOPBACK, 0))
        srv.listen(8)
        self.addCleanup(srv.close)

        def accept():
            try:
                while True:
                    c, _ = srv.accept()
                    threading.Thread(target=push, args=(c,), daemon=True).start()
            except OSError:
                pass
        threading.Thread(target=accept, daemon=True).start()
        address = f"{gwtest.LOOPBACK}:{srv.getsockname()[1]}"
        gw = self.http_gw({"app": ([("a", address)], {"idle_timeout_ms": 60000})},
                          listener_opts={"http": {"send_timeout_ms": 1000}})
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((gwtest.LOOPBACK, gw.port))
        self.addCleanup(s.close)
        s.sendall(upgrade_request("/push"))
        gwtest.wait_until(lambda: sum(pushed) > 0, T(5), msg="the host pushing")
        closed = False
        for _ in range(int(T(15) / 0.3)):
            if sum(w["connections"] for w in gw.status()["workers"]) == 0:
                closed = True
                break
            try:
                s.send(b"k")
            except OSError:
                closed = True
                break
            time.sleep(0.3)
        self.assertTrue(closed, "the tunnel to a client that reads nothing is still open")

    def test_tunnel_idle_timeout(self):
        b, gw = self.one_ws(idle_timeout_ms=500)

        async def idle():
            ws = await ws_connect(gw.port)
            # Timed from before the last message: the tunnel's last traffic is its echo, after
            # this, so an early close shows even if this process is late to read the echo.
            t0 = time.monotonic()
            await ws.send("one")
            self.assertEqual(await ws.recv(), "one")
            try:
                await asyncio.wait_for(ws.wait_closed(), T(5))
            except asyncio.TimeoutError:
                self.fail("an idle tunnel was not closed within 5 s (idle_timeout_ms 500)")
            return time.monotonic() - t0

        async def client_active():
            # only the client sends (every 200 ms, 10 times, 2 s in all): the tunnel stays. A fixed
            # number of messages, not as many as fit in 2 s: on a slow machine the round trips
            # take longer, which must not make too few of them a failure.
            async with ws_connect(gw.port) as ws:
                t0 = time.monotonic()
                for i in range(10):
                    await ws.send(f"m{i}")
                    self.assertEqual(await ws.recv(), f"m{i}")
                    await asyncio.sleep(0.2)
                return time.monotonic() - t0

        async def server_active():
            # only the server sends (every 200 ms, 10 times): the tunnel stays
            async with ws_connect(gw.port) as ws:
                await ws.send("__push__ 10 200")
                for i in range(10):
                    self.assertEqual(await asyncio.wait_for(ws.recv(), T(3)), f"tick {i}")
                await ws.send("end")
                self.assertEqual(await ws.recv(), "end")

        secs = run(idle())
        sys.stderr.write(f"[idle tunnel closed after {secs:.2f}s] ")
        self.assertGreaterEqual(secs, 0.4, "closed before the idle timeout")
        self.assertLess(secs, 1.5, "closed long after the 500 ms idle timeout")
        # the upstream side of the tunnel is closed too
        gwtest.wait_until(lambda: b.count == 1 and b.sessions[0]["done"], T(3),
                          msg="the backend's side of the idle tunnel to close")
        self.assertGreater(run(client_active()), 1.9, "the active tunnel lived ~4 idle timeouts")
        run(server_active())

    # ------------------------------------------------------------------------
    # sticky sessions

    def test_reset_after_half_close_ends_the_tunnel(self):
        """A client half-closes its tunnel, then resets; the host stays silent.
        After the FIN a read says 0 again and never reports the reset, only
        EPOLLERR does: the tunnel must end then, not hold both connections and
        the host's active count until the idle timeout."""
        srv = socket.socket()
        srv.bind((gwtest.LOOPBACK, 0))
        srv.listen(16)
        self.addCleanup(srv.close)
        conns = []
        self.addCleanup(lambda: [c.close() for c in conns])

        def serve():
            while True:
                try:
                    c, _ = srv.accept()
                except OSError:
                    return
                conns.append(c)
                Reader(c).read_head()
                c.sendall(ws_101())        # then silent: it never reads or closes
        threading.Thread(target=serve, daemon=True).start()
        gw = self.http_gw({"app": ([("s", f"{gwtest.LOOPBACK}:{srv.getsockname()[1]}")], {})})
        (worker,) = gw.worker_pids()
        sockets_before = gwtest.socket_inodes(worker)
        for payload in (b"", b"early bytes"):
            for _ in range(3):
                s = socket.create_connection((gwtest.LOOPBACK, gw.port), timeout=T(5))
                s.sendall(upgrade_request())
                self.assertTrue(Reader(s).read_head().startswith(b"HTTP/1.1 101"))
                if payload:
                    s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                time.sleep(0.02)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()

        def settled():
            st = gw.status()
            return (st["workers"][0]["connections"] == 0 and gwtest.find_host(st, "app/p/s")["active"] == 0
                    and gwtest.socket_inodes(worker) == sockets_before)
        gwtest.wait_until(settled, T(3), msg="the reset tunnels to close")

    def test_reset_while_the_host_does_not_drain_ends_the_tunnel(self):
        """A client fills its tunnel towards a host that never reads, so gw
        stops reading the client (back-pressure), then resets. No read is
        made to report the reset, and the EPOLLERR is reported once
        (edge-triggered): the tunnel must end then, not hold both connections
        and the host's active count until the idle timeout."""
        srv = socket.socket()
        srv.bind((gwtest.LOOPBACK, 0))
        srv.listen(16)
        self.addCleanup(srv.close)
        conns = []
        self.addCleanup(lambda: [c.close() for c in conns])

        def serve():
            while True:
                try:
                    c, _ = srv.accept()
                except OSError:
                    return
                conns.append(c)
                Reader(c).read_head()
                c.sendall(ws_101())        # then silent: it never reads or closes
        threading.Thread(target=serve, daemon=True).start()
        gw = self.http_gw({"app": ([("s", f"{gwtest.LOOPBACK}:{srv.getsockname()[1]}")], {})})
        (worker,) = gw.worker_pids()
        sockets_before = gwtest.socket_inodes(worker)
        for _ in range(2):
            s = socket.create_connection((gwtest.LOOPBACK, gw.port), timeout=T(5))
            s.sendall(upgrade_request())
            self.assertTrue(Reader(s).read_head().startswith(b"HTTP/1.1 101"))
            # Send until nothing more goes for a while: the host's socket, gw's
            # buffer and gw's socket for the client are full.
            s.setblocking(False)
            chunk = b"x" * 65536
            deadline = time.monotonic() + T(30)
            last_sent = time.monotonic()
            while time.monotonic() - last_sent < T(0.5):
                self.assertLess(time.monotonic(), deadline, "the client's sends never blocked")
                try:
                    s.send(chunk)
                    last_sent = time.monotonic()
                except BlockingIOError:
                    time.sleep(0.02)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

        def settled():
            st = gw.status()
            return (st["workers"][0]["connections"] == 0 and gwtest.find_host(st, "app/p/s")["active"] == 0
                    and gwtest.socket_inodes(worker) == sockets_before)
        gwtest.wait_until(settled, T(3), msg="the reset tunnels to close")

    def test_host_reset_after_its_fin_ends_the_tunnel(self):
        """A host half-closes its tunnel, then resets, while the client (which
        got the FIN) stays silent. gw reads nothing more from the host after
        its FIN, and a read would say 0 again anyway: only that EPOLLERR tells
        that nothing can reach the host any more. The tunnel must end then,
        as on a reset before the FIN, not hold both connections and the
        host's active count until the idle timeout."""
        srv = socket.socket()
        srv.bind((gwtest.LOOPBACK, 0))
        srv.listen(16)
        self.addCleanup(srv.close)
        gap = {"s": 0.0}

        def serve():
            while True:
                try:
                    c, _ = srv.accept()
                except OSError:
                    return
                Reader(c).read_head()
                c.sendall(ws_101() + b"bye")
                c.shutdown(socket.SHUT_WR)
                time.sleep(gap["s"])
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
        threading.Thread(target=serve, daemon=True).start()
        gw = self.http_gw({"app": ([("s", f"{gwtest.LOOPBACK}:{srv.getsockname()[1]}")], {})})
        (worker,) = gw.worker_pids()
        sockets_before = gwtest.socket_inodes(worker)
        clients = []
        self.addCleanup(lambda: [c.close() for c in clients])
        for g in (0.0, 0.0, 0.1, 0.1):   # the reset in the FIN's report, or in a later one
            gap["s"] = g
            s = socket.create_connection((gwtest.LOOPBACK, gw.port), timeout=T(5))
            clients.append(s)           # open (no FIN, no reset) until the test ends
            s.sendall(upgrade_request())
            rd = Reader(s)
            self.assertTrue(rd.read_head().startswith(b"HTTP/1.1 101"))
            self.assertEqual(rd.read_to_eof(), b"bye", "the host's bytes and its FIN")

        def settled():
            st = gw.status()
            return (st["workers"][0]["connections"] == 0 and gwtest.find_host(st, "app/p/s")["active"] == 0
                    and gwtest.socket_inodes(worker) == sockets_before)
        gwtest.wait_until(settled, T(3), msg="the tunnels whose host reset to close")

    def test_host_bytes_before_its_reset_reach_a_slow_client(self):
        """A host sends more than a client that does not read can take, so
        gw stops reading it (back-pressure) with bytes left in the host's
        socket, then resets: by itself, or when the client's next bytes reach
        it after its close. Every byte the host's socket took before the
        reset reaches the client, under either engine (recv(2) returns them
        before the error; io_uring had reported the reset first and dropped
        them)."""
        srv = socket.socket()
        srv.bind((gwtest.LOOPBACK, 0))
        srv.listen(16)
        self.addCleanup(srv.close)
        resets, wants = queue.Queue(), queue.Queue()
        block = bytes(range(256)) * 257

        def unacked(c):
            return struct.unpack("i", fcntl.ioctl(c, termios.TIOCOUTQ, b"\0\0\0\0"))[0]

        def serve():
            while True:
                try:
                    c, _ = srv.accept()
                except OSError:
                    return
                Reader(c).read_head()
                c.sendall(ws_101())
                # Send until nothing more goes for a while: the client's
                # socket, gw's buffers and the host's socket are full.
                c.setblocking(False)
                sent, last = 0, time.monotonic()
                while time.monotonic() - last < T(0.5):
                    try:
                        sent += c.send(block[sent % 256:sent % 256 + 65536])
                        last = time.monotonic()
                    except BlockingIOError:
                        time.sleep(0.02)
                # What the host's socket still holds unsent is lost in its
                # reset; what it handed to gw's socket is the client's.
                held = unacked(c)
                while True:
                    time.sleep(0.2)
                    now = unacked(c)
                    if now == held:
                        break
                    held = now
                rst = resets.get()
                if rst:
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
                wants.put(sent - held)
        threading.Thread(target=serve, daemon=True).start()
        gw = self.http_gw({"app": ([("s", f"{gwtest.LOOPBACK}:{srv.getsockname()[1]}")], {})})
        for rst in (True, False):
            s = socket.socket()
            self.addCleanup(s.close)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(T(20))
            s.connect((gwtest.LOOPBACK, gw.port))
            s.sendall(upgrade_request())
            resets.put(rst)
            want = wants.get(timeout=T(30))
            if not rst:
                s.sendall(b"x")  # reaches the closed host: it resets
            time.sleep(0.3)
            got = bytearray()
            try:
                while True:
                    d = s.recv(65536)
                    if not d:
                        break
                    got += d
            except ConnectionResetError:
                pass
            body = bytes(got[got.find(b"\r\n\r\n") + 4:])
            self.assertEqual(len(body), want, f"reset={rst}: the bytes the host sent before its reset")
            self.assertEqual(body, (block * (want // len(block) + 1))[:want])

    def test_sticky_sessions_by_hash_key(self):
        bs = [self.ws_backend(f"ws{i}") for i in range(3)]
        hosts = [(f"h{i}", b.address) for i, b in enumerate(bs)]
        gw = self.http_gw({"ws": (hosts, {"method": "chash"})},
                          routes=[{"name": "chat", "path": "/", "upstream": "ws", "hash_key": "cookie:sid"},
                                  {"name": "room", "path": "/room", "upstream": "ws", "hash_key": "arg:room"}])

        async def name_of(path, headers):
            async with ws_connect(gw.port, path, headers) as ws:
                await ws.send("__name__")
                n = await ws.recv()
                self.assertEqual(ws.response_headers.get("X-Backend"), n)
                return n

        async def go():
            by_sid, by_room = {}, {}
            for k in range(24):
                got = await asyncio.gather(*(name_of("/chat", [("Cookie", f"theme=dark; sid=user{k}")])
                                             for _ in range(3)))
                by_sid[k] = got
                got = [await name_of(f"/room?x=1&room=r{k}", []) for _ in range(2)]
                got.append(await name_of(f"/room?room=r{k}&y=2", [("Cookie", f"sid=other{k}")]))
                by_room[k] = got
            return by_sid, by_room
        by_sid, by_room = run(go())
        for what, res in (("cookie sid", by_sid), ("arg room", by_room)):
            moved = {k: v for k, v in res.items() if len(set(v)) != 1}
            self.assertEqual(moved, {}, f"{what}: the same key reached different backends")
            spread = {v[0] for v in res.values()}
            self.assertGreaterEqual(len(spread), 2, f"{what}: 24 keys all on {spread}")
        st = gw.status()
        self.assertEqual(sum(w.get("hash_fallbacks", 0) for w in st["workers"]), 0)
        self.assertEqual(sum_http(st, "tunnels"), 24 * 6)
        for b in bs:
            self.assertNoBackendErrors(b)

    # ------------------------------------------------------------------------
    # the tunnels counter

    def test_tunnels_counter(self):
        b = self.ws_backend("wsa")
        pub = self.http_backend("public", status=426)
        gw = self.http_gw({"app": ([("a", b.address)], {}), "public": ([("p", pub.address)], {})},
                          routes=[{"name": "ws", "path": "/", "upstream": "app"},
                                  {"name": "no", "path": "/no", "upstream": "public"}], workers=2)
        self.assertEqual(sum_http(gw.status(), "tunnels"), 0)

        async def go():
            socks = [await ws_connect(gw.port) for _ in range(7)]
            for ws in socks:
                await ws.send("hi")
                self.assertEqual(await ws.recv(), "hi")
            return socks
        loop = asyncio.new_event_loop()
        try:
            socks = loop.run_until_complete(asyncio.wait_for(go(), T(20)))
            self.assertEqual(sum_http(gw.status(), "tunnels"), 7)
            # refused upgrades and plain requests are not tunnels
            for _ in range(3):
                with gwtest.connect(gw.port, timeout=T(10)) as s:
                    s.sendall(upgrade_request("/no"))
                    r = read_response(Reader(s))
                    self.assertEqual(r.status, 426, r)
            self.assertEqual(sum_http(gw.status(), "tunnels"), 7)
            async def close_all():
                await asyncio.gather(*(ws.close() for ws in socks))
            loop.run_until_complete(asyncio.wait_for(close_all(), T(10)))
        finally:
            loop.close()
        st = gw.status()
        self.assertEqual(sum_http(st, "tunnels"), 7, "the counter counts tunnels opened")
        self.assertEqual(b.count, 7)
        rc, out, err = gw.gwctl("status")
        self.assertEqual(rc, 0, err)

    # ------------------------------------------------------------------------
    # stickiness across workers; a host going down moves only its sessions

    def test_sticky_across_workers_and_a_host_down(self):
        """hash_key header:X-User and ip with chash, two workers: every new
        upgrade of a key reaches the same host, whichever worker accepts it.
        `gwctl down` of a host closes its tunnels (on_host_remove "close"),
        moves its keys (each to one new host) and no other key; the other
        tunnels run on; `gwctl up` brings the keys back."""
        bs = [self.ws_backend(f"ws{i}") for i in range(3)]
        ids = {b.name: f"h{i}" for i, b in enumerate(bs)}
        gw = self.http_gw({"ws": ([(ids[b.name], b.address) for b in bs], {"method": "chash"})},
                          routes=[{"name": "user", "path": "/", "upstream": "ws", "hash_key": "header:X-User"},
                                  {"name": "ip", "path": "/ip", "upstream": "ws", "hash_key": "ip"}],
                          listener_opts={"on_host_remove": "close"}, workers=2)
        keys = [f"user{k}" for k in range(24)] + [f"127.0.0.{k}" for k in range(2, 26)]

        async def open_ws(key):
            if key.startswith("127."):
                return await ws_connect(gw.port, "/ip", local_addr=(key, 0))
            return await ws_connect(gw.port, "/", [("X-User", key)])

        async def name_of(ws):
            await ws.send("__name__")
            n = await ws.recv()
            self.assertEqual(ws.response_headers.get("X-Backend"), n)
            return n

        async def owner(key):
            ws = await open_ws(key)
            try:
                return await name_of(ws)
            finally:
                await ws.close()

        async def owners(times):
            # each key `times` times at once, each a new connection: the
            # kernel spreads them over the two workers (SO_REUSEPORT)
            out = {}
            for key in keys:
                got = await asyncio.gather(*(owner(key) for _ in range(times)))
                self.assertEqual(len(set(got)), 1, f"{key}: new sessions reached {got}")
                out[key] = got[0]
            return out

        async def go():
            own = await owners(4)
            per_host = collections.Counter(own.values())
            self.assertGreaterEqual(len(per_host), 2, f"48 keys all on {per_host}")
            st = await asyncio.to_thread(gw.status)
            served = [(w.get("http") or {}).get("tunnels", 0) for w in st["workers"]]
            self.assertTrue(all(n > 0 for n in served), f"tunnels per worker {served}: one worker took all")
            victim = per_host.most_common(1)[0][0]
            held = {key: await open_ws(key) for key in keys}
            for key, ws in held.items():
                self.assertEqual(await name_of(ws), own[key])
            rc, _, err = await asyncio.to_thread(gw.gwctl, "down", "host", "ws/p", ids[victim])
            self.assertEqual(rc, 0, err)
            for key, ws in held.items():
                if own[key] == victim:
                    try:
                        await asyncio.wait_for(ws.wait_closed(), T(5))
                    except asyncio.TimeoutError:
                        self.fail(f"{key}: the tunnel to the downed host runs on (on_host_remove close)")
                else:
                    await ws.send("still")
                    self.assertEqual(await ws.recv(), "still", f"{key}: another host's tunnel")
            down = await owners(3)
            for key in keys:
                if own[key] == victim:
                    self.assertNotEqual(down[key], victim, f"{key} still reached the downed host")
                else:
                    self.assertEqual(down[key], own[key], f"{key} moved off a host that stayed up")
            rc, _, err = await asyncio.to_thread(gw.gwctl, "up", "host", "ws/p", ids[victim])
            self.assertEqual(rc, 0, err)
            self.assertEqual(await owners(2), own, "the keys did not come back to their host")
            await asyncio.gather(*(ws.close() for ws in held.values()))
        run(go(), 120)
        st = gw.status()
        self.assertEqual(sum(w.get("hash_fallbacks", 0) for w in st["workers"]), 0)
        self.assertGreaterEqual(sum(w.get("host_closed", 0) for w in st["workers"]), 1)
        for b in bs:
            self.assertNoBackendErrors(b)

    def test_sticky_keys_of_a_dead_host_move_alone(self):
        """A host whose process is gone (connections refused; no gwctl):
        the upgrades of its keys go to one other host each, on both
        workers, and every other key stays where it was."""
        bs = [self.ws_backend(f"ws{i}") for i in range(3)]
        gw = self.http_gw({"ws": ([(f"h{i}", b.address) for i, b in enumerate(bs)], {"method": "chash"})},
                          listener_opts={"hash_key": "cookie:sid"}, workers=2)
        keys = [f"s{k}" for k in range(30)]

        async def owner(key):
            async with ws_connect(gw.port, "/", [("Cookie", f"sid={key}")]) as ws:
                await ws.send("__name__")
                return await ws.recv()

        async def owners():
            out = {}
            for key in keys:
                got = await asyncio.gather(*(owner(key) for _ in range(4)))
                self.assertEqual(len(set(got)), 1, f"{key}: new sessions reached {got}")
                out[key] = got[0]
            return out
        own = run(owners())
        victim = collections.Counter(own.values()).most_common(1)[0][0]
        next(b for b in bs if b.name == victim).stop()
        after = run(owners())
        for key in keys:
            if own[key] == victim:
                self.assertNotEqual(after[key], victim, key)
            else:
                self.assertEqual(after[key], own[key], f"{key} moved off a live host")

    # ------------------------------------------------------------------------
    # what a tunnel leaves in the log, the status and the metrics

    def test_tunnel_log_and_counters_after_closes_and_resets(self):
        """Tunnels ended by a normal close (half-closes both ways), a client
        reset and a host reset, idle or with bytes in flight, over two
        workers: one access log line each (status 101, the bytes the client
        got after the 101 head, the tunnel's whole duration), and the hosts'
        active counts, the workers' connections and the listener's active
        gauge come back exactly to the tunnels still open."""
        log = os.path.join(self.tmp, "ws-access.log")
        echo = self.raw_backend("echo", ws_101() + b"hello")
        rst = self.raw_backend("rst", ws_101() + b"hello", rst_after=1000)
        admin_port = gwtest.free_port()
        token = "ws-admin-token-0123456789abcdef"
        gw = self.http_gw({"echo": ([("e", echo.address)], {}), "rst": ([("r", rst.address)], {})},
                          routes=[{"name": "echo", "path": "/", "upstream": "echo"},
                                  {"name": "rst", "path": "/rst", "upstream": "rst"}],
                          listener_opts={"access_log": {"path": log, "format": "json"}}, workers=2,
                          admin={"listen": f"{gwtest.LOOPBACK}:{admin_port}", "token": token})
        data = hb_pattern(1000)
        big = hb_pattern(MiB)

        def tunnel(target):
            s = socket.create_connection((gwtest.LOOPBACK, gw.port), timeout=T(10))
            s.sendall(upgrade_request(target))
            rd = Reader(s)
            self.assertTrue(rd.read_head().startswith(b"HTTP/1.1 101"))
            return s, rd

        def read_n(rd, n):
            while len(rd.buf) < n and rd._fill():
                pass
            got = bytes(rd.buf[:n])
            del rd.buf[:n]
            return got

        def read_to_end(rd):
            # what arrives until EOF or a reset
            try:
                while rd._fill():
                    pass
            except OSError:
                pass
            return bytes(rd.buf)

        def send_some(s, payload):
            # as much as goes without blocking: bytes left in flight both ways
            s.setblocking(False)
            try:
                s.send(payload)
            except OSError:
                pass
            s.setblocking(True)
            s.settimeout(T(10))

        def reset(s):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

        def log_lines():
            try:
                with open(log, "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                return []
            return [json.loads(l) for l in raw[:raw.rfind(b"\n") + 1].splitlines()]

        def metrics():
            r = hb_request(admin_port, "GET", "/metrics", headers=[("Authorization", f"Bearer {token}")],
                           timeout=T(10))
            self.assertEqual(r.status, 200)
            out = collections.defaultdict(float)
            for line in r.body.decode().splitlines():
                if line and not line.startswith("#"):
                    name_labels, value = line.rsplit(" ", 1)
                    out[name_labels] += float(value)
            return out

        def metric(m, name, **labels):
            return sum(v for k, v in m.items() if k.split("{")[0] == name
                       and all(f'{a}="{b}"' in k for a, b in labels.items()))

        # tunnels held open throughout: the counts must come back to them, not to 0
        held = [tunnel("/")[0] for _ in range(6)] + [tunnel("/rst")[0] for _ in range(6)]
        N = 4
        for _ in range(N):
            # normal: the client's FIN, then the host's "bye" and FIN
            t0 = time.monotonic()
            s, rd = tunnel("/")
            s.sendall(data)
            self.assertEqual(read_n(rd, 1005), b"hello" + data)
            time.sleep(0.2)  # the tunnel lives at least this long: its logged duration
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(read_n(rd, 1 << 20), b"bye\n")
            s.close()
            hold_ms = (time.monotonic() - t0) * 1000
            # the client resets an idle tunnel
            s, rd = tunnel("/")
            s.sendall(data)
            self.assertEqual(read_n(rd, 1005), b"hello" + data)
            reset(s)
            # the client resets with bytes in flight both ways
            s, rd = tunnel("/")
            send_some(s, big)
            self.assertEqual(read_n(rd, 5), b"hello")
            reset(s)
            # the host resets once it has echoed 1000 bytes: an idle tunnel ...
            s, rd = tunnel("/rst")
            s.sendall(data)
            self.assertEqual(read_to_end(rd), b"hello" + data)
            s.close()
            # ... and one with bytes in flight
            s, rd = tunnel("/rst")
            send_some(s, big)
            read_to_end(rd)
            s.close()
        opened = 12 + 5 * N

        def settled():
            st = gw.status()
            return (len(log_lines()) >= opened - 12 and sum(w["connections"] for w in st["workers"]) == 12
                    and gwtest.find_host(st, "echo/p/e")["active"] == 6
                    and gwtest.find_host(st, "rst/p/r")["active"] == 6)
        gwtest.wait_until(settled, T(10), msg="the ended tunnels to be logged and counted closed")
        st = gw.status()
        self.assertEqual(sum_http(st, "tunnels"), opened)
        self.assertEqual(gwtest.find_host(st, "echo/p/e")["total"], 6 + 3 * N)
        self.assertEqual(gwtest.find_host(st, "rst/p/r")["total"], 6 + 2 * N)
        m = metrics()
        self.assertEqual(metric(m, "gw_worker_http_tunnels_total"), opened)
        self.assertEqual(metric(m, "gw_upstream_host_active", host="e"), 6)
        self.assertEqual(metric(m, "gw_upstream_host_active", host="r"), 6)
        self.assertEqual(metric(m, "gw_listener_active", listener="web"), 12)
        lines = log_lines()
        self.assertEqual(len(lines), 5 * N, "one log line per ended tunnel")
        for e in lines:
            self.assertEqual((e["status"], e["upstream_status"]), (101, 101), e)
        by_route = collections.Counter((e["route"], e["bytes"]) for e in lines)
        self.assertEqual(by_route[("echo", 1009)], N, by_route)   # hello + echo + bye
        self.assertEqual(by_route[("echo", 1005)], N, by_route)   # hello + echo
        self.assertEqual(by_route[("rst", 1005)], N, by_route)
        self.assertEqual(sum(n for (r, _), n in by_route.items() if r == "echo"), 3 * N, by_route)
        for e in lines:
            if e["bytes"] == 1009:
                self.assertGreaterEqual(e["request_time_ms"], 200, e)
                self.assertLessEqual(e["request_time_ms"], hold_ms + T(5) * 1000, e)
        # the held tunnels end: every count comes back to zero
        for s in held:
            s.close()

        def zero():
            st = gw.status()
            return (sum(w["connections"] for w in st["workers"]) == 0
                    and gwtest.find_host(st, "echo/p/e")["active"] == 0
                    and gwtest.find_host(st, "rst/p/r")["active"] == 0 and len(log_lines()) == opened)
        gwtest.wait_until(zero, T(10), msg="the held tunnels to close")
        m = metrics()
        self.assertEqual(metric(m, "gw_upstream_host_active", host="e"), 0)
        self.assertEqual(metric(m, "gw_listener_active", listener="web"), 0)

    # ------------------------------------------------------------------------
    # back-pressure both ways

    def test_16mib_with_slow_readers_both_ways(self):
        """16 MiB through a tunnel whose host reads 16 KiB at a time with a
        pause after each, to a client that reads as slowly: gw holds back
        each side (it buffers 16 KiB a direction) and every byte arrives in
        order, under either engine."""
        slow = self.raw_backend("slow", ws_101(), slow=0.001)
        gw = self.http_gw({"app": ([("s", slow.address)], {})})
        s = socket.create_connection((gwtest.LOOPBACK, gw.port), timeout=T(30))
        self.addCleanup(s.close)
        s.sendall(upgrade_request())
        rd = Reader(s)
        self.assertTrue(rd.read_head().startswith(b"HTTP/1.1 101"))
        sent = []

        def send_all():
            try:
                for part in hb_iter_pattern(BIG):
                    s.sendall(part)
                sent.append(True)
            except OSError as e:
                sent.append(e)
        t = threading.Thread(target=send_all, daemon=True)
        t.start()
        h = hashlib.sha256(bytes(rd.buf))
        got = len(rd.buf)
        rd.buf.clear()
        while got < BIG:
            chunk = s.recv(min(16384, BIG - got))
            self.assertTrue(chunk, f"EOF after {got} bytes")
            h.update(chunk)
            got += len(chunk)
            time.sleep(0.001)
        t.join(T(30))
        self.assertEqual(sent, [True])
        self.assertEqual(h.hexdigest(), hb_pattern_sha256(BIG), "the echo differs")
        s.shutdown(socket.SHUT_WR)
        self.assertEqual(read_response_rest(s), b"bye\n")
        gwtest.wait_until(lambda: slow.eofs == 1, T(5), msg="the host to see the client's FIN")
        self.assertEqual(hashlib.sha256(slow.received[0]).hexdigest(), hb_pattern_sha256(BIG))


if __name__ == "__main__":
    gwtest.main()
