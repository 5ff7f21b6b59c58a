"""Fine-tuning at BAAI/AltCLIP's size (random weights): trainable parameters, peak memory and step time of full
fine-tuning, the last 4 layers of each tower, and LoRA r=16, with and without gradient checkpointing.

    .venv/bin/python benchmarks/finetune.py                  # batch 8, 2 timed steps per mode
    .venv/bin/python benchmarks/finetune.py --modes lora16 --batch-size 16 --json

Each mode runs in a process of its own, so its peak resident memory (``ru_maxrss``) is its own: the model
(ViT-L/14 and XLM-R large, 865M parameters, float32), AdamW's state for what trains, the activations of one
step of the contrastive loss on a batch of 224x224 images and 32-token captions. The step time is the mean of
the timed steps after one untimed step (which also allocates the optimizer's state). glibc's mmap threshold is
fixed, as ``altclip finetune`` fixes it (``altclip.runtime.memory``); ``--glibc-default`` leaves it to move.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

MODES = {
    "full": {},
    "full-checkpointed": {"checkpointing": True},
    "last4": {"unlock": 4},
    "lora16": {"lora": 16},
    "lora16-checkpointed": {"lora": 16, "checkpointing": True},
}
ALTCLIP = {  # BAAI/AltCLIP's config.json, in altclip's config classes
    "text_config": {
        "vocab_size": 250002,
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "pad_token_id": 1,
        "project_dim": 768,
    },
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "projection_dim": 768,
    },
    "projection_dim": 768,
}


def run_mode(name: str, batch: int, steps: int, no_fix: bool = False) -> dict[str, Any]:
    """One mode, in this process."""
    import torch

    from altclip.modeling.config import AltCLIPConfig
    from altclip.modeling.lora import LoRAConfig
    from altclip.modeling.models import AltCLIPModel
    from altclip.runtime.memory import fix_mmap_threshold
    from altclip.train.finetune import FinetuneConfig, set_trainable
    from altclip.train.losses import contrastive_loss

    if not no_fix:
        fix_mmap_threshold()  # as `altclip finetune` does
    mode = MODES[name]
    torch.manual_seed(0)
    model = AltCLIPModel(AltCLIPConfig.from_dict(ALTCLIP)).train()
    lora = LoRAConfig(rank=mode["lora"], alpha=2 * mode["lora"], dropout=0.05) if "lora" in mode else None
    unlock = mode.get("unlock")
    counts = set_trainable(model, FinetuneConfig(lora, unlock, unlock, augment=None))
    if mode.get("checkpointing"):
        model.gradient_checkpointing_enable()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(3, 250000, (batch, 32))
    mask = torch.ones_like(ids)
    pixels = torch.randn(batch, 3, 224, 224)
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        text = model.get_text_features(ids, mask)
        image = model.get_image_features(pixels)
        contrastive_loss(text, image, model.logit_scale).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {
        "mode": name,
        "trainable": counts["trainable"],
        "parameters": counts["parameters"],
        "share": counts["share"],
        "peak_bytes": peak,
        "step_seconds": sum(times) / len(times),
        "batch": batch,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--glibc-default", action="store_true", help="leave glibc's mmap threshold to move")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child: run this mode, print its JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_mode(args.one, args.batch_size, args.steps, args.glibc_default)))
        return 0
    from altclip.runtime.hardware import detect_cpu
    from altclip.tables import format_table

    rows = []
    for name in args.modes:
        command = [sys.executable, __file__, "--one", name, "--batch-size", str(args.batch_size)]
        command += ["--glibc-default"] if args.glibc_default else []
        done = subprocess.run([*command, "--steps", str(args.steps)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{name}: done", file=sys.stderr, flush=True)
    cpu = detect_cpu().describe()
    full = next((r for r in rows if r["mode"] == "full"), rows[0])
    for row in rows:
        row["memory_vs_full"] = row["peak_bytes"] / full["peak_bytes"]
        row["time_vs_full"] = row["step_seconds"] / full["step_seconds"]
    if args.json:
        print(json.dumps({"cpu": cpu, "rows": rows}, indent=2))
        return 0
    print(f"CPU: {cpu}; AltCLIP at BAAI/AltCLIP's size (random weights), batch {args.batch_size}, float32")
    headers = ["mode", "trainable", "share", "peak memory", "x full", "step s", "x full"]
    table = [
        [
            r["mode"],
            f"{r['trainable'] / 1e6:.1f}M",
            f"{r['share']:.2%}",
            f"{r['peak_bytes'] / 2**30:.1f} GiB",
            f"{r['memory_vs_full']:.2f}",
            f"{r['step_seconds']:.1f}",
            f"{r['time_vs_full']:.2f}",
        ]
        for r in rows
    ]
    print(format_table(headers, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
