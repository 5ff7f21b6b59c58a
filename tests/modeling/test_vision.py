"""Image tower: pixel checks and position-table interpolation."""

from __future__ import annotations

import pytest
import torch

from altclip.modeling.config import CLIPVisionConfig
from altclip.modeling.vision import CLIPVisionTransformer, drop_patches

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


def test_drop_patches_against_a_naive_reference():
    x = torch.randn(3, 1 + 16, 4)
    torch.manual_seed(0)
    draws = torch.rand(3, 16)
    torch.manual_seed(0)
    kept = drop_patches(x, 0.75)
    assert kept.shape == (3, 1 + 4, 4)
    for image in range(3):  # the class token, then the 4 patches of the highest draws, in their order
        best = sorted(sorted(range(16), key=lambda i: -draws[image, i].item())[:4])
        assert torch.equal(kept[image], x[image, [0] + [1 + i for i in best]])


def test_patch_dropout_trains_on_fewer_patches_and_leaves_inference_alone():
    from altclip.modeling.models import CLIPVisionModel

    model = CLIPVisionModel(CONFIG)
    px = torch.randn(2, 3, 32, 32)
    model.eval()
    before = model(px).pooler_output
    model.patch_dropout_enable(0.5)
    torch.testing.assert_close(model(px).pooler_output, before)  # eval: every patch, as without it
    model.train()
    assert model(px).last_hidden_state.shape == (2, 1 + 8, 16)  # 16 patches, half of them kept
    with pytest.raises(ValueError, match="patch dropout must be in"):
        model.patch_dropout_enable(1.0)
