"""Training data: deterministic sampling across processes, and image-text pairs decoded for a batch.

The data files themselves are read by ``altclip.datafiles``. Images that cannot be read are skipped and
counted when their batch is built (``altclip.train.phases``); nothing bad in the data stops an epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from altclip.datafiles import Table
from altclip.image import CLIPImageProcessor, ImageLoadError
from altclip.tokenization import Tokenizer


def micro_batch_indices(size: int, batch: int, world: int, rank: int, seed: int, epoch: int) -> list[list[int]]:
    """This process's index lists for one epoch.

    Every epoch is one seeded permutation cut into global micro-batches of ``batch * world`` (a short
    last one is dropped); process ``rank`` takes the ``rank``-th slice of each. One process with batch
    ``b * w`` therefore sees exactly the samples that ``w`` processes with batch ``b`` see together.
    """
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    span = batch * world
    return [order[start + rank * batch : start + (rank + 1) * batch] for start in range(0, size - span + 1, span)]


class ImagePairs(Dataset):
    """Decoded, preprocessed image-text pairs; an unreadable image gives ``None`` and why (the collate skips it).

    Images are read as ``altclip embed`` reads them (``CLIPImageProcessor.preprocess_file``), so a file is
    skipped and counted under the same status in training as in embedding.
    """

    def __init__(self, table: Table, processor: CLIPImageProcessor) -> None:
        self.rows, self.processor = table.rows, processor

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[np.ndarray | None, str]:
        """(pixels, caption), or (None, the failure's kind)."""
        row = self.rows[index]
        try:
            pixels, _, _ = self.processor.preprocess_file(row["image"])
        except ImageLoadError as err:
            return None, err.kind
        return pixels, row["caption"]


def tokens(tokenizer: Tokenizer, texts: list[str], limit: int, prefix: str = "") -> dict[str, torch.Tensor]:
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    return {f"{prefix}ids": encoded["input_ids"], f"{prefix}mask": encoded["attention_mask"]}


@dataclass
class ParallelCollate:
    """Rows of parallel text -> the teacher's tokens of ``src`` and the student's of ``src`` and ``tgt``."""

    teacher_tokenizer: Tokenizer
    teacher_limit: int
    student_tokenizer: Tokenizer
    student_limit: int

    def __call__(self, rows: list[dict[str, str]]) -> dict[str, Any]:
        src, tgt = [r["src"] for r in rows], [r["tgt"] for r in rows]
        return {
            "size": len(rows),
            **tokens(self.teacher_tokenizer, src, self.teacher_limit, "teacher_"),
            **tokens(self.student_tokenizer, src, self.student_limit, "src_"),
            **tokens(self.student_tokenizer, tgt, self.student_limit, "tgt_"),
        }


@dataclass
class PairCollate:
    """Decoded pairs -> tokens and pixels of the readable ones; what was skipped travels with the batch.

    A batch whose every image was unreadable still has its tensors, with zero rows, so that each process
    of a distributed run takes part in every collective.
    """

    tokenizer: Tokenizer
    limit: int
    image_shape: tuple[int, int, int]  # (channels, height, width) of the preprocessed pixels

    def __call__(self, items: list[tuple[np.ndarray | None, str]]) -> dict[str, Any]:
        good = [(pixels, caption) for pixels, caption in items if pixels is not None]
        encoded = tokens(self.tokenizer, [c for _, c in good], self.limit) if good else None
        return {
            "size": len(good),
            "skipped": [f"image: {kind}" for pixels, kind in items if pixels is None],
            "input_ids": encoded["ids"] if encoded else torch.zeros(0, 1, dtype=torch.long),
            "attention_mask": encoded["mask"] if encoded else torch.zeros(0, 1, dtype=torch.long),
            "pixel_values": torch.from_numpy(np.stack([p for p, _ in good]))
            if good
            else torch.zeros(0, *self.image_shape),
        }
