"""Processes started by ``torchrun``: which one this is, its device, and waiting for and adding up across them.

Embedding and training both run as one process or as many; this is the one place that joins the group
(gloo on CPU, NCCL on GPU), hands each process its own device (``LOCAL_RANK``'s GPU), and holds the rank and
barrier logic that both use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from altclip.runtime.hardware import resolve_device


def joined() -> bool:
    """Whether this process is in a process group now."""
    return dist.is_available() and dist.is_initialized()


@dataclass(frozen=True)
class Group:
    """This process among ``world`` (rank 0 of 1 without torchrun), and the device it computes on."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Process 0: the one that writes what all share (summaries, the final model, the index)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (nothing to wait for in a single process)."""
        if self.world > 1 and joined():
            dist.barrier()

    def sum(self, *values: float | torch.Tensor) -> list[float]:
        """Each value summed over the processes, in one collective."""
        if self.world == 1:
            return [float(v) for v in values]
        tensor = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in values])
        dist.all_reduce(tensor)
        return tensor.tolist()


def setup(device_name: str | None = "auto") -> Group:
    """This process's ``Group``; joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group(0, 1, resolve_device(device_name))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not joined():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    return Group(rank, world, torch.device("cuda", local) if cuda else torch.device("cpu"))


def leave() -> None:
    """Leave the group once every process is here; a group alive at interpreter exit aborts the process."""
    if joined():
        dist.barrier()
        dist.destroy_process_group()
