"""Configs: transformers' defaults, the BAAI files' legacy keys and extras, config.json round trips."""

from __future__ import annotations

import dataclasses
import json

import pytest
import transformers

import altclip
from altclip.modeling.config import CLIPVisionConfig

PAIRS = [
    (altclip.AltCLIPTextConfig, transformers.AltCLIPTextConfig),
    (altclip.AltCLIPVisionConfig, transformers.AltCLIPVisionConfig),
    (altclip.CLIPTextConfig, transformers.CLIPTextConfig),
    (altclip.CLIPVisionConfig, transformers.CLIPVisionConfig),
    (altclip.AltCLIPConfig, transformers.AltCLIPConfig),
    (altclip.CLIPConfig, transformers.CLIPConfig),
]

# The shape of BAAI/AltCLIP's config.json: a text_config full of generic keys, legacy *_config_dict
# sections that win, and extras no model reads.
BAAI_STYLE = {
    "_commit_hash": None,
    "_name_or_path": "BAAI/AltCLIP",
    "architectures": ["AltCLIPModel"],
    "direct_kd": False,
    "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592,
    "model_type": "altclip",
    "num_layers": 3,
    "projection_dim": 768,
    "text_config": {
        "_name_or_path": "",
        "architectures": None,
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": 0,
        "chunk_size_feed_forward": 0,
        "classifier_dropout": None,
        "eos_token_id": 2,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "model_type": "altclip_text_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "pad_token_id": 1,
        "pooler_fn": "cls",
        "position_embedding_type": "absolute",
        "project_dim": 768,
        "torch_dtype": None,
        "use_cache": True,
        "vocab_size": 250002,
    },
    "text_config_dict": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "project_dim": 768,
        "vocab_size": 250002,
    },
    "torch_dtype": "float32",
    "transformers_version": None,
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "model_type": "altclip_vision_model",
        "torch_dtype": None,
    },
    "vision_config_dict": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
    },
}


def field_values(config) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def assert_same_fields(ours, theirs) -> None:
    for name, value in field_values(ours).items():
        if isinstance(value, altclip.modeling.config.Config):
            assert_same_fields(value, getattr(theirs, name))
        else:
            assert value == getattr(theirs, name), f"{type(ours).__name__}.{name}: {value} vs {getattr(theirs, name)}"


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_defaults_equal_transformers(ours, theirs):
    assert_same_fields(ours(), theirs())
    assert ours.model_type == theirs.model_type


@pytest.mark.parametrize("legacy", [True, False])
def test_baai_style_file_reads_like_transformers(tmp_path, legacy):
    values = json.loads(json.dumps(BAAI_STYLE))
    if not legacy:
        values.pop("text_config_dict")
        values.pop("vision_config_dict")
    # a text_config value the legacy section does not name: transformers resets it to the default
    values["text_config"]["max_position_embeddings"] = 77
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    ours = altclip.AltCLIPConfig.from_json_file(path)
    theirs = transformers.AltCLIPConfig.from_json_file(str(path))
    assert_same_fields(ours, theirs)
    if legacy:
        assert ours.text_config.max_position_embeddings == 514
        assert ours.vision_config.intermediate_size == 4096
    assert ours.vision_config.patch_size == 14 and ours.projection_dim == 768


def test_save_then_transformers_reads_it(tmp_path):
    config = altclip.AltCLIPConfig.from_dict(BAAI_STYLE)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["AltCLIPModel"] and saved["model_type"] == "altclip"
    assert "text_config_dict" not in saved and "direct_kd" not in saved
    assert_same_fields(config, transformers.AltCLIPConfig.from_pretrained(tmp_path))
    assert altclip.AltCLIPConfig.from_pretrained(tmp_path) == config


def test_tower_config_reads_its_section_of_a_composite_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(BAAI_STYLE))
    text = altclip.AltCLIPTextConfig.from_pretrained(tmp_path)
    vision = altclip.AltCLIPVisionConfig.from_pretrained(tmp_path)
    assert text == altclip.AltCLIPConfig.from_pretrained(tmp_path).text_config
    assert (vision.hidden_size, vision.patch_size) == (1024, 14)
    altclip.CLIPVisionConfig(image_size=64, patch_size=16).save_pretrained(tmp_path / "v")
    assert altclip.CLIPVisionConfig.from_pretrained(tmp_path / "v").grid_size == 4


def test_from_text_vision_configs():
    text, vision = altclip.AltCLIPTextConfig(hidden_size=64, num_attention_heads=4), altclip.AltCLIPVisionConfig()
    config = altclip.AltCLIPConfig.from_text_vision_configs(text, vision, projection_dim=32)
    assert config.text_config is text and config.vision_config is vision and config.projection_dim == 32


def test_code_is_strict_where_files_are_lenient():
    with pytest.raises(TypeError):
        altclip.AltCLIPTextConfig(hiden_size=3)  # a typo is an error in code
    with pytest.raises(TypeError, match="from_dict"):
        altclip.AltCLIPConfig(text_config={"vocab_size": 10})
    with pytest.raises(TypeError, match="AltCLIPVisionConfig"):
        altclip.AltCLIPConfig(vision_config=altclip.AltCLIPTextConfig())
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        altclip.CLIPTextConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        CLIPVisionConfig(image_size=30, patch_size=7)


def test_bad_file_is_a_clear_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        altclip.AltCLIPConfig.from_json_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        altclip.AltCLIPConfig.from_json_file(path)
