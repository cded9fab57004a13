"""Your own CDK app: a Prefect Process-worker service on Fargate, scaled on its work queue's backlog.

The worker service is yours (here a minimal one: a VPC, a cluster, one Prefect 3
Process worker per task); the autoscaler attaches to the service object. With
the library installed (``pip install prefect-ecs-autoscaler``, or ``pip install
<path to this repository>``), from this directory:

    npx cdk@2.1148.1 synth    # or deploy (which builds the worker image: needs Docker)

The worker image is Prefect's with ``prefect-ecs-worker`` installed (``worker/Dockerfile`` of this
repository, built as an image asset): it names each worker after its task and protects the task from
scale-in at each claim (README, "Scale-in never stops a busy task"; docs/task-protection.md).
"""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct
from prefect_ecs_autoscaler import PrefectAuth, PrefectBacklogPublisher, WorkerServiceScaling, WorkQueue

PREFECT_API_URL = ("https://api.prefect.cloud/api/accounts/00000000-0000-0000-0000-000000000000"
                   "/workspaces/00000000-0000-0000-0000-000000000000")
API_KEY_SECRET = "prefect/cloud-api-key"  # created once: aws secretsmanager create-secret --name ... --secret-string
RUNS_PER_TASK = 2

# This repository's worker/ (the prefect-ecs-worker distribution and its Dockerfile).
WORKER_SOURCE = Path(__file__).resolve().parents[2] / "worker"
# prefect-ecs-worker takes the options of `prefect worker start` but --name: it names the worker ecs-<task id>,
# so the publisher can tell which task runs which flow, and protects its task at each claim. --limit matches
# target_backlog_per_task.
WORKER_COMMAND = ["prefect-ecs-worker", "--pool", "process-pool", "--type", "process", "--limit", str(RUNS_PER_TASK)]


class ProcessWorkerStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        vpc = ec2.Vpc(self, "Vpc", max_azs=2, nat_gateways=1)
        # Named: the publisher reads the service by its name, so it must be known at synth.
        cluster = ecs.Cluster(self, "Cluster", vpc=vpc, cluster_name="prefect")
        api_key = secretsmanager.Secret.from_secret_name_v2(self, "ApiKey", API_KEY_SECRET)

        task = ecs.FargateTaskDefinition(self, "WorkerTask", cpu=1024, memory_limit_mib=4096)
        # The launcher protects its own task through the ECS agent, which calls these with the task role.
        task.add_to_task_role_policy(iam.PolicyStatement(
            actions=["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"],
            resources=[cdk.Stack.of(self).format_arn(service="ecs", resource="task",
                                                     resource_name=f"{cluster.cluster_name}/*")]))
        task.add_container(
            "worker", image=ecs.ContainerImage.from_asset(str(WORKER_SOURCE)),
            command=WORKER_COMMAND,
            environment={"PREFECT_API_URL": PREFECT_API_URL},
            secrets={"PREFECT_API_KEY": ecs.Secret.from_secrets_manager(api_key)},
            logging=ecs.LogDrivers.aws_logs(stream_prefix="worker", log_retention=logs.RetentionDays.ONE_MONTH))
        # No desired_count: Application Auto Scaling owns it, and a deploy leaves it where scaling put it.
        workers = ecs.FargateService(self, "Workers", cluster=cluster, task_definition=task,
                                     service_name="prefect-process-worker", min_healthy_percent=100)

        scaling = WorkerServiceScaling(
            self, "WorkerScaling", service=workers, min_capacity=0, max_capacity=10,
            target_backlog_per_task=RUNS_PER_TASK,
            queues=[WorkQueue("default", work_pool="process-pool", runs_in_worker_task=True)])
        PrefectBacklogPublisher(self, "Autoscaler", prefect_api_url=PREFECT_API_URL,
                                prefect_auth=PrefectAuth(secret=api_key, scheme="bearer"), services=[scaling],
                                alarm_email="prefect-ops@example.com")


app = cdk.App()
ProcessWorkerStack(app, "PrefectProcessWorkers")
app.synth()
