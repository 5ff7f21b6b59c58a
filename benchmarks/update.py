"""Updating a folder collection against embedding it whole, in one run: time and bytes written.

    .venv/bin/python benchmarks/update.py                      # 20,000 photos, 1% changed
    .venv/bin/python benchmarks/update.py --images 2000 --json

A folder of small JPEGs (each one distinct) is embedded whole by ``altclip embed``'s code path (worker
processes decoding, parts written, then the index: ``--index flat``, what ``auto`` picks at this size, or
``hnsw``, updated in place where it can be, see ``altclip.search.index.update_index``), then changed and
updated, each step timed and its bytes written counted (every file of a collection is written whole, a
temporary file then a rename, so the bytes written are the sizes of the files that are new or newer):

- nothing changed (a nightly run on a quiet day);
- a day's photos: 1% new files;
- 1% mixed: half of it new files, a quarter edited, a quarter deleted, spread over the folder at random (every
  part loses a row, so every part is written again: the worst case for the bytes).

The model is a small random AltCLIP (ViT at 224 px, patch 32, width 256, 4 layers): the ratio of an update to a
full embed grows with the model's cost per image, so a real ViT-L/14 makes updates relatively cheaper still.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import altclip
from altclip.embedder import Embedder
from altclip.processing.tokenization import train_sentencepiece
from altclip.runtime.hardware import detect_cpu
from altclip.search.collection import embed_collection
from altclip.search.index import update_index
from altclip.tables import format_table

CONFIG = {
    "text_config": {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1},
    "vision_config": {
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "patch_size": 32,
        "image_size": 224,
    },
    "projection_dim": 256,
}


def files(folder: Path) -> dict[Path, tuple[int, int]]:
    """Every file under ``folder``: (mtime_ns, size)."""
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


def written(before: dict[Path, tuple[int, int]], after: dict[Path, tuple[int, int]]) -> int:
    """Bytes written between two listings: every file is written whole (a temporary file, then a rename), so
    what was written is the files that are new or rewritten."""
    return sum(size for path, (mtime, size) in after.items() if before.get(path, (None,))[0] != mtime)


def make_model(folder: Path) -> Path:
    torch.manual_seed(0)
    config = altclip.AltCLIPConfig.from_dict({**CONFIG, "text_config": {**CONFIG["text_config"], "project_dim": 64}})
    altclip.AltCLIPModel(config).save_pretrained(folder)
    words = [f"photo {i} of a {w}" for i, w in enumerate(["cat", "dog", "tree", "house", "car"] * 40)]
    spm = train_sentencepiece(words, folder / "sentencepiece.bpe.model", vocab_size=200)
    altclip.XLMRobertaTokenizer.from_sentencepiece(spm).save_pretrained(folder)
    altclip.CLIPImageProcessor().save_pretrained(folder)
    return folder


def photo(rng: np.random.Generator) -> Image.Image:
    """A 320 x 240 picture of a few coloured blocks: cheap to make, distinct, a real JPEG to decode."""
    pixels = np.repeat(np.repeat(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), 40, axis=0), 40, axis=1)
    return Image.fromarray(pixels)


def make_folder(root: Path, count: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = root / f"{i // 1000:03d}" / f"IMG_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo(rng).save(path, quality=90)
        paths.append(path)
    return paths


def age(paths: list[Path]) -> None:
    """An hour old, as a library's files are (none within the file system clock's step of the update)."""
    then = time.time() - 3600
    for path in paths:
        os.utime(path, (then, then))


def measure(step: str, run, kind: str) -> dict[str, Any]:
    listed, start = files(run.out) if run.out.exists() else {}, time.perf_counter()
    summary = run()
    seconds = time.perf_counter() - start
    embedded = files(run.out)
    index_start = time.perf_counter()
    info = update_index(run.out, kind=kind)  # as `altclip embed` does
    index_seconds = time.perf_counter() - index_start
    indexed = files(run.out)

    def index_file(path: Path) -> bool:
        return path.relative_to(run.out).parts[0] == "index"

    update = summary.update or {}
    return {
        "step": step,
        "embed_seconds": round(seconds, 2),
        "embed_bytes": written(listed, {p: v for p, v in embedded.items() if not index_file(p)}),
        "index_seconds": round(index_seconds, 2),
        "index_bytes": written(embedded, {p: v for p, v in indexed.items() if index_file(p)}),
        "index": "kept" if not written(embedded, indexed) else "in place" if info.last_update else info.built_because,
        "decoded": update.get("embedded", 0),
        "counts": {k: update.get(k) for k in ("new", "changed", "deleted", "moved", "unchanged")},
        "parts_written": update.get("parts_written"),
    }


class Embed:
    def __init__(self, embedder: Embedder, folder: Path, out: Path, model: str, workers: int) -> None:
        self.embedder, self.folder, self.out, self.model, self.workers = embedder, folder, out, model, workers

    def __call__(self):
        return embed_collection(
            self.folder, self.out, self.embedder, self.model, batch_size=32, workers=self.workers, progress=False
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--changed", type=float, default=0.01, help="the share of the folder each update changes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--index", choices=("flat", "hnsw"), default="flat", help="the index kind kept up to date")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_model(root / "model")
        embedder = Embedder.from_pretrained(model, batch_size=32)
        paths = make_folder(root / "photos", args.images, seed=0)
        age(paths)
        run = Embed(embedder, root / "photos", root / "emb", str(model), args.workers)
        rows.append(measure("full embed", run, args.index))
        rows.append(measure("nothing changed", run, args.index))
        count = max(4, int(args.images * args.changed))
        new = make_folder(root / "photos" / "today", count, seed=1)
        age(new)
        rows.append(measure(f"a day's photos ({count} new)", run, args.index))
        rng = random.Random(0)
        chosen = rng.sample(paths, count // 2)
        edited, deleted = chosen[: count // 4], chosen[count // 4 :]
        pixels = np.random.default_rng(2)
        for path in edited:
            photo(pixels).save(path, quality=90)
        for path in deleted:
            path.unlink()
        added = make_folder(root / "photos" / "tomorrow", count - len(chosen), seed=3)
        age(edited + added)
        rows.append(measure(f"{args.changed:.0%} mixed, at random", run, args.index))
        shutil.rmtree(root / "photos")
    full = rows[0]
    for row in rows:
        row["time_vs_full"] = round(row["embed_seconds"] / full["embed_seconds"], 4)
        row["bytes_vs_full"] = round(row["embed_bytes"] / max(1, full["embed_bytes"]), 4)
    cpu = detect_cpu().describe()
    if args.json:
        print(json.dumps({"cpu": cpu, "images": args.images, "index": args.index, "rows": rows}, indent=2))
        return 0
    print(f"CPU: {cpu}; {args.images} photos of 320x240, decoded by {args.workers} worker processes")
    print(f"index: {args.index}")
    headers = ["step", "decoded", "embed s", "x full", "MB written", "x full", "index s", "index MB", "index"]
    table = [
        [
            row["step"],
            row["decoded"],
            f"{row['embed_seconds']:.1f}",
            f"{row['time_vs_full']:.3f}",
            f"{row['embed_bytes'] / 1e6:.1f}",
            f"{row['bytes_vs_full']:.3f}",
            f"{row['index_seconds']:.1f}",
            f"{row['index_bytes'] / 1e6:.1f}",
            row["index"],
        ]
        for row in rows
    ]
    print(format_table(headers, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
