"""Parity with transformers on the same weights and inputs (fp32, 1e-5), for AltCLIP and CLIP."""

from __future__ import annotations

import pytest
import torch

import altclip
from tests.conftest import (
    ALTCLIP_CONFIGS,
    CLIP_CONFIGS,
    assert_close,
    pixels,
    saved_transformers_model,
    text_batch,
)

LENGTHS = [7, 3, 5, 7]  # a padded batch of mixed lengths


def altclip_inputs(config: dict, lengths=LENGTHS) -> tuple[torch.Tensor, torch.Tensor]:
    return text_batch(config["text_config"]["vocab_size"], lengths, pad_id=1, bos=0, eos=2)


def clip_inputs(config: dict, lengths=LENGTHS) -> tuple[torch.Tensor, torch.Tensor]:
    tc = config["text_config"]
    vocab = tc["vocab_size"]
    if tc.get("eos_token_id") == 2:  # legacy config: EOS is the largest id in the vocabulary
        return text_batch(vocab, lengths, pad_id=0, bos=vocab - 2, eos=vocab - 1)
    return text_batch(vocab, lengths, pad_id=tc["pad_token_id"], bos=tc["bos_token_id"], eos=tc["eos_token_id"])


def compare_tower(ours, theirs, what: str, attentions: bool = True, skip: tuple[str, ...] = ()) -> float:
    worst = 0.0
    for name in ("last_hidden_state", "pooler_output", "text_embeds", "image_embeds"):
        if getattr(theirs, name, None) is not None and name not in skip:
            worst = max(worst, assert_close(getattr(ours, name), getattr(theirs, name), what=f"{what}.{name}"))
    for name in ("hidden_states", "attentions") if attentions else ("hidden_states",):
        theirs_seq = getattr(theirs, name, None)
        if theirs_seq:
            ours_seq = getattr(ours, name)
            assert len(ours_seq) == len(theirs_seq), f"{what}.{name}: {len(ours_seq)} vs {len(theirs_seq)}"
            for i, (a, b) in enumerate(zip(ours_seq, theirs_seq, strict=True)):
                worst = max(worst, assert_close(a, b, what=f"{what}.{name}[{i}]"))
    return worst


def compare_dual(ours, theirs, what: str, attentions: bool = True, model=None) -> float:
    worst = 0.0
    for name in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds", "loss"):
        worst = max(worst, assert_close(getattr(ours, name), getattr(theirs, name), what=f"{what}.{name}"))
    skip: tuple[str, ...] = ()
    if isinstance(model, altclip.CLIPModel):
        # transformers 5's CLIPModel (unlike its AltCLIPModel and its docs) overwrites the towers'
        # pooler_output with the projected embedding; compare that, and the rest of the tower outputs.
        skip = ("pooler_output",)
        for side, proj in (("text", model.text_projection), ("vision", model.visual_projection)):
            ours_out, theirs_out = (
                getattr(ours, f"{side}_model_output"),
                getattr(theirs, f"{side}_model_output"),
            )
            assert_close(proj(ours_out.pooler_output), theirs_out.pooler_output, what=f"{what}.{side}.projected")
    for side in ("text", "vision"):
        ours_out, theirs_out = getattr(ours, f"{side}_model_output"), getattr(theirs, f"{side}_model_output")
        worst = max(worst, compare_tower(ours_out, theirs_out, f"{what}.{side}", attentions, skip))
    return worst


DUAL_CASES = [
    *((altclip.AltCLIPModel, "altclip", ALTCLIP_CONFIGS, altclip_inputs, c) for c in sorted(ALTCLIP_CONFIGS)),
    *((altclip.CLIPModel, "clip", CLIP_CONFIGS, clip_inputs, c) for c in sorted(CLIP_CONFIGS)),
]


@pytest.mark.parametrize(
    ("ours_cls", "name", "configs", "make_inputs", "config_name"),
    DUAL_CASES,
    ids=[f"{case[0].__name__}-{case[4]}" for case in DUAL_CASES],
)
def test_dual_encoder_matches_transformers(tmp_path, ours_cls, name, configs, make_inputs, config_name):
    config = configs[config_name]
    theirs, folder = saved_transformers_model(tmp_path, ours_cls.__name__, config, name)
    ours = ours_cls.from_pretrained(folder)
    ids, mask = make_inputs(config)
    px = pixels(len(LENGTHS), config["vision_config"]["image_size"])
    inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": px, "return_loss": True}
    with torch.no_grad():
        expected = theirs(**inputs, output_hidden_states=True, output_attentions=True)
        exact = ours(**inputs, output_hidden_states=True, output_attentions=True)  # explicit-softmax path
        fast = ours(**inputs, output_hidden_states=True)  # scaled_dot_product_attention path
        compare_dual(exact, expected, "exact", model=ours)
        compare_dual(fast, expected, "sdpa", attentions=False, model=ours)
        assert_close(ours.get_text_features(ids, mask), theirs.get_text_features(ids, mask).pooler_output)
        assert_close(ours.get_image_features(px), theirs.get_image_features(px).pooler_output)
        # unpadded single sequences agree with their rows of the padded batch
        row = ours.get_text_features(ids[1:2, : LENGTHS[1]])
        assert_close(row, ours.get_text_features(ids, mask)[1:2], what="unpadded vs padded row")


@pytest.mark.parametrize(
    ("class_name", "name", "make_inputs"),
    [
        ("AltCLIPTextModel", "altclip", altclip_inputs),
        ("AltCLIPVisionModel", "altclip", None),
        ("CLIPTextModel", "clip", clip_inputs),
        ("CLIPTextModelWithProjection", "clip", clip_inputs),
        ("CLIPVisionModel", "clip", None),
        ("CLIPVisionModelWithProjection", "clip", None),
    ],
)
@pytest.mark.parametrize("config_name", ["base", "odd_heads"])
def test_towers_match_transformers(tmp_path, class_name, name, make_inputs, config_name):
    config = (ALTCLIP_CONFIGS if name == "altclip" else CLIP_CONFIGS)[config_name]
    theirs, folder = saved_transformers_model(tmp_path, class_name, config, name)
    ours = getattr(altclip, class_name).from_pretrained(folder)
    if make_inputs is None:
        inputs = {"pixel_values": pixels(2, config["vision_config"]["image_size"])}
    else:
        ids, mask = make_inputs(config)
        inputs = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        expected = theirs(**inputs, output_hidden_states=True, output_attentions=True)
        compare_tower(ours(**inputs, output_hidden_states=True, output_attentions=True), expected, class_name)
        compare_tower(ours(**inputs, output_hidden_states=True), expected, class_name + "(sdpa)", attentions=False)


@pytest.mark.parametrize(
    ("ours_cls", "name", "configs"),
    [(altclip.AltCLIPModel, "altclip", ALTCLIP_CONFIGS), (altclip.CLIPModel, "clip", CLIP_CONFIGS)],
)
@pytest.mark.parametrize("size", [(36, 48), (48, 24), (30, 30), (42, 42)])
def test_interpolate_pos_encoding_matches_transformers(tmp_path, ours_cls, name, configs, size):
    config = configs["base"]  # 30x30 images in 6px patches: a 5x5 grid, resized to non-square grids
    theirs, folder = saved_transformers_model(tmp_path, ours_cls.__name__, config, name)
    ours = ours_cls.from_pretrained(folder)
    px = pixels(2, size)
    with torch.no_grad():
        assert_close(
            ours.get_image_features(px, interpolate_pos_encoding=True),
            theirs.get_image_features(px, interpolate_pos_encoding=True).pooler_output,
        )
        a = ours.vision_model(px, output_hidden_states=True, interpolate_pos_encoding=True)
        b = theirs.vision_model(px, output_hidden_states=True, interpolate_pos_encoding=True)
        compare_tower(a, b, f"vision {size}")


def test_outputs_behave_like_model_outputs(tmp_path):
    config = ALTCLIP_CONFIGS["base"]
    _, folder = saved_transformers_model(tmp_path, "AltCLIPModel", config, "altclip")
    model = altclip.AltCLIPModel.from_pretrained(folder)
    ids, mask = altclip_inputs(config)
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels(1, 30))
    assert out.loss is None and "loss" not in list(out.keys())
    assert out[0] is out.logits_per_image and out["text_embeds"] is out.text_embeds
    assert out.logits_per_image.shape == (1, len(LENGTHS))
    probs = out.logits_per_image.softmax(dim=1)
    assert torch.allclose(probs.sum(dim=1), torch.ones(1))
    assert out.text_embeds.norm(dim=-1).sub(1).abs().max() < 1e-5


def test_forward_needs_both_inputs(tmp_path):
    model = altclip.AltCLIPModel(altclip.AltCLIPConfig.from_dict(ALTCLIP_CONFIGS["base"]))
    with pytest.raises(ValueError, match="pixel_values missing"):
        model(input_ids=torch.tensor([[0, 5, 2]]))


def test_fresh_model_trains(tmp_path):
    """A model built from a config has finite gradients everywhere and return_loss goes down."""
    torch.manual_seed(0)
    model = altclip.AltCLIPModel(altclip.AltCLIPConfig.from_dict(ALTCLIP_CONFIGS["base"]))
    ids, mask = altclip_inputs(ALTCLIP_CONFIGS["base"])
    px = pixels(len(LENGTHS), 30)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = model(input_ids=ids, attention_mask=mask, pixel_values=px, return_loss=True).loss
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = altclip.AltCLIPModel(altclip.AltCLIPConfig.from_dict(ALTCLIP_CONFIGS["base"])).eval()
    ids, mask = altclip_inputs(ALTCLIP_CONFIGS["base"])
    px = pixels(len(LENGTHS), 30)

    def grads():
        model.zero_grad()
        model(input_ids=ids, attention_mask=mask, pixel_values=px, return_loss=True).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.gradient_checkpointing_enable()
    for a, b in zip(plain, grads(), strict=True):
        assert_close(a, b, atol=1e-6)


# BAAI/AltCLIP's sizes: ViT-L/14 image tower, XLM-R-large text tower, projection 768 (865M parameters).
BAAI_ALTCLIP = {
    "text_config": {},  # transformers' defaults are XLM-R-large with project_dim 768
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "patch_size": 14,
        "image_size": 224,
    },
    "projection_dim": 768,
}


@pytest.mark.slow
def test_real_size_altclip_matches_transformers(tmp_path):
    theirs, folder = saved_transformers_model(tmp_path, "AltCLIPModel", BAAI_ALTCLIP, "altclip", attn="sdpa")
    ours = altclip.AltCLIPModel.from_pretrained(folder)
    assert ours.num_parameters() == theirs.num_parameters()
    ids, mask = text_batch(250002, [77, 12, 40, 5], pad_id=1, bos=0, eos=2)
    inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels(4, 224), "return_loss": True}
    with torch.no_grad():
        expected = theirs(**inputs, output_hidden_states=True)
        worst = compare_dual(ours(**inputs, output_hidden_states=True), expected, "real-size", attentions=False)
    print(f"\nBAAI/AltCLIP sizes: max abs difference over embeddings, logits, loss, hidden states = {worst:.3g}")


@pytest.mark.parametrize("family", ["altclip", "clip"])
def test_a_batch_of_no_rows(request, family):
    """A distributed step can leave one process no rows; the towers still run, forward and backward."""
    model = (altclip.AltCLIPModel if family == "altclip" else altclip.CLIPModel).from_pretrained(
        request.getfixturevalue(f"{family}_checkpoint")
    )
    text = model.get_text_features(torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long))
    image = model.get_image_features(torch.zeros(0, 3, 32, 32))
    assert text.shape == image.shape == (0, model.config.projection_dim)
    (text.sum() + image.sum()).backward()
    assert all(p.grad is not None and not p.grad.any() for n, p in model.named_parameters() if n != "logit_scale")


# -- precision: 16-bit or int8 matrix multiplies, the rest float32 -----------------------------------------


def test_precision_is_for_dual_encoders_with_a_float32_rest(altclip_checkpoint):
    with pytest.raises(ValueError, match="applies to the dual encoders"):
        altclip.AltCLIPVisionModel.from_pretrained(altclip_checkpoint, precision="bfloat16")
    with pytest.raises(ValueError, match="leave dtype unset"):
        altclip.AltCLIPModel.from_pretrained(altclip_checkpoint, dtype=torch.float16, precision="bfloat16")
    with pytest.raises(ValueError, match="bfloat16, float16 or int8"):
        altclip.AltCLIPModel.from_pretrained(altclip_checkpoint, precision="int4")
    plain = altclip.AltCLIPModel.from_pretrained(altclip_checkpoint, precision="float32")
    assert plain.autocast_dtype is None and plain.slice_rows is None


def test_matmul_dtype_is_kept_as_an_alias_of_precision(altclip_checkpoint):
    with pytest.warns(DeprecationWarning, match="precision"):
        model = altclip.AltCLIPModel.from_pretrained(altclip_checkpoint, matmul_dtype="bfloat16")
    assert model.autocast_dtype == torch.bfloat16


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_slices_give_what_one_pass_gives(altclip_checkpoint, precision):
    """On the CPU a long batch runs in slices of slice_rows token rows; each row's result is its own."""
    model = altclip.AltCLIPModel.from_pretrained(altclip_checkpoint, precision=precision)
    assert model.slice_rows == 2048
    torch.manual_seed(0)
    pixels = torch.randn(5, 3, 32, 32)
    ids = torch.randint(5, 100, (7, 9))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    with torch.inference_mode():
        model.slice_rows = None
        whole = model.get_image_features(pixels), model.get_text_features(ids, mask)
        model.slice_rows = 20  # 17 tokens per image: one image per pass; two texts of 9 per pass
        assert model.items_per_pass(17, pixels.device) == 1 and model.items_per_pass(9, ids.device) == 2
        sliced = model.get_image_features(pixels), model.get_text_features(ids, mask)
    for a, b in zip(whole, sliced, strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=0)  # 16-bit kernels may block differently
        assert torch.nn.functional.cosine_similarity(a.float(), b.float()).min() > 0.9999
