"""The endpoints of the HTTP API: what each one reads from its request, asks of the model and the catalog, and
answers. ``Api`` holds what they share; ``Api.register`` puts them on the app."""

from __future__ import annotations

import io
import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from altclip.data.shards import TarMember
from altclip.embedder import Embedder
from altclip.errors import InputError
from altclip.explain.drawing import overlay
from altclip.processing.image import ImageLoadError, load_image, to_rgb
from altclip.processing.prompts import TEMPLATES
from altclip.search.duplicates import DEFAULT_THRESHOLD, Duplicates, find_duplicates
from altclip.search.index import Hit
from altclip.serve.catalog import Catalog, NotFound
from altclip.serve.middleware import Metrics
from altclip.serve.schemas import (
    CLASSIFY_BODY,
    EMBED_BODY,
    ERRORS,
    SEARCH_BODY,
    ClassifyResponse,
    EmbedRequest,
    EmbedResponse,
    SearchRequest,
    SearchResponse,
    body,
)
from altclip.serve.worker import ModelWorker

STATIC = Path(__file__).parent / "static"
CACHED = {"Cache-Control": "private, max-age=3600"}  # images of a collection change rarely
PNG = {200: {"content": {"image/png": {}}}, 404: ERRORS[404]}
JPEG = {200: {"content": {"image/jpeg": {}}}, 404: ERRORS[404]}
DUPLICATES_KEPT = 8  # answers of /api/duplicates kept, oldest out


@dataclass
class Limits:
    max_k: int
    max_texts: int
    max_images: int


class Api:
    """The endpoints over one model thread (``worker``) and one ``catalog``."""

    def __init__(self, embedder: Embedder, catalog: Catalog, worker: ModelWorker, metrics: Metrics, limits: Limits):
        self.embedder, self.catalog, self.worker, self.metrics, self.limits = embedder, catalog, worker, metrics, limits
        self.image_processor = embedder.processor.image_processor
        self.page_html = (STATIC / "index.html").read_text(encoding="utf-8")
        self._duplicates: dict[tuple[str, int, float], Duplicates] = {}  # (index, its update, threshold) -> groups

    def register(self, app: FastAPI, security: list[Any]) -> None:
        """Put every route on ``app`` itself (not an included router), so that RecordMetrics sees each route's
        path template; ``security`` guards /api/*."""
        app.get("/", include_in_schema=False)(self.page)
        app.get("/healthz")(self.healthz)
        app.get("/metrics", response_class=Response)(self.prometheus)

        def get(path: str, endpoint: Any, **options: Any) -> None:
            app.get(f"/api{path}", dependencies=security, **options)(endpoint)

        def post(path: str, endpoint: Any, response: type[BaseModel], content: dict[str, Any]) -> None:
            """A POST route: its response schema, its error schemas and its request body's schema."""
            options = {"response_model": response, "responses": ERRORS, "openapi_extra": body(content)}
            app.post(f"/api{path}", dependencies=security, **options)(endpoint)

        get("/indexes", self.indexes)
        get("/languages", self.languages)
        post("/search", self.search, SearchResponse, SEARCH_BODY)
        post("/embed", self.embed, EmbedResponse, EMBED_BODY)
        post("/classify", self.classify, ClassifyResponse, CLASSIFY_BODY)
        get("/thumbnail/{index}/{id}", self.thumbnail, response_class=Response, responses=JPEG)
        get("/image/{index}/{id}", self.original, response_class=FileResponse, responses=ERRORS)
        get("/explain/{index}/{id}", self.explain, response_class=Response, responses=PNG)
        get("/duplicates", self.duplicates, responses=ERRORS)

    # -- pages and health -------------------------------------------------------------------------------

    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page_html)

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    async def prometheus(self) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def indexes(self) -> list[dict[str, Any]]:
        return [info.to_json() for info in self.catalog.info()]

    async def languages(self) -> list[str]:
        return sorted(TEMPLATES)

    async def duplicates(
        self, request: Request, index: str | None = None, threshold: float = DEFAULT_THRESHOLD, limit: int = 100
    ) -> dict[str, Any]:
        """Groups of near-duplicate images of an index (``altclip.search.duplicates``), largest first, at most
        ``limit``; worked out once per index state and threshold."""
        served = self.catalog.get(index)
        if not 1 <= limit <= self.limits.max_k:
            raise InputError(f"limit must be between 1 and {self.limits.max_k}, got {limit}")
        key = (served.name, served.index.collection.generation, threshold)
        found = self._duplicates.get(key)
        if found is None:
            found = await run_in_threadpool(find_duplicates, served.index, threshold)
            self._duplicates[key] = found
            while len(self._duplicates) > DUPLICATES_KEPT:
                self._duplicates.pop(next(iter(self._duplicates)))
        root = request.scope.get("root_path", "")
        groups = [{"images": [result(root, served.name, hit) for hit in g.hits()]} for g in found.groups[:limit]]
        summary = {k: v for k, v in found.to_json().items() if k != "groups"}
        return {"index": served.name, **summary, "groups": groups}

    # -- the model --------------------------------------------------------------------------------------

    async def search(self, request: Request) -> dict[str, Any]:
        query, image = await self.search_query(request)
        served = self.catalog.get(query.index)
        if not 1 <= query.k <= self.limits.max_k:
            raise InputError(f"k must be between 1 and {self.limits.max_k}, got {query.k}")
        if image is not None:
            vector = await self.worker.embed_image(image)
        elif (query.text is None) == (query.id is None):
            raise InputError("give either text or id (or upload an image as multipart)")
        elif query.id is not None:
            self.catalog.source(served.name, query.id)  # 404 unless the id is one of this index's images
            vector = served.index.vectors([query.id])[0]
        elif not query.text.strip():  # type: ignore[union-attr]
            raise InputError("text is empty")
        else:
            vector = await self.worker.embed_text(query.text)  # type: ignore[arg-type]
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

    async def embed(self, request: Request) -> dict[str, Any]:
        if not is_multipart(request):
            texts = EmbedRequest.model_validate(await read_json(request)).texts
            if not 1 <= len(texts) <= self.limits.max_texts:
                raise InputError(f"texts must hold 1 to {self.limits.max_texts} texts, got {len(texts)}")
            if empty := [i for i, text in enumerate(texts) if not text.strip()]:
                raise InputError(f"texts[{empty[0]}] is empty")
            vectors = await self.worker.call(lambda: self.embedder.embed_texts(texts))
        else:
            async with request.form(max_files=self.limits.max_images) as form:
                uploads = form.getlist("image")
                if not uploads:
                    raise InputError("no image: send one or more files in the field 'image'")
                batch = np.stack([await self.pixels(u, f"image[{i}]") for i, u in enumerate(uploads)])
            vectors = await self.worker.call(lambda: self.embedder.embed_pixels(torch.from_numpy(batch)))
        return {"embeddings": vectors.float().cpu().tolist()}

    async def classify(self, request: Request) -> dict[str, Any]:
        if not is_multipart(request):
            raise HTTPException(415, "send multipart/form-data with an image file, labels and lang")
        async with request.form(max_files=1) as form:
            labels, lang = read_labels(form), str(form.get("lang") or "en")
            image = await self.pixels(form.get("image"), "image")

        def run() -> torch.Tensor:
            classes = self.embedder.zero_shot_classes(labels, lang=lang)
            return self.embedder.probabilities(self.embed_image(image), classes)[0]

        probabilities = (await self.worker.call(run)).tolist()
        ranked = sorted(zip(labels, probabilities, strict=True), key=lambda pair: -pair[1])
        return {"predictions": [{"label": label, "probability": p} for label, p in ranked]}

    async def explain(self, index: str, id: str, text: str, lang: str | None = None) -> Response:
        """The thumbnail with the relevance map of ``text`` over it (where in the image the text matched), as PNG."""
        if not text.strip():
            raise InputError("text is empty")
        try:
            thumbnail = await run_in_threadpool(self.catalog.thumbnail, index, id)
            picture = to_rgb(load_image(thumbnail, name=f"{index}/{id}"))
        except ImageLoadError as err:
            raise NotFound(f"the image is no longer readable: {err}") from err
        relevance = await self.worker.call(lambda: self.embedder.explain(picture, text, lang=lang))
        png = io.BytesIO()
        overlay(picture, relevance).save(png, format="PNG")
        return Response(png.getvalue(), media_type="image/png", headers=CACHED)

    # -- the collection's images ------------------------------------------------------------------------

    def thumbnail(self, index: str, id: str) -> Response:
        try:
            data = self.catalog.thumbnail(index, id)
        except ImageLoadError as err:
            raise NotFound(f"the image is no longer readable: {err}") from err
        return Response(data, media_type="image/jpeg", headers=CACHED)

    def original(self, index: str, id: str) -> Response:
        source = self.catalog.source(index, id)
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

    # -- reading requests -------------------------------------------------------------------------------

    def embed_image(self, image: np.ndarray) -> torch.Tensor:
        """(3, H, W) pixels -> (1, dim) unit vector; runs on the model thread."""
        return self.embedder.embed_pixels(torch.from_numpy(image[None]))

    async def pixels(self, upload: Any, field: str) -> np.ndarray:
        """An uploaded image -> (3, H, W) float32, decoded off the event loop; 400 naming what is wrong."""
        if not isinstance(upload, UploadFile):
            raise InputError(f"{field}: expected an image file")
        data = await upload.read()
        name = f"{field} {upload.filename!r}" if upload.filename else field
        array, _, _ = await run_in_threadpool(self.image_processor.preprocess_file, data, None, name)
        return array

    async def search_query(self, request: Request) -> tuple[SearchRequest, np.ndarray | None]:
        """The search request, and the image query's pixels when it came as multipart."""
        if not is_multipart(request):
            return SearchRequest.model_validate(await read_json(request)), None
        async with request.form(max_files=1) as form:
            fields = {key: form[key] for key in ("k", "index", "dedup") if key in form}
            query = SearchRequest.model_validate(fields)
            return query, await self.pixels(form.get("image"), "image")


async def read_json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"the body is not valid JSON ({err})") from err


def is_multipart(request: Request) -> bool:
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        return True
    if kind.startswith("application/json"):
        return False
    raise HTTPException(415, f"send application/json or multipart/form-data, not {kind or 'no Content-Type'}")


def result(root: str, index: str, hit: Hit) -> dict[str, Any]:
    thumbnail = f"{root}/api/thumbnail/{quote(index, safe='')}/{hit.id}"
    return {"id": hit.id, "path": hit.path, "score": hit.score, "thumbnail": thumbnail}


def read_labels(form: FormData) -> list[str]:
    """The ``labels`` field: a JSON list of non-empty strings."""
    raw = form.get("labels")
    if not isinstance(raw, str) or not raw.strip():
        raise InputError('labels: expected a JSON list of class names, e.g. ["猫", "狗"]')
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError as err:
        raise InputError(f"labels: not a JSON list ({err})") from err
    if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
        raise InputError("labels: expected a JSON list of non-empty strings")
    if not 1 <= len(labels) <= 1000:
        raise InputError(f"labels: give 1 to 1000 labels, got {len(labels)}")
    return [label.strip() for label in labels]
