"""Bringing a folder collection to its folder's current state: new files embedded, changed ones embedded again,
deleted ones gone, unchanged ones never read.

The committed state is ``files.json``, replaced atomically (temporary file, then rename) at the end of each run,
and the per-part files it names in ``state/``:

    {"generation": 3, "next_part": 9, "parts": [0, 1, 4, 7, 8],
     "state": {"0": "files_00000-3f0c9a1e5b2d7c44.json", ...}}

    state/files_00000-3f0c9a1e5b2d7c44.json: {"2024/IMG_0001.jpg": [size, mtime_ns, digest, part, checked_ns], ...}

A part's file is named by the digest of its content, so a run writes the files of the parts whose entries
changed and names the others as they were: a day's new photos write their own part's entries and a short
``files.json``, not an entry for every file of the library. (A ``files.json`` of the first release of this
layout holds every entry itself, under ``"files"``; it is read, and written the new way at the next change.)

``parts`` are the live parts in vector order, which is the order of their ids (as tools that list the folder
read them); every file the folder held at the last run has an entry, the unreadable ones too (their row is in
their part's failures table). Parts never change once written: a run
writes new parts with fresh ids and names the new list in ``files.json``; the parts it replaced are deleted
after that rename.

**What changed.** A file whose size and modification time (in nanoseconds) equal its entry's is unchanged and
costs nothing, unless the entry is *racy*: modified less than ``RACY_NS`` before the run that recorded it
looked, where a later change could keep the same time on file systems with coarse clocks (FAT's 2 s, HFS+'s
1 s; git's "racily clean" entries). A racy entry, or one whose size or time moved, is read and its content
digest (BLAKE2b, recorded for every embedded file by the decoding workers) decides: the same bytes keep their
vector (``touch``, a copy that kept its content), other bytes are embedded again. A new file of the size of a
removed one is hashed too, and one with the removed file's bytes takes its vector (a rename or a move).

**Runs.** Process 0 scans, decides and writes the plan (``.plan.json``): new parts of at most ``part_size`` of
the files to embed, in the folder's walk order. Every process embeds its share of the planned parts not yet
finished (the ``i``-th to process ``i mod world``); a planned part is finished when its metadata exists. Then
process 0 commits: the parts that lost rows are written again without them (rows that moved go along), and
``files.json`` is replaced. A run stopped at any point (Ctrl-C, ``kill -9``) leaves the last committed state
readable; the same command again keeps the planned parts that were finished and still match the folder,
deletes every file no state or plan names, and goes on. One update runs at a time (``.update.lock``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from altclip.data.imagefiles import HashedFile, Task, content_digest, image_batches
from altclip.embedder import Embedder
from altclip.errors import InputError, MissingFileError
from altclip.files import atomic_write_bytes, read_json, write_json
from altclip.runtime import distributed
from altclip.search.collection import (
    BASE_SCHEMA,
    FAILURE_SCHEMA,
    FILES,
    FOLDERS,
    MANIFEST,
    Collection,
    EmbedSummary,
    Manifest,
    check_recipe,
    list_source,
    write_summary,
)
from altclip.tables import Result

PLAN = ".plan.json"
STATE = "state"  # the folder of the state's part files
DIGEST = pa.field("digest", pa.string())  # a column of the parts' metadata and failures: each file's bytes
LOCK = ".update.lock"
RACY_NS = 2_000_000_000  # the coarsest common file-system clock (FAT): 2 s


@dataclass
class Entry:
    """What the state knows of one file: its stat when last looked at, its bytes' digest ("" for a file that
    could not be read), the part its row lives in, and when it was looked at."""

    size: int
    mtime_ns: int
    digest: str
    part: int
    checked_ns: int

    @property
    def racy(self) -> bool:
        return self.mtime_ns + RACY_NS >= self.checked_ns

    def to_json(self) -> list[Any]:
        return [self.size, self.mtime_ns, self.digest, self.part, self.checked_ns]


@dataclass
class State:
    """``files.json`` of a folder collection and the part files it names (see the module docstring)."""

    generation: int = 0
    next_part: int = 0
    parts: list[int] = field(default_factory=list)
    files: dict[str, Entry] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path) -> State:
        values = read_json(folder / FILES)
        listed = values.get("files", {})  # the first release of layout 4 kept every entry here
        for name in values.get("state", {}).values():
            listed.update(read_json(folder / STATE / name))
        files = {key: Entry(*entry) for key, entry in listed.items()}
        return cls(values["generation"], values["next_part"], list(values["parts"]), files)

    def write(self, folder: Path) -> None:
        """The part files not written yet, then ``files.json`` naming them (the commit), then the part files no
        longer named are deleted."""
        by_part: dict[int, dict[str, list[Any]]] = {part: {} for part in self.parts}
        for key, entry in self.files.items():
            by_part[entry.part][key] = entry.to_json()
        names = {}
        for part, entries in by_part.items():
            text = json.dumps(entries, ensure_ascii=False).encode()
            names[str(part)] = f"files_{part:05d}-{hashlib.blake2b(text, digest_size=8).hexdigest()}.json"
            if not (folder / STATE / names[str(part)]).exists():  # named by its content: written once
                atomic_write_bytes(folder / STATE / names[str(part)], text + b"\n")
        root = {"generation": self.generation, "next_part": self.next_part, "parts": self.parts, "state": names}
        write_json(folder / FILES, root, indent=None)
        remove_unnamed_states(folder, set(names.values()))


def remove_unnamed_states(folder: Path, named: set[str]) -> None:
    """Delete the part files of states no longer committed (and a stopped write's temporary files)."""
    if (folder / STATE).is_dir():
        for path in (folder / STATE).iterdir():
            if path.name not in named:
                path.unlink(missing_ok=True)


@dataclass
class Change:
    """What a run found: the files to embed (key -> (size, mtime_ns)), the entries that leave (deleted or
    changed), the files that take a leaving entry's vector (new key -> old key), and the unchanged entries
    whose stat is refreshed."""

    embed: dict[str, tuple[int, int]] = field(default_factory=dict)
    leave: set[str] = field(default_factory=set)
    moved: dict[str, str] = field(default_factory=dict)
    refreshed: dict[str, Entry] = field(default_factory=dict)
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    gone: set[str] = field(default_factory=set)  # keys no longer in the folder

    @property
    def deleted(self) -> int:
        """Files gone from the folder whose bytes did not turn up under another name."""
        return len(self.gone - set(self.moved.values()))


def scan(source: Path) -> dict[str, tuple[int, int]]:
    """Every file of a folder (hidden ones skipped), keyed by its path under the folder, or of a file listing
    paths, keyed by the path as listed (made absolute): (size, mtime_ns). A listed file that is missing is kept
    as (-1, -1), to become a failure row; a folder's file gone between the walk and the stat is left out."""
    found = {}
    folder = source.is_dir()
    for path in list_source(source):
        key = str(Path(path).relative_to(source)) if folder else path
        try:
            stat = os.stat(path)
        except OSError:
            if not folder:
                found[key] = (-1, -1)
            continue
        found[key] = (stat.st_size, stat.st_mtime_ns)
    return found


def classify(root: Path, state: State, folder: dict[str, tuple[int, int]], live: set[int], now_ns: int) -> Change:
    """Compare the folder with the state (see the module docstring); reads only files whose stat is ambiguous."""
    change = Change()
    for key, entry in state.files.items():
        if key not in folder or entry.part not in live:  # deleted, or its part was lost from outside
            change.leave.add(key)
            if key not in folder:
                change.gone.add(key)
    for key, (size, mtime) in folder.items():
        entry = state.files.get(key)
        if entry is None or key in change.leave:
            change.embed[key] = (size, mtime)
            change.new += 1
            continue
        if (size, mtime) == (entry.size, entry.mtime_ns) and not entry.racy:
            change.unchanged += 1
            continue
        if entry.digest and size == entry.size and _digest(root / key) == entry.digest:
            change.refreshed[key] = Entry(size, mtime, entry.digest, entry.part, now_ns)
            change.unchanged += 1
            continue
        change.leave.add(key)
        change.embed[key] = (size, mtime)
        change.changed += 1
    _find_moves(root, state, change, live, now_ns)
    return change


def _digest(path: Path) -> str:
    """The digest the decoding workers record (``content_digest``), of a file read here; "" if it cannot be."""
    try:
        return content_digest(path.read_bytes())
    except OSError:
        return ""


def _find_moves(root: Path, state: State, change: Change, live: set[int], now_ns: int) -> None:
    """New files with the bytes of a leaving entry (whose part can still be read) take its vector instead of
    being embedded."""
    by_size: dict[int, list[str]] = {}
    for key in change.leave:
        entry = state.files[key]
        if entry.digest and entry.part in live:
            by_size.setdefault(entry.size, []).append(key)
    for key, (size, mtime) in list(change.embed.items()):
        if size not in by_size:
            continue
        digest = _digest(root / key)
        for old in by_size[size]:
            if state.files[old].digest == digest and old not in change.moved.values():
                change.moved[key] = old
                del change.embed[key]
                change.refreshed[key] = Entry(size, mtime, digest, -1, now_ns)  # its part is set at commit
                change.new -= 1
                break


@dataclass
class Plan:
    """``.plan.json``: the new parts of this run, by id, each with the files it embeds (key -> stat)."""

    base: int  # the state generation it was planned from
    parts: dict[int, dict[str, tuple[int, int]]]
    next_part: int

    @classmethod
    def read(cls, folder: Path) -> Plan | None:
        path = folder / PLAN
        if not path.is_file():
            return None
        values = read_json(path)
        parts = {int(p): {k: tuple(v) for k, v in files.items()} for p, files in values["parts"].items()}
        return cls(values["base"], parts, values["next_part"])  # type: ignore[arg-type]

    def write(self, folder: Path) -> None:
        parts = {str(p): {k: list(v) for k, v in files.items()} for p, files in self.parts.items()}
        write_json(folder / PLAN, {"base": self.base, "parts": parts, "next_part": self.next_part}, indent=None)


def make_plan(collection: Collection, state: State, change: Change, part_size: int) -> Plan:
    """Keep the finished parts of an earlier plan of the same state whose files still need exactly that embedding;
    plan the rest in new parts of at most ``part_size``, in the folder's walk order."""
    old = Plan.read(collection.folder)
    parts: dict[int, dict[str, tuple[int, int]]] = {}
    todo = dict(change.embed)
    next_part = state.next_part
    if old is not None and old.base == state.generation:
        next_part = max(next_part, old.next_part)
        for part, files in old.parts.items():
            if collection.finished(part) and all(todo.get(k) == v for k, v in files.items()):
                parts[part] = files
                for key in files:
                    del todo[key]
    keys = list(todo)  # the folder's walk order (``list_source``)
    for start in range(0, len(keys), part_size):
        parts[next_part] = {k: todo[k] for k in keys[start : start + part_size]}
        next_part += 1
    return Plan(state.generation, parts, next_part)


def remove_unnamed(collection: Collection, named: set[int]) -> int:
    """Delete the part files (and temporary files) that neither the state nor the plan names: what a stopped run
    left. Returns how many files went."""
    removed = 0
    for kind, ext in FOLDERS:
        folder = collection.folder / kind
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            stem = path.name.removesuffix(f".{ext}")
            number = stem.rsplit("_", 1)[-1]
            if path.name.startswith(".") or not number.isdigit() or int(number) not in named:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


@dataclass
class UpdateCounts(Result):
    """What an update found and did, by file."""

    new: int
    changed: int
    deleted: int
    moved: int
    unchanged: int
    embedded: int  # files decoded and run through the model in this run (planned parts kept from a stopped run
    # are not counted again)
    parts_written: int
    parts_removed: int
    generation: int
    seconds: float


def update_folder(
    source: str | Path,
    out: str | Path,
    embedder: Embedder,
    recipe: dict[str, Any],
    *,
    batch_size: int = 32,
    workers: int = 2,
    part_size: int = 10_000,
    progress: bool = True,
    group: distributed.Group | None = None,
) -> EmbedSummary | None:
    """Create or update the collection ``out`` of the folder (or list of files) ``source``; see the module
    docstring. Returns the summary (process 0; the others return None), with ``update`` set."""
    from filelock import FileLock

    started = time.perf_counter()
    group = group or distributed.Group()
    out = Path(out)
    root = Path(recipe["source"])
    if not root.exists():
        raise MissingFileError(f"{root} is neither a folder nor a file listing image paths")
    dim = embedder.model.config.projection_dim  # type: ignore[attr-defined]
    lock = FileLock(out / LOCK) if group.main else None
    if lock is not None:
        out.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    try:
        if group.main:
            collection, state = open_or_create(out, recipe, dim)
            now = time.time_ns()
            change = classify(collection.base, state, scan(root), set(collection.finished_parts()), now)
            plan = make_plan(collection, state, change, part_size)
            plan.write(out)
            remove_unnamed(collection, set(state.parts) | set(plan.parts))
        group.barrier()
        if not group.main:  # the others read what process 0 planned
            collection, plan = Collection.open(out), Plan.read(out)  # type: ignore[assignment]
        todo = [p for p in sorted(plan.parts) if not collection.finished(p)]
        embed_parts(collection, plan, todo[group.rank :: group.world], embedder, batch_size, workers, progress, group)
        group.barrier()
        if not group.main:
            return None
        written, removed, generation = commit(collection, state, change, plan, part_size, now)
        update = UpdateCounts(
            new=change.new,
            changed=change.changed,
            deleted=change.deleted,
            moved=len(change.moved),
            unchanged=change.unchanged,
            embedded=sum(len(plan.parts[p]) for p in todo),
            parts_written=written + len(todo),
            parts_removed=removed,
            generation=generation,
            seconds=round(time.perf_counter() - started, 2),
        )
        summary = write_summary(Collection.open(out))
        summary.update = update.to_json()
        return summary
    finally:
        if lock is not None:
            lock.release()


def open_or_create(out: Path, recipe: dict[str, Any], dim: int) -> tuple[Collection, State]:
    """The collection in ``out`` and its state, after checking it was made by this recipe; a new one when
    ``out`` holds none (its manifest and an empty state are written first)."""
    if (out / MANIFEST).exists():
        collection = Collection.open(out)
        check_recipe(collection, recipe)
        return collection, State.read(out)
    if any(p.name not in (FILES, LOCK, PLAN, STATE) and not p.name.startswith(".") for p in out.iterdir()):
        raise InputError(f"{out} is not empty and holds no {MANIFEST}; choose a new folder")
    state = State()
    state.write(out)
    write_json(out / MANIFEST, Manifest(**recipe, kind="files", parts=0, dim=dim).to_json())
    return Collection.open(out), state


def embed_parts(
    collection: Collection,
    plan: Plan,
    parts: list[int],
    embedder: Embedder,
    batch_size: int,
    workers: int,
    progress: bool,
    group: distributed.Group,
) -> None:
    """Embed this process's planned parts (none is empty), writing each as soon as its last image is done."""
    root = collection.base
    batches: list[list[Task]] = []  # a batch never spans two parts: a vector does not depend on who embeds it
    keys: dict[int, list[str]] = {}
    for part in parts:
        keys[part] = list(plan.parts[part])
        tasks = [(part, i, HashedFile(str(_path(root, key)))) for i, key in enumerate(keys[part])]
        batches += [tasks[i : i + batch_size] for i in range(0, len(tasks), batch_size)]
    done: dict[int, list[Any]] = {part: [] for part in parts}
    desc = f"embedding (process {group.rank})" if group.world > 1 else "embedding"
    total = sum(len(batch) for batch in batches)
    with tqdm(total=total, unit="img", desc=desc, disable=not progress) as bar:
        processor = embedder.processor.image_processor
        for records in image_batches(iter(batches), processor, workers, collection.manifest.draft):
            vectors = iter(v.astype(np.float16) for v in embedder.embed_records(records))
            for record in records:
                done[record.unit].append((record, next(vectors) if record.status == "ok" else None))
            for part in {r.unit for r in records}:
                if len(done[part]) == len(keys[part]):
                    rows = sorted(done.pop(part), key=lambda item: item[0].index)
                    _write_embedded(collection, part, keys[part], rows)
            bar.update(len(records))


def _path(root: Path, key: str) -> Path:
    return Path(key) if Path(key).is_absolute() else root / key


def _write_embedded(collection: Collection, part: int, keys: list[str], rows: list[Any]) -> None:
    ok, failures, vectors = [], [], []
    for key, (record, vector) in zip(keys, rows, strict=True):
        path = str(_path(collection.base, key))
        if vector is None:
            failure = {"image_path": path, "key": key, "status": record.status, "error": record.error}
            failures.append({**failure, "digest": record.digest})
        else:
            row = {"image_path": path, "key": key, "width": record.width, "height": record.height}
            ok.append({**row, "digest": record.digest})
            vectors.append(vector)
    _write_part(collection, part, ok, failures, vectors)


def _write_part(
    collection: Collection,
    part: int,
    rows: list[dict[str, Any]],
    failures: list[dict[str, Any]],
    vectors: list[np.ndarray],
) -> None:
    """A part's files, the metadata last (its existence marks the part finished). Beside the usual columns the
    metadata and the failures hold each file's ``digest``, which the commit records in the state."""
    columns = {name: [r.get(name) for r in rows] for name in (*BASE_SCHEMA.names, "digest")}
    collection.write_part(
        part,
        vectors,
        pa.Table.from_pylist(failures, FAILURE_SCHEMA.append(DIGEST)),
        pa.table(columns, schema=BASE_SCHEMA.append(DIGEST)),
    )


def commit(
    collection: Collection, state: State, change: Change, plan: Plan, part_size: int, now_ns: int
) -> tuple[int, int, int]:
    """Write the parts that lost rows again without them (with the moved rows), then the new ``files.json``;
    then delete what it no longer names. Returns (parts written, parts removed, the new generation: the same
    when no row changed)."""
    leaving = change.leave
    losing = {state.files[k].part for k in leaving}
    touched = [p for p in state.parts if p in losing or not collection.finished(p)]
    next_part = plan.next_part
    files = {k: e for k, e in state.files.items() if k not in leaving}
    files.update({k: e for k, e in change.refreshed.items() if k not in change.moved})

    moved_from = {old: new for new, old in change.moved.items()}
    carried: list[tuple[dict[str, Any], np.ndarray | None]] = []  # rows (and failures) that go to rewritten parts
    for part in touched:
        if not collection.finished(part):
            continue
        table = pq.read_table(collection.part_files(part).metadata).to_pylist()
        vectors = np.load(collection.part_files(part).img)
        for row, vector in zip(table, vectors, strict=True):
            key = row["key"]
            if key in moved_from:
                new = moved_from[key]
                carried.append(({**row, "key": new, "image_path": str(_path(collection.base, new))}, vector))
            elif key not in leaving:
                carried.append((row, vector))
        for failure in pq.read_table(collection.part_files(part).failures).to_pylist():
            if failure["key"] not in leaving:
                carried.append((failure, None))

    rewritten = []
    for start in range(0, len(carried), part_size):
        chunk = carried[start : start + part_size]
        rows = [r for r, v in chunk if v is not None]
        _write_part(
            collection,
            next_part,
            rows,
            [r for r, v in chunk if v is None],
            [v for _, v in chunk if v is not None],
        )
        for row, _ in chunk:
            entry = files.get(row["key"]) or change.refreshed[row["key"]]
            files[row["key"]] = Entry(entry.size, entry.mtime_ns, entry.digest, next_part, entry.checked_ns)
        rewritten.append(next_part)
        next_part += 1

    for part in sorted(plan.parts):
        digests = {}
        for kind in ("metadata", "failures"):
            table = pq.read_table(getattr(collection.part_files(part), kind), columns=["key", "digest"]).to_pydict()
            digests.update(zip(table["key"], table["digest"], strict=True))
        for key, (size, mtime) in plan.parts[part].items():
            files[key] = Entry(size, mtime, digests.get(key, ""), part, now_ns)

    kept = [p for p in state.parts if p not in touched]
    same_rows = not (touched or plan.parts)  # only stats refreshed: the vectors and their index stand
    generation = state.generation if same_rows and state.parts else state.generation + 1
    parts = sorted(kept + rewritten + list(plan.parts))  # by id, as readers that list the folder order them
    new_state = State(generation, next_part, parts, files)
    if new_state != state:  # a quiet day's run writes nothing
        new_state.write(collection.folder)  # the commit
    (collection.folder / PLAN).unlink(missing_ok=True)
    remove_unnamed(collection, set(new_state.parts))
    return len(rewritten), len(touched), generation
