"""``altclip init``: the starting AltCLIP, built from a CLIP teacher and an XLM-R text tower.

From CLIP: the vision tower, ``visual_projection``, ``text_projection`` and ``logit_scale``, copied. From
XLM-R: the text tower (a checkpoint's weights, or fresh from a config). ``transformation`` maps XLM-R's
width to the teacher's text width, so distillation targets CLIP's pooled text state and CLIP's own
``text_projection`` fits the student from the start.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from altclip.errors import InputError
from altclip.hub import HubError, resolve_file
from altclip.modeling.config import CONFIG_NAME, AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig
from altclip.modeling.models import AltCLIPModel, CLIPModel
from altclip.modeling.weights import KeyMap, check_state_dict, load_state_dict, resolve_weights
from altclip.processing.image import CLIPImageProcessor
from altclip.processing.processor import AltCLIPProcessor
from altclip.processing.tokenization import XLMRobertaTokenizer

# XLMRobertaModel writes embeddings.* / encoder.layer.*; XLMRobertaForMaskedLM the same under roberta.
XLMR_KEYS = KeyMap(
    keep=(r"^(roberta\.)?(embeddings|encoder)\.",),
    drop=(r"\.position_ids$", r"\.token_type_ids$"),
    rename=((r"^roberta\.", ""), (r"^encoder\.layers\.", "encoder.layer.")),
)


def text_config_from(text: str | Path, project_dim: int) -> AltCLIPTextConfig:
    """An XLM-R (or AltCLIP text) config.json, given the teacher's text width as ``project_dim``."""
    values = json.loads(resolve_file(text, CONFIG_NAME).read_text(encoding="utf-8"))
    if values.get("model_type") in ("altclip", "clip"):
        raise InputError(f"{text} is a full {values['model_type']} model; --text wants an XLM-R model or config")
    return AltCLIPTextConfig.from_dict({**values, "project_dim": project_dim})


@torch.no_grad()
def build_student(clip: str | Path, text: str | Path, out: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Write the starting AltCLIP folder (model, tokenizer, image processor) and return it."""
    teacher = CLIPModel.from_pretrained(clip)
    width = teacher.config.text_config.hidden_size
    text_config = text_config_from(text, width)
    config = AltCLIPConfig(
        text_config=text_config,
        vision_config=AltCLIPVisionConfig.from_dict(teacher.config.vision_config.to_dict()),
        projection_dim=teacher.config.projection_dim,
        logit_scale_init_value=float(teacher.logit_scale),
    )
    student = AltCLIPModel(config)
    student.vision_model.load_state_dict(teacher.vision_model.state_dict())
    student.visual_projection.load_state_dict(teacher.visual_projection.state_dict())
    student.text_projection.load_state_dict(teacher.text_projection.state_dict())
    student.logit_scale.copy_(teacher.logit_scale)
    try:
        weights = resolve_weights(text)
    except HubError:
        weights = []  # a config alone: the text tower starts fresh
    if weights:
        state = XLMR_KEYS.apply(load_state_dict(weights))
        check_state_dict(student.text_model.roberta.state_dict(), state, f"the XLM-R text tower of {text}")
        student.text_model.roberta.load_state_dict(state)
    out = Path(out)
    student.save_pretrained(out)
    processor = AltCLIPProcessor(
        CLIPImageProcessor.from_pretrained(clip), XLMRobertaTokenizer.from_pretrained(tokenizer or text)
    )
    if len(processor.tokenizer) > text_config.vocab_size:
        raise InputError(
            f"the tokenizer has {len(processor.tokenizer)} tokens but the text tower {text_config.vocab_size}"
        )
    processor.save_pretrained(out)
    return out
