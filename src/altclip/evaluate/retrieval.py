"""Image-text retrieval: R@1/5/10 both ways and their mean (MR), per language, in bounded memory.

Flickr30k / COCO conventions: every caption belongs to one image, an image may have several captions.
Text-to-image: a caption scores a hit at K when its image ranks in the top K of all images. Image-to-text:
an image scores a hit at K when any of its captions ranks in the top K of all captions. A rank counts the
candidates that score higher than the right one (by more than ``TIE``). Similarities are computed block by block
(``chunk`` x ``chunk``), so 100,000 images and half a million captions fit in a few hundred MB.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from altclip.datafiles import read_pairs
from altclip.embedding import Embedder

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

    def to_dict(self) -> dict[str, Any]:
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


def recall_at_k(
    images: Tensor, texts: Tensor, text_to_image: Tensor, ks: tuple[int, ...] = KS, chunk: int = 4096
) -> RetrievalScores:
    """images (N, D) and texts (M, D), unit vectors; ``text_to_image[m]`` is caption m's image row."""
    images, texts = images.float().cpu(), texts.float().cpu()
    text_to_image = text_to_image.long().cpu()
    positive = (texts * images[text_to_image]).sum(dim=-1)  # (M,) each caption with its own image
    t2i_rank = _count_higher(texts, images, positive, chunk)
    best = torch.full((images.shape[0],), float("-inf")).scatter_reduce(0, text_to_image, positive, "amax")
    captioned = torch.isfinite(best)  # images without a caption in this set take no part
    i2t_rank = _count_higher(images[captioned], texts, best[captioned], chunk)
    return RetrievalScores(
        t2i={k: 100 * float((t2i_rank < k).float().mean()) for k in ks},
        i2t={k: 100 * float((i2t_rank < k).float().mean()) for k in ks},
        images=int(captioned.sum()),
        captions=texts.shape[0],
    )


def recall_by_language(
    images: Tensor, texts: Tensor, text_to_image: list[int], langs: list[str], chunk: int = 4096
) -> dict[str, RetrievalScores]:
    """One retrieval set per language: its captions against the images those captions describe."""
    by_lang: dict[str, list[int]] = defaultdict(list)
    for row, lang in enumerate(langs):
        by_lang[lang or "-"].append(row)
    results = {}
    for lang, rows in sorted(by_lang.items()):
        image_rows = sorted({text_to_image[r] for r in rows})
        local = {image: i for i, image in enumerate(image_rows)}
        mapping = torch.tensor([local[text_to_image[r]] for r in rows])
        results[lang] = recall_at_k(images[image_rows], texts[rows], mapping, chunk=chunk)
    return results


def evaluate_pairs(
    embedder: Embedder, data: str | Path, chunk: int = 4096, workers: int = 2, progress: bool = True
) -> tuple[dict[str, RetrievalScores], dict[str, int]]:
    """Recall per language on an image-text pairs file (JSONL or CSV: image, caption, lang).

    Returns the scores and what was skipped (malformed lines, unreadable images and their captions).
    """
    table = read_pairs(data)
    paths = list(dict.fromkeys(row["image"] for row in table.rows))
    vectors, records = embedder.embed_files(paths, workers, progress)
    row_of = {paths[r.index]: i for i, r in enumerate(r for r in records if r.status == "ok")}
    rows = [row for row in table.rows if row["image"] in row_of]
    skipped = Counter(table.skipped) + Counter(f"image: {r.status}" for r in records if r.status != "ok")
    if len(rows) < len(table.rows):
        skipped["captions of unreadable images"] = len(table.rows) - len(rows)
    if not rows:
        raise ValueError(f"{data}: no caption has a readable image")
    texts = embedder.embed_texts([row["caption"] for row in rows]).float().cpu()
    scores = recall_by_language(
        vectors, texts, [row_of[row["image"]] for row in rows], [row.get("lang", "") for row in rows], chunk
    )
    return scores, dict(skipped)
