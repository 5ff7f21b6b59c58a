"""What every command shares: how a subcommand is declared, the shared options (declared once here), printing a
table or JSON, and loading the model a command runs."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from altclip.tables import format_table

Handler = Callable[[argparse.Namespace], int]
Subparsers = argparse._SubParsersAction  # what add_subparsers returns


def command(
    sub: Subparsers, name: str, run: Handler, parents: Sequence[argparse.ArgumentParser] = ()
) -> argparse.ArgumentParser:
    """A subcommand whose help, description and examples are its handler's docstring: the first paragraph is the
    help, the paragraphs after it the description (the help where there are none), and the lines under
    "examples:" the examples."""
    help, description, examples = read_docstring(run)
    parser = sub.add_parser(
        name,
        parents=list(parents),
        help=help,
        description=description,
        epilog=epilog(examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def group(sub: Subparsers, name: str, help: str, dest: str, examples: str) -> Subparsers:
    """A command made of subcommands (``eval retrieval``, ``train distill``), which it names in ``dest``."""
    parser = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=epilog(examples.splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.add_subparsers(dest=dest, required=True, metavar=dest.upper())


def epilog(examples: Sequence[str]) -> str | None:
    return "example:\n" + "\n".join(f"  {line}" for line in examples) if examples else None


def read_docstring(handler: Handler) -> tuple[str, str, list[str]]:
    """(help, description, example lines) of a handler's docstring."""
    text = inspect.cleandoc(handler.__doc__ or "")
    body, _, examples = text.partition("\nexamples:\n")
    help, _, description = body.partition("\n\n")
    help = " ".join(help.split())
    lines = [line.removeprefix("  ") for line in examples.splitlines() if line.strip()]
    return help, " ".join(description.split()) or help, lines


def add_json(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_device(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if present)")


def add_precision(parser: argparse.ArgumentParser | argparse._ArgumentGroup, choices: Sequence[str], help: str) -> None:
    """--precision, and --dtype, its name before 0.2, kept as an alias for one release."""
    parser.add_argument("--precision", choices=list(choices), help=help)
    parser.add_argument("--dtype", dest="precision", choices=list(choices), help=argparse.SUPPRESS)


def model_options() -> argparse.ArgumentParser:
    """The options of every command that runs a model: which model, where, in what precision, how fed."""
    from altclip.runtime.hardware import PRECISIONS
    from altclip.runtime.loading import BACKENDS

    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--model", help="hub name or local folder (default BAAI/AltCLIP)")
    options.add_argument("--adapter", help="a LoRA adapter folder (`altclip finetune --lora`) to load over --model")
    add_device(options)
    add_precision(
        options,
        PRECISIONS,
        "auto: the fastest precision this machine computes natively (bfloat16 on CPUs with AVX512-BF16 or "
        "AMX and on GPUs from compute capability 8.0, float16 on older GPUs, else float32; `altclip doctor` "
        "measures it); the default for classify, similarity, embed, search and serve, float32 for the rest. "
        "bfloat16/float16: matrix multiplies in 16 bits, the rest float32. int8: int8 weights and activations "
        "(CPU). --dtype is an old name of this option",
    )
    options.add_argument(
        "--backend",
        default="torch",
        choices=BACKENDS,
        help="compile: torch.compile both towers; onnx: run a folder written by `altclip export onnx` in "
        "ONNX Runtime (CPU)",
    )
    options.add_argument("--batch-size", type=int, default=32)
    options.add_argument("--workers", type=int, default=2, help="image decoding processes (default 2)")
    add_json(options)
    return options


def emit(args: argparse.Namespace, data: Any, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """``data`` as JSON with --json, else ``rows`` as a table."""
    if args.json:
        print_json(data)
    else:
        print(format_table(headers, rows))


def print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


AUTO_PRECISION_COMMANDS = ("classify", "similarity", "embed", "search", "serve")


def precision_of(args: argparse.Namespace) -> str:
    """--precision as given, else auto for the bulk and interactive commands and float32 for the rest."""
    return args.precision or ("auto" if args.command in AUTO_PRECISION_COMMANDS else "float32")


def made_with(args: argparse.Namespace, collection: Any) -> tuple[str, str | None]:
    """The model to query a collection with: ``--model`` when given, else the one its manifest records (with
    the hub revision it was made with, and the adapter, unless ``--adapter`` names one)."""
    if args.model:
        return args.model, None
    adapter = collection.manifest.adapter
    if adapter and getattr(args, "adapter", None) is None:
        args.adapter = adapter["path"]
    return collection.manifest.model, collection.manifest.revision


def load_embedder(args: argparse.Namespace, model: str | None = None, revision: str | None = None, device: Any = None):
    """The ``Embedder`` the command's model options describe; what it runs in is said on stderr."""
    from altclip.embedder import Embedder
    from altclip.runtime.loading import DEFAULT_MODEL

    embedder = Embedder.from_pretrained(
        model or args.model or DEFAULT_MODEL,
        device=device or args.device,
        precision=precision_of(args),
        batch_size=args.batch_size,
        backend=args.backend,
        revision=revision,
        adapter=getattr(args, "adapter", None),
    )
    print(f"altclip: {embedder.precision.describe()}", file=sys.stderr)  # stderr: stdout stays the result
    kernel = getattr(embedder.model, "int8_kernel", None)
    if kernel is not None:
        print(f"altclip: int8 kernel {kernel.kernel}, {kernel.speedup:.2f}x float32 on this CPU", file=sys.stderr)
    return embedder
