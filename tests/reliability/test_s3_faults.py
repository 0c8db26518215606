"""Faults between the agent and S3: 5xx, SlowDown, resets, stalls, truncated answers; answers of
applied requests lost; and S3 staying down."""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from support.contentkeys import keys_in
from support.faultproxy import FAULT_KINDS, FaultProxy, Request

from reliability.crash import is_manifest_put, is_pack_put, write_files
from reliability.lab import AGENT, NODE, Lab, capture, diff, one_line_error
from reliability.report import record

FAULT_RATE = 0.35
# botocore (storage/s3.py): 10 attempts, backoff rand(0,1) * min(scale * 2^i, 20 s) with scale 1 s
# for throttling (SlowDown), 0.05 s otherwise: one request gives up after at most
# 1+2+4+8+16+20+20+20+20 = 111 s of backoff (25.6 s when not throttled), plus its own time.
DOWN_BOUND_S = 150
KIND_NAMES = {"500": "500 InternalError", "503": "503 SlowDown", "reset": "reset before the store",
              "reset_after": "reset after the store applied it", "stall": "1 s stall",
              "truncate": "truncated answer"}


def make_tree(src: Path, rng: random.Random) -> None:
    write_files(src / "small", 1200, rng)  # ~2 MB: two packs of 1 MiB
    (src / "disk.img").write_bytes(rng.randbytes(12 << 20))  # big files: chunked into packs of their own
    (src / "archive.tar").write_bytes(rng.randbytes(9 << 20))


def test_backup_check_and_restore_through_faults(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(20)
    src = tmp_path / "src"
    make_tree(src, rng)
    lab.storage(pack_size_mb=1)
    lab.job("data", type="files", paths=[str(src)])
    for kind in FAULT_KINDS:  # each kind at least once, whatever the dice say
        lab.proxy.inject(lambda r: True, kind)
    lab.proxy.faults(FAULT_RATE, stall_s=1.0, seed=20)
    started = time.monotonic()
    states: dict[str, Any] = {}
    runs = 0
    for step in range(3):
        if step == 1:
            for p in sorted((src / "small").rglob("*.dat"))[::10]:
                p.write_bytes(rng.randbytes(1500))
            (src / "disk.img").write_bytes(rng.randbytes(12 << 20))
        out = lab.json("run", "data")  # step 2 is an unchanged rerun
        assert out["status"] == "success", out
        states[out["snapshot"]] = capture(src)
        runs += 1
        time.sleep(1.05)  # snapshot ids have second resolution
    backup_s = time.monotonic() - started

    proc = lab.run("check", "data", "--read-data")
    assert proc.returncode == 0, proc.stderr
    for sid, state in states.items():
        target = tmp_path / f"r-{sid}"
        proc = lab.run("restore", "data", "--snapshot", sid, "--target", str(target))
        assert proc.returncode == 0, proc.stderr
        got = capture(target / str(src).lstrip("/"))
        assert got == state, diff(state, got)
    total_s = time.monotonic() - started

    seen = lab.proxy.requests()
    kinds = Counter(s.action for s in seen if s.action in FAULT_KINDS)
    share = sum(kinds.values()) / len(seen)
    assert share >= 0.2, f"only {share:.0%} of {len(seen)} requests were faulted"
    assert set(kinds) == set(FAULT_KINDS), kinds
    record("s3.faults", cases=runs + 1 + len(states),
           result=f"{runs} runs (full, changed, unchanged) exit 0; check --read-data and {len(states)} restores, "
                  "also through the faults, exit 0 and restore identical; every fault kind injected; "
                  "≥ 20 % of requests faulted",
           measured=f"{len(seen)} requests, {sum(kinds.values())} faulted ({share:.0%}): "
                    + ", ".join(f"{KIND_NAMES[k]} x{kinds[k]}" for k in FAULT_KINDS)
                    + f"; backups {backup_s:.0f}s, all {total_s:.0f}s")


def test_answers_lost_after_the_store_applied_the_request(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(21)
    src = tmp_path / "src"
    make_tree(src, rng)
    lab.storage(pack_size_mb=1)
    lab.job("data", type="files", paths=[str(src)], retention={"keep_last": 1})
    # The first PUT of every pack (small files' packs and the big files' chunk packs) is stored
    # and its answer lost; so is the manifest's. One more pack PUT gets a 200 cut after its
    # status line: no ETag, so nothing says what was stored and it is sent again.
    lost_once: set[str] = set()

    def first_pack_put(r: Request) -> bool:
        if not is_pack_put(r) or r.path in lost_once:
            return False
        lost_once.add(r.path)
        return True

    lab.proxy.inject(lambda r: is_pack_put(r) and r.path in lost_once, "headers_lost")
    lab.proxy.inject(first_pack_put, "reset_after", times=10_000)
    lab.proxy.inject(is_manifest_put, "reset_after")
    first = lab.json("run", "data")
    assert first["status"] == "success", first
    lost = {s.path for s in lab.proxy.requests() if s.action == "reset_after"}
    stored = {"/" + lab.bucket + "/" + k for k in lab.object_keys(NODE + "/data/packs/")}
    assert stored and stored <= lost, "a pack's lost answer was not exercised"
    big_packs = {"/" + lab.bucket + "/" + k for k in keys_in(lab.verifier("data"), str(src / "disk.img"))}
    assert big_packs <= lost and len(big_packs) > 1, big_packs
    assert any(s.action == "headers_lost" for s in lab.proxy.requests()), "the answer without an ETag was not sent"
    assert any(s.action == "reset_after" and "/snapshots/" in s.path for s in lab.proxy.requests())
    assert lab.check("data") == 1
    time.sleep(1.05)
    (src / "disk.img").write_bytes(rng.randbytes(12 << 20))
    second = lab.json("run", "data")
    lab.proxy.inject(lambda r: r.method == "POST" and "delete" in r.query, "reset_after", times=2)
    pruned = lab.json("prune", "data")
    assert pruned["forget"] == [first["snapshot"]], pruned
    assert lab.proxy.injections[-1][2] == 0, "DeleteObjects was not exercised"
    assert lab.snapshot_ids("data") == [second["snapshot"]]
    assert lab.check("data") == 1
    state = capture(src)
    assert lab.assert_restores("data", src, {second["snapshot"]: state}) == 1
    record("s3.lost_answers", cases=4,
           result="answers lost for the first PutObject of every pack (small files' and big files' chunk packs), "
                  "the manifest's PutObject and prune's DeleteObjects, and a pack PutObject answer cut after its "
                  "status line (no ETag): retried, runs and prune exit 0, check --read-data ok, restore identical",
           measured=f"{len(stored)} packs, {len(big_packs)} of them the 12 MiB file's")


def _config(lab: Lab, endpoint: str, job: str, src: Path) -> Path:
    data = json.loads(json.dumps(lab.data))
    data["storage"]["endpoint_url"] = endpoint
    data["jobs"] = {job: {"type": "files", "paths": [str(src)]}}
    path = lab.tmp / f"{job}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_s3_down_fails_cleanly_within_a_bound(lab: Lab, seaweed: Any, tmp_path: Path) -> None:
    rng = random.Random(22)
    src = tmp_path / "src"
    write_files(src, 1500, rng)  # ~2.4 MB
    lab.storage(pack_size_mb=1)
    proxies = {kind: FaultProxy(seaweed.endpoint_url) for kind in ("503", "500", "reset")}
    for kind, p in proxies.items():
        p.down(kind)
    closed = FaultProxy(seaweed.endpoint_url)
    refused_url = closed.url
    closed.close()
    endpoints = {f"down-{k}": p.url for k, p in proxies.items()}
    endpoints["refused"] = refused_url
    endpoints["midway"] = lab.proxy.url
    hold = lab.proxy.hold(is_pack_put)  # S3 goes away while the first pack is on its way
    procs: dict[str, tuple[subprocess.Popen[str], float]] = {}
    try:
        for name, url in endpoints.items():
            cfg = _config(lab, url, name, src)
            procs[name] = (subprocess.Popen([AGENT, "-c", str(cfg), "run", name], stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True), time.monotonic())
        assert hold.wait(120), "the mid-run job never sent a pack"
        lab.proxy.down("503")
        hold.release()  # its connection breaks; every retry meets 503 SlowDown
        took: dict[str, float] = {}
        deadline = time.monotonic() + DOWN_BOUND_S + 60
        while len(took) < len(procs) and time.monotonic() < deadline:
            for name, (proc, t0) in procs.items():
                if name not in took and proc.poll() is not None:
                    took[name] = time.monotonic() - t0
            time.sleep(0.2)
        for name, (proc, _) in procs.items():
            assert name in took, f"{name}: still running after {DOWN_BOUND_S + 60}s"
            out, err = proc.communicate(timeout=5)
            done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            assert proc.returncode == 1, f"{name}: {err}"
            one_line_error(done)
            assert not lab.object_keys(f"{NODE}/{name}/snapshots/"), f"{name} left a snapshot"
            status = json.loads((lab.state_dir / "status" / f"{name}.json").read_text())
            assert status["result"] == "failed" and status["exit_code"] == 1, status
            assert took[name] < DOWN_BOUND_S, f"{name}: failed only after {took[name]:.0f}s"
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
        for p in proxies.values():
            p.close()
    # S3 is back: the job that failed midway completes and verifies.
    lab.proxy.clear()
    cfg = _config(lab, lab.proxy.url, "midway", src)
    again = subprocess.run([AGENT, "-c", str(cfg), "run", "midway"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert lab.check("midway", cfg) == 1
    record("s3.down", cases=len(endpoints),
           result="503 SlowDown, 500, resets, connection refused and S3 gone mid-upload: each run exit 1 with one "
                  f"line on stderr, no snapshot, status 'failed', within {DOWN_BOUND_S} s; once S3 is back the "
                  "next run exit 0 and verifies",
           measured=", ".join(f"{k} {v:.0f}s" for k, v in took.items()))
