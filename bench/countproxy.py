"""A byte-counting TCP relay on loopback, in front of an S3 endpoint, for benchmarks.

It relays both directions as they arrive (no HTTP parsing, no buffering of whole requests, so it
costs the tools almost nothing) and counts the bytes each way: `sent` is what the tools uploaded
(request lines, headers and bodies), `received` what they downloaded. Unlike a LIST of the bucket
after the fact, this also counts bytes sent and then deleted, retried or overwritten.
"""

from __future__ import annotations

import contextlib
import socket
import threading

BLOCK = 1 << 16


class CountingRelay:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.sent = 0
        self.received = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.sent = self.received = 0

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream)
            except OSError:
                conn.close()
                continue
            threading.Thread(target=self._pump, args=(conn, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, conn, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upload: bool) -> None:
        try:
            while data := src.recv(BLOCK):
                dst.sendall(data)
                with self._lock:
                    if upload:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
        except OSError:
            pass
        finally:
            # Half-close so the other direction can finish its answer; then both go.
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                src.close()

    def close(self) -> None:
        self._closed = True
        self._server.close()

    def __enter__(self) -> CountingRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
