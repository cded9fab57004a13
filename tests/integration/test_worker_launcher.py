"""``prefect-ecs-worker``, installed with ``pip install <checkout>/worker``, as a real Prefect 3 Process worker.

The launcher is pip-installed from this checkout (``--target`` a temporary folder, with the Prefect 3 venv's
own pip, so nothing is added to that venv) and started as a user would start it in an ECS task, with ECS's
two endpoints (task metadata v4, the agent's task protection) served by a stand-in on loopback
(``harness.ecs_endpoints``) that records every call with its time. A real 3.8 server hands it a real flow
run whose code, first thing, writes down when it started.

What must hold: the worker is named ``ecs-<task id>`` from the metadata's TaskARN (the form
``prefect_backlog.protection.WORKER_NAME`` maps back to the task); its run carries that name in
``prefect.worker.name``; protection is enabled after the claim (the run's Pending state) and before the
flow's code; it is refreshed, never released, while the run is in flight; a failing agent does not stop the
run and is logged; outside ECS the launcher refuses to start.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from harness.backlog import BacklogClient, parse_time
from harness.ecs_endpoints import EcsEndpoints
from harness.prefect_server import PrefectServer
from harness.process_worker import (
    ProcessWorker,
    create_local_deployment,
    fake_task_id,
    scheduled_now,
    wait_for_state,
)
from prefect_backlog.protection import task_id_of
from tests.support.moto_aws import MotoAws

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = "prefect-ecs-worker"

STAMPED_PY = '''\
"""A flow whose code first writes down when it started (time.time(), the same clock as the stand-in's)."""
import json
import time

from prefect import flow


@flow(name="stamped")
def stamped(path: str, seconds: float = 6.0) -> float:
    started = time.time()
    with open(path, "w") as f:
        json.dump({"started": started}, f)
    time.sleep(seconds)
    return started


@flow(name="retried", retries=1, retry_delay_seconds=8)
def retried(path: str) -> str:
    """Fails its first try; Prefect retries it in the same process after 8 s (AwaitingRetry meanwhile)."""
    import os

    if not os.path.exists(path):
        open(path, "w").close()
        raise RuntimeError("first try fails")
    return "second try"
'''


@pytest.fixture(scope="module")
def launcher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install <checkout>/worker`` with the Prefect 3 venv's pip, into a folder of its own (``--target``):
    what goes into a worker image. Its ``bin/prefect-ecs-worker`` runs on that venv's Python."""
    from tests.integration.conftest import require_venv

    venv = require_venv("3")
    target = tmp_path_factory.mktemp("launcher")
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                           "--disable-pip-version-check", "--target", str(target), str(REPO_ROOT / "worker")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (target / "bin" / LAUNCHER).exists()
    return target


class LauncherWorker(ProcessWorker):
    """``prefect-ecs-worker --pool P --type process [--limit L] [--work-queue Q]``: no ``--name``, the launcher
    names it. ``name`` is what the test expects it to be named (the harness waits for that worker's heartbeat)."""

    def __init__(self, launcher: Path, *args: Any, launcher_args: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.launcher = launcher
        self.launcher_args = launcher_args

    @property
    def executable(self) -> Path:
        return self.launcher / "bin" / LAUNCHER

    def command(self) -> list[str]:
        cmd = [str(self.executable), *self.launcher_args, "--pool", self.pool, "--type", "process"]
        if self.limit is not None:
            cmd += ["--limit", str(self.limit)]
        for queue in self.work_queues:
            cmd += ["--work-queue", queue]
        return cmd

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = str(self.launcher)  # where pip --target put the package
        return env


def write_stamped_flow(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "stamped.py").write_text(STAMPED_PY)
    return directory


def states_of(c: BacklogClient, run_id: str) -> list[dict[str, Any]]:
    states = c.get(f"/flow_run_states/?flow_run_id={run_id}")
    return sorted(states, key=lambda s: s["timestamp"])


def epoch(iso: str) -> float:
    when: datetime = parse_time(iso)
    return when.timestamp()


@pytest.fixture
def pool(prefect3_server: PrefectServer, tmp_path: Path) -> tuple[BacklogClient, str, str, Path]:
    c = BacklogClient(prefect3_server.api_url)
    name = f"launch-{fake_task_id()[:8]}"
    c.create_pool(name, type="process")
    flows = write_stamped_flow(tmp_path / "flows")
    deployment = create_local_deployment(c, name, "default", flows, "stamped", filename="stamped.py",
                                         name=f"stamped-{name}")
    return c, name, deployment, tmp_path


def start_launcher(launcher_dir: Path, server: PrefectServer, pool_name: str, endpoints: EcsEndpoints,
                   **settings: str) -> LauncherWorker:
    from tests.integration.conftest import require_venv

    task_id = endpoints.task_arn.rsplit("/", 1)[1]
    worker = LauncherWorker(launcher_dir, require_venv("3"), server.api_url, pool_name, f"ecs-{task_id}", limit=1,
                            query_seconds=1, prefetch_seconds=0,
                            extra_env={**endpoints.environment(), **settings})
    return worker.start()


def test_a_real_process_worker_is_named_after_its_task_and_protects_it_from_claim_to_end(
        prefect3_server: PrefectServer, launcher_dir: Path, pool: tuple[BacklogClient, str, str, Path]) -> None:
    c, pool_name, deployment, tmp = pool
    task_id = fake_task_id()
    with EcsEndpoints(task_id) as endpoints:
        worker = start_launcher(launcher_dir, prefect3_server, pool_name, endpoints,
                                PREFECT_ECS_WORKER_REFRESH_SECONDS="2")
        try:
            # online under the task's name (wait_ready looked it up by that name), read from the metadata
            assert worker.server_record() is not None and worker.name == f"ecs-{task_id}"
            assert task_id_of(worker.name) == task_id  # the publisher's own rule maps it back to the task
            assert len(endpoints.metadata_reads()) >= 1
            time.sleep(2)
            assert endpoints.protection_puts() == []  # an idle worker protects nothing

            stamp = tmp / "started.json"
            run_id = c.create_run(deployment, scheduled_now(), parameters={"path": str(stamp), "seconds": 6})["id"]
            wait_for_state(c, run_id, "COMPLETED", timeout=120)
            ended = time.time()
            # the run's process exits a moment after it reported Completed; past that, the worker holds
            # nothing and stops refreshing (every 2 s here): the count of PUTs stays put
            time.sleep(5)
            settled = len(endpoints.protection_puts())
            time.sleep(5)
            puts = endpoints.protection_puts()
            log = worker.read_log()
        finally:
            worker.cleanup(graceful=False)

    run = c.get_run(run_id)
    assert run["labels"]["prefect.worker.name"] == f"ecs-{task_id}", run["labels"]
    started = json.loads(stamp.read_text())["started"]
    pending = next(epoch(s["timestamp"]) for s in states_of(c, run_id) if s["type"] == "PENDING")

    assert puts, log[-4000:]
    first = puts[0]
    assert first.body == {"ProtectionEnabled": True, "ExpiresInMinutes": 5}
    # after the claim (the server accepted Pending; its clock is this machine's), before the flow's code
    assert pending - 0.05 <= first.at < started, (pending, first.at, started)
    # never released: every PUT enables, and while the run was in flight (6 s) it was refreshed
    assert all(p.body["ProtectionEnabled"] is True for p in puts)
    during = [p for p in puts if started <= p.at <= ended]
    assert len(during) >= 2, [(p.at - started) for p in puts]
    # once the run is over the worker leaves the task's protection to the publisher: no more PUTs
    assert len(puts) == settled, [round(p.at - ended, 2) for p in puts]
    assert "Task scale-in protection enabled (claimed flow run" in log


def test_an_agent_that_fails_is_logged_retried_and_the_run_still_runs(
        prefect3_server: PrefectServer, launcher_dir: Path, pool: tuple[BacklogClient, str, str, Path]) -> None:
    c, pool_name, deployment, tmp = pool
    with EcsEndpoints(fake_task_id()) as endpoints:
        worker = start_launcher(launcher_dir, prefect3_server, pool_name, endpoints,
                                PREFECT_ECS_WORKER_REFRESH_SECONDS="30")
        try:
            endpoints.fail_next = 2  # the PUT at the claim and its immediate retry
            stamp = tmp / "started.json"
            run_id = c.create_run(deployment, scheduled_now(), parameters={"path": str(stamp), "seconds": 8})["id"]
            wait_for_state(c, run_id, "COMPLETED", timeout=120)
            puts = endpoints.protection_puts()
            log = worker.read_log()
            address = endpoints.base
        finally:
            worker.cleanup(graceful=False)
    started = json.loads(stamp.read_text())["started"]
    assert len(puts) >= 3, log[-4000:]
    assert puts[0].at < started and puts[1].at < started  # both tried before the flow's code
    assert "retrying now" in log and "NOT protected by this worker yet" in log
    # tried again 5 s later, while the run held the task: the stand-in answers it
    assert any(p.at > puts[1].at + 4 for p in puts[2:]), [(p.at - started) for p in puts]
    assert "Task scale-in protection enabled" in log
    assert "ServerException" in log
    assert address not in log  # the agent's address is never logged


def test_a_run_waiting_to_retry_in_its_process_keeps_its_task_protected(
        prefect3_server: PrefectServer, launcher_dir: Path, pool: tuple[BacklogClient, str, str, Path]) -> None:
    """AwaitingRetry (a Scheduled-type state) with the engine alive in the worker's task: the worker still
    holds the run and refreshes its task's protection through the whole delay."""
    c, pool_name, _, tmp = pool
    flows = tmp / "flows"
    deployment = create_local_deployment(c, pool_name, "default", flows, "retried", filename="stamped.py",
                                         name=f"retried-{pool_name}")
    with EcsEndpoints(fake_task_id()) as endpoints:
        worker = start_launcher(launcher_dir, prefect3_server, pool_name, endpoints,
                                PREFECT_ECS_WORKER_REFRESH_SECONDS="2")
        try:
            run_id = c.create_run(deployment, scheduled_now(), parameters={"path": str(tmp / "tried")})["id"]
            wait_for_state(c, run_id, "COMPLETED", timeout=150)
            puts = endpoints.protection_puts()
            log = worker.read_log()
        finally:
            worker.cleanup(graceful=False)
    states = states_of(c, run_id)
    waiting = next(s for s in states if s["name"] == "AwaitingRetry")
    began = epoch(waiting["timestamp"])
    ended = next(epoch(s["timestamp"]) for s in states if s["type"] == "RUNNING" and epoch(s["timestamp"]) > began)
    assert ended - began >= 6, (began, ended)
    during = [p for p in puts if began < p.at < ended]
    assert len(during) >= 2, ([round(p.at - began, 1) for p in puts], log[-3000:])
    assert all(p.body["ProtectionEnabled"] is True for p in puts)


def test_with_the_publisher_sampling_the_task_stays_protected_from_the_claim_until_the_run_is_over(
        prefect3_server: PrefectServer, launcher_dir: Path, pool: tuple[BacklogClient, str, str, Path],
        aws: MotoAws) -> None:
    """The launcher's PUTs and the publisher's calls act on one ECS stand-in: sampling every second from the
    moment the worker claimed, the publisher never releases the task while its run is in flight, and
    releases it once the run is over."""
    from datetime import UTC, timedelta

    from harness.fake_ecs import FakeEcs
    from prefect_backlog.config import parse_config
    from prefect_backlog.prefect_api import PrefectClient
    from prefect_backlog.tick import WarmState, run_tick
    from tests.support.moto_aws import PUBLISHER

    c, pool_name, deployment, tmp = pool
    cluster, service = "prefect-it", "launcher"
    ecs = FakeEcs()
    ecs.service(cluster, service)
    task_id = fake_task_id()
    ecs.start_task(cluster, service, task_id)
    idle = ecs.start_task(cluster, service)
    ecs.desired[(cluster, service)] = 2
    config = parse_config({"prefectApiUrl": prefect3_server.api_url, "stackName": PUBLISHER,
                           "queues": [{"workPool": pool_name, "workQueue": "default", "cluster": cluster,
                                       "service": service, "maxCapacity": 4, "targetBacklogPerTask": 1,
                                       "runsInWorkerTask": True}]})
    warm = WarmState()

    def tick() -> None:
        client = PrefectClient(config.api_url, deadline=time.monotonic() + 30, depth_memory=warm.depth)
        run_tick(config, client, ecs=ecs, cloudwatch=aws.cloudwatch, now=datetime.now(UTC), warm=warm)

    def agent_put(enabled: bool, minutes: int) -> None:  # what the agent does: UpdateTaskProtection on its task
        ecs.tasks[task_id].protected_until = datetime.now(UTC) + timedelta(minutes=minutes) if enabled else None

    with EcsEndpoints(task_id) as endpoints:
        endpoints.on_put = agent_put
        worker = start_launcher(launcher_dir, prefect3_server, pool_name, endpoints)
        try:
            tick()
            assert ecs.protected(cluster, service) == set()
            run_id = c.create_run(deployment, scheduled_now(), parameters={"path": str(tmp / "s.json"),
                                                                            "seconds": 10})["id"]
            deadline = time.monotonic() + 120
            while not endpoints.protection_puts() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert endpoints.protection_puts(), worker.read_log()[-3000:]
            samples = 0
            terminal = ("COMPLETED", "FAILED", "CRASHED")
            while c.get_run(run_id)["state"]["type"] not in terminal:
                tick()  # every second, from right after the claim (the run may not be labelled yet)
                tick_ended = datetime.now(UTC)
                samples += 1
                if task_id not in ecs.protected(cluster, service):
                    # Released: only right if the run ended before this sample was over (it may end between the
                    # loop's look and the sample's read: that sample rightly sees the task idle).
                    run = c.get_run(run_id)
                    assert run["state"]["type"] in terminal, (samples, run["state"])
                    assert datetime.fromisoformat(run["end_time"]) <= tick_ended, (samples, run["end_time"])
                    break
                time.sleep(1)
            assert samples >= 5
            time.sleep(3)  # the run's process exits; the worker holds nothing and stops PUTting
            for _ in range(2):
                tick()
                time.sleep(1)
            assert ecs.protected(cluster, service) == set()  # released once idle
            assert idle not in ecs.protected(cluster, service)
        finally:
            worker.cleanup(graceful=False)


def run_launcher(launcher_dir: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    from tests.integration.conftest import require_venv

    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ECS_"))}
    base.update(PYTHONPATH=str(launcher_dir), PATH=f"{require_venv('3') / 'bin'}:{base.get('PATH', '')}", **env)
    return subprocess.run([str(launcher_dir / "bin" / LAUNCHER), *args], capture_output=True, text=True,
                          env=base, timeout=120)


def test_outside_ecs_it_refuses_with_a_clear_message(launcher_dir: Path, tmp_path: Path) -> None:
    done = run_launcher(launcher_dir, ["--pool", "p", "--type", "process"],
                        {"PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_HOME": str(tmp_path)})
    assert done.returncode == 2
    assert "not in an ECS task" in done.stderr and "ECS_CONTAINER_METADATA_URI_V4" in done.stderr
    assert "--unprotected" in done.stderr


def test_it_refuses_a_name_of_its_own(launcher_dir: Path, tmp_path: Path) -> None:
    done = run_launcher(launcher_dir, ["--pool", "p", "--name", "mine"], {"PREFECT_HOME": str(tmp_path)})
    assert done.returncode == 2 and "--name is not accepted" in done.stderr


def test_with_unprotected_outside_ecs_it_starts_a_plain_worker(
        prefect3_server: PrefectServer, launcher_dir: Path, pool: tuple[BacklogClient, str, str, Path]) -> None:
    c, pool_name, _, _ = pool
    from tests.integration.conftest import require_venv

    worker = LauncherWorker(launcher_dir, require_venv("3"), prefect3_server.api_url, pool_name, "-", limit=1,
                            launcher_args=("--unprotected",), ready_timeout=90)
    worker.start(wait=False)
    try:
        deadline = time.monotonic() + 90
        names: list[str] = []
        while time.monotonic() < deadline and not names:
            try:
                names = [w["name"] for w in c.post(f"/work_pools/{pool_name}/workers/filter", {"limit": 50})]
            except Exception:
                names = []
            time.sleep(0.5)
        assert names and names[0].startswith("ProcessWorker "), (names, worker.read_log()[-3000:])
        assert "UNPROTECTED" in worker.read_log()
    finally:
        worker.cleanup(graceful=False)

