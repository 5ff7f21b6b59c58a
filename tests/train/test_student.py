"""`altclip init`: what is copied from CLIP, what comes from XLM-R, and that both libraries load it."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import altclip
from altclip.train.student import build_student


def test_student_copies_clip_and_carries_xlmr(student, teacher, xlmr_tower):
    clip = altclip.CLIPModel.from_pretrained(teacher)
    alt = altclip.AltCLIPModel.from_pretrained(student)
    assert alt.config.text_config.project_dim == clip.config.text_config.hidden_size
    for name in ("vision_model", "visual_projection", "text_projection"):
        ours, theirs = getattr(alt, name).state_dict(), getattr(clip, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    assert torch.equal(alt.logit_scale, clip.logit_scale)
    # the text tower is the XLM-R: same hidden states as transformers' XLMRobertaModel
    xlmr = transformers.XLMRobertaModel.from_pretrained(xlmr_tower).eval()
    processor = altclip.AltCLIPProcessor.from_pretrained(student)
    inputs = processor(text=["a cat", "一只很大的狗"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = alt.text_model.roberta(inputs.input_ids, inputs.attention_mask).last_hidden_state
        theirs = xlmr(**inputs).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    reference = transformers.AltCLIPModel.from_pretrained(student).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            alt.get_text_features(**inputs), reference.get_text_features(**inputs).pooler_output, atol=1e-5, rtol=0
        )
    assert (student / "preprocessor_config.json").is_file() and (student / "tokenizer.json").is_file()


def test_student_from_a_config_alone(tmp_path, teacher, xlmr_tower):
    config_only = tmp_path / "xlmr-config"
    config_only.mkdir()
    (config_only / "config.json").write_text((xlmr_tower / "config.json").read_text())
    out = build_student(teacher, config_only, tmp_path / "fresh", tokenizer=xlmr_tower)
    fresh = altclip.AltCLIPModel.from_pretrained(out)
    trained = altclip.AltCLIPModel.from_pretrained(build_student(teacher, xlmr_tower, tmp_path / "carried"))
    assert not torch.equal(
        fresh.text_model.roberta.embeddings.word_embeddings.weight,
        trained.text_model.roberta.embeddings.word_embeddings.weight,
    )
    assert torch.equal(fresh.visual_projection.weight, trained.visual_projection.weight)


def test_a_full_model_is_not_a_text_tower(tmp_path, teacher):
    with pytest.raises(ValueError, match="full clip model"):
        build_student(teacher, teacher, tmp_path / "x")
    assert json.loads((teacher / "config.json").read_text())["model_type"] == "clip"
