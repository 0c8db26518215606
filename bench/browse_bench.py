"""`find` and `diff` over many large snapshots: how long, and what they download.

    .venv/bin/python bench/browse_bench.py [--snapshots 90] [--entries 100000] [--rounds 3]

Writes the snapshots' manifests directly with the ManifestWriter into a fresh SeaweedFS (a
hundred-thousand-file tree backed up daily for 90 days would take hours to produce with real
runs; `find` and `diff` read nothing but manifests). Each day changes 1 % of the files' content
and adds a few files, like a busy /etc or /var/www. Then times the real `backup-agent` CLI.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from backup_agent.storage import layout
from backup_agent.storage.manifest import Entry, ManifestWriter
from support.seaweedfs import SeaweedFS

AGENT = str(Path(sys.executable).parent / "backup-agent")


def tree(entries: int, rnd: random.Random) -> list[Entry]:
    """A plausible tree: 100 top directories, 10 below each, files named like a web root's."""
    out: list[Entry] = [Entry("/srv", "dir", mode=0o755)]
    per_dir = max(1, entries // 1000)
    names = ["index.html", "style.css", "app.js", "logo.png", "site.conf", "README.md", "data.json"]
    for d in range(100):
        out.append(Entry(f"/srv/site{d:03d}", "dir", mode=0o755))
        for s in range(10):
            base = f"/srv/site{d:03d}/part{s}"
            out.append(Entry(base, "dir", mode=0o755))
            for i in range(per_dir):
                name = f"{i:04d}-{names[i % len(names)]}"
                out.append(file_entry(f"{base}/{name}", rnd))
            if d == 42 and s == 0:  # the one file a user looks for, in scan order (after 0000-…)
                out.append(file_entry(f"{base}/nginx.conf", rnd))
    return out[:entries]


def file_entry(path: str, rnd: random.Random) -> Entry:
    size = int(rnd.lognormvariate(9.0, 1.2))
    sha = hashlib.sha256(rnd.randbytes(16)).hexdigest()
    pack = hashlib.sha256(path.encode()).hexdigest()[:32]
    return Entry(path, "file", size=size, mode=0o644, mtime_ns=1_700_000_000 * 10**9 + rnd.randrange(10**15),
                 sha256=sha, object=f"packs/{pack[:2]}/{pack}", offset=rnd.randrange(1 << 24))


def upload(s3: object, bucket: str, root: str, snapshots: int, entries: int) -> tuple[list[str], int]:
    rnd = random.Random(42)
    files = tree(entries, rnd)
    start = datetime(2026, 8, 1, 2, 0, tzinfo=UTC)
    ids, total = [], 0
    for day in range(snapshots):
        for i in rnd.sample(range(len(files)), len(files) // 100):  # 1 % changed per day
            if files[i].type == "file":
                files[i] = file_entry(files[i].path, rnd)
        sid = layout.new_snapshot_id(start + timedelta(days=day))
        buf = io.BytesIO()
        w = ManifestWriter(buf, {"snapshot": sid, "job": "www"})
        for e in files:
            w.add(e)
        w.close({})
        body = buf.getvalue()
        total += len(body)
        s3.put_object(Bucket=bucket, Key=root + layout.manifest_key(sid), Body=body)  # type: ignore[attr-defined]
        ids.append(sid)
        if day in (0, snapshots - 1):
            # Job www2: the same two trees with a second path scanned after /srv (paths: [/srv, /aaa]),
            # so the manifests are not in path order and diff sorts them on disk.
            buf = io.BytesIO()
            w = ManifestWriter(buf, {"snapshot": sid, "job": "www2"})
            for e in [*files, Entry("/aaa", "dir", mode=0o755)]:
                w.add(e)
            w.close({})
            key = root.replace("/www/", "/www2/") + layout.manifest_key(sid)
            s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())  # type: ignore[attr-defined]
    return ids, total


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def timed(cmd: list[str], server_pid: int) -> tuple[float, float, float, float, str]:
    """(wall s, the agent's CPU s, the server's CPU s, peak RSS MB, stdout) via GNU time and /proc.
    CPU seconds say more than wall time on a shared machine: they do not count waiting for a core."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        server0 = cpu_seconds(server_pid)
        t0 = time.monotonic()
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", tf.name, *cmd], capture_output=True, text=True)
        wall = time.monotonic() - t0
        server = cpu_seconds(server_pid) - server0
        stats = dict(ln.strip().rsplit(": ", 1) for ln in tf.read().splitlines() if ": " in ln)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd}: exit {proc.returncode}: {proc.stderr.strip()}")
    cpu = float(stats["User time (seconds)"]) + float(stats["System time (seconds)"])
    return wall, cpu, server, int(stats["Maximum resident set size (kbytes)"]) / 1024, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapshots", type=int, default=90)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with SeaweedFS(volume_size_limit_mb=1024) as weed, tempfile.TemporaryDirectory() as tmp:
        s3 = weed.client()
        s3.create_bucket(Bucket="bench")
        t0 = time.monotonic()
        ids, total = upload(s3, "bench", "node/www/", args.snapshots, args.entries)
        print(f"generated {args.snapshots} manifests of {args.entries} entries: {total / 1e6:.1f} MB "
              f"({total / len(ids) / 1e6:.2f} MB each) in {time.monotonic() - t0:.0f}s", flush=True)
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(yaml.safe_dump({
            "node": "node", "state_dir": f"{tmp}/state",
            "storage": {"bucket": "bench", "endpoint_url": weed.endpoint_url, "access_key_id": weed.access_key,
                        "secret_access_key": weed.secret_key},
            "jobs": {"www": {"type": "files", "paths": ["/srv"]},
                     "www2": {"type": "files", "paths": ["/srv", "/aaa"]}}}))
        cases = {
            "find www nginx.conf": ["find", "www", "nginx.conf"],
            "find www -i '*/PART3/0001-*' (path, case-insensitive)": ["find", "www", "-i", "*/PART3/0001-*"],
            "find www '/srv/site042/part1/0003-*' --json": ["find", "www", "/srv/site042/part1/0003-*", "--json"],
            "find www nginx.conf --newest 3": ["find", "www", "nginx.conf", "--newest", "3"],
            "find www '*' --newest 1 (every line decoded)": ["find", "www", "*", "--newest", "1"],
            "diff www first last": ["diff", "www", ids[0], ids[-1], "--json"],
            "diff www2 first last (sorted on disk)": ["diff", "www2", ids[0], ids[-1], "--json"],
            "ls www (latest, 100k lines)": ["ls", "www"],
        }
        assert weed.proc is not None
        print("\n| command | wall s | agent CPU s | SeaweedFS CPU s | peak RSS MB | output lines | load |\n"
              "|---|---|---|---|---|---|---|")
        for name, argv in cases.items():
            runs = [timed([AGENT, "-c", str(cfg), *argv], weed.proc.pid) for _ in range(args.rounds)]
            med = [statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
                   statistics.median(r[2] for r in runs)]
            rss = max(r[3] for r in runs)
            print(f"| `{name}` | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} | {rss:.0f} | "
                  f"{len(runs[0][4].splitlines())} | {os.getloadavg()[0]:.1f} |", flush=True)
        print(f"\nmachine load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
