"""altclip demo: the AltCLIP recipe in miniature, offline."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from altclip.cli.common import Subparsers, add_device, add_json, command, print_json


def cmd_demo(args: argparse.Namespace) -> int:
    """the AltCLIP recipe in miniature, offline, on emoji named in 14 languages

    Train a small CLIP teacher on English emoji names, distil it into a multilingual AltCLIP student, train that
    contrastively, and compare both on held-out emoji in 14 languages (Noto Color Emoji + CLDR names):
    retrieval, zero-shot classification (the flag emoji by their CLDR country names, emoji by skin tone), and the
    pointing game of relevance maps.

    examples:
      altclip demo --out altclip-demo
      altclip demo --out altclip-demo-cldr --phase1-sources languages scripts currencies units locales timezones
      altclip demo --out altclip-demo-emoji --phase1-sources    # phase 1 on the emoji names alone
    """
    from altclip.demo.run import DemoConfig, run_demo

    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig) if getattr(args, f.name, None) is not None
    }
    if "phase1_sources" in given:
        given["phase1_sources"] = tuple(given["phase1_sources"])
    result = run_demo(DemoConfig(**{**given, "out": Path(args.out)}, progress=not args.json))
    if args.json:
        print_json(result.to_json())
    else:
        print(result.describe())
    return 0


def register(sub: Subparsers, model: argparse.ArgumentParser) -> None:
    p = command(sub, "demo", cmd_demo)
    p.add_argument("--out", default="altclip-demo", help="work folder (finished stages are reused)")
    p.add_argument("--font", help="NotoColorEmoji.ttf, if not installed where Debian puts it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="use only this many emoji (a quick smoke run)")
    p.add_argument("--teacher-epochs", type=int)
    p.add_argument("--distill-epochs", type=int)
    p.add_argument("--contrastive-epochs", type=int)
    p.add_argument(
        "--phase1-sources",
        nargs="*",
        metavar="SOURCE",
        help="CLDR display names phase 1 reads besides the emoji names: any of languages, scripts, currencies, "
        "units, calendar, locales, timezones (altclip.demo.cldr; default: locales timezones; none given: the emoji "
        "names alone)",
    )
    p.add_argument("--workers", type=int, default=2)
    add_device(p)
    add_json(p)
