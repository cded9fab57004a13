"""The backlog publisher: the Lambda, its schedule, its logs and its least-privilege role."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Acknowledgment, Aws, Duration, RemovalPolicy, Stack, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as targets
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from prefect_backlog.config import Config

from .service_access import allow_describe_services

HANDLER = "prefect_backlog.handler.lambda_handler"
RUNTIME = lambda_.Runtime.PYTHON_3_13
# AWS publishes the current Powertools layer for each runtime and architecture here.
POWERTOOLS_LAYER_PARAMETER = "/aws/service/powertools/python/arm64/python3.13/latest"
# Below the 1-minute schedule so invocations never overlap; fast mode's last 10 s sample
# starts at 50 s and needs a few seconds more.
TIMEOUT_SECONDS = 50
FAST_MODE_TIMEOUT_SECONDS = 58
MEMORY_MB = 256


class Publisher(Construct):
    """Runs the publisher on a schedule. Exposes ``function`` for the monitoring construct."""

    def __init__(self, scope: Construct, construct_id: str, *, config: Config, package_dir: Path) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)

        self.log_group = logs.LogGroup(self, "Logs", removal_policy=RemovalPolicy.DESTROY)
        # RetentionDays is an enum of names; the config holds the day count CloudFormation takes.
        cfn_log_group = self.log_group.node.default_child
        assert isinstance(cfn_log_group, logs.CfnLogGroup)
        cfn_log_group.retention_in_days = config.log_retention_days
        # A role of our own instead of the managed AWSLambdaBasicExecutionRole, whose log
        # permissions cover every log group in the account.
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                             description="Prefect backlog publisher: read ECS and a secret, write metrics")
        # The log group's Arn attribute already ends in ":*", which covers its log streams.
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[self.log_group.log_group_arn]))
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["cloudwatch:PutMetricData"], resources=["*"],  # PutMetricData has no resource-level scoping
            conditions={"StringEquals": {"cloudwatch:namespace": config.namespace}}))
        Validations.of(self.role).acknowledge(Acknowledgment(
            id="AwsSolutions-IAM5[Resource::*]",
            reason="cloudwatch:PutMetricData supports no resource-level permissions; the statement is limited to "
                   f"the metric namespace by the condition cloudwatch:namespace = {config.namespace}."))
        # Every configured service by its ARN, in managed policies of their own (IAM's size limits).
        allow_describe_services(self, self.role, config.services)
        self._allow_task_protection(config)

        powertools = lambda_.LayerVersion.from_layer_version_arn(
            self, "Powertools", ssm.StringParameter.value_for_string_parameter(self, POWERTOOLS_LAYER_PARAMETER))
        self.function = lambda_.Function(
            self, "Function",
            description="Publishes Prefect work-queue backlog metrics for ECS autoscaling",
            runtime=RUNTIME,
            architecture=lambda_.Architecture.ARM_64,
            handler=HANDLER,
            code=lambda_.Code.from_asset(str(package_dir)),
            layers=[powertools],
            role=self.role,
            timeout=Duration.seconds(FAST_MODE_TIMEOUT_SECONDS if config.fast_mode else TIMEOUT_SECONDS),
            memory_size=MEMORY_MB,
            log_group=self.log_group,
            tracing=lambda_.Tracing.ACTIVE,
            # One run at a time, no retries, no stale runs: a late sample is worse than none.
            reserved_concurrent_executions=1,
            retry_attempts=0,
            max_event_age=Duration.seconds(60),
            environment={
                "POWERTOOLS_SERVICE_NAME": "prefect-backlog-publisher",
                "POWERTOOLS_LOG_LEVEL": "INFO",
            },
        )
        Validations.of(self.role).acknowledge(Acknowledgment(
            id="AwsSolutions-IAM5[Resource::*]",
            reason="Active X-Ray tracing: CDK grants xray:PutTraceSegments and xray:PutTelemetryRecords, which "
                   "support no resource-level permissions."))
        Validations.of(self.function).acknowledge(Acknowledgment(
            id="AwsSolutions-L1",
            reason=f"The runtime is pinned to {RUNTIME.name}, the version the package's wheels are built for "
                   "(infra/packaging.py) and whose Powertools layer is looked up; move all three together."))
        if config.network is not None:
            self._attach_to_subnets(config)
        if config.auth is not None:
            self.secret = self._secret(config.auth.secret)
            self.secret.grant_read(self.function)

        self.schedule = scheduler.Schedule(
            self, "Schedule",
            description=f"Samples the Prefect backlog for {config.stack_name}",
            schedule=scheduler.ScheduleExpression.expression(config.schedule),
            target=targets.LambdaInvoke(self.function, retry_attempts=0, max_event_age=Duration.seconds(60)),
        )
        # LambdaInvoke gives the scheduler's role (created at stack level) lambda:InvokeFunction on the
        # function and "<function arn>:*", its versions and aliases.
        cfn_function = self.function.node.default_child
        assert isinstance(cfn_function, lambda_.CfnFunction)
        Validations.of(stack).acknowledge(Acknowledgment(
            id=f"AwsSolutions-IAM5[Resource::<{stack.get_logical_id(cfn_function)}.Arn>:*]",
            reason="The scheduler role may invoke only the publisher function; ':*' covers its versions and "
                   "aliases (granted by CDK's LambdaInvoke target)."))

    def _allow_task_protection(self, config: Config) -> None:
        """Read the tasks of the clusters whose services protect busy tasks, and set their protection.

        Scoped to those clusters: ECS offers no narrower resource for a service's tasks, whose IDs are only
        known at run time (ListTasks authorizes on the cluster's container-instance resource and the
        ecs:cluster condition key, per the Service Authorization Reference).
        """
        clusters = sorted({s.cluster for s in config.services if s.task_protection})
        if not clusters:
            return
        # Pseudo parameters, not the stack's env: the ARNs (and the acknowledgements, which name them as
        # cdk-nag renders them) read the same whether or not the synth knows the region.
        ecs_arn = f"arn:{Aws.PARTITION}:ecs:{Aws.REGION}:{Aws.ACCOUNT_ID}"

        def arns(resource: str) -> list[str]:
            return [f"{ecs_arn}:{resource}/{c}/*" for c in clusters]

        cluster_arns = [f"{ecs_arn}:cluster/{c}" for c in clusters]
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["ecs:ListTasks"], resources=arns("container-instance"),
            conditions={"ArnEquals": {"ecs:cluster": cluster_arns}}))
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["ecs:DescribeTasks", "ecs:GetTaskProtection", "ecs:UpdateTaskProtection"],
            resources=arns("task")))
        nag_arn = "arn:<AWS::Partition>:ecs:<AWS::Region>:<AWS::AccountId>"
        for cluster in clusters:
            for resource in ("container-instance", "task"):
                Validations.of(self.role).acknowledge(Acknowledgment(
                    id=f"AwsSolutions-IAM5[Resource::{nag_arn}:{resource}/{cluster}/*]",
                    reason=f"Task protection reads and protects the tasks of cluster {cluster}: their IDs exist only "
                           "at run time, and ECS has no per-service task resource. Limited to the configured "
                           "clusters (and, for ListTasks, the ecs:cluster condition)."))

    def _secret(self, name_or_arn: str) -> secretsmanager.ISecret:
        if name_or_arn.startswith("arn:"):
            return secretsmanager.Secret.from_secret_complete_arn(self, "PrefectAuth", name_or_arn)
        return secretsmanager.Secret.from_secret_name_v2(self, "PrefectAuth", name_or_arn)

    def _attach_to_subnets(self, config: Config) -> None:
        """Place the function in the user's subnets without a VPC lookup (synth stays offline)."""
        assert config.network is not None
        cfn_function = self.function.node.default_child
        assert isinstance(cfn_function, lambda_.CfnFunction)
        cfn_function.vpc_config = lambda_.CfnFunction.VpcConfigProperty(
            subnet_ids=list(config.network.subnet_ids),
            security_group_ids=list(config.network.security_group_ids))
        # ENI management has no resource-level scoping for Create/Describe; AWS documents "*".
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
                     "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"],
            resources=["*"]))
        Validations.of(self.role).acknowledge(Acknowledgment(
            id="AwsSolutions-IAM5[Resource::*]",
            reason="A Lambda function in a VPC manages its network interfaces: ec2:CreateNetworkInterface, "
                   "DescribeNetworkInterfaces and the others support no resource-level scoping (AWS documents '*')."))
