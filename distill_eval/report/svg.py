"""Small inline-SVG charts for report.html: no scripts, no external assets, every text escaped.

Each function takes plain numbers (as stored in results.json) and returns one
``<svg>`` element as a string. Text that reaches the markup (labels, slice
names, class names) goes through :func:`text`, so a hostile name stays text.
Charts carry ``role="img"`` and a ``<title>``; the report pairs each with a
caption or a table holding the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from distill_eval.checks.judge import format_number

__all__ = [
    "COLORS",
    "BoundRow",
    "IntervalBar",
    "bound_chart",
    "confidence_histograms",
    "grouped_bars",
    "heatmap",
    "interval_bars",
    "latency_histograms",
    "reliability_diagram",
    "text",
]

#: one colour per role, the same in every chart
COLORS = {"teacher": "#4c72b0", "student": "#dd8452", "chance": "#9aa4ae", "ok": "#1a7f37", "bad": "#cf222e"}
_GRID = "#d8dee4"
_INK = "#1b1f24"
_MUTED = "#6e7781"
_FONT = 11


def text(value: object) -> str:
    """Escape a value for SVG text or an attribute."""
    return escape(str(value), quote=True)


def _f(x: float) -> str:
    """A coordinate: two decimals, no trailing zeros."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _amount(x: float) -> str:
    """A count on an axis or a bar: whole with thousands separators from 100 up, else 3 significant digits."""
    return f"{x:,.0f}" if abs(x) >= 100 or float(x).is_integer() else format_number(x)


def _compact(n: int) -> str:
    """A count in at most four characters, for cells: 950, 1.2k, 12k, 3.4M."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(n)


def _short(label: str, limit: int) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _color(name: str, fallback: str = _MUTED) -> str:
    return COLORS.get(name, fallback)


class _Canvas:
    """Collects SVG elements; :meth:`render` wraps them in an ``<svg>`` with a title."""

    def __init__(self, width: float, height: float, title: str):
        self.width, self.height, self.title = width, height, title
        self.parts: list[str] = []

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def line(
        self, x1: float, y1: float, x2: float, y2: float, *, stroke: str = _GRID, width: float = 1, dash: str = ""
    ) -> None:
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(
            f'<line x1="{_f(x1)}" y1="{_f(y1)}" x2="{_f(x2)}" y2="{_f(y2)}" stroke="{stroke}" '
            f'stroke-width="{_f(width)}"{dashes}/>'
        )

    def rect(
        self,
        x: float,
        y: float,
        w: float,
        h: float,
        *,
        fill: str,
        opacity: float = 1.0,
        tip: str = "",
        stroke: str = "",
    ) -> None:
        extra = f' fill-opacity="{_f(opacity)}"' if opacity < 1 else ""
        extra += f' stroke="{stroke}"' if stroke else ""
        body = f"<title>{text(tip)}</title>" if tip else ""
        end = f">{body}</rect>" if body else "/>"
        self.add(
            f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(max(w, 0))}" height="{_f(max(h, 0))}" fill="{fill}"{extra}{end}'
        )

    def circle(self, x: float, y: float, r: float, *, fill: str, tip: str = "", stroke: str = "#fff") -> None:
        body = f"<title>{text(tip)}</title>" if tip else ""
        self.add(f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{_f(r)}" fill="{fill}" stroke="{stroke}">{body}</circle>')

    def label(
        self,
        x: float,
        y: float,
        value: object,
        *,
        anchor: str = "start",
        size: float = _FONT,
        fill: str = _INK,
        weight: str = "",
        rotate: float = 0,
        tip: str = "",
    ) -> None:
        bold = f' font-weight="{weight}"' if weight else ""
        turn = f' transform="rotate({_f(rotate)} {_f(x)} {_f(y)})"' if rotate else ""
        body = f"<title>{text(tip)}</title>" if tip else ""
        self.add(
            f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" font-size="{_f(size)}" fill="{fill}"{bold}{turn}>'
            f"{body}{text(value)}</text>"
        )

    def polyline(self, points: Sequence[tuple[float, float]], *, stroke: str, width: float = 1.5) -> None:
        if len(points) < 2:
            return
        coords = " ".join(f"{_f(x)},{_f(y)}" for x, y in points)
        self.add(f'<polyline points="{coords}" fill="none" stroke="{stroke}" stroke-width="{_f(width)}"/>')

    def legend(self, x: float, y: float, items: Iterable[tuple[str, str]]) -> None:
        for i, (name, color) in enumerate(items):
            self.rect(x, y + i * 16 - 9, 10, 10, fill=color)
            self.label(x + 15, y + i * 16, name)

    def render(self) -> str:
        return (
            f'<svg class="chart" role="img" aria-label="{text(self.title)}" '
            f'width="{_f(self.width)}" height="{_f(self.height)}" viewBox="0 0 {_f(self.width)} {_f(self.height)}" '
            f'font-family="system-ui, sans-serif"><title>{text(self.title)}</title>' + "".join(self.parts) + "</svg>"
        )


def _scale(d0: float, d1: float, r0: float, r1: float):
    span = (d1 - d0) or 1.0
    return lambda v: r0 + (float(v) - d0) / span * (r1 - r0)


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out, v = [], first
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def _padded(values: Iterable[float], *, pad: float = 0.08) -> tuple[float, float]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    if hi == lo:
        delta = abs(lo) * 0.1 or 1.0
        return lo - delta, hi + delta
    margin = (hi - lo) * pad
    return lo - margin, hi + margin


# -- calibration ---------------------------------------------------------------------


def reliability_diagram(
    series: Mapping[str, Mapping[str, Sequence[Any]]], *, title: str = "Reliability diagram"
) -> str:
    """Accuracy against mean confidence per bin, one line per model, and the bin counts below.

    Parameters
    ----------
    series : mapping of model role to bins
        Each ``{"edges", "count", "confidence", "accuracy"}`` (None in empty bins).
    """
    size, left, top, lower = 260.0, 50.0, 16.0, 70.0
    legend_x = left + size + 24
    width, height = legend_x + 120, top + size + 40 + lower + 34
    c = _Canvas(width, height, title)
    x = _scale(0, 1, left, left + size)
    y = _scale(0, 1, top + size, top)
    for t in _ticks(0, 1):
        c.line(x(t), top, x(t), top + size)
        c.line(left, y(t), left + size, y(t))
        c.label(x(t), top + size + 14, format_number(t), anchor="middle", fill=_MUTED)
        c.label(left - 6, y(t) + 4, format_number(t), anchor="end", fill=_MUTED)
    c.line(x(0), y(0), x(1), y(1), stroke=_MUTED, dash="4 3")
    c.label(left + size / 2, top + size + 30, "mean confidence in bin", anchor="middle")
    c.label(14, top + size / 2, "accuracy in bin", anchor="middle", rotate=-90)
    biggest = max((max(s["count"], default=0) for s in series.values()), default=0) or 1
    for name, s in series.items():
        color = _color(name)
        points = [
            (x(conf), y(acc))
            for conf, acc, n in zip(s["confidence"], s["accuracy"], s["count"], strict=False)
            if n and conf is not None and acc is not None
        ]
        c.polyline(points, stroke=color)
        for conf, acc, n in zip(s["confidence"], s["accuracy"], s["count"], strict=False):
            if n and conf is not None and acc is not None:
                r = 2.5 + 4.5 * math.sqrt(n / biggest)
                tip = f"{name}: {n} examples, confidence {format_number(conf)}, accuracy {format_number(acc)}"
                c.circle(x(conf), y(acc), r, fill=color, tip=tip)
    # bin counts on a log scale, the models side by side in each bin
    base = top + size + 40 + lower
    names = list(series)
    edges = next(iter(series.values()))["edges"] if series else [0, 1]
    log_max = math.log10(1 + biggest)
    for i, name in enumerate(names):
        s = series[name]
        for j, n in enumerate(s["count"]):
            lo, hi = x(s["edges"][j]), x(s["edges"][j + 1])
            w = (hi - lo) / max(len(names), 1)
            h = lower * math.log10(1 + n) / log_max if n else 0
            c.rect(lo + i * w + 0.5, base - h, max(w - 1, 0.5), h, fill=_color(name), tip=f"{name}: {n} examples")
    c.line(left, base, left + size, base, stroke=_MUTED)
    for t in (1, 10, 100, 1000, 10000, 100000):
        if t <= biggest:
            yy = base - lower * math.log10(1 + t) / log_max
            c.line(left - 3, yy, left, yy, stroke=_MUTED)
            c.label(left - 6, yy + 4, f"{t:,}", anchor="end", size=9, fill=_MUTED)
    c.label(
        left + size / 2, base + 16, f"examples per bin (log scale, {len(edges) - 1} bins)", anchor="middle", fill=_MUTED
    )
    c.legend(legend_x, top + 10, [(n, _color(n)) for n in names])
    c.label(legend_x, top + 16 * len(names) + 14, "dashed: perfect", fill=_MUTED)
    c.label(legend_x, top + 16 * len(names) + 28, "calibration", fill=_MUTED)
    c.label(legend_x, top + 16 * len(names) + 48, "dot area ∝ examples", fill=_MUTED)
    return c.render()


def confidence_histograms(
    edges: Sequence[float], series: Mapping[str, Mapping[str, Sequence[int]]], *, title: str = "Confidence histograms"
) -> str:
    """One panel per model: right predictions above the axis, wrong ones below, by confidence.

    The halves have separate scales (wrong predictions are few), written at their ends.
    """
    panel, gap, left, top, half = 230.0, 30.0, 70.0, 22.0, 70.0
    names = list(series)
    width = left + len(names) * (panel + gap)
    height = top + 2 * half + 46
    c = _Canvas(width, height, title)
    top_max = max((max(s["correct"], default=0) for s in series.values()), default=0) or 1
    bottom_max = max((max(s["wrong"], default=0) for s in series.values()), default=0) or 1
    axis = top + half
    for k, name in enumerate(names):
        x0 = left + k * (panel + gap)
        x = _scale(edges[0], edges[-1], x0, x0 + panel)
        s = series[name]
        c.label(x0 + panel / 2, top - 8, name, anchor="middle", weight="600", fill=_color(name))
        for j in range(len(edges) - 1):
            lo, hi = x(edges[j]), x(edges[j + 1])
            right, wrong = s["correct"][j], s["wrong"][j]
            span = f"confidence {format_number(edges[j])}–{format_number(edges[j + 1])}"
            h = half * right / top_max
            c.rect(lo + 0.5, axis - h, hi - lo - 1, h, fill=_color(name), tip=f"{name}: {right} right, {span}")
            h = half * wrong / bottom_max
            c.rect(lo + 0.5, axis, hi - lo - 1, h, fill=COLORS["bad"], tip=f"{name}: {wrong} wrong, {span}")
        c.line(x0, axis, x0 + panel, axis, stroke=_MUTED)
        for t in _ticks(edges[0], edges[-1], 4):
            c.label(x(t), top + 2 * half + 14, format_number(t), anchor="middle", size=9, fill=_MUTED)
        c.label(x0 + panel / 2, top + 2 * half + 30, "confidence", anchor="middle", fill=_MUTED)
    c.label(left - 6, top + 8, f"{top_max:,} right", anchor="end", size=9, fill=_MUTED)
    c.label(left - 6, axis + 4, "0", anchor="end", size=9, fill=_MUTED)
    c.label(left - 6, top + 2 * half, f"{bottom_max:,} wrong", anchor="end", size=9, fill=COLORS["bad"])
    return c.render()


# -- agreement -----------------------------------------------------------------------


def heatmap(
    classes: Sequence[object],
    counts: Sequence[Sequence[int]],
    *,
    title: str = "Teacher × student predictions",
    rows: str = "teacher predicts",
    columns: str = "student predicts",
) -> str:
    """A count matrix: agreement (the diagonal) in blue, disagreement in red, each on its own scale."""
    k = len(classes)
    cell = max(8.0, min(28.0, 320.0 / max(k, 1)))
    left, top = 64.0, 50.0
    width, height = left + k * cell + 20, top + k * cell + 20
    c = _Canvas(width, height, title)
    diag = max((counts[i][i] for i in range(k)), default=0) or 1
    off = max((counts[i][j] for i in range(k) for j in range(k) if i != j), default=0) or 1
    for i in range(k):
        c.label(left - 6, top + i * cell + cell / 2 + 4, _short(str(classes[i]), 8), anchor="end", size=9)
        c.label(left + i * cell + cell / 2, top - 6, _short(str(classes[i]), 8), anchor="middle", size=9)
        for j in range(k):
            n = int(counts[i][j])
            if i == j:
                strength, fill = (n / diag) if n else 0.0, COLORS["teacher"]
            else:
                strength, fill = (math.sqrt(n / off)) if n else 0.0, COLORS["bad"]
            tip = f"teacher {classes[i]}, student {classes[j]}: {n}"
            if n:
                c.rect(left + j * cell, top + i * cell, cell, cell, fill=fill, opacity=0.12 + 0.88 * strength, tip=tip)
            else:
                c.rect(left + j * cell, top + i * cell, cell, cell, fill="#ffffff", stroke=_GRID, tip=tip)
            if n and cell >= 20:
                ink = "#ffffff" if strength > 0.55 else _INK
                c.label(
                    left + j * cell + cell / 2,
                    top + i * cell + cell / 2 + 4,
                    _compact(n),
                    anchor="middle",
                    size=9,
                    fill=ink,
                )
    c.label(left + k * cell / 2, 16, f"{columns} →", anchor="middle")
    c.label(14, top + k * cell / 2, f"{rows} →", anchor="middle", rotate=90)
    return c.render()


# -- bounds, slices, regression ------------------------------------------------------


@dataclass(frozen=True)
class BoundRow:
    """One metric's value and interval, against its bound (None: against zero, e.g. a change)."""

    label: str
    value: float | None
    ci: tuple[float, float] | None
    bound: float | None = None
    op: str = "max"  # "min" or "max"
    ok: bool = True
    reference: float = 0.0  # drawn when there is no bound: "no change" (0 for a difference, 1 for a ratio)


def bound_chart(rows: Sequence[BoundRow], *, title: str = "Bounded metrics against their bounds") -> str:
    """One line per metric, each on its own scale: the failing side of the bound shaded, the interval, the estimate.

    A row without a bound is drawn against its ``reference`` (a dotted line), for changes from a baseline.
    """
    label_w, plot_w, text_w, row_h, top = 190.0, 280.0, 220.0, 30.0, 8.0
    width, height = label_w + plot_w + text_w, top + row_h * len(rows) + 8
    c = _Canvas(width, height, title)
    x_min, x_max = label_w + 8, label_w + plot_w - 8
    for k, r in enumerate(rows):
        yc = top + k * row_h + row_h / 2
        reference = r.reference if r.bound is None else r.bound
        values = [reference, *(r.ci or ()), *(() if r.value is None else (r.value,))]
        lo, hi = _padded(values, pad=0.25)
        x = _scale(lo, hi, x_min, x_max)
        c.label(label_w - 6, yc + 4, _short(r.label, 30), anchor="end", tip=r.label)
        xb = x(reference)
        c.line(x_min, yc, x_max, yc, stroke=_GRID)
        if r.bound is None:
            c.line(xb, yc - 11, xb, yc + 11, stroke=_MUTED, dash="2 2")
        else:
            if r.op == "min":
                c.rect(x_min, yc - 9, xb - x_min, 18, fill=COLORS["bad"], opacity=0.1)
            else:
                c.rect(xb, yc - 9, x_max - xb, 18, fill=COLORS["bad"], opacity=0.1)
            c.line(xb, yc - 11, xb, yc + 11, stroke=COLORS["bad"], width=1.5)
        color = _INK if r.bound is None else (COLORS["ok"] if r.ok else COLORS["bad"])
        if r.ci is not None:
            c.line(x(r.ci[0]), yc, x(r.ci[1]), yc, stroke=color, width=2.5)
            for end in r.ci:
                c.line(x(end), yc - 5, x(end), yc + 5, stroke=color, width=1.5)
        rel = ">=" if r.op == "min" else "<="
        limit = "" if r.bound is None else f" {rel} {format_number(r.bound)} {'✓' if r.ok else '✗'}"
        if r.value is None:
            c.label((x_min + x_max) / 2, yc + 4, "undefined", anchor="middle", fill=_MUTED)
            summary = f"undefined{limit}"
        else:
            c.circle(x(r.value), yc, 4.5, fill=color, tip=f"{r.label} = {format_number(r.value)}")
            ci = f" [{format_number(r.ci[0])}, {format_number(r.ci[1])}]" if r.ci else ""
            summary = f"{format_number(r.value)}{ci}{limit}"
        failing = r.bound is not None and not r.ok
        c.label(
            label_w + plot_w + 6,
            yc + 4,
            summary,
            fill=COLORS["bad"] if failing else _INK,
            weight="600" if failing else "",
        )
    return c.render()


@dataclass(frozen=True)
class IntervalBar:
    """One bar: a value with its interval, its support, and whether it met the bound."""

    label: str
    value: float | None
    ci: tuple[float, float] | None
    support: int | None = None
    ok: bool = True
    muted: bool = False  # e.g. a slice with too little support to judge


def interval_bars(
    bars: Sequence[IntervalBar],
    *,
    bound: float | None = None,
    op: str = "min",
    title: str = "Per-slice retention",
    axis: str = "retention (student / teacher)",
) -> str:
    """Horizontal bars with interval whiskers, the support written beside each, and the bound as a line."""
    label_w, plot_w, text_w, row_h, top = 190.0, 300.0, 200.0, 24.0, 10.0
    width, height = label_w + plot_w + text_w, top + row_h * len(bars) + 44
    c = _Canvas(width, height, title)
    values = [0.0, 1.0, *([bound] if bound is not None else [])]
    for b in bars:
        values += [v for v in (b.value, *(b.ci or ())) if v is not None]
    hi = max(values) * 1.05
    x = _scale(0.0, hi, label_w, label_w + plot_w)
    bottom = top + row_h * len(bars)
    for t in _ticks(0, hi, 5):
        c.line(x(t), top, x(t), bottom, stroke=_GRID)
        c.label(x(t), bottom + 14, format_number(t), anchor="middle", size=9, fill=_MUTED)
    c.label(label_w + plot_w / 2, bottom + 32, axis, anchor="middle", fill=_MUTED)
    for k, b in enumerate(bars):
        yc = top + k * row_h + row_h / 2
        c.label(label_w - 6, yc + 4, _short(b.label, 30), anchor="end", tip=b.label)
        color = _MUTED if b.muted else (COLORS["ok"] if b.ok else COLORS["bad"])
        if b.value is not None:
            c.rect(label_w, yc - 7, x(b.value) - label_w, 14, fill=color, opacity=0.35 if b.muted else 0.8)
        if b.ci is not None:
            c.line(x(b.ci[0]), yc, x(b.ci[1]), yc, stroke=_INK, width=1.5)
            for end in b.ci:
                c.line(x(end), yc - 4, x(end), yc + 4, stroke=_INK, width=1.5)
        ci = f" [{format_number(b.ci[0])}, {format_number(b.ci[1])}]" if b.ci else ""
        support = "" if b.support is None else f"  n={b.support}"
        note = " (too few)" if b.muted else ""
        c.label(label_w + plot_w + 6, yc + 4, f"{format_number(b.value)}{ci}{support}{note}", size=10)
    if bound is not None:
        c.line(x(bound), top - 4, x(bound), bottom + 2, stroke=COLORS["bad"], width=1.5, dash="5 3")
        c.label(x(bound) + 3, top + 2, f"{op} {format_number(bound)}", size=9, fill=COLORS["bad"])
    return c.render()


# -- copied errors -------------------------------------------------------------------


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    axis: str = "examples",
    colors: Mapping[str, str] | None = None,
) -> str:
    """Vertical bars, one group per category and one bar per series, values written on top."""
    left, top, plot_h, group_w = 50.0, 16.0, 170.0, 150.0
    names = list(series)
    width = left + group_w * len(groups) + 140
    height = top + plot_h + 52
    c = _Canvas(width, height, title)
    biggest = max((v for vals in series.values() for v in vals if v is not None), default=0) or 1
    y = _scale(0, biggest * 1.12, top + plot_h, top)
    for t in _ticks(0, biggest * 1.12, 4):
        c.line(left, y(t), left + group_w * len(groups), y(t))
        c.label(left - 6, y(t) + 4, _amount(t), anchor="end", size=9, fill=_MUTED)
    bar_w = (group_w - 30) / max(len(names), 1)
    palette = colors or {}
    for g, group in enumerate(groups):
        x0 = left + g * group_w + 15
        for k, name in enumerate(names):
            v = series[name][g]
            color = palette.get(name, _color(name))
            if v is not None:
                c.rect(x0 + k * bar_w, y(v), bar_w - 4, y(0) - y(v), fill=color, tip=f"{name}, {group}: {_amount(v)}")
                c.label(x0 + k * bar_w + (bar_w - 4) / 2, y(v) - 4, _amount(v), anchor="middle", size=10)
        c.label(x0 + (group_w - 30) / 2, top + plot_h + 16, _short(group, 26), anchor="middle", tip=group)
    c.line(left, y(0), left + group_w * len(groups), y(0), stroke=_MUTED)
    c.label(14, top + plot_h / 2, axis, anchor="middle", rotate=-90, fill=_MUTED)
    c.legend(left + group_w * len(groups) + 16, top + 14, [(n, palette.get(n, _color(n))) for n in names])
    return c.render()


# -- latency -------------------------------------------------------------------------


def latency_histograms(
    series: Mapping[str, Mapping[str, Any]],
    *,
    medians: Mapping[str, float | None] | None = None,
    title: str = "Latency per call",
    unit: str = "ms",
) -> str:
    """Each model's call times as a histogram on one shared axis (logarithmic when they differ a lot)."""
    left, top, plot_w, plot_h = 50.0, 16.0, 460.0, 160.0
    width, height = left + plot_w + 130, top + plot_h + 50
    c = _Canvas(width, height, title)
    edges = [e for s in series.values() for e in s["edges"] if e is not None and e > 0]
    lo, hi = (min(edges), max(edges)) if edges else (0.0, 1.0)
    logarithmic = lo > 0 and hi / lo > 4
    if logarithmic:
        llo, lhi = math.log10(lo) - 0.05, math.log10(hi) + 0.05
        to_x = _scale(llo, lhi, left, left + plot_w)

        def x(v: float) -> float:
            return to_x(math.log10(max(v, lo / 10)))

        ticks = [m * 10**p for p in range(math.floor(llo), math.ceil(lhi) + 1) for m in (1, 2, 5)]
        ticks = [t for t in ticks if llo <= math.log10(t) <= lhi]
    else:
        lo2, hi2 = _padded([lo, hi], pad=0.05)
        x = _scale(lo2, hi2, left, left + plot_w)
        ticks = _ticks(lo2, hi2, 6)
    biggest = max((max(s["counts"], default=0) for s in series.values()), default=0) or 1
    y = _scale(0, biggest * 1.08, top + plot_h, top)
    for t in ticks:
        c.line(x(t), top, x(t), top + plot_h)
        c.label(x(t), top + plot_h + 14, format_number(t), anchor="middle", size=9, fill=_MUTED)
    for name, s in series.items():
        color = _color(name)
        for j, n in enumerate(s["counts"]):
            a, b = x(s["edges"][j]), x(s["edges"][j + 1])
            tip = f"{name}: {n} calls in {format_number(s['edges'][j])}–{format_number(s['edges'][j + 1])} {unit}"
            c.rect(a, y(n), max(b - a, 0.8), y(0) - y(n), fill=color, opacity=0.55, tip=tip)
        median = (medians or {}).get(name)
        if median is not None and median > 0:
            c.line(x(median), top, x(median), top + plot_h, stroke=color, width=2, dash="4 2")
    c.line(left, y(0), left + plot_w, y(0), stroke=_MUTED)
    scale = "log scale" if logarithmic else "linear scale"
    c.label(
        left + plot_w / 2, top + plot_h + 32, f"{unit} per call ({scale}); dashed: median", anchor="middle", fill=_MUTED
    )
    c.label(14, top + plot_h / 2, "calls", anchor="middle", rotate=-90, fill=_MUTED)
    c.legend(left + plot_w + 16, top + 14, [(n, _color(n)) for n in series])
    return c.render()
