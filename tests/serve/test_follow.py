"""A server follows its folders: an update made by another process shows up without a restart, requests see the
old state or the new one, and memory stays flat over many updates."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

from fastapi.testclient import TestClient

from altclip.serve import Catalog, ServeConfig, create_app
from tests.conftest import draw
from tests.search.test_update import age
from tests.serve.conftest import embedded


def embed_command(folder, out, checkpoint) -> list[str]:
    """``altclip embed`` as a nightly cron job runs it: another process, the index rebuilt after the update."""
    return [sys.executable, "-m", "altclip.cli", "embed", str(folder), "--out", str(out), "--model", str(checkpoint),
            "--workers", "0", "--json", "--exact-decode", "--precision", "float32"]  # fmt: skip


def names(client: TestClient, text: str = "a red circle", k: int = 50) -> list[str]:
    answer = client.post("/api/search", json={"text": text, "k": k})
    assert answer.status_code == 200, answer.text
    return sorted(hit["path"].rsplit("/", 1)[-1] for hit in answer.json()["results"])


def test_the_server_shows_todays_photo_without_a_restart(tmp_path, photo_folder, embedder, altclip_checkpoint):
    folder = tmp_path / "photos"
    shutil.copytree(photo_folder, folder)
    age(folder)
    out = embedded(folder, tmp_path / "emb", altclip_checkpoint)
    catalog = Catalog({"photos": out})
    with TestClient(create_app(embedder, catalog, ServeConfig(reload_seconds=0.2))) as client:
        before = names(client)
        assert "today.jpg" not in before and "red-circle.jpg" in before
        draw((220, 30, 30), "circle", 64).resize((400, 300)).save(folder / "today.jpg")
        (folder / "blue-square.jpg").unlink()
        age(folder)
        done = subprocess.run(embed_command(folder, out, altclip_checkpoint), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        deadline = time.monotonic() + 30
        while names(client) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        after = names(client)
        assert "today.jpg" in after and "blue-square.jpg" not in after and len(after) == len(before)
        thumbnail = client.get(f"/api/thumbnail/photos/{after.index('today.jpg')}")
        assert thumbnail.status_code == 200


def test_requests_see_one_state_and_memory_stays_flat(tmp_path, photo_folder, embedder, altclip_checkpoint):
    """Updates every few milliseconds while searches run: every answer is one of the two states' answers, never a
    mix; the catalog holds one index per name however many updates it took."""
    folder = tmp_path / "photos"
    shutil.copytree(photo_folder, folder)
    age(folder)
    out = embedded(folder, tmp_path / "emb", altclip_checkpoint)
    catalog = Catalog({"photos": out})
    client = TestClient(create_app(embedder, catalog, ServeConfig(reload_seconds=0)))
    query = embedder.embed_texts(["a red circle"]).numpy()
    states = {}
    extra = folder / "extra.jpg"
    from altclip.search.collection import embed_collection
    from altclip.search.index import build_index

    for present in (False, True):  # the two states, and each one's answer
        if present:
            draw((220, 30, 30), "circle", 64).resize((400, 300)).save(extra)
        elif extra.exists():
            extra.unlink()
        age(folder)
        embed_collection(folder, out, embedder, str(altclip_checkpoint), workers=0, progress=False)
        build_index(out)
        catalog.refresh()
        states[present] = [h.path for h in catalog.get("photos").index.search(query, k=20)[0]]
    assert states[True] != states[False]

    answers, stop = {"old or new": 0, "mixed": 0}, threading.Event()

    def searching() -> None:
        while not stop.is_set():
            served = catalog.get("photos")  # a request looks its index up once
            found = [h.path for h in served.index.search(query, k=20)[0]]
            answers["old or new" if found in (states[True], states[False]) else "mixed"] += 1
            time.sleep(0.002)

    reader = threading.Thread(target=searching)
    reader.start()
    import tracemalloc

    tracemalloc.start()
    try:
        for i in range(12):
            present = i % 2 == 0
            if present:
                draw((220, 30, 30), "circle", 64).resize((400, 300)).save(extra)
            else:
                extra.unlink()
            age(folder)
            embed_collection(folder, out, embedder, str(altclip_checkpoint), workers=0, progress=False)
            build_index(out)
            assert catalog.refresh() == ["photos"]
            if i == 3:
                settled = tracemalloc.get_traced_memory()[0]
        grown = tracemalloc.get_traced_memory()[0] - settled
    finally:
        stop.set()
        reader.join()
        tracemalloc.stop()
        client.close()
    assert answers["old or new"] > 0 and answers["mixed"] == 0, answers
    assert grown < 2 * 2**20, f"{grown} bytes more after 8 more updates"
    assert len(catalog.indexes) == 1
