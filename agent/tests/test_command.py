"""`command` jobs against a real SeaweedFS: streaming, compression, failures that leave nothing
behind, restore to stdout / file / a restore command, and the presets' argv and secret files."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backup_agent import config
from backup_agent.errors import ConfigError
from backup_agent.jobs import command, presets
from backup_agent.storage.memory import MemoryStore
from backup_agent.storage.store import Unreachable

IS_ROOT = os.geteuid() == 0
AGENT = str(Path(sys.executable).parent / "backup-agent")


def uploads(agent: Any) -> list[dict[str, Any]]:
    return list(agent.s3.list_multipart_uploads(Bucket=agent.bucket).get("Uploads", []))


def assert_nothing_left(agent: Any, job: str) -> None:
    assert agent.object_keys(f"test-node/{job}/") == []  # neither a manifest nor a dump
    assert uploads(agent) == []


def restore_bytes(agent: Any, job: str) -> bytes:
    proc = subprocess.run([AGENT, "-c", str(agent.path), "restore", job, "--target", "-"],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def manifest(agent: Any, job: str, sid: str) -> list[dict[str, Any]]:
    key = f"test-node/{job}/snapshots/{sid}.json.gz"
    body = agent.s3.get_object(Bucket=agent.bucket, Key=key)["Body"].read()
    return [json.loads(line) for line in gzip.decompress(body).splitlines()]


# --- pure parts ----------------------------------------------------------------------------------

def test_part_sizes_grow_to_fit_the_part_limit() -> None:
    assert command.part_size(1) == 8 << 20
    assert command.part_size(1000) == 8 << 20
    assert command.part_size(1001) == 16 << 20
    assert sum(command.part_size(n) for n in range(1, 10001)) > 400 * 10**9


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_codec_roundtrip_and_truncation(kind: str) -> None:
    data = os.urandom(100_000) + b"x" * 300_000
    c = command.compressor(kind)
    stored = c.compress(data[:1000]) + c.compress(data[1000:]) + c.flush()
    d = command.Decoder(kind)
    assert d.feed(stored) + d.finish() == data
    if kind != "none":
        d = command.Decoder(kind)
        d.feed(stored[: len(stored) // 2])
        with pytest.raises(ValueError, match="ends early"):
            d.finish()


def test_postgresql_argv_keeps_the_password_off_the_command_line() -> None:
    opts = {"preset": "postgresql", "database": "-app=x", "tables": ["public.t1"], "schemas": ["s"],
            "host": "db.internal", "port": 5433, "username": "backup", "password": "pa:ss\\word"}
    p = presets.dump_argv(opts, "/tmp/x/pgpass", we_compress=True)
    assert p.argv[:3] == ["pg_dump", "-Fc", "--no-password"]
    assert "-Z0" in p.argv and "--schema=s" in p.argv and "--table=public.t1" in p.argv
    assert p.argv[-1] == "--dbname=dbname='-app=x'"
    # PGPASSWORD empty: an inherited one would beat PGPASSFILE, i.e. the configured password.
    assert p.env == {"PGHOST": "db.internal", "PGPORT": "5433", "PGUSER": "backup", "PGPASSFILE": "/tmp/x/pgpass",
                     "PGPASSWORD": ""}
    assert not any("pa:ss" in a for a in p.argv)
    assert presets.pgpass_line("pa:ss\\word") == "*:*:*:*:pa\\:ss\\\\word\n"
    assert "-Z0" not in presets.dump_argv(opts, None, we_compress=False).argv
    r = presets.restore_argv(opts, None, "app's copy")
    assert r.argv == ["pg_restore", "--no-password", "--single-transaction", "--dbname=dbname='app\\'s copy'"]


def test_mysql_argv_uses_an_option_file_first() -> None:
    opts = {"preset": "mysql", "database": "shop", "tables": ["a", "-b"], "host": "/run/mysqld/mysqld.sock",
            "username": "backup", "password": 'p"#\\w'}
    argv = presets.dump_argv(opts, "/tmp/x/my.cnf", we_compress=True, path="/nonexistent").argv
    assert argv[1] == "--defaults-extra-file=/tmp/x/my.cnf"
    assert "--single-transaction" in argv and "--routines" in argv
    assert "--socket=/run/mysqld/mysqld.sock" in argv and "--user=backup" in argv
    assert argv[-4:] == ["--", "shop", "a", "-b"]
    assert presets.mysql_defaults('p"#\\w') == '[client]\npassword="p\\"#\\\\w"\n'
    assert presets.restore_argv(opts, None, "copy", path="/nonexistent").argv[-1] == "--database=copy"


def test_secret_file_is_private_and_removed() -> None:
    opts = {"preset": "postgresql", "database": "d", "password": "s3cret"}
    with presets.secret_file(opts, None) as path:
        assert path is not None
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert Path(path).read_text() == "*:*:*:*:s3cret\n"
    assert not os.path.exists(path)
    with presets.secret_file({"preset": "postgresql", "database": "d"}, None) as none:
        assert none is None


@pytest.mark.parametrize(("spec", "message"), [
    ({"preset": "postgresql", "database": "d", "command": ["x"]}, "jobs.j.command: not used with preset"),
    ({"command": ["x"], "database": "d"}, "jobs.j.database: only used with a preset"),
    ({"preset": "mysql", "database": "d", "schemas": ["s"]}, "jobs.j.schemas: MySQL has no schemas"),
    ({"preset": "postgresql", "database": "d", "password": "a\nb"}, "jobs.j.password: must not contain"),
    ({"command": ["x"], "compression": "xz"}, "jobs.j.compression: must be one of"),
])
def test_bad_command_job_config(spec: dict[str, Any], message: str) -> None:
    data = {"storage": {"bucket": "b-1"}, "jobs": {"j": {"type": "command", **spec}}}
    with pytest.raises(ConfigError) as err:
        config.from_dict(data, "config.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_config_through_the_cli_is_one_line_exit_2(agent: Any) -> None:
    agent.job("j", type="command", preset="postgresql", database="d", shell=True)
    proc = agent.run("validate")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"backup-agent: {agent.path}: jobs.j.shell: not used with preset 'postgresql' "
                                   "(the preset builds the command); remove one of them")


class PartThreeFails(MemoryStore):
    """A store whose multipart uploads refuse part 3, to watch StreamUpload."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[int] = []
        self.aborted = 0

    def start_multipart(self, key: str, *, storage_class: str | None = None) -> Any:
        upload = super().start_multipart(key, storage_class=storage_class)
        send, abort = upload.upload_part, upload.abort

        def part(number: int, data: Any, sha256: str) -> None:
            self.bodies.append(id(data))
            if number == 3:
                raise Unreachable("UploadPart: SlowDown: no", code="SlowDown", key=key)
            send(number, data, sha256)

        def aborted() -> None:
            self.aborted += 1
            abort()

        upload.upload_part, upload.abort = part, aborted  # type: ignore[method-assign]
        return upload


def test_stream_upload_failure_surfaces_and_aborts() -> None:
    store = PartThreeFails()
    up = command.StreamUpload(store, "k", None)
    chunk = b"x" * (3 << 20)
    with pytest.raises(Unreachable):
        for _ in range(40):
            up.write(chunk)
    up.abort()
    assert store.calls == [("start_multipart", "k")] and store.aborted == 1 and not store.uploads
    # Parts reuse the same few buffers instead of allocating one per part.
    assert len(set(store.bodies)) <= command.IN_FLIGHT + 1


# --- against SeaweedFS ---------------------------------------------------------------------------

@pytest.mark.parametrize(("compression", "size"), [("gzip", 20 << 20), ("zstd", 20 << 20), ("none", 1000)])
def test_dump_roundtrip(agent: Any, tmp_path: Path, compression: str, size: int) -> None:
    # Half random, half repetitive: big enough for several parts however well it compresses.
    data = os.urandom(size // 2) + bytes(range(256)) * (size // 512)
    src = tmp_path / "data.bin"
    src.write_bytes(data)
    agent.job("dump", type="command", command=["cat", str(src)], compression=compression)
    out = agent.json("run", "dump")
    assert out["status"] == "success" and out["snapshot"]
    assert out["bytes_raw"] == len(data) and out["bytes_total"] == len(data)
    assert out["bytes_uploaded"] == out["bytes_stored"] > 0
    sid = out["snapshot"]
    suffix = {"gzip": ".gz", "zstd": ".zst", "none": ""}[compression]
    lines = manifest(agent, "dump", sid)
    assert lines[0]["type"] == "command" and lines[0]["compression"] == compression
    entry = lines[1]
    assert entry["path"] == f"/dump.dump{suffix}" and entry["object"] == f"dumps/{sid}.dump{suffix}"
    stored = agent.s3.get_object(Bucket=agent.bucket, Key=f"test-node/dump/{entry['object']}")["Body"].read()
    assert len(stored) == entry["size"] and hashlib.sha256(stored).hexdigest() == entry["sha256"]
    assert lines[2]["summary"]["bytes_raw"] == len(data)
    assert uploads(agent) == []

    assert restore_bytes(agent, "dump") == data
    if compression != "gzip":
        return  # the other targets do not depend on the codec
    restored = tmp_path / "restored.bin"
    proc2 = agent.run("restore", "dump", "--target", str(restored))
    assert proc2.returncode == 0, proc2.stderr
    assert restored.read_bytes() == data and stat.S_IMODE(restored.stat().st_mode) == 0o600
    assert agent.json("check", "dump", "--read-data")["status"] == "ok"


def test_restore_into_a_directory_and_through_restore_command(agent: Any, tmp_path: Path) -> None:
    sink = tmp_path / "sink"
    sink.mkdir()
    agent.job("cfg", type="command", shell=True, command=["printf '%s\\n' \"$GREETING\""],
              env={"GREETING": "hello world"},
              restore_command=["sh", "-c", f"cat > {sink}/{{into}}.out"])
    assert agent.json("run", "cfg")["bytes_raw"] == len("hello world\n")
    proc = agent.run("restore", "cfg", "--target", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cfg.dump").read_text() == "hello world\n"
    proc = agent.run("restore", "cfg", "--into", "copy")
    assert proc.returncode == 0, proc.stderr
    assert (sink / "copy.out").read_text() == "hello world\n"
    proc = agent.run("restore", "cfg", "--target", str(tmp_path), "--path", "/x")
    assert proc.returncode == 2 and "--path" in proc.stderr


def test_into_needs_a_restore_tool(agent: Any) -> None:
    agent.job("plain", type="command", command=["echo", "x"])
    proc = agent.run("restore", "plain", "--into", "db")
    assert proc.returncode == 2 and "restore_command" in proc.stderr


def test_failure_midstream_aborts_the_upload(agent: Any) -> None:
    # 20 MB before failing: parts are already in the store when the command exits non-zero.
    agent.job("bad", type="command", compression="none",
              command=["sh", "-c", "head -c 20000000 /dev/urandom; echo 'dump broke' >&2; exit 3"])
    proc = agent.run("run", "bad")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "sh exited with status 3: dump broke" in last and "no snapshot made" in last
    assert "sh: dump broke" in proc.stderr  # the command's stderr is in the log
    assert_nothing_left(agent, "bad")
    status = json.loads((Path(agent.data["state_dir"]) / "status" / "bad.json").read_text())
    assert status["result"] == "failed" and "exited with status 3" in status["error"]


def test_timeout_kills_the_whole_command_and_aborts(agent: Any) -> None:
    marker = "617.25"  # an unusual sleep length to find leftover processes by
    agent.job("slow", type="command", compression="none", timeout=3,
              command=["sh", "-c", f"head -c 12000000 /dev/urandom; sleep {marker}"])
    started = time.monotonic()
    proc = subprocess.Popen([AGENT, "-c", str(agent.path), "run", "slow"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen_upload = False
    while proc.poll() is None and time.monotonic() - started < 60:
        seen_upload = seen_upload or bool(uploads(agent))
        time.sleep(0.2)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert time.monotonic() - started < 30
    assert "timed out after 3s" in err.strip().splitlines()[-1]
    assert seen_upload, "the multipart upload should have been visible while the command slept"
    assert_nothing_left(agent, "slow")
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).endswith(f"sleep {marker}")]
    assert leftovers == []


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_killed_by_a_signal(agent: Any) -> None:
    agent.job("sig", type="command", command=["sh", "-c", "echo partial; kill -KILL $$"])
    proc = agent.run("run", "sig")
    assert proc.returncode == 1 and "killed by SIGKILL" in proc.stderr
    assert_nothing_left(agent, "sig")


def test_missing_program_fails_cleanly(agent: Any) -> None:
    agent.job("nope", type="command", command=["/nonexistent/dumper"])
    proc = agent.run("run", "nope", "--json")
    assert proc.returncode == 1
    assert "cannot start /nonexistent/dumper" in json.loads(proc.stdout)["error"]
    assert_nothing_left(agent, "nope")


@pytest.mark.skipif(not IS_ROOT, reason="running a command as another user needs root")
def test_runs_as_another_user_without_the_agents_credentials(agent: Any) -> None:
    agent.job("who", type="command", user="nobody", shell=True,
              command=["id -un; echo ${AWS_SECRET_ACCESS_KEY:-none}; pwd"])
    proc = agent.run("run", "who", env={"AWS_SECRET_ACCESS_KEY": "agent-secret"})
    assert proc.returncode == 0, proc.stderr
    home = pwd.getpwnam("nobody").pw_dir
    assert restore_bytes(agent, "who").decode().splitlines() == [
        "nobody", "none", home if os.path.isdir(home) else "/"]
    agent.job("who2", type="command", user="no-such-user-here", command=["true"])
    proc = agent.run("run", "who2")
    assert proc.returncode == 2 and "jobs.who2.user: no such user" in proc.stderr


def test_empty_output_fails_unless_allowed(agent: Any) -> None:
    agent.job("empty", type="command", command=["true"], compression="none")
    proc = agent.run("run", "empty", "--json")
    assert proc.returncode == 1, proc.stderr
    assert "wrote nothing" in json.loads(proc.stdout)["error"] and "allow_empty" in proc.stderr
    assert_nothing_left(agent, "empty")
    status = json.loads((Path(agent.data["state_dir"]) / "status" / "empty.json").read_text())
    assert status["result"] == "failed" and status["last_snapshot"] is None

    agent.job("empty", type="command", command=["true"], compression="none", allow_empty=True)
    out = agent.json("run", "empty")
    assert out["bytes_raw"] == 0 and any("wrote nothing" in w for w in out["warnings"])
    assert restore_bytes(agent, "empty") == b""


def _leftovers(marker: str) -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).endswith(f"sleep {marker}")]


def test_background_child_holding_stdout_does_not_hold_the_job(agent: Any) -> None:
    marker = "618.5"
    # The shell exits at once; its background sleep keeps the pipe open (no timeout is set).
    agent.job("bg", type="command", compression="none", shell=True,
              command=[f"echo dumped; sleep {marker} & echo done >&2"])
    started = time.monotonic()
    proc = agent.run("run", "bg", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 30
    assert "still run" in proc.stderr and "killing them" in proc.stderr
    assert _leftovers(marker) == []
    assert restore_bytes(agent, "bg") == b"dumped\n"


def test_command_jobs_have_a_default_timeout(tmp_path: Path) -> None:
    cfg = config.from_dict({"state_dir": str(tmp_path), "storage": {"bucket": "bkt"},
                            "jobs": {"d": {"type": "command", "command": ["true"]}}})
    job = command.CommandJob(cfg, cfg.jobs["d"], store=MemoryStore())
    assert job.timeout == command.DEFAULT_TIMEOUT == 6 * 3600
    # The typed job carries it too: the daemon's own deadline (timeout + 60 s) applies as well.
    assert cfg.jobs["d"].timeout == 6 * 3600
    files = config.from_dict({"state_dir": str(tmp_path), "storage": {"bucket": "bkt"},
                              "jobs": {"f": {"type": "files", "paths": ["/etc"]}}})
    assert files.jobs["f"].timeout is None


def test_stderr_flood_is_rate_limited_and_read_in_chunks(agent: Any, tmp_path: Path) -> None:
    # 200,000 lines, then one 100 MB line without a newline: the log stays small and the agent's
    # memory stays far below the line's size.
    agent.job("noisy", type="command", compression="none", shell=True,
              command=["seq 1 200000 >&2; head -c 100000000 /dev/zero | tr '\\0' x >&2; echo ok"])
    script = ("import resource, subprocess, sys; "
              "p = subprocess.run(sys.argv[1:], capture_output=True); "
              "sys.stdout.write(str(p.returncode) + ' ' + str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
              " + ' ' + str(len(p.stderr)) + '\\n'); sys.stdout.write(p.stderr.decode(errors='replace')[-3000:])")
    out = subprocess.run([sys.executable, "-c", script, AGENT, "-c", str(agent.path), "run", "noisy"],
                         capture_output=True, text=True, timeout=300).stdout
    head, _, tail = out.partition("\n")
    code, maxrss_kb, log_bytes = map(int, head.split())
    assert code == 0, tail
    assert log_bytes < 64_000, "every stderr line became a log line"
    assert maxrss_kb < 150_000, f"the agent held the long line: {maxrss_kb} kB"
    assert "more stderr line(s) not logged" in tail and "[line cut]" in tail
    assert restore_bytes(agent, "noisy") == b"ok\n"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_to_run_stops_the_command_aborts_and_records(agent: Any, sig: signal.Signals) -> None:
    marker = f"619.{int(sig)}"
    agent.job("long", type="command", compression="none",
              command=["sh", "-c", f"head -c 12000000 /dev/urandom; sleep {marker}"])
    proc = subprocess.Popen([AGENT, "-c", str(agent.path), "run", "long"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not uploads(agent) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert uploads(agent), "the multipart upload should be under way"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert f"interrupted by {sig.name}" in err and "Traceback" not in err
    assert _leftovers(marker) == []
    assert_nothing_left(agent, "long")
    status = json.loads((Path(agent.data["state_dir"]) / "status" / "long.json").read_text())
    assert status["result"] == "aborted" and status["exit_code"] == 128 + sig
    assert sig.name in status["error"]


def test_retention_prunes_old_dumps(agent: Any) -> None:
    agent.job("r", type="command", command=["echo", "x"], retention={"keep_last": 1})
    first = agent.json("run", "r")["snapshot"]
    time.sleep(1.1)  # snapshot ids have second resolution
    second = agent.json("run", "r")["snapshot"]
    out = agent.json("prune", "r")
    assert out["forget"] == [first] and out["objects_deleted"] == 1
    assert [k.rsplit("/", 1)[1] for k in agent.object_keys() if "/dumps/" in k] == [f"{second}.dump.gz"]


def test_corrupt_dump_is_refused(agent: Any, tmp_path: Path) -> None:
    agent.job("c", type="command", command=["echo", "precious data"], compression="none")
    sid = agent.json("run", "c")["snapshot"]
    agent.s3.put_object(Bucket=agent.bucket, Key=f"test-node/c/dumps/{sid}.dump", Body=b"precious dat4\n")
    target = tmp_path / "out.dump"
    proc = agent.run("restore", "c", "--target", str(target))
    assert proc.returncode == 1 and "does not match its sha256" in proc.stderr
    assert not target.exists() and list(tmp_path.glob(".*")) == []
    assert agent.run("check", "c", "--read-data").returncode == 1


def test_a_dump_restored_to_a_file_never_writes_through_what_was_there(agent: Any, tmp_path: Path) -> None:
    """A hard link at the old temp name and a symlink at the target, both to files outside:
    the restore writes neither, and the target becomes the dump itself."""
    agent.job("c", type="command", command=["echo", "precious data"], compression="none")
    agent.json("run", "c")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me\n")
    (outside / "other").write_text("me too\n")
    at = tmp_path / "at"
    at.mkdir()
    os.link(outside / "victim", at / ".out.dump.restore-tmp")
    (at / "out.dump").symlink_to(outside / "other")
    proc = agent.run("restore", "c", "--target", str(at / "out.dump"))
    assert proc.returncode == 0, proc.stderr
    assert (outside / "victim").read_text() == "keep me\n" and (outside / "other").read_text() == "me too\n"
    assert not (at / "out.dump").is_symlink() and (at / "out.dump").read_text() == "precious data\n"
    assert sorted(p.name for p in at.iterdir()) == [".out.dump.restore-tmp", "out.dump"]


def test_a_corrupt_dump_reaches_no_reader(agent: Any, tmp_path: Path) -> None:
    # 3 MB whose last bytes are damaged in the store: neither a pipe reader nor a restore_command
    # may see a single byte of it.
    sink = tmp_path / "sink"
    agent.job("c3", type="command", compression="none", shell=True, command=["seq 1 400000"],
              restore_command=["sh", "-c", f"cat > {sink}; echo clean=$BACKUP_AGENT_CLEAN >> {sink}"])
    sid = agent.json("run", "c3")["snapshot"]
    good = restore_bytes(agent, "c3")
    key = f"test-node/c3/dumps/{sid}.dump"
    agent.s3.put_object(Bucket=agent.bucket, Key=key, Body=good[:-7] + b"999999\n")
    # The documented pipe, with pipefail: the reader gets nothing, the pipeline fails.
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; {AGENT} -c {agent.path} restore c3 --target - | wc -c"],
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 1 and piped.stdout.strip() == "0", piped
    assert "does not match its sha256" in piped.stderr
    proc = agent.run("restore", "c3", "--into", "db1")
    assert proc.returncode == 1 and "does not match its sha256" in proc.stderr
    assert not sink.exists(), "the restore_command was started before the dump was verified"
    agent.s3.put_object(Bucket=agent.bucket, Key=key, Body=good)
    assert agent.run("restore", "c3", "--into", "db1", "--clean").returncode == 0
    assert sink.read_bytes() == good + b"clean=1\n"


def test_restore_to_a_closed_stdout_is_one_line(agent: Any) -> None:
    agent.job("so", type="command", command=["echo", "x"])
    agent.json("run", "so")
    proc = subprocess.run(f"exec {AGENT} -c {agent.path} restore so --target - >&-", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("backup-agent: --target -: standard output is closed or not writable; "
                                   "redirect it to a file or a pipe, or give --target FILE")
    proc = agent.run("restore", "so", "--target", "/tmp", "--clean")
    assert proc.returncode == 2 and "--clean: only with --into" in proc.stderr


# --- Glacier, against moto in server mode (SeaweedFS has no archive semantics) --------------------

@pytest.fixture
def moto_agent(tmp_path: Path) -> Iterator[tuple[Path, Any, str]]:
    import logging

    import boto3
    import requests
    import yaml
    from moto.server import ThreadedMotoServer
    from support.seaweedfs import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"

    def restores(progression: str) -> None:
        # moto's clock for RestoreObject: "manual" keeps it pending, "immediate" finishes it.
        body = {"model_name": "s3::keyrestore", "transition": {"progression": progression, "times": 10**9}}
        requests.post(f"{endpoint}/moto-api/state-manager/set-transition", data=json.dumps(body),
                      timeout=10).raise_for_status()

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket="cold-dumps")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "node": "node", "state_dir": str(tmp_path / "state"),
        "storage": {"bucket": "cold-dumps", "endpoint_url": endpoint, "access_key_id": "testing",
                    "secret_access_key": "testing"},
        "jobs": {"cold": {"type": "command", "command": ["echo", "frozen dump"], "storage_class": "GLACIER",
                          "restore_tier": "Bulk"}}}))
    restores("manual")
    try:
        yield path, restores, "cold-dumps"
    finally:
        server.stop()


def test_archived_dump_is_thawed_before_restore(moto_agent: tuple[Path, Any, str], tmp_path: Path) -> None:
    path, restores, _ = moto_agent
    run = subprocess.run([AGENT, "-c", str(path), "run", "cold", "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    target = tmp_path / "cold.dump"
    first = subprocess.run([AGENT, "-c", str(path), "restore", "cold", "--target", str(target)],
                           capture_output=True, text=True)
    assert first.returncode == 75, first.stderr
    assert "GLACIER" in first.stderr and "Bulk" in first.stderr and not target.exists()
    restores("immediate")
    second = subprocess.run([AGENT, "-c", str(path), "restore", "cold", "--target", str(target)],
                            capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert target.read_text() == "frozen dump\n"
