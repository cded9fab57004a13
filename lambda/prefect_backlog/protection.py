"""Which ECS tasks hold a flow run: the pure rules behind task scale-in protection and orphaned runs.

ECS picks which tasks a scale-in stops without knowing what they run, and a
Process worker that gets SIGTERM interrupts its flows, which then stay Running
forever. So every task whose worker holds a run is protected from scale-in,
and released when it holds none. A run names its worker (label
``prefect.worker.name``: a 3.1.9+ worker and a 3.1.6+ server); a worker named
``ecs-<task id>`` names its task.

A task holds a run while the run's process lives in it: Pending, Running,
Cancelling, Paused and waiting to retry (AwaitingRetry), when runs execute inside the worker task
(``runsInWorkerTask``); otherwise only while Pending, the window in which the
worker is still submitting the run as its own infrastructure, and a worker
stopped then leaves the run stuck in Pending.

A run whose task is confirmed gone (ECS answers STOPPED in this service, or
does not know the task and its worker no longer heartbeats) is orphaned: its
process died with it. That is decided from the task's own status, never from
its absence in a list read at another moment.
Everything here is pure: runs and task facts in, decisions out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prefect_backlog.backlog import RunFacts, is_stuck_pending

# A worker named after its task: "ecs-" and the task ID (the last path segment of the task ARN, 32
# lowercase hex characters), and nothing else. A name that merely contains 32 hex digits (a uuid4().hex,
# an md5) is not taken for a task: a look-alike would make a live worker's runs look orphaned.
WORKER_NAME = re.compile(r"ecs-([0-9a-f]{32})")
# A worker writes its name label just after claiming a run: a run Pending for less than this may simply
# not be labelled yet, and is not reported as unmapped.
LABEL_GRACE_SECONDS = 30


def task_id_of(worker_name: str | None) -> str | None:
    """The ECS task ID of a worker named ``ecs-<task id>`` (what prefect-ecs-worker names it), else None."""
    named = WORKER_NAME.fullmatch(worker_name or "")
    return named.group(1) if named else None


def holds_task(run: RunFacts, runs_in_worker_task: bool) -> bool:
    """Whether the run still needs its worker's task: its process lives there, or it is still being submitted."""
    if run.state_type == "PENDING":
        return True
    return runs_in_worker_task and run.in_flight


@dataclass(frozen=True)
class Holding:
    """The runs of one ECS service's queues that hold a task, split by whether their task is known."""

    mapped: Mapping[str, tuple[RunFacts, ...]]  # task id -> its runs
    unmapped: tuple[RunFacts, ...]  # held by a worker whose name carries no task ID
    unlabelled: bool  # the API carries no labels at all (Prefect 2.x): nothing can be mapped

    @property
    def busy_tasks(self) -> frozenset[str]:
        return frozenset(self.mapped)


def holding_runs(runs_by_queue: Iterable[tuple[Iterable[RunFacts], bool]], now: datetime) -> Holding:
    """``runs_by_queue``: each queue's in-flight runs with its ``runsInWorkerTask``."""
    mapped: dict[str, list[RunFacts]] = {}
    unmapped: list[RunFacts] = []
    unlabelled = False
    for runs, in_task in runs_by_queue:
        for run in runs:
            if not holds_task(run, in_task):
                continue
            task_id = task_id_of(run.worker_name)
            if task_id is not None:
                mapped.setdefault(task_id, []).append(run)
            elif not run.labelled:
                unlabelled = True
            elif not _may_be_unlabelled_yet(run, now):
                unmapped.append(run)
    return Holding({task: tuple(runs) for task, runs in mapped.items()}, tuple(unmapped), unlabelled)


def _may_be_unlabelled_yet(run: RunFacts, now: datetime) -> bool:
    return (run.worker_name is None and run.state_type == "PENDING" and run.state_since is not None
            and run.state_since > now - timedelta(seconds=LABEL_GRACE_SECONDS))


@dataclass(frozen=True)
class ServiceTasks:
    """What ECS says of one service's tasks in this sample."""

    live: frozenset[str]  # the service's tasks whose desired status is RUNNING (ListTasks)
    protected: Mapping[str, datetime]  # of those, the protected ones and when their protection expires
    # Tasks asked about one by one (DescribeTasks): STOPPED in this service, or unknown to ECS (MISSING).
    stopped: frozenset[str] = frozenset()
    missing: frozenset[str] = frozenset()
    # Names of the ONLINE workers of the service's pools (Prefect), or None when they could not be read.
    online_workers: frozenset[str] | None = None


@dataclass(frozen=True)
class ProtectionPlan:
    protect: tuple[str, ...]  # enable, or refresh before it expires
    release: tuple[str, ...]  # protected, but holding no run
    orphaned: tuple[RunFacts, ...]  # runs whose task is gone
    protected_after: frozenset[str] = field(default_factory=frozenset)  # what will be protected once applied


# A worker writes a run's prefect.worker.name label right after the server accepted its Pending state (before
# it even resolves the job: prefect/workers/base.py _submit_run_and_capture_errors), in about a second here; a
# release decision assumes a run claimed more than this long before the runs were read carries its label.
CLAIM_LABEL_SECONDS = 10
# prefect-ecs-worker protects for at least this many minutes at each PUT (prefect_ecs_worker.options.MIN_MINUTES;
# tests/unit/test_release_rule.py checks the two agree). An expiry E was therefore set no later than E minus this.
WORKER_MINUTES_FLOOR = 5


@dataclass(frozen=True)
class ReleaseCheck:
    """Which release candidates may be released, decided from their expiry read back just before."""

    release: tuple[str, ...]  # nobody protected it since the runs were read (or since the publisher looked)
    kept: Mapping[str, datetime]  # perhaps protected at a claim the runs read could not show: kept, expiry known
    lapsed: frozenset[str]  # no longer protected (expired, or released elsewhere): nothing to do


def check_releases(candidates: Iterable[str], known: Mapping[str, datetime] | None,
                   read_back: Mapping[str, datetime], *, runs_read_at: datetime,
                   label_grace_seconds: float = CLAIM_LABEL_SECONDS) -> ReleaseCheck:
    """The release rule the publisher shares with ``prefect-ecs-worker`` (docs/task-protection.md).

    ``candidates`` held no run when the runs were read (at ``runs_read_at`` or later). ``read_back``: the
    protected ones among them as GetTaskProtection answers now, after that read. ``known``: each one's expiry
    as the publisher knew it before this sample (what its own UpdateTaskProtection returned, or an earlier
    read-back); None on a cold container.

    A task is released when its protection cannot come from a claim the runs read missed, that is when

    - its expiry is exactly the one the publisher knew: nobody PUT since it last looked; or
    - its latest PUT, which was at most ``expiry - WORKER_MINUTES_FLOOR`` (every PUT, the worker's and the
      publisher's, lasts at least that long), came more than ``label_grace_seconds`` before the runs were
      read: a run claimed then, if still held, carried its worker's label in the read and made the task busy.

    Otherwise it is kept, its new expiry becomes the known one, and the next sample decides (the first clause
    then releases it unless it PUT again). What stays open is a PUT after the read-back: see the docs.
    """
    release: list[str] = []
    kept: dict[str, datetime] = {}
    lapsed: set[str] = set()
    settled_before = runs_read_at - timedelta(seconds=label_grace_seconds)
    for task in sorted(set(candidates)):
        until = read_back.get(task)
        if until is None:
            lapsed.add(task)
        elif (known is not None and known.get(task) == until) or \
                until - timedelta(minutes=WORKER_MINUTES_FLOOR) < settled_before:
            release.append(task)
        else:
            kept[task] = until
    return ReleaseCheck(tuple(release), kept, frozenset(lapsed))


def suspects(holding: Holding, tasks_live: frozenset[str]) -> frozenset[str]:
    """Tasks named by a holding run but not among the service's live tasks: ask ECS about each one."""
    return holding.busy_tasks - tasks_live


def plan_protection(holding: Holding, tasks: ServiceTasks, *, refresh_before: datetime) -> ProtectionPlan:
    """Protect every live task that holds a run (refreshing protection that expires before ``refresh_before``),
    release every protected task that holds none, and name the runs whose task is gone.

    A named task that is neither live nor gone (it started after the list was read, or belongs to another
    service) is left alone: it is not ours to protect, and its runs are not orphaned.

    A run is orphaned when its task is STOPPED in this service, or when ECS does not know the task (it
    forgets stopped tasks after a while) *and* the run's worker is not ONLINE in Prefect: a worker that
    still heartbeats is alive, whatever its name suggests. Unknown worker health orphans nothing there.
    """
    busy = holding.busy_tasks & tasks.live
    protect = sorted(t for t in busy if tasks.protected.get(t) is None or tasks.protected[t] < refresh_before)
    release = sorted(t for t in tasks.protected if t in tasks.live and t not in busy)
    # A run waiting to retry is Scheduled-type: once due, any live worker claims it, so it is never an orphan.
    orphaned = tuple(run for task in sorted(holding.busy_tasks & (tasks.stopped | tasks.missing))
                     for run in holding.mapped[task]
                     if not run.retrying and (task in tasks.stopped or _worker_gone(run, tasks)))
    protected_after = (frozenset(tasks.protected) & tasks.live | busy) - frozenset(release)
    return ProtectionPlan(tuple(protect), tuple(release), orphaned, protected_after)


# Worker labels on flow runs: a self-hosted server stores them since 3.1.6 (PrefectHQ/prefect#16122), and
# workers stamp them against any server since 3.1.9 (#16426); Prefect Cloud had them from 3.1.2 (#15983).
LABELS_SERVER = (3, 1, 6)
LABELS_WORKER = "3.1.9"


def why_unlabelled(server_version: str | None) -> str:
    """Why a server's flow runs carry no labels at all, for the log line that says protection cannot work."""
    parts = re.match(r"(\d+)\.(\d+)\.(\d+)", server_version or "")
    if parts is None:
        return ("the server's flow runs have no labels (Prefect 2.x, or a 3.x server older than 3.1.6; its version "
                "could not be read)")
    version = tuple(int(p) for p in parts.groups())
    if version[0] < 3:
        return f"Prefect {server_version} has no flow-run labels: 2.x agents and workers label nothing"
    if version < LABELS_SERVER:
        return (f"Prefect server {server_version} is older than 3.1.6 and stores no flow-run labels; upgrade the "
                f"server to 3.1.6+ and the workers to {LABELS_WORKER}+")
    return f"Prefect {server_version} answered without flow-run labels"


def _worker_gone(run: RunFacts, tasks: ServiceTasks) -> bool:
    return tasks.online_workers is not None and run.worker_name not in tasks.online_workers


def plan_hold(tasks: ServiceTasks, *, refresh_before: datetime) -> ProtectionPlan:
    """Prefect could not be read, so which tasks hold runs is unknown: keep every protected live task
    protected (refreshing what expires before ``refresh_before``), release nothing, and name no orphan.

    Target tracking's low alarm evaluates the older datapoints it still has and may scale in during the
    outage; without this, protection would lapse a few minutes in and a scale-in could stop running flows.
    """
    kept = frozenset(tasks.protected) & tasks.live
    protect = sorted(t for t in kept if tasks.protected[t] < refresh_before)
    return ProtectionPlan(tuple(protect), (), (), kept)


def still_orphaned(current: RunFacts, seen: RunFacts, runs_in_worker_task: bool, now: datetime,
                   stuck_after_seconds: float) -> bool:
    """Whether a run found orphaned, read again just before it is crashed, is still held by its dead task.

    It must be under the same worker and hold its task by :func:`holds_task`'s rule, and not be waiting to
    retry (a Scheduled-type run: any live worker claims it once due). A worker that launches
    each run as its own task holds it only while Pending, and a Pending run whose worker died right after
    submitting may still start and turn Running in its own task: it is crashed only once it has been Pending
    longer than a worker needs (``stuck_after_seconds``), never once Running.
    """
    if current.worker_name != seen.worker_name or current.retrying or not holds_task(current, runs_in_worker_task):
        return False
    return runs_in_worker_task or is_stuck_pending(current, now, stuck_after_seconds)


def orphaned_in_a_row(previous: Iterable[str], now_orphaned: Iterable[RunFacts]) -> tuple[RunFacts, ...]:
    """Runs orphaned in this sample and the one before: only those may be crashed (a task that is gone
    stays gone; two looks rule out a read that raced with the task list)."""
    before = set(previous)
    return tuple(run for run in now_orphaned if run.id in before)
