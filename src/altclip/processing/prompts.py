"""Prompt templates for zero-shot classification, written for this project, per language.

Each language has a small ensemble of natural captions around the class name (``{}``). The class
embedding is the renormalised mean of the ensemble's embeddings (see ``Embedder.class_embeddings``).
"""

from __future__ import annotations

from collections.abc import Sequence

from altclip.errors import InputError

TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": (
        "a photo of a {}.",
        "a picture of a {}.",
        "a close-up photo of the {}.",
        "a drawing of a {}.",
        "an image showing a {}.",
        "a blurry photo of a {}.",
    ),
    "zh": ("一张{}的照片。", "{}的图片。", "一张{}的特写照片。", "一幅{}的画。", "这是{}。", "一张模糊的{}的照片。"),
    "ja": ("{}の写真。", "{}の画像。", "{}のクローズアップ写真。", "{}の絵。", "これは{}です。", "ぼやけた{}の写真。"),
    "ko": ("{} 사진.", "{}의 사진.", "{}의 클로즈업 사진.", "{} 그림.", "이것은 {}입니다.", "흐릿한 {} 사진."),
    "ar": ("صورة {}.", "صورة فوتوغرافية لـ {}.", "صورة مقربة لـ {}.", "رسم لـ {}.", "هذا {}.", "صورة ضبابية لـ {}."),
    "fr": (
        "une photo de {}.",
        "une image de {}.",
        "une photo en gros plan de {}.",
        "un dessin de {}.",
        "ceci est {}.",
        "une photo floue de {}.",
    ),
    "de": (
        "ein Foto von {}.",
        "ein Bild von {}.",
        "eine Nahaufnahme von {}.",
        "eine Zeichnung von {}.",
        "das ist {}.",
        "ein unscharfes Foto von {}.",
    ),
    "es": (
        "una foto de {}.",
        "una imagen de {}.",
        "una foto de cerca de {}.",
        "un dibujo de {}.",
        "esto es {}.",
        "una foto borrosa de {}.",
    ),
    "ru": (
        "фотография: {}.",
        "изображение: {}.",
        "крупный план: {}.",
        "рисунок: {}.",
        "это {}.",
        "размытая фотография: {}.",
    ),
    "it": ("una foto di {}.", "un'immagine di {}.", "un primo piano di {}.", "un disegno di {}.", "questo è {}."),
    "pt": ("uma foto de {}.", "uma imagem de {}.", "uma foto de perto de {}.", "um desenho de {}.", "isto é {}."),
    "fa": ("عکسی از {}.", "تصویری از {}.", "عکس نزدیک از {}.", "نقاشی {}.", "این {} است."),
    "id": ("foto {}.", "gambar {}.", "foto close-up {}.", "lukisan {}.", "ini adalah {}."),
    "tr": ("bir {} fotoğrafı.", "{} resmi.", "yakından çekilmiş {} fotoğrafı.", "bir {} çizimi.", "bu bir {}."),
}


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    templates = (templates,) if isinstance(templates, str) else tuple(templates)
    if not templates:
        raise InputError("templates is empty")
    for template in templates:
        if template.count("{}") != 1:
            raise InputError(f"template {template!r} must hold exactly one {{}} where the class name goes")
    return templates


def templates_for(lang: str) -> tuple[str, ...]:
    try:
        return TEMPLATES[lang]
    except KeyError:
        raise InputError(
            f"no built-in templates for language {lang!r}; known: {', '.join(sorted(TEMPLATES))} "
            "(or pass your own templates)"
        ) from None
