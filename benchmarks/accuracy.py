"""Accuracy of the faster modes against float32, on the demo's held-out emoji.

    .venv/bin/altclip demo --out altclip-demo            # once: trains the model this measures
    .venv/bin/python benchmarks/accuracy.py altclip-demo

For each mode (int8 dynamic quantization; bfloat16; float16; torch.compile; ONNX Runtime on exports
written here, float32 and int8): the cosine between its embeddings and float32's (images and every
language's names), and zero-shot top-1 over the held-out emoji (each image classified among all their
English / Chinese names): the mode's accuracy and how often its top-1 equals float32's. Seconds include
compilation for compile.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from altclip.export import export_onnx
from altclip.tables import format_table
from altclip.tasks import Embedder


def zero_shot_top1(embedder: Embedder, images: torch.Tensor, names: list[str]) -> torch.Tensor:
    classes = embedder.class_embeddings(names, ("{}",)).float()
    return (images.float() @ classes.t()).argmax(dim=-1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo", type=Path, help="the folder `altclip demo` wrote")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    split = json.loads((args.demo / "data" / "split.json").read_text())
    model = args.demo / "contrastive" / "model"
    test = split["test"]
    images = [str(args.demo / "data" / "images" / ("-".join(f"{ord(c):x}" for c in e) + ".png")) for e in test]
    texts = [split["names"][e][lang] for e in test for lang in split["names"][e]]
    reference = Embedder.from_pretrained(model, dtype="float32", batch_size=64)
    ref_images, ref_texts = reference.embed_images(images), reference.embed_texts(texts)
    labels = torch.arange(len(test))
    rows, data = [], {}
    modes = {
        "float32": {"dtype": "float32"},
        "int8": {"dtype": "int8"},
        "bfloat16": {"dtype": "bfloat16"},
        "float16": {"dtype": "float16"},
        "compile": {"backend": "compile"},
        "onnx": {"backend": "onnx"},
        "onnx-int8": {"backend": "onnx"},
    }
    scratch = tempfile.TemporaryDirectory(prefix="altclip-onnx-")
    exported = Path(scratch.name)
    for mode, options in modes.items():
        if mode.startswith("onnx"):
            export_onnx(reference.model, exported / mode, quantize="int8" if mode == "onnx-int8" else None)
            reference.processor.save_pretrained(exported / mode)
        source = exported / mode if mode.startswith("onnx") else model
        embedder = Embedder.from_pretrained(source, batch_size=64, **options)
        start = time.perf_counter()
        vectors_i, vectors_t = embedder.embed_images(images).float(), embedder.embed_texts(texts).float()
        seconds = time.perf_counter() - start
        cos_i = (vectors_i * ref_images).sum(-1)
        cos_t = (vectors_t * ref_texts).sum(-1)
        entry = {
            "seconds": seconds,
            "image_cosine_min": float(cos_i.min()),
            "text_cosine_min": float(cos_t.min()),
            "image_cosine_mean": float(cos_i.mean()),
            "text_cosine_mean": float(cos_t.mean()),
        }
        for lang in ("en", "zh"):
            names = [split["names"][e][lang] for e in test]
            ours = zero_shot_top1(embedder, vectors_i, names)
            ref = zero_shot_top1(reference, ref_images, names)
            entry[f"top1_{lang}"] = 100 * float((ours == labels).float().mean())
            entry[f"same_top1_{lang}"] = 100 * float((ours == ref).float().mean())
        data[mode] = entry
        rows.append(
            [
                mode,
                f"{seconds:.2f}",
                f"{entry['image_cosine_min']:.4f}",
                f"{entry['text_cosine_min']:.4f}",
                f"{entry['top1_en']:.1f}",
                f"{entry['top1_zh']:.1f}",
                f"{entry['same_top1_en']:.1f}",
                f"{entry['same_top1_zh']:.1f}",
            ]
        )
    scratch.cleanup()
    print(f"{len(images)} held-out emoji, {len(texts)} names, model {model}")
    print(
        format_table(
            [
                "mode",
                "seconds",
                "min cos img",
                "min cos text",
                "top-1 en",
                "top-1 zh",
                "same top-1 en",
                "same top-1 zh",
            ],
            rows,
        )
    )
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
