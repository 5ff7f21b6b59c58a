"""The two phases of AltCLIP's recipe, as ``Phase`` objects for the loop: models, data, collate, export."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from altclip.models import AltCLIPModel, CLIPModel
from altclip.processor import AltCLIPProcessor
from altclip.tasks.embedding import Embedder, text_token_limit
from altclip.tokenization import CLIPTokenizer, Tokenizer
from altclip.train.data import ImagePairs, read_pairs, read_parallel
from altclip.train.loop import Phase
from altclip.train.objectives import Contrastive, Distillation


def _tokens(tokenizer: Tokenizer, texts: list[str], limit: int, prefix: str = "") -> dict[str, torch.Tensor]:
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    return {f"{prefix}ids": encoded["input_ids"], f"{prefix}mask": encoded["attention_mask"]}


def distillation_phase(teacher: str | Path, student: str | Path, data: str | Path) -> Phase:
    """Phase 1 on parallel text: the teacher is a CLIP checkpoint, the student an AltCLIP one."""
    teacher_model = CLIPModel.from_pretrained(teacher)
    teacher_tokenizer = CLIPTokenizer.from_pretrained(teacher)
    student_model = AltCLIPModel.from_pretrained(student)
    processor = AltCLIPProcessor.from_pretrained(student)
    table = read_parallel(data)
    teacher_limit = text_token_limit(teacher_model.config.text_config, teacher_tokenizer)
    student_limit = text_token_limit(student_model.config.text_config, processor.tokenizer)

    def collate(rows: list[dict[str, str]]) -> dict[str, Any]:
        src, tgt = [r["src"] for r in rows], [r["tgt"] for r in rows]
        return {
            **_tokens(teacher_tokenizer, src, teacher_limit, "teacher_"),
            **_tokens(processor.tokenizer, src, student_limit, "src_"),
            **_tokens(processor.tokenizer, tgt, student_limit, "tgt_"),
        }

    def export(folder: Path) -> None:
        student_model.save_pretrained(folder)
        processor.save_pretrained(folder)

    phase = Phase(Distillation(teacher_model, student_model), student_model, table.rows, collate, export)
    phase.skipped.update({f"data: {k}": v for k, v in table.skipped.items()})
    return phase


def contrastive_phase(model_path: str | Path, data: str | Path, freeze_vision: bool = True) -> Phase:
    """Phase 2 on image-text pairs (also how a CLIP teacher itself is trained, with the vision tower free)."""
    embedder = Embedder.from_pretrained(model_path, device="cpu")
    model, processor = embedder.model, embedder.processor
    table = read_pairs(data)
    skipped: Counter = Counter({f"data: {k}": v for k, v in table.skipped.items()})

    def collate(items: list[tuple[np.ndarray | None, str]]) -> dict[str, Any]:
        # may run in a worker process: what was skipped travels with the batch
        good = [(pixels, caption) for pixels, caption in items if pixels is not None]
        batch: dict[str, Any] = {"size": len(good), "skipped": [f"image: {k}" for p, k in items if p is None]}
        if good:
            tokens = _tokens(processor.tokenizer, [c for _, c in good], embedder.max_text_tokens)
            batch.update(
                input_ids=tokens["ids"],
                attention_mask=tokens["mask"],
                pixel_values=torch.from_numpy(np.stack([p for p, _ in good])),
            )
        return batch

    def export(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return Phase(
        Contrastive(model, freeze_vision), model, ImagePairs(table, processor.image_processor), collate, export, skipped
    )
