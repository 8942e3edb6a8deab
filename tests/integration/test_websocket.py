#!/usr/bin/python3
"""WebSocket through gw's http listener (RFC 6455 over RFC 9110 Upgrade).

A real client and server (python3-websockets, asyncio API: Debian's 10.4 has
no sync API) talk through gw: text and binary echo, fragmented messages (the
fragment boundaries reach the other side unchanged), 16 MiB messages, ping and
pong both ways, close codes and reasons both ways, 50 sessions at once.
Raw sockets check the smuggling guard (a 426 or 200 answer to an Upgrade
request keeps HTTP: the next bytes are parsed and routed as a request), 101
without an Upgrade request (502), early data and half-close in the tunnel, the
tunnel idle timeout (upstream idle_timeout_ms), sticky sessions by hash key,
and the `tunnels` counter of `gwctl status --json`.
"""

import asyncio
import collections
import hashlib
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import GwTestCase, T, host, pool, upstream  # noqa: E402
from httpbackend import HttpBackend, Reader, parse_head, hget, read_response  # noqa: E402
from httpbackend import pattern_bytes as hb_pattern  # noqa: E402

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

    def __init__(self, name, answer):
        self.name = name
        self.answer = answer
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
                data = c.recv(65536)
                if not data:
                    break
                got += data
                c.sendall(data)
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
        list of route dicts, or None for a listener with "upstream": first name."""
        shm_name = self.shm_name()
        ups = []
        for name, (hosts, opts) in upstreams.items():
            method = opts.pop("method", "round_robin")
            ups.append(upstream(name, [pool("p", [host(h, a) for h, a in hosts], method=method)], **opts))
        lst = {"name": "web", "listen": f"{gwtest.LOOPBACK}:{gwtest.free_port()}", "protocol": "http",
               "backlog": 1024}
        if routes is None:
            lst["upstream"] = next(iter(upstreams))
        else:
            lst["routes"] = routes
        lst.update(listener_opts or {})
        cfg = {"workers": workers, "log_file": "", "log_level": "info", "shutdown_timeout_ms": 5000,
               "shm": {"name": shm_name, "max_upstreams": 8, "max_pools": 16, "max_hosts": 64},
               "state_file": os.path.join(self.tmp, f"{shm_name}.state.json"),
               "listeners": [lst], "upstreams": ups}
        cfg.update(top)
        return self.gateway(cfg)

    def ws_backend(self, name):
        b = WsBackend(name)
        self._backends.append(b)
        return b

    def http_backend(self, name, **kw):
        b = HttpBackend(name, **kw)
        self._backends.append(b)
        return b

    def raw_backend(self, name, answer):
        b = RawUpgradeBackend(name, answer)
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


if __name__ == "__main__":
    gwtest.main()
