"""Distributed training: shards and exact gathering, the process group, and `train` under torchrun (2 CPU ranks)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import digits
import numpy as np
import pytest
import torch
from launch import TORCHRUN_VARIABLES, torchrun

from distill_eval.config import ModelSpec
from distill_eval.data import load_builtin
from distill_eval.errors import ConfigError
from distill_eval.models import load_model
from distill_eval.train import load_train_config, train
from distill_eval.train.distributed import SINGLE, assemble_rows, launch_environment, process_group, shard_rows

WEIGHTS = digits.WEIGHTS


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs torch on one thread."""


# -- shards and gathering ---------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 540])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("block", [1, 3, 64])
def test_shards_cover_every_row_exactly_once(n: int, world_size: int, block: int) -> None:
    shards = [shard_rows(n, rank, world_size, block=block) for rank in range(world_size)]
    every = np.concatenate(shards)
    assert np.array_equal(np.sort(every), np.arange(n))  # no row lost, none twice, no padding
    for rank, rows in enumerate(shards):
        assert np.all(np.diff(rows) > 0)
        assert all((row // block) % world_size == rank for row in rows)  # whole blocks, dealt in turn
    sizes = [len(rows) for rows in shards]
    assert max(sizes) - min(sizes) <= block


def test_uneven_shards_of_seven_rows_on_two_ranks_reassemble_in_row_order() -> None:
    values = torch.arange(7) * 10
    shards = [values[torch.from_numpy(shard_rows(7, rank, 2))] for rank in range(2)]
    assert [s.tolist() for s in shards] == [[0, 20, 40, 60], [10, 30, 50]]
    assert torch.equal(assemble_rows(shards, 7), values)
    blocks = [values[torch.from_numpy(shard_rows(7, rank, 2, block=3))] for rank in range(2)]
    assert [b.tolist() for b in blocks] == [[0, 10, 20, 60], [30, 40, 50]]
    assert torch.equal(assemble_rows(blocks, 7, block=3), values)
    with pytest.raises(ValueError, match=r"rank 1 holds 4 rows, but its share of 7 rows .* is 3"):
        assemble_rows([shards[0], shards[0]], 7)


GATHER_SCRIPT = """
import json, os, sys, torch
from distill_eval.errors import ConfigError, ModelError
from distill_eval.train.distributed import origin_rank, process_group

def native_threads():
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None

threads_before = native_threads()
with process_group("cpu") as dist:
    # A DDP step, as the trainer takes: DDP must not keep the group (and its gloo threads) alive.
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2))
    ddp(torch.ones(4, 3)).sum().backward()
    del ddp
    out = {"rank": dist.rank, "world_size": dist.world_size, "backend": dist.backend}
    for n, block in ((7, 1), (7, 3), (1, 1), (1, 4)):  # uneven shards; with n = 1 rank 1 has no rows
        rows = torch.from_numpy(dist.shard(n, block=block))
        local = torch.stack([rows * 10, rows * 10 + 1], dim=1).float() if len(rows) else torch.empty(0)
        everywhere = dist.gather_rows(local, n, block=block)
        on_main = dist.gather_rows(local, n, block=block, dst=0)
        out[f"{n}/{block}"] = [everywhere.tolist(), None if on_main is None else on_main.tolist()]
    out["loss"] = float(dist.all_reduce_sum(torch.tensor(float(dist.rank + 1), dtype=torch.float64)))
    try:
        dist.run_on_main(lambda: (_ for _ in ()).throw(ConfigError("bad key", file="cfg.toml")))
    except ConfigError as e:
        out["main_error"] = [str(e), origin_rank(e)]
    def fail_on_one():
        if dist.rank == 1:
            raise ModelError("rank 1 cannot")
        return "fine"
    try:
        dist.everywhere(fail_on_one)
    except ModelError as e:
        out["everywhere_error"] = [str(e), origin_rank(e)]
    out["first"] = dist.main_first(lambda: dist.rank)
out["threads"] = [threads_before, native_threads()]
with open(sys.argv[1] + f".{out['rank']}.json", "w") as f:
    json.dump(out, f)
"""


def test_gather_is_exact_with_uneven_shards_on_two_processes(tmp_path: Path) -> None:
    (tmp_path / "gather.py").write_text(GATHER_SCRIPT)
    done = torchrun(tmp_path, "gather.py", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{rank}.json").read_text()) for rank in range(2)]
    for rank, out in enumerate(ranks):
        assert (out["rank"], out["world_size"], out["backend"]) == (rank, 2, "gloo")
        for n, block in ((7, 1), (7, 3), (1, 1), (1, 4)):
            everywhere, on_main = out[f"{n}/{block}"]
            assert everywhere == [[10.0 * i, 10.0 * i + 1] for i in range(n)]  # row order, each row once
            assert on_main == (everywhere if rank == 0 else None)
        assert out["loss"] == 3.0
        # An error is raised on every rank: the original where it happened, a marked copy elsewhere.
        assert out["main_error"] == ["cfg.toml: bad key", None if rank == 0 else 0]
        assert out["everywhere_error"] == ["rank 1 cannot", None if rank == 1 else 1]
        assert out["first"] == rank
        # The group is gone when the block ends: no gloo worker left to race Python's shutdown
        # (such a worker freeing a collective's tensors at exit aborted the process).
        before, after = out["threads"]
        assert after == before, f"rank {rank}: {after - before} native threads outlived the process group"


def test_launch_environment_and_a_single_process() -> None:
    assert launch_environment({}) is None
    assert launch_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    with pytest.raises(ConfigError, match=r"torchrun's environment is inconsistent \(RANK=2, WORLD_SIZE=2"):
        launch_environment({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert SINGLE.shard(5).tolist() == [0, 1, 2, 3, 4]
    local = torch.arange(5)
    assert SINGLE.gather_rows(local, 5) is local and SINGLE.run_on_main(lambda: 3) == 3


def test_outside_torchrun_or_with_one_process_no_group_is_started(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with process_group("cpu") as dist:
        assert dist == SINGLE and not torch.distributed.is_initialized()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with process_group("cpu") as dist:
        assert not dist.enabled and dist.device == "cpu" and not torch.distributed.is_initialized()


# -- train under torchrun -------------------------------------------------------------------

CONFIG = digits.train_config(
    """
[distill]
epochs = 2
batch_size = 157          # 1257 rows: 8 global batches of 79 + 78 rows, then a last row: rank 1 gets none
teacher_batch_size = 64   # 540 validation rows: 9 blocks, 284 + 256 rows on two ranks
lr = 0.01
device = "cpu"
cache_dir = "cache"

[augment]
noise_std = 0.05          # drawn per global batch: both ranks see the inputs one process sees

[output]
dir = "run"
"""
)


@pytest.mark.slow
def test_train_under_torchrun_with_two_processes_and_a_resume(tmp_path: Path) -> None:
    (tmp_path / "cfg.toml").write_text(CONFIG)
    first = torchrun(tmp_path, "-m", "distill_eval", "train", "cfg.toml", "--max-epochs-this-run", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("student epoch 1/2") == 1 and first.stdout.count("unfinished") == 1  # rank 0 logs
    second = torchrun(tmp_path, "-m", "distill_eval", "train", "cfg.toml", "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("resuming") == 1 and "student epoch 1/2" not in second.stdout
    assert second.stdout.count("student epoch 2/2") == 1 and second.stdout.count("student: wrote") == 1

    # One set of outputs, written by rank 0 alone: no second file, no temporary left behind.
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "manifest.json", "student.pt2"]
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1  # the teacher's validation logits, once
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finished"] and [r["epoch"] for r in manifest["epochs"]] == [1, 2]
    assert manifest["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch_size": 157}

    # Validation counted every example once: the exported student scores the same, exactly.
    val = load_builtin("sklearn:digits", split="test")
    pred = load_model(ModelSpec(name="student", path=out / "student.pt2")).predict_logits(val.x).argmax(1)
    teacher = load_model(
        ModelSpec(
            name="teacher", factory="distill_eval.train.zoo:digits_teacher", weights=WEIGHTS / "digits_teacher.pt"
        )
    )
    assert float(np.mean(pred == val.y)) == manifest["epochs"][-1]["val_accuracy"]
    assert float(np.mean(pred == teacher.predict_logits(val.x).argmax(1))) == manifest["epochs"][-1]["val_agreement"]

    # batch_size is the global batch: two processes (and a resume) take the steps one process takes.
    single = train(load_train_config(tmp_path / "cfg.toml").with_output_dir(tmp_path / "single"), log=None)
    assert single.manifest["distributed"]["world_size"] == 1
    for a, b in zip(manifest["epochs"], single.epochs, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        # all-reduced gradients round differently from one process's: allow one example either way
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1.01 / 540)
        assert a["val_agreement"] == pytest.approx(b["val_agreement"], abs=1.01 / 540)
    two = torch.load(out / "checkpoint.pt", weights_only=True)
    one = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)
    assert len(two["phases"]["student"]["rng"]["ranks"]) == 2  # each rank's random state, for exact resumes
    for key, value in one["phases"]["student"]["model"].items():
        torch.testing.assert_close(two["phases"]["student"]["model"][key], value, rtol=0, atol=1e-6)


# -- token data under torchrun ---------------------------------------------------------------

TOKEN_SCRIPT = """
import os, sys, torch
sys.path.insert(0, sys.argv[1])
import lm_setup, students
from distill_eval.train import load_train_config, train

recorder = lm_setup.FirstStepGradients(students.BUILT)
result = train(load_train_config("train.toml"), callbacks=[recorder], log=None)
torch.save(
    {"grads": recorder.grads["student"], "loss": recorder.loss["student"], "epochs": result.epochs},
    f"out.{os.environ['RANK']}.pt",
)
"""


@pytest.mark.slow
def test_token_distillation_under_torchrun_takes_the_steps_of_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lm_setup

    # 24 sequences of uneven lengths in global batches of 9, 9 and 6, each rank's share cut in two
    # micro-batches: ranks and micro-batches hold different numbers of scored tokens.
    lm_setup.setup(tmp_path)
    document = lm_setup.document(epochs=2, batch_size=9, accumulation_steps=2, divergence="jsd", teacher_batch_size=5)
    (tmp_path / "train.toml").write_text(lm_setup.to_toml(document))
    (tmp_path / "tokens.py").write_text(TOKEN_SCRIPT)
    done = torchrun(tmp_path, "tokens.py", str(Path(lm_setup.__file__).parent))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"out.{rank}.pt", weights_only=True) for rank in range(2)]

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "students", raising=False)
    import students

    recorder = lm_setup.FirstStepGradients(students.BUILT)
    single = train(
        load_train_config(tmp_path / "train.toml").with_output_dir(tmp_path / "single"),
        callbacks=[recorder],
        log=None,
    )
    monkeypatch.delitem(sys.modules, "students")
    # The first step's gradient, all-reduced, is the one-process gradient on every rank; each
    # rank's loss is its share of the step's loss (both divided by the tokens of the whole step).
    for rank in ranks:
        for name, grad in recorder.grads["student"].items():
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert ranks[0]["loss"] + ranks[1]["loss"] == pytest.approx(recorder.loss["student"], rel=1e-5)
    for a, b in zip(ranks[0]["epochs"], single.epochs, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        # (not the weights bit for bit: the key bias has a zero gradient in exact arithmetic, and
        # Adam turns its rounding noise, which differs between one and two processes, into steps)
        assert a["val_perplexity"] == pytest.approx(b["val_perplexity"], rel=1e-4)
