"""Dataclass configs for AltCLIP and CLIP, read from and written to Hugging Face ``config.json``.

Field names and defaults are transformers'. Reading a file is lenient: keys this library does not use
(``direct_kd``, ``num_layers``, ``_name_or_path``, ``torch_dtype``, ...) are ignored, and the legacy
``text_config_dict`` / ``vision_config_dict`` keys of the BAAI files override ``text_config`` /
``vision_config`` the way transformers applies them. Constructing a config in code is strict: a
misspelt keyword is a ``TypeError``, as with any dataclass.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from altclip.errors import InputError
from altclip.files import read_json, write_json
from altclip.hub import resolve_file

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
C = TypeVar("C", bound="Config")


@dataclass
class Config:
    """Behaviour shared by every config: dict and ``config.json`` round trips."""

    model_type: ClassVar[str]
    architecture: ClassVar[str]

    def validate(self) -> None:
        """Raise ``ValueError`` when the fields cannot describe a model."""

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        values = cls._normalise(dict(values))
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        ignored = sorted(set(values) - known)
        if ignored:
            logger.debug("%s: ignoring keys %s", cls.__name__, ignored)
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def _normalise(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Turn a file's dict into constructor arguments (nested configs, legacy keys)."""
        return values

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Config) else value
        out["model_type"] = self.model_type
        return out

    @classmethod
    def from_pretrained(cls: type[C], name_or_path: str | Path, **hub: Any) -> C:
        """Read ``config.json`` from a folder or a hub name (see ``resolve_file``)."""
        path = resolve_file(name_or_path, CONFIG_NAME, **hub)
        return cls.from_json_file(path)

    @classmethod
    def from_json_file(cls: type[C], path: str | Path) -> C:
        return cls.from_file_dict(read_json(path))

    @classmethod
    def from_file_dict(cls: type[C], values: dict[str, Any]) -> C:
        """Build from a ``config.json`` dict; a tower config also accepts its composite's file."""
        return cls.from_dict(values)

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return write_json(
            folder / CONFIG_NAME, {"architectures": [self.architecture], **self.to_dict()}, sort_keys=True
        )


def _check_heads(config: Config) -> None:
    hidden, heads = config.hidden_size, config.num_attention_heads  # type: ignore[attr-defined]
    if heads <= 0 or hidden % heads:
        raise InputError(
            f"{type(config).__name__}: hidden_size ({hidden}) must be a multiple of num_attention_heads ({heads})"
        )


@dataclass
class TowerConfig(Config):
    """A text or vision tower. Reads its section of a composite ``config.json`` when given one."""

    composite_key: ClassVar[str]

    def validate(self) -> None:
        _check_heads(self)

    @classmethod
    def from_file_dict(cls: type[C], values: dict[str, Any]) -> C:
        composite = COMPOSITE_CONFIGS.get(values.get("model_type", ""))
        if composite is not None and cls.composite_key in {f.name for f in dataclasses.fields(composite)}:
            return getattr(composite.from_dict(values), cls.composite_key)
        return cls.from_dict(values)


@dataclass
class CLIPTextConfig(TowerConfig):
    """CLIP's causal text tower (the AltCLIP teacher)."""

    model_type: ClassVar[str] = "clip_text_model"
    architecture: ClassVar[str] = "CLIPTextModel"
    composite_key: ClassVar[str] = "text_config"

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    pad_token_id: int = 1
    bos_token_id: int = 49406
    eos_token_id: int = 49407

    @property
    def max_tokens(self) -> int:
        """Longest sequence the position table holds."""
        return self.max_position_embeddings


@dataclass
class CLIPVisionConfig(TowerConfig):
    """CLIP's ViT image tower; AltCLIP uses the same tower."""

    model_type: ClassVar[str] = "clip_vision_model"
    architecture: ClassVar[str] = "CLIPVisionModel"
    composite_key: ClassVar[str] = "vision_config"

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.image_size % self.patch_size:
            raise InputError(
                f"{type(self).__name__}: image_size ({self.image_size}) must be a multiple of "
                f"patch_size ({self.patch_size})"
            )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class AltCLIPVisionConfig(CLIPVisionConfig):
    model_type: ClassVar[str] = "altclip_vision_model"
    architecture: ClassVar[str] = "AltCLIPVisionModel"


@dataclass
class AltCLIPTextConfig(TowerConfig):
    """XLM-RoBERTa text tower with AltCLIP's ``pre_LN`` and ``transformation`` head."""

    model_type: ClassVar[str] = "altclip_text_model"
    architecture: ClassVar[str] = "AltCLIPTextModel"
    composite_key: ClassVar[str] = "text_config"

    vocab_size: int = 250002
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    max_position_embeddings: int = 514
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    initializer_factor: float = 0.02
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.0
    type_vocab_size: int = 1
    project_dim: int = 768

    @property
    def max_tokens(self) -> int:
        """Longest sequence the position table holds (positions start after ``pad_token_id``)."""
        return self.max_position_embeddings - self.pad_token_id - 1


@dataclass
class DualEncoderConfig(Config):
    """A text tower and a vision tower projected into one space."""

    text_config_class: ClassVar[type[TowerConfig]]
    vision_config_class: ClassVar[type[TowerConfig]]

    text_config: TowerConfig = None  # type: ignore[assignment]
    vision_config: TowerConfig = None  # type: ignore[assignment]
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    initializer_factor: float = 1.0

    def __post_init__(self) -> None:
        for key, expected in (
            ("text_config", self.text_config_class),
            ("vision_config", self.vision_config_class),
        ):
            value = getattr(self, key)
            if value is None:
                setattr(self, key, expected())
            elif not isinstance(value, expected):
                raise TypeError(
                    f"{type(self).__name__}: {key} must be a {expected.__name__}, got {type(value).__name__} "
                    f"(build from a dict with {type(self).__name__}.from_dict)"
                )
        super().__post_init__()

    @classmethod
    def from_text_vision_configs(
        cls: type[C], text_config: TowerConfig, vision_config: TowerConfig, **kwargs: Any
    ) -> C:
        return cls(text_config=text_config, vision_config=vision_config, **kwargs)

    @classmethod
    def _normalise(cls, values: dict[str, Any]) -> dict[str, Any]:
        for key, tower in (
            ("text_config", cls.text_config_class),
            ("vision_config", cls.vision_config_class),
        ):
            # transformers: a legacy ``*_config_dict`` (filled with defaults) replaces every field of ``*_config``.
            section, legacy = values.pop(key, None), values.pop(f"{key}_dict", None)
            values[key] = tower.from_dict((section if legacy is None else legacy) or {})
        return values


@dataclass
class CLIPConfig(DualEncoderConfig):
    model_type: ClassVar[str] = "clip"
    architecture: ClassVar[str] = "CLIPModel"
    text_config_class: ClassVar[type[TowerConfig]] = CLIPTextConfig
    vision_config_class: ClassVar[type[TowerConfig]] = CLIPVisionConfig

    text_config: CLIPTextConfig = None  # type: ignore[assignment]
    vision_config: CLIPVisionConfig = None  # type: ignore[assignment]


@dataclass
class AltCLIPConfig(DualEncoderConfig):
    model_type: ClassVar[str] = "altclip"
    architecture: ClassVar[str] = "AltCLIPModel"
    text_config_class: ClassVar[type[TowerConfig]] = AltCLIPTextConfig
    vision_config_class: ClassVar[type[TowerConfig]] = AltCLIPVisionConfig

    text_config: AltCLIPTextConfig = None  # type: ignore[assignment]
    vision_config: AltCLIPVisionConfig = None  # type: ignore[assignment]
    projection_dim: int = 768


COMPOSITE_CONFIGS: dict[str, type[DualEncoderConfig]] = {"clip": CLIPConfig, "altclip": AltCLIPConfig}
