"""The training loop on tiny models: learning happens, state resumes exactly, exports load in transformers."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers

import altclip
from altclip.models import normalize
from altclip.train.loop import TrainConfig, Trainer, lr_factor
from altclip.train.phases import contrastive_phase, distillation_phase

HELD_OUT = ["a red apple", "a small dog running", "a bird in the sky", "a cup of coffee", "two cats sleeping"]


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def teacher_agreement(teacher, model_folder) -> float:
    """Mean cosine between the student's and the teacher's projected text embeddings on held-out English."""
    clip = altclip.CLIPModel.from_pretrained(teacher)
    clip_tok = altclip.CLIPTokenizer.from_pretrained(teacher)
    alt = altclip.AltCLIPModel.from_pretrained(model_folder)
    alt_tok = altclip.XLMRobertaTokenizer.from_pretrained(model_folder)
    with torch.no_grad():
        a = normalize(clip.get_text_features(**clip_tok(HELD_OUT, padding=True, return_tensors="pt")))
        b = normalize(alt.get_text_features(**alt_tok(HELD_OUT, padding=True, return_tensors="pt")))
    return float((a * b).sum(-1).mean())


def test_distillation_pulls_the_student_to_the_teacher(tmp_path, teacher, student, parallel_tsv):
    phase = distillation_phase(teacher, student, parallel_tsv)
    before = teacher_agreement(teacher, student)
    summary = Trainer(phase, TrainConfig(tmp_path, steps=60, batch_size=16, lr=3e-3, warmup=5, progress=False)).fit()
    curve = losses(tmp_path)
    assert len(curve) == 60 and sum(curve[-5:]) / 5 < 0.5 * sum(curve[:5]) / 5
    after = teacher_agreement(teacher, tmp_path / "model")
    assert after > before + 0.2, (before, after)
    assert summary["skipped"] == {"data: malformed line": 2, "data: empty text": 1}
    log = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert set(log) == {"step", "epoch", "loss", "lr", "samples_per_s", "skipped"} and log["samples_per_s"] > 0
    # only the text tower moved
    start, end = altclip.AltCLIPModel.from_pretrained(student), altclip.AltCLIPModel.from_pretrained(tmp_path / "model")
    assert torch.equal(start.text_projection.weight, end.text_projection.weight)
    assert torch.equal(start.vision_model.post_layernorm.weight, end.vision_model.post_layernorm.weight)
    assert not torch.equal(start.text_model.transformation.weight, end.text_model.transformation.weight)


def test_contrastive_learns_with_a_frozen_image_tower(tmp_path, student, pairs_jsonl):
    phase = contrastive_phase(student, pairs_jsonl)
    summary = Trainer(phase, TrainConfig(tmp_path, steps=40, batch_size=8, lr=2e-3, progress=False)).fit()
    curve = losses(tmp_path)
    assert sum(curve[-5:]) < sum(curve[:5])
    assert summary["skipped"]["data: malformed line"] == 1 and summary["skipped"]["data: empty text"] == 1
    assert summary["skipped"].get("image: not_image", 0) >= 1  # the broken image, met at least once
    start, end = altclip.AltCLIPModel.from_pretrained(student), altclip.AltCLIPModel.from_pretrained(tmp_path / "model")
    assert torch.equal(
        start.vision_model.embeddings.patch_embedding.weight, end.vision_model.embeddings.patch_embedding.weight
    )
    assert torch.equal(start.visual_projection.weight, end.visual_projection.weight)
    assert not torch.equal(start.logit_scale, end.logit_scale)
    # the export is a Hugging Face folder both libraries load, with equal outputs
    theirs = transformers.AltCLIPModel.from_pretrained(tmp_path / "model").eval()
    processor = altclip.AltCLIPProcessor.from_pretrained(tmp_path / "model")
    inputs = processor(
        text=["a red circle", "蓝色方形"], images=[phase.dataset.rows[0]["image"]], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        torch.testing.assert_close(end(**inputs).logits_per_image, theirs(**inputs).logits_per_image, atol=1e-5, rtol=0)


class Crash(RuntimeError):
    pass


def with_dropout(student, folder):
    """The student with dropout on, so a resumed run must also restore the random state."""
    import shutil

    shutil.copytree(student, folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"].update(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.1)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(("accumulate", "dropout"), [(1, True), (2, False)])
def test_resume_gives_the_uninterrupted_losses(tmp_path, teacher, student, parallel_tsv, accumulate, dropout):
    if dropout:
        student = with_dropout(student, tmp_path / "dropout-student")
    config = dict(steps=8, batch_size=8, accumulate=accumulate, lr=1e-3, warmup=2, save_every=3, progress=False)
    Trainer(distillation_phase(teacher, student, parallel_tsv), TrainConfig(tmp_path / "straight", **config)).fit()

    def crash_at_5(step: int, loss: float) -> None:
        if step == 5:
            raise Crash

    interrupted = tmp_path / "interrupted"
    with pytest.raises(Crash):
        Trainer(distillation_phase(teacher, student, parallel_tsv), TrainConfig(interrupted, **config)).fit(crash_at_5)
    assert [p.name for p in (interrupted / "checkpoints").iterdir()] == ["step-000003"]
    Trainer(distillation_phase(teacher, student, parallel_tsv), TrainConfig(interrupted, resume=True, **config)).fit()
    assert losses(interrupted) == losses(tmp_path / "straight")  # bit for bit, steps 4 to 8 included
    ours = altclip.AltCLIPModel.from_pretrained(interrupted / "model").state_dict()
    straight = altclip.AltCLIPModel.from_pretrained(tmp_path / "straight" / "model").state_dict()
    assert all(torch.equal(ours[k], straight[k]) for k in ours)
    assert sorted(p.name for p in (interrupted / "checkpoints").iterdir()) == ["step-000006", "step-000008"]


def test_accumulation_matches_a_bigger_batch(tmp_path, teacher, student, parallel_tsv):
    """Dropout-free distillation: 2 micro-batches of 8 give the step of one batch of 16."""
    common = dict(steps=3, lr=1e-3, clip_grad=None, progress=False)
    Trainer(
        distillation_phase(teacher, student, parallel_tsv), TrainConfig(tmp_path / "a", batch_size=16, **common)
    ).fit()
    Trainer(
        distillation_phase(teacher, student, parallel_tsv),
        TrainConfig(tmp_path / "b", batch_size=8, accumulate=2, **common),
    ).fit()
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "b"), abs=1e-5)


def test_bf16_and_gradient_checkpointing(tmp_path, teacher, student, parallel_tsv):
    common = dict(steps=4, batch_size=8, lr=1e-3, progress=False)
    Trainer(distillation_phase(teacher, student, parallel_tsv), TrainConfig(tmp_path / "plain", **common)).fit()
    Trainer(
        distillation_phase(teacher, student, parallel_tsv),
        TrainConfig(tmp_path / "ckpt", gradient_checkpointing=True, **common),
    ).fit()
    assert losses(tmp_path / "plain") == pytest.approx(losses(tmp_path / "ckpt"), abs=1e-5)
    Trainer(
        distillation_phase(teacher, student, parallel_tsv), TrainConfig(tmp_path / "bf16", precision="bf16", **common)
    ).fit()
    assert all(math.isfinite(x) for x in losses(tmp_path / "bf16"))
    assert losses(tmp_path / "bf16") == pytest.approx(losses(tmp_path / "plain"), rel=0.05)
    with pytest.raises(ValueError, match="fp16 training needs a GPU"):
        Trainer(
            distillation_phase(teacher, student, parallel_tsv),
            TrainConfig(tmp_path / "fp16", precision="fp16", **common),
        )


def test_schedule():
    assert [round(lr_factor(s, 4, 20, 0.0), 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 20, 0.0) == 1.0 and lr_factor(12, 4, 20, 0.0) == pytest.approx(0.5)
    assert lr_factor(20, 4, 20, 0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig("x", precision="fp8")


def test_an_epoch_without_a_usable_batch_is_an_error(tmp_path, student):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"image": f"missing-{i}.png", "caption": f"caption {i}"}) + "\n" for i in range(8))
    )
    trainer = Trainer(
        contrastive_phase(student, pairs), TrainConfig(tmp_path / "run", steps=3, batch_size=4, progress=False)
    )
    with pytest.raises(ValueError, match=r"gave no usable batch.*image: missing"):
        trainer.fit()
