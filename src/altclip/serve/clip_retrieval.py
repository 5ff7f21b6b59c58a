"""clip-retrieval's back-end API on ``altclip serve`` (``--clip-retrieval``): its front end and its
``ClipClient`` search the served collections with AltCLIP.

    GET  /indices-list    the served index names
    POST /knn-service     {"text" | "image" (base64) | "image_url" | "embedding_input", "modality",
                           "num_images", "num_result_ids", "indice_name", "deduplicate", ...} -> results, best
                           first: "id", "similarity", and for the first num_images the metadata columns
                           ("image_path", "caption", "url", ...) and "image" (the thumbnail, base64 JPEG)
    POST /metadata        {"ids", "indice_name"} -> [{"id", "metadata"}]

Bodies are read as JSON whatever their Content-Type says: ``ClipClient`` sends none and the front end sends
``text/plain``. Answers carry CORS headers (``Access-Control-Allow-Origin: *``), so the front end, served from
another origin, can call the server. ``use_mclip``, ``use_safety_model``, ``use_violence_detector`` and
``aesthetic_*`` are accepted and ignored: AltCLIP reads every language itself, and there is no safety or
aesthetic model here. ``image_url`` makes the server fetch a URL, a server-side request forgery risk: it is
refused unless the server was started with ``--allow-image-urls``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import threading
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pyarrow as pa
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from altclip.errors import InputError
from altclip.processing.image import ImageLoadError
from altclip.search.index import Hit
from altclip.serve.catalog import Catalog, ServedIndex
from altclip.serve.routes import read_json
from altclip.serve.worker import ModelWorker

PATHS = ("/indices-list", "/knn-service", "/metadata")
IGNORED = ("use_mclip", "use_safety_model", "use_violence_detector", "aesthetic_score", "aesthetic_weight")
URL_TIMEOUT = 10.0  # seconds to fetch an image_url


class ClipRetrievalApi:
    """clip-retrieval's three endpoints over the catalog and the server's model thread."""

    def __init__(
        self, catalog: Catalog, worker: ModelWorker, image_processor: Any, max_k: int, max_bytes: int, urls: bool
    ) -> None:
        self.catalog, self.worker, self.image_processor = catalog, worker, image_processor
        self.max_k, self.max_bytes, self.urls = max_k, max_bytes, urls
        self._metadata: dict[str, pa.Table] = {}
        self._captions: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def register(self, app: FastAPI) -> None:
        app.get("/indices-list", tags=["clip-retrieval"])(self.indices)
        app.post("/knn-service", tags=["clip-retrieval"])(self.knn)
        app.post("/metadata", tags=["clip-retrieval"])(self.metadata)

    async def indices(self) -> list[str]:
        return list(self.catalog.indexes)

    async def knn(self, request: Request) -> list[dict[str, Any]]:
        query = await read_json(request)
        if not isinstance(query, dict):
            raise InputError("the body must be a JSON object")
        served = self.catalog.get(query.get("indice_name") or None)
        num_images = count(query, "num_images", 40)
        wanted = min(count(query, "num_result_ids", num_images), self.max_k)  # the front end asks for 3000
        vector = await self.query_vector(query, served)
        hits = await run_in_threadpool(self.search, served, vector, query.get("modality") or "image", wanted, query)
        first = await run_in_threadpool(self.rows, served, [hit.id for hit in hits[:num_images]])
        return [
            {**(first[i] if i < len(first) else {}), "id": hit.id, "similarity": hit.score}
            for i, hit in enumerate(hits)
        ]

    async def metadata(self, request: Request) -> list[dict[str, Any]]:
        body = await read_json(request)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise InputError('ids: expected a JSON list of integers, as in {"ids": [0, 1], "indice_name": "..."}')
        if len(ids) > self.max_k:
            raise InputError(f"ids: at most {self.max_k} at a time, got {len(ids)}")
        served = self.catalog.get(body.get("indice_name") or None)
        for i in ids:
            self.catalog.source(served.name, i)  # 404 for an id the index does not hold
        rows = await run_in_threadpool(self.rows, served, ids)
        return [{"id": i, "metadata": row} for i, row in zip(ids, rows, strict=True)]

    # -- the query ---------------------------------------------------------------------------------------

    async def query_vector(self, query: dict[str, Any], served: ServedIndex) -> np.ndarray:
        """The query as a (dim,) unit vector: the first given of text, image, image_url and embedding_input,
        as clip-retrieval's back end takes them."""
        text, image, url, embedding = (query.get(k) for k in ("text", "image", "image_url", "embedding_input"))
        if isinstance(text, str) and text.strip():
            return await self.worker.embed_text(text)
        if image:
            if not isinstance(image, str):
                raise InputError("image: expected a base64 string")
            try:
                data = base64.b64decode(image, validate=False)
            except (binascii.Error, ValueError) as err:
                raise InputError(f"image: not base64 ({err})") from err
            return await self.embed_image(data, "image")
        if url:
            return await self.embed_image(await self.fetch(url), f"image_url {url!r}")
        if embedding is not None:
            return unit_vector(embedding, served.index.index.d)
        raise InputError("give one of text, image (base64), image_url or embedding_input")

    async def embed_image(self, data: bytes, name: str) -> np.ndarray:
        if len(data) > self.max_bytes:
            raise InputError(f"{name}: {len(data)} bytes, over the server's upload limit of {self.max_bytes}")
        pixels, _, _ = await run_in_threadpool(self.image_processor.preprocess_file, data, None, name)
        return await self.worker.embed_image(pixels)

    async def fetch(self, url: Any) -> bytes:
        if not self.urls:
            raise InputError(
                "image_url: this server does not fetch URLs (a server-side request forgery risk); send the image "
                "itself as base64 in 'image', or start altclip serve with --allow-image-urls"
            )
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise InputError(f"image_url: expected an http(s) URL, got {url!r}")

        def get() -> bytes:
            with urllib.request.urlopen(url, timeout=URL_TIMEOUT) as answer:
                return answer.read(self.max_bytes + 1)

        try:
            return await run_in_threadpool(get)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise InputError(f"image_url {url!r} could not be fetched: {err}") from err

    def search(
        self, served: ServedIndex, vector: np.ndarray, modality: str, k: int, query: dict[str, Any]
    ) -> list[Hit]:
        if modality == "text":
            return self.search_captions(served, vector, k)
        if modality != "image":
            raise InputError(f"modality: expected image or text, got {modality!r}")
        if query.get("deduplicate"):
            return served.index.search_unique(vector, k)[0]
        return served.index.search(vector, k)[0]

    def search_captions(self, served: ServedIndex, vector: np.ndarray, k: int) -> list[Hit]:
        """Exact search over the collection's caption vectors (tar shards embedded with --captions)."""
        with self._lock:
            if served.name not in self._captions:
                if not served.index.collection.manifest.captions:
                    raise InputError(
                        f"modality text: index {served.name!r} has no caption vectors (embed tar shards with "
                        "--captions for them); use modality image"
                    )
                self._captions[served.name] = served.index.collection.embeddings("text").astype(np.float32)
        captions = self._captions[served.name]
        scores = captions @ vector.astype(np.float32)  # (rows,)
        best = np.argsort(-scores, kind="stable")[:k]
        paths = served.index.paths
        return [Hit(rank, float(scores[i]), str(paths[i]), int(i)) for rank, i in enumerate(best)]

    # -- the metadata ------------------------------------------------------------------------------------

    def rows(self, served: ServedIndex, ids: list[int]) -> list[dict[str, Any]]:
        """Each id's metadata columns (the empty ones left out) and its thumbnail as base64 JPEG."""
        with self._lock:
            if served.name not in self._metadata:
                self._metadata[served.name] = served.index.collection.metadata()
        table = self._metadata[served.name].take(pa.array(ids, pa.int64())).to_pylist()
        rows = []
        for i, values in zip(ids, table, strict=True):
            row = {key: value for key, value in values.items() if value is not None and value != ""}
            with contextlib.suppress(ImageLoadError):  # a file gone or no longer decoding: the row, no picture
                row["image"] = base64.b64encode(self.catalog.thumbnail(served.name, i)).decode("ascii")
            rows.append(row)
        return rows


def count(query: dict[str, Any], key: str, default: int) -> int:
    value = query.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{key}: expected a positive integer, got {value!r}")
    return value


def unit_vector(values: Any, dim: int) -> np.ndarray:
    """``embedding_input``: a list of ``dim`` numbers, normalised as clip-retrieval does."""
    try:
        vector = np.asarray(values, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as err:
        raise InputError(f"embedding_input: expected a list of {dim} numbers ({err})") from err
    if vector.shape != (dim,) or not np.isfinite(vector).all() or not vector.any():
        raise InputError(f"embedding_input: expected {dim} finite numbers, not all zero; got shape {vector.shape}")
    return vector / np.linalg.norm(vector)
