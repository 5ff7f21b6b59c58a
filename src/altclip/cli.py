"""The ``altclip`` command: parse -> call -> print. Nothing imports this module."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from altclip.tables import format_table

EXAMPLES = """\
examples:
  altclip classify cat.jpg dog.jpg --labels cat dog bird
  altclip classify cat.jpg --labels 猫 狗 鸟 --lang zh
  altclip similarity --image cat.jpg --text "a photo of a cat" "一张狗的照片"
  altclip explain cat.jpg --text 猫 "a red ball" --out maps/
  altclip embed ~/photos --out ~/photos.emb --workers 4
  altclip embed 'shards/{00000..00127}.tar' --out shards.emb --captions
  torchrun --nproc_per_node 4 -m altclip.cli embed 'shards/{00000..00127}.tar' --out shards.emb
  altclip index ~/photos.emb --kind auto --memory 4GB
  altclip search ~/photos.emb --text "夕阳下的海滩" -k 5
  altclip search ~/photos.emb --image query.jpg --json
  altclip serve ~/photos.emb    # then open http://127.0.0.1:8000
  altclip demo --out altclip-demo
  altclip export onnx --model BAAI/AltCLIP --out altclip-onnx
  altclip classify cat.jpg --labels cat dog --model altclip-onnx --backend onnx
  altclip doctor                # this machine, and which precision is fastest on it
  altclip eval retrieval --data flickr30k-cn.jsonl --report report/
  altclip eval zeroshot --data imagenet-val --classnames names_zh.txt --lang zh
  altclip init --clip openai/clip-vit-large-patch14 --text FacebookAI/xlm-roberta-large --out student
  altclip train distill --teacher openai/clip-vit-large-patch14 --student student --data parallel.tsv --out run1
  altclip train contrastive --model run1/model --data pairs.jsonl --out run2 --precision bf16
  torchrun --nproc_per_node 8 -m altclip.cli train contrastive --model run1/model --data pairs.jsonl --out run2

Models are hub names (default BAAI/AltCLIP, read from the Hugging Face cache; HF_HUB_OFFLINE=1 is
honoured) or local folders written by save_pretrained.
"""


# -- output -----------------------------------------------------------------------------------------


def emit(args: argparse.Namespace, data: Any, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print(format_table(headers, rows))


# -- commands ---------------------------------------------------------------------------------------


AUTO_DTYPE_COMMANDS = ("classify", "similarity", "embed", "search", "serve")


def dtype_of(args: argparse.Namespace) -> str:
    """--dtype as given, else auto for the bulk and interactive commands and float32 for the rest."""
    return args.dtype or ("auto" if args.command in AUTO_DTYPE_COMMANDS else "float32")


def load_embedder(args: argparse.Namespace, model: str | None = None, device: Any = None):
    from altclip.tasks import DEFAULT_MODEL, Embedder

    embedder = Embedder.from_pretrained(
        model or args.model or DEFAULT_MODEL,
        device=device or args.device,
        dtype=dtype_of(args),
        batch_size=args.batch_size,
        backend=args.backend,
    )
    print(f"altclip: {embedder.precision.describe()}", file=sys.stderr)  # stderr: stdout stays the result
    return embedder


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
    data = {
        "images": args.image,
        "texts": args.text,
        "cosine": cosine.tolist(),
        "probabilities": probs.tolist(),
        "precision": embedder.precision.to_dict(),
    }
    rows = [
        (image, text, float(cosine[i, j]), float(probs[i, j]))
        for i, image in enumerate(args.image)
        for j, text in enumerate(args.text)
    ]
    emit(args, data, ["image", "text", "cosine", "probability"], rows)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np

    from altclip import checkpoint
    from altclip.explain import peak
    from altclip.heatmap import captioned, overlay, slug
    from altclip.image import to_rgb

    picture = to_rgb(args.image)  # (height, width, 3) uint8, EXIF orientation applied
    embedder = load_embedder(args)
    maps = embedder.explain_batch(
        picture, args.text, lang=args.lang, method=args.method, layers=args.layers, zoom=args.zoom
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem, data, rows = Path(args.image).stem, [], []
    for i, (text, relevance) in enumerate(zip(args.text, maps, strict=True)):
        name = f"{stem}-{i + 1:02d}-{slug(text)}"
        png = out / f"{name}.png"
        page = captioned(overlay(picture, relevance), text)
        with checkpoint.atomic_path(png) as tmp:
            page.save(tmp, format="PNG")
        row: dict[str, Any] = {"text": text, "png": str(png)}
        if args.json:
            npy = out / f"{name}.npy"
            with checkpoint.atomic_path(npy) as tmp, tmp.open("wb") as f:
                np.save(f, relevance, allow_pickle=False)
            row["npy"] = str(npy)
        x, y = peak(relevance)
        row["peak"] = [x, y]
        data.append(row)
        rows.append((text, f"({x}, {y})", str(png)))
    emit(
        args,
        {"image": args.image, "method": args.method, "zoom": args.zoom, "maps": data},
        ["text", "peak (x, y)", "picture"],
        rows,
    )
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from altclip import distributed
    from altclip.tasks import DEFAULT_MODEL
    from altclip.tasks.collection import embed_collection
    from altclip.tasks.index import build_index

    model = args.model or DEFAULT_MODEL
    rank, world, device = distributed.setup(args.device)  # torchrun: one process per device
    embedder = load_embedder(args, model, device=device)
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
            draft=not args.exact_decode,
            captions=args.captions,
            rank=rank,
            world=world,
        )
        distributed.leave()  # before the index: the others need not wait (a barrier gives up after 30 minutes)
        if rank != 0:
            return 0
        summary["precision"] = embedder.precision.to_dict()
        if summary["embedded"] and not args.no_index:
            summary["index"] = build_index(args.out, kind=args.kind, memory=args.memory, exact_max=args.exact_max)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished shards are kept in {args.out}: run the same command to resume", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
        return 0
    print(format_table(["status", "images"], list(summary["by_status"].items())))
    if summary["failures"]:
        shown = summary["failures"][:20]
        print(
            f"\nskipped {summary['skipped']}" + (" (first 20; all in failures/):" if summary["skipped"] > 20 else ":")
        )
        print(format_table(["status", "error"], [(f["status"], f["error"]) for f in shown]))
    if "captions" in summary:
        print(f"\ncaptions embedded: {summary['captions']} (text_emb/)")
    if "index" in summary:
        index = summary["index"]
        print(
            f"\nindex: {index['factory']} over {index['count']} images in {args.out}/index, "
            f"recall@10 {index['recall@10']}"
        )
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from altclip.tasks.index import build_index

    info = build_index(args.folder, kind=args.kind, memory=args.memory, exact_max=args.exact_max)
    emit(args, info, ["key", "value"], [(k, json.dumps(v) if isinstance(v, dict) else v) for k, v in info.items()])
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from altclip.tasks.index import SearchIndex

    index = SearchIndex(args.folder, mmap=args.mmap)
    embedder = load_embedder(args, args.model or index.collection.manifest["model"])
    query = embedder.embed_texts([args.text]) if args.text is not None else embedder.embed_images([args.image])
    if args.dedup:
        hits, dropped = index.search_unique(query[0].float().cpu().numpy(), k=args.k)
        print(f"dropped {dropped} near-duplicates", file=sys.stderr)
    else:
        hits = index.search(query.float().cpu().numpy(), k=args.k)[0]
    emit(
        args,
        [{"rank": h.rank, "score": h.score, "path": h.path, "id": h.id} for h in hits],
        ["rank", "score", "path"],
        [(h.rank, h.score, h.path) for h in hits],
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from altclip.serve import Catalog, ServeConfig, create_app
        from altclip.serve.server import check_bind, limit_malloc_arenas, run
    except ImportError as err:
        raise ImportError(f"altclip serve needs the serve extra: pip install 'altclip[serve]' ({err})") from err

    check_bind(args.host, args.token)
    limit_malloc_arenas()
    catalog = Catalog.from_specs(args.folders, thumbnail_cache_bytes=args.thumbnail_cache_mb * 2**20)
    models = {served.model for served in catalog.indexes.values()}
    if args.model is None and len(models) > 1:
        raise ValueError(
            f"the indexes were embedded by different models ({', '.join(sorted(models))}); serve them separately "
            "or choose one with --model"
        )
    embedder = load_embedder(args, args.model or models.pop())
    config = ServeConfig(
        token=args.token,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        queue_size=args.queue_size,
        batch_window=args.batch_window_ms / 1000,
    )
    app = create_app(embedder, catalog, config)
    info = catalog.info()
    print(format_table(["index", "images", "dim", "model"], [tuple(i.values()) for i in info]), file=sys.stderr)
    guarded = " (token required on /api)" if args.token else ""
    print(f"altclip serve: http://{args.host}:{args.port}/{guarded}, API docs at /docs", file=sys.stderr)
    run(app, args.host, args.port)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    name = args.model or "BAAI/AltCLIP"
    if args.task == "retrieval":
        from altclip.evaluate.benchmarks import published_for, read_retrieval_set
        from altclip.evaluate.report import ReportRow, paper_table, write_report
        from altclip.evaluate.retrieval import evaluate_set

        if bool(args.data) == bool(args.data_option):
            raise ValueError("give the data once: as DATA or as --data")
        args.data = args.data or args.data_option
        data = read_retrieval_set(args.data, args.format, args.images, args.split, args.langs)
        published = published_for(args.data, data.format, args.benchmark)
        embedder = load_embedder(args)  # after the data, so a bad layout fails before a model loads
        scores, skipped = evaluate_set(embedder, data, chunk=args.chunk, workers=args.workers, progress=not args.json)
        method = args.method or Path(name).name
        rows = [ReportRow(lang, method, s, published.get(lang)) for lang, s in scores.items()]
        if args.report:
            write_report(rows, args.report, title=f"{Path(args.data).name}: {name}")
        if args.json:
            results = {"results": [r.to_dict() for r in rows], "skipped": skipped}
            print(json.dumps(results, ensure_ascii=False, indent=2))
        else:
            print(paper_table(rows))
            if skipped:
                print("\nskipped: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
        return 0
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
    emit(args, result.to_dict(), ["metric", "value"], rows)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Report this machine (CPU capability, cores, GPU, torch and onnxruntime versions), whether each precision
    and backend works here, and each one's speed on a small model within --seconds; then what --dtype auto
    picks and what it measured against float32."""
    from altclip.doctor import MODES, run_doctor

    report = run_doctor(seconds=args.seconds, modes=tuple(args.modes or MODES), device=args.device)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0
    machine = report["machine"]
    cpu, gpu, versions = machine["cpu"], machine["gpu"], machine["versions"]
    flags = " ".join(f for f, present in cpu["flags"].items() if present) or "none of " + ", ".join(cpu["flags"])
    rows = [
        ("CPU", f"{cpu['name']}, {cpu['cores']} cores ({cpu['threads']} torch threads)"),
        ("CPU capability", f"{cpu['capability']} (torch); flags: {flags} (from {cpu['flags_from']})"),
        ("GPU", "none" if gpu is None else f"{gpu['name']}, compute capability {gpu['capability']}"),
        ("versions", ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items())),
        ("works here", ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in report["works"].items())),
    ]
    print(format_table(["machine", "this one"], rows))
    print(f"\nimage embeddings, {report['model']['vision']}, batch {report['model']['batch']}, on {report['device']}:")
    modes = [
        (
            m["mode"],
            f"{m['images_per_second']:.1f}" if m["images_per_second"] else "-",
            f"{m['ratio_to_float32']:.2f}x" if m["ratio_to_float32"] else "-",
            f"{m['min_cosine']:.5f}" if m["min_cosine"] is not None else "-",
            f"{m['setup_seconds']:.1f}" if m["setup_seconds"] is not None else "-",
            m["error"] or "",
        )
        for m in report["modes"]
    ]
    print(format_table(["mode", "images/s", "vs float32", "min cosine", "set-up s", "problem"], modes))
    print(f"\n{report['advice']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from altclip.demo.run import DemoConfig, print_summary, run_demo

    config = DemoConfig(
        out=Path(args.out),
        font=args.font,
        seed=args.seed,
        limit=args.limit,
        workers=args.workers,
        device=args.device,
        progress=not args.json,
    )
    for name in ("teacher_epochs", "distill_epochs", "contrastive_epochs"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    result = run_demo(config)
    if args.json:
        print(
            json.dumps(
                {
                    "results": [r.to_dict() for r in result["rows"]],
                    "zeroshot_flags": [r.to_dict() for r in result["flags"]],
                    "pointing": [r.to_dict() for r in result["pointing"]],
                    "model": str(result["model"]),
                    "seconds": result["seconds"],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        print_summary(result)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export both towers to ONNX, copy the processor files, and compare ONNX Runtime with PyTorch."""
    import torch

    from altclip.export import export_onnx
    from altclip.onnx_model import OnnxModel
    from altclip.runtime import DEFAULT_MODEL, load_pretrained

    model, processor = load_pretrained(args.model or DEFAULT_MODEL, device="cpu")
    quantize = None if args.quantize == "none" else args.quantize
    graphs = export_onnx(model, args.out, towers=args.towers, opset=args.opset, quantize=quantize)  # type: ignore[arg-type]
    processor.save_pretrained(args.out)
    exported = OnnxModel.from_pretrained(args.out)
    torch.manual_seed(0)
    inputs = {
        "text": lambda: (torch.randint(0, model.config.text_config.vocab_size, (2, 16)),),
        "vision": lambda: (torch.randn(2, 3, *[model.config.vision_config.image_size] * 2),),
    }
    methods = {"text": "get_text_features", "vision": "get_image_features"}
    data = []
    for tower, graph in graphs.items():
        example = inputs[tower]()
        with torch.inference_mode():
            expected = getattr(model, methods[tower])(*example)
        got = getattr(exported, methods[tower])(*example)
        size = sum(p.stat().st_size for p in graph.parent.glob(f"{graph.name}*"))
        data.append(
            {
                "tower": tower,
                "graph": str(graph),
                "quantize": args.quantize,
                "megabytes": round(size / 2**20, 1),
                "max_abs_diff": float((got - expected).abs().max()),
                "min_cosine": float(torch.nn.functional.cosine_similarity(got, expected).min()),
            }
        )
    rows = [(d["tower"], d["graph"], d["quantize"], d["megabytes"], d["max_abs_diff"], d["min_cosine"]) for d in data]
    emit(args, data, ["tower", "graph", "weights", "MB", "max |onnxruntime - torch|", "min cosine"], rows)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from altclip.train.student import build_student

    out = build_student(args.clip, args.text, args.out, tokenizer=args.tokenizer)
    emit(args, {"out": str(out)}, ["student"], [(str(out),)])
    return 0


def training_config(args: argparse.Namespace):
    from altclip.train.loop import TrainConfig

    return TrainConfig(
        out=args.out,
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        accumulate=args.accumulate,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        min_lr_ratio=args.min_lr_ratio,
        clip_grad=args.clip_grad or None,
        precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        save_every=args.save_every,
        keep=args.keep,
        resume=args.resume,
        workers=args.workers,
        device=args.device,
        progress=not args.json,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from altclip.train.loop import Trainer
    from altclip.train.phases import contrastive_phase, distillation_phase

    if args.phase == "distill":
        phase = distillation_phase(
            args.teacher, args.student, args.data, shuffle_buffer=args.shuffle_buffer, cache_targets=args.cache_targets
        )
    else:
        phase = contrastive_phase(
            args.model,
            args.data,
            freeze_vision=not args.unfreeze_vision,
            local_loss=args.local_loss,
            shuffle_buffer=args.shuffle_buffer,
            cache_images=args.cache_images,
        )
    trainer = Trainer(phase, training_config(args))
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    if trainer.rank == 0:
        rows = [
            ("steps", summary["steps"]),
            ("model", summary["model"]),
            ("log", str(trainer.log_path)),
            *((f"skipped ({k})", v) for k, v in sorted(summary["skipped"].items())),
        ]
        emit(args, summary, ["", ""], rows)
    return 0


# -- parser -----------------------------------------------------------------------------------------


def add_index_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kind",
        default="auto",
        choices=["auto", "flat", "hnsw", "ivfpq"],
        help="auto: exact up to --exact-max vectors, HNSW while it fits --memory, IVF-PQ beyond",
    )
    p.add_argument("--memory", default="4GB", help="memory the index may use, e.g. 4GB or 512MB (default 4GB)")
    p.add_argument("--exact-max", type=int, default=50_000, help="largest collection given an exact index by auto")


def build_parser() -> argparse.ArgumentParser:
    from altclip.evaluate.benchmarks import FORMATS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="hub name or local folder (default BAAI/AltCLIP)")
    common.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if present)")
    common.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16", "int8"],
        help="auto: the fastest precision this machine computes natively (bfloat16 on CPUs with AVX512-BF16 or "
        "AMX and on GPUs from compute capability 8.0, float16 on older GPUs, else float32; `altclip doctor` "
        "measures it); the default for classify, similarity, embed, search and serve, float32 for eval. "
        "bfloat16/float16: matrix multiplies in 16 bits, the rest float32. int8: int8 weights and activations "
        "(CPU)",
    )
    common.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "compile", "onnx"],
        help="compile: torch.compile both towers; onnx: run a folder written by `altclip export onnx` in "
        "ONNX Runtime (CPU)",
    )
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
        "explain",
        "where in an image each text matched: one PNG per text, the relevance map over the image (any language)",
        'altclip explain cat.jpg --text 猫 "a red ball" --out maps/\n'
        "  altclip explain street.jpg --text 자전거 --lang ko --zoom 2 --out maps/ --json   # also the raw .npy maps",
    )
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
    p.set_defaults(run=cmd_explain)

    p = add(
        "embed",
        "embed a folder, a list of paths or WebDataset tar shards into float16 shards, resumably, then index it; "
        "under torchrun the shards are shared out between the processes",
        "altclip embed ~/photos --out ~/photos.emb --workers 4\n"
        "  altclip embed 'laion/{00000..00127}.tar' --out laion.emb --captions\n"
        "  torchrun --nproc_per_node 8 -m altclip.cli embed 'laion/{00000..00127}.tar' --out laion.emb",
    )
    p.add_argument(
        "source",
        help="a folder (walked recursively), a text file listing image paths, a .tar shard, a brace pattern "
        "of shards, or a text file listing shards",
    )
    p.add_argument("--out", required=True, help="output folder; rerun the same command to resume")
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--no-index", action="store_true", help="skip building the FAISS index")
    p.add_argument(
        "--exact-decode",
        action="store_true",
        help="decode JPEGs at full size, exactly as transformers' preprocessing. By default large JPEGs decode "
        "at 1/2 to 1/8 scale (Pillow draft mode), never below twice the model's input: about 6x faster on "
        "12-megapixel photos, embeddings within cosine 0.99999 of the exact ones (benchmarks/folder.py)",
    )
    p.add_argument(
        "--captions", action="store_true", help="tar shards: also embed each sample's .txt caption into text_emb/"
    )
    add_index_options(p)
    p.set_defaults(run=cmd_embed)

    p = add(
        "index",
        "build the FAISS index of an embedding folder, chosen by its size and a memory budget",
        "altclip index ~/photos.emb --kind auto --memory 4GB",
    )
    p.add_argument("folder")
    add_index_options(p)
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
    p.add_argument("--mmap", action="store_true", help="map the index file instead of reading it (large indexes)")
    p.add_argument("--dedup", action="store_true", help="drop near-duplicates (inner product >= 0.94 to a better hit)")
    p.set_defaults(run=cmd_search)

    p = add(
        "serve",
        "a photo-search server and web page over embedding folders: search by text in any language or by "
        "image, zero-shot classification, a JSON API (docs at /docs) and Prometheus metrics",
        "altclip serve ~/photos.emb trips=~/trips.emb --port 8000\n"
        '  then open http://127.0.0.1:8000 ; for a team: --host 0.0.0.0 --token "$(openssl rand -hex 16)"',
    )
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="an `altclip embed` folder, or NAME=FOLDER")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--token",
        default=os.environ.get("ALTCLIP_TOKEN"),
        help="require Authorization: Bearer TOKEN on /api/* (needed to listen beyond loopback); "
        "or set ALTCLIP_TOKEN, which keeps it out of the process list",
    )
    p.add_argument("--queue-size", type=int, default=256, help="model jobs allowed to wait; more get 503")
    p.add_argument("--batch-window-ms", type=float, default=2.0, help="how long a lone text query waits for others")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="larger request bodies get 413")
    p.add_argument("--thumbnail-cache-mb", type=int, default=64, help="memory for cached thumbnails")
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser(
        "demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="the AltCLIP recipe in miniature, offline, on emoji named in 14 languages",
        description="Train a small CLIP teacher on English emoji names, distil it into a "
        "multilingual AltCLIP student, train that contrastively, and compare both on "
        "held-out emoji in 14 languages (Noto Color Emoji + CLDR names): retrieval, and zero-shot "
        "classification of the flag emoji by their CLDR country names.",
        epilog="example:\n  altclip demo --out altclip-demo",
    )
    p.add_argument("--out", default="altclip-demo", help="work folder (finished stages are reused)")
    p.add_argument("--font", help="NotoColorEmoji.ttf, if not installed where Debian puts it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="use only this many emoji (a quick smoke run)")
    p.add_argument("--teacher-epochs", type=int)
    p.add_argument("--distill-epochs", type=int)
    p.add_argument("--contrastive-epochs", type=int)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_demo)

    evaluate = sub.add_parser(
        "eval",
        help="evaluate: retrieval recall per language, zero-shot accuracy",
        description="evaluate: retrieval recall per language, zero-shot accuracy",
    )
    tasks = evaluate.add_subparsers(dest="task", required=True, metavar="TASK")
    p = tasks.add_parser(
        "retrieval",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="image-text retrieval R@1/5/10 both ways and MR, per language",
        description="Image-to-text and text-to-image recall@1/5/10 and their mean (MR) per "
        "language, computed in bounded memory, on a pairs file (JSONL or CSV: image, caption, lang; any "
        "number of captions per image) or a public benchmark in its published layout (--format). Where "
        "BAAI/AltCLIP's published MR is known for the set (Flickr30k), the table prints it beside ours.",
        epilog="examples:\n"
        "  altclip eval retrieval flickr30k-test.jsonl --report report/\n"
        "  altclip eval retrieval --format xtd10 XTD10/ --images coco/train2014 --langs en zh ja\n"
        "  altclip eval retrieval --format xm3600 crossmodal3600/\n"
        "  altclip eval retrieval --format multi30k multi30k-dataset/ --images flickr30k-images\n"
        "  altclip eval retrieval --format cn-clip datasets/Flickr30k-CN --split test",
    )
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
    p.set_defaults(run=cmd_eval)
    p = tasks.add_parser(
        "zeroshot",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="zero-shot top-1 / top-5 accuracy and per-class recall on an image folder",
        description="Zero-shot classification of ROOT/<class>/<image> with prompt ensembles.",
        epilog="example:\n  altclip eval zeroshot --data imagenet-val --classnames names_zh.txt --lang zh",
    )
    p.add_argument("--data", required=True, help="a folder with one subfolder of images per class")
    p.add_argument(
        "--classnames", required=True, help="one name per line (sorted folder order) or folder<TAB>name lines"
    )
    p.add_argument("--lang", default="en")
    p.add_argument("--template", action="append", help="a prompt with {}; repeat for an ensemble")
    p.set_defaults(run=cmd_eval)

    export = sub.add_parser(
        "export", help="export a model for other runtimes (ONNX)", description="export a model for other runtimes"
    )
    formats = export.add_subparsers(dest="format", required=True, metavar="FORMAT")
    p = formats.add_parser(
        "onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="both towers as ONNX graphs (dynamic batch and length), checked against PyTorch in ONNX Runtime",
        description="Write OUT/onnx/text_model.onnx (input_ids, attention_mask -> text_embeds) and "
        "OUT/onnx/vision_model.onnx (pixel_values -> image_embeds), the config and the processor files, "
        "then run both graphs in ONNX Runtime on random inputs and print the largest difference from PyTorch. "
        "OUT then works as a model folder with --backend onnx.",
        epilog="example:\n  altclip export onnx --model BAAI/AltCLIP --out altclip-onnx\n"
        "  altclip export onnx --model BAAI/AltCLIP --out altclip-onnx-int8 --quantize int8\n"
        "  altclip classify cat.jpg --labels 猫 狗 --lang zh --model altclip-onnx --backend onnx",
    )
    p.add_argument("--model", help="hub name or local folder (default BAAI/AltCLIP)")
    p.add_argument("--out", required=True, help="the export folder")
    p.add_argument("--towers", nargs="+", choices=["text", "vision"], default=["text", "vision"])
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument(
        "--quantize",
        choices=["none", "int8"],
        default="none",
        help="int8: ONNX Runtime's dynamic int8 quantization of the weights (about 2x float32 on CPU)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser(
        "doctor",
        help="this machine: CPU, GPU, versions, what works, and each precision's speed on a small model",
        description=cmd_doctor.__doc__ or "",
        epilog="example:\n  altclip doctor\n  altclip doctor --json --seconds 10",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=20.0, help="time shared by the modes' timings (default 20)")
    p.add_argument(
        "--modes",
        nargs="+",
        help="modes to measure: float32 bfloat16 float16 int8 compile onnx onnx-int8 (default: all)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if present)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (fields in the README)")
    p.set_defaults(run=cmd_doctor)

    p = sub.add_parser(
        "init",
        help="build the starting AltCLIP from a CLIP teacher and an XLM-R text tower",
        description=cmd_init.__doc__ or "build the starting AltCLIP from CLIP and XLM-R",
        epilog="example:\n  altclip init --clip openai/clip-vit-large-patch14 "
        "--text FacebookAI/xlm-roberta-large --out student",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--clip", required=True, help="the CLIP teacher (hub name or folder)")
    p.add_argument("--text", required=True, help="an XLM-R checkpoint, or a folder with only its config.json")
    p.add_argument("--tokenizer", help="where the XLM-R tokenizer is, if not beside --text")
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_init)

    training = argparse.ArgumentParser(add_help=False)
    g = training.add_argument_group("training")
    g.add_argument(
        "--data",
        required=True,
        help="a data file, or WebDataset tar shards: one .tar, a brace pattern ('shards/{00000..00127}.tar') or "
        "a text file listing them (tar shards need --steps)",
    )
    g.add_argument("--shuffle-buffer", type=int, default=2000, help="tar shards: samples in the shuffle buffer")
    g.add_argument("--out", required=True, help="run folder: checkpoints/, log.jsonl and the final model/")
    g.add_argument("--steps", type=int, help="optimizer steps (default: --epochs over the data)")
    g.add_argument("--epochs", type=int, default=1)
    g.add_argument("--batch-size", type=int, default=32, help="per process and micro-batch")
    g.add_argument(
        "--accumulate",
        type=int,
        default=1,
        help="micro-batches per optimizer step (contrastive: each micro-batch keeps its own negatives, "
        "batch-size x processes rows; accumulation grows the step, not the negatives)",
    )
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup", type=int, default=0, help="linear warm-up steps before the cosine decay")
    g.add_argument("--min-lr-ratio", type=float, default=0.0)
    g.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: off)")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--save-every", type=int, default=0, help="steps between checkpoints (0: only at the end)")
    g.add_argument(
        "--keep",
        type=int,
        default=2,
        help="newest checkpoints kept (default 2); 0: none once the final model is written (the newest stays "
        "while training, so --resume works after a crash)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --out (also a finished run, given more --steps or --epochs)",
    )
    g.add_argument("--workers", type=int, default=0, help="data loading processes")
    g.add_argument("--device", default="auto")
    g.add_argument("--json", action="store_true")

    train = sub.add_parser(
        "train",
        help="train AltCLIP: phase 1 (distill) or phase 2 (contrastive)",
        description="train AltCLIP: phase 1 (distill) or phase 2 (contrastive)",
    )
    phases = train.add_subparsers(dest="phase", required=True, metavar="PHASE")
    p = phases.add_parser(
        "distill",
        parents=[training],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="phase 1: distil CLIP's text tower into the student on parallel text (TSV or JSONL: src, tgt, lang)",
        description="Phase 1: the student's pooled text vector (token 0 after pre_LN and transformation) is pulled "
        "to the teacher's (EOS after the final LayerNorm) by MSE, for the English and the translated side.",
        epilog="example:\n  altclip train distill --teacher openai/clip-vit-large-patch14 --student student \\\n"
        "      --data parallel.tsv --out run1 --steps 20000 --batch-size 64 --lr 1e-4 --warmup 500 \\\n"
        "      --precision bf16 --save-every 1000\n"
        "  torchrun --nproc_per_node 4 -m altclip.cli train distill ... (same arguments)\n"
        "  altclip train distill ... --resume    # after an interruption",
    )
    p.add_argument("--teacher", required=True, help="the CLIP teacher")
    p.add_argument("--student", required=True, help="the AltCLIP student (from `altclip init`)")
    p.add_argument(
        "--cache-targets",
        action="store_true",
        help="compute the teacher's vector once per distinct English sentence and keep it (memory grows with "
        "them): for data where each English sentence has many translations",
    )
    p.set_defaults(run=cmd_train)
    p = phases.add_parser(
        "contrastive",
        parents=[training],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="phase 2: symmetric InfoNCE on image-text pairs (JSONL or CSV: image, caption, lang)",
        description="Phase 2: the text tower learns against the frozen image tower with CLIP's symmetric InfoNCE and "
        "learned logit scale (clamped at ln 100 after each step). Features are gathered across processes, so a "
        "micro-batch's negatives are every process's rows (batch-size x processes); --accumulate adds samples "
        "to a step, not negatives.",
        epilog="example:\n  altclip train contrastive --model run1/model --data pairs.jsonl --out run2 \\\n"
        "      --steps 5000 --batch-size 128 --lr 2e-5 --warmup 200 --precision bf16 --workers 4\n"
        "  torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint HOST:29500 -m altclip.cli train contrastive ...",
    )
    p.add_argument("--model", required=True, help="the AltCLIP (or CLIP) model to train")
    p.add_argument("--unfreeze-vision", action="store_true", help="train the image tower too")
    p.add_argument(
        "--local-loss",
        action="store_true",
        help="each process scores its rows against the gathered batch (open_clip's local loss): the same "
        "loss and gradients as the global one, in O(rows x global batch) memory",
    )
    p.add_argument(
        "--cache-images",
        action="store_true",
        help="with the image tower frozen, compute each distinct image's features once and keep them (memory "
        "grows with them): for data where each image has many captions",
    )
    p.set_defaults(run=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from altclip.checkpoint import CheckpointNotFoundError

    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, CheckpointNotFoundError, ImportError) as err:
        print(f"altclip {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\naltclip {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
