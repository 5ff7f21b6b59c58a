"""The demo's numbers recomputed with transformers from the exported Hugging Face folders, beside the report's.

    .venv/bin/python benchmarks/demo_check.py altclip-demo            # the README's demo folder
    .venv/bin/python benchmarks/demo_check.py altclip-demo --json

Independent of altclip's models, preprocessing and scoring: the teacher is loaded with
``transformers.CLIPModel``, the student with ``transformers.AltCLIPModel``, images are prepared by
``transformers.CLIPImageProcessorPil`` and text by the folders' tokenizers through ``transformers.AutoTokenizer``;
recall and top-1 are counted here with NumPy. Only the tasks' definitions (which images, which class names, which
templates) come from ``altclip.demo``. For each table of ``report/report.json`` (retrieval MR per language) and
``report/zeroshot.json`` (top-1 per task, language and split) it checks that the report's number lies within
the range transformers gives, where a score within 1e-5 of another can rank either way (the teacher reads other
scripts as tokens it never trained, whose embeddings all but tie), and prints the widest gap to that range.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image

from altclip.demo.data import LANGUAGE_CODES, LANGUAGES, EmojiSet, build
from altclip.demo.zeroshot import flag_task, tone_task

EPSILON = 1e-5  # scores closer than this are ties that float arithmetic may break either way


class Reference:
    """One exported folder, run by transformers: unit vectors of images and texts as float64 NumPy arrays."""

    def __init__(self, folder: Path, kind: str) -> None:
        model_class = transformers.CLIPModel if kind == "CLIP" else transformers.AltCLIPModel
        self.model = model_class.from_pretrained(folder).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        self.images = transformers.CLIPImageProcessorPil.from_pretrained(folder)

    @staticmethod
    def _unit(features: Any) -> np.ndarray:
        if not isinstance(features, torch.Tensor):  # some versions return an output object
            features = features.pooler_output
        vectors = features.double().numpy()
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    @torch.no_grad()
    def embed_images(self, paths: list[str], batch: int = 256) -> np.ndarray:
        out = []
        for start in range(0, len(paths), batch):
            images = [Image.open(p).convert("RGB") for p in paths[start : start + batch]]
            pixels = self.images(images, return_tensors="pt")["pixel_values"]
            out.append(self._unit(self.model.get_image_features(pixel_values=pixels)))
        return np.concatenate(out)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch: int = 256) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch):
            tokens = self.tokenizer(texts[start : start + batch], padding=True, truncation=True, return_tensors="pt")
            features = self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
            out.append(self._unit(features))
        return np.concatenate(out)


def recall(scores: np.ndarray, own: np.ndarray, k: int) -> tuple[float, float]:
    """% of rows whose own column ranks within the top k, as (low, high): scores within ``EPSILON`` of the own
    one could rank either way in another implementation's arithmetic, so the low end counts them above it and
    the high end below it."""
    mine = np.take_along_axis(scores, own[:, None], axis=1)
    surely_above = (scores > mine + EPSILON).sum(axis=1)
    maybe_above = (scores >= mine - EPSILON).sum(axis=1) - 1  # not the own column itself
    return 100 * float((maybe_above < k).mean()), 100 * float((surely_above < k).mean())


def retrieval_mr(model: Reference, data: EmojiSet) -> dict[str, tuple[float, float]]:
    """MR (mean of text-to-image and image-to-text recall at 1, 5 and 10) per language on ``test.jsonl``."""
    pairs = [json.loads(line) for line in (data.folder / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    out = {}
    for lang in LANGUAGES:
        mine = [p for p in pairs if p["lang"] == lang]
        images = model.embed_images([str(data.folder / p["image"]) for p in mine])
        texts = model.embed_texts([p["caption"] for p in mine])
        scores = texts @ images.T  # (captions, images): caption i belongs to image i
        own = np.arange(len(mine))
        recalls = [recall(m, own, k) for m in (scores, scores.T) for k in (1, 5, 10)]
        out[lang] = (float(np.mean([r[0] for r in recalls])), float(np.mean([r[1] for r in recalls])))
    return out


def zeroshot_top1(model: Reference, data: EmojiSet) -> dict[tuple[str, str, str], tuple[float, float]]:
    """(task, language code, "trained" or "held_out") -> top-1 (%), as a range (see ``recall``)."""
    out = {}
    for task in (flag_task(data), tone_task(data)):
        images = model.embed_images([data.image(c) for c in task.images])
        labels = np.array(task.labels)
        held = np.isin(task.images, data.test)
        for lang in LANGUAGES:
            templates = task.templates[lang]
            prompts = [t.format(names[lang]) for names in task.classes for t in templates]
            vectors = model.embed_texts(prompts).reshape(len(task.classes), len(templates), -1).mean(axis=1)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            scores = images @ vectors.T  # (images, classes)
            out[(task.name, lang, "trained")] = recall(scores[~held], labels[~held], 1)
            out[(task.name, lang, "held_out")] = recall(scores[held], labels[held], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path, help="the demo's work folder (altclip-demo)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    split = json.loads((args.work / "data" / "split.json").read_text(encoding="utf-8"))
    data = build(args.work / "data", progress=False, holdout=split.get("holdout", "test"))
    models = {"CLIP": args.work / "teacher" / "model", "AltCLIP": args.work / "contrastive" / "model"}
    report = json.loads((args.work / "report" / "report.json").read_text(encoding="utf-8"))
    zeroshot = json.loads((args.work / "report" / "zeroshot.json").read_text(encoding="utf-8"))
    rows: list[tuple[str, str, str, str, float, tuple[float, float]]] = []  # table, model, language, split,
    # the report's number, the range transformers gives
    for method, folder in models.items():
        model = Reference(folder, method)
        mr = retrieval_mr(model, data)
        for row in (r for r in report if r["method"] == method):
            lang = LANGUAGE_CODES[row["language"]]
            rows.append(("retrieval MR", method, lang, "held_out", row["MR"], mr[lang]))
        top1 = zeroshot_top1(model, data)
        for row in (r for r in zeroshot if r["method"] == method):
            lang = LANGUAGE_CODES[row["language"]]
            for split in ("trained", "held_out"):
                reference = top1[(row["task"], lang, split)]
                rows.append(("zero-shot " + row["task"], method, lang, split, row[split]["top1"], reference))
    worst = {"retrieval MR": 0.0, "zero-shot top-1": 0.0}  # how far a report's number lies outside its range
    ties = 0
    for table, _, _, _, number, (low, high) in rows:
        group = "retrieval MR" if table == "retrieval MR" else "zero-shot top-1"
        worst[group] = max(worst[group], low - number, number - high)
        ties += high > low
    agree = all(gap <= 1e-4 for gap in worst.values())  # the report keeps float32 percentages
    if args.json:
        keys = ("table", "method", "language", "split", "report", "transformers_range")
        listed = [dict(zip(keys, row, strict=True)) for row in rows]
        print(json.dumps({"agree": agree, "largest_difference": worst, "rows": listed}))
    else:
        print(f"transformers {transformers.__version__}, torch {torch.__version__}: {len(rows)} numbers recomputed")
        for group, difference in worst.items():
            print(f"  {group}: the report's numbers lie {max(difference, 0):.2f} points or less outside the range")
        print(f"  {ties} numbers have scores tied within {EPSILON}, so a range rather than one value")
        print("agree" if agree else "DISAGREE")
    raise SystemExit(0 if agree else 1)


if __name__ == "__main__":
    main()
