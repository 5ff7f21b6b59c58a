"""Small file helpers: atomic writes, JSON objects, .npy arrays, pictures, sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from altclip.errors import InputError
from altclip.files import atomic_path, parse_size, read_json, write_image, write_json, write_npy


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("2MiB") == 2 * 2**20
    assert parse_size(123) == 123
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size("lots", "max_shard_size")


def test_json_npy_and_pictures_round_trip(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": "猫"}, sort_keys=True)
    text = (tmp_path / "a.json").read_text(encoding="utf-8")
    assert read_json(tmp_path / "a.json") == {"a": "猫", "b": 1} and text.index('"a"') < text.index('"b"')
    assert "猫" in text  # written as UTF-8, not escaped
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    with pytest.raises(InputError, match="must hold a JSON object"):
        read_json(tmp_path / "list.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match=r"bad\.json is not valid JSON"):
        read_json(tmp_path / "bad.json")
    array = np.arange(6, dtype=np.float16).reshape(2, 3)
    np.testing.assert_array_equal(np.load(write_npy(tmp_path / "a.npy", array)), array)
    picture = Image.new("RGB", (4, 3), (255, 0, 0))
    assert Image.open(write_image(tmp_path / "a.png", picture)).size == (4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.npy", "a.png", "bad.json", "list.json"]
