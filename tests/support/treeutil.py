"""Capture a directory tree (content + metadata) so restores can be compared with what the
tree held at backup time."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

Tree = dict[str, tuple[Any, ...]]


def capture(root: Path) -> Tree:
    """Relative path → (kind, mode, mtime_ns, sha256 | link target): what a restore must give back."""
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, digest)
    return out
