"""Shared by the container suites: the images, the cookbooks, the dependency mirror, S3.

These suites boot Debian containers with systemd as PID 1 (tests/support/containers.py) and
converge the cookbook inside them. They mount overlays and make cgroups on this machine and
serve the data bag's S3 endpoint (127.0.0.1:18333, which the converge and knife suites use too):
they run only as root where CI=true or BACKUP_AGENT_CONTAINERS=1 (`make test-containers`), one
suite at a time on the machine (machine_lock).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import containers
from support.containers import Bind, Container
from support.machine import REPO, machine_lock, wheelhouse
from support.seaweedfs import SeaweedFS

FIXTURES = REPO / "tests" / "fixtures"
# The Debian releases converged; BACKUP_AGENT_CONTAINER_SUITES=bookworm narrows a local run.
SUITES = tuple(os.environ.get("BACKUP_AGENT_CONTAINER_SUITES", "bookworm trixie").split())
# Where the containers see what the host lends them (read-only bind mounts).
MIRROR_INSIDE = "/srv/dependency-mirror"
CHEF_REPO_INSIDE = "/srv/chef-repo"


def _skip_reason() -> str | None:
    if os.environ.get("CI") != "true" and os.environ.get("BACKUP_AGENT_CONTAINERS") != "1":
        return ("boots systemd containers on this machine (overlays, cgroups): set CI=true or "
                "BACKUP_AGENT_CONTAINERS=1 (make test-containers) to run it")
    if os.geteuid() != 0:
        return "systemd-nspawn, overlay mounts and cgroups need root"
    missing = [tool for tool in ("debootstrap", "systemd-nspawn", "nsenter") if not shutil.which(tool)]
    if missing:
        return f"missing {', '.join(missing)}: run `make deps` (Debian packages debootstrap systemd-container)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    if reason:
        here = Path(__file__).parent
        for item in items:
            if here in Path(item.fspath).parents:
                item.add_marker(pytest.mark.skip(reason=reason))


def plain_item(name: str = "staging") -> dict[str, Any]:
    """The TEST-ONLY plain source of a data bag item."""
    item: dict[str, Any] = json.loads((FIXTURES / "data_bags" / "backup_agent" / f"{name}.json").read_text())
    return item


@pytest.fixture(scope="module")
def machine() -> Iterator[None]:
    """The machine for one module (the converge and knife suites take the same lock, in the same
    pytest run); images built (both releases at once) and leftovers of a killed earlier run removed."""
    with machine_lock():
        containers.clean_leftovers()
        containers.build(SUITES)
        yield
        containers.clean_leftovers()


@pytest.fixture(scope="module")
def s3(machine: None) -> Iterator[SeaweedFS]:
    """A real S3 server where the staging data bag item points; containers share the host's
    network, so they reach it on loopback too."""
    item = plain_item()
    port = int(item["endpoint_url"].rsplit(":", 1)[1])
    with SeaweedFS(port=port, access_key=item["access_key_id"], secret_key=item["secret_access_key"]) as server:
        server.client().create_bucket(Bucket=item["bucket"])
        yield server


@pytest.fixture(scope="session")
def cookbooks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this checkout's cookbooks, which the containers converge: the agent they install
    is the wheel the cookbook carries (files/agent), and a test may add a newer release to it."""
    copy = tmp_path_factory.mktemp("chef-repo") / "cookbooks"
    shutil.copytree(REPO / "cookbooks", copy)
    return copy


def agent_wheels_in(names: Iterable[str]) -> list[str]:
    """The backup-agent distributions among these file names (pip takes - _ . alike)."""
    return sorted(name for name in names if re.match(r"backup[-_.]agent-", name, re.IGNORECASE))


def dependency_mirror(suite: str) -> dict[str, Any]:
    """node['backup_agent']['install'] for a node whose pip reaches only a dependency mirror:
    the wheelhouse (CPython 3.11 wheels, no backup-agent: the agent comes from the cookbook
    alone), and on releases without a Python 3.11 the Python the tests run on, lent read-only
    (see `lent_python`)."""
    attrs: dict[str, Any] = {"find_links": [MIRROR_INSIDE], "no_index": True}
    python = lent_python(suite)
    if python is not None:
        attrs["python"] = str(python / "bin" / "python3.11")
    return attrs


def lent_python(suite: str) -> Path | None:
    """The CPython 3.11 the tests run on, for Debian 13's venv, or None where Debian has one.

    Debian 13's Python is 3.13, and the wheelhouse cannot serve it: jsonschema 4.26 needs
    rpds-py >= 0.25 and no cp313 build of it exists here (Debian 13 ships 0.21; its image packs
    Debian's cp313 PyYAML, zstandard, rpds-py and charset-normalizer as wheels in
    support.containers.IMAGE_WHEELS, for a mirror that adds rpds-py). Until the mirror has
    cp313 wheels, the agent's venv on Debian 13 uses this interpreter: the service, its unit and
    systemd are Debian 13's all the same."""
    if suite == "bookworm":
        return None
    base = Path(sys.base_prefix)
    if sys.version_info[:2] != (3, 11) or base == Path("/usr"):
        pytest.skip(f"{suite}: no CPython 3.11 outside /usr to lend for the agent's venv (the wheelhouse has "
                    "cp311 wheels only; Debian 13's Python is 3.13)")
    return base


def build_agent_wheel(version: str, into: Path) -> Path:
    """A wheel of agent/ that calls itself `version`: a new release of the agent, to a node."""
    work = into.parent / f"agent-{version}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(REPO / "agent", work, ignore=shutil.ignore_patterns("tests", "*.egg-info", "__pycache__"))
    project = work / "pyproject.toml"
    text = project.read_text()
    assert '\nversion = "' in text, "agent/pyproject.toml has no static version line"
    head, rest = text.split('\nversion = "', 1)
    project.write_text(head + f'\nversion = "{version}"' + rest.split('"', 1)[1])
    init = work / "src" / "backup_agent" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"', init.read_text()))
    house = wheelhouse()
    env = {**os.environ, **({"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(house)} if house else {})}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(into), str(work)],
                   env=env, check=True, capture_output=True)
    found = list(into.glob(f"backup_agent-{version}-*.whl"))
    assert found, f"no wheel for {version} in {into}"
    return found[0]


def lent_binds(suite: str, cookbooks: Path) -> list[Bind]:
    """What every test container gets from the host, read-only: the chef repository (cookbooks,
    data bags), the dependency mirror (and a Python, see `lent_python`)."""
    house = wheelhouse()
    assert house is not None, "no wheelhouse (../shared/wheelhouse or BACKUP_AGENT_WHEELHOUSE): nothing to mirror"
    # The mirror must not hold the agent, or a converge would not show the cookbook's wheel is enough.
    offered = agent_wheels_in(path.name for path in house.iterdir())
    assert not offered, f"the dependency mirror {house} holds {offered}"
    binds = [Bind(cookbooks, f"{CHEF_REPO_INSIDE}/cookbooks"),
             Bind(REPO / "tests" / "fixtures" / "encrypted_data_bags", f"{CHEF_REPO_INSIDE}/data_bags"),
             Bind(house, MIRROR_INSIDE)]
    python = lent_python(suite)
    if python is not None:
        # At its own path: its libpython is found through an absolute rpath.
        binds.append(Bind(python, str(python)))
    return binds


@contextlib.contextmanager
def booting(suite: str, name: str, cookbooks: Path) -> Iterator[Container]:
    """A fresh container of `suite` (mounted, not booted yet: write its files, then `boot()`);
    powered off and removed afterwards, whatever happened."""
    with Container(suite, name, binds=lent_binds(suite, cookbooks)) as container:
        yield container
