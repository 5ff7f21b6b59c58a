"""The two phases of AltCLIP's recipe, as ``Phase`` objects for the loop: objective, data, collate, processor.

Everything a phase hands the data loader (dataset, collate) is a module-level object, so loader workers
start under any multiprocessing start method (spawn on macOS, forkserver from Python 3.14 on Linux).
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from altclip.data.datafiles import ParallelLines, read_pairs
from altclip.data.shards import expand_shards, is_shard_spec
from altclip.modeling.models import AltCLIPModel, CLIPModel
from altclip.processing.processor import AltCLIPProcessor
from altclip.processing.tokenization import CLIPTokenizer, Tokenizer
from altclip.runtime.loading import load_pretrained, text_token_limit
from altclip.train.data import (
    SHUFFLE_BUFFER,
    ImagePairs,
    PairCollate,
    ParallelCollate,
    ShardPairs,
    ShardParallel,
    ShardStream,
    pair_task,
    parallel_task,
)
from altclip.train.loop import Phase
from altclip.train.objectives import Contrastive, Distillation


def distillation_phase(
    teacher: str | Path,
    student: str | Path,
    data: str | Path,
    shuffle_buffer: int = SHUFFLE_BUFFER,
    cache_targets: bool = False,
    source_fraction: float = 1.0,
) -> Phase:
    """Phase 1 on parallel text: the teacher is a CLIP checkpoint, the student an AltCLIP one.

    ``cache_targets``: compute the teacher's target once per distinct English sentence (``FrozenOutputs``),
    where each English sentence comes with many translations. ``source_fraction``: see ``Distillation``.

    ``data``: a TSV or JSONL file, read by line offset and never whole (``ParallelLines``), or tar shards
    whose samples hold ``KEY.src.txt`` and ``KEY.tgt.txt`` (and the language in ``KEY.json``), streamed.
    """
    teacher_model = CLIPModel.from_pretrained(teacher)
    teacher_tokenizer = CLIPTokenizer.from_pretrained(teacher)
    student_model = AltCLIPModel.from_pretrained(student)
    processor = AltCLIPProcessor.from_pretrained(student)
    collate = ParallelCollate(
        teacher_tokenizer,
        text_token_limit(teacher_model.config.text_config, teacher_tokenizer),
        processor.tokenizer,
        text_token_limit(student_model.config.text_config, processor.tokenizer),
    )
    objective = Distillation(teacher_model, student_model, cache_targets, source_fraction)
    if is_shard_spec(data):
        stream = ShardStream(expand_shards(data), parallel_task, shuffle_buffer)
        return Phase(objective, student_model, processor, ShardParallel(), collate, stream=stream)
    lines = ParallelLines(data)
    skipped = Counter({f"data: {k}": v for k, v in lines.skipped.items()})
    lengths = functools.partial(text_lengths, processor.tokenizer, lines, ("src", "tgt"))
    return Phase(objective, student_model, processor, lines, collate, skipped, lengths=lengths)  # type: ignore[arg-type]


def contrastive_phase(
    model_path: str | Path,
    data: str | Path,
    freeze_vision: bool = True,
    local_loss: bool = False,
    shuffle_buffer: int = SHUFFLE_BUFFER,
    cache_images: bool = False,
) -> Phase:
    """Phase 2 on image-text pairs (also how a CLIP teacher itself is trained, with the vision tower free).

    ``data``: a JSONL or CSV file of pairs, or WebDataset tar shards (``KEY.jpg`` + ``KEY.txt``), streamed
    through a shuffle buffer of ``shuffle_buffer`` samples, the shards dealt out between the processes.

    ``local_loss``: each process scores its own rows against the gathered batch (open_clip's ``local_loss``);
    the same loss and gradients, less memory and compute per process on large global batches.

    ``cache_images``: for small data sets read many times, decode each distinct image once and keep its pixels
    (``ImagePairs.preload``); with the image tower frozen, also compute each one's features once
    (``FrozenOutputs``), where every image comes with many captions (several languages, say). Streamed shards
    keep neither.
    """
    model, processor = load_pretrained(model_path, device="cpu")
    image_processor = processor.image_processor
    crop = image_processor.crop_size
    collate = PairCollate(
        processor.tokenizer,
        text_token_limit(model.config.text_config, processor.tokenizer),
        (3, crop["height"], crop["width"]),
    )
    objective = Contrastive(model, freeze_vision, local_loss, cache_images and freeze_vision)  # type: ignore[arg-type]
    if is_shard_spec(data):
        stream = ShardStream(expand_shards(data), pair_task, shuffle_buffer)
        return Phase(objective, model, processor, ShardPairs(image_processor), collate, stream=stream)  # type: ignore[arg-type]
    table = read_pairs(data)
    skipped = Counter({f"data: {k}": v for k, v in table.skipped.items()})
    lengths = functools.partial(text_lengths, processor.tokenizer, table.rows, ("caption",))
    dataset = ImagePairs(table, image_processor)
    if cache_images:
        dataset.preload()
    return Phase(objective, model, processor, dataset, collate, skipped, lengths=lengths)  # type: ignore[arg-type]


def text_lengths(tokenizer: Tokenizer, rows: Iterable[dict[str, str]], keys: tuple[str, ...]) -> list[int]:
    """Each row's tokens, summed over its texts ``keys``: what ``--group-by-length`` sorts by."""
    lengths: list[int] = []
    rows = iter(rows)
    while chunk := list(itertools.islice(rows, 4096)):
        counts = [[len(ids) for ids in tokenizer([row[key] for row in chunk])["input_ids"]] for key in keys]
        lengths += [sum(per_row) for per_row in zip(*counts, strict=True)]
    return lengths
