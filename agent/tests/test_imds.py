"""IMDSv2 discovery against a metadata server on loopback: tokens, refusal of IMDSv1, outages."""

from __future__ import annotations

import socket
import time

import pytest
from fake_aws import ImdsServer, closed_port_url

from backup_agent.imds import Imds, ImdsUnavailable, ImdsV1Only


def server(**kw: object) -> ImdsServer:
    return ImdsServer("i-0123456789abcdef0", "eu-central-1", "eu-central-1b", **kw)  # type: ignore[arg-type]


def test_identity_with_a_session_token() -> None:
    imds = server()
    with imds.serve() as url:
        ident = Imds(url).identity()
    assert (ident.instance_id, ident.region, ident.availability_zone) == (
        "i-0123456789abcdef0", "eu-central-1", "eu-central-1b")
    put = [r for r in imds.requests if r[0] == "PUT"]
    assert len(put) == 1 and int(put[0][2]["X-aws-ec2-metadata-token-ttl-seconds"]) > 0
    gets = [r for r in imds.requests if r[0] == "GET"]
    assert gets and all(r[2].get("X-aws-ec2-metadata-token") for r in gets)


def test_falls_back_to_meta_data_paths_without_identity_document() -> None:
    imds = server(document=False)
    with imds.serve() as url:
        ident = Imds(url).identity()
    assert ident.region == "eu-central-1" and ident.availability_zone == "eu-central-1b"
    assert {"/latest/meta-data/instance-id", "/latest/meta-data/placement/region"} <= {r[1] for r in imds.requests}


def test_token_less_gets_are_refused_by_the_server() -> None:
    import requests

    with server().serve() as url:
        assert requests.get(url + "/latest/meta-data/instance-id", timeout=2).status_code == 401


def test_expired_token_is_renewed_once() -> None:
    imds = server()
    with imds.serve() as url:
        client = Imds(url)
        assert client.get("meta-data/instance-id") == "i-0123456789abcdef0"
        imds.expire_tokens()
        assert client.get("meta-data/placement/region") == "eu-central-1"
    assert sum(1 for r in imds.requests if r[0] == "PUT") == 2


def test_imdsv1_only_is_refused() -> None:
    imds = server(mode="v1")
    with imds.serve() as url, pytest.raises(ImdsV1Only, match="IMDSv2"):
        Imds(url).identity()
    assert not [r for r in imds.requests if r[0] == "GET"], "never falls back to token-less GETs"


def test_server_errors_are_retried() -> None:
    imds = server(fail_next=2)
    with imds.serve() as url:
        assert Imds(url, backoff=0.01).identity().instance_id == "i-0123456789abcdef0"


def test_nothing_listening_fails_fast() -> None:
    t0 = time.monotonic()
    with pytest.raises(ImdsUnavailable, match="no instance metadata service answers"):
        Imds(closed_port_url(), backoff=0.01).identity()
    assert time.monotonic() - t0 < 2


def test_a_silent_endpoint_times_out() -> None:
    # Accepts connections (the kernel's backlog) but never answers, like a filtered link-local address.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(ImdsUnavailable, match="timed out"):
            Imds(url, timeout=(0.2, 0.2), attempts=2, backoff=0.01).identity()
        assert time.monotonic() - t0 < 3


def test_without_an_endpoint_of_its_own_it_asks_where_the_aws_sdks_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_EC2_METADATA_SERVICE_ENDPOINT (the SDKs' variable, which `aws.imds_endpoint` is also
    exported to) moves the EBS job's lookup of the instance along with the credentials."""
    imds = server()
    with imds.serve() as url:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", url + "/")
        assert Imds().identity().instance_id == "i-0123456789abcdef0"
    assert imds.requests


def test_the_configs_endpoint_is_exported_for_the_sdks_and_wins() -> None:
    from backup_agent import config

    cfg = config.from_dict({"storage": {"bucket": "acme-backups"}, "aws": {"imds_endpoint": "http://[fd00:ec2::254]/"}})
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://169.254.169.254"}
    cfg.share_imds_endpoint(env)
    assert env == {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://[fd00:ec2::254]"}
    plain = config.from_dict({"storage": {"bucket": "acme-backups"}})
    untouched: dict[str, str] = {}
    plain.share_imds_endpoint(untouched)
    assert untouched == {}
