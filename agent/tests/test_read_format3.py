"""Reading manifest format 3 (issue #20): small files as encoded pieces in packs, big files as
encoded chunks, sparse ones too. Snapshots are built by hand here (packs sealed with the job's
own Encoding, manifests through the job's upload_manifest), so the reader is tested apart from
the writer: a restore is byte-exact, `check --read-data` and `dump` find a damaged chunk and name
the file, a chunk copied over another is refused, a wrong key stops with exit 2 before a byte is
written, and a Glacier restore asks for every pack a chunked file lives in."""

from __future__ import annotations

import hashlib
import random
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backup_agent import config
from backup_agent.errors import ConfigError, IntegrityError, NotReady
from backup_agent.jobs import browse
from backup_agent.jobs.files import FilesJob
from backup_agent.storage import layout, reader
from backup_agent.storage.encoding import Encoding, WrongKey, for_storage
from backup_agent.storage.manifest import Chunk, Entry, ManifestWriter
from backup_agent.storage.memory import MemoryStore

KEY = "correct horse battery staple, 32+ characters"
OTHER_KEY = "another secret of at least thirty-two chars"
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def job_for(tmp_path: Path, store: MemoryStore, key: str | None = KEY, **storage: Any) -> FilesJob:
    st: dict[str, Any] = {"bucket": "mem", "prefix": "n", **storage}
    if key is not None:
        st["encryption_key"] = key
    cfg = config.from_dict({"state_dir": str(tmp_path / "state"), "storage": st,
                            "jobs": {"data": {"type": "files", "paths": ["/src"]}}})
    return FilesJob(cfg, cfg.job("data"), store=store)


class Builder:
    """A snapshot made by hand: packs of encoded pieces and a manifest listing them."""

    def __init__(self, job: FilesJob, enc: Encoding | None = None) -> None:
        self.job, self.store = job, job.store
        self.enc = enc or job.encoding
        self.entries: list[Entry] = [Entry(path="/src", type="dir", mode=0o755, mtime_ns=1)]
        self.packs: dict[str, bytearray] = {}
        # where each chunk went: (pack, offset, stored), by file path, in file order
        self.placed: dict[str, list[Chunk]] = {}

    def pack(self) -> str:
        key = layout.new_pack_key()
        self.packs[key] = bytearray()
        return key

    def _put(self, pack: str, data: bytes) -> tuple[int, int]:
        blob = self.enc.seal_data(data, sha(data))
        offset = len(self.packs[pack])
        self.packs[pack] += blob
        return offset, len(blob)

    def raw(self, path: str, data: bytes, pack: str) -> None:
        """A version 1/2 entry: the plain bytes at object/offset."""
        offset = len(self.packs[pack])
        self.packs[pack] += data
        self.entries.append(Entry(path=path, type="file", mode=0o640, mtime_ns=2_000_000_000, size=len(data),
                                  sha256=sha(data), object=pack, offset=offset))

    def chunk(self, data: bytes, pack: str) -> Chunk:
        """One chunk of a big file, appended to `pack`."""
        offset, stored = self._put(pack, data)
        return (pack, offset, stored, len(data), sha(data))

    def small(self, path: str, data: bytes, pack: str) -> None:
        offset, stored = self._put(pack, data)
        self.entries.append(Entry(path=path, type="file", mode=0o640, mtime_ns=2_000_000_000, size=len(data),
                                  sha256=sha(data), object=pack, offset=offset, stored=stored))

    def big(self, path: str, data: bytes, packs: list[str], chunk: int = 64 << 10,
            extents: list[tuple[int, int]] | None = None, length: int = 0, run: int = 3) -> None:
        """`data` cut into chunks of `chunk` bytes, the packs taking turns in runs of `run` chunks."""
        chunks: list[Chunk] = []
        for n, i in enumerate(range(0, len(data), chunk)):
            part = data[i:i + chunk]
            pack = packs[(n // run) % len(packs)]
            offset, stored = self._put(pack, part)
            chunks.append((pack, offset, stored, len(part), sha(part)))
        self.placed[path] = chunks
        self.entries.append(Entry(path=path, type="file", mode=0o600, mtime_ns=3_000_000_000, size=len(data),
                                  sha256=sha(data), chunks=chunks, extents=extents, length=length))

    def commit(self, when: datetime = T0, storage_class: str | None = None) -> str:
        for key, data in self.packs.items():
            self.store.put(self.job.root + key, bytes(data), sha256=sha(bytes(data)), storage_class=storage_class)
        sid = layout.new_snapshot_id(when)
        with tempfile.TemporaryFile() as spool:
            writer = ManifestWriter(spool, {"snapshot": sid, "job": "data", "type": "files", "paths": ["/src"],
                                            "storage_class": storage_class or "STANDARD"})
            for e in self.entries:
                writer.add(e)
            writer.close({})
            self.job.upload_manifest(sid, spool)
        return sid


def incompressible(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def text(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [b"backup", b"agent", b"chunk", b"pack", b"restore", b"glacier", b"\n"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def restored(target: Path, path: str) -> bytes:
    return (target / path.lstrip("/")).read_bytes()


@pytest.fixture(params=["sealed", "compressed only"])
def key(request: pytest.FixtureRequest) -> str | None:
    return KEY if request.param == "sealed" else None


def test_restore_check_and_dump_of_encoded_files_are_byte_exact(tmp_path: Path, key: str | None) -> None:
    store = MemoryStore()
    job = job_for(tmp_path, store, key)
    b = Builder(job)
    p1, p2, p3 = b.pack(), b.pack(), b.pack()
    smalls = {"/src/notes.txt": text(20_000, 1), "/src/random.bin": incompressible(5_000, 2),
              "/src/tiny": b"x"}
    for path, data in smalls.items():
        b.small(path, data, p1)
    big = text(3 << 20, 3) + incompressible(1 << 20, 4)
    b.big("/src/big.log", big, [p2, p3])
    b.big("/src/copy.log", big, [p2, p3])  # same content stored again: one more chunked piece
    # Sparse: 300 KiB of data regions in a 3 MiB file, holes between and after them.
    regions = incompressible(300 << 10, 5)
    b.big("/src/disk.img", regions, [p3], extents=[(0, 100 << 10), (1 << 20, 200 << 10)], length=3 << 20)
    b.commit()

    target = tmp_path / "target"
    out = job.restore(snapshot=None, at=None, target=str(target), paths=[])
    assert out["errors"] == [] and out["files"] == 6
    for path, data in smalls.items():
        assert restored(target, path) == data
    assert restored(target, "/src/big.log") == big and restored(target, "/src/copy.log") == big
    img = target / "src/disk.img"
    expect = bytearray(3 << 20)
    expect[0:100 << 10] = regions[:100 << 10]
    expect[1 << 20:(1 << 20) + (200 << 10)] = regions[100 << 10:]
    assert img.read_bytes() == bytes(expect)
    assert img.stat().st_blocks * 512 < 1 << 20  # the holes stayed holes

    assert job.check(read_data=True)["status"] == "ok"
    with browse.dump(job, "/src/big.log", None, None) as (_, fh):
        assert fh.read() == big
    with browse.dump(job, "/src/disk.img", None, None) as (_, fh):
        assert fh.read() == bytes(expect)
    with browse.dump(job, "/src/notes.txt", None, None) as (_, fh):
        assert fh.read() == smalls["/src/notes.txt"]


def test_a_file_alternating_between_packs_is_read_with_one_get_per_pack(tmp_path: Path) -> None:
    # A file changed in place over runs: its chunks alternate between the packs of each run.
    store = MemoryStore()
    job = job_for(tmp_path, store)
    b = Builder(job)
    p1, p2, p3 = b.pack(), b.pack(), b.pack()
    b.small("/src/between", b"another file's piece between the chunks\n", p1)
    big = incompressible(40 * (64 << 10), 6)  # 40 chunks, one at a time from each of 3 packs
    b.big("/src/big", big, [p1, p2, p3], run=1)
    b.commit()
    store.calls.clear()
    out = job.restore(snapshot=None, at=None, target=str(tmp_path / "t"), paths=[])
    assert out["errors"] == []
    assert restored(tmp_path / "t", "/src/big") == big
    gets = [k for op, k in store.calls if op == "get" and "/packs/" in k]
    # one GET for the small file, one per pack for the big file (it was one per chunk: 40)
    assert len(gets) == 4


def test_a_file_over_more_packs_than_are_kept_open_restores_exactly(tmp_path: Path) -> None:
    store = MemoryStore()
    job = job_for(tmp_path, store)
    b = Builder(job)
    packs = [b.pack() for _ in range(reader.OPEN_SPANS + 3)]
    big = text(60 * (16 << 10), 15)
    b.big("/src/big", big, packs, chunk=16 << 10, run=1)
    b.commit()
    out = job.restore(snapshot=None, at=None, target=str(tmp_path / "t"), paths=[])
    assert out["errors"] == [] and restored(tmp_path / "t", "/src/big") == big
    assert job.check(read_data=True)["status"] == "ok"


def test_repeated_chunks_and_far_apart_ones_restore_exactly(tmp_path: Path, key: str | None) -> None:
    # Repeated content (the same chunk listed again, behind the stream's position) and chunks
    # further apart than a span reads through.
    store = MemoryStore()
    job = job_for(tmp_path, store, key)
    b = Builder(job)
    p1, p2 = b.pack(), b.pack()
    a, c, d = incompressible(64 << 10, 16), text(64 << 10, 17), incompressible(30 << 10, 18)
    ca, cc = b.chunk(a, p1), b.chunk(c, p2)
    b.packs[p1] += incompressible(reader.SPAN_GAP + 1, 19)  # other files' bytes
    cd = b.chunk(d, p1)
    order = [ca, cc, ca, ca, cd, ca, cc, cd]
    data = {ca: a, cc: c, cd: d}
    content = b"".join(data[x] for x in order)
    b.entries.append(Entry(path="/src/rep", type="file", mode=0o600, mtime_ns=3_000_000_000, size=len(content),
                           sha256=sha(content), chunks=order))
    b.commit()
    store.calls.clear()
    out = job.restore(snapshot=None, at=None, target=str(tmp_path / "t"), paths=[])
    assert out["errors"] == [] and restored(tmp_path / "t", "/src/rep") == content
    # repeats come from memory: p1 twice (the gap), p2 once
    assert len([k for op, k in store.calls if op == "get" and "/packs/" in k]) == 3
    with browse.dump(job, "/src/rep", None, None) as (_, fh):
        assert fh.read() == content


def test_a_damaged_chunk_in_the_middle_of_a_pack_fails_the_file_loudly(tmp_path: Path, key: str | None) -> None:
    store = MemoryStore()
    job = job_for(tmp_path, store, key, compression_level=0)
    b = Builder(job)
    p1, p2 = b.pack(), b.pack()
    big = incompressible(20 * (64 << 10), 20)
    b.big("/src/big", big, [p1, p2], run=1)
    b.small("/src/after", b"read after the damaged file\n", p2)
    b.commit()
    pack, offset, stored, _, _ = b.placed["/src/big"][10]  # p1, between chunks read from it
    assert pack == p1
    flip(store, job.root + p1, offset + stored // 2)
    target = tmp_path / "target"
    with pytest.raises(IntegrityError, match="/src/big") as err:
        job.restore(snapshot=None, at=None, target=str(target), paths=[])
    assert "/src/after" not in str(err.value)
    assert not (target / "src/big").exists()
    assert restored(target, "/src/after") == b"read after the damaged file\n"
    with pytest.raises(IntegrityError) as checked:
        job.check(read_data=True)
    assert checked.value.details["damaged_objects"] == [p1]


def flip(store: MemoryStore, key: str, at: int) -> None:
    data = bytearray(store.objects[key].data)
    data[at] ^= 0x01
    store.objects[key].data = bytes(data)


def test_check_read_data_names_the_file_of_a_flipped_byte_in_a_chunk(tmp_path: Path, key: str | None) -> None:
    store = MemoryStore()
    job = job_for(tmp_path, store, key, compression_level=0)
    b = Builder(job)
    p1, p2 = b.pack(), b.pack()
    b.small("/src/fine", b"fine\n" * 100, p1)
    big = incompressible(10 * (64 << 10), 7)
    b.big("/src/big", big, [p1, p2])
    b.commit()
    pack, offset, stored, _, _ = b.placed["/src/big"][4]  # in p2
    assert pack == p2
    flip(store, job.root + p2, offset + stored // 2)

    assert job.check(read_data=False)["status"] == "ok"  # the listing cannot see it
    with pytest.raises(IntegrityError) as err:
        job.check(read_data=True)
    assert err.value.exit_code == 1
    assert "/src/big" in str(err.value) and "/src/fine" not in str(err.value)
    # Only the pack holding the damaged chunk: the next run stores what it held again.
    assert err.value.details["damaged_objects"] == [p2]

    target = tmp_path / "target"
    with pytest.raises(IntegrityError, match="/src/big"):
        job.restore(snapshot=None, at=None, target=str(target), paths=[])
    assert not (target / "src/big").exists()  # never a file with wrong content under its name
    with pytest.raises(IntegrityError, match="/src/big"), browse.dump(job, "/src/big", None, None):
        pass


def test_a_chunk_copied_over_another_is_refused(tmp_path: Path, key: str | None) -> None:
    store = MemoryStore()
    job = job_for(tmp_path, store, key)
    b = Builder(job)
    p1 = b.pack()
    big = incompressible(6 * (64 << 10), 8)
    b.big("/src/big", big, [p1])
    b.commit()
    chunks = b.placed["/src/big"]
    (_, off_a, len_a, _, _), (_, off_b, len_b, _, _) = chunks[1], chunks[3]
    assert len_a == len_b
    data = bytearray(store.objects[job.root + p1].data)
    data[off_b:off_b + len_b] = data[off_a:off_a + len_a]  # well-formed, just not this chunk
    store.objects[job.root + p1].data = bytes(data)
    target = tmp_path / "target"
    with pytest.raises(IntegrityError, match="/src/big"):
        job.restore(snapshot=None, at=None, target=str(target), paths=[])
    assert not (target / "src/big").exists()
    with pytest.raises(IntegrityError) as err:
        job.check(read_data=True)
    assert err.value.details["damaged_objects"] == [p1]


def test_a_wrong_key_stops_with_exit_2_and_one_line_before_anything_is_written(tmp_path: Path) -> None:
    store = MemoryStore()
    b = Builder(job_for(tmp_path, store, KEY))
    p1 = b.pack()
    b.small("/src/a", b"secret\n", p1)
    b.big("/src/big", incompressible(200_000, 9), [p1])
    b.commit()
    wrong = job_for(tmp_path, store, OTHER_KEY)
    target = tmp_path / "target"
    for call in (lambda: wrong.restore(snapshot=None, at=None, target=str(target), paths=[]),
                 lambda: wrong.check(read_data=True)):
        with pytest.raises(ConfigError) as err:
            call()
        assert err.value.exit_code == 2
        assert "storage.encryption_key" in str(err.value) and "\n" not in str(err.value)
    assert not target.exists() or not any(target.iterdir())


def test_data_sealed_with_another_key_stops_the_restore_with_exit_2(tmp_path: Path) -> None:
    """A manifest this node opens whose pieces it cannot (a key rotated away too early): exit 2,
    naming the setting, and no file written."""
    store = MemoryStore()
    job = job_for(tmp_path, store, KEY)
    other = for_storage(job_for(tmp_path, store, OTHER_KEY).cfg.storage)
    b = Builder(job, enc=other)
    p1 = b.pack()
    b.small("/src/a", b"secret\n", p1)
    b.big("/src/big", incompressible(200_000, 10), [p1])
    b.commit()
    target = tmp_path / "target"
    with pytest.raises(WrongKey) as err:
        job.restore(snapshot=None, at=None, target=str(target), paths=[])
    assert err.value.exit_code == 2 and "storage.encryption_key" in str(err.value)
    assert "\n" not in str(err.value)
    assert not [p for p in target.rglob("*") if p.is_file()]
    with pytest.raises(WrongKey):  # not "damaged": nothing for the next run to heal
        job.check(read_data=True)
    with pytest.raises(WrongKey), browse.dump(job, "/src/big", None, None):
        pass


def test_chunks_whose_sizes_do_not_add_up_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = MemoryStore()
    job = job_for(tmp_path, store)
    b = Builder(job)
    p1 = b.pack()
    b.small("/src/a", b"first file\n", p1)
    big = incompressible(4 * (64 << 10), 11)
    b.big("/src/big", big, [p1])
    b.entries[-1].size += 1  # the manifest claims a byte the chunks do not hold
    b.commit()
    target = tmp_path / "target"
    with pytest.raises(IntegrityError, match="chunks hold"):
        job.restore(snapshot=None, at=None, target=str(target), paths=[])
    assert not target.exists() or not any(target.iterdir())


def test_a_chunk_larger_than_any_the_agent_writes_is_refused_unread(tmp_path: Path) -> None:
    store = MemoryStore()
    job = job_for(tmp_path, store)
    b = Builder(job)
    b.big("/src/huge", incompressible(4 << 20, 14), [b.pack()], chunk=2 << 20)  # the chunker cuts <= 256 KiB
    b.commit()
    with pytest.raises(IntegrityError, match="larger than any this agent writes"):
        job.restore(snapshot=None, at=None, target=str(tmp_path / "t"), paths=[])
    assert not (tmp_path / "t/src/huge").exists()


def test_glacier_restore_asks_for_every_pack_of_a_chunked_file_and_waits_for_all(tmp_path: Path) -> None:
    store = MemoryStore()
    job = job_for(tmp_path, store)
    b = Builder(job)
    p1, p2, p3 = b.pack(), b.pack(), b.pack()
    b.small("/src/small", b"in the first pack\n", p1)
    big = incompressible(12 * (64 << 10), 12)
    b.big("/src/big", big, [p2, p3])
    b.commit(storage_class="GLACIER")
    keys = [job.root + p for p in (p1, p2, p3)]

    described = job.describe_snapshots()[0].extra
    assert described["instant_restore"] is False and described["archived_objects"] == 3

    target = tmp_path / "target"
    with pytest.raises(NotReady):
        job.restore(snapshot=None, at=None, target=str(target), paths=[])
    assert sorted(k for op, k in store.calls if op == "request_restore") == sorted(keys)

    store.finish_restore(keys[0])
    store.finish_restore(keys[1])  # one of the big file's two packs
    with pytest.raises(NotReady):
        job.restore(snapshot=None, at=None, target=str(target), paths=[])
    assert restored(target, "/src/small") == b"in the first pack\n"
    assert not (target / "src/big").exists()  # not before all its chunks are readable

    with pytest.raises(NotReady), browse.dump(job, "/src/big", None, None):  # asks for both of its packs
        pass
    store.finish_restore(keys[2])
    out = job.restore(snapshot=None, at=None, target=str(target), paths=[])
    assert restored(target, "/src/big") == big
    assert out["files_already_restored"] == 1
    with browse.dump(job, "/src/big", None, None) as (_, fh):
        assert fh.read() == big


def test_check_and_prune_see_every_pack_a_chunked_file_uses(tmp_path: Path) -> None:
    now = [T0]
    store = MemoryStore(clock=lambda: now[0])
    job = job_for(tmp_path, store)
    b = Builder(job)
    p1, p2 = b.pack(), b.pack()
    b.big("/src/big", incompressible(9 * (64 << 10), 13), [p1, p2])
    garbage = layout.new_pack_key()
    store.put(job.root + garbage, b"unreferenced", sha256=sha(b"unreferenced"))
    now[0] = T0 + timedelta(minutes=1)
    b.commit(when=now[0])

    assert job.referenced_objects(job.snapshots()[0].id) == {p1, p2}
    out = job.prune(dry_run=False)
    assert out["objects_deleted"] == 1
    assert job.root + garbage not in store.objects and job.root + p2 in store.objects

    del store.objects[job.root + p2]
    with pytest.raises(IntegrityError, match=f"/src/big: object {p2} is missing") as err:
        job.check(read_data=False)
    assert err.value.details["damaged_objects"] == [p2]
    assert str(err.value).count("/src/big") == 1  # one line per file, not one per chunk


def test_a_plain_manifest_is_refused_when_a_key_is_set(tmp_path: Path) -> None:
    store = MemoryStore()
    plain = job_for(tmp_path, store, None)
    b = Builder(plain)
    b.small("/src/a", b"a\n", b.pack())
    b.commit()
    with pytest.raises(ConfigError, match="read_unencrypted_snapshots"):
        job_for(tmp_path, store, KEY).restore(snapshot=None, at=None, target=str(tmp_path / "t"), paths=[])
    # Allowed: its pieces were never sealed either, and they read (verified by their sha256).
    reader = job_for(tmp_path, store, KEY, read_unencrypted_snapshots=True)
    target = tmp_path / "t"
    reader.restore(snapshot=None, at=None, target=str(target), paths=[])
    assert restored(target, "/src/a") == b"a\n"
    assert reader.check(read_data=True)["status"] == "ok"


# --- real runs: what the files job writes reads back ----------------------------------------------


def real_job(tmp_path: Path, store: MemoryStore, src: Path, key: str | None = KEY) -> FilesJob:
    st: dict[str, Any] = {"bucket": "mem", "prefix": "n", "large_file_mb": 1}
    if key is not None:
        st["encryption_key"] = key
    cfg = config.from_dict({"state_dir": str(tmp_path / "state"), "storage": st,
                            "jobs": {"data": {"type": "files", "paths": [str(src)]}}})
    return FilesJob(cfg, cfg.job("data"), store=store)


def real_tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    for i in range(30):
        (src / "etc" / f"conf{i}").write_bytes(text(200 * i + 1, i))
    (src / "big.log").write_bytes(text(3 << 20, 100) + incompressible(1 << 20, 101))
    (src / "twin.log").write_bytes((src / "big.log").read_bytes())
    with open(src / "disk.img", "wb") as f:  # sparse: data regions around holes, ending in one
        f.write(incompressible(700 << 10, 102))
        f.seek(4 << 20)
        f.write(text(900 << 10, 103))
        f.truncate(8 << 20)
    return src


def chunked(job: FilesJob, path: str) -> Entry:
    with job.open_manifest(job.snapshots()[-1].id) as (_, entries, _):
        found = [e for e in entries if e.path == path]
    assert found and found[0].chunks is not None, "the writer stores files above large_file_mb in chunks"
    return found[0]


def test_a_run_restores_byte_exact_and_check_names_a_damaged_chunk(tmp_path: Path, key: str | None) -> None:
    from support.treeutil import capture

    store = MemoryStore()
    src = real_tree(tmp_path)
    job = real_job(tmp_path, store, src, key)
    assert job.run().status == "success"
    target = tmp_path / "target"
    job.restore(snapshot=None, at=None, target=str(target), paths=[])
    copy = target / str(src).lstrip("/")
    assert capture(copy) == capture(src)
    assert (copy / "disk.img").stat().st_blocks < (src / "disk.img").stat().st_blocks + 64
    assert job.check(read_data=True)["status"] == "ok"

    big = chunked(job, f"{src}/big.log")
    obj, offset, stored, _, _ = big.chunks[len(big.chunks) // 2]  # type: ignore[index]
    flip(store, job.root + obj, offset + stored - 20)
    with pytest.raises(IntegrityError) as err:
        job.check(read_data=True)
    assert f"{src}/big.log" in str(err.value) and err.value.details["damaged_objects"] == [obj]
    with pytest.raises(IntegrityError, match=r"big\.log"), browse.dump(job, f"{src}/big.log", None, None):
        pass
    with browse.dump(job, f"{src}/disk.img", None, None) as (_, fh):  # other files still read
        assert fh.read() == (src / "disk.img").read_bytes()


def test_a_run_read_with_another_key_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    store = MemoryStore()
    src = real_tree(tmp_path)
    real_job(tmp_path, store, src, KEY).run()
    target = tmp_path / "target"
    for key in (OTHER_KEY, None):
        with pytest.raises(ConfigError) as err:
            real_job(tmp_path, store, src, key).restore(snapshot=None, at=None, target=str(target), paths=[])
        assert err.value.exit_code == 2 and "\n" not in str(err.value)
        assert "encryption_key" in str(err.value)
    assert not target.exists() or not any(target.iterdir())


def test_restore_threads_are_capped_at_the_cores_not_the_transfers(monkeypatch: pytest.MonkeyPatch) -> None:
    """More fetch-and-write threads than cores only fought over the GIL (PERFORMANCE.md)."""
    storage = config.from_dict({"storage": {"bucket": "bkt", "concurrency": 8}, "jobs": {}}).storage
    monkeypatch.setattr(reader.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert reader.restore_workers(storage) == 2
    monkeypatch.setattr(reader.os, "sched_getaffinity", lambda _pid: set(range(32)), raising=False)
    assert reader.restore_workers(storage) == 8
    one = config.from_dict({"storage": {"bucket": "bkt", "concurrency": 1}, "jobs": {}}).storage
    assert reader.restore_workers(one) == 1
