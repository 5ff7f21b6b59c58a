"""Weight files: round trips with transformers, .bin and safetensors pieces, strict loading, refusals."""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers

import altclip
from altclip.modeling.weights import save_weights
from tests.conftest import ALTCLIP_CONFIGS, CLIP_CONFIGS, assert_close, pixels, saved_transformers_model
from tests.modeling.test_models import altclip_inputs, clip_inputs

ALT = ALTCLIP_CONFIGS["base"]


def altclip_outputs(model, config=ALT):
    ids, mask = altclip_inputs(config)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, pixel_values=pixels(2, 30))


def v4_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What transformers 4.2x wrote for BAAI/AltCLIP: ``encoder.layers`` in the ViT and the buffers."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    text_len = model.config.text_config.max_position_embeddings
    state["text_model.roberta.embeddings.position_ids"] = torch.arange(text_len)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(26)[None]
    return state


class Unsafe:  # an object a weights-only unpickler must refuse
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_transformers_safetensors_and_bin_load_with_equal_outputs(tmp_path):
    theirs, folder = saved_transformers_model(tmp_path, "AltCLIPModel", ALT, "altclip")
    expected = altclip_outputs(theirs)
    ours = altclip.AltCLIPModel.from_pretrained(folder)
    assert_close(altclip_outputs(ours).logits_per_image, expected.logits_per_image)

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((folder / "config.json").read_text())
    torch.save(v4_state_dict(ours), legacy / "pytorch_model.bin")
    from_bin = altclip.AltCLIPModel.from_pretrained(legacy)
    assert_close(altclip_outputs(from_bin).text_embeds, expected.text_embeds)
    assert_close(altclip_outputs(transformers.AltCLIPModel.from_pretrained(legacy)).text_embeds, expected.text_embeds)


@pytest.mark.parametrize(
    ("class_name", "kind", "config"),
    [
        ("AltCLIPModel", "altclip", ALT),
        ("CLIPModel", "clip", CLIP_CONFIGS["base"]),
        ("AltCLIPTextModel", "altclip", ALT),
        ("CLIPVisionModelWithProjection", "clip", CLIP_CONFIGS["base"]),
    ],
)
def test_altclip_saves_what_transformers_loads(tmp_path, class_name, kind, config):
    _, folder = saved_transformers_model(tmp_path, class_name, config, kind)
    ours = getattr(altclip, class_name).from_pretrained(folder)
    ours.save_pretrained(tmp_path / "ours")
    assert (tmp_path / "ours" / "model.safetensors").is_file()
    theirs = getattr(transformers, class_name).from_pretrained(tmp_path / "ours").eval()
    reloaded = getattr(altclip, class_name).from_pretrained(tmp_path / "ours")
    if "Vision" in class_name:
        inputs = {"pixel_values": pixels(2, config["vision_config"]["image_size"])}
    elif "Text" in class_name:
        ids, mask = altclip_inputs(config)
        inputs = {"input_ids": ids, "attention_mask": mask}
    else:
        ids, mask = (altclip_inputs if kind == "altclip" else clip_inputs)(config)
        inputs = {
            "input_ids": ids,
            "attention_mask": mask,
            "pixel_values": pixels(2, config["vision_config"]["image_size"]),
        }
    with torch.no_grad():
        a, b, c = ours(**inputs), theirs(**inputs), reloaded(**inputs)
    key = next(k for k in ("logits_per_image", "image_embeds", "last_hidden_state") if getattr(b, k, None) is not None)
    assert_close(getattr(a, key), getattr(b, key), what=key)
    assert torch.equal(getattr(a, key), getattr(c, key))


def test_sharded_safetensors_round_trip(tmp_path):
    model = altclip.AltCLIPModel(altclip.AltCLIPConfig.from_dict(ALT)).eval()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    assert set(index["weight_map"]) == set(model.state_dict())
    expected = altclip_outputs(model).logits_per_image
    assert torch.equal(altclip_outputs(altclip.AltCLIPModel.from_pretrained(tmp_path)).logits_per_image, expected)
    assert_close(altclip_outputs(transformers.AltCLIPModel.from_pretrained(tmp_path)).logits_per_image, expected)


def test_sharded_bin_with_index(tmp_path):
    model = altclip.AltCLIPModel(altclip.AltCLIPConfig.from_dict(ALT)).eval()
    model.config.save_pretrained(tmp_path)
    state = model.state_dict()
    keys = list(state)
    halves = {
        "pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
        "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :],
    }
    for name, part in halves.items():
        torch.save({k: state[k] for k in part}, tmp_path / name)
    index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    loaded = altclip.AltCLIPModel.from_pretrained(tmp_path)
    assert torch.equal(altclip_outputs(loaded).text_embeds, altclip_outputs(model).text_embeds)


def test_unsafe_pickle_is_refused(tmp_path):
    model = altclip.AltCLIPModel(altclip.AltCLIPConfig.from_dict(ALT))
    model.config.save_pretrained(tmp_path)
    state = dict(model.state_dict())
    state["payload"] = Unsafe()
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"refused.*weights_only=True"):
        altclip.AltCLIPModel.from_pretrained(tmp_path)


def test_strict_loading_names_every_problem(tmp_path):
    model = altclip.AltCLIPModel(altclip.AltCLIPConfig.from_dict(ALT))
    model.save_pretrained(tmp_path)
    state = dict(model.state_dict())
    state.pop("text_projection.weight")
    state["text_model.extra.weight"] = torch.zeros(2)
    state["visual_projection.weight"] = torch.zeros(3, 3)
    save_weights(state, tmp_path)
    with pytest.raises(ValueError) as err:
        altclip.AltCLIPModel.from_pretrained(tmp_path)
    message = str(err.value)
    assert "missing (1)" in message and "text_projection.weight" in message
    assert "unexpected (1)" in message and "text_model.extra.weight" in message
    assert "visual_projection.weight: checkpoint (3, 3) vs model (16, 32)" in message


def test_config_that_does_not_fit_the_weights(tmp_path):
    altclip.AltCLIPModel(altclip.AltCLIPConfig.from_dict(ALT)).save_pretrained(tmp_path)
    other = json.loads(json.dumps(ALT))
    other["text_config"]["num_hidden_layers"] = 3
    with pytest.raises(ValueError, match=r"missing \(16\)"):
        altclip.AltCLIPModel.from_pretrained(tmp_path, config=altclip.AltCLIPConfig.from_dict(other))


def test_towers_read_out_of_full_checkpoints(tmp_path):
    theirs, folder = saved_transformers_model(tmp_path, "AltCLIPModel", ALT, "altclip")
    ids, mask = altclip_inputs(ALT)
    px = pixels(2, 30)
    text = altclip.AltCLIPTextModel.from_pretrained(folder)
    vision = altclip.AltCLIPVisionModel.from_pretrained(folder)
    with torch.no_grad():
        assert_close(text(ids, mask).pooler_output, theirs.text_model(ids, mask).pooler_output)
        assert_close(vision(px).pooler_output, theirs.vision_model(px).pooler_output)
    clip, clip_folder = saved_transformers_model(tmp_path, "CLIPModel", CLIP_CONFIGS["base"], "clip")
    with torch.no_grad():
        image_embeds = altclip.CLIPVisionModelWithProjection.from_pretrained(clip_folder)(px).image_embeds
        assert_close(image_embeds, clip.get_image_features(px).pooler_output)
        ids, mask = clip_inputs(CLIP_CONFIGS["base"])
        text_embeds = altclip.CLIPTextModelWithProjection.from_pretrained(clip_folder)(ids, mask).text_embeds
        assert_close(text_embeds, clip.get_text_features(ids, mask).pooler_output)


def test_dtype_and_device(tmp_path):
    model = altclip.AltCLIPModel(altclip.AltCLIPConfig.from_dict(ALT))
    model.save_pretrained(tmp_path)
    assert altclip.AltCLIPModel.from_pretrained(tmp_path).dtype == torch.float32
    assert altclip.AltCLIPModel.from_pretrained(tmp_path, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert altclip.AltCLIPModel.from_pretrained(tmp_path, torch_dtype="float16").dtype == torch.float16
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "torch_dtype": "bfloat16"}))
    loaded = altclip.AltCLIPModel.from_pretrained(tmp_path, dtype="auto", device="cpu")
    assert loaded.dtype == torch.bfloat16 and loaded.device.type == "cpu" and not loaded.training
    with pytest.raises(ValueError, match="floating torch dtype"):
        altclip.AltCLIPModel.from_pretrained(tmp_path, dtype="int8")
