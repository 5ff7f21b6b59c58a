"""Every precision stays within its documented tolerance of float32; `altclip doctor --json` has its fields."""

from __future__ import annotations

import json

import pytest
import torch

from altclip.cli import main
from altclip.runtime import doctor
from altclip.runtime.doctor import MIN_COSINE, ModeResult, advice
from altclip.tasks import Embedder

TEXTS = ["a photo of a cat", "一张狗的照片", "猫の写真", "고양이", "صورة قطة", "una foto de un perro en el parque"]
TINY = {
    "vision_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "patch_size": 32,
        "image_size": 224,
    },
    "text_config": {**doctor.SMALL_MODEL["text_config"], "hidden_size": 32, "intermediate_size": 37},
    "projection_dim": 16,
}


@pytest.mark.parametrize(
    ("mode", "options"),
    [
        ("bfloat16", {"precision": "bfloat16"}),
        ("float16", {"precision": "float16"}),
        ("int8", {"precision": "int8"}),
        ("compile", {"backend": "compile"}),  # onnx: tests/test_export.py and the doctor test below
    ],
)
def test_each_mode_stays_within_its_tolerance(altclip_checkpoint, image_folder, mode, options):
    reference = Embedder.from_pretrained(altclip_checkpoint)
    embedder = Embedder.from_pretrained(altclip_checkpoint, **options)
    paths = sorted(image_folder.glob("img*"))[:8]
    for ours, theirs in (
        (embedder.embed_texts(TEXTS), reference.embed_texts(TEXTS)),
        (embedder.embed_images(paths), reference.embed_images(paths)),
    ):
        assert ours.dtype == torch.float32
        cosine = (ours * theirs).sum(-1)
        assert cosine.min() >= MIN_COSINE[mode], (mode, cosine)


def test_bfloat16_keeps_norms_and_sums_in_float32(altclip_checkpoint):
    model = Embedder.from_pretrained(altclip_checkpoint, precision="bfloat16").model
    layer = model.vision_model.encoder.layers[0]
    assert layer.mlp.fc1.weight.dtype == torch.bfloat16 and layer.self_attn.q_proj.weight.dtype == torch.bfloat16
    assert model.vision_model.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert layer.layer_norm1.weight.dtype == torch.float32 and model.logit_scale.dtype == torch.float32
    assert model.vision_model.embeddings.position_embedding.weight.dtype == torch.float32


def test_doctor_json_has_its_documented_fields(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "SMALL_MODEL", TINY)
    code = main(["doctor", "--json", "--seconds", "1", "--modes", "bfloat16", "int8", "onnx", "--device", "cpu"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(report) == {"machine", "device", "model", "modes", "works", "auto", "fastest", "advice", "int8_kernel"}
    kernel = report["int8_kernel"]  # measured on the small model's own layer shapes
    assert kernel["kernel"] in kernel["timings"] and kernel["timings"][kernel["kernel"]]["correct"]
    assert kernel["float32_seconds"] > 0 and kernel["machine"]["capability"] == cpu_capability()
    cpu = report["machine"]["cpu"]
    assert {"name", "cores", "capability", "flags", "flags_from", "threads"} <= set(cpu)
    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability() and cpu["cores"] >= 1
    assert {"torch", "onnxruntime", "python"} <= set(report["machine"]["versions"])
    assert "gpu" in report["machine"]
    assert [m["mode"] for m in report["modes"]] == ["float32", "bfloat16", "int8", "onnx"]
    for mode in report["modes"]:
        assert set(mode) == set(ModeResult.__dataclass_fields__)
        assert mode["works"] and mode["images_per_second"] > 0 and mode["min_cosine"] >= MIN_COSINE[mode["mode"]]
    assert report["modes"][0]["ratio_to_float32"] == 1.0
    assert report["works"] == {"float32": True, "bfloat16": True, "int8": True, "onnx": True}
    assert report["auto"]["name"] in ("float32", "bfloat16") and report["auto"]["reason"]
    assert report["auto"]["ratio_to_float32"] == next(
        m["ratio_to_float32"] for m in report["modes"] if m["mode"] == report["auto"]["name"]
    )
    assert report["auto"]["name"] in report["advice"]


def cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def test_doctor_table(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "SMALL_MODEL", TINY)
    assert main(["doctor", "--seconds", "0.5", "--modes", "float32", "int8", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "int8 kernel: fastest correct int8 product:" in out
    assert "CPU capability" in out and torch.backends.cpu.get_cpu_capability() in out and "1.00x" in out
    assert main(["doctor", "--modes", "float64"]) == 1
    assert "unknown modes ['float64']" in capsys.readouterr().err


def test_advice_says_when_auto_does_not_pay():
    slow = {"name": "bfloat16", "reason": "the CPU computes bfloat16 natively", "ratio_to_float32": 0.7}
    fp32 = ModeResult("float32", True, 10.0, 1.0)
    assert "pass --precision float32" in advice(slow, fp32)
    fast = {**slow, "ratio_to_float32": 3.0}
    assert "3.00x float32" in advice(fast, ModeResult("bfloat16", True, 30.0, 3.0))
    assert "--precision int8" in advice(fast, ModeResult("int8", True, 40.0, 4.0))
