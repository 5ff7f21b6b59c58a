"""``altclip demo``: the AltCLIP recipe in miniature, offline, on the emoji set.

1. Data: Noto Color Emoji images with their CLDR names in 14 languages, split by emoji (``demo.data``).
2. Teacher: a small CLIP (its own English BPE tokenizer) trained contrastively on the English names.
3. Student: ``altclip init`` from the teacher and a fresh XLM-R-style text tower with a multilingual
   sentencepiece tokenizer (XLM-R's layout), then phase 1 (distillation on the parallel names) and phase 2
   (contrastive on the multilingual pairs, image tower frozen): the same code as real training.
4. Evaluation: retrieval recall on the held-out emoji per language for the teacher and the student,
   printed like the paper's table and saved as JSON and PNG; zero-shot classification of the flag emoji
   among all flags by their CLDR country names and of emoji by skin tone, per language (``demo.zeroshot``);
   and the pointing game of relevance maps on 2x2 composites of held-out emoji (``demo.pointing``).

Every stage writes its result into the work folder; running again reuses finished stages.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from altclip.demo.cldr import check_sources, cldr_items
from altclip.demo.data import LANGUAGES, EmojiSet, build, write_parallel
from altclip.demo.pointing import PointingRow, composites, play, pointing_table, write_pointing_report
from altclip.demo.zeroshot import ZeroShotRow, evaluate_zeroshot, write_zeroshot_report, zeroshot_table
from altclip.embedder import Embedder
from altclip.errors import InputError
from altclip.evaluate.report import ReportRow, paper_table, write_report
from altclip.evaluate.retrieval import evaluate_pairs
from altclip.files import atomic_write_bytes
from altclip.modeling.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from altclip.modeling.models import CLIPModel
from altclip.processing.image import CLIPImageProcessor
from altclip.processing.processor import CLIPProcessor
from altclip.processing.tokenization import (
    CLIP_SPECIALS,
    CLIPTokenizer,
    XLMRobertaTokenizer,
    clip_backend,
    train_sentencepiece,
)
from altclip.runtime.hardware import float32_gemm_rate
from altclip.tables import Result
from altclip.train.loop import TrainConfig, Trainer
from altclip.train.phases import contrastive_phase, distillation_phase
from altclip.train.student import build_student


@dataclass
class DemoConfig:
    """Sizes and schedules of the miniature, chosen on a validation split of the training emoji alone
    (``benchmarks/demo_ablation.py``): three distillation epochs at 3e-3 and two contrastive epochs put every
    language within 5% of the teacher's English there, and the student's English above it. The teacher reads
    half the patches of each training image (patch dropout) and phase 1 the English side of a quarter of each
    batch: about 0.6x and 0.75x of those stages' time, at the same bar over 3 seeds. Phase 1 reads CLDR's names
    of locales and of time zones besides the emoji names, each in English and 6 other languages, the student's
    vocabulary has 16,000 pieces and its tower no dropout: over 3 seeds that put the zero-shot flags of every
    language above the teacher's English and kept retrieval's bar, and no dropout wins back the time the extra
    text costs."""

    out: Path = Path("altclip-demo")
    font: str | None = None
    image_size: int = 32
    patch_size: int = 4
    width: int = 128
    layers: int = 4
    heads: int = 4
    teacher_epochs: int = 10
    distill_epochs: int = 3
    contrastive_epochs: int = 2
    student_width: int | None = None  # the student's text tower (None: the teacher's width and depth)
    student_layers: int | None = None
    vocab_size: int = 16000
    character_coverage: float = 0.9995
    teacher_lr: float = 1e-3
    teacher_patch_dropout: float = 0.5  # the share of patch tokens the teacher's image tower drops in training
    distill_lr: float = 3e-3
    distill_source_fraction: float = 0.25  # the share of each batch whose English side the student reads too
    # what phase 1 reads besides the emoji names: CLDR display names in the 14 languages (``demo.cldr``)
    phase1_sources: tuple[str, ...] = ("locales", "timezones")
    phase1_languages: int = 6  # the translations each CLDR item brings (in turn through the 13), beside English
    contrastive_lr: float = 2e-4
    contrastive_logit_scale: float | None = None  # phase 2 starts from this scale (None: the teacher's, copied)
    student_dropout: float = 0.0  # the student tower's hidden dropout
    # batches of names of about one length (``TrainConfig.group_by_length``): phase 1 runs 2.2x faster so, but on
    # the validation split (seed 0) the worst language fell from 95.2% to 93.0% of the teacher's English
    distill_group_by_length: bool = False
    contrastive_group_by_length: bool = False
    batch_size: int = 128
    seed: int = 0
    holdout: str = "test"  # "validation": tune on a split of the training emoji, the test emoji left out
    data: Path | None = None  # the data folder (default: out/data), to share one rendering between runs
    limit: int | None = None  # emoji drawn (None: all); small values make a quick smoke run
    workers: int = 2
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        check_sources(self.phase1_sources)  # before any stage runs
        if not 1 <= self.phase1_languages <= len(LANGUAGES) - 1:
            raise InputError(f"phase1_languages must be 1 to {len(LANGUAGES) - 1}, got {self.phase1_languages}")


def say(config: DemoConfig, message: str) -> None:
    if config.progress:
        print(message, flush=True)


def _stage_done(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


def _train(config: DemoConfig, stage: str, phase: Any, warmup: int) -> Path:
    """Run a stage ("teacher", "distill", "contrastive") to completion in ``out/STAGE``, resuming an interrupted
    run of it, with the config's fields of that stage (``STAGE_epochs``, ``STAGE_lr``, ``STAGE_group_by_length``)."""
    out = config.out / stage
    train_config = TrainConfig(
        out,
        epochs=getattr(config, f"{stage}_epochs"),
        batch_size=config.batch_size,
        lr=getattr(config, f"{stage}_lr"),
        warmup=warmup,
        weight_decay=0.1,
        min_lr_ratio=0.05,
        seed=config.seed,
        save_every=200,
        resume=True,
        group_by_length=getattr(config, f"{stage}_group_by_length", False),
        patch_dropout=getattr(config, f"{stage}_patch_dropout", 0.0),
        workers=config.workers,
        device=config.device,
        progress=config.progress,
    )
    Trainer(phase, train_config).fit()
    return out / "model"


def make_teacher(config: DemoConfig, data: EmojiSet) -> Path:
    """A small CLIP with a byte-level BPE trained on the English training names, trained on the English pairs."""
    init, run = config.out / "teacher-init", config.out / "teacher"
    if _stage_done(run / "model"):
        return run / "model"
    from tokenizers import trainers
    from tokenizers.pre_tokenizers import ByteLevel

    backend = clip_backend({CLIP_SPECIALS["bos_token"]: 0, CLIP_SPECIALS["eos_token"]: 1}, [], CLIP_SPECIALS)
    trainer = trainers.BpeTrainer(
        vocab_size=3000,
        special_tokens=[CLIP_SPECIALS["bos_token"], CLIP_SPECIALS["eos_token"]],
        end_of_word_suffix="</w>",
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([data.names[c]["en"] for c in data.train], trainer=trainer)
    tokenizer = CLIPTokenizer(backend, CLIP_SPECIALS, model_max_length=32)
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.width,
        intermediate_size=4 * config.width,
        projection_dim=config.width,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        max_position_embeddings=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=config.width,
        intermediate_size=4 * config.width,
        projection_dim=config.width,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
    )
    torch.manual_seed(config.seed)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=config.width)).save_pretrained(init)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": config.image_size}, crop_size={"height": config.image_size, "width": config.image_size}
    )
    CLIPProcessor(image_processor, tokenizer).save_pretrained(init)
    phase = contrastive_phase(init, data.folder / "teacher_pairs.jsonl", freeze_vision=False, cache_images=True)
    say(config, f"teacher: CLIP, {phase.model.num_parameters():,} parameters, {len(data.train)} English pairs")
    return _train(config, "teacher", phase, warmup=50)


def make_student(config: DemoConfig, data: EmojiSet, teacher: Path) -> Path:
    """``altclip init`` from the teacher and a fresh XLM-R-style tower with a multilingual sentencepiece."""
    folder = config.out / "student-init"
    if _stage_done(folder):
        return folder
    xlmr = config.out / "xlmr-init"
    sentences = [text for item in phase1_items(config, data) for text in item.values()]
    spm = train_sentencepiece(sentences, xlmr / "sentencepiece.bpe.model", config.vocab_size, config.character_coverage)
    tokenizer = XLMRobertaTokenizer.from_sentencepiece(spm, model_max_length=64)
    tokenizer.save_pretrained(xlmr)
    xlmr_config = {
        "model_type": "xlm-roberta",
        "vocab_size": len(tokenizer),
        "hidden_size": config.student_width or config.width,
        "intermediate_size": 4 * (config.student_width or config.width),
        "num_hidden_layers": config.student_layers or config.layers,
        "num_attention_heads": config.heads,
        "max_position_embeddings": 66,
        "type_vocab_size": 1,
        "layer_norm_eps": 1e-5,
        "hidden_dropout_prob": config.student_dropout,
        "attention_probs_dropout_prob": 0.0,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }
    atomic_write_bytes(xlmr / "config.json", json.dumps(xlmr_config, indent=2).encode())
    torch.manual_seed(config.seed)
    build_student(teacher, xlmr, folder)
    return folder


def phase1_items(config: DemoConfig, data: EmojiSet) -> list[dict[str, str]]:
    """What phase 1 reads, one meaning an item ({language: text}): the training emoji's names in every language,
    then the items of the CLDR sources the config names, each in English and ``phase1_languages`` others (taken in
    turn, so that every language gets its share)."""
    others = [lang for lang in LANGUAGES if lang != "en"]
    extra = []
    for i, item in enumerate(cldr_items(config.phase1_sources)):
        chosen = {others[(i * config.phase1_languages + j) % len(others)] for j in range(config.phase1_languages)}
        extra.append({lang: text for lang, text in item.items() if lang == "en" or lang in chosen})
    return [data.names[c] for c in data.train] + extra


def write_phase1(config: DemoConfig, data: EmojiSet) -> Path:
    """Phase 1's parallel text (English -> each other language) in the run's folder: the data folder's emoji
    lines alone when no other source is read."""
    if not config.phase1_sources:
        return data.folder / "parallel.tsv"
    path = config.out / "phase1.tsv"
    write_parallel(path, phase1_items(config, data))
    return path


def evaluate(
    config: DemoConfig, data: EmojiSet, models: dict[str, Path]
) -> tuple[list[ReportRow], list[ZeroShotRow], list[PointingRow], dict[str, Path]]:
    """Retrieval on the held-out emoji, the zero-shot tasks (flags, skin tones) and the pointing game of relevance
    maps, per language, for each model."""
    embedders = {m: Embedder.from_pretrained(f, device=config.device, batch_size=256) for m, f in models.items()}
    results = {
        method: evaluate_pairs(embedder, data.folder / "test.jsonl", workers=0, progress=False)[0]
        for method, embedder in embedders.items()
    }
    retrieval = [ReportRow(LANGUAGES[lang], method, results[method][lang]) for lang in LANGUAGES for method in models]
    pointing, paths = [], {}
    if len(data.test) >= 4:  # a small --limit run may hold out fewer emoji than a composite needs
        games = composites(data, count=min(100, len(data.test)), seed=config.seed)
        pointing, maps = play(embedders, data, games)
        paths = write_pointing_report(pointing, maps, games, data, config.out / "report")
    return retrieval, evaluate_zeroshot(embedders, data), pointing, paths


def run_demo(config: DemoConfig) -> DemoResult:
    rate_at_start = float32_gemm_rate()  # the rate moves within minutes on shared machines: measured at both ends
    started = time.perf_counter()
    clock = Stopwatch()
    config.out.mkdir(parents=True, exist_ok=True)
    data_folder = config.data or config.out / "data"
    say(config, f"[1/5] data: Noto Color Emoji + CLDR names in {len(LANGUAGES)} languages -> {data_folder}")
    data = build(
        data_folder,
        font=config.font,
        size=config.image_size,
        seed=config.seed,
        limit=config.limit,
        progress=config.progress,
        holdout=config.holdout,
    )
    say(config, f"      {len(data.train)} training emoji, {len(data.test)} held-out emoji")
    clock.lap("data")
    say(config, "[2/5] teacher: a small CLIP trained on the English names")
    teacher = make_teacher(config, data)
    clock.lap("teacher")
    say(config, "[3/5] student: altclip init (teacher's image tower + an XLM-R-style text tower)")
    student = make_student(config, data, teacher)
    clock.lap("student init")
    say(config, "[4/5] phase 1: distillation on the parallel names; phase 2: contrastive on multilingual pairs")
    distilled = config.out / "distill" / "model"
    if not _stage_done(distilled):
        phase = distillation_phase(
            teacher,
            student,
            write_phase1(config, data),
            cache_targets=True,
            source_fraction=config.distill_source_fraction,
        )
        distilled = _train(config, "distill", phase, warmup=50)
    clock.lap("distillation")
    altclip_model = config.out / "contrastive" / "model"
    if not _stage_done(altclip_model):
        phase = contrastive_phase(distilled, data.folder / "pairs.jsonl", cache_images=True)
        if config.contrastive_logit_scale:
            with torch.no_grad():
                phase.model.logit_scale.fill_(math.log(config.contrastive_logit_scale))
        altclip_model = _train(config, "contrastive", phase, warmup=20)
    clock.lap("contrastive")
    say(config, "[5/5] evaluation: retrieval among the held-out emoji; zero-shot flags and skin tones by CLDR names")
    rows, zeroshot, pointing, pointing_paths = evaluate(config, data, {"CLIP": teacher, "AltCLIP": altclip_model})
    paths = write_report(rows, config.out / "report", title="held-out emoji: CLIP teacher vs AltCLIP student")
    if zeroshot:
        paths.update({f"zeroshot_{k}": v for k, v in write_zeroshot_report(zeroshot, config.out / "report").items()})
    paths.update({f"pointing_{k}": v for k, v in pointing_paths.items()})
    clock.lap("evaluation")
    return DemoResult(
        rows,
        zeroshot,
        pointing,
        paths,
        altclip_model,
        teacher,
        distilled,
        data,
        time.perf_counter() - started,
        clock.laps,
        (rate_at_start, float32_gemm_rate()),
    )


@dataclass
class Stopwatch:
    """Seconds per stage, each from the end of the one before."""

    laps: dict[str, float] = field(default_factory=dict)
    last: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage], self.last = now - self.last, now


@dataclass
class DemoResult(Result):
    """What a demo run measured and wrote: the tables' rows, the report files, the models it trained."""

    rows: list[ReportRow]  # retrieval per language and model
    zeroshot: list[ZeroShotRow]  # zero-shot flags and skin tones per language and model
    pointing: list[PointingRow]  # the pointing game per language, model and zoom
    report: dict[str, Path]  # what -> the file written
    model: Path  # the trained AltCLIP
    teacher: Path
    distilled: Path
    data: EmojiSet
    seconds: float
    stages: dict[str, float]  # stage -> seconds (a stage reused from an earlier run takes about none)
    gemm_gflops: tuple[float, float]  # this machine's float32 rate at the start and the end: what the README's
    # times are scaled by

    def to_json(self) -> dict[str, Any]:
        return {
            "results": [r.to_json() for r in self.rows],
            "zeroshot": [r.to_json() for r in self.zeroshot],
            "pointing": [r.to_json() for r in self.pointing],
            "model": str(self.model),
            "seconds": self.seconds,
            "stages": self.stages,
            "float32_gemm_gflops": {"start": round(self.gemm_gflops[0], 1), "end": round(self.gemm_gflops[1], 1)},
        }

    def describe(self) -> str:
        """The tables and what to try next, as the command prints them."""
        lines = ["", "retrieval among the held-out emoji (recall %, MR = mean of the six)", paper_table(self.rows)]
        if self.zeroshot:
            lines += [
                "",
                "zero-shot (accuracy %): each flag among all flags by its country's CLDR name in templates per "
                "language; each emoji with a skin tone among the five tones by their CLDR names",
                zeroshot_table(self.zeroshot),
            ]
        if self.pointing:
            lines += [
                "",
                "pointing game: relevance maps of 2x2 held-out emoji composites; hit = the map's peak in the named "
                "emoji's quarter (%, chance 25); zoom 1: one centre view, zoom 2: windows at the emoji's own size",
                pointing_table(self.pointing),
                f"examples: {self.report['pointing_grid']}",
            ]
        lines += ["", f"report: {self.report['text']}, {self.report['json']}, {self.report['chart']}"]
        model, work, example = self.model, self.model.parent.parent, self.data.image(self.data.test[0])
        stages = ", ".join(f"{stage} {seconds / 60:.1f}" for stage, seconds in self.stages.items())
        lines += [
            f"the trained AltCLIP: {model}  ({self.seconds / 60:.1f} minutes in all: {stages})",
            f"this machine's float32 rate: {self.gemm_gflops[0]:.0f} GFLOP/s at the start, "
            f"{self.gemm_gflops[1]:.0f} at the end (2048x2048 products, "
            f"{torch.get_num_threads()} threads); the README gives the demo's time per machine by this rate",
            f"try:  altclip classify {example} --model {model} --labels 猫 狗 太阳 爱心 --lang zh",
            f"      altclip embed {self.data.folder / 'images'} --out {work / 'emoji-index'} --model {model}",
            f'      altclip search {work / "emoji-index"} --text "笑脸" --model {model}',
            f"      altclip explain {example} --text 笑脸 猫 --model {model} --out {work / 'maps'}",
            f"      altclip serve {work / 'emoji-index'}    # then open http://127.0.0.1:8000",
        ]
        return "\n".join(lines)
