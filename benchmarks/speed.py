"""Speed and memory of altclip (float32, --precision auto, int8, torch.compile, ONNX Runtime float32 and int8)
against transformers' AltCLIPModel (eager and sdpa in float32; sdpa in bfloat16), in one run. It prints the CPU
it ran on and what --precision auto chose there.

    .venv/bin/python benchmarks/speed.py                 # BAAI/AltCLIP sizes (ViT-L/14 + XLM-R-large)
    .venv/bin/python benchmarks/speed.py --size b16      # ViT-B/16 images, an XLM-R-base-sized text tower
    .venv/bin/python benchmarks/speed.py --size small    # a quick run on a small model
    .venv/bin/python benchmarks/speed.py --json out.json

It measures everything twice by default, each time in fresh processes: once at this CPU's own instruction level
and once held to AVX2 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2,
FBGEMM_ENABLE_INSTRUCTIONS=AVX2: fbgemm picks its instructions itself), as an
AVX2-only CPU runs it, and prints a table for each (``--isa`` picks one). Each table says which kernel int8
chose there and why.

Every implementation runs in its own process on the same random weights (peak memory is that process's
maximum resident set). Measured, for each: image embeddings/s at batch 1, 8, 32; text embeddings/s at
lengths 16, 32, 77 and batch 1, 8, 32; a mixed-length workload (CLDR emoji names in 14 languages, in the
order given, batches of 32 as the Hugging Face docs build them, or altclip's length-bucketed batches);
achieved GFLOP/s against a float32 matrix-multiply ceiling measured in the same run. Results are printed
as ratios to transformers' best. Every implementation's features on fixed inputs (a padded text batch and
two images) are compared with transformers' eager ones: max |difference| and min cosine. The first image
call is timed apart (torch.compile compiles then); the ONNX export is written once, before the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SIZES = {
    # BAAI/AltCLIP: ViT-L/14 image tower, XLM-R-large text tower, projection 768
    "real": {
        "text_config": {},
        "projection_dim": 768,
        "vision_config": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 224,
        },
    },
    # ViT-B/16 images (openai/clip-vit-base-patch16's tower), an XLM-R-base-sized text tower, projection 512
    "b16": {
        "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "project_dim": 768},
        "projection_dim": 512,
        "vision_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "patch_size": 16,
            "image_size": 224,
        },
    },
    "small": {
        "text_config": {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "project_dim": 256,
        },
        "vision_config": {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "patch_size": 16,
            "image_size": 224,
        },
        "projection_dim": 256,
    },
}
IMAGE_BATCHES, TEXT_LENGTHS, TEXT_BATCHES = (1, 8, 32), (16, 32, 77), (1, 8, 32)
ISA_LIMITS = {  # the environment each worker runs in: "native" leaves torch, oneDNN and MKL at the CPU's own level
    "native": {},
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    },
}
IMPLEMENTATIONS = (
    "altclip",
    "transformers-sdpa",
    "transformers-eager",
    "altclip-auto",
    "transformers-sdpa-bf16",
    "altclip-int8",
    "altclip-compile",
    "altclip-onnx",
    "altclip-onnx-int8",
)


def flops_per_image(vision: dict[str, int]) -> float:
    """Multiply-adds x 2 of one ViT forward pass (162 GFLOP for ViT-L/14 at 224 px)."""
    d, ff, layers = vision["hidden_size"], vision["intermediate_size"], vision["num_hidden_layers"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    n = patches + 1
    per_layer = 2 * n * (4 * d * d + 2 * d * ff) + 2 * 2 * n * n * d
    return layers * per_layer + 2 * patches * 3 * vision["patch_size"] ** 2 * d


def flops_per_token(text: dict[str, int], length: int) -> float:
    d, ff, layers = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    return layers * (2 * (4 * d * d + 2 * d * ff) + 2 * 2 * length * d)


CEILING_SHAPES = ((2048, 2048, 2048), (4096, 1024, 4096), (8192, 1024, 1024), (8192, 4096, 1024), (4096, 4096, 4096))


def matmul_ceiling(seconds: float = 1.5) -> float:
    """The best float32 GFLOP/s of large matrix multiplies on this machine, now; the shapes include the
    models' own (tokens x 1024 by 1024 x 4096)."""
    best = 0.0
    for m, k, n in CEILING_SHAPES:
        a, b = torch.randn(m, k), torch.randn(k, n)
        best = max(best, 2 * m * k * n / timed(lambda a=a, b=b: a @ b, seconds, min_runs=2) / 1e9)
    return best


def peak_memory_gb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not carried over from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn, min_seconds: float, min_runs: int = 1) -> float:
    """Seconds per call: one warm-up, then calls until both limits are met."""
    fn()
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < min_seconds:
        fn()
        runs += 1
    return (time.perf_counter() - start) / runs


def mixed_workload(count: int) -> list[str]:
    import emoji

    emoji.config.load_language()
    langs = ["en", "zh", "ja", "ko", "ar", "ru", "fr", "de", "es", "it", "pt", "fa", "id", "tr"]
    names = [data[lang].strip(":").replace("_", " ") for data in emoji.EMOJI_DATA.values() for lang in langs]
    return names[:count]


# -- one implementation, in its own process ----------------------------------------------------------


def load(impl: str, folder: Path):
    if impl.startswith("transformers"):
        import transformers

        dtype = torch.bfloat16 if impl.endswith("-bf16") else torch.float32
        model = transformers.AltCLIPModel.from_pretrained(
            folder, attn_implementation=impl.split("-")[1], dtype=dtype
        ).eval()
        text = lambda ids, mask: model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output  # noqa: E731
        image = lambda px: model.get_image_features(pixel_values=px).pooler_output  # noqa: E731
        return model, text, image
    import altclip

    if impl.startswith("altclip-onnx"):
        from altclip.runtime.onnx import OnnxModel

        model = OnnxModel.from_pretrained(folder / impl)
        return model, model.get_text_features, model.get_image_features
    from altclip.runtime.hardware import choose_precision

    matmul = {"altclip-int8": "int8", "altclip-auto": choose_precision(torch.device("cpu")).name}.get(impl)
    model = altclip.AltCLIPModel.from_pretrained(folder, precision=matmul)
    if impl == "altclip-compile":
        from altclip.runtime.loading import compile_towers

        compile_towers(model)
    return model, model.get_text_features, model.get_image_features


def worker(impl: str, folder: Path, config: dict[str, Any], seconds: float, mixed: list[str]) -> dict[str, Any]:
    torch.manual_seed(0)
    model, text, image = load(impl, folder)
    results: dict[str, Any] = {"image": {}, "text": {}}
    size = config["vision_config"].get("image_size", 224)
    with torch.inference_mode():
        start = time.perf_counter()
        image(torch.randn(1, 3, size, size))  # the first call pays torch.compile's compilation
        results["first_image_call_s"] = time.perf_counter() - start
        results["load_dtype"] = str(getattr(model, "autocast_dtype", None) or "")
        results["parity"] = compare(folder, text, image)
        for batch in IMAGE_BATCHES:
            px = torch.randn(batch, 3, size, size)
            results["image"][str(batch)] = batch / timed(lambda px=px: image(px), seconds)
        vocab = config["text_config"].get("vocab_size", 250002)
        for length in TEXT_LENGTHS:
            for batch in TEXT_BATCHES:
                ids = torch.randint(3, vocab, (batch, length))
                ids[:, 0], ids[:, -1] = 0, 2
                mask = torch.ones_like(ids)
                results["text"][f"{length}x{batch}"] = batch / timed(lambda i=ids, m=mask: text(i, m), seconds)
        results["mixed"] = run_mixed(impl, model, folder, mixed)
    results["peak_rss_gb"] = peak_memory_gb()
    choice = getattr(model, "int8_kernel", None)
    if choice is not None:
        results["int8_kernel"] = choice.reason()
    return results


def machine() -> dict[str, Any]:
    """What the report's header says: the CPU as torch runs it here, auto's choice, the float32 ceiling."""
    from altclip.runtime.hardware import choose_precision, detect_cpu

    auto = choose_precision(torch.device("cpu"))
    return {
        "cpu": detect_cpu().describe(),
        "auto": f"{auto.name} ({auto.reason})",
        "ceiling": matmul_ceiling(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run_mixed(impl: str, model, folder: Path, texts: list[str]) -> dict[str, float]:
    """Embed the workload: transformers as the docs do it (batches of 32 in order, padded to the longest);
    altclip through its Embedder (length-bucketed batches of 32)."""
    import altclip

    tokenizer = altclip.XLMRobertaTokenizer.from_pretrained(folder)
    start = time.perf_counter()
    if impl.startswith("transformers"):
        real = padded = 0
        for i in range(0, len(texts), 32):
            inputs = tokenizer(texts[i : i + 32], padding=True, return_tensors="pt")
            real += int(inputs["attention_mask"].sum())
            padded += inputs["input_ids"].numel()
            model.get_text_features(**inputs)
    else:
        from altclip.embedder import Embedder

        embedder = Embedder(model, altclip.AltCLIPProcessor(altclip.CLIPImageProcessor(), tokenizer), batch_size=32)
        embedder.embed_texts(texts)
        lengths = sorted(len(ids) for ids in tokenizer(texts)["input_ids"])
        real = sum(lengths)
        padded = sum(max(lengths[i : i + 32]) * len(lengths[i : i + 32]) for i in range(0, len(lengths), 32))
    seconds = time.perf_counter() - start
    return {"texts_per_s": len(texts) / seconds, "padding_share": 1 - real / padded}


# -- the orchestrating run ---------------------------------------------------------------------------


def prepare(folder: Path, size: str, texts: list[str]) -> dict[str, Any]:
    """Random weights saved once (transformers writes them), a tokenizer trained on the workload."""
    import transformers

    import altclip
    from altclip.processing.tokenization import train_sentencepiece

    config = SIZES[size]
    torch.manual_seed(0)
    transformers.AltCLIPModel(transformers.AltCLIPConfig.from_dict(config)).save_pretrained(folder)
    spm = train_sentencepiece(texts, folder / "sentencepiece.bpe.model", vocab_size=4000)
    altclip.XLMRobertaTokenizer.from_sentencepiece(spm).save_pretrained(folder)
    return config


def export(folder: Path, impl: str, quantize: str | None) -> float:
    """Write the ONNX export an altclip-onnx worker runs; returns the seconds it took."""
    import altclip
    from altclip.runtime.export import export_onnx

    start = time.perf_counter()
    export_onnx(altclip.AltCLIPModel.from_pretrained(folder), folder / impl, quantize=quantize)
    altclip.XLMRobertaTokenizer.from_pretrained(folder).save_pretrained(folder / impl)
    return time.perf_counter() - start


def reference(folder: Path, config: dict[str, Any]) -> None:
    """transformers' (eager) features on fixed inputs, padded texts included: what every worker is checked against."""
    import transformers

    theirs = transformers.AltCLIPModel.from_pretrained(folder, attn_implementation="eager").eval()
    size = config["vision_config"]["image_size"]
    ids = torch.randint(3, 4000, (3, 20))
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones_like(ids)
    ids[1, 12:], mask[1, 12:] = 1, 0  # a padded row
    px = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        text = theirs.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        image = theirs.get_image_features(pixel_values=px).pooler_output
    inputs = {"ids": ids, "mask": mask, "px": px, "text": text, "image": image}
    torch.save(inputs, folder / "reference.pt")


def compare(folder: Path, text, image) -> dict[str, float]:
    """Max |difference| and min cosine of this implementation's features against transformers'."""
    ref = torch.load(folder / "reference.pt", weights_only=True)
    ours = {"text": text(ref["ids"], ref["mask"]).float(), "image": image(ref["px"]).float()}
    diff = max(float((ours[k] - ref[k]).abs().max()) for k in ours)
    cosine = min(float(torch.nn.functional.cosine_similarity(ours[k], ref[k]).min()) for k in ours)
    return {"max_abs_diff": diff, "min_cosine": cosine}


def report(isa: str, results: dict[str, dict[str, Any]], config: dict[str, Any], here: dict[str, Any]) -> str:
    from altclip.tables import format_table

    impls = list(results)
    hf = [i for i in impls if i.startswith("transformers") and not i.endswith("-bf16")] or impls[:1]
    ceiling = here["ceiling"]

    def best(section: str, key: Any) -> float:
        return max(results[i][section][key] for i in hf)

    limits = " ".join(f"{k}={v}" for k, v in ISA_LIMITS[isa].items()) or "none"
    lines = [
        f"== {isa}: instruction-set limits {limits}",
        f"CPU: {here['cpu']}",
        f"--precision auto here: {here['auto']}",
        f"float32 matmul ceiling: {ceiling:.1f} GFLOP/s",
        f"threads: {here['threads']}, torch {here['torch']}",
        *(f"int8 kernel: {results[i]['int8_kernel']}" for i in impls if "int8_kernel" in results[i]),
    ]
    if "altclip" in results:  # each mode against altclip's own float32, images at each batch
        own = results["altclip"]["image"]
        for impl in impls:
            ratios = " / ".join(f"{results[impl]['image'][str(b)] / own[str(b)]:.2f}x" for b in IMAGE_BATCHES)
            lines.append(f"images vs altclip float32, batch {' / '.join(map(str, IMAGE_BATCHES))}: {impl} {ratios}")
    image_flops = flops_per_image(config["vision_config"])
    rows = []
    for batch in IMAGE_BATCHES:
        for impl in impls:
            rate = results[impl]["image"][str(batch)]
            rows.append(
                [
                    f"image b{batch}",
                    impl,
                    f"{rate:.2f}",
                    f"{rate / best('image', str(batch)):.2f}x",
                    f"{rate * image_flops / 1e9:.1f}",
                    f"{rate * image_flops / 1e9 / ceiling:.0%}",
                ]
            )
    text = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24} | config["text_config"]
    for length in TEXT_LENGTHS:
        for batch in TEXT_BATCHES:
            key = f"{length}x{batch}"
            for impl in impls:
                rate = results[impl]["text"][key]
                gflops = rate * length * flops_per_token(text, length) / 1e9
                rows.append(
                    [
                        f"text L{length} b{batch}",
                        impl,
                        f"{rate:.2f}",
                        f"{rate / best('text', key):.2f}x",
                        f"{gflops:.1f}",
                        f"{gflops / ceiling:.0%}",
                    ]
                )
    hf_mixed = max(results[i]["mixed"]["texts_per_s"] for i in hf)
    for impl in impls:
        mixed = results[impl]["mixed"]
        rows.append(
            [
                "mixed names",
                impl,
                f"{mixed['texts_per_s']:.2f}",
                f"{mixed['texts_per_s'] / hf_mixed:.2f}x",
                f"padding {mixed['padding_share']:.0%}",
                "",
            ]
        )
    table = format_table(
        ["workload", "implementation", "per s", "vs transformers best (float32)", "GFLOP/s", "of ceiling"], rows
    )
    memory = format_table(
        [
            "implementation",
            "peak memory (GB)",
            "max |diff| vs transformers eager",
            "min cosine",
            "first image call (s)",
        ],
        [
            [
                i,
                f"{results[i]['peak_rss_gb']:.2f}",
                f"{results[i]['parity']['max_abs_diff']:.2e}",
                f"{results[i]['parity']['min_cosine']:.6f}",
                f"{results[i]['first_image_call_s']:.1f}",
            ]
            for i in impls
        ],
    )
    return "\n".join(lines) + "\n\n" + table + "\n\n" + memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="real")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timing per measurement")
    parser.add_argument("--mixed", type=int, default=1400, help="texts in the mixed-length workload")
    parser.add_argument("--only", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    parser.add_argument("--isa", nargs="+", choices=sorted(ISA_LIMITS), default=["native", "avx2"])
    parser.add_argument("--json", help="also write the raw numbers here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    texts = mixed_workload(args.mixed)
    if args.worker:
        config = json.loads(Path(args.folder, "bench.json").read_text())
        found = (
            machine()
            if args.worker == "machine"
            else worker(args.worker, Path(args.folder), config, args.seconds, texts)
        )
        print(json.dumps(found))
        return 0
    raw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = prepare(folder, args.size, texts)
        (folder / "bench.json").write_text(json.dumps(config))
        for impl, quantize in (("altclip-onnx", None), ("altclip-onnx-int8", "int8")):
            if impl in args.only:
                print(f"exporting {impl} ...", file=sys.stderr, flush=True)
                print(f"{impl} export: {export(folder, impl, quantize):.0f} s", file=sys.stderr, flush=True)
        reference(folder, config)
        for isa in args.isa:
            here = child("machine", isa, folder, args)
            results = {impl: child(impl, isa, folder, args) for impl in args.only}
            raw[isa] = {"machine": here, "results": results}
            print(report(isa, results, config, here) + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2))
    return 0


def child(task: str, isa: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One implementation's measurements (or the machine's header) from a fresh process under ``isa``'s limits."""
    print(f"{isa}: measuring {task} ...", file=sys.stderr, flush=True)
    command = [sys.executable, __file__, "--worker", task, "--folder", str(folder), "--size", args.size]
    command += ["--seconds", str(args.seconds), "--mixed", str(args.mixed)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **ISA_LIMITS[isa]}
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{task} ({isa}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
