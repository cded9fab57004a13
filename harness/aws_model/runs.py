"""The Prefect side the workers and publishers see: flow runs, due in order, claimed oldest first.

Not AWS, and kept minimal: a run is created ahead (Scheduled by a deployment's schedule: ``announced``) or the
moment it is due (``run_deployment``); Prefect marks it Late ``LATE_AFTER_SECONDS`` after its start time; a
worker claims due runs oldest first. A run whose task stops while it runs is orphaned: its process is gone.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

LATE_AFTER_SECONDS = 15  # PREFECT_API_SERVICES_LATE_RUNS_AFTER_SECONDS


@dataclass
class Run:
    due: float
    seconds: float
    announced: bool  # created ahead of its start (a schedule), or the moment it is due
    claimed: float | None = None
    task_id: str | None = None
    ends: float | None = None
    orphaned: bool = False
    done: bool = False

    @property
    def in_flight(self) -> bool:
        return self.claimed is not None and not self.done and not self.orphaned


class RunBook:
    """The runs of one work queue, by start time; workers claim them in that order (FIFO)."""

    def __init__(self, runs: Sequence[Run]) -> None:
        self.runs = sorted(runs, key=lambda r: r.due)
        self.dues = [r.due for r in self.runs]
        self._announced = [0, *itertools.accumulate(int(r.announced) for r in self.runs)]
        self.next_claim = 0
        self.in_flight = 0

    def due_waiting(self, now: float) -> int:
        """Due (start time passed) and not claimed: Scheduled or Late."""
        return max(0, bisect.bisect_right(self.dues, now) - self.next_claim)

    def late_waiting(self, now: float) -> int:
        """Due for ``LATE_AFTER_SECONDS`` or more and not claimed: what Prefect shows as Late."""
        return max(0, bisect.bisect_right(self.dues, now - LATE_AFTER_SECONDS) - self.next_claim)

    def upcoming(self, now: float, window: float) -> int:
        """Announced runs starting after ``now`` and within ``window``: Prefect has them, Scheduled."""
        lo = max(bisect.bisect_right(self.dues, now), self.next_claim)
        hi = max(bisect.bisect_right(self.dues, now + window), lo)
        return self._announced[hi] - self._announced[lo]

    def claim(self, now: float) -> Run | None:
        if self.next_claim < len(self.runs) and self.dues[self.next_claim] <= now:
            run = self.runs[self.next_claim]
            self.next_claim += 1
            self.in_flight += 1
            return run
        return None
