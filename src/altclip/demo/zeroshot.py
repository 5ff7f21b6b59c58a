"""The demo's zero-shot tasks, in 14 languages: flags by country name, and people by skin tone.

Like the paper's multilingual ImageNet tables, but on what the demo has. In both tasks the class names are never
a training caption of their own, and the images are scored apart for the emoji whose images were trained on
(under their emoji names) and for the held-out emoji, which no model has seen:

- **flags**: each flag image among every flag the font draws, by its country's CLDR name as Babel ships it,
  placed in templates written here for each language ("the flag of {}", "{}的旗帜", ...). A country's flag cannot
  be guessed from its name, so the held-out flags measure how close to chance (about 0.4% top-1 among some 250
  flags) the models stay, and the trained flags measure the transfer of names to templates the models never
  read, in every language.
- **tones**: each emoji drawn with one skin tone among the five tones, by the tone's CLDR name (the names of the
  five modifier characters, which are never drawn on their own). Chance is 20%; the held-out emoji measure the
  transfer to images never seen.

Prompts are written in the case of the captions: in the languages whose emoji names the ``emoji`` package writes in
lower case, so are the class names and templates (``captions_case``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from altclip.demo.cldr import babel_locales
from altclip.demo.data import LANGUAGES, EmojiSet, emoji_table, plain_names
from altclip.embedder import Embedder
from altclip.evaluate.zeroshot import ZeroShotScores, score_classes
from altclip.files import atomic_write_bytes
from altclip.tables import format_table

REGIONAL_A = 0x1F1E6
SKIN_TONES = tuple(chr(c) for c in range(0x1F3FB, 0x1F400))  # light to dark (Fitzpatrick 1-2 to 6)
# Translations of the English templates with the word CLDR's own flag names use in each language ("flag", 旗, 깃발,
# Flagge, флаг, علم, drapeau, ...), never a "national flag" the English does not say; where a language would
# inflect the country's name (Russian, French, Italian), a colon keeps it in the form CLDR gives
FLAG_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": ("the flag of {}.", "a flag of {}.", "{} flag."),
    "zh": ("{}的旗帜。", "{}的旗。", "{}旗。"),
    "ja": ("{}の旗。",),
    "ko": ("{}의 깃발.", "{} 깃발."),
    "ar": ("علم {}.",),
    "ru": ("флаг: {}.",),
    "fr": ("drapeau : {}.",),
    "de": ("die Flagge von {}.", "Flagge: {}."),
    "es": ("la bandera de {}.", "bandera: {}."),
    "it": ("bandiera: {}.",),
    "pt": ("a bandeira: {}.", "bandeira de {}."),
    "fa": ("پرچم {}.",),
    "id": ("bendera {}.",),
    "tr": ("{} bayrağı.", "bayrak: {}."),
}


def flag_code(char: str) -> str | None:
    """The ISO 3166 region of a flag emoji (two regional indicator letters), or None."""
    if len(char) != 2 or not all(REGIONAL_A <= ord(c) < REGIONAL_A + 26 for c in char):
        return None
    return "".join(chr(ord(c) - REGIONAL_A + ord("A")) for c in char)


def flag_names(chars: Sequence[str]) -> dict[str, dict[str, str]]:
    """Flag emoji among ``chars`` -> {language: the region's CLDR name}, for regions Babel names in all 14."""
    locales = babel_locales()
    names = {}
    for char in chars:
        code = flag_code(char)
        if code and all(code in locales[lang].territories for lang in LANGUAGES):
            names[char] = {lang: locales[lang].territories[code] for lang in LANGUAGES}
    return names


def skin_tone(char: str) -> int | None:
    """Which of the five skin tones an emoji is drawn with (0 light to 4 dark), None for none or several."""
    found = {SKIN_TONES.index(c) for c in char if c in SKIN_TONES}
    return found.pop() if len(found) == 1 else None


def tone_names() -> list[dict[str, str]]:
    """The five tones' CLDR names ({language: name}), light to dark, from the ``emoji`` package."""
    table = emoji_table()
    return [plain_names(table[t]) for t in SKIN_TONES]


@dataclass
class Task:
    """A zero-shot task over the demo's emoji: the images it classifies, each one's class, and the classes'
    names and templates per language."""

    name: str
    images: list[str]  # emoji
    labels: list[int]  # each image's class
    classes: list[dict[str, str]]  # each class's name per language
    templates: dict[str, tuple[str, ...]]

    @property
    def chance(self) -> float:
        """Top-1 (%) of a guess among the classes."""
        return 100 / len(self.classes)


def captions_case(
    data: EmojiSet, classes: list[dict[str, str]], templates: dict[str, tuple[str, ...]]
) -> tuple[list[dict[str, str]], dict[str, tuple[str, ...]]]:
    """Class names and templates written as the data's captions are: in lower case in each language whose every
    emoji name is (the ``emoji`` package lowercases CLDR's names in several: "flagge kanada" for "Flagge: Kanada"),
    so that no language's prompts differ from its captions by a case they never had."""
    lower = data.lower_case_languages()

    def case(lang: str, text: str) -> str:
        return text.lower() if lang in lower else text

    return (
        [{lang: case(lang, name) for lang, name in names.items()} for names in classes],
        {lang: tuple(case(lang, t) for t in ts) for lang, ts in templates.items()},
    )


def flag_task(data: EmojiSet) -> Task:
    names = flag_names(data.train + data.test)
    chars = sorted(names)
    classes, templates = captions_case(data, [names[c] for c in chars], FLAG_TEMPLATES)
    return Task("flags", chars, list(range(len(chars))), classes, templates)


def tone_task(data: EmojiSet) -> Task:
    tones = {c: tone for c in data.train + data.test if (tone := skin_tone(c)) is not None}
    chars = sorted(tones)
    classes, templates = captions_case(data, tone_names(), {lang: ("{}",) for lang in LANGUAGES})
    return Task("tones", chars, [tones[c] for c in chars], classes, templates)


@dataclass
class ZeroShotRow:
    task: str
    language: str
    method: str
    chance: float
    seen: ZeroShotScores  # the emoji whose images were trained on
    held_out: ZeroShotScores

    def to_json(self) -> dict[str, Any]:
        keep = ("top1", "top5", "images")
        return {
            "task": self.task,
            "language": self.language,
            "method": self.method,
            "chance_top1": round(self.chance, 2),
            "trained": {k: getattr(self.seen, k) for k in keep},
            "held_out": {k: getattr(self.held_out, k) for k in keep},
        }


def evaluate_task(embedders: dict[str, Embedder], data: EmojiSet, task: Task) -> list[ZeroShotRow]:
    """Every image of the task classified among its classes, per language, for each model; [] when the data
    holds no image of the task on one side of the split (a small ``--limit`` run)."""
    test = set(data.test)
    held = torch.tensor([c in test for c in task.images], dtype=torch.bool)
    if not held.any() or held.all():
        return []
    labels = torch.tensor(task.labels)
    images = {m: embedder.embed_images([data.image(c) for c in task.images]) for m, embedder in embedders.items()}
    rows = []
    for lang in LANGUAGES:
        class_names = [names[lang] for names in task.classes]
        keys = [f"{i} {name}" for i, name in enumerate(class_names)]
        for method, embedder in embedders.items():
            vectors = embedder.class_embeddings(class_names, task.templates[lang])  # (classes, dim)
            seen = score_classes(images[method][~held], labels[~held], vectors, keys)
            unseen = score_classes(images[method][held], labels[held], vectors, keys)
            rows.append(ZeroShotRow(task.name, LANGUAGES[lang], method, task.chance, seen, unseen))
    return rows


def evaluate_zeroshot(embedders: dict[str, Embedder], data: EmojiSet) -> list[ZeroShotRow]:
    """Both tasks (see the module docstring)."""
    return [row for task in (flag_task(data), tone_task(data)) for row in evaluate_task(embedders, data, task)]


HEADERS = ["Task", "Language", "Method", "trained top-1", "trained top-5", "held-out top-1", "held-out top-5"]


def zeroshot_table(rows: Sequence[ZeroShotRow]) -> str:
    cells = []
    for r in rows:
        scores = (r.seen.top1, r.seen.top5, r.held_out.top1, r.held_out.top5)
        cells.append([f"{r.task} (chance {r.chance:.1f})", r.language, r.method, *(f"{s:.1f}" for s in scores)])
    return format_table(HEADERS, cells)


def write_zeroshot_report(rows: Sequence[ZeroShotRow], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "zeroshot.json", "text": folder / "zeroshot.txt"}
    data = json.dumps([row.to_json() for row in rows], indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(paths["json"], data.encode("utf-8"))
    atomic_write_bytes(paths["text"], (zeroshot_table(rows) + "\n").encode("utf-8"))
    return paths
