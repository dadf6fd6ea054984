"""torch.distributed set-up for runs launched by torchrun (one process per GPU, or several
CPU processes): nccl on GPUs, gloo on CPU. A plain `python` launch is a world of one."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a no-op when WORLD_SIZE is absent or 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    context = DistributedContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        attempt = restart_count()
        if attempt == 0:
            dist.init_process_group(backend=backend)
        else:
            # torchrun's agent keeps one store for every attempt of a launch, so the addresses
            # that the killed attempt's processes published are still in it; a restarted process
            # that reads its peer's stale address before the peer rewrites it connects to a dead
            # port and fails. Each attempt's keys get a prefix of their own.
            store, rank, size = next(dist.rendezvous("env://"))
            store = dist.PrefixStore(f"pan_model/attempt_{attempt}", store)
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=size)
    return context


def process_device(device: torch.device) -> torch.device:
    """The device this process should use: its LOCAL_RANK'th GPU under torchrun."""
    if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_rank_true(flags: Sequence[bool], device: torch.device) -> list[bool]:
    """For each flag, whether it is true in any process: one all_reduce for all of them, so a
    caller that needs several agreements pays for one round trip (the flags themselves
    without a process group)."""
    if not dist.is_initialized():
        return [bool(flag) for flag in flags]
    values = torch.tensor([1 if flag else 0 for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `values` over all processes, summed in place (pass a
    temporary); `values` as it is without a process group."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def restart_count() -> int:
    """How many times torchrun has restarted this launch's processes after a failure
    (--max-restarts); 0 for a first attempt and outside torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
