"""Every setting of the README's tables given with ``-c`` on the real CDK CLI synthesizes what its cdk.json form does.

The CLI hands every ``-c key=value`` to the app as a string (objects and lists
as JSON text, ``-c fastMode=true`` as ``"true"``), while ``cdk.json`` gives
real JSON values. Two synths through ``npx cdk synth`` (the pinned CLI in
``node_modules``), one per form, must give the same template; and the template
must show what was asked (the secret in the IAM policy, the subnets in the
function's VPC configuration, fast mode's alarm period...).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from infra.assembly import StackTemplates, read
from prefect_backlog import metrics
from prefect_backlog.config import QUEUE_KEYS, TOP_LEVEL_KEYS
from tests.infra.synth import REPO

SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prefect/server-auth-AbCdEf"
# Every top-level setting, none at its default, so each one's effect is in the template.
SETTINGS: dict[str, Any] = {
    "prefectApiUrl": "http://prefect.internal:4200/api",
    "queues": [
        {"workPool": "ecs-pool", "workQueue": "default", "cluster": "prefect", "service": "ecs-worker",
         "minCapacity": 1, "maxCapacity": 4, "targetBacklogPerTask": 10, "prewarmSeconds": 120},
        {"workPool": "process-pool", "workQueue": "default", "cluster": "processes", "service": "process-worker",
         "maxCapacity": 6, "targetBacklogPerTask": 2, "runsInWorkerTask": True, "taskProtection": False},
    ],
    "prefectAuth": {"secret": SECRET_ARN, "scheme": "basic"},
    "network": {"subnetIds": ["subnet-0a1b2c3d", "subnet-0e1f2a3b"], "securityGroupIds": ["sg-0123abcd"]},
    "metricNamespace": "Prefect/Staging",
    "schedule": "rate(1 minute)",
    "logRetentionDays": 14,
    "stackName": "StagingAutoscaler",
    "fastMode": True,
    "stuckPendingSeconds": 1200,
    "rescheduleStuckPending": True,
    "maxReschedulesPerRun": 3,
    "oldestLateAlarmSeconds": 900,
    "unpolledAlarmSeconds": 240,
    "alarmEmail": "ops@example.com",
    "monitoringDetail": "pool",
    "crashOrphanedRuns": True,
    "orphanedRuns": "crash",  # the alias and the setting, agreeing
    "maxCrashesPerRun": 3,
    "fullReadEverySamples": 10,
}


def as_cli_value(value: Any) -> str:
    """What a user types after ``-c key=``: JSON for objects and lists, the plain word otherwise."""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def cli_environment() -> dict[str, str]:
    """The CLI with nothing to reach beyond loopback: no AWS credentials (so it asks STS for no account), no
    instance metadata, no version check, no notices."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, "AWS_EC2_METADATA_DISABLED": "true", "CDK_DISABLE_VERSION_CHECK": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "lambda"), str(REPO)])}


def cdk_synth(project: Path, context: dict[str, Any], cli_context: dict[str, str]) -> StackTemplates:
    """``npx cdk synth`` in ``project`` (its cdk.json runs this repository's app.py); the stack's templates."""
    project.mkdir()
    (project / "cdk.json").write_text(json.dumps({"app": f"{sys.executable} {REPO / 'app.py'}", "context": context}))
    out = project / "cdk.out"
    command = [str(REPO / "node_modules" / ".bin" / "cdk"), "synth", "--quiet", "--no-notices", "-o", str(out)]
    for key, value in cli_context.items():
        command += ["-c", f"{key}={value}"]
    result = subprocess.run(command, cwd=project, env=cli_environment(), capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Node 20 is end-of-life" not in result.stderr  # app.py quiets jsii's banner itself
    return read(out, SETTINGS["stackName"])


@pytest.fixture(scope="module")
def both_forms(tmp_path_factory: pytest.TempPathFactory) -> tuple[StackTemplates, StackTemplates]:
    root = tmp_path_factory.mktemp("cli")
    with ThreadPoolExecutor(max_workers=2) as pool:
        from_json = pool.submit(cdk_synth, root / "cdk-json", SETTINGS, {})
        from_cli = pool.submit(cdk_synth, root / "dash-c", {},
                               {key: as_cli_value(value) for key, value in SETTINGS.items()})
        return from_json.result(), from_cli.result()


def test_every_readme_setting_is_declared_and_given_here() -> None:
    readme = (REPO / "README.md").read_text()

    def table_keys(header: str) -> set[str]:
        rows = readme.split(header, 1)[1].split("\n\n", 1)[0].splitlines()[1:]  # after the |---| line
        return {key for row in rows for key in re.findall(r"`([A-Za-z]+)`", row.split("|")[1])}

    assert table_keys("| key | required | meaning |\n") == set(TOP_LEVEL_KEYS) == set(SETTINGS)
    assert table_keys("Queue entry:\n\n| key | required | meaning |\n") == set(QUEUE_KEYS)


def test_dash_c_synthesizes_the_same_templates_as_cdk_json(
        both_forms: tuple[StackTemplates, StackTemplates]) -> None:
    from_json, from_cli = both_forms
    assert len(from_json.templates) > 1  # the root and its nested stacks, every one compared
    assert from_cli.templates == from_json.templates


def test_the_templates_show_every_structured_setting(both_forms: tuple[StackTemplates, StackTemplates]) -> None:
    _, stack = both_forms
    resources = [resource for _, _, resource in stack.resources()]
    (function,) = [r["Properties"] for r in resources if r["Type"] == "AWS::Lambda::Function"]
    assert function["VpcConfig"] == {"SubnetIds": SETTINGS["network"]["subnetIds"],
                                     "SecurityGroupIds": SETTINGS["network"]["securityGroupIds"]}
    assert function["Timeout"] == 58  # fastMode=true arrived as a boolean
    statements = [s for r in resources if r["Type"] == "AWS::IAM::Policy"
                  for s in r["Properties"]["PolicyDocument"]["Statement"]]
    secret_reads = [s for s in statements if "secretsmanager:GetSecretValue" in json.dumps(s["Action"])]
    assert secret_reads and all(SECRET_ARN in json.dumps(s["Resource"]) for s in secret_reads)
    (logs,) = [r["Properties"] for r in resources if r["Type"] == "AWS::Logs::LogGroup"]
    assert logs["RetentionInDays"] == 14  # logRetentionDays=14 arrived as a number
    (task_calls,) = [s for s in statements if "ecs:UpdateTaskProtection" in json.dumps(s["Action"])]
    assert ":task/prefect/*" in json.dumps(task_calls["Resource"])
    assert ":task/processes/" not in json.dumps(task_calls["Resource"])  # taskProtection false arrived as a boolean
    targets = sorted((r["Properties"]["ResourceId"], r["Properties"]["MinCapacity"], r["Properties"]["MaxCapacity"])
                     for r in resources if r["Type"] == "AWS::ApplicationAutoScaling::ScalableTarget")
    assert targets == [("service/prefect/ecs-worker", 1, 4), ("service/processes/process-worker", 0, 6)]
    alarm_names = [r["Properties"].get("AlarmName", "") for r in resources if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert "StagingAutoscaler oldest Late run in pool ecs-pool" in alarm_names  # monitoringDetail "pool"
    (subscription,) = [r["Properties"] for r in resources if r["Type"] == "AWS::SNS::Subscription"]
    assert subscription["Endpoint"] == "ops@example.com"


def test_a_structured_setting_that_is_not_json_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "cdk.json").write_text(json.dumps({"app": f"{sys.executable} {REPO / 'app.py'}"}))
    command = [str(REPO / "node_modules" / ".bin" / "cdk"), "synth", "--quiet", "--no-notices",
               "-c", f"prefectApiUrl={SETTINGS['prefectApiUrl']}", "-c", f"queues={json.dumps(SETTINGS['queues'])}",
               "-c", "prefectAuth={secret: prefect/auth}", "-c", "network=subnet-0a1b2c3d"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
                            env=cli_environment())
    assert result.returncode != 0
    assert "prefectAuth: is a string that is not valid JSON" in result.stderr, result.stderr[-2000:]
    assert 'network: must be an object, got "subnet-0a1b2c3d"' in result.stderr
    assert "Traceback" not in result.stderr


def test_every_published_metric_is_in_the_readme_with_its_unit() -> None:
    section = (REPO / "README.md").read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = {(name, unit) for row in section.splitlines() if row.startswith("| `")
                  for unit in [row.split("|")[2].strip()] for name in re.findall(r"`([A-Za-z]+)`", row.split("|")[1])}
    published = {(m.name, m.unit.value) for m in (*metrics.QUEUE_METRICS, *metrics.POOL_METRICS,
                                                  *metrics.SERVICE_METRICS, *metrics.PUBLISHER_METRICS)}
    assert published <= documented, published - documented
