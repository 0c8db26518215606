"""Compression of command jobs' dumps on the way up (gzip, zstd or none) and its undoing on the
way back, which refuses a stream that ends early or carries data after its end."""

from __future__ import annotations

import zlib
from typing import Any, Protocol

from backup_agent.errors import ConfigError

SUFFIX = {"gzip": ".gz", "zstd": ".zst", "none": ""}


class Codec(Protocol):
    def compress(self, data: bytes | memoryview) -> bytes | memoryview: ...
    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes | memoryview) -> bytes | memoryview:
        return data

    def flush(self) -> bytes:
        return b""


def zstd() -> Any:
    try:
        import zstandard
    except ImportError:
        raise ConfigError("compression: zstd needs the Python package zstandard "
                          "(pip install zstandard), or use gzip") from None
    return zstandard


def compressor(kind: str) -> Codec:
    if kind == "gzip":
        return zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip framing with its CRC
    if kind == "zstd":
        codec: Codec = zstd().ZstdCompressor(level=3, write_checksum=True).compressobj()
        return codec
    return _Identity()


class Decoder:
    """Undo `compressor(kind)`; `finish` refuses a stream that ended early."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.obj: Any = None
        if kind == "gzip":
            self.obj = zlib.decompressobj(31)
        elif kind == "zstd":
            self.obj = zstd().ZstdDecompressor().decompressobj()

    def feed(self, data: bytes) -> bytes:
        if self.obj is None:
            return data
        if self.obj.eof:
            raise ValueError("data after the end of the compressed stream")
        return self.obj.decompress(data)  # type: ignore[no-any-return]

    def finish(self) -> bytes:
        if self.obj is None:
            return b""
        tail: bytes = self.obj.flush() if self.kind == "gzip" else b""
        if not self.obj.eof:
            raise ValueError("the compressed stream ends early")
        if self.obj.unused_data:
            raise ValueError("data after the end of the compressed stream")
        return tail
