"""The reference distillation trainer (``distill-eval docs trainer``): ``distill-eval train CONFIG.toml``.

:func:`train` reads a validated :class:`~distill_eval.train.config.TrainConfig`
and runs up to three *phases*:

- ``"teacher"`` (only with ``[teacher] train = true``): the teacher's
  ``factory`` learns cross-entropy (with ``label_smoothing``) on the labels,
  with its own recipe (:class:`~distill_eval.train.config.TeacherTraining`);
  it is exported to ``teacher.pt2`` (or ``.pt``), which then serves as the
  teacher of the next phases, loaded like any other;
- ``"student"``: the student learns from the labels and the teacher's soft
  targets (:func:`distillation_loss`);
- ``"control"`` (with ``control = true``): the same student on the labels
  alone; the teacher is never called while it trains. It has the student's
  architecture, recipe and seed.

Into ``[output] dir`` it writes ``student.pt2`` (and ``teacher.pt2``, ``control.pt2``):
torch.export programs with a dynamic batch dimension (``.pt`` TorchScript with
``[output] format = "torchscript"``); ``manifest.json`` (the config, the
teacher's sha256, the data hashes, the seed, the environment and ``epochs``:
one record per epoch, rewritten after every epoch; a trained teacher has
``teacher.trained = true`` and its own ``teacher.epochs``); and ``checkpoint.pt``,
written atomically after every epoch with the model, optimizer, scheduler and
every random-number state, so ``--resume`` continues a run exactly where it
stopped (N epochs straight and N/2 + resume + N/2 give the same weights).

The teacher is loaded with the plugin's loaders, put in eval mode with its
parameters frozen, called only under ``torch.no_grad`` and never wrapped in
anything. Its validation logits, and in offline mode its training logits,
come from the plugin's output cache (the same entries ``pytest --distill``
reads and writes), indexed by example row, never by batch order.

Under ``torchrun --nproc_per_node=K -m distill_eval train CONFIG.toml`` the
same function runs in K processes (:mod:`distill_eval.train.distributed`):
each joins the process group from torchrun's environment (gloo on CPU, nccl
on CUDA, each on ``cuda:LOCAL_RANK``); only the student is wrapped in
DistributedDataParallel, the teacher stays as it is, in eval mode without
gradients. ``batch_size`` is the global batch: every rank draws the same
permutation and takes the strided share ``batch[rank::K]`` of every batch
(``_Phase._epoch_batches``, the one place the order is drawn), and its loss is
weighted by its share, so DDP's gradient average is the gradient of the global
batch and K processes take the same steps as one. The train loss is summed
over ranks; validation is split into whole batches and the predictions are
gathered back in row order, every example exactly once. Rank 0 alone logs and
writes the checkpoint (with every rank's random state), the manifest, the
exported models and cache entries; the others wait for it, and an error
raised there is raised on every rank. ``--resume`` works the same way.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill_eval._hashing import sha256_file
from distill_eval._io import atomic_write
from distill_eval.config import ModelSpec
from distill_eval.data import Dataset, load_dataset
from distill_eval.errors import ConfigError, DataError, ModelError
from distill_eval.lm.loss import count_valid_tokens, token_kd_loss
from distill_eval.lm.models import (
    TokenModel,
    _from_module,
    load_token_model,
    shared_vocab,
    token_model_fingerprint,
)
from distill_eval.lm.session import load_token_spec
from distill_eval.lm.tokens import scored_positions
from distill_eval.models import (
    Model,
    load_model,
    model_fingerprint,
    parameter_fingerprint,
    resolve_device,
    torchscript_deprecation_ignored,
    wrap_model,
)
from distill_eval.outputs import OutputCache, compute_logits
from distill_eval.results import environment
from distill_eval.session import output_cache_key
from distill_eval.train.config import FILTERS, DistillOptions, TrainConfig
from distill_eval.train.distributed import SINGLE, Dist, process_group
from distill_eval.train.loss import kd_loss

__all__ = [
    "CHECKPOINT_FILE",
    "MANIFEST_FILE",
    "PHASES",
    "TrainCallback",
    "TrainResult",
    "distillation_loss",
    "train",
]

PHASES = ("teacher", "student", "control")
CHECKPOINT_FILE = "checkpoint.pt"
MANIFEST_FILE = "manifest.json"
#: bump when the checkpoint layout changes; an older checkpoint is refused, never misread
CHECKPOINT_FORMAT = 1
MANIFEST_SCHEMA = 1
#: examples of the training set checked against the live teacher in offline mode
PROBE_SIZE = 32
# Keys whose change does not break an exact resume: where outputs go, and the device.
_RESUMABLE_CHANGES = ("output.", "distill.device")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    filter_teacher_errors: str = "none",
) -> torch.Tensor:
    r""":func:`~distill_eval.train.kd_loss`, optionally without the teacher's wrong answers.

    An example is a *teacher error* when the teacher's top-1 class differs from
    its label. With :math:`C` the examples the teacher gets right, :math:`W` the
    others, :math:`n = |C| + |W|`, :math:`\mathrm{CE}_S` and :math:`\mathrm{KL}_S`
    averaged over the examples of :math:`S`:

    - ``"none"``: ``kd_loss`` on the whole batch,
      :math:`(1-\alpha)\,\mathrm{CE}_{C \cup W} + \alpha T^2\,\mathrm{KL}_{C \cup W}`;
    - ``"drop"``: teacher errors leave the soft term, which averages over the rest,
      :math:`(1-\alpha)\,\mathrm{CE}_{C \cup W} + \alpha T^2\,\mathrm{KL}_C`
      (no soft term when :math:`C` is empty);
    - ``"relabel"``: teacher errors are trained on their hard label alone, every
      example weighing the same,
      :math:`\frac{1}{n}\big[\sum_{i \in W} \mathrm{CE}_i
      + \sum_{i \in C} ((1-\alpha)\,\mathrm{CE}_i + \alpha T^2\,\mathrm{KL}_i)\big]`.

    Every term is computed by ``kd_loss`` (float32, from log-softmax, KL with
    batchmean reduction); with no teacher errors in the batch all three agree.

    Parameters
    ----------
    student_logits, teacher_logits : tensor of shape (n_samples, n_classes)
    labels : tensor of shape (n_samples,)
    temperature, alpha : float
        As in :func:`~distill_eval.train.kd_loss`.
    filter_teacher_errors : {"none", "drop", "relabel"}

    Returns
    -------
    tensor of shape ()
    """
    if filter_teacher_errors not in FILTERS:
        raise ValueError(f"filter_teacher_errors must be one of {FILTERS}, got {filter_teacher_errors!r}")
    if filter_teacher_errors == "none":
        return kd_loss(student_logits, teacher_logits, labels, temperature=temperature, alpha=alpha)
    correct = teacher_logits.argmax(dim=1) == labels
    # kd_loss with alpha = 0 is the cross-entropy alone, with alpha = 1 the T²-scaled KL alone.
    loss = (1.0 - alpha) * kd_loss(student_logits, teacher_logits, labels, temperature=temperature, alpha=0.0)
    n, n_correct = labels.shape[0], int(correct.sum())
    if n_correct:
        soft = kd_loss(
            student_logits[correct], teacher_logits[correct], labels[correct], temperature=temperature, alpha=1.0
        )
        loss = loss + alpha * (soft if filter_teacher_errors == "drop" else soft * (n_correct / n))
    if filter_teacher_errors == "relabel" and n_correct < n:
        wrong = ~correct
        hard = kd_loss(student_logits[wrong], teacher_logits[wrong], labels[wrong], temperature=temperature, alpha=0.0)
        loss = loss + alpha * hard * ((n - n_correct) / n)
    return loss


class TrainCallback:
    """Hooks into a training run; subclass and override what you need. Every method does nothing by default.

    A callback that raises stops the run; the checkpoint of the last finished
    epoch is already on disk, so ``resume=True`` continues from there.
    """

    def on_phase_start(self, phase: str) -> None:
        """Called before the first epoch of ``phase`` trained in this run ("teacher", "student" or "control")."""

    def on_batch(
        self, phase: str, epoch: int, rows: torch.Tensor, teacher_logits: torch.Tensor | None, loss: torch.Tensor
    ) -> None:
        """After each optimiser step: the dataset rows of the batch, the teacher's logits used for them
        (None in the teacher and control phases) and the batch loss.

        Under torchrun, ``rows`` are this rank's rows and, on token data, the loss is this rank's
        share of the step's loss (every rank divides by the scored tokens of the whole step, so the
        shares add up to it)."""

    def on_epoch_end(self, phase: str, record: Mapping[str, float]) -> None:
        """After each epoch, once its checkpoint and manifest are written."""


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes
    ----------
    output_dir : Path
    manifest : dict
        The content of ``manifest.json``.
    finished : bool
        False when the run stopped early on ``max_epochs_this_run``; resume it.
    """

    output_dir: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    finished: bool = False

    @property
    def manifest_path(self) -> Path:
        return self.output_dir / MANIFEST_FILE

    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / CHECKPOINT_FILE

    @property
    def student_path(self) -> Path | None:
        file = (self.manifest.get("student") or {}).get("file")
        return self.output_dir / file if file else None

    @property
    def control_path(self) -> Path | None:
        file = (self.manifest.get("control") or {}).get("file")
        return self.output_dir / file if file else None

    @property
    def teacher_path(self) -> Path | None:
        """The teacher trained in this run (``[teacher] train = true``), once exported."""
        file = (self.manifest.get("teacher") or {}).get("file")
        return self.output_dir / file if file else None

    @property
    def epochs(self) -> list[dict[str, Any]]:
        """The student's per-epoch records."""
        return list(self.manifest.get("epochs", []))

    @property
    def control_epochs(self) -> list[dict[str, Any]]:
        return list((self.manifest.get("control") or {}).get("epochs", []))

    @property
    def teacher_epochs(self) -> list[dict[str, Any]]:
        """The trained teacher's per-epoch records (empty when the teacher was loaded)."""
        return list((self.manifest.get("teacher") or {}).get("epochs") or [])


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    teacher: Any = None,
    callbacks: Sequence[TrainCallback] = (),
    log: Callable[[str], None] | None = print,
    use_cache: bool = True,
    max_epochs_this_run: int | None = None,
) -> TrainResult:
    """Distil a student (and train a control) as ``config`` says, writing into ``config.output.dir``.

    Parameters
    ----------
    config : TrainConfig
        From :func:`~distill_eval.train.load_train_config`.
    resume : bool, default False
        Continue the run whose ``checkpoint.pt`` is in the output folder (start
        afresh when there is none). The config must be the same, apart from
        ``[output]`` and ``device``, and so must the teacher's and data's content.
    overwrite : bool, default False
        Start afresh even if the output folder holds a run. Without ``resume``
        or ``overwrite`` an existing checkpoint is an error, never clobbered.
    teacher : nn.Module or Model, optional
        Use this teacher instead of loading ``[teacher]`` (for notebooks and tests);
        not with ``[teacher] train = true``.
    callbacks : sequence of TrainCallback
    log : callable or None, default print
        Receives one line per epoch and a few progress lines.
    use_cache : bool, default True
        Read and write teacher logits in the output cache (``[distill] cache_dir``).
    max_epochs_this_run : int, optional
        Stop (resumably) after this many epochs; for preemptible jobs and tests.

    Returns
    -------
    TrainResult

    Raises
    ------
    ConfigError, DataError, ModelError
        A mistake in the config, data or models, as a sentence.

    Notes
    -----
    Under ``torchrun`` (or in a process group the caller started) every rank
    calls this function: ``batch_size`` is the global batch, rank 0 alone logs
    and writes, every rank returns the same result, and callbacks run on every
    rank (``on_batch`` with that rank's rows of the batch).
    """
    if max_epochs_this_run is not None and max_epochs_this_run < 0:
        raise ValueError(f"max_epochs_this_run must be >= 0, got {max_epochs_this_run}")
    if teacher is not None and config.teacher_training is not None:
        raise ConfigError(
            "a teacher was passed in, but the config trains its own ([teacher] train = true); "
            "pass no teacher, or remove 'train' and the recipe keys from [teacher]",
            file=_str(config.file),
            where="[teacher]",
        )
    out = Path(config.output.dir)
    checkpoint_path = out / CHECKPOINT_FILE
    with process_group(resolve_device(config.distill.device)) as dist:
        # Under torchrun rank 0 alone logs and writes; the others wait for it where they must.
        say = (log if dist.is_main else None) or (lambda message: None)
        saved = dist.run_on_main(lambda: _start(config, checkpoint_path, resume=resume, overwrite=overwrite, say=say))
        if saved is not None and int(saved.get("world_size", 1)) != dist.world_size:
            say(
                f"the checkpoint was written by {saved.get('world_size', 1)} process(es) and {dist.world_size} "
                "continue it: the global batches stay the same, the last bits of the weights may not"
            )
        device = dist.device
        fork_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
        # Every draw below comes from seeds in the config; the caller's random state is left as it was.
        with torch.random.fork_rng(devices=fork_devices):
            # Rank 0 first: it fills the output cache with the teacher's logits that the others then read.
            run = dist.main_first(
                lambda: _Run(config, device, teacher=teacher, use_cache=use_cache, say=say, dist=dist)
            )
            if saved is not None:
                run.check_resumable(saved)
            state = saved or {
                "format": CHECKPOINT_FORMAT,
                "config_json": _config_json(config),
                "created": _now(),
                "identity": run.identity(),
                "phases": {},
            }
            try:
                manifest = _run_phases(run, state, out, callbacks=callbacks, budget=max_epochs_this_run)
            except BaseException:
                # A crash or Ctrl-C: the checkpoint of the last finished epoch is on disk; say so in the manifest.
                if dist.is_main:
                    with contextlib.suppress(Exception):
                        _write_manifest(run, state, out, status="interrupted", current=None)
                raise
    if manifest["finished"]:
        say(f"wrote {out / MANIFEST_FILE}")
    else:
        say(f"stopped after the epochs allowed for this run; continue with --resume ({checkpoint_path})")
    return TrainResult(out, manifest, finished=manifest["finished"])


def _run_phases(
    run: _Run, state: dict[str, Any], out: Path, *, callbacks: Sequence[TrainCallback], budget: int | None
) -> dict[str, Any]:
    """Train the phases not yet done, checkpointing after every epoch; returns the manifest written last."""
    checkpoint_path = out / CHECKPOINT_FILE
    config = run.config
    wanted = {"teacher": config.teacher_training is not None, "student": True, "control": config.distill.control}
    phases = [p for p in PHASES if wanted[p]]
    dist = run.dist
    for name in phases:
        # closing drops the phase's DDP wrapper (whose reducer holds the process group) when the phase
        # ends: the run and its phases refer to each other, so without it the group could live until a
        # garbage collection, possibly at interpreter exit, after destroy_process_group.
        with contextlib.closing(_Phase(run, name, state["phases"].get(name))) as phase:
            if phase.done:
                dist.run_on_main(functools.partial(phase.export, out / phase.file_name, missing_only=True))
                run.finished_phases[name] = phase
                if name == "teacher":
                    run.attach_trained_teacher(out / phase.file_name)
                continue
            for callback in callbacks:
                callback.on_phase_start(name)
            while not phase.complete:
                if budget is not None and budget <= 0:
                    return _publish_manifest(run, state, out, status="interrupted", current=phase)
                record = phase.run_epoch(callbacks)
                if budget is not None:
                    budget -= 1
                state["phases"][name] = phase.state_dict()
                _save(run, checkpoint_path, state, manifest_status="running", current=phase)
                run.say(phase.describe(record))
                for callback in callbacks:
                    callback.on_epoch_end(name, dict(record))
            phase.finish()
            dist.run_on_main(functools.partial(phase.export, out / phase.file_name))
            state["phases"][name] = phase.state_dict()
            _save(run, checkpoint_path, state)
            run.finished_phases[name] = phase
            run.say(f"{name}: wrote {out / phase.file_name}")
            if name == "teacher":
                run.attach_trained_teacher(out / phase.file_name)
    return _publish_manifest(run, state, out, status="finished", current=None)


def _save(
    run: _Run, path: Path, state: dict[str, Any], *, manifest_status: str | None = None, current: _Phase | None = None
) -> None:
    """Rank 0 writes the checkpoint (and the manifest) while the others wait."""
    state["world_size"] = run.dist.world_size

    def write() -> None:
        _save_checkpoint(path, state)
        if manifest_status is not None:
            _write_manifest(run, state, path.parent, status=manifest_status, current=current)

    run.dist.run_on_main(write)


def _publish_manifest(
    run: _Run, state: Mapping[str, Any], out: Path, *, status: str, current: _Phase | None
) -> dict[str, Any]:
    """Rank 0 writes the manifest; every rank returns it."""
    return run.dist.run_on_main(lambda: _write_manifest(run, state, out, status=status, current=current))


# -- the run: data, teacher and its logits, shared by both phases -------------


class _Run:
    """Everything the phases share: config, device, data tensors, the teacher and its logits.

    With ``[teacher] train = true`` there is no teacher until the teacher phase
    is done: :meth:`attach_trained_teacher` then loads it from its exported file.
    """

    def __init__(
        self,
        config: TrainConfig,
        device: str,
        *,
        teacher: Any,
        use_cache: bool,
        say: Callable[[str], None],
        dist: Dist = SINGLE,
    ):
        self.config = config
        self.device = device
        self.dist = dist
        self.say = say
        self.bf16 = _use_bf16(config, device)
        self.cache = OutputCache(config.distill.cache_dir, enabled=use_cache)
        self.finished_phases: dict[str, _Phase] = {}
        # Token data: x holds the input ids, y the unshifted labels, and the masks the attention masks.
        self.tokens = config.tokens
        self.train_mask: torch.Tensor | None = None
        self.val_mask: torch.Tensor | None = None
        self.vocab_size: int | None = None  # token data: the vocabulary teacher and student share
        if self.tokens:
            self.train_data: Any = load_token_spec(config.train)
            self.val_data: Any = load_token_spec(config.val)
            self.train_x = torch.from_numpy(self.train_data.input_ids)
            self.train_mask = torch.from_numpy(self.train_data.attention_mask)
            self.train_y = torch.from_numpy(self.train_data.labels)
            self.val_x = torch.from_numpy(self.val_data.input_ids)
            self.val_mask = torch.from_numpy(self.val_data.attention_mask)
            self.val_y = torch.from_numpy(self.val_data.labels)
            self.n_train_tokens = count_valid_tokens(self.train_data.labels, self.train_data.attention_mask)
        else:
            self.train_data = _labelled(load_dataset(config.train), "train")
            self.val_data = _labelled(load_dataset(config.val), "val")
            self.train_x = torch.from_numpy(self.train_data.x)
            self.train_y = torch.from_numpy(self.train_data.y)
            self.val_x = torch.from_numpy(self.val_data.x)
            self.val_y = torch.from_numpy(self.val_data.y)

        self.teacher_spec = config.teacher
        self.teacher_info: dict[str, Any] = {}
        self.train_teacher_logits: torch.Tensor | None = None
        self.teacher: Model | None = None
        self.teacher_fingerprint: str | None = None
        self.teacher_sha256: str | None = None
        self.teacher_val_preds: torch.Tensor | None = None
        self.n_classes: int | None = None
        if config.teacher_training is None:
            self.teacher, self.teacher_fingerprint = self._load_teacher(teacher)
            self.teacher_sha256 = _teacher_sha256(config, teacher)
            self._prepare_teacher()

    def attach_trained_teacher(self, path: Path) -> None:
        """After the teacher phase: the exported teacher becomes the teacher, loaded as any other."""
        self.teacher_spec = ModelSpec(name="teacher", path=path)

        def attach() -> None:
            self.teacher, self.teacher_fingerprint = self._load_teacher(None)
            self.teacher_sha256 = sha256_file(path)
            self._prepare_teacher()

        # Rank 0 first: it fills the output cache with the teacher's logits that the others then read.
        self.dist.main_first(attach)

    def _prepare_teacher(self) -> None:
        """The teacher's validation predictions (and training logits offline), and the class count."""
        if self.tokens:
            assert isinstance(self.teacher, TokenModel)
            self.vocab_size = self.teacher.true_vocab_size
            self._check_labels()
            self.teacher_val_preds = self._teacher_val_argmax()
            return
        val_logits = self._teacher_logits(self.val_data)
        self.n_classes = int(val_logits.shape[1])
        self.teacher_val_preds = torch.from_numpy(val_logits.argmax(axis=1))
        if self.config.distill.offline:
            logits = self._teacher_logits(self.train_data)
            self._probe(logits)
            self.train_teacher_logits = torch.from_numpy(logits)
        self._check_labels()

    def _check_labels(self) -> None:
        if self.tokens:
            for data in (self.train_data, self.val_data):
                if not data.n_scored:
                    raise DataError(
                        f"token dataset '{data.name}' ({data.source}) has no scored token (every next-token label "
                        "is -100 or unattended); training needs some"
                    )
                high = int(max(data.labels.max(), data.input_ids.max()))
                if high >= (self.vocab_size or 0):
                    raise DataError(
                        f"token dataset '{data.name}' ({data.source}) holds token id {high}, but the teacher "
                        f"({self.teacher_spec.describe()}) has a vocabulary of {self.vocab_size} tokens"
                    )
            return
        for data in (self.train_data, self.val_data):
            if int(data.y.max()) >= (self.n_classes or 0):
                raise DataError(
                    f"dataset '{data.name}' ({data.source}) has label {int(data.y.max())}, but the teacher "
                    f"({self.teacher_spec.describe()}) has only {self.n_classes} classes"
                )

    def identity(self) -> dict[str, Any]:
        """What must not change between a run and its resumption: the teacher and the data."""
        return {
            "teacher": self.teacher_fingerprint,
            "train": self.train_data.sha256,
            "val": self.val_data.sha256,
        }

    def check_resumable(self, saved: Mapping[str, Any]) -> None:
        changed = [key for key, value in self.identity().items() if saved.get("identity", {}).get(key) != value]
        if changed:
            raise ConfigError(
                f"cannot resume: the content of {' and '.join(changed)} changed since the checkpoint was written; "
                "start over with --overwrite",
                file=_str(self.config.file),
            )

    # -- teacher ---------------------------------------------------------------

    def _load_teacher(self, injected: Any) -> tuple[Any, str | None]:
        model: Any
        if self.tokens:
            if injected is not None:
                model = _from_module("teacher", injected, device=self.device, format="object", vocab_size=None)
            else:
                model = load_token_model(self.teacher_spec, device=self.device)
        elif injected is not None:
            model = wrap_model("teacher", injected, device=self.device, format="object")
        else:
            model = load_model(self.teacher_spec, device=self.device)
        module = model.module
        if isinstance(module, nn.Module):
            with contextlib.suppress(NotImplementedError):  # torch.export programs are captured in eval mode
                module.eval()
            for parameter in module.parameters():  # TorchScript modules refuse module.requires_grad_
                parameter.requires_grad_(False)
        if self.tokens:
            # A language model's logits are never cached here: the teacher runs on every batch.
            self.cacheable = False
            if injected is not None:
                return model, model.parameter_fingerprint()
            return model, token_model_fingerprint(self.teacher_spec) or model.parameter_fingerprint(self.teacher_spec)
        if injected is not None:
            # An object passed in has no files to identify it; its logits are computed, never cached.
            self.cacheable = False
            return model, parameter_fingerprint(model)
        self.cacheable = True
        return model, model_fingerprint(self.teacher_spec) or parameter_fingerprint(model, self.teacher_spec)

    def _teacher_logits(self, data: Dataset) -> np.ndarray:
        """The teacher's logits on every row of ``data``, through the output cache, in row order."""
        assert self.teacher is not None
        batch_size = self.config.distill.teacher_batch_size
        key = None
        if self.cacheable and self.teacher_fingerprint is not None:
            key = output_cache_key(self.teacher_fingerprint, data, device=self.device, batch_size=batch_size)
        logits, _, warning = self.cache.load(key) if key else (None, {}, None)
        if warning:
            self.say(warning)
        if logits is not None and logits.shape[0] == data.n:
            self.say(f"teacher on {data.name}: {data.n} examples from cache")
            self.teacher_info[data.name] = {"source": "cache", "cache_key": key}
            return np.asarray(logits, dtype=np.float32)
        start = time.perf_counter()
        logits = compute_logits(
            self.teacher.predict_logits, data.x, batch_size=batch_size, model="teacher", dataset=data.name
        )
        self.say(f"teacher on {data.name}: {data.n} examples in {time.perf_counter() - start:.2f} s")
        if key and self.dist.is_main:
            self.cache.store(
                key,
                logits,
                {
                    "model": "teacher",
                    "dataset": data.name,
                    "fingerprint": self.teacher_fingerprint,
                    "dataset_sha256": data.sha256,
                    "params": self.teacher.params,
                    "format": self.teacher.format,
                },
            )
        self.teacher_info[data.name] = {"source": "computed", "cache_key": key}
        return logits

    def _probe(self, logits: np.ndarray) -> None:
        """Offline mode: check rows spread over the training set against the live teacher."""
        assert self.teacher is not None
        n = len(logits)
        rows = np.unique(np.linspace(0, n - 1, min(n, PROBE_SIZE)).round().astype(np.int64))
        live = compute_logits(
            self.teacher.predict_logits,
            self.train_data.x[rows],
            batch_size=len(rows),
            model="teacher",
            dataset=f"{self.train_data.name} (probe)",
        )
        if not np.allclose(live, logits[rows], rtol=1e-4, atol=1e-4):
            worst = float(np.max(np.abs(live - logits[rows])))
            raise ModelError(
                f"offline distillation: the teacher's cached logits for dataset '{self.train_data.name}' do not "
                f"match the live teacher on a probe batch of {len(rows)} examples (largest difference {worst:.3g}); "
                f"the cache in {self.config.distill.cache_dir} is stale or the teacher is not deterministic. "
                "Delete that cache folder, or train with offline = false"
            )

    def _teacher_val_argmax(self) -> torch.Tensor:
        """Token data: the teacher's top-1 next token at every position of the validation set, (S, L) int64."""
        assert self.teacher is not None
        size = self.config.distill.teacher_batch_size
        assert self.val_mask is not None
        parts = []
        for ids, mask in zip(self.val_x.split(size), self.val_mask.split(size), strict=True):
            parts.append(self.teacher_forward(ids.to(self.device), mask.to(self.device)).argmax(dim=-1).cpu())
        return torch.cat(parts)

    def teacher_forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's logits for one batch already on the device, without gradients.

        For token data ``x`` holds input ids, ``attention_mask`` their mask, and the logits are
        (batch, length, vocab), in the teacher's own dtype.
        """
        assert self.teacher is not None
        if self.tokens:
            with self.autocast():
                return self.teacher(x, attention_mask)
        module = self.teacher.module
        if isinstance(module, nn.Module):
            with torch.no_grad(), self.autocast():
                return _as_logits(module(x), "teacher").float()
        logits = self.teacher.predict_logits(x.detach().cpu().numpy())
        return torch.as_tensor(np.asarray(logits), dtype=torch.float32, device=x.device)

    # -- student ---------------------------------------------------------------

    def build_model(self, role: str) -> nn.Module:
        """A fresh student (or teacher to train) from its factory (seed the global RNG first), in train mode."""
        spec = self.config.teacher if role == "teacher" else self.config.student
        if self.tokens:
            # Checked with one forward pass on a (1, 2) batch; the true vocabulary as the plugin reads it.
            lm = load_token_model(spec, device=self.device)
            if role == "teacher":
                self.vocab_size = lm.true_vocab_size
                self._check_labels()
            else:
                assert isinstance(self.teacher, TokenModel)
                shared_vocab(self.teacher, lm)
            return lm.module.train()
        model = load_model(spec, device=self.device)
        module = model.module
        if not isinstance(module, nn.Module):
            raise ModelError(
                f"model '{role}': factory {spec.factory!r} returned {type(module).__name__}; "
                "the trainer needs a torch.nn.Module"
            )
        with torch.no_grad():
            probe = _as_logits(module(self.val_x[:2].to(self.device)), role)
        if role == "teacher":
            if probe.ndim != 2:
                raise ModelError(
                    f"model 'teacher' ({spec.describe()}) returns outputs of shape {tuple(probe.shape)} for an "
                    f"input batch of shape {tuple(self.val_x[:2].shape)}; expected logits (batch, n_classes)"
                )
            self.n_classes = int(probe.shape[1])
            self._check_labels()
            return module.train()
        if probe.ndim != 2 or probe.shape[1] != self.n_classes:
            raise ModelError(
                f"model 'student' ({self.config.student.describe()}) returns outputs of shape {tuple(probe.shape)} "
                f"for an input batch of shape {tuple(self.val_x[:2].shape)}, but the teacher "
                f"({self.teacher_spec.describe()}) returns logits over {self.n_classes} classes "
                f"(shape (2, {self.n_classes})); teacher and student must have the same number of classes"
            )
        return module.train()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


# -- one phase: a student (or the control) trained epoch by epoch -------------


class _Phase:
    """One model's training: its optimiser, schedule, random streams and records, checkpointable."""

    def __init__(self, run: _Run, name: str, saved: Mapping[str, Any] | None):
        self.run = run
        self.name = name
        self.options = options = _phase_options(run.config, name)
        self.label_smoothing = run.config.teacher_training.label_smoothing if name == "teacher" else 0.0
        self.file_name = name + run.config.output.suffix
        self.uses_teacher = name == "student"
        # The same seed for the student and the control: the control starts from the student's
        # initial weights and sees the same batches in the same order.
        torch.manual_seed(options.seed)
        self.model = run.build_model(name)
        if run.dist.rank:
            # Other ranks draw their own dropout masks; rank 0 keeps the one-process stream.
            torch.manual_seed(_rank_seed(options.seed, run.dist.rank))
        self._ddp: nn.Module | None = None  # the student wrapped in DistributedDataParallel, on first use
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=options.epochs)
            if options.schedule == "cosine"
            else None
        )
        self.order = torch.Generator().manual_seed(options.seed)
        self.noise = torch.Generator().manual_seed(options.seed + 1)
        self.records: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.bad_epochs = 0
        self.stopped_early = False
        self.done = False
        self.selected_epoch: int | None = None
        self._seconds = 0.0
        if saved is not None:
            self.load_state_dict(saved)

    @property
    def epoch(self) -> int:
        return len(self.records)

    @property
    def complete(self) -> bool:
        return self.epoch >= self.options.epochs or self.stopped_early

    # -- training ----------------------------------------------------------------

    def _epoch_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's batches: ``(global batch, this rank's rows of it)``.

        The one place the batch order is drawn: one seeded permutation per epoch
        (the same on every rank), cut in pieces of ``batch_size``. ``batch_size``
        is the *global* batch: under torchrun rank ``r`` of ``K`` takes the rows
        ``batch[r::K]`` of every batch, so K processes take the same optimiser
        steps on the same batches as one, each rank a strided share of about
        ``batch_size / K`` rows (with ``batch_size`` a multiple of K, exactly
        DistributedSampler's ``perm[r::K]`` cut in pieces of ``batch_size / K``).
        """
        perm = torch.randperm(len(self.run.train_x), generator=self.order)
        dist = self.run.dist
        for batch in perm.split(self.options.batch_size):
            yield batch, (batch[dist.rank :: dist.world_size] if dist.enabled else batch)

    def _trained_model(self) -> nn.Module:
        """The module the optimiser steps through: the student, wrapped in DDP under torchrun."""
        dist = self.run.dist
        if not dist.enabled:
            return self.model
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [torch.device(dist.device).index] if dist.device.startswith("cuda") else None
            self._ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        return self._ddp

    def close(self) -> None:
        """Drop the DDP wrapper: its reducer holds the process group, which must not outlive the run."""
        self._ddp = None

    def run_epoch(self, callbacks: Sequence[TrainCallback]) -> dict[str, Any]:
        run, options, dist = self.run, self.options, self.run.dist
        epoch = self.epoch + 1
        start = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"])
        model = self._trained_model()
        self.model.train()
        total = torch.zeros((), dtype=torch.float64, device=run.device)
        steps = options.accumulation_steps
        for batch, rows in self._epoch_batches():
            # This rank's rows in at most `steps` micro-batches; every rank takes exactly one synchronising
            # backward (the last), so DDP averages the gradients once per step.
            micro = [m for m in rows.tensor_split(steps) if len(m)] or [rows]
            n_tokens = None
            if run.tokens:
                assert run.train_mask is not None
                # N of token_kd_loss: the scored tokens of the whole step, every micro-batch and rank.
                local = count_valid_tokens(run.train_y[rows], run.train_mask[rows]) if len(rows) else 0
                n_tokens = float(dist.all_reduce_sum(torch.tensor(float(local), dtype=torch.float64)))
            noise = None
            if run.config.augment.enabled:
                # Noise for the whole global batch, then this rank's rows: the inputs one process would see.
                noise = torch.randn((len(batch), *run.train_x.shape[1:]), generator=self.noise)
                if dist.enabled:
                    noise = noise[dist.rank :: dist.world_size]
            self.optimizer.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), dtype=torch.float64, device=run.device)
            used: list[torch.Tensor] = []
            offset = 0
            for i, part in enumerate(micro):
                sync = i == len(micro) - 1 or not dist.enabled
                part_noise = noise[offset : offset + len(part)] if noise is not None else None
                offset += len(part)
                with contextlib.nullcontext() if sync else model.no_sync():
                    loss, weight, teacher_logits = self._micro_batch(model, batch, part, n_tokens, part_noise)
                    (loss * weight).backward()
                if not len(part):
                    continue  # a last batch smaller than the world: this rank added a zero gradient
                # The loss summed over the micro-batch's examples (classification) or scored tokens.
                step_loss += loss.detach().double() * (n_tokens if n_tokens is not None else len(part) / len(rows))
                if teacher_logits is not None:
                    used.append(teacher_logits)
            self.optimizer.step()
            if not len(rows):
                continue
            if n_tokens is None:
                total += step_loss * len(rows)
                reported = step_loss.float()
            else:
                total += step_loss
                reported = (step_loss / max(n_tokens, 1.0)).float()
            for callback in callbacks:
                callback.on_batch(self.name, epoch, rows, torch.cat(used) if used else None, reported)
        if self.scheduler is not None:
            self.scheduler.step()
        train_loss = float(dist.all_reduce_sum(total)) / (run.n_train_tokens if run.tokens else len(run.train_x))
        if not np.isfinite(train_loss):
            raise ModelError(
                f"{self.name} training diverged in epoch {epoch}: the loss is {train_loss}; lower [distill] lr "
                f"(now {options.lr:g})"
            )
        accuracy, agreement, perplexity = self.evaluate()
        record: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "val_accuracy": accuracy}
        if agreement is not None:  # a teacher being trained has no teacher to agree with
            record["val_agreement"] = agreement
        if perplexity is not None:
            record["val_perplexity"] = perplexity
        record["lr"] = lr
        self.records.append(record)
        self._track_best(record)
        self._seconds = time.perf_counter() - start
        return record

    def _micro_batch(
        self,
        model: nn.Module,
        batch: torch.Tensor,
        rows: torch.Tensor,
        n_tokens: float | None,
        noise: torch.Tensor | None,
    ) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """One micro-batch: its loss, the weight its gradient gets, and the teacher's logits (if used).

        Classification: the loss is the micro-batch's mean, weighted by its share of the global
        batch. Token data: the loss is already divided by the step's scored tokens (``n_tokens``),
        so micro-batches add up. Under DDP, which averages gradients over ranks, both are also
        multiplied by the world size. A rank without rows returns a zero loss with a gradient.
        """
        run, options, dist = self.run, self.options, self.run.dist
        x = run.train_x[rows]
        mask = run.train_mask[rows] if run.train_mask is not None else None
        if noise is not None:
            x = x + noise * run.config.augment.noise_std
        x = x.to(run.device)
        y = run.train_y[rows].to(run.device)
        with run.autocast():
            logits = _as_logits(model(x) if mask is None else model(x, mask.to(run.device)), "student")
        if not len(rows):
            return logits.float().sum() * 0.0, 1.0, None
        teacher_logits = None
        if run.tokens:
            assert mask is not None and n_tokens is not None
            mask = mask.to(run.device)
            if self.uses_teacher:
                teacher_logits = run.teacher_forward(x, mask)
                loss = token_kd_loss(
                    logits,
                    teacher_logits,
                    y,
                    attention_mask=mask,
                    num_valid_tokens=n_tokens,
                    divergence=options.divergence,
                    temperature=options.temperature,
                    alpha=options.alpha,
                    beta=options.beta,
                    vocab_size=run.vocab_size,
                )
            else:
                # The control (and a teacher trained here): next-token cross-entropy alone.
                loss = _token_cross_entropy(
                    logits, y, mask, n_tokens=n_tokens, vocab_size=run.vocab_size, label_smoothing=self.label_smoothing
                )
            return loss, float(dist.world_size), teacher_logits
        if self.uses_teacher:
            if run.train_teacher_logits is not None:
                teacher_logits = run.train_teacher_logits[rows].to(run.device)  # by row, never by batch order
            else:
                teacher_logits = run.teacher_forward(x)
            loss = distillation_loss(
                logits,
                teacher_logits,
                y,
                temperature=options.temperature,
                alpha=options.alpha,
                filter_teacher_errors=options.filter_teacher_errors,
            )
        else:
            # The control (and a teacher trained here): labels only.
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        # DDP averages gradients over ranks; weighting each rank's mean by its share of the global
        # batch makes that average the gradient of the global batch's mean loss.
        return loss, len(rows) * dist.world_size / len(batch), teacher_logits

    def evaluate(self) -> tuple[float, float | None, float | None]:
        """Top-1 accuracy against the labels and top-1 agreement with the teacher on the validation set.

        The agreement is None in the teacher phase. On token data both are over the scored
        tokens (the next token), and the third value is the perplexity on the labels (None for
        classification).

        Under torchrun each rank predicts its share of whole batches (:func:`shard_rows` with
        ``block = teacher_batch_size``) and every rank gathers all predictions back in row
        order, each example exactly once; the numbers are then those one process computes.
        """
        run = self.run
        if run.tokens:
            return self._evaluate_tokens()
        dist, n, size = run.dist, len(run.val_x), self.options.teacher_batch_size
        val_x = run.val_x[torch.from_numpy(dist.shard(n, block=size))] if dist.enabled else run.val_x
        self.model.eval()
        preds = [torch.empty(0, dtype=torch.int64)]
        with torch.no_grad(), run.autocast():
            for x in val_x.split(size):
                preds.append(_as_logits(self.model(x.to(run.device)), self.name).float().argmax(dim=1).cpu())
        self.model.train()
        pred = torch.cat(preds)
        if dist.enabled:
            pred = dist.gather_rows(pred, n, block=size)
        accuracy = float((pred == run.val_y).double().mean())
        if run.teacher_val_preds is None:
            return accuracy, None, None
        agreement = float((pred == run.teacher_val_preds).double().mean())
        return accuracy, agreement, None

    def _evaluate_tokens(self) -> tuple[float, float | None, float | None]:
        """:meth:`evaluate` on token data: per-sequence sums, gathered in row order, then token-weighted."""
        run = self.run
        assert run.val_mask is not None and run.vocab_size is not None
        dist, n, size = run.dist, len(run.val_x), self.options.teacher_batch_size
        rows = torch.from_numpy(dist.shard(n, block=size)) if dist.enabled else torch.arange(n)
        self.model.eval()
        # Per sequence: scored tokens, correct next tokens, agreements with the teacher, summed NLL.
        sums = [torch.empty((0, 4), dtype=torch.float64)]
        with torch.no_grad(), run.autocast():
            for part in rows.split(size):
                ids, mask, labels = run.val_x[part], run.val_mask[part], run.val_y[part]
                logits = _as_logits(self.model(ids.to(run.device), mask.to(run.device)), self.name)
                logits = logits[..., : run.vocab_size].float().cpu()
                scored = torch.from_numpy(scored_positions(labels.numpy(), mask.numpy())).double()
                target = torch.zeros_like(labels)
                target[:, :-1] = labels[:, 1:].clamp(min=0)
                nll = -torch.log_softmax(logits, dim=-1).gather(-1, target[..., None])[..., 0].double()
                pred = logits.argmax(dim=-1)
                agree = pred == run.teacher_val_preds[part] if run.teacher_val_preds is not None else pred < 0
                columns = (scored, (pred == target) * scored, agree * scored, nll * scored)
                sums.append(torch.stack([c.sum(dim=1) for c in columns], dim=1))
        self.model.train()
        per_sequence = torch.cat(sums)
        if dist.enabled:
            per_sequence = dist.gather_rows(per_sequence, n, block=size)
        tokens, correct, agreed, nll = per_sequence.sum(dim=0).tolist()
        agreement = agreed / tokens if run.teacher_val_preds is not None else None
        return correct / tokens, agreement, float(np.exp(nll / tokens))

    def _track_best(self, record: Mapping[str, Any]) -> None:
        """Early stopping: the student on validation agreement, the control on validation accuracy.

        The control never selects on the teacher: choosing its epoch by agreement
        would leak the teacher into the model meant to show what labels alone give.
        """
        if self.options.patience == 0:
            return
        score = record["val_agreement" if self.uses_teacher else "val_accuracy"]
        if self.best is None or score > self.best["score"]:
            state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            self.best = {"epoch": record["epoch"], "score": score, "model": state}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
            self.stopped_early = self.bad_epochs >= self.options.patience

    def finish(self) -> None:
        """After the last epoch: keep the best epoch's weights when early stopping is on."""
        if self.best is not None:
            self.model.load_state_dict(self.best["model"])
            self.selected_epoch = int(self.best["epoch"])
        else:
            self.selected_epoch = self.epoch
        self.done = True

    def describe(self, record: Mapping[str, Any]) -> str:
        width = len(str(self.options.epochs))
        agreement = f"val_agreement {record['val_agreement']:.4f}  " if "val_agreement" in record else ""
        if "val_perplexity" in record:
            agreement += f"val_perplexity {record['val_perplexity']:.3f}  "
        return (
            f"{self.name:<7} epoch {record['epoch']:>{width}}/{self.options.epochs}  "
            f"train_loss {record['train_loss']:.4f}  val_accuracy {record['val_accuracy']:.4f}  "
            f"{agreement}lr {record['lr']:.3g}  ({self._seconds:.1f} s)"
        )

    # -- export ------------------------------------------------------------------

    def export(self, path: Path, *, missing_only: bool = False) -> None:
        """Write the model as a torch.export program with a dynamic batch dimension (or TorchScript)."""
        if missing_only and path.is_file():
            return
        model = copy.deepcopy(self.model).cpu().float().eval()
        rows = self.run.train_x[: max(2, min(8, len(self.run.train_x)))]
        # torch.export saves its example inputs in the .pt2, and a slice of the training set
        # is a view whose whole storage (every training row) would be saved with it. Zeros of
        # the same shape and dtype trace the same graph and leak nothing; tracing TorchScript
        # follows the values, so it gets real rows, which a traced module does not keep.
        example = torch.zeros_like(rows, memory_format=torch.contiguous_format)
        if self.run.config.output.format == "torchscript":
            with torchscript_deprecation_ignored():  # the user asked for TorchScript
                try:
                    program: Any = torch.jit.script(model)
                except Exception:  # noqa: BLE001 — not scriptable: fall back to tracing on an example batch
                    program = torch.jit.trace(model, rows)
                atomic_write(path, lambda f: torch.jit.save(program, f))
            return
        batch = torch.export.Dim("batch", min=1)
        try:
            if self.run.tokens:
                # A language model: (input_ids, attention_mask) with a dynamic batch and length.
                dims = {0: batch, 1: torch.export.Dim("length", min=2)}
                program = torch.export.export(model, (example, torch.ones_like(example)), dynamic_shapes=(dims, dims))
            else:
                program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        except Exception as e:
            raise ModelError(
                f"cannot export the {self.name} with a dynamic batch dimension ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                'try [output] format = "torchscript"'
            ) from e
        atomic_write(path, lambda f: torch.export.save(program, f))

    # -- checkpoint --------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "order": self.order.get_state(),
            "noise": self.noise.get_state(),
        }
        dist = self.run.dist
        if dist.enabled:
            # Each rank's own global stream (dropout), so a resume with as many ranks continues exactly.
            rng["ranks"] = dist.all_gather_object(_rank_rng_state(dist.device))
        elif torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "records": [dict(r) for r in self.records],
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": rng,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "done": self.done,
            "selected_epoch": self.selected_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.records = [dict(r) for r in state["records"]]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.order.set_state(rng["order"])
        self.noise.set_state(rng["noise"])
        dist = self.run.dist
        ranks = rng.get("ranks")
        if dist.enabled and ranks is not None and len(ranks) == dist.world_size:
            own = ranks[dist.rank]
            torch.set_rng_state(own["torch"])
            if own.get("cuda") is not None and dist.device.startswith("cuda"):
                torch.cuda.set_rng_state(own["cuda"], dist.device)
        elif dist.rank:
            # Another world size than the checkpoint's: a fresh stream for this rank's dropout.
            torch.manual_seed(_rank_seed(self.options.seed, dist.rank, len(self.records)))
        elif (
            not dist.enabled
            and "cuda" in rng
            and torch.cuda.is_available()
            and len(rng["cuda"]) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.best = state["best"]
        self.bad_epochs = int(state["bad_epochs"])
        self.stopped_early = bool(state["stopped_early"])
        self.done = bool(state["done"])
        self.selected_epoch = state["selected_epoch"]
        self.model.train()


# -- checkpoint and manifest files ----------------------------------------------


def _start(
    config: TrainConfig, checkpoint: Path, *, resume: bool, overwrite: bool, say: Callable[[str], None]
) -> dict[str, Any] | None:
    """The checkpoint to continue from, or None to start afresh (after clearing an old run if asked)."""
    out = checkpoint.parent
    if resume and not overwrite:
        if not checkpoint.is_file():
            say(f"no checkpoint in {out}; starting from epoch 1")
            return None
        try:
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConfigError(
                f"cannot resume: {checkpoint} is not a readable checkpoint ({type(e).__name__}); "
                "start over with --overwrite",
                file=_str(config.file),
            ) from e
        if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(
                f"cannot resume: {checkpoint} was written by another version of the trainer; start over with "
                "--overwrite",
                file=_str(config.file),
            )
        changed = _changed_keys(json.loads(saved["config_json"]), json.loads(_config_json(config)))
        if changed:
            raise ConfigError(
                f"cannot resume: the config changed since {checkpoint} was written ({', '.join(changed)}); "
                "restore it, or start over with --overwrite",
                file=_str(config.file),
            )
        done = {name: len(p["records"]) for name, p in saved["phases"].items()}
        say(f"resuming {out}: " + ", ".join(f"{name} after epoch {n}" for name, n in done.items()))
        return saved
    if checkpoint.is_file() and not overwrite:
        raise ConfigError(
            f"{out} already holds a training run ({CHECKPOINT_FILE}); continue it with --resume, "
            "or start over with --overwrite",
            file=_str(config.file),
            where="[output]",
        )
    # A teacher file is removed only when this run trains it: otherwise it may be the user's teacher.
    ours = [p for p in PHASES if p != "teacher" or config.teacher_training is not None]
    for name in (CHECKPOINT_FILE, MANIFEST_FILE, *(p + s for p in ours for s in (".pt2", ".pt"))):
        (out / name).unlink(missing_ok=True)
    return None


def _save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(dict(state), f))


def _write_manifest(
    run: _Run, state: Mapping[str, Any], out: Path, *, status: str, current: _Phase | None
) -> dict[str, Any]:
    config = run.config
    phases = {**run.finished_phases, **({current.name: current} if current is not None else {})}

    def model_entry(name: str) -> dict[str, Any] | None:
        phase = phases.get(name)
        saved = state["phases"].get(name)
        if phase is None and saved is None:
            return None
        records = phase.records if phase is not None else saved["records"]
        done = phase.done if phase is not None else bool(saved["done"])
        path = out / (name + config.output.suffix)
        entry: dict[str, Any] = {
            "file": path.name if done and path.is_file() else None,
            "sha256": sha256_file(path) if done and path.is_file() else None,
            "format": "torch.export" if config.output.format == "export" else "torchscript",
            "factory": config.student.factory,
            "kwargs": dict(config.student.kwargs),
            "params": sum(int(p.numel()) for p in phase.model.parameters()) if phase is not None else None,
            "selected_epoch": phase.selected_epoch if phase is not None else saved["selected_epoch"],
            "stopped_early": phase.stopped_early if phase is not None else bool(saved["stopped_early"]),
        }
        if name == "control":
            entry["epochs"] = [dict(r) for r in records]
        return entry

    student = model_entry("student")
    student_phase = phases.get("student")
    student_state = state["phases"].get("student")
    if student_phase is not None:
        epochs = student_phase.records
    else:
        epochs = student_state["records"] if student_state is not None else []
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "kind": "distill_eval.train",
        "status": status,
        "finished": status == "finished",
        "created": state["created"],
        "updated": _now(),
        "command": _command(),
        "config_file": _str(config.file),
        "output_dir": str(out),
        "config": json.loads(_config_json(config)),
        "seed": config.distill.seed,
        "teacher": _teacher_entry(run, state, out, phases.get("teacher")),
        "data": {"train": run.train_data.describe(), "val": run.val_data.describe()},
        "environment": {**environment(), "device": run.device, "precision": "bf16" if run.bf16 else "fp32"},
        "distributed": {
            "world_size": run.dist.world_size,
            "backend": run.dist.backend,
            "global_batch_size": config.distill.batch_size,
        },
        "student": student,
        "control": model_entry("control"),
        "epochs": [dict(r) for r in epochs],
    }
    atomic_write(out / MANIFEST_FILE, (json.dumps(manifest, indent=1, default=str) + "\n").encode())
    return manifest


def _teacher_entry(run: _Run, state: Mapping[str, Any], out: Path, phase: _Phase | None) -> dict[str, Any]:
    config = run.config
    entry: dict[str, Any] = {
        "spec": run.teacher_spec.describe(),
        "trained": config.teacher_training is not None,
        "sha256": run.teacher_sha256,
        "fingerprint": run.teacher_fingerprint,
        "format": run.teacher.format if run.teacher is not None else None,
        "params": run.teacher.params if run.teacher is not None else None,
        "logits": run.teacher_info,
    }
    if config.teacher_training is None:
        return entry
    saved = state["phases"].get("teacher")
    records = phase.records if phase is not None else (saved["records"] if saved is not None else [])
    done = phase.done if phase is not None else bool(saved is not None and saved["done"])
    path = out / ("teacher" + config.output.suffix)
    entry.update(
        file=path.name if done and path.is_file() else None,
        factory=config.teacher.factory,
        kwargs=dict(config.teacher.kwargs),
        recipe=dataclasses.asdict(config.teacher_training),
        epochs=[dict(r) for r in records],
    )
    return entry


def _phase_options(config: TrainConfig, name: str) -> DistillOptions:
    """The recipe of a phase: ``[distill]``, or for the teacher its own recipe (constant lr, no early stopping)."""
    recipe = config.teacher_training
    if name != "teacher" or recipe is None:
        return config.distill
    return dataclasses.replace(
        config.distill,
        epochs=recipe.epochs,
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        weight_decay=recipe.weight_decay,
        seed=config.distill.seed if recipe.seed is None else recipe.seed,
        schedule="constant",
        patience=0,
    )


# -- helpers ------------------------------------------------------------------


def _rank_seed(*entropy: int) -> int:
    """A seed for a rank's own random stream, from the config's seed, the rank (and the epoch)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0] >> 1)


def _rank_rng_state(device: str) -> dict[str, Any]:
    cuda = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_initialized()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if cuda else None}


def _token_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    n_tokens: float,
    vocab_size: int | None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Next-token cross-entropy summed over the scored tokens, over ``n_tokens`` (the step's count).

    The unshifted convention of :func:`~distill_eval.lm.tokens.scored_positions`: the logits at
    ``t`` score ``labels[t + 1]``. With ``alpha = 0`` :func:`~distill_eval.lm.loss.token_kd_loss`
    is the same loss; this one also smooths labels and needs no teacher.
    """
    scored = torch.from_numpy(scored_positions(labels.cpu().numpy(), attention_mask.cpu().numpy()))
    scored = scored[:, :-1].to(logits.device)
    z = logits[:, :-1, :vocab_size][scored].float()
    y = labels[:, 1:][scored]
    loss = F.cross_entropy(z, y, reduction="sum", label_smoothing=label_smoothing)
    return loss / max(n_tokens, 1.0)


def _labelled(data: Dataset, role: str) -> Dataset:
    if data.y is None:
        raise DataError(f"[data] {role}: dataset '{data.name}' ({data.source}) has no labels; training needs them")
    return data


def _teacher_sha256(config: TrainConfig, injected: Any) -> str | None:
    """The sha256 of the teacher's model file (its weights file for a factory), as results.json records it."""
    if injected is not None:
        return None
    files = [p for p in (config.teacher.path, config.teacher.weights) if p is not None]
    return sha256_file(files[-1]) if files else None


def _use_bf16(config: TrainConfig, device: str) -> bool:
    precision = config.distill.precision
    cuda = device.startswith("cuda")
    if precision == "bf16" and not cuda:
        raise ConfigError(
            f"'precision = \"bf16\"' is autocast on CUDA, but the device is {device!r}; "
            'use precision = "auto" (bf16 on CUDA, fp32 elsewhere) or "fp32"',
            file=_str(config.file),
            where="[distill]",
        )
    return cuda and precision in ("bf16", "auto") and torch.cuda.is_bf16_supported()


def _as_logits(out: Any, name: str) -> torch.Tensor:
    """A model's output as a logits tensor (first element of a tuple, ``["logits"]``, ``.logits``)."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    elif isinstance(out, Mapping) and "logits" in out:
        out = out["logits"]
    elif hasattr(out, "logits"):
        out = out.logits
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"model '{name}' returned {type(out).__name__}; expected a tensor of logits")
    return out


def _config_json(config: TrainConfig) -> str:
    return json.dumps(config.document, sort_keys=True, default=str)


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ, apart from those a resume may change."""
    a, b = dict(_flatten(old)), dict(_flatten(new))
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, _ABSENT) != b.get(k, _ABSENT))
    return [k for k in keys if not k.startswith(_RESUMABLE_CHANGES)]


_ABSENT = object()


def _flatten(table: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in table.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _command() -> list[str]:
    """The command line that ran, with ``python -m distill_eval`` shown as such."""
    if not sys.argv:
        return []
    program = Path(sys.argv[0]).name
    return [*(["python", "-m", "distill_eval"] if program == "__main__.py" else [program]), *sys.argv[1:]]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
