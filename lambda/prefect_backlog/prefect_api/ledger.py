"""Read what changed: a warm container keeps the Running runs it read, and a sample asks only for the rest (#22).

Task protection needs every in-flight run of a protected service with its
worker, so the in-flight stream of those queues is read run by run. Its cost
grew with the runs in flight, though long flows barely change between samples.
So a :class:`RunLedger`, kept between warm invocations like the depth memory,
holds per pool and stream the runs that were RUNNING at the last sample (id,
queue, state, worker), and a warm sample reads, per pool, at the same time:

1. ``running``: ``POST /flow_runs/count`` of the Running runs of its queues;
2. ``rest``: every run of the stream but the kept ones (the stream's own
   filter, whatever the model counts as in flight, and ``id.not_any_`` the
   kept ids): Pending, Cancelling, Paused and any other state the stream
   holds, and new Running runs however they got there (a retry whose
   ``start_time`` was set long ago, a resume, a state forced by hand).

Every Running run of those queues is in the stream, so ``running`` less the
Running runs of ``rest`` is how many kept runs are still Running. When that is
all of them, the stream is the kept runs and ``rest``: no start, end or state
time is relied on, and nothing that entered can be missed (a run not kept is
in ``rest`` by construction). Otherwise:

3. ``left``: the kept runs no longer Running (``id.any_`` kept,
   ``state.type.not_any_ [RUNNING]``), whatever they moved to. If the kept
   runs less these are not as many as (1) says, a kept run was deleted (no
   read returns it) or a run moved between the reads: the sample reads in
   full;
4. ``back``: those of ``left`` still in the stream (its filter, ``id.any_``).

The stream is then (kept - left) + rest + back, each run with the state read
in this sample, or Running since the last. A cold start, a disagreement, a
failed request, a server whose runs carry no labels, and every
``RESYNC_EVERY_SAMPLES``-th sample read the stream in full instead. Changes
made during the sample's own reads are seen on either side, as a full read's
pages see them.

What no filter sees: a kept run that leaves Running and is back in Running
under another worker before the next sample (a resubmission completed within
one interval), or whose worker label is rewritten by hand
(``PATCH /flow_runs/{id}/labels``) while it runs. Prefect has no filter or sort
on ``updated``, the state's timestamp or id, or labels (2.18, 3.1, 3.8, 3.9),
and its counts do not change. Its worker name is then the one read last, for
at most ``RESYNC_EVERY_SAMPLES - 1`` samples; the publisher's own state writes
(rescheduling, crashing) drop the ledger so its next read is full.

Version gate: labels on runs mean a 3.1.6+ server (or Prefect Cloud), where
``state.type.not_any_`` (3.x; 2.18 answers 422) and ``id.not_any_`` are
there. A ledger is kept only once some run read carried labels; on 2.x and
3.x before 3.1.6 (which cannot protect tasks anyway) every read stays full.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect_backlog.backlog import RunFacts
from prefect_backlog.config import DEFAULT_FULL_READ_EVERY_SAMPLES
from prefect_backlog.fanout import Fanout
from prefect_backlog.prefect_api.transport import PrefectAuthError, PrefectError, PrefectHttp

# The in-flight state whose runs are kept between samples: the long one. The others (Pending, Cancelling,
# Paused, and whatever else the stream's filter holds) are short or rare, and read in every sample.
KEPT_STATE_TYPE = "RUNNING"
# Every this many samples a stream is read in full even when its counts agree (see the module docstring);
# the setting fullReadEverySamples (1: always in full, never by changes).
RESYNC_EVERY_SAMPLES = DEFAULT_FULL_READ_EVERY_SAMPLES
# More kept runs than this in one pool's stream are read in full: each warm sample sends their ids twice,
# and a database caps the parameters of one statement (SQLite 32,766; asyncpg 32,767).
MAX_KEPT_RUNS = 10_000

Key = tuple[str, tuple[str, ...], str]


def ledger_key(pool: str, queue_ids: Sequence[str], flow_runs: dict[str, Any]) -> Key:
    """One pool's stream over its queues, told apart by its filter (a change of what is in flight is a new key)."""
    return pool, tuple(sorted(queue_ids)), json.dumps(flow_runs, sort_keys=True)


@dataclass
class _Kept:
    running: dict[str, RunFacts]
    samples_since_full: int = 0


@dataclass
class LedgerStats:
    """What the ledger did, per container: read in full (and why), or read the changes."""

    changes: int = 0
    full: dict[str, int] = field(default_factory=dict)  # reason -> reads

    def note_full(self, reason: str) -> None:
        self.full[reason] = self.full.get(reason, 0) + 1


class RunLedger:
    """The Running runs of each listed in-flight stream at the last sample; a warm Lambda keeps it."""

    def __init__(self, resync_every: int = RESYNC_EVERY_SAMPLES, max_kept: int = MAX_KEPT_RUNS) -> None:
        self.resync_every = resync_every
        self.max_kept = max_kept
        self._kept: dict[Key, _Kept] = {}
        self._lock = threading.Lock()
        self.labels_seen = False  # some run read carried labels: a 3.1.6+ server (the version gate)
        self._kept_once = False
        self.stats = LedgerStats()

    def forget(self) -> None:
        """Read every stream in full next time (after the publisher changed runs' states itself)."""
        with self._lock:
            self._kept.clear()

    def kept(self, key: Key) -> dict[str, RunFacts] | None:
        """The kept Running runs, or None when the stream must be read in full, noting why."""
        with self._lock:
            kept = self._kept.get(key)
            if kept is None:
                reason = "no labels seen" if self._kept_once and not self.labels_seen else "cold"
            elif kept.samples_since_full + 1 >= self.resync_every:
                reason = "resync"
            else:
                return dict(kept.running)
            self.stats.note_full(reason)
            return None

    def keep(self, key: Key, runs: Sequence[RunFacts], *, full: bool) -> None:
        """Keep the Running runs of what a sample read of the stream (all of it, or its changes)."""
        with self._lock:
            self._kept_once = True
            if any(run.labelled for run in runs):
                self.labels_seen = True
            running = {run.id: run for run in runs if run.state_type == KEPT_STATE_TYPE}
            if not self.labels_seen or any(not run.labelled for run in runs) or len(running) > self.max_kept:
                self._kept.pop(key, None)
                return
            before = self._kept.get(key)
            since = 0 if full or before is None else before.samples_since_full + 1
            self._kept[key] = _Kept(running, since)
            if not full:
                self.stats.changes += 1

    def disagreed(self, reason: str) -> None:
        with self._lock:
            self.stats.note_full(reason)


def read_in_flight(http: PrefectHttp, fanout: Fanout, ledger: RunLedger, pool: str, queue_ids: list[str],
                   flow_runs: dict[str, Any], full_read: Callable[[], list[RunFacts]],
                   to_facts: Callable[[dict[str, Any]], RunFacts]) -> list[RunFacts]:
    """The stream's runs: from the kept runs and what changed when that is provably the same, else read in full."""
    key = ledger_key(pool, queue_ids, flow_runs)
    kept = ledger.kept(key)
    if kept is not None:
        runs: list[RunFacts] | None = None
        try:
            runs = _changes(http, fanout, queue_ids, flow_runs, kept, to_facts)
            if runs is None:
                ledger.disagreed("counts differ")
        except PrefectAuthError:
            raise
        except (PrefectError, ValueError, KeyError, TypeError) as exc:  # read in full: that raises if it must
            ledger.disagreed(f"failed: {type(exc).__name__}")
        if runs is not None:
            ledger.keep(key, runs, full=False)
            return runs
    runs = full_read()
    ledger.keep(key, runs, full=True)
    return runs


def _changes(http: PrefectHttp, fanout: Fanout, queue_ids: list[str], flow_runs: dict[str, Any],
             kept: dict[str, RunFacts], to_facts: Callable[[dict[str, Any]], RunFacts]) -> list[RunFacts] | None:
    """(kept - left) + rest + back, or None when the counts say that is not the stream (see the module)."""
    if "id" in flow_runs:
        raise ValueError("the stream's filter already has an id filter; it cannot be read by changes")
    scope = {"work_pool_queues": {"id": {"any_": queue_ids}}}

    def running() -> int:
        return http.count({"flow_runs": {"state": {"type": {"any_": [KEPT_STATE_TYPE]}}}, **scope})

    def rest() -> list[dict[str, Any]]:
        return http.paged("/flow_runs/filter", {"flow_runs": {**flow_runs, "id": {"not_any_": sorted(kept)}},
                                                **scope, "sort": "ID_DESC"})

    def call(job: Callable[[], Any]) -> Any:
        return job()

    running_now, rest_runs = fanout.map(call, [running, rest])
    fresh = {str(run["id"]): to_facts(run) for run in rest_runs}
    # Every Running run of these queues is in the stream: those not kept are in ``rest``, so the others are
    # the kept runs still Running.
    still_running = running_now - sum(1 for run in fresh.values() if run.state_type == KEPT_STATE_TYPE)
    if still_running == len(kept):
        return [*kept.values(), *fresh.values()]
    if not kept or still_running > len(kept):
        return None  # a run entered or left between the two reads: read in full
    left = {str(run["id"]) for run in http.paged("/flow_runs/filter", {
        "flow_runs": {"id": {"any_": sorted(kept)}, "state": {"type": {"not_any_": [KEPT_STATE_TYPE]}}},
        "sort": "ID_DESC"})} & set(kept)
    if len(kept) - len(left) != still_running:
        return None  # a kept run was deleted (no read returns it), or a race: read in full
    back = http.paged("/flow_runs/filter", {"flow_runs": {**flow_runs, "id": {"any_": sorted(left)}}, **scope,
                                            "sort": "ID_DESC"}) if left else []
    staying = [run for run_id, run in kept.items() if run_id not in left]
    return [*staying, *fresh.values(), *(to_facts(run) for run in back if str(run["id"]) not in fresh)]
