"""Ablations of the demo's recipe, chosen on a validation split carved from the training emoji.

    .venv/bin/python benchmarks/demo_ablation.py --root /tmp/ablation --variants baseline longer-distill
    .venv/bin/python benchmarks/demo_ablation.py --root /tmp/ablation --seeds 0 1 2 --variants default

Every run uses ``DemoConfig(holdout="validation")``: the test emoji are dropped before anything is written,
and ``test_fraction`` of the remaining training emoji become the validation set the numbers come from. Each
variant is a set of ``DemoConfig`` overrides; stages whose settings equal an earlier run's (same seed) are
copied from it rather than trained again, and the seconds each stage took when it did train are kept in
``root/times.json``. For each variant the table prints mean and spread (population standard deviation) over
the seeds of: the teacher's English MR, the distilled student's (phase 1 only) and the final student's English
MR, the final student's worst language as a fraction of the teacher's English, its mean over the 13 other
languages, and the teacher's Chinese MR; then the zero-shot tasks (``demo.zeroshot``): the teacher's English
top-1 and the student's English and worst language as % of it, on the trained flags and the held-out tones.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from altclip.demo import run as demo
from altclip.demo import zeroshot as zeroshot_tasks
from altclip.demo.cldr import SOURCES
from altclip.demo.data import LANGUAGE_CODES, LANGUAGES
from altclip.embedder import Embedder
from altclip.evaluate.retrieval import evaluate_pairs
from altclip.runtime.hardware import detect_cpu
from altclip.tables import format_table

EMOJI_ONLY = {"phase1_sources": (), "vocab_size": 8000, "student_dropout": 0.05}  # before issue 29: emoji names
LOCALES6 = {"phase1_sources": ("locales",), "phase1_languages": 6, "vocab_size": 12000, "student_dropout": 0.05}
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"distill_epochs": 1, "distill_lr": 1e-3, "contrastive_epochs": 1},  # the demo before issue 15
    "default": {},  # the demo as it is
    "full": {"teacher_patch_dropout": 0.0, "distill_source_fraction": 1.0, **EMOJI_ONLY},  # before issue 25's cuts
    "grouped": {"distill_group_by_length": True},  # issue 25: phase 1 2.2x faster, the worst language 2 points lower
    "grouped-both": {"distill_group_by_length": True, "contrastive_group_by_length": True},
    "teacher6-grouped": {"teacher_epochs": 6, "distill_group_by_length": True},
    "teacher6-grouped-both": {
        "teacher_epochs": 6,
        "distill_group_by_length": True,
        "contrastive_group_by_length": True,
    },
    "fast": {
        "teacher_epochs": 6,
        "distill_epochs": 2,
        "distill_lr": 4e-3,
        "distill_group_by_length": True,
        "contrastive_group_by_length": True,
    },
    "distill3": {"distill_epochs": 3},
    "distill3-coverage1": {"distill_epochs": 3, "character_coverage": 1.0},
    "distill3-contrastive2": {"distill_epochs": 3, "contrastive_epochs": 2},
    "distill3-clr5e-4": {"distill_epochs": 3, "contrastive_lr": 5e-4},
    "distill3-scale50": {"distill_epochs": 3, "contrastive_logit_scale": 50.0},
    "distill3-scale100": {"distill_epochs": 3, "contrastive_logit_scale": 100.0},
    "distill3-scale50-clr5e-4": {"distill_epochs": 3, "contrastive_logit_scale": 50.0, "contrastive_lr": 5e-4},
    "distill4": {"distill_epochs": 4},
    "distill3-dlr4e-3": {"distill_epochs": 3, "distill_lr": 4e-3},
    "distill3-dlr2e-3-contrastive2": {"distill_epochs": 3, "distill_lr": 2e-3, "contrastive_epochs": 2},
    "distill3-dlr2e-3-clr5e-4": {"distill_epochs": 3, "distill_lr": 2e-3, "contrastive_lr": 5e-4},
    "distill3-dlr3e-3": {"distill_epochs": 3, "distill_lr": 3e-3},
    "distill3-dlr3e-3-contrastive2": {"distill_epochs": 3, "distill_lr": 3e-3, "contrastive_epochs": 2},
    "distill3-student6layers": {"distill_epochs": 3, "student_layers": 6},
    "distill3-student192": {"distill_epochs": 3, "student_width": 192},
    "distill3-dlr2e-3": {"distill_epochs": 3, "distill_lr": 2e-3},
    # issue 25: the teacher reads half the patches of each training image, the student the English side of a
    # quarter of each batch (each English name ~3 times an epoch instead of 13): today's default, named
    "lean": {"distill_source_fraction": 0.25, "teacher_patch_dropout": 0.5, **EMOJI_ONLY},
    "lean50": {"distill_source_fraction": 0.5, "teacher_patch_dropout": 0.5, **EMOJI_ONLY},
    # issue 29: phase 1 reads CLDR's display names too (``demo.cldr``), each item in English and ``phase1_languages``
    # of the 13 others; a larger student vocabulary
    "vocab12k": {**EMOJI_ONLY, "vocab_size": 12000},
    "locales": {**EMOJI_ONLY, "phase1_sources": ("locales",), "phase1_languages": 13},
    "cldr": {**EMOJI_ONLY, "phase1_sources": SOURCES[:6], "phase1_languages": 13},  # every source but time zones
    "cldr-vocab12k": {**EMOJI_ONLY, "phase1_sources": SOURCES[:6], "phase1_languages": 13, "vocab_size": 12000},
    "locales-vocab12k": {**LOCALES6, "phase1_languages": 13},
    "locales-vocab12k-grouped": {**LOCALES6, "phase1_languages": 13, "distill_group_by_length": True},
    "locales6-vocab12k": LOCALES6,  # the first release of issue 29
    "nodrop": {**LOCALES6, "student_dropout": 0.0},  # no dropout in the student's tower: phases 1 and 2 5-10% faster
    "locales6-timezones-nodrop": {**LOCALES6, "phase1_sources": ("locales", "timezones"), "student_dropout": 0.0},
    # today's default: + time zones, 16,000 pieces, no dropout
    "locales6-timezones-nodrop-vocab16k": {
        **LOCALES6,
        "phase1_sources": ("locales", "timezones"),
        "student_dropout": 0.0,
        "vocab_size": 16000,
    },
}
# which DemoConfig fields each stage depends on (a stage is reused when these and the earlier stages' match)
STAGES = {
    "teacher": (
        "image_size",
        "patch_size",
        "width",
        "layers",
        "heads",
        "teacher_epochs",
        "teacher_lr",
        "teacher_patch_dropout",
        "batch_size",
    ),
    "student-init": (
        "phase1_sources",
        "phase1_languages",
        "vocab_size",
        "character_coverage",
        "student_width",
        "student_layers",
        "student_dropout",
    ),
    "distill": ("distill_epochs", "distill_lr", "distill_group_by_length", "distill_source_fraction"),
    "contrastive": ("contrastive_epochs", "contrastive_lr", "contrastive_logit_scale", "contrastive_group_by_length"),
}


def stage_key(config: demo.DemoConfig, stage: str) -> str:
    fields: list[str] = []
    for name, names in STAGES.items():
        fields += names
        if name == stage:
            break
    return json.dumps({f: getattr(config, f) for f in fields}, sort_keys=True)


def mr(embedder_folder: Path, data: Any, device: str) -> dict[str, float]:
    embedder = Embedder.from_pretrained(embedder_folder, device=device, batch_size=256)
    scores, _ = evaluate_pairs(embedder, data.folder / "test.jsonl", workers=0, progress=False)
    return {lang: s.mean_recall for lang, s in scores.items()}


# the zero-shot tasks' code: a run scored by other code (other prompts, say) is scored again
TASKS_VERSION = hashlib.sha1(inspect.getsource(zeroshot_tasks).encode()).hexdigest()[:12]


def zeroshot(models: dict[str, Path], data: Any, device: str) -> dict[str, Any]:
    """task -> model -> language -> top-1 (%) on the trained and the held-out emoji."""
    embedders = {m: Embedder.from_pretrained(f, device=device, batch_size=256) for m, f in models.items()}
    scores: dict[str, Any] = {}
    for row in zeroshot_tasks.evaluate_zeroshot(embedders, data):
        cell = {"trained": row.seen.top1, "held_out": row.held_out.top1}
        scores.setdefault(row.task, {}).setdefault(row.method, {})[LANGUAGE_CODES[row.language]] = cell
    return scores


def run_variant(root: Path, name: str, overrides: dict[str, Any], seed: int, times: dict[str, float]) -> dict:
    config = demo.DemoConfig(
        out=root / f"{name}-s{seed}",
        seed=seed,
        holdout="validation",
        data=root / f"data-s{seed}",
        progress=False,
        **overrides,
    )
    config.out.mkdir(parents=True, exist_ok=True)
    for stage in STAGES:  # copy finished stages from an earlier run with the same settings
        key = f"{seed}:{stage}:{stage_key(config, stage)}"
        source = times.get(f"{key}:folder")
        if source and not (config.out / stage).exists() and Path(source).exists():
            shutil.copytree(source, config.out / stage)
    started = time.perf_counter()
    result = demo.run_demo(config)
    total = time.perf_counter() - started
    for stage in STAGES:
        key = f"{seed}:{stage}:{stage_key(config, stage)}"
        times.setdefault(f"{key}:folder", str(config.out / stage))
    times[f"{name}:{seed}:seconds"] = total
    data = result.data
    return {
        "teacher": mr(result.teacher, data, config.device),
        "distilled": mr(result.distilled, data, config.device),
        "student": mr(result.model, data, config.device),
        "zeroshot": zeroshot({"teacher": result.teacher, "student": result.model}, data, config.device),
        "zeroshot_version": TASKS_VERSION,
        "stages": result.stages,  # seconds; a stage copied from an earlier run takes about none
    }


def summarise(runs: list[dict]) -> list[str]:
    def spread(values: list[float]) -> str:
        return f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}"

    def task(name: str, split: str) -> list[str]:
        """The student's English and worst language as % of the teacher's English."""
        scores = [r["zeroshot"][name] for r in runs]
        teacher = [max(s["teacher"]["en"][split], 1e-9) for s in scores]
        en = [100 * s["student"]["en"][split] / t for s, t in zip(scores, teacher, strict=True)]
        worst = [100 * min(v[split] for v in s["student"].values()) / t for s, t in zip(scores, teacher, strict=True)]
        return [spread([s["teacher"]["en"][split] for s in scores]), spread(en), spread(worst)]

    teacher_en = [r["teacher"]["en"] for r in runs]
    worst = [min(r["student"][lang] for lang in LANGUAGES) / r["teacher"]["en"] * 100 for r in runs]
    others = [statistics.mean(r["student"][lang] for lang in LANGUAGES if lang != "en") for r in runs]
    return [
        spread(teacher_en),
        spread([r["distilled"]["en"] for r in runs]),
        spread([r["student"]["en"] for r in runs]),
        spread(others),
        spread(worst),
        spread([r["teacher"]["zh"] for r in runs]),
        *task("flags", "trained"),
        *task("tones", "held_out"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=["default"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    times_path, results_path = args.root / "times.json", args.root / "results.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    print(f"CPU: {detect_cpu().describe()}", flush=True)
    for name in args.variants:
        for seed in args.seeds:
            key = f"{name}:{seed}"
            if key not in results:
                results[key] = run_variant(args.root, name, VARIANTS[name], seed, times)
                results_path.write_text(json.dumps(results, indent=1))
                times_path.write_text(json.dumps(times, indent=1))
            r = results[key]
            if r.get("zeroshot_version") != TASKS_VERSION:  # scored by other tasks' code, or not at all: score again
                out = args.root / f"{name}-s{seed}"
                data = demo.build(args.root / f"data-s{seed}", progress=False, holdout="validation")
                models = {"teacher": out / "teacher" / "model", "student": out / "contrastive" / "model"}
                r["zeroshot"], r["zeroshot_version"] = zeroshot(models, data, "auto"), TASKS_VERSION
                results_path.write_text(json.dumps(results, indent=1))
            print(
                f"{key}: teacher en {r['teacher']['en']:.1f}, distilled en {r['distilled']['en']:.1f}, "
                f"student en {r['student']['en']:.1f}, zh {r['student']['zh']:.1f}, "
                f"min {min(r['student'].values()):.1f} ({times.get(key + ':seconds', 0):.0f} s: "
                + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in r.get("stages", {}).items())
                + ")",
                flush=True,
            )
    headers = [
        "variant",
        "teacher en",
        "distilled en",
        "student en",
        "student others",
        "worst % of teacher en",
        "teacher zh",
        "flags: teacher en",
        "student en %",
        "worst %",
        "tones held out: teacher en",
        "student en %",
        "worst %",
    ]
    rows = [[name, *summarise([results[f"{name}:{s}"] for s in args.seeds])] for name in args.variants]
    if args.json:
        print(
            json.dumps(
                {"seeds": args.seeds, "results": {n: [results[f"{n}:{s}"] for s in args.seeds] for n in args.variants}}
            )
        )
    else:
        print(format_table(headers, rows))


if __name__ == "__main__":
    main()
