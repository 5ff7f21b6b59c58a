"""The photo-search server: ``altclip serve`` (FastAPI + uvicorn, the optional ``serve`` extra).

``app`` wires one model thread (``worker``) and one ``catalog`` of indexes to the ``routes``, whose bodies are in
``schemas``. It sits on ``search`` (the indexes), the ``embedder`` (the model) and ``explain``; only the command
imports it.
"""

from altclip.serve.app import ServeConfig, create_app
from altclip.serve.catalog import Catalog

__all__ = ["Catalog", "ServeConfig", "create_app"]
