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
    # Wrong types the loader once crashed on, or accepted and broke later (issue 17).
    (with_job(type=["files"]), "jobs.etc.type: must be one of files, command, ebs_snapshot, not [\"files\"]"),
    ({"storage": {"bucket": "acme-backups", "pack_size_mb": 16.0}},
     "storage.pack_size_mb: must be an integer, not 16.0"),
    (with_job(retention={"keep_last": 3.0}), "jobs.etc.retention.keep_last: must be an integer, not 3.0"),
    ({"storage": {"bucket": "acme-backups"}, "jobs": {123: {"type": "files", "paths": ["/etc"]}}},
     "jobs: job name 123 must be a string"),
    (with_job(timeout=float("nan")), "jobs.etc.timeout: must be a number, not NaN"),
    ({"storage": {"bucket": "acme-backups"}, "stop_timeout": float("nan")}, "stop_timeout: must be a number, not NaN"),
    ({"storage": {"bucket": "acme-backups"}, "notify": {"timeout": float("-inf")}}, "notify.timeout: must be a number"),
    ({"storage": {"bucket": "acme-backups"}, "state_dir": "/"}, "state_dir: must be a directory of the agent's own"),
    ({"storage": {"bucket": "acme-backups"}, "state_dir": "//var/"}, "state_dir: must be a directory of the agent's"),
    ({"storage": {"bucket": "acme-backups"}, "state_dir": "/var/lib/../x"}, "state_dir: '/var/lib/../x' must not"),
    ({"storage": {"bucket": "acme-backups"}, "node": "/"}, "node: must be letters, digits"),
    ({"storage": {"bucket": "acme-backups"}, "node": "web 01"}, "node: must be letters, digits"),
    ({"storage": {"bucket": "acme-backups"}, "node": "web01\n"}, "node: must be letters, digits"),
    ({"storage": {"bucket": "acme-backups", "prefix": "a//b"}}, "storage.prefix: must be parts of"),
    ({"storage": {"bucket": "acme-backups", "prefix": "a/../b"}}, "storage.prefix: must be parts of"),
    ({"storage": {"bucket": "acme-backups", "prefix": "."}}, "none of them '.' or '..'"),
    ({"storage": {"bucket": "acme-backups", "region": "evil.example/"}}, "storage.region: must be a region name"),
    ({"storage": {"bucket": "acme-backups\n"}}, "storage.bucket: must be a valid S3 bucket name"),
    ({"storage": {"bucket": "acme-backups"}, "jobs": {"etc\n": {"type": "files", "paths": ["/etc"]}}},
     "jobs: job name 'etc\\n' may only hold"),
    (with_job(pre=["true"]), "jobs.etc.pre: unknown key for files jobs (only ebs_snapshot jobs have it"),
    (with_job(post=["true"]), "jobs.etc.post: unknown key for files jobs"),
    (with_job(paths=["/srv/\x00x"]), "jobs.etc.paths[0]: must not contain a NUL character"),
    (with_job(paths=["//srv/../x"]), "jobs.etc.paths[0]: '//srv/../x' must not contain '..'"),
    ({"storage": {"bucket": "acme-backups"}, "jobs": {"db": {"type": "command", "command": ["x"],
                                                              "env": {"A=B": "c"}}}},
     "jobs.db.env: name 'A=B' must be letters"),
    ({"storage": {"bucket": "acme-backups"}, "jobs": {"db": {"type": "command", "command": ["x"], "env": {"T": "1"},
                                                              "secret_env": {"T": "2"}}}},
     "jobs.db.secret_env.T: also set in env"),
    ({"storage": {"bucket": "acme-backups"}, "jobs": {"v": {"type": "ebs_snapshot", "copy_to_regions": ["eu west"]}}},
     "jobs.v.copy_to_regions[0]: must be a region name"),
    ({"storage": {"bucket": "acme-backups"}, "metrics": {"textfile": "/."}}, "metrics.textfile: must be a file path"),
    ({"storage": {"bucket": "acme-backups", 7: "x"}}, "storage.7: unknown key"),
    ({"storage": {"bucket": "acme-backups", "endpoint_url": "http://[::1"}},
     "storage.endpoint_url: must be an http(s) URL with a host"),
    ({"storage": {"bucket": "acme-backups", "endpoint_url": "http://127.0.0.1:99999"}}, "a port of 1-65535"),
    ({"storage": {"bucket": "acme-backups"}, "aws": {"imds_endpoint": "http://:80"}}, "aws.imds_endpoint: must be"),
    ({"storage": {"bucket": "acme-backups"}, "environment": "prod\nfake"}, "environment: must be an environment name"),
    ({"storage": {"bucket": "acme-backups"}, "state_dir": "/var"}, "state_dir: must be a directory of the agent's own"),
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
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema)  # the lookaheads and `not` are valid 2020-12
    # The printed schema refuses what the loader refuses for names, paths and prefixes (ECMA `$`:
    # a standard validator applies it with Python's re.search, so test values without a newline).
    v = jsonschema.Draft202012Validator(schema)
    good = {"storage": {"bucket": "acme-backups", "prefix": "prod/web-01"}, "state_dir": "/var/lib/backup-agent",
            "jobs": {"etc": {"type": "files", "paths": ["/etc"]}}}
    assert not list(v.iter_errors(good))
    bucket = {"bucket": "acme-backups"}
    for bad in ({"storage": {**bucket, "prefix": "a/../b"}}, {"storage": bucket, "state_dir": "/var"},
                {"storage": bucket, "node": "a/b"},
                {"storage": bucket, "jobs": {"etc": {"type": "files", "paths": ["/"], "pre": ["x"]}}}):
        assert list(v.iter_errors(bad)), bad


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


def test_paths_are_normalised_when_the_config_loads() -> None:
    """`//srv/x` backed up "fine" and then restore, check and prune refused the snapshot."""
    cfg = config.from_dict({
        "storage": {"bucket": "acme-backups"}, "state_dir": "/var/lib//backup-agent/",
        "metrics": {"textfile": "/var/lib/node_exporter/./agent.prom"},
        "jobs": {"etc": {"type": "files", "paths": ["//srv/x", "/srv/x/", "/srv/./y/.", "/"],
                         "exclude": ["//srv/x//cache/", "*.tmp", "/srv/*/.git"]},
                 "vols": {"type": "ebs_snapshot", "freeze": ["/.", "//data/"]}},
    }, "c.yaml")
    assert cfg.job("etc").options["paths"] == ["/srv/x", "/srv/y", "/"]
    assert cfg.job("etc").options["exclude"] == ["/srv/x/cache", "*.tmp", "/srv/*/.git"]
    assert cfg.job("vols").options["freeze"] == ["/", "/data"]
    assert str(cfg.state_dir) == "/var/lib/backup-agent"
    assert cfg.metrics["textfile"] == "/var/lib/node_exporter/agent.prom"


@pytest.mark.parametrize("text", [
    "storage: {bucket: acme-backups}\nstorage: {bucket: other-bucket}\n",
    "storage: {bucket: acme-backups, bucket: other-bucket}\n",
    "storage: {bucket: acme-backups}\njobs:\n  etc: {type: files, paths: [/etc]}\n  etc: {type: files, paths: [/]}\n",
])
def test_duplicate_keys_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"c.yaml: line \d+: key '(storage|bucket|etc)' appears twice"):
        config.load(str(path))


def test_yaml_merge_keys_may_still_override(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("storage: {bucket: acme-backups}\njobs:\n  a: &base {type: files, paths: [/etc]}\n"
                    "  b:\n    <<: *base\n    paths: [/srv]\n")
    assert config.load(str(path)).job("b").options["paths"] == ["/srv"]


def test_secret_env_reaches_the_command_with_env() -> None:
    cfg = config.from_dict({"storage": {"bucket": "acme-backups"}, "jobs": {"db": {
        "type": "command", "command": ["x"], "env": {"PGHOST": "db"}, "secret_env": {"MYSQL_PWD": "pw"}}}}, "c.yaml")
    assert cfg.job("db").options["env"] == {"PGHOST": "db", "MYSQL_PWD": "pw"}


def test_a_malformed_notification_url_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as err:
        config.from_dict({"storage": {"bucket": "acme-backups"},
                          "notify": {"healthchecks_url": "https://:443/ping/7c1f0a5e-secret-uuid"}}, "c.yaml")
    assert "notify.healthchecks_url: must be an http(s) URL" in str(err.value)
    assert "secret-uuid" not in str(err.value)
