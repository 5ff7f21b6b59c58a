"""Embedding a folder: results equal direct calls, bad files reported, interrupted runs resume exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import altclip
from altclip.tasks import Embedder
from altclip.tasks.collection import Collection, embed_collection, list_source
from tests.conftest import BROKEN, make_image_folder


def test_folder_embedding_equals_direct_calls_and_reports_bad_files(tmp_path, image_folder, altclip_checkpoint):
    embedder = Embedder.from_pretrained(altclip_checkpoint, batch_size=4)
    summary = embed_collection(
        image_folder, tmp_path / "out", embedder, str(altclip_checkpoint), workers=2, shard_size=7, progress=False
    )
    files = list_source(image_folder)
    assert summary["files"] == len(files) == 30 + len(BROKEN) and summary["embedded"] == 30
    assert summary["by_status"] == {"ok": 30, "empty": 1, "not_image": 1, "truncated": 1, "bomb": 1, "unreadable": 1}
    assert {Path(f["path"]).name: f["status"] for f in summary["failures"]} == BROKEN
    assert not any(".hidden" in f for f in files)

    collection = Collection.open(tmp_path / "out")
    table = collection.metadata()
    assert table["path"].to_pylist() == files  # every file once, in order
    vectors = collection.embeddings()
    assert vectors.dtype == np.float16 and vectors.shape == (30, 16)
    ok = collection.ok_paths()
    expected = embedder.embed_images(ok).numpy()
    np.testing.assert_allclose(vectors.astype(np.float32), expected, atol=1e-3)
    rows = table.to_pylist()
    from PIL import Image

    for row in rows:
        if row["status"] == "ok":
            assert (row["width"], row["height"]) == Image.open(row["path"]).size
        else:
            assert row["embedding_row"] == -1 and row["error"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["embedded"] == 30


def test_a_list_of_paths_and_folder_checks(tmp_path, image_folder, altclip_checkpoint):
    listing = tmp_path / "list.txt"
    chosen = sorted(image_folder.glob("img*"))[:4]
    listing.write_text("\n".join([os.path.relpath(chosen[0], tmp_path), *map(str, chosen[1:]), "", "missing.png"]))
    embedder = Embedder.from_pretrained(altclip_checkpoint)
    summary = embed_collection(listing, tmp_path / "out", embedder, "m", workers=0, progress=False)
    assert summary["by_status"] == {"ok": 4, "missing": 1}
    with pytest.raises(ValueError, match="was made from model 'm', not 'other'"):
        embed_collection(listing, tmp_path / "out", embedder, "other", workers=0, progress=False)
    with pytest.raises(ValueError, match="was made from draft False, not True"):  # decoding is part of the recipe
        embed_collection(listing, tmp_path / "out", embedder, "m", workers=0, progress=False, draft=True)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        embed_collection(listing, tmp_path / "busy", embedder, "m", workers=0, progress=False)
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


def run_until(command: list[str], out: Path, finished_shards: int, stop: signal.Signals) -> int:
    """Start the command, wait until ``finished_shards`` shards exist, then send ``stop``; the exit code."""
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
        if len(list((out / "metadata").glob("*.parquet"))) >= finished_shards:
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
        Embedder.from_pretrained(slow_checkpoint, batch_size=4),
        str(slow_checkpoint),
        workers=1,
        shard_size=10,
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
    done = {p: p.stat().st_mtime_ns for d in ("metadata", "embeddings") for p in (out / d).iterdir()}
    assert len(after_ctrl_c) < len(done) // 2 < shards, "the run was not stopped half way"
    assert not list(out.rglob("*.tmp")) or all(p.name.startswith(".") for p in out.rglob("*.tmp"))

    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["embedded"] == 90
    assert all(p.stat().st_mtime_ns == t for p, t in done.items()), "finished shards were rewritten"

    ours, theirs = Collection.open(out), Collection.open(reference)
    assert ours.metadata().to_pylist() == theirs.metadata().to_pylist()  # row by row: none lost, none twice
    np.testing.assert_allclose(ours.embeddings().astype(np.float32), theirs.embeddings().astype(np.float32), atol=2e-3)
    assert len(pq.read_table(ours.shard_paths(0)[1])) == 10
