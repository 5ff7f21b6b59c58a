"""The ``altclip`` command: the root parser, the command groups it gathers, and the error boundary.

Each command group lives in its own module beside this one, its options beside its handler: ``inference``
(classify, similarity, explain), ``collection`` (embed, index, search), ``serve``, ``evaluate`` (eval),
``runtime`` (export, doctor), ``train`` (init, train) and ``demo``. Nothing imports the command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from altclip.cli import collection, demo, evaluate, inference, runtime, serve, train
from altclip.cli.common import model_options
from altclip.errors import AltCLIPError

EXAMPLES = """\
examples:
  altclip classify cat.jpg dog.jpg --labels cat dog bird
  altclip classify cat.jpg --labels 猫 狗 鸟 --lang zh
  altclip similarity --image cat.jpg --text "a photo of a cat" "一张狗的照片"
  altclip explain cat.jpg --text 猫 "a red ball" --out maps/
  altclip embed ~/photos --out ~/photos.emb --workers 4
  altclip embed 'shards/{00000..00127}.tar' --out shards.emb --captions
  torchrun --nproc_per_node 4 -m altclip.cli embed 'shards/{00000..00127}.tar' --out shards.emb
  altclip index ~/photos.emb --kind auto --memory 4GB
  altclip search ~/photos.emb --text "夕阳下的海滩" -k 5
  altclip search ~/photos.emb --image query.jpg --json
  altclip serve ~/photos.emb    # then open http://127.0.0.1:8000
  altclip demo --out altclip-demo
  altclip export onnx --model BAAI/AltCLIP --out altclip-onnx
  altclip classify cat.jpg --labels cat dog --model altclip-onnx --backend onnx
  altclip doctor                # this machine, and which precision is fastest on it
  altclip eval retrieval --data flickr30k-cn.jsonl --report report/
  altclip eval zeroshot --data imagenet-val --classnames names_zh.txt --lang zh
  altclip init --clip openai/clip-vit-large-patch14 --text FacebookAI/xlm-roberta-large --out student
  altclip train distill --teacher openai/clip-vit-large-patch14 --student student --data parallel.tsv --out run1
  altclip train contrastive --model run1/model --data pairs.jsonl --out run2 --precision bfloat16
  torchrun --nproc_per_node 8 -m altclip.cli train contrastive --model run1/model --data pairs.jsonl --out run2
  altclip finetune --model BAAI/AltCLIP --data my_pairs.jsonl --out ft --lora 16 --val 0.1 --merge

Models are hub names (default BAAI/AltCLIP, read from the Hugging Face cache; HF_HUB_OFFLINE=1 is
honoured) or local folders written by save_pretrained.
"""

GROUPS = (inference, collection, serve, evaluate, runtime, train, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="altclip",
        description="AltCLIP and CLIP: multilingual image-text models.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model = model_options()
    for group in GROUPS:
        group.register(sub, model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Errors the user can fix (``AltCLIPError``) print as one line and exit 1; anything else
    is a bug and shows its traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except AltCLIPError as err:
        print(f"altclip {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\naltclip {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
