"""Near-duplicate photos of a collection: groups of images whose embeddings are nearly the same, found through
the collection's index (each image's nearest neighbours), never by comparing all pairs.

Two images are near-duplicates when the inner product of their unit vectors (their cosine) is at least the
threshold; groups are the connected sets of such pairs (a burst of five shots is one group even where its first
and last differ more). The default, 0.99, is immich's default for its duplicate detection (a cosine distance of
0.01). Each image's ``NEIGHBOURS`` nearest are looked at, so with an approximate index a pair the index misses
is missed too (its recall is in ``index.json``); a group larger than that is still found whole through its
chain of pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from altclip.errors import InputError
from altclip.search.index import Hit, SearchIndex
from altclip.tables import Result, format_table

DEFAULT_THRESHOLD = 0.99
NEIGHBOURS = 16
BATCH = 1024


@dataclass
class DuplicateGroup:
    """Images of one group, by row id and path, each with its cosine to the first (the group's lowest id)."""

    ids: list[int]
    paths: list[str]
    scores: list[float]

    def hits(self) -> list[Hit]:
        """The group as search results: rank, cosine to the first, path, id."""
        images = zip(self.ids, self.paths, self.scores, strict=True)
        return [Hit(rank, score, path, i) for rank, (i, path, score) in enumerate(images, 1)]

    def to_json(self) -> dict[str, Any]:
        images = zip(self.ids, self.paths, self.scores, strict=True)
        return {"images": [{"id": i, "path": p, "score": round(s, 4)} for i, p, s in images]}


@dataclass
class Duplicates(Result):
    """What ``find_duplicates`` found: the groups, largest first."""

    threshold: float
    images: int  # in the collection
    groups: list[DuplicateGroup]

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "images": self.images,
            "duplicates": sum(len(g.ids) - 1 for g in self.groups),
            "group_count": len(self.groups),
            "groups": [g.to_json() for g in self.groups],
        }

    def describe(self) -> str:
        extra = sum(len(g.ids) - 1 for g in self.groups)
        lines = [
            f"{len(self.groups)} groups of near-duplicates (cosine >= {self.threshold}) among {self.images} images: "
            f"{extra} could go, keeping one of each group"
        ]
        rows = [
            (str(n), f"{score:.4f}" if k else "first", path)
            for n, group in enumerate(self.groups, 1)
            for k, (path, score) in enumerate(zip(group.paths, group.scores, strict=True))
        ]
        if rows:
            lines += ["", format_table(["group", "cosine", "path"], rows)]
        return "\n".join(lines)


def find_duplicates(
    index: SearchIndex, threshold: float = DEFAULT_THRESHOLD, neighbours: int = NEIGHBOURS
) -> Duplicates:
    """Groups of near-duplicates among the indexed images (see the module docstring)."""
    if not 0 < threshold <= 1:
        raise InputError(f"threshold must be in (0, 1], got {threshold}")
    if neighbours < 1:
        raise InputError(f"neighbours must be at least 1, got {neighbours}")
    count = len(index)
    parent = np.arange(count)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    wanted = min(count, neighbours + 1)  # an image finds itself first
    for start in range(0, count, BATCH):
        rows = np.arange(start, min(count, start + BATCH))
        vectors = index.vectors(rows.tolist())  # the stored vectors, exact
        scores, ids = index.search_rows(vectors, wanted)
        for row, found, near in zip(rows, ids, scores, strict=True):
            for other, score in zip(found, near, strict=True):
                if other >= 0 and other != row and score >= threshold:
                    a, b = root(int(row)), root(int(other))
                    if a != b:
                        parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for i in range(count):
        members.setdefault(root(i), []).append(i)
    groups = []
    for ids in (m for m in members.values() if len(m) > 1):
        vectors = index.vectors(ids)
        scores = (vectors @ vectors[0]).tolist()  # exact cosines to the first
        groups.append(DuplicateGroup(ids, [index.paths[i] for i in ids], [float(s) for s in scores]))
    groups.sort(key=lambda g: (-len(g.ids), g.ids[0]))
    return Duplicates(threshold, count, groups)
