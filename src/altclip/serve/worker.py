"""The server's one model thread: every forward pass runs there, one at a time, text queries micro-batched.

A CPU forward pass already uses every core, so running two at once only makes both slower; and a batch
of 16 short texts costs little more than one. So requests do not call the model themselves. They put a
job in one queue and await its result:

- a text query takes every text query waiting behind it, up to ``max_batch``, into one forward pass of the
  text tower (duplicates embedded once); when none is waiting it first gives them a short window
  (``window`` seconds) to arrive;
- a single image (``embed_image``: immich's uploads, image queries) is batched the same way with the images
  waiting behind it, through the image tower;
- any other model call (a zero-shot classification, a batch of uploads) runs on its own, in arrival order.

Jobs accepted but not finished are at most ``max_queue``; one more raises ``Busy``, which the server
answers with 503 and ``Retry-After``, so the queue never grows without bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from altclip.embedder import Embedder
from altclip.errors import InputError


class Busy(Exception):
    """The queue is full: try again shortly."""


@dataclass
class BatchJob:
    """One input of a batched kind: ``"text"`` (a string) or ``"image"`` (preprocessed (3, H, W) pixels)."""

    kind: str
    item: Any
    future: asyncio.Future = field(repr=False)


@dataclass
class CallJob:
    fn: Callable[[], Any]
    future: asyncio.Future = field(repr=False)


class ModelWorker:
    """Runs the ``Embedder`` on one thread; ``start`` and ``stop`` it inside the server's event loop."""

    def __init__(self, embedder: Embedder, max_batch: int = 32, window: float = 0.002, max_queue: int = 256) -> None:
        if max_batch < 1 or max_queue < 1 or window < 0:
            raise InputError(
                f"need max_batch >= 1, max_queue >= 1 and window >= 0; got {max_batch}, {max_queue}, {window}"
            )
        self.embedder, self.max_batch, self.window, self.max_queue = embedder, max_batch, window, max_queue
        self.waiting = 0  # jobs accepted and not finished: the queue length that /metrics reports
        self.on_batch: Callable[[int], None] = lambda size: None  # told each text batch's size
        self._queue: asyncio.Queue[BatchJob | CallJob] | None = None
        self._held: deque[BatchJob | CallJob] = deque()  # taken from the queue for a batch of another kind
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="altclip-model")
        self._task = asyncio.create_task(self._serve())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def embed_text(self, text: str) -> np.ndarray:
        """(dim,) float32 unit vector of one text, computed in a batch with whatever else is waiting."""
        return await self._submit(BatchJob("text", text, asyncio.get_running_loop().create_future()))

    async def embed_image(self, pixels: np.ndarray) -> np.ndarray:
        """(dim,) float32 unit vector of one preprocessed (3, H, W) image, in a batch with the images waiting."""
        return await self._submit(BatchJob("image", pixels, asyncio.get_running_loop().create_future()))

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (a model call) on the model thread, in turn."""
        return await self._submit(CallJob(fn, asyncio.get_running_loop().create_future()))

    async def _submit(self, job: BatchJob | CallJob) -> Any:
        if self._queue is None:
            raise RuntimeError("the model worker is not started")
        if self.waiting >= self.max_queue:
            raise Busy(f"{self.waiting} requests are waiting for the model")
        self.waiting += 1
        try:
            self._queue.put_nowait(job)
            return await job.future
        finally:
            self.waiting -= 1

    async def _serve(self) -> None:
        assert self._queue is not None
        while True:
            job = self._held.popleft() if self._held else await self._queue.get()
            if job.future.done():  # its client went away while it waited
                continue
            if isinstance(job, CallJob):
                await self._run(partial(_one, job.fn), [job.future])
                continue
            batch = [job]
            await self._collect(batch)
            await self._run(partial(self._embed, job.kind, [j.item for j in batch]), [j.future for j in batch])

    async def _collect(self, batch: list[BatchJob]) -> None:
        """Take more waiting jobs of the batch's kind; the others are held, in order, for after it. When nothing
        else is waiting yet, first give other queries ``window`` seconds to arrive; under load the queue fills
        by itself while the previous batch runs."""
        assert self._queue is not None
        if self._queue.empty() and not self._held and self.window > 0:
            await asyncio.sleep(self.window)
        held, self._held = self._held, deque()
        while len(batch) < self.max_batch and (held or not self._queue.empty()):
            job = held.popleft() if held else self._queue.get_nowait()
            if job.future.done():
                continue
            if isinstance(job, BatchJob) and job.kind == batch[0].kind:
                batch.append(job)
            else:
                self._held.append(job)
        self._held.extend(held)

    def _embed(self, kind: str, items: list[Any]) -> list[np.ndarray]:
        if kind == "image":
            return list(self.embedder.embed_pixels(torch.from_numpy(np.stack(items))).float().cpu().numpy())
        unique = list(dict.fromkeys(items))
        vectors = self.embedder.embed_texts(unique).float().cpu().numpy()  # (unique texts, dim)
        self.on_batch(len(items))
        row = {text: i for i, text in enumerate(unique)}
        return [vectors[row[text]] for text in items]

    async def _run(self, fn: Callable[[], list[Any]], futures: list[asyncio.Future]) -> None:
        """Run ``fn`` on the model thread; its i-th result (or its error) goes to ``futures[i]``."""
        assert self._executor is not None
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except Exception as err:
            for future in futures:
                if not future.done():
                    future.set_exception(err)
            return
        for future, value in zip(futures, result, strict=True):
            if not future.done():  # the client may have gone away
                future.set_result(value)


def _one(fn: Callable[[], Any]) -> list[Any]:
    return [fn()]
