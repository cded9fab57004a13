"""Our scalable target and policies as the synthesized template deploys them, as AWS-model specs.

Everything here is read from the CloudFormation templates (the root and its nested stacks): capacities,
target tracking's target value, metric and cooldowns, the step policy's adjustments and cooldown, and its
alarm (threshold, comparison, period, M of N, TreatMissingData, statistic). The AWS behaviour that acts on
them is ``harness.aws_model``'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.aws_model.alarms import AlarmSpec, Comparison, TreatMissing
from harness.aws_model.autoscaling import ScalableTarget
from harness.aws_model.step_scaling import StepAdjustment, StepScalingSpec
from harness.aws_model.target_tracking import TargetTrackingSpec


@dataclass(frozen=True)
class Deployed:
    resource_id: str
    target: ScalableTarget
    tracking: TargetTrackingSpec
    tracking_metric: str
    step: StepScalingSpec
    step_alarm: AlarmSpec
    step_metric: str


def deployed_policies(templates: Iterable[Mapping[str, Any]]) -> dict[str, Deployed]:
    """Every scalable target of the templates with its two policies, by ``ResourceId``."""
    found: dict[str, Deployed] = {}
    for template in templates:
        resources: Mapping[str, Any] = template.get("Resources", {})

        def of_type(kind: str, resources: Mapping[str, Any] = resources) -> dict[str, Mapping[str, Any]]:
            return {rid: r["Properties"] for rid, r in resources.items() if r["Type"] == kind}

        alarms = list(of_type("AWS::CloudWatch::Alarm").values())
        policies = of_type("AWS::ApplicationAutoScaling::ScalingPolicy")
        for target_id, target in of_type("AWS::ApplicationAutoScaling::ScalableTarget").items():
            mine = {pid: p for pid, p in policies.items() if p["ScalingTargetId"] == {"Ref": target_id}}
            tracking = next(p["TargetTrackingScalingPolicyConfiguration"] for p in mine.values()
                            if p["PolicyType"] == "TargetTrackingScaling")
            step_id, step = next((pid, p["StepScalingPolicyConfiguration"]) for pid, p in mine.items()
                                 if p["PolicyType"] == "StepScaling")
            if step["AdjustmentType"] != "ChangeInCapacity":
                raise ValueError(f"the model's step scaling is ChangeInCapacity, not {step['AdjustmentType']}")
            alarm = next(a for a in alarms if {"Ref": step_id} in a["AlarmActions"])
            found[target["ResourceId"]] = Deployed(
                resource_id=target["ResourceId"],
                target=ScalableTarget(int(target["MinCapacity"]), int(target["MaxCapacity"])),
                tracking=TargetTrackingSpec(target_value=float(tracking["TargetValue"]),
                                            scale_out_cooldown=float(tracking.get("ScaleOutCooldown", 300)),
                                            scale_in_cooldown=float(tracking.get("ScaleInCooldown", 300)),
                                            disable_scale_in=bool(tracking.get("DisableScaleIn", False))),
                tracking_metric=tracking["CustomizedMetricSpecification"]["MetricName"],
                step=StepScalingSpec(
                    threshold=float(alarm["Threshold"]), cooldown=float(step.get("Cooldown", 300)),
                    adjustments=tuple(StepAdjustment(lower=s.get("MetricIntervalLowerBound"),
                                                     upper=s.get("MetricIntervalUpperBound"),
                                                     change=int(s["ScalingAdjustment"]))
                                      for s in step["StepAdjustments"])),
                step_alarm=AlarmSpec(threshold=float(alarm["Threshold"]),
                                     comparison=Comparison(alarm["ComparisonOperator"]),
                                     period=int(alarm["Period"]), evaluation_periods=int(alarm["EvaluationPeriods"]),
                                     datapoints_to_alarm=int(alarm.get("DatapointsToAlarm",
                                                                       alarm["EvaluationPeriods"])),
                                     treat_missing=TreatMissing(alarm.get("TreatMissingData", "missing")),
                                     statistic=alarm["Statistic"]),
                step_metric=alarm["MetricName"],
            )
    return found
