"""altclip embed, index and search: a collection of images embedded into a folder, indexed, and searched."""

from __future__ import annotations

import argparse
import sys

from altclip.cli.common import Subparsers, add_json, command, emit, load_embedder, made_with, print_json


def cmd_embed(args: argparse.Namespace) -> int:
    """embed a folder, a list of paths or WebDataset tar shards into float16 parts, resumably, then index it;
    under torchrun the parts are shared out between the processes

    Run again on a folder, it brings the collection up to date: new files embedded, changed ones embedded again,
    deleted ones removed, unchanged ones left unread; a running `altclip serve` picks the update up.

    examples:
      altclip embed ~/photos --out ~/photos.emb --workers 4
      altclip embed ~/photos --out ~/photos.emb       # again, tomorrow: only what changed
      altclip embed 'laion/{00000..00127}.tar' --out laion.emb --captions
      torchrun --nproc_per_node 8 -m altclip.cli embed 'laion/{00000..00127}.tar' --out laion.emb
    """
    from altclip.hub import resolve_model
    from altclip.runtime import distributed
    from altclip.runtime.loading import DEFAULT_MODEL
    from altclip.search.collection import embed_collection
    from altclip.search.index import update_index

    model, revision = resolve_model(args.model or DEFAULT_MODEL)  # the same from any folder, and after hub pushes
    group = distributed.setup(args.device)  # torchrun: one process per device
    embedder = load_embedder(args, model, device=group.device, revision=revision)
    try:
        summary = embed_collection(
            args.source,
            args.out,
            embedder,
            model,
            revision=revision,
            batch_size=args.batch_size,
            workers=args.workers,
            part_size=args.part_size,
            progress=not args.json,
            draft=not args.exact_decode,
            captions=args.captions,
            group=group,
        )
        distributed.leave()  # before the index: the others need not wait (a barrier gives up after 30 minutes)
        if summary is None:  # not process 0
            return 0
        summary.precision = embedder.precision.to_json()
        if summary.embedded and not args.no_index:  # kept, updated in place or built (``update_index``)
            summary.index = update_index(args.out, kind=args.kind, memory=args.memory, exact_max=args.exact_max)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished parts are kept in {args.out}: run the same command to resume", file=sys.stderr)
        return 130
    if args.json:
        print_json(summary.to_json())
    else:
        print(summary.describe())
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """build the FAISS index of an embedding folder, chosen by its size and a memory budget

    examples:
      altclip index ~/photos.emb --kind auto --memory 4GB
    """
    from altclip.search.index import build_index

    info = build_index(args.folder, kind=args.kind, memory=args.memory, exact_max=args.exact_max)
    values = info.to_json()
    emit(args, values, ["key", "value"], [(k, str(v)) for k, v in values.items()])
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """search an embedding folder by text (any language) or by image

    examples:
      altclip search ~/photos.emb --text "一只猫" -k 5
    """
    from altclip.search.index import SearchIndex

    index = SearchIndex(args.folder, mmap=args.mmap)
    embedder = load_embedder(args, *made_with(args, index.collection))
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


def cmd_duplicates(args: argparse.Namespace) -> int:
    """list groups of near-duplicate photos of an embedding folder, found through its index

    examples:
      altclip duplicates ~/photos.emb
      altclip duplicates ~/photos.emb --threshold 0.97 --json
    """
    from altclip.search.duplicates import find_duplicates
    from altclip.search.index import SearchIndex

    found = find_duplicates(SearchIndex(args.folder), threshold=args.threshold)
    if args.json:
        print_json(found.to_json())
    else:
        print(found.describe())
    return 0


def add_index_options(p: argparse.ArgumentParser) -> None:
    from altclip.search.index import DEFAULT_MEMORY, EXACT_MAX, KINDS

    p.add_argument(
        "--kind",
        default="auto",
        choices=KINDS,
        help="auto: exact up to --exact-max vectors, HNSW while it fits --memory, IVF-PQ beyond",
    )
    p.add_argument("--memory", default=DEFAULT_MEMORY, help=f"memory the index may use (default {DEFAULT_MEMORY})")
    p.add_argument("--exact-max", type=int, default=EXACT_MAX, help="largest collection given an exact index by auto")


def register(sub: Subparsers, model: argparse.ArgumentParser) -> None:
    p = command(sub, "embed", cmd_embed, [model])
    p.add_argument(
        "source",
        help="a folder (walked recursively), a text file listing image paths, a .tar shard, a brace pattern "
        "of shards, or a text file listing shards",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder; run the same command again to resume, or to bring a folder's collection up to date",
    )
    p.add_argument("--part-size", type=int, default=10_000, help="images per part of a folder's embeddings")
    p.add_argument("--shard-size", dest="part_size", type=int, help=argparse.SUPPRESS)  # its name before 0.2
    p.add_argument("--no-index", action="store_true", help="skip building the FAISS index")
    p.add_argument(
        "--exact-decode",
        action="store_true",
        help="decode JPEGs at full size, exactly as transformers' preprocessing. By default large JPEGs decode "
        "at 1/2 to 1/8 scale (Pillow draft mode), never below twice the model's input: much faster on "
        "large photos, embeddings within cosine 0.99999 of the exact ones (benchmarks/folder.py)",
    )
    p.add_argument(
        "--captions", action="store_true", help="tar shards: also embed each sample's .txt caption into text_emb/"
    )
    add_index_options(p)

    p = command(sub, "index", cmd_index, [model])
    p.add_argument("folder")
    add_index_options(p)

    from altclip.search.duplicates import DEFAULT_THRESHOLD

    p = command(sub, "duplicates", cmd_duplicates, [])
    p.add_argument("folder")
    add_json(p)
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"the least cosine of two near-duplicates (default {DEFAULT_THRESHOLD}, immich's default distance 0.01)",
    )

    p = command(sub, "search", cmd_search, [model])
    p.add_argument("folder")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text")
    query.add_argument("--image")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--mmap", action="store_true", help="map the index file instead of reading it (large indexes)")
    p.add_argument("--dedup", action="store_true", help="drop near-duplicates (inner product >= 0.94 to a better hit)")
