"""Any fleet from one ``cdk deploy``: the nested-stack layout (infra/layout.py) at 1 to 1,000 queues.

The fleets are synthesized once for the module, through ``app.py`` in subprocesses (cdk-nag runs in each:
a finding fails its synth), several at a time, and read back from their ``cdk.out``. Every template is
checked against CloudFormation's limits (500 resources, 1 MB), every dashboard against CloudWatch's
(500 widgets, 100 alarms per alarm status widget), every service for exactly one scalable target with both
policies, and cfn-lint for errors. Adding one queue (and its new service) must move nothing else.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import aws_cloudwatch as cloudwatch

import infra.stack
from infra import layout, summary
from infra.assembly import ROOT
from infra.monitoring.dashboard import Page, pack
from infra.monitoring.plan import AUTO_PER_QUEUE_MAX_QUEUES, plan_monitoring
from prefect_backlog.config import ConfigError, parse_config
from tests.infra.synth import Templates, cfn_lint_errors, synth, synth_app

API = "https://prefect.internal/api"


def fleet(queues: int, services: int, pools: int, *, pool_less: int = 0, **top: Any) -> dict[str, Any]:
    """``queues`` queues spread round-robin over ``services`` ECS services and ``pools`` work pools; the last
    ``pool_less`` of them without workPool."""
    entries = []
    for i in range(queues):
        service = i % services
        entry: dict[str, Any] = {"workQueue": f"q{i}", "cluster": f"cluster-{service % 3}",
                                 "service": f"worker-{service}", "maxCapacity": 2 + service % 7}
        if i < queues - pool_less:
            entry["workPool"] = f"pool-{i % pools}"
        else:
            entry["workQueue"] = f"loose-{i}"
        entries.append(entry)
    return {"prefectApiUrl": API, "stackName": "Fleet", "queues": entries, **top}


def plus_one(context: dict[str, Any]) -> dict[str, Any]:
    """The same fleet with one more queue in an existing pool, on a new ECS service, listed first: every other
    queue and service moves one place down the configuration, which must not move anything in the stacks."""
    extra = {"workPool": "pool-0", "workQueue": "one-more", "cluster": "cluster-new", "service": "worker-new",
             "maxCapacity": 3}
    return {**context, "queues": [extra, *context["queues"]]}


FLEETS: dict[str, dict[str, Any]] = {
    "1 queue": fleet(1, 1, 1),
    "80 queues": fleet(80, 5, 5),  # per queue (auto), 16 queues per service
    "300 queues": fleet(300, 60, 10),  # per pool (auto)
    "1,000 queues": fleet(1000, 200, 20, pool_less=10),  # per pool; the queues without workPool on their own
    "150 queues per queue": fleet(150, 10, 5, monitoringDetail="queue"),  # past auto's threshold, on request
}
FLEETS["1,000 queues + 1"] = plus_one(FLEETS["1,000 queues"])
FLEETS["150 queues per queue + 1"] = plus_one(FLEETS["150 queues per queue"])
# cfn-lint costs about half a second per template whatever its size: the fleets of the issue (the
# per-queue fleet's templates are the 80-queue fleet's kinds, more of them).
LINTED = ["1 queue", "80 queues", "300 queues", "1,000 queues"]


@dataclass(frozen=True)
class Synthesized:
    context: dict[str, Any]
    templates: Templates
    outdir: Path
    seconds: float


@pytest.fixture(scope="module")
def fleets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Synthesized]:
    """Every fleet through app.py, as many at once as there are cores (each is one Node and one Python)."""
    root = tmp_path_factory.mktemp("fleets")

    def run(name: str) -> Synthesized:
        outdir = root / re.sub(r"\W+", "-", name)
        began = time.monotonic()
        templates = synth_app(FLEETS[name], outdir)
        return Synthesized(FLEETS[name], templates, outdir, time.monotonic() - began)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        done = dict(zip(FLEETS, pool.map(run, FLEETS), strict=True))
    for name, result in done.items():
        print(f"synth {name}: {result.seconds:.1f} s")
    return done


@pytest.fixture(scope="module")
def lint(fleets: dict[str, Synthesized]) -> dict[tuple[str, str], list[str]]:
    """cfn-lint errors of every template of the linted fleets, in parallel processes (cfn-lint is CPU-bound)."""
    jobs = [(name, template_name) for name in LINTED for template_name in fleets[name].templates.by_name]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = pool.map(cfn_lint_errors, (fleets[name].templates.by_name[t] for name, t in jobs), chunksize=4)
        return dict(zip(jobs, results, strict=True))


NAMES = list(FLEETS)


def dashboards(templates: Templates) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(template, dashboard name, parsed body) of every dashboard; intrinsic functions read as "X"."""
    for template_name, _, resource in templates.stack.resources("AWS::CloudWatch::Dashboard"):
        body = resource["Properties"]["DashboardBody"]
        parts = body["Fn::Join"][1] if isinstance(body, dict) else [body]
        text = "".join(p if isinstance(p, str) else "X" for p in parts)
        yield template_name, resource["Properties"]["DashboardName"], json.loads(text)


# --- every fleet: CloudFormation's and CloudWatch's limits, one target and two policies per service --------


@pytest.mark.parametrize("name", NAMES)
def test_every_template_holds_at_most_500_resources_and_1_mb(name: str, fleets: dict[str, Synthesized]) -> None:
    result = fleets[name]
    counts = {t: len(body.get("Resources", {})) for t, body in result.templates.by_name.items()}
    assert max(counts.values()) <= 500, counts
    assert max(result.templates.stack.sizes.values()) <= 1_000_000, result.templates.stack.sizes
    # Each template is a file beside the root, as the CLI uploads them.
    assert {p.name for p in result.outdir.glob("*.nested.template.json")} == set(
        result.templates.layout["nestedStacks"].values())


@pytest.mark.parametrize("name", NAMES)
def test_every_dashboard_holds_at_most_500_widgets_and_100_alarms_per_status(
        name: str, fleets: dict[str, Synthesized]) -> None:
    found = list(dashboards(fleets[name].templates))
    assert found
    for _, dashboard_name, body in found:
        assert len(body["widgets"]) <= 500, dashboard_name
        for widget in body["widgets"]:
            if widget["type"] == "alarm":
                assert len(widget["properties"]["alarms"]) <= 100, dashboard_name
    recorded = {d["name"]: d["widgets"] for d in fleets[name].templates.layout["dashboards"]}
    assert recorded == {dashboard_name: len(body["widgets"]) for _, dashboard_name, body in found}


@pytest.mark.parametrize("name", NAMES)
def test_one_scalable_target_with_both_policies_per_service(name: str, fleets: dict[str, Synthesized]) -> None:
    config = parse_config(fleets[name].context)
    stack = fleets[name].templates.stack
    targets = {}
    for template_name, logical_id, target in stack.resources("AWS::ApplicationAutoScaling::ScalableTarget"):
        assert target["Properties"]["ResourceId"] not in targets, target["Properties"]["ResourceId"]
        targets[target["Properties"]["ResourceId"]] = (template_name, logical_id)
    assert set(targets) == {s.resource_id for s in config.services}
    policies = Counter()
    for template_name, _, policy in stack.resources("AWS::ApplicationAutoScaling::ScalingPolicy"):
        props = policy["Properties"]
        policies[(template_name, props["ScalingTargetId"]["Ref"], props["PolicyType"])] += 1
    assert sum(policies.values()) == 2 * len(config.services)
    for template_name, logical_id in targets.values():
        for kind in ("TargetTrackingScaling", "StepScaling"):
            assert policies[(template_name, logical_id, kind)] == 1, (template_name, logical_id, kind)
    assert all(template != ROOT for template, _ in targets.values())  # scaling lives in the nested stacks


@pytest.mark.parametrize("name", NAMES)
def test_every_alarm_is_on_the_overview(name: str, fleets: dict[str, Synthesized]) -> None:
    """By the ARN built from its name: notifying alarms, composites and the step policies' alarms (the parts of a
    composite alarm are reached through it)."""
    templates = fleets[name].templates
    (overview,) = [body for t, dashboard_name, body in dashboards(templates) if dashboard_name == "Fleet"]
    shown = {arn.rsplit(":alarm:", 1)[1] for w in overview["widgets"] if w["type"] == "alarm"
             for arn in w["properties"]["alarms"]}
    alarms = [r["Properties"] for kind in ("AWS::CloudWatch::Alarm", "AWS::CloudWatch::CompositeAlarm")
              for _, _, r in templates.stack.resources(kind)]
    expected = {a["AlarmName"] for a in alarms if not str(a.get("AlarmDescription", "")).startswith("Part of the")}
    assert shown == expected
    assert all("AlarmName" in a for a in alarms)


@pytest.mark.parametrize("name", LINTED)
def test_cfn_lint_finds_no_errors_in_any_template(name: str, lint: dict[tuple[str, str], list[str]]) -> None:
    errors = {template: found for (fleet_name, template), found in lint.items() if fleet_name == name and found}
    assert errors == {}


def test_monitoring_detail_auto_chose_per_queue_then_per_pool(fleets: dict[str, Synthesized]) -> None:
    chosen = {name: fleets[name].templates.layout["monitoring"]["detail"] for name in FLEETS}
    assert chosen == {"1 queue": "queue", "80 queues": "queue", "300 queues": "pool", "1,000 queues": "pool",
                      "1,000 queues + 1": "pool", "150 queues per queue": "queue", "150 queues per queue + 1": "queue"}
    big = fleets["1,000 queues"].templates
    names = [a["Properties"]["AlarmName"] for _, _, a in big.stack.resources("AWS::CloudWatch::Alarm")]
    assert "Fleet oldest Late run in pool pool-7" in names
    assert not [n for n in names if re.search(r" pool-\d+/q\d+$", n)]  # no per-queue alarm for pooled queues
    assert "Fleet oldest Late run loose-995 (any pool)" in names  # a queue without workPool keeps its own
    assert "10 queues without workPool keep their own alarms" in big.layout["monitoring"]["reason"]


def test_a_big_fleet_is_spread_with_room_to_spare(fleets: dict[str, Synthesized]) -> None:
    """1,000 queues on 200 services: each shard well under 500 resources, the root small."""
    counts = fleets["1,000 queues"].templates.layout["resources"]
    shards = {name: count for name, count in counts.items() if name.startswith("Shard")}
    assert len(shards) == layout.SHARD_COUNT
    assert max(shards.values()) <= 150 and counts["root"] <= 100, counts
    per_queue = fleets["150 queues per queue"].templates.layout["resources"]
    assert max(per_queue.values()) <= 150, per_queue


WORST_CASE = {"AWS::Partition": "aws-us-gov", "AWS::Region": "xx-xxxxxxxxx-xx", "AWS::AccountId": "123456789012"}


def resolved(value: Any) -> Any:
    """A policy value with its pseudo parameters at their longest (the partition and region with the most
    characters), as IAM would measure it; any other reference as 100 characters."""
    if isinstance(value, dict) and set(value) == {"Fn::Join"}:
        return "".join(str(resolved(part)) for part in value["Fn::Join"][1])
    if isinstance(value, dict) and set(value) & {"Ref", "Fn::GetAtt"}:
        return WORST_CASE.get(value.get("Ref", ""), "x" * 100)
    if isinstance(value, dict):
        return {k: resolved(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolved(v) for v in value]
    return value


def test_the_publisher_describes_exactly_its_services_within_iam_limits(fleets: dict[str, Synthesized]) -> None:
    """Each service by its ARN (no wildcard), in managed policies of at most 6,144 characters, no more than IAM's
    default 10 per role, and the role's inline policies under 10,240 characters together."""
    result = fleets["1,000 queues"]
    config = parse_config(result.context)
    root = result.templates.by_name[ROOT]["Resources"]
    managed = [r["Properties"] for r in root.values() if r["Type"] == "AWS::IAM::ManagedPolicy"]
    inline = [r["Properties"] for r in root.values() if r["Type"] == "AWS::IAM::Policy"
              and "Publisher" in json.dumps(r["Properties"]["Roles"])]
    described = [arn for policy in managed + inline for statement in policy["PolicyDocument"]["Statement"]
                 if "ecs:DescribeServices" in json.dumps(statement["Action"])
                 for arn in resolved(statement["Resource"] if isinstance(statement["Resource"], list)
                                     else [statement["Resource"]])]
    prefix = f"arn:{WORST_CASE['AWS::Partition']}:ecs:{WORST_CASE['AWS::Region']}:{WORST_CASE['AWS::AccountId']}"
    assert sorted(described) == sorted(f"{prefix}:service/{s.path}" for s in config.services)
    assert 1 < len(managed) <= 10
    for policy in managed:
        assert len(policy["Roles"]) == 1 and "Publisher" in json.dumps(policy["Roles"])
        assert len(json.dumps(resolved(policy["PolicyDocument"]), separators=(",", ":"))) <= 6_144
    assert sum(len(json.dumps(resolved(p["PolicyDocument"]), separators=(",", ":"))) for p in inline) <= 10_240


# --- determinism: one more queue moves nothing ---------------------------------------------------------


@pytest.mark.parametrize("base", ["1,000 queues", "150 queues per queue"])
def test_adding_a_queue_moves_and_changes_no_other_resource(base: str, fleets: dict[str, Synthesized]) -> None:
    """Every resource of the fleet keeps its logical id in the same stack after one more queue on a new service;
    the other services' scaling resources and alarms are unchanged to the property."""
    before, after = fleets[base].templates, fleets[f"{base} + 1"].templates

    def placed(templates: Templates) -> dict[tuple[str, str], dict[str, Any]]:
        return {(t, lid): r for t, lid, r in templates.stack.resources()
                if r["Type"] != "AWS::CloudWatch::Dashboard" and (t, r["Type"]) != (ROOT, "AWS::CloudFormation::Stack")
                and r["Type"] != "AWS::CDK::Metadata"}

    old, new = placed(before), placed(after)
    assert set(old) <= set(new), sorted(set(old) - set(new))[:10]
    scaling = ("AWS::ApplicationAutoScaling::ScalableTarget", "AWS::ApplicationAutoScaling::ScalingPolicy",
               "AWS::CloudWatch::Alarm", "AWS::CloudWatch::CompositeAlarm")
    changed = [key for key, resource in old.items() if resource["Type"] in scaling and new[key] != resource]
    assert changed == []
    added = [new[key] for key in set(new) - set(old)]
    assert {r["Properties"].get("ResourceId") for r in added
            if r["Type"] == "AWS::ApplicationAutoScaling::ScalableTarget"} == {"service/cluster-new/worker-new"}
    # The nested stacks that held something still exist under the same logical ids in the root.
    stacks = {lid for _, lid, _ in before.stack.resources("AWS::CloudFormation::Stack")}
    assert stacks <= {lid for _, lid, _ in after.stack.resources("AWS::CloudFormation::Stack")}


def test_placement_is_a_fixed_function_of_the_names() -> None:
    """Pinned: a change to the hash, its inputs or the shard count would move deployed resources between stacks."""
    config = parse_config(fleet(3, 3, 1))
    assert [layout.service_shard(s) for s in config.services] == [3, 31, 3]
    assert [layout.queue_shard(q) for q in config.queues] == [18, 7, 3]
    assert layout.pool_shard("pool-0") == 30 and layout.SHARD_COUNT == 32
    assert layout.shard_of("service", "a", "b") == layout.shard_of("service", "a", "b") != layout.shard_of(
        "service", "a-b", None)


# --- what make synth prints -------------------------------------------------------------------------------


def test_the_summary_of_a_big_fleet_says_what_was_chosen_and_stays_short(fleets: dict[str, Synthesized]) -> None:
    text = summary.summarize(fleets["1,000 queues"].templates.stack)
    lines = text.splitlines()
    assert len(lines) < 70, text
    assert lines[0] == "Stack Fleet: 1,000 queues in 20 work pools on 200 ECS services"
    assert ('Monitoring: per pool (monitoringDetail "auto": 1,000 queues, more than the 100 that get per-queue '
            "alarms; 10 queues without workPool keep their own alarms") in text
    assert re.search(r"Stacks: root \(\d+ resources\) and \d+ nested stacks", text)
    assert re.search(r"Shard00 +\d+", text) and "most resources: Shard" in text
    assert re.search(r"ECS scalable targets: +200 of 3,000", text)
    assert re.search(r"Metrics Insights alarms: +110 of 200", text)  # 2 per pool, 7 per queue without workPool
    assert re.search(r"composite alarms: +20 ", text)
    assert re.search(r"metric alarms \(standard\): +\d+ \+ 400 that target tracking creates", text)
    assert "Scaling per ECS service (200 services, grouped by their settings):" in text


def test_the_summary_of_a_small_fleet_lists_each_service(fleets: dict[str, Synthesized]) -> None:
    text = summary.summarize(fleets["1 queue"].templates.stack)
    assert 'Monitoring: per queue (monitoringDetail "auto": 1 queues, at most 100 get per-queue alarms)' in text
    assert "  service/cluster-0/worker-0: 0..2 tasks; step scale-out (2 steps), target tracking BacklogPerTask = 1" in (
        text)


# --- the bound: refuse, with the counts, only what the layout cannot hold ----------------------------------


def test_a_shard_past_500_resources_is_refused_with_the_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in limit of 12 resources per stack, so that a small fleet plays a fleet past the layout's bound."""
    monkeypatch.setattr(infra.stack, "MAX_RESOURCES_PER_STACK", 12)
    with pytest.raises(ConfigError) as raised:
        synth(fleet(40, 40, 2, stackName="Bound"))
    problems = raised.value.problems
    assert problems and all(re.match(r"queues: 40 queues on 40 ECS services put \d+ CloudFormation resources in "
                                     r"(nested stack Shard\d\d|the root stack), more than the 12 one stack may hold",
                                     p) for p in problems), problems
    assert "each with its own stackName" in problems[0]


def test_a_template_past_1_mb_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infra.stack, "MAX_TEMPLATE_BYTES", 20_000)
    with pytest.raises(ConfigError, match=r"make the root template [\d,]+ bytes, more than the 20,000 CloudFormation"):
        synth(fleet(2, 1, 1, stackName="Size"))


# --- pure parts: the monitoring choice and the dashboards' pages ---------------------------------------------


@pytest.mark.parametrize(("queues", "pool_less", "detail", "own"), [
    (1, 0, "queue", 1), (AUTO_PER_QUEUE_MAX_QUEUES, 0, "queue", AUTO_PER_QUEUE_MAX_QUEUES),
    (AUTO_PER_QUEUE_MAX_QUEUES + 1, 0, "pool", 0), (AUTO_PER_QUEUE_MAX_QUEUES + 1, 3, "pool", 3),
    (AUTO_PER_QUEUE_MAX_QUEUES, 3, "queue", AUTO_PER_QUEUE_MAX_QUEUES),
])
def test_auto_is_per_queue_up_to_its_threshold(queues: int, pool_less: int, detail: str, own: int) -> None:
    plan = plan_monitoring(parse_config(fleet(queues, 5, 4, pool_less=pool_less)))
    assert (plan.setting, plan.detail, len(plan.queues)) == ("auto", detail, own)
    assert len(plan.pools) == (4 if detail == "pool" else 0)


def test_explicit_monitoring_detail_is_kept_whatever_the_size() -> None:
    assert plan_monitoring(parse_config(fleet(500, 5, 4, monitoringDetail="queue"))).detail == "queue"
    small = plan_monitoring(parse_config(fleet(2, 1, 1, monitoringDetail="pool")))
    assert (small.detail, small.queues, small.pools) == ("pool", (), ("pool-0",))


def rows(*widths: int) -> list[list[cloudwatch.IWidget]]:
    return [[cloudwatch.TextWidget(markdown="x")] * width for width in widths]


def test_a_pool_stays_on_one_dashboard_when_it_fits_and_a_big_one_runs_over() -> None:
    pages = pack([("a", rows(5, 5)), ("b", rows(5, 5, 5)), ("c", rows(*[5] * 5)), ("d", rows(4))], budget=20)
    # b fits a fresh page, not the rest of a's; c fits no page: it starts where b ends and runs over.
    assert [(p.pools, p.widgets) for p in pages] == [(["a"], 10), (["b", "c"], 20), (["c"], 20), (["d"], 4)]
    pages = pack([("a", rows(5)), ("b", rows(*[5] * 9)), ("c", rows(5))], budget=20)
    assert [(p.pools, p.widgets) for p in pages] == [(["a", "b"], 20), (["b"], 20), (["b", "c"], 15)]
    assert pack([], budget=20) == [] and isinstance(pack([("a", rows(1))], 20)[0], Page)
