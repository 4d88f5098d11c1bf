"""report.html in a real browser: headless Chromium loads it without console errors and draws every chart.

Needs Chromium (Debian: ``apt-get install -y chromium``); skipped, saying so,
where no Chromium binary is on PATH. The report forbids scripts (its CSP), so
sizes are measured on a copy whose policy also allows one inline script,
injected to write the measurements into the DOM that ``--dump-dom`` prints;
console errors are read from Chromium's log of the unmodified report.
"""

from __future__ import annotations

import html as html_lib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import planted
import pytest
from test_report import _doc as hostile_doc

from distill_eval.report import render_html
from distill_eval.report.html import CONTENT_SECURITY_POLICY

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)

MEASURE = """<script>
window.__errors = [];
window.addEventListener("error", (e) => __errors.push("error: " + (e.message || e.target.outerHTML)), true);
document.addEventListener("securitypolicyviolation", (e) => __errors.push("csp: " + e.violatedDirective));
const original = console.error;
console.error = (...args) => { __errors.push("console: " + args.join(" ")); original(...args); };
window.addEventListener("load", () => {
  const size = (el) => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
  const out = {
    charts: [...document.querySelectorAll("svg.chart")].map((el) => [el.getAttribute("aria-label"), ...size(el)]),
    images: [...document.images].map((img) => [img.complete, img.naturalWidth, ...size(img)]),
    sections: document.querySelectorAll("section.check").length,
    errors: __errors,
  };
  const pre = document.createElement("pre");
  pre.id = "measurements";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium is not installed (Debian/Ubuntu: apt-get install -y chromium); the browser test needs it")


def _browse(chromium: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of a real run with a failing check (the student guesses on meta group 'b')."""
    root = tmp_path_factory.mktemp("browser")
    planted.write_project(root, student="broken_slice")
    subprocess.run(
        [sys.executable, "-m", "pytest", "--distill", "-p", "no:cacheprovider", "-q"],
        cwd=root,
        capture_output=True,
        check=False,
    )
    path = root / "reports" / "report.html"
    assert path.is_file()
    return path


def test_report_loads_without_console_errors(chromium: str, report: Path, tmp_path: Path) -> None:
    done = _browse(chromium, report, tmp_path / "profile", "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<h1>distill_eval report</h1>" in done.stdout  # it rendered
    # the report has no scripts, so any console line is a problem (a CSP violation, a failed load, ...)
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []


def _measure(chromium: str, html: str, folder: Path) -> dict:
    """Load a copy of the page that also runs MEASURE (its policy otherwise unchanged); return what it measured."""
    assert CONTENT_SECURITY_POLICY in html
    relaxed = html.replace(CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY + "; script-src 'unsafe-inline'")
    page = folder / "measured.html"
    page.write_text(relaxed.replace("</body>", MEASURE + "</body>"))
    done = _browse(chromium, page, folder / "profile", "--virtual-time-budget=5000", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="measurements">(.*?)</pre>', done.stdout, flags=re.S)
    assert found, "the measuring script did not run"
    return json.loads(html_lib.unescape(found.group(1)))


def test_every_chart_is_drawn(chromium: str, report: Path, tmp_path: Path) -> None:
    measured = _measure(chromium, report.read_text(), tmp_path)
    assert measured["errors"] == []
    assert measured["sections"] == 4
    labels = [label for label, _, _ in measured["charts"]]
    for chart in ("Reliability diagram", "Teacher × student predictions", "Per-slice retention"):
        assert chart in labels
    assert all(width > 50 and height > 20 for _, width, height in measured["charts"]), measured["charts"]


def test_hostile_names_stay_text_and_pictures_load(chromium: str, tmp_path: Path) -> None:
    # names and ids like <script>alert('x')</script> and <svg onload=alert(1)>: escaped, nothing runs but ours
    measured = _measure(chromium, render_html(hostile_doc()), tmp_path)
    assert measured["errors"] == []
    assert measured["charts"] and all(width > 50 and height > 20 for _, width, height in measured["charts"])
    # the gallery's picture (a PNG we encode ourselves) decodes and is laid out at its scaled size
    assert measured["images"] == [[True, 2, 56, 56]]


def test_screenshot_for_a_human_look(chromium: str, report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    done = _browse(chromium, report, tmp_path / "profile", "--window-size=1280,4000", f"--screenshot={shot}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
