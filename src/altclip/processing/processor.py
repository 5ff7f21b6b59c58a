"""Processors: text and images into model inputs, as transformers' ``AltCLIPProcessor`` / ``CLIPProcessor``.

A processor knows no model: it pairs a ``CLIPImageProcessor`` with a tokenizer and merges what they give.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from altclip.errors import InputError
from altclip.processing.image import CLIPImageProcessor, ImageInput
from altclip.processing.tokenization import BatchEncoding, CLIPTokenizer, Tokenizer, XLMRobertaTokenizer


class Processor:
    tokenizer_class: ClassVar[type[Tokenizer]]

    def __init__(self, image_processor: CLIPImageProcessor, tokenizer: Tokenizer) -> None:
        if not isinstance(tokenizer, self.tokenizer_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.tokenizer_class.__name__}, got {type(tokenizer).__name__}"
            )
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: ImageInput | Sequence[ImageInput] | None = None,
        return_tensors: str | None = None,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
    ) -> BatchEncoding:
        """``input_ids`` and ``attention_mask`` for ``text``, ``pixel_values`` for ``images``, or all three."""
        if text is None and images is None:
            raise InputError(f"{type(self).__name__} needs text, images or both; neither was given")
        out = BatchEncoding()
        if text is not None:
            out.update(
                self.tokenizer(
                    text, padding=padding, truncation=truncation, max_length=max_length, return_tensors=return_tensors
                )
            )
        if images is not None:
            out.update(self.image_processor(images, return_tensors=return_tensors))
        return out

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> list[str]:
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **hub: Any) -> Processor:
        """Read ``preprocessor_config.json`` and the tokenizer files from a folder or hub name."""
        return cls(
            CLIPImageProcessor.from_pretrained(name_or_path, **hub),
            cls.tokenizer_class.from_pretrained(name_or_path, **hub),
        )

    def save_pretrained(self, folder: str | Path) -> Path:
        self.image_processor.save_pretrained(folder)
        return self.tokenizer.save_pretrained(folder)


class AltCLIPProcessor(Processor):
    """CLIP image preprocessing + the XLM-RoBERTa tokenizer."""

    tokenizer_class = XLMRobertaTokenizer


class CLIPProcessor(Processor):
    """CLIP image preprocessing + CLIP's BPE tokenizer."""

    tokenizer_class = CLIPTokenizer
