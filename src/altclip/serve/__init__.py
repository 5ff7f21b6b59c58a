"""The photo-search server: ``altclip serve`` (FastAPI + uvicorn, the optional ``serve`` extra).

It sits on ``tasks`` (the indexes) and ``embedding`` (the model); only the command imports it.
"""

from altclip.serve.app import ServeConfig, create_app
from altclip.serve.catalog import Catalog

__all__ = ["Catalog", "ServeConfig", "create_app"]
