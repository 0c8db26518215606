"""Files-job benchmark: this agent against aws s3 sync, s5cmd, rclone and restic on SeaweedFS.

    .venv/bin/python bench/files_bench.py [--rounds 3] [--files 5000] [--big 2] [--tools agent,restic,...]
    .venv/bin/python bench/files_bench.py --rss-tree 1000000     # peak RSS of the agent on 1M tiny files

Generates the anchor dataset (lognormal small files, median 8 KB, plus big files of 200 MiB),
starts one SeaweedFS, and for each round runs every tool in turn (interleaved, so drift in the
machine hits all tools alike): full backup into a fresh place, no-change rerun, rerun after
changing 1 % of the small files, full restore. Wall time and peak RSS come from /usr/bin/time -v.
Prints a markdown table of medians with each tool's ratio to the agent, and the goals of issue 3.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.seaweedfs import SeaweedFS

BIN = Path(sys.executable).parent
SCENARIOS = ("full", "nochange", "change1pct", "restore")


def generate(root: Path, files: int, big: int, seed: int = 42) -> None:
    rnd = random.Random(seed)
    for i in range(files):
        d = root / f"d{i % 100:02d}" / f"s{(i // 100) % 10}"
        d.mkdir(parents=True, exist_ok=True)
        size = min(int(rnd.lognormvariate(mu=9.0, sigma=1.2)), 4 << 20)  # median e^9 ≈ 8.1 KB
        (d / f"f{i:06d}.dat").write_bytes(rnd.randbytes(size))
    for j in range(big):
        with open(root / f"big{j}.bin", "wb") as f:
            for _ in range(200):
                f.write(rnd.randbytes(1 << 20))


def change_one_percent(root: Path, seed: int) -> None:
    rnd = random.Random(seed)
    small = sorted(p for p in root.rglob("*.dat"))
    for p in rnd.sample(small, max(1, len(small) // 100)):
        p.write_bytes(rnd.randbytes(p.stat().st_size or 100))


def timed(cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of a command, via GNU time. An env value of None removes it."""
    full = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        t0 = time.monotonic()
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", tf.name, *cmd], env=full,
                              cwd=cwd, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if proc.returncode not in (0, 3):
            raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-800:]}")
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", tf.read())
        return wall, (int(m.group(1)) / 1024 if m else float("nan"))


class Tool:
    name = ""

    def __init__(self, s3: SeaweedFS, bucket: str, src: Path, work: Path) -> None:
        self.s3, self.bucket, self.src, self.work = s3, bucket, src, work
        self.env = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}

    def reset(self, round_no: int) -> None:
        self.round = round_no

    def backup(self) -> list[str]:
        raise NotImplementedError

    def restore(self, target: Path) -> list[str]:
        raise NotImplementedError


class Agent(Tool):
    name = "backup-agent"

    def reset(self, round_no: int) -> None:
        super().reset(round_no)
        state = self.work / f"agent-state-{round_no}"
        self.cfg = self.work / f"agent-{round_no}.yaml"
        self.cfg.write_text(
            f"node: bench\nstate_dir: {state}\nstorage:\n  bucket: {self.bucket}\n  prefix: agent-{round_no}\n"
            f"  endpoint_url: {self.s3.endpoint_url}\n  access_key_id: {self.s3.access_key}\n"
            f"  secret_access_key: {self.s3.secret_key}\n"
            f"jobs:\n  data:\n    type: files\n    paths: [{self.src}]\n")

    def backup(self) -> list[str]:
        return [str(BIN / "backup-agent"), "-c", str(self.cfg), "run", "data"]

    def restore(self, target: Path) -> list[str]:
        return [str(BIN / "backup-agent"), "-c", str(self.cfg), "restore", "data", "--target", str(target)]


class AwsCli(Tool):
    name = "aws s3 sync"

    def url(self) -> str:
        return f"s3://{self.bucket}/aws-{self.round}/"

    def backup(self) -> list[str]:
        return ["aws", "--endpoint-url", self.s3.endpoint_url, "s3", "sync", "--only-show-errors", str(self.src),
                self.url()]

    def restore(self, target: Path) -> list[str]:
        return ["aws", "--endpoint-url", self.s3.endpoint_url, "s3", "sync", "--only-show-errors", self.url(),
                str(target)]


class S5cmd(Tool):
    name = "s5cmd sync"

    def url(self) -> str:
        return f"s3://{self.bucket}/s5-{self.round}/"

    def exe(self) -> str:
        found = shutil.which("s5cmd") or str(BIN / "s5cmd")
        return found

    def backup(self) -> list[str]:
        return [self.exe(), "--endpoint-url", self.s3.endpoint_url, "sync", f"{self.src}/", self.url()]

    def restore(self, target: Path) -> list[str]:
        return [self.exe(), "--endpoint-url", self.s3.endpoint_url, "sync", self.url() + "*", f"{target}/"]


class Rclone(Tool):
    name = "rclone sync"

    def reset(self, round_no: int) -> None:
        super().reset(round_no)
        self.env.update({"RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
                         "RCLONE_CONFIG_BENCH_ENDPOINT": self.s3.endpoint_url,
                         "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": self.s3.access_key,
                         "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": self.s3.secret_key,
                         "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true"})
        # rclone's AWS SDK refuses a custom CA bundle on a plain-http endpoint.
        self.env["AWS_CA_BUNDLE"] = None  # type: ignore[assignment]

    def backup(self) -> list[str]:
        return ["rclone", "sync", str(self.src), f"bench:{self.bucket}/rclone-{self.round}"]

    def restore(self, target: Path) -> list[str]:
        return ["rclone", "sync", f"bench:{self.bucket}/rclone-{self.round}", str(target)]


class Restic(Tool):
    name = "restic backup"

    def reset(self, round_no: int) -> None:
        super().reset(round_no)
        self.env.update({"RESTIC_REPOSITORY": f"s3:{self.s3.endpoint_url}/{self.bucket}/restic-{round_no}",
                         "RESTIC_PASSWORD": "bench-only", "RESTIC_CACHE_DIR": str(self.work / "restic-cache")})
        subprocess.run(["restic", "init"], env={**os.environ, **self.env}, check=True, capture_output=True)

    def backup(self) -> list[str]:
        return ["restic", "backup", "--quiet", str(self.src)]

    def restore(self, target: Path) -> list[str]:
        return ["restic", "restore", "latest", "--target", str(target)]


TOOLS: dict[str, Callable[..., Tool]] = {"agent": Agent, "restic": Restic, "s5cmd": S5cmd, "aws": AwsCli,
                                         "rclone": Rclone}



def compile_agent(python: Path) -> None:
    """As on a node, where pip compiled the wheel's modules at install time: without this, every
    run under PYTHONDONTWRITEBYTECODE=1 compiles the agent's modules again (70-150 ms a run)."""
    subprocess.run([str(python), "-c", "import backup_agent, compileall, os; "
                    "compileall.compile_dir(os.path.dirname(backup_agent.__file__), quiet=1)"], check=True)

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--big", type=int, default=2)
    ap.add_argument("--tools", default="agent,restic,s5cmd,aws,rclone")
    ap.add_argument("--rss-tree", type=int, default=0, help="only measure the agent's peak RSS on N tiny files")
    args = ap.parse_args()
    # --rss-tree measures the agent alone: the other tools need not be installed.
    missing = [t for t in ("aws", "rclone", "restic") if t in args.tools and not args.rss_tree and not shutil.which(t)]
    if not Path("/usr/bin/time").exists():
        missing.append("time")
    if missing:
        sys.exit(f"bench: missing tools: {', '.join(missing)} (apt-get install awscli rclone restic time)")
    compile_agent(BIN / "python")
    work = Path(tempfile.mkdtemp(prefix="backup-agent-bench-"))
    try:
        # Large volumes, and the bucket's first volumes grown before any tool runs: SeaweedFS
        # pauses writes while it grows volumes, which would land on whichever tool is running.
        with SeaweedFS(volume_size_limit_mb=4096) as s3:
            client = s3.client()
            client.create_bucket(Bucket="bench")
            client.put_object(Bucket="bench", Key="warm-up", Body=b"x")
            if args.rss_tree:
                return rss_tree(s3, work, args.rss_tree)
            return compare(s3, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare(s3: SeaweedFS, work: Path, args: argparse.Namespace) -> int:
    src = work / "data"
    print(f"generating {args.files} small files + {args.big} x 200 MiB ...", file=sys.stderr)
    generate(src, args.files, args.big)
    pristine = work / "pristine"
    shutil.copytree(src, pristine)
    names = [n.strip() for n in args.tools.split(",")]
    results: dict[tuple[str, str], list[float]] = {}
    rss: dict[str, float] = {}
    for rnd in range(args.rounds):
        for name in names:
            shutil.rmtree(src)
            shutil.copytree(pristine, src)
            tool = TOOLS[name](s3, "bench", src, work)
            tool.reset(rnd)
            subprocess.run(["sync"], check=False)
            for scenario in SCENARIOS:
                if scenario == "change1pct":
                    change_one_percent(src, seed=rnd)
                if scenario == "restore":
                    target = work / f"restore-{name}-{rnd}"
                    wall, peak = timed(tool.restore(target), tool.env)
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    wall, peak = timed(tool.backup(), tool.env)
                results.setdefault((tool.name, scenario), []).append(wall)
                rss[tool.name] = max(rss.get(tool.name, 0.0), peak)
                print(f"round {rnd + 1} {tool.name:14} {scenario:10} {wall:7.2f}s  {peak:6.0f} MB",
                      file=sys.stderr)
    print_table(results, rss, [TOOLS[n].name for n in names], args)
    return 0


def print_table(results: dict[tuple[str, str], list[float]], rss: dict[str, float], tools: list[str],
                args: argparse.Namespace) -> None:
    agent = "backup-agent"
    print(f"\n{args.files} small files (lognormal, median 8 KB) + {args.big} x 200 MiB; SeaweedFS on loopback; "
          f"median of {args.rounds} interleaved rounds; wall seconds (ratio = agent / tool)\n")
    print("| tool | full | no-change | 1 % changed | restore | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for t in tools:
        cells = []
        for sc in SCENARIOS:
            med = statistics.median(results[(t, sc)])
            if t == agent or (agent, sc) not in results:
                cells.append(f"{med:.2f}")
            else:
                cells.append(f"{med:.2f} ({statistics.median(results[(agent, sc)]) / med:.2f})")
        print(f"| {t} | " + " | ".join(cells) + f" | {rss[t]:.0f} |")
    goals = [("full", "restic backup", 0.75), ("full", "s5cmd sync", 0.4), ("full", "aws s3 sync", 0.3),
             ("nochange", "s5cmd sync", 0.75 if args.files <= 5000 else 0.3), ("change1pct", "restic backup", 0.5),
             ("restore", "restic backup", 1.0)]
    print("\n| goal (issue 3) | measured | met |")
    print("|---|---|---|")
    for sc, other, limit in goals:
        if (agent, sc) in results and (other, sc) in results:
            ratio = statistics.median(results[(agent, sc)]) / statistics.median(results[(other, sc)])
            print(f"| {sc}: agent ≤ {limit} x {other} | {ratio:.2f} | {'yes' if ratio <= limit else 'NO'} |")


def rss_tree(s3: SeaweedFS, work: Path, n: int) -> int:
    src = work / "tiny"
    print(f"generating {n} tiny files ...", file=sys.stderr)
    for i in range(n):
        d = src / f"{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        (d / f"{i:07d}").write_bytes(b"x" * (i % 3))
    tool = Agent(s3, "bench", src, work)
    tool.reset(0)
    wall, peak = timed(tool.backup(), tool.env)
    wall2, peak2 = timed(tool.backup(), tool.env)
    wall3, peak3 = timed(tool.restore(work / "tiny-restore"), tool.env)
    print(f"\n| {n} tiny files | wall s | peak RSS MB | goal |")
    print("|---|---|---|---|")
    for what, w, p in (("first backup", wall, peak), ("no-change rerun", wall2, peak2), ("full restore", wall3, peak3)):
        print(f"| {what} | {w:.1f} | {p:.0f} | ≤ 200 MB: {'yes' if p <= 200 else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
