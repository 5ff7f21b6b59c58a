"""Losses against naive references on seeded data."""

from __future__ import annotations

import math

import pytest
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


def _rank_gradients(rank: int, world: int, init: str, sizes: tuple[int, ...], features: dict, out: str) -> None:
    """One process of a gloo group: its rows' loss and gradients, with the global and the local loss."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        results = {}
        for form in ("global", "local"):
            text = features["text"][rows].clone().requires_grad_()
            image = features["image"][rows].clone().requires_grad_()
            scale = features["scale"].clone().requires_grad_()
            loss = contrastive_loss(text, image, scale, local=form == "local")
            loss.backward()
            grads = [g if g is not None else torch.zeros_like(x) for x, g in ((text, text.grad), (image, image.grad))]
            results[form] = [loss.detach(), *grads, scale.grad]
        torch.save(results, f"{out}/rank-{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sizes", [(3, 3), (4, 0, 2)])
def test_local_and_global_losses_give_one_process_gradients(tmp_path, sizes):
    """What DDP makes of each process's loss (gradients averaged over processes) equals one process holding
    the whole batch, for the global and the local (open_clip) form alike, uneven and empty processes included."""
    g = torch.Generator().manual_seed(0)
    n = sum(sizes)
    features = {
        "text": torch.randn(n, 5, generator=g),
        "image": torch.randn(n, 5, generator=g),
        "scale": torch.tensor(2.0),
    }
    text, image, scale = (features[k].clone().requires_grad_() for k in ("text", "image", "scale"))
    expected = contrastive_loss(text, image, scale)
    expected.backward()

    world = len(sizes)
    init = f"file://{tmp_path / 'rendezvous'}"
    torch.multiprocessing.spawn(_rank_gradients, args=(world, init, sizes, features, str(tmp_path)), nprocs=world)
    for form in ("global", "local"):
        parts = [torch.load(tmp_path / f"rank-{r}.pt", weights_only=True)[form] for r in range(world)]
        losses, text_grads, image_grads, scale_grads = zip(*parts, strict=True)
        torch.testing.assert_close(torch.stack(losses).mean(), expected.detach(), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(torch.cat(text_grads) / world, text.grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(torch.cat(image_grads) / world, image.grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(torch.stack(scale_grads).mean(), scale.grad, atol=1e-6, rtol=1e-5)
