"""The training pipeline's state machine as synthesized: its tasks' parameters, retries, catches,
role, triggers, and a valid definition (checked by the local ASL interpreter's validator)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from medsearch.constants import (
    CHECKPOINT_DIR,
    JSONLINES,
    LIVE_MODEL_KEY,
    METRIC_DEFINITIONS,
    TRAIN_CHANNEL,
)
from tests.infra.cfn import Cfn


def definition_of(cfn: Cfn) -> dict[str, Any]:
    """The state machine's definition, its intrinsic functions resolved, parsed."""
    _, machine = cfn.one("AWS::StepFunctions::StateMachine")
    return json.loads(cfn.resolve(machine["DefinitionString"]))


@pytest.fixture(scope="module")
def states(small: Cfn) -> dict[str, dict[str, Any]]:
    return definition_of(small)["States"]


def test_the_definition_is_valid_asl(small: Cfn) -> None:
    from tests.support.asl import validate

    validate(definition_of(small))


def test_training_is_a_sync_job_on_spot_with_a_checkpoint_per_run(
    states: dict[str, dict[str, Any]],
) -> None:
    spot = states["TrainOnSpot"]
    assert spot["Resource"] == "arn:aws:states:::sagemaker:createTrainingJob.sync"
    params = spot["Parameters"]
    assert params["EnableManagedSpotTraining"] is True
    assert params["StoppingCondition"] == {
        "MaxRuntimeInSeconds.$": "$.plan.training.maxRuntimeSeconds",
        "MaxWaitTimeInSeconds.$": "$.plan.training.maxWaitSeconds",
    }
    assert params["CheckpointConfig"] == {
        "S3Uri.$": "$.plan.training.checkpointUri",
        "LocalPath": CHECKPOINT_DIR,
    }
    assert params["TrainingJobName.$"] == "$.plan.training.jobName"
    assert params["AlgorithmSpecification"]["MetricDefinitions"] == [
        dict(m) for m in METRIC_DEFINITIONS
    ]
    (channel,) = params["InputDataConfig"]
    assert channel["ChannelName"] == TRAIN_CHANNEL
    # On demand: the same job, without spot's MaxWaitTimeInSeconds (SageMaker refuses it).
    demand = states["TrainOnDemand"]["Parameters"]
    assert demand["EnableManagedSpotTraining"] is False
    assert "MaxWaitTimeInSeconds.$" not in demand["StoppingCondition"]
    assert states["Spot?"]["Choices"][0]["Variable"] == "$.plan.training.spot"


def test_the_transform_is_a_sync_multi_record_json_lines_job(
    states: dict[str, dict[str, Any]],
) -> None:
    transform = states["Vectorize"]
    assert transform["Resource"] == "arn:aws:states:::sagemaker:createTransformJob.sync"
    params = transform["Parameters"]
    assert params["BatchStrategy"] == "MultiRecord"
    assert params["TransformInput"]["SplitType"] == "Line"
    assert params["TransformInput"]["ContentType"] == JSONLINES
    assert params["TransformOutput"] == {
        "S3OutputPath.$": "$.plan.transform.outputPath",
        "Accept": JSONLINES,
        "AssembleWith": "Line",
    }
    assert params["MaxPayloadInMB.$"] == "$.plan.transform.maxPayloadMB"
    assert states["CreateModel"]["Parameters"]["PrimaryContainer"]["ModelDataUrl.$"] == (
        "$.training.modelArtifacts"
    )
    # Every task adds its result beside the run's state (or discards it: null), never
    # replacing the state with it (no ResultPath, or "$").
    for name, state in states.items():
        if state["Type"] == "Task":
            assert "ResultPath" in state and state["ResultPath"] != "$", name


def test_sagemaker_calls_retry_throttling_with_back_off(states: dict[str, dict[str, Any]]) -> None:
    for name in ("TrainOnSpot", "TrainOnDemand", "CreateModel", "Vectorize"):
        (retry,) = states[name]["Retry"]
        assert "SageMaker.AmazonSageMakerException" in retry["ErrorEquals"]
        assert "ThrottlingException" in retry["ErrorEquals"]
        assert retry["BackoffRate"] == 2 and retry["MaxAttempts"] == 5
        # A job that ran and failed is not retried: it is caught and reported.
        assert "States.TaskFailed" not in retry["ErrorEquals"]


def test_every_task_is_caught_and_notified_then_the_run_fails(
    states: dict[str, dict[str, Any]],
) -> None:
    tasks = {n: s for n, s in states.items() if s["Type"] == "Task"}
    assert len(tasks) >= 12
    for name, state in tasks.items():
        if name == "NotifyFailure":
            assert "Catch" not in state
            continue
        if name == "NotifySuccess":
            # Published either way: a lost notification must not fail a live run.
            assert state["Catch"][0]["Next"] == "Published"
            continue
        (caught,) = state["Catch"]
        assert caught == {
            "ErrorEquals": ["States.ALL"],
            "ResultPath": "$.error",
            "Next": "NotifyFailure",
        }, name
    assert states["NotifyFailure"]["Resource"] == "arn:aws:states:::sns:publish"
    assert states["NotifyFailure"]["Next"] == "RunFailed"
    assert states["RunFailed"]["Type"] == "Fail"
    for failure in ("LoadFailed", "LoadTimedOut", "NotPublished", "SearchVersionFailed"):
        assert states[failure]["Next"] == "NotifyFailure"


def test_publishing_comes_after_the_load_and_the_model_after_the_index(
    states: dict[str, dict[str, Any]],
) -> None:
    loaded = states["Loaded?"]["Choices"]
    assert [c.get("Next") for c in loaded] == ["LoadFailed", "Publish", "LoadTimedOut"]
    assert states["Loaded?"]["Default"] == "WaitForLoad"
    assert states["Publish"]["Parameters"] == {
        "action": "publish",
        "output_prefix.$": "$.plan.outputPrefix",
        "force": False,
    }
    assert states["Published?"]["Choices"][0]["Next"] == "DescribeLiveModel"
    assert states["Published?"]["Default"] == "NotPublished"
    write = states["WriteLiveModel"]
    assert write["Resource"] == "arn:aws:states:::aws-sdk:s3:putObject"
    assert write["Parameters"]["Key"] == LIVE_MODEL_KEY
    assert states["SnapshotReady?"]["Choices"][0]["Next"] == "MoveSearchAlias"
    assert states["MoveSearchAlias"]["Resource"] == "arn:aws:states:::aws-sdk:lambda:updateAlias"


def role_statements(cfn: Cfn, role_part: str) -> list[dict[str, Any]]:
    role = cfn.logical_id_of("AWS::IAM::Role", role_part)
    return [
        s
        for p in cfn.of_type("AWS::IAM::Policy").values()
        if role in json.dumps(p["Properties"]["Roles"])
        for s in cfn.resolve(p["Properties"]["PolicyDocument"]["Statement"])
    ]


def test_the_state_machine_may_pass_only_the_sagemaker_role_and_only_to_sagemaker(
    small: Cfn,
) -> None:
    statements = role_statements(small, "PipelineStateMachineRole")
    passes = [s for s in statements if "iam:PassRole" in json.dumps(s["Action"])]
    sagemaker_role = small.arn(small.logical_id_of("AWS::IAM::Role", "TrainingJobRole"))
    assert passes == [
        {
            "Sid": "PassTheJobRole",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": sagemaker_role,
            "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
        }
    ]
    jobs = next(s for s in statements if s.get("Sid") == "TrainingJobs")
    assert jobs["Resource"].endswith(":training-job/medsearch-*")


def test_a_new_manifest_under_data_starts_a_run_for_it(small: Cfn) -> None:
    _, rule = small.one("AWS::Events::Rule")
    pattern = rule["EventPattern"]
    assert pattern["source"] == ["aws.s3"] and pattern["detail-type"] == ["Object Created"]
    assert pattern["detail"]["object"]["key"] == [{"wildcard": "data/*manifest.jsonl"}]
    (target,) = rule["Targets"]
    machine = small.logical_id_of("AWS::StepFunctions::StateMachine", "Pipeline")
    assert small.resolve(target["Arn"]) == f"{machine}"
    template = small.resolve(target["InputTransformer"])
    assert "s3://" in template["InputTemplate"]
    assert template["InputPathsMap"] == {"detail-object-key": "$.detail.object.key"}
    # The data bucket sends its events to EventBridge.
    data = small.logical_id_of("Custom::S3BucketNotifications", "StorageData")
    assert small.props(data)["NotificationConfiguration"] == {"EventBridgeConfiguration": {}}


def test_a_deploy_starts_one_run_per_training_data_version(small: Cfn) -> None:
    from datetime import UTC, datetime

    from infra.pipeline import deploy_execution_name
    from tests.support.cdk_app import synth

    assert deploy_execution_name("2026-12 (MedPix)") == "deploy-2026-12--MedPix-"
    now = datetime(2026, 12, 2, 3, 4, 5, tzinfo=UTC)
    assert deploy_execution_name(None, now) == "deploy-20261202-030405"
    _, template = synth({"startPipeline": "true", "trainingDataVersion": "2026-12"})
    cfn = Cfn(template.to_json())
    (start,) = [
        r["Properties"] for k, r in cfn.of_type("Custom::AWS").items() if "StartOnDeploy" in k
    ]
    call = json.loads(cfn.resolve(start["Create"]))
    assert call["service"] == "SFN" and call["action"] == "startExecution"
    machine = cfn.logical_id_of("AWS::StepFunctions::StateMachine", "Pipeline")
    assert call["parameters"]["stateMachineArn"] == machine
    # A fixed name: StartExecution with a name already used starts nothing new on a redeploy.
    assert call["parameters"]["name"] == "deploy-2026-12"
    assert call["physicalResourceId"] == {"id": "deploy-2026-12"}
    assert json.loads(cfn.resolve(start["Update"])) == call
    # Without the context, a deploy starts nothing.
    assert not small.of_type("Custom::AWS")
