"""Does fine-tuning help where the model is weak? The demo's trained AltCLIP on its emoji drawn in another style.

    .venv/bin/altclip demo --out /tmp/demo                      # first: the base model and the emoji
    .venv/bin/python benchmarks/finetune_domain.py --demo /tmp/demo --out /tmp/domain

The new domain is the demo's emoji as grey film negatives (grayscale, inverted): colour, which the demo's model
leans on, is gone and light and dark swap. Fine-tuning sees the demo's *training* emoji in that style, named in
``--langs`` (a tenth of them held out for validation, which picks the best step); the numbers come from the
demo's *test* emoji in that style, named in all 14 languages, which no setting was chosen on. Each mode trains in
a process of its own, for its peak memory (``ru_maxrss``):

- ``lora``: rank-16 adapters on both towers, merged (``--merge``);
- ``last2``: the last 2 of the 4 layers of each tower;
- ``full``: every weight.

The merged LoRA model is then read by transformers, and its recall computed from transformers' vectors must
equal altclip's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

MODES = {
    "lora": ["--lora", "16", "--merge"],
    "last2": ["--unlock-text-layers", "2", "--unlock-image-layers", "2"],
    "full": [],
}


def restyle(source: Path, target: Path) -> None:
    """The image as a grey film negative."""
    with Image.open(source) as image:
        ImageOps.invert(ImageOps.grayscale(image.convert("RGB"))).convert("RGB").save(target)


def make_domain(demo: Path, out: Path, langs: list[str]) -> tuple[Path, Path]:
    """(training pairs, test pairs) of the restyled emoji."""
    split = json.loads((demo / "data" / "split.json").read_text(encoding="utf-8"))
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)

    def pairs(chars: list[str], wanted: list[str]) -> list[str]:
        lines = []
        for char in chars:
            name = "-".join(f"{ord(c):x}" for c in char) + ".png"
            if not (images / name).exists():
                restyle(demo / "data" / "images" / name, images / name)
            for lang in wanted:
                record = {"image": str(images / name), "caption": split["names"][char][lang], "lang": lang}
                lines.append(json.dumps(record, ensure_ascii=False))
        return lines

    train, test = out / "train.jsonl", out / "test.jsonl"
    train.write_text("\n".join(pairs(split["train"], langs)) + "\n", encoding="utf-8")
    all_langs = list(split["names"][split["test"][0]])
    test.write_text("\n".join(pairs(split["test"], all_langs)) + "\n", encoding="utf-8")
    return train, test


def scores(model: str, test: Path, adapter: str | None = None) -> dict[str, float]:
    from altclip.embedder import Embedder
    from altclip.evaluate.retrieval import evaluate_pairs

    embedder = Embedder.from_pretrained(model, batch_size=256, adapter=adapter)
    found, _ = evaluate_pairs(embedder, test, workers=0, progress=False)
    return {lang: s.mean_recall for lang, s in found.items()}


def transformers_scores(model: Path, test: Path) -> dict[str, float]:
    """Recall per language from transformers' own vectors of the test set."""
    import torch
    import transformers

    from altclip.evaluate.datasets import read_pairs_set
    from altclip.evaluate.retrieval import recall_by_language

    data = read_pairs_set(test)
    theirs = transformers.AltCLIPModel.from_pretrained(model).eval()
    processor = transformers.AltCLIPProcessor.from_pretrained(model)
    with torch.no_grad():
        images = []
        for start in range(0, len(data.images), 256):
            chunk = [Image.open(p).convert("RGB") for p in data.images[start : start + 256]]
            images.append(features(theirs.get_image_features(**processor(images=chunk, return_tensors="pt"))))
        texts = []
        for start in range(0, len(data.captions), 256):
            batch = processor(text=data.captions[start : start + 256], padding=True, return_tensors="pt")
            texts.append(features(theirs.get_text_features(**batch)))
    image_vectors = torch.nn.functional.normalize(torch.cat(images), dim=-1)
    text_vectors = torch.nn.functional.normalize(torch.cat(texts), dim=-1)
    found = recall_by_language(image_vectors, text_vectors, data.owners, data.langs)
    return {lang: s.mean_recall for lang, s in found.items()}


def features(output: Any) -> Any:
    """transformers 5 returns the projected features as ``pooler_output``; 4 returned the tensor."""
    return getattr(output, "pooler_output", output)


def train_mode(args: argparse.Namespace, name: str, train: Path) -> dict[str, Any]:
    """One fine-tuning run, in a process of its own; its JSON summary, peak memory and time."""
    run = args.out / name
    if (run / "summary.json").is_file():  # trained by an earlier run of this script: its figures stand
        return json.loads((run / "summary.json").read_text())
    command = [sys.executable, "-m", "altclip.cli", "finetune", "--model", str(args.demo / "contrastive" / "model")]
    command += ["--data", str(train), "--out", str(run), "--epochs", str(args.epochs), "--lr", MODES_LR[name]]
    command += ["--batch-size", "128", "--val", "0.1", "--val-every", str(args.val_every), "--warmup", "20"]
    command += ["--workers", "0", "--json", "--resume", *MODES[name]]
    started = time.perf_counter()
    out, err = run / "stdout.txt", run / "stderr.txt"
    run.mkdir(parents=True, exist_ok=True)
    with out.open("w") as stdout, err.open("w") as stderr:
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own resource use
    if status:
        raise SystemExit(f"{name} failed:\n{err.read_text()[-3000:]}")
    summary = json.loads(out.read_text())
    summary["seconds"] = time.perf_counter() - started
    summary["peak_bytes"] = usage.ru_maxrss * 1024  # Linux reports KiB
    (run / "summary.json").write_text(json.dumps(summary))
    return summary


MODES_LR = {"lora": "1e-3", "last2": "2e-4", "full": "1e-4"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a finished `altclip demo --out` folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--langs", nargs="+", default=["en", "zh", "es"], help="the training captions' languages")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--val-every", type=int, default=20)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from altclip.runtime.hardware import detect_cpu
    from altclip.tables import format_table

    args.out.mkdir(parents=True, exist_ok=True)
    train, test = make_domain(args.demo, args.out, args.langs)
    base = args.demo / "contrastive" / "model"
    results: dict[str, Any] = {"before": {"scores": scores(str(base), test), "trainable": 0, "share": 0.0}}
    for name in args.modes:
        summary = train_mode(args, name, train)
        summary["scores"] = scores(str(args.out / name / "model"), test)
        results[name] = summary
        print(f"{name}: done in {summary['seconds']:.0f} s", file=sys.stderr, flush=True)
    if "lora" in results:
        merged = args.out / "lora" / "model"
        over_base = scores(str(base), test, adapter=str(args.out / "lora" / "adapter"))
        theirs = transformers_scores(merged, test)
        results["lora"]["check"] = {
            "adapter_over_base": over_base,
            "transformers": theirs,
            "max_difference": max(abs(theirs[k] - results["lora"]["scores"][k]) for k in theirs),
        }
    cpu = detect_cpu().describe()
    if args.json:
        print(json.dumps({"cpu": cpu, "results": results}, indent=1, ensure_ascii=False))
        return 0

    def mean(values: dict[str, float]) -> float:
        return sum(values.values()) / len(values)

    print(f"CPU: {cpu}; the demo's emoji as grey negatives, test split (all 14 languages), MR")
    headers = ["model", "trainable", "share", "English", "Chinese", "mean of 14", "best step", "peak memory", "time"]
    rows = []
    for name, r in results.items():
        s = r["scores"]
        rows.append(
            [
                name,
                f"{r.get('trainable', 0):,}",
                f"{r.get('share', 0):.1%}",
                f"{s['en']:.1f}",
                f"{s['zh']:.1f}",
                f"{mean(s):.1f}",
                str(r.get("best_step", "")),
                f"{r['peak_bytes'] / 2**20:.0f} MiB" if "peak_bytes" in r else "",
                f"{r['seconds']:.0f} s" if "seconds" in r else "",
            ]
        )
    print(format_table(headers, rows))
    if "lora" in results:
        print(
            f"merged LoRA read by transformers: largest MR difference {results['lora']['check']['max_difference']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
