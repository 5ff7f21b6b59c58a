"""Tar shards: patterns and listings expand in order, samples group by key, members read by offset."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from altclip.data.shards import expand_shards, is_shard_spec, scan_shard, scanned_ahead, split_name
from tests.conftest import make_shards


def test_patterns_and_listings_expand_to_the_same_shards(tmp_path):
    paths = [str(p) for p in make_shards(tmp_path / "shards", shards=3, per_shard=2, broken=False)]
    assert expand_shards(tmp_path / "shards" / "{00000..00002}.tar") == paths
    assert expand_shards(str(tmp_path / "shards" / "0000{0,2}.tar")) == [paths[0], paths[2]]
    assert expand_shards(paths[1]) == [paths[1]]
    listing = tmp_path / "shards.txt"
    listing.write_text("shards/00000.tar\n\n" + paths[1] + "\nshards/{00002..00002}.tar\n")
    assert expand_shards(listing) == paths  # relative lines from the listing's folder
    assert is_shard_spec(listing) and is_shard_spec("x/{0..9}.tar") and not is_shard_spec(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"shard .*00003.tar does not exist \(and 1 more\)"):
        expand_shards(tmp_path / "shards" / "{00000..00004}.tar")


def test_a_shard_scans_into_samples_by_key(tmp_path):
    shard = make_shards(tmp_path, shards=1, per_shard=4)[0]
    samples = {s.key: s for s in scan_shard(shard)}
    assert list(samples)[:4] == ["000000000", "000000001", "000000002", "000000003"]
    first = samples["000000000"]
    assert first.image.name == "000000000.jpg" and first.caption == "红色圆形" and first.meta["url"].endswith(".jpg")
    with tarfile.open(shard) as tar:  # reading by offset gives the member's bytes
        assert first.image.read() == tar.extractfile("000000000.jpg").read()
    assert samples["orphan"].image is None and samples["orphan"].caption == "a caption without an image"
    assert split_name("a/b.c.JPG") == ("a/b", "c.jpg") and split_name("noext") == ("noext", "")


def test_a_compressed_or_broken_shard_is_named(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("empty.txt"), io.BytesIO(b""))
    (tmp_path / "z.tar").write_bytes(gzip.compress(buffer.getvalue()))
    with pytest.raises(ValueError, match=r"z.tar is not a readable uncompressed tar shard"):
        scan_shard(tmp_path / "z.tar")
    (tmp_path / "junk.tar").write_bytes(b"junk" * 300)
    with pytest.raises(ValueError, match=r"junk.tar is not a readable uncompressed tar shard"):
        scan_shard(tmp_path / "junk.tar")


@pytest.mark.parametrize("count", [0, 1, 2, 5])
def test_scanned_ahead_gives_what_scanning_in_turn_gives(tmp_path, count):
    shards = [str(p) for p in make_shards(tmp_path / "s", shards=count, per_shard=2, broken=False)] if count else []
    ahead = [[s.key for s in samples] for samples in scanned_ahead(scan_shard, shards)]
    assert ahead == [[s.key for s in scan_shard(shard)] for shard in shards]
