"""The config side of client-side encryption and compression (issue #20): storage.encryption_key,
previous_encryption_keys, compression_level, read_unencrypted_snapshots. A bad key is one line
naming it, exit 2, and the value is never shown; the keys never reach logs, status or state."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import AGENT

from backup_agent import config
from backup_agent.logfmt import secret_values, set_secrets, setup_logging

KEY = "TESTONLY-encryption-key-7f3a9c2e41b8d605"
OLD_KEY = "TESTONLY-previous-key-0b1c2d3e4f5a6b7c8d"


def with_storage(**storage: Any) -> dict[str, Any]:
    return {"storage": {"bucket": "acme-backups", **storage}, "jobs": {"etc": {"type": "files", "paths": ["/etc"]}}}


def validate(tmp_path: Path, data: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return subprocess.run([AGENT, "-c", str(path), "validate"], capture_output=True, text=True, timeout=60)


BAD = [
    ("a short key", {"encryption_key": "TESTONLY-short-secret"},
     "storage.encryption_key: must be at least 32 characters", "TESTONLY-short-secret"),
    ("a short previous key", {"encryption_key": KEY, "previous_encryption_keys": [OLD_KEY, "TESTONLY-short-old"]},
     "storage.previous_encryption_keys[1]: must be at least 32 characters", "TESTONLY-short-old"),
    ("the same previous key twice", {"encryption_key": KEY, "previous_encryption_keys": [OLD_KEY, OLD_KEY]},
     "storage.previous_encryption_keys: must not hold the same value twice", OLD_KEY),
    ("previous keys as one string", {"encryption_key": KEY, "previous_encryption_keys": OLD_KEY},
     "storage.previous_encryption_keys: must be a list", OLD_KEY),
    ("a key that is a number", {"encryption_key": 12345678901234567890123456789012345},
     "storage.encryption_key: must be a string", "12345678901234567890123456789012345"),
    ("compression above zstd's levels", {"compression_level": 20},
     "storage.compression_level: must be ≤ 19", None),
    ("a negative compression level", {"compression_level": -1},
     "storage.compression_level: must be ≥ 0", None),
]


@pytest.mark.parametrize(("storage", "message", "secret"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_a_bad_key_is_one_line_naming_it_exit_2_and_never_its_value(
    tmp_path: Path, storage: dict[str, Any], message: str, secret: str | None
) -> None:
    proc = validate(tmp_path, with_storage(**storage))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"config.yaml: {message}" in proc.stderr
    if secret is not None:
        assert secret not in proc.stderr + proc.stdout


def test_keys_load_and_the_defaults_compress_without_encrypting() -> None:
    cfg = config.from_dict(with_storage(), "c.yaml")
    assert cfg.storage.encryption_key is None and cfg.storage.previous_encryption_keys == ()
    assert cfg.storage.compression_level == 3 and cfg.storage.read_unencrypted_snapshots is False

    cfg = config.from_dict(with_storage(encryption_key=KEY, previous_encryption_keys=[OLD_KEY], compression_level=0,
                                        read_unencrypted_snapshots=True), "c.yaml")
    assert cfg.storage.encryption_key == KEY and cfg.storage.previous_encryption_keys == (OLD_KEY,)
    assert cfg.storage.compression_level == 0 and cfg.storage.read_unencrypted_snapshots is True
    # A config printed while debugging (repr) does not carry the keys either.
    assert KEY not in repr(cfg) and OLD_KEY not in repr(cfg)


def test_the_schema_verb_documents_the_new_storage_keys() -> None:
    proc = subprocess.run([AGENT, "schema"], capture_output=True, text=True, timeout=60, check=True)
    storage = json.loads(proc.stdout)["properties"]["storage"]["properties"]
    assert storage["encryption_key"]["type"] == "string" and storage["encryption_key"]["minLength"] == 32
    assert storage["previous_encryption_keys"]["items"]["minLength"] == 32
    assert storage["compression_level"] == {**storage["compression_level"], "minimum": 0, "maximum": 19, "default": 3}
    assert storage["read_unencrypted_snapshots"]["default"] is False
    for key in ("encryption_key", "previous_encryption_keys", "compression_level", "read_unencrypted_snapshots"):
        assert storage[key]["description"], key


def test_the_keys_are_secrets_the_logs_mask(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config.from_dict(with_storage(encryption_key=KEY, previous_encryption_keys=[OLD_KEY]), "c.yaml")
    assert {KEY, OLD_KEY} <= set(secret_values(cfg))
    log = logging.getLogger("backup_agent.test")
    try:
        for fmt in ("text", "json"):
            setup_logging("INFO", fmt, secret_values(cfg))
            log.error("a library echoed its input: %s / %s", KEY, OLD_KEY)
        err = capsys.readouterr().err
        assert KEY not in err and OLD_KEY not in err
        assert err.count("***") >= 4
    finally:
        set_secrets([])


def test_the_key_reaches_no_output_status_or_state_file(agent: Any) -> None:
    """A dump tool that prints the key on failure (a script echoing its environment): the run's
    output, the logs at DEBUG, `status` and everything under state_dir hold only the mask."""
    agent.data["log_level"] = "DEBUG"
    agent.data["storage"].update(encryption_key=KEY, previous_encryption_keys=[OLD_KEY])
    agent.job("dump", type="command", command=["sh", "-c", f"echo 'using {KEY} and {OLD_KEY}' >&2; exit 3"])
    runs = [agent.run("run", "dump", "--json"), agent.run("status", "--json"), agent.run("status"),
            agent.run("validate")]
    assert runs[0].returncode == 1, runs[0].stderr
    assert "***" in runs[0].stderr  # the command's output was logged, masked
    for proc in runs:
        for secret in (KEY, OLD_KEY):
            assert secret not in proc.stdout and secret not in proc.stderr, proc.args
    state = Path(agent.data["state_dir"])
    files = [path for path in state.rglob("*") if path.is_file()]
    assert files  # the run left its status behind
    for path in files:
        data = path.read_bytes()
        assert KEY.encode() not in data and OLD_KEY.encode() not in data, path
