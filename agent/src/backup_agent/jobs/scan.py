"""Walking the configured paths: exclude patterns, one_file_system, symlink policy.

Yields entries depth-first with each directory's children sorted by name, so two scans of the
same tree come out in the same order.
"""

from __future__ import annotations

import fnmatch
import os
import re
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
    `dir/name*` matches the end of a path. Patterns are compiled once into one regex each kind."""

    def __init__(self, patterns: list[str], always: list[str]) -> None:
        anchored = [p.rstrip("/") for p in patterns if p.startswith("/")] + always
        names = [p for p in patterns if not p.startswith("/") and "/" not in p.rstrip("/")]
        tails = ["*/" + p.rstrip("/") for p in patterns if not p.startswith("/") and "/" in p.rstrip("/")]
        self.full = _compile(anchored + tails)
        self.names = _compile(names)

    def __call__(self, path: str) -> bool:
        if self.full is not None and self.full.match(path):
            return True
        return self.names is not None and bool(self.names.match(path[path.rfind("/") + 1 :]))


def _compile(globs: list[str]) -> re.Pattern[str] | None:
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))


def walk(roots: list[str], excluded: Excluder, one_file_system: bool, follow_symlinks: bool) -> Iterator[Found]:
    """Depth-first with an explicit stack (no generator chain per directory level)."""
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        root = os.path.normpath(root)
        if root.startswith("//"):  # POSIX lets normpath keep two; a manifest path has one
            root = "/" + root.lstrip("/")
        try:
            st = os.stat(root) if follow_symlinks else os.lstat(root)
        except OSError as exc:
            yield Found(root, None, exc.strerror or str(exc))
            continue
        if excluded(root):
            continue
        dev = st.st_dev
        stack: list[tuple[str, os.stat_result]] = [(root, st)]
        while stack:
            path, st = stack.pop()
            yield Found(path, st)
            if not stat.S_ISDIR(st.st_mode) or (path != root and one_file_system and st.st_dev != dev):
                continue  # a mount point on another file system is kept, not what is mounted there
            if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop when following links
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            try:
                with os.scandir(path) as it:
                    children = sorted(it, key=lambda e: e.name)
            except FileNotFoundError:
                continue  # removed since it was listed, like a vanished file: empty in this snapshot
            except OSError as exc:
                yield Found(path + "/", None, exc.strerror or str(exc))
                continue
            base = path.rstrip("/") + "/"
            found: list[tuple[str, os.stat_result]] = []
            for child in children:
                cpath = base + child.name
                if excluded(cpath):
                    continue
                try:
                    found.append((cpath, child.stat(follow_symlinks=follow_symlinks)))
                except FileNotFoundError:
                    continue  # vanished between listing and stat: not part of this snapshot
                except OSError as exc:
                    yield Found(cpath, None, exc.strerror or str(exc))
            stack.extend(reversed(found))  # pop() then visits children in name order
