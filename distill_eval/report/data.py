"""ReportData: what report.html shows, built from a results document alone.

:func:`build_report_data` reads a results.json document (``distill-eval docs results-schema``) and
returns plain, JSON-serialisable dataclasses: the verdict banner, the table of
every check, one section per check (tables, charts with their text
equivalents, failure galleries) and the provenance. The template only lays
them out. Because nothing here reads models or data, ``distill-eval report
results.json`` re-renders exactly the report the run wrote.

Charts are SVG markup made by :mod:`distill_eval.report.svg`, which escapes
every text it draws; everything else is plain text, escaped by the template.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distill_eval.checks.judge import format_number
from distill_eval.report import svg
from distill_eval.report.png import png_data_uri

__all__ = ["Cell", "Figure", "Gallery", "GalleryItem", "Note", "ReportData", "Section", "Table", "build_report_data"]

OUTCOMES = ("passed", "failed", "warned", "error")
_MARKS = {"passed": "✓", "failed": "✗", "warned": "!", "error": "‼"}
_GALLERY_PX = 56  # a gallery picture's longest side, in CSS pixels
_MAX_IDS_SHOWN = 5


# -- the data --------------------------------------------------------------------------


@dataclass
class Cell:
    """One table cell: text (line breaks kept), CSS classes, a tooltip, an in-page link."""

    text: str
    cls: str = ""
    title: str = ""
    href: str = ""


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    kind: str = "table"


@dataclass
class Figure:
    """A chart and its text equivalent: a caption with the key numbers and, often, a table of all of them."""

    title: str
    svg: str  # markup from distill_eval.report.svg (all text in it escaped there)
    caption: str
    table: Table | None = None
    kind: str = "figure"


@dataclass
class GalleryItem:
    id: str
    label: str
    teacher: str
    student: str
    p_teacher: str
    image: str | None = None  # a data:image/png URI
    image_width: int = 0
    image_height: int = 0
    features: list[str] = field(default_factory=list)


@dataclass
class Gallery:
    title: str
    caption: str
    items: list[GalleryItem]
    kind: str = "gallery"


@dataclass
class Note:
    text: str
    cls: str = ""
    kind: str = "note"


Block = Table | Figure | Gallery | Note


@dataclass
class Section:
    """One check: its outcome, why, and what it measured."""

    anchor: str
    suite: str
    check_id: str
    kind: str
    outcome: str
    message: str
    facts: str
    blocks: list[Block]


@dataclass
class ReportData:
    title: str
    verdict: str
    counts: dict[str, int]
    gates: str
    created: str
    command: str
    subject: str
    #: a partial run's note, naming the deselected checks ("" for a complete run)
    partial: str
    problems: list[Cell]
    checks: Table
    sections: list[Section]
    provenance: list[Table]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- helpers ------------------------------------------------------------------------


def _partial_note(doc: Mapping[str, Any]) -> str:
    from distill_eval.results import partial_note  # not at import: results -> checks -> report.extras

    return partial_note(doc) or ""


def _num(x: Any) -> str:
    return format_number(x) if isinstance(x, (int, float)) or x is None else str(x)


def _ci(ci: Sequence[float] | None) -> str:
    return f"[{format_number(ci[0])}, {format_number(ci[1])}]" if ci else ""


def _value_ci(m: Mapping[str, Any] | None) -> str:
    if not m:
        return "—"
    if m.get("value") is None:
        return "n/a"
    ci = _ci(m.get("ci"))
    return f"{format_number(m['value'])} {ci}".strip()


def _as_ci(ci: Any) -> tuple[float, float] | None:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return float(ci[0]), float(ci[1])
    return None


def _rel(op: str) -> str:
    return ">=" if op == "min" else "<="


def _short(s: str, limit: int = 40) -> str:
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "—"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def _plain(value: Any) -> str:
    """A JSON value as one line of text."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value)
    if value is None:
        return "—"
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def _count(x: Any) -> str:
    """A count, or an expected count: whole numbers with thousands separators from 100 up."""
    if isinstance(x, (int, float)) and (abs(x) >= 100 or float(x).is_integer()):
        return f"{x:,.0f}"
    return _num(x)


def _conf(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else _num(x)


def _signed(x: Any) -> str:
    return f"+{format_number(x)}" if isinstance(x, (int, float)) and x >= 0 else _num(x)


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


# -- the checks table and the banner -------------------------------------------------------


def _bound_lines(check: Mapping[str, Any]) -> tuple[list[str], list[str], bool]:
    """Lines for the checks table: each bounded metric with its interval, and its bound."""
    metrics, bounds = [], []
    failing = False
    slice_ok: dict[str, int] = {}
    for b in check.get("bounds", []):
        where = b.get("slice")
        if where is not None and b.get("ok"):
            slice_ok[b["metric"]] = slice_ok.get(b["metric"], 0) + 1
            continue
        failing |= not b.get("ok", True)
        name = b["metric"] if where is None else f"{b['metric']} of '{where}'"
        value = "n/a" if b.get("value") is None else f"{format_number(b['value'])} {_ci(b.get('ci'))}".strip()
        metrics.append(f"{name} = {value}")
        bounds.append(f"{_rel(b['op'])} {format_number(b['bound'])} {'✓' if b.get('ok') else '✗'}")
    for metric, n in slice_ok.items():
        metrics.append(f"{metric}: {n} slice{'s' if n != 1 else ''} within bound")
        bounds.append("✓")
    return metrics, bounds, failing


def _checks_table(doc: Mapping[str, Any], anchors: Mapping[tuple[int, int], str]) -> Table:
    rows = []
    for si, suite in enumerate(doc.get("suites", [])):
        for ci, check in enumerate(suite.get("checks", [])):
            metrics, bounds, failing = _bound_lines(check)
            outcome = check.get("outcome", "")
            rows.append(
                [
                    Cell(str(suite.get("name", ""))),
                    Cell(str(check.get("id", "")), href="#" + anchors[si, ci]),
                    Cell(str(check.get("kind", ""))),
                    Cell(f"{_MARKS.get(outcome, '')} {outcome}", cls=f"outcome {outcome}"),
                    Cell("\n".join(metrics) or "—", cls="num"),
                    Cell("\n".join(bounds) or "—", cls="nowrap bad" if failing else "nowrap"),
                    Cell(_gate_of(suite, check)),
                ]
            )
    return Table(["suite", "check", "kind", "outcome", "bounded metrics (interval)", "bound", "gate"], rows)


def _subject(doc: Mapping[str, Any]) -> str:
    pairs: dict[tuple[str, str], None] = {}
    datasets: dict[str, None] = {}
    for suite in doc.get("suites", []):
        for check in suite.get("checks", []):
            models = check.get("models") or {}
            if "student" in models and "teacher" in models:
                pairs[models["student"], models["teacher"]] = None
            if check.get("dataset"):
                datasets[check["dataset"]] = None
    described = doc.get("datasets") or {}
    data = [
        f"'{d}' ({_count(described[d]['n'])} examples)" if "n" in described.get(d, {}) else f"'{d}'" for d in datasets
    ]
    who = "; ".join(f"student '{s}' against teacher '{t}'" for s, t in pairs) or "no model pair"
    return f"{who}, on {', '.join(data) or 'no dataset'}"


def _gate_of(suite: Mapping[str, Any], check: Mapping[str, Any]) -> str:
    """The gate a check was judged under (its own, else its suite's)."""
    return str(check.get("gate") or suite.get("gate") or "")


def _gates(doc: Mapping[str, Any]) -> str:
    gates: dict[str, int] = {}
    for suite in doc.get("suites", []):
        for check in suite.get("checks", []):
            gate = _gate_of(suite, check)
            gates[gate] = gates.get(gate, 0) + 1
    if len(gates) <= 1:
        return f"gate: {next(iter(gates), '—')}"
    return "gates: " + ", ".join(f"{g} ({n} check{'s' if n != 1 else ''})" for g, n in gates.items())


# -- per-check sections ----------------------------------------------------------------------


def _metrics_table(check: Mapping[str, Any]) -> Table | None:
    metrics = check.get("metrics") or {}
    if not metrics:
        return None
    level_bounds: dict[str, list[Mapping[str, Any]]] = {}
    for b in check.get("bounds", []):
        if b.get("slice") is None:
            level_bounds.setdefault(b["metric"], []).append(b)
    rows = []
    for name, m in metrics.items():
        bs = level_bounds.get(name, [])
        bound = "; ".join(f"{_rel(b['op'])} {format_number(b['bound'])} {'✓' if b.get('ok') else '✗'}" for b in bs)
        bad = any(not b.get("ok", True) for b in bs)
        rows.append(
            [
                Cell(name, cls="bad" if bad else ""),
                Cell(_num(m.get("value")) if m.get("value") is not None else "n/a", cls="num"),
                Cell(_ci(m.get("ci")) or "—", cls="num"),
                Cell(bound or "—", cls="nowrap bad" if bad else "nowrap"),
                Cell(str(m.get("note") or ""), cls="muted"),
            ]
        )
    return Table(["metric", "value", "interval", "bound", "note"], rows, caption="Every metric of the check")


def _bound_figure(check: Mapping[str, Any], gate: str) -> Figure | None:
    rows = [
        svg.BoundRow(
            label=b["metric"],
            value=b.get("value"),
            ci=_as_ci(b.get("ci")),
            bound=float(b["bound"]),
            op=b["op"],
            ok=bool(b.get("ok")),
        )
        for b in check.get("bounds", [])
        if b.get("slice") is None and isinstance(b.get("bound"), (int, float))
    ]
    if not rows:
        return None
    broken = [r for r in rows if not r.ok]
    verdict = (
        f"{len(broken)} of {len(rows)} bound{'s' if len(rows) != 1 else ''} broken"
        if broken
        else f"all {len(rows)} bound{'s' if len(rows) != 1 else ''} hold"
    )
    return Figure(
        "Bounded metrics",
        svg.bound_chart(rows),
        f"{verdict} (gate: {gate}). Each line has its own scale: the dot is the estimate, the whisker its "
        "interval, the red tick the bound; the shaded side fails.",
    )


def _calibration_blocks(check: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    rel = check.get("reliability")
    if isinstance(rel, Mapping):
        series = {name: rel[name] for name in ("teacher", "student") if isinstance(rel.get(name), Mapping)}
        if series:
            metrics = check.get("metrics") or {}
            parts = [
                f"{name} ECE {_value_ci(metrics.get(f'{name}_ece'))}" for name in series if f"{name}_ece" in metrics
            ]
            rows = []
            first = next(iter(series.values()))
            for j in range(len(first["count"])):
                cells = [Cell(f"{format_number(first['edges'][j])}–{format_number(first['edges'][j + 1])}")]
                if not any(s["count"][j] for s in series.values()):
                    continue
                for s in series.values():
                    cells += [
                        Cell(str(s["count"][j]), cls="num"),
                        Cell(_num(s["confidence"][j]) if s["count"][j] else "—", cls="num"),
                        Cell(_num(s["accuracy"][j]) if s["count"][j] else "—", cls="num"),
                    ]
                rows.append(cells)
            headers = ["confidence bin"] + [f"{n} {h}" for n in series for h in ("n", "confidence", "accuracy")]
            binning = rel.get("binning", "uniform")
            blocks.append(
                Figure(
                    "Reliability diagram",
                    svg.reliability_diagram(series),
                    f"{'; '.join(parts)}. {len(first['count'])} {binning} bins. Points below the diagonal are "
                    "over-confident (accuracy lower than the confidence stated); the bars count the examples in "
                    "each bin.",
                    Table(headers, rows, caption="Non-empty bins"),
                )
            )
    hist = check.get("confidence_histogram")
    if isinstance(hist, Mapping) and "edges" in hist:
        series = {name: hist[name] for name in ("teacher", "student") if isinstance(hist.get(name), Mapping)}
        edges = hist["edges"]
        parts = []
        for name, s in series.items():
            wrong = sum(s["wrong"])
            sure = sum(n for j, n in enumerate(s["wrong"]) if edges[j] >= 0.9 - 1e-9)
            parts.append(f"{name}: {wrong} wrong predictions, {sure} of them with confidence ≥ 0.9")
        rows = [
            [Cell(f"{format_number(edges[j])}–{format_number(edges[j + 1])}")]
            + [Cell(str(s[k][j]), cls="num") for s in series.values() for k in ("correct", "wrong")]
            for j in range(len(edges) - 1)
            if any(s["correct"][j] or s["wrong"][j] for s in series.values())
        ]
        headers = ["confidence"] + [f"{n} {k}" for n in series for k in ("right", "wrong")]
        blocks.append(
            Figure(
                "Confidence histograms",
                svg.confidence_histograms(edges, series),
                "; ".join(parts) + ". Right predictions above the axis, wrong ones below (separate scales).",
                Table(headers, rows, caption="Non-empty bins"),
            )
        )
    return blocks


def _gallery(check: Mapping[str, Any], title: str, caption: str) -> Gallery | None:
    rows = check.get("gallery")
    if not isinstance(rows, list):
        return None
    items = []
    for row in rows:
        t, s = row.get("teacher") or {}, row.get("student") or {}
        item = GalleryItem(
            id=str(row.get("id", "")),
            label="—" if row.get("label") is None else str(row["label"]),
            teacher=f"{t.get('pred')} ({_conf(t.get('conf'))})",
            student=f"{s.get('pred')} ({_conf(s.get('conf'))})",
            p_teacher=_num(s.get("p_teacher")),
        )
        _attach_input(item, row.get("input"))
        items.append(item)
    return Gallery(title, caption, items)


def _attach_input(item: GalleryItem, preview: Any) -> None:
    """A gallery input: a PNG of the pixels, or the features that stand out."""
    if not isinstance(preview, Mapping):
        return
    if preview.get("kind") == "image":
        shape = preview.get("shape") or []
        try:
            pixels = base64.b64decode(str(preview.get("pixels", "")), validate=True)
            h, w = int(shape[0]), int(shape[1])
            channels = int(shape[2]) if len(shape) == 3 else 1
            item.image = png_data_uri(pixels, w, h, channels=channels)
        except (ValueError, IndexError, TypeError, binascii.Error):
            return  # a malformed preview: show the row without it
        scale = max(1, round(_GALLERY_PX / max(h, w)))
        item.image_width, item.image_height = w * scale, h * scale
    elif preview.get("kind") == "features":
        item.features = [
            f"x[{f.get('index')}] = {_num(f.get('value'))} (z {_signed(f.get('z'))})" for f in preview.get("top", [])
        ]


def _agreement_blocks(check: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    conf = check.get("confusion")
    if isinstance(conf, Mapping) and conf.get("classes"):
        classes, counts = conf["classes"], conf["counts"]
        total = sum(map(sum, counts)) + int(conf.get("omitted", 0))
        pairs = sorted(
            (
                (counts[i][j], classes[i], classes[j])
                for i in range(len(classes))
                for j in range(len(classes))
                if i != j
            ),
            key=lambda p: -p[0],
        )
        pairs = [p for p in pairs if p[0] > 0]
        n_differ = int(check.get("disagreements", sum(p[0] for p in pairs)))
        top = ", ".join(f"teacher {t} → student {s} ({n})" for n, t, s in pairs[:3])
        caption = f"The models disagree on {n_differ} of {total} examples ({_percent(n_differ, total)})."
        if top:
            caption += f" Most frequent: {top}."
        if conf.get("omitted"):
            caption += (
                f" {len(classes)} classes shown (those most involved in disagreements); "
                f"{conf['omitted']} examples fall outside them."
            )
        table = Table(
            ["teacher predicts", "student predicts", "examples"],
            [[Cell(str(t)), Cell(str(s)), Cell(str(n), cls="num")] for n, t, s in pairs[:15]],
            caption="Most frequent disagreements",
        )
        blocks.append(Figure("Teacher × student predictions", svg.heatmap(classes, counts), caption, table))
    gallery = _gallery(
        check,
        "Failure gallery: confident disagreements",
        "The examples where the student contradicts the teacher most confidently (highest student confidence "
        "first). p(teacher's class) is the probability the student gives to the teacher's answer.",
    )
    if gallery is not None:
        blocks.append(gallery)
    return blocks


def _slices_blocks(check: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    slices = check.get("slices") or []
    metric = check.get("metric", "accuracy")
    if slices:
        bounds = [b for b in check.get("bounds", []) if b.get("metric") == "retention" and b.get("slice") is not None]
        op_bound = next(((b["op"], b["bound"]) for b in bounds), None)
        failing = {b["slice"] for b in check.get("bounds", []) if b.get("slice") is not None and not b.get("ok")}
        bars = [
            svg.IntervalBar(
                label=str(s.get("name", "")),
                value=(s.get("retention") or {}).get("value"),
                ci=_as_ci((s.get("retention") or {}).get("ci")),
                support=s.get("support"),
                ok=s.get("name") not in failing,
                muted=bool(s.get("under_supported")),
            )
            for s in slices
        ]
        scored = [s for s in slices if (s.get("retention") or {}).get("value") is not None]
        caption = f"Retention = student {metric} / teacher {metric} on each slice, with its interval and support."
        if scored:
            worst = min(scored, key=lambda s: s["retention"]["value"])
            caption += (
                f" Worst: '{worst['name']}' at {_value_ci(worst['retention'])} (n = {worst['support']};"
                f" student {_num(worst['student_score']['value'])}, teacher {_num(worst['teacher_score']['value'])})."
            )
        if failing:
            caption += f" Failing: {', '.join(repr(str(f)) for f in sorted(failing, key=str))}."
        rows = []
        for s in slices:
            bad = s.get("name") in failing
            support = f"{s.get('support')}{' (too few)' if s.get('under_supported') else ''}"
            rows.append(
                [
                    Cell(str(s.get("name", "")), cls="bad" if bad else ""),
                    Cell(str(s.get("where") or "ids file"), cls="code"),
                    Cell(support, cls="num bad" if s.get("under_supported") else "num"),
                    Cell(_value_ci(s.get("student_score")), cls="num"),
                    Cell(_value_ci(s.get("teacher_score")), cls="num"),
                    Cell(_value_ci(s.get("retention")), cls="num bad" if bad else "num"),
                    Cell(_value_ci(s.get("gap")), cls="num"),
                ]
            )
        op, bound = op_bound if op_bound else ("min", None)
        axis = f"retention (student / teacher {metric})"
        blocks.append(Figure("Per-slice retention", svg.interval_bars(bars, bound=bound, op=op, axis=axis), caption))
        blocks.append(
            Table(
                ["slice", "where", "support", f"student {metric}", f"teacher {metric}", "retention", "gap"],
                rows,
                caption="Declared slices",
            )
        )
    if "discovered" in check:
        found = check.get("discovered") or []
        if not found:
            blocks.append(
                Note(
                    "Slice discovery found no group of examples on which the student loses significantly more "
                    "than elsewhere."
                )
            )
        else:
            tokens = check.get("unit") == "tokens"
            rows = []
            for d in found:
                if d.get("where") is not None:
                    members = str(d["where"])
                else:
                    ids = [str(i) for i in d.get("ids") or []]
                    shown = ", ".join(ids[:_MAX_IDS_SHOWN])
                    members = f"{len(ids)} ids: {shown}{', …' if len(ids) > _MAX_IDS_SHOWN else ''}"
                support = str(d.get("support"))
                if isinstance(d.get("sequences"), int):
                    support += f" ({d['sequences']:,} sequences)"
                rows.append(
                    [
                        Cell(str(d.get("name", ""))),
                        Cell(members, cls="code"),
                        Cell(support, cls="num"),
                        # token data carries intervals (resampling sequences); classification data does not
                        Cell(_value_ci({"value": d.get("student_score"), "ci": d.get("student_score_ci")}), cls="num"),
                        Cell(_value_ci({"value": d.get("teacher_score"), "ci": d.get("teacher_score_ci")}), cls="num"),
                        Cell(_value_ci({"value": d.get("gap"), "ci": d.get("gap_ci")}), cls="num"),
                        Cell(_num(d.get("effect")), cls="num"),
                        Cell(_num(d.get("p_adjusted")), cls="num"),
                    ]
                )
            caption = (
                "Discovered slices: groups where the student loses more than elsewhere (chosen on one half of the "
                "data, tested on the other); paste a 'where' into the suite to track it"
            )
            if tokens:
                caption = (
                    "Discovered slices of tokens: groups where the student loses more than elsewhere (chosen on one "
                    "half of the sequences, tested on the other with a test over whole sequences; support counts "
                    "tokens, intervals resample sequences); paste a 'where' into the suite to track it"
                )
            blocks.append(
                Table(
                    ["group", "where / members", "support", "student", "teacher", "gap", "effect", "p (Holm)"],
                    rows,
                    caption=caption,
                )
            )
    return blocks


def _copied_blocks(check: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    bd = check.get("breakdown")
    if isinstance(bd, Mapping) and isinstance(bd.get("observed"), Mapping):
        keys = ("same", "different", "right")
        groups = ["same wrong class", "another wrong class", "right"]
        observed = [bd["observed"].get(k) for k in keys]
        chance = [(bd.get("chance") or {}).get(k) for k in keys]
        n = bd.get("teacher_errors", 0)
        same, expected = observed[0], chance[0]
        caption = f"Where the teacher is wrong ({_count(n)} examples), the student repeats its answer on {_count(same)}"
        if expected:
            caption += f", against {_count(expected)} expected by chance ({_num(same / expected)}× chance)"
        caption += (
            f"; it is wrong differently on {_count(observed[1])} (chance {_count(chance[1])}) and right on "
            f"{_count(observed[2])} (chance {_count(chance[2])}). Chance: a student erring independently of the "
            "teacher, at its own per-class error rates."
        )
        table = Table(
            ["where the teacher errs, the student is", "observed", "expected by chance"],
            [
                [Cell(g), Cell(_count(o), cls="num"), Cell(_count(c), cls="num")]
                for g, o, c in zip(groups, observed, chance, strict=True)
            ],
        )
        figure_svg = svg.grouped_bars(
            groups,
            {"student": observed, "chance": chance},
            title="Copied errors against chance",
            axis="teacher errors",
        )
        blocks.append(Figure("Copied errors against chance", figure_svg, caption, table))
    gallery = _gallery(
        check,
        "Failure gallery: copied errors",
        "Teacher errors the student repeats, the student's most confident first.",
    )
    if gallery is not None:
        blocks.append(gallery)
    return blocks


def _leakage_blocks(check: Mapping[str, Any]) -> list[Block]:
    dups = check.get("duplicates")
    if not isinstance(dups, list):
        return []
    if "ngram" in check:  # token data: sequences, matched exactly or by a shared n-gram
        if not dups:
            return [Note("No evaluation sequence duplicates a training sequence or shares an n-gram with one.")]
        rows = [[Cell(str(d.get("id"))), Cell(str(d.get("train_id"))), Cell(str(d.get("match")))] for d in dups]
        caption = (
            f"Evaluation sequences found in the training data (exact: the same tokens; ngram: a shared run of "
            f"{check['ngram']} tokens)"
        )
        return [Table(["evaluation id", "training id", "match"], rows, caption=caption)]
    if not dups:
        return [Note("No evaluation example duplicates a training example.")]
    rows = [
        [Cell(str(d.get("id"))), Cell(str(d.get("train_id"))), Cell(_num(d.get("distance")), cls="num")] for d in dups
    ]
    near = check.get("near_distance")
    caption = "Evaluation examples found in the training data (distance 0: exact copies)"
    if near is not None:
        caption += f"; near duplicates lie within {_num(near)}"
    return [Table(["evaluation id", "training id", "distance"], rows, caption=caption)]


def _latency_blocks(check: Mapping[str, Any]) -> list[Block]:
    hist = check.get("histogram")
    metrics = check.get("metrics") or {}
    # on token data a call is a generation episode, and its percentiles are the e2e ones
    episodes = "prompt_length" in check
    p = "e2e_p" if episodes else "p"
    unit = "ms per generation episode" if episodes else "ms per call"
    calls = "episodes" if episodes else "calls"
    blocks: list[Block] = []
    if episodes:
        blocks.append(Note(_episode_note(check)))
    if isinstance(hist, Mapping):
        series = {n: hist[n] for n in ("teacher", "student") if isinstance(hist.get(n), Mapping)}
        medians = {n: (metrics.get(f"{n}_{p}50_ms") or {}).get("value") for n in series}
        caption = f"Speedup (teacher median / student median): {_value_ci(metrics.get('speedup'))}×."
        if episodes:
            caption += (
                f" Time to first token: {_value_ci(metrics.get('ttft_speedup'))}×; decode: "
                f"{_value_ci(metrics.get('decode_speedup'))}×."
            )
        for n in series:
            p95 = (metrics.get(f"{n}_{p}95_ms") or {}).get("value")
            caption += (
                f" {n}: median {_value_ci(metrics.get(f'{n}_{p}50_ms'))} ms, p95 {_num(p95)} ms"
                f" ({series[n].get('above', 0)} {calls} slower than the last bin)."
            )
        rows = []
        for n, s in series.items():
            for j, count in enumerate(s["counts"]):
                rows.append(
                    [Cell(n), Cell(f"{_num(s['edges'][j])}–{_num(s['edges'][j + 1])}"), Cell(str(count), cls="num")]
                )
        blocks.append(
            Figure(
                "Latency distributions",
                svg.latency_histograms(series, medians=medians),
                caption,
                Table(["model", unit, "calls"], rows, caption="Histogram bins"),
            )
        )
    keys = ("pairs", "warmup", "measured_s", "threads", "batch_size", "prompt_length", "new_tokens", "kv_cache")
    facts = [(k, check.get(k)) for k in (*keys, "device", "timed", "machine")]
    rows = [[Cell(k), Cell(_plain(v))] for k, v in facts if v is not None]
    if rows:
        blocks.append(Table(["timing", "value"], rows, caption="How the timings were taken"))
    return blocks


def _episode_note(check: Mapping[str, Any]) -> str:
    """What one timed call of a language model was, and whether each model decoded with its cache."""
    cache = check.get("kv_cache") if isinstance(check.get("kv_cache"), Mapping) else {}
    uses = ", ".join(f"{who} {'yes' if cache.get(who) else 'no'}" for who in ("teacher", "student") if who in cache)
    text = (
        f"Each timed call is one greedy generation episode on {check.get('batch_size')} prompt(s): "
        f"{check.get('prompt_length')} prompt tokens, {check.get('new_tokens')} new tokens each (end-of-sequence "
        "ignored). Time to first token is the prefill and the first argmax; each later token is one decode step."
    )
    if uses:
        text += f" Decoded with a key-value cache: {uses}."
    if check.get("note"):
        text += f" {check['note']}."
    return text


def _regression_blocks(check: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    metrics = check.get("metrics") or {}
    bounds = {b["metric"]: b for b in check.get("bounds", []) if b.get("slice") is None}
    rows = []
    for name, m in metrics.items():
        b = bounds.get(name)
        rows.append(
            svg.BoundRow(
                label=name,
                value=m.get("value"),
                ci=_as_ci(m.get("ci")),
                bound=float(b["bound"]) if b else None,
                op=b["op"] if b else "max",
                ok=bool(b.get("ok")) if b else True,
                reference=1.0 if name.endswith("_ratio") else 0.0,
            )
        )
    if rows:
        worse = [r.label for r in rows if r.bound is not None and not r.ok]
        caption = (
            "Change of each metric from the baseline to this student (positive: worse; a ratio: above 1 is worse), "
            "with its interval"
        )
        caption += "; bounded changes show their bound (red tick, failing side shaded)"
        caption += f". Over the bound: {', '.join(worse)}." if worse else "."
        blocks.append(
            Figure("Regression against the baseline", svg.bound_chart(rows, title="Changes from the baseline"), caption)
        )
    baseline, candidate = check.get("baseline"), check.get("candidate")
    if isinstance(baseline, Mapping) and isinstance(candidate, Mapping):
        keys = [k for k in ("accuracy", "top1", "kl", "ece", "p50_ms") if k in baseline or k in candidate]
        table_rows = []
        for k in keys:
            b, c = baseline.get(k), candidate.get(k)
            delta = c - b if isinstance(b, (int, float)) and isinstance(c, (int, float)) else None
            table_rows.append(
                [Cell(k), Cell(_num(b), cls="num"), Cell(_num(c), cls="num"), Cell(_num(delta), cls="num")]
            )
        where = baseline.get("model") or baseline.get("file")
        caption = f"Baseline ({baseline.get('mode', '?')} mode: {where})"
        discordant = baseline.get("discordant")
        if isinstance(discordant, Mapping):
            caption += (
                f"; examples only the baseline gets right: {discordant.get('baseline_only_right')}, only this "
                f"student: {discordant.get('candidate_only_right')}"
            )
        blocks.append(Table(["metric", "baseline", "this student", "change"], table_rows, caption=caption))
    return blocks


def _tokens_shown(example: Mapping[str, Any], part: str) -> str:
    """An example's prompt or continuation: its decoded text when the dataset could decode it, else its ids."""
    text = example.get(part)
    if isinstance(text, str):
        return text
    ids = example.get(f"{part}_ids")
    return " ".join(str(i) for i in ids) if isinstance(ids, list) else "—"


def _generation_blocks(check: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    kv = check.get("kv_cache") or {}
    generated = check.get("generated_tokens") or {}
    facts = [
        ("prompts", check.get("prompts")),
        ("sequences skipped (too short)", check.get("skipped")),
        ("prompt", check.get("prompt_source")),
        ("prompt tokens", check.get("prompt_tokens")),
        ("max new tokens", check.get("max_new_tokens")),
        ("end-of-sequence id", check.get("eos")),
        ("tokens generated", ", ".join(f"{k} {_count(v)}" for k, v in generated.items()) or None),
        ("key-value cache", ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in kv.items()) or None),
        ("torch threads", check.get("threads")),
    ]
    rows = [[Cell(k), Cell(_plain(v))] for k, v in facts if v is not None]
    if rows:
        caption = (
            "Teacher and student each continue the same prompts greedily; continuations are cut after the first "
            "end-of-sequence token, and every metric is a mean over prompts (intervals resample prompts)"
        )
        blocks.append(Table(["generation", "value"], rows, caption=caption))
    examples = check.get("examples")
    if isinstance(examples, list) and examples:
        rows = []
        for ex in examples:
            prompt = _tokens_shown(ex, "prompt")
            if ex.get("prompt_truncated"):
                prompt = "…" + prompt
            rows.append(
                [
                    Cell(str(ex.get("id")), cls="code"),
                    Cell(_num(ex.get("first_divergence")), cls="num"),
                    Cell(prompt, cls="code"),
                    Cell(_tokens_shown(ex, "teacher"), cls="code"),
                    Cell(_tokens_shown(ex, "student"), cls="code"),
                ]
            )
        caption = "The prompts where the student leaves the teacher earliest (first differing token, counted from 0)"
        blocks.append(Table(["id", "diverges at", "prompt (end)", "teacher", "student"], rows, caption=caption))
    return blocks


_KIND_BLOCKS = {
    "calibration": _calibration_blocks,
    "agreement": _agreement_blocks,
    "slices": _slices_blocks,
    "copied_errors": _copied_blocks,
    "leakage": _leakage_blocks,
    "latency": _latency_blocks,
    "regression": _regression_blocks,
    "generation": _generation_blocks,
}


def _token_note(check: Mapping[str, Any]) -> Note | None:
    """What a reviewer must know to read a check on token (language-model) data; None for other data."""
    tokens, sequences = check.get("tokens"), check.get("sequences")
    if not isinstance(tokens, int) or not isinstance(sequences, int):
        return None
    per = f"{tokens / sequences:.0f}" if sequences else "0"
    return Note(
        f"Token-level data: {tokens:,} scored next-token positions in {sequences:,} sequences "
        f"(about {per} a sequence). Each metric is a mean over scored tokens (the token-weighted "
        "mean); quantiles such as kl_p99 are over tokens. Tokens of one sequence are not independent, "
        "so every interval resamples whole sequences: it is wider than a token-level bootstrap would "
        "pretend, and it narrows with more sequences, not with longer ones."
    )


def _section(suite: Mapping[str, Any], check: Mapping[str, Any], anchor: str) -> Section:
    kind = str(check.get("kind", ""))
    outcome = str(check.get("outcome", ""))
    gate = _gate_of(suite, check)
    blocks: list[Block] = []
    if outcome != "error":
        if kind != "regression":
            figure = _bound_figure(check, gate)
            if figure is not None:
                blocks.append(figure)
        try:
            blocks += _KIND_BLOCKS.get(kind, lambda c: [])(check)
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as e:
            # a results.json from another version: show what can be shown, and say what could not
            blocks.append(
                Note(
                    f"Charts for this check could not be drawn from results.json ({type(e).__name__}: {e}).",
                    cls="muted",
                )
            )
        table = _metrics_table(check)
        if table is not None:
            blocks.append(table)
        token_note = _token_note(check)
        if token_note is not None:
            blocks.insert(0, token_note)
    models = check.get("models") or {}
    facts = [f"dataset '{check.get('dataset')}'"] if check.get("dataset") else []
    if isinstance(check.get("tokens"), int) and isinstance(check.get("sequences"), int):
        facts.append(f"{check['tokens']:,} scored tokens in {check['sequences']:,} sequences")
    if models:
        facts.append(", ".join(f"{role} '{name}'" for role, name in models.items()))
    facts.append(f"gate {gate}")
    if isinstance(check.get("duration_s"), (int, float)):
        facts.append(f"{check['duration_s']:.2f} s")
    return Section(
        anchor=anchor,
        suite=str(suite.get("name", "")),
        check_id=str(check.get("id", "")),
        kind=kind,
        outcome=outcome,
        message=str(check.get("message") or ""),
        facts=" · ".join(facts),
        blocks=blocks,
    )


# -- provenance ------------------------------------------------------------------------------


def _provenance(doc: Mapping[str, Any]) -> list[Table]:
    tables = []
    models = doc.get("models") or {}
    rows = []
    for name, m in models.items():
        where = m.get("path") or m.get("factory") or "—"
        if m.get("weights"):
            where = f"{where} + {m['weights']}"
        sha = m.get("sha256") or ""
        rows.append(
            [
                Cell(str(name)),
                Cell(str(m.get("format") or "—")),
                Cell(str(where), cls="code"),
                Cell(sha[:12] or "—", cls="code nowrap", title=sha),
                Cell("—" if m.get("params") is None else f"{m['params']:,}", cls="num"),
                Cell(_size(m.get("bytes")), cls="num"),
                Cell("yes (below)" if isinstance(m.get("manifest"), Mapping) else "—"),
            ]
        )
    tables.append(
        Table(["model", "format", "path / factory", "sha256", "parameters", "size", "trainer manifest"], rows, "Models")
    )
    rows = [
        [
            Cell(str(name)),
            Cell(str(d.get("source") or d.get("path") or "—"), cls="code"),
            Cell(str(d.get("sha256") or "")[:12] or "—", cls="code nowrap", title=str(d.get("sha256") or "")),
            Cell(str(d.get("n", "—")), cls="num"),
        ]
        for name, d in (doc.get("datasets") or {}).items()
    ]
    tables.append(Table(["dataset", "source / path", "sha256", "examples"], rows, "Datasets"))
    env = dict(doc.get("environment") or {})
    run = [("created", doc.get("created")), ("command", " ".join(map(str, doc.get("command") or [])) or None)]
    git = env.pop("git", None)
    if isinstance(git, Mapping):
        commit = str(git.get("commit") or "—")
        run.append(("git commit", commit + (" (with uncommitted changes)" if git.get("dirty") else "")))
    elif "git" in (doc.get("environment") or {}):
        run.append(("git commit", "— (not a git repository, or git is missing)"))
    run.append(("device", env.pop("device", None)))
    packages = env.pop("packages", None)
    rows = [[Cell(k), Cell(_plain(v), cls="code" if k in ("command", "git commit") else "")] for k, v in run if v]
    rows += [[Cell(str(k)), Cell(_plain(v))] for k, v in env.items()]
    if isinstance(packages, Mapping):
        rows.append([Cell("packages"), Cell(", ".join(f"{k} {v}" for k, v in packages.items() if v))])
    tables.append(Table(["run", ""], rows, "Run and environment"))
    for name, m in models.items():
        manifest = m.get("manifest")
        if isinstance(manifest, Mapping):
            tables.append(_manifest_table(str(name), manifest))
    return tables


def _manifest_table(name: str, manifest: Mapping[str, Any]) -> Table:
    """The trainer's manifest.json (``distill-eval train``), reduced to what explains the student."""
    teacher = manifest.get("teacher") or {}
    student = manifest.get("student") or {}
    epochs = manifest.get("epochs") or []
    last = epochs[-1] if epochs and isinstance(epochs[-1], Mapping) else {}
    selected = student.get("selected_epoch")
    chosen = next((e for e in epochs if isinstance(e, Mapping) and e.get("epoch") == selected), last)
    facts: list[tuple[str, Any]] = [
        ("file", manifest.get("path")),
        ("status", manifest.get("status")),
        ("created / updated", f"{manifest.get('created', '—')} / {manifest.get('updated', '—')}"),
        ("command", " ".join(map(str, manifest.get("command") or [])) or None),
        ("config file", manifest.get("config_file")),
        ("seed", manifest.get("seed")),
        ("teacher", f"{teacher.get('spec', '—')} (sha256 {str(teacher.get('sha256') or '—')[:16]})"),
        ("training data", manifest.get("data")),
        ("epochs run", len(epochs)),
        ("selected epoch", selected),
        ("stopped early", student.get("stopped_early")),
        ("selected epoch's validation", {k: v for k, v in chosen.items() if k != "epoch"} if chosen else None),
        ("student sha256 (manifest)", student.get("sha256")),
    ]
    rows = [
        [Cell(k), Cell(_plain(v), cls="code" if k in ("command", "file") else "")] for k, v in facts if v is not None
    ]
    return Table(["", ""], rows, f"Trainer manifest of model '{name}'")


# -- the whole report ------------------------------------------------------------------------


def build_report_data(doc: Mapping[str, Any]) -> ReportData:
    """Everything report.html shows, from a results document (the content of results.json).

    Parameters
    ----------
    doc : dict
        A results document, schema 1.
    """
    suites = doc.get("suites") or []
    anchors: dict[tuple[int, int], str] = {}
    sections, problems = [], []
    n = 0
    for si, suite in enumerate(suites):
        for ci, check in enumerate(suite.get("checks", [])):
            n += 1
            anchor = anchors[si, ci] = f"check-{n}"
            sections.append(_section(suite, check, anchor))
            outcome = check.get("outcome")
            if outcome in ("failed", "error", "warned"):
                where = f"{suite.get('name')} :: {check.get('id')}"
                problems.append(
                    Cell(
                        f"{_MARKS[outcome]} {where} ({outcome}): {check.get('message', '')}",
                        cls=f"outcome {outcome}",
                        href="#" + anchor,
                    )
                )
    counts = {o: int((doc.get("counts") or {}).get(o, 0)) for o in OUTCOMES}
    command = " ".join(map(str, doc.get("command") or []))
    return ReportData(
        title=f"distill_eval report: {doc.get('verdict', '?')}",
        verdict=str(doc.get("verdict", "?")),
        counts=counts,
        gates=_gates(doc),
        created=str(doc.get("created", "")),
        command=command,
        subject=_subject(doc),
        partial=_partial_note(doc),
        problems=problems,
        checks=_checks_table(doc, anchors),
        sections=sections,
        provenance=_provenance(doc),
    )
