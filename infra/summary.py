"""Prints a short, human summary of a synthesized stack: what `cdk deploy` would create."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def summarize(template: dict[str, Any]) -> str:
    resources = template.get("Resources", {})
    lines = ["Resources:"]
    for kind, count in sorted(Counter(r["Type"] for r in resources.values()).items()):
        if kind != "AWS::CDK::Metadata":
            lines.append(f"  {count:3d}  {kind}")
    for resource in resources.values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Lambda::Function":
            lines.append(f"Publisher Lambda: {props.get('Runtime')} on {', '.join(props.get('Architectures', []))}, "
                         f"timeout {props.get('Timeout')} s, {props.get('MemorySize')} MB")
        elif resource["Type"] == "AWS::Scheduler::Schedule":
            lines.append(f"Schedule: {props.get('ScheduleExpression')}")
    lines.append("Scaling per ECS service:")
    policies = [r for r in resources.values() if r["Type"] == "AWS::ApplicationAutoScaling::ScalingPolicy"]
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::ApplicationAutoScaling::ScalableTarget":
            continue
        props = resource["Properties"]
        mine = [p["Properties"] for p in policies
                if p["Properties"].get("ScalingTargetId", {}).get("Ref") == logical_id]
        kinds = ", ".join(sorted(_describe_policy(p) for p in mine))
        lines.append(f"  {props['ResourceId']}: {props['MinCapacity']}..{props['MaxCapacity']} tasks; {kinds}")
    return "\n".join(lines)


def _describe_policy(policy: dict[str, Any]) -> str:
    if policy["PolicyType"] == "TargetTrackingScaling":
        spec = policy["TargetTrackingScalingPolicyConfiguration"]
        metric = spec.get("CustomizedMetricSpecification", {}).get("MetricName", "?")
        return f"target tracking {metric} = {spec['TargetValue']}"
    steps = policy["StepScalingPolicyConfiguration"]["StepAdjustments"]
    return f"step scale-out ({len(steps)} steps)"


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "cdk.out")
    templates = sorted(out.glob("*.template.json"))
    if not templates:
        print(f"no template in {out}: run `npx cdk synth` first", file=sys.stderr)
        return 1
    for path in templates:
        print(f"== {path.name}")
        print(summarize(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
