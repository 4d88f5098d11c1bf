"""Kind ``generation``: left to write on its own, does the student say what the teacher would?

Token data only. For each of at most ``max_prompts`` sequences, teacher and student greedily
continue the same prompt for ``max_new_tokens`` tokens (each with its key-value cache when it
has one); each continuation is cut just after its first end-of-sequence token. The cut
continuations are compared, and the teacher scores both (teacher-forced NLL). Every metric is
computed per prompt and averaged over prompts; every interval resamples prompts (one unit per
prompt, the sequence bootstrap of :mod:`distill_eval.lm.cluster`). The continuations are kept
in the run's cache (kind ``generation``). See :mod:`distill_eval.lm.generation`.

Parameters (suite keys)
-----------------------
prompt_tokens : int >= 1, default 32
    For data without prompts: the prompt is a sequence's first ``prompt_tokens`` tokens.
    Data with prompts (a prompt/completion ``.jsonl``) uses each sequence's unscored prefix,
    and setting it there is an error.
max_new_tokens : int >= 1, default 32
max_prompts : int >= 1, default 200
    Evenly spaced over the usable sequences, the first included (no random draw).
batch_size : int >= 1, default 32
    Prompts decoded together.
eos : int >= 0 or false
    The end-of-sequence id; default the dataset's (the byte corpus's ``EOS_ID``, a tokenizer's
    ``eos_token_id``), none when it has none; ``false``: never cut.
threads : int >= 1, optional
    ``torch.set_num_threads`` while generating (restored afterwards); default torch's. Decoding
    calls a model once per token on a small batch, so on a busy CPU a thread count above the
    free cores mostly waits on itself: ``threads = 1`` suits a shared 2-core machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from distill_eval._tables import TableReader, describe
from distill_eval.checks.base import CheckContext, CheckKind, Measurement
from distill_eval.checks.tokens import TokenIntervals
from distill_eval.errors import CheckError
from distill_eval.latency import torch_threads
from distill_eval.lm.generation import (
    Generations,
    Prompts,
    cut_at_eos,
    first_divergence,
    has_prompts,
    rouge_l_scores,
    select_prompts,
)

#: what kind ``generation`` computes (token data only), in report order
GENERATION_METRICS = (
    "exact_match",
    "first_divergence",
    "first_divergence_fraction",
    "rouge_l",
    "teacher_nll",
    "teacher_nll_self",
    "teacher_nll_gap",
    "student_rouge_l_ref",
    "teacher_rouge_l_ref",
)

#: the prompt length for data without prompts, when ``prompt_tokens`` is not given
DEFAULT_PROMPT_TOKENS = 32
#: how many prompts (earliest divergence first) the results show
MAX_EXAMPLES = 5
#: the most prompt tokens an example shows (its last ones)
_EXAMPLE_PROMPT_TOKENS = 64

_PROPORTION = (0.0, 1.0)
_NONNEGATIVE = (0.0, np.inf)


def read_params(r: TableReader, suite_dir: Path) -> Mapping[str, Any]:
    eos = r.raw("eos", None)
    if eos is not None and eos is not False and (isinstance(eos, bool) or not isinstance(eos, int) or eos < 0):
        raise r.error(f"'eos' must be a token id (an integer >= 0) or false (never cut), got {describe(eos)}")
    return {
        "prompt_tokens": r.integer("prompt_tokens", None, minimum=1),
        "max_new_tokens": r.integer("max_new_tokens", 32, minimum=1),
        "max_prompts": r.integer("max_prompts", 200, minimum=1),
        "batch_size": r.integer("batch_size", 32, minimum=1),
        "eos": eos,
        "threads": r.integer("threads", None, minimum=1),
    }


def _eos(ctx: CheckContext, params: Mapping[str, Any]) -> int | None:
    data = ctx.token_dataset
    eos = params["eos"]
    if eos is False:
        return None
    if eos is None:
        return data.eos_id
    if data.vocab_size is not None and eos >= data.vocab_size:
        raise CheckError(
            f"check '{ctx.check.id}': 'eos' = {eos} is outside the vocabulary of dataset '{data.name}' "
            f"({data.vocab_size} tokens); expected a token id below {data.vocab_size}, or false"
        )
    return int(eos)


def _prompts(ctx: CheckContext, params: Mapping[str, Any]) -> Prompts:
    data = ctx.token_dataset
    given = params["prompt_tokens"]
    from_labels = has_prompts(data)
    if from_labels and given is not None:
        raise CheckError(
            f"check '{ctx.check.id}': dataset '{data.name}' has prompts (each sequence's unscored prefix: labels "
            "-100 before its first scored token), so 'prompt_tokens' does not apply; remove it"
        )
    length = None if from_labels else given or DEFAULT_PROMPT_TOKENS
    probe = select_prompts(data, prompt_tokens=length, max_prompts=params["max_prompts"])
    if probe.n == 0:
        how = (
            "its unscored prefix (the prompt)"
            if probe.from_labels
            else f"'prompt_tokens' = {given or DEFAULT_PROMPT_TOKENS} tokens of prompt"
        )
        raise CheckError(
            f"check '{ctx.check.id}': no sequence of dataset '{data.name}' is long enough for a prompt: each of its "
            f"{data.n_sequences} sequences needs {how} and at least one token after it"
            + ("" if probe.from_labels else "; lower 'prompt_tokens'")
        )
    return probe


def _text(data: Any, ids: np.ndarray) -> str | None:
    if data.decode is None:
        return None
    try:
        return str(data.decode(np.asarray(ids)))
    except Exception:  # noqa: BLE001 — a tokenizer that cannot decode: the ids are shown instead
        return None


def _examples(ctx: CheckContext, prompts: Prompts, gen: Generations, divergence: np.ndarray) -> list[dict[str, Any]]:
    """The prompts where the student leaves the teacher earliest (ties: dataset order), ids and text."""
    data = ctx.token_dataset
    out = []
    for i in np.argsort(divergence, kind="stable")[:MAX_EXAMPLES]:
        prompt = prompts.tokens[i][-_EXAMPLE_PROMPT_TOKENS:]
        parts = {"prompt": prompt, "teacher": gen.cut("teacher", i), "student": gen.cut("student", i)}
        row: dict[str, Any] = {
            "id": str(data.ids[prompts.rows[i]]),
            "first_divergence": int(divergence[i]),
            "prompt_truncated": len(prompts.tokens[i]) > len(prompt),
        }
        for name, ids in parts.items():
            row[f"{name}_ids"] = [int(t) for t in ids]
            text = _text(data, ids)
            if text is not None:
                row[name] = text
        out.append(row)
    return out


def compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    if not ctx.is_tokens:
        raise CheckError(
            f"check '{ctx.check.id}': kind generation continues token sequences, but dataset '{ctx.check.dataset}' "
            "holds classification examples; expected a token dataset (an .npz/.pt file with input_ids, a .jsonl "
            'text file, or source = "builtin:bytes")'
        )
    eos = _eos(ctx, params)
    prompts = _prompts(ctx, params)
    max_new = params["max_new_tokens"]
    with torch_threads(params["threads"]) as threads:  # only the decoding: a cache hit runs no model
        gen = ctx.generations(prompts, max_new_tokens=max_new, eos=eos, batch_size=params["batch_size"])
    n = prompts.n
    teacher = [gen.cut("teacher", i) for i in range(n)]
    student = [gen.cut("student", i) for i in range(n)]
    refs = [cut_at_eos(r[:max_new], eos) for r in prompts.references]  # the sequence's own next tokens

    divergence = np.array([first_divergence(t, s) for t, s in zip(teacher, student, strict=True)], dtype=np.float64)
    longer = np.maximum(gen.teacher_length, gen.student_length).astype(np.float64)
    exact = np.array([np.array_equal(t, s) for t, s in zip(teacher, student, strict=True)], dtype=np.float64)
    rouge = rouge_l_scores(student, teacher)
    s_ref, t_ref = rouge_l_scores(student, refs), rouge_l_scores(teacher, refs)

    iv = TokenIntervals(ctx, np.arange(n))
    sums = iv.sums
    iv.add("exact_match", sums.token_mean(exact), support=_PROPORTION)
    iv.add("first_divergence", sums.token_mean(divergence), support=(0.0, float(max_new)))
    iv.add("first_divergence_fraction", sums.token_mean(divergence / longer), support=_PROPORTION)
    iv.add("rouge_l", sums.token_mean(rouge), support=_PROPORTION)
    nll = iv.add("teacher_nll", sums.token_mean(gen.teacher_nll), support=_NONNEGATIVE)
    nll_self = iv.add("teacher_nll_self", sums.token_mean(gen.teacher_nll_self), support=_NONNEGATIVE)
    iv.add("teacher_nll_gap", lambda s: nll(s) - nll_self(s))  # paired: the same resampled prompts
    iv.add("student_rouge_l_ref", sums.token_mean(s_ref), support=_PROPORTION)
    iv.add("teacher_rouge_l_ref", sums.token_mean(t_ref), support=_PROPORTION)
    metrics = iv.measure()

    extras: dict[str, Any] = {
        "prompts": n,
        "skipped": prompts.skipped,
        "usable": prompts.usable,
        "prompt_source": "unscored prefix" if prompts.from_labels else "first tokens",
        "prompt_tokens": None if prompts.from_labels else params["prompt_tokens"] or DEFAULT_PROMPT_TOKENS,
        "max_new_tokens": max_new,
        "eos": eos,
        "generated_tokens": {"teacher": int(gen.teacher_length.sum()), "student": int(gen.student_length.sum())},
        "kv_cache": dict(gen.kv_cache),
        "threads": threads,
        "examples": _examples(ctx, prompts, gen, divergence),
    }
    return Measurement(metrics, extras=extras, n=n)


KIND = CheckKind(
    name="generation",
    metrics=(),
    read_params=read_params,
    compute=compute,
    token_metrics=GENERATION_METRICS,
)
