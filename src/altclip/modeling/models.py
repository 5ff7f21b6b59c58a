"""The public models: AltCLIP and CLIP, their towers, and loading/saving Hugging Face checkpoints."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable
from itertools import repeat
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from altclip.errors import InputError
from altclip.hub import resolve_file
from altclip.modeling.config import (
    CONFIG_NAME,
    AltCLIPConfig,
    AltCLIPTextConfig,
    AltCLIPVisionConfig,
    CLIPConfig,
    CLIPTextConfig,
    CLIPVisionConfig,
    Config,
    DualEncoderConfig,
)
from altclip.modeling.layers import init_normal
from altclip.modeling.lora import Adapter
from altclip.modeling.outputs import BaseModelOutputWithPooling, CLIPOutput, CLIPTextModelOutput, CLIPVisionModelOutput
from altclip.modeling.quantize import Int8Linear, quantize_weight, replace_linears
from altclip.modeling.text import AltCLIPTextTransformer, CLIPTextTransformer
from altclip.modeling.vision import CLIPVisionTransformer
from altclip.modeling.weights import KeyMap, check_state_dict, iter_weights, resolve_weights, save_weights

logger = logging.getLogger(__name__)
M = TypeVar("M", bound="PreTrainedModel")

# Buffers that transformers < 4.31 saved into checkpoints; they are recomputed, never read.
LEGACY_BUFFERS = (r"\.position_ids$", r"\.token_type_ids$")
# Keys written by transformers 5, whose ``save_pretrained`` spells ``encoder.layers`` as ``encoder.layer``.
V5_LAYER_NAMES = ((r"(^|\.)encoder\.layer\.", r"\1encoder.layers."),)


def resolve_dtype(dtype: torch.dtype | str | None, file_config: dict[str, Any]) -> torch.dtype | None:
    """None -> float32 (transformers' default); "auto" -> the dtype the config.json names, else the weights'."""
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        dtype = file_config.get("dtype") or file_config.get("torch_dtype")
        if dtype is None:
            return None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"dtype must be a floating torch dtype such as torch.float16 or 'bfloat16', got {dtype!r}")
    return dtype


CPU_SLICE_ROWS = 2048  # see DualEncoderModel.items_per_pass


def resolve_matmuls(
    precision: torch.dtype | str | None, cls: type, dtype: torch.dtype | None
) -> torch.dtype | str | None:
    """How the matrix multiplies of a precision run: None (float32), torch.bfloat16 / torch.float16, or "int8"
    (see ``PreTrainedModel.from_pretrained``)."""
    if precision in (None, "float32", torch.float32):
        return None
    if not issubclass(cls, DualEncoderModel):
        raise InputError(f"precision applies to the dual encoders (AltCLIPModel, CLIPModel), not {cls.__name__}")
    if dtype not in (None, torch.float32):
        raise InputError(f"precision keeps the rest of the model in float32; leave dtype unset (got {dtype})")
    if precision == "int8":
        return "int8"
    resolved = getattr(torch, str(precision).removeprefix("torch."), None)
    if resolved not in (torch.bfloat16, torch.float16):
        raise InputError(f"precision must be float32, bfloat16, float16 or int8, got {precision!r}")
    return resolved


def weight_converter(
    model: nn.Module, dtype: torch.dtype | None, matmuls: torch.dtype | str | None
) -> Callable[[str, Tensor], dict[str, Tensor]]:
    """For a model on the meta device: a function from one checkpoint tensor to the entries of the model's
    state dict it becomes (cast, or quantized with its scale). With ``matmuls="int8"`` the model's Linears
    are replaced by ``Int8Linear`` here."""
    if matmuls == "int8":
        model.int8_kernel = replace_linears(model)  # the kernel choice, with its timings
        converted = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, Int8Linear)}
    elif matmuls is not None:
        converted = {
            f"{name}.{param}"
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear | nn.Conv2d)
            for param in ("weight", "bias")
        }
    else:
        converted = set()

    def convert(key: str, tensor: Tensor) -> dict[str, Tensor]:
        if key in converted and matmuls == "int8":
            weight, scale = quantize_weight(tensor)
            return {key: weight, f"{key}_scale": scale}
        if key in converted:
            return {key: tensor.to(matmuls, copy=True)}  # type: ignore[arg-type]
        # A tensor kept as read is a view of the weight file's pages. Beside converted neighbours it is copied,
        # or it would hold every page of its group (the converted ones too) in memory (iter_weights).
        target = dtype if tensor.is_floating_point() and dtype is not None else tensor.dtype
        return {key: tensor.to(target, copy=matmuls is not None)}

    return convert


class PreTrainedModel(nn.Module):
    """Loading, saving and initialisation shared by every public model.

    A subclass sets ``config`` in ``__init__``, names its config class, and says how checkpoint keys map
    onto its parameters: ``key_map`` for its own checkpoints, ``composite_key_map`` for reading it out
    of a full CLIP / AltCLIP checkpoint (e.g. ``AltCLIPTextModel.from_pretrained("BAAI/AltCLIP")``).
    """

    config_class: ClassVar[type[Config]]
    key_map: ClassVar[KeyMap] = KeyMap(drop=LEGACY_BUFFERS)
    composite_key_map: ClassVar[KeyMap | None] = None
    save_key_map: ClassVar[KeyMap] = KeyMap()
    config: Config

    # -- properties -------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def gradient_checkpointing_enable(self, enable: bool = True) -> None:
        self._set_flag("gradient_checkpointing", enable)

    def padding_free_enable(self, enable: bool = True) -> None:
        """Padded text batches run their linear maps on the real tokens alone (XLM-R towers): the same pooled
        output, in about the time of the batch without its padding; padded positions of ``last_hidden_state``
        become zeros. Training turns it on (``TrainConfig.padding_free``); the ``Embedder`` batches texts of about
        one length instead; parity with transformers keeps it off."""
        self._set_flag("padding_free", enable)

    def patch_dropout_enable(self, share: float = 0.5) -> None:
        """In training, image towers read the class token and a random ``1 - share`` of the patch tokens
        (open_clip's ``patch_dropout``; FLIP, Li et al. 2023): about ``1 - share`` of the cost of a step. Off
        (0) by default and at inference."""
        if not 0 <= share < 1:
            raise InputError(f"patch dropout must be in [0, 1), not {share}")
        self._set_flag("patch_dropout", share)

    def _set_flag(self, name: str, enable: bool | float) -> None:
        for module in self.modules():
            if hasattr(module, name):
                setattr(module, name, enable)

    # -- checkpoints ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls: type[M],
        name_or_path: str | Path,
        *,
        config: Config | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        torch_dtype: torch.dtype | str | None = None,
        precision: str | None = None,
        matmul_dtype: torch.dtype | str | None = None,
        adapter: str | Path | None = None,
    ) -> M:
        """Load a checkpoint from a local folder or a Hugging Face hub name.

        ``dtype``: None gives float32, "auto" the dtype config.json names (transformers' meaning; the
        ``Embedder``'s "auto" is the machine's choice); ``torch_dtype`` is its old name.
        ``precision`` (dual encoders only; the rest of the model stays float32): "bfloat16" or "float16"
        stores the weights of every matrix multiply in 16 bits and runs them under ``torch.autocast``; "int8"
        makes every Linear an ``Int8Linear`` (CPU); ``matmul_dtype`` is its name before 0.2, kept for one
        release. Weights are converted one tensor at a time as they are read, so the float32 checkpoint is never
        all in memory.
        Hub names go through ``huggingface_hub`` and its cache; with ``HF_HUB_OFFLINE=1`` (or
        ``local_files_only=True``) nothing is downloaded and a model that is not cached is a clear error.
        ``adapter``: a LoRA adapter folder (``altclip finetune --lora``), merged into the weights as they are
        read (``lora.AdapterMerger``); one trained on another base is refused.
        """
        hub = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only}
        config_path = resolve_file(name_or_path, CONFIG_NAME, **hub)
        file_config = json.loads(config_path.read_text(encoding="utf-8"))
        if config is None:
            config = cls.config_class.from_file_dict(file_config)
        from_composite = file_config.get("model_type") in ("clip", "altclip") and not isinstance(
            config, DualEncoderConfig
        )
        key_map = cls.composite_key_map if from_composite and cls.composite_key_map else cls.key_map
        dtype = resolve_dtype(torch_dtype if dtype is None else dtype, file_config)
        if matmul_dtype is not None:
            warnings.warn("from_pretrained(matmul_dtype=...) is now precision=...", DeprecationWarning, stacklevel=2)
        matmuls = resolve_matmuls(precision or matmul_dtype, cls, dtype)

        with torch.device("meta"):
            model = cls(config)  # type: ignore[call-arg]
        convert = weight_converter(model, dtype, matmuls)
        merge = Adapter.load(adapter).merger() if adapter is not None else None
        state: dict[str, Tensor] = {}
        for path in resolve_weights(name_or_path, **hub):
            for key, tensor in key_map.stream(iter_weights(path)):
                state.update(convert(key, tensor if merge is None else merge(key, tensor)))
        if merge is not None:
            merge.finish(str(name_or_path))
        check_state_dict(model.state_dict(), state, f"{cls.__name__} from {name_or_path}")
        model.load_state_dict(state, strict=True, assign=True)
        if isinstance(model, DualEncoderModel) and matmuls is not None:
            model.autocast_dtype = matmuls if isinstance(matmuls, torch.dtype) else None
            model.slice_rows = CPU_SLICE_ROWS
        return model.to(device=device).eval()

    def save_pretrained(self, folder: str | Path, max_shard_size: int | str = "5GB") -> Path:
        """Write ``config.json`` and ``model.safetensors`` (sharded above ``max_shard_size``) that
        transformers and altclip both load."""
        if any(isinstance(m, Int8Linear) for m in self.modules()):
            raise InputError("an int8 model cannot be saved as a Hugging Face checkpoint; save the float one")
        folder = Path(folder)
        save_weights(self.save_key_map.apply(self.state_dict()), folder, max_shard_size)
        self.config.save_pretrained(folder)
        return folder


# ---------------------------------------------------------------------------------------------------
# Towers


def _tower_key_map(prefix: str, modules: str) -> KeyMap:
    """A tower saved on its own: transformers 4 wrote ``<prefix>.`` keys, transformers 5 none."""
    return KeyMap(drop=LEGACY_BUFFERS, rename=((rf"^({modules})\.", rf"{prefix}.\1."), *V5_LAYER_NAMES))


def _from_composite(*prefixes: str) -> KeyMap:
    return KeyMap(keep=tuple(rf"^{p}\." for p in prefixes), drop=LEGACY_BUFFERS, rename=V5_LAYER_NAMES)


class CLIPTextModel(PreTrainedModel):
    config_class = CLIPTextConfig
    key_map = _tower_key_map("text_model", "embeddings|encoder|final_layer_norm")
    composite_key_map = _from_composite("text_model")

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.text_model = CLIPTextTransformer(config)
        self.text_model.init_weights()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        return self.text_model(input_ids, attention_mask, position_ids, output_attentions, output_hidden_states)


class CLIPTextModelWithProjection(CLIPTextModel):
    composite_key_map = _from_composite("text_model", "text_projection")

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        init_normal(self.text_projection, config.hidden_size**-0.5 * config.initializer_factor)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> CLIPTextModelOutput:
        out = super().forward(input_ids, attention_mask, position_ids, output_attentions, output_hidden_states)
        return CLIPTextModelOutput(
            self.text_projection(out.pooler_output), out.last_hidden_state, out.hidden_states, out.attentions
        )


class CLIPVisionModel(PreTrainedModel):
    config_class = CLIPVisionConfig
    key_map = _tower_key_map("vision_model", "embeddings|pre_layrnorm|encoder|post_layernorm")
    composite_key_map = _from_composite("vision_model")

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = CLIPVisionTransformer(config)
        self.vision_model.init_weights()

    def forward(
        self,
        pixel_values: Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> BaseModelOutputWithPooling:
        return self.vision_model(pixel_values, output_attentions, output_hidden_states, interpolate_pos_encoding)


class CLIPVisionModelWithProjection(CLIPVisionModel):
    composite_key_map = _from_composite("vision_model", "visual_projection")

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        init_normal(self.visual_projection, config.hidden_size**-0.5 * config.initializer_factor)

    def forward(
        self,
        pixel_values: Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> CLIPVisionModelOutput:
        out = super().forward(pixel_values, output_attentions, output_hidden_states, interpolate_pos_encoding)
        return CLIPVisionModelOutput(
            self.visual_projection(out.pooler_output),
            out.last_hidden_state,
            out.hidden_states,
            out.attentions,
        )


class AltCLIPVisionModel(CLIPVisionModel):
    config_class = AltCLIPVisionConfig


class AltCLIPTextModel(PreTrainedModel, AltCLIPTextTransformer):
    """XLM-R text tower with AltCLIP's head; ``last_hidden_state`` is ``transformation(pre_LN(h))``."""

    config_class = AltCLIPTextConfig
    # transformers 5 writes this tower's layers as ``roberta.encoder.layers.N``; the hub files as ``layer``.
    key_map = KeyMap(
        drop=(*LEGACY_BUFFERS, r"^roberta\.pooler\."),
        rename=((r"^roberta\.encoder\.layers\.", "roberta.encoder.layer."),),
    )
    # ...and reads only that spelling for a standalone AltCLIPTextModel, so that is what we write.
    save_key_map = KeyMap(rename=((r"^roberta\.encoder\.layer\.", "roberta.encoder.layers."),))
    composite_key_map = KeyMap(
        keep=(r"^text_model\.",),
        drop=(*LEGACY_BUFFERS, r"\.roberta\.pooler\."),
        rename=((r"^text_model\.", ""), (r"^roberta\.encoder\.layers\.", "roberta.encoder.layer.")),
    )

    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__(config)
        self.init_weights()


# ---------------------------------------------------------------------------------------------------
# Dual encoders


def normalize(x: Tensor) -> Tensor:
    return x / x.pow(2).sum(dim=-1, keepdim=True).sqrt()


def clip_loss(logits_per_text: Tensor) -> Tensor:
    """Symmetric InfoNCE: the i-th text belongs to the i-th image."""
    targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)) / 2


class DualEncoderModel(PreTrainedModel):
    """Text and image towers projected into one space; logits are scaled cosine similarities."""

    def __init__(self, config: DualEncoderConfig, text_model: nn.Module, text_width: int) -> None:
        super().__init__()
        self.config = config
        self.autocast_dtype: torch.dtype | None = None  # set by from_pretrained(precision=...)
        self.slice_rows: int | None = None  # the same: token rows per forward pass on the CPU (items_per_pass)
        self.text_model = text_model
        self.vision_model = CLIPVisionTransformer(config.vision_config)  # type: ignore[arg-type]
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)  # type: ignore[attr-defined]
        self.text_projection = nn.Linear(text_width, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.text_model.init_weights()
        self.vision_model.init_weights()
        init_normal(self.visual_projection, self.visual_projection.in_features**-0.5 * config.initializer_factor)
        init_normal(self.text_projection, text_width**-0.5 * config.initializer_factor)

    def _text(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        position_ids: Tensor | None,
        token_type_ids: Tensor | None,
        **flags: bool,
    ) -> BaseModelOutputWithPooling:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.text_model(input_ids, attention_mask=attention_mask, position_ids=position_ids, **extra, **flags)

    def get_text_features(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Projected, unnormalised text embeddings (batch, projection_dim)."""
        per_pass = self.items_per_pass(input_ids.shape[1], input_ids.device)
        if per_pass is not None and per_pass < len(input_ids):
            inputs = (input_ids, attention_mask, position_ids, token_type_ids)
            parts = zip(*(repeat(None) if t is None else t.split(per_pass) for t in inputs), strict=False)
            return torch.cat([self.get_text_features(*part) for part in parts])
        with self.autocast():
            pooled = self._text(input_ids, attention_mask, position_ids, token_type_ids).pooler_output
            return self.text_projection(pooled)

    def get_image_features(self, pixel_values: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        """Projected, unnormalised image embeddings (batch, projection_dim)."""
        patch = self.config.vision_config.patch_size  # type: ignore[attr-defined]
        tokens = (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch) + 1
        per_pass = self.items_per_pass(tokens, pixel_values.device)
        if per_pass is not None and per_pass < len(pixel_values):
            return torch.cat(
                [self.get_image_features(p, interpolate_pos_encoding) for p in pixel_values.split(per_pass)]
            )
        with self.autocast():
            pooled = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding).pooler_output
            return self.visual_projection(pooled)

    def items_per_pass(self, tokens: int, device: torch.device) -> int | None:
        """How many texts or images of ``tokens`` tokens one forward pass takes: all of them, except with 16-bit
        or int8 matrix multiplies on the CPU, whose rate falls for much taller products (the README's "Speed"
        section gives the figures and the CPU they were measured on), so a batch runs in slices of ``slice_rows``.
        None: one pass (and no comparison a graph exporter would have to trace)."""
        if self.slice_rows is None or device.type != "cpu":
            return None
        return max(1, self.slice_rows // tokens)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Matrix multiplies in ``autocast_dtype`` where it is set, LayerNorm, softmax and sums in float32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def forward(
        self,
        input_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        return_loss: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> CLIPOutput:
        if input_ids is None or pixel_values is None:
            missing = " and ".join(
                n for n, v in (("input_ids", input_ids), ("pixel_values", pixel_values)) if v is None
            )
            raise InputError(
                f"{type(self).__name__} needs both input_ids and pixel_values; {missing} missing "
                "(use get_text_features / get_image_features for one side)"
            )
        flags = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states}
        with self.autocast():
            vision_out = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **flags)
            text_out = self._text(input_ids, attention_mask, position_ids, token_type_ids, **flags)
            image_embeds = normalize(self.visual_projection(vision_out.pooler_output))  # (images, dim)
            text_embeds = normalize(self.text_projection(text_out.pooler_output))  # (texts, dim)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()  # (texts, images)
        return CLIPOutput(
            loss=clip_loss(logits_per_text) if return_loss else None,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_out,
            vision_model_output=vision_out,
        )


class CLIPModel(DualEncoderModel):
    config_class = CLIPConfig
    key_map = KeyMap(drop=LEGACY_BUFFERS, rename=V5_LAYER_NAMES)

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__(config, CLIPTextTransformer(config.text_config), config.text_config.hidden_size)


class AltCLIPModel(DualEncoderModel):
    config_class = AltCLIPConfig
    # transformers 5 writes ``vision_model.encoder.layer.N``; RoBERTa's own ``encoder.layer.N`` stays.
    key_map = KeyMap(
        drop=(*LEGACY_BUFFERS, r"^text_model\.roberta\.pooler\."),
        rename=((r"^vision_model\.encoder\.layer\.", "vision_model.encoder.layers."),),
    )

    def __init__(self, config: AltCLIPConfig) -> None:
        super().__init__(config, AltCLIPTextTransformer(config.text_config), config.text_config.project_dim)


__all__ = [
    "AltCLIPModel",
    "AltCLIPTextModel",
    "AltCLIPVisionModel",
    "CLIPModel",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "CLIPVisionModel",
    "CLIPVisionModelWithProjection",
    "PreTrainedModel",
]
