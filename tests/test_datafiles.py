"""Reading data files leniently: parallel text and image-text pairs, bad lines skipped and counted."""

from __future__ import annotations

import json

import pytest

from altclip.datafiles import read_pairs, read_parallel


def test_parallel_tsv_skips_and_counts_bad_lines(parallel_tsv):
    table = read_parallel(parallel_tsv)
    assert len(table) == 900 and table.rows[0]["lang"] == "zh"
    assert dict(table.skipped) == {"malformed line": 2, "empty text": 1}


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
    table = read_parallel(path)
    assert [r["tgt"] for r in table.rows] == ["猫", "狗"] and table.rows[1]["lang"] == ""
    assert dict(table.skipped) == {"malformed line": 2, "missing field": 1}


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
