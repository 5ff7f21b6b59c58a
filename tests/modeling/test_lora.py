"""LoRA adapters against naive references: merged and unmerged forward equal, gradients on adapters alone, saved
adapters merged as the base loads (and refused over another base); the layer rule of partial unfreezing."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from altclip.embedder import Embedder
from altclip.modeling.lora import (
    Adapter,
    LoRAConfig,
    LoRALinear,
    adapter_state_dict,
    add_lora,
    merge_lora,
    unlock_last_layers,
)
from altclip.modeling.models import AltCLIPModel, CLIPModel
from tests.conftest import pixels, text_batch


def perturb(model: nn.Module, seed: int = 0) -> None:
    """B starts at zero (an adapted model starts as its base): give the adapters something to say."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.weight.copy_(torch.randn(module.lora_B.weight.shape, generator=generator) * 0.05)


def test_lora_linear_equals_the_naive_formula_and_its_merge():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    layer = LoRALinear(base, rank=3, alpha=6.0, dropout=0.0)
    x = torch.randn(5, 12)
    torch.testing.assert_close(layer(x), base(x))  # B = 0 at the start
    perturb(layer)
    a, b = layer.lora_A.weight, layer.lora_B.weight
    naive = x @ (base.weight + 2.0 * b @ a).T + base.bias  # scaling = alpha / rank = 2
    torch.testing.assert_close(layer(x), naive, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer.merged()(x), naive, atol=1e-6, rtol=0)

    layer(x).square().sum().backward()
    assert base.weight.grad is None and base.bias.grad is None
    assert layer.lora_A.weight.grad is not None and layer.lora_B.weight.grad is not None


@pytest.mark.parametrize("towers", [["text"], ["image"], ["text", "image"]])
def test_add_lora_trains_the_adapters_alone_and_merges_to_the_same_model(altclip_checkpoint, towers):
    model = AltCLIPModel.from_pretrained(altclip_checkpoint)
    config = LoRAConfig(rank=4, alpha=8, dropout=0.0, towers=towers)
    ids, mask = text_batch(model.config.text_config.vocab_size, [7, 4], pad_id=1, bos=0, eos=2)
    images = pixels(2, model.config.vision_config.image_size)
    before = model(input_ids=ids, attention_mask=mask, pixel_values=images).logits_per_image
    names = add_lora(model, config)
    assert {n.split(".")[0] for n in names} == {{"text": "text_model", "image": "vision_model"}[t] for t in towers}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    torch.testing.assert_close(
        model(input_ids=ids, attention_mask=mask, pixel_values=images).logits_per_image, before
    )  # starts as its base

    perturb(model)
    model.eval()
    adapted = model(input_ids=ids, attention_mask=mask, pixel_values=images)
    adapted.logits_per_image.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    assert merge_lora(model) == len(names) and not any(isinstance(m, LoRALinear) for m in model.modules())
    merged = model(input_ids=ids, attention_mask=mask, pixel_values=images)
    torch.testing.assert_close(merged.text_embeds, adapted.text_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged.image_embeds, adapted.image_embeds, atol=1e-5, rtol=0)
    assert set(model.state_dict()) == set(AltCLIPModel.from_pretrained(altclip_checkpoint).state_dict())


def test_lora_targets_by_name(clip_checkpoint):
    model = CLIPModel.from_pretrained(clip_checkpoint)
    names = add_lora(model, LoRAConfig(rank=2, towers=["image"], targets=["q_proj", "v_proj"]))
    layers = model.config.vision_config.num_hidden_layers
    assert len(names) == 2 * layers and all(n.endswith(("q_proj", "v_proj")) for n in names)
    with pytest.raises(ValueError, match="no linear map of the image tower matches"):
        add_lora(CLIPModel.from_pretrained(clip_checkpoint), LoRAConfig(towers=["image"], targets=["nothing"]))
    with pytest.raises(ValueError, match="towers must be among text, image"):
        LoRAConfig(towers=["audio"])


def test_a_saved_adapter_merges_as_its_base_loads(tmp_path, altclip_checkpoint):
    model = AltCLIPModel.from_pretrained(altclip_checkpoint)
    config = LoRAConfig(rank=4, alpha=4, dropout=0.1)
    add_lora(model, config)
    perturb(model, seed=1)
    model.eval()
    ids, mask = text_batch(model.config.text_config.vocab_size, [6, 9, 3], pad_id=1, bos=0, eos=2)
    images = pixels(3, model.config.vision_config.image_size)
    expected = model(input_ids=ids, attention_mask=mask, pixel_values=images)
    adapter = Adapter.from_model(model, config, str(altclip_checkpoint))
    assert set(adapter.weights) == set(adapter_state_dict(model)) and all(".base." not in k for k in adapter.weights)
    adapter.save(tmp_path / "adapter")

    loaded = AltCLIPModel.from_pretrained(altclip_checkpoint, adapter=tmp_path / "adapter")
    got = loaded(input_ids=ids, attention_mask=mask, pixel_values=images)
    torch.testing.assert_close(got.text_embeds, expected.text_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.image_embeds, expected.image_embeds, atol=1e-5, rtol=0)
    embedder = Embedder.from_pretrained(altclip_checkpoint, adapter=tmp_path / "adapter")
    torch.testing.assert_close(embedder.model.state_dict()["logit_scale"], loaded.state_dict()["logit_scale"])
    assert torch.equal(
        embedder.model.text_model.roberta.encoder.layer[0].attention.self.query.weight,
        loaded.text_model.roberta.encoder.layer[0].attention.self.query.weight,
    )

    other = tmp_path / "other"
    shutil.copytree(altclip_checkpoint, other)
    changed = AltCLIPModel.from_pretrained(other)
    with torch.no_grad():
        changed.text_model.roberta.encoder.layer[0].attention.self.query.weight.add_(0.01)
    changed.save_pretrained(other)
    with pytest.raises(ValueError, match=r"the adapter was trained on .*, whose weights differ from"):
        AltCLIPModel.from_pretrained(other, adapter=tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="is not a LoRA adapter"):
        AltCLIPModel.from_pretrained(altclip_checkpoint, adapter=tmp_path)


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_unlocking_the_last_layers_follows_the_rule(altclip_checkpoint, layers):
    model = AltCLIPModel.from_pretrained(altclip_checkpoint)
    vision, text = model.vision_model, model.text_model
    count = model.config.vision_config.num_hidden_layers
    trainable = set(unlock_last_layers(vision, layers))
    for name, p in vision.named_parameters():
        assert p.requires_grad == (name in trainable)
        if name.startswith("encoder.layers."):
            assert (name in trainable) == (int(name.split(".")[2]) >= count - layers)
        elif name.startswith(("embeddings.", "pre_layrnorm.")):
            assert (name in trainable) == (layers == count)
        else:  # post_layernorm
            assert (name in trainable) == (layers > 0)
    text_count = model.config.text_config.num_hidden_layers
    text_trainable = set(unlock_last_layers(text, min(layers, text_count)))
    assert ("pre_LN.weight" in text_trainable) == (layers > 0)
    assert ("transformation.weight" in text_trainable) == (layers > 0)
    assert not any(n.startswith("roberta.embeddings.") for n in text_trainable) or layers == text_count
    with pytest.raises(ValueError, match="cannot unlock"):
        unlock_last_layers(vision, count + 1)
