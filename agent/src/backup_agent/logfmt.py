"""Log output: human text on stderr (journald adds its own timestamps and unit name), or JSON
lines for log shippers (`log_format: json`); both with the config's secrets masked.

Masking is a last line of defence: code should not log secrets at all, but a library error
message that echoes a password must not reach the journal either.
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

if TYPE_CHECKING:
    from backup_agent.config import Config

MASK = "***"
# Shorter values would mask ordinary words and numbers all over the log.
_MIN_SECRET_LEN = 6
# URL path segments and query values this long are credentials (a check's uuid, a hook token).
_MIN_TOKEN_LEN = 16
_SECRET_ENV_NAME = re.compile(r"pass|secret|token|key|credential", re.IGNORECASE)

_secrets: tuple[str, ...] = ()


def secret_values(cfg: Config) -> list[str]:
    """The config values that must never appear in logs, status, metrics or notifications."""
    out = [cfg.storage.secret_access_key, cfg.storage.session_token]
    # Ping and webhook URLs carry their credential in the path (a check's uuid, a hook token).
    for url in (cfg.notify.get("healthchecks_url"), cfg.notify.get("webhook_url")):
        if url:
            # urllib3's retry warnings name only the path, and an error may name just the token.
            parts = urlsplit(url)
            tokens = [t for t in re.split(r"[/?&=]", f"{parts.path}?{parts.query}") if len(t) >= _MIN_TOKEN_LEN]
            out += [url, parts.path, *tokens]
    for job in cfg.jobs.values():
        out.append(job.options.get("password"))
        for name, value in (job.options.get("env") or {}).items():
            if _SECRET_ENV_NAME.search(name):
                out.append(value)
    return [str(v) for v in out if v]


def set_secrets(values: Iterable[str]) -> None:
    global _secrets
    # Longest first, so a secret containing another is masked whole.
    _secrets = tuple(sorted({v for v in values if len(v) >= _MIN_SECRET_LEN}, key=len, reverse=True))


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


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
