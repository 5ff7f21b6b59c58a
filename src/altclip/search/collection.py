"""Embedding a collection of images into a folder of parts: resumable, atomic, and split across processes.

A source is a folder of images (walked recursively), a text file listing image paths, or WebDataset tar
shards (one ``.tar``, a brace pattern ``shards/{00000..00127}.tar``, or a text file listing shards; see
``altclip.data.shards``). The output folder has clip-retrieval's layout, so embedding-reader, autofaiss and
clip-retrieval's own tools read it as they read theirs::

    manifest.json                      source, kind, model, part count and size, dimension (written first)
    files.json                         the fixed list of image files, or of tar shards
    img_emb/img_emb_00000.npy          float16 unit vectors of the part's readable images
    text_emb/text_emb_00000.npy        with captions: their vectors, row for row (zeros where none)
    metadata/metadata_00000.parquet    one row per vector, aligned: image_path, key, caption, width, height, ...
    failures/failures_00000.parquet    what was skipped and why: image_path, key, status, error
    summary.json                       counts by status, after the last part
    index/                             the FAISS index (see ``altclip.search.index``)

Part ``k`` is files ``k * part_size`` to ``(k + 1) * part_size`` of a folder, or tar shard ``k``. Its
files are written in the order above, each via a temporary file and a rename, the metadata last: a part is
finished exactly when its metadata exists. An interrupted run (Ctrl-C, ``kill -9``) loses at most the parts
it was on, and the same command skips finished parts and goes on. Unreadable images become rows of the
part's failures table; they never stop the run.

Several processes (``torchrun``): process ``r`` of ``w`` embeds parts ``r, r + w, ...``; process 0 creates
the folder first and writes the summary after everyone is done. A batch never spans two parts, so every
vector is computed in the same batch however the parts are shared out, and the folder equals a
one-process run's.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from altclip.data.imagefiles import ImageSource, Record, Task, image_batches
from altclip.data.shards import TarMember, expand_shards, is_shard_spec, scan_shard, scanned_ahead
from altclip.embedder import Embedder
from altclip.errors import InputError, MissingFileError
from altclip.files import atomic_path, read_json, write_json, write_npy
from altclip.runtime import distributed
from altclip.tables import Result, format_table

VERSION = 4  # 2 called parts "shards" in the manifest; 4 made folder collections updatable (``search.update``)
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
    raise MissingFileError(f"{source} is neither a folder nor a file listing image paths")


@dataclass(frozen=True)
class Manifest(Result):
    """What made a collection folder and how it is cut into parts; ``manifest.json`` holds it."""

    source: str  # the folder, list or shard pattern embedded ("vectors": computed elsewhere)
    model: str
    draft: bool  # large JPEGs decoded at reduced scale
    captions: bool  # tar samples' captions embedded into text_emb/
    kind: str  # "files", "tar" or "vectors"
    parts: int
    dim: int
    dtype: str = "float16"
    count: int | None = None  # files before layout 4: how many image files the source listed
    part_size: int | None = None  # files before layout 4: images per part
    version: int = VERSION
    revision: str | None = None  # a hub model's commit (``model`` is then its hub name, else an absolute path)
    precision: str | None = None  # what the vectors were computed in: float32, bfloat16, float16 or int8
    backend: str | None = None  # torch, compile or onnx
    preprocessing: dict[str, Any] | None = None  # the image processor's settings
    adapter: dict[str, str] | None = None  # a LoRA adapter merged into the model: its folder and weights' digest

    # what must match for a run to resume or update a folder
    RECIPE = ("source", "model", "revision", "draft", "captions", "precision", "backend", "preprocessing", "adapter")

    @classmethod
    def from_json(cls, values: dict[str, Any], where: Path) -> Manifest:
        version = values.get("version")
        if version not in (2, 3, VERSION) or (version < VERSION and values.get("kind") == "files"):
            raise InputError(
                f"{where} was written by an older altclip (layout {version}, now {VERSION}), before folder "
                "collections could be updated; run `altclip embed` again into a new folder"
            )
        renamed = {{"shards": "parts", "shard_size": "part_size"}.get(k, k): v for k, v in values.items()}
        return cls(**{**renamed, "version": version})

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def recipe(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.RECIPE}


@dataclass
class Item:
    """One sample of a part: where its image is (None: the sample has none) and what the source says of it."""

    path: str  # the file, or "{tar shard}/{member}"
    key: str
    source: ImageSource | None
    caption: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class PartFiles(NamedTuple):
    img: Path
    text: Path
    metadata: Path
    failures: Path


@dataclass
class Collection:
    """An output folder of ``embed_collection``: its manifest, its source files and its finished parts."""

    folder: Path
    manifest: Manifest
    files: list[str]  # tar shards (part k is shard k); empty for a folder (see ``altclip.search.update``)
    parts: list[int]  # the part ids in vector order
    generation: int = 0  # a folder's updates so far
    mapped: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)  # see part_embeddings

    @classmethod
    def open(cls, folder: str | Path) -> Collection:
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise MissingFileError(f"{folder} is not an embedding folder (no {MANIFEST}); run `altclip embed` first")
        manifest = Manifest.from_json(read_json(folder / MANIFEST), folder)
        listed = json.loads((folder / FILES).read_text(encoding="utf-8"))
        if isinstance(listed, dict):  # a folder's state: its live parts and its files (``search.update``)
            return cls(folder, manifest, [], list(listed["parts"]), listed["generation"])
        return cls(folder, manifest, listed, list(range(manifest.parts)))

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def base(self) -> Path:
        """The folder that a folder collection's keys are relative to (a list of files: its folder)."""
        source = Path(self.manifest.source)
        return source if source.is_dir() else source.parent

    def num_parts(self) -> int:
        return len(self.parts)

    def part_files(self, part: int) -> PartFiles:
        return PartFiles(
            *(self.folder / kind / f"{kind}_{part:05d}.{ext}" for kind, ext in FOLDERS),
        )

    def write_part(
        self,
        part: int,
        images: list[np.ndarray],
        failures: pa.Table,
        metadata: pa.Table,
        texts: list[np.ndarray] | None = None,
    ) -> None:
        """A part's files, each atomically, the metadata last: its existence marks the part finished."""
        files = self.part_files(part)
        write_npy(files.img, self._stack(images))
        if texts is not None:
            write_npy(files.text, self._stack(texts))
        write_parquet(files.failures, failures)
        write_parquet(files.metadata, metadata)

    def _stack(self, vectors: list[np.ndarray]) -> np.ndarray:
        return np.stack(vectors).astype(np.float16) if len(vectors) else np.zeros((0, self.dim), np.float16)

    def finished(self, part: int) -> bool:
        return self.part_files(part).metadata.exists()

    def finished_parts(self) -> list[int]:
        return [s for s in self.parts if self.finished(s)]

    def items(self, part: int) -> list[Item]:
        """The samples of one tar shard, scanned (``InputError`` if it cannot be read)."""
        tar = self.files[part]
        return [
            Item(s.image.path if s.image else f"{tar}/{s.key}", s.key, s.image, s.caption, s.meta)
            for s in scan_shard(tar)
        ]

    def metadata(self, columns: list[str] | None = None) -> pa.Table:
        """Every embedded image's row, in vector order."""
        return self._table("metadata", BASE_SCHEMA, columns)

    def failures(self) -> pa.Table:
        """Every skipped sample: its path, key, status and error."""
        return self._table("failures", FAILURE_SCHEMA, None)

    def _table(self, kind: str, schema: pa.Schema, columns: list[str] | None) -> pa.Table:
        paths = [getattr(self.part_files(s), kind) for s in self.finished_parts()]
        tables = [pq.read_table(p, columns=columns) for p in paths]
        if not tables:
            return schema.empty_table() if columns is None else schema.empty_table().select(columns)
        return pa.concat_tables(tables, promote_options="permissive")

    def embeddings(self, kind: str = "img") -> np.ndarray:
        """All vectors of one kind ("img" or "text") in order: row i belongs to metadata row i."""
        arrays = [np.load(getattr(self.part_files(s), kind)) for s in self.finished_parts()]
        return np.concatenate(arrays) if arrays else np.zeros((0, self.dim), np.float16)

    def part_embeddings(self, kind: str = "img", cached: bool = True) -> list[np.ndarray]:
        """The finished parts' vectors, one memory-mapped array a part: what streaming readers use.

        ``cached``: map them once and keep the maps (a served collection, whose parts no longer change, is
        read this way on every request); a one-pass job passes False, so that the pages it has read are let
        go with each part.
        """
        if cached and kind in self.mapped:
            return self.mapped[kind]
        maps = [np.load(getattr(self.part_files(s), kind), mmap_mode="r") for s in self.finished_parts()]
        if cached:
            self.mapped[kind] = maps
        return maps

    def blocks(self, kind: str = "img", block: int = 32_768) -> Iterator[np.ndarray]:
        """The vectors in blocks of at most ``block`` rows, part after part, each block read into memory of
        its own (not mapped): a one-pass job over more vectors than memory holds keeps one block at a time."""
        for s in self.finished_parts():
            path = getattr(self.part_files(s), kind)
            mapped = np.load(path, mmap_mode="r")  # for its header: shape, dtype and where the data starts
            (rows, dim), dtype, start = mapped.shape, mapped.dtype, mapped.offset
            del mapped
            for first in range(0, rows, block):
                count = min(block, rows - first)
                offset = start + first * dim * dtype.itemsize
                yield np.fromfile(path, dtype, count * dim, offset=offset).reshape(count, dim)

    def count(self) -> int:
        """Vectors in the finished parts, from the .npy headers alone."""
        return sum(len(v) for v in self.part_embeddings(cached=False))

    def ok_paths(self) -> list[str]:
        return self.metadata(["image_path"])["image_path"].to_pylist()

    def image_sources(self) -> list[ImageSource]:
        """Where each vector's image can be read, in vector order: its file, or its tar member."""
        if self.manifest.kind != "tar":
            return self.ok_paths()  # type: ignore[return-value]
        sources: list[ImageSource] = []
        for s in self.finished_parts():
            tar = self.files[s]
            table = pq.read_table(self.part_files(s).metadata, columns=["image_path", "tar_offset", "tar_size"])
            for path, offset, size in zip(*(table[c].to_pylist() for c in table.column_names), strict=True):
                sources.append(TarMember(tar, path[len(tar) + 1 :], offset, size))
        return sources


FOLDERS = (("img_emb", "npy"), ("text_emb", "npy"), ("metadata", "parquet"), ("failures", "parquet"))


def write_parquet(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def check_recipe(collection: Collection, recipe: dict[str, Any]) -> None:
    """Refuse to add to a collection vectors made another way: another source, model, precision, backend,
    decoding or preprocessing would mix two kinds of vectors in one index."""
    made = collection.manifest
    for key, value in recipe.items():
        was = getattr(made, key)
        if was != value:
            if isinstance(was, dict) and isinstance(value, dict):  # name only the settings that differ
                differ = sorted(k for k in was.keys() | value.keys() if was.get(k) != value.get(k))
                was, value = ({k: d.get(k) for k in differ} for d in (was, value))
            raise InputError(
                f"{collection.folder} was made with {key} {was!r}, not {value!r}: vectors made "
                f"otherwise cannot be mixed with its own. Run the command with the {key} it was made with, or "
                "embed into a new --out folder to make it the new way (then serve or search that one)"
            )


def _create(out: Path, source: str, recipe: dict[str, Any], dim: int) -> Collection:
    """Start a new output folder of tar shards, or reopen one made by the same recipe."""
    if (out / MANIFEST).exists():
        collection = Collection.open(out)
        check_recipe(collection, recipe)
        return collection
    # a run killed before its manifest was written leaves at most files.json and temporary files
    if out.exists() and any(p.name != FILES and not p.name.startswith(".") for p in out.iterdir()):
        raise InputError(f"{out} is not empty and holds no {MANIFEST}; choose a new folder")
    files = expand_shards(source)
    if not files:
        raise InputError(f"{source} holds no files")
    write_json(out / FILES, files, indent=None)
    manifest = Manifest(**recipe, kind="tar", parts=len(files), dim=dim)
    write_json(out / MANIFEST, manifest.to_json())
    return Collection(out, manifest, files, list(range(len(files))))


@dataclass
class PartPlan:
    """Batches of tasks for the parts this process embeds, found lazily (a tar shard is scanned when its
    turn comes); ``items`` keeps each started part's samples until it is written."""

    collection: Collection
    parts: list[int]
    batch_size: int
    items: dict[int, list[Item]] = field(default_factory=dict)
    expected: dict[int, int] = field(default_factory=dict)  # part -> images to decode
    unreadable: dict[int, str] = field(default_factory=dict)  # part -> why it could not be scanned

    def __iter__(self) -> Iterator[list[Task]]:
        for part, items in zip(self.parts, scanned_ahead(self._scan, self.parts), strict=True):
            self.items[part] = items
            tasks = [(part, j, item.source) for j, item in enumerate(items) if item.source is not None]
            self.expected[part] = len(tasks)
            for start in range(0, len(tasks), self.batch_size):
                yield tasks[start : start + self.batch_size]

    def _scan(self, part: int) -> list[Item]:
        try:
            return self.collection.items(part)
        except ValueError as err:
            self.unreadable[part] = str(err)
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
    revision: str | None = None,
    batch_size: int = 32,
    workers: int = 2,
    part_size: int = 10_000,
    progress: bool = True,
    draft: bool = False,
    captions: bool = False,
    group: distributed.Group | None = None,
) -> EmbedSummary | None:
    """Embed every image of ``source`` into ``out`` (see the module docstring); returns the summary
    (process 0; the others return None).

    A folder or a list of files is brought to its current state when ``out`` already holds it: new files are
    embedded, changed ones again, deleted ones leave (``altclip.search.update``). Tar shards are fixed: a second
    run resumes the first.

    ``model_name``/``revision``: the model as resolved (an absolute path, or a hub name and its commit); with the
    embedder's precision and backend, ``draft`` and the image processor's settings it is recorded in the manifest,
    and a later run must match it. ``draft``: decode large JPEGs at a reduced scale (see ``ImageFiles``).
    ``captions``: also embed tar samples' captions into ``text_emb/``. ``group``: this process of a
    ``torchrun`` group, which must have joined it (``altclip.runtime.distributed.setup``); None: one process.
    """
    group = group or distributed.Group()
    if part_size < 1:
        raise InputError(f"part_size must be at least 1, got {part_size}")
    out = Path(out)
    tar = is_shard_spec(source)
    source = str(source) if tar else str(Path(source).resolve())
    if not tar and captions:
        raise InputError(f"{source}: captions come from tar shards' .txt members; --captions needs tar shards")
    recipe = {
        "source": source,
        "model": model_name,
        "revision": revision,
        "draft": draft,
        "captions": captions,
        "precision": embedder.precision.name,
        "backend": embedder.backend,
        "preprocessing": embedder.processor.image_processor.to_dict(),
        "adapter": getattr(embedder, "adapter", None),
    }
    recipe = json.loads(json.dumps(recipe))  # as the manifest holds it: tuples are lists there
    if not tar:
        from altclip.search.update import update_folder

        return update_folder(
            source,
            out,
            embedder,
            recipe,
            batch_size=batch_size,
            workers=workers,
            part_size=part_size,
            progress=progress,
            group=group,
        )
    dim = embedder.model.config.projection_dim  # type: ignore[attr-defined]
    collection = _create(out, source, recipe, dim) if group.main else None
    group.barrier()
    if collection is None:  # the others open what process 0 made, and check it
        collection = _create(out, source, recipe, dim)
    mine = [p for p in range(group.rank, collection.num_parts(), group.world) if not collection.finished(p)]
    plan = PartPlan(collection, mine, batch_size)
    done: dict[int, dict[int, Embedded]] = {}
    desc = f"embedding (process {group.rank})" if group.world > 1 else "embedding"
    bar = tqdm(unit="img", desc=desc, disable=not progress)
    try:
        processor = embedder.processor.image_processor
        for records in image_batches(plan, processor, workers, draft):
            part = records[0].unit
            items = plan.items[part]
            readable = [items[r.index] for r in records if r.status == "ok"]
            texts = _caption_vectors(embedder, readable, dim) if captions else iter(())
            images = (v.astype(np.float16) for v in embedder.embed_records(records))
            slot = done.setdefault(part, {})
            for r in records:
                ok = r.status == "ok"
                slot[r.index] = Embedded(r, next(images) if ok else None, next(texts, None) if ok else None)
            _write_finished(plan, done, captions)
            bar.update(len(records))
        _write_finished(plan, done, captions)  # parts with nothing to decode
    finally:
        bar.close()
    group.barrier()
    return write_summary(collection) if group.main else None


def _caption_vectors(embedder: Embedder, items: list[Item], dim: int) -> Iterator[np.ndarray]:
    """float16 vectors of the items' captions, in order; zeros for an item without one."""
    texts = [item.caption for item in items if item.caption]
    embedded = iter(embedder.embed_texts(texts).float().cpu().numpy().astype(np.float16)) if texts else iter(())
    for item in items:
        yield next(embedded) if item.caption else np.zeros(dim, np.float16)


def _write_finished(plan: PartPlan, done: dict[int, dict[int, Embedded]], captions: bool) -> None:
    for part in [s for s in plan.items if len(done.get(s, {})) == plan.expected[s]]:
        del plan.expected[part]
        _write_part(plan.collection, part, plan.items.pop(part), done.pop(part, {}), plan.unreadable, captions)


def _write_part(
    collection: Collection,
    part: int,
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
    if part in unreadable:
        failures.append((collection.files[part], "", "bad_shard", unreadable.pop(part)))
    collection.write_part(
        part,
        images,
        pa.Table.from_pylist([dict(zip(FAILURE_SCHEMA.names, f, strict=True)) for f in failures], FAILURE_SCHEMA),
        metadata_table(rows, tar=collection.manifest.kind == "tar"),
        texts if captions else None,
    )


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


def write_vectors(out: str | Path, parts: Iterable[np.ndarray], num_parts: int, dim: int, model: str) -> Collection:
    """A collection folder of vectors computed elsewhere (unit length, stored as float16), one array per
    part, streamed: for indexing them with ``build_index`` and for benchmarks. Row ``i`` of part ``p`` is
    named ``p/i``."""
    out = Path(out)
    recipe = {"source": "vectors", "model": model, "draft": False, "captions": False}
    manifest = Manifest(**recipe, kind="vectors", parts=num_parts, dim=dim)
    write_json(out / FILES, [], indent=None)
    write_json(out / MANIFEST, manifest.to_json())
    collection = Collection(out, manifest, [], list(range(num_parts)))
    written = 0
    for part, vectors in enumerate(parts):
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise InputError(f"part {part} has shape {vectors.shape}, not (rows, {dim})")
        paths = [f"{part}/{i}" for i in range(len(vectors))]
        metadata = metadata_table([(Item(p, p, None), 0, 0) for p in paths])
        collection.write_part(part, list(vectors), FAILURE_SCHEMA.empty_table(), metadata)
        written += 1
    if written != num_parts:
        raise InputError(f"{written} parts given, not {num_parts}")
    write_summary(collection)
    return collection


@dataclass
class EmbedSummary(Result):
    """What a collection folder holds after an embedding run: counts by status and the first failures;
    ``summary.json`` holds it, and ``altclip embed`` prints it with the precision and the index it built."""

    folder: str
    kind: str
    parts: int
    files: int
    embedded: int
    skipped: int
    by_status: dict[str, int]
    failures: list[dict[str, str]]  # the first SUMMARY_FAILURES; every one is in failures/
    captions: int | None = None  # captions embedded, with --captions
    update: dict[str, Any] | None = None  # a folder's run: what changed (``UpdateCounts``)
    precision: dict[str, Any] | None = None  # set by the command
    index: Any = None  # the IndexInfo of the index built after embedding

    def to_json(self) -> dict[str, Any]:
        values = {k: v for k, v in asdict(self).items() if v is not None and k != "index"}
        if self.index is not None:
            values["index"] = self.index.to_json()
        return values

    def describe(self) -> str:
        """The counts, the first failures and the index, as tables and lines for a terminal."""
        lines = [format_table(["status", "images"], list(self.by_status.items()))]
        if self.update is not None:
            u = self.update
            found = ", ".join(f"{u[k]} {k}" for k in ("new", "changed", "deleted", "moved", "unchanged"))
            lines += ["", f"update {u['generation']}: {found} files; {u['embedded']} embedded in {u['seconds']} s"]
        if self.failures:
            more = " (first 20; all in failures/):" if self.skipped > 20 else ":"
            rows = [(f["status"], f["error"]) for f in self.failures[:20]]
            lines += ["", f"skipped {self.skipped}{more}", format_table(["status", "error"], rows)]
        if self.captions is not None:
            lines += ["", f"captions embedded: {self.captions} (text_emb/)"]
        if self.index is not None:
            index = self.index
            where = f"{index.count} images in {self.folder}/index"
            lines += ["", f"index: {index.factory} over {where}, recall@10 {index.recall_at_10}"]
        return "\n".join(lines)


def write_summary(collection: Collection) -> EmbedSummary:
    failures = collection.failures()
    statuses = Counter(failures["status"].to_pylist())
    embedded = collection.count()
    summary = EmbedSummary(
        folder=str(collection.folder),
        kind=collection.manifest.kind,
        parts=collection.num_parts(),
        files=embedded + len(failures),
        embedded=embedded,
        skipped=len(failures),
        by_status=dict(sorted({"ok": embedded, **statuses}.items())),
        failures=[
            {"path": f["image_path"], "status": f["status"], "error": f["error"]}
            for f in failures.slice(0, SUMMARY_FAILURES).to_pylist()
        ],
    )
    if collection.manifest.captions:
        summary.captions = sum(int(np.any(v != 0, axis=1).sum()) for v in collection.blocks("text"))
    write_json(collection.folder / SUMMARY, summary.to_json())
    return summary
