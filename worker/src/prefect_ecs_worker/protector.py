"""When the worker PUTs its task's protection: at each claim, ~5 s later, every 60 s while it holds a run.

The rules (docs/task-protection.md in the autoscaler's repository, shared with the publisher):

- the worker only *enables* protection; only the publisher releases it;
- right after a claim (the server accepted Pending) and before the run's code starts: one PUT, awaited;
- again ``confirm_after`` (5 s) after the claim: this closes the sub-second window between the publisher's
  read-back of the expiry and its release, since a release that lands just after the claim PUT is undone
  by this one, and the publisher sees the new expiry at its next sample;
- every ``refresh_every`` (60 s) while the worker holds any run, so the expiry never runs out under a long
  run (including a run waiting in AwaitingRetry inside its process);
- a failed PUT at the claim is retried once at once; if that fails too, a WARNING says the task is not
  protected yet and the run proceeds (refusing it would leave it claimed and Pending, which is worse: the
  publisher protects the task at its next sample once it sees the run, and the protector keeps trying every
  ``retry_after`` (5 s) while the run is held). Every failure is logged with its cause, never silently.

``RefreshSchedule`` is the pure part (a clock in, "is a PUT due" out); ``Protector`` drives it with a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from prefect_ecs_worker.ecs import AgentClient, ProtectionResult

LOGGER = logging.getLogger("prefect.ecs_worker")
PROTECTION_MINUTES = 5
CONFIRM_AFTER_SECONDS = 5.0
REFRESH_EVERY_SECONDS = 60.0
RETRY_AFTER_SECONDS = 5.0


class RefreshSchedule:
    """Which runs the worker holds, and when its next protection PUT is due. Not thread-safe: lock around it."""

    def __init__(self, *, confirm_after: float = CONFIRM_AFTER_SECONDS, refresh_every: float = REFRESH_EVERY_SECONDS,
                 retry_after: float = RETRY_AFTER_SECONDS) -> None:
        if min(confirm_after, refresh_every, retry_after) <= 0:
            raise ValueError("intervals must be positive")
        self.confirm_after = confirm_after
        self.refresh_every = refresh_every
        self.retry_after = retry_after
        self._held: dict[str, int] = {}
        self._confirms: list[float] = []
        self._last_ok: float | None = None
        self._retry_at: float | None = None

    # -- what the worker holds --------------------------------------------------------
    def claim(self, run_id: str, now: float) -> None:
        """The server accepted Pending for ``run_id``: the caller PUTs now; a confirming PUT is due later."""
        self.hold(run_id)
        self._confirms.append(now + self.confirm_after)

    def hold(self, run_id: str) -> None:
        self._held[run_id] = self._held.get(run_id, 0) + 1

    def release(self, run_id: str) -> None:
        """One holder of ``run_id`` is done with it (each ``claim``/``hold`` is matched by one ``release``)."""
        count = self._held.get(run_id, 0) - 1
        if count > 0:
            self._held[run_id] = count
        else:
            self._held.pop(run_id, None)

    @property
    def holding(self) -> bool:
        return bool(self._held)

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    # -- when to PUT --------------------------------------------------------------------
    def record(self, now: float, ok: bool) -> None:
        """A PUT was made at ``now``; it succeeded or not."""
        if ok:
            self._last_ok, self._retry_at = now, None
        else:
            self._retry_at = now + self.retry_after

    def next_due(self) -> float | None:
        """When the next PUT is due (may be in the past), or None while nothing is held."""
        if not self._held:
            return None
        candidates = list(self._confirms)
        if self._retry_at is not None:
            candidates.append(self._retry_at)
        if self._last_ok is not None:
            candidates.append(self._last_ok + self.refresh_every)
        return min(candidates) if candidates else None

    def take_due(self, now: float) -> bool:
        """Whether a PUT is due at ``now``; consumes the confirmations it covers. Confirmations due while no run
        is held are dropped (an idle task needs no protection from the worker; the publisher decides)."""
        due = self.next_due()
        if not self._held:
            self._confirms.clear()
            return False
        if due is None or due > now:
            return False
        self._confirms = [t for t in self._confirms if t > now]
        return True


class Protector:
    """Runs the schedule: the claim PUT in the caller's thread, the others from a daemon thread."""

    def __init__(self, agent: AgentClient, *, minutes: int = PROTECTION_MINUTES,
                 schedule: RefreshSchedule | None = None, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = LOGGER) -> None:
        self.agent = agent
        self.minutes = minutes
        self.schedule = schedule or RefreshSchedule()
        self._clock = clock
        self._log = logger
        self._cond = threading.Condition()
        self._put_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> Protector:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="prefect-ecs-worker-protection", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- called by the worker's hooks ----------------------------------------------------
    def claim(self, run_id: str) -> ProtectionResult:
        """Right after the claim, before the run's code: PUT, and once more at once if it failed (blocking,
        each bounded by the agent client's timeout). Never raises: the run proceeds either way."""
        with self._cond:
            self.schedule.claim(run_id, self._clock())
            self._cond.notify_all()
        result = self._put(f"claimed flow run {run_id}", retrying=True)
        if not result.ok:
            result = self._put(f"claimed flow run {run_id}, retried", retrying=False)
        return result

    def hold(self, run_id: str) -> None:
        with self._cond:
            self.schedule.hold(run_id)
            self._cond.notify_all()

    def release(self, run_id: str) -> None:
        with self._cond:
            self.schedule.release(run_id)
            self._cond.notify_all()

    # -- the PUTs ------------------------------------------------------------------------
    def _put(self, why: str, retrying: bool = False) -> ProtectionResult:
        with self._put_lock:
            result = self.agent.protect(self.minutes)
            now = self._clock()
        with self._cond:
            self.schedule.record(now, result.ok)
            held = len(self.schedule.held)
            self._cond.notify_all()
        if result.ok:
            self._log.info("Task scale-in protection enabled (%s; %d run(s) held), expires %s",
                           why, held, result.expiration)
        elif retrying:
            self._log.warning("Task scale-in protection PUT failed (%s): %s; retrying now", why, result.problem)
        else:
            self._log.warning("Task scale-in protection PUT failed (%s): %s; the task is NOT protected by this "
                              "worker yet (the publisher protects it at its next sample); the run proceeds, and "
                              "the PUT is tried again in %.0f s while it holds runs",
                              why, result.problem, self.schedule.retry_after)
        return result

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    now = self._clock()
                    if self.schedule.take_due(now):
                        break
                    due = self.schedule.next_due()
                    self._cond.wait(timeout=None if due is None else max(0.05, due - now))
                if self._stopping:
                    return
            try:
                self._put("refresh while holding runs")
            except Exception:  # never let the thread die: the next due time tries again
                self._log.exception("Task scale-in protection refresh raised")
                with self._cond:
                    self.schedule.record(self._clock(), False)
