"""The demo's second task: zero-shot classification of flag emoji among all the flags, in 14 languages.

Like the paper's multilingual ImageNet tables, but on what the demo has: each flag image is classified among
every flag the font draws, by country name. The class names do not come from the training captions (the
``emoji`` package's CLDR emoji names) but from CLDR's territory names as Babel ships them, placed in templates
written here for each language ("the flag of {}", "{}的国旗", ...). Scores are reported apart for the flags
whose images were trained on (under their emoji names) and for the held-out flags, which no model has seen:
a country's flag cannot be guessed from its name, so the held-out flags measure how close to chance (about 0.4%
top-1 among some 250 flags) the models stay, and the training flags measure the transfer of names the models
never read, in templates they never read, to every language.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from altclip.demo.data import LANGUAGES, EmojiSet
from altclip.embedder import Embedder
from altclip.evaluate.zeroshot import ZeroShotScores, score_classes
from altclip.files import atomic_write_bytes
from altclip.tables import format_table

REGIONAL_A = 0x1F1E6
FLAG_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": ("the flag of {}.", "a flag of {}.", "{} flag."),
    "zh": ("{}的国旗。", "{}国旗。", "{}的旗帜。"),
    "ja": ("{}の国旗。", "{}の旗。"),
    "ko": ("{}의 국기.", "{} 국기."),
    "ar": ("علم {}.", "العلم الوطني: {}."),
    "ru": ("флаг: {}.", "государственный флаг: {}."),
    "fr": ("drapeau : {}.", "drapeau national : {}."),
    "de": ("die Flagge von {}.", "Flagge: {}."),
    "es": ("la bandera de {}.", "bandera: {}."),
    "it": ("bandiera: {}.", "bandiera nazionale: {}."),
    "pt": ("a bandeira: {}.", "bandeira de {}."),
    "fa": ("پرچم {}.", "پرچم کشور {}."),
    "id": ("bendera {}.", "bendera negara {}."),
    "tr": ("{} bayrağı.", "bayrak: {}."),
}


def flag_code(char: str) -> str | None:
    """The ISO 3166 region of a flag emoji (two regional indicator letters), or None."""
    if len(char) != 2 or not all(REGIONAL_A <= ord(c) < REGIONAL_A + 26 for c in char):
        return None
    return "".join(chr(ord(c) - REGIONAL_A + ord("A")) for c in char)


def flag_names(chars: Sequence[str]) -> dict[str, dict[str, str]]:
    """Flag emoji among ``chars`` -> {language: the region's CLDR name}, for regions Babel names in all 14."""
    from babel import Locale

    locales = {lang: Locale.parse(lang) for lang in LANGUAGES}
    names = {}
    for char in chars:
        code = flag_code(char)
        if code and all(code in locales[lang].territories for lang in LANGUAGES):
            names[char] = {lang: locales[lang].territories[code] for lang in LANGUAGES}
    return names


@dataclass
class FlagRow:
    language: str
    method: str
    seen: ZeroShotScores  # the flags whose images were trained on
    held_out: ZeroShotScores

    def cells(self) -> list[str]:
        return [
            self.language,
            self.method,
            f"{self.seen.top1:.1f}",
            f"{self.seen.top5:.1f}",
            f"{self.held_out.top1:.1f}",
            f"{self.held_out.top5:.1f}",
        ]

    def to_json(self) -> dict[str, Any]:
        keep = ("top1", "top5", "images")
        return {
            "language": self.language,
            "method": self.method,
            "training_flags": {k: getattr(self.seen, k) for k in keep},
            "held_out_flags": {k: getattr(self.held_out, k) for k in keep},
        }


HEADERS = ["Language", "Method", "trained top-1", "trained top-5", "held-out top-1", "held-out top-5"]


def evaluate_flags(embedders: dict[str, Embedder], data: EmojiSet) -> list[FlagRow]:
    """Every flag image classified among all flags, per language, for each model; [] when the data holds no
    flag on one side of the split (a small ``--limit`` run)."""
    names = flag_names(data.train + data.test)
    classes = sorted(names)
    held_out = set(data.test)
    labels = torch.arange(len(classes))
    test_rows = torch.tensor([c in held_out for c in classes])
    if not test_rows.any() or test_rows.all():
        return []  # a small --limit run may draw no flag on one side
    images = {method: embedder.embed_images([data.image(c) for c in classes]) for method, embedder in embedders.items()}
    rows = []
    for lang in LANGUAGES:
        class_names = [names[c][lang] for c in classes]
        keys = [f"{c} {name}" for c, name in zip(classes, class_names, strict=True)]
        for method, embedder in embedders.items():
            vectors = embedder.class_embeddings(class_names, FLAG_TEMPLATES[lang])  # (flags, dim)
            seen = score_classes(images[method][~test_rows], labels[~test_rows], vectors, keys)
            unseen = score_classes(images[method][test_rows], labels[test_rows], vectors, keys)
            rows.append(FlagRow(LANGUAGES[lang], method, seen, unseen))
    return rows


def flags_table(rows: Sequence[FlagRow]) -> str:
    return format_table(HEADERS, [row.cells() for row in rows])


def write_flags_report(rows: Sequence[FlagRow], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "zeroshot.json", "text": folder / "zeroshot.txt"}
    data = json.dumps([row.to_json() for row in rows], indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(paths["json"], data.encode("utf-8"))
    atomic_write_bytes(paths["text"], (flags_table(rows) + "\n").encode("utf-8"))
    return paths
