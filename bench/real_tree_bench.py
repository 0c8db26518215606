"""Two builds of the agent, alternated, on a tree of real files instead of random bytes.

    .venv/bin/python bench/real_tree_bench.py --agent old=/path/a/.venv/bin/backup-agent \\
        --agent new=.venv/bin/backup-agent [--rounds 3] [--source /usr/share/doc --source /usr/lib/python3.11]

Copies the sources (symlinks kept) into one tree, starts one SeaweedFS, and for each round runs
every build in turn, in alternating order (old-new, then new-old, so neither always goes first):
full backup into a fresh prefix and state_dir, no-change rerun, full restore. Prints wall-second
medians, the spread (min-max) of the rounds, and each build's ratio to the first one. Real text
(docs, .py, .gz) compresses and deduplicates unlike files_bench's random bytes, and has symlinks.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# files_bench beside this file, and tests/support (SeaweedFS) as files_bench itself finds it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from files_bench import Agent, compile_agent
from support.seaweedfs import SeaweedFS

SCENARIOS = ("full", "nochange", "restore")


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds user+system, peak RSS MB) of a command, via GNU time. CPU time
    is kept because on a shared, loaded machine it varies much less than wall time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        t0 = time.monotonic()
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", tf.name, *cmd], env={**os.environ, **env},
                              capture_output=True, text=True)
        wall = time.monotonic() - t0
        if proc.returncode not in (0, 3):
            raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-800:]}")
        out = tf.read()
    cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", out))
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out)
    return wall, cpu, (int(m.group(1)) / 1024 if m else float("nan"))


class Build(Agent):
    """The agent of one checkout: its own venv's backup-agent executable."""

    def __init__(self, exe: Path, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.exe = str(exe)

    def backup(self) -> list[str]:
        return [self.exe, "-c", str(self.cfg), "run", "data"]

    def restore(self, target: Path) -> list[str]:
        return [self.exe, "-c", str(self.cfg), "restore", "data", "--target", str(target)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agent", action="append", required=True, help="LABEL=path to a backup-agent executable")
    ap.add_argument("--source", action="append", help="directory copied into the tree (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    builds = [(label, Path(path).resolve()) for label, path in (a.split("=", 1) for a in args.agent)]
    sources = [Path(s) for s in (args.source or ["/usr/share/doc", "/usr/lib/python3.11", "/usr/lib/python3"])]
    for _, exe in builds:
        compile_agent(exe.parent / "python")
    work = Path(tempfile.mkdtemp(prefix="backup-agent-realbench-"))
    try:
        src = work / "data"
        for s in sources:
            shutil.copytree(s, src / s.as_posix().strip("/").replace("/", "_"), symlinks=True)
        files = sum(len(f) for _, _, f in os.walk(src))
        size = sum(p.lstat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink())
        print(f"tree: {files} entries (files and symlinks), {size / 1e6:.0f} MB from "
              f"{', '.join(map(str, sources))}", file=sys.stderr)
        with SeaweedFS(volume_size_limit_mb=4096) as s3:
            client = s3.client()
            client.create_bucket(Bucket="bench")
            client.put_object(Bucket="bench", Key="warm-up", Body=b"x")
            results: dict[tuple[str, str], list[float]] = {}
            cpus: dict[tuple[str, str], list[float]] = {}
            rss: dict[str, float] = {}
            for rnd in range(args.rounds):
                order = builds if rnd % 2 == 0 else builds[::-1]
                for label, exe in order:
                    tool = Build(exe, s3, "bench", src, work)
                    tool.reset(rnd * len(builds) + [b[0] for b in builds].index(label))
                    subprocess.run(["sync"], check=False)
                    for scenario in SCENARIOS:
                        if scenario == "restore":
                            target = work / f"restore-{label}-{rnd}"
                            wall, cpu, peak = timed(tool.restore(target), tool.env)
                            # Entries keep their absolute path under the target, or not: compare either.
                            got = target / src.relative_to("/")
                            got = got if got.is_dir() else target
                            diff = subprocess.run(["diff", "-r", "--no-dereference", "-q", str(src), str(got)],
                                                  capture_output=True, text=True)
                            if diff.returncode != 0:
                                print(f"  {label}: restored tree differs: {diff.stdout[:400]}", file=sys.stderr)
                            shutil.rmtree(target, ignore_errors=True)
                        else:
                            wall, cpu, peak = timed(tool.backup(), tool.env)
                        results.setdefault((label, scenario), []).append(wall)
                        cpus.setdefault((label, scenario), []).append(cpu)
                        rss[label] = max(rss.get(label, 0.0), peak)
                        print(f"round {rnd + 1} {label:6} {scenario:9} {wall:7.2f}s  {cpu:6.2f} CPU-s  {peak:6.0f} MB",
                              file=sys.stderr)
        base = builds[0][0]
        for what, table in (("wall seconds", results), ("agent CPU seconds (user + system)", cpus)):
            print(f"\n{files} files ({size / 1e6:.0f} MB), median of {args.rounds} alternating rounds; "
                  f"{what} [min-max] (ratio = build / {base})\n")
            print("| build | full | no-change | restore | peak RSS MB |")
            print("|---|---|---|---|---|")
            for label, _ in builds:
                cells = []
                for sc in SCENARIOS:
                    v = table[(label, sc)]
                    cell = f"{statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"
                    if label != base:
                        cell += f" ({statistics.median(v) / statistics.median(table[(base, sc)]):.2f})"
                    cells.append(cell)
                print(f"| {label} | " + " | ".join(cells) + f" | {rss[label]:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
