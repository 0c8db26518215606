"""Every job type, one entry each: its config keys, the rules its schema cannot say, its runner
and the folders it owns under the job root. Config loading, the JSON Schema (schema.py,
`backup-agent schema`), `runner_for`, `bucket setup`'s lifecycle rules and the key layout all read this table.

A new job type is its module (a JobRunner subclass, jobs/base.py) plus one JobType line below.
The entries live here, not in the job modules: those import botocore (1-2 s), and loading the
config (every CLI call, the daemon's SIGHUP) must not; the runner is imported by name when a job
of that type runs. This module imports only plain tables and pure checks.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backup_agent.config_schema import (
    COLD_KEYS,
    COMMON_JOB_KEYS,
    DEFAULT_COMMAND_TIMEOUT,
    DOTDOT,
    HOOK,
    REGION_PATTERN,
    _abs_path,
    _bool,
    _env_map,
    _seconds,
    _str,
    _str_map,
    _string_list,
)
from backup_agent.errors import ConfigError
from backup_agent.jobs import presets
from backup_agent.storage.classes import (
    MIN_TRANSITION_DAYS,
    STORAGE_CLASSES,
    TRANSITION_CLASSES,
    colder,
    transition_problem,
)

if TYPE_CHECKING:
    from backup_agent.config import Config, Job
    from backup_agent.jobs.base import JobRunner

# (raw job mapping, config file name, dotted key of the job) -> raises one-line ConfigErrors
Check = Callable[[dict[str, Any], str, str], None]


@dataclass(frozen=True)
class JobType:
    name: str
    keys: dict[str, Any]                  # JSON Schema properties of the type's own keys (with defaults)
    runner: str                           # "module:Class", imported only when such a job runs
    required: tuple[str, ...] = ()
    data_dirs: tuple[str, ...] = ()       # folders under <prefix>/<job>/ holding its data (not manifests)
    checks: tuple[Check, ...] = ()        # the loader's rules in words (those `rules` also says, and more)
    rules: dict[str, Any] = field(default_factory=dict)  # more JSON Schema: keys that need or exclude others
    run_fields: dict[str, Any] = field(default_factory=dict)  # `run --json` fields of its own, as when nothing ran
    restores_into: bool = False           # `restore --into X` pipes a snapshot into a program (a database)

    def schema(self, *, rules: bool = True) -> dict[str, Any]:
        """The JSON Schema of one job of this type (common keys included); `rules=False` leaves out
        the rules between keys (the loader checks those itself first, to say what is wrong in words)."""
        return {
            "type": "object",
            "additionalProperties": False,
            "required": ["type", *self.required],
            "properties": {**COMMON_JOB_KEYS, "type": {"enum": list(JOB_TYPES)}, **self.keys},
            **(copy.deepcopy(self.rules) if rules else {}),
        }

    def runner_class(self) -> type[JobRunner]:
        module, _, name = self.runner.partition(":")
        cls: type[JobRunner] = getattr(importlib.import_module(module), name)
        return cls


# --- the types' own keys (JSON Schema properties, defaults included) ---------------------------

FILES_KEYS: dict[str, Any] = {
    "paths": {"type": "array", "items": _abs_path, "minItems": 1},
    # An anchored pattern is matched against normalised paths: it must not hold a `..` part either.
    "exclude": {"type": "array", "default": [],
                "items": {**_str, "not": {"type": "string", "allOf": [{"pattern": "^/"}, {"pattern": DOTDOT}]}}},
    "one_file_system": {**_bool, "default": True},
    "follow_symlinks": {**_bool, "default": False},
    # schedule: continuous (live mirroring, live.py)
    "settle": {"type": "number", "minimum": 0, "maximum": 86400,
               "description": "schedule: continuous: seconds after a change under paths that the snapshot "
                              "starts (default 10)"},
    "min_interval": {"type": "number", "minimum": 1, "maximum": 86400,
                     "description": "schedule: continuous: at least this many seconds between the starts "
                                    "of two runs (default 60)"},
    **COLD_KEYS,
}

COMMAND_KEYS: dict[str, Any] = {
    "command": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                "description": "argv of the program whose standard output is stored (no shell; "
                               "instead of a preset)"},
    "shell": {**_bool, "default": False,
              "description": "join the command's elements into one /bin/sh -c line"},
    "preset": {"enum": list(presets.PRESETS),
               "description": "dump and restore with pg_dump/pg_restore or mysqldump/mysql "
                              "(see docs/DATABASE_DUMPS.md)"},
    "database": {**_str, "description": "the database a preset dumps"},
    "tables": {**_string_list, "description": "only these tables (pg_dump --table, mysqldump tables)"},
    "schemas": {**_string_list, "description": "only these schemas (postgresql only, pg_dump --schema)"},
    "host": {**_str, "description": "database host; a path (/var/run/postgresql) means a unix socket"},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "database port"},
    "username": {**_str, "description": "database user the preset connects as"},
    "password": {"type": "string",
                 "description": "database password for a preset: written to a 0600 .pgpass or option file, "
                                "never on a command line (the cookbook takes it from the encrypted "
                                "data bag)"},
    "env": {**_env_map, "description": "extra environment variables for the command; values of names "
            "that look like credentials (PASS, PWD, SECRET, TOKEN, KEY, AUTH, ...) are masked in "
            "everything the agent writes"},
    "secret_env": {**_env_map, "description": "environment variables for the command whose values are "
                   "secrets whatever their names: masked in everything the agent writes (the cookbook "
                   "puts the data bag item's job_secrets.<job>.env here)"},
    "user": {**_str, "description": "run the command as this OS user (the agent runs as root)"},
    "compression": {"enum": ["gzip", "zstd", "none"], "default": "gzip",
                    "description": "how the agent compresses the stream before storing it"},
    "timeout": {**_seconds, "default": DEFAULT_COMMAND_TIMEOUT,
                "description": "seconds after which the command's process group is killed and the run "
                               "fails (the daemon stops the run 60 s later if it is still going)"},
    "allow_empty": {**_bool, "default": False,
                    "description": "accept a command that exits 0 without writing anything as a "
                                   "backup (by default that run fails and stores nothing)"},
    **COLD_KEYS,
    "restore_command": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                        "description": "argv that `restore --into X` pipes the dump into; {into} "
                                       "in an argument becomes X"},
}

EBS_SNAPSHOT_KEYS: dict[str, Any] = {
    "volumes": {
        "default": "all",
        "oneOf": [
            {"const": "all"},
            {"type": "array", "items": {"type": "string", "pattern": "^(vol-[0-9a-f]+|/dev/.+)$"},
             "minItems": 1},
        ],
    },
    "exclude_root": {**_bool, "default": False},
    "multi_volume": {**_bool, "default": True,
                     "description": "one crash-consistent CreateSnapshots call for all volumes"},
    "tags": _str_map,
    "wait": {**_bool, "default": False},
    "wait_timeout": {**_seconds, "default": 3600},
    "copy_to_regions": {"type": "array", "items": {"type": "string", "pattern": REGION_PATTERN}},
    "copy_kms_key_id": _str,
    "freeze": {"type": "array", "items": _abs_path},
    "pre": HOOK,
    "post": HOOK,
    "hook_timeout": {**_seconds, "default": 60},
}


# --- rules between keys, as JSON Schema (the printed schema refuses what the loader refuses) ------

def _is(key: str, value: str, default: str) -> dict[str, Any]:
    """Schema: the key has this value (an absent key has its default)."""
    return {"properties": {key: {"const": value}}, **({} if value == default else {"required": [key]})}


# What _transition says in words: S3 only moves data to colder classes, into the IA classes only
# after 30 days.
TRANSITION_RULE: dict[str, Any] = {
    "if": {"required": ["transition_days"]},
    "then": {"not": {"anyOf": [
        *({"allOf": [_is("storage_class", a, "STANDARD"), _is("transition_class", b, "GLACIER")]}
          for a in STORAGE_CLASSES for b in TRANSITION_CLASSES if not colder(b, a)),
        *({"allOf": [_is("transition_class", b, "GLACIER"), {"properties": {"transition_days": {"maximum": days - 1}}}]}
          for b, days in MIN_TRANSITION_DAYS.items() if b in TRANSITION_CLASSES),
    ]}},
}

# What presets.check and _command_source say in words, as JSON Schema, so the printed schema
# refuses the same command jobs the loader does.
COMMAND_RULES: dict[str, Any] = {
    "anyOf": [{"required": ["command"]}, {"required": ["preset"]}],
    "dependentRequired": {"preset": ["database"]},
    "allOf": [
        {"if": {"required": ["preset"]},
         "then": {"not": {"anyOf": [{"required": ["command"]}, {"required": ["shell"]}]}},
         "else": {"not": {"anyOf": [{"required": [k]} for k in presets.PRESET_KEYS]}}},
        {"if": {"required": ["preset"], "properties": {"preset": {"const": "mysql"}}},
         "then": {"properties": {"schemas": {"maxItems": 0}}}},
        {"if": {"required": ["shell"], "properties": {"shell": {"const": True}}},
         "then": {"required": ["command"]}},
        TRANSITION_RULE,
    ],
}


# --- the same rules in words, one line each, and those no schema can say ------------------------

def _transition(raw: dict[str, Any], name: str, where: str) -> None:
    if raw.get("transition_days") is None:
        return
    problem = transition_problem(raw.get("storage_class", "STANDARD"), raw.get("transition_class", "GLACIER"),
                                 raw["transition_days"])
    if problem:
        raise ConfigError(f"{name}: {where}.{problem[0]}: {problem[1]}")


def _command_source(raw: dict[str, Any], name: str, where: str) -> None:
    if not raw.get("command") and not raw.get("preset"):
        raise ConfigError(f"{name}: {where}: a command job needs 'command' or 'preset'")
    if raw.get("preset") and not raw.get("database"):
        raise ConfigError(f"{name}: {where}.database: required with preset '{raw['preset']}'")


def _env_once(raw: dict[str, Any], name: str, where: str) -> None:
    both = sorted(set(raw.get("env") or {}) & set(raw.get("secret_env") or {}))
    if both:
        raise ConfigError(f"{name}: {where}.secret_env.{both[0]}: also set in env; set it in one of them")


JOB_TYPES: dict[str, JobType] = {t.name: t for t in (
    JobType("files", FILES_KEYS, "backup_agent.jobs.files:FilesJob", required=("paths",),
            data_dirs=("packs/", "files/", "blobs/"), checks=(_transition,), rules={"allOf": [TRANSITION_RULE]}),
    JobType("command", COMMAND_KEYS, "backup_agent.jobs.command:CommandJob", data_dirs=("dumps/",), restores_into=True,
            checks=(_env_once, _transition, _command_source, presets.check), rules=COMMAND_RULES),
    JobType("ebs_snapshot", EBS_SNAPSHOT_KEYS, "backup_agent.jobs.ebs:EbsSnapshotJob",
            run_fields={"ebs_snapshots": []}),
)}

# Every folder some job type keeps data in: keys there are the agent's own (storage/layout.py).
OWNED_DIRS: tuple[str, ...] = tuple(d for t in JOB_TYPES.values() for d in t.data_dirs)


def job_schema(job_type: str) -> dict[str, Any]:
    return JOB_TYPES[job_type].schema()


def runner_for(cfg: Config, job: Job) -> JobRunner:
    try:
        spec = JOB_TYPES[job.type]
    except KeyError:
        raise ValueError(job.type) from None
    return spec.runner_class()(cfg, job)
