"""The import path of ``Embedder``, ``TEMPLATES`` and ``DEFAULT_MODEL`` before 0.2, kept for one release.

They now live in ``altclip.embedder``, ``altclip.processing.prompts`` and ``altclip.runtime.loading``; nothing
inside altclip imports this module.
"""

import warnings

from altclip.embedder import Embedder
from altclip.processing.prompts import TEMPLATES
from altclip.runtime.loading import DEFAULT_MODEL

warnings.warn(
    "altclip.tasks is deprecated and goes in the next release: import Embedder from altclip.embedder, TEMPLATES "
    "from altclip.processing.prompts and DEFAULT_MODEL from altclip.runtime.loading",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["DEFAULT_MODEL", "TEMPLATES", "Embedder"]
