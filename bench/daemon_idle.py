"""Benchmark: what an idle `backup-agent daemon` costs a node (issue 4).

Starts the daemon with 10 scheduled jobs (every schedule form, none due during the
measurement), then samples its CPU time and memory from /proc for a minute and prints a
markdown table. Goal: < 1 % of one core and < 80 MB RSS.

    .venv/bin/python bench/daemon_idle.py [--duration 60] [--jobs 10]

Not part of `make test` (it takes a minute by design).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

TICKS = os.sysconf("SC_CLK_TCK")
AGENT = str(Path(sys.executable).parent / "backup-agent")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def kib(value: str) -> int:
    return int(value.split()[0])


def children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def config(work: Path, jobs: int) -> dict[str, object]:
    # Far from now, so nothing is due while we measure.
    later = datetime.now() + timedelta(hours=6)
    forms = [
        f"daily at {later:%H:%M}",
        f"daily at {later:%H:%M} UTC",
        f"hourly at :{(datetime.now() + timedelta(minutes=30)).minute:02d}",
        "weekly on sunday at 03:00",
        "weekly on wednesday at 23:30 UTC",
        "every 6 hours",
        "every 2 days",
        "every 30 minutes",
    ]
    data = work / "data"
    data.mkdir()
    spec = {
        f"job{i:02d}": {"type": "files", "paths": [str(data)], "schedule": forms[i % len(forms)],
                        "splay": 300 if i % 2 else 0}
        for i in range(jobs)
    }
    return {
        "node": "bench-node",
        "state_dir": str(work / "state"),
        # Unreachable on purpose: an idle daemon must not touch storage at all.
        "storage": {"bucket": "bench-idle", "endpoint_url": "http://127.0.0.1:9",
                    "access_key_id": "BENCHACCESSKEY", "secret_access_key": "bench-secret-key-000"},
        "metrics": {"textfile": str(work / "backup_agent.prom")},
        "jobs": spec,
    }


def seed_history(work: Path, names: list[str]) -> None:
    """`every N` jobs without history would start at once; pretend each just ran."""
    status = work / "state" / "status"
    status.mkdir(parents=True)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for name in names:
        (status / f"{name}.json").write_text(json.dumps({"job": name, "last_start": now, "result": "success"}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds to measure (default 60)")
    ap.add_argument("--jobs", type=int, default=10, help="jobs to configure (default 10)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="daemon-idle-") as tmp:
        work = Path(tmp)
        cfg = config(work, args.jobs)
        (work / "config.yaml").write_text(yaml.safe_dump(cfg))
        seed_history(work, list(cfg["jobs"]))  # type: ignore[arg-type]
        log = (work / "daemon.log").open("w+b")
        t0 = time.monotonic()
        proc = subprocess.Popen([AGENT, "-c", str(work / "config.yaml"), "daemon"], stderr=log,
                                stdout=subprocess.DEVNULL)
        state = work / "state" / "daemon.json"
        while not state.exists():
            if proc.poll() is not None or time.monotonic() - t0 > 60:
                log.seek(0)
                print(log.read().decode(errors="replace"), file=sys.stderr)
                raise SystemExit("the daemon did not start")
            time.sleep(0.05)
        startup = time.monotonic() - t0
        time.sleep(1.0)  # let start-up work settle before measuring idle

        before_cpu, before = cpu_seconds(proc.pid), time.monotonic()
        before_ctx = proc_status(proc.pid)
        peak_rss = 0
        spawned: set[str] = set()
        while time.monotonic() - before < args.duration:
            peak_rss = max(peak_rss, kib(proc_status(proc.pid)["VmRSS"]))
            spawned.update(children(proc.pid))
            time.sleep(1.0)
        after_cpu, after = cpu_seconds(proc.pid), time.monotonic()
        st = proc_status(proc.pid)
        wakeups = (int(st["voluntary_ctxt_switches"]) - int(before_ctx["voluntary_ctxt_switches"]))

        t1 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        stop = time.monotonic() - t1

    wall = after - before
    cpu_pct = 100.0 * (after_cpu - before_cpu) / wall
    rss_mb = peak_rss / 1024
    rows = [
        ("jobs configured", f"{args.jobs}", "", ""),
        ("measured", f"{wall:.0f} s idle", "", ""),
        ("CPU (share of one core)", f"{cpu_pct:.3f} %", "< 1 %", "yes" if cpu_pct < 1 else "NO"),
        ("CPU time used", f"{after_cpu - before_cpu:.2f} s", "", ""),
        ("RSS (peak)", f"{rss_mb:.1f} MB", "< 80 MB", "yes" if rss_mb < 80 else "NO"),
        ("RSS high-water mark incl. start-up", f"{kib(st['VmHWM']) / 1024:.1f} MB", "", ""),
        ("threads", st["Threads"], "", ""),
        ("wake-ups (voluntary context switches)", f"{wakeups} ({60 * wakeups / wall:.1f}/min)", "", ""),
        ("job processes started while idle", f"{len(spawned)}", "0", "yes" if not spawned else "NO"),
        ("start-up until scheduling", f"{startup:.2f} s", "", ""),
        ("SIGTERM to exit", f"{stop:.2f} s (exit {code})", "exit 0", "yes" if code == 0 else "NO"),
    ]
    print(f"### backup-agent daemon, idle ({os.cpu_count()} cores, Python {sys.version.split()[0]})\n")
    print("| metric | value | goal | met |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    ok = cpu_pct < 1 and rss_mb < 80 and not spawned and code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
