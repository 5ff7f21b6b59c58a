"""The catalog: names, ids that only ever mean rows of an index, thumbnails and their bounded cache."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from altclip.processing.image import ImageLoadError
from altclip.serve.catalog import Catalog, NotFound, make_thumbnail, parse_folder


def test_folder_names(tmp_path):
    assert parse_folder("trips=/data/trips.emb") == ("trips", tmp_path.__class__("/data/trips.emb"))
    assert parse_folder(str(tmp_path / "photos.emb"))[0] == "photos.emb"
    for bad in ("=x", "name=", "a/b=x"):
        with pytest.raises(ValueError, match=repr(bad).replace("\\", "\\\\")):
            parse_folder(bad)


def test_duplicate_names_and_missing_folders(photo_index, tmp_path):
    with pytest.raises(ValueError, match="two indexes are named 'photos'"):
        Catalog.from_specs([str(photo_index), f"photos={photo_index}"])
    with pytest.raises(FileNotFoundError, match="not an embedding folder"):
        Catalog.from_specs([str(tmp_path)])
    empty = Catalog({})  # a server for immich alone holds no index
    assert empty.info() == []
    with pytest.raises(LookupError, match="holds no index"):
        empty.get(None)


def test_ids_are_rows_of_the_index_and_nothing_else(catalog):
    photos = catalog.get("photos")
    assert catalog.get(None) is photos  # the first is the default
    assert catalog.source("photos", 0) == catalog.source("photos", "0")
    assert str(catalog.source("photos", 0)) == photos.index.paths[0]
    for bad in ("-1", "15", "1.0", "abc", "..", "../0", "0x1", " 1", "١", "", "99999999999999999999"):
        with pytest.raises(NotFound):
            catalog.source("photos", bad)
    with pytest.raises(NotFound, match="no index named 'nope'; these exist: photos, mixed"):
        catalog.get("nope")


def test_thumbnails_fit_256_and_keep_the_aspect(catalog):
    data = catalog.thumbnail("photos", 0)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (256, 192)  # from 400 x 300
    small = Image.open(io.BytesIO(catalog.thumbnail("mixed", 0)))
    original = Image.open(catalog.source("mixed", 0))
    assert small.size == original.size  # never enlarged


def test_thumbnail_cache_is_bounded_and_reused(photo_index):
    one = len(make_thumbnail(Catalog({"p": photo_index}).source("p", 0)))
    catalog = Catalog({"p": photo_index}, thumbnail_cache_bytes=int(2.5 * one))
    first = catalog.thumbnail("p", 0)
    assert catalog.thumbnail("p", 0) is first  # served from the cache
    for i in range(15):
        catalog.thumbnail("p", i)
        assert catalog.cached_bytes <= catalog.thumbnail_cache_bytes
    assert catalog.thumbnail("p", 0) is not first  # evicted long ago, made again


def test_a_file_gone_since_indexing(tmp_path, photo_folder, altclip_checkpoint):
    from tests.serve.conftest import embedded

    source = tmp_path / "source"
    source.mkdir()
    for path in sorted(photo_folder.glob("red-*.jpg")):
        (source / path.name).write_bytes(path.read_bytes())
    catalog = Catalog({"p": embedded(source, tmp_path / "out", altclip_checkpoint)})
    Path(catalog.source("p", 0)).unlink()
    with pytest.raises(ImageLoadError, match="no such file"):
        catalog.thumbnail("p", 0)
