"""The decisions inside `ebs_snapshot` jobs, without a network: which volumes a job means, how EBS
snapshots group into runs, waiting for completion, and what users read when AWS says no."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, NoCredentialsError

from backup_agent import config, ec2
from backup_agent.errors import JobFailed
from backup_agent.jobs.ebs import EbsSnapshotJob
from backup_agent.jobs.ebs_sets import group
from backup_agent.jobs.ebs_volumes import Attached, SelectionError, attached_volumes, nvme_serial_reader, select

ROOT, DATA1, DATA2 = "vol-0aaaaaaaaaaaaaaa1", "vol-0bbbbbbbbbbbbbbb2", "vol-0ccccccccccccccc3"
INSTANCE = {
    "RootDeviceName": "/dev/xvda",
    "BlockDeviceMappings": [
        {"DeviceName": "/dev/sdf", "Ebs": {"VolumeId": DATA1}},
        {"DeviceName": "/dev/xvda", "Ebs": {"VolumeId": ROOT}},
        {"DeviceName": "/dev/sdg", "Ebs": {"VolumeId": DATA2}},
    ],
}
ATTACHED = attached_volumes(INSTANCE)


def no_nvme(name: str) -> str | None:
    return None


def pick(wanted: Any, exclude_root: bool = False, **kw: Any) -> list[str]:
    chosen, _ = select(ATTACHED, wanted, exclude_root=exclude_root, nvme_serial=kw.pop("nvme", no_nvme),
                       resolve=kw.pop("resolve", lambda p: p))
    return [a.volume_id for a in chosen]


def test_attached_volumes_root_first() -> None:
    assert ATTACHED[0] == Attached("/dev/xvda", ROOT, True)
    assert [a.root for a in ATTACHED] == [True, False, False]


def test_all_and_exclude_root() -> None:
    assert pick("all") == [ROOT, DATA1, DATA2]
    assert pick("all", exclude_root=True) == [DATA1, DATA2]


def test_ids_and_device_aliases() -> None:
    assert pick([DATA2, DATA1]) == [DATA1, DATA2], "attachment order, not list order"
    assert pick(["/dev/xvdf"]) == [DATA1], "a Xen guest's xvdf is the API's sdf"
    assert pick(["/dev/sda"]) == [ROOT] and pick(["/dev/xvda1"]) == [ROOT], "root by disk or partition"


def test_nvme_names_through_the_volume_serial(tmp_path: Path) -> None:
    serial = tmp_path / "block/nvme1n1/device/serial"
    serial.parent.mkdir(parents=True)
    serial.write_text("vol0ccccccccccccccc3  \n")
    read = nvme_serial_reader(tmp_path)
    assert read("nvme1n1") == DATA2 and read("nvme9n1") is None
    assert pick(["/dev/nvme1n1"], nvme=read) == [DATA2]
    assert pick(["/dev/nvme1n1p1"], nvme=read) == [DATA2], "a partition means its disk"
    assert pick(["/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0bbbbbbbbbbbbbbb2"]) == [DATA1]


def test_udev_links_are_followed() -> None:
    links = {"/dev/data": "/dev/sdg"}
    assert pick(["/dev/data"], resolve=lambda p: links.get(p, p)) == [DATA2]


def test_free_device_names_for_restored_copies() -> None:
    from backup_agent.jobs.ebs_volumes import free_devices

    assert free_devices(["/dev/xvda", "/dev/xvdf", "/dev/sdh"])[:3] == ["/dev/sdg", "/dev/sdi", "/dev/sdj"]


def test_bad_entries_name_their_index() -> None:
    with pytest.raises(SelectionError, match="device /dev/sdz is not an EBS volume attached") as exc:
        pick([DATA1, "/dev/sdz"])
    assert exc.value.index == 1
    with pytest.raises(SelectionError, match="vol-0ddd is not attached to this instance") as exc:
        pick(["vol-0ddd"])
    assert exc.value.index == 0


def test_exclude_root_warns_when_listed_and_fails_when_nothing_is_left() -> None:
    chosen, warnings = select(ATTACHED, [ROOT, DATA1], exclude_root=True, nvme_serial=no_nvme)
    assert [a.volume_id for a in chosen] == [DATA1] and "skipping the root volume" in warnings[0]
    with pytest.raises(SelectionError, match="exclude_root removed the only one"):
        select(ATTACHED, [ROOT], exclude_root=True, nvme_serial=no_nvme)


def snap(sid: str, vol: str, state: str = "completed", **tags: str) -> dict[str, Any]:
    return {"SnapshotId": sid, "VolumeId": vol, "State": state, "StartTime": datetime(2026, 1, 5, tzinfo=UTC),
            "Tags": [{"Key": f"backup-agent:{k}", "Value": v} for k, v in tags.items()]}


def test_grouping_into_runs() -> None:
    a = {"snapshot": "20260101T000000Z-aaaaaa", "created": "2026-01-01T00:00:00Z", "volumes": "2"}
    b = {"snapshot": "20260102T000000Z-bbbbbb", "created": "2026-01-02T00:00:00Z", "volumes": "2"}
    sets = group([snap("snap-3", DATA1, "pending", **b), snap("snap-1", DATA2, **a), snap("snap-2", DATA1, **a),
                  snap("snap-9", DATA1), snap("snap-4", DATA2, "error", **b)])
    assert [s.id for s in sets] == ["20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb", "snap-9"]
    assert sets[0].ids == ["snap-2", "snap-1"] and sets[0].state == "completed" and sets[0].complete
    assert sets[1].state == "error", "one failed member spoils the run"
    assert sets[2].time == datetime(2026, 1, 5, tzinfo=UTC), "untagged: its start time"
    assert not group([snap("snap-5", DATA1, **a)])[0].complete


class FakeEc2:
    """describe_snapshots answering from a script of states, one list per call."""

    def __init__(self, script: list[list[dict[str, Any]]]) -> None:
        self.script = script

    def describe_snapshots(self, **kw: Any) -> dict[str, Any]:
        return {"Snapshots": self.script.pop(0) if len(self.script) > 1 else self.script[0]}


def job(tmp_path: Path, **spec: Any) -> EbsSnapshotJob:
    cfg = config.from_dict({"node": "n1", "state_dir": str(tmp_path), "storage": {"bucket": "b-unused"},
                            "aws": {"instance_id": "i-0abc", "region": "us-east-1"},
                            "jobs": {"v": {"type": "ebs_snapshot", **spec}}}, "config.yaml")
    slept: list[float] = []
    runner = EbsSnapshotJob(cfg, cfg.job("v"), sleep=slept.append)
    runner.poll_interval = 0.01
    return runner


def test_wait_until_completed(tmp_path: Path) -> None:
    fake = FakeEc2([[snap("snap-1", DATA1, "pending")], [snap("snap-1", DATA1, "pending")],
                    [snap("snap-1", DATA1, "completed")]])
    done = job(tmp_path).wait_completed(fake, ["snap-1"], deadline=float("inf"), what="run")
    assert done[0]["State"] == "completed" and fake.script == [[snap("snap-1", DATA1, "completed")]]


def test_wait_reports_failure_states(tmp_path: Path) -> None:
    failed = {**snap("snap-1", DATA1, "error"), "StateMessage": "internal error"}
    with pytest.raises(JobFailed, match="snap-1 error: internal error"):
        job(tmp_path).wait_completed(FakeEc2([[failed]]), ["snap-1"], deadline=float("inf"), what="run")


def test_wait_is_bounded(tmp_path: Path) -> None:
    pending = {**snap("snap-1", DATA1, "pending"), "Progress": "42%"}
    with pytest.raises(JobFailed, match=r"still pending after wait_timeout 3600s \(snap-1 42%\)"):
        job(tmp_path).wait_completed(FakeEc2([[pending]]), ["snap-1"], deadline=0, what="run")


def test_freezing_root_is_refused(tmp_path: Path) -> None:
    from backup_agent.errors import ConfigError

    with pytest.raises(ConfigError, match=r"jobs\.v\.freeze\[1\]: refusing to freeze /"):
        job(tmp_path, freeze=["/dev/shm", "/"])


def client_error(code: str, op: str = "CreateSnapshots") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "nope"}}, op)


def test_aws_errors_read_as_one_line_with_a_next_step() -> None:
    assert ec2.describe(client_error("RequestLimitExceeded")).endswith("spread the fleet's runs with `splay`)")
    assert "docs/IAM.md" in ec2.describe(client_error("UnauthorizedOperation"))
    assert "docs/IAM.md" in ec2.describe(NoCredentialsError())


def test_client_uses_storage_keys_only_for_aws_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "FROM-ENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")

    def key_of(storage: dict[str, Any]) -> str:
        cfg = config.from_dict({"storage": {"bucket": "b-unused", **storage}})
        return str(ec2.make_client(cfg, "us-east-1")._request_signer._credentials.access_key)

    keys = {"access_key_id": "STORAGE-KEY", "secret_access_key": "s"}
    assert key_of(keys) == "STORAGE-KEY"
    assert key_of({**keys, "endpoint_url": "http://127.0.0.1:8333"}) == "FROM-ENV", "SeaweedFS keys are not AWS keys"
    assert key_of({}) == "FROM-ENV"


class FakePaginator:
    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages

    def paginate(self, **kw: Any) -> list[dict[str, Any]]:
        return self.pages


class PruneEc2:
    def __init__(self, images: list[dict[str, Any]]) -> None:
        self.images = images
        self.deleted: list[str] = []

    def get_paginator(self, name: str) -> FakePaginator:
        return FakePaginator([{"Images": self.images}] if name == "describe_images" else [{"Snapshots": []}])

    def delete_snapshot(self, SnapshotId: str) -> None:
        self.deleted.append(SnapshotId)


def test_failed_sets_go_whatever_the_policy_and_ami_sets_stay_whole() -> None:
    from backup_agent.jobs.ebs_prune import prune_region

    def run(day: int, *states: str) -> list[dict[str, Any]]:
        tags = {"snapshot": f"202601{day:02d}T000000Z-abcdef", "created": f"2026-01-{day:02d}T00:00:00Z"}
        return [snap(f"snap-{day}{i}", vol, st, **tags) for i, (vol, st) in enumerate(zip((DATA1, DATA2), states,
                                                                                            strict=False))]

    sets = group(run(1, "completed", "completed") + run(2, "completed", "completed") + run(3, "completed", "error")
                 + run(4, "completed", "completed"))
    ec2 = PruneEc2([{"ImageId": "ami-1", "BlockDeviceMappings": [{"Ebs": {"SnapshotId": "snap-11"}}]}])
    out = prune_region(ec2, sets, {"keep_last": 2}, dry_run=False, report_foreign=False)
    assert out["forget"] == ["20260103T000000Z-abcdef"], "day 3 failed; days 4 and 2 are the last two good ones"
    assert ec2.deleted == ["snap-30", "snap-31"]
    out = prune_region(ec2, sets, {"keep_last": 1}, dry_run=True, report_foreign=False)
    assert out["in_use"] == [{"snapshot": "20260101T000000Z-abcdef", "images": ["ami-1"],
                              "ebs_snapshots": ["snap-10", "snap-11"]}]
    assert "20260101T000000Z-abcdef" not in out["forget"] and "20260102T000000Z-abcdef" in out["forget"]
