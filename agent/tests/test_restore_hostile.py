"""Restores into a target someone prepared: links to files and directories outside it, at the
snapshot's names, at its parent directories and at the temp names restore used to use. Nothing
outside may change, and the restored tree must be exact; a failed restore leaves no temp file
and no private (0700) directory behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from support.contentkeys import content_keys
from support.treeutil import Tree, capture

from backup_agent import config
from backup_agent.errors import JobFailed
from backup_agent.jobs.files import FilesJob
from backup_agent.storage.s3_boto import BotoStore

OLD_TEMP = ".restore-tmp"  # the name restore used to write DEST's content under


def outside_world(base: Path) -> Path:
    """Files and a directory a restore must never touch (odd modes and times, to see a chmod or utime)."""
    out = base / "outside"
    (out / "dir").mkdir(parents=True)
    for name in ("victim-empty", "victim-hard", "victim-small", "victim-big", "victim-tmp-small",
                 "victim-tmp-big", "dir/inner.txt"):
        (out / name).write_bytes(f"outside: {name}\n".encode())
        (out / name).chmod(0o604)
        os.utime(out / name, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    (out / "dir").chmod(0o711)
    os.utime(out / "dir", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    return out


def source(base: Path, agent) -> Path:
    src = base / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub2").mkdir()
    (src / "empty").write_bytes(b"")
    (src / "empty2").write_bytes(b"")
    (src / "small.txt").write_text("small content\n")
    (src / "big.bin").write_bytes(os.urandom(3 << 20))  # a large file: its own object
    (src / "sub" / "inner.txt").write_text("restored inner\n")
    (src / "sub2" / "x").write_text("x\n")
    (src / "link").symlink_to("small.txt")
    (src / "sub").chmod(0o750)
    (src / "empty").chmod(0o640)
    agent.data["storage"]["large_file_mb"] = 1
    agent.job("data", type="files", paths=[str(src)])
    assert agent.run("run", "data").returncode == 0
    return src


def in_process(agent, name: str) -> FilesJob:
    cfg = config.load(str(agent.path))
    return FilesJob(cfg, cfg.job(name), store=BotoStore(cfg.storage))


def no_temps(root: Path) -> list[str]:
    return [os.path.join(d, n) for d, ds, fs in os.walk(root) for n in ds + fs if n.startswith(".ba-")]


def without(tree: Tree, names: set[str]) -> Tree:
    return {k: v for k, v in tree.items() if k not in names}


def test_links_planted_at_entries_and_old_temp_names_are_replaced_never_followed(agent, tmp_path: Path) -> None:
    src = source(tmp_path, agent)
    out = outside_world(tmp_path)
    target = tmp_path / "target"
    at = target / str(src).lstrip("/")
    at.mkdir(parents=True)
    (at / "empty").symlink_to(out / "victim-empty")  # an empty file's name: was truncated and chmodded
    os.link(out / "victim-hard", at / "empty2")  # a hard link at an empty file's name
    os.link(out / "victim-small", at / "small.txt")
    (at / "big.bin").symlink_to(out / "victim-big")
    (at / "sub").symlink_to(out / "dir")  # a directory's name: its mode and mtime went outside
    os.link(out / "victim-small", at / "sub2")  # a file where a directory belongs
    (at / "link").symlink_to(out / "victim-small")
    os.link(out / "victim-tmp-small", at / f"small.txt{OLD_TEMP}")  # was truncated and written
    os.link(out / "victim-tmp-big", at / f"big.bin{OLD_TEMP}")
    before = capture(out)

    proc = agent.run("restore", "data", "--target", str(target))

    assert proc.returncode == 0, proc.stderr
    assert capture(out) == before
    got = capture(at)
    assert without(got, {f"small.txt{OLD_TEMP}", f"big.bin{OLD_TEMP}"}) == capture(src)
    assert stat.S_ISREG(os.lstat(at / "small.txt").st_mode) and os.lstat(at / "small.txt").st_nlink == 1
    assert not no_temps(target)


def test_a_symlink_at_a_parent_directory_is_replaced_not_followed(agent, tmp_path: Path) -> None:
    """The target's first directory on the way to the snapshot's paths links outside, where the same
    paths exist: restore makes a real directory there instead of writing through it (or giving up)."""
    src = source(tmp_path, agent)
    out = outside_world(tmp_path)
    first, *rest = str(src).lstrip("/").split("/")
    mirror = out / "mirror"
    (mirror / "/".join(rest) / "sub").mkdir(parents=True)
    (mirror / "/".join(rest) / "small.txt").write_text("outside, on the restored path\n")
    (mirror / "/".join(rest) / "sub" / "inner.txt").write_text("outside too\n")
    target = tmp_path / "target"
    target.mkdir()
    (target / first).symlink_to(mirror)
    before = capture(out)

    proc = agent.run("restore", "data", "--target", str(target))

    assert proc.returncode == 0, proc.stderr
    assert capture(out) == before
    assert not (target / first).is_symlink()
    assert capture(target / str(src).lstrip("/")) == capture(src)


def test_a_file_named_like_the_old_temp_name_beside_a_large_file(agent, tmp_path: Path) -> None:
    """The large file's content came from the neighbour, and the neighbour vanished."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "BIG").write_bytes(os.urandom(12 << 20))
    (src / f"BIG{OLD_TEMP}").write_text("the neighbour's own content\n")
    agent.data["storage"]["large_file_mb"] = 1
    agent.job("data", type="files", paths=[str(src)])
    assert agent.run("run", "data").returncode == 0
    for attempt in range(3):
        target = tmp_path / f"target{attempt}"
        proc = agent.run("restore", "data", "--target", str(target))
        assert proc.returncode == 0, proc.stderr
        assert capture(target / str(src).lstrip("/")) == capture(src)


def test_names_of_255_bytes_restore(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    long_dir = src / ("d" * 255)
    long_dir.mkdir(parents=True)
    (src / ("f" * 255)).write_text("a small file with the longest name\n")
    (src / ("é" * 127 + "x")).write_text("255 bytes in UTF-8\n")
    (src / ("e" * 254)).write_bytes(b"")
    # A large file's object is named by its path, and SeaweedFS refuses key components above 255
    # bytes (`name@hash16`): a backup-side limit, so its name here leaves room for that suffix.
    (long_dir / ("b" * 238)).write_bytes(os.urandom(2 << 20))
    (long_dir / ("s" * 255)).write_bytes(os.urandom(3000))
    (long_dir / ("c" * 255)).write_bytes((long_dir / ("s" * 255)).read_bytes())  # same content
    (src / ("l" * 255)).symlink_to("f" * 255)
    agent.data["storage"]["large_file_mb"] = 1
    agent.job("data", type="files", paths=[str(src)])
    assert agent.run("run", "data").returncode == 0
    target = tmp_path / "target"

    proc = agent.run("restore", "data", "--target", str(target))

    assert proc.returncode == 0, proc.stderr
    assert capture(target / str(src).lstrip("/")) == capture(src)


def restored_dirs_not_private(target: Path, src: Path) -> list[str]:
    """Directories of the restore whose mode is not the snapshot's (0700 while a restore runs)."""
    at = target / str(src).lstrip("/")
    bad = []
    for d, ds, _ in os.walk(at):
        for n in ds:
            mode = stat.S_IMODE(os.lstat(os.path.join(d, n)).st_mode)
            there = src / os.path.relpath(os.path.join(d, n), at)
            if not there.is_dir():
                continue  # the target's own, not the snapshot's
            want = stat.S_IMODE(os.lstat(there).st_mode)
            if mode != want:
                bad.append(f"{os.path.join(d, n)}: {mode:o} instead of {want:o}")
    return bad


def failing_tree(tmp_path: Path, agent) -> Path:
    src = tmp_path / "src"
    for i in range(5):
        d = src / f"dir{i}" / "nested"
        d.mkdir(parents=True)
        for j in range(20):
            (d / f"f{j}.txt").write_text(f"{i}/{j}\n" * 50)
        d.chmod(0o755)
        (src / f"dir{i}").chmod(0o751)
    (src / "dir4" / "nested" / "zz-big.bin").write_bytes(os.urandom(2 << 20))
    agent.data["storage"]["large_file_mb"] = 1
    agent.job("data", type="files", paths=[str(src)])
    assert agent.run("run", "data").returncode == 0
    return src


def test_a_restore_that_fails_on_an_object_deleted_mid_way_leaves_no_temp_and_no_private_directory(
        agent, tmp_path: Path) -> None:
    """The large file's object is deleted from the bucket (a prune from elsewhere) right before
    restore reads it: every directory was made by then, at 0700 while the restore runs."""
    src = failing_tree(tmp_path, agent)
    big = set(content_keys(agent.path, "data", f"{src}/dir4/nested/zz-big.bin"))  # the packs of its chunks
    assert big, agent.object_keys()
    job = in_process(agent, "data")

    def delete_first(params: dict, **_: object) -> None:
        if params.get("Key") in big:
            agent.s3.delete_object(Bucket=agent.bucket, Key=params["Key"])

    job.store.client.meta.events.register("provide-client-params.s3.GetObject", delete_first)
    target = tmp_path / "target"
    with pytest.raises(JobFailed, match="cannot read"):
        job.restore(snapshot=None, at=None, target=str(target), paths=[])

    assert (target / str(src).lstrip("/") / "dir4" / "nested").is_dir()  # the restore had begun
    assert not no_temps(target)
    assert not restored_dirs_not_private(target, src)


def test_a_restore_that_cannot_write_a_file_leaves_no_temp_and_no_private_directory(agent, tmp_path: Path) -> None:
    """A directory the target already holds where the snapshot has the large file: restore says so
    and stops, its verified temp file removed (it used to stay as `zz-big.bin.restore-tmp`)."""
    src = failing_tree(tmp_path, agent)
    target = tmp_path / "target"
    at = target / str(src).lstrip("/")
    (at / "dir4" / "nested" / "zz-big.bin" / "keep").mkdir(parents=True)

    proc = agent.run("restore", "data", "--target", str(target))

    assert proc.returncode == 1, proc.stderr
    assert "zz-big.bin: Is a directory" in proc.stderr, proc.stderr
    assert not no_temps(target) and not list(at.rglob(f"*{OLD_TEMP}"))
    assert (at / "dir4" / "nested" / "zz-big.bin" / "keep").is_dir()
    assert not restored_dirs_not_private(target, src)


def test_other_entry_kinds_are_made_new_and_renamed_over_what_was_there(tmp_path: Path) -> None:
    """FIFOs (and devices) are KINDS: made under a temp name, metadata set without following
    links, renamed over a link planted at their name."""
    from types import SimpleNamespace

    from backup_agent.jobs import restore_files
    from backup_agent.storage.manifest import Entry

    out = outside_world(tmp_path)
    target = tmp_path / "target"
    (target / "x").mkdir(parents=True)
    (target / "x" / "pipe").symlink_to(out / "victim-small")
    before = capture(out)
    entries = [Entry(path="/x", type="dir", mode=0o750, mtime_ns=1_600_000_000_000_000_001),
               Entry(path="/x/pipe", type="fifo", mode=0o640, mtime_ns=1_600_000_000_000_000_002)]
    job = SimpleNamespace(store=None, bucket="unused", root="unused/",
                          cfg=SimpleNamespace(storage=SimpleNamespace(concurrency=2)))

    got = restore_files.restore_entries(job, entries, target, 0, None)  # type: ignore[arg-type]

    assert got["specials"] == 1 and got["errors"] == []
    st = os.lstat(target / "x" / "pipe")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == 1_600_000_000_000_000_002
    assert capture(out) == before and not no_temps(target)
    assert stat.S_IMODE(os.lstat(target / "x").st_mode) == 0o750
