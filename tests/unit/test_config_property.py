"""Property: whatever JSON-like context it is given, ``parse_config`` either returns a Config that survives
its canonical form (``to_context``, as packaged into the Lambda) or raises ConfigError. Nothing else:
no TypeError, KeyError, OverflowError... which would reach ``cdk synth`` as a traceback.

Two generators: valid contexts with 0-3 random mutations (a field set to junk or removed, unknown or
misspelled keys, the queue list as a JSON string), so that many inputs parse and every error path is
near; and arbitrary JSON values. Keys come from the schema's own lists (``TOP_LEVEL_KEYS``,
``QUEUE_KEYS``), so keys added later are mutated too.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from prefect_backlog import config as schema
from prefect_backlog.config import ConfigError, parse_config

# Whole numbers a float can hold; larger ones have their own (currently failing) test below.
FLOAT_SAFE = 10**300

scalars = (st.none() | st.booleans() | st.integers(-FLOAT_SAFE, FLOAT_SAFE)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
junk = st.one_of(
    st.none(), st.booleans(), st.integers(-FLOAT_SAFE, FLOAT_SAFE), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    # json.loads accepts NaN and Infinity, so a `-c queues='...'` string can carry them
    st.sampled_from([float("inf"), float("nan"), "", " x ", "3", "-1", "true", "rate(1 minute)", "subnet-0a1b2c3d",
                     "http://x/api", "arn:aws:ecs:us-east-1:1:service/a/b", "AWS/ECS", 0, -1, 2.5, 10**20]))

SERVICES = ("ecs-worker", "process-worker", "agent")
QUEUE_NAMES = ("default", "gpu", "etl", "high-memory", "a.b_c-1")
URLS = ("http://prefect.internal:4200/api", "https://api.prefect.cloud/api/accounts/a1/workspaces/w1",
        "http://127.0.0.1:4200/api/", "https://prefect.example.com/base/api")
OPTIONAL_TOP = {
    "prefectAuth": st.fixed_dictionaries({"secret": st.sampled_from(["prefect/auth", "arn:aws:secretsmanager:x"]),
                                          "scheme": st.sampled_from(["bearer", "basic"])}),
    "network": st.fixed_dictionaries({"subnetIds": st.just(["subnet-0a1b2c3d"]),
                                       "securityGroupIds": st.just(["sg-0123456789abcdef0"])}),
    "metricNamespace": st.sampled_from(["Prefect", "Prefect/Prod"]),
    "logRetentionDays": st.sampled_from([1, 30, 365]),
    "stackName": st.sampled_from(["PrefectEcsAutoscaler", "Other-1"]),
    "fastMode": st.booleans(),
}


@st.composite
def valid_contexts(draw: st.DrawFn) -> dict[str, Any]:
    """A context that should parse: each service's settings given consistently, no duplicate queues."""
    settings = {service: draw(st.fixed_dictionaries(
        {"maxCapacity": st.integers(3, 20)},
        optional={"minCapacity": st.integers(0, 3),
                  "targetBacklogPerTask": st.integers(1, 50) | st.floats(0.1, 100, allow_nan=False)}))
        for service in SERVICES}
    queues: list[dict[str, Any]] = []
    seen: set[tuple[str | None, str]] = set()
    for _ in range(draw(st.integers(1, 4))):
        pool = draw(st.sampled_from([None, "pool-a", "pool-b"]))
        name = draw(st.sampled_from(QUEUE_NAMES))
        if (pool, name) in seen:
            continue
        seen.add((pool, name))
        service = draw(st.sampled_from(SERVICES))
        entry: dict[str, Any] = {"workQueue": name, "cluster": "prefect", "service": service}
        if pool is not None:
            entry["workPool"] = pool
        if draw(st.booleans()) or not any(q["service"] == service for q in queues):
            entry.update(settings[service])
        if draw(st.booleans()):
            entry["runsInWorkerTask"] = draw(st.booleans() | st.sampled_from(["true", "false"]))
        queues.append(entry)
    context: dict[str, Any] = {"prefectApiUrl": draw(st.sampled_from(URLS)), "queues": queues}
    for key, strategy in OPTIONAL_TOP.items():
        if draw(st.booleans()):
            context[key] = draw(strategy)
    if draw(st.booleans()):
        context["@aws-cdk/core:someFeatureFlag"] = True  # CDK's own context, to be left alone
    return context


@st.composite
def contexts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid context with 0-3 mutations."""
    context = draw(valid_contexts())
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["top", "queue", "drop-top", "drop-queue", "unknown", "as-string"]))
        queues = context.get("queues")
        entries = [q for q in queues if isinstance(q, dict)] if isinstance(queues, list) else []
        if kind == "top":
            context[draw(st.sampled_from((*schema.TOP_LEVEL_KEYS, "prefectApiURL", "queue")))] = draw(junk)
        elif kind == "queue" and entries:
            entry = draw(st.sampled_from(entries))
            entry[draw(st.sampled_from((*schema.QUEUE_KEYS, "servcie", "priority")))] = draw(junk)
        elif kind == "queue" and isinstance(queues, list):
            queues.append(draw(junk))
        elif kind == "drop-top" and context:
            context.pop(draw(st.sampled_from(sorted(context))))
        elif kind == "drop-queue" and entries:
            entry = draw(st.sampled_from(entries))
            if entry:
                entry.pop(draw(st.sampled_from(sorted(entry))))
        elif kind == "unknown":
            context[draw(st.text(max_size=10))] = draw(junk)
        elif kind == "as-string" and isinstance(queues, list):
            context["queues"] = json.dumps(queues)
    return context


def check(context: Any) -> None:
    try:
        parsed = parse_config(context)
    except ConfigError as error:
        assert error.problems and all(isinstance(p, str) and ": " in p for p in error.problems), error.problems
        return
    canonical = parsed.to_context()
    packaged = json.loads(json.dumps(canonical, allow_nan=False))  # what the Lambda reads back
    assert parse_config(packaged) == parsed
    assert parse_config(packaged).to_context() == canonical


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contexts())
@example({"prefectApiUrl": "http://p/api",
          "queues": [{"workQueue": "q", "cluster": "c", "service": "s", "maxCapacity": 2}]})
def test_mutated_contexts_parse_or_raise_config_error(context: dict[str, Any]) -> None:
    check(context)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_parses_or_raises_config_error(context: Any) -> None:
    check(context)


def test_the_generator_reaches_valid_configurations() -> None:
    """Guard against a property that only ever sees rejected input."""
    parsed = []

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(contexts())
    def collect(context: dict[str, Any]) -> None:
        with contextlib.suppress(ConfigError):
            parsed.append(parse_config(context))

    collect()
    assert len(parsed) >= 20, f"only {len(parsed)} of 200 generated configurations were valid"


# --- inputs that once escaped as something other than ConfigError -------------------------------

@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=10**309, max_value=10**400) | st.integers(min_value=-(10**400), max_value=-(10**309)))
@example(10**400)
def test_whole_numbers_beyond_float_range_are_a_config_error(huge: int) -> None:
    check({"prefectApiUrl": "http://p/api", "queues": [
        {"workQueue": "q", "cluster": "c", "service": "s", "maxCapacity": 2, "targetBacklogPerTask": huge}]})


def test_deeply_nested_queues_string_is_a_config_error() -> None:
    depth = sys.getrecursionlimit() + 100
    check({"prefectApiUrl": "http://p/api", "queues": "[" * depth + "]" * depth})
