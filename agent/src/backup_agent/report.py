"""`backup-agent report --html FILE`: one self-contained page about this node's backups.

Per job: its snapshots over time (total size and bytes added per run, from each manifest's
trailer), its cost by storage class (`cost`), its last restore drill and its last failures.
Charts are PNGs drawn by matplotlib (the `report` extra) and inlined as data: URIs; the CSS is
inline too, so the page can be mailed or archived as one file and opened anywhere offline.

A job whose storage cannot be read still gets its section, saying why.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backup_agent.config import Config, Job
from backup_agent.errors import AgentError, ConfigError
from backup_agent.state import atomic_write

log = logging.getLogger(__name__)

# Manifests read per job for the history chart: the newest ones (a manifest never changes,
# so what was read once is cached in state_dir and only new snapshots cost a GET).
HISTORY = 60
PALETTE = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#718096", "#b7791f"]

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1a202c;background:#f7fafc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:0 0 8px}
.meta{color:#4a5568;margin-bottom:16px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:16px;margin:0 0 16px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #e2e8f0;padding:3px 8px;text-align:left}
th{background:#edf2f7}.ok{color:#276749;font-weight:600}.bad{color:#c53030;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts img{max-width:100%;border:1px solid #e2e8f0}
.err{background:#fff5f5;border-left:4px solid #c53030;padding:6px 10px;margin:4px 0;white-space:pre-wrap}
"""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a server
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("report --html: needs matplotlib; install the agent with its report extra "
                          "(pip install 'backup-agent[report]')") from None
    return plt


# --- the one place that reads storage -----------------------------------------------------------


def _history(cfg: Config, job: Job, runner: Any) -> list[dict[str, Any]]:
    """Per snapshot (oldest first, the newest HISTORY): time, total bytes, bytes added.
    Files/command jobs: each manifest's trailer summary; ebs_snapshot jobs: the set's volume
    sizes (EBS does not say what a snapshot added)."""
    snaps = runner.snapshots()[-HISTORY:]
    if job.type == "ebs_snapshot":
        return [{"id": s.id, "time": s.time.isoformat(), "bytes_total": sum(int(m.get("VolumeSize") or 0)
                                                                             for m in s.set.members) << 30,
                 "bytes_added": None} for s in snaps]
    cache_path = cfg.state_dir / "cache" / f"{job.name}.history.json"
    try:
        cached = json.loads(cache_path.read_text())
        cached = cached if isinstance(cached, dict) else {}
    except (OSError, ValueError):
        cached = {}
    out = []
    for s in snaps:
        if s.id not in cached:
            try:
                with runner.open_manifest(s.id) as (_, entries, trailer):
                    for _e in entries:  # the trailer is read once the entries are
                        pass
                summary = trailer.get("summary") or {}
                cached[s.id] = {"bytes_total": summary.get("bytes_total"), "bytes_added": summary.get("bytes_uploaded")}
            except AgentError as exc:
                log.warning("report: snapshot %s of job %s: %s", s.id, job.name, exc)
                continue
        out.append({"id": s.id, "time": s.time.isoformat(), **cached[s.id]})
    try:
        atomic_write(cache_path, json.dumps({k: v for k, v in cached.items()
                                             if k in {s.id for s in snaps}}).encode())
    except OSError as exc:
        log.debug("report: cannot cache %s: %s", cache_path, exc)
    return out


# --- charts ------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    _pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def history_chart(history: list[dict[str, Any]], title: str) -> str | None:
    points = [h for h in history if isinstance(h.get("bytes_total"), int | float)]
    if not points:
        return None
    plt = _pyplot()
    times = [datetime.fromisoformat(h["time"]) for h in points]
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    ax.plot(times, [h["bytes_total"] / 2**20 for h in points], marker="o", color=PALETTE[0], label="size (MiB)")
    added = [(t, h["bytes_added"] / 2**20) for t, h in zip(times, points, strict=True)
             if isinstance(h.get("bytes_added"), int | float)]
    if added:
        ax2 = ax.twinx()
        width = 0.6 * min(((b - a).total_seconds() for a, b in itertools.pairwise(times)),
                          default=3600) / 86400
        ax2.bar([t for t, _ in added], [v for _, v in added], width=max(width, 1e-6), color=PALETTE[1], alpha=0.6,
                label="added (MiB)")
        ax2.set_ylabel("added per run (MiB)")
        ax2.set_ylim(bottom=0)
        ax.set_zorder(ax2.get_zorder() + 1)  # the size line over the bars
        ax.patch.set_visible(False)
    ax.set_ylabel("snapshot size (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    fig.autofmt_xdate()
    return _png(fig)


def cost_chart(classes: dict[str, Any], title: str) -> str | None:
    items = [(k, v["bytes"]) for k, v in classes.items() if v.get("bytes")]
    if not items:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.0))
    ax.barh([k for k, _ in items], [b / 2**20 for _, b in items], color=PALETTE[: len(items)] or PALETTE[0])
    ax.set_xlabel("stored (MiB)")
    ax.set_title(title)
    return _png(fig)


# --- the page ----------------------------------------------------------------------------------


def _usd(x: float) -> str:
    # Small buckets cost fractions of a cent: show them, not 0.0000.
    return f"{x:.2f}" if x >= 1 else f"{float(f'{x:.2g}'):.10f}".rstrip("0") if x else "0"


def _e(x: Any) -> str:
    return html.escape("-" if x is None else str(x))


def _table(rows: list[tuple[Any, ...]], head: tuple[str, ...]) -> str:
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")


def job_section(cfg: Config, job: Job, st: dict[str, Any], prices: dict[str, Any]) -> str:
    from backup_agent.cost import job_cost, record_cost
    from backup_agent.jobs import runner_for

    parts = [f"<section id='job-{_e(job.name)}'><h2>{_e(job.name)} <small>({_e(job.type)})</small></h2>"]
    result = st.get("result")
    cls = "ok" if result == "success" else "bad" if result in ("failed", "aborted") else ""
    parts.append(_table([(st.get("schedule") or "(manual)", f"{result}", st.get("last_success"),
                          st.get("snapshots"), st.get("consecutive_failures"))],
                        ("schedule", "last result", "last success", "snapshots", "failures in a row"))
                 .replace(f"<td>{_e(result)}</td>", f"<td class='{cls}'>{_e(result)}</td>", 1))
    charts: list[str] = []
    problems: list[str] = []
    runner = runner_for(cfg, job)
    try:
        history = _history(cfg, job, runner)
        img = history_chart(history, f"{job.name}: snapshots")
        if img:
            charts.append(f"<img alt='snapshots of {_e(job.name)} over time' src='{img}'>")
        else:
            parts.append("<p>No snapshots yet.</p>")
    except AgentError as exc:
        problems.append(f"cannot read the snapshots: {exc}")
    cost: dict[str, Any] | None = None
    try:
        cost = job_cost(job, runner, prices)
        cost["prices"] = {"region": prices.get("region"), "date": prices.get("date")}
        record_cost(cfg, cost)
        img = cost_chart(cost["classes"], f"{job.name}: stored by class")
        if img:
            charts.append(f"<img alt='storage classes of {_e(job.name)}' src='{img}'>")
    except AgentError as exc:
        problems.append(f"cannot list the stored objects: {exc}")
    if charts:
        parts.append("<div class='charts'>" + "".join(charts) + "</div>")
    if cost is not None:
        rows = [(k, v["objects"], v["bytes"], _usd(v["monthly_usd"])) for k, v in cost["classes"].items()]
        parts.append("<h3>Cost</h3>" + _table(rows, ("class", "objects", "bytes", "USD/month"))
                     + f"<p>Total <b>{_usd(cost['monthly_usd'])} USD/month</b>"
                     + (f", {_usd(cost['savings_usd'])} less than in STANDARD" if cost.get("savings_usd") else "")
                     + f" (prices {_e(prices.get('region'))}, {_e(prices.get('date'))}).</p>")
        tiers = cost.get("full_restore") or {}
        if tiers:
            parts.append(_table([(t, "n/a" if v["usd"] is None else _usd(v["usd"]), v["delay"])
                                 for t, v in tiers.items()], ("full restore tier", "USD", "delay")))
    drill = st.get("last_drill")
    parts.append("<h3>Restore drill</h3>")
    if drill:
        ok = st.get("drill_result") == "ok"
        parts.append(_table([(drill, st.get("drill_result"), st.get("drill_files_checked"),
                              st.get("drill_bytes_checked"), st.get("drill_throughput_bytes_per_s"),
                              st.get("drill_rto_estimate_s"), st.get("last_drill_success"))],
                            ("last drill", "result", "files", "bytes", "B/s", "full restore (s)", "last passed"))
                     .replace(f"<td>{_e(st.get('drill_result'))}</td>",
                              f"<td class='{'ok' if ok else 'bad'}'>{_e(st.get('drill_result'))}</td>", 1))
    else:
        parts.append(f"<p>Never drilled: <code>backup-agent drill {_e(job.name)}</code></p>")
    failures = [x for x in (st.get("error") if result not in ("success", "never run") else None,
                            st.get("prune_error") and f"prune: {st['prune_error']}",
                            st.get("drill_error") and f"drill: {st['drill_error']}", *problems) if x]
    if failures:
        parts.append("<h3>Last failures</h3>" + "".join(f"<div class='err'>{_e(f)}</div>" for f in failures))
    parts.append("</section>")
    return "".join(parts)


def render(cfg: Config) -> str:
    from backup_agent.cost import price_table
    from backup_agent.status import render_status

    _pyplot()  # a missing extra is said before any storage is read
    doc = render_status(cfg)
    prices = price_table(cfg)
    statuses = {j["job"]: j for j in doc["jobs"]}
    sections = [job_section(cfg, job, statuses.get(name, {}), prices) for name, job in sorted(cfg.jobs.items())]
    env = f" ({cfg.environment})" if cfg.environment else ""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>backups of {_e(cfg.node)}</title>"
            f"<style>{CSS}</style></head><body><h1>Backups of {_e(cfg.node)}{_e(env)}</h1>"
            f"<div class='meta'>generated {now}; daemon {'running' if doc['daemon']['running'] else 'not running'}"
            f"; {len(cfg.jobs)} job(s)</div>" + ("".join(sections) or "<p>No jobs configured.</p>")
            + "</body></html>\n")


def write_report(cfg: Config, path: str) -> str:
    target = Path(path)
    if not target.parent.is_dir():
        raise ConfigError(f"--html {path}: directory {target.parent} does not exist")
    text = render(cfg)
    try:
        atomic_write(target, text.encode(), mode=0o644)
    except OSError as exc:
        raise ConfigError(f"--html {path}: cannot write: {exc.strerror or exc}") from None
    return os.path.abspath(path)
