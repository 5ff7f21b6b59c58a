"""``altclip doctor``: this machine, which precisions and backends work on it, and how fast each one is.

Every mode runs the image tower of one small random-weight model (ViT-B/32 width, 6 layers; images/s at batch
8, within a shared time budget) on the same pixels, and its features are compared with float32's: a mode
"works" when it loads, runs and stays within its tolerance (``MIN_COSINE``). The report ends with the
precision ``precision="auto"`` picks here and what it measured against float32, so a wrong guess shows.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from altclip.errors import InputError
from altclip.modeling.config import AltCLIPConfig
from altclip.modeling.models import AltCLIPModel, normalize
from altclip.modeling.quantize import KernelChoice, choose_kernel, linear_shapes
from altclip.runtime.hardware import CPU, choose_precision, detect_cpu, detect_gpu, resolve_device
from altclip.runtime.loading import compile_towers
from altclip.tables import Result

MODES = ("float32", "bfloat16", "float16", "int8", "compile", "onnx", "onnx-int8")
CPU_ONLY = ("int8", "onnx", "onnx-int8")
# The least cosine to float32's features each mode must keep (also what the tests hold every mode to).
MIN_COSINE = {
    "float32": 0.99999,
    "compile": 0.9999,
    "onnx": 0.9999,
    "bfloat16": 0.999,
    "float16": 0.999,
    "int8": 0.99,
    "onnx-int8": 0.99,
}
SMALL_MODEL = {
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "patch_size": 32,
        "image_size": 224,
    },
    "text_config": {
        "vocab_size": 1000,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "project_dim": 64,
    },
    "projection_dim": 512,
}
BATCH = 8


@dataclass
class ModeResult:
    mode: str
    works: bool
    images_per_second: float | None = None
    ratio_to_float32: float | None = None
    min_cosine: float | None = None
    tolerance: float | None = None
    setup_seconds: float | None = None
    error: str | None = None


@dataclass
class DoctorReport(Result):
    """What ``altclip doctor`` found: the machine, each mode's speed and accuracy, and what auto picks."""

    machine: dict[str, Any]  # cpu, gpu, platform, versions
    device: str
    model: dict[str, Any]  # what was timed
    modes: list[ModeResult]  # float32 first
    auto: dict[str, Any]  # the precision auto picks, why, and its measured ratio to float32
    fastest: dict[str, Any]
    advice: str
    int8_kernel: dict[str, Any] | None = None  # the measured kernel choice (KernelChoice.to_json)

    @property
    def works(self) -> dict[str, bool]:
        return {r.mode: r.works for r in self.modes}

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["works"] = self.works
        return values

    def int8_line(self) -> str | None:
        """How int8 runs here and why, or None where int8 was not measured."""
        if self.int8_kernel is None:
            return None
        choice = KernelChoice.from_json(self.int8_kernel)
        line = f"int8 kernel: {choice.reason()}"
        if choice.shortfall():
            line += f"; {choice.shortfall()}" + (", and never recommended here" if choice.speedup < 1 else "")
        return line

    def machine_rows(self) -> list[tuple[str, str]]:
        """The machine as (what, this one) rows for a table."""
        cpu, gpu, versions = self.machine["cpu"], self.machine["gpu"], self.machine["versions"]
        flags = " ".join(f for f, present in cpu["flags"].items() if present) or "none of " + ", ".join(cpu["flags"])
        return [
            ("CPU", f"{cpu['name']}, {cpu['cores']} cores ({cpu['threads']} torch threads)"),
            ("CPU capability", f"{cpu['capability']} (torch); flags: {flags} (from {cpu['flags_from']})"),
            ("GPU", "none" if gpu is None else f"{gpu['name']}, compute capability {gpu['capability']}"),
            ("versions", ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items())),
            ("works here", ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in self.works.items())),
        ]


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("onnxruntime", "altclip"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def machine_facts(cpu: CPU) -> dict[str, Any]:
    gpu = detect_gpu()
    return {
        "cpu": {
            "name": cpu.name,
            "cores": cpu.cores,
            "capability": cpu.capability,
            "flags": cpu.flags,
            "flags_from": cpu.flags_from,
            "threads": torch.get_num_threads(),
        },
        "gpu": None if gpu is None else {**asdict(gpu), "capability": "{}.{}".format(*gpu.capability)},
        "platform": platform.platform(),
        "versions": versions(),
    }


def write_small_model(folder: Path) -> Path:
    torch.manual_seed(0)
    AltCLIPModel(AltCLIPConfig.from_dict(SMALL_MODEL)).save_pretrained(folder)
    return folder


def image_features(folder: Path, mode: str, device: torch.device, scratch: Path) -> Callable[[Tensor], Tensor]:
    """A function pixels -> unit image features in ``mode``, loaded (compiled, exported) here."""
    if mode.startswith("onnx"):
        from altclip.runtime.export import export_onnx
        from altclip.runtime.onnx import OnnxModel

        exported = scratch / mode
        export_onnx(
            AltCLIPModel.from_pretrained(folder),
            exported,
            towers=["vision"],
            quantize="int8" if "int8" in mode else None,
        )
        model = OnnxModel.from_pretrained(exported)
    else:
        precision = "float32" if mode == "compile" else mode
        model = AltCLIPModel.from_pretrained(folder, precision=precision, device=device)
        if mode == "compile":
            compile_towers(model)

    @torch.inference_mode()
    def run(pixels: Tensor) -> Tensor:
        return normalize(model.get_image_features(pixels.to(model.device)).float()).cpu()

    return run


def small_model_shapes() -> dict[tuple[int, int], int]:
    """The Linear shapes of the small model, as int8 loading sees them (built on the meta device: no weights)."""
    with torch.device("meta"):
        return linear_shapes(AltCLIPModel(AltCLIPConfig.from_dict(SMALL_MODEL)))


def images_per_second(run: Callable[[Tensor], Tensor], pixels: Tensor, seconds: float, device: torch.device) -> float:
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        run(pixels)
        calls += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return calls * len(pixels) / (time.perf_counter() - start)


def run_doctor(
    seconds: float = 20.0,
    modes: tuple[str, ...] = MODES,
    device: str | torch.device | None = None,
    report: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> DoctorReport:
    """Measure ``modes`` (float32 always first) within about ``seconds`` of timing, plus each one's set-up
    (loading, compiling, exporting). Returns the report ``altclip doctor`` prints."""
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise InputError(f"unknown modes {unknown}; choose from {list(MODES)}")
    device = resolve_device(device)
    modes = ("float32", *(m for m in modes if m != "float32"))
    budget = seconds / len(modes)
    pixels = torch.randn(BATCH, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    results: list[ModeResult] = []
    reference: Tensor | None = None
    with tempfile.TemporaryDirectory(prefix="altclip-doctor-") as tmp:
        folder = write_small_model(Path(tmp) / "model")
        for mode in modes:
            if mode in CPU_ONLY and device.type != "cpu":
                results.append(ModeResult(mode, False, error=f"runs on the CPU only (device {device})"))
                continue
            report(f"doctor: {mode} ...")
            start = time.perf_counter()
            try:
                run = image_features(folder, mode, device, Path(tmp))
                features = run(pixels)  # the first call: compilation happens here
                setup = time.perf_counter() - start
                speed = images_per_second(run, pixels, budget, device)
            except Exception as err:  # a mode that cannot run here is a finding, not a failure of the doctor
                results.append(ModeResult(mode, False, error=f"{type(err).__name__}: {err}".splitlines()[0][:300]))
                continue
            if reference is None:
                reference = features
            cosine = float((features * reference).sum(-1).min())
            results.append(
                ModeResult(
                    mode,
                    cosine >= MIN_COSINE[mode],
                    images_per_second=speed,
                    min_cosine=cosine,
                    tolerance=MIN_COSINE[mode],
                    setup_seconds=setup,
                    error=None if cosine >= MIN_COSINE[mode] else f"cosine {cosine:.5f} below {MIN_COSINE[mode]}",
                )
            )
    base = results[0].images_per_second
    for result in results:
        if result.images_per_second and base:
            result.ratio_to_float32 = result.images_per_second / base
    cpu = detect_cpu()
    choice = choose_precision(device, cpu=cpu)
    picked = next((r for r in results if r.mode == choice.name), None)
    auto = {**choice.to_json(), "ratio_to_float32": picked.ratio_to_float32 if picked else None}
    fastest = max((r for r in results if r.works and r.images_per_second), key=lambda r: r.images_per_second or 0)
    int8 = next((r for r in results if r.mode == "int8" and r.works), None)
    return DoctorReport(
        int8_kernel=choose_kernel(small_model_shapes()).to_json() if int8 else None,
        machine=machine_facts(cpu),
        device=str(device),
        model={"vision": "ViT-B/32 width, 6 layers, random weights", "batch": BATCH, "seconds": seconds},
        modes=results,
        auto=auto,
        fastest={"mode": fastest.mode, "ratio_to_float32": fastest.ratio_to_float32},
        advice=advice(auto, fastest),
    )


def advice(auto: dict[str, Any], fastest: ModeResult) -> str:
    ratio = auto["ratio_to_float32"]
    said = f"--precision auto runs {auto['name']} here ({auto['reason']})"
    if ratio is not None and ratio < 0.95:
        return f"{said}, but it measured {ratio:.2f}x float32: pass --precision float32"
    if ratio is not None:
        said += f", {ratio:.2f}x float32"
    if fastest.mode != auto["name"] and (fastest.ratio_to_float32 or 0) > (ratio or 1) * 1.1:
        how = {
            "compile": "--backend compile",
            "onnx": "--backend onnx",
            "onnx-int8": "--backend onnx on an export written with --quantize int8",
        }.get(fastest.mode, f"--precision {fastest.mode}")
        said += f"; {fastest.mode} measured {fastest.ratio_to_float32:.2f}x ({how}), at its accuracy cost"
    return said
