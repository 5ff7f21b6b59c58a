"""Two processes (torchrun, gloo on CPU) give what one process gives on the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import altclip
from altclip.data.datafiles import read_pairs
from altclip.train.data import micro_batch_indices
from tests.train.conftest import with_dropout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(out, processes: int, batch: int, args: list[str]) -> list[float]:
    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            f"--master_port={free_port()}",
            "--master_addr=127.0.0.1",
        ]
        if processes > 1
        else [sys.executable]
    )
    command = [*launcher, "-m", "altclip.cli", "train", *args, "--out", str(out), "--batch-size", str(batch), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def first_one_sided_empty(pairs: Path, batch: int) -> int:
    """The first micro-batch of epoch 0 (seed 0) where one of two processes has no readable image and the
    other has some."""
    rows = read_pairs(pairs).rows
    per_rank = [micro_batch_indices(len(rows), batch, 2, rank, 0, 0) for rank in (0, 1)]
    for k, parts in enumerate(zip(*per_rank, strict=True)):
        readable = [sum(not Path(rows[i]["image"]).name.startswith("broken") for i in part) for part in parts]
        if min(readable) == 0 < max(readable):
            return k
    return len(per_rank[0])


@pytest.mark.parametrize("phase", ["contrastive", "contrastive-local", "distill"])
def test_two_processes_equal_one(tmp_path, phase, teacher, student, gappy_pairs, parallel_tsv):
    if phase.startswith("contrastive"):
        # gathered negatives; half the images are unreadable, so some micro-batches leave one process with no
        # row at all (it must still take part in every collective) while the other has some
        args = ["contrastive", "--model", str(student), "--data", str(gappy_pairs)]
        assert first_one_sided_empty(gappy_pairs, batch=2) < 6
    else:
        args = ["distill", "--teacher", str(teacher), "--student", str(student), "--data", str(parallel_tsv)]
    args += ["--steps", "6", "--lr", "2e-3", "--warmup", "2"]
    one = train(tmp_path / "one", 1, 4, args)
    two = train(tmp_path / "two", 2, 2, args + (["--local-loss"] if phase == "contrastive-local" else []))
    assert len(one) == len(two) == 6
    assert one == pytest.approx(two, abs=2e-5)
    a = altclip.AltCLIPModel.from_pretrained(tmp_path / "one" / "model").state_dict()
    b = altclip.AltCLIPModel.from_pretrained(tmp_path / "two" / "model").state_dict()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    info = json.loads((tmp_path / "two" / "checkpoints" / "step-000006" / "trainer.json").read_text())
    assert info["world_size"] == 2
    single = json.loads((tmp_path / "one" / "checkpoints" / "step-000006" / "trainer.json").read_text())
    assert info["skipped"] == single["skipped"]  # counted across processes, data-file skips once
    assert torch.equal(a["visual_projection.weight"], b["visual_projection.weight"])


def test_two_processes_resume_exactly_each_with_its_own_dropout(tmp_path, student, gappy_pairs):
    """A finished two-process run continues with more steps; each process restores its own random stream."""
    student = with_dropout(student, tmp_path / "dropout-student")
    args = ["contrastive", "--model", str(student), "--data", str(gappy_pairs), "--lr", "1e-3", "--min-lr-ratio", "1"]
    args += ["--accumulate", "2"]
    straight = train(tmp_path / "straight", 2, 2, [*args, "--steps", "6"])
    train(tmp_path / "resumed", 2, 2, [*args, "--steps", "3"])
    assert train(tmp_path / "resumed", 2, 2, [*args, "--steps", "6", "--resume"]) == straight
    saved = tmp_path / "resumed" / "checkpoints" / "step-000003"
    streams = [torch.load(saved / f"rng-{rank:05d}.pt", weights_only=True)["torch"] for rank in (0, 1)]
    assert not torch.equal(*streams)


def test_finetune_with_lora_and_validation_on_two_processes(tmp_path, student, pairs_jsonl):
    """LoRA, augmentation and validation under torchrun: the losses of one process on the same global batch, and
    both processes stop together on the same validation scores."""

    def finetune(out: Path, processes: int, batch: int) -> list[float]:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
        launcher += [f"--master_port={free_port()}", "--master_addr=127.0.0.1"]
        command = [*(launcher if processes > 1 else [sys.executable]), "-m", "altclip.cli", "finetune"]
        command += ["--model", str(student), "--data", str(pairs_jsonl), "--out", str(out), "--lora", "2"]
        command += ["--lora-dropout", "0", "--val", "0.25", "--val-every", "2", "--patience", "1", "--steps", "8"]
        command += ["--batch-size", str(batch), "--lr", "5e-3", "--json"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env())
        assert result.returncode == 0, result.stderr[-3000:]
        return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]

    one, two = finetune(tmp_path / "one", 1, 4), finetune(tmp_path / "two", 2, 2)
    assert len(one) == len(two) and one == pytest.approx(two, abs=1e-5)
    logs = [(tmp_path / run / "validation.jsonl").read_text().splitlines() for run in ("one", "two")]
    assert [json.loads(r)["step"] for r in logs[0]] == [json.loads(r)["step"] for r in logs[1]]
