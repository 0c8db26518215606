"""SIGKILL `prune` at each of its steps: deleting manifests, then listing the data, then deleting it."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from support.faultproxy import Request

from reliability.crash import Crashes, write_files
from reliability.lab import Lab


def is_delete(r: Request) -> bool:
    return r.method == "POST" and "delete" in r.query


def after_the_first(match: Callable[[Request], bool]) -> Callable[[Request], bool]:
    """Matches any request after the first one `match` matches."""
    seen: list[Request] = []

    def matcher(r: Request) -> bool:
        if seen:
            return True
        if match(r):
            seen.append(r)
        return False

    return matcher


def test_kill_during_prune(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(12)
    src = tmp_path / "src"
    write_files(src / "keep", 300, rng)
    lab.job("data", type="files", paths=[str(src)], retention={"keep_last": 1})
    c = Crashes(lab, "data", src)
    doc = src / "doc.txt"
    versions = {v: rng.randbytes(3000 + v) for v in range(4)}

    c.run_ok()
    doc.write_bytes(versions[0])  # alone in its pack: nothing later refers to that pack
    c.run_ok()
    doc.write_bytes(versions[1])
    c.run_ok()
    # prune killed before it deleted anything: nothing is lost, the next prune does the work
    c.kill("crash.prune_manifests", verb=("prune",), match=is_delete)

    doc.write_bytes(versions[2])
    c.run_ok()
    # killed once the expired manifests were gone, before any data was: prune reads what the kept
    # snapshot references before it deletes anything (a key that cannot open the job's snapshots
    # must delete nothing), so the next request after the manifests' delete lists the data
    c.kill("crash.prune_reading", verb=("prune",), match=after_the_first(is_delete))

    # Killed after S3 deleted the unreferenced data, before prune saw the answer (and so before
    # it could update the local cache). Version 0 then comes back: its content lived only in
    # data that is now deleted, so the next run must upload it again, not point at it.
    doc.write_bytes(versions[3])
    c.run_ok()
    doc.write_bytes(versions[0])
    out = c.kill("crash.prune_data", verb=("prune",), match=is_delete, nth=2, after=True,
                 note="; content that lived only in the deleted data was uploaded again")
    assert out["bytes_uploaded"] >= len(versions[0])

    proc = lab.run("prune", "data")
    assert proc.returncode == 0, proc.stderr
    c.states = {k: v for k, v in c.states.items() if k in lab.snapshot_ids("data")}
    assert len(c.states) == 1
    c.verify()
    proc = lab.run("check", "data", "--read-data")
    assert proc.returncode == 0, proc.stderr
