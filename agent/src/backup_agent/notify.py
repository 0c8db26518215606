"""Notifications after (and at the start of) a run: one sender class per channel (channels.py lists
them): healthchecks.io pings and a JSON webhook.

Every request runs in its own daemon thread with bounded timeouts and a few retries, so a
slow or broken endpoint never delays a backup, never fails it, and never blocks the
scheduler. `wait()` gives them a bounded moment to finish before a short-lived process exits.

`healthchecks_url` may contain `{job}` and `{node}`, e.g. `https://hc-ping.com/<ping-key>/{node}-{job}`,
to give every job its own check (healthchecks.io slug URLs); without them all jobs ping one check.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
import uuid
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError, ReadTimeoutError
from urllib3.util.retry import Retry

from backup_agent import __version__
from backup_agent.channels import configured
from backup_agent.logfmt import redact

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
# Connection failures and 5xx/429 are retried with a short backoff; a read timeout is not: the
# endpoint got the request and is hanging, and asking it again only doubles the wait.
RETRY = Retry(total=3, connect=3, read=0, status=3, other=0, backoff_factor=0.2, backoff_max=2.0,
              status_forcelist=(429, 500, 502, 503, 504), allowed_methods=None,
              raise_on_status=False, respect_retry_after_header=False)


def _host(url: str) -> str:
    """What logs may show of an endpoint: the path of a ping URL is its credential."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _session() -> requests.Session:
    s = requests.Session()
    adapter = HTTPAdapter(max_retries=RETRY)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = f"backup-agent/{__version__}"
    return s


def _summary(record: dict[str, Any]) -> str:
    parts = [f"{record.get('job')}: {record.get('result')}"]
    if record.get("last_snapshot") and record.get("result") in ("success", "partial"):
        parts.append(f"snapshot {record['last_snapshot']}")
    if record.get("bytes_uploaded") is not None:
        parts.append(f"{record['bytes_uploaded']} bytes uploaded")
    if record.get("duration_s") is not None:
        parts.append(f"{record['duration_s']}s")
    if record.get("error"):
        parts.append(f"error: {record['error']}")
    return redact(", ".join(parts))


class Healthchecks:
    """healthchecks.io: /start, the bare URL on success, /<exit code> on failure, /log for a failed
    prune (shown in the check's log without changing its up/down state: the backup is fine)."""

    def __init__(self, url: str, notifier: Notifier) -> None:
        self.url, self.n = url, notifier

    def _ping_url(self, job: str, suffix: str) -> str:
        base = self.url.replace("{job}", job).replace("{node}", self.n.node).rstrip("/")
        # healthchecks.io pairs a /start with its end ping by run id, even for overlapping runs.
        return f"{base}{suffix}?rid={self.n.run_id}"

    def start(self, job: str) -> None:
        self.n._send("healthchecks start", self._ping_url(job, "/start"), data=f"{self.n.node} {job}")

    def finish(self, record: dict[str, Any], exit_code: int | None) -> None:
        # Success is the bare URL; failures carry the exit code so the check's log shows it.
        suffix = "" if exit_code == 0 else ("/fail" if exit_code is None else f"/{exit_code}")
        self.n._send("healthchecks", self._ping_url(str(record.get("job")), suffix), data=_summary(record))

    def prune_failed(self, record: dict[str, Any], summary: str) -> None:
        self.n._send("healthchecks log", self._ping_url(str(record.get("job")), "/log"), data=summary)


class Webhook:
    """One JSON POST per run (`backup_agent.run`) and per failed prune (`backup_agent.prune`)."""

    def __init__(self, url: str, notifier: Notifier) -> None:
        self.url, self.n = url, notifier

    def start(self, job: str) -> None:
        pass  # one POST per run, at its end

    def finish(self, record: dict[str, Any], exit_code: int | None) -> None:
        self.n._send("webhook", self.url, json=self.n.payload(record, exit_code))

    def prune_failed(self, record: dict[str, Any], summary: str) -> None:
        self.n._send("webhook", self.url, json={
            "event": "backup_agent.prune", "node": self.n.node, "environment": self.n.environment,
            "job": record.get("job"), "result": record.get("result"), "ended": record.get("last_prune"),
            "error": redact(str(record["error"])) if record.get("error") else None, "summary": summary})


class Sender(Protocol):
    def start(self, job: str) -> None: ...
    def finish(self, record: dict[str, Any], exit_code: int | None) -> None: ...
    def prune_failed(self, record: dict[str, Any], summary: str) -> None: ...


class Notifier:
    """One run's notifications to every configured channel (channels.py). Cheap to make; does
    nothing when no channel is configured."""

    def __init__(self, notify: dict[str, Any], *, node: str, environment: str | None) -> None:
        self.timeout = float(notify.get("timeout") or DEFAULT_TIMEOUT)
        self.node = node
        self.environment = environment
        self.run_id = str(uuid.uuid4())
        self._threads: list[threading.Thread] = []
        self.senders: list[Sender] = []
        for channel in configured(notify):
            module, _, name = channel.sender.partition(":")
            self.senders.append(getattr(importlib.import_module(module), name)(notify[channel.key], self))

    @property
    def enabled(self) -> bool:
        return bool(self.senders)

    def start(self, job: str) -> None:
        for sender in self.senders:
            sender.start(job)

    def finish(self, record: dict[str, Any], exit_code: int | None) -> None:
        """After a run: `record` is the status record (result, snapshot, bytes, error, ...)."""
        for sender in self.senders:
            sender.finish(record, exit_code)

    def prune_failed(self, record: dict[str, Any]) -> None:
        """After a run whose retention failed: reported apart from the run, which succeeded."""
        summary = redact(f"{record.get('job')}: prune failed: {record.get('error')}")
        for sender in self.senders:
            sender.prune_failed(record, summary)

    def payload(self, record: dict[str, Any], exit_code: int | None) -> dict[str, Any]:
        return {
            "event": "backup_agent.run",
            "node": self.node,
            "environment": self.environment,
            "job": record.get("job"),
            "type": record.get("type"),
            "result": record.get("result"),
            "exit_code": exit_code,
            "snapshot": record.get("last_snapshot") if record.get("result") in ("success", "partial") else None,
            "bytes_uploaded": record.get("bytes_uploaded"),
            "duration_s": record.get("duration_s"),
            "started": record.get("last_start"),
            "ended": record.get("last_end"),
            "consecutive_failures": record.get("consecutive_failures"),
            "error": redact(str(record["error"])) if record.get("error") else None,
            "summary": _summary(record),
        }

    def _send(self, what: str, url: str, **body: Any) -> None:
        t = threading.Thread(target=self._post, args=(what, url), kwargs=body, daemon=True,
                             name=f"notify-{what}")
        self._threads.append(t)
        t.start()

    def _post(self, what: str, url: str, **body: Any) -> None:
        try:
            with _session() as s:
                resp = s.post(url, timeout=(min(5.0, self.timeout), self.timeout), **body)
            if resp.status_code >= 400:
                log.warning("notify: %s to %s failed: HTTP %d", what, _host(url), resp.status_code)
            else:
                log.debug("notify: %s to %s: HTTP %d", what, _host(url), resp.status_code)
        except requests.RequestException as exc:
            log.warning("notify: %s to %s failed: %s", what, _host(url), self._why(exc))
        except Exception:  # a notification must never take a backup down with it
            log.warning("notify: %s to %s failed unexpectedly", what, _host(url), exc_info=True)

    def _why(self, exc: requests.RequestException) -> str:
        """The failure in a few words. Not str(exc): it repeats the URL, whose path is secret."""
        reason: BaseException = exc
        if exc.args and isinstance(exc.args[0], MaxRetryError) and exc.args[0].reason is not None:
            reason = exc.args[0].reason  # what the last retry ran into
        if isinstance(reason, NewConnectionError):  # before the timeouts: urllib3 subclasses it from them
            return "cannot connect"
        if isinstance(exc, requests.Timeout) or isinstance(reason, TimeoutError | ReadTimeoutError |
                                                           ConnectTimeoutError):
            return f"timed out after {self.timeout:g}s"
        return type(reason).__name__

    def wait(self, timeout: float | None = None) -> bool:
        """Give outstanding requests up to `timeout` seconds in total; True if all finished."""
        deadline = time.monotonic() + (self.timeout + 5 if timeout is None else timeout)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
        return not self._threads
