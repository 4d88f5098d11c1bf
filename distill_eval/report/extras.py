"""What the check kinds record for the report: compact, JSON-ready summaries of their data.

The report is rendered from results.json alone (so ``distill-eval report``
reproduces it), so everything a chart needs is computed where the data is, in
the check, and stored as a per-check extra. Every summary here is
O(classes² + bins + examples shown) in size, never one value per example:

- ``calibration``: ``reliability`` (per-bin count, mean confidence and accuracy
  of each model) and ``confidence_histogram`` (counts of right and wrong
  predictions per confidence bin);
- ``agreement``: ``confusion`` (teacher × student prediction counts) and
  ``gallery`` (the student's most confident disagreements with the teacher);
- ``copied_errors``: ``breakdown`` (what the student does where the teacher
  errs, against chance) and ``gallery`` (its most confident copied errors).

Gallery rows carry the input itself when it is small and image-like (8×8 or
28×28 grey, or a small colour image; ``input.kind = "image"``, pixels as
base64 bytes scaled by the dataset's range) and otherwise its most unusual
features (``input.kind = "features"``: largest |z-score| against the dataset).
"""

from __future__ import annotations

import base64
import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from distill_eval.metrics.calibration import ReliabilityBins, reliability_bins

if TYPE_CHECKING:
    from distill_eval.data import Dataset
    from distill_eval.outputs import ModelOutputs

__all__ = [
    "GALLERY_SIZE",
    "MAX_CONFUSION_CLASSES",
    "agreement_extras",
    "calibration_extras",
    "copied_errors_extras",
    "copy_breakdown",
    "gallery",
    "image_shape",
    "prediction_confusion",
    "reliability",
]

#: examples shown per gallery
GALLERY_SIZE = 12
#: the confusion matrix keeps at most this many classes (those most involved in disagreements)
MAX_CONFUSION_CLASSES = 30
#: confidence histogram bins
HISTOGRAM_BINS = 20
#: inputs with more values than this get neither a picture nor feature z-scores
_MAX_FEATURES = 4096
_TOP_FEATURES = 5
_STAT_ROWS = 10_000  # rows that estimate feature means and spreads
_FLAT_IMAGES = {64: (8, 8), 784: (28, 28)}
_MAX_SIDE = 64


def _round(x: float, digits: int = 6) -> float | None:
    """A finite float rounded to ``digits`` significant digits; None for NaN (JSON has no NaN)."""
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def reliability(bins: ReliabilityBins) -> dict[str, list[Any]]:
    """A reliability diagram's bins as JSON: ``edges``, ``count``, ``confidence``, ``accuracy`` (None if empty)."""
    return {
        "edges": [_round(e) for e in bins.edges],
        "count": [int(c) for c in bins.count],
        "confidence": [_round(c) for c in bins.confidence],
        "accuracy": [_round(a) for a in bins.accuracy],
    }


def _confidence_histogram(out: ModelOutputs, y: np.ndarray, edges: np.ndarray) -> dict[str, list[int]]:
    hit = out.preds == y
    conf = out.confidence
    return {
        "correct": [int(c) for c in np.histogram(conf[hit], bins=edges)[0]],
        "wrong": [int(c) for c in np.histogram(conf[~hit], bins=edges)[0]],
    }


def _reliability_of(out: ModelOutputs, y: np.ndarray, *, bins: int, binning: str) -> ReliabilityBins:
    return reliability_bins(out.confidence, out.preds == y, bins=bins, binning=binning)  # type: ignore[arg-type]


def calibration_extras(
    teacher: ModelOutputs, student: ModelOutputs, y: np.ndarray, *, bins: int, binning: str
) -> dict[str, Any]:
    """``reliability`` and ``confidence_histogram`` of both models, for kind ``calibration``."""
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    return {
        "reliability": {
            "binning": binning,
            "student": reliability(_reliability_of(student, y, bins=bins, binning=binning)),
            "teacher": reliability(_reliability_of(teacher, y, bins=bins, binning=binning)),
        },
        "confidence_histogram": {
            "edges": [_round(e) for e in edges],
            "student": _confidence_histogram(student, y, edges),
            "teacher": _confidence_histogram(teacher, y, edges),
        },
    }


def prediction_confusion(
    teacher_pred: np.ndarray, student_pred: np.ndarray, n_classes: int, *, max_classes: int = MAX_CONFUSION_CLASSES
) -> dict[str, Any]:
    """Teacher × student prediction counts (rows: the teacher's class, columns: the student's).

    With more than ``max_classes`` classes only those most involved in
    disagreements are kept; ``omitted`` counts the examples outside the kept
    rows and columns.
    """
    t = np.asarray(teacher_pred, dtype=np.intp)
    s = np.asarray(student_pred, dtype=np.intp)
    if n_classes <= max_classes:
        classes = np.arange(n_classes)
    else:
        differ = t != s
        involved = np.bincount(t[differ], minlength=n_classes) + np.bincount(s[differ], minlength=n_classes)
        size = np.bincount(t, minlength=n_classes)
        order = np.lexsort((-size, -involved))  # most disagreements first, then the most common
        classes = np.sort(order[:max_classes])
    position = np.full(n_classes, -1, dtype=np.intp)
    position[classes] = np.arange(len(classes))
    keep = (position[t] >= 0) & (position[s] >= 0)
    m = len(classes)
    counts = np.bincount(position[t[keep]] * m + position[s[keep]], minlength=m * m).reshape(m, m)
    return {
        "classes": [int(c) for c in classes],
        "counts": counts.astype(int).tolist(),
        "omitted": int((~keep).sum()),
    }


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The picture shape of one input, when it is small and image-like; None otherwise.

    ``(64,)`` and ``(784,)`` read as 8×8 and 28×28 grey images; ``(h, w)`` and
    ``(1, h, w)`` as grey, ``(3, h, w)`` as colour (returned ``(h, w, 3)``),
    with sides of at most 64.
    """
    if len(input_shape) == 1:
        return _FLAT_IMAGES.get(input_shape[0])
    if len(input_shape) == 3 and input_shape[0] in (1, 3):
        channels, h, w = input_shape
        if 4 <= h <= _MAX_SIDE and 4 <= w <= _MAX_SIDE:
            return (h, w) if channels == 1 else (h, w, 3)
        return None
    if len(input_shape) == 2 and 4 <= input_shape[0] <= _MAX_SIDE and 4 <= input_shape[1] <= _MAX_SIDE:
        return (input_shape[0], input_shape[1])
    return None


class _Inputs:
    """Turns dataset rows into small previews (a picture, or the most unusual features)."""

    def __init__(self, x: np.ndarray, rows: np.ndarray):
        self.x = x
        self.shape = image_shape(tuple(x.shape[1:]))
        self.width = int(np.prod(x.shape[1:], dtype=np.int64))
        if self.shape is not None:
            # one grey scale for the whole gallery: the range of the pictures shown
            shown = np.asarray(x[rows], dtype=np.float64)
            finite = shown[np.isfinite(shown)]
            self.lo = float(finite.min()) if finite.size else 0.0
            self.hi = float(finite.max()) if finite.size else 1.0
        elif self.width <= _MAX_FEATURES:
            sample = np.asarray(x.reshape(len(x), -1)[:: max(1, len(x) // _STAT_ROWS)], dtype=np.float64)
            sample = np.where(np.isfinite(sample), sample, np.nan)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column has no mean: z = 0 below
                self.mean = np.nanmean(sample, axis=0)
                self.std = np.nanstd(sample, axis=0)

    def preview(self, i: int) -> dict[str, Any] | None:
        row = np.asarray(self.x[i], dtype=np.float64)
        if self.shape is not None:
            pixels = row.transpose(1, 2, 0) if len(self.shape) == 3 else row
            span = self.hi - self.lo if self.hi > self.lo else 1.0
            scaled = np.clip(np.nan_to_num((pixels - self.lo) / span), 0.0, 1.0)
            data = np.round(scaled * 255).astype(np.uint8).reshape(self.shape)
            return {"kind": "image", "shape": list(self.shape), "pixels": base64.b64encode(data.tobytes()).decode()}
        if self.width > _MAX_FEATURES:
            return None
        flat = row.reshape(-1)
        spread = np.where(self.std > 0, self.std, np.inf)  # a constant (or all-NaN) feature has z = 0
        with np.errstate(invalid="ignore"):
            z = np.nan_to_num((flat - self.mean) / spread)
        top = np.argsort(-np.abs(z), kind="stable")[:_TOP_FEATURES]
        return {
            "kind": "features",
            "width": self.width,
            "top": [{"index": int(j), "value": _round(flat[j]), "z": _round(z[j], 3)} for j in top],
        }


def gallery(rows: np.ndarray, data: Dataset, teacher: ModelOutputs, student: ModelOutputs) -> list[dict[str, Any]]:
    """One row per example index in ``rows``: id, label, both predictions and confidences, the input.

    ``student.p_teacher`` is the probability the student gives to the teacher's
    class (how far it is from agreeing).
    """
    rows = np.asarray(rows, dtype=np.intp)
    if rows.size == 0:
        return []
    inputs = _Inputs(data.x, rows)
    out = []
    for i in rows:
        t_pred, s_pred = int(teacher.preds[i]), int(student.preds[i])
        entry: dict[str, Any] = {
            "id": str(data.ids[i]),
            "label": None if data.y is None else int(data.y[i]),
            "teacher": {"pred": t_pred, "conf": _round(teacher.confidence[i], 4)},
            "student": {
                "pred": s_pred,
                "conf": _round(student.confidence[i], 4),
                "p_teacher": _round(student.probs[i, t_pred], 4),
            },
        }
        preview = inputs.preview(int(i))
        if preview is not None:
            entry["input"] = preview
        out.append(entry)
    return out


def _most_confident(mask: np.ndarray, teacher: ModelOutputs, student: ModelOutputs, n: int) -> np.ndarray:
    """The ``n`` indices where ``mask`` holds, the student's most confident first (ties: the teacher's, then order)."""
    where = np.flatnonzero(mask)
    # rounded, so that float noise between classes does not decide ties (then: dataset order)
    s_conf, t_conf = np.round(student.confidence[where], 6), np.round(teacher.confidence[where], 6)
    order = np.lexsort((where, -t_conf, -s_conf))
    return where[order[:n]]


def agreement_extras(
    data: Dataset, teacher: ModelOutputs, student: ModelOutputs, *, n: int = GALLERY_SIZE
) -> dict[str, Any]:
    """``confusion`` and ``gallery`` (confident disagreements), for kind ``agreement``."""
    differ = teacher.preds != student.preds
    return {
        "confusion": prediction_confusion(teacher.preds, student.preds, teacher.n_classes),
        "disagreements": int(differ.sum()),
        "gallery": gallery(_most_confident(differ, teacher, student, n), data, teacher, student),
    }


def copy_breakdown(y: np.ndarray, t: np.ndarray, s: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Where the teacher errs, is the student wrong the same way, wrong differently, or right — against chance?

    Chance is a student whose errors are independent of the teacher's: on an
    example of class ``c`` it predicts ``j`` with the frequency its own
    confusion matrix gives (``P(s = j | y = c)``), as for ``chance_copy_rate``.

    Returns
    -------
    dict
        ``teacher_errors``; ``observed`` and ``chance`` (expected counts), each
        with ``same``, ``different`` and ``right``.
    """
    y, t, s = (np.asarray(a, dtype=np.intp) for a in (y, t, s))
    wrong = t != y
    confusion = np.bincount(y * n_classes + s, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    per_class = confusion.sum(axis=1)
    yw, tw = y[wrong], t[wrong]
    with np.errstate(invalid="ignore", divide="ignore"):
        p_same = np.nan_to_num(confusion[yw, tw] / per_class[yw])
        p_right = np.nan_to_num(confusion[yw, yw] / per_class[yw])
    same = int((wrong & (s == t)).sum())
    right = int((wrong & (s == y)).sum())
    n_errors = int(wrong.sum())
    return {
        "teacher_errors": n_errors,
        "observed": {"same": same, "different": n_errors - same - right, "right": right},
        "chance": {
            "same": _round(p_same.sum(), 4),
            "different": _round(n_errors - p_same.sum() - p_right.sum(), 4),
            "right": _round(p_right.sum(), 4),
        },
    }


def copied_errors_extras(
    data: Dataset, teacher: ModelOutputs, student: ModelOutputs, y: np.ndarray, *, n: int = GALLERY_SIZE
) -> dict[str, Any]:
    """``breakdown`` and ``gallery`` (the most confident copied errors), for kind ``copied_errors``."""
    copied = (teacher.preds != y) & (student.preds == teacher.preds)
    return {
        "breakdown": copy_breakdown(y, teacher.preds, student.preds, teacher.n_classes),
        "gallery": gallery(_most_confident(copied, teacher, student, n), data, teacher, student),
    }
