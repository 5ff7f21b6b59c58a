"""int8 dynamic quantization: close to float32, CPU only."""

from __future__ import annotations

import pytest
import torch

from altclip.quantize import quantize_int8
from altclip.tasks import Embedder

TEXTS = ["a photo of a cat", "一张狗的照片", "猫の写真", "고양이", "una foto de un perro en el parque"]


def test_int8_embeddings_stay_close_to_float32(altclip_checkpoint, image_folder):
    fp32 = Embedder.from_pretrained(altclip_checkpoint)
    int8 = Embedder.from_pretrained(altclip_checkpoint, dtype="int8")
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in int8.model.modules())
    paths = sorted(image_folder.glob("img*"))[:6]
    for a, b in (
        (fp32.embed_texts(TEXTS), int8.embed_texts(TEXTS)),
        (fp32.embed_images(paths), int8.embed_images(paths)),
    ):
        cosine = (a * b).sum(-1)
        assert cosine.min() > 0.99, cosine
        assert not torch.equal(a, b)  # it really is another computation


def test_int8_is_cpu_only(altclip_checkpoint):
    model = Embedder.from_pretrained(altclip_checkpoint).model
    model.to("meta")
    with pytest.raises(ValueError, match="runs on the CPU"):
        quantize_int8(model)
