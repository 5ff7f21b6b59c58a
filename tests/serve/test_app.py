"""The HTTP API, endpoint by endpoint, with every error the issue names; the token rule; metrics; load."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from altclip.data.shards import scan_shard
from altclip.explain.drawing import overlay
from altclip.search.index import SearchIndex
from altclip.serve import Catalog, ServeConfig, create_app
from tests.conftest import bomb_png, draw, make_shards
from tests.serve.conftest import COPIES, embedded, jpeg

MB = 2**20


def photo(catalog: Catalog, name: str) -> tuple[int, bytes]:
    """The id and bytes of one photo of the photos index."""
    paths = catalog.get("photos").index.paths
    i = next(i for i, p in enumerate(paths) if p.endswith(f"/{name}.jpg"))
    return i, Path(paths[i]).read_bytes()


def search(client: TestClient, **body) -> dict:
    response = client.post("/api/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, message


# -- the read-only endpoints ---------------------------------------------------------------------------


def test_health_page_docs_and_indexes(client, altclip_checkpoint):
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and 'id="query"' in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/api/search", "/api/embed", "/api/classify", "/api/thumbnail/{index}/{id}"} <= set(schema["paths"])
    search_body = schema["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(search_body)
    assert client.get("/api/indexes").json() == [
        {"name": "photos", "count": 15, "dim": 16, "model": str(altclip_checkpoint)},
        {"name": "mixed", "count": 10, "dim": 16, "model": str(altclip_checkpoint)},
    ]
    assert {"en", "zh", "ar", "ja"} <= set(client.get("/api/languages").json())


# -- search -----------------------------------------------------------------------------------------------


def test_text_search_equals_brute_force(client, embedder, catalog):
    found = search(client, text="一个红色的圆形", k=5)
    assert found["index"] == "photos" and found["dedup"] is False and found["dropped"] == 0
    index: SearchIndex = catalog.get("photos").index
    vectors = index.vectors(list(range(len(index))))
    scores = vectors @ embedder.embed_texts(["一个红色的圆形"]).float().numpy()[0]
    best = np.argsort(-scores)[:5]
    results = found["results"]
    assert [r["id"] for r in results] == best.tolist()
    np.testing.assert_allclose([r["score"] for r in results], scores[best], atol=1e-5)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert all(r["path"] == index.paths[r["id"]] for r in results)
    assert all(r["thumbnail"] == f"/api/thumbnail/photos/{r['id']}" for r in results)
    thumbnail = client.get(results[0]["thumbnail"])
    assert thumbnail.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumbnail.content)).size == (256, 192)


def test_search_by_uploaded_image_and_by_id(client, catalog):
    i, data = photo(catalog, "yellow-square")
    by_upload = client.post("/api/search", files={"image": ("query.jpg", data, "image/jpeg")}, data={"k": "3"})
    assert by_upload.status_code == 200, by_upload.text
    top = by_upload.json()["results"][0]
    assert top["id"] == i and top["score"] == pytest.approx(1.0, abs=1e-2)  # the stored photo finds itself
    by_id = search(client, id=i, k=3)["results"]
    assert by_id[0]["id"] == i and by_id[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert len(by_id) == 3
    other = search(client, id=0, k=2, index="mixed")
    assert other["index"] == "mixed" and other["results"][0]["id"] == 0
    assert other["results"][0]["thumbnail"] == "/api/thumbnail/mixed/0"


def test_dedup_drops_near_duplicates_and_says_how_many(client, catalog):
    i, _ = photo(catalog, COPIES[0])
    index = catalog.get("photos").index
    plain = search(client, id=i, k=15)
    assert plain["dropped"] == 0 and len(plain["results"]) == 15
    unique = search(client, id=i, k=15, dedup=True)
    assert unique["dedup"] is True and unique["dropped"] >= 1
    ids = [r["id"] for r in unique["results"]]
    assert len(ids) + unique["dropped"] == 15  # the whole index was walked
    vectors = index.vectors(ids)
    similar = vectors @ vectors.T
    assert (similar[np.triu_indices(len(ids), 1)] < 0.94).all()
    assert {Path(index.paths[j]).stem for j in ids[:1]} <= {COPIES[0], f"{COPIES[0]}-copy"}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"text": "a cat", "k": 0}, 400, ["k must be between 1 and 1000, got 0"]),
        ({"text": "a cat", "k": 1001}, 400, ["got 1001"]),
        ({"text": "a cat", "k": "many"}, 400, ["k:"]),
        ({"text": "   "}, 400, ["text is empty"]),
        ({"text": ""}, 400, ["text is empty"]),
        ({}, 400, ["give either text or id"]),
        ({"text": "a cat", "id": 1}, 400, ["give either text or id"]),
        ({"text": "a cat", "index": "nope"}, 404, ["no index named 'nope'"]),
        ({"id": 15}, 404, ["has no image '15'"]),
        ({"id": -1}, 404, ["has no image '-1'"]),
        ({"text": "a cat", "colour": "red"}, 400, ["colour: Extra inputs are not permitted"]),
        ([1, 2], 400, ["body:"]),
    ],
)
def test_search_errors(client, body, status, words):
    assert_error(client.post("/api/search", json=body), status, *words)


def test_search_body_errors(client):
    assert_error(
        client.post("/api/search", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "not valid JSON",
    )
    assert_error(
        client.post("/api/search", content=b"text=cat", headers={"content-type": "text/plain"}), 415, "text/plain"
    )
    assert_error(
        client.post("/api/search", data={"k": "3"}, files={"other": ("a", b"x")}), 400, "image: expected an image file"
    )


# -- bad uploads: 413 and 400, and the server stays well --------------------------------------------------


def truncated_jpeg() -> bytes:
    data = jpeg(draw((200, 30, 30), "circle", 200))
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"just some text", ["not an image Pillow can read"]),
        (b"", ["zero-byte file"]),
        (truncated_jpeg(), ["truncated"]),
        (bomb_png(), ["decompression bomb"]),
    ],
    ids=["not-an-image", "empty", "truncated", "bomb"],
)
def test_bad_images_get_400_with_the_reason(client, data, words):
    files = {"image": ("bad.jpg", data, "image/jpeg")}
    assert_error(client.post("/api/search", files=files), 400, "'bad.jpg'", *words)
    assert_error(client.post("/api/embed", files=files), 400, "image[0] 'bad.jpg'", *words)
    labels = {"labels": '["a", "b"]'}
    assert_error(client.post("/api/classify", files=files, data=labels), 400, "'bad.jpg'", *words)
    assert search(client, text="still serving")["results"]


def test_uploads_over_20_mb_get_413(client):
    big = b"\0" * (20 * MB + 1)
    files = {"image": ("big.jpg", big, "image/jpeg")}
    assert_error(client.post("/api/search", files=files), 413, "20 MB")
    assert_error(client.post("/api/embed", content=big, headers={"content-type": "application/json"}), 413)

    def chunks():  # no Content-Length: the limit holds while the body streams in
        for _ in range(21):
            yield b"\0" * MB

    response = client.post("/api/search", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "20 MB")
    assert search(client, text="still serving")["results"]
    small = {"image": ("ok.jpg", jpeg(draw((30, 30, 200), "square", 64)), "image/jpeg")}
    assert client.post("/api/search", files=small).status_code == 200


def test_a_chunked_body_under_the_limit_is_read_whole(client):
    body = json.dumps({"text": "a blue square", "k": 2}).encode()
    response = client.post(
        "/api/search", content=iter([body[:7], body[7:]]), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200 and len(response.json()["results"]) == 2


# -- embed and classify ----------------------------------------------------------------------------------


def test_embed_texts_and_images(client, embedder, catalog):
    texts = ["a red circle", "一个蓝色的方形", "مربع أزرق"]
    got = np.array(client.post("/api/embed", json={"texts": texts}).json()["embeddings"])
    np.testing.assert_allclose(got, embedder.embed_texts(texts).float().numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    _, red = photo(catalog, "red-circle")
    _, blue = photo(catalog, "blue-square")
    files = [("image", ("red.jpg", red, "image/jpeg")), ("image", ("blue.jpg", blue, "image/jpeg"))]
    got = np.array(client.post("/api/embed", files=files).json()["embeddings"])
    images = [Image.open(io.BytesIO(red)), Image.open(io.BytesIO(blue))]
    np.testing.assert_allclose(got, embedder.embed_images(images).float().numpy(), atol=1e-5)


def test_embed_errors(client):
    assert_error(client.post("/api/embed", json={"texts": []}), 400, "1 to 256 texts, got 0")
    assert_error(client.post("/api/embed", json={"texts": ["x"] * 257}), 400, "got 257")
    assert_error(client.post("/api/embed", json={"texts": ["ok", " "]}), 400, "texts[1] is empty")
    assert_error(client.post("/api/embed", json={"text": "x"}), 400, "texts: Field required")
    good = jpeg(draw((30, 30, 200), "square", 64))
    files = [("image", ("a.jpg", good, "image/jpeg")), ("image", ("b.txt", b"hello", "text/plain"))]
    assert_error(client.post("/api/embed", files=files), 400, "image[1] 'b.txt'")
    assert_error(client.post("/api/embed", data={"x": "1"}, files={"y": ("a", b"a")}), 400, "no image")


def test_classify_matches_the_library(client, embedder, catalog):
    _, data = photo(catalog, "green-triangle")
    labels = ["绿色三角形", "红色圆形", "蓝色方形"]
    response = client.post(
        "/api/classify",
        files={"image": ("g.jpg", data, "image/jpeg")},
        data={"labels": json.dumps(labels), "lang": "zh"},
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = embedder.classify(Image.open(io.BytesIO(data)), labels, lang="zh")[0]
    by_label = {p["label"]: p["probability"] for p in predictions}
    np.testing.assert_allclose([by_label[x] for x in labels], expected.numpy(), atol=1e-5)
    assert [p["probability"] for p in predictions] == sorted(by_label.values(), reverse=True)
    assert sum(by_label.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("labels", "lang", "words"),
    [
        ("not json", "en", ["labels: not a JSON list"]),
        ('{"a": 1}', "en", ["JSON list of non-empty strings"]),
        ('["a", ""]', "en", ["JSON list of non-empty strings"]),
        ("[]", "en", ["1 to 1000 labels, got 0"]),
        ("", "en", ["labels: expected a JSON list"]),
        ('["a", "b"]', "xx", ["xx"]),
    ],
)
def test_classify_errors(client, labels, lang, words):
    image = {"image": ("a.jpg", jpeg(draw((30, 30, 200), "square", 64)), "image/jpeg")}
    assert_error(client.post("/api/classify", files=image, data={"labels": labels, "lang": lang}), 400, *words)


def test_classify_needs_multipart_and_an_image(client):
    assert_error(client.post("/api/classify", json={"labels": ["a"]}), 415, "multipart")
    assert_error(client.post("/api/classify", data={"labels": '["a"]'}, files={"x": ("a", b"a")}), 400, "image")


# -- thumbnails and originals: only the index's own files ----------------------------------------------


def test_originals_and_thumbnails_are_cached(client, catalog):
    i, data = photo(catalog, "blue-circle")
    original = client.get(f"/api/image/photos/{i}")
    assert original.status_code == 200 and original.content == data
    assert original.headers["content-type"] == "image/jpeg"
    before = catalog.cached_bytes
    first = client.get(f"/api/thumbnail/photos/{i}")
    grown = catalog.cached_bytes
    second = client.get(f"/api/thumbnail/photos/{i}")
    assert first.content == second.content and catalog.cached_bytes == grown >= before
    assert "max-age" in first.headers["cache-control"]


BAD_PATHS = [
    "/api/thumbnail/photos/15",
    "/api/thumbnail/photos/-1",
    "/api/thumbnail/photos/abc",
    "/api/thumbnail/nope/0",
    "/api/thumbnail/photos/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/thumbnail/photos/%2e%2e",
    "/api/thumbnail/photos/0%2F..",
    "/api/thumbnail/%2e%2e/0",
    "/api/thumbnail/photos/%2Fetc%2Fpasswd",
    "/api/thumbnail/photos/0x1",
    "/api/thumbnail/photos/%D9%A1",  # an Arabic-Indic digit one
    "/api/image/photos/15",
    "/api/image/photos/..%2F..%2Fetc%2Fpasswd",
]
RAW_PATHS = [  # as sent by a client that does not normalise dot segments
    "/api/thumbnail/photos/../../../etc/passwd",
    "/api/thumbnail/photos/./0/..",
    "/api/image/photos/../../../../etc/passwd",
    "/api/image/../../etc/passwd",
    "/api/thumbnail//etc/passwd",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_anything_but_an_id_of_the_index_is_404(client, path):
    response = client.get(path)
    assert response.status_code == 404 and "error" in response.json()
    assert not response.headers["content-type"].startswith("image/")


@pytest.mark.parametrize("path", RAW_PATHS)
def test_raw_dot_segments_reach_no_file(live_server, path):
    host = urlparse(live_server)
    connection = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    assert response.status == 404 and b"root:" not in body and json.loads(body)["error"]


# -- the token ------------------------------------------------------------------------------------------


API = [
    ("GET", "/api/indexes", {}),
    ("GET", "/api/languages", {}),
    ("POST", "/api/search", {"json": {"text": "cat"}}),
    ("POST", "/api/embed", {"json": {"texts": ["cat"]}}),
    ("POST", "/api/classify", {"data": {"labels": '["a"]'}}),
    ("GET", "/api/thumbnail/photos/0", {}),
    ("GET", "/api/image/photos/0", {}),
    ("GET", "/api/nothing-here", {}),
]


def test_the_token_guards_every_api_route(embedder, catalog):
    app = create_app(embedder, catalog, ServeConfig(token="s3cret"))
    with TestClient(app) as client:
        for method, path, kwargs in API:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                response = client.request(method, path, headers=headers, **kwargs)
                assert_error(response, 401, "token")
                assert response.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/api/indexes", headers=good).status_code == 200
        assert client.post("/api/search", json={"text": "cat"}, headers=good).status_code == 200
        assert client.get("/api/thumbnail/photos/0", headers=good).status_code == 200
        for open_path in ("/", "/healthz", "/metrics", "/docs", "/static/app.js"):
            assert client.get(open_path).status_code == 200, open_path
        # an unauthorised upload is refused before its body is read
        assert client.post("/api/search", content=b"\0" * (30 * MB)).status_code == 401


def test_indexes_and_model_must_agree(embedder, photo_index, monkeypatch):
    monkeypatch.setattr(embedder.model.config, "projection_dim", 32)
    with pytest.raises(ValueError, match=r"index .p. holds 16-dimensional vectors .* model.s embeddings have 32"):
        create_app(embedder, Catalog({"p": photo_index}))


# -- metrics and load -------------------------------------------------------------------------------


def test_metrics_count_requests_per_endpoint_with_latency_and_queue(client):
    search(client, text="for the metrics")
    client.get("/api/thumbnail/photos/999")
    text = client.get("/metrics").text
    assert 'altclip_http_requests_total{endpoint="/api/search",method="POST",status="200"}' in text
    assert 'altclip_http_requests_total{endpoint="/api/thumbnail/{index}/{id}",method="GET",status="404"}' in text
    assert 'altclip_http_request_duration_seconds_bucket{endpoint="/api/search",le="0.5"}' in text
    assert 'altclip_http_request_duration_seconds_count{endpoint="/api/search"}' in text
    assert "altclip_queue_length 0.0" in text
    assert "altclip_text_batch_size_count" in text


async def gather_searches(app, n: int, text: str = "query") -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    await app.state.worker.start()
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            requests = [client.post("/api/search", json={"text": f"{text} {i}", "k": 3}) for i in range(n)]
            return await asyncio.gather(*requests)
    finally:
        await app.state.worker.stop()


def test_concurrent_text_queries_share_forward_passes(embedder, catalog):
    app = create_app(embedder, catalog, ServeConfig(batch_window=0.05))
    sizes: list[int] = []
    observe = app.state.worker.on_batch
    app.state.worker.on_batch = lambda size: (sizes.append(size), observe(size))
    responses = asyncio.run(gather_searches(app, 16))
    assert all(r.status_code == 200 for r in responses)
    assert sum(sizes) == 16 and len(sizes) < 16, sizes


def test_a_full_queue_answers_503_with_retry_after(embedder, catalog, monkeypatch):
    app = create_app(embedder, catalog, ServeConfig(queue_size=4, batch_window=0.0))
    worker = app.state.worker
    slow, highest = worker._embed, []

    def slow_embed(kind, items):
        highest.append(worker.waiting)
        time.sleep(0.2)
        return slow(kind, items)

    monkeypatch.setattr(worker, "_embed", slow_embed)
    responses = asyncio.run(gather_searches(app, 20))
    refused = [r for r in responses if r.status_code == 503]
    assert refused and len(refused) < 20
    assert all(r.headers["retry-after"] == "1" and "busy" in r.json()["error"] for r in refused)
    assert all(r.status_code in (200, 503) for r in responses)
    assert max(highest) <= 4  # the queue never grew past its bound
    assert "altclip_queue_full_total" in asyncio.run(metrics_text(app))


async def metrics_text(app) -> str:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return (await client.get("/metrics")).text


def test_image_queries_go_through_the_same_model_thread(embedder, catalog):
    app = create_app(embedder, catalog)
    seen = set()
    original = embedder.embed_pixels

    def spy(pixels):
        seen.add(threading.current_thread().name)
        return original(pixels)

    embedder.embed_pixels = spy
    try:
        with TestClient(app) as client:
            files = {"image": ("a.jpg", jpeg(draw((30, 30, 200), "square", 64)), "image/jpeg")}
            assert client.post("/api/search", files=files).status_code == 200
    finally:
        del embedder.embed_pixels
    assert len(seen) == 1 and next(iter(seen)).startswith("altclip-model")


def test_a_collection_of_tar_shards_is_served_from_its_shards(tmp_path, embedder, altclip_checkpoint):
    shards = make_shards(tmp_path / "shards", shards=2, per_shard=5)
    out = embedded(shards[0].parent / "{00000..00001}.tar", tmp_path / "emb", altclip_checkpoint)
    with TestClient(create_app(embedder, Catalog({"shards": out}), ServeConfig())) as client:
        results = client.post("/api/search", json={"text": "a red circle", "k": 3}).json()["results"]
        assert len(results) == 3 and all(".tar/" in r["path"] for r in results)
        member = next(s.image for s in scan_shard(shards[0]) if s.key == "000000000")
        i = next(
            r["id"]
            for r in client.post("/api/search", json={"text": "x", "k": 10}).json()["results"]
            if r["path"] == member.path
        )
        original = client.get(f"/api/image/shards/{i}")
        assert original.content == member.read() and original.headers["content-type"] == "image/jpeg"
        thumbnail = client.get(f"/api/thumbnail/shards/{i}")
        assert thumbnail.status_code == 200 and Image.open(io.BytesIO(thumbnail.content)).size == (24, 24)


def test_explain_draws_the_query_over_the_thumbnail(client, catalog, embedder):
    i, _ = photo(catalog, "red-circle")
    response = client.get(f"/api/explain/photos/{i}", params={"text": "一个红色的圆形"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    drawn = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    assert drawn.shape == (192, 256, 3)
    thumbnail = np.asarray(Image.open(io.BytesIO(catalog.thumbnail("photos", i))).convert("RGB"))
    expected = np.asarray(overlay(thumbnail, embedder.explain(thumbnail, "一个红色的圆形")))
    assert np.abs(drawn.astype(int) - expected.astype(int)).max() <= 1
    assert client.get(f"/api/explain/photos/{i}", params={"text": " "}).status_code == 400
    assert client.get("/api/explain/photos/99999", params={"text": "red"}).status_code == 404
    assert client.get(f"/api/explain/photos/{i}").status_code == 400  # no text at all


def test_a_bug_answers_500_and_is_logged_while_bad_input_answers_400(embedder, catalog, monkeypatch, caplog):
    """Only the library's own errors (AltCLIPError) are the client's fault; a ValueError from elsewhere (pyarrow's
    ArrowInvalid is one) is a bug: 500, and its traceback in the log."""
    import pyarrow as pa

    served = catalog.get("photos").index

    def broken(*args, **kwargs):
        raise pa.ArrowInvalid("a bug deep in a library")

    with TestClient(create_app(embedder, catalog), raise_server_exceptions=False) as client:
        assert_error(client.post("/api/search", json={"text": "a cat", "k": 0}), 400, "k must be between")
        monkeypatch.setattr(served, "search", broken)
        with caplog.at_level("ERROR", logger="altclip.serve"):
            response = client.post("/api/search", json={"text": "a cat"})
        assert_error(response, 500, "internal error (ArrowInvalid)")
        assert "a bug deep in a library" in caplog.text and "Traceback" in caplog.text


def test_duplicates_are_grouped_by_the_index(client):
    answer = client.get("/api/duplicates", params={"index": "photos", "threshold": 0.999})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    groups = [sorted(image["path"].rsplit("/", 1)[-1] for image in g["images"]) for g in data["groups"]]
    for name in COPIES:  # each photo and its exact copy: one group
        assert any({f"{name}.jpg", f"{name}-copy.jpg"} <= set(g) for g in groups), groups
    first = data["groups"][0]["images"][0]
    assert client.get(first["thumbnail"]).status_code == 200 and data["index"] == "photos"
    assert data["group_count"] == len(data["groups"]) and data["duplicates"] >= 3
    assert client.get("/api/duplicates", params={"threshold": 2}).status_code == 400
    assert client.get("/api/duplicates", params={"index": "nowhere"}).status_code == 404
