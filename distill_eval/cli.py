"""The ``distill-eval`` command.

Subcommands:

- ``distill-eval train CONFIG.toml [--resume]`` — the reference distillation
  trainer (SPEC section 7; :mod:`distill_eval.train.trainer`);
- ``distill-eval report RESULTS.json [-o report.html]`` — re-render the HTML
  report (and, with ``--summary``, summary.md) from stored results.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distill_eval import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill-eval",
        description="Tell whether a distilled student may replace its teacher. "
        "The gate itself runs under pytest: `pytest --distill`.",
    )
    parser.add_argument("--version", action="version", version=f"distill-eval {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(sub)
    report = sub.add_parser(
        "report",
        help="re-render report.html from a results.json",
        description="Re-render report.html (and optionally summary.md) from a stored results.json.",
    )
    report.add_argument("results", type=Path, metavar="RESULTS.json", help="a results.json written by pytest --distill")
    report.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="where to write the HTML (default: report.html next to RESULTS.json)",
    )
    report.add_argument(
        "--summary",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the Markdown summary to PATH (default: not written)",
    )
    return parser


_TRAIN_EPILOG = """\
config (TOML; relative paths are resolved against the config file's folder):

  [data]
  train = { source = "sklearn:digits", split = "train" }   # any dataset spec, inline
  val = { source = "sklearn:digits", split = "test" }
  [teacher]
  path = "teacher.pt"                 # any model spec the plugin loads
  [student]
  factory = "mystudent:build"         # callable returning an nn.Module (cwd is importable)
  kwargs = {}
  [distill]
  epochs = 40                         # required; the rest have defaults
  temperature = 4.0                   # loss = (1 - alpha) CE + alpha T^2 KL(teacher || student)
  alpha = 0.9
  batch_size = 64
  lr = 0.001
  seed = 0
  control = false                     # also train the same student on labels alone
  offline = false                     # teacher logits computed once, through the output cache
  filter_teacher_errors = "none"      # "none" | "drop" | "relabel"
  schedule = "constant"               # or "cosine"
  patience = 0                        # early stopping on val_agreement (0: off)
  device = "auto"
  precision = "fp32"                  # "bf16": autocast on CUDA; "auto": bf16 on CUDA if supported
  [augment]
  noise_std = 0.0                     # gaussian input noise (not with offline = true)
  [output]
  dir = "runs/digits"
  format = "export"                   # student.pt2 (torch.export); "torchscript": student.pt

writes into the output folder: student.pt2 (and control.pt2), manifest.json (config,
teacher sha256, data hashes, seed, environment, one record per epoch) and checkpoint.pt.
An example: distill_eval/train/examples/digits.toml.
"""


def _add_train(sub: Any) -> None:
    train = sub.add_parser(
        "train",
        help="distil a student from a teacher (the reference trainer)",
        description="Distil a student from a teacher as CONFIG.toml says (SPEC section 7), optionally with\n"
        "a label-only control student; one line per epoch. Exit status: 0 done (or stopped by\n"
        "--max-epochs-this-run), 2 a mistake in the config, data or models, 130 interrupted\n"
        "(continue with --resume).",
        epilog=_TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", type=Path, metavar="CONFIG.toml", help="the training config")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run whose checkpoint.pt is in the output folder, exactly where it stopped "
        "(starts afresh when there is none)",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh even if the output folder holds a run (default: refuse, to never clobber one)",
    )
    train.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="write here instead of [output] dir (relative to the current folder)",
    )
    train.add_argument("--device", default=None, help="override [distill] device: cpu, cuda, cuda:N, auto")
    train.add_argument(
        "--no-cache", action="store_true", help="compute the teacher's logits afresh (default: use the output cache)"
    )
    train.add_argument(
        "--max-epochs-this-run",
        type=int,
        default=None,
        metavar="N",
        help="train at most N epochs, checkpoint and stop; continue later with --resume (default: no limit)",
    )
    train.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from distill_eval.errors import ConfigError, DistillError
    from distill_eval.train import load_train_config, train

    try:
        config = load_train_config(args.config)
        if args.output_dir is not None:
            config = config.with_output_dir(args.output_dir.resolve())
        if args.device is not None:
            kind, _, index = args.device.partition(":")
            if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
                raise ConfigError(f"--device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {args.device!r}")
            config = replace(config, distill=replace(config.distill, device=args.device))
        if args.max_epochs_this_run is not None and args.max_epochs_this_run < 0:
            raise ConfigError(f"--max-epochs-this-run must be >= 0, got {args.max_epochs_this_run}")
        result = train(
            config,
            resume=args.resume,
            overwrite=args.overwrite,
            use_cache=not args.no_cache,
            max_epochs_this_run=args.max_epochs_this_run,
            log=None if args.quiet else _print_flush,
        )
    except DistillError as e:
        print(f"distill-eval train: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"distill-eval train: interrupted; continue with: {_resume_command(args)}", file=sys.stderr)
        return 130
    if not result.finished and not args.quiet:
        print(f"unfinished; continue with: {_resume_command(args)}")
    return 0


def _resume_command(args: argparse.Namespace) -> str:
    output = f" --output-dir {args.output_dir}" if args.output_dir is not None else ""
    return f"distill-eval train {args.config}{output} --resume"


def _print_flush(message: str) -> None:
    print(message, flush=True)


def _report(args: argparse.Namespace) -> int:
    from distill_eval._io import atomic_write
    from distill_eval.report import render_html, render_summary

    try:
        doc = json.loads(args.results.read_text())
    except FileNotFoundError:
        print(f"distill-eval report: {args.results}: file not found", file=sys.stderr)
        return 2
    except json.JSONDecodeError as e:
        print(f"distill-eval report: {args.results}: not valid JSON: {e}", file=sys.stderr)
        return 2
    if not isinstance(doc, dict) or doc.get("schema") != 1:
        print(f"distill-eval report: {args.results}: not a distill_eval results.json (schema 1)", file=sys.stderr)
        return 2
    output = args.output or args.results.with_name("report.html")
    atomic_write(output, render_html(doc).encode())
    print(f"wrote {output}")
    if args.summary:
        atomic_write(args.summary, render_summary(doc).encode())
        print(f"wrote {args.summary}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "report":
        return _report(args)
    if args.command == "train":
        return _train(args)
    raise AssertionError(args.command)  # argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
