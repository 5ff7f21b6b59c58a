"""The public benchmarks' layouts, written here file by file as they are published, read and evaluated.

Each layout holds the same coloured shapes with English and Chinese captions, so every format must give the
numbers our own pairs file gives on the same images and captions.
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest
import torch

from altclip.cli import main
from altclip.evaluate.datasets import (
    BenchmarkError,
    guess_format,
    published_for,
    read_retrieval_set,
)
from altclip.evaluate.retrieval import evaluate_set, recall_at_k
from altclip.modeling.models import normalize
from altclip.tasks import Embedder
from tests.conftest import COLOURS, SHAPES, draw

ITEMS = [(colour, shape) for colour in COLOURS for shape in SHAPES]  # 12 images


def english(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def chinese(colour: str, shape: str) -> str:
    return COLOURS[colour][0] + SHAPES[shape]


def save_images(folder: Path, suffix: str = ".jpg", names: list[str] | None = None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"{colour}-{shape}{suffix}" for colour, shape in ITEMS]
    for name, (colour, shape) in zip(names, ITEMS, strict=True):
        draw(COLOURS[colour][1], shape).save(folder / name, quality=95)
    return names


def pairs_file(folder: Path, images: Path, names: list[str], captions: int = 1) -> Path:
    """Our own format for the same set: one line per caption."""
    lines = []
    for name, (colour, shape) in zip(names, ITEMS, strict=True):
        for n in range(captions):
            lines.append({"image": str(images / name), "caption": english(colour, shape) + "." * n, "lang": "en"})
            lines.append({"image": str(images / name), "caption": chinese(colour, shape) + "。" * n, "lang": "zh"})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


def write_xtd10(root: Path) -> tuple[Path, Path]:
    images = root / "coco" / "train2014"
    names = save_images(images, names=[f"COCO_train2014_{i:012d}.jpg" for i in range(len(ITEMS))])
    data = root / "XTD10"
    data.mkdir(parents=True)
    (data / "test_image_names.txt").write_text("\n".join(names) + "\n")
    (data / "test_1kcaptions_en.txt").write_text("\n".join(english(*item) for item in ITEMS) + "\n")
    (data / "test_1kcaptions_zh.txt").write_text("\n".join(chinese(*item) for item in ITEMS) + "\n", encoding="utf-8")
    return data, images


def write_xm3600(root: Path) -> Path:
    keys = [f"{i:016x}" for i in range(len(ITEMS))]
    save_images(root / "images", names=[f"{k}.jpg" for k in keys])
    lines = []
    for key, item in zip(keys, ITEMS, strict=True):
        record = {
            "image/key": key,
            "en": {"caption": [english(*item), english(*item) + "."], "caption/tokenized": ["x"]},
            "zh": {"caption": [chinese(*item), chinese(*item) + "。"], "caption/tokenized": ["x"]},
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_multi30k(root: Path) -> tuple[Path, Path]:
    """The multi30k/dataset repository's layout: task-2 raw files gzipped, task 1's Flickr30k image list."""
    images = root / "flickr30k-images"
    names = save_images(images, names=[f"{1000092795 + i}.jpg" for i in range(len(ITEMS))])
    raw = root / "dataset" / "data" / "task2" / "raw"
    raw.mkdir(parents=True)
    for n in (1, 2):
        for lang, caption in (("en", english), ("de", lambda c, s: f"ein {c} {s}")):
            text = "\n".join(caption(*item) + "." * (n - 1) for item in ITEMS) + "\n"
            (raw / f"test_2016.{n}.{lang}.gz").write_bytes(gzip.compress(text.encode()))
    splits = root / "dataset" / "data" / "task1" / "image_splits"
    splits.mkdir(parents=True)
    (splits / "test_2016_flickr.txt").write_text("\n".join(names) + "\n")
    return root / "dataset", images


def write_cn_clip(root: Path) -> Path:
    """Chinese-CLIP's packaging: ids and base64 JPEGs in a TSV, texts with their image ids in JSONL."""
    data = root / "Flickr30k-CN"
    data.mkdir(parents=True)
    images = save_images(root / "plain")
    rows, texts = [], []
    for i, (name, item) in enumerate(zip(images, ITEMS, strict=True)):
        rows.append(f"{1000 + i}\t{base64.urlsafe_b64encode((root / 'plain' / name).read_bytes()).decode()}")
        texts.append({"text_id": i, "text": chinese(*item), "image_ids": [1000 + i]})
    (data / "test_imgs.tsv").write_text("\n".join(rows) + "\n")
    (data / "test_texts.jsonl").write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts))
    return data


def scores_of(embedder: Embedder, path: Path, **kw) -> dict:
    scores, skipped = evaluate_set(embedder, read_retrieval_set(path, **kw), workers=0, progress=False)
    assert skipped == {}
    return {lang: s.to_json() for lang, s in scores.items()}


@pytest.fixture(scope="module")
def embedder(altclip_checkpoint) -> Embedder:
    return Embedder.from_pretrained(altclip_checkpoint)


def test_xtd10_equals_the_same_pairs(tmp_path, embedder):
    data, images = write_xtd10(tmp_path)
    assert guess_format(data) == "xtd10"
    read = read_retrieval_set(data, "xtd10", images)
    assert len(read.images) == 12 and len(read.captions) == 24 and set(read.langs) == {"en", "zh"}
    names = (data / "test_image_names.txt").read_text().split()
    assert scores_of(embedder, data, fmt="xtd10", images=images) == scores_of(
        embedder, pairs_file(tmp_path, images, names)
    )


def test_xtd10_japanese_is_ja_and_langs_filter(tmp_path):
    data, images = write_xtd10(tmp_path)
    (data / "test_1kcaptions_en.txt").rename(data / "test_1kcaptions_jp.txt")
    assert set(read_retrieval_set(data, "xtd10", images).langs) == {"ja", "zh"}
    only = read_retrieval_set(data, "xtd10", images, langs=["jp"])
    assert set(only.langs) == {"ja"} and len(only.captions) == 12
    with pytest.raises(BenchmarkError, match="no captions in ko; the set has: ja, zh"):
        read_retrieval_set(data, "xtd10", images, langs=["ko"])


def test_xtd10_errors_name_the_file_and_line(tmp_path):
    data, images = write_xtd10(tmp_path)
    with pytest.raises(BenchmarkError, match=r"COCO_train2014_000000000000\.jpg: missing image \(12 of 12"):
        read_retrieval_set(data, "xtd10")  # the images are not in XTD10/images
    lines = (data / "test_1kcaptions_zh.txt").read_text(encoding="utf-8").splitlines()
    (data / "test_1kcaptions_zh.txt").write_text("\n".join([*lines[:5], " ", *lines[6:]]) + "\n", encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"test_1kcaptions_zh\.txt:6: empty caption"):
        read_retrieval_set(data, "xtd10", images)
    (data / "test_1kcaptions_zh.txt").write_text("\n".join(lines[:11]) + "\n", encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"test_1kcaptions_zh\.txt: 11 lines for the 12 images"):
        read_retrieval_set(data, "xtd10", images)
    (data / "test_image_names.txt").unlink()
    with pytest.raises(BenchmarkError, match=r"test_image_names\.txt: missing"):
        read_retrieval_set(data, "xtd10", images)


def test_xm3600_every_caption_counts(tmp_path, embedder):
    root = write_xm3600(tmp_path / "xm3600")
    assert guess_format(root) == "xm3600"
    read = read_retrieval_set(root, "xm3600")
    assert len(read.images) == 12 and len(read.captions) == 48  # two captions per image per language
    names = [Path(p).name for p in read.images]
    assert scores_of(embedder, root, fmt="xm3600") == scores_of(
        embedder, pairs_file(tmp_path, root / "images", names, captions=2)
    )


def test_xm3600_errors_name_the_line(tmp_path):
    root = write_xm3600(tmp_path / "xm3600")
    lines = (root / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[2])
    bad["zh"] = {"caption": "not a list"}
    (root / "captions.jsonl").write_text("\n".join([*lines[:2], json.dumps(bad), *lines[3:]]), encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r'captions\.jsonl:3: "zh" has no "caption" list'):
        read_retrieval_set(root, "xm3600")
    (root / "captions.jsonl").write_text("\n".join([*lines[:4], "{oops", *lines[5:]]), encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"captions\.jsonl:5: not JSON"):
        read_retrieval_set(root, "xm3600")
    (root / "captions.jsonl").write_text("\n".join(lines), encoding="utf-8")
    (root / "images" / f"{json.loads(lines[7])['image/key']}.jpg").unlink()
    with pytest.raises(BenchmarkError, match=r"0{15}7\.jpg: missing image \(1 of 12 missing\)"):
        read_retrieval_set(root, "xm3600")


def test_multi30k_task2_in_the_repository_layout(tmp_path, embedder):
    data, images = write_multi30k(tmp_path)
    assert guess_format(data) == "multi30k"
    read = read_retrieval_set(data, "multi30k", images)
    assert len(read.captions) == 48 and set(read.langs) == {"en", "de"}  # 2 files x 2 languages x 12
    english_only = scores_of(embedder, data, fmt="multi30k", images=images, langs=["en"])
    names = [Path(p).name for p in read.images]
    pairs = scores_of(embedder, pairs_file(tmp_path, images, names, captions=2))
    assert set(english_only) == {"en"} and english_only["en"] == pairs["en"]


def test_multi30k_errors(tmp_path):
    data, images = write_multi30k(tmp_path)
    raw = data / "data" / "task2" / "raw"
    text = gzip.decompress((raw / "test_2016.2.de.gz").read_bytes()).decode().splitlines()
    (raw / "test_2016.2.de.gz").write_bytes(gzip.compress(("\n".join(text[:-1]) + "\n").encode()))
    with pytest.raises(BenchmarkError, match=r"test_2016\.2\.de\.gz: 11 lines for the 12 images"):
        read_retrieval_set(data, "multi30k", images)
    (data / "data" / "task1" / "image_splits" / "test_2016_flickr.txt").unlink()
    with pytest.raises(BenchmarkError, match="missing the Flickr30k image list"):
        read_retrieval_set(data, "multi30k", images)
    with pytest.raises(BenchmarkError, match="no task-2 test files"):
        read_retrieval_set(tmp_path / "flickr30k-images", "multi30k")


def test_cn_clip_reads_base64_images_in_place(tmp_path, embedder):
    data = write_cn_clip(tmp_path)
    assert guess_format(data) == "cn-clip"
    read = read_retrieval_set(data, "cn-clip")
    assert len(read.images) == 12 and set(read.langs) == {"zh"} and read.images[0].path.endswith("#1000")
    pairs = pairs_file(tmp_path, tmp_path / "plain", save_images(tmp_path / "plain"))
    assert scores_of(embedder, data, fmt="cn-clip") == scores_of(embedder, pairs, langs=["zh"])


def test_cn_clip_text_with_several_images_and_errors(tmp_path, embedder):
    data = write_cn_clip(tmp_path)
    texts = (data / "test_texts.jsonl").read_text(encoding="utf-8").splitlines()
    several = json.loads(texts[0])
    several["image_ids"] = [1000, 1005]
    (data / "test_texts.jsonl").write_text("\n".join([json.dumps(several), *texts[1:]]) + "\n")
    read = read_retrieval_set(data, "cn-clip")
    assert read.owners[0] == [0, 5]
    several["image_ids"] = [1000, 99]
    (data / "test_texts.jsonl").write_text("\n".join([*texts[:3], json.dumps(several), *texts[4:]]) + "\n")
    with pytest.raises(BenchmarkError, match=r"test_texts\.jsonl:4: image 99 is not in test_imgs\.tsv"):
        read_retrieval_set(data, "cn-clip")
    rows = (data / "test_imgs.tsv").read_text().splitlines()
    (data / "test_imgs.tsv").write_text("\n".join([*rows[:1], "1001 no tab", *rows[2:]]) + "\n")
    with pytest.raises(BenchmarkError, match=r"test_imgs\.tsv:2: not 'image id<TAB>base64 image'"):
        read_retrieval_set(data, "cn-clip")
    with pytest.raises(BenchmarkError, match=r"valid_imgs\.tsv: missing"):
        read_retrieval_set(data, "cn-clip", split="valid")


def test_a_caption_with_several_right_images_matches_a_naive_reference():
    g = torch.Generator().manual_seed(3)
    images = normalize(torch.randn(30, 6, generator=g))
    owners = [[i % 30, (7 * i + 3) % 30] if i % 3 == 0 else [i % 30] for i in range(45)]
    texts = normalize(images[[o[0] for o in owners]] + 1.2 * torch.randn(45, 6, generator=g))
    sims = texts @ images.t()
    scores = recall_at_k(images, texts, owners, chunk=7)
    for k in (1, 5, 10):
        top_images = sims.topk(k, dim=1).indices.tolist()
        t2i = sum(any(i in owners[m] for i in top_images[m]) for m in range(45)) / 45
        top_texts = sims.t().topk(k, dim=1).indices.tolist()
        captioned = [i for i in range(30) if any(i in o for o in owners)]
        i2t = sum(any(i in owners[m] for m in top_texts[i]) for i in captioned) / len(captioned)
        assert scores.t2i[k] == pytest.approx(100 * t2i) and scores.i2t[k] == pytest.approx(100 * i2t)


def test_published_numbers_beside_ours(tmp_path, capsys, altclip_checkpoint):
    data = write_cn_clip(tmp_path)
    assert published_for(data, "cn-clip") == {"en": 88.3, "zh": 87.2}
    assert published_for(tmp_path / "XTD10", "xtd10") == {}
    assert published_for(tmp_path / "flickr30k-multi30k", "multi30k") == {}  # not Flickr30k's test captions
    code = main(["eval", "retrieval", "--format", "cn-clip", str(data), "--model", str(altclip_checkpoint)])
    out = capsys.readouterr().out
    assert code == 0 and "BAAI/AltCLIP MR (published)" in out and "87.2" in out
    code = main(["eval", "retrieval", "--data", str(data), "--model", str(altclip_checkpoint), "--json"])
    results = json.loads(capsys.readouterr().out)["results"]
    assert code == 0 and results[0]["language"] == "zh" and results[0]["published_MR"] == 87.2
    assert main(["eval", "retrieval", str(data), "--data", str(data)]) == 1
    assert "give the data once" in capsys.readouterr().err


def test_command_names_the_bad_file(tmp_path, capsys, altclip_checkpoint):
    data, images = write_xtd10(tmp_path)
    (data / "test_1kcaptions_zh.txt").write_bytes(b"\xff\xfe\n" * 12)
    code = main(["eval", "retrieval", "--format", "xtd10", str(data), "--images", str(images)])
    assert code == 1 and "test_1kcaptions_zh.txt:1: not UTF-8" in capsys.readouterr().err
    code = main(["eval", "retrieval", "--format", "xm3600", str(data)])
    assert code == 1 and "captions.jsonl: missing" in capsys.readouterr().err
