"""An Amazon OpenSearch Service domain access policy, evaluated the way the service does.

Given the statements of a domain's resource-based policy (as the CDK app writes them) and the
principal a request is signed by, :class:`DomainAccess` decides each data-plane request: the
action is ``es:ESHttp<Method>`` and the resource ``<domain ARN>/<path>`` (the path without its
query string; the root is ``<domain ARN>/``). A request is allowed when an ``Allow`` statement for
the principal matches both, with IAM's wildcards (``*`` any run of characters, ``/`` included;
``?`` one character), and no ``Deny`` statement matches; anything else is refused, as the
service answers 403. Plugged into :class:`tests.support.fake_opensearch.FakeCluster` through its
``access`` attribute, it makes the fake refuse exactly what the stack's policy does not grant.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=512)
def _pattern(glob: str) -> re.Pattern[str]:
    """An IAM glob as a case-sensitive regex (actions are compared lowercased)."""
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    )


def _listed(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _principals(statement: Mapping[str, Any]) -> list[str]:
    principal = statement.get("Principal", {})
    if principal == "*":
        return ["*"]
    return _listed(principal.get("AWS", []))


@dataclass(frozen=True)
class DomainAccess:
    """Which requests ``principal`` may make to the domain ``domain_arn``."""

    statements: Sequence[Mapping[str, Any]]
    domain_arn: str
    principal: str

    def _matches(self, statement: Mapping[str, Any], action: str, resource: str) -> bool:
        if self.principal not in _principals(statement) and "*" not in _principals(statement):
            return False
        actions = _listed(statement.get("Action", []))
        if not any(_pattern(a.lower()).fullmatch(action.lower()) for a in actions):
            return False
        return any(_pattern(r).fullmatch(resource) for r in _listed(statement["Resource"]))

    def refusal(self, method: str, path: str) -> str | None:
        """Why this request is refused, or None when the policy allows it."""
        action = f"es:ESHttp{method.capitalize()}"
        resource = f"{self.domain_arn}/{path.split('?', 1)[0].lstrip('/')}"
        effects = [s["Effect"] for s in self.statements if self._matches(s, action, resource)]
        if "Allow" in effects and "Deny" not in effects:
            return None
        return (
            f"User: {self.principal} is not authorized to perform: {action} on resource: {resource}"
        )
