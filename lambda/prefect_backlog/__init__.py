"""Publishes Prefect work-queue backlogs as CloudWatch metrics for ECS autoscaling."""
