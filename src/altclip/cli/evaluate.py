"""altclip eval retrieval and zeroshot: quality on a benchmark, per language."""

from __future__ import annotations

import argparse
from pathlib import Path

from altclip.cli.common import Subparsers, command, emit, group, load_embedder, print_json
from altclip.errors import InputError


def cmd_retrieval(args: argparse.Namespace) -> int:
    """image-text retrieval R@1/5/10 both ways and MR, per language

    Image-to-text and text-to-image recall@1/5/10 and their mean (MR) per language, computed in bounded memory,
    on a pairs file (JSONL or CSV: image, caption, lang; any number of captions per image) or a public benchmark
    in its published layout (--format). Where BAAI/AltCLIP's published MR is known for the set (Flickr30k), the
    table prints it beside ours.

    examples:
      altclip eval retrieval flickr30k-test.jsonl --report report/
      altclip eval retrieval --format xtd10 XTD10/ --images coco/train2014 --langs en zh ja
      altclip eval retrieval --format xm3600 crossmodal3600/
      altclip eval retrieval --format multi30k multi30k-dataset/ --images flickr30k-images
      altclip eval retrieval --format cn-clip datasets/Flickr30k-CN --split test
    """
    from altclip.evaluate.datasets import published_for, read_retrieval_set
    from altclip.evaluate.report import ReportRow, paper_table, write_report
    from altclip.evaluate.retrieval import evaluate_set

    if bool(args.data) == bool(args.data_option):
        raise InputError("give the data once: as DATA or as --data")
    data_path = args.data or args.data_option
    data = read_retrieval_set(data_path, args.format, args.images, args.split, args.langs)
    published = published_for(data_path, data.format, args.benchmark)
    embedder = load_embedder(args)  # after the data, so a bad layout fails before a model loads
    scores, skipped = evaluate_set(embedder, data, chunk=args.chunk, workers=args.workers, progress=not args.json)
    name = args.model or "BAAI/AltCLIP"
    method = args.method or Path(name).name
    rows = [ReportRow(lang, method, s, published.get(lang)) for lang, s in scores.items()]
    if args.report:
        write_report(rows, args.report, title=f"{Path(data_path).name}: {name}")
    if args.json:
        print_json({"results": [r.to_json() for r in rows], "skipped": skipped})
    else:
        print(paper_table(rows))
        if skipped:
            print("\nskipped: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
    return 0


def cmd_zeroshot(args: argparse.Namespace) -> int:
    """zero-shot top-1 / top-5 accuracy and per-class recall on an image folder

    Zero-shot classification of ROOT/<class>/<image> with prompt ensembles.

    examples:
      altclip eval zeroshot --data imagenet-val --classnames names_zh.txt --lang zh
    """
    from altclip.evaluate.zeroshot import evaluate_zeroshot, read_classnames, read_image_folder

    classes, _ = read_image_folder(args.data)
    names = read_classnames(args.classnames, classes)
    embedder = load_embedder(args)
    result = evaluate_zeroshot(
        embedder,
        args.data,
        names,
        lang=args.lang,
        templates=args.template,
        workers=args.workers,
        progress=not args.json,
    )
    rows = [
        ("top-1", f"{result.top1:.2f}"),
        ("top-5", f"{result.top5:.2f}"),
        ("mean per-class recall", f"{result.mean_per_class_recall:.2f}"),
        ("images", result.images),
        *((f"recall: {name}", f"{value:.1f}") for name, value in result.per_class_recall.items()),
    ]
    emit(args, result.to_json(), ["metric", "value"], rows)
    return 0


def register(sub: Subparsers, model: argparse.ArgumentParser) -> None:
    from altclip.evaluate.datasets import FORMATS

    tasks = group(
        sub,
        "eval",
        "evaluate: retrieval recall per language, zero-shot accuracy",
        "task",
        "altclip eval retrieval flickr30k-test.jsonl --report report/\n"
        "altclip eval zeroshot --data imagenet-val --classnames names_zh.txt --lang zh",
    )
    p = command(tasks, "retrieval", cmd_retrieval, [model])
    p.add_argument("data", nargs="?", help="the pairs file or the benchmark's folder")
    p.add_argument("--data", dest="data_option", metavar="DATA", help="the same, as an option")
    p.add_argument("--format", choices=FORMATS, help="the data's layout (default: guessed from DATA)")
    p.add_argument("--images", help="where the benchmark's image files are (default: DATA/images)")
    p.add_argument("--split", default="test", help="cn-clip: the split to read (test, valid, train)")
    p.add_argument("--langs", nargs="+", metavar="LANG", help="evaluate only these languages")
    p.add_argument("--benchmark", help="whose published numbers to print beside ours (flickr30k; default: guessed)")
    p.add_argument("--method", help="the model's name in the table (default: the model's folder name)")
    p.add_argument("--chunk", type=int, default=4096, help="similarity block size (memory bound)")
    p.add_argument("--report", help="folder for report.json, report.txt and report.png")

    p = command(tasks, "zeroshot", cmd_zeroshot, [model])
    p.add_argument("--data", required=True, help="a folder with one subfolder of images per class")
    p.add_argument(
        "--classnames", required=True, help="one name per line (sorted folder order) or folder<TAB>name lines"
    )
    p.add_argument("--lang", default="en")
    p.add_argument("--template", action="append", help="a prompt with {}; repeat for an ensemble")
