"""ONNX: export both towers of an AltCLIP or CLIP model, and run them in ONNX Runtime.

An export folder is a model folder whose weights live in ONNX graphs::

    config.json, tokenizer and preprocessor files   (the processor loads from the folder as usual)
    onnx/text_model.onnx    input_ids, attention_mask (batch, sequence) int64 -> text_embeds (batch, dim)
    onnx/vision_model.onnx  pixel_values (batch, 3, size, size) float32        -> image_embeds (batch, dim)
    onnx/export.json        logit_scale, opset, quantization, the exporter's versions

Each graph computes ``get_text_features`` / ``get_image_features``: projected, not normalised. Graphs
over 2 GB (XLM-R-large) keep their weights beside them in ``*.onnx.data``. ``quantize="int8"`` writes
the graphs with ONNX Runtime's dynamic int8 quantization of every MatMul by a weight and of the patch
convolution (signed int8 weights, activations quantized per batch on the fly); embeddings, LayerNorms and
attention's own products stay float32.
``altclip.runtime.onnx.OnnxModel`` runs the folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from altclip.errors import InputError
from altclip.files import write_json
from altclip.modeling.models import DualEncoderModel
from altclip.runtime.onnx import GRAPH_NAMES, METADATA_NAME, ONNX_FOLDER, OnnxModel, require
from altclip.tables import Result

TOWERS = ("text", "vision")
QUANTIZATIONS = ("none", "int8")  # how the graphs' weights are stored
DEFAULT_OPSET = 18


class TextFeatures(nn.Module):
    """(input_ids, attention_mask) -> get_text_features: the text graph's signature."""

    def __init__(self, model: DualEncoderModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model.get_text_features(input_ids, attention_mask)


class ImageFeatures(nn.Module):
    """pixel_values -> get_image_features: the vision graph's signature."""

    def __init__(self, model: DualEncoderModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model.get_image_features(pixel_values)


def _tower_program(model: DualEncoderModel, tower: str) -> tuple[nn.Module, tuple[Tensor, ...], dict[str, Any]]:
    """The module to trace, example inputs, and which of their dimensions stay dynamic."""
    batch = torch.export.Dim("batch", min=1, max=65_536)
    if tower == "text":
        longest = model.config.text_config.max_tokens  # type: ignore[attr-defined]
        sequence = torch.export.Dim("sequence", min=1, max=longest)
        width = min(8, longest)
        vocab = model.config.text_config.vocab_size  # type: ignore[attr-defined]
        input_ids = torch.arange(2 * width).remainder(vocab).view(2, width)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, width // 2 :] = 0
        axes = {0: batch, 1: sequence}
        return TextFeatures(model).eval(), (input_ids, attention_mask), {"input_ids": axes, "attention_mask": axes}
    size = model.config.vision_config.image_size  # type: ignore[attr-defined]
    pixel_values = torch.zeros(2, 3, size, size)
    return ImageFeatures(model).eval(), (pixel_values,), {"pixel_values": {0: batch}}


@contextlib.contextmanager
def _quiet(logger_name: str | None = "torch.onnx") -> Iterator[None]:
    """The exporter logs every optional operator it cannot register, and ONNX Runtime's quantizer advises
    pre-processing on the root logger; keep the user's terminal clean."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def quantize_graph(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization of ``source``'s weights, written to ``target`` (+ ``.data``)."""
    onnx = require("onnx")
    quantization = require("onnxruntime.quantization")
    graph = onnx.load(str(source))
    del graph.graph.value_info[:]  # the exporter's shape notes trip quantize_dynamic's own shape inference
    clean = source.with_name(f"unannotated-{source.name}")
    onnx.save(graph, str(clean), save_as_external_data=True, location=f"{clean.name}.data")
    del graph
    with _quiet(None):
        quantization.quantize_dynamic(
            clean, target, weight_type=quantization.QuantType.QInt8, use_external_data_format=True
        )


def export_onnx(
    model: DualEncoderModel,
    folder: str | Path,
    towers: Sequence[str] = TOWERS,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
) -> dict[str, Path]:
    """Export ``towers`` of a float32 CPU model to ``folder/onnx/`` and write ``folder/config.json``.

    ``quantize``: None (float32 graphs) or "int8" (see the module docstring). Each graph is written in a
    temporary folder and then renamed into place, its weight file first, so an interrupted export never
    leaves a graph without its weights. Returns tower -> graph path.
    """
    unknown = sorted(set(towers) - set(TOWERS))
    if unknown or not towers:
        raise InputError(f"towers must be some of {list(TOWERS)}, got {list(towers)}")
    if quantize not in (None, "int8"):
        raise InputError(f"quantize must be None or 'int8', got {quantize!r}")
    if model.dtype != torch.float32 or model.device.type != "cpu":
        raise InputError(
            f"export a float32 model on the CPU (got {model.dtype} on {model.device}); ONNX Runtime picks "
            "its own precision and device"
        )
    require("onnxscript")  # the exporter's dependency

    folder = Path(folder)
    target = folder / ONNX_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for tower in towers:
        module, inputs, dynamic = _tower_program(model, tower)
        names = GRAPH_NAMES[tower]
        with tempfile.TemporaryDirectory(prefix=".export-", dir=target) as tmp, _quiet(), torch.no_grad():
            program = torch.onnx.export(
                module,
                inputs,
                input_names=list(dynamic),
                output_names=["text_embeds" if tower == "text" else "image_embeds"],
                dynamic_shapes=dynamic,
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
            exported = Path(tmp) / "float32" / names
            exported.parent.mkdir()
            program.save(str(exported), external_data=True)
            del program
            if quantize:
                (Path(tmp) / "int8").mkdir()
                quantize_graph(exported, Path(tmp) / "int8" / names)
            final = Path(tmp) / (quantize or "float32")
            for produced in sorted(final.glob(f"{names}*"), key=lambda p: p.suffix == ".onnx"):  # data, then graph
                os.replace(produced, target / produced.name)
        written[tower] = target / names
    metadata_path = target / METADATA_NAME
    previous = json.loads(metadata_path.read_text(encoding="utf-8")) if metadata_path.exists() else {}
    graphs = previous.get("towers", {})
    graphs.update({tower: {"graph": GRAPH_NAMES[tower], "quantize": quantize} for tower in written})
    metadata = {
        "logit_scale": float(model.logit_scale.detach()),
        "towers": graphs,
        "opset": opset,
        "torch": torch.__version__,
    }
    write_json(metadata_path, metadata)
    model.config.save_pretrained(folder)
    return written


@dataclass
class ExportCheck(Result):
    """One exported graph run in ONNX Runtime beside PyTorch on the same random inputs."""

    tower: str
    graph: str
    quantize: str
    megabytes: float
    max_abs_diff: float
    min_cosine: float


def check_export(
    model: DualEncoderModel, folder: str | Path, graphs: dict[str, Path], quantize: str
) -> list[ExportCheck]:
    """Run each written graph and the model on the same seeded inputs and compare their features."""
    exported = OnnxModel.from_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    config = model.config
    inputs = {
        "text": lambda: (torch.randint(0, config.text_config.vocab_size, (2, 16), generator=generator),),
        "vision": lambda: (torch.randn(2, 3, *[config.vision_config.image_size] * 2, generator=generator),),
    }
    methods = {"text": "get_text_features", "vision": "get_image_features"}
    checks = []
    for tower, graph in graphs.items():
        example = inputs[tower]()
        with torch.inference_mode():
            expected = getattr(model, methods[tower])(*example)
        got = getattr(exported, methods[tower])(*example)
        size = sum(p.stat().st_size for p in graph.parent.glob(f"{graph.name}*"))
        cosine = torch.nn.functional.cosine_similarity(got, expected).min()
        checks.append(
            ExportCheck(
                tower, str(graph), quantize, round(size / 2**20, 1), float((got - expected).abs().max()), float(cosine)
            )
        )
    return checks
