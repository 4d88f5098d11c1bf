"""Runs under ``torchrun``: the process group, ranks, shards and exact gathering.

``torchrun --nproc_per_node=K -m distill_eval train CONFIG.toml`` starts K
processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in their environment. :func:`process_group` reads them, joins
the group (gloo on CPU, nccl on CUDA with each process on ``cuda:LOCAL_RANK``)
and leaves it afterwards; without them, or with ``WORLD_SIZE=1``, it yields
:data:`SINGLE`, a one-process :class:`Dist` whose methods do nothing collective,
so single-process code paths stay exactly as they were.

Work is split into *blocks* of ``block`` consecutive rows dealt to the ranks in
turn: block ``i`` goes to rank ``i % world_size`` (:func:`shard_rows`). With
``block=1`` that is DistributedSampler's strided share, but without its padding:
the last blocks leave some ranks a row (or a block) short, never a duplicate.
With ``block`` equal to an inference batch size, every rank computes whole
batches of the one-process batching, so outputs are those one process would
compute. :meth:`Dist.gather_rows` pads each shard to the longest, gathers, drops
the padding and puts the rows back in row order (:func:`assemble_rows`): every
example exactly once.

Errors: what rank 0 does alone (:meth:`Dist.run_on_main`) or first
(:meth:`Dist.main_first`) and what every rank does together
(:meth:`Dist.everywhere`) ends in one collective that also carries the outcome,
so a mistake raises the same exception on every rank instead of leaving the
others waiting. :func:`origin_rank` tells a copy from the original.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from distill_eval.errors import ConfigError, DistillError, ModelError

__all__ = [
    "SINGLE",
    "Dist",
    "assemble_rows",
    "launch_environment",
    "origin_rank",
    "process_group",
    "shard_rows",
]

T = TypeVar("T")
_ORIGIN = "distill_eval_origin_rank"  # set on an exception re-raised on a rank other than its own


def shard_rows(n: int, rank: int, world_size: int, *, block: int = 1) -> np.ndarray:
    """The rows of ``n`` that ``rank`` of ``world_size`` owns: blocks ``rank, rank + world_size, ...``.

    Parameters
    ----------
    n : int
        Number of rows (examples).
    rank, world_size : int
        This process and the number of processes.
    block : int, default 1
        Rows per block; 1 deals single rows like DistributedSampler (unpadded).

    Returns
    -------
    ndarray of shape (n_rows,), int64
        Increasing row indices; over all ranks, every row of ``range(n)`` exactly once.

    Examples
    --------
    >>> shard_rows(7, 0, 2).tolist(), shard_rows(7, 1, 2).tolist()
    ([0, 2, 4, 6], [1, 3, 5])
    >>> shard_rows(7, 1, 2, block=3).tolist()
    [3, 4, 5]
    """
    if n < 0 or block < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"shard_rows needs n >= 0, block >= 1 and 0 <= rank < world_size; got {n=}, {block=}, "
            f"{rank=}, {world_size=}"
        )
    blocks = np.arange(rank, -(-n // block), world_size, dtype=np.int64)
    rows = (blocks[:, None] * block + np.arange(block, dtype=np.int64)[None, :]).ravel()
    return rows[rows < n]


def assemble_rows(shards: Sequence[torch.Tensor], n: int, *, block: int = 1) -> torch.Tensor:
    """Put every rank's shard (in rank order) back in row order; the inverse of :func:`shard_rows`.

    Parameters
    ----------
    shards : sequence of tensor of shape (n_rows_r, ...)
        Shard ``r`` holds the rows ``shard_rows(n, r, len(shards), block=block)``, in that order.
    n : int
    block : int, default 1

    Returns
    -------
    tensor of shape (n, ...)

    Raises
    ------
    ValueError
        When a shard's length is not that of its rank's share.
    """
    world_size = len(shards)
    template = next((s for s in shards if len(s)), shards[0])
    out = template.new_empty((n, *template.shape[1:]))
    for rank, shard in enumerate(shards):
        rows = shard_rows(n, rank, world_size, block=block)
        if len(shard) != len(rows):
            raise ValueError(
                f"rank {rank} holds {len(shard)} rows, but its share of {n} rows in blocks of {block} over "
                f"{world_size} ranks is {len(rows)}"
            )
        if len(rows):
            out[torch.from_numpy(rows).to(out.device)] = shard
    return out


def origin_rank(error: BaseException) -> int | None:
    """The rank that first raised ``error`` when it is a copy re-raised here; None when it was raised here."""
    return getattr(error, _ORIGIN, None)


@dataclass(frozen=True)
class Dist:
    """This process's place in a run: its rank, the world size, its device and collectives.

    Attributes
    ----------
    rank, world_size, local_rank : int
    backend : str or None
        ``"gloo"`` or ``"nccl"``; None for a single process.
    device : str
        The device this rank computes on (``cuda:LOCAL_RANK`` on CUDA).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        """True when several processes take part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one that writes files and logs."""
        return self.rank == 0

    def shard(self, n: int, *, block: int = 1) -> np.ndarray:
        """This rank's rows of ``n`` (:func:`shard_rows`)."""
        return shard_rows(n, self.rank, self.world_size, block=block)

    # -- tensors ---------------------------------------------------------------

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over ranks (a new tensor, on ``tensor``'s device)."""
        if not self.enabled:
            return tensor
        total = tensor.detach().to(self._comm_device(), copy=True)
        torch.distributed.all_reduce(total)
        return total.to(tensor.device)

    def gather_rows(
        self, local: torch.Tensor, n: int, *, block: int = 1, dst: int | None = None
    ) -> torch.Tensor | None:
        """Every rank's shard of ``n`` rows, reassembled in row order, each row exactly once.

        Parameters
        ----------
        local : tensor of shape (n_rows, ...)
            This rank's rows, ``self.shard(n, block=block)``, in that order; a
            rank without rows may pass any empty tensor.
        n : int
        block : int, default 1
        dst : int, optional
            Gather on this rank only (others get None); default: on every rank.

        Returns
        -------
        tensor of shape (n, ...) or None
        """
        sizes = [len(shard_rows(n, r, self.world_size, block=block)) for r in range(self.world_size)]
        if len(local) != sizes[self.rank]:
            raise ValueError(f"rank {self.rank} passed {len(local)} rows; its share of {n} rows is {sizes[self.rank]}")
        if not self.enabled:
            return local
        # Ranks agree on the row shape and dtype first: a rank without rows cannot know them.
        layouts = self.all_gather_object((tuple(local.shape[1:]), str(local.dtype)) if len(local) else None)
        known = [layout for layout in layouts if layout is not None]
        if not known:
            return local if dst is None or dst == self.rank else None
        if any(layout != known[0] for layout in known):
            raise ValueError(f"ranks hold rows of different shapes or dtypes: {layouts}")
        shape, dtype = known[0][0], getattr(torch, known[0][1].removeprefix("torch."))
        comm = self._comm_device()
        padded = torch.zeros((max(sizes), *shape), dtype=dtype, device=comm)
        if len(local):
            padded[: len(local)] = local.to(comm)
        if dst is None:
            buffers: list[torch.Tensor] | None = [torch.empty_like(padded) for _ in sizes]
            torch.distributed.all_gather(buffers, padded)
        else:
            buffers = [torch.empty_like(padded) for _ in sizes] if self.rank == dst else None
            torch.distributed.gather(padded, buffers, dst=dst)
            if buffers is None:
                return None
        assert buffers is not None
        return assemble_rows([b[:size] for b, size in zip(buffers, sizes, strict=True)], n, block=block).to(
            local.device
        )

    # -- objects and outcomes ----------------------------------------------------

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled)."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 alone; every rank returns its result or raises its exception.

        The others wait meanwhile: this is also the barrier after rank 0's writes.
        The result must pickle.
        """
        if not self.enabled:
            return fn()
        outcome: tuple[bool, Any] | None = None
        error: BaseException | None = None
        if self.is_main:
            try:
                outcome = (True, fn())
            except Exception as e:  # noqa: BLE001 — carried to every rank, then re-raised
                error = e
                outcome = (False, _portable(e, self.rank))
        shared = self.broadcast(outcome)
        if error is not None:
            raise error
        assert shared is not None
        ok, value = shared
        if not ok:
            raise value
        return value

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then (if it succeeded) on the others: rank 0 fills caches they then read."""
        if not self.enabled:
            return fn()
        result: Any = None
        error: BaseException | None = None
        if self.is_main:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 — carried to every rank, then re-raised
                error = e
        copy = self.broadcast(None if error is None else _portable(error, self.rank))
        if error is not None:
            raise error
        if copy is not None:
            raise copy
        return result if self.is_main else fn()

    def everywhere(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank; if any rank fails, every rank raises the lowest failing rank's error."""
        if not self.enabled:
            return fn()
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 — carried to every rank, then re-raised
            error = e
        copies = self.all_gather_object(None if error is None else _portable(error, self.rank))
        if error is not None:
            raise error
        failed = next((c for c in copies if c is not None), None)
        if failed is not None:
            raise failed
        return result

    def _comm_device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


#: the one-process run: no group, every collective a no-op
SINGLE = Dist()


def _portable(error: BaseException, rank: int) -> BaseException:
    """A copy of ``error`` that survives pickling, marked with the rank that raised it."""
    try:
        copy = pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 — an exception that does not pickle travels as its message
        copy = RuntimeError(f"{type(error).__name__}: {error}")
    with contextlib.suppress(AttributeError):
        setattr(copy, _ORIGIN, rank)
    return copy


def launch_environment(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's variables, or None when they are absent.

    Raises
    ------
    ConfigError
        When the variables are present but not consistent integers.
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    raw = {key: env.get(key, "0") for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    try:
        rank, world_size, local_rank = (int(value) for value in raw.values())
    except ValueError:
        rank = world_size = local_rank = -1
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        shown = ", ".join(f"{key}={value}" for key, value in raw.items())
        raise ConfigError(f"torchrun's environment is inconsistent ({shown}); launch with torchrun --nproc_per_node=K")
    return rank, world_size, local_rank


def _rank_device(device: str, local_rank: int) -> str:
    """Each process on its own GPU: ``cuda`` (or ``cuda:N``) becomes ``cuda:LOCAL_RANK``."""
    if not device.startswith("cuda"):
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ModelError(
            f"torchrun started a process with LOCAL_RANK={local_rank}, but torch sees only {count} GPU(s) on this "
            "machine; use at most that many processes per node (--nproc_per_node)"
        )
    return f"cuda:{local_rank}"


@contextlib.contextmanager
def process_group(device: str) -> Iterator[Dist]:
    """Join the process group torchrun describes (and leave it afterwards); yield this rank's :class:`Dist`.

    Parameters
    ----------
    device : str
        The resolved device of the run (``"cpu"``, ``"cuda"``, ...). On CUDA each
        process uses ``cuda:LOCAL_RANK`` and the nccl backend; elsewhere gloo.

    Yields
    ------
    Dist
        :data:`SINGLE` (with ``device``) outside torchrun or with ``WORLD_SIZE=1``.
        A group the caller already started is used as it is and left running.
    """
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        rank, world_size = distributed.get_rank(), distributed.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        yield Dist(rank, world_size, local_rank, distributed.get_backend(), _rank_device(device, local_rank))
        return
    launch = launch_environment()
    if launch is None or launch[1] == 1:
        yield Dist(device=device)
        return
    rank, world_size, local_rank = launch
    if not distributed.is_available():
        raise ConfigError("torchrun started several processes, but this build of torch has no torch.distributed")
    device = _rank_device(device, local_rank)
    options: dict[str, Any] = {}
    if device.startswith("cuda"):
        backend = "nccl"
        torch.cuda.set_device(device)
        options["device_id"] = torch.device(device)
    else:
        backend = "gloo"
    # torch.distributed.nn.functional (imported by DDP) binds group.WORLD as a default argument when it
    # is first imported: imported after init_process_group, it keeps the group alive for good. The
    # group's worker threads then outlive destroy_process_group, and a gloo worker that frees a
    # finished collective's tensors while Python shuts down aborts the process ("terminate called
    # without an active exception"). Imported first, the defaults hold None.
    importlib.import_module("torch.distributed.nn.functional")

    try:
        distributed.init_process_group(backend=backend, init_method="env://", **options)
    except (RuntimeError, ValueError) as e:
        address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise DistillError(
            f"rank {rank} of {world_size} cannot join the {backend} process group at {address}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
        ) from e
    try:
        yield Dist(rank, world_size, local_rank, backend, device)
    finally:
        distributed.destroy_process_group()
