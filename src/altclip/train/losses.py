"""Training losses: teacher distillation (MSE) and CLIP's symmetric InfoNCE over the global batch."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from altclip.modeling.models import clip_loss, normalize


def distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error between the student's pooled vectors and the (detached) teacher's."""
    return F.mse_loss(student.float(), teacher.detach().float())


def _world() -> tuple[int, int]:
    """(rank, world size) of the process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    """(rows, dim) on each process -> (world, rows, dim); backward: each process's rows receive the sum of
    the gradients every process computed for them (reduce-scatter on NCCL; gloo has none: all-reduce)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.rank = dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            mine = torch.empty_like(grad[0])
            dist.reduce_scatter_tensor(mine, grad.flatten(0, 1))
            return mine
        dist.all_reduce(grad)
        return grad[ctx.rank]


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """Every process's rows in rank order, keeping the gradient to each process's rows, and where this
    process's rows start among them.

    Processes may hold different numbers of rows, none included (a batch that lost unreadable images):
    sizes are exchanged first, rows padded to the largest, gathered with autograd, and the padding dropped.
    """
    rank, world = _world()
    if world == 1:
        return x, 0
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    counts = [int(s) for s in sizes]
    padded = F.pad(x, (0, 0, 0, max(counts) - x.shape[0]))
    gathered = torch.cat([part[:n] for part, n in zip(_AllGather.apply(padded), counts, strict=True)])
    return gathered, sum(counts[:rank])


def contrastive_loss(text: Tensor, image: Tensor, logit_scale: Tensor, local: bool = False) -> Tensor:
    """Symmetric InfoNCE between matching rows of the global batch (every process's pairs are negatives).

    ``local=False``: each process computes the loss of the whole gathered (N, N) logit matrix. ``local=True``
    (open_clip's ``local_loss``): each process scores only its own n rows against the gathered batch, two
    (n, N) matrices with labels offset by the rows of the processes before it, and returns
    ``world * (its rows' cross-entropy sum) / (2 N)``. Either way, with gradients averaged across processes
    (DDP), the loss and gradients are those of one process holding the global batch, also when the
    processes hold different numbers of rows; the local form needs O(n N) memory, not O(N^2).
    """
    text, image = normalize(text.float()), normalize(image.float())
    all_text, offset = gather_with_grad(text)
    all_image, _ = gather_with_grad(image)
    scale = logit_scale.exp()
    if not local:
        return clip_loss(scale * all_text @ all_image.t())
    labels = torch.arange(offset, offset + text.shape[0], device=text.device)
    per_text = F.cross_entropy(scale * text @ all_image.t(), labels, reduction="sum")  # (n, N) logits
    per_image = F.cross_entropy(scale * image @ all_text.t(), labels, reduction="sum")
    return _world()[1] * (per_text + per_image) / (2 * all_text.shape[0])
