"""The demo end to end, in miniature: every stage runs, the report and the model come out usable."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

import altclip
from altclip.cli import main
from altclip.demo.run import DemoConfig, run_demo


def test_demo_smoke_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out, as a user types it
    config = DemoConfig(
        out=Path("demo"),
        limit=80,
        width=32,
        layers=1,
        heads=2,
        teacher_epochs=2,
        distill_epochs=1,
        contrastive_epochs=1,
        batch_size=16,
        workers=0,
        progress=False,
    )
    result = run_demo(config)
    rows = result.rows
    assert len(rows) == 28 and {r.method for r in rows} == {"CLIP", "AltCLIP"}
    assert rows[0].language == "English" and all(0 <= r.scores.mean_recall <= 100 for r in rows)
    report = json.loads(result.report["json"].read_text())
    assert len(report) == 28 and result.report["chart"].stat().st_size > 1000
    assert len(result.pointing) == 14 * 2 * 2 and result.report["pointing_grid"].is_file()
    model = result.model
    ours = altclip.AltCLIPModel.from_pretrained(model)
    theirs = transformers.AltCLIPModel.from_pretrained(model).eval()
    processor = altclip.AltCLIPProcessor.from_pretrained(model)
    image = result.data.image(result.data.test[0])
    inputs = processor(text=["猫", "a cat"], images=image, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(
            ours(**inputs).logits_per_image, theirs(**inputs).logits_per_image, atol=1e-5, rtol=0
        )
    assert main(["classify", image, "--model", str(model), "--labels", "猫", "狗", "--lang", "zh", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["image"] == image
    # a second run reuses every finished stage
    again = run_demo(config)
    assert again.seconds < result.seconds and again.rows[0].scores.t2i == rows[0].scores.t2i
    stages = ["data", "teacher", "student init", "distillation", "contrastive", "evaluation"]
    assert list(result.stages) == list(again.stages) == stages
    assert sum(result.stages.values()) <= result.seconds and again.stages["teacher"] < result.stages["teacher"]
    assert min(result.gemm_gflops) > 0 and "GFLOP/s at the start" in result.describe()
    assert set(result.to_json()["float32_gemm_gflops"]) == {"start", "end"}
