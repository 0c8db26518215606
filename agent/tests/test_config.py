"""Config validation: every bad input is one line naming the file and key, exit 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import AGENT

from backup_agent import config
from backup_agent.errors import ConfigError
from backup_agent.schedules import ScheduleError, parse_schedule

GOOD = {"storage": {"bucket": "acme-backups"}, "jobs": {"etc": {"type": "files", "paths": ["/etc"]}}}


def with_job(**job: object) -> dict[str, object]:
    return {"storage": {"bucket": "acme-backups"}, "jobs": {"etc": {"type": "files", "paths": ["/etc"], **job}}}


BAD = [
    ({"storage": {"bucket": "acme-backups", "bogus": 1}}, "storage.bogus: unknown key"),
    ({"jobs": {}}, "storage: required key is missing"),
    ({"storage": {}}, "storage.bucket: required key is missing"),
    ({"storage": {"bucket": "Bad_Bucket"}}, "storage.bucket: must be a valid S3 bucket name"),
    ({"storage": {"bucket": "acme-backups", "endpoint_url": "ftp://x"}}, "storage.endpoint_url: must be an http"),
    ({"storage": {"bucket": "acme-backups", "access_key_id": "A"}}, "storage.secret_access_key: required"),
    (with_job(retention={"keep_daily": -1}), "jobs.etc.retention.keep_daily: must be ≥ 0"),
    (with_job(retention={"keep_daily": "x"}), "jobs.etc.retention.keep_daily: must be an integer"),
    (with_job(retention={"keep_forever": 1}), "jobs.etc.retention.keep_forever: unknown key"),
    (with_job(schedule="daily at 25:00"), "jobs.etc.schedule: 'daily at 25:00' is not a schedule"),
    (with_job(schedule="weekly on funday at 01:00"), "jobs.etc.schedule: unknown weekday"),
    (with_job(paths="/etc"), "jobs.etc.paths: must be a list"),
    (with_job(paths=["etc"]), "jobs.etc.paths[0]: must be an absolute path"),
    (with_job(paths=["/etc/../root"]), "jobs.etc.paths[0]: '/etc/../root' must not contain '..'"),
    (with_job(paths=[]), "jobs.etc.paths: must not be empty"),
    (with_job(storage_class="COLD"), "jobs.etc.storage_class: must be one of STANDARD"),
    (with_job(type="filez"), "jobs.etc.type: must be one of files, command, ebs_snapshot"),
    (with_job(volumes="all"), "jobs.etc.volumes: unknown key"),
    ({"storage": {"bucket": "acme-backups"}, "jobs": {"e tc": {"type": "files", "paths": ["/"]}}},
     "job name 'e tc'"),
    ({"storage": {"bucket": "acme-backups"}, "jobs": {"db": {"type": "command"}}}, "jobs.db: a command job needs"),
    ({"storage": {"bucket": "acme-backups"}, "max_parallel_jobs": 0}, "max_parallel_jobs: must be ≥ 1"),
    ([1, 2], "the top level must be a mapping"),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_config_is_one_clear_line(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.from_dict(data, "config.yaml")
    text = str(err.value)
    assert text.startswith("config.yaml: ")
    assert message in text
    assert "\n" not in text


def test_good_config_gets_defaults() -> None:
    cfg = config.from_dict(GOOD, "c.yaml")
    job = cfg.job("etc")
    assert job.options["one_file_system"] is True and job.options["exclude"] == []
    assert cfg.storage.prefix == cfg.node
    assert str(cfg.state_dir) == "/var/lib/backup-agent"


@pytest.mark.parametrize("text", ["every 5 minutes", "every 1 hour", "every 2 days UTC", "hourly at :15",
                                  "daily at 02:00", "weekly on sunday at 03:30 UTC"])
def test_schedule_forms(text: str) -> None:
    assert parse_schedule(text).text == text


@pytest.mark.parametrize("text", ["every 0 minutes", "daily", "hourly at 15", "at 02:00", "weekly at 01:00"])
def test_bad_schedules(text: str) -> None:
    with pytest.raises(ScheduleError):
        parse_schedule(text)


def test_cli_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("storage: [unclosed\n")
    proc = subprocess.run([AGENT, "-c", str(bad), "validate"], capture_output=True, text=True)
    assert proc.returncode == 2 and "YAML syntax error" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([AGENT, "-c", str(tmp_path / "nope.yaml"), "validate"], capture_output=True, text=True)
    assert proc.returncode == 2 and "config file not found" in proc.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    proc = subprocess.run([AGENT, "-c", str(good), "validate"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok"
    proc = subprocess.run([AGENT, "-c", str(good), "restore"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_schema_verb_prints_json_schema() -> None:
    import json

    proc = subprocess.run([AGENT, "schema"], capture_output=True, text=True)
    schema = json.loads(proc.stdout)
    assert "jobs" in schema["properties"] and schema["additionalProperties"] is False


def test_a_validated_config_is_remembered_and_any_edit_is_checked_again(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "config.yaml"
    good = {**GOOD, "state_dir": str(state)}
    cfg.write_text(yaml.safe_dump(good))
    for _ in range(2):
        proc = subprocess.run([AGENT, "-c", str(cfg), "validate"], capture_output=True, text=True)
        assert proc.returncode == 0
    assert (state / "config-validated").exists()
    bad = {**good, "jobs": {"etc": {"type": "files", "paths": ["/etc"], "schedule": "sometimes"}}}
    cfg.write_text(yaml.safe_dump(bad))
    proc = subprocess.run([AGENT, "-c", str(cfg), "validate"], capture_output=True, text=True)
    assert proc.returncode == 2 and "jobs.etc.schedule" in proc.stderr
