"""Dumps keep the promise of files jobs (issue 26): no clobbering, no hangs, no orphans, no false
success. Real PostgreSQL and MariaDB (tests/support/databases.py), the real CLI, SeaweedFS behind
the fault proxy; the shared schedule cases through the agent and the cookbook's own library."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from support.databases import mariadb_server, postgres_server

from reliability.lab import AGENT, NODE, Lab, one_line_error
from reliability.report import record

REPO = Path(__file__).resolve().parents[2]
PASSWORD = 'rel:dump"#\\pw x'


def uploads(lab: Lab) -> list[Any]:
    return list(lab.s3.list_multipart_uploads(Bucket=lab.bucket).get("Uploads", []))


def status(lab: Lab, job: str) -> dict[str, Any]:
    return dict(json.loads((lab.state_dir / "status" / f"{job}.json").read_text()))


def leftovers(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if cmd.endswith(f"sleep {marker}"):
            found.append(pid)
    return found


def timed(lab: Lab, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = lab.run(*args)
    return proc, time.monotonic() - t0


def test_restore_never_clobbers_nor_applies_an_unverified_byte(lab: Lab) -> None:
    took: dict[str, float] = {}
    with postgres_server(PASSWORD) as pg, mariadb_server(PASSWORD) as maria:
        # PostgreSQL: a database that already has the table is refused, then replaced on --clean.
        pg.sql("CREATE DATABASE app")
        pg.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, md5(i::text) "
               "FROM generate_series(1, 5000) i", "app")
        lab.job("pg", type="command", preset="postgresql", database="app", host="127.0.0.1", port=pg.port,
                username="postgres", password=PASSWORD)
        assert lab.run("run", "pg").returncode == 0
        pg.sql("CREATE DATABASE busy")
        pg.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'keep')", "busy")
        proc, took["pg refused"] = timed(lab, "restore", "pg", "--into", "busy")
        assert proc.returncode == 2 and "already has 1 table(s) (public.t)" in one_line_error(proc)
        assert pg.sql("SELECT v FROM t", "busy") == "keep"
        proc, took["pg --clean"] = timed(lab, "restore", "pg", "--into", "busy", "--clean")
        assert proc.returncode == 0, proc.stderr
        assert "restore --clean: busy has 1 table(s) (public.t)" in proc.stderr
        assert pg.sql("SELECT count(*) FROM t", "busy") == "5000"

        # MariaDB: the dump's DROP TABLE never runs into a database with tables unless --clean.
        maria.sql("CREATE DATABASE shop; USE shop; CREATE TABLE t (id INT PRIMARY KEY, v TEXT);"
                  "INSERT INTO t SELECT seq, MD5(seq) FROM seq_1_to_20000")
        lab.job("my", type="command", preset="mysql", database="shop", host="127.0.0.1", port=maria.port,
                username="backup", password=PASSWORD, compression="none")
        assert lab.run("run", "my").returncode == 0
        maria.sql("CREATE DATABASE busy; CREATE TABLE busy.t (id INT PRIMARY KEY, v TEXT);"
                  "INSERT INTO busy.t VALUES (1, 'keep')")
        proc, took["mysql refused"] = timed(lab, "restore", "my", "--into", "busy")
        assert proc.returncode == 2 and "already has 1 table(s) (t)" in one_line_error(proc)
        assert maria.sql("SELECT v FROM busy.t") == "keep"
        proc, took["mysql --clean"] = timed(lab, "restore", "my", "--into", "busy", "--clean")
        assert proc.returncode == 0 and "restore --clean: busy has 1 table(s) (t)" in proc.stderr
        assert maria.sql("SELECT count(*) FROM busy.t") == "20000"

        # A dump damaged in its last bytes: no row reaches the database, through --into or a pipe.
        sid = json.loads(lab.run("snapshots", "my", "--json").stdout)[-1]["id"]
        key = f"{NODE}/my/dumps/{sid}.dump"
        body = lab.s3.get_object(Bucket=lab.bucket, Key=key)["Body"].read()
        damage = b"-- damaged at the end\n"
        lab.s3.put_object(Bucket=lab.bucket, Key=key, Body=body[:-len(damage)] + damage)
        maria.sql("CREATE DATABASE empty1; CREATE DATABASE empty2")
        proc, took["corrupt --into"] = timed(lab, "restore", "my", "--into", "empty1")
        assert proc.returncode == 1 and "does not match its sha256" in one_line_error(proc)
        assert maria.sql("SHOW TABLES", "empty1") == ""
        pipe = (f"set -o pipefail; {AGENT} -c {lab.path} restore my --target - | "
                f"mariadb --no-defaults -S {maria.socket} -u root empty2")
        piped = subprocess.run(["bash", "-c", pipe], capture_output=True, text=True, timeout=300)
        assert piped.returncode == 1 and "does not match its sha256" in piped.stderr, piped
        assert maria.sql("SHOW TABLES", "empty2") == ""
    record("dumps.restore_guard", cases=6,
           result="postgresql and mysql presets: restore --into a database that has tables exits 2 with one line "
                  "naming them and changes nothing; --clean prints what it replaces and restores (exit 0, rows "
                  "identical); a dump damaged in its last bytes: restore --into exit 1 and the pipe with set -o "
                  "pipefail exit 1, zero tables in either database",
           measured=", ".join(f"{k} {v:.1f}s" for k, v in took.items()))


def test_command_jobs_end_with_their_command_and_never_succeed_on_nothing(lab: Lab) -> None:
    measured = []
    # A background child holding stdout, no timeout set.
    lab.job("bg", type="command", shell=True, compression="none", command=["echo dumped; sleep 901.25 &"])
    proc, took = timed(lab, "run", "bg")
    assert proc.returncode == 0 and took < 30 and leftovers("901.25") == [], proc.stderr
    measured.append(f"background child: run ended in {took:.1f}s")

    # 300,000 stderr lines, then a 100 MB line without a newline.
    lab.job("noisy", type="command", shell=True, compression="none",
            command=["seq 1 300000 >&2; head -c 100000000 /dev/zero | tr '\\0' x >&2; echo ok"])
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc, took = timed(lab, "run", "noisy")
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stderr) < 64_000 and "more stderr line(s) not logged" in proc.stderr
    # ru_maxrss is the largest child so far; the agent's must stay far below the 100 MB line.
    assert rss_mb < 150 or before / 1024 >= rss_mb, rss_mb
    measured.append(f"stderr flood: log {len(proc.stderr) // 1024} KiB, peak RSS <= {rss_mb:.0f} MB, {took:.1f}s")

    # Zero bytes out, exit 0.
    lab.job("empty", type="command", command=["true"])
    proc = lab.run("run", "empty")
    assert proc.returncode == 1 and "wrote nothing" in one_line_error(proc)
    assert lab.object_keys(f"{NODE}/empty/") == [] and status(lab, "empty")["result"] == "failed"

    # SIGTERM, SIGHUP, SIGINT during the multipart upload.
    codes = []
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        marker = f"902.{int(sig)}"
        lab.job("long", type="command", compression="none",
                command=["sh", "-c", f"head -c 12000000 /dev/urandom; sleep {marker}"])
        run = subprocess.Popen([AGENT, "-c", str(lab.path), "run", "long"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not uploads(lab) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert uploads(lab), "the upload should be under way"
        t0 = time.monotonic()
        run.send_signal(sig)
        _, err = run.communicate(timeout=60)
        assert run.returncode == 128 + sig and f"interrupted by {sig.name}" in err, err
        assert leftovers(marker) == [] and uploads(lab) == [] and lab.object_keys(f"{NODE}/long/") == []
        st = status(lab, "long")
        assert st["result"] == "aborted" and st["exit_code"] == 128 + sig
        codes.append(f"{sig.name} exit {run.returncode} in {time.monotonic() - t0:.1f}s")
    measured.append("; ".join(codes))
    record("dumps.command_ends", cases=6,
           result="a background child holding stdout: run exit 0, the child killed; 300,000 stderr lines and a "
                  "100 MB line without newline: exit 0, log under 64 KB with a count of dropped lines, peak RSS "
                  "under 150 MB; no output: exit 1, nothing stored; SIGTERM, SIGHUP, SIGINT during the upload: "
                  "exit 143/129/130, command group killed, upload aborted, status aborted",
           measured="; ".join(measured))


def test_agent_and_cookbook_read_schedules_and_job_names_alike(lab: Lab, tmp_path: Path) -> None:
    import yaml

    cases = json.loads((REPO / "tests" / "fixtures" / "schedule_cases.json").read_text())
    script = ('require "json"; load ARGV[0]; v = BackupAgentCookbook::Validation; c = JSON.parse(File.read(ARGV[1]));'
              'puts JSON.generate({"schedules" => c["schedules"].map { |s| v.schedule_period(s["text"]) },'
              '"job_names" => c["job_names"].map { |j| v::JOB_NAME.match?(j["name"]) }})')
    ruby = subprocess.run(["ruby", "-e", script, str(REPO / "cookbooks/backup_agent/libraries/validation.rb"),
                           str(REPO / "tests/fixtures/schedule_cases.json")],
                          capture_output=True, text=True, timeout=60, check=True)
    cookbook = json.loads(ruby.stdout)
    disagree = []
    base = yaml.safe_load(lab.path.read_text())
    config = tmp_path / "cases.yaml"

    def agent_accepts(jobs: dict[str, Any]) -> bool:
        config.write_text(yaml.safe_dump({**base, "jobs": jobs}))
        proc = subprocess.run([AGENT, "-c", str(config), "validate"], capture_output=True, text=True, timeout=60)
        assert proc.returncode in (0, 2) and len(proc.stderr.strip().splitlines()) <= 1, proc.stderr
        return proc.returncode == 0

    for case, theirs in zip(cases["schedules"], cookbook["schedules"], strict=True):
        ours = agent_accepts({"j": {"type": "command", "command": ["true"], "schedule": case["text"]}})
        if ours != (case["period"] is not None) or theirs != case["period"]:
            disagree.append(case["text"])
    for case, theirs in zip(cases["job_names"], cookbook["job_names"], strict=True):
        ours = agent_accepts({case["name"]: {"type": "command", "command": ["true"]}})
        if ours != case["valid"] or theirs != case["valid"]:
            disagree.append(case["name"])
    assert disagree == []
    total = len(cases["schedules"]) + len(cases["job_names"])
    record("dumps.schedule_drift", cases=total,
           result="every case of tests/fixtures/schedule_cases.json: `backup-agent validate` (exit 0, or 2 with one "
                  "line) and the cookbook's Validation library accept and refuse the same schedule strings (with "
                  "the same period) and job names, among them every 400 days, every 9999999999 seconds, no-break "
                  "spaces, hour 24-29 and a job name ending in a newline")
