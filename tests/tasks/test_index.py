"""FAISS index: exact search equals brute force; HNSW above the threshold; choice recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from altclip.tasks import Embedder
from altclip.tasks.collection import Collection, embed_collection
from altclip.tasks.index import SearchIndex, build_index


@pytest.fixture(scope="module")
def collection_folder(tmp_path_factory, image_folder, altclip_checkpoint):
    out = tmp_path_factory.mktemp("collection") / "out"
    embed_collection(
        image_folder,
        out,
        Embedder.from_pretrained(altclip_checkpoint),
        str(altclip_checkpoint),
        workers=0,
        shard_size=8,
        progress=False,
    )
    return out


def test_exact_index_equals_brute_force(collection_folder):
    info = build_index(collection_folder)
    assert info["type"] == "flat_ip" and info["count"] == 30
    vectors = Collection.open(collection_folder).embeddings().astype(np.float32)
    queries = np.random.default_rng(0).standard_normal((4, vectors.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    hits = SearchIndex(collection_folder).search(queries, k=5)
    paths = Collection.open(collection_folder).ok_paths()
    for query, found in zip(queries, hits, strict=True):
        scores = vectors @ query
        best = np.argsort(-scores)[:5]
        assert [h.path for h in found] == [paths[i] for i in best]
        np.testing.assert_allclose([h.score for h in found], scores[best], atol=1e-5)
        assert [h.rank for h in found] == [1, 2, 3, 4, 5]


def test_hnsw_above_the_threshold(collection_folder):
    info = build_index(collection_folder, exact_max=10)
    recorded = json.loads((collection_folder / "index" / "index.json").read_text())
    assert info == recorded and recorded["type"] == "hnsw_flat_ip" and recorded["exact"] is False
    vectors = Collection.open(collection_folder).embeddings().astype(np.float32)
    index = SearchIndex(collection_folder)
    hits = index.search(vectors[:10], k=1)
    assert [h[0].path for h in hits] == index.paths[:10]  # each stored vector finds itself
    build_index(collection_folder)  # back to exact for the other tests


def test_search_errors(tmp_path, collection_folder):
    with pytest.raises(ValueError, match="k must be at least 1"):
        SearchIndex(collection_folder).search(np.zeros((1, 16), np.float32), k=0)
    with pytest.raises(FileNotFoundError, match="not an embedding folder"):
        SearchIndex(tmp_path)
