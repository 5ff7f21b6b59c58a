"""A model on this machine: its family, its device and precision, its token limit, its backend.

The embedder, training and the command all load models through here, so none of them has to import another.
A family ("altclip" or "clip") is read from config.json and names the model and processor classes; a backend
says how the model runs:

* ``torch``: the PyTorch model in float32, with its matrix multiplies in bfloat16 or float16, or in int8
  (``Int8Linear``, CPU); "auto" picks by hardware (``altclip.runtime.hardware``);
* ``compile``: the same with both towers through ``torch.compile``;
* ``onnx``: a folder written by ``altclip export onnx``, run in ONNX Runtime (``OnnxModel``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from altclip.errors import InputError
from altclip.hub import resolve_file
from altclip.modeling.config import CONFIG_NAME, AltCLIPTextConfig, CLIPTextConfig
from altclip.modeling.models import AltCLIPModel, CLIPModel, DualEncoderModel
from altclip.processing.processor import AltCLIPProcessor, CLIPProcessor, Processor
from altclip.processing.tokenization import Tokenizer
from altclip.runtime.hardware import Precision, resolve_device, resolve_precision
from altclip.runtime.onnx import OnnxModel

DEFAULT_MODEL = "BAAI/AltCLIP"
FAMILIES: dict[str, tuple[type[DualEncoderModel], type[Processor]]] = {
    "altclip": (AltCLIPModel, AltCLIPProcessor),
    "clip": (CLIPModel, CLIPProcessor),
}
BACKENDS = ("torch", "compile", "onnx")


def family_of(name_or_path: str | Path, **hub: Any) -> str:
    """ "altclip" or "clip", from the model_type in config.json."""
    config = json.loads(resolve_file(name_or_path, CONFIG_NAME, **hub).read_text(encoding="utf-8"))
    family = config.get("model_type")
    if family not in FAMILIES:
        raise InputError(f"{name_or_path}: model_type {family!r} is not one of {sorted(FAMILIES)}")
    return family


def text_token_limit(text_config: AltCLIPTextConfig | CLIPTextConfig, tokenizer: Tokenizer) -> int:
    """The longest token sequence both the text tower's position table and the tokenizer allow."""
    return min(text_config.max_tokens, tokenizer.model_max_length)


def compile_towers(model: DualEncoderModel) -> DualEncoderModel:
    """``torch.compile`` both towers in place: texts with dynamic shapes (every batch has its own length)."""
    model.vision_model.compile()
    model.text_model.compile(dynamic=True)
    return model


def load_pretrained(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    precision: str | Precision | None = None,
    backend: str = "torch",
    adapter: str | Path | None = None,
    **hub: Any,
) -> tuple[DualEncoderModel | OnnxModel, Processor]:
    """The model, ready for inference, and the processor of a folder or hub name, of the family its
    config.json names.

    ``precision``: float32 (default); bfloat16 or float16 (the matrix multiplies in 16 bits, the rest float32);
    "int8" (``Int8Linear``, CPU only); "auto", the machine's choice (``hardware.choose_precision``); or a
    ``Precision`` already resolved. ``backend``: see the module docstring. ``adapter``: a LoRA adapter folder,
    merged into the weights as they load.
    """
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    device = resolve_device(device)
    resolved = resolve_precision(precision, device, backend)
    model_cls, processor_cls = FAMILIES[family_of(name_or_path, **hub)]
    processor = processor_cls.from_pretrained(name_or_path, **hub)
    if backend == "onnx":
        if adapter is not None:
            raise InputError(
                "an adapter is merged as the weights load; for ONNX, merge it (`altclip finetune --merge`)"
            )
        if resolved.name != "float32" or device.type != "cpu":
            raise InputError(
                f"the onnx backend runs the exported float32 graphs on the CPU (got precision {resolved.name} on "
                f"{device}); "
                "for int8 in ONNX Runtime export with `altclip export onnx --quantize int8`"
            )
        return OnnxModel.from_pretrained(name_or_path), processor
    if resolved.name == "int8" and device.type != "cpu":
        raise InputError(f"int8 runs on the CPU, not {device}; on a GPU use --precision auto, bfloat16 or float16")
    model = model_cls.from_pretrained(name_or_path, precision=resolved.name, device=device, adapter=adapter, **hub)
    return (compile_towers(model) if backend == "compile" else model), processor
