"""altclip finetune: LoRA adapters trained alone, saved, loaded over their base and merged into a folder
transformers reads; the last layers of each tower unlocked by the stated rule; exact resume with adapters."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers

import altclip
from altclip.cli.train import retrieval_scores
from altclip.embedder import Embedder
from altclip.modeling.lora import LoRAConfig
from altclip.train.finetune import FinetuneConfig, finetune_phase
from altclip.train.loop import TrainConfig, Trainer

from .test_loop import Crash, losses


def run(tmp_path, student, pairs_jsonl, config: FinetuneConfig, name: str, **train) -> Trainer:
    phase = finetune_phase(student, pairs_jsonl, config, seed=0)
    settings = dict(steps=6, batch_size=8, lr=5e-3, progress=False) | train
    trainer = Trainer(phase, TrainConfig(tmp_path / name, **settings))
    trainer.fit()
    return trainer


def test_lora_trains_adapters_alone_and_merges_to_what_transformers_reads(tmp_path, student, pairs_jsonl):
    config = FinetuneConfig(LoRAConfig(rank=4, alpha=8, dropout=0.0), merge=True)
    trainer = run(tmp_path, student, pairs_jsonl, config, "lora")
    counts = trainer.phase.counts
    assert 0 < counts["trainable"] < 0.2 * counts["parameters"] and counts["adapted_modules"] > 0
    out = tmp_path / "lora"
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["lora"]["rank"] == 4 and adapter["base"]["model"] == str(student)

    base = altclip.AltCLIPModel.from_pretrained(student)
    merged = altclip.AltCLIPModel.from_pretrained(out / "model")
    assert torch.equal(base.logit_scale, merged.logit_scale)  # frozen: only adapters trained
    assert torch.equal(
        base.vision_model.embeddings.patch_embedding.weight, merged.vision_model.embeddings.patch_embedding.weight
    )
    query = "text_model.roberta.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(base.state_dict()[query], merged.state_dict()[query])  # the adapter merged in

    over_base = Embedder.from_pretrained(student, adapter=out / "adapter")
    processor = altclip.AltCLIPProcessor.from_pretrained(out / "model")
    inputs = processor(
        text=["a red circle", "蓝色方形"],
        images=[trainer.phase.dataset.rows[0]["image"]],
        padding=True,
        return_tensors="pt",
    )
    theirs = transformers.AltCLIPModel.from_pretrained(out / "model").eval()
    with torch.no_grad():
        expected = theirs(**inputs)
        for model in (merged, over_base.model):
            got = model(**inputs)
            torch.testing.assert_close(got.text_embeds, expected.text_embeds, atol=1e-5, rtol=0)
            torch.testing.assert_close(got.image_embeds, expected.image_embeds, atol=1e-5, rtol=0)


def test_unlocked_layers_train_and_the_rest_stays(tmp_path, student, pairs_jsonl):
    config = FinetuneConfig(unlock_text_layers=1, unlock_image_layers=0)
    run(tmp_path, student, pairs_jsonl, config, "unlocked")
    before = altclip.AltCLIPModel.from_pretrained(student).state_dict()
    after = altclip.AltCLIPModel.from_pretrained(tmp_path / "unlocked" / "model").state_dict()
    last = altclip.AltCLIPModel.from_pretrained(student).config.text_config.num_hidden_layers - 1
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    for key in changed:
        assert key.startswith(
            (f"text_model.roberta.encoder.layer.{last}.", "text_model.pre_LN.", "text_model.transformation.")
        ) or key in ("text_projection.weight", "logit_scale"), key
    assert "text_model.roberta.encoder.layer.0.attention.self.query.weight" not in changed

    with pytest.raises(ValueError, match="nothing would train"):
        finetune_phase(student, pairs_jsonl, FinetuneConfig(unlock_text_layers=0, unlock_image_layers=0))
    with pytest.raises(ValueError, match="not both"):
        FinetuneConfig(LoRAConfig(), unlock_text_layers=1)
    with pytest.raises(ValueError, match="needs --lora"):
        FinetuneConfig(merge=True)


def test_resume_with_adapters_is_exact(tmp_path, student, pairs_jsonl):
    config = FinetuneConfig(LoRAConfig(rank=2, alpha=4, dropout=0.1))
    settings = dict(steps=6, batch_size=8, lr=5e-3, save_every=2, progress=False)
    run(tmp_path, student, pairs_jsonl, config, "straight", **settings)

    def crash_at_3(step: int, loss: float) -> None:
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        Trainer(finetune_phase(student, pairs_jsonl, config), TrainConfig(tmp_path / "cut", **settings)).fit(crash_at_3)
    Trainer(finetune_phase(student, pairs_jsonl, config), TrainConfig(tmp_path / "cut", resume=True, **settings)).fit()
    assert losses(tmp_path / "cut") == losses(tmp_path / "straight")
    from safetensors.torch import load_file

    ours = load_file(str(tmp_path / "cut" / "model" / "adapter_model.safetensors"))
    straight = load_file(str(tmp_path / "straight" / "model" / "adapter_model.safetensors"))
    assert ours.keys() == straight.keys() and all(torch.equal(ours[k], straight[k]) for k in ours)


def test_the_command(tmp_path, student, pairs_jsonl):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "altclip.cli", "finetune", "--model", str(student), "--data", str(pairs_jsonl)]
    command += ["--out", str(out), "--lora", "2", "--steps", "2", "--batch-size", "8", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and 0 < summary["share"] < 0.2
    assert (out / "model" / "adapter_model.safetensors").is_file()
    similarity = [sys.executable, "-m", "altclip.cli", "similarity", "--text", "a red circle", "--image"]
    similarity += [str(pairs_jsonl.parent / "red-circle.png"), "--model", str(student), "--adapter", str(out / "model")]
    shown = subprocess.run([*similarity, "--json"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]


def test_validation_keeps_the_best_and_stops_after_its_patience(tmp_path, student, pairs_jsonl, monkeypatch):
    from safetensors.torch import load_file

    from altclip.train import finetune

    out = tmp_path / "validated"
    phase = finetune_phase(student, pairs_jsonl, FinetuneConfig(LoRAConfig(rank=2, alpha=4, dropout=0.0)))
    rows = len(phase.dataset.rows)
    val = finetune.split_validation(phase, 0.25, 0, out)
    held = {json.loads(line)["image"] for line in val.read_text().splitlines()}
    assert held and not held & {str(r["image"]) for r in phase.dataset.rows} and len(phase.dataset.rows) < rows

    scores = iter([10.0, 12.0, 11.0, 11.5, 30.0])  # best at the second check; two worse ones: patience 2 stops
    monkeypatch.setattr(finetune.Validator, "evaluate", lambda self: (next(scores), {}))
    validation = finetune.Validation(val, every=2, score=retrieval_scores, patience=2)
    result = finetune.run_finetune(phase, TrainConfig(out, steps=20, batch_size=8, lr=5e-3, progress=False), validation)
    assert result["steps"] == 8 and result["best_step"] == 4 and result["best"] == 12.0
    log = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6, 8] and [r["best"] for r in log] == [True, True, False, False]
    assert (out / "training.png").stat().st_size > 1000
    best = load_file(str(out / "best.safetensors"))
    written = load_file(str(out / "model" / "adapter_model.safetensors"))
    assert best.keys() == written.keys() and all(torch.equal(best[k], written[k]) for k in best)
    last = load_file(str(out / "checkpoints" / "step-000008" / "model.safetensors"))  # the last step's weights
    assert not all(torch.equal(best[k], last[k]) for k in best)


def test_real_validation_scores_the_held_out_pairs(tmp_path, student, pairs_jsonl):
    from altclip.train import finetune

    out = tmp_path / "real"
    phase = finetune_phase(student, pairs_jsonl, FinetuneConfig(unlock_text_layers=1, unlock_image_layers=0))
    val = finetune.split_validation(phase, 0.3, 1, out)
    validation = finetune.Validation(val, every=2, score=retrieval_scores, metric="MR:zh")
    result = finetune.run_finetune(phase, TrainConfig(out, steps=4, batch_size=8, lr=5e-3, progress=False), validation)
    log = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4] and set(log[0]["languages"]) == {"en", "zh"}
    assert result["best"] == max(r["value"] for r in log) == pytest.approx(max(r["languages"]["zh"]["MR"] for r in log))


def test_a_collection_remembers_its_adapter(tmp_path, student, pairs_jsonl):
    from altclip.search.collection import Collection, embed_collection
    from tests.conftest import make_image_folder

    run(tmp_path, student, pairs_jsonl, FinetuneConfig(LoRAConfig(rank=2)), "lora", steps=2)
    adapter = tmp_path / "lora" / "model"
    folder = make_image_folder(tmp_path / "photos", good=4, broken=False)
    embedder = Embedder.from_pretrained(student, adapter=adapter)
    embed_collection(folder, tmp_path / "emb", embedder, str(student), workers=0, progress=False)
    recorded = Collection.open(tmp_path / "emb").manifest.adapter
    assert recorded["path"] == str(adapter.resolve()) and len(recorded["digest"]) == 32
    with pytest.raises(ValueError, match="adapter"):  # vectors of the base alone would mix with these
        embed_collection(folder, tmp_path / "emb", Embedder.from_pretrained(student), str(student), workers=0)
    from altclip.search.index import build_index

    build_index(tmp_path / "emb")
    search = [sys.executable, "-m", "altclip.cli", "search", str(tmp_path / "emb"), "--text", "a red circle", "--json"]
    found = subprocess.run(search, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-2000:]
    expected = embedder.embed_texts(["a red circle"]).numpy()
    vectors = Collection.open(tmp_path / "emb").embeddings().astype("float32")
    scores = [h["score"] for h in json.loads(found.stdout)]
    assert max(scores) == pytest.approx(float((vectors @ expected[0]).max()), abs=2e-3)


@pytest.mark.parametrize(("save_every", "crash"), [(2, 5), (4, 7)])  # (4, 7): a validation past the checkpoint
def test_resume_with_validation_gives_the_uninterrupted_best(
    tmp_path, student, pairs_jsonl, monkeypatch, save_every, crash
):
    from safetensors.torch import load_file

    from altclip.train import finetune

    def phase_and_validation(out):
        phase = finetune_phase(student, pairs_jsonl, FinetuneConfig(LoRAConfig(rank=2, alpha=4, dropout=0.1)))
        val = finetune.split_validation(phase, 0.25, 0, out)
        return phase, finetune.Validation(val, every=2, score=retrieval_scores)

    settings = dict(steps=8, batch_size=8, lr=5e-3, save_every=save_every, progress=False)
    phase, validation = phase_and_validation(tmp_path / "straight")
    straight = finetune.run_finetune(phase, TrainConfig(tmp_path / "straight", **settings), validation)

    real = finetune.Validator.__call__

    def crash_after(self, step, loss):
        stop = real(self, step, loss)
        if step == crash:
            raise Crash
        return stop

    monkeypatch.setattr(finetune.Validator, "__call__", crash_after)
    phase, validation = phase_and_validation(tmp_path / "cut")
    with pytest.raises(Crash):
        finetune.run_finetune(phase, TrainConfig(tmp_path / "cut", **settings), validation)
    monkeypatch.undo()
    phase, validation = phase_and_validation(tmp_path / "cut")
    resumed = finetune.run_finetune(phase, TrainConfig(tmp_path / "cut", resume=True, **settings), validation)
    assert (resumed["best_step"], resumed["best"]) == (straight["best_step"], straight["best"])
    logs = [(tmp_path / run / "validation.jsonl").read_text() for run in ("straight", "cut")]
    assert logs[0] == logs[1]
    ours, theirs = (
        load_file(str(tmp_path / run / "model" / "adapter_model.safetensors")) for run in ("cut", "straight")
    )
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.parametrize("lora", [True, False])
def test_clip_fine_tunes_too(tmp_path, teacher, pairs_jsonl, lora):
    """The CLIP family: adapters merged into a folder transformers' CLIPModel reads, or its last layer unlocked."""
    config = FinetuneConfig(LoRAConfig(rank=2), merge=True) if lora else FinetuneConfig(unlock_image_layers=1)
    trainer = run(tmp_path, teacher, pairs_jsonl, config, "clip", steps=3)
    assert trainer.phase.counts["trainable"] > 0
    ours = altclip.CLIPModel.from_pretrained(tmp_path / "clip" / "model")
    base = altclip.CLIPModel.from_pretrained(teacher)
    changed = {k for k, v in base.state_dict().items() if not torch.equal(v, ours.state_dict()[k])}
    assert changed and (
        lora
        or all(
            k.startswith(
                (
                    "text_model.",
                    f"vision_model.encoder.layers.{base.config.vision_config.num_hidden_layers - 1}.",
                    "vision_model.post",
                    "text_projection",
                    "visual_projection",
                    "logit_scale",
                )
            )
            for k in changed
        )
    )
    processor = altclip.CLIPProcessor.from_pretrained(tmp_path / "clip" / "model")
    inputs = processor(
        text=["a red circle"], images=[trainer.phase.dataset.rows[0]["image"]], padding=True, return_tensors="pt"
    )
    theirs = transformers.CLIPModel.from_pretrained(tmp_path / "clip" / "model").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(**inputs).logits_per_image, theirs(**inputs).logits_per_image, atol=1e-5, rtol=0
        )


def test_a_resumed_validator_counts_only_the_validations_before_its_checkpoint(tmp_path):
    from altclip.train import finetune

    log = [{"step": 2, "value": 1.0}, {"step": 4, "value": 3.0}, {"step": 6, "value": 2.0}]
    (tmp_path / finetune.VALIDATION_LOG).write_text("".join(json.dumps(r) + "\n" for r in log))
    validation = finetune.Validation(tmp_path / "val.jsonl", every=2, score=retrieval_scores)
    at_4 = finetune.Validator(None, validation, tmp_path, total=8, start=4)  # step 6 runs again after it
    at_6 = finetune.Validator(None, validation, tmp_path, total=8, start=6)
    assert (at_4.best_step, at_4.best, at_4.stale) == (4, 3.0, 0)
    assert (at_6.best_step, at_6.best, at_6.stale) == (4, 3.0, 1)
