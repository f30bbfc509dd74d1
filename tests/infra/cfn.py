"""Reading a synthesized CloudFormation template in tests: resources by type, values resolved.

:func:`resolve` turns the intrinsic functions the stack uses (``Ref`` of pseudo parameters and
resources, ``Fn::GetAtt … Arn``, ``Fn::Join``, ``Fn::Select``/``Fn::Split`` of ARNs) into the
strings CloudFormation would make in :data:`ACCOUNT`/:data:`REGION`, so tests can assert ARNs and
URLs as text, and feed IAM statements to a fake that evaluates them.
"""

from __future__ import annotations

import re
from typing import Any

ACCOUNT = "123456789012"
REGION = "eu-west-1"
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "medsearch",
}
# What GetAtt Arn means for the resource types the tests resolve.
ARN_FORMATS = {
    "AWS::IAM::Role": "arn:aws:iam::{account}:role/{id}",
    "AWS::S3::Bucket": "arn:aws:s3:::{id}",
    "AWS::SQS::Queue": "arn:aws:sqs:{region}:{account}:{id}",
    "AWS::SNS::Topic": "arn:aws:sns:{region}:{account}:{id}",
    "AWS::SecretsManager::Secret": "arn:aws:secretsmanager:{region}:{account}:secret:{id}",
    "AWS::OpenSearchService::Domain": "arn:aws:es:{region}:{account}:domain/{id}",
    "AWS::Logs::LogGroup": "arn:aws:logs:{region}:{account}:log-group:{id}:*",
    "AWS::Lambda::Function": "arn:aws:lambda:{region}:{account}:function:{id}",
}


class Cfn:
    """A synthesized template (``Template.to_json()``) with lookups and value resolution."""

    def __init__(self, template: dict[str, Any]) -> None:
        self.template = template
        self.resources: dict[str, dict[str, Any]] = template["Resources"]

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        """Resources of one type, by logical id."""
        return {k: v for k, v in self.resources.items() if v["Type"] == kind}

    def one(self, kind: str) -> tuple[str, dict[str, Any]]:
        """The logical id and properties of the one resource of a type (asserting it is one)."""
        found = self.of_type(kind)
        assert len(found) == 1, f"{len(found)} {kind} resources: {sorted(found)}"
        logical, resource = next(iter(found.items()))
        return logical, resource.get("Properties", {})

    def props(self, logical_id: str) -> dict[str, Any]:
        """A resource's properties."""
        return self.resources[logical_id].get("Properties", {})

    def arn(self, logical_id: str) -> str:
        """The ARN GetAtt would give for a resource."""
        kind = self.resources[logical_id]["Type"]
        return ARN_FORMATS[kind].format(account=ACCOUNT, region=REGION, id=logical_id)

    def resolve(self, value: Any) -> Any:
        """``value`` with the intrinsic functions the stack uses evaluated."""
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: self.resolve(v) for k, v in value.items()}
        ((key, arg),) = value.items()
        if key == "Ref":
            if arg in PSEUDO:
                return PSEUDO[arg]
            return arg  # a resource's Ref: its logical id stands for its name or id
        if key == "Fn::GetAtt":
            name, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
            if attribute == "Arn":
                return self.arn(name)
            return f"{name}.{attribute}"
        if key == "Fn::Join":
            separator, parts = arg
            return separator.join(str(p) for p in self.resolve(parts))
        if key == "Fn::Sub":
            text = arg if isinstance(arg, str) else arg[0]
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(self.resolve({"Ref": m[1]})), text)
        if key == "Fn::Select":
            index, items = arg
            return self.resolve(items)[int(index)]
        if key == "Fn::Split":
            separator, text = arg
            return str(self.resolve(text)).split(separator)
        return {key: self.resolve(arg)}

    def logical_id_of(self, kind: str, contains: str) -> str:
        """The logical id of the one resource of ``kind`` whose id contains ``contains``."""
        found = [k for k in self.of_type(kind) if contains in k]
        assert len(found) == 1, f"{kind} with {contains!r}: {found}"
        return found[0]
