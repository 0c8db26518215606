"""Snapshot manifests: gzip'd JSON lines, streamed in and out so memory stays flat.

Line 1 is a header, then one line per entry in scan order, then a trailer with the entry count.
A manifest without its trailer (truncated) or with an entry that does not validate is refused:
restore never acts on a path it has not checked.

Version 2 added what a file system holds besides names and bytes; every field is optional, so a
version 1 manifest reads as before. Readers of version 1 refuse version 2 outright: they would
otherwise restore a sparse file as its data regions packed together, hard links as copies and
drop extended attributes, all without a word.
- `fifo`, `chardev`, `blockdev` entries (devices with `major`, `minor`);
- `xattrs` on any entry: {name: base64 value}, POSIX ACLs included (system.posix_acl_*);
- `hardlink` on a file: a key shared by every path of one inode (the first path backed up);
- sparse files: `size`/`sha256`/`object`/`offset` describe the stored bytes, which are only the
  data regions back to back; `extents` ([[offset, length], ...]) say where each region goes and
  `length` is the file's size, holes included.

Version 3 (issue #20) stores content encoded (storage/codec.py: zstd when it pays, AES-256-GCM
with a key) and big files in content-defined chunks. Version 1 and 2 entries still read:
- `stored` on a file: its bytes at `object`/`offset` are one encoded piece of that many bytes
  (absent: the raw bytes, `size` of them, as before);
- `chunks` instead of `object`/`offset`: [[object, offset, stored, size, sha256], ...], encoded
  pieces whose plaintexts, in order, are the file's `size` stored bytes.
The manifest itself is sealed as a whole when a key is set (jobs/base.py, spool_manifest).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

FORMAT = "backup-agent-manifest"
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
ENTRY_TYPES = ("file", "dir", "symlink", "fifo", "chardev", "blockdev")
DEVICE_TYPES = ("chardev", "blockdev")
_TYPES = {t: t for t in ENTRY_TYPES}
# Numbers a manifest may hold: what the kernel's calls take (a file before 1970 has a negative
# mtime; uid 2**32-1 means "leave unchanged" to chown). Larger values are refused while the
# manifest is read, before a restore writes anything, instead of failing in the middle of it.
INT64_MAX = 2**63 - 1
ID_MAX = 2**32 - 2


class ManifestError(ValueError):
    pass


# One chunk of a big file: (object, offset, stored, size, sha256 of its plaintext).
Chunk = tuple[str, int, int, int, str]


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
    xattrs: dict[str, bytes] | None = None
    hardlink: str | None = None
    extents: list[tuple[int, int]] | None = None  # sparse files only: where the stored bytes go
    length: int = 0  # sparse files only: the size with holes
    major: int = 0
    minor: int = 0
    stored: int | None = None  # encoded length at object/offset; None: raw bytes (versions 1, 2)
    chunks: list[Chunk] | None = None  # a big file in encoded chunks, instead of object/offset

    def ranges(self) -> list[tuple[str, int, int]]:
        """The stored byte ranges this file's content needs: (object, offset, length)."""
        if self.type != "file" or self.size == 0:
            return []
        if self.chunks is not None:
            return [(c[0], c[1], c[2]) for c in self.chunks]
        assert self.object is not None
        return [(self.object, self.offset, self.size if self.stored is None else self.stored)]

    def objects(self) -> list[str]:
        """The objects this file's content lives in."""
        if self.chunks is not None:
            return list(dict.fromkeys(c[0] for c in self.chunks))
        return [self.object] if self.type == "file" and self.object else []

    @property
    def apparent_size(self) -> int:
        """The file's size on disk as `ls -l` shows it (`size` is what is stored)."""
        return self.length if self.extents is not None else self.size

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "type": self.type, "mode": self.mode, "uid": self.uid,
                             "gid": self.gid, "mtime_ns": self.mtime_ns}
        if self.type == "file" and self.chunks is not None:
            d.update(size=self.size, sha256=self.sha256, chunks=[list(c) for c in self.chunks])
        elif self.type == "file":
            d.update(size=self.size, sha256=self.sha256, object=self.object, offset=self.offset)
            if self.stored is not None:
                d["stored"] = self.stored
        if self.type == "file":
            if self.hardlink is not None:
                d["hardlink"] = self.hardlink
            if self.extents is not None:
                d.update(extents=[list(x) for x in self.extents], length=self.length)
        elif self.type == "symlink":
            d["target"] = self.target
        elif self.type in DEVICE_TYPES:
            d.update(major=self.major, minor=self.minor)
        if self.xattrs:
            d["xattrs"] = {k: base64.b64encode(v).decode() for k, v in self.xattrs.items()}
        return d


# ensure_ascii keeps undecodable file names (surrogate escapes) representable.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


class ManifestWriter:
    """Lines are buffered and compressed in batches: per-line gzip writes cost more than the scan.
    The batches are compressed on a thread of their own (zlib lets go of the GIL), in order, while
    the scan goes on; at most WRITING of them wait."""

    WRITING = 4

    def __init__(self, fileobj: IO[bytes], header: dict[str, Any]) -> None:
        # Level 1: manifests are written on every run and read rarely; speed beats a few % size.
        self._gz = gzip.GzipFile(fileobj=fileobj, mode="wb", compresslevel=1)
        self._zip: ThreadPoolExecutor | None = None
        self._writing: deque[Future[int]] = deque()
        self._pending: list[str] = []
        self.count = 0
        self.objects: set[str] = set()  # every object the manifest's files live in
        self._line({"format": FORMAT, "version": VERSION, **header})

    def _line(self, obj: dict[str, Any]) -> None:
        self._pending.append(_encode(obj))
        if len(self._pending) >= 1000:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        data = ("\n".join(self._pending) + "\n").encode()
        self._pending = []
        if self._zip is None:
            self._zip = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifest")
        self._writing.append(self._zip.submit(self._gz.write, data))
        while self._writing and (len(self._writing) > self.WRITING or self._writing[0].done()):
            self._writing.popleft().result()  # raises what the write raised (a full disk)

    def add(self, entry: Entry) -> None:
        # Hand-assembled around json-encoded strings: the same bytes json.dumps would give for
        # to_json(), at a fraction of the cost on the per-file hot path.
        if entry.type == "file" and entry.xattrs is None and entry.hardlink is None and entry.extents is None \
                and entry.chunks is None:
            if entry.object:
                self.objects.add(entry.object)
            stored = "" if entry.stored is None else f',"stored":{entry.stored}'
            line = (f'{{"path":{_encode(entry.path)},"type":"file","mode":{entry.mode},"uid":{entry.uid},'
                    f'"gid":{entry.gid},"mtime_ns":{entry.mtime_ns},"size":{entry.size},'
                    f'"sha256":{_encode(entry.sha256)},"object":{_encode(entry.object)},"offset":{entry.offset}'
                    f'{stored}}}')
            self._pending.append(line)
            if len(self._pending) >= 1000:
                self._flush()
        else:
            self.objects.update(entry.objects())
            self._line(entry.to_json())
        self.count += 1

    def close(self, summary: dict[str, Any]) -> None:
        self._line({"end": True, "entries": self.count, "summary": summary})
        self._flush()
        try:
            while self._writing:
                self._writing.popleft().result()
        finally:
            if self._zip is not None:
                self._zip.shutdown()
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
    if head.get("version") not in READABLE_VERSIONS:
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

    def num(key: str, low: int = 0, high: int = INT64_MAX) -> int:
        v = obj.get(key, 0)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 <= low:
            raise ManifestError(f"{where}: {key} must be a non-negative integer")
        if not low <= v <= high:
            raise ManifestError(f"{where}: {key} {v} is out of range ({low}..{high})")
        return v

    # One string object per type and per object key: a restore holds every selected entry, and
    # thousands of entries share each pack's key.
    entry = Entry(path=str(path), type=_TYPES[etype], mode=num("mode", high=0o7777), uid=num("uid", high=ID_MAX),
                  gid=num("gid", high=ID_MAX), mtime_ns=num("mtime_ns", low=-INT64_MAX - 1))
    if etype == "file":
        entry.size, entry.offset = num("size"), num("offset")
        if entry.size + entry.offset > INT64_MAX:
            raise ManifestError(f"{where}: offset + size is out of range")
        sha = obj.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64:
            raise ManifestError(f"{where}: sha256 missing or malformed")
        entry.sha256 = sha
        if "chunks" in obj:
            entry.chunks = _chunks(obj["chunks"], entry.size, where)
        else:
            entry.object = _object_key(obj.get("object"), where)
            if "stored" in obj:
                entry.stored = num("stored")
                if entry.stored + entry.offset > INT64_MAX or (entry.size > 0 and entry.stored == 0):
                    raise ManifestError(f"{where}: stored is out of range")
        if "hardlink" in obj:
            safe_relative(obj["hardlink"], f"{where}: hardlink")
            entry.hardlink = obj["hardlink"]
        if "extents" in obj:
            entry.length = num("length")
            entry.extents = _extents(obj["extents"], entry.size, entry.length, where)
    elif etype == "symlink":
        target = obj.get("target")
        if not isinstance(target, str) or "\x00" in target:
            raise ManifestError(f"{where}: symlink target missing")
        entry.target = target
    elif etype in DEVICE_TYPES:
        entry.major, entry.minor = num("major"), num("minor")
    if "xattrs" in obj:
        entry.xattrs = _xattrs(obj["xattrs"], where)
    return entry


def _object_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or ".." in key.split("/") or key.startswith("/"):
        raise ManifestError(f"{where}: object key missing or malformed")
    return sys.intern(key)


def _chunks(raw: Any, size: int, where: str) -> list[Chunk]:
    """Each chunk well-formed, and their sizes exactly the file's: a restore writes them in order."""
    if not isinstance(raw, list) or not raw:
        raise ManifestError(f"{where}: chunks must be a non-empty list")
    out: list[Chunk] = []
    total = 0
    for c in raw:
        if (not isinstance(c, list) or len(c) != 5
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in c[1:4])
                or c[1] < 0 or c[2] <= 0 or c[3] <= 0 or c[1] + c[2] > INT64_MAX
                or not isinstance(c[4], str) or len(c[4]) != 64):
            raise ManifestError(f"{where}: chunks must be [object, offset, stored, size, sha256] lists")
        out.append((_object_key(c[0], where), c[1], c[2], c[3], c[4]))
        total += c[3]
    if total != size:
        raise ManifestError(f"{where}: chunks hold {total} bytes, size says {size}")
    return out


def _extents(raw: Any, stored: int, length: int, where: str) -> list[tuple[int, int]]:
    """Sorted, apart, inside the file, and together exactly the stored bytes: a restore writes
    each region where it says, so a bad list must not reach it."""
    if not isinstance(raw, list):
        raise ManifestError(f"{where}: extents must be a list")
    out: list[tuple[int, int]] = []
    end = total = 0
    for x in raw:
        if (not isinstance(x, list) or len(x) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                              for v in x) or x[0] < end or x[1] <= 0):
            raise ManifestError(f"{where}: extents must be sorted, apart, [offset, length] pairs")
        out.append((x[0], x[1]))
        end = x[0] + x[1]
        total += x[1]
    if end > length or total != stored:
        raise ManifestError(f"{where}: extents do not fit the file's length and stored size")
    return out


def _xattrs(raw: Any, where: str) -> dict[str, bytes]:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: xattrs must be an object")
    out: dict[str, bytes] = {}
    for k, v in raw.items():
        if not k or "\x00" in k or not isinstance(v, str):
            raise ManifestError(f"{where}: xattr {k!r} is malformed")
        try:
            out[k] = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise ManifestError(f"{where}: xattr {k!r} is not base64") from None
    return out


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
