"""The Hugging Face docs example, end to end, on a checkpoint folder this script builds.

Real use is the same code with ``"BAAI/AltCLIP"`` in place of the folder; this machine has no hub
access, so the script first makes a small random-weight AltCLIP with a sentencepiece tokenizer trained
on a few multilingual captions (XLM-R's layout: unk=0, bos=1, eos=2) and CLIP's image preprocessing.
The weights are random, so the probabilities mean nothing yet: the point is the pipeline.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from altclip import AltCLIPConfig, AltCLIPModel, AltCLIPProcessor, CLIPImageProcessor, XLMRobertaTokenizer
from altclip.processing.tokenization import train_sentencepiece

CAPTIONS = [
    "a photo of a cat",
    "a photo of a dog",
    "a red apple on a table",
    "two birds in the sky",
    "一张猫的照片",
    "一张狗的照片",
    "桌子上的红苹果",
    "天空中的两只鸟",
    "猫の写真",
    "犬の写真",
    "テーブルの上の赤いリンゴ",
    "고양이 사진",
    "강아지 사진",
    "صورة قطة",
    "صورة كلب",
    "фотография кошки",
    "фотография собаки",
    "une photo d'un chat",
    "ein Foto von einem Hund",
    "una foto de un gato",
]


def build_checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    spm = train_sentencepiece(CAPTIONS * 5, folder / "sentencepiece.bpe.model", vocab_size=160)
    tokenizer = XLMRobertaTokenizer.from_sentencepiece(spm)
    config = AltCLIPConfig.from_dict(
        {
            "text_config": {
                "vocab_size": len(tokenizer),
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "project_dim": 48,
            },
            "vision_config": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": 64,
                "patch_size": 16,
            },
            "projection_dim": 32,
        }
    )
    torch.manual_seed(0)
    AltCLIPModel(config).save_pretrained(folder)
    processor = AltCLIPProcessor(
        CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}), tokenizer
    )
    processor.save_pretrained(folder)
    return folder


def a_cat_picture() -> Image.Image:
    image = Image.new("RGB", (160, 120), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 30, 120, 110), fill="orange")
    draw.polygon([(48, 45), (60, 10), (75, 38)], fill="orange")
    draw.polygon([(112, 45), (100, 10), (85, 38)], fill="orange")
    return image


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_checkpoint(Path(tmp) / "tiny-altclip")
        print(f"checkpoint folder: {', '.join(sorted(p.name for p in folder.iterdir()))}")

        # --- the docs example ---
        model = AltCLIPModel.from_pretrained(folder)  # or "BAAI/AltCLIP"
        processor = AltCLIPProcessor.from_pretrained(folder)
        image = a_cat_picture()
        labels = ["a photo of a cat", "a photo of a dog", "一张猫的照片", "一张狗的照片"]
        inputs = processor(text=labels, images=image, return_tensors="pt", padding=True)
        with torch.inference_mode():
            outputs = model(**inputs)
        probs = outputs.logits_per_image.softmax(dim=1)  # image-text similarity -> label probabilities
        # ---

        print(
            f"{model.num_parameters():,} parameters (random weights); input_ids {tuple(inputs.input_ids.shape)}, "
            f"pixel_values {tuple(inputs.pixel_values.shape)}"
        )
        print(f"{'label':<20} probability")
        for label, p in zip(labels, probs[0].tolist(), strict=True):
            print(f"{label:<20} {p:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
