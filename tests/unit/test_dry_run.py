"""The local dry run: same tick, no AWS, a table or JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from prefect_backlog import dry_run
from tests.support.fake_prefect import API, NOW, FakePrefect, failing

QUEUES = [{"workPool": "pool-a", "workQueue": "default", "cluster": "c", "service": "worker", "maxCapacity": 3},
          {"workPool": "pool-a", "workQueue": "gpu", "cluster": "c", "service": "worker"}]


@pytest.fixture(autouse=True)
def gpu_queue(prefect: FakePrefect) -> None:
    prefect.queue("pool-a", "gpu")


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
    prefect.add_runs("pool-a", "gpu", 3, "SCHEDULED", "Scheduled", minutes_ago=-2)  # starts in 2 minutes
    assert dry_run.main(["--context", str(context_file), "--running-tasks", "1"]) == 0
    out = capsys.readouterr().out
    assert "pool-a/default  2     2    0         0        0        180" in out
    assert "c/worker     5       1        1        5               2" in out  # 2 due + 3 upcoming
    assert "pool-a/gpu      0     0    3         0        0        0" in out  # upcoming: demand before it is due
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


def test_what_was_not_read_goes_to_stderr_naming_the_queue_and_stdout_stays_json(
        prefect: FakePrefect, context_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queues = json.dumps([*QUEUES, {"workPool": "pool-a", "workQueue": "typo", "cluster": "c", "service": "other",
                                   "maxCapacity": 1}])
    assert dry_run.main(["--context", str(context_file), "--queues", queues, "--json"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # nothing but the JSON on stdout
    assert "WARNING: queue queues[2] pool-a/typo not read; nothing published for it: no work queue 'typo'" in (
        captured.err)
    assert "WARNING: scaling signal of ECS service c/other not published" in captured.err


def test_ecs_without_a_region_or_credentials_says_what_is_missing(
        prefect: FakePrefect, context_file: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                     "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                     "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert dry_run.main(["--context", str(context_file), "--ecs"]) == 2
    assert "--ecs needs an AWS region" in capsys.readouterr().err
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert dry_run.main(["--context", str(context_file), "--ecs"]) == 2
    assert "--ecs needs AWS credentials" in capsys.readouterr().err
    assert prefect.calls == []  # stopped before asking anything


def test_ecs_that_cannot_be_read_exits_1(prefect: FakePrefect, context_file: Path, aws: dict[str, Any],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    aws["ecs"].delete_service(cluster="prefect", service="ecs-worker", force=True)  # c/worker never existed
    assert dry_run.main(["--context", str(context_file), "--ecs"]) == 1
    captured = capsys.readouterr()
    assert "NOT PUBLISHED: DescribeServices c/worker" in captured.out
    assert "no scaling signal was computed" in captured.err


def test_queue_on_the_command_line_reads_your_queue_not_the_examples(
        prefect: FakePrefect, context_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefect.pool("etl")
    prefect.queue("etl", "nightly")
    prefect.add_runs("etl", "nightly", 2, "SCHEDULED", "Late", minutes_ago=3)
    assert dry_run.main(["--context", str(context_file), "--queue", "etl/nightly", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(q["queue"], q["late"]) for q in out["queues"]] == [("etl/nightly", 2)]  # the context's queues are not read
    assert ("DesiredTasks", ("dry-run", "etl-nightly")) in {
        (d["MetricName"], tuple(x["Value"] for x in d["Dimensions"])) for d in out["metricData"]}
    assert dry_run.queue_entry("my pool/q 1")["service"] == "my-pool-q-1"  # ECS allows no spaces


@pytest.mark.parametrize("given", ["etl", "etl/", "/nightly"])
def test_a_queue_that_is_not_pool_slash_queue_exits_2(given: str, context_file: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert dry_run.main(["--context", str(context_file), "--queue", given]) == 2
    assert f"--queue {given!r}: give it as work-pool/work-queue" in capsys.readouterr().err


def test_nothing_read_from_the_contexts_queues_says_where_they_come_from(
        prefect: FakePrefect, context_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queues = json.dumps([{"workPool": "nope", "workQueue": "x", "cluster": "c", "service": "s", "maxCapacity": 1}])
    data = json.loads(context_file.read_text())
    data["context"]["queues"] = json.loads(queues)
    context_file.write_text(json.dumps(data))
    dry_run.main(["--context", str(context_file)])
    assert f"they come from {context_file}: name yours with --queue pool/queue" in capsys.readouterr().err


def test_prefect_api_key_is_used_when_set_and_prefect_auth_is_not_configured(
        prefect: FakePrefect, context_file: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_test")
    assert dry_run.main(["--context", str(context_file), "--json"]) == 0
    assert set(prefect.authorizations) == {"Bearer pnu_test"}
    err = capsys.readouterr().err
    assert "using PREFECT_API_KEY as a bearer credential" in err and "pnu_test" not in err  # never the key itself


def test_a_401_without_credentials_says_none_were_sent_and_names_the_host(
        prefect: FakePrefect, context_file: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_KEY", raising=False)
    prefect.faults["/work_queues/filter"] = failing(401)
    assert dry_run.main(["--context", str(context_file)]) == 1
    err = capsys.readouterr().err
    assert "HTTP 401 from prefect.test, the API wants credentials and none were sent" in err


def test_the_script_keeps_the_dry_runs_exit_codes_that_make_would_turn_into_2() -> None:
    """scripts/dry-run, as a script calls it: 2 for bad usage, 1 for nothing read (a closed loopback port)."""
    script = Path(__file__).parents[2] / "scripts" / "dry-run"
    bad = subprocess.run([str(script), "--queue", "no-slash"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "give it as work-pool/work-queue" in bad.stderr
    unread = subprocess.run([str(script), "--api-url", "http://127.0.0.1:1/api", "--queue", "a/b", "--timeout", "2",
                             "--json"], capture_output=True, text=True, timeout=120)
    assert unread.returncode == 1, unread.stderr
    assert json.loads(unread.stdout)["summary"]["queueReadErrors"] == 1  # stdout is the JSON alone
