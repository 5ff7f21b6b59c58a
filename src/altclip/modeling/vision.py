"""CLIP's ViT image tower (AltCLIP keeps CLIP's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from altclip.errors import InputError
from altclip.modeling.config import CLIPVisionConfig
from altclip.modeling.layers import CLIPEncoder, init_layer_norms, init_normal
from altclip.modeling.outputs import BaseModelOutputWithPooling


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.class_embedding = nn.Parameter(torch.randn(config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=False,
        )
        self.position_embedding = nn.Embedding(config.grid_size**2 + 1, config.hidden_size)

    def check_pixels(self, pixel_values: Tensor, interpolate_pos_encoding: bool) -> None:
        c = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[1] != c.num_channels:
            raise InputError(
                f"pixel_values must be (batch, {c.num_channels}, height, width), got shape {tuple(pixel_values.shape)}"
            )
        height, width = pixel_values.shape[-2:]
        if interpolate_pos_encoding:
            if height < c.patch_size or width < c.patch_size:
                raise InputError(f"pixel_values of {height}x{width} are smaller than one {c.patch_size}px patch")
        elif (height, width) != (c.image_size, c.image_size):
            raise InputError(
                f"pixel_values are {height}x{width} but the model takes {c.image_size}x{c.image_size} "
                "(resize them, or pass interpolate_pos_encoding=True)"
            )

    def interpolated_positions(self, height: int, width: int) -> Tensor:
        """Position table resized (bicubic) to a (height // patch) x (width // patch) grid."""
        table = self.position_embedding.weight
        grid, dim = self.config.grid_size, table.shape[-1]
        rows, cols = height // self.config.patch_size, width // self.config.patch_size
        if (rows, cols) == (grid, grid):
            return table[None]
        patches = table[1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)  # (1, dim, grid, grid)
        patches = F.interpolate(patches, size=(rows, cols), mode="bicubic", align_corners=False)
        patches = patches.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
        return torch.cat([table[None, :1], patches], dim=1)  # (1, 1 + rows * cols, dim)

    def forward(self, pixel_values: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        self.check_pixels(pixel_values, interpolate_pos_encoding)
        batch, _, height, width = pixel_values.shape
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (batch, dim, rows, cols)
        patches = patches.flatten(2).transpose(1, 2)  # (batch, rows * cols, dim)
        cls = self.class_embedding.expand(batch, 1, -1)
        x = torch.cat([cls, patches], dim=1)  # (batch, 1 + rows * cols, dim)
        if interpolate_pos_encoding:
            return x + self.interpolated_positions(height, width)
        return x + self.position_embedding.weight


class CLIPVisionTransformer(nn.Module):
    """pixels -> patches + class token -> pre-LN encoder -> ``post_layernorm`` of the class token."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        c = self.config = config
        self.embeddings = CLIPVisionEmbeddings(c)
        self.pre_layrnorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.encoder = CLIPEncoder(c)
        self.post_layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.patch_dropout = 0.0  # the share of patch tokens dropped in training (``patch_dropout_enable``)

    @torch.no_grad()
    def init_weights(self) -> None:
        c, e = self.config, self.embeddings
        nn.init.normal_(e.class_embedding, std=c.hidden_size**-0.5 * c.initializer_factor)
        init_normal(e.patch_embedding, c.initializer_range * c.initializer_factor)
        init_normal(e.position_embedding, c.initializer_range * c.initializer_factor)
        self.encoder.init_weights(c.initializer_factor)
        init_layer_norms(self)

    def forward(
        self,
        pixel_values: Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> BaseModelOutputWithPooling:
        x = self.embeddings(pixel_values, interpolate_pos_encoding)  # (batch, 1 + patches, dim)
        if self.training and self.patch_dropout > 0:
            x = drop_patches(x, self.patch_dropout)  # (batch, 1 + kept, dim)
        out = self.encoder(self.pre_layrnorm(x), None, output_hidden_states, output_attentions)
        pooled = self.post_layernorm(out.last_hidden_state[:, 0])  # (batch, dim)
        return BaseModelOutputWithPooling(out.last_hidden_state, pooled, out.hidden_states, out.attentions)


def drop_patches(x: Tensor, share: float) -> Tensor:
    """(batch, 1 + patches, dim) tokens, the class token first -> the class token and a random
    ``1 - share`` of the patch tokens of each image, in their order (open_clip's ``patch_dropout``, FLIP)."""
    batch, patches = x.shape[0], x.shape[1] - 1
    kept = max(1, round(patches * (1 - share)))
    chosen = torch.rand(batch, patches, device=x.device).topk(kept, dim=1).indices.sort(dim=1).values + 1
    rows = torch.cat([torch.zeros(batch, 1, dtype=torch.long, device=x.device), chosen], dim=1)  # (batch, 1 + kept)
    return x.gather(1, rows[..., None].expand(-1, -1, x.shape[2]))
