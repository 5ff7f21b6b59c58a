"""Kept outputs of frozen towers (FrozenOutputs) give the losses and gradients of computing them every time."""

from __future__ import annotations

import pytest
import torch

from altclip.train.objectives import FrozenOutputs, row_keys
from altclip.train.phases import contrastive_phase, distillation_phase


def loss_and_grads(phase, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(0)
    phase.objective.train()
    phase.objective.zero_grad()
    loss = phase.objective(batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in phase.objective.parameters() if p.grad is not None]


def assert_same(a, b) -> None:
    torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=1e-5)
    assert len(a[1]) == len(b[1]) > 0
    for x, y in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)  # features of a sub-batch differ by ulps


def test_frozen_outputs_computes_each_new_row_once():
    calls = []
    cache = FrozenOutputs()
    rows = torch.tensor([[1, 2, 0], [3, 4, 5], [1, 2, 0], [6, 0, 0]])
    mask = rows != 0

    def compute(batch):
        def rows_of(which):
            calls.append(which)
            return batch[which].float().sum(dim=1, keepdim=True)

        return rows_of

    first = cache(row_keys(rows, mask), compute(rows))
    assert calls == [[0, 1, 3]] and first.squeeze(1).tolist() == [3, 12, 3, 6]
    padded = torch.tensor([[6, 0, 0, 0], [7, 7, 0, 0]])  # the same sentence padded longer: the same key
    again = cache(row_keys(padded, padded != 0), compute(padded))
    assert calls[1] == [1] and again.squeeze(1).tolist() == [6, 14]


@pytest.mark.parametrize("kind", ["distillation", "contrastive"])
def test_kept_outputs_equal_computing_them(kind, teacher, student, parallel_tsv, pairs_jsonl):
    def phase(cache: bool):
        if kind == "distillation":
            return distillation_phase(teacher, student, parallel_tsv, cache_targets=cache)
        return contrastive_phase(student, pairs_jsonl, cache_images=cache)

    plain, kept = phase(False), phase(True)
    items = [plain.dataset[i] for i in (0, 1, 2, 3, 0, 2)]  # rows repeat inside the batch
    batch = plain.collate(items)
    assert_same(loss_and_grads(plain, batch), loss_and_grads(kept, batch))
    store = kept.objective.targets if kind == "distillation" else kept.objective.images

    def keys(b):
        return row_keys(b["teacher_ids"], b["teacher_mask"]) if kind == "distillation" else row_keys(b["pixel_values"])

    assert len(store.outputs) == len(set(keys(batch))) < len(items)
    later = plain.collate([plain.dataset[i] for i in (2, 5, 0)])  # a later batch, partly seen before
    assert_same(loss_and_grads(plain, later), loss_and_grads(kept, later))
    assert set(store.outputs) == set(keys(batch)) | set(keys(later))


def test_image_cache_needs_a_frozen_tower(student, pairs_jsonl):
    with pytest.raises(ValueError, match="cache_images needs a frozen image tower"):
        contrastive_phase(student, pairs_jsonl, freeze_vision=False, cache_images=True)
