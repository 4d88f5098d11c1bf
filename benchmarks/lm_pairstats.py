"""Memory and throughput of the exact paired token statistics against a bare two-model loop.

    python benchmarks/lm_pairstats.py                 # quick: 50k scored tokens x 32k vocab
    python benchmarks/lm_pairstats.py --full          # the issue's size: 1M scored tokens x 32k vocab
    python benchmarks/lm_pairstats.py --help

Two synthetic causal "language models" (an embedding into ``dim`` features, a tanh layer, and
a linear head to the 32k vocabulary; the teacher 1.5x the student's width) score random token
sequences. Each row runs in a fresh subprocess, after building the models and the dataset:

``bare loop``
    both models forward on the same batches under ``torch.inference_mode``, logits discarded:
    the least any evaluation must do;
``stream_pair_stats``
    :func:`distill_eval.lm.pairstats.stream_pair_stats`: the same forwards, then every pair
    statistic per scored token (label log-probs, argmaxes, entropies, KL, reverse KL, JS, TVD,
    top-5), keeping only those;
``stream_pair_and_model_stats``
    what a ``pytest --distill`` run computes: the pair statistics and, from the same log-probs,
    both models' reusable per-token summaries (top-32), in one pass;
``stream_model_stats``
    :func:`distill_eval.lm.modelstats.stream_model_stats` on the teacher alone (top-32): the
    reusable teacher cache.

Peak RSS "beyond the models" is the process's peak resident memory during the row (Linux
``VmHWM``, reset through ``/proc/self/clear_refs`` once the models and the dataset exist) minus
its resident memory at that moment. Target (issue 12): 1M scored tokens x 32k vocabulary within
2 GB beyond the models. A batch's logits alone are ``batch x seq_len x vocab x 4`` bytes per
model (8 x 512 x 32000 x 4 = 0.52 GB here), held by both the bare loop and the statistics.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _model(vocab: int, dim: int, seed: int):
    import torch

    torch.manual_seed(seed)

    class TinyLM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, dim)
            self.mix = torch.nn.Linear(dim, dim)
            self.head = torch.nn.Linear(dim, vocab)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.mix(self.embed(input_ids))))

    return TinyLM().eval()


def _child(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from distill_eval.lm.modelstats import stream_model_stats
    from distill_eval.lm.pairstats import stream_pair_and_model_stats, stream_pair_stats
    from distill_eval.lm.tokens import token_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = _model(args.vocab, args.teacher_dim, 0)
    student = _model(args.vocab, args.student_dim, 1)
    n_seq = -(-args.tokens // (args.seq_len - 1))
    rng = np.random.default_rng(0)
    data = token_dataset(rng.integers(0, args.vocab, size=(n_seq, args.seq_len)), vocab_size=args.vocab)
    param_bytes = sum(p.numel() * p.element_size() for m in (teacher, student) for p in m.parameters())

    start_rss = _rss_kib("VmRSS")
    exact_peak = _reset_peak()
    t0 = time.perf_counter()
    if args.child == "bare":
        with torch.inference_mode():
            for batch in data.batches(args.batch_size):
                ids, mask = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
                t_logits = teacher(ids, mask)
                s_logits = student(ids, mask)
                del t_logits, s_logits
        result_bytes = 0
    elif args.child == "pairs":
        stats = stream_pair_stats(data, teacher, student, batch_size=args.batch_size, top_k=5)
        assert stats.n == data.n_scored
        result_bytes = sum(c.nbytes for c in stats.columns().values())
    elif args.child == "run":
        stats, t_record, s_record = stream_pair_and_model_stats(
            data, teacher, student, batch_size=args.batch_size, top_k=5, model_top_k=32
        )
        assert stats.n == t_record.n == s_record.n == data.n_scored
        result_bytes = sum(c.nbytes for c in stats.columns().values()) + t_record.nbytes + s_record.nbytes
    else:
        record = stream_model_stats(data, teacher, batch_size=args.batch_size, top_k=32)
        assert record.n == data.n_scored
        result_bytes = record.nbytes
    seconds = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    if not exact_peak:  # ru_maxrss covers the whole process: an upper bound
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "row": args.child,
                "tokens": data.n_scored,
                "seconds": seconds,
                "start_rss_mb": start_rss / 1024,
                "peak_beyond_mb": (peak - start_rss) / 1024,
                "exact_peak": exact_peak,
                "param_mb": param_bytes / 2**20,
                "result_mb": result_bytes / 2**20,
                "threads": torch.get_num_threads(),
            }
        )
    )


ROWS = {
    "bare": "bare loop (2 forwards)",
    "pairs": "stream_pair_stats",
    "run": "pairs + both summaries (a run)",
    "cache": "stream_model_stats (teacher)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=50_000, help="scored tokens (default 50k: a quick run)")
    parser.add_argument("--full", action="store_true", help="1M scored tokens (the issue's target size)")
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--student-dim", type=int, default=64)
    parser.add_argument("--teacher-dim", type=int, default=96)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument(
        "--rows", default="bare,pairs,run,cache", help="which rows, comma-separated: bare,pairs,run,cache"
    )
    parser.add_argument("--child", choices=sorted(ROWS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.full:
        args.tokens = 1_000_000
    if args.child:
        _child(args)
        return

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    results = []
    for row in args.rows.split(","):
        argv = [sys.executable, __file__, "--child", row] + [a for a in sys.argv[1:] if a != "--full"]
        argv += ["--tokens", str(args.tokens)]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"row {row} failed:\n{out.stderr}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {ROWS[row]}: done in {results[-1]['seconds']:.1f} s", file=sys.stderr, flush=True)

    first = results[0]
    logits_mb = 2 * args.batch_size * args.seq_len * args.vocab * 4 / 2**20
    print(
        f"{datetime.date.today()}  {platform.machine()}  {os.cpu_count()} CPUs  torch threads {first['threads']}  "
        f"python {platform.python_version()}\n"
        f"{first['tokens']:,} scored tokens, vocab {args.vocab:,}, seq_len {args.seq_len}, batch {args.batch_size}; "
        f"models {first['param_mb']:.0f} MB of parameters; both models' logits of one batch {logits_mb:.0f} MB"
    )
    print(f"{'':34}{'seconds':>9}{'tokens/s':>11}{'x bare':>8}{'peak RSS beyond models (MB)':>30}{'kept (MB)':>11}")
    base = next((r["seconds"] for r in results if r["row"] == "bare"), None)
    for r in results:
        ratio = f"{r['seconds'] / base:8.2f}" if base else f"{'':8}"
        mark = "" if r["exact_peak"] else " (ru_maxrss)"
        print(
            f"{ROWS[r['row']]:34}{r['seconds']:9.1f}{r['tokens'] / r['seconds']:11,.0f}{ratio}"
            f"{r['peak_beyond_mb']:30,.0f}{r['result_mb']:11,.0f}{mark}"
        )


if __name__ == "__main__":
    main()
