"""summary.md and report.html escape what users wrote; `distill-eval report` round-trips."""

from __future__ import annotations

import base64
import html as html_lib
import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import planted
import pytest

from distill_eval.data import Dataset
from distill_eval.outputs import ModelOutputs
from distill_eval.report import render_html, render_summary
from distill_eval.report.data import build_report_data
from distill_eval.report.extras import agreement_extras, copy_breakdown, gallery, image_shape, prediction_confusion
from distill_eval.report.png import png_bytes

HOSTILE = "<script>alert('x')</script>|`"


def _doc() -> dict:
    return {
        "schema": 1,
        "verdict": "failed",
        "created": "2026-01-01T00:00:00+0000",
        "counts": {"passed": 0, "failed": 1, "warned": 0, "error": 0},
        "command": ["pytest", "--distill"],
        "models": {
            "student": {
                "path": HOSTILE,
                "factory": None,
                "weights": None,
                "sha256": "ab" * 32,
                "params": 10,
                "format": "torchscript",
            }
        },
        "datasets": {"test": {"path": "t.npz", "sha256": "cd" * 32, "n": 5}},
        "environment": {"python": "3.11"},
        "suites": [
            {
                "name": HOSTILE,
                "file": "suites/x.toml",
                "gate": "estimate",
                "checks": [
                    {
                        "id": "slices",
                        "kind": "slices",
                        "outcome": "failed",
                        "message": f"retention of slice '{HOSTILE}' = 0.5 < min 0.9 (gate: estimate)",
                        "metrics": {"worst_retention": {"value": 0.5, "ci": None}},
                        "bounds": [
                            {
                                "metric": "retention",
                                "op": "min",
                                "bound": 0.9,
                                "ok": False,
                                "value": 0.5,
                                "ci": None,
                                "slice": HOSTILE,
                            }
                        ],
                        "slices": [
                            {
                                "name": HOSTILE,
                                "support": 40,
                                "under_supported": False,
                                "where": "meta.x == '<b>'",
                                "student_score": {"value": 0.45, "ci": None},
                                "teacher_score": {"value": 0.9, "ci": None},
                                "retention": {"value": 0.5, "ci": None},
                                "gap": {"value": 0.45, "ci": None},
                            }
                        ],
                        "discovered": [
                            {
                                "name": HOSTILE,
                                "source": "meta",
                                "where": "meta.x == '<i>'",
                                "support": 40,
                                "student_score": 0.4,
                                "teacher_score": 0.9,
                                "gap": 0.5,
                                "effect": 0.45,
                                "p_value": 0.001,
                                "p_adjusted": 0.004,
                            },
                            {
                                "name": "input cluster 1 of 8",
                                "source": "cluster:inputs",
                                "ids": [HOSTILE, "<u>b</u>"],
                                "support": 2,
                                "student_score": 0.0,
                                "teacher_score": 1.0,
                                "gap": 1.0,
                                "effect": 0.9,
                                "p_value": 0.01,
                                "p_adjusted": 0.02,
                            },
                        ],
                    },
                    {
                        "id": HOSTILE,
                        "kind": "agreement",
                        "outcome": "passed",
                        "gate": "strict",
                        "message": "",
                        "metrics": {"top1": {"value": 0.9, "ci": [0.8, 0.95]}},
                        "bounds": [
                            {"metric": "top1", "op": "min", "bound": 0.5, "ok": True, "value": 0.9, "ci": [0.8, 0.95]}
                        ],
                        "confusion": {"classes": [0, 1], "counts": [[3, 1], [0, 1]], "omitted": 0},
                        "disagreements": 1,
                        "gallery": [
                            {
                                "id": HOSTILE,
                                "label": 1,
                                "teacher": {"pred": 0, "conf": 0.9},
                                "student": {"pred": 1, "conf": 0.8, "p_teacher": 0.2},
                                "input": {"kind": "image", "shape": [2, 2], "pixels": "AAECAw=="},
                            },
                            {
                                "id": "<svg onload=alert(1)>",
                                "label": None,
                                "teacher": {"pred": 0, "conf": 0.9},
                                "student": {"pred": 1, "conf": 0.8, "p_teacher": 0.2},
                                "input": {"kind": "image", "shape": [2, 2], "pixels": "not base64 <b>"},
                            },
                        ],
                    },
                ],
            }
        ],
    }


def test_html_escapes_every_user_string_and_loads_nothing_external() -> None:
    html = render_html(_doc())
    assert "<script" not in html and "&lt;script&gt;" in html
    for tag in ("<b>", "<i>", "<u>", "<svg onload"):
        assert tag not in html
    # the hostile names reach the charts (SVG text and tooltips) escaped, too
    charts = re.findall(r"<svg class=\"chart\".*?</svg>", html, flags=re.S)
    assert any("&lt;script&gt;" in chart for chart in charts)
    _assert_self_contained(html)


def _assert_self_contained(html: str) -> None:
    """No scripts, no external resources, a strict CSP: every src is a data: URI and every href in-page."""
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    assert "url(" not in html and "<iframe" not in html.lower() and "<object" not in html.lower()
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', html)
    assert csp is not None and "default-src 'none'" in csp.group(1) and "script-src" not in csp.group(1)
    for attr, value in re.findall(r"\s(src|href)=\"([^\"]*)\"", html):
        assert value.startswith("data:image/png;base64," if attr == "src" else "#"), (attr, value[:60])
    for tag in re.findall(r"<[a-zA-Z][^>]*>", html):
        assert not re.search(r"\son[a-z]+\s*=", tag), tag  # no event handlers in any tag


def test_report_structure_from_data() -> None:
    data = build_report_data(_doc())
    assert data.verdict == "failed" and data.counts == {"passed": 0, "failed": 1, "warned": 0, "error": 0}
    assert data.gates == "gates: estimate (1 check), strict (1 check)"
    # one row and one section per check, linked by anchor
    assert [row[1].href for row in data.checks.rows] == ["#check-1", "#check-2"]
    assert [s.anchor for s in data.sections] == ["check-1", "check-2"]
    assert data.problems and data.problems[0].href == "#check-1" and "retention" in data.problems[0].text
    slices, agreement = data.sections
    kinds = [b.kind for b in slices.blocks]
    assert kinds[0] == "figure" and "table" in kinds  # the retention chart, then its slices and discoveries
    discovered = next(b for b in slices.blocks if b.kind == "table" and "Discovered" in b.caption)
    assert "2 ids: " in discovered.rows[1][1].text
    gallery = next(b for b in agreement.blocks if b.kind == "gallery")
    assert gallery.items[0].image and gallery.items[0].image_width == gallery.items[0].image_height == 56
    assert gallery.items[1].image is None and gallery.items[1].label == "—"  # a malformed picture is left out
    json.dumps(data.to_json())  # ReportData is JSON-serialisable


def test_png_encoder_writes_a_valid_png() -> None:
    raw = png_bytes(bytes(range(12)), 4, 3)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    # IHDR: width 4, height 3, 8-bit grey; IDAT inflates to a filter byte and 4 pixels per row
    width, height, depth, color = struct.unpack(">IIBB", raw[16:26])
    assert (width, height, depth, color) == (4, 3, 8, 0)
    length = struct.unpack(">I", raw[33:37])[0]
    assert zlib.decompress(raw[41 : 41 + length]) == b"".join(
        b"\x00" + bytes(range(r * 4, r * 4 + 4)) for r in range(3)
    )
    for offset in (8, 33, 41 + length + 4):
        size, kind = struct.unpack(">I4s", raw[offset : offset + 8])
        body = raw[offset + 4 : offset + 8 + size]
        assert struct.unpack(">I", raw[offset + 8 + size : offset + 12 + size])[0] == zlib.crc32(body), kind
    with pytest.raises(ValueError, match="expected 12 bytes"):
        png_bytes(bytes(11), 4, 3)


def test_markdown_escapes_table_breaking_characters() -> None:
    md = render_summary(_doc())
    assert "<script>" not in md
    row = next(line for line in md.splitlines() if line.startswith("| &lt;script"))
    # a pipe in a name must not add a column: 6 cells, 7 unescaped pipes
    assert row.replace("\\|", "").count("|") == 7
    assert "retention (&lt;script&gt;" in md and "= 0.5 (>= 0.9) ✗" in md


def test_cli_report_round_trip(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_doc()))
    out = tmp_path / "again.html"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill_eval",
            "report",
            str(results),
            "-o",
            str(out),
            "--summary",
            str(tmp_path / "s.md"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text() == render_html(_doc())
    assert (tmp_path / "s.md").read_text() == render_summary(_doc())


def test_cli_report_rejects_what_is_not_results(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    done = subprocess.run(
        [sys.executable, "-m", "distill_eval", "report", str(bad)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "not a distill_eval results.json" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "distill_eval", "report", str(tmp_path / "none.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "file not found" in done.stderr and "Traceback" not in done.stderr


MANIFEST = {
    "schema": 1,
    "kind": "distill_eval.train",
    "status": "finished",
    "finished": True,
    "created": "2026-01-01T00:00:00+0000",
    "updated": "2026-01-01T01:00:00+0000",
    "command": ["distill-eval", "train", "digits.toml"],
    "config_file": "digits.toml",
    "seed": 7,
    "teacher": {"spec": "teacher.pt", "sha256": "ef" * 32, "params": 85002},
    "data": {"train": {"source": "sklearn:digits", "n": 1257}},
    "student": {"file": "student.pt", "sha256": "12" * 32, "selected_epoch": 2, "stopped_early": False},
    "control": None,
    "epochs": [
        {"epoch": 1, "train_loss": 0.9, "val_accuracy": 0.9, "val_agreement": 0.91},
        {"epoch": 2, "train_loss": 0.5, "val_accuracy": 0.95, "val_agreement": 0.97},
        {"epoch": 3, "train_loss": 0.4, "val_accuracy": 0.94, "val_agreement": 0.96},
    ],
}


def test_provenance_shows_commit_versions_device_and_the_trainer_manifest() -> None:
    doc = _doc()
    doc["models"]["student"]["manifest"] = {"path": "out/manifest.json", **MANIFEST}
    doc["environment"] |= {
        "device": "cuda:0",
        "git": {"commit": "a1b2c3" * 6, "dirty": True},
        "packages": {"torch": "2.3.0", "onnxruntime": None},
    }
    html = html_lib.unescape(render_html(doc))
    assert "a1b2c3a1b2c3" in html and "(with uncommitted changes)" in html
    assert "cuda:0" in html and "torch 2.3.0" in html and "onnxruntime" not in html
    assert "Trainer manifest of model 'student'" in html
    for fact in ("distill-eval train digits.toml", "out/manifest.json", "train_loss=0.5, val_accuracy=0.95"):
        assert fact in html


def test_a_manifest_is_attached_only_to_the_model_file_it_describes(tmp_path: Path) -> None:
    from distill_eval.session import _trainer_manifest

    (tmp_path / "manifest.json").write_text(json.dumps(MANIFEST))
    assert _trainer_manifest(tmp_path / "student.pt")["seed"] == 7
    assert _trainer_manifest(tmp_path / "other.pt") is None
    (tmp_path / "manifest.json").write_text("{not json")
    assert _trainer_manifest(tmp_path / "student.pt") is None


# -- the extras the check kinds record for the report ------------------------------------


def _outputs(logits: np.ndarray, name: str) -> ModelOutputs:
    return ModelOutputs(name, "test", np.asarray(logits, dtype=np.float32))


@pytest.mark.parametrize(
    ("shape", "picture"),
    [((64,), (8, 8)), ((784,), (28, 28)), ((1, 28, 28), (28, 28)), ((3, 16, 16), (16, 16, 3)), ((8, 8), (8, 8))],
)
def test_image_like_inputs_become_pictures(shape, picture) -> None:
    assert image_shape(shape) == picture


@pytest.mark.parametrize("shape", [(1,), (5,), (100,), (3, 224, 224), (2, 2)])
def test_other_inputs_are_not_pictures(shape) -> None:
    assert image_shape(shape) is None


def test_gallery_rows_are_the_most_confident_disagreements_with_small_inputs() -> None:
    rng = np.random.default_rng(0)
    n = 200
    x = rng.random((n, 28, 28), dtype=np.float32)
    y = rng.integers(0, 3, n)
    data = Dataset("test", x, y, np.array([f"ex{i}" for i in range(n)]))
    teacher = _outputs(np.eye(3)[y] * 4, "teacher")
    s_logits = np.eye(3)[y] * 4
    s_logits[:10] = np.eye(3)[(y[:10] + 1) % 3] * np.arange(1, 11)[:, None]  # 10 disagreements, rising confidence
    extras = agreement_extras(data, teacher, _outputs(s_logits, "student"), n=4)
    assert extras["disagreements"] == 10
    assert [row["id"] for row in extras["gallery"]] == ["ex9", "ex8", "ex7", "ex6"]
    row = extras["gallery"][0]
    assert row["label"] == int(y[9]) and row["teacher"]["pred"] == int(y[9])
    assert row["student"]["pred"] == (int(y[9]) + 1) % 3 and row["student"]["conf"] > 0.99
    assert row["input"]["kind"] == "image" and row["input"]["shape"] == [28, 28]
    assert len(base64.b64decode(row["input"]["pixels"])) == 28 * 28
    confusion = extras["confusion"]
    assert np.sum(confusion["counts"]) == n and np.trace(confusion["counts"]) == n - 10


def test_tabular_inputs_show_their_most_unusual_features() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 6)).astype(np.float32)
    x[0, 4] = 12.0  # far from the rest
    data = Dataset("test", x, np.zeros(500, dtype=np.int64), np.arange(500).astype(str))
    rows = gallery(np.array([0]), data, _outputs(np.zeros((500, 2)), "t"), _outputs(np.zeros((500, 2)), "s"))
    top = rows[0]["input"]["top"]
    assert rows[0]["input"]["kind"] == "features" and top[0]["index"] == 4 and top[0]["z"] > 8


def test_confusion_keeps_the_classes_most_involved_in_disagreements() -> None:
    t = np.arange(100) % 50
    s = t.copy()
    s[t == 7] = 8  # the only disagreements: teacher 7 -> student 8
    out = prediction_confusion(t, s, 50, max_classes=5)
    assert len(out["classes"]) == 5 and {7, 8} <= set(out["classes"])
    i, j = out["classes"].index(7), out["classes"].index(8)
    assert out["counts"][i][j] == 2
    assert np.sum(out["counts"]) + out["omitted"] == 100


def test_copy_breakdown_against_a_hand_count() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    t = np.array([1, 1, 0, 0, 0, 1, 1, 1])  # teacher errs on examples 0, 1 (says 1) and 4 (says 0)
    s = np.array([1, 0, 0, 0, 0, 1, 0, 1])  # copies on 0 and 4, right on 1
    out = copy_breakdown(y, t, s, 2)
    assert out["teacher_errors"] == 3
    assert out["observed"] == {"same": 2, "different": 0, "right": 1}
    # the student's own confusion: P(s=1 | y=0) = 1/4, P(s=0 | y=1) = 2/4
    assert out["chance"]["same"] == pytest.approx(0.25 + 0.25 + 0.5)
    assert out["chance"]["right"] == pytest.approx(0.75 + 0.75 + 0.5)
    assert out["chance"]["different"] == pytest.approx(0.0)


# -- real runs: a failing planted case, the round trip, and the size of a 100k-example report -------


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run whose slices check fails (the student guesses on meta group 'b'); returns its reports folder."""
    root = tmp_path_factory.mktemp("planted")
    planted.write_project(root, student="broken_slice")
    _run_distill(root)
    return root / "reports"


def _run_distill(root: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--distill", "-p", "no:cacheprovider", "-q", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (root / "reports" / "results.json").is_file(), done.stdout + done.stderr
    return done


def test_report_of_a_failing_run_says_which_check_failed_where_and_by_how_much(planted_run: Path) -> None:
    html = (planted_run / "report.html").read_text()
    _assert_self_contained(html)
    assert '<p class="verdict">failed</p>' in html and "1 failed" in html
    # the banner's problem list links to the failing check's section, with the measured value and the bound
    problem = html_lib.unescape(re.search(r'<ul class="problems">(.*?)</ul>', html, flags=re.S).group(1))
    assert "slices (failed)" in problem and "retention of slice 'group-b' = 0.13" in problem and "< min 0.8" in problem
    sections = re.findall(r'<section class="check (\w+)" id="(check-\d+)">', html)
    assert sections == [("passed", "check-1"), ("passed", "check-2"), ("failed", "check-3"), ("passed", "check-4")]
    titles = re.findall(r'aria-label="([^"]+)"', html)
    for chart in (
        "Reliability diagram",
        "Confidence histograms",
        "Teacher × student predictions",
        "Per-slice retention",
        "Copied errors against chance",
        "Bounded metrics against their bounds",
    ):
        assert chart in titles
    assert html.count('<table class="gallery">') == 2
    for heading in ("Models", "Datasets", "Run and environment"):
        assert f'<p class="caption">{heading}</p>' in html
    assert "git commit" in html and "packages" in html


def test_cli_report_reproduces_the_run_report(planted_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "again.html"
    done = subprocess.run(
        [sys.executable, "-m", "distill_eval", "report", str(planted_run / "results.json"), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text() == (planted_run / "report.html").read_text()


BIG_MODULE = """
import torch


class Big(torch.nn.Module):
    def __init__(self, broken):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(64, 10)
        self.register_buffer("broken", torch.tensor(broken))  # in the state, so in the cache key

    def forward(self, x):
        out = self.layer(x)
        if self.broken:  # wrong on one cluster of the inputs (the only one whose first pixel is bright)
            out = torch.where((x[:, :1] > 12), out.flip(1), out)
        return out


def build(broken):
    return Big(broken).eval()
"""

BIG_SUITE = """
[suite]
name = "big"
bootstrap = 50

[[check]]
kind = "calibration"
max = { student_ece = 0.05 }

[[check]]
kind = "agreement"
min = { top1 = 0.99 }

[[check]]
kind = "slices"
discover = true
slices = [
  { name = "<script>alert(1)</script>", where = "meta.group == 'b'" },
  { name = "a", where = "meta.group == 'a'" },
]
min = { retention = 0.9 }

[[check]]
kind = "copied_errors"
max = { copied_share = 0.5 }
"""


@pytest.mark.slow
def test_report_of_100k_examples_stays_small(tmp_path: Path) -> None:
    import torch

    n = 100_000
    rng = np.random.default_rng(0)
    centers = rng.integers(0, 17, size=(8, 64)).astype(np.float32)
    centers[:, 0] = rng.integers(0, 6, size=8)
    centers[3, 0] = 16
    x = np.clip(centers[rng.integers(0, 8, n)] + rng.normal(0, 2, size=(n, 64)), 0, 16).astype(np.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        logits = torch.nn.Linear(64, 10)(torch.from_numpy(x)).numpy()
    y = np.where(rng.random(n) < 0.9, logits.argmax(1), rng.integers(0, 10, n))
    group = np.where(rng.random(n) < 0.1, "b", "a")
    np.savez(tmp_path / "test.npz", x=x, y=y, meta_group=group)
    (tmp_path / "big.py").write_text(BIG_MODULE)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.distill_eval]\ndevice = "cpu"\n'
        '[tool.distill_eval.models.teacher]\nfactory = "big:build"\nkwargs = { broken = false }\n'
        '[tool.distill_eval.models.student]\nfactory = "big:build"\nkwargs = { broken = true }\n'
        '[tool.distill_eval.datasets.test]\npath = "test.npz"\n'
    )
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "big.toml").write_text(BIG_SUITE)
    done = _run_distill(tmp_path)
    html = (tmp_path / "reports" / "report.html").read_text()
    assert len(html.encode()) < 2_000_000, len(html.encode())
    _assert_self_contained(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    doc = json.loads((tmp_path / "reports" / "results.json").read_text())
    assert doc["datasets"]["test"]["n"] == n, done.stdout
    checks = {c["kind"]: c for c in doc["suites"][0]["checks"]}
    # compact extras: the gallery holds a dozen examples, pictures included
    assert 0 < len(checks["agreement"]["gallery"]) <= 12
    assert checks["agreement"]["gallery"][0]["input"]["shape"] == [8, 8]
    assert sum(checks["calibration"]["reliability"]["student"]["count"]) == n
    assert html.count("data:image/png;base64,") <= 24
    # discovery reports the broken cluster by its ~12,500 member ids; the report names a handful
    clusters = [d for d in checks["slices"]["discovered"] if d.get("ids")]
    assert clusters and max(len(d["ids"]) for d in clusters) > 5_000
    assert html.count(str(clusters[0]["ids"][-1])) == 0
