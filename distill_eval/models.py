"""Model loaders: torch.export, TorchScript, factory + weights, scikit-learn, ONNX.

Every loader returns a :class:`Model`: something that maps a batch of inputs
(a float32 numpy array) to logits, plus what the report needs to know about
it. Pickle-based formats run arbitrary code when loaded, so they are refused
unless the model's table says ``trusted = true``.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import json
import logging
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill_eval._hashing import sha256_arrays, sha256_file, sha256_json
from distill_eval.config import ModelSpec
from distill_eval.errors import ModelError

__all__ = [
    "Model",
    "load_model",
    "model_fingerprint",
    "resolve_device",
    "torchscript_deprecation_ignored",
    "wrap_model",
]

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")

# The start of PyTorch's notice on torch.jit.script/trace/trace_method/save/load: "`torch.jit.load`
# is deprecated. ..." (and, on Python 3.14+, "... is not supported in Python 3.14+ and may break").
_TORCHSCRIPT_DEPRECATED = r"`torch\.jit\.\w+` is (deprecated|not supported in Python 3\.14)"


@contextlib.contextmanager
def torchscript_deprecation_ignored() -> Iterator[None]:
    """Ignore PyTorch's notice that TorchScript is deprecated, and no other warning.

    TorchScript is deprecated in current PyTorch but still everywhere: the plugin loads
    and times users' TorchScript files and the trainer can write them, so the notice is
    about a file format the user chose, not a defect. torch 2.13 raises it as a
    ``DeprecationWarning`` and torch 2.14 as a ``FutureWarning``; under
    ``filterwarnings = error`` either would fail a run. Every other warning, of those
    categories too, still goes through.

    Yields
    ------
    None
        Inside the ``with`` block the notice is ignored; the caller's filters come back after it.
    """
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", message=_TORCHSCRIPT_DEPRECATED, category=category)
        yield


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
    """``"auto"`` becomes ``"cuda"`` when available, else ``"cpu"``; others pass through.

    A torch built without CUDA or ROCm never has CUDA available, so while torch is
    not imported yet, ``"auto"`` resolves to ``"cpu"`` for such a build without
    importing it (1-2 s that a run served from the output cache need not pay).
    """
    if device != "auto":
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ModelError(f"device {device!r} was asked for, but CUDA is not available to torch")
        return device
    if "torch" not in sys.modules:
        build = _torch_build()
        if build is not None and build.get("cuda") is None and build.get("hip") is None:
            return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_version() -> str:
    """``str(torch.__version__)``, read from torch's ``version.py`` while torch is not imported yet."""
    if "torch" not in sys.modules:
        build = _torch_build()
        if build is not None and isinstance(build.get("__version__"), str):
            return build["__version__"]
    import torch

    return str(torch.__version__)


def _torch_build() -> dict[str, Any] | None:
    """The constants of ``torch/version.py`` (``__version__``, ``cuda``, ``hip``, ...), without importing torch.

    torch's ``__version__`` and ``torch.version.cuda``/``hip`` are these values. The
    file is parsed, never executed; None when it cannot be found or read.
    """
    try:
        spec = importlib.util.find_spec("torch")  # a top-level name: finds, does not import
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        tree = ast.parse(Path(folders[0], "version.py").read_text())
    except (ImportError, IndexError, OSError, SyntaxError, ValueError):
        return None
    out: dict[str, Any] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(node, ast.AnnAssign):
            target = node.target
        if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant):
            out[target.id] = node.value.value
    return out


def model_fingerprint(spec: ModelSpec, *, sha256: Callable[[Path], str] = sha256_file) -> str | None:
    """A sha256 of everything that determines the model's outputs, or None.

    Computed from the model's files without loading them, so a warm cache never
    loads a model. None when the model has no files (a factory without
    weights, or a hook): the caller must load it and hash its parameters.
    ``sha256`` hashes one file (a session passes one that remembers each file's hash).
    """
    files = [p for p in (spec.path, spec.weights) if p is not None]
    if not files:
        return None
    for key, p in (("path", spec.path), ("weights", spec.weights)):
        if p is not None and not Path(p).is_file():
            raise ModelError(f"model '{spec.name}': {'weights ' if key == 'weights' else ''}file not found: {p}")
    return sha256_json(
        {
            "files": [sha256(Path(p)) for p in files],
            "factory": spec.factory,
            "kwargs": dict(spec.kwargs),
        }
    )


def load_model(spec: ModelSpec, *, device: str = "cpu", root: Path | None = None) -> Model:
    """Load a model from its spec (path or factory [+ weights]).

    Parameters
    ----------
    spec : ModelSpec
        Where the model comes from.
    device : str
        A resolved torch device string (see :func:`resolve_device`).
    root : Path, optional
        The project root: a ``factory`` module is imported with it first on ``sys.path``
        (default: the working directory), which is taken off again afterwards.

    Raises
    ------
    ModelError
        When the file is missing or of an unsupported format, when a pickle is
        not trusted, or when loading fails; the message names the model.
    """
    if spec.factory is not None:
        obj = _call_factory(spec, root)
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
        with torch.inference_mode(), torchscript_deprecation_ignored():
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

    if not spec.trusted:
        _refuse_export_that_runs_code(spec, path)
    # torch 2.13 logs its pickle fallback with a format string missing an argument; under
    # pytest's log capture that formatting error fails the load, so the warning is muted here.
    serde_log = logging.getLogger("torch._export.serde.serialize")
    level = serde_log.level
    serde_log.setLevel(logging.ERROR)
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise ModelError(f"model '{spec.name}': {path} is not a loadable torch.export program: {e}") from e
    finally:
        serde_log.setLevel(level)
    return _torch_model(spec.name, program.module(), device=device, format="torch.export", exported=True)


# Where torch.export.load (torch/export/__init__.py, torch/export/pt2_archive/_package.py,
# torch/_export/serde/serialize.py) runs code from a .pt2 archive. Member names are relative to
# the archive's root folder, as torch's zip reader gives them, and matched without ASCII case,
# as its lookups are.
_EXPORT_WEIGHTS_DIR = "data/weights/"  # <model>_weights_config.json, legacy <model>.pt
_EXPORT_CONSTANTS_DIR = "data/constants/"  # <model>_constants_config.json, legacy <model>.pt
_EXPORT_TENSOR_CONSTANT = "tensor_"  # other constants (custom_obj_*, opaque_obj_*) are unpickled
_EXPORT_SAMPLE_INPUTS_DIR = "data/sample_inputs/"
_EXPORT_AOTI_DIR = "data/aotinductor/"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _refuse_export_that_runs_code(spec: ModelSpec, path: Path) -> None:
    """Refuse a ``.pt2`` archive that ``torch.export.load`` would run code from.

    Reads the archive without running anything in it, through torch's own zip
    reader, so every name resolves to the bytes torch would read. ``torch.export.load``
    unpickles with ``weights_only=False``: weights and constants that a payload
    config (``data/weights/<m>_weights_config.json``, ``data/constants/<m>_constants_config.json``)
    marks ``use_pickle``; constants stored as objects (``custom_obj_*``, and
    ``opaque_obj_*`` through plain ``pickle.loads``); the sample inputs
    (``data/sample_inputs/<m>.pt``) and legacy ``data/weights/<m>.pt`` /
    ``data/constants/<m>.pt`` whenever ``weights_only=True`` fails on them; and
    archives of the older format (top-level ``version``). It also loads compiled
    AOTInductor libraries under ``data/aotinductor/``. Two members whose names
    differ only in case would make which one torch reads the zip reader's choice,
    so they are refused too. ``torch.export.save`` of a plain ``nn.Module`` writes
    none of these: its tensors are raw bytes and its sample inputs load weights-only.
    """
    risk = _export_code_risk(spec, path)
    if risk is not None:
        raise ModelError(
            f"model '{spec.name}': {path} {risk}; set 'trusted = true' in "
            f"[tool.distill_eval.models.{spec.name}] if you trust it"
        )


def _export_code_risk(spec: ModelSpec, path: Path) -> str | None:
    """Why loading the ``.pt2`` archive at ``path`` would run code from it, or None."""
    import torch

    pickle_runs = "and loading a pickle runs code from the file"
    try:
        with zipfile.ZipFile(path) as z:
            top = [n for n in z.namelist() if "/" not in n]
    except (zipfile.BadZipFile, OSError, ValueError):
        top = []  # then torch's fallback to the older format cannot open it either
    if top:
        return (
            f"is a torch.export archive in the older format (it has a top-level member {top[0]!r}), "
            f"which torch reads with pickle, {pickle_runs}"
        )
    try:
        reader = torch._C.PyTorchFileReader(str(path))
        records = list(reader.get_all_records())
    except (RuntimeError, UnicodeDecodeError) as e:
        raise ModelError(f"model '{spec.name}': {path} is not a loadable torch.export program: {_first_line(e)}") from e
    seen: dict[str, str] = {}
    for name in records:
        key = name.translate(_ASCII_LOWER)
        if key in seen:
            return (
                f"is a torch.export archive with two members named {seen[key]!r} and {name!r}: which one "
                "torch reads is up to its zip reader, so the archive cannot be checked for pickles"
            )
        seen[key] = name
    for name in records:
        key = name.translate(_ASCII_LOWER)
        if key.startswith(_EXPORT_AOTI_DIR):
            return (
                f"is a torch.export archive with AOTInductor compiled code ({name}), and loading it runs "
                "native code from the file"
            )
        if key.endswith(".json") and key.startswith((_EXPORT_WEIGHTS_DIR, _EXPORT_CONSTANTS_DIR)):
            try:
                entries = json.loads(reader.get_record(name))["config"]
                items = [(str(fqn), dict(entry)) for fqn, entry in entries.items()]
            except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
                raise ModelError(
                    f"model '{spec.name}': {path} is not a loadable torch.export program: {name} is not "
                    f"a payload config ({_first_line(e)})"
                ) from e
            for fqn, entry in items:
                if entry.get("use_pickle", False) is not False:
                    return f"is a torch.export archive whose {name} marks {fqn!r} use_pickle, {pickle_runs}"
                path_name = entry.get("path_name")
                if key.startswith(_EXPORT_CONSTANTS_DIR) and not (
                    isinstance(path_name, str) and path_name.startswith(_EXPORT_TENSOR_CONSTANT)
                ):
                    return (
                        f"is a torch.export archive that stores constant {fqn!r} as a pickled object "
                        f"({path_name}), {pickle_runs}"
                    )
        if key.endswith(".pt") or key.startswith(_EXPORT_SAMPLE_INPUTS_DIR):
            try:
                data = reader.get_record(name)
                if data:  # torch reads an empty member as nothing
                    torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 — whatever fails, torch retries with weights_only=False
                return (
                    f"is a torch.export archive whose {name} does not load with weights_only=True "
                    f"({type(e).__name__}), so torch would unpickle it in full, {pickle_runs}"
                )
    return None


def _load_torch_file(spec: ModelSpec, path: Path, device: str) -> Model:
    import torch

    if _is_torchscript(path):
        try:
            with torchscript_deprecation_ignored():
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


@contextlib.contextmanager
def _importable(folder: Path) -> Iterator[None]:
    """``folder`` first on ``sys.path`` while the block runs, and off it afterwards (if it was not on it)."""
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _call_factory(spec: ModelSpec, root: Path | None = None) -> Any:
    module_name, _, attr = str(spec.factory).partition(":")
    where = f"model '{spec.name}': factory {spec.factory!r}"
    # the user's own package, as `python -m` run in the project root would see it
    with _importable(Path(root) if root is not None else Path.cwd()):
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
