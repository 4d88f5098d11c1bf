"""Token-level model loading: factory, .pt2 with dynamic dims, Hugging Face directories, true vocabularies."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from distill_eval.config import ModelSpec
from distill_eval.errors import ModelError
from distill_eval.lm.models import TokenModel, load_token_model, shared_vocab, token_model_fingerprint

V = 40


class TinyLM(torch.nn.Module):
    """Embedding -> causal running mean -> dropout -> a head padded by ``pad`` columns."""

    def __init__(self, vocab: int = V, pad: int = 8, dim: int = 8, *, declare: bool = True, output: str = "tensor"):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.drop = torch.nn.Dropout(0.5)  # only eval mode makes two calls agree
        self.head = torch.nn.Linear(dim, vocab + pad)
        self.output = output
        if declare:
            self.vocab_size = vocab

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        h = self.emb(input_ids) * attention_mask[..., None].to(torch.float32)
        steps = torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device, dtype=torch.float32)
        logits = self.head(self.drop(torch.cumsum(h, dim=1) / steps[None, :, None]))
        if self.output == "object":
            return SimpleNamespace(logits=logits)
        if self.output == "dict":
            return {"logits": logits, "past": None}
        if self.output == "ints":
            return logits.long()
        return logits


def tiny_lm(seed: int = 0, **kwargs) -> TinyLM:
    """The factory the specs below name."""
    torch.manual_seed(seed)
    return TinyLM(**kwargs)


class OneArg(torch.nn.Module):
    def forward(self, input_ids):
        return input_ids.float()


def one_arg() -> OneArg:
    return OneArg()


def not_a_module() -> object:
    return object()


def factory(name: str = "student", **kwargs) -> ModelSpec:
    fn = kwargs.pop("fn", "tiny_lm")
    weights = kwargs.pop("weights", None)
    return ModelSpec(name=name, factory=f"{__name__}:{fn}", weights=weights, kwargs=kwargs)


def batch(b: int = 3, length: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.int64)
    mask[0, 5:] = 0
    return ids, mask


# -- factory ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["tensor", "object", "dict"])
def test_factory_logits_are_the_module_s_sliced_to_the_true_vocabulary(output):
    model = load_token_model(factory(output=output))
    reference = tiny_lm(output="tensor").eval()
    ids, mask = batch()
    logits = model(ids, mask)
    assert isinstance(model, TokenModel)
    assert (model.format, model.true_vocab_size, model.vocab_source, model.head_size) == (
        "factory",
        V,
        "module.vocab_size",
        V + 8,
    )
    assert not model.module.training
    assert logits.shape == (3, 7, V) and not logits.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(logits, reference(ids, mask)[..., :V], rtol=0, atol=0)
    torch.testing.assert_close(model(ids.numpy(), mask.numpy()), logits, rtol=0, atol=0)  # arrays work too
    assert model.params == sum(p.numel() for p in reference.parameters())


def test_factory_weights_are_loaded_weights_only(tmp_path):
    trained = tiny_lm(seed=7).eval()
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    model = load_token_model(factory(weights=tmp_path / "w.pt"))
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), trained(ids, mask)[..., :V], rtol=0, atol=0)
    assert not torch.equal(model(ids, mask), load_token_model(factory())(ids, mask))  # seed 0 differs


def test_true_vocabulary_falls_back_to_the_head_and_yields_to_an_explicit_size():
    undeclared = load_token_model(factory(declare=False))
    assert (undeclared.true_vocab_size, undeclared.vocab_source) == (V + 8, "output head")
    explicit = load_token_model(factory(declare=False), vocab_size=V - 3)
    assert (explicit.true_vocab_size, explicit.vocab_source) == (V - 3, "vocab_size option")
    assert explicit(*batch()).shape == (3, 7, V - 3)


def test_a_vocabulary_wider_than_the_head_is_refused():
    with pytest.raises(ModelError, match=r"model 'student': its output head gives 48 logits per token but its "):
        load_token_model(factory(), vocab_size=49)


def test_padded_heads_of_different_widths_share_one_vocabulary():
    teacher = load_token_model(factory("teacher", pad=24, dim=16))
    student = load_token_model(factory("student", pad=0))
    assert (teacher.head_size, student.head_size) == (V + 24, V)
    assert shared_vocab(teacher, student) == V
    ids, mask = batch()
    assert teacher(ids, mask).shape == student(ids, mask).shape == (3, 7, V)


def test_vocabulary_mismatch_names_both_models_and_sizes():
    teacher = load_token_model(factory("teacher", vocab=V + 1, pad=0))
    student = load_token_model(factory("student"))
    with pytest.raises(ModelError) as info:
        shared_vocab(teacher, student)
    assert str(info.value).startswith(
        f"model 'teacher' has a vocabulary of {V + 1} tokens (from its module.vocab_size) but model 'student' "
        f"has {V} (from its module.vocab_size)"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fn": "one_arg"}, r"forward\(input_ids, attention_mask\) on a batch of shape \(1, 2\) failed: TypeError"),
        ({"fn": "not_a_module"}, r"the factory returned object; a language model must be a torch.nn.Module"),
        ({"output": "ints"}, r"returned logits of dtype torch.int64; expected floating point"),
    ],
)
def test_bad_factories_are_one_line_model_errors(kwargs, message):
    with pytest.raises(ModelError, match=r"model 'student'.*" + message):
        load_token_model(factory(**kwargs))


def test_a_wrong_output_shape_at_call_time_is_a_model_error():
    model = load_token_model(factory())
    model.module.output = "object"
    model.module.forward = lambda ids, mask: torch.zeros(ids.shape[0], V)  # drops the length axis
    with pytest.raises(ModelError, match=r"model 'student' returned logits of shape \(3, 40\) for input_ids of shape"):
        model(*batch())


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(ModelError, match=r"model 'student': not found: .*nope"):
        load_token_model(ModelSpec(name="student", path=tmp_path / "nope"))
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"unsupported format '.onnx' for a language model") as onnx:
        load_token_model(ModelSpec(name="student", path=tmp_path / "m.onnx"))
    assert "state dict" not in str(onnx.value)
    torch.save({"w": torch.zeros(1)}, tmp_path / "weights.pt")
    with pytest.raises(ModelError, match=r"a state dict goes in 'weights', next to the 'factory'"):
        load_token_model(ModelSpec(name="student", path=tmp_path / "weights.pt"))


# -- torch.export ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[TinyLM, Path, Path]:
    """The same tiny LM exported with a dynamic batch and length, and with fixed shapes."""
    folder = tmp_path_factory.mktemp("pt2")
    module = tiny_lm(seed=3).eval()
    ids, mask = batch(2, 6)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("length")}
    dynamic = torch.export.export(module, (ids, mask), dynamic_shapes=(dims, dims))
    torch.export.save(dynamic, str(folder / "dynamic.pt2"))
    torch.export.save(torch.export.export(module, (ids, mask)), str(folder / "fixed.pt2"))
    return module, folder / "dynamic.pt2", folder / "fixed.pt2"


def test_pt2_with_dynamic_dims_equals_the_eager_model_at_other_shapes(exported):
    module, dynamic, _ = exported
    model = load_token_model(ModelSpec(name="student", path=dynamic), vocab_size=V)
    assert (model.format, model.true_vocab_size, model.head_size) == ("torch.export", V, V + 8)
    for shape in [(3, 9), (1, 4), (5, 2)]:
        ids, mask = batch(*shape)
        with torch.no_grad():
            torch.testing.assert_close(model(ids, mask), module(ids, mask)[..., :V], rtol=1e-6, atol=1e-6)


def test_pt2_without_a_vocab_size_uses_its_head(exported):
    model = load_token_model(ModelSpec(name="student", path=exported[1]))
    assert (model.true_vocab_size, model.vocab_source) == (V + 8, "output head")


def test_pt2_with_fixed_shapes_is_refused_with_the_export_hint(exported):
    with pytest.raises(ModelError) as info:
        load_token_model(ModelSpec(name="student", path=exported[2]))
    message = str(info.value)
    assert "\n" not in message
    assert re.search(r"model 'student': .*fixed.pt2 was exported with a fixed batch size 2 and length 6; ", message)
    assert "dynamic_shapes=(dims, dims)" in message and "torch.export.Dim('length')" in message


def test_pt2_with_only_a_fixed_length_names_the_length(tmp_path):
    module = tiny_lm().eval()
    ids, mask = batch(2, 6)
    dims = {0: torch.export.Dim("batch")}
    torch.export.save(torch.export.export(module, (ids, mask), dynamic_shapes=(dims, dims)), str(tmp_path / "l.pt2"))
    with pytest.raises(ModelError, match=r"exported with a fixed length 6; export it with a dynamic batch and length"):
        load_token_model(ModelSpec(name="student", path=tmp_path / "l.pt2"))


# -- fingerprints ----------------------------------------------------------------------------------


def test_fingerprint_of_a_directory_follows_its_files_and_the_vocab_size(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "optimizer.pt").write_bytes(b"x")
    spec = ModelSpec(name="teacher", path=tmp_path)
    first = token_model_fingerprint(spec)
    (tmp_path / "checkpoint-5" / "optimizer.pt").write_bytes(b"y")  # from_pretrained never reads it
    assert token_model_fingerprint(spec) == first
    assert token_model_fingerprint(spec, vocab_size=3) != first
    (tmp_path / "model.safetensors").write_bytes(b"abd")
    assert token_model_fingerprint(spec) != first
    assert token_model_fingerprint(factory()) is None  # no files: hash the loaded parameters instead


# -- Hugging Face ----------------------------------------------------------------------------------


def test_a_directory_without_transformers_says_which_extra_to_install(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(ModelError) as info:
        load_token_model(ModelSpec(name="teacher", path=tmp_path))
    assert str(info.value) == (
        f"model 'teacher': {tmp_path} is a Hugging Face model directory, which needs the transformers package: "
        "pip install 'distill-eval[hf]'"
    )


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """A 1-layer GPT-2 with a head of 300 logits, saved with and without a 250-token tokenizer."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=300, bos_token_id=1, eos_token_id=1
    )
    module = transformers.GPT2LMHeadModel(config).eval()
    bare, with_tokenizer = tmp_path_factory.mktemp("gpt2"), tmp_path_factory.mktemp("gpt2_tok")
    quiet = transformers.utils.logging
    quiet.disable_progress_bar()
    try:
        module.save_pretrained(bare)
        module.save_pretrained(with_tokenizer)
    finally:
        quiet.enable_progress_bar()
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"w{i}": i for i in range(250)}, unk_token="w0"))
    words.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0").save_pretrained(with_tokenizer)
    return module, bare, with_tokenizer


def test_hf_directory_takes_its_true_vocabulary_from_the_tokenizer(hf_dirs):
    module, _, with_tokenizer = hf_dirs
    model = load_token_model(ModelSpec(name="teacher", path=with_tokenizer))
    assert (model.format, model.true_vocab_size, model.vocab_source, model.head_size) == ("hf", 250, "tokenizer", 300)
    assert not model.module.training
    ids = torch.randint(0, 250, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        expected = module(input_ids=ids, attention_mask=mask).logits[..., :250]
    torch.testing.assert_close(model(ids, mask), expected, rtol=1e-6, atol=1e-6)


def test_hf_directory_without_a_tokenizer_uses_the_config(hf_dirs):
    model = load_token_model(ModelSpec(name="teacher", path=hf_dirs[1]))
    assert (model.true_vocab_size, model.vocab_source) == (300, "config.vocab_size")


def test_hf_teacher_and_student_with_different_tokenizer_sizes_are_refused(hf_dirs):
    teacher = load_token_model(ModelSpec(name="teacher", path=hf_dirs[2]))
    student = load_token_model(ModelSpec(name="student", path=hf_dirs[1]))
    with pytest.raises(ModelError, match=r"model 'teacher' has a vocabulary of 250 tokens \(from its tokenizer\) "):
        shared_vocab(teacher, student)


def test_hf_remote_code_needs_trust_and_dtypes_are_read(hf_dirs):
    with pytest.raises(ModelError, match=r"model 'teacher': trust_remote_code runs code from .*trusted = true"):
        load_token_model(ModelSpec(name="teacher", path=hf_dirs[1], kwargs={"trust_remote_code": True}))
    with pytest.raises(ModelError, match=r"kwargs.dtype = 'float33' is not a torch dtype"):
        load_token_model(ModelSpec(name="teacher", path=hf_dirs[1], kwargs={"dtype": "float33"}))
    half = load_token_model(ModelSpec(name="teacher", path=hf_dirs[1], kwargs={"dtype": "bfloat16"}))
    assert half(torch.zeros(1, 3, dtype=torch.int64)).dtype == torch.bfloat16


def test_hf_directory_that_is_not_a_model_is_a_model_error(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(ModelError, match=r"model 'teacher': .* is a directory without config.json"):
        load_token_model(ModelSpec(name="teacher", path=tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelError, match=r"model 'teacher': cannot load .* with AutoModelForCausalLM: "):
        load_token_model(ModelSpec(name="teacher", path=tmp_path))


def test_hf_tokenizer_that_does_not_load_warns_and_falls_back_to_the_config(hf_dirs, tmp_path):
    import shutil

    from distill_eval.errors import DistillWarning

    broken = tmp_path / "broken"
    shutil.copytree(hf_dirs[2], broken)
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.warns(DistillWarning, match=r"model 'teacher': the tokenizer in .* does not load"):
        model = load_token_model(ModelSpec(name="teacher", path=broken))
    assert (model.true_vocab_size, model.vocab_source) == (300, "config.vocab_size")


def test_parameter_fingerprint_follows_the_weights_the_kwargs_and_the_vocabulary():
    spec = factory()
    first = load_token_model(spec).parameter_fingerprint(spec)
    assert load_token_model(spec).parameter_fingerprint(spec) == first  # same seed, same weights
    changed = load_token_model(spec)
    with torch.no_grad():
        changed.module.head.bias[0] += 1.0
    assert changed.parameter_fingerprint(spec) != first
    assert load_token_model(spec).parameter_fingerprint(factory(seed=0)) != first  # the kwargs shape outputs too
    assert load_token_model(spec, vocab_size=V - 1).parameter_fingerprint(spec) != first
