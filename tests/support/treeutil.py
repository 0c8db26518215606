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


# --- exact comparison: everything a restore must give back ---------------------------------------

ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF


def posix_acl(entries: list[tuple[int, int, int | None]]) -> bytes:
    """The kernel's system.posix_acl_* value for (tag, perms, id) entries, so tests set ACLs
    without setfacl: version 2, then entries sorted by tag and id."""
    import struct

    body = b"".join(struct.pack("<HHI", tag, perm, _UNDEFINED_ID if qid is None else qid)
                    for tag, perm, qid in sorted(entries, key=lambda x: (x[0], x[2] or 0)))
    return struct.pack("<I", 2) + body


def inventory(root: Path | str | bytes) -> dict[bytes, dict[str, Any]]:
    """Relative path (bytes: any name the kernel allows) → type, mode, owner, mtime, xattrs
    (POSIX ACLs among them), content digest, device numbers, link target, hard-link group, and
    for a sparse file its allocated size. Compare two with `differences`."""
    base = os.fsencode(root)
    out: dict[bytes, dict[str, Any]] = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, base)
            st = os.lstat(p)
            fmt = stat.S_IFMT(st.st_mode)
            rec: dict[str, Any] = {"type": stat.filemode(st.st_mode)[0], "owner": (st.st_uid, st.st_gid),
                                   "mtime_ns": st.st_mtime_ns, "xattrs": _xattrs(p)}
            if fmt != stat.S_IFLNK:
                rec["mode"] = stat.S_IMODE(st.st_mode)
            if fmt == stat.S_IFLNK:
                rec["target"] = os.readlink(p)
            elif fmt == stat.S_IFREG:
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                rec["size"], rec["sha256"] = st.st_size, h.hexdigest()
                if st.st_blocks * 512 < st.st_size:
                    rec["allocated"] = st.st_blocks * 512  # compared as "no more than the original"
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                rec["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            out[rel] = rec
    for group in inodes.values():
        for rel in group:
            out[rel]["links"] = tuple(sorted(group))
    return out


def _xattrs(p: bytes) -> dict[str, bytes]:
    try:
        return {n: os.getxattr(p, n, follow_symlinks=False) for n in sorted(os.listxattr(p, follow_symlinks=False))}
    except OSError:
        return {}


def differences(want: dict[bytes, dict[str, Any]], got: dict[bytes, dict[str, Any]]) -> list[str]:
    """What a restore got wrong, one line each (empty: exact)."""
    out = [f"missing {k!r}" for k in sorted(want.keys() - got.keys())]
    out += [f"unexpected {k!r}" for k in sorted(got.keys() - want.keys())]
    for k in sorted(want.keys() & got.keys()):
        w, g = want[k], got[k]
        for field in sorted(w.keys() | g.keys()):
            if field == "allocated":
                # Holes kept: no more blocks than the original (file systems may use fewer).
                if g.get(field, g.get("size", 0)) > w.get(field, w.get("size", 0)):
                    out.append(f"{k!r}: allocated {g.get(field)} bytes, the original {w.get(field)}")
            elif w.get(field) != g.get(field):
                out.append(f"{k!r}: {field} {g.get(field)!r}, want {w.get(field)!r}")
    return out
