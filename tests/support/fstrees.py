"""Hypothesis strategies for file trees an attacker or an odd system could hold: names of any
bytes but NUL and '/', hard links, symlinks to anything, FIFOs, device nodes, user/trusted/
security xattrs, POSIX ACLs, sparse files, any mode and mtime. `build` makes one on disk."""

from __future__ import annotations

import os
import stat
import zlib
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from support.treeutil import (
    ACL_GROUP,
    ACL_GROUP_OBJ,
    ACL_MASK,
    ACL_OTHER,
    ACL_USER,
    ACL_USER_OBJ,
    posix_acl,
)

# Names up to the kernel's 255 bytes (restore's temp names are short and private).
NAME_MAX_BYTES = 255


def acl_access() -> bytes:
    return posix_acl([(ACL_USER_OBJ, 6, None), (ACL_USER, 4, 4242), (ACL_GROUP_OBJ, 4, None),
                      (ACL_GROUP, 6, 4343), (ACL_MASK, 6, None), (ACL_OTHER, 0, None)])


def acl_default() -> bytes:
    return posix_acl([(ACL_USER_OBJ, 7, None), (ACL_USER, 5, 4242), (ACL_GROUP_OBJ, 5, None),
                      (ACL_MASK, 5, None), (ACL_OTHER, 0, None)])


def sparse_file(path: Path, size: int, regions: list[tuple[int, bytes]]) -> None:
    """`size` bytes of holes with `regions` written at their offsets."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in regions:
            f.seek(off)
            f.write(data)


_name = st.binary(min_size=1, max_size=NAME_MAX_BYTES).filter(
    lambda n: b"/" not in n and b"\x00" not in n and n not in (b".", b".."))
_xattr = st.tuples(st.sampled_from(["user.", "trusted.", "security."]),
                   st.text("abcdefghij-_.0123456789", min_size=1, max_size=20), st.binary(max_size=300))
_regions = st.lists(st.tuples(st.integers(0, 2 << 20), st.binary(min_size=1, max_size=5000)), max_size=3)
_node = st.one_of(
    st.tuples(st.just("file"), st.binary(max_size=20_000)),
    st.tuples(st.just("sparse"), st.integers(1, 4 << 20), _regions),
    st.tuples(st.just("dir"), st.integers(0, 3)),
    st.tuples(st.just("symlink"), _name),
    st.tuples(st.just("hardlink"), st.integers(0, 1000)),
    st.tuples(st.just("fifo")),
    st.tuples(st.just("chardev"), st.integers(0, 255), st.integers(0, 255)),
)
TREE = st.lists(st.tuples(_name, _node, st.lists(_xattr, max_size=3), st.integers(0, 0o7777),
                           st.integers(0, 2_000_000_000), st.booleans()), min_size=1, max_size=25)


def build(src: Path, spec: list[Any]) -> None:
    """Make the tree a `trees()` example describes under `src` (an existing directory)."""
    dirs = [os.fsencode(src)]
    files: list[bytes] = []
    for name, node, xattrs, mode, mtime, acl in spec:
        parent = dirs[zlib.crc32(name) % len(dirs)]
        p = parent + b"/" + name
        if os.path.lexists(p):
            continue
        kind = node[0]
        if kind == "file":
            with open(p, "wb") as f:
                f.write(node[1])
            files.append(p)
        elif kind == "sparse":
            sparse_file(Path(os.fsdecode(p)), node[1], [(min(o, node[1] - 1), d) for o, d in node[2]])
            files.append(p)
        elif kind == "dir":
            os.mkdir(p)
            dirs.append(p)
        elif kind == "symlink":
            os.symlink(node[1], p)
        elif kind == "hardlink":
            if not files:
                continue
            os.link(files[node[1] % len(files)], p)
        elif kind == "fifo":
            os.mkfifo(p)
        else:
            os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(node[1], node[2]))
        follow = kind != "symlink"
        for ns, key, value in xattrs:
            if kind in ("symlink", "fifo", "chardev") and ns == "user.":
                continue  # the kernel allows user.* on regular files and directories only
            os.setxattr(p, ns + key, value, follow_symlinks=follow)
        if follow:
            os.chmod(p, mode if kind != "dir" else mode | 0o700)
            if acl and kind in ("file", "sparse", "dir"):
                os.setxattr(p, "system.posix_acl_access", acl_access())
        os.utime(p, ns=(mtime, mtime), follow_symlinks=follow)
    for d in reversed(dirs[1:]):  # what was made inside changed their mtimes
        os.utime(d, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))


def trees() -> st.SearchStrategy[list[Any]]:
    return TREE
