"""The deterministic sampler, and image pairs read as `altclip embed` reads images."""

from __future__ import annotations

import pytest

from altclip.data.datafiles import read_pairs
from altclip.data.imagefiles import ImageFiles
from altclip.processing.image import CLIPImageProcessor
from altclip.train.data import ImagePairs, micro_batch_indices


def test_processes_split_exactly_what_one_process_sees():
    one = micro_batch_indices(103, batch=8, world=1, rank=0, seed=3, epoch=2)
    parts = [micro_batch_indices(103, batch=4, world=2, rank=r, seed=3, epoch=2) for r in range(2)]
    assert len(one) == len(parts[0]) == 12
    assert all(a == b + c for a, b, c in zip(one, *parts, strict=True))
    assert micro_batch_indices(103, 8, 1, 0, 3, 2) == one and micro_batch_indices(103, 8, 1, 0, 3, 3) != one
    assert len({i for batch in one for i in batch}) == 96


def test_grouping_by_length_pads_less_and_sees_the_same_samples():
    lengths = [(i * 7919) % 61 + 1 for i in range(1000)]  # 1 to 61 tokens, in no order
    plain = micro_batch_indices(1000, batch=16, world=1, rank=0, seed=1, epoch=0)
    grouped = micro_batch_indices(1000, batch=16, world=1, rank=0, seed=1, epoch=0, lengths=lengths)

    def padded(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert sorted(i for b in grouped for i in b) == sorted(i for b in plain for i in b)  # each sample once
    assert padded(grouped) < 0.6 * padded(plain)
    assert (
        grouped
        == micro_batch_indices(1000, 16, 1, 0, 1, 0, lengths)
        != micro_batch_indices(1000, 16, 1, 0, 1, 1, lengths)
    )
    parts = [micro_batch_indices(1000, 8, 2, r, 1, 0, lengths) for r in range(2)]
    assert all(a == b + c for a, b, c in zip(grouped, *parts, strict=True))  # processes split one batch
    with pytest.raises(ValueError, match="lengths: 3 values for 1000 samples"):
        micro_batch_indices(1000, 16, 1, 0, 1, 0, [1, 2, 3])


def test_training_reads_images_as_embedding_does(monkeypatch, pairs_jsonl):
    """A decoder bug (not an ImageLoadError) is skipped with the same status in training as in `altclip embed`."""
    original = CLIPImageProcessor.preprocess_one

    def buggy(self, image, what="image"):
        if "green" in what:
            raise RuntimeError("a decoder bug")
        return original(self, image, what)

    monkeypatch.setattr(CLIPImageProcessor, "preprocess_one", buggy)
    table = read_pairs(pairs_jsonl)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pairs = ImagePairs(table, processor)
    training = {row["image"]: "ok" if pairs[i][0] is not None else pairs[i][1] for i, row in enumerate(table.rows)}
    paths = [row["image"] for row in table.rows]
    files = ImageFiles(processor, draft=False)
    embedding = {paths[r.index]: r.status for r in (files[0, i, path] for i, path in enumerate(paths))}
    assert training == embedding
    assert set(training.values()) == {"ok", "unreadable", "not_image"}
