"""int8 inference on the CPU: every ``nn.Linear`` becomes an ``Int8Linear``.

Weights are int8 with one float32 scale per output row (symmetric, ``max|w| / 127``); activations are quantized
the same way per token, on the fly, and the integer product is brought back to float32 by both scales. The patch
convolution, the embeddings and the LayerNorms stay float32. Measured against float32 in
``benchmarks/accuracy.py``. This replaces ``torch.ao.quantization.quantize_dynamic`` (deprecated) and quantizes
while the checkpoint is read, one tensor at a time (``quantize_weight``), so the float32 weights are never all in
memory.

How the product runs is chosen by measurement, once per machine (``choose_kernel``): the candidates
(``run_kernel``) are checked on a probe with CLIP's outlier channels and timed on the model's own layer shapes,
beside float32; the fastest correct one runs. ``torch._int_mm`` is exact and fast with VNNI; oneDNN without VNNI
sums pairs of (int8 + 128) x int8 products into saturating int16, which 7-bit weights (±63) keep exact
(``int_mm7``), or it runs a slow reference path. fbgemm quantizes activations per batch in 7 bits, which outlier
channels ruin (``fbgemm``); ``fbgemm_split`` scales each token to the same range first and multiplies the outlier
channels in float32, as LLM.int8() does. The choice, with its timings, is kept in the user cache and shown by
``altclip doctor``; where even the fastest is below ``TARGET_SPEEDUP`` over float32, loading warns with the
figure. The int8 product is never handed to ``torch.compile``: Inductor's version of it (torch 2.13) was seen to
corrupt the heap at one row on AVX-512 and to give wrong values, even NaN, at AVX2.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import os
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from altclip.files import cpuinfo, write_json

logger = logging.getLogger(__name__)

INT8_MAX = 127


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per row: (int8 values, float32 scale of shape (rows, 1)) with ``values * scale ≈ x``."""
    scale = torch.linalg.vector_norm(x.float(), float("inf"), dim=-1, keepdim=True).clamp_(min=1e-12) / INT8_MAX
    return torch.div(x, scale).round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8), scale


def int8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Tensor | None, int_mm: bool = True) -> Tensor:
    """(tokens, in) float32 @ int8 (out, in) weight -> (tokens, out) float32; ``weight_scale`` is (1, out).

    ``int_mm``: the integer product by ``torch._int_mm``; False: the same integers multiplied in float32, for
    CPUs where ``torch._int_mm`` is not exact (see ``choose_kernel``)."""
    x_int8, x_scale = quantize_rows(x)  # (tokens, in), (tokens, 1)
    product = torch._int_mm(x_int8, weight.t()) if int_mm else x_int8.float() @ weight.float().t()  # (tokens, out)
    y = product.float().mul_(x_scale).mul_(weight_scale)  # in place: a (tokens, out) scale matrix costs 7x more
    return y if bias is None else y.add_(bias)


KERNELS = ("int_mm", "int_mm7", "float", "fbgemm", "fbgemm_split")
PROBE_ROWS = 256  # token rows each candidate is timed on: enough to rank, few enough that a slow kernel costs little
CHECK_ROWS = (1, 7, 37, PROBE_ROWS)  # row counts each candidate must be right at
MIN_PROBE_COSINE = 0.999  # a kernel with its own quantization (fbgemm) must stay this close to float32 on the probe
OUTLIER_RATIO = 6.0  # fbgemm_split: a channel whose largest value is this many times the median channel's
CHOICE_VERSION = 3  # of the cached record; a new one measures again
TARGET_SPEEDUP = 2.0  # what int8 should give over float32; below it, loading says so with the measured figure


def weight_int7(layer: Int8Linear) -> tuple[Tensor, Tensor]:
    """The layer's weight in 7 bits (±63) and its (1, out) scale, made once from the int8 one: with weights this
    small, oneDNN's int16 pair sums ((int8 + 128) x int8, twice) stay below 2^15 on CPUs without VNNI."""
    cached = getattr(layer, "_int7", None)
    if cached is None:
        half = INT8_MAX // 2  # 63
        weight = torch.round(layer.weight.float() * (half / INT8_MAX)).to(torch.int8)
        cached = layer._int7 = (weight, (layer.weight_scale * (INT8_MAX / half))[None])
    return cached


def fbgemm_packed(layer: Int8Linear, bias: bool = True) -> Any:
    """The layer's weight in fbgemm's packed layout (per-channel qint8, the same integers and scales), with or
    without its bias, made once."""
    packs = layer.__dict__.setdefault("_fbgemm", {})
    if bias not in packs:
        zero = torch.zeros(layer.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # torch deprecates its quantized tensors; this candidate goes with them
            warnings.simplefilter("ignore", UserWarning)
            weight = torch._make_per_channel_quantized_tensor(layer.weight, layer.weight_scale.double(), zero, 0)
        packs[bias] = torch.ops.quantized.linear_prepack(weight, layer.bias if bias else None)
    return packs[bias]


def fbgemm_split(x: Tensor, layer: Int8Linear) -> Tensor:
    """fbgemm's int8 linear with the outlier channels (``OUTLIER_RATIO``) multiplied in float32 and every token
    scaled to [-1, 1] first, so its per-batch quantization is a per-token one."""
    channel_max = x.abs().amax(0)  # (in,)
    outliers = (channel_max > OUTLIER_RATIO * channel_max.median()).nonzero().squeeze(1)  # (k,)
    rest = x.index_fill(1, outliers, 0.0) if len(outliers) else x
    token_scale = rest.abs().amax(-1, keepdim=True).clamp_(min=1e-12)  # (tokens, 1)
    y = torch.ops.quantized.linear_dynamic(rest / token_scale, fbgemm_packed(layer, bias=False), True)
    y.mul_(token_scale)  # (tokens, out)
    if len(outliers):
        weight = layer.weight.index_select(1, outliers).float() * layer.weight_scale[:, None]  # (out, k)
        y.addmm_(x.index_select(1, outliers), weight.t())
    return y if layer.bias is None else y.add_(layer.bias)


def integer_weight(name: str, layer: Int8Linear) -> tuple[Tensor, Tensor]:
    """The int8 weight and (1, out) scale that our scheme's kernel ``name`` multiplies by: 7 bits for int_mm7."""
    return weight_int7(layer) if name == "int_mm7" else (layer.weight, layer.weight_scale[None])


@torch.compiler.disable  # Inductor's int8 product corrupted the heap at one row (torch 2.13): never compiled
def run_kernel(name: str, x: Tensor, layer: Int8Linear) -> Tensor:
    """(tokens, in) float32 through ``layer`` with the kernel ``name`` -> (tokens, out) float32.

    int_mm: our per-token int8 scheme with ``torch._int_mm``; int_mm7: the same with 7-bit weights
    (``weight_int7``); float: the same integers multiplied in float32 (exact wherever the others are not);
    fbgemm: torch's dynamic int8 linear (what ``quantize_dynamic`` ran), which quantizes activations per batch in
    7 bits; fbgemm_split: the same with per-token scaling and outlier channels in float32 (``fbgemm_split``)."""
    if name in ("int_mm", "int_mm7", "float"):
        return int8_linear(x, *integer_weight(name, layer), layer.bias, int_mm=name != "float")
    if name == "fbgemm":
        return torch.ops.quantized.linear_dynamic(x, fbgemm_packed(layer), True)
    if name == "fbgemm_split":
        return fbgemm_split(x, layer)
    raise ValueError(f"unknown int8 kernel {name!r}; the kernels are {KERNELS}")


@dataclass
class KernelTiming:
    """One candidate on the probe: its seconds for one pass over the model's layer shapes, and whether it is
    correct (None: it did not run here, ``problem`` says why)."""

    seconds: float | None
    correct: bool
    problem: str | None = None


@dataclass
class KernelChoice:
    """The int8 kernel chosen on this machine for a model's layer shapes, and the measurements behind it."""

    kernel: str
    float32_seconds: float  # F.linear in float32 on the same probe
    timings: dict[str, KernelTiming]
    machine: dict[str, str]
    cached: bool = False  # read from the user cache rather than measured in this process

    @property
    def speedup(self) -> float:
        """How much faster than float32 the chosen kernel ran on the probe."""
        return self.float32_seconds / (self.timings[self.kernel].seconds or float("inf"))

    def shortfall(self) -> str | None:
        """What int8 falls short of on this CPU (slower than float32, or below ``TARGET_SPEEDUP``), or None."""
        if self.speedup < 1:
            return f"int8 is slower than float32 on this CPU ({self.speedup:.2f}x with {self.kernel}): use float32"
        if self.speedup < TARGET_SPEEDUP:
            return (
                f"int8 runs only {self.speedup:.2f}x float32 on this CPU ({self.kernel}; {TARGET_SPEEDUP:g}x needs "
                "int8 dot products in hardware, AVX-512 VNNI or AVX-VNNI)"
            )
        return None

    def reason(self) -> str:
        tried = ", ".join(
            f"{name} {t.seconds * 1e3:.1f} ms" if t.correct and t.seconds else f"{name} refused ({t.problem})"
            for name, t in self.timings.items()
        )
        return f"fastest correct int8 product: {self.kernel}, {self.speedup:.2f}x float32 ({tried})"

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["speedup"] = round(self.speedup, 3)
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> KernelChoice:
        timings = {name: KernelTiming(**t) for name, t in values["timings"].items()}
        return cls(values["kernel"], values["float32_seconds"], timings, values["machine"], cached=True)


def machine() -> dict[str, str]:
    """What a kernel's speed depends on: the CPU, the instruction sets torch and oneDNN may use, the versions."""
    return {
        "cpu": cpuinfo()[0],
        "capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "fbgemm_isa": os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", ""),
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "altclip": version("altclip"),
    }


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cache_path() -> Path:
    """The user cache of kernel choices ($XDG_CACHE_HOME/altclip, else ~/.cache/altclip)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "altclip" / "int8-kernels.json"


def probe(shapes: dict[tuple[int, int], int]) -> tuple[Tensor, list[tuple[Int8Linear, int]]]:
    """Activations with CLIP's outlier channels (a few channels 20x the rest, as LayerNorm's outputs have them)
    and one random layer per shape, with how many layers of the model have it."""
    generator = torch.Generator().manual_seed(0)
    widest = max(n for n, _ in shapes)
    x = torch.randn(PROBE_ROWS, widest, generator=generator)
    x[:, : max(1, widest // 200)] *= 20
    layers = []
    for (n_in, n_out), count in sorted(shapes.items()):
        linear = nn.Linear(n_in, n_out)
        nn.init.normal_(linear.weight, std=n_in**-0.5, generator=generator)
        layers.append((Int8Linear.from_linear(linear), count))
    return x, layers


def seconds(run: Callable[[], Any], repeats: int = 3) -> float:
    """Seconds per call after a warm-up call (compilation, packing, oneDNN's primitive cache); a call slower than
    a quarter second is timed once, so a very slow kernel costs the choice little."""
    run()
    start = time.perf_counter()
    run()
    once = time.perf_counter() - start
    if once > 0.25:
        return once
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


def measure(shapes: dict[tuple[int, int], int]) -> tuple[float, dict[str, KernelTiming]]:
    """Seconds of float32 and of each candidate for one pass over a model's layers (each distinct (in, out)
    shape timed once, weighted by how many layers have it), and each candidate's correctness: ours must give the
    exact result of our int8 scheme (within 1e-3 of its largest value; oneDNN without VNNI saturates), fbgemm
    must stay within ``MIN_PROBE_COSINE`` of float32."""
    x, layers = probe(shapes)
    cases = [(x[:, : layer.in_features].contiguous(), layer, count) for layer, count in layers]
    dense = [layer.weight.float() * layer.weight_scale[:, None] for layer, _ in layers]

    def per_pass(run: Callable[[Tensor, Int8Linear, int], Any]) -> float:
        return sum(count * seconds(functools.partial(run, v, layer, i)) for i, (v, layer, count) in enumerate(cases))

    float32 = per_pass(lambda v, layer, i: F.linear(v, dense[i], layer.bias))
    timings = {}
    for name in KERNELS:
        try:
            problem = check(name, cases, dense)
            took = per_pass(lambda v, layer, i, name=name: run_kernel(name, v, layer)) if problem is None else None
        except Exception as err:  # a kernel this build of torch or this CPU lacks
            took, problem = None, f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
        timings[name] = KernelTiming(took, problem is None, problem)
    return float32, timings


def check(name: str, cases: list[tuple[Tensor, Int8Linear, int]], dense: list[Tensor]) -> str | None:
    """Why a kernel's outputs on the probe are not acceptable, or None. Every shape is checked at several row
    counts: a kernel right at one count was seen wrong (even NaN) at others."""
    for (probe_rows, layer, _), w in zip(cases, dense, strict=True):
        for rows in CHECK_ROWS:
            v = probe_rows[:rows]
            y = run_kernel(name, v, layer).double()
            if name.startswith("fbgemm"):
                cosine = float(F.cosine_similarity(y, F.linear(v, w, layer.bias).double(), dim=-1).min())
                if not cosine >= MIN_PROBE_COSINE:
                    return f"cosine {cosine:.4f} to float32 on activations with outlier channels"
                continue
            weight, weight_scale = integer_weight(name, layer)
            x_int8, x_scale = quantize_rows(v)
            exact = (x_int8.double() @ weight.double().t()) * (x_scale.double() * weight_scale.double())
            exact = exact if layer.bias is None else exact + layer.bias.double()
            if not (y - exact).abs().max() <= 1e-3 * exact.abs().max():
                return f"differs from the exact int8 products at {rows} rows (saturating sums?)"
    return None


def pick(timings: dict[str, KernelTiming]) -> str:
    """The fastest correct candidate."""
    timed = {name: t.seconds for name, t in timings.items() if t.correct and t.seconds is not None}
    if not timed:
        raise RuntimeError(f"no int8 kernel gives correct results here: {timings}")
    return min(timed, key=timed.__getitem__)


_choices: dict[str, KernelChoice] = {}
_choices_lock = threading.Lock()


def choose_kernel(shapes: dict[tuple[int, int], int]) -> KernelChoice:
    """The int8 kernel for a model whose Linears have these (in, out) shapes (-> how many): measured on first use
    on a machine (``measure``, a few seconds), then read from the user cache (``cache_path``), keyed by the
    machine, the versions and the shapes. It warns where even the fastest falls short (``KernelChoice.shortfall``)."""
    key = json.dumps({"version": CHOICE_VERSION, "machine": machine(), "shapes": sorted(shapes.items())})
    with _choices_lock:
        if key in _choices:
            return _choices[key]
        cached = read_cache().get(key)
        if cached is not None:
            choice = KernelChoice.from_json(cached)
        else:
            float32, timings = measure(shapes)
            choice = KernelChoice(pick(timings), float32, timings, machine())
            write_cache(key, choice)
        if choice.shortfall():
            logger.warning("%s; `altclip doctor` shows what is fast here", choice.shortfall())
        _choices[key] = choice
        return choice


def read_cache() -> dict[str, Any]:
    try:
        values = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: measure again
        return {}
    return values if isinstance(values, dict) else {}


def write_cache(key: str, choice: KernelChoice) -> None:
    try:
        write_json(cache_path(), {**read_cache(), key: choice.to_json()})
    except OSError as err:  # a read-only home: the choice holds for this process
        logger.info("int8: the kernel choice could not be cached (%s)", err)


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights and per-token int8 activations; its state dict holds ``weight``
    (int8, out x in), ``weight_scale`` (float32, out) and ``bias`` (float32) where the layer has one. ``kernel``
    names how the product runs (``run_kernel``); ``replace_linears`` sets it to the one measured fastest here."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.kernel = "float"  # correct everywhere
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        if linear.weight.device.type != "meta":
            layer.weight, layer.weight_scale = quantize_weight(linear.weight.detach())
            if linear.bias is not None:
                layer.bias = linear.bias.detach().float()
        return layer

    def forward(self, x: Tensor) -> Tensor:
        y = run_kernel(self.kernel, x.reshape(-1, self.in_features).float(), self)  # (tokens, out)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}, kernel={self.kernel}"


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """A float (out, in) weight -> int8 (out, in) and its float32 (out,) scales."""
    values, scale = quantize_rows(weight)
    return values, scale.squeeze(-1)


def replace_linears(model: nn.Module) -> KernelChoice:
    """Swap every ``nn.Linear`` of ``model`` for an ``Int8Linear`` in place (quantizing its weights unless the
    model is on the meta device, where ``quantize_weight`` fills them in while a checkpoint is read), each running
    the kernel ``choose_kernel`` picks for the model's shapes, chosen now, at loading, not on the first batch."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, Int8Linear.from_linear(child))
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    choice = choose_kernel(linear_shapes(model))
    for layer in layers:
        layer.kernel = choice.kernel
    return choice


def linear_shapes(model: nn.Module) -> dict[tuple[int, int], int]:
    """(in, out) -> how many of the model's Linears (plain or int8) have that shape: what a kernel is chosen for."""
    linears = [m for m in model.modules() if type(m) in (nn.Linear, Int8Linear)]
    return dict(Counter((m.in_features, m.out_features) for m in linears))
