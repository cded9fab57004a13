"""Synthesizes the stack for a test config (shared by the infra tests; synth takes seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk.assertions import Template
from cdk_nag import AwsSolutionsChecks
from cfnlint.api import ManualArgs, lint

from infra.stack import PrefectAutoscalerStack
from prefect_backlog.config import parse_config

REPO = Path(__file__).resolve().parents[2]


def nag_checked_app() -> cdk.App:
    """An app whose synth runs cdk-nag's AWS Solutions checks, as app.py's does: a finding fails it."""
    app = cdk.App()
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app


def synth(context: dict[str, Any]) -> tuple[PrefectAutoscalerStack, Template]:
    app = nag_checked_app()
    config = parse_config(context)
    stack = PrefectAutoscalerStack(app, config.stack_name, config=config)
    return stack, Template.from_stack(stack)


def cfn_lint_errors(template: dict[str, Any]) -> list[str]:
    """cfn-lint's errors (E rules) for a template: the nearest thing to a deploy without an AWS account."""
    matches = lint(json.dumps(template), config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    return [f"{m.rule.id}: {m.message}" for m in matches if m.rule.id.startswith("E")]
