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
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from altclip.errors import InputError, MissingFileError


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


def usable(
    record: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...]
) -> tuple[dict[str, str] | None, str]:
    """A record's row (texts stripped, absent optional fields ""), or None and why it is skipped."""
    values = {k: record.get(k) for k in required + optional}
    if any(not isinstance(values[k], str) for k in required):
        return None, "missing field"
    if any(not values[k].strip() for k in required):
        return None, "empty text"
    return {k: (v.strip() if isinstance(v, str) else "") for k, v in values.items()}, ""


def read_table(path: str | Path, required: tuple[str, ...], optional: tuple[str, ...] = ("lang",)) -> Table:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such data file")
    table = Table([])
    for record in _records(path, required + optional, table.skipped):
        row, why = usable(record, required, optional)
        if row is None:
            table.skipped[why] += 1
        else:
            table.rows.append(row)
    if not table.rows:
        raise InputError(f"{path}: no usable rows (skipped: {dict(table.skipped) or 'none'})")
    return table


def read_pairs(path: str | Path) -> Table:
    """Image-text pairs: ``image`` (path), ``caption``, ``lang``."""
    table = read_table(path, ("image", "caption"))
    base = Path(path).parent
    for row in table.rows:
        if not Path(row["image"]).is_absolute():
            row["image"] = str(base / row["image"])
    return table


class ParallelLines:
    """Parallel sentences, ``src`` (English, the teacher's side), ``tgt`` (its translation) and ``lang``, from
    TSV or JSONL, never loaded whole.

    One pass over the file keeps the byte offset of every usable line (8 bytes a line) and counts what it
    skips; a row is read from its offset when it is asked for. It pickles
    (offsets and path only), so data-loader workers read rows themselves.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"{self.path}: no such data file")
        self.jsonl = self.path.suffix.lower() in (".jsonl", ".json")
        self.skipped: Counter = Counter()
        self.header: list[str] | None = None
        offsets = array("q")
        with self.path.open("rb") as handle:
            offset = 0
            for number, line in enumerate(handle):
                if number == 0 and not self.jsonl:
                    self.header = _tsv_header(line)
                    if self.header:
                        offset += len(line)
                        continue
                if line.strip():
                    row, why = self._parse(line)
                    if row is None:
                        self.skipped[why] += 1
                    else:
                        offsets.append(offset)
                offset += len(line)
        self.offsets = np.frombuffer(offsets, dtype=np.int64) if offsets else np.zeros(0, np.int64)
        if not len(self.offsets):
            raise InputError(f"{self.path}: no usable rows (skipped: {dict(self.skipped) or 'none'})")

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> dict[str, str]:
        with self.path.open("rb") as handle:
            return self._row_at(handle, self.offsets[index])

    def __iter__(self) -> Iterator[dict[str, str]]:
        """Every usable row in order, in one sequential read."""
        with self.path.open("rb") as handle:
            for offset in self.offsets:
                yield self._row_at(handle, offset)

    def _row_at(self, handle: BinaryIO, offset: int) -> dict[str, str]:
        handle.seek(int(offset))
        row, _ = self._parse(handle.readline())
        assert row is not None, f"{self.path}: line at byte {offset} changed since it was indexed"
        return row

    def _parse(self, line: bytes) -> tuple[dict[str, str] | None, str]:
        """A usable row, or None and why not (the reasons ``read_table`` counts)."""
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        if self.jsonl:
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                return None, "malformed line"
            if not isinstance(record, dict):
                return None, "malformed line"
        else:
            names = self.header or list(PARALLEL_COLUMNS)
            cells = text.split("\t")
            if len(cells) < 2 or len(cells) > len(names):
                return None, "malformed line"
            record = dict(zip(names, cells, strict=False))
        return usable(record, PARALLEL_COLUMNS[:2], PARALLEL_COLUMNS[2:])


PARALLEL_COLUMNS = ("src", "tgt", "lang")


def _tsv_header(line: bytes) -> list[str] | None:
    cells = [c.strip().lower() for c in line.decode("utf-8", errors="replace").rstrip("\r\n").split("\t")]
    return cells if cells[: len(PARALLEL_COLUMNS)] == list(PARALLEL_COLUMNS[: len(cells)]) else None
