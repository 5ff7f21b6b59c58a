"""The ``altclip`` command: ``main`` (the root parser and error boundary) and one module per command group.

Floor: the top; it may import every part of altclip, and nothing imports it.
"""

from altclip.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
