"""Shared test setup. AWS is moto throughout (no account is reachable); Prefect HTTP is `responses`
in unit tests and real servers in tests/integration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def fake_aws_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Credentials and region that only moto accepts, so no test can reach real AWS."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_SERVICE_NAME": "prefect-backlog-publisher",
    }.items():
        monkeypatch.setenv(key, value)
    yield
