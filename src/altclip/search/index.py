"""A FAISS index over a collection's embeddings, chosen for its size and a memory budget, and search in it.

Vectors are unit length, so inner product is cosine similarity. Kinds, built with FAISS's ``index_factory``:

* ``flat``: exact search (``IndexFlatIP``), 4 bytes per dimension per vector.
* ``hnsw``: a graph (``HNSW32``, efConstruction 200): no training, recall near exact, about 5 bytes per
  dimension per vector.
* ``ivfpq``: an inverted file of product-quantized codes for collections that do not fit in memory:
  ``nlist`` ≈ 4√n lists, 4-bit fast-scan codes of two dimensions each, re-ranked by 8-bit codes of the whole
  vector where the budget allows (``Refine(SQ8)``), or shorter codes where it does not. Once a code covers 8
  dimensions or more, an OPQ rotation (which balances the variance between sub-quantizers) is tried too and
  kept only if it finds more neighbours on a sample of the data (``opq_or_not``): on synthetic clustered
  vectors it did not, and it made training 30 times slower.

``auto`` takes ``flat`` up to ``EXACT_MAX`` vectors, ``hnsw`` up to ``HNSW_MAX`` when it fits the budget, and
``ivfpq`` beyond. A trained index learns from a sample of the vectors; then every part is added in turn,
read memory-mapped, so the vectors are never all in memory. Each vector's id in the index is its part's id
and its row in the part (``ids_of``), which an update of the collection leaves alone: parts never change
once written, an update writes new ones and drops the ones it replaced. Its search parameter (HNSW's efSearch, IVF's
nprobe) is tuned on held-out queries: the smallest value whose recall@10 against exact search reaches
``RECALL_TARGET``. The queries are the collection's caption vectors when it has them (real cross-modal
queries, none in the index), otherwise images left out of the training sample, each left out of its own
results too. ``index/index.json`` records
the kind, factory string, parameters, estimated memory and the measured recall@10.

**Updates** (``update_index``, after a folder collection's update): the index drops the vectors of the parts
that left the collection and adds those of the new parts, in place, then measures its recall again and
re-tunes its search parameter when the recall fell below the target. It is built again instead when:

* the kind ``auto`` chooses for the new size differs (the collection outgrew flat search, say);
* parts left and the index cannot remove vectors in place, which only flat search can (``removable``);
* a trained index (IVF-PQ) would drift: more vectors added and removed since its training than
  ``DRIFT_SHARE`` of those it would hold, so that its lists and codes, learnt from other data, may no longer fit;
* it reached ``RECALL_TARGET`` when it was built, and its recall@10, measured again after the update with the
  search parameter re-tuned, fell more than ``RECALL_SLACK`` below it (an index whose codes could not reach
  the target in the memory budget is held to the share rule alone: its recall moves with the queries);
* the index predates part ids, or its file does not match its ``index.json``.

``index.json`` says which (``built_because``), and counts the updates made in place since the build.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from altclip.data.shards import TarMember
from altclip.errors import InputError, MissingFileError
from altclip.files import atomic_path, parse_size, read_json, write_json
from altclip.search.collection import Collection
from altclip.tables import Result

KINDS = ("auto", "flat", "hnsw", "ivfpq")
EXACT_MAX, HNSW_MAX = 50_000, 5_000_000
DEFAULT_MEMORY = "4GB"
HNSW_LINKS, HNSW_EF_CONSTRUCTION = 32, 200
REFINE_K_FACTOR = 8  # candidates re-ranked per result wanted
RECALL_TARGET, RECALL_K, QUERIES = 0.95, 10, 1000
IVFPQ_MIN = 39 * 16  # FAISS's k-means wants 39 points per centroid, and each 4-bit code has 16
TRAIN_PER_LIST, TRAIN_MAX = 40, 163_840  # training sample: vectors per inverted list, and at most
ADD_BLOCK = 32_768  # vectors converted to float32 and added at a time
INDEX_FILE, INDEX_INFO = "faiss.index", "index.json"
ROW_BITS = 32  # a vector's id: its part's id above these bits, its row in the part below
ID_BYTES = 8  # the id map's memory per vector
DRIFT_SHARE = 0.5  # a trained index is built again once its vectors changed by this share since its training
RECALL_SLACK = 0.02  # an index updated in place may fall this far below RECALL_TARGET, not further


@dataclass
class Choice:
    kind: str
    factory: str
    bytes: int  # estimated memory of the built index
    why: str


@dataclass
class IndexInfo(Result):
    """What was built and how well it finds neighbours; ``index/index.json`` holds it."""

    kind: str  # flat, hnsw or ivfpq
    factory: str  # FAISS's index_factory string
    why: str
    count: int
    dim: int
    params: dict[str, int]  # search parameters (efSearch, nprobe, k_factor)
    recall_at_10: float  # measured on held-out queries against exact search ("recall@10" in JSON)
    recall_queries: dict[str, Any]
    trained_on: int  # vectors in the training sample (0: no training)
    memory_budget_bytes: int
    estimated_bytes: int
    build_seconds: float
    file_bytes: int
    opq_check: dict[str, Any] | None = None  # with and without OPQ's rotation, where it was tried
    generation: int = 0  # the collection's update it indexes (``Collection.generation``)
    parts: list[list[int]] | None = None  # [part id, vectors] of the parts it holds (None: ids are rows)
    built_because: str = "built"  # why the last full build happened
    recall_at_build: float | None = None  # recall@10 when it was built
    updates_in_place: int = 0  # updates since the build that added and removed vectors in place
    changed_since_build: int = 0  # vectors added and removed in place since the build
    last_update: dict[str, Any] | None = None  # the last in-place update since the build: added, removed, seconds

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def to_json(self) -> dict[str, Any]:
        values = {k: v for k, v in asdict(self).items() if v is not None}
        values[f"recall@{RECALL_K}"] = values.pop("recall_at_10")
        return {**values, "exact": self.exact, "metric": "inner product of unit vectors"}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> IndexInfo:
        known = {f.name for f in fields(cls)}
        renamed = {("recall_at_10" if k == f"recall@{RECALL_K}" else k): v for k, v in values.items()}
        return cls(**{k: v for k, v in renamed.items() if k in known})


def ivfpq_lists(count: int) -> int:
    """nlist: a power of two near 4√n, with at least 39 training vectors per list (FAISS's minimum)."""
    near = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(count))))
    return 2 ** int(math.log2(max(1, min(near, 65_536, count // 39))))


def ivfpq_choices(count: int, dim: int) -> list[Choice]:
    """The IVF-PQ family, most accurate first: 4-bit codes of 2 dimensions with 8-bit re-ranking, without it,
    then OPQ with 8 and 16 dimensions per code."""
    lists = ivfpq_lists(count)
    centroids = lists * dim * 4
    choices = []
    for per_code, refine in ((2, True), (2, False), (8, False), (16, False)):
        m = max(1, dim // per_code)
        m += m % 2  # fast scan packs codes in pairs
        if dim % m:
            continue
        rotate = f"OPQ{m}," if per_code >= 8 else ""
        factory = f"{rotate}IVF{lists},PQ{m}x4fs" + (",Refine(SQ8)" if refine else "")
        per_vector = m // 2 + 8 + (dim + ID_BYTES if refine else 0)  # codes, id, re-ranking codes and their id map
        why = f"{per_code} dimensions per 4-bit code" + (", re-ranked with 8-bit codes" if refine else "")
        choices.append(Choice("ivfpq", factory, count * per_vector + centroids, why))
    return choices


def choose_index(count: int, dim: int, memory: int, kind: str = "auto", exact_max: int = EXACT_MAX) -> Choice:
    """What to build for ``count`` vectors of ``dim`` within ``memory`` bytes (see the module docstring)."""
    if kind not in KINDS:
        raise InputError(f"index kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "ivfpq" and count < IVFPQ_MIN:
        raise InputError(f"IVF-PQ needs at least {IVFPQ_MIN} vectors to train its codes, not {count}; use --kind flat")
    flat = Choice("flat", "Flat", count * (dim * 4 + ID_BYTES), "exact search")
    hnsw = Choice("hnsw", f"HNSW{HNSW_LINKS}", count * (dim * 4 + HNSW_LINKS * 2 * 4 + 16 + ID_BYTES), "graph search")
    ivfpq = ivfpq_choices(count, dim)
    fitting = [c for c in ivfpq if c.bytes <= memory and count >= IVFPQ_MIN]
    if kind == "flat" or (kind == "auto" and count <= exact_max and flat.bytes <= memory):
        choice = flat
    elif kind == "hnsw" or (kind == "auto" and count <= HNSW_MAX and hnsw.bytes <= memory):
        choice = hnsw
    elif fitting:
        choice = fitting[0]
    else:
        raise InputError(
            f"{count:,} vectors of {dim} dimensions need at least {readable(ivfpq[-1].bytes)} as IVF-PQ; "
            f"--memory {readable(memory)} is too small"
        )
    if choice.bytes > memory:
        raise InputError(
            f"a {choice.kind} index of {count:,} vectors needs about {readable(choice.bytes)}, more than "
            f"--memory {readable(memory)}; raise --memory or use --kind auto"
        )
    return choice


def readable(size: int) -> str:
    """Bytes as people write them: 819 KB, 3.27 GB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def build_index(
    folder: str | Path,
    kind: str = "auto",
    memory: int | str = DEFAULT_MEMORY,
    exact_max: int = EXACT_MAX,
    seed: int = 0,
    because: str = "built",
) -> IndexInfo:
    """Index every embedded image of a collection folder; returns what was recorded in index.json
    (``because``: why it was built, recorded as ``built_because``)."""
    import faiss

    started = time.perf_counter()
    budget = parse_size(memory, "--memory")
    collection = Collection.open(folder)
    count, dim = collection.count(), collection.dim
    if count == 0:
        raise InputError(f"{folder} holds no embedded images to index")
    choice = choose_index(count, dim, budget, kind, exact_max)
    truth, query_source = measured_truth(collection, count, seed)  # before the index takes its memory

    index = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    trained_on, checked = 0, None
    if not index.is_trained:
        lists = ivfpq_lists(count)
        sample = sample_rows(collection, count, min(TRAIN_MAX, TRAIN_PER_LIST * lists), truth.rows, seed)
        trained_on = len(sample)
        if choice.factory.startswith("OPQ"):
            choice, index, checked = opq_or_not(choice, sample, truth.queries)
        else:
            index.train(sample)
        del sample
    if choice.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    if "Refine" in choice.factory:
        reserve_codes(faiss.downcast_index(index.refine_index), count)
    if not native_ids(choice.factory):
        index = faiss.IndexIDMap(index)
    parts = part_counts(collection)
    ids = ids_of(parts)
    start = 0
    for vectors in collection.blocks(block=ADD_BLOCK):  # a block of a part at a time
        index.add_with_ids(vectors.astype(np.float32), ids[start : start + len(vectors)])
        start += len(vectors)

    params, recall = tune(index, choice, truth, ids)
    info = IndexInfo(
        kind=choice.kind,
        factory=choice.factory,
        why=choice.why,
        count=count,
        dim=dim,
        params=params,
        recall_at_10=round(recall, 4),
        recall_queries={"count": len(truth.queries), "source": query_source},
        trained_on=trained_on,
        opq_check=checked,
        memory_budget_bytes=budget,
        estimated_bytes=choice.bytes,
        build_seconds=round(time.perf_counter() - started, 1),
        file_bytes=0,
        generation=collection.generation,
        parts=parts,
        built_because=because,
        recall_at_build=round(recall, 4),
    )
    return save_index(collection, index, info)


def save_index(collection: Collection, index: Any, info: IndexInfo) -> IndexInfo:
    """The index file, then ``index.json`` naming it, each atomically: a reader sees the old pair or the new
    one (``SearchIndex`` refuses a file whose size ``index.json`` does not give)."""
    import faiss

    target = collection.folder / "index"
    with atomic_path(target / INDEX_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    info.file_bytes = (target / INDEX_FILE).stat().st_size
    write_json(target / INDEX_INFO, info.to_json())
    return info


def native_ids(factory: str) -> bool:
    """Whether an index of this factory string keeps ids of its own (IVF's lists); others are wrapped in
    FAISS's id map. IVF's re-ranking wrapper (``Refine``) takes no ids."""
    return "IVF" in factory and "Refine" not in factory


def removable(factory: str) -> bool:
    """Whether vectors can leave such an index in place. Flat search: yes. FAISS's HNSW graph cannot remove, nor
    can IVF's re-ranking wrapper (``Refine``); IVF's 4-bit fast-scan lists do remove, but in FAISS 1.15.1 the
    vectors added after a removal were then mostly not found (a vector's own query: 38% found among its 10
    best, against 100% without the removal), so they are treated as unable to."""
    return not factory.startswith("HNSW") and "Refine" not in factory and "fs" not in factory


def part_counts(collection: Collection) -> list[list[int]]:
    """[part id, vectors] of each finished part, in vector order (from the .npy headers)."""
    maps = collection.part_embeddings(cached=False)
    return [[part, len(v)] for part, v in zip(collection.finished_parts(), maps, strict=True)]


def ids_of(parts: list[list[int]]) -> np.ndarray:
    """(vectors,) int64: each vector's id, in vector order ([part id, vectors] of each part, as ``part_counts``
    gives them; increasing, as the parts' ids are)."""
    blocks = [(part << ROW_BITS) + np.arange(rows, dtype=np.int64) for part, rows in parts]
    return np.concatenate(blocks) if blocks else np.zeros(0, np.int64)


def rows_of(found: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Ids the index returned (-1: none) as rows of the collection (-1 where none)."""
    rows = np.searchsorted(ids, found)
    return np.where(found >= 0, rows, -1)


def update_index(
    folder: str | Path,
    kind: str = "auto",
    memory: int | str = DEFAULT_MEMORY,
    exact_max: int = EXACT_MAX,
    seed: int = 0,
) -> IndexInfo:
    """Bring a collection's index to the collection's current parts: in place where FAISS can, else built
    again (the module docstring says when). Returns what ``index.json`` records."""
    import faiss

    started = time.perf_counter()
    collection = Collection.open(folder)
    target = collection.folder / "index"
    rebuild = functools.partial(build_index, folder, kind, memory, exact_max, seed)
    if not (target / INDEX_INFO).is_file() or not (target / INDEX_FILE).is_file():
        return rebuild(because="built: the collection had no index")
    info = IndexInfo.from_json(read_json(target / INDEX_INFO))
    current = part_counts(collection)
    if kind not in ("auto", info.kind):
        return rebuild(because=f"built again: {kind} search asked for, not {info.kind}")
    if info.generation == collection.generation and info.parts in (None, current):
        return info  # still true to the collection
    count = sum(rows for _, rows in current)
    if count == 0:
        raise InputError(f"{folder} holds no embedded images to index")
    if info.parts is None or info.file_bytes != (target / INDEX_FILE).stat().st_size:
        return rebuild(because="built again: the index had no part ids, or its file did not match index.json")
    choice = choose_index(count, collection.dim, parse_size(memory, "--memory"), kind, exact_max)
    if choice.kind != info.kind:
        return rebuild(because=f"built again: {count:,} vectors call for {choice.kind} search, not {info.kind}")
    old, new = dict(map(tuple, info.parts)), dict(map(tuple, current))
    gone, added = [p for p in old if p not in new], [p for p in new if p not in old]
    removed_rows, added_rows = sum(old[p] for p in gone), sum(new[p] for p in added)
    if gone and not removable(info.factory):
        replaced = f"parts of {removed_rows:,} vectors were replaced"
        return rebuild(because=f"built again: {replaced}, and {info.factory} cannot remove vectors")
    changed = info.changed_since_build + removed_rows + added_rows
    if info.trained_on and changed > DRIFT_SHARE * count:
        return rebuild(because=f"built again: {changed:,} of its {count:,} vectors changed since its training")

    index = faiss.read_index(str(target / INDEX_FILE))
    if gone:
        index.remove_ids(faiss.IDSelectorBatch(ids_of([[p, old[p]] for p in gone])))
    for part in added:
        vectors = np.load(collection.part_files(part).img).astype(np.float32)
        index.add_with_ids(vectors, ids_of([[part, len(vectors)]]))
    truth, query_source = measured_truth(collection, count, seed)
    params, recall = tune(index, Choice(info.kind, info.factory, 0, info.why), truth, ids_of(current))
    floor = RECALL_TARGET - RECALL_SLACK
    if (info.recall_at_build or 0.0) >= RECALL_TARGET and recall < floor:
        del index
        return rebuild(because=f"built again: recall@10 fell to {recall:.3f} in place, below {floor:.3f}")
    info.count, info.params, info.recall_at_10 = count, params, round(recall, 4)
    info.recall_queries = {"count": len(truth.queries), "source": query_source}
    info.generation, info.parts = collection.generation, current
    info.updates_in_place += 1
    info.changed_since_build = changed
    seconds = round(time.perf_counter() - started, 2)
    info.last_update = {"added": added_rows, "removed": removed_rows, "seconds": seconds}
    return save_index(collection, index, info)


OPQ_CHECK_QUERIES, OPQ_CHECK_NPROBE = 200, 16


def opq_or_not(choice: Choice, sample: np.ndarray, queries: np.ndarray) -> tuple[Choice, Any, dict[str, Any]]:
    """Whether OPQ's rotation helps on this data, measured: the index with and without it, each trained on the
    sample and holding the sample, is searched for held-out queries (nprobe 16), and recall@10 against exact
    search over the sample decides; a tie goes to the plain index, whose training is much cheaper. Returns the
    choice, its trained index (emptied) and the two recalls."""
    import faiss

    plain = Choice(choice.kind, choice.factory.split(",", 1)[1], choice.bytes, choice.why)
    queries = queries[:OPQ_CHECK_QUERIES]
    k = min(RECALL_K, len(sample))
    truth = np.argsort(-(queries @ sample.T), axis=1, kind="stable")[:, :k]  # (queries, k)
    found: dict[str, tuple[float, Any]] = {}
    for candidate in (choice, plain):
        index = faiss.index_factory(sample.shape[1], candidate.factory, faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        index.add(sample)
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", OPQ_CHECK_NPROBE)
        ids = index.search(queries, k)[1]
        recall = float(np.mean([len(set(f) & set(t)) / k for f, t in zip(ids, truth, strict=True)]))
        index.reset()  # keeps what it learned, drops the sample
        found[candidate.factory] = recall, index
    with_opq, without = found[choice.factory][0], found[plain.factory][0]
    winner = choice if with_opq > without else plain
    if winner is plain:
        winner.why += "; OPQ did not help on this data"
    checked = {"with_opq": round(with_opq, 4), "without": round(without, 4), "kept": winner is choice}
    return winner, found[winner.factory][1], checked


def reserve_codes(codes_index: Any, count: int) -> None:
    """Size a flat-codes index's storage once for ``count`` vectors. Grown add by add, the vector doubles, and
    at each doubling the old and the new copy live together (0.5 GB more at the peak for 1M vectors of 768
    8-bit codes); a resize up and back to empty keeps the capacity."""
    codes_index.codes.resize(count * codes_index.code_size)
    codes_index.codes.resize(0)


def measured_truth(collection: Collection, count: int, seed: int) -> tuple[Truth, str]:
    """The held-out queries with their exact neighbours (what recall is measured against), and their source."""
    queries, rows, source = held_out_queries(collection, count, seed)
    return Truth(collection, queries, rows, *exact_search(collection, queries, RECALL_K + 1)), source


def held_out_queries(collection: Collection, count: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(queries, their image rows (none for captions), where they came from)."""
    rng = np.random.default_rng(seed)
    if collection.manifest.captions:
        texts = gather(collection, np.sort(rng.permutation(count)[: 4 * QUERIES]), "text", cached=False)
        texts = texts[np.any(texts != 0, axis=1)][:QUERIES]  # samples without a caption have zero vectors
        if len(texts):
            return texts, np.zeros(0, np.int64), "captions"
    rows = np.sort(rng.choice(count, min(QUERIES, max(1, count // 10)), replace=False))
    return gather(collection, rows, cached=False), rows, "images held out of the training sample"


def sample_rows(collection: Collection, count: int, size: int, exclude: np.ndarray, seed: int) -> np.ndarray:
    """``size`` vectors drawn evenly from the whole collection (float32), none of the ``exclude`` rows."""
    allowed = np.setdiff1d(np.arange(count), exclude, assume_unique=True) if len(exclude) else np.arange(count)
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(allowed, min(size, len(allowed)), replace=False))
    return gather(collection, rows, cached=False)


def gather(collection: Collection, rows: np.ndarray, kind: str = "img", cached: bool = True) -> np.ndarray:
    """(len(rows), dim) float32: the given vector rows, read part by part from memory-mapped files
    (``cached``: see ``Collection.part_embeddings``)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(rows), collection.dim), np.float32)
    parts = collection.part_embeddings(kind, cached)
    starts = np.cumsum([0] + [len(part) for part in parts])
    which = np.searchsorted(starts, rows, side="right") - 1  # the part of each row
    for p in np.unique(which):  # only the parts that hold a wanted row
        inside = which == p
        out[inside] = parts[p][rows[inside] - starts[p]]
        if not cached:
            parts[p] = None  # type: ignore[call-overload]  # unmapped now: its pages read are let go
    return out


def exact_search(
    collection: Collection, queries: np.ndarray, k: int, block: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """(queries, k) row ids and scores of the exact top k by inner product, best first, streamed over the
    parts in blocks."""
    best_scores = np.zeros((len(queries), 0), np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    start = 0
    for vectors in collection.blocks(block=block):
        chunk = vectors.astype(np.float32)
        scores = np.concatenate([best_scores, queries @ chunk.T], axis=1)  # (queries, kept + block)
        kept = best_ids.shape[1]
        keep = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]  # positions in scores
        earlier = np.take_along_axis(best_ids, np.minimum(keep, kept - 1), 1) if kept else 0
        best_ids = np.where(keep < kept, earlier, start + keep - kept)
        best_scores = np.take_along_axis(scores, keep, 1)
        start += len(chunk)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, 1), np.take_along_axis(best_scores, order, 1)


@dataclass
class Truth:
    """The held-out queries' exact neighbours, and what counts as finding them."""

    collection: Collection
    queries: np.ndarray
    rows: np.ndarray  # each query's own row when the queries are stored images; empty for captions
    ids: np.ndarray  # (queries, k + 1) exact neighbours, best first
    scores: np.ndarray

    def recall(self, found: np.ndarray, k: int) -> float:
        """Mean share of the true top k among the returned k (FAISS's "k-recall@k"), where ties count: a
        result outside the true k that scores as high as the k-th (a duplicate image) is as good a result.
        A query's own row is left out of its results and truth: finding itself proves nothing."""
        hits, misses = np.zeros(len(found)), []
        for i, returned in enumerate(found):
            own = self.rows[i] if len(self.rows) else -1
            kept = self.ids[i] != own
            true_ids, true_scores = self.ids[i][kept][:k], self.scores[i][kept][:k]
            got = [x for x in returned if x >= 0 and x != own][:k]
            hits[i] = len(set(got) & set(true_ids))
            misses += [(i, x, true_scores[-1]) for x in got if x not in set(true_ids)]
        if misses:  # score the others exactly: ties with the k-th are hits
            vectors = gather(self.collection, np.array([x for _, x, _ in misses]), cached=False)
            for (i, _, kth), vector in zip(misses, vectors, strict=True):
                hits[i] += float(vector @ self.queries[i]) >= kth - 1e-6
        return float(np.mean(hits / k))


def tune(index: Any, choice: Choice, truth: Truth, ids: np.ndarray) -> tuple[dict[str, int], float]:
    """The cheapest search parameter reaching ``RECALL_TARGET`` (or the most accurate tried) and its recall;
    ``ids``: each row's id in the index (``ids_of``)."""
    k = min(RECALL_K, index.ntotal - (1 if len(truth.rows) else 0))
    fetch = min(index.ntotal, k + 1)

    def found() -> np.ndarray:
        return rows_of(index.search(truth.queries, fetch)[1], ids)

    if choice.kind == "flat":
        return {}, truth.recall(found(), k)
    if choice.kind == "hnsw":
        name, values = "efSearch", [16, 32, 64, 128, 256, 512]
    else:
        name, values = "nprobe", [2**i for i in range(17) if 2**i <= ivfpq_lists(index.ntotal)]
    params, recall = {}, 0.0
    for value in values:
        params = {name: value}
        if "Refine" in choice.factory:
            params["k_factor"] = REFINE_K_FACTOR
        apply_params(index, params)
        recall = truth.recall(found(), k)
        if recall >= RECALL_TARGET:
            break
    return params, recall


def apply_params(index: Any, params: dict[str, int]) -> None:
    """Set search parameters through whatever wraps the index (OPQ rotation, re-ranking)."""
    import faiss

    for name, value in params.items():
        if name == "k_factor":
            inner = faiss.downcast_index(index)
            if isinstance(inner, faiss.IndexIDMap):
                inner = faiss.downcast_index(inner.index)
            inner.k_factor = value
        else:
            faiss.ParameterSpace().set_index_parameter(index, name, value)


DEDUP_THRESHOLD = 0.94  # clip-retrieval's rule: results at least this close to a better one are near-duplicates


@dataclass
class Hit:
    rank: int
    score: float
    path: str
    id: int  # the vector's row in the index (and in ``SearchIndex.paths``)


class SearchIndex:
    """A collection folder's index and the paths its ids stand for.

    ``mmap``: map the index file instead of reading it into memory; for indexes larger than the memory
    at hand (the operating system keeps the parts searched often in its page cache).
    """

    def __init__(self, folder: str | Path, mmap: bool = False) -> None:
        import faiss

        self.collection = Collection.open(folder)
        path = self.collection.folder / "index" / INDEX_FILE
        if not path.is_file():
            raise MissingFileError(f"{folder} has no index yet; run `altclip index {folder}`")
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        self.info = IndexInfo.from_json(read_json(path.parent / INDEX_INFO))
        if self.info.file_bytes and path.stat().st_size != self.info.file_bytes:  # between ``save_index``'s renames
            raise InputError(f"{folder}: the index file is not the one index.json describes; it is being written")
        self.index = faiss.read_index(str(path), flags)
        apply_params(self.index, self.info.params)
        if self.info.generation != self.collection.generation:
            raise InputError(
                f"{folder}: the index was built for update {self.info.generation} of the collection, which is at "
                f"update {self.collection.generation}; rebuild it with `altclip index {folder}`"
            )
        self.collection.part_embeddings()  # mapped now: an update may delete these files while this index serves
        self.ids = None  # an index from before part ids: its ids are rows
        if self.info.parts is not None:
            if self.info.parts != part_counts(self.collection):
                raise InputError(
                    f"{folder}: the index holds other parts than the collection; rebuild it: `altclip index {folder}`"
                )
            self.ids = ids_of(self.info.parts)
        self.sources = self.collection.image_sources()  # where each image can be read
        self.paths = [s.path if isinstance(s, TarMember) else s for s in self.sources]
        if len(self.paths) != self.index.ntotal:
            raise InputError(
                f"{folder}: the index holds {self.index.ntotal} vectors but the collection "
                f"{len(self.paths)}; rebuild it with `altclip index {folder}`"
            )

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """(queries, dim) unit vectors -> the k best images for each, best first."""
        scores, rows = self.search_rows(queries, k)
        return [
            [
                Hit(rank + 1, float(s), self.paths[i], int(i))
                for rank, (s, i) in enumerate(zip(row_s, row_i, strict=True))
                if i >= 0
            ]
            for row_s, row_i in zip(scores, rows, strict=True)
        ]

    def search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(queries, k) scores and the collection's rows (-1: none) of the k best images for each query."""
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, found = self.index.search(queries, min(k, self.index.ntotal))
        return scores, (found if self.ids is None else rows_of(found, self.ids))

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
        """(len(ids), dim) float32: the stored vectors of these rows (from the collection, exact whatever
        the index kind)."""
        return gather(self.collection, np.asarray(ids, dtype=np.int64))
