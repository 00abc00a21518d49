"""Training on several GPUs or nodes with ``torch.distributed`` (DDP).

Run it with ``torchrun``::

    torchrun --nproc_per_node=4 -m mrlib train --run-dir runs/full --variant unweighted
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 \\
        --nproc_per_node=8 -m mrlib train --run-dir runs/full --variant gradcam

What it does:

* :func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``), picks NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``) and
  gloo elsewhere, and returns a :class:`DistContext`; without torchrun it returns the
  single-process context, so the same command runs alone;
* :func:`volume_batches` shards whole volumes of the in-memory bank across ranks
  (fastMRI's ``VolumeSampler`` idea: the slices of one volume stay on one rank) and
  gives every rank the same number of equal-sized batches, so no rank waits for
  another at the end of an epoch;
* :func:`mrlib.train.fit` wraps the model in ``DistributedDataParallel``, averages the
  logged loss over ranks, validates on a shard per rank, and lets rank 0 alone write
  checkpoints, ``history.json`` and logs; on resume rank 0 reads ``last.pt`` and
  broadcasts it, so the other nodes need not see the run directory.

With the per-rank batch ``b`` on ``W`` ranks, a step's gradient is that of one process on
the combined batch of ``W * b`` slices (the loss is a mean, DDP averages gradients): a
test checks the loss and the weights against one process given the combined batches.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from .errors import ParameterError
from .runtime import pick_device


@dataclass(frozen=True)
class DistContext:
    """Who this process is in a distributed run (``world_size == 1``: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """A process group with more than one process is running."""
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Sum numbers over ranks (float64, on the process group's device)."""
        t = torch.tensor(list(values), dtype=torch.float64, device=self.comm_device)
        if self.active:
            dist.all_reduce(t)
        return t.tolist()

    @property
    def comm_device(self) -> torch.device:
        """NCCL needs CUDA tensors, gloo CPU tensors."""
        if self.active and dist.get_backend() == "nccl":
            return self.device
        return torch.device("cpu")


def init_distributed(device: str = "auto", backend: str | None = None,
                     timeout_s: float = 600.0) -> DistContext:
    """Join torchrun's process group, or return the single-process context without torchrun.

    Args:
        device: ``auto``, ``cpu`` or ``cuda``; under torchrun CUDA means ``cuda:LOCAL_RANK``.
        backend: ``nccl`` or ``gloo``; default NCCL on CUDA, gloo otherwise.
        timeout_s: how long a collective waits for a missing rank before failing
            (instead of hanging forever).

    Raises:
        ParameterError: a device that is not there, or more processes on a node than GPUs.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev.type == "cuda":
        n_gpus = torch.cuda.device_count()
        if world > 1 and local_rank >= n_gpus:
            raise ParameterError(
                "--nproc_per_node", f"process {local_rank} on this node has no GPU: the node has {n_gpus}; "
                f"use --nproc_per_node={n_gpus} or fewer")
        if world > 1 or dev.index is None:
            dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistContext(0, 1, 0, dev)
    if not dist.is_available():
        raise ParameterError("torch.distributed", "this PyTorch build has no distributed support")
    if dev.type == "mps":
        raise ParameterError("device", "multi-process training needs CUDA (NCCL) or the CPU (gloo), not mps")
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def cleanup() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_shardable(volumes: dict[str, list[int]], world_size: int, where: str = "--nproc_per_node") -> None:
    """Every rank needs at least one whole volume; raise a clear error otherwise.

    Raised on every rank before any collective call, so no process is left waiting.
    """
    if world_size > len(volumes):
        raise ParameterError(
            where, f"{world_size} processes but only {len(volumes)} training volume(s): each process trains "
            f"on whole volumes, so use at most --nproc_per_node={len(volumes)} (times the nodes) or more data")


def shard_volumes(volumes: dict[str, list[int]], world_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Deal whole volumes to ranks: the volumes in a permutation drawn from ``(seed, epoch)``,
    largest-first onto the rank with the fewest slices. Returns each rank's slice indices."""
    check_shardable(volumes, world_size)
    stems = list(volumes)
    perm = np.random.default_rng([seed, epoch, 1]).permutation(len(stems))
    order = sorted(perm, key=lambda i: -len(volumes[stems[i]]))  # stable: ties keep the random order
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for i in order:
        r = min(range(world_size), key=lambda k: (len(shards[k]), k))
        shards[r].extend(volumes[stems[i]])
    return shards


def volume_batches(volumes: dict[str, list[int]], world_size: int, batch_size: int, seed: int,
                   epoch: int) -> list[list[tuple[list[int], list[tuple]]]]:
    """One epoch's batches for every rank: ``steps[s][r] = (slice indices, mask seeds)``.

    Whole volumes are sharded (:func:`shard_volumes`); each rank shuffles its slices with
    ``(seed, epoch, rank)``; every rank runs the same number of steps with exactly
    ``batch_size`` slices, a rank with fewer slices wrapping round its own shard (as
    ``DistributedSampler`` pads). Mask seeds ``(seed, epoch, step, rank * batch_size + j)``
    number the slices of the combined batch, so one process given the concatenation of a
    step's rank batches draws the same masks.
    """
    if batch_size < 1:
        raise ParameterError("batch_size", f"must be at least 1, got {batch_size}")
    shards = shard_volumes(volumes, world_size, seed, epoch)
    orders = [np.random.default_rng([seed, epoch, 2, r]).permutation(s).tolist() for r, s in enumerate(shards)]
    n_steps = -(-max(len(o) for o in orders) // batch_size)
    steps = []
    for s in range(n_steps):
        per_rank = []
        for r, o in enumerate(orders):
            idx = [o[(s * batch_size + j) % len(o)] for j in range(batch_size)]
            per_rank.append((idx, [(seed, epoch, s, r * batch_size + j) for j in range(batch_size)]))
        steps.append(per_rank)
    return steps


def shard_range(n: int, rank: int, world_size: int) -> range:
    """The contiguous part of ``range(n)`` that ``rank`` handles (for validation)."""
    per = -(-n // world_size)
    return range(min(n, rank * per), min(n, (rank + 1) * per))
