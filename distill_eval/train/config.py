"""Training configs: TOML -> frozen :class:`TrainConfig`, validated before anything loads.

Every key: ``distill-eval docs trainer``. A training config has the tables ``[data]``, ``[teacher]``, ``[student]``,
``[distill]`` and ``[output]``, and optionally ``[augment]``::

    [data]
    train = { source = "sklearn:digits", split = "train" }   # any dataset spec, inline
    val = { source = "sklearn:digits", split = "test" }
    # kind = "classification"            # or "tokens"; implied by a token source (see below)

    [teacher]
    path = "teacher.pt"                  # any model spec the plugin loads
    # or train it first, with cross-entropy on [data] train (see TeacherTraining for the defaults):
    # train = true
    # factory = "distill_eval.train.zoo:digits_teacher"
    # kwargs = {}
    # epochs = 30, lr = 0.001, batch_size = 64, weight_decay = 0.0, label_smoothing = 0.0, seed = <[distill] seed>

    [student]
    factory = "mystudent:build"          # callable returning an nn.Module (cwd is importable)
    kwargs = {}                          # optional keyword arguments for the factory
    # weights = "init.pt"                # optional: start from these weights (a state dict)

    [distill]
    epochs = 40                          # the only required key of [distill]
    temperature = 4.0                    # T > 0
    alpha = 0.9                          # weight of the teacher's soft targets, in [0, 1]
    divergence = "forward_kl"            # "forward_kl" | "reverse_kl" | "jsd" (the last two: token data)
    beta = 0.5                           # the beta of "jsd", in [0, 1]
    batch_size = 64
    accumulation_steps = 1               # micro-batches per optimiser step (gradients accumulated)
    lr = 0.003                           # Adam
    weight_decay = 0.0
    seed = 0
    control = false                      # also train the same student on labels alone
    offline = false                      # teacher logits computed once, through the output cache
    filter_teacher_errors = "none"       # "none" | "drop" | "relabel"
    schedule = "constant"                # "constant" | "cosine" (per epoch, down to 0)
    patience = 0                         # early stopping on val_agreement; 0: off
    device = "auto"                      # "cpu", "cuda", "cuda:N", "auto"
    precision = "fp32"                   # "fp32" | "bf16" (autocast, CUDA only) | "auto"
    teacher_batch_size = 256             # inference batch for the teacher's cached logits
    cache_dir = ".distill_cache"         # the output cache (default: .distill_cache in the current folder)

    [augment]
    noise_std = 0.0                      # gaussian noise added to every training input

    [output]
    dir = "runs/digits"
    format = "export"                    # "export" (.pt2) | "torchscript" (.pt)

Token data (causal language models, ``kind = "tokens"``): the datasets are token
datasets and the teacher and student are language models,
``forward(input_ids, attention_mask) -> (batch, length, vocab)`` logits::

    [data]
    train = { source = "builtin:bytes", split = "train", seq_len = 128 }  # the built-in byte corpus
    val = { source = "builtin:bytes", split = "test" }
    # or token files (input_ids, attention_mask, labels): kind = "tokens" and
    # train = { path = "train.npz" }, val = { path = "val.npz", vocab_size = 32000 }

A source ``"builtin:bytes"`` implies ``kind = "tokens"``. The loss is then
:func:`distill_eval.lm.loss.token_kd_loss`, normalised by the scored tokens of
the whole optimisation step (all micro-batches, all ranks).

Relative paths (data files, model files, ``cache_dir``, ``[output] dir``) are
resolved against the config file's folder, as in suite files; without
``cache_dir`` the cache is ``.distill_cache`` in the current folder, where
``pytest --distill`` keeps it when run from the project root. Every mistake is
a :class:`~distill_eval.errors.ConfigError` naming the file, the table, the
key and, for a misspelt key, the nearest valid one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distill_eval._tables import TableReader
from distill_eval.config import (
    TOKEN_SOURCES,
    DatasetSpec,
    ModelSpec,
    _check_device,
    _resolve,
    dataset_spec_from_table,
    model_spec_from_table,
    read_toml,
)
from distill_eval.errors import ConfigError
from distill_eval.lm.loss import DIVERGENCES
from distill_eval.lm.session import holds_tokens

__all__ = [
    "BYTES_SOURCE",
    "DATA_KINDS",
    "FILTERS",
    "TEACHER_RECIPE_KEYS",
    "AugmentOptions",
    "DistillOptions",
    "OutputOptions",
    "TeacherTraining",
    "TrainConfig",
    "load_train_config",
    "parse_train_config",
]

FILTERS = ("none", "drop", "relabel")
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("fp32", "bf16", "auto")
FORMATS = ("export", "torchscript")
DATA_KINDS = ("classification", "tokens")
#: the built-in byte-level corpus (:func:`distill_eval.lm.tokens.load_byte_corpus`) as a training source
BYTES_SOURCE = TOKEN_SOURCES[0]
#: the keys of a ``[teacher]`` table with ``train = true`` that set the teacher's recipe
TEACHER_RECIPE_KEYS = ("epochs", "lr", "batch_size", "weight_decay", "label_smoothing", "seed")


@dataclass(frozen=True)
class DistillOptions:
    """The ``[distill]`` table: the loss and the optimisation recipe.

    ``alpha`` weighs the teacher's soft targets: the loss is
    ``(1 - alpha) * CE + alpha * T**2 * KL`` (:func:`~distill_eval.train.kd_loss`;
    on token data :func:`~distill_eval.lm.loss.token_kd_loss`, whose ``divergence``
    may also be ``"reverse_kl"`` or ``"jsd"`` with ``beta``). Each global batch of
    ``batch_size`` is cut into ``accumulation_steps`` micro-batches whose gradients
    add up before one optimiser step.
    ``filter_teacher_errors`` treats the examples whose label the teacher gets
    wrong: ``"drop"`` leaves them out of the soft term, ``"relabel"`` trains them
    on the hard label alone (see :func:`~distill_eval.train.distillation_loss`).
    """

    epochs: int
    temperature: float = 4.0
    alpha: float = 0.9
    divergence: str = "forward_kl"
    beta: float = 0.5
    batch_size: int = 64
    accumulation_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    control: bool = False
    offline: bool = False
    filter_teacher_errors: str = "none"
    schedule: str = "constant"
    patience: int = 0
    device: str = "auto"
    precision: str = "fp32"
    teacher_batch_size: int = 256
    cache_dir: Path = Path(".distill_cache")


@dataclass(frozen=True)
class TeacherTraining:
    """The recipe of a ``[teacher]`` table with ``train = true``: the teacher is trained before the student.

    The teacher (``factory`` + ``kwargs``) learns ``F.cross_entropy`` with
    ``label_smoothing`` on ``[data] train`` (with ``[augment]`` if set), with
    Adam, a constant learning rate, batches of ``batch_size`` in a seeded order
    and a seeded initialisation (``seed``; unset, ``[distill] seed``). The other
    ``[distill]`` settings (``device``, ``precision``, ``teacher_batch_size`` for
    validation) apply to it too.
    """

    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class AugmentOptions:
    """The optional ``[augment]`` table: ``noise_std`` adds N(0, noise_std²) noise to every training input."""

    noise_std: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.noise_std > 0


@dataclass(frozen=True)
class OutputOptions:
    """The ``[output]`` table: where the run goes and how the models are serialised."""

    dir: Path
    format: str = "export"

    @property
    def suffix(self) -> str:
        """``".pt2"`` for torch.export programs, ``".pt"`` for TorchScript."""
        return ".pt2" if self.format == "export" else ".pt"


@dataclass(frozen=True)
class TrainConfig:
    """A validated training config.

    Attributes
    ----------
    train, val : DatasetSpec
        ``[data] train`` and ``[data] val``; both need labels (token data: scored tokens).
    kind : str
        ``"classification"`` or ``"tokens"`` (``[data] kind``).
    teacher : ModelSpec
        ``[teacher]``: any model the plugin loads; with ``train = true``, the
        ``factory`` (+ ``kwargs``) of the teacher to train.
    student : ModelSpec
        ``[student]``: a ``factory`` (with optional ``kwargs`` and initial ``weights``).
    distill : DistillOptions
    augment : AugmentOptions
    output : OutputOptions
    teacher_training : TeacherTraining or None
        Set when ``[teacher] train = true``: train the teacher first, with this recipe.
    file : Path or None
        The config file, for messages and the manifest.
    document : mapping
        The TOML document as written, recorded in the manifest.
    """

    train: DatasetSpec
    val: DatasetSpec
    teacher: ModelSpec
    student: ModelSpec
    distill: DistillOptions
    output: OutputOptions
    kind: str = "classification"
    augment: AugmentOptions = field(default_factory=AugmentOptions)
    teacher_training: TeacherTraining | None = None
    file: Path | None = None
    document: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def tokens(self) -> bool:
        """True for token data (``[data] kind = "tokens"``): language models and the token loss."""
        return self.kind == "tokens"

    def with_output_dir(self, directory: str | Path) -> TrainConfig:
        """A copy writing into ``directory`` instead of ``[output] dir``."""
        return replace(self, output=replace(self.output, dir=Path(directory)))


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a training config file.

    Parameters
    ----------
    path : str or Path
        The ``.toml`` file; relative paths inside it are resolved against its folder.

    Returns
    -------
    TrainConfig

    Raises
    ------
    ConfigError
        For TOML syntax errors, missing tables or keys, unknown keys (with the
        nearest valid name), wrong types and out-of-range values.

    Examples
    --------
    >>> config = load_train_config("distill_eval/train/examples/digits.toml")  # doctest: +SKIP
    >>> config.distill.temperature  # doctest: +SKIP
    4.0
    """
    path = Path(path)
    return parse_train_config(read_toml(path), file=path, base=path.resolve().parent)


def parse_train_config(document: Mapping[str, Any], *, file: str | Path | None = None, base: Path) -> TrainConfig:
    """Validate an already parsed training config; relative paths are resolved against ``base``."""
    name = str(file) if file is not None else "<training config>"
    # Unknown keys are reported before missing ones: a misspelt required key gets its "did you mean".
    top = TableReader(document, file=name)
    tables = {key: top.table_of(key, None) for key in ("data", "teacher", "student", "distill", "output")}
    augment_table = top.table_of("augment", {})
    top.finish()
    for key, table in tables.items():
        if table is None:
            raise top.error(f"missing required table [{key}] (`distill-eval docs trainer` shows an example config)")
    data_table, teacher_table, student_table, distill_table, output_table = tables.values()

    r = TableReader(data_table, file=name, where="[data]")
    data = {key: r.table_of(key, None) for key in ("train", "val")}
    kind = r.string("kind", None, choices=DATA_KINDS)
    r.finish()
    for key, table in data.items():
        if table is None:
            raise r.error(f"missing required key '{key}' (an inline dataset table, e.g. {{ path = \"{key}.npz\" }})")
    # one reading of a dataset table, the project's: token data is a file of input_ids, a .jsonl
    # text file with its tokenizer, or the built-in byte corpus
    train = dataset_spec_from_table("train", data["train"], file=name, base=base, where="[data] train")
    val = dataset_spec_from_table("val", data["val"], file=name, base=base, where="[data] val")
    by_source = [spec.name for spec in (train, val) if spec.source == BYTES_SOURCE]
    if kind is None:
        kind = "tokens" if by_source or any(holds_tokens(spec) for spec in (train, val)) else "classification"
    elif kind == "classification" and by_source:
        raise r.error(
            f"'{by_source[0]}' reads the token source {BYTES_SOURCE!r}, but kind = \"classification\"; "
            'remove kind (a token source implies kind = "tokens")'
        )
    if kind == "tokens":
        for spec in (train, val):
            if spec.source is not None and spec.source != BYTES_SOURCE:
                raise r.error(
                    f"'{spec.name}' reads {spec.source!r}, which is not token data; token data is a file of "
                    f'input_ids, a .jsonl text file with its tokenizer, or source = "{BYTES_SOURCE}"'
                )

    teacher, teacher_training = _teacher(teacher_table, file=name, base=base)
    student = model_spec_from_table("student", student_table, file=name, base=base, where="[student]")
    if student.factory is None:
        raise ConfigError(
            "set 'factory' ('package.module:callable' returning an untrained nn.Module); a saved model "
            "('path') cannot be trained here, but its weights can start the student: 'factory' + 'weights'",
            file=name,
            where="[student]",
        )

    distill = _distill_options(TableReader(distill_table, file=name, where="[distill]"), base)

    r = TableReader(augment_table, file=name, where="[augment]")
    augment = AugmentOptions(noise_std=r.number("noise_std", 0.0, minimum=0))
    r.finish()
    if distill.offline and augment.enabled:
        raise ConfigError(
            f"'offline = true' cannot be used with data augmentation ([augment] noise_std = {augment.noise_std:g}): "
            "offline mode caches the teacher's logits for the clean inputs once, but the student would see "
            "different, noisy inputs every epoch; set offline = false (the teacher then runs on every augmented "
            "batch) or remove the augmentation",
            file=name,
            where="[distill]",
        )

    r = TableReader(output_table, file=name, where="[output]")
    directory = r.string("dir", None)
    output_format = r.string("format", "export", choices=FORMATS)
    r.finish()
    if directory is None:
        raise r.error("missing required key 'dir' (the folder the student, manifest and checkpoint go to)")
    if not directory:
        raise r.error("'dir' must be a non-empty path")
    if kind == "tokens":
        _check_token_options(distill, augment, output_format, file=name)
    elif distill.divergence != "forward_kl":
        raise ConfigError(
            f'\'divergence = "{distill.divergence}"\' is for token data ([data] kind = "tokens"); '
            'classification distils with the forward KL of kd_loss: remove divergence or set it to "forward_kl"',
            file=name,
            where="[distill]",
        )
    output = OutputOptions(dir=_resolve(base, directory), format=output_format)

    return TrainConfig(
        train=train,
        val=val,
        teacher=teacher,
        student=student,
        distill=distill,
        output=output,
        augment=augment,
        teacher_training=teacher_training,
        kind=kind,
        file=Path(file) if file is not None else None,
        document=dict(document),
    )


def _check_token_options(distill: DistillOptions, augment: AugmentOptions, output_format: str, *, file: str) -> None:
    """The ``[distill]``, ``[augment]`` and ``[output]`` settings that classification alone supports."""
    refusals = [
        (
            distill.offline,
            "[distill]",
            "'offline = true' caches the teacher's logits for the whole training set, which for token data would "
            "be (sequences x length x vocab) floats; set offline = false (the teacher runs on every batch)",
        ),
        (
            distill.filter_teacher_errors != "none",
            "[distill]",
            f"'filter_teacher_errors = \"{distill.filter_teacher_errors}\"' filters whole examples by the "
            'teacher\'s top-1 class; on token data set it to "none"',
        ),
        (
            augment.enabled,
            "[augment]",
            "'noise_std' adds noise to numeric inputs; token ids cannot be perturbed that way: remove [augment]",
        ),
        (
            output_format != "export",
            "[output]",
            f"'format = \"{output_format}\"': language models are written as torch.export programs with a "
            'dynamic batch and length; set format = "export"',
        ),
    ]
    for refused, where, message in refusals:
        if refused:
            raise ConfigError(f'{message} ([data] kind = "tokens")', file=file, where=where)


def _teacher(table: Any, *, file: str, base: Path) -> tuple[ModelSpec, TeacherTraining | None]:
    """The ``[teacher]`` table: a model to load, or (``train = true``) a factory and the recipe to train it."""
    r = TableReader(table, file=file, where="[teacher]")
    trains = r.boolean("train", False)
    if not trains:
        for key in TEACHER_RECIPE_KEYS:
            if key in r.table:
                raise r.error(f"'{key}' is a key of a teacher trained here; set 'train = true' or remove '{key}'")
        rest = {key: value for key, value in r.table.items() if key != "train"}
        teacher = model_spec_from_table("teacher", rest, file=file, base=base, where="[teacher]")
        if teacher.path is None and teacher.factory is None:
            raise r.error("set 'path' (a saved model) or 'factory' (+ 'weights'), or 'train = true' + 'factory'")
        return teacher, None
    for key in ("path", "weights"):
        if key in r.table:
            raise r.error(
                f"'train = true' trains the teacher from scratch, so '{key}' cannot be set; "
                f"remove '{key}' to train it, or 'train' to use {'that model' if key == 'path' else 'those weights'}"
            )
    factory = r.string("factory", None)
    kwargs = r.table_of("kwargs", {})
    defaults = TeacherTraining()
    training = TeacherTraining(
        epochs=r.integer("epochs", defaults.epochs, minimum=1),
        lr=r.number("lr", defaults.lr, minimum=0, exclusive_minimum=True),
        batch_size=r.integer("batch_size", defaults.batch_size, minimum=1),
        weight_decay=r.number("weight_decay", defaults.weight_decay, minimum=0),
        label_smoothing=r.number(
            "label_smoothing", defaults.label_smoothing, minimum=0, maximum=1, exclusive_maximum=True
        ),
        seed=r.integer("seed", None, minimum=0),
    )
    r.finish()
    if factory is None:
        raise r.error(
            "'train = true' needs 'factory' ('package.module:callable' returning the untrained teacher nn.Module)"
        )
    spec = model_spec_from_table(
        "teacher", {"factory": factory, "kwargs": kwargs}, file=file, base=base, where="[teacher]"
    )
    return spec, training


def _distill_options(r: TableReader, base: Path) -> DistillOptions:
    epochs = r.integer("epochs", None, minimum=1)
    options = DistillOptions(
        epochs=epochs,
        temperature=r.number("temperature", 4.0, minimum=0, exclusive_minimum=True),
        alpha=r.number("alpha", 0.9, minimum=0, maximum=1),
        divergence=r.string("divergence", "forward_kl", choices=DIVERGENCES),
        beta=r.number("beta", 0.5, minimum=0, maximum=1),
        batch_size=r.integer("batch_size", 64, minimum=1),
        accumulation_steps=r.integer("accumulation_steps", 1, minimum=1),
        lr=r.number("lr", 1e-3, minimum=0, exclusive_minimum=True),
        weight_decay=r.number("weight_decay", 0.0, minimum=0),
        seed=r.integer("seed", 0, minimum=0),
        control=r.boolean("control", False),
        offline=r.boolean("offline", False),
        filter_teacher_errors=r.string("filter_teacher_errors", "none", choices=FILTERS),
        schedule=r.string("schedule", "constant", choices=SCHEDULES),
        patience=r.integer("patience", 0, minimum=0),
        device=r.string("device", "auto"),
        precision=r.string("precision", "fp32", choices=PRECISIONS),
        teacher_batch_size=r.integer("teacher_batch_size", 256, minimum=1),
        # Unset, the cache is the plugin's default one in the folder the command runs in (the project root).
        cache_dir=_resolve(base, r.string("cache_dir")) if r.has("cache_dir") else Path.cwd() / ".distill_cache",
    )
    _check_device(options.device, r)
    r.finish()
    if epochs is None:
        raise r.error("missing required key 'epochs'")
    return options
