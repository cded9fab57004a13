"""``pip install .`` into a fresh virtualenv, then the example app (examples/process_worker_service) through the
real CDK CLI with that virtualenv's Python: the installed package, not this tree, builds a stack that holds
the same autoscaler as the standalone app does for the same configuration.

The example's own resources (VPC, cluster, task definition, service) are left out of the comparison; every
other resource of both stacks (scaling, publisher, alarms, dashboard, topic) must match after references
to logical ids are blanked out, and both Lambdas must package the same configuration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from infra.assembly import StackTemplates
from tests.infra.synth import REPO, Templates, cfn_lint_errors, synth_app
from tests.infra.test_cli_context import cli_environment

EXAMPLE = REPO / "examples" / "process_worker_service"
STACK = "PrefectProcessWorkers"
# The example's configuration in cdk.json's form (examples/process_worker_service/app.py says the same in code).
CONTEXT: dict[str, Any] = {
    "stackName": STACK,
    "prefectApiUrl": "https://api.prefect.cloud/api/accounts/00000000-0000-0000-0000-000000000000"
                     "/workspaces/00000000-0000-0000-0000-000000000000",
    "prefectAuth": {"secret": "prefect/cloud-api-key", "scheme": "bearer"},
    "alarmEmail": "prefect-ops@example.com",
    "queues": [{"workPool": "process-pool", "workQueue": "default", "cluster": "prefect",
                "service": "prefect-process-worker", "minCapacity": 0, "maxCapacity": 10,
                "targetBacklogPerTask": 2, "runsInWorkerTask": True}],
}
# Logical id prefixes of what the example defines itself (its worker service and what that needs).
EXAMPLES_OWN = ("Vpc", "Cluster", "WorkerTask", "Workers")
NOT_COMPARED = {"AWS::CDK::Metadata", "AWS::CloudFormation::Stack"}  # the layout differs: see the docstring


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with this repository pip-installed into it (dependencies from pip's cache)."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                             "--disable-pip-version-check", str(REPO)],
                            capture_output=True, text=True, check=False, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def example(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Templates, Path]:
    """The example app synthesized by ``cdk synth`` with the installed package: its templates and cdk.out."""
    out = tmp_path_factory.mktemp("example") / "cdk.out"
    env = {**cli_environment(), "PATH": f"{installed / 'bin'}{os.pathsep}{os.environ['PATH']}",
           # the Lambda's dependencies from this repository's cache, not pip-installed once more
           "PREFECT_ECS_AUTOSCALER_BUILD_DIR": str(REPO / ".build")}
    env.pop("PYTHONPATH")  # nothing from this tree: the example imports what pip installed
    command = [str(REPO / "node_modules" / ".bin" / "cdk"), "synth", "--quiet", "--no-notices", "-o", str(out)]
    result = subprocess.run(command, cwd=EXAMPLE, env=env, capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    templates = {("root" if p.name == f"{STACK}.template.json" else p.name): json.loads(p.read_text())
                 for p in out.glob("*.template.json")}
    return Templates(StackTemplates(STACK, templates, {})), out


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Templates, Path]:
    out = tmp_path_factory.mktemp("standalone") / "cdk.out"
    return synth_app(CONTEXT, out), out


def test_the_installed_package_is_what_the_example_imports(installed: Path) -> None:
    result = subprocess.run([str(installed / "bin" / "python"), "-c",
                             "import prefect_ecs_autoscaler as p, prefect_backlog as b; print(p.__file__); "
                             "print(b.__file__); print(p.__version__)"],
                            cwd=installed.parent, env={"PATH": os.environ["PATH"]},
                            capture_output=True, text=True, check=True)
    library, runtime, version = result.stdout.split()
    site = str(installed / "lib")
    assert library.startswith(site) and runtime.startswith(site)
    assert (Path(runtime).parent / "requirements.txt").is_file()  # the Lambda's pins travel with its code
    assert version in (REPO / "CHANGELOG.md").read_text()


def test_the_example_scales_its_own_service_object(example: tuple[Templates, Path]) -> None:
    templates, _ = example
    root = templates.by_name["root"]["Resources"]
    (service_id,) = [k for k, r in root.items() if r["Type"] == "AWS::ECS::Service"]
    assert root[service_id]["Properties"]["ServiceName"] == "prefect-process-worker"
    assert "DesiredCount" not in root[service_id]["Properties"]  # a deploy leaves scaling's count alone
    (target_id,) = [k for k, r in root.items() if r["Type"] == "AWS::ApplicationAutoScaling::ScalableTarget"]
    assert root[target_id]["Properties"]["ResourceId"] == "service/prefect/prefect-process-worker"
    assert service_id in root[target_id]["DependsOn"]
    assert {name: errors for name, t in templates.by_name.items() if (errors := cfn_lint_errors(t))} == {}


def test_the_example_holds_the_standalone_apps_autoscaler(example: tuple[Templates, Path],
                                                         standalone: tuple[Templates, Path]) -> None:
    (ours, ours_out), (theirs, theirs_out) = example, standalone
    compared = Counter(_comparable(ours, own=EXAMPLES_OWN))
    expected = Counter(_comparable(theirs, own=()))
    assert compared == expected, {"only in the example": list((compared - expected).elements()),
                                  "only in the standalone app": list((expected - compared).elements())}
    kinds = Counter(json.loads(r)["Type"] for r in expected.elements())
    assert kinds["AWS::ApplicationAutoScaling::ScalingPolicy"] == 2 and kinds["AWS::Lambda::Function"] == 1
    assert _packaged_config(ours, ours_out) == _packaged_config(theirs, theirs_out)


def _comparable(templates: Templates, own: tuple[str, ...]) -> list[str]:
    """Each resource as JSON with logical ids blanked (``Ref``, ``Fn::GetAtt``, nested-stack parameters)."""
    found = []
    for _, logical_id, resource in templates.stack.resources():
        if resource["Type"] in NOT_COMPARED or logical_id.startswith(own):
            continue
        found.append(json.dumps({"Type": resource["Type"], "Properties": _blank(resource.get("Properties", {}))},
                                sort_keys=True))
    return found


def _blank(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"Ref"} and not str(value["Ref"]).startswith("AWS::"):
            return {"Ref": "<id>"}
        if set(value) == {"Fn::GetAtt"}:
            return {"Fn::GetAtt": ["<id>", str(value["Fn::GetAtt"][1]).split(".")[0]]}
        return {k: _blank(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_blank(v) for v in value]
    return value


def _packaged_config(templates: Templates, out: Path) -> Any:
    (function,) = templates.stack.of_type("AWS::Lambda::Function").values()
    asset_hash = function["Properties"]["Code"]["S3Key"].removesuffix(".zip")  # cdk.out/asset.<hash>: its files
    package = out / f"asset.{asset_hash}"
    return json.loads((package / "prefect_backlog" / "publisher_config.json").read_text())


def test_the_example_names_the_cdk_cli_the_project_pins() -> None:
    pinned = json.loads((REPO / "package.json").read_text())["devDependencies"]["aws-cdk"]
    assert f"npx cdk@{pinned} " in (EXAMPLE / "app.py").read_text()
