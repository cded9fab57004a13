"""Prints a short, human summary of a synthesized stack: what `cdk deploy` would create.

    python -m infra.summary cdk.out

It reads every template of each stack (the root and its nested stacks,
infra/assembly.py) and what the stack recorded about its layout, and says:
the publisher, how the fleet is monitored and why, the stacks with their
resource counts, the dashboards, the resource types, the counts for the
account quotas a synth cannot see, and the scaling per ECS service. A big
fleet is aggregated (services with the same settings share one line), so the
summary stays a screenful at 1,000 queues.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from . import quotas
from .assembly import ROOT, StackTemplates, read, root_stack_names

SERVICES_LISTED = 12  # one line each up to this many; beyond, grouped by their settings
NAMES_PER_GROUP = 3
STACKS_PER_LINE = 6


def summarize(stack: StackTemplates) -> str:
    layout = stack.layout
    lines = [f"Stack {stack.name}: {layout.get('queues', 0):,} queues in {layout.get('workPools', 0):,} work pools "
             f"on {layout.get('services', 0):,} ECS services"]
    for _, _, resource in stack.resources("AWS::Lambda::Function"):
        props = resource.get("Properties", {})
        lines.append(f"Publisher Lambda: {props.get('Runtime')} on {', '.join(props.get('Architectures', []))}, "
                     f"timeout {props.get('Timeout')} s, {props.get('MemorySize')} MB")
    for _, _, resource in stack.resources("AWS::Scheduler::Schedule"):
        lines.append(f"Schedule: {resource['Properties'].get('ScheduleExpression')}")
    monitoring = layout.get("monitoring")
    if monitoring:
        lines.append(f"Monitoring: per {monitoring['detail']} ({monitoring['reason']})")
    lines += _stacks(stack)
    lines += _dashboards(layout.get("dashboards", []))
    lines.append("Resources (all stacks):")
    kinds = Counter(r["Type"] for _, _, r in stack.resources() if r["Type"] != "AWS::CDK::Metadata")
    lines += [f"  {count:5d}  {kind}" for kind, count in sorted(kinds.items())]
    lines += _quotas(stack)
    lines += _scaling(stack)
    return "\n".join(lines)


def _stacks(stack: StackTemplates) -> list[str]:
    counts = {name: len(t.get("Resources", {})) for name, t in stack.templates.items()}
    sizes = stack.sizes
    nested = [name for name in counts if name != ROOT]
    largest = max(sizes, key=lambda name: sizes[name]) if sizes else None
    lines = [f"Stacks: root ({counts[ROOT]} resources) and {len(nested)} nested stacks; CloudFormation allows "
             f"{quotas.MAX_RESOURCES_PER_STACK} resources and {quotas.MAX_TEMPLATE_BYTES // 1_000_000} MB per template"]
    cells = [f"{name} {counts[name]:3d}" for name in nested]
    lines += ["  " + "   ".join(cells[start:start + STACKS_PER_LINE])
              for start in range(0, len(cells), STACKS_PER_LINE)]
    if nested:
        most = max(nested, key=lambda name: counts[name])
        lines.append(f"  most resources: {most} ({counts[most]}); largest template: {largest} "
                     f"({sizes[largest] / 1000:.0f} KB)" if largest else f"  most resources: {most} ({counts[most]})")
    return lines


def _dashboards(dashboards: list[dict[str, Any]]) -> list[str]:
    if not dashboards:
        return []
    overview, *pages = sorted(dashboards, key=lambda d: d["stack"] != ROOT)
    line = f"Dashboards: {overview['name']} (overview, {overview['widgets']} widgets)"
    if pages:
        line += (f" and {len(pages)} more, {pages[0]['name']}..{pages[-1]['name'].rsplit('-', 1)[-1]} "
                 f"(at most {max(p['widgets'] for p in pages)} widgets each; "
                 f"CloudWatch allows {quotas.MAX_WIDGETS_PER_DASHBOARD})")
    return [line]


def _quotas(stack: StackTemplates) -> list[str]:
    alarms = [r["Properties"] for _, _, r in stack.resources("AWS::CloudWatch::Alarm")]
    insights = sum(1 for a in alarms if any(str(m.get("Expression", "")).startswith("SELECT")
                                            for m in a.get("Metrics", [])))
    tracking = sum(1 for _, _, r in stack.resources("AWS::ApplicationAutoScaling::ScalingPolicy")
                   if r["Properties"].get("PolicyType") == "TargetTrackingScaling")
    composite = sum(1 for _ in stack.resources("AWS::CloudWatch::CompositeAlarm"))
    targets = sum(1 for _ in stack.resources("AWS::ApplicationAutoScaling::ScalableTarget"))
    managed = sum(1 for _ in stack.resources("AWS::IAM::ManagedPolicy"))
    tracking_alarms = quotas.ALARMS_PER_TARGET_TRACKING_POLICY * tracking
    rows = [
        ("metric alarms (standard)", f"{len(alarms) - insights:5d} + {tracking_alarms} that target tracking creates "
                                     "(no quota; each is billed)"),
        ("Metrics Insights alarms", f"{insights:5d} of {quotas.METRICS_INSIGHTS_ALARMS}"),
        ("composite alarms", f"{composite:5d} (no quota; each is billed)"),
        ("ECS scalable targets", f"{targets:5d} of {quotas.ECS_SCALABLE_TARGETS:,}"),
        ("CloudFormation stacks", f"{len(stack.templates):5d} of {quotas.CLOUDFORMATION_STACKS:,} (the root and its "
                                  "nested stacks)"),
        ("IAM managed policies", f"{managed:5d} of {quotas.MANAGED_POLICIES_PER_ROLE} on the publisher's role "
                                 f"(adjustable to {quotas.MAX_MANAGED_POLICIES_PER_ROLE}): ecs:DescribeServices"),
    ]
    return ["Account quotas a synth cannot see (what this configuration uses of AWS's default quotas):",
            *(f"  {label + ':':26s}{value}" for label, value in rows)]


def _scaling(stack: StackTemplates) -> list[str]:
    """One line per ECS service, or for a big fleet one per group of services with the same settings."""
    policies: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)  # by (template, target's logical id)
    for template_name, _, policy in stack.resources("AWS::ApplicationAutoScaling::ScalingPolicy"):
        target_ref = policy["Properties"].get("ScalingTargetId", {}).get("Ref", "")
        policies[(template_name, target_ref)].append(policy["Properties"])
    by_settings: dict[str, list[str]] = defaultdict(list)
    for template_name, logical_id, target in stack.resources("AWS::ApplicationAutoScaling::ScalableTarget"):
        props = target["Properties"]
        kinds = ", ".join(sorted(_describe_policy(p) for p in policies[(template_name, logical_id)]))
        by_settings[f"{props['MinCapacity']}..{props['MaxCapacity']} tasks; {kinds}"].append(props["ResourceId"])
    services = sum(len(ids) for ids in by_settings.values())
    if services <= SERVICES_LISTED:
        return ["Scaling per ECS service:", *sorted(f"  {resource_id}: {settings}" for settings, ids in
                                                    by_settings.items() for resource_id in ids)]
    lines = [f"Scaling per ECS service ({services} services, grouped by their settings):"]
    for settings, ids in sorted(by_settings.items(), key=lambda item: (-len(item[1]), item[0])):
        names = ", ".join(sorted(ids)[:NAMES_PER_GROUP]) + (", ..." if len(ids) > NAMES_PER_GROUP else "")
        lines.append(f"  {len(ids):4d} x {settings} ({names})")
    return lines


def _describe_policy(policy: dict[str, Any]) -> str:
    if policy["PolicyType"] == "TargetTrackingScaling":
        spec = policy["TargetTrackingScalingPolicyConfiguration"]
        metric = spec.get("CustomizedMetricSpecification", {}).get("MetricName", "?")
        return f"target tracking {metric} = {spec['TargetValue']:g}"
    steps = policy["StepScalingPolicyConfiguration"]["StepAdjustments"]
    return f"step scale-out ({len(steps)} steps)"


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "cdk.out")
    names = root_stack_names(out)
    if not names:
        print(f"no template in {out}: run `npx cdk synth` first", file=sys.stderr)
        return 1
    for name in names:
        print(f"== {name}")
        print(summarize(read(out, name)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
