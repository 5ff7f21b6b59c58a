"""The demo's zero-shot flag task: names from Babel's CLDR data, templates per language, scores per split."""

from __future__ import annotations

import json

import pytest
import torch

from altclip.demo.data import LANGUAGES, EmojiSet
from altclip.demo.flags import FLAG_TEMPLATES, evaluate_flags, flag_code, flag_names, write_flags_report
from altclip.evaluate.zeroshot import score_classes
from altclip.tasks import Embedder
from tests.conftest import COLOURS, SHAPES, draw

FLAGS = ["🇯🇵", "🇩🇪", "🇧🇷", "🇰🇪", "🇫🇷", "🇨🇳", "🇲🇽", "🇮🇳"]


def test_flag_codes_and_cldr_names():
    assert flag_code("🇯🇵") == "JP" and flag_code("🐈") is None and flag_code("🏴‍☠️") is None
    names = flag_names([*FLAGS, "🐈"])
    assert set(names) == set(FLAGS) and set(names["🇯🇵"]) == set(LANGUAGES)
    assert names["🇯🇵"]["zh"] == "日本" and names["🇩🇪"]["de"] == "Deutschland" and names["🇨🇳"]["ko"] == "중국"
    assert set(FLAG_TEMPLATES) == set(LANGUAGES)
    assert all(t.count("{}") == 1 for templates in FLAG_TEMPLATES.values() for t in templates)


def test_scores_equal_a_naive_count():
    g = torch.Generator().manual_seed(0)
    images, classes = torch.randn(20, 8, generator=g), torch.randn(9, 8, generator=g)
    labels = torch.randint(0, 9, (20,), generator=g)
    scores = score_classes(images, labels, classes, [str(c) for c in range(9)])
    sims = (images @ classes.t()).tolist()
    ranks = [sum(s > row[int(label)] for s in row) for row, label in zip(sims, labels, strict=True)]
    assert scores.top1 == pytest.approx(100 * sum(r < 1 for r in ranks) / 20)
    assert scores.top5 == pytest.approx(100 * sum(r < 5 for r in ranks) / 20)


def test_every_language_and_model_on_both_splits(tmp_path, altclip_checkpoint, clip_checkpoint):
    data = EmojiSet(tmp_path, train=FLAGS[:6], test=FLAGS[6:], names={})
    (tmp_path / "images").mkdir()
    for char, (colour, shape) in zip(FLAGS, [(c, s) for c in COLOURS for s in SHAPES], strict=False):
        draw(COLOURS[colour][1], shape).save(data.image(char))
    embedders = {
        "CLIP": Embedder.from_pretrained(clip_checkpoint),
        "AltCLIP": Embedder.from_pretrained(altclip_checkpoint),
    }
    rows = evaluate_flags(embedders, data)
    assert [(r.language, r.method) for r in rows[:3]] == [
        ("English", "CLIP"),
        ("English", "AltCLIP"),
        ("Chinese", "CLIP"),
    ]
    assert len(rows) == 28 and all((r.seen.images, r.held_out.images) == (6, 2) for r in rows)
    assert all(0 <= r.seen.top1 <= r.seen.top5 <= 100 for r in rows)
    # the Chinese row is the Chinese names in the Chinese templates, scored against the images
    images = embedders["AltCLIP"].embed_images([data.image(c) for c in sorted(FLAGS)])
    names = flag_names(FLAGS)
    classes = embedders["AltCLIP"].class_embeddings([names[c]["zh"] for c in sorted(FLAGS)], FLAG_TEMPLATES["zh"])
    held = torch.tensor([c in data.test for c in sorted(FLAGS)])
    expected = score_classes(images[held], torch.arange(8)[held], classes, [str(i) for i in range(8)])
    assert rows[3].held_out.top1 == expected.top1 and rows[3].held_out.top5 == expected.top5
    paths = write_flags_report(rows, tmp_path / "report")
    assert len(json.loads(paths["json"].read_text())) == 28 and "held-out top-1" in paths["text"].read_text()
    assert evaluate_flags(embedders, EmojiSet(tmp_path, FLAGS, [], {})) == []  # no held-out flag: no task
