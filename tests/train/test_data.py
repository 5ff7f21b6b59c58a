"""Reading training data leniently, and the deterministic sampler."""

from __future__ import annotations

import json

import pytest

from altclip.datafiles import read_pairs, read_parallel
from altclip.train.data import micro_batch_indices


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


def test_processes_split_exactly_what_one_process_sees():
    one = micro_batch_indices(103, batch=8, world=1, rank=0, seed=3, epoch=2)
    parts = [micro_batch_indices(103, batch=4, world=2, rank=r, seed=3, epoch=2) for r in range(2)]
    assert len(one) == len(parts[0]) == 12
    assert all(a == b + c for a, b, c in zip(one, *parts, strict=True))
    assert micro_batch_indices(103, 8, 1, 0, 3, 2) == one and micro_batch_indices(103, 8, 1, 0, 3, 3) != one
    assert len({i for batch in one for i in batch}) == 96
