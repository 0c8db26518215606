"""The command line: verbs → calls. Printing, --json and exit codes live here and only here."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from backup_agent import __version__
from backup_agent import config as config_mod
from backup_agent.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, AgentError, ConfigError
from backup_agent.logfmt import redact, secret_values, setup_logging

log = logging.getLogger("backup_agent")


def _nonempty(value: str) -> str:
    # An empty --target was the current directory, an empty --snapshot the latest: never what
    # a script with an unset variable meant.
    if not value:
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _snapshot_id(value: str) -> str:
    # Ids (and their prefixes) never hold whitespace; `ID\n` from a script must not pass a
    # `^...$` check and reach an S3 key.
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a snapshot id")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, exit 2: scripts and humans both read it.
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="backup-agent", description="Back up this node to S3 and restore it.")
    p.add_argument("-c", "--config", help="config file (default: $BACKUP_AGENT_CONFIG or "
                   f"{config_mod.DEFAULT_CONFIG})")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"backup-agent {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    sub.add_parser("validate", help="check the config and print ok")
    sub.add_parser("schema", help="print the config's JSON Schema")
    s = sub.add_parser("run", help="run one job now")
    s.add_argument("job")
    s.add_argument("--prune", action="store_true",
                   help="then apply the job's retention, as the daemon does after every scheduled run")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("snapshots", help="list a job's complete snapshots, oldest first")
    s.add_argument("job")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("restore", help="restore a snapshot into a directory")
    s.add_argument("job")
    which = s.add_mutually_exclusive_group()
    which.add_argument("--snapshot", type=_snapshot_id, help="snapshot id (default: the latest)")
    which.add_argument("--at", type=_nonempty, help="RFC 3339 time: the newest snapshot at or before it")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", type=_nonempty, help="directory to restore into ('-' = stdout, command jobs)")
    where.add_argument("--into", metavar="DATABASE", type=_nonempty,
                       help="command jobs: pipe the dump into the preset's restore tool (or restore_command)")
    s.add_argument("--clean", action="store_true",
                   help="with --into: replace what the dump contains when the database already has tables "
                        "(default: refuse and change nothing)")
    s.add_argument("--path", action="append", default=[], type=_nonempty,
                   help="restore only this path (repeatable)")
    s.add_argument("--wait", action="store_true", help="wait for archived (Glacier) data to become readable")
    s.add_argument("--tier", choices=["Expedited", "Standard", "Bulk"], help="Glacier retrieval tier")
    s.add_argument("--days", type=int, help="days a Glacier restore stays readable")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("prune", help="apply the job's retention")
    s.add_argument("job", nargs="?")
    s.add_argument("--all-nodes", action="store_true",
                   help="maintenance: apply the config's maintenance retention to every node's jobs in the bucket")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("check", help="verify a job's snapshots")
    s.add_argument("job")
    s.add_argument("--read-data", action="store_true", help="download and re-hash all content")
    s.add_argument("--json", action="store_true")
    _browse_parsers(sub)
    s = sub.add_parser("drill", help="restore a sample of the latest snapshot privately, verify it, remove it")
    s.add_argument("job")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("cost", help="stored bytes and objects by storage class, monthly USD estimate")
    s.add_argument("job", nargs="?")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("report", help="write a self-contained HTML page about this node's backups")
    s.add_argument("--html", required=True, metavar="FILE", type=_nonempty)
    s = sub.add_parser("status", help="the last run of every job")
    s.add_argument("--json", action="store_true")
    sub.add_parser("daemon", help="run jobs on their schedules until SIGTERM")
    s = sub.add_parser("bucket", help="bucket administration")
    bsub = s.add_subparsers(dest="bucket_verb", required=True, parser_class=_Parser)
    b = bsub.add_parser("setup", help="versioning, public access block, encryption, lifecycle")
    b.add_argument("--dry-run", action="store_true")
    b.add_argument("--json", action="store_true")
    return p


def _browse_parsers(sub: Any) -> None:
    """ls, find, diff, dump: finding what to restore in a files job (jobs/browse.py)."""
    s = sub.add_parser("ls", help="list a snapshot's entries (default: the latest)")
    s.add_argument("job")
    s.add_argument("paths", nargs="*", metavar="PATH", help="only entries at or under these absolute paths")
    which = s.add_mutually_exclusive_group()
    which.add_argument("--snapshot", help="snapshot id (default: the latest)")
    which.add_argument("--at", help="RFC 3339 time: the newest snapshot at or before it")
    s.add_argument("-l", "--long", action="store_true", help="type, mode, owner, size and mtime, like ls -l")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("find", help="which snapshots hold paths matching a glob, newest first")
    s.add_argument("job")
    s.add_argument("patterns", nargs="+", metavar="PATTERN",
                   help="glob on the base name (no '/'), the full path ('/…') or the path's end ('dir/name')")
    s.add_argument("-i", "--ignore-case", action="store_true")
    s.add_argument("--newest", type=int, metavar="N", help="search only the N newest snapshots")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("diff", help="what was added, removed and changed between two snapshots")
    s.add_argument("job")
    s.add_argument("snapshot_a", metavar="SNAP_A")
    s.add_argument("snapshot_b", metavar="SNAP_B")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("dump", help="one file's content to stdout, verified against its sha256")
    s.add_argument("job")
    s.add_argument("path", metavar="PATH")
    which = s.add_mutually_exclusive_group()
    which.add_argument("--snapshot", help="snapshot id (default: the latest)")
    which.add_argument("--at", help="RFC 3339 time: the newest snapshot at or before it")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.verb == "ls" and not any(x.startswith("-") for x in extra):
        args.paths += extra  # `ls JOB --long PATH`: argparse gives a `*` positional nothing after an option
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    setup_logging("DEBUG" if args.verbose else "WARNING")
    as_json = bool(getattr(args, "json", False))
    try:
        return _dispatch(args, as_json)
    except AgentError as exc:
        if as_json:
            doc = {**_failed_run(args), "status": "failed", "error": redact(str(exc)), **exc.details}
            print(json.dumps(doc, default=str))
        # Not through logging, so masked here: a command's own error output may carry a secret.
        print(f"backup-agent: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)  # errors.Interrupted: SIGTERM and SIGHUP too
        if as_json:  # one document on stdout, also when stopped
            error = f"interrupted by {signal.Signals(signum).name}"
            print(json.dumps({**_failed_run(args), "status": "failed", "error": error}))
        print(f"backup-agent: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + int(signum)
    except BrokenPipeError:
        # `backup-agent status | head`: the reader left; nothing is wrong with the agent.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return EXIT_OK
    except Exception as exc:  # a bug: one line for the user, the traceback with -v
        log.debug("unexpected error", exc_info=True)
        if as_json:
            error = redact(f"{type(exc).__name__}: {exc}")
            print(json.dumps({**_failed_run(args), "status": "failed", "error": error}))
        print(f"backup-agent: internal error: {redact(f'{type(exc).__name__}: {exc}')} (rerun with -v for details)",
              file=sys.stderr)
        return EXIT_FAILED


def _failed_run(args: argparse.Namespace) -> dict[str, Any]:
    """`run --json` prints every field of a run also when it fails (docs/CONTRACT.md): zeros and
    null where nothing happened; a failure that knows more (exc.details) overrides them."""
    if args.verb != "run":
        return {}
    from backup_agent.jobs.base import RunResult  # only on this path: jobs import botocore

    return RunResult(job=args.job, snapshot=None, status="failed").to_json()


def _dispatch(args: argparse.Namespace, as_json: bool) -> int:
    if getattr(args, "target", None) == "-":
        _check_stdout_writable()  # first: with fd 1 closed, the next file opened would get it
    if args.verb == "schema":
        from backup_agent.schema import full_schema

        print(json.dumps(full_schema(), indent=2))
        return EXIT_OK
    cfg = config_mod.load(config_mod.config_path(args.config))
    cfg.share_imds_endpoint()
    setup_logging("DEBUG" if args.verbose else cfg.log_level, cfg.log_format, secret_values(cfg))
    code = _config_verb(cfg, args, as_json)
    if code is not None:
        return code
    return _job_verb(cfg, args, as_json)


def _config_verb(cfg: config_mod.Config, args: argparse.Namespace, as_json: bool) -> int | None:
    """The verbs that need the config but no one job's runner; None when args.verb is not one of them."""
    if args.verb == "validate":
        from backup_agent.immutability import validate_notes

        print("\n".join(["ok", *validate_notes(cfg)]))
        return EXIT_OK
    if args.verb == "status":
        from backup_agent.status import format_table, render_status

        doc = render_status(cfg)
        return _emit(doc, as_json, text=None if as_json else format_table(doc))
    if args.verb == "daemon":
        from backup_agent.daemon import run_daemon
        from backup_agent.memory import return_big_buffers

        # Its jobs and drills are processes of their own; this only keeps what the long-lived
        # daemon itself frees (status, reports) from staying with it.
        return_big_buffers()
        return run_daemon(cfg.path)
    if args.verb == "bucket":
        from backup_agent.storage.bucket import setup_bucket

        plan = setup_bucket(cfg, dry_run=args.dry_run)
        return _emit(plan, as_json, text="\n".join(f"{s['step']}: {s['result']}" for s in plan["steps"]))

    if args.verb == "prune" and (args.all_nodes or not args.job):
        return _prune_all_nodes(cfg, args, as_json)
    if args.verb == "cost":
        from backup_agent.cost import cost_view, format_cost

        rows = cost_view(cfg, [cfg.job(args.job)] if args.job else list(cfg.jobs.values()))
        return _emit(rows, as_json, format_cost(rows))
    if args.verb == "report":
        from backup_agent.report import write_report

        path = write_report(cfg, args.html)
        print(f"wrote {path}")
        return EXIT_OK
    return None


def _job_verb(cfg: config_mod.Config, args: argparse.Namespace, as_json: bool) -> int:
    """The verbs on one job: run, drill, the browse verbs, snapshots, restore, prune and check."""
    from backup_agent.jobs import runner_for
    from backup_agent.state import record_snapshot_count

    job = cfg.job(args.job)
    if args.verb in ("restore", "check"):
        from backup_agent import memory

        # Not for `run`: return_big_buffers' fixed 4 MiB thresholds lowered a small-file tree's
        # peak by ~40 MB but made a big file's backup 50 % slower (its 16 MiB reads mapped and
        # page-faulted afresh each time; docs/PERFORMANCE.md, "Peak memory after format 3").
        memory.limit_malloc_arenas()  # before their download threads exist
    if args.verb == "run":
        from backup_agent import memory

        memory.reuse_pack_buffers()  # before the job's upload threads exist
        memory.fewer_gc_passes()
        return _run(cfg, job, args, as_json)
    runner = runner_for(cfg, job)
    if args.verb == "drill":
        return _drill(cfg, job, runner, as_json)
    if args.verb in ("ls", "find", "diff", "dump"):
        return _browse(args, runner, as_json)
    if args.verb == "snapshots":
        snaps = [s.to_json() for s in (runner.describe_snapshots() if as_json else runner.snapshots())]
        record_snapshot_count(cfg.state_dir, job.name, len(snaps))
        return _emit(snaps, as_json, "\n".join(f"{s['id']}  {s['time']}" for s in snaps) or "no snapshots")
    if args.verb == "restore":
        return _restore(job, runner, args, as_json)
    if args.verb == "prune":
        return _prune_job(cfg, job, runner, args, as_json)
    if args.verb == "check":
        out = runner.check(read_data=args.read_data)
        return _emit(out, as_json, f"ok: {out['snapshots_checked']} snapshot(s) verified"
                     + (" with data" if args.read_data else ""))
    raise AssertionError(args.verb)


def _run(cfg: config_mod.Config, job: Any, args: argparse.Namespace, as_json: bool) -> int:
    from backup_agent.execute import run_job

    result = run_job(cfg, job, prune=args.prune)
    code = EXIT_PARTIAL if result.status == "partial" else EXIT_OK
    for f in result.failed:
        print(f"backup-agent: could not read {f['path']}: {f['error']}", file=sys.stderr)
    text = (f"snapshot {result.snapshot} ({result.status}): {result.files_new} new, "
            f"{result.files_changed} changed, {result.files_unchanged} unchanged, "
            f"{result.files_failed} failed, {result.bytes_uploaded} bytes uploaded in {result.duration_s:.1f}s")
    pruned = result.extra.get("prune")
    if pruned:  # a failed prune is reported, and the backup's exit code stands
        if pruned["result"] in ("failed", "aborted"):
            print(f"backup-agent: prune {pruned['result']}: {pruned['error']}", file=sys.stderr)
        text += "\n" + _prune_line(pruned)
    _emit(result.to_json(), as_json, text)
    return code


def _drill(cfg: config_mod.Config, job: Any, runner: Any, as_json: bool) -> int:
    from backup_agent.drill import run_drill

    out = run_drill(cfg, job, runner)
    for e in out["errors"]:
        print(f"backup-agent: drill {job.name}: {e}", file=sys.stderr)
    rto = out["rto_estimate_s"]
    _emit(out, as_json, f"drill {out['status']}: snapshot {out['snapshot']}, {out['files_checked']} file(s), "
          f"{out['bytes_checked']} bytes verified in {out['duration_s']:.1f}s"
          + (f"; full restore estimate {rto:.0f}s at {out['throughput_bytes_per_s']:.0f} B/s" if rto else ""))
    return EXIT_OK if out["status"] == "ok" else EXIT_FAILED


def _restore_kwargs(job: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Checks the restore options before anything is listed, and gives the extra arguments of runner.restore."""
    if args.days is not None and args.days < 1:
        raise ConfigError("--days: must be at least 1")
    if args.at:
        from backup_agent.jobs.base import parse_time

        parse_time(args.at)  # a typo is a usage error now, not after listing the bucket
    kwargs: dict[str, Any] = {}
    if args.tier or args.days:
        kwargs.update(tier=args.tier, days=args.days)
    if args.into:
        from backup_agent.jobs.registry import JOB_TYPES

        if not JOB_TYPES[job.type].restores_into:
            into = " and ".join(t.name for t in JOB_TYPES.values() if t.restores_into)
            raise ConfigError(f"--into: only {into} jobs restore into a database; use --target DIR")
        kwargs["into"] = args.into
        kwargs["clean"] = args.clean
    elif args.clean:
        raise ConfigError("--clean: only with --into DATABASE")
    return kwargs


def _restore(job: Any, runner: Any, args: argparse.Namespace, as_json: bool) -> int:
    kwargs = _restore_kwargs(job, args)
    out = runner.restore(snapshot=args.snapshot, at=args.at, target=args.target, paths=args.path,
                         wait=args.wait, **kwargs)
    if "instructions" in out:  # ebs_snapshot jobs write nothing: they say how to get the volumes back
        return _emit(out, as_json, out["instructions"])
    if args.target == "-":
        return EXIT_OK
    return _emit(out, as_json, f"restored snapshot {out.get('snapshot')}: {out.get('files', 0)} files, "
                 f"{out.get('bytes', 0)} bytes into {out.get('target')}")


def _prune_job(cfg: config_mod.Config, job: Any, runner: Any, args: argparse.Namespace, as_json: bool) -> int:
    from backup_agent.errors import Locked
    from backup_agent.prune import record_prune
    from backup_agent.state import record_snapshot_count

    try:
        out = runner.prune(dry_run=args.dry_run)
    except AgentError as exc:
        if not args.dry_run and not isinstance(exc, Locked):
            record_prune(cfg, job.name, result="failed", error=str(exc))
        raise
    if not args.dry_run:
        record_snapshot_count(cfg.state_dir, job.name, len(out["keep"]) + len(out.get("locked_snapshots", [])))
        record_prune(cfg, job.name, result="success", out=out)
    verb = "would forget" if args.dry_run else "forgot"
    text = (f"{verb} {len(out['forget'])} snapshot(s), kept {len(out['keep'])}; "
            f"deleted {out.get('objects_deleted', 0)} object(s), {out.get('bytes_freed', 0)} bytes")
    if out.get("note"):
        text += f"\nnote: {out['note']}"
    return _emit(out, as_json, text)


def _prune_all_nodes(cfg: config_mod.Config, args: argparse.Namespace, as_json: bool) -> int:
    if not args.all_nodes:
        raise ConfigError("prune: give a JOB, or --all-nodes (maintenance)")
    if args.job:
        raise ConfigError("prune: --all-nodes takes no JOB")
    from backup_agent.maintenance import prune_all_nodes

    out = prune_all_nodes(cfg, dry_run=args.dry_run)
    lines = []
    for r in out["roots"]:
        where = f"{r['prefix']}/{r['job']}"
        if r["result"] != "success":
            lines.append(f"{where}: {r['result']}: {r.get('error') or r.get('note')}")
            continue
        locked = f", {r['locked_skipped']} locked object(s) kept" if r["locked_skipped"] else ""
        lines.append(f"{where}: forgot {r['forgot']}, kept {r['kept']}; deleted {r['objects_deleted']} "
                     f"object(s), {r['bytes_freed']} bytes{locked}")
    for r in out["ebs"]:
        where = f"ebs {r.get('region')} {r.get('node', '')}/{r.get('job', '')}"
        if r["result"] != "success":
            lines.append(f"{where}: {r['result']}: {r.get('error') or r.get('note')}")
        else:
            lines.append(f"{where}: forgot {r['forgot']}, kept {r['kept']}; deleted "
                         f"{len(r['ebs_snapshots_deleted'])} EBS snapshot(s)")
    _emit(out, as_json, "\n".join(lines) or "no job roots found")
    return EXIT_FAILED if out["failed"] else EXIT_OK


def _prune_line(p: dict[str, Any]) -> str:
    if p["result"] == "elsewhere":
        return str(p["note"])
    if p["result"] != "success":
        return f"prune {p['result']}: {p.get('error') or p.get('note')}"
    text = (f"pruned: forgot {p['snapshots_forgotten']} snapshot(s), kept {p['snapshots_kept']}; "
            f"deleted {p['objects_deleted']} object(s), {p['bytes_freed']} bytes")
    return text + (" (unreferenced data is collected at most daily)" if p["garbage_collected"] is False else "")


def _check_stdout_writable() -> None:
    """`--target -` with stdout closed (`>&-`) or read-only: say so before downloading anything,
    rather than fail on the first write (Python even sets sys.stdout to None then)."""
    try:
        mode = fcntl.fcntl(1, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        mode = None
    if sys.stdout is None or mode not in (os.O_WRONLY, os.O_RDWR):
        raise ConfigError("--target -: standard output is closed or not writable; redirect it to a file or a "
                          "pipe, or give --target FILE")


def _emit(doc: Any, as_json: bool, text: str | None) -> int:
    if as_json:
        print(json.dumps(doc, default=str))
    elif text is not None:
        print(text)
    else:
        print(json.dumps(doc, indent=2, default=str))
    return EXIT_OK


# --- ls, find, diff, dump (jobs/browse.py) ----------------------------------------------------

_TYPE_CHARS = {"file": "-", "dir": "d", "symlink": "l", "fifo": "p", "socket": "s", "chardev": "c",
               "char_device": "c", "blockdev": "b", "block_device": "b"}


def _ls_line(e: Any, long: bool) -> str:
    import stat

    from backup_agent.jobs.browse import entry_json

    known = e.type in _TYPE_CHARS
    name: str = e.path + (f" -> {e.target}" if e.target is not None else "") + ("" if known else f" ({e.type})")
    if not long:
        return name
    d = entry_json(e)
    mode = _TYPE_CHARS.get(e.type, "?") + stat.filemode(stat.S_IFREG | e.mode)[1:]
    return f"{mode} {e.uid:>5} {e.gid:>5} {e.apparent_size:>12} {d['mtime']} {name}"


def _browse(args: argparse.Namespace, runner: Any, as_json: bool) -> int:
    from backup_agent.jobs import browse

    job = browse.files_job(runner, args.verb)
    # Paths are file names, not text: print undecodable bytes back as they were (as ls does).
    sys.stdout.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    if args.verb == "ls":
        with browse.ls(job, args.snapshot, args.at, args.paths) as (snap, entries):
            if as_json:  # streamed: a snapshot of millions of entries is never one list in memory
                out = sys.stdout
                out.write(json.dumps({"job": job.job.name, "snapshot": snap.id})[:-1] + ', "entries": [')
                for i, e in enumerate(entries):
                    out.write((", " if i else "") + json.dumps(browse.entry_json(e)))
                out.write("]}\n")
            else:
                for e in entries:
                    print(_ls_line(e, args.long))
        return EXIT_OK
    if args.verb == "find":
        searched, results = browse.find(job, args.patterns, ignore_case=args.ignore_case, newest=args.newest)
        found: list[dict[str, Any]] = []
        errors: list[str] = []
        for r in results:
            if r.error:
                errors.append(r.error)
                print(f"backup-agent: {r.error}", file=sys.stderr)
            for e in r.entries:
                if as_json:
                    found.append({**browse.entry_json(e), "snapshot": r.snapshot.id})
                else:
                    print(f"{r.snapshot.id}  {_ls_line(e, True)}")
                    found.append({})
            sys.stdout.flush()  # each snapshot's matches as soon as it was searched
        if as_json:
            print(json.dumps({"job": job.job.name, "snapshots_searched": searched, "matches": found,
                              "errors": errors, "status": "failed" if errors else "ok"}))
        elif not found:
            print(f"no match in {searched} snapshot(s)")
        return EXIT_FAILED if errors else EXIT_OK
    if args.verb == "diff":
        a, b, d = browse.diff(job, args.snapshot_a, args.snapshot_b)
        doc = {"job": job.job.name, "snapshot_a": a.id, "snapshot_b": b.id, **d.to_json()}
        if as_json:
            return _emit(doc, True, None)
        meta = set(d.metadata_only)
        lines = [f"+ {p}" for p in d.added] + [f"- {p}" for p in d.removed]
        lines += [f"{'U' if p in meta else 'M'} {p}" for p in d.changed]
        lines.append(f"{len(d.added)} added ({d.added_bytes} bytes), {len(d.removed)} removed "
                     f"({d.removed_bytes} bytes), {len(d.changed) - len(meta)} changed in content "
                     f"({d.changed_bytes_before} -> {d.changed_bytes} bytes), {len(meta)} in metadata only")
        print("\n".join(lines))
        return EXIT_OK
    assert args.verb == "dump"
    import shutil

    with browse.dump(job, args.path, args.snapshot, args.at) as (_, content):
        sys.stdout.flush()
        shutil.copyfileobj(content, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()
    return EXIT_OK
