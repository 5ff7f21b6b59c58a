"""Shared fixtures: tiny configs, transformers reference models saved to disk, seeded inputs."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from tokenizers import Tokenizer as Backend
from tokenizers import trainers

import altclip
from altclip.processing.image import CLIPImageProcessor
from altclip.processing.tokenization import clip_backend, train_sentencepiece

warnings.filterwarnings("ignore", message=".*sdpa.*")

# Tiny configs as config.json dicts; each is read by both libraries.
ALTCLIP_CONFIGS = {
    "base": {
        "text_config": {
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "project_dim": 24,
            "max_position_embeddings": 40,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 30,
            "patch_size": 6,
        },
        "projection_dim": 16,
    },
    "odd_heads": {
        "text_config": {
            "vocab_size": 120,
            "hidden_size": 30,
            "intermediate_size": 41,
            "num_hidden_layers": 3,
            "num_attention_heads": 5,
            "project_dim": 21,
            "max_position_embeddings": 30,
        },
        "vision_config": {
            "hidden_size": 27,
            "intermediate_size": 35,
            "num_hidden_layers": 3,
            "num_attention_heads": 3,
            "image_size": 28,
            "patch_size": 7,
        },
        "projection_dim": 11,
        "logit_scale_init_value": 3.1,
    },
    "one_head": {
        "text_config": {
            "vocab_size": 64,
            "hidden_size": 16,
            "intermediate_size": 24,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "project_dim": 16,
            "max_position_embeddings": 20,
            "hidden_act": "gelu_new",
        },
        "vision_config": {
            "hidden_size": 16,
            "intermediate_size": 24,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "image_size": 16,
            "patch_size": 4,
        },
        "projection_dim": 8,
    },
}

CLIP_CONFIGS = {
    "base": {
        "text_config": {
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 20,
            "projection_dim": 16,
            "bos_token_id": 97,
            "eos_token_id": 98,
            "pad_token_id": 1,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 30,
            "patch_size": 6,
            "projection_dim": 16,
        },
        "projection_dim": 16,
    },
    "odd_heads": {
        "text_config": {
            "vocab_size": 80,
            "hidden_size": 30,
            "intermediate_size": 41,
            "num_hidden_layers": 3,
            "num_attention_heads": 5,
            "max_position_embeddings": 16,
            "projection_dim": 12,
            "bos_token_id": 78,
            "eos_token_id": 79,
            "pad_token_id": 79,
        },
        "vision_config": {
            "hidden_size": 27,
            "intermediate_size": 35,
            "num_hidden_layers": 3,
            "num_attention_heads": 3,
            "image_size": 28,
            "patch_size": 7,
            "projection_dim": 12,
        },
        "projection_dim": 12,
    },
    # eos_token_id=2: the legacy configs where the pooled token is the largest id.
    "legacy_eos": {
        "text_config": {
            "vocab_size": 50,
            "hidden_size": 16,
            "intermediate_size": 24,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 12,
            "eos_token_id": 2,
        },
        "vision_config": {
            "hidden_size": 16,
            "intermediate_size": 24,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 8,
        },
        "projection_dim": 8,
    },
}


def transformers_model(class_name: str, config: dict, kind: str, attn: str = "eager", seed: int = 0):
    """A randomly initialised transformers model (the reference) in eval mode."""
    import transformers

    config_cls = {"altclip": transformers.AltCLIPConfig, "clip": transformers.CLIPConfig}[kind]
    full = config_cls.from_dict(config)
    cls = getattr(transformers, class_name)
    if "Text" in class_name:
        sub = full.text_config
    elif "Vision" in class_name:
        sub = full.vision_config
    else:
        sub = full
    torch.manual_seed(seed)
    model = cls._from_config(sub, attn_implementation=attn)
    with torch.no_grad():  # random LayerNorms and biases, so every parameter matters in the comparison
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or "layrnorm" in name or "pre_LN" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith("bias"):
                p.normal_(std=0.05)
    return model.eval()


def saved_transformers_model(tmp_path: Path, class_name: str, config: dict, kind: str, **kw):
    model = transformers_model(class_name, config, kind, **kw)
    folder = tmp_path / class_name
    model.save_pretrained(folder)
    return model, folder


def text_batch(vocab_size: int, lengths: list[int], pad_id: int, bos: int, eos: int, seed: int = 0):
    """Right-padded ids of mixed lengths (each ``bos ... eos``, body ids below any special id > 2)."""
    g = torch.Generator().manual_seed(seed)
    high = min([vocab_size] + [t for t in (bos, eos) if t > 2])
    ids = torch.full((len(lengths), max(lengths)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        body = torch.randint(3, high, (n - 2,), generator=g)
        ids[row, :n] = torch.cat([torch.tensor([bos]), body, torch.tensor([eos])])
        mask[row, :n] = 1
    return ids, mask


def pixels(batch: int, size: int | tuple[int, int], seed: int = 0) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, atol: float = 1e-5, what: str = "") -> float:
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    diff = (ours.float() - theirs.float()).abs().max().item() if ours.numel() else 0.0
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol}"
    return diff


# Tokenizers trained in the tests, on the CLDR emoji names in 14 languages (the `emoji` package).
LANGUAGES = ["en", "zh", "ja", "ko", "ar", "ru", "fr", "de", "es", "it", "pt", "fa", "id", "tr"]


def cldr_names() -> list[str]:
    import emoji

    emoji.config.load_language()
    return [
        data[lang].strip(":").replace("_", " ")
        for data in emoji.EMOJI_DATA.values()
        for lang in LANGUAGES
        if lang in data
    ]


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return cldr_names()


@pytest.fixture(scope="session")
def xlmr_folder(tmp_path_factory, corpus) -> Path:
    """A sentencepiece model in XLM-R's layout (unk=0, bos=1, eos=2) and no tokenizer.json (like AltCLIP-m9)."""
    folder = tmp_path_factory.mktemp("xlmr")
    train_sentencepiece(corpus, folder / "sentencepiece.bpe.model")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 512, "tokenizer_class": "XLMRobertaTokenizer"})
    )
    return folder


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory, corpus) -> Path:
    """A byte-level BPE with CLIP's pipeline, trained here, saved as vocab.json + merges.txt."""
    folder = tmp_path_factory.mktemp("clip")
    specials = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    backend: Backend = clip_backend({"<|startoftext|>": 0, "<|endoftext|>": 1}, [], specials)
    from tokenizers.pre_tokenizers import ByteLevel

    trainer = trainers.BpeTrainer(
        vocab_size=6000,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    backend.model.save(str(folder))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})
    )
    return folder


def tiny_checkpoint(folder: Path, tokenizer_folder: Path, family: str) -> Path:
    """A random-weight model, the trained tokenizer and a 32px preprocessor config, in one folder."""
    tokenizer = (altclip.XLMRobertaTokenizer if family == "altclip" else altclip.CLIPTokenizer).from_pretrained(
        tokenizer_folder
    )
    vision = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
    }
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    torch.manual_seed(0)
    if family == "altclip":
        config = {"text_config": {**text, "project_dim": 24}, "vision_config": vision, "projection_dim": 16}
        model = altclip.AltCLIPModel(altclip.AltCLIPConfig.from_dict(config))
    else:
        special_ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}
        config = {"text_config": {**text, **special_ids}, "vision_config": vision, "projection_dim": 16}
        model = altclip.CLIPModel(altclip.CLIPConfig.from_dict(config))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def altclip_checkpoint(tmp_path_factory, xlmr_folder) -> Path:
    """A complete tiny AltCLIP folder: random weights, a trained tokenizer, 32px preprocessing."""
    return tiny_checkpoint(tmp_path_factory.mktemp("altclip-checkpoint") / "model", xlmr_folder, "altclip")


@pytest.fixture(scope="session")
def clip_checkpoint(tmp_path_factory, clip_folder) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("clip-checkpoint") / "model", clip_folder, "clip")


# Image folders: good images of many shapes and modes, and broken files of every kind.
BROKEN = {
    "empty.jpg": "empty",
    "notes.txt": "not_image",
    "cut.png": "truncated",
    "bomb.png": "bomb",
    "fake.jpg": "unreadable",  # a JPEG signature over garbage: Pillow knows the format, fails to decode
}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png() -> bytes:
    """A valid PNG header claiming 30000 x 30000 pixels: Pillow refuses it before decoding anything."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def make_image_folder(root: Path, good: int, seed: int = 0, broken: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    (root / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    for i in range(good):
        h, w = int(rng.integers(12, 80)), int(rng.integers(12, 80))
        pixels = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        if i % 5 == 1:
            image = image.convert("L")
        elif i % 5 == 2:
            image = image.convert("RGBA")
        folder = root / ("nested" if i % 4 == 0 else "nested/deeper" if i % 7 == 0 else "")
        image.save(folder / f"img{i:03d}.{'png' if i % 2 or image.mode == 'RGBA' else 'jpg'}")
    if broken:
        first_png = next(root.rglob("*.png")).read_bytes()
        (root / "empty.jpg").write_bytes(b"")
        (root / "notes.txt").write_text("a text file, not an image")
        (root / "cut.png").write_bytes(first_png[: len(first_png) // 2])
        (root / "bomb.png").write_bytes(bomb_png())
        (root / "nested" / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
        (root / ".hidden.png").write_bytes(first_png)  # hidden entries are not part of a collection
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images"), good=30)


# Image-text pairs: coloured shapes with English and Chinese captions.
COLOURS = {
    "red": ("红色", (220, 30, 30)),
    "green": ("绿色", (30, 180, 60)),
    "blue": ("蓝色", (40, 60, 220)),
    "yellow": ("黄色", (230, 210, 30)),
}
SHAPES = {"circle": "圆形", "square": "方形", "triangle": "三角形"}


def draw(colour: tuple[int, int, int], shape: str, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    box = (6, 6, size - 6, size - 6)
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    else:
        pen.polygon([(size // 2, 4), (4, size - 4), (size - 4, size - 4)], fill=colour)
    return image


@pytest.fixture(scope="session")
def pairs_jsonl(tmp_path_factory) -> Path:
    """Coloured shapes with English and Chinese captions, plus a broken image, an empty caption, a bad line."""
    folder = tmp_path_factory.mktemp("pairs")
    records = []
    for colour, (zh_colour, rgb) in COLOURS.items():
        for shape, zh_shape in SHAPES.items():
            name = f"{colour}-{shape}.png"
            draw(rgb, shape).save(folder / name)
            records += [
                {"image": name, "caption": f"a {colour} {shape}", "lang": "en"},
                {"image": name, "caption": f"{zh_colour}{zh_shape}", "lang": "zh"},
            ]
    (folder / "broken.png").write_bytes(b"not a png")
    lines = [json.dumps(r, ensure_ascii=False) for r in records * 2]
    lines += [
        json.dumps({"image": "broken.png", "caption": "a broken picture"}),
        json.dumps({"image": "red-circle.png", "caption": "  "}),
        "{not json",
    ]
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def parallel_tsv(tmp_path_factory) -> Path:
    """English CLDR emoji names and their translations: src<TAB>tgt<TAB>lang, with bad lines mixed in."""
    import emoji

    emoji.config.load_language()
    lines = ["src\ttgt\tlang"]
    for data in list(emoji.EMOJI_DATA.values())[:300]:
        en = data["en"].strip(":").replace("_", " ")
        for lang in LANGUAGES[1:4]:
            lines.append(f"{en}\t{data[lang].strip(':').replace('_', ' ')}\t{lang}")
    lines[5:5] = ["only one column", "a\t\tzh", "x\ty\tz\textra"]
    path = tmp_path_factory.mktemp("parallel") / "parallel.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards(root: Path, shards: int, per_shard: int, broken: bool = True) -> list[Path]:
    """WebDataset shards as img2dataset writes them: KEY.jpg or KEY.png, KEY.txt (the caption), KEY.json.

    Images are the coloured shapes, captioned in English or Chinese. With ``broken``, shard 0 also holds a
    captioned truncated PNG, a text file named .jpg and a sample with a caption but no image, and shard 1 a sample with
    an image but no caption.
    """
    root.mkdir(parents=True, exist_ok=True)
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    paths = []
    for shard in range(shards):
        path = root / f"{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{shard:05d}{i:04d}"
                colour, shape = kinds[(shard * per_shard + i) % len(kinds)]
                image = draw(COLOURS[colour][1], shape, size=24 + 4 * (i % 5))
                buffer = io.BytesIO()
                extension = "png" if i % 2 else "jpg"
                image.save(buffer, "PNG" if extension == "png" else "JPEG")
                caption = f"a {colour} {shape}" if i % 3 else f"{COLOURS[colour][0]}{SHAPES[shape]}"
                meta = {
                    "key": key,
                    "url": f"https://example.com/{key}.{extension}",
                    "caption": caption,
                    "status": "success",
                    "original_width": image.width,
                    "exif": {"Make": "test"},
                }
                _add_member(tar, f"{key}.{extension}", buffer.getvalue())
                if not (broken and shard == 1 and i == 0):
                    _add_member(tar, f"{key}.txt", caption.encode("utf-8"))
                _add_member(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
            if broken and shard == 0:
                png = io.BytesIO()
                noise = np.random.default_rng(shard).integers(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(noise).save(png, "PNG")
                _add_member(tar, "cut.png", png.getvalue()[: len(png.getvalue()) // 2])
                _add_member(tar, "cut.txt", b"a truncated picture")
                _add_member(tar, "notes.jpg", b"a text file, not an image")
                _add_member(tar, "orphan.txt", b"a caption without an image")
        paths.append(path)
    return paths
