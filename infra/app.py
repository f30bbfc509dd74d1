"""The medsearch CDK app: ``cdk synth`` / ``cdk deploy`` run this (see ``cdk.json``).

Options come from CDK context (``cdk.json`` or ``-c key=value``; :mod:`infra.config`); a bad one
ends the synth with one line. ``-c nag=false`` skips the cdk-nag AwsSolutions checks, which run on
every synth otherwise and fail it on any unsuppressed finding.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `cdk` runs this file from infra/: the project root makes `infra` and `medsearch` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from infra.config import ConfigError, DeployConfig, load_config
from infra.functions import MissingPackageError
from infra.stack import MedsearchStack
from infra.training import MissingSourcesError
from medsearch.constants import PROJECT

# Context keys the app reads besides the deployment's options.
APP_KEYS = ("nag", "stackName")


def context_of(app: cdk.App) -> dict[str, object]:
    """The context values the deployment reads; a key it does not know is refused (a typo in
    ``-c domainInstanceTyp=...`` must not deploy the default)."""
    keys = {field.alias for field in DeployConfig.model_fields.values() if field.alias}
    given = app.node.get_all_context()
    # CDK's own keys: feature flags (@aws-cdk/...), lookups and settings (aws:..., cdk-...).
    unknown = sorted(
        key
        for key in given
        if key not in keys
        and key not in APP_KEYS
        and not key.startswith(("@", "aws:", "cdk"))
        and ":" not in key
    )
    if unknown:
        raise ConfigError(
            f"unknown context {', '.join(unknown)} (known: {', '.join(sorted(keys))})"
        )
    return {key: given[key] for key in keys if given.get(key) is not None}


def build(app: cdk.App) -> MedsearchStack:
    """Add the stack (and cdk-nag) to ``app``."""
    config = load_config(context_of(app))
    name = app.node.try_get_context("stackName") or PROJECT
    stack = MedsearchStack(app, name, config=config)
    if str(app.node.try_get_context("nag")).lower() != "false":
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
    return stack


def main() -> int:
    """Synthesize the app; one line and exit 2 on a bad option or a missing build."""
    app = cdk.App()
    try:
        build(app)
    except (ConfigError, MissingPackageError, MissingSourcesError) as exc:
        print(f"medsearch infra: {exc}", file=sys.stderr)
        return 2
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
