"""Data files read leniently: parallel text and image-text pairs, for training and evaluation alike.

* Parallel text: TSV (``src<TAB>tgt[<TAB>lang]``, an optional header naming those columns) or JSONL
  (``{"src": ..., "tgt": ..., "lang": ...}``).
* Image-text pairs: JSONL (``{"image": path, "caption": ..., "lang": ...}``) or CSV with those columns;
  relative image paths are taken from the data file's folder.

Malformed lines and empty texts are skipped and counted (``Table.skipped``); a file with no usable row is
an error that says what was skipped.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Table:
    """Rows read from a data file, and what was skipped on the way (reason -> count)."""

    rows: list[dict[str, str]]
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.rows)


def _records(path: Path, columns: tuple[str, ...], skipped: Counter) -> Iterator[dict[str, Any]]:
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8", newline="") as handle:
        if suffix in (".jsonl", ".json"):
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    skipped["malformed line"] += 1
                    continue
                if isinstance(record, dict):
                    yield record
                else:
                    skipped["malformed line"] += 1
            return
        delimiter = "\t" if suffix in (".tsv", ".txt") else ","
        reader = csv.reader(
            handle, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        )
        header: list[str] | None = None
        for row in reader:
            if header is None and [c.strip().lower() for c in row[: len(columns)]] == list(columns[: len(row)]):
                header = [c.strip().lower() for c in row]
                continue
            names = header or list(columns)
            if len(row) < 2 or len(row) > len(names):
                skipped["malformed line"] += 1
                continue
            yield dict(zip(names, row, strict=False))


def read_table(path: str | Path, required: tuple[str, ...], optional: tuple[str, ...] = ("lang",)) -> Table:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    table = Table([])
    for record in _records(path, required + optional, table.skipped):
        values = {k: record.get(k) for k in required + optional}
        if any(not isinstance(values[k], str) for k in required):
            table.skipped["missing field"] += 1
        elif any(not values[k].strip() for k in required):
            table.skipped["empty text"] += 1
        else:
            table.rows.append({k: (v.strip() if isinstance(v, str) else "") for k, v in values.items()})
    if not table.rows:
        raise ValueError(f"{path}: no usable rows (skipped: {dict(table.skipped) or 'none'})")
    return table


def read_parallel(path: str | Path) -> Table:
    """Parallel sentences: ``src`` (English, the teacher's side), ``tgt`` (its translation), ``lang``."""
    return read_table(path, ("src", "tgt"))


def read_pairs(path: str | Path) -> Table:
    """Image-text pairs: ``image`` (path), ``caption``, ``lang``."""
    table = read_table(path, ("image", "caption"))
    base = Path(path).parent
    for row in table.rows:
        if not Path(row["image"]).is_absolute():
            row["image"] = str(base / row["image"])
    return table
