"""What the suites that converge this machine share: the offline install sources and a lock.

The converge test and the knife end-to-end test both install the agent into /opt/backup-agent,
render /etc/backup-agent/config.yaml and serve the data bag's S3 endpoint (127.0.0.1:18333):
run at the same time (pytest -n 2) they would undo each other. Each holds `machine_lock()`
while it changes the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCK_PATH = Path("/run/lock/backup-agent-machine-tests.lock")


COOKBOOK_AGENT = REPO / "cookbooks" / "backup_agent" / "files" / "agent"
LOCK = COOKBOOK_AGENT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.MULTILINE)


def wheel_dir() -> Path:
    """The agent's wheel freshly built from agent/ (`make wheel`): for suites that make their own
    agent releases from it (nodes get the agent from the cookbook: cookbook_wheel())."""
    wheels = Path(os.environ.get("BACKUP_AGENT_WHEELS") or REPO / "build" / "wheels")
    assert list(wheels.glob("backup_agent-*.whl")), f"no backup_agent wheel in {wheels}: build it first (make wheel)"
    return wheels.resolve()


def cookbook_wheel() -> Path:
    """The agent's wheel the cookbook carries (the only place a node gets the agent from)."""
    wheels = sorted(COOKBOOK_AGENT.glob("backup_agent-*.whl"))
    assert len(wheels) == 1, f"expected one agent wheel in {COOKBOOK_AGENT}, found {wheels}"
    return wheels[0]


def locked_pins() -> dict[str, str]:
    """name -> version of every dependency in the cookbook's requirements.lock and its extras'
    locks (requirements-chunking.lock: numpy), which nodes install by default."""
    return {name.lower(): version for lock in [LOCK, *sorted(COOKBOOK_AGENT.glob("requirements-*.lock"))]
            for name, version in PIN.findall(lock.read_text())}


def wheelhouse() -> Path | None:
    """BACKUP_AGENT_WHEELHOUSE if set (empty: none), else ../shared/wheelhouse if present."""
    configured = os.environ.get("BACKUP_AGENT_WHEELHOUSE")
    if configured is not None:
        return Path(configured).resolve() if configured else None
    beside = REPO.parent / "shared" / "wheelhouse"
    return beside.resolve() if beside.is_dir() else None


def dependency_mirror(dest: Path) -> Path | None:
    """A wheel mirror of the agent's dependencies only, as an operator runs one: the wheelhouse's
    files of exactly the lock's versions, linked into `dest` (no backup-agent: nodes get that
    from the cookbook). None without a wheelhouse (pip's index then)."""
    house = wheelhouse()
    if house is None:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    for name, version in locked_pins().items():
        stem = re.compile(rf"^{re.escape(re.sub(r'[-_.]+', '_', name))}-{re.escape(version)}-.*\.whl$", re.IGNORECASE)
        found = [path for path in house.iterdir() if stem.match(path.name)]
        assert found, f"the wheelhouse {house} has no wheel of {name}=={version} (the cookbook's lock)"
        for path in found:
            link = dest / path.name
            if not link.exists():
                link.symlink_to(path)
    return dest


def offline_install_attributes(mirror: Path | None) -> dict[str, object]:
    """node['backup_agent']['install'] for a node whose pip reaches only a dependency mirror."""
    if mirror is None:
        return {"find_links": [], "no_index": False}  # pip's own index
    return {"find_links": [str(mirror)], "no_index": True}


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Hold the machine for one suite that converges it; others wait (flock, released on exit)."""
    path = LOCK_PATH if LOCK_PATH.parent.is_dir() else Path("/tmp") / LOCK_PATH.name
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
