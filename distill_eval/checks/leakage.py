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

On token data (both datasets hold token sequences) the metrics are
``exact_duplicates``, ``ngram_overlap`` (the share of evaluation sequences
sharing an n-gram of ``ngram`` tokens, default 13, with the training data) and
``duplicate_rate`` (either), all censuses; see :mod:`distill_eval.lm.leakage`.
Their ``duplicates`` pairs are ``{"id", "train_id", "match"}``.
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
from distill_eval.errors import CheckError, DataError
from distill_eval.lm.leakage import TokenLeaks
from distill_eval.lm.tokens import TokenDataset
from distill_eval.outputs import result_key

#: how many duplicate pairs the results list
MAX_EXAMPLES = 20


def read_params(r: TableReader, suite_dir: Path) -> Mapping[str, Any]:
    train = r.string("train")
    near = r.boolean("near", False)
    near_distance = r.number("near_distance", None, minimum=0, exclusive_minimum=True)
    if near_distance is not None and not near:
        raise r.error("'near_distance' has no effect without 'near = true'")
    ngram = r.integer("ngram", None, minimum=1)
    bounded = set(r.table.get("min", {}) or {}) | set(r.table.get("max", {}) or {})
    if "near_duplicates" in bounded and not near:
        raise r.error("a bound on 'near_duplicates' needs 'near = true'")
    return {"train": train, "near": near, "near_distance": near_distance, "ngram": ngram}


def extra_datasets(params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    return [("train", params["train"])]


def compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    if ctx.is_tokens:
        return _token_compute(ctx, params)
    if params["ngram"] is not None:
        raise CheckError(
            f"check '{ctx.check.id}': 'ngram' applies only to token data, and dataset '{ctx.check.dataset}' holds "
            "classification examples"
        )
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


#: what kind ``leakage`` computes on token data
TOKEN_METRICS = ("exact_duplicates", "ngram_overlap", "duplicate_rate")


def _token_compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    """Leakage on token data: exact duplicates and shared n-grams, both censuses of the evaluation sequences."""
    from distill_eval.lm.leakage import DEFAULT_NGRAM

    if params["near"]:
        raise CheckError(
            f"check '{ctx.check.id}': 'near' applies only to classification data; on token data (dataset "
            f"'{ctx.check.dataset}' holds token sequences) shared n-grams ('ngram', default {DEFAULT_NGRAM}) "
            "find the near copies"
        )
    if not ctx.is_token_dataset(params["train"]):
        raise DataError(
            f"check '{ctx.check.id}': dataset '{ctx.check.dataset}' holds token sequences but its 'train' dataset "
            f"'{params['train']}' holds classification examples; expected token data there too (an .npz/.pt file "
            'with input_ids, a .jsonl text file, or source = "builtin:bytes")'
        )
    evaluation = ctx.token_dataset
    train = ctx.other_token_dataset(params["train"])
    for data in (evaluation, train):
        if data.n_sequences == 0:
            raise DataError(f"dataset '{data.name}' has no sequences; the leakage check needs some")
    ngram = params["ngram"] or DEFAULT_NGRAM
    found = _token_leaks(ctx, evaluation, train, ngram=ngram)
    n = evaluation.n_sequences
    exact, overlap, leaked = found.exact, found.overlap, found.leaked
    values = {
        "exact_duplicates": Metric.exact(int(exact.sum())),
        "ngram_overlap": Metric.exact(float(overlap.sum()) / n),
        "duplicate_rate": Metric.exact(float(leaked.sum()) / n),
    }
    examples = []
    for i in np.flatnonzero(leaked)[:MAX_EXAMPLES]:
        match = "exact" if exact[i] else "ngram"
        j = found.exact_train[i] if exact[i] else found.ngram_train[i]
        examples.append({"id": str(evaluation.ids[i]), "train_id": str(train.ids[j]), "match": match})
    extras: dict[str, Any] = {
        "duplicates": examples,
        "ngram": ngram,
        "sequences": n,
        "train_sequences": train.n_sequences,
    }
    return Measurement({name: values[name] for name in TOKEN_METRICS}, extras=extras, n=n)


def _token_leaks(ctx: CheckContext, evaluation: TokenDataset, train: TokenDataset, *, ngram: int) -> TokenLeaks:
    """:func:`~distill_eval.lm.leakage.find_token_leaks`, from the run's cache when the same sequences were searched.

    The key hashes both datasets' token arrays (ids, mask and labels: the scored content counts)
    and ``ngram``; the entry holds one row per evaluation sequence: the training sequence it
    duplicates and the one sharing an n-gram (-1 for none).
    """
    from distill_eval.lm.leakage import find_token_leaks

    cache = ctx.cache
    key = None
    n = evaluation.n_sequences
    if cache is not None:
        key = result_key(
            "leakage-tokens",
            arrays={
                "eval_ids": evaluation.input_ids,
                "eval_mask": evaluation.attention_mask,
                "eval_labels": evaluation.labels,
                "train_ids": train.input_ids,
                "train_mask": train.attention_mask,
                "train_labels": train.labels,
            },
            settings={"ngram": ngram},
            code=("distill_eval.lm.leakage",),
        )
        table, _, warning = cache.load(key)
        if warning:
            ctx.log(warning)
        if table is not None and table.shape == (n, 2):
            ctx.log(f"duplicates of {n:,} sequences among {train.n_sequences:,} from cache")
            table = table.astype(np.int64)
            return TokenLeaks(exact_train=table[:, 0], ngram_train=table[:, 1], ngram=ngram)
    what = f"{ngram}-gram search of '{evaluation.name}' in '{train.name}'"
    with ctx.progress(what, train.n_sequences, unit="training sequences") as progress:
        found = find_token_leaks(evaluation, train, ngram=ngram, progress=progress.update)
    if cache is not None and key is not None:
        info = {
            "kind": "leakage-tokens",
            "dataset": evaluation.name,
            "train": train.name,
            "datasets": {evaluation.name: evaluation.sha256, train.name: train.sha256},
            "ngram": ngram,
            "check": ctx.check.id,
        }
        cache.store(key, np.column_stack([found.exact_train, found.ngram_train]), info)
    return found


KIND = CheckKind(
    name="leakage",
    metrics=("exact_duplicates", "near_duplicates", "duplicate_rate"),
    read_params=read_params,
    compute=compute,
    extra_datasets=extra_datasets,
    uses_models=False,
    token_metrics=TOKEN_METRICS,
)
