"""Low-rank adapters (LoRA, Hu et al. 2021) on a model's linear maps, and the layer rule of partial unfreezing.

``LoRALinear`` keeps a frozen ``base`` linear map and adds ``scaling * B(A(dropout(x)))``: ``A`` (rank x in) starts
as Kaiming-uniform, ``B`` (out x rank) at zero, so an adapted model starts equal to its base; ``scaling`` is
``alpha / rank``. Merged, the map is one linear map of weight ``W + scaling * B @ A``. Parameter names follow
PEFT's (``lora_A.weight``, ``lora_B.weight``), so an adapter's keys read like the module it adapts:
``text_model.roberta.encoder.layer.11.attention.self.query.lora_A.weight``.

``TARGETS`` names the linear maps adapters go on, per family and tower, by the last part of their module name:
the attention projections and the MLP's two maps of each encoder layer.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from altclip.errors import InputError, MissingFileError
from altclip.files import atomic_path, read_json, write_json

TARGETS = {
    "attention": ("q_proj", "k_proj", "v_proj", "out_proj", "query", "key", "value", "attention.output.dense"),
    "mlp": ("fc1", "fc2", "intermediate.dense", "output.dense"),
}
TOWERS = {"text": "text_model.", "image": "vision_model."}


class LoRALinear(nn.Module):
    """``base(x) + scaling * lora_B(lora_A(dropout(x)))``, ``base`` frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if rank < 1:
            raise InputError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout)
        self.scaling = alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scaling * self.lora_B(self.lora_A(self.dropout(x)))

    def merged(self) -> nn.Linear:
        """One linear map equal to this one (in eval mode): ``W + scaling * B @ A``."""
        linear = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        linear.to(self.base.weight.device, self.base.weight.dtype)
        with torch.no_grad():
            delta = self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())  # (out, in)
            linear.weight.copy_(self.base.weight.float() + delta)
            if self.base.bias is not None:
                linear.bias.copy_(self.base.bias)
        return linear


@dataclass
class LoRAConfig:
    """What ``add_lora`` adapts, saved with an adapter (``adapter_config.json``)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    towers: list[str] = field(default_factory=lambda: ["text", "image"])  # "text", "image"
    targets: list[str] = field(default_factory=lambda: ["attention", "mlp"])  # keys of TARGETS, or module names

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise InputError(f"LoRA rank must be at least 1, got {self.rank}")
        unknown = [t for t in self.towers if t not in TOWERS]
        if unknown or not self.towers:
            raise InputError(f"LoRA towers must be among {', '.join(TOWERS)}, got {self.towers}")

    def suffixes(self) -> tuple[str, ...]:
        return tuple(s for t in self.targets for s in TARGETS.get(t, (t,)))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def lora_targets(model: nn.Module, config: LoRAConfig) -> list[str]:
    """The names of the linear maps inside the encoder layers of the chosen towers that end in a target name."""
    names = []
    for name, module in model.named_modules():
        tower = next((t for t, prefix in TOWERS.items() if name.startswith(prefix)), None)
        if tower not in config.towers or not isinstance(module, nn.Linear) or ".layer" not in name:
            continue
        if any(name == s or name.endswith("." + s) for s in config.suffixes()):
            names.append(name)
    return names


def add_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze every parameter of ``model`` and put a ``LoRALinear`` in place of each target linear map; returns
    their names. Only the adapters train."""
    names = lora_targets(model, config)
    if not names:
        raise InputError(f"no linear map of the {' and '.join(config.towers)} tower matches {config.targets}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, LoRALinear(getattr(owner, child), config.rank, config.alpha, config.dropout))
    return names


def merge_lora(model: nn.Module) -> int:
    """Replace every ``LoRALinear`` by its merged linear map, in place; returns how many were merged."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, module in found:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module.merged())
    return len(found)


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapters' weights alone, by PEFT-style names (``....query.lora_A.weight``)."""
    return {
        k.replace(".base.", "."): v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if ".lora_A." in k or ".lora_B." in k
    }


def unlock_last_layers(tower: nn.Module, layers: int) -> list[str]:
    """Partial unfreezing of one tower (open_clip's ``--lock-*-unlocked-*``). The rule:

    * encoder layer ``i`` of ``n`` trains when ``i >= n - layers``;
    * what comes after the encoder (the final LayerNorm, AltCLIP's ``pre_LN`` and ``transformation``) trains
      when any layer does;
    * the embeddings, and the vision tower's ``pre_layrnorm`` that normalises them, train only when every
      layer does (``layers == n``: the whole tower).

    ``layers`` 0 freezes the tower. Returns the names of its parameters that train.
    """
    count = len(encoder_layers(tower))
    if not 0 <= layers <= count:
        raise InputError(f"a tower of {count} layers cannot unlock {layers}")
    trainable = []
    for name, p in tower.named_parameters():
        index = layer_index(name)
        if index is not None:
            train = index >= count - layers
        elif "embeddings." in name or name.startswith("pre_layrnorm."):
            train = layers == count
        else:
            train = layers > 0
        p.requires_grad_(train)
        if train:
            trainable.append(name)
    return trainable


def encoder_layers(tower: nn.Module) -> nn.ModuleList:
    for name in ("encoder.layers", "roberta.encoder.layer"):
        try:
            found = tower.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(found, nn.ModuleList):
            return found
    raise InputError(f"{type(tower).__name__} has no encoder layers to unlock")


def layer_index(name: str) -> int | None:
    """The encoder layer a parameter name belongs to (``encoder.layers.3.mlp.fc1.weight`` -> 3), else None."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layers", "layer") and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
FINGERPRINT_VALUES = 4096  # values of each adapted weight that the base's fingerprint reads


class Fingerprint:
    """A digest of a base model's adapted weights (name, shape and their first ``FINGERPRINT_VALUES`` values in
    float32), fed one weight at a time: what an adapter records of the model it was trained on."""

    def __init__(self) -> None:
        self.parts: dict[str, bytes] = {}

    def add(self, module: str, weight: Tensor) -> None:
        head = weight.detach().flatten()[:FINGERPRINT_VALUES].float().cpu().numpy().tobytes()
        self.parts[module] = f"{module}:{tuple(weight.shape)}:".encode() + head

    def digest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for module in sorted(self.parts):
            h.update(self.parts[module])
        return h.hexdigest()


@dataclass
class Adapter:
    """A saved LoRA adapter: its config, its weights by PEFT-style names, and what it was trained on
    (``base``: the base model's name and revision as given, and the fingerprint of its adapted weights)."""

    config: LoRAConfig
    weights: dict[str, Tensor]
    base: dict[str, Any]

    @classmethod
    def from_model(cls, model: nn.Module, config: LoRAConfig, base_name: str, revision: str | None = None) -> Adapter:
        fingerprint = Fingerprint()
        for name, module in model.named_modules():
            if isinstance(module, LoRALinear):
                fingerprint.add(name, module.base.weight)
        base = {"model": base_name, "revision": revision, "fingerprint": fingerprint.digest()}
        return cls(config, adapter_state_dict(model), base)

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        with atomic_path(folder / ADAPTER_WEIGHTS) as tmp:
            save_file(self.weights, str(tmp), metadata={"format": "pt"})
        write_json(folder / ADAPTER_CONFIG, {"lora": self.config.to_json(), "base": self.base})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Adapter:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
            raise MissingFileError(f"{folder} is not a LoRA adapter (no {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
        values = read_json(folder / ADAPTER_CONFIG)
        return cls(LoRAConfig(**values["lora"]), load_file(str(folder / ADAPTER_WEIGHTS)), values["base"])

    def modules(self) -> list[str]:
        return sorted({k.rsplit(".lora_", 1)[0] for k in self.weights})

    def delta(self, module: str) -> Tensor:
        """(out, in) float32: ``scaling * B @ A`` of one adapted module."""
        a, b = self.weights[f"{module}.lora_A.weight"].float(), self.weights[f"{module}.lora_B.weight"].float()
        return (self.config.alpha / self.config.rank) * (b @ a)

    def merger(self) -> AdapterMerger:
        return AdapterMerger(self)


def adapter_identity(folder: str | Path) -> dict[str, str]:
    """What a collection's manifest records of the adapter its vectors were made with: its folder (absolute) and
    the digest of its weights file."""
    folder = Path(folder).resolve()
    digest = hashlib.blake2b((folder / ADAPTER_WEIGHTS).read_bytes(), digest_size=16).hexdigest()
    return {"path": str(folder), "digest": digest}


class AdapterMerger:
    """Adds an adapter's deltas to its base's weights as they are read (``PreTrainedModel.from_pretrained``),
    fingerprinting the base on the way; ``finish`` refuses a base other than the adapter's."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.targets = {f"{m}.weight": m for m in adapter.modules()}
        self.fingerprint = Fingerprint()

    def __call__(self, key: str, tensor: Tensor) -> Tensor:
        module = self.targets.get(key)
        if module is None:
            return tensor
        self.fingerprint.add(module, tensor)
        delta = self.adapter.delta(module)
        if delta.shape != tensor.shape:
            raise InputError(f"the adapter's {module} is {tuple(delta.shape)}, the model's {tuple(tensor.shape)}")
        return (tensor.float() + delta).to(tensor.dtype)

    def finish(self, where: str) -> None:
        missing = sorted(set(self.targets.values()) - set(self.fingerprint.parts))
        base = self.adapter.base
        if missing:
            raise InputError(f"the adapter for {base.get('model')} adapts {missing[0]}, which {where} does not have")
        if self.fingerprint.digest() != base.get("fingerprint"):
            raise InputError(
                f"the adapter was trained on {base.get('model')}, whose weights differ from {where}'s; "
                f"load it over {base.get('model')}"
            )
