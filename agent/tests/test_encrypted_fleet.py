"""Encryption across the fleet's verbs on a real SeaweedFS: the maintenance node prunes every
node's sealed snapshots with the item's key, refuses (and deletes nothing) with another, and a
node restores exactly what it sealed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from support.treeutil import capture

AGENT = str(Path(sys.executable).parent / "backup-agent")
KEY = "fleet key: forty characters of secret!!"
OTHER = "another key, also forty characters long!"


def maintenance(agent: Any, tmp_path: Path, key: str) -> Path:
    data = {k: v for k, v in agent.data.items() if k != "jobs"}
    data["storage"] = {**data["storage"], "encryption_key": key}
    data["state_dir"] = str(tmp_path / "maint-state")
    data["maintenance"] = {"retention": {"keep_last": 1}}
    path = tmp_path / f"maint-{len(key)}-{key[:3]}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def prune_all(path: Path) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run([AGENT, "-c", str(path), "prune", "--all-nodes", "--json"], capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}, proc.stderr


def test_maintenance_prunes_sealed_snapshots_only_with_the_key(agent: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    agent.write(storage={**agent.data["storage"], "encryption_key": KEY})
    agent.job("home", type="files", paths=[str(src)])
    for i in range(3):
        (src / "notes.txt").write_text(f"version {i}\n" * 100)
        (src / f"big-{i}.bin").write_bytes(os.urandom(9 << 20))  # chunked; replaced by the next one
        if i:
            (src / f"big-{i - 1}.bin").unlink()
        proc = agent.run("run", "home")
        assert proc.returncode == 0, proc.stderr
    before = set(agent.object_keys())

    code, out, err = prune_all(maintenance(agent, tmp_path, OTHER))
    assert code == 1 and out["roots"][0]["result"] == "failed", err
    assert "encryption_key" in out["roots"][0]["error"] and KEY not in err + json.dumps(out)
    assert set(agent.object_keys()) == before  # nothing deleted with a key that opens nothing

    code, out, err = prune_all(maintenance(agent, tmp_path, KEY))
    assert code == 0, err
    [root] = out["roots"]
    assert root["result"] == "success" and root["forgot"] == 2
    # The replaced big files' packs went whole (their chunks have packs of their own).
    assert root["bytes_freed"] >= 2 * (9 << 20)
    target = tmp_path / "restored"
    proc = agent.run("restore", "home", "--target", str(target))
    assert proc.returncode == 0, proc.stderr
    assert capture(target / str(src).lstrip("/")) == capture(src)
