"""`backup-agent cost [JOB]`: what a job's stored data costs a month, and what a full restore would.

One LIST per job gives bytes and objects by storage class; a price table (the package's
data/prices-us-east-1.json, which names its region and date, merged with config `cost.prices`)
turns them into USD with the billing rules that make cold classes dearer than their headline
price for many small objects: minimum billable object sizes, the per-object index overhead of
GLACIER and DEEP_ARCHIVE, Intelligent-Tiering's monitoring fee. ebs_snapshot jobs are estimated
from their latest snapshot set's volume sizes (an upper bound: EBS bills the blocks stored).

The result of each job is recorded (`state_dir/cost/<job>.json`) for status, metrics and the
fleet view. Storage is reached only in `_objects` and `_ebs_volumes_gib`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from backup_agent.config import Config, Job
from backup_agent.state import atomic_write, cost_path

log = logging.getLogger(__name__)

ARCHIVED = ("GLACIER", "DEEP_ARCHIVE")
def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def price_table(cfg: Config) -> dict[str, Any]:
    """The packaged table with the config's `cost.prices` laid over it (a partial table is fine:
    `{region: eu-west-1, date: ..., classes: {STANDARD: {storage_gb_month: 0.024}}}`)."""
    text = resources.files("backup_agent").joinpath("data/prices-us-east-1.json").read_text()
    return _merge(json.loads(text), (cfg.cost or {}).get("prices") or {})


# --- the one place that reads storage -----------------------------------------------------------


def _objects(runner: Any) -> Iterator[tuple[str, int]]:
    """(storage class, size) of every object of the job: one LIST."""
    for o in runner.list_keys(""):
        yield o.storage_class or "STANDARD", o.size


def _ebs_volumes_gib(runner: Any) -> tuple[int, int]:
    """(GiB of the volumes in the latest snapshot set, EBS snapshots in the job)."""
    snaps = runner.snapshots()
    if not snaps:
        return 0, 0
    members = snaps[-1].set.members
    return sum(int(m.get("VolumeSize") or 0) for m in members), sum(len(s.set.members) for s in snaps)


# --- pure arithmetic -------------------------------------------------------------------------


def class_cost(cls: str, sizes: list[int], prices: dict[str, Any]) -> dict[str, Any]:
    """Monthly USD of objects of these sizes in `cls`, and what they would cost in STANDARD."""
    gb = float(prices.get("gb", 1 << 30))
    table = prices["classes"]
    p = table.get(cls) or table["STANDARD"]  # an unknown class: priced as STANDARD, and said so
    std = table["STANDARD"]["storage_gb_month"]
    smallest = int(p.get("min_object_bytes", 0))
    billable = sum(max(s, smallest) for s in sizes) + len(sizes) * int(p.get("overhead_bytes", 0))
    usd = billable / gb * p["storage_gb_month"]
    usd += len(sizes) * int(p.get("standard_overhead_bytes", 0)) / gb * std
    if p.get("monitoring_per_1000_objects"):
        watched = sum(1 for s in sizes if s >= int(p.get("monitoring_min_object_bytes", 0)))
        usd += watched / 1000 * p["monitoring_per_1000_objects"]
    out = {"bytes": sum(sizes), "objects": len(sizes), "monthly_usd": round(usd, 6),
           "standard_monthly_usd": round(sum(sizes) / gb * std, 6), "min_days": p.get("min_days", 0)}
    if cls not in table:
        out["note"] = f"no price for {cls} in the table: priced as STANDARD"
    return out


def restore_cost(classes: dict[str, list[int]], prices: dict[str, Any]) -> dict[str, Any]:
    """Cost and delay of reading everything back once, per retrieval tier. Instantly readable
    classes pay their per-GB retrieval fee and GETs in every tier; archived ones the tier's."""
    gb = float(prices.get("gb", 1 << 30))
    table = prices["classes"]
    out: dict[str, Any] = {}
    for tier in ("Expedited", "Standard", "Bulk"):
        usd, delay, possible = 0.0, "immediate", True
        for cls, sizes in classes.items():
            p = table.get(cls) or table["STANDARD"]
            n, size = len(sizes), sum(sizes)
            if "tiers" in p:
                t = p["tiers"].get(tier)
                if t is None:
                    possible = False  # DEEP_ARCHIVE has no Expedited tier
                    continue
                usd += size / gb * t["retrieval_gb"] + n / 1000 * t["per_1000_requests"]
                delay = t["delay"] if delay == "immediate" else f"{delay}; {t['delay']}"
            usd += size / gb * p.get("retrieval_gb", 0.0) + n / 1000 * p.get("get_per_1000", 0.0004)
        out[tier] = {"usd": round(usd, 4), "delay": delay} if possible else {
            "usd": None, "delay": f"no {tier} tier for {', '.join(c for c in classes if c == 'DEEP_ARCHIVE')}"}
    return out


def job_cost(job: Job, runner: Any, prices: dict[str, Any]) -> dict[str, Any]:
    if job.type == "ebs_snapshot":
        gib, count = _ebs_volumes_gib(runner)
        usd = gib * float(prices.get("ebs_snapshot_gb_month", 0.05))
        return {"job": job.name, "classes": {"EBS_SNAPSHOT": {"bytes": gib << 30, "objects": count,
                                                             "monthly_usd": round(usd, 6)}},
                "monthly_usd": round(usd, 6), "standard_monthly_usd": None, "savings_usd": None,
                "full_restore": None, "note": "EBS bills the blocks its snapshots store: this is the size of the "
                                              "latest set's volumes, an upper bound"}
    by_class: dict[str, list[int]] = {}
    for cls, size in _objects(runner):
        by_class.setdefault(cls, []).append(size)
    classes = {cls: class_cost(cls, sizes, prices) for cls, sizes in sorted(by_class.items())}
    usd = sum(c["monthly_usd"] for c in classes.values())
    std = sum(c["standard_monthly_usd"] for c in classes.values())
    return {"job": job.name, "classes": classes, "monthly_usd": round(usd, 6),
            "standard_monthly_usd": round(std, 6),
            # Positive: what the cold classes save a month against keeping it all in STANDARD.
            "savings_usd": round(std - usd, 6), "full_restore": restore_cost(by_class, prices)}


def cost_view(cfg: Config, jobs: list[Job]) -> list[dict[str, Any]]:
    from backup_agent.jobs import runner_for

    prices = price_table(cfg)
    rows = []
    for job in jobs:
        row = job_cost(job, runner_for(cfg, job), prices)
        row["prices"] = {"region": prices.get("region"), "date": prices.get("date")}
        record_cost(cfg, row)
        rows.append(row)
    return rows


def record_cost(cfg: Config, row: dict[str, Any]) -> None:
    record = {"job": row["job"], "last_cost": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "bytes": sum(c["bytes"] for c in row["classes"].values()),
              "objects": sum(c["objects"] for c in row["classes"].values()),
              "monthly_usd": row["monthly_usd"], "savings_usd": row.get("savings_usd"),
              "classes": {k: {"bytes": v["bytes"], "objects": v["objects"], "monthly_usd": v["monthly_usd"]}
                          for k, v in row["classes"].items()}}
    try:
        atomic_write(cost_path(cfg.state_dir, row["job"]), json.dumps(record, indent=2, sort_keys=True).encode())
    except OSError as exc:
        log.error("cannot write the cost record of job %s: %s", row["job"], exc.strerror or exc)
    if cfg.metrics.get("textfile"):
        from backup_agent.metrics import write_textfile

        write_textfile(cfg.metrics["textfile"], cfg.state_dir, list(cfg.jobs))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def format_cost(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no jobs configured"
    p = rows[0]["prices"]
    lines = [f"prices: {p['region']} as of {p['date']} (USD; override under cost.prices)"]
    for r in rows:
        lines.append(f"{r['job']}: ${r['monthly_usd']:.4f}/month"
                     + (f", saves ${r['savings_usd']:.4f}/month against STANDARD" if r.get("savings_usd") else ""))
        for cls, c in r["classes"].items():
            lines.append(f"  {cls:<20} {c['objects']:>9} objects {_size(c['bytes']):>11}  ${c['monthly_usd']:.4f}")
        for tier, t in (r.get("full_restore") or {}).items():
            usd = "n/a" if t["usd"] is None else f"${t['usd']:.4f}"
            lines.append(f"  full restore, {tier:<9} {usd:>10}  {t['delay']}")
        if r.get("note"):
            lines.append(f"  note: {r['note']}")
    return "\n".join(lines)
