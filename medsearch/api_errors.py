"""The API's one error body: ``{"error": {"code": ..., "message": ..., "field": ...}}``.

Every error the API answers (its own, FastAPI's request validation, Starlette's unknown paths and
methods, the body limit, the key check, the last-resort 500) is made here, so clients parse one
shape whatever went wrong. ``code`` is one of a small fixed set (:data:`ERROR_CODES`) that clients
may branch on; ``message`` is for people and may change wording; ``field`` names the parameter
to fix, or is null when no single one is at fault.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

ErrorCode = Literal[
    "invalid_parameter",
    "not_found",
    "method_not_allowed",
    "payload_too_large",
    "unsupported_media_type",
    "rate_limited",
    "unauthorized",
    "unavailable",
    "internal",
]
# What each code means, as the OpenAPI document and the README list them.
ERROR_CODES: dict[str, str] = {
    "invalid_parameter": "a parameter or the request body is wrong (400, 422); field names it",
    "not_found": "no such path or image id (404)",
    "method_not_allowed": "the path exists but not with this method (405; see Allow)",
    "payload_too_large": "the upload or request body is over the limit (413)",
    "unsupported_media_type": "the upload is not a JPEG, PNG or DICOM image (415)",
    "rate_limited": "too many requests for this key; retry after Retry-After seconds (429)",
    "unauthorized": "no API key, or not a valid one (401; 403 from the deployed gateway)",
    "unavailable": "the index or model is not available now; retry later (503)",
    "internal": "a fault in the server, logged on its side (500)",
}
# The code of each status the API answers with; a status not here takes its class's code.
STATUS_CODES: dict[int, ErrorCode] = {
    400: "invalid_parameter",
    401: "unauthorized",
    403: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


class ErrorDetail(BaseModel):
    """What went wrong: a stable code to branch on, a message for people, the field to fix."""

    model_config = ConfigDict(extra="forbid")

    code: ErrorCode = Field(description="; ".join(f"{c}: {d}" for c, d in ERROR_CODES.items()))
    message: str = Field(description="what to fix, in words (the wording may change)")
    field: str | None = Field(
        description="the parameter at fault (q, k, offset, a filter field...), or null"
    )


class Error(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "invalid_parameter",
                        "message": "k must be an integer from 1 to 100, got 500",
                        "field": "k",
                    }
                }
            ]
        },
    )

    error: ErrorDetail


def code_for(status: int) -> ErrorCode:
    """Return the error code of an HTTP status (4xx without its own code: invalid_parameter)."""
    if status in STATUS_CODES:
        return STATUS_CODES[status]
    return "internal" if status >= 500 else "invalid_parameter"


def error_response(
    status: int,
    message: str,
    *,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Return the JSON error response of ``status`` with the stable body."""
    body = {"error": {"code": code_for(status), "message": message, "field": field}}
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)


# The core's messages name the parameter they are about first ("k must be...", "filter
# 'modality': ...", "unknown filter field(s) 'modalty'; ..."): read the field from there.
_NAMED = re.compile(r"^(q|k|offset|alpha|mode|file|image_id)\b(?= (?:must|is|contains|has))")
_FILTER = re.compile(r"^(?:filter|unknown filter field\(s\)) '([^']{1,128})'")


def field_of(message: str) -> str | None:
    """Return the parameter a core error's message is about, or None when it names none."""
    match = _NAMED.match(message) or _FILTER.match(message)
    return match.group(1) if match else None


def validation_field(errors: list[Any]) -> str | None:
    """Return the parameter of the first request-validation error (``["query", "k"]`` -> k)."""
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part not in ("query", "body", "path")]
        if loc:
            return loc[0]
    return None


def openapi_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of an operation's error statuses, each the shared ``Error`` schema."""
    said = {
        400: "malformed request body (code invalid_parameter)",
        401: "no or wrong X-API-Key where keys are configured (code unauthorized)",
        404: "unknown image id or path (code not_found)",
        405: "method not allowed on this path (code method_not_allowed)",
        413: "upload over the size limit (code payload_too_large)",
        415: "upload that is not a JPEG, PNG or DICOM image (code unsupported_media_type)",
        422: "invalid parameter; field names it (code invalid_parameter)",
        429: "over the key's rate; see Retry-After (code rate_limited)",
        500: "server fault (code internal)",
        503: "index or model not available (code unavailable)",
    }
    return {status: {"model": Error, "description": said[status]} for status in statuses}
