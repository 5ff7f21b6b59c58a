"""Relevance maps drawn for people: a heat colour scale, a translucent overlay on the image, a caption under it."""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from altclip.errors import InputError

# blue -> cyan -> green -> yellow -> red, evenly spaced over [0, 1]
HEAT = np.array([[0, 0, 160], [0, 190, 255], [40, 200, 60], [255, 220, 0], [220, 0, 0]], dtype=np.float32)
MIN_SIDE = 256  # small images are enlarged (nearest neighbour) to at least this width for a readable picture
CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/System/Library/Fonts/PingFang.ttc",
)
TEXT_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """(...) values in [0, 1] -> (..., 3) uint8 colours on the HEAT scale."""
    position = np.clip(values, 0.0, 1.0) * (len(HEAT) - 1)
    low = np.minimum(position.astype(int), len(HEAT) - 2)
    frac = (position - low)[..., None]
    return np.round(HEAT[low] * (1 - frac) + HEAT[low + 1] * frac).astype(np.uint8)


def overlay(image: np.ndarray, relevance: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """(H, W, 3) uint8 image and (H, W) map in [0, 1] -> the image under the map's colours at ``alpha``."""
    if image.shape[:2] != relevance.shape:
        raise InputError(f"the map is {relevance.shape} but the image is {image.shape[:2]}")
    blended = image.astype(np.float32) * (1 - alpha) + heat_colours(relevance).astype(np.float32) * alpha
    return Image.fromarray(np.round(blended).astype(np.uint8))


def _is_cjk(char: str) -> bool:
    name = unicodedata.name(char, "")
    return any(word in name for word in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "IDEOGRAPH"))


@cache
def caption_font(cjk: bool, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font for Chinese, Japanese and Korean, or one for Latin, Cyrillic, Greek and Arabic; Pillow's own if the
    system has neither."""
    for path in CJK_FONTS + TEXT_FONTS if cjk else TEXT_FONTS + CJK_FONTS:
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


def captioned(picture: Image.Image, caption: str, min_side: int = MIN_SIDE) -> Image.Image:
    """The picture, enlarged to at least ``min_side`` wide, with ``caption`` in a white band under it."""
    if picture.width < min_side:
        factor = -(-min_side // picture.width)
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    size = max(12, picture.width // 16)
    font = caption_font(any(_is_cjk(c) for c in caption), size)
    band = int(size * 1.8)
    page = Image.new("RGB", (picture.width, picture.height + band), "white")
    page.paste(picture.convert("RGB"), (0, 0))
    ImageDraw.Draw(page).text((size // 2, picture.height + band // 2), caption, fill="black", font=font, anchor="lm")
    return page


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe form of a text (letters of any script kept): "a red ball!" -> "a-red-ball"."""
    return re.sub(r"[^\w]+", "-", text, flags=re.UNICODE).strip("-")[:limit] or "text"
