"""Manifest fields for what is not plain content (xattrs, hard links, holes, devices): written and
read back the same, old manifests still read, and hostile values refused before a restore acts."""

from __future__ import annotations

import gzip
import io
import json
from typing import Any

import pytest

from backup_agent.storage.manifest import Entry, ManifestError, ManifestWriter, parse_entry, read

SHA = "ab" * 32


def roundtrip(entries: list[Entry]) -> list[Entry]:
    buf = io.BytesIO()
    w = ManifestWriter(buf, {"snapshot": "s"})
    for e in entries:
        w.add(e)
    w.close({})
    _, it, _ = read(io.BytesIO(buf.getvalue()), "m")
    return list(it)


def test_new_fields_round_trip() -> None:
    entries = [
        Entry(path="/a\udcff", type="file", size=10, sha256=SHA, object="packs/x", offset=3, hardlink="/a\udcff",
              xattrs={"user.k": b"\x00\xff", "system.posix_acl_access": b"\x02\x00\x00\x00"},
              extents=[(0, 4), (100, 6)], length=4096),
        Entry(path="/p", type="fifo", mode=0o640),
        Entry(path="/d", type="chardev", major=1, minor=3),
        Entry(path="/b", type="blockdev", major=259, minor=1 << 19),
        Entry(path="/dir", type="dir", xattrs={"trusted.x": b""}),
        Entry(path="/plain", type="file", size=1, sha256=SHA, object="packs/x", offset=0),
    ]
    assert roundtrip(entries) == entries
    assert entries[0].apparent_size == 4096 and entries[-1].apparent_size == 1


def test_version_1_manifests_still_read() -> None:
    lines = [{"format": "backup-agent-manifest", "version": 1},
             {"path": "/f", "type": "file", "size": 1, "sha256": SHA, "object": "packs/x", "offset": 0},
             {"end": True, "entries": 1}]
    raw = gzip.compress("\n".join(json.dumps(x) for x in lines).encode() + b"\n")
    _, it, _ = read(io.BytesIO(raw), "m")
    (e,) = list(it)
    assert (e.extents, e.xattrs, e.hardlink) == (None, None, None)


def file_entry(**extra: Any) -> dict[str, Any]:
    return {"path": "/f", "type": "file", "size": 10, "sha256": SHA, "object": "packs/x", "offset": 0, **extra}


@pytest.mark.parametrize(("obj", "message"), [
    (file_entry(extents=[[0, 5], [3, 5]], length=100), "sorted, apart"),
    (file_entry(extents=[[0, 10]], length=5), "do not fit"),
    (file_entry(extents=[[0, 4]], length=100), "do not fit"),
    (file_entry(extents=[[-1, 11]], length=100), "sorted, apart"),
    (file_entry(extents=[[0, 0], [0, 10]], length=100), "sorted, apart"),
    (file_entry(extents="0-10", length=100), "must be a list"),
    (file_entry(extents=[[0, 10]], length=-1), "length must be"),
    (file_entry(xattrs={"user.k": "not base64!"}), "not base64"),
    (file_entry(xattrs={"user.k": 5}), "malformed"),
    (file_entry(xattrs=["user.k"]), "must be an object"),
    (file_entry(hardlink="../../etc/passwd"), "not an absolute path"),
    (file_entry(hardlink="/a/../../b"), "not normalised"),
    ({"path": "/d", "type": "chardev", "major": -1, "minor": 0}, "major must be"),
    ({"path": "/s", "type": "socket"}, "unknown type"),
])
def test_hostile_values_are_refused(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_entry(obj, "m: entry 1")
