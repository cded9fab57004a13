"""No run lost (#23) with REAL Prefect servers and, on 3.x, REAL Process workers running real flows.

- A flow that fails once and retries after a delay: Prefect retries it in the
  same process, so during the delay the run is SCHEDULED/AwaitingRetry and its
  engine process is alive in the worker's task. That task must stay protected
  and the run must be its service's demand (not a submit-only service's).
- ``orphanedRuns: "reschedule"``: a worker's whole process tree is SIGKILLed
  (its ECS task dies; the ECS stand-in then reports the task STOPPED); after
  two samples its run is Scheduled again, and a second, live worker runs it.
  The live task's run stays Running, untouched.
- On 2.18 (no worker labels): a REAL 2.18 agent runs the same flow; during the
  delay the run is AwaitingRetry with the engine alive as the agent's child
  process, and it is counted as the agent service's in-flight demand (no task
  can be protected on 2.x). A run put in AwaitingRetry through the API is read
  with the in-flight states (the ``or_`` state filter) on every version, and
  the forced Scheduled state that rescheduling writes is accepted as on 3.x.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.backlog import BacklogClient, iso
from harness.fake_ecs import FakeEcs
from harness.prefect_server import PrefectServer
from harness.process_worker import (
    ProcessWorker,
    create_local_deployment,
    ecs_worker_name,
    fake_task_id,
    scheduled_now,
    wait_for_run,
    wait_for_state,
)
from harness.processes import prefect_environment
from prefect_backlog.config import Config, parse_config
from prefect_backlog.prefect_api import PrefectClient
from prefect_backlog.prefect_api.queries import reschedule_if_orphaned
from prefect_backlog.report import TickReport
from prefect_backlog.tick import WarmState, run_tick
from tests.integration.conftest import workers_per_queue
from tests.support.moto_aws import PUBLISHER

if TYPE_CHECKING:
    from tests.support.moto_aws import MotoAws

pytestmark = pytest.mark.integration

CLUSTER = "prefect-it"
RETRY_DELAY_SECONDS = 45

# Fails on its first attempt (it leaves a marker next to itself), succeeds on the retry.
FLAKY_PY = f'''\
import os
from pathlib import Path

from prefect import flow

MARKER = Path(__file__).with_name("attempted")


@flow(name="flaky", retries=1, retry_delay_seconds={RETRY_DELAY_SECONDS})
def flaky() -> str:
    print(f"[harness] flaky attempt pid={{os.getpid()}}", flush=True)
    if not MARKER.exists():
        MARKER.write_text("1")
        raise RuntimeError("first attempt fails on purpose")
    return "retried"
'''


def tick(config: Config, ecs: FakeEcs, aws: MotoAws, warm: WarmState) -> TickReport:
    client = PrefectClient(config.api_url, deadline=time.monotonic() + 30, depth_memory=warm.depth)
    return run_tick(config, client, ecs=ecs, cloudwatch=aws.cloudwatch, now=datetime.now(UTC), warm=warm)


def entry(pool: str, queue: str, service: str, in_task: bool) -> dict[str, Any]:
    return {"workPool": pool, "workQueue": queue, "cluster": CLUSTER, "service": service, "maxCapacity": 4,
            "targetBacklogPerTask": 1, "runsInWorkerTask": in_task}


@pytest.fixture(params=["3", "3.9"], ids=["prefect3", "prefect39"])
def server3(request: pytest.FixtureRequest, prefect_venv_for: Callable[[str], Path]) -> tuple[PrefectServer, Path]:
    """A 3.8 or 3.9 server, and the venv of the same version for its worker (PrefectServer.version is "3" for
    both)."""
    server: PrefectServer = request.getfixturevalue(f"prefect{request.param.replace('.', '')}_server")
    return server, prefect_venv_for(request.param)


def test_a_run_waiting_to_retry_keeps_its_task_protected_and_is_its_services_demand(
        server3: tuple[PrefectServer, Path], tmp_path: Path, aws: MotoAws) -> None:
    server, venv = server3
    c = BacklogClient(server.api_url)
    pool = f"retry-{fake_task_id()[:8]}"
    c.create_pool(pool, type="process")
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "flaky.py").write_text(FLAKY_PY)
    deployment = create_local_deployment(c, pool, "default", flows, "flaky", filename="flaky.py")
    task, idle = fake_task_id(), fake_task_id()
    ecs = FakeEcs()
    ecs.service(CLUSTER, "process-worker")
    ecs.start_task(CLUSTER, "process-worker", task)
    ecs.start_task(CLUSTER, "process-worker", idle)
    in_task = parse_config({"prefectApiUrl": server.api_url, "stackName": PUBLISHER,
                            "queues": [entry(pool, "default", "process-worker", True)]})
    # The same queue as a submit-only worker's (its runs retry inside their own tasks): not its demand.
    submit_only = parse_config({"prefectApiUrl": server.api_url, "stackName": PUBLISHER,
                                "queues": [entry(pool, "default", "ecs-worker", False)]})
    ecs.service(CLUSTER, "ecs-worker", tasks=1)
    warm, warm_submit = WarmState(), WarmState()
    with ProcessWorker(venv, server.api_url, pool, ecs_worker_name(task), limit=1, query_seconds=1,
                       prefetch_seconds=0) as worker:
        run_id = c.create_run(deployment, scheduled_now())["id"]
        waiting = wait_for_state(c, run_id, "SCHEDULED", "AwaitingRetry", timeout=120)
        assert waiting["labels"].get("prefect.worker.name") == ecs_worker_name(task)
        retry_at = datetime.fromisoformat(waiting["state"]["state_details"]["scheduled_time"].replace("Z", "+00:00"))
        assert retry_at > datetime.now(UTC) + timedelta(seconds=10)  # still inside the delay for the checks below
        assert len(worker.processes()) >= 2  # the worker and the flow's engine, waiting in the task
        worker_version = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import prefect; print(prefect.__version__)"],
            capture_output=True, text=True, check=True).stdout.strip()
        assert worker_version.rsplit(".", 1)[0] == str(c.get("/admin/version")).rsplit(".", 1)[0]  # same 3.x

        report = tick(in_task, ecs, aws, warm)
        (queue,) = report.queues
        assert queue.backlog is not None
        assert (queue.backlog.retrying, queue.backlog.due, queue.backlog.late) == (1, 0, 0)
        assert report.services[0].demand == 1
        assert ecs.protected(CLUSTER, "process-worker") == {task}  # the idle task is not
        submit = tick(submit_only, ecs, aws, warm_submit)
        assert submit.services[0].demand == 0
        assert ecs.protected(CLUSTER, "ecs-worker") == set()

        assert c.get_run(run_id)["state"]["name"] == "AwaitingRetry"  # still in the delay after both samples
        again = tick(in_task, ecs, aws, warm)
        assert ecs.protected(CLUSTER, "process-worker") == {task} and again.services[0].demand == 1

        done = wait_for_state(c, run_id, "COMPLETED", timeout=RETRY_DELAY_SECONDS + 90)
        assert done["run_count"] == 2
        attempts = re.findall(r"flaky attempt pid=(\d+)", worker.read_log())
        assert len(attempts) == 2 and len(set(attempts)) == 1  # the retry ran in the same engine process
        after = tick(in_task, ecs, aws, warm)
        assert ecs.protected(CLUSTER, "process-worker") == set() and after.services[0].demand == 0


def test_on_2_18_an_agents_run_waiting_to_retry_is_its_services_demand(
        prefect2_server: PrefectServer, prefect_venv_for: Callable[[str], Path], tmp_path: Path, aws: MotoAws) -> None:
    """A real `prefect agent start` (2.18, Process infrastructure by default): the retry waits in the engine
    process it started. 2.x runs carry no labels, so the run is demand but no task is protected."""
    venv = prefect_venv_for("2")
    c = BacklogClient(prefect2_server.api_url)
    queue = f"retry-{fake_task_id()[:8]}"
    target = c.agent_target(queue, flow_name="flaky")
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "flaky.py").write_text(FLAKY_PY)
    deployment = create_local_deployment(c, target.pool, queue, flows, "flaky", filename="flaky.py",
                                         name=f"flaky-{queue}")
    home = tmp_path / "agent-home"
    home.mkdir()
    env = prefect_environment(venv, home, PREFECT_API_URL=prefect2_server.api_url, PREFECT_AGENT_QUERY_INTERVAL="2",
                              PREFECT_AGENT_PREFETCH_SECONDS="0")
    env.pop("PYTHONPATH", None)
    with (tmp_path / "agent.log").open("wb") as log:
        agent = subprocess.Popen([str(venv / "bin" / "prefect"), "agent", "start", "-q", queue], env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run_id = c.create_run(deployment, scheduled_now())["id"]
        waiting = wait_for_state(c, run_id, "SCHEDULED", "AwaitingRetry", timeout=120)
        assert "labels" not in waiting  # 2.x: no labels at all
        children = subprocess.run(["ps", "-o", "args=", "--ppid", str(agent.pid)], capture_output=True,
                                  text=True).stdout
        assert "prefect.engine" in children  # the engine waits for the retry inside the agent's task
        ecs = FakeEcs()
        ecs.service(CLUSTER, "agent", tasks=1)
        config = parse_config({"prefectApiUrl": c.api_url, "stackName": PUBLISHER, "queues": [
            {"workQueue": queue, "cluster": CLUSTER, "service": "agent", "maxCapacity": 2, "runsInWorkerTask": True}]})
        report = tick(config, ecs, aws, WarmState())
        (result,) = report.queues
        assert result.backlog is not None, result.error
        assert (result.backlog.retrying, result.backlog.due, result.backlog.late) == (1, 0, 0)
        assert report.services[0].demand == 1
        assert ecs.protected(CLUSTER, "agent") == set()  # nothing names a task on 2.x
        assert c.get_run(run_id)["state"]["name"] == "AwaitingRetry"
        assert wait_for_state(c, run_id, "COMPLETED", timeout=RETRY_DELAY_SECONDS + 90)["run_count"] == 2
        attempts = re.findall(r"flaky attempt pid=(\d+)", (tmp_path / "agent.log").read_text(errors="replace"))
        assert len(attempts) == 2 and len(set(attempts)) == 1  # the retry ran in the same engine process
    finally:
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()


@pytest.fixture
def two_workers(prefect3_server: PrefectServer, prefect_venv_for: Callable[[str], Path], tmp_path: Path,
                ) -> Iterator[tuple[BacklogClient, str, Path, dict[str, tuple[str, str, ProcessWorker]]]]:
    venv = prefect_venv_for("3")
    with workers_per_queue(prefect3_server, venv, "rs", tmp_path) as (c, pool, started):
        yield c, pool, venv, started


def test_orphaned_runs_are_rescheduled_after_two_samples_and_run_by_a_live_worker(
        prefect3_server: PrefectServer, two_workers: tuple[BacklogClient, str, Path,
                                                           dict[str, tuple[str, str, ProcessWorker]]],
        aws: MotoAws) -> None:
    c, pool, venv, started = two_workers
    (deployment_a, task_a, _), (deployment_b, task_b, worker_b) = started["a"], started["b"]
    ecs = FakeEcs()
    ecs.service(CLUSTER, "process-worker")
    for task in (task_a, task_b):
        ecs.start_task(CLUSTER, "process-worker", task)
    config = parse_config({"prefectApiUrl": prefect3_server.api_url, "stackName": PUBLISHER,
                           "orphanedRuns": "reschedule",
                           "queues": [entry(pool, queue, "process-worker", True) for queue in ("a", "b")]})
    warm = WarmState()
    live = c.create_run(deployment_a, scheduled_now(), parameters={"seconds": 600})["id"]
    lost = c.create_run(deployment_b, scheduled_now(), parameters={"seconds": 600})["id"]
    for run in (live, lost):
        wait_for_state(c, run, "RUNNING", timeout=120)
    assert tick(config, ecs, aws, warm).services[0].demand == 2

    worker_b.kill()  # the ECS task dies: the worker and its flow process with it
    ecs.stop_task(task_b)
    seen_once = tick(config, ecs, aws, warm)
    assert (seen_once.orphaned, seen_once.rescheduled_orphans) == (1, 0)
    assert seen_once.services[0].demand == 1  # the orphan needs no task
    assert c.get_run(lost)["state"]["type"] == "RUNNING"

    seen_twice = tick(config, ecs, aws, warm)
    assert seen_twice.rescheduled_orphans == 1
    assert seen_twice.services[0].demand == 2  # demand again at once: the live run and the rescheduled one
    state = c.get_run(lost)["state"]
    assert (state["type"], state["name"]) == ("SCHEDULED", "Scheduled")
    assert f"ECS task {task_b}" in (state.get("message") or "")
    assert c.get_run(live)["state"]["type"] == "RUNNING"  # the live task's run: untouched

    after = tick(config, ecs, aws, warm)
    assert after.orphaned == 0 and after.rescheduled_orphans == 0
    (_, queue_b) = after.queues
    assert queue_b.backlog is not None and queue_b.backlog.due == 1

    task_c = fake_task_id()
    ecs.start_task(CLUSTER, "process-worker", task_c)
    with ProcessWorker(venv, prefect3_server.api_url, pool, ecs_worker_name(task_c), limit=1, work_queues=["b"],
                       query_seconds=1, prefetch_seconds=0):
        rerun = wait_for_run(c, lost, lambda r: (r.get("state") or {}).get("type") in ("RUNNING", "COMPLETED"),
                             timeout=120)
        assert rerun["labels"].get("prefect.worker.name") == ecs_worker_name(task_c)  # the live worker runs it
        final = tick(config, ecs, aws, warm)
        assert ecs.protected(CLUSTER, "process-worker") == {task_a, task_c}
        assert final.orphaned == 0 and final.services[0].demand == 2
    assert c.get_run(live)["state"]["type"] == "RUNNING"


def test_awaiting_retry_is_read_in_flight_and_reschedule_writes_are_accepted_on_every_version(
        prefect_server: PrefectServer, client_for: Callable[[PrefectServer], BacklogClient], aws: MotoAws) -> None:
    """REST only (no worker): on 2.18 runs carry no labels, so an AwaitingRetry run counts as an agent's."""
    c = client_for(prefect_server)
    target = c.target(f"ar-{fake_task_id()[:8]}", "q")
    waiting = c.create_run(target.deployment_id, scheduled_now())["id"]
    later = iso(datetime.now(UTC) + timedelta(minutes=5))
    c.post(f"/flow_runs/{waiting}/set_state", {"state": {"type": "SCHEDULED", "name": "AwaitingRetry", "state_details":
                                                         {"scheduled_time": later}}, "force": True})
    overdue = c.create_run(target.deployment_id, scheduled_now())["id"]  # past its retry time: in flight still
    c.post(f"/flow_runs/{overdue}/set_state", {"state": {"type": "SCHEDULED", "name": "AwaitingRetry", "state_details":
                                                         {"scheduled_time": iso(datetime.now(UTC))}}, "force": True})
    running = c.running_run(target.deployment_id)["id"]
    ecs = FakeEcs()
    for service, in_task in (("process-worker", True), ("ecs-worker", False)):
        ecs.service(CLUSTER, service)
        config = parse_config({"prefectApiUrl": c.api_url, "stackName": PUBLISHER,
                               "queues": [{**entry(target.pool, "q", service, in_task), "taskProtection": False}]})
        report = tick(config, ecs, aws, WarmState())
        (queue,) = report.queues
        assert queue.backlog is not None, queue.error
        assert (queue.backlog.retrying, queue.backlog.running, queue.backlog.due, queue.backlog.late) == (
            (2, 1, 0, 0) if not prefect_server.version.startswith("3") else (0, 1, 1, 0))
        # 3.x: built through the API, no worker labelled them: due once their time has passed (one is)
        expected = ({"process-worker": 3, "ecs-worker": 0} if not prefect_server.version.startswith("3")
                    else {"process-worker": 2, "ecs-worker": 1})
        assert report.services[0].demand == expected[service]

    # What orphanedRuns "reschedule" writes: forced back to Scheduled, due now, with its message.
    client = PrefectClient(c.api_url, deadline=time.monotonic() + 30)
    now = datetime.now(UTC)
    assert reschedule_if_orphaned(client.http, running, lambda run: run.state_type == "RUNNING", "task x died", now)
    state = c.get_run(running)["state"]
    assert (state["type"], state["name"], state["message"]) == ("SCHEDULED", "Scheduled", "task x died")
    assert abs((datetime.fromisoformat(state["state_details"]["scheduled_time"].replace("Z", "+00:00"))
                - now).total_seconds()) < 1
    assert not reschedule_if_orphaned(client.http, running, lambda run: run.state_type == "RUNNING", "again", now)
