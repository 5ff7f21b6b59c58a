"""Build a tiny random-weight AltCLIP checkpoint folder, load it back, and score images against texts.

Real use is the same code with ``AltCLIPModel.from_pretrained("BAAI/AltCLIP")``; this machine has no
hub access, so the example makes its own checkpoint first.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from altclip import AltCLIPConfig, AltCLIPModel, AltCLIPTextConfig, AltCLIPVisionConfig


def build_checkpoint(folder: Path) -> Path:
    text = AltCLIPTextConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        project_dim=48,
        max_position_embeddings=80,
    )
    vision = AltCLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=16
    )
    torch.manual_seed(0)
    AltCLIPModel(AltCLIPConfig.from_text_vision_configs(text, vision, projection_dim=32)).save_pretrained(folder)
    return folder


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_checkpoint(Path(tmp) / "tiny-altclip")
        print(f"checkpoint: {sorted(p.name for p in folder.iterdir())}")
        model = AltCLIPModel.from_pretrained(folder)
        input_ids = torch.tensor([[0, 17, 99, 2, 1], [0, 23, 41, 77, 2]])  # <s> ... </s> <pad>
        attention_mask = (input_ids != 1).long()
        pixel_values = torch.randn(3, 3, 64, 64)
        with torch.inference_mode():
            outputs = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
        probs = outputs.logits_per_image.softmax(dim=1)
        print(
            f"{model.num_parameters():,} parameters; text_embeds {tuple(outputs.text_embeds.shape)}, "
            f"image_embeds {tuple(outputs.image_embeds.shape)}"
        )
        print("label probabilities per image:")
        for i, row in enumerate(probs.tolist()):
            print(f"  image {i}: " + "  ".join(f"text {j}: {p:.3f}" for j, p in enumerate(row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
