"""Retention over EBS snapshot sets in one region: which runs go, and what must never be deleted.

Only sets carrying the job's and node's tags are ever considered (the caller lists them that
way). A set an AMI boots from is kept whole and reported; so are snapshots of the same volumes
made by anyone else. A set with a failed member is useless and goes whatever the policy says.
"""

from __future__ import annotations

from typing import Any

from backup_agent import retention
from backup_agent.ec2 import AwsError, error_code
from backup_agent.jobs.ebs_sets import SnapshotSet


def describe_snapshots(ec2: Any, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pages = ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], Filters=filters)
    return [s for page in pages for s in page.get("Snapshots", [])]


def prune_region(ec2: Any, sets: list[SnapshotSet], policy: dict[str, int], *, dry_run: bool,
                 report_foreign: bool) -> dict[str, Any]:
    broken = {s.id for s in sets if s.state == "error"}
    decision = retention.apply([(s.id, s.time) for s in sets if s.id not in broken], policy)
    dropped = set(decision.forget) | broken
    forget = [s for s in sets if s.id in dropped]
    images = snapshots_in_use(ec2) if forget else {}
    in_use: list[dict[str, Any]] = []
    deleted: list[str] = []
    for s in forget:
        users = sorted({img for sid in s.ids for img in images.get(sid, [])})
        if users:
            # The whole set stays: deleting the rest would leave an incomplete snapshot.
            in_use.append({"snapshot": s.id, "images": users, "ebs_snapshots": s.ids})
        elif not dry_run:
            for sid in s.ids:
                outcome = _delete(ec2, sid)
                if outcome == "deleted":
                    deleted.append(sid)
                elif outcome == "in use":  # an AMI registered since we looked
                    in_use.append({"snapshot": s.id, "images": ["(in use)"], "ebs_snapshots": [sid]})
    kept = {u["snapshot"] for u in in_use}
    out: dict[str, Any] = {
        "keep": [{"id": k, "reasons": decision.reasons[k]} for k in decision.keep],
        "forget": [s.id for s in forget if s.id not in kept],
        "ebs_snapshots_deleted": deleted,
        "in_use": in_use,
    }
    if report_foreign:
        out["foreign_snapshots"] = foreign_snapshots(ec2, sets)
    return out


def _delete(ec2: Any, sid: str) -> str:
    try:
        ec2.delete_snapshot(SnapshotId=sid)
        return "deleted"
    except AwsError as exc:
        code = error_code(exc)
        if code == "InvalidSnapshot.NotFound":
            return "gone"
        if code == "InvalidSnapshot.InUse":
            return "in use"
        raise


def snapshots_in_use(ec2: Any) -> dict[str, list[str]]:
    """EBS snapshot id → this account's AMIs that boot from it (AWS refuses to delete those anyway)."""
    users: dict[str, list[str]] = {}
    for page in ec2.get_paginator("describe_images").paginate(Owners=["self"], IncludeDisabled=True):
        for img in page.get("Images", []):
            for bdm in img.get("BlockDeviceMappings", []):
                sid = bdm.get("Ebs", {}).get("SnapshotId")
                if sid:
                    users.setdefault(sid, []).append(img["ImageId"])
    return users


def foreign_snapshots(ec2: Any, sets: list[SnapshotSet]) -> list[str]:
    """Snapshots of the volumes this job captures that are not this job's: reported, never touched."""
    ours = {sid for s in sets for sid in s.ids}
    volumes = sorted({m["VolumeId"] for s in sets for m in s.members if m.get("VolumeId")})
    if not volumes:
        return []
    found = describe_snapshots(ec2, [{"Name": "volume-id", "Values": volumes}])
    return sorted(s["SnapshotId"] for s in found if s["SnapshotId"] not in ours)
