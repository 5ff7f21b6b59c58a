"""Embedding a collection of images into a folder of shards: resumable, atomic, and split across processes.

A source is a folder of images (walked recursively), a text file listing image paths, or WebDataset tar
shards (one ``.tar``, a brace pattern ``shards/{00000..00127}.tar``, or a text file listing shards; see
``altclip.shards``). The output folder has clip-retrieval's layout, so embedding-reader, autofaiss and
clip-retrieval's own tools read it as they read theirs::

    manifest.json                      source, kind, model, shard count and size, dimension (written first)
    files.json                         the fixed list of image files, or of tar shards
    img_emb/img_emb_00000.npy          float16 unit vectors of the shard's readable images
    text_emb/text_emb_00000.npy        with captions: their vectors, row for row (zeros where none)
    metadata/metadata_00000.parquet    one row per vector, aligned: image_path, key, caption, width, height, ...
    failures/failures_00000.parquet    what was skipped and why: image_path, key, status, error
    summary.json                       counts by status, after the last shard
    index/                             the FAISS index (see ``altclip.tasks.index``)

Shard ``k`` is files ``k * shard_size`` to ``(k + 1) * shard_size`` of a folder, or tar shard ``k``. Its
files are written in the order above, each via a temporary file and a rename, the metadata last: a shard is
finished exactly when its metadata exists. An interrupted run (Ctrl-C, ``kill -9``) loses at most the shards
it was on, and the same command skips finished shards and goes on. Unreadable images become rows of the
shard's failures table; they never stop the run.

Several processes (``torchrun``): process ``r`` of ``w`` embeds shards ``r, r + w, ...``; process 0 creates
the folder first and writes the summary after everyone is done. A batch never spans two shards, so every
vector is computed in the same batch however the shards are shared out, and the folder equals a
one-process run's.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from altclip import checkpoint, distributed
from altclip.embedding import Embedder
from altclip.imagefiles import ImageSource, Record, Task, image_batches
from altclip.shards import TarMember, expand_shards, is_shard_spec, scan_shard, scanned_ahead

VERSION = 2
MANIFEST, FILES, SUMMARY = "manifest.json", "files.json", "summary.json"
SUMMARY_FAILURES = 1000  # failures listed in summary.json; every one is in failures/
BASE_SCHEMA = pa.schema(
    [
        ("image_path", pa.string()),
        ("key", pa.string()),
        ("caption", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
FAILURE_SCHEMA = pa.schema(
    [("image_path", pa.string()), ("key", pa.string()), ("status", pa.string()), ("error", pa.string())]
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
class Item:
    """One sample of a shard: where its image is (None: the sample has none) and what the source says of it."""

    path: str  # the file, or "{tar shard}/{member}"
    key: str
    source: ImageSource | None
    caption: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class ShardFiles(NamedTuple):
    img: Path
    text: Path
    metadata: Path
    failures: Path


@dataclass
class Collection:
    """An output folder of ``embed_collection``: its manifest, its source files and its finished shards."""

    folder: Path
    manifest: dict[str, Any]
    files: list[str]  # image files, or tar shards
    mapped: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)  # see shard_embeddings

    @classmethod
    def open(cls, folder: str | Path) -> Collection:
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise FileNotFoundError(f"{folder} is not an embedding folder (no {MANIFEST}); run `altclip embed` first")
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("version") != VERSION:
            raise ValueError(
                f"{folder} was written by an older altclip (layout {manifest.get('version')}, now {VERSION}); "
                "run `altclip embed` again into a new folder"
            )
        return cls(folder, manifest, json.loads((folder / FILES).read_text(encoding="utf-8")))

    @property
    def dim(self) -> int:
        return self.manifest["dim"]

    def num_shards(self) -> int:
        return self.manifest["shards"]

    def shard_files(self, shard: int) -> ShardFiles:
        return ShardFiles(
            *(self.folder / kind / f"{kind}_{shard:05d}.{ext}" for kind, ext in FOLDERS),
        )

    def finished(self, shard: int) -> bool:
        return self.shard_files(shard).metadata.exists()

    def finished_shards(self) -> list[int]:
        return [s for s in range(self.num_shards()) if self.finished(s)]

    def items(self, shard: int) -> list[Item]:
        """The samples of one shard; a tar shard is scanned (``ValueError`` if it cannot be read)."""
        if self.manifest["kind"] == "tar":
            tar = self.files[shard]
            return [
                Item(s.image.path if s.image else f"{tar}/{s.key}", s.key, s.image, s.caption, s.meta)
                for s in scan_shard(tar)
            ]
        size, root = self.manifest["shard_size"], Path(self.manifest["source"])
        paths = self.files[shard * size : (shard + 1) * size]
        return [Item(p, _relative(p, root), p) for p in paths]

    def metadata(self, columns: list[str] | None = None) -> pa.Table:
        """Every embedded image's row, in vector order."""
        return self._table("metadata", BASE_SCHEMA, columns)

    def failures(self) -> pa.Table:
        """Every skipped sample: its path, key, status and error."""
        return self._table("failures", FAILURE_SCHEMA, None)

    def _table(self, kind: str, schema: pa.Schema, columns: list[str] | None) -> pa.Table:
        paths = [getattr(self.shard_files(s), kind) for s in self.finished_shards()]
        tables = [pq.read_table(p, columns=columns) for p in paths]
        if not tables:
            return schema.empty_table() if columns is None else schema.empty_table().select(columns)
        return pa.concat_tables(tables, promote_options="permissive")

    def embeddings(self, kind: str = "img") -> np.ndarray:
        """All vectors of one kind ("img" or "text") in order: row i belongs to metadata row i."""
        arrays = [np.load(getattr(self.shard_files(s), kind)) for s in self.finished_shards()]
        return np.concatenate(arrays) if arrays else np.zeros((0, self.dim), np.float16)

    def shard_embeddings(self, kind: str = "img", cached: bool = True) -> list[np.ndarray]:
        """The finished shards' vectors, one memory-mapped array a shard: what streaming readers use.

        ``cached``: map them once and keep the maps (a served collection, whose shards no longer change, is
        read this way on every request); a one-pass job passes False, so that the pages it has read are let
        go with each shard.
        """
        if cached and kind in self.mapped:
            return self.mapped[kind]
        maps = [np.load(getattr(self.shard_files(s), kind), mmap_mode="r") for s in self.finished_shards()]
        if cached:
            self.mapped[kind] = maps
        return maps

    def shard_blocks(self, kind: str = "img", block: int = 32_768) -> Iterator[np.ndarray]:
        """The vectors in blocks of at most ``block`` rows, shard after shard, each block read into memory of
        its own (not mapped): a one-pass job over more vectors than memory holds keeps one block at a time."""
        for s in self.finished_shards():
            path = getattr(self.shard_files(s), kind)
            mapped = np.load(path, mmap_mode="r")  # for its header: shape, dtype and where the data starts
            (rows, dim), dtype, start = mapped.shape, mapped.dtype, mapped.offset
            del mapped
            for first in range(0, rows, block):
                count = min(block, rows - first)
                offset = start + first * dim * dtype.itemsize
                yield np.fromfile(path, dtype, count * dim, offset=offset).reshape(count, dim)

    def count(self) -> int:
        """Vectors in the finished shards, from the .npy headers alone."""
        return sum(len(v) for v in self.shard_embeddings(cached=False))

    def ok_paths(self) -> list[str]:
        return self.metadata(["image_path"])["image_path"].to_pylist()

    def image_sources(self) -> list[ImageSource]:
        """Where each vector's image can be read, in vector order: its file, or its tar member."""
        if self.manifest["kind"] != "tar":
            return self.ok_paths()  # type: ignore[return-value]
        sources: list[ImageSource] = []
        for s in self.finished_shards():
            shard = self.files[s]
            table = pq.read_table(self.shard_files(s).metadata, columns=["image_path", "tar_offset", "tar_size"])
            for path, offset, size in zip(*(table[c].to_pylist() for c in table.column_names), strict=True):
                sources.append(TarMember(shard, path[len(shard) + 1 :], offset, size))
        return sources


FOLDERS = (("img_emb", "npy"), ("text_emb", "npy"), ("metadata", "parquet"), ("failures", "parquet"))


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _write_json(path: Path, value: Any, indent: int | None = 2) -> None:
    checkpoint.atomic_write_bytes(path, (json.dumps(value, indent=indent, ensure_ascii=False) + "\n").encode("utf-8"))


def _write_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    checkpoint.atomic_write_bytes(path, buffer.getvalue())


def _write_parquet(path: Path, table: pa.Table) -> None:
    with checkpoint.atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _create(out: Path, source: str, recipe: dict[str, Any], shard_size: int, dim: int) -> Collection:
    """Start a new output folder, or reopen one made by the same recipe (source, model, decoding, captions)."""
    if (out / MANIFEST).exists():
        collection = Collection.open(out)
        for key, value in recipe.items():
            made = collection.manifest.get(key)
            if made != value:
                raise ValueError(f"{out} was made from {key} {made!r}, not {value!r}; use a new --out folder")
        return collection
    # a run killed before its manifest was written leaves at most files.json and temporary files
    if out.exists() and any(p.name != FILES and not p.name.startswith(".") for p in out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no {MANIFEST}; choose a new folder")
    kind = "tar" if is_shard_spec(source) else "files"
    if kind == "files" and recipe["captions"]:
        raise ValueError(f"{source}: captions come from tar shards' .txt members; --captions needs tar shards")
    files = expand_shards(source) if kind == "tar" else list_source(source)
    if not files:
        raise ValueError(f"{source} holds no files")
    _write_json(out / FILES, files, indent=None)
    shards = len(files) if kind == "tar" else -(-len(files) // shard_size)
    manifest = {"version": VERSION, **recipe, "kind": kind, "shards": shards, "dim": dim, "dtype": "float16"}
    if kind == "files":
        manifest.update(count=len(files), shard_size=shard_size)
    _write_json(out / MANIFEST, manifest)
    return Collection(out, manifest, files)


@dataclass
class ShardPlan:
    """Batches of tasks for the shards this process embeds, found lazily (a tar shard is scanned when its
    turn comes); ``items`` keeps each started shard's samples until it is written."""

    collection: Collection
    shards: list[int]
    batch_size: int
    items: dict[int, list[Item]] = field(default_factory=dict)
    expected: dict[int, int] = field(default_factory=dict)  # shard -> images to decode
    unreadable: dict[int, str] = field(default_factory=dict)  # shard -> why it could not be scanned

    def __iter__(self) -> Iterator[list[Task]]:
        for shard, items in zip(self.shards, scanned_ahead(self._scan, self.shards), strict=True):
            self.items[shard] = items
            tasks = [(shard, j, item.source) for j, item in enumerate(items) if item.source is not None]
            self.expected[shard] = len(tasks)
            for start in range(0, len(tasks), self.batch_size):
                yield tasks[start : start + self.batch_size]

    def _scan(self, shard: int) -> list[Item]:
        try:
            return self.collection.items(shard)
        except ValueError as err:
            self.unreadable[shard] = str(err)
            return []


@dataclass
class Embedded:
    """One decoded sample's outcome and vectors (None where not embedded)."""

    record: Record
    image: np.ndarray | None
    text: np.ndarray | None


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
    captions: bool = False,
    rank: int = 0,
    world: int = 1,
) -> dict[str, Any]:
    """Embed every image of ``source`` into ``out`` (see the module docstring); returns the summary
    (process 0; the others return an empty dict).

    ``draft``: decode large JPEGs at a reduced scale (see ``ImageFiles``); recorded in the manifest.
    ``captions``: also embed tar samples' captions into ``text_emb/``. ``rank``/``world``: this process of
    a ``torchrun`` group, which must have joined it (``altclip.distributed.setup``).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    out = Path(out)
    source = str(source) if is_shard_spec(source) else str(Path(source).resolve())
    recipe = {"source": source, "model": model_name, "draft": draft, "captions": captions}
    dim = embedder.model.config.projection_dim  # type: ignore[attr-defined]
    collection = _create(out, source, recipe, shard_size, dim) if rank == 0 else None
    distributed.barrier()
    if collection is None:  # the others open what process 0 made, and check it
        collection = _create(out, source, recipe, shard_size, dim)
    mine = [s for s in range(rank, collection.num_shards(), world) if not collection.finished(s)]
    plan = ShardPlan(collection, mine, batch_size)
    done: dict[int, dict[int, Embedded]] = {}
    bar = tqdm(unit="img", desc=f"embedding (process {rank})" if world > 1 else "embedding", disable=not progress)
    try:
        processor = embedder.processor.image_processor
        for records in image_batches(plan, processor, workers, draft):
            shard = records[0].unit
            items = plan.items[shard]
            readable = [items[r.index] for r in records if r.status == "ok"]
            texts = _caption_vectors(embedder, readable, dim) if captions else iter(())
            images = (v.astype(np.float16) for v in embedder.embed_records(records))
            slot = done.setdefault(shard, {})
            for r in records:
                ok = r.status == "ok"
                slot[r.index] = Embedded(r, next(images) if ok else None, next(texts, None) if ok else None)
            _write_finished(plan, done, captions)
            bar.update(len(records))
        _write_finished(plan, done, captions)  # shards with nothing to decode
    finally:
        bar.close()
    distributed.barrier()
    return write_summary(collection) if rank == 0 else {}


def _caption_vectors(embedder: Embedder, items: list[Item], dim: int) -> Iterator[np.ndarray]:
    """float16 vectors of the items' captions, in order; zeros for an item without one."""
    texts = [item.caption for item in items if item.caption]
    embedded = iter(embedder.embed_texts(texts).float().cpu().numpy().astype(np.float16)) if texts else iter(())
    for item in items:
        yield next(embedded) if item.caption else np.zeros(dim, np.float16)


def _write_finished(plan: ShardPlan, done: dict[int, dict[int, Embedded]], captions: bool) -> None:
    for shard in [s for s in plan.items if len(done.get(s, {})) == plan.expected[s]]:
        del plan.expected[shard]
        _write_shard(plan.collection, shard, plan.items.pop(shard), done.pop(shard, {}), plan.unreadable, captions)


def _write_shard(
    collection: Collection,
    shard: int,
    items: list[Item],
    embedded: dict[int, Embedded],
    unreadable: dict[int, str],
    captions: bool,
) -> None:
    rows, failures, images, texts = [], [], [], []
    for i, item in enumerate(items):
        if i not in embedded:
            failures.append((item.path, item.key, "no_image", f"{item.path}: the sample has no image member"))
            continue
        e = embedded[i]
        if e.image is None:
            failures.append((item.path, item.key, e.record.status, e.record.error))
            continue
        rows.append((item, e.record.width, e.record.height))
        images.append(e.image)
        texts.append(e.text)
    if shard in unreadable:
        failures.append((collection.files[shard], "", "bad_shard", unreadable.pop(shard)))
    files, dim = collection.shard_files(shard), collection.dim
    _write_npy(files.img, np.stack(images) if images else np.zeros((0, dim), np.float16))
    if captions:
        _write_npy(files.text, np.stack(texts) if texts else np.zeros((0, dim), np.float16))
    _write_parquet(
        files.failures,
        pa.Table.from_pylist([dict(zip(FAILURE_SCHEMA.names, f, strict=True)) for f in failures], FAILURE_SCHEMA),
    )
    metadata = metadata_table(rows, tar=collection.manifest["kind"] == "tar")
    _write_parquet(files.metadata, metadata)  # last: its existence marks the shard finished


def metadata_table(rows: list[tuple[Item, int, int]], tar: bool = False) -> pa.Table:
    """The base columns, where a tar sample's image lies in its shard (``tar``), then every field of the
    samples' JSON that is not one of them (nested values as JSON text; a field whose values do not share a
    type, as text)."""
    columns = {
        "image_path": pa.array([item.path for item, _, _ in rows], pa.string()),
        "key": pa.array([item.key for item, _, _ in rows], pa.string()),
        "caption": pa.array([item.caption for item, _, _ in rows], pa.string()),
        "width": pa.array([w for _, w, _ in rows], pa.int32()),
        "height": pa.array([h for _, _, h in rows], pa.int32()),
    }
    if tar:  # where each image lies in its shard, for reading it back
        members = [item.source for item, _, _ in rows]
        columns["tar_offset"] = pa.array([m.offset for m in members], pa.int64())  # type: ignore[union-attr]
        columns["tar_size"] = pa.array([m.size for m in members], pa.int64())  # type: ignore[union-attr]
    extra = dict.fromkeys(name for item, _, _ in rows for name in item.meta if name not in columns)
    for name in extra:
        values = [_scalar(item.meta.get(name)) for item, _, _ in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
    return pa.table(columns)


def _scalar(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value


def write_vectors(out: str | Path, shards: Iterable[np.ndarray], num_shards: int, dim: int, model: str) -> Collection:
    """A collection folder of vectors computed elsewhere (unit length, stored as float16), one array per
    shard, streamed: for indexing them with ``build_index`` and for benchmarks. Row ``i`` of shard ``s`` is
    named ``s/i``."""
    out = Path(out)
    recipe = {"source": "vectors", "model": model, "draft": False, "captions": False}
    manifest = {"version": VERSION, **recipe, "kind": "vectors", "shards": num_shards, "dim": dim, "dtype": "float16"}
    _write_json(out / FILES, [], indent=None)
    _write_json(out / MANIFEST, manifest)
    collection = Collection(out, manifest, [])
    written = 0
    for shard, vectors in enumerate(shards):
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise ValueError(f"shard {shard} has shape {vectors.shape}, not (rows, {dim})")
        files = collection.shard_files(shard)
        _write_npy(files.img, vectors.astype(np.float16))
        _write_parquet(files.failures, FAILURE_SCHEMA.empty_table())
        paths = [f"{shard}/{i}" for i in range(len(vectors))]
        _write_parquet(files.metadata, metadata_table([(Item(p, p, None), 0, 0) for p in paths]))
        written += 1
    if written != num_shards:
        raise ValueError(f"{written} shards given, not {num_shards}")
    write_summary(collection)
    return collection


def write_summary(collection: Collection) -> dict[str, Any]:
    failures = collection.failures()
    statuses = Counter(failures["status"].to_pylist())
    embedded = collection.count()
    summary = {
        "folder": str(collection.folder),
        "kind": collection.manifest["kind"],
        "shards": collection.num_shards(),
        "files": embedded + len(failures),
        "embedded": embedded,
        "skipped": len(failures),
        "by_status": dict(sorted({"ok": embedded, **statuses}.items())),
        "failures": [
            {"path": f["image_path"], "status": f["status"], "error": f["error"]}
            for f in failures.slice(0, SUMMARY_FAILURES).to_pylist()
        ],
    }
    if collection.manifest["captions"]:
        texts = sum(int(np.any(v != 0, axis=1).sum()) for v in collection.shard_blocks("text"))
        summary["captions"] = texts
    _write_json(collection.folder / SUMMARY, summary)
    return summary
