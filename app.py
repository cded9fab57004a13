#!/usr/bin/env python3
"""CDK entry point: validate the context once, then build the stack from the result."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lambda"))  # the shared config schema lives there
# jsii prints a banner on every synth that Node 20 is end of life (these machines and many CI images have 20);
# it must be told before aws_cdk starts its Node process.
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from infra.assembly import synthesize
from infra.stack import PrefectAutoscalerStack, check_template_sizes
from prefect_backlog.config import ConfigError, parse_config


def main() -> None:
    app = cdk.App()
    # cdk-nag on every synth: an unacknowledged finding fails it. Acknowledgements sit next to the code they cover.
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    try:
        config = parse_config(app.node.get_all_context())
        # The stack also refuses a configuration beyond what its nested-stack layout holds (500 resources per
        # stack, 500 widgets per dashboard), and the written templates one over CloudFormation's 1 MB.
        stack = PrefectAutoscalerStack(
            app, config.stack_name, config=config,
            env=cdk.Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"),
                                region=os.environ.get("CDK_DEFAULT_REGION")))
        check_template_sizes(synthesize(stack))
    except ConfigError as error:
        print(f"Configuration error (cdk.json context or -c options): {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
