"""End-to-end folder embedding: `altclip embed` against a transformers loop, on the same JPEG photos.

    .venv/bin/python benchmarks/folder.py                       # ViT-L/14 (BAAI/AltCLIP's image tower)
    .venv/bin/python benchmarks/folder.py --size base           # ViT-B/32 (openai/clip-vit-base-patch32's)
    .venv/bin/python benchmarks/folder.py --photo 1600x1200 --images 32

The photos are phone-sized JPEGs (default 4032x3024, quality 92, 4:2:0) made from scikit-image's sample
photographs, upscaled, with sensor-like grain so that they carry fine detail. Measured, in one run:

- preprocessing per image on one core: decoding and resizing, exact (as transformers) and with Pillow's
  JPEG draft mode (decoding at 1/2-1/8 scale, at least 1x or 2x the resize target), and transformers'
  own ``Image.open`` + ``CLIPImageProcessor``;
- the pixel difference draft mode makes (8-bit levels, after resize and crop) and the embedding cosine;
- the model alone (image embeddings/s, batch 32), so the share of preprocessing in the whole is visible;
- the whole job: transformers as its docs do it (open, process, ``get_image_features``, batches of 32)
  against ``altclip embed`` (worker processes decode while the model runs; parts written to disk) with
  the exact decode, draft decoding (its default), draft + torch.compile, draft + int8, and draft + an
  ONNX export quantized to int8 (`--backend onnx`; the export is not timed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from speed import SIZES, flops_per_image  # benchmarks/speed.py, beside this script

VISION = {
    "real": SIZES["real"]["vision_config"],  # ViT-L/14, as BAAI/AltCLIP and openai/clip-vit-large-patch14
    "base": {  # ViT-B/32, as openai/clip-vit-base-patch32
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "patch_size": 32,
        "image_size": 224,
    },
}
# the text tower plays no part here: a small one keeps the checkpoint light
TEXT = {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "project_dim": 64}


def make_photos(folder: Path, count: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """Phone-sized JPEGs from scikit-image's colour photographs: upscaled, cropped, with grain."""
    import skimage.data

    sources = ["astronaut", "coffee", "chelsea", "rocket", "retina", "hubble_deep_field", "immunohistochemistry"]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        source = Image.fromarray(getattr(skimage.data, sources[i % len(sources)])()[..., :3])
        scale = max(width / source.width, height / source.height) * rng.uniform(1.0, 1.3)
        big = source.resize((round(source.width * scale), round(source.height * scale)), Image.Resampling.BICUBIC)
        left, top = rng.integers(0, big.width - width + 1), rng.integers(0, big.height - height + 1)
        pixels = np.asarray(big.crop((left, top, left + width, top + height)), dtype=np.float32)
        pixels += rng.normal(0, 6, pixels.shape).astype(np.float32)  # sensor grain: fine detail to decode
        photo = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        paths.append(folder / f"photo-{i:04d}.jpg")
        photo.save(paths[-1], quality=92, subsampling=2)
    return paths


def per_image(fn, paths: list[Path]) -> float:
    """Seconds per image of ``fn(path)``, after one warm-up call."""
    fn(paths[0])
    start = time.perf_counter()
    for path in paths:
        fn(path)
    return (time.perf_counter() - start) / len(paths)


def preprocessing(paths: list[Path], size: int) -> dict[str, Any]:
    """Decode and resize costs (ms per image; Pillow and NumPy use one core), transformers' path and altclip's."""
    import transformers

    from altclip.processing.image import CLIPImageProcessor, load_image

    ours = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    theirs = transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    sides = {"exact": None, "draft 1x": size, "draft 2x": 2 * size}
    out: dict[str, Any] = {
        "transformers": 1e3 * per_image(lambda p: theirs(images=Image.open(p).convert("RGB")), paths)
    }
    for name, side in sides.items():
        decode = per_image(lambda p, side=side: load_image(p, side), paths)
        decoded = [load_image(p, side) for p in paths[:8]]
        resize = sum(per_image(ours.preprocess_one, [im]) for im in decoded) / len(decoded)
        out[name] = {"decode_ms": 1e3 * decode, "resize_ms": 1e3 * resize}
    return out


def draft_difference(paths: list[Path], size: int, model) -> dict[str, Any]:
    """How far draft decoding moves the model's input (8-bit levels) and its embeddings (cosine)."""
    from altclip.modeling.models import normalize
    from altclip.processing.image import CLIPImageProcessor, load_image

    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    std = np.asarray(processor.image_std, dtype=np.float32)[:, None, None]

    def pixels(side: int | None) -> np.ndarray:
        return np.stack([processor.preprocess_one(load_image(p, side)) for p in paths])

    exact = pixels(None)
    with torch.inference_mode():
        reference = normalize(model.get_image_features(torch.from_numpy(exact)))
    out = {}
    for name, side in (("draft 1x", size), ("draft 2x", 2 * size)):
        draft = pixels(side)
        levels = np.abs(draft - exact) * std * 255  # back to 8-bit levels
        with torch.inference_mode():
            cosine = (normalize(model.get_image_features(torch.from_numpy(draft))) * reference).sum(-1)
        out[name] = {
            "mean_levels": float(levels.mean()),
            "p99_levels": float(np.percentile(levels, 99)),
            "max_levels": float(levels.max()),
            "min_cosine": float(cosine.min()),
        }
    return out


def transformers_loop(folder: Path, paths: list[Path], batch_size: int) -> float:
    """Images per second, as the transformers docs embed images: open, process, get_image_features."""
    import transformers

    model = transformers.AltCLIPModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    processor = transformers.CLIPImageProcessor.from_pretrained(folder)
    with torch.inference_mode():
        model.get_image_features(**processor(images=Image.open(paths[0]).convert("RGB"), return_tensors="pt"))
        start = time.perf_counter()
        for i in range(0, len(paths), batch_size):
            images = [Image.open(p).convert("RGB") for p in paths[i : i + batch_size]]
            model.get_image_features(**processor(images=images, return_tensors="pt"))
        return len(paths) / (time.perf_counter() - start)


def altclip_embed(folder: Path, photos: Path, out: Path, batch_size: int, workers: int, **options: Any) -> float:
    """Images per second of ``altclip embed`` (parts on disk, no index), after warm-up calls at batch 1 and
    ``batch_size`` (where torch.compile compiles: a long job pays that once)."""
    from altclip.embedder import Embedder
    from altclip.search.collection import embed_collection

    precision, backend = options.pop("precision", None), options.pop("backend", "torch")
    if backend == "onnx":  # the vision tower exported with ONNX Runtime's int8 quantization
        import altclip
        from altclip.runtime.export import export_onnx

        model = altclip.AltCLIPModel.from_pretrained(folder)
        export_onnx(model, out.with_name("onnx-int8"), towers=["vision"], quantize="int8")
        altclip.AltCLIPProcessor.from_pretrained(folder).save_pretrained(out.with_name("onnx-int8"))
        del model
        folder = out.with_name("onnx-int8")
    embedder = Embedder.from_pretrained(folder, precision=precision, batch_size=batch_size, backend=backend)
    size = embedder.processor.image_processor.crop_size["height"]
    embedder.embed_pixels(torch.randn(1, 3, size, size))
    embedder.embed_pixels(torch.randn(batch_size, 3, size, size))
    start = time.perf_counter()
    summary = embed_collection(
        photos, out, embedder, str(folder), batch_size=batch_size, workers=workers, progress=False, **options
    )
    seconds = time.perf_counter() - start
    assert summary.embedded == summary.files, summary
    return summary.files / seconds


def model_only(folder: Path, size: int, batch_size: int) -> float:
    """Image embeddings per second of altclip's model alone, on ready pixels."""
    import altclip

    model = altclip.AltCLIPModel.from_pretrained(folder)
    px = torch.randn(batch_size, 3, size, size)
    with torch.inference_mode():
        model.get_image_features(px[:1])
        start = time.perf_counter()
        model.get_image_features(px)
        return batch_size / (time.perf_counter() - start)


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    from altclip.tables import format_table

    pre = results["preprocessing"]
    model_s = 1 / results["model_per_s"]
    rows = [["transformers (Image.open + CLIPImageProcessor)", f"{pre['transformers']:.1f}", "", "", ""]]
    for name in ("exact", "draft 1x", "draft 2x"):
        total = pre[name]["decode_ms"] + pre[name]["resize_ms"]
        rows.append(
            [
                f"altclip {name}",
                f"{total:.1f}",
                f"{pre[name]['decode_ms']:.1f}",
                f"{pre[name]['resize_ms']:.1f}",
                f"{total / 1e3 / (total / 1e3 + model_s):.0%}",
            ]
        )
    lines = [
        f"{args.images} photos of {args.photo}, ViT {args.size} ({results['gflop_per_image']:.1f} GFLOP/image), "
        f"{torch.get_num_threads()} threads, {args.workers} decoding workers",
        "",
        "preprocessing on one core (ms per image); share = preprocessing / (preprocessing + model) if run serially",
        format_table(["path", "ms/image", "decode", "resize+crop", "share"], rows),
        "",
        "draft decoding against the exact preprocessing (model input in 8-bit levels; embedding cosine)",
        format_table(
            ["mode", "mean |diff|", "p99", "max", "min cosine"],
            [
                [
                    name,
                    f"{d['mean_levels']:.2f}",
                    f"{d['p99_levels']:.1f}",
                    f"{d['max_levels']:.1f}",
                    f"{d['min_cosine']:.6f}",
                ]
                for name, d in results["draft"].items()
            ],
        ),
        "",
        f"model alone: {results['model_per_s']:.2f} images/s; preprocessing capacity of {args.workers} workers "
        f"(exact): {args.workers * 1e3 / (pre['exact']['decode_ms'] + pre['exact']['resize_ms']):.1f} images/s",
        "",
    ]
    hf = results["end_to_end"]["transformers (docs loop)"]
    lines.append(
        format_table(
            ["end to end", "images/s", "vs transformers", "of model-only rate"],
            [
                [name, f"{rate:.2f}", f"{rate / hf:.2f}x", f"{rate / results['model_per_s']:.0%}"]
                for name, rate in results["end_to_end"].items()
            ],
        )
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(VISION), default="real")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--photo", default="4032x3024", help="photo width x height")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="altclip embed's decoding processes (its default)")
    parser.add_argument("--json", help="also write the raw numbers here")
    args = parser.parse_args()
    import transformers

    width, height = (int(v) for v in args.photo.lower().split("x"))
    vision = VISION[args.size]
    size = vision["image_size"]
    results: dict[str, Any] = {"gflop_per_image": flops_per_image(vision) / 1e9}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "model"
        torch.manual_seed(0)
        config = {"text_config": TEXT, "vision_config": vision, "projection_dim": 768}
        transformers.AltCLIPModel(transformers.AltCLIPConfig.from_dict(config)).save_pretrained(folder)
        processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )
        processor.save_pretrained(folder)
        from altclip.processing.tokenization import XLMRobertaTokenizer, train_sentencepiece

        spm = train_sentencepiece([f"a photo number {i}" for i in range(200)], tmp / "spm.model", vocab_size=60)
        XLMRobertaTokenizer.from_sentencepiece(spm).save_pretrained(folder)

        print("making photos ...", file=sys.stderr, flush=True)
        photos = make_photos(tmp / "photos", args.images, width, height)
        print("preprocessing ...", file=sys.stderr, flush=True)
        results["preprocessing"] = preprocessing(photos[:16], size)
        import altclip

        results["draft"] = draft_difference(photos[:16], size, altclip.AltCLIPModel.from_pretrained(folder))
        results["model_per_s"] = model_only(folder, size, args.batch_size)
        e2e = results["end_to_end"] = {}
        print("transformers loop ...", file=sys.stderr, flush=True)
        e2e["transformers (docs loop)"] = transformers_loop(folder, photos, args.batch_size)
        for name, options in (
            ("altclip embed --exact-decode", {}),
            ("altclip embed (draft decoding)", {"draft": True}),
            ("altclip embed --backend compile", {"draft": True, "backend": "compile"}),
            ("altclip embed --precision int8", {"draft": True, "precision": "int8"}),
            ("altclip embed --backend onnx (int8 export)", {"draft": True, "backend": "onnx"}),
        ):
            print(f"{name} ...", file=sys.stderr, flush=True)
            out = tmp / f"out-{len(e2e)}"
            e2e[name] = altclip_embed(folder, tmp / "photos", out, args.batch_size, args.workers, **options)
    print(report(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
