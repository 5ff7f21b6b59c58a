"""The demo's data: Noto Color Emoji images named in 14 languages by the CLDR names the `emoji` package ships.

Each fully-qualified emoji the font draws becomes one small PNG. Its names (English, Chinese, Japanese,
Korean, Arabic, Russian, French, German, Spanish, Italian, Portuguese, Persian, Indonesian, Turkish) are
its captions. Emoji, not captions, are split into train and test with a fixed seed, so no test image or
any of its names is seen in training. For tuning, ``holdout="validation"`` carves a validation split out of the
training emoji and leaves the test emoji out altogether, so choices are made without looking at the test set.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from altclip.errors import InputError, MissingFileError
from altclip.files import atomic_write_bytes

LANGUAGES = {
    "en": "English",
    "zh": "Chinese",
    "ja": "Japanese",
    "ko": "Korean",
    "ar": "Arabic",
    "ru": "Russian",
    "fr": "French",
    "de": "German",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "fa": "Persian",
    "id": "Indonesian",
    "tr": "Turkish",
}
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
    "/usr/local/share/fonts/NotoColorEmoji.ttf",
    "/System/Library/Fonts/Apple Color Emoji.ttc",
)
FONT_HELP = (
    "the demo draws its images with the Noto Color Emoji font, which was not found. Install it "
    "(Debian/Ubuntu: `sudo apt-get install fonts-noto-color-emoji`; Fedora: `sudo dnf install "
    "google-noto-emoji-color-fonts`; Arch: `sudo pacman -S noto-fonts-emoji`; or download NotoColorEmoji.ttf "
    "from github.com/googlefonts/noto-emoji) and pass its path with --font if it is elsewhere"
)
LANGUAGE_CODES = {name: code for code, name in LANGUAGES.items()}  # "English" -> "en"
HOLDOUTS = ("test", "validation")
BITMAP_SIZE = 109  # the one size Noto's colour bitmaps come in


def find_font(path: str | Path | None = None) -> Path:
    for candidate in [path] if path else FONT_CANDIDATES:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise MissingFileError(f"{path}: no such font file" if path else FONT_HELP)


def emoji_table() -> dict[str, dict[str, Any]]:
    """The ``emoji`` package's table of emoji, with the names of every language loaded."""
    import emoji

    emoji.config.load_language()
    return emoji.EMOJI_DATA


def plain_names(entry: dict[str, Any]) -> dict[str, str]:
    """An emoji's names in the 14 languages as plain words (":flagge_kanada:" -> "flagge kanada")."""
    return {lang: entry[lang].strip(":").replace("_", " ") for lang in LANGUAGES}


def cldr_names() -> dict[str, dict[str, str]]:
    """Fully-qualified emoji -> {language: name}, for the 14 languages (names as plain words)."""
    import emoji

    fully_qualified = emoji.STATUS["fully_qualified"]
    return {
        char: plain_names(entry)
        for char, entry in emoji_table().items()
        if entry.get("status") == fully_qualified and all(lang in entry for lang in LANGUAGES)
    }


def render(char: str, font: ImageFont.FreeTypeFont, size: int) -> Image.Image | None:
    """The emoji on white, ``size`` pixels square; None when the font has no colour glyph for it."""
    canvas = Image.new("RGBA", (BITMAP_SIZE * 2, BITMAP_SIZE * 2), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((BITMAP_SIZE // 2, BITMAP_SIZE // 2), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    colours = glyph.convert("RGB").getcolors(maxcolors=64)
    if colours is not None and len(colours) <= 2:  # a blank or one-colour box: the font has no real glyph
        return None
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


@dataclass
class EmojiSet:
    folder: Path
    train: list[str]  # emoji
    test: list[str]
    names: dict[str, dict[str, str]]

    def image_name(self, char: str) -> str:
        """The image's path inside the data folder (what the data files hold, so the folder can move)."""
        return "images/" + "-".join(f"{ord(c):x}" for c in char) + ".png"

    def image(self, char: str) -> str:
        return str(self.folder / self.image_name(char))

    def lower_case_languages(self) -> set[str]:
        """The languages in which every name is in lower case (as are all names of a language without case); none
        when the set holds no names."""
        names = self.names.values()
        return {lang for lang in LANGUAGES if names and all(n[lang] == n[lang].lower() for n in names)}


def build(
    folder: str | Path,
    font: str | Path | None = None,
    size: int = 32,
    test_fraction: float = 0.15,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
    holdout: str = "test",
) -> EmojiSet:
    """Render the images and write the data files (reused when ``folder`` already holds them).

    ``holdout``: "test" holds out ``test_fraction`` of the emoji; "validation" drops those test emoji and holds
    out ``test_fraction`` of the remaining training emoji instead (the returned ``test`` is then that split).

    Files: ``images/*.png``; ``teacher_pairs.jsonl`` (train images, English names), ``parallel.tsv`` (train
    names, English -> each other language), ``pairs.jsonl`` (train images, names in every language) and
    ``test.jsonl`` (test images, names in every language).
    """
    folder = Path(folder).resolve()
    if holdout not in HOLDOUTS:
        raise InputError(f"holdout must be one of {HOLDOUTS}, not {holdout!r}")
    done = folder / "split.json"
    if done.is_file():
        split = json.loads(done.read_text(encoding="utf-8"))
        if split.get("holdout", "test") != holdout:
            raise InputError(f"{folder} holds a {split.get('holdout', 'test')} split, not a {holdout} one")
        return EmojiSet(folder, split["train"], split["test"], split["names"])
    font_path = find_font(font)
    typeface = ImageFont.truetype(str(font_path), BITMAP_SIZE)
    names = cldr_names()
    chars = sorted(names)
    if limit:
        chars = random.Random(seed).sample(chars, min(limit, len(chars)))
    shutil.rmtree(folder / "images", ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    drawn = []
    staging = EmojiSet(folder, [], [], names)
    for char in tqdm(chars, desc="rendering emoji", unit="emoji", disable=not progress, dynamic_ncols=True):
        image = render(char, typeface, size)
        if image is not None:
            image.save(staging.image(char))
            drawn.append(char)
    order = sorted(drawn)
    random.Random(seed).shuffle(order)
    cut = int(len(order) * test_fraction)
    if holdout == "validation":  # the test emoji leave; the validation emoji come out of training
        for char in order[:cut]:
            Path(staging.image(char)).unlink()
        order = order[cut:]
        cut = int(len(order) * test_fraction)
    data = EmojiSet(folder, sorted(order[cut:]), sorted(order[:cut]), {c: names[c] for c in order})
    _write_files(data)
    split = {
        "train": data.train,
        "test": data.test,
        "names": data.names,
        "font": str(font_path),
        "size": size,
        "seed": seed,
        "holdout": holdout,
    }
    atomic_write_bytes(done, json.dumps(split, ensure_ascii=False).encode("utf-8"))
    return data


def _jsonl(path: Path, records: list[dict[str, str]]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_bytes(path, text.encode("utf-8"))


def _write_files(data: EmojiSet) -> None:
    def pairs(chars: list[str], langs: list[str]) -> list[dict[str, str]]:
        return [
            {"image": data.image_name(c), "caption": data.names[c][lang], "lang": lang} for c in chars for lang in langs
        ]

    _jsonl(data.folder / "teacher_pairs.jsonl", pairs(data.train, ["en"]))
    _jsonl(data.folder / "pairs.jsonl", pairs(data.train, list(LANGUAGES)))
    _jsonl(data.folder / "test.jsonl", pairs(data.test, list(LANGUAGES)))
    write_parallel(data.folder / "parallel.tsv", [data.names[c] for c in data.train])


def write_parallel(path: Path, items: list[dict[str, str]]) -> None:
    """Phase 1's TSV: each item's English text beside its text in each other language it has."""
    others = [lang for lang in LANGUAGES if lang != "en"]
    lines = ["src\ttgt\tlang"] + [
        f"{item['en']}\t{item[lang]}\t{lang}" for item in items for lang in others if lang in item
    ]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
