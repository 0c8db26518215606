"""The whole config file's JSON Schema: config_schema's keys, one schema per registered job type
(jobs/registry.py) and one key per notification channel (channels.py). The loader validates
against these and `backup-agent schema` prints them."""

from __future__ import annotations

import copy
from typing import Any

from backup_agent import channels
from backup_agent.config_schema import TOP_LEVEL as _KEYS
from backup_agent.jobs.registry import JOB_TYPES, job_schema


def top_level() -> dict[str, Any]:
    """The top level with the registered job types in `jobs.<name>.type` and the channels' keys
    under `notify`."""
    top = copy.deepcopy(_KEYS)
    top["properties"]["jobs"]["additionalProperties"]["properties"]["type"] = {"enum": list(JOB_TYPES)}
    notify = top["properties"]["notify"]["properties"]
    top["properties"]["notify"]["properties"] = {**{c.key: c.schema() for c in channels.CHANNELS}, **notify}
    return top


def full_schema() -> dict[str, Any]:
    """The whole config as one JSON Schema document (what `backup-agent schema` prints)."""
    top = top_level()
    top["properties"]["jobs"]["additionalProperties"]["allOf"] = [
        {"if": {"properties": {"type": {"const": name}}}, "then": job_schema(name)} for name in JOB_TYPES
    ]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "backup-agent config", **top}
