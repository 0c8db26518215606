"""Generated snapshots restored into generated hostile targets (hypothesis, derandomized).

Each example is a tree of directories, files (empty or not, odd modes), and symlinks (some
pointing outside), with arbitrary names up to 255 bytes; its content is stored in SeaweedFS and its
manifest is a real snapshot of the job. Before the restore, the target is planted: at the tree's
names, symlinks to a file and to a directory outside the target, hard links to an outside file,
plain files and FIFOs, and hard links at the `NAME.restore-tmp` names restore
used to write through. Afterwards the outside files must be byte-, mode- and time-identical, the
restored tree exact, and no temp file left."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import shutil
from pathlib import Path
from typing import Any

from backup_agent.storage.manifest import Entry, ManifestWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.treeutil import Tree, capture

from reliability.lab import NODE, Lab
from reliability.report import record

OLD_TEMP = ".restore-tmp"
T0 = 1_600_000_000_000_000_000
PLANTS = ("none", "link to a file", "link to a directory", "hard link", "plain file", "fifo", "none")


def _fill(char: str, size: int) -> str:
    """`char` repeated to at most `size` bytes in UTF-8."""
    return char * (size // len(char.encode()))


def _valid(name: str) -> bool:
    return (name not in (".", "..") and not name.startswith(".ba-") and not name.endswith(OLD_TEMP)
            and 0 < len(name.encode()) <= 255)


_short = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=10)
_long = st.builds(_fill, st.sampled_from(["x", "é", "€", "𝄞"]), st.integers(200, 255))
names = st.one_of(_short, _long).filter(_valid)
_leaf = st.one_of(
    st.tuples(st.just("file"), st.binary(max_size=3000), st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o400])),
    st.tuples(st.just("link"), st.sampled_from(["sibling", "../up", "/etc/passwd", "OUTSIDE"]), st.just(0o777)),
)
trees = st.recursive(
    _leaf,
    lambda kids: st.tuples(st.just("dir"), st.dictionaries(names, kids, max_size=4),
                           st.sampled_from([0o755, 0o750, 0o700, 0o555, 0o1777])),
    max_leaves=10,
)
snapshots = st.dictionaries(names, trees, min_size=1, max_size=5)
plantings = st.lists(st.sampled_from(PLANTS), min_size=1, max_size=16)


def flatten(tree: dict[str, Any], outside: Path) -> list[tuple[str, tuple[Any, ...]]]:
    """(relative path, node) in scan order: each directory before what it holds."""
    out: list[tuple[str, tuple[Any, ...]]] = []

    def walk(prefix: str, children: dict[str, Any]) -> None:
        for name in sorted(children):
            node = children[name]
            rel = f"{prefix}/{name}" if prefix else name
            if node[0] == "link" and node[1] == "OUTSIDE":
                node = ("link", str(outside / "d"), node[2])
            out.append((rel, node))
            if node[0] == "dir":
                walk(rel, node[1])

    walk("", tree)
    return out


def make_outside(base: Path) -> Path:
    out = base / "outside"
    (out / "d").mkdir(parents=True)
    for name in ("f", "d/in.txt"):
        (out / name).write_bytes(b"outside: " + name.encode())
        (out / name).chmod(0o604)
        os.utime(out / name, ns=(T0 - 7, T0 - 7))
    (out / "d").chmod(0o711)
    os.utime(out / "d", ns=(T0 - 9, T0 - 9))
    return out


def plant(root: Path, flat: list[tuple[str, tuple[Any, ...]]], kinds: list[str], out: Path) -> set[str]:
    """Plant at the snapshot's names; returns the names planted that the snapshot does not hold."""
    planted: list[str] = []
    extras: set[str] = set()
    names = {rel for rel, _ in flat}
    for i, (rel, node) in enumerate(flat):
        kind = kinds[i % len(kinds)]
        if kind == "none" or any(rel.startswith(p + "/") for p in planted):
            continue
        place = root / rel
        place.parent.mkdir(parents=True, exist_ok=True)
        if kind == "link to a file":
            place.symlink_to(out / "f")
        elif kind == "link to a directory":
            place.symlink_to(out / "d")
        elif kind == "hard link":
            os.link(out / "f", place)
        elif kind == "fifo":
            os.mkfifo(place)  # opening it would block: restore must not even try
        else:
            place.write_bytes(b"junk that was in the target")
        planted.append(rel)
        old_temp = rel + OLD_TEMP
        if node[0] == "file" and old_temp not in names and len(Path(old_temp).name.encode()) <= 255:
            os.link(out / "f", root / old_temp)
            extras.add(old_temp)
    return extras


def expected(flat: list[tuple[str, tuple[Any, ...]]]) -> Tree:
    want: Tree = {}
    for i, (rel, node) in enumerate(flat):
        if node[0] == "dir":
            want[rel] = ("dir", node[2], T0 + i)
        elif node[0] == "file":
            want[rel] = ("file", node[2], T0 + i, hashlib.sha256(node[1]).hexdigest())
        else:
            want[rel] = ("link", node[1])
    return want


def store_snapshot(lab: Lab, sid: str, flat: list[tuple[str, tuple[Any, ...]]]) -> None:
    root = f"{NODE}/data/"
    buf = io.BytesIO()
    writer = ManifestWriter(buf, {"job": "data", "type": "files"})
    writer.add(Entry(path="/r", type="dir", mode=0o755, mtime_ns=T0 - 1))
    for i, (rel, node) in enumerate(flat):
        path = f"/r/{rel}"
        if node[0] == "dir":
            writer.add(Entry(path=path, type="dir", mode=node[2], mtime_ns=T0 + i))
        elif node[0] == "file":
            sha = hashlib.sha256(node[1]).hexdigest()
            if node[1]:
                lab.s3.put_object(Bucket=lab.bucket, Key=f"{root}data/{sha}", Body=node[1])
            writer.add(Entry(path=path, type="file", size=len(node[1]), mode=node[2], mtime_ns=T0 + i, sha256=sha,
                             object=f"data/{sha}"))
        else:
            writer.add(Entry(path=path, type="symlink", mode=0o777, mtime_ns=T0 + i, target=node[1]))
    writer.close({})
    lab.s3.put_object(Bucket=lab.bucket, Key=f"{root}snapshots/{sid}.json.gz", Body=buf.getvalue())


def test_generated_snapshots_restore_exactly_into_planted_targets(lab: Lab, tmp_path: Path) -> None:
    lab.job("data", type="files", paths=[str(tmp_path / "unused")])
    runner = lab.verifier("data")
    ran: list[int] = []
    examples = itertools.count()  # failing examples too (hypothesis shrinks them): each has its own places

    @settings(max_examples=40, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.data_too_large])
    @given(tree=snapshots, kinds=plantings)
    def check(tree: dict[str, Any], kinds: list[str]) -> None:
        n = next(examples)
        base = tmp_path / f"case{n}"
        out = make_outside(base)
        flat = flatten(tree, out)
        sid = f"20260101T{n // 3600:02}{n // 60 % 60:02}{n % 60:02}Z-{n:06x}"
        store_snapshot(lab, sid, flat)
        target = base / "target"
        extras = plant(target / "r", flat, kinds, out)
        before = capture(out)

        got = runner.restore(snapshot=sid, at=None, target=str(target), paths=[])

        assert capture(out) == before, "something outside the target changed"
        restored = {k: v for k, v in capture(target / "r").items() if k not in extras}
        assert restored == expected(flat)
        temps = [n for _, ds, fs in os.walk(target) for n in ds + fs if n.startswith(".ba-")]
        assert not temps, temps
        assert got["files"] == sum(node[0] == "file" for _, node in flat)
        ran.append(len(flat))
        shutil.rmtree(base)

    check()
    assert len(ran) >= 30, len(ran)
    record("hostile.restore_target", cases=len(ran),
           result="generated trees (directories, empty and non-empty files with set-id and read-only modes, "
                  "symlinks, names of 1-255 bytes in any script) restored into targets planted with symlinks "
                  "to an outside file and directory, hard links to an outside file, plain files and "
                  "FIFOs where files and directories belong, and hard links at the old NAME.restore-tmp names: "
                  "outside files "
                  "byte-, mode- and time-identical, the tree exact, no temp file left",
           measured=f"{sum(ran)} entries")
