"""Pure numpy metrics for comparing a student with its teacher.

Plain functions in the scikit-learn style: data arguments first, options
keyword-only, arrays in, Python floats out (``*_per_example`` functions return
one value per example, for bootstrap intervals). Inputs are validated and a
malformed array raises :class:`ValueError` saying what was found. A metric whose
denominator is empty returns ``nan`` rather than raising.

Modules: :mod:`~distill_eval.metrics.probabilities` (softmax and validators),
:mod:`~distill_eval.metrics.calibration`, :mod:`~distill_eval.metrics.agreement`
and :mod:`~distill_eval.metrics.copying` (copied teacher errors).
"""

from distill_eval.metrics.agreement import (
    cohen_kappa,
    divergences_per_example,
    js_divergence,
    js_per_example,
    kl_divergence,
    kl_per_example,
    top1_agreement,
    topk_agreement,
    total_variation,
    tvd_per_example,
)
from distill_eval.metrics.calibration import (
    ReliabilityBins,
    bin_index,
    brier_per_example,
    brier_score,
    calibration_bins,
    classwise_ece,
    consistency_resampling,
    expected_calibration_error,
    fit_temperature,
    maximum_calibration_error,
    negative_log_likelihood,
    nll_per_example,
    reliability_bins,
)
from distill_eval.metrics.copying import (
    chance_copy_rate,
    copied_share,
    copy_lift,
    copy_p_value,
    copy_rate,
    error_consistency,
    known_copied,
    teacher_errors,
)
from distill_eval.metrics.leakage import Duplicates, default_near_distance, exact_matches, find_duplicates
from distill_eval.metrics.probabilities import (
    check_labels,
    check_logits,
    check_probs,
    entropy,
    log_softmax,
    softmax,
    top2_margin,
)
from distill_eval.metrics.stats import BootstrapInterval, Statistic, bootstrap_intervals, weighted_sum

__all__ = [
    "BootstrapInterval",
    "Duplicates",
    "ReliabilityBins",
    "Statistic",
    "bin_index",
    "bootstrap_intervals",
    "brier_per_example",
    "brier_score",
    "calibration_bins",
    "chance_copy_rate",
    "check_labels",
    "check_logits",
    "check_probs",
    "classwise_ece",
    "cohen_kappa",
    "consistency_resampling",
    "copied_share",
    "copy_lift",
    "copy_p_value",
    "copy_rate",
    "default_near_distance",
    "divergences_per_example",
    "entropy",
    "error_consistency",
    "exact_matches",
    "expected_calibration_error",
    "find_duplicates",
    "fit_temperature",
    "js_divergence",
    "js_per_example",
    "kl_divergence",
    "kl_per_example",
    "known_copied",
    "log_softmax",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "nll_per_example",
    "reliability_bins",
    "softmax",
    "teacher_errors",
    "top1_agreement",
    "top2_margin",
    "topk_agreement",
    "total_variation",
    "tvd_per_example",
    "weighted_sum",
]
