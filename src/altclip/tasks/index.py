"""A FAISS index over a collection's embeddings, and search in it.

Vectors are unit length, so inner product is cosine similarity. Up to ``EXACT_MAX`` vectors the index is
exact (``IndexFlatIP``); above it, HNSW (``IndexHNSWFlat``, 32 links per node, efSearch 128), which needs
no training and keeps recall high at a fraction of the exact search's cost. The choice and its
parameters are recorded in ``index/index.json`` beside ``index/faiss.index``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from altclip import checkpoint
from altclip.tasks.collection import Collection

EXACT_MAX = 50_000
HNSW_LINKS, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 200, 128
INDEX_FILE, INDEX_INFO = "faiss.index", "index.json"


def build_index(folder: str | Path, exact_max: int = EXACT_MAX) -> dict[str, Any]:
    """Index every embedded image of a collection folder; returns what was recorded in index.json."""
    import faiss

    collection = Collection.open(folder)
    vectors = np.ascontiguousarray(collection.embeddings(), dtype=np.float32)
    count, dim = vectors.shape[0], collection.manifest["dim"]
    if count == 0:
        raise ValueError(f"{folder} holds no embedded images to index")
    if count <= exact_max:
        index = faiss.IndexFlatIP(dim)
        info = {"type": "flat_ip", "exact": True}
    else:
        index = faiss.IndexHNSWFlat(dim, HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        info = {
            "type": "hnsw_flat_ip",
            "exact": False,
            "links": HNSW_LINKS,
            "ef_construction": HNSW_EF_CONSTRUCTION,
            "ef_search": HNSW_EF_SEARCH,
        }
    index.add(vectors)
    info.update({"count": count, "dim": dim, "exact_max": exact_max, "metric": "inner product of unit vectors"})
    target = collection.folder / "index"
    with checkpoint.atomic_path(target / INDEX_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    checkpoint.atomic_write_bytes(target / INDEX_INFO, (json.dumps(info, indent=2) + "\n").encode("utf-8"))
    return info


DEDUP_THRESHOLD = 0.94  # clip-retrieval's rule: results at least this close to a better one are near-duplicates


@dataclass
class Hit:
    rank: int
    score: float
    path: str
    id: int  # the vector's row in the index (and in ``SearchIndex.paths``)


class SearchIndex:
    """A collection folder's index and the paths its ids stand for."""

    def __init__(self, folder: str | Path) -> None:
        import faiss

        self.collection = Collection.open(folder)
        path = self.collection.folder / "index" / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no index yet; run `altclip index {folder}`")
        self.index = faiss.read_index(str(path))
        self.info = json.loads((path.parent / INDEX_INFO).read_text(encoding="utf-8"))
        if self.info["type"].startswith("hnsw"):
            self.index.hnsw.efSearch = self.info["ef_search"]
        self.paths = self.collection.ok_paths()
        if len(self.paths) != self.index.ntotal:
            raise ValueError(
                f"{folder}: the index holds {self.index.ntotal} vectors but the collection "
                f"{len(self.paths)}; rebuild it with `altclip index {folder}`"
            )

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """(queries, dim) unit vectors -> the k best images for each, best first."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, ids = self.index.search(queries, min(k, self.index.ntotal))
        return [
            [
                Hit(rank + 1, float(s), self.paths[i], int(i))
                for rank, (s, i) in enumerate(zip(row_s, row_i, strict=True))
                if i >= 0
            ]
            for row_s, row_i in zip(scores, ids, strict=True)
        ]

    def search_unique(
        self, query: np.ndarray, k: int = 10, threshold: float = DEDUP_THRESHOLD
    ) -> tuple[list[Hit], int]:
        """The k best images for one (dim,) query with near-duplicates dropped, and how many were dropped.

        Walking the results best first, one is dropped when its inner product with a result already kept is at
        least ``threshold`` (clip-retrieval's 0.94). Greedy, so in a chain A~B~C where A and C differ, C stays.
        More candidates are fetched until k are kept or the index runs out.
        """
        fetch = min(len(self), max(4 * k, k + 64))
        while True:
            candidates = self.search(query, fetch)[0]
            vectors = self.vectors([h.id for h in candidates])
            kept: list[int] = []
            for i in range(len(candidates)):
                if not kept or float((vectors[kept] @ vectors[i]).max()) < threshold:
                    kept.append(i)
                    if len(kept) == k:
                        break
            if len(kept) == k or fetch == len(self):
                break
            fetch = min(len(self), 2 * fetch)
        last = kept[-1] if kept else -1
        dropped = (last + 1 - len(kept)) if len(kept) == k else len(candidates) - len(kept)
        hits = [Hit(rank + 1, candidates[i].score, candidates[i].path, candidates[i].id) for rank, i in enumerate(kept)]
        return hits, dropped

    def vectors(self, ids: list[int]) -> np.ndarray:
        """(len(ids), dim) float32: the stored vectors of these rows."""
        if not ids:
            return np.zeros((0, self.index.d), np.float32)
        return self.index.reconstruct_batch(np.asarray(ids, dtype=np.int64))
