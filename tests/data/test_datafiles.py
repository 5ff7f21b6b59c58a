"""Reading data files leniently: parallel text and image-text pairs, bad lines skipped and counted."""

from __future__ import annotations

import json
import pickle

import pytest

from altclip.data.datafiles import ParallelLines, read_pairs


def test_parallel_tsv_skips_and_counts_bad_lines(parallel_tsv):
    lines = ParallelLines(parallel_tsv)
    assert len(lines) == 900 and lines[0]["lang"] == "zh"
    assert dict(lines.skipped) == {"malformed line": 2, "empty text": 1}
    # read by offset, row for row what the file says, header and bad lines left out
    expected = [line.split("\t") for line in parallel_tsv.read_text(encoding="utf-8").splitlines()[1:]]
    expected = [dict(zip(("src", "tgt", "lang"), cells, strict=True)) for cells in expected if len(cells) == 3]
    expected = [row for row in expected if row["src"] and row["tgt"]]
    assert [lines[i] for i in range(len(lines))] == expected
    copy = pickle.loads(pickle.dumps(lines))  # what a loader worker gets: offsets, not rows
    assert copy[899] == lines[899] and len(pickle.dumps(lines)) < 16 * len(lines) + 2000


def test_parallel_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"src": "cat", "tgt": "猫", "lang": "zh"}),
                "[1, 2]",
                "{bad",
                json.dumps({"src": "dog"}),
                json.dumps({"src": "dog", "tgt": "狗"}),
            ]
        )
    )
    lines = ParallelLines(path)
    assert [lines[i]["tgt"] for i in range(len(lines))] == ["猫", "狗"] and lines[1]["lang"] == ""
    assert dict(lines.skipped) == {"malformed line": 2, "missing field": 1}
    path.write_text("[1]\n\n")
    with pytest.raises(ValueError, match=r"no usable rows \(skipped: \{'malformed line': 1\}\)"):
        ParallelLines(path)


def test_pairs_jsonl_and_csv(tmp_path, pairs_jsonl):
    table = read_pairs(pairs_jsonl)
    assert len(table) == 49 and dict(table.skipped) == {"malformed line": 1, "empty text": 1}
    assert table.rows[0]["image"].startswith(str(pairs_jsonl.parent))
    csv = tmp_path / "pairs.csv"
    csv.write_text('image,caption,lang\n/a.png,"a cat, sitting",en\n/b.png,,zh\n')
    table = read_pairs(csv)
    assert table.rows == [{"image": "/a.png", "caption": "a cat, sitting", "lang": "en"}]
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="no usable rows"):
        read_pairs(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="no such data file"):
        read_pairs(tmp_path / "absent.jsonl")
