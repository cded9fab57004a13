"""The publisher under faults, against a real Prefect 3.x server (and a fault proxy where the server
cannot produce the fault itself).

One backlog, six pools with a known backlog each, is built once. Each test
breaks something, runs one tick with a short deadline and checks, from what
reached CloudWatch (moto) and the log:

- the run ended within its deadline (measured);
- nothing false was published: a queue that could not be read has NO datum at
  all in CloudWatch (never a 0), and neither has the ECS service that depends on it;
- every other queue and service was published with its true values;
- ``QueueReadErrors`` counts the failures and the log gives the cause.

The outcomes are summarized in docs/faults.md.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

import pytest

from harness.backlog import BacklogClient, Target
from harness.fault_proxy import Delay, Drop, FaultProxy, Hang, Respond, Rule, for_queues, path_is
from harness.prefect_server import PrefectServer, free_port
from prefect_backlog.config import Config, parse_config
from prefect_backlog.prefect_api import PrefectClient
from prefect_backlog.prefect_api.transport import MAX_ATTEMPTS, READ_TIMEOUT_SECONDS
from prefect_backlog.report import TickReport
from prefect_backlog.tick import run_tick
from tests.support.moto_aws import PUBLISHER

if TYPE_CHECKING:
    from tests.support.moto_aws import MotoAws
    from tests.support.publisher_log import LogRecords

pytestmark = pytest.mark.integration

DEADLINE = 15.0  # the client's read deadline in these tests (the Lambda gives it ~47 s)
OVERRUN = 1.5  # what the tick may take past the read deadline: ECS + PutMetricData on moto
CLUSTER = "prefect-faults"
POOLS = 6
LATE_AGE = timedelta(minutes=5)
HTML = "<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in</body></html>"


@dataclass(frozen=True)
class Fleet:
    """Pool i (0..5) has queue ``default`` with i+1 Late runs, 1 overdue Scheduled and 1 Running run,
    on ECS service ``svc-i``; pool 0 also has an empty ``gpu`` queue on ``svc-0``."""

    server: PrefectServer
    client: BacklogClient
    suffix: str
    targets: list[Target]  # [pool0/default, ..., pool5/default, pool0/gpu]
    since: float  # time.time() when its runs began to be created (Late ages grow from there)

    def pool(self, i: int) -> str:
        return self.targets[i].pool

    def queue_ids(self, i: int) -> list[str]:
        return [t.queue_id for t in self.targets if t.pool == self.pool(i)]

    def context(self, api_url: str, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        queues = [{"workPool": t.pool, "workQueue": t.queue, "cluster": CLUSTER, "service": f"svc-{i % POOLS}",
                   "maxCapacity": 10, "targetBacklogPerTask": 2, "runsInWorkerTask": True}
                  for i, t in enumerate(self.targets)]
        return {"prefectApiUrl": api_url, "stackName": PUBLISHER, "queues": queues + (extra or [])}

    def config(self, api_url: str, extra: list[dict[str, Any]] | None = None) -> Config:
        return parse_config(self.context(api_url, extra))


@pytest.fixture(scope="module")
def fleet(prefect3_server: PrefectServer) -> Fleet:
    c = BacklogClient(prefect3_server.api_url)
    s = uuid.uuid4().hex[:8]
    since = time.time()
    targets = [c.target(f"flt{i}-{s}", "default") for i in range(POOLS)]
    for i, t in enumerate(targets):
        for _ in range(i + 1):
            c.late_run(t.deployment_id, LATE_AGE)
        c.overdue_scheduled_run(t.deployment_id, timedelta(minutes=1))
        c.running_run(t.deployment_id)
    targets.append(c.target(targets[0].pool, "gpu"))
    return Fleet(prefect3_server, c, s, targets, since)


@pytest.fixture
def services(aws: MotoAws) -> MotoAws:
    for i in range(POOLS):
        aws.service(CLUSTER, f"svc-{i}", 1)
    return aws


@pytest.fixture
def proxy(fleet: Fleet) -> Iterator[FaultProxy]:
    with FaultProxy(fleet.server.base_url) as running:
        yield running


@dataclass
class Outcome:
    report: TickReport
    seconds: float


def run(config: Config, aws: MotoAws, client: PrefectClient | None = None) -> Outcome:
    started = time.monotonic()
    client = client or PrefectClient(config.api_url, deadline=started + DEADLINE)
    report = run_tick(config, client, ecs=aws.ecs, cloudwatch=aws.cloudwatch, now=datetime.now(UTC))
    return Outcome(report, time.monotonic() - started)


def check(outcome: Outcome, aws: MotoAws, fleet: Fleet, log: LogRecords, *, failed: set[int], cause: str,
          extra_failed: int = 0) -> None:
    """Pools in ``failed`` published nothing (nor did their services) and the log says ``cause``; every
    other pool published its true backlog."""
    print(f"FAULT-OUTCOME {os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}: {outcome.seconds:.1f}s "
          f"whole={outcome.report.whole_failure!r} causes={sorted(set(log.causes().values()))!r}")
    assert outcome.seconds <= DEADLINE + OVERRUN, f"the run took {outcome.seconds:.1f}s"
    ok_pools = set(range(POOLS)) - failed
    for i in failed:
        for t in fleet.targets:
            if t.pool == fleet.pool(i):
                assert aws.nothing_for_queue(t.pool, t.queue), (t.pool, t.queue, aws.queue(t.pool, t.queue))
        assert aws.metrics_with(ClusterName=CLUSTER, ServiceName=f"svc-{i}") == []
    for i in ok_pools:
        got = aws.queue(fleet.pool(i), "default")
        assert (got["LateFlowRuns"], got["DueFlowRuns"], got["RunningFlowRuns"], got["PendingFlowRuns"],
                got["QueuePaused"]) == (i + 1, i + 2, 1, 0, 0), (i, got)
        age = got["OldestLateRunAgeSeconds"]
        late_age = LATE_AGE.total_seconds()
        assert age is not None and late_age <= age <= late_age + (time.time() - fleet.since) + 5, age
        demand = (i + 2) + 1  # due + running (runs live in the worker task); pool 0's gpu is empty
        assert aws.value("DemandFlowRuns", ClusterName=CLUSTER, ServiceName=f"svc-{i}") == demand
        assert aws.value("BacklogPerTask", ClusterName=CLUSTER, ServiceName=f"svc-{i}") == demand / 1  # 1 desired
    if 0 in ok_pools:
        assert aws.queue(fleet.pool(0), "gpu")["DueFlowRuns"] == 0  # a true zero, read
    failed_queues = sum(1 for t in fleet.targets if t.pool in {fleet.pool(i) for i in failed}) + extra_failed
    health = aws.health()
    assert health["QueueReadErrors"] == failed_queues, health
    assert health["QueuesRead"] == len(fleet.targets) + extra_failed - failed_queues, health
    causes = log.causes()
    assert len(causes) == failed_queues, causes
    assert all(cause in c for c in causes.values()), causes
    assert outcome.report.queue_errors == failed_queues


# --- the server itself ---------------------------------------------------------------------------


def test_server_down(fleet: Fleet, services: MotoAws, publisher_log: LogRecords) -> None:
    """Nothing listens at the configured URL: a whole failure, reported fast, no queue data."""
    outcome = run(fleet.config(f"http://127.0.0.1:{free_port()}/api"), services)
    assert outcome.report.whole_failure and "could not look up the work queues" in outcome.report.whole_failure
    check(outcome, services, fleet, publisher_log, failed=set(range(POOLS)), cause="connection failed")
    assert outcome.seconds < 6  # 4 attempts with backoff, not the whole deadline


class StopsServerAfterLookup(PrefectClient):
    """Stops the real server once the queues are resolved: it dies between the lookup and the run reads."""

    def __init__(self, server: PrefectServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server = server

    def resolve_queues(self, queues: Any) -> Any:
        resolved = super().resolve_queues(queues)
        self.server.stop()
        return resolved


def test_server_stopped_mid_run(fleet: Fleet, services: MotoAws, publisher_log: LogRecords) -> None:
    config = fleet.config(fleet.server.api_url)
    started = time.monotonic()
    client = StopsServerAfterLookup(fleet.server, config.api_url, deadline=started + DEADLINE)
    try:
        outcome = run(config, services, client)
    finally:
        fleet.server.start()  # same port and database, for the tests after this one
    assert outcome.report.whole_failure and "no configured queue could be read" in outcome.report.whole_failure
    check(outcome, services, fleet, publisher_log, failed=set(range(POOLS)), cause="connection failed")


def test_queue_deleted_after_deploy(fleet: Fleet, services: MotoAws, publisher_log: LogRecords) -> None:
    """The configured queue is gone: an error for that queue (and its service), never a 0; the rest go on."""
    c = fleet.client
    doomed = c.target(fleet.pool(1), f"doomed-{uuid.uuid4().hex[:6]}")
    c.late_run(doomed.deployment_id)
    extra = [{"workPool": doomed.pool, "workQueue": doomed.queue, "cluster": CLUSTER, "service": "svc-doomed",
              "maxCapacity": 2}]
    services.service(CLUSTER, "svc-doomed", 0)
    config = fleet.config(fleet.server.api_url, extra)
    c.delete_queue(doomed.pool, doomed.queue)

    outcome = run(config, services)
    assert outcome.report.whole_failure is None
    check(outcome, services, fleet, publisher_log, failed=set(), cause=f"no work queue '{doomed.queue}'",
          extra_failed=1)
    assert services.nothing_for_queue(doomed.pool, doomed.queue)
    assert services.metrics_with(ClusterName=CLUSTER, ServiceName="svc-doomed") == []
    assert services.value("ServiceReadErrors", Publisher=PUBLISHER) == 1


def test_pool_less_queue_name_in_several_pools(fleet: Fleet, services: MotoAws, publisher_log: LogRecords) -> None:
    """``default`` without workPool exists in every pool: an error naming the pools, never a guess or a 0."""
    extra = [{"workQueue": "gpu", "cluster": CLUSTER, "service": "svc-ambiguous", "maxCapacity": 2}]
    fleet.client.create_queue(fleet.pool(3), "gpu")  # now in pools 0 and 3
    services.service(CLUSTER, "svc-ambiguous", 0)
    outcome = run(fleet.config(fleet.server.api_url, extra), services)
    (label, cause), = publisher_log.causes().items()
    assert label.endswith(" gpu (any pool)") and "exists in several pools" in cause
    assert fleet.pool(0) in cause and fleet.pool(3) in cause
    check(outcome, services, fleet, publisher_log, failed=set(), cause="exists in several pools", extra_failed=1)
    assert services.metrics_with(ClusterName=CLUSTER, ServiceName="svc-ambiguous") == []


# --- through the fault proxy ---------------------------------------------------------------------


def test_response_hangs_beyond_the_read_timeout(fleet: Fleet, proxy: FaultProxy, services: MotoAws,
                                                publisher_log: LogRecords) -> None:
    proxy.add(Rule(for_queues(fleet.queue_ids(2)), Hang(), name="hang"))
    outcome = run(fleet.config(proxy.api_url), services)
    assert outcome.seconds >= READ_TIMEOUT_SECONDS  # it did wait for the read timeout
    check(outcome, services, fleet, publisher_log, failed={2}, cause="timed out")
    assert len(proxy.handled_by("hang")) >= 2  # retried within the deadline


def test_one_slow_pool_among_many(fleet: Fleet, proxy: FaultProxy, services: MotoAws,
                                  publisher_log: LogRecords) -> None:
    """One pool answers after 6 s (inside the read timeout): everything is published, and the other pools'
    reads are not queued behind it."""
    proxy.add(Rule(for_queues(fleet.queue_ids(3)), Delay(6.0), name="slow"))
    started = time.monotonic()
    outcome = run(fleet.config(proxy.api_url), services)
    check(outcome, services, fleet, publisher_log, failed=set(), cause="")
    assert outcome.seconds >= 6
    others = [s.finished - started for s in proxy.seen
              if path_is("/flow_runs/filter")(s.request) and s.rule is None and s.finished is not None]
    assert others and max(others) < 4, others


def test_persistent_500_for_one_pool(fleet: Fleet, proxy: FaultProxy, services: MotoAws,
                                     publisher_log: LogRecords) -> None:
    proxy.add(Rule(for_queues(fleet.queue_ids(1)), Respond(500, '{"detail": "Internal Server Error"}'), name="500"))
    outcome = run(fleet.config(proxy.api_url), services)
    check(outcome, services, fleet, publisher_log, failed={1},
          cause=f"HTTP 500 from 127.0.0.1:{proxy.port}, gave up after {MAX_ATTEMPTS}")
    assert len(proxy.handled_by("500")) == 2 * MAX_ATTEMPTS  # both reads of the pool, each retried


def test_transient_500s_are_retried(fleet: Fleet, proxy: FaultProxy, services: MotoAws,
                                    publisher_log: LogRecords) -> None:
    proxy.add(Rule(for_queues(fleet.queue_ids(1)), Respond(500, "oops", content_type="text/plain"),
                   times=2, name="500"))
    proxy.add(Rule(path_is("/work_queues/filter"), Respond(503, ""), times=1, name="503"))
    outcome = run(fleet.config(proxy.api_url), services)
    check(outcome, services, fleet, publisher_log, failed=set(), cause="")
    assert len(proxy.handled_by("500")) == 2 and len(proxy.handled_by("503")) == 1


def test_429_with_retry_after_is_honoured(fleet: Fleet, proxy: FaultProxy, services: MotoAws,
                                          publisher_log: LogRecords) -> None:
    proxy.add(Rule(path_is("/work_queues/filter"), Respond(429, '{"detail": "slow down"}', {"Retry-After": "2"}),
                   times=1, name="429"))
    outcome = run(fleet.config(proxy.api_url), services)
    check(outcome, services, fleet, publisher_log, failed=set(), cause="")
    (limited,) = proxy.handled_by("429")
    retry = next(s for s in proxy.seen if path_is("/work_queues/filter")(s.request) and s.rule is None)
    assert limited.finished is not None and retry.started - limited.finished >= 1.9  # as told, not the backoff


def test_429_with_an_http_date_retry_after(fleet: Fleet, proxy: FaultProxy, services: MotoAws,
                                           publisher_log: LogRecords) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    proxy.add(Rule(for_queues(fleet.queue_ids(4)), Respond(429, "", {"Retry-After": when}), times=1, name="429"))
    outcome = run(fleet.config(proxy.api_url), services)
    check(outcome, services, fleet, publisher_log, failed=set(), cause="")
    assert outcome.seconds >= 1


def test_429_asking_to_wait_past_the_deadline(fleet: Fleet, proxy: FaultProxy, services: MotoAws,
                                              publisher_log: LogRecords) -> None:
    """Retry-After 30 s with 15 s left: give up on that pool at once rather than run late."""
    proxy.add(Rule(for_queues(fleet.queue_ids(4)), Respond(429, "", {"Retry-After": "30"}), name="429"))
    outcome = run(fleet.config(proxy.api_url), services)
    check(outcome, services, fleet, publisher_log, failed={4}, cause="no time is left to retry after 30.0s")
    assert outcome.seconds < 5


@pytest.mark.parametrize("header", ["soon", "Wed, 21 Oct 2015 07:28:00 -0000"], ids=["garbage", "naive-date"])
def test_429_with_a_malformed_retry_after(header: str, fleet: Fleet, proxy: FaultProxy, services: MotoAws,
                                          publisher_log: LogRecords) -> None:
    """A Retry-After the client cannot parse should be treated as absent: back off and retry."""
    proxy.add(Rule(path_is("/work_queues/filter"), Respond(429, "", {"Retry-After": header}), times=1, name="429"))
    outcome = run(fleet.config(proxy.api_url), services)
    check(outcome, services, fleet, publisher_log, failed=set(), cause="")


def test_401_half_way_through(fleet: Fleet, proxy: FaultProxy, services: MotoAws,
                              publisher_log: LogRecords) -> None:
    """The credential stops working between the lookup and the run reads: nothing about queues is published."""
    proxy.add(Rule(for_queues(fleet.queue_ids(0)), Respond(401, '{"exception_message": "Unauthorized"}'),
                   name="401"))
    outcome = run(fleet.config(proxy.api_url), services)
    assert outcome.report.whole_failure and "HTTP 401 from 127.0.0.1" in outcome.report.whole_failure
    check(outcome, services, fleet, publisher_log, failed=set(range(POOLS)), cause="HTTP 401")
    assert len(proxy.handled_by("401")) <= 2  # not retried


@pytest.mark.parametrize(("action", "cause", "on_lookup"), [
    (Respond(200, HTML, content_type="text/html; charset=utf-8"), "not JSON (text/html; charset=utf-8)", False),
    (Respond(502, HTML, content_type="text/html"), "HTTP 502 from 127.0.0.1", False),
    (Respond(200, '{"detail": "not a list"}'), "expected a JSON list, got dict", False),
    (Drop(), "connection failed", False),
    (Respond(200, HTML, content_type="text/html"), "not JSON (text/html)", True),
], ids=["html-200", "html-502", "json-wrong-shape", "connection-dropped", "html-on-queue-lookup"])
def test_answers_that_are_not_the_api(action: Respond | Drop, cause: str, on_lookup: bool, fleet: Fleet,
                                      proxy: FaultProxy, services: MotoAws, publisher_log: LogRecords) -> None:
    """A login page, a load balancer's error page, JSON of the wrong shape, a dropped connection: for pool 5's
    run reads (that pool is lost) or for the queue lookup (everything is)."""
    match = path_is("/work_queues/filter") if on_lookup else for_queues(fleet.queue_ids(5))
    proxy.add(Rule(match, action, name="fault"))
    outcome = run(fleet.config(proxy.api_url), services)
    if on_lookup:
        assert outcome.report.whole_failure and cause in outcome.report.whole_failure
    check(outcome, services, fleet, publisher_log, failed=set(range(POOLS)) if on_lookup else {5}, cause=cause)
