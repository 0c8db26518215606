"""The config file's JSON Schema: one place that documents, validates and fills defaults.

Per-job-type keys live in JOB_TYPES so `type` picks exactly one set of allowed keys and an
unknown key is reported against the job's own type.
"""

from __future__ import annotations

from typing import Any

STORAGE_CLASSES = ["STANDARD", "STANDARD_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"]
RESTORE_TIERS = ["Expedited", "Standard", "Bulk"]

_str = {"type": "string", "minLength": 1}
_bool = {"type": "boolean"}
_url = {"type": "string", "pattern": "^https?://[^\\s]+$"}
_abs_path = {"type": "string", "pattern": "^/"}
_seconds = {"type": "number", "exclusiveMinimum": 0, "maximum": 31 * 86400}
_count = {"type": "integer", "minimum": 0, "maximum": 100000}
_string_list = {"type": "array", "items": _str}
_str_map = {"type": "object", "additionalProperties": {"type": "string"}}
# What a POSIX shell and every libc accept as an environment variable name.
_env_map = {**_str_map, "propertyNames": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}}
# botocore's own rule: a region is part of the endpoint's host name.
_region = {"type": "string", "pattern": "^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"}
# Characters AWS calls safe in object keys (plus a few harmless ones): the node name and the
# prefix become S3 keys, lifecycle rule ids, EC2 tags and part of the healthchecks URL.
KEY_CHARS = "A-Za-z0-9!_.*'()=:+@,-"
# A state_dir gets lock, status and cache files and is created 0700: never one of these (the
# loader compares after normalising, so `//var/` is /var too).
SYSTEM_DIRS = ["/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/media", "/mnt", "/opt", "/proc",
               "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib", "/var/log", "/var/tmp"]
# An AWS region name (us-east-1, eu-central-2, us-gov-west-1): a typo fails at load, not mid-run.
REGION_PATTERN = "^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$"

RETENTION = {
    "type": "object",
    "description": ("restic-style retention; a snapshot kept by any rule survives. Applied after every scheduled "
                    "run and `run --prune` (unreferenced data deleted at most daily), and by `prune`"),
    "additionalProperties": False,
    "properties": {
        key: _count
        for key in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
    },
}

HOOK = {
    "type": "array",
    "description": "argv of a command run before (pre) or after (post) the job",
    "items": {"type": "string"},
    "minItems": 1,
}

# Where a job's data lives and how archived data comes back (docs/COLD_STORAGE.md). Manifests
# always stay STANDARD, so listing, check and prune never need a retrieval.
COLD_KEYS: dict[str, Any] = {
    "storage_class": {"enum": STORAGE_CLASSES, "default": "STANDARD",
                      "description": "S3 storage class the job's data is written in"},
    "transition_days": {"type": "integer", "minimum": 1, "maximum": 36500,
                        "description": "`bucket setup` adds a lifecycle rule moving the job's data (never its "
                                       "manifests) to transition_class this many days after upload"},
    "transition_class": {"enum": ["STANDARD_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"], "default": "GLACIER",
                         "description": "the class transition_days moves data to; colder than storage_class"},
    "restore_tier": {"enum": RESTORE_TIERS, "default": "Standard",
                     "description": "Glacier retrieval tier restore asks for (restore --tier overrides)"},
    "restore_days": {"type": "integer", "minimum": 1, "maximum": 365, "default": 7,
                     "description": "days a restored copy of archived data stays readable (restore --days)"},
}

COMMON_JOB_KEYS: dict[str, Any] = {
    "type": {"enum": ["files", "command", "ebs_snapshot"]},
    "schedule": {"type": "string", "description": "when the daemon runs the job; see schedules"},
    "splay": {"type": "integer", "minimum": 0, "maximum": 86400,
              "description": "seconds over which a fleet's runs of this job are spread (default: the global "
                             "splay); each node's offset is stable, derived from node and job name"},
    "catch_up": {**_bool, "default": True,
                 "description": "a run missed while the daemon or node was down runs once soon after start"},
    "retention": RETENTION,
    "timeout": {**_seconds, "description": "seconds after which the run is stopped and fails"},
}

# A command job without `timeout` still ends: a dump that takes longer than this is stuck, not slow.
DEFAULT_COMMAND_TIMEOUT = 6 * 3600

JOB_TYPES: dict[str, dict[str, Any]] = {
    "files": {
        "required": ["paths"],
        "properties": {
            "paths": {"type": "array", "items": _abs_path, "minItems": 1},
            "exclude": {**_string_list, "default": []},
            "one_file_system": {**_bool, "default": True},
            "follow_symlinks": {**_bool, "default": False},
            **COLD_KEYS,
        },
    },
    "command": {
        "required": [],
        "properties": {
            "command": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                        "description": "argv of the program whose standard output is stored (no shell; "
                                       "instead of a preset)"},
            "shell": {**_bool, "default": False,
                      "description": "join the command's elements into one /bin/sh -c line"},
            "preset": {"enum": ["postgresql", "mysql"],
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
        },
    },
    "ebs_snapshot": {
        "required": [],
        "properties": {
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
        },
    },
}

# `$` is the end of the text here, as in ECMA 262 (JSON Schema's regex dialect) and as the
# loader applies it: never "before a final newline", Python's re.search meaning.
JOB_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

TOP_LEVEL: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["storage"],
    "properties": {
        "node": {"type": "string", "pattern": f"^[A-Za-z0-9][{KEY_CHARS}]{{0,252}}$",
                 "description": "node name; default: the host name (also the default storage prefix)"},
        "environment": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$",
                        "description": "Chef environment, used in tags and status"},
        "state_dir": {**_abs_path, "default": "/var/lib/backup-agent", "not": {"enum": SYSTEM_DIRS},
                      "description": "a directory of its own (not / or a system directory such as /var)"},
        "log_level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"], "default": "INFO"},
        "log_format": {"enum": ["text", "json"], "default": "text",
                       "description": "stderr logs as text (journald) or JSON lines"},
        "splay": {"type": "integer", "minimum": 0, "maximum": 86400, "default": 0,
                  "description": "default splay of every job, in seconds"},
        "max_parallel_jobs": {"type": "integer", "minimum": 1, "maximum": 64, "default": 1,
                              "description": "runs the daemon starts at once; due jobs wait for a free slot"},
        "stop_timeout": {**_seconds, "default": 60,
                         "description": "on SIGTERM the daemon lets running jobs finish this long, then aborts "
                                        "them (an aborted run leaves no visible snapshot)"},
        "storage": {
            "type": "object",
            "additionalProperties": False,
            "required": ["bucket"],
            "properties": {
                "bucket": {"type": "string", "pattern": "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"},
                "prefix": {"type": "string", "pattern": f"^(?!(.*/)?\\.\\.?(/|$))[{KEY_CHARS}]+(/[{KEY_CHARS}]+)*$",
                           "description": "where the node's objects go in the bucket (default: node); "
                                          "'/'-separated parts, none of them '.' or '..', at most 255 bytes each; "
                                           "with a job name at most 949 bytes"},
                "region": {**_region, "default": "us-east-1"},
                "endpoint_url": _url,
                "endpoints": {"type": "array", "items": _url, "minItems": 1, "uniqueItems": True,
                              "description": "S3 gateways of a storage cluster, preferred first: each run uses "
                                             "the first that answers (instead of endpoint_url)"},
                "access_key_id": _str,
                "secret_access_key": _str,
                "session_token": _str,
                "sse": {"enum": ["AES256", "aws:kms"]},
                "kms_key_id": _str,
                "pack_size_mb": {"type": "integer", "minimum": 1, "maximum": 512, "default": 16},
                "large_file_mb": {"type": "integer", "minimum": 1, "maximum": 5000, "default": 8},
                "concurrency": {"type": "integer", "minimum": 1, "maximum": 64, "default": 8},
                "multipart_chunk_mb": {
                    "type": "integer", "minimum": 5, "maximum": 5000, "default": 128,
                    "description": "part size of multipart uploads; files under two parts use one PUT",
                },
                "noncurrent_version_days": {"type": "integer", "minimum": 1, "default": 30},
                "abort_multipart_days": {"type": "integer", "minimum": 1, "default": 7},
            },
        },
        "aws": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "ec2_endpoint_url": _url,
                "imds_endpoint": _url,
                "instance_id": {"type": "string", "pattern": "^i-[0-9a-f]+$"},
                "region": _region,
            },
        },
        "jobs": {
            "type": "object",
            "default": {},
            "propertyNames": {"type": "string", "pattern": JOB_NAME_PATTERN},
            "additionalProperties": {"type": "object", "required": ["type"],
                                     "properties": {"type": {"enum": ["files", "command", "ebs_snapshot"]}}},
        },
        "notify": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "healthchecks_url": {**_url, "description": "healthchecks.io ping URL: /start when a run "
                                     "starts, the bare URL on success, /<exit code> on failure; {job} and "
                                     "{node} in it are replaced, to give every job its own (slug) check"},
                "webhook_url": {**_url, "description": "receives one JSON POST per run (node, job, result, "
                                "snapshot, bytes, duration, error)"},
                "timeout": {**_seconds, "default": 10,
                            "description": "seconds per notification request; failures are retried a few "
                                           "times and never fail or delay a backup"},
            },
        },
        "metrics": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"textfile": {**_abs_path, "description": "node_exporter textfile, rewritten "
                                        "(temp file + rename) after every run"}},
        },
    },
}


def job_schema(job_type: str) -> dict[str, Any]:
    spec = JOB_TYPES[job_type]
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", *spec["required"]],
        "properties": {**COMMON_JOB_KEYS, **spec["properties"]},
    }


def full_schema() -> dict[str, Any]:
    """The whole config as one JSON Schema document (what `backup-agent schema` prints)."""
    jobs = dict(TOP_LEVEL["properties"]["jobs"])
    jobs["additionalProperties"] = {
        "type": "object",
        "required": ["type"],
        "properties": {"type": COMMON_JOB_KEYS["type"]},
        "allOf": [
            {"if": {"properties": {"type": {"const": name}}}, "then": job_schema(name)} for name in JOB_TYPES
        ],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "backup-agent config",
        **TOP_LEVEL,
        "properties": {**TOP_LEVEL["properties"], "jobs": jobs},
    }
