"""WindowedBody (storage/crt_body.py) without a server: the runtime delivers each ranged window
in one callback, and the caller reads it back in pieces of any size."""

from __future__ import annotations

import random
from typing import Any

from backup_agent.storage.crt_body import WindowedBody
from backup_agent.storage.store import StoreError


class _Request:
    def cancel(self) -> None:
        pass


def body_over(data: bytes, start: int, end: int | None, window: int) -> tuple[WindowedBody, list[tuple[int, int]]]:
    asked: list[tuple[int, int]] = []

    def fetch(first: int, last: int, if_match: str | None, on_headers: Any, on_body: Any, on_done: Any) -> _Request:
        asked.append((first, last))
        last = min(last, len(data) - 1)
        on_headers(206, [("Content-Range", f"bytes {first}-{last}/{len(data)}"), ("ETag", '"e"')])
        on_body(memoryview(data)[first:last + 1], first)  # the whole window at once, as awscrt does
        on_done(None, 206)
        return _Request()

    body = WindowedBody(fetch, start, end, on_error=lambda e: StoreError(str(e)), transient=lambda e: False,
                        window=window)
    return body, asked


def test_small_reads_of_windows_delivered_whole_return_the_exact_bytes() -> None:
    data = random.Random(1).randbytes(300_000)
    rng = random.Random(2)
    for start, end in ((0, None), (1234, 250_001), (0, len(data))):
        body, asked = body_over(data, start, end, window=64 << 10)
        got = bytearray()
        while True:
            n = rng.choice((1, 7, 100, 4096, 30_000, 70_000, -1)) if len(got) < 200_000 else 1 << 20
            part = body.read(n)
            if not part:
                break
            assert n < 0 or len(part) <= n
            got += part
        assert bytes(got) == data[start:end]
        assert len(asked) == -(-(len(data[start:end])) // (64 << 10))  # each window asked for once
        body.close()
