"""Losses against naive references on seeded data."""

from __future__ import annotations

import math

import torch

from altclip.train.losses import contrastive_loss, distillation_loss, gather_with_grad


def naive_infonce(text: torch.Tensor, image: torch.Tensor, scale: float) -> float:
    def unit(row: list[float]) -> list[float]:
        norm = math.sqrt(sum(x * x for x in row))
        return [x / norm for x in row]

    t, v = [unit(r) for r in text.tolist()], [unit(r) for r in image.tolist()]
    logits = [[scale * sum(a * b for a, b in zip(ti, vj, strict=True)) for vj in v] for ti in t]
    n = len(logits)

    def ce(rows):
        return sum(-rows[i][i] + math.log(sum(math.exp(x) for x in rows[i])) for i in range(n)) / n

    return (ce(logits) + ce([list(col) for col in zip(*logits, strict=True)])) / 2


def test_contrastive_loss_matches_naive_reference():
    g = torch.Generator().manual_seed(0)
    text, image = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    scale = torch.tensor(2.6592)
    got = contrastive_loss(text, image, scale).item()
    assert abs(got - naive_infonce(text, image, math.exp(2.6592))) < 1e-5


def test_distillation_loss_and_gradients():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    loss = distillation_loss(student, teacher)
    assert torch.isclose(loss, ((student - teacher) ** 2).mean())
    loss.backward()
    assert teacher.grad is None and student.grad is not None  # the teacher is a fixed target


def test_gather_is_the_identity_in_one_process():
    x = torch.randn(3, 2)
    gathered, offset = gather_with_grad(x)
    assert gathered is x and offset == 0
