"""immich's machine-learning protocol: its requests replayed field for field (as immich's server builds them in
machine-learning.repository.ts), answers as immich's service gives them, other tasks forwarded upstream."""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from altclip.serve import ServeConfig, create_app
from altclip.serve.immich import ImmichApi, ImmichSettings
from tests.conftest import draw
from tests.serve.conftest import jpeg, running

MODEL = "altclip-test"  # the tiny test model's width is no immich model's: it is answered by this extra name
FACES = {"facial-recognition": {"detection": {"modelName": "buffalo_l", "options": {"minScore": 0.7}},
                                "recognition": {"modelName": "buffalo_l"}}}  # fmt: skip


def visual(model: str = MODEL) -> str:
    return json.dumps({"clip": {"visual": {"modelName": model}}})


def textual(model: str = MODEL, language: str | None = "zh-CN") -> str:
    return json.dumps({"clip": {"textual": {"modelName": model, "options": {"language": language}}}})


def image_request(data: bytes, entries: str) -> dict:
    """multipart as immich's getFormData builds it: the field entries, then the file as a Blob (named "blob")."""
    return {"files": {"entries": (None, entries), "image": ("blob", data, "application/octet-stream")}}


def text_request(text: str, entries: str) -> dict:
    return {"files": {"entries": (None, entries), "text": (None, text)}}


@contextmanager
def upstream_server():
    """immich's own ML service, as far as these tests need it: it records what it got and answers a face."""
    received: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["Content-Type"], body))
            answer = json.dumps({"facial-recognition": [], "imageHeight": 300, "imageWidth": 400}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def upstream():
    with upstream_server() as found:
        yield found


@pytest.fixture(scope="module")
def immich(embedder, catalog, upstream):
    settings = ImmichSettings(upstream=upstream[0], models=(MODEL,))
    with TestClient(create_app(embedder, catalog, ServeConfig(immich=settings, max_upload_bytes=2**20))) as client:
        yield client


def vector(answer: dict) -> np.ndarray:
    assert isinstance(answer["clip"], str)  # a JSON array inside a string, as immich's service sends it
    return np.array(json.loads(answer["clip"]), dtype=np.float32)


def test_ping(immich):
    answer = immich.get("/ping")
    assert answer.status_code == 200 and answer.text == "pong"


def test_text_and_image_vectors_equal_the_embedders(immich, embedder):
    text = "一只红色的圆"
    answer = immich.post("/predict", **text_request(text, textual()))
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"clip"}
    np.testing.assert_allclose(vector(answer.json()), embedder.embed_texts([text]).float().numpy()[0], atol=1e-5)

    picture = draw((200, 30, 30), "circle", 64).resize((400, 300))
    answer = immich.post("/predict", **image_request(jpeg(picture), visual()))
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert (got["imageWidth"], got["imageHeight"]) == (400, 300)
    expected = embedder.embed_images([Image.open(io.BytesIO(jpeg(picture)))]).float().numpy()[0]
    np.testing.assert_allclose(vector(got), expected, atol=1e-5)


@pytest.mark.parametrize(
    "entries",
    [
        "not json",
        "[]",
        json.dumps({"clip": {"visual": {}}}),  # no modelName
        json.dumps({"clip": {"visual": "ViT-B-32__openai"}}),
        json.dumps({"clip": {"visual": {"modelName": MODEL}, "textual": {"modelName": MODEL}}}),
    ],
)
def test_bad_entries_get_422(immich, entries):
    answer = immich.post("/predict", **text_request("a cat", entries))
    assert answer.status_code == 422, answer.text
    assert immich.post("/predict", files={"text": (None, "no entries at all")}).status_code == 422
    assert immich.post("/predict", json={"entries": entries}).status_code == 422  # not multipart


def test_no_input_gets_400_and_bad_images_are_refused(immich):
    answer = immich.post("/predict", files={"entries": (None, visual())})
    assert answer.status_code == 400 and "Either image or text" in answer.json()["error"]
    broken = immich.post("/predict", **image_request(b"\xff\xd8 not really a JPEG", visual()))
    assert broken.status_code == 400 and "image" in broken.json()["error"]
    huge = immich.post("/predict", **image_request(b"\0" * (2**20 + 1), visual()))
    assert huge.status_code == 413
    assert immich.get("/ping").text == "pong"  # none of it hurt the server


def test_a_model_of_another_width_is_refused(immich, embedder):
    answer = immich.post("/predict", **text_request("a cat", textual("ViT-B-32__openai")))
    assert answer.status_code == 422 and "512-dimensional" in answer.json()["error"]
    api = ImmichApi(None, None, 768, ImmichSettings())  # type: ignore[arg-type]
    for name in ("XLM-Roberta-Large-Vit-L-14", "immich-app/XLM-Roberta-Large-Vit-L-14", "ViT-L-14::openai"):
        api.check_model(name)  # immich names of width 768, however immich spells them
    for name, why in [("ViT-B-32__openai", "512-dimensional"), ("BAAI/AltCLIP", "knows no width")]:
        with pytest.raises(Exception, match=why) as refused:
            api.check_model(name)
        assert refused.value.status_code == 422 and "XLM-Roberta-Large-Vit-L-14" in refused.value.detail


def test_faces_are_forwarded_upstream_as_they_came(immich, upstream):
    received = upstream[1]
    received.clear()
    picture = jpeg(draw((30, 30, 200), "square", 64))
    answer = immich.post("/predict", **image_request(picture, json.dumps(FACES)))
    assert answer.status_code == 200 and answer.json()["facial-recognition"] == []
    ((content_type, body),) = received
    assert content_type.startswith("multipart/form-data; boundary=")
    assert picture in body and json.dumps(FACES).encode() in body  # the bytes as immich sent them


def test_faces_without_an_upstream_get_a_clear_error(embedder, catalog):
    config = ServeConfig(immich=ImmichSettings(models=(MODEL,)))
    with TestClient(create_app(embedder, catalog, config)) as client:
        answer = client.post("/predict", **image_request(jpeg(draw((0, 0, 0), "circle", 32)), json.dumps(FACES)))
        assert answer.status_code == 501 and "--immich-upstream" in answer.json()["error"]
        assert client.post("/predict", **text_request("猫", textual())).status_code == 200  # CLIP still answered


def test_sixteen_concurrent_images_get_200_or_503_with_retry_after(embedder, catalog):
    """immich's smart-search job sends images concurrently: every answer is a vector or a polite 503."""
    config = ServeConfig(immich=ImmichSettings(models=(MODEL,)), queue_size=4)
    pictures = [jpeg(draw((20 * i, 100, 200 - 10 * i), "triangle", 64).resize((320, 240))) for i in range(16)]
    with running(create_app(embedder, catalog, config)) as url:

        def post(data: bytes) -> httpx.Response:
            return httpx.post(f"{url}/predict", timeout=60, **image_request(data, visual()))

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(post, pictures))
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    assert all(a.headers.get("retry-after") for a in answers if a.status_code == 503)
    assert all(len(vector(a.json())) == embedder.model.config.projection_dim for a in answers if a.status_code == 200)
