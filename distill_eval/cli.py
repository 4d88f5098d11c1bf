"""The ``distill-eval`` command.

Subcommands:

- ``distill-eval train CONFIG.toml [--resume]`` — the reference distillation
  trainer (SPEC section 7; :mod:`distill_eval.train.trainer`);
- ``distill-eval report RESULTS.json [-o report.html]`` — re-render the HTML
  report (and, with ``--summary``, summary.md) from stored results;
- ``distill-eval predict --model NAME --dataset NAME`` — compute a model's
  outputs into the plugin's output cache (:mod:`distill_eval.predict`).

``train`` and ``predict`` also run under ``torchrun --nproc_per_node=K -m
distill_eval ...``; rank 0 alone prints progress, and an error every rank
shares is printed once.
"""

from __future__ import annotations

import argparse
import json
import os
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
    _add_predict(sub)
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

distributed: torchrun --nproc_per_node=K -m distill_eval train CONFIG.toml (gloo on CPU,
nccl on CUDA). batch_size is the global batch: each process takes a strided share of
every batch, so K processes take the same steps as one; rank 0 alone writes.
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
            _check_device_option(args.device)
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
        _print_error("train", e)
        return 2
    except KeyboardInterrupt:
        if _rank() == 0:
            print(f"distill-eval train: interrupted; continue with: {_resume_command(args)}", file=sys.stderr)
        return 130
    if not result.finished and not args.quiet and _rank() == 0:
        print(f"unfinished; continue with: {_resume_command(args)}")
    return 0


def _check_device_option(device: str) -> None:
    from distill_eval.errors import ConfigError

    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"--device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")


def _rank() -> int:
    """This process's rank under torchrun (0 outside it)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _print_error(command: str, error: BaseException) -> None:
    """Print an error once per run under torchrun.

    Rank 0 alone prints a copy of an error every rank raised (:func:`origin_rank`) and a
    ConfigError (the same command line and files give every rank the same mistake); any
    other error is printed by the rank that raised it, with its rank.
    """
    from distill_eval.errors import ConfigError
    from distill_eval.train.distributed import origin_rank

    rank, origin = _rank(), origin_rank(error)
    if rank != 0 and (origin is not None or isinstance(error, ConfigError)):
        return  # rank 0 prints it
    raised_by = rank if origin is None else origin
    prefix = f"[rank {raised_by}] " if raised_by else ""
    print(f"distill-eval {command}: {prefix}{error}", file=sys.stderr)


def _resume_command(args: argparse.Namespace) -> str:
    output = f" --output-dir {args.output_dir}" if args.output_dir is not None else ""
    return f"distill-eval train {args.config}{output} --resume"


def _print_flush(message: str) -> None:
    print(message, flush=True)


def _add_predict(sub: Any) -> None:
    predict = sub.add_parser(
        "predict",
        help="compute a model's outputs on a dataset into the output cache (also under torchrun, sharded)",
        description="Compute a model's logits on a dataset of the project config and store them in the\n"
        "plugin's output cache, under the key pytest --distill computes: a later run on the same\n"
        "files and settings reads them without loading the model. Under\n"
        "`torchrun --nproc_per_node=K -m distill_eval predict ...` every process computes its share\n"
        "of the batches and rank 0 stores the whole entry. Exit status: 0 done, 2 a mistake in\n"
        "the config, data or model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("--model", required=True, metavar="NAME", help="a model of [tool.distill_eval.models]")
    predict.add_argument("--dataset", required=True, metavar="NAME", help="a dataset of [tool.distill_eval.datasets]")
    predict.add_argument(
        "--config",
        type=Path,
        default=Path("pyproject.toml"),
        metavar="PYPROJECT",
        help="the project config; relative paths in it are resolved against its folder (default: pyproject.toml)",
    )
    predict.add_argument(
        "--device", default=None, help="override the project's device: cpu, cuda, cuda:N, auto (default: the config's)"
    )
    predict.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="override the project's batch_size; part of the cache key (default: the config's, 256 if unset)",
    )
    predict.add_argument("--recompute", action="store_true", help="compute and store even if the cache holds the entry")
    predict.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def _predict(args: argparse.Namespace) -> int:
    from distill_eval.config import load_project_config
    from distill_eval.errors import ConfigError, DistillError
    from distill_eval.predict import predict

    try:
        if not args.config.is_file():
            raise ConfigError(
                "file not found; run in the project's folder or pass its pyproject.toml with --config",
                file=str(args.config),
            )
        if args.device is not None:
            _check_device_option(args.device)
        if args.batch_size is not None and args.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
        config = args.config.resolve()
        project = load_project_config(config.parent, config)
        predict(
            project,
            args.model,
            args.dataset,
            device=args.device,
            batch_size=args.batch_size,
            recompute=args.recompute,
            log=None if args.quiet else _print_flush,
        )
    except DistillError as e:
        _print_error("predict", e)
        return 2
    except KeyboardInterrupt:
        if _rank() == 0:
            print("distill-eval predict: interrupted", file=sys.stderr)
        return 130
    return 0


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
    if args.command == "predict":
        return _predict(args)
    raise AssertionError(args.command)  # argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
