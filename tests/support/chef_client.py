"""Running the bundle's chef-client on this machine, for the suites that converge it.

What a run's output says (how many resources it updated, which), the environment of an ordinary
root shell, and a watch over every process's command line while a run goes on (a secret must
never be an argument some other user can read in /proc).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.machine import REPO

FIXTURES = REPO / "tests" / "fixtures"
FINISHED = re.compile(r"(?:Chef Infra Client finished|Infra Phase complete), (\d+)/(\d+) resources updated")
FAILED = re.compile(r"Infra Phase failed\. (\d+) resources updated")
# Ohai's inventory of installed languages (gcc, erl, ghc, python, java... --version) is about a
# third of every run here and nothing in the cookbook reads it.
OHAI_LANGUAGES = ["C", "Elixir", "Erlang", "Go", "Groovy", "Haskell", "Java", "Lua", "Mono", "Nodejs", "Perl",
                  "PHP", "Powershell", "Python", "Rust", "Scala"]
CONFIG = Path("/etc/backup-agent/config.yaml")
UNIT = Path("/etc/systemd/system/backup-agent.service")


def plain_item(name: str = "staging") -> dict[str, Any]:
    """The TEST-ONLY plain source of a data bag item."""
    item: dict[str, Any] = json.loads((FIXTURES / "data_bags" / "backup_agent" / f"{name}.json").read_text())
    return item


def item_keys(name: str = "staging") -> dict[str, Any]:
    """The item's keys as a secret store holds them (no data bag `id`, no comment)."""
    return {k: v for k, v in plain_item(name).items() if k not in ("id", "comment")}


def secret_values(name: str = "staging") -> list[str]:
    """Every value of the item that must stay out of node attributes, output and command lines."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            found.append(value)

    walk({k: v for k, v in item_keys(name).items() if k not in ("region", "endpoint_url", "bucket")})
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of an ordinary root shell: no pip or AWS settings leak in from ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "AWS_"))}
    env["CHEF_LICENSE"] = "accept-no-persist"
    env["BUNDLE_GEMFILE"] = str(REPO / "Gemfile")
    env.update(extra)
    return env


def client_rb_lines(settings: dict[str, Any]) -> list[str]:
    """client.rb lines for `settings` (strings, booleans, lists), plus the Ohai plugins left off."""
    lines = [f"{key} {json.dumps(value if isinstance(value, (bool, list)) else str(value))}"
             for key, value in settings.items()]
    lines.append("ohai.disabled_plugins = [" + ", ".join(f":{name}" for name in OHAI_LANGUAGES) + "]")
    return lines


@dataclass
class Converge:
    returncode: int
    output: str
    seconds: float
    # Command lines of other processes seen during the run that held a secret value.
    leaked_args: list[str] = field(default_factory=list)

    @property
    def updated(self) -> int:
        found = FINISHED.findall(self.output) or FAILED.findall(self.output)
        assert found, f"no 'resources updated' line:\n{self.output[-4000:]}"
        last = found[-1]
        return int(last[0] if isinstance(last, tuple) else last)

    def updated_resources(self) -> list[str]:
        """The `* resource[name] action x` lines of resources that changed something."""
        lines = self.output.splitlines()
        out = []
        for i, line in enumerate(lines):
            head = line.strip()
            if not head.startswith("* ") or " action " not in head:
                continue
            body = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if "(up to date)" in head or "(skipped" in head or head.endswith("action nothing"):
                continue
            if body.startswith("- "):
                out.append(head[2:])
        return out


class ArgvWatch:
    """Reads every process's /proc/PID/cmdline over and over while a run goes on."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = [s.encode() for s in secrets]
        self.hits: set[str] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit() or int(entry.name) == me:
                    continue
                try:
                    cmd = Path(entry.path, "cmdline").read_bytes()
                except OSError:
                    continue
                if any(secret in cmd for secret in self.secrets):
                    self.hits.add(cmd.replace(b"\0", b" ")[:200].decode(errors="replace"))
            self.samples += 1
            time.sleep(0.05)

    def __enter__(self) -> ArgvWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def chef_client(args: list[str], log: Path, secrets: list[str], env: dict[str, str] | None = None,
                cwd: Path = REPO) -> Converge:
    """`bundle exec chef-client ARGS`, its output kept in `log`, other processes' argv watched."""
    cmd = ["bundle", "exec", "chef-client", "--no-color", *args]
    started = time.monotonic()
    with ArgvWatch(secrets) as watch:
        proc = subprocess.run(cmd, cwd=cwd, env=env or clean_env(), capture_output=True, text=True,
                              timeout=1200, check=False)
    seconds = time.monotonic() - started
    output = proc.stdout + proc.stderr
    log.write_text(f"$ {' '.join(cmd)}\n# exit {proc.returncode} in {seconds:.1f}s\n{output}")
    assert watch.samples > 3, "the command-line watch did not run during the converge"
    return Converge(proc.returncode, output, seconds, sorted(watch.hits))
