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
      altclip serve ~/photos.emb --immich --immich-upstream http://immich-machine-learning:3003 \\
          --host 0.0.0.0 --port 3003 --token "$ALTCLIP_TOKEN" --compat-without-token
      altclip serve ~/photos.emb --clip-retrieval    # clip-retrieval's front end and ClipClient
    """
    try:
        from altclip.runtime.memory import limit_malloc_arenas
        from altclip.serve import Catalog, ServeConfig, create_app
        from altclip.serve.immich import ImmichSettings
        from altclip.serve.server import check_bind, run
    except ImportError as err:
        raise MissingExtraError(f"altclip serve needs the serve extra: pip install 'altclip[serve]' ({err})") from err

    untokened = tuple(
        name for name, on in (("immich's /predict", args.immich), ("clip-retrieval's API", args.clip_retrieval)) if on
    )
    check_bind(args.host, args.token, untokened, args.compat_without_token)
    if not args.folders and not args.immich:
        raise InputError("give an `altclip embed` folder to serve (only --immich runs without one)")
    limit_malloc_arenas()
    catalog = Catalog.from_specs(args.folders, thumbnail_cache_bytes=args.thumbnail_cache_mb * 2**20)
    manifests = [served.index.collection.manifest for served in catalog.indexes.values()]
    models = {(m.model, m.revision, (m.adapter or {}).get("path")) for m in manifests}
    if args.model is None and len(models) > 1:
        names = ", ".join(sorted((f"{m}@{r}" if r else m) + (f" + adapter {a}" if a else "") for m, r, a in models))
        raise InputError(
            f"the indexes were embedded by different models ({names}); serve them separately or choose one with --model"
        )
    model, revision, adapter = (args.model, None, None) if args.model or not models else models.pop()
    if adapter and args.adapter is None:
        args.adapter = adapter  # the adapter the vectors were made with
    embedder = load_embedder(args, model, revision)
    config = ServeConfig(
        token=args.token,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        queue_size=args.queue_size,
        batch_window=args.batch_window_ms / 1000,
        immich=ImmichSettings(args.immich_upstream, tuple(args.immich_model)) if args.immich else None,
        clip_retrieval=args.clip_retrieval,
        allow_image_urls=args.allow_image_urls,
        reload_seconds=args.reload_seconds,
    )
    app = create_app(embedder, catalog, config)
    rows = [(i.name, i.count, i.dim, i.model) for i in catalog.info()]
    print(format_table(["index", "images", "dim", "model"], rows), file=sys.stderr)
    if args.immich and (args.immich_upstream is None):
        print("immich: faces and OCR need --immich-upstream (immich's machine-learning service)", file=sys.stderr)
    guarded = " (token required on /api)" if args.token else ""
    print(f"altclip serve: http://{args.host}:{args.port}/{guarded}, API docs at /docs", file=sys.stderr)
    run(app, args.host, args.port)
    return 0


def register(sub: Subparsers, model: argparse.ArgumentParser) -> None:
    p = command(sub, "serve", cmd_serve, [model])
    p.add_argument(
        "folders", nargs="*", metavar="FOLDER", help="an `altclip embed` folder, or NAME=FOLDER (none: --immich alone)"
    )
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
    p.add_argument(
        "--reload-seconds",
        type=float,
        default=10.0,
        help="how often the folders are checked for updates made by `altclip embed` (0: never); an update shows "
        "once its index is rebuilt",
    )
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="larger request bodies get 413")
    p.add_argument("--thumbnail-cache-mb", type=int, default=64, help="memory for cached thumbnails")
    compat = p.add_argument_group("in other apps (their clients send no token)")
    compat.add_argument("--immich", action="store_true", help="answer immich's /ping and /predict (smart search)")
    compat.add_argument(
        "--immich-upstream",
        metavar="URL",
        help="immich's own machine-learning service: faces, OCR and every other task are forwarded there",
    )
    compat.add_argument(
        "--immich-model",
        action="append",
        default=[],
        metavar="NAME",
        help="a model name immich may ask for besides the immich names of the served width (repeatable)",
    )
    compat.add_argument(
        "--clip-retrieval", action="store_true", help="answer clip-retrieval's /indices-list, /knn-service, /metadata"
    )
    compat.add_argument(
        "--allow-image-urls", action="store_true", help="clip-retrieval's image_url: let the server fetch URLs"
    )
    compat.add_argument(
        "--compat-without-token",
        action="store_true",
        help="let --immich and --clip-retrieval answer beyond loopback (--host) without a token",
    )
