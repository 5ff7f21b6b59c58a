"""`altclip serve` under load, on loopback: text-search throughput and latency, the gain from micro-batching,
and whether memory stays flat.

    .venv/bin/python benchmarks/serve.py                  # BAAI/AltCLIP sizes, random weights (~10 min on 2 cores)
    .venv/bin/python benchmarks/serve.py --size small     # a quick look

The server is the real command (`python -m altclip.cli serve`, uvicorn, one process) on a free loopback port;
the load comes from this process (httpx, asyncio), so client and server share the machine's cores. Queries are
CLDR emoji names in 14 languages, so their lengths vary as real queries do. Request counts are bounded.

1. Text search (`POST /api/search`, k=10) at concurrency 1, 8 and 32: requests/s, p50 and p99 latency.
2. Micro-batching: requests/s at concurrency 16 against concurrency 1 on the same server, and against a server
   that cannot batch (`--batch-size 1`: each query its own forward pass) at concurrency 16. There is no
   transformers server to hold it against; the second ratio is the one micro-batching alone earns.
3. Memory: the server's RSS after the first 100 and after 5,000 mixed requests (text searches with and
   without dedup, search by uploaded image and by id, thumbnails, originals, zero-shot classification with
   ever new labels, embeddings, and bad requests: unknown index, k=0, a file that is not an image). It runs
   on the small model (`--rss-size`), where 5,000 requests take a minute, not an hour.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from folder import make_photos  # benchmarks/folder.py, beside this script
from speed import SIZES, mixed_workload  # benchmarks/speed.py

import altclip
from altclip.embedder import Embedder
from altclip.processing.tokenization import train_sentencepiece
from altclip.runtime.hardware import detect_cpu
from altclip.search.collection import embed_collection
from altclip.search.index import build_index
from altclip.tables import format_table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- set-up: a model folder and an embedded photo collection ------------------------------------------


def make_model(folder: Path, size: str, texts: list[str]) -> Path:
    torch.manual_seed(0)
    altclip.AltCLIPModel(altclip.AltCLIPConfig.from_dict(SIZES[size])).save_pretrained(folder)
    spm = train_sentencepiece(texts, folder / "sentencepiece.bpe.model", vocab_size=4000)
    altclip.XLMRobertaTokenizer.from_sentencepiece(spm).save_pretrained(folder)
    altclip.CLIPImageProcessor().save_pretrained(folder)
    return folder


def make_collection(model: Path, photos: Path, out: Path) -> Path:
    embed_collection(photos, out, Embedder.from_pretrained(model), str(model), workers=2, progress=False)
    build_index(out)
    return out


class Server:
    """`altclip serve` in its own process; its log goes to a file, so a full pipe never stalls it."""

    def __init__(self, collection: Path, model: Path, log: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "altclip.cli", "serve", f"photos={collection}", "--model", str(model)]
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port), *options], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {log}")
            time.sleep(0.25)

    def rss_mb(self) -> float:
        return rss_mb(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


# -- load ---------------------------------------------------------------------------------------------


async def load(url: str, requests: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """Send ``requests`` (httpx.request keyword arguments) with ``concurrency`` in flight at once."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = list(reversed(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while queue:
            request = queue.pop()
            start = time.perf_counter()
            response = await client.request(**request)
            latencies.append(time.perf_counter() - start)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "statuses": statuses,
    }


def text_searches(queries: list[str], count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {"method": "POST", "url": "/api/search", "json": {"text": rng.choice(queries), "k": 10}} for _ in range(count)
    ]


def mixed(queries: list[str], uploads: list[bytes], count: int, ids: int, seed: int) -> list[dict[str, Any]]:
    """A bit of everything the API does, bad requests included."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        kind = i % 20
        if kind < 7:
            body = {"text": rng.choice(queries), "k": rng.randint(1, 50), "dedup": kind % 2 == 0}
            out.append({"method": "POST", "url": "/api/search", "json": body})
        elif kind < 10:
            out.append({"method": "GET", "url": f"/api/thumbnail/photos/{rng.randrange(ids)}"})
        elif kind == 10:
            out.append({"method": "GET", "url": f"/api/image/photos/{rng.randrange(ids)}"})
        elif kind == 11:
            out.append({"method": "POST", "url": "/api/search", "json": {"id": rng.randrange(ids), "k": 20}})
        elif kind == 12:
            files = {"image": ("q.jpg", rng.choice(uploads), "image/jpeg")}
            out.append({"method": "POST", "url": "/api/search", "files": files, "data": {"k": "10"}})
        elif kind == 13:
            labels = json.dumps([f"{rng.choice(queries)} {i}", rng.choice(queries)], ensure_ascii=False)
            files = {"image": ("c.jpg", rng.choice(uploads), "image/jpeg")}
            out.append({"method": "POST", "url": "/api/classify", "files": files, "data": {"labels": labels}})
        elif kind == 14:
            out.append({"method": "POST", "url": "/api/embed", "json": {"texts": rng.sample(queries, 4)}})
        elif kind == 15:
            out.append({"method": "POST", "url": "/api/search", "json": {"text": "x", "k": 0}})
        elif kind == 16:
            out.append({"method": "POST", "url": "/api/search", "json": {"text": "x", "index": "nope"}})
        elif kind == 17:
            files = {"image": ("bad.jpg", b"not an image " * 100, "image/jpeg")}
            out.append({"method": "POST", "url": "/api/search", "files": files})
        else:
            out.append({"method": "GET", "url": "/api/indexes"})
    return out


def jpeg_bytes(path: Path, side: int = 1024) -> bytes:
    from PIL import Image

    image = Image.open(path)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# -- the run ------------------------------------------------------------------------------------------


def throughput(tmp: Path, size: str, queries: list[str], photos: Path, args: argparse.Namespace) -> dict[str, Any]:
    print(f"model ({size}) and collection ...", file=sys.stderr, flush=True)
    model = make_model(tmp / f"model-{size}", size, queries)
    collection = make_collection(model, photos, tmp / f"collection-{size}")
    results: dict[str, Any] = {"runs": []}
    server = Server(collection, model, tmp / "server.log", "--batch-size", "32")
    try:
        asyncio.run(load(server.url, text_searches(queries, 8, seed=99), 1))  # warm-up
        for concurrency in (1, 8, 16, 32):
            count = args.requests * max(1, concurrency // 2)
            print(f"text search, concurrency {concurrency}: {count} requests ...", file=sys.stderr, flush=True)
            run = asyncio.run(load(server.url, text_searches(queries, count, seed=concurrency), concurrency))
            results["runs"].append({"server": "micro-batching", **run})
    finally:
        server.stop()
    server = Server(collection, model, tmp / "server-unbatched.log", "--batch-size", "1", "--batch-window-ms", "0")
    try:
        asyncio.run(load(server.url, text_searches(queries, 8, seed=99), 1))
        count = args.requests * 8
        print(f"text search without batching, concurrency 16: {count} requests ...", file=sys.stderr, flush=True)
        run = asyncio.run(load(server.url, text_searches(queries, count, seed=16), 16))
        results["runs"].append({"server": "no batching (--batch-size 1)", **run})
    finally:
        server.stop()
    return results


CHECKPOINTS = (100, 500, 1000, 2500, 5000, 10_000, 20_000)  # RSS is read after this many requests


def memory(tmp: Path, size: str, queries: list[str], photos: Path, uploads: list[bytes], total: int) -> dict[str, Any]:
    print(f"memory: {total} mixed requests on the {size} model ...", file=sys.stderr, flush=True)
    model = make_model(tmp / f"rss-model-{size}", size, queries)
    collection = make_collection(model, photos, tmp / f"rss-collection-{size}")
    ids = len(json.loads((collection / "files.json").read_text()))
    requests = mixed(queries, uploads, total, ids, seed=0)
    server = Server(collection, model, tmp / "server-rss.log")
    rss, statuses, done, seconds = {}, {}, 0, 0.0
    try:
        for upto in CHECKPOINTS:
            if upto > total:
                break
            run = asyncio.run(load(server.url, requests[done:upto], 8))
            rss[upto], done, seconds = server.rss_mb(), upto, seconds + run["requests"] / run["requests_per_s"]
            for status, n in run["statuses"].items():
                statuses[status] = statuses.get(status, 0) + n
    finally:
        server.stop()
    return {
        "size": size,
        "requests": done,
        "rss_mb": rss,
        "growth": rss[done] / rss[100] - 1,
        "statuses": dict(sorted(statuses.items())),
        "requests_per_s": done / seconds,
    }


def report(results: dict[str, Any]) -> str:
    runs = results["throughput"]["runs"]
    rows = [
        (r["server"], r["concurrency"], r["requests"], f"{r['requests_per_s']:.1f}", f"{r['p50_ms']:.0f}",
         f"{r['p99_ms']:.0f}", " ".join(f"{k}:{v}" for k, v in sorted(r["statuses"].items())))
        for r in runs
    ]  # fmt: skip
    by = {(r["server"], r["concurrency"]): r["requests_per_s"] for r in runs}
    batched16, batched1 = by[("micro-batching", 16)], by[("micro-batching", 1)]
    unbatched16 = by[("no batching (--batch-size 1)", 16)]
    m = results["memory"]
    lines = [
        f"altclip serve, {results['size']} model, on {results['cpu']}",
        "",
        "text search (POST /api/search, k=10), loopback:",
        format_table(["server", "concurrency", "requests", "requests/s", "p50 ms", "p99 ms", "statuses"], rows),
        "",
        f"micro-batching: concurrency 16 / concurrency 1 = {batched16 / batched1:.2f}x requests/s; "
        f"against no batching at concurrency 16 = {batched16 / unbatched16:.2f}x",
        "",
        f"memory ({m['size']} model, {m['requests']} mixed requests at concurrency 8, {m['requests_per_s']:.0f}/s; "
        f"statuses {m['statuses']}):",
        format_table(
            ["after requests", "RSS MB", "against 100"],
            [(n, f"{mb:.0f}", f"{100 * (mb / m['rss_mb'][100] - 1):+.1f}%") for n, mb in m["rss_mb"].items()],
        ),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="real", help="model for the throughput runs")
    parser.add_argument("--rss-size", choices=sorted(SIZES), default="small", help="model for the memory run")
    parser.add_argument("--photos", type=int, default=64, help="images in the served collection")
    parser.add_argument("--requests", type=int, default=24, help="requests per run: this x max(1, concurrency / 2)")
    parser.add_argument("--rss-requests", type=int, default=5000, help="one of " + ", ".join(map(str, CHECKPOINTS)))
    parser.add_argument("--json", help="also write the raw numbers here")
    args = parser.parse_args()
    queries = mixed_workload(3000)
    results: dict[str, Any] = {"cpu": detect_cpu().describe(), "size": args.size, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("making photos ...", file=sys.stderr, flush=True)
        paths = make_photos(tmp / "photos", args.photos, 1600, 1200)
        uploads = [jpeg_bytes(p) for p in paths[:8]]
        results["throughput"] = throughput(tmp, args.size, queries, tmp / "photos", args)
        results["memory"] = memory(tmp, args.rss_size, queries, tmp / "photos", uploads, args.rss_requests)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
