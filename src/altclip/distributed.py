"""Processes started by ``torchrun``: which one this is, its device, and waiting for the others.

Embedding and training both run as one process or as many; this is the one place that joins the group
(gloo on CPU, NCCL on GPU) and hands each process its own device (``LOCAL_RANK``'s GPU).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from altclip.runtime import resolve_device


def setup(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    return rank, world, torch.device("cuda", local) if cuda else torch.device("cpu")


def barrier() -> None:
    """Wait for every process (nothing to wait for in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def leave() -> None:
    """Leave the group once every process is here; a group alive at interpreter exit aborts the process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
