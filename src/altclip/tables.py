"""What commands print: plain-text tables for terminals, aligned for wide (CJK) characters, and ``Result``, the
base of the dataclasses whose ``to_json()`` is what ``--json`` prints."""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Sequence
from typing import Any


def display_width(text: str) -> int:
    """Columns a string takes in a terminal: East Asian wide characters count two, combining marks none."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1 for ch in text)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    """Columns separated by two spaces, a rule under the header, floats with ``digits`` decimals."""
    cells = [[str(h) for h in headers]]
    cells += [[f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(display_width(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(cell + " " * (w - display_width(cell)) for cell, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


class Result:
    """A dataclass a command prints; ``to_json()`` gives its fields as JSON values (subclasses may shape them)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]
