"""The AWS side of a tick: ECS task counts (and, later, tasks) in; CloudWatch metric data out."""
