"""altclip serve: the photo-search server and page over embedding folders."""

from __future__ import annotations

import argparse
import os
import sys

from altclip.cli.common import Subparsers, command, load_embedder
from altclip.errors import InputError, MissingExtraError
from altclip.tables import format_table


def cmd_serve(args: argparse.Namespace) -> int:
    """a photo-search server and web page over embedding folders: search by text in any language or by image,
    zero-shot classification, a JSON API (docs at /docs) and Prometheus metrics

    examples:
      altclip serve ~/photos.emb trips=~/trips.emb --port 8000
      then open http://127.0.0.1:8000 ; for a team: --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    try:
        from altclip.serve import Catalog, ServeConfig, create_app
        from altclip.serve.server import check_bind, limit_malloc_arenas, run
    except ImportError as err:
        raise MissingExtraError(f"altclip serve needs the serve extra: pip install 'altclip[serve]' ({err})") from err

    check_bind(args.host, args.token)
    limit_malloc_arenas()
    catalog = Catalog.from_specs(args.folders, thumbnail_cache_bytes=args.thumbnail_cache_mb * 2**20)
    models = {served.model for served in catalog.indexes.values()}
    if args.model is None and len(models) > 1:
        raise InputError(
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
    rows = [(i.name, i.count, i.dim, i.model) for i in catalog.info()]
    print(format_table(["index", "images", "dim", "model"], rows), file=sys.stderr)
    guarded = " (token required on /api)" if args.token else ""
    print(f"altclip serve: http://{args.host}:{args.port}/{guarded}, API docs at /docs", file=sys.stderr)
    run(app, args.host, args.port)
    return 0


def register(sub: Subparsers, model: argparse.ArgumentParser) -> None:
    p = command(sub, "serve", cmd_serve, [model])
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
