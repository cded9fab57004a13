"""Time from a flow run being due to a task running it (on the AWS model), and the worst case to the scale-out
alarm, read from the template.

    PYTHONPATH=lambda:. .venv/bin/python -m bench.time_to_scale [--context cdk.json] [--json]
    PYTHONPATH=lambda:. .venv/bin/python -m bench.time_to_scale --template cdk.out/PrefectEcsAutoscaler.template.json

First, measured on ``harness.aws_model`` (``bench.running_time``): from a run due to a worker running it,
median and p95 over random phases, for ours, ours in fast mode and the recipe, with the latency both share
(AAS action, ECS placement, Fargate start, worker boot and poll) in; and, for a burst scheduled ahead, how long
before its start a worker was up with pre-warm. The service is the configuration's Process-worker one (its
policies from the synthesized template; slots per task = its targetBacklogPerTask).

Then, from the template alone, the worst case to ALARM (what both sides then still pay is left out):

By default the stack is synthesized in-process from the configuration in
``cdk.json`` (``infra.stack.PrefectAutoscalerStack``, every template read back
with ``infra.assembly``: the scaling policies live in nested stacks);
``--template`` reads the root template ``cdk synth`` wrote, and its nested
templates beside it, instead (the Lambda package is then found through the
function's ``aws:asset:path`` metadata beside it).

    worst case = sampling interval + Late-marking delay + datapoints to alarm x alarm period

* sampling interval: how often the backlog is read. The schedule's rate
  (``AWS::Scheduler::Schedule``), unless the configuration packaged into the
  Lambda (``publisher_config.json`` in the asset, parsed with ``parse_config``
  as the handler parses it) samples several times per invocation: fast mode,
  every ``Config.sample_interval_seconds`` (10 s);
* Late-marking delay: 0 for ours, whose TaskShortfall counts a Scheduled run
  as due the moment its start time passes (``DUE_STATE_NAMES`` holds
  "Scheduled"); the baseline publishes only Late runs, which Prefect marks
  15 s after they were due, in a loop that runs every 5 s;
* the alarm: the step scale-out alarm on ``TaskShortfall`` (Period,
  DatapointsToAlarm of EvaluationPeriods). The baseline uses target tracking
  on ``LateFlowRuns``, whose AWS-managed alarm needs 3 one-minute datapoints.

Not counted, the same for both: the time a tick takes to read and publish,
CloudWatch's alarm evaluation lag, and ECS starting the task.

A run scheduled ahead is demand from ``prewarmSeconds`` before its start (the
smallest of the deployed services'), so the same worst case, counted from
there, tells how long before its start the alarm has fired at the latest:

    lead = prewarmSeconds - (sampling interval + datapoints to alarm x alarm period)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import replay_policies as rp
from bench import running_time
from harness.aws_model.deployed import deployed_policies
from infra.assembly import StackTemplates, read
from infra.packaging import CONFIG_FILE_NAME
from prefect_backlog.backlog import DUE_STATE_NAMES
from prefect_backlog.config import parse_config
from prefect_backlog.metrics import TASK_SHORTFALL

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_CONFIG = Path("prefect_backlog") / CONFIG_FILE_NAME

# Prefect's Late marker (server service): a Scheduled run is marked Late once it is
# LATE_RUNS_AFTER_SECONDS overdue, checked in a loop every LOOP_SECONDS.
PREFECT_LATE_AFTER_SECONDS = 15
PREFECT_LATE_LOOP_SECONDS = 5
# The baseline recipe: a 1-minute schedule, target tracking on LateFlowRuns (3 one-minute datapoints).
BASELINE_SAMPLING_SECONDS = 60
BASELINE_PERIOD_SECONDS = 60
BASELINE_DATAPOINTS = 3

TARGET_DEFAULT_SECONDS = 120
TARGET_FAST_SECONDS = 30

_RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class TimeToScale:
    name: str
    sampling_interval_s: float | None  # None: not known
    sampling_source: str
    late_delay_s: float
    period_s: float
    datapoints_to_alarm: int
    alarm: str

    @property
    def worst_case_s(self) -> float | None:
        if self.sampling_interval_s is None:
            return None
        return self.sampling_interval_s + self.late_delay_s + self.datapoints_to_alarm * self.period_s


# --- reading the template -------------------------------------------------------------------


def resources(template: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template.get("Resources", {}).items() if v.get("Type") == kind}


def schedule_seconds(stack: StackTemplates) -> float:
    """The publisher schedule's rate in seconds (there is one schedule; a cron expression is not a rate)."""
    schedules = stack.of_type("AWS::Scheduler::Schedule")
    if len(schedules) != 1:
        raise ValueError(f"expected one AWS::Scheduler::Schedule, found {len(schedules)}")
    expression = next(iter(schedules.values()))["Properties"]["ScheduleExpression"]
    match = _RATE.match(expression)
    if not match:
        raise ValueError(f"schedule {expression!r} is not a rate(...) expression")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2).rstrip("s")]


def step_scale_out_alarms(stack: StackTemplates) -> dict[str, dict[str, Any]]:
    """Alarms on TaskShortfall whose action is a StepScaling policy (of the same template): the scale-out path."""
    alarms = {}
    for template in stack.templates.values():
        step_policies = {k for k, v in resources(template, "AWS::ApplicationAutoScaling::ScalingPolicy").items()
                         if v["Properties"].get("PolicyType") == "StepScaling"}
        for logical_id, alarm in resources(template, "AWS::CloudWatch::Alarm").items():
            props = alarm["Properties"]
            actions = {a.get("Ref") for a in props.get("AlarmActions", []) if isinstance(a, dict)}
            if props.get("MetricName") == TASK_SHORTFALL.name and actions & step_policies:
                alarms[logical_id] = props
    if not alarms:
        raise ValueError(f"no step scaling alarm on {TASK_SHORTFALL.name} in the template")
    return alarms


def package_config(stack: StackTemplates, asset_root: Path) -> dict[str, Any] | None:
    """The configuration packaged into the publisher Lambda (None when the asset is not on disk)."""
    for function in stack.of_type("AWS::Lambda::Function").values():
        path = function.get("Metadata", {}).get("aws:asset:path")
        if path and (asset_root / path / PACKAGE_CONFIG).is_file():
            loaded: dict[str, Any] = json.loads((asset_root / path / PACKAGE_CONFIG).read_text())
            return loaded
    return None


def ours(stack: StackTemplates, packaged: Mapping[str, Any] | None, label: str = "ours") -> TimeToScale:
    """Our worst case, for the slowest step scale-out alarm in the template.

    The sampling interval comes from what is deployed: the packaged config
    read the way the handler reads it (``parse_config``), so fast mode's
    interval is the one ``run_samples`` actually sleeps by, not a copy here.
    """
    deployed = parse_config(packaged) if packaged is not None else None
    sampling: float | None
    if deployed is not None and deployed.samples_per_invocation > 1:
        sampling = deployed.sample_interval_seconds
        source = f"package config: fastMode, {deployed.samples_per_invocation} samples per invocation"
    elif deployed is not None:
        sampling, source = schedule_seconds(stack), "schedule rate"
    else:  # a --template whose Lambda asset is not beside it: fast mode cannot be told apart
        sampling, source = schedule_seconds(stack), "schedule rate; no package config found, wrong if fastMode"
    late_delay = 0.0 if "Scheduled" in DUE_STATE_NAMES else PREFECT_LATE_AFTER_SECONDS + PREFECT_LATE_LOOP_SECONDS

    def cost(props: Mapping[str, Any]) -> float:
        return int(props.get("DatapointsToAlarm", props["EvaluationPeriods"])) * float(props["Period"])

    name, props = max(step_scale_out_alarms(stack).items(), key=lambda item: cost(item[1]))
    return TimeToScale(
        name=f"{label} (step scale-out on TaskShortfall)", sampling_interval_s=sampling, sampling_source=source,
        late_delay_s=late_delay, period_s=float(props["Period"]),
        datapoints_to_alarm=int(props.get("DatapointsToAlarm", props["EvaluationPeriods"])),
        alarm=f"{name}: {props.get('DatapointsToAlarm', props['EvaluationPeriods'])} of "
              f"{props['EvaluationPeriods']} x {props['Period']} s")


def scheduled_lead(row: TimeToScale, packaged: Mapping[str, Any] | None) -> tuple[int, float] | None:
    """(prewarmSeconds, seconds before the run's start by which the alarm has fired at the latest), from the
    packaged config; None without it. Negative: the alarm may fire only after the run is due."""
    if packaged is None or row.sampling_interval_s is None:
        return None
    prewarm = min(s.prewarm_seconds for s in parse_config(packaged).services)
    return prewarm, prewarm - (row.sampling_interval_s + row.datapoints_to_alarm * row.period_s)


def baseline() -> TimeToScale:
    return TimeToScale(
        name="baseline (target tracking on LateFlowRuns)", sampling_interval_s=BASELINE_SAMPLING_SECONDS,
        sampling_source="rate(1 minute)", late_delay_s=PREFECT_LATE_AFTER_SECONDS + PREFECT_LATE_LOOP_SECONDS,
        period_s=BASELINE_PERIOD_SECONDS, datapoints_to_alarm=BASELINE_DATAPOINTS,
        alarm="AWS-managed target-tracking alarm: 3 of 3 x 60 s")


# --- getting a template -----------------------------------------------------------------------


def synthesize(context: Mapping[str, Any]) -> tuple[StackTemplates, dict[str, Any] | None]:
    """Synthesize the stack in-process; its templates and the configuration packaged into the Lambda."""
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    import aws_cdk as cdk  # starts jsii's node process: only when synthesizing

    from infra.assembly import synthesize as synthesize_stack
    from infra.stack import PrefectAutoscalerStack

    config = parse_config(dict(context))
    outdir = Path(tempfile.mkdtemp(prefix="time-to-scale-"))
    try:
        # Asset metadata (what the CLI turns on) says which staged directory is the Lambda's code.
        app = cdk.App(outdir=str(outdir), context={"aws:cdk:enable-asset-metadata": True})
        stack = synthesize_stack(PrefectAutoscalerStack(app, config.stack_name, config=config))
        return stack, package_config(stack, outdir)
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


def load_context(path: Path, fast_mode: bool) -> dict[str, Any]:
    context = dict(json.loads(path.read_text()).get("context", {}))
    if fast_mode:
        context["fastMode"] = True
    return context


def render(rows: Sequence[TimeToScale]) -> str:
    lines = ["| signal | sampling s | Late delay s | datapoints x period s | worst case s | alarm |",
             "|---|---:|---:|---:|---:|---|"]
    for row in rows:
        sampling = "unknown" if row.sampling_interval_s is None else f"{row.sampling_interval_s:g}"
        worst = "unknown" if row.worst_case_s is None else f"{row.worst_case_s:g}"
        lines.append(f"| {row.name} | {sampling} ({row.sampling_source}) | {row.late_delay_s:g} "
                     f"| {row.datapoints_to_alarm} x {row.period_s:g} | {worst} | {row.alarm} |")
    return "\n".join(lines)


def model_rows(stacks: Sequence[tuple[StackTemplates, dict[str, Any] | None]], trials: int
               ) -> tuple[list[running_time.RunningTime], list[running_time.Lead]]:
    """Time to a running task for ours (default, then fast mode: ``stacks`` in that order) and the recipe, on the
    configuration's first Process-worker service (else its first service)."""
    runs: list[running_time.RunningTime] = []
    leads: list[running_time.Lead] = []
    recipe: rp.Policy | None = None
    recipe_slots = 1
    for stack, packaged in stacks:
        if packaged is None:
            continue
        config = parse_config(packaged)
        service = next((s for s in config.services
                        if any(config.queues[i].runs_in_worker_task for i in s.queue_indexes)), config.services[0])
        deployed = deployed_policies(stack.templates.values())[service.resource_id]
        slots = max(1, math.ceil(service.target_backlog_per_task))
        fast = config.samples_per_invocation > 1
        name = "ours, fast mode" if fast else "ours"
        sample = int(config.sample_interval_seconds)
        runs.append(running_time.time_to_running(rp.ours(deployed, slots, 0, name, sample_seconds=sample),
                                                 trials, slots=slots))
        leads.append(running_time.lead(rp.ours(deployed, slots, service.prewarm_seconds, name,
                                               sample_seconds=sample), service.prewarm_seconds, trials, slots=slots))
        if recipe is None:
            recipe = rp.recipe(deployed, 0, slots)
            recipe_slots = slots
    if recipe is not None:
        runs.append(running_time.time_to_running(recipe, trials, slots=recipe_slots))
    return runs, leads


def render_model(runs: Sequence[running_time.RunningTime], leads: Sequence[running_time.Lead]) -> str:
    lines = [f"From a run due to a worker running it, {running_time.BURST_TASKS} tasks' worth of runs on an idle "
             "service (median / p95 over random phases; AWS from harness.aws_model):", "",
             "| policy | first run running s | whole burst running s |", "|---|---:|---:|"]
    for r in runs:
        lines.append(f"| {r.policy} | {r.first_run_running_s.median:g} / {r.first_run_running_s.p95:g} "
                     f"| {r.burst_running_s.median:g} / {r.burst_running_s.p95:g} |")
    lines += ["", "| a burst scheduled ahead | prewarmSeconds | a worker up before its start, s | whole burst running "
              "after its start, s |", "|---|---:|---:|---:|"]
    for lead in leads:
        lines.append(f"| {lead.policy} | {lead.prewarm_seconds} | {lead.worker_up_before_start_s.median:g} / "
                     f"{lead.worker_up_before_start_s.p95:g} | {lead.burst_running_s.median:g} / "
                     f"{lead.burst_running_s.p95:g} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.time_to_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=Path, default=REPO_ROOT / "cdk.json",
                        help="cdk.json whose context is synthesized (default: the example cdk.json)")
    parser.add_argument("--template", type=Path, help="read this synthesized template instead (e.g. from cdk.out)")
    parser.add_argument("--fast-mode", action="store_true",
                        help="only the fast-mode row (by default: the config as given, then with fastMode: true)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--trials", type=int, default=running_time.TRIALS,
                        help=f"random phases per policy on the AWS model (default {running_time.TRIALS})")
    args = parser.parse_args(argv)

    def with_target(stack: StackTemplates,
                    packaged: dict[str, Any] | None) -> tuple[TimeToScale, int, tuple[int, float] | None]:
        fast = packaged is not None and parse_config(packaged).samples_per_invocation > 1
        row = ours(stack, packaged, "ours, fast mode" if fast else "ours")
        return row, TARGET_FAST_SECONDS if fast else TARGET_DEFAULT_SECONDS, scheduled_lead(row, packaged)

    if args.template:
        stack = read(args.template.parent, args.template.name.removesuffix(".template.json"))
        targets = [with_target(stack, package_config(stack, args.template.parent))]
        stacks = [(stack, package_config(stack, args.template.parent))]
    else:  # the configuration as given, then the same with fast mode on
        stacks = [synthesize(load_context(args.context, fast))
                  for fast in ((True,) if args.fast_mode else (False, True))]
        targets = [with_target(*pair) for pair in stacks]
    model_runs, model_leads = model_rows(stacks, args.trials)
    base = baseline()
    rows = [row for row, _, _ in targets] + [base]
    if args.json:
        print(json.dumps({"to_a_running_task": [asdict(r) for r in model_runs],
                          "scheduled_ahead": [asdict(lead) for lead in model_leads],
                          "to_alarm": [asdict(r) | {"worst_case_s": r.worst_case_s} for r in rows]
                          + [{"name": f"{row.name}, a run scheduled ahead", "prewarm_seconds": lead[0],
                              "alarm_fires_before_start_s": lead[1]} for row, _, lead in targets if lead]}, indent=1))
        return 0
    print(render_model(model_runs, model_leads))
    print()
    print("The worst case to the scale-out alarm alone, from the template (AAS, ECS, the task's start and the "
          "worker's poll come after it, for every policy alike):")
    print()
    print(render(rows))
    print()
    print("| a run scheduled ahead | prewarmSeconds | the scale-out alarm has fired, at the latest |")
    print("|---|---:|---|")
    for row, _, lead in targets:
        if lead is not None:
            when = f"{lead[1]:g} s before its start" if lead[1] >= 0 else f"{-lead[1]:g} s after its start"
            print(f"| {row.name.split(' (')[0]} | {lead[0]} | {when} |")
    print(f"| baseline | - | {base.worst_case_s:g} s after its start (it waits for the run to turn Late) |")
    print()
    for row, target, _ in targets:
        if row.worst_case_s is None or base.worst_case_s is None:
            continue
        verdict = "met" if row.worst_case_s <= target else "MISSED"
        print(f"{row.name.split(' (')[0]}: {row.worst_case_s:g} s vs baseline {base.worst_case_s:g} s "
              f"({base.worst_case_s / row.worst_case_s:.2f}x faster); target <= {target} s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
