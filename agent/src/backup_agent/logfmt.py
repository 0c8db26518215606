"""Log output: human text on stderr (journald adds its own timestamps and unit name), or JSON
lines for log shippers (`log_format: json`); both with the config's secrets masked.

Masking is a last line of defence: code should not log secrets at all, but a library error
message that echoes a password must not reach the journal either.

Every occurrence of every secret is masked, whatever its length: a short password is still a
password. The price is paid only by whoever chose a 1-2 character secret (their logs lose those
characters everywhere); identifiers in structured output (snapshot ids, counts) are never
masked, so scripts keep working.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from backup_agent.channels import KEYS as CHANNEL_KEYS

if TYPE_CHECKING:
    from backup_agent.config import Config

MASK = "***"
# URL path segments and query values this long are credentials (a check's uuid, a hook token).
_MIN_TOKEN_LEN = 16
# Environment names whose values are credentials by convention (PGPASSWORD, MYSQL_PWD,
# AWS_SECRET_ACCESS_KEY, GITHUB_TOKEN, DATABASE_URL with its password, ...). Values of
# `secret_env` are masked whatever their names.
_SECRET_ENV_NAME = re.compile(r"pass|pwd|secret|token|key|credential|auth|cookie|session|private|dsn|url|uri",
                              re.IGNORECASE)
# A mask made of a character that occurs in no secret cannot itself spell a secret, alone or
# next to the text around it.
_MASK_CHARS = "*#~^%+"

_secrets: tuple[str, ...] = ()
_pattern: re.Pattern[str] | None = None
_mask = MASK


def secret_values(cfg: Config) -> list[str]:
    """The config values that must never appear in logs, status, metrics or notifications."""
    out = [cfg.storage.secret_access_key, cfg.storage.session_token, cfg.storage.encryption_key,
           *cfg.storage.previous_encryption_keys]
    # Ping and webhook URLs carry their credential in the path (a check's uuid, a hook token).
    for url in (cfg.notify.get(key) for key in CHANNEL_KEYS):
        if url:
            # urllib3's retry warnings name only the path, and an error may name just the token.
            parts = urlsplit(url)
            tokens = [t for t in re.split(r"[/?&=]", f"{parts.path}?{parts.query}") if len(t) >= _MIN_TOKEN_LEN]
            out += [url, parts.path, *tokens]
    for job in cfg.jobs.values():
        out.append(job.options.get("password"))
        secret_env = job.options.get("secret_env") or {}
        out += secret_env.values()
        for name, value in (job.options.get("env") or {}).items():
            if _SECRET_ENV_NAME.search(name):
                out.append(value)
    return [str(v) for v in out if v]


def set_secrets(values: Iterable[str]) -> None:
    global _secrets, _pattern, _mask
    # Longest first: a secret containing another is masked whole (alternation takes the first).
    _secrets = tuple(sorted({v for v in values if v}, key=lambda v: (-len(v), v)))
    _pattern = re.compile("|".join(map(re.escape, _secrets))) if _secrets else None
    used = set("".join(_secrets))
    free = [c for c in _MASK_CHARS if c not in used]
    _mask = free[0] * 3 if free else ""


def redact(text: str) -> str:
    if _pattern is None:
        return text
    # One left-to-right pass finds every occurrence not inside an earlier one; with an empty
    # mask (secrets using every mask character) the joined rest may form a new one: repeat.
    while True:
        masked = _pattern.sub(_mask, text)
        if masked == text or _mask:
            return masked
        text = masked


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    # Set with `log.info(..., extra={"job": name})`; copied into the JSON document when present.
    EXTRA_FIELDS = ("job", "pid", "exit_code", "snapshot")

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key in self.EXTRA_FIELDS:
            if key in record.__dict__:
                doc[key] = record.__dict__[key]
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


def setup_logging(level: str, fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    """(Re)configure the root logger; called again by the daemon after a config reload."""
    set_secrets(secrets)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    # botocore at DEBUG prints request headers and bodies: keep it quiet whatever our level.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
