"""Chunked retrieval recall against a naive full-matrix reference; per-language sets; pairs files."""

from __future__ import annotations

import pytest
import torch

from altclip.evaluate.retrieval import evaluate_pairs, recall_at_k, recall_by_language
from altclip.modeling.models import normalize
from altclip.tasks import Embedder


def naive(images: torch.Tensor, texts: torch.Tensor, owner: list[int], k: int) -> tuple[float, float]:
    sims = texts @ images.t()  # (captions, images), the whole matrix
    t2i = sum(int((sims[m] > sims[m, owner[m]]).sum()) < k for m in range(len(owner))) / len(owner)
    hits = []
    for i in range(images.shape[0]):
        mine = [m for m in range(len(owner)) if owner[m] == i]
        if not mine:
            continue
        ranked = torch.argsort(sims[:, i], descending=True)[:k].tolist()
        hits.append(any(m in ranked for m in mine))
    return 100 * t2i, 100 * sum(hits) / len(hits)


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_chunked_recall_equals_the_full_matrix(chunk):
    g = torch.Generator().manual_seed(0)
    images = normalize(torch.randn(40, 8, generator=g))
    owner = [i for i in range(37) for _ in range(1 + i % 5)]  # 1 to 5 captions each; 3 images uncaptioned
    texts = normalize(images[owner] + 0.9 * torch.randn(len(owner), 8, generator=g))
    scores = recall_at_k(images, texts, torch.tensor(owner), chunk=chunk)
    for k in (1, 5, 10):
        t2i, i2t = naive(images, texts, owner, k)
        assert scores.t2i[k] == pytest.approx(t2i) and scores.i2t[k] == pytest.approx(i2t)
    assert scores.images == 37 and scores.captions == len(owner)
    assert scores.mean_recall == pytest.approx((sum(scores.t2i.values()) + sum(scores.i2t.values())) / 6)
    assert 0 < scores.t2i[1] < scores.t2i[10] < 100


def test_each_language_is_its_own_set():
    g = torch.Generator().manual_seed(1)
    images = normalize(torch.randn(6, 4, generator=g))
    owner = [0, 1, 2, 3, 4, 5, 0, 2, 4]
    langs = ["en"] * 6 + ["zh"] * 3
    texts = normalize(images[owner] + 0.01 * torch.randn(9, 4, generator=g))
    scores = recall_by_language(images, texts, owner, langs)
    assert set(scores) == {"en", "zh"}
    assert (scores["zh"].images, scores["zh"].captions) == (3, 3) and scores["zh"].t2i[1] == 100


def test_pairs_file(pairs_jsonl, altclip_checkpoint):
    embedder = Embedder.from_pretrained(altclip_checkpoint)
    scores, skipped = evaluate_pairs(embedder, pairs_jsonl, workers=0, progress=False)
    assert set(scores) == {"en", "zh"} and scores["en"].images == 12 and scores["en"].captions == 24
    assert skipped == {"malformed line": 1, "empty text": 1, "image: not_image": 1, "captions of unreadable images": 1}
    assert all(0 <= v <= 100 for s in scores.values() for v in [*s.t2i.values(), *s.i2t.values()])
