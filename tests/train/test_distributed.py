"""Two processes (torchrun, gloo on CPU) give what one process gives on the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import altclip


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


@pytest.mark.parametrize("phase", ["contrastive", "distill"])
def test_two_processes_equal_one(tmp_path, phase, teacher, student, pairs_jsonl, parallel_tsv):
    if phase == "contrastive":  # gathered negatives; the broken image makes the processes' batches unequal
        args = ["contrastive", "--model", str(student), "--data", str(pairs_jsonl)]
    else:
        args = ["distill", "--teacher", str(teacher), "--student", str(student), "--data", str(parallel_tsv)]
    args += ["--steps", "6", "--lr", "2e-3", "--warmup", "2"]
    one = train(tmp_path / "one", 1, 8, args)
    two = train(tmp_path / "two", 2, 4, args)
    assert len(one) == len(two) == 6
    assert one == pytest.approx(two, abs=2e-5)
    a = altclip.AltCLIPModel.from_pretrained(tmp_path / "one" / "model").state_dict()
    b = altclip.AltCLIPModel.from_pretrained(tmp_path / "two" / "model").state_dict()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    assert (
        json.loads((tmp_path / "two" / "checkpoints" / "step-000006" / "trainer.json").read_text())["world_size"] == 2
    )
    assert torch.equal(a["visual_projection.weight"], b["visual_projection.weight"])
