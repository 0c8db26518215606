"""storage.endpoints: a run uses the first gateway of the list that answers, with real HTTP servers
(a live one, a refused port, one that hangs, one whose backend is gone) and the real SeaweedFS gateway."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.seaweedfs import SeaweedFS

from backup_agent import config
from backup_agent.errors import ConfigError
from backup_agent.storage import endpoints


def _server(status: int) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def alive() -> Iterator[str]:
    server, url = _server(403)  # what an S3 gateway answers an anonymous GET /
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture
def broken_backend() -> Iterator[str]:
    server, url = _server(503)  # a gateway whose filer is unreachable
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture
def dead() -> str:
    """A port nothing listens on: connections are refused (a powered-off node's gateway)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def hanging() -> Iterator[str]:
    """Accepts connections and never answers (a node that is half gone)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_the_first_live_gateway_is_used_in_list_order(alive: str, dead: str) -> None:
    assert endpoints.choose([alive, dead]) == alive
    assert endpoints.choose([dead, alive]) == alive


def test_a_dead_gateway_is_skipped_and_named_in_a_warning(
    alive: str, dead: str, broken_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        assert endpoints.choose([dead, broken_backend, alive]) == alive
    [line] = [r.getMessage() for r in caplog.records]
    assert dead in line and f"{broken_backend}: HTTP 503" in line


def test_a_hanging_gateway_costs_the_probe_timeout_not_the_run(hanging: str, alive: str) -> None:
    started = time.monotonic()
    assert endpoints.choose([hanging, alive], lambda url: endpoints.probe(url, timeout=0.5)) == alive
    assert time.monotonic() - started < 3


def test_none_answering_is_one_line_naming_every_endpoint(dead: str, broken_backend: str) -> None:
    with pytest.raises(endpoints.NoEndpoint) as err:
        endpoints.choose([dead, broken_backend])
    text = str(err.value)
    assert text.startswith("storage.endpoints: none of the 2 endpoints answers")
    assert dead in text and f"{broken_backend}: HTTP 503" in text and "\n" not in text
    assert err.value.exit_code == 1


def test_the_real_seaweedfs_gateway_counts_as_alive(seaweed: SeaweedFS, dead: str) -> None:
    assert endpoints.choose([dead, seaweed.endpoint_url]) == seaweed.endpoint_url


def test_resolve_sets_endpoint_url_from_the_list_only(alive: str, dead: str) -> None:
    cfg = config.from_dict({"storage": {"bucket": "acme-backups", "endpoints": [dead, alive]}}, "c.yaml")
    assert cfg.storage.endpoints == (dead, alive) and cfg.storage.endpoint_url is None
    assert endpoints.resolve(cfg.storage).endpoint_url == alive
    single = config.from_dict({"storage": {"bucket": "acme-backups", "endpoint_url": alive}}, "c.yaml")
    assert endpoints.resolve(single.storage, check=lambda url: pytest.fail("probed")) is single.storage


@pytest.mark.parametrize(("storage", "message"), [
    ({"endpoints": ["http://a:9000"], "endpoint_url": "http://b:9000"},
     "storage.endpoints: give endpoint_url or endpoints, not both"),
    ({"endpoints": []}, "storage.endpoints"),
    ({"endpoints": ["http://a:9000", "http://a:9000"]}, "storage.endpoints"),
    ({"endpoints": ["http://a:9000", "http://:9000"]}, "storage.endpoints[1]: must be an http(s) URL"),
    ({"endpoints": ["ftp://a"]}, "storage.endpoints"),
])
def test_bad_endpoint_lists_are_one_clear_line(storage: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.from_dict({"storage": {"bucket": "acme-backups", **storage}}, "config.yaml")
    text = str(err.value)
    assert text.startswith("config.yaml: ") and message in text and "\n" not in text


def test_a_run_and_restore_go_through_the_gateway_that_answers(agent: Any, dead: str, tmp_path: Path) -> None:
    """The CLI with a dead gateway listed first: the backup lands and restores exactly, and the
    log names the skipped one; with only dead gateways the run fails with the one line."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n")
    (src / "b.bin").write_bytes(bytes(range(256)) * 100)
    live = agent.data["storage"].pop("endpoint_url")
    agent.data["storage"]["endpoints"] = [dead, live]
    agent.job("data", type="files", paths=[str(src)])
    proc = agent.run("run", "data", "--json")
    assert proc.returncode == 0, proc.stderr
    assert f"skipped: {dead}" in proc.stderr
    target = tmp_path / "restored"
    proc = agent.run("restore", "data", "--target", str(target))
    assert proc.returncode == 0, proc.stderr
    restored = target / str(src).lstrip("/")
    assert (restored / "a.txt").read_text() == "alpha\n"
    assert (restored / "b.bin").read_bytes() == bytes(range(256)) * 100
    assert agent.object_keys("test-node/data/snapshots/")

    agent.data["storage"]["endpoints"] = [dead]
    agent.write()
    proc = agent.run("run", "data")
    assert proc.returncode == 1
    assert f"storage.endpoints: none of the 1 endpoints answers ({dead}: " in proc.stderr
    assert "Traceback" not in proc.stderr
