"""clip-retrieval's back-end API, spoken to by clip-retrieval's own code: its ``ClipClient`` (Python) and its
built front end (in headless Chromium, served from another origin), installed from its wheel without its
dependencies (scripts/setup.sh --test)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from playwright.sync_api import Browser, expect

from altclip.serve import ServeConfig, create_app
from tests.conftest import draw
from tests.serve.conftest import jpeg, running


def clip_retrieval_file(*parts: str) -> Path:
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None or spec.origin is None:
        reason = "clip-retrieval is not installed (scripts/setup.sh --test installs it)"
        if os.environ.get("ALTCLIP_REQUIRE_BROWSER"):  # CI: the set-up installs it, so it must be there
            pytest.fail(reason)
        pytest.skip(reason)
    return Path(spec.origin).parent.parent.joinpath(*parts)


def clip_client_module():
    """clip_retrieval/clip_client.py itself: the package's __init__ imports its Flask back end, not installed."""
    path = clip_retrieval_file("clip_retrieval", "clip_client.py")
    spec = importlib.util.spec_from_file_location("clip_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def client(embedder, catalog) -> Iterator[TestClient]:
    with TestClient(create_app(embedder, catalog, ServeConfig(clip_retrieval=True))) as client:
        yield client


@pytest.fixture(scope="module")
def server(embedder, catalog) -> Iterator[str]:
    with running(create_app(embedder, catalog, ServeConfig(clip_retrieval=True))) as url:
        yield url


def knn(client: TestClient, body: dict, content_type: str | None = "text/plain") -> list[dict]:
    """A knn-service call as the front end makes it (JSON as text/plain), or with no Content-Type at all."""
    headers = {"content-type": content_type} if content_type else {}
    answer = client.post("/knn-service", content=json.dumps(body).encode(), headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_indices_and_a_text_query_in_any_content_type(client, embedder, catalog):
    assert client.get("/indices-list").json() == ["photos", "mixed"]
    body = {
        "text": "一个红色的圆形",
        "modality": "image",
        "num_images": 3,
        "num_result_ids": 8,
        "indice_name": "photos",
    }
    plain, bare = knn(client, body), knn(client, body, content_type=None)
    assert plain == bare and len(plain) == 8
    query = embedder.embed_texts(["一个红色的圆形"]).float().numpy()[0]
    expected = catalog.get("photos").index.search(query, 8)[0]
    assert [r["id"] for r in plain] == [h.id for h in expected]
    np.testing.assert_allclose([r["similarity"] for r in plain], [h.score for h in expected], atol=1e-5)
    first = plain[0]
    assert first["image_path"] == expected[0].path and first["width"] == 400
    assert Image.open(io.BytesIO(base64.b64decode(first["image"]))).format == "JPEG"  # the thumbnail
    assert all("image" not in r and "image_path" not in r for r in plain[3:])  # beyond num_images: ids only


def test_metadata_dedup_embedding_input_and_what_is_refused(client, embedder, catalog):
    ids = [r["id"] for r in knn(client, {"text": "a blue square", "num_images": 20, "indice_name": "photos"})]
    unique = knn(client, {"text": "a blue square", "num_images": 20, "indice_name": "photos", "deduplicate": True})
    assert len(unique) < len(ids)  # the photos' exact copies are dropped
    meta = client.post("/metadata", content=json.dumps({"ids": ids[:2], "indice_name": "photos"})).json()
    assert [m["id"] for m in meta] == ids[:2] and meta[0]["metadata"]["image_path"].endswith(".jpg")
    vector = embedder.embed_texts(["a blue square"]).float().numpy()[0]
    by_vector = knn(client, {"embedding_input": (vector * 3).tolist(), "num_images": 20, "indice_name": "photos"})
    assert [r["id"] for r in by_vector] == ids  # normalised, as clip-retrieval does
    ignored = {"use_mclip": True, "use_safety_model": True, "use_violence_detector": True, "aesthetic_score": 9}
    assert [r["id"] for r in knn(client, {"text": "a blue square", "num_images": 20, **ignored})] == ids
    for body, status, says in [
        ({"image_url": "http://127.0.0.1:1/x.jpg"}, 400, "--allow-image-urls"),
        ({"text": "a cat", "modality": "text"}, 400, "no caption vectors"),
        ({"text": "a cat", "indice_name": "nope"}, 404, "no index named"),
        ({"embedding_input": [1.0, 2.0]}, 400, "embedding_input"),
        ({"image": "!!!not base64 of an image"}, 400, "image"),
        ({}, 400, "give one of text"),
    ]:
        answer = client.post("/knn-service", content=json.dumps(body))
        assert answer.status_code == status and says in answer.json()["error"], (body, answer.text)
    assert client.post("/metadata", content=b'{"ids": [99999], "indice_name": "photos"}').status_code == 404


def test_cors_for_these_paths_only(client):
    answer = client.post("/knn-service", content=b'{"text": "a cat"}', headers={"origin": "http://elsewhere"})
    assert answer.headers["access-control-allow-origin"] == "*"
    preflight = client.options("/knn-service", headers={"origin": "http://x", "access-control-request-method": "POST"})
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-origin" not in client.get("/api/indexes").headers


def test_clip_client_text_image_and_embedding_queries(server, embedder, catalog, tmp_path):
    """Each query gives the results of the same search made in Python (the test model's weights are random, so
    what it finds is checked against the index, not against the picture's colour)."""
    clip_client = clip_client_module()
    client = clip_client.ClipClient(url=f"{server}/knn-service", indice_name="photos", num_images=5)
    index = catalog.get("photos").index

    def expected(vector) -> list[int]:  # ClipClient asks for deduplicated results
        return [hit.id for hit in index.search_unique(vector.float().numpy()[0], 5)[0]]

    chinese = client.query(text="一个红色的圆形")
    assert len(chinese) == 5 and all({"id", "similarity", "image", "image_path"} <= set(r) for r in chinese)
    assert [r["id"] for r in chinese] == expected(embedder.embed_texts(["一个红色的圆形"]))
    picture = tmp_path / "query.jpg"
    picture.write_bytes(jpeg(draw((0, 0, 255), "square", 64)))
    by_image = client.query(image=str(picture))
    assert [r["id"] for r in by_image] == expected(embedder.embed_images([Image.open(picture)]))
    vector = embedder.embed_texts(["一个红色的圆形"]).float().numpy()[0].tolist()
    by_embedding = client.query(embedding_input=vector)
    assert [r["id"] for r in by_embedding] == [r["id"] for r in chinese]


@pytest.fixture
def front_end(server, tmp_path) -> Iterator[str]:
    """clip-retrieval's built front end, served from another origin, its config.json pointing at our server."""
    build = clip_retrieval_file("front", "build")
    if not (build / "index.html").is_file():
        pytest.skip(f"clip-retrieval's front end is not at {build}")
    root = tmp_path / "front"
    shutil.copytree(build, root)
    (root / "config.json").write_text(json.dumps({"defaultBackend": server, "defaultIndex": "photos"}))
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


def test_the_front_end_shows_images_for_a_chinese_query(browser: Browser, front_end: str, screenshots: Path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(front_end)
    search = page.locator("clip-front #searchBar")
    expect(search).to_be_visible()
    search.fill("一个红色的圆形")
    search.press("Enter")
    page.locator("clip-front #textSearch").click()
    pictures = page.locator("clip-front figure img.pic")
    expect(pictures.first).to_be_visible(timeout=30_000)
    page.wait_for_function(
        "() => [...document.querySelector('clip-front').shadowRoot.querySelectorAll('figure img')]"
        ".some((i) => i.classList.contains('pic') && i.complete && i.naturalWidth > 0)"
    )
    assert pictures.count() >= 5 and pictures.first.get_attribute("src").startswith("data:image")
    page.screenshot(path=str(screenshots / "clip-retrieval-front.png"))
    assert not errors, errors
    context.close()
