"""Model loaders: every format gives the original module's logits; unsafe or broken files are refused."""

from __future__ import annotations

import importlib.util
import io
import json
import pickle
import re
import shutil
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from distill_eval.config import ModelSpec
from distill_eval.errors import ModelError
from distill_eval.models import (
    load_model,
    model_fingerprint,
    parameter_fingerprint,
    resolve_device,
    torchscript_deprecation_ignored,
    wrap_model,
)
from distill_eval.train.zoo import digits_student

#: float32 inference of the same graph; only summation order may differ between runtimes
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _spec(**kwargs) -> ModelSpec:
    return ModelSpec(name="student", **kwargs)


@pytest.mark.parametrize(
    ("attr", "fmt"), [("exported", "torch.export"), ("torchscript", "torchscript"), ("traced", "torchscript")]
)
def test_serialised_module_gives_the_original_logits(saved_models, attr: str, fmt: str) -> None:
    # filterwarnings = error: loading and predicting must not leak TorchScript's DeprecationWarning.
    model = load_model(_spec(path=getattr(saved_models, attr)))
    assert model.format == fmt and model.name == "student"
    assert model.params == sum(p.numel() for p in saved_models.module.parameters())
    np.testing.assert_allclose(model.predict_logits(saved_models.x), saved_models.reference(), **TOL)


def test_only_torchscripts_deprecation_notice_is_ignored() -> None:
    module = digits_student(hidden=(8,)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # torch 2.13 warns with DeprecationWarning, 2.14 with FutureWarning: neither gets through
        with pytest.warns((DeprecationWarning, FutureWarning), match=r"`torch\.jit\.script` is deprecated"):
            torch.jit.script(module)
        with torchscript_deprecation_ignored():
            buffer = io.BytesIO()
            torch.jit.trace(module, torch.zeros(2, 64))
            torch.jit.save(torch.jit.script(module), buffer)
            buffer.seek(0)
            torch.jit.load(buffer)
            for category in (DeprecationWarning, FutureWarning):
                warnings.warn("`torch.jit.load` is deprecated.", category, stacklevel=1)
            # anything else still goes through, of the same categories and from torch.jit too
            for message, category in [
                ("`torch.load` is deprecated", FutureWarning),
                ("the `optimize` argument is deprecated", DeprecationWarning),
                ("`torch.jit.trace` is deprecated", UserWarning),
            ]:
                with pytest.raises(category, match=re.escape(message)):
                    warnings.warn(message, category, stacklevel=1)
        # and the notice is back after the block
        with pytest.raises((DeprecationWarning, FutureWarning), match="is deprecated"):
            torch.jit.script(module)


@pytest.mark.parametrize("attr", ["exported", "torchscript"])
def test_serialised_module_takes_any_batch_size(saved_models, attr: str) -> None:
    model = load_model(_spec(path=getattr(saved_models, attr)))
    reference = saved_models.reference()
    for rows in (slice(0, 1), slice(0, 2), slice(3, 37)):
        np.testing.assert_allclose(model.predict_logits(saved_models.x[rows]), reference[rows], **TOL)


def test_factory_with_weights_gives_the_original_logits(saved_models) -> None:
    spec = _spec(factory=saved_models.factory, kwargs=saved_models.kwargs, weights=saved_models.state_dict)
    model = load_model(spec)
    assert model.format == "factory"
    np.testing.assert_allclose(model.predict_logits(saved_models.x), saved_models.reference(), **TOL)
    assert not model.module.training  # dropout/batch norm would make outputs depend on the batch


def test_weights_are_loaded_weights_only(tmp_path: Path, saved_models) -> None:
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            import os

            return (os.makedirs, (str(marker),))

    torch.save({"0.weight": Payload()}, tmp_path / "w.pt")
    spec = _spec(factory=saved_models.factory, kwargs=saved_models.kwargs, weights=tmp_path / "w.pt")
    with pytest.raises(ModelError, match=r"model 'student'.*not a weights-only state dict"):
        load_model(spec)
    assert not marker.exists()


def test_weights_that_do_not_fit_the_module_are_a_clear_error(saved_models) -> None:
    spec = _spec(factory=saved_models.factory, kwargs={"hidden": [16]}, weights=saved_models.state_dict)
    with pytest.raises(ModelError, match=r"model 'student'.*do not fit the module built by.*digits_student.*size"):
        load_model(spec)


def test_state_dict_given_as_path_says_to_use_factory_and_weights(saved_models) -> None:
    with pytest.raises(ModelError, match=r"model 'student'.*holds a state dict.*'factory'.*'weights'"):
        load_model(_spec(path=saved_models.state_dict))


def test_pickled_module_is_refused_unless_trusted(tmp_path: Path, saved_models) -> None:
    path = tmp_path / "full.pt"
    torch.save(saved_models.module, path)
    with pytest.raises(ModelError, match=r"model 'student'.*needs 'trusted = true'"):
        load_model(_spec(path=path))

    model = load_model(_spec(path=path, trusted=True))
    np.testing.assert_allclose(model.predict_logits(saved_models.x), saved_models.reference(), **TOL)


@pytest.fixture(scope="module")
def estimator_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LogisticRegression, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1)
    estimator = LogisticRegression().fit(x, y)
    path = tmp_path_factory.mktemp("sklearn") / "clf.joblib"
    joblib.dump(estimator, path)
    return path, estimator, x


def test_sklearn_pickle_is_refused_unless_trusted(estimator_file) -> None:
    path, _, _ = estimator_file
    with pytest.raises(ModelError, match=r"model 'student'.*is a pickle.*trusted = true"):
        load_model(_spec(path=path))


def test_trusted_sklearn_estimator_logits_are_its_log_probabilities(estimator_file) -> None:
    import scipy.special

    path, estimator, x = estimator_file
    model = load_model(_spec(path=path, trusted=True))
    assert model.format == "sklearn"
    logits = model.predict_logits(x)
    assert logits.shape == (60, 3)
    # float32 inputs give float32 probabilities, whose rows sum to 1 only to float32 precision
    np.testing.assert_allclose(scipy.special.softmax(logits, axis=1), estimator.predict_proba(x), rtol=1e-6)
    assert model.params == estimator.coef_.size + estimator.intercept_.size


def test_unsupported_suffix_names_the_supported_formats(tmp_path: Path) -> None:
    (tmp_path / "model.h5").write_bytes(b"\x89HDF")
    with pytest.raises(ModelError, match=r"model 'student'.*unsupported format '\.h5'; expected \.pt2"):
        load_model(_spec(path=tmp_path / "model.h5"))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model 'student': file not found: .*gone\.pt2"):
        load_model(_spec(path=tmp_path / "gone.pt2"))


def test_corrupt_export_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "bad.pt2").write_bytes(b"definitely not a zip archive")
    with pytest.raises(ModelError, match=r"model 'student'.*not a loadable torch.export program"):
        load_model(_spec(path=tmp_path / "bad.pt2"))


# -- torch.export archives that would run code ----------------------------------------
# torch.export.load unpickles parts of a .pt2 archive with weights_only=False; each planter below
# rewrites an ordinary archive into one that does (see models._refuse_export_that_runs_code).


def _touch_then(marker: str, value: Any) -> Any:
    """What the payloads run when unpickled: create ``marker`` (proof that code ran), then give back ``value``."""
    Path(marker).touch()
    return value


class _Payload:
    """Pickles as a call to :func:`_touch_then`, so a file holding it still loads when trusted."""

    def __init__(self, marker: Path, value: Any) -> None:
        self.marker, self.value = marker, value

    def __reduce__(self) -> tuple[Any, tuple[str, Any]]:
        return _touch_then, (str(self.marker), self.value)


def _saved(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


Members = dict[str, bytes]  # an archive's members, "<root>/data/..." -> bytes, in order


def _pickled_weight(members: Members, root: str, marker: Path, module: torch.nn.Module) -> Members:
    config = f"{root}/data/weights/model_weights_config.json"
    weights = json.loads(members[config])
    fqn, entry = next(iter(weights["config"].items()))
    entry["use_pickle"] = True
    payload = _Payload(marker, torch.nn.Parameter(module.state_dict()[fqn].clone(), requires_grad=False))
    return {
        **members,
        config: json.dumps(weights).encode(),
        f"{root}/data/weights/{entry['path_name']}": _saved(payload),
    }


def _pickled_sample_inputs(members: Members, root: str, marker: Path, module: torch.nn.Module) -> Members:
    return {**members, f"{root}/data/sample_inputs/model.pt": _saved(((_Payload(marker, torch.zeros(4, 64)),), {}))}


def _older_format(members: Members, root: str, marker: Path, module: torch.nn.Module) -> Members:
    from torch._export.serde.schema import SCHEMA_VERSION

    state = dict(module.named_parameters())
    first = next(iter(state))
    state[first] = _Payload(marker, torch.nn.Parameter(state[first].detach().clone(), requires_grad=False))
    return {
        "version": ".".join(map(str, SCHEMA_VERSION)).encode(),
        "serialized_exported_program.json": members[f"{root}/models/model.json"],
        "serialized_state_dict.pt": _saved(state),
        "serialized_constants.pt": _saved({}),
        "serialized_example_inputs.pt": members[f"{root}/data/sample_inputs/model.pt"],
    }


def _pickled_constant(members: Members, root: str, marker: Path, module: torch.nn.Module) -> Members:
    config = f"{root}/data/constants/model_constants_config.json"
    constants = json.loads(members[config])
    meta = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": False, "tensor_meta": None}
    constants["config"]["extra"] = meta  # use_pickle false: opaque objects are unpickled regardless
    payload = pickle.dumps(_Payload(marker, None))
    return {**members, config: json.dumps(constants).encode(), f"{root}/data/constants/opaque_obj_0": payload}


def _case_twin(members: Members, root: str, marker: Path, module: torch.nn.Module) -> Members:
    # Lookups ignore case, so which of the two configs torch reads is up to its zip reader.
    twin = json.loads(members[f"{root}/data/weights/model_weights_config.json"])
    for entry in twin["config"].values():
        entry["use_pickle"] = True
    return {f"{root}/data/weights/Model_weights_config.json": json.dumps(twin).encode(), **members}


def _aoti_library(members: Members, root: str, marker: Path, module: torch.nn.Module) -> Members:
    return {**members, f"{root}/data/aotinductor/model/model.so": b"\x7fELF"}


@pytest.mark.parametrize(
    ("plant", "why"),
    [
        (_pickled_weight, r"whose data/weights/model_weights_config.json marks '.*' use_pickle, and loading a pickle"),
        (_pickled_sample_inputs, r"whose data/sample_inputs/model.pt does not load with weights_only=True"),
        (_older_format, r"in the older format \(it has a top-level member 'version'\), which torch reads with pickle"),
        (_pickled_constant, r"stores constant 'extra' as a pickled object \(opaque_obj_0\), and loading a pickle"),
        (_case_twin, r"two members named '.*' and '.*': which one torch reads is up to its zip reader"),
        (_aoti_library, r"AOTInductor compiled code \(data/aotinductor/model/model.so\), and loading it runs native"),
    ],
)
def test_export_that_would_run_code_is_refused_unless_trusted(
    tmp_path: Path, saved_models, plant: Callable[..., Members], why: str
) -> None:
    marker = tmp_path / "payload-ran"
    with zipfile.ZipFile(saved_models.exported) as good:
        members = {name: good.read(name) for name in good.namelist()}
    root = next(iter(members)).split("/")[0]
    path = tmp_path / "evil.pt2"
    with zipfile.ZipFile(path, "w") as evil:
        for name, data in plant(members, root, marker, saved_models.module).items():
            evil.writestr(name, data)
    expected = (
        rf"model 'student': {re.escape(str(path))} is a torch.export archive .*{why}.*; "
        r"set 'trusted = true' in \[tool.distill_eval.models.student\] if you trust it"
    )
    with pytest.raises(ModelError, match=expected):
        load_model(_spec(path=path))
    assert not marker.exists(), "the archive was checked by running it"


@pytest.mark.parametrize("plant", [_pickled_weight, _pickled_sample_inputs, _older_format])
def test_trusted_export_runs_its_pickles(tmp_path: Path, saved_models, plant: Callable[..., Members]) -> None:
    marker = tmp_path / "payload-ran"
    with zipfile.ZipFile(saved_models.exported) as good:
        members = {name: good.read(name) for name in good.namelist()}
    path = tmp_path / "pickles.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in plant(members, next(iter(members)).split("/")[0], marker, saved_models.module).items():
            archive.writestr(name, data)
    with pytest.raises(ModelError, match=r"set 'trusted = true'"):
        load_model(_spec(path=path))
    assert not marker.exists()

    model = load_model(_spec(path=path, trusted=True))
    assert marker.exists(), "a trusted archive is loaded as torch.export.load reads it, pickles and all"
    np.testing.assert_allclose(model.predict_logits(saved_models.x), saved_models.reference(), **TOL)


class _ConvNet(torch.nn.Module):
    """Convolution, batch norm, a registered buffer and a tensor constant: what an export may hold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.norm = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 3)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.norm(self.conv(x.reshape(-1, 1, 8, 8)))).mean((2, 3))
        return self.head(features) * self.scale + torch.tensor([1.0, 0.0, -1.0])


def test_ordinary_exports_load_without_trusted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _ConvNet().eval()
    with torch.no_grad():
        module.norm.running_mean.uniform_(-1, 1)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (torch.zeros(4, 64),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "conv.pt2"))
    with zipfile.ZipFile(tmp_path / "conv.pt2") as archive:
        assert any("/data/constants/tensor_" in name for name in archive.namelist())  # the constant is there
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    model = load_model(_spec(path=tmp_path / "conv.pt2"))
    with torch.no_grad():
        np.testing.assert_allclose(model.predict_logits(x), module(torch.from_numpy(x)).numpy(), **TOL)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is not None, reason="onnxruntime is installed")
def test_onnx_without_onnxruntime_gives_an_install_hint(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(ModelError, match=r"model 'student'.*needs onnxruntime: pip install 'distill-eval\[onnx\]'"):
        load_model(_spec(path=tmp_path / "model.onnx"))


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        ("no_such_package_xyz.models:build", r"cannot import module 'no_such_package_xyz.models'"),
        ("distill_eval.train.zoo:no_such_factory", r"module 'distill_eval.train.zoo' has no attribute"),
        ("distill_eval.train.zoo:__doc__", r"is not callable"),
    ],
)
def test_bad_factory_is_a_model_error(factory: str, expected: str) -> None:
    with pytest.raises(ModelError, match=r"model 'student': factory .*" + expected):
        load_model(_spec(factory=factory))


def test_factory_that_raises_is_a_model_error() -> None:
    spec = _spec(factory="distill_eval.train.zoo:digits_student", kwargs={"hidden": [0]})
    with pytest.raises(ModelError, match=r"model 'student': factory .* raised ValueError: mlp sizes must be positive"):
        load_model(spec)


def test_wrap_model_rejects_objects_that_cannot_predict() -> None:
    with pytest.raises(ModelError, match=r"model 'm': got str; expected a torch.nn.Module"):
        wrap_model("m", "not a model")


def test_wrap_model_accepts_an_object_with_predict_logits() -> None:
    class Doubler:
        def predict_logits(self, x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.stack([x[:, 0], 2 * x[:, 0]], axis=1))

    x = np.arange(3, dtype=np.float32).reshape(3, 1)
    np.testing.assert_array_equal(wrap_model("m", Doubler()).predict_logits(x), [[0, 0], [1, 2], [2, 4]])


# -- fingerprints -------------------------------------------------------------------


def test_model_fingerprint_follows_file_content_not_path(tmp_path: Path, saved_models) -> None:
    weights = tmp_path / "w.pt"
    shutil.copy(saved_models.state_dict, weights)
    spec = _spec(factory=saved_models.factory, kwargs=saved_models.kwargs, weights=weights)
    first = model_fingerprint(spec)
    assert first is not None and model_fingerprint(spec) == first

    copy = tmp_path / "copy.pt"
    shutil.copy(weights, copy)
    assert model_fingerprint(_spec(factory=saved_models.factory, kwargs=saved_models.kwargs, weights=copy)) == first

    torch.manual_seed(1)
    torch.save(digits_student(hidden=(8,)).state_dict(), weights)
    assert model_fingerprint(spec) != first
    # the factory's arguments change the model too
    assert model_fingerprint(_spec(factory=saved_models.factory, kwargs={"hidden": [9]}, weights=copy)) != first


def test_model_fingerprint_of_a_path_changes_with_the_file(tmp_path: Path, saved_models) -> None:
    path = tmp_path / "m.pt2"
    shutil.copy(saved_models.exported, path)
    first = model_fingerprint(_spec(path=path))
    with path.open("ab") as f:
        f.write(b"\0")
    assert model_fingerprint(_spec(path=path)) != first


def test_model_fingerprint_is_none_without_files(saved_models) -> None:
    assert model_fingerprint(_spec(factory=saved_models.factory)) is None


def test_model_fingerprint_of_a_missing_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model 'student': weights file not found"):
        model_fingerprint(_spec(factory="distill_eval.train.zoo:digits_student", weights=tmp_path / "none.pt"))


def test_parameter_fingerprint_tracks_every_parameter() -> None:
    def fingerprint(module: torch.nn.Module) -> str | None:
        return parameter_fingerprint(wrap_model("m", module))

    torch.manual_seed(3)
    module = digits_student(hidden=(8,))
    torch.manual_seed(3)
    same = digits_student(hidden=(8,))
    assert fingerprint(module) == fingerprint(same)
    with torch.no_grad():
        same[-1].bias[0] += 1e-3
    assert fingerprint(module) != fingerprint(same)
    assert parameter_fingerprint(wrap_model("m", LogisticRegression())) is None


# -- devices ------------------------------------------------------------------------


@pytest.mark.parametrize("cuda", [False, True])
def test_resolve_device(monkeypatch: pytest.MonkeyPatch, cuda: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device("auto") == ("cuda" if cuda else "cpu")
    assert resolve_device("cpu") == "cpu"
    if cuda:
        assert resolve_device("cuda:1") == "cuda:1"
    else:
        with pytest.raises(ModelError, match=r"device 'cuda:1' was asked for, but CUDA is not available"):
            resolve_device("cuda:1")


def test_a_factory_imports_from_the_project_root_and_leaves_sys_path_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    (tmp_path / "root_only_factory.py").write_text(
        "from distill_eval.train.zoo import digits_student\n\ndef build():\n    return digits_student(hidden=[4])\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory is not the project root
    monkeypatch.delitem(sys.modules, "root_only_factory", raising=False)
    before = list(sys.path)
    model = load_model(ModelSpec(name="student", factory="root_only_factory:build"), root=tmp_path)
    assert model.params == 64 * 4 + 4 + 4 * 10 + 10
    assert sys.path == before  # neither the root nor the working directory stays on it
    sys.modules.pop("root_only_factory", None)
