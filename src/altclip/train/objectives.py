"""The two AltCLIP training objectives as modules: ``forward(batch) -> loss``, so DDP can wrap them.

Parameters that do not train are frozen (``requires_grad=False``) here, once, where the objective says so.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from altclip.models import AltCLIPModel, CLIPModel, DualEncoderModel
from altclip.train.losses import contrastive_loss, distillation_loss

MAX_LOGIT_SCALE = math.log(100)  # CLIP's clamp on the learned temperature


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class Objective(nn.Module):
    """``forward(batch) -> loss``; ``after_step`` runs after each optimizer step (outside autograd)."""

    def after_step(self) -> None:
        pass


class Distillation(Objective):
    """Phase 1: pull the student's pooled text vector to the teacher's, for both sides of a parallel pair.

    Teacher: CLIP's text tower, frozen and in eval mode; its target is the pooled state (the EOS token
    after the final LayerNorm, before ``text_projection``). Student: AltCLIP's text tower; its pooled output
    is ``transformation(pre_LN(h))`` at token 0. Only the student's text tower trains.
    """

    def __init__(self, teacher: CLIPModel, student: AltCLIPModel) -> None:
        super().__init__()
        width = teacher.config.text_config.hidden_size
        if student.config.text_config.project_dim != width:
            raise ValueError(
                f"the student's project_dim ({student.config.text_config.project_dim}) must equal the teacher's "
                f"text width ({width}); build the student with `altclip init`"
            )
        self.teacher_text = teacher.text_model.eval()
        freeze(self.teacher_text)
        self.student = student
        freeze(student.vision_model)
        freeze(student.visual_projection)
        freeze(student.text_projection)
        student.logit_scale.requires_grad_(False)

    def train(self, mode: bool = True) -> Distillation:
        super().train(mode)
        self.teacher_text.eval()  # the teacher never drops out
        return self

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        with torch.no_grad():
            target = self.teacher_text(batch["teacher_ids"], batch["teacher_mask"]).pooler_output
        src = self.student.text_model(batch["src_ids"], batch["src_mask"]).pooler_output
        tgt = self.student.text_model(batch["tgt_ids"], batch["tgt_mask"]).pooler_output
        return (distillation_loss(src, target) + distillation_loss(tgt, target)) / 2


class Contrastive(Objective):
    """Phase 2 (and the teacher's own training): symmetric InfoNCE with the learned logit scale.

    ``freeze_vision`` keeps the image tower and ``visual_projection`` as they are (AltCLIP's recipe).
    ``local_loss``: see ``contrastive_loss``. After each step the logit scale is clamped to [0, ln 100], as
    CLIP and open_clip do, so the temperature cannot run away.
    """

    def __init__(self, model: DualEncoderModel, freeze_vision: bool = True, local_loss: bool = False) -> None:
        super().__init__()
        self.model = model
        self.local_loss = local_loss
        if freeze_vision:
            freeze(model.vision_model)
            freeze(model.visual_projection)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        text = self.model.get_text_features(batch["input_ids"], batch["attention_mask"])
        image = self.model.get_image_features(batch["pixel_values"])
        return contrastive_loss(text, image, self.model.logit_scale, local=self.local_loss)

    @torch.no_grad()
    def after_step(self) -> None:
        self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def trainable_parameters(objective: nn.Module) -> list[nn.Parameter]:
    return [p for p in objective.parameters() if p.requires_grad]


def describe(objective: nn.Module) -> dict[str, Any]:
    total = sum(p.numel() for p in objective.parameters())
    trained = sum(p.numel() for p in trainable_parameters(objective))
    return {"parameters": total, "trainable": trained}
