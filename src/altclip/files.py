"""Small file helpers anyone may use: atomic writes, JSON objects read and written, sizes like "4GB", the CPU
as /proc/cpuinfo describes it.

Writes are atomic: a temporary file in the same folder, then a rename, so a reader never sees half a file and
an interrupted job leaves the last finished version behind.

Floor: imports only ``altclip.errors``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from altclip.errors import InputError

SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    """One array as ``.npy``, atomically, never pickled."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return atomic_write_bytes(path, buffer.getvalue())


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from a file; anything else is an ``InputError`` that names the file."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(values, dict):
        raise InputError(f"{path} must hold a JSON object, found {type(values).__name__}")
    return values


def write_json(path: str | Path, values: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """``values`` as UTF-8 JSON (non-ASCII kept as it is), written atomically. Hugging Face files are written
    with ``sort_keys=True``, the layout transformers gives them."""
    text = json.dumps(values, indent=indent, sort_keys=sort_keys, ensure_ascii=False)
    return atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def parse_size(size: int | str, what: str = "size") -> int:
    """Bytes from an int or a string such as "5GB", "512MiB" or "2000000000"; ``what`` names it in errors."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", size, flags=re.IGNORECASE)
    if not match:
        raise InputError(f"{what} {size!r} is not a size such as '5GB' or 2000000000")
    return int(float(match.group(1)) * SIZE_UNITS[(match.group(2) or "B").upper()])


def write_image(path: str | Path, image: Any, format: str = "PNG") -> Path:
    """A Pillow image (anything with ``save(fp, format=...)``) written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=format)
    return path


def cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and flags from ``/proc/cpuinfo`` (empty where there is none, e.g. macOS)."""
    name, flags = platform.processor() or platform.machine(), set()
    path = Path("/proc/cpuinfo")
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
    return name, flags
