"""``torchrun`` support: process group set-up (gloo on CPU, NCCL on GPU), sharding, reductions."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from collections.abc import Sequence

import torch
from torch import nn

from .errors import UserError
from .reproducibility import pick_device


@dataclasses.dataclass
class DistEnv:
    """Where this process sits in a (possibly 1-process) data-parallel run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment variables set by ``torchrun`` are present."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def init_distributed(device: str = "auto") -> DistEnv:
    """Initialise ``torch.distributed`` if launched by ``torchrun``, else a single-process env.

    Backend: NCCL when the device is CUDA, gloo otherwise. Each rank uses
    ``cuda:LOCAL_RANK`` on GPU machines.
    """
    import torch.distributed as dist

    dev = pick_device(device)
    if not launched_by_torchrun() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistEnv(device=dev)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=_dt.timedelta(minutes=10))
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend)


def cleanup_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        import torch.distributed as dist

        dist.barrier()


def wrap_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """Wrap in ``DistributedDataParallel`` (gradients all-reduced, averaged) when distributed."""
    if not env.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP / compiled wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module  # type: ignore[assignment]
    return getattr(model, "_orig_mod", model)


def shard_indices(indices: Sequence[int] | torch.Tensor, env: DistEnv) -> list[int]:
    """This rank's contiguous share of a global batch's ``indices``.

    With a global batch of size ``B`` and ``W`` ranks, rank r takes ``B // W`` items
    starting at ``r * B // W``; ``B`` must be divisible by ``W`` so every rank sees the
    same number of items and the DDP gradient average equals the single-process one.
    """
    idx = list(indices.tolist() if isinstance(indices, torch.Tensor) else indices)
    if not env.distributed:
        return idx
    if len(idx) % env.world_size:
        raise UserError(
            f"global batch {len(idx)} is not divisible by {env.world_size} processes; change --train.batch_size"
        )
    per = len(idx) // env.world_size
    return idx[env.rank * per : (env.rank + 1) * per]


def all_reduce_mean(value: float | torch.Tensor, env: DistEnv) -> float:
    """Mean of a scalar over all ranks (returns a Python float)."""
    t = torch.as_tensor(value, dtype=torch.float64, device=env.device if env.backend == "nccl" else "cpu")
    if env.distributed:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t = t / env.world_size
    return float(t.item())
