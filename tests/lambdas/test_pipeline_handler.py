"""The pipeline Lambda (plan, gate, unpack) and the loader's status and publish actions, on the
events the state machine sends, over moto S3 and the in-memory OpenSearch cluster."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from medsearch import storage
from medsearch.errors import ConfigError, InvalidInputError, SearchIndexError
from medsearch.pipeline import GateFailed
from tests.lambdas.test_index_loader import N, write_run
from tests.support.aws_events import LambdaContextStub
from tests.support.fake_opensearch import FakeCluster

ARTIFACTS = "artifacts"
CAPTION = "sagittal knee MRI, torn meniscus"

PIPELINE_ENV = {
    "MEDSEARCH_ARTIFACTS_BUCKET": ARTIFACTS,
    "MEDSEARCH_DATA_BUCKET": "corpus",
    "MEDSEARCH_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/medsearch-jobs",
    "MEDSEARCH_TRAINING_IMAGE": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2",
    "MEDSEARCH_INFERENCE_IMAGE": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2",
    "MEDSEARCH_TRAINING_SOURCE": f"s3://{ARTIFACTS}/sources/training_job.tar.gz",
    "MEDSEARCH_BATCH_SOURCE": f"s3://{ARTIFACTS}/sources/batch_vectorize.tar.gz",
}


@pytest.fixture
def pipeline(monkeypatch: pytest.MonkeyPatch, s3_bucket: str) -> Iterator[ModuleType]:
    """The pipeline handler module with the stack's environment, a fresh container state, a
    corpus of three records in the data bucket and an empty artifacts bucket."""
    from functools import lru_cache

    import boto3

    import lambdas.pipeline.handler as handler

    for name, value in PIPELINE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    core = logging.getLogger("medsearch")
    for attribute in ("propagate", "handlers", "level"):
        monkeypatch.setattr(core, attribute, getattr(core, attribute))
    monkeypatch.setattr(
        handler, "get_defaults", lru_cache(maxsize=1)(handler.get_defaults.__wrapped__)
    )
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=ARTIFACTS)
    records = [
        {"image_id": f"im{i}", "image": f"images/im{i}.png", "caption": f"{CAPTION} {i}"}
        for i in range(3)
    ]
    storage.write_text(
        f"s3://{s3_bucket}/data/manifest.jsonl", "".join(json.dumps(r) + "\n" for r in records)
    )
    yield handler


def invoke(handler: ModuleType, event: dict[str, Any]) -> Any:
    return handler.handler(event, LambdaContextStub())


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def evaluation(recall: float) -> dict[str, Any]:
    return {"model": "m", "split": "test", "text_to_image": {"r@10": recall}}


def trained(plan: dict[str, Any], recall: float) -> None:
    """What the training job leaves: model.tar.gz (model + onnx/) and output.tar.gz (report)."""
    report = json.dumps(evaluation(recall)).encode()
    storage.write_bytes(plan["reportUrl"], tar_gz({"evaluation.json": report}))
    storage.write_bytes(
        plan["modelDataUrl"],
        tar_gz({"config.json": b"{}", "onnx/onnx_manifest.json": b"{}", "onnx/text.onnx": b"t"}),
    )


# --- plan, gate, unpack ---------------------------------------------------------------------------


def test_given_a_plan_event_then_the_plan_comes_back_and_the_run_inputs_are_written(
    pipeline: ModuleType, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Watch the function's logger and the core's (routed through Powertools at cold start)
    pipeline.get_defaults()
    for name in (pipeline.PIPELINE_SERVICE, "medsearch"):
        monkeypatch.setattr(logging.getLogger(name), "handlers", [caplog.handler])
        monkeypatch.setattr(logging.getLogger(name), "level", logging.INFO)
    event = {"action": "plan", "input": {"training": {"spot": False}}, "execution": "exec-1"}
    plan = invoke(pipeline, event)
    assert plan["run"] == "exec-1" and plan["records"] == 3
    assert plan["training"]["jobName"] == "medsearch-train-exec-1"
    assert plan["training"]["spot"] is False
    assert plan["training"]["hyperparameters"]["sagemaker_region"] == "eu-west-1"
    assert plan["manifest"] == "s3://corpus/data/manifest.jsonl"
    assert storage.read_text(plan["runManifest"]).count("\n") == 3
    assert storage.read_text(plan["transform"]["inputPrefix"] + "part-00000.jsonl").count("\n") == 3
    # The plan is logged by run id and count; no caption reaches the logs
    planned = [r for r in caplog.records if r.getMessage() == "run planned"]
    assert {(r.run, r.records) for r in planned} == {("exec-1", 3)}  # type: ignore[attr-defined]
    assert caplog.records and all(
        CAPTION not in json.dumps(vars(r), default=str) for r in caplog.records
    )


def test_given_a_plan_event_without_input_then_the_defaults_apply(pipeline: ModuleType) -> None:
    plan = invoke(pipeline, {"action": "plan", "execution": "exec-2"})
    assert plan["training"]["spot"] is True and plan["gate"] == {"minRecallAt10": 0.0}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"action": "plan", "input": {}}, "needs 'execution'"),
        ({"action": "plan", "input": {"gate": {"min": 1}}, "execution": "e"}, "input.gate.min"),
        ({"action": "train"}, "action: 'train' is not one of plan, gate, unpack"),
        ({}, "action: None"),
        ({"action": "gate"}, "plan: must be the plan step's output"),
        ({"action": "unpack", "plan": {"run": "r"}}, "plan.modelPrefix"),
    ],
)
def test_given_a_bad_event_then_the_invocation_fails_with_one_line(
    pipeline: ModuleType, event: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInputError) as raised:
        invoke(pipeline, event)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_given_a_good_model_and_no_live_one_then_the_gate_passes_and_keeps_the_report(
    pipeline: ModuleType,
) -> None:
    plan = invoke(pipeline, {"action": "plan", "execution": "exec-3"})
    trained(plan, 0.61)
    answer = invoke(pipeline, {"action": "gate", "plan": plan})
    assert answer == {"passed": True, "recallAt10": 0.61, "liveRecallAt10": None}
    kept = json.loads(storage.read_text(f"s3://{ARTIFACTS}/models/exec-3/evaluation.json"))
    assert kept == evaluation(0.61)


def test_given_a_better_live_model_then_the_gate_raises_and_still_keeps_the_report(
    pipeline: ModuleType,
) -> None:
    plan = invoke(pipeline, {"action": "plan", "execution": "exec-4"})
    trained(plan, 0.412)
    live = {
        "run": "old",
        "model": f"s3://{ARTIFACTS}/models/old/onnx",
        "evaluation": evaluation(0.455),
    }
    storage.write_text(f"s3://{ARTIFACTS}/models/live.json", json.dumps(live))
    with pytest.raises(GateFailed, match=r"R@10 0\.412 is below the live model's 0\.455"):
        invoke(pipeline, {"action": "gate", "plan": plan})
    assert storage.read_text(f"s3://{ARTIFACTS}/models/exec-4/evaluation.json")
    # And a threshold in the input fails a model with no live rival
    weaker = {**live, "evaluation": evaluation(0.1)}
    storage.write_text(f"s3://{ARTIFACTS}/models/live.json", json.dumps(weaker))
    strict = invoke(
        pipeline, {"action": "plan", "input": {"gate": {"minRecallAt10": 0.5}}, "execution": "x"}
    )
    trained(strict, 0.412)
    with pytest.raises(GateFailed, match=r"0\.412 is below the minimum 0\.5"):
        invoke(pipeline, {"action": "gate", "plan": strict})


def test_given_an_unpack_event_then_the_onnx_folder_is_where_the_api_reads_it(
    pipeline: ModuleType,
) -> None:
    plan = invoke(pipeline, {"action": "plan", "execution": "exec-5"})
    trained(plan, 0.5)
    answer = invoke(pipeline, {"action": "unpack", "plan": plan})
    assert answer == {"onnx": f"s3://{ARTIFACTS}/models/exec-5/onnx", "files": 2}
    assert storage.read_bytes(f"s3://{ARTIFACTS}/models/exec-5/onnx/text.onnx") == b"t"


# --- settings -----------------------------------------------------------------------------------


def test_settings_are_parsed_once_per_container_and_the_environment_sets_defaults(
    pipeline: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSEARCH_TRAIN_SPOT", "false")
    monkeypatch.setenv("MEDSEARCH_HYPERPARAMETERS", '{"epochs": 3, "freeze_text": true}')
    monkeypatch.setenv("MEDSEARCH_MIN_RECALL_AT_10", "0.25")
    monkeypatch.setenv("MEDSEARCH_RECORDS_PER_PART", "2")
    monkeypatch.setenv("MEDSEARCH_TRAIN_INSTANCE_TYPE", "ml.g6.xlarge")
    monkeypatch.setenv("MEDSEARCH_TRAIN_MAX_RUNTIME_SECONDS", "7200")
    monkeypatch.setenv("MEDSEARCH_TRAIN_MAX_WAIT_SECONDS", "9000")
    monkeypatch.setenv("MEDSEARCH_DEFAULT_MANIFEST", "s3://corpus/data/manifest.jsonl")
    assert pipeline.get_defaults() is pipeline.get_defaults()
    plan = invoke(pipeline, {"action": "plan", "execution": "exec-6"})
    hyperparameters = plan["training"]["hyperparameters"]
    assert (hyperparameters["epochs"], hyperparameters["freeze_text"]) == ("3", "true")
    assert plan["training"]["spot"] is False and plan["training"]["instanceType"] == "ml.g6.xlarge"
    assert (plan["training"]["maxRuntimeSeconds"], plan["training"]["maxWaitSeconds"]) == (
        7200,
        9000,
    )
    assert plan["gate"] == {"minRecallAt10": 0.25}
    assert plan["transform"]["inputPrefix"].endswith("/jobs/exec-6/transform-input/")
    assert storage.read_text(plan["transform"]["inputPrefix"] + "part-00001.jsonl").count("\n") == 1


def test_a_missing_setting_is_a_clear_error(
    pipeline: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    monkeypatch.delenv("MEDSEARCH_SAGEMAKER_ROLE_ARN")
    with pytest.raises(ValidationError, match="sagemaker_role_arn"):
        invoke(pipeline, {"action": "plan", "execution": "e"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MEDSEARCH_SAGEMAKER_ROLE_ARN", "medsearch-jobs", "role_arn"),
        ("MEDSEARCH_TRAINING_SOURCE", "s3://artifacts/training_job.zip", "training_source"),
        ("MEDSEARCH_HYPERPARAMETERS", '{"epochz": 3}', "hyperparameters.epochz: unknown"),
        ("MEDSEARCH_MAX_PAYLOAD", "7", None),  # not a setting: ignored
    ],
)
def test_a_bad_setting_is_a_clear_error(
    pipeline: ModuleType, monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    if message is None:
        assert pipeline.get_defaults().artifacts_bucket == ARTIFACTS
        return
    with pytest.raises(ConfigError, match=message):
        pipeline.get_defaults()


# --- the loader: status and the checked publish ------------------------------------------------


def status(handler: ModuleType, bucket: str, run: str = "run-1", **extra: Any) -> dict[str, Any]:
    event = {"action": "status", "output_prefix": f"s3://{bucket}/vectors/{run}", **extra}
    return handler.handler(event, LambdaContextStub())  # type: ignore[no-any-return]


def load(handler: ModuleType, bucket: str, keys: list[str]) -> None:
    from tests.support.aws_events import s3_event

    handler.handler(s3_event(bucket, keys), LambdaContextStub())


def test_given_a_run_loading_then_status_counts_objects_and_documents_until_complete(
    loader_handler: ModuleType, loader_env: str
) -> None:
    # Given a planned run whose transform has written nothing yet
    storage.write_text(f"s3://{loader_env}/data/run-0/manifest.jsonl", "")
    assert status(loader_handler, loader_env, "run-0", records=N) == {
        "complete": False,
        "failed": False,
        "objects": 0,
        "loaded": 0,
        "documents": 0,
        "reason": "no output objects yet",
    }
    keys = write_run(loader_env)
    waiting = status(loader_handler, loader_env, records=N)
    assert (waiting["objects"], waiting["loaded"], waiting["complete"]) == (2, 0, False)
    load(loader_handler, loader_env, keys[:1])
    halfway = status(loader_handler, loader_env, records=N)
    assert {k: halfway[k] for k in ("complete", "failed", "objects", "loaded", "documents")} == {
        "complete": False,
        "failed": False,
        "objects": 2,
        "loaded": 1,
        "documents": 3,
    }
    assert halfway["reason"] == "1 of 2 output objects loaded, 3 of 6 records written"
    load(loader_handler, loader_env, keys[1:])
    done = status(loader_handler, loader_env, records=N)
    assert done == {
        "complete": True,
        "failed": False,
        "objects": 2,
        "loaded": 2,
        "documents": 6,
        "reason": "6 of 6 records loaded from 2 objects",
    }
    # Without records, the run manifest's count is the target
    assert status(loader_handler, loader_env)["complete"] is True


def test_given_rejected_documents_then_status_says_failed(
    loader_handler: ModuleType, loader_env: str, cluster: FakeCluster
) -> None:
    keys = write_run(loader_env)
    cluster.fail_items(["im4"], status=400)
    load(loader_handler, loader_env, keys[:1])
    with pytest.raises(RuntimeError):
        load(loader_handler, loader_env, keys[1:])
    answer = status(loader_handler, loader_env, records=N)
    assert answer["failed"] is True and answer["complete"] is False
    assert answer["reason"] == (
        "1 of 2 output objects have documents the index rejected (part-1.jsonl.out)"
    )


def test_given_every_object_loaded_but_records_missing_then_status_says_failed(
    loader_handler: ModuleType, loader_env: str
) -> None:
    keys = write_run(loader_env)
    load(loader_handler, loader_env, keys)
    answer = status(loader_handler, loader_env, records=N + 4)
    assert (answer["complete"], answer["failed"], answer["documents"]) == (False, True, N)
    assert "only 6 of 10 records were written" in answer["reason"]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"action": "status"}, "needs 'output_prefix'"),
        ({"action": "status", "output_prefix": "s3://b/vectors/r", "records": "6"}, "records"),
        ({"action": "status", "output_prefix": "s3://b/vectors/r", "records": -1}, "records"),
        ({"action": "status", "output_prefix": "s3://b/vectors/r", "records": True}, "records"),
    ],
)
def test_a_bad_status_event_is_refused(
    loader_handler: ModuleType, event: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        loader_handler.handler(event, LambdaContextStub())


@pytest.fixture
def manual(loader_handler: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The loader with auto-publish off: runs wait for the publish action."""
    monkeypatch.setenv("MEDSEARCH_AUTO_PUBLISH", "false")
    return loader_handler


def publish(handler: ModuleType, bucket: str, run: str = "run-1") -> Any:
    event = {"action": "publish", "output_prefix": f"s3://{bucket}/vectors/{run}"}
    return handler.handler(event, LambdaContextStub())


def test_given_a_complete_run_then_publish_checks_text_and_knn_answers_before_the_swap(
    manual: ModuleType, loader_env: str, cluster: FakeCluster
) -> None:
    load(manual, loader_env, write_run(loader_env))
    assert "medsearch" not in cluster.aliases
    assert publish(manual, loader_env) == {"published": True, "merging": False}
    assert cluster.aliases == {"medsearch": {"medsearch-run-1"}}
    # One text query and one kNN query with a stored vector went to the run index, before the swap
    searches = cluster.requests_to("/medsearch-run-1/_search")
    texts = [r for r in searches if "match" in json.dumps(r.body)]
    knn = [r for r in searches if "knn" in json.dumps(r.body)]
    assert len(texts) == 1 and len(knn) == 1
    swap = cluster.requests.index(cluster.requests_to("/_aliases", "POST")[0])
    assert cluster.requests.index(knn[0]) < swap and cluster.requests.index(texts[0]) < swap
    assert CAPTION not in json.dumps(texts[0].body)  # a fixed text, never a caption


@pytest.mark.parametrize("query", ['"match"', '"knn"'])
def test_given_a_run_index_that_does_not_answer_then_publish_fails_and_the_alias_stays(
    manual: ModuleType, loader_env: str, cluster: FakeCluster, query: str
) -> None:
    # Given run 1 live, and run 2 loaded
    load(manual, loader_env, write_run(loader_env))
    publish(manual, loader_env)
    load(manual, loader_env, write_run(loader_env, run_id="run-2"))
    # When its index cannot answer the text (or the kNN) query
    cluster.fail_requests(status=400, times=1, path="/medsearch-run-2/_search", body=query)
    with pytest.raises(SearchIndexError, match=r"run run-2: .* does not answer queries"):
        publish(manual, loader_env, "run-2")
    # Then the alias stays on run 1; once the index answers, the publish goes through
    assert cluster.aliases == {"medsearch": {"medsearch-run-1"}}
    assert publish(manual, loader_env, "run-2") == {"published": True, "merging": False}
    assert cluster.aliases == {"medsearch": {"medsearch-run-2"}}


def test_given_a_run_without_vectors_then_publish_checks_text_only(
    manual: ModuleType, loader_env: str, cluster: FakeCluster
) -> None:
    # Given a run index sized by a first load, whose documents then all lost their vectors
    keys = write_run(loader_env)
    load(manual, loader_env, keys)
    for key in keys:
        lines = storage.read_text(f"s3://{loader_env}/{key}").splitlines()
        ids = [json.loads(line)["image_id"] for line in lines]
        errors = "".join(json.dumps({"image_id": i, "error": "truncated"}) + "\n" for i in ids)
        storage.write_text(f"s3://{loader_env}/{key}", errors)
    load(manual, loader_env, keys)
    assert all(doc.get("vector") is None for doc in cluster.documents("medsearch-run-1").values())
    assert publish(manual, loader_env) == {"published": True, "merging": False}
    # The text query was asked; with no stored vector there is no kNN query
    searches = cluster.requests_to("/medsearch-run-1/_search")
    assert [r for r in searches if "match" in json.dumps(r.body)]
    assert cluster.requests_to("/medsearch-run-1/_msearch") == []


def test_given_auto_publish_when_the_index_does_not_answer_then_the_run_stays_unpublished(
    loader_handler: ModuleType, loader_env: str, cluster: FakeCluster
) -> None:
    keys = write_run(loader_env)
    load(loader_handler, loader_env, keys[:1])
    cluster.fail_requests(status=400, times=1, path="/medsearch-run-1/_search")
    load(loader_handler, loader_env, keys[1:])  # loads; the publish is logged as failed
    assert "medsearch" not in cluster.aliases
    assert publish(loader_handler, loader_env) == {"published": True, "merging": False}


def test_given_a_merge_longer_than_the_invocation_then_publish_answers_merging_and_later_publishes(
    manual: ModuleType, loader_env: str, cluster: FakeCluster
) -> None:
    # Given a loaded run whose index needs more merge time than one invocation has left
    load(manual, loader_env, write_run(loader_env))
    cluster.merge_seconds = 400.0  # the stub invocation has 300 s left; 60 s stay for the rest
    # When it is published: not yet, the merge goes on, and the alias stays unset
    assert publish(manual, loader_env) == {"published": False, "merging": True}
    assert "medsearch" not in cluster.aliases
    # Then asking again waits out the rest of the merge and publishes
    assert publish(manual, loader_env) == {"published": True, "merging": False}
    assert cluster.aliases == {"medsearch": {"medsearch-run-1"}}
    waits = [
        t
        for t, r in zip(cluster.timeouts, cluster.requests, strict=False)
        if "_forcemerge" in r.path
    ]
    assert waits and all(t == 240.0 for t in waits)
