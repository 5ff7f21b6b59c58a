"""Image-text retrieval: R@1/5/10 both ways and their mean (MR), per language, in bounded memory.

Flickr30k / COCO conventions: every caption belongs to one image, an image may have several captions.
Text-to-image: a caption scores a hit at K when its image ranks in the top K of all images. Image-to-text:
an image scores a hit at K when any of its captions ranks in the top K of all captions. A rank counts the
candidates that score higher than the right one (by more than ``TIE``). Similarities are computed block by block
(``chunk`` x ``chunk``), so 100,000 images and half a million captions fit in a few hundred MB.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from altclip.embedder import Embedder
from altclip.errors import InputError
from altclip.evaluate.datasets import RetrievalSet, read_pairs_set

KS = (1, 5, 10)
# The right answer's score is computed once, element-wise; the same pair inside a block product can come
# out an ulp higher. Scores within TIE of the right one count as ties, resolved in its favour.
TIE = 1e-6


@dataclass
class RetrievalScores:
    t2i: dict[int, float]
    i2t: dict[int, float]
    images: int
    captions: int

    @property
    def mean_recall(self) -> float:
        """MR: the mean of the six recalls, in percent like the other numbers."""
        return sum(self.t2i.values()) / len(self.t2i) / 2 + sum(self.i2t.values()) / len(self.i2t) / 2

    def to_json(self) -> dict[str, Any]:
        return {
            "t2i": {f"R@{k}": v for k, v in self.t2i.items()},
            "i2t": {f"R@{k}": v for k, v in self.i2t.items()},
            "MR": self.mean_recall,
            "images": self.images,
            "captions": self.captions,
        }


def _count_higher(queries: Tensor, keys: Tensor, positive: Tensor, chunk: int) -> Tensor:
    """For each query row, how many key rows score strictly above ``positive`` (its right answer's score)."""
    higher = torch.zeros(queries.shape[0], dtype=torch.long)
    for r in range(0, queries.shape[0], chunk):
        block_q, block_pos = queries[r : r + chunk], positive[r : r + chunk, None]
        for c in range(0, keys.shape[0], chunk):
            higher[r : r + chunk] += (block_q @ keys[c : c + chunk].t() > block_pos + TIE).sum(dim=1)
    return higher


Owners = Tensor | Sequence[int | Sequence[int]]  # each caption's image row, or its image rows


def _pairs(owners: Owners) -> tuple[Tensor, Tensor]:
    """(caption, image) rows of every right pair: one per caption, or several where a caption has several."""
    if isinstance(owners, Tensor):
        owners = owners.long().cpu()
        return torch.arange(owners.shape[0]), owners
    captions, images = [], []
    for m, owner in enumerate(owners):
        for image in [owner] if isinstance(owner, int) else owner:
            captions.append(m)
            images.append(image)
    return torch.tensor(captions, dtype=torch.long), torch.tensor(images, dtype=torch.long)


def recall_at_k(
    images: Tensor, texts: Tensor, owners: Owners, ks: tuple[int, ...] = KS, chunk: int = 4096
) -> RetrievalScores:
    """images (N, D) and texts (M, D), unit vectors; ``owners[m]`` is caption m's image row, or a list of rows
    when several images are right for it (Chinese-CLIP's ``image_ids``: a hit is any of them in the top K)."""
    images, texts = images.float().cpu(), texts.float().cpu()
    caption, image = _pairs(owners)
    if caption.numel() == 0 or int(caption.unique().numel()) != texts.shape[0]:
        raise InputError("every caption needs at least one image")
    positive = (texts[caption] * images[image]).sum(dim=-1)  # (pairs,) each right pair's score
    # a query's rank counts the candidates above its best right answer, which are all wrong ones
    best_image = torch.full((texts.shape[0],), float("-inf")).scatter_reduce(0, caption, positive, "amax")
    t2i_rank = _count_higher(texts, images, best_image, chunk)
    best_caption = torch.full((images.shape[0],), float("-inf")).scatter_reduce(0, image, positive, "amax")
    captioned = torch.isfinite(best_caption)  # images without a caption in this set take no part
    i2t_rank = _count_higher(images[captioned], texts, best_caption[captioned], chunk)
    return RetrievalScores(
        t2i={k: 100 * float((t2i_rank < k).float().mean()) for k in ks},
        i2t={k: 100 * float((i2t_rank < k).float().mean()) for k in ks},
        images=int(captioned.sum()),
        captions=texts.shape[0],
    )


def recall_by_language(
    images: Tensor, texts: Tensor, owners: Owners, langs: list[str], chunk: int = 4096
) -> dict[str, RetrievalScores]:
    """One retrieval set per language: its captions against the images those captions describe."""
    if isinstance(owners, Tensor):
        owners = owners.tolist()
    rows_of = [[o] if isinstance(o, int) else list(o) for o in owners]
    by_lang: dict[str, list[int]] = defaultdict(list)
    for row, lang in enumerate(langs):
        by_lang[lang or "-"].append(row)
    results = {}
    for lang, rows in sorted(by_lang.items()):
        image_rows = sorted({image for r in rows for image in rows_of[r]})
        local = {image: i for i, image in enumerate(image_rows)}
        mapping = [[local[image] for image in rows_of[r]] for r in rows]
        results[lang] = recall_at_k(images[image_rows], texts[rows], mapping, chunk=chunk)
    return results


def evaluate_set(
    embedder: Embedder, data: RetrievalSet, chunk: int = 4096, workers: int = 2, progress: bool = True
) -> tuple[dict[str, RetrievalScores], dict[str, int]]:
    """Recall per language on a retrieval set; returns the scores and what was skipped (the set's own
    skipped lines, unreadable images, and the captions left with no readable image)."""
    vectors, records = embedder.embed_files(data.images, workers, progress)
    row_of = {r.index: i for i, r in enumerate(r for r in records if r.status == "ok")}
    skipped = Counter(data.skipped) + Counter(f"image: {r.status}" for r in records if r.status != "ok")
    keep = [m for m, owners in enumerate(data.owners) if any(o in row_of for o in owners)]
    if len(keep) < len(data.captions):
        skipped["captions of unreadable images"] = len(data.captions) - len(keep)
    if not keep:
        raise InputError(f"{data.source}: no caption has a readable image")
    texts = embedder.embed_texts([data.captions[m] for m in keep]).float().cpu()
    owners = [[row_of[o] for o in data.owners[m] if o in row_of] for m in keep]
    scores = recall_by_language(vectors, texts, owners, [data.langs[m] for m in keep], chunk)
    return scores, dict(skipped)


def evaluate_pairs(
    embedder: Embedder, data: str | Path, chunk: int = 4096, workers: int = 2, progress: bool = True
) -> tuple[dict[str, RetrievalScores], dict[str, int]]:
    """Recall per language on an image-text pairs file (JSONL or CSV: image, caption, lang)."""
    return evaluate_set(embedder, read_pairs_set(Path(data)), chunk, workers, progress)
