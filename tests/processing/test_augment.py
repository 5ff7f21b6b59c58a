"""Training augmentation: seeded per sample and epoch, crops within the stated share and shape, no flip unless
asked, and the identity when every range is empty."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from altclip.processing.augment import Augment, sample_rng


def asymmetric(width: int = 60, height: int = 40) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8))


def test_the_draw_depends_on_seed_epoch_and_sample_alone():
    augment, image = Augment(), asymmetric()
    first = np.asarray(augment(image, (24, 24), sample_rng(0, 1, 7)))
    assert first.shape == (24, 24, 3)
    assert np.array_equal(first, np.asarray(augment(image, (24, 24), sample_rng(0, 1, 7))))
    for other in (sample_rng(0, 2, 7), sample_rng(0, 1, 8), sample_rng(1, 1, 7)):
        assert not np.array_equal(first, np.asarray(augment(image, (24, 24), other)))


def test_crops_keep_the_stated_share_and_shape():
    augment = Augment(scale=(0.3, 0.8), ratio=(0.5, 2.0))
    for i in range(200):
        left, top, w, h = augment.crop_box(300, 200, sample_rng(0, 0, i))
        assert left >= 0 and left + w <= 300 and top >= 0 and top + h <= 200
        assert 0.3 * 0.95 <= w * h / 60_000 <= 0.8 * 1.05 and 0.5 * 0.95 <= w / h <= 2.0 * 1.05
    wide = Augment(scale=(1.0, 1.0), ratio=(1.0, 1.0)).crop_box(300, 100, sample_rng(0, 0, 0))
    assert wide == (100, 0, 100, 100)  # no square of the whole area fits: the centred square


def test_no_flip_unless_asked_and_the_identity_when_ranges_are_empty():
    image = asymmetric(32, 32)
    plain = np.asarray(image.resize((16, 16), Image.Resampling.BICUBIC)).astype(int)
    still = Augment(scale=(1.0, 1.0), ratio=(1.0, 1.0), brightness=0, contrast=0, saturation=0)
    outputs = [np.asarray(still(image, (16, 16), sample_rng(0, 0, i))).astype(int) for i in range(10)]
    assert all(np.array_equal(o, plain) for o in outputs)
    flipping = Augment(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True, brightness=0, contrast=0, saturation=0)
    flips = [
        np.array_equal(np.asarray(flipping(image, (16, 16), sample_rng(0, 0, i))), plain[:, ::-1]) for i in range(20)
    ]
    assert 3 <= sum(flips) <= 17


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError, match="scale must satisfy"):
        Augment(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="brightness must be in"):
        Augment(brightness=1.5)
