"""int8: the kernel against a naive reference, layers quantized while loading, close to float32, CPU only."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn

from altclip.modeling import models, quantize, weights
from altclip.modeling.models import AltCLIPModel
from altclip.modeling.quantize import Int8Linear, int8_linear, quantize_rows, quantize_weight
from altclip.runtime.loading import load_pretrained
from altclip.tasks import Embedder

TEXTS = ["a photo of a cat", "一张狗的照片", "猫の写真", "고양이", "una foto de un perro en el parque"]


def naive_int8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Quantize each row of x and of the weight by hand, multiply the integers in float64, rescale."""
    rows = []
    for row in x.double():
        x_scale = row.abs().max().clamp(min=1e-12) / 127
        x_int = torch.clamp(torch.round(row / x_scale), -127, 127)
        out = []
        for w in weight.double():
            w_scale = w.abs().max().clamp(min=1e-12) / 127
            w_int = torch.clamp(torch.round(w / w_scale), -127, 127)
            out.append((x_int * w_int).sum() * x_scale * w_scale)
        rows.append(torch.stack(out))
    y = torch.stack(rows)
    return (y if bias is None else y + bias.double()).float()


@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_equals_the_naive_reference(bias):
    torch.manual_seed(0)
    linear = nn.Linear(24, 13, bias=bias)
    x = torch.randn(7, 24) * torch.linspace(0.1, 10, 7)[:, None]  # rows of very different ranges
    x[3] = 0  # an all-zero token
    weight, scale = quantize_weight(linear.weight.detach())
    ours = int8_linear(x, weight, scale[None], linear.bias)
    torch.testing.assert_close(ours, naive_int8_linear(x, linear.weight.detach(), linear.bias), atol=1e-4, rtol=1e-5)
    layer = Int8Linear.from_linear(linear)
    torch.testing.assert_close(layer(x.view(7, 1, 24)).view(7, 13), ours, atol=1e-5, rtol=1e-5)
    assert (linear(x) - ours).abs().max() < 0.05 * linear(x).abs().max()


def test_quantize_rows_round_trips_within_half_a_step():
    x = torch.randn(5, 64)
    values, scale = quantize_rows(x)
    assert values.dtype == torch.int8 and values.abs().max() == 127
    assert ((values.float() * scale - x).abs() <= scale / 2 + 1e-6).all()


def test_eager_fallback_where_compile_fails(monkeypatch):
    def broken(*args, **kwargs):
        def fails(*a, **k):
            raise RuntimeError("no C++ compiler")

        return fails

    monkeypatch.setattr(quantize, "_kernel", None)
    monkeypatch.setattr(torch, "compile", broken)
    assert quantize.kernel() == (int8_linear, True)
    monkeypatch.setattr(quantize, "_kernel", None)  # the next test chooses for itself


def test_float_products_where_int_mm_is_not_exact(monkeypatch):
    """oneDNN without VNNI sums int8 pairs into saturating int16: caught once, then multiplied in float32."""
    real_int_mm = torch._int_mm

    def saturating(a, b):
        return real_int_mm(a, b).clamp(-(2**15), 2**15 - 1)

    monkeypatch.setattr(quantize, "_kernel", None)
    monkeypatch.setattr(torch, "_int_mm", saturating)
    assert not quantize.int_mm_is_exact()
    matmul, int_mm = quantize.kernel()
    assert not int_mm
    torch.manual_seed(0)
    linear = nn.Linear(300, 11)
    x = torch.randn(5, 300) * 3
    weight, scale = quantize_weight(linear.weight.detach())
    ours = matmul(x, weight, scale[None], linear.bias)
    torch.testing.assert_close(ours, naive_int8_linear(x, linear.weight.detach(), linear.bias), atol=1e-4, rtol=1e-5)
    assert not torch.allclose(int8_linear(x, weight, scale[None], linear.bias), ours, atol=1e-2)  # saturated
    monkeypatch.setattr(quantize, "_kernel", None)


def test_int8_embeddings_stay_close_to_float32(altclip_checkpoint, image_folder):
    fp32 = Embedder.from_pretrained(altclip_checkpoint)
    int8 = Embedder.from_pretrained(altclip_checkpoint, precision="int8")
    linears = [m for m in int8.model.modules() if isinstance(m, nn.Linear | Int8Linear)]
    assert linears and all(isinstance(m, Int8Linear) and m.weight.dtype == torch.int8 for m in linears)
    assert not any(type(m).__module__.startswith("torch.ao") for m in int8.model.modules())
    paths = sorted(image_folder.glob("img*"))[:6]
    for a, b in (
        (fp32.embed_texts(TEXTS), int8.embed_texts(TEXTS)),
        (fp32.embed_images(paths), int8.embed_images(paths)),
    ):
        cosine = (a * b).sum(-1)
        assert cosine.min() > 0.99, cosine
        assert not torch.equal(a, b)  # it really is another computation


def test_int8_quantizes_while_loading(monkeypatch, altclip_checkpoint):
    """No two float32 Linear weights are alive at once while an int8 model loads: each is quantized as read."""
    alive: list[weakref.ref] = []
    most = 0
    linear_weights = {
        f"{name}.weight"
        for name, m in AltCLIPModel.from_pretrained(altclip_checkpoint).named_modules()
        if isinstance(m, nn.Linear)
    }
    original = weights.iter_weights

    def watched(path):
        nonlocal most
        for name, tensor in original(path):
            alive[:] = [r for r in alive if r() is not None]
            most = max(most, len(alive))
            if name in linear_weights:
                alive.append(weakref.ref(tensor))
            yield name, tensor

    monkeypatch.setattr(models, "iter_weights", watched)
    monkeypatch.setattr(weights, "load_state_dict", lambda paths: pytest.fail("read the whole checkpoint"))
    model = AltCLIPModel.from_pretrained(altclip_checkpoint, precision="int8")
    assert len(linear_weights) > 10 and most <= 1  # the one just yielded, at most
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == len(linear_weights)


def test_int8_is_cpu_only_and_not_saved(altclip_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="int8 runs on the CPU"):
        load_pretrained(altclip_checkpoint, precision="int8", device="meta")
    model = AltCLIPModel.from_pretrained(altclip_checkpoint, precision="int8")
    with pytest.raises(ValueError, match="int8 model cannot be saved"):
        model.save_pretrained(tmp_path / "int8")
