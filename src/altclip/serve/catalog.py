"""The embedding folders a server searches, by name, and the thumbnails of their images.

A client names an image by its index and its row id, never by a path: ids are parsed as integers and
looked up in the index's own list of paths, so no request can reach a file outside the collection.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from altclip.data.imagefiles import ImageSource, read_member
from altclip.data.shards import TarMember
from altclip.errors import AltCLIPError, InputError, NotFoundError
from altclip.processing.image import load_image, to_rgb
from altclip.search.collection import FILES
from altclip.search.index import INDEX_INFO, SearchIndex
from altclip.tables import Result

log = logging.getLogger("altclip.serve")
THUMBNAIL_SIDE = 256
THUMBNAIL_QUALITY = 85


class NotFound(NotFoundError):
    """An index name or an image id the catalog does not hold."""


def parse_folder(spec: str) -> tuple[str, Path]:
    """``name=FOLDER`` or ``FOLDER`` (named after the folder) -> (name, folder)."""
    name, sep, folder = spec.partition("=")
    if not sep:
        name, folder = Path(spec).resolve().name, spec
    if not name or not folder:
        raise InputError(f"{spec!r}: expected FOLDER or NAME=FOLDER")
    if "/" in name or "\\" in name:
        raise InputError(f"{spec!r}: an index name must not contain a slash")
    return name, Path(folder)


@dataclass(frozen=True)
class IndexSummary(Result):
    """One served index as ``GET /api/indexes`` lists it."""

    name: str
    count: int
    dim: int
    model: str


@dataclass
class ServedIndex:
    name: str
    index: SearchIndex

    @property
    def model(self) -> str:
        return self.index.collection.manifest.model

    @property
    def revision(self) -> str | None:
        return self.index.collection.manifest.revision

    def info(self) -> IndexSummary:
        return IndexSummary(self.name, len(self.index), self.index.index.d, self.model)


class Catalog:
    """Named ``SearchIndex``es (the first is the default) and a bounded cache of JPEG thumbnails.

    ``refresh`` follows the folders: a collection updated since (by ``altclip embed`` in any process), once its
    index has been rebuilt for the update, is opened anew and replaces the served one in a single assignment. A
    request holds the ``ServedIndex`` it looked up, so it sees the old state or the new one, never a mix; the
    old one is let go when its last request ends."""

    def __init__(self, folders: dict[str, str | Path], thumbnail_cache_bytes: int = 64 * 2**20) -> None:
        self.folders = {name: Path(folder) for name, folder in folders.items()}
        self.indexes = {name: ServedIndex(name, SearchIndex(folder)) for name, folder in self.folders.items()}
        self._stamps = {name: stamp(folder) for name, folder in self.folders.items()}
        self.thumbnail_cache_bytes = thumbnail_cache_bytes
        self._thumbnails: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    def refresh(self) -> list[str]:
        """Open anew every collection whose state or index changed on disk since it was opened, when its index
        matches its state (an index not yet rebuilt after an update is waited for); the names replaced."""
        replaced = []
        for name, folder in self.folders.items():
            now = stamp(folder)
            if now == self._stamps[name]:
                continue
            try:
                fresh = SearchIndex(folder)
            except (AltCLIPError, OSError, ValueError) as err:  # mid-update, or the index is older: next time
                log.info("index %s not reloaded yet: %s", name, err)
                continue
            self.indexes[name] = ServedIndex(name, fresh)
            self._stamps[name] = now
            replaced.append(name)
            log.info("index %s reloaded: %d images (update %d)", name, len(fresh), fresh.collection.generation)
        return replaced

    @classmethod
    def from_specs(cls, specs: list[str], thumbnail_cache_bytes: int = 64 * 2**20) -> Catalog:
        """``FOLDER`` or ``NAME=FOLDER`` arguments, as the command takes them."""
        folders: dict[str, str | Path] = {}
        for spec in specs:
            name, folder = parse_folder(spec)
            if name in folders:
                raise InputError(f"two indexes are named {name!r}; name them with NAME=FOLDER")
            folders[name] = folder
        return cls(folders, thumbnail_cache_bytes)

    def info(self) -> list[IndexSummary]:
        return [served.info() for served in self.indexes.values()]

    def get(self, name: str | None) -> ServedIndex:
        """The index called ``name``; the first one when ``name`` is None."""
        if not self.indexes:
            raise NotFound("this server holds no index (it was started without an embedding folder)")
        if name is None:
            return next(iter(self.indexes.values()))
        if name not in self.indexes:
            raise NotFound(f"no index named {name!r}; these exist: {', '.join(self.indexes)}")
        return self.indexes[name]

    def source(self, name: str, image_id: str | int) -> ImageSource:
        """The file (or tar member) behind an id of an index; anything but a row number of that index is
        ``NotFound``."""
        return self._source(self.get(name), image_id)

    @staticmethod
    def _source(served: ServedIndex, image_id: str | int) -> ImageSource:
        text = str(image_id)
        if not (text.isascii() and text.isdigit()) or int(text) >= len(served.index):
            raise NotFound(f"index {served.name!r} has no image {text!r}")
        return served.index.sources[int(text)]

    def thumbnail(self, name: str, image_id: str | int) -> bytes:
        """A JPEG of at most ``THUMBNAIL_SIDE`` pixels on its long side, cached (least recently used first out)."""
        served = self.get(name)  # once: an update swapped in meanwhile must not pair one state's id with another's
        source = self._source(served, image_id)
        key = (name, served.index.collection.generation, int(image_id))  # ids change with an update
        with self._lock:
            if key in self._thumbnails:
                self._thumbnails.move_to_end(key)
                return self._thumbnails[key]
        data = make_thumbnail(source)
        with self._lock:
            if key not in self._thumbnails and len(data) <= self.thumbnail_cache_bytes:
                self._thumbnails[key] = data
                self._cached_bytes += len(data)
            while self._cached_bytes > self.thumbnail_cache_bytes:
                self._cached_bytes -= len(self._thumbnails.popitem(last=False)[1])
        return data

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes


def stamp(folder: Path) -> tuple[int, int]:
    """When a collection's state and its index were last written (0 where missing)."""
    return tuple(  # type: ignore[return-value]
        path.stat().st_mtime_ns if path.exists() else 0 for path in (folder / FILES, folder / "index" / INDEX_INFO)
    )


def make_thumbnail(source: ImageSource | Path, side: int = THUMBNAIL_SIDE) -> bytes:
    """The image upright, within ``side`` x ``side``, as JPEG bytes (transparency on white)."""
    if isinstance(source, TarMember):
        image, name = load_image(read_member(source), draft_min_side=side, name=source.path), source.path
    else:
        image, name = load_image(source, draft_min_side=side), str(source)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    Image.fromarray(to_rgb(image, name)).save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()
