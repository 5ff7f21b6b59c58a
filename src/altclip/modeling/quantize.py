"""int8 inference on the CPU: every ``nn.Linear`` becomes an ``Int8Linear``.

Weights are int8 with one float32 scale per output row (symmetric, ``max|w| / 127``); activations are quantized
the same way per token, on the fly, and the product runs as an int8 x int8 -> int32 matrix multiply
(``torch._int_mm``, VNNI where the CPU has it) before both scales bring it back to float32. The patch
convolution, the embeddings and the LayerNorms stay float32. Measured against float32 in
``benchmarks/accuracy.py``.

This replaces ``torch.ao.quantization.quantize_dynamic`` (deprecated) and quantizes while the checkpoint is
read, one tensor at a time (``quantize_weight``), so the float32 weights are never all in memory. torchao's
int8 dynamic quantization was tried and not taken: on the CPU its eager path multiplies in int32 and its fast
path needs the whole model compiled (the README's "Speed" section has the figures, with the CPU they were
measured on).

The quantize-multiply-rescale step is one function, ``int8_linear``; where ``torch.compile`` works (a C++
compiler is present) and agrees with it, it runs compiled, which fuses the per-token scaling into one pass;
otherwise eagerly, with a warning. ``torch._int_mm`` is checked
once per process: where it is not exact (CPUs without VNNI, where oneDNN's int8 products saturate), the same
integers are multiplied in float32 instead: the same results, at about float32's speed.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable

import torch
from torch import Tensor, nn

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
    y = torch.mul(product, x_scale * weight_scale)
    return y if bias is None else y.add_(bias)


def int_mm_is_exact() -> bool:
    """Whether ``torch._int_mm`` gives the exact int32 products here. On CPUs without VNNI oneDNN multiplies
    int8 pairs into saturating int16 sums, and the results are wrong (seen with ONEDNN_MAX_CPU_ISA=AVX2)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (64, 512), dtype=torch.int8, generator=generator)
    b = torch.randint(-127, 128, (96, 512), dtype=torch.int8, generator=generator)
    exact = (a.float() @ b.float().t()).to(torch.int32)  # sums below 2**24: exact in float32
    return torch.equal(torch._int_mm(a, b.t()), exact)


def choose_kernel() -> tuple[Callable[..., Tensor], bool]:
    """The int8 product for this process and whether it uses ``torch._int_mm``: compiled where that works and
    agrees with the eager function, eager otherwise, in float32 arithmetic where ``torch._int_mm`` is inexact."""
    if not int_mm_is_exact():
        logger.warning(
            "int8: torch's int8 matrix multiply is not exact on this CPU (no VNNI?); int8 layers multiply in "
            "float32 here, correct but at about float32's speed. For int8 speed use `altclip export onnx "
            "--quantize int8` and --backend onnx"
        )
        return functools.partial(int8_linear, int_mm=False), False
    generator = torch.Generator().manual_seed(0)
    x, (w, s) = torch.randn(64, 512, generator=generator), quantize_rows(torch.randn(96, 512, generator=generator))
    expected = int8_linear(x, w, s.t(), None)
    compiled = torch.compile(int8_linear, dynamic=True)
    try:
        got = compiled(x, w, s.t(), None)
        # fused code may round a value to the next int8 step: allow that, not more (an AVX2 build of this
        # kernel was seen off by 135)
        if (got - expected).abs().max() > 1e-3 * expected.abs().max():
            raise RuntimeError("the compiled kernel disagrees with the eager one")
    except Exception as err:  # no C++ compiler, an unsupported platform: correct, only slower
        logger.warning("int8: torch.compile is not usable here (%s); running the eager kernel", err)
        return int8_linear, True
    return compiled, True


_kernel: tuple[Callable[..., Tensor], bool] | None = None
_kernel_lock = threading.Lock()


def kernel() -> tuple[Callable[..., Tensor], bool]:
    """``choose_kernel()``, once per process."""
    global _kernel
    with _kernel_lock:
        if _kernel is None:
            _kernel = choose_kernel()
        return _kernel


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights and per-token int8 activations; its state dict holds ``weight``
    (int8, out x in), ``weight_scale`` (float32, out) and ``bias`` (float32) where the layer has one."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
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
        rows = x.reshape(-1, self.in_features)  # (tokens, in)
        if torch.compiler.is_compiling():  # inside a compiled tower: inlined; the choice was made at loading
            matmul = functools.partial(int8_linear, int_mm=_kernel is None or _kernel[1])
        else:
            matmul = kernel()[0]
        y = matmul(rows.float(), self.weight, self.weight_scale[None], self.bias)  # (tokens, out)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """A float (out, in) weight -> int8 (out, in) and its float32 (out,) scales."""
    values, scale = quantize_rows(weight)
    return values, scale.squeeze(-1)


def replace_linears(model: nn.Module) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` for an ``Int8Linear`` in place (quantizing its weights unless the
    model is on the meta device, where ``quantize_weight`` fills them in while a checkpoint is read)."""
    kernel()  # chosen (and compiled) now, at loading, not on the first batch
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, Int8Linear.from_linear(child))
    return model
