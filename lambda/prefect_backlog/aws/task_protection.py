"""Task scale-in protection, applied: read a service's tasks, let the model decide, protect and release.

Per service and sample: one ListTasks (per 100 tasks); DescribeTasks only for
tasks that a run names but the list does not hold (to tell a stopped task from
one that just started); UpdateTaskProtection only for what changes or must be
refreshed (10 tasks per call); GetTaskProtection (100 tasks per call) each
sample, since workers protect their own tasks. A service with nothing to
protect and nothing protected at the last sample costs no call at all.

A failed read or call never releases protection wholesale: what could not be
done is left as it was (the expiry bounds the damage) and reported.

Releases follow the rule shared with ``prefect-ecs-worker``, which protects its own task at each claim
(``prefect_backlog.protection.check_releases``; docs/task-protection.md): the expiries GetTaskProtection
reads each sample, after the runs were read, are compared with what this container knew before, and a task
whose protection may come from a claim those runs could not show yet is kept; the next sample decides.
Since tasks protect themselves, protection is read every sample (not only on a cold container).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from prefect_backlog.aws.ecs import (
    MAX_PROTECTION_MINUTES,
    CountingEcs,
    EcsTaskClient,
    GoneTasks,
    ServiceKey,
    gone_tasks,
    list_service_tasks,
    read_protection,
    update_protection,
)
from prefect_backlog.backlog import RunFacts
from prefect_backlog.protection import (
    Holding,
    ProtectionPlan,
    ServiceTasks,
    check_releases,
    plan_hold,
    plan_protection,
    suspects,
)

# Protection lasts this many minutes past the next sample, and is refreshed once less than the margin
# is left after the next sample: a publisher that stops leaves tasks protected a few minutes at most.
EXPIRY_MINUTES_PAST_NEXT_SAMPLE = 4
REFRESH_MARGIN = timedelta(minutes=2)


def protection_minutes(sample_interval_seconds: int) -> int:
    return min(MAX_PROTECTION_MINUTES, math.ceil(sample_interval_seconds / 60) + EXPIRY_MINUTES_PAST_NEXT_SAMPLE)


class ProtectionLedger:
    """What this container has seen protected, per service (a warm Lambda keeps it between samples)."""

    def __init__(self) -> None:
        self._protected: dict[ServiceKey, dict[str, datetime]] = {}
        self._lock = threading.Lock()

    def known(self, service: ServiceKey) -> dict[str, datetime] | None:
        """The service's protected tasks and their expiry, or None before the first successful read."""
        with self._lock:
            protected = self._protected.get(service)
            return None if protected is None else dict(protected)

    def record(self, service: ServiceKey, protected: dict[str, datetime]) -> None:
        with self._lock:
            self._protected[service] = dict(protected)


@dataclass(frozen=True)
class ServiceProtection:
    """What one service's protection step found and did this sample."""

    orphaned: tuple[RunFacts, ...] = ()
    protected: int | None = None  # tasks protected after this sample; None when it could not be known
    protect: tuple[str, ...] = ()  # protected or refreshed now
    release: tuple[str, ...] = ()  # released now
    errors: tuple[str, ...] = ()
    calls: int = 0
    unmapped: int = 0  # in-flight runs whose worker name holds no task ID (counted as demand, never protected)
    held: bool = False  # its runs were not read: protection was only kept (see :func:`hold`)

    @property
    def orphans_known(self) -> bool:
        """The orphan count is true: the service's runs and tasks were read (or no run names a task). False
        when a read failed: orphans are then unknown, and nothing is published for them."""
        return self.protected is not None and not self.held


def reconcile(ecs: EcsTaskClient, service: ServiceKey, holding: Holding, ledger: ProtectionLedger, *,
              now: datetime, sample_interval_seconds: int, online_workers: frozenset[str] | None = None,
              apply: bool = True) -> ServiceProtection:
    """Protect the service's tasks that hold runs, release the others it had protected, and find orphans.

    ``online_workers``: the names of the ONLINE workers of the service's pools, None when unknown.
    ``apply=False`` (a dry run) reads ECS and says what it would do, changing nothing.
    """
    cluster, name = service
    known = ledger.known(service)
    if known is not None and not known and not holding.mapped:
        # nothing protected, nothing to protect: nothing can have changed, and no run can be orphaned
        return ServiceProtection(protected=0)
    counted = CountingEcs(ecs)
    try:
        live = list_service_tasks(counted, cluster, name)
        # Every sample, after the runs were read: the worker protects its task itself at each claim, so what
        # this container set is not all there is (and the read is what the release rule compares).
        protected = read_protection(counted, cluster, live)
        asked = suspects(holding, live)
        gone = gone_tasks(counted, cluster, name, asked) if asked else GoneTasks()
    except Exception as exc:  # botocore's errors share no useful base beyond this
        return ServiceProtection(errors=(f"reading the tasks of ECS service {cluster}/{name}: {exc}",),
                                 calls=counted.calls)

    plan = plan_protection(holding, ServiceTasks(live, protected, gone.stopped, gone.missing, online_workers),
                           refresh_before=_refresh_before(now, sample_interval_seconds))
    if plan.release:  # the rule shared with prefect-ecs-worker; ``now`` was taken before the runs were read
        check = check_releases(plan.release, known, protected, runs_read_at=now)
        plan = replace(plan, release=check.release,
                       protected_after=plan.protected_after | (frozenset(plan.release) - frozenset(check.release)))
    return _apply(counted, service, ledger, plan, protected, sample_interval_seconds, apply)


def hold(ecs: EcsTaskClient, service: ServiceKey, ledger: ProtectionLedger, *, now: datetime,
         sample_interval_seconds: int, apply: bool = True) -> ServiceProtection:
    """Keep the service's protected tasks protected while its runs cannot be read (a Prefect outage, its
    queues unread): refresh what would expire before the next sample, release nothing, name no orphan.

    Protection then lasts as long as the publisher runs; if it stops too, it lapses within
    :func:`protection_minutes` of the last refresh. The tasks it keeps are those the ledger knows
    protected, or on a cold container those GetTaskProtection reports protected.
    """
    cluster, name = service
    known = ledger.known(service)
    if known is not None and not known:
        return ServiceProtection(protected=0, held=True)  # nothing protected: nothing to keep
    counted = CountingEcs(ecs)
    try:
        live = list_service_tasks(counted, cluster, name)
        protected = read_protection(counted, cluster, live) if known is None else {
            t: until for t, until in known.items() if t in live}
    except Exception as exc:  # botocore's errors share no useful base beyond this
        return ServiceProtection(errors=(f"reading the tasks of ECS service {cluster}/{name}: {exc}",),
                                 calls=counted.calls, held=True)
    plan = plan_hold(ServiceTasks(live, protected), refresh_before=_refresh_before(now, sample_interval_seconds))
    return replace(_apply(counted, service, ledger, plan, protected, sample_interval_seconds, apply), held=True)


def _refresh_before(now: datetime, sample_interval_seconds: int) -> datetime:
    return now + timedelta(seconds=sample_interval_seconds) + REFRESH_MARGIN


def _apply(counted: CountingEcs, service: ServiceKey, ledger: ProtectionLedger, plan: ProtectionPlan,
           protected: dict[str, datetime], sample_interval_seconds: int, apply: bool) -> ServiceProtection:
    """Carry out ``plan`` (or, ``apply`` False, only say what it would do) and record what is protected after."""
    if not apply:
        return ServiceProtection(orphaned=plan.orphaned, protected=len(plan.protected_after), protect=plan.protect,
                                 release=plan.release, calls=counted.calls)
    update = update_protection(counted, service[0], protect=plan.protect, release=plan.release,
                               minutes=protection_minutes(sample_interval_seconds))
    after = {t: until for t, until in protected.items() if t not in update.released} | update.protected
    ledger.record(service, after)
    return ServiceProtection(orphaned=plan.orphaned, protected=len(after), protect=tuple(sorted(update.protected)),
                             release=tuple(sorted(update.released)), errors=update.failures,
                             calls=counted.calls)
