"""The demo's zero-shot tasks: flags by CLDR country names in templates per language, emoji by skin tone; scores per
split."""

from __future__ import annotations

import json

import pytest
import torch

from altclip.demo.data import LANGUAGES, EmojiSet, emoji_table, plain_names
from altclip.demo.zeroshot import (
    FLAG_TEMPLATES,
    evaluate_task,
    evaluate_zeroshot,
    flag_code,
    flag_names,
    flag_task,
    skin_tone,
    tone_names,
    tone_task,
    write_zeroshot_report,
)
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


def test_templates_say_flag_with_the_word_of_cldrs_flag_names():
    canada = plain_names(emoji_table()["🇨🇦"])
    for lang, templates in FLAG_TEMPLATES.items():
        # CLDR names a flag emoji "<flag word> <country>" in most languages (en and zh: the country alone)
        words = canada[lang].split()
        flag_word = {"en": "flag", "zh": "旗"}.get(lang) or words[0]
        assert all(flag_word[:3].lower() in t.lower() for t in templates), lang


def test_prompts_take_the_case_of_the_captions(tmp_path):
    names = {"🐈": {lang: "cat" for lang in LANGUAGES} | {"en": "Cat", "ru": "Кошка"}}
    data = EmojiSet(tmp_path, train=["🐈"], test=[], names=names)
    assert data.lower_case_languages() == set(LANGUAGES) - {"en", "ru"}
    assert EmojiSet(tmp_path, [], [], {}).lower_case_languages() == set()  # no names, no evidence
    task = flag_task(EmojiSet(tmp_path, train=FLAGS, test=[], names=names))
    germany = task.classes[task.images.index("🇩🇪")]
    assert germany["de"] == "deutschland" and germany["en"] == "Germany" and germany["ru"] == "Германия"
    assert task.templates["de"] == ("die flagge von {}.", "flagge: {}.")
    assert task.templates["en"] == FLAG_TEMPLATES["en"] and task.templates["ru"] == FLAG_TEMPLATES["ru"]


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
    rows = evaluate_zeroshot(embedders, data)  # no emoji with a skin tone: the flags alone
    assert [(r.language, r.method) for r in rows[:3]] == [
        ("English", "CLIP"),
        ("English", "AltCLIP"),
        ("Chinese", "CLIP"),
    ]
    assert len(rows) == 28 and all((r.seen.images, r.held_out.images) == (6, 2) for r in rows)
    assert {r.task for r in rows} == {"flags"} and rows[0].chance == pytest.approx(100 / 8)
    assert all(0 <= r.seen.top1 <= r.seen.top5 <= 100 for r in rows)
    # the Chinese row is the Chinese names in the Chinese templates, scored against the images
    images = embedders["AltCLIP"].embed_images([data.image(c) for c in sorted(FLAGS)])
    names = flag_names(FLAGS)
    classes = embedders["AltCLIP"].class_embeddings([names[c]["zh"] for c in sorted(FLAGS)], FLAG_TEMPLATES["zh"])
    held = torch.tensor([c in data.test for c in sorted(FLAGS)])
    expected = score_classes(images[held], torch.arange(8)[held], classes, [str(i) for i in range(8)])
    assert rows[3].held_out.top1 == expected.top1 and rows[3].held_out.top5 == expected.top5
    paths = write_zeroshot_report(rows, tmp_path / "report")
    assert len(json.loads(paths["json"].read_text())) == 28 and "held-out top-1" in paths["text"].read_text()
    assert evaluate_task(embedders, EmojiSet(tmp_path, FLAGS, [], {}), flag_task(data)) == []  # none held out


HANDS = ["👋🏻", "👋🏼", "👋🏽", "👋🏾", "👋🏿", "👍🏻", "👍🏿", "🤝🏻", "🧑🏻‍🤝‍🧑🏿", "👋"]


def test_skin_tones_and_their_cldr_names():
    assert [skin_tone(c) for c in HANDS] == [0, 1, 2, 3, 4, 0, 4, 0, None, None]  # two tones or none: not a class
    names = tone_names()
    assert len(names) == 5 and names[0]["en"] == "light skin tone" and names[4]["en"] == "dark skin tone"
    assert all(set(n) == set(LANGUAGES) and len({n[lang] for n in names}) == 5 for n in names for lang in LANGUAGES)


def test_tone_task_scores_the_tones_of_both_splits(tmp_path, altclip_checkpoint):
    data = EmojiSet(tmp_path, train=HANDS[:5] + HANDS[8:], test=HANDS[5:8], names={})
    (tmp_path / "images").mkdir()
    for i, char in enumerate(HANDS):
        draw(list(COLOURS.values())[i % len(COLOURS)][1], list(SHAPES)[i % len(SHAPES)]).save(data.image(char))
    task = tone_task(data)
    assert task.images == sorted(HANDS[:8]) and task.chance == pytest.approx(20)
    embedder = Embedder.from_pretrained(altclip_checkpoint)
    rows = evaluate_task({"AltCLIP": embedder}, data, task)
    assert len(rows) == 14 and all((r.seen.images, r.held_out.images) == (5, 3) for r in rows)
    # the Korean row: the images against the five Korean tone names, embedded as they are
    held = torch.tensor([c in data.test for c in task.images])
    classes = embedder.class_embeddings([n["ko"] for n in tone_names()], ("{}",))
    images = embedder.embed_images([data.image(c) for c in task.images])
    expected = score_classes(images[held], torch.tensor(task.labels)[held], classes, [str(i) for i in range(5)])
    korean = next(r for r in rows if r.language == "Korean")
    assert korean.held_out.top1 == expected.top1 and korean.task == "tones"
