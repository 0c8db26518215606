"""Retention for `ebs_snapshot` jobs over many runs (injected clock): only this job's and this node's
snapshot sets are ever deleted; foreign and AMI-backed snapshots are left alone and reported."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from fake_aws import EbsEnv

from backup_agent.jobs.ebs_sets import tag_list


def runs(aws: EbsEnv, job: str, times: list[datetime]) -> list[str]:
    runner = aws.runner(job)  # one runner, one EC2 client: loading the EC2 API model costs time
    ids = []
    for t in times:
        runner.clock = lambda t=t: t
        ids.append(runner.run().snapshot)
    return ids


def our_tags(job: str, node: str, set_id: str, created: str) -> list[dict[str, str]]:
    return tag_list({"backup-agent:job": job, "backup-agent:node": node, "backup-agent:snapshot": set_id,
                     "backup-agent:created": created, "backup-agent:volumes": "1"})


def test_retention_over_many_runs_spares_foreign_and_ami_snapshots(aws: EbsEnv) -> None:
    aws.job("vols", volumes="all", retention={"keep_last": 2, "keep_daily": 4})
    day1 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
    # Two runs a day for four days: 03:00 and 15:00.
    ids = runs(aws, "vols", [day1 + timedelta(hours=12 * i) for i in range(8)])
    ec2 = aws.ec2

    foreign = ec2.create_snapshot(VolumeId=aws.node.data1, Description="made by hand")["SnapshotId"]
    other_node = ec2.create_snapshot(VolumeId=aws.node.data1, TagSpecifications=[{
        "ResourceType": "snapshot", "Tags": our_tags("vols", "web-02", "20250101T000000Z-bbbbbb",
                                                     "2025-01-01T00:00:00Z")}])["SnapshotId"]
    # An AMI registered from one of "our" snapshots: the oldest of all, so retention would drop it.
    image = ec2.create_image(InstanceId=aws.node.instance_id, Name="golden")["ImageId"]
    ami_snap = ec2.describe_images(ImageIds=[image])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    ec2.create_tags(Resources=[ami_snap], Tags=our_tags("vols", "web-01", "20250101T000000Z-aaaaaa",
                                                        "2025-01-01T00:00:00Z"))

    listed = aws.runner("vols").snapshots()
    assert [s.id for s in listed] == ["20250101T000000Z-aaaaaa", *ids]

    plan = aws.runner("vols").prune(dry_run=True)
    forgotten = [ids[0], ids[2], ids[4]]  # the 03:00 runs of days 1-3
    assert plan["forget"] == forgotten
    assert plan["in_use"] == [{"snapshot": "20250101T000000Z-aaaaaa", "images": [image],
                               "ebs_snapshots": [ami_snap]}]
    assert plan["ebs_snapshots_deleted"] == [] and len(aws.snapshots()) == 8 * 3 + 3

    proc = aws.run("prune", "vols", "--json")
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout)
    assert done["forget"] == forgotten and done["objects_deleted"] == 9
    assert {k["id"] for k in done["keep"]} == {ids[1], ids[3], ids[5], ids[6], ids[7]}
    assert foreign in done["foreign_snapshots"] and other_node in done["foreign_snapshots"]
    assert "AMI" in done["note"] and image in done["note"]

    left = {s["SnapshotId"] for s in aws.snapshots()}
    assert {foreign, other_node, ami_snap} <= left, "nothing without our tags, or in use, is deleted"
    assert len(left) == 5 * 3 + 3
    assert [s.id for s in aws.runner("vols").snapshots()] == [
        "20250101T000000Z-aaaaaa", ids[1], ids[3], ids[5], ids[6], ids[7]]

    again = aws.runner("vols").prune(dry_run=False)
    assert again["forget"] == [] and again["objects_deleted"] == 0


def test_no_retention_keeps_everything(aws: EbsEnv) -> None:
    aws.job("vols", volumes=[aws.node.data1])
    runs(aws, "vols", [datetime(2026, 3, d, tzinfo=UTC) for d in (1, 2, 3)])
    out = aws.runner("vols").prune(dry_run=False)
    assert out["forget"] == [] and "retention is not set" in out["note"]
    assert len(aws.snapshots()) == 3


def test_copies_in_other_regions_follow_the_same_retention(aws: EbsEnv) -> None:
    aws.job("dr", volumes=[aws.node.data2], copy_to_regions=["eu-west-1"], retention={"keep_last": 1})
    ids = runs(aws, "dr", [datetime(2026, 3, d, tzinfo=UTC) for d in (1, 2, 3)])
    copies = aws.runner("dr").describe_snapshots()[-1].to_json()["copies"]
    assert len(copies["eu-west-1"]) == 1
    out = aws.runner("dr").prune(dry_run=False)
    assert out["forget"] == ids[:2] and out["copies"]["eu-west-1"]["forget"] == ids[:2]
    eu: Any = aws.moto.client("eu-west-1").describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert [s["SnapshotId"] for s in eu] == copies["eu-west-1"]
    assert [s.id for s in aws.runner("dr").snapshots()] == ids[2:]
