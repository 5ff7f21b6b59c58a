"""Updating a folder collection: an update equals a fresh embed of the folder's final state, unchanged files are
never decoded, a stopped update resumes to the clean result, and the manifest refuses vectors made otherwise."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from altclip.data import imagefiles
from altclip.embedder import Embedder
from altclip.search.collection import Collection, embed_collection
from altclip.search.index import SearchIndex, build_index, update_index
from altclip.search.update import RACY_NS, State
from tests.conftest import BROKEN, draw, make_image_folder


def age(folder: Path, seconds: float = 60) -> None:
    """Date every file a minute back, as a library's files are: none is racy (see ``RACY_NS``)."""
    then = time.time() - seconds
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


def rows_by_key(collection: Collection) -> dict[str, dict]:
    """Every row with its vector, by key: an updated folder's rows are in another order than a fresh one's."""
    table = collection.metadata(["image_path", "key", "width", "height"]).to_pylist()
    vectors = collection.embeddings()
    return {row["key"]: {**row, "vector": vector} for row, vector in zip(table, vectors, strict=True)}


def assert_same_collection(ours: Path, theirs: Path) -> None:
    a, b = rows_by_key(Collection.open(ours)), rows_by_key(Collection.open(theirs))
    assert sorted(a) == sorted(b)
    for key, row in b.items():
        assert {k: v for k, v in a[key].items() if k != "vector"} == {k: v for k, v in row.items() if k != "vector"}
        np.testing.assert_allclose(a[key]["vector"].astype(np.float32), row["vector"].astype(np.float32), atol=2e-3)
    failures = [Collection.open(p).failures().to_pylist() for p in (ours, theirs)]
    assert sorted((f["key"], f["status"]) for f in failures[0]) == sorted((f["key"], f["status"]) for f in failures[1])
    for folder in (ours, theirs):  # aligned part by part, with no ghost rows
        collection = Collection.open(folder)
        for part in collection.parts:
            files = collection.part_files(part)
            assert len(np.load(files.img)) == pq.read_metadata(files.metadata).num_rows
        kinds = ("img_emb", "metadata", "failures")
        assert all(len(list((folder / k).iterdir())) == collection.num_parts() for k in kinds), "left-over parts"


def change_folder(folder: Path) -> dict[str, str]:
    """Add, edit, touch, rename and delete files; what was done to which key."""
    images = sorted(p for p in folder.rglob("img*"))
    (folder / "new").mkdir()
    draw((200, 30, 30), "circle", 40).save(folder / "new" / "added.png")
    edited, touched, renamed, deleted = images[0], images[1], images[2], images[3]
    draw((30, 30, 200), "square", 48).save(edited.with_suffix(".tmp.png"))
    os.replace(edited.with_suffix(".tmp.png"), edited)  # same name, other bytes
    later = time.time() - 30
    os.utime(touched, (later, later))  # a new time, the same bytes
    os.replace(renamed, folder / "new" / "renamed.png")
    deleted.unlink()
    (folder / "bomb.png").unlink()  # a failed file deleted: its failure row goes too
    age(folder)
    key = lambda p: str(p.relative_to(folder))  # noqa: E731
    return {
        "added": "new/added.png",
        "edited": key(edited),
        "touched": key(touched),
        "renamed": "new/renamed.png",
        "deleted": key(deleted),
    }


def test_an_update_equals_a_fresh_embed_of_the_final_folder(tmp_path, altclip_checkpoint, monkeypatch):
    folder = make_image_folder(tmp_path / "photos", good=16, seed=3)
    age(folder)
    embedder = Embedder.from_pretrained(altclip_checkpoint, batch_size=4)
    out = tmp_path / "emb"
    first = embed_collection(folder, out, embedder, "m", workers=0, part_size=5, progress=False)
    assert first.update["new"] == 16 + len(BROKEN) and first.embedded == 16
    build_index(out, kind="flat")

    decoded = []
    real = imagefiles.ImageFiles.__getitem__
    spy = lambda self, task: decoded.append(task[2].path) or real(self, task)  # noqa: E731
    monkeypatch.setattr(imagefiles.ImageFiles, "__getitem__", spy)
    nothing = embed_collection(folder, out, embedder, "m", workers=0, part_size=5, progress=False)
    assert decoded == [] and nothing.update["unchanged"] == 16 + len(BROKEN) and nothing.update["generation"] == 1
    before = {p: p.stat().st_mtime_ns for p in (out / "img_emb").iterdir()}
    assert (nothing.update["parts_written"], nothing.update["parts_removed"]) == (0, 0)

    done = change_folder(folder)
    update = embed_collection(folder, out, embedder, "m", workers=0, part_size=5, progress=False)
    assert {k: update.update[k] for k in ("new", "changed", "deleted", "moved")} == {
        "new": 1,
        "changed": 1,
        "deleted": 2,
        "moved": 1,
    }
    assert sorted(Path(p).name for p in decoded) == sorted(Path(done[k]).name for k in ("added", "edited"))
    untouched = [p for p, t in before.items() if p.exists()]
    assert untouched and all(p.stat().st_mtime_ns == before[p] for p in untouched), "unchanged parts rewritten"

    fresh = tmp_path / "fresh"
    embed_collection(folder, fresh, embedder, "m", workers=0, part_size=5, progress=False)
    assert_same_collection(out, fresh)
    state = State.read(out)
    assert done["deleted"] not in state.files and state.files[done["renamed"]].digest

    from embedding_reader import EmbeddingReader  # clip-retrieval's reader: the parts as it lists them

    reader = EmbeddingReader(
        str(out / "img_emb"), file_format="parquet_npy", metadata_folder=str(out / "metadata"), meta_columns=["key"]
    )
    batches = list(reader(batch_size=7, show_progress=False))
    collection = Collection.open(out)
    np.testing.assert_array_equal(np.concatenate([b for b, _ in batches]), collection.embeddings())
    keys = [key for _, frame in batches for key in frame["key"]]
    assert keys == collection.metadata(["key"])["key"].to_pylist() and done["deleted"] not in keys

    assert update_index(out, kind="flat").updates_in_place == 1  # the parts that left out, the new ones in
    build_index(fresh, kind="flat")
    queries = embedder.embed_images([draw((200, 30, 30), "circle", 40), draw((30, 30, 200), "square", 48)]).numpy()
    ours, theirs = SearchIndex(out), SearchIndex(fresh)
    for a, b in zip(ours.search(queries, k=8), theirs.search(queries, k=8), strict=True):
        assert [h.path for h in a] == [h.path for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-3)


def test_a_racy_entry_is_checked_by_its_bytes(tmp_path, altclip_checkpoint):
    """A file changed within the clock's step of the run that saw it keeps its size and time: its digest tells."""
    folder = tmp_path / "photos"
    folder.mkdir()
    draw((200, 30, 30), "circle").save(folder / "a.png")
    embedder = Embedder.from_pretrained(altclip_checkpoint, batch_size=4)
    embed_collection(folder, tmp_path / "emb", embedder, "m", workers=0, progress=False)
    entry = State.read(tmp_path / "emb").files["a.png"]
    assert entry.racy and entry.checked_ns - entry.mtime_ns < RACY_NS
    stat = (folder / "a.png").stat()
    draw((30, 200, 30), "circle").save(folder / "a.png")  # same size (the same PNG layout), other pixels
    os.utime(folder / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (folder / "a.png").stat().st_size == stat.st_size
    update = embed_collection(folder, tmp_path / "emb", embedder, "m", workers=0, progress=False)
    assert update.update["changed"] == 1
    expected = embedder.embed_images([folder / "a.png"]).numpy()
    np.testing.assert_allclose(Collection.open(tmp_path / "emb").embeddings().astype(np.float32), expected, atol=2e-3)


def test_new_photos_write_their_own_entries_only(tmp_path, altclip_checkpoint):
    """The state is kept per part, each file named by its content: new photos write their part's entries and a
    short files.json; the other parts' entries stay as they were. The first layout-4 files.json still reads."""
    folder = make_image_folder(tmp_path / "photos", good=12, seed=8, broken=False)
    age(folder)
    embedder = Embedder.from_pretrained(altclip_checkpoint, batch_size=4)
    out = tmp_path / "emb"
    embed_collection(folder, out, embedder, "m", workers=0, part_size=5, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "state").iterdir()}
    assert len(before) == 3 and "files" not in json.loads((out / "files.json").read_text())

    make_image_folder(folder / "today", good=2, seed=9, broken=False)
    age(folder / "today")
    update = embed_collection(folder, out, embedder, "m", workers=0, part_size=5, progress=False)
    assert update.update["new"] == 2
    after = {p.name: p.stat().st_mtime_ns for p in (out / "state").iterdir()}
    assert {k: v for k, v in after.items() if k in before} == before and len(after) == 4
    assert (out / "files.json").stat().st_size < 400
    state = State.read(out)
    assert len(state.files) == 14 and {e.part for e in state.files.values()} == set(state.parts)

    root = json.loads((out / "files.json").read_text())  # as the first release of layout 4 wrote it
    legacy = {k: v for k, v in root.items() if k != "state"}
    legacy["files"] = {key: entry.to_json() for key, entry in state.files.items()}
    (out / "files.json").write_text(json.dumps(legacy))
    shutil.rmtree(out / "state")
    assert State.read(out) == state
    (folder / "today" / sorted(os.listdir(folder / "today"))[0]).unlink()
    again = embed_collection(folder, out, embedder, "m", workers=0, part_size=5, progress=False)
    assert again.update["deleted"] == 1 and "state" in json.loads((out / "files.json").read_text())
    assert len(State.read(out).files) == 13


def test_the_manifest_refuses_vectors_made_otherwise(tmp_path, altclip_checkpoint):
    folder = make_image_folder(tmp_path / "photos", good=3, broken=False)
    embedder = Embedder.from_pretrained(altclip_checkpoint)
    out = tmp_path / "emb"
    embed_collection(folder, out, embedder, str(altclip_checkpoint), workers=0, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "float32" and manifest["backend"] == "torch"
    assert manifest["preprocessing"]["crop_size"] and "revision" not in manifest  # a folder, not a hub name
    int8 = Embedder.from_pretrained(altclip_checkpoint, precision="int8")
    with pytest.raises(ValueError, match=r"made with precision 'float32', not 'int8'.*new --out folder"):
        embed_collection(folder, out, int8, str(altclip_checkpoint), workers=0, progress=False)
    with pytest.raises(ValueError, match="made with model"):
        embed_collection(folder, out, embedder, "another", workers=0, progress=False)


def test_the_command_records_the_model_as_an_absolute_path(tmp_path, altclip_checkpoint):
    folder = make_image_folder(tmp_path / "photos", good=2, broken=False)
    shutil.copytree(altclip_checkpoint, tmp_path / "model")
    command = [sys.executable, "-m", "altclip.cli", "embed", "photos", "--out", "emb", "--model", "model", "--json"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "emb" / "manifest.json").read_text())["model"] == str((tmp_path / "model").resolve())
    elsewhere = tmp_path / "photos" / "nested"  # another working directory: search finds the model
    search = [sys.executable, "-m", "altclip.cli", "search", str(tmp_path / "emb"), "--text", "a photo", "--json"]
    result = subprocess.run(search, cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(json.loads(result.stdout)) == 2
    assert folder.is_dir()


def stop_when(command: list[str], out: Path, ready, stop: signal.Signals) -> int:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if ready(out):
            process.send_signal(stop)
            break
        time.sleep(0.005)
    process.communicate(timeout=120)
    return process.returncode


def planned_parts_finished(count: int):
    def ready(out: Path) -> bool:
        if not (out / ".plan.json").exists():
            return False
        planned = json.loads((out / ".plan.json").read_text())["parts"]
        return sum((out / "metadata" / f"metadata_{int(p):05d}.parquet").exists() for p in planned) >= count

    return ready


def make_changes(folder: Path) -> None:
    """A day's changes: some files gone, some edited, many new."""
    for i, path in enumerate(sorted(folder.rglob("img*"))):
        if i % 5 == 0:
            path.unlink()
        elif i % 5 == 1:
            draw((10 * i, 100, 50), "triangle", 36).save(path)
    make_image_folder(folder / "today", good=24, seed=6, broken=False)
    age(folder)


def fresh_embed(folder: Path, out: Path, checkpoint: Path) -> None:
    """What the command makes of the folder in one clean run."""
    embedder = Embedder.from_pretrained(checkpoint, precision="auto")
    embed_collection(folder, out, embedder, str(checkpoint), workers=0, part_size=4, progress=False, draft=True)


@pytest.mark.parametrize("finished", [1, 4])
def test_kill_9_during_an_update_then_the_same_command(tmp_path, altclip_checkpoint, finished):
    folder = make_image_folder(tmp_path / "photos", good=40, seed=5)
    age(folder)
    out = tmp_path / "emb"
    command = [sys.executable, "-m", "altclip.cli", "embed", str(folder), "--out", str(out), "--model"]
    command += [str(altclip_checkpoint), "--part-size", "4", "--batch-size", "2", "--workers", "0", "--json"]
    command += ["--no-index"]
    assert subprocess.run(command, capture_output=True, timeout=300).returncode == 0
    make_changes(folder)
    assert stop_when(command, out, planned_parts_finished(finished), signal.SIGKILL) == -signal.SIGKILL
    plan = json.loads((out / ".plan.json").read_text())
    planned = {int(p) for p in plan["parts"]}
    written = [p for p in (out / "metadata").glob("metadata_*.parquet")]  # not a write the kill cut short
    kept = {p: p.stat().st_mtime_ns for p in written if int(p.stem[-5:]) in planned}
    assert len(kept) >= finished
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (out / ".plan.json").exists()
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "finished parts of the plan were embedded again"
    fresh_embed(folder, tmp_path / "fresh", altclip_checkpoint)
    assert_same_collection(out, tmp_path / "fresh")


@pytest.mark.parametrize("point", ["before the commit", "after the commit"])
def test_a_stop_around_the_commit(tmp_path, altclip_checkpoint, monkeypatch, point):
    """Stopped just before ``files.json`` is replaced, or just after it and before the replaced parts are deleted:
    the same command again gives the clean result."""
    from altclip.search import update

    folder = make_image_folder(tmp_path / "photos", good=20, seed=7)
    age(folder)
    out = tmp_path / "emb"
    fresh_embed(folder, out, altclip_checkpoint)
    make_changes(folder)
    real_write, real_remove = update.write_json, update.remove_unnamed

    def stop_at_commit(path, values, **kw):
        if point == "before the commit" and Path(path).name == "files.json":
            raise KeyboardInterrupt
        return real_write(path, values, **kw)

    def stop_after_commit(collection, named):
        if not (collection.folder / ".plan.json").exists():  # the call after the commit
            raise KeyboardInterrupt
        return real_remove(collection, named)

    monkeypatch.setattr(update, "write_json", stop_at_commit)
    monkeypatch.setattr(update, "remove_unnamed", stop_after_commit)
    with pytest.raises(KeyboardInterrupt):
        fresh_embed(folder, out, altclip_checkpoint)
    monkeypatch.undo()
    assert Collection.open(out).count() > 0  # the last committed state stays readable
    fresh_embed(folder, out, altclip_checkpoint)
    fresh_embed(folder, tmp_path / "fresh", altclip_checkpoint)
    assert_same_collection(out, tmp_path / "fresh")


def test_phone_photos_embed_upright(tmp_path, altclip_checkpoint):
    """HEIC and AVIF files of a folder are decoded in the worker processes, turned upright by their orientation."""
    folder = tmp_path / "phone"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    for name in ("IMG_0001.heic", "IMG_0002.avif", "IMG_0003.jpg"):
        draw((200, 30, 30), "triangle", 48).resize((64, 48)).save(folder / name, exif=exif.tobytes(), quality=95)
    embedder = Embedder.from_pretrained(altclip_checkpoint)
    summary = embed_collection(folder, tmp_path / "emb", embedder, "m", workers=1, progress=False)
    assert summary.embedded == 3 and summary.skipped == 0
    rows = Collection.open(tmp_path / "emb").metadata().to_pylist()
    assert {(row["key"], row["width"], row["height"]) for row in rows} == {
        (name, 48, 64) for name in ("IMG_0001.heic", "IMG_0002.avif", "IMG_0003.jpg")
    }
    vectors = rows_by_key(Collection.open(tmp_path / "emb"))
    for name in ("IMG_0001.heic", "IMG_0002.avif"):  # the same picture as the JPEG, through other codecs
        cosine = vectors[name]["vector"].astype(np.float32) @ vectors["IMG_0003.jpg"]["vector"].astype(np.float32)
        assert cosine > 0.98, (name, cosine)
