"""Dynamic batching: requests' images wait in one bounded queue; one model thread takes them in
batches (of one key, at most `max_batch_size`), after waiting at most `max_wait_s` for the first
one's batch to fill. What arrives while a batch runs forms the next one."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The queue holds `max_queue` images: try again later (503)."""


class QueueTimeout(Exception):
    """An image waited longer than `timeout_s` for the model (504)."""


class BatchFailed(Exception):
    """The batch an image ran in raised; every image of that batch gets this (500)."""


@dataclass(eq=False)
class _Waiting:
    item: Any
    key: Hashable
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)
    started: bool = False


class DynamicBatcher:
    """`await submit(items)` gives `run`'s outputs for the items, run in batches with other requests' items.

    `run(items)` (one key per call, one output per item) is called on a single worker thread, so
    one batch runs at a time and the event loop stays free. A failing batch fails only its own
    items; the next batch runs. `on_batch(size, seconds)` and `on_queue(depth)` report to metrics.
    """

    def __init__(
        self,
        run: Callable[[list[Any]], list[Any]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        timeout_s: float,
        on_batch: Callable[[int, float], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ) -> None:
        self.run = run
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.on_batch = on_batch or (lambda size, seconds: None)
        self.on_queue = on_queue or (lambda depth: None)
        self._queue: deque[_Waiting] = deque()
        self._arrival: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="focalnet-model")

    @property
    def depth(self) -> int:
        """Images waiting for the model."""
        return len(self._queue)

    def start(self) -> None:
        """Start taking batches (on the running event loop)."""
        self._arrival = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._take_batches())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` on the model thread, between batches (e.g. a visualisation)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def submit(self, items: Sequence[tuple[Hashable, Any]]) -> list[Any]:
        """The outputs for (key, item) pairs, in order. Raises QueueFull, QueueTimeout (an item still
        queued after `timeout_s`) or BatchFailed."""
        if self._arrival is None:
            raise RuntimeError("the batcher is not started")
        if len(self._queue) + len(items) > self.max_queue:
            raise QueueFull(f"{len(self._queue)} images are waiting (at most {self.max_queue})")
        loop = asyncio.get_running_loop()
        waiting = [_Waiting(item, key, loop.create_future()) for key, item in items]
        for entry in waiting:  # a failure nobody awaits any more (the request gave up) is not an error to log
            entry.future.add_done_callback(lambda future: future.cancelled() or future.exception())
        self._queue.extend(waiting)
        self.on_queue(len(self._queue))
        self._arrival.set()
        await asyncio.wait([entry.future for entry in waiting], timeout=self.timeout_s)
        expired = [entry for entry in waiting if not entry.started]
        if expired:  # still queued: give up on the whole request, and leave the queue
            for entry in expired:
                entry.future.cancel()
                with contextlib.suppress(ValueError):
                    self._queue.remove(entry)
            self.on_queue(len(self._queue))
            raise QueueTimeout(f"no model time within {self.timeout_s:g} s")
        await asyncio.wait([entry.future for entry in waiting])  # all started: their batches finish
        failures = [entry.future.exception() for entry in waiting]
        failure = next((error for error in failures if error is not None), None)
        if failure is not None:
            raise failure
        return [entry.future.result() for entry in waiting]

    async def _take_batches(self) -> None:
        while True:
            if not self._queue:
                self._arrival.clear()
                await self._arrival.wait()
                continue
            await self._wait_to_fill(self._queue[0])
            batch = self._next_batch()
            if batch:
                await self._run(batch)

    async def _wait_to_fill(self, head: _Waiting) -> None:
        """Until the head's batch is full or the head has waited `max_wait_s`."""
        while self._count(head.key) < self.max_batch_size:
            left = head.arrived + self.max_wait_s - time.monotonic()
            if left <= 0:
                return
            self._arrival.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrival.wait(), left)

    def _count(self, key: Hashable) -> int:
        return sum(1 for entry in self._queue if entry.key == key)

    def _next_batch(self) -> list[_Waiting]:
        """Up to `max_batch_size` queued items of the head's key, oldest first; the rest keep their places."""
        key = self._queue[0].key
        batch, rest = [], deque()
        while self._queue:
            entry = self._queue.popleft()
            if entry.future.done():  # given up on (timed out)
                continue
            (batch if entry.key == key and len(batch) < self.max_batch_size else rest).append(entry)
        self._queue = rest
        self.on_queue(len(self._queue))
        for entry in batch:
            entry.started = True
        return batch

    async def _run(self, batch: list[_Waiting]) -> None:
        started = time.perf_counter()
        try:
            outputs = await self.call(self.run, [entry.item for entry in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"the model gave {len(outputs)} outputs for {len(batch)} images")
        except Exception as error:  # the batch fails, the server goes on
            failure = BatchFailed(f"{type(error).__name__}: {error}")
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(failure)
            return
        finally:
            self.on_batch(len(batch), time.perf_counter() - started)
        for entry, output in zip(batch, outputs, strict=True):
            if not entry.future.done():
                entry.future.set_result(output)
