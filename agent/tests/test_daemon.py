"""The daemon as a real process against SeaweedFS: scheduled snapshots, SIGHUP reloads (good
and bad), catch-up after downtime, no overlap, and SIGTERM while a run is going (it finishes
within stop_timeout, or is aborted cleanly without a visible snapshot)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import AGENT
from support.httpreceiver import Receiver
from support.waiting import wait_for

UUID = "0b6f1e0a-3c1d-4d7e-8f5a-9e2b7c4d1f00"


class Daemon:
    """`backup-agent daemon` in the background, its stderr (and its runs') in a file."""

    def __init__(self, agent: Any, tmp_path: Path) -> None:
        self.log_path = tmp_path / "daemon.log"
        self.proc = subprocess.Popen([AGENT, "-c", str(agent.path), "daemon"], stdout=subprocess.DEVNULL,
                                     stderr=self.log_path.open("wb"), env=os.environ.copy())

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 30, count: int = 1) -> None:
        wait_for(lambda: self.log.count(text) >= count or self.proc.poll() is not None, timeout, repr(text))
        assert self.log.count(text) >= count, f"daemon exited ({self.proc.returncode}):\n{self.log}"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[[Any], Daemon]]:
    started: list[Daemon] = []

    def start(agent: Any) -> Daemon:
        d = Daemon(agent, tmp_path)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


class DelayProxy:
    """A TCP proxy in front of SeaweedFS that holds every new connection for `delay` seconds,
    to make a run slow (or hang) at will."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.delay = 0.0
        self.closing = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        if self.closing.wait(self.delay):
            conn.close()
            return
        up = socket.create_connection(self.upstream)
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closing.set()
        self.sock.close()


@pytest.fixture
def proxy(seaweed: Any) -> Iterator[DelayProxy]:
    p = DelayProxy(seaweed.endpoint_url)
    yield p
    p.close()


def snapshots(agent: Any, job: str = "etc") -> int:
    return len(agent.object_keys(f"test-node/{job}/snapshots/"))


def daemon_state(agent: Any) -> dict[str, Any]:
    return json.loads((Path(agent.data["state_dir"]) / "daemon.json").read_text())  # type: ignore[no-any-return]


def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for i in range(3):
        (d / f"file{i}").write_bytes(os.urandom(2000))
    return d


def assert_no_secret(agent: Any, *texts: str) -> None:
    secret = agent.data["storage"]["secret_access_key"]
    for text in texts:
        assert secret not in text
    state = Path(agent.data["state_dir"])
    for p in [*state.rglob("*.json"), *state.parent.rglob("*.prom"), *state.parent.rglob("*.log")]:
        assert secret not in p.read_text(errors="replace"), p


def test_schedules_reloads_and_survives_a_bad_config(agent: Any, tmp_path: Path, start_daemon: Any) -> None:
    agent.write(log_format="json", stop_timeout=30, metrics={"textfile": str(tmp_path / "backup_agent.prom")})
    agent.job("etc", type="files", paths=[str(data_dir(tmp_path))], schedule="every 2 seconds")
    d = start_daemon(agent)
    wait_for(lambda: snapshots(agent) >= 2, 60, "two snapshots")

    status = agent.json("status")
    (job,) = status["jobs"]
    assert status["daemon"]["running"] and status["daemon"]["pid"] == d.proc.pid
    assert job["schedule"] == "every 2 seconds" and job["result"] == "success"
    assert job["snapshot"] and job["last_start"] and job["last_end"] and job["consecutive_failures"] == 0
    assert job["next_run"] is not None and job["duration_s"] is not None and job["bytes"] is not None
    table = agent.run("status")
    assert table.returncode == 0
    header, row = table.stdout.splitlines()[1:3]
    assert header.split()[:3] == ["JOB", "SCHEDULE", "NEXT"]
    assert row.startswith("etc") and "every 2 seconds" in row

    # A broken config on SIGHUP is refused; the runs keep using the config that was validated.
    good = dict(agent.data)
    agent.path.write_text(yaml.safe_dump({**good, "bogus_key": 1}))
    d.signal(signal.SIGHUP)
    d.wait_log("reload rejected")
    rejected = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "bogus_key" in d.log

    def ran_since_rejection() -> bool:
        st = json.loads((Path(agent.data["state_dir"]) / "status" / "etc.json").read_text())
        return bool(st["last_start"] > rejected and st["result"] == "success")

    wait_for(ran_since_rejection, 30, "a successful run started after the rejected reload")
    assert snapshots(agent) >= 3
    assert d.proc.poll() is None

    # A good config with a new schedule takes over at the next SIGHUP.
    agent.data["jobs"]["etc"]["schedule"] = "every 1 hour"
    agent.write()
    d.signal(signal.SIGHUP)
    d.wait_log("config reloaded")
    # daemon.json is rewritten just after the log line: wait for it rather than race it
    wait_for(lambda: daemon_state(agent)["jobs"]["etc"]["schedule"] == "every 1 hour", 30, "the new plan")
    plan = daemon_state(agent)["jobs"]["etc"]
    ahead = datetime.fromisoformat(plan["next_run"].replace("Z", "+00:00")) - datetime.now(UTC)
    assert timedelta(minutes=55) < ahead <= timedelta(hours=1)
    wait_for(lambda: daemon_state(agent)["jobs"]["etc"]["running_since"] is None, 30, "the last run to end")
    settled = snapshots(agent)
    time.sleep(2.5)  # "every 2 seconds" would have started another run by now
    assert snapshots(agent) == settled

    assert d.stop() == 0
    lines = d.log.splitlines()
    assert all(json.loads(line)["message"] for line in lines)  # JSON lines, daemon and runs alike
    assert "daemon stopped" in d.log
    assert_no_secret(agent, d.log, table.stdout, agent.run("status", "--json").stdout)


def _hostile(change: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], str]:
    def make(doc: dict[str, Any]) -> str:
        doc = json.loads(json.dumps(doc))
        change(doc)
        return yaml.safe_dump(doc)
    return make


# Configs the loader once crashed on (a Python exception, not a ConfigError), which made the
# daemon exit at SIGHUP; and values it once accepted that break runs later.
HOSTILE_RELOADS: dict[str, Callable[[dict[str, Any]], str]] = {
    "a list as job type": _hostile(lambda d: d["jobs"]["etc"].update(type=["files"])),
    "a float pack size": _hostile(lambda d: d["storage"].update(pack_size_mb=16.0)),
    "an integer job name": _hostile(lambda d: d["jobs"].update({123: d["jobs"]["etc"]})),
    "a NaN timeout": _hostile(lambda d: d["jobs"]["etc"].update(timeout=float("nan"))),
    "state_dir /": _hostile(lambda d: d.update(state_dir="/")),
    "node /": _hostile(lambda d: d.update(node="/")),
    "a job name ending in a newline": _hostile(lambda d: d["jobs"].update({"etc\n": d["jobs"]["etc"]})),
    "a duplicate key": lambda d: yaml.safe_dump(d).replace("state_dir:", "state_dir: /srv/elsewhere\nstate_dir:"),
}


def test_a_hostile_config_on_sighup_is_one_log_line_and_the_old_schedule_keeps_running(
        agent: Any, tmp_path: Path, start_daemon: Any) -> None:
    agent.write(log_format="json")
    agent.job("etc", type="files", paths=[str(data_dir(tmp_path))], schedule="every 2 seconds")
    d = start_daemon(agent)
    wait_for(lambda: snapshots(agent) >= 1, 60, "a first snapshot")
    for n, (what, make) in enumerate(HOSTILE_RELOADS.items(), 1):
        agent.path.write_text(make(agent.data))
        d.signal(signal.SIGHUP)
        d.wait_log("reload rejected", count=n)
        assert d.proc.poll() is None, f"{what}: the daemon exited:\n{d.log}"
    rejections = [json.loads(line)["message"] for line in d.log.splitlines() if "reload rejected" in line]
    assert len(rejections) == len(HOSTILE_RELOADS), d.log
    for what, message in zip(HOSTILE_RELOADS, rejections, strict=True):
        assert f"{agent.path}: " in message and "internal error" not in message, f"{what}: {message}"
    assert "key 'state_dir' appears twice" in rejections[-1], rejections[-1]
    assert "Traceback" not in d.log
    rejected = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def ran_since() -> bool:
        st = json.loads((Path(agent.data["state_dir"]) / "status" / "etc.json").read_text())
        return bool(st["last_start"] > rejected and st["result"] == "success")

    wait_for(ran_since, 30, "a run of the old schedule after the last rejected reload")
    assert daemon_state(agent)["jobs"]["etc"]["schedule"] == "every 2 seconds"
    assert d.stop() == 0


def test_sigterm_lets_a_running_job_finish_even_if_it_got_sigterm_too(agent: Any, tmp_path: Path, proxy: DelayProxy,
                                           start_daemon: Any) -> None:
    proxy.delay = 1.0
    agent.write(stop_timeout=60, storage={**agent.data["storage"], "endpoint_url": proxy.url})
    agent.job("etc", type="files", paths=[str(data_dir(tmp_path))], schedule="every 1 hour")
    d = start_daemon(agent)
    d.wait_log("job etc: starting")  # no history: an `every` job starts at once
    # Like systemd's default KillMode: SIGTERM to every process of the service at once.
    run_pid = int(re.search(r"run started \(pid (\d+)\)", d.log)[1])  # type: ignore[index]
    os.killpg(run_pid, signal.SIGTERM)
    assert d.stop(60) == 0
    assert "waiting up to 60s for etc to finish" in d.log
    assert "SIGTERM ignored: this run belongs to the daemon" in d.log
    assert "run finished" in d.log and "aborting" not in d.log
    assert snapshots(agent) == 1
    assert agent.json("status")["jobs"][0]["result"] == "success"


def test_sigterm_aborts_a_hanging_job_cleanly(agent: Any, tmp_path: Path, proxy: DelayProxy,
                                              start_daemon: Any) -> None:
    proxy.delay = 120  # the run hangs on its first S3 request
    with Receiver() as receiver:
        agent.write(stop_timeout=1, storage={**agent.data["storage"], "endpoint_url": proxy.url},
                    metrics={"textfile": str(tmp_path / "backup_agent.prom")},
                    notify={"healthchecks_url": f"{receiver.url}/ping/{UUID}", "webhook_url": f"{receiver.url}/hook"})
        agent.job("etc", type="files", paths=[str(data_dir(tmp_path))], schedule="every 1 second")
        d = start_daemon(agent)
        d.wait_log("job etc: starting")
        receiver.wait_for(lambda r: bool(r.matching(f"/ping/{UUID}/start")))
        d.wait_log("is still going: skipping this run")  # no overlap: the next ticks are skipped
        t0 = time.monotonic()
        assert d.stop(30) == 0
        assert time.monotonic() - t0 < 15
        assert "aborting the run" in d.log and "stop_timeout (1s) has passed" in d.log
        assert "run aborted" in d.log
        receiver.wait_for(lambda r: bool(r.matching("/hook")))
        (hook,) = receiver.matching("/hook")
        assert hook.json()["result"] == "aborted"
        assert any(p.startswith(f"/ping/{UUID}/start") for p in receiver.paths())
        assert any(p.startswith(f"/ping/{UUID}/fail") for p in receiver.paths())

    assert snapshots(agent) == 0  # nothing half-done is visible
    status = agent.json("status")
    (job,) = status["jobs"]
    assert job["result"] == "aborted" and job["consecutive_failures"] == 1
    assert "stop_timeout" in job["error"]
    assert not status["daemon"]["running"]
    assert "backup_agent_last_run_status{job=\"etc\"} 1" in (tmp_path / "backup_agent.prom").read_text()
    # The lock died with the run: the next run works.
    proxy.delay = 0
    agent.write(notify={})
    assert agent.json("run", "etc")["status"] == "success"
    assert_no_secret(agent, d.log, agent.run("status").stdout)


def test_a_run_missed_while_down_is_caught_up_once(agent: Any, tmp_path: Path, start_daemon: Any) -> None:
    # A daily slot 12 hours away, and state saying the last two were missed.
    slot = (datetime.now() + timedelta(hours=12)).strftime("%H:%M")
    agent.job("etc", type="files", paths=[str(data_dir(tmp_path))], schedule=f"daily at {slot}")
    state = Path(agent.data["state_dir"])
    (state / "status").mkdir(parents=True)
    long_ago = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    missed = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    (state / "status" / "etc.json").write_text(json.dumps({"job": "etc", "last_start": long_ago,
                                                           "result": "success"}))
    (state / "daemon.json").write_text(json.dumps({"pid": 1, "jobs": {"etc": {"next_run": missed}}}))
    d = start_daemon(agent)
    d.wait_log("catching up")
    d.wait_log("run finished", timeout=60)
    time.sleep(2)
    assert snapshots(agent) == 1  # once, not once per missed day
    ahead = datetime.fromisoformat(daemon_state(agent)["jobs"]["etc"]["next_run"].replace("Z", "+00:00"))
    assert ahead - datetime.now(UTC) > timedelta(hours=11)
    assert d.stop() == 0


def test_max_parallel_jobs_queues_and_never_stacks(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's bookkeeping without processes: one slot, two due jobs, repeated ticks."""
    from backup_agent import daemon as daemon_mod

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "node": "n", "state_dir": str(tmp_path / "state"), "max_parallel_jobs": 1,
        "storage": {"bucket": "b-test", "endpoint_url": "http://127.0.0.1:9"},
        "jobs": {name: {"type": "files", "paths": ["/etc"], "schedule": "every 1 minute"} for name in ("a", "b")},
    }))
    d = daemon_mod.Daemon(str(cfg))
    started: list[str] = []

    class FakeProc:
        pid = 4242

    def fake_start(job: Any) -> None:
        started.append(job.name)
        d.runs[job.name] = daemon_mod.Run(job, d.cfg, FakeProc())  # type: ignore[arg-type]

    monkeypatch.setattr(d, "_start", fake_start)
    d._due("a")
    d._due("b")
    d._start_queued()
    assert started == ["a"] and list(d.queue) == ["b"]
    d._due("a")
    d._due("b")
    assert list(d.queue) == ["b"]  # neither tick stacked another run
    assert "job a: the previous run (pid 4242" in caplog.text
    assert "job b: still waiting for a free slot (max_parallel_jobs=1)" in caplog.text
    del d.runs["a"]
    d._start_queued()
    assert started == ["a", "b"] and not d.queue


def test_a_second_daemon_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "node": "n", "state_dir": str(tmp_path / "state"),
        "storage": {"bucket": "b-test", "endpoint_url": "http://127.0.0.1:9"},
        "jobs": {"etc": {"type": "files", "paths": ["/etc"], "schedule": "weekly on sunday at 03:00"}},
    }))
    first = subprocess.Popen([AGENT, "-c", str(cfg), "daemon"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "state" / "daemon.json").exists(), 30, "the first daemon")
        second = subprocess.run([AGENT, "-c", str(cfg), "daemon"], capture_output=True, text=True, timeout=30)
        assert second.returncode == 75
        assert second.stderr.strip() == (f"backup-agent: another daemon (pid {first.pid}) is running with "
                                         f"state_dir {tmp_path / 'state'}")
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0


def test_logs_mask_every_secret_of_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from backup_agent.config import from_dict
    from backup_agent.logfmt import secret_values, setup_logging

    cfg = from_dict({
        "node": "n", "state_dir": str(tmp_path),
        "storage": {"bucket": "b-test", "access_key_id": "AKIAEXAMPLE", "secret_access_key": "s3-secret-value",
                    "session_token": "session-token-value"},
        "notify": {"healthchecks_url": "https://hc.example/ping/5f1d3c9e-0d7b-4b1e-9a57-0e4c2f7d1a42"},
        "jobs": {"etc": {"type": "files", "paths": ["/etc"]}},
    })
    secrets = ["s3-secret-value", "session-token-value", "5f1d3c9e-0d7b-4b1e-9a57-0e4c2f7d1a42"]
    values = secret_values(cfg)
    assert all(any(s in v for v in values) for s in secrets)
    log = logging.getLogger("backup_agent.test")
    try:
        for fmt in ("text", "json"):
            setup_logging("INFO", fmt, values)
            log.error("boto said %s / %s for %s", *secrets)
            try:
                raise RuntimeError("token session-token-value refused")
            except RuntimeError:
                log.exception("failed")
        err = capsys.readouterr().err
        assert err.count("***") >= 8
        for s in secrets:
            assert s not in err
        json_lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert json_lines[0]["level"] == "ERROR" and "exception" in json_lines[1]
    finally:
        setup_logging("WARNING")
