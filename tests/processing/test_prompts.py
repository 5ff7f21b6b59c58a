"""Prompt templates."""

from __future__ import annotations

import pytest

from altclip.processing.prompts import TEMPLATES, check_templates, templates_for


def test_every_language_has_an_ensemble_with_one_slot():
    assert {"en", "zh", "ja", "ko", "ar", "fr", "de", "es", "ru"} <= set(TEMPLATES)
    for lang, templates in TEMPLATES.items():
        assert len(templates) >= 5, lang
        assert check_templates(templates) == templates
        assert len(set(templates)) == len(templates), lang


def test_bad_templates_and_languages():
    with pytest.raises(ValueError, match="exactly one"):
        check_templates(["no slot here"])
    with pytest.raises(ValueError, match="exactly one"):
        check_templates(["{} and {}"])
    with pytest.raises(ValueError, match="known: ar, de"):
        templates_for("xx")
    assert check_templates("a {}") == ("a {}",)
