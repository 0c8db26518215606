"""ls, find, diff and dump on real backups in SeaweedFS, through the real CLI."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from support.contentkeys import content_keys
from test_cold import ColdAgent, ca, make_tree, moto  # noqa: F401 - fixtures

from backup_agent import cli
from backup_agent.jobs import browse

SPACED = "my notes.txt"
UNICODE = "café ☕.conf"
QUOTED = 'say "hi"\\there.txt'


def tree(root: Path) -> Path:
    (root / "etc" / "nginx" / "sites").mkdir(parents=True)
    (root / "etc" / "nginx" / "nginx.conf").write_text("worker_processes 4;\n")
    (root / "etc" / "nginx" / "sites" / "default").write_text("server { listen 80; }\n")
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc" / "hosts.link").symlink_to("hosts")
    (root / "etc" / SPACED).write_text("remember the milk\n")
    (root / "etc" / UNICODE).write_text("größe = 1\n")
    (root / "etc" / QUOTED).write_text("quoted\n")
    (root / "etc" / "empty").write_bytes(b"")
    (root / "etc" / "hosts").chmod(0o640)
    return root


def snap(agent: Any, job: str) -> str:
    time.sleep(1.05)  # snapshot ids carry whole seconds: keep them in order
    proc = agent.run("run", job, "--json")
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout)["snapshot"])


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture
def backed_up(agent: Any, tmp_path: Path) -> tuple[Any, Path, str]:
    src = tree(tmp_path / "src")
    agent.job("etc", type="files", paths=[str(src)])
    return agent, src, snap(agent, "etc")


def test_ls_lists_entries_like_ls_l(backed_up: tuple[Any, Path, str]) -> None:
    agent, src, sid = backed_up
    etc = f"{src}/etc"
    proc = agent.run("ls", "etc", etc)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == etc
    assert f"{etc}/{SPACED}" in lines and f"{etc}/{UNICODE}" in lines
    assert f"{etc}/hosts.link -> hosts" in lines
    assert f"{etc}/nginx/sites/default" in lines

    long = agent.run("ls", "etc", "--long", f"{etc}/hosts", f"{etc}/nginx").stdout.splitlines()
    hosts = next(ln for ln in long if ln.endswith(f" {etc}/hosts"))
    st = os.stat(f"{etc}/hosts")
    mode, uid, gid, size, mtime = hosts.split()[:5]
    assert (mode, int(uid), int(gid), int(size)) == ("-rw-r-----", st.st_uid, st.st_gid, st.st_size)
    assert mtime == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))
    assert next(ln for ln in long if ln.endswith(f" {etc}/nginx")).startswith("drwx")
    assert not any(ln.endswith(f"{etc}/hosts.link -> hosts") for ln in long)  # only what was asked

    doc = json.loads(agent.run("ls", "etc", "--json", f"{etc}/hosts.link", f"{etc}/{UNICODE}").stdout)
    assert doc["job"] == "etc" and doc["snapshot"] == sid
    by_path = {e["path"]: e for e in doc["entries"]}
    assert by_path[f"{etc}/hosts.link"]["type"] == "symlink" and by_path[f"{etc}/hosts.link"]["target"] == "hosts"
    cafe = by_path[f"{etc}/{UNICODE}"]
    assert cafe["type"] == "file" and cafe["size"] == len("größe = 1\n".encode())
    assert set(cafe) == {"path", "type", "size", "mtime", "mode", "uid", "gid"}
    assert cafe["mode"] == os.stat(f"{etc}/{UNICODE}").st_mode & 0o7777


def test_ls_picks_older_snapshots_and_refuses_bad_paths(backed_up: tuple[Any, Path, str]) -> None:
    agent, src, first = backed_up
    (src / "etc" / "new.txt").write_text("new")
    second = snap(agent, "etc")
    assert f"{src}/etc/new.txt" in agent.run("ls", "etc").stdout
    assert f"{src}/etc/new.txt" not in agent.run("ls", "etc", "--snapshot", first).stdout
    assert json.loads(agent.run("ls", "etc", "--json", "--snapshot", second[:-2]).stdout)["snapshot"] == second
    line = one_line_error(agent.run("ls", "etc", f"{src}/etc/nope"), 1)
    assert f"{src}/etc/nope" in line
    assert "absolute" in one_line_error(agent.run("ls", "etc", "etc/hosts"), 2)


def test_find_newest_first_with_globs_case_and_limits(agent: Any, tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    agent.job("etc", type="files", paths=[str(src)])
    conf = src / "etc" / "nginx" / "nginx.conf"
    sids = []
    for i in range(3):
        conf.write_text("worker_processes 4;\n" + "#" * i)
        sids.append(snap(agent, "etc"))
    doc = json.loads(agent.run("find", "etc", "nginx.conf", "--json").stdout)
    assert doc["snapshots_searched"] == 3 and doc["errors"] == []
    assert [m["snapshot"] for m in doc["matches"]] == sids[::-1]  # newest first
    assert [m["size"] for m in doc["matches"]] == [22, 21, 20]
    assert {m["path"] for m in doc["matches"]} == {str(conf)}
    assert {"path", "snapshot", "size", "mtime", "type"} <= set(doc["matches"][0])

    assert json.loads(agent.run("find", "etc", "NGINX.*", "--json").stdout)["matches"] == []
    found = json.loads(agent.run("find", "etc", "-i", "NGINX.*", "--newest", "2", "--json").stdout)
    assert found["snapshots_searched"] == 2 and [m["snapshot"] for m in found["matches"]] == sids[:0:-1]

    text = agent.run("find", "etc", f"{src}/etc/nginx/*").stdout.splitlines()  # a full path: the whole tree
    assert len(text) == 3 * 3 and text[0].startswith(sids[-1]) and text[0].endswith(f"{src}/etc/nginx/nginx.conf")
    tail = json.loads(agent.run("find", "etc", "nginx/sites/*", "--newest", "1", "--json").stdout)
    assert [m["path"] for m in tail["matches"]] == [f"{src}/etc/nginx/sites/default"]

    for pattern, name in (("*notes*", SPACED), ("café*", UNICODE), ("CAFÉ ☕.CONF", UNICODE),
                          ('say "hi"\\*', QUOTED)):
        hits = json.loads(agent.run("find", "etc", "-i", pattern, "--newest", "1", "--json").stdout)["matches"]
        assert [m["path"] for m in hits] == [f"{src}/etc/{name}"], pattern
    assert agent.run("find", "etc", "nothing-like-it").stdout.strip() == "no match in 3 snapshot(s)"
    assert "--newest" in one_line_error(agent.run("find", "etc", "x", "--newest", "0"), 2)


def test_diff_tells_content_from_metadata_with_byte_totals(agent: Any, tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    other = tmp_path / "other"  # a second path listed before the first: the manifest is not in path order
    other.mkdir()
    (other / "a.txt").write_text("a")
    agent.job("etc", type="files", paths=[str(src)])
    before = snap(agent, "etc")
    etc = src / "etc"
    (etc / "nginx" / "nginx.conf").write_text("worker_processes 8; # more\n")  # content
    os.chmod(etc / "hosts", 0o600)  # metadata only
    os.utime(etc / SPACED, (1_000_000_000, 1_000_000_000))  # metadata only
    (etc / UNICODE).unlink()
    (etc / "added dir").mkdir()
    (etc / "added dir" / "new.bin").write_bytes(b"x" * 1000)
    after = snap(agent, "etc")

    doc = json.loads(agent.run("diff", "etc", before, after, "--json").stdout)
    assert (doc["snapshot_a"], doc["snapshot_b"]) == (before, after)
    assert doc["added"] == [f"{etc}/added dir", f"{etc}/added dir/new.bin"]
    assert doc["removed"] == [f"{etc}/{UNICODE}"]
    assert sorted(doc["changed"]) == sorted([str(etc), f"{etc}/hosts", f"{etc}/{SPACED}", f"{etc}/nginx/nginx.conf"])
    assert sorted(doc["metadata_only"]) == sorted([str(etc), f"{etc}/hosts", f"{etc}/{SPACED}"])
    assert doc["added_bytes"] == 1000 and doc["removed_bytes"] == len("größe = 1\n".encode())
    assert doc["changed_bytes"] == 27 and doc["changed_bytes_before"] == 20
    assert doc["ordered_merge"] is True

    text = agent.run("diff", "etc", before, after).stdout.splitlines()
    assert f"M {etc}/nginx/nginx.conf" in text and f"U {etc}/hosts" in text and f"- {etc}/{UNICODE}" in text
    assert text[-1].startswith("2 added (1000 bytes), 1 removed")

    agent.job("etc", type="files", paths=[str(src), str(other)])  # /tmp/.../src, then /tmp/.../other
    third = snap(agent, "etc")
    doc = json.loads(agent.run("diff", "etc", before, third, "--json").stdout)
    assert doc["ordered_merge"] is False  # sorted on disk instead, with the same answer
    assert doc["added"] == [str(other), f"{other}/a.txt", f"{etc}/added dir", f"{etc}/added dir/new.bin"]
    assert doc["removed"] == [f"{etc}/{UNICODE}"]
    assert one_line_error(agent.run("diff", "etc", before, "20990101T000000Z-abcdef"), 1)


def test_dump_pipes_verified_bytes_into_diff(backed_up: tuple[Any, Path, str]) -> None:
    agent, src, sid = backed_up
    for name in ("nginx/nginx.conf", SPACED, UNICODE, "empty"):
        path = f"{src}/etc/{name}"
        shell = subprocess.run(["bash", "-c", 'set -o pipefail; "$0" -c "$1" dump etc "$2" | diff - "$2"',
                                cli_path(), str(agent.path), path], capture_output=True, text=True, timeout=60)
        assert shell.returncode == 0, (name, shell.stdout, shell.stderr)
    (src / "etc" / "hosts").write_text("changed since\n")
    old = agent.run("dump", "etc", f"{src}/etc/hosts", "--snapshot", sid)
    assert old.returncode == 0 and old.stdout == "127.0.0.1 localhost\n"

    assert "no " in one_line_error(agent.run("dump", "etc", f"{src}/etc/missing"), 1)
    assert "not a file" in one_line_error(agent.run("dump", "etc", f"{src}/etc/nginx"), 1)
    assert "absolute" in one_line_error(agent.run("dump", "etc", "etc/hosts"), 2)


def cli_path() -> str:
    from conftest import AGENT

    return AGENT


def corrupt(agent: Any, key: str) -> None:
    body = agent.s3.get_object(Bucket=agent.bucket, Key=key)["Body"].read()
    # Same size, every byte off by one bit: only the hash can tell.
    agent.s3.put_object(Bucket=agent.bucket, Key=key, Body=bytes(b ^ 1 for b in body))


def test_dump_of_corrupt_content_writes_nothing(backed_up: tuple[Any, Path, str]) -> None:
    agent, src, _ = backed_up
    [pack] = [k for k in agent.object_keys() if "/packs/" in k]
    corrupt(agent, pack)
    proc = agent.run("dump", "etc", f"{src}/etc/nginx/nginx.conf")
    # Every byte flipped: its piece no longer even decodes (format 3), a problem named for the file.
    assert "nginx.conf" in one_line_error(proc, 1) and proc.stdout == ""


@pytest.mark.parametrize("good", [True, False])
def test_dump_of_a_large_file_waits_in_a_private_spool(agent: Any, tmp_path: Path, capfdbinary: Any,
                                                       monkeypatch: pytest.MonkeyPatch, good: bool) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(3 << 20)
    (src / "big file.bin").write_bytes(data)
    agent.write(storage={**agent.data["storage"], "large_file_mb": 1})
    agent.job("data", type="files", paths=[str(src)])
    snap(agent, "data")
    if not good:
        for obj in content_keys(agent.path, "data", str(src / "big file.bin")):  # its chunks' packs
            corrupt(agent, obj)
    monkeypatch.setattr(browse, "DUMP_IN_MEMORY", 1 << 20)
    spools: list[int] = []
    real = browse.tempfile.TemporaryFile

    def spy(*a: Any, **kw: Any) -> Any:
        f = real(*a, **kw)
        spools.append(os.fstat(f.fileno()).st_mode & 0o777)
        return f

    monkeypatch.setattr(browse.tempfile, "TemporaryFile", spy)
    capfdbinary.readouterr()
    code = cli.main(["-c", str(agent.path), "dump", "data", str(src / "big file.bin")])
    out, err = capfdbinary.readouterr()
    assert len(spools) == 2 and set(spools) == {0o600}  # the manifest's spool and the content's
    if good:
        assert code == 0 and out == data, err
    else:
        assert code == 1 and out == b"" and b"big file.bin" in err


def test_other_job_types_are_refused(agent: Any) -> None:
    agent.job("db", type="command", command=["echo", "hi"])
    for args in (["ls", "db"], ["find", "db", "x"], ["diff", "db", "a", "b"], ["dump", "db", "/x"]):
        assert "files jobs" in one_line_error(agent.run(*args), 2)
    assert one_line_error(agent.run("ls", "nosuchjob"), 2)


def test_corrupt_manifest_fails_ls_before_any_output(backed_up: tuple[Any, Path, str]) -> None:
    agent, _, sid = backed_up
    key = next(k for k in agent.object_keys() if k.endswith(f"{sid}.json.gz"))
    lines = gzip.decompress(agent.s3.get_object(Bucket=agent.bucket, Key=key)["Body"].read()).splitlines()
    agent.s3.put_object(Bucket=agent.bucket, Key=key, Body=gzip.compress(b"\n".join(lines[:-1]) + b"\n"))
    proc = agent.run("ls", "etc")
    assert "truncated" in one_line_error(proc, 1) and proc.stdout == ""
    found = agent.run("find", "etc", "hosts", "--json")
    assert found.returncode == 1 and "truncated" in json.loads(found.stdout)["errors"][0]


def test_dump_of_archived_content_exits_75_like_restore(ca: ColdAgent, tmp_path: Path) -> None:  # noqa: F811
    src = tmp_path / "src"
    make_tree(src)
    ca.job("cold", type="files", paths=[str(src)], storage_class="DEEP_ARCHIVE")
    ca.json("run", "cold")
    rc, out, err = ca.cli("dump", "cold", f"{src}/etc/hosts")
    assert rc == 75 and out == ""
    [line] = [ln for ln in err.splitlines() if ln.startswith("backup-agent:")]
    assert "waiting for archived data" in line and "DEEP_ARCHIVE" in line
    data = ca.data_keys("cold")
    ca.moto.release(ca.bucket, data)
    rc, out, err = ca.cli("dump", "cold", f"{src}/etc/hosts")
    assert rc == 0 and out == "127.0.0.1 localhost\n", err
    # listing and searching need no retrieval: manifests stay instantly readable
    rc, out, _ = ca.cli("find", "cold", "*.conf", "--newest", "1")
    assert rc == 0 and len(out.splitlines()) == 20


def _manifest(entries: list[Any]) -> bytes:
    import io

    from backup_agent.storage.manifest import ManifestWriter

    buf = io.BytesIO()
    w = ManifestWriter(buf, {})
    for e in entries:
        w.add(e)
    w.close({})
    return buf.getvalue()


def _searched(data: bytes, globs: list[str], ignore_case: bool) -> list[str]:
    import io

    from backup_agent.storage.manifest import read_matching

    patterns = browse.compile_patterns(globs, ignore_case)
    return [e.path for e in read_matching(io.BytesIO(data), "m", browse.needles(patterns), ignore_case)
            if browse.matches(e, patterns)]


GLOBBY = "aBkKsSiI\u0131\u0130\u017f\u212aéÉ☕ \"\\/[]!*?-.xyz"


@settings(max_examples=200, deadline=None)
@given(name=st.text(alphabet=GLOBBY, min_size=1, max_size=12), glob=st.text(alphabet=GLOBBY, min_size=1, max_size=8),
       ignore_case=st.booleans())
@example(name="]yz", glob="[]x]yz", ignore_case=False)  # ']' first in a class is literal
@example(name="\u212a", glob="k", ignore_case=True)  # the Kelvin sign folds to k
def test_find_line_filter_never_hides_a_match(name: str, glob: str, ignore_case: bool) -> None:
    from backup_agent.storage.manifest import Entry

    assume(name.replace("/", "_") not in (".", ".."))
    e = Entry("/d/" + name.replace("/", "_"), "file", size=1, sha256="0" * 64, object="packs/00/x")
    expected = [e.path] if browse.matches(e, browse.compile_patterns([glob], ignore_case)) else []
    assert _searched(_manifest([e]), [glob], ignore_case) == expected


def test_find_search_over_blocks_equals_reading_every_entry() -> None:
    import io

    from backup_agent.storage.manifest import Entry, ManifestError, read

    entries = [Entry(f"/srv/d{i // 100}", "dir") if i % 100 == 0 else
               Entry(f"/srv/d{i // 100}/f{i}.{'conf' if i % 7 == 0 else 'txt'}", "file", size=i,
                     sha256=f"{i:064x}", object=f"packs/00/{i // 50}") for i in range(20_000)]
    data = _manifest(entries)
    assert len(gzip.decompress(data)) > 3 << 20  # several blocks, lines cut at block ends
    for globs, ic in ((["*.conf"], False), (["F1?.TXT", "d3"], True), (["/srv/d1*/f1*"], False), (["*"], False)):
        patterns = browse.compile_patterns(globs, ic)
        brute = [e.path for e in read(io.BytesIO(data), "m")[1] if browse.matches(e, patterns)]
        assert _searched(data, globs, ic) == brute and brute, globs
    lines = gzip.decompress(data).splitlines(keepends=True)
    for broken in (lines[:-1], [*lines[:-1], b'{"end":true,"entries":19999,"summary":{}}\n'], lines[:3000]):
        with pytest.raises(ManifestError):
            _searched(gzip.compress(b"".join(broken)), ["*.conf"], False)


def test_ls_prints_entry_types_it_does_not_know_by_name() -> None:
    from backup_agent.storage.manifest import Entry

    fifo = cli._ls_line(Entry("/run/x.pipe", "fifo", mode=0o600, uid=1, gid=2), long=True)
    assert fifo.startswith("prw------- ") and fifo.endswith(" /run/x.pipe")
    later = Entry("/dev/odd", "whiteout", mode=0o644)
    assert cli._ls_line(later, long=False) == "/dev/odd (whiteout)"
    assert cli._ls_line(later, long=True).startswith("?rw-r--r-- ")
    assert browse.entry_json(later)["type"] == "whiteout"


def test_sparse_files_list_and_dump_as_they_are_on_disk(agent: Any, tmp_path: Path) -> None:
    """A sparse file is stored as its data regions: ls shows its real size and dump gives its
    bytes with the holes as zeros, exactly what `cat` of the file gives."""
    src = tmp_path / "src"
    src.mkdir()
    img = src / "disk.img"
    with open(img, "wb") as f:
        f.seek(3 << 20)
        f.write(b"data in the middle" * 100)
        f.truncate(8 << 20)  # ends in a hole
    (src / "all-hole").write_bytes(b"")
    os.truncate(src / "all-hole", 1 << 20)
    agent.job("img", type="files", paths=[str(src)])
    snap(agent, "img")
    listed = json.loads(agent.run("ls", "img", "--json", str(img)).stdout)["entries"]
    assert [e["size"] for e in listed] == [8 << 20]
    for path in (img, src / "all-hole"):
        proc = subprocess.run([cli_path(), "-c", str(agent.path), "dump", "img", str(path)], capture_output=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == path.read_bytes()
