"""Issue #20's choices, measured with the modules themselves (no S3, no agent run):

    .venv/bin/python bench/chunking_bench.py [--scale 0.25] [--parts change,compress,crypto,speed]

- change: bytes a rerun would upload after each dataset's change (new chunks only, compressed
  as storage/codec.py would store them), fixed-size chunks against content-defined ones at a
  few average sizes. Datasets are datasets_bench.py's builders plus an "insert" dataset: the log
  with ten short insertions at random places (a text dump where some rows grew).
- compress: stored/raw and CPU MB/s per zstd level, per piece (small files whole, big files in
  64 KiB chunks), with the codec's per-piece trial, and what the trial costs.
- crypto: AES-256-GCM sealing MB/s and the per-piece cost on small pieces.
- speed: chunking MB/s (numpy and pure Python), SHA-256, and CPU seconds per GB for the whole path.

CPU seconds (process time) are reported, not wall time: the machine is shared.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import IO

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_agent.storage.chunker import Chunker, Params
from backup_agent.storage.codec import SAMPLE, Codec, EncodeStats, Keyring, worth_compressing
from datasets_bench import MIB, log_lines, make_datasets

KIB = 1024
SECRET = "bench secret bench secret bench secret"

Split = Callable[[IO[bytes]], Iterator[bytes]]


def fixed(size: int) -> Split:
    def split(f: IO[bytes]) -> Iterator[bytes]:
        while block := f.read(size):
            yield block
    return split


def cdc(avg: int) -> Split:
    return Chunker(Params(min_size=avg // 4, avg_size=avg, max_size=avg * 4)).chunks


METHODS: dict[str, Split] = {
    "fixed 64 KiB": fixed(64 * KIB),
    "fixed 1 MiB": fixed(MIB),
    "CDC 16 KiB": cdc(16 * KIB),
    "CDC 64 KiB": cdc(64 * KIB),
    "CDC 256 KiB": cdc(256 * KIB),
    "CDC 1 MiB": cdc(MIB),
}


def insert_change(root: Path) -> None:
    """Ten short insertions at random places of app.log (rewritten through a temp file)."""
    path = root / "app.log"
    size = path.stat().st_size
    rnd = random.Random(7)
    places = sorted(rnd.randrange(size) for _ in range(10))
    tmp = path.with_suffix(".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        pos = 0
        for p in places:
            dst.write(src.read(p - pos))
            dst.write(log_lines(rnd, rnd.randint(60, 400), start=p))
            pos = p
        dst.write(src.read())
    tmp.replace(path)


def part_change(scale: float, work: Path) -> None:
    ds = make_datasets(scale, [])
    codec = Codec(None)
    print("\n### Bytes a rerun uploads after the change (new chunks, compressed as the codec stores them)\n")
    print(f"scale {scale}. Per cell: MB uploaded (% of the file's size) / chunks in the file.\n")
    print("| dataset | file MB | change | " + " | ".join(METHODS) + " |")
    print("|---|---|---|" + "---|" * len(METHODS))
    for name, fname, change, label in (
        ("log", "app.log", ds["log"].change, ds["log"].change_label),
        ("db", "base.db", ds["db"].change, ds["db"].change_label),
        ("insert", "app.log", insert_change, "10 insertions of 60-400 bytes"),
        ("sparse", "disk.img", ds["sparse"].change, ds["sparse"].change_label),
    ):
        root = work / name
        root.mkdir()
        ds["log" if name == "insert" else name].build(root)
        path = root / fname
        befores: dict[str, set[bytes]] = {}
        for m, split in METHODS.items():
            with open(path, "rb") as f:
                befores[m] = {hashlib.sha256(c).digest() for c in split(f)}
        assert change is not None
        change(root)
        size = path.stat().st_size
        cells = []
        for m, split in METHODS.items():
            seen = set(befores[m])
            up = n = 0
            with open(path, "rb") as f:
                for c in split(f):
                    n += 1
                    d = hashlib.sha256(c).digest()
                    if d not in seen:
                        seen.add(d)
                        up += len(codec.encode(c, d))
            cells.append(f"{up / 1e6:.2f} ({100 * up / size:.1f} %) / {n:,}")
        print(f"| {name} | {size / 1e6:.0f} | {label} | " + " | ".join(cells) + " |")
        for p in root.iterdir():
            p.unlink()
        root.rmdir()


def real_pieces(limit: int) -> Iterator[bytes]:
    """The real tree's files as pieces, half of `limit` bytes from /usr/lib/python3.11 (source)
    and half from /usr/share/doc (text, .gz, HTML): whole below 1 MiB, else 64 KiB chunks."""
    chunker = Chunker()
    for top in ("/usr/lib/python3.11", "/usr/share/doc"):
        total = 0
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for fn in sorted(filenames):
                p = os.path.join(dirpath, fn)
                if total >= limit // 2 or os.path.islink(p) or not os.path.isfile(p):
                    continue
                with open(p, "rb") as f:
                    pieces = [f.read()] if os.path.getsize(p) < MIB else list(chunker.chunks(f))
                for piece in pieces:
                    yield piece
                    total += len(piece)


def encode_all(codec: Codec, pieces: list[bytes]) -> None:
    for p in pieces:
        codec.encode(p, b"")


def decode_all(codec: Codec, blobs: list[bytes]) -> None:
    for b in blobs:
        codec.decode(b, b"")


def compress_all(z: zstandard.ZstdCompressor, pieces: list[bytes]) -> None:
    for p in pieces:
        z.compress(p)


def part_compress(scale: float, work: Path) -> None:
    ds = make_datasets(scale, [])
    limit = max(16 * MIB, int(128 * MIB * scale))
    sets: dict[str, list[bytes]] = {"real": list(real_pieces(limit))}
    for name, fname in (("log", "app.log"), ("db", "base.db")):
        root = work / name
        root.mkdir()
        ds[name].build(root)
        with open(root / fname, "rb") as f:
            sets[name] = [c for c, _ in zip(Chunker().chunks(f), range(limit // (64 * KIB)), strict=False)]
        (root / fname).unlink()
        root.rmdir()
    print("\n### Compression per piece: stored / raw, and CPU MB/s (compress; decompress)\n")
    print("| dataset | MB | pieces | raw by the trial | " + " | ".join(f"level {lv}" for lv in (1, 3, 6, 9))
          + " | level 3, no trial |")
    print("|---|---|---|---|" + "---|" * 5)
    for name, pieces in sets.items():
        raw = sum(map(len, pieces))
        cells = []
        raw_pieces = 0
        for level in (1, 3, 6, 9):
            codec = Codec(None, level=level)
            stats = [EncodeStats() for _ in pieces]
            blobs = [codec.encode(p, b"", st) for p, st in zip(pieces, stats, strict=True)]
            ct = best_cpu(partial(encode_all, codec, pieces), 2)
            dt = best_cpu(partial(decode_all, codec, blobs), 2)
            stored = sum(map(len, blobs))
            raw_pieces = sum(not st.compressed for st in stats)
            cells.append(f"{stored / raw:.3f} ({raw / 1e6 / ct:.0f}; {raw / 1e6 / dt:.0f})")
        # Without the trial: every piece through zstd level 3 whatever it holds.
        z = zstandard.ZstdCompressor(level=3)
        forced = sum(len(z.compress(p)) for p in pieces)
        ct = best_cpu(partial(compress_all, z, pieces), 2)
        cells.append(f"{forced / raw:.3f} ({raw / 1e6 / ct:.0f})")
        print(f"| {name} | {raw / 1e6:.0f} | {len(pieces):,} | {raw_pieces:,} | " + " | ".join(cells) + " |")
    # What the decision costs: one level-1 trial on a 64 KiB sample.
    for label, sample in (("text", sets["log"][0][:SAMPLE]), ("random", os.urandom(SAMPLE))):
        n = 2000
        t = time.process_time()
        for _ in range(n):
            worth_compressing(sample)
        print(f"\nThe trial on a 64 KiB {label} sample: {1e6 * (time.process_time() - t) / n:.0f} µs CPU", end="")
    print()


def part_crypto() -> None:
    print("\n### Encryption (AES-256-GCM, 1 MiB segments), CPU MB/s\n")
    sealed = Codec(Keyring(SECRET), compress=False)
    data = os.urandom(64 * MIB)
    t = time.process_time()
    blob = sealed.encode(data, b"cid")
    enc = time.process_time() - t
    t = time.process_time()
    sealed.decode(blob, b"cid")
    dec = time.process_time() - t
    print(f"- seal {64 * MIB / 1e6 / enc:.0f} MB/s, open {64 * MIB / 1e6 / dec:.0f} MB/s "
          f"(overhead {len(blob) - len(data)} bytes on 64 MiB)")
    for size in (1 * KIB, 64 * KIB):
        piece = os.urandom(size)
        n = 20_000 if size == KIB else 2_000
        t = time.process_time()
        for _ in range(n):
            sealed.encode(piece, b"cid")
        per = (time.process_time() - t) / n
        plain = Codec(None, compress=False)
        t = time.process_time()
        for _ in range(n):
            plain.encode(piece, b"cid")
        base = (time.process_time() - t) / n
        print(f"- a {size // KIB} KiB piece: {1e6 * per:.0f} µs sealed, {1e6 * base:.0f} µs plain "
              f"(salt, HKDF, AES-GCM: {1e6 * (per - base):.0f} µs; 41 bytes of header and tag)")


def best_cpu(fn: Callable[[], object], rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def part_speed() -> None:
    print("\n### Speed per core (CPU MB/s, best of 3)\n")
    data = random.Random(1).randbytes(64 * MIB)
    text = log_lines(random.Random(2), 64 * MIB)
    fast, slow = Chunker(), Chunker(use_numpy=False)
    c_fast = best_cpu(lambda: sum(1 for _ in fast.chunks(io.BytesIO(data))))
    c_slow = best_cpu(lambda: sum(1 for _ in slow.chunks(io.BytesIO(data[:8 * MIB]))), 1) * 8
    c_fixed = best_cpu(lambda: sum(1 for _ in fixed(64 * KIB)(io.BytesIO(data))))
    sha = best_cpu(lambda: hashlib.sha256(data).digest())
    # Compression and sealing per 64 KiB piece, as the agent would store chunks (one 64 MiB
    # buffer measures this machine's page faults more than the codec).
    step = 64 * KIB
    codec = Codec(None)
    # Each piece is dropped once made, as an upload would: keeping them all measures page faults.
    z3 = best_cpu(partial(encode_all, codec, [text[i:i + step] for i in range(0, len(text), step)]))
    sealed = Codec(Keyring(SECRET), compress=False)
    aes = best_cpu(partial(encode_all, sealed, [data[i:i + step] for i in range(0, len(data), step)]))
    mb = len(data) / 1e6
    print(f"- CDC with numpy {mb / c_fast:.0f}, pure Python {mb / c_slow:.1f}, fixed-size split {mb / c_fixed:.0f}")
    print(f"- SHA-256 {mb / sha:.0f}; per 64 KiB piece: zstd level 3 on log text {mb / z3:.0f}, "
          f"AES-256-GCM sealing {mb / aes:.0f}")
    per_gb = (c_fast + sha + z3 + aes) / (len(data) / 1e9)
    print(f"- CPU seconds per GB, chunk + hash + compress + seal: {per_gb:.1f} "
          f"(CDC {c_fast / mb * 1000:.1f}, SHA-256 {sha / mb * 1000:.1f}, zstd {z3 / mb * 1000:.1f}, "
          f"AES {aes / mb * 1000:.1f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--parts", default="change,compress,crypto,speed")
    args = ap.parse_args()
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory(prefix="chunking-bench-") as tmp:
        work = Path(tmp)
        if "change" in parts:
            part_change(args.scale, work)
        if "compress" in parts:
            part_compress(args.scale, work)
    if "crypto" in parts:
        part_crypto()
    if "speed" in parts:
        part_speed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
