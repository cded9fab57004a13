"""The local dry run: same tick, no AWS, a table or JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses

from prefect_backlog import dry_run
from tests.fake_prefect import API, NOW, FakePrefect, failing

QUEUES = [{"workPool": "pool-a", "workQueue": "default", "cluster": "c", "service": "worker", "maxCapacity": 3},
          {"workPool": "pool-a", "workQueue": "gpu", "cluster": "c", "service": "worker"}]


@pytest.fixture
def prefect() -> Iterator[FakePrefect]:
    fake = FakePrefect()
    fake.pool("pool-a")
    fake.queue("pool-a", "gpu")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake.install(mock)
        yield fake


@pytest.fixture(autouse=True)
def frozen_now(monkeypatch: pytest.MonkeyPatch) -> None:
    class Frozen:
        @staticmethod
        def now(tz: Any = None) -> Any:
            return NOW
    monkeypatch.setattr(dry_run, "datetime", Frozen)


@pytest.fixture
def context_file(tmp_path: Path) -> Path:
    path = tmp_path / "cdk.json"
    path.write_text(json.dumps({"app": "python3 app.py", "context": {"prefectApiUrl": API, "queues": QUEUES}}))
    return path


def test_prints_a_table_of_what_would_be_published(prefect: FakePrefect, context_file: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    prefect.add_runs("pool-a", "default", 2, "SCHEDULED", "Late", minutes_ago=3)
    assert dry_run.main(["--context", str(context_file), "--running-tasks", "1"]) == 0
    out = capsys.readouterr().out
    assert "pool-a/default  2     2    0        0        180" in out
    assert "c/worker     2       1        1        2               1" in out
    assert "Task counts assumed: 1 running" in out


def test_json_lists_the_metric_data_and_errors(prefect: FakePrefect, context_file: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    queues = json.dumps([*QUEUES, {"workPool": "pool-a", "workQueue": "typo", "cluster": "c", "service": "worker"}])
    assert dry_run.main(["--context", str(context_file), "--queues", queues, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    names = {(d["MetricName"], tuple(x["Value"] for x in d["Dimensions"])) for d in result["metricData"]}
    assert ("LateFlowRuns", ("pool-a", "gpu")) in names
    assert not any("typo" in dims for _, dims in names)  # unread: nothing, not 0
    assert any("no work queue 'typo'" in e for e in result["errors"])
    assert result["summary"]["queueReadErrors"] == 1


def test_exit_code_1_when_nothing_can_be_read(prefect: FakePrefect, context_file: Path) -> None:
    prefect.faults["/work_queues/filter"] = failing(401)
    assert dry_run.main(["--context", str(context_file)]) == 1


def test_bad_config_and_missing_credentials_exit_2(context_file: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert dry_run.main(["--context", str(context_file), "--api-url", "nope"]) == 2
    assert "prefectApiUrl: must be an http(s) URL" in capsys.readouterr().err
    data = json.loads(context_file.read_text())
    data["context"]["prefectAuth"] = {"secret": "s", "scheme": "bearer"}
    context_file.write_text(json.dumps(data))
    monkeypatch.delenv("PREFECT_API_KEY", raising=False)
    assert dry_run.main(["--context", str(context_file)]) == 2
    assert "set PREFECT_API_KEY" in capsys.readouterr().err
