"""Simulated time: an event queue of callbacks, run in time order (ties in the order they were scheduled)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class Clock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run ``action`` at ``when`` (now, if ``when`` has passed)."""
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), action))

    def every(self, first: float, interval: float, action: Callable[[], None], until: float) -> None:
        """Run ``action`` at ``first``, then every ``interval`` seconds, while before ``until``."""
        def tick(when: float) -> None:
            action()
            if when + interval < until:
                self.at(when + interval, lambda: tick(when + interval))
        if first < until:
            self.at(first, lambda: tick(first))

    def run_until(self, end: float) -> None:
        while self._queue and self._queue[0][0] <= end:
            when, _, action = heapq.heappop(self._queue)
            self.now = when
            action()
        self.now = end
