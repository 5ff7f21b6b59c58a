"""altclip classify, similarity and explain: a model over a few images and texts, answered at once."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from altclip.cli.common import Subparsers, command, emit, load_embedder


def cmd_classify(args: argparse.Namespace) -> int:
    """zero-shot classification of images into labels, in any language

    examples:
      altclip classify cat.jpg --labels 猫 狗 --lang zh
    """
    embedder = load_embedder(args)
    probs = embedder.classify(args.images, args.labels, templates=args.template, lang=args.lang)
    k = min(args.top_k, len(args.labels))
    data, rows = [], []
    for image, row in zip(args.images, probs, strict=True):
        top = row.topk(k)
        predictions = [
            {"label": args.labels[i], "probability": float(p)}
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ]
        data.append({"image": image, "predictions": predictions})
        rows += [
            (image if rank == 0 else "", rank + 1, p["label"], p["probability"]) for rank, p in enumerate(predictions)
        ]
    emit(args, data, ["image", "rank", "label", "probability"], rows)
    return 0


def cmd_similarity(args: argparse.Namespace) -> int:
    """cosine similarity of images and texts

    examples:
      altclip similarity --image cat.jpg --text "a cat" "一只狗"
    """
    embedder = load_embedder(args)
    cosine = embedder.similarity(args.image, args.text).float()
    probs = (embedder.logit_scale * cosine).softmax(dim=-1)
    data = {
        "images": args.image,
        "texts": args.text,
        "cosine": cosine.tolist(),
        "probabilities": probs.tolist(),
        "precision": embedder.precision.to_json(),
    }
    rows = [
        (image, text, float(cosine[i, j]), float(probs[i, j]))
        for i, image in enumerate(args.image)
        for j, text in enumerate(args.text)
    ]
    emit(args, data, ["image", "text", "cosine", "probability"], rows)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """where in an image each text matched: one PNG per text, the relevance map over the image (any language)

    examples:
      altclip explain cat.jpg --text 猫 "a red ball" --out maps/
      altclip explain street.jpg --text 자전거 --lang ko --zoom 2 --out maps/ --json   # also the raw .npy maps
    """
    from altclip.explain.drawing import captioned, overlay, slug
    from altclip.explain.relevance import peak
    from altclip.files import write_image, write_npy
    from altclip.processing.image import to_rgb

    picture = to_rgb(args.image)  # (height, width, 3) uint8, EXIF orientation applied
    embedder = load_embedder(args)
    maps = embedder.explain_batch(
        picture, args.text, lang=args.lang, method=args.method, layers=args.layers, zoom=args.zoom
    )
    out = Path(args.out)
    stem, data, rows = Path(args.image).stem, [], []
    for i, (text, relevance) in enumerate(zip(args.text, maps, strict=True)):
        name = f"{stem}-{i + 1:02d}-{slug(text)}"
        png = write_image(out / f"{name}.png", captioned(overlay(picture, relevance), text))
        row: dict[str, Any] = {"text": text, "png": str(png)}
        if args.json:
            row["npy"] = str(write_npy(out / f"{name}.npy", relevance))
        x, y = peak(relevance)
        row["peak"] = [x, y]
        data.append(row)
        rows.append((text, f"({x}, {y})", str(png)))
    summary = {"image": args.image, "method": args.method, "zoom": args.zoom, "maps": data}
    emit(args, summary, ["text", "peak (x, y)", "picture"], rows)
    return 0


def register(sub: Subparsers, model: argparse.ArgumentParser) -> None:
    p = command(sub, "classify", cmd_classify, [model])
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", nargs="+", required=True, help="class names")
    p.add_argument("--template", action="append", help="a prompt with {} for the label; repeat for an ensemble")
    p.add_argument("--lang", default="en", help="language of the built-in templates (en, zh, ja, ko, ar, ...)")
    p.add_argument("--top-k", type=int, default=5)

    p = command(sub, "similarity", cmd_similarity, [model])
    p.add_argument("--image", nargs="+", required=True)
    p.add_argument("--text", nargs="+", required=True)

    p = command(sub, "explain", cmd_explain, [model])
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--text", nargs="+", required=True, help="one map per text")
    p.add_argument("--lang", help="put each text in this language's prompt templates, as classify does")
    p.add_argument("--out", required=True, help="folder for the pictures (and with --json the .npy maps)")
    p.add_argument(
        "--method",
        choices=("dense", "attention"),
        default="dense",
        help="dense: MaskCLIP's patch-text cosine (default); attention: Chefer et al.'s gradient-weighted attention",
    )
    p.add_argument("--layers", type=int, default=1, help="attention method: how many last layers to explain")
    p.add_argument(
        "--zoom", type=int, default=1, help="read the image at N times the model's input in windows (small things)"
    )
