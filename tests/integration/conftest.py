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
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # helpers import as top-level modules in any import mode
    sys.path.insert(0, str(HERE))

from backlog import BacklogClient  # noqa: E402
from prefect_server import PrefectServer  # noqa: E402

REPO_ROOT = HERE.parents[1]
AUTH_STRING = "prefect-admin:integration-secret"
_VENV_ENV = {"2": "PREFECT2_VENV", "3": "PREFECT3_VENV"}


def prefect_venv(version: str) -> Path:
    """Where the Prefect ``version`` ("2" or "3") server venv is expected."""
    env = _VENV_ENV[version]
    return Path(os.environ.get(env) or REPO_ROOT / ".venvs" / f"prefect{version}")


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
def prefect3_auth_server() -> Iterator[PrefectServer]:
    """3.x with ``PREFECT_SERVER_API_AUTH_STRING`` = ``AUTH_STRING`` (basic auth)."""
    yield from _serve("3", late_marking=False, auth_string=AUTH_STRING)


@pytest.fixture(params=["2", "3"], ids=["prefect2", "prefect3"])
def prefect_server(request: pytest.FixtureRequest) -> PrefectServer:
    """Each session server in turn (tests using it run once per version)."""
    server: PrefectServer = request.getfixturevalue(f"prefect{request.param}_server")
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

PUBLISHER = "IntegrationPublisher"  # stackName in the test configs: the Publisher dimension
QUEUE_METRIC_NAMES = ("LateFlowRuns", "DueFlowRuns", "PendingFlowRuns", "RunningFlowRuns",
                      "OldestLateRunAgeSeconds", "QueuePaused")
SERVICE_METRIC_NAMES = ("BacklogPerTask", "DemandFlowRuns", "TaskShortfall", "RunningTasks", "DesiredTasks")


class MotoAws:
    """CloudWatch, ECS and Secrets Manager clients on moto, and read-back helpers for what was published."""

    def __init__(self, ecs: Any, cloudwatch: Any, secrets: Any, namespace: str = "Prefect") -> None:
        self.ecs, self.cloudwatch, self.secrets, self.namespace = ecs, cloudwatch, secrets, namespace
        self._clusters: set[str] = set()

    def service(self, cluster: str, name: str, tasks: int) -> None:
        """An ACTIVE ECS service with ``tasks`` running and desired (moto: running = desired)."""
        if cluster not in self._clusters:
            self.ecs.create_cluster(clusterName=cluster)
            self.ecs.register_task_definition(
                family="worker", containerDefinitions=[{"name": "w", "image": "x", "memory": 128}])
            self._clusters.add(cluster)
        self.ecs.create_service(cluster=cluster, serviceName=name, taskDefinition="worker", desiredCount=0)
        if tasks:
            self.ecs.update_service(cluster=cluster, service=name, desiredCount=tasks)

    def value(self, metric: str, **dimensions: str) -> float | None:
        """The one value published for this metric and these dimensions, or None when nothing was.

        Fails if more than one datum arrived (a run must publish each figure once).
        """
        now = datetime.now(UTC)
        stats = self.cloudwatch.get_metric_statistics(
            Namespace=self.namespace, MetricName=metric, Statistics=["Maximum", "Minimum", "SampleCount"],
            Period=3600, StartTime=now - timedelta(minutes=20), EndTime=now + timedelta(minutes=20),
            Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()])
        points = stats["Datapoints"]
        if not points:
            return None
        assert len(points) == 1 and points[0]["SampleCount"] == 1, (metric, dimensions, points)
        return float(points[0]["Maximum"])

    def queue(self, pool: str, queue: str) -> dict[str, float | None]:
        return {m: self.value(m, WorkPool=pool, WorkQueue=queue) for m in QUEUE_METRIC_NAMES}

    def service_values(self, cluster: str, service: str) -> dict[str, float | None]:
        return {m: self.value(m, ClusterName=cluster, ServiceName=service) for m in SERVICE_METRIC_NAMES}

    def health(self, publisher: str = PUBLISHER) -> dict[str, float | None]:
        return {m: self.value(m, Publisher=publisher)
                for m in ("QueuesRead", "QueueReadErrors", "ServiceReadErrors", "PublisherDuration")}

    def metrics_with(self, **dimensions: str) -> list[str]:
        """Names of every metric CloudWatch holds with these dimension values (any data at all)."""
        found = self.cloudwatch.list_metrics(
            Namespace=self.namespace, Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()])
        return sorted(m["MetricName"] for m in found["Metrics"])

    def nothing_for_queue(self, pool: str, queue: str) -> bool:
        return self.metrics_with(WorkPool=pool, WorkQueue=queue) == []


@pytest.fixture
def aws() -> Iterator[MotoAws]:
    """A fresh moto account per test (the publisher's ECS, CloudWatch and Secrets Manager)."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        yield MotoAws(boto3.client("ecs"), boto3.client("cloudwatch"), boto3.client("secretsmanager"))


class LogRecords(logging.Handler):
    """Collects the publisher's log records (the Lambda's Powertools handler turns them into JSON lines)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def causes(self) -> dict[str, str]:
        """queue label -> logged cause, from the "queue not read" warnings."""
        return {str(r.queue): str(r.cause) for r in self.records if hasattr(r, "queue") and hasattr(r, "cause")}

    def text(self) -> str:
        return "\n".join(f"{r.getMessage()} {getattr(r, 'queue', '')} {getattr(r, 'cause', '')}"
                         for r in self.records)


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
