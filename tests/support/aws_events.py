"""Lambda events and context for tests, built from the fixture events in tests/lambdas/events/.

The fixtures are real AWS shapes (an S3 notification, an SQS batch wrapping one, with an
``s3:TestEvent`` message); these helpers copy them with other buckets and keys::

    handler(s3_event("corpus", ["vectors/run-1/part-0.jsonl.out"]), LambdaContextStub())
    handler(sqs_event("corpus", [["vectors/run-1/a.out"], ["vectors/run-1/b.out"]]), ctx)
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

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
