"""Fixtures for the CDK app's tests: the synthesized templates, readable through :class:`Cfn`.

The stacks themselves come from the session fixtures ``small_stack`` / ``large_stack`` of the
suite's conftest (other tests drive the engine with the permissions they grant).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.cfn import Cfn


@pytest.fixture(scope="session")
def small(small_stack: Any) -> Cfn:
    """The default layout's template."""
    return Cfn(small_stack[1].to_json())


@pytest.fixture(scope="session")
def large(large_stack: Any) -> Cfn:
    """The large layout's template."""
    return Cfn(large_stack[1].to_json())
