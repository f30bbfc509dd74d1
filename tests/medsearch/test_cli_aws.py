"""`medsearch aws start-pipeline | status | runs` via ``main([...])``, against moto.

moto runs the state machines for real (``execute_state_machine``): Pass, Wait and Fail states end
executions on their own, and SageMaker task states create moto training and transform jobs, so
the histories, outputs and job states the commands read are the ones Step Functions writes.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from medsearch import pipeline_runs
from medsearch.cli import main

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/pipeline"
FIGURES = {"gate": "passed", "recallAt10": 0.91, "published": True}


def training_task(next_state: str) -> dict[str, Any]:
    """A SageMaker training task state named after the execution, as the pipeline has one."""
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::sagemaker:createTrainingJob",
        "Parameters": {
            "TrainingJobName.$": "States.Format('{}-train', $$.Execution.Name)",
            "AlgorithmSpecification": {"TrainingImage": "train:1", "TrainingInputMode": "File"},
            "RoleArn": ROLE,
            "OutputDataConfig": {"S3OutputPath": "s3://artifacts/models"},
            "ResourceConfig": {
                "InstanceType": "ml.g5.xlarge",
                "InstanceCount": 1,
                "VolumeSizeInGB": 30,
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        },
        "ResultPath": "$.train",
        "Next": next_state,
    }


def transform_task(next_state: str) -> dict[str, Any]:
    """A SageMaker batch-transform task state (vectorize)."""
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::sagemaker:createTransformJob",
        "Parameters": {
            "TransformJobName.$": "States.Format('{}-vectorize', $$.Execution.Name)",
            "ModelName": "medsearch-model",
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://data/"}}
            },
            "TransformOutput": {"S3OutputPath": "s3://artifacts/vectors"},
            "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
        },
        "ResultPath": "$.vectorize",
        "Next": next_state,
    }


# Train → Vectorize → Publish, whose output carries the gate's figures.
PIPELINE = {
    "StartAt": "Train",
    "States": {
        "Train": training_task("Vectorize"),
        "Vectorize": transform_task("Publish"),
        "Publish": {"Type": "Pass", "Result": FIGURES, "End": True},
    },
}
# Runs for a second (long enough for --wait to see it running), then succeeds or fails.
SLOW_SUCCESS = {
    "StartAt": "Hold",
    "States": {
        "Hold": {"Type": "Wait", "Seconds": 1, "Next": "Publish"},
        "Publish": {"Type": "Pass", "Result": FIGURES, "End": True},
    },
}
SLOW_FAILURE = {
    "StartAt": "Hold",
    "States": {
        "Hold": {"Type": "Wait", "Seconds": 1, "Next": "Gate"},
        "Gate": {"Type": "Fail", "Error": "GateFailed", "Cause": "recall@10 0.41 below 0.6"},
    },
}
# Ends at once, without touching SageMaker.
QUICK = {"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto with state machines that really run; no pipeline variable; fast polling."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "SF_EXECUTION_HISTORY_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(pipeline_runs.PIPELINE_ARN_ENV, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setattr(pipeline_runs, "POLL_SECONDS", 0.05)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        yield


def sfn() -> Any:
    return boto3.client("stepfunctions", region_name=REGION)


def make_machine(name: str, definition: dict[str, Any] = QUICK) -> str:
    response = sfn().create_state_machine(
        name=name, definition=json.dumps(definition), roleArn=ROLE
    )
    return str(response["stateMachineArn"])


def make_stack(name: str, outputs: dict[str, str]) -> None:
    """A CloudFormation stack with literal outputs (and a queue: a stack needs a resource)."""
    template = {
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    boto3.client("cloudformation", region_name=REGION).create_stack(
        StackName=name, TemplateBody=json.dumps(template)
    )


def executions(machine: str) -> list[dict[str, Any]]:
    return sfn().list_executions(stateMachineArn=machine)["executions"]


def start(machine: str, name: str) -> str:
    arn = sfn().start_execution(stateMachineArn=machine, name=name, input="{}")["executionArn"]
    return str(arn)


def wait_done(arn: str, timeout: float = 20.0) -> dict[str, Any]:
    """Wait (outside the CLI) until moto has run the execution to its end."""
    deadline = time.monotonic() + timeout
    while True:
        described = sfn().describe_execution(executionArn=arn)
        if described["status"] != "RUNNING" or time.monotonic() > deadline:
            return described
        time.sleep(0.05)


def sent_input(machine: str) -> dict[str, Any]:
    """The input JSON of the machine's only execution."""
    (only,) = executions(machine)
    return json.loads(sfn().describe_execution(executionArn=only["executionArn"])["input"])


def one_line_error(err: str, *words: str) -> None:
    """Then: exactly one line on stderr, the CLI's error line, naming every word."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("medsearch aws: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], err


# --- start-pipeline: the execution input and its name --------------------------------------------


def test_given_every_option_when_start_pipeline_then_input_is_camel_case_with_text_hyperparameters(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = make_machine("pipeline")

    code = main([
        "aws", "start-pipeline", "--state-machine", machine,
        "--manifest", "s3://data/data/manifest.jsonl", "--base", "openai/clip-vit-base-patch32",
        "--hyperparameter", "epochs=10", "--hyperparameter", "lr=5e-5",
        "--hyperparameter", "freeze_vision_model=true",
        "--min-recall-at-10", "0.6", "--train-instance-type", "ml.g5.xlarge", "--no-spot",
        "--name", "retrain-42",
    ])  # fmt: skip

    out = capsys.readouterr().out
    assert code == 0
    assert out.strip() == f"arn:aws:states:{REGION}:123456789012:execution:pipeline:retrain-42"
    sent = sent_input(machine)
    assert sent == {
        "manifest": "s3://data/data/manifest.jsonl",
        "baseModel": "openai/clip-vit-base-patch32",
        "hyperparameters": {"epochs": "10", "lr": "5e-5", "freeze_vision_model": "true"},
        "gate": {"minRecallAt10": 0.6},
        "training": {"instanceType": "ml.g5.xlarge", "spot": False},
    }
    # What the CLI sends is what the pipeline's Plan step accepts.
    from medsearch.pipeline import check_run_input

    accepted = check_run_input(sent)
    assert accepted.training.spot is False and accepted.gate.min_recall_at_10 == 0.6


def test_given_few_options_when_start_pipeline_then_input_holds_only_those_keys(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = make_machine("pipeline")

    assert main(["aws", "start-pipeline", "--state-machine", machine, "--spot"]) == 0

    assert sent_input(machine) == {"training": {"spot": True}}
    capsys.readouterr()
    other = make_machine("bare")
    assert main(["aws", "start-pipeline", "--state-machine", other]) == 0
    assert sent_input(other) == {}


def test_given_no_name_when_start_pipeline_then_execution_is_named_run_utc_time(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = make_machine("pipeline")
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)

    assert main(["aws", "start-pipeline", "--state-machine", machine]) == 0

    after = dt.datetime.now(dt.UTC)
    (only,) = executions(machine)
    assert capsys.readouterr().out.strip() == only["executionArn"]
    assert only["name"].startswith("run-")
    stamp = dt.datetime.strptime(only["name"], "run-%Y%m%d-%H%M%S").replace(tzinfo=dt.UTC)
    assert before <= stamp <= after


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 81,
        "two words",
        "tab\there",
        "line\nbreak",
        "a/b",
        "a:b",
        "brace{",
        "bracket]",
        "angle<",
        "star*",
        "what?",
        'quote"',
        "hash#",
        "per%cent",
        "back\\slash",
        "caret^",
        "pipe|",
        "tilde~",
        "tick`",
        "dollar$",
        "amp&",
        "comma,",
        "semi;",
        "ctrl\x01",
        "del\x7f",
        "c1\x9b",
        "nbsp\u00a0",
        "noncharacter\uffff",
    ],
)
def test_given_a_name_step_functions_refuses_when_start_pipeline_then_one_line_and_nothing_starts(
    aws: None, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    machine = make_machine("pipeline")

    code = main(["aws", "start-pipeline", "--state-machine", machine, "--name", name])

    assert code == 2
    one_line_error(capsys.readouterr().err, "--name")
    assert executions(machine) == []


@pytest.mark.parametrize("name", ["x", "x" * 80, "run-2025.01.01_a-B", "ré-entraînement", "ü"])
def test_given_a_name_step_functions_accepts_when_start_pipeline_then_it_is_used(
    aws: None, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    machine = make_machine("pipeline")

    assert main(["aws", "start-pipeline", "--state-machine", machine, "--name", name]) == 0

    assert [e["name"] for e in executions(machine)] == [name]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--hyperparameter", "epochs"], ["--hyperparameter", "KEY=VALUE"]),
        (["--hyperparameter", "=3"], ["--hyperparameter"]),
        (["--manifest", "data/manifest.jsonl"], ["--manifest", "s3://"]),
        (["--min-recall-at-10", "1.5"], ["--min-recall-at-10"]),
        (["--min-recall-at-10", "nan"], ["--min-recall-at-10"]),
        (["--train-instance-type", "g5.xlarge"], ["--train-instance-type"]),
    ],
)
def test_given_bad_options_when_start_pipeline_then_one_line_and_nothing_starts(
    aws: None, capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str]
) -> None:
    machine = make_machine("pipeline")

    code = main(["aws", "start-pipeline", "--state-machine", machine, *argv])

    assert code == 2
    one_line_error(capsys.readouterr().err, *words)
    assert executions(machine) == []


def test_given_a_name_already_used_when_start_pipeline_then_one_line(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = make_machine("pipeline")
    start(machine, "retrain-1")

    code = main(["aws", "start-pipeline", "--state-machine", machine, "--name", "retrain-1"])

    assert code == 2
    one_line_error(capsys.readouterr().err, "--name")


# --- where the state machine comes from ----------------------------------------------------------


def test_given_flag_variable_and_stack_when_started_then_flag_then_variable_then_stack_output_win(
    aws: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    flagged, variable, stacked = (make_machine(n) for n in ("flagged", "variable", "stacked"))
    make_stack("medsearch", {"PipelineArn": stacked, "ApiUrl": "https://api.example.org/"})

    # Only the default stack: its PipelineArn output.
    assert main(["aws", "start-pipeline", "--name", "by-stack"]) == 0
    # The variable goes before the stack's output.
    monkeypatch.setenv(pipeline_runs.PIPELINE_ARN_ENV, variable)
    assert main(["aws", "start-pipeline", "--name", "by-variable"]) == 0
    # The flag goes before both.
    assert main(["aws", "start-pipeline", "--name", "by-flag", "--state-machine", flagged]) == 0

    capsys.readouterr()
    assert [e["name"] for e in executions(stacked)] == ["by-stack"]
    assert [e["name"] for e in executions(variable)] == ["by-variable"]
    assert [e["name"] for e in executions(flagged)] == ["by-flag"]


def test_given_an_explicit_stack_when_started_then_its_output_goes_before_the_variable(
    aws: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    variable, staging = make_machine("variable"), make_machine("staging")
    make_stack("medsearch-staging", {"PipelineArn": staging})
    monkeypatch.setenv(pipeline_runs.PIPELINE_ARN_ENV, variable)

    code = main(["aws", "start-pipeline", "--stack", "medsearch-staging", "--name", "staged"])

    assert code == 0
    assert [e["name"] for e in executions(staging)] == ["staged"]
    assert executions(variable) == []


def test_given_a_stack_without_the_output_when_started_then_one_line_naming_it(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    make_stack("medsearch", {"ApiUrl": "https://api.example.org/"})

    code = main(["aws", "runs"])

    assert code == 2
    one_line_error(capsys.readouterr().err, "medsearch", "PipelineArn", "--state-machine")


def test_given_no_such_stack_when_started_then_one_line(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["aws", "status", "--stack", "nowhere"])

    assert code == 2
    one_line_error(capsys.readouterr().err, "nowhere", "does not exist")


def test_given_flag_and_stack_when_parsed_then_argparse_refuses_both(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["aws", "runs", "--stack", "medsearch", "--state-machine", "arn:aws:states:x"])

    assert exited.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


# --- status --------------------------------------------------------------------------------------


def test_given_a_finished_pipeline_run_when_status_then_step_jobs_and_figures(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = make_machine("pipeline", PIPELINE)
    make_stack("medsearch", {"PipelineArn": machine})
    assert wait_done(start(machine, "run-a"))["status"] == "SUCCEEDED"

    assert main(["aws", "status", "--json"]) == 0

    status = json.loads(capsys.readouterr().out)
    assert status["name"] == "run-a"
    assert status["status"] == "SUCCEEDED"
    assert status["step"] == "Publish"
    assert status["jobs"] == [
        {"kind": "training", "name": "run-a-train", "status": "Completed", "note": None},
        {"kind": "transform", "name": "run-a-vectorize", "status": "Completed", "note": None},
    ]
    assert status["figures"] == FIGURES
    assert dt.datetime.fromisoformat(status["startDate"]) <= dt.datetime.fromisoformat(
        status["stopDate"]
    )

    assert main(["aws", "status"]) == 0
    text = capsys.readouterr().out
    assert "SUCCEEDED" in text
    assert "Publish" in text
    assert "training job" in text and "run-a-train: Completed" in text
    assert "transform job" in text and "run-a-vectorize: Completed" in text
    assert "recall@10" in text and "0.91" in text
    assert "published" in text and "true" in text


def test_given_the_gate_result_under_gate_when_status_then_its_recall_is_reported(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = {"passed": True, "recallAt10": 0.8, "liveRecallAt10": 0.7}
    result = {"run": "run-g", "gate": gate, "published": {"published": True}}
    machine = make_machine(
        "pipeline",
        {"StartAt": "Done", "States": {"Done": {"Type": "Pass", "Result": result, "End": True}}},
    )
    wait_done(start(machine, "run-g"))

    assert main(["aws", "status", "--state-machine", machine, "--json"]) == 0

    figures = json.loads(capsys.readouterr().out)["figures"]
    assert figures == {"gate": gate, "recallAt10": 0.8, "published": {"published": True}}


def test_given_several_runs_when_status_then_latest_by_default_and_any_by_name_or_arn(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = make_machine("pipeline")
    first = start(machine, "run-1")
    wait_done(first)
    wait_done(start(machine, "run-2"))
    where = ["--state-machine", machine]

    assert main(["aws", "status", "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "run-2"

    assert main(["aws", "status", "run-1", "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out)["executionArn"] == first

    # An ARN needs no state machine at all.
    assert main(["aws", "status", first, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "run-1"


def test_given_a_failed_run_when_status_then_error_cause_and_the_step_it_ended_in(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = make_machine("pipeline", SLOW_FAILURE)
    assert wait_done(start(machine, "run-bad"))["status"] == "FAILED"

    assert main(["aws", "status", "run-bad", "--state-machine", machine, "--json"]) == 0

    status = json.loads(capsys.readouterr().out)
    assert (status["status"], status["step"]) == ("FAILED", "Gate")
    assert (status["error"], status["cause"]) == ("GateFailed", "recall@10 0.41 below 0.6")
    assert status["jobs"] == []
    assert status["figures"] == {}


def test_given_jobs_that_cannot_be_read_when_status_then_noted_not_fatal(
    aws: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from botocore.exceptions import ClientError

    from medsearch._pipeline_aws import Boto3PipelineClient

    machine = make_machine("pipeline", PIPELINE)
    wait_done(start(machine, "run-a"))

    class Refusing:
        """SageMaker as a role without sagemaker:Describe* sees it, or after the jobs expired."""

        def describe_training_job(self, **_: Any) -> None:
            raise ClientError(
                {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}},
                "DescribeTrainingJob",
            )

        def describe_transform_job(self, **_: Any) -> None:
            raise ClientError(
                {"Error": {"Code": "ValidationException", "Message": "Could not find job"}},
                "DescribeTransformJob",
            )

    real_client = Boto3PipelineClient._client
    monkeypatch.setattr(
        Boto3PipelineClient,
        "_client",
        lambda self, service: Refusing() if service == "sagemaker" else real_client(self, service),
    )

    assert main(["aws", "status", "--state-machine", machine, "--json"]) == 0

    jobs = json.loads(capsys.readouterr().out)["jobs"]
    assert [(j["name"], j["status"], j["note"]) for j in jobs] == [
        ("run-a-train", None, "access denied"),
        ("run-a-vectorize", None, "not found"),
    ]


def test_given_an_unknown_execution_when_status_then_one_line(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = make_machine("pipeline")
    wait_done(start(machine, "run-1"))

    assert main(["aws", "status", "run-nope", "--state-machine", machine]) == 2
    one_line_error(capsys.readouterr().err, "run-nope")

    unknown = machine.replace(":stateMachine:", ":execution:") + ":run-nope"
    assert main(["aws", "status", unknown]) == 2
    one_line_error(capsys.readouterr().err, "run-nope")


def test_given_no_runs_yet_when_status_then_one_line(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = make_machine("pipeline")

    assert main(["aws", "status", "--state-machine", machine]) == 2

    one_line_error(capsys.readouterr().err, "no executions")


# --- runs ----------------------------------------------------------------------------------------


def test_given_runs_when_listed_then_newest_first_limited_as_table_and_json(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = make_machine("pipeline")
    for name in ("run-1", "run-2", "run-3"):
        wait_done(start(machine, name))
    where = ["--state-machine", machine]

    assert main(["aws", "runs", "--limit", "2", *where]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["name", "status"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["run-3", "SUCCEEDED"],
        ["run-2", "SUCCEEDED"],
    ]

    assert main(["aws", "runs", "--json", *where]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in runs] == ["run-3", "run-2", "run-1"]
    assert set(runs[0]) == {"name", "executionArn", "status", "startDate", "stopDate"}
    assert all(r["status"] == "SUCCEEDED" and r["stopDate"] for r in runs)


def test_given_no_runs_when_listed_then_says_so(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = make_machine("pipeline")

    assert main(["aws", "runs", "--state-machine", machine]) == 0
    assert "no runs yet" in capsys.readouterr().out

    assert main(["aws", "runs", "--state-machine", machine, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_given_an_unknown_state_machine_when_listed_then_one_line(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"arn:aws:states:{REGION}:123456789012:stateMachine:missing"

    assert main(["aws", "runs", "--state-machine", missing]) == 2

    one_line_error(capsys.readouterr().err, "missing")


# --- start-pipeline --wait -----------------------------------------------------------------------


def test_given_a_run_that_succeeds_when_waited_on_then_changes_printed_and_exit_0(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = make_machine("pipeline", SLOW_SUCCESS)

    code = main(["aws", "start-pipeline", "--state-machine", machine, "--name", "w", "--wait"])

    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[0].endswith(":execution:pipeline:w")
    changes = [line.split()[2:] for line in out[1:] if "RUNNING" in line or "SUCCEEDED" in line]
    assert ["RUNNING", "Hold"] in changes
    assert changes[-1] == ["SUCCEEDED", "Publish"]
    assert len(changes) == len(set(map(tuple, changes))), "a change is printed once"
    assert "recall@10: 0.91" in out


def test_given_a_run_that_fails_when_waited_on_then_error_and_cause_and_exit_1(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = make_machine("pipeline", SLOW_FAILURE)

    code = main(["aws", "start-pipeline", "--state-machine", machine, "--name", "w", "--wait"])

    captured = capsys.readouterr()
    assert code == 1
    assert any(line.split()[2:] == ["RUNNING", "Hold"] for line in captured.out.splitlines())
    assert captured.out.strip().splitlines()[-1].split()[2:] == ["FAILED", "Gate"]
    assert captured.err.strip().splitlines() == [
        "medsearch aws: execution w FAILED: GateFailed: recall@10 0.41 below 0.6"
    ]


def test_given_a_run_that_is_aborted_when_waited_on_then_exit_1(
    aws: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = make_machine("pipeline", SLOW_SUCCESS)
    real_watch = pipeline_runs.watch_execution

    def abort_then_watch(client: Any, arn: str, **kwargs: Any) -> pipeline_runs.Execution:
        sfn().stop_execution(executionArn=arn, error="Operator", cause="stopped by hand")
        return real_watch(client, arn, **kwargs)

    monkeypatch.setattr(pipeline_runs, "watch_execution", abort_then_watch)

    code = main(["aws", "start-pipeline", "--state-machine", machine, "--name", "w", "--wait"])

    assert code == 1
    assert "execution w ABORTED" in capsys.readouterr().err


# --- without AWS ---------------------------------------------------------------------------------


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials anywhere: no variables, empty config files, no instance metadata."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        pipeline_runs.PIPELINE_ARN_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.parametrize(
    "argv",
    [
        ["start-pipeline", "--state-machine", "arn:aws:states:us-east-1:1:stateMachine:p"],
        ["status"],
        ["runs", "--stack", "medsearch"],
    ],
)
def test_given_no_credentials_when_an_aws_command_runs_then_one_line_exit_2(
    no_aws: None, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code = main(["aws", *argv, "--region", REGION])

    assert code == 2
    one_line_error(capsys.readouterr().err, "no AWS credentials")


def test_given_no_region_when_an_aws_command_runs_then_one_line_exit_2(
    no_aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["aws", "runs"]) == 2

    one_line_error(capsys.readouterr().err, "--region")


def test_given_a_profile_no_config_names_when_an_aws_command_runs_then_one_line_exit_2(
    no_aws: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nowhere-profile")

    assert main(["aws", "runs", "--region", REGION]) == 2

    one_line_error(capsys.readouterr().err, "nowhere-profile")
