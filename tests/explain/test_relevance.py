"""Relevance maps: each method against a naive reference, maps that peak where a constructed tower looks, the
geometry back to the image's pixels, and the Embedder's and the command's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from altclip.cli import main
from altclip.embedder import Embedder
from altclip.explain.relevance import (
    attention_relevance,
    dense_relevance,
    relevance,
    to_image,
    window_starts,
    windowed_relevance,
)
from altclip.modeling.config import CLIPVisionConfig
from altclip.modeling.models import normalize
from altclip.modeling.vision import CLIPVisionTransformer
from altclip.processing.image import CLIPImageProcessor


def tiny_tower(layers: int = 2) -> tuple[CLIPVisionTransformer, nn.Linear]:
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    vision = CLIPVisionTransformer(config)
    vision.init_weights()
    with torch.no_grad():  # livelier than the init: attention that is not uniform
        for p in vision.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return vision.eval(), nn.Linear(32, 16, bias=False)


def naive_attention_relevance(vision, projection, pixels, targets, layers):
    """Every layer on the explicit path, gradients of each score, and the relevance rule written out per image
    and per head in loops."""
    out = vision(pixels, output_attentions=True)
    attentions = out.attentions[-layers:]
    image = projection(out.pooler_output)
    image = image / image.norm(dim=-1, keepdim=True)
    n_images, n_texts = targets.shape[:2]
    result = torch.zeros(n_images, n_texts, attentions[0].shape[-1] - 1)
    for t in range(n_texts):
        score = sum(image[i] @ targets[i, t] for i in range(n_images))
        grads = torch.autograd.grad(score, attentions, retain_graph=True)
        for i in range(n_images):
            tokens = attentions[0].shape[-1]
            relevance_matrix = torch.eye(tokens)
            for attn, grad in zip(attentions, grads, strict=True):
                heads = attn.shape[1]
                cam = sum(torch.clamp(grad[i, h] * attn[i, h], min=0) for h in range(heads)) / heads
                relevance_matrix = relevance_matrix + cam @ relevance_matrix
            result[i, t] = relevance_matrix[0, 1:]
    return result


@pytest.mark.parametrize("layers", [1, 2])
def test_attention_relevance_equals_a_naive_reference(layers):
    vision, projection = tiny_tower()
    pixels = torch.randn(2, 3, 32, 32)
    targets = normalize(torch.randn(2, 3, 16))
    fast, scores = attention_relevance(vision, projection, pixels, targets, layers)
    expected = naive_attention_relevance(vision, projection, pixels, targets, layers)
    torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-6)
    embeds = normalize(projection(vision(pixels).pooler_output))
    torch.testing.assert_close(scores, torch.einsum("id,itd->it", embeds, targets).detach(), rtol=1e-4, atol=1e-5)


def test_dense_relevance_equals_a_naive_reference():
    vision, projection = tiny_tower()
    pixels = torch.randn(2, 3, 32, 32)
    targets = normalize(torch.randn(2, 3, 16))
    fast, _ = dense_relevance(vision, projection, pixels, targets)
    with torch.no_grad():
        hidden = vision(pixels, output_hidden_states=True).hidden_states[-2]  # the last layer's input
        last = vision.encoder.layers[-1]
        for i in range(2):
            for p in range(16):
                x = hidden[i, 1 + p]
                x = F.layer_norm(x, (32,), last.layer_norm1.weight, last.layer_norm1.bias, 1e-5)
                value = last.self_attn.v_proj.weight @ x + last.self_attn.v_proj.bias
                value = last.self_attn.out_proj.weight @ value + last.self_attn.out_proj.bias
                value = F.layer_norm(value, (32,), vision.post_layernorm.weight, vision.post_layernorm.bias, 1e-5)
                embedding = projection.weight @ value
                for t in range(3):
                    expected = embedding @ targets[i, t] / embedding.norm()
                    assert abs(float(fast[i, t, p]) - float(expected)) < 1e-5


def region_tower() -> tuple[CLIPVisionTransformer, nn.Linear]:
    """One layer whose class token attends only to the top-left quarter of the patches, and whose embedding is
    the redness it finds there: a tower that responds to one region alone."""
    config = CLIPVisionConfig(
        hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1, image_size=32, patch_size=8
    )
    vision = CLIPVisionTransformer(config).eval()
    vision.pre_layrnorm = nn.Identity()
    layer = vision.encoder.layers[0]
    layer.layer_norm1 = nn.Identity()
    vision.post_layernorm = nn.Identity()
    with torch.no_grad():
        for p in vision.parameters():
            p.zero_()
        vision.embeddings.patch_embedding.weight[0, 0] = 1 / 64  # dim 0: mean red of the patch
        vision.embeddings.patch_embedding.weight[0, 1:] = -1 / 128  # less the other channels
        vision.embeddings.position_embedding.weight[0, 1] = 1.0  # dim 1: "I am the class token"
        for row in range(2):
            for col in range(2):
                vision.embeddings.position_embedding.weight[1 + row * 4 + col, 2] = 1.0  # dim 2: top-left patches
        layer.self_attn.q_proj.weight[0, 1] = 40.0  # the class token asks for dim 2 ...
        layer.self_attn.k_proj.weight[0, 2] = 1.0  # ... which only top-left patches have
        layer.self_attn.v_proj.weight[3, 0] = 1.0  # and takes their redness into dim 3
        layer.self_attn.out_proj.weight.copy_(torch.eye(8))
        vision.embeddings.class_embedding[4] = 0.1
    projection = nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        projection.weight.zero_()
        projection.weight[0, 3] = 1.0
        projection.weight[1, 4] = 1.0
    return vision, projection


def red_at(quarters: list[tuple[int, int]], size: int = 32) -> torch.Tensor:
    image = torch.zeros(1, 3, size, size)
    for row, col in quarters:
        half = size // 2
        image[0, 0, row * half + 2 : row * half + half - 2, col * half + 2 : col * half + half - 2] = 1.0
    return image


def peak_quarter(grid: torch.Tensor) -> tuple[int, int]:
    rows, cols = grid.shape[-2:]
    r, c = divmod(int(grid.flatten().argmax()), cols)
    return int(r >= rows / 2), int(c >= cols / 2)


def test_attention_map_peaks_where_the_tower_looks():
    vision, projection = region_tower()
    pixels = red_at([(0, 0), (1, 1)])  # red in two quarters; the tower looks at the top-left one only
    target = torch.tensor([[[1.0, 0.0]]])  # "red"
    maps, scores = relevance(vision, projection, pixels, target, "attention")
    assert maps.shape == (1, 1, 4, 4) and float(scores) > 0.9
    assert peak_quarter(maps[0, 0]) == (0, 0)
    assert float(maps[0, 0, 2:, 2:].max()) < 0.05  # the red it does not look at gets nothing


def test_dense_map_peaks_on_what_matches_the_text():
    vision, projection = region_tower()
    for quarter in [(0, 1), (1, 0)]:
        maps, _ = relevance(vision, projection, red_at([quarter]), torch.tensor([[[1.0, 0.0]]]), "dense")
        assert peak_quarter(maps[0, 0]) == quarter


def test_windows_cover_the_image_and_find_the_region():
    assert (
        window_starts(64, 32) == [0, 16, 32]
        and window_starts(70, 32) == [0, 16, 32, 38]
        and window_starts(20, 32) == [0]
    )
    vision, projection = region_tower()
    pixels = red_at([(1, 0)], size=64)
    grid = windowed_relevance(vision, projection, pixels, torch.tensor([[1.0, 0.0]]), 32, "dense")
    assert grid.shape == (1, 64, 64) and float(grid.min()) == 0.0 and float(grid.max()) == 1.0
    assert peak_quarter(grid[0]) == (1, 0)


def test_to_image_undoes_resize_and_centre_crop():
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    assert processor.geometry(50, 30) == ((53, 32), (10, 0, 32, 32))
    columns = torch.arange(4.0).expand(4, 4)[None] / 3  # a map that grows to the right over the crop
    image = to_image(columns, processor, 50, 30)[0]
    assert image.shape == (30, 50)
    seen = [x for x in range(50) if 0 <= (x + 0.5) * 53 / 50 - 10 < 32]  # pixel centres the crop kept
    assert seen == list(range(9, 40))
    assert torch.all(image[:, : seen[0]] == 0) and torch.all(image[:, seen[-1] + 1 :] == 0)
    inside = image[:, seen]
    assert torch.all(inside[:, 1:] >= inside[:, :-1]) and torch.allclose(inside[0], inside[-1])
    assert float(inside[0, 0]) == 0.0 and float(inside[0, -1]) == 1.0


@pytest.fixture(scope="module")
def embedder(altclip_checkpoint) -> Embedder:
    return Embedder.from_pretrained(altclip_checkpoint)


def test_embedder_maps_have_the_image_shape(embedder):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8))
    for method in ("dense", "attention"):
        for zoom in (1, 2):
            maps = embedder.explain_batch(image, ["a red circle", "一个蓝色的方块"], method=method, zoom=zoom)
            assert maps.shape == (2, 24, 40) and maps.dtype == np.float32
            assert maps.min() >= 0.0 and maps.max() <= 1.0 and maps.max() > 0.5
    single = embedder.explain(image, "a red circle")
    assert single.shape == (24, 40)
    np.testing.assert_allclose(single, embedder.explain_batch(image, ["a red circle", "x"])[0], atol=1e-6)
    prompted = embedder.explain(image, "猫", lang="zh")  # the label in the Chinese prompt templates
    assert prompted.shape == (24, 40) and not np.allclose(prompted, embedder.explain(image, "猫"))
    assert np.all(single[:, :8] == 0)  # 40 x 24 -> 53 x 32, cropped to 32: the sides were never seen
    with pytest.raises(ValueError, match="method must be one of"):
        embedder.explain(image, "x", method="gradcam")
    with pytest.raises(ValueError, match="zoom must be at least 1"):
        embedder.explain(image, "x", zoom=0)


def test_explain_command_writes_the_files_it_names(tmp_path, altclip_checkpoint, capsys):
    picture = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(picture)
    out = tmp_path / "maps"
    args = [
        "explain",
        str(picture),
        "--text",
        "a red ball",
        "一只猫",
        "--out",
        str(out),
        "--model",
        str(altclip_checkpoint),
    ]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [m["text"] for m in report["maps"]] == ["a red ball", "一只猫"]
    for entry in report["maps"]:
        relevance = np.load(entry["npy"], allow_pickle=False)
        assert relevance.shape == (30, 50) and relevance.min() >= 0 and relevance.max() <= 1
        x, y = entry["peak"]
        assert relevance[y, x] == relevance.max()
        with Image.open(entry["png"]) as png:
            assert png.width >= 256 and png.height > png.width * 30 / 50  # enlarged, with the caption band
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"photo-01-a-red-ball.{e}" for e in ("png", "npy")] + [f"photo-02-一只猫.{e}" for e in ("png", "npy")]
    )
    assert main([*args, "--method", "attention", "--zoom", "2"]) == 0
    assert "peak (x, y)" in capsys.readouterr().out


def test_windows_that_all_miss_still_give_a_map():
    vision, projection = region_tower()
    pixels = red_at([(0, 1)], size=64)
    grid = windowed_relevance(vision, projection, pixels, torch.tensor([[-1.0, 0.0]]), 32, "dense")  # "not red"
    assert float(grid.max()) == 1.0  # every window's cosine is <= 0: they count alike instead of vanishing


def test_sixteen_bit_and_int8_models_explain(altclip_checkpoint, embedder):
    image = np.random.default_rng(2).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    reference = embedder.explain(image, "a red circle")
    for dtype in ("bfloat16", "int8"):
        low = Embedder.from_pretrained(altclip_checkpoint, precision=dtype)
        got = low.explain(image, "a red circle")
        assert got.shape == reference.shape and np.abs(got - reference).mean() < 0.1
    assert low.explain(image, "a red circle", zoom=2).shape == (24, 40)
    with pytest.raises(ValueError, match="int8 models do not give"):
        low.explain(image, "a red circle", method="attention")
