"""Model loaders: torch.export, TorchScript, factory + weights, scikit-learn, ONNX.

Every loader returns a :class:`Model`: something that maps a batch of inputs
(a float32 numpy array) to logits, plus what the report needs to know about
it. Pickle-based formats run arbitrary code when loaded, so they are refused
unless the model's table says ``trusted = true``.
"""

from __future__ import annotations

import importlib
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill_eval._hashing import sha256_arrays, sha256_file, sha256_json
from distill_eval.config import ModelSpec
from distill_eval.errors import ModelError

__all__ = ["Model", "load_model", "model_fingerprint", "resolve_device", "wrap_model"]

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")


@dataclass
class Model:
    """A loaded model: ``predict_logits(x)`` plus provenance.

    Attributes
    ----------
    name : str
        The model's name in the project config (``"teacher"``, ``"student"``, ...).
    format : str
        How it was loaded: ``"torch.export"``, ``"torchscript"``, ``"factory"``,
        ``"pickle"``, ``"sklearn"``, ``"onnx"`` or ``"hook"``.
    predict_logits : callable
        Maps an array of shape (batch, ...) to logits of shape (batch, n_classes).
    module : object
        The underlying object (an ``nn.Module``, estimator or session).
    params : int or None
        Number of parameters, when known.
    device : str
        Where it runs.
    """

    name: str
    format: str
    predict_logits: Callable[[np.ndarray], np.ndarray]
    module: Any = None
    params: int | None = None
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str) -> str:
    """``"auto"`` becomes ``"cuda"`` when available, else ``"cpu"``; others pass through."""
    if device != "auto":
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ModelError(f"device {device!r} was asked for, but CUDA is not available to torch")
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_fingerprint(spec: ModelSpec) -> str | None:
    """A sha256 of everything that determines the model's outputs, or None.

    Computed from the model's files without loading them, so a warm cache never
    loads a model. None when the model has no files (a factory without
    weights, or a hook): the caller must load it and hash its parameters.
    """
    files = [p for p in (spec.path, spec.weights) if p is not None]
    if not files:
        return None
    for key, p in (("path", spec.path), ("weights", spec.weights)):
        if p is not None and not Path(p).is_file():
            raise ModelError(f"model '{spec.name}': {'weights ' if key == 'weights' else ''}file not found: {p}")
    return sha256_json(
        {
            "files": [sha256_file(p) for p in files],
            "factory": spec.factory,
            "kwargs": dict(spec.kwargs),
        }
    )


def load_model(spec: ModelSpec, *, device: str = "cpu") -> Model:
    """Load a model from its spec (path or factory [+ weights]).

    Parameters
    ----------
    spec : ModelSpec
        Where the model comes from.
    device : str
        A resolved torch device string (see :func:`resolve_device`).

    Raises
    ------
    ModelError
        When the file is missing or of an unsupported format, when a pickle is
        not trusted, or when loading fails; the message names the model.
    """
    if spec.factory is not None:
        obj = _call_factory(spec)
        if spec.weights is not None:
            _load_weights(spec, obj)
        return wrap_model(spec.name, obj, device=device, format="factory")
    if spec.path is None:
        raise ModelError(
            f"model '{spec.name}' has neither 'path' nor 'factory', and no pytest_distill_load_model hook provided it"
        )
    path = Path(spec.path)
    if not path.is_file():
        raise ModelError(f"model '{spec.name}': file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        return _load_export(spec, path, device)
    if suffix in TORCHSCRIPT_SUFFIXES:
        return _load_torch_file(spec, path, device)
    if suffix in PICKLE_SUFFIXES:
        return _load_pickle(spec, path, device)
    if suffix == ".onnx":
        return _load_onnx(spec, path)
    raise ModelError(
        f"model '{spec.name}': {path}: unsupported format {suffix!r}; expected .pt2 (torch.export), "
        ".pt/.pth/.ts (TorchScript), .onnx, or .joblib/.pkl (scikit-learn, needs trusted = true)"
    )


def wrap_model(name: str, obj: Any, *, device: str = "cpu", format: str = "hook") -> Model:
    """Wrap an ``nn.Module``, an estimator with ``predict_proba``, or an object with ``predict_logits``."""
    import torch

    if isinstance(obj, Model):
        return obj
    if isinstance(obj, torch.nn.Module):
        return _torch_model(name, obj, device=device, format=format)
    if hasattr(obj, "predict_logits"):

        def predict(x: np.ndarray) -> np.ndarray:
            out = obj.predict_logits(x)
            return out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)

        return Model(name, format, predict, module=obj, device="cpu")
    if hasattr(obj, "predict_proba"):
        return _sklearn_model(name, obj, format="sklearn" if format == "pickle" else format)
    raise ModelError(
        f"model '{name}': got {type(obj).__name__}; expected a torch.nn.Module, an object with "
        "predict_logits(x), or a scikit-learn estimator with predict_proba"
    )


def parameter_fingerprint(model: Model, spec: ModelSpec | None = None) -> str | None:
    """Hash a loaded model's parameters (for models without files), or None if unknown.

    With ``spec``, its factory and kwargs are part of the hash too: two models
    with the same parameters but a keyword that changes their forward pass
    (say ``temperature = 2``) must never share cached outputs.
    """
    import torch

    if not isinstance(model.module, torch.nn.Module):
        return None
    state = model.module.state_dict()
    arrays = [state[k].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy() for k in sorted(state)]
    layout = ",".join(f"{k}{tuple(state[k].shape)}{state[k].dtype}" for k in sorted(state))
    params = sha256_arrays(*arrays, salt=type(model.module).__qualname__ + layout)
    if spec is None:
        return params
    return sha256_json({"params": params, "factory": spec.factory, "kwargs": dict(spec.kwargs)})


# -- loaders -------------------------------------------------------------------


def _torch_model(name: str, module: Any, *, device: str, format: str, exported: bool = False) -> Model:
    import torch

    if not exported:
        # Exported programs refuse .eval(); they are captured in the mode they were exported in.
        module.eval()
    try:
        module = module.to(device)
    except Exception as e:  # any failure to move is the user's model, not ours
        raise ModelError(f"model '{name}': cannot move to device {device!r}: {e}") from e
    params = sum(int(p.numel()) for p in module.parameters()) if hasattr(module, "parameters") else None

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            out = module(torch.from_numpy(np.ascontiguousarray(x)).to(device))
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif isinstance(out, dict) and "logits" in out:
            out = out["logits"]
        elif hasattr(out, "logits"):
            out = out.logits
        if not isinstance(out, torch.Tensor):
            raise ModelError(f"model '{name}' returned {type(out).__name__}; expected a tensor of logits")
        return out.detach().float().cpu().numpy()

    return Model(name, format, predict, module=module, params=params, device=device)


def _sklearn_model(name: str, est: Any, *, format: str) -> Model:
    tiny = np.finfo(np.float32).tiny

    def predict(x: np.ndarray) -> np.ndarray:
        proba = np.asarray(est.predict_proba(x.reshape(len(x), -1)), dtype=np.float64)
        # Log-probabilities are logits whose softmax is the estimator's probabilities.
        return np.log(np.maximum(proba, tiny))

    params = None
    if hasattr(est, "coefs_"):
        params = int(sum(w.size for w in est.coefs_) + sum(b.size for b in est.intercepts_))
    elif hasattr(est, "coef_"):
        params = int(np.size(est.coef_) + np.size(getattr(est, "intercept_", 0)))
    return Model(name, format, predict, module=est, params=params, device="cpu")


def _load_export(spec: ModelSpec, path: Path, device: str) -> Model:
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise ModelError(f"model '{spec.name}': {path} is not a loadable torch.export program: {e}") from e
    return _torch_model(spec.name, program.module(), device=device, format="torch.export", exported=True)


def _load_torch_file(spec: ModelSpec, path: Path, device: str) -> Model:
    import torch

    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated in current PyTorch but everywhere in the wild;
                # its warning is about the user's file format, not their model.
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location=device)
        except Exception as e:
            raise ModelError(f"model '{spec.name}': cannot load TorchScript file {path}: {e}") from e
        return _torch_model(spec.name, module, device=device, format="torchscript")
    if not (zipfile.is_zipfile(path) or path.read_bytes()[:1] == b"\x80"):  # torch.save: a zip, or a raw pickle
        raise ModelError(f"model '{spec.name}': {path} is not a PyTorch file (neither TorchScript nor torch.save)")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights only load failed" not in str(e).lower():
            raise ModelError(f"model '{spec.name}': cannot read {path} as a PyTorch file: {_first_line(e)}") from e
        if not spec.trusted:
            raise ModelError(
                f"model '{spec.name}': {path} is neither TorchScript nor a weights-only file; loading a "
                "pickled module runs code from the file, so it needs 'trusted = true' in "
                f"[tool.distill_eval.models.{spec.name}]"
            ) from e
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as e2:
            raise ModelError(f"model '{spec.name}': cannot unpickle {path}: {_first_line(e2)}") from e2
    if isinstance(obj, dict):
        raise ModelError(
            f"model '{spec.name}': {path} holds a state dict, not a model; give 'factory' (the callable "
            "that builds the module) and 'weights' = that file"
        )
    return wrap_model(spec.name, obj, device=device, format="pickle")


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _load_pickle(spec: ModelSpec, path: Path, device: str) -> Model:
    if not spec.trusted:
        raise ModelError(
            f"model '{spec.name}': {path} is a pickle, and loading a pickle runs code from the file; "
            f"set 'trusted = true' in [tool.distill_eval.models.{spec.name}] if you trust it"
        )
    import joblib

    try:
        obj = joblib.load(path)
    except Exception as e:
        raise ModelError(f"model '{spec.name}': cannot unpickle {path}: {e}") from e
    return wrap_model(spec.name, obj, device=device, format="pickle")


def _load_onnx(spec: ModelSpec, path: Path) -> Model:
    """An ONNX model served by ONNX Runtime on the CPU.

    ``params`` is the number of values in the graph's initializers (read with the
    ``onnx`` package when it is installed, else None). ONNX Runtime fixes its
    intra-op thread count when a session is built, so ``extra["with_threads"]``
    builds a second session for a given count: the latency check times that one
    (without spin-waiting, so that idle runtime threads do not busy-wait through
    the other model's calls).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError(
            f"model '{spec.name}': {path} is an ONNX model, which needs onnxruntime: pip install 'distill-eval[onnx]'"
        ) from None

    def session_with(threads: int | None = None) -> Any:
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    try:
        session = session_with()
    except Exception as e:
        raise ModelError(f"model '{spec.name}': cannot load ONNX model {path}: {e}") from e
    input_name = session.get_inputs()[0].name

    def predictor(session: Any) -> Callable[[np.ndarray], np.ndarray]:
        def predict(x: np.ndarray) -> np.ndarray:
            return np.asarray(session.run(None, {input_name: np.ascontiguousarray(x, dtype=np.float32)})[0])

        return predict

    def with_threads(threads: int) -> Callable[[np.ndarray], np.ndarray]:
        return predictor(session_with(threads))

    params = None
    try:
        import onnx
    except ImportError:
        pass  # the count is provenance, not needed to serve the model
    else:
        graph = onnx.load(str(path), load_external_data=False).graph
        dims = [t.dims for t in graph.initializer] + [t.values.dims for t in graph.sparse_initializer]
        params = int(sum(int(np.prod(d, dtype=np.int64)) for d in dims))

    return Model(
        spec.name,
        "onnx",
        predictor(session),
        module=session,
        params=params,
        device="cpu",
        extra={"with_threads": with_threads},
    )


def _call_factory(spec: ModelSpec) -> Any:
    module_name, _, attr = str(spec.factory).partition(":")
    where = f"model '{spec.name}': factory {spec.factory!r}"
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # the user's own package, as `python -m` would see it
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ModelError(f"{where}: cannot import module '{module_name}': {type(e).__name__}: {e}") from e
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ModelError(f"{where}: module '{module_name}' has no attribute '{attr}'")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ModelError(f"{where}: '{attr}' is not callable")
    try:
        return fn(**dict(spec.kwargs))
    except Exception as e:
        raise ModelError(f"{where} raised {type(e).__name__}: {e}") from e


def _load_weights(spec: ModelSpec, obj: Any) -> None:
    import torch

    path = Path(spec.weights)  # type: ignore[arg-type]
    if not path.is_file():
        raise ModelError(f"model '{spec.name}': weights file not found: {path}")
    if not isinstance(obj, torch.nn.Module):
        raise ModelError(f"model '{spec.name}': 'weights' needs the factory to return an nn.Module")
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ModelError(
                f"model '{spec.name}': {path} needs the safetensors package: pip install safetensors"
            ) from None
        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelError(
                f"model '{spec.name}': {path} is not a weights-only state dict (loaded with "
                f"weights_only=True): {type(e).__name__}"
            ) from e
    if not isinstance(state, dict):
        raise ModelError(f"model '{spec.name}': {path} holds {type(state).__name__}, expected a state dict")
    try:
        obj.load_state_dict(state)
    except Exception as e:
        first = str(e).strip().splitlines()
        raise ModelError(
            f"model '{spec.name}': the weights in {path} do not fit the module built by "
            f"{spec.factory!r}: {' '.join(first[:3])}"
        ) from e


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"
