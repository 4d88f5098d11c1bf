"""Per-model token summaries against a float64 reference, against pair_stats' teacher columns, streaming, npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from distill_eval.errors import DataError, ModelError
from distill_eval.lm.modelstats import ModelTokenStats, model_stats, stream_model_stats
from distill_eval.lm.pairstats import pair_stats, stream_pair_stats
from distill_eval.lm.tokens import token_dataset

V = 41


def batch(seed: int = 0, *, b: int = 4, length: int = 10, pad: int = 3):
    """Random logits with a padded head, -100 labels, right and left padding, one row with zero probabilities."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.5, size=(b, length, V + pad)).astype(np.float32)
    logits[1, 2, :6] = -np.inf  # six tokens ruled out at one position
    labels = rng.integers(6, V, size=(b, length))
    labels[0, 4] = -100
    mask = np.ones((b, length), dtype=np.int64)
    mask[2, 7:] = 0
    labels[2, 7:] = -100
    mask[3, :2] = 0
    labels[3, :2] = -100
    return logits, labels, mask


def reference(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Every column in float64 with scipy, token by token, from the definitions."""
    out: dict[str, list] = {name: [] for name in ModelTokenStats.DTYPES}
    for s in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            if labels[s, t + 1] == -100 or not (mask[s, t] and mask[s, t + 1]):
                continue
            lp = scipy.special.log_softmax(logits[s, t, :V].astype(np.float64))
            p = np.exp(lp)
            y = labels[s, t + 1]
            top = np.argsort(-p, kind="stable")[:k]
            values = {
                "sequence": s,
                "position": t + 1,
                "label": y,
                "nll": -lp[y],
                "argmax": np.argmax(p),
                "max_prob": p.max(),
                "entropy": scipy.stats.entropy(p),
                "top_ids": top,
                "top_logprobs": lp[top],
                "tail_prob": 1.0 - p[top].sum(),
            }
            for name, value in values.items():
                out[name].append(value)
    return {name: np.array(v) for name, v in out.items()}


@pytest.mark.parametrize("k", [1, 5, V])
def test_every_column_matches_a_float64_reference(k: int) -> None:
    logits, labels, mask = batch()
    got = model_stats(torch.from_numpy(logits), labels, mask, vocab_size=V, top_k=k)
    want = reference(logits, labels, mask, k)
    assert got.n == len(want["sequence"]) > 0 and got.top_k == k and got.vocab_size == V
    for name, value in got.columns().items():
        assert value.dtype == ModelTokenStats.DTYPES[name], name
        if name == "top_ids":  # ids tied at probability 0 (k = V) may come in any order
            tied = np.isneginf(want["top_logprobs"])
            np.testing.assert_array_equal(value[~tied], want[name][~tied], err_msg=name)
            for row in np.flatnonzero(tied.any(axis=1)):
                assert sorted(value[row][tied[row]]) == sorted(want[name][row][tied[row]])
        elif np.issubdtype(value.dtype, np.integer):
            np.testing.assert_array_equal(value, want[name], err_msg=name)
        elif name == "top_logprobs":  # float16: 11 significant bits
            np.testing.assert_allclose(value, want[name], rtol=1e-3, atol=1e-3, err_msg=name)
        else:
            np.testing.assert_allclose(value, want[name], rtol=2e-5, atol=3e-6, err_msg=name)
    assert np.isfinite(got.entropy).all()  # the row with probabilities exactly 0
    assert (got.tail_prob >= 0).all() and got.tail_prob.max() < 1


@pytest.mark.parametrize("chunk", [1, 3, None])
def test_it_agrees_with_the_teacher_columns_of_pair_stats(chunk: int | None, one_thread: None) -> None:
    logits, labels, mask = batch(1)
    student = np.random.default_rng(9).normal(size=logits.shape).astype(np.float32)
    pair = pair_stats(logits, student, labels, mask, vocab_size=V, top_k=7, chunk_tokens=chunk)
    one = model_stats(logits, labels, mask, vocab_size=V, top_k=7, chunk_tokens=chunk)
    for name in ("sequence", "position", "label"):
        np.testing.assert_array_equal(getattr(one, name), getattr(pair, name), err_msg=name)
    for name in ("nll", "argmax", "max_prob", "entropy", "top_ids"):
        np.testing.assert_array_equal(getattr(one, name), getattr(pair, f"teacher_{name}"), err_msg=name)
    np.testing.assert_array_equal(one.top_logprobs, pair.teacher_top_logprobs.astype(np.float16))


class Bigram(torch.nn.Module):
    """logits[b, t] depend on input_ids[b, t] only, with a padded head."""

    def __init__(self, vocab: int, pad: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Embedding(vocab, vocab + pad)
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.table(input_ids) * 3


def test_streaming_in_batches_equals_the_whole_dataset_at_once(one_thread: None) -> None:
    rng = np.random.default_rng(3)
    rows = [rng.integers(0, V, size=n) for n in (9, 4, 12, 7, 2)]
    data = token_dataset(rows, vocab_size=V, name="toy")
    model = Bigram(V)
    streamed = stream_model_stats(data, model, batch_size=2, top_k=4, info={"model": "bigram"})
    assert model.calls == 3  # batches of 2, 2 and 1 sequences
    with torch.no_grad():
        logits = model(torch.from_numpy(data.input_ids), torch.from_numpy(data.attention_mask)).numpy()
    whole = model_stats(logits, data.labels, data.attention_mask, vocab_size=V, top_k=4)
    for name, value in whole.columns().items():
        np.testing.assert_array_equal(getattr(streamed, name), value, err_msg=name)
    assert streamed.n == data.n_scored == sum(n - 1 for n in (9, 4, 12, 7, 2))
    assert streamed.info == {"model": "bigram", "dataset_sha256": data.sha256}
    # and the streamed pair statistics' teacher side is the same record
    pair = stream_pair_stats(data, model, Bigram(V), batch_size=2, top_k=4)
    np.testing.assert_array_equal(pair.teacher_nll, streamed.nll)
    np.testing.assert_array_equal(pair.teacher_top_ids, streamed.top_ids)


def test_the_npz_round_trip_keeps_every_column_and_dtype(tmp_path: Path) -> None:
    logits, labels, mask = batch(2)
    stats = model_stats(logits, labels, mask, vocab_size=V, top_k=6)
    stats = ModelTokenStats(**stats.columns(), vocab_size=V, info={"model": "t", "n": 3})
    path = stats.save(tmp_path / "teacher.stats")  # any suffix: the name is kept as given
    assert path == tmp_path / "teacher.stats" and path.is_file()
    back = ModelTokenStats.load(path)
    assert back.vocab_size == V and back.info == {"model": "t", "n": 3} and back.top_k == 6
    for name, value in stats.columns().items():
        assert getattr(back, name).dtype == value.dtype
        np.testing.assert_array_equal(getattr(back, name), value, err_msg=name)
    assert stats.nbytes == stats.n * (8 + 4 + 4 + 4 + 4 + 4 + 4 + 6 * 4 + 6 * 2 + 4)


def test_a_bad_record_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    stats = model_stats(*batch(), vocab_size=V, top_k=3)
    good = stats.save(tmp_path / "good.npz")
    with pytest.raises(DataError, match="file not found"):
        ModelTokenStats.load(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.npz: not a saved record"):
        ModelTokenStats.load(tmp_path / "junk.npz")
    with np.load(good) as archive:
        arrays = {k: archive[k] for k in archive.files}
    np.savez(tmp_path / "missing.npz", **{k: v for k, v in arrays.items() if k != "entropy"})
    with pytest.raises(DataError, match=r"missing\.npz: expected the keys .*missing \['entropy'\]"):
        ModelTokenStats.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "dtype.npz", **{**arrays, "top_logprobs": arrays["top_logprobs"].astype(np.float32)})
    with pytest.raises(DataError, match=r"dtype\.npz: 'top_logprobs' has dtype float32 .* expected float16"):
        ModelTokenStats.load(tmp_path / "dtype.npz")
    np.savez(tmp_path / "short.npz", **{**arrays, "nll": arrays["nll"][:-1]})
    with pytest.raises(DataError, match=r"short\.npz: 'nll' has dtype float32 and shape"):
        ModelTokenStats.load(tmp_path / "short.npz")


def test_bad_logits_and_labels_are_reported_with_the_model_s_name() -> None:
    logits, labels, mask = batch()
    logits[2, 3, 5] = np.nan
    with pytest.raises(ModelError, match="the teacher's logits at sequence 12, position 3 hold NaN"):
        model_stats(logits, labels, mask, vocab_size=V, sequence_offset=10, who="teacher")
    with pytest.raises(ModelError, match=r"the model outputs 44 logits per token but the vocabulary has 50"):
        model_stats(logits, labels, mask, vocab_size=50)
    labels[0, 3] = V + 1
    with pytest.raises(DataError, match=f"label {V + 1} .* outside the vocabulary of {V} tokens"):
        model_stats(batch()[0], labels, mask, vocab_size=V)
    with pytest.raises(ValueError, match="top_k must be an integer in"):
        model_stats(*batch(), vocab_size=V, top_k=0)


def test_one_pair_pass_emits_both_models_summaries_as_each_model_alone_would(one_thread: None) -> None:
    from distill_eval.lm.pairstats import stream_pair_and_model_stats
    from distill_eval.lm.session import SummaryPair

    rng = np.random.default_rng(5)
    data = token_dataset([rng.integers(0, V, size=n) for n in (9, 4, 12, 7, 2)], vocab_size=V, name="toy")
    teacher, student = Bigram(V), Bigram(V)
    with torch.no_grad():
        student.table.weight.add_(0.5 * torch.randn_like(student.table.weight))
    pair, t_summary, s_summary = stream_pair_and_model_stats(
        data, teacher, student, batch_size=2, top_k=3, model_top_k=6
    )
    assert (teacher.calls, student.calls) == (3, 3)  # one forward per batch each, for all three records
    for model, summary in ((teacher, t_summary), (student, s_summary)):
        alone = stream_model_stats(data, model, batch_size=2, top_k=6)
        for name, value in alone.columns().items():
            np.testing.assert_array_equal(getattr(summary, name), value, err_msg=name)
    # the pair's own columns did not change by also emitting the summaries
    plain = stream_pair_stats(data, teacher, student, batch_size=2, top_k=3)
    for name, value in plain.columns().items():
        np.testing.assert_array_equal(getattr(pair, name), value, err_msg=name)
    # two summaries give the pair's per-model columns exactly, top-k overlap and top-k hits included
    view = SummaryPair(t_summary, s_summary, 3)
    for name in ("teacher_nll", "student_nll", "teacher_argmax", "student_argmax", "student_max_prob", "top_k_overlap"):
        np.testing.assert_array_equal(getattr(view, name), getattr(pair, name), err_msg=name)
    np.testing.assert_array_equal(view.student_top_k_hit(3), pair.student_rank < 3)
    # and against a brute-force reading of the student's full distribution
    with torch.no_grad():
        logits = student(torch.from_numpy(data.input_ids), None)[..., :V].numpy()
    rows = logits[pair.sequence, pair.position - 1]
    rank = (rows > rows[np.arange(pair.n), pair.teacher_argmax][:, None]).sum(axis=1)
    np.testing.assert_array_equal(view.student_top_k_hit(3), rank < 3)
