"""Old import paths and flags kept for one release: they still work, name the same things, and say where those
went."""

from __future__ import annotations

import importlib

import pytest

import altclip.tasks
from altclip.cli import build_parser
from altclip.embedder import Embedder
from altclip.processing.prompts import TEMPLATES
from altclip.runtime.loading import DEFAULT_MODEL


def test_altclip_tasks_names_what_moved_and_warns():
    with pytest.warns(DeprecationWarning, match="altclip.embedder"):
        old = importlib.reload(altclip.tasks)
    assert old.Embedder is Embedder and old.TEMPLATES is TEMPLATES and old.DEFAULT_MODEL == DEFAULT_MODEL


def test_embedder_dtype_is_an_alias_of_precision(clip_checkpoint):
    with pytest.warns(DeprecationWarning, match="precision"):
        embedder = Embedder.from_pretrained(clip_checkpoint, dtype="float32")
    assert embedder.precision.name == "float32" and embedder.precision.asked == "float32"


def test_old_flags_still_parse():
    parser = build_parser()
    args = parser.parse_args(["embed", "photos", "--out", "emb", "--shard-size", "7", "--dtype", "int8"])
    assert args.part_size == 7 and args.precision == "int8"
    args = parser.parse_args(["train", "distill", "--teacher", "t", "--student", "s", "--data", "d", "--out", "o",
                              "--precision", "bf16"])  # fmt: skip
    assert args.precision == "bf16"  # TrainConfig reads it as bfloat16 (tests/train/test_loop.py)
