"""What a files backup captures and gives back, against the real SeaweedFS: any name the kernel
allows, hard links, FIFOs and devices, sockets (counted as skipped), xattrs and POSIX ACLs,
sparse files with their holes, and a file that grows while it is read."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from support.fstrees import NAME_MAX_BYTES, acl_access, acl_default, build, sparse_file, trees
from support.treeutil import differences, inventory


def restored(target: Path, src: Path) -> Path:
    return target / str(src).lstrip("/")


def backup_and_restore(agent: Any, src: Path, target: Path, *args: str) -> dict[str, Any]:
    proc = agent.run("run", "data", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # By id: two runs within a second are not ordered yet (issue 17, item 8).
    back = agent.run("restore", "data", "--snapshot", out["snapshot"], "--target", str(target))
    assert back.returncode == 0, back.stderr
    return out  # type: ignore[no-any-return]


def test_names_links_specials_xattrs_acls_come_back_exactly(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    b = os.fsencode(src)
    bad = b + b"/latin1-\xe9t\xe9\xff"  # not UTF-8: was "internal error" after the manifest upload
    os.mkdir(bad)
    with open(bad + b"/\x80\x81 inside", "wb") as f:
        f.write(b"bytes under a non-UTF-8 directory\n")
    with open(b + b"/" + b"n" * NAME_MAX_BYTES, "wb") as f:
        f.write(b"long name\n")
    (src / "data.bin").write_bytes(os.urandom(70_000))
    os.link(src / "data.bin", src / "second-name")
    os.link(src / "data.bin", bad + b"/third-name")
    (src / "pipe").parent.mkdir(exist_ok=True)
    os.mkfifo(src / "pipe", 0o640)
    os.mknod(src / "null-like", 0o620 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "block", 0o600 | stat.S_IFBLK, os.makedev(7, 99))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "listening.sock"))
    (src / "attrs.txt").write_text("with attributes\n")
    os.setxattr(src / "attrs.txt", "user.comment", b"\x00binary\xffvalue")
    os.setxattr(src / "attrs.txt", "trusted.origin", b"lab")
    os.setxattr(src / "attrs.txt", "security.label", b"secret")
    os.setxattr(src / "attrs.txt", "system.posix_acl_access", acl_access())
    (src / "shared").mkdir()
    os.setxattr(src / "shared", "system.posix_acl_default", acl_default())
    os.setxattr(src / "shared", "user.dir", b"on a directory")
    (src / "shared" / "inherits").write_text("gets the default ACL\n")
    os.symlink("attrs.txt", src / "link")
    os.setxattr(src / "link", "trusted.on-link", b"1", follow_symlinks=False)
    os.chown(src / "data.bin", 1234, 5678)
    want = inventory(src)
    assert want[b"attrs.txt"]["xattrs"]["system.posix_acl_access"] == acl_access()

    agent.job("data", type="files", paths=[str(src)])
    target = tmp_path / "restore"
    out = backup_and_restore(agent, src, target)
    sock.close()
    assert out["status"] == "success" and out["files_failed"] == 0
    assert out["files_skipped"] == 1
    assert out["skipped"] == [{"path": str(src / "listening.sock"), "reason": "socket"}]
    del want[b"listening.sock"]
    assert differences(want, inventory(restored(target, src))) == []
    # Again into the same target: FIFOs, devices and links already there are replaced, not reused.
    again = agent.run("restore", "data", "--snapshot", out["snapshot"], "--target", str(target))
    assert again.returncode == 0, again.stderr
    assert differences(want, inventory(restored(target, src))) == []


def test_a_path_written_with_a_double_slash_backs_up_restorably(agent, tmp_path: Path) -> None:
    """`//srv/x` ran "success" and then restore, check and prune all failed ("not normalised")."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("content\n")
    want = inventory(src)
    agent.job("data", type="files", paths=["/" + str(src)])
    target = tmp_path / "t"
    backup_and_restore(agent, src, target)
    assert differences(want, inventory(restored(target, src))) == []
    assert agent.run("check", "data", "--read-data").returncode == 0


def test_unchanged_rerun_keeps_everything(agent, tmp_path: Path) -> None:
    """The cache's fast path must carry xattrs, links and names too; an unchanged file is not
    asked for xattrs again unless it had some, and adding or removing one is noticed (ctime)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 5000)
    os.link(src / "a", src / "b")
    os.setxattr(src / "a", "user.k", b"v")
    (src / "plain").write_bytes(b"p" * 3000)
    os.mkfifo(src / "f")
    with open(os.fsencode(src) + b"/\xfe", "wb") as f:
        f.write(b"x")
    agent.job("data", type="files", paths=[str(src)])
    for step in range(3):
        want = inventory(src)
        out = agent.json("run", "data")
        if step == 1:
            assert out["files_unchanged"] == 4 and out["bytes_uploaded"] == 0
        target = tmp_path / f"t{step}"
        assert agent.run("restore", "data", "--snapshot", out["snapshot"], "--target", str(target)).returncode == 0
        assert differences(want, inventory(restored(target, src))) == []
        if step == 1:
            os.setxattr(src / "plain", "user.added", b"later")
            os.removexattr(src / "a", "user.k")
            os.setxattr(src / "a", "trusted.other", b"1")


def test_sparse_files_are_stored_compactly_and_keep_their_holes(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    block = os.urandom(4096)
    sparse_file(src / "vm.img", 256 << 20, [(100 << 20, block)])  # 256 MiB, 4 KiB of data
    # The same stored bytes laid out three ways: restored from one download, each with its holes.
    (src / "compact-twin").write_bytes(block)
    sparse_file(src / "other-holes", 8 << 20, [(1 << 20, block)])
    sparse_file(src / "holes-only", 64 << 20, [])
    # More data than large_file_mb: stored through the spooled large-file path.
    sparse_file(src / "big-sparse", 512 << 20, [(0, os.urandom(3 << 20)), (300 << 20, os.urandom(1 << 20))])
    sparse_file(src / "tail-data", 32 << 20, [((32 << 20) - 10, b"0123456789")])
    (src / "large-linked").write_bytes(os.urandom(3 << 20))  # hard links of a large file, too
    os.link(src / "large-linked", src / "large-linked-2")
    want = inventory(src)
    assert want[b"vm.img"]["allocated"] < 1 << 20
    agent.data["storage"]["large_file_mb"] = 2
    agent.job("data", type="files", paths=[str(src)])
    target = tmp_path / "t"
    out = backup_and_restore(agent, src, target)
    assert out["bytes_uploaded"] < 9 << 20  # not the 870 MiB the files say they are
    got = inventory(restored(target, src))
    assert differences(want, got) == []
    assert got[b"vm.img"]["allocated"] <= 64 << 10 and got[b"holes-only"]["allocated"] == 0
    assert agent.run("check", "data", "--read-data").returncode == 0


def test_file_growing_while_read_is_stored_as_a_prefix(agent, tmp_path: Path) -> None:
    """A log appended to during the whole backup: stored as the bytes it had when the read
    began (not absent from every snapshot, exit 3, as before), and reported."""
    src = tmp_path / "src"
    src.mkdir()
    log = src / "app.log"
    line = b"x" * 4095 + b"\n"
    log.write_bytes(line * 2048)  # 8 MiB: a large file with 1 MiB large_file_mb
    agent.data["storage"]["large_file_mb"] = 1
    agent.job("data", type="files", paths=[str(src)])
    stop = threading.Event()

    def writer() -> None:
        with open(log, "ab", buffering=0) as f:
            while not stop.is_set():
                f.write(line * 16)
                time.sleep(0.002)

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(2):  # every run, not just a lucky one
            proc = agent.run("run", "data", "--json")
            assert proc.returncode == 0, proc.stderr
            out = json.loads(proc.stdout)
            assert out["files_failed"] == 0 and out["changed_while_read"] == [str(log)]
    finally:
        stop.set()
        t.join()
    target = tmp_path / "t"
    assert agent.run("restore", "data", "--target", str(target)).returncode == 0
    got = (restored(target, src) / "app.log").read_bytes()
    whole = log.read_bytes()
    assert len(got) >= 8 << 20 and len(got) % len(line) == 0 and whole.startswith(got)
    assert agent.run("check", "data", "--read-data").returncode == 0


@settings(max_examples=int(os.environ.get("FIDELITY_EXAMPLES", "12")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(spec=trees())
def test_any_tree_restores_exactly(agent, tmp_path: Path, spec: list[Any]) -> None:
    case = tmp_path / uuid.uuid4().hex[:8]
    src = case / "src"
    src.mkdir(parents=True)
    build(src, spec)
    want = inventory(src)
    agent.job("data", type="files", paths=[str(src)])
    target = case / "restore"
    out = backup_and_restore(agent, src, target)
    assert out["files_failed"] == 0 and out["files_skipped"] == 0
    assert differences(want, inventory(restored(target, src))) == []


@pytest.fixture(autouse=True)
def _small_packs(agent) -> None:
    agent.data["storage"]["pack_size_mb"] = 4
    agent.write()
