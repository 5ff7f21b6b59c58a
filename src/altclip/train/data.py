"""Training data: deterministic sampling across processes, and image-text pairs decoded for a batch.

The data files themselves are read by ``altclip.data.datafiles``. Images that cannot be read are skipped and
counted when their batch is built (``altclip.train.phases``); nothing bad in the data stops an epoch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from altclip.data.datafiles import Table
from altclip.data.imagefiles import preprocess_source
from altclip.data.shards import ShardSample, TarMember, scan_shard, scanned_ahead
from altclip.processing.augment import Augment, sample_rng
from altclip.processing.image import CLIPImageProcessor, ImageLoadError, to_rgb
from altclip.processing.tokenization import Tokenizer

LENGTH_GROUP = 50  # global micro-batches sorted together by length when grouping (as transformers' Trainer does)


def micro_batch_indices(
    size: int, batch: int, world: int, rank: int, seed: int, epoch: int, lengths: Sequence[int] | None = None
) -> list[list[int]]:
    """This process's index lists for one epoch.

    Every epoch is one seeded permutation cut into global micro-batches of ``batch * world`` (a short
    last one is dropped); process ``rank`` takes the ``rank``-th slice of each. One process with batch
    ``b * w`` therefore sees exactly the samples that ``w`` processes with batch ``b`` see together.

    ``lengths`` (each sample's tokens): group by length. Each run of ``LENGTH_GROUP`` global micro-batches of
    the permutation is sorted by length before it is cut, and the micro-batches are then shuffled, so a batch
    holds texts of about one length and pads little, while every sample is still seen once per epoch.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(size, generator=generator).tolist()
    span = batch * world
    order = order[: size - size % span]  # the short last micro-batch is dropped
    if lengths is not None:
        if len(lengths) != size:
            raise ValueError(f"lengths: {len(lengths)} values for {size} samples")
        group = LENGTH_GROUP * span
        order = [
            i
            for start in range(0, len(order), group)
            for i in sorted(order[start : start + group], key=lengths.__getitem__, reverse=True)
        ]
        spans = [order[start : start + span] for start in range(0, len(order), span)]
        order = [i for k in torch.randperm(len(spans), generator=generator).tolist() for i in spans[k]]
    return [order[start + rank * batch : start + (rank + 1) * batch] for start in range(0, len(order), span)]


class ImagePairs(Dataset):
    """Decoded, preprocessed image-text pairs; an unreadable image gives ``None`` and why (the collate skips it).

    Images are read as ``altclip embed`` reads them (``CLIPImageProcessor.preprocess_file``), so a file is
    skipped and counted under the same status in training as in embedding.
    """

    def __init__(self, table: Table, processor: CLIPImageProcessor) -> None:
        self.rows, self.processor = table.rows, processor
        self.decoded: dict[str, tuple[np.ndarray | None, str]] | None = None  # image -> ``pair``'s answer

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[np.ndarray | None, str]:
        row = self.rows[index]
        if self.decoded is None:
            return self.pair(row)
        pixels, why = self.decoded[row["image"]]
        return (pixels, row["caption"]) if pixels is not None else (None, why)

    def preload(self, progress: bool = False) -> None:
        """Decode each distinct image once, now, and keep its pixels (or why it could not be read): for a small
        data set read for many epochs. The loader's workers inherit them."""
        images = sorted({row["image"] for row in self.rows})
        bar = tqdm(images, desc="decoding images", unit="image", disable=not progress, dynamic_ncols=True)
        self.decoded = {image: self.pair({"image": image, "caption": ""}) for image in bar}

    def pair(self, row: dict[str, Any], transform: Callable[[Image.Image], Image.Image] | None = None) -> Any:
        """(pixels, caption), or (None, the failure's kind); ``transform``: see ``preprocess_file``."""
        try:
            pixels, _, _ = self.processor.preprocess_file(row["image"], transform=transform)
        except ImageLoadError as err:
            return None, err.kind
        return pixels, row["caption"]


class AugmentedPairs(ImagePairs):
    """``ImagePairs`` whose images are augmented (``altclip.processing.augment``) before preprocessing. Its keys
    are (epoch, index): the ``Trainer`` passes the epoch to a dataset that says ``per_epoch``, so each sample's
    draw depends on the run's seed, the epoch and the sample alone."""

    per_epoch = True

    def __init__(self, pairs: ImagePairs, augment: Augment, seed: int) -> None:
        self.rows, self.processor = pairs.rows, pairs.processor
        self.augment, self.seed = augment, seed

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray | None, str]:  # type: ignore[override]
        epoch, index = key
        row, crop = self.rows[index], self.processor.crop_size
        rng = sample_rng(self.seed, epoch, index)

        def augment(image: Image.Image) -> Image.Image:
            rgb = Image.fromarray(to_rgb(image, str(row["image"])))
            return self.augment(rgb, (crop["height"], crop["width"]), rng)

        return self.pair(row, augment)


def tokens(tokenizer: Tokenizer, texts: list[str], limit: int, prefix: str = "") -> dict[str, torch.Tensor]:
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    return {f"{prefix}ids": encoded["input_ids"], f"{prefix}mask": encoded["attention_mask"]}


@dataclass
class ParallelCollate:
    """Rows of parallel text -> the teacher's tokens of ``src`` and the student's of ``src`` and ``tgt``."""

    teacher_tokenizer: Tokenizer
    teacher_limit: int
    student_tokenizer: Tokenizer
    student_limit: int

    def __call__(self, rows: list[dict[str, str]]) -> dict[str, Any]:
        src, tgt = [r["src"] for r in rows], [r["tgt"] for r in rows]
        return {
            "size": len(rows),
            **tokens(self.teacher_tokenizer, src, self.teacher_limit, "teacher_"),
            **tokens(self.student_tokenizer, src, self.student_limit, "src_"),
            **tokens(self.student_tokenizer, tgt, self.student_limit, "tgt_"),
        }


@dataclass
class PairCollate:
    """Decoded pairs -> tokens and pixels of the readable ones; what was skipped travels with the batch.

    A batch whose every image was unreadable still has its tensors, with zero rows, so that each process
    of a distributed run takes part in every collective.
    """

    tokenizer: Tokenizer
    limit: int
    image_shape: tuple[int, int, int]  # (channels, height, width) of the preprocessed pixels

    def __call__(self, items: list[tuple[np.ndarray | None, str]]) -> dict[str, Any]:
        good = [(pixels, caption) for pixels, caption in items if pixels is not None]
        encoded = tokens(self.tokenizer, [c for _, c in good], self.limit) if good else None
        return {
            "size": len(good),
            "skipped": [f"image: {kind}" for pixels, kind in items if pixels is None],
            "input_ids": encoded["ids"] if encoded else torch.zeros(0, 1, dtype=torch.long),
            "attention_mask": encoded["mask"] if encoded else torch.zeros(0, 1, dtype=torch.long),
            "pixel_values": torch.from_numpy(np.stack([p for p, _ in good]))
            if good
            else torch.zeros(0, *self.image_shape),
        }


# -- tar shards -------------------------------------------------------------------------------------

SHUFFLE_BUFFER = 2000
POSITIONS_KEPT = 256  # stream positions remembered for batches handed out but not yet consumed


def pair_task(sample: ShardSample) -> tuple[list[Any] | None, str]:
    """An image-text sample as a task the loader's workers can read: ([shard, member, offset, size, caption],
    ""), or (None, why it is unusable)."""
    if sample.image is None:
        return None, "no image"
    if not sample.caption:
        return None, "no caption"
    image = sample.image
    return [image.shard, image.name, image.offset, image.size, sample.caption], ""


def parallel_task(sample: ShardSample) -> tuple[list[Any] | None, str]:
    """A parallel-text sample (``KEY.src.txt``, ``KEY.tgt.txt``, the language in ``KEY.json``) as a row."""
    src, tgt = sample.texts.get("src.txt", ""), sample.texts.get("tgt.txt", "")
    if not src or not tgt:
        return None, "no src.txt and tgt.txt"
    return [src, tgt, str(sample.meta.get("lang", ""))], ""


@dataclass
class ShardStream:
    """Tasks from tar shards in a seeded order that resumes exactly, the way WebDataset streams them.

    Each epoch the shards are shuffled (seed, epoch) and dealt out to the processes, ``rank::world``. A process
    reads its shards in turn, one scan each (``altclip.data.shards``), into a shuffle buffer, and draws from the
    buffer at random. Its position, after each batch handed out, is the shard it is in, the offset in it, the
    buffer and the generator's state: a checkpoint saves it, and the stream restarts there.
    """

    shards: list[str]
    make_task: Callable[[ShardSample], tuple[list[Any] | None, str]]
    buffer_size: int = SHUFFLE_BUFFER
    skipped: Counter = field(default_factory=Counter)
    positions: dict[int, dict[str, Any]] = field(default_factory=dict)

    def batches(
        self, batch: int, world: int, rank: int, seed: int, epoch: int, start: dict[str, Any] | None = None
    ) -> Iterator[list[list[Any]]]:
        """This process's batches of one epoch, from ``start`` (a saved position) or from the epoch's start."""
        order = np.random.default_rng([seed, epoch]).permutation(len(self.shards))
        mine = [self.shards[i] for i in order[rank::world]]
        if start is None:
            start = {"micro": 0, "shard": 0, "offset": 0, "buffer": [], "rng": None}
        rng = np.random.default_rng([seed, epoch, rank])
        if start["rng"] is not None:
            rng.bit_generator.state = start["rng"]
        micro, buffer = start["micro"], list(start["buffer"])
        shard, offset = start["shard"], start["offset"]
        samples = self._samples(mine, shard, offset)
        self.positions.clear()
        while True:
            drawn: list[list[Any]] = []
            while len(drawn) < batch:
                while len(buffer) < self.buffer_size:  # fill from the shards
                    following = next(samples, None)
                    if following is None:
                        break
                    shard, offset, sample = following
                    task, why = self.make_task(sample)
                    if task is None:
                        self.skipped[f"data: {why}"] += 1
                    else:
                        buffer.append(task)
                if not buffer:
                    return  # the last, short batch is dropped, as with the other data
                pick = int(rng.integers(len(buffer)))
                buffer[pick], buffer[-1] = buffer[-1], buffer[pick]
                drawn.append(buffer.pop())
            micro += 1
            self.positions[micro] = {
                "micro": micro,
                "shard": shard,
                "offset": offset,
                "buffer": list(buffer),
                "rng": rng.bit_generator.state,
                "shard_path": mine[shard] if shard < len(mine) else None,  # for people reading the checkpoint
            }
            self.positions.pop(micro - POSITIONS_KEPT, None)
            yield drawn

    def _samples(self, mine: list[str], shard: int, offset: int) -> Iterator[tuple[int, int, ShardSample]]:
        """The samples from a position on, each with the position after it (its shard, the offset past it).
        The next shard is scanned on a thread while this one is read."""
        for found, error in scanned_ahead(_scan, mine[shard:]):
            if error:  # a shard that cannot be read is skipped and counted, like a bad line
                self.skipped["data: unreadable shard"] += 1
            for i in range(offset, len(found)):
                yield shard, i + 1, found[i]
            shard, offset = shard + 1, 0

    def position(self, micro: int) -> dict[str, Any] | None:
        """Where the stream stood after handing out ``micro`` batches of this epoch (None: at its start)."""
        if micro and micro not in self.positions:
            raise RuntimeError(f"the stream's position after batch {micro} was not kept")
        return self.positions[micro] if micro else None


def _scan(shard: str) -> tuple[list[ShardSample], str]:
    try:
        return scan_shard(shard), ""
    except ValueError as err:
        return [], str(err)


class ShardPairs(Dataset):
    """Image-text pairs from tar shards, indexed by ``pair_task`` tasks: (pixels, caption), or (None, why)."""

    def __init__(self, processor: CLIPImageProcessor) -> None:
        self.processor = processor

    def __getitem__(self, task: list[Any]) -> tuple[np.ndarray | None, str]:  # type: ignore[override]
        shard, name, offset, size, caption = task
        try:
            pixels, _, _ = preprocess_source(self.processor, TarMember(shard, name, offset, size))
        except ImageLoadError as err:
            return None, err.kind
        return pixels, caption


class ShardParallel(Dataset):
    """Parallel-text rows from tar shards, indexed by ``parallel_task`` tasks."""

    def __getitem__(self, task: list[Any]) -> dict[str, str]:  # type: ignore[override]
        src, tgt, lang = task
        return {"src": src, "tgt": tgt, "lang": lang}
