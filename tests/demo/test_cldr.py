"""Phase 1's CLDR text: items in every language, never a territory's name, and the run's parallel file."""

from __future__ import annotations

from collections import Counter

import pytest
from babel import Locale

from altclip.demo.cldr import SOURCES, cldr_items
from altclip.demo.data import LANGUAGES, EmojiSet
from altclip.demo.run import DemoConfig, phase1_items, write_phase1
from altclip.errors import InputError


def test_items_name_one_meaning_in_every_language():
    items = cldr_items(("scripts", "calendar"))
    assert all(set(item) == set(LANGUAGES) and all(item.values()) for item in items)
    by_english = {item["en"]: item for item in items}
    assert by_english["Cyrillic"]["ru"] == "кириллица" and by_english["Monday"]["de"] == "Montag"
    assert len(by_english) == len(items)  # no item twice
    zones = {item["en"]: item for item in cldr_items(("timezones",))}
    assert zones["Japan Time"]["ko"] == "일본 시간"
    assert zones["Canada (Toronto) Time"]["de"] == "Kanada (Toronto) (Ortszeit)"


def test_no_item_is_a_territory_name_in_any_language():
    territories = {lang: set(Locale.parse(lang).territories.values()) for lang in LANGUAGES}
    items = cldr_items(SOURCES)
    assert not [item for item in items if any(item[lang] in territories[lang] for lang in LANGUAGES)]
    locales = cldr_items(("locales",))
    canada = next(item for item in locales if item["en"] == "French (Canada)")  # inside a longer phrase only
    assert "Kanada" in canada["de"] and canada["de"] != "Kanada"
    with pytest.raises(InputError, match="unknown phase 1 source"):
        cldr_items(("scripts", "territories"))
    with pytest.raises(InputError, match=r"\['territories'\]"):  # refused before any stage runs
        DemoConfig(phase1_sources=("territories",))
    with pytest.raises(InputError, match="phase1_languages"):
        DemoConfig(phase1_sources=("scripts",), phase1_languages=14)


def test_phase1_file_holds_the_emoji_names_then_the_sources(tmp_path):
    names = {"🐈": {lang: f"cat-{lang}" for lang in LANGUAGES}, "🐕": {lang: f"dog-{lang}" for lang in LANGUAGES}}
    data = EmojiSet(tmp_path / "data", train=["🐈"], test=["🐕"], names=names)
    emoji_only = DemoConfig(out=tmp_path / "run", phase1_sources=())
    assert write_phase1(emoji_only, data) == data.folder / "parallel.tsv"  # the data folder's file, as it was
    path = write_phase1(DemoConfig(out=tmp_path / "run", phase1_sources=("calendar",), phase1_languages=13), data)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "src\ttgt\tlang" and lines[1] == "cat-en\tcat-zh\tzh"  # the emoji names first
    assert "Monday\t星期一\tzh" in lines and not any("dog" in line for line in lines)  # no held-out name
    assert len(lines) == 1 + 13 * (1 + len(cldr_items(("calendar",))))


def test_each_item_brings_its_share_of_the_languages_in_turn(tmp_path):
    data = EmojiSet(tmp_path, train=[], test=[], names={})
    items = phase1_items(DemoConfig(out=tmp_path, phase1_sources=("calendar",), phase1_languages=2), data)
    assert len(items) == len(cldr_items(("calendar",))) and all(len(item) == 3 and "en" in item for item in items)
    counts = Counter(lang for item in items for lang in item if lang != "en")
    assert set(counts) == set(LANGUAGES) - {"en"} and max(counts.values()) - min(counts.values()) <= 1
