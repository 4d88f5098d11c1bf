"""kd_loss against a hand computation, its reductions, limits, gradients and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill_eval.train import kd_loss

N, K = 16, 10


def _batch(seed: int = 0, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(N, K, generator=gen) * scale
    teacher = torch.randn(N, K, generator=gen) * scale
    labels = torch.randint(0, K, (N,), generator=gen)
    return student, teacher, labels


def _hand_kd(s: np.ndarray, t: np.ndarray, y: np.ndarray, temperature: float, alpha: float) -> float:
    """The documented loss formula (distill-eval docs trainer) written out in float64 numpy."""

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    s, t = s.astype(np.float64), t.astype(np.float64)
    ce = -np.mean(np.log(softmax(s)[np.arange(len(y)), y]))
    p, q = softmax(t / temperature), softmax(s / temperature)
    kl = np.sum(p * (np.log(p) - np.log(q))) / len(y)  # summed over classes, averaged over the batch
    return (1 - alpha) * ce + alpha * temperature**2 * kl


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_matches_hand_computation(temperature: float, alpha: float) -> None:
    student, teacher, labels = _batch()
    expected = _hand_kd(student.numpy(), teacher.numpy(), labels.numpy(), temperature, alpha)
    got = kd_loss(student, teacher, labels, temperature=temperature, alpha=alpha)
    assert got.shape == ()
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_kl_is_batchmean_not_mean() -> None:
    # reduction="mean" divides by n * K instead of n: a K-fold smaller loss, a classic KD bug.
    student, teacher, labels = _batch()
    temperature = 4.0
    # What reduction="mean" computes (it warns, and may become batchmean in a later torch release).
    mean_kl = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
        reduction="none",
        log_target=True,
    ).mean()
    got = kd_loss(student, teacher, labels, temperature=temperature, alpha=1.0)
    assert float(got) == pytest.approx(float(mean_kl) * K * temperature**2, rel=1e-5)
    assert float(got) > 5 * float(mean_kl) * temperature**2


def test_alpha_zero_is_cross_entropy_exactly() -> None:
    student, teacher, labels = _batch()
    got = kd_loss(student, teacher, labels, temperature=4.0, alpha=0.0)
    assert torch.equal(got, F.cross_entropy(student, labels))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_alpha_one_is_scaled_kl_exactly(temperature: float) -> None:
    student, teacher, labels = _batch()
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    got = kd_loss(student, teacher, labels, temperature=temperature, alpha=1.0)
    assert torch.equal(got, temperature**2 * kl)


def test_identical_logits_give_zero_distillation_loss() -> None:
    student, _, labels = _batch()
    assert float(kd_loss(student, student.clone(), labels, temperature=4.0, alpha=1.0)) == 0.0


def test_gradient_scale_is_stable_across_temperatures() -> None:
    # d(KL)/ds shrinks like 1/T**2 as the soft targets flatten; the T**2 factor undoes that, so
    # changing T does not silently rescale the learning rate of the distillation term.
    student, teacher, labels = _batch()
    scaled, unscaled = [], []
    for temperature in [1.0, 2.0, 4.0, 8.0]:
        s = student.clone().requires_grad_()
        loss = kd_loss(s, teacher, labels, temperature=temperature, alpha=1.0)
        (grad,) = torch.autograd.grad(loss, s)
        scaled.append(float(grad.norm()))
        unscaled.append(float(grad.norm()) / temperature**2)
    assert max(scaled) / min(scaled) < 3
    assert max(unscaled) / min(unscaled) > 30  # the check above would catch a missing T**2


def test_teacher_gets_no_gradient() -> None:
    student, teacher, labels = _batch()
    student.requires_grad_()
    teacher.requires_grad_()
    kd_loss(student, teacher, labels, temperature=4.0, alpha=0.9).backward()
    assert student.grad is not None
    assert teacher.grad is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_computed_in_float32(dtype: torch.dtype) -> None:
    student, teacher, labels = _batch()
    got = kd_loss(student.to(dtype), teacher.to(dtype), labels, temperature=4.0, alpha=0.9)
    assert got.dtype == torch.float32
    expected = kd_loss(student.to(dtype).float(), teacher.to(dtype).float(), labels, temperature=4.0, alpha=0.9)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, math.inf])
def test_invalid_temperature_raises(temperature: float) -> None:
    student, teacher, labels = _batch()
    with pytest.raises(ValueError, match=rf"temperature .*got {temperature!r}"):
        kd_loss(student, teacher, labels, temperature=temperature, alpha=0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan])
def test_invalid_alpha_raises(alpha: float) -> None:
    student, teacher, labels = _batch()
    with pytest.raises(ValueError, match=rf"alpha .*got {alpha!r}"):
        kd_loss(student, teacher, labels, temperature=4.0, alpha=alpha)


def test_mismatched_shapes_raise() -> None:
    student, teacher, labels = _batch()
    with pytest.raises(ValueError, match="teacher_logits has shape"):
        kd_loss(student, teacher[:, :-1], labels, temperature=4.0, alpha=0.5)
    with pytest.raises(ValueError, match="labels must have shape"):
        kd_loss(student, teacher, labels[:-1], temperature=4.0, alpha=0.5)
    with pytest.raises(ValueError, match="2-D"):
        kd_loss(student[0], teacher[0], labels[:1], temperature=4.0, alpha=0.5)
