"""The altclip command: tables and JSON equal to direct calls, help with examples, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from altclip.cli import build_parser, main
from altclip.cli.common import precision_of
from altclip.search.collection import Collection
from altclip.tables import display_width, format_table
from altclip.tasks import Embedder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def subcommands(parser) -> dict[str, object]:
    """Every command and subcommand parser by its words ("eval retrieval")."""
    found = {}
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, sub in action.choices.items():
            found[name] = sub
            found.update({f"{name} {k}": v for k, v in subcommands(sub).items()})
    return found


def test_help_lists_every_command_with_an_example():
    result = subprocess.run([sys.executable, "-m", "altclip.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("classify", "similarity", "embed", "index", "search", "serve", "doctor"):
        assert command in result.stdout and f"altclip {command}" in result.stdout
    commands = subcommands(build_parser())
    assert {"eval retrieval", "train distill", "export onnx", "explain", "demo", "init"} <= set(commands)
    for words, sub in commands.items():
        text = sub.format_help()
        assert "example:" in text and f"  altclip {words}" in text.split("example:", 1)[1], words


def test_classify_table_and_json_equal_direct_calls(capsys, altclip_checkpoint, image_folder):
    images = [str(p) for p in sorted(image_folder.glob("img*"))[:2]]
    labels = ["猫", "狗", "鸟"]
    expected = Embedder.from_pretrained(altclip_checkpoint, precision="auto").classify(images, labels, lang="zh")
    code, out, _ = run(
        capsys, "classify", *images, "--labels", *labels, "--lang", "zh", "--model", str(altclip_checkpoint), "--json"
    )
    assert code == 0
    for result, row in zip(json.loads(out), expected, strict=True):
        got = {p["label"]: p["probability"] for p in result["predictions"]}
        assert got == pytest.approx({label: float(p) for label, p in zip(labels, row, strict=True)}, abs=1e-6)
    code, out, _ = run(
        capsys,
        "classify",
        images[0],
        "--labels",
        *labels,
        "--template",
        "一张{}的照片",
        "--model",
        str(altclip_checkpoint),
        "--top-k",
        "2",
    )
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["image", "rank", "label", "probability"] and len(lines) == 4


def test_similarity_json_equals_direct_calls(capsys, clip_checkpoint, image_folder):
    images = [str(p) for p in sorted(image_folder.glob("img*"))[:3]]
    texts = ["a cat", "a dog"]
    code, out, _ = run(
        capsys, "similarity", "--image", *images, "--text", *texts, "--model", str(clip_checkpoint), "--json"
    )
    expected = Embedder.from_pretrained(clip_checkpoint, precision="auto")
    assert code == 0
    np.testing.assert_allclose(json.loads(out)["cosine"], expected.similarity(images, texts).numpy(), atol=1e-6)
    assert json.loads(out)["precision"] == expected.precision.to_json()


def test_embed_index_search(capsys, tmp_path, altclip_checkpoint, image_folder):
    out_dir = tmp_path / "emb"
    model = str(altclip_checkpoint)
    code, out, _ = run(
        capsys,
        "embed",
        str(image_folder),
        "--out",
        str(out_dir),
        "--model",
        model,
        "--workers",
        "0",
        "--part-size",
        "8",
    )
    assert code == 0 and "skipped 5:" in out and "Flat over 30 images" in out and "recall@10 1.0" in out
    code, out, _ = run(capsys, "search", str(out_dir), "--text", "一只猫", "-k", "3", "--json")
    hits = json.loads(out)
    query = Embedder.from_pretrained(model, precision="auto").embed_texts(["一只猫"])[0].numpy()
    collection = Collection.open(out_dir)
    scores = collection.embeddings().astype(np.float32) @ query
    best = np.argsort(-scores)[:3]
    assert code == 0 and [h["path"] for h in hits] == [collection.ok_paths()[i] for i in best]
    image = collection.ok_paths()[4]
    code, out, _ = run(capsys, "search", str(out_dir), "--image", image, "-k", "1")
    assert code == 0 and image in out.splitlines()[2]
    code, out, err = run(capsys, "search", str(out_dir), "--image", image, "-k", "3", "--dedup", "--json")
    hits = json.loads(out)
    vectors = collection.embeddings().astype(np.float32)[[h["id"] for h in hits]]
    assert code == 0 and hits[0]["path"] == image and "near-duplicates" in err
    assert ((vectors @ vectors.T)[np.triu_indices(len(hits), 1)] < 0.94).all()
    code, out, _ = run(capsys, "index", str(out_dir), "--exact-max", "10", "--json")
    assert code == 0 and json.loads(out)["kind"] == "hnsw"
    code, _, err = run(capsys, "index", str(out_dir), "--kind", "ivfpq", "--memory", "1GB")
    assert code == 1 and "IVF-PQ needs at least 624 vectors to train its codes, not 30" in err
    code, out, _ = run(capsys, "search", str(out_dir), "--text", "一只猫", "-k", "3", "--mmap", "--json")
    assert code == 0 and [h["path"] for h in json.loads(out)] == [collection.ok_paths()[i] for i in best]


def test_precision_defaults_to_auto_for_the_bulk_and_interactive_commands(capsys, clip_checkpoint, image_folder):
    parser = build_parser()
    image = str(next(image_folder.glob("img*")))
    for argv in (
        ["classify", image, "--labels", "a"],
        ["similarity", "--image", image, "--text", "a"],
        ["embed", "photos", "--out", "emb"],
        ["search", "emb", "--text", "a"],
        ["serve", "emb"],
    ):
        assert precision_of(parser.parse_args(argv)) == "auto", argv
    assert precision_of(parser.parse_args(["eval", "retrieval", "--data", "pairs.jsonl"])) == "float32"
    assert precision_of(parser.parse_args(["classify", image, "--labels", "a", "--precision", "int8"])) == "int8"
    assert precision_of(parser.parse_args(["classify", image, "--labels", "a", "--dtype", "float32"])) == "float32"
    # what auto chose, and why, on stderr (stdout stays the result)
    code, out, err = run(capsys, "classify", image, "--labels", "a", "b", "--model", str(clip_checkpoint), "--json")
    choice = Embedder.from_pretrained(clip_checkpoint, precision="auto").precision
    assert code == 0 and json.loads(out) and f"precision {choice.name} (auto: {choice.reason})" in err


def test_errors_are_one_clear_line(capsys, tmp_path, altclip_checkpoint):
    code, _, err = run(capsys, "classify", "x.jpg", "--labels", "a", "--model", str(tmp_path / "absent"))
    assert code == 1 and "absent is not a folder" in err
    code, _, err = run(
        capsys, "classify", str(tmp_path / "no.jpg"), "--labels", "a", "--model", str(altclip_checkpoint)
    )
    assert code == 1 and "no.jpg: no such file" in err
    code, _, err = run(capsys, "search", str(tmp_path), "--text", "a")
    assert code == 1 and "not an embedding folder" in err
    with pytest.raises(SystemExit):
        main(["search", str(tmp_path)])  # neither --text nor --image


def test_tables_line_up_wide_characters():
    lines = format_table(["label", "p"], [("猫", 0.5), ("cat", 0.25)]).splitlines()

    def column(line: str, text: str) -> int:  # display column, counting wide characters as two
        return display_width(line[: line.index(text)])

    assert column(lines[2], "0.5000") == column(lines[3], "0.2500") == column(lines[0], "p") == len("label") + 2


def test_a_bug_shows_its_traceback(monkeypatch, tmp_path):
    """A user's mistake is one line and exit 1 (above); anything else is a bug, and its traceback shows."""
    from altclip.cli import collection

    def broken(args):
        raise ValueError("a bug, not the user's input")

    monkeypatch.setattr(collection, "cmd_index", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["index", str(tmp_path)])
