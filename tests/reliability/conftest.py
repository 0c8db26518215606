"""Fixtures of the reliability suite: one SeaweedFS per worker (with credentials made up for this
session, so the secrets audit greps for values nothing else contains), and per test a fresh
bucket, a config whose endpoint is a fault proxy in front of SeaweedFS, and helpers to run the
real `backup-agent`, kill it at a held request, and verify snapshots."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.faultproxy import FaultProxy
from support.seaweedfs import SeaweedFS

from reliability.lab import Lab


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedFS]:
    access = "RELTEST" + secrets.token_hex(7).upper()
    secret = "rel-secret-" + secrets.token_urlsafe(30)
    with SeaweedFS(access_key=access, secret_key=secret) as s:
        yield s


@pytest.fixture
def proxy(seaweed: SeaweedFS) -> Iterator[FaultProxy]:
    with FaultProxy(seaweed.endpoint_url) as p:
        yield p


@pytest.fixture
def lab(seaweed: SeaweedFS, proxy: FaultProxy, tmp_path: Path) -> Iterator[Lab]:
    lab = Lab.create(seaweed, proxy, tmp_path)
    yield lab
    lab.cleanup()
