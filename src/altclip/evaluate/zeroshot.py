"""Zero-shot classification accuracy on an image folder: top-1, top-5 and recall per class.

The folder holds one subfolder per class (``root/<class>/<image>``). The class-name file, one per
language, gives each class its name: either one name per line in the sorted order of the subfolders, or
``subfolder<TAB>name`` lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from altclip.embedder import Embedder
from altclip.errors import InputError, MissingFileError
from altclip.processing.prompts import check_templates, templates_for


@dataclass
class ZeroShotScores:
    top1: float
    top5: float
    per_class_recall: dict[str, float]
    images: int
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def mean_per_class_recall(self) -> float:
        return sum(self.per_class_recall.values()) / len(self.per_class_recall)

    def to_json(self) -> dict[str, Any]:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "mean_per_class_recall": self.mean_per_class_recall,
            "per_class_recall": self.per_class_recall,
            "images": self.images,
            "skipped": self.skipped,
        }


def read_image_folder(root: str | Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(class subfolders, sorted) and (path, class index) for every file under them."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root} is not a folder of class subfolders")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"{root} holds no class subfolders")
    samples = [
        (str(f), i)
        for i, c in enumerate(classes)
        for f in sorted((root / c).rglob("*"))
        if f.is_file() and not f.name.startswith(".")
    ]
    return classes, samples


def read_classnames(path: str | Path, classes: Sequence[str]) -> list[str]:
    """Names for ``classes``: one per line in their order, or ``folder<TAB>name`` lines."""
    if not Path(path).is_file():
        raise MissingFileError(f"{path}: no such class-name file")
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if lines and all("\t" in line for line in lines):
        mapping = dict(line.split("\t", 1) for line in lines)
        missing = [c for c in classes if c not in mapping]
        if missing:
            raise InputError(f"{path} names no class for folders {missing[:10]}")
        return [mapping[c].strip() for c in classes]
    if len(lines) != len(classes):
        raise InputError(f"{path} has {len(lines)} names for {len(classes)} class folders")
    return [line.strip() for line in lines]


def evaluate_zeroshot(
    embedder: Embedder,
    root: str | Path,
    names: Sequence[str],
    lang: str = "en",
    templates: Sequence[str] | None = None,
    workers: int = 2,
    progress: bool = True,
) -> ZeroShotScores:
    classes, samples = read_image_folder(root)
    if len(names) != len(classes):
        raise InputError(f"{len(names)} class names for {len(classes)} class folders")
    templates = check_templates(templates) if templates is not None else templates_for(lang)
    vectors, records = embedder.embed_files([p for p, _ in samples], workers, progress)
    labels = torch.tensor([label for (_, label), r in zip(samples, records, strict=True) if r.status == "ok"])
    if labels.numel() == 0:
        raise InputError(f"{root}: no readable images")
    scores = score_classes(vectors, labels, embedder.class_embeddings(list(names), templates), names)
    scores.skipped = [{"path": samples[r.index][0], "status": r.status} for r in records if r.status != "ok"]
    return scores


def score_classes(images: Tensor, labels: Tensor, classes: Tensor, names: Sequence[str]) -> ZeroShotScores:
    """Top-1, top-5 and per-class recall of (images, dim) unit vectors against (classes, dim) class embeddings;
    ``labels[i]`` is image i's class row, ``names`` the classes' names (the recall table's keys)."""
    scores = images.float() @ classes.float().t()  # (images, classes)
    top = scores.topk(min(5, len(names)), dim=-1).indices
    hit1, hit5 = top[:, 0] == labels, (top == labels[:, None]).any(dim=-1)
    recall = {names[c]: 100 * float(hit1[labels == c].float().mean()) for c in range(len(names)) if (labels == c).any()}
    return ZeroShotScores(100 * float(hit1.float().mean()), 100 * float(hit5.float().mean()), recall, len(labels))
