"""Kind ``leakage``: evaluation examples that also occur in the training data.

A score measured on examples the models were trained on says little about
new data. The check compares the evaluation dataset's inputs with those of
the dataset named by ``train``; it reads no model.

Parameters (suite keys)
-----------------------
train : str
    Required: the training dataset's name in ``[tool.distill_eval.datasets]``.
near : bool, default false
    Also count near-duplicates: evaluation examples that are not exact
    duplicates but whose nearest training example (Euclidean distance between
    flattened float32 inputs, :class:`sklearn.neighbors.NearestNeighbors`) is
    at distance ``<= near_distance``.
near_distance : float > 0, optional
    The near-duplicate threshold. Default: 0.1 × the median distance from a
    training example to its nearest *other* training example, the median taken
    over a fixed-seed sample of at most 2000 training rows
    (:func:`distill_eval.metrics.default_near_distance`). The threshold used is
    reported in the extras as ``near_distance``.

Metrics
-------
exact_duplicates
    Evaluation examples whose input is byte-for-byte identical (as float32,
    same shape) to some training input. A census of the given data: its
    interval is the value itself.
near_duplicates
    Evaluation examples that are near but not exact duplicates (undefined
    unless ``near = true``); interval as above.
duplicate_rate
    Fraction of evaluation examples that are exact duplicates, or exact *or*
    near duplicates when ``near = true``. Also a census (every evaluation
    example is compared, none is sampled): its interval is the point
    ``[rate, rate]``, so ``max = { duplicate_rate = 0 }`` passes under every
    gate, ``strict`` included, exactly when no example leaked.

Extras: ``duplicates``, up to 20 example pairs ``{"id", "train_id", "distance"}``
(exact duplicates first, then near ones by increasing distance), and
``near_distance`` when ``near = true``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from distill_eval import metrics as M
from distill_eval._tables import TableReader
from distill_eval.checks.base import CheckContext, CheckKind, Measurement, Metric
from distill_eval.data import Dataset, require_finite_inputs
from distill_eval.errors import DataError
from distill_eval.outputs import result_key

#: how many duplicate pairs the results list
MAX_EXAMPLES = 20


def read_params(r: TableReader, suite_dir: Path) -> Mapping[str, Any]:
    train = r.string("train")
    near = r.boolean("near", False)
    near_distance = r.number("near_distance", None, minimum=0, exclusive_minimum=True)
    if near_distance is not None and not near:
        raise r.error("'near_distance' has no effect without 'near = true'")
    bounded = set(r.table.get("min", {}) or {}) | set(r.table.get("max", {}) or {})
    if "near_duplicates" in bounded and not near:
        raise r.error("a bound on 'near_duplicates' needs 'near = true'")
    return {"train": train, "near": near, "near_distance": near_distance}


def extra_datasets(params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    return [("train", params["train"])]


def compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    evaluation = ctx.dataset
    train = ctx.other_dataset(params["train"])
    for data in (evaluation, train):
        if data.n == 0:
            raise DataError(f"dataset '{data.name}' has no examples; the leakage check needs some")
    if evaluation.x.shape[1:] != train.x.shape[1:]:
        raise DataError(
            f"datasets '{evaluation.name}' and '{train.name}' have inputs of different shapes: "
            f"'{evaluation.name}' examples are {evaluation.x.shape[1:]} (x of shape {evaluation.x.shape}), "
            f"'{train.name}' examples are {train.x.shape[1:]} (x of shape {train.x.shape})"
        )
    near = params["near"]
    if near:
        for data in (evaluation, train):
            require_finite_inputs(data, purpose="near-duplicate search (near = true)")
        if params["near_distance"] is None and train.n < 2:
            raise DataError(
                f"dataset '{train.name}' has a single example; the default 'near_distance' needs at least 2 "
                "(give 'near_distance' explicitly)"
            )
    found = _duplicates(ctx, evaluation, train, near=near, near_distance=params["near_distance"])

    n = evaluation.n
    n_exact, n_near = found.n_exact, found.n_near
    leaked = n_exact + n_near
    values = {
        "exact_duplicates": Metric.exact(n_exact),
        "near_duplicates": Metric.exact(n_near) if near else Metric(None, None, "near = false"),
        "duplicate_rate": Metric.exact(leaked / n),
    }
    extras: dict[str, Any] = {"duplicates": _examples(found, evaluation.ids, train.ids)}
    if near:
        extras["near_distance"] = found.near_distance
    return Measurement(values, extras=extras, n=n)


def _duplicates(
    ctx: CheckContext, evaluation: Dataset, train: Dataset, *, near: bool, near_distance: float | None
) -> M.Duplicates:
    """:func:`~distill_eval.metrics.find_duplicates`, from the run's cache when the same inputs were searched before.

    The key hashes both datasets' inputs (not their files: a dataset from a hook
    has no file hash, and label_column changes what is an input), the options
    and the search's code. The entry holds one row per evaluation example:
    the matched training row, the distance and the match (0 none, 1 exact,
    2 near).
    """
    cache = ctx.cache
    key = None
    if cache is not None:
        key = result_key(
            "leakage",
            arrays={"x_eval": evaluation.x, "x_train": train.x},
            settings={"near": near, "near_distance": near_distance},
            code=("distill_eval.metrics.leakage",),
        )
        table, info, warning = cache.load(key)
        if warning:
            ctx.log(warning)
        if table is not None and table.shape == (evaluation.n, 3):
            ctx.log(f"duplicates of {evaluation.n:,} examples among {train.n:,} from cache")
            match = table[:, 2]
            threshold = info.get("near_distance")
            return M.Duplicates(
                train_index=table[:, 0].astype(np.int64),
                distance=table[:, 1],
                exact=match == 1,
                near=match == 2,
                near_distance=float(threshold) if threshold is not None else None,
            )
    what = f"near-duplicate search of '{evaluation.name}' in '{train.name}'"
    with ctx.progress(what, evaluation.n) as progress:
        found = M.find_duplicates(
            evaluation.x,
            train.x,
            near=near,
            near_distance=near_distance,
            progress=progress.update,
        )
    if cache is not None and key is not None:
        match = np.where(found.exact, 1.0, np.where(found.near, 2.0, 0.0))
        table = np.column_stack([found.train_index.astype(np.float64), found.distance, match])
        info = {
            "kind": "leakage",
            "dataset": evaluation.name,
            "train": train.name,
            "datasets": {evaluation.name: evaluation.sha256, train.name: train.sha256},
            "near_distance": found.near_distance,
            "check": ctx.check.id,
        }
        cache.store(key, table, info)
    return found


def _examples(found: M.Duplicates, eval_ids: np.ndarray, train_ids: np.ndarray) -> list[dict[str, Any]]:
    """The first pairs: exact duplicates in evaluation order, then near ones by distance."""
    rows = np.flatnonzero(found.leaked)
    rows = rows[np.argsort(found.distance[rows], kind="stable")][:MAX_EXAMPLES]
    return [
        {
            "id": str(eval_ids[i]),
            "train_id": str(train_ids[found.train_index[i]]),
            "distance": float(found.distance[i]),
        }
        for i in rows
    ]


KIND = CheckKind(
    name="leakage",
    metrics=("exact_duplicates", "near_duplicates", "duplicate_rate"),
    read_params=read_params,
    compute=compute,
    extra_datasets=extra_datasets,
    uses_models=False,
)
