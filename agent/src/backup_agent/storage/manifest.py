"""Snapshot manifests: gzip'd JSON lines, streamed in and out so memory stays flat.

Line 1 is a header, then one line per entry in scan order, then a trailer with the entry count.
A manifest without its trailer (truncated) or with an entry that does not validate is refused:
restore never acts on a path it has not checked.
"""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

FORMAT = "backup-agent-manifest"
VERSION = 1
ENTRY_TYPES = ("file", "dir", "symlink")
_TYPES = {t: t for t in ENTRY_TYPES}


class ManifestError(ValueError):
    pass


@dataclass(slots=True)
class Entry:
    path: str
    type: str
    size: int = 0
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    sha256: str | None = None
    object: str | None = None
    offset: int = 0
    target: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "type": self.type, "mode": self.mode, "uid": self.uid,
                             "gid": self.gid, "mtime_ns": self.mtime_ns}
        if self.type == "file":
            d.update(size=self.size, sha256=self.sha256, object=self.object, offset=self.offset)
        elif self.type == "symlink":
            d["target"] = self.target
        return d


# ensure_ascii keeps undecodable file names (surrogate escapes) representable.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


class ManifestWriter:
    """Lines are buffered and compressed in batches: per-line gzip writes cost more than the scan."""

    def __init__(self, fileobj: IO[bytes], header: dict[str, Any]) -> None:
        # Level 1: manifests are written on every run and read rarely; speed beats a few % size.
        self._gz = gzip.GzipFile(fileobj=fileobj, mode="wb", compresslevel=1)
        self._pending: list[str] = []
        self.count = 0
        self.objects: set[str] = set()  # every object the manifest's files live in
        self._line({"format": FORMAT, "version": VERSION, **header})

    def _line(self, obj: dict[str, Any]) -> None:
        self._pending.append(_encode(obj))
        if len(self._pending) >= 1000:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._gz.write(("\n".join(self._pending) + "\n").encode())
            self._pending = []

    def add(self, entry: Entry) -> None:
        # Hand-assembled around json-encoded strings: the same bytes json.dumps would give for
        # to_json(), at a fraction of the cost on the per-file hot path.
        if entry.type == "file":
            if entry.object:
                self.objects.add(entry.object)
            line = (f'{{"path":{_encode(entry.path)},"type":"file","mode":{entry.mode},"uid":{entry.uid},'
                    f'"gid":{entry.gid},"mtime_ns":{entry.mtime_ns},"size":{entry.size},'
                    f'"sha256":{_encode(entry.sha256)},"object":{_encode(entry.object)},"offset":{entry.offset}}}')
            self._pending.append(line)
            if len(self._pending) >= 1000:
                self._flush()
        else:
            self._line(entry.to_json())
        self.count += 1

    def close(self, summary: dict[str, Any]) -> None:
        self._line({"end": True, "entries": self.count, "summary": summary})
        self._flush()
        self._gz.close()


def read_header(fileobj: IO[bytes], name: str) -> dict[str, Any]:
    with gzip.GzipFile(fileobj=fileobj, mode="rb") as gz:
        return _header(gz.readline(), name)


def _header(line: bytes, name: str) -> dict[str, Any]:
    try:
        head = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ManifestError(f"{name}: header is not JSON") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise ManifestError(f"{name}: not a backup-agent manifest")
    if head.get("version") != VERSION:
        raise ManifestError(f"{name}: manifest version {head.get('version')!r} is not supported")
    return head


def read(fileobj: IO[bytes], name: str) -> tuple[dict[str, Any], Iterator[Entry], dict[str, Any]]:
    """Return (header, entries, trailer). `trailer` is filled once `entries` is exhausted."""
    gz = gzip.GzipFile(fileobj=fileobj, mode="rb")
    try:
        header = _header(gz.readline(), name)
    except (OSError, EOFError) as exc:
        raise ManifestError(f"{name}: unreadable ({exc})") from None
    trailer: dict[str, Any] = {}

    def entries() -> Iterator[Entry]:
        count = 0
        try:
            for raw in gz:
                try:
                    obj = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    raise ManifestError(f"{name}: entry {count + 1} is not JSON") from None
                if isinstance(obj, dict) and obj.get("end") is True:
                    if obj.get("entries") != count:
                        raise ManifestError(f"{name}: trailer says {obj.get('entries')} entries, found {count}")
                    trailer.update(obj)
                    return
                yield parse_entry(obj, f"{name}: entry {count + 1}")
                count += 1
        except (OSError, EOFError) as exc:
            raise ManifestError(f"{name}: truncated or corrupt ({exc})") from None
        finally:
            gz.close()
        raise ManifestError(f"{name}: truncated (no trailer after {count} entries)")

    return header, entries(), trailer


def safe_relative(path: Any, where: str) -> str:
    """Check an absolute manifest path and return it relative ('etc/hosts'); refuse escapes."""
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        raise ManifestError(f"{where}: path {path!r} is not an absolute path")
    parts = PurePosixPath(path).parts[1:]
    if any(p in ("..", ".") for p in parts) or (path != "/" + "/".join(parts) and path != "/"):
        raise ManifestError(f"{where}: path {path!r} is not normalised (would escape the restore target)")
    return "/".join(parts)


def parse_entry(obj: Any, where: str) -> Entry:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: not an object")
    path = obj.get("path")
    safe_relative(path, where)
    etype = obj.get("type")
    if etype not in ENTRY_TYPES:
        raise ManifestError(f"{where}: unknown type {etype!r}")

    def num(key: str, default: int = 0) -> int:
        v = obj.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ManifestError(f"{where}: {key} must be a non-negative integer")
        return v

    # One string object per type and per object key: a restore holds every selected entry, and
    # thousands of entries share each pack's key.
    entry = Entry(path=str(path), type=_TYPES[etype], mode=num("mode") & 0o7777, uid=num("uid"), gid=num("gid"),
                  mtime_ns=num("mtime_ns"))
    if etype == "file":
        entry.size, entry.offset = num("size"), num("offset")
        sha, objkey = obj.get("sha256"), obj.get("object")
        if not isinstance(sha, str) or len(sha) != 64:
            raise ManifestError(f"{where}: sha256 missing or malformed")
        if not isinstance(objkey, str) or ".." in objkey.split("/") or objkey.startswith("/"):
            raise ManifestError(f"{where}: object key missing or malformed")
        entry.sha256, entry.object = sha, sys.intern(objkey)
    elif etype == "symlink":
        target = obj.get("target")
        if not isinstance(target, str) or "\x00" in target:
            raise ManifestError(f"{where}: symlink target missing")
        entry.target = target
    return entry



def read_matching(fileobj: IO[bytes], name: str, needles: list[bytes] | None,
                  ignore_case: bool = False) -> Iterator[Entry]:
    """The entries whose line contains one of `needles` (as written: JSON, non-ASCII escaped;
    ASCII-lower-cased with `ignore_case`), all of them when `needles` is None; the header and
    the trailer's count are still checked.

    For a search over many manifests: decompressed blocks of a MiB are searched with bytes.find
    and only the lines around a hit are decoded (and so validated), instead of a Python loop
    over every line: what is left is zlib's inflate, which runs outside the GIL."""
    if needles is None:
        _, entries, _ = read(fileobj, name)
        yield from entries
        return
    with gzip.GzipFile(fileobj=fileobj, mode="rb") as gz:
        try:
            head = gz.readline()
            _header(head, name)
            count = 0  # entry lines before the current block
            carry = b""
            while True:
                chunk = gz.read(1 << 20)
                block = carry + chunk
                cut = block.rfind(b"\n") + 1
                block, carry = block[:cut], block[cut:]
                if not chunk and carry:
                    raise ManifestError(f"{name}: truncated (a line without its end after {count} entries)")
                lines = block.count(b"\n")
                if block.count(b'\n{"path":') + block.startswith(b'{"path":') != lines:
                    # Not only entry lines: the trailer (or a line this reader does not know).
                    for line in block.splitlines():
                        if line.startswith(b'{"path":') and not _hit(line, needles, ignore_case):
                            count += 1
                            continue
                        obj = _json_line(line, name, count + 1)
                        if isinstance(obj, dict) and obj.get("end") is True:
                            if obj.get("entries") != count:
                                raise ManifestError(f"{name}: trailer says {obj.get('entries')} entries, "
                                                    f"found {count}")
                            return
                        count += 1
                        if _hit(line, needles, ignore_case):
                            yield parse_entry(obj, f"{name}: entry {count}")
                else:
                    for start, end in _hit_lines(block, needles, ignore_case):
                        at = count + block.count(b"\n", 0, start) + 1
                        yield parse_entry(_json_line(block[start:end], name, at), f"{name}: entry {at}")
                    count += lines
                if not chunk:
                    break
        except (OSError, EOFError) as exc:
            raise ManifestError(f"{name}: truncated or corrupt ({exc})") from None
    raise ManifestError(f"{name}: truncated (no trailer after {count} entries)")


def _json_line(line: bytes, name: str, number: int) -> Any:
    try:
        return json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ManifestError(f"{name}: entry {number} is not JSON") from None


def _hit(line: bytes, needles: list[bytes], ignore_case: bool) -> bool:
    hay = line.lower() if ignore_case else line
    return any(n in hay for n in needles)


def _hit_lines(block: bytes, needles: list[bytes], ignore_case: bool) -> list[tuple[int, int]]:
    """(start, end) of every line of `block` holding a needle, in order."""
    hay = block.lower() if ignore_case else block
    spans: set[tuple[int, int]] = set()
    for n in needles:
        i = hay.find(n)
        while i >= 0:
            start = hay.rfind(b"\n", 0, i) + 1
            end = hay.find(b"\n", i)
            spans.add((start, end))
            i = hay.find(n, end)
    return sorted(spans)
