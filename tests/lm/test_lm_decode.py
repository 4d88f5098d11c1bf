"""Incremental decoding: cached steps equal whole-sequence recomputation, padding changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill_eval.config import ModelSpec
from distill_eval.lm.decode import Decoder, greedy_continuations, left_pad
from distill_eval.lm.models import load_token_model

pytestmark = pytest.mark.usefixtures("one_thread")

ZOO = "distill_eval.train.zoo"


def zoo_model(name: str = "bytes_student", seed: int = 0):
    torch.manual_seed(seed)  # untrained weights, seeded: peaked enough that greedy ties do not occur
    return load_token_model(ModelSpec(name="student", factory=f"{ZOO}:{name}", kwargs={"d_model": 32, "d_ff": 64}))


def prompts(n: int = 5, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(1, 12))) for _ in range(n)]


def reference_greedy(module: torch.nn.Module, prompt: np.ndarray, steps: int) -> list[int]:
    """One prompt alone, no padding, the whole sequence re-run at every step."""
    ids = torch.as_tensor(prompt, dtype=torch.int64)[None]
    out = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(module(ids, torch.ones_like(ids))[0, -1].argmax())
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def test_left_pad_puts_every_prompt_at_the_right_edge():
    ids, mask = left_pad([np.array([5, 6]), np.array([7]), np.array([1, 2, 3])], pad_id=9)
    np.testing.assert_array_equal(ids, [[9, 5, 6], [9, 9, 7], [1, 2, 3]])
    np.testing.assert_array_equal(mask, [[0, 1, 1], [0, 0, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([np.array([1]), np.array([], dtype=np.int64)])


def test_the_zoo_model_has_a_cache_and_a_pt2_program_does_not(tmp_path):
    model = zoo_model()
    assert model.has_kv_cache and Decoder(model).uses_cache
    assert not Decoder(model, use_cache=False).uses_cache
    ids = torch.zeros(2, 4, dtype=torch.int64)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("length", min=2)}
    program = torch.export.export(model.module, (ids, torch.ones_like(ids)), dynamic_shapes=(dims, dims))
    torch.export.save(program, tmp_path / "lm.pt2")
    exported = load_token_model(ModelSpec(name="student", path=tmp_path / "lm.pt2"))
    assert not exported.has_kv_cache and not Decoder(exported).uses_cache


@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_greedy_continuations_equal_each_prompt_decoded_alone(use_cache):
    model, ps = zoo_model(), prompts()
    got = greedy_continuations(model, ps, 6, batch_size=3, use_cache=use_cache)
    expected = [reference_greedy(model.module, p, 6) for p in ps]
    np.testing.assert_array_equal(got, expected)


def test_cached_steps_give_the_logits_of_the_whole_sequence():
    model = zoo_model("bytes_teacher")
    ids, mask = left_pad(prompts(4, seed=8))
    cached, plain = Decoder(model), Decoder(model, use_cache=False)
    (a, sa), (b, sb) = cached.prefill(ids, mask), plain.prefill(ids, mask)
    for token in ([1, 2, 3, 4], [250, 0, 7, 7], [9, 9, 9, 9]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        (a, sa), (b, sb) = cached.step(sa, token), plain.step(sb, token)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert sa.input_ids.shape == (4, ids.shape[1] + 3) and sa.past is not None and sb.past is None


def test_hugging_face_cached_greedy_matches_generate(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=300)
    module = transformers.GPT2LMHeadModel(config).eval()
    transformers.utils.logging.disable_progress_bar()
    try:
        module.save_pretrained(tmp_path)
    finally:
        transformers.utils.logging.enable_progress_bar()
    model = load_token_model(ModelSpec(name="teacher", path=tmp_path))
    assert model.has_kv_cache
    ps = prompts(4, seed=5)
    got = greedy_continuations(model, ps, 5)  # left-padded together, with the cache
    for row, p in zip(got, ps, strict=True):
        ids = torch.as_tensor(p, dtype=torch.int64)[None]
        with torch.no_grad():
            generated = module.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=5,
                min_new_tokens=5,
                pad_token_id=0,
            )
        np.testing.assert_array_equal(row, generated[0, len(p) :].numpy())
