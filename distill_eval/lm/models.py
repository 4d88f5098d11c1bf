"""Token-level models: a Hugging Face directory, a factory module, or a ``.pt2`` program.

Every loader returns a :class:`TokenModel`, one small interface over three sources:

``path`` = a directory
    A Hugging Face model directory (``config.json`` + weights), loaded with
    ``AutoModelForCausalLM.from_pretrained(path, local_files_only=True)``: nothing is ever
    downloaded. Needs the optional ``transformers`` package (``pip install 'distill-eval[hf]'``).
    ``kwargs`` go to ``from_pretrained`` (``dtype = "bfloat16"`` is read as ``torch.bfloat16``);
    ``trust_remote_code = true`` runs code from the directory, so it needs ``trusted = true``.
``factory`` = ``"module:callable"`` [+ ``weights``]
    The callable (called with ``kwargs``) returns an ``nn.Module`` whose
    ``forward(input_ids, attention_mask)`` returns logits of shape (batch, length, vocab) or an
    object with ``.logits``; ``weights`` is a state dict read with ``weights_only=True``.
``path`` = a ``.pt2`` file
    A ``torch.export`` program of ``forward(input_ids, attention_mask)`` (or of
    ``forward(input_ids)``) exported with a dynamic batch *and* length::

        batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
        dims = {0: batch, 1: length}
        program = torch.export.export(model, (input_ids, attention_mask), dynamic_shapes=(dims, dims))
        torch.export.save(program, "student.pt2")

The *true* vocabulary size is, in order: an explicit ``vocab_size``; the length of the
tokenizer saved in a Hugging Face directory; ``config.vocab_size`` of the module (Hugging Face
models and look-alikes); a module attribute ``vocab_size``; else the width of the output head.
Output heads padded past it (to a multiple of 64 or 128, as many checkpoints are) are sliced
off, so a teacher and a student with the same tokenizer but differently padded heads compare;
two different true sizes are a :class:`~distill_eval.errors.ModelError` (:func:`shared_vocab`).
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill_eval._hashing import sha256_file, sha256_json
from distill_eval.config import ModelSpec
from distill_eval.errors import DistillWarning, ModelError

# Private helpers of distill_eval.models, imported rather than copied: one factory import, one
# state-dict reader, one .pt2 reader (with its refusal of archives that would run code).
from distill_eval.models import (
    Model,
    _call_factory,
    _first_line,
    _load_export,
    _load_weights,
    _torch_model,
    model_fingerprint,
    parameter_fingerprint,
)

__all__ = ["TokenModel", "load_token_model", "shared_vocab", "token_model_fingerprint"]

HF_INSTALL = "pip install 'distill-eval[hf]'"
#: files whose presence means a Hugging Face directory holds a tokenizer
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")


@dataclass
class TokenModel:
    """A loaded language model: ``model(input_ids, attention_mask)`` gives logits over the true vocabulary.

    Attributes
    ----------
    name : str
        The model's name in the configuration (``"teacher"``, ``"student"``, ...).
    format : str
        ``"hf"``, ``"factory"`` or ``"torch.export"``.
    module : object
        The underlying module, in eval mode, on :attr:`device`.
    true_vocab_size : int
        Tokens in the vocabulary; logits past it are sliced off.
    vocab_source : str
        Where :attr:`true_vocab_size` came from: ``"vocab_size option"``, ``"tokenizer"``,
        ``"config.vocab_size"``, ``"module.vocab_size"`` or ``"output head"``.
    head_size : int
        Logits per token the module outputs (``>= true_vocab_size``; larger when padded).
    device : str
        Where the module and its inputs live.
    params : int or None
        Number of parameters, when known.
    """

    name: str
    format: str
    module: Any
    true_vocab_size: int
    vocab_source: str
    head_size: int
    device: str = "cpu"
    params: int | None = None
    _forward: Callable[[Any, Any], Any] = field(default=None, repr=False)  # type: ignore[assignment]
    _cached: Callable[[Any, Any, Any], Any] | None = field(default=None, repr=False)

    @property
    def has_kv_cache(self) -> bool:
        """Whether the model reuses its keys and values across calls (see :meth:`forward_cached`).

        True for a Hugging Face model and for a module whose ``forward`` takes
        ``past_key_values`` (or ``cache``) and ``use_cache`` (as :class:`~distill_eval.train.zoo.CausalLM`);
        a ``.pt2`` program has no cache.
        """
        return self._cached is not None

    def forward_cached(self, input_ids: Any, attention_mask: Any, past: Any = None) -> tuple[Any, Any]:
        """Logits of new tokens given the cache of the earlier ones, and the cache extended by them.

        Parameters
        ----------
        input_ids : tensor of int, shape (batch, new)
            The new tokens only (all of a prompt on the first call, with ``past=None``).
        attention_mask : tensor, shape (batch, cached + new)
            1 for real tokens, over the cached *and* the new positions.
        past : object, optional
            What the previous call returned; None on the first call.

        Returns
        -------
        logits : tensor of shape (batch, new, true_vocab_size)
        past : object
            The model's cache, to pass to the next call.

        Raises
        ------
        ModelError
            When the model has no cache (:attr:`has_kv_cache`) or its output has no
            ``past_key_values`` (or ``cache``) or logits of the right shape.
        """
        import torch

        if self._cached is None:
            raise ModelError(f"model '{self.name}' ({self.format}) has no key-value cache")
        ids = torch.as_tensor(input_ids).to(self.device, torch.int64)
        mask = torch.as_tensor(attention_mask).to(self.device, torch.int64)
        with torch.inference_mode():
            output = self._cached(ids, mask, past)
            logits = _as_logits(output, self.name)
        cache = next((c for c in (_field(output, "cache"), _field(output, "past_key_values")) if c is not None), None)
        if cache is None:
            raise ModelError(
                f"model '{self.name}' was called with use_cache=True but returned no past_key_values; expected an "
                "object with .logits and .past_key_values"
            )
        _check_logits(logits, tuple(ids.shape), self.true_vocab_size, self.name)
        return logits[..., : self.true_vocab_size], cache

    def __call__(self, input_ids: Any, attention_mask: Any = None) -> Any:
        """Logits of a batch, sliced to the true vocabulary.

        Runs under :func:`torch.inference_mode`; the logits keep the model's floating dtype
        (a bfloat16 model gives bfloat16 logits: upcasting a whole ``(batch, length, vocab)``
        array to float32 is left to consumers that do it a chunk at a time).
        The logits are inference tensors, fine as a teacher's targets in
        :func:`distill_eval.lm.loss.token_kd_loss`; a student being trained is called through
        :attr:`module` (in train mode) instead.

        Parameters
        ----------
        input_ids : tensor or array of int, shape (batch, length)
            Token ids; moved to :attr:`device` as int64.
        attention_mask : tensor or array of shape (batch, length), optional
            1 for real tokens; default all ones.

        Returns
        -------
        tensor of shape (batch, length, true_vocab_size)
            Floating-point logits, on :attr:`device`: a view of the model's output.

        Raises
        ------
        ModelError
            When the output is not floating-point logits of shape (batch, length, >= true_vocab_size).
        """
        import torch

        ids = torch.as_tensor(input_ids).to(self.device, torch.int64)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(ids.shape)}")
        mask = (
            torch.ones_like(ids)
            if attention_mask is None
            else torch.as_tensor(attention_mask).to(self.device, torch.int64)
        )
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)} but input_ids has shape {tuple(ids.shape)}")
        with torch.inference_mode():
            logits = _as_logits(self._forward(ids, mask), self.name)
        _check_logits(logits, tuple(ids.shape), self.true_vocab_size, self.name)
        return logits[..., : self.true_vocab_size]

    def parameter_fingerprint(self, spec: ModelSpec | None = None) -> str | None:
        """A sha256 of the loaded parameters and the true vocabulary (for a factory without weights).

        As :func:`distill_eval.models.parameter_fingerprint`; None when the module has no state dict.
        """
        base = parameter_fingerprint(Model(self.name, self.format, _unused, module=self.module), spec)
        return None if base is None else sha256_json({"model": base, "vocab_size": self.true_vocab_size})


def load_token_model(
    spec: ModelSpec,
    *,
    device: str = "cpu",
    vocab_size: int | None = None,
) -> TokenModel:
    """Load a token-level model from its spec: a Hugging Face directory, a factory, or a ``.pt2``.

    Parameters
    ----------
    spec : ModelSpec
        ``path`` (a directory or a ``.pt2`` file) or ``factory`` [+ ``weights``], ``kwargs``.
    device : str, default "cpu"
        A resolved torch device (see :func:`distill_eval.models.resolve_device`).
    vocab_size : int, optional
        The true vocabulary size, overriding what the model says (see the module docstring).

    Returns
    -------
    TokenModel
        In eval mode on ``device``, checked with one forward pass on a ``(1, 2)`` batch.

    Raises
    ------
    ModelError
        When the source is missing or unsupported, ``transformers`` is missing for a Hugging
        Face directory, a ``.pt2`` has a fixed batch or length, the forward pass fails, or the
        output head is narrower than the vocabulary; the message names the model.
    """
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1):
        raise ModelError(f"model '{spec.name}': vocab_size must be an integer >= 1, got {vocab_size!r}")
    if spec.factory is not None:
        obj = _call_factory(spec)
        if spec.weights is not None:
            _load_weights(spec, obj)
        return _from_module(spec.name, obj, device=device, format="factory", vocab_size=vocab_size)
    if spec.path is None:
        raise ModelError(f"model '{spec.name}' has neither 'path' nor 'factory'")
    path = Path(spec.path)
    if path.is_dir():
        return _load_hf(spec, path, device=device, vocab_size=vocab_size)
    if not path.is_file():
        raise ModelError(f"model '{spec.name}': not found: {path}")
    if path.suffix.lower() == ".pt2":
        return _load_pt2(spec, path, device=device, vocab_size=vocab_size)
    state_dict = " (a state dict goes in 'weights', next to the 'factory' that builds the module)"
    raise ModelError(
        f"model '{spec.name}': {path}: unsupported format {path.suffix.lower()!r} for a language model; expected "
        "a Hugging Face model directory, a .pt2 torch.export program, or 'factory' (+ 'weights')"
        + (state_dict if path.suffix.lower() in (".pt", ".pth") else "")
    )


def shared_vocab(teacher: TokenModel, student: TokenModel) -> int:
    """The vocabulary size a teacher and a student share, or a ModelError naming both sizes.

    Parameters
    ----------
    teacher, student : TokenModel
        Loaded models.

    Returns
    -------
    int
        The common true vocabulary size.

    Raises
    ------
    ModelError
        When the true sizes differ: token-level distillation and comparison need one vocabulary.
    """
    if teacher.true_vocab_size != student.true_vocab_size:
        raise ModelError(
            f"model '{teacher.name}' has a vocabulary of {teacher.true_vocab_size} tokens (from its "
            f"{teacher.vocab_source}) but model '{student.name}' has {student.true_vocab_size} (from its "
            f"{student.vocab_source}): token-level comparison needs one shared tokenizer; if an output head is only "
            "padded, set vocab_size to the tokenizer's size"
        )
    return teacher.true_vocab_size


def token_model_fingerprint(
    spec: ModelSpec,
    *,
    vocab_size: int | None = None,
    sha256: Callable[[Path], str] = sha256_file,
) -> str | None:
    """A sha256 of everything that determines a token model's logits, or None (a factory without weights).

    A Hugging Face directory is hashed by its top-level files (config, weight shards,
    tokenizer; hidden files and sub-folders such as ``checkpoint-*`` are not read by
    ``from_pretrained`` and are skipped); a file or factory as
    :func:`distill_eval.models.model_fingerprint`. ``vocab_size`` is part of the hash.

    Parameters
    ----------
    spec : ModelSpec
        Where the model comes from.
    vocab_size : int, optional
        The explicit true vocabulary size, as given to :func:`load_token_model`.
    sha256 : callable, default sha256_file
        Hashes one file.
    """
    if spec.path is not None and Path(spec.path).is_dir():
        files = sorted(p for p in Path(spec.path).iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ModelError(f"model '{spec.name}': {spec.path} is an empty directory")
        base: str | None = sha256_json({"hf_files": {p.name: sha256(p) for p in files}, "kwargs": dict(spec.kwargs)})
    else:
        base = model_fingerprint(spec, sha256=sha256)
    if base is None:
        return None
    return sha256_json({"model": base, "vocab_size": vocab_size, "kind": "token"})


def _unused(x: Any) -> Any:
    raise NotImplementedError("a token model is called as model(input_ids, attention_mask)")


# -- loaders -------------------------------------------------------------------


def _from_module(
    name: str,
    module: Any,
    *,
    device: str,
    format: str,
    vocab_size: int | None,
    call: Callable[[Any, Any, Any], Any] | None = None,
    cached: Callable[[Any, Any, Any, Any], Any] | None = None,
    sources: Mapping[str, int] | None = None,
    probe_shape: tuple[int, int] = (1, 2),
) -> TokenModel:
    """Wrap an ``nn.Module`` (or exported graph module): eval mode, device, true vocabulary, one probe call."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelError(
            f"model '{name}': the factory returned {type(module).__name__}; a language model must be a "
            "torch.nn.Module with forward(input_ids, attention_mask)"
        )
    base = _torch_model(name, module, device=device, format=format, exported=format == "torch.export")
    module = base.module
    call = call or (lambda m, ids, mask: m(ids, mask))

    def forward(ids: Any, mask: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return call(module, ids, mask)

    if cached is None and format == "factory" and _cache_argument(module) is not None:
        cached = _hf_style_cache_call
    forward_cached = None if cached is None else (lambda ids, mask, past: cached(module, ids, mask, past))

    ids = torch.zeros(probe_shape, dtype=torch.int64, device=device)
    try:
        with torch.inference_mode():
            out = _as_logits(forward(ids, torch.ones_like(ids)), name)
    except ModelError:
        raise
    except Exception as e:  # the user's forward pass failed: name the call, not our traceback
        raise ModelError(
            f"model '{name}': forward(input_ids, attention_mask) on a batch of shape {probe_shape} failed: "
            f"{_first_line(e)}"
        ) from e
    if out.ndim != 3 or tuple(out.shape[:2]) != probe_shape:
        raise ModelError(
            f"model '{name}' returned logits of shape {tuple(out.shape)} for input_ids of shape {probe_shape}; "
            "expected (batch, length, vocab)"
        )
    if not out.is_floating_point():
        raise ModelError(f"model '{name}' returned logits of dtype {out.dtype}; expected floating point")
    head = int(out.shape[2])
    true, source = _true_vocab(module, vocab_size, sources or {}, head)
    if true > head:
        raise ModelError(
            f"model '{name}': its output head gives {head} logits per token but its vocabulary ({source}) has "
            f"{true} tokens"
        )
    return TokenModel(
        name=name,
        format=format,
        module=module,
        true_vocab_size=true,
        vocab_source=source,
        head_size=head,
        device=device,
        params=base.params,
        _forward=forward,
        _cached=forward_cached,
    )


def _parameters(module: Any) -> set[str]:
    try:
        return set(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):  # a builtin or C-implemented forward
        return set()


def _cache_argument(module: Any) -> str | None:
    """The name under which ``module.forward`` takes a key-value cache, with ``use_cache``; None if it takes none.

    Hugging Face models took ``past_key_values`` until transformers 5 renamed it ``cache``.
    """
    parameters = _parameters(module)
    if "use_cache" not in parameters:
        return None
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def _hf_style_cache_call(module: Any, ids: Any, mask: Any, past: Any) -> Any:
    """One cached forward in the Hugging Face convention; positions counted from each row's first real token.

    Left padding needs explicit positions: a model that takes ``position_ids`` gets the
    attended-token count minus one for each new token (as ``generate`` computes them).
    """
    kwargs: dict[str, Any] = {"attention_mask": mask, _cache_argument(module) or "past_key_values": past}
    kwargs["use_cache"] = True
    if "position_ids" in _parameters(module):
        kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)[:, -ids.shape[1] :]
    return module(ids, **kwargs)


def _true_vocab(module: Any, explicit: int | None, sources: Mapping[str, int], head: int) -> tuple[int, str]:
    if explicit is not None:
        return explicit, "vocab_size option"
    if sources:
        source, value = next(iter(sources.items()))
        return value, source
    config_size = getattr(getattr(module, "config", None), "vocab_size", None)
    if isinstance(config_size, int) and not isinstance(config_size, bool):
        return config_size, "config.vocab_size"
    attr = getattr(module, "vocab_size", None)
    if isinstance(attr, int) and not isinstance(attr, bool):
        return attr, "module.vocab_size"
    return head, "output head"


def _load_pt2(spec: ModelSpec, path: Path, *, device: str, vocab_size: int | None) -> TokenModel:
    loaded = _load_export(spec, path, "cpu")  # refuses archives that would run code, unless trusted
    module = loaded.module
    inputs = [n for n in module.graph.nodes if n.op == "placeholder"]
    if len(inputs) not in (1, 2):
        raise ModelError(
            f"model '{spec.name}': {path} takes {len(inputs)} inputs; a language model takes "
            "(input_ids, attention_mask) or (input_ids)"
        )
    shape = getattr(inputs[0].meta.get("val"), "shape", None)
    if shape is None or len(shape) != 2:
        raise ModelError(
            f"model '{spec.name}': {path} takes a first input of shape {tuple(shape) if shape else '?'}; expected "
            "input_ids of shape (batch, length)"
        )
    fixed = [f"{what} {int(d)}" for what, d in zip(("batch size", "length"), shape, strict=True) if isinstance(d, int)]
    if fixed:
        raise ModelError(
            f"model '{spec.name}': {path} was exported with a fixed {' and '.join(fixed)}; export it with a dynamic "
            "batch and length: dims = {0: torch.export.Dim('batch'), 1: torch.export.Dim('length')}; "
            "torch.export.export(model, (input_ids, attention_mask), dynamic_shapes=(dims, dims))"
        )
    ranges = getattr(module, "range_constraints", {}) or {}
    probe = tuple(max(2, _lower(ranges, d)) for d in shape)
    if len(inputs) == 1:
        call: Callable[[Any, Any, Any], Any] = lambda m, ids, mask: m(ids)  # noqa: E731
    else:
        call = lambda m, ids, mask: m(ids, mask)  # noqa: E731
    return _from_module(
        spec.name,
        module,
        device=device,
        format="torch.export",
        vocab_size=vocab_size,
        call=call,
        probe_shape=(int(probe[0]), int(probe[1])),
    )


def _lower(ranges: Mapping[Any, Any], dim: Any) -> int:
    """The smallest size a dynamic dimension accepts (0 when unknown)."""
    try:
        return int(ranges[dim.node.expr].lower)
    except (AttributeError, KeyError, TypeError, ValueError):
        return 0


def _load_hf(spec: ModelSpec, path: Path, *, device: str, vocab_size: int | None) -> TokenModel:
    try:
        import transformers
    except ImportError:
        raise ModelError(
            f"model '{spec.name}': {path} is a Hugging Face model directory, which needs the transformers "
            f"package: {HF_INSTALL}"
        ) from None
    import torch

    if not (path / "config.json").is_file():
        raise ModelError(
            f"model '{spec.name}': {path} is a directory without config.json; expected a Hugging Face model "
            "directory (save_pretrained) for a language model"
        )
    kwargs = dict(spec.kwargs)
    if kwargs.get("trust_remote_code") and not spec.trusted:
        raise ModelError(
            f"model '{spec.name}': trust_remote_code runs code from {path}; set 'trusted = true' in "
            f"[tool.distill_eval.models.{spec.name}] if you trust it"
        )
    for key in ("dtype", "torch_dtype"):
        value = kwargs.get(key)
        if isinstance(value, str) and value != "auto":
            dtype = getattr(torch, value, None)
            if not isinstance(dtype, torch.dtype):
                raise ModelError(f"model '{spec.name}': kwargs.{key} = {value!r} is not a torch dtype")
            kwargs[key] = dtype
    with _quiet_transformers(transformers):
        try:
            module = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, **kwargs)
        except Exception as e:  # a broken or foreign directory: one line, not transformers' traceback
            raise ModelError(
                f"model '{spec.name}': cannot load {path} with AutoModelForCausalLM: {_first_line(e)}"
            ) from e
        sources = _tokenizer_size(spec.name, path, transformers) if vocab_size is None else {}

    def call(m: Any, ids: Any, mask: Any) -> Any:
        return m(input_ids=ids, attention_mask=mask, use_cache=False)

    return _from_module(
        spec.name,
        module,
        device=device,
        format="hf",
        vocab_size=vocab_size,
        call=call,
        cached=_hf_style_cache_call,
        sources=sources,
    )


def _tokenizer_size(name: str, path: Path, transformers: Any) -> dict[str, int]:
    """``{"tokenizer": len(tokenizer)}`` when the directory holds a tokenizer that loads, else ``{}``."""
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        return {}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 — the config's size is a usable fallback; say so
        warnings.warn(
            f"model '{name}': the tokenizer in {path} does not load ({_first_line(e)}); its true vocabulary size "
            "is taken from config.json (set vocab_size if its output head is padded)",
            DistillWarning,
            stacklevel=4,
        )
        return {}
    return {"tokenizer": len(tokenizer)}


@contextlib.contextmanager
def _quiet_transformers(transformers: Any) -> Iterator[None]:
    """No progress bars or info logs from transformers while loading (a test run's output is the report)."""
    logging = transformers.utils.logging
    bars, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


# -- outputs -------------------------------------------------------------------


def _as_logits(output: Any, name: str) -> Any:
    """The logits tensor of a forward pass: a tensor, ``.logits``, ``["logits"]`` or the first of a tuple."""
    import torch

    if isinstance(output, Mapping) and "logits" in output:
        output = output["logits"]
    elif isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        output = output[0]
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor):
        raise ModelError(
            f"model '{name}' returned {type(output).__name__}; expected a tensor of logits of shape "
            "(batch, length, vocab) or an object with .logits"
        )
    return logits


def _field(output: Any, name: str) -> Any:
    return output.get(name) if isinstance(output, Mapping) else getattr(output, name, None)


def _check_logits(logits: Any, shape: tuple[int, int], vocab: int, name: str) -> None:
    if logits.ndim != 3 or tuple(logits.shape[:2]) != shape or logits.shape[2] < vocab:
        raise ModelError(
            f"model '{name}' returned logits of shape {tuple(logits.shape)} for input_ids of shape {shape}; "
            f"expected ({shape[0]}, {shape[1]}, >= {vocab})"
        )
    if not logits.is_floating_point():
        raise ModelError(f"model '{name}' returned logits of dtype {logits.dtype}; expected floating point")
