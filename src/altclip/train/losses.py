"""Training losses: teacher distillation (MSE) and CLIP's symmetric InfoNCE over the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from altclip.models import clip_loss, normalize


def distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error between the student's pooled vectors and the (detached) teacher's."""
    return F.mse_loss(student.float(), teacher.detach().float())


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate every process's rows, in rank order, keeping the gradient to this process's rows.

    Processes may hold different numbers of rows (a batch that lost unreadable images): sizes are
    exchanged first, rows padded to the largest, gathered with autograd, and the padding dropped.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    counts = [int(s) for s in sizes]
    padded = F.pad(x, (0, 0, 0, max(counts) - x.shape[0]))
    return torch.cat([part[:n] for part, n in zip(all_gather(padded), counts, strict=True)])


def contrastive_loss(text: Tensor, image: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE between matching rows of the global batch (every process's pairs are negatives).

    Each process computes the loss of the whole gathered batch; with gradients averaged across processes
    this equals the loss and gradient of one process holding the global batch.
    """
    text, image = gather_with_grad(normalize(text.float())), gather_with_grad(normalize(image.float()))
    return clip_loss(logit_scale.exp() * text @ image.t())
