"""SIGKILL while big files are chunked and their packs go up, and around the manifest, the object
whose presence makes a snapshot.

Since manifest format 3 a big file (large_file_mb and above) is read once and cut into chunks
that go into packs of their own (one PUT each, in the background): there is no upload of the
file as one object any more, so the kill points are its packs' PUTs, while the read still goes on."""

from __future__ import annotations

import random
from pathlib import Path

from reliability.crash import Crashes, is_manifest_put, is_pack_put, write_files
from reliability.lab import Lab

BIG = 12 << 20  # above large_file_mb (8): chunked, about twelve packs of 1 MiB
SECOND = 9 << 20  # a second big file, chunked at the same time by the other worker


def test_kill_during_large_uploads_and_around_the_manifest(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(11)
    src = tmp_path / "src"
    write_files(src / "small", 200, rng)  # ~300 KB: one small-file pack, sealed at the end of the scan
    big, second = src / "disk.img", src / "archive.tar"

    def rewrite() -> None:  # new content for both big files: every run chunks and packs them again
        big.write_bytes(rng.randbytes(BIG))
        second.write_bytes(rng.randbytes(SECOND))

    rewrite()
    # One upload at a time and 1 MiB packs: "the third pack" means two are stored and the big
    # files' reads are still under way (two packs wait at most, then the chunkers wait).
    lab.storage(pack_size_mb=1, concurrency=1)
    lab.job("data", type="files", paths=[str(src)])
    c = Crashes(lab, "data", src)

    c.kill("crash.large_pack_first", match=is_pack_put)
    rewrite()
    c.kill("crash.large_pack_third", match=is_pack_put, nth=3)
    rewrite()
    c.kill("crash.large_pack_stored", match=is_pack_put, nth=5, after=True)

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
