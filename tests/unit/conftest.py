"""The unit tests' two stand-ins: moto for AWS (in process) and `responses` serving a fake Prefect API.

``prefect`` holds pools ``pool-a`` and ``pool-b`` (each with its ``default``
queue); a test module adds the queues it needs. It starts after ``aws``
because moto mocks HTTP with `responses` too, and ours must sit on top of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import responses
from moto import mock_aws

from tests.support.fake_prefect import FakePrefect


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    """Cluster ``prefect`` with services ``ecs-worker`` (1 task) and ``process-worker`` (0), CloudWatch, secrets."""
    with mock_aws():
        ecs = boto3.client("ecs")
        ecs.create_cluster(clusterName="prefect")
        ecs.register_task_definition(family="w", containerDefinitions=[{"name": "w", "image": "x", "memory": 128}])
        for name, tasks in [("ecs-worker", 1), ("process-worker", 0)]:
            ecs.create_service(cluster="prefect", serviceName=name, taskDefinition="w", desiredCount=0)
            ecs.update_service(cluster="prefect", service=name, desiredCount=tasks)  # moto: running = desired
        yield {"ecs": ecs, "cloudwatch": boto3.client("cloudwatch"), "secrets": boto3.client("secretsmanager")}


@pytest.fixture
def prefect(aws: dict[str, Any]) -> Iterator[FakePrefect]:
    fake = FakePrefect()
    fake.pool("pool-a")
    fake.pool("pool-b")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake.install(mock)
        mock.add_passthru("http://localhost")  # moto's own calls; nothing else may leave the process
        yield fake
