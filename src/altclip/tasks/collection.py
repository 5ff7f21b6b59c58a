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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from altclip import checkpoint
from altclip.embedding import Embedder
from altclip.imagefiles import Record, image_batches

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
        processor = embedder.processor.image_processor
        for records in image_batches(collection.files, todo, processor, batch_size, workers, draft):
            readable = [r.index for r in records if r.pixels is not None]
            embedded = (v.astype(np.float16) for v in embedder.embed_records(records))
            vectors.update(zip(readable, embedded, strict=True))
            current.update((r.index, r) for r in records)
            _flush_finished_shards(collection, current, vectors)
            bar.update(len(records))
    finally:
        bar.close()
    return write_summary(collection)


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
