"""Tiny teachers, students and data for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image, ImageDraw

import altclip
from altclip.train.student import build_student
from tests.conftest import LANGUAGES

COLOURS = {
    "red": ("红色", (220, 30, 30)),
    "green": ("绿色", (30, 180, 60)),
    "blue": ("蓝色", (40, 60, 220)),
    "yellow": ("黄色", (230, 210, 30)),
}
SHAPES = {"circle": "圆形", "square": "方形", "triangle": "三角形"}


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


def draw(colour: tuple[int, int, int], shape: str, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    box = (6, 6, size - 6, size - 6)
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    else:
        pen.polygon([(size // 2, 4), (4, size - 4), (size - 4, size - 4)], fill=colour)
    return image


@pytest.fixture(scope="session")
def pairs_jsonl(tmp_path_factory) -> Path:
    """Coloured shapes with English and Chinese captions, plus a broken image, an empty caption, a bad line."""
    folder = tmp_path_factory.mktemp("pairs")
    records = []
    for colour, (zh_colour, rgb) in COLOURS.items():
        for shape, zh_shape in SHAPES.items():
            name = f"{colour}-{shape}.png"
            draw(rgb, shape).save(folder / name)
            records += [
                {"image": name, "caption": f"a {colour} {shape}", "lang": "en"},
                {"image": name, "caption": f"{zh_colour}{zh_shape}", "lang": "zh"},
            ]
    (folder / "broken.png").write_bytes(b"not a png")
    lines = [json.dumps(r, ensure_ascii=False) for r in records * 2]
    lines += [
        json.dumps({"image": "broken.png", "caption": "a broken picture"}),
        json.dumps({"image": "red-circle.png", "caption": "  "}),
        "{not json",
    ]
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
