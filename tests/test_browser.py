"""The report in a real browser: headless Chromium loads it offline, runs its scripts without a
console error, shows every section, and renders a screenshot that is not blank.

Chromium is Debian's `chromium`, installed by `make browser` (CI runs it before `make test`).
When it is missing the tests skip, saying why, unless CI or DATACURE_REQUIRE_BROWSER=1 is set:
then they fail, so a CI run cannot pass without having run them.
A planted error and a planted network asset check that the detection itself works.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_report import seed_audited_store

from datacure.report import write_report

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]
SECTIONS = (
    "overview",
    "auditors",
    "auditor-details",
    "drift",
    "spurious",
    "slices",
    "embedding-map",
    "edits",
    "reviews",
    "export",
)


def _find() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_required() -> bool:
    """In CI (or when asked) a missing browser fails the browser tests instead of skipping them:
    a run that silently tested nothing must not pass."""
    return bool(os.environ.get("CI")) or os.environ.get("DATACURE_REQUIRE_BROWSER") == "1"


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's headless Chromium, installed by `make browser` (never by a test)."""
    path = _find()
    if path is None:
        msg = "headless Chromium is not installed: run `make browser` (Debian chromium)"
        if browser_required():
            pytest.fail(msg + " [CI or DATACURE_REQUIRE_BROWSER=1 is set, so this is a failure]")
        pytest.skip(msg)
    return path


def _run(chromium: str, page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return subprocess.run(
        [
            chromium,
            *FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=3000",
            *extra,
            page.as_uri(),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _console(stderr: str) -> list[str]:
    """Console messages Chromium logged (errors, CSP violations, logs): none are expected."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


def _check(chromium: str, page: Path, tmp: Path) -> tuple[str, list[str]]:
    res = _run(chromium, page, tmp, "--dump-dom")
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    assert 'data-ready="1"' in dom, "the report's script did not finish"
    m = re.search(r'<pre id="dc-errors" data-count="(\d+)">([^<]*)', dom)
    assert m, "error collector missing from the DOM"
    errors = ([m.group(2)] if m.group(1) != "0" else []) + _console(res.stderr)
    return dom, errors


@pytest.fixture(scope="module")
def report(tmp_path_factory, chromium) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    t = seed_audited_store(tmp / "b.duckdb", n=1500)
    path = write_report(t["store"], tmp / "report.html")
    t["store"].close()
    return path


def test_report_loads_without_errors(chromium, report, tmp_path):
    dom, errors = _check(chromium, report, tmp_path)
    assert errors == []
    for sid in SECTIONS:
        assert f'data-section="{sid}"' in dom, sid
    assert f'data-sections="{len(SECTIONS)}"' in dom  # counted by the page's own script


def test_detection_catches_planted_errors(chromium, report, tmp_path):
    """A thrown error and a network image are both caught (so the clean result means something)."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        report.read_text().replace(
            '<pre id="dc-errors"',
            '<script>throw new Error("planted-boom")</script>'
            '<img src="https://example.invalid/x.png"><pre id="dc-errors"',
        )
    )
    _, errors = _check(chromium, bad, tmp_path)
    joined = "\n".join(errors)
    assert "planted-boom" in joined
    assert "example.invalid" in joined  # blocked by the report's Content-Security-Policy


def test_screenshot(chromium, report, tmp_path):
    from PIL import Image

    out_dir = Path(os.environ.get("DATACURE_SCREENSHOT_DIR", tmp_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    shot = out_dir / "report.png"
    res = _run(
        chromium,
        report,
        tmp_path,
        "--window-size=1280,2400",
        "--hide-scrollbars",
        f"--screenshot={shot}",
    )
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert img.shape[:2] == (2400, 1280)
    # not blank: the dark header, the plots' orange flags and grey bars are all drawn
    assert img.std() > 20
    assert img[:60].mean() < 100, "header band missing"
    orange = (np.abs(img - [213, 94, 0]).sum(-1) < 40).sum()
    assert orange > 200, "no flagged bars or dots drawn"
