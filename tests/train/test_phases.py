"""Phases cross process boundaries: what loader workers receive pickles, under every start method."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from altclip.train.phases import contrastive_phase, distillation_phase


def assert_same_batch(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key], key


def test_datasets_and_collates_pickle(teacher, student, parallel_tsv, pairs_jsonl):
    for phase in (distillation_phase(teacher, student, parallel_tsv), contrastive_phase(student, pairs_jsonl)):
        dataset, collate = pickle.loads(pickle.dumps((phase.dataset, phase.collate)))
        assert type(pickle.loads(pickle.dumps(phase)).objective) is type(phase.objective)  # the whole phase too
        items = [phase.dataset[i] for i in range(6)]
        assert_same_batch(collate([dataset[i] for i in range(6)]), phase.collate(items))


def test_lengths_are_each_rows_tokens(teacher, student, parallel_tsv, pairs_jsonl):
    distill, pairs = distillation_phase(teacher, student, parallel_tsv), contrastive_phase(student, pairs_jsonl)
    tokenizer = distill.processor.tokenizer
    rows = [distill.dataset[i] for i in range(len(distill.dataset))]
    expected = [len(tokenizer(r["src"])["input_ids"]) + len(tokenizer(r["tgt"])["input_ids"]) for r in rows]
    assert distill.lengths() == expected and len(set(expected)) > 1
    captions = [row["caption"] for row in pairs.dataset.rows]
    assert pairs.lengths() == [len(pairs.processor.tokenizer(c)["input_ids"]) for c in captions]


def test_a_batch_without_readable_images_keeps_its_tensors(student, pairs_jsonl):
    phase = contrastive_phase(student, pairs_jsonl)
    batch = phase.collate([(None, "not_image"), (None, "missing")])
    assert batch["size"] == 0 and batch["skipped"] == ["image: not_image", "image: missing"]
    assert batch["input_ids"].shape[0] == batch["attention_mask"].shape[0] == 0
    assert batch["pixel_values"].shape == (0, 3, 32, 32)


START = """
import multiprocessing, sys
multiprocessing.set_start_method(sys.argv[1], force=True)
from altclip.cli import main
for command in sys.argv[2:]:
    code = main(command.split("\\x1f"))
    if code:
        sys.exit(code)
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_training_and_the_demo_under_start_method(tmp_path, method, teacher, student, parallel_tsv, pairs_jsonl):
    """macOS starts workers with spawn, Linux from Python 3.14 with forkserver: both phases with loader
    workers and the demo's smoke run work there."""
    common = ["--steps", "2", "--batch-size", "4", "--workers", "2", "--json"]
    contrastive = ["contrastive", "--model", str(student), "--data", str(pairs_jsonl), "--out", str(tmp_path / "c")]
    distill = ["distill", "--teacher", str(teacher), "--student", str(student), "--data", str(parallel_tsv)]
    epochs = ["--teacher-epochs", "1", "--distill-epochs", "1", "--contrastive-epochs", "1"]
    commands = [
        ["train", *contrastive, *common, "--cache-images"],
        ["train", *distill, "--out", str(tmp_path / "d"), *common, "--cache-targets"],
        ["demo", "--limit", "200", "--out", str(tmp_path / "demo"), "--workers", "2", "--json", *epochs],
    ]
    result = subprocess.run(
        [sys.executable, "-c", START, method, *("\x1f".join(c) for c in commands)],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for run in ("c", "d"):
        assert len((tmp_path / run / "log.jsonl").read_text().splitlines()) == 2
    demo = json.loads(result.stdout[result.stdout.index('{\n  "results"') :])
    assert len(demo["results"]) == 28 and (tmp_path / "demo" / "contrastive" / "model" / "config.json").is_file()
    # a task is scored when the 200 emoji hold its images on both sides of the split
    tasks = {row["task"] for row in demo["zeroshot"]}
    assert len(demo["zeroshot"]) == 28 * len(tasks) and tasks <= {"flags", "tones"}
