"""`ebs_snapshot` jobs end to end: the real CLI against moto's EC2 API over HTTP and a loopback IMDSv2.

The node is an instance with a root volume (/dev/sda1) and two data volumes (/dev/sdf, /dev/sdg).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_aws import REGION, EbsEnv, ImdsServer, closed_port_url

from backup_agent.errors import ConfigError
from backup_agent.jobs.ebs_sets import tags_of
from backup_agent.state import read_status


def volumes_of(snaps: list[dict[str, object]]) -> set[object]:
    return {s["VolumeId"] for s in snaps}


def test_all_volumes_in_one_crash_consistent_call(aws: EbsEnv) -> None:
    aws.job("vols", volumes="all", tags={"team": "ops"})
    out = aws.json("run", "vols")
    assert out["status"] == "success" and len(out["ebs_snapshots"]) == 3
    for key in ("job", "snapshot", "files_new", "files_changed", "files_unchanged", "files_failed",
                "bytes_uploaded", "duration_s"):
        assert key in out
    assert aws.proxy.actions("CreateSnapshots") == ["CreateSnapshots"]
    assert aws.proxy.actions("CreateSnapshot") == []
    snaps = aws.snapshots(**{"backup-agent:job": "vols"})
    assert volumes_of(snaps) == set(aws.node.all)
    tags = [tags_of(s) for s in snaps]
    assert {t["backup-agent:snapshot"] for t in tags} == {out["snapshot"]}
    assert {t["backup-agent:created"] for t in tags} == {tags[0]["backup-agent:created"]}
    for t in tags:
        assert t["backup-agent:node"] == "web-01" and t["backup-agent:environment"] == "test"
        assert t["backup-agent:volumes"] == "3" and t["team"] == "ops"

    listed = aws.json("snapshots", "vols")
    assert [s["id"] for s in listed] == [out["snapshot"]], "three EBS snapshots are one snapshot"
    assert sorted(listed[0]["ebs_snapshots"]) == sorted(out["ebs_snapshots"])
    assert listed[0]["state"] == "completed" and listed[0]["time"].endswith("Z")

    assert out["snapshot"] in json.dumps(read_status(Path(aws.data["state_dir"]), "vols"))


def test_one_volume_by_id(aws: EbsEnv) -> None:
    aws.job("data", volumes=[aws.node.data1])
    out = aws.runner("data").run().to_json()
    assert aws.proxy.actions("CreateSnapshot") == ["CreateSnapshot"]
    assert aws.proxy.actions("CreateSnapshots") == []
    snap = aws.snapshots(**{"backup-agent:job": "data"})
    assert [s["SnapshotId"] for s in snap] == out["ebs_snapshots"]
    assert snap[0]["VolumeId"] == aws.node.data1
    assert tags_of(snap[0])["Name"] == "data1", "the volume's own tags come along"


def test_by_device_name_including_nvme(aws: EbsEnv, tmp_path: Path) -> None:
    # The kernel calls the second data volume nvme2n1; its controller serial is the volume id.
    serial = tmp_path / "sys/block/nvme2n1/device/serial"
    serial.parent.mkdir(parents=True)
    serial.write_text(aws.node.data2.replace("vol-", "vol") + "     \n")
    aws.job("data", volumes=["/dev/xvdf", "/dev/nvme2n1"])
    result = aws.runner("data", sys_root=tmp_path / "sys").run()
    assert {v["volume_id"]: v["device"] for v in result.extra["volumes"]} == {
        aws.node.data1: "/dev/sdf", aws.node.data2: "/dev/sdg"}
    assert aws.proxy.actions("CreateSnapshots") == ["CreateSnapshots"]


def test_exclude_root(aws: EbsEnv) -> None:
    aws.job("data", volumes="all", exclude_root=True)
    out = aws.runner("data").run().to_json()
    assert volumes_of(aws.snapshots(**{"backup-agent:job": "data"})) == {aws.node.data1, aws.node.data2}
    assert len(out["ebs_snapshots"]) == 2


def test_only_the_chosen_volumes_join_the_set(aws: EbsEnv) -> None:
    # Root + one data volume: the other data volume is excluded from the one CreateSnapshots call
    # (and removed again should the endpoint snapshot it anyway, as moto does).
    aws.job("some", volumes=["/dev/sda1", aws.node.data2])
    out = aws.runner("some").run().to_json()
    assert volumes_of(aws.snapshots(**{"backup-agent:job": "some"})) == {aws.node.root, aws.node.data2}
    assert len(out["ebs_snapshots"]) == 2


def test_per_volume_snapshots_when_asked(aws: EbsEnv) -> None:
    aws.job("each", volumes="all", multi_volume=False)
    aws.runner("each").run()
    assert aws.proxy.actions("CreateSnapshot") == ["CreateSnapshot"] * 3
    snaps = aws.snapshots(**{"backup-agent:job": "each"})
    assert len({tags_of(s)["backup-agent:snapshot"] for s in snaps}) == 1


def test_unknown_device_is_a_config_error(aws: EbsEnv) -> None:
    aws.job("bad", volumes=[aws.node.data1, "/dev/sdz"])
    proc = aws.run("run", "bad")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "jobs.bad.volumes[1]: device /dev/sdz is not an EBS volume attached" in proc.stderr
    assert aws.snapshots() == []


def test_restore_prints_how_to_create_volumes(aws: EbsEnv) -> None:
    aws.job("vols", volumes="all")
    sid = aws.runner("vols").run().snapshot
    proc = aws.run("restore", "vols", "--target", "/nonexistent")
    assert proc.returncode == 0, proc.stderr
    for snap in aws.snapshots():
        line = (f"aws ec2 create-volume --region {REGION} --availability-zone {aws.node.zone} "
                f"--snapshot-id {snap['SnapshotId']}")
        assert line in proc.stdout
    assert f"of {aws.node.data1} at /dev/sdf" in proc.stdout
    assert "--device /dev/sdh" in proc.stdout and "--device /dev/sdf" not in proc.stdout, "beside, not over"
    assert not Path("/nonexistent").exists()
    out = aws.json("restore", "vols", "--snapshot", sid, "--target", "-")
    assert out["snapshot"] == sid and out["availability_zone"] == aws.node.zone and len(out["volumes"]) == 3
    assert aws.run("restore", "vols", "--target", "/x", "--path", "/etc").returncode == 2


def test_check_finds_a_set_with_a_missing_member(aws: EbsEnv) -> None:
    aws.job("vols", volumes="all")
    aws.runner("vols").run()
    assert aws.runner("vols").check(read_data=False)["status"] == "ok"
    aws.ec2.delete_snapshot(SnapshotId=aws.snapshots()[0]["SnapshotId"])
    proc = aws.run("check", "vols")
    assert proc.returncode == 1 and "2 of 3 EBS snapshots left" in proc.stderr


def test_wait_then_copy_to_another_region_with_tags(aws: EbsEnv) -> None:
    aws.job("dr", volumes=[aws.node.data1], wait=True, copy_to_regions=["eu-west-1"],
            copy_kms_key_id="alias/dr-key")
    out = aws.runner("dr").run().to_json()
    copies = out["copies"]["eu-west-1"]
    assert len(copies) == 1
    assert ("CopySnapshot", "eu-west-1") in aws.proxy.calls
    copy = aws.moto.client("eu-west-1").describe_snapshots(SnapshotIds=copies)["Snapshots"][0]
    tags = tags_of(copy)
    assert tags["backup-agent:snapshot"] == out["snapshot"] and tags["backup-agent:job"] == "dr"
    assert tags["backup-agent:source-snapshot"] == out["ebs_snapshots"][0] and tags["Name"] == "data1"
    assert copy["Encrypted"] is True
    assert aws.json("snapshots", "dr")[0]["copies"] == {"eu-west-1": copies}
    assert aws.runner("dr").check(read_data=False)["snapshots_checked"] == 2


def test_copy_to_own_region_is_a_config_error(aws: EbsEnv) -> None:
    aws.job("dr", volumes="all", copy_to_regions=[REGION])
    with pytest.raises(ConfigError, match=r"jobs\.dr\.copy_to_regions\[0\]: 'us-east-1' is this node's own"):
        aws.runner("dr").run()


def test_throttling_is_retried_with_backoff(aws: EbsEnv) -> None:
    aws.job("vols", volumes="all")
    aws.proxy.throttles["CreateSnapshots"] = 2
    out = aws.runner("vols").run().to_json()
    assert aws.proxy.actions("CreateSnapshots") == ["CreateSnapshots"] * 3
    assert len(out["ebs_snapshots"]) == 3
    assert len(aws.snapshots()) == 3, "retries made exactly one set"


def test_not_on_ec2_names_the_settings_to_use(aws: EbsEnv) -> None:
    aws.data["aws"]["imds_endpoint"] = closed_port_url()
    aws.job("vols", volumes="all")
    proc = aws.run("run", "vols")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "aws.instance_id" in proc.stderr and "aws.region" in proc.stderr
    assert "no instance metadata service answers" in proc.stderr

    aws.data["aws"].update(instance_id=aws.node.instance_id, region=REGION)
    aws.write()
    assert len(aws.runner("vols").run().extra["ebs_snapshots"]) == 3, "the overrides make IMDS unnecessary"


def test_imdsv1_only_is_refused(aws: EbsEnv) -> None:
    v1 = ImdsServer(aws.node.instance_id, REGION, aws.node.zone, mode="v1")
    with v1.serve() as url:
        aws.data["aws"]["imds_endpoint"] = url
        aws.job("vols", volumes="all")
        with pytest.raises(ConfigError, match=r"aws\.instance_id: not set, and .* offers no IMDSv2 token"):
            aws.runner("vols").run()
    assert aws.proxy.actions("CreateSnapshots") == []


def test_unknown_instance_is_a_config_error(aws: EbsEnv) -> None:
    aws.data["aws"].update(instance_id="i-0000000000000dead", region=REGION)
    aws.job("vols", volumes="all")
    with pytest.raises(ConfigError, match=r"aws\.instance_id: i-0000000000000dead is not an instance in us-east-1"):
        aws.runner("vols").run()


def test_reserved_tag_is_a_config_error(aws: EbsEnv) -> None:
    aws.job("vols", volumes="all", tags={"backup-agent:node": "other"})
    with pytest.raises(ConfigError, match=r"jobs\.vols\.tags\.backup-agent:node: tags starting with"):
        aws.runner("vols")
