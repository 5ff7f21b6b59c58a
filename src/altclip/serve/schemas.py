"""The HTTP API's request and response bodies, as pydantic models and OpenAPI schemas (shown at /docs)."""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError


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
