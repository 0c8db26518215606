"""Storage-layer benchmark: the S3 clients side by side, static keys against instance-profile
credentials, on moto server with signature checking and a loopback IMDSv2 (issue #19).

    .venv/bin/python bench/store_bench.py [--rounds 3] [--objects 500] [--puts 100]

Each measurement is a fresh process (interpreter, imports, credential resolution included), as
an hourly run is: the "rerun" scenario is what an unchanged rerun asks of storage (one listing of
the job's objects, the manifest GET, the new manifest PUT); "puts" is a full backup's small
uploads (8 KiB objects from `--threads` workers). Clients:

- crt: CrtStore (awscrt), the new storage layer;
- boto3: storage/s3.make_client, the client the old code used for instance-profile credentials
  (and everything else but a static-key run);
- direct: the old hand-written client (storage/s3_direct.py), static keys only, while it exists;
- botostore: BotoStore (storage/s3_boto.py), when that module exists.

Rounds interleave every variant so drift hits all alike; the table shows medians, each client's
instance-profile ÷ static ratio (goal: ≤ 1.2), and each client ÷ crt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = 64 << 10


def child(variant: str, scenario: str, spec: dict[str, Any]) -> None:
    """One measured process: build the client the way a run does, then do the scenario."""
    from backup_agent.config import Storage

    keys = {"access_key_id": spec["key"], "secret_access_key": spec["secret"]} if spec["static"] else {}
    storage = Storage(bucket=spec["bucket"], prefix="", region="us-east-1", endpoint_url=spec["endpoint"], **keys)
    manifest = b"m" * MANIFEST
    sha = hashlib.sha256(manifest).hexdigest()
    small = os.urandom(8 << 10)
    small_sha = hashlib.sha256(small).hexdigest()
    run = spec["run"]

    if variant in ("crt", "botostore"):
        if variant == "crt":
            from backup_agent.storage.s3_crt import CrtStore

            store: Any = CrtStore.from_storage(storage)
        else:
            from backup_agent.storage import s3_boto  # type: ignore[attr-defined]

            store = s3_boto.BotoStore.from_storage(storage)
        if scenario == "rerun":
            n = sum(1 for _ in store.list("job/"))
            assert n >= spec["objects"], n
            body = store.get("job/manifest")
            assert len(body.read()) == MANIFEST
            store.put(f"run/{run}/manifest", manifest, sha256=sha)
        else:
            with ThreadPoolExecutor(spec["threads"]) as pool:
                list(pool.map(lambda i: store.put(f"run/{run}/f{i}", small, sha256=small_sha), range(spec["puts"])))
        return

    if variant == "direct":
        from backup_agent.storage.s3_direct import direct_client

        client: Any = direct_client(storage)
        assert client is not None, "the direct client serves static keys only"
    else:
        from backup_agent.storage.s3 import make_client

        client = make_client(storage)
    b = spec["bucket"]
    if scenario == "rerun":
        n = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=b, Prefix="job/"):
            n += len(page.get("Contents", []))
        assert n >= spec["objects"], n
        assert len(client.get_object(Bucket=b, Key="job/manifest")["Body"].read()) == MANIFEST
        client.put_object(Bucket=b, Key=f"run/{run}/manifest", Body=manifest)
    else:
        with ThreadPoolExecutor(spec["threads"]) as pool:
            list(pool.map(lambda i: client.put_object(Bucket=b, Key=f"run/{run}/f{i}", Body=small),
                          range(spec["puts"])))


def available(variant: str) -> bool:
    src = ROOT / "agent" / "src" / "backup_agent" / "storage"
    return {"direct": (src / "s3_direct.py").exists(), "botostore": (src / "s3_boto.py").exists()}.get(variant, True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--objects", type=int, default=500)
    ap.add_argument("--puts", type=int, default=100)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--clients", default="crt,boto3,direct,botostore")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], json.loads(args.child[2]))
        return 0

    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "agent" / "tests")]
    from store_servers import CredentialImds, sig_moto

    clients = [c for c in args.clients.split(",") if available(c)]
    results: dict[tuple[str, str, str], list[float]] = {}
    with sig_moto() as moto, tempfile.TemporaryDirectory() as tmp:
        admin = moto.s3()
        bucket = "bench-store"
        admin.create_bucket(Bucket=bucket)
        admin.put_object(Bucket=bucket, Key="job/manifest", Body=b"m" * MANIFEST)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: admin.put_object(Bucket=bucket, Key=f"job/o{i:06d}", Body=b"x"),
                          range(args.objects)))
        imds = CredentialImds(moto.role_name, moto.assume_role)
        with imds.serve() as imds_url:
            base = {k: v for k, v in os.environ.items()
                    if not k.startswith("AWS_") or k in ("AWS_CA_BUNDLE",)}
            envs = {
                "static": {**base, "AWS_EC2_METADATA_DISABLED": "true"},
                "instance-profile": {**base, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds_url,
                                     "AWS_CONFIG_FILE": f"{tmp}/none", "AWS_SHARED_CREDENTIALS_FILE": f"{tmp}/none"},
            }
            run = 0
            for r in range(args.rounds):
                for client in clients:
                    for creds in ("static", "instance-profile"):
                        if client == "direct" and creds != "static":
                            continue
                        for scenario in ("rerun", "puts"):
                            run += 1
                            spec = {"bucket": bucket, "endpoint": moto.url, "static": creds == "static",
                                    "key": moto.user.access_key, "secret": moto.user.secret_key,
                                    "objects": args.objects, "puts": args.puts, "threads": args.threads, "run": run}
                            took = measure(client, scenario, spec, envs[creds])
                            if took is not None:
                                results.setdefault((client, creds, scenario), []).append(took)
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print_table(results, clients, args)
    return 0


def measure(client: str, scenario: str, spec: dict[str, Any], env: dict[str, str]) -> float | None:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--child", client, scenario, json.dumps(spec)],
                          env=env, capture_output=True, text=True)
    took = time.monotonic() - started
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"{client}/{'static' if spec['static'] else 'instance-profile'}/{scenario}: failed: {last}",
              file=sys.stderr)
        return None
    return took


def print_table(results: dict[tuple[str, str, str], list[float]], clients: list[str], args: argparse.Namespace) -> None:
    def med(client: str, creds: str, scenario: str) -> float | None:
        v = results.get((client, creds, scenario))
        return statistics.median(v) if v else None

    def fmt(x: float | None) -> str:
        return f"{x:.2f}" if x is not None else "n/a"

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}" if a is not None and b else "n/a"

    print(f"\nmoto with signature checks; {args.objects} objects listed, {args.puts} puts of 8 KiB, "
          f"median of {args.rounds} rounds, wall seconds per process\n")
    print("| client | rerun static | rerun instance profile | ratio | puts static | puts instance profile | ratio |")
    print("|---|---|---|---|---|---|---|")
    for c in clients:
        rs, ri = med(c, "static", "rerun"), med(c, "instance-profile", "rerun")
        ps, pi = med(c, "static", "puts"), med(c, "instance-profile", "puts")
        print(f"| {c} | {fmt(rs)} | {fmt(ri)} | {ratio(ri, rs)} | {fmt(ps)} | {fmt(pi)} | {ratio(pi, ps)} |")
    print("\n| client ÷ crt | rerun static | rerun instance profile | puts static | puts instance profile |")
    print("|---|---|---|---|---|")
    for c in clients:
        if c == "crt":
            continue
        cells = [ratio(med(c, cr, sc), med("crt", cr, sc))
                 for sc in ("rerun", "puts") for cr in ("static", "instance-profile")]
        print(f"| {c} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    goal = ratio(med("crt", "instance-profile", "rerun"), med("crt", "static", "rerun"))
    print(f"\ngoal (issue 19): crt unchanged rerun, instance profile ÷ static ≤ 1.2: {goal}")


if __name__ == "__main__":
    raise SystemExit(main())
