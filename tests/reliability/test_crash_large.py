"""SIGKILL while large files go up (single PUT, each step of a multipart upload) and around the
manifest, the object whose presence makes a snapshot."""

from __future__ import annotations

import random
from pathlib import Path

from reliability.crash import Crashes, is_manifest_put, write_files
from reliability.lab import Lab

MULTIPART = 12 << 20  # above 2 x multipart_chunk_mb (5): three parts
SINGLE = 9 << 20  # above large_file_mb (8), below the multipart threshold: one PUT


def test_kill_during_large_uploads_and_around_the_manifest(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(11)
    src = tmp_path / "src"
    write_files(src / "small", 200, rng)
    big, single = src / "disk.img", src / "archive.tar"

    def rewrite() -> None:  # new content for the multipart file (the single-PUT one matters once)
        big.write_bytes(rng.randbytes(MULTIPART))

    rewrite()
    single.write_bytes(rng.randbytes(SINGLE))
    # One upload at a time, so "part 2" below means part 1 is stored and part 3 not yet sent.
    lab.storage(multipart_chunk_mb=5, concurrency=1)
    lab.job("data", type="files", paths=[str(src)])
    c = Crashes(lab, "data", src)

    def single_put(r) -> bool:  # type: ignore[no-untyped-def]
        return r.method == "PUT" and "/files/" in r.path and "archive.tar@" in r.path and not r.query

    c.kill("crash.large_put", match=single_put)
    rewrite()
    c.kill("crash.mpu_create", match=lambda r: r.method == "POST" and "uploads" in r.query)
    rewrite()
    c.kill("crash.mpu_part", match=lambda r: r.method == "PUT" and "uploadId" in r.query, nth=2)
    rewrite()
    c.kill("crash.mpu_complete", match=lambda r: r.method == "POST" and "uploadId" in r.query)

    rewrite()
    write_files(src / "late", 50, rng, prefix="l")
    out = c.kill("crash.manifest", match=is_manifest_put,
                 note="; the next run uploaded no data again (only the manifest)")
    assert out["bytes_uploaded"] == 0, out

    rewrite()
    c.kill("crash.manifest_stored", match=is_manifest_put, after=True, stored=True)

    proc = lab.run("check", "data", "--read-data")
    assert proc.returncode == 0, proc.stderr
    assert [s["id"] for s in lab.json("snapshots", "data")] == sorted(c.states)
