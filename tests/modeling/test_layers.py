"""Shared blocks: the fast attention path against a naive reference, masks, activations."""

from __future__ import annotations

import math

import pytest
import torch

from altclip.modeling.layers import activation, attention, causal_mask, padding_mask, quick_gelu


def naive_attention(q, k, v, allowed):
    """Loop over every (batch, head, query) with Python floats' worth of clarity."""
    out = torch.zeros_like(q, dtype=torch.float64)
    b, h, n, d = q.shape
    for i in range(b):
        for j in range(h):
            for t in range(n):
                scores = [(q[i, j, t].double() @ k[i, j, s].double()).item() / math.sqrt(d) for s in range(k.shape[2])]
                keep = [s for s in range(k.shape[2]) if allowed[i, t, s]]
                top = max(scores[s] for s in keep)
                weights = {s: math.exp(scores[s] - top) for s in keep}
                total = sum(weights.values())
                out[i, j, t] = sum(w / total * v[i, j, s].double() for s, w in weights.items())
    return out


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_naive_reference(need_weights, causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    lengths = torch.tensor([5, 3])
    mask_2d = (torch.arange(5)[None] < lengths[:, None]).long()
    allowed = mask_2d[:, None, :].expand(2, 5, 5).bool()
    if causal:
        allowed = allowed & torch.ones(5, 5, dtype=torch.bool).tril()
        mask = causal_mask(5, mask_2d, torch.float32, q.device)
    else:
        mask = padding_mask(mask_2d, torch.float32)
    out, weights = attention(q, k, v, mask, 0.0, need_weights)
    assert torch.allclose(out.double(), naive_attention(q, k, v, allowed), atol=1e-5)
    if need_weights:
        assert torch.allclose(weights.sum(-1), torch.ones(2, 3, 5))
        assert (weights[1, :, :, 3:] == 0).all()  # padded keys get no weight


def test_padding_mask_is_none_without_padding():
    assert padding_mask(torch.ones(2, 4, dtype=torch.long), torch.float32) is None
    assert padding_mask(None, torch.float32) is None
    mask = padding_mask(torch.tensor([[1, 1, 0]]), torch.bfloat16)
    assert mask.shape == (1, 1, 1, 3) and mask.dtype == torch.bfloat16 and mask[0, 0, 0, 2] < -1e30


def test_activations():
    x = torch.linspace(-4, 4, 17)
    naive = torch.tensor([v * (1 / (1 + math.exp(-1.702 * v))) for v in x.tolist()])
    fast = quick_gelu(x)  # the in-place inference path: bit-equal to the out-of-place one, input untouched
    assert torch.equal(fast, x * torch.sigmoid(1.702 * x)) and torch.equal(x, torch.linspace(-4, 4, 17))
    assert torch.allclose(fast, naive, atol=1e-6)
    leaf = x.clone().requires_grad_()
    assert torch.allclose(quick_gelu(leaf), naive, atol=1e-6)
    quick_gelu(leaf).sum().backward()  # the autograd path
    assert torch.allclose(leaf.grad, torch.func.grad(lambda t: (t * torch.sigmoid(1.702 * t)).sum())(x))
    assert activation("gelu") is torch.nn.functional.gelu
    with pytest.raises(ValueError, match="hidden_act 'tanhh' is not supported"):
        activation("tanhh")
