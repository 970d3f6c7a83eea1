"""A small asyncio batching queue in front of an engine: concurrent requests are generated together.

Requests wait at most ``wait_s`` for company; the oldest waiting request decides the batch key and up to
``max_batch_size`` requests with that key join it. Generation runs in one worker thread, so the event
loop keeps accepting requests (which then form the next batch) while a batch is generated.

No request can break another: a row that fails gets its own error and its batch-mates their replies;
when a whole batch raises, its rows that have streamed nothing yet are retried one by one, so only the
culprit fails. Cancelling a request's future (its client went away) ends its row within one decoding
step. At most ``max_queue`` requests wait; beyond that `enqueue` raises `QueueFull` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import GenerationError, TailorkitError
from .engine import Completion, Engine, Request


class QueueFull(TailorkitError):
    """More requests wait for generation than the queue takes; the caller should retry later."""


@dataclass
class _Job:
    request: Request
    future: asyncio.Future
    on_delta: Callable[[str], None] | None
    streamed: bool = False  # some reply text has reached on_delta (a retry would repeat it)


@dataclass
class QueueStats:
    batch_sizes: list[int] = field(default_factory=list)  # size of every batch generated, in order
    cancelled_tokens: list[int] = field(default_factory=list)  # tokens each cancelled row had when it stopped
    retried: int = 0  # rows generated again alone after their batch raised

    @property
    def requests(self) -> int:
        return sum(self.batch_sizes)


class BatchQueue:
    def __init__(self, engine: Engine, max_batch_size: int = 16, wait_s: float = 0.005,
                 max_queue: int | None = None):
        self.engine, self.max_batch_size, self.wait_s, self.max_queue = engine, max_batch_size, wait_s, max_queue
        self.stats = QueueStats()
        self.generating = 0  # rows of the batch being generated now
        self._pending: list[_Job] = []
        self._running: list[_Job] = []
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
        for job in self._pending + self._running:  # cancelling also ends rows being generated
            if not job.future.done():
                job.future.cancel()
        self._executor.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        """Requests queued and not yet generating."""
        return sum(1 for j in self._pending if not j.future.done())

    def check_room(self, n: int) -> None:
        """QueueFull unless ``n`` more requests fit in the queue (call before enqueueing them together)."""
        if self.max_queue is not None and self.waiting + n > self.max_queue:
            raise QueueFull(f"{self.waiting} requests are waiting for generation and this server queues at most "
                            f"{self.max_queue} (--max_queue); retry later")

    def enqueue(self, request: Request, on_delta: Callable[[str], None] | None = None) -> asyncio.Future:
        """A future of the request's Completion; ``on_delta`` gets reply text on the event loop as it comes.
        Cancelling the future cancels the request, also while it is being generated."""
        if self._task is None:
            raise RuntimeError("BatchQueue.start() was not called")
        self.check_room(1)
        job = _Job(request, asyncio.get_running_loop().create_future(), on_delta)
        job.future.add_done_callback(lambda f: request.cancelled.set() if f.cancelled() else None)
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
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                await asyncio.sleep(self.wait_s)  # let concurrent requests arrive and join this batch
            batch = self._take_batch()
            if batch:
                await self._generate(batch)

    async def _generate(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        self.stats.batch_sizes.append(len(batch))

        def relay(i: int, delta: str) -> None:  # on the worker thread
            batch[i].streamed = True
            if batch[i].on_delta is not None:
                loop.call_soon_threadsafe(batch[i].on_delta, delta)

        self._running, self.generating = batch, len(batch)
        try:
            results = await loop.run_in_executor(
                self._executor, self.engine.generate_batch, [j.request for j in batch], relay)
        except Exception as e:  # noqa: BLE001 - the rows are retried alone or handed the error
            await self._after_failure(batch, e)
            return
        finally:
            self._running, self.generating = [], 0
        for job, result in zip(batch, results):
            self._settle(job, result)

    def _settle(self, job: _Job, result: Completion) -> None:
        if result.finish_reason == "cancelled":
            self.stats.cancelled_tokens.append(result.completion_tokens)
        if job.future.done():
            return
        if result.error is not None:
            job.future.set_exception(GenerationError(result.error))
        else:
            job.future.set_result(result)

    async def _after_failure(self, batch: list[_Job], error: Exception) -> None:
        """Retry alone each row of a failed batch that streamed nothing yet; the others get the error."""
        for job in batch:
            if job.future.done():
                continue
            if len(batch) == 1 or job.streamed:
                job.future.set_exception(error)
                continue
            self.stats.retried += 1
            await self._generate([job])
