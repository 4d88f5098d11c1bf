"""Launch a command under torchrun with two CPU processes, for the distributed tests."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def torchrun(
    cwd: Path, *args: str, nproc: int = 2, timeout: float = 180, retried: bool = False
) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --nproc_per_node=2 --master_port=<free> ARGS`` on CPU, one thread each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        *args,
    ]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 and _INFRASTRUCTURE.search(done.stderr) and not retried:
        # The rendezvous or a gloo socket can fail on a loaded machine (a port taken meanwhile, a
        # reset connection): that is the launcher, not our code. Once more on a fresh port; a real
        # failure fails twice.
        return torchrun(cwd, *args, nproc=nproc, timeout=timeout, retried=True)
    return done


_INFRASTRUCTURE = re.compile(
    r"EADDRINUSE|address already in use|Connection reset|Connection refused|RendezvousError|Gloo"
)
