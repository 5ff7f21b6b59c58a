"""altclip export onnx and altclip doctor: a model for other runtimes, and what runs fast on this machine."""

from __future__ import annotations

import argparse

from altclip.cli.common import Subparsers, add_device, add_json, command, emit, group, print_json
from altclip.tables import format_table


def cmd_export(args: argparse.Namespace) -> int:
    """both towers as ONNX graphs (dynamic batch and length), checked against PyTorch in ONNX Runtime

    Write OUT/onnx/text_model.onnx (input_ids, attention_mask -> text_embeds) and OUT/onnx/vision_model.onnx
    (pixel_values -> image_embeds), the config and the processor files, then run both graphs in ONNX Runtime on
    random inputs and print the largest difference from PyTorch. OUT then works as a model folder with
    --backend onnx.

    examples:
      altclip export onnx --model BAAI/AltCLIP --out altclip-onnx
      altclip export onnx --model BAAI/AltCLIP --out altclip-onnx-int8 --quantize int8
      altclip classify cat.jpg --labels 猫 狗 --lang zh --model altclip-onnx --backend onnx
    """
    from altclip.runtime.export import check_export, export_onnx
    from altclip.runtime.loading import DEFAULT_MODEL, load_pretrained

    model, processor = load_pretrained(args.model or DEFAULT_MODEL, device="cpu")
    quantize = None if args.quantize == "none" else args.quantize
    graphs = export_onnx(model, args.out, towers=args.towers, opset=args.opset, quantize=quantize)  # type: ignore[arg-type]
    processor.save_pretrained(args.out)
    checks = [c.to_json() for c in check_export(model, args.out, graphs, args.quantize)]
    rows = [(c["tower"], c["graph"], c["quantize"], c["megabytes"], c["max_abs_diff"], c["min_cosine"]) for c in checks]
    emit(args, checks, ["tower", "graph", "weights", "MB", "max |onnxruntime - torch|", "min cosine"], rows)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """this machine: CPU, GPU, versions, what works, and each precision's speed on a small model

    Report this machine (CPU capability, cores, GPU, torch and onnxruntime versions), whether each precision
    and backend works here, and each one's speed on a small model within --seconds; then what --precision auto
    picks and what it measured against float32.

    examples:
      altclip doctor
      altclip doctor --json --seconds 10
    """
    from altclip.runtime.doctor import MODES, run_doctor

    report = run_doctor(seconds=args.seconds, modes=tuple(args.modes or MODES), device=args.device)
    if args.json:
        print_json(report.to_json())
        return 0
    print(format_table(["machine", "this one"], report.machine_rows()))
    print(f"\nimage embeddings, {report.model['vision']}, batch {report.model['batch']}, on {report.device}:")
    modes = [
        (
            m.mode,
            f"{m.images_per_second:.1f}" if m.images_per_second else "-",
            f"{m.ratio_to_float32:.2f}x" if m.ratio_to_float32 else "-",
            f"{m.min_cosine:.5f}" if m.min_cosine is not None else "-",
            f"{m.setup_seconds:.1f}" if m.setup_seconds is not None else "-",
            m.error or "",
        )
        for m in report.modes
    ]
    print(format_table(["mode", "images/s", "vs float32", "min cosine", "set-up s", "problem"], modes))
    if report.int8_line():
        print(f"\n{report.int8_line()}")
    print(f"\n{report.advice}")
    return 0


def register(sub: Subparsers, model: argparse.ArgumentParser) -> None:
    from altclip.runtime.doctor import MODES
    from altclip.runtime.export import QUANTIZATIONS, TOWERS

    examples = "altclip export onnx --model BAAI/AltCLIP --out altclip-onnx"
    formats = group(sub, "export", "export a model for other runtimes (ONNX)", "format", examples)
    p = command(formats, "onnx", cmd_export)
    p.add_argument("--model", help="hub name or local folder (default BAAI/AltCLIP)")
    p.add_argument("--out", required=True, help="the export folder")
    p.add_argument("--towers", nargs="+", choices=TOWERS, default=list(TOWERS))
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        default="none",
        help="int8: ONNX Runtime's dynamic int8 quantization of the weights (see `altclip doctor` for its speed here)",
    )
    add_json(p)

    p = command(sub, "doctor", cmd_doctor)
    p.add_argument("--seconds", type=float, default=20.0, help="time shared by the modes' timings (default 20)")
    p.add_argument("--modes", nargs="+", help=f"modes to measure: {' '.join(MODES)} (default: all)")
    add_device(p)
    add_json(p)
