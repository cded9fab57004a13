"""The account quotas a synth cannot see, and IAM's policy limits: what the summary and the role count against.

The adjustable account quotas are AWS's defaults; ``make synth`` prints what a
configuration uses of each (infra/summary.py). The limits CloudFormation and
CloudWatch put on one stack or dashboard are checked at synth (infra/stack.py).
"""

from __future__ import annotations

# Fixed limits per stack (root or nested), per dashboard and per template file: past them a deploy fails late
# and obscurely, so the stack refuses a configuration beyond what the layout holds, with the counts.
MAX_RESOURCES_PER_STACK = 500
MAX_WIDGETS_PER_DASHBOARD = 500
MAX_TEMPLATE_BYTES = 1_000_000  # per template file (root or nested) uploaded to S3; cfn-lint's E1002 says the same

METRICS_INSIGHTS_ALARMS = 200  # per Region, adjustable
ECS_SCALABLE_TARGETS = 3_000  # Application Auto Scaling, ECS, per Region, adjustable
CLOUDFORMATION_STACKS = 2_000  # per Region (nested stacks count), adjustable
ALARMS_PER_TARGET_TRACKING_POLICY = 2  # created and owned by Application Auto Scaling (high and low)
MANAGED_POLICY_CHARACTERS = 6_144  # IAM's limit for one managed policy document (white space not counted)
MANAGED_POLICIES_PER_ROLE = 10  # IAM's default quota of managed policies attached to one role
MAX_MANAGED_POLICIES_PER_ROLE = 20  # ... and what it can be raised to
