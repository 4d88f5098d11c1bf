"""``distill-eval predict``: a model's outputs on a dataset, computed ahead of ``pytest --distill``.

:func:`predict` loads a model and a dataset of the project config, runs the
model over every example in batches of the project's ``batch_size`` and stores
the logits in the plugin's output cache under the key the plugin computes
(:func:`~distill_eval.session.output_cache_key`), so a later ``pytest --distill``
on the same files reads them ("... examples from cache") without loading the
model. An entry already in the cache is left as it is unless ``recompute``.

Under ``torchrun --nproc_per_node=K -m distill_eval predict ...`` the dataset
is split into the same batches one process would use, dealt to the ranks in
turn (:func:`~distill_eval.train.distributed.shard_rows` with ``block =
batch_size``); rank 0 gathers them back in example order, each exactly once, and
alone writes the entry. Every batch is the one a single process computes, so
the entry is the one it would store (bit for bit where the kernels are
deterministic). Custom loaders (``pytest_distill_load_*`` hooks of a
``conftest.py``) are pytest's: models and datasets come from the
``[tool.distill_eval]`` tables here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill_eval._suggest import did_you_mean, one_of
from distill_eval.config import ProjectConfig
from distill_eval.data import load_dataset, require_finite_inputs
from distill_eval.errors import ConfigError, ModelError
from distill_eval.models import Model, load_model, model_fingerprint, parameter_fingerprint, resolve_device
from distill_eval.outputs import OutputCache, compute_logits
from distill_eval.progress import Progress
from distill_eval.session import output_cache_key
from distill_eval.train.distributed import process_group

__all__ = ["PredictResult", "predict"]


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict` did.

    Attributes
    ----------
    model, dataset : str
        The names in the project config.
    key : str
        The output-cache key (the one ``pytest --distill`` computes).
    path : Path
        The cache entry's ``.npy`` file.
    n, n_classes : int
        Shape of the logits.
    from_cache : bool
        True when the entry was already there and nothing was computed.
    world_size : int
        How many processes computed it.
    seconds : float
        Time spent computing (0 when from cache).
    """

    model: str
    dataset: str
    key: str
    path: Path
    n: int
    n_classes: int
    from_cache: bool
    world_size: int
    seconds: float


def predict(
    project: ProjectConfig,
    model: str,
    dataset: str,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    recompute: bool = False,
    log: Callable[[str], None] | None = print,
) -> PredictResult:
    """Compute ``model``'s logits on ``dataset`` and store them in the project's output cache.

    Parameters
    ----------
    project : ProjectConfig
        From :func:`~distill_eval.config.load_project_config`.
    model, dataset : str
        Names of ``[tool.distill_eval.models.*]`` and ``[tool.distill_eval.datasets.*]``.
    device : str, optional
        Instead of the project's ``device`` (only its kind is part of the key).
    batch_size : int, optional
        Instead of the project's ``batch_size``; part of the key, so ``pytest
        --distill`` reuses the entry only with the same batch size.
    recompute : bool, default False
        Compute and store even when the cache holds the entry.
    log : callable or None, default print
        Receives a line or two of progress (on rank 0 only).

    Returns
    -------
    PredictResult
        On every rank.

    Raises
    ------
    ConfigError, DataError, ModelError
        An unknown name (with the nearest defined one), an unreadable file, a
        model whose outputs are unusable.
    """
    spec = project.models.get(model)
    if spec is None:
        raise _unknown("model", model, project.models, project)
    data_spec = project.datasets.get(dataset)
    if data_spec is None:
        raise _unknown("dataset", dataset, project.datasets, project)
    batch_size = project.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise ConfigError(f"the batch size must be at least 1, got {batch_size}")
    with process_group(resolve_device(device or project.device)) as dist:
        say = (log if dist.is_main else None) or (lambda message: None)
        data = load_dataset(data_spec)
        require_finite_inputs(data, purpose=f"model '{model}'")
        loaded: Model | None = None
        fingerprint = model_fingerprint(spec)
        if fingerprint is None:  # no files: the parameters identify it, as in the plugin
            loaded = load_model(spec, device=dist.device)
            fingerprint = parameter_fingerprint(loaded, spec)
            if fingerprint is None:
                raise ModelError(
                    f"model '{model}' has no files and no torch parameters to identify it by, so its outputs "
                    "cannot be cached; pytest --distill computes them itself"
                )
            if len(set(dist.all_gather_object(fingerprint))) > 1:
                raise ModelError(
                    f"model '{model}' ({spec.describe()}) has different parameters in different processes; "
                    "seed its factory or give it weights"
                )
        key = output_cache_key(fingerprint, data, device=dist.device, batch_size=batch_size)
        cache = OutputCache(project.cache_dir)
        path = cache.root / key[:2] / f"{key}.npy"

        def lookup() -> int | None:
            logits, _, warning = cache.load(key)
            if warning:
                say(warning)
            return int(logits.shape[1]) if logits is not None and logits.shape[0] == data.n else None

        n_classes = None if recompute else dist.run_on_main(lookup)
        if n_classes is not None:
            say(f"{model} on {dataset}: {data.n} examples from cache ({path})")
            return PredictResult(model, dataset, key, path, data.n, n_classes, True, dist.world_size, 0.0)

        rows = dist.shard(data.n, block=batch_size)
        start = time.perf_counter()

        def compute() -> np.ndarray:
            nonlocal loaded
            loaded = loaded or load_model(spec, device=dist.device)
            if not len(rows):  # fewer batches than processes: nothing to do here
                return np.empty((0,), dtype=np.float32)
            x = data.x[rows] if dist.enabled else data.x
            with Progress(say, f"{model} on {dataset}", len(x)) as progress:  # rank 0's share under torchrun
                return compute_logits(
                    loaded.predict_logits,
                    x,
                    batch_size=batch_size,
                    model=model,
                    dataset=dataset,
                    progress=progress.update,
                )

        local = dist.everywhere(compute)
        logits = dist.gather_rows(torch.from_numpy(local), data.n, block=batch_size, dst=0)
        seconds = time.perf_counter() - start
        assert loaded is not None

        def store() -> int:
            assert logits is not None
            array = logits.numpy()
            info = {
                "model": model,
                "dataset": dataset,
                "fingerprint": fingerprint,
                "dataset_sha256": data.sha256,
                "params": loaded.params,
                "format": loaded.format,
                "command": "distill-eval predict",
                "world_size": dist.world_size,
            }
            cache.store(key, array, info)
            return int(array.shape[1])

        n_classes = dist.run_on_main(store)
        processes = f", {dist.world_size} processes" if dist.enabled else ""
        say(f"{model} on {dataset}: {data.n} examples in {seconds:.2f} s ({dist.device}{processes}); wrote {path}")
        return PredictResult(model, dataset, key, path, data.n, n_classes, False, dist.world_size, seconds)


def _unknown(kind: str, name: str, defined: Mapping[str, object], project: ProjectConfig) -> ConfigError:
    table = f"[tool.distill_eval.{kind}s]"
    names = list(defined)
    where = f" of {project.file}" if project.file else ""
    known = f"; defined: {one_of(names)}" if names else f"; {table} is empty"
    hint = did_you_mean(name, names)
    return ConfigError(f"{kind} {name!r} is not defined in {table}{where}{hint or known}")
