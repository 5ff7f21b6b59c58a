"""The pointing game: composites laid out as said, hits counted as said, and its report written."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from altclip.demo.data import LANGUAGES, EmojiSet
from altclip.demo.pointing import composites, play, quarter_of, write_pointing_report
from altclip.embedder import Embedder

COLOURS = {"🔴": (220, 30, 30), "🟢": (30, 200, 30), "🔵": (30, 30, 220), "🟡": (230, 220, 30), "⚫": (0, 0, 0)}


def colour_set(folder) -> EmojiSet:
    names = {c: {lang: f"{c} {lang}" for lang in LANGUAGES} for c in COLOURS}
    data = EmojiSet(folder, [], sorted(COLOURS), names)
    (folder / "images").mkdir(parents=True)
    for char, rgb in COLOURS.items():
        Image.new("RGB", (32, 32), rgb).save(data.image(char))
    return data


def test_quarter_of_the_peak():
    relevance = np.zeros((6, 8))
    for (y, x), quarter in {(0, 0): 0, (0, 4): 1, (3, 3): 2, (5, 7): 3}.items():
        relevance[:] = 0
        relevance[y, x] = 1
        assert quarter_of(relevance) == quarter


def test_composites_hold_four_distinct_emoji_in_their_quarters(tmp_path):
    data = colour_set(tmp_path)
    games = composites(data, 6, seed=1)
    again = composites(data, 6, seed=1)  # the same draw for the same seed
    assert [four for _, four in games] == [four for _, four in again]
    for image, four in games:
        assert image.size == (64, 64) and len(set(four)) == 4
        pixels = np.asarray(image)
        for quarter, char in enumerate(four):
            y, x = (quarter // 2) * 32 + 16, (quarter % 2) * 32 + 16
            assert tuple(pixels[y, x]) == COLOURS[char]


def test_play_counts_hits_and_writes_the_report(tmp_path, altclip_checkpoint, clip_checkpoint):
    data = colour_set(tmp_path / "data")
    embedders = {
        "CLIP": Embedder.from_pretrained(clip_checkpoint),
        "AltCLIP": Embedder.from_pretrained(altclip_checkpoint),
    }
    games = composites(data, 5)
    rows, maps = play(embedders, data, games)
    assert len(rows) == len(LANGUAGES) * 2 * 2 and all(r.queries == 20 for r in rows)
    for row in rows:
        lang = next(code for code, name in LANGUAGES.items() if name == row.language)
        found = maps[lang, row.method, row.zoom]
        assert all(m.shape == (4, 64, 64) for m in found)
        assert row.hits == sum(quarter_of(m[q]) == q for m in found for q in range(4))
    assert len(games) == 5
    paths = write_pointing_report(rows, maps, games, data, tmp_path / "report", examples=2)
    assert json.loads(paths["json"].read_text())[0]["hit_rate"] == rows[0].rate
    assert "AltCLIP zoom 2" in paths["text"].read_text()
    with Image.open(paths["grid"]) as grid:
        assert grid.width == 8 * 192 and grid.height > 4 * 192  # 8 columns; 2 examples x 2 zooms
