"""Load the YAML config, validate it against the schema, and hand out typed objects.

Every problem becomes a ConfigError with one line: `<file>: <dotted.key>: <what is wrong>`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from backup_agent import __version__
from backup_agent.channels import KEYS as CHANNEL_KEYS
from backup_agent.config_schema import COMMON_JOB_KEYS, DOTDOT, KEY_CHARS, ROOT_PATTERN, SYSTEM_DIRS
from backup_agent.errors import ConfigError
from backup_agent.jobs.registry import JOB_TYPES, job_schema
from backup_agent.schedules import CONTINUOUS, Schedule, ScheduleError, parse_schedule
from backup_agent.schema import top_level
from backup_agent.state import atomic_write
from backup_agent.storage import layout

DEFAULT_CONFIG = "/etc/backup-agent/config.yaml"
# The top level with the registered job types and channels (schema.py): what every config is checked against.
TOP_LEVEL = top_level()
DEFAULT_STATE_DIR: str = TOP_LEVEL["properties"]["state_dir"]["default"]
# Part of the digest a validated text is remembered by: bump it whenever a rule of this module
# changes, so a text the old rules accepted is checked again by the new ones.
RULES_REVISION = 3
# Where the AWS SDKs look for the instance metadata service (botocore, and awscrt's credential
# providers in C): the environment only, never the agent's config.
IMDS_ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"


@dataclass(frozen=True)
class Storage:
    bucket: str
    prefix: str
    region: str
    endpoint_url: str | None = None
    # Gateways of a storage cluster, in order of preference: storage/endpoints.py picks one per run.
    endpoints: tuple[str, ...] = ()
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
    # (mode, days): Object Lock retention put on every object written; None: no lock headers.
    object_lock: tuple[str, int] | None = None
    # "maintenance": node credentials cannot delete; prune runs elsewhere (docs/IAM.md).
    pruned_by: str = "node"
    # storage.type: postgresql (storage/postgres.py)
    type: str = "s3"
    dsn: str | None = None
    password: str | None = field(default=None, repr=False)
    sslmode: str | None = None
    sslrootcert: str | None = None
    # Client-side encryption (storage/encoding.py): the data bag's `encryption_key`, and older
    # secrets kept to read what they sealed (key rotation). Never shown by repr().
    encryption_key: str | None = field(default=None, repr=False)
    previous_encryption_keys: tuple[str, ...] = field(default=(), repr=False)
    # zstd level for what the agent stores; 0: nothing is compressed.
    compression_level: int = 3
    # With a key set, snapshots whose manifest is not sealed (taken before encryption was turned
    # on) are refused unless this says they may be read: one forged in the bucket is refused too.
    read_unencrypted_snapshots: bool = False


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
    maintenance: dict[str, Any] = field(default_factory=dict)  # `prune --all-nodes` only
    cost: dict[str, Any] = field(default_factory=dict)  # `cost.prices`: over the packaged price table

    def share_imds_endpoint(self, environ: dict[str, str] | None = None) -> None:
        """`aws.imds_endpoint` for every client of this process, not only the EBS job's lookup of
        the instance: instance-profile credentials come from botocore and awscrt, which read the
        environment. A node whose metadata service is not at the link-local IPv4 address (an
        IPv6-only subnet: http://[fd00:ec2::254]) would otherwise find itself and then fail to sign
        anything. The config wins over the variable: it is what Chef wrote for this node."""
        endpoint = self.aws.get("imds_endpoint")
        if endpoint:
            (os.environ if environ is None else environ)[IMDS_ENDPOINT_ENV] = endpoint.rstrip("/")

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
    text = read_text(path)
    data = parse_yaml(text, name)
    marker = _validation_marker(data)
    types = {name: job_schema(name) for name in JOB_TYPES}
    digest = hashlib.sha256(f"{__version__}\n{RULES_REVISION}\n{TOP_LEVEL!r}\n{types!r}\n{text}"
                            .encode()).hexdigest()
    trusted = marker is not None and _read_marker(marker) == digest
    cfg = from_dict(data, name, trusted=trusted)
    if marker is not None and not trusted:
        with contextlib.suppress(OSError):
            atomic_write(marker, digest.encode())
    return cfg


def load_with_text(path: str) -> tuple[Config, str]:
    """The config, always fully validated, and the exact text it came from (the daemon hands
    that text to its runs, so they never see a later edit it has not validated)."""
    text = read_text(path)
    return from_dict(parse_yaml(text, path), path), text


def read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key twice in one mapping is an error: YAML says keys are
    unique and PyYAML would silently keep the last one (a second `paths:` a reviewer never sees)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` then an explicit key overriding it is what merging is for
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, name: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no python tags
    except _DuplicateKey as exc:
        raise ConfigError(f"{name}: line {exc.line}: key {_show(exc.key)} appears twice in one mapping "
                          "(YAML allows each key once; remove one)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{name}: {where}YAML syntax error: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{name}: YAML nested too deeply") from None


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


def _strings(value: Any, key: str) -> Iterator[tuple[str, str]]:
    """Every string of the config, keys included, with the dotted key it is at (or under)."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            sub = f"{key}.{k}" if key else str(k)
            if isinstance(k, str):
                yield sub, k
            yield from _strings(v, sub)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{key}[{i}]")


def _check_nul(data: Any, name: str) -> None:
    # No file name, argv element, URL or setting can hold NUL: Python would raise mid-run.
    for key, text in _strings(data, ""):
        if "\x00" in text:
            raise ConfigError(f"{name}: {key}: must not contain a NUL character")


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
        _check_nul(data, name)
        _validate(TOP_LEVEL, data, name, "")
    jobs_raw = data.get("jobs") or {}
    for job_name, raw in jobs_raw.items():
        where = f"jobs.{job_name}"
        if not trusted:
            _check_job(raw, name, where)
        _normalise_job(raw, name, where)
    if not trusted:
        _check_urls(data, name)
    _normalise_top(data, name)
    _apply_defaults(TOP_LEVEL, data)
    node = data.get("node") or socket.gethostname().split(".")[0]
    st = data["storage"]
    if st.get("sse") == "aws:kms" and not st.get("kms_key_id"):
        pass  # the bucket's default KMS key is used, as with the AWS CLI
    _check_storage_type(st, name)
    storage = Storage(
        bucket=st.get("bucket", ""),
        prefix=st.get("prefix") or node,
        region=st["region"],
        endpoint_url=st.get("endpoint_url"),
        endpoints=tuple(st.get("endpoints") or ()),
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
        object_lock=(st["object_lock"]["mode"], st["object_lock"]["days"]) if st.get("object_lock") else None,
        pruned_by=st["pruned_by"],
        type=st["type"],
        dsn=st.get("dsn"),
        password=st.get("password"),
        sslmode=st.get("sslmode"),
        sslrootcert=st.get("sslrootcert"),
        encryption_key=st.get("encryption_key"),
        previous_encryption_keys=tuple(st.get("previous_encryption_keys") or ()),
        compression_level=st["compression_level"],
        read_unencrypted_snapshots=st["read_unencrypted_snapshots"],
    )
    if storage.endpoints and storage.endpoint_url:
        raise ConfigError(f"{name}: storage.endpoints: give endpoint_url or endpoints, not both")
    if bool(storage.access_key_id) != bool(storage.secret_access_key):
        missing = "secret_access_key" if storage.access_key_id else "access_key_id"
        raise ConfigError(f"{name}: storage.{missing}: required when the other key is set")
    for job_name in jobs_raw or [""]:  # keys that do not fit would fail every upload: refuse now
        if problem := layout.root_problem(storage.prefix, job_name):
            where = "storage.prefix" if st.get("prefix") else "node (the default storage.prefix)"
            raise ConfigError(f"{name}: {where}: {problem}")
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
        maintenance=dict(data.get("maintenance") or {}),
        cost=dict(data.get("cost") or {}),
    )


def _check_storage_type(st: dict[str, Any], name: str) -> None:
    """The keys each storage.type needs; a dsn is parsed now, and one carrying a password refused
    (the password would sit in a file that is not the secret store's, and in messages)."""
    if st["type"] == "s3":
        if not st.get("bucket"):
            raise ConfigError(f"{name}: storage.bucket: required key is missing "
                              "(or storage.type: postgresql with storage.dsn)")
        return
    if not st.get("dsn"):
        raise ConfigError(f"{name}: storage.dsn: required key is missing (storage.type is postgresql)")
    try:
        from backup_agent.storage.postgres import dsn_problem
    except ImportError:
        raise ConfigError(f"{name}: storage.type: postgresql needs the psycopg package "
                          "(pip install 'backup-agent[postgresql]')") from None
    if problem := dsn_problem(st["dsn"]):
        raise ConfigError(f"{name}: storage.dsn: {problem}")


def _job(name: str, raw: dict[str, Any]) -> Job:
    full = _with_defaults(job_schema(raw["type"]), raw)
    if full.get("secret_env"):
        # The command gets both; `secret_env` stays in the options so its values are masked.
        full["env"] = {**(full.get("env") or {}), **full["secret_env"]}
    options = {k: v for k, v in full.items() if k not in ("type", "schedule", "retention", "splay",
                                                         "catch_up", "timeout")}
    return Job(
        name=name,
        type=raw["type"],
        schedule=_schedule(raw.get("schedule")),
        retention=dict(raw.get("retention") or {}),
        splay=raw.get("splay"),
        catch_up=full["catch_up"],
        timeout=full.get("timeout"),  # with the type's default (command jobs have one)
        options=options,
    )


def _schedule(text: str | None) -> Schedule | None:
    if not text:
        return None
    if text.strip(" \t").lower() == CONTINUOUS:  # not a time: live.py and the daemon run it on changes
        return Schedule(CONTINUOUS, CONTINUOUS)
    return parse_schedule(text)


def _check_job(raw: dict[str, Any], name: str, where: str) -> None:
    """The job's keys against its type's schema, then its type's rules the schema cannot say
    (one clear line each), then the schema's own rules between keys as a last guard."""
    spec = JOB_TYPES[raw["type"]]
    _validate(spec.schema(rules=False), raw, name, where)
    if str(raw.get("schedule") or "").strip(" \t").lower() == CONTINUOUS:
        if raw["type"] != "files":
            raise ConfigError(f"{name}: {where}.schedule: 'continuous' is for files jobs only")
    elif raw.get("settle") is not None or raw.get("min_interval") is not None:
        key = "settle" if raw.get("settle") is not None else "min_interval"
        raise ConfigError(f"{name}: {where}.{key}: only with schedule: continuous")
    elif raw.get("schedule") is not None:
        try:
            parse_schedule(raw["schedule"])
        except ScheduleError as exc:
            raise ConfigError(f"{name}: {where}.schedule: {exc}") from None
    if (raw.get("drill") or {}).get("schedule") is not None:
        try:
            parse_schedule(raw["drill"]["schedule"])
        except ScheduleError as exc:
            raise ConfigError(f"{name}: {where}.drill.schedule: {exc}") from None
    for check in spec.checks:
        check(raw, name, where)
    if spec.rules and not _validator_class()(spec.schema()).is_valid(raw):
        # The checks above say each rule in words; should one ever be missing, never echo the
        # job's values (a password among them) the way a raw schema error would.
        raise ConfigError(f"{name}: {where}: these keys do not go together (see `backup-agent schema`)")


# --- paths and names -------------------------------------------------------------------------

def normal_path(path: str, name: str, key: str) -> str:
    """An absolute path as the kernel resolves it without links: `//srv/x/./` → `/srv/x`.

    Snapshots store paths in this form, and restore, check and prune compare against it; a
    `..` would make the stored name depend on links, so it is refused rather than resolved."""
    parts = path.split("/")
    if ".." in parts:
        raise ConfigError(f"{name}: {key}: {_show(path)} must not contain '..'")
    return "/" + "/".join(p for p in parts if p not in ("", "."))


def _normalise_job(raw: dict[str, Any], name: str, where: str) -> None:
    for key in ("paths", "freeze"):
        if isinstance(raw.get(key), list):
            out: list[str] = []
            for i, p in enumerate(raw[key]):
                norm = normal_path(p, name, f"{where}.{key}[{i}]")
                if norm not in out:  # `/srv` and `/srv/` are one path: back it up once
                    out.append(norm)
            raw[key] = out
    if isinstance(raw.get("exclude"), list):
        # An anchored pattern is matched against normalised paths: `/var//cache` never would be.
        raw["exclude"] = [normal_path(p, name, f"{where}.exclude[{i}]") if p.startswith("/") else p
                          for i, p in enumerate(raw["exclude"])]


def _normalise_top(data: dict[str, Any], name: str) -> None:
    if "state_dir" in data:
        state_dir = normal_path(data["state_dir"], name, "state_dir")
        if state_dir in SYSTEM_DIRS:
            raise ConfigError(f"{name}: state_dir: {_STATE_DIR_RULE}, not {_show(state_dir)}")
        data["state_dir"] = state_dir
    metrics = data.get("metrics")
    if isinstance(metrics, dict) and metrics.get("textfile"):
        textfile = normal_path(metrics["textfile"], name, "metrics.textfile")
        if textfile == "/":
            raise ConfigError(f"{name}: metrics.textfile: must be a file path, not /")
        metrics["textfile"] = textfile


URL_KEYS = (("storage", "endpoint_url"), ("aws", "ec2_endpoint_url"), ("aws", "imds_endpoint"),
            *(("notify", key) for key in CHANNEL_KEYS))


def _check_urls(data: dict[str, Any], name: str) -> None:
    """What the schema's `^https?://` cannot see and the HTTP clients fail on mid-run, as an
    "internal error" or after ten retries: no host, a bad port, a broken IPv6 literal."""
    from urllib.parse import urlsplit

    for section, key in URL_KEYS:
        url = (data.get(section) or {}).get(key)
        if not isinstance(url, str):
            continue
        try:
            parts = urlsplit(url)
            ok = bool(parts.hostname) and (parts.port is None or parts.port > 0)
        except ValueError:
            ok = False
        if not ok:
            shown = "" if _SECRET_KEY.search(f"{section}.{key}") else f", not {_show(url)}"
            raise ConfigError(f"{name}: {section}.{key}: must be an http(s) URL with a host name and, if any, a "
                              f"port of 1-65535{shown}")
    for i, url in enumerate((data.get("storage") or {}).get("endpoints") or []):
        try:
            parts = urlsplit(url)
            ok = bool(parts.hostname) and (parts.port is None or parts.port > 0)
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"{name}: storage.endpoints[{i}]: must be an http(s) URL with a host name and, if "
                              f"any, a port of 1-65535, not {_show(url)}")


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


_VALIDATOR: Any = None


def _validator_class() -> Any:
    """Draft 2020-12 with the loader's own reading of three things jsonschema leaves loose:
    - "integer" is an int (jsonschema takes 16.0, which the code then shifts and indexes with);
    - "number" is finite (NaN compares false with every bound, so `timeout: .nan` passed them);
    - a pattern's `$` is the end of the text (ECMA 262), not "before a final newline" (Python):
      `^[a-z]+$` must not take "etc\n", which would split the status table and land in S3 keys.
    """
    global _VALIDATOR
    if _VALIDATOR is None:
        import jsonschema  # here, not at the top: a config that validated before never pays the import

        base = jsonschema.Draft202012Validator
        checker = base.TYPE_CHECKER.redefine_many({
            "integer": lambda _, v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda _, v: (isinstance(v, int) and not isinstance(v, bool))
            or (isinstance(v, float) and math.isfinite(v)),
        })

        def pattern(validator: Any, regex: str, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
            if isinstance(instance, str) and not re.search(_ecma_end(regex), instance):
                yield jsonschema.ValidationError(f"{instance!r} does not match {regex!r}")

        _VALIDATOR = jsonschema.validators.extend(base, validators={"pattern": pattern}, type_checker=checker)
    return _VALIDATOR


def _ecma_end(regex: str) -> str:
    # Every `$` of our patterns is an anchor (none is escaped or inside a class).
    return regex.replace("$", r"\Z")


def _validate(schema: dict[str, Any], data: Any, name: str, base: str) -> None:
    validator = _validator_class()(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if not errors:
        return
    err = errors[0]
    parts = [base] if base else []
    parts += [f"[{p}]" if isinstance(p, int) else str(p) for p in err.absolute_path]
    key = ".".join(parts).replace(".[", "[")
    message = _message(err)
    if err.validator == "additionalProperties":
        known = err.schema.get("properties", {})
        extra = sorted((k for k in err.instance if k not in known), key=str)
        allowed = ", ".join(sorted(known))
        key = ".".join([*([key] if key else []), str(extra[0])]) if extra else key
        message = f"unknown key (allowed here: {allowed})"
        owners = [t for t, spec in JOB_TYPES.items() if extra and extra[0] in spec.keys]
        if base.startswith("jobs.") and owners and "type" in known and extra[0] not in COMMON_JOB_KEYS:
            message = (f"unknown key for {err.instance.get('type')} jobs (only {' and '.join(owners)} jobs "
                       f"have it; allowed here: {allowed})")
    elif err.validator == "dependentRequired":
        missing, other = err.message.split("'")[1], err.message.split("'")[3]
        key = ".".join([*([key] if key else []), missing])
        message = f"required when {other} is set"
    elif err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else "?"
        key = ".".join([*([key] if key else []), missing])
        message = "required key is missing"
    elif "propertyNames" in err.relative_schema_path and key != "jobs":
        message = f"name {_show(err.instance)} must be letters, digits and '_', not starting with a digit"
    elif "propertyNames" in err.relative_schema_path and not isinstance(err.instance, str):
        message = f"job name {_show(err.instance)} must be a string (quote it in YAML: '{err.instance}')"
    elif "propertyNames" in err.relative_schema_path:
        message = f"job name {_show(err.instance)} may only hold letters, digits, '_', '.', '-' (at most 63)"
    # Name the key, never echo a credential into logs or chef output (names of jobs and env
    # variables are no secrets: those messages show the name).
    if _SECRET_KEY.search(key) and "propertyNames" not in err.relative_schema_path:
        message = message.replace(_show(err.instance), "(value not shown)")
        # A message that still quotes a value of the secret (jsonschema's own wording of a rule
        # _message has no words for) is cut down to the key and the rule.
        if any(leaf in message for leaf in _string_leaves(err.instance)):
            message = f"is not valid (rule: {err.validator}; value not shown)"
    raise ConfigError(f"{name}: {key or '(top level)'}: {message}")


# Keys whose values are secrets, and the mappings that hold them (`storage: [{secret_access_key:
# ...}]` must not be echoed as "not [...]" either).
_SECRET_KEY = re.compile(
    rf"(^|\.)(secret_access_key|session_token|password|encryption_key|previous_encryption_keys(\.\d+|\[\d+\])?|{'|'.join(CHANNEL_KEYS)})$|\.(secret_)?env(\.|$)"
    r"|^(storage|notify|jobs|jobs\.[^.]+)$")


_STATE_DIR_RULE = "must be a directory of the agent's own (such as /var/lib/backup-agent)"


def _message(err: Any) -> str:
    """jsonschema's error (a ValidationError) as the end of one line for a user."""
    v, s, inst = err.validator, err.validator_value, err.instance
    if v == "not" and DOTDOT in (s.get("pattern"), *(sub.get("pattern") for sub in s.get("allOf", []))):
        return f"{_show(inst)} must not contain '..'"
    if v == "not" and s.get("pattern") == ROOT_PATTERN:
        return "must be a file path, not /"
    if v == "not" and list(err.absolute_path) == ["state_dir"]:
        return f"{_STATE_DIR_RULE}, not {_show(inst)}"
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
        # storage.encryption_key: at least 32 characters (the value is never shown, see _validate).
        return "must not be empty" if s <= 1 else f"must be at least {s} characters"
    if v == "uniqueItems":
        # jsonschema's own message lists the whole array: previous encryption keys, endpoints.
        return "must not hold the same value twice"
    if v == "pattern":
        hints = {
            "^/": "must be an absolute path",
            "^https?://": "must be an http(s) URL with a host name and, if any, a port of 1-65535",
            "^[a-z0-9][a-z0-9.-]": "must be a valid S3 bucket name (3-63 of a-z, 0-9, '.', '-')",
            "^i-": "must be an instance id like i-0123456789abcdef0",
            "^(vol-": "must be a volume id (vol-...) or a device path (/dev/...)",
            "^[A-Za-z0-9](?:": "must be a region name like us-east-1",
            "^[A-Za-z0-9][": "must be letters, digits and !_.*'()=:+@,- (starting with a letter or digit)",
            "^[A-Za-z_]": "must be letters, digits and '_', not starting with a digit",
            "^[A-Za-z0-9_][": "must be an environment name (letters, digits, '_', '.', '-')",
            "^(?!(.*/)?": f"must be parts of {KEY_CHARS} separated by single '/', none of them '.' or '..' "
                          "(S3 clients and consoles resolve those as directories)",
            "^[a-z]{2}(": "must be a region name like us-east-1",
        }
        for start, hint in hints.items():
            if str(s).startswith(start):
                return f"{hint}, not {_show(inst)}"
        return f"does not match {s}: {_show(inst)}"
    if v == "oneOf" and isinstance(inst, str):
        return f"must be 'all' or a list of volume ids or device paths, not {_show(inst)}"
    return str(err.message)


def _string_leaves(value: Any) -> list[str]:
    """Every string inside a config value (map keys are names, not secrets)."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _string_leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _string_leaves(item)]
    return []


def _show(value: Any) -> str:
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    except (TypeError, ValueError):  # keys json cannot write (a YAML date as a key)
        text = repr(value)
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


__all__ = ["DEFAULT_CONFIG", "JOB_TYPES", "TOP_LEVEL", "Config", "Job", "Storage", "config_path", "from_dict", "load"]
