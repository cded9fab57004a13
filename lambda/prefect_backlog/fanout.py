"""One bounded pool of threads for everything a tick does at the same time.

The Prefect reads nest (pools, then a pool's streams, then a deep stream's
slices, then per-queue counts), and the AWS side runs beside them. Giving each
level its own executor multiplies threads; sharing one executor the naive way
deadlocks as soon as every thread waits on work queued behind it. So a caller
that waits for work it handed out runs, itself, whatever of that work no
thread has started yet (``Future.cancel`` succeeds only on work not started).
The threads stay at ``max_workers``, nothing waits on a queue that cannot
move, and a one-item map costs no thread at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Task(Generic[R]):
    """Work handed to the fanout; :meth:`result` runs it in the caller if no thread has started it."""

    def __init__(self, future: Future[R], fn: Callable[[], R]) -> None:
        self._future = future
        self._fn = fn

    def result(self) -> R:
        if self._future.cancel():
            return self._fn()
        return self._future.result()

    def cancel(self) -> None:
        self._future.cancel()


class Fanout:
    """A thread pool for one tick: ``submit`` and ``map`` may be called from inside work it runs."""

    def __init__(self, max_workers: int, name: str = "tick") -> None:
        self.max_workers = max_workers
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)

    def submit(self, fn: Callable[[], R]) -> Task[R]:
        return Task(self._pool.submit(fn), fn)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``fn`` over ``items`` concurrently, results in order; an exception is raised as ``fn`` raised it."""
        items = list(items)
        if len(items) <= 1:
            return [fn(item) for item in items]
        tasks = [self.submit(lambda item=item: fn(item)) for item in items]  # type: ignore[misc]
        try:
            return [task.result() for task in tasks]
        except BaseException:
            for task in tasks:  # what no thread has started is not sent at all
                task.cancel()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Fanout:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

