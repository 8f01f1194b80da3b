"""Where a training process runs: its device, its rank in a torchrun group, and sharding (FSDP2).

Launched under `torchrun`, each process joins the group, takes the GPU of its LOCAL_RANK and a slice of the global
batch; DDP averages gradients, rank 0 alone logs and saves. The process's CUDA device is made current before the
process group is set up, so NCCL, CUDA graph capture and every "cuda" allocation follow it (not cuda:0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from train.training.config import TrainingError


@dataclass
class Dist:
    """This process's place in the group: rank, world size and the local rank that picks its GPU."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 alone logs, saves and prints."""
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """`--device`: auto (CUDA when torch sees one), cpu, cuda, cuda:1 ..."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise TrainingError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {name} asked for, but torch sees no CUDA device")
    return dev


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Make the device current and join the process group when launched by torchrun (WORLD_SIZE > 1).

    Returns this process's place and its device: under torchrun on CUDA, the GPU of LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if world > 1:
            device = torch.device("cuda", local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        # before the group: NCCL's communicators, capture and default allocations use the current device
        torch.cuda.set_device(device)
    if world <= 1:
        return Dist(), device
    if not dist.is_initialized():
        if device.type == "cuda":  # device_id binds the group to this GPU (and sets NCCL up eagerly on it)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank), device


def finish_distributed(ok: bool = True) -> bool:
    """Leave the process group, if this process joined one (returns whether it had).

    A gloo group torn down by process exit can abort a rank ("terminate called without an active exception")
    after its work is done. After a clean run the ranks meet at a barrier first, so none leaves while another
    still talks to it; after an error they do not wait for each other."""
    if not dist.is_initialized():
        return False
    try:
        if ok:
            dist.barrier()
    finally:
        dist.destroy_process_group()
    return True


def shard(model: torch.nn.Module, device: torch.device, world: int) -> None:
    """FSDP2 (ZeRO-3): shard every block of every ModuleList, then the rest of the model, over the ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for m in list(model.modules()):
        if isinstance(m, torch.nn.ModuleList):
            for blk in m:
                fully_shard(blk, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer | None, sharded: bool) -> tuple[dict, dict | None]:
    """Full model (and optimizer) state dicts; collective on every rank when the model is sharded."""
    if not sharded:
        return model.state_dict(), opt.state_dict() if opt is not None else None
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=full)
    return msd, get_optimizer_state_dict(model, opt, options=full) if opt is not None else None
