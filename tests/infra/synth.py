"""Synthesizes the stack for a test config and reads back every template (shared by the infra tests).

The stack's resources are spread over a root and nested stacks (infra/layout.py), so tests query all of
its templates through :class:`Templates`, never the root alone. Two ways in: :func:`synth` in process
(``aws_cdk.assertions`` matchers), and :func:`synth_app` through ``app.py`` in a subprocess, as the CLI
runs it (several at once: the big fleets), read back from its ``cdk.out``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cached_property
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk.assertions import Template
from cdk_nag import AwsSolutionsChecks
from cfnlint.api import ManualArgs, lint

from infra.assembly import ROOT, StackTemplates, read, synthesize
from infra.stack import PrefectAutoscalerStack, check_template_sizes
from prefect_backlog.config import parse_config

REPO = Path(__file__).resolve().parents[2]


class Templates:
    """Every template of one synthesized stack, queried like ``aws_cdk.assertions.Template`` across all of them."""

    def __init__(self, stack_templates: StackTemplates) -> None:
        self.stack = stack_templates
        self._assertions: dict[str, Template] = {}

    @property
    def by_name(self) -> dict[str, dict[str, Any]]:
        return self.stack.templates

    @property
    def layout(self) -> dict[str, Any]:
        return self.stack.layout

    def template(self, name: str = ROOT) -> Template:
        if name not in self._assertions:
            self._assertions[name] = Template.from_json(self.by_name[name])
        return self._assertions[name]

    @cached_property
    def root(self) -> Template:
        return self.template(ROOT)

    def holding(self, kind: str) -> list[str]:
        """The templates that hold at least one resource of type ``kind``."""
        return [name for name, t in self.by_name.items()
                if any(r.get("Type") == kind for r in t.get("Resources", {}).values())]

    def find_resources(self, kind: str, props: Any = None) -> dict[str, Any]:
        """Matching resources of every template, by logical id (unique across the templates)."""
        found: dict[str, Any] = {}
        for name in self.holding(kind):
            matches = self.template(name).find_resources(kind, props) if props is not None else {
                k: v for k, v in self.by_name[name]["Resources"].items() if v.get("Type") == kind}
            assert not set(matches) & set(found), f"logical ids in two templates: {set(matches) & set(found)}"
            found.update(matches)
        return found

    def resource_count_is(self, kind: str, count: int) -> None:
        assert len(self.find_resources(kind)) == count, (kind, len(self.find_resources(kind)), count)

    def has_resource_properties(self, kind: str, props: Any) -> None:
        """Passes when some template has such a resource; otherwise raises what the first one said."""
        errors = []
        for name in self.holding(kind):
            try:
                self.template(name).has_resource_properties(kind, props)
                return
            except Exception as error:  # jsii raises JSIIError with the matcher's explanation
                errors.append(error)
        raise errors[0] if errors else AssertionError(f"no {kind} in any template")

    def lint_errors(self) -> dict[str, list[str]]:
        """cfn-lint's errors per template, only the templates that have some."""
        found = {name: cfn_lint_errors(template) for name, template in self.by_name.items()}
        return {name: errors for name, errors in found.items() if errors}


def nag_checked_app() -> cdk.App:
    """An app whose synth runs cdk-nag's AWS Solutions checks, as app.py's does: a finding fails it."""
    app = cdk.App()
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app


def synth(context: dict[str, Any]) -> tuple[PrefectAutoscalerStack, Templates]:
    """In process: the stack and its templates (synthesized once, cdk-nag checked, sizes checked as app.py does)."""
    app = nag_checked_app()
    config = parse_config(context)
    stack = PrefectAutoscalerStack(app, config.stack_name, config=config)
    templates = synthesize(stack)
    check_template_sizes(templates)
    return stack, Templates(templates)


def app_environment(context: dict[str, Any], outdir: Path) -> dict[str, str]:
    """What the CDK CLI hands app.py: the context as JSON and the output directory; nothing that reaches AWS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDK_", "AWS_"))}
    return {**env, "CDK_CONTEXT_JSON": json.dumps(context), "CDK_OUTDIR": str(outdir),
            "AWS_DEFAULT_REGION": "us-east-1", "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "lambda"), str(REPO)])}


def run_app(context: dict[str, Any], outdir: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """``app.py`` in a subprocess, as ``cdk synth`` runs it (cdk-nag and every check included)."""
    return subprocess.run([sys.executable, str(REPO / "app.py")], cwd=REPO, env=app_environment(context, outdir),
                          capture_output=True, text=True, timeout=timeout, check=False)


def synth_app(context: dict[str, Any], outdir: Path) -> Templates:
    """``app.py`` in a subprocess; every template it wrote to ``outdir``."""
    result = run_app(context, outdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return Templates(read(outdir, parse_config(context).stack_name))


def cfn_lint_errors(template: dict[str, Any]) -> list[str]:
    """cfn-lint's errors (E rules) for a template: the nearest thing to a deploy without an AWS account."""
    matches = lint(json.dumps(template), config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    return [f"{m.rule.id}: {m.message}" for m in matches if m.rule.id.startswith("E")]
