"""The CDK app synthesized in tests, for the small (default) and the large layout.

Synthesis needs no AWS account and no network: the Lambda packages and SageMaker archives are the
folders ``make lambda-package`` / ``make sagemaker-sources`` built (``make test`` builds them
first). The stack is environment-agnostic, as ``cdk deploy`` synthesizes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# jsii warns on every start that the machine's Node.js is past its end of life; the CLI pins
# the Node it supports, and the warning would drown the tests' output.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk
from aws_cdk.assertions import Template

from infra.config import load_config
from infra.stack import MedsearchStack

# Context of a production layout, as `cdk deploy -c key=value` strings.
LARGE = {
    "domainInstanceType": "r7g.large.search",
    "domainInstanceCount": "3",
    "domainVolumeGiB": "100",
    "domainMasterType": "m7g.large.search",
    "domainZones": "3",
    "domainStandby": "true",
    "loaderConcurrency": "4",
    "apiClients": "acme,globex",
    "alarmTopicArn": "arn:aws:sns:eu-west-1:123456789012:on-call",
    "modelPrefix": "models/run-7/onnx",
    "onnxInt8": "true",
    "domainAdminRoleArns": "arn:aws:iam::123456789012:role/ops",
}


CDK_JSON = Path(__file__).resolve().parents[2] / "infra" / "cdk.json"


def app_context() -> dict[str, Any]:
    """The context ``cdk.json`` gives the app (feature flags): tests synthesize what deploys."""
    return dict(json.loads(CDK_JSON.read_text())["context"])


def synth(context: dict[str, Any]) -> tuple[MedsearchStack, Template]:
    """The stack for ``context`` and its synthesized template."""
    app = cdk.App(context=app_context())
    stack = MedsearchStack(app, "medsearch", config=load_config(context))
    return stack, Template.from_stack(stack)
