"""Masking secrets in everything the agent writes: every occurrence, whatever the secret's length."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_agent.config import from_dict
from backup_agent.logfmt import redact, secret_values, set_secrets, setup_logging


@pytest.fixture(autouse=True)
def no_secrets_after() -> Iterator[None]:
    yield
    set_secrets([])


def test_short_secrets_are_masked_too() -> None:
    """Secrets under 6 characters used to be printed as they were."""
    set_secrets(["x9", "Q", "hunt3"])
    assert redact("login x9 failed; Q; user hunt3 denied") == "login *** failed; ***; user *** denied"


def test_a_secret_inside_another_is_masked_whole() -> None:
    set_secrets(["abc", "abcdef"])
    assert redact("-abcdef-abc-") == "-***-***-"


@pytest.mark.parametrize("secrets", [["*"], ["**", "#"], ["*#~^%+", "a"], ["***"]])
def test_the_mask_never_spells_a_secret(secrets: list[str]) -> None:
    set_secrets(secrets)
    text = redact("".join(f"[{s}]" for s in secrets) + "*** ###")
    assert not any(s in text for s in secrets), text


alphabet = "ab*#~^%+ "


@settings(max_examples=300, deadline=None, derandomize=True)
@given(secrets=st.lists(st.text(alphabet, min_size=1, max_size=4), min_size=1, max_size=4),
       text=st.lists(st.one_of(st.text(alphabet, max_size=3), st.integers(0, 3)), max_size=12))
def test_no_secret_survives_masking(secrets: list[str], text: list[str | int]) -> None:
    set_secrets(secrets)
    joined = "".join(secrets[p % len(secrets)] if isinstance(p, int) else p for p in text)
    out = redact(joined)
    assert not any(s in out for s in secrets), (secrets, joined, out)


def test_credential_env_names_and_secret_env_are_secrets() -> None:
    """MYSQL_PWD was not masked (its name has no 'pass'); secret_env values are masked by origin."""
    cfg = from_dict({"storage": {"bucket": "acme-backups", "access_key_id": "AK", "secret_access_key": "sk"},
                     "jobs": {"db": {"type": "command", "command": ["dump"],
                                     "env": {"MYSQL_PWD": "m1", "PGPASSWORD": "p1", "DATABASE_URL": "postgres://u:p@h",
                                             "PGHOST": "db.internal", "LANG": "C"},
                                     "secret_env": {"PLAIN_NAME": "s1"}},
                              "pg": {"type": "command", "preset": "postgresql", "database": "app", "password": "pw"}}},
                    "c.yaml")
    values = set(secret_values(cfg))
    assert {"sk", "m1", "p1", "postgres://u:p@h", "s1", "pw"} <= values
    assert "db.internal" not in values and "C" not in values


def test_text_and_json_logs_mask_two_character_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("backup_agent.test")
    try:
        for fmt in ("text", "json"):
            setup_logging("INFO", fmt, ["Zq", "k7"])
            log.error("mysql: Access denied (using password: Zq)")
            try:
                raise RuntimeError("token k7 refused")
            except RuntimeError:
                log.exception("failed")
        err = capsys.readouterr().err
        assert "Zq" not in err and "k7" not in err
        assert err.count("***") >= 6
        json_lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert json_lines[0]["message"] == "mysql: Access denied (using password: ***)"
        assert json_lines[0]["level"] == "ERROR"  # the document's own fields are not masked
    finally:
        setup_logging("WARNING")
