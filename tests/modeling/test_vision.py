"""Image tower: pixel checks and position-table interpolation."""

from __future__ import annotations

import pytest
import torch

from altclip.modeling.config import CLIPVisionConfig
from altclip.modeling.vision import CLIPVisionTransformer

CONFIG = CLIPVisionConfig(
    hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
)


def test_bad_pixels_are_named():
    tower = CLIPVisionTransformer(CONFIG)
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\), got shape \(3, 32, 32\)"):
        tower(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="got shape"):
        tower(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"32x48 but the model takes 32x32.*interpolate_pos_encoding"):
        tower(torch.zeros(1, 3, 32, 48))
    with pytest.raises(ValueError, match="smaller than one 8px patch"):
        tower(torch.zeros(1, 3, 4, 32), interpolate_pos_encoding=True)


def test_interpolation_keeps_the_native_grid_and_resizes_others():
    tower = CLIPVisionTransformer(CONFIG).eval()
    px = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(tower(px).pooler_output, tower(px, interpolate_pos_encoding=True).pooler_output)
    table = tower.embeddings.interpolated_positions(48, 64)
    assert table.shape == (1, 1 + 6 * 8, 16)
    assert torch.equal(table[0, 0], tower.embeddings.position_embedding.weight[0])  # class position kept
    assert tower(torch.randn(2, 3, 48, 64), interpolate_pos_encoding=True).last_hidden_state.shape == (2, 49, 16)
