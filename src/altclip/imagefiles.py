"""Image files decoded and preprocessed in worker processes; a file that fails becomes a record, not a raise.

Everything here crosses a process boundary, so it is module-level and pickles under every start method
(fork, spawn, forkserver).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader, Dataset

from altclip.image import CLIPImageProcessor, ImageLoadError

DRAFT_FACTOR = 2  # draft decoding keeps at least twice the resize target: see benchmarks/folder.py


@dataclass
class Record:
    """One file's outcome: its pixels (None unless ``status`` is "ok"), size and error."""

    index: int
    pixels: np.ndarray | None
    width: int
    height: int
    status: str
    error: str


class ImageFiles(Dataset):
    """``paths[i]`` for ``i`` in ``indices``, decoded and preprocessed, one ``Record`` per item.

    ``draft``: decode JPEGs at a reduced scale, no smaller than ``DRAFT_FACTOR`` times the resize target.
    """

    def __init__(self, paths: list[str], indices: list[int], processor: CLIPImageProcessor, draft: bool) -> None:
        self.paths, self.indices, self.processor = paths, indices, processor
        self.draft_min_side = DRAFT_FACTOR * processor.size["shortest_edge"] if draft else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> Record:
        index = self.indices[item]
        try:
            pixels, width, height = self.processor.preprocess_file(self.paths[index], self.draft_min_side)
        except ImageLoadError as err:
            return Record(index, None, -1, -1, err.kind, str(err))
        return Record(index, pixels, width, height, "ok", "")


def keep_records(records: list[Record]) -> list[Record]:
    """The collate of ``ImageFiles``: a batch is the list of its records."""
    return records


def die_with_parent(worker_id: int) -> None:
    """Linux: a worker is killed when the main process dies, even by ``kill -9``.

    Otherwise an orphaned worker blocks for ever flushing its queue into a pipe no one reads.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent was already gone before the request took effect
            os._exit(1)


def image_batches(
    paths: list[str], indices: list[int], processor: CLIPImageProcessor, batch_size: int, workers: int, draft: bool
) -> Iterator[list[Record]]:
    """Records of ``paths[i]`` for ``i`` in ``indices``, in order, in batches, from ``workers`` processes."""
    loader = DataLoader(
        ImageFiles(paths, indices, processor, draft),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=keep_records,
        prefetch_factor=4 if workers else None,
        worker_init_fn=die_with_parent if workers else None,
    )
    yield from loader
