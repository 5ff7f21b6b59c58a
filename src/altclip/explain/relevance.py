"""Relevance maps: where in an image a text matched.

Two published methods for CLIP's ViT image tower, both computed here from the tower's own layers:

- ``"dense"`` (the default, chosen on the demo's pointing game, where it found the right quarter of 2x2 emoji
  composites more often than ``"attention"``: see the README): MaskCLIP's dense features, Zhou, Loy and Dai,
  "Extract Free Dense Labels from CLIP" (ECCV 2022): the last layer's value path
  (``out_proj(v_proj(layer_norm1(x)))``, query and key left out) of every patch, put through ``post_layernorm`` and
  ``visual_projection``, gives one embedding per patch; its cosine to the text is the map. One forward pass, no
  gradients.
- ``"attention"``: gradient-weighted attention relevance, Chefer, Gur and Wolf, "Generic Attention-model
  Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV 2021), as its authors apply
  it to CLIP. The score is the cosine of the image and text embeddings. For each of the last ``layers`` attention
  layers, the head-mean of ``(dscore/dA * A)`` clamped at 0 is pushed through the relevance matrix,
  ``R <- R + cam @ R`` from ``R = I``; the class token's row of ``R`` over the patches is the map. One forward
  pass and a backward pass per text through the explained layers.

``zoom`` above 1 explains small things in large images: the image is resized so its short side is ``zoom`` times
the model's input, and windows of the model's input size, half a window apart, cover all of it, as the dense CLIP
methods above evaluate segmentation ("slide inference"). Each window's map is weighted by how well the window as a
whole matches the text (its cosine, clamped at 0; all alike if no window's is above 0), and the weighted maps are
averaged where windows overlap.

Either way the layers before the explained ones run on the fast attention path (``scaled_dot_product_attention``)
without autograd; only the explained layers compute their attention weights, and only here, so normal inference
is untouched. Maps are scaled to [0, 1] per text and carried back through the preprocessing (resize, centre
crop) to the image's own pixels; what the crop cut away is 0.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from altclip.errors import InputError
from altclip.modeling.layers import run_layers
from altclip.modeling.models import normalize
from altclip.modeling.vision import CLIPVisionTransformer
from altclip.processing.image import CLIPImageProcessor

Method = Literal["attention", "dense"]
METHODS: tuple[str, ...] = ("attention", "dense")


def _check(vision: nn.Module, method: str, layers: int) -> None:
    if not isinstance(vision, CLIPVisionTransformer):
        raise InputError(f"relevance maps need a PyTorch CLIP image tower, not {type(vision).__name__}")
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, not {method!r}")
    depth = len(vision.encoder.layers)
    if not 1 <= layers <= depth:
        raise InputError(f"layers must be between 1 and the tower's {depth} layers, got {layers}")


def _embed_until(vision: CLIPVisionTransformer, pixel_values: Tensor, start: int) -> Tensor:
    """The residual stream entering layer ``start``, on the fast path and without autograd."""
    with torch.no_grad():
        x = vision.pre_layrnorm(vision.embeddings(pixel_values.to(vision.embeddings.patch_embedding.weight.dtype)))
        return run_layers(vision.encoder.layers[:start], x, None, False, False, False).last_hidden_state


def _score(vision: CLIPVisionTransformer, projection: nn.Linear, x: Tensor, targets: Tensor) -> Tensor:
    """(images, tokens, width) final residual stream -> (images, texts) cosine of the image and each text."""
    image = normalize(projection(vision.post_layernorm(x[:, 0])).float())  # (images, dim)
    return (image[:, None, :] * targets).sum(-1)  # (images, texts)


def attention_relevance(
    vision: CLIPVisionTransformer, projection: nn.Linear, pixel_values: Tensor, targets: Tensor, layers: int = 1
) -> tuple[Tensor, Tensor]:
    """Chefer et al.'s relevance of each patch: (images, 3, H, W) pixels and (images, texts, dim) unit text
    embeddings -> (images, texts, patches), not yet scaled, and the (images, texts) cosines. One forward pass and
    one backward pass per text through the explained layers."""
    start = len(vision.encoder.layers) - layers
    x = _embed_until(vision, pixel_values, start)  # (images, tokens, width)
    targets = targets.clone()  # the caller's may be inference tensors, which autograd cannot save
    with torch.enable_grad():
        weights = []
        for layer in vision.encoder.layers[start:]:
            x, attn = layer(x, None, True)  # attn: (images, heads, tokens, tokens)
            weights.append(attn)
        scores = _score(vision, projection, x, targets)
        maps = []
        for t in range(targets.shape[1]):
            grads = torch.autograd.grad(scores[:, t].sum(), weights, retain_graph=t + 1 < targets.shape[1])
            relevance = torch.eye(x.shape[1], device=x.device).expand(x.shape[0], -1, -1)  # (images, tokens, tokens)
            for attn, grad in zip(weights, grads, strict=True):
                cam = (grad.float() * attn.float()).clamp(min=0).mean(dim=1)  # (images, tokens, tokens)
                relevance = relevance + cam @ relevance
            maps.append(relevance[:, 0, 1:])  # the class token's relevance to each patch
    return torch.stack(maps, dim=1).detach(), scores.detach()  # (images, texts, patches), (images, texts)


def dense_relevance(
    vision: CLIPVisionTransformer, projection: nn.Linear, pixel_values: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """MaskCLIP's patch-text cosine: (images, 3, H, W) and (images, texts, dim) -> (images, texts, patches), and the
    (images, texts) cosines of the whole image. One forward pass."""
    last = vision.encoder.layers[-1]
    with torch.no_grad():
        x = _embed_until(vision, pixel_values, len(vision.encoder.layers) - 1)  # (images, tokens, width)
        values = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(x[:, 1:])))  # (images, patches, width)
        patches = F.normalize(projection(vision.post_layernorm(values)).float(), dim=-1)  # (images, patches, dim)
        scores = _score(vision, projection, last(x, None, False)[0], targets)
        return targets @ patches.transpose(1, 2), scores  # (images, texts, patches), (images, texts)


def unit_range(maps: Tensor) -> Tensor:
    """Each map (the last two dimensions) scaled to [0, 1]; a flat map becomes 0."""
    flat = maps.flatten(-2)
    low = flat.amin(dim=-1, keepdim=True)
    span = flat.amax(dim=-1, keepdim=True) - low
    return torch.where(span > 0, (flat - low) / span.clamp(min=torch.finfo(flat.dtype).tiny), 0.0).view(maps.shape)


def relevance(
    vision: CLIPVisionTransformer,
    projection: nn.Linear,
    pixel_values: Tensor,
    targets: Tensor,
    method: Method = "dense",
    layers: int = 1,
) -> tuple[Tensor, Tensor]:
    """Per-patch relevance scaled to [0, 1] per map, (images, texts, rows, cols), and the (images, texts) cosines.
    ``targets``: (images, texts, dim) unit text embeddings; ``layers``: how many of the last attention layers the
    "attention" method explains."""
    _check(vision, method, layers)
    if method == "attention":
        flat, scores = attention_relevance(vision, projection, pixel_values, targets, layers)
    else:
        flat, scores = dense_relevance(vision, projection, pixel_values, targets)
    patch = vision.config.patch_size
    rows, cols = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
    return unit_range(flat.view(*flat.shape[:2], rows, cols)), scores


def window_starts(length: int, window: int) -> list[int]:
    """Offsets of windows half a window apart that cover ``length`` pixels, the last one flush with the end."""
    if length <= window:
        return [0]
    stride = max(1, window // 2)
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


def windowed_relevance(
    vision: CLIPVisionTransformer,
    projection: nn.Linear,
    pixel_values: Tensor,
    targets: Tensor,
    window: int,
    method: Method = "dense",
    layers: int = 1,
) -> Tensor:
    """One large (1, 3, H, W) image and (texts, dim) targets -> (texts, H, W) in [0, 1]: windows of ``window``
    pixels cover it, each window's map weighted by its cosine to the text (clamped at 0), averaged where they
    overlap."""
    _, _, height, width = pixel_values.shape
    boxes = [(top, left) for top in window_starts(height, window) for left in window_starts(width, window)]
    crops = torch.cat([pixel_values[:, :, t : t + window, x : x + window] for t, x in boxes])  # (windows, 3, w, w)
    maps, scores = relevance(vision, projection, crops, targets[None].expand(len(boxes), -1, -1), method, layers)
    maps = F.interpolate(maps.float(), size=crops.shape[-2:], mode="bilinear", align_corners=False)
    weights = scores.clamp(min=0)  # (windows, texts)
    weights = torch.where(weights.sum(dim=0, keepdim=True) > 0, weights, 1.0)  # no window matches: all count alike
    weighted = maps * weights[:, :, None, None]  # (windows, texts, w, w)
    total = torch.zeros(targets.shape[0], height, width, device=maps.device)
    count = torch.zeros(height, width, device=maps.device)
    for (top, left), part in zip(boxes, weighted, strict=True):
        total[:, top : top + window, left : left + window] += part
        count[top : top + window, left : left + window] += 1
    return unit_range(total / count)


def to_image(maps: Tensor, processor: CLIPImageProcessor, width: int, height: int) -> Tensor:
    """(maps, rows, cols) over the model's input -> (maps, height, width) over the original image: each pixel's
    centre is carried through the resize and the crop and the grid read there bilinearly; outside the crop, 0."""
    (resized_w, resized_h), (left, top, crop_w, crop_h) = processor.geometry(width, height)
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) * (resized_w / width) - left  # crop coordinates
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) * (resized_h / height) - top
    inside = ((ys >= 0) & (ys < crop_h))[:, None] & ((xs >= 0) & (xs < crop_w))[None, :]  # (height, width)
    grid = torch.stack(torch.broadcast_tensors(2 * xs[None, :] / crop_w - 1, 2 * ys[:, None] / crop_h - 1), dim=-1)
    grid = grid.expand(len(maps), height, width, 2)
    sampled = F.grid_sample(
        maps[:, None].float(), grid.to(maps.device), mode="bilinear", padding_mode="border", align_corners=False
    )
    return sampled[:, 0] * inside.to(maps.device)  # (maps, height, width)


def peak(relevance: np.ndarray) -> tuple[int, int]:
    """The (x, y) pixel of a (height, width) map's maximum."""
    y, x = np.unravel_index(int(relevance.argmax()), relevance.shape)
    return int(x), int(y)
