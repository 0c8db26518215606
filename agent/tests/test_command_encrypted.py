"""Command jobs with `storage.encryption_key` (issue #20): the dump leaves the node sealed, comes
back byte for byte, and a wrong key, a damaged or swapped object, or a failing command each end
the way a user can tell apart (exit 2 / exit 1 / no snapshot), with nothing half-written left."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zstandard

from backup_agent import config
from backup_agent.errors import IntegrityError, JobFailed
from backup_agent.jobs.command import CommandJob
from backup_agent.storage import encoding
from backup_agent.storage.codec import Codec, WrongKeyError
from backup_agent.storage.encoding import WrongKey
from backup_agent.storage.memory import MemoryStore

AGENT = str(Path(sys.executable).parent / "backup-agent")
KEY = "correct horse battery staple, but longer"
OTHER_KEY = "an entirely different secret of 32+ chars"
MARKER = b"MARKER-4f1d-plaintext-that-must-never-reach-the-bucket"


def command_job(tmp_path: Path, store: MemoryStore, command: list[str], *, compression: str = "none",
                key: str | None = KEY, **storage: Any) -> CommandJob:
    st: dict[str, Any] = {"bucket": "mem", "prefix": "n", **storage}
    if key is not None:
        st["encryption_key"] = key
    cfg = config.from_dict({"state_dir": str(tmp_path / "state"), "storage": st,
                            "jobs": {"db": {"type": "command", "command": command, "compression": compression}}})
    return CommandJob(cfg, cfg.job("db"), store=store)


def dump_source(tmp_path: Path, size: int = 1 << 20) -> tuple[Path, bytes]:
    # Random bytes first: the codec's trial finds nothing to compress, so the marker would sit in
    # the object as it is if the object were not encrypted.
    data = os.urandom(size) + MARKER + b"INSERT INTO t VALUES (42, 'row');\n" * 20_000
    src = tmp_path / "dump.sql"
    src.write_bytes(data)
    return src, data


def dump_key(store: MemoryStore) -> str:
    return next(k for k in store.objects if "/dumps/" in k)


def the_entry(job: CommandJob, sid: str) -> Any:
    with job.open_manifest(sid) as (header, entries, _):
        files = [e for e in entries if e.type == "file"]
    assert len(files) == 1
    return header, files[0]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- in memory -----------------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_sealed_dump_round_trip_and_no_plaintext_in_the_bucket(tmp_path: Path, compression: str) -> None:
    src, data = dump_source(tmp_path)
    store = MemoryStore()
    job = command_job(tmp_path, store, ["cat", str(src)], compression=compression)
    result = job.run()
    sid = result.snapshot
    assert sid is not None and result.extra["object"] == f"dumps/{sid}.sealed"
    obj = store.data(dump_key(store))
    header, entry = the_entry(job, sid)
    assert header["compression"] == compression and header["encoding"]["key_id"]
    assert entry.stored == len(obj) == result.extra["bytes_stored"]
    if compression == "none":  # size and sha256 describe the dump as the job compressed it
        assert entry.size == len(data) and entry.sha256 == hashlib.sha256(data).hexdigest()

    out = tmp_path / "restored.sql"
    got = job.restore(snapshot=None, at=None, target=str(out), paths=[])
    assert out.read_bytes() == data and got["bytes"] == len(data) and got["bytes_stored"] == len(obj)
    assert job.check(read_data=True)["status"] == "ok"

    plain_sha = hashlib.sha256(data).hexdigest().encode()
    for key in store.objects:  # the dump and the manifest
        stored = store.data(key)
        assert MARKER not in stored and b"INSERT INTO" not in stored and plain_sha not in stored, key
        assert entry.sha256.encode() not in stored and b"dump.sql" not in stored, key
        assert stored.startswith(encoding.MAGIC), f"{key} is not an encoded piece"
    with pytest.raises(WrongKeyError):  # nobody without the key opens it
        b"".join(Codec(None).decode_iter([obj], entry.object.encode()))


def test_the_codec_compresses_a_dump_the_job_does_not(tmp_path: Path) -> None:
    # compression: none and a text dump: the codec's zstd makes the object smaller than the dump,
    # which `check` must not take for a short object.
    store = MemoryStore()
    job = command_job(tmp_path, store, ["seq", "1", "300000"])
    sid = job.run().snapshot
    assert sid is not None
    _, entry = the_entry(job, sid)
    assert entry.stored is not None and entry.stored < entry.size / 2
    assert job.check(read_data=False)["status"] == "ok"
    assert job.check(read_data=True)["status"] == "ok"
    out = tmp_path / "seq.txt"
    job.restore(snapshot=sid, at=None, target=str(out), paths=[])
    assert out.read_bytes() == subprocess.run(["seq", "1", "300000"], capture_output=True, check=True).stdout


def test_without_a_key_the_dump_stays_a_readable_zstd_object(tmp_path: Path) -> None:
    src, data = dump_source(tmp_path, 1000)
    store = MemoryStore()
    job = command_job(tmp_path, store, ["cat", str(src)], compression="zstd", key=None)
    sid = job.run().snapshot
    assert sid is not None
    key = dump_key(store)
    assert key.endswith(f"dumps/{sid}.dump.zst")
    # What `aws s3 cp s3://…/dumps/<id>.dump.zst - | zstd -d` does.
    assert zstandard.ZstdDecompressor().decompressobj().decompress(store.data(key)) == data
    _, entry = the_entry(job, sid)
    assert entry.stored is None and "encoding" not in the_entry(job, sid)[0]


def test_a_dump_from_before_the_key_still_restores(tmp_path: Path) -> None:
    src, data = dump_source(tmp_path, 1000)
    store = MemoryStore()
    old = command_job(tmp_path, store, ["cat", str(src)], compression="gzip", key=None).run().snapshot
    keyed = command_job(tmp_path, store, ["cat", str(src)], compression="gzip", read_unencrypted_snapshots=True)
    out = tmp_path / "old.sql"
    keyed.restore(snapshot=old, at=None, target=str(out), paths=[])
    assert out.read_bytes() == data
    new = keyed.run().snapshot
    assert keyed.check(read_data=True)["snapshots_checked"] == 2
    keyed.restore(snapshot=new, at=None, target=str(out), paths=[])
    assert out.read_bytes() == data
    # Without read_unencrypted_snapshots an unsealed snapshot is refused as a key problem (exit 2).
    strict = command_job(tmp_path, store, ["cat", str(src)], compression="gzip")
    with pytest.raises(WrongKey, match="read_unencrypted_snapshots"):
        strict.restore(snapshot=old, at=None, target=str(out), paths=[])


def test_a_dump_sealed_with_another_key_is_a_wrong_key_and_writes_nothing(tmp_path: Path) -> None:
    # The manifest opens (this node's key), the dump does not: it was sealed under another key.
    src, data = dump_source(tmp_path)
    store = MemoryStore()
    job = command_job(tmp_path, store, ["cat", str(src)])
    sid = job.run().snapshot
    assert sid is not None
    _, entry = the_entry(job, sid)
    other = encoding.for_storage(command_job(tmp_path, store, ["true"], key=OTHER_KEY).cfg.storage)
    store.objects[dump_key(store)].data = b"".join(other.data.encode_iter([data], entry.object.encode()))
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(WrongKey, match=r"^storage\.encryption_key does not open snapshot .*not configured"):
        job.restore(snapshot=sid, at=None, target=str(target), paths=[])
    assert leftovers(target) == []
    with pytest.raises(WrongKey):
        job.check(read_data=True)


def test_a_flipped_byte_fails_restore_and_check_and_leaves_no_file(tmp_path: Path) -> None:
    # 5 MiB: the flipped byte is in the fourth segment, after three were already written out.
    src, _ = dump_source(tmp_path, 5 << 20)
    store = MemoryStore()
    job = command_job(tmp_path, store, ["cat", str(src)])
    sid = job.run().snapshot
    key = dump_key(store)
    damaged = bytearray(store.data(key))
    damaged[(3 << 20) + 1234] ^= 0x01
    store.objects[key].data = bytes(damaged)
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(IntegrityError, match="fails authentication at segment 3"):
        job.restore(snapshot=sid, at=None, target=str(target / "db.sql"), paths=[])
    assert leftovers(target) == []
    with pytest.raises(IntegrityError) as err:
        job.check(read_data=True)
    assert err.value.details["damaged_objects"] == [key.split("/", 2)[2]]
    assert job.check(read_data=False)["status"] == "ok"  # the listing alone cannot tell


def test_a_dump_copied_over_another_snapshots_fails(tmp_path: Path) -> None:
    # Same content, same key, same length: only the name each dump is sealed for tells them apart.
    src, _ = dump_source(tmp_path, 1000)
    store = MemoryStore()
    job = command_job(tmp_path, store, ["cat", str(src)])
    first, second = job.run().snapshot, job.run().snapshot
    assert first and second and first != second
    keys = sorted(k for k in store.objects if "/dumps/" in k)
    store.objects[keys[1]].data = store.data(keys[0])
    with pytest.raises(IntegrityError, match="fails authentication"):
        job.restore(snapshot=second, at=None, target=str(tmp_path / "x.sql"), paths=[])
    assert not (tmp_path / "x.sql").exists()


def test_a_failing_command_leaves_no_snapshot_and_no_upload(tmp_path: Path) -> None:
    # 20 MB before failing: sealed parts are already uploading when the command exits non-zero.
    store = MemoryStore()
    job = command_job(tmp_path, store, ["sh", "-c", "head -c 20000000 /dev/urandom; echo broke >&2; exit 3"])
    with pytest.raises(JobFailed, match="exited with status 3: broke"):
        job.run()
    assert store.objects == {} and not store.uploads
    assert any(call[0] == "start_multipart" for call in store.calls)


# --- through the CLI, on SeaweedFS ----------------------------------------------------------------

def with_maxrss(*argv: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run argv; also return the peak RSS (kB) of the process and its children."""
    script = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(p.returncode)")
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=600)
    *rest, peak = proc.stderr.rstrip("\n").split("\n")
    proc.stderr = "\n".join(rest)
    return proc, int(peak)


def one_line_exit_2(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr.strip()


def test_wrong_or_missing_key_is_one_line_exit_2(agent: Any, tmp_path: Path) -> None:
    agent.write(storage={**agent.data["storage"], "encryption_key": KEY})
    agent.job("db", type="command", command=["printf", "%s", MARKER.decode()])
    assert agent.json("run", "db")["status"] == "success"
    for key in agent.object_keys("test-node/db/"):
        assert MARKER not in agent.s3.get_object(Bucket=agent.bucket, Key=key)["Body"].read()

    target = tmp_path / "restored.sql"
    agent.write(storage={**agent.data["storage"], "encryption_key": OTHER_KEY})
    line = one_line_exit_2(agent.run("restore", "db", "--target", str(target)))
    assert "storage.encryption_key does not open" in line and "not configured" in line
    assert not target.exists() and leftovers(tmp_path) == ["config.yaml", "state"]
    one_line_exit_2(agent.run("check", "db", "--read-data"))
    one_line_exit_2(agent.run("drill", "db"))
    piped = subprocess.run(f"{AGENT} -c {agent.path} restore db --target - | wc -c", shell=True,
                           capture_output=True, text=True, timeout=120)
    assert piped.stdout.strip() == "0"

    storage = {k: v for k, v in agent.data["storage"].items() if k != "encryption_key"}
    agent.write(storage=storage)
    line = one_line_exit_2(agent.run("restore", "db", "--target", str(target)))
    assert "no encryption_key is configured" in line
    assert not target.exists()

    agent.write(storage={**storage, "encryption_key": KEY})
    proc = agent.run("restore", "db", "--target", "-")
    assert proc.returncode == 0 and proc.stdout == MARKER.decode()


def test_a_damaged_sealed_dump_is_exit_1_and_reaches_no_reader(agent: Any, tmp_path: Path) -> None:
    agent.write(storage={**agent.data["storage"], "encryption_key": KEY})
    agent.job("db", type="command", compression="none", command=["head", "-c", str(3 << 20), "/dev/urandom"])
    sid = agent.json("run", "db")["snapshot"]
    key = f"test-node/db/dumps/{sid}.sealed"
    damaged = bytearray(agent.s3.get_object(Bucket=agent.bucket, Key=key)["Body"].read())
    damaged[-100] ^= 0x80
    agent.s3.put_object(Bucket=agent.bucket, Key=key, Body=bytes(damaged))
    target = tmp_path / "out"
    target.mkdir()
    proc = agent.run("restore", "db", "--target", str(target))
    assert proc.returncode == 1 and "fails authentication" in proc.stderr, proc.stderr
    assert leftovers(target) == []
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; {AGENT} -c {agent.path} restore db --target - | wc -c"],
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 1 and piped.stdout.strip() == "0", piped
    check = agent.run("check", "db", "--read-data")
    assert check.returncode == 1 and "fails authentication" in check.stderr
    drill = agent.run("drill", "db", "--json")
    assert drill.returncode == 1 and json.loads(drill.stdout)["status"] == "failed"


# Half text (the codec's zstd runs on it), half pseudo-random bytes (stored as they are), a MiB at
# a time: the test makes the same bytes again to compare the restore with.
GENERATE = """
import random, sys
size, rng = int(sys.argv[1]), random.Random(20)
line = b"INSERT INTO t VALUES (1, 'two', 3.0);\\n"
text = (line * ((1 << 20) // len(line) + 1))[: 1 << 20]
out = sys.stdout.buffer
for i in range(size >> 20):
    out.write(text if i < (size >> 21) else rng.randbytes(1 << 20))
"""


def generated(size: int) -> str:
    sha = hashlib.sha256()
    proc = subprocess.Popen([sys.executable, "-c", GENERATE, str(size)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    while chunk := proc.stdout.read(1 << 20):
        sha.update(chunk)
    assert proc.wait() == 0
    return sha.hexdigest()


def test_a_big_sealed_dump_round_trips_in_bounded_memory(agent: Any, tmp_path: Path) -> None:
    agent.write(storage={**agent.data["storage"], "encryption_key": KEY})
    size = 256 << 20
    agent.job("big", type="command", compression="none", command=[sys.executable, "-c", GENERATE, str(size)])
    run, run_peak = with_maxrss(AGENT, "-c", str(agent.path), "run", "big", "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    head = agent.s3.head_object(Bucket=agent.bucket, Key=f"test-node/big/{out['object']}")
    assert int(head["ETag"].strip('"').rsplit("-", 1)[1]) > 10  # a multipart upload (8 MiB parts)
    assert size // 2 < head["ContentLength"] == out["bytes_stored"] < size  # the text half compressed

    target = tmp_path / "big.sql"
    restore, restore_peak = with_maxrss(AGENT, "-c", str(agent.path), "restore", "big", "--target", str(target))
    assert restore.returncode == 0, restore.stderr
    with target.open("rb") as fh:
        assert hashlib.file_digest(fh, "sha256").hexdigest() == generated(size)
    # A few 8 MiB parts and MiB segments beside the agent's ~95 MB: the 256 MiB dump is never held
    # (measured 135-155 MB for dumps of 64-768 MiB).
    assert run_peak < 220_000 and restore_peak < 220_000, (run_peak, restore_peak)
    assert agent.json("check", "big", "--read-data")["status"] == "ok"
