"""Malformed configs, hand-written and generated: each gives exit 2 and one line naming the file
(and the key), no traceback, and nothing written: no state_dir, no object in the bucket.

Most cases call the CLI's `main` in this process (the same argument parsing, dispatch and exit
mapping as the console script, minus 1 s of interpreter start each); a sample also runs as real
processes, with `validate`, `run` and `daemon`.
"""

from __future__ import annotations

import copy
import io
import signal
import string
import subprocess
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliability.lab import AGENT, Lab, wait_for
from reliability.report import record


def base(lab: Lab, state_dir: Path) -> dict[str, Any]:
    return {
        "node": "rel-node",
        "state_dir": str(state_dir),
        "storage": {"bucket": lab.bucket, "endpoint_url": lab.proxy.url, "access_key_id": lab.seaweed.access_key,
                    "secret_access_key": lab.seaweed.secret_key},
        "jobs": {"data": {"type": "files", "paths": [str(state_dir.parent / "src")], "schedule": "daily at 02:00",
                          "retention": {"keep_last": 3}}},
    }


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return out


DELETE = object()
FILES = "jobs.data"
# (what is wrong, key path or raw YAML, value)
HAND: list[tuple[str, str, Any]] = [
    ("storage missing", "storage", DELETE),
    ("bucket missing", "storage.bucket", DELETE),
    ("bucket name invalid", "storage.bucket", "Not_A_Bucket"),
    ("bucket a number", "storage.bucket", 12345),
    ("endpoint not http", "storage.endpoint_url", "ftp://127.0.0.1:21"),
    ("prefix with leading slash", "storage.prefix", "/node"),
    ("unknown storage key", "storage.buckett", "x"),
    ("unknown top-level key", "jbos", {}),
    ("state_dir relative", "state_dir", "var/lib/backup-agent"),
    ("log level unknown", "log_level", "LOUD"),
    ("max_parallel_jobs zero", "max_parallel_jobs", 0),
    ("max_parallel_jobs a string", "max_parallel_jobs", "two"),
    ("stop_timeout negative", "stop_timeout", -1),
    ("splay absurd", "splay", 10**9),
    ("concurrency absurd", "storage.concurrency", 1000),
    ("pack size zero", "storage.pack_size_mb", 0),
    ("multipart chunk below S3's 5 MiB", "storage.multipart_chunk_mb", 4),
    ("access key without secret", "storage.secret_access_key", DELETE),
    ("jobs a list", "jobs", ["data"]),
    ("job name with spaces", "jobs.bad name!", {"type": "files", "paths": ["/tmp"]}),
    ("job without type", f"{FILES}.type", DELETE),
    ("job type unknown", f"{FILES}.type", "tape"),
    ("files job without paths", f"{FILES}.paths", DELETE),
    ("paths empty", f"{FILES}.paths", []),
    ("path relative", f"{FILES}.paths", ["relative/dir"]),
    ("path with ..", f"{FILES}.paths", ["/etc/../root"]),
    ("path with .. at the end", f"{FILES}.paths", ["/srv/data/.."]),
    ("paths a string", f"{FILES}.paths", "/etc"),
    ("exclude a string", f"{FILES}.exclude", "*.tmp"),
    ("one_file_system a string", f"{FILES}.one_file_system", "yes"),
    ("schedule nonsense", f"{FILES}.schedule", "sometimes"),
    ("schedule hour 25", f"{FILES}.schedule", "daily at 25:00"),
    ("schedule minute 61", f"{FILES}.schedule", "hourly at :61"),
    ("schedule weekday unknown", f"{FILES}.schedule", "weekly on funday at 02:00"),
    ("schedule every 0", f"{FILES}.schedule", "every 0 minutes"),
    ("schedule every 400 days", f"{FILES}.schedule", "every 400 days"),
    ("schedule every 10^20 s", f"{FILES}.schedule", "every 100000000000000000000 seconds"),
    ("schedule a number", f"{FILES}.schedule", 5),
    ("retention negative", f"{FILES}.retention", {"keep_last": -1}),
    ("retention absurd", f"{FILES}.retention", {"keep_daily": 10**12}),
    ("retention unknown rule", f"{FILES}.retention", {"keep_forever": 1}),
    ("retention a word", f"{FILES}.retention", {"keep_last": "all"}),
    ("retention a fraction", f"{FILES}.retention", {"keep_last": 1.5}),
    ("retention a list", f"{FILES}.retention", [1, 2]),
    ("storage class unknown", f"{FILES}.storage_class", "GLACIERISH"),
    ("timeout zero", f"{FILES}.timeout", 0),
    ("catch_up a string", f"{FILES}.catch_up", "no"),
    ("unknown job key", f"{FILES}.pathz", ["/tmp"]),
    ("a command job's key on a files job", f"{FILES}.command", ["true"]),
    ("webhook not a URL", "notify.webhook_url", "not a url"),
    ("unknown notify key", "notify.email", "ops@example.com"),
    ("metrics textfile relative", "metrics.textfile", "backup.prom"),
    ("instance id malformed", "aws.instance_id", "x-123"),
    ("command job without command", "jobs.cmd", {"type": "command"}),
    ("preset without database", "jobs.pg", {"type": "command", "preset": "postgresql"}),
    ("ebs volumes malformed", "jobs.vols", {"type": "ebs_snapshot", "volumes": ["sda"]}),
    # issue 17: values the loader crashed on ("internal error") or accepted and broke later
    ("job type a list", f"{FILES}.type", ["files"]),
    ("pack size a float", "storage.pack_size_mb", 16.0),
    ("retention a float", f"{FILES}.retention", {"keep_last": 3.0}),
    ("timeout NaN", f"{FILES}.timeout", float("nan")),
    ("stop_timeout NaN", "stop_timeout", float("nan")),
    ("notify timeout infinite", "notify.timeout", float("inf")),
    ("state_dir /", "state_dir", "/"),
    ("state_dir /var", "state_dir", "//var/"),
    ("node /", "node", "/"),
    ("node with a newline", "node", "web-01\n"),
    ("prefix with ..", "storage.prefix", "a/../b"),
    ("prefix with //", "storage.prefix", "a//b"),
    ("region a host name", "storage.region", "evil.example.com/"),
    ("bucket with a newline", "storage.bucket", "abc-def\n"),
    ("job name ending in a newline", "jobs.data\n", {"type": "files", "paths": ["/tmp"]}),
    ("pre hook on a files job", f"{FILES}.pre", ["touch", "/tmp/never"]),
    ("post hook on a files job", f"{FILES}.post", ["touch", "/tmp/never"]),
    ("NUL in a path", f"{FILES}.paths", ["/srv/\x00x"]),
    ("env name with '='", "jobs.cmd", {"type": "command", "command": ["true"], "env": {"A=B": "c"}}),
    ("endpoint with a broken IPv6 host", "storage.endpoint_url", "http://[::1"),
    ("endpoint port out of range", "storage.endpoint_url", "http://127.0.0.1:99999"),
    ("webhook without a host", "notify.webhook_url", "https://:443/hook"),
    ("environment with a newline", "environment", "production\nstaging"),
]
RAW: list[tuple[str, bytes]] = [
    ("empty file", b""),
    ("a list at the top", b"- a\n- b\n"),
    ("a string at the top", b"just words\n"),
    ("YAML syntax error", b"storage: {bucket: [unclosed\n"),
    ("tab indentation", b"storage:\n\tbucket: x\n"),
    ("not UTF-8", b"\xff\xfe\x00\x01garbage\n"),
    ("an integer job name", b"storage: {bucket: abc-def}\njobs:\n  123: {type: files, paths: [/x]}\n"),
    ("duplicate top-level key", b"storage: {bucket: abc-def}\nstorage: {bucket: ghi-jkl}\n"),
    ("duplicate job key", b"storage: {bucket: abc-def}\njobs:\n  a: {type: files, paths: [/x], paths: [/y]}\n"),
    ("python object tag", b"storage: !!python/object/apply:os.system ['touch /tmp/pwned']\n"),
    ("nested 5000 deep", b"storage: " + b"[" * 5000 + b"]" * 5000 + b"\n"),
    ("alias bomb (9^9 values)", b"\n".join(
        [b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        + [f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]".encode() for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
        + [b"node: *i", b"storage: {bucket: abc-def}"]) + b"\n"),
]


def run_main(args: list[str]) -> tuple[int, str, str]:
    from backup_agent.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def assert_rejected(lab: Lab, path: Path, state_dir: Path, code: int, out: str, err: str, what: str) -> None:
    assert code == 2, f"{what}: exit {code}\n{err}"
    assert out == "", f"{what}: printed {out!r}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"backup-agent: {path}:"), f"{what}: {err!r}"
    assert "Traceback" not in err and "internal error" not in err, f"{what}: {err}"
    assert not state_dir.exists(), f"{what}: {state_dir} was created"
    assert lab.object_keys() == [], f"{what}: wrote to the bucket"


def hand_cases(lab: Lab, tmp_path: Path) -> list[tuple[str, bytes]]:
    cases: list[tuple[str, bytes]] = []
    for i, (what, key, value) in enumerate(HAND):
        doc = _set(base(lab, tmp_path / f"state-{i}"), key, value)
        cases.append((what, yaml.safe_dump(doc).encode()))
    return cases + RAW


def test_hand_written_malformed_configs(lab: Lab, tmp_path: Path) -> None:
    cases = hand_cases(lab, tmp_path)
    for i, (what, text) in enumerate(cases):
        path = tmp_path / f"bad-{i}.yaml"
        path.write_bytes(text)
        code, out, err = run_main(["-c", str(path), "run", "data"])
        assert_rejected(lab, path, tmp_path / f"state-{i}", code, out, err, what)

    # The same through real processes, for a sample and for every verb that reads the config.
    sample = [(i, verb) for i in range(0, len(cases), 8) for verb in ("validate", "run data")] + [(7, "daemon")]

    def real(item: tuple[int, str]) -> tuple[int, subprocess.CompletedProcess[str]]:
        i, verb = item
        return i, subprocess.run([AGENT, "-c", str(tmp_path / f"bad-{i}.yaml"), *verb.split()], capture_output=True,
                                 text=True, timeout=60)

    with ThreadPoolExecutor(4) as pool:
        for i, proc in pool.map(real, sample):
            assert_rejected(lab, tmp_path / f"bad-{i}.yaml", tmp_path / f"state-{i}", proc.returncode,
                            proc.stdout, proc.stderr, f"{cases[i][0]} ({' '.join(proc.args[3:])})")
    record("hostile.config_hand", cases=len(cases),
           result="wrong types (a list as job type, floats for integers, an integer job name), NaN and infinite "
                  "timeouts, duplicate YAML keys, unknown keys, invalid schedules, absurd retention and limits, "
                  "relative paths, '..' and NUL, state_dir / or a system directory, node, environment, prefix, "
                  "region and bucket values that break S3 keys or host names, URLs without a host or with a bad "
                  "port, names ending "
                  "in a newline, pre/post hooks on files jobs, "
                  "YAML syntax errors, a python tag, deep nesting, an alias bomb: each exit 2 with one line "
                  "naming the file (and key), no traceback, no state_dir, nothing in the bucket; "
                  f"{len(sample)} of them also as real processes (validate, run, daemon)")


# Every typed leaf of the base config, and values that cannot be of its type.
LEAVES = {
    "node": "str", "state_dir": "path", "log_level": "enum", "splay": "int", "max_parallel_jobs": "int",
    "storage.bucket": "str", "storage.region": "str", "storage.endpoint_url": "str", "storage.concurrency": "int",
    "storage.pack_size_mb": "int", f"{FILES}.paths": "list", f"{FILES}.schedule": "str",
    f"{FILES}.retention.keep_last": "int", f"{FILES}.retention.keep_daily": "int", f"{FILES}.one_file_system": "bool",
    f"{FILES}.follow_symlinks": "bool", f"{FILES}.exclude": "list", "notify.webhook_url": "str",
    "metrics.textfile": "path",
}


def _known_keys() -> set[str]:
    """Every key the schema knows, at any level: a generated "unknown" key must be none of them."""
    from backup_agent.config import TOP_LEVEL
    from backup_agent.config_schema import COMMON_JOB_KEYS, RETENTION
    from backup_agent.jobs.registry import JOB_TYPES

    keys = set(TOP_LEVEL["properties"]) | set(COMMON_JOB_KEYS) | set(RETENTION["properties"])
    for sub in TOP_LEVEL["properties"].values():
        keys |= set(sub.get("properties", {}))
    for spec in JOB_TYPES.values():
        keys |= set(spec.keys)
    return keys


KNOWN_KEYS = _known_keys()
text = st.text(string.ascii_letters + string.digits + " ./:-_", max_size=20)
wrong = {
    "str": st.one_of(st.integers(), st.booleans(), st.lists(text, max_size=3), st.dictionaries(text, text, max_size=2)),
    "path": st.one_of(text.filter(lambda s: not s.startswith("/")), st.integers(), st.lists(text, max_size=2)),
    "enum": st.one_of(text.filter(lambda s: s not in ("DEBUG", "INFO", "WARNING", "ERROR")), st.integers()),
    "int": st.one_of(text, st.booleans(), st.floats(allow_nan=False, allow_infinity=False).filter(
        lambda f: not f.is_integer()), st.lists(st.integers(), max_size=2), st.integers(max_value=-1)),
    "bool": st.one_of(text, st.integers(), st.lists(st.booleans(), max_size=2)),
    "list": st.one_of(text, st.integers(), st.dictionaries(text, text, max_size=2), st.booleans()),
}
mutations = st.one_of(
    st.sampled_from(sorted(LEAVES)).flatmap(lambda k: st.tuples(st.just("type"), st.just(k), wrong[LEAVES[k]])),
    st.tuples(st.just("unknown key"),
              st.sampled_from(["", "storage.", "jobs.data.", "jobs.data.retention.", "notify.", "metrics.", "aws."]),
              st.text(string.ascii_lowercase + "_", min_size=1, max_size=12).filter(lambda k: k not in KNOWN_KEYS)),
    st.tuples(st.just("schedule"), st.just(f"{FILES}.schedule"),
              st.one_of(text.filter(lambda s: not s.strip().lower().startswith(("every", "hourly", "daily", "weekly"))),
                        st.integers(367, 10**6).map(lambda n: f"every {n} days"),
                        st.integers(24, 99).map(lambda h: f"daily at {h}:00"))),
    st.tuples(st.just("retention"), st.sampled_from([f"{FILES}.retention.keep_{r}" for r in
                                                     ("last", "hourly", "daily", "weekly", "monthly", "yearly")]),
              st.one_of(st.integers(max_value=-1), st.integers(min_value=100_001))),
    st.tuples(st.just("dotdot path"), st.just(f"{FILES}.paths"),
              st.lists(st.sampled_from(["etc", "..", "srv", "data", "."]), min_size=1, max_size=5)
              .filter(lambda parts: ".." in parts).map(lambda parts: ["/" + "/".join(parts)])),
)


def test_generated_malformed_configs(lab: Lab, tmp_path: Path) -> None:
    ran: list[str] = []

    @settings(max_examples=80, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(mutation=mutations)
    def check(mutation: tuple[str, str, Any]) -> None:
        kind, key, value = mutation
        state_dir = tmp_path / f"state-{len(ran)}"
        doc = base(lab, state_dir)
        doc = _set(doc, key + value, "surprise") if kind == "unknown key" else _set(doc, key, value)
        path = tmp_path / f"gen-{len(ran)}.yaml"
        path.write_text(yaml.safe_dump(doc))
        code, out, err = run_main(["-c", str(path), "run", "data"])
        assert_rejected(lab, path, state_dir, code, out, err, f"{kind} {key}={value!r}")
        ran.append(kind)

    check()
    assert len(ran) >= 50, len(ran)
    kinds = sorted(set(ran))
    record("hostile.config_generated", cases=len(ran),
           result=f"mutations of a valid config ({', '.join(kinds)}): each exit 2, one line, no traceback, "
                  "nothing written")


SECRET = "Zq8-s3cr3t-V4lue-9f2k"
SECRET_NUMBER = 918273645546372819
PREVIOUS_KEYS = "storage.previous_encryption_keys"


def test_config_errors_do_not_echo_secrets(lab: Lab, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    command = {"type": "command", "preset": "postgresql", "database": "app"}
    cases = {
        "storage.secret_access_key as a number": _set(base(lab, state_dir), "storage.secret_access_key", SECRET_NUMBER),
        "storage.secret_access_key as a list": _set(base(lab, state_dir), "storage.secret_access_key", [SECRET]),
        "storage.session_token as a number": _set(base(lab, state_dir), "storage.session_token", SECRET_NUMBER),
        "password as a number": _set(base(lab, state_dir), "jobs.db", {**command, "password": SECRET_NUMBER}),
        "env value as a number": _set(base(lab, state_dir), "jobs.db",
                                      {"type": "command", "command": ["true"], "env": {"API_TOKEN": SECRET_NUMBER}}),
        "secret_env value as a number": _set(base(lab, state_dir), "jobs.db",
                                             {"type": "command", "command": ["true"],
                                              "secret_env": {"PLAIN": SECRET_NUMBER}}),
        "env as a string": _set(base(lab, state_dir), "jobs.db",
                                {"type": "command", "command": ["true"], "env": f"PGPASSWORD={SECRET}"}),
        "storage as a list": _set(base(lab, state_dir), "storage", [{"secret_access_key": SECRET}]),
        "notify as a string": _set(base(lab, state_dir), "notify", f"https://hooks.example/{SECRET}"),
        "webhook_url without a host": _set(base(lab, state_dir), "notify.webhook_url", f"https://:1/{SECRET}"),
        "webhook_url malformed": _set(base(lab, state_dir), "notify.webhook_url", f"hxxps://hooks.example/{SECRET}"),
        "healthchecks_url malformed": _set(base(lab, state_dir), "notify.healthchecks_url", f"ping/{SECRET}"),
        # Client-side encryption keys (issue #20): a short one is the likeliest mistake.
        "storage.encryption_key too short": _set(base(lab, state_dir), "storage.encryption_key", SECRET),
        "storage.encryption_key as a number": _set(base(lab, state_dir), "storage.encryption_key", SECRET_NUMBER),
        "storage.previous_encryption_keys with a short key": _set(base(lab, state_dir), PREVIOUS_KEYS, [SECRET]),
        "storage.previous_encryption_keys twice the same": _set(base(lab, state_dir), PREVIOUS_KEYS,
                                                                [SECRET * 2, SECRET * 2]),
        "storage.previous_encryption_keys as a string": _set(base(lab, state_dir), PREVIOUS_KEYS, SECRET * 2),
    }
    for i, (what, doc) in enumerate(cases.items()):
        path = tmp_path / f"secret-{i}.yaml"
        path.write_text(yaml.safe_dump(doc))
        code, out, err = run_main(["-c", str(path), "validate"])
        assert_rejected(lab, path, state_dir, code, out, err, what)
        key = what.split(" ")[0].split(".")[-1].replace("_value", "")
        assert key in err, f"{what}: the error does not name the key: {err}"
        assert SECRET not in err and str(SECRET_NUMBER) not in err, f"{what}: the secret is in {err!r}"
    record("hostile.config_secrets", cases=len(cases),
           result="wrong-typed or malformed secret_access_key, session_token, password, env and secret_env values, "
                  "env as a string, storage and notify of the wrong type, webhook and healthchecks URLs (also "
                  "without a host), encryption keys that are too short, numbers, a string for the list or the same "
                  "previous key twice: exit 2, one line naming the key, the value not shown")


# --- every key of the schema, with a value of every wrong type --------------------------------

JOB_BASES: dict[str, dict[str, Any]] = {
    "files": {"type": "files", "paths": ["/srv/data"]},
    "command": {"type": "command", "command": ["true"]},
    "ebs_snapshot": {"type": "ebs_snapshot"},
}


def schema_leaves() -> list[tuple[str, dict[str, Any]]]:
    """(dotted key, its schema) for every key the config takes, read from the schema itself, so
    a key added later is covered without touching this test. Jobs are `jobs.<type>.<key>`."""
    from backup_agent.config import TOP_LEVEL
    from backup_agent.jobs.registry import job_schema

    out: list[tuple[str, dict[str, Any]]] = []

    def walk(prefix: str, props: dict[str, Any]) -> None:
        for key, sub in props.items():
            out.append((f"{prefix}{key}", sub))
            if sub.get("properties"):
                walk(f"{prefix}{key}.", sub["properties"])
            # A list's items and a map's values: `paths: [1]`, `env: {A: [x]}` (`key[]`, `key{}`).
            if isinstance(sub.get("items"), dict) and sub["items"].get("type"):
                out.append((f"{prefix}{key}[]", sub["items"]))
            if isinstance(sub.get("additionalProperties"), dict):
                out.append((f"{prefix}{key}{{}}", sub["additionalProperties"]))

    walk("", {k: v for k, v in TOP_LEVEL["properties"].items() if k != "jobs"})
    for job_type in JOB_BASES:
        walk(f"jobs.{job_type}.", job_schema(job_type)["properties"])
    return out


LEAF_SCHEMAS = schema_leaves()
any_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(allow_subnormal=False),
              st.sampled_from([16.0, float("nan"), float("inf"), -0.0]), text, st.dates()),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(text, children, max_size=3)),
    max_leaves=6)


def fits(schema: dict[str, Any], value: Any) -> bool:
    """Whether `value` has the type the schema asks for: the test's own reading of the schema,
    independent of the loader (a bool is no integer, 16.0 is no integer, NaN is no number)."""
    if "enum" in schema:
        return any(type(value) is type(e) and value == e for e in schema["enum"])
    if "oneOf" in schema:
        return any(fits(s, value) for s in schema["oneOf"])
    if "const" in schema:
        return type(value) is type(schema["const"]) and value == schema["const"]
    kind = schema.get("type")
    if kind == "integer":
        return type(value) is int
    if kind == "number":
        return type(value) is int or (type(value) is float and value == value and abs(value) != float("inf"))
    checks = {"string": str, "boolean": bool, "array": list, "object": dict}
    return kind not in checks or type(value) is checks[kind]


def wrong_config(lab: Lab, state_dir: Path, key: str, value: Any) -> dict[str, Any]:
    doc = base(lab, state_dir)
    doc["jobs"].update({t: copy.deepcopy(b) for t, b in JOB_BASES.items()})
    if key.startswith("storage.object_lock."):
        # A map whose keys are all required: the others present, so only the wrong value is wrong.
        doc["storage"]["object_lock"] = {"mode": "GOVERNANCE", "days": 1}
    if key.endswith("[]"):
        key, value = key[:-2], [value]
    elif key.endswith("{}"):
        key, value = key[:-2], {"NAME": value}
    return _set(doc, key, value)


def test_a_wrong_type_at_any_key_is_one_line_and_exit_2(lab: Lab, tmp_path: Path) -> None:
    """Issue 17: `type: [files]`, `pack_size_mb: 16.0`, `timeout: .nan` were "internal error" or
    accepted. Hypothesis puts values of random YAML types (None, bools, huge ints, NaN, floats
    that look like integers, dates, strings, nested lists and maps) at every key the schema has."""
    covered: set[str] = set()
    ran: list[str] = []

    @settings(max_examples=400, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(case=st.sampled_from(LEAF_SCHEMAS).flatmap(
        lambda leaf: st.tuples(st.just(leaf), any_value.filter(lambda v: not fits(leaf[1], v)))))
    def check(case: tuple[tuple[str, dict[str, Any]], Any]) -> None:
        (key, _), value = case
        state_dir = tmp_path / f"state-{len(ran)}"
        path = tmp_path / f"type-{len(ran)}.yaml"
        path.write_text(yaml.safe_dump(wrong_config(lab, state_dir, key, value)))
        ran.append(key)
        code, out, err = run_main(["-c", str(path), "run", "data"])
        assert_rejected(lab, path, state_dir, code, out, err, f"{key}={value!r}")
        assert key.split(".")[-1].strip("[]{}") in err, f"{key}={value!r}: the error does not name the key: {err}"
        covered.add(key)

    # The base config (with a job of every type) is itself valid: a rejection is the wrong value's.
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(wrong_config(lab, tmp_path / "state-good", "jobs.data.schedule", "daily at 02:00")))
    assert run_main(["-c", str(good), "validate"])[0] == 0
    check()
    # Then every key for sure, with the first value of a fixed list that is wrong for it.
    fixed = [None, True, 16.0, float("nan"), "text", ["x"], {"k": 1}, 7]
    for key, schema in LEAF_SCHEMAS:
        if key not in covered:
            check.hypothesis.inner_test(case=((key, schema), next(v for v in fixed if not fits(schema, v))))
    assert covered == {k for k, _ in LEAF_SCHEMAS}
    record("hostile.config_types", cases=len(LEAF_SCHEMAS),
           result="every key of the JSON Schema (top level, storage, aws, notify, metrics, retention and every job "
                  "type's keys, list items and map values) given random values of a wrong YAML type (null, bools, "
                  "integers up to 10^20, NaN, infinities, 16.0 for an integer, dates, strings, nested lists and "
                  "maps): each exit 2 with one line "
                  "naming the file and the key, no traceback, nothing written",
           measured=f"{len(ran)} configs, {len(covered)} of {len(LEAF_SCHEMAS)} keys hit")


def test_a_daemon_keeps_its_config_through_every_hostile_reload(lab: Lab, tmp_path: Path) -> None:
    """Issue 17: a SIGHUP that brought `type: [files]` made the daemon exit. Every hand-written
    case above, brought by SIGHUP in turn: one log line each, the daemon alive, and the job it had
    keeps running on its schedule."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    lab.job("data", type="files", paths=[str(src)], schedule="every 2 seconds")
    good = lab.path.read_bytes()
    daemon = lab.popen("daemon", log="daemon.log")
    wait_for(lambda: len(lab.snapshot_ids("data")) >= 1, 60, "a first scheduled snapshot")
    cases = hand_cases(lab, tmp_path)
    for n, (what, text) in enumerate(cases, 1):
        lab.path.write_bytes(text)
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda n=n: lab.log("daemon.log").count("reload rejected") >= n or daemon.poll() is not None,
                 30, f"the rejection of {what}")
        assert daemon.poll() is None, f"{what}: the daemon exited:\n{lab.log('daemon.log')}"
    rejections = [line for line in lab.log("daemon.log").splitlines() if "reload rejected" in line]
    assert len(rejections) == len(cases)
    for (what, _), line in zip(cases, rejections, strict=True):
        assert f"{lab.path}: " in line and "internal error" not in line, f"{what}: {line}"
    assert "Traceback" not in lab.log("daemon.log")
    lab.path.write_bytes(good)  # what the next run would read if the daemon handed it the file
    before = len(lab.snapshot_ids("data"))
    wait_for(lambda: len(lab.snapshot_ids("data")) >= before + 2, 60, "two more scheduled snapshots")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    record("hostile.config_reload", cases=len(cases),
           result="each hand-written hostile config brought to a running daemon by SIGHUP: one log line naming the "
                  "file and key, no traceback, the daemon keeps running and its job keeps its schedule")


def test_empty_arguments_and_a_closed_stdout(lab: Lab, tmp_path: Path) -> None:
    """Issue 17/26: `--target ''` restored into the current directory (exit 0), `--snapshot ''`
    meant the latest, and `restore --target -` with stdout closed was an "internal error"."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    lab.job("data", type="files", paths=[str(src)])
    lab.job("dump", type="command", command=["sh", "-c", "echo dump"])
    assert lab.run("run", "data").returncode == 0
    assert lab.run("run", "dump").returncode == 0
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cases = {
        "--target ''": ["restore", "data", "--target", ""],
        "--snapshot ''": ["restore", "data", "--snapshot", "", "--target", str(tmp_path / "out")],
        "--snapshot 'ID\\n'": ["restore", "data", "--snapshot", lab.snapshot_ids("data")[0] + "\n", "--target",
                               str(tmp_path / "out")],
        "--at ''": ["restore", "data", "--at", "", "--target", str(tmp_path / "out")],
        "--path ''": ["restore", "data", "--path", "", "--target", str(tmp_path / "out")],
        "--into ''": ["restore", "dump", "--into", ""],
    }
    for what, args in cases.items():
        proc = subprocess.run([AGENT, "-c", str(lab.path), *args], capture_output=True, text=True, cwd=cwd,
                              timeout=120)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, f"{what}: {proc.returncode} {proc.stderr}"
        assert ("must not be empty" in proc.stderr or "is not a snapshot id" in proc.stderr) and \
            "Traceback" not in proc.stderr, f"{what}: {proc.stderr}"
        assert list(cwd.iterdir()) == [] and not (tmp_path / "out").exists(), f"{what}: restored something"
    requests = len(lab.proxy.requests())
    proc = lab.run("restore", "data", "--at", "yesterday", "--target", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.strip() == ("backup-agent: --at: 'yesterday' is not an RFC 3339 time "
                                                            "(e.g. 2026-11-27T02:00:00Z)"), proc.stderr
    assert len(lab.proxy.requests()) == requests, "--at was checked only after S3 requests"
    stdouts = {"closed": "exec >&-", "read-only": "exec 1</dev/null"}
    for what, redirect in stdouts.items():
        proc = subprocess.run(["sh", "-c", f'{redirect}; exec "$@"', "sh", AGENT, "-c", str(lab.path), "restore",
                               "dump", "--target", "-"], capture_output=False, stderr=subprocess.PIPE, text=True,
                              timeout=120)
        assert proc.returncode == 2, f"stdout {what}: exit {proc.returncode}: {proc.stderr}"
        assert proc.stderr.strip() == ("backup-agent: --target -: standard output is closed or not writable; "
                                       "redirect it to a file or a pipe, or give --target FILE"), proc.stderr
    record("hostile.cli_args", cases=len(cases) + len(stdouts) + 1,
           result="--target, --snapshot, --at, --path and --into given '', a snapshot id ending in a newline: exit "
                  "2, one line, nothing restored (an "
                  "empty --target was the current directory); a malformed --at: exit 2 before any S3 request; restore "
                  "--target - with stdout closed or read-only: exit 2 with one line before anything is downloaded")
