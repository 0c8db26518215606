"""Long names against the real SeaweedFS: every name the kernel allows must back up and restore,
whatever the length of the file name, the path, the storage prefix and the job name. A store
refuses a key segment over 255 bytes and S3 a key over 1,024 bytes; the agent must pick a key that
fits, not fail the file."""

from __future__ import annotations

import os
from pathlib import Path

from support.treeutil import capture

from backup_agent.storage import layout

MIB = 1 << 20


def _large(path: Path) -> bytes:
    data = os.urandom(MIB + 1)  # over large_file_mb: 1, so it gets an object of its own
    path.write_bytes(data)
    return data


def _roundtrip(agent, tmp_path: Path, src: Path, job: str) -> None:
    out = agent.json("run", job)
    assert out["status"] == "success" and out["files_failed"] == 0, out
    target = tmp_path / "restored"
    proc = agent.run("restore", job, "--target", str(target))
    assert proc.returncode == 0, proc.stderr
    assert capture(target / str(src).lstrip("/")) == capture(src)
    proc = agent.run("check", job, "--read-data")
    assert proc.returncode == 0, proc.stderr
    for key in agent.object_keys():
        assert len(key.encode()) <= 1024, key
        assert all(len(part.encode()) <= 255 for part in key.split("/")), key


def test_large_files_with_longest_names_deep_paths_and_a_long_prefix(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _large(src / ("n" * 255))  # the longest name the kernel allows
    _large(src / ("é" * 127 + "x"))  # 255 bytes in UTF-8, 128 characters
    _large(src / ("m" * 238))  # the longest name that still gets a readable key
    deep = src
    for i in range(5):  # 5 directories of 200 bytes: the path alone is over S3's 1,024-byte limit
        deep = deep / (f"{i}" * 200)
    deep.mkdir(parents=True)
    _large(deep / "deep.img")
    agent.data["storage"]["large_file_mb"] = 1
    agent.data["storage"]["prefix"] = "/".join(["p" * 200, "q" * 255, "fleet"])
    agent.job("a" * 63, type="files", paths=[str(src)])
    _roundtrip(agent, tmp_path, src, "a" * 63)
    root = agent.data["storage"]["prefix"] + "/" + "a" * 63 + "/"
    # Format 3: names never become keys (big files are chunks in packs), whatever their length.
    assert agent.object_keys(root + "packs/") and not agent.object_keys(root + "files/")


def test_a_prefix_that_leaves_no_room_for_keys_is_refused_at_load(agent, tmp_path: Path) -> None:
    agent.data["storage"]["prefix"] = "/".join(["p" * 250] * 4)
    agent.job("data", type="files", paths=[str(tmp_path)])
    proc = agent.run("validate")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "storage.prefix" in lines[0] and "1024" in lines[0], proc.stderr

    agent.data["storage"]["prefix"] = "x" * 256  # one segment longer than a store accepts
    agent.write()
    proc = agent.run("validate")
    assert proc.returncode == 2 and "255" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_old_readable_keys_are_unchanged() -> None:
    """Restore reads keys from manifests: snapshots from before format 3 name such keys."""
    sha = "ab" * 32
    assert layout.large_file_key("/srv/db.img", sha, "node/job/") == f"files/srv/db.img@{sha[:16]}"
    assert layout.large_file_key("/srv/" + "n" * 239, sha, "node/job/") == f"blobs/ab/{sha}"
    assert layout.large_file_key("/a/b\x01", sha, "") == f"blobs/ab/{sha}"
