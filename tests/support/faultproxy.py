"""A fault-injecting HTTP/1.1 proxy on loopback, in front of an S3 endpoint (SeaweedFS).

The agent's `storage.endpoint_url` points here; requests are forwarded byte for byte (the Host
header too, so SigV4 signatures stay valid) unless a rule says otherwise:

- `hold(match)`: the first matching request waits in the proxy (before it is forwarded, or after
  the store answered but before the answer is relayed) until the test releases it. Tests use it
  to SIGKILL the agent at an exact point of a backup without any hook in the product.
- `faults(rate, kinds)`: a seeded share of requests gets a fault instead: 500 InternalError,
  503 SlowDown (S3 XML errors), a connection reset before or after the store applied the
  request, a stall, or a response whose body (or header block) is cut short.
- `inject(match, kind, times)`: the next matching request(s) get that fault, e.g. the answer
  to a CompleteMultipartUpload lost after the store applied it.
- `down(kind)`: every request fails the same way (503 SlowDown, 500, reset).

Like S3, a request body that stops arriving gets 400 RequestTimeout after BODY_TIMEOUT.

Every request is recorded in `seen` (method, path, query, what was done), for assertions and
for the fault figures of docs/RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# How long a request body may stall before the proxy answers 400 RequestTimeout, as S3 does.
BODY_TIMEOUT = 20.0
FAULT_KINDS = ("500", "503", "reset", "reset_after", "stall", "truncate")
# Only on request (`inject`): after the store applied the request, the answer stops right after
# its status line; http.client takes the EOF for the end of the headers: a 200 without any.
INJECT_ONLY = ("headers_lost",)
ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message><RequestId>faultproxy</RequestId></Error>"
)
ERRORS = {
    "500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def path(self) -> str:
        return unquote(urlsplit(self.target).path)

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def __str__(self) -> str:
        q = urlsplit(self.target).query
        return f"{self.method} {self.path}{'?' + q if q else ''}"


@dataclass
class Seen:
    request: str
    method: str
    path: str
    query: dict[str, list[str]]
    action: str  # forwarded | one of FAULT_KINDS | down-<kind> | held
    status: int | None = None


class Hold:
    """One request kept waiting in the proxy; `reached` is set when it arrives."""

    def __init__(self, match: Callable[[Request], bool], after: bool, nth: int) -> None:
        self.match = match
        self.after = after
        self.nth = nth
        self.count = 0
        self.reached = threading.Event()
        self.released = threading.Event()
        self.forward_on_release = False
        self.request: Request | None = None

    def wait(self, timeout: float) -> bool:
        return self.reached.wait(timeout)

    def release(self, forward: bool = False) -> None:
        """Let it go: relay it (forward=True) or drop its connection (the agent is dead anyway)."""
        self.forward_on_release = forward
        self.released.set()


@dataclass
class FaultPlan:
    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    stall_s: float = 1.5
    match: Callable[[Request], bool] | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(0))


class FaultProxy:
    def __init__(self, upstream_url: str, seed: int = 0) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen: list[Seen] = []
        self.holds: list[Hold] = []
        self.plan = FaultPlan(rng=random.Random(seed))
        self.down_kind: str | None = None
        self.injections: list[list[Any]] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.conns: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True, name="faultproxy-accept").start()

    # --- configuration -------------------------------------------------------------------------

    def hold(self, match: Callable[[Request], bool], *, after: bool = False, nth: int = 1) -> Hold:
        """Hold the `nth` request that matches; `after`: once the store has answered it."""
        h = Hold(match, after, nth)
        with self.lock:
            self.holds.append(h)
        return h

    def inject(self, match: Callable[[Request], bool], kind: str, times: int = 1) -> None:
        """Give the next `times` matching requests the fault `kind` (FAULT_KINDS, INJECT_ONLY)."""
        assert kind in FAULT_KINDS + INJECT_ONLY, kind
        with self.lock:
            self.injections.append([match, kind, times])

    def faults(self, rate: float, kinds: tuple[str, ...] = FAULT_KINDS, *, stall_s: float = 1.5,
               match: Callable[[Request], bool] | None = None, seed: int = 0) -> None:
        with self.lock:
            self.plan = FaultPlan(rate, kinds, stall_s, match, random.Random(seed))

    def down(self, kind: str | None) -> None:
        """Fail every request with `kind` ("503", "500", "reset"); None: healthy again."""
        with self.lock:
            self.down_kind = kind

    def clear(self) -> None:
        with self.lock:
            self.holds.clear()
            self.injections.clear()
            self.plan = FaultPlan()
            self.down_kind = None

    # --- figures -------------------------------------------------------------------------------

    def count(self, action: str | None = None, *, since: int = 0) -> int:
        with self.lock:
            return sum(1 for s in self.seen[since:] if action is None or s.action == action)

    def faulted(self, since: int = 0) -> int:
        with self.lock:
            return sum(1 for s in self.seen[since:] if s.action in FAULT_KINDS)

    def requests(self, match: Callable[[Seen], bool] | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if match is None or match(s)]

    # --- serving -------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True, name="faultproxy-conn").start()

    def _serve(self, conn: socket.socket) -> None:
        up: http.client.HTTPConnection | None = None
        rfile = conn.makefile("rb")
        try:
            while not self.closing.is_set():
                try:
                    req = _read_request(rfile, conn)
                except ShortBody as short:
                    body = ERROR_XML.format(code="RequestTimeout", message="Your socket connection to the server "
                                            "was not read from or written to within the timeout period.").encode()
                    with contextlib.suppress(OSError):
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\n"
                                     b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                                     + b"\r\n\r\n" + body)
                    with self.lock:
                        self.seen.append(Seen(f"{short.method} {short.target}", short.method,
                                              unquote(urlsplit(short.target).path), {}, "short-body", 400))
                    return
                if req is None:
                    return
                action, hold = self._decide(req)
                if action == "held" and hold is not None and not hold.after:
                    hold.request = req
                    hold.reached.set()
                    hold.released.wait()
                    if not hold.forward_on_release:
                        self._note(req, "held")
                        _reset(conn)
                        return
                    action = "forwarded"
                if action in ("reset",) or action == "down-reset":
                    self._note(req, action)
                    _reset(conn)
                    return
                if action in ("500", "503") or action in ("down-500", "down-503"):
                    status = _send_error(conn, req, action.removeprefix("down-"))
                    self._note(req, action, status)
                    continue
                if action == "stall":
                    time.sleep(self.plan.stall_s)
                if up is None:
                    up = http.client.HTTPConnection(*self.upstream, timeout=300)
                try:
                    status, reason, headers, body = _forward(up, req)
                except (OSError, http.client.HTTPException):
                    up.close()
                    up = None
                    self._note(req, "upstream-error")
                    _reset(conn)
                    return
                if action == "held" and hold is not None:  # held after the store answered
                    hold.request = req
                    hold.reached.set()
                    hold.released.wait()
                    if not hold.forward_on_release:
                        self._note(req, "held", status)
                        _reset(conn)
                        return
                if action == "reset_after":
                    self._note(req, action, status)
                    _reset(conn)
                    return
                if action == "truncate":
                    self._note(req, action, status)
                    _send_truncated(conn, req, status, reason, headers, body)
                    return
                if action == "headers_lost":
                    self._note(req, action, status)
                    with contextlib.suppress(OSError):
                        conn.sendall(f"HTTP/1.1 {status} {reason}\r\n".encode())
                        conn.shutdown(socket.SHUT_RDWR)
                    return
                self._note(req, action if action != "held" else "forwarded", status)
                conn.sendall(_response_bytes(req, status, reason, headers, body))
        except OSError:
            return
        finally:
            if up is not None:
                up.close()
            with contextlib.suppress(OSError):
                rfile.close()
            with contextlib.suppress(OSError):
                conn.close()
            with self.lock:
                self.conns.discard(conn)

    def _decide(self, req: Request) -> tuple[str, Hold | None]:
        with self.lock:
            chosen = None
            for h in self.holds:  # every hold counts its matches, whichever one takes the request
                if h.reached.is_set() or h.count >= h.nth or not h.match(req):
                    continue
                h.count += 1
                if h.count == h.nth and chosen is None:
                    chosen = h
            if chosen is not None:
                return "held", chosen
            for inj in self.injections:
                if inj[2] > 0 and inj[0](req):
                    inj[2] -= 1
                    return inj[1], None
            if self.down_kind is not None:
                return f"down-{self.down_kind}", None
            plan = self.plan
            if plan.rate > 0 and (plan.match is None or plan.match(req)) and plan.rng.random() < plan.rate:
                return plan.rng.choice(plan.kinds), None
        return "forwarded", None

    def _note(self, req: Request, action: str, status: int | None = None) -> None:
        with self.lock:
            self.seen.append(Seen(str(req), req.method, req.path, req.query, action, status))

    def close(self) -> None:
        self.closing.set()
        with self.lock:
            for h in self.holds:
                h.released.set()
            conns = list(self.conns)
        with contextlib.suppress(OSError):
            self.sock.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- HTTP plumbing -------------------------------------------------------------------------------

def _read_request(rfile: object, conn: socket.socket) -> Request | None:
    readline = rfile.readline  # type: ignore[attr-defined]
    read = rfile.read  # type: ignore[attr-defined]
    line = readline(65537)
    while line in (b"\r\n", b"\n"):
        line = readline(65537)
    if not line:
        return None
    method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        h = readline(65537)
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").rstrip("\r\n").partition(":")
        headers.append((k.strip(), v.strip()))
    names = {k.lower(): v for k, v in headers}
    if names.get("expect", "").lower() == "100-continue":
        # Answer for the store: the body comes now, and the store sees a plain request.
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        headers = [(k, v) for k, v in headers if k.lower() != "expect"]
    if "chunked" in names.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size_line = readline(65537)
            size = int(size_line.split(b";")[0].strip(), 16)
            chunk = read(size + 2)[:size]
            body += chunk
            if size == 0:
                while readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                break
        headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        headers.append(("Content-Length", str(len(body))))
    else:
        length = int(names.get("content-length") or 0)
        body = b""
        if length:
            # Like S3: a client that stops sending its body gets 400 RequestTimeout after a while.
            conn.settimeout(BODY_TIMEOUT)
            try:
                body = read(length)
            except TimeoutError:
                body = b""
            finally:
                conn.settimeout(None)
            if len(body) < length:
                raise ShortBody(method, target)
    return Request(method, target, headers, body)


class ShortBody(Exception):
    def __init__(self, method: str, target: str) -> None:
        super().__init__(f"{method} {target}")
        self.method = method
        self.target = target


def _forward(up: http.client.HTTPConnection, req: Request) -> tuple[int, str, list[tuple[str, str]], bytes]:
    up.putrequest(req.method, req.target, skip_host=True, skip_accept_encoding=True)
    for k, v in req.headers:
        up.putheader(k, v)
    up.endheaders(req.body if req.body else None)
    resp = up.getresponse()
    body = resp.read()
    headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in ("transfer-encoding", "connection")]
    if resp.will_close:
        up.close()
    return resp.status, resp.reason, headers, body


def _response_bytes(req: Request, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = [f"HTTP/1.1 {status} {reason}"]
    has_length = any(k.lower() == "content-length" for k, _ in headers)
    head += [f"{k}: {v}" for k, v in headers]
    if not has_length and req.method != "HEAD" and status not in (204, 304):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if req.method == "HEAD" else body)


def _send_error(conn: socket.socket, req: Request, kind: str) -> int:
    status, reason, code, message = ERRORS[kind]
    body = ERROR_XML.format(code=code, message=message).encode()
    headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body))),
               ("x-amz-request-id", "faultproxy")]
    conn.sendall(_response_bytes(req, status, reason, headers, body))
    return status


def _send_truncated(conn: socket.socket, req: Request, status: int, reason: str,
                    headers: list[tuple[str, str]], body: bytes) -> None:
    whole = _response_bytes(req, status, reason, headers, body)
    # The full header block and half of the body; without a body, half of the status line.
    # (Not the status line alone: http.client takes EOF for the end of the header block and
    # hands botocore a 200 without headers, which s3transfer then fails on with KeyError 'ETag'.)
    has_body = req.method != "HEAD" and len(body) >= 2
    cut = len(whole) - len(body) // 2 if has_body else whole.index(b"\r\n") // 2
    with contextlib.suppress(OSError):
        conn.sendall(whole[:cut])
        conn.shutdown(socket.SHUT_RDWR)


def _reset(conn: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0): what a crashed peer or a middlebox drop looks like."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
