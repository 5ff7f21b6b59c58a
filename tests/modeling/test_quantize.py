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


def naive_int8_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seven_bit: bool = False
) -> torch.Tensor:
    """Quantize each row of x and of the weight by hand, multiply the integers in float64, rescale.
    ``seven_bit``: the int8 weight then brought to ±63 (``int_mm7``)."""
    rows = []
    for row in x.double():
        x_scale = row.abs().max().clamp(min=1e-12) / 127
        x_int = torch.clamp(torch.round(row / x_scale), -127, 127)
        out = []
        for w in weight.double():
            w_scale = w.abs().max().clamp(min=1e-12) / 127
            w_int = torch.clamp(torch.round(w / w_scale), -127, 127)
            if seven_bit:
                w_int, w_scale = torch.round(w_int * 63 / 127), w_scale * 127 / 63
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


SHAPES = {(48, 40): 3, (40, 48): 1}


@pytest.fixture
def fresh_choice(monkeypatch, tmp_path):
    """An empty user cache and no choice made yet in this process."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(quantize, "_choices", {})


@pytest.mark.parametrize("kernel", quantize.KERNELS)
def test_every_kernel_that_runs_here_is_checked_against_the_naive_reference(kernel, fresh_choice):
    """Our scheme's kernels must equal the naive reference where they are correct here; fbgemm (its own scheme)
    must stay close to float32; the choice records which passed."""
    float32, timings = quantize.measure(SHAPES)
    torch.manual_seed(0)
    linear = nn.Linear(48, 40)
    x = torch.randn(9, 48) * torch.linspace(0.1, 10, 9)[:, None]
    layer = Int8Linear.from_linear(linear)
    if not timings[kernel].correct:
        assert timings[kernel].problem and timings[kernel].seconds is None
        return
    ours = quantize.run_kernel(kernel, x, layer)
    if kernel.startswith("fbgemm"):
        assert nn.functional.cosine_similarity(ours, linear(x)).min() > 0.99
    else:
        naive = naive_int8_linear(x, linear.weight.detach(), linear.bias, seven_bit=kernel == "int_mm7")
        torch.testing.assert_close(ours, naive, atol=1e-4, rtol=1e-5)
    assert timings[kernel].seconds > 0 and float32 > 0


def fake_timings(**seconds: float | None) -> dict[str, quantize.KernelTiming]:
    return {
        name: quantize.KernelTiming(t, t is not None, None if t is not None else "refused")
        for name, t in seconds.items()
    }


def test_the_choice_follows_its_own_timings(monkeypatch, fresh_choice, caplog):
    """The fastest correct candidate, whatever it is; a refused one never, however fast it would be. Loading
    says so where int8 falls below 2x float32, and below 1x."""
    timings = fake_timings(int_mm=0.3, float=0.1, fbgemm=None)
    for float32, warning in [(0.25, None), (0.125, "int8 runs only 1.25x float32"), (0.05, "slower than float32")]:
        monkeypatch.setattr(quantize, "_choices", {})
        monkeypatch.setattr(quantize, "machine", lambda float32=float32: {"cpu": f"a CPU at {float32}"})
        monkeypatch.setattr(quantize, "measure", lambda shapes, float32=float32: (float32, timings))
        caplog.clear()
        with caplog.at_level("WARNING", logger="altclip.modeling.quantize"):
            choice = quantize.choose_kernel(SHAPES)
        fastest = min((n for n, t in choice.timings.items() if t.correct), key=lambda n: choice.timings[n].seconds)
        assert choice.kernel == "float" == fastest
        assert choice.speedup == pytest.approx(float32 / 0.1)
        assert (warning in caplog.text) if warning else not caplog.text


def test_the_choice_is_kept_per_machine_in_the_user_cache(monkeypatch, fresh_choice, tmp_path):
    measured = []
    monkeypatch.setattr(quantize, "measure", lambda shapes: measured.append(shapes) or (1.0, fake_timings(float=0.5)))
    first = quantize.choose_kernel(SHAPES)
    assert quantize.cache_path().is_relative_to(tmp_path / "cache") and quantize.cache_path().is_file()
    monkeypatch.setattr(quantize, "_choices", {})  # a new process, as it were
    again = quantize.choose_kernel(SHAPES)
    assert len(measured) == 1 and again.cached and not first.cached
    assert again.to_json() | {"cached": False} == first.to_json()
    monkeypatch.setattr(quantize, "_choices", {})
    here = quantize.machine()
    monkeypatch.setattr(quantize, "machine", lambda: {**here, "torch": "another version"})
    quantize.choose_kernel(SHAPES)
    assert len(measured) == 2  # another machine or version: measured again


def onednn_avx2_int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """oneDNN's int8 product on a CPU without VNNI, by hand: a + 128 (unsigned) times b, each pair of products
    summed into a saturating int16, the pairs summed in int32, the 128 taken off again."""
    shifted = a.int() + 128  # (m, k)
    pairs = shifted[:, 0::2, None] * b[None, 0::2].int() + shifted[:, 1::2, None] * b[None, 1::2].int()  # (m, k/2, n)
    return pairs.clamp(-(2**15), 2**15 - 1).sum(1) - 128 * b.int().sum(0)


def test_a_saturating_int_mm_is_refused_and_seven_bit_weights_stay_exact(monkeypatch, fresh_choice):
    """oneDNN without VNNI sums int8 pairs into saturating int16: caught on the probe, never run; with weights of
    ±63 the pair sums stay below 2^15, and int_mm7 is exact there."""
    monkeypatch.setattr(torch, "_int_mm", onednn_avx2_int_mm)
    choice = quantize.choose_kernel({(300, 11): 1})
    assert "saturating" in choice.timings["int_mm"].problem
    assert choice.timings["int_mm7"].correct and choice.kernel != "int_mm"
    assert choice.timings[choice.kernel].correct


def test_fbgemm_split_keeps_outlier_channels_exact():
    """Per-batch 7-bit activations lose the ordinary channels beside an outlier one; fbgemm_split multiplies the
    outliers in float32 and scales each token first, and stays close to float32 where fbgemm alone does not."""
    torch.manual_seed(0)
    linear = nn.Linear(256, 64)
    x = torch.randn(33, 256)
    x[:, :3] *= 60  # CLIP-like outlier channels
    x[5] *= 0.01  # a token of a much smaller range
    layer, reference = Int8Linear.from_linear(linear), linear(x).detach()
    try:
        plain = quantize.run_kernel("fbgemm", x, layer)
    except RuntimeError as err:  # a torch built without fbgemm
        pytest.skip(f"fbgemm is not in this torch: {err}")
    split = quantize.run_kernel("fbgemm_split", x, layer)
    cosine = nn.functional.cosine_similarity
    assert cosine(split, reference).min() > 0.999 > cosine(plain, reference).min()


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
