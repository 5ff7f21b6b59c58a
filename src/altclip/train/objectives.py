"""The two AltCLIP training objectives as modules: ``forward(batch) -> loss``, so DDP can wrap them.

Parameters that do not train are frozen (``requires_grad=False``) here, once, where the objective says so.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from altclip.errors import InputError
from altclip.modeling.models import AltCLIPModel, CLIPModel, DualEncoderModel
from altclip.train.losses import contrastive_loss, distillation_loss

MAX_LOGIT_SCALE = math.log(100)  # CLIP's clamp on the learned temperature


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class FrozenOutputs:
    """Outputs of a frozen, deterministic tower, kept per input so a repeated input is not computed again.

    Keys are the bytes of each input row (its tokens without padding, or its pixels). Only rows not seen
    before are computed, in one batch. Worth it where inputs repeat: the demo's parallel names give each
    English name 13 times an epoch, and its image-text pairs each image 14 times. It grows with the distinct
    inputs, so it is opt-in, for data sets of modest size.
    """

    def __init__(self) -> None:
        self.outputs: dict[bytes, Tensor] = {}

    def __call__(self, keys: list[bytes], compute: Callable[[list[int]], Tensor]) -> Tensor:
        first: dict[bytes, int] = {}  # each new key's first row
        for row, key in enumerate(keys):
            if key not in self.outputs:
                first.setdefault(key, row)
        missing = list(first.values())
        if missing:
            for key_row, output in zip(missing, compute(missing).detach(), strict=True):
                self.outputs[keys[key_row]] = output
        return torch.stack([self.outputs[k] for k in keys])


def row_keys(rows: Tensor, mask: Tensor | None = None) -> list[bytes]:
    """A digest of each row's values (where ``mask`` is set, when given)."""
    rows = rows.detach().cpu()
    mask = mask.detach().cpu().bool() if mask is not None else None
    return [
        hashlib.blake2b((row if mask is None else row[mask[i]]).numpy().tobytes(), digest_size=16).digest()
        for i, row in enumerate(rows)
    ]


def trim_padding(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(B, L) tokens and mask without the columns that are padding in every row: (B, L') with L' <= L."""
    keep = mask.bool().any(0)
    return ids[:, keep], mask[:, keep]


class Objective(nn.Module):
    """``forward(batch) -> loss``; ``after_step`` runs after each optimizer step (outside autograd)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[nn.Module] = []  # frozen towers kept in eval mode (``hold``)

    def hold(self, module: nn.Module) -> None:
        """Freeze ``module`` and keep it in eval mode through ``train()``: a frozen tower neither drops out nor
        drops patches, so its outputs are the deterministic ones that targets and kept features assume."""
        freeze(module)
        self.held.append(module.eval())

    def train(self, mode: bool = True) -> Objective:
        super().train(mode)
        for module in self.held:
            module.eval()
        return self

    def after_step(self) -> None:
        pass


class Distillation(Objective):
    """Phase 1: pull the student's pooled text vector to the teacher's, for both sides of a parallel pair.

    Teacher: CLIP's text tower, frozen and in eval mode; its target is the pooled state (the EOS token
    after the final LayerNorm, before ``text_projection``). Student: AltCLIP's text tower; its pooled output
    is ``transformation(pre_LN(h))`` at token 0. Only the student's text tower trains.

    ``source_fraction``: the share of each batch whose source side the student reads too (the paper: all). Where
    each source sentence comes with many translations (the demo's English name with 13), reading it 13 times an
    epoch is mostly repetition; a quarter of the rows keeps the loss's expectation at less of the cost.
    """

    def __init__(
        self, teacher: CLIPModel, student: AltCLIPModel, cache_targets: bool = False, source_fraction: float = 1.0
    ) -> None:
        super().__init__()
        if not 0 < source_fraction <= 1:
            raise InputError(f"source_fraction must be in (0, 1], not {source_fraction}")
        self.targets = FrozenOutputs() if cache_targets else None
        self.source_fraction = source_fraction
        width = teacher.config.text_config.hidden_size
        if student.config.text_config.project_dim != width:
            raise InputError(
                f"the student's project_dim ({student.config.text_config.project_dim}) must equal the teacher's "
                f"text width ({width}); build the student with `altclip init`"
            )
        self.teacher_text = teacher.text_model
        self.hold(self.teacher_text)
        self.student = student
        freeze(student.vision_model)
        freeze(student.visual_projection)
        freeze(student.text_projection)
        student.logit_scale.requires_grad_(False)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        ids, mask = batch["teacher_ids"], batch["teacher_mask"]
        with torch.no_grad():
            if self.targets is None:
                target = self.teacher_text(ids, mask).pooler_output
            else:
                target = self.targets(
                    row_keys(ids, mask), lambda rows: self.teacher_text(ids[rows], mask[rows]).pooler_output
                )
        tgt = self.student.text_model(batch["tgt_ids"], batch["tgt_mask"]).pooler_output
        # the source side on the batch's first rows alone when source_fraction < 1: batches are drawn at random,
        # so the loss keeps its expectation, and a source sentence repeated across translations is read less often
        rows = max(1, round(len(target) * self.source_fraction))
        src_ids, src_mask = trim_padding(batch["src_ids"][:rows], batch["src_mask"][:rows])
        src = self.student.text_model(src_ids, src_mask).pooler_output
        return (distillation_loss(src, target[:rows]) + distillation_loss(tgt, target)) / 2


class Contrastive(Objective):
    """Phase 2 (and the teacher's own training): symmetric InfoNCE with the learned logit scale.

    ``freeze_vision`` keeps the image tower and ``visual_projection`` as they are (AltCLIP's recipe).
    ``local_loss``: see ``contrastive_loss``. After each step the logit scale is clamped to [0, ln 100], as
    CLIP and open_clip do, so the temperature cannot run away. ``cache_images`` (frozen vision only): keep
    each image's features (``FrozenOutputs``), for small data sets whose images come with many captions.
    """

    def __init__(
        self, model: DualEncoderModel, freeze_vision: bool = True, local_loss: bool = False, cache_images: bool = False
    ) -> None:
        super().__init__()
        if cache_images and not freeze_vision:
            raise InputError("cache_images needs a frozen image tower")
        self.model = model
        self.local_loss = local_loss
        self.images = FrozenOutputs() if cache_images else None
        if freeze_vision:
            self.hold(model.vision_model)
            freeze(model.visual_projection)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        text = self.model.get_text_features(batch["input_ids"], batch["attention_mask"])
        pixels = batch["pixel_values"]
        if self.images is None:
            image = self.model.get_image_features(pixels)
        else:
            with torch.no_grad():
                image = self.images(row_keys(pixels), lambda rows: self.model.get_image_features(pixels[rows]))
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
