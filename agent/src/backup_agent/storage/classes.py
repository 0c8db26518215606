"""S3 storage classes and Glacier retrieval tiers: names, their order and what the config may
ask of them.

Plain data and pure functions that import nothing of the agent, so config loading (which
checks a job's classes) needs no storage client: config → storage/cold → storage/s3 → config
was an import cycle.
"""

from __future__ import annotations

# What a job may write its data in (`storage_class`), and move it to (`transition_class`).
STORAGE_CLASSES = ["STANDARD", "STANDARD_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"]
TRANSITION_CLASSES = ["STANDARD_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"]
RESTORE_TIERS = ["Expedited", "Standard", "Bulk"]
# Classes whose objects cannot be read before a RestoreObject (GLACIER_IR can: it is instant).
ARCHIVED = ("GLACIER", "DEEP_ARCHIVE")
# Intelligent-Tiering's opt-in archive tiers behave like the classes above (HEAD: ArchiveStatus).
IT_ARCHIVE = {"ARCHIVE_ACCESS": "GLACIER", "DEEP_ARCHIVE_ACCESS": "DEEP_ARCHIVE"}
# S3's lifecycle waterfall: a rule can only move objects to the right, never back.
COLDNESS = ["STANDARD", "STANDARD_IA", "INTELLIGENT_TIERING", "ONEZONE_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"]
# Deleting earlier is billed as if the object had stayed this long.
MIN_STORAGE_DAYS = {"STANDARD_IA": 30, "ONEZONE_IA": 30, "GLACIER_IR": 90, "GLACIER": 90, "DEEP_ARCHIVE": 180}
# S3 moves objects into these classes only when they are at least this many days old.
MIN_TRANSITION_DAYS = {"STANDARD_IA": 30, "ONEZONE_IA": 30}


def is_archived(storage_class: str | None) -> bool:
    return (storage_class or "STANDARD") in ARCHIVED


def colder(a: str, b: str) -> bool:
    """True when a lifecycle rule may move objects from class b to class a."""
    return COLDNESS.index(a) > COLDNESS.index(b)


def transition_problem(storage_class: str, transition_class: str, days: int) -> tuple[str, str] | None:
    """(key, what is wrong) when S3 would refuse the job's lifecycle transition, else None."""
    if not colder(transition_class, storage_class):
        return "transition_class", (f"{transition_class} is not colder than storage_class {storage_class}; "
                                    "S3 lifecycle rules only move data to colder classes")
    if days < MIN_TRANSITION_DAYS.get(transition_class, 0):
        return "transition_days", (f"S3 moves objects to {transition_class} only after "
                                   f"{MIN_TRANSITION_DAYS[transition_class]} days or more, not {days}")
    return None
