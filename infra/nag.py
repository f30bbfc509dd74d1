"""cdk-nag acknowledgements, each written next to the resource it covers, with its reason.

cdk-nag runs as a CDK validation plugin (``Validations.of(app).add_plugins(...)``): any finding
not acknowledged stops the synth. :func:`suppress` acknowledges one rule on a construct (and
what it contains) in one line at the resource; a rule that reports one finding per action or
resource (IAM5) is acknowledged per finding, named in ``applies_to``.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Acknowledgment, Stack, Validations
from constructs import IConstruct


def suppress(
    construct: IConstruct,
    rule: str,
    reason: str,
    *,
    applies_to: Sequence[str] = (),
) -> None:
    """Acknowledge ``rule`` (or its findings ``applies_to``) on ``construct`` with the reason."""
    pack = rule.split("-", 1)[0]  # AwsSolutions-S1 → the AwsSolutions plugin's findings
    ids = [f"{pack}::{rule}[{finding}]" for finding in applies_to] or [f"{pack}::{rule}"]
    Validations.of(construct).acknowledge(*(Acknowledgment(id=i, reason=reason) for i in ids))


def logical_id(construct: IConstruct) -> str:
    """The logical id of a construct's resource, as cdk-nag names it in a finding."""
    resource = construct.node.default_child or construct
    return Stack.of(construct).get_logical_id(resource)  # type: ignore[arg-type]
