"""Secrets audit: every secret value of the config is searched for wherever the agent writes or
shows something: its logs (stderr, the daemon's log), --json output, status and metrics files,
everything under state_dir, what notification endpoints receive, and /proc/*/cmdline (and the
environment of the agent's own processes) while a daemon, its run and a manual run are alive.
Where a converge may run (CI), a sandboxed converge adds the node JSON, chef-client's output and
every file it wrote."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.httpreceiver import Receiver

from reliability.lab import AGENT, NODE, Lab, wait_for
from reliability.report import REPO, record


def find(secret_values: dict[str, str], where: str, data: bytes | str, hits: list[str]) -> None:
    raw = data.encode(errors="surrogateescape") if isinstance(data, str) else data
    hits += [f"{name} in {where}" for name, value in secret_values.items() if value.encode() in raw]


def proc_files(name: str) -> dict[int, bytes]:
    out = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                out[int(pid)] = Path(f"/proc/{pid}/{name}").read_bytes()
            except OSError:
                continue
    return out


def test_no_secret_in_logs_state_metrics_notifications_or_proc(lab: Lab, tmp_path: Path) -> None:
    values = {
        "storage.secret_access_key": lab.seaweed.secret_key,
        "storage.access_key_id": lab.seaweed.access_key,
        "healthchecks token": secrets.token_hex(16),
        "webhook token": secrets.token_hex(16),
        "command env API_TOKEN": "api-" + secrets.token_urlsafe(24),
        "preset password": "pw-" + secrets.token_urlsafe(18),
        "a wrong secret_access_key": "wrong-" + secrets.token_urlsafe(24),
    }
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello\n")
    sink = Receiver().start()
    metrics = tmp_path / "metrics" / "backup_agent.prom"
    metrics.parent.mkdir()
    lab.data["notify"] = {"healthchecks_url": f"{sink.url}/ping/{values['healthchecks token']}",
                          "webhook_url": f"{sink.url}/hook/{values['webhook token']}"}
    lab.data["metrics"] = {"textfile": str(metrics)}
    token_env = {"API_TOKEN": values["command env API_TOKEN"]}
    lab.data["jobs"] = {
        "files": {"type": "files", "paths": [str(src)]},
        "slow": {"type": "command", "command": ["sh", "-c", "sleep 3; echo dump"], "env": token_env,
                 "schedule": "every 2 seconds"},
        "leaky": {"type": "command", "command": ["sh", "-c", 'echo "login failed for token=$API_TOKEN" >&2; exit 1'],
                  "env": token_env},
        "pg": {"type": "command", "preset": "postgresql", "database": "app", "password": values["preset password"]},
    }
    lab.write()
    outputs: list[tuple[str, subprocess.CompletedProcess[str]]] = []

    def cli(what: str, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([AGENT, "-c", str(config or lab.path), *args], capture_output=True, text=True,
                              timeout=300)
        outputs.append((what, proc))
        return proc

    def variant(name: str, **storage: Any) -> Path:
        data = json.loads(json.dumps(lab.data))
        data["storage"].update(storage)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    assert cli("run files", "run", "files", "--json").returncode == 0
    assert cli("failing command run", "run", "leaky").returncode == 1
    assert cli("run with a wrong secret", "run", "files",
               config=variant("wrong", secret_access_key=values["a wrong secret_access_key"])).returncode == 1
    assert cli("run against a missing bucket", "run", "files",
               config=variant("missing", bucket=f"rel-missing-{secrets.token_hex(4)}")).returncode == 1

    # A daemon running the `slow` job every 2 s, and a manual run held at its manifest upload:
    # sample every process's command line (and the agent processes' environment) meanwhile.
    daemon_log = tmp_path / "daemon.log"
    with daemon_log.open("wb") as err:
        daemon = subprocess.Popen([AGENT, "-c", str(lab.path), "daemon"], stdout=subprocess.DEVNULL, stderr=err)
    lab.procs.append(daemon)
    (src / "b.txt").write_text("changed\n")
    hold = lab.proxy.hold(lambda r: r.method == "PUT" and f"/{NODE}/files/snapshots/" in r.path)
    manual = lab.popen("run", "files", log="manual.log")
    hits: list[str] = []
    try:
        wait_for(lambda: b"job slow: run started" in daemon_log.read_bytes(), 60, "the daemon's run")
        assert hold.wait(60), lab.log("manual.log")
        runs = [pid for pid, cmd in proc_files("cmdline").items() if b"backup_agent" in cmd and b"run" in cmd]
        assert runs, "no run of the daemon alive while sampling"
        cmdlines = proc_files("cmdline")
        for pid, cmd in cmdlines.items():
            find(values, f"/proc/{pid}/cmdline ({cmd[:60]!r})", cmd, hits)
        agent_pids = {daemon.pid, manual.pid, *runs}
        for pid in agent_pids:
            with_env = proc_files("environ").get(pid, b"")
            find(values, f"/proc/{pid}/environ of an agent process", with_env, hits)
        sampled = len(cmdlines)
    finally:
        hold.release(forward=True)
    assert manual.wait(120) == 0, lab.log("manual.log")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0, daemon_log.read_text()

    assert cli("status", "status").returncode == 0
    assert cli("status --json", "status", "--json").returncode == 0
    assert cli("snapshots --json", "snapshots", "files", "--json").returncode == 0

    for what, proc in outputs:
        find(values, f"stderr of {what}", proc.stderr, hits)
        find(values, f"stdout of {what}", proc.stdout, hits)
    find(values, "the daemon's log", daemon_log.read_bytes(), hits)
    find(values, "the manual run's log", lab.log("manual.log"), hits)
    find(values, "the metrics textfile", metrics.read_bytes(), hits)
    state_files = [p for p in lab.state_dir.rglob("*") if p.is_file()]
    for p in state_files:
        find(values, f"state_dir file {p.relative_to(lab.state_dir)}", p.read_bytes(), hits)
    for r in sink.requests:
        others = {k: v for k, v in values.items() if v not in r.path}  # its own URL token is its address
        find(others, f"a notification to {r.path.split('?')[0][:20]}...", r.path + str(r.headers), hits)
        find(values, "a notification body", r.body, hits)
    sink.close()
    assert "login failed for token=" in " ".join(p.stderr for w, p in outputs if w == "failing command run"), (
        "the failing command's own message should still be shown (masked)")
    assert not hits, "secrets leaked:\n" + "\n".join(hits)
    places = len(outputs) * 2 + 3 + len(state_files) + len(sink.requests) + sampled + len(agent_pids)
    record("secrets.agent", cases=len(values),
           result="runs with notifications, a failing command that prints its token, a wrong secret, a missing "
                  "bucket, a daemon with a run and a manual run alive: 0 hits in stderr and --json output, the "
                  "daemon's log, status, metrics, every state_dir file, notification requests, /proc/*/cmdline "
                  "and the agent processes' environment",
           measured=f"{places} places searched ({sampled} command lines, {len(state_files)} state files, "
                    f"{len(sink.requests)} notifications)")


def test_short_secrets_and_credential_env_names_are_masked_too(lab: Lab, tmp_path: Path) -> None:
    """Issue 17: secrets under 6 characters were written as they were; issue 26: env values were
    masked only under names with pass/secret/token/key/credential (not MYSQL_PWD). Characters no
    id, time or path of the agent contains, so a hit can only be the secret."""
    values = {"a 1-character preset password": "¤", "a 2-character MYSQL_PWD": "§7",
              "a 3-character secret_env value": "q¶¶", "a 2-character PGPASSWORD": "¥x"}
    sink = Receiver().start()
    lab.data["notify"] = {"webhook_url": f"{sink.url}/hook/{secrets.token_hex(16)}"}
    leak = " ".join(values.values())
    lab.data["jobs"] = {
        "leaky": {"type": "command", "command": ["sh", "-c", f'echo "login failed: {leak}" >&2; exit 1'],
                  "env": {"MYSQL_PWD": values["a 2-character MYSQL_PWD"],
                          "PGPASSWORD": values["a 2-character PGPASSWORD"]},
                  "secret_env": {"PLAIN_NAME": values["a 3-character secret_env value"]}},
        "pg": {"type": "command", "preset": "postgresql", "database": "app",
               "password": values["a 1-character preset password"]},
    }
    lab.write()
    outputs = [lab.run("run", "leaky"), lab.run("run", "leaky", "--json"), lab.run("status"),
               lab.run("status", "--json")]
    assert [p.returncode for p in outputs] == [1, 1, 0, 0], [p.stderr for p in outputs]
    assert "login failed: ***" in outputs[0].stderr, outputs[0].stderr
    hits: list[str] = []
    for i, proc in enumerate(outputs):
        find(values, f"stderr of call {i}", proc.stderr, hits)
        find(values, f"stdout of call {i}", proc.stdout, hits)
    state_files = [p for p in lab.state_dir.rglob("*") if p.is_file()]
    for p in state_files:
        find(values, f"state_dir file {p.relative_to(lab.state_dir)}", p.read_bytes(), hits)
    assert len(sink.requests) >= 2
    for r in sink.requests:
        find(values, "a notification body", r.body, hits)
    sink.close()
    assert not hits, "secrets leaked:\n" + "\n".join(hits)
    record("secrets.short", cases=len(values),
           result="a 1-character preset password, 2-character MYSQL_PWD and PGPASSWORD env values and a 3-character "
                  "secret_env value, all printed by a failing command: masked in stderr, --json, status, every "
                  "state_dir file and the webhook payloads")


CONVERGE = os.environ.get("CI") == "true" or os.environ.get("BACKUP_AGENT_CONVERGE") == "1"


@pytest.mark.converge
@pytest.mark.skipif(not CONVERGE, reason="converges (installs a venv with chef-client): set CI=true or "
                    "BACKUP_AGENT_CONVERGE=1")
@pytest.mark.skipif(os.geteuid() != 0, reason="a converge needs root")
def test_a_sandboxed_converge_keeps_secrets_out(tmp_path: Path) -> None:
    """Every path the recipe writes is moved into a sandbox, so this runs beside the converge
    suite without touching /etc, /opt or the installed agent."""
    item = json.loads((REPO / "tests" / "fixtures" / "data_bags" / "backup_agent" / "staging.json").read_text())
    values = {"access_key_id": item["access_key_id"], "secret_access_key": item["secret_access_key"],
              "pg password": item["job_secrets"]["pg"]["password"],
              "pg env token": item["job_secrets"]["pg"]["env"]["BACKUP_TEST_TOKEN"]}
    box = tmp_path / "box"
    chef = tmp_path / "chef"
    for d in ("nodes", "cache", "clients", "backup"):
        (chef / d).mkdir(parents=True)
    (box / "bin").mkdir(parents=True)  # like /usr/local/bin, where the link goes on a node
    wheels = Path(os.environ.get("BACKUP_AGENT_WHEELS") or REPO / "build" / "wheels")
    if not list(wheels.glob("backup_agent-*.whl")):
        pytest.fail(f"no backup_agent wheel in {wheels}: build it first (make wheel)")
    house = os.environ.get("BACKUP_AGENT_WHEELHOUSE", str(REPO.parent / "shared" / "wheelhouse"))
    links = [str(wheels.resolve())] + ([house] if house and Path(house).is_dir() else [])
    client_rb = chef / "client.rb"
    client_rb.write_text("\n".join([
        "local_mode true", 'node_name "reliability-sandbox"',
        f"cookbook_path [{json.dumps(str(REPO / 'cookbooks'))}]",
        *(f"{k} {json.dumps(str(v))}" for k, v in {
            "chef_repo_path": REPO, "data_bag_path": REPO / "tests" / "fixtures" / "encrypted_data_bags",
            "environment_path": REPO / "environments",
            "node_path": chef / "nodes", "client_path": chef / "clients", "client_key": chef / "client.pem",
            "file_cache_path": chef / "cache", "file_backup_path": chef / "backup",
            "encrypted_data_bag_secret": REPO / "tests" / "fixtures" / "encrypted_data_bag_secret"}.items())]) + "\n")
    attrs = {
        "run_list": ["recipe[backup_agent]"],
        "backup_agent": {
            "install": {"dir": str(box / "opt"), "bin_link": str(box / "bin" / "backup-agent"),
                        "find_links": links, "no_index": len(links) > 1},
            "config_path": str(box / "etc" / "config.yaml"),
            "config": {"state_dir": str(box / "state")},
            "service": {"unit_when_unmanaged": False, "manager": "none",
                        "reload_unmanaged": False},
            "fleet_view": {"plugin_dir": str(box / "ohai")},
            "jobs": {"sample": {"type": "files", "paths": [str(box / "src")], "schedule": "daily at 04:00"},
                     "pg": {"type": "command", "preset": "postgresql", "database": "app"}},
        },
    }
    (chef / "attrs.json").write_text(json.dumps(attrs))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "AWS_"))}
    env.update(CHEF_LICENSE="accept-no-persist", BUNDLE_GEMFILE=str(REPO / "Gemfile"))
    t0 = time.monotonic()
    proc = subprocess.run(["bundle", "exec", "chef-client", "--no-color", "-z", "-c", str(client_rb), "-E", "staging",
                           "-j", str(chef / "attrs.json")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200, check=False)
    took = time.monotonic() - t0
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]

    hits: list[str] = []
    find(values, "chef-client output", output, hits)
    node_json = chef / "nodes" / "reliability-sandbox.json"
    assert '"backup_agent"' in node_json.read_text()
    find(values, "the node JSON", node_json.read_bytes(), hits)
    config = box / "etc" / "config.yaml"
    info = config.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o600, 0, 0), oct(info.st_mode)
    assert item["secret_access_key"] in config.read_text()  # it is where the secrets live
    state = (box / "state").stat()
    assert stat.S_IMODE(state.st_mode) == 0o700, oct(state.st_mode)
    searched = 0
    for root in (box, chef):
        for p in root.rglob("*"):
            if p.is_symlink() or not p.is_file() or p == config:
                continue
            if stat.S_IMODE(p.stat().st_mode) == 0o600 and p.stat().st_uid == 0:
                continue  # root-only files may hold secrets
            searched += 1
            find(values, str(p.relative_to(tmp_path)), p.read_bytes(), hits)
    assert not hits, "secrets leaked:\n" + "\n".join(hits)
    shutil.rmtree(box / "opt", ignore_errors=True)
    record("secrets.converge", cases=len(values),
           result="config.yaml 0600 root:root, state_dir 0700; 0 hits in chef-client output, the node JSON and "
                  "every other file the converge wrote (venv, unit, plugin, cache, backups)",
           measured=f"converge {took:.0f}s; {searched} files searched")
