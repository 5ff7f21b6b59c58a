"""Embedding a collection of images into a folder of shards, resumable and atomic.

Layout of the output folder::

    manifest.json                     source, model, count, shard size, dimension (written first)
    files.json                        the fixed list of image paths (the order every shard follows)
    embeddings/emb-00000.npy          float16 unit vectors of the shard's readable images
    metadata/meta-00000.parquet       one row per file: path, width, height, status, error, embedding_row
    summary.json                      counts by status, after the last shard
    index/                            the FAISS index (see ``altclip.tasks.index``)

Shard ``k`` holds files ``k * shard_size`` to ``(k + 1) * shard_size``. A shard's ``.npy`` is written
before its ``.parquet`` (each via a temporary file and a rename), so a shard is finished exactly when its
parquet exists. A run that is interrupted (Ctrl-C, ``kill -9``) loses at most the shard it was on; the
same command skips finished shards and continues, so no row is lost or written twice. Unreadable files
become rows with a ``status`` other than ``ok`` and ``embedding_row`` -1; they never stop the run.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from altclip import checkpoint
from altclip.image import CLIPImageProcessor, ImageLoadError, load_image
from altclip.tasks.embedding import Embedder

DRAFT_FACTOR = 2  # draft decoding keeps at least twice the resize target: see benchmarks/folder.py
MANIFEST, FILES, SUMMARY = "manifest.json", "files.json", "summary.json"
METADATA_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("embedding_row", pa.int64()),
    ]
)


def list_source(source: str | Path) -> list[str]:
    """A folder (walked recursively, hidden entries skipped, sorted) or a text file of paths, one per line
    (relative ones taken from the file's folder). Paths come back absolute."""
    source = Path(source).resolve()
    if source.is_dir():
        found = []
        for root, dirs, files in os.walk(source):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(str(Path(root, f)) for f in sorted(files) if not f.startswith("."))
        return found
    if source.is_file():
        base = source.parent
        lines = source.read_text(encoding="utf-8").splitlines()
        return [str(p if Path(p).is_absolute() else base / p) for p in (line.strip() for line in lines) if p]
    raise FileNotFoundError(f"{source} is neither a folder nor a file listing image paths")


@dataclass
class Record:
    index: int
    pixels: np.ndarray | None
    width: int
    height: int
    status: str
    error: str


class ImageFiles(Dataset):
    """Decodes and preprocesses one file per item in worker processes; failures become records, not raises.

    ``draft``: decode JPEGs at a reduced scale, no smaller than ``DRAFT_FACTOR`` times the resize target.
    """

    def __init__(self, paths: list[str], indices: list[int], processor: CLIPImageProcessor, draft: bool) -> None:
        self.paths, self.indices, self.processor = paths, indices, processor
        self.draft_min_side = DRAFT_FACTOR * processor.size["shortest_edge"] if draft else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> Record:
        index = self.indices[item]
        path = self.paths[index]
        try:
            image = load_image(path, self.draft_min_side)
            width, height = image.size
            return Record(index, self.processor.preprocess_one(image, path), width, height, "ok", "")
        except ImageLoadError as err:
            return Record(index, None, -1, -1, err.kind, str(err))
        except Exception as err:  # a decoder bug must not end a long job: report the file and go on
            return Record(index, None, -1, -1, "unreadable", f"{path}: {type(err).__name__}: {err}")


def _collate(records: list[Record]) -> list[Record]:
    return records


def _die_with_parent(worker_id: int) -> None:
    """Linux: a worker is killed when the main process dies, even by ``kill -9``.

    Otherwise an orphaned worker blocks for ever flushing its queue into a pipe no one reads.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent was already gone before the request took effect
            os._exit(1)


@dataclass
class Collection:
    """An output folder of ``embed_collection``: its manifest, files and finished shards."""

    folder: Path
    manifest: dict[str, Any]
    files: list[str]

    @classmethod
    def open(cls, folder: str | Path) -> Collection:
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise FileNotFoundError(f"{folder} is not an embedding folder (no {MANIFEST}); run `altclip embed` first")
        return cls(
            folder,
            json.loads((folder / MANIFEST).read_text(encoding="utf-8")),
            json.loads((folder / FILES).read_text(encoding="utf-8")),
        )

    def shard_paths(self, shard: int) -> tuple[Path, Path]:
        return (
            self.folder / "embeddings" / f"emb-{shard:05d}.npy",
            self.folder / "metadata" / f"meta-{shard:05d}.parquet",
        )

    def num_shards(self) -> int:
        m = self.manifest
        return -(-m["count"] // m["shard_size"])

    def finished(self, shard: int) -> bool:
        return self.shard_paths(shard)[1].exists()

    def metadata(self) -> pa.Table:
        tables = [pq.read_table(self.shard_paths(s)[1]) for s in range(self.num_shards()) if self.finished(s)]
        return pa.concat_tables(tables) if tables else METADATA_SCHEMA.empty_table()

    def embeddings(self) -> np.ndarray:
        """All readable images' vectors, in file order: row i belongs to the i-th ``ok`` metadata row."""
        arrays = [np.load(self.shard_paths(s)[0]) for s in range(self.num_shards()) if self.finished(s)]
        dim = self.manifest["dim"]
        return np.concatenate(arrays) if arrays else np.zeros((0, dim), np.float16)

    def ok_paths(self) -> list[str]:
        table = self.metadata()
        return [p for p, s in zip(table["path"].to_pylist(), table["status"].to_pylist(), strict=True) if s == "ok"]


def _write_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    checkpoint.atomic_write_bytes(path, buffer.getvalue())


def _write_parquet(path: Path, table: pa.Table) -> None:
    with checkpoint.atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _open(out: Path, source: str | Path, model: str, shard_size: int, dim: int, draft: bool) -> Collection:
    """Start a new output folder, or reopen one made by the same source, model and decoding."""
    if (out / MANIFEST).exists():
        collection = Collection.open(out)
        manifest = collection.manifest
        for key, value in (("source", str(source)), ("model", model), ("draft", draft)):
            made = manifest.get(key, False)  # folders from before draft decoding decoded in full
            if made != value:
                raise ValueError(f"{out} was made from {key} {made!r}, not {value!r}; use a new --out folder")
        return collection
    # a run killed before its manifest was written leaves at most files.json and temporary files
    if out.exists() and any(p.name != FILES and not p.name.startswith(".") for p in out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no {MANIFEST}; choose a new folder")
    paths = list_source(source)
    if not paths:
        raise ValueError(f"{source} holds no files")
    checkpoint.atomic_write_bytes(out / FILES, json.dumps(paths, ensure_ascii=False).encode("utf-8"))
    manifest = {
        "version": 1,
        "source": str(source),
        "model": model,
        "count": len(paths),
        "shard_size": shard_size,
        "dim": dim,
        "dtype": "float16",
        "draft": draft,
    }
    checkpoint.atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    return Collection(out, manifest, paths)


def _records(
    embedder: Embedder, paths: list[str], todo: list[int], batch_size: int, workers: int, draft: bool
) -> Iterator[list[Record]]:
    """Decoded files ``paths[i]`` for ``i`` in ``todo``, in order, in batches, from worker processes."""
    dataset = ImageFiles(paths, todo, embedder.processor.image_processor, draft)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=4 if workers else None,
        worker_init_fn=_die_with_parent if workers else None,
    )
    yield from loader


def embed_collection(
    source: str | Path,
    out: str | Path,
    embedder: Embedder,
    model_name: str,
    *,
    batch_size: int = 32,
    workers: int = 2,
    shard_size: int = 10_000,
    progress: bool = True,
    draft: bool = False,
) -> dict[str, Any]:
    """Embed every image of ``source`` into ``out`` (see the module docstring); returns the summary.

    ``draft``: decode large JPEGs at a reduced scale (see ``ImageFiles``); recorded in the manifest.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    out, source = Path(out), Path(source).resolve()
    dim = embedder.model.config.projection_dim  # type: ignore[attr-defined]
    collection = _open(out, source, model_name, shard_size, dim, draft)
    shard_size, count = collection.manifest["shard_size"], collection.manifest["count"]
    pending = [s for s in range(collection.num_shards()) if not collection.finished(s)]
    todo = [i for s in pending for i in range(s * shard_size, min((s + 1) * shard_size, count))]

    current: dict[int, Record] = {}
    vectors: dict[int, np.ndarray] = {}
    bar = tqdm(
        total=count, initial=count - len(todo), unit="img", desc="embedding", disable=not progress, dynamic_ncols=True
    )
    try:
        for records in _records(embedder, collection.files, todo, batch_size, workers, draft):
            vectors.update({i: v.astype(np.float16) for i, v in _embed_records(embedder, records).items()})
            for r in records:
                r.pixels = None
                current[r.index] = r
            _flush_finished_shards(collection, current, vectors)
            bar.update(len(records))
    finally:
        bar.close()
    return write_summary(collection)


def _embed_records(embedder: Embedder, records: list[Record]) -> dict[int, np.ndarray]:
    """Embed the decoded records of a batch: file index -> float32 unit vector."""
    good = [r for r in records if r.pixels is not None]
    if not good:
        return {}
    embedded = embedder.embed_pixels(torch.from_numpy(np.stack([r.pixels for r in good]))).float().cpu().numpy()
    return {r.index: v for r, v in zip(good, embedded, strict=True)}


def embed_files(
    embedder: Embedder,
    paths: list[str],
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
) -> tuple[torch.Tensor, list[Record]]:
    """Unit vectors of the readable files, in order, and a record (status, size, error) per file."""
    vectors: dict[int, np.ndarray] = {}
    records: list[Record] = []
    with tqdm(total=len(paths), unit="img", desc="embedding images", disable=not progress, dynamic_ncols=True) as bar:
        for batch in _records(embedder, paths, list(range(len(paths))), batch_size, workers, draft=False):
            vectors.update(_embed_records(embedder, batch))
            for r in batch:
                r.pixels = None
            records += batch
            bar.update(len(batch))
    dim = embedder.model.config.projection_dim  # type: ignore[attr-defined]
    ok = [vectors[r.index] for r in records if r.status == "ok"]
    return torch.from_numpy(np.stack(ok)) if ok else torch.zeros(0, dim), records


def _flush_finished_shards(collection: Collection, current: dict[int, Record], vectors: dict[int, np.ndarray]) -> None:
    shard_size, count = collection.manifest["shard_size"], collection.manifest["count"]
    for shard in sorted({i // shard_size for i in current}):
        span = range(shard * shard_size, min((shard + 1) * shard_size, count))
        if not all(i in current for i in span):
            continue
        records = [current.pop(i) for i in span]
        rows, ok = [], []
        for r in records:
            row = len(ok) if r.status == "ok" else -1
            if r.status == "ok":
                ok.append(vectors.pop(r.index))
            rows.append((collection.files[r.index], r.width, r.height, r.status, r.error, row))
        emb_path, meta_path = collection.shard_paths(shard)
        dim = collection.manifest["dim"]
        _write_npy(emb_path, np.stack(ok) if ok else np.zeros((0, dim), np.float16))
        table = pa.Table.from_pylist(
            [dict(zip(METADATA_SCHEMA.names, row, strict=True)) for row in rows], schema=METADATA_SCHEMA
        )
        _write_parquet(meta_path, table)  # last: its existence marks the shard finished


def write_summary(collection: Collection) -> dict[str, Any]:
    table = collection.metadata()
    statuses = Counter(table["status"].to_pylist())
    failures = [
        {"path": p, "status": s, "error": e}
        for p, s, e in zip(
            table["path"].to_pylist(), table["status"].to_pylist(), table["error"].to_pylist(), strict=True
        )
        if s != "ok"
    ]
    summary = {
        "folder": str(collection.folder),
        "files": collection.manifest["count"],
        "embedded": statuses["ok"],
        "skipped": sum(v for k, v in statuses.items() if k != "ok"),
        "by_status": dict(sorted(statuses.items())),
        "failures": failures,
    }
    text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    checkpoint.atomic_write_bytes(collection.folder / SUMMARY, text.encode("utf-8"))
    return summary
