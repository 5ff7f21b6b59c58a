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

Errors are ``{"error": "..."}`` with a fitting status: 400 bad input, 401 no token, 404 unknown index or
image, 413 body over the upload limit, 415 neither JSON nor multipart, 503 queue full (with Retry-After).
"""

from __future__ import annotations

import io
import json
import logging
import mimetypes
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from altclip.embedding import Embedder
from altclip.heatmap import overlay
from altclip.image import ImageLoadError, load_image, to_rgb
from altclip.prompts import TEMPLATES
from altclip.serve.catalog import Catalog, NotFound
from altclip.serve.middleware import LimitBody, Metrics, RecordMetrics, RequireToken, error
from altclip.serve.worker import Busy, ModelWorker
from altclip.shards import TarMember
from altclip.tasks.index import Hit

STATIC = Path(__file__).parent / "static"
CACHED = {"Cache-Control": "private, max-age=3600"}  # images of a collection change rarely
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


# -- request and response bodies (also the OpenAPI schema at /docs) ------------------------------------


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description="the query, in any language")
    id: int | None = Field(None, description="or: search by an image of the index, by its id (more like this)")
    k: int = Field(10, description="how many results, 1 to 1000")
    index: str | None = Field(None, description="which index (default: the first)")
    dedup: bool = Field(False, description="drop near-duplicates (inner product >= 0.94 to a better result)")


class Result(BaseModel):
    id: int
    path: str
    score: float
    thumbnail: str


class SearchResponse(BaseModel):
    results: list[Result] = Field(description="best first")
    index: str
    dedup: bool
    dropped: int = Field(description="near-duplicates left out (0 without dedup)")


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str]


class EmbedResponse(BaseModel):
    embeddings: list[list[float]] = Field(description="unit vectors, one per text or image, in order")


class Prediction(BaseModel):
    label: str
    probability: float


class ClassifyResponse(BaseModel):
    predictions: list[Prediction] = Field(description="every label, most probable first")


class Problem(BaseModel):
    error: str


def multipart(fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": fields}


BINARY = {"type": "string", "format": "binary"}
SEARCH_BODY = {
    "application/json": {"schema": SearchRequest.model_json_schema()},
    "multipart/form-data": {
        "schema": multipart(
            {"image": BINARY, "k": {"type": "integer"}, "index": {"type": "string"}, "dedup": {"type": "boolean"}},
            ["image"],
        )
    },
}
EMBED_BODY = {
    "application/json": {"schema": EmbedRequest.model_json_schema()},
    "multipart/form-data": {"schema": multipart({"image": {"type": "array", "items": BINARY}}, ["image"])},
}
CLASSIFY_BODY = {
    "multipart/form-data": {
        "schema": multipart(
            {
                "image": BINARY,
                "labels": {"type": "string", "description": 'a JSON list of class names, e.g. ["猫", "狗"]'},
                "lang": {"type": "string", "description": "language of the prompt templates (default en)"},
            },
            ["image", "labels"],
        )
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": text}
    for status, text in {400: "bad input", 404: "unknown index or image", 413: "too large", 503: "busy"}.items()
}


def body(content: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": content}}


def describe(err: ValidationError | RequestValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in e['loc'] if part != 'body') or 'body'}: {e['msg']}" for e in err.errors()
    )


# -- the application ------------------------------------------------------------------------------------


def create_app(embedder: Embedder, catalog: Catalog, config: ServeConfig | None = None) -> FastAPI:
    """The server for ``catalog`` with ``embedder`` as its model. Start it with uvicorn (``altclip serve``)."""
    config = config or ServeConfig()
    dim = embedder.model.config.projection_dim  # type: ignore[attr-defined]
    for info in catalog.info():
        if info["dim"] != dim:
            raise ValueError(
                f"index {info['name']!r} holds {info['dim']}-dimensional vectors (made by {info['model']}) but the "
                f"model's embeddings have {dim}; serve it with the model that embedded it"
            )
    worker = ModelWorker(embedder, embedder.batch_size, config.batch_window, config.queue_size)
    metrics = Metrics(lambda: worker.waiting)
    worker.on_batch = metrics.text_batch.observe
    image_processor = embedder.processor.image_processor

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await worker.start()
        yield
        await worker.stop()

    app = FastAPI(
        title="altclip",
        summary="Multilingual photo search with AltCLIP: search embedded image folders by text in any language "
        "or by image, embed, and classify zero-shot.",
        lifespan=lifespan,
    )
    app.state.worker = worker
    page_html = (STATIC / "index.html").read_text(encoding="utf-8")
    # the token itself is checked by RequireToken; this dependency only shows it in the OpenAPI page. The routes
    # are the app's own, not an included router's, so that RecordMetrics sees each route's path template.
    security = [Security(HTTPBearer(auto_error=False))] if config.token else []

    def get(path: str, **options: Any):
        """A GET route under /api."""
        return app.get(f"/api{path}", dependencies=security, **options)

    def post(path: str, response: type[BaseModel], content: dict[str, Any]):
        """A POST route under /api: its response schema, its error schemas and its request body's schema."""
        return app.post(
            f"/api{path}", dependencies=security, response_model=response, responses=ERRORS, openapi_extra=body(content)
        )

    # -- errors ---------------------------------------------------------------------------------------

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> Response:
        return error(err.status_code, str(err.detail), err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> Response:
        return error(400, describe(err))

    @app.exception_handler(ValidationError)
    async def invalid_body(request: Request, err: ValidationError) -> Response:
        return error(400, describe(err))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, err: NotFound) -> Response:
        return error(404, str(err))

    @app.exception_handler(Busy)
    async def busy(request: Request, err: Busy) -> Response:
        metrics.rejected.inc()
        return error(503, f"the server is busy ({err}); try again shortly", {"Retry-After": "1"})

    @app.exception_handler(ValueError)  # ImageLoadError included: the library's checks of what it is given
    async def bad_input(request: Request, err: ValueError) -> Response:
        return error(400, str(err))

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return error(500, f"internal error ({type(err).__name__})")

    # -- request reading --------------------------------------------------------------------------------

    async def read_json(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"the body is not valid JSON ({err})") from err

    def is_multipart(request: Request) -> bool:
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            return True
        if kind.startswith("application/json"):
            return False
        raise HTTPException(415, f"send application/json or multipart/form-data, not {kind or 'no Content-Type'}")

    def embed_image(image: np.ndarray) -> torch.Tensor:
        """(3, H, W) pixels -> (1, dim) unit vector; runs on the model thread."""
        return embedder.embed_pixels(torch.from_numpy(image[None]))

    async def pixels(upload: Any, field: str) -> np.ndarray:
        """An uploaded image -> (3, H, W) float32, decoded off the event loop; 400 naming what is wrong."""
        if not isinstance(upload, UploadFile):
            raise ValueError(f"{field}: expected an image file")
        data = await upload.read()
        name = f"{field} {upload.filename!r}" if upload.filename else field
        array, _, _ = await run_in_threadpool(image_processor.preprocess_file, data, None, name)
        return array

    async def search_query(request: Request) -> tuple[SearchRequest, np.ndarray | None]:
        """The search request, and the image query's pixels when it came as multipart."""
        if not is_multipart(request):
            return SearchRequest.model_validate(await read_json(request)), None
        async with request.form(max_files=1) as form:
            fields = {key: form[key] for key in ("k", "index", "dedup") if key in form}
            query = SearchRequest.model_validate(fields)
            return query, await pixels(form.get("image"), "image")

    # -- endpoints --------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @get("/indexes")
    async def indexes() -> list[dict[str, Any]]:
        return catalog.info()

    @get("/languages")
    async def languages() -> list[str]:
        return sorted(TEMPLATES)

    @post("/search", SearchResponse, SEARCH_BODY)
    async def search(request: Request) -> dict[str, Any]:
        query, image = await search_query(request)
        served = catalog.get(query.index)
        if not 1 <= query.k <= config.max_k:
            raise ValueError(f"k must be between 1 and {config.max_k}, got {query.k}")
        if image is not None:
            vector = (await worker.call(lambda: embed_image(image)))[0].float().cpu().numpy()
        elif (query.text is None) == (query.id is None):
            raise ValueError("give either text or id (or upload an image as multipart)")
        elif query.id is not None:
            catalog.source(served.name, query.id)  # 404 unless the id is one of this index's images
            vector = served.index.vectors([query.id])[0]
        elif not query.text.strip():  # type: ignore[union-attr]
            raise ValueError("text is empty")
        else:
            vector = await worker.embed_text(query.text)  # type: ignore[arg-type]
        if query.dedup:
            hits, dropped = await run_in_threadpool(served.index.search_unique, vector, query.k)
        else:
            hits, dropped = (await run_in_threadpool(served.index.search, vector, query.k))[0], 0
        root = request.scope.get("root_path", "")
        return {
            "results": [result(root, served.name, hit) for hit in hits],
            "index": served.name,
            "dedup": query.dedup,
            "dropped": dropped,
        }

    @post("/embed", EmbedResponse, EMBED_BODY)
    async def embed(request: Request) -> dict[str, Any]:
        if not is_multipart(request):
            texts = EmbedRequest.model_validate(await read_json(request)).texts
            if not 1 <= len(texts) <= config.max_texts:
                raise ValueError(f"texts must hold 1 to {config.max_texts} texts, got {len(texts)}")
            if empty := [i for i, text in enumerate(texts) if not text.strip()]:
                raise ValueError(f"texts[{empty[0]}] is empty")
            vectors = await worker.call(lambda: embedder.embed_texts(texts))
        else:
            async with request.form(max_files=config.max_images) as form:
                uploads = form.getlist("image")
                if not uploads:
                    raise ValueError("no image: send one or more files in the field 'image'")
                batch = np.stack([await pixels(u, f"image[{i}]") for i, u in enumerate(uploads)])
            vectors = await worker.call(lambda: embedder.embed_pixels(torch.from_numpy(batch)))
        return {"embeddings": vectors.float().cpu().tolist()}

    @post("/classify", ClassifyResponse, CLASSIFY_BODY)
    async def classify(request: Request) -> dict[str, Any]:
        if not is_multipart(request):
            raise HTTPException(415, "send multipart/form-data with an image file, labels and lang")
        async with request.form(max_files=1) as form:
            labels, lang = read_labels(form), str(form.get("lang") or "en")
            image = await pixels(form.get("image"), "image")

        def run() -> torch.Tensor:
            classes = embedder.zero_shot_classes(labels, lang=lang)
            return embedder.probabilities(embed_image(image), classes)[0]

        probabilities = (await worker.call(run)).tolist()
        ranked = sorted(zip(labels, probabilities, strict=True), key=lambda pair: -pair[1])
        return {"predictions": [{"label": label, "probability": p} for label, p in ranked]}

    @get(
        "/thumbnail/{index}/{id}",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, 404: ERRORS[404]},
    )
    def thumbnail(index: str, id: str) -> Response:
        try:
            data = catalog.thumbnail(index, id)
        except ImageLoadError as err:
            raise NotFound(f"the image is no longer readable: {err}") from err
        return Response(data, media_type="image/jpeg", headers=CACHED)

    @get("/image/{index}/{id}", response_class=FileResponse, responses=ERRORS)
    def original(index: str, id: str) -> Response:
        source = catalog.source(index, id)
        if isinstance(source, TarMember):  # a member of a tar shard: its bytes, typed by its name
            try:
                data = source.read()
            except OSError as err:
                raise NotFound(f"the image is no longer there: {source.path}") from err
            kind = mimetypes.guess_type(source.name)[0] or "application/octet-stream"
            return Response(data, media_type=kind, headers=CACHED)
        if not Path(source).is_file():
            raise NotFound(f"the image is no longer there: {source}")
        return FileResponse(source, headers=CACHED)

    @get(
        "/explain/{index}/{id}",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, 404: ERRORS[404]},
    )
    async def explain(index: str, id: str, text: str, lang: str | None = None) -> Response:
        """The thumbnail with the relevance map of ``text`` over it (where in the image the text matched), as PNG."""
        if not text.strip():
            raise ValueError("text is empty")
        try:
            picture = to_rgb(load_image(await run_in_threadpool(catalog.thumbnail, index, id), name=f"{index}/{id}"))
        except ImageLoadError as err:
            raise NotFound(f"the image is no longer readable: {err}") from err
        relevance = await worker.call(lambda: embedder.explain(picture, text, lang=lang))
        png = io.BytesIO()
        overlay(picture, relevance).save(png, format="PNG")
        return Response(png.getvalue(), media_type="image/png", headers=CACHED)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # outermost first: every request is counted, 401 and 413 included
    app.add_middleware(LimitBody, limit=config.max_upload_bytes)
    if config.token:
        app.add_middleware(RequireToken, token=config.token)
    app.add_middleware(RecordMetrics, metrics=metrics, routes=app.router.routes)
    return app


def result(root: str, index: str, hit: Hit) -> dict[str, Any]:
    thumbnail = f"{root}/api/thumbnail/{quote(index, safe='')}/{hit.id}"
    return {"id": hit.id, "path": hit.path, "score": hit.score, "thumbnail": thumbnail}


def read_labels(form: FormData) -> list[str]:
    """The ``labels`` field: a JSON list of non-empty strings."""
    raw = form.get("labels")
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError('labels: expected a JSON list of class names, e.g. ["猫", "狗"]')
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"labels: not a JSON list ({err})") from err
    if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
        raise ValueError("labels: expected a JSON list of non-empty strings")
    if not 1 <= len(labels) <= 1000:
        raise ValueError(f"labels: give 1 to 1000 labels, got {len(labels)}")
    return [label.strip() for label in labels]
