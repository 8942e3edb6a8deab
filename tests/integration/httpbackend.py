"""httpbackend: a threaded HTTP/1.1 test backend (and small raw HTTP client
helpers) for gw's HTTP integration tests. Python 3.11 standard library only.

    from httpbackend import HttpBackend, request, read_response

    b = HttpBackend("alpha")                   # 127.0.0.1:<free port>, started
    ...  host("a", b.address) in the gw config ...
    r = request(gw_port, "GET", "/x", headers=[("Host", "a")])
    r.status, r.headers, r.body, r.json()      # json(): the backend's echo
    b.requests, b.connections, b.records       # counters, recorded requests
    b.stop()                                   # closes everything, joins threads

Default answer: 200 with a JSON body describing the request:
    {"backend": NAME, "method", "target", "version", "headers": [[name, value], ...]
     (in order, as received), "body_len", "body_sha256", "chunked": bool,
     "chunks": [sizes...] (first 64), "trailers": [[n, v], ...],
     "conn": connection number (1-based, per backend), "seq": request number on
     that connection (1-based), "n": request number on this backend (1-based)}

Behaviour (constructor keywords = backend defaults; change later with
b.set(**kw); override per request with headers "X-Be-<Key>: value", key with
'-' for '_', e.g. "X-Be-Status: 503", "X-Be-Body-Size: 1000000"):
    status        int, default 200
    framing       "length" (Content-Length), "chunked" or "close" (until close)
    body_size     None: the JSON echo; N: N bytes of pattern_bytes()
    chunk_size    chunk size for framing "chunked" (default 65536)
    delay_head    seconds to wait before sending the response head
    delay_body    seconds to wait after half of the body was sent
    keepalive     False: answer "Connection: close" and close after each response
    close_after   close (silently, without "Connection: close") after N responses
                  on a connection (0 = never)
    idle_close    seconds: close a kept-alive connection idle this long (0 = never)
    continue_100  True: send "100 Continue" to "Expect: 100-continue" before reading the body
    read_body     False: do not read the request body before answering (it is then
                  read and discarded after the response)
    action        "normal"
                  "close_after_head"   close right after reading the request head
                  "interim_then_close"  send a 103 Early Hints, then close
                  "reset_after_head"   RST (SO_LINGER 0) right after reading the request head
                  "reset_after_resp_head"  send the response head, then RST
                  "close_mid_body"     send the head and half of the body, then close
                  "hang"               read the request, never answer (until stop)
                  "te_cl"              response with Transfer-Encoding and Content-Length
                  "bad_status"         response "HTTP/1.1 2x0 OK"
                  "garbage"            response "hello world\\r\\n\\r\\n"
                  "huge_headers"       response head of ~64 KiB
                  "bare_lf"            response head with LF line ends
    headers       extra response headers: list of (name, value)
    body_gate     a threading.Event: wait for it before reading the request body
    handler       callable(rec) -> dict of overrides or None, called after the
                  request head was read (rec: a Record without body facts yet)
    trace         True: keep every request's Record in b.records (default True)

Counters (read any time; b.lock guards them): connections (accepted),
active (open now), requests (request heads read), responses (completed),
body_bytes_sent (response body bytes written, all requests), resets, closes.
b.records: Record per request (method, target, version, headers, body_len,
body_sha256, conn, seq, n, chunks, trailers); b.last().
"""

import hashlib
import json
import random
import select
import socket
import struct
import threading
import time

LOOPBACK = "127.0.0.1"

__all__ = ["HttpBackend", "Record", "Response", "pattern_bytes", "pattern_sha256",
           "request", "read_response", "read_head", "connect", "HttpError"]

# ----------------------------------------------------------------------------
# body pattern (deterministic, 1 MiB period so shifted bytes are detected)

_BLOCK = random.Random(0x6777).randbytes(1 << 20)


def pattern_bytes(n, offset=0):
    """n bytes of the test pattern starting at offset."""
    out = bytearray()
    pos = offset % len(_BLOCK)
    while len(out) < n:
        take = min(n - len(out), len(_BLOCK) - pos)
        out += _BLOCK[pos:pos + take]
        pos = 0
    return bytes(out)


def iter_pattern(n, piece=1 << 16):
    """Yields memoryviews of the pattern totalling n bytes (no big allocation)."""
    mv = memoryview(_BLOCK)
    pos = 0
    left = n
    while left > 0:
        take = min(left, piece, len(_BLOCK) - pos)
        yield mv[pos:pos + take]
        pos = (pos + take) % len(_BLOCK)
        left -= take


_sha_cache = {}


def pattern_sha256(n):
    if n not in _sha_cache:
        h = hashlib.sha256()
        for part in iter_pattern(n, 1 << 20):
            h.update(part)
        _sha_cache[n] = h.hexdigest()
    return _sha_cache[n]


class HttpError(Exception):
    pass


# ----------------------------------------------------------------------------
# a buffered socket reader shared by the server and the client helpers

class Reader:
    def __init__(self, sock, stop=None):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.stop = stop

    def _fill(self):
        if self.eof:
            return False
        while True:
            try:
                data = self.sock.recv(1 << 18)
            except socket.timeout:
                if self.stop is not None and not self.stop.is_set():
                    continue
                raise
            break
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, sep, limit=1 << 20):
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[:i + len(sep)])
                del self.buf[:i + len(sep)]
                return out
            start = max(0, len(self.buf) - len(sep) + 1)
            if len(self.buf) > limit:
                raise HttpError("line/head too long")
            if not self._fill():
                return None

    def read_head(self, limit=1 << 20):
        """Bytes up to and including the empty line ("\\r\\n\\r\\n"; a bare "\\n\\n" too)."""
        while True:
            i = self.buf.find(b"\r\n\r\n")
            j = self.buf.find(b"\n\n")
            ends = [x + 4 for x in (i,) if x >= 0] + [x + 2 for x in (j,) if x >= 0]
            if ends:
                e = min(ends)
                out = bytes(self.buf[:e])
                del self.buf[:e]
                return out
            if len(self.buf) > limit:
                raise HttpError("head too long")
            if not self._fill():
                if self.buf:
                    raise HttpError(f"EOF inside a head: {bytes(self.buf[:200])!r}")
                return None

    def read_exact(self, n, sink=None):
        """Reads n bytes; with sink(bytes) streams them instead of returning."""
        out = bytearray() if sink is None else None
        while n > 0:
            if not self.buf and not self._fill():
                raise HttpError(f"EOF with {n} body bytes missing")
            take = min(n, len(self.buf))
            part = bytes(self.buf[:take])
            del self.buf[:take]
            n -= take
            if sink is None:
                out += part
            else:
                sink(part)
        return bytes(out) if out is not None else None

    def read_to_eof(self, sink=None):
        out = bytearray() if sink is None else None
        while True:
            if self.buf:
                part = bytes(self.buf)
                self.buf.clear()
                if sink is None:
                    out += part
                else:
                    sink(part)
            if not self._fill():
                break
        return bytes(out) if out is not None else None

    def read_chunked(self, sink=None, chunks=None, trailers=None):
        """Decodes a chunked body; returns the data (or streams it into sink)."""
        out = bytearray() if sink is None else None
        while True:
            line = self.read_until(b"\r\n", limit=8192)
            if line is None:
                raise HttpError("EOF in a chunk size line")
            size_txt = line[:-2].split(b";", 1)[0].strip()
            try:
                size = int(size_txt, 16)
            except ValueError:
                raise HttpError(f"bad chunk size line {line!r}")
            if chunks is not None and len(chunks) < 64:
                chunks.append(size)
            if size == 0:
                break
            data = self.read_exact(size, sink)
            if out is not None:
                out += data
            if self.read_exact(2) != b"\r\n":
                raise HttpError("chunk data not followed by CRLF")
        while True:
            line = self.read_until(b"\r\n", limit=16384)
            if line is None:
                raise HttpError("EOF in the trailer section")
            if line == b"\r\n":
                break
            if trailers is not None:
                n, _, v = line[:-2].decode("latin-1").partition(":")
                trailers.append([n, v.strip()])
        return bytes(out) if out is not None else None


def parse_head(raw):
    """(start line parts, [(name, value)]) from head bytes (CRLF or LF lines)."""
    text = raw.decode("latin-1")
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise HttpError("empty head")
    start = lines[0]
    headers = []
    for l in lines[1:]:
        n, sep, v = l.partition(":")
        if not sep:
            raise HttpError(f"bad header line {l!r}")
        headers.append((n, v.strip(" \t")))
    return start, headers


def hget(headers, name, default=None):
    """The first value of header `name` (case-insensitive) in a list of pairs."""
    ln = name.lower()
    for n, v in headers:
        if n.lower() == ln:
            return v
    return default


def hall(headers, name):
    ln = name.lower()
    return [v for n, v in headers if n.lower() == ln]


def _tokens(headers, name):
    out = []
    for v in hall(headers, name):
        out += [t.strip().lower() for t in v.split(",") if t.strip()]
    return out


# ----------------------------------------------------------------------------
# the server

class Record:
    """One request as the backend saw it."""

    def __init__(self, method, target, version, headers, conn, seq, n):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers          # [(name, value)] in order
        self.conn = conn
        self.seq = seq
        self.n = n
        self.body_len = 0
        self.body_sha256 = hashlib.sha256(b"").hexdigest()
        self.chunked = False
        self.chunks = []
        self.trailers = []
        self.complete = False           # the whole body was read

    def header(self, name, default=None):
        return hget(self.headers, name, default)

    def header_all(self, name):
        return hall(self.headers, name)

    def as_dict(self, backend):
        return {"backend": backend, "method": self.method, "target": self.target,
                "version": self.version, "headers": [list(h) for h in self.headers],
                "body_len": self.body_len, "body_sha256": self.body_sha256,
                "chunked": self.chunked, "chunks": self.chunks, "trailers": self.trailers,
                "conn": self.conn, "seq": self.seq, "n": self.n}

    def __repr__(self):
        return (f"Record({self.method} {self.target} {self.version} conn={self.conn} seq={self.seq} "
                f"body={self.body_len})")


_DEFAULTS = {
    "status": 200,
    "framing": "length",
    "body_size": None,
    "chunk_size": 65536,
    "delay_head": 0.0,
    "delay_body": 0.0,
    "keepalive": True,
    "close_after": 0,
    "idle_close": 0.0,
    "continue_100": True,
    "read_body": True,
    "action": "normal",
    "headers": (),
    "body_gate": None,
    "handler": None,
    "trace": True,
}

_REASONS = {100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content",
            301: "Moved Permanently", 304: "Not Modified", 400: "Bad Request", 404: "Not Found",
            408: "Request Timeout", 426: "Upgrade Required", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def _coerce(key, value):
    d = _DEFAULTS.get(key)
    if isinstance(d, bool):
        return str(value).lower() in ("1", "true", "yes", "on")
    if key in ("status", "close_after", "chunk_size"):
        return int(value)
    if key == "body_size":
        return None if str(value).lower() in ("", "none", "json") else int(value)
    if key in ("delay_head", "delay_body", "idle_close"):
        return float(value)
    return value


class HttpBackend:
    def __init__(self, name, port=None, host=LOOPBACK, backlog=1024, rcvbuf=None, **behaviour):
        unknown = set(behaviour) - set(_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown behaviour keys {sorted(unknown)}")
        self.name = name
        self.cfg = dict(_DEFAULTS)
        self.cfg.update(behaviour)
        self.lock = threading.Lock()
        self.connections = 0
        self.active = 0
        self.requests = 0
        self.responses = 0
        self.body_bytes_sent = 0
        self.resets = 0
        self.closes = 0
        self.records = []
        self.errors = []
        self._stop = threading.Event()
        self._conns = set()
        self._threads = set()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((host, port or 0))
        self.sock.listen(backlog)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.address = f"{host}:{self.port}"
        self.thread = threading.Thread(target=self._accept_loop, name=f"httpbackend-{name}", daemon=True)
        self.thread.start()

    def __repr__(self):
        return (f"HttpBackend({self.name!r}, {self.address}, connections={self.connections}, "
                f"active={self.active}, requests={self.requests}, responses={self.responses}, "
                f"errors={self.errors[:3]})")

    # -- control
    def set(self, **kw):
        unknown = set(kw) - set(_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown behaviour keys {sorted(unknown)}")
        with self.lock:
            self.cfg.update(kw)

    def counts(self):
        """(connections, requests) under the lock."""
        with self.lock:
            return self.connections, self.requests

    def last(self):
        with self.lock:
            return self.records[-1] if self.records else None

    def reset_records(self):
        with self.lock:
            self.records = []

    def wait_requests(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.requests >= n:
                    return True
            time.sleep(0.005)
        raise AssertionError(f"{self.name}: {self.requests} requests, waited for {n}")

    def stop(self, timeout=3.0):
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self.thread.join(timeout)
        with self.lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.01, deadline - time.monotonic()))

    # -- internals
    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.01)
                continue
            c.settimeout(0.2)
            try:
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            with self.lock:
                self.connections += 1
                cid = self.connections
                self.active += 1
                self._conns.add(c)
                t = threading.Thread(target=self._serve, args=(c, cid), daemon=True,
                                     name=f"httpbackend-{self.name}-{cid}")
                self._threads.add(t)
            t.start()

    def _sleep(self, secs):
        if secs > 0:
            self._stop.wait(secs)

    def _reset(self, c):
        try:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        with self.lock:
            self.resets += 1

    def _serve(self, c, cid):
        reset = False
        try:
            reset = self._serve_conn(c, cid)
        except (OSError, HttpError) as e:
            if not self._stop.is_set():
                with self.lock:
                    self.errors.append(f"conn {cid}: {e!r}")
        finally:
            if reset:
                self._reset(c)
            # Closed before it is counted: a test that sees `closes` go up may count on the
            # FIN (or reset) being on its way.
            try:
                c.close()
            except OSError:
                pass
            with self.lock:
                self.active -= 1
                self.closes += 1
                self._conns.discard(c)
                self._threads.discard(threading.current_thread())

    def _wait_readable(self, c, rd, idle):
        """Waits for the next request's first byte; False on EOF/idle close/stop."""
        if rd.buf:
            return True
        t0 = time.monotonic()
        while not self._stop.is_set():
            if idle:
                left = idle - (time.monotonic() - t0)
                if left <= 0:
                    return False
                # The socket's own timeout (0.2 s) would make a short idle_close that long.
                if left < 0.2 and not select.select([c], [], [], left)[0]:
                    continue
            try:
                data = c.recv(1 << 18)
            except socket.timeout:
                continue
            if not data:
                rd.eof = True
                return False
            rd.buf += data
            return True
        return False

    def _serve_conn(self, c, cid):
        """Returns True to close with a reset."""
        rd = Reader(c, self._stop)
        seq = 0
        while not self._stop.is_set():
            with self.lock:
                idle = self.cfg["idle_close"] if seq else 0
            if not self._wait_readable(c, rd, idle):
                return False
            raw = rd.read_head()
            if raw is None:
                return False
            start, headers = parse_head(raw)
            parts = start.split(" ")
            if len(parts) != 3:
                raise HttpError(f"bad request line {start!r}")
            method, target, version = parts
            seq += 1
            with self.lock:
                self.requests += 1
                rec = Record(method, target, version, headers, cid, seq, self.requests)
                cfg = dict(self.cfg)
                if cfg["trace"]:
                    self.records.append(rec)
            # per-request overrides
            for n, v in headers:
                ln = n.lower()
                if ln.startswith("x-be-"):
                    key = ln[5:].replace("-", "_")
                    if key in _DEFAULTS and key not in ("headers", "body_gate", "handler", "trace"):
                        cfg[key] = _coerce(key, v)
            if cfg["handler"] is not None:
                over = cfg["handler"](rec)
                if over:
                    cfg.update(over)
            action = cfg["action"]
            if action == "close_after_head":
                return False
            if action == "reset_after_head":
                return True
            if action == "interim_then_close":
                c.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                time.sleep(0.1)
                return False

            # request body framing
            te = _tokens(headers, "transfer-encoding")
            cl = hget(headers, "content-length")
            body_kind = "none"
            if te:
                body_kind = "chunked" if te[-1] == "chunked" else "close"
            elif cl is not None:
                body_kind = "length"
            want_close = "close" in _tokens(headers, "connection")
            if version == "HTTP/1.0" and "keep-alive" not in _tokens(headers, "connection"):
                want_close = True
            expect = (hget(headers, "expect") or "").lower() == "100-continue"

            def read_body():
                h = hashlib.sha256()
                n = [0]

                def sink(b):
                    h.update(b)
                    n[0] += len(b)
                if body_kind == "length":
                    rd.read_exact(int(cl), sink)
                elif body_kind == "chunked":
                    rec.chunked = True
                    rd.read_chunked(sink, rec.chunks, rec.trailers)
                elif body_kind == "close":
                    rd.read_to_eof(sink)
                rec.body_len = n[0]
                rec.body_sha256 = h.hexdigest()
                rec.complete = True

            if body_kind != "none" and cfg["read_body"]:
                if expect and cfg["continue_100"]:
                    self._sendall(c, b"HTTP/1.1 100 Continue\r\n\r\n", False)
                gate = cfg["body_gate"]
                if gate is not None:
                    while not gate.wait(0.05):
                        if self._stop.is_set():
                            return False
                read_body()
            if action == "hang":
                self._stop.wait()
                return False

            self._sleep(cfg["delay_head"])
            if self._stop.is_set():
                return False

            # the response
            status = cfg["status"]
            keep = cfg["keepalive"] and not want_close
            if cfg["close_after"] and seq >= cfg["close_after"]:
                keep_silently_closes = True
            else:
                keep_silently_closes = False
            reset_after_head = action == "reset_after_resp_head"
            no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
            if cfg["body_size"] is None:
                body = json.dumps(rec.as_dict(self.name)).encode() + b"\n"
                size = len(body)
            else:
                body = None
                size = cfg["body_size"]
            framing = cfg["framing"]
            lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
            if action == "bad_status":
                lines = ["HTTP/1.1 2x0 OK"]
            elif action == "garbage":
                self._sendall(c, b"hello world\r\n\r\n", False)
                return False
            lines.append(f"X-Backend: {self.name}")
            lines.append(f"X-Conn: {cid}")
            lines.append(f"X-Seq: {seq}")
            for n, v in cfg["headers"]:
                lines.append(f"{n}: {v}")
            if action == "te_cl":
                pass
            elif not no_body or (method == "HEAD" and status not in (204, 304)):
                if framing == "length":
                    lines.append(f"Content-Length: {size}")
                elif framing == "chunked":
                    lines.append("Transfer-Encoding: chunked")
            if action == "te_cl":
                lines.append("Transfer-Encoding: chunked")
                lines.append(f"Content-Length: {size}")
                framing = "chunked"
            if action == "huge_headers":
                for i in range(64):
                    lines.append(f"X-Big-{i}: " + "b" * 1000)
            if framing == "close" and not no_body:
                keep = False
            if not keep:
                lines.append("Connection: close")
            elif version == "HTTP/1.0":
                lines.append("Connection: keep-alive")
            eol = "\n" if action == "bare_lf" else "\r\n"
            head = (eol.join(lines) + eol + eol).encode("latin-1")
            if (body is not None and not no_body and framing != "chunked" and not reset_after_head
                    and cfg["delay_body"] <= 0 and action == "normal"):
                # a small JSON answer: head and body in one write
                self._sendall(c, head + body, False)
                with self.lock:
                    self.body_bytes_sent += len(body)
                no_body = True
            else:
                self._sendall(c, head, False)
            if reset_after_head:
                return True
            sent = 0
            if not no_body:
                half = size // 2
                mid_pending = cfg["delay_body"] > 0 or action == "close_mid_body"
                pieces = [memoryview(body)] if body is not None else iter_pattern(size)
                chunk = max(1, cfg["chunk_size"])
                for piece in pieces:
                    off = 0
                    while off < len(piece):
                        rest = len(piece) - off
                        if mid_pending and sent <= half < sent + rest:
                            n = half - sent
                            self._send_body(c, piece[off:off + n], framing, chunk)
                            sent += n
                            off += n
                            if action == "close_mid_body":
                                return False
                            mid_pending = False
                            self._sleep(cfg["delay_body"])
                            if self._stop.is_set():
                                return False
                            continue
                        self._send_body(c, piece[off:], framing, chunk)
                        sent += rest
                        off += rest
                if framing == "chunked":
                    self._sendall(c, b"0\r\n\r\n", False)
            with self.lock:
                self.responses += 1
            if body_kind != "none" and not cfg["read_body"]:
                read_body()
            if not keep or framing == "close" or keep_silently_closes:
                if framing == "close" or not keep:
                    try:
                        c.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    # wait briefly for the peer's close so no RST hits unread data
                    end = time.monotonic() + 1.0
                    try:
                        while time.monotonic() < end and not self._stop.is_set():
                            try:
                                if not c.recv(65536):
                                    break
                            except socket.timeout:
                                continue
                    except OSError:
                        pass
                return False

    def _send_body(self, c, data, framing, chunk):
        if not len(data):
            return
        if framing == "chunked":
            for off in range(0, len(data), chunk):
                part = data[off:off + chunk]
                self._sendall(c, b"%x\r\n" % len(part), False)
                self._sendall(c, part)
                self._sendall(c, b"\r\n", False)
        else:
            self._sendall(c, data)

    def _sendall(self, c, data, count=True):
        mv = memoryview(data)
        while len(mv):
            try:
                n = c.send(mv)
            except socket.timeout:
                if self._stop.is_set():
                    raise OSError("stopped")
                continue
            mv = mv[n:]
            if count:
                with self.lock:
                    self.body_bytes_sent += n


# ----------------------------------------------------------------------------
# client helpers

class Response:
    def __init__(self, version, status, reason, headers, body, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers      # [(name, value)] in order
        self.body = body
        self.raw_head = raw_head
        self.interim = []           # 1xx responses before this one: [(status, headers)]

    def header(self, name, default=None):
        return hget(self.headers, name, default)

    def header_all(self, name):
        return hall(self.headers, name)

    def has(self, name):
        return hget(self.headers, name) is not None

    def json(self):
        return json.loads(self.body)

    def conn_tokens(self):
        return _tokens(self.headers, "connection")

    def __repr__(self):
        return f"Response({self.status} {self.reason!r}, {len(self.body or b'')} body bytes, {self.headers})"


def connect(port, timeout=10.0, host=LOOPBACK):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_head(sock_or_reader):
    rd = sock_or_reader if isinstance(sock_or_reader, Reader) else Reader(sock_or_reader)
    raw = rd.read_head()
    if raw is None:
        return None
    start, headers = parse_head(raw)
    return start, headers, raw


def read_response(sock_or_reader, method="GET", sink=None, skip_interim=True):
    """Reads one response from a socket (or a Reader, to keep pipelined bytes).

    Returns a Response, or None on a clean EOF before any byte. The body is
    framed by Content-Length, chunked or EOF; none for HEAD, 1xx, 204, 304.
    With sink(bytes) the body is streamed (Response.body is then None). 1xx
    responses are collected into .interim."""
    rd = sock_or_reader if isinstance(sock_or_reader, Reader) else Reader(sock_or_reader)
    interim = []
    while True:
        raw = rd.read_head()
        if raw is None:
            return None
        start, headers = parse_head(raw)
        parts = start.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise HttpError(f"bad status line {start!r}")
        try:
            status = int(parts[1])
        except ValueError:
            raise HttpError(f"bad status line {start!r}")
        reason = parts[2] if len(parts) > 2 else ""
        if 100 <= status < 200 and status != 101 and skip_interim:
            interim.append((status, headers))
            continue
        break
    te = _tokens(headers, "transfer-encoding")
    cl = hget(headers, "content-length")
    if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        body = b"" if sink is None else None
    elif te and te[-1] == "chunked":
        body = rd.read_chunked(sink)
    elif cl is not None:
        body = rd.read_exact(int(cl), sink)
    else:
        body = rd.read_to_eof(sink)
    r = Response(parts[0], status, reason, headers, body, raw)
    r.interim = interim
    return r


def request(port, method="GET", target="/", headers=None, body=None, host="test", timeout=10.0,
            version="HTTP/1.1", chunked=False):
    """One request on a new connection ("Connection: close" unless given); returns a Response.

    headers: list of (name, value); a Host header is added unless one is given
    (host=None: none). body: bytes (sent with Content-Length, or chunked in one
    chunk with chunked=True)."""
    headers = list(headers or [])
    names = {n.lower() for n, _ in headers}
    if host is not None and "host" not in names:
        headers.insert(0, ("Host", host))
    if "connection" not in names:
        headers.append(("Connection", "close"))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Content-Length", str(len(body))))
    head = f"{method} {target} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    data = head.encode("latin-1")
    if body is not None:
        if chunked:
            data += (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
        else:
            data += body
    with connect(port, timeout) as s:
        s.sendall(data)
        return read_response(s, method)
