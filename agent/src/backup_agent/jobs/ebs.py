"""`ebs_snapshot` jobs: point-in-time EBS snapshots of this instance's own volumes.

One run = one snapshot set: a single crash-consistent CreateSnapshots call for several volumes
(per-volume CreateSnapshot when `multi_volume: false`), optionally between `pre`/`post` hooks and
fsfreeze. Every EBS snapshot carries our tags; listing, retention and checks only ever look at
snapshots with this job's and this node's tags, and never delete one an AMI uses.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

from backup_agent import hooks
from backup_agent.config import Config, Job
from backup_agent.ec2 import AwsError, describe, error_code, make_client
from backup_agent.errors import ConfigError, IntegrityError, JobFailed
from backup_agent.imds import Imds, ImdsError, ImdsV1Only
from backup_agent.jobs import ebs_prune
from backup_agent.jobs import ebs_sets as sets_mod
from backup_agent.jobs.base import Clock, JobRunner, RunResult, Snapshot, pick_snapshot, rfc3339, utcnow
from backup_agent.jobs.ebs_prune import describe_snapshots
from backup_agent.jobs.ebs_sets import SnapshotSet, tag_list, tags_of, user_tags
from backup_agent.jobs.ebs_volumes import (
    Attached,
    SelectionError,
    attached_volumes,
    free_devices,
    nvme_serial_reader,
    select,
)
from backup_agent.state import JobLock, ensure_dir
from backup_agent.storage import layout

log = logging.getLogger(__name__)

# A snapshot still pending after this long is reported by `check` (large first snapshots can
# legitimately take hours).
STALE_PENDING = timedelta(hours=24)


class EbsSnapshot(Snapshot):
    """One run's snapshot set as `snapshots` shows it."""

    def __init__(self, s: SnapshotSet, region: str, copies: dict[str, list[str]]) -> None:
        super().__init__(s.id, s.time)
        self.set = s
        self.region = region
        self.copies = copies

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": rfc3339(self.time),
            "state": self.set.state if self.set.complete else "incomplete",
            "region": self.region,
            "ebs_snapshots": self.set.ids,
            "volumes": [{"snapshot_id": m["SnapshotId"], "volume_id": m.get("VolumeId"),
                         "size_gib": m.get("VolumeSize"), "state": m.get("State"),
                         "progress": m.get("Progress")} for m in self.set.members],
            "copies": self.copies,
        }


# Seconds between the looks for snapshots of an interrupted create call (see _discard_late).
LATE_DISCARD_PAUSES = (1.0, 2.0, 3.0)


class EbsSnapshotJob(JobRunner):
    poll_interval = 5.0

    def __init__(self, cfg: Config, job: Job, clock: Clock = utcnow, *, imds: Imds | None = None,
                 sys_root: str | Path = "/sys", sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(cfg, job, clock)
        self.opts = job.options
        self.imds = imds
        self.sys_root = sys_root
        self.sleep = sleep
        self._clients: dict[str, Any] = {}
        self._home: tuple[str, str] | None = None
        for key in self.opts.get("tags") or {}:
            if key.startswith(sets_mod.PREFIX) or key.startswith("aws:"):
                raise ConfigError(f"{self.where('tags')}.{key}: tags starting with "
                                  f"'{sets_mod.PREFIX}' or 'aws:' are reserved")
        for i, mount in enumerate(self.opts.get("freeze") or []):
            if os.path.normpath(mount) in ("/", "//"):  # "/.", "/a/..": on any node, before anything runs
                raise ConfigError(self._root_refused(i, mount))

    def _root_refused(self, i: int, mount: str) -> str:
        return (f"{self.where('freeze')}[{i}]: refusing to freeze / ('{mount}'; the agent, sshd and logging "
                "write there); use pre/post hooks for the root filesystem")

    def _freezable(self, i: int, mount: str) -> str:
        """The mount point to fsfreeze for `freeze[i]`, resolved on this node at run time (a
        maintenance node may handle the job's snapshots without its mounts): a symlink to / is the
        root filesystem, and freezing a directory freezes whatever filesystem holds it."""
        real = os.path.realpath(mount)
        if real == "/":
            raise ConfigError(self._root_refused(i, mount))
        if not os.path.ismount(real):
            shown = mount if real == mount else f"{mount} (= {real})"
            raise ConfigError(f"{self.where('freeze')}[{i}]: {shown} is not a mount point; list the mount "
                              "points to freeze (see findmnt)")
        return real

    def where(self, key: str) -> str:
        return f"{self.cfg.path}: jobs.{self.job.name}.{key}"

    # --- where we are ----------------------------------------------------------------------------

    def home(self) -> tuple[str, str]:
        """(instance id, region): from aws.instance_id/aws.region, else IMDSv2."""
        if self._home is None:
            aws = self.cfg.aws
            iid, region = aws.get("instance_id"), aws.get("region")
            if not (iid and region):
                ident = self._identity()
                iid, region = iid or ident.instance_id, region or ident.region
            self._home = (iid, region)
        return self._home

    def _identity(self) -> Any:
        imds = self.imds or Imds(self.cfg.aws.get("imds_endpoint"))
        try:
            return imds.identity()
        except ImdsV1Only as exc:
            raise ConfigError(f"{self.cfg.path}: aws.instance_id: not set, and {exc}: require IMDSv2 on the "
                              "instance (http-tokens required) or set aws.instance_id and aws.region") from None
        except ImdsError as exc:
            raise ConfigError(f"{self.cfg.path}: aws.instance_id: not set, and {exc}; not on EC2? set "
                              "aws.instance_id and aws.region") from None

    def region(self) -> str:
        return self.cfg.aws.get("region") or self.home()[1]

    def client(self, region: str) -> Any:
        if region not in self._clients:
            self._clients[region] = make_client(self.cfg, region)
        return self._clients[region]

    def instance(self) -> dict[str, Any]:
        iid, region = self.home()
        try:
            resp = self.client(region).describe_instances(InstanceIds=[iid])
        except AwsError as exc:
            if error_code(exc).startswith("InvalidInstanceID"):
                raise ConfigError(f"{self.cfg.path}: aws.instance_id: {iid} is not an instance in {region}") from None
            raise JobFailed(f"job {self.job.name}: cannot describe instance {iid}: {describe(exc)}") from None
        found = [i for r in resp.get("Reservations", []) for i in r.get("Instances", [])]
        if not found:
            raise ConfigError(f"{self.cfg.path}: aws.instance_id: {iid} is not an instance in {region}")
        return found[0]  # type: ignore[no-any-return]

    def choose(self, inst: dict[str, Any]) -> tuple[list[Attached], list[str]]:
        try:
            return select(attached_volumes(inst), self.opts["volumes"], exclude_root=self.opts["exclude_root"],
                          nvme_serial=nvme_serial_reader(self.sys_root))
        except SelectionError as exc:
            where = self.where("volumes") + (f"[{exc.index}]" if exc.index is not None else "")
            raise ConfigError(f"{where}: {exc}") from None

    def copy_regions(self, home_region: str) -> list[str]:
        regions = list(self.opts.get("copy_to_regions") or [])
        for i, r in enumerate(regions):
            if r == home_region:
                raise ConfigError(f"{self.where('copy_to_regions')}[{i}]: '{r}' is this node's own region")
        return regions

    # --- run -------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        started = time.monotonic()
        ensure_dir(self.cfg.state_dir)
        with JobLock(self.cfg.state_dir, self.job.name):
            result = self._run()
        result.duration_s = time.monotonic() - started
        return result

    def _run(self) -> RunResult:
        freeze = [self._freezable(i, mount) for i, mount in enumerate(self.opts.get("freeze") or [])]
        iid, region = self.home()
        copy_to = self.copy_regions(region)
        ec2 = self.client(region)
        inst = self.instance()
        chosen, warnings = self.choose(inst)
        for w in warnings:
            log.warning("job %s: %s", self.job.name, w)
        created = self.clock()
        set_id = layout.new_snapshot_id(created)
        # Milliseconds: two runs in the same second must still sort in the order they ran.
        tags = self._tags(created.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                          set_id, len(chosen))
        made: list[dict[str, Any]] = []
        attempted = False
        post_failed: str | None = None
        env = {"BACKUP_AGENT_JOB": self.job.name, "BACKUP_AGENT_SNAPSHOT": set_id}
        try:
            with hooks.consistent(pre=self.opts.get("pre"), post=self.opts.get("post"),
                                  freeze=freeze, timeout=float(self.opts["hook_timeout"]),
                                  env=env):
                attempted = True
                made = self._capture(ec2, iid, inst, chosen, tags, set_id)
        except hooks.PostHookFailed as exc:
            if not made:
                self._discard(ec2, set_id)
                raise
            # The capture finished (filesystems thawed in time): the set is whole and kept, and the
            # run is partial (exit 3) so the failed post hook, which may have left the application
            # stopped, is not mistaken for a clean run.
            post_failed = f"snapshot {set_id} was taken ({len(made)} EBS snapshots) and kept, but then: {exc}"
            log.error("job %s: %s", self.job.name, post_failed)
        except hooks.Terminated as exc:
            if not made:
                self._discard(ec2, set_id)
                self._discard_late(ec2, set_id)
                raise JobFailed(f"job {self.job.name}: {exc}; no snapshot made") from None
            raise JobFailed(f"job {self.job.name}: snapshot {set_id} was taken ({len(made)} EBS snapshots), "
                            f"but then: {exc}") from None
        except BaseException as exc:
            if attempted:
                self._discard(ec2, set_id)
                if not made and isinstance(exc, KeyboardInterrupt):  # errors.Interrupted: a signal
                    self._discard_late(ec2, set_id)
            raise
        ids = [m["SnapshotId"] for m in made]
        by_volume = {a.volume_id: a.device for a in chosen}
        result = RunResult(job=self.job.name, snapshot=set_id, warnings=warnings)
        if post_failed:
            result.status = "partial"
            result.warnings.append(post_failed)
        result.extra = {
            "ebs_snapshots": ids,
            "instance_id": iid,
            "region": region,
            "volumes": [{"volume_id": m["VolumeId"], "device": by_volume.get(m["VolumeId"]),
                         "snapshot_id": m["SnapshotId"]} for m in made],
            "post_hook_failed": bool(post_failed),
        }
        log.info("job %s: snapshot %s: %s", self.job.name, set_id, " ".join(ids))
        deadline = time.monotonic() + float(self.opts["wait_timeout"])
        if self.opts["wait"] or copy_to:
            # CopySnapshot needs a completed source, so copies imply waiting for it.
            finished = self._wait_or_discard(ec2, set_id, ids, deadline)
            if copy_to:
                result.extra["copies"] = {r: self._copy(region, r, set_id, finished, tags, deadline)
                                          for r in copy_to}
        return result

    def _tags(self, created: str, set_id: str, count: int) -> list[dict[str, str]]:
        ours = {sets_mod.TAG_JOB: self.job.name, sets_mod.TAG_NODE: self.cfg.node,
                sets_mod.TAG_CREATED: created, sets_mod.TAG_SET: set_id, sets_mod.TAG_COUNT: str(count)}
        if self.cfg.environment:
            ours[sets_mod.TAG_ENVIRONMENT] = self.cfg.environment
        return tag_list({**(self.opts.get("tags") or {}), **ours})

    def _capture(self, ec2: Any, iid: str, inst: dict[str, Any], chosen: list[Attached],
                 tags: list[dict[str, str]], set_id: str) -> list[dict[str, Any]]:
        desc = f"backup-agent {self.cfg.node}/{self.job.name} {set_id}"
        wanted = {a.volume_id for a in chosen}
        try:
            if len(chosen) > 1 and self.opts["multi_volume"]:
                return self._create_multi(ec2, iid, inst, wanted, tags, desc)
            vol_tags = self._volume_tags(ec2, sorted(wanted))
            made = []
            for a in chosen:
                spec = [{"ResourceType": "snapshot",
                         "Tags": tag_list({**vol_tags.get(a.volume_id, {}), **{t["Key"]: t["Value"] for t in tags}})}]
                s = ec2.create_snapshot(VolumeId=a.volume_id, Description=desc, TagSpecifications=spec)
                made.append({"SnapshotId": s["SnapshotId"], "VolumeId": a.volume_id})
            return made
        except AwsError as exc:
            raise JobFailed(f"job {self.job.name}: no snapshot made: {describe(exc)}") from None

    def _create_multi(self, ec2: Any, iid: str, inst: dict[str, Any], wanted: set[str],
                      tags: list[dict[str, str]], desc: str) -> list[dict[str, Any]]:
        attached = attached_volumes(inst)
        spec: dict[str, Any] = {"InstanceId": iid,
                                "ExcludeBootVolume": not any(a.root and a.volume_id in wanted for a in attached)}
        others = [a.volume_id for a in attached if not a.root and a.volume_id not in wanted]
        if others:
            spec["ExcludeDataVolumeIds"] = others
        resp = ec2.create_snapshots(InstanceSpecification=spec, Description=desc, CopyTagsFromSource="volume",
                                    TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags}])
        made = [{"SnapshotId": s["SnapshotId"], "VolumeId": s["VolumeId"]} for s in resp.get("Snapshots", [])]
        # A volume attached between our describe and the call (or an endpoint that ignores
        # ExcludeDataVolumeIds) yields snapshots nobody asked for: they must not join the set.
        extra = [m for m in made if m["VolumeId"] not in wanted]
        for m in extra:
            log.warning("job %s: deleting unrequested snapshot %s of %s", self.job.name, m["SnapshotId"],
                        m["VolumeId"])
            ec2.delete_snapshot(SnapshotId=m["SnapshotId"])
        made = [m for m in made if m["VolumeId"] in wanted]
        missing = wanted - {m["VolumeId"] for m in made}
        if missing:
            raise JobFailed(f"job {self.job.name}: CreateSnapshots skipped {', '.join(sorted(missing))} "
                            "(detached meanwhile?); no snapshot made")
        return made

    def _volume_tags(self, ec2: Any, ids: list[str]) -> dict[str, dict[str, str]]:
        """Volume tags for per-volume snapshots, as CopyTagsFromSource does for the multi-volume call."""
        try:
            vols = ec2.describe_volumes(VolumeIds=ids).get("Volumes", [])
        except AwsError as exc:
            log.warning("job %s: volume tags not copied: %s", self.job.name, describe(exc))
            return {}
        return {v["VolumeId"]: user_tags(tags_of(v)) for v in vols}

    def _discard(self, ec2: Any, set_id: str) -> None:
        """Best effort after a failed run: delete whatever the run made (found by its set tag)."""
        try:
            found = describe_snapshots(ec2, [{"Name": f"tag:{sets_mod.TAG_SET}", "Values": [set_id]}])
            for snap in found:
                ec2.delete_snapshot(SnapshotId=snap["SnapshotId"])
                log.info("job %s: deleted %s of the failed run", self.job.name, snap["SnapshotId"])
        except AwsError as exc:
            log.error("job %s: could not clean up snapshot %s (delete its EBS snapshots by the tag %s=%s): %s",
                      self.job.name, set_id, sets_mod.TAG_SET, set_id, describe(exc))

    def _discard_late(self, ec2: Any, set_id: str) -> None:
        """A signal may interrupt the create call after AWS took it: its snapshots then appear a
        moment after the first discard found nothing, complete and tagged, as a snapshot of a run
        that failed. Look again a few times (6 s in all, within the daemon's ABORT_GRACE)."""
        for pause in LATE_DISCARD_PAUSES:
            self.sleep(pause)
            self._discard(ec2, set_id)

    # --- waiting and copying -------------------------------------------------------------------

    def wait_completed(self, ec2: Any, ids: list[str], deadline: float, what: str) -> list[dict[str, Any]]:
        """Poll until every snapshot is `completed`; JobFailed on a failure state or the deadline."""
        delay = self.poll_interval
        while True:
            try:
                snaps = ec2.describe_snapshots(SnapshotIds=ids).get("Snapshots", [])
            except AwsError as exc:
                if error_code(exc).startswith("InvalidSnapshot"):
                    raise JobFailed(f"{what}: an EBS snapshot disappeared while waiting: {describe(exc)}") from None
                raise JobFailed(f"{what}: cannot follow progress: {describe(exc)}") from None
            failed = [s for s in snaps if s.get("State") in sets_mod.FAILED_STATES]
            if failed:
                reasons = "; ".join(f"{s['SnapshotId']} {s.get('State')}: {s.get('StateMessage') or 'no reason given'}"
                                    for s in failed)
                raise JobFailed(f"{what}: {reasons}")
            pending = [s for s in snaps if s.get("State") != "completed"]
            if not pending:
                return snaps  # type: ignore[no-any-return]
            if time.monotonic() + delay > deadline:
                progress = ", ".join(f"{s['SnapshotId']} {s.get('Progress') or '0%'}" for s in pending)
                raise JobFailed(f"{what}: still pending after wait_timeout {self.opts['wait_timeout']:g}s "
                                f"({progress}); they will complete on their own and show in `snapshots`")
            self.sleep(delay)
            delay = min(delay * 1.5, 30.0)

    def _wait_or_discard(self, ec2: Any, set_id: str, ids: list[str], deadline: float) -> list[dict[str, Any]]:
        try:
            return self.wait_completed(ec2, ids, deadline, f"job {self.job.name}: snapshot {set_id}")
        except JobFailed as exc:
            if "still pending" not in str(exc):
                self._discard(ec2, set_id)  # a set with a failed member is no snapshot at all
            raise

    def _copy(self, home: str, region: str, set_id: str, sources: list[dict[str, Any]],
              tags: list[dict[str, str]], deadline: float) -> list[str]:
        dest = self.client(region)
        ours = {t["Key"]: t["Value"] for t in tags}
        args: dict[str, Any] = {}
        if self.opts.get("copy_kms_key_id"):
            args = {"Encrypted": True, "KmsKeyId": self.opts["copy_kms_key_id"]}
        copies: list[str] = []
        try:
            for src in sources:
                copy_tags = {**user_tags(tags_of(src)), **ours, sets_mod.TAG_SOURCE: src["SnapshotId"],
                             sets_mod.TAG_SOURCE_REGION: home}
                resp = dest.copy_snapshot(SourceRegion=home, SourceSnapshotId=src["SnapshotId"],
                                          Description=f"backup-agent {self.cfg.node}/{self.job.name} {set_id} "
                                                      f"from {home}",
                                          TagSpecifications=[{"ResourceType": "snapshot",
                                                              "Tags": tag_list(copy_tags)}], **args)
                copies.append(resp["SnapshotId"])
            if self.opts["wait"]:
                self.wait_completed(dest, copies, deadline, f"job {self.job.name}: copy of {set_id} to {region}")
        except (JobFailed, *AwsError) as exc:
            self._discard(dest, set_id)
            why = describe(exc) if isinstance(exc, AwsError) else str(exc)
            raise JobFailed(f"job {self.job.name}: snapshot {set_id} was taken in {home}, but copying it to "
                            f"{region} failed: {why}") from None
        log.info("job %s: snapshot %s copied to %s: %s", self.job.name, set_id, region, " ".join(copies))
        return copies

    # --- listing ---------------------------------------------------------------------------------

    def sets(self, region: str) -> list[SnapshotSet]:
        filters = [{"Name": f"tag:{sets_mod.TAG_JOB}", "Values": [self.job.name]},
                   {"Name": f"tag:{sets_mod.TAG_NODE}", "Values": [self.cfg.node]}]
        try:
            return sets_mod.group(describe_snapshots(self.client(region), filters))
        except AwsError as exc:
            raise JobFailed(f"job {self.job.name}: cannot list snapshots in {region}: {describe(exc)}") from None

    def snapshots(self) -> list[Snapshot]:
        return list(self._snapshots(with_copies=False))

    def describe_snapshots(self) -> list[Snapshot]:
        return list(self._snapshots(with_copies=True))

    def _snapshots(self, *, with_copies: bool) -> list[EbsSnapshot]:
        region = self.region()
        copies: dict[str, dict[str, list[str]]] = {}
        for r in self.opts.get("copy_to_regions") or [] if with_copies else []:
            if r != region:
                for s in self.sets(r):
                    copies.setdefault(s.id, {})[r] = s.ids
        return [EbsSnapshot(s, region, copies.get(s.id, {})) for s in self.sets(region)]

    def select_set(self, snapshot: str | None, at: str | None) -> EbsSnapshot:
        return pick_snapshot(self._snapshots(with_copies=False), snapshot, at, self.job.name, self.region(),
                             also=lambda s, wanted: wanted in s.set.ids)

    # --- restore: instructions only ----------------------------------------------------------------

    def restore(self, *, snapshot: str | None, at: str | None, target: str | None, paths: list[str],
                wait: bool = False, **_: Any) -> dict[str, Any]:
        if paths:
            raise ConfigError("--path: ebs_snapshot jobs restore whole volumes, not paths")
        chosen = self.select_set(snapshot, at)
        region = chosen.region
        zone, iid, devices = "<availability-zone>", "<instance-id>", {}
        try:
            inst = self.instance()
            zone = inst.get("Placement", {}).get("AvailabilityZone") or zone
            iid = inst["InstanceId"]
            devices = {a.volume_id: a.device for a in attached_volumes(inst)}
        except (ConfigError, JobFailed) as exc:
            log.warning("cannot tell this instance's zone (%s): fill in the placeholders", exc)
        # The restored copy goes beside the live volume, so it needs a device name nobody uses.
        free = iter(free_devices(devices.values()))
        volumes = []
        for m in chosen.set.members:
            device = devices.get(m.get("VolumeId", ""))
            volumes.append({
                "snapshot_id": m["SnapshotId"], "volume_id": m.get("VolumeId"), "device": device,
                "size_gib": m.get("VolumeSize"), "state": m.get("State"), "availability_zone": zone,
                "create_volume": (f"aws ec2 create-volume --region {region} --availability-zone {zone} "
                                  f"--snapshot-id {m['SnapshotId']}"),
                "attach_volume": (f"aws ec2 attach-volume --region {region} --instance-id {iid} "
                                  f"--device {next(free, '<free device>')} --volume-id <new volume id>"),
            })
        lines = [f"snapshot {chosen.id} ({rfc3339(chosen.time)}, {chosen.set.state}) in {region}: "
                 "nothing was written; to get a volume back:"]
        for v in volumes:
            origin = f"{v['volume_id']}" + (f" at {v['device']}" if v["device"] else "")
            lines += [f"  # {v['snapshot_id']} of {origin}, {v['size_gib']} GiB", f"  {v['create_volume']}",
                      f"  {v['attach_volume']}"]
        lines.append("then mount it somewhere (not over the live filesystem) and copy back what you need")
        return {"job": self.job.name, "snapshot": chosen.id, "time": rfc3339(chosen.time), "region": region,
                "availability_zone": zone, "volumes": volumes, "instructions": "\n".join(lines)}

    # --- prune -----------------------------------------------------------------------------------

    def prune(self, *, dry_run: bool, collect_garbage: bool = True) -> dict[str, Any]:
        # Nothing to collect: deleting a set's EBS snapshots frees its blocks (AWS keeps them).
        ensure_dir(self.cfg.state_dir)
        with JobLock(self.cfg.state_dir, self.job.name):
            region = self.region()
            result: dict[str, Any] = {"job": self.job.name, "dry_run": dry_run, "region": region}
            result.update(self._prune_region(region, dry_run, foreign=True))
            copies = {r: self._prune_region(r, dry_run, foreign=False)
                      for r in self.opts.get("copy_to_regions") or [] if r != region}
            if copies:
                result["copies"] = copies
            deleted = len(result["ebs_snapshots_deleted"]) + sum(len(c["ebs_snapshots_deleted"])
                                                                 for c in copies.values())
            result.update(objects_deleted=deleted, bytes_freed=0)
            notes = []
            if not self.job.retention:
                notes.append(f"jobs.{self.job.name}.retention is not set: every snapshot is kept")
            if result["in_use"]:
                notes.append(f"kept {len(result['in_use'])} snapshot(s) an AMI uses: "
                             + ", ".join(f"{u['snapshot']} ({', '.join(u['images'])})" for u in result["in_use"]))
            if result["foreign_snapshots"]:
                notes.append(f"left alone {len(result['foreign_snapshots'])} snapshot(s) of these volumes without "
                             f"this job's tags: {', '.join(result['foreign_snapshots'])}")
            if notes:
                result["note"] = "; ".join(notes)
            return result

    def _prune_region(self, region: str, dry_run: bool, *, foreign: bool) -> dict[str, Any]:
        try:
            return ebs_prune.prune_region(self.client(region), self.sets(region), self.job.retention,
                                          dry_run=dry_run, report_foreign=foreign)
        except AwsError as exc:
            raise JobFailed(f"job {self.job.name}: prune in {region}: {describe(exc)}") from None

    # --- check -----------------------------------------------------------------------------------

    def check(self, *, read_data: bool) -> dict[str, Any]:
        region = self.region()
        now = self.clock()
        problems: list[str] = []
        pending: list[str] = []
        checked = 0
        regions = [region, *[r for r in self.opts.get("copy_to_regions") or [] if r != region]]
        for r in regions:
            where = "" if r == region else f" (copy in {r})"
            for s in self.sets(r):
                checked += 1
                if not s.complete:
                    problems.append(f"snapshot {s.id}{where}: {len(s.members)} of {s.expected} EBS snapshots "
                                    "left (some were deleted outside the agent)")
                for m in s.members:
                    state = m.get("State")
                    if state in sets_mod.FAILED_STATES:
                        problems.append(f"snapshot {s.id}{where}: {m['SnapshotId']} is {state}: "
                                        f"{m.get('StateMessage') or 'no reason given'}")
                    elif state != "completed":
                        if now - s.time > STALE_PENDING:
                            problems.append(f"snapshot {s.id}{where}: {m['SnapshotId']} still {state} after "
                                            f"{(now - s.time).total_seconds() / 3600:.0f}h")
                        else:
                            pending.append(m["SnapshotId"])
        result: dict[str, Any] = {"job": self.job.name, "snapshots_checked": checked, "read_data": read_data,
                                  "pending": pending, "errors": problems,
                                  "status": "ok" if not problems else "error"}
        if read_data:
            result["note"] = "--read-data does not apply to EBS snapshots: AWS keeps their blocks"
        if problems:
            raise IntegrityError("; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5
                                                            else ""), result)
        return result
