"""Paired token statistics against a float64 numpy/scipy reference, masking, vocab slicing, chunking, streaming."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from scipy.spatial.distance import jensenshannon

from distill_eval.errors import DataError, ModelError
from distill_eval.lm.pairstats import TokenStats, pair_stats, shared_vocab_size, stream_pair_stats
from distill_eval.lm.tokens import token_dataset

V = 37


def batch(seed: int = 0, *, b: int = 4, length: int = 9, pad_teacher: int = 3, pad_student: int = 5):
    """Random logits with padded heads of different widths, labels with -100 and a padded row."""
    rng = np.random.default_rng(seed)
    teacher = rng.normal(scale=2.0, size=(b, length, V + pad_teacher))
    student = rng.normal(scale=2.0, size=(b, length, V + pad_student))
    student[..., :V] += teacher[..., :V]  # a student that roughly follows its teacher
    labels = rng.integers(0, V, size=(b, length))
    labels[0, 3] = -100  # a prompt token: position 2 is not scored
    labels[:, 0] = -100  # never a target anyway
    mask = np.ones((b, length), dtype=np.int64)
    mask[1, 6:] = 0  # right padding
    labels[1, 6:] = -100
    mask[2, :2] = 0  # left padding
    labels[2, :2] = -100
    return teacher.astype(np.float32), student.astype(np.float32), labels, mask


def scored_reference(labels: np.ndarray, mask: np.ndarray) -> list[tuple[int, int]]:
    """(sequence, target position) pairs, by the definition, with a loop."""
    pairs = []
    for s in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            if labels[s, t + 1] != -100 and mask[s, t] == 1 and mask[s, t + 1] == 1:
                pairs.append((s, t + 1))
    return pairs


def reference(teacher, student, labels, mask, k):
    """Every column in float64 with numpy and scipy, token by token."""
    rows = {name: [] for name in TokenStats.__dataclass_fields__}
    for s, pos in scored_reference(labels, mask):
        lp = scipy.special.log_softmax(teacher[s, pos - 1, :V].astype(np.float64))
        lq = scipy.special.log_softmax(student[s, pos - 1, :V].astype(np.float64))
        p, q = np.exp(lp), np.exp(lq)
        y = labels[s, pos]
        top_p = np.argsort(-p, kind="stable")[:k]
        top_q = np.argsort(-q, kind="stable")[:k]
        values = {
            "sequence": s,
            "position": pos,
            "label": y,
            "teacher_nll": -lp[y],
            "student_nll": -lq[y],
            "teacher_argmax": np.argmax(p),
            "student_argmax": np.argmax(q),
            "teacher_max_prob": p.max(),
            "student_max_prob": q.max(),
            "teacher_entropy": scipy.stats.entropy(p),
            "student_entropy": scipy.stats.entropy(q),
            "kl": scipy.special.rel_entr(p, q).sum(),
            "reverse_kl": scipy.special.rel_entr(q, p).sum(),
            "js": jensenshannon(p, q) ** 2,
            "tvd": 0.5 * np.abs(p - q).sum(),
            "teacher_top_ids": top_p,
            "teacher_top_logprobs": lp[top_p],
            "top_k_overlap": len(set(top_p) & set(top_q)) / k,
            "student_rank": int((lq > lq[np.argmax(p)]).sum()),
        }
        for name, value in values.items():
            rows[name].append(value)
    return {name: np.array(v) for name, v in rows.items()}


def assert_matches(got: TokenStats, want: dict[str, np.ndarray]) -> None:
    for name, value in got.columns().items():
        if np.issubdtype(value.dtype, np.integer):
            np.testing.assert_array_equal(value, want[name], err_msg=name)
        else:
            np.testing.assert_allclose(value, want[name], rtol=2e-5, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("k", [1, 4, V])
def test_every_column_matches_a_float64_scipy_reference(k: int) -> None:
    teacher, student, labels, mask = batch()
    got = pair_stats(torch.from_numpy(teacher), torch.from_numpy(student), labels, mask, vocab_size=V, top_k=k)
    assert got.top_k == k
    assert_matches(got, reference(teacher, student, labels, mask, k))


def test_numpy_and_half_precision_logits_are_upcast_to_float32() -> None:
    teacher, student, labels, mask = batch(1)
    want = reference(teacher, student, labels, mask, 3)
    got = pair_stats(teacher, student, labels, mask, vocab_size=V, top_k=3)  # numpy in
    assert_matches(got, want)
    grad = torch.from_numpy(teacher).requires_grad_()  # logits straight from a training step
    assert_matches(pair_stats(grad, student, labels, mask, vocab_size=V, top_k=3), want)
    half = pair_stats(
        torch.from_numpy(teacher).bfloat16(), torch.from_numpy(student).bfloat16(), labels, mask, vocab_size=V, top_k=3
    )
    # bfloat16 logits lose precision before the softmax, but the statistics are still computed in float32
    assert half.kl.dtype == np.float32
    np.testing.assert_allclose(half.kl, want["kl"], rtol=0.1, atol=0.05)


def test_scored_positions_follow_the_unshifted_convention() -> None:
    teacher, student, labels, mask = batch()
    got = pair_stats(teacher, student, labels, mask, vocab_size=V)
    pairs = scored_reference(labels, mask)
    assert list(zip(got.sequence.tolist(), got.position.tolist(), strict=True)) == pairs
    assert (0, 3) not in pairs and (1, 6) not in pairs  # a -100 label, a padded position
    assert (2, 2) not in pairs and (2, 3) in pairs  # left padding: the first real token is not a target
    np.testing.assert_array_equal(got.label, [labels[s, t] for s, t in pairs])


def test_the_last_position_is_never_scored() -> None:
    teacher, student, _, _ = batch()
    labels = np.ones((4, 9), dtype=np.int64)  # every label set: only the shift leaves the last position out
    got = pair_stats(teacher, student, labels, np.ones((4, 9)), vocab_size=V)
    assert got.n == 4 * 8 and got.position.max() == 8 and got.position.min() == 1


def test_logits_at_t_score_the_label_at_t_plus_one() -> None:
    """A teacher that puts all its mass on labels[t + 1] at position t has NLL ~0; one shifted wrongly does not."""
    _, student, labels, mask = batch()
    labels = np.where(labels == -100, -100, labels)
    sharp = np.full((4, 9, V), -30.0, dtype=np.float32)
    nxt = np.roll(np.where(labels < 0, 0, labels), -1, axis=1)  # the label of the next position
    np.put_along_axis(sharp, nxt[..., None], 30.0, axis=2)
    got = pair_stats(sharp, student, labels, mask, vocab_size=V)
    assert got.teacher_nll.max() < 1e-6
    assert np.all(got.teacher_argmax == got.label) and np.all(got.teacher_max_prob > 0.999)
    same_position = np.zeros((4, 9, V), dtype=np.float32)
    np.put_along_axis(same_position, np.where(labels < 0, 0, labels)[..., None], 60.0, axis=2)
    assert pair_stats(same_position, student, labels, mask, vocab_size=V).teacher_nll.mean() > 10


def test_padded_heads_are_sliced_to_the_true_vocabulary() -> None:
    teacher, student, labels, mask = batch(pad_teacher=0, pad_student=0)
    exact = pair_stats(teacher, student, labels, mask, vocab_size=V)
    huge = np.full((*teacher.shape[:2], 11), 100.0, dtype=np.float32)  # padding columns that would dominate
    padded = pair_stats(
        np.concatenate([teacher, huge], axis=2), np.concatenate([student, huge[..., :2]], axis=2),
        labels, mask, vocab_size=V,
    )  # fmt: skip
    for name, value in exact.columns().items():
        np.testing.assert_array_equal(getattr(padded, name), value, err_msg=name)


def test_zero_probabilities_give_finite_entropy_and_infinite_reverse_kl() -> None:
    teacher, student, labels, mask = batch(pad_teacher=0, pad_student=0)
    teacher[..., :5] = -np.inf  # the teacher rules out five tokens
    labels = np.where((labels >= 0) & (labels < 5), 7, labels)
    got = pair_stats(teacher, student, labels, mask, vocab_size=V)
    want = reference(teacher, student, labels, mask, 5)
    assert np.all(np.isfinite(got.teacher_entropy)) and np.all(np.isfinite(got.kl))
    assert np.all(np.isinf(got.reverse_kl)) and np.all(np.isinf(want["reverse_kl"]))
    for name in ("teacher_entropy", "kl", "js", "tvd"):
        np.testing.assert_allclose(getattr(got, name), want[name], rtol=2e-5, atol=2e-6, err_msg=name)


def test_results_do_not_depend_on_the_chunk_size(one_thread: None) -> None:
    teacher, student, labels, mask = batch(2, b=5, length=12)
    teacher[0, 4, :3] = -np.inf  # a row that takes the exact 0 log 0 path, in chunks with and without others
    whole = pair_stats(teacher, student, labels, mask, vocab_size=V, chunk_tokens=10**6)
    for chunk in (1, 7, None):
        got = pair_stats(teacher, student, labels, mask, vocab_size=V, chunk_tokens=chunk)
        for name, value in whole.columns().items():
            np.testing.assert_array_equal(getattr(got, name), value, err_msg=f"{name}, chunk {chunk}")


def test_threaded_reductions_over_a_large_vocabulary_only_round_differently() -> None:
    """With several threads torch may split one row's sum over the vocabulary: the last bits may change."""
    rng = np.random.default_rng(4)
    vocab = 60_000
    teacher = rng.normal(size=(2, 7, vocab)).astype(np.float32)
    student = (teacher + 0.3 * rng.normal(size=teacher.shape)).astype(np.float32)
    labels = rng.integers(0, vocab, size=(2, 7))
    whole = pair_stats(teacher, student, labels, np.ones((2, 7)), vocab_size=vocab)
    ones = pair_stats(teacher, student, labels, np.ones((2, 7)), vocab_size=vocab, chunk_tokens=1)
    for name, value in whole.columns().items():
        np.testing.assert_allclose(getattr(ones, name), value, rtol=1e-5, atol=1e-7, err_msg=name)


def test_columns_round_trip_and_are_checked() -> None:
    stats = pair_stats(*batch(), vocab_size=V)
    back = TokenStats.from_columns(stats.columns())
    assert all(np.array_equal(getattr(back, n), v) for n, v in stats.columns().items())
    with pytest.raises(ValueError, match=r"missing \['kl'\], unknown \['kld'\]"):
        TokenStats.from_columns({("kld" if n == "kl" else n): v for n, v in stats.columns().items()})
    with pytest.raises(ValueError, match="must have one length"):
        TokenStats.from_columns({**stats.columns(), "js": stats.js[:-1]})


def test_the_sequence_offset_shifts_sequence_indices() -> None:
    teacher, student, labels, mask = batch()
    a = pair_stats(teacher, student, labels, mask, vocab_size=V)
    b = pair_stats(teacher, student, labels, mask, vocab_size=V, sequence_offset=10)
    np.testing.assert_array_equal(b.sequence, a.sequence + 10)


def test_different_true_vocabularies_are_refused() -> None:
    teacher, student, labels, mask = batch()
    with pytest.raises(ModelError, match="teacher's vocabulary has 37 tokens but the student's has 38"):
        pair_stats(teacher, student, labels, mask, vocab_size=(V, V + 1))
    assert shared_vocab_size(V, V) == V
    got = pair_stats(teacher, student, labels, mask, vocab_size=(V, V))
    assert got.n == len(scored_reference(labels, mask))


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda t, s, y, m: (t[..., :30], s, y, m), ModelError, "teacher outputs 30 logits per token but the vocab"),
        (lambda t, s, y, m: (t, s[:, :5], y, m), ModelError, r"student's logits must have shape \(batch, length"),
        (lambda t, s, y, m: (t[0], s, y, m), ModelError, r"teacher's logits must have shape"),
        (lambda t, s, y, m: (t, s.astype(np.int64), y, m), ModelError, "student's logits must be floating point"),
        (lambda t, s, y, m: (_set(t, (3, 4, 0), np.nan), s, y, m), ModelError, "teacher's logits at sequence 3, posi"),
        (lambda t, s, y, m: (t, _set(s, (0, 1, 2), np.inf), y, m), ModelError, "student's logits at sequence 0, posi"),
        (lambda t, s, y, m: (t, s, _set(y, (3, 5), V), m), DataError, "label 37 .sequence 3, position 5. is outside"),
    ],
)
def test_unusable_logits_and_labels_are_named(change, error, message) -> None:
    with pytest.raises(error, match=message):
        pair_stats(*change(*batch()), vocab_size=V)


def _set(array: np.ndarray, index: tuple[int, ...], value: float) -> np.ndarray:
    out = array.copy()
    out[index] = value
    return out


def test_nan_at_an_unscored_position_is_ignored() -> None:
    teacher, student, labels, mask = batch()
    teacher[1, 7] = np.nan  # right padding: models may emit garbage there
    assert np.all(np.isfinite(pair_stats(teacher, student, labels, mask, vocab_size=V).kl))


@pytest.mark.parametrize("bad", [{"top_k": 0}, {"top_k": V + 1}, {"chunk_tokens": 0}, {"vocab_size": 0}])
def test_bad_options_are_value_errors(bad: dict) -> None:
    options = {"vocab_size": V, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        pair_stats(*batch(), **options)


# -- the streaming driver ------------------------------------------------------------------


class TinyLM(torch.nn.Module):
    """A causal toy LM: embedding, running mean over the past, a (padded) linear head."""

    def __init__(self, seed: int, head: int, hf_output: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(V, 16)
        self.head = torch.nn.Linear(16, head)
        self.hf_output = hf_output
        self.calls: list[tuple[int, ...]] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.calls.append(tuple(input_ids.shape))
        h = self.embed(input_ids) * attention_mask[..., None]
        h = h.cumsum(dim=1) / attention_mask.cumsum(dim=1).clamp(min=1)[..., None]
        logits = 3 * self.head(torch.tanh(h))
        return SimpleNamespace(logits=logits) if self.hf_output else logits


def ragged_dataset():
    rng = np.random.default_rng(3)
    lengths = [7, 12, 3, 9, 12, 5, 2]
    rows = [rng.integers(0, V, size=n) for n in lengths]
    labels = [r.copy() for r in rows]
    labels[1][:4] = -100  # a prompt
    return token_dataset(rows, labels=labels, name="toy")


def test_the_driver_equals_one_computation_on_the_full_logits() -> None:
    data = ragged_dataset()
    teacher, student = TinyLM(0, V + 3).eval(), TinyLM(1, V + 1, hf_output=True).eval()
    got = stream_pair_stats(data, teacher, student, vocab_size=V, batch_size=3, top_k=4, chunk_tokens=5)
    assert teacher.calls == [(3, 12), (3, 12), (1, 2)]  # both models on the same batches, cut to their width
    assert student.calls == teacher.calls
    with torch.no_grad():
        ids, mask = torch.from_numpy(data.input_ids), torch.from_numpy(data.attention_mask)
        full_t, full_s = teacher(ids, mask), student(ids, mask).logits
    want = pair_stats(full_t, full_s, data.labels, data.attention_mask, vocab_size=V, top_k=4)
    assert got.n == want.n == data.n_scored
    for name, value in want.columns().items():
        if np.issubdtype(value.dtype, np.integer):
            np.testing.assert_array_equal(getattr(got, name), value, err_msg=name)
        else:
            np.testing.assert_allclose(getattr(got, name), value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_driver_checks_what_the_models_return() -> None:
    data = ragged_dataset()
    teacher = TinyLM(0, V).eval()
    with pytest.raises(ModelError, match="model 'student' returned str; expected a tensor of logits"):
        stream_pair_stats(data, teacher, lambda ids, mask: "logits", vocab_size=V)
    with pytest.raises(ModelError, match="student outputs 30 logits per token but the vocabulary has 37"):
        stream_pair_stats(data, teacher, TinyLM(1, 30), vocab_size=V)
    with pytest.raises(ValueError, match="pass vocab_size"):
        stream_pair_stats(data, teacher, teacher)


def test_a_batch_without_scored_tokens_gives_empty_columns() -> None:
    teacher, student, labels, mask = batch()
    empty = pair_stats(teacher, student, np.full_like(labels, -100), mask, vocab_size=V, top_k=3)
    full = pair_stats(teacher, student, labels, mask, vocab_size=V, top_k=3)
    assert empty.n == 0 and empty.teacher_top_ids.shape == (0, 3)
    both = TokenStats.concatenate([empty, full, empty])
    for name, value in full.columns().items():
        assert getattr(empty, name).dtype == value.dtype, name
        np.testing.assert_array_equal(getattr(both, name), value)
