"""The search API's gateway responses: what API Gateway answers itself (a missing or wrong key,
a throttled or over-quota key, an unknown route, a body over its limit, a failed integration)
has the app's error body, and 429s say when to retry. Read from the synthesized template."""

from __future__ import annotations

import json
from typing import Any

import pytest

from medsearch.api_errors import Error
from tests.infra.cfn import Cfn


def gateway_responses(cfn: Cfn) -> dict[str, dict[str, Any]]:
    """The template's gateway responses by type."""
    found = cfn.of_type("AWS::ApiGateway::GatewayResponse").values()
    return {r["Properties"]["ResponseType"]: r["Properties"] for r in found}


@pytest.mark.parametrize(
    ("kind", "status", "code", "retry_after"),
    [
        ("INVALID_API_KEY", "403", "unauthorized", None),
        ("MISSING_AUTHENTICATION_TOKEN", "404", "not_found", None),
        ("THROTTLED", "429", "rate_limited", "'1'"),
        ("QUOTA_EXCEEDED", "429", "rate_limited", "'3600'"),
        ("REQUEST_TOO_LARGE", "413", "payload_too_large", None),
    ],
)
def test_given_the_stack_when_the_gateway_answers_itself_then_the_body_is_the_apps_error(
    small: Cfn, kind: str, status: str, code: str, retry_after: str | None
) -> None:
    response = gateway_responses(small)[kind]
    assert response["StatusCode"] == status
    assert response["RestApiId"] == {"Ref": small.logical_id_of("AWS::ApiGateway::RestApi", "Api")}
    body = json.loads(response["ResponseTemplates"]["application/json"])
    # the same schema the app's OpenAPI document gives every error
    assert Error.model_validate(body).error.code == code and body["error"]["field"] is None
    headers = response.get("ResponseParameters") or {}
    assert headers.get("gatewayresponse.header.Retry-After") == retry_after


def test_given_the_stack_when_the_integration_fails_then_5xx_is_unavailable_with_its_reason(
    small: Cfn,
) -> None:
    template = gateway_responses(small)["DEFAULT_5XX"]["ResponseTemplates"]["application/json"]
    # API Gateway puts the quoted reason in place of the variable
    body = json.loads(
        template.replace("$context.error.messageString", '"Endpoint request timed out"')
    )
    assert Error.model_validate(body).error.code == "unavailable"
    assert body["error"]["message"] == "Endpoint request timed out"


def test_given_the_site_when_the_gateway_answers_itself_then_the_page_may_read_the_answer(
    small: Cfn,
) -> None:
    # Without these a browser hides a 429's body and Retry-After from the site's script.
    distribution = small.logical_id_of("AWS::CloudFront::Distribution", "Distribution")
    responses = gateway_responses(small)
    assert len(responses) == 6
    for kind, response in responses.items():
        headers = response["ResponseParameters"]
        origin = small.resolve(headers["gatewayresponse.header.Access-Control-Allow-Origin"])
        assert origin == f"'https://{distribution}.DomainName'", kind
        assert headers["gatewayresponse.header.Access-Control-Expose-Headers"] == "'Retry-After'"
        assert headers["gatewayresponse.header.Vary"] == "'Origin'"
