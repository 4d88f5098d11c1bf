"""Epoch time of `distill-eval train` against a bare hand-written KD loop, in the same run.

    python benchmarks/trainer.py                # defaults: --n 50000 --epochs 4 --repeat 3
    python benchmarks/trainer.py --help

Two comparisons (issue 5's targets):

1. online KD, `train()` vs a minimal loop that does the same work (teacher forward without
   gradients, student forward/backward, Adam, validation accuracy and agreement each epoch):
   target <= 1.05x per epoch;
2. offline KD (teacher logits computed once, looked up by index) vs online KD with a teacher
   about 10x or more the student's cost: target >= 2x faster per epoch.

Per-epoch time is the median over epochs after the first (the steady state), measured with an
`on_epoch_end` callback for `train()` (so it includes the trainer's own checkpoint and manifest
writes) and around each epoch for the loop. One thread, so the two share the machine alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distill_eval.train import kd_loss, load_train_config, train, zoo
from distill_eval.train.trainer import TrainCallback

TEACHER = {"in_features": 64, "hidden": [1024, 1024], "n_classes": 10}
STUDENT = {"in_features": 64, "hidden": [64], "n_classes": 10}


def _data(folder: Path, n: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, size=(10, 64)).astype(np.float32)
    paths = []
    for name, size in (("train", n), ("val", n // 5)):
        y = rng.integers(0, 10, size=size)
        x = centres[y] + rng.normal(0, 1.5, size=(size, 64)).astype(np.float32)
        np.savez(folder / f"{name}.npz", x=x, y=y)
        paths.append(folder / f"{name}.npz")
    return paths[0], paths[1]


def _config(folder: Path, *, offline: bool, epochs: int, batch_size: int) -> Path:
    text = f"""
[data]
train = {{ path = "train.npz" }}
val = {{ path = "val.npz" }}
[teacher]
factory = "distill_eval.train.zoo:mlp"
kwargs = {{ in_features = 64, hidden = [1024, 1024], n_classes = 10 }}
[student]
factory = "distill_eval.train.zoo:mlp"
kwargs = {{ in_features = 64, hidden = [64], n_classes = 10 }}
[distill]
temperature = 4.0
alpha = 0.9
epochs = {epochs}
batch_size = {batch_size}
lr = 0.003
seed = 0
control = false
offline = {str(offline).lower()}
device = "cpu"
cache_dir = "cache-{"off" if offline else "on"}"
[output]
dir = "run-{"offline" if offline else "online"}"
"""
    path = folder / f"{'offline' if offline else 'online'}.toml"
    path.write_text(text)
    return path


class _Clock(TrainCallback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_phase_start(self, phase: str) -> None:
        self.stamps.append(time.perf_counter())

    def on_epoch_end(self, phase: str, record) -> None:
        self.stamps.append(time.perf_counter())


def _steady(stamps: list[float]) -> float:
    return statistics.median(np.diff(stamps)[1:])


def time_trainer(config: Path) -> float:
    clock = _Clock()
    train(load_train_config(config), overwrite=True, callbacks=[clock], log=None)
    return _steady(clock.stamps)


def time_bare_loop(train_path: Path, val_path: Path, *, epochs: int, batch_size: int) -> float:
    """The hand-written loop: the least a KD epoch can do, with the same models and recipe."""
    with np.load(train_path) as d:
        x, y = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])
    with np.load(val_path) as d:
        xv, yv = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])
    torch.manual_seed(0)
    teacher, student = zoo.mlp(**TEACHER).eval().requires_grad_(False), zoo.mlp(**STUDENT)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.003)
    order = torch.Generator().manual_seed(0)
    with torch.no_grad():
        t_pred = teacher(xv).argmax(1)  # the teacher is fixed: its validation answers once
    stamps = [time.perf_counter()]
    for _ in range(epochs):
        student.train()
        for rows in torch.randperm(len(x), generator=order).split(batch_size):
            with torch.no_grad():
                t = teacher(x[rows])
            loss = kd_loss(student(x[rows]), t, y[rows], temperature=4.0, alpha=0.9)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        student.eval()
        with torch.no_grad():
            s_pred = student(xv).argmax(1)
            _ = (s_pred == yv).float().mean().item(), (s_pred == t_pred).float().mean().item()
        stamps.append(time.perf_counter())
    return _steady(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="training examples (default: 50000)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (default: 4)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size (default: 256)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating repetitions, best kept (default: 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train_path, val_path = _data(folder, args.n)
        online = _config(folder, offline=False, epochs=args.epochs, batch_size=args.batch_size)
        offline = _config(folder, offline=True, epochs=args.epochs, batch_size=args.batch_size)
        # Alternate the variants and keep each one's best, so a busy moment of the machine
        # does not land on one side only.
        times: dict[str, list[float]] = {"bare": [], "online": [], "offline": []}
        for _ in range(args.repeat):
            times["bare"].append(time_bare_loop(train_path, val_path, epochs=args.epochs, batch_size=args.batch_size))
            times["online"].append(time_trainer(online))
            times["offline"].append(time_trainer(offline))
        bare, ours_online, ours_offline = (min(times[k]) for k in ("bare", "online", "offline"))
    flops = sum(p.numel() for p in zoo.mlp(**TEACHER).parameters()) / sum(
        p.numel() for p in zoo.mlp(**STUDENT).parameters()
    )
    print(f"{args.n} examples x 64 features, batch {args.batch_size}, 1 thread; teacher/student params {flops:.0f}x")
    print(f"{'':44s} {'s/epoch':>8s} {'ratio':>8s}")
    print(f"{'bare hand-written online KD loop':44s} {bare:8.3f} {1.0:8.2f}")
    print(f"{'distill-eval train, online':44s} {ours_online:8.3f} {ours_online / bare:8.2f}   target <= 1.05")
    print(
        f"{'distill-eval train, offline':44s} {ours_offline:8.3f} {ours_online / ours_offline:8.2f}x faster than online"
        "   target >= 2"
    )


if __name__ == "__main__":
    main()
