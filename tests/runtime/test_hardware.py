"""dtype="auto": what torch (or /proc/cpuinfo) reports -> the precision, for each kind of machine."""

from __future__ import annotations

import pytest
import torch

from altclip.runtime import hardware
from altclip.runtime.hardware import CPU, CPU_FLAGS, GPU, choose_precision, detect_cpu, resolve_precision
from altclip.tasks import Embedder

CPU_DEVICE = torch.device("cpu")


def cpu_with(*flags: str, capability: str = "AVX2") -> CPU:
    return CPU("test CPU", 2, capability, {f: f in flags for f in CPU_FLAGS}, "torch")


@pytest.mark.parametrize(
    ("flags", "capability", "expected"),
    [
        (("avx2", "avx512f", "avx512_vnni", "avx512_bf16"), "AVX512", "bfloat16"),  # Zen 4, Cooper Lake
        (("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"), "AVX512", "bfloat16"),  # SPR
        (("avx2", "avx512f", "avx512_bf16"), "AVX2", "float32"),  # ATEN_CPU_CAPABILITY=avx2: torch held back
        (("avx2", "avx512f", "avx512_vnni"), "AVX512", "float32"),  # Ice Lake: VNNI but no bfloat16
        (("avx2",), "AVX2", "float32"),
        ((), "DEFAULT", "float32"),
    ],
)
def test_auto_on_cpus(flags, capability, expected):
    choice = choose_precision(CPU_DEVICE, cpu=cpu_with(*flags, capability=capability))
    assert choice.name == expected
    assert ("natively" in choice.reason) == (expected == "bfloat16") and capability == choice.facts["capability"]


@pytest.mark.parametrize(
    ("capability", "expected"), [((9, 0), "bfloat16"), ((8, 0), "bfloat16"), ((7, 5), "float16"), ((6, 1), "float16")]
)
def test_auto_on_gpus(capability, expected):
    gpu = GPU("test GPU", capability, 80.0)
    choice = choose_precision(torch.device("cuda"), gpu=gpu)
    assert choice.name == expected and f"{capability[0]}.{capability[1]}" in choice.reason


def test_auto_without_a_rule_or_without_cuda(monkeypatch):
    monkeypatch.setattr(hardware, "detect_gpu", lambda device=None: None)
    assert choose_precision(torch.device("cuda")).name == "float32"
    assert choose_precision(torch.device("mps")).name == "float32"


def test_detect_reads_torch_first_then_proc_cpuinfo(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    for flag, helper in hardware.TORCH_CPU_CHECKS.items():
        monkeypatch.setattr(torch.cpu, helper, lambda flag=flag: flag in ("avx2", "avx512_bf16"), raising=False)
    monkeypatch.setattr(hardware, "cpuinfo", lambda: ("test CPU", {"avx2"}))  # torch wins where it answers
    cpu = detect_cpu()
    assert cpu.flags_from == "torch" and cpu.flags["avx512_bf16"] and not cpu.flags["avx512f"]
    assert choose_precision(CPU_DEVICE, cpu=cpu).name == "bfloat16"

    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # a torch without the helper
    monkeypatch.setattr(hardware, "cpuinfo", lambda: ("test CPU", {"avx2", "fma"}))
    cpu = detect_cpu()
    assert cpu.flags_from == "/proc/cpuinfo" and cpu.flags["avx2"] and not cpu.flags["avx512_bf16"]
    assert choose_precision(CPU_DEVICE, cpu=cpu).name == "float32"
    monkeypatch.setattr(hardware, "cpuinfo", lambda: ("test CPU", {"avx2", "avx512_bf16"}))
    assert choose_precision(CPU_DEVICE, cpu=detect_cpu()).name == "bfloat16"


def test_cpuinfo_parses_this_machine():
    name, flags = hardware.cpuinfo()
    assert name and isinstance(flags, set)
    cpu = detect_cpu()
    assert cpu.cores >= 1 and cpu.capability == torch.backends.cpu.get_cpu_capability()
    assert set(cpu.flags) == set(CPU_FLAGS) and cpu.name in cpu.describe()


def test_resolve_precision():
    assert resolve_precision(None, CPU_DEVICE).name == "float32"
    assert resolve_precision(torch.bfloat16, CPU_DEVICE).to_json()["asked"] == "bfloat16"
    assert resolve_precision("int8", CPU_DEVICE).reason == "asked for"
    assert resolve_precision("auto", CPU_DEVICE, backend="onnx").name == "float32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("float64", CPU_DEVICE)


@pytest.mark.parametrize("chosen", ["float32", "bfloat16"])
def test_embedder_auto_loads_what_was_chosen(monkeypatch, altclip_checkpoint, chosen):
    flags = ("avx2", "avx512f", "avx512_bf16") if chosen == "bfloat16" else ("avx2",)
    monkeypatch.setattr(hardware, "detect_cpu", lambda: cpu_with(*flags, capability="AVX512"))
    embedder = Embedder.from_pretrained(altclip_checkpoint, precision="auto", device="cpu")
    assert embedder.precision.name == chosen and embedder.precision.asked == "auto"
    expected = torch.bfloat16 if chosen == "bfloat16" else None
    assert embedder.model.autocast_dtype == expected
    assert embedder.model.vision_model.encoder.layers[0].mlp.fc1.weight.dtype == (expected or torch.float32)
    assert Embedder.from_pretrained(altclip_checkpoint).precision.name == "float32"  # the class default
