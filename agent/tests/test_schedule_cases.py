"""The agent's side of the shared schedule and job-name cases (tests/fixtures/schedule_cases.json);
the cookbook's ChefSpec runs the same file against its Validation library and Ohai plugin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backup_agent import config
from backup_agent.errors import ConfigError
from backup_agent.schedules import ScheduleError, parse_schedule

CASES = json.loads((Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "schedule_cases.json").read_text())


@pytest.mark.parametrize("case", CASES["schedules"], ids=lambda c: repr(c["text"]))
def test_schedule_case(case: dict[str, Any]) -> None:
    if case["period"] is None:
        with pytest.raises(ScheduleError) as err:
            parse_schedule(case["text"])
        assert "\n" not in str(err.value), "the error must stay one line"
    else:
        assert parse_schedule(case["text"]).period_seconds == case["period"]


@pytest.mark.parametrize("case", CASES["job_names"], ids=lambda c: repr(c["name"]))
def test_job_name_case(case: dict[str, Any], tmp_path: Path) -> None:
    doc = {"state_dir": str(tmp_path), "storage": {"bucket": "bkt"},
           "jobs": {case["name"]: {"type": "command", "command": ["true"]}}}
    if case["valid"]:
        assert list(config.from_dict(doc, "c.yaml").jobs) == [case["name"]]
    else:
        with pytest.raises(ConfigError) as err:
            config.from_dict(doc, "c.yaml")
        assert str(err.value).startswith("c.yaml: jobs: job name ") and "\n" not in str(err.value)
