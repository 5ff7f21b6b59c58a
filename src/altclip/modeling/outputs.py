"""Model outputs with the attribute names transformers users know.

Fields are read as attributes (``outputs.logits_per_image``), by name (``outputs["text_embeds"]``) or
by position over the fields that are set (``outputs[0]``), as with transformers' ``ModelOutput``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass
class ModelOutput:
    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):  # iterating yields the set fields' names, as a dict would
        return iter(self.keys())


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    last_hidden_state: Tensor
    pooler_output: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class CLIPTextModelOutput(ModelOutput):
    text_embeds: Tensor
    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class CLIPVisionModelOutput(ModelOutput):
    image_embeds: Tensor
    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class CLIPOutput(ModelOutput):
    loss: Tensor | None
    logits_per_image: Tensor
    logits_per_text: Tensor
    text_embeds: Tensor
    image_embeds: Tensor
    text_model_output: BaseModelOutputWithPooling
    vision_model_output: BaseModelOutputWithPooling


AltCLIPOutput = CLIPOutput
