"""The training loop on tiny models: learning happens, state resumes exactly, exports load in transformers."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers

import altclip
from altclip.modeling.models import normalize
from altclip.modeling.weights import SAFE_WEIGHTS, load_state_dict, save_weights
from altclip.train.loop import NO_ROWS, TrainConfig, Trainer, lr_factor
from altclip.train.objectives import MAX_LOGIT_SCALE
from altclip.train.phases import contrastive_phase, distillation_phase
from tests.train.conftest import with_dropout

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
    assert summary.skipped == {"data: malformed line": 2, "data: empty text": 1}
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
    assert summary.skipped["data: malformed line"] == 1 and summary.skipped["data: empty text"] == 1
    assert summary.skipped.get("image: not_image", 0) >= 1  # the broken image, met at least once
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


def test_patch_dropout_trains_the_image_tower_on_half_its_patches(tmp_path, student, pairs_jsonl):
    phase = contrastive_phase(student, pairs_jsonl, freeze_vision=False, cache_images=True)
    tokens: list[int] = []
    phase.model.vision_model.encoder.register_forward_hook(lambda m, args, out: tokens.append(args[0].shape[1]))
    Trainer(phase, TrainConfig(tmp_path, steps=3, batch_size=8, patch_dropout=0.5, progress=False)).fit()
    vision = phase.model.config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    assert tokens and set(tokens) == {1 + round(patches / 2)}  # the class token and half the patches
    phase.model.eval()  # inference reads every patch
    phase.model.get_image_features(torch.zeros(1, 3, vision.image_size, vision.image_size))
    assert tokens[-1] == 1 + patches
    assert "patch_dropout" not in (tmp_path / "model" / "config.json").read_text()  # a training setting alone
    frozen = contrastive_phase(student, pairs_jsonl, cache_images=True)  # phase 2: the tower is frozen
    tokens.clear()
    frozen.model.vision_model.encoder.register_forward_hook(lambda m, args, out: tokens.append(args[0].shape[1]))
    Trainer(frozen, TrainConfig(tmp_path / "frozen", steps=2, batch_size=8, patch_dropout=0.5, progress=False)).fit()
    assert tokens and set(tokens) == {1 + patches}  # a frozen tower reads every patch: its kept features stay exact


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize(("accumulate", "dropout", "grouped"), [(1, True, False), (2, False, True)])
def test_resume_gives_the_uninterrupted_losses(tmp_path, teacher, student, parallel_tsv, accumulate, dropout, grouped):
    if dropout:
        student = with_dropout(student, tmp_path / "dropout-student")
    config = dict(steps=8, batch_size=8, accumulate=accumulate, lr=1e-3, warmup=2, save_every=3, progress=False)
    config["group_by_length"] = grouped
    Trainer(distillation_phase(teacher, student, parallel_tsv), TrainConfig(tmp_path / "straight", **config)).fit()

    def crash_at_5(step: int, loss: float) -> None:
        if step == 5:
            raise Crash

    interrupted = tmp_path / "interrupted"
    with pytest.raises(Crash):
        Trainer(distillation_phase(teacher, student, parallel_tsv), TrainConfig(interrupted, **config)).fit(crash_at_5)
    assert [p.name for p in (interrupted / "checkpoints").iterdir()] == ["step-000003"]
    if accumulate == 2:  # resume reads sharded weights too (what a model over the shard size gets)
        saved = interrupted / "checkpoints" / "step-000003"
        state = load_state_dict([saved / SAFE_WEIGHTS])
        (saved / SAFE_WEIGHTS).unlink()
        assert len(save_weights(state, saved, max_shard_size="300KB")) > 2
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


def test_padding_free_training_gives_the_padded_losses(tmp_path, teacher, student, parallel_tsv):
    common = dict(steps=4, batch_size=8, lr=1e-3, progress=False)
    runs = {}
    for free in (True, False):
        phase = distillation_phase(teacher, student, parallel_tsv)
        Trainer(phase, TrainConfig(tmp_path / str(free), padding_free=free, **common)).fit()
        assert phase.model.text_model.roberta.encoder.padding_free is free
        runs[free] = losses(tmp_path / str(free))
    assert runs[True] == pytest.approx(runs[False], abs=1e-5) and len(set(runs[True])) == 4


def test_bf16_and_gradient_checkpointing(tmp_path, teacher, student, parallel_tsv):
    common = dict(steps=4, batch_size=8, lr=1e-3, progress=False)
    Trainer(distillation_phase(teacher, student, parallel_tsv), TrainConfig(tmp_path / "plain", **common)).fit()
    Trainer(
        distillation_phase(teacher, student, parallel_tsv),
        TrainConfig(tmp_path / "ckpt", gradient_checkpointing=True, **common),
    ).fit()
    assert losses(tmp_path / "plain") == pytest.approx(losses(tmp_path / "ckpt"), abs=1e-5)
    Trainer(
        distillation_phase(teacher, student, parallel_tsv),
        TrainConfig(tmp_path / "bf16", precision="bfloat16", **common),
    ).fit()
    assert all(math.isfinite(x) for x in losses(tmp_path / "bf16"))
    assert losses(tmp_path / "bf16") == pytest.approx(losses(tmp_path / "plain"), rel=0.05)
    with pytest.raises(ValueError, match="float16 training needs a GPU"):
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
    assert TrainConfig("x", precision="bf16").precision == "bfloat16"  # the short names of before 0.2
    assert TrainConfig("x", clip_grad=0).clip_grad is None  # 0 turns clipping off


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


def test_a_step_uses_exactly_accumulate_usable_micro_batches(tmp_path, student, gappy_pairs):
    """Micro-batches with no readable image are skipped and counted; they never count toward a step."""
    phase = contrastive_phase(student, gappy_pairs)
    rows: list[int] = []
    forward = phase.objective.forward
    phase.objective.forward = lambda batch: rows.append(batch["input_ids"].shape[0]) or forward(batch)
    consumed: list[int] = []
    config = TrainConfig(tmp_path, steps=5, batch_size=2, accumulate=3, lr=1e-3, progress=False)
    summary = Trainer(phase, config).fit(lambda step, loss: consumed.append(len(rows)))
    assert consumed == [3, 6, 9, 12, 15] and all(n > 0 for n in rows)
    assert summary.skipped[NO_ROWS] >= 1 and summary.skipped["image: not_image"] >= 2 * summary.skipped[NO_ROWS]
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["skipped"] == sum(summary.skipped.values())


def test_a_finished_run_continues_with_more_steps_or_epochs(tmp_path, teacher, student, parallel_tsv):
    student = with_dropout(student, tmp_path / "dropout-student")
    constant = dict(batch_size=8, lr=1e-3, min_lr_ratio=1.0, progress=False)  # the same schedule at any length

    def run(out, **config):
        return Trainer(distillation_phase(teacher, student, parallel_tsv), TrainConfig(out, **constant, **config)).fit()

    run(tmp_path / "straight", steps=8)
    run(tmp_path / "more", steps=4)
    assert run(tmp_path / "more", steps=8, resume=True).steps == 8
    assert losses(tmp_path / "more") == losses(tmp_path / "straight")  # bit for bit, dropout included

    wide = dict(constant, batch_size=128)
    one = Trainer(
        distillation_phase(teacher, student, parallel_tsv), TrainConfig(tmp_path / "e", epochs=1, **wide)
    ).fit()
    two = Trainer(
        distillation_phase(teacher, student, parallel_tsv), TrainConfig(tmp_path / "e", epochs=2, resume=True, **wide)
    ).fit()
    assert two.steps == 2 * one.steps and len(losses(tmp_path / "e")) == two.steps
    with pytest.raises(ValueError, match="batch_size 128, not 64"):
        Trainer(
            distillation_phase(teacher, student, parallel_tsv),
            TrainConfig(tmp_path / "e", epochs=3, resume=True, **dict(wide, batch_size=64)),
        )


def test_keep_counts_the_checkpoints_left(tmp_path, teacher, student, parallel_tsv):
    common = dict(steps=6, batch_size=8, save_every=2, progress=False)

    def names(out):
        return sorted(p.name for p in (out / "checkpoints").iterdir())

    for keep, left in ((2, ["step-000004", "step-000006"]), (1, ["step-000006"]), (0, [])):
        Trainer(
            distillation_phase(teacher, student, parallel_tsv), TrainConfig(tmp_path / f"k{keep}", keep=keep, **common)
        ).fit()
        assert names(tmp_path / f"k{keep}") == left and (tmp_path / f"k{keep}" / "model" / "config.json").is_file()

    def crash_at_5(step: int, loss: float) -> None:
        if step == 5:
            raise Crash

    with pytest.raises(Crash):  # keep 0 still leaves the newest while training, so a crash can resume
        Trainer(
            distillation_phase(teacher, student, parallel_tsv), TrainConfig(tmp_path / "crash", keep=0, **common)
        ).fit(crash_at_5)
    assert names(tmp_path / "crash") == ["step-000004"]
    with pytest.raises(ValueError, match="keep must not be negative"):
        TrainConfig(tmp_path, keep=-1)


def test_the_logit_scale_is_clamped_after_each_step(tmp_path, student, pairs_jsonl):
    phase = contrastive_phase(student, pairs_jsonl)
    with torch.no_grad():
        phase.model.logit_scale.fill_(5.0)  # above ln(100): one small step cannot bring it down by itself
    Trainer(phase, TrainConfig(tmp_path, steps=1, batch_size=8, lr=1e-4, progress=False)).fit()
    trained = altclip.AltCLIPModel.from_pretrained(tmp_path / "model")
    assert math.isclose(MAX_LOGIT_SCALE, math.log(100))
    assert float(trained.logit_scale.detach()) == pytest.approx(MAX_LOGIT_SCALE)
