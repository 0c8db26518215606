"""Our tags on EBS snapshots, and how tagged snapshots group into one "snapshot" per run.

A run over three volumes makes three EBS snapshots; users and retention see one snapshot set,
identified by the `backup-agent:snapshot` tag (same id format as file jobs), timed by
`backup-agent:created`. Pure functions over DescribeSnapshots dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

PREFIX = "backup-agent:"
TAG_JOB = PREFIX + "job"
TAG_NODE = PREFIX + "node"
TAG_ENVIRONMENT = PREFIX + "environment"
TAG_CREATED = PREFIX + "created"
TAG_SET = PREFIX + "snapshot"
TAG_COUNT = PREFIX + "volumes"
TAG_SOURCE = PREFIX + "source-snapshot"
TAG_SOURCE_REGION = PREFIX + "source-region"

# States a snapshot can be in that will never become usable.
FAILED_STATES = ("error",)


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in resource.get("Tags", [])}


def user_tags(tags: dict[str, str]) -> dict[str, str]:
    """Tags that may be copied to another resource (AWS reserves `aws:`)."""
    return {k: v for k, v in tags.items() if not k.startswith("aws:")}


def parse_created(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@dataclass
class SnapshotSet:
    id: str
    time: datetime
    members: list[dict[str, Any]] = field(default_factory=list)
    expected: int | None = None

    @property
    def ids(self) -> list[str]:
        return [m["SnapshotId"] for m in self.members]

    @property
    def state(self) -> str:
        states = {m.get("State", "pending") for m in self.members}
        if states & set(FAILED_STATES):
            return "error"
        return "completed" if states == {"completed"} else "pending"

    @property
    def complete(self) -> bool:
        """Every EBS snapshot of the run is there (none deleted behind our back)."""
        return self.expected is None or len(self.members) == self.expected


def group(snapshots: list[dict[str, Any]]) -> list[SnapshotSet]:
    """Tagged EBS snapshots → sets, oldest first; members ordered by volume id for stable output."""
    sets: dict[str, SnapshotSet] = {}
    for snap in snapshots:
        tags = tags_of(snap)
        when = parse_created(tags.get(TAG_CREATED)) or _as_utc(snap["StartTime"])
        key = tags.get(TAG_SET) or tags.get(TAG_CREATED) or snap["SnapshotId"]
        s = sets.setdefault(key, SnapshotSet(key, when))
        s.members.append(snap)
        count = tags.get(TAG_COUNT, "")
        if count.isdigit():
            s.expected = int(count)
    for s in sets.values():
        s.members.sort(key=lambda m: (m.get("VolumeId", ""), m["SnapshotId"]))
    return sorted(sets.values(), key=lambda s: (s.time, s.id))


def _as_utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return parse_created(str(value)) or datetime.fromtimestamp(0, UTC)
