"""Image files decoded and preprocessed in worker processes; a file that fails becomes a record, not a raise.

Everything here crosses a process boundary, so it is module-level and pickles under every start method
(fork, spawn, forkserver).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from torch.utils.data import DataLoader, Dataset

from altclip.data.workers import die_with_parent
from altclip.processing.image import CLIPImageProcessor, ImageLoadError

DRAFT_FACTOR = 2  # draft decoding keeps at least twice the resize target: see benchmarks/folder.py


class ByteSource(Protocol):
    """An image inside another file (a tar shard's member, a TSV row's base64): named by ``path`` in errors,
    its encoded bytes from ``read()``, which raises OSError or ValueError when they cannot be had. It must
    pickle, since workers read it."""

    @property
    def path(self) -> str: ...

    def read(self) -> bytes: ...


ImageSource = str | ByteSource  # a file, or an image inside another file (a TarMember, a TsvImage)
Task = tuple[int, int, ImageSource]  # (unit, position in the unit, source): what a worker is asked to read


@dataclass
class Record:
    """One image's outcome: its pixels (None unless ``status`` is "ok"), size and error.

    ``unit`` and ``index`` say which it was: the shard of a collection and the position in it, or 0 and the
    position in a list of files."""

    index: int
    pixels: np.ndarray | None
    width: int
    height: int
    status: str
    error: str
    unit: int = 0
    digest: str = ""  # the BLAKE2b-128 of the file's bytes, for a ``HashedFile``


def content_digest(data: bytes) -> str:
    """BLAKE2b-128 of a file's bytes: how a folder collection tells a changed file from a touched one."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True)
class HashedFile:
    """A file read whole, so that its record carries the digest of the bytes that were decoded (what a folder
    collection compares later to tell a changed file from a touched one)."""

    path: str

    def read(self) -> bytes:
        return Path(self.path).read_bytes()


class ImageFiles(Dataset):
    """Decodes and preprocesses the image a ``Task`` names into a ``Record``; it is indexed by tasks, which a
    batch sampler hands out (``image_batches``).

    ``draft``: decode JPEGs at a reduced scale, no smaller than ``DRAFT_FACTOR`` times the resize target.
    """

    def __init__(self, processor: CLIPImageProcessor, draft: bool) -> None:
        self.processor = processor
        self.draft_min_side = DRAFT_FACTOR * processor.size["shortest_edge"] if draft else None

    def __getitem__(self, task: Task) -> Record:  # type: ignore[override]
        unit, index, source = task
        digest = ""
        try:
            if isinstance(source, HashedFile):
                data = read_member(source)
                digest = content_digest(data)
                pixels, width, height = self.processor.preprocess_file(data, self.draft_min_side, name=source.path)
            else:
                pixels, width, height = preprocess_source(self.processor, source, self.draft_min_side)
        except ImageLoadError as err:
            return Record(index, None, -1, -1, err.kind, str(err), unit, digest)
        return Record(index, pixels, width, height, "ok", "", unit, digest)


def preprocess_source(
    processor: CLIPImageProcessor, source: ImageSource, draft_min_side: int | None = None
) -> tuple[np.ndarray, int, int]:
    """``preprocess_file`` of a file or of an embedded image's bytes (named by its path in errors)."""
    if not isinstance(source, str):
        return processor.preprocess_file(read_member(source), draft_min_side, name=source.path)
    return processor.preprocess_file(source, draft_min_side)


def read_member(member: ByteSource) -> bytes:
    """A member's bytes; a file that cannot be read is the image's failure, as a missing file would be."""
    try:
        return member.read()
    except FileNotFoundError as err:
        raise ImageLoadError(member.path, "missing", "no such file") from err
    except (OSError, ValueError) as err:
        raise ImageLoadError(member.path, "unreadable", str(err)) from err


def keep_records(records: list[Record]) -> list[Record]:
    """The collate of ``ImageFiles``: a batch is the list of its records."""
    return records


def image_batches(
    tasks: Iterable[list[Task]], processor: CLIPImageProcessor, workers: int, draft: bool
) -> Iterator[list[Record]]:
    """Records of each batch of tasks, in order, decoded in ``workers`` processes.

    ``tasks`` is iterated lazily in this process, a few batches ahead of the decoding: it may find its work
    as it goes (scan the next shard, say).
    """
    loader = DataLoader(
        ImageFiles(processor, draft),
        batch_sampler=tasks,  # type: ignore[arg-type]
        num_workers=workers,
        collate_fn=keep_records,
        prefetch_factor=4 if workers else None,
        worker_init_fn=die_with_parent if workers else None,
    )
    yield from loader


def file_tasks(paths: Sequence[ImageSource], batch_size: int) -> list[list[Task]]:
    """Batches of tasks reading ``paths`` in order."""
    return [
        [(0, i, paths[i]) for i in range(start, min(start + batch_size, len(paths)))]
        for start in range(0, len(paths), batch_size)
    ]
