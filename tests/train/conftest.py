"""Tiny teachers, students and data for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

import altclip
from altclip.train.student import build_student


def with_dropout(student, folder):
    """The student with dropout on, so a resumed run must also restore the random state."""
    import shutil

    shutil.copytree(student, folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"].update(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.1)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def xlmr_tower(tmp_path_factory, xlmr_folder) -> Path:
    """A random XLM-R written by transformers (XLMRobertaModel), with the trained tokenizer beside it."""
    tokenizer = altclip.XLMRobertaTokenizer.from_pretrained(xlmr_folder)
    config = transformers.XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=66,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("xlmr-tower")
    transformers.XLMRobertaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def teacher(clip_checkpoint) -> Path:
    return clip_checkpoint


@pytest.fixture(scope="session")
def student(tmp_path_factory, teacher, xlmr_tower) -> Path:
    return build_student(teacher, xlmr_tower, tmp_path_factory.mktemp("student") / "model")


@pytest.fixture(scope="session")
def gappy_pairs(tmp_path_factory) -> Path:
    """24 pairs, every other image unreadable: with 2 rows a micro-batch, some micro-batches have none."""
    from tests.conftest import COLOURS, SHAPES, draw

    folder = tmp_path_factory.mktemp("gappy")
    lines = []
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        if len(lines) == 24:
            break
        draw(COLOURS[colour][1], shape).save(folder / f"{i}.png")
        (folder / f"broken-{i}.png").write_bytes(b"not an image")
        lines += [
            json.dumps({"image": f"{i}.png", "caption": f"a {colour} {shape}"}),
            json.dumps({"image": f"broken-{i}.png", "caption": f"broken {i}"}),
        ]
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "pairs.jsonl"
