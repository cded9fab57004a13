"""Malformed configuration through the CDK app's real entry point (``app.py``), as ``cdk synth`` runs it.

The CDK CLI hands context to the app in the environment variable
``CDK_CONTEXT_JSON`` (cdk.json's context merged with ``-c key=value``; a
``-c queues='[...]'`` value arrives as a string). The app is run here the same
way, one subprocess per configuration: in-process is not possible because the
jsii kernel (a Node process) copies the environment once, when ``aws_cdk`` is
first imported, and ``cdk.App`` reads the context from that copy.

Each bad configuration must end the app with exit code 1 and one message that
names every problem by field, without a Python traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.infra.synth import run_app
from tests.support.contexts import API, DROP, context, entry

HEADER = "Configuration error (cdk.json context or -c options): invalid configuration:"

@dataclass(frozen=True)
class Case:
    id: str
    context: dict[str, Any]
    problems: tuple[str, ...]  # each must start one problem line; there must be exactly this many lines


HUGE = "1" + "0" * 400  # a whole number no float can hold
CASES = [
    Case("missing-api-url", context(prefectApiUrl=DROP), ("prefectApiUrl: is required",)),
    Case("missing-max-capacity", context(queues=[entry(maxCapacity=DROP)]),
         ("queues[0].maxCapacity: is required (at least one entry for ECS service prefect/worker",)),
    Case("misspelled-queue-key", context(queues=[entry(service=DROP, servcie="worker")]),
         ("queues[0].servcie: unknown key (did you mean 'service'?)", "queues[0].service: is required")),
    Case("misspelled-top-level-key", context(prefectApiUrl=DROP, prefectApiURL=API),
         ("prefectApiURL: unknown key (did you mean 'prefectApiUrl'?)", "prefectApiUrl: is required")),
    Case("extra-queue-key", context(queues=[entry(priority=1)]), ("queues[0].priority: unknown key (known keys:",)),
    Case("max-capacity-a-word", context(queues=[entry(maxCapacity="three")]),
         ('queues[0].maxCapacity: must be a whole number, got "three"',)),  # once: not also "is required"
    Case("queues-an-object", context(queues={"workQueue": "default"}),
         ("queues: must be a list of queue entries, got dict",)),
    Case("target-backlog-zero", context(queues=[entry(targetBacklogPerTask=0)]),
         ("queues[0].targetBacklogPerTask: must be a number greater than 0, got 0",)),
    # Once: the service-level line is only for values that come from different entries (the next case).
    Case("max-below-min", context(queues=[entry(minCapacity=3, maxCapacity=1)]),
         ("queues[0].maxCapacity: must be at least minCapacity (3), got 1",)),
    Case("max-below-min-across-entries", context(queues=[entry(minCapacity=3, maxCapacity=DROP),
                                                         entry(workQueue="b", maxCapacity=1)]),
         ("queues[0].maxCapacity: ECS service prefect/worker: maxCapacity 1 is below minCapacity 3",)),
    Case("url-without-scheme", context(prefectApiUrl="prefect.example.com/api"),
         ("prefectApiUrl: must be an http(s) URL",)),
    Case("duplicate-queues", context(queues=[entry(), entry(maxCapacity=DROP)]),
         ("queues[1]: duplicates queues[0] (pool-a/default)",)),
    Case("conflicting-capacities-for-one-service", context(queues=[entry(), entry(workQueue="gpu", maxCapacity=5)]),
         ("queues[0].maxCapacity: entries for ECS service prefect/worker disagree (queues[0] says 3, "
          "queues[1] says 5)",)),
    Case("queues-string-not-json", context(queues="[{workQueue: default}]"),
         ("queues: is a string that is not valid JSON (Expecting property name enclosed in double quotes",)),
    Case("queues-string-with-wrong-types",
         context(queues=json.dumps([entry(maxCapacity=-2, targetBacklogPerTask="x")])),
         ("queues[0].maxCapacity: must be at least 1, got -2",
          'queues[0].targetBacklogPerTask: must be a number, got "x"')),
    # Every problem is listed in one message, not one per synth (and one app start covers many fields).
    Case("many-problems-at-once",
         context(queues=[entry(runsInWorkerTask="yes", cluster="arn:aws:ecs:us-east-1:123456789012:cluster/p"),
                         "default"],
                 prefectAuth={"secret": "prefect/auth", "scheme": "token", "region": "eu-west-1"},
                 network={"subnetIds": ["subnet-xyz"], "securityGroupIds": []},
                 logRetentionDays=10, metricNamespace="AWS/ECS", stackName="1 bad name",
                 fastMode=True, schedule="rate(5 minutes)"),
         ('queues[0].runsInWorkerTask: must be true or false, got "yes"',
          "queues[0].cluster: must be a name (letters, digits, '-', '_', '.'), not an ARN",
          'queues[1]: must be an object, got "default"',
          "prefectAuth.region: unknown key (known keys: secret, scheme)",
          'prefectAuth.scheme: must be one of bearer, basic, got "token"',
          "network.subnetIds: must hold ids like subnet-0123abcd",
          "network.securityGroupIds: must be a non-empty list",
          "logRetentionDays: must be one of CloudWatch Logs' retention periods",
          "metricNamespace: must be a custom CloudWatch namespace",
          "stackName: must be a CloudFormation stack name",
          "schedule: must be rate(1 minute) (or left out) with fastMode")),
    Case("huge-number-in-queues-string",
         context(queues=json.dumps([entry(targetBacklogPerTask=0)]).replace('"targetBacklogPerTask": 0',
                                                                           f'"targetBacklogPerTask": {HUGE}')),
         ("queues[0].targetBacklogPerTask: must be",)),
    Case("deeply-nested-queues-string", context(queues="[" * 5000 + "]" * 5000),
         ("queues: is a string nested too deeply",)),
    Case("monitoring-detail-unknown", context(monitoringDetail="per-queue"),
         ('monitoringDetail: must be one of auto, queue, pool, got "per-queue"',)),
]


@dataclass(frozen=True)
class Exit:
    code: int
    stdout: str
    stderr: str


def run_case(case: Case, outdir: Path) -> Exit:
    done = run_app(case.context, outdir / case.id, timeout=120)
    return Exit(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def exits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Exit]]:
    """Every case's exit, run four at a time (each app start costs ~2 s of Node and Python)."""
    outdir = tmp_path_factory.mktemp("cdk-out")
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield dict(zip((c.id for c in CASES), pool.map(lambda c: run_case(c, outdir), CASES), strict=True))


def _params() -> list[Any]:
    return [pytest.param(c, id=c.id) for c in CASES]


@pytest.mark.parametrize("case", _params())
def test_bad_config_exits_1_naming_the_field(case: Case, exits: dict[str, Exit]) -> None:
    result = exits[case.id]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.code == 1, (result.code, result.stderr[-3000:])
    lines = result.stderr.splitlines()
    assert HEADER in lines, result.stderr
    problems = [line.removeprefix("  - ") for line in lines[lines.index(HEADER) + 1:] if line.startswith("  - ")]
    assert len(problems) == len(case.problems), problems
    for expected in case.problems:
        assert any(p.startswith(expected) for p in problems), (expected, problems)
    assert result.stdout == ""


def test_there_are_enough_cases() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 15
