"""The model worker: concurrent text queries share forward passes and get exactly their own vectors; the queue
is bounded; failures and departed clients are handled."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import torch

from altclip.serve.worker import Busy, ModelWorker

TEXTS = ["a red circle", "一个蓝色的方形", "دائرة حمراء", "緑の三角形", "a red circle", "노란 원", "un carré bleu"]


def run(coroutine):
    return asyncio.run(coroutine)


@asynccontextmanager
async def started(worker: ModelWorker) -> AsyncIterator[ModelWorker]:
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


def embed_together(embedder, texts: list[str], max_batch: int) -> tuple[list[np.ndarray], list[int]]:
    """The texts sent to one worker at once: their vectors, and the size of each batch it ran."""
    batches: list[int] = []

    async def main():
        worker = ModelWorker(embedder, max_batch=max_batch, window=0.05)
        worker.on_batch = batches.append
        async with started(worker):
            return await asyncio.gather(*(worker.embed_text(t) for t in texts))

    return run(main()), batches


def test_concurrent_texts_are_batched_and_each_gets_its_own_vector(embedder):
    vectors, batches = embed_together(embedder, TEXTS, max_batch=32)
    got = np.stack(vectors)
    expected = np.stack([embedder.embed_texts([t]).float().numpy()[0] for t in TEXTS])  # one at a time
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert sum(batches) == len(TEXTS) and len(batches) < len(TEXTS)  # fewer forward passes than queries
    assert batches == [len(TEXTS)]  # all arrived inside one window


def test_batches_never_exceed_max_batch(embedder):
    vectors, batches = embed_together(embedder, [f"text {i}" for i in range(10)], max_batch=3)
    assert len(vectors) == 10
    assert max(batches) <= 3 and sum(batches) == 10


def test_images_and_texts_arriving_together_are_batched_by_kind(embedder, monkeypatch):
    """Images interleaved with texts: each kind goes through its tower in batches, every request gets its own
    vector, equal to embedding it alone."""
    rng = np.random.default_rng(0)
    size = embedder.processor.image_processor.crop_size["height"]
    images = [rng.standard_normal((3, size, size)).astype(np.float32) for _ in range(5)]
    passes: list[tuple[str, int]] = []
    embed_pixels, embed_texts = embedder.embed_pixels, embedder.embed_texts
    monkeypatch.setattr(embedder, "embed_pixels", lambda x: passes.append(("image", len(x))) or embed_pixels(x))
    monkeypatch.setattr(embedder, "embed_texts", lambda t: passes.append(("text", len(t))) or embed_texts(t))

    async def main():
        async with started(ModelWorker(embedder, max_batch=32, window=0.05)) as worker:
            jobs = [worker.embed_image(image) for image in images] + [worker.embed_text(t) for t in TEXTS[:4]]
            order = [0, 5, 1, 6, 2, 7, 3, 8, 4]  # interleaved
            results = await asyncio.gather(*(jobs[i] for i in order))
            return {i: r for i, r in zip(order, results, strict=True)}

    got = run(main())
    alone = [embed_pixels(torch.from_numpy(image[None])).float().numpy()[0] for image in images]
    alone += [embed_texts([t]).float().numpy()[0] for t in TEXTS[:4]]
    np.testing.assert_allclose(np.stack([got[i] for i in range(9)]), np.stack(alone), atol=1e-5)
    assert sorted(passes) == [("image", 5), ("text", 4)]  # one pass per kind


def test_a_full_queue_refuses_and_never_grows(embedder):
    release = threading.Event()

    async def main():
        worker = ModelWorker(embedder, max_batch=4, window=0.0, max_queue=3)
        async with started(worker):
            blocked = asyncio.ensure_future(worker.call(release.wait))  # holds the model thread
            waiting = [asyncio.ensure_future(worker.embed_text(f"q{i}")) for i in range(2)]
            await asyncio.sleep(0.05)
            assert worker.waiting == 3
            with pytest.raises(Busy, match="3 requests are waiting"):
                await worker.embed_text("one too many")
            assert worker.waiting == 3
            release.set()
            await asyncio.gather(blocked, *waiting)
            assert worker.waiting == 0
            return await worker.embed_text("room again")

    assert run(main()).shape == (16,)


def test_a_failing_call_fails_only_its_own_request(embedder):
    def broken():
        raise RuntimeError("boom")

    async def main():
        worker = ModelWorker(embedder)
        async with started(worker):
            results = await asyncio.gather(worker.call(broken), worker.embed_text("fine"), return_exceptions=True)
            return results, await worker.embed_text("still fine")

    (failed, fine), after = run(main())
    assert isinstance(failed, RuntimeError) and fine.shape == after.shape == (16,)


def test_departed_clients_cost_no_forward_pass(embedder):
    release, batches = threading.Event(), []

    async def main():
        worker = ModelWorker(embedder, window=0.0)
        worker.on_batch = batches.append
        async with started(worker):
            blocked = asyncio.ensure_future(worker.call(release.wait))
            gone = asyncio.ensure_future(worker.embed_text("nobody waits for this"))
            await asyncio.sleep(0.05)
            gone.cancel()
            await asyncio.sleep(0.01)
            release.set()
            await blocked
            await worker.embed_text("someone waits for this")

    run(main())
    assert batches == [1]


def test_bad_settings_and_unstarted_use():
    with pytest.raises(ValueError, match="max_batch >= 1"):
        ModelWorker(None, max_batch=0)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not started"):
        run(ModelWorker(None).embed_text("x"))  # type: ignore[arg-type]
