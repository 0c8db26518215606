"""Every notification channel, one entry each: its key under `notify:` (a URL), what the key's
documentation says, and the class in notify.py that sends to it (start, finish, prune_failed).

Config loading, the JSON Schema, secret masking (a channel's URL carries its credential) and
`execute` (which skips importing requests when no channel is set) read this table; a new
channel is a sender class plus one Channel line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backup_agent.config_schema import _url


@dataclass(frozen=True)
class Channel:
    name: str
    key: str            # under `notify:`; its value is the endpoint URL, and a secret
    description: str
    sender: str         # "module:Class", imported only when there is something to send

    def schema(self) -> dict[str, Any]:
        return {**_url, "description": self.description}


CHANNELS: tuple[Channel, ...] = (
    Channel("healthchecks", "healthchecks_url",
            "healthchecks.io ping URL: /start when a run starts, the bare URL on success, /<exit code> on "
            "failure; {job} and {node} in it are replaced, to give every job its own (slug) check",
            "backup_agent.notify:Healthchecks"),
    Channel("webhook", "webhook_url",
            "receives one JSON POST per run (node, job, result, snapshot, bytes, duration, error)",
            "backup_agent.notify:Webhook"),
)
KEYS = tuple(c.key for c in CHANNELS)


def configured(notify: dict[str, Any]) -> list[Channel]:
    """The channels this config sends to."""
    return [c for c in CHANNELS if notify.get(c.key)]
