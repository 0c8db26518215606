"""How one stored piece is encoded: optional zstd, optional AES-256-GCM, a small header to say which.

Jobs use it through storage/encoding.py (issue #20; docs/PERFORMANCE.md, "Issue #20", has the
figures). A piece is whatever the agent stores as one unit: a small file's bytes in a pack, a
chunk of a big file, a manifest, a command job's dump.

    header   magic b"BAP" | version (1) | flags (1) | key id (4, if encrypted) | salt (16, if encrypted)
    body     the plaintext, zstd-compressed if flagged (one frame), then, if encrypted, sealed in
             segments of SEGMENT bytes (each is AES-256-GCM ciphertext + 16-byte tag)

Choices, and why:
- Compression is decided per piece: a piece in memory (a chunk, a small file) is compressed once
  and stored raw if that saved less than MIN_GAIN; a stream is decided on its first SAMPLE bytes
  at level 1 (~80 µs). Incompressible data (media, .gz) is stored as it is, 5 bytes of header
  more, and never decompressed on restore (PERFORMANCE.md, "Issue #20").
- Keys come from the data bag's `encryption_key` through scrypt then HKDF-SHA256, one subkey per
  purpose (data, manifests, content ids, the chunker's gear table), so a manifest can never be
  decrypted as data or vice versa.
- Each encrypted piece draws a random 128-bit salt and seals with its own key HKDF-Expand(purpose
  key, salt); segment nonces are a counter (and a "last" flag) under that key, so a nonce never repeats
  within a key by construction. Two pieces share a key only if their salts collide: after 2**40
  pieces (a trillion) that chance is below 2**-48. (A random 96-bit nonce under one key, the
  usual GCM use, is safe only to about 2**32 pieces, for a 2**-32 chance: NIST SP 800-38D, 8.3.)
- Every segment's associated data is the header and the caller's content id: a piece copied over
  another (same key, other content id), a flag flipped or segments reordered, dropped or cut
  short all fail authentication. The "last" flag in the final nonce makes truncation at a segment
  boundary detectable too.
- The key id (4 bytes from HKDF) says which key sealed a piece, so a wrong key is told apart
  from a damaged piece: WrongKeyError (the agent's exit 2) versus DamagedPieceError (a damaged
  object, like a sha256 mismatch today). An altered key id reads as a wrong key: nothing is
  restored either way.

Key rotation: a Keyring holds the current secret (writes) and older ones (reads only); a reader
picks the key named in the header. After rotation, new content ids (keyed by the new secret) differ
from the old ones, so the first backup after it stores everything once more; old snapshots stay
readable as long as their secret is kept, and age out with retention. Losing every copy of a
secret makes what it sealed unreadable: there is no recovery path, by design.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, cast

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"BAP"
VERSION = 1
FLAG_COMPRESSED = 0x01
FLAG_ENCRYPTED = 0x02
_KNOWN_FLAGS = FLAG_COMPRESSED | FLAG_ENCRYPTED
KEY_ID_LEN = 4
SALT_LEN = 16
TAG_LEN = 16
# Plaintext bytes per sealed segment: bounds memory on both sides (a few segments at a time) and
# keeps the tag overhead at 16 bytes per MiB.
SEGMENT = 1 << 20
# The compression trial: the first SAMPLE bytes at level 1; below MIN_GAIN saved, store raw.
SAMPLE = 64 << 10
MIN_GAIN = 0.05
# A piece encoded with `probe` (a big file's chunk after one that stayed raw) first tries this
# many bytes from its middle at level 1: a random or already-compressed file costs 1/8 of a
# compression per chunk instead of a whole one that is thrown away.
PROBE = 8 << 10
DEFAULT_LEVEL = 3
MIN_SECRET_LEN = 32
# zstd frames are written with at most this window, and readers refuse larger ones: a reader's
# memory stays bounded whatever a (damaged or hostile) piece says.
WINDOW_LOG_MAX = 23
_OUT = 1 << 20  # decompressed bytes handed out at a time

PURPOSE_DATA = b"data"
PURPOSE_MANIFEST = b"manifest"


class CodecError(Exception):
    """A piece cannot be decoded."""


class WrongKeyError(CodecError):
    """The piece is sealed with a key this node does not have (or none is configured): exit 2."""


class DamagedPieceError(CodecError):
    """The piece is truncated, altered, or not the one the caller asked for (a damaged object)."""


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"backup-agent/" + info).derive(secret)


def _piece_aead(purpose_key: bytes, salt: bytes) -> AESGCM:
    """The piece's own key: HKDF-Expand (RFC 5869, one block: HMAC(PRK, info || 0x01)) with the
    purpose key, already uniformly random, as PRK. Written out because the library's HKDF object
    costs ~10 µs a piece, which a million small files would feel (10 CPU-s)."""
    return AESGCM(hmac.digest(purpose_key, b"backup-agent/piece" + salt + b"\x01", "sha256"))


@functools.lru_cache(maxsize=8)
def _stretch(secret: str) -> bytes:
    """scrypt before HKDF: a secret a person chose (32 characters can still be a phrase) then costs
    an attacker holding the bucket 0.2 CPU-s and 32 MiB per guess instead of a microsecond. The salt
    is fixed because a node must derive its keys before it can read anything from the bucket.
    Cached: once per secret and process."""
    return hashlib.scrypt(secret.encode(), salt=b"backup-agent/encryption_key/v1", n=1 << 15, r=8, p=1,
                          maxmem=64 << 20, dklen=32)


@dataclass(frozen=True)
class Key:
    """The subkeys of one secret. repr() never shows them."""

    key_id: bytes
    data: bytes
    manifest: bytes
    content_id: bytes
    gear_seed: bytes

    @classmethod
    def from_secret(cls, secret: str) -> Key:
        if len(secret) < MIN_SECRET_LEN:
            raise ValueError(f"encryption_key must be at least {MIN_SECRET_LEN} characters")
        raw = _stretch(secret)
        return cls(key_id=_hkdf(raw, b"key-id")[:KEY_ID_LEN], data=_hkdf(raw, PURPOSE_DATA),
                   manifest=_hkdf(raw, PURPOSE_MANIFEST), content_id=_hkdf(raw, b"content-id"),
                   gear_seed=_hkdf(raw, b"gear"))

    def __repr__(self) -> str:
        return f"Key(id={self.key_id.hex()})"

    def purpose_key(self, purpose: bytes) -> bytes:
        if purpose == PURPOSE_DATA:
            return self.data
        if purpose == PURPOSE_MANIFEST:
            return self.manifest
        raise ValueError(f"unknown purpose {purpose!r}")


class Keyring:
    """The current key (seals new pieces, keys content ids) and older ones (open old pieces)."""

    def __init__(self, current: str, previous: Sequence[str] = ()) -> None:
        self.current = Key.from_secret(current)
        self._by_id = {self.current.key_id: self.current}
        for old in previous:
            k = Key.from_secret(old)
            self._by_id.setdefault(k.key_id, k)

    def get(self, key_id: bytes) -> Key:
        try:
            return self._by_id[key_id]
        except KeyError:
            raise WrongKeyError(f"sealed with key {key_id.hex()}, which is not configured "
                                "(wrong or rotated-away encryption_key)") from None

    def content_id(self, sha256_digest: bytes) -> str:
        """The name a piece's content gets in the bucket: HMAC of its SHA-256 under a subkey, so the
        bucket never holds a plaintext hash (which would tell anyone holding a file whether a node
        has it). One pass over the data gives both the plain hash, for verifying, and this id."""
        return hmac.new(self.current.content_id, sha256_digest, hashlib.sha256).hexdigest()


@dataclass
class EncodeStats:
    raw_bytes: int = 0
    stored_bytes: int = 0
    compressed: bool = False


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """One compressor per thread and level (making one allocates its context: ~50 µs a piece).
    The window is capped so every reader's memory stays bounded."""
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("zstd", {})
    if level not in cache:
        cache[level] = _new_compressor(level)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    """One decompressor per thread (a context each: making one per chunk showed in profiles)."""
    d: zstandard.ZstdDecompressor | None = getattr(_local, "unzstd", None)
    if d is None:
        d = _local.unzstd = zstandard.ZstdDecompressor(max_window_size=1 << WINDOW_LOG_MAX)
    return d


def _new_compressor(level: int) -> zstandard.ZstdCompressor:
    params = zstandard.ZstdCompressionParameters.from_level(level, window_log=WINDOW_LOG_MAX)
    return zstandard.ZstdCompressor(compression_params=params)


def _smaller(packed: int, raw: int) -> bool:
    return packed <= raw * (1 - MIN_GAIN)


def worth_compressing(sample: bytes | memoryview) -> bool:
    """The decision for a stream: does level-1 zstd save at least MIN_GAIN on its first bytes?"""
    if len(sample) < 64:  # a frame header costs more than it could save
        return False
    return _smaller(len(_compressor(1).compress(sample)), len(sample))


def _try_whole(data: bytes | memoryview, probe: bool) -> bool:
    """Whether to compress the whole piece: yes, unless `probe` and PROBE bytes from its middle
    (not copied; a chunk's start is often some format's header) do not compress."""
    if not probe or len(data) < 4 * PROBE:
        return True
    at = (len(data) - PROBE) // 2
    return worth_compressing(memoryview(data)[at:at + PROBE])


def is_compressed(piece: bytes) -> bool:
    """Whether an encoded piece's body is zstd-compressed (its header's flag)."""
    return bool(piece[len(MAGIC) + 1] & FLAG_COMPRESSED)


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class _Buffer:
    """Bytes arriving in parts of any size, taken out in exact sizes. Parts are sliced, never
    joined into one growing buffer (deleting from the front of a bytearray moves the rest)."""

    def __init__(self, source: Iterable[bytes]) -> None:
        self._it = iter(source)
        self._part = b""
        self._off = 0

    def take(self, n: int) -> bytes:
        """Up to n bytes; fewer only at the end of the source."""
        out: list[bytes] = []
        want = n
        while want > 0:
            if self._off >= len(self._part):
                nxt = next(self._it, None)
                if nxt is None:
                    break
                self._part, self._off = nxt, 0
                continue
            # A whole part is handed on as it is (no copy).
            whole = self._off == 0 and len(self._part) <= want
            piece = self._part if whole else self._part[self._off:self._off + want]
            self._off += len(piece)
            want -= len(piece)
            out.append(piece)
        return out[0] if len(out) == 1 else b"".join(out)


class Codec:
    """Encodes and decodes pieces for one purpose (data or manifests), with or without a keyring."""

    def __init__(self, keyring: Keyring | None, purpose: bytes = PURPOSE_DATA, level: int = DEFAULT_LEVEL,
                 compress: bool = True) -> None:
        self.keyring = keyring
        self.purpose = purpose
        self.level = level
        self.compress = compress

    # --- writing -------------------------------------------------------------------------------

    def encode(self, data: bytes | memoryview, content_id: bytes, stats: EncodeStats | None = None,
               probe: bool = False) -> bytes:
        """A piece held in memory (a chunk, a small file): compressed once, kept raw if that
        saved less than MIN_GAIN, sealed in place. Same format as encode_iter, fewer copies.
        With `probe`, a PROBE-byte sample decides first whether the whole is worth trying."""
        st = stats if stats is not None else EncodeStats()
        body, flags = data, 0
        if self.compress and len(data) >= 64 and _try_whole(data, probe):
            packed = _compressor(self.level).compress(data)
            if _smaller(len(packed), len(data)):
                body, flags = packed, FLAG_COMPRESSED
        header, aead = self._start(flags)
        st.raw_bytes += len(data)
        st.compressed = bool(flags & FLAG_COMPRESSED)
        if aead is None:
            out = header + body
        else:
            aad = header + content_id
            view = memoryview(body)
            count = max(1, -(-len(body) // SEGMENT))
            out = b"".join([header, *(aead.encrypt(_nonce(i, i == count - 1), view[i * SEGMENT:(i + 1) * SEGMENT], aad)
                                      for i in range(count))])
        st.stored_bytes += len(out)
        return out

    def _start(self, flags: int) -> tuple[bytes, AESGCM | None]:
        """The header for these flags, and the piece's own AEAD when sealing."""
        if self.keyring is None:
            return MAGIC + bytes([VERSION, flags]), None
        key = self.keyring.current
        salt = os.urandom(SALT_LEN)
        aead = _piece_aead(key.purpose_key(self.purpose), salt)
        return MAGIC + bytes([VERSION, flags | FLAG_ENCRYPTED]) + key.key_id + salt, aead

    def encode_iter(self, chunks: Iterable[bytes], content_id: bytes,
                    stats: EncodeStats | None = None) -> Iterator[bytes]:
        """The encoded piece, a segment at a time: memory stays at a few SEGMENTs whatever the size."""
        st = stats if stats is not None else EncodeStats()
        src = _Buffer(chunks)
        first = src.take(SAMPLE)
        flags = 0
        if self.compress and worth_compressing(first):
            flags |= FLAG_COMPRESSED
        header, aead = self._start(flags)
        st.compressed = bool(flags & FLAG_COMPRESSED)
        st.stored_bytes += len(header)
        yield header
        body = self._plain_body(first, src, flags, st)
        if aead is None:
            for part in body:
                st.stored_bytes += len(part)
                yield part
            return
        aad = header + content_id
        segments = _Buffer(body)
        index = 0
        current = segments.take(SEGMENT)
        while True:
            following = segments.take(SEGMENT)
            last = not following
            sealed = aead.encrypt(_nonce(index, last), current, aad)
            st.stored_bytes += len(sealed)
            yield sealed
            if last:
                return
            current, index = following, index + 1

    def _plain_body(self, first: bytes, src: _Buffer, flags: int, st: EncodeStats) -> Iterator[bytes]:
        # A compressor of its own: a stream is consumed a part at a time, and the thread's cached
        # one may compress other pieces meanwhile (sharing a context would mix the two).
        cobj = _new_compressor(self.level).compressobj() if flags & FLAG_COMPRESSED else None
        data = first
        while data:
            st.raw_bytes += len(data)
            if cobj is None:
                yield data
            else:
                out = cobj.compress(data)
                if out:
                    yield out
            data = src.take(SEGMENT)
        if cobj is not None:
            yield cobj.flush()

    # --- reading -------------------------------------------------------------------------------

    def decode(self, blob: bytes, content_id: bytes, size: int | None = None) -> bytes:
        """A piece held in memory. A piece whose size is known, sealed (with a keyring) or plain
        (without one), is opened in place and decompressed in one call; anything else goes
        through decode_iter, which also says what is wrong with a piece that is neither."""
        flags = blob[4] if len(blob) >= 5 and blob[:3] == MAGIC and blob[3] == VERSION else -1
        if size is None or flags < 0 or flags & ~_KNOWN_FLAGS or bool(flags & FLAG_ENCRYPTED) != (
                self.keyring is not None) or (self.keyring is not None and len(blob) < 5 + KEY_ID_LEN + SALT_LEN):
            return b"".join(self.decode_iter([blob], content_id, size))
        if self.keyring is None:
            # Plain: a header and the body, one call each (a big file's chunks and small files
            # went through the stream's generators and buffers). A piece that does not open goes
            # that way after all, for the same error.
            try:
                return self._decompressed(memoryview(blob)[5:], flags, size, exact=True)
            except DamagedPieceError:
                return b"".join(self.decode_iter([blob], content_id, size))
        head = bytes(blob[:5 + KEY_ID_LEN + SALT_LEN])
        key = self.keyring.get(head[5:5 + KEY_ID_LEN])
        aead = _piece_aead(key.purpose_key(self.purpose), head[5 + KEY_ID_LEN:])
        aad = head + content_id
        view = memoryview(blob)[len(head):]
        step = SEGMENT + TAG_LEN
        count = max(1, -(-len(view) // step))
        try:
            body = b"".join(aead.decrypt(_nonce(i, i == count - 1), view[i * step:(i + 1) * step], aad)
                            for i in range(count))
        except InvalidTag:
            raise DamagedPieceError("piece fails authentication (truncated, altered, or not the content "
                                    "asked for)") from None
        return self._decompressed(body, flags, size)

    @staticmethod
    def _decompressed(body: bytes | memoryview, flags: int, size: int, exact: bool = False) -> bytes:
        """The body after its header (and tags); `exact`: bytes after the frame are damage (a
        sealed frame is authentic: we wrote it; a plain one is refused as decode_iter does)."""
        if flags & FLAG_COMPRESSED:
            # A frame from a stream does not record its size.
            try:
                content_size = zstandard.frame_content_size(body)
            except zstandard.ZstdError as e:
                raise DamagedPieceError(f"compressed piece is damaged: {e}") from None
            if content_size == -1:
                return b"".join(_sized(_decompress(iter([bytes(body)])), size))
            if content_size != size:
                raise DamagedPieceError(f"piece holds {content_size} bytes, {size} recorded")
            try:
                body = _decompressor().decompress(body, allow_extra_data=not exact)
            except zstandard.ZstdError as e:
                raise DamagedPieceError(f"compressed piece is damaged: {e}") from None
        if len(body) != size:
            raise DamagedPieceError(f"piece holds {len(body)} bytes, {size} recorded")
        return bytes(body)

    def decode_iter(self, chunks: Iterable[bytes], content_id: bytes, size: int | None = None) -> Iterator[bytes]:
        """The plaintext, at most a MiB at a time. Raises WrongKeyError or DamagedPieceError; bytes
        already handed out before a DamagedPieceError must be discarded by the caller (a restore
        writes to a temporary file and renames only after the whole piece decoded).

        `size` is the plaintext size the manifest records: an unencrypted piece cut short is only
        caught by it (a sealed one always is, by its tags)."""
        parts = self._decode(chunks, content_id)
        yield from (parts if size is None else _sized(parts, size))

    def _decode(self, chunks: Iterable[bytes], content_id: bytes) -> Iterator[bytes]:
        src = _Buffer(chunks)
        head = src.take(len(MAGIC) + 2)
        if len(head) < len(MAGIC) + 2 or head[:3] != MAGIC:
            raise DamagedPieceError("not an encoded piece (bad or missing header)")
        version, flags = head[3], head[4]
        if version != VERSION or flags & ~_KNOWN_FLAGS:
            raise DamagedPieceError(f"piece format version {version} flags {flags:#x} not readable by this agent")
        body: Iterator[bytes]
        if flags & FLAG_ENCRYPTED:
            if self.keyring is None:
                raise WrongKeyError("piece is encrypted and no encryption_key is configured")
            rest = src.take(KEY_ID_LEN + SALT_LEN)
            if len(rest) < KEY_ID_LEN + SALT_LEN:
                raise DamagedPieceError("piece truncated in its header")
            key = self.keyring.get(rest[:KEY_ID_LEN])
            aead = _piece_aead(key.purpose_key(self.purpose), rest[KEY_ID_LEN:])
            body = self._open(src, aead, head + rest + content_id)
        else:
            if self.keyring is not None:
                # An attacker with bucket access could otherwise replace an encrypted piece by a
                # plaintext one of their choosing.
                raise DamagedPieceError("piece is not encrypted but encryption is configured")
            body = _drain(src)
        if flags & FLAG_COMPRESSED:
            yield from _decompress(body)
        else:
            yield from body

    @staticmethod
    def _open(src: _Buffer, aead: AESGCM, aad: bytes) -> Iterator[bytes]:
        index = 0
        current = src.take(SEGMENT + TAG_LEN)
        while True:
            following = src.take(SEGMENT + TAG_LEN)
            last = not following
            if len(current) < TAG_LEN:
                raise DamagedPieceError("piece truncated")
            try:
                yield aead.decrypt(_nonce(index, last), current, aad)
            except InvalidTag:
                raise DamagedPieceError(f"piece fails authentication at segment {index} (truncated, altered, "
                                        "or not the content asked for)") from None
            if last:
                return
            current, index = following, index + 1


def _sized(parts: Iterator[bytes], size: int) -> Iterator[bytes]:
    got = 0
    for part in parts:
        got += len(part)
        if got > size:
            raise DamagedPieceError(f"piece holds more than the {size} bytes recorded")
        yield part
    if got != size:
        raise DamagedPieceError(f"piece holds {got} bytes, {size} recorded (truncated)")


def _drain(src: _Buffer) -> Iterator[bytes]:
    while part := src.take(SEGMENT):
        yield part


class _Reader:
    """A file-like view of an iterator of bytes, for zstandard's stream_reader."""

    def __init__(self, parts: Iterator[bytes]) -> None:
        self._buf = _Buffer(parts)

    def read(self, n: int = -1) -> bytes:
        return self._buf.take(n if n >= 0 else 1 << 62)


def _decompress(body: Iterator[bytes]) -> Iterator[bytes]:
    # stream_reader hands out at most _OUT bytes per read, whatever the ratio (zeros expand
    # 30,000x: decompressobj would return all of it from one call). It only calls read().
    dctx = zstandard.ZstdDecompressor(max_window_size=1 << WINDOW_LOG_MAX)
    reader = dctx.stream_reader(cast("IO[bytes]", _Reader(body)), read_size=1 << 16, read_across_frames=False)
    try:
        while out := reader.read(_OUT):
            yield out
    except zstandard.ZstdError as e:
        raise DamagedPieceError(f"compressed piece is damaged: {e}") from None
