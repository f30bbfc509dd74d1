"""Lambda events and context for tests, built from the fixture events in tests/lambdas/events/.

The fixtures are real AWS shapes (an S3 notification, an SQS batch wrapping one, with an
``s3:TestEvent`` message); these helpers copy them with other buckets and keys::

    handler(s3_event("corpus", ["vectors/run-1/part-0.jsonl.out"]), LambdaContextStub())
    handler(sqs_event("corpus", [["vectors/run-1/a.out"], ["vectors/run-1/b.out"]]), ctx)

and API Gateway HTTP API requests for the search API, a multipart upload among them::

    body, content_type = multipart_form({"q": "knee"}, {"file": ("a.png", png, "image/png")})
    handler(http_api_request("POST", "/search/image", body=body, content_type=content_type), ctx)
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlencode

EVENTS = Path(__file__).resolve().parent.parent / "lambdas" / "events"


def load_event(name: str) -> dict[str, Any]:
    """Return a fixture event by file name (without ``.json``)."""
    return json.loads((EVENTS / f"{name}.json").read_text())


def s3_event(bucket: str, keys: Sequence[str]) -> dict[str, Any]:
    """Return an S3 ``ObjectCreated`` notification for these keys (URL-encoded, as S3 sends)."""
    template = load_event("s3_object_created")["Records"][0]
    records = []
    for key in keys:
        record = copy.deepcopy(template)
        record["s3"]["bucket"]["name"] = bucket
        record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
        record["s3"]["object"]["key"] = quote_plus(key, safe="/")
        records.append(record)
    return {"Records": records}


def sqs_event(bucket: str, messages: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Return an SQS batch: one message per key list, each body an S3 notification."""
    template = load_event("sqs_s3_batch")["Records"][0]
    records = []
    for keys in messages:
        record = copy.deepcopy(template)
        record["messageId"] = str(uuid.uuid4())
        record["body"] = json.dumps(s3_event(bucket, keys))
        records.append(record)
    return {"Records": records}


@dataclass
class LambdaContextStub:
    """The attributes Powertools reads from a Lambda context."""

    function_name: str = "medsearch-index-loader"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = (
        "arn:aws:lambda:us-east-1:123456789012:function:medsearch-index-loader"
    )
    aws_request_id: str = "52fdfc07-2182-454f-963f-5f0f9a621d72"
    function_version: str = "$LATEST"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


API_HOST = "abc123.execute-api.us-east-1.amazonaws.com"


def http_api_request(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]] = (),
    *,
    body: bytes | None = None,
    content_type: str | None = None,
    rid: str = "r-1",
) -> dict[str, Any]:
    """Return an API Gateway HTTP API (payload 2.0) event on the ``$default`` stage.

    ``query`` is a list of pairs, so a parameter may repeat (``rawQueryString`` keeps every value,
    as API Gateway does); a body is sent base64-encoded, as API Gateway passes binary bodies.
    """
    raw_query = urlencode(list(query))
    headers = {"host": API_HOST, "x-forwarded-proto": "https", "x-forwarded-port": "443"}
    if content_type is not None:
        headers["content-type"] = content_type
    if body is not None:
        headers["content-length"] = str(len(body))
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": headers,
        "queryStringParameters": {k: ",".join(v for n, v in query if n == k) for k, _ in query}
        or None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": API_HOST,
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.10",
                "userAgent": "pytest",
            },
            "requestId": rid,
            "routeKey": "$default",
            "stage": "$default",
            "time": "26/Nov/2026:23:00:00 +0000",
            "timeEpoch": 1795734000000,
        },
        "isBase64Encoded": body is not None,
    }
    if body is not None:
        event["body"] = base64.b64encode(body).decode("ascii")
    return event


def multipart_form(
    fields: Mapping[str, str], files: Mapping[str, tuple[str, bytes, str]]
) -> tuple[bytes, str]:
    """Return a ``multipart/form-data`` body and its content type: text ``fields`` and
    ``files`` as name -> (file name, bytes, content type), as a browser's form sends them."""
    boundary = f"----medsearch{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        parts.append(head.encode() + value.encode() + b"\r\n")
    for name, (filename, data, media_type) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {media_type}\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
