"""A small asyncio batching queue in front of an engine: concurrent requests are generated together.

Requests wait at most ``wait_s`` for company; the oldest waiting request decides the batch key and up to
``max_batch_size`` requests with that key join it. Generation runs in one worker thread, so the event
loop keeps accepting requests (which then form the next batch) while a batch is generated.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .engine import Completion, Engine, Request


@dataclass
class _Job:
    request: Request
    future: asyncio.Future
    on_delta: Callable[[str], None] | None


@dataclass
class QueueStats:
    batch_sizes: list[int] = field(default_factory=list)  # size of every batch generated, in order

    @property
    def requests(self) -> int:
        return sum(self.batch_sizes)


class BatchQueue:
    def __init__(self, engine: Engine, max_batch_size: int = 16, wait_s: float = 0.005):
        self.engine, self.max_batch_size, self.wait_s = engine, max_batch_size, wait_s
        self.stats = QueueStats()
        self._pending: list[_Job] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tailorkit-generate")

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._pending:
            if not job.future.done():
                job.future.cancel()
        self._executor.shutdown(wait=True)

    def enqueue(self, request: Request, on_delta: Callable[[str], None] | None = None) -> asyncio.Future:
        """A future of the request's Completion; ``on_delta`` gets reply text on the event loop as it comes."""
        if self._task is None:
            raise RuntimeError("BatchQueue.start() was not called")
        job = _Job(request, asyncio.get_running_loop().create_future(), on_delta)
        self._pending.append(job)
        self._wake.set()
        return job.future

    async def submit(self, request: Request) -> Completion:
        return await self.enqueue(request)

    def _take_batch(self) -> list[_Job]:
        self._pending = [j for j in self._pending if not j.future.done()]  # drop cancelled requests
        if not self._pending:
            return []
        key = self._pending[0].request.batch_key()
        batch = [j for j in self._pending if j.request.batch_key() == key][: self.max_batch_size]
        taken = {id(j) for j in batch}
        self._pending = [j for j in self._pending if id(j) not in taken]
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                await asyncio.sleep(self.wait_s)  # let concurrent requests arrive and join this batch
            batch = self._take_batch()
            if not batch:
                continue
            self.stats.batch_sizes.append(len(batch))

            def relay(i: int, delta: str, batch=batch) -> None:
                if batch[i].on_delta is not None:
                    loop.call_soon_threadsafe(batch[i].on_delta, delta)

            try:
                results = await loop.run_in_executor(
                    self._executor, self.engine.generate_batch, [j.request for j in batch], relay)
            except Exception as e:  # noqa: BLE001 - handed to every waiting request
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            for j, result in zip(batch, results):
                if not j.future.done():
                    j.future.set_result(result)
