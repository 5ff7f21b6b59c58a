"""Indexing at scale: `altclip index` on synthetic clustered vectors, IVF-PQ within a memory budget.

    .venv/bin/python benchmarks/index.py                          # 1M vectors, dim 768, --memory 2GB
    .venv/bin/python benchmarks/index.py --count 200000 --json

The vectors imitate image embeddings: unit vectors around 1,000 topics, in groups of about five near
neighbours (cosine ~0.87 within a group, ~0.5 within a topic, ~0 across). They are written as an embedding
folder in parts of 100,000 (float16, 1.5 GB at 1M x 768), then indexed by ``altclip index --kind ivfpq``
in a child process, whose peak resident memory is the figure reported. Measured:

- build time (training on a sample, adding part by part, tuning nprobe) and peak memory of the build;
- recall@10 against exact search on 1,000 held-out queries, as ``index.json`` records it;
- the index's size on disk, and query latency one query at a time and in batches of 100, read into memory
  and memory-mapped (the mapped index searched after the page cache has seen it once);
- exact search over the same vectors (streamed from the float16 parts) for comparison.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from altclip.runtime.hardware import detect_cpu
from altclip.search.collection import Collection, write_vectors
from altclip.search.index import SearchIndex, exact_search, gather

DIM, PART, TOPICS, GROUP = 768, 100_000, 1000, 5


def clustered_part(part: int, rows: int, seed: int = 0) -> np.ndarray:
    """Rows of part ``part``: groups of ~GROUP points (a shared offset from a shared topic), unit length."""
    topics = np.random.default_rng([seed, 0]).standard_normal((TOPICS, DIM)).astype(np.float32)
    rng = np.random.default_rng([seed, 1, part])
    groups = rows // GROUP
    centres = topics[rng.integers(0, TOPICS, groups)] + 0.8 * rng.standard_normal((groups, DIM)).astype(np.float32)
    x = centres[rng.integers(0, groups, rows)] + 0.5 * rng.standard_normal((rows, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def child_build(folder: str, memory: str) -> None:
    """Runs in a child process, so that its peak memory is the build's alone."""
    from altclip.search.index import build_index

    info = build_index(folder, kind="ivfpq", memory=memory).to_json()
    info["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(info))


def latency(index: SearchIndex, queries: np.ndarray, batch: int) -> float:
    """Milliseconds per query, searching ``batch`` queries a call."""
    index.search(queries[:batch], k=10)  # warm
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        index.search(queries[start : start + batch], k=10)
    return 1000 * (time.perf_counter() - started) / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--memory", default="2GB")
    parser.add_argument("--folder", help="keep the embedding folder here (default: a temporary one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or Path(tmp) / "vectors")
        parts = -(-args.count // PART)
        sizes = [min(PART, args.count - p * PART) for p in range(parts)]
        started = time.perf_counter()
        if not (folder / "manifest.json").exists():
            write_vectors(folder, (clustered_part(p, n) for p, n in enumerate(sizes)), parts, DIM, "synthetic")
        written = time.perf_counter() - started

        build = subprocess.run(
            [sys.executable, __file__, "--child", str(folder), args.memory], capture_output=True, text=True
        )
        if build.returncode:
            raise SystemExit(build.stderr)
        info = json.loads(build.stdout.strip().splitlines()[-1])

        collection = Collection.open(folder)
        queries = gather(collection, np.arange(0, args.count, max(1, args.count // 1000))[:1000])
        queries += 0.05 * np.random.default_rng(7).standard_normal(queries.shape).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        started = time.perf_counter()
        truth, _ = exact_search(collection, queries[:100], 10)
        exact_ms = 1000 * (time.perf_counter() - started) / 100
        results = {}
        for mmap in (False, True):
            index = SearchIndex(folder, mmap=mmap)
            found = np.array([[h.id for h in hits] for hits in index.search(queries[:100], k=10)])
            recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
            results["mmap" if mmap else "memory"] = {
                "ms_per_query_single": latency(index, queries, 1),
                "ms_per_query_batch_100": latency(index, queries, 100),
                "recall@10_noisy_queries": recall,
            }
    report = {
        "cpu": detect_cpu().describe(),
        "count": args.count,
        "dim": DIM,
        "memory_budget": args.memory,
        "factory": info["factory"],
        "params": info["params"],
        "recall@10": info["recall@10"],
        "recall_queries": info["recall_queries"],
        "build_seconds": info["build_seconds"],
        "build_peak_rss_gb": info["peak_rss_bytes"] / 1e9,
        "estimated_index_gb": info["estimated_bytes"] / 1e9,
        "index_file_gb": info["file_bytes"] / 1e9,
        "write_vectors_seconds": written,
        "exact_ms_per_query_streamed": exact_ms,
        "search": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"CPU: {report['cpu']}")
    print(f"{args.count:,} vectors, dim {DIM}, --memory {args.memory}: {info['factory']} {info['params']}")
    print(f"  recall@10 (held-out images vs exact): {info['recall@10']:.4f}")
    print(f"  build: {info['build_seconds']:.0f} s, peak RSS {report['build_peak_rss_gb']:.2f} GB")
    print(f"  index: {report['index_file_gb']:.2f} GB on disk (estimated {report['estimated_index_gb']:.2f} GB)")
    for name, r in results.items():
        print(
            f"  search ({name}): {r['ms_per_query_single']:.2f} ms/query alone, "
            f"{r['ms_per_query_batch_100']:.3f} ms/query in batches of 100, "
            f"recall@10 on noisy queries {r['recall@10_noisy_queries']:.3f}"
        )
    print(f"  exact search streamed from the float16 parts: {exact_ms:.0f} ms/query")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child_build(sys.argv[2], sys.argv[3])
    else:
        main()
