"""Building blocks shared by the towers: activations, masks, attention, CLIP's pre-LN encoder."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from altclip.errors import InputError
from altclip.modeling.config import CLIPTextConfig, CLIPVisionConfig


def quick_gelu(x: Tensor) -> Tensor:
    """x * sigmoid(1.702 x). Without autograd, the sigmoid and the product work in place in the one
    temporary: the same values, half the memory traffic of CLIP's MLP activation (the largest tensor). With
    autograd it is silu(1.702 x) / 1.702, whose fused kernels make six passes over the tensor forward and back
    where the product of a sigmoid makes eight (equal to a float's rounding)."""
    if x.requires_grad:
        return F.silu(1.702 * x) / 1.702
    return torch.sigmoid_(1.702 * x).mul_(x)


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "quick_gelu": quick_gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise InputError(f"hidden_act {name!r} is not supported; choose one of {sorted(ACTIVATIONS)}") from None


def padding_mask(attention_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """(batch, keys) 1/0 mask -> additive (batch, 1, 1, keys) mask, or None when nothing is padded.

    Traced graphs (``torch.compile``, export) always carry the mask: "is anything padded" is a
    question about values, which a graph must not branch on."""
    if attention_mask is None or (not torch.compiler.is_compiling() and bool(attention_mask.all())):
        return None
    blocked = attention_mask[:, None, None, :] == 0
    return torch.zeros(blocked.shape, dtype=dtype, device=attention_mask.device).masked_fill(
        blocked, torch.finfo(dtype).min
    )


def causal_mask(length: int, attention_mask: Tensor | None, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive (batch or 1, 1, length, length) mask: no look-ahead, and no padded keys."""
    blocked = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)[None, None]
    if attention_mask is not None:
        blocked = blocked | (attention_mask[:, None, None, :] == 0)
    return torch.zeros(blocked.shape, dtype=dtype, device=device).masked_fill(blocked, torch.finfo(dtype).min)


def attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float, need_weights: bool
) -> tuple[Tensor, Tensor | None]:
    """softmax(q k^T / sqrt(d) + mask) v over (batch, heads, length, head_dim) tensors.

    The fast path is ``scaled_dot_product_attention``; asking for the weights takes the exact
    explicit path (softmax in float32), which is also the reference the fast path is tested against.
    """
    if not need_weights:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout), None
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (batch, heads, q, k)
    if mask is not None:
        scores = scores + mask
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    return F.dropout(weights, p=dropout) @ v, weights


class Packing:
    """The real tokens of a padded batch as rows of one (tokens, hidden) matrix: padding-free layers run their
    linear maps on these rows alone, and only attention sees the (batch, length) layout.

    ``mask``: the additive attention mask of the padded layout (``padding_mask``)."""

    def __init__(self, attention_mask: Tensor, mask: Tensor | None) -> None:
        self.batch, self.length = attention_mask.shape
        self.index = attention_mask.flatten().nonzero().squeeze(1)  # (tokens,) rows of the flat (batch * length)
        self.mask = mask

    def pack(self, x: Tensor) -> Tensor:
        """(batch, length, hidden) -> (tokens, hidden)."""
        return x.reshape(self.batch * self.length, x.shape[-1]).index_select(0, self.index)

    def pad(self, x: Tensor) -> Tensor:
        """(tokens, hidden) -> (batch, length, hidden), zeros where the batch is padded."""
        flat = x.new_zeros(self.batch * self.length, x.shape[-1]).index_copy(0, self.index, x)
        return flat.view(self.batch, self.length, x.shape[-1])


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    batch, length, hidden = x.shape  # sizes spelled out: a batch of no rows has no -1 to infer
    return x.view(batch, length, num_heads, hidden // num_heads).transpose(1, 2)  # (batch, heads, length, head_dim)


def merge_heads(x: Tensor) -> Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)  # (batch, length, hidden)


class CLIPAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor, mask: Tensor | None, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        q, k, v = (split_heads(proj(x), self.num_heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        out, weights = attention(q, k, v, mask, self.dropout if self.training else 0.0, need_weights)
        return self.out_proj(merge_heads(out)), weights


class CLIPMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str) -> None:
        super().__init__()
        self.activation_fn = activation(act)
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LN transformer block of both CLIP towers."""

    def __init__(self, config: CLIPTextConfig | CLIPVisionConfig) -> None:
        super().__init__()
        c = config
        self.self_attn = CLIPAttention(c.hidden_size, c.num_attention_heads, c.attention_dropout)
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = CLIPMLP(c.hidden_size, c.intermediate_size, c.hidden_act)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: Tensor, mask: Tensor | None, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        attn, weights = self.self_attn(self.layer_norm1(x), mask, need_weights)
        x = x + attn
        x = x + self.mlp(self.layer_norm2(x))
        return x, weights


@torch.no_grad()
def init_normal(module: nn.Linear | nn.Embedding | nn.Conv2d, std: float) -> None:
    """N(0, std) weights, zero bias, zero padding row."""
    nn.init.normal_(module.weight, std=std)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    if getattr(module, "padding_idx", None) is not None:
        module.weight[module.padding_idx].zero_()


@torch.no_grad()
def init_layer_norms(root: nn.Module) -> None:
    for module in root.modules():
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class EncoderOutput(NamedTuple):
    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None
    attentions: tuple[Tensor, ...] | None


def run_layers(
    layers: nn.ModuleList,
    x: Tensor,
    mask: Tensor | None,
    output_hidden_states: bool,
    output_attentions: bool,
    gradient_checkpointing: bool,
) -> EncoderOutput:
    """Run a stack of ``layer(x, mask, need_weights) -> (x, weights)``; collect what was asked for.

    ``hidden_states`` holds the input of the first layer and the output of every layer.
    """
    hidden_states = [x] if output_hidden_states else None
    attentions = [] if output_attentions else None
    for layer in layers:
        if gradient_checkpointing and torch.is_grad_enabled():
            x, weights = checkpoint(layer, x, mask, output_attentions, use_reentrant=False)
        else:
            x, weights = layer(x, mask, output_attentions)
        if hidden_states is not None:
            hidden_states.append(x)
        if attentions is not None:
            attentions.append(weights)
    return EncoderOutput(
        x,
        tuple(hidden_states) if hidden_states is not None else None,
        tuple(attentions) if attentions is not None else None,
    )


class CLIPEncoder(nn.Module):
    """The stack of pre-LN blocks of either CLIP tower, as its config describes it."""

    def __init__(self, config: CLIPTextConfig | CLIPVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def init_weights(self, factor: float) -> None:
        """CLIP's scheme: projections scaled by width and depth."""
        for layer in self.layers:
            width = layer.layer_norm1.normalized_shape[0]
            depth_std = width**-0.5 * (2 * len(self.layers)) ** -0.5 * factor
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                init_normal(proj, depth_std)
            init_normal(layer.self_attn.out_proj, width**-0.5 * factor)
            init_normal(layer.mlp.fc1, (2 * width) ** -0.5 * factor)
            init_normal(layer.mlp.fc2, depth_std)
        init_layer_norms(self)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        return run_layers(self.layers, x, mask, output_hidden_states, output_attentions, self.gradient_checkpointing)
