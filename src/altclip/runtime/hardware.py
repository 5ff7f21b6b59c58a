"""What this machine computes fast, the precision ``precision="auto"`` picks from it, and the device to use.

A precision is how a model computes: "float32", "bfloat16", "float16", "int8", or "auto", the machine's choice.
The rule (``choose_precision``):

* CUDA, compute capability 8.0 or higher (Ampere, Hopper, ...): bfloat16, which those GPUs compute natively;
* older CUDA GPUs: float16;
* a CPU with AVX512-BF16 or AMX, where torch runs its AVX-512 kernels: bfloat16;
* anything else: float32.

bfloat16 and float16 here mean the matrix multiplies in 16 bits, LayerNorm, softmax and the
residual stream in float32 (see ``DualEncoderModel``), which keeps embeddings within a cosine of 0.9999 of
float32's where casting the whole model reached 0.995. The rule reads what torch reports
(``torch.cuda.get_device_capability``, ``torch.cpu._is_avx512_bf16_supported`` and its kin, which are private
and may go) and falls back to the flags in ``/proc/cpuinfo``. A wrong guess costs speed, never correctness:
every precision computes the same model. ``altclip doctor`` measures whether the guess pays here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from altclip.errors import InputError
from altclip.files import cpuinfo
from altclip.tables import Result

PRECISIONS = ("auto", "float32", "bfloat16", "float16", "int8")
# training runs in float32 or under mixed-precision autocast; the short names are what the flags took before 0.2
TRAINING_PRECISIONS = ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
SHORT_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
# torch's own reports, tried before /proc/cpuinfo: flag -> the torch.cpu helper that answers it.
TORCH_CPU_CHECKS = {
    "avx2": "_is_avx2_supported",
    "avx512f": "_is_avx512_supported",
    "avx512_vnni": "_is_vnni_supported",
    "avx512_bf16": "_is_avx512_bf16_supported",
    "amx_bf16": "_is_amx_tile_supported",
}


@dataclass(frozen=True)
class CPU:
    name: str
    cores: int
    capability: str  # torch's kernel level: DEFAULT, AVX2, AVX512, ...
    flags: dict[str, bool]  # each of CPU_FLAGS
    flags_from: str  # "torch" or "/proc/cpuinfo"

    @property
    def native_bfloat16(self) -> bool:
        return self.flags.get("avx512_bf16", False) or self.flags.get("amx_bf16", False)

    def describe(self) -> str:
        present = " ".join(f for f in CPU_FLAGS if self.flags.get(f)) or "no AVX2"
        return f"{self.name}, {self.cores} cores, {present} (torch: {self.capability})"


@dataclass(frozen=True)
class GPU:
    name: str
    capability: tuple[int, int]
    memory_gb: float


def detect_cpu() -> CPU:
    name, flags = cpuinfo()
    reported: dict[str, bool] = {}
    for flag, helper in TORCH_CPU_CHECKS.items():
        check = getattr(torch.cpu, helper, None)
        if check is None:
            break
        try:
            reported[flag] = bool(check())
        except Exception:  # a helper that exists but fails: trust the flags instead
            break
    flags_from = "torch" if len(reported) == len(TORCH_CPU_CHECKS) else "/proc/cpuinfo"
    if flags_from == "torch":
        reported["amx_int8"] = "amx_int8" in flags or reported["amx_bf16"]
    else:
        reported = {flag: flag in flags for flag in CPU_FLAGS}
    return CPU(
        name=name,
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        capability=torch.backends.cpu.get_cpu_capability(),
        flags={flag: reported.get(flag, False) for flag in CPU_FLAGS},
        flags_from=flags_from,
    )


def detect_gpu(device: torch.device | None = None) -> GPU | None:
    if not torch.cuda.is_available():
        return None
    index = device.index if device is not None and device.type == "cuda" and device.index is not None else 0
    properties = torch.cuda.get_device_properties(index)
    return GPU(properties.name, (properties.major, properties.minor), properties.total_memory / 2**30)


@dataclass(frozen=True)
class Precision(Result):
    """The precision a model runs in (``name``, one of PRECISIONS but "auto") and why; ``asked`` is what the user
    gave."""

    name: str
    reason: str
    asked: str = "auto"
    facts: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"precision {self.name}" + (f" (auto: {self.reason})" if self.asked == "auto" else "")


def choose_precision(device: torch.device, cpu: CPU | None = None, gpu: GPU | None = None) -> Precision:
    """What ``precision="auto"`` runs on ``device``: see the module docstring."""
    if device.type == "cuda":
        gpu = gpu or detect_gpu(device)
        if gpu is None:
            return Precision("float32", "CUDA is not available to torch here")
        major, minor = gpu.capability
        facts = {"gpu": gpu.name, "compute_capability": f"{major}.{minor}"}
        if gpu.capability >= (8, 0):
            return Precision(
                "bfloat16", f"{gpu.name} (compute capability {major}.{minor}) has bfloat16 units", facts=facts
            )
        return Precision("float16", f"{gpu.name} (compute capability {major}.{minor}) predates bfloat16", facts=facts)
    if device.type != "cpu":
        return Precision("float32", f"no rule for {device.type} devices: float32 is always correct")
    cpu = cpu or detect_cpu()
    facts = {"cpu": cpu.name, "capability": cpu.capability, "flags_from": cpu.flags_from}
    native = [flag for flag in ("amx_bf16", "avx512_bf16") if cpu.flags.get(flag)]
    if native and cpu.capability.startswith("AVX512"):
        return Precision("bfloat16", f"the CPU computes bfloat16 natively ({', '.join(native)})", facts=facts)
    if native:  # e.g. ATEN_CPU_CAPABILITY=avx2 set by the user: torch is held below the instructions
        return Precision("float32", f"the CPU has {', '.join(native)} but torch runs at {cpu.capability}", facts=facts)
    return Precision("float32", f"the CPU has no bfloat16 instructions (torch: {cpu.capability})", facts=facts)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or "auto": the GPU when there is one, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(
    precision: str | torch.dtype | Precision | None, device: torch.device, backend: str = "torch"
) -> Precision:
    """``precision`` as given (None -> float32; a torch dtype by its name), or the machine's choice for "auto"."""
    if isinstance(precision, Precision):
        return precision
    if isinstance(precision, torch.dtype):
        precision = str(precision).removeprefix("torch.")
    if precision is None:
        return Precision("float32", "the default", asked="float32")
    precision = SHORT_NAMES.get(precision, precision)
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return Precision(precision, "asked for", asked=precision)
    if backend == "onnx":
        return Precision("float32", "the onnx backend runs the exported graphs as they are")
    return choose_precision(device)


def float32_gemm_rate(size: int = 2048, runs: int = 5) -> float:
    """GFLOP/s of float32 ``size`` x ``size`` products with torch's threads, the best of ``runs`` after a warm-up:
    the figure the README's tables of the demo's time per machine are given with (about a second)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
