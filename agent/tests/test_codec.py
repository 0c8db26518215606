"""storage/codec.py: what a reader gets back, and how each kind of damage is told apart."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Iterator

import pytest

from backup_agent.storage.codec import (
    FLAG_COMPRESSED,
    FLAG_ENCRYPTED,
    PURPOSE_MANIFEST,
    SEGMENT,
    Codec,
    DamagedPieceError,
    EncodeStats,
    Keyring,
    WrongKeyError,
)

SECRET = "correct horse battery staple, and then some"
OTHER = "an entirely different secret of 32+ chars"
TEXT = b"".join(b"Dec  3 22:43:%02d node-07 sshd[%d]: session opened for user root\n" % (i % 60, i)
                for i in range(20_000))


def keyed() -> Codec:
    return Codec(Keyring(SECRET))


@pytest.mark.parametrize("codec", [Codec(None), Codec(None, compress=False), keyed()], ids=["plain", "raw", "sealed"])
@pytest.mark.parametrize("data", [b"", b"x", TEXT, os.urandom(SEGMENT), os.urandom(2 * SEGMENT + 5)],
                         ids=["empty", "one", "text", "one-segment", "segments"])
def test_round_trip(codec: Codec, data: bytes) -> None:
    blob = codec.encode(data, b"cid")
    assert codec.decode(blob, b"cid") == data
    assert codec.decode(blob, b"cid", size=len(data)) == data  # in place, when the size is known
    streamed = b"".join(codec.encode_iter(iter([data[:1000], data[1000:]]), b"cid"))
    assert b"".join(codec.decode_iter([streamed[:7], streamed[7:]], b"cid")) == data
    assert codec.decode(streamed, b"cid", size=len(data)) == data


def test_text_is_compressed_and_random_bytes_are_stored_raw() -> None:
    st = EncodeStats()
    blob = keyed().encode(TEXT, b"cid", st)
    assert st.compressed and blob[4] & FLAG_COMPRESSED and len(blob) < len(TEXT) / 4
    rnd = os.urandom(1 << 20)
    st = EncodeStats()
    blob = keyed().encode(rnd, b"cid", st)
    assert not st.compressed and not blob[4] & FLAG_COMPRESSED
    # Raw storage costs only the header and one tag per MiB segment.
    assert len(blob) - len(rnd) <= 3 + 2 + 4 + 16 + 16


def test_plaintext_never_appears_in_a_sealed_piece() -> None:
    data = b"secret-password=hunter2\n" * 10
    blob = Codec(Keyring(SECRET), compress=False).encode(data, b"cid")
    assert blob[4] & FLAG_ENCRYPTED and b"hunter2" not in blob


def test_a_wrong_or_missing_key_is_a_wrong_key_error() -> None:
    blob = keyed().encode(TEXT, b"cid")
    for size in (None, len(TEXT)):
        with pytest.raises(WrongKeyError, match="not configured"):
            Codec(Keyring(OTHER)).decode(blob, b"cid", size)
    with pytest.raises(WrongKeyError, match="no encryption_key"):
        Codec(None).decode(blob, b"cid")


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        Keyring("too short")


def test_rotation_reads_old_pieces_and_writes_with_the_new_key() -> None:
    old_blob = keyed().encode(TEXT, b"cid")
    rotated = Codec(Keyring(OTHER, previous=[SECRET]))
    assert rotated.decode(old_blob, b"cid") == TEXT
    new_blob = rotated.encode(TEXT, b"cid")
    with pytest.raises(WrongKeyError):
        keyed().decode(new_blob, b"cid")


@pytest.mark.parametrize("where", [3, 4, 9, 30, -1, -20, SEGMENT // 2])
def test_any_flipped_byte_is_damage(where: int) -> None:
    blob = bytearray(keyed().encode(os.urandom(SEGMENT + 100), b"cid"))
    blob[where] ^= 0x40
    for size in (None, SEGMENT + 100):
        with pytest.raises(DamagedPieceError):
            keyed().decode(bytes(blob), b"cid", size)


def test_an_altered_key_id_reads_as_a_wrong_key() -> None:
    """The key id is the one byte range that cannot tell damage from a key mix-up; saying "wrong
    key" there is the safe side (nothing is restored, exit 2)."""
    blob = bytearray(keyed().encode(TEXT, b"cid"))
    blob[5] ^= 0x40
    with pytest.raises(WrongKeyError):
        keyed().decode(bytes(blob), b"cid")


def test_a_piece_under_another_content_id_is_damage() -> None:
    """Swapping two objects in the bucket (same key, both authentic) is caught."""
    a = keyed().encode(b"content of a" * 100, b"id-a")
    for size in (None, 1200):
        with pytest.raises(DamagedPieceError, match="authentication"):
            keyed().decode(a, b"id-b", size)


def test_a_manifest_cannot_be_opened_as_data() -> None:
    m = Codec(Keyring(SECRET), purpose=PURPOSE_MANIFEST).encode(TEXT, b"snap")
    with pytest.raises(DamagedPieceError):
        keyed().decode(m, b"snap")


@pytest.mark.parametrize("cut", [1, 4, 16, 17, SEGMENT + 16, SEGMENT + 17 + 20])
def test_a_truncated_piece_is_damage(cut: int) -> None:
    blob = keyed().encode(os.urandom(2 * SEGMENT), b"cid")
    for size in (None, 2 * SEGMENT):
        with pytest.raises(DamagedPieceError):
            keyed().decode(blob[:len(blob) - cut], b"cid", size)


def test_a_piece_cut_at_a_segment_boundary_is_damage() -> None:
    """Dropping whole trailing segments leaves valid segments: the 'last' flag catches it."""
    blob = keyed().encode(os.urandom(3 * SEGMENT), b"cid")
    header = 3 + 2 + 4 + 16
    for size in (None, 3 * SEGMENT, 2 * SEGMENT):
        with pytest.raises(DamagedPieceError):
            keyed().decode(blob[:header + 2 * (SEGMENT + 16)], b"cid", size)


def test_a_truncated_unencrypted_compressed_piece_is_damage() -> None:
    blob = Codec(None).encode(TEXT, b"cid")
    with pytest.raises(DamagedPieceError, match="truncated"):
        Codec(None).decode(blob[:-30], b"cid", size=len(TEXT))
    with pytest.raises(DamagedPieceError, match="damaged"):
        Codec(None).decode(blob + b"junk", b"cid", size=len(TEXT))


def test_reordered_segments_are_damage() -> None:
    blob = keyed().encode(os.urandom(3 * SEGMENT), b"cid")
    header, step = 3 + 2 + 4 + 16, SEGMENT + 16
    segs = [blob[header + i * step:header + (i + 1) * step] for i in range(3)]
    swapped = blob[:header] + segs[1] + segs[0] + segs[2]
    for size in (None, 3 * SEGMENT):
        with pytest.raises(DamagedPieceError):
            keyed().decode(swapped, b"cid", size)


# Sealed by the first version of the format: later versions must still open it.
GOLDEN = bytes.fromhex(
    "4241500103bfc2b98015e24e2c1425eaee71ac9a98481e9b2fbc5becdf2fb6e300cafdf5ac5826d8114ca3afef702f6a02e71a1a"
    "759da3e8d7fbb3d50ffa2d18f0d1303f0691acb7ba9bb0f1d271b299ae0a1d3428")


def test_pieces_sealed_by_the_first_version_still_open() -> None:
    assert keyed().decode(GOLDEN, b"golden") == b"backup-agent piece format 1\n" * 4


def test_a_sealed_piece_of_another_size_is_damage() -> None:
    blob = keyed().encode(TEXT, b"cid")
    with pytest.raises(DamagedPieceError, match="recorded"):
        keyed().decode(blob, b"cid", size=len(TEXT) - 1)


def test_a_plaintext_piece_is_refused_when_encryption_is_on() -> None:
    """Someone with write access to the bucket cannot slip in a piece of their own."""
    with pytest.raises(DamagedPieceError, match="not encrypted"):
        keyed().decode(Codec(None).encode(b"evil", b"cid"), b"cid")


def test_not_a_piece() -> None:
    with pytest.raises(DamagedPieceError, match="header"):
        keyed().decode(b"PK\x03\x04 a zip file", b"cid")


def test_no_two_pieces_share_a_salt() -> None:
    """Nonces are a counter under a per-piece key from a random salt: salts must never repeat."""
    codec = keyed()
    salts = {codec.encode(b"same bytes", b"cid")[9:25] for _ in range(20_000)}
    assert len(salts) == 20_000


def test_same_content_gives_different_pieces_but_one_content_id() -> None:
    ring = Keyring(SECRET)
    codec = Codec(ring)
    assert codec.encode(TEXT, b"cid") != codec.encode(TEXT, b"cid")
    digest = hashlib.sha256(TEXT).digest()
    cid = ring.content_id(digest)
    assert cid == Keyring(SECRET).content_id(digest) != Keyring(OTHER).content_id(digest)
    assert digest.hex() not in cid


def test_keys_do_not_show_in_repr() -> None:
    ring = Keyring(SECRET)
    assert ring.current.data.hex() not in repr(ring.current) and SECRET not in repr(ring.current)


def _stream(total: int, piece: int = 1 << 16) -> Iterator[bytes]:
    block = TEXT[:piece]
    for _ in range(total // piece):
        yield block


@pytest.mark.parametrize("codec", [keyed(), Codec(None)], ids=["sealed", "plain"])
def test_memory_stays_bounded_on_a_large_stream(codec: Codec) -> None:
    total = 256 << 20
    tracemalloc.start()
    try:
        encoded = list(codec.encode_iter(_stream(total), b"cid"))
        tracemalloc.reset_peak()
        got = sum(len(x) for x in codec.decode_iter(iter(encoded), b"cid"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == total
    assert peak < 24 << 20


def test_highly_compressible_data_never_expands_into_one_huge_read() -> None:
    zeros = keyed().encode(bytes(64 << 20), b"cid")
    assert len(zeros) < 1 << 16
    assert max(len(x) for x in keyed().decode_iter([zeros], b"cid")) <= 1 << 20
