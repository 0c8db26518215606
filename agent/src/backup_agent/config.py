"""Load the YAML config, validate it against the schema, and hand out typed objects.

Every problem becomes a ConfigError with one line: `<file>: <dotted.key>: <what is wrong>`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from backup_agent import __version__
from backup_agent.config_schema import JOB_NAME_PATTERN, JOB_TYPES, TOP_LEVEL, job_schema
from backup_agent.errors import ConfigError
from backup_agent.schedules import Schedule, ScheduleError, parse_schedule
from backup_agent.state import atomic_write

DEFAULT_CONFIG = "/etc/backup-agent/config.yaml"
DEFAULT_STATE_DIR: str = TOP_LEVEL["properties"]["state_dir"]["default"]


@dataclass(frozen=True)
class Storage:
    bucket: str
    prefix: str
    region: str
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    sse: str | None = None
    kms_key_id: str | None = None
    pack_size: int = 16 << 20
    large_file_size: int = 8 << 20
    concurrency: int = 8
    multipart_chunk_size: int = 128 << 20
    noncurrent_version_days: int = 30
    abort_multipart_days: int = 7


@dataclass(frozen=True)
class Job:
    """A job: common keys typed, the type's own keys in `options` (defaults applied)."""

    name: str
    type: str
    schedule: Schedule | None
    retention: dict[str, int]
    splay: int | None
    catch_up: bool
    timeout: float | None
    options: dict[str, Any]


@dataclass(frozen=True)
class Config:
    path: str
    node: str
    environment: str | None
    state_dir: Path
    log_level: str
    log_format: str
    splay: int
    max_parallel_jobs: int
    stop_timeout: float
    storage: Storage
    aws: dict[str, str]
    jobs: dict[str, Job]
    notify: dict[str, Any]
    metrics: dict[str, Any]

    def job(self, name: str) -> Job:
        try:
            return self.jobs[name]
        except KeyError:
            known = ", ".join(sorted(self.jobs)) or "none"
            raise ConfigError(f"{self.path}: jobs.{name}: no such job (configured: {known})") from None


def config_path(explicit: str | None) -> str:
    return explicit or os.environ.get("BACKUP_AGENT_CONFIG") or DEFAULT_CONFIG


def load(path: str) -> Config:
    name = path
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{name}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}: cannot read config: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{name}: {where}YAML syntax error: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{name}: YAML nested too deeply") from None
    marker = _validation_marker(data)
    digest = hashlib.sha256(f"{__version__}\n{TOP_LEVEL!r}\n{JOB_TYPES!r}\n{text}".encode()).hexdigest()
    trusted = marker is not None and _read_marker(marker) == digest
    cfg = from_dict(data, name, trusted=trusted)
    if marker is not None and not trusted:
        with contextlib.suppress(OSError):
            atomic_write(marker, digest.encode())
    return cfg


# A few lines of YAML anchors and aliases can stand for billions of values, which validation
# and its error messages would then walk: no real config comes near this many.
MAX_VALUES = 100_000


def _check_size(data: Any, name: str) -> None:
    count, stack = 0, [data]
    while stack:
        value = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(f"{name}: more than {MAX_VALUES} values once YAML aliases are expanded")
        if isinstance(value, dict):
            stack += value.keys()
            stack += value.values()
        elif isinstance(value, list):
            stack += value


def _validation_marker(data: Any) -> Path | None:
    """Where a config text that passed validation is remembered (by digest), so the next run of
    the same text skips the schema check and its import cost. Only ever inside an existing
    state_dir: validating never creates directories."""
    state_dir = data.get("state_dir", DEFAULT_STATE_DIR) if isinstance(data, dict) else None
    if not isinstance(state_dir, str) or not state_dir.startswith("/") or not os.path.isdir(state_dir):
        return None
    return Path(state_dir) / "config-validated"


def _read_marker(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def from_dict(data: Any, name: str = "config", *, trusted: bool = False) -> Config:
    """Validate (unless this exact text passed before: `trusted`) and build the typed config."""
    if data is None:
        raise ConfigError(f"{name}: the file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: the top level must be a mapping of keys, not {type(data).__name__}")
    _check_size(data, name)
    data = copy.deepcopy(data)
    if not trusted:
        _validate(TOP_LEVEL, data, name, "")
    jobs_raw = data.get("jobs") or {}
    for job_name, raw in jobs_raw.items():
        where = f"jobs.{job_name}"
        if trusted:
            continue
        if not _JOB_NAME.fullmatch(str(job_name)):
            # The schema's pattern is searched (re.search), where `$` also matches before a final
            # newline: "etc\n" would pass it, then split the status table and land in S3 keys.
            raise ConfigError(f"{name}: jobs: {_BAD_JOB_NAME.format(_show(job_name))}")
        if raw["type"] not in JOB_TYPES:
            raise ConfigError(f"{name}: {where}.type: must be one of {', '.join(JOB_TYPES)}, not {_show(raw['type'])}")
        _validate(job_schema(raw["type"]), raw, name, where)
        _check_job_semantics(raw, name, where)
    _apply_defaults(TOP_LEVEL, data)
    node = data.get("node") or socket.gethostname().split(".")[0]
    st = data["storage"]
    if st.get("sse") == "aws:kms" and not st.get("kms_key_id"):
        pass  # the bucket's default KMS key is used, as with the AWS CLI
    storage = Storage(
        bucket=st["bucket"],
        prefix=st.get("prefix") or node,
        region=st["region"],
        endpoint_url=st.get("endpoint_url"),
        access_key_id=st.get("access_key_id"),
        secret_access_key=st.get("secret_access_key"),
        session_token=st.get("session_token"),
        sse=st.get("sse"),
        kms_key_id=st.get("kms_key_id"),
        pack_size=st["pack_size_mb"] << 20,
        large_file_size=st["large_file_mb"] << 20,
        concurrency=st["concurrency"],
        multipart_chunk_size=st["multipart_chunk_mb"] << 20,
        noncurrent_version_days=st["noncurrent_version_days"],
        abort_multipart_days=st["abort_multipart_days"],
    )
    if bool(storage.access_key_id) != bool(storage.secret_access_key):
        missing = "secret_access_key" if storage.access_key_id else "access_key_id"
        raise ConfigError(f"{name}: storage.{missing}: required when the other key is set")
    jobs = {job_name: _job(job_name, raw) for job_name, raw in jobs_raw.items()}
    return Config(
        path=name,
        node=node,
        environment=data.get("environment"),
        state_dir=Path(data["state_dir"]),
        log_level=data["log_level"],
        log_format=data["log_format"],
        splay=data["splay"],
        max_parallel_jobs=data["max_parallel_jobs"],
        stop_timeout=float(data["stop_timeout"]),
        storage=storage,
        aws=dict(data.get("aws") or {}),
        jobs=jobs,
        notify=_with_defaults(TOP_LEVEL["properties"]["notify"], data.get("notify") or {}),
        metrics=dict(data.get("metrics") or {}),
    )


def _job(name: str, raw: dict[str, Any]) -> Job:
    full = _with_defaults(job_schema(raw["type"]), raw)
    options = {k: v for k, v in full.items() if k not in ("type", "schedule", "retention", "splay",
                                                         "catch_up", "timeout")}
    return Job(
        name=name,
        type=raw["type"],
        schedule=parse_schedule(raw["schedule"]) if raw.get("schedule") else None,
        retention=dict(raw.get("retention") or {}),
        splay=raw.get("splay"),
        catch_up=full["catch_up"],
        timeout=full.get("timeout"),  # with the type's default (command jobs have one)
        options=options,
    )


def _check_job_semantics(raw: dict[str, Any], name: str, where: str) -> None:
    if raw.get("schedule") is not None:
        try:
            parse_schedule(raw["schedule"])
        except ScheduleError as exc:
            raise ConfigError(f"{name}: {where}.schedule: {exc}") from None
    for i, p in enumerate(raw.get("paths") or []):
        if ".." in PurePosixPath(p).parts:
            raise ConfigError(f"{name}: {where}.paths[{i}]: '{p}' must not contain '..'")
    if raw.get("transition_days") is not None:
        from backup_agent.storage.cold import check_job as check_transition

        check_transition(raw, name, where)
    if raw["type"] == "command" and not raw.get("command") and not raw.get("preset"):
        raise ConfigError(f"{name}: {where}: a command job needs 'command' or 'preset'")
    if raw["type"] == "command" and raw.get("preset") and not raw.get("database"):
        raise ConfigError(f"{name}: {where}.database: required with preset '{raw['preset']}'")
    if raw["type"] == "command":
        from backup_agent.jobs.presets import check as check_command_job

        check_command_job(raw, name, where)


# --- schema plumbing -------------------------------------------------------------------------

_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "empty",
}


def _validate(schema: dict[str, Any], data: Any, name: str, base: str) -> None:
    import jsonschema  # here, not at the top: a config that validated before never pays the import

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if not errors:
        return
    err = errors[0]
    parts = [base] if base else []
    parts += [f"[{p}]" if isinstance(p, int) else str(p) for p in err.absolute_path]
    key = ".".join(parts).replace(".[", "[")
    message = _message(err)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        allowed = ", ".join(sorted(err.schema.get("properties", {})))
        key = ".".join([*([key] if key else []), extra[0]]) if extra else key
        message = f"unknown key (allowed here: {allowed})"
    elif err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else "?"
        key = ".".join([*([key] if key else []), missing])
        message = "required key is missing"
    elif "propertyNames" in err.relative_schema_path:
        message = _BAD_JOB_NAME.format(_show(err.instance))
    if _SECRET_KEY.search(key):  # name the key, never echo a credential into logs or chef output
        message = message.replace(_show(err.instance), "(value not shown)")
    raise ConfigError(f"{name}: {key or '(top level)'}: {message}")


_JOB_NAME = re.compile(JOB_NAME_PATTERN.removeprefix("^").removesuffix("$"))
_BAD_JOB_NAME = "job name {} may only hold letters, digits, '_', '.', '-' (at most 63, not starting with '_', '.', '-')"
_SECRET_KEY = re.compile(r"(^|\.)(secret_access_key|session_token|password|healthchecks_url|webhook_url)$|\.env\.")


def _message(err: Any) -> str:
    """jsonschema's error (a ValidationError) as the end of one line for a user."""
    v, s, inst = err.validator, err.validator_value, err.instance
    if v == "type":
        types = s if isinstance(s, list) else [s]
        return f"must be {' or '.join(_TYPE_WORDS.get(str(t), str(t)) for t in types)}, not {_show(inst)}"
    if v == "enum":
        return f"must be one of {', '.join(map(str, s))}, not {_show(inst)}"
    if v in ("minimum", "exclusiveMinimum"):
        return f"must be {'≥' if v == 'minimum' else '>'} {s}, not {_show(inst)}"
    if v == "maximum":
        return f"must be ≤ {s}, not {_show(inst)}"
    if v == "minItems":
        return "must not be empty"
    if v == "minLength":
        return "must not be empty"
    if v == "pattern":
        hints = {
            "^/": "must be an absolute path",
            "^https?://": "must be an http(s) URL",
            "^[a-z0-9][a-z0-9.-]": "must be a valid S3 bucket name (3-63 of a-z, 0-9, '.', '-')",
            "^i-": "must be an instance id like i-0123456789abcdef0",
            "^(vol-": "must be a volume id (vol-...) or a device path (/dev/...)",
            "^[^/]": "must not start or end with '/'",
            "^[a-z]{2}(": "must be an AWS region name like us-east-1",
        }
        for start, hint in hints.items():
            if str(s).startswith(start):
                return f"{hint}, not {_show(inst)}"
        return f"does not match {s}: {_show(inst)}"
    if v == "oneOf" and isinstance(inst, str):
        return f"must be 'all' or a list of volume ids or device paths, not {_show(inst)}"
    return str(err.message)


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _with_defaults(schema: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
    return out


def _apply_defaults(schema: dict[str, Any], data: dict[str, Any]) -> None:
    for key, sub in schema.get("properties", {}).items():
        if key not in data and "default" in sub:
            data[key] = copy.deepcopy(sub["default"])
        if isinstance(data.get(key), dict) and sub.get("properties"):
            _apply_defaults(sub, data[key])


__all__ = ["DEFAULT_CONFIG", "JOB_TYPES", "Config", "Job", "Storage", "config_path", "from_dict", "load"]
