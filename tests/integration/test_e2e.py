"""End to end: the synthesized Lambda package, run as Lambda would run it, against a real Prefect server.

The stack is synthesized (``infra.stack.PrefectAutoscalerStack``) for a config
that points at the real server. From the cloud assembly we take what a deploy
would ship: the function's ``Handler`` and ``Environment`` from the template,
and its code from the staged asset directory (never ``lambda/``). The handler
then runs in a subprocess whose import path is what Lambda provides:

1. the asset (``/var/task``: our package, its config, ``requests``...),
2. a "layer" holding only Powertools and what it needs (the Powertools layer),
3. a "runtime" holding only boto3 and what it needs (the Lambda runtime's boto3),

and nothing else (``python -S``: no site-packages). Its environment is the
template's variables plus fake credentials and ``AWS_ENDPOINT_URL`` pointing at a
``moto_server`` on 127.0.0.1, where ECS, Secrets Manager and CloudWatch live. The
metrics that arrive there are compared with the backlog.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import boto3
import pytest
from packaging.requirements import Requirement

from harness.backlog import DEFAULT_AGENT_POOL, BacklogClient
from harness.ecs_api import EcsApi
from harness.fake_ecs import FakeEcs
from harness.fault_proxy import FaultProxy, Respond, Rule, any_request
from harness.prefect_server import PrefectServer, free_port
from harness.process_worker import (
    ProcessWorker,
    create_local_deployment,
    ecs_worker_name,
    fake_task_id,
    scheduled_now,
    wait_for_state,
    write_flows,
)
from infra.assembly import read
from infra.packaging import build_package
from infra.stack import PrefectAutoscalerStack
from prefect_backlog.config import parse_config

pytestmark = pytest.mark.integration

CLUSTER = "prefect-e2e"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_SESSION_TOKEN": "testing", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}


# --- moto_server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def aws_client(service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


# --- the import path Lambda gives the function ----------------------------------------------------


def _closure(*requirements: str) -> set[str]:
    """Distributions these requirements need, transitively (extras followed, markers evaluated)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        key = name + "".join(f"[{e}]" for e in sorted(req.extras))
        if key in seen:
            continue
        seen.add(key)
        for line in importlib.metadata.requires(name) or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append(sub)
    return {k.split("[")[0] for k in seen}


def _link_distributions(names: set[str], into: Path) -> None:
    """Symlink each distribution's top-level files/packages (and its metadata) from this venv into ``into``."""
    into.mkdir(parents=True)
    for name in sorted(names):
        for file in importlib.metadata.distribution(name).files or []:
            top = file.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            source = Path(str(file.locate())).resolve()
            while source.name != top:
                source = source.parent
            target = into / top
            if not target.exists():
                target.symlink_to(source)


@pytest.fixture(scope="module")
def lambda_path(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(layer, runtime): Powertools as its layer ships it (with the X-Ray SDK), and boto3 as the runtime does."""
    root = tmp_path_factory.mktemp("lambda-path")
    runtime = _closure("boto3")
    layer = _closure("aws-lambda-powertools[tracer]") - runtime
    _link_distributions(layer, root / "layer")
    _link_distributions(runtime, root / "runtime")
    return root / "layer", root / "runtime"


# --- synth --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Synthesized:
    handler: str
    environment: dict[str, str]
    timeout: int
    asset_dir: Path
    templates: dict[str, dict[str, Any]]


def synthesize(context: dict[str, Any], outdir: Path) -> Synthesized:
    config = parse_config(context)
    app = cdk.App(outdir=str(outdir))
    PrefectAutoscalerStack(app, config.stack_name, config=config)
    app.synth()
    templates = read(outdir, config.stack_name)  # the root and its nested stacks; the publisher is in the root
    (function,) = templates.of_type("AWS::Lambda::Function").values()
    props = function["Properties"]
    assets = json.loads((outdir / f"{config.stack_name}.assets.json").read_text())["files"]
    (source,) = [a["source"] for a in assets.values()
                 if any(d["objectKey"] == props["Code"]["S3Key"] for d in a["destinations"].values())]
    return Synthesized(handler=props["Handler"], environment=props["Environment"]["Variables"],
                       timeout=int(props["Timeout"]), asset_dir=outdir / source["path"], templates=templates.templates)


@pytest.fixture
def packaged(tmp_path: Path) -> Iterator[list[Path]]:
    """Package directories built in .build for this test's configs (keyed by a random port): removed after."""
    built: list[Path] = []
    yield built
    for path in built:
        shutil.rmtree(path, ignore_errors=True)


RUN_HANDLER = textwrap.dedent("""
    import importlib, json, sys
    module_name, function_name = sys.argv[1].rsplit(".", 1)
    timeout_ms = int(sys.argv[2]) * 1000

    class Context:
        function_name = "PrefectBacklogPublisher"
        memory_limit_in_mb = 256
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:PrefectBacklogPublisher"
        aws_request_id = "e2e-request"
        def get_remaining_time_in_millis(self):
            return timeout_ms

    function = getattr(importlib.import_module(module_name), function_name)
    event = {"source": "aws.scheduler", "detail-type": "Scheduled Event"}
    result = function(event, Context())
    origins = {name: getattr(sys.modules.get(name), "__file__", None)
               for name in ("prefect_backlog", "requests", "urllib3", "aws_lambda_powertools", "boto3", "botocore")}
    print("E2E-RESULT " + json.dumps({"result": result, "origins": origins, "path": sys.path}))
""")


def invoke(synth: Synthesized, layer: Path, runtime: Path, endpoint: str, *, ecs_endpoint: str | None = None,
           succeeds: bool = True) -> tuple[dict[str, Any], str]:
    """Run the packaged handler as Lambda would; ``ecs_endpoint`` sends ECS calls there instead of moto
    (moto serves none of the task-level ones). ``succeeds`` False: the invocation must fail (Prefect down)."""
    env = {
        **synth.environment,
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        # botocore gzips PutMetricData bodies over 10 KB, and moto's standalone server (5.2.1) answers
        # those with HTTP 500 (it decompresses them twice); real CloudWatch takes them.
        "AWS_DISABLE_REQUEST_COMPRESSION": "true",
        "PYTHONPATH": os.pathsep.join(str(p) for p in (synth.asset_dir, layer, runtime)),
        "PATH": "/usr/bin:/bin",
        "NO_PROXY": "127.0.0.1,localhost",
        **({"AWS_ENDPOINT_URL_ECS": ecs_endpoint} if ecs_endpoint else {}),
    }
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-S", "-c", RUN_HANDLER, synth.handler, str(synth.timeout)],
                          env=env, capture_output=True, text=True, timeout=synth.timeout + 10, check=False,
                          cwd=synth.asset_dir)
    assert time.monotonic() - started < synth.timeout
    if not succeeds:
        assert done.returncode != 0, f"handler did not fail:\n{done.stdout}"
        return {}, done.stdout + done.stderr
    assert done.returncode == 0, f"handler failed:\n{done.stdout}\n{done.stderr}"
    line = next(x for x in done.stdout.splitlines() if x.startswith("E2E-RESULT "))
    return json.loads(line.removeprefix("E2E-RESULT ")), done.stdout


def published(cloudwatch: Any, metric: str, **dimensions: str) -> float | None:
    now = datetime.now(UTC)
    stats = cloudwatch.get_metric_statistics(
        Namespace="Prefect", MetricName=metric, Statistics=["Maximum", "SampleCount"], Period=3600,
        StartTime=now - timedelta(minutes=20), EndTime=now + timedelta(minutes=20),
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()])
    points = stats["Datapoints"]
    if not points:
        return None
    assert len(points) == 1 and points[0]["SampleCount"] == 1, points
    return float(points[0]["Maximum"])


def check_origins(outcome: dict[str, Any], synth: Synthesized, layer: Path, runtime: Path) -> None:
    origins = outcome["origins"]
    asset = str(synth.asset_dir)
    assert origins["prefect_backlog"].startswith(asset + "/prefect_backlog/")
    assert origins["requests"].startswith(asset + "/") and origins["urllib3"].startswith(asset + "/")
    assert origins["aws_lambda_powertools"].startswith(str(layer) + "/")
    assert origins["boto3"].startswith(str(runtime) + "/") and origins["botocore"].startswith(str(runtime) + "/")
    assert not any("site-packages" in p for p in outcome["path"]), outcome["path"]


# --- the tests ----------------------------------------------------------------------------------


def test_packaged_lambda_with_basic_auth_against_prefect3(
        prefect3_auth_server: PrefectServer, moto_endpoint: str, lambda_path: tuple[Path, Path], tmp_path: Path,
        packaged: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    layer, runtime = lambda_path
    s = uuid.uuid4().hex[:8]
    c = BacklogClient(prefect3_auth_server.api_url, auth_string=prefect3_auth_server.auth_string)
    ecs_pool, proc_pool = c.target(f"e2e-ecs-{s}", "default"), c.target(f"e2e-proc-{s}", "default")
    hi_mem = c.target(ecs_pool.pool, "high-memory")
    for _ in range(3):
        c.late_run(ecs_pool.deployment_id)
    c.overdue_scheduled_run(hi_mem.deployment_id)
    c.late_run(proc_pool.deployment_id)
    c.running_run(proc_pool.deployment_id)
    c.pending_run(proc_pool.deployment_id)

    secret = f"prefect/e2e-auth-{s}"
    stack_name = f"E2e3-{s}"
    context = {
        "prefectApiUrl": prefect3_auth_server.api_url,
        "stackName": stack_name,
        "prefectAuth": {"secret": secret, "scheme": "basic"},
        "queues": [
            {"workPool": ecs_pool.pool, "workQueue": "default", "cluster": CLUSTER, "service": f"ecs-{s}",
             "maxCapacity": 4, "targetBacklogPerTask": 2},
            {"workPool": ecs_pool.pool, "workQueue": "high-memory", "cluster": CLUSTER, "service": f"ecs-{s}"},
            {"workPool": proc_pool.pool, "workQueue": "default", "cluster": CLUSTER, "service": f"proc-{s}",
             "maxCapacity": 10, "targetBacklogPerTask": 2, "runsInWorkerTask": True},
        ],
    }
    packaged.append(build_package(parse_config(context)))
    synth = synthesize(context, tmp_path / "cdk.out")

    # What a deploy would ship fits together: the staged asset holds the canonical config of this context.
    assert synth.handler == "prefect_backlog.handler.lambda_handler"
    packaged_config = json.loads((synth.asset_dir / "prefect_backlog" / "publisher_config.json").read_text())
    assert packaged_config == parse_config(context).to_context()
    assert prefect3_auth_server.auth_string not in json.dumps(synth.templates)  # the credential is not shipped

    secrets, ecs = aws_client("secretsmanager", moto_endpoint), aws_client("ecs", moto_endpoint)
    secrets.create_secret(Name=secret, SecretString=prefect3_auth_server.auth_string)
    ecs.create_cluster(clusterName=CLUSTER)
    ecs.register_task_definition(family="w", containerDefinitions=[{"name": "w", "image": "x", "memory": 128}])
    # ecs-{s} is scaling out: 2 tasks desired, 1 of them running yet (moto reads its running count from
    # MOTO_ECS_SERVICE_RUNNING when the service is created; the in-process server shares our environment).
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "1")
    ecs.create_service(cluster=CLUSTER, serviceName=f"ecs-{s}", taskDefinition="w", desiredCount=2)
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "0")
    ecs.create_service(cluster=CLUSTER, serviceName=f"proc-{s}", taskDefinition="w", desiredCount=0)

    outcome, stdout = invoke(synth, layer, runtime, moto_endpoint)

    check_origins(outcome, synth, layer, runtime)
    result = outcome["result"]
    assert (result["samples"], result["queuesRead"], result["queueReadErrors"]) == (1, 3, 0), result
    assert prefect3_auth_server.auth_string not in stdout
    assert '"message":"published"' in stdout.replace(" ", "")  # Powertools' structured log line

    cw = aws_client("cloudwatch", moto_endpoint)
    assert published(cw, "LateFlowRuns", WorkPool=ecs_pool.pool, WorkQueue="default") == 3
    assert published(cw, "DueFlowRuns", WorkPool=ecs_pool.pool, WorkQueue="default") == 3
    assert published(cw, "DueFlowRuns", WorkPool=ecs_pool.pool, WorkQueue="high-memory") == 1
    assert published(cw, "LateFlowRuns", WorkPool=ecs_pool.pool, WorkQueue="high-memory") == 0
    assert published(cw, "RunningFlowRuns", WorkPool=proc_pool.pool, WorkQueue="default") == 1
    assert published(cw, "PendingFlowRuns", WorkPool=proc_pool.pool, WorkQueue="default") == 1
    ecs_dims = {"ClusterName": CLUSTER, "ServiceName": f"ecs-{s}"}
    assert published(cw, "DemandFlowRuns", **ecs_dims) == 4
    assert (published(cw, "RunningTasks", **ecs_dims), published(cw, "DesiredTasks", **ecs_dims)) == (1, 2)
    # Per desired task, as Application Auto Scaling multiplies it: 4 / 2, not 4 / 1 running, so target
    # tracking's ceil(2 desired * 2 / 2 target) = 2 is the need, not 4 while the second task starts.
    assert published(cw, "BacklogPerTask", **ecs_dims) == 2
    assert published(cw, "TaskShortfall", **ecs_dims) == 0  # ceil(4 / 2) = 2 needed, 2 desired
    proc_dims = {"ClusterName": CLUSTER, "ServiceName": f"proc-{s}"}
    assert published(cw, "DemandFlowRuns", **proc_dims) == 3  # 1 Late + 1 Running + 1 Pending, in-task
    assert published(cw, "TaskShortfall", **proc_dims) == 2
    assert published(cw, "QueueReadErrors", Publisher=stack_name) == 0


def test_packaged_lambda_for_prefect2_agents(
        prefect2_server: PrefectServer, moto_endpoint: str, lambda_path: tuple[Path, Path], tmp_path: Path,
        packaged: list[Path]) -> None:
    """No auth, a pool-less agent queue: the packaged config keeps workPool out and the queue is found."""
    layer, runtime = lambda_path
    s = uuid.uuid4().hex[:8]
    c = BacklogClient(prefect2_server.api_url)
    agent = c.agent_target(f"e2e-agent-{s}")
    for _ in range(2):
        c.late_run(agent.deployment_id)
    c.overdue_scheduled_run(agent.deployment_id)
    stack_name = f"E2e2-{s}"
    context = {
        "prefectApiUrl": prefect2_server.api_url, "stackName": stack_name,
        "queues": [{"workQueue": agent.queue, "cluster": CLUSTER, "service": f"agent-{s}", "maxCapacity": 3}],
    }
    packaged.append(build_package(parse_config(context)))
    synth = synthesize(context, tmp_path / "cdk.out")
    packaged_config = json.loads((synth.asset_dir / "prefect_backlog" / "publisher_config.json").read_text())
    assert "workPool" not in packaged_config["queues"][0]

    ecs = aws_client("ecs", moto_endpoint)
    ecs.create_cluster(clusterName=CLUSTER)
    ecs.register_task_definition(family="w", containerDefinitions=[{"name": "w", "image": "x", "memory": 128}])
    ecs.create_service(cluster=CLUSTER, serviceName=f"agent-{s}", taskDefinition="w", desiredCount=0)

    outcome, _ = invoke(synth, layer, runtime, moto_endpoint)

    check_origins(outcome, synth, layer, runtime)
    assert outcome["result"]["queuesRead"] == 1, outcome["result"]
    cw = aws_client("cloudwatch", moto_endpoint)
    assert published(cw, "LateFlowRuns", WorkPool=DEFAULT_AGENT_POOL, WorkQueue=agent.queue) == 2
    assert published(cw, "DueFlowRuns", WorkPool=DEFAULT_AGENT_POOL, WorkQueue=agent.queue) == 3
    dims = {"ClusterName": CLUSTER, "ServiceName": f"agent-{s}"}
    assert published(cw, "TaskShortfall", **dims) == 3  # min(ceil(3 / 1), 3) - 0 desired
    assert published(cw, "BacklogPerTask", **dims) == 3


def test_packaged_lambda_protects_busy_tasks_through_an_outage_and_orphans_no_look_alike(
        prefect3_server: PrefectServer, prefect_venv_for: Callable[[str], Path], moto_endpoint: str,
        lambda_path: tuple[Path, Path], tmp_path: Path, packaged: list[Path]) -> None:
    """Real 3.x Process workers, the deployed handler, ECS's task-level API on loopback (FakeEcs behind it):
    a worker named ``ecs-<task id>`` gets its task protected; a live worker whose name merely contains 32
    hex digits is never taken for a task, so its run is not orphaned nor crashed; with Prefect down the
    busy task's protection is refreshed and nothing is released."""
    layer, runtime = lambda_path
    venv = prefect_venv_for("3")
    s = uuid.uuid4().hex[:8]
    c = BacklogClient(prefect3_server.api_url)
    pool = f"e2e-tp-{s}"
    c.create_pool(pool, type="process")
    flows = write_flows(tmp_path / "flows")
    ecs = FakeEcs()
    ecs.service(CLUSTER, f"proc-{s}")
    task, look_alike = fake_task_id(), f"worker-{uuid.uuid4().hex}"
    ecs.start_task(CLUSTER, f"proc-{s}", task)
    idle = ecs.start_task(CLUSTER, f"proc-{s}")
    ecs.desired[(CLUSTER, f"proc-{s}")] = 2
    workers, runs = [], {}
    with FaultProxy(prefect3_server.base_url) as proxy, EcsApi(ecs) as ecs_api:
        try:
            for queue, name in (("a", ecs_worker_name(task)), ("b", look_alike)):
                c.create_queue(pool, queue)
                deployment = create_local_deployment(c, pool, queue, flows, "sleepy", name=f"sleepy-{queue}")
                workers.append(ProcessWorker(venv, prefect3_server.api_url, pool, name, limit=1, work_queues=[queue],
                                             query_seconds=1, prefetch_seconds=0).start())
                runs[queue] = c.create_run(deployment, scheduled_now(), parameters={"seconds": 600})["id"]
            for run in runs.values():
                wait_for_state(c, run, "RUNNING", timeout=120)
            context = {"prefectApiUrl": proxy.api_url, "stackName": f"E2eTp-{s}", "crashOrphanedRuns": True,
                       "queues": [{"workPool": pool, "workQueue": q, "cluster": CLUSTER, "service": f"proc-{s}",
                                   "maxCapacity": 4, "targetBacklogPerTask": 1, "runsInWorkerTask": True}
                                  for q in ("a", "b")]}
            packaged.append(build_package(parse_config(context)))
            synth = synthesize(context, tmp_path / "cdk.out")

            for _ in range(2):  # twice: an orphan would be crashed on the second look
                outcome, _ = invoke(synth, layer, runtime, moto_endpoint, ecs_endpoint=ecs_api.endpoint)
                result = outcome["result"]
                assert (result["orphanedFlowRuns"], result["crashedFlowRuns"]) == (0, 0), result
                assert ecs.protected(CLUSTER, f"proc-{s}") == {task}
            assert c.get_run(runs["b"])["state"]["type"] == "RUNNING"  # the look-alike's run is left alone
            assert ecs.count("DescribeTasks") == 0  # and never asked about: it names no task

            # Prefect goes down. The busy task's protection, set 4 minutes ago as far as it knows, is refreshed.
            ecs.tasks[task].protected_until = datetime.now(UTC) + timedelta(minutes=1)
            proxy.add(Rule(any_request, Respond(503, '{"detail": "down"}')))
            before = datetime.now(UTC)
            _, output = invoke(synth, layer, runtime, moto_endpoint, ecs_endpoint=ecs_api.endpoint, succeeds=False)
            assert "could not be read; kept 1 task(s) protected and released none" in output
            until = ecs.tasks[task].protected_until
            assert until is not None and until >= before + timedelta(minutes=5), until
            assert idle not in ecs.protected(CLUSTER, f"proc-{s}")
            assert not [a for op, a in ecs.calls if op == "UpdateTaskProtection" and not a["protectionEnabled"]]
        finally:
            for worker in workers:
                worker.cleanup(graceful=False)
