"""Embeddings and similarity: a model and its processor, batched, on the model's device and dtype."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from altclip import checkpoint
from altclip.config import CONFIG_NAME, AltCLIPTextConfig, CLIPTextConfig
from altclip.export import OnnxModel
from altclip.image import ImageInput
from altclip.models import AltCLIPModel, CLIPModel, DualEncoderModel, normalize
from altclip.processor import AltCLIPProcessor, CLIPProcessor, Processor
from altclip.tasks.zeroshot import check_templates, templates_for
from altclip.tokenization import Tokenizer

DEFAULT_MODEL = "BAAI/AltCLIP"
FAMILIES: dict[str, tuple[type[DualEncoderModel], type[Processor]]] = {
    "altclip": (AltCLIPModel, AltCLIPProcessor),
    "clip": (CLIPModel, CLIPProcessor),
}
BACKENDS = ("torch", "compile", "onnx")


def compile_towers(model: DualEncoderModel) -> DualEncoderModel:
    """``torch.compile`` both towers in place: texts with dynamic shapes (every batch has its own length)."""
    model.vision_model.compile()
    model.text_model.compile(dynamic=True)
    return model


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def family_of(name_or_path: str | Path, **hub: Any) -> str:
    """ "altclip" or "clip", from the model_type in config.json."""
    config = json.loads(checkpoint.resolve_file(name_or_path, CONFIG_NAME, **hub).read_text(encoding="utf-8"))
    family = config.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"{name_or_path}: model_type {family!r} is not one of {sorted(FAMILIES)}")
    return family


def text_token_limit(text_config: AltCLIPTextConfig | CLIPTextConfig, tokenizer: Tokenizer) -> int:
    """The longest token sequence both the text tower's position table and the tokenizer allow."""
    return min(text_config.max_tokens, tokenizer.model_max_length)


class Embedder:
    """Normalised text and image embeddings from an AltCLIP or CLIP checkpoint.

    Texts are tokenised once, sorted by length and batched so that padding stays small; results come
    back in the input order. Class embeddings for zero-shot classification are cached per label set.
    """

    def __init__(self, model: DualEncoderModel | OnnxModel, processor: Processor, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self.max_text_tokens = text_token_limit(model.config.text_config, processor.tokenizer)  # type: ignore[attr-defined]
        self._class_embeddings: dict[tuple[tuple[str, ...], tuple[str, ...]], Tensor] = {}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_MODEL,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 32,
        backend: str = "torch",
        **hub: Any,
    ) -> Embedder:
        """Load the model and processor of a folder or hub name; the family comes from config.json.

        ``dtype``: float32 (default), bfloat16, float16, or "int8" (dynamic quantization, CPU only).
        ``backend``: "torch"; "compile", the same with both towers compiled by ``torch.compile`` (the
        first batch of each shape pays the compilation); or "onnx" for a folder written by ``altclip export
        onnx``, run in ONNX Runtime.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        model_cls, processor_cls = FAMILIES[family_of(name_or_path, **hub)]
        model: DualEncoderModel | OnnxModel
        if backend == "onnx":
            if dtype not in (None, "float32", torch.float32) or str(device) not in ("None", "auto", "cpu"):
                raise ValueError(
                    f"the onnx backend runs the exported float32 graphs on the CPU (got dtype={dtype}, device={device})"
                )
            model = OnnxModel.from_pretrained(name_or_path)
        elif dtype == "int8":  # float32 weights, then int8 dynamic quantization of the Linear layers (CPU)
            from altclip.quantize import quantize_int8

            model = quantize_int8(model_cls.from_pretrained(name_or_path, device="cpu", **hub))
        else:
            model = model_cls.from_pretrained(name_or_path, dtype=dtype, device=resolve_device(device), **hub)
        if backend == "compile":
            if dtype == "int8":
                raise ValueError("the compile backend takes float32, bfloat16 or float16 models, not int8")
            compile_towers(model)  # type: ignore[arg-type]
        return cls(model, processor_cls.from_pretrained(name_or_path, **hub), batch_size)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    # -- embeddings -------------------------------------------------------------------------------

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """(len(texts), dim) unit vectors."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ValueError("texts is empty")
        tokenizer = self.processor.tokenizer
        ids = tokenizer(list(texts), truncation=True, max_length=self.max_text_tokens)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[Tensor | None] = [None] * len(ids)
        pad = tokenizer.pad_token_id
        device = self.model.device
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                attention_mask[row, : len(ids[i])] = 1
            features = self.model.get_text_features(input_ids.to(device), attention_mask.to(device))
            for row, i in enumerate(batch):
                out[i] = features[row]
        return normalize(torch.stack(out))  # type: ignore[arg-type]

    @torch.inference_mode()
    def embed_pixels(self, pixel_values: Tensor) -> Tensor:
        """Preprocessed (batch, 3, H, W) pixels -> (batch, dim) unit vectors."""
        pixel_values = pixel_values.to(self.model.device, self.model.dtype)
        return normalize(self.model.get_image_features(pixel_values))

    def embed_images(self, images: ImageInput | Sequence[ImageInput]) -> Tensor:
        """(len(images), dim) unit vectors; images are PIL images, arrays, tensors or file paths."""
        batch = list(images) if isinstance(images, list | tuple) else [images]
        if not batch:
            raise ValueError("images is empty")
        chunks = []
        for start in range(0, len(batch), self.batch_size):
            pixels = self.processor.image_processor(batch[start : start + self.batch_size], return_tensors="pt")
            chunks.append(self.embed_pixels(pixels["pixel_values"]))
        return torch.cat(chunks)

    def similarity(self, images: ImageInput | Sequence[ImageInput], texts: Sequence[str]) -> Tensor:
        """(images, texts) cosine similarities in [-1, 1]."""
        return self.embed_images(images) @ self.embed_texts(texts).t()

    # -- zero-shot --------------------------------------------------------------------------------

    def class_embeddings(self, labels: Sequence[str], templates: Sequence[str]) -> Tensor:
        """(classes, dim): each template filled with the label, embedded, averaged, renormalised. Cached."""
        key = (tuple(labels), tuple(templates))
        if key not in self._class_embeddings:
            prompts = [template.format(label) for label in labels for template in templates]
            vectors = self.embed_texts(prompts).view(len(labels), len(templates), -1)  # (classes, templates, dim)
            self._class_embeddings[key] = normalize(vectors.mean(dim=1))
        return self._class_embeddings[key]

    def classify(
        self,
        images: ImageInput | Sequence[ImageInput],
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        lang: str = "en",
    ) -> Tensor:
        """(images, classes) probabilities: softmax of the scaled cosine to each class's prompt ensemble."""
        templates = check_templates(templates) if templates is not None else templates_for(lang)
        if not labels:
            raise ValueError("labels is empty")
        classes = self.class_embeddings(labels, templates)
        logits = self.logit_scale * (self.embed_images(images) @ classes.t())
        return logits.float().softmax(dim=-1)
