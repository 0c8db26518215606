"""Walking the configured paths: exclude patterns, one_file_system, symlink policy.

Yields entries depth-first with each directory's children sorted by name, so two scans of the
same tree come out in the same order.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Found:
    path: str
    st: os.stat_result | None
    error: str | None = None


class Excluder:
    """`/abs/pattern` is anchored to the full path; `name*` matches any path component;
    `dir/name*` matches the end of a path."""

    def __init__(self, patterns: list[str], always: list[str]) -> None:
        self.anchored = [p.rstrip("/") for p in patterns if p.startswith("/")] + always
        self.names = [p for p in patterns if not p.startswith("/") and "/" not in p.rstrip("/")]
        self.tails = [p.rstrip("/") for p in patterns if not p.startswith("/") and "/" in p.rstrip("/")]

    def __call__(self, path: str) -> bool:
        name = path.rsplit("/", 1)[-1]
        return (
            any(fnmatch.fnmatchcase(path, p) for p in self.anchored)
            or any(fnmatch.fnmatchcase(name, p) for p in self.names)
            or any(fnmatch.fnmatchcase(path, "*/" + p) for p in self.tails)
        )


def walk(roots: list[str], excluded: Excluder, one_file_system: bool, follow_symlinks: bool) -> Iterator[Found]:
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        root = os.path.normpath(root)
        try:
            st = os.stat(root) if follow_symlinks else os.lstat(root)
        except OSError as exc:
            yield Found(root, None, exc.strerror or str(exc))
            continue
        if excluded(root):
            continue
        yield from _walk(root, st, st.st_dev, excluded, one_file_system, follow_symlinks, seen_dirs)


def _walk(path: str, st: os.stat_result, dev: int, excluded: Excluder, one_fs: bool, follow: bool,
          seen: set[tuple[int, int]]) -> Iterator[Found]:
    yield Found(path, st)
    if not stat.S_ISDIR(st.st_mode):
        return
    if (st.st_dev, st.st_ino) in seen:  # a symlink loop when following links
        return
    seen.add((st.st_dev, st.st_ino))
    try:
        with os.scandir(path) as it:
            children = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield Found(path + "/", None, exc.strerror or str(exc))
        return
    for child in children:
        cpath = path.rstrip("/") + "/" + child.name
        if excluded(cpath):
            continue
        try:
            cst = child.stat(follow_symlinks=follow)
        except FileNotFoundError:
            continue  # vanished between listing and stat: not part of this snapshot
        except OSError as exc:
            yield Found(cpath, None, exc.strerror or str(exc))
            continue
        if stat.S_ISDIR(cst.st_mode) and one_fs and cst.st_dev != dev:
            yield Found(cpath, cst)  # keep the mount point itself, not what is mounted there
            continue
        yield from _walk(cpath, cst, dev, excluded, one_fs, follow, seen)
