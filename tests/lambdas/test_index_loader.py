"""The index loader Lambda on JSON fixture events: S3 and SQS-wrapped S3, over moto S3."""

from __future__ import annotations

import json
import logging
from types import ModuleType

import pytest

from medsearch import storage
from tests.support.aws_events import LambdaContextStub, load_event, s3_event, sqs_event
from tests.support.fake_opensearch import FakeCluster

N = 6


def write_run(bucket: str, run_id: str = "run-1") -> list[str]:
    """A 6-record manifest and two output objects of 3 vectors each."""
    records = [
        {"image_id": f"im{i}", "image": f"images/im{i}.png", "caption": f"knee MRI case {i}",
         "modality": "MRI"}
        for i in range(N)
    ]  # fmt: skip
    storage.write_text(
        f"s3://{bucket}/data/{run_id}/manifest.jsonl",
        "".join(json.dumps(r) + "\n" for r in records),
    )
    keys = []
    for part in range(2):
        lines = [
            json.dumps(
                {"image_id": f"im{i}", "vector": [1.0, float(i), 0.5], "model": "m", "dim": 3}
            )
            for i in range(part * 3, part * 3 + 3)
        ]
        key = f"vectors/{run_id}/part-{part}.jsonl.out"
        storage.write_text(f"s3://{bucket}/{key}", "\n".join(lines) + "\n")
        keys.append(key)
    return keys


def test_given_s3_events_when_handled_then_the_run_is_loaded_and_published(
    loader_handler: ModuleType, loader_env: str, cluster: FakeCluster
) -> None:
    keys = write_run(loader_env)
    first = loader_handler.handler(s3_event(loader_env, keys[:1]), LambdaContextStub())
    assert first == {"objects": 1, "published": []}
    second = loader_handler.handler(s3_event(loader_env, keys[1:]), LambdaContextStub())
    assert second == {"objects": 1, "published": ["medsearch-run-1"]}
    assert cluster.aliases == {"medsearch": {"medsearch-run-1"}}
    assert set(cluster.documents("medsearch")) == {f"im{i}" for i in range(N)}


def test_given_the_sqs_fixture_when_handled_then_no_message_fails(
    loader_handler: ModuleType, loader_env: str, cluster: FakeCluster
) -> None:
    # Given the fixture batch: one S3 event for part-0 and one s3:TestEvent message
    write_run(loader_env)
    answer = loader_handler.handler(load_event("sqs_s3_batch"), LambdaContextStub())
    assert answer == {"batchItemFailures": []}
    assert set(cluster.documents("medsearch-run-1")) == {"im0", "im1", "im2"}


def test_given_a_rejected_document_then_only_its_message_is_retried_and_ids_are_logged(
    loader_handler: ModuleType,
    loader_env: str,
    cluster: FakeCluster,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = write_run(loader_env)
    cluster.fail_items(["im4"], status=400)
    # The core's loggers are routed through Powertools (not propagated) at cold start: watch them
    # too (the fixture restores the logger's handlers afterwards).
    loader_handler.get_loader()
    logging.getLogger("medsearch").addHandler(caplog.handler)
    event = sqs_event(loader_env, [[keys[0]], [keys[1]]])
    answer = loader_handler.handler(event, LambdaContextStub())
    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}
    # The failed id is in the structured log, with the request's correlation fields
    failed = [r for r in caplog.records if getattr(r, "failed", None)]
    assert failed and failed[0].failed[0]["image_id"] == "im4"  # type: ignore[attr-defined]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.failed_ids for r in errors] == [["im4"]]  # type: ignore[attr-defined]
    assert len(failed) == 1 and failed[0].name == "medsearch.loader"  # logged once, by the core
    # The metrics are emitted in the embedded metric format
    emitted = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line
    ]
    assert emitted and emitted[-1]["DocumentsFailed"] == [1.0]
    assert emitted[-1]["DocumentsWritten"] == [5.0]
    # When the message comes back, the run completes
    retry = {"Records": [event["Records"][1]]}
    assert loader_handler.handler(retry, LambdaContextStub()) == {"batchItemFailures": []}
    assert cluster.aliases == {"medsearch": {"medsearch-run-1"}}


def test_given_a_direct_s3_event_that_fails_then_the_invocation_raises_for_a_retry(
    loader_handler: ModuleType, loader_env: str
) -> None:
    write_run(loader_env)
    with pytest.raises(RuntimeError, match="did not load completely"):
        loader_handler.handler(
            s3_event(loader_env, ["vectors/run-1/missing.jsonl.out"]), LambdaContextStub()
        )


def test_given_a_publish_event_then_a_partial_run_is_published_by_hand(
    loader_handler: ModuleType, loader_env: str, cluster: FakeCluster
) -> None:
    keys = write_run(loader_env)
    loader_handler.handler(s3_event(loader_env, keys[:1]), LambdaContextStub())
    # Part 1 never arrives: the transform covered part of the data.
    import boto3

    boto3.client("s3", region_name="us-east-1").delete_object(Bucket=loader_env, Key=keys[1])
    event = {"action": "publish", "output_prefix": f"s3://{loader_env}/vectors/run-1/"}
    assert loader_handler.handler(event, LambdaContextStub()) == {"published": False}
    event["force"] = True
    assert loader_handler.handler(event, LambdaContextStub()) == {"published": True}
    assert cluster.aliases == {"medsearch": {"medsearch-run-1"}}


def test_settings_are_parsed_once_per_container(
    loader_handler: ModuleType, loader_env: str
) -> None:
    assert loader_handler.get_loader() is loader_handler.get_loader()
    loader = loader_handler.get_loader()
    assert loader.config.manifest_for("r9") == f"s3://{loader_env}/data/r9/manifest.jsonl"
    assert loader.config.alias == "medsearch"


def test_missing_settings_are_a_clear_error(
    loader_handler: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    monkeypatch.delenv("MEDSEARCH_MANIFEST_URL")
    with pytest.raises(ValidationError, match="manifest_url"):
        loader_handler.IndexLoaderSettings()


def test_sigv4_client_signs_with_the_role_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given credentials in the environment, as Lambda provides them
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDLAMBDA")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token")
    from opensearchpy.helpers.signer import RequestsAWSV4SignerAuth

    from lambdas import opensearch_client

    client = opensearch_client(
        "https://vpc-x.us-east-1.es.amazonaws.com", auth="sigv4", region="us-east-1"
    )
    auth = client.transport.get_connection().session.auth
    assert isinstance(auth, RequestsAWSV4SignerAuth) and auth.service == "es"
