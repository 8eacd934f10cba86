"""The HTML privacy report: self-contained, escaped, and rendered by a real Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fedcrm.privacy.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _summary() -> dict:
    return {
        "model": "<script>alert('model')</script>",
        "final": {"auc": 0.81234},
        "privacy": {
            "mode": "dp_he",
            "stopped_reason": None,
            "per_branch": {
                "b1": {
                    "epsilon": 1.0,
                    "delta": 1e-5,
                    "ceiling": 8.0,
                    "rounds_trained": 4,
                    "refused_rounds": 0,
                },
                "b2": {
                    "epsilon": 1.0,
                    "delta": 1e-5,
                    "ceiling": 2.0,
                    "rounds_trained": 3,
                    "refused_rounds": [3, 4],
                },
            },
        },
        "per_branch": {"b1": {"excluded_customers": 17}, "b2": {"excluded_customers": 0}},
    }


def render(html_path: Path, profile: Path, width: int = 1280) -> tuple[str, list[str]]:
    """The DOM after Chromium ran the page (``width`` px wide), and its console messages."""
    if CHROMIUM is None:
        pytest.fail(
            "chromium is not installed: the report is tested in a real browser "
            "(.ci/run installs it; or `apt-get install chromium`)"
        )
    proc = subprocess.run(
        [
            CHROMIUM,
            f"--window-size={width},1000",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            html_path.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Chromium logs every console message (errors and uncaught exceptions included)
    # as ":CONSOLE" lines naming the page.
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def test_report_is_self_contained_and_escaped(run_dir: Path) -> None:
    out = write_report(run_dir, run_dir / "report.html", summary=_summary())
    page = out.read_text()

    assert 'id="branch-table"' in page
    assert not re.search(r"(src|href)\s*=|https?://|@import|url\(", page)
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert page.count("<script") == 2  # only the render marker and the error listener
    for text in (
        "b1",
        "b2",
        "17",
        "Every ledger verified",
        "A customer of two branches counts",
        "Collusion",
        "Opacus",
        "dp_he",
        "0.812",
    ):
        assert text in page, text


def test_report_reads_summary_json_and_shows_failed_verification(run_dir: Path) -> None:
    (run_dir / "summary.json").write_text(json.dumps(_summary()))
    (run_dir / "keys" / "b2.pub").unlink()

    page = write_report(run_dir, run_dir / "report.html").read_text()

    assert "FAILED" in page and "unknown key: no public key for branch b2" in page
    assert "Updates encrypted (HE)</td><td>yes" in page


def test_report_renders_in_headless_chromium_without_console_errors(
    run_dir: Path, tmp_path: Path
) -> None:
    out = write_report(run_dir, run_dir / "report.html", summary=_summary())
    broken = tmp_path / "broken.html"
    broken.write_text("<!doctype html><html><body><script>console.error('x'); nope();</script>")

    dom, console = render(out, tmp_path / "profile")
    _, broken_console = render(broken, tmp_path / "profile")

    # The capture works: a page with errors shows them.
    assert any("Uncaught ReferenceError" in line for line in broken_console)
    assert console == []
    assert re.search(r'<html[^>]* data-rendered="1"', dom)
    assert not re.search(r"<html[^>]* data-script-error=", dom)
    table = re.search(r'<table id="branch-table">.*?</table>', dom, re.S)
    assert table is not None
    assert table.group(0).count("<tr>") == 3  # header + b1 + b2
    assert "<svg" in dom


# Appended to a copy of the report: records, for every table, whether it fits its box.
MEASURE = """<script>
var rows = [];
document.querySelectorAll("table").forEach(function (t) {
  rows.push([t.id || t.className, t.scrollWidth, t.parentElement.clientWidth,
             document.documentElement.scrollWidth <= window.innerWidth]);
});
document.documentElement.setAttribute("data-layout", JSON.stringify(rows));
</script></body>"""


@pytest.mark.parametrize("width", [1280, 800])
def test_every_table_fits_the_page_in_headless_chromium(
    run_dir: Path, tmp_path: Path, width: int
) -> None:
    page = write_report(run_dir, run_dir / "report.html", summary=_summary()).read_text()
    measured = tmp_path / "measured.html"
    measured.write_text(page.replace("</body>", MEASURE))

    dom, console = render(measured, tmp_path / "profile", width=width)

    assert console == []
    found = re.search(r'data-layout="([^"]*)"', dom)
    assert found is not None, dom[:2000]
    layout = json.loads(html.unescape(found.group(1)))
    tables = {name: (scroll, box, page_fits) for name, scroll, box, page_fits in layout}
    assert {"branch-table", "purpose-table", "mechanism-table"} <= set(tables)
    for name, (scroll, box, page_fits) in tables.items():
        assert page_fits, name  # the page never scrolls sideways
        if width >= 1024:  # on a desktop screen no table is wider than its box
            assert scroll <= box, (name, scroll, box)
        # (narrower, a wide table scrolls inside its own box)
    # The ceilings' dashed line is in the chart's legend.
    assert "ceiling (dashed)" in dom and 'class="legend-ceiling"' in dom
