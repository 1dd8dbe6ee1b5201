"""report.html for a run and for a sweep: self-contained (every figure embedded, no broken local
reference), and rendered by a real headless Chromium with every figure drawn."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers.configs import SHORT_RUN, SMALL_WORLD, compose_train
from lightning_dpo.report import sweep_report, write_report
from lightning_dpo.train import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag in ("a", "link", "script") and (values.get("href") or values.get("src")):
            self.links.append(values.get("href") or values.get("src") or "")


def check_self_contained(report: Path) -> _References:
    """Every image is an embedded PNG; every other reference is a file that exists beside the report."""
    refs = _References()
    refs.feed(report.read_text(encoding="utf-8"))
    for src in refs.images:
        assert src.startswith("data:image/png;base64,"), src[:80]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_MAGIC
    for href in refs.links:
        assert not re.match(r"^[a-z]+://", href), f"an external reference: {href}"
        assert (report.parent / href).is_file(), f"a broken reference: {href}"
    return refs


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, small_world) -> Path:
    """Two finished runs (sigmoid, orpo) in one folder, as a multirun leaves them."""
    root = tmp_path_factory.mktemp("sweep")
    for kind in ("sigmoid", "orpo"):
        train(compose_train(SMALL_WORLD + SHORT_RUN + [f"loss.type={kind}", "report=true"], root / kind))
    return root


def test_a_finished_run_has_its_report(sweep):
    run = sweep / "orpo"
    report = run / "report.html"
    assert report.is_file()  # written by the run itself
    text = report.read_text(encoding="utf-8")
    refs = check_self_contained(report)
    pngs = sorted((run / "plots").rglob("*.png"))
    assert len(refs.images) == len(pngs) >= 6  # every figure of plots/ (and plots/workplace/) is in the page
    assert "completed" in text and "ckpt_path=last" in text and "lightning_dpo.analyze dpo=" in text
    assert "eval/toxicity" in text and "dynamics/TP-/share" in text
    assert "type: orpo" in text  # the settings section holds the run's own config


def test_a_sweep_report_links_each_job_report(sweep):
    report = sweep_report(sweep)
    refs = check_self_contained(report)
    assert sorted(refs.links) == ["orpo/report.html", "sigmoid/report.html"]
    text = report.read_text(encoding="utf-8")
    assert "2 of 2 jobs completed" in text and len(refs.images) >= 2
    assert write_report(sweep) == report  # the command tells a sweep from a run


def test_a_report_of_a_folder_that_is_not_a_run_says_so(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "missing")


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.parametrize("which", ["run", "sweep"])
def test_the_report_renders_in_a_headless_browser(which, sweep, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's `chromium`; `apt-get install chromium`)")
    report = sweep / "sigmoid" / "report.html" if which == "run" else sweep_report(sweep)
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--allow-file-access-from-files",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(flags + ["--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    figures = int(re.search(r'data-figures="(\d+)"', body.group(0)).group(1))
    broken = int(re.search(r'data-figures-broken="(\d+)"', body.group(0)).group(1))
    assert figures == len(check_self_contained(report).images) > 0 and broken == 0
    shot = tmp_path / "report.png"
    subprocess.run(flags + ["--window-size=1280,1600", f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == PNG_MAGIC  # a screenshot a person can look at (kept under pytest's tmp dir)
