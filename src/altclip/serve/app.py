"""The HTTP API and its page: FastAPI over one ``ModelWorker`` (the model) and one ``Catalog`` (the indexes).

    GET  /                                  the search page (static/, no CDN, works offline)
    GET  /healthz                           {"status": "ok"}
    GET  /metrics                           Prometheus text: requests and latency per endpoint, queue length
    GET  /api/indexes                       [{"name", "count", "dim", "model"}]
    GET  /api/languages                     the languages with built-in zero-shot templates
    POST /api/search                        JSON {"text" | "id", "k", "index", "dedup"} or multipart "image"
    POST /api/embed                         JSON {"texts": [...]} or multipart "image" files -> unit vectors
    POST /api/classify                      multipart "image", "labels" (a JSON list), "lang"
    GET  /api/thumbnail/{index}/{id}        JPEG, at most 256 px on its long side, cached
    GET  /api/image/{index}/{id}            the original file
    GET  /api/explain/{index}/{id}?text=    PNG: the thumbnail under the relevance map of the text ("why?")
    GET  /api/duplicates?index=&threshold=  groups of near-duplicate images (``altclip.search.duplicates``)

With ``ServeConfig.immich``: immich's ``GET /ping`` and ``POST /predict`` (``serve.immich``); with
``clip_retrieval``: ``GET /indices-list``, ``POST /knn-service`` and ``POST /metadata`` (``serve.clip_retrieval``).
Neither takes a token (their clients send none); ``altclip serve`` keeps them on loopback unless told otherwise.

Errors are ``{"error": "..."}`` with a fitting status: 400 bad input, 401 no token, 404 unknown index or
image, 413 body over the upload limit, 415 neither JSON nor multipart, 503 queue full (with Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from altclip.embedder import Embedder
from altclip.errors import AltCLIPError, InputError, NotFoundError
from altclip.serve.catalog import Catalog
from altclip.serve.clip_retrieval import PATHS as CLIP_RETRIEVAL_PATHS
from altclip.serve.clip_retrieval import ClipRetrievalApi
from altclip.serve.immich import ImmichApi, ImmichSettings
from altclip.serve.middleware import AllowAnyOrigin, LimitBody, Metrics, RecordMetrics, RequireToken, error
from altclip.serve.routes import STATIC, Api, Limits
from altclip.serve.schemas import describe
from altclip.serve.worker import Busy, ModelWorker

log = logging.getLogger("altclip.serve")


@dataclass
class ServeConfig:
    """How the server guards itself. ``token``: required on /api/* when set."""

    token: str | None = None
    max_upload_bytes: int = 20 * 2**20
    queue_size: int = 256  # model jobs waiting at most; one more gets 503
    batch_window: float = 0.002  # seconds a lone text query waits for company
    max_k: int = 1000
    max_texts: int = 256  # per /api/embed request
    max_images: int = 16  # per /api/embed request
    immich: ImmichSettings | None = None  # immich's /ping and /predict, with these settings
    clip_retrieval: bool = False  # clip-retrieval's /indices-list, /knn-service and /metadata
    allow_image_urls: bool = False  # clip-retrieval's image_url: the server fetches a URL it is given
    reload_seconds: float = 10.0  # how often the served folders are checked for updates (0: never)


def create_app(embedder: Embedder, catalog: Catalog, config: ServeConfig | None = None) -> FastAPI:
    """The server for ``catalog`` with ``embedder`` as its model. Start it with uvicorn (``altclip serve``).
    Everything it holds is its own: two apps in one process share nothing."""
    config = config or ServeConfig()
    check_dimensions(embedder, catalog)
    worker = ModelWorker(embedder, embedder.batch_size, config.batch_window, config.queue_size)
    metrics = Metrics(lambda: worker.waiting)
    worker.on_batch = metrics.text_batch.observe

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await worker.start()
        follower = asyncio.create_task(follow(catalog, config.reload_seconds)) if config.reload_seconds > 0 else None
        yield
        if follower is not None:
            follower.cancel()
        await worker.stop()

    app = FastAPI(
        title="altclip",
        summary="Multilingual photo search with AltCLIP: search embedded image folders by text in any language "
        "or by image, embed, and classify zero-shot.",
        lifespan=lifespan,
    )
    app.state.worker = worker
    add_error_handlers(app, metrics)
    # the token itself is checked by RequireToken; this dependency only shows it in the OpenAPI page
    security = [Security(HTTPBearer(auto_error=False))] if config.token else []
    api = Api(embedder, catalog, worker, metrics, Limits(config.max_k, config.max_texts, config.max_images))
    api.register(app, security)
    width = embedder.model.config.projection_dim  # type: ignore[attr-defined]
    image_processor = embedder.processor.image_processor
    if config.immich is not None:
        ImmichApi(worker, image_processor, width, config.immich).register(app)
    if config.clip_retrieval:
        urls = config.allow_image_urls
        ClipRetrievalApi(catalog, worker, image_processor, config.max_k, config.max_upload_bytes, urls).register(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # outermost first: every request is counted, 401 and 413 included
    app.add_middleware(LimitBody, limit=config.max_upload_bytes)
    if config.token:
        app.add_middleware(RequireToken, token=config.token)
    app.add_middleware(RecordMetrics, metrics=metrics, routes=app.router.routes)
    if config.clip_retrieval:  # outermost: its errors (413 included) carry the CORS header too
        app.add_middleware(AllowAnyOrigin, paths=CLIP_RETRIEVAL_PATHS)
    return app


async def follow(catalog: Catalog, seconds: float) -> None:
    """Check the served folders for updates every ``seconds``, opening updated ones off the event loop."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(catalog.refresh)
        except Exception:  # a reload that fails keeps the old index; the next check tries again
            log.exception("checking the served folders for updates failed")


def check_dimensions(embedder: Embedder, catalog: Catalog) -> None:
    """Every index must hold vectors of the model's width: a model never searches another's vector space."""
    dim = embedder.model.config.projection_dim  # type: ignore[attr-defined]
    for info in catalog.info():
        if info.dim != dim:
            raise InputError(
                f"index {info.name!r} holds {info.dim}-dimensional vectors (made by {info.model}) but the "
                f"model's embeddings have {dim}; serve it with the model that embedded it"
            )


def add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """``{"error": ...}`` answers: 4xx for what the client can fix (``AltCLIPError`` and bad requests), 503 when
    busy, and 500, logged with its traceback, for anything else: a bug, never the client's fault."""

    async def http_error(request: Request, err: HTTPException) -> Response:
        return error(err.status_code, str(err.detail), err.headers)

    async def invalid(request: Request, err: ValidationError | RequestValidationError) -> Response:
        return error(400, describe(err))

    async def not_found(request: Request, err: NotFoundError) -> Response:
        return error(404, str(err))

    async def bad_input(request: Request, err: AltCLIPError) -> Response:
        return error(400, str(err))

    async def busy(request: Request, err: Busy) -> Response:
        metrics.rejected.inc()
        return error(503, f"the server is busy ({err}); try again shortly", {"Retry-After": "1"})

    async def internal(request: Request, err: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return error(500, f"internal error ({type(err).__name__})")

    for kind, handler in (
        (HTTPException, http_error),
        (RequestValidationError, invalid),
        (ValidationError, invalid),
        (NotFoundError, not_found),
        (AltCLIPError, bad_input),
        (Busy, busy),
        (Exception, internal),
    ):
        app.add_exception_handler(kind, handler)  # type: ignore[arg-type]
