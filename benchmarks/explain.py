"""Cost of a relevance map against one image embedding, on the same tower in one run (float32, CPU).

    .venv/bin/python benchmarks/explain.py                 # ViT-L/14 at 224 (BAAI/AltCLIP's image tower)
    .venv/bin/python benchmarks/explain.py --size base     # ViT-B/16 at 224
    .venv/bin/python benchmarks/explain.py --json out.json

Timed, for one 640 x 480 photo: the image embedding (the tower's forward pass on the fast attention path, under
inference mode, as ``Embedder.embed_pixels`` runs it) and one map by each method, including carrying the map back
to the photo's pixels. Maps of several texts at once are timed too (``explain_batch``). Each figure is the median
of ``--repeat`` runs after a warm-up; ratios are to the embedding. transformers' CLIPVisionModelWithProjection on
the same weights (sdpa) is timed beside it, for scale. Random weights: the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from altclip.explain.relevance import relevance, to_image, windowed_relevance
from altclip.modeling.config import CLIPVisionConfig
from altclip.modeling.models import normalize
from altclip.modeling.vision import CLIPVisionTransformer
from altclip.processing.image import CLIPImageProcessor
from altclip.runtime.hardware import detect_cpu

SIZES = {
    "large": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
              "patch_size": 14, "projection_dim": 768},
    "base": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
             "patch_size": 16, "projection_dim": 512},
}  # fmt: skip


def median_seconds(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="large")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    sizes = dict(SIZES[args.size])
    dim = sizes.pop("projection_dim")
    config = CLIPVisionConfig(image_size=224, **sizes)
    vision = CLIPVisionTransformer(config).eval()
    projection = torch.nn.Linear(config.hidden_size, dim, bias=False)
    processor = CLIPImageProcessor()
    width, height = 640, 480
    photo = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8).numpy()
    pixels = processor(photo)["pixel_values"]
    wide = CLIPImageProcessor(size={"shortest_edge": 448}, do_center_crop=False)
    wide_pixels = wide(photo)["pixel_values"]
    texts = {n: normalize(torch.randn(1, n, dim)) for n in (1, 8)}

    def embed() -> None:
        with torch.inference_mode():
            normalize(projection(vision(pixels).pooler_output))

    def one_map(method: str, layers: int = 1, n: int = 1):
        def run() -> None:
            maps, _ = relevance(vision, projection, pixels, texts[n], method, layers)
            to_image(maps[0], processor, width, height)

        return run

    def zoomed(method: str):
        def run() -> None:
            grid = windowed_relevance(vision, projection, wide_pixels, texts[1][0], 224, method)
            to_image(grid, wide, width, height)

        return run

    base = median_seconds(embed, args.repeat)
    cases = {
        "image embedding": embed,
        "map: dense (default)": one_map("dense"),
        "map: attention, last layer": one_map("attention"),
        f"map: attention, all {config.num_hidden_layers} layers": one_map("attention", config.num_hidden_layers),
        "8 maps: dense": one_map("dense", n=8),
        "8 maps: attention, last layer": one_map("attention", n=8),
        "map: dense, zoom 2 (12 windows)": zoomed("dense"),
    }
    rows = []
    for name, fn in cases.items():
        seconds = base if fn is embed else median_seconds(fn, args.repeat)
        rows.append({"case": name, "ms": round(1000 * seconds, 1), "x_embedding": round(seconds / base, 2)})
    try:
        import transformers

        theirs = transformers.CLIPVisionModelWithProjection(
            transformers.CLIPVisionConfig(image_size=224, projection_dim=dim, **sizes, attn_implementation="sdpa")
        ).eval()

        def their_embed() -> None:
            with torch.inference_mode():
                theirs(pixel_values=pixels)

        seconds = median_seconds(their_embed, args.repeat)
        rows.append({"case": "transformers image embedding (sdpa)", "ms": round(1000 * seconds, 1),
                     "x_embedding": round(seconds / base, 2)})  # fmt: skip
    except ImportError:
        pass
    print(f"CPU: {detect_cpu().describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"ViT-{args.size} at 224, one {width} x {height} photo, float32, median of {args.repeat}")
    print(f"{'case':<40} {'ms':>9} {'x embedding':>12}")
    for row in rows:
        print(f"{row['case']:<40} {row['ms']:>9.1f} {row['x_embedding']:>12.2f}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": detect_cpu().describe(), "size": args.size, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
