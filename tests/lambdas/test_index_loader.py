"""The index loader Lambda on JSON fixture events (tests/lambdas/events/), over moto S3.

SQS batches of S3 notifications (one wrapped by SNS, one for a URL-encoded key, poison bodies,
the ``s3:TestEvent``), direct S3 and EventBridge events, and the manual publish request.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from medsearch import storage
from medsearch.constants import INDEX_LOADER_SERVICE, METRICS_NAMESPACE
from tests.support.aws_events import LambdaContextStub, load_event, s3_event, sqs_event
from tests.support.fake_opensearch import FakeCluster

N = 6
PARTS = ("part-0.jsonl.out", "part-1.jsonl.out")
ROOT = Path(__file__).resolve().parents[2]


def write_run(bucket: str, run_id: str = "run-1", names: tuple[str, str] = PARTS) -> list[str]:
    """A 6-record manifest and two output objects of 3 vectors each (``names`` under
    ``vectors/<run id>/``); returns their keys."""
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
    for part, name in enumerate(names):
        lines = [
            json.dumps(
                {"image_id": f"im{i}", "vector": [1.0, float(i), 0.5], "model": "m", "dim": 3}
            )
            for i in range(part * 3, part * 3 + 3)
        ]
        key = f"vectors/{run_id}/{name}"
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
    assert emitted[-1]["MessagesFailed"] == [1.0]
    # under the names the stack gives Powertools
    assert emitted[-1]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == METRICS_NAMESPACE
    assert emitted[-1]["service"] == INDEX_LOADER_SERVICE
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
    assert loader_handler.handler(event, LambdaContextStub()) == {
        "published": False,
        "merging": False,
    }
    event["force"] = True
    assert loader_handler.handler(event, LambdaContextStub()) == {
        "published": True,
        "merging": False,
    }
    assert cluster.aliases == {"medsearch": {"medsearch-run-1"}}


def test_settings_are_parsed_once_per_container(
    loader_handler: ModuleType, loader_env: str
) -> None:
    assert loader_handler.get_loader() is loader_handler.get_loader()
    loader = loader_handler.get_loader()
    assert loader.config.manifest_for("r9") == f"s3://{loader_env}/data/r9/manifest.jsonl"
    assert loader.config.alias == "medsearch"


def test_given_a_publish_max_drop_in_the_environment_then_the_loader_uses_it(
    loader_handler: ModuleType, loader_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    assert loader_handler.IndexLoaderSettings().loader_config().max_drop == 0.1
    monkeypatch.setenv("MEDSEARCH_PUBLISH_MAX_DROP", "0.5")
    assert loader_handler.IndexLoaderSettings().loader_config().max_drop == 0.5
    monkeypatch.setenv("MEDSEARCH_PUBLISH_MAX_DROP", "2")
    with pytest.raises(ValidationError, match="publish_max_drop"):
        loader_handler.IndexLoaderSettings()


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


# --- SQS batches through Powertools' batch processor -------------------------------------------


def message_ids(event: dict[str, object]) -> list[str]:
    return [record["messageId"] for record in event["Records"]]  # type: ignore[attr-defined]


def failures(*ids: str) -> dict[str, list[dict[str, str]]]:
    return {"batchItemFailures": [{"itemIdentifier": i} for i in ids]}


def test_given_a_batch_where_one_object_fails_then_exactly_its_message_comes_back(
    loader_handler: ModuleType, loader_env: str, cluster: FakeCluster
) -> None:
    # Given the two objects of a run in one batch (the fixture), one document of part 1 rejected
    write_run(loader_env)
    event = load_event("sqs_s3_two_objects")
    first, second = message_ids(event)
    cluster.fail_items(["im4"], status=400)
    # When the batch is handled
    answer = loader_handler.handler(event, LambdaContextStub())
    # Then exactly part 1's message is reported, and part 0's documents are in
    assert answer == failures(second)
    assert {"im0", "im1", "im2"} <= set(cluster.documents("medsearch-run-1"))
    assert "medsearch" not in cluster.aliases
    # When the whole batch comes back (part 0 again, a redelivery), nothing fails and the run
    # is published within the same invocation
    cluster.fail_items([], status=400)
    assert loader_handler.handler(event, LambdaContextStub()) == failures()
    assert cluster.aliases == {"medsearch": {"medsearch-run-1"}}
    assert first != second


def test_given_a_batch_where_every_message_fails_then_all_are_reported_not_raised(
    loader_handler: ModuleType, loader_env: str
) -> None:
    # Given no objects at all: every message of the batch fails
    event = load_event("sqs_s3_two_objects")
    # Then the answer still lists them (Powertools would raise by default)
    assert loader_handler.handler(event, LambdaContextStub()) == failures(*message_ids(event))


def test_given_a_url_encoded_key_then_it_is_decoded_exactly_once(
    loader_handler: ModuleType, loader_env: str, cluster: FakeCluster
) -> None:
    # Given an object named with a space and a plus; S3 sends the key as 'part+0+%28c%2B%2B%29...'
    name = "part 0 (c++).jsonl.out"
    key = write_run(loader_env, names=(name, "part-1.jsonl.out"))[0]
    event = load_event("sqs_s3_encoded_key")
    assert "%2B" in json.loads(event["Records"][0]["body"])["Records"][0]["s3"]["object"]["key"]
    # When handled, then the object is found (decoding twice would read 'part 0 (c  )')
    assert loader_handler.handler(event, LambdaContextStub()) == failures()
    assert set(cluster.documents("medsearch-run-1")) == {"im0", "im1", "im2"}
    report = json.loads(storage.read_text(f"s3://{loader_env}/{key}.loaded.json"))
    assert report["url"] == f"s3://{loader_env}/vectors/run-1/{name}" and report["written"] == 3


def test_given_an_s3_notification_that_sns_wrapped_then_its_object_is_loaded(
    loader_handler: ModuleType, loader_env: str, cluster: FakeCluster
) -> None:
    write_run(loader_env)
    event = load_event("sqs_sns_s3")
    assert json.loads(event["Records"][0]["body"])["Type"] == "Notification"
    assert loader_handler.handler(event, LambdaContextStub()) == failures()
    assert set(cluster.documents("medsearch-run-1")) == {"im3", "im4", "im5"}


def test_given_malformed_bodies_then_only_those_messages_fail_and_their_ids_are_logged(
    loader_handler: ModuleType,
    loader_env: str,
    cluster: FakeCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a batch: a body that is not JSON, JSON that is no S3 notification, and a good message
    write_run(loader_env)
    event = load_event("sqs_malformed_bodies")
    broken, foreign, _ = message_ids(event)
    with caplog.at_level(logging.ERROR):
        answer = loader_handler.handler(event, LambdaContextStub())
    # Then the two poison messages come back (the queue's DLQ keeps them after their tries), and
    # the good one is loaded
    assert answer == failures(broken, foreign)
    assert set(cluster.documents("medsearch-run-1")) == {"im0", "im1", "im2"}
    # And each is logged by its id, with the reason and nothing of the body
    logged = {
        r.message_id: r.errors  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "message is not an S3 notification"
    }
    assert logged == {
        broken: ["message body is not JSON"],
        foreign: ["not an S3 notification"],
    }


def test_given_a_notification_of_another_event_type_then_it_is_acknowledged_unloaded(
    loader_handler: ModuleType, loader_env: str, cluster: FakeCluster
) -> None:
    write_run(loader_env)
    event = load_event("sqs_s3_object_removed")
    assert loader_handler.handler(event, LambdaContextStub()) == failures()
    assert "medsearch-run-1" not in cluster.indexes


# --- direct events ------------------------------------------------------------------------------


def test_given_an_eventbridge_object_created_event_then_its_object_is_loaded(
    loader_handler: ModuleType, loader_env: str, cluster: FakeCluster
) -> None:
    write_run(loader_env)
    answer = loader_handler.handler(load_event("eventbridge_object_created"), LambdaContextStub())
    assert answer == {"objects": 1, "published": []}
    assert set(cluster.documents("medsearch-run-1")) == {"im3", "im4", "im5"}


def test_given_an_event_that_is_no_notification_then_the_invocation_fails(
    loader_handler: ModuleType, loader_env: str
) -> None:
    with pytest.raises(ValueError, match="not an S3 notification"):
        loader_handler.handler({"hello": "world"}, LambdaContextStub())


# --- Powertools configuration ---------------------------------------------------------------------


def test_powertools_names_come_from_the_constants_and_the_level_from_the_environment() -> None:
    # Given a cold start whose environment names another service and namespace (the stack sets
    # both from the same constants; the constructor arguments win, so they cannot drift)
    env = {
        **os.environ,
        "POWERTOOLS_SERVICE_NAME": "another-service",
        "POWERTOOLS_METRICS_NAMESPACE": "AnotherNamespace",
        "POWERTOOLS_LOG_LEVEL": "DEBUG",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    code = (
        "import json, lambdas.index_loader.handler as h; print(json.dumps(["
        "h.logger.service, h.tracer.service, h.metrics.namespace, h.metrics.service, "
        "h.logger.log_level]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    service, traced, namespace, dimension, level = json.loads(done.stdout.splitlines()[-1])
    # Then logs, traces and metrics carry the constants' names
    assert [service, traced, dimension] == [INDEX_LOADER_SERVICE] * 3
    assert namespace == METRICS_NAMESPACE
    # And the log level is the deployment's to choose
    assert level == logging.DEBUG
