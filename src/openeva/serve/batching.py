"""Dynamic micro-batching: concurrent requests' items are grouped into one model call, off the event loop.

A request ``await batcher.submit(items)``; one worker task takes queued items until ``max_batch`` are
collected or ``max_wait_s`` has passed since the first, runs ``fn(list_of_items) -> list_of_results`` in a
single model thread (the model is called by one thread at a time), and hands each request its results.
``max_batch=1`` turns batching off (every item runs alone), which the load benchmark compares against.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class MicroBatcher:
    def __init__(self, fn: Callable[[list], list], max_batch: int = 32, max_wait_s: float = 0.005,
                 executor: ThreadPoolExecutor | None = None, on_batch: Callable[[int], None] | None = None):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_s >= 0")
        self.fn, self.max_batch, self.max_wait_s = fn, max_batch, max_wait_s
        self.executor = executor
        self.on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Items waiting for the model."""
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        if self._worker is None:
            return
        await self._queue.join()
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        self._worker = None

    async def submit(self, items: list) -> list:
        """The results of ``items`` (in order), computed in whatever batches the worker forms."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, fut in zip(items, futures):
            self._queue.put_nowait((item, fut))
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    batch.append(self._queue.get_nowait() if remaining <= 0 else
                                 await asyncio.wait_for(self._queue.get(), remaining))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            live = [(item, fut) for item, fut in batch if not fut.done()]  # skip timed-out requests' items
            try:
                if live:
                    if self.on_batch is not None:
                        self.on_batch(len(live))
                    results = await loop.run_in_executor(self.executor, self.fn, [item for item, _ in live])
                    for (_, fut), result in zip(live, results):
                        if not fut.done():
                            fut.set_result(result)
            except Exception as err:  # the model failed: every request of the batch learns why
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(err)
            finally:
                for _ in batch:
                    self._queue.task_done()
