"""What people use AltCLIP for: similarity, zero-shot classification, embedding collections, search.

``Embedder`` (similarity, classification) lives one floor down in ``altclip.embedding``, where evaluation
and training reach it too; it is named here as well, where the README's examples import it.
"""

from altclip.embedding import Embedder
from altclip.prompts import TEMPLATES
from altclip.runtime import DEFAULT_MODEL

__all__ = ["DEFAULT_MODEL", "TEMPLATES", "Embedder"]
