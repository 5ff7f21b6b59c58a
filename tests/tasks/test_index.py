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


def naive_unique(vectors: np.ndarray, query: np.ndarray, k: int, threshold: float) -> tuple[list[int], int]:
    """Rank everything exactly, then keep each result unless it is near one already kept."""
    order = np.argsort(-(vectors @ query), kind="stable")
    kept, dropped = [], 0
    for i in order:
        if len(kept) == k:
            break
        if all(float(vectors[j] @ vectors[i]) < threshold for j in kept):
            kept.append(int(i))
        else:
            dropped += 1
    return kept, dropped


@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.94, 0.99, 1.01])
@pytest.mark.parametrize("k", [1, 3, 10, 100])
def test_search_unique_equals_a_naive_reference(collection_folder, threshold, k):
    build_index(collection_folder)
    index = SearchIndex(collection_folder)
    vectors = index.vectors(list(range(len(index))))
    np.testing.assert_allclose(vectors, Collection.open(collection_folder).embeddings().astype(np.float32))
    spread = float((vectors @ vectors.T)[np.triu_indices(len(vectors), 1)].min())
    assert spread < 0.94  # the data has both near and far pairs, so the thresholds matter
    query = vectors[:3].mean(axis=0)
    query /= np.linalg.norm(query)
    hits, dropped = index.search_unique(query, k=k, threshold=threshold)
    expected, expected_dropped = naive_unique(vectors, query, k, threshold)
    assert [h.id for h in hits] == expected and dropped == expected_dropped
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert [h.path for h in hits] == [index.paths[i] for i in expected]
    if threshold > 1:
        assert dropped == 0 and len(hits) == min(k, len(index))
