"""The pointing game: does a relevance map point at the emoji a text names?

Composites of 2 x 2 held-out emoji, each drawn at the demo's resolution (so a composite is twice the model's input
on each side). The query is the CLDR name of one of the four, in each language; a hit is the map's maximum falling
in that emoji's quarter (chance: 25%). Played at zoom 1 (the single centre view, where the model sees each emoji at
half the size it trained on) and at zoom 2 (windows of the model's input over the composite at its own size).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from altclip.demo.data import LANGUAGES, EmojiSet
from altclip.embedder import Embedder
from altclip.explain.drawing import captioned, overlay
from altclip.explain.relevance import peak
from altclip.files import atomic_path, atomic_write_bytes
from altclip.tables import format_table

ZOOMS = (1, 2)
GRID_LANGUAGES = ("en", "zh", "ja", "ko", "ar", "ru", "fa")
Game = tuple[Image.Image, list[str]]  # a composite and its four emoji, row-major
Maps = dict[tuple[str, str, int], list[np.ndarray]]  # (language, model, zoom) -> per composite (4, height, width)


@dataclass
class PointingRow:
    language: str
    method: str
    zoom: int
    hits: int
    queries: int

    @property
    def rate(self) -> float:
        return 100.0 * self.hits / self.queries

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "hit_rate": round(self.rate, 2)}


def composites(data: EmojiSet, count: int, seed: int = 0) -> list[Game]:
    """``count`` 2 x 2 composites of distinct held-out emoji (row-major quarters), at the images' own size."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        four = rng.sample(data.test, 4)
        tiles = [Image.open(data.image(c)).convert("RGB") for c in four]
        side = tiles[0].width
        canvas = Image.new("RGB", (2 * side, 2 * side), "white")
        for quarter, tile in enumerate(tiles):
            canvas.paste(tile, ((quarter % 2) * side, (quarter // 2) * side))
        out.append((canvas, four))
    return out


def quarter_of(relevance: np.ndarray) -> int:
    """The row-major quarter (0..3) of a map's maximum."""
    x, y = peak(relevance)
    return int(y >= relevance.shape[0] / 2) * 2 + int(x >= relevance.shape[1] / 2)


def play(embedders: dict[str, Embedder], data: EmojiSet, games: Sequence[Game]) -> tuple[list[PointingRow], Maps]:
    """Hit rates per language, model and zoom, and every map (for the picture), keyed the same way.

    The image side of a map does not depend on the text, so each model reads each composite once per zoom and
    scores the names of all languages against it."""
    pictures = [np.asarray(image) for image, _ in games]
    found: Maps = {}
    for method, embedder in embedders.items():
        names = [data.names[c][lang] for lang in LANGUAGES for _, four in games for c in four]
        targets = embedder.embed_texts(names).view(len(LANGUAGES), len(games), 4, -1)  # (languages, composites, 4, dim)
        targets = targets.transpose(0, 1).flatten(1, 2)  # (composites, languages * 4, dim)
        for zoom in ZOOMS:
            every = embedder.relevance_maps(pictures, targets, zoom=zoom)  # each (languages * 4, height, width)
            for i, lang in enumerate(LANGUAGES):
                found[lang, method, zoom] = [m[4 * i : 4 * i + 4] for m in every]
    rows = []
    for lang in LANGUAGES:
        for method in embedders:
            for zoom in ZOOMS:
                hits = sum(quarter_of(m[q]) == q for m in found[lang, method, zoom] for q in range(4))
                rows.append(PointingRow(LANGUAGES[lang], method, zoom, hits, 4 * len(games)))
    return rows, found


def pointing_table(rows: Sequence[PointingRow]) -> str:
    """Languages down, (model, zoom) across: hit rate %."""
    columns = list(dict.fromkeys((r.method, r.zoom) for r in rows))
    by_key = {(r.language, r.method, r.zoom): r for r in rows}
    headers = ["Language"] + [f"{method} zoom {zoom}" for method, zoom in columns]
    body = [
        [language] + [f"{by_key[language, m, z].rate:.1f}" for m, z in columns]
        for language in dict.fromkeys(r.language for r in rows)
    ]
    return format_table(headers, body)


def draw_examples(data: EmojiSet, games: Sequence[Game], maps: Maps, path: Path) -> None:
    """A PNG grid: per example composite and zoom, a row of maps for one of its emoji, in several languages (and
    the teacher's English first), each captioned with hit or miss and the query."""
    columns = [("en", "CLIP")] + [(lang, "AltCLIP") for lang in GRID_LANGUAGES]
    rows = []
    for example, (image, four) in enumerate(games):
        quarter = example % 4
        for zoom in ZOOMS:
            cells = []
            for lang, method in columns:
                relevance = maps[lang, method, zoom][example][quarter]
                mark = "hit" if quarter_of(relevance) == quarter else "miss"
                caption = f"{mark} {method} x{zoom}: {data.names[four[quarter]][lang]}"[:30]
                cells.append(captioned(overlay(np.asarray(image), relevance), caption, min_side=192))
            rows.append(cells)
    width, height = rows[0][0].size
    sheet = Image.new("RGB", (width * len(columns), height * len(rows)), "white")
    for r, cells in enumerate(rows):
        for c, cell in enumerate(cells):
            sheet.paste(cell, (c * width, r * height))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def write_pointing_report(
    rows: Sequence[PointingRow], maps: Maps, games: Sequence[Game], data: EmojiSet, folder: Path, examples: int = 3
) -> dict[str, Path]:
    """``pointing.json``, ``pointing.txt`` and ``pointing.png`` (the first ``examples`` games drawn) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "pointing.json", "text": folder / "pointing.txt", "grid": folder / "pointing.png"}
    body = json.dumps([row.to_json() for row in rows], indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(paths["json"], body.encode("utf-8"))
    atomic_write_bytes(paths["text"], (pointing_table(rows) + "\n").encode("utf-8"))
    draw_examples(data, games[:examples], maps, paths["grid"])
    return paths
