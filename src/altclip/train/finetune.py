"""``altclip finetune``: contrastive fine-tuning on one's own image-text pairs, of the whole model, of the last
layers of each tower, or of LoRA adapters alone.

What trains (``FinetuneConfig``):

* ``lora``: low-rank adapters on the chosen towers' attention projections and MLPs; everything else is frozen,
  the logit scale too. The run's model is the adapter (``adapter_config.json``, ``adapter_model.safetensors``),
  which ``Embedder.from_pretrained(base, adapter=...)`` merges as the base loads; with ``merge`` it is also
  merged into a Hugging Face folder that transformers loads.
* ``unlock_text_layers`` / ``unlock_image_layers``: that tower trains its last N layers and what follows them
  (``lora.unlock_last_layers`` states the rule; its projection goes with it); None trains the whole tower.
* neither: full fine-tuning, both towers and the logit scale.

``augment``: training images are augmented (``altclip.processing.augment``: random resized crop and colour
jitter; flip only when asked), each sample's draw seeded by the run's seed, the epoch and the sample, so a
resumed run is exact. Pairs from tar shards are not augmented (their stream has no fixed sample index).

The objective, data formats and loop are phase 2's (``contrastive_phase``, ``Trainer``): checkpoints, exact
resumption and torchrun work the same.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from altclip.errors import InputError
from altclip.files import atomic_path, atomic_write_bytes
from altclip.modeling.lora import Adapter, LoRAConfig, add_lora, encoder_layers, merge_lora, unlock_last_layers
from altclip.processing.augment import Augment
from altclip.train.data import AugmentedPairs, ImagePairs
from altclip.train.loop import Phase, TrainConfig, Trainer
from altclip.train.phases import contrastive_phase, text_lengths

TOWERS = (("text", "text_model", "text_projection"), ("image", "vision_model", "visual_projection"))


@dataclass
class FinetuneConfig:
    lora: LoRAConfig | None = None
    unlock_text_layers: int | None = None  # None: the whole text tower trains
    unlock_image_layers: int | None = None  # None: the whole image tower trains
    merge: bool = False  # LoRA: also write the merged Hugging Face folder
    augment: Augment | None = field(default_factory=Augment)  # None: the images as evaluation sees them

    def __post_init__(self) -> None:
        unlocked = self.unlock_text_layers is not None or self.unlock_image_layers is not None
        if self.lora is not None and unlocked:
            raise InputError("choose LoRA (--lora) or unlocked layers (--unlock-*-layers), not both")
        if self.merge and self.lora is None:
            raise InputError("--merge merges LoRA adapters into the model; it needs --lora")


def set_trainable(model: nn.Module, config: FinetuneConfig, seed: int = 0) -> dict[str, Any]:
    """Freeze and unfreeze ``model``'s parameters (or add adapters) as ``config`` says; returns the counts."""
    if config.lora is not None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # the adapters' A matrices: the same on every process and every resume
            adapted = add_lora(model, config.lora)
    else:
        adapted = []
        trains_any = False
        for tower, module, projection in TOWERS:
            tower_module = getattr(model, module)
            given = getattr(config, f"unlock_{tower}_layers")
            count = len(encoder_layers(tower_module))
            layers = count if given is None else given
            unlock_last_layers(tower_module, layers)
            getattr(model, projection).requires_grad_(layers > 0)
            trains_any |= layers > 0
        model.logit_scale.requires_grad_(trains_any)
    total = sum(p.numel() for p in model.parameters())
    base = total - sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise InputError("nothing would train: unlock at least one layer, or use --lora")
    return {"parameters": base, "trainable": trainable, "share": trainable / base, "adapted_modules": len(adapted)}


@dataclass
class FinetunePhase(Phase):
    """Phase 2's pieces, exported as the fine-tuning says: the adapter (and the merged model), or the model."""

    finetune: FinetuneConfig | None = None
    base: str = ""
    counts: dict[str, Any] | None = None
    before_export: Callable[[], None] | None = None  # the best weights put back (``Validator.restore``)

    def export(self, folder: Path) -> None:
        if self.before_export is not None:
            self.before_export()
        config = self.finetune or FinetuneConfig()
        if config.lora is None:
            super().export(folder)
            return
        adapter = Adapter.from_model(self.model, config.lora, self.base)
        if not config.merge:
            adapter.save(folder)
            self.processor.save_pretrained(folder)
            return
        adapter.save(folder.parent / "adapter")
        merge_lora(self.model)
        super().export(folder)


def finetune_phase(
    model_path: str | Path,
    data: str | Path,
    config: FinetuneConfig,
    local_loss: bool = False,
    shuffle_buffer: int = 2000,
    seed: int = 0,
) -> FinetunePhase:
    """Phase 2 on ``data`` (pairs: JSONL, CSV or tar shards) with what trains set by ``config``."""
    phase = contrastive_phase(
        model_path, data, freeze_vision=False, local_loss=local_loss, shuffle_buffer=shuffle_buffer
    )
    counts = set_trainable(phase.model, config, seed)
    given = {f.name: getattr(phase, f.name) for f in fields(Phase)}
    if config.augment is not None and isinstance(phase.dataset, ImagePairs):
        given["dataset"] = AugmentedPairs(phase.dataset, config.augment, seed)
    return FinetunePhase(**given, finetune=config, base=str(model_path), counts=counts)


VALIDATION_LOG, BEST, PLOT = "validation.jsonl", "best.safetensors", "training.png"


def split_validation(phase: FinetunePhase, fraction: float, seed: int, out: Path) -> Path:
    """Hold ``fraction`` of the training images out, with all their captions (so no image is on both sides):
    their pairs go to ``out/val.jsonl`` and leave the training data. Returns that file."""
    if not 0 < fraction < 1:
        raise InputError(f"a validation fraction must be between 0 and 1, got {fraction}")
    dataset = phase.dataset
    if not isinstance(dataset, ImagePairs):
        raise InputError("a validation fraction splits a pairs file; with tar shards give --val FILE")
    images = sorted({str(r["image"]) for r in dataset.rows})
    held = set(random.Random(seed).sample(images, max(1, round(fraction * len(images)))))
    if len(held) == len(images):
        raise InputError(f"--val {fraction} would hold out every one of the {len(images)} images")
    val = [r for r in dataset.rows if str(r["image"]) in held]
    dataset.rows = [r for r in dataset.rows if str(r["image"]) not in held]
    if phase.lengths is not None:
        phase.lengths = functools.partial(text_lengths, phase.processor.tokenizer, dataset.rows, ("caption",))
    lines = [json.dumps({"image": str(r["image"]), "caption": r["caption"], "lang": r.get("lang", "")}) for r in val]
    return atomic_write_bytes(out / "val.jsonl", ("\n".join(lines) + "\n").encode())


Scorer = Callable[[Any, Path], dict[str, Any]]  # (embedder, pairs file) -> RetrievalScores per language


@dataclass
class Validation:
    """Held-out retrieval during training: ``data`` (image-text pairs) every ``every`` steps (and at the last),
    scored by ``score`` (the command passes ``altclip.evaluate.retrieval``'s recall, R@1/5/10 and MR per
    language, which sits beside training, not below it) and ranked by ``metric`` ("MR": the mean over languages
    of each language's MR, or "MR:LANG" for one language); training stops after ``patience`` evaluations without
    a better score (None: never)."""

    data: Path
    every: int
    score: Scorer
    metric: str = "MR"
    patience: int | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise InputError(f"validation every {self.every} steps: it must be at least 1")
        if self.metric != "MR" and not self.metric.startswith("MR:"):
            raise InputError(f"the validation metric is MR or MR:LANG (MR:zh, say), not {self.metric!r}")


class Validator:
    """``Trainer.fit``'s ``on_step``: evaluates, logs (``validation.jsonl``, ``training.png``), keeps the best
    weights that train (``best.safetensors``) and says when to stop. Every process evaluates the same weights
    on the same data, so all of them stop together; process 0 writes. ``restore`` puts the best weights back
    (``FinetunePhase.export`` calls it), so the run's model is the best one, not the last."""

    def __init__(
        self, phase: FinetunePhase, validation: Validation, out: Path, total: int, start: int = 0, main: bool = True
    ) -> None:
        self.phase, self.validation, self.out, self.total, self.main = phase, validation, out, total, main
        self.best: float | None = None
        self.best_step: int | None = None
        self.stale = 0
        for record in read_log(out / VALIDATION_LOG):  # a run resumed at ``start`` goes on from what it had found
            if record["step"] <= start:  # later ones run again
                self._account(record["step"], record["value"])

    def __call__(self, step: int, loss: float) -> bool:
        if step % self.validation.every and step != self.total:
            return False
        value, languages = self.evaluate()
        improved = self._account(step, value)
        if self.main:
            record = {"step": step, "loss": loss, "metric": self.validation.metric, "value": value}
            append_log(self.out / VALIDATION_LOG, {**record, "best": improved, "languages": languages})
            if improved:
                save_trainable(self.phase.model, self.out / BEST)
            plot_training(self.out)
        return self.validation.patience is not None and self.stale >= self.validation.patience

    def _account(self, step: int, value: float) -> bool:
        if self.best is None or value > self.best:
            self.best, self.best_step, self.stale = value, step, 0
            return True
        self.stale += 1
        return False

    def evaluate(self) -> tuple[float, dict[str, Any]]:
        from altclip.embedder import Embedder

        model = self.phase.model
        was_training = model.training
        model.eval()
        try:  # its own random state: a data loader draws a seed, which would shift training's dropout after it
            with torch.random.fork_rng(devices=[]):
                embedder = Embedder(model, self.phase.processor, batch_size=64)  # type: ignore[arg-type]
                scores = self.validation.score(embedder, self.validation.data)
        finally:
            model.train(was_training)
        languages = {lang: s.to_json() for lang, s in scores.items()}
        metric = self.validation.metric
        if metric == "MR":
            return sum(s.mean_recall for s in scores.values()) / len(scores), languages
        lang = metric.split(":", 1)[1]
        if lang not in scores:
            raise InputError(f"the validation data has no {lang!r} captions for {metric}; it has {sorted(scores)}")
        return scores[lang].mean_recall, languages

    def restore(self) -> None:
        if (self.out / BEST).is_file():
            restore_trainable(self.phase.model, self.out / BEST)


def save_trainable(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def restore_trainable(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_log(path: Path, record: dict[str, Any]) -> None:
    kept = [r for r in read_log(path) if r["step"] < record["step"]]  # a resumed run writes its steps again
    text = "".join(json.dumps(r) + "\n" for r in [*kept, record])
    atomic_write_bytes(path, text.encode())


def plot_training(out: Path) -> None:
    """``training.png``: the training loss by step, and the validation score by step (the best marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = read_log(out / "log.jsonl")
    checks = read_log(out / VALIDATION_LOG)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1)
    top.set_ylabel("training loss")
    if checks:
        bottom.plot([r["step"] for r in checks], [r["value"] for r in checks], marker="o")
        best = max(checks, key=lambda r: r["value"])
        bottom.plot([best["step"]], [best["value"]], marker="*", markersize=14, color="tab:red", label="best")
        bottom.set_ylabel(f"validation {checks[-1]['metric']}")
        bottom.legend()
    bottom.set_xlabel("step")
    figure.tight_layout()
    with atomic_path(out / PLOT) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def run_finetune(phase: FinetunePhase, train: TrainConfig, validation: Validation | None = None) -> dict[str, Any]:
    """Train ``phase`` with validation (when given); the model written is the best one validation saw. Returns
    the ``FitResult`` as JSON with the trainable counts and, with validation, the best step and score."""
    trainer = Trainer(phase, train)
    try:
        validator = None
        if validation is not None:
            validator = Validator(
                phase, validation, train.out, trainer.total, trainer.progress.step, trainer.group.main
            )
            phase.before_export = validator.restore
        result = trainer.fit(validator).to_json()
    finally:
        trainer.close()
    result.update(phase.counts or {})
    if validator is not None:
        result.update(best_step=validator.best_step, best=validator.best, metric=validation.metric)  # type: ignore[union-attr]
    return result
