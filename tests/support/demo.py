"""`make demo`: the main job end to end on an embedded default — a local SeaweedFS.

Starts SeaweedFS on loopback, backs up a sample directory with the real `backup-agent` CLI,
changes a file and backs up again, lists the snapshots, restores the first one into a temp
dir, verifies every byte against what the tree held then, prints a summary and stops SeaweedFS.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.seaweedfs import SeaweedFS

AGENT = str(Path(sys.executable).parent / "backup-agent")


def make_sample(root: Path) -> None:
    (root / "etc" / "app").mkdir(parents=True)
    (root / "var" / "www").mkdir(parents=True)
    (root / "etc" / "app" / "app.conf").write_text("listen = 8080\nworkers = 4\n")
    (root / "etc" / "app" / "empty.conf").write_text("")
    for i in range(200):
        (root / "var" / "www" / f"page-{i:03}.html").write_text(f"<h1>page {i}</h1>\n" * (i + 1))
    (root / "var" / "www" / "video.bin").write_bytes(os.urandom(12 << 20))  # a large file: own object
    (root / "var" / "www" / "current").symlink_to("page-000.html")


def agent(cfg: Path, *args: str) -> dict | list:  # type: ignore[type-arg]
    proc = subprocess.run([AGENT, "-c", str(cfg), *args, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"demo: backup-agent {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="backup-agent-demo-"))
    sample, restored = work / "sample", work / "restored"
    make_sample(sample)
    before = work / "as-of-first-backup"
    shutil.copytree(sample, before, symlinks=True)
    print("demo: starting SeaweedFS on loopback ...", flush=True)
    with SeaweedFS() as s3:
        s3.client().create_bucket(Bucket="demo-backups")
        cfg = work / "config.yaml"
        cfg.write_text(
            f"node: demo-node\nstate_dir: {work / 'state'}\n"
            f"storage:\n  bucket: demo-backups\n  endpoint_url: {s3.endpoint_url}\n"
            f"  access_key_id: {s3.access_key}\n  secret_access_key: {s3.secret_key}\n"
            f"jobs:\n  sample:\n    type: files\n    paths: [{sample}]\n    schedule: daily at 02:00\n"
            f"    retention: {{keep_last: 7}}\n"
        )
        cfg.chmod(0o600)
        t0 = time.monotonic()
        first = agent(cfg, "run", "sample")
        (sample / "etc" / "app" / "app.conf").write_text("listen = 9090\nworkers = 8\n")
        second = agent(cfg, "run", "sample")
        snaps = agent(cfg, "snapshots", "sample")
        assert isinstance(first, dict) and isinstance(second, dict) and isinstance(snaps, list)
        agent(cfg, "restore", "sample", "--snapshot", first["snapshot"], "--target", str(restored))
        check = agent(cfg, "check", "sample", "--read-data")
        elapsed = time.monotonic() - t0
    got = restored / str(sample).lstrip("/")
    cmp = filecmp.dircmp(before, got)
    mismatches = _diff(cmp)
    print()
    print("backup-agent demo")
    print(f"  first backup   {first['snapshot']}: {first['files_new']} files, "
          f"{first['bytes_uploaded']:,} bytes uploaded")
    print(f"  second backup  {second['snapshot']}: {second['files_changed']} changed, "
          f"{second['files_unchanged']} unchanged, {second['bytes_uploaded']:,} bytes uploaded")
    print(f"  snapshots      {', '.join(s['id'] for s in snaps)}")
    print(f"  check          {check['status']} ({check['snapshots_checked']} snapshots, data re-hashed)")
    print(f"  restore        first snapshot into {restored}")
    if mismatches:
        print(f"  verify         FAILED: {mismatches[:5]}")
        return 1
    print(f"  verify         OK: every file matches the tree as it was at the first backup "
          f"({elapsed:.1f}s in all)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _diff(cmp: filecmp.dircmp) -> list[str]:  # type: ignore[type-arg]
    bad = [*cmp.left_only, *cmp.right_only, *cmp.funny_files]
    _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
    bad += mismatch + errors
    for sub in cmp.subdirs.values():
        bad += _diff(sub)
    return bad


if __name__ == "__main__":
    raise SystemExit(main())
