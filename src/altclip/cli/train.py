"""altclip init and altclip train distill/contrastive: AltCLIP's recipe, phase by phase."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from altclip.cli.common import Subparsers, add_device, add_json, command, emit, group


def cmd_init(args: argparse.Namespace) -> int:
    """build the starting AltCLIP from a CLIP teacher and an XLM-R text tower

    The CLIP teacher's image tower and projections with an XLM-R text tower, its pre_LN and a transformation to
    the teacher's text width: the student phase 1 trains.

    examples:
      altclip init --clip openai/clip-vit-large-patch14 --text FacebookAI/xlm-roberta-large --out student
    """
    from altclip.train.student import build_student

    out = build_student(args.clip, args.text, args.out, tokenizer=args.tokenizer)
    emit(args, {"out": str(out)}, ["student"], [(str(out),)])
    return 0


def training_config(args: argparse.Namespace):
    """The ``TrainConfig`` the options name: each of its fields from the option of the same name."""
    from altclip.train.loop import TrainConfig

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**given, progress=not args.json)


def cmd_distill(args: argparse.Namespace) -> int:
    """phase 1: distil CLIP's text tower into the student on parallel text (TSV or JSONL: src, tgt, lang)

    Phase 1: the student's pooled text vector (token 0 after pre_LN and transformation) is pulled to the
    teacher's (EOS after the final LayerNorm) by MSE, for the English and the translated side.

    examples:
      altclip train distill --teacher openai/clip-vit-large-patch14 --student student \\
          --data parallel.tsv --out run1 --steps 20000 --batch-size 64 --lr 1e-4 --warmup 500 \\
          --precision bfloat16 --save-every 1000
      torchrun --nproc_per_node 4 -m altclip.cli train distill ... (same arguments)
      altclip train distill ... --resume    # after an interruption
    """
    from altclip.train.phases import distillation_phase

    phase = distillation_phase(
        args.teacher,
        args.student,
        args.data,
        shuffle_buffer=args.shuffle_buffer,
        cache_targets=args.cache_targets,
        source_fraction=args.source_fraction,
    )
    return train(args, phase)


def cmd_contrastive(args: argparse.Namespace) -> int:
    """phase 2: symmetric InfoNCE on image-text pairs (JSONL or CSV: image, caption, lang)

    Phase 2: the text tower learns against the frozen image tower with CLIP's symmetric InfoNCE and learned
    logit scale (clamped at ln 100 after each step). Features are gathered across processes, so a micro-batch's
    negatives are every process's rows (batch-size x processes); --accumulate adds samples to a step, not
    negatives.

    examples:
      altclip train contrastive --model run1/model --data pairs.jsonl --out run2 \\
          --steps 5000 --batch-size 128 --lr 2e-5 --warmup 200 --precision bfloat16 --workers 4
      torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint HOST:29500 -m altclip.cli train contrastive ...
    """
    from altclip.train.phases import contrastive_phase

    phase = contrastive_phase(
        args.model,
        args.data,
        freeze_vision=not args.unfreeze_vision,
        local_loss=args.local_loss,
        shuffle_buffer=args.shuffle_buffer,
        cache_images=args.cache_images,
    )
    return train(args, phase)


def cmd_finetune(args: argparse.Namespace) -> int:
    """fine-tune AltCLIP or CLIP on your own image-text pairs: the whole model, its last layers, or LoRA adapters

    The pairs are phase 2's (JSONL or CSV: image, caption; or tar shards). Without --lora or --unlock-*, every
    weight trains. --unlock-text-layers N / --unlock-image-layers N train that tower's last N layers and what
    follows them (its final LayerNorm and projection); the embeddings only when N is the whole tower. --lora R
    trains rank-R adapters alone: --out/model is then the adapter, which `--adapter` loads over the base (every
    command that takes --model), and --merge also writes the merged Hugging Face folder.

    examples:
      altclip finetune --model BAAI/AltCLIP --data pairs.jsonl --out run --lora 16 --epochs 3 --lr 1e-4
      altclip finetune --model BAAI/AltCLIP --data pairs.jsonl --out run --lora 16 --merge
      altclip finetune --model BAAI/AltCLIP --data pairs.jsonl --out run --unlock-text-layers 4 \\
          --unlock-image-layers 2 --lr 1e-5
      altclip embed ~/photos --out photos.emb --model BAAI/AltCLIP --adapter run/model
    """
    from altclip.data.shards import is_shard_spec
    from altclip.modeling.lora import LoRAConfig
    from altclip.processing.augment import Augment
    from altclip.runtime.memory import fix_mmap_threshold
    from altclip.train.finetune import FinetuneConfig, Validation, finetune_phase, run_finetune, split_validation

    fix_mmap_threshold()  # freed activations go back to the system (``altclip.runtime.memory``)
    lora = None
    if args.lora is not None:
        lora = LoRAConfig(
            args.lora, args.lora_alpha or 2.0 * args.lora, args.lora_dropout, args.lora_towers, args.lora_targets
        )
    augment = None if args.no_augment else Augment(flip=args.flip)
    if augment is not None and is_shard_spec(args.data):
        print("altclip: pairs from tar shards are not augmented (--no-augment is implied)", file=sys.stderr)
        augment = None
    config = FinetuneConfig(lora, args.unlock_text_layers, args.unlock_image_layers, args.merge, augment)
    phase = finetune_phase(
        args.model, args.data, config, local_loss=args.local_loss, shuffle_buffer=args.shuffle_buffer, seed=args.seed
    )
    validation = None
    if args.val is not None:
        fraction = float(args.val) if args.val.replace(".", "", 1).isdigit() and float(args.val) < 1 else None
        data = split_validation(phase, fraction, args.seed, Path(args.out)) if fraction else Path(args.val)
        validation = Validation(data, args.val_every, retrieval_scores, args.val_metric, args.patience)
    counts = phase.counts or {}
    if not args.json:
        print(f"training {counts['trainable']:,} of {counts['parameters']:,} parameters ({counts['share']:.2%})")
    result = run_finetune(phase, training_config(args), validation)
    rows = [(k, v) for k, v in result.items() if not isinstance(v, dict)]
    emit(args, result, ["", ""], rows)
    return 0


def retrieval_scores(embedder: Any, data: Path) -> dict[str, Any]:
    """Recall per language of a pairs file (``altclip eval``'s), for validation during fine-tuning."""
    from altclip.evaluate.retrieval import evaluate_pairs

    return evaluate_pairs(embedder, data, workers=0, progress=False)[0]


def train(args: argparse.Namespace, phase: Any) -> int:
    """Run a phase with the options' ``TrainConfig``; process 0 prints what it did."""
    from altclip.train.loop import Trainer

    trainer = Trainer(phase, training_config(args))
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    if trainer.group.main:
        rows = [
            ("steps", result.steps),
            ("model", result.model),
            ("log", str(trainer.log_path)),
            *((f"skipped ({k})", v) for k, v in sorted(result.skipped.items())),
        ]
        emit(args, result.to_json(), ["", ""], rows)
    return 0


def training_options() -> argparse.ArgumentParser:
    """The options both phases share. Each ``TrainConfig`` field has the option of its name, with its type and
    default."""
    from altclip.runtime.hardware import TRAINING_PRECISIONS
    from altclip.train.loop import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    options = argparse.ArgumentParser(add_help=False)
    g = options.add_argument_group("training")

    def field(flag: str, help: str | None = None, **given: Any) -> None:
        value = defaults[flag[2:].replace("-", "_")]
        if isinstance(value, bool):
            g.add_argument(flag, action="store_true", help=help)
        else:
            g.add_argument(flag, **{"type": type(value), "default": value, "help": help, **given})

    g.add_argument(
        "--data",
        required=True,
        help="a data file, or WebDataset tar shards: one .tar, a brace pattern ('shards/{00000..00127}.tar') or "
        "a text file listing them (tar shards need --steps)",
    )
    g.add_argument("--shuffle-buffer", type=int, default=2000, help="tar shards: samples in the shuffle buffer")
    g.add_argument("--out", required=True, help="run folder: checkpoints/, log.jsonl and the final model/")
    field("--steps", "optimizer steps (default: --epochs over the data)", type=int)
    field("--epochs")
    field("--batch-size", "per process and micro-batch")
    field("--accumulate", "micro-batches per optimizer step (contrastive: each micro-batch keeps its own "
          "negatives, batch-size x processes rows; accumulation grows the step, not the negatives)")  # fmt: skip
    field("--lr")
    field("--weight-decay")
    field("--warmup", "linear warm-up steps before the cosine decay")
    field("--min-lr-ratio")
    field("--clip-grad", "max gradient norm (0: off)")
    field("--precision", "float32, or mixed precision under autocast: bfloat16 (CPU or GPU) or float16 (GPU, with "
          "a gradient scaler); fp32, bf16 and fp16 are accepted too", choices=TRAINING_PRECISIONS)  # fmt: skip
    field("--gradient-checkpointing", "recompute activations in the backward pass")
    field("--group-by-length", "batches of texts of about one length (less padding; a data file, not tar shards)")
    field("--patch-dropout", "the share of patch tokens a training image tower drops (open_clip's patch dropout, "
          "FLIP; with --unfreeze-vision): 0.5 about halves the tower's cost")  # fmt: skip
    field("--seed")
    field("--save-every", "steps between checkpoints (0: only at the end)")
    field("--keep", "newest checkpoints kept; 0: none once the final model is written (the newest stays while "
          "training, so --resume works after a crash)")  # fmt: skip
    field("--resume", "continue from the newest checkpoint in --out (also a finished run, given more --steps or "
          "--epochs)")  # fmt: skip
    field("--workers", "data loading processes")
    add_device(g)
    add_json(g)
    return options


def add_local_loss(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--local-loss",
        action="store_true",
        help="each process scores its rows against the gathered batch (open_clip's local loss): the same "
        "loss and gradients as the global one, in O(rows x global batch) memory",
    )


def register(sub: Subparsers, model: argparse.ArgumentParser) -> None:
    p = command(sub, "init", cmd_init)
    p.add_argument("--clip", required=True, help="the CLIP teacher (hub name or folder)")
    p.add_argument("--text", required=True, help="an XLM-R checkpoint, or a folder with only its config.json")
    p.add_argument("--tokenizer", help="where the XLM-R tokenizer is, if not beside --text")
    p.add_argument("--out", required=True)
    add_json(p)

    training = training_options()
    phases = group(
        sub,
        "train",
        "train AltCLIP: phase 1 (distill) or phase 2 (contrastive)",
        "phase",
        "altclip train distill --teacher openai/clip-vit-large-patch14 --student student --data parallel.tsv \\\n"
        "    --out run1\n"
        "altclip train contrastive --model run1/model --data pairs.jsonl --out run2",
    )
    p = command(phases, "distill", cmd_distill, [training])
    p.add_argument("--teacher", required=True, help="the CLIP teacher")
    p.add_argument("--student", required=True, help="the AltCLIP student (from `altclip init`)")
    p.add_argument(
        "--cache-targets",
        action="store_true",
        help="compute the teacher's vector once per distinct English sentence and keep it (memory grows with "
        "them): for data where each English sentence has many translations",
    )
    p.add_argument(
        "--source-fraction",
        type=float,
        default=1.0,
        metavar="F",
        help="the share of each batch whose English side the student reads too (default 1: all, as the paper); "
        "where each English sentence has many translations, 0.25 reads each about as often at less cost",
    )
    p = command(phases, "contrastive", cmd_contrastive, [training])
    p.add_argument("--model", required=True, help="the AltCLIP (or CLIP) model to train")
    p.add_argument("--unfreeze-vision", action="store_true", help="train the image tower too")
    add_local_loss(p)
    p.add_argument(
        "--cache-images",
        action="store_true",
        help="decode each distinct image once and keep its pixels, and with the image tower frozen its features "
        "too (memory grows with them): for small data sets read many times, where each image has many captions",
    )

    p = command(sub, "finetune", cmd_finetune, [training])
    p.add_argument("--model", required=True, help="the AltCLIP or CLIP model to fine-tune (hub name or folder)")
    p.add_argument("--lora", type=int, metavar="RANK", help="train rank-RANK LoRA adapters alone")
    p.add_argument("--lora-alpha", type=float, help="the adapters' alpha (scaling alpha/rank; default 2 x rank)")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the adapters' input")
    p.add_argument("--lora-towers", nargs="+", default=["text", "image"], choices=["text", "image"])
    p.add_argument(
        "--lora-targets",
        nargs="+",
        default=["attention", "mlp"],
        help="attention (q, k, v and output projections), mlp (its two maps), or module names such as q_proj",
    )
    p.add_argument("--unlock-text-layers", type=int, metavar="N", help="train the text tower's last N layers only")
    p.add_argument("--unlock-image-layers", type=int, metavar="N", help="train the image tower's last N layers only")
    p.add_argument("--merge", action="store_true", help="with --lora: also write the merged Hugging Face folder")
    p.add_argument(
        "--no-augment",
        action="store_true",
        help="train on the images as evaluation sees them (default: random resized crop of 60-100%% of the area "
        "and colour jitter of 20%%, seeded per sample and epoch)",
    )
    p.add_argument("--flip", action="store_true", help="also flip images horizontally half the time (not for text)")
    p.add_argument(
        "--val",
        metavar="FILE_OR_FRACTION",
        help="held-out pairs to validate on: a pairs file, or a fraction (0.1) of the training images held out "
        "(written to OUT/val.jsonl); the model written is the best one validation saw",
    )
    p.add_argument("--val-every", type=int, default=100, help="steps between validations (and at the last step)")
    p.add_argument("--val-metric", default="MR", help="MR (mean over languages of each one's MR) or MR:LANG")
    p.add_argument("--patience", type=int, help="stop after this many validations without a better score")
    add_local_loss(p)
