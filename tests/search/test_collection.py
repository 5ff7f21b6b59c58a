"""Embedding a folder: results equal direct calls, bad files reported, interrupted runs resume exactly."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import altclip
from altclip.data.shards import scan_shard
from altclip.search.collection import Collection, embed_collection, list_source
from altclip.search.index import build_index
from altclip.tasks import Embedder
from tests.conftest import BROKEN, make_image_folder, make_shards


def test_folder_embedding_equals_direct_calls_and_reports_bad_files(tmp_path, image_folder, altclip_checkpoint):
    embedder = Embedder.from_pretrained(altclip_checkpoint, batch_size=4)
    summary = embed_collection(
        image_folder, tmp_path / "out", embedder, str(altclip_checkpoint), workers=2, part_size=7, progress=False
    )
    files = list_source(image_folder)
    assert summary.files == len(files) == 30 + len(BROKEN) and summary.embedded == 30
    assert summary.by_status == {"ok": 30, "empty": 1, "not_image": 1, "truncated": 1, "bomb": 1, "unreadable": 1}
    assert {Path(f["path"]).name: f["status"] for f in summary.failures} == BROKEN
    assert not any(".hidden" in f for f in files)

    collection = Collection.open(tmp_path / "out")
    table = collection.metadata()
    ok = [f for f in files if Path(f).name not in BROKEN]
    assert table["image_path"].to_pylist() == ok  # every readable file once, in order, a row per vector
    assert table["key"].to_pylist() == [str(Path(f).relative_to(image_folder)) for f in ok]
    vectors = collection.embeddings()
    assert vectors.dtype == np.float16 and vectors.shape == (30, 16)
    for shard in range(collection.num_parts()):  # aligned shard by shard, as parquet_npy readers pair them
        files_of = collection.part_files(shard)
        assert len(np.load(files_of.img)) == pq.read_metadata(files_of.metadata).num_rows
    expected = embedder.embed_images(ok).numpy()
    np.testing.assert_allclose(vectors.astype(np.float32), expected, atol=1e-3)
    from PIL import Image

    for row in table.to_pylist():
        assert (row["width"], row["height"]) == Image.open(row["image_path"]).size
    failures = collection.failures().to_pylist()
    assert {Path(f["image_path"]).name: f["status"] for f in failures} == BROKEN and all(f["error"] for f in failures)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["embedded"] == 30


def test_a_list_of_paths_and_folder_checks(tmp_path, image_folder, altclip_checkpoint):
    listing = tmp_path / "list.txt"
    chosen = sorted(image_folder.glob("img*"))[:4]
    listing.write_text("\n".join([os.path.relpath(chosen[0], tmp_path), *map(str, chosen[1:]), "", "missing.png"]))
    embedder = Embedder.from_pretrained(altclip_checkpoint)
    summary = embed_collection(listing, tmp_path / "out", embedder, "m", workers=0, progress=False)
    assert summary.by_status == {"ok": 4, "missing": 1}
    again = embed_collection(listing, tmp_path / "out", embedder, "m", workers=0, progress=False)  # nothing to do
    assert again.update["embedded"] == 0 and again.update["unchanged"] == 5
    assert replace(again, update=None) == replace(summary, update=None)
    with pytest.raises(ValueError, match="was made with model 'm', not 'other'"):
        embed_collection(listing, tmp_path / "out", embedder, "other", workers=0, progress=False)
    with pytest.raises(ValueError, match="was made with draft False, not True"):  # decoding is part of the recipe
        embed_collection(listing, tmp_path / "out", embedder, "m", workers=0, progress=False, draft=True)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        embed_collection(listing, tmp_path / "busy", embedder, "m", workers=0, progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({**manifest, "version": 1}))
    with pytest.raises(ValueError, match=r"written by an older altclip \(layout 1, now 4\)"):
        Collection.open(tmp_path / "old")
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({**manifest, "version": 3}))
    with pytest.raises(ValueError, match=r"layout 3, now 4\), before folder collections could be updated"):
        Collection.open(tmp_path / "old")
    with pytest.raises(FileNotFoundError, match="neither a folder nor a file"):
        embed_collection(tmp_path / "nowhere", tmp_path / "out2", embedder, "m", workers=0, progress=False)


@pytest.fixture(scope="module")
def slow_checkpoint(tmp_path_factory, xlmr_folder) -> Path:
    """Big enough (about 2 GFLOP per image) that a run can be stopped half way."""
    tokenizer = altclip.XLMRobertaTokenizer.from_pretrained(xlmr_folder)
    config = altclip.AltCLIPConfig.from_dict(
        {
            "text_config": {
                "vocab_size": len(tokenizer),
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "project_dim": 24,
            },
            "vision_config": {
                "hidden_size": 256,
                "intermediate_size": 1024,
                "num_hidden_layers": 6,
                "num_attention_heads": 8,
                "image_size": 128,
                "patch_size": 8,
            },
            "projection_dim": 16,
        }
    )
    folder = tmp_path_factory.mktemp("slow") / "model"
    torch.manual_seed(0)
    altclip.AltCLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    altclip.CLIPImageProcessor(size={"shortest_edge": 128}, crop_size={"height": 128, "width": 128}).save_pretrained(
        folder
    )
    return folder


def run_until(command: list[str], out: Path, finished_parts: int, stop: signal.Signals) -> int:
    """Start the command, wait until ``finished_parts`` shards exist, then send ``stop``; the exit code."""
    # SIGINT as a terminal delivers it, even when these tests run in a background job (which ignores it)
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if len(list((out / "metadata").glob("*.parquet"))) >= finished_parts:
            process.send_signal(stop)
            break
        time.sleep(0.01)
    process.communicate(timeout=120)
    return process.returncode


def test_interrupted_runs_resume_to_the_uninterrupted_result(tmp_path, slow_checkpoint):
    images = make_image_folder(tmp_path / "images", good=90, seed=1)
    shards = -(-(90 + len(BROKEN)) // 10)
    reference = tmp_path / "reference"
    embed_collection(
        images,
        reference,
        Embedder.from_pretrained(slow_checkpoint, batch_size=4, precision="auto"),  # as the command runs it
        str(slow_checkpoint),
        workers=1,
        part_size=10,
        progress=False,
    )

    out = tmp_path / "resumed"
    command = [
        sys.executable,
        "-m",
        "altclip.cli",
        "embed",
        str(images),
        "--out",
        str(out),
        "--model",
        str(slow_checkpoint),
        "--shard-size",
        "10",
        "--batch-size",
        "4",
        "--workers",
        "1",
        "--json",
    ]
    assert run_until(command, out, 2, signal.SIGINT) == 130  # Ctrl-C: finished shards kept
    after_ctrl_c = sorted(p.name for p in (out / "metadata").glob("*.parquet"))
    assert 2 <= len(after_ctrl_c) < shards
    assert run_until(command, out, len(after_ctrl_c) + 2, signal.SIGKILL) == -signal.SIGKILL  # kill -9
    done = {p: p.stat().st_mtime_ns for d in ("metadata", "img_emb") for p in (out / d).iterdir()}
    assert len(after_ctrl_c) < len(done) // 2 < shards, "the run was not stopped half way"
    assert not list(out.rglob("*.tmp")) or all(p.name.startswith(".") for p in out.rglob("*.tmp"))

    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["embedded"] == 90
    assert all(p.stat().st_mtime_ns == t for p, t in done.items()), "finished shards were rewritten"

    ours, theirs = Collection.open(out), Collection.open(reference)
    assert ours.metadata().to_pylist() == theirs.metadata().to_pylist()  # row by row: none lost, none twice
    np.testing.assert_allclose(ours.embeddings().astype(np.float32), theirs.embeddings().astype(np.float32), atol=2e-3)
    assert ours.failures().to_pylist() == theirs.failures().to_pylist()
    assert len(pq.read_table(ours.part_files(0).metadata)) + len(pq.read_table(ours.part_files(0).failures)) == 10


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return make_shards(tmp_path_factory.mktemp("shards"), shards=3, per_shard=7)


def test_tar_shards_embed_images_and_captions_and_keep_their_metadata(tmp_path, shards, altclip_checkpoint):
    embedder = Embedder.from_pretrained(altclip_checkpoint, batch_size=4)
    pattern = str(shards[0].parent / "{00000..00002}.tar")
    summary = embed_collection(pattern, tmp_path / "out", embedder, "m", workers=2, captions=True, progress=False)
    assert summary.embedded == 21 and summary.parts == 3 and summary.captions == 20
    assert summary.by_status == {"ok": 21, "no_image": 1, "not_image": 1, "truncated": 1}

    collection = Collection.open(tmp_path / "out")
    table = collection.metadata().to_pylist()
    assert [row["key"] for row in table] == [f"{s:05d}{i:04d}" for s in range(3) for i in range(7)]
    samples = [sample for shard in shards for sample in scan_shard(shard) if sample.key in {r["key"] for r in table}]
    for row, sample in zip(table, samples, strict=True):
        assert row["image_path"] == f"{shard_of(sample)}/{sample.image.name}"
        assert row["caption"] == sample.caption and row["url"] == sample.meta["url"]
        assert row["status"] == "success" and json.loads(row["exif"]) == {"Make": "test"}  # JSON fields carried
        assert row["original_width"] == row["width"]
    images = embedder.embed_images([Image.open(io.BytesIO(s.image.read())) for s in samples]).numpy()
    np.testing.assert_allclose(collection.embeddings().astype(np.float32), images, atol=1e-3)
    texts = collection.embeddings("text").astype(np.float32)
    captioned = [i for i, s in enumerate(samples) if s.caption]
    assert len(captioned) == 20 and not texts[[i for i in range(21) if i not in captioned]].any()  # zeros: no caption
    expected = embedder.embed_texts([samples[i].caption for i in captioned]).numpy()
    np.testing.assert_allclose(texts[captioned], expected, atol=1e-3)
    failures = {Path(f["image_path"]).name: f["status"] for f in collection.failures().to_pylist()}
    assert failures == {"cut.png": "truncated", "notes.jpg": "not_image", "orphan": "no_image"}

    # one shard, or a listing of them, is the same source kind
    listing = tmp_path / "list.txt"
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 200)
    listing.write_text("\n".join([*(str(s) for s in shards[1:]), "junk.tar"]))
    two = embed_collection(listing, tmp_path / "two", embedder, "m", workers=0, progress=False)
    assert two.embedded == 14 and two.by_status["bad_shard"] == 1  # a bad shard is reported, not fatal
    assert "junk.tar is not a readable uncompressed tar shard" in two.failures[0]["error"]
    assert embed_collection(shards[2], tmp_path / "one", embedder, "m", workers=0, progress=False).embedded == 7
    with pytest.raises(ValueError, match="--captions needs tar shards"):
        embed_collection(shards[0].parent, tmp_path / "x", embedder, "m", workers=0, captions=True, progress=False)

    # the index's recall is measured with the captions as queries
    info = build_index(tmp_path / "out")
    assert info.recall_queries == {"count": 20, "source": "captions"} and info.recall_at_10 == 1.0


def shard_of(sample) -> str:
    return sample.image.shard


def test_embedding_reader_reads_the_folder_with_rows_aligned(tmp_path, image_folder, altclip_checkpoint):
    """The real embedding-reader package, in its npy and parquet_npy formats, on a folder with bad files."""
    from embedding_reader import EmbeddingReader

    embedder = Embedder.from_pretrained(altclip_checkpoint)
    out = tmp_path / "out"
    embed_collection(image_folder, out, embedder, "m", workers=0, part_size=6, progress=False)
    collection = Collection.open(out)
    vectors, paths = collection.embeddings(), collection.ok_paths()

    reader = EmbeddingReader(str(out / "img_emb"), file_format="npy")
    assert reader.count == 30 and reader.dimension == 16
    read = np.concatenate([batch for batch, _ in reader(batch_size=7, show_progress=False)])
    np.testing.assert_array_equal(read, vectors)

    reader = EmbeddingReader(
        str(out / "img_emb"),
        file_format="parquet_npy",
        metadata_folder=str(out / "metadata"),
        meta_columns=["image_path", "width"],
    )
    batches = list(reader(batch_size=7, show_progress=False))
    read = np.concatenate([batch for batch, _ in batches])
    meta = [row for _, frame in batches for row in frame["image_path"]]
    np.testing.assert_array_equal(read, vectors)
    assert meta == paths  # every vector with its own file, though 5 files in between were unreadable
    for row, path in zip(read, meta, strict=True):
        np.testing.assert_allclose(row.astype(np.float32), embedder.embed_images([path]).numpy()[0], atol=1e-3)


def run_embed(source: Path | str, out: Path, checkpoint: Path, processes: int, *extra: str) -> dict:
    """``altclip embed`` as a user runs it: plainly, or under torchrun with gloo on the CPU."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    command = [sys.executable, *launcher, "-m", "altclip.cli", "embed", str(source), "--out", str(out)]
    command += ["--model", str(checkpoint), "--workers", "1", "--batch-size", "4", "--json", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_two_processes_give_the_one_process_result(tmp_path, kind, image_folder, shards, altclip_checkpoint):
    source, extra = (
        (image_folder, ["--shard-size", "6"])
        if kind == "folder"
        else (shards[0].parent / "{00000..00002}.tar", ["--captions"])
    )
    one = run_embed(source, tmp_path / "one", altclip_checkpoint, 1, *extra)
    two = run_embed(source, tmp_path / "two", altclip_checkpoint, 2, *extra)  # rank 0 alone prints
    for summary in (one, two):
        summary.get("update", {}).pop("seconds", None)
    assert {k: v for k, v in two.items() if k not in ("folder", "index")} == {
        k: v for k, v in one.items() if k not in ("folder", "index")
    }
    ours, theirs = Collection.open(tmp_path / "two"), Collection.open(tmp_path / "one")
    assert ours.metadata().to_pylist() == theirs.metadata().to_pylist()  # same rows, same order, same keys
    assert ours.failures().to_pylist() == theirs.failures().to_pylist()
    for vectors in ("img", "text") if kind == "tar" else ("img",):
        np.testing.assert_allclose(
            ours.embeddings(vectors).astype(np.float32),
            theirs.embeddings(vectors).astype(np.float32),
            rtol=0,
            atol=1e-6,
        )
    assert two["index"]["count"] == one["embedded"] and (tmp_path / "two" / "index" / "faiss.index").is_file()

    # resume holds per shard, whichever process had it: lose one shard of each process, run the same command
    lost = [ours.part_files(s).metadata for s in (1, 2)]
    for path in lost:
        path.unlink()
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "two" / "metadata").iterdir()}
    assert run_embed(source, tmp_path / "two", altclip_checkpoint, 2, *extra)["embedded"] == one["embedded"]
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    if kind == "tar":  # shard k is part k again
        assert all(p.exists() for p in lost)
        assert Collection.open(tmp_path / "two").metadata().to_pylist() == theirs.metadata().to_pylist()
    else:  # a folder's lost files are embedded again, into new parts
        from tests.search.test_update import assert_same_collection

        assert_same_collection(tmp_path / "two", tmp_path / "one")
