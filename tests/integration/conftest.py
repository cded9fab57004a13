"""Fixtures that run real Prefect servers (2.18.x and 3.x) on 127.0.0.1.

Servers come from virtualenvs made by ``scripts/install-prefect.sh``:
``$PREFECT2_VENV`` / ``$PREFECT3_VENV``, by default ``<repo>/.venvs/prefect2``
and ``<repo>/.venvs/prefect3``. A missing venv skips the tests that need it.

The session servers run with the Late marker service OFF so that counts stay
deterministic (an overdue "Scheduled" run stays "Scheduled"); start your own
``PrefectServer(..., late_marking=True)`` to test the marker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.backlog import BacklogClient
from harness.prefect_server import PrefectServer
from harness.process_worker import ProcessWorker, create_local_deployment, ecs_worker_name, fake_task_id, write_flows
from tests.support.moto_aws import MotoAws
from tests.support.publisher_log import LogRecords

REPO_ROOT = Path(__file__).resolve().parents[2]
AUTH_STRING = "prefect-admin:integration-secret"
_VENV_ENV = {"2": "PREFECT2_VENV", "3": "PREFECT3_VENV", "3.9": "PREFECT39_VENV"}
# Every version-parametrized test runs on each: 2.18 (agents), 3.8 and the newest 3.x, 3.9.
VERSIONS = ["2", "3", "3.9"]
VERSION_IDS = ["prefect2", "prefect3", "prefect39"]


def prefect_venv(version: str) -> Path:
    """Where the Prefect ``version`` ("2" or "3") server venv is expected."""
    env = _VENV_ENV[version]
    return Path(os.environ.get(env) or REPO_ROOT / ".venvs" / f"prefect{version.replace('.', '')}")


def require_venv(version: str) -> Path:
    venv = prefect_venv(version)
    if not (venv / "bin" / "prefect").exists():
        pytest.skip(
            f"Prefect {version} server venv not found at {venv}: run "
            f"`scripts/install-prefect.sh {version} {venv}` or set {_VENV_ENV[version]}"
        )
    return venv


def _serve(version: str, late_marking: bool = False, auth_string: str | None = None) -> Iterator[PrefectServer]:
    server = PrefectServer(version, require_venv(version), late_marking=late_marking, auth_string=auth_string)
    with server:
        yield server


@pytest.fixture(scope="session")
def prefect2_server() -> Iterator[PrefectServer]:
    yield from _serve("2", late_marking=False)


@pytest.fixture(scope="session")
def prefect3_server() -> Iterator[PrefectServer]:
    yield from _serve("3", late_marking=False)


@pytest.fixture(scope="session")
def prefect39_server() -> Iterator[PrefectServer]:
    yield from _serve("3.9", late_marking=False)


@pytest.fixture(scope="session")
def prefect3_auth_server() -> Iterator[PrefectServer]:
    """3.x with ``PREFECT_SERVER_API_AUTH_STRING`` = ``AUTH_STRING`` (basic auth)."""
    yield from _serve("3", late_marking=False, auth_string=AUTH_STRING)


@pytest.fixture(params=VERSIONS, ids=VERSION_IDS)
def prefect_server(request: pytest.FixtureRequest) -> PrefectServer:
    """Each session server in turn (tests using it run once per version)."""
    server: PrefectServer = request.getfixturevalue(f"prefect{request.param.replace('.', '')}_server")
    return server


@pytest.fixture
def prefect_venv_for() -> Callable[[str], Path]:
    """``prefect_venv_for("3")``: the venv path, or skip the test if it is missing."""
    return require_venv


@pytest.fixture
def client_for() -> Callable[[PrefectServer], BacklogClient]:
    """``client_for(server)``: a BacklogClient with the server's credentials."""
    return lambda server: BacklogClient(server.api_url, auth_string=server.auth_string)


# --- the publisher's AWS side (moto) and its log, for the publisher/fault/e2e tests ------------


@pytest.fixture
def aws() -> Iterator[MotoAws]:
    """A fresh moto account per test (the publisher's ECS, CloudWatch and Secrets Manager)."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        yield MotoAws(boto3.client("ecs"), boto3.client("cloudwatch"), boto3.client("secretsmanager"))


@pytest.fixture
def publisher_log() -> Iterator[LogRecords]:
    """The ``prefect_backlog`` logger's records during the test, whether or not it propagates to root
    (Powertools' copy_config_to_registered_loggers, run when the handler module is imported, stops that)."""
    target = logging.getLogger("prefect_backlog")
    capture = LogRecords()
    target.addHandler(capture)
    previous = target.level
    target.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        target.removeHandler(capture)
        target.setLevel(previous)


QueueWorkers = dict[str, tuple[str, str, ProcessWorker]]  # queue -> (deployment id, task id, its worker)


@contextmanager
def workers_per_queue(server: PrefectServer, venv: Path, prefix: str,
                      tmp_path: Path) -> Iterator[tuple[BacklogClient, str, QueueWorkers]]:
    """Pool ``<prefix>-<id>`` with queues a and b, a deployment for each, and a real Process worker per queue
    named after its (fake) ECS task; the workers are killed on the way out."""
    c = BacklogClient(server.api_url)
    pool = f"{prefix}-{fake_task_id()[:8]}"
    c.create_pool(pool, type="process")
    flows = write_flows(tmp_path / "flows")
    started: QueueWorkers = {}
    try:
        for queue in ("a", "b"):
            c.create_queue(pool, queue)
            deployment = create_local_deployment(c, pool, queue, flows, "sleepy", name=f"sleepy-{queue}")
            task = fake_task_id()
            worker = ProcessWorker(venv, server.api_url, pool, ecs_worker_name(task), limit=1,
                                   work_queues=[queue], query_seconds=1, prefetch_seconds=0)
            started[queue] = (deployment, task, worker.start())
        yield c, pool, started
    finally:
        for _, _, worker in started.values():
            worker.cleanup(graceful=False)
