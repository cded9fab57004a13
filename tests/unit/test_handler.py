"""The Lambda handler: the packaged configuration, the secret, a warm container's memory, failing visibly (moto)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_backlog import handler
from prefect_backlog.config import parse_config
from prefect_backlog.prefect_api import PAGE_SIZE
from prefect_backlog.tick import WarmState
from tests.support.fake_prefect import NOW, PUBLISHER_CONTEXT, FakePrefect, failing
from tests.support.lambda_context import FakeContext
from tests.support.moto_aws import published

CONTEXT = PUBLISHER_CONTEXT


@pytest.fixture(autouse=True)
def gpu_queue(prefect: FakePrefect) -> None:
    prefect.queue("pool-b", "gpu")


@pytest.fixture
def packaged_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Writes the canonical configuration the way the stack packages it, and points the handler at it."""
    def write(context: dict[str, Any]) -> Path:
        path = tmp_path / "publisher_config.json"
        path.write_text(json.dumps(parse_config(context).to_context()))
        monkeypatch.setattr(handler, "CONFIG_FILE", path)
        return path
    monkeypatch.setattr(handler, "datetime", _FrozenDatetime)
    yield write  # type: ignore[misc]


class _FrozenDatetime:
    @staticmethod
    def now(tz: Any = None) -> Any:
        return NOW


def test_handler_publishes_and_returns_a_summary(prefect: FakePrefect, aws: dict[str, Any],
                                                 packaged_config: Any) -> None:
    packaged_config(CONTEXT)
    prefect.add_runs("pool-a", "default", 2, "SCHEDULED", "Late")
    summary = handler.lambda_handler({}, FakeContext())
    assert summary["queuesRead"] == 3 and summary["queueReadErrors"] == 0
    assert published(aws["cloudwatch"], "LateFlowRuns", WorkPool="pool-a", WorkQueue="default") == 2


def test_a_warm_handler_remembers_a_deep_backlog_between_invocations(
        prefect: FakePrefect, aws: dict[str, Any], packaged_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler, "WARM", WarmState())  # a fresh container
    packaged_config(CONTEXT)
    prefect.add_runs("pool-a", "default", 600, "SCHEDULED", "Late")

    deep_queue = prefect.queue_id("pool-a", "default")

    def invoke() -> tuple[dict[str, Any], int]:
        prefect.calls.clear()
        summary = handler.lambda_handler({}, FakeContext())
        due_pages = [body for path, body in prefect.calls if path == "/flow_runs/filter"
                     and body.get("limit") == PAGE_SIZE and "Late" in json.dumps(body["flow_runs"])
                     and body["work_pool_queues"]["id"]["any_"] == [deep_queue]]
        return summary, len(due_pages)

    cold, cold_pages = invoke()
    warm, warm_pages = invoke()
    assert (cold_pages, warm_pages) == (1, 0)  # the cold one fetched a page of due runs, then counted
    assert warm["prefectRequests"] < cold["prefectRequests"] and warm["queuesRead"] == cold["queuesRead"] == 3


def test_handler_sends_the_secret_as_basic_auth_and_never_logs_it(
        prefect: FakePrefect, aws: dict[str, Any], packaged_config: Any, caplog: pytest.LogCaptureFixture) -> None:
    aws["secrets"].create_secret(Name="prefect/auth", SecretString="admin:s3cret-value")
    packaged_config({**CONTEXT, "prefectAuth": {"secret": "prefect/auth", "scheme": "basic"},
                     "queues": [*CONTEXT["queues"], {"workQueue": "typo", "cluster": "prefect", "service": "x",
                                                      "maxCapacity": 1}]})
    loggers = [logging.getLogger(name) for name in ("prefect_backlog", handler.logger.name)]
    for logger in loggers:  # Powertools' handlers write to the stdout of import time and do not propagate
        logger.addHandler(caplog.handler)
    try:
        handler.lambda_handler({}, FakeContext())
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)
    assert set(prefect.authorizations) == {"Basic YWRtaW46czNjcmV0LXZhbHVl"}
    logged = "\n".join(str(record.__dict__) for record in caplog.records)  # messages with their extra fields
    assert "published" in logged and "no work queue 'typo'" in logged  # the logs were captured
    assert "s3cret" not in logged and "YWRtaW46czNjcmV0LXZhbHVl" not in logged


def test_handler_fails_visibly_when_nothing_can_be_read(prefect: FakePrefect, aws: dict[str, Any],
                                                        packaged_config: Any) -> None:
    packaged_config(CONTEXT)
    prefect.faults["/work_queues/filter"] = failing(401)
    with pytest.raises(handler.PublisherFailed, match=r"HTTP 401 from prefect\.test, the API wants credentials"):
        handler.lambda_handler({}, FakeContext())
    cw = aws["cloudwatch"]
    assert published(cw, "QueueReadErrors", Publisher="TestPublisher") == 3  # health still reported
    assert published(cw, "LateFlowRuns", WorkPool="pool-a", WorkQueue="default") is None
