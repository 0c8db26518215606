"""SIGKILL before and during the scan and while small files are packed and uploaded."""

from __future__ import annotations

import random
from pathlib import Path

from reliability.crash import Crashes, is_pack_put, kill_during_scan, write_files
from reliability.lab import Lab


def test_kill_during_scan_and_small_file_packing(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(10)
    src = tmp_path / "src"
    write_files(src / "tree", 3000, rng, per_dir=30)  # ~5 MB in 100 directories: one pack, sent after the scan
    (src / "empty-dir").mkdir()
    (src / "link").symlink_to("tree/f-dir000/f00000.dat")
    lab.job("data", type="files", paths=[str(src)])
    c = Crashes(lab, "data", src)

    # The first run of all, killed while it reads the tree (nothing uploaded yet).
    c.kill("crash.scan", killer=kill_during_scan(lab, src))

    write_files(src / "more", 20, rng, prefix="s")
    c.kill("crash.startup", match=lambda r: r.method == "GET" and "versioning" in r.query)

    # Small packs, one upload at a time: each PUT below is exactly one pack.
    lab.storage(pack_size_mb=1, concurrency=1)
    write_files(src / "new1", 1500, rng, prefix="a")  # ~2.4 MB: three packs
    c.kill("crash.pack_first", match=is_pack_put)

    new = write_files(src / "new2", 2500, rng, prefix="b")  # ~4 MB: four or five packs
    out = c.kill("crash.pack_third", match=is_pack_put, nth=3,
                 note="; the next run reused the two packs stored before the kill")
    assert out["bytes_uploaded"] < new - (2 << 20) + (64 << 10), "the packs stored before the kill were uploaded again"

    write_files(src / "new3", 700, rng, prefix="c")
    (src / "tree" / "f-dir005" / "f00150.dat").write_bytes(b"changed after the crashes")
    c.kill("crash.pack_stored", match=is_pack_put, after=True)

    # Through the CLI, as a user would check after all this.
    proc = lab.run("check", "data", "--read-data")
    assert proc.returncode == 0, proc.stderr
    assert [s["id"] for s in lab.json("snapshots", "data")] == sorted(c.states)
