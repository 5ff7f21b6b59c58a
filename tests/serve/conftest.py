"""Served indexes for the server's tests: photos of coloured shapes (with exact copies, for dedup) and a
second, mixed folder, both embedded by the tiny AltCLIP; a running app on them."""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import product
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from playwright.sync_api import Browser, sync_playwright

from altclip.embedder import Embedder
from altclip.search.collection import embed_collection
from altclip.search.index import build_index
from altclip.serve import Catalog, ServeConfig, create_app
from tests.conftest import COLOURS, SHAPES, draw, make_image_folder

CHROMIUM = os.environ.get("ALTCLIP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
COPIES = ("red-circle", "blue-square", "green-triangle")  # each photo has an exact copy in the folder


def embedded(source: Path, out: Path, checkpoint: Path) -> Path:
    embedder = Embedder.from_pretrained(checkpoint)
    embed_collection(source, out, embedder, str(checkpoint), workers=0, progress=False)
    build_index(out)
    return out


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """12 photos of 400 x 300 (so thumbnails shrink), 3 exact copies, and a file that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    for (colour, (_, rgb)), shape in product(COLOURS.items(), SHAPES):
        draw(rgb, shape, 64).resize((400, 300)).save(root / f"{colour}-{shape}.jpg", quality=95)
    for name in COPIES:
        shutil.copy(root / f"{name}.jpg", root / f"{name}-copy.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
def photo_index(tmp_path_factory, photo_folder, altclip_checkpoint) -> Path:
    return embedded(photo_folder, tmp_path_factory.mktemp("served") / "photos", altclip_checkpoint)


@pytest.fixture(scope="session")
def mixed_index(tmp_path_factory, altclip_checkpoint) -> Path:
    source = make_image_folder(tmp_path_factory.mktemp("mixed-images"), good=10, seed=3)
    return embedded(source, tmp_path_factory.mktemp("served") / "mixed", altclip_checkpoint)


@pytest.fixture(scope="session")
def embedder(altclip_checkpoint) -> Embedder:
    return Embedder.from_pretrained(altclip_checkpoint)


@pytest.fixture(scope="module")
def catalog(photo_index, mixed_index) -> Catalog:
    return Catalog({"photos": photo_index, "mixed": mixed_index})


@pytest.fixture(scope="module")
def client(embedder, catalog):
    with TestClient(create_app(embedder, catalog, ServeConfig())) as client:
        yield client


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


@contextmanager
def running(app: FastAPI) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, in a thread: its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def live_server(embedder, catalog) -> Iterator[str]:
    with running(create_app(embedder, catalog)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        reason = "Chromium is not installed (apt-get install chromium; scripts/setup.sh --test does it)"
        if os.environ.get("ALTCLIP_REQUIRE_BROWSER"):
            pytest.fail(reason + ", and ALTCLIP_REQUIRE_BROWSER is set")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("ALTCLIP_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
