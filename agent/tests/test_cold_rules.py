"""The cold tier's deciding functions, without I/O: archive states, tiers, what a listing may
promise, and which lifecycle rules belong to whom."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_agent.config import Config, from_dict
from backup_agent.errors import ConfigError
from backup_agent.storage import cold
from backup_agent.storage.bucket import desired_rules, is_ours, lifecycle_diff, manifest_warnings, merge_rules
from backup_agent.storage.memory import MemoryStore
from backup_agent.storage.store import ObjectInfo


def test_classify_reads_storage_class_and_restore_header() -> None:
    def head(storage_class: str = "STANDARD", restore: str | None = None,
             archive_status: str | None = None) -> ObjectInfo:
        return ObjectInfo("k", 1, datetime(2026, 1, 1, tzinfo=UTC), storage_class=storage_class, restore=restore,
                          archive_status=archive_status)

    assert cold.classify(head()) == (cold.READY, "STANDARD")
    assert cold.classify(head("GLACIER_IR")) == (cold.READY, "GLACIER_IR")
    assert cold.classify(head("DEEP_ARCHIVE")) == (cold.ARCHIVED_STATE, "DEEP_ARCHIVE")
    assert cold.classify(head("GLACIER", 'ongoing-request="true"')) == (cold.PENDING, "GLACIER")
    restored = 'ongoing-request="false", expiry-date="Fri, 23 Dec 2026 00:00:00 GMT"'
    assert cold.classify(head("GLACIER", restored)) == (cold.READY, "GLACIER")
    it = head("INTELLIGENT_TIERING", archive_status="DEEP_ARCHIVE_ACCESS")
    assert cold.classify(it) == (cold.ARCHIVED_STATE, "DEEP_ARCHIVE")


def test_tiers() -> None:
    assert cold.tier_info("GLACIER", "Expedited").delay == "1-5 minutes"
    assert cold.tier_info("DEEP_ARCHIVE", "Bulk").max_hours == 48
    with pytest.raises(ConfigError, match="not offered for DEEP_ARCHIVE"):
        cold.tier_info("DEEP_ARCHIVE", "Expedited")


def test_restorability_is_exact_per_snapshot() -> None:
    archived = {"packs/aa/1": 100, "files/big@1": 50}
    refs: dict[str, set[str] | None] = {"s1": {"packs/aa/1", "packs/bb/2"}, "s2": {"packs/bb/2"}, "s3": None,
                                        "s4": set()}
    out = cold.restorability(refs, archived)
    assert out["s1"] == {"instant_restore": False, "archived_objects": 1, "archived_bytes": 100}
    assert out["s2"]["instant_restore"] is True and out["s4"]["instant_restore"] is True
    assert out["s3"] == {"instant_restore": None}


def test_early_deletion() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert cold.early_deletion("DEEP_ARCHIVE", now - timedelta(days=179), now)
    assert not cold.early_deletion("DEEP_ARCHIVE", now - timedelta(days=181), now)
    assert not cold.early_deletion(None, now, now) and not cold.early_deletion("STANDARD", now, now)


def test_a_request_not_visible_on_head_is_not_repeated_until_its_window_passed(tmp_path: Path) -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    thaw = cold.Thaw(MemoryStore(), "n/j/", tmp_path, "j", tier="Standard", days=3, concurrency=2,
                     clock=lambda: now)
    thaw.record.requests["n/j/packs/aa/1"] = {"requested_at": "2026-06-01T02:00:00Z", "tier": "Standard",
                                              "storage_class": "DEEP_ARCHIVE"}
    thaw.record.requests["n/j/packs/aa/2"] = {"requested_at": "2026-05-30T02:00:00Z", "tier": "Standard",
                                              "storage_class": "DEEP_ARCHIVE"}
    assert thaw._asked_recently("n/j/packs/aa/1")  # 10 h into a "within 12 hours" restore
    assert not thaw._asked_recently("n/j/packs/aa/2")  # long past: the restored copy expired
    assert not thaw._asked_recently("n/j/packs/aa/3")


def test_record_survives_garbage(tmp_path: Path) -> None:
    path = tmp_path / "restores" / "j.json"
    path.parent.mkdir()
    path.write_text("{not json")
    rec = cold.Record(tmp_path, "j")
    assert rec.requests == {} and rec.progress == {}
    rec.requests["k"] = {"tier": "Bulk"}
    rec.save()
    assert cold.Record(tmp_path, "j").requests == {"k": {"tier": "Bulk"}}
    rec.requests.clear()
    rec.save()
    assert not path.exists()


def _cfg(prefix: str, **job: object) -> Config:
    return from_dict({"node": prefix, "storage": {"bucket": "acme-backups"},
                      "jobs": {"etc": {"type": "files", "paths": ["/etc"], **job}}})


def test_rule_ownership_is_per_node_prefix() -> None:
    assert is_ours("backup-agent-web-01-housekeeping", "web-01")
    assert is_ours("backup-agent-web-01/etc/packs", "web-01")
    assert not is_ours("backup-agent-web-01-b-housekeeping", "web-01")
    assert not is_ours("backup-agent-web-01-b/etc/packs", "web-01")
    assert not is_ours("backup-agent-prod/web-01/etc/packs", "prod")  # a nested prefix is another node's
    assert not is_ours("my-rule", "web-01")


def test_desired_rules_merge_and_diff() -> None:
    cfg = _cfg("web-01", transition_days=30, transition_class="DEEP_ARCHIVE")
    ours = desired_rules(cfg)
    assert [r["ID"] for r in ours] == ["backup-agent-web-01-housekeeping", "backup-agent-web-01/etc/packs",
                                       "backup-agent-web-01/etc/files", "backup-agent-web-01/etc/blobs"]
    user = {"ID": "mine", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 3}}
    other = {"ID": "backup-agent-db-01/etc/packs", "Filter": {"Prefix": "db-01/etc/packs/"}, "Status": "Enabled"}
    stale = {"ID": "backup-agent-web-01/old/dumps", "Filter": {"Prefix": "web-01/old/dumps/"}, "Status": "Enabled"}
    merged = merge_rules([user, other, stale], ours, "web-01")
    assert merged == [user, other, *ours]
    assert lifecycle_diff(merged, ours, "web-01") == []
    diff = lifecycle_diff([user, other, stale, ours[0]], ours, "web-01")
    assert [(d["rule"], d["change"]) for d in diff] == [
        ("backup-agent-web-01/etc/packs", "add"), ("backup-agent-web-01/etc/files", "add"),
        ("backup-agent-web-01/etc/blobs", "add"), ("backup-agent-web-01/old/dumps", "remove")]
    assert "move web-01/etc/packs/ to DEEP_ARCHIVE after 30 days" in diff[0]["what"]


def test_user_rules_that_would_archive_manifests_are_named() -> None:
    cfg = _cfg("web-01")
    whole = {"ID": "cheap", "Status": "Enabled", "Filter": {}, "Transitions": [{"Days": 1, "StorageClass": "GLACIER"}]}
    data_only = {"ID": "fine", "Status": "Enabled", "Filter": {"Prefix": "web-01/etc/packs/"},
                 "Transitions": [{"Days": 1, "StorageClass": "GLACIER"}]}
    tagged = {"ID": "tagged", "Status": "Enabled", "Filter": {"Tag": {"Key": "a", "Value": "b"}},
              "Transitions": [{"Days": 1, "StorageClass": "GLACIER"}]}
    ia = {"ID": "ia", "Status": "Enabled", "Filter": {}, "Transitions": [{"Days": 30, "StorageClass": "STANDARD_IA"}]}
    [warning] = manifest_warnings([whole, data_only, tagged, ia], cfg)
    assert warning.startswith("rule cheap moves s3://acme-backups/web-01/etc/snapshots/ to GLACIER")


def test_transition_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"jobs\.etc\.transition_class: GLACIER_IR is not colder than storage_class"):
        _cfg("n", storage_class="GLACIER", transition_days=5, transition_class="GLACIER_IR")
    with pytest.raises(ConfigError, match=r"jobs\.etc\.transition_days: .*30 days"):
        _cfg("n", transition_days=7, transition_class="STANDARD_IA")
    with pytest.raises(ConfigError, match=r"jobs\.etc\.transition_class: must be one of"):
        _cfg("n", transition_days=7, transition_class="STANDARD")
    _cfg("n", storage_class="STANDARD_IA", transition_days=7, transition_class="DEEP_ARCHIVE")
