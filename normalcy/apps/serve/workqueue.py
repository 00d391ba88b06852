"""A bounded inference queue: work runs on dedicated threads off the event loop; when full, callers get QueueFull."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """Every worker is busy and the waiting queue is at its limit: answer 503 instead of piling up memory."""


class InferenceQueue:
    """At most `workers` jobs run and `queue_size` wait; a slot is freed only when its job really ends."""

    def __init__(self, workers: int = 1, queue_size: int = 16) -> None:
        self.workers = workers
        self.queue_size = queue_size
        self.capacity = workers + queue_size
        self.pending = 0  # running + waiting; touched only on the event-loop thread
        self.completed = 0
        self.rejected = 0
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="normalcy-infer")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on a worker thread; raise QueueFull at once if the queue is at capacity."""
        if self.pending >= self.capacity:
            self.rejected += 1
            raise QueueFull(
                f"server busy: {self.pending} requests already running or queued (workers={self.workers}, "
                f"queue_size={self.queue_size}); retry shortly")
        loop = asyncio.get_running_loop()
        self.pending += 1
        fut: Future = self._executor.submit(fn, *args)
        # release on the job's real end, even if the awaiting request is cancelled while the thread still works
        fut.add_done_callback(lambda _: _call_soon(loop, self._release))
        return await asyncio.wrap_future(fut)

    def _release(self) -> None:
        self.pending -= 1
        self.completed += 1

    def stats(self) -> dict[str, int]:
        """Current load, for `GET /health`."""
        return {"pending": self.pending, "capacity": self.capacity, "workers": self.workers,
                "queue_size": self.queue_size, "completed": self.completed, "rejected": self.rejected}

    def shutdown(self) -> None:
        """Stop the worker threads (waits for running jobs)."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """Schedule `fn` on the loop from a worker thread (ignored once the loop is closed at shutdown)."""
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:
        pass
