"""Damage in the bucket behind the agent's back (objects deleted or rewritten by hand, a prune from
another machine) and foreign objects under the job's prefix: the next run heals what `check`
found, nothing new points at deleted data, and no stray object stops a verb."""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from support.contentkeys import keys_in

from reliability.crash import write_files
from reliability.lab import AGENT, NODE, Lab, capture
from reliability.report import record

ROOT = f"{NODE}/data/"


def damage(lab: Lab, big: Path, *, corrupt: bool) -> dict[str, str]:
    """One small-file pack deleted, another rewritten with one byte flipped (same size, if
    `corrupt`), one pack of the big file's chunks deleted; returns what was done to which
    relative key. The big file's packs are found through the newest manifest (format 3: its
    chunks are in packs of their own, not in an object named after it)."""
    big_packs = sorted(keys_in(lab.verifier("data"), str(big)))
    packs = sorted(k for k in lab.object_keys(ROOT) if "/packs/" in k and k not in big_packs)
    assert len(packs) >= 2 and len(big_packs) >= 2, (packs, big_packs)
    lab.s3.delete_object(Bucket=lab.bucket, Key=packs[0])
    lab.s3.delete_object(Bucket=lab.bucket, Key=big_packs[1])
    done = {packs[0][len(ROOT) :]: "deleted", big_packs[1][len(ROOT) :]: "deleted"}
    if corrupt:
        body = bytearray(lab.s3.get_object(Bucket=lab.bucket, Key=packs[1])["Body"].read())
        body[len(body) // 2] ^= 0x01
        lab.s3.put_object(Bucket=lab.bucket, Key=packs[1], Body=bytes(body))
        done[packs[1][len(ROOT) :]] = "corrupted"
    return done


def heal_once(lab: Lab, src: Path, *, variant: str) -> tuple[int, int, int]:
    """Damage, maybe lose state_dir, maybe check, run: the new snapshot restores exactly.
    Returns the objects damaged, bytes uploaded by the healing run and bytes of the tree."""
    first = lab.json("run", "data")
    # A corrupt object keeps its size: only `check --read-data` finds it, and only what it
    # recorded in state_dir tells the run. Deleted ones are also found by a lost cache's LIST.
    done = damage(lab, src / "large.bin", corrupt=variant != "state_dir lost, no check")
    if variant != "state_dir kept":
        shutil.rmtree(lab.state_dir)
    if variant != "state_dir lost, no check":
        proc = lab.run("check", "data", "--read-data", "--json")
        assert proc.returncode == 1, proc.stderr
        assert json.loads(proc.stdout)["damaged_objects"] == sorted(done)
    time.sleep(1.1)
    out = lab.json("run", "data")
    assert out["status"] == "success" and out["bytes_uploaded"] > 0, out
    target = lab.tmp / "restore-heal"
    proc = lab.run("restore", "data", "--target", str(target))
    assert proc.returncode == 0, proc.stderr
    assert capture(target / str(src).lstrip("/")) == capture(src)
    shutil.rmtree(target)
    pruned = lab.json("prune", "data")
    assert pruned["forget"] == [first["snapshot"]], pruned
    assert lab.check("data") == 1
    again = lab.json("run", "data")
    assert again["bytes_uploaded"] == 0, again
    return len(done), int(out["bytes_uploaded"]), int(out["bytes_total"])


def test_damage_found_by_check_heals(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(170)
    figures = []
    variants = ("state_dir kept", "state_dir lost before check", "state_dir lost, no check")
    for i, variant in enumerate(variants):
        src = tmp_path / f"src-{i}"
        write_files(src, 600, rng, size=(2000, 9000))  # about 3 MB: three packs of 1 MiB
        (src / "large.bin").write_bytes(rng.randbytes(3 << 20))  # chunked: three packs of its own
        lab.storage(pack_size_mb=1, large_file_mb=2)
        lab.job("data", type="files", paths=[str(src)], retention={"keep_last": 1})
        for k in lab.object_keys(ROOT):  # each variant on an empty job
            lab.s3.delete_object(Bucket=lab.bucket, Key=k)
        shutil.rmtree(lab.state_dir, ignore_errors=True)
        objects, uploaded, total = heal_once(lab, src, variant=variant)
        assert uploaded < total
        figures.append(f"{variant}: {objects} objects, {uploaded / 2**20:.1f} of {total / 2**20:.1f} MiB "
                       "uploaded again")
    record("damage.heal", cases=len(variants),
           result="a small-file pack deleted, one corrupted (same size), one of a big file's chunk packs deleted; "
                  "state_dir kept "
                  "or lost before check: check --read-data exit 1 naming exactly those objects; state_dir lost and "
                  "no check (deletions only): found by the run's LIST. The next run exit 0 uploads their content "
                  "again (only theirs); restore identical; after prune check --read-data ok and the following "
                  "run uploads nothing",
           measured="; ".join(figures))


def test_content_pruned_elsewhere_is_never_pointed_at(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(171)
    src = tmp_path / "src"
    write_files(src, 50, rng)
    lab.job("data", type="files", paths=[str(src)], retention={"keep_last": 1})
    originals = {p: p.read_bytes() for p in sorted(src.rglob("*.dat"))}
    lab.json("run", "data")  # their content in one pack, which only this snapshot references
    time.sleep(1.1)
    for p in originals:
        p.write_bytes(rng.randbytes(1000))
    write_files(src, 150, rng, prefix="g")
    lab.json("run", "data")
    time.sleep(1.1)
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(yaml.safe_dump({**lab.data, "state_dir": str(tmp_path / "other-state")}))
    proc = subprocess.run([AGENT, "-c", str(elsewhere), "prune", "data", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["objects_deleted"] == 1
    for p, data in originals.items():  # the pruned content comes back
        p.write_bytes(data)
    out = lab.json("run", "data")
    assert out["bytes_uploaded"] >= sum(len(d) for d in originals.values()), out
    assert lab.check("data") == 2  # the one the prune kept, and the new one
    lab.assert_restores("data", src, {out["snapshot"]: capture(src)})
    record("damage.pruned_elsewhere", cases=1,
           result="50 files' old content, pruned by another machine (its own state_dir) while this node's cache "
                  "still listed it, written again: uploaded again, check --read-data ok, restore identical",
           measured=f"{out['bytes_uploaded']} bytes uploaded again")


def test_foreign_objects_stop_no_verb(lab: Lab, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, 50, random.Random(172))
    lab.job("data", type="files", paths=[str(src)], retention={"keep_last": 3})
    strays = {
        "snapshots/20261399T256199Z-aaaaaa.json.gz": b"impossible date",
        "snapshots/README": b"notes",
        "snapshots/old/20260101T000000Z-abcdef.json.gz": b"in a sub-folder",
        "snapshots/20260101T000000Z-abcdeg.json.gz": b"not hex",
        "notes/todo.txt": b"user file beside ours",
        "x": b"a key directly under the job",
    }
    for rel, body in strays.items():
        lab.s3.put_object(Bucket=lab.bucket, Key=ROOT + rel, Body=body)
    lab.s3.put_object(Bucket=lab.bucket, Key=ROOT + "snapshots/20200101T000000Z-abcdef.json.gz",
                      Body=gzip.compress(b"garbage under a valid name\n"))
    verbs = 0
    out = lab.json("run", "data")  # no cache: seeds from the newest snapshot, the garbage one
    assert out["status"] == "success"
    verbs += 1
    time.sleep(1.1)
    lab.json("run", "data")
    listed = lab.run("snapshots", "data", "--json")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 3, listed.stderr
    assert "not a snapshot manifest" in listed.stderr
    proc = lab.run("restore", "data", "--target", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    assert capture(tmp_path / "r" / str(src).lstrip("/")) == capture(src)
    proc = lab.run("check", "data", "--json")
    assert proc.returncode == 1, proc.stderr  # the garbage manifest is a broken snapshot: named
    report = json.loads(proc.stdout)
    assert len(report["errors"]) == 1 and "20200101T000000Z-abcdef" in report["errors"][0]
    assert len(report["foreign_snapshot_keys"]) == 4
    pruned = lab.json("prune", "data")
    assert pruned["objects_deleted"] == 0 and pruned["unreadable_manifests"], pruned
    assert all(ROOT + rel in lab.object_keys(ROOT) for rel in strays)
    verbs += 4
    record("hostile.bucket_objects", cases=len(strays) + 1,
           result="objects under snapshots/ that are not our manifests (impossible date, no id, sub-folder, "
                  "bad suffix), keys beside the agent's, a garbage manifest with a valid name: run, snapshots, "
                  "restore and prune exit 0 and report them; check names only the garbage manifest; prune "
                  "deletes no data while a kept manifest is unreadable; no foreign key is ever deleted",
           measured=f"{verbs} verbs")


def test_two_runs_in_one_instant(lab: Lab, tmp_path: Path) -> None:
    """A stopped clock: every run gets the same time. Creation order still decides."""
    from backup_agent import config
    from backup_agent.jobs.files import FilesJob
    from backup_agent.storage.s3_boto import BotoStore

    src = tmp_path / "src"
    write_files(src, 20, random.Random(173))
    lab.job("data", type="files", paths=[str(src)], retention={"keep_last": 2})
    cfg = config.load(str(lab.path))
    cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, endpoint_url=lab.seaweed.endpoint_url))
    frozen = datetime(2026, 11, 27, 2, 0, 0, tzinfo=UTC)
    made, states = [], {}
    for step in range(5):
        (src / "step.txt").write_text(f"run {step}\n")
        result = FilesJob(cfg, cfg.job("data"), clock=lambda: frozen, store=BotoStore(cfg.storage)).run()
        made.append(result.snapshot)
        states[result.snapshot] = capture(src)
    assert [s["id"] for s in lab.json("snapshots", "data")] == made
    proc = lab.run("restore", "data", "--at", "2026-11-27T02:00:00Z", "--target", str(tmp_path / "r"))
    assert proc.returncode == 0 and made[-1] in proc.stdout, proc.stderr
    assert capture(tmp_path / "r" / str(src).lstrip("/")) == states[made[-1]]
    assert [k["id"] for k in lab.json("prune", "data")["keep"]] == made[-2:]
    record("local.same_instant", cases=5,
           result="five runs with a stopped clock: listed in the order they ran, restore of the latest and --at "
                  "that second give the fifth, keep_last: 2 keeps the fourth and fifth")
