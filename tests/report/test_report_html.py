"""`backup-agent report --html`: the page a person looks at, rendered by headless Chromium.

A real SeaweedFS holds a files job with a few snapshots and a drill; the page must be one
self-contained file (nothing fetched from anywhere), and Chromium's screenshot of it must show
what a reader sees: not a blank page, and charts in colour.

Chromium is Debian's `chromium` (.ci/deps.sh installs it). Without it the suite skips with that
reason locally; in CI (CI=true) a missing browser is a failure, not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support.seaweedfs import SeaweedFS

AGENT = str(Path(sys.executable).parent / "backup-agent")


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is required in CI to render the HTML report (Debian package `chromium`, "
                    "installed by .ci/deps.sh)")
    pytest.skip("chromium is not installed (apt-get install chromium, or make deps): cannot render the report")


@pytest.fixture(scope="module")
def seaweed() -> Iterator[SeaweedFS]:
    with SeaweedFS() as s:
        yield s


def _agent(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, "-c", str(cfg), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def node(seaweed: SeaweedFS, tmp_path: Path) -> Path:
    bucket = f"r-{uuid.uuid4().hex[:12]}"
    seaweed.client().create_bucket(Bucket=bucket)
    src = tmp_path / "src"
    src.mkdir()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "node": "web-01", "environment": "prod", "state_dir": str(tmp_path / "state"),
        "storage": {"bucket": bucket, "endpoint_url": seaweed.endpoint_url, "access_key_id": seaweed.access_key,
                    "secret_access_key": seaweed.secret_key},
        "jobs": {"etc": {"type": "files", "paths": [str(src)], "schedule": "daily at 02:00"},
                 "db": {"type": "command", "command": ["sh", "-c", "echo '<b>bold</b>' >&2; exit 3"]}},
    }))
    for i in range(4):
        (src / f"grow{i}.bin").write_bytes(os.urandom(200_000 * (i + 1)))
        assert _agent(cfg, "run", "etc").returncode == 0
    assert _agent(cfg, "run", "db").returncode == 1  # a failure the page must show
    assert _agent(cfg, "drill", "etc").returncode == 0
    return cfg


def _colour_pixels(png: Path) -> tuple[int, int]:
    """(distinct colours, pixels clearly coloured: not grey/white/black)."""
    from PIL import Image  # matplotlib's own dependency

    img = Image.open(png).convert("RGB")
    pixels = list(img.get_flattened_data() if hasattr(img, "get_flattened_data") else img.getdata())
    coloured = sum(1 for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 60)
    return len(set(pixels)), coloured


def test_report_is_self_contained_and_renders_with_charts(node: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    page = tmp_path / "out" / "report.html"
    page.parent.mkdir()
    proc = _agent(node, "report", "--html", str(page))
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    assert "<b>bold</b>" not in text  # a command's output is text on the page, never markup
    for needle in ("web-01", "etc", "db", "Restore drill", "USD/month", "Last failures", "status 3"):
        assert needle in text, needle
    # nothing loaded from elsewhere: every src/href is inline data or an anchor
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", text)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), refs
    assert text.count("data:image/png;base64,") >= 2  # snapshot history and storage classes

    shot = tmp_path / "shot.png"
    run = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,2000",
                          f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.exists(), run.stderr[-2000:]
    colours, coloured = _colour_pixels(shot)
    assert colours > 50, "the screenshot is (nearly) blank"
    assert coloured > 2000, f"only {coloured} coloured pixels: the charts did not render"


def test_report_into_a_missing_directory_is_one_line_exit_2(node: Path, tmp_path: Path) -> None:
    proc = _agent(node, "report", "--html", str(tmp_path / "nope" / "r.html"))
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_report_without_matplotlib_says_how_to_get_it(node: Path, tmp_path: Path) -> None:
    # The agent on a node is installed without the `report` extra: one line, exit 2, no page.
    code = ("import sys; sys.modules['matplotlib'] = None; from backup_agent.cli import main; "
            f"sys.exit(main(['-c', {str(node)!r}, 'report', '--html', {str(tmp_path / 'r.html')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "backup-agent[report]" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.html").exists()
