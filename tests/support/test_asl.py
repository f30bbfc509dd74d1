"""Tests of the local States Language interpreter: each feature on a small hand-written machine."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.asl import (
    Context,
    Failure,
    InvalidDefinition,
    MissingResource,
    Retried,
    Step,
    StepLimitExceeded,
    TaskFailed,
    definition_from_template,
    lambda_invoke,
    resolve_cfn,
    run,
    validate,
)

TRAIN = "arn:aws:states:::sagemaker:createTrainingJob.sync"
INVOKE = "arn:aws:states:::lambda:invoke"
PUBLISH = "arn:aws:states:::sns:publish"


def machine(*states: tuple[str, dict[str, Any]], **top: Any) -> dict[str, Any]:
    """A machine of ``(name, state)`` pairs that starts at the first."""
    return {"StartAt": states[0][0], "States": dict(states), **top}


def one(state: dict[str, Any]) -> dict[str, Any]:
    """A machine of one state that ends."""
    return machine(("Only", {**state, "End": True}))


class Recorder:
    """A resource that records what it was called with and returns canned results in turn."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results) or [{"ok": True}]
        self.inputs: list[Any] = []
        self.contexts: list[Context] = []

    def __call__(self, params: Any, ctx: Context) -> Any:
        self.inputs.append(params)
        self.contexts.append(ctx)
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, Exception):
            raise result
        return result


# --- input and output processing ---


def test_task_gets_its_effective_input_from_input_path_and_parameters() -> None:
    # Given a Task with InputPath and a Parameters template nested in objects and arrays
    task = Recorder({"TrainingJobStatus": "Completed"})
    definition = one(
        {
            "Type": "Task",
            "Resource": TRAIN,
            "InputPath": "$.job",
            "Parameters": {
                "TrainingJobName.$": "$.name",
                "Static": {"Count": 2, "Flag": True},
                "First.$": "$.vals[0]",
                "Quoted.$": "$['odd-key']",
                "LastTwo.$": "$.vals[-2:]",
                "Ids.$": "$.items[*].id",
                "Nested": [{"Inner.$": "$.name"}, "plain $.not-a-path"],
                "Execution.$": "$$.Execution.Name",
                "State.$": "$$.State.Name",
            },
        }
    )
    job = {"name": "run-7", "vals": [10, 20, 30], "odd-key": "x", "items": [{"id": 1}, {"id": 2}]}

    # When it runs
    execution = run(definition, {"job": job, "other": 1}, {TRAIN: task})

    # Then the callable got exactly the payload, and history records it as the effective input
    expected = {
        "TrainingJobName": "run-7",
        "Static": {"Count": 2, "Flag": True},
        "First": 10,
        "Quoted": "x",
        "LastTwo": [20, 30],
        "Ids": [1, 2],
        "Nested": [{"Inner": "run-7"}, "plain $.not-a-path"],
        "Execution": "exec-1",
        "State": "Only",
    }
    assert task.inputs == [expected]
    assert execution.history == [Step("Only", "Task", expected, {"TrainingJobStatus": "Completed"})]
    assert execution.status == "SUCCEEDED"
    assert execution.output == {"TrainingJobStatus": "Completed"}


def test_result_selector_and_result_path_merge_into_the_raw_input() -> None:
    # Given a Task whose result is reshaped and put under $.train.result, then OutputPath
    task = Recorder({"TrainingJobArn": "arn:job", "ModelArtifacts": {"S3ModelArtifacts": "s3://m"}})
    definition = one(
        {
            "Type": "Task",
            "Resource": TRAIN,
            "InputPath": "$.config",
            "ResultSelector": {"model.$": "$.ModelArtifacts.S3ModelArtifacts", "kind": "clip"},
            "ResultPath": "$.train.result",
            "OutputPath": "$.train",
        }
    )

    # When it runs on an input with other fields
    execution = run(definition, {"config": {"epochs": 3}, "train": {"run": "r1"}}, {TRAIN: task})

    # Then the result was merged into the raw input (not the InputPath selection), objects created
    assert task.inputs == [{"epochs": 3}]
    assert execution.output == {"run": "r1", "result": {"model": "s3://m", "kind": "clip"}}


def test_result_path_null_keeps_the_input_and_null_paths_give_empty_objects() -> None:
    task = Recorder({"ignored": True})
    keep = one({"Type": "Task", "Resource": TRAIN, "ResultPath": None})
    assert run(keep, {"a": 1}, {TRAIN: task}).output == {"a": 1}

    no_input = one({"Type": "Task", "Resource": TRAIN, "InputPath": None})
    run(no_input, {"a": 1}, {TRAIN: task})
    assert task.inputs[-1] == {}

    no_output = one({"Type": "Pass", "OutputPath": None})
    assert run(no_output, {"a": 1}, {}).output == {}


def test_result_path_replaces_an_existing_field_and_an_array_item() -> None:
    definition = machine(
        ("Field", {"Type": "Pass", "Result": 6, "ResultPath": "$.master.detail", "Next": "Item"}),
        ("Item", {"Type": "Pass", "Result": "b", "ResultPath": "$.list[1]", "End": True}),
    )
    output = run(definition, {"master": {"detail": [1, 2, 3]}, "list": ["x", "y"]}, {}).output
    assert output == {"master": {"detail": 6}, "list": ["x", "b"]}


def test_result_path_that_cannot_apply_is_a_result_path_match_failure() -> None:
    definition = one({"Type": "Pass", "Result": 1, "ResultPath": "$.x"})
    execution = run(definition, "foo", {})
    assert (execution.status, execution.error) == ("FAILED", "States.ResultPathMatchFailure")


def test_pass_with_parameters_and_result() -> None:
    definition = machine(
        ("Shape", {"Type": "Pass", "Parameters": {"id.$": "$.a", "k": "v"}, "Next": "Inject"}),
        ("Inject", {"Type": "Pass", "Result": {"x": 1}, "ResultPath": "$.coords", "End": True}),
    )
    execution = run(definition, {"a": 5, "b": 6}, {})
    assert execution.output == {"id": 5, "k": "v", "coords": {"x": 1}}
    assert execution.visits("Shape")[0].input == {"id": 5, "k": "v"}


def test_context_object_fields() -> None:
    definition = one(
        {
            "Type": "Pass",
            "Parameters": {
                "id.$": "$$.Execution.Id",
                "name.$": "$$.Execution.Name",
                "input.$": "$$.Execution.Input",
                "start.$": "$$.Execution.StartTime",
                "entered.$": "$$.State.EnteredTime",
                "retries.$": "$$.State.RetryCount",
                "machine.$": "$$.StateMachine.Id",
            },
        }
    )
    start = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    output = run(
        definition,
        {"k": 1},
        {},
        execution_name="nightly",
        state_machine_name="pipeline",
        start_time=start,
    ).output
    assert output == {
        "id": "arn:aws:states:us-east-1:123456789012:execution:pipeline:nightly",
        "name": "nightly",
        "input": {"k": 1},
        "start": "2025-03-04T05:06:07.000Z",
        "entered": "2025-03-04T05:06:07.000Z",
        "retries": 0,
        "machine": "arn:aws:states:us-east-1:123456789012:stateMachine:pipeline",
    }


def test_definition_as_json_text_and_jsonpath_forms() -> None:
    definition = one(
        {
            "Type": "Pass",
            "Parameters": {
                "union.$": "$.v[0,2]",
                "names.$": "$['a','b']",
                "deep.$": "$..id",
                "star.$": "$.o.*",
                "escaped.$": "$.dotted\\.key",
            },
        }
    )
    data = {"v": [1, 2, 3], "a": 1, "b": 2, "o": {"p": 1, "q": {"id": 9}}, "dotted.key": "d"}
    output = run(json.dumps(definition), data, {}).output
    assert output == {
        "union": [1, 3],
        "names": [1, 2],
        "deep": [9],
        "star": [1, {"id": 9}],
        "escaped": "d",
    }


# --- Choice and Wait ---


def test_choice_loop_with_wait_ends_on_a_counter_and_advances_the_virtual_clock() -> None:
    # Given a loop: count < 3 -> wait 10 s -> count + 1 (noting the entered time) -> check again
    definition = machine(
        ("Init", {"Type": "Pass", "Result": {"count": 0}, "Next": "Check"}),
        (
            "Check",
            {
                "Type": "Choice",
                "Choices": [{"Variable": "$.count", "NumericLessThan": 3, "Next": "Wait"}],
                "Default": "Done",
            },
        ),
        ("Wait", {"Type": "Wait", "Seconds": 10, "Next": "Increment"}),
        (
            "Increment",
            {
                "Type": "Pass",
                "Parameters": {
                    "count.$": "States.MathAdd($.count, 1)",
                    "entered.$": "$$.State.EnteredTime",
                },
                "Next": "Check",
            },
        ),
        ("Done", {"Type": "Succeed"}),
    )

    # When it runs (nothing sleeps)
    execution = run(definition, {}, {})

    # Then it looped three times, 10 virtual seconds each, and EnteredTime moved with the clock
    assert execution.status == "SUCCEEDED"
    assert execution.output == {"count": 3, "entered": "2024-01-01T00:00:30.000Z"}
    assert execution.states() == ["Init"] + ["Check", "Wait", "Increment"] * 3 + ["Check", "Done"]
    assert execution.elapsed_seconds == 30
    entered = [visit.output["entered"] for visit in execution.visits("Increment")]
    assert entered == [
        "2024-01-01T00:00:10.000Z",
        "2024-01-01T00:00:20.000Z",
        "2024-01-01T00:00:30.000Z",
    ]


DATA = {
    "s": "foo23.log",
    "n": 7,
    "f": 2.5,
    "b": True,
    "z": None,
    "t": "2016-03-14T01:59:00Z",
    "later": "2016-03-14T02:00:00+01:00",
    "other_s": "foo23.log",
    "other_n": 9,
    "star": "a*b",
}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"Variable": "$.s", "StringEquals": "foo23.log"}, True),
        ({"Variable": "$.s", "StringEquals": "FOO23.log"}, False),
        ({"Variable": "$.s", "StringLessThan": "zzz"}, True),
        ({"Variable": "$.s", "StringGreaterThan": "zzz"}, False),
        ({"Variable": "$.s", "StringLessThanEquals": "foo23.log"}, True),
        ({"Variable": "$.s", "StringGreaterThanEquals": "foo24"}, False),
        ({"Variable": "$.s", "StringEqualsPath": "$.other_s"}, True),
        ({"Variable": "$.s", "StringLessThanPath": "$.other_s"}, False),
        ({"Variable": "$.s", "StringGreaterThanPath": "$.other_s"}, False),
        ({"Variable": "$.s", "StringLessThanEqualsPath": "$.other_s"}, True),
        ({"Variable": "$.s", "StringGreaterThanEqualsPath": "$.other_s"}, True),
        ({"Variable": "$.s", "StringMatches": "foo*.log"}, True),
        ({"Variable": "$.s", "StringMatches": "*.txt"}, False),
        ({"Variable": "$.star", "StringMatches": "a\\*b"}, True),
        ({"Variable": "$.s", "StringMatches": "foo\\*.log"}, False),
        ({"Variable": "$.n", "NumericEquals": 7}, True),
        ({"Variable": "$.n", "NumericEquals": 7.0}, True),
        ({"Variable": "$.n", "NumericLessThan": 7}, False),
        ({"Variable": "$.n", "NumericGreaterThan": 6}, True),
        ({"Variable": "$.n", "NumericLessThanEquals": 7}, True),
        ({"Variable": "$.f", "NumericGreaterThanEquals": 2.6}, False),
        ({"Variable": "$.n", "NumericEqualsPath": "$.other_n"}, False),
        ({"Variable": "$.n", "NumericLessThanPath": "$.other_n"}, True),
        ({"Variable": "$.n", "NumericGreaterThanPath": "$.other_n"}, False),
        ({"Variable": "$.n", "NumericLessThanEqualsPath": "$.other_n"}, True),
        ({"Variable": "$.n", "NumericGreaterThanEqualsPath": "$.other_n"}, False),
        ({"Variable": "$.b", "NumericEquals": 1}, False),  # a boolean is not a number
        ({"Variable": "$.s", "NumericEquals": 7}, False),  # nor is a string
        ({"Variable": "$.b", "BooleanEquals": True}, True),
        ({"Variable": "$.n", "BooleanEquals": True}, False),
        ({"Variable": "$.b", "BooleanEqualsPath": "$.b"}, True),
        ({"Variable": "$.t", "TimestampEquals": "2016-03-14T01:59:00Z"}, True),
        ({"Variable": "$.t", "TimestampLessThan": "2016-03-14T01:59:00.5Z"}, True),
        ({"Variable": "$.t", "TimestampGreaterThan": "2016-03-14T01:58:00Z"}, True),
        ({"Variable": "$.t", "TimestampLessThanEquals": "2016-03-14T01:58:59Z"}, False),
        ({"Variable": "$.t", "TimestampGreaterThanEquals": "2016-03-14T01:59:00Z"}, True),
        ({"Variable": "$.t", "TimestampEqualsPath": "$.later"}, False),
        ({"Variable": "$.t", "TimestampLessThanPath": "$.later"}, False),  # later is 01:00 UTC
        ({"Variable": "$.later", "TimestampLessThanPath": "$.t"}, True),
        ({"Variable": "$.t", "TimestampGreaterThanPath": "$.later"}, True),
        ({"Variable": "$.t", "TimestampLessThanEqualsPath": "$.t"}, True),
        ({"Variable": "$.t", "TimestampGreaterThanEqualsPath": "$.later"}, True),
        ({"Variable": "$.s", "TimestampEquals": "2016-03-14T01:59:00Z"}, False),
        ({"Variable": "$.s", "IsPresent": True}, True),
        ({"Variable": "$.missing", "IsPresent": True}, False),
        ({"Variable": "$.missing", "IsPresent": False}, True),
        ({"Variable": "$.z", "IsNull": True}, True),
        ({"Variable": "$.n", "IsNull": True}, False),
        ({"Variable": "$.s", "IsString": True}, True),
        ({"Variable": "$.n", "IsString": False}, True),
        ({"Variable": "$.f", "IsNumeric": True}, True),
        ({"Variable": "$.b", "IsNumeric": True}, False),
        ({"Variable": "$.b", "IsBoolean": True}, True),
        ({"Variable": "$.s", "IsBoolean": True}, False),
        ({"Variable": "$.t", "IsTimestamp": True}, True),
        ({"Variable": "$.s", "IsTimestamp": True}, False),
        (
            {
                "And": [
                    {"Variable": "$.n", "IsNumeric": True},
                    {"Variable": "$.n", "NumericEquals": 7},
                ]
            },
            True,
        ),
        (
            {
                "And": [
                    {"Variable": "$.b", "BooleanEquals": True},
                    {"Variable": "$.z", "IsNull": False},
                ]
            },
            False,
        ),
        (
            {
                "Or": [
                    {"Variable": "$.b", "BooleanEquals": False},
                    {"Variable": "$.n", "NumericEquals": 7},
                ]
            },
            True,
        ),
        (
            {
                "Or": [
                    {"Variable": "$.b", "BooleanEquals": False},
                    {"Variable": "$.z", "IsNull": False},
                ]
            },
            False,
        ),
        ({"Not": {"Variable": "$.s", "StringEquals": "foo23.log"}}, False),
        # And stops at the first false rule: the missing variable after it is never read
        (
            {
                "And": [
                    {"Variable": "$.missing", "IsPresent": True},
                    {"Variable": "$.missing", "IsNull": True},
                ]
            },
            False,
        ),
    ],
)
def test_choice_rule(rule: dict[str, Any], expected: bool) -> None:
    definition = machine(
        ("Decide", {"Type": "Choice", "Choices": [{**rule, "Next": "Yes"}], "Default": "No"}),
        ("Yes", {"Type": "Succeed"}),
        ("No", {"Type": "Succeed"}),
    )
    execution = run(definition, DATA, {})
    assert execution.entered("Yes") is expected
    assert execution.entered("No") is not expected


def test_choice_without_a_match_or_default_fails_with_no_choice_matched() -> None:
    definition = machine(
        (
            "Decide",
            {"Type": "Choice", "Choices": [{"Variable": "$.n", "IsNull": True, "Next": "Y"}]},
        ),
        ("Y", {"Type": "Succeed"}),
    )
    execution = run(definition, {"n": 1}, {})
    assert (execution.status, execution.error) == ("FAILED", "States.NoChoiceMatched")
    assert execution.history[-1].output == Failure("States.NoChoiceMatched", execution.cause)


def test_choice_on_a_missing_variable_is_a_runtime_error() -> None:
    definition = machine(
        (
            "Decide",
            {
                "Type": "Choice",
                "Choices": [{"Variable": "$.gone", "StringEquals": "a", "Next": "Y"}],
                "Default": "Y",
            },
        ),
        ("Y", {"Type": "Succeed"}),
    )
    execution = run(definition, {}, {})
    assert (execution.status, execution.error) == ("FAILED", "States.Runtime")
    assert not execution.entered("Y")


def test_choice_uses_its_input_path_and_output_path() -> None:
    definition = machine(
        (
            "Decide",
            {
                "Type": "Choice",
                "InputPath": "$.gate",
                "OutputPath": "$.metrics",
                "Choices": [{"Variable": "$.metrics.mrr", "NumericGreaterThan": 0.5, "Next": "Y"}],
                "Default": "N",
            },
        ),
        ("Y", {"Type": "Succeed"}),
        ("N", {"Type": "Succeed"}),
    )
    execution = run(definition, {"gate": {"metrics": {"mrr": 0.6}}}, {})
    assert execution.states() == ["Decide", "Y"]
    assert execution.output == {"mrr": 0.6}


def test_wait_seconds_path_timestamp_and_timestamp_path_advance_the_clock() -> None:
    definition = machine(
        ("ByPath", {"Type": "Wait", "SecondsPath": "$.delay", "Next": "Until"}),
        ("Until", {"Type": "Wait", "Timestamp": "2024-01-01T01:00:00Z", "Next": "UntilPath"}),
        ("UntilPath", {"Type": "Wait", "TimestampPath": "$.at", "Next": "Past"}),
        ("Past", {"Type": "Wait", "Timestamp": "2000-01-01T00:00:00Z", "End": True}),
    )
    execution = run(definition, {"delay": 90, "at": "2024-01-01T02:00:00+01:00"}, {})
    # 90 s, then until 01:00, then until 02:00+01:00 (01:00 UTC: no wait), the past: no wait
    assert execution.elapsed_seconds == 3600
    assert execution.output == {"delay": 90, "at": "2024-01-01T02:00:00+01:00"}

    bad = run(one({"Type": "Wait", "SecondsPath": "$.delay"}), {"delay": -1}, {})
    assert bad.error == "States.Runtime"


# --- Task errors, Retry and Catch ---


def test_retry_backs_off_1_2_4_seconds_then_succeeds() -> None:
    # Given a task that fails three times, then succeeds
    task = Recorder(
        TaskFailed("Sagemaker.Throttled", "slow down"),
        ValueError("x"),
        TaskFailed("Sagemaker.Throttled"),
        {"done": 1},
    )
    definition = one(
        {
            "Type": "Task",
            "Resource": TRAIN,
            "Parameters": {"attempt.$": "$$.State.RetryCount"},
            "Retry": [
                {
                    "ErrorEquals": ["States.ALL"],
                    "IntervalSeconds": 1,
                    "BackoffRate": 2,
                    "MaxAttempts": 3,
                }
            ],
        }
    )

    # When it runs
    execution = run(definition, {}, {TRAIN: task})

    # Then it retried after 1, 2 and 4 virtual seconds, each retry seeing its count
    assert execution.status == "SUCCEEDED"
    assert execution.output == {"done": 1}
    assert execution.retries == [
        Retried("Only", "Sagemaker.Throttled", 1, 1),
        Retried("Only", "ValueError", 2, 2),
        Retried("Only", "Sagemaker.Throttled", 3, 4),
    ]
    assert execution.elapsed_seconds == 7
    assert task.inputs == [{"attempt": 0}, {"attempt": 1}, {"attempt": 2}, {"attempt": 3}]
    assert [ctx.retry_count for ctx in task.contexts] == [0, 1, 2, 3]
    assert execution.states() == ["Only"]  # one visit, four calls
    assert [call.retry_count for call in execution.calls] == [0, 1, 2, 3]


def test_retriers_count_separately_across_a_visit_then_the_catcher_takes_over() -> None:
    # The spec's example: ErrorA, ErrorB, ErrorC, ErrorB -> waits 1, 2, 5, then Catch to Z
    task = Recorder(*(TaskFailed(e) for e in ("ErrorA", "ErrorB", "ErrorC", "ErrorB")))
    definition = machine(
        (
            "X",
            {
                "Type": "Task",
                "Resource": TRAIN,
                "Next": "Y",
                "Retry": [
                    {
                        "ErrorEquals": ["ErrorA", "ErrorB"],
                        "IntervalSeconds": 1,
                        "BackoffRate": 2,
                        "MaxAttempts": 2,
                    },
                    {"ErrorEquals": ["ErrorC"], "IntervalSeconds": 5},
                ],
                "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Z"}],
            },
        ),
        ("Y", {"Type": "Succeed"}),
        ("Z", {"Type": "Succeed"}),
    )
    execution = run(definition, {}, {TRAIN: task})
    assert [r.delay_seconds for r in execution.retries] == [1, 2, 5]
    assert execution.states() == ["X", "Z"]
    assert execution.output == {"Error": "ErrorB", "Cause": ""}


def test_max_attempts_zero_never_retries_and_max_delay_caps_the_backoff() -> None:
    never = one(
        {
            "Type": "Task",
            "Resource": TRAIN,
            "Retry": [
                {"ErrorEquals": ["Fatal"], "MaxAttempts": 0},
                {"ErrorEquals": ["States.ALL"], "IntervalSeconds": 3, "MaxDelaySeconds": 4},
            ],
        }
    )
    fatal = run(never, {}, {TRAIN: Recorder(TaskFailed("Fatal", "no"))})
    assert (fatal.status, fatal.error, fatal.cause, fatal.retries) == ("FAILED", "Fatal", "no", [])

    capped = run(never, {}, {TRAIN: Recorder(TaskFailed("Flaky"))})
    # Default MaxAttempts 3 and BackoffRate 2.0: 3, 6 -> 4, 12 -> 4
    assert [r.delay_seconds for r in capped.retries] == [3, 4, 4]
    assert capped.error == "Flaky"


def test_catch_routes_a_failed_training_to_notify_then_fail_with_error_and_cause() -> None:
    # Given train -> publish, where a failed training is caught into $.error and notified
    published: list[Any] = []

    def sns(params: Any, ctx: Context) -> Any:
        published.append(params)
        return {"MessageId": "m-1"}

    definition = machine(
        (
            "Train",
            {
                "Type": "Task",
                "Resource": TRAIN,
                "Next": "Publish",
                "Catch": [
                    {
                        "ErrorEquals": ["States.TaskFailed"],
                        "ResultPath": "$.error",
                        "Next": "Notify",
                    }
                ],
            },
        ),
        ("Publish", {"Type": "Succeed"}),
        (
            "Notify",
            {
                "Type": "Task",
                "Resource": PUBLISH,
                "Parameters": {
                    "TopicArn": "arn:aws:sns:us-east-1:123456789012:alerts",
                    "Message.$": "States.Format('run {} failed: {}', $.run, $.error.Cause)",
                },
                "ResultPath": None,
                "Next": "Failed",
            },
        ),
        ("Failed", {"Type": "Fail", "ErrorPath": "$.error.Error", "CausePath": "$.error.Cause"}),
    )
    trainer = Recorder(TaskFailed("TrainingFailed", "loss is nan"))

    # When the training fails
    execution = run(definition, {"run": "r7"}, {TRAIN: trainer, PUBLISH: sns})

    # Then the notify state got the message and the execution failed with the training's error
    assert execution.states() == ["Train", "Notify", "Failed"]
    assert published == [
        {
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:alerts",
            "Message": "run r7 failed: loss is nan",
        }
    ]
    assert (execution.status, execution.error, execution.cause) == (
        "FAILED",
        "TrainingFailed",
        "loss is nan",
    )
    assert execution.output is None
    error = {"Error": "TrainingFailed", "Cause": "loss is nan"}
    assert execution.visits("Train")[0].output == Failure("TrainingFailed", "loss is nan")
    assert execution.visits("Notify")[0].input["Message"] == "run r7 failed: loss is nan"
    assert execution.visits("Failed")[0] == Step(
        "Failed", "Fail", {"run": "r7", "error": error}, Failure("TrainingFailed", "loss is nan")
    )


def test_an_exception_reports_its_class_name_and_message() -> None:
    definition = one({"Type": "Task", "Resource": TRAIN})
    execution = run(definition, {}, {TRAIN: Recorder(KeyError("TrainingJobName"))})
    assert (execution.error, execution.cause) == ("KeyError", "'TrainingJobName'")
    execution = run(definition, {}, {TRAIN: Recorder(RuntimeError("disk full"))})
    assert (execution.error, execution.cause) == ("RuntimeError", "disk full")


def test_task_failed_matches_everything_but_a_timeout_and_all_matches_a_timeout() -> None:
    def handled_by(errors: list[str], raised: Exception) -> bool:
        definition = machine(
            (
                "T",
                {
                    "Type": "Task",
                    "Resource": TRAIN,
                    "Next": "Ok",
                    "Catch": [{"ErrorEquals": errors, "Next": "Caught"}],
                },
            ),
            ("Ok", {"Type": "Succeed"}),
            ("Caught", {"Type": "Succeed"}),
        )
        return run(definition, {}, {TRAIN: Recorder(raised)}).entered("Caught")

    assert handled_by(["States.TaskFailed"], ValueError("x"))
    assert handled_by(["States.TaskFailed"], TaskFailed("Custom.Error"))
    assert not handled_by(["States.TaskFailed"], TaskFailed("States.Timeout"))
    assert handled_by(["States.ALL"], TaskFailed("States.Timeout"))
    assert handled_by(["Other", "ValueError"], ValueError("x"))
    assert not handled_by(["Other"], ValueError("x"))


def test_a_path_that_cannot_apply_is_states_runtime_which_no_catcher_or_retrier_handles() -> None:
    task = Recorder()
    definition = machine(
        (
            "T",
            {
                "Type": "Task",
                "Resource": TRAIN,
                "Parameters": {"name.$": "$.missing"},
                "Retry": [{"ErrorEquals": ["States.ALL"]}],
                "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Caught"}],
                "End": True,
            },
        ),
        ("Caught", {"Type": "Succeed"}),
    )
    execution = run(definition, {"a": 1}, {TRAIN: task})
    assert (execution.status, execution.error) == ("FAILED", "States.Runtime")
    assert "'$.missing'" in execution.cause and "'name.$'" in execution.cause
    assert not execution.entered("Caught")
    assert execution.retries == []
    assert task.inputs == []

    for state in ({"Type": "Pass", "InputPath": "$.x"}, {"Type": "Pass", "OutputPath": "$.x"}):
        assert run(one(state), {"a": 1}, {}).error == "States.Runtime"


def test_a_task_past_its_timeout_fails_with_states_timeout() -> None:
    def slow_training(params: Any, ctx: Context) -> Any:
        ctx.clock.advance(ctx.timeout_seconds + 1)
        return {}

    definition = one(
        {"Type": "Task", "Resource": TRAIN, "TimeoutSeconds": 3600, "HeartbeatSeconds": 60}
    )
    execution = run(definition, {}, {TRAIN: slow_training})
    assert (execution.status, execution.error) == ("FAILED", "States.Timeout")
    assert execution.elapsed_seconds == 3601
    assert (execution.calls[0].timeout_seconds, execution.calls[0].heartbeat_seconds) == (3600, 60)

    by_path = one({"Type": "Task", "Resource": TRAIN, "TimeoutSecondsPath": "$.limit"})
    task = Recorder()
    assert run(by_path, {"limit": 5}, {TRAIN: task}).status == "SUCCEEDED"
    assert task.contexts[0].timeout_seconds == 5
    assert task.contexts[0].heartbeat_seconds is None


def test_the_state_machine_timeout_ends_the_execution() -> None:
    definition = one({"Type": "Wait", "Seconds": 61})
    definition["TimeoutSeconds"] = 60
    execution = run(definition, {}, {})
    assert (execution.status, execution.error) == ("TIMED_OUT", "States.Timeout")


def test_a_wait_for_task_token_resource_sees_the_token() -> None:
    resource = "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
    task = Recorder({"approved": True})
    definition = one(
        {"Type": "Task", "Resource": resource, "Parameters": {"token.$": "$$.Task.Token"}}
    )
    assert run(definition, {}, {resource: task}).output == {"approved": True}
    assert task.inputs == [{"token": task.contexts[0].task_token}]
    assert task.contexts[0].execution_name == "exec-1"


def test_resource_errors_of_the_test_setup_raise() -> None:
    definition = one({"Type": "Task", "Resource": TRAIN})
    with pytest.raises(MissingResource, match=r"createTrainingJob\.sync"):
        run(definition, {}, {INVOKE: Recorder()})
    with pytest.raises(TypeError, match="not JSON"):
        run(definition, {}, {TRAIN: Recorder({"when": datetime(2024, 1, 1)})})


# --- Fail, Parallel, Map ---


def test_fail_state_with_static_and_computed_error_and_cause() -> None:
    static = run(
        machine(("F", {"Type": "Fail", "Error": "Gate.Rejected", "Cause": "mrr too low"})), {}, {}
    )
    assert (static.status, static.error, static.cause) == ("FAILED", "Gate.Rejected", "mrr too low")

    computed = {"Type": "Fail", "ErrorPath": "$.e", "CausePath": "States.Format('mrr {}', $.m)"}
    execution = run(machine(("F", computed)), {"e": "Gate.Rejected", "m": 0.1}, {})
    assert (execution.error, execution.cause) == ("Gate.Rejected", "mrr 0.1")

    bare = run(machine(("F", {"Type": "Fail"})), {}, {})
    assert (bare.status, bare.error, bare.cause) == ("FAILED", None, None)


def test_parallel_runs_branches_in_order_and_outputs_an_array() -> None:
    add = Recorder({"sum": 5})
    subtract = Recorder({"difference": 1})
    branches = [
        machine(("Add", {"Type": "Task", "Resource": "arn:add", "End": True})),
        machine(("Subtract", {"Type": "Task", "Resource": "arn:subtract", "End": True})),
    ]
    definition = one(
        {
            "Type": "Parallel",
            "Branches": branches,
            "Parameters": {"pair.$": "$.numbers"},
            "ResultSelector": {"sum.$": "$[0].sum", "difference.$": "$[1].difference"},
            "ResultPath": "$.math",
        }
    )
    execution = run(definition, {"numbers": [3, 2]}, {"arn:add": add, "arn:subtract": subtract})
    assert add.inputs == subtract.inputs == [{"pair": [3, 2]}]
    assert execution.output == {"numbers": [3, 2], "math": {"sum": 5, "difference": 1}}
    assert execution.states() == ["Only", "Add", "Subtract"]
    assert execution.visits("Only")[0].input == {"pair": [3, 2]}


def test_a_failed_branch_fails_the_parallel_with_its_error_which_its_catcher_sees() -> None:
    branches = [
        machine(("Fine", {"Type": "Pass", "End": True})),
        machine(("Broken", {"Type": "Fail", "Error": "Branch.Error", "Cause": "bad"})),
    ]
    definition = machine(
        (
            "Both",
            {
                "Type": "Parallel",
                "Branches": branches,
                "Next": "Ok",
                "Catch": [{"ErrorEquals": ["Branch.Error"], "Next": "Handled"}],
            },
        ),
        ("Ok", {"Type": "Succeed"}),
        ("Handled", {"Type": "Succeed"}),
    )
    execution = run(definition, {}, {})
    assert execution.states() == ["Both", "Fine", "Broken", "Handled"]
    assert execution.output == {"Error": "Branch.Error", "Cause": "bad"}
    assert execution.visits("Both")[0].output == Failure("Branch.Error", "bad")


def test_map_over_items_with_item_selector_and_the_item_index() -> None:
    # Given a Map whose ItemSelector mixes each item, its index and a shared field
    loader = Recorder({"loaded": True})
    definition = one(
        {
            "Type": "Map",
            "InputPath": "$.detail",
            "ItemsPath": "$.parts",
            "MaxConcurrency": 2,
            "ItemSelector": {
                "part.$": "$$.Map.Item.Value",
                "index.$": "$$.Map.Item.Index",
                "bucket.$": "$.bucket",
            },
            "ItemProcessor": {
                "ProcessorConfig": {"Mode": "INLINE"},
                "StartAt": "Load",
                "States": {
                    "Load": {
                        "Type": "Task",
                        "Resource": INVOKE,
                        "OutputPath": "$.Payload",
                        "End": True,
                    }
                },
            },
            "ResultPath": "$.detail.loaded",
        }
    )
    loader.results = [{"Payload": {"n": 0}}, {"Payload": {"n": 1}}, {"Payload": {"n": 2}}]

    # When it runs over three parts
    data = {"detail": {"bucket": "corpus", "parts": ["a.out", "b.out", "c.out"]}}
    execution = run(definition, data, {INVOKE: loader})

    # Then each iteration got its item and index, in order, and the outputs came back as an array
    assert loader.inputs == [
        {"part": "a.out", "index": 0, "bucket": "corpus"},
        {"part": "b.out", "index": 1, "bucket": "corpus"},
        {"part": "c.out", "index": 2, "bucket": "corpus"},
    ]
    assert execution.output["detail"]["loaded"] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert execution.states() == ["Only", "Load", "Load", "Load"]


def test_map_with_the_legacy_iterator_and_parameters() -> None:
    definition = one(
        {
            "Type": "Map",
            "Parameters": {"v.$": "$$.Map.Item.Value", "i.$": "$$.Map.Item.Index"},
            "Iterator": machine(("Echo", {"Type": "Pass", "End": True})),
        }
    )
    assert run(definition, [7, 8], {}).output == [{"v": 7, "i": 0}, {"v": 8, "i": 1}]
    items_not_array = run(
        one({"Type": "Map", "Iterator": machine(("E", {"Type": "Pass", "End": True}))}),
        {"a": 1},
        {},
    )
    assert items_not_array.error == "States.Runtime"


def test_an_inline_map_fails_with_its_iterations_error() -> None:
    processor = machine(("Check", {"Type": "Task", "Resource": TRAIN, "End": True}))
    definition = one({"Type": "Map", "ItemProcessor": processor})
    execution = run(definition, [1, 2], {TRAIN: Recorder({}, TaskFailed("Bad.Item", "2"))})
    assert (execution.error, execution.cause) == ("Bad.Item", "2")


def test_a_distributed_map_tolerates_failures_up_to_its_thresholds() -> None:
    def check(params: Any, ctx: Context) -> Any:
        if params < 0:
            raise TaskFailed("Negative", str(params))
        return params * 10

    processor = {
        "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
        **machine(("Check", {"Type": "Task", "Resource": TRAIN, "End": True})),
    }

    def outcome(tolerance: dict[str, Any], items: list[int]) -> Any:
        definition = one({"Type": "Map", "ItemProcessor": processor, **tolerance})
        return run(definition, items, {TRAIN: check})

    tolerated = outcome({"ToleratedFailureCount": 1}, [1, -2, 3])
    assert tolerated.status == "SUCCEEDED"
    assert tolerated.output == [10, {"Error": "Negative", "Cause": "-2"}, 30]
    too_many = outcome({"ToleratedFailureCount": 1}, [1, -2, -3])
    assert too_many.error == "States.ExceedToleratedFailureThreshold"
    assert outcome({"ToleratedFailurePercentage": 50}, [1, -2, -3, 4]).status == "SUCCEEDED"
    assert outcome({"ToleratedFailurePercentage": 50}, [-1, -2, -3, 4]).status == "FAILED"
    assert outcome({}, [1, -2]).error == "States.ExceedToleratedFailureThreshold"


def test_unsupported_features_are_rejected_before_running() -> None:
    processor = machine(("E", {"Type": "Pass", "End": True}))
    reader = {"Resource": "arn:aws:states:::s3:getObject", "ReaderConfig": {"InputType": "JSON"}}
    definition = one({"Type": "Map", "ItemProcessor": processor, "ItemReader": reader})
    validate(definition)  # valid States Language
    with pytest.raises(NotImplementedError, match="ItemReader"):
        run(definition, {}, {})
    jsonata = {"QueryLanguage": "JSONata", **one({"Type": "Pass", "Output": "{% 1 %}"})}
    with pytest.raises(NotImplementedError, match="JSONPath"):
        validate(jsonata)
    with pytest.raises(NotImplementedError, match="MathRandom"):
        run(one({"Type": "Pass", "Parameters": {"r.$": "States.MathRandom(1, 9)"}}), {}, {})


# --- intrinsic functions ---


def test_intrinsic_functions() -> None:
    parameters = {
        "format.$": "States.Format('Welcome to {} {}\\'s playlist.', $.first, $.last)",
        "format_values.$": "States.Format('{} {} {} {}', $.n, $.b, $.z, 1.5)",
        "braces.$": "States.Format('\\{\\} means {}, \\\\ a backslash', 'empty')",
        "from_path.$": "States.Format($.template, $.first)",
        "to_json.$": "States.StringToJson($.text)",
        "to_string.$": "States.JsonToString($.object)",
        "array.$": "States.Array('Foo', 2020, $.object, null, true)",
        "partition.$": "States.ArrayPartition($.numbers, 4)",
        "contains.$": "States.ArrayContains($.numbers, 5)",
        "contains_true.$": "States.ArrayContains($.numbers, true)",
        "range.$": "States.ArrayRange(1, 9, 2)",
        "item.$": "States.ArrayGetItem($.numbers, 5)",
        "length.$": "States.ArrayLength($.numbers)",
        "unique.$": "States.ArrayUnique($.repeated)",
        "encoded.$": "States.Base64Encode('Data to encode')",
        "decoded.$": "States.Base64Decode('RGF0YSB0byBlbmNvZGU=')",
        "hash.$": "States.Hash('input data', 'SHA-1')",
        "merged.$": "States.JsonMerge($.json1, $.json2, false)",
        "sum.$": "States.MathAdd($.value, -1)",
        "split.$": "States.StringSplit('1,2,3,4,5', ',')",
        "split_many.$": "States.StringSplit('This.is+a,test=string', '.+,=')",
        "uuid.$": "States.UUID()",
        "nested.$": "States.ArrayLength(States.StringSplit(States.Format('{}-{}', 'a', 'b'), '-'))",
    }
    data = {
        "first": "Ada",
        "last": "Lovelace",
        "n": 3,
        "b": False,
        "z": None,
        "template": "Hello, my name is {}.",
        "text": '{"number": 20}',
        "object": {"name": "Foo", "year": 2020},
        "numbers": [1, 2, 3, 4, 5, 6, 7, 8, 9],
        "repeated": [1, 2, 3, 3, 3, 1, 4, True],
        "json1": {"a": {"a1": 1, "a2": 2}, "b": 2},
        "json2": {"a": {"a3": 1, "a4": 2}, "c": 3},
        "value": 111,
    }
    output = run(one({"Type": "Pass", "Parameters": parameters}), data, {}).output
    uuid = output.pop("uuid")
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuid
    )
    assert output == {
        "format": "Welcome to Ada Lovelace's playlist.",
        "format_values": "3 false null 1.5",
        "braces": "{} means empty, \\ a backslash",
        "from_path": "Hello, my name is Ada.",
        "to_json": {"number": 20},
        "to_string": '{"name":"Foo","year":2020}',
        "array": ["Foo", 2020, {"name": "Foo", "year": 2020}, None, True],
        "partition": [[1, 2, 3, 4], [5, 6, 7, 8], [9]],
        "contains": True,
        "contains_true": False,
        "range": [1, 3, 5, 7, 9],
        "item": 6,
        "length": 9,
        "unique": [1, 2, 3, 4, True],
        "encoded": "RGF0YSB0byBlbmNvZGU=",
        "decoded": "Data to encode",
        "hash": "aaff4a450a104cd177d28d18d74485e8cae074b7",
        "merged": {"a": {"a3": 1, "a4": 2}, "b": 2, "c": 3},
        "sum": 110,
        "split": ["1", "2", "3", "4", "5"],
        "split_many": ["This", "is", "a", "test", "string"],
        "nested": 2,
    }


@pytest.mark.parametrize(
    "expression",
    [
        "States.StringToJson($.text)",  # not JSON
        "States.Format('{} {}', $.text)",  # too few arguments
        "States.Format('{}', $.object)",  # not a scalar
        "States.MathAdd($.text, 1)",
        "States.ArrayGetItem($.list, 3)",
        "States.JsonMerge($.object, $.object, true)",  # Step Functions merges shallowly only
        "States.Array($.missing)",
    ],
)
def test_a_failing_intrinsic_function_is_a_runtime_error(expression: str) -> None:
    definition = one({"Type": "Pass", "Parameters": {"value.$": expression}})
    data = {"text": "not json", "object": {"a": 1}, "list": [1, 2, 3]}
    assert run(definition, data, {}).error == "States.Runtime"


# --- Lambda integration, templates, helpers ---


def test_lambda_invoke_passes_the_payload_and_answers_as_the_integration_does() -> None:
    seen: list[Any] = []

    def handler(event: Any, context: Any) -> Any:
        seen.append((event, context))
        if event.get("fail"):
            raise ValueError("bad record")
        return {"loaded": len(event["keys"])}

    definition = one(
        {
            "Type": "Task",
            "Resource": INVOKE,
            "Parameters": {
                "FunctionName": "arn:aws:lambda:us-east-1:123456789012:function:loader",
                "Payload.$": "$",
            },
            "ResultSelector": {"result.$": "$.Payload"},
        }
    )
    resources = {INVOKE: lambda_invoke(handler, "ctx")}
    assert run(definition, {"keys": ["a", "b"]}, resources).output == {"result": {"loaded": 2}}
    assert seen == [({"keys": ["a", "b"]}, "ctx")]

    failed = run(definition, {"keys": [], "fail": True}, resources)
    assert failed.error == "ValueError"
    cause = json.loads(failed.cause)
    assert (cause["errorType"], cause["errorMessage"]) == ("ValueError", "bad record")


def test_definition_from_a_synthesized_template() -> None:
    properties = {
        "DefinitionString": {
            "Fn::Join": [
                "",
                [
                    '{"StartAt":"Load","States":{"Load":{"Type":"Task","Resource":"arn:',
                    {"Ref": "AWS::Partition"},
                    ':states:::lambda:invoke","Parameters":{"FunctionName":"',
                    {"Fn::GetAtt": ["LoaderFn1234", "Arn"]},
                    '","Payload.$":"$"},"Next":"Topic"},"Topic":{"Type":"Pass","Result":"${Topic}",'
                    '"End":true}}}',
                ],
            ]
        },
        "DefinitionSubstitutions": {"Topic": {"Ref": "AlertsTopic"}},
    }
    definition = definition_from_template(
        properties, {"AlertsTopic": "arn:aws:sns:us-east-1:1:alerts"}
    )
    load = definition["States"]["Load"]
    assert load["Resource"] == INVOKE
    assert load["Parameters"]["FunctionName"] == "<GetAtt:LoaderFn1234.Arn>"
    assert definition["States"]["Topic"]["Result"] == "arn:aws:sns:us-east-1:1:alerts"
    assert (
        run(definition, {}, {INVOKE: Recorder({"Payload": 1})}).output
        == "arn:aws:sns:us-east-1:1:alerts"
    )

    sub = {"Fn::Sub": ["arn:${AWS::Partition}:s3:::${Bucket}/${!Literal}", {"Bucket": "b"}]}
    assert resolve_cfn(sub) == "arn:aws:s3:::b/${Literal}"


def test_max_steps_guards_a_loop_that_never_ends() -> None:
    definition = machine(
        ("Ping", {"Type": "Pass", "Next": "Pong"}),
        ("Pong", {"Type": "Pass", "Next": "Ping"}),
        ("Never", {"Type": "Succeed"}),
    )
    definition["States"]["Pong"] = {
        "Type": "Choice",
        "Choices": [{"Variable": "$.stop", "IsPresent": True, "Next": "Never"}],
        "Default": "Ping",
    }
    with pytest.raises(StepLimitExceeded, match="50") as raised:
        run(definition, {}, {}, max_steps=50)
    assert len(raised.value.history) == 50


def test_execution_helpers() -> None:
    definition = machine(
        ("A", {"Type": "Pass", "Next": "B"}),
        ("B", {"Type": "Pass", "Result": 2, "End": True}),
    )
    execution = run(definition, {"x": 1}, {})
    assert execution.states() == ["A", "B"]
    assert execution.entered("B") and not execution.entered("C")
    assert execution.history == [("A", "Pass", {"x": 1}, {"x": 1}), ("B", "Pass", {"x": 1}, 2)]
    name, kind, effective, output = execution.history[1]
    assert (name, kind, effective, output) == ("B", "Pass", {"x": 1}, 2)


# --- validation ---


def test_a_valid_definition_validates() -> None:
    definition = machine(("A", {"Type": "Pass", "End": True}), Comment="ok", Version="1.0")
    assert validate(json.dumps(definition)) == definition


def task(**fields: Any) -> dict[str, Any]:
    return {"Type": "Task", "Resource": TRAIN, "End": True, **fields}


END = ("End", {"Type": "Succeed"})


@pytest.mark.parametrize(
    ("definition", "state", "message"),
    [
        (machine(("A", {"Type": "Pass", "Next": "Nowhere"})), "A", "'Nowhere' names no state"),
        ({"StartAt": "B", "States": {"A": {"Type": "Succeed"}}}, None, "StartAt 'B'"),
        (
            machine(("A", {"Type": "Pass", "Next": "B"}), ("B", {"Type": "Pass", "Next": "A"})),
            None,
            "no terminal state",
        ),
        (
            machine(("A", {"Type": "Succeed"}), ("Orphan", {"Type": "Succeed"})),
            "Orphan",
            "unreachable",
        ),
        (machine(("A", task(Resources="x"))), "A", "'Resources' is not a field of a Task"),
        (
            machine(("A", {"Type": "Pass", "End": True, "ResultSelector": {}})),
            "A",
            "'ResultSelector' is not a field of a Pass",
        ),
        (
            machine(("A", {"Type": "Wait", "Seconds": 1, "ResultPath": None, "End": True})),
            "A",
            "'ResultPath' is not a field of a Wait",
        ),
        (
            machine(("A", {"Type": "Fail", "InputPath": "$"})),
            "A",
            "'InputPath' is not a field of a Fail",
        ),
        (
            machine(("A", {"Type": "Succeed", "Next": "A"})),
            "A",
            "'Next' is not a field of a Succeed",
        ),
        (
            machine(
                (
                    "A",
                    {
                        "Type": "Choice",
                        "Choices": [{"Variable": "$.a", "IsNull": True, "Next": "E"}],
                        "End": True,
                    },
                ),
                ("E", {"Type": "Succeed"}),
            ),
            "A",
            "'End' is not a field of a Choice",
        ),
        (machine(("A", {"Type": "Task", "End": True})), "A", "needs a Resource"),
        (machine(("A", {"Type": "Pass"})), "A", "neither Next nor End"),
        (machine(("A", {"Type": "Pass", "End": True, "Next": "E"}), END), "A", "not both"),
        (machine(("A", {"Type": "Magic", "End": True})), "A", "Type 'Magic'"),
        (machine(("A", {"Type": "Wait", "End": True})), "A", "exactly one of Seconds"),
        (
            machine(
                (
                    "A",
                    {
                        "Type": "Wait",
                        "Seconds": 1,
                        "Timestamp": "2024-01-01T00:00:00Z",
                        "End": True,
                    },
                )
            ),
            "A",
            "exactly one",
        ),
        (
            machine(("A", {"Type": "Wait", "Timestamp": "2024-01-01 00:00:00", "End": True})),
            "A",
            "not an RFC 3339",
        ),
        (
            machine(("A", {"Type": "Fail", "Error": "E", "ErrorPath": "$.e"})),
            "A",
            "exclude each other",
        ),
        (
            machine(("A", {"Type": "Choice", "Choices": [], "Default": "E"}), END),
            "A",
            "non-empty Choices",
        ),
        (
            machine(
                (
                    "A",
                    {
                        "Type": "Choice",
                        "Choices": [{"Variable": "$.a", "IsNull": True}],
                        "Default": "E",
                    },
                ),
                END,
            ),
            "A",
            "needs Next",
        ),
        (
            machine(
                (
                    "A",
                    {
                        "Type": "Choice",
                        "Choices": [
                            {"Not": {"Variable": "$.a", "IsNull": True, "Next": "E"}, "Next": "E"}
                        ],
                    },
                ),
                END,
            ),
            "A",
            "must not have Next",
        ),
        (
            machine(
                (
                    "A",
                    {
                        "Type": "Choice",
                        "Choices": [
                            {"Variable": "$.a", "StringEquals": "x", "IsNull": True, "Next": "E"}
                        ],
                    },
                ),
                END,
            ),
            "A",
            "exactly one comparison",
        ),
        (
            machine(
                (
                    "A",
                    {
                        "Type": "Choice",
                        "Choices": [{"Variable": "$.a", "NumericEquals": "1", "Next": "E"}],
                    },
                ),
                END,
            ),
            "A",
            "takes a number",
        ),
        (
            machine(
                (
                    "A",
                    {
                        "Type": "Choice",
                        "Choices": [{"Variable": "$.a", "StringMatches": "a\\b", "Next": "E"}],
                    },
                ),
                END,
            ),
            "A",
            "open escape",
        ),
        (
            machine(
                (
                    "A",
                    {
                        "Type": "Choice",
                        "Choices": [{"Variable": "$.a", "IsPresent": True, "Next": "E"}],
                        "Default": "Gone",
                    },
                ),
                END,
            ),
            "A",
            "'Gone' names no state",
        ),
        (
            machine(("A", task(Catch=[{"ErrorEquals": ["States.ALL"], "Next": "Gone"}]))),
            "A",
            "'Gone' names no state",
        ),
        (
            machine(("A", task(Retry=[{"ErrorEquals": ["States.ALL"]}, {"ErrorEquals": ["X"]}]))),
            "A",
            "States.ALL must be alone, in the last",
        ),
        (
            machine(("A", task(Retry=[{"ErrorEquals": ["States.ALL", "X"]}]))),
            "A",
            "States.ALL must be alone",
        ),
        (machine(("A", task(Retry=[{"ErrorEquals": []}]))), "A", "non-empty array"),
        (
            machine(("A", task(Retry=[{"ErrorEquals": ["X"], "BackoffRate": 0.5}]))),
            "A",
            "BackoffRate",
        ),
        (
            machine(("A", task(Retry=[{"ErrorEquals": ["X"], "MaxAttempts": -1}]))),
            "A",
            "MaxAttempts",
        ),
        (
            machine(("A", task(Retry=[{"ErrorEquals": ["X"], "IntervalSeconds": 0}]))),
            "A",
            "IntervalSeconds",
        ),
        (
            machine(("A", task(Catch=[{"ErrorEquals": ["X"], "Next": "A", "Then": 1}]))),
            "A",
            "'Then' is not a field of Catch[0]",
        ),
        (
            machine(("A", task(TimeoutSeconds=10, HeartbeatSeconds=10))),
            "A",
            "HeartbeatSeconds must be smaller",
        ),
        (machine(("A", task(TimeoutSeconds=0))), "A", "positive integer"),
        (machine(("A", task(ResultPath="$.a[*]"))), "A", "not a Reference Path"),
        (machine(("A", task(ResultPath="$$.Execution"))), "A", "context object"),
        (machine(("A", task(InputPath="a.b"))), "A", "not a path"),
        (machine(("A", task(InputPath=5))), "A", "5 is not a path"),
        (
            machine(
                (
                    "A",
                    {
                        "Type": "Choice",
                        "Choices": [{"Variable": ["$.a"], "IsNull": True, "Next": "E"}],
                    },
                ),
                END,
            ),
            "A",
            "is not a path",
        ),
        (machine(("A", task(OutputPath="$.a["))), "A", "unclosed"),
        (machine(("A", task(Parameters={"a.$": "$.b", "a": 1}))), "A", "'a' twice"),
        (machine(("A", task(Parameters={"a.$": 1}))), "A", "must be a path or intrinsic"),
        (
            machine(("A", task(Parameters={"a": [{"b.$": "States.Nope()"}]}))),
            "A",
            "unknown intrinsic function 'States.Nope'",
        ),
        (machine(("A", task(Parameters={"a.$": "States.Format('\\n')"}))), "A", "open escape"),
        (machine(("A", task(Parameters={"a.$": "States.UUID(1)"}))), "A", "takes 0..0 arguments"),
        (machine(("A", task(Parameters={"a.$": "States.JsonToString('x')"}))), "A", "takes a path"),
        (machine(("A", task(Parameters={"a.$": "States.Array($.a"}))), "A", "expected ',' or ')'"),
        (machine(("A", task(Parameters=[1]))), "A", "must be an object"),
        (
            machine(
                (
                    "P",
                    {
                        "Type": "Parallel",
                        "Branches": [machine(("A", {"Type": "Pass", "Next": "P"}))],
                        "End": True,
                    },
                )
            ),
            "A",
            "'P' names no state in a branch of 'P'",
        ),
        (
            machine(
                (
                    "P",
                    {
                        "Type": "Parallel",
                        "Branches": [machine(("P", {"Type": "Succeed"}))],
                        "End": True,
                    },
                )
            ),
            "P",
            "used by another state",
        ),
        (
            machine(("P", {"Type": "Parallel", "Branches": [], "End": True})),
            "P",
            "non-empty Branches",
        ),
        (
            machine(("M", {"Type": "Map", "End": True})),
            "M",
            "exactly one of ItemProcessor and Iterator",
        ),
        (
            machine(
                (
                    "M",
                    {
                        "Type": "Map",
                        "ItemSelector": {},
                        "Parameters": {},
                        "Iterator": machine(("I", {"Type": "Succeed"})),
                        "End": True,
                    },
                )
            ),
            "M",
            "ItemSelector and Parameters",
        ),
        (
            machine(
                (
                    "M",
                    {
                        "Type": "Map",
                        "ToleratedFailureCount": 1,
                        "Iterator": machine(("I", {"Type": "Succeed"})),
                        "End": True,
                    },
                )
            ),
            "M",
            "distributed Map",
        ),
        (
            machine(
                (
                    "M",
                    {
                        "Type": "Map",
                        "ItemsPath": "$..a",
                        "Iterator": machine(("I", {"Type": "Succeed"})),
                        "End": True,
                    },
                )
            ),
            "M",
            "not a Reference Path",
        ),
        (
            machine(
                (
                    "M",
                    {
                        "Type": "Map",
                        "Iterator": {"StartAt": "I", "States": {"I": {"Type": "Pass"}}},
                        "End": True,
                    },
                )
            ),
            "I",
            "neither Next nor End",
        ),
        (machine(("A", {"Type": "Succeed"}), Extra=1), None, "unknown field 'Extra'"),
        (machine(("A" * 81, {"Type": "Succeed"})), "A" * 81, "longer than 80"),
    ],
)
def test_an_invalid_definition_is_rejected_naming_the_state(
    definition: dict[str, Any], state: str | None, message: str
) -> None:
    with pytest.raises(InvalidDefinition) as raised:
        validate(definition)
    assert any(s == state and message in m for s, m in raised.value.problems), raised.value.problems
    with pytest.raises(InvalidDefinition):
        run(definition, {}, {})


def test_every_problem_is_reported_at_once() -> None:
    definition = machine(("A", task(Bogus=1, Next="Nowhere")), ("B", {"Type": "Succeed"}))
    with pytest.raises(InvalidDefinition) as raised:
        validate(definition)
    assert raised.value.states == ["A", "A", "A", "B"]
    assert "state 'A': 'Bogus' is not a field of a Task state" in str(raised.value)
    with pytest.raises(InvalidDefinition, match="not JSON"):
        validate("{not json")
