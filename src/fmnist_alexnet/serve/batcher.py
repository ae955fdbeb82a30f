"""Micro-batching: images from concurrent requests share one forward pass.

Each request hands its prepared images to :meth:`MicroBatcher.logits` and awaits its own
rows back. One worker task takes the first waiting request, then gathers more until it has
``max_batch`` images or ``max_wait_ms`` have passed, runs the model once in a worker thread
(off the event loop), and splits the logits back by request. A request that comes alone
(the last pass served one request and ``expecting()`` says no other is being received) runs
at once instead of waiting for company that is not coming.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class _Job:
    images: np.ndarray  # uint8 [n, 28, 28]
    future: asyncio.Future[torch.Tensor]


class MicroBatcher:
    def __init__(
        self,
        logits_fn: Callable[[torch.Tensor], torch.Tensor],
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int], None] | None = None,
        expecting: Callable[[], int] = lambda: 1,
    ) -> None:
        self.logits_fn = logits_fn
        self.expecting = expecting
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.on_batch = on_batch or (lambda size: None)
        self._queue: asyncio.Queue[_Job | None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._shared_last_pass = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="forward")

    async def start(self) -> None:
        self._queue = queue = asyncio.Queue[_Job | None]()
        self._worker = asyncio.create_task(self._run(queue))

    async def stop(self) -> None:
        """Finish every request already queued, then stop."""
        if self._worker is None or self._queue is None:
            return
        await self._queue.put(None)
        await self._worker
        self._worker = None
        self._executor.shutdown(wait=True)

    async def logits(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [n, 28, 28] -> float32 logits [n, classes], batched with other callers."""
        if self._worker is None or self._queue is None:
            raise RuntimeError("the batcher is not running")
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(images, future))
        return await future

    def forward(self, images: np.ndarray) -> torch.Tensor:
        """The model on ``images`` in chunks of at most ``max_batch`` (in the calling thread)."""
        tensor = torch.from_numpy(images)[:, None]
        chunks = [
            self.logits_fn(tensor[start : start + self.max_batch]).cpu()
            for start in range(0, len(tensor), self.max_batch)
        ]
        return torch.cat(chunks)

    async def _run(self, queue: asyncio.Queue[_Job | None]) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            job = await queue.get()
            if job is None:
                break
            jobs, count = [job], len(job.images)
            deadline = loop.time() + self.max_wait_s
            while count < self.max_batch:
                if queue.empty() and not self.expecting() and not self._shared_last_pass:
                    break  # a lone request: do not wait
                try:
                    if queue.empty():
                        waited = await asyncio.wait_for(queue.get(), deadline - loop.time())
                    else:
                        waited = queue.get_nowait()
                except (TimeoutError, asyncio.TimeoutError):
                    break
                if waited is None:  # stop after this batch
                    stopping = True
                    break
                jobs.append(waited)
                count += len(waited.images)
            self._shared_last_pass = len(jobs) > 1
            images = np.concatenate([j.images for j in jobs])
            self.on_batch(len(images))
            try:
                logits = await loop.run_in_executor(self._executor, self.forward, images)
            except Exception as exc:  # every waiting caller hears of it
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            start = 0
            for j in jobs:
                rows = logits[start : start + len(j.images)]
                start += len(j.images)
                if not j.future.done():  # the caller may have gone away
                    j.future.set_result(rows)
        with contextlib.suppress(asyncio.QueueEmpty):  # nothing is left behind
            while (job := queue.get_nowait()) is not None:
                job.future.set_result(
                    await loop.run_in_executor(self._executor, self.forward, job.images)
                )
