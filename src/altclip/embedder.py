"""Embeddings and similarity: a model and its processor, batched, on the model's device and in its precision.

The ``Embedder`` is what search, evaluation, the demo and the server share. One ``Embedder`` may serve many threads
at once (a web server's case): nothing in it changes per call but its bounded cache of class embeddings.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from altclip.data.imagefiles import ImageSource, Record, file_tasks, image_batches
from altclip.errors import InputError
from altclip.explain.relevance import Method, relevance, to_image, windowed_relevance
from altclip.modeling.lora import adapter_identity
from altclip.modeling.models import DualEncoderModel, normalize
from altclip.processing.image import ImageInput, to_rgb
from altclip.processing.processor import Processor
from altclip.processing.prompts import check_templates, templates_for
from altclip.runtime.hardware import Precision, resolve_device, resolve_precision
from altclip.runtime.loading import DEFAULT_MODEL, load_pretrained, text_token_limit
from altclip.runtime.onnx import OnnxModel


class Embedder:
    """Normalised text and image embeddings from an AltCLIP or CLIP checkpoint.

    Texts are tokenised once, sorted by length and batched so that padding stays small; results come
    back in the input order. Class embeddings for zero-shot classification are cached per label set, the
    ``CLASS_CACHE_SIZE`` most recent sets, so a server fed ever new labels keeps its memory flat.
    """

    CLASS_CACHE_SIZE = 64

    def __init__(
        self,
        model: DualEncoderModel | OnnxModel,
        processor: Processor,
        batch_size: int = 32,
        precision: Precision | None = None,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval()
        self.precision = precision or Precision("float32", "given", asked="float32")
        self.backend = "onnx" if isinstance(model, OnnxModel) else "torch"  # from_pretrained says "compile"
        self.adapter: dict[str, str] | None = None  # a LoRA adapter merged in: its folder and weights' digest
        self.processor = processor
        self.batch_size = batch_size
        self.max_text_tokens = text_token_limit(model.config.text_config, processor.tokenizer)  # type: ignore[attr-defined]
        self._class_embeddings: OrderedDict[tuple[tuple[str, ...], tuple[str, ...]], Tensor] = OrderedDict()
        self._class_lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_MODEL,
        *,
        device: str | torch.device | None = None,
        precision: str | None = None,
        batch_size: int = 32,
        backend: str = "torch",
        dtype: str | torch.dtype | None = None,
        adapter: str | Path | None = None,
        **hub: Any,
    ) -> Embedder:
        """Load the model and processor of a folder or hub name; the family comes from config.json.

        ``precision``: float32 (default, as in transformers); bfloat16 or float16 (the matrix multiplies in 16
        bits, LayerNorm, softmax and the residual stream in float32); "int8" (int8 weights and per-token int8
        activations, CPU only); or "auto", the fastest of these the hardware computes natively (bfloat16 on CPUs
        with AVX512-BF16 or AMX and on CUDA GPUs from compute capability 8.0, float16 on older GPUs, else
        float32; see ``altclip.runtime.hardware``). ``self.precision`` says what was chosen and why. ``dtype`` is
        the name this argument had before 0.2, kept for one release.
        ``backend``: "torch"; "compile", the same with both towers compiled by ``torch.compile`` (the
        first batch of each shape pays the compilation); or "onnx" for a folder written by ``altclip export
        onnx``, run in ONNX Runtime.
        ``adapter``: a LoRA adapter folder trained on this model (``altclip finetune --lora``), merged into the
        weights as they load; one trained on another model is refused.
        """
        if dtype is not None:
            warnings.warn("Embedder.from_pretrained(dtype=...) is now precision=...", DeprecationWarning, stacklevel=2)
            precision = precision or dtype  # type: ignore[assignment]
        device = resolve_device(device)
        resolved = resolve_precision(precision, device, backend)
        model, processor = load_pretrained(
            name_or_path, device=device, precision=resolved, backend=backend, adapter=adapter, **hub
        )
        embedder = cls(model, processor, batch_size, resolved)
        embedder.backend = backend
        if adapter is not None:
            embedder.adapter = adapter_identity(adapter)
        return embedder

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
            raise InputError("texts is empty")
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
        return normalize(torch.stack(out).float())  # type: ignore[arg-type]

    @torch.inference_mode()
    def embed_pixels(self, pixel_values: Tensor) -> Tensor:
        """Preprocessed (batch, 3, H, W) pixels -> (batch, dim) unit vectors."""
        pixel_values = pixel_values.to(self.model.device, self.model.dtype)
        return normalize(self.model.get_image_features(pixel_values).float())

    def embed_images(self, images: ImageInput | Sequence[ImageInput]) -> Tensor:
        """(len(images), dim) unit vectors; images are PIL images, arrays, tensors or file paths."""
        batch = list(images) if isinstance(images, list | tuple) else [images]
        if not batch:
            raise InputError("images is empty")
        chunks = []
        for start in range(0, len(batch), self.batch_size):
            pixels = self.processor.image_processor(batch[start : start + self.batch_size], return_tensors="pt")
            chunks.append(self.embed_pixels(pixels["pixel_values"]))
        return torch.cat(chunks)

    def embed_files(
        self, paths: Sequence[ImageSource], workers: int = 2, progress: bool = True, draft: bool = False
    ) -> tuple[Tensor, list[Record]]:
        """Image files (or images inside other files) decoded in ``workers`` processes: the unit vectors of the
        readable ones, in order, as float32 on the CPU, and a ``Record`` (status, size, error) per file.
        Unreadable files are skipped."""
        vectors: list[np.ndarray] = []
        records: list[Record] = []
        processor = self.processor.image_processor
        with tqdm(
            total=len(paths), unit="img", desc="embedding images", disable=not progress, dynamic_ncols=True
        ) as bar:
            for batch in image_batches(file_tasks(paths, self.batch_size), processor, workers, draft):
                vectors += self.embed_records(batch)
                records += batch
                bar.update(len(batch))
        dim = self.model.config.projection_dim  # type: ignore[attr-defined]
        return torch.from_numpy(np.stack(vectors)) if vectors else torch.zeros(0, dim), records

    def embed_records(self, records: list[Record]) -> list[np.ndarray]:
        """float32 unit vectors of the decoded records of a batch, in order; their pixels are released."""
        good = [r for r in records if r.pixels is not None]
        if not good:
            return []
        embedded = self.embed_pixels(torch.from_numpy(np.stack([r.pixels for r in good])))
        for r in records:
            r.pixels = None
        return list(embedded.float().cpu().numpy())

    def similarity(self, images: ImageInput | Sequence[ImageInput], texts: Sequence[str]) -> Tensor:
        """(images, texts) cosine similarities in [-1, 1]."""
        return self.embed_images(images) @ self.embed_texts(texts).t()

    # -- zero-shot --------------------------------------------------------------------------------

    def class_embeddings(self, labels: Sequence[str], templates: Sequence[str]) -> Tensor:
        """(classes, dim): each template filled with the label, embedded, averaged, renormalised. Cached."""
        key = (tuple(labels), tuple(templates))
        with self._class_lock:
            if key in self._class_embeddings:
                self._class_embeddings.move_to_end(key)
                return self._class_embeddings[key]
        prompts = [template.format(label) for label in labels for template in templates]
        vectors = self.embed_texts(prompts).view(len(labels), len(templates), -1)  # (classes, templates, dim)
        classes = normalize(vectors.mean(dim=1))
        with self._class_lock:
            self._class_embeddings[key] = classes
            while len(self._class_embeddings) > self.CLASS_CACHE_SIZE:
                self._class_embeddings.popitem(last=False)
        return classes

    def zero_shot_classes(
        self, labels: Sequence[str], templates: Sequence[str] | None = None, lang: str = "en"
    ) -> Tensor:
        """(classes, dim) class embeddings from ``templates``, or the built-in ones of ``lang``; checked first."""
        templates = check_templates(templates) if templates is not None else templates_for(lang)
        if not labels:
            raise InputError("labels is empty")
        return self.class_embeddings(labels, templates)

    def probabilities(self, image_embeds: Tensor, classes: Tensor) -> Tensor:
        """(images, dim) and (classes, dim) unit vectors -> (images, classes) softmax of the scaled cosine."""
        logits = self.logit_scale * (image_embeds @ classes.t())
        return logits.float().softmax(dim=-1)

    def classify(
        self,
        images: ImageInput | Sequence[ImageInput],
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        lang: str = "en",
    ) -> Tensor:
        """(images, classes) probabilities: softmax of the scaled cosine to each class's prompt ensemble."""
        classes = self.zero_shot_classes(labels, templates, lang)
        return self.probabilities(self.embed_images(images), classes)

    # -- relevance maps ---------------------------------------------------------------------------

    def text_targets(
        self, texts: Sequence[str], lang: str | None = None, templates: Sequence[str] | None = None
    ) -> Tensor:
        """(len(texts), dim) unit vectors of the texts as given, or, with ``lang`` or ``templates``, of each text put
        in the prompt templates as a label (the class embeddings ``classify`` uses)."""
        if isinstance(texts, str):
            texts = [texts]
        if lang is None and templates is None:
            return self.embed_texts(texts)
        return self.zero_shot_classes(texts, templates, lang or "en")

    def relevance_maps(
        self,
        images: Sequence[ImageInput],
        targets: Tensor,
        method: Method = "dense",
        layers: int = 1,
        zoom: int = 1,
    ) -> list[np.ndarray]:
        """Relevance maps of many images at once: ``targets`` (images, texts, dim) unit vectors -> per image a
        float32 (texts, height, width) array in [0, 1] at that image's own size. See ``altclip.explain.relevance``."""
        vision = getattr(self.model, "vision_model", None)
        if vision is None:
            raise InputError("relevance maps need the torch backend; this model runs in ONNX Runtime")
        if zoom < 1:
            raise InputError(f"zoom must be at least 1, got {zoom}")
        if method == "attention" and self.precision.name == "int8":
            raise InputError('the "attention" method needs gradients, which int8 models do not give; use "dense"')
        with self.model.autocast():  # 16-bit models multiply in 16 bits, as when they embed
            return self._relevance_maps(images, targets, method, layers, zoom)

    def _relevance_maps(
        self, images: Sequence[ImageInput], targets: Tensor, method: Method, layers: int, zoom: int
    ) -> list[np.ndarray]:
        vision = self.model.vision_model
        processor = self.processor.image_processor
        pictures = [to_rgb(image, f"images[{i}]") for i, image in enumerate(images)]
        device, projection = self.model.device, self.model.visual_projection
        maps = []
        if zoom > 1:  # each image alone: its windows are the batch
            wide = replace(
                processor, size={"shortest_edge": processor.size["shortest_edge"] * zoom}, do_center_crop=False
            )
            for picture, wanted in zip(pictures, targets, strict=True):
                pixels = wide([picture])["pixel_values"].to(device)
                grid = windowed_relevance(
                    vision, projection, pixels, wanted.to(device), vision.config.image_size, method, layers
                )
                maps.append(to_image(grid, wide, picture.shape[1], picture.shape[0]).cpu().numpy())
            return maps
        for start in range(0, len(pictures), self.batch_size):
            chunk = pictures[start : start + self.batch_size]
            pixels = processor(chunk, return_tensors="pt")["pixel_values"].to(device)
            grids, _ = relevance(
                vision, projection, pixels, targets[start : start + len(chunk)].to(device), method, layers
            )
            for picture, grid in zip(chunk, grids, strict=True):
                maps.append(to_image(grid, processor, picture.shape[1], picture.shape[0]).cpu().numpy())
        return maps

    def explain_batch(
        self,
        image: ImageInput,
        texts: Sequence[str],
        *,
        lang: str | None = None,
        templates: Sequence[str] | None = None,
        method: Method = "dense",
        layers: int = 1,
        zoom: int = 1,
    ) -> np.ndarray:
        """Where in ``image`` each text matched: float32 (len(texts), height, width) maps in [0, 1] at the image's
        own size, 0 where the centre crop cut the image away.

        ``method``: "dense" (default), MaskCLIP's patch-text cosine (Zhou, Loy and Dai, ECCV 2022), one forward pass;
        or "attention", gradient-weighted attention relevance (Chefer, Gur and Wolf, ICCV 2021) over the last
        ``layers`` attention layers. ``zoom``: above 1, the image is read at ``zoom`` times the model's input size
        in overlapping windows (about (2 zoom - 1)^2 forward passes for a square image), for small things in large
        images; nothing is cut away then. ``lang``/``templates``: the texts are labels put in prompt templates, as
        in ``classify``. See ``altclip.explain.relevance``."""
        targets = self.text_targets(texts, lang, templates)
        return self.relevance_maps([image], targets[None], method, layers, zoom)[0]

    def explain(self, image: ImageInput, text: str, **options: Any) -> np.ndarray:
        """Where in ``image`` the text matched: a float32 (height, width) map in [0, 1]; see ``explain_batch``."""
        return self.explain_batch(image, [text], **options)[0]
