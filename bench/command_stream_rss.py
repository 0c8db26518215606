"""Benchmark: memory of a `command` job streaming a large dump to S3 (issue 7).

Runs the real `backup-agent run` against a local SeaweedFS with commands that write 2 GiB
(incompressible, and compressible like a SQL dump), samples the agent's peak RSS (VmHWM from
/proc, and the kernel's ru_maxrss at exit) and prints a markdown table. Goal: < 150 MB whatever
the dump's size, because parts leave while the command still writes.

    .venv/bin/python bench/command_stream_rss.py [--size-mb 2048] [--cases none,zstd,gzip]

Not part of `make test` (it moves several GB).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support.seaweedfs import SeaweedFS  # noqa: E402

AGENT = str(Path(sys.executable).parent / "backup-agent")
GOAL_MB = 150
CASES = {
    "none": ("incompressible (/dev/urandom)", "none", "head -c {size} /dev/urandom"),
    "zstd": ("SQL-like text", "zstd", "while cat {sample}; do :; done | head -c {size}"),
    "gzip": ("SQL-like text", "gzip", "while cat {sample}; do :; done | head -c {size}"),
}
SAMPLE_MB = 64  # larger than gzip's and zstd's windows: repeating it does not make it compress better


def write_sample(path: Path) -> None:
    """Rows shaped like mysqldump output, with changing numbers and hashes: compresses ~3-4x."""
    rnd = random.Random(7)
    with path.open("w") as fh:
        written = 0
        row = 0
        while written < SAMPLE_MB << 20:
            values = ",".join(
                f"({row + i},{rnd.randrange(10**6)},'customer {rnd.randrange(10**5)}',"
                f"'{rnd.getrandbits(128):032x}','2026-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}',"
                f"{rnd.randrange(10**7) / 100:.2f})" for i in range(50))
            line = f"INSERT INTO `orders` VALUES {values};\n"
            fh.write(line)
            written += len(line)
            row += 50


def vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(argv: list[str], env: dict[str, str]) -> tuple[int, float, int, str, str]:
    """Run argv; return (exit code, seconds, peak RSS KiB, stdout, stderr)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, vm_hwm_kib(proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
        seconds = time.monotonic() - started
        # ru_maxrss covers the agent and the children it waited for (the dump command: tiny).
        peak = max(peak, usage.ru_maxrss)
        out.seek(0)
        err.seek(0)
        return proc.returncode, seconds, peak, out.read().decode(), err.read().decode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=2048, help="bytes each command writes, in MiB")
    ap.add_argument("--cases", default="none,zstd,gzip", help=f"comma-separated: {', '.join(CASES)}")
    args = ap.parse_args()
    size = args.size_mb << 20
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            ap.error(f"unknown case {c!r}")

    work = Path(tempfile.mkdtemp(prefix="bench-command-"))
    sample = work / "sample.sql"
    write_sample(sample)
    rows = []
    with SeaweedFS() as s3srv:
        client = s3srv.client()
        bucket = "bench-command"
        client.create_bucket(Bucket=bucket)
        cfg = {
            "node": "bench",
            "state_dir": str(work / "state"),
            "log_level": "WARNING",
            "storage": {"bucket": bucket, "endpoint_url": s3srv.endpoint_url,
                        "access_key_id": s3srv.access_key, "secret_access_key": s3srv.secret_key},
            "jobs": {c: {"type": "command", "shell": True, "compression": CASES[c][1],
                         "command": [CASES[c][2].format(size=size, sample=sample)]} for c in cases},
        }
        path = work / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = dict(os.environ)
        code, secs, base_kib, _, err = measure([AGENT, "-c", str(path), "validate"], env)
        rows.append(("baseline: `backup-agent validate`", "-", "-", "-", f"{secs:.1f}", "-", base_kib / 1024))
        for c in cases:
            code, secs, kib, out, err = measure([AGENT, "-c", str(path), "run", c, "--json"], env)
            if code != 0:
                print(f"case {c} failed ({code}): {err.strip()[-500:]}", file=sys.stderr)
                return 1
            doc = json.loads(out)
            rows.append((CASES[c][0], CASES[c][1], f"{doc['bytes_raw'] / 1e6:,.0f} MB",
                         f"{doc['bytes_stored'] / 1e6:,.0f} MB", f"{secs:.1f}",
                         f"{doc['bytes_raw'] / 1e6 / secs:,.0f}", kib / 1024))
            # Keep the store small between cases.
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"bench/{c}/"):
                for obj in page.get("Contents", []):
                    client.delete_object(Bucket=bucket, Key=obj["Key"])

    shutil.rmtree(work, ignore_errors=True)
    print(f"\n`command` job streaming {args.size_mb} MiB per case to SeaweedFS on loopback "
          f"({os.cpu_count()} cores); goal: peak RSS < {GOAL_MB} MB\n")
    print("| output | compression | raw | stored | wall s | raw MB/s | peak RSS MB | < goal |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    worst = 0.0
    for name, comp, raw, stored, secs, rate, rss in rows:
        ok = "yes" if rss < GOAL_MB else "NO"
        if comp != "-":
            worst = max(worst, rss)
        print(f"| {name} | {comp} | {raw} | {stored} | {secs} | {rate} | {rss:.0f} | {ok} |")
    return 0 if worst < GOAL_MB else 1


if __name__ == "__main__":
    sys.exit(main())
