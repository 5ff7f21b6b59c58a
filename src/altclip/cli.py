"""The ``altclip`` command: parse -> call -> print. Nothing imports this module."""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any

EXAMPLES = """\
examples:
  altclip classify cat.jpg dog.jpg --labels cat dog bird
  altclip classify cat.jpg --labels 猫 狗 鸟 --lang zh
  altclip similarity --image cat.jpg --text "a photo of a cat" "一张狗的照片"
  altclip embed ~/photos --out ~/photos.emb --workers 4
  altclip index ~/photos.emb --exact-max 100000
  altclip search ~/photos.emb --text "夕阳下的海滩" -k 5
  altclip search ~/photos.emb --image query.jpg --json

Models are hub names (default BAAI/AltCLIP, read from the Hugging Face cache; HF_HUB_OFFLINE=1 is
honoured) or local folders written by save_pretrained.
"""


# -- output -----------------------------------------------------------------------------------------


def display_width(text: str) -> int:
    """Columns a string takes in a terminal: East Asian wide characters count two, combining marks none."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1 for ch in text)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table whose columns line up with wide (CJK) characters too."""
    cells = [[str(h) for h in headers]] + [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [max(display_width(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(cell + " " * (w - display_width(cell)) for cell, w in zip(row, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def emit(args: argparse.Namespace, data: Any, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print(format_table(headers, rows))


# -- commands ---------------------------------------------------------------------------------------


def load_embedder(args: argparse.Namespace, model: str | None = None):
    from altclip.tasks import DEFAULT_MODEL, Embedder

    return Embedder.from_pretrained(
        model or args.model or DEFAULT_MODEL, device=args.device, dtype=args.dtype, batch_size=args.batch_size
    )


def cmd_classify(args: argparse.Namespace) -> int:
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
    embedder = load_embedder(args)
    cosine = embedder.similarity(args.image, args.text).float()
    probs = (embedder.logit_scale * cosine).softmax(dim=-1)
    data = {"images": args.image, "texts": args.text, "cosine": cosine.tolist(), "probabilities": probs.tolist()}
    rows = [
        (image, text, float(cosine[i, j]), float(probs[i, j]))
        for i, image in enumerate(args.image)
        for j, text in enumerate(args.text)
    ]
    emit(args, data, ["image", "text", "cosine", "probability"], rows)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from altclip.tasks import DEFAULT_MODEL
    from altclip.tasks.collection import embed_collection
    from altclip.tasks.index import build_index

    model = args.model or DEFAULT_MODEL
    embedder = load_embedder(args, model)
    try:
        summary = embed_collection(
            args.source,
            args.out,
            embedder,
            model,
            batch_size=args.batch_size,
            workers=args.workers,
            shard_size=args.shard_size,
            progress=not args.json,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished shards are kept in {args.out}: run the same command to resume", file=sys.stderr)
        return 130
    if summary["embedded"] and not args.no_index:
        summary["index"] = build_index(args.out, exact_max=args.exact_max)
    rows = [(status, count) for status, count in summary["by_status"].items()]
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
        return 0
    print(format_table(["status", "files"], rows))
    if summary["failures"]:
        shown = summary["failures"][:20]
        print(f"\nskipped {summary['skipped']} files" + (" (first 20):" if summary["skipped"] > 20 else ":"))
        print(format_table(["status", "error"], [(f["status"], f["error"]) for f in shown]))
    if "index" in summary:
        print(f"\nindex: {summary['index']['type']} over {summary['index']['count']} images in {args.out}/index")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from altclip.tasks.index import build_index

    info = build_index(args.folder, exact_max=args.exact_max)
    emit(args, info, ["key", "value"], list(info.items()))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from altclip.tasks.index import SearchIndex

    index = SearchIndex(args.folder)
    embedder = load_embedder(args, args.model or index.collection.manifest["model"])
    query = embedder.embed_texts([args.text]) if args.text is not None else embedder.embed_images([args.image])
    hits = index.search(query.float().cpu().numpy(), k=args.k)[0]
    emit(
        args,
        [{"rank": h.rank, "score": h.score, "path": h.path} for h in hits],
        ["rank", "score", "path"],
        [(h.rank, h.score, h.path) for h in hits],
    )
    return 0


# -- parser -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="hub name or local folder (default BAAI/AltCLIP)")
    common.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if present)")
    common.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    common.add_argument("--batch-size", type=int, default=32)
    common.add_argument("--workers", type=int, default=2, help="image decoding processes (default 2)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    parser = argparse.ArgumentParser(
        prog="altclip",
        description="AltCLIP and CLIP: multilingual image-text models.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            parents=[common],
            help=help,
            description=help,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add(
        "classify",
        "zero-shot classification of images into labels, in any language",
        "altclip classify cat.jpg --labels 猫 狗 --lang zh",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", nargs="+", required=True, help="class names")
    p.add_argument("--template", action="append", help="a prompt with {} for the label; repeat for an ensemble")
    p.add_argument("--lang", default="en", help="language of the built-in templates (en, zh, ja, ko, ar, ...)")
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(run=cmd_classify)

    p = add(
        "similarity",
        "cosine similarity of images and texts",
        'altclip similarity --image cat.jpg --text "a cat" "一只狗"',
    )
    p.add_argument("--image", nargs="+", required=True)
    p.add_argument("--text", nargs="+", required=True)
    p.set_defaults(run=cmd_similarity)

    p = add(
        "embed",
        "embed a folder (or a list of paths) of images into float16 shards, resumably, then index it",
        "altclip embed ~/photos --out ~/photos.emb --workers 4",
    )
    p.add_argument("source", help="a folder (walked recursively) or a text file listing image paths")
    p.add_argument("--out", required=True, help="output folder; rerun the same command to resume")
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--no-index", action="store_true", help="skip building the FAISS index")
    p.add_argument("--exact-max", type=int, default=50_000, help="largest collection given an exact index")
    p.set_defaults(run=cmd_embed)

    p = add("index", "build the FAISS index of an embedding folder", "altclip index ~/photos.emb")
    p.add_argument("folder")
    p.add_argument("--exact-max", type=int, default=50_000, help="largest collection given an exact index")
    p.set_defaults(run=cmd_index)

    p = add(
        "search",
        "search an embedding folder by text (any language) or by image",
        'altclip search ~/photos.emb --text "一只猫" -k 5',
    )
    p.add_argument("folder")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text")
    query.add_argument("--image")
    p.add_argument("-k", type=int, default=10)
    p.set_defaults(run=cmd_search)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from altclip.checkpoint import CheckpointNotFoundError

    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, CheckpointNotFoundError, ImportError) as err:
        print(f"altclip {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
