"""immich's machine-learning protocol on ``altclip serve`` (``--immich``): the server becomes the URL immich's
server calls for smart search, and forwards everything else (faces, OCR) to immich's own service.

    GET  /ping       "pong": immich's health check
    POST /predict    multipart: ``entries`` (JSON: task -> type -> {"modelName", "options"}) and either an
                     ``image`` file or a ``text`` field. ``{"clip": {"visual": ...}}`` with an image answers
                     ``{"clip": "[...]", "imageHeight": h, "imageWidth": w}``, ``{"clip": {"textual": ...}}``
                     with a text ``{"clip": "[...]"}``: the unit vector as a JSON array inside a string, as
                     immich's service sends it. Any other task goes, as it came, to ``--immich-upstream``.

Statuses follow immich's service: 422 for ``entries`` that are not task -> type -> model, 400 for a request
with neither image nor text; an image that does not decode is 400 too. A non-2xx answer makes immich mark the
URL unhealthy and try its next one, so a CLIP request for a model of another width is refused (422) rather
than answered from a different vector space.

immich sizes its vector column from the model name it is set to (``IMMICH_CLIP_WIDTHS``, from immich's server
constants), so the name chosen in immich's settings must have the width of the model served here: a request
for any name of another width is refused, and ``RECOMMENDED`` says which name to pick.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from altclip.errors import InputError
from altclip.processing.image import CLIPImageProcessor
from altclip.serve.worker import ModelWorker

# immich's CLIP model names and the vector width immich makes its column for each (server/src/constants.ts)
IMMICH_CLIP_WIDTHS: dict[str, int] = {
    **dict.fromkeys(
        [
            "RN101__openai",
            "RN101__yfcc15m",
            "ViT-B-16__laion400m_e31",
            "ViT-B-16__laion400m_e32",
            "ViT-B-16__openai",
            "ViT-B-32__laion2b-s34b-b79k",
            "ViT-B-32__laion2b_e16",
            "ViT-B-32__laion400m_e31",
            "ViT-B-32__laion400m_e32",
            "ViT-B-32__openai",
            "XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k",
            "XLM-Roberta-Large-Vit-B-32",
        ],
        512,
    ),
    **dict.fromkeys(
        [
            "RN50x4__openai",
            "ViT-B-16-plus-240__laion400m_e31",
            "ViT-B-16-plus-240__laion400m_e32",
            "XLM-Roberta-Large-Vit-B-16Plus",
        ],
        640,
    ),
    **dict.fromkeys(
        [
            "LABSE-Vit-L-14",
            "RN50x16__openai",
            "ViT-B-16-SigLIP-256__webli",
            "ViT-B-16-SigLIP-384__webli",
            "ViT-B-16-SigLIP-512__webli",
            "ViT-B-16-SigLIP-i18n-256__webli",
            "ViT-B-16-SigLIP__webli",
            "ViT-L-14-336__openai",
            "ViT-L-14-quickgelu__dfn2b",
            "ViT-L-14__laion2b-s32b-b82k",
            "ViT-L-14__laion400m_e31",
            "ViT-L-14__laion400m_e32",
            "ViT-L-14__openai",
            "XLM-Roberta-Large-Vit-L-14",
            "nllb-clip-base-siglip__mrl",
            "nllb-clip-base-siglip__v1",
        ],
        768,
    ),
    **dict.fromkeys(
        [
            "RN50__cc12m",
            "RN50__openai",
            "RN50__yfcc15m",
            "RN50x64__openai",
            "ViT-H-14-378-quickgelu__dfn5b",
            "ViT-H-14-quickgelu__dfn5b",
            "ViT-H-14__laion2b-s32b-b79k",
            "ViT-L-16-SigLIP-256__webli",
            "ViT-L-16-SigLIP-384__webli",
            "ViT-g-14__laion2b-s12b-b42k",
            "XLM-Roberta-Large-ViT-H-14__frozen_laion5b_s13b_b90k",
        ],
        1024,
    ),
    **dict.fromkeys(
        ["ViT-SO400M-14-SigLIP-384__webli", "nllb-clip-large-siglip__mrl", "nllb-clip-large-siglip__v1"], 1152
    ),
}
# the name to choose in immich for a model of each width: XLM-R text towers, as AltCLIP's (768: BAAI/AltCLIP and
# AltCLIP-m9, ViT-L/14; 1024: AltCLIP-m18)
RECOMMENDED = {
    512: "XLM-Roberta-Large-Vit-B-32",
    640: "XLM-Roberta-Large-Vit-B-16Plus",
    768: "XLM-Roberta-Large-Vit-L-14",
    1024: "XLM-Roberta-Large-ViT-H-14__frozen_laion5b_s13b_b90k",
    1152: "nllb-clip-large-siglip__v1",
}
FORWARD_TIMEOUT = 300.0  # seconds the upstream may take (face detection on a large photo, a model loading)


def immich_name(name: str) -> str:
    """A model name as immich's server keys it: any ``org/`` prefix dropped and ``::`` written ``__``."""
    return name.rsplit("/", 1)[-1].replace("::", "__")


@dataclass
class ImmichSettings:
    """``upstream``: immich's own machine-learning service (``http://immich-machine-learning:3003``), which
    answers every task but CLIP; ``models``: names answered besides the immich names of the served width."""

    upstream: str | None = None
    models: tuple[str, ...] = ()


class ImmichApi:
    """/ping and /predict over the server's model thread."""

    def __init__(
        self, worker: ModelWorker, image_processor: CLIPImageProcessor, width: int, settings: ImmichSettings
    ) -> None:
        self.worker, self.image_processor, self.width, self.settings = worker, image_processor, width, settings
        self.upstream = settings.upstream.rstrip("/") if settings.upstream else None

    def register(self, app: FastAPI) -> None:
        app.get("/ping", response_class=PlainTextResponse, tags=["immich"])(self.ping)
        app.post("/predict", tags=["immich"])(self.predict)

    async def ping(self) -> str:
        return "pong"

    async def predict(self, request: Request) -> Any:
        """immich's CLIP requests answered here; faces, OCR and any other task forwarded to the upstream."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(422, "Invalid request format: send multipart/form-data with an 'entries' field")
        body = await request.body()  # kept for forwarding; the form below is parsed from it
        async with request.form(max_files=1, max_fields=16) as form:
            entries = parse_entries(form.get("entries"))
            if "clip" not in entries:
                return await self.forward(body, request.headers["content-type"], sorted(entries))
            if len(entries) > 1:
                raise HTTPException(422, f"Invalid request format: send 'clip' alone, not with {sorted(entries)}")
            kind, model = clip_entry(entries["clip"])
            self.check_model(model)
            image, text = form.get("image"), form.get("text")
            if image is None and text is None:
                raise InputError("Either image or text must be provided")
            if kind == "visual":
                if not isinstance(image, UploadFile):
                    raise InputError("the visual CLIP task needs an image file in the field 'image'")
                return await self.embed_image(await image.read())
        if not isinstance(text, str) or not text.strip():
            raise InputError("the textual CLIP task needs a non-empty 'text' field")
        return {"clip": vector_string(await self.worker.embed_text(text))}

    async def embed_image(self, data: bytes) -> dict[str, Any]:
        pixels, width, height = await run_in_threadpool(self.image_processor.preprocess_file, data, None, "image")
        vector = await self.worker.embed_image(pixels)
        return {"clip": vector_string(vector), "imageHeight": height, "imageWidth": width}

    def check_model(self, name: str) -> None:
        """Refuse a model name whose vectors immich would store in a column of another width."""
        wanted = immich_name(name)
        if name in self.settings.models or wanted in self.settings.models:
            return
        width = IMMICH_CLIP_WIDTHS.get(wanted)
        if width == self.width:
            return
        choose = RECOMMENDED.get(self.width)
        hint = f"; choose {choose!r} in immich's smart-search settings" if choose else ""
        what = f"has {width}-dimensional vectors in immich" if width else "is a name immich knows no width for"
        raise HTTPException(
            422, f"modelName {name!r} {what}, but this server's model gives {self.width}-dimensional ones{hint}"
        )

    async def forward(self, body: bytes, content_type: str, tasks: list[str]) -> Response:
        """The request as it came to the upstream's /predict, and its answer as it came back."""
        if self.upstream is None:
            raise HTTPException(
                501,
                f"{', '.join(tasks)} is not served here: start altclip serve with --immich-upstream URL "
                "(immich's machine-learning service) to have it forwarded",
            )
        request = urllib.request.Request(
            f"{self.upstream}/predict", data=body, headers={"Content-Type": content_type}, method="POST"
        )

        def post() -> tuple[int, str, bytes]:
            try:
                with urllib.request.urlopen(request, timeout=FORWARD_TIMEOUT) as answer:
                    return answer.status, answer.headers.get("content-type", ""), answer.read()
            except urllib.error.HTTPError as err:  # the upstream's own error, passed on as it is
                return err.code, err.headers.get("content-type", ""), err.read()

        try:
            status, kind, data = await run_in_threadpool(post)
        except (urllib.error.URLError, OSError) as err:
            raise HTTPException(502, f"the immich upstream {self.upstream} did not answer: {err}") from err
        return Response(data, status_code=status, media_type=kind or None)


def parse_entries(raw: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """The ``entries`` field: task -> type -> {"modelName": str, "options": {...}}; 422 otherwise, as immich's
    service answers."""
    try:
        entries = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError as err:
        raise HTTPException(422, f"Invalid request format: entries is not JSON ({err})") from err
    valid = (
        isinstance(entries, dict)
        and entries
        and all(
            isinstance(types, dict)
            and types
            and all(isinstance(e, dict) and isinstance(e.get("modelName"), str) for e in types.values())
            for types in entries.values()
        )
    )
    if not valid:
        raise HTTPException(
            422,
            'Invalid request format: entries must be JSON like {"clip": {"visual": {"modelName": "..."}}}',
        )
    return entries  # type: ignore[return-value]


def clip_entry(types: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """("visual" | "textual", the model name) of a CLIP task; 422 for anything else."""
    if len(types) != 1 or next(iter(types)) not in ("visual", "textual"):
        raise HTTPException(422, f"Invalid request format: clip takes one of visual or textual, got {sorted(types)}")
    kind, entry = next(iter(types.items()))
    if not isinstance(entry.get("options", {}), dict):
        raise HTTPException(422, "Invalid request format: options must be an object")
    return kind, entry["modelName"]  # options (language) are accepted: XLM-R needs no language tag


def vector_string(vector: np.ndarray) -> str:
    """A unit vector as immich's service sends it: a JSON array, inside a string."""
    return json.dumps(np.asarray(vector, dtype=np.float32).tolist())
