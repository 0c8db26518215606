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
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCK_PATH = Path("/run/lock/backup-agent-machine-tests.lock")


def wheel_dir() -> Path:
    """The agent's wheel built from agent/ (`make wheel`): what a node installs."""
    wheels = Path(os.environ.get("BACKUP_AGENT_WHEELS") or REPO / "build" / "wheels")
    if not list(wheels.glob("backup_agent-*.whl")):
        pytest.fail(f"no backup_agent wheel in {wheels}: build it first (make wheel)")
    return wheels.resolve()


def wheelhouse() -> Path | None:
    """BACKUP_AGENT_WHEELHOUSE if set (empty: none), else ../shared/wheelhouse if present."""
    configured = os.environ.get("BACKUP_AGENT_WHEELHOUSE")
    if configured is not None:
        return Path(configured).resolve() if configured else None
    beside = REPO.parent / "shared" / "wheelhouse"
    return beside.resolve() if beside.is_dir() else None


def offline_install_attributes(wheels: Path) -> dict[str, object]:
    """node['backup_agent']['install'] for a node without PyPI: the agent's wheel (in `wheels`)
    plus its dependencies from the wheelhouse."""
    links = [str(wheels)]
    house = wheelhouse()
    if house is not None:
        links.append(str(house))
    return {"find_links": links, "no_index": house is not None}


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
