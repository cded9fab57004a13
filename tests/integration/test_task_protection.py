"""Task protection with REAL Prefect 3 Process workers running real flows on a real server.

Two workers, each named after a (fake) ECS task ID as the README tells users
to start them, poll one queue each of a process pool and run real flows from
local source. The publisher's tick reads those runs from the server and acts
on an ECS stand-in (``harness.fake_ecs.py``: moto implements no
task-level ECS call) whose service holds the two workers' tasks and an idle
one; CloudWatch is moto. Then one worker's whole process tree is SIGKILLed,
as when its ECS task dies, and its run, Running forever on the server, must be
reported orphaned, leave demand, and (opted in) end Crashed on the server.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.backlog import BacklogClient
from harness.fake_ecs import FakeEcs
from harness.prefect_server import PrefectServer
from harness.process_worker import (
    ProcessWorker,
    scheduled_now,
    wait_for_state,
)
from prefect_backlog.config import Config, parse_config
from prefect_backlog.prefect_api import PrefectClient
from prefect_backlog.report import TickReport
from prefect_backlog.tick import WarmState, run_tick
from tests.integration.conftest import workers_per_queue
from tests.support.moto_aws import PUBLISHER

if TYPE_CHECKING:
    from tests.support.moto_aws import MotoAws

pytestmark = pytest.mark.integration

CLUSTER, SERVICE = "prefect-it", "process-worker"


def tick(config: Config, ecs: FakeEcs, aws: MotoAws, warm: WarmState) -> TickReport:
    client = PrefectClient(config.api_url, deadline=time.monotonic() + 30, depth_memory=warm.depth)
    return run_tick(config, client, ecs=ecs, cloudwatch=aws.cloudwatch, now=datetime.now(UTC), warm=warm)


@pytest.fixture
def workers(prefect3_server: PrefectServer, prefect_venv_for: Callable[[str], Path], tmp_path: Path,
            ) -> Iterator[tuple[BacklogClient, str, dict[str, tuple[str, str, ProcessWorker]]]]:
    """Pool ``tp-<id>`` with queues a and b, a deployment for each, and a worker per queue named after its task."""
    with workers_per_queue(prefect3_server, prefect_venv_for("3"), "tp", tmp_path) as made:
        yield made


def test_busy_tasks_are_protected_released_when_idle_and_an_orphan_is_reported_then_crashed(
        prefect3_server: PrefectServer, workers: tuple[BacklogClient, str, dict[str, tuple[str, str, ProcessWorker]]],
        aws: MotoAws) -> None:
    c, pool, started = workers
    (deployment_a, task_a, _), (deployment_b, task_b, worker_b) = started["a"], started["b"]
    ecs = FakeEcs()
    ecs.service(CLUSTER, SERVICE)
    for task in (task_a, task_b):
        ecs.start_task(CLUSTER, SERVICE, task)
    idle = ecs.start_task(CLUSTER, SERVICE)
    ecs.desired[(CLUSTER, SERVICE)] = 3
    config = parse_config({"prefectApiUrl": prefect3_server.api_url, "stackName": PUBLISHER, "crashOrphanedRuns": True,
                           "queues": [{"workPool": pool, "workQueue": queue, "cluster": CLUSTER, "service": SERVICE,
                                       "maxCapacity": 4, "targetBacklogPerTask": 1, "runsInWorkerTask": True}
                                      for queue in ("a", "b")]})
    warm = WarmState()

    short = c.create_run(deployment_a, scheduled_now(), parameters={"seconds": 8})["id"]
    long = c.create_run(deployment_b, scheduled_now(), parameters={"seconds": 600})["id"]
    for run in (short, long):
        wait_for_state(c, run, "RUNNING", timeout=120)
    busy = tick(config, ecs, aws, warm)
    assert ecs.protected(CLUSTER, SERVICE) == {task_a, task_b}  # within one sample of the runs starting
    (service,) = busy.services
    assert service.protection is not None and service.protection.protected == 2 and service.demand == 2
    assert idle not in ecs.protected(CLUSTER, SERVICE)

    wait_for_state(c, short, "COMPLETED", timeout=120)
    after_short = tick(config, ecs, aws, warm)
    assert ecs.protected(CLUSTER, SERVICE) == {task_b}  # task a holds nothing now: released
    assert after_short.services[0].protection.release == (task_a,)  # type: ignore[union-attr]

    worker_b.kill()  # the ECS task dies: the worker and its flow process with it
    ecs.stop_task(task_b)
    assert c.get_run(long)["state"]["type"] == "RUNNING"  # the server cannot know
    seen_once = tick(config, ecs, aws, warm)
    queue_b = seen_once.queues[1]
    assert queue_b.backlog is not None and (queue_b.backlog.running, queue_b.backlog.orphaned) == (1, 1)
    assert seen_once.services[0].demand == 0  # the orphan needs no task
    assert seen_once.orphaned == 1 and seen_once.crashed == 0  # crashed only when seen twice in a row
    assert c.get_run(long)["state"]["type"] == "RUNNING"

    seen_twice = tick(config, ecs, aws, warm)
    assert seen_twice.crashed == 1
    crashed = c.get_run(long)["state"]
    assert (crashed["type"], crashed["name"]) == ("CRASHED", "Crashed")
    assert "ECS task of worker" in (crashed.get("message") or "")
    after = tick(config, ecs, aws, warm)
    assert after.orphaned == 0 and after.services[0].demand == 0
