"""Masked token KD losses against float64 scipy references, TRL's GKD formula, gradients and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F
from scipy.spatial.distance import jensenshannon

from distill_eval.lm.loss import count_valid_tokens, token_kd_loss

V = 11

# tiny tensors: one torch thread is faster than a pool that shares two cores with other work
pytestmark = pytest.mark.usefixtures("one_thread")


def batch(seed: int = 0, *, b: int = 3, length: int = 8, pad_s: int = 0, pad_t: int = 0, dtype=torch.float64):
    """Random logits (optionally with padded heads), labels with -100 in the middle and at the end."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(b, length, V + pad_t, generator=g, dtype=torch.float64) * 2
    student = teacher[..., :V].clone() if pad_s == 0 else torch.randn(b, length, V + pad_s, generator=g).double()
    student[..., :V] = 0.5 * teacher[..., :V] + torch.randn(b, length, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (b, length), generator=g)
    labels[:, 0] = -100
    labels[0, 3] = -100  # a prompt token in the middle
    labels[1, 5:] = -100  # right padding
    return student.to(dtype), teacher.to(dtype), labels


def reference(student, teacher, labels, *, divergence, temperature, alpha, beta=0.5, mask=None):
    """The loss token by token in float64 with scipy: mean over scored tokens."""
    s = student.detach().double().numpy()[..., :V]
    t = teacher.detach().double().numpy()[..., :V]
    lab = labels.numpy()
    att = np.ones_like(lab) if mask is None else mask.numpy()
    terms = []
    for i in range(lab.shape[0]):
        for j in range(lab.shape[1] - 1):
            y = lab[i, j + 1]
            if y == -100 or not (att[i, j] and att[i, j + 1]):
                continue
            ce = -scipy.special.log_softmax(s[i, j])[y]
            p = scipy.special.softmax(t[i, j] / temperature)
            q = scipy.special.softmax(s[i, j] / temperature)
            if divergence == "forward_kl":
                d = scipy.stats.entropy(p, q)
            elif divergence == "reverse_kl":
                d = scipy.stats.entropy(q, p)
            else:
                m = beta * p + (1 - beta) * q
                d = beta * scipy.stats.entropy(p, m) + (1 - beta) * scipy.stats.entropy(q, m)
            terms.append((1 - alpha) * ce + alpha * temperature**2 * d)
    return float(np.mean(terms))


@pytest.mark.parametrize(
    ("divergence", "temperature", "alpha", "beta"),
    [
        ("forward_kl", 1.0, 1.0, 0.5),
        ("forward_kl", 2.0, 0.3, 0.5),
        ("reverse_kl", 1.0, 1.0, 0.5),
        ("reverse_kl", 0.7, 0.6, 0.5),
        ("jsd", 1.0, 1.0, 0.5),
        ("jsd", 1.5, 0.8, 0.2),
        ("jsd", 1.0, 0.0, 0.9),
    ],
)
def test_loss_equals_the_float64_reference(divergence, temperature, alpha, beta):
    student, teacher, labels = batch()
    loss = token_kd_loss(
        student, teacher, labels, divergence=divergence, temperature=temperature, alpha=alpha, beta=beta
    )
    expected = reference(
        student, teacher, labels, divergence=divergence, temperature=temperature, alpha=alpha, beta=beta
    )
    assert loss.dtype == torch.float64
    assert float(loss) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_forward_kl_includes_the_teacher_entropy_and_vanishes_at_the_optimum():
    _, teacher, labels = batch()
    assert float(token_kd_loss(teacher.clone(), teacher, labels, alpha=1.0)) == pytest.approx(0.0, abs=1e-12)
    for divergence in ("reverse_kl", "jsd"):
        assert float(
            token_kd_loss(teacher.clone(), teacher, labels, alpha=1.0, divergence=divergence)
        ) == pytest.approx(0.0, abs=1e-12)


def test_jsd_at_half_is_scipy_jensen_shannon_squared():
    student, teacher, labels = batch(1)
    loss = token_kd_loss(student, teacher, labels, divergence="jsd", beta=0.5, alpha=1.0)
    rows, cols = torch.nonzero(labels[:, 1:] != -100, as_tuple=True)
    p = torch.softmax(teacher[rows, cols], dim=1).numpy()
    q = torch.softmax(student[rows, cols], dim=1).numpy()
    assert float(loss) == pytest.approx(
        np.mean([jensenshannon(a, b) ** 2 for a, b in zip(p, q, strict=True)]), rel=1e-9
    )


def trl_generalized_jsd(student_logits, teacher_logits, labels, beta):
    """TRL GKD's formula (mixture in log space, F.kl_div, beta 0/1 special cases), on pre-shifted logits."""
    lq = F.log_softmax(student_logits, dim=-1)
    lp = F.log_softmax(teacher_logits, dim=-1)
    if beta == 0:
        jsd = F.kl_div(lq, lp, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(lp, lq, reduction="none", log_target=True)
    else:
        b = torch.tensor(beta, dtype=lq.dtype)
        lm = torch.logsumexp(torch.stack([lq + torch.log1p(-b), lp + torch.log(b)]), dim=0)
        jsd = beta * F.kl_div(lm, lp, reduction="none", log_target=True) + (1 - beta) * F.kl_div(
            lm, lq, reduction="none", log_target=True
        )
    mask = labels != -100
    return jsd[mask].sum() / mask.sum()


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_jsd_matches_trl_gkd_including_its_beta_0_and_1_cases(beta):
    student, teacher, labels = batch(2)
    ours = token_kd_loss(student, teacher, labels, divergence="jsd", beta=beta, alpha=1.0)
    trl = trl_generalized_jsd(student[:, :-1], teacher[:, :-1], labels[:, 1:], beta)
    assert float(ours) == pytest.approx(float(trl), rel=1e-10)
    named = {0.0: "forward_kl", 1.0: "reverse_kl"}.get(beta)
    if named is not None:
        assert float(ours) == pytest.approx(float(token_kd_loss(student, teacher, labels, divergence=named, alpha=1.0)))


@pytest.mark.parametrize(
    ("divergence", "beta"), [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.35), ("jsd", 0.0)]
)
def test_gradient_is_exact(divergence, beta):
    student, teacher, labels = batch(3, b=2, length=4, pad_s=2, pad_t=1)
    student.requires_grad_(True)

    def loss(s):
        return token_kd_loss(
            s,
            teacher,
            labels,
            divergence=divergence,
            beta=beta,
            temperature=1.7,
            alpha=0.6,
            vocab_size=V,
            chunk_tokens=2,
        )

    # the full Jacobian check: 2 x 4 x 13 inputs, two loss evaluations each
    assert torch.autograd.gradcheck(loss, (student,), eps=1e-6, atol=1e-8)
    loss(student).backward()
    assert torch.count_nonzero(student.grad[..., V:]) == 0  # padded columns are not in the vocabulary
    assert torch.count_nonzero(student.grad[:, -1]) == 0  # the last position scores nothing


def test_masking_ignores_unscored_positions_padded_columns_and_unattended_tokens():
    student, teacher, labels = batch(4, pad_s=3, pad_t=5)
    kwargs = {"divergence": "jsd", "alpha": 0.7, "vocab_size": V}
    base = float(token_kd_loss(student, teacher, labels, **kwargs))
    noisy_s, noisy_t = student.clone(), teacher.clone()
    noisy_s[..., V:] = 1e3  # padded head columns
    noisy_t[..., V:] = -1e3
    noisy_s[0, 2] = 50.0  # logits that would score the -100 at position 3
    noisy_t[1, 5:] = 7.0  # logits after the last label
    noisy_s[:, -1] = -9.0  # the last position never scores
    assert float(token_kd_loss(noisy_s, noisy_t, labels, **kwargs)) == pytest.approx(base, rel=1e-12)
    assert float(token_kd_loss(noisy_s, teacher, labels, **kwargs)) == pytest.approx(base, rel=1e-12)
    assert base == pytest.approx(reference(student, teacher, labels, divergence="jsd", temperature=1.0, alpha=0.7))
    mask = torch.ones_like(labels)
    mask[2, 6:] = 0
    masked = token_kd_loss(student, teacher, labels, attention_mask=mask, **kwargs)
    expected = reference(student, teacher, labels, divergence="jsd", temperature=1.0, alpha=0.7, mask=mask)
    assert float(masked) == pytest.approx(expected, rel=1e-10)
    assert count_valid_tokens(labels, mask) == count_valid_tokens(labels) - 2 == 3 * 7 - 1 - 3 - 2


def micro_batches():
    """Four micro-batches of unequal lengths and very unequal scored counts, and their padded union."""
    g = torch.Generator().manual_seed(5)
    parts = []
    for length, scored, sharpness in [(9, 8, 1.0), (4, 1, 6.0), (7, 3, 1.0), (6, 5, 0.5)]:
        s = torch.randn(2, length, V, generator=g, dtype=torch.float64)
        t = torch.randn(2, length, V, generator=g, dtype=torch.float64) * sharpness
        labels = torch.randint(0, V, (2, length), generator=g)
        labels[:, : length - scored] = -100  # a prompt of length - scored tokens
        parts.append((s, t, labels))
    width = max(p[0].shape[1] for p in parts)
    s_full = torch.randn(8, width, V, generator=g, dtype=torch.float64)  # junk in the padding
    t_full = torch.randn(8, width, V, generator=g, dtype=torch.float64)
    labels_full = torch.full((8, width), -100)
    mask_full = torch.zeros(8, width, dtype=torch.int64)
    for i, (s, t, labels) in enumerate(parts):
        rows, length = slice(2 * i, 2 * i + 2), s.shape[1]
        s_full[rows, :length], t_full[rows, :length], labels_full[rows, :length] = s, t, labels
        mask_full[rows, :length] = 1
    return parts, (s_full, t_full, labels_full, mask_full)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_micro_batches_normalised_by_the_global_count_add_up_to_the_full_batch(divergence):
    parts, (s_full, t_full, labels_full, mask_full) = micro_batches()
    counts = [count_valid_tokens(labels) for _, _, labels in parts]
    assert len(set(counts)) > 1 and sum(counts) == count_valid_tokens(labels_full, mask_full) == 2 * (8 + 1 + 3 + 5)
    kwargs = {"divergence": divergence, "alpha": 0.5, "temperature": 2.0}

    s_full.requires_grad_(True)
    loss_full = token_kd_loss(s_full, t_full, labels_full, attention_mask=mask_full, **kwargs)
    loss_full.backward()
    full = float(loss_full.detach())

    total = torch.zeros((), dtype=torch.float64)
    per_micro_mean = []
    for (s, t, labels), rows in zip(parts, range(0, 8, 2), strict=True):
        s = s.clone().requires_grad_(True)
        loss = token_kd_loss(s, t, labels, num_valid_tokens=torch.tensor(sum(counts)), **kwargs)
        loss.backward()  # as gradient accumulation does, micro-batch by micro-batch
        torch.testing.assert_close(s.grad, s_full.grad[rows : rows + 2, : s.shape[1]], rtol=1e-10, atol=1e-14)
        total += loss.detach()
        per_micro_mean.append(float(token_kd_loss(s.detach(), t, labels, **kwargs)))
    assert float(total) == pytest.approx(full, rel=1e-12)
    # trl #4719: averaging each micro-batch's own token mean weighs the tokens of the 2-token micro-batch
    # (its teacher the sharpest) 4x more than their share
    assert abs(np.mean(per_micro_mean) - full) > 0.05 * full


def test_chunk_size_changes_nothing_but_rounding():
    student, teacher, labels = batch(6, b=4, length=16, dtype=torch.float32)
    student.requires_grad_(True)
    results = []
    for chunk in (1, 3, 1000):
        student.grad = None
        loss = token_kd_loss(student, teacher, labels, divergence="jsd", chunk_tokens=chunk)
        loss.backward()
        results.append((float(loss.detach()), student.grad.clone()))
    for value, grad in results[1:]:
        assert value == pytest.approx(results[0][0], rel=1e-6)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-5, atol=1e-7)


def test_bfloat16_logits_are_reduced_in_float32_and_the_gradient_keeps_their_dtype():
    student, teacher, labels = batch(7, b=2, length=12)
    student, teacher = student.to(torch.bfloat16).requires_grad_(True), teacher.to(torch.bfloat16)
    loss = token_kd_loss(student, teacher, labels, alpha=0.9, temperature=2.0)
    loss.backward()
    assert loss.dtype == torch.float32 and student.grad.dtype == torch.bfloat16
    # the reference sees the same bf16 values, exactly upcast: only float32 rounding separates them
    expected = reference(student.float(), teacher.float(), labels, divergence="forward_kl", temperature=2.0, alpha=0.9)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_zero_probabilities_count_as_zero():
    student, teacher, labels = batch(8)
    teacher[..., 0] = -torch.inf  # a token the teacher rules out
    student.requires_grad_(True)
    for divergence in ("forward_kl", "jsd"):
        loss = token_kd_loss(student, teacher, labels, divergence=divergence, alpha=1.0, beta=0.4)
        assert torch.isfinite(loss)
        assert float(loss.detach()) == pytest.approx(
            reference(student, teacher, labels, divergence=divergence, temperature=1.0, alpha=1.0, beta=0.4), rel=1e-10
        )
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.isfinite(grad).all()


def test_a_batch_without_scored_tokens_gives_zero_and_a_zero_gradient():
    student, teacher, labels = batch(9)
    labels[:] = -100
    student.requires_grad_(True)
    loss = token_kd_loss(student, teacher, labels, num_valid_tokens=17)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.count_nonzero(student.grad) == 0


def test_no_gradient_is_kept_for_a_student_that_does_not_need_one():
    student, teacher, labels = batch(10)
    loss = token_kd_loss(student, teacher, labels)
    assert not loss.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"divergence": "forward-kl"},
            r"divergence must be 'forward_kl', 'jsd' or 'reverse_kl', got 'forward-kl' \(did you",
        ),
        ({"alpha": 1.5}, r"alpha must be a number in \[0, 1\], got 1.5"),
        ({"beta": -0.1}, r"beta must be a number in \[0, 1\], got -0.1"),
        ({"temperature": 0}, r"temperature must be a finite number > 0, got 0"),
        ({"num_valid_tokens": 3}, r"num_valid_tokens = 3 is less than the 17 scored tokens of this batch"),
        ({"vocab_size": V + 1}, r"vocab_size = 12 but the student outputs 11 logits per token and the teacher 11"),
        ({"chunk_tokens": 0}, r"chunk_tokens must be an integer >= 1, got 0"),
    ],
)
def test_bad_options_are_value_errors(kwargs, message):
    student, teacher, labels = batch()
    with pytest.raises(ValueError, match=message):
        token_kd_loss(student, teacher, labels, **kwargs)


def test_bad_shapes_and_labels_are_value_errors():
    student, teacher, labels = batch(pad_t=2)
    with pytest.raises(
        ValueError, match=r"the student outputs 11 logits per token and the teacher 13: pass vocab_size"
    ):
        token_kd_loss(student, teacher, labels)
    with pytest.raises(ValueError, match=r"labels must have shape \(3, 8\) to match the logits, got \(3, 7\)"):
        token_kd_loss(student, teacher, labels[:, :-1], vocab_size=V)
    labels[2, 4] = V
    with pytest.raises(ValueError, match=r"label 11 at \(sequence 2, position 4\) is outside the vocabulary of 11"):
        token_kd_loss(student, teacher, labels, vocab_size=V)


class LargestFloat32(torch.overrides.TorchFunctionMode):
    """Records the most elements of any float32 tensor a torch call returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, tuple) else (out,):
            if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
                self.largest = max(self.largest, value.numel())
        return out


def test_half_precision_logits_are_upcast_one_chunk_at_a_time():
    g = torch.Generator().manual_seed(11)
    student = torch.randn(4, 64, 50, generator=g).to(torch.bfloat16).requires_grad_(True)
    teacher = torch.randn(4, 64, 50, generator=g).to(torch.bfloat16)
    labels = torch.randint(0, 50, (4, 64), generator=g)
    with LargestFloat32() as spy:
        loss = token_kd_loss(student, teacher, labels, divergence="jsd", chunk_tokens=8)
        loss.backward()
    assert 0 < spy.largest <= 8 * 50 < student.numel()  # never the whole (batch, length, vocab) in float32
    assert student.grad.dtype == torch.bfloat16


def test_teacher_logits_from_inference_mode_train_a_student():
    g = torch.Generator().manual_seed(12)
    with torch.inference_mode():  # as a TokenModel teacher gives them, with a padded head
        teacher = torch.randn(2, 6, V + 5, generator=g)
    student = torch.randn(2, 6, V, generator=g).requires_grad_(True)
    labels = torch.randint(0, V, (2, 6), generator=g)
    loss = token_kd_loss(student, teacher, labels, vocab_size=V)
    loss.backward()
    assert torch.isfinite(student.grad).all() and torch.count_nonzero(student.grad) > 0
