"""Data-parallel training over several processes (``torchrun``): one place for everything
distributed.

``torchrun --nproc_per_node N -m weakseg train ...`` starts N processes; each reads the same
config and data, builds the same model (same seed) and draws the same global batches. Each
process runs the network on its share of every global batch (samples ``rank::world``)
inside :class:`~torch.nn.parallel.DistributedDataParallel`; the logits of all shares are
gathered (:func:`forward_global`), so that **every process evaluates the loss recipe on the
whole global batch**, exactly as one process would: loss normalisations, CRF and constraint
terms, and stateful objectives (log-barrier ``t``, Lagrange multipliers, shared or per image)
evolve identically in every process without any further synchronisation. Gradients only
flow into each process's own share; DDP's all-reduce averages them, so the loss is scaled by
the number of processes (:func:`loss_scale`) to give the gradient of the global-batch loss.
Differences to one process with the same global batch: batch-norm statistics are per share
(synchronised batch norm on CUDA), and dropout masks are drawn per process.

Backends: NCCL on CUDA, gloo on the CPU. Rank 0 writes every file and every log line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

from weakseg.errors import WeaksegError

__all__ = ["Dist", "barrier", "finish", "forward_global", "from_env", "init", "loss_scale",
           "wrap"]


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world`` processes (``local_rank`` on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """The process's place from ``torchrun``'s environment (one process when unset)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise WeaksegError(f"bad WORLD_SIZE / RANK / LOCAL_RANK in the environment: {exc}; "
                           "start several processes with torchrun") from exc
    if world < 1 or not 0 <= rank < world:
        raise WeaksegError(f"RANK={rank} does not fit WORLD_SIZE={world}; start with torchrun")
    return Dist(rank, world, local)


def init(dist: Dist, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on the CPU); returns this process's
    device (``cuda:<local_rank>`` on GPUs)."""
    if not dist.active:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def wrap(model: nn.Module, dist: Dist, device: torch.device) -> nn.Module:
    """``model`` inside DistributedDataParallel (with synchronised batch norm on CUDA)."""
    if not dist.active:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(model)


def loss_scale(dist: Dist) -> float:
    """Factor on the global-batch loss before ``backward`` (DDP averages the gradients)."""
    return float(dist.world)


def forward_global(model: nn.Module, x: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Logits of the whole batch ``x``: this process computes rows ``rank::world`` (with
    gradients), the others' rows are gathered (without). One process: ``model(x)``."""
    if not dist.active:
        return model(x)
    n = x.shape[0]
    if n < dist.world:
        raise WeaksegError(f"train.batch_size {n} is smaller than the {dist.world} processes; "
                           "raise it to at least one sample per process")
    mine = model(x[dist.rank::dist.world])
    # shares differ by at most one sample: pad to the largest so all_gather sees equal shapes
    size = -(-n // dist.world)
    padded = torch.zeros((size, *mine.shape[1:]), dtype=mine.dtype, device=mine.device)
    padded[: mine.shape[0]] = mine.detach()
    parts = [torch.empty_like(padded) for _ in range(dist.world)]
    torch_dist.all_gather(parts, padded)
    full = torch.empty((n, *mine.shape[1:]), dtype=mine.dtype, device=mine.device)
    for r, part in enumerate(parts):
        rows = torch.arange(r, n, dist.world, device=mine.device)
        full[rows] = part[: len(rows)]
    own = torch.arange(dist.rank, n, dist.world, device=mine.device)
    return full.index_copy(0, own, mine)  # this share keeps its graph


def barrier(dist: Dist) -> None:
    """Wait for every process (no-op for one)."""
    if dist.active:
        torch_dist.barrier()


def finish(dist: Dist) -> None:
    """Leave the process group at the end of a run."""
    if dist.active and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
