"""Malformed manifests in the bucket: `restore` must refuse them with one clear line and a
non-zero exit, and write nothing outside its target (nor delete anything there)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from reliability.lab import NODE, Lab, one_line_error
from reliability.report import record

EVIL = b"pwned"
EVIL_SHA = hashlib.sha256(EVIL).hexdigest()
HEADER = {"format": "backup-agent-manifest", "version": 1, "job": "data", "type": "files"}


def entry(path: str, **kw: Any) -> dict[str, Any]:
    return {"path": path, "type": "file", "size": len(EVIL), "sha256": EVIL_SHA, "object": "packs/aa/evil",
            "offset": 0, "mode": 0o644, "uid": 0, "gid": 0, "mtime_ns": 0, **kw}


def manifest(entries: list[Any], *, header: Any = None, count: int | None = None) -> bytes:
    lines = [header or HEADER, *entries, {"end": True, "entries": len(entries) if count is None else count}]
    return gzip.compress(b"".join(json.dumps(x).encode() + b"\n" for x in lines))


def cases(outside: Path) -> dict[str, tuple[bytes, str]]:
    """name → (manifest bytes, what the error line must say)."""
    link = {"path": "/d", "type": "symlink", "target": str(outside), "mode": 0o777, "uid": 0, "gid": 0, "mtime_ns": 0}
    good = gzip.compress(json.dumps(HEADER).encode() + b"\n" + json.dumps(entry("/ok.txt")).encode() + b"\n")
    return {
        "path escaping with ..": (manifest([entry("/../../escaped.txt")]), "not normalised"),
        "relative path": (manifest([entry("../escaped.txt")]), "not an absolute path"),
        "path with NUL": (manifest([entry("/a\x00b")]), "not an absolute path"),
        "path with /./": (manifest([entry("/a/./b")]), "not normalised"),
        "path with //": (manifest([entry("//b")]), "not normalised"),
        "the target itself as a file": (manifest([entry("/")]), "would be written outside the target"),
        "file through a symlink to outside": (manifest([link, entry("/d/file.txt")]), "/d: Is a directory"),
        "directory through a symlink to outside": (manifest([link, {**link, "path": "/d/sub", "type": "dir"}]),
                                                   "/d: Is a directory"),
        "size larger than the object": (manifest([entry("/big.txt", size=100)]), "ended after 5 of 100 bytes"),
        "wrong sha256": (manifest([entry("/x.txt", sha256="0" * 64)]), "does not match its sha256"),
        "offset past the object": (manifest([entry("/x.txt", offset=10**6)]), "cannot read"),
        "negative size": (manifest([entry("/x.txt", size=-5)]), "size must be a non-negative integer"),
        "size past 64 bits": (manifest([entry("/x.txt", size=2**64)]), "size 18446744073709551616 is out of range"),
        "offset + size past 64 bits": (manifest([entry("/x.txt", offset=2**63 - 2)]), "offset + size is out of range"),
        "mode with file type bits": (manifest([entry("/x.txt", mode=0o100644)]), "mode 33188 is out of range"),
        "uid past 32 bits": (manifest([entry("/x.txt", uid=2**40)]), "uid 1099511627776 is out of range"),
        "gid -1 as unsigned": (manifest([entry("/x.txt", gid=2**32 - 1)]), "gid 4294967295 is out of range"),
        "mtime past 64 bits": (manifest([entry("/x.txt", mtime_ns=10**30)]), "is out of range"),
        "object key with ..": (manifest([entry("/x.txt", object="../../other/secret")]), "object key"),
        "absolute object key": (manifest([entry("/x.txt", object="/etc/passwd")]), "object key"),
        "missing object": (manifest([entry("/x.txt", object="packs/zz/none")]), "packs/zz/none is missing"),
        "unknown entry type": (manifest([entry("/dev0", type="device")]), "unknown type"),
        "sha256 malformed": (manifest([entry("/x.txt", sha256="abc")]), "sha256"),
        "entry not an object": (manifest([["/x.txt"]]), "not an object"),
        "trailer count wrong": (manifest([entry("/x.txt")], count=7), "trailer says 7"),
        "truncated, no trailer": (good, "truncated"),
        "truncated mid-line": (gzip.compress(json.dumps(HEADER).encode() + b'\n{"path": "/x.txt", "ty'),
                               "not JSON"),
        "gzip cut short": (manifest([entry("/x.txt")] * 50)[:60], "unreadable"),
        "not gzip": (os.urandom(300), "unreadable"),
        "header not JSON": (gzip.compress(b"hello\n"), "header is not JSON"),
        "not our format": (manifest([], header={"format": "restic"}), "not a backup-agent manifest"),
        "future version": (manifest([], header={**HEADER, "version": 99}), "version 99"),
        "path too long": (manifest([entry("/" + "x" * 5000)]), "File name too long"),
    }


def run_main(args: list[str]) -> tuple[int, str, str]:
    from backup_agent.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def tree(root: Path) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), root) for d, ds, fs in os.walk(root) for n in ds + fs}


def test_malformed_manifests_are_refused_and_write_nothing_outside(lab: Lab, tmp_path: Path) -> None:
    lab.job("data", type="files", paths=[str(tmp_path / "src")])
    root = f"{NODE}/data/"
    lab.s3.put_object(Bucket=lab.bucket, Key=root + "packs/aa/evil", Body=EVIL)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("must survive")
    all_cases = cases(outside)
    ids = {}
    for i, (what, (body, _)) in enumerate(all_cases.items()):
        sid = f"2026010{1 + i // 24}T{i % 24:02}0000Z-{i:06x}"
        lab.s3.put_object(Bucket=lab.bucket, Key=f"{root}snapshots/{sid}.json.gz", Body=body)
        ids[what] = sid
    before = tree(tmp_path)
    for i, (what, (_, expected)) in enumerate(all_cases.items()):
        target = tmp_path / "targets" / f"t{i}"
        code, out, err = run_main(["-c", str(lab.path), "restore", "data", "--snapshot", ids[what],
                                   "--target", str(target)])
        assert code == 1, f"{what}: exit {code}: {err}"
        line = one_line_error(subprocess.CompletedProcess([], code, out, err))
        assert expected in line, f"{what}: {line}"
        assert tree(outside) == {"precious.txt"} and (outside / "precious.txt").read_text() == "must survive", what
        written = {p for p in tree(tmp_path) - before if p != "targets" and not re.match(r"targets/t\d+(/|$)", p)}
        assert not written, f"{what}: wrote outside the target: {written}"
        leftovers = {p for p in tree(target) if p.endswith(".restore-tmp")} if target.exists() else set()
        assert not leftovers, f"{what}: left {leftovers}"

    # check names the broken snapshots; the real CLI agrees with the in-process calls
    proc = lab.run("check", "data")
    assert proc.returncode == 1 and ids["path escaping with .."] in one_line_error(proc), proc.stderr
    proc = lab.run("restore", "data", "--snapshot", ids["path escaping with .."], "--target", str(tmp_path / "cli"))
    assert proc.returncode == 1 and "not normalised" in one_line_error(proc), proc.stderr
    assert not (tmp_path / "escaped.txt").exists()
    record("hostile.manifests", cases=len(all_cases),
           result="escaping, relative, NUL and unnormalised paths, the target itself as a file, writes through "
                  "symlinks, wrong sizes, offsets and hashes, numbers out of range (size, offset, mode, uid, gid, "
                  "mtime), bad object keys, unknown types, truncated JSON, cut "
                  "gzip, not gzip, foreign format and version, overlong names: each exit 1 with one line saying "
                  "what is wrong, nothing written or deleted outside the target, no temp files left")
