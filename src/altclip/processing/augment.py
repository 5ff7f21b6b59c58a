"""Image augmentation for fine-tuning, in Pillow and NumPy: random resized crop, colour jitter and (off by
default, since text in images reads backwards) horizontal flip. Training alone augments: evaluation and
embedding never do.

Each image's draw comes from its own generator, seeded by (run seed, epoch, sample index): the same sample is
augmented the same way in the same epoch whoever loads it and whenever, so a resumed run is exact, and
differently in each epoch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from altclip.errors import InputError

CROP_TRIES = 10  # draws of a box before the centre crop is taken (torchvision's RandomResizedCrop does the same)


@dataclass(frozen=True)
class Augment:
    scale: tuple[float, float] = (0.6, 1.0)  # the crop's share of the image's area
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # the crop's width / height
    flip: bool = False  # horizontal flip, half the time
    brightness: float = 0.2  # each factor drawn from [1 - x, 1 + x]
    contrast: float = 0.2
    saturation: float = 0.2

    def __post_init__(self) -> None:
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise InputError(f"augmentation scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise InputError(f"augmentation ratio must satisfy 0 < low <= high, got {self.ratio}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise InputError(f"augmentation {name} must be in [0, 1), got {getattr(self, name)}")

    def __call__(self, image: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
        """``image`` (RGB) cropped at random and resized to ``size`` (height, width), maybe flipped, jittered."""
        left, top, width, height = self.crop_box(image.width, image.height, rng)
        image = image.resize((size[1], size[0]), Image.Resampling.BICUBIC, box=(left, top, left + width, top + height))
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for amount, enhancer in (
            (self.brightness, ImageEnhance.Brightness),
            (self.contrast, ImageEnhance.Contrast),
            (self.saturation, ImageEnhance.Color),
        ):
            factor = rng.uniform(1 - amount, 1 + amount)
            if amount:
                image = enhancer(image).enhance(factor)
        return image

    def crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(left, top, width, height) of a box of ``scale`` of the area and ``ratio`` of shape, at random;
        the largest centred box of an allowed shape when ``CROP_TRIES`` draws do not fit."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(CROP_TRIES):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
        aspect = min(max(width / height, self.ratio[0]), self.ratio[1])
        w, h = (width, round(width / aspect)) if width / height < aspect else (round(height * aspect), height)
        w, h = min(w, width), min(h, height)
        return (width - w) // 2, (height - h) // 2, w, h

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation in one epoch."""
    return np.random.default_rng([seed, epoch, index])
