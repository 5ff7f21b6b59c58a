"""ONNX Runtime: an export folder (written by ``altclip.runtime.export``) run with the PyTorch models' feature methods.

``OnnxModel`` is what the ``onnx`` backend loads: ``Embedder`` and every task take it unchanged. Sessions open
on first use (under a lock, so threads sharing a model share its sessions), so a folder with one tower serves
that tower's tasks.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from altclip.errors import InputError, MissingExtraError, MissingFileError
from altclip.modeling.config import COMPOSITE_CONFIGS, CONFIG_NAME, DualEncoderConfig

ONNX_FOLDER = "onnx"
METADATA_NAME = "export.json"
GRAPH_NAMES = {"text": "text_model.onnx", "vision": "vision_model.onnx"}


def require(module: str) -> Any:
    """Import an optional dependency of the ONNX extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{module} is needed for ONNX export and inference: pip install 'altclip[onnx]'"
        ) from err


def _session_options(threads: int | None):
    ort = require("onnxruntime")

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return options


class OnnxModel:
    """An export folder run in ONNX Runtime, with ``DualEncoderModel``'s feature methods."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(
        self, folder: Path, config: DualEncoderConfig, providers: Sequence[str] | None, threads: int | None
    ) -> None:
        self.folder = folder
        self.config = config
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.threads = threads
        metadata = json.loads((folder / ONNX_FOLDER / METADATA_NAME).read_text(encoding="utf-8"))
        self.logit_scale = torch.tensor(metadata["logit_scale"])
        self.graphs = {tower: folder / ONNX_FOLDER / t["graph"] for tower, t in metadata["towers"].items()}
        self.quantized = {tower: t["quantize"] for tower, t in metadata["towers"].items()}
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> OnnxModel:
        folder = Path(folder)
        if not (folder / ONNX_FOLDER / METADATA_NAME).is_file():
            raise MissingFileError(
                f"{folder} is not an ONNX export (no {ONNX_FOLDER}/{METADATA_NAME}); write one with "
                f"`altclip export onnx --model MODEL --out {folder}`"
            )
        file_config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        config_cls = COMPOSITE_CONFIGS.get(file_config.get("model_type", ""))
        if config_cls is None:
            raise InputError(
                f"{folder}: model_type {file_config.get('model_type')!r} is not one of {sorted(COMPOSITE_CONFIGS)}"
            )
        return cls(folder, config_cls.from_file_dict(file_config), providers, threads)

    def eval(self) -> OnnxModel:
        return self

    def session(self, tower: str):
        with self._lock:
            if tower not in self._sessions:
                if tower not in self.graphs:
                    raise InputError(f"{self.folder} has no {tower} graph (exported: {sorted(self.graphs)})")
                ort = require("onnxruntime")
                self._sessions[tower] = ort.InferenceSession(
                    str(self.graphs[tower]), _session_options(self.threads), providers=self.providers
                )
            return self._sessions[tower]

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(batch, projection_dim) float32, as ``DualEncoderModel.get_text_features``."""
        longest = self.config.text_config.max_tokens  # type: ignore[attr-defined]
        if input_ids.ndim != 2 or input_ids.shape[1] > longest:
            raise InputError(
                f"input_ids must be (batch, length) with length at most {longest}, got shape {tuple(input_ids.shape)}"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feeds = {"input_ids": _numpy(input_ids, np.int64), "attention_mask": _numpy(attention_mask, np.int64)}
        return torch.from_numpy(self.session("text").run(None, feeds)[0])

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        """(batch, projection_dim) float32, as ``DualEncoderModel.get_image_features``."""
        feeds = {"pixel_values": _numpy(pixel_values, np.float32)}
        return torch.from_numpy(self.session("vision").run(None, feeds)[0])


def _numpy(x: Tensor, dtype: type) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=dtype)
