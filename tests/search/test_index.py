"""FAISS index: chosen by size and memory, built streaming, recall measured and recorded, searched mapped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from altclip.search import index
from altclip.search.collection import FAILURE_SCHEMA, Collection, Item, embed_collection, metadata_table, write_vectors
from altclip.search.index import SearchIndex, build_index, choose_index, exact_search, update_index
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
        ValueError, match=r"a flat index of 10,000,000 vectors needs about 30\.8 GB, more than --memory 4\.29 GB"
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


def replace_parts(folder: Path, drop: list[int], add: dict[int, np.ndarray]) -> None:
    """What an update of a folder collection does to its parts: some leave, new ones come with fresh ids."""
    collection = Collection.open(folder)
    for part, vectors in add.items():
        paths = [f"{part}/{i}" for i in range(len(vectors))]
        metadata = metadata_table([(Item(p, p, None), 0, 0) for p in paths])
        collection.write_part(part, list(vectors), FAILURE_SCHEMA.empty_table(), metadata)
    parts = sorted({*collection.parts, *add} - set(drop))
    state = {"generation": collection.generation + 1, "next_part": max(parts) + 1, "parts": parts, "files": {}}
    (folder / "files.json").write_text(json.dumps(state))


def copy_of(folder: Path, tmp_path: Path) -> Path:
    shutil.copytree(folder, tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy" / "index")
    return tmp_path / "copy"


def test_an_exact_index_updated_in_place_equals_a_fresh_one(tmp_path):
    out = tmp_path / "out"
    write_vectors(out, np.array_split(clustered(900, 32, seed=2), 3), 3, 32, "synthetic")
    built = build_index(out, kind="flat")
    assert built.parts == [[0, 300], [1, 300], [2, 300]] and built.built_because == "built"
    replace_parts(out, drop=[1], add={3: clustered(120, 32, seed=3), 4: clustered(50, 32, seed=4)})
    with pytest.raises(ValueError, match="the index was built for update 0 of the collection, which is at update 1"):
        SearchIndex(out)

    info = update_index(out, kind="flat")
    assert info.built_because == "built" and info.updates_in_place == 1 and info.count == 770
    assert info.last_update["added"] == 170 and info.last_update["removed"] == 300 and info.recall_at_10 == 1.0
    assert json.loads((out / "index" / "index.json").read_text())["updates_in_place"] == 1
    assert update_index(out, kind="flat") == info  # nothing changed since: kept as it is

    fresh = copy_of(out, tmp_path)
    build_index(fresh, kind="flat")
    queries = clustered(20, 32, seed=5)
    vectors = Collection.open(out).embeddings().astype(np.float32)
    expected = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]  # the naive reference
    ours, theirs = SearchIndex(out).search(queries, k=10), SearchIndex(fresh).search(queries, k=10)
    for a, b, best in zip(ours, theirs, expected, strict=True):
        assert [h.path for h in a] == [h.path for h in b] == [SearchIndex(out).paths[i] for i in best]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-6)


def test_ivf_adds_in_place_until_it_would_drift(tmp_path):
    out = tmp_path / "out"
    vectors = clustered(7000, 32, seed=6)  # one distribution: 3,000 at first, more of the same later
    write_vectors(out, np.array_split(vectors[:3000], 3), 3, 32, "synthetic")
    built = build_index(out, kind="ivfpq", memory="10MB")
    assert built.kind == "ivfpq" and built.trained_on
    replace_parts(out, drop=[], add={3: vectors[3000:3300]})
    info = update_index(out, kind="ivfpq", memory="10MB")
    assert info.updates_in_place == 1 and info.changed_since_build == 300 and info.count == 3300
    assert info.recall_queries["count"] == 330 and info.recall_at_build == built.recall_at_10  # measured again
    stored = Collection.open(out).embeddings().astype(np.float32)
    hits = SearchIndex(out).search(stored[3000:], k=10)  # the new part's vectors are found where they are
    assert sum(3000 + i in {h.id for h in found} for i, found in enumerate(hits)) >= 285

    replace_parts(out, drop=[], add={4: vectors[3300:7000]})  # 4,000 of 7,000 unseen by its training
    drifted = update_index(out, kind="ivfpq", memory="10MB")
    assert (
        drifted.updates_in_place == 0
        and "4,000 of its 7,000 vectors changed since its training" in drifted.built_because
    )
    replace_parts(out, drop=[3], add={})
    removed = update_index(out, kind="ivfpq", memory="10MB")
    assert removed.updates_in_place == 0 and "cannot remove" in removed.built_because and removed.count == 6700


def test_hnsw_adds_in_place_and_is_built_again_when_vectors_leave(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_vectors(out, np.array_split(clustered(600, 32, seed=8), 2), 2, 32, "synthetic")
    build_index(out, kind="hnsw")
    replace_parts(out, drop=[], add={2: clustered(100, 32, seed=9)})
    added = update_index(out, kind="hnsw")
    assert added.updates_in_place == 1 and added.count == 700 and added.recall_at_10 >= 0.95
    replace_parts(out, drop=[0], add={})
    rebuilt = update_index(out, kind="hnsw")
    assert rebuilt.updates_in_place == 0 and "cannot remove" in rebuilt.built_because and rebuilt.count == 400

    def poor(*args):
        return {"efSearch": 512}, 0.9

    monkeypatch.setattr(index, "tune", poor)  # below the target, where the build reached it
    replace_parts(out, drop=[], add={5: clustered(10, 32, seed=11)})
    fallen = update_index(out, kind="hnsw")
    assert fallen.updates_in_place == 0 and fallen.built_because.startswith("built again: recall@10 fell to 0.900")
    monkeypatch.undo()
    replace_parts(out, drop=[], add={3: clustered(10_000, 32, seed=10)})
    grown = update_index(out, kind="auto", exact_max=5_000)  # past exact search's size: the kind auto picks
    assert grown.kind == "hnsw" and grown.updates_in_place == 1
    shrunk = update_index(out, kind="flat")
    assert shrunk.kind == "flat" and shrunk.built_because == "built again: flat search asked for, not hnsw"
    replace_parts(out, drop=[], add={6: clustered(10, 32, seed=12)})
    regrown = update_index(out, kind="auto", exact_max=5_000)
    assert (
        regrown.kind == "hnsw" and regrown.built_because == "built again: 10,420 vectors call for hnsw search, not flat"
    )


def test_an_index_file_that_index_json_does_not_describe_is_not_trusted(tmp_path):
    """As between ``save_index``'s two renames: the file of one update beside the description of another."""
    out = tmp_path / "out"
    write_vectors(out, [clustered(100, 32, seed=13)], 1, 32, "synthetic")
    build_index(out, kind="flat")
    recorded = json.loads((out / "index" / "index.json").read_text())
    (out / "index" / "index.json").write_text(json.dumps({**recorded, "file_bytes": recorded["file_bytes"] + 8}))
    with pytest.raises(ValueError, match=r"the index file is not the one index\.json describes"):
        SearchIndex(out)
    replace_parts(out, drop=[], add={1: clustered(10, 32, seed=14)})
    rebuilt = update_index(out, kind="flat")
    assert rebuilt.updates_in_place == 0 and "its file did not match" in rebuilt.built_because
    assert len(SearchIndex(out)) == 110
