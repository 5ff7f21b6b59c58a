"""Kept outputs of frozen towers (FrozenOutputs) give the losses and gradients of computing them every time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from altclip.errors import InputError
from altclip.train.objectives import FrozenOutputs, row_keys, trim_padding
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


def test_image_cache_with_a_training_tower_keeps_pixels(student, pairs_jsonl):
    plain = contrastive_phase(student, pairs_jsonl, freeze_vision=False)
    kept = contrastive_phase(student, pairs_jsonl, freeze_vision=False, cache_images=True)
    assert kept.objective.images is None  # features change as the tower trains: none are kept
    decoded = kept.dataset.decoded
    assert decoded is not None and len(decoded) == len({row["image"] for row in plain.dataset.rows})
    for i in range(len(plain.dataset)):  # every row's pixels, or why its image is unreadable, as decoding gives
        (a, why_a), (b, why_b) = plain.dataset[i], kept.dataset[i]
        assert why_a == why_b and (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    assert any(plain.dataset[i][0] is None for i in range(len(plain.dataset)))  # the broken image is among them
    batch = plain.collate([plain.dataset[i] for i in range(6)])
    assert_same(loss_and_grads(plain, batch), loss_and_grads(kept, kept.collate([kept.dataset[i] for i in range(6)])))


def test_trim_padding_keeps_every_real_token():
    ids = torch.tensor([[5, 6, 1, 1, 1], [7, 1, 1, 1, 1], [1, 8, 9, 1, 1]])  # the last row padded on the left
    mask = (ids != 1).long()
    kept_ids, kept_mask = trim_padding(ids, mask)
    assert kept_ids.tolist() == [[5, 6, 1], [7, 1, 1], [1, 8, 9]] and kept_mask.sum() == mask.sum()


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.01])
def test_source_fraction_reads_the_first_rows_of_the_source_side(fraction, teacher, student, parallel_tsv):
    phase = distillation_phase(teacher, student, parallel_tsv, source_fraction=fraction)
    batch = phase.collate([phase.dataset[i] for i in range(6)])
    objective = phase.objective.eval()  # no dropout: the reference below must see the same forward passes
    with torch.no_grad():
        loss = objective(batch)
        text = objective.student.text_model
        target = objective.teacher_text(batch["teacher_ids"], batch["teacher_mask"]).pooler_output
        rows = max(1, round(6 * fraction))
        src = text(batch["src_ids"], batch["src_mask"]).pooler_output[:rows]  # the untrimmed batch, then cut
        tgt = text(batch["tgt_ids"], batch["tgt_mask"]).pooler_output
    expected = (((src - target[:rows]) ** 2).mean() + ((tgt - target) ** 2).mean()) / 2
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)


def test_source_fraction_out_of_range_is_refused(teacher, student, parallel_tsv):
    with pytest.raises(InputError, match="source_fraction"):
        distillation_phase(teacher, student, parallel_tsv, source_fraction=0)
