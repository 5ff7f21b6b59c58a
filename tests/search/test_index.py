"""FAISS index: chosen by size and memory, built streaming, recall measured and recorded, searched mapped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from altclip.search.collection import Collection, embed_collection, write_vectors
from altclip.search.index import SearchIndex, build_index, choose_index, exact_search
from altclip.tasks import Embedder


@pytest.fixture(scope="module")
def collection_folder(tmp_path_factory, image_folder, altclip_checkpoint):
    out = tmp_path_factory.mktemp("collection") / "out"
    embed_collection(
        image_folder,
        out,
        Embedder.from_pretrained(altclip_checkpoint),
        str(altclip_checkpoint),
        workers=0,
        part_size=8,
        progress=False,
    )
    return out


def test_exact_index_equals_brute_force(collection_folder):
    info = build_index(collection_folder)
    assert info.kind == "flat" and info.exact and info.count == 30 and info.recall_at_10 == 1.0
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


def test_hnsw_when_asked(collection_folder):
    info = build_index(collection_folder, kind="hnsw")
    recorded = json.loads((collection_folder / "index" / "index.json").read_text())
    assert info.to_json() == recorded and recorded["kind"] == "hnsw" and recorded["exact"] is False
    assert recorded["params"]["efSearch"] >= 16 and recorded["recall@10"] >= 0.95
    vectors = Collection.open(collection_folder).embeddings().astype(np.float32)
    index = SearchIndex(collection_folder)
    hits = index.search(vectors[:10], k=1)
    assert [h[0].path for h in hits] == index.paths[:10]  # each stored vector finds itself
    build_index(collection_folder)  # back to exact for the other tests


GIB = 2**30


@pytest.mark.parametrize(
    ("count", "memory", "kind", "expected"),
    [
        (30, GIB, "auto", "Flat"),
        (50_000, GIB, "auto", "Flat"),
        (50_001, GIB, "auto", "HNSW32"),
        (1_000_000, 4 * GIB, "auto", "HNSW32"),  # 3.3 GB
        (1_000_000, 3 * GIB, "auto", "IVF4096,PQ384x4fs,Refine(SQ8)"),  # HNSW would need 3.3 GB
        (1_000_000, 2 * GIB, "auto", "IVF4096,PQ384x4fs,Refine(SQ8)"),  # 0.97 GB
        (10_000_000, 4 * GIB, "auto", "IVF16384,PQ384x4fs"),  # re-ranking codes would need 7.7 GB
        (100_000_000, 4 * GIB, "auto", "OPQ48,IVF32768,PQ48x4fs"),  # 32 bytes a vector
        (1_000, GIB, "ivfpq", "IVF16,PQ384x4fs,Refine(SQ8)"),  # at least 39 training vectors per list
        (1_000, GIB, "hnsw", "HNSW32"),
        (40_000, 64 * 2**20, "auto", "IVF1024,PQ384x4fs,Refine(SQ8)"),  # exact does not fit 64 MB
    ],
)
def test_auto_chooses_by_size_and_memory(count, memory, kind, expected):
    choice = choose_index(count, 768, memory, kind)
    assert choice.factory == expected
    assert choice.bytes <= memory


def test_choice_errors():
    with pytest.raises(ValueError, match=r"need at least 32\.2 GB as IVF-PQ; --memory 100 MB is too small"):
        choose_index(1_000_000_000, 768, 10**8)
    with pytest.raises(
        ValueError, match=r"a flat index of 10,000,000 vectors needs about 30\.7 GB, more than --memory 4\.29 GB"
    ):
        choose_index(10_000_000, 768, 4 * GIB, "flat")
    with pytest.raises(ValueError, match="index kind 'lsh' is not one of auto, flat, hnsw, ivfpq"):
        choose_index(10, 768, GIB, "lsh")
    with pytest.raises(ValueError, match="--memory '4 apples' is not a size"):
        build_index("anywhere", memory="4 apples")


def clustered(rows: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors in groups of near neighbours around shared topics, like image embeddings."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((40, dim))
    groups = topics[rng.integers(0, 40, rows // 5)] + 0.8 * rng.standard_normal((rows // 5, dim))
    x = groups[rng.integers(0, rows // 5, rows)] + 0.5 * rng.standard_normal((rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vector_folder(tmp_path_factory) -> Path:
    vectors = clustered(6000, 32, seed=0)
    out = tmp_path_factory.mktemp("vectors") / "out"
    write_vectors(out, np.array_split(vectors, 5), 5, 32, "synthetic")
    return out


def test_ivfpq_streams_the_shards_and_records_its_measured_recall(vector_folder, monkeypatch):
    def whole(*args, **kwargs):
        raise AssertionError("the vectors were read whole")

    monkeypatch.setattr(Collection, "embeddings", whole)
    info = build_index(vector_folder, kind="ivfpq", memory="64MB")
    assert info.factory == "IVF128,PQ16x4fs,Refine(SQ8)" and info.trained_on >= 39 * 128
    assert info.recall_queries == {"count": 600, "source": "images held out of the training sample"}
    assert info.recall_at_10 >= 0.95 and 1 <= info.params["nprobe"] <= 128

    # the recorded recall is what a naive reference measures through SearchIndex, mapped or read, each
    # query (a stored image) left out of its own results and truth
    monkeypatch.undo()
    vectors = Collection.open(vector_folder).embeddings().astype(np.float32)
    rows = np.sort(np.random.default_rng(0).choice(len(vectors), 600, replace=False))
    truth = np.argsort(-(vectors[rows] @ vectors.T), axis=1, kind="stable")[:, :11]
    for mmap in (False, True):
        found = SearchIndex(vector_folder, mmap=mmap).search(vectors[rows], k=11)
        shares = []
        for row, hits, t in zip(rows, found, truth, strict=True):
            ids, best = [h.id for h in hits if h.id != row][:10], [i for i in t if i != row][:10]
            shares.append(len(set(ids) & set(best)) / 10)
        assert np.mean(shares) == pytest.approx(info.recall_at_10, abs=1e-3)


def test_opq_is_kept_only_where_it_helps(vector_folder):
    info = build_index(vector_folder, kind="ivfpq", memory="100KB")  # codes of 8 dimensions: OPQ is a candidate
    check = info.opq_check
    assert check["kept"] == (check["with_opq"] > check["without"]) and 0 < check["without"] <= 1
    assert info.factory == ("OPQ4,IVF128,PQ4x4fs" if check["kept"] else "IVF128,PQ4x4fs")
    vectors = Collection.open(vector_folder).embeddings().astype(np.float32)
    hits = SearchIndex(vector_folder).search(vectors[:20], k=10)  # every vector is in it (coarse codes: near)
    assert sum(i in {h.id for h in found} for i, found in enumerate(hits)) >= 12  # chance: 20 * 10 / 6000


def test_exact_search_equals_a_naive_reference(vector_folder):
    collection = Collection.open(vector_folder)
    vectors = collection.embeddings().astype(np.float32)
    queries = clustered(7, 32, seed=1)
    expected = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    blocks = list(collection.blocks(block=500))  # read from the files, not mapped
    assert len(blocks) == 15 and np.array_equal(np.concatenate(blocks), collection.embeddings())
    found, scores = exact_search(collection, queries, 10, block=500)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, found, 1), rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, expected, 1), rtol=0, atol=1e-6)


def test_duplicates_tie_rather_than_miss(tmp_path):
    """Equal vectors (duplicate images) may come back in any order: exact search must still score 1.0."""
    vectors = np.repeat(clustered(400, 32, seed=2), 3, axis=0)  # every vector three times
    write_vectors(tmp_path / "dups", [vectors], 1, 32, "synthetic")
    assert build_index(tmp_path / "dups", kind="flat").recall_at_10 == 1.0
    assert build_index(tmp_path / "dups", kind="hnsw").recall_at_10 >= 0.95


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
