"""Near-duplicates through the index: groups equal those of comparing every pair, at any threshold."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from altclip.search.collection import write_vectors
from altclip.search.duplicates import find_duplicates
from altclip.search.index import SearchIndex, build_index


def naive_groups(vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected sets of pairs at least ``threshold`` apart, from every pair."""
    scores = vectors @ vectors.T
    groups, seen = [], set()
    for start in range(len(vectors)):
        if start in seen:
            continue
        group, todo = set(), [start]
        while todo:
            i = todo.pop()
            if i not in group:
                group.add(i)
                todo += [j for j in np.flatnonzero(scores[i] >= threshold) if j not in group]
        seen |= group
        if len(group) > 1:
            groups.append(sorted(int(i) for i in group))
    return sorted(groups, key=lambda g: (-len(g), g[0]))


@pytest.fixture(scope="module")
def bursts(tmp_path_factory):
    """200 random photos, 20 of them with near-copies: bursts of 2 to 4 shots, each a small step from the last."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 32)).astype(np.float32)
    extra = []
    for i in range(20):
        shot = vectors[i * 7]
        for _ in range(1 + i % 3):
            shot = shot + 0.08 * rng.standard_normal(32).astype(np.float32)
            extra.append(shot)
    vectors = np.concatenate([vectors, np.stack(extra)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = tmp_path_factory.mktemp("bursts") / "emb"
    write_vectors(out, [vectors[:120], vectors[120:]], 2, 32, "synthetic")
    build_index(out, kind="flat")
    stored = np.concatenate([np.load(p) for p in sorted((out / "img_emb").iterdir())]).astype(np.float32)
    return out, stored


@pytest.mark.parametrize("threshold", [0.99, 0.995, 0.9])
def test_groups_equal_all_pairs(bursts, threshold):
    out, vectors = bursts
    found = find_duplicates(SearchIndex(out), threshold=threshold)
    assert [g.ids for g in found.groups] == naive_groups(vectors, threshold)
    if threshold == 0.99:
        assert 15 <= len(found.groups) <= 20
    for group in found.groups:
        assert group.scores[0] == pytest.approx(1.0, abs=1e-3)
        np.testing.assert_allclose(group.scores, vectors[group.ids] @ vectors[group.ids[0]], atol=1e-5)


def test_the_command(bursts):
    out, vectors = bursts
    command = [sys.executable, "-m", "altclip.cli", "duplicates", str(out), "--threshold", "0.99"]
    result = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    groups = naive_groups(vectors, 0.99)
    assert found["group_count"] == len(groups) and found["duplicates"] == sum(len(g) - 1 for g in groups)
    assert [[image["id"] for image in g["images"]] for g in found["groups"]] == groups
    table = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    assert f"{len(groups)} groups of near-duplicates (cosine >= 0.99) among {len(vectors)} images" in table
    bad = subprocess.run([*command[:-1], "1.5"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "threshold must be in (0, 1], got 1.5" in bad.stderr
