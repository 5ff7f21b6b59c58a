"""Every fast mode on both CPU kinds, as correctness tests (no timing is asserted): each script runs once at this
machine's own instruction level and once held to AVX2 (torch, oneDNN, MKL and fbgemm limited), as an AVX2-only CPU runs
it. int8 gives the right embeddings with the kernel its own measurements name, auto picks what the CPU computes,
and doctor recommends nothing slower than float32."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

AVX2 = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
}
SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from altclip.embedder import Embedder
    from altclip.runtime import doctor
    from altclip.runtime.hardware import choose_precision

    folder, images = sys.argv[1], sys.argv[2:]
    texts = ["a photo of a cat", "一张狗的照片", "猫の写真", "고양이"]
    fp32 = Embedder.from_pretrained(folder)
    int8 = Embedder.from_pretrained(folder, precision="int8")
    cosine = min(
        float((int8.embed_texts(texts) * fp32.embed_texts(texts)).sum(-1).min()),
        float((int8.embed_images(images) * fp32.embed_images(images)).sum(-1).min()),
    )
    doctor.SMALL_MODEL = json.loads(os.environ["TINY"])
    report = doctor.run_doctor(seconds=1, modes=("float32", "bfloat16", "int8"), device="cpu", report=lambda _: None)
    print(json.dumps({
        "capability": torch.backends.cpu.get_cpu_capability(),
        "auto": choose_precision(torch.device("cpu")).name,
        "int8_cosine": cosine,
        "kernel": int8.model.int8_kernel.to_json(),
        "doctor": report.to_json(),
    }))
    """
)


def run(folder, images, limits: dict[str, str], cache) -> dict:
    from tests.runtime.test_doctor import TINY

    env = {**os.environ, **limits, "XDG_CACHE_HOME": str(cache), "TINY": json.dumps(TINY)}
    command = [sys.executable, "-c", SCRIPT, str(folder), *map(str, images)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def fastest_correct(kernel: dict) -> str:
    timed = {name: t["seconds"] for name, t in kernel["timings"].items() if t["correct"]}
    return min(timed, key=timed.__getitem__)


@pytest.mark.parametrize("kind", ["native", "avx2"])
def test_every_mode_is_right_on_both_cpu_kinds(kind, altclip_checkpoint, image_folder, tmp_path):
    if kind == "avx2" and not torch.cpu._is_avx2_supported():
        pytest.skip("this CPU has no AVX2 to hold torch to")
    found = run(altclip_checkpoint, sorted(image_folder.glob("img*"))[:4], AVX2 if kind == "avx2" else {}, tmp_path)
    if kind == "avx2":
        assert found["capability"] == "AVX2" and found["auto"] == "float32"  # no native bfloat16 at AVX2
    assert found["int8_cosine"] > 0.99
    kernel = found["kernel"]
    assert kernel["kernel"] == fastest_correct(kernel)  # the choice follows its own measurements
    assert kernel["timings"]["float"]["correct"]  # the exact fallback is there on every CPU
    report = found["doctor"]
    ratios = {m["mode"]: m["ratio_to_float32"] for m in report["modes"] if m["works"]}
    assert report["fastest"]["ratio_to_float32"] >= 1 or report["fastest"]["mode"] == "float32"
    recommended = [mode for mode in ratios if f"--precision {mode}" in report["advice"]]
    assert all(mode == "float32" or ratios[mode] >= 1 for mode in recommended), report["advice"]
    if report["auto"]["ratio_to_float32"] is not None and report["auto"]["ratio_to_float32"] < 0.95:
        assert "pass --precision float32" in report["advice"]
    assert report["int8_kernel"]["kernel"] in kernel["timings"]
