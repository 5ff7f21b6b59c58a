"""Tiny teachers, students and data for the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

import altclip
from altclip.train.student import build_student
from tests.conftest import LANGUAGES


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
def parallel_tsv(tmp_path_factory) -> Path:
    """English CLDR emoji names and their translations: src<TAB>tgt<TAB>lang, with bad lines mixed in."""
    import emoji

    emoji.config.load_language()
    lines = ["src\ttgt\tlang"]
    for data in list(emoji.EMOJI_DATA.values())[:300]:
        en = data["en"].strip(":").replace("_", " ")
        for lang in LANGUAGES[1:4]:
            lines.append(f"{en}\t{data[lang].strip(':').replace('_', ' ')}\t{lang}")
    lines[5:5] = ["only one column", "a\t\tzh", "x\ty\tz\textra"]
    path = tmp_path_factory.mktemp("parallel") / "parallel.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
