"""What people use AltCLIP for: similarity, zero-shot classification, embedding collections, search."""

from altclip.tasks.embedding import DEFAULT_MODEL, Embedder
from altclip.tasks.zeroshot import TEMPLATES

__all__ = ["DEFAULT_MODEL", "TEMPLATES", "Embedder"]
