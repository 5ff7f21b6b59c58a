"""The emoji data set: rendered images, names in 14 languages, a split by emoji."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from altclip.demo import data as demo_data
from altclip.demo.data import LANGUAGES, build, find_font


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return build(tmp_path_factory.mktemp("emoji"), limit=60, progress=False)


def test_images_names_and_split(small_set):
    data = small_set
    assert len(data.train) + len(data.test) >= 50 and len(data.test) >= 5
    assert not set(data.train) & set(data.test)
    for char in data.train + data.test:
        assert set(data.names[char]) == set(LANGUAGES) and all(data.names[char].values())
        with Image.open(data.image(char)) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
            assert len(image.getcolors(4096) or range(5000)) > 2  # a real drawing, not a blank box
    test_rows = [json.loads(line) for line in (data.folder / "test.jsonl").read_text().splitlines()]
    assert len(test_rows) == 14 * len(data.test)
    assert {r["image"] for r in test_rows} == {data.image_name(c) for c in data.test}  # relative: the folder can move
    parallel = (data.folder / "parallel.tsv").read_text().splitlines()
    assert parallel[0] == "src\ttgt\tlang" and len(parallel) == 1 + 13 * len(data.train)
    teacher = (data.folder / "teacher_pairs.jsonl").read_text().splitlines()
    assert len(teacher) == len(data.train) and all(json.loads(t)["lang"] == "en" for t in teacher)


def test_the_split_is_fixed_and_reused(small_set, tmp_path):
    again = build(tmp_path / "again", limit=60, progress=False)
    assert again.train == small_set.train and again.test == small_set.test
    assert build(small_set.folder, progress=False).test == small_set.test  # reused, not redrawn


def test_a_missing_font_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(demo_data, "FONT_CANDIDATES", ())
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-noto-color-emoji"):
        find_font()
    with pytest.raises(FileNotFoundError, match="no such font file"):
        find_font(tmp_path / "absent.ttf")


def test_a_validation_split_leaves_the_test_emoji_out(small_set, tmp_path):
    validation = build(tmp_path / "validation", limit=60, progress=False, holdout="validation")
    assert set(validation.train) | set(validation.test) == set(small_set.train)  # all from the training emoji
    assert not set(validation.train) & set(validation.test) and len(validation.test) >= 5
    assert not any(Path(validation.image(c)).exists() for c in small_set.test)  # not even drawn to disk
    written = (validation.folder / "pairs.jsonl").read_text() + (validation.folder / "test.jsonl").read_text()
    assert not any(validation.image_name(c) in written for c in small_set.test)
    with pytest.raises(ValueError, match="holds a validation split, not a test one"):
        build(validation.folder, progress=False)
    with pytest.raises(ValueError, match="holdout must be one of"):
        build(tmp_path / "other", holdout="train")
