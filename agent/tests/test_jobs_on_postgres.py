"""The jobs through the real CLI on a database destination (issue #21, item 4): `storage.type:
postgresql` with a dsn without password and `storage.password` (the data bag's db_password),
against a real PostgreSQL (tests/support/databases.py, one server per module, a database per
test). A files job (one file above the multipart threshold) and a command job go through run,
snapshots, restore, check --read-data, an unchanged rerun, prune with garbage collection
(counted in the database's own tables) and drill; then the failures: a wrong password, a dsn
that carries one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.databases import Postgres, postgres_server
from support.treeutil import capture

AGENT = str(Path(sys.executable).parent / "backup-agent")
PASSWORD = "pg-Pa55:w0rd'with\\odd chars"
CHUNK_MB = 5
BIG = 11 << 20  # three parts of multipart_chunk_mb


@pytest.fixture(scope="module")
def server() -> Iterator[Postgres]:
    with postgres_server(PASSWORD) as pg:
        yield pg


@dataclass
class Cli:
    path: Path
    data: dict[str, Any]
    server: Postgres
    db: str

    def job(self, name: str, **spec: Any) -> None:
        self.data["jobs"][name] = spec
        self.path.write_text(yaml.safe_dump(self.data))

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run([AGENT, "-c", str(self.path), *args], capture_output=True, timeout=300, check=False)
        assert PASSWORD.encode() not in proc.stdout + proc.stderr, args
        return proc

    def ok(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        proc = self.run(*args)
        assert proc.returncode == 0, (args, proc.returncode, proc.stderr.decode(errors="replace"))
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def snapshot_ids(self, job: str) -> list[str]:
        return [s["id"] for s in self.json("snapshots", job)]

    def objects(self, job: str) -> dict[str, int]:
        """key → size of the job's objects, read from the database itself."""
        out = self.server.sql("SELECT key || chr(9) || size FROM backup_agent.objects "
                              f"WHERE key LIKE 'node/{job}/%' ORDER BY key", self.db)
        return {k: int(s) for k, s in (line.split("\t") for line in out.splitlines() if line)}


def make_cli(server: Postgres, tmp: Path, db: str, password: str = PASSWORD, dsn: str | None = None) -> Cli:
    data: dict[str, Any] = {
        "node": "test-node",
        "state_dir": str(tmp / "state"),
        "log_level": "WARNING",
        "storage": {"type": "postgresql", "dsn": dsn or f"host=127.0.0.1 port={server.port} dbname={db} user=postgres",
                    "password": password, "prefix": "node", "multipart_chunk_mb": CHUNK_MB},
        "jobs": {},
    }
    cli = Cli(tmp / "config.yaml", data, server, db)
    cli.path.write_text(yaml.safe_dump(data))
    return cli


@pytest.fixture
def cli(server: Postgres, tmp_path: Path) -> Cli:
    db = f"t_{uuid.uuid4().hex[:12]}"
    server.sql(f"CREATE DATABASE {db}")
    return make_cli(server, tmp_path, db)


def make_tree(root: Path) -> None:
    (root / "sub dir").mkdir(parents=True)
    (root / "small.txt").write_text("hello\n")
    (root / "sub dir" / "ünïcødé.bin").write_bytes(os.urandom(70_000))
    (root / "sub dir" / "ünïcødé.bin").chmod(0o600)
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "empty").write_bytes(b"")
    (root / "big.bin").write_bytes(os.urandom(BIG))
    (root / "link").symlink_to("small.txt")


def test_files_job(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    state = capture(src)
    cli.job("data", type="files", paths=[str(src)], retention={"keep_last": 1})

    first = cli.json("run", "data")
    assert first["status"] == "success" and first["files_failed"] == 0
    assert first["files_new"] >= 5 and first["bytes_uploaded"] >= BIG
    assert cli.snapshot_ids("data") == [first["snapshot"]]
    assert sum(cli.objects("data").values()) >= BIG  # the bytes are in the database
    # A database has no multipart threshold: the pack holding big.bin's chunks (incompressible,
    # so about BIG bytes) is one object in one transaction, held as rows of the store's 4 MiB
    # chunks (nothing holds more than one chunk in memory).
    rows = cli.server.sql("SELECT max(n) FROM (SELECT count(*) AS n FROM backup_agent.chunks c JOIN "
                          "backup_agent.objects o ON o.id = c.id WHERE o.key LIKE '%/packs/%' GROUP BY o.id) AS per",
                          cli.db)
    assert int(rows) == 3, rows

    target = tmp_path / "restored"
    cli.ok("restore", "data", "--target", str(target))
    assert capture(target / str(src).lstrip("/")) == state
    cli.ok("check", "data", "--read-data")

    time.sleep(1.1)  # snapshot ids have second resolution
    second = cli.json("run", "data")
    assert second["status"] == "success" and second["snapshot"] != first["snapshot"]
    assert second["bytes_uploaded"] == 0
    assert second["files_new"] == second["files_changed"] == 0
    assert second["files_unchanged"] == first["files_new"]

    # A third run after big.bin changed: the first two snapshots' big.bin is then garbage.
    time.sleep(1.1)
    (src / "big.bin").write_bytes(os.urandom(BIG))
    state = capture(src)
    third = cli.json("run", "data")
    assert third["status"] == "success" and third["files_changed"] == 1
    assert cli.snapshot_ids("data") == [first["snapshot"], second["snapshot"], third["snapshot"]]

    before = cli.objects("data")
    pruned = cli.json("prune", "data")
    assert sorted(pruned["forget"]) == sorted([first["snapshot"], second["snapshot"]])
    assert cli.snapshot_ids("data") == [third["snapshot"]]
    after = cli.objects("data")
    gone = set(before) - set(after)
    assert gone and set(after) <= set(before), "prune collected nothing"
    assert sum(before[k] for k in gone) >= BIG // 2, "the old big.bin's data is still in the database"

    target2 = tmp_path / "restored-after-prune"
    cli.ok("restore", "data", "--target", str(target2))
    assert capture(target2 / str(src).lstrip("/")) == state
    cli.ok("check", "data", "--read-data")

    drill = cli.ok("drill", "data", "--json")
    out = json.loads(drill.stdout)
    assert out["snapshot"] == third["snapshot"] and out["files_checked"] >= 2


def test_command_job(cli: Cli, tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(BIG))
    seen = tmp_path / "seen"
    # The command records what the process list and its own environment hold while the run is going.
    cli.job("dump", type="command", retention={"keep_last": 1},
            command=["sh", "-c", f"ps axww -o args > '{seen}.ps'; env > '{seen}.env'; "
                                 f"printf 'dump of %s\\n' test; cat '{payload}'"])
    expected = b"dump of test\n" + payload.read_bytes()

    first = cli.json("run", "dump")
    assert first["status"] == "success" and first["bytes_raw"] == len(expected)
    for f in (f"{seen}.ps", f"{seen}.env"):
        text = Path(f).read_bytes()
        assert text and PASSWORD.encode() not in text, f
    assert b"backup-agent" in Path(f"{seen}.ps").read_bytes()
    # The dump is streamed: it went up as a multipart upload of multipart_chunk_mb parts.
    parts = cli.server.sql("SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'parts'", cli.db)
    assert int(parts) >= 2, parts
    assert cli.snapshot_ids("dump") == [first["snapshot"]]
    assert cli.ok("restore", "dump", "--target", "-").stdout == expected
    cli.ok("check", "dump", "--read-data")

    # A second run of another dump: the first one's data becomes garbage once forgotten.
    time.sleep(1.1)
    payload.write_bytes(os.urandom(BIG))
    expected = b"dump of test\n" + payload.read_bytes()
    before_second = cli.objects("dump")
    second = cli.json("run", "dump")
    assert second["status"] == "success" and second["snapshot"] != first["snapshot"]
    assert cli.snapshot_ids("dump") == [first["snapshot"], second["snapshot"]]

    before = cli.objects("dump")
    pruned = cli.json("prune", "dump")
    assert pruned["forget"] == [first["snapshot"]]
    assert cli.snapshot_ids("dump") == [second["snapshot"]]
    after = cli.objects("dump")
    gone = set(before) - set(after)
    assert gone and gone <= set(before_second), "prune removed something of the kept snapshot"
    assert sum(before[k] for k in gone) >= BIG // 2, "the forgotten dump's data is still in the database"
    assert cli.ok("restore", "dump", "--target", "-").stdout == expected

    drill = cli.ok("drill", "dump", "--json")
    assert json.loads(drill.stdout)["bytes_checked"] >= len(expected) // 2


def test_a_wrong_password_fails_in_one_line_without_it(server: Postgres, tmp_path: Path) -> None:
    db = f"t_{uuid.uuid4().hex[:12]}"
    server.sql(f"CREATE DATABASE {db}")
    wrong = "wrong-" + PASSWORD
    cli = make_cli(server, tmp_path, db, password=wrong)
    src = tmp_path / "src"
    make_tree(src)
    cli.job("data", type="files", paths=[str(src)])
    cli.job("dump", type="command", command=["printf", "x"])
    for args in (("run", "data"), ("run", "dump", "--json"), ("snapshots", "data"),
                 ("restore", "data", "--target", str(tmp_path / "r")), ("check", "data", "--read-data"),
                 ("prune", "data"), ("drill", "data")):
        proc = cli.run(*args)
        stderr = proc.stderr.decode(errors="replace")
        assert proc.returncode == 1, (args, proc.returncode, stderr)  # CONTRACT: the job failed
        assert "Traceback" not in stderr, (args, stderr)
        assert wrong.encode() not in proc.stdout + proc.stderr, args
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (args, stderr)
        assert lines[0].startswith("backup-agent: ") and "password authentication failed" in lines[0], (args, stderr)
        if "--json" in args:
            out = json.loads(proc.stdout)
            assert out["status"] == "failed" and out["snapshot"] is None
            assert "password" in out["error"] and "\n" not in out["error"]
    assert not (tmp_path / "r").exists()
    # Nothing half-done is visible: no backup_agent objects (the schema may not even exist).
    exists = server.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'backup_agent'", db)
    if exists == "1":
        assert server.sql("SELECT count(*) FROM backup_agent.objects", db) == "0"


def test_a_dsn_with_a_password_is_a_config_error(server: Postgres, tmp_path: Path) -> None:
    cli = make_cli(server, tmp_path, "x",
                   dsn=f"host=127.0.0.1 port={server.port} dbname=x user=postgres password=hunter2x")
    cli.job("dump", type="command", command=["printf", "x"])
    for args in (("run", "dump"), ("run", "dump", "--json"), ("snapshots", "dump"), ("validate",)):
        proc = cli.run(*args)
        stderr = proc.stderr.decode(errors="replace")
        assert proc.returncode == 2, (args, proc.returncode, stderr)
        assert stderr.count("\n") == 1 and "Traceback" not in stderr, (args, stderr)
        assert "storage.dsn" in stderr and str(cli.path) in stderr, (args, stderr)
        assert b"hunter2x" not in proc.stdout + proc.stderr, args
