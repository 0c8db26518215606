"""The config file's JSON Schema, but for the job types: one place that documents, validates
and fills defaults.

Per-job-type keys live in jobs/registry.py (one entry per type), so `type` picks exactly one set
of allowed keys and an unknown key is reported against the job's own type. This module imports
nothing of the agent but plain tables, so the registry and the loader can both build on it.
"""

from __future__ import annotations

from typing import Any

from backup_agent.storage.classes import RESTORE_TIERS, STORAGE_CLASSES, TRANSITION_CLASSES

_str = {"type": "string", "minLength": 1}
_bool = {"type": "boolean"}
# What the HTTP clients (urllib's urlsplit) take: a host name or a bracketed IPv6 address, and a
# port, if any, of 1-65535; never whitespace.
_PORT = "0*(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
URL_PATTERN = (f"^https?://(?:[^\\s/?#]*@)?(?:\\[[0-9A-Fa-f:.]+\\]|[^\\s/?#@:\\[\\]]+)(?::(?:{_PORT})?)?"
               "(?:[/?#][^\\s]*)?$")
_url = {"type": "string", "pattern": URL_PATTERN}
# A `..` part makes a stored path depend on links: the loader refuses it rather than resolving it.
DOTDOT = "(^|/)\\.\\.(/|$)"
_abs_path = {"type": "string", "pattern": "^/", "not": {"type": "string", "pattern": DOTDOT}}
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
# The same directories however spelt (`//var/`, `/var/./lib`): runs of '/' and '.' parts between names.
_SEP = "/(?:\\.?/)*"
SYSTEM_DIR_PATTERN = "^(?:" + "|".join(
    _SEP + _SEP.join(d.strip("/").split("/")) + "(?:/(?:\\.?/)*\\.?)?" if d != "/" else _SEP + "\\.?"
    for d in SYSTEM_DIRS) + ")$"
ROOT_PATTERN = f"^{_SEP}\\.?$"
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
    "transition_class": {"enum": TRANSITION_CLASSES, "default": "GLACIER",
                         "description": "the class transition_days moves data to; colder than storage_class"},
    "restore_tier": {"enum": RESTORE_TIERS, "default": "Standard",
                     "description": "Glacier retrieval tier restore asks for (restore --tier overrides)"},
    "restore_days": {"type": "integer", "minimum": 1, "maximum": 365, "default": 7,
                     "description": "days a restored copy of archived data stays readable (restore --days)"},
}

# storage.type: postgresql (docs/STORAGE.md): a database instead of a bucket, e.g. on RDS.
POSTGRES_STORAGE_KEYS: dict[str, Any] = {
    "type": {"enum": ["s3", "postgresql"], "default": "s3",
             "description": "where backups go: an S3 bucket, or a PostgreSQL database (docs/STORAGE.md)"},
    "dsn": {**_str, "description": "postgresql: libpq connection string or URI without the password, e.g. "
                                   "'host=db.example.rds.amazonaws.com dbname=backups user=backup'"},
    "password": {"type": "string",
                 "description": "postgresql: the database password (the cookbook takes it from the data bag item "
                                "key db_password); given to libpq directly, never in argv or the environment"},
    "sslmode": {"enum": ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"],
                "description": "postgresql: libpq sslmode; verify-full with sslrootcert for RDS"},
    "sslrootcert": {**_abs_path, "description": "postgresql: CA bundle that signs the server's certificate "
                                               "(for RDS: global-bundle.pem from truststore.pki.rds.amazonaws.com)"},
}

_price = {"type": "number", "minimum": 0}
# Laid over the packaged table (agent data/prices-us-east-1.json) by `cost` and `report`: give the
# region and date the numbers are from, and only the prices that differ.
PRICES: dict[str, Any] = {
    "type": "object",
    "description": "price table for `cost` and `report`, over the packaged us-east-1 one",
    "additionalProperties": False,
    "properties": {
        "region": _str,
        "date": _str,
        "ebs_snapshot_gb_month": _price,
        "classes": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    **{k: _price for k in ("storage_gb_month", "retrieval_gb", "get_per_1000",
                                           "monitoring_per_1000_objects")},
                    **{k: {"type": "integer", "minimum": 0} for k in ("min_days", "min_object_bytes",
                                                                      "overhead_bytes", "standard_overhead_bytes",
                                                                      "monitoring_min_object_bytes")},
                    "tiers": {"type": "object", "additionalProperties": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"retrieval_gb": _price, "per_1000_requests": _price, "delay": _str}}},
                },
            },
        },
    },
}

COMMON_JOB_KEYS: dict[str, Any] = {
    # The enum of registered types is filled in by jobs/registry.py's job_schema.
    "type": {"type": "string", "description": "the job type: one of jobs/registry.py's JOB_TYPES"},
    "schedule": {"type": "string", "description": "when the daemon runs the job; see schedules ('continuous' for "
                                                  "files jobs: on changes, see settle and min_interval)"},
    "splay": {"type": "integer", "minimum": 0, "maximum": 86400,
              "description": "seconds over which a fleet's runs of this job are spread (default: the global "
                             "splay); each node's offset is stable, derived from node and job name"},
    "catch_up": {**_bool, "default": True,
                 "description": "a run missed while the daemon or node was down runs once soon after start"},
    "retention": RETENTION,
    "timeout": {**_seconds, "description": "seconds after which the run is stopped and fails"},
    "drill": {
        "type": "object",
        "description": "restore drills (`backup-agent drill JOB`): a sample of the latest snapshot restored into "
                       "state_dir, verified against the manifest and removed",
        "additionalProperties": False,
        "properties": {
            "schedule": {"type": "string", "description": "when the daemon drills the job; see schedules"},
            "sample_files": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20,
                             "description": "files restored per drill: the first, the last and random others "
                                            "(command jobs: the whole dump)"},
        },
    },
}

# A command job without `timeout` still ends: a dump that takes longer than this is stuck, not slow.
DEFAULT_COMMAND_TIMEOUT = 6 * 3600

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
        "state_dir": {"type": "string", "pattern": "^/", "default": "/var/lib/backup-agent",
                      "allOf": [{"not": _abs_path["not"]}, {"not": {"type": "string", "pattern": SYSTEM_DIR_PATTERN}}],
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
            # bucket (s3) or dsn (postgresql): which one the type needs.
            "if": {"properties": {"type": {"const": "postgresql"}}, "required": ["type"]},
            "then": {"required": ["dsn"]},
            "else": {"required": ["bucket"]},
            # Static keys come in pairs; without both the default AWS chain (instance profile) is used.
            "dependentRequired": {"access_key_id": ["secret_access_key"], "secret_access_key": ["access_key_id"]},
            "properties": {
                "bucket": {"type": "string", "pattern": "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"},
                **POSTGRES_STORAGE_KEYS,
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
                "concurrency": {"type": "integer", "minimum": 1, "maximum": 64, "default": 8,
                                "description": "transfers at once; a restore's fetch-and-write threads are "
                                               "also capped at the node's cores (two at least)"},
                "multipart_chunk_mb": {
                    "type": "integer", "minimum": 5, "maximum": 5000, "default": 128,
                    "description": "part size of multipart uploads; files under two parts use one PUT",
                },
                "noncurrent_version_days": {"type": "integer", "minimum": 1, "default": 30},
                "abort_multipart_days": {"type": "integer", "minimum": 1, "default": 7},
                "object_lock": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["mode", "days"],
                    "description": "S3 Object Lock retention on every object the agent writes "
                                   "(the bucket must have Object Lock enabled: `bucket setup`)",
                    "properties": {
                        "mode": {"enum": ["GOVERNANCE", "COMPLIANCE"]},
                        "days": {"type": "integer", "minimum": 1, "maximum": 36500},
                    },
                },
                "encryption_key": {
                    "type": "string", "minLength": 32,
                    "description": "client-side encryption (AES-256-GCM) of everything files and command jobs store; "
                                   "from the data bag item key encryption_key; losing it loses the data",
                },
                "previous_encryption_keys": {
                    "type": "array", "items": {"type": "string", "minLength": 32}, "uniqueItems": True,
                    "description": "older encryption keys, only to read snapshots sealed with them (key rotation)",
                },
                "compression_level": {
                    "type": "integer", "minimum": 0, "maximum": 19, "default": 3,
                    "description": "zstd level of what files and command jobs store (0: no compression); "
                                   "incompressible pieces are stored as they are whatever the level",
                },
                "read_unencrypted_snapshots": {
                    "type": "boolean", "default": False,
                    "description": "with encryption_key set, still read snapshots whose manifest is not encrypted "
                                   "(taken before encryption was turned on); off, they are refused as possibly forged",
                },
                "pruned_by": {
                    "enum": ["node", "maintenance"],
                    "default": "node",
                    "description": "maintenance: this node's credentials may not delete (write-only); "
                                   "retention is applied by recipe[backup_agent::maintenance]",
                },
            },
        },
        "maintenance": {
            "type": "object",
            "additionalProperties": False,
            "description": "`prune --all-nodes` (recipe[backup_agent::maintenance]): the retention it applies to "
                           "every node's jobs under `under`; never read from the bucket, where a node could forge it",
            "properties": {
                "under": {"type": "string", "pattern": f"^([{KEY_CHARS}]+(/[{KEY_CHARS}]+)*)?$", "default": "",
                          "description": "key prefix the nodes' storage prefixes live under ('' = the bucket's "
                                         "top level, where the default prefix, the node name, puts them)"},
                "retention": RETENTION,
                "jobs": {"type": "object", "additionalProperties": RETENTION,
                         "propertyNames": {"pattern": JOB_NAME_PATTERN},
                         "description": "retention by job name, over `retention`"},
                "nodes": {**_string_list, "description": "only these node prefixes (default: every one found)"},
                "ebs_regions": {"type": "array", "items": {"type": "string", "pattern": REGION_PATTERN},
                                "description": "also apply the retention to EBS snapshot sets tagged by the agent "
                                               "(by node and job tags; of `environment` when set) in these regions"},
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
            # Each job's own keys are checked against its type's schema (jobs/registry.py).
            "additionalProperties": {"type": "object", "required": ["type"],
                                     "properties": {"type": COMMON_JOB_KEYS["type"]}},
        },
        "notify": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                # and one URL key per channel (channels.py)
                "timeout": {**_seconds, "default": 10,
                            "description": "seconds per notification request; failures are retried a few "
                                           "times and never fail or delay a backup"},
            },
        },
        "metrics": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"textfile": {"type": "string", "pattern": "^/",
                                        "allOf": [{"not": _abs_path["not"]},
                                                  {"not": {"type": "string", "pattern": ROOT_PATTERN}}],
                                        "description": "node_exporter textfile, rewritten "
                                        "(temp file + rename) after every run"}},
        },
        "cost": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"prices": PRICES},
        },
    },
}
