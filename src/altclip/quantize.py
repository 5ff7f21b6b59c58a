"""int8 dynamic quantization for CPU inference: every Linear gets int8 weights, activations are
quantized per batch on the fly (PyTorch's ``quantize_dynamic``). Measured against float32 in
``benchmarks/accuracy.py``; the image tower's patch convolution and the LayerNorms stay float32."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from altclip.models import PreTrainedModel


def quantize_int8(model: PreTrainedModel) -> PreTrainedModel:
    """Quantize ``model`` in place (CPU only) and return it, in eval mode."""
    if model.device.type != "cpu":
        raise ValueError(f"int8 dynamic quantization runs on the CPU; the model is on {model.device}")
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # PyTorch marks its quantized tensor constructors deprecated
        warnings.simplefilter("ignore")
        return quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8, inplace=True)
