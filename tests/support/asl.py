"""A local interpreter of the Amazon States Language (JSONPath), for tests; also its validator.

There is no AWS account and no Step Functions Local here, so tests run the state machine the CDK
app synthesizes with :func:`run`. Each Task's ``Resource`` is looked up exactly (a ``.sync`` or
``.waitForTaskToken`` suffix is part of the key) in a mapping of callables ``(effective_input,
ctx) -> result``; a callable returns what the service integration would, in its shape::

    def train(params, ctx):                      # params: the Task's effective input
        sagemaker.create_training_job(**params)  # moto
        ctx.clock.advance(3600)                  # the job takes an hour of virtual time
        described = sagemaker.describe_training_job(TrainingJobName=params["TrainingJobName"])
        return json.loads(json.dumps(described, default=str))  # .sync returns the Describe output

    definition = definition_from_template(template.find_resources(
        "AWS::StepFunctions::StateMachine")[logical_id]["Properties"])
    execution = run(definition, {"run": "r1"}, {
        "arn:aws:states:::sagemaker:createTrainingJob.sync": train,
        # lambda:invoke gets {"FunctionName", "Payload", ...} and must answer {"Payload": ...}:
        "arn:aws:states:::lambda:invoke": lambda_invoke(loader_handler),
    })
    assert execution.status == "SUCCEEDED", (execution.error, execution.cause)
    assert execution.states() == ["Train", "Gate", "Transform", "Load", "Publish", "Notify"]

The interpreter does not know service integrations: the caller's callable is responsible for the
response shape (``{"Payload": ...}`` for ``lambda:invoke``, which :func:`lambda_invoke` builds;
the Describe output for a SageMaker ``.sync``; ``{"MessageId": ...}`` for SNS) and for making it
JSON (a callable returning ``datetime`` raises TypeError).

The semantics are those of the spec (https://states-language.net/spec.html) and, where it leaves
them to the interpreter, of AWS Step Functions' developer guide:

- Data: ``InputPath``, ``Parameters``, ``ResultSelector``, ``ResultPath`` (``null`` discards the
  result; missing objects are created), ``OutputPath``; payload templates with ``.$`` keys at any
  depth; JSONPath with names, ``['quoted']`` names, indexes, slices, unions, ``*`` and ``..``
  (filters are not supported); the context object ``$$`` (``Execution``, ``State``,
  ``StateMachine``, ``Task.Token`` in Task states, ``Map.Item`` in a Map's ``ItemSelector``).
- Intrinsic functions: every ``States.*`` function of the spec but ``States.MathRandom``;
  ``States.JsonMerge`` shallow only, as Step Functions.
- Time is virtual (:class:`Clock`): Wait states and retry delays advance it and nothing sleeps; a
  resource callable advances it with ``ctx.clock.advance(seconds)``, and one that runs past the
  Task's ``TimeoutSeconds`` fails the Task with ``States.Timeout``.
- Errors: a callable raising :class:`TaskFailed` reports its error and cause; any other exception
  reports its class name and message (as Lambda reports ``errorType``). ``States.ALL`` matches
  every error and ``States.TaskFailed`` every error but ``States.Timeout``; neither matches
  ``States.Runtime``, which fails the execution outright: Step Functions reports a path that
  cannot be applied (``InputPath``, ``Parameters``, ``OutputPath``, a Choice ``Variable``...) and a
  failing intrinsic function so, where the spec names ``States.ParameterPathFailure`` and
  ``States.IntrinsicFailure``. A ``ResultPath`` that cannot be applied is
  ``States.ResultPathMatchFailure``, which Retry and Catch see.
- Parallel branches and Map iterations run one after another, in order; their states appear in
  the history in the order entered.

Not supported (:func:`run` raises NotImplementedError before running): JSONata, variables
(``Assign``), a Map's ``ItemReader``/``ItemBatcher``/``ResultWriter``, ``States.MathRandom``,
JSONPath filters. Accepted but not simulated: ``JitterStrategy`` (delays are the un-jittered
backoff), ``HeartbeatSeconds``, ``MaxConcurrency``.

Validation (:func:`validate`, run first by :func:`run`) raises :class:`InvalidDefinition` naming
each offending state: transitions to unknown states, a missing ``StartAt``, a scope without a
terminal state, unreachable states, unknown or conflicting fields per state type, malformed paths,
intrinsic functions and retriers.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

__all__ = [
    "Call",
    "Clock",
    "Context",
    "Execution",
    "Failure",
    "InvalidDefinition",
    "MissingResource",
    "Retried",
    "Step",
    "StepLimitExceeded",
    "TaskFailed",
    "definition_from_template",
    "lambda_invoke",
    "resolve_cfn",
    "run",
    "validate",
]

ACCOUNT = "123456789012"
REGION = "us-east-1"
DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)

# Error names the interpreter reports itself.
RUNTIME = "States.Runtime"
TIMEOUT = "States.Timeout"
ALL = "States.ALL"
TASK_FAILED = "States.TaskFailed"
NO_CHOICE_MATCHED = "States.NoChoiceMatched"
RESULT_PATH_MATCH_FAILURE = "States.ResultPathMatchFailure"
EXCEED_TOLERATED_FAILURE_THRESHOLD = "States.ExceedToleratedFailureThreshold"


# --- public types -------------------------------------------------------------------------------


class InvalidDefinition(ValueError):
    """The definition breaks the States Language; ``problems`` pairs each state name with why."""

    def __init__(self, problems: list[tuple[str | None, str]]) -> None:
        self.problems = problems
        super().__init__(
            "\n".join(f"state {s!r}: {m}" if s is not None else m for s, m in problems)
        )

    @property
    def states(self) -> list[str]:
        """The names of the states found at fault, in the order found."""
        return [s for s, _ in self.problems if s is not None]


class TaskFailed(Exception):
    """Raised by a resource callable to fail its Task with this error name and cause."""

    def __init__(self, error: str, cause: str = "") -> None:
        super().__init__(f"{error}: {cause}" if cause else error)
        self.error = error
        self.cause = cause


class MissingResource(LookupError):
    """A Task's ``Resource`` has no callable among the resources given to :func:`run`."""


class StepLimitExceeded(RuntimeError):
    """The execution entered more states than ``max_steps`` (a loop that does not end)."""

    def __init__(self, max_steps: int, history: list[Step]) -> None:
        last = [s.state for s in history[-8:]]
        super().__init__(f"more than {max_steps} states entered; the last ones: {last}")
        self.max_steps = max_steps
        self.history = history


@dataclass(frozen=True)
class Failure:
    """A state's error, as history records it in place of an output."""

    error: str | None
    cause: str | None


class Step(NamedTuple):
    """One state entered: its name, type, effective input and output (or :class:`Failure`)."""

    state: str
    type: str
    input: Any
    output: Any


class Retried(NamedTuple):
    """One retry: the state, the error retried, the retry's number (1, 2...) and its delay."""

    state: str
    error: str
    attempt: int
    delay_seconds: float


class Call(NamedTuple):
    """One invocation of a resource callable and the timeouts its Task declared."""

    state: str
    resource: str
    input: Any
    retry_count: int
    timeout_seconds: int | None
    heartbeat_seconds: int | None


class Clock:
    """Virtual time: Wait states, retry delays and callables advance it; nothing sleeps."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("the clock needs an aware datetime (UTC)")
        self.start = start
        self._now = start

    @property
    def now(self) -> datetime:
        """The current virtual time."""
        return self._now

    @property
    def elapsed_seconds(self) -> float:
        """Virtual seconds since the execution started."""
        return (self._now - self.start).total_seconds()

    def advance(self, seconds: float) -> None:
        """Move the clock forward, as a task that runs ``seconds`` would."""
        if seconds < 0:
            raise ValueError("time does not run backwards")
        self._now += timedelta(seconds=seconds)


@dataclass(frozen=True)
class Context:
    """What a resource callable learns of its invocation: the state, ``$$``, timeouts, clock."""

    state_name: str
    resource: str
    retry_count: int
    timeout_seconds: int | None
    heartbeat_seconds: int | None
    credentials: Any
    context_object: Mapping[str, Any]
    clock: Clock

    @property
    def task_token(self) -> str:
        """The token a ``.waitForTaskToken`` integration would send (``$$.Task.Token``)."""
        return str(self.context_object["Task"]["Token"])

    @property
    def execution_name(self) -> str:
        """The execution's name (``$$.Execution.Name``)."""
        return str(self.context_object["Execution"]["Name"])


@dataclass
class Execution:
    """The outcome of :func:`run`: status, output or error, and what happened on the way."""

    status: str  # SUCCEEDED, FAILED or TIMED_OUT
    output: Any
    error: str | None
    cause: str | None
    history: list[Step]
    retries: list[Retried] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    start_time: datetime = DEFAULT_START
    stop_time: datetime = DEFAULT_START

    @property
    def elapsed_seconds(self) -> float:
        """Virtual seconds the execution took (waits, retry delays, time callables spent)."""
        return (self.stop_time - self.start_time).total_seconds()

    def entered(self, name: str) -> bool:
        """Whether a state of this name was entered (at any depth)."""
        return any(step.state == name for step in self.history)

    def states(self) -> list[str]:
        """The names of the states entered, in order (a state entered twice appears twice)."""
        return [step.state for step in self.history]

    def visits(self, name: str) -> list[Step]:
        """Every entry into the state ``name``, in order."""
        return [step for step in self.history if step.state == name]


Resource = Callable[[Any, Context], Any]


# --- running ------------------------------------------------------------------------------------


def run(
    definition: dict[str, Any] | str,
    input: Any,
    resources: Mapping[str, Resource],
    *,
    execution_name: str = "exec-1",
    max_steps: int = 10_000,
    state_machine_name: str = "state-machine",
    start_time: datetime = DEFAULT_START,
) -> Execution:
    """Validate ``definition`` and execute it on ``input``; Tasks call ``resources[Resource]``."""
    machine, unsupported = _check(definition)
    if unsupported:
        raise NotImplementedError("; ".join(unsupported))
    interpreter = _Interpreter(
        machine,
        _jsonable(input, "the execution input"),
        resources,
        execution_name=execution_name,
        state_machine_name=state_machine_name,
        clock=Clock(start_time),
        max_steps=max_steps,
    )
    return interpreter.execute()


def lambda_invoke(handler: Callable[[Any, Any], Any], lambda_context: Any = None) -> Resource:
    """A resource for ``arn:aws:states:::lambda:invoke`` that runs ``handler`` as Lambda would.

    The callable gets the Task's parameters, passes their ``Payload`` to the handler and returns
    the integration's response ``{"ExecutedVersion", "Payload", "StatusCode"}``; an exception
    becomes the integration's error: its class name, with Lambda's error document as the cause.
    """

    def invoke(parameters: Any, ctx: Context) -> Any:
        event = parameters["Payload"]
        try:
            payload = handler(event, lambda_context)
        except Exception as exc:
            document = {
                "errorMessage": str(exc),
                "errorType": type(exc).__name__,
                "requestId": str(uuid.uuid4()),
                "stackTrace": [],
            }
            raise TaskFailed(type(exc).__name__, json.dumps(document)) from exc
        return {"ExecutedVersion": "$LATEST", "Payload": payload, "StatusCode": 200}

    return invoke


class _Failure(Exception):
    """An error a state reports; ``terminal`` ones (States.Runtime) end the execution outright."""

    def __init__(self, error: str | None, cause: str | None, *, terminal: bool = False) -> None:
        super().__init__(error, cause)
        self.error = error
        self.cause = cause
        self.terminal = terminal
        self.effective_input: Any = None  # the failing state's effective input, for history


@dataclass(frozen=True)
class _Caught:
    """A state's error that a catcher handled: history shows the failure, ``output`` goes on."""

    failure: Failure
    output: Any


def _runtime(cause: str) -> _Failure:
    return _Failure(RUNTIME, cause, terminal=True)


class _Interpreter:
    """One execution: the clock, the history, and a method per state type."""

    def __init__(
        self,
        machine: dict[str, Any],
        data: Any,
        resources: Mapping[str, Resource],
        *,
        execution_name: str,
        state_machine_name: str,
        clock: Clock,
        max_steps: int,
    ) -> None:
        self.machine = machine
        self.input = data
        self.resources = resources
        self.clock = clock
        self.max_steps = max_steps
        self.history: list[Step] = []
        self.retries: list[Retried] = []
        self.calls: list[Call] = []
        self.tokens = 0
        state_machine_arn = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{state_machine_name}"
        self.execution = {
            "Id": f"arn:aws:states:{REGION}:{ACCOUNT}:execution:{state_machine_name}:"
            f"{execution_name}",
            "Input": data,
            "Name": execution_name,
            "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/{state_machine_name}-role",
            "StartTime": _iso(clock.now),
            "RedriveCount": 0,
        }
        self.state_machine = {"Id": state_machine_arn, "Name": state_machine_name}

    def execute(self) -> Execution:
        status, output, error, cause = "SUCCEEDED", None, None, None
        try:
            output = self.run_machine(self.machine, self.input, top=True)
        except _Failure as failure:
            timed_out = failure.terminal and failure.error == TIMEOUT
            status = "TIMED_OUT" if timed_out else "FAILED"
            error, cause = failure.error, failure.cause
        return Execution(
            status=status,
            output=output,
            error=error,
            cause=cause,
            history=self.history,
            retries=self.retries,
            calls=self.calls,
            start_time=self.clock.start,
            stop_time=self.clock.now,
        )

    def run_machine(self, machine: dict[str, Any], data: Any, *, top: bool = False) -> Any:
        """Run a state machine (or a branch, or an item processor) to its terminal state."""
        states = machine["States"]
        name: str | None = machine["StartAt"]
        limit = machine.get("TimeoutSeconds") if top else None
        while name is not None:
            if len(self.history) >= self.max_steps:
                raise StepLimitExceeded(self.max_steps, self.history)
            state = states[name]
            slot = len(self.history)
            self.history.append(Step(name, state["Type"], None, None))
            entered = self.clock.now
            handler = getattr(self, "state_" + state["Type"].lower())
            try:
                effective, data, name = handler(name, state, data, entered)
            except _Failure as failure:
                self._record(slot, failure.effective_input, Failure(failure.error, failure.cause))
                raise
            if isinstance(data, _Caught):
                self._record(slot, effective, data.failure)
                data = data.output
            else:
                self._record(slot, effective, data)
            if limit is not None and self.clock.elapsed_seconds > limit:
                raise _Failure(TIMEOUT, f"the execution ran past {limit} s", terminal=True)
        return data

    def _record(self, slot: int, effective: Any, outcome: Any) -> None:
        step = self.history[slot]
        self.history[slot] = step._replace(
            input=copy.deepcopy(effective), output=copy.deepcopy(outcome)
        )

    # The context object ($$) as a state sees it.
    def context(
        self, name: str, entered: datetime, retry_count: int = 0, **extra: Any
    ) -> dict[str, Any]:
        ctx = {
            "Execution": self.execution,
            "State": {"Name": name, "EnteredTime": _iso(entered), "RetryCount": retry_count},
            "StateMachine": self.state_machine,
        }
        ctx.update(extra)
        return ctx

    # --- state types: each returns (effective input, output, next state or None) ---

    def state_pass(self, name: str, state: dict, raw: Any, entered: datetime) -> tuple:
        ctx = self.context(name, entered)
        effective = self._effective_input(state, raw, ctx)
        result = copy.deepcopy(state["Result"]) if "Result" in state else effective
        output = _output_path(state, _result_path(state, raw, result), ctx)
        return effective, output, state.get("Next")

    def state_task(self, name: str, state: dict, raw: Any, entered: datetime) -> tuple:
        def attempt(retry_count: int, seen: dict[str, Any]) -> Any:
            self.tokens += 1
            task = {"Token": f"{self.execution['Name']}-{name}-{self.tokens}"}
            ctx = self.context(name, entered, retry_count, Task=task)
            effective = seen["input"] = self._effective_input(state, raw, ctx)
            result = self._invoke(name, state, effective, ctx, retry_count)
            return self._output(state, raw, result, ctx)

        return self._with_handlers(name, state, raw, attempt)

    def state_choice(self, name: str, state: dict, raw: Any, entered: datetime) -> tuple:
        ctx = self.context(name, entered)
        effective = _input_path(state, raw, ctx)
        for rule in state["Choices"]:
            if _test(rule, effective, ctx):
                target = rule["Next"]
                break
        else:
            if "Default" not in state:
                failure = _Failure(NO_CHOICE_MATCHED, f"no choice rule of {name!r} matched")
                failure.effective_input = effective
                raise failure
            target = state["Default"]
        return effective, _output_path(state, effective, ctx), target

    def state_wait(self, name: str, state: dict, raw: Any, entered: datetime) -> tuple:
        ctx = self.context(name, entered)
        effective = _input_path(state, raw, ctx)
        if "Seconds" in state:
            seconds: float = state["Seconds"]
        elif "SecondsPath" in state:
            seconds = _resolve_required(state["SecondsPath"], effective, ctx, "SecondsPath")
            if not _is_int(seconds) or seconds < 0:
                raise _runtime(f"SecondsPath {state['SecondsPath']!r} is not a whole number >= 0")
        else:
            if "Timestamp" in state:
                stamp = state["Timestamp"]
            else:
                stamp = _resolve_required(state["TimestampPath"], effective, ctx, "TimestampPath")
            until = _timestamp(stamp)
            if until is None:
                raise _runtime(f"{stamp!r} is not a timestamp")
            seconds = max(0.0, (until - self.clock.now).total_seconds())
        self.clock.advance(seconds)
        return effective, _output_path(state, effective, ctx), state.get("Next")

    def state_succeed(self, name: str, state: dict, raw: Any, entered: datetime) -> tuple:
        ctx = self.context(name, entered)
        effective = _input_path(state, raw, ctx)
        return effective, _output_path(state, effective, ctx), None

    def state_fail(self, name: str, state: dict, raw: Any, entered: datetime) -> tuple:
        ctx = self.context(name, entered)
        error, cause = state.get("Error"), state.get("Cause")
        if "ErrorPath" in state:
            error = _dynamic_string(state["ErrorPath"], raw, ctx, "ErrorPath")
        if "CausePath" in state:
            cause = _dynamic_string(state["CausePath"], raw, ctx, "CausePath")
        failure = _Failure(error, cause)
        failure.effective_input = raw
        raise failure

    def state_parallel(self, name: str, state: dict, raw: Any, entered: datetime) -> tuple:
        def attempt(retry_count: int, seen: dict[str, Any]) -> Any:
            ctx = self.context(name, entered, retry_count)
            effective = seen["input"] = self._effective_input(state, raw, ctx)
            result = [
                self.run_machine(branch, copy.deepcopy(effective)) for branch in state["Branches"]
            ]
            return self._output(state, raw, result, ctx)

        return self._with_handlers(name, state, raw, attempt)

    def state_map(self, name: str, state: dict, raw: Any, entered: datetime) -> tuple:
        processor = state.get("ItemProcessor") or state["Iterator"]
        selector = state.get("ItemSelector", state.get("Parameters"))
        distributed = processor.get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED"

        def attempt(retry_count: int, seen: dict[str, Any]) -> Any:
            ctx = self.context(name, entered, retry_count)
            effective = seen["input"] = _input_path(state, raw, ctx)
            items = _resolve_required(state.get("ItemsPath", "$"), effective, ctx, "ItemsPath")
            if not isinstance(items, list):
                raise _runtime(f"ItemsPath of {name!r} selects {_text(items)}, not an array")
            if "MaxConcurrencyPath" in state:
                _whole(state, "MaxConcurrencyPath", effective, ctx)
            result: list[Any] = []
            failed = 0
            for index, item in enumerate(items):
                if selector is None:
                    item_input = copy.deepcopy(item)
                else:
                    item_ctx = dict(ctx, Map={"Item": {"Index": index, "Value": item}})
                    item_input = _template(selector, effective, item_ctx)
                try:
                    result.append(self.run_machine(processor, item_input))
                except _Failure as failure:
                    if failure.terminal or not distributed:
                        raise
                    failed += 1
                    result.append({"Error": failure.error, "Cause": failure.cause})
            if failed and _over_tolerance(state, failed, len(items), effective, ctx):
                raise _Failure(
                    EXCEED_TOLERATED_FAILURE_THRESHOLD,
                    f"{failed} of {len(items)} items of {name!r} failed",
                )
            return self._output(state, raw, result, ctx)

        return self._with_handlers(name, state, raw, attempt)

    # --- shared machinery ---

    def _effective_input(self, state: dict, raw: Any, ctx: dict[str, Any]) -> Any:
        effective = _input_path(state, raw, ctx)
        if "Parameters" in state:
            effective = _template(state["Parameters"], effective, ctx)
        return effective

    def _output(self, state: dict, raw: Any, result: Any, ctx: dict[str, Any]) -> Any:
        if "ResultSelector" in state:
            result = _template(state["ResultSelector"], result, ctx)
        return _output_path(state, _result_path(state, raw, result), ctx)

    def _invoke(
        self, name: str, state: dict, effective: Any, ctx: dict[str, Any], retry_count: int
    ) -> Any:
        resource = state["Resource"]
        if resource not in self.resources:
            raise MissingResource(
                f"state {name!r} calls {resource!r}; the resources given are "
                f"{sorted(self.resources)}"
            )
        timeout = state.get("TimeoutSeconds")
        if "TimeoutSecondsPath" in state:
            timeout = _whole(state, "TimeoutSecondsPath", effective, ctx, positive=True)
        heartbeat = state.get("HeartbeatSeconds")
        if "HeartbeatSecondsPath" in state:
            heartbeat = _whole(state, "HeartbeatSecondsPath", effective, ctx, positive=True)
        self.calls.append(
            Call(name, resource, copy.deepcopy(effective), retry_count, timeout, heartbeat)
        )
        context = Context(
            state_name=name,
            resource=resource,
            retry_count=retry_count,
            timeout_seconds=timeout,
            heartbeat_seconds=heartbeat,
            credentials=copy.deepcopy(state.get("Credentials")),
            context_object=copy.deepcopy(ctx),
            clock=self.clock,
        )
        started = self.clock.now
        try:
            result = self.resources[resource](copy.deepcopy(effective), context)
        except TaskFailed as exc:
            raise _Failure(exc.error, exc.cause) from exc
        except Exception as exc:
            raise _Failure(type(exc).__name__, str(exc)) from exc
        took = (self.clock.now - started).total_seconds()
        if timeout is not None and took > timeout:
            raise _Failure(TIMEOUT, f"the task ran {took:g} s, past its {timeout} s timeout")
        return _jsonable(result, f"what {resource!r} returned to state {name!r}")

    def _with_handlers(
        self, name: str, state: dict, raw: Any, attempt: Callable[[int, dict[str, Any]], Any]
    ) -> tuple:
        """Run ``attempt`` under the state's Retry and Catch; retriers count across the visit."""
        retriers = state.get("Retry", [])
        used = [0] * len(retriers)
        retry_count = 0
        while True:
            seen: dict[str, Any] = {"input": raw}
            try:
                output = attempt(retry_count, seen)
                return seen["input"], output, state.get("Next")
            except _Failure as failure:
                failure.effective_input = seen["input"]
                if failure.terminal:
                    raise
                index = _first_match(retriers, failure.error)
                if index is not None:
                    retrier = retriers[index]
                    if used[index] < retrier.get("MaxAttempts", 3):
                        used[index] += 1
                        delay = retrier.get("IntervalSeconds", 1) * retrier.get(
                            "BackoffRate", 2.0
                        ) ** (used[index] - 1)
                        if "MaxDelaySeconds" in retrier:
                            delay = min(delay, retrier["MaxDelaySeconds"])
                        self.retries.append(Retried(name, str(failure.error), used[index], delay))
                        self.clock.advance(delay)
                        retry_count += 1
                        continue
                catcher_index = _first_match(state.get("Catch", []), failure.error)
                if catcher_index is None:
                    raise
                catcher = state["Catch"][catcher_index]
                error_output: dict[str, Any] = {"Error": failure.error}
                if failure.cause is not None:
                    error_output["Cause"] = failure.cause
                caught = _Caught(
                    Failure(failure.error, failure.cause), _result_path(catcher, raw, error_output)
                )
                return seen["input"], caught, catcher["Next"]


def _first_match(handlers: list[dict[str, Any]], error: str | None) -> int | None:
    """The first retrier or catcher whose ErrorEquals names ``error``."""
    for index, handler in enumerate(handlers):
        names = handler["ErrorEquals"]
        if error in names or ALL in names or (TASK_FAILED in names and error != TIMEOUT):
            return index
    return None


def _over_tolerance(state: dict, failed: int, total: int, data: Any, ctx: dict) -> bool:
    """Whether a distributed Map's failures break its ToleratedFailureCount/Percentage."""
    count = state.get("ToleratedFailureCount")
    if "ToleratedFailureCountPath" in state:
        count = _whole(state, "ToleratedFailureCountPath", data, ctx)
    percentage = state.get("ToleratedFailurePercentage")
    if "ToleratedFailurePercentagePath" in state:
        percentage = _resolve_required(
            state["ToleratedFailurePercentagePath"], data, ctx, "ToleratedFailurePercentagePath"
        )
        if not _is_number(percentage) or not 0 <= percentage <= 100:
            raise _runtime("ToleratedFailurePercentagePath selects no percentage")
    if count is None and percentage is None:
        count = 0
    over_count = count is not None and failed > count
    over_percentage = percentage is not None and failed * 100 / total > percentage
    return over_count or over_percentage


def _whole(state: dict, key: str, data: Any, ctx: dict, *, positive: bool = False) -> int:
    value = _resolve_required(state[key], data, ctx, key)
    if not _is_int(value) or value < (1 if positive else 0):
        raise _runtime(f"{key} {state[key]!r} selects {_text(value)}, not a whole number")
    return value


# --- input and output processing ----------------------------------------------------------------


def _input_path(state: dict, raw: Any, ctx: dict[str, Any]) -> Any:
    return _apply_filter(state, "InputPath", raw, ctx)


def _output_path(state: dict, data: Any, ctx: dict[str, Any]) -> Any:
    return _apply_filter(state, "OutputPath", data, ctx)


def _apply_filter(state: dict, key: str, data: Any, ctx: dict[str, Any]) -> Any:
    if key not in state:
        return data
    if state[key] is None:
        return {}
    found, value = _resolve(_parse_path(state[key]), data, ctx)
    if not found:
        raise _runtime(f"Invalid path {state[key]!r} for {key}: no results in {_text(data)}")
    return value


def _result_path(state: dict, raw: Any, result: Any) -> Any:
    if "ResultPath" not in state:
        return result
    if state["ResultPath"] is None:
        return raw
    return _put(raw, _parse_path(state["ResultPath"]), result)


def _template(template: Any, data: Any, ctx: dict[str, Any]) -> Any:
    """A payload template's payload: ``.$`` fields (at any depth) replaced by their values."""
    if isinstance(template, dict):
        payload = {}
        for key, value in template.items():
            if key.endswith(".$"):
                payload[key[:-2]] = _dynamic(value, data, ctx, key)
            else:
                payload[key] = _template(value, data, ctx)
        return payload
    if isinstance(template, list):
        return [_template(value, data, ctx) for value in template]
    return copy.deepcopy(template)


def _dynamic(expression: str, data: Any, ctx: dict[str, Any], key: str) -> Any:
    """The value of a ``.$`` field: a path into the input or ``$$``, or an intrinsic function."""
    if expression.startswith("$"):
        found, value = _resolve(_parse_path(expression), data, ctx)
        if not found:
            where = "the context object" if expression.startswith("$$") else "the input"
            raise _runtime(
                f"The JSONPath {expression!r} specified for the field {key!r} could not be found "
                f"in {where} {_text(ctx if expression.startswith('$$') else data)}"
            )
        return copy.deepcopy(value)
    return _evaluate(_parse_intrinsic(expression), data, ctx)


def _dynamic_string(expression: str, data: Any, ctx: dict[str, Any], key: str) -> str:
    value = _dynamic(expression, data, ctx, key)
    if not isinstance(value, str):
        raise _runtime(f"{key} {expression!r} gives {_text(value)}, not a string")
    return value


def _resolve_required(expression: str, data: Any, ctx: dict[str, Any], key: str) -> Any:
    found, value = _resolve(_parse_path(expression), data, ctx)
    if not found:
        raise _runtime(f"{key} {expression!r} selects nothing in {_text(data)}")
    return value


# --- JSONPath -----------------------------------------------------------------------------------


class _PathSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class _Path:
    text: str
    context: bool  # a $$ path, into the context object
    steps: tuple[tuple[Any, ...], ...]

    @property
    def definite(self) -> bool:
        """Names and indexes only: the path selects one node or none (a Reference Path)."""
        return all(step[0] in ("name", "index") for step in self.steps)


@functools.lru_cache(maxsize=4096)
def _parse_path(text: str) -> _Path:
    """Parse a JSONPath (``$.a.b``, ``$['a'][0]``, ``$.a[1:3]``, ``$..a``, ``$$.Map.Item``)."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise _PathSyntaxError(f"{text!r} is not a path (it must start with '$')")
    context = text.startswith("$$")
    position = 2 if context else 1
    steps: list[tuple[Any, ...]] = []
    while position < len(text):
        if text.startswith("..", position):
            position += 2
            if text.startswith("[", position):
                step, position = _parse_bracket(text, position)
            else:
                step, position = _parse_dot_name(text, position)
            steps.append(("descend", step))
        elif text[position] == ".":
            step, position = _parse_dot_name(text, position + 1)
            steps.append(step)
        elif text[position] == "[":
            step, position = _parse_bracket(text, position)
            steps.append(step)
        else:
            raise _PathSyntaxError(f"unexpected {text[position]!r} in {text!r}")
    return _Path(text, context, tuple(steps))


def _parse_dot_name(text: str, position: int) -> tuple[tuple[Any, ...], int]:
    name: list[str] = []
    while position < len(text) and text[position] not in ".[":
        if text[position] == "\\" and position + 1 < len(text):
            position += 1
        name.append(text[position])
        position += 1
    if not name:
        raise _PathSyntaxError(f"an empty name in {text!r}")
    if name == ["*"]:
        return ("wildcard",), position
    if "".join(name).startswith(("?", "@")) or "(" in name:
        raise NotImplementedError(f"JSONPath filters and functions are not supported: {text!r}")
    return ("name", "".join(name)), position


_SLICE = re.compile(r"\s*(-?\d+)?\s*:\s*(-?\d+)?\s*(?::\s*(-?\d+)?\s*)?$")


def _parse_bracket(text: str, position: int) -> tuple[tuple[Any, ...], int]:
    close = _bracket_end(text, position)
    inner = text[position + 1 : close].strip()
    after = close + 1
    if inner == "*":
        return ("wildcard",), after
    if inner.startswith(("?", "(")) or ("@" in inner and not inner.startswith(("'", '"'))):
        raise NotImplementedError(f"JSONPath filters and scripts are not supported: {text!r}")
    if inner.startswith(("'", '"')):
        names = _quoted_names(inner, text)
        return (("name", names[0]) if len(names) == 1 else ("union", tuple(names))), after
    if match := _SLICE.match(inner):
        start, stop, stride = (int(g) if g is not None else None for g in match.groups())
        if stride == 0:
            raise _PathSyntaxError(f"a slice step of 0 in {text!r}")
        return ("slice", start, stop, stride), after
    try:
        indexes = [int(part) for part in inner.split(",")]
    except ValueError:
        raise _PathSyntaxError(f"{inner!r} is not an index, slice or name in {text!r}") from None
    if len(indexes) == 1:
        return ("index", indexes[0]), after
    return ("union", tuple(indexes)), after


def _bracket_end(text: str, position: int) -> int:
    quote = None
    index = position + 1
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "]":
            return index
        index += 1
    raise _PathSyntaxError(f"an unclosed '[' in {text!r}")


def _quoted_names(inner: str, text: str) -> list[str]:
    names: list[str] = []
    index = 0
    while True:
        while index < len(inner) and inner[index] == " ":
            index += 1
        if index >= len(inner) or inner[index] not in "'\"":
            raise _PathSyntaxError(f"a malformed quoted name in {text!r}")
        quote, index, name = inner[index], index + 1, []
        while index < len(inner) and inner[index] != quote:
            if inner[index] == "\\" and index + 1 < len(inner):
                index += 1
            name.append(inner[index])
            index += 1
        if index >= len(inner):
            raise _PathSyntaxError(f"an unclosed quote in {text!r}")
        names.append("".join(name))
        index += 1
        while index < len(inner) and inner[index] == " ":
            index += 1
        if index == len(inner):
            return names
        if inner[index] != ",":
            raise _PathSyntaxError(f"a malformed quoted name in {text!r}")
        index += 1


def _resolve(path: _Path, data: Any, ctx: dict[str, Any]) -> tuple[bool, Any]:
    """``(found, value)``: a definite path's node, or an indefinite one's list of matches."""
    nodes = [ctx if path.context else data]
    for step in path.steps:
        nodes = [child for node in nodes for child in _step(step, node)]
    if path.definite:
        return (True, nodes[0]) if nodes else (False, None)
    return True, nodes


def _step(step: tuple[Any, ...], node: Any) -> list[Any]:
    kind = step[0]
    if kind == "name":
        return [node[step[1]]] if isinstance(node, dict) and step[1] in node else []
    if kind == "index":
        index = step[1]
        ok = isinstance(node, list) and -len(node) <= index < len(node)
        return [node[index]] if ok else []
    if kind == "wildcard":
        if isinstance(node, dict):
            return list(node.values())
        return list(node) if isinstance(node, list) else []
    if kind == "slice":
        return node[slice(*step[1:])] if isinstance(node, list) else []
    if kind == "union":
        kind_of = "name" if isinstance(step[1][0], str) else "index"
        return [child for member in step[1] for child in _step((kind_of, member), node)]
    # descend: the inner step applied to the node and every node below it
    return [child for inner in _walk(node) for child in _step(step[1], inner)]


def _walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from _walk(child)


def _put(data: Any, path: _Path, value: Any) -> Any:
    """``data`` with ``value`` placed at a Reference Path, objects created on the way."""
    if not path.steps:
        return copy.deepcopy(value)
    root = copy.deepcopy(data)
    node = root
    for number, (kind, key) in enumerate(path.steps):
        last = number == len(path.steps) - 1
        if kind == "name" and isinstance(node, dict):
            if last:
                node[key] = copy.deepcopy(value)
            else:
                if key not in node:
                    node[key] = {}
                node = node[key]
        elif kind == "index" and isinstance(node, list) and -len(node) <= key < len(node):
            if last:
                node[key] = copy.deepcopy(value)
            else:
                node = node[key]
        else:
            raise _Failure(
                RESULT_PATH_MATCH_FAILURE,
                f"Unable to apply ResultPath {path.text!r} to the input {_text(data)}",
            )
    return root


# --- JSON values ---------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _same(first: Any, second: Any) -> bool:
    """JSON equality: 1 and true differ, 1 and 1.0 do not."""
    if _is_number(first) and _is_number(second):
        return bool(first == second)
    if type(first) is not type(second):
        return False
    if isinstance(first, dict):
        return first.keys() == second.keys() and all(_same(first[k], second[k]) for k in first)
    if isinstance(first, list):
        return len(first) == len(second) and all(map(_same, first, second))
    return bool(first == second)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _text(value: Any) -> str:
    text = _compact(value)
    return text if len(text) <= 300 else text[:300] + "..."


def _jsonable(value: Any, what: str) -> Any:
    """``value`` as Step Functions would pass it on: JSON, round-tripped."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not JSON ({exc}); convert it first") from exc


# --- intrinsic functions ------------------------------------------------------------------------


class _Literal(str):
    """A string argument, with the positions of the characters that were escaped."""

    escaped: frozenset[int]

    def __new__(cls, value: str, escaped: frozenset[int]) -> _Literal:
        literal = super().__new__(cls, value)
        literal.escaped = escaped
        return literal


@dataclass(frozen=True)
class _Function:
    name: str
    args: tuple[Any, ...]  # _Function, _Path, or a literal value


# name: (fewest arguments, most arguments or None)
_ARITY: dict[str, tuple[int, int | None]] = {
    "States.Format": (1, None),
    "States.StringToJson": (1, 1),
    "States.JsonToString": (1, 1),
    "States.Array": (0, None),
    "States.ArrayPartition": (2, 2),
    "States.ArrayContains": (2, 2),
    "States.ArrayRange": (3, 3),
    "States.ArrayGetItem": (2, 2),
    "States.ArrayLength": (1, 1),
    "States.ArrayUnique": (1, 1),
    "States.Base64Encode": (1, 1),
    "States.Base64Decode": (1, 1),
    "States.Hash": (2, 2),
    "States.JsonMerge": (3, 3),
    "States.MathRandom": (2, 3),
    "States.MathAdd": (2, 2),
    "States.StringSplit": (2, 2),
    "States.UUID": (0, 0),
}
_UNSUPPORTED_FUNCTIONS = {"States.MathRandom"}
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")


@functools.lru_cache(maxsize=4096)
def _parse_intrinsic(text: str) -> _Function:
    """Parse an intrinsic function invocation, such as ``States.Format('{}', $.a)``."""
    parser = _IntrinsicParser(text)
    function = parser.function()
    parser.skip_space()
    if parser.position != len(text):
        raise _PathSyntaxError(f"unexpected {text[parser.position :]!r} in {text!r}")
    return function


class _IntrinsicParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0

    def error(self, why: str) -> _PathSyntaxError:
        return _PathSyntaxError(f"{why} at {self.position} in {self.text!r}")

    def skip_space(self) -> None:
        while self.position < len(self.text) and self.text[self.position].isspace():
            self.position += 1

    def function(self) -> _Function:
        self.skip_space()
        match = re.compile(r"[A-Za-z0-9._]+").match(self.text, self.position)
        if not match:
            raise self.error("expected an intrinsic function name")
        name = match.group()
        self.position = match.end()
        if name not in _ARITY:
            raise self.error(f"unknown intrinsic function {name!r}")
        self.skip_space()
        if not self.text.startswith("(", self.position):
            raise self.error("expected '('")
        self.position += 1
        args: list[Any] = []
        self.skip_space()
        if self.text.startswith(")", self.position):
            self.position += 1
        else:
            while True:
                args.append(self.argument())
                self.skip_space()
                if self.text.startswith(")", self.position):
                    self.position += 1
                    break
                if not self.text.startswith(",", self.position):
                    raise self.error("expected ',' or ')'")
                self.position += 1
        fewest, most = _ARITY[name]
        if len(args) < fewest or (most is not None and len(args) > most):
            bound = "any" if most is None else most
            raise self.error(f"{name} takes {fewest}..{bound} arguments, not {len(args)}")
        if name == "States.JsonToString" and not isinstance(args[0], _Path):
            raise self.error("States.JsonToString takes a path")
        return _Function(name, tuple(args))

    def argument(self) -> Any:
        self.skip_space()
        text, position = self.text, self.position
        if position >= len(text):
            raise self.error("expected an argument")
        char = text[position]
        if char == "'":
            return self.string()
        if char == "$":
            return self.path()
        if match := _NUMBER.match(text, position):
            self.position = match.end()
            number = match.group()
            return float(number) if match.group(1) or match.group(2) else int(number)
        for word, value in (("null", None), ("true", True), ("false", False)):
            if re.match(rf"{word}\b", text[position:]):
                self.position += len(word)
                return value
        return self.function()

    def string(self) -> _Literal:
        chars: list[str] = []
        escaped: set[int] = set()
        self.position += 1
        while self.position < len(self.text):
            char = self.text[self.position]
            if char == "\\":
                following = self.text[self.position + 1 : self.position + 2]
                if following not in ("'", "{", "}", "\\"):
                    raise self.error("an open escape backslash")
                escaped.add(len(chars))
                chars.append(following)
                self.position += 2
            elif char == "'":
                self.position += 1
                return _Literal("".join(chars), frozenset(escaped))
            else:
                chars.append(char)
                self.position += 1
        raise self.error("an unclosed string")

    def path(self) -> _Path:
        start, depth, quote = self.position, 0, None
        while self.position < len(self.text):
            char = self.text[self.position]
            if quote:
                if char == quote:
                    quote = None
            elif char in "'\"" and depth:
                quote = char
            elif char == "[":
                depth += 1
            elif char == "]":
                depth -= 1
            elif depth == 0 and (char in ",)" or char.isspace()):
                break
            self.position += 1
        return _parse_path(self.text[start : self.position])


def _evaluate(function: _Function, data: Any, ctx: dict[str, Any]) -> Any:
    """Invoke an intrinsic function; a failure is States.Runtime, as Step Functions reports it."""

    def value(arg: Any) -> Any:
        if isinstance(arg, _Function):
            return _evaluate(arg, data, ctx)
        if isinstance(arg, _Path):
            found, selected = _resolve(arg, data, ctx)
            if not found:
                raise _runtime(f"{function.name}: the path {arg.text!r} selects nothing")
            return copy.deepcopy(selected)
        return str(arg) if isinstance(arg, _Literal) else arg

    if function.name == "States.Format":
        template = function.args[0]
        text = template if isinstance(template, _Literal) else value(template)
        if not isinstance(text, str):
            raise _runtime(f"States.Format: the template {_text(text)} is not a string")
        escaped = text.escaped if isinstance(text, _Literal) else frozenset()
        return _format(str(text), escaped, [value(arg) for arg in function.args[1:]])
    try:
        return _FUNCTIONS[function.name](*(value(arg) for arg in function.args))
    except _IntrinsicError as exc:
        raise _runtime(f"{function.name}: {exc}") from None


class _IntrinsicError(ValueError):
    pass


def _format(template: str, escaped: frozenset[int], args: list[Any]) -> str:
    pieces: list[str] = []
    index, used = 0, 0
    while index < len(template):
        placeholder = (
            template.startswith("{}", index) and index not in escaped and index + 1 not in escaped
        )
        if placeholder:
            if used == len(args):
                raise _runtime("States.Format: more '{}' than arguments")
            arg = args[used]
            if isinstance(arg, dict | list):
                raise _runtime(f"States.Format: {_text(arg)} is not a string, number or boolean")
            pieces.append(arg if isinstance(arg, str) else json.dumps(arg))
            used += 1
            index += 2
        else:
            pieces.append(template[index])
            index += 1
    if used != len(args):
        raise _runtime("States.Format: more arguments than '{}'")
    return "".join(pieces)


def _need(condition: bool, why: str) -> None:
    if not condition:
        raise _IntrinsicError(why)


def _string_to_json(text: Any) -> Any:
    _need(isinstance(text, str), f"{_text(text)} is not a string")
    try:
        return json.loads(text)
    except ValueError:
        raise _IntrinsicError(f"{text!r} is not JSON") from None


def _array_partition(array: Any, size: Any) -> list[list[Any]]:
    _need(isinstance(array, list), f"{_text(array)} is not an array")
    _need(_is_int(size) and size > 0, f"{_text(size)} is not a positive whole number")
    return [array[i : i + size] for i in range(0, len(array), size)]


def _array_range(start: Any, end: Any, step: Any) -> list[int]:
    _need(all(_is_int(v) for v in (start, end, step)), "the arguments must be whole numbers")
    _need(step != 0, "the step must not be 0")
    values = list(range(start, end + (1 if step > 0 else -1), step))
    _need(len(values) <= 1000, "the array would hold more than 1000 items")
    return values


def _array_get_item(array: Any, index: Any) -> Any:
    _need(isinstance(array, list), f"{_text(array)} is not an array")
    _need(_is_int(index) and 0 <= index < len(array), f"the index {_text(index)} is out of range")
    return array[index]


def _array_unique(array: Any) -> list[Any]:
    _need(isinstance(array, list), f"{_text(array)} is not an array")
    unique: list[Any] = []
    for item in array:
        if not any(_same(item, kept) for kept in unique):
            unique.append(item)
    return unique


def _base64_decode(text: Any) -> str:
    _need(isinstance(text, str) and len(text) <= 10_000, "the argument must be a short string")
    try:
        return base64.b64decode(text, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise _IntrinsicError(f"{text!r} is not Base64 of UTF-8 text") from None


_HASHES = {"MD5": "md5", "SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384"}
_HASHES["SHA-512"] = "sha512"


def _hash(data: Any, algorithm: Any) -> str:
    _need(algorithm in _HASHES, f"{_text(algorithm)} is not one of {sorted(_HASHES)}")
    text = data if isinstance(data, str) else _compact(data)
    _need(len(text) <= 10_000, "the data is longer than 10,000 characters")
    return hashlib.new(_HASHES[algorithm], text.encode()).hexdigest()


def _json_merge(first: Any, second: Any, deep: Any) -> dict[str, Any]:
    _need(isinstance(first, dict) and isinstance(second, dict), "the arguments must be objects")
    _need(deep is False, "Step Functions merges shallowly only: the third argument must be false")
    return {**first, **second}


def _math_add(first: Any, second: Any) -> int:
    _need(_is_int(first) and _is_int(second), "the arguments must be whole numbers")
    return first + second


def _string_split(text: Any, delimiters: Any) -> list[str]:
    _need(isinstance(text, str) and isinstance(delimiters, str), "the arguments must be strings")
    _need(delimiters != "", "the delimiter must not be empty")
    # Each character of the second argument splits, and empty pieces are dropped.
    return [piece for piece in re.split(f"[{re.escape(delimiters)}]", text) if piece]


def _unsupported(*_: Any) -> Any:
    raise _IntrinsicError("not supported by this interpreter")


def _checked(test: Callable[[Any], bool], what: str, then: Callable[..., Any]) -> Callable:
    def function(*args: Any) -> Any:
        _need(test(args[0]), f"{_text(args[0])} is not {what}")
        return then(*args)

    return function


def _is_array(value: Any) -> bool:
    return isinstance(value, list)


def _is_short_string(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 10_000


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "States.StringToJson": _string_to_json,
    "States.JsonToString": lambda value: _compact(value),
    "States.Array": lambda *values: list(values),
    "States.ArrayPartition": _array_partition,
    "States.ArrayContains": _checked(
        _is_array, "an array", lambda array, item: any(_same(item, v) for v in array)
    ),
    "States.ArrayRange": _array_range,
    "States.ArrayGetItem": _array_get_item,
    "States.ArrayLength": _checked(_is_array, "an array", len),
    "States.ArrayUnique": _array_unique,
    "States.Base64Encode": _checked(
        _is_short_string, "a string", lambda text: base64.b64encode(text.encode()).decode()
    ),
    "States.Base64Decode": _base64_decode,
    "States.Hash": _hash,
    "States.JsonMerge": _json_merge,
    "States.MathRandom": _unsupported,
    "States.MathAdd": _math_add,
    "States.StringSplit": _string_split,
    "States.UUID": lambda: str(uuid.uuid4()),
}


# --- Choice rules -------------------------------------------------------------------------------

_ORDERINGS = ("Equals", "LessThan", "GreaterThan", "LessThanEquals", "GreaterThanEquals")
_COMPARISONS = {f"{kind}{o}" for kind in ("String", "Numeric", "Timestamp") for o in _ORDERINGS}
_COMPARISONS |= {"BooleanEquals", "StringMatches"}
_TYPE_TESTS = {"IsNull", "IsPresent", "IsNumeric", "IsString", "IsBoolean", "IsTimestamp"}
_OPERATORS = _COMPARISONS | {f"{c}Path" for c in _COMPARISONS - {"StringMatches"}} | _TYPE_TESTS


def _test(rule: dict[str, Any], data: Any, ctx: dict[str, Any]) -> bool:
    """Evaluate a Choice rule on the Choice state's effective input."""
    if "And" in rule:
        return all(_test(inner, data, ctx) for inner in rule["And"])
    if "Or" in rule:
        return any(_test(inner, data, ctx) for inner in rule["Or"])
    if "Not" in rule:
        return not _test(rule["Not"], data, ctx)
    operator = next(key for key in rule if key in _OPERATORS)
    found, value = _resolve(_parse_path(rule["Variable"]), data, ctx)
    if operator == "IsPresent":
        return found is rule[operator]
    if not found:
        raise _runtime(
            f"Invalid path {rule['Variable']!r}: the choice state's condition path references "
            f"an invalid value"
        )
    expected = rule[operator]
    if operator.endswith("Path"):
        found, expected = _resolve(_parse_path(expected), data, ctx)
        if not found:
            raise _runtime(f"Invalid path {rule[operator]!r} in {operator}: no value")
        operator = operator[: -len("Path")]
    return _compare(operator, value, expected)


def _compare(operator: str, value: Any, expected: Any) -> bool:
    if operator in _TYPE_TESTS:
        actual = {
            "IsNull": value is None,
            "IsNumeric": _is_number(value),
            "IsString": isinstance(value, str),
            "IsBoolean": isinstance(value, bool),
            "IsTimestamp": _timestamp(value) is not None,
        }[operator]
        return actual is expected
    if operator == "StringMatches":
        return isinstance(value, str) and _wildcard(expected).fullmatch(value) is not None
    if operator == "BooleanEquals":
        return isinstance(value, bool) and isinstance(expected, bool) and value is expected
    if operator.startswith("String"):
        ok = isinstance(value, str) and isinstance(expected, str)
    elif operator.startswith("Numeric"):
        ok = _is_number(value) and _is_number(expected)
    else:
        value, expected = _timestamp(value), _timestamp(expected)
        ok = value is not None and expected is not None
    if not ok:
        return False
    ordering = operator.removeprefix("String").removeprefix("Numeric").removeprefix("Timestamp")
    return {
        "Equals": value == expected,
        "LessThan": value < expected,
        "GreaterThan": value > expected,
        "LessThanEquals": value <= expected,
        "GreaterThanEquals": value >= expected,
    }[ordering]


@functools.lru_cache(maxsize=1024)
def _wildcard(pattern: str) -> re.Pattern[str]:
    """StringMatches: ``*`` matches any run of characters; ``\\*`` and ``\\\\`` are literal."""
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            following = pattern[index + 1 : index + 2]
            if following not in ("*", "\\"):
                raise _PathSyntaxError(f"an open escape backslash in {pattern!r}")
            parts.append(re.escape(following))
            index += 2
        else:
            parts.append(".*" if char == "*" else re.escape(char))
            index += 1
    return re.compile("".join(parts), re.DOTALL)


# RFC 3339 with an uppercase T, and Z or an offset.
_TIMESTAMP = re.compile(
    r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})", re.ASCII
)


def _timestamp(value: Any) -> datetime | None:
    """The instant a timestamp string names, or None when it is not one."""
    if not isinstance(value, str) or not (match := _TIMESTAMP.fullmatch(value)):
        return None
    base, fraction, zone = match.groups()
    fraction = (fraction or ".0")[:7]
    try:
        return datetime.fromisoformat(f"{base}{fraction}{'+00:00' if zone == 'Z' else zone}")
    except ValueError:
        return None


def _iso(moment: datetime) -> str:
    """A context-object timestamp, as Step Functions writes them (milliseconds, Z)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# --- validation ---------------------------------------------------------------------------------


def validate(definition: dict[str, Any] | str) -> dict[str, Any]:
    """The definition as a dict once it passes every check, else :class:`InvalidDefinition`.

    JSONata machines and states raise NotImplementedError: they cannot be checked here.
    """
    machine, _ = _check(definition)
    return machine


def _check(definition: dict[str, Any] | str) -> tuple[dict[str, Any], list[str]]:
    """The definition, and the features it uses that :func:`run` does not support."""
    if isinstance(definition, str):
        try:
            definition = json.loads(definition)
        except ValueError as exc:
            raise InvalidDefinition([(None, f"the definition is not JSON: {exc}")]) from None
    validator = _Validator()
    validator.machine(definition, "top")
    if validator.problems:
        raise InvalidDefinition(validator.problems)
    assert isinstance(definition, dict)
    return definition, validator.unsupported


_COMMON = {"Type", "Comment", "QueryLanguage", "Assign"}
_IO = {"InputPath", "OutputPath"}
_FLOW = {"Next", "End"}
_RESULTS = {"Parameters", "ResultSelector", "ResultPath", "Retry", "Catch"}
_FIELDS: dict[str, set[str]] = {
    "Task": _COMMON
    | _IO
    | _FLOW
    | _RESULTS
    | {"Resource", "Credentials"}
    | {"TimeoutSeconds", "TimeoutSecondsPath", "HeartbeatSeconds", "HeartbeatSecondsPath"},
    "Pass": _COMMON | _IO | _FLOW | {"Parameters", "ResultPath", "Result"},
    "Choice": _COMMON | _IO | {"Choices", "Default"},
    "Wait": _COMMON | _IO | _FLOW | {"Seconds", "SecondsPath", "Timestamp", "TimestampPath"},
    "Succeed": {"Type", "Comment", "QueryLanguage"} | _IO,
    "Fail": {"Type", "Comment", "QueryLanguage", "Error", "ErrorPath", "Cause", "CausePath"},
    "Parallel": _COMMON | _IO | _FLOW | _RESULTS | {"Branches"},
    "Map": _COMMON
    | _IO
    | _FLOW
    | _RESULTS
    | {"ItemsPath", "ItemSelector", "ItemProcessor", "Iterator", "Label"}
    | {"ItemReader", "ItemBatcher", "ResultWriter", "MaxConcurrency", "MaxConcurrencyPath"}
    | {"ToleratedFailurePercentage", "ToleratedFailurePercentagePath"}
    | {"ToleratedFailureCount", "ToleratedFailureCountPath"},
}
_MACHINE_FIELDS = {
    "top": {"StartAt", "States", "Comment", "Version", "TimeoutSeconds", "QueryLanguage"},
    "branch": {"StartAt", "States", "Comment"},
    "processor": {"StartAt", "States", "Comment", "ProcessorConfig"},
}
_RETRIER_FIELDS = {"ErrorEquals", "IntervalSeconds", "MaxAttempts", "BackoffRate", "Comment"}
_RETRIER_FIELDS |= {"MaxDelaySeconds", "JitterStrategy"}
_CATCHER_FIELDS = {"ErrorEquals", "Next", "ResultPath", "Comment", "Assign"}


class _Validator:
    """Collects every problem of a definition, with the name of the state it is in."""

    def __init__(self) -> None:
        self.problems: list[tuple[str | None, str]] = []
        self.unsupported: list[str] = []
        self.names: set[str] = set()

    def problem(self, state: str | None, message: str) -> None:
        self.problems.append((state, message))

    def machine(self, machine: Any, kind: str, owner: str | None = None) -> None:
        where = "the state machine" if owner is None else f"a {kind} of {owner!r}"
        if not isinstance(machine, dict):
            self.problem(owner, f"{where} is not an object")
            return
        for key in machine.keys() - _MACHINE_FIELDS[kind]:
            self.problem(owner, f"{where} has an unknown field {key!r}")
        if machine.get("QueryLanguage", "JSONPath") != "JSONPath":
            raise NotImplementedError(f"{where}: only the JSONPath query language is supported")
        if kind == "top" and "TimeoutSeconds" in machine:
            self.positive_int(owner, machine, "TimeoutSeconds")
        if kind == "processor":
            self.processor_config(owner, machine.get("ProcessorConfig", {}))
        states = machine.get("States")
        if not isinstance(states, dict) or not states:
            self.problem(owner, f"{where} has no States")
            return
        start = machine.get("StartAt")
        if start not in states:
            self.problem(owner, f"{where}: StartAt {start!r} names no state among {list(states)}")
        for name, state in states.items():
            if name in self.names:
                self.problem(name, "the name is used by another state (names must be unique)")
            self.names.add(name)
            if len(name) > 80:
                self.problem(name, "the name is longer than 80 characters")
            self.state(name, state)
        self.transitions(states, start, where, owner)

    def transitions(self, states: dict, start: Any, where: str, owner: str | None) -> None:
        """Every transition lands in this scope; every state is reachable; one is terminal."""
        graph: dict[str, list[str]] = {}
        for name, state in states.items():
            if not isinstance(state, dict):
                continue
            targets = [("Next", state.get("Next")), ("Default", state.get("Default"))]
            choices = state.get("Choices") if isinstance(state.get("Choices"), list) else []
            targets += [("a choice's Next", r.get("Next")) for r in choices if isinstance(r, dict)]
            catchers = state.get("Catch") if isinstance(state.get("Catch"), list) else []
            targets += [
                ("a catcher's Next", c.get("Next")) for c in catchers if isinstance(c, dict)
            ]
            graph[name] = []
            for what, target in targets:
                if target is None:
                    continue
                if not isinstance(target, str) or target not in states:
                    self.problem(name, f"{what} {target!r} names no state in {where}")
                else:
                    graph[name].append(target)
        if start in states:
            seen, todo = {start}, [start]
            while todo:
                for target in graph.get(todo.pop(), []):
                    if target not in seen:
                        seen.add(target)
                        todo.append(target)
            for name in states.keys() - seen:
                self.problem(name, f"the state is unreachable from StartAt {start!r}")
        if not any(_terminal(state) for state in states.values()):
            self.problem(owner, f"{where} has no terminal state (Succeed, Fail or End: true)")

    def state(self, name: str, state: Any) -> None:
        if not isinstance(state, dict):
            self.problem(name, "the state is not an object")
            return
        kind = state.get("Type")
        if kind not in _FIELDS:
            self.problem(name, f"Type {kind!r} is not one of {sorted(_FIELDS)}")
            return
        for key in sorted(state.keys() - _FIELDS[kind]):
            self.problem(name, f"{key!r} is not a field of a {kind} state")
        if state.get("QueryLanguage", "JSONPath") != "JSONPath":
            raise NotImplementedError(f"state {name!r}: only JSONPath states are supported")
        if "Assign" in state:
            self.unsupported.append(f"state {name!r}: variables (Assign) are not supported")
        self.flow(name, kind, state)
        for key in ("InputPath", "OutputPath"):
            if key in state and state[key] is not None:
                self.path(name, state, key)
        if "ResultPath" in state:
            self.result_path(name, state, "ResultPath")
        for key in ("Parameters", "ResultSelector", "ItemSelector"):
            if key in state:
                self.template(name, key, state[key])
        for key in ("Retry", "Catch"):
            if key in state:
                self.handlers(name, key, state[key])
        getattr(self, "state_" + kind.lower())(name, state)

    def flow(self, name: str, kind: str, state: dict) -> None:
        if kind in ("Choice", "Succeed", "Fail"):
            return
        has_next = "Next" in state
        ends = state.get("End") is True
        if "End" in state and not isinstance(state["End"], bool):
            self.problem(name, "End must be true or absent")
        if has_next and ends:
            self.problem(name, "a state has either Next or End: true, not both")
        elif not has_next and not ends:
            self.problem(name, "the state has neither Next nor End: true")
        if has_next and not isinstance(state["Next"], str):
            self.problem(name, "Next must be a state name")

    # --- per type ---

    def state_task(self, name: str, state: dict) -> None:
        if not isinstance(state.get("Resource"), str):
            self.problem(name, "a Task needs a Resource (a URI string)")
        for key in ("TimeoutSeconds", "HeartbeatSeconds"):
            if key in state and key + "Path" in state:
                self.problem(name, f"{key} and {key}Path exclude each other")
            if key in state:
                self.positive_int(name, state, key)
            if key + "Path" in state:
                self.path(name, state, key + "Path", reference=True)
        timeout, heartbeat = state.get("TimeoutSeconds"), state.get("HeartbeatSeconds")
        if _is_int(timeout) and _is_int(heartbeat) and heartbeat >= timeout:
            self.problem(name, "HeartbeatSeconds must be smaller than TimeoutSeconds")
        if "Credentials" in state and not isinstance(state["Credentials"], dict):
            self.problem(name, "Credentials must be an object")

    def state_pass(self, name: str, state: dict) -> None:
        pass

    def state_choice(self, name: str, state: dict) -> None:
        choices = state.get("Choices")
        if not isinstance(choices, list) or not choices:
            self.problem(name, "a Choice needs a non-empty Choices array")
            return
        for rule in choices:
            self.rule(name, rule, top=True)
        if "Default" in state and not isinstance(state["Default"], str):
            self.problem(name, "Default must be a state name")

    def state_wait(self, name: str, state: dict) -> None:
        given = [k for k in ("Seconds", "SecondsPath", "Timestamp", "TimestampPath") if k in state]
        if len(given) != 1:
            self.problem(name, f"a Wait has exactly one of Seconds(Path), Timestamp(Path): {given}")
        if "Seconds" in state and not (_is_int(state["Seconds"]) and state["Seconds"] >= 0):
            self.problem(name, "Seconds must be a whole number >= 0")
        if "Timestamp" in state and _timestamp(state["Timestamp"]) is None:
            self.problem(name, f"Timestamp {state['Timestamp']!r} is not an RFC 3339 timestamp")
        for key in ("SecondsPath", "TimestampPath"):
            if key in state:
                self.path(name, state, key, reference=True)

    def state_succeed(self, name: str, state: dict) -> None:
        pass

    def state_fail(self, name: str, state: dict) -> None:
        for key in ("Error", "Cause"):
            if key in state and key + "Path" in state:
                self.problem(name, f"{key} and {key}Path exclude each other")
            if key in state and not isinstance(state[key], str):
                self.problem(name, f"{key} must be a string")
            if key + "Path" in state:
                expression = state[key + "Path"]
                if isinstance(expression, str) and not expression.startswith("$"):
                    self.intrinsic(name, key + "Path", expression)
                else:
                    self.path(name, state, key + "Path", reference=True)

    def state_parallel(self, name: str, state: dict) -> None:
        branches = state.get("Branches")
        if not isinstance(branches, list) or not branches:
            self.problem(name, "a Parallel needs a non-empty Branches array")
            return
        for branch in branches:
            self.machine(branch, "branch", name)

    def state_map(self, name: str, state: dict) -> None:
        processors = [k for k in ("ItemProcessor", "Iterator") if k in state]
        if len(processors) != 1:
            self.problem(name, "a Map has exactly one of ItemProcessor and Iterator")
        else:
            self.machine(state[processors[0]], "processor", name)
        if "ItemSelector" in state and "Parameters" in state:
            self.problem(name, "ItemSelector and Parameters exclude each other")
        if "ItemsPath" in state:
            self.path(name, state, "ItemsPath", reference=True)
        pairs = ("MaxConcurrency", "ToleratedFailureCount", "ToleratedFailurePercentage")
        for key in pairs:
            if key in state and key + "Path" in state:
                self.problem(name, f"{key} and {key}Path exclude each other")
            if key + "Path" in state:
                self.path(name, state, key + "Path", reference=True)
        for key in ("MaxConcurrency", "ToleratedFailureCount"):
            if key in state and not (_is_int(state[key]) and state[key] >= 0):
                self.problem(name, f"{key} must be a whole number >= 0")
        percentage = state.get("ToleratedFailurePercentage", 0)
        if not (_is_number(percentage) and 0 <= percentage <= 100):
            self.problem(name, "ToleratedFailurePercentage must be a number from 0 to 100")
        processor = state.get(processors[0]) if len(processors) == 1 else None
        config = processor.get("ProcessorConfig", {}) if isinstance(processor, dict) else {}
        distributed = isinstance(config, dict) and config.get("Mode") == "DISTRIBUTED"
        tolerance = [k for k in state if k.startswith("ToleratedFailure")]
        if tolerance and not distributed:
            self.problem(name, f"{tolerance} need a distributed Map (ProcessorConfig Mode)")
        for key in ("ItemReader", "ItemBatcher", "ResultWriter"):
            if key in state:
                self.unsupported.append(f"state {name!r}: {key} is not supported")
                if not isinstance(state[key], dict):
                    self.problem(name, f"{key} must be an object")

    def processor_config(self, owner: str | None, config: Any) -> None:
        if not isinstance(config, dict):
            self.problem(owner, "ProcessorConfig must be an object")
            return
        for key in config.keys() - {"Mode", "ExecutionType"}:
            self.problem(owner, f"ProcessorConfig has an unknown field {key!r}")
        if config.get("Mode", "INLINE") not in ("INLINE", "DISTRIBUTED"):
            self.problem(owner, "ProcessorConfig Mode must be INLINE or DISTRIBUTED")
        if config.get("ExecutionType", "STANDARD") not in ("STANDARD", "EXPRESS"):
            self.problem(owner, "ProcessorConfig ExecutionType must be STANDARD or EXPRESS")

    # --- parts ---

    def rule(self, name: str, rule: Any, *, top: bool) -> None:
        if not isinstance(rule, dict):
            self.problem(name, "a choice rule is not an object")
            return
        if top and not isinstance(rule.get("Next"), str):
            self.problem(name, "a top-level choice rule needs Next")
        if not top and "Next" in rule:
            self.problem(name, "a nested choice rule must not have Next")
        if top and "Assign" in rule:
            self.unsupported.append(f"state {name!r}: variables (Assign) are not supported")
        extra = {"Next", "Comment", "Assign"} if top else {"Comment"}
        booleans = [k for k in ("And", "Or", "Not") if k in rule]
        if booleans:
            for key in rule.keys() - extra - set(booleans):
                self.problem(name, f"{key!r} is not a field of a boolean choice rule")
            if len(booleans) > 1:
                self.problem(name, f"a choice rule has one of And, Or, Not: {booleans}")
            for key in booleans:
                inner = rule[key]
                if key == "Not":
                    self.rule(name, inner, top=False)
                elif not isinstance(inner, list) or not inner:
                    self.problem(name, f"{key} needs a non-empty array of rules")
                else:
                    for each in inner:
                        self.rule(name, each, top=False)
            return
        operators = [k for k in rule if k in _OPERATORS]
        for key in rule.keys() - extra - _OPERATORS - {"Variable"}:
            self.problem(name, f"{key!r} is not a field of a choice rule")
        if "Variable" not in rule:
            self.problem(name, "a data-test choice rule needs Variable")
        else:
            self.path(name, rule, "Variable")
        if len(operators) != 1:
            self.problem(name, f"a choice rule has exactly one comparison operator: {operators}")
            return
        operator = operators[0]
        expected = rule[operator]
        if operator.endswith("Path"):
            self.path(name, rule, operator)
        elif operator in _TYPE_TESTS or operator == "BooleanEquals":
            if not isinstance(expected, bool):
                self.problem(name, f"{operator} takes true or false")
        elif operator.startswith("Numeric"):
            if not _is_number(expected):
                self.problem(name, f"{operator} takes a number")
        elif operator.startswith("Timestamp"):
            if _timestamp(expected) is None:
                self.problem(name, f"{operator} takes an RFC 3339 timestamp, not {expected!r}")
        elif not isinstance(expected, str):
            self.problem(name, f"{operator} takes a string")
        elif operator == "StringMatches":
            try:
                _wildcard(expected)
            except _PathSyntaxError as exc:
                self.problem(name, f"StringMatches: {exc}")

    def handlers(self, name: str, key: str, handlers: Any) -> None:
        if not isinstance(handlers, list):
            self.problem(name, f"{key} must be an array")
            return
        allowed = _RETRIER_FIELDS if key == "Retry" else _CATCHER_FIELDS
        for number, handler in enumerate(handlers):
            what = f"{key}[{number}]"
            if not isinstance(handler, dict):
                self.problem(name, f"{what} is not an object")
                continue
            for field_name in sorted(handler.keys() - allowed):
                self.problem(name, f"{field_name!r} is not a field of {what}")
            errors = handler.get("ErrorEquals")
            if (
                not isinstance(errors, list)
                or not errors
                or not all(isinstance(e, str) for e in errors)
            ):
                self.problem(name, f"{what} needs ErrorEquals, a non-empty array of names")
            elif ALL in errors and (len(errors) > 1 or number != len(handlers) - 1):
                self.problem(name, f"{what}: States.ALL must be alone, in the last of {key}")
            if key == "Catch":
                if not isinstance(handler.get("Next"), str):
                    self.problem(name, f"{what} needs Next")
                if "ResultPath" in handler:
                    self.result_path(name, handler, "ResultPath")
                if "Assign" in handler:
                    self.unsupported.append(f"state {name!r}: variables (Assign) are not supported")
                continue
            for field_name in ("IntervalSeconds", "MaxDelaySeconds"):
                if field_name in handler:
                    self.positive_int(name, handler, field_name, what)
            attempts = handler.get("MaxAttempts", 0)
            if not (_is_int(attempts) and attempts >= 0):
                self.problem(name, f"{what}: MaxAttempts must be a whole number >= 0")
            rate = handler.get("BackoffRate", 1.0)
            if not (_is_number(rate) and rate >= 1.0):
                self.problem(name, f"{what}: BackoffRate must be a number >= 1.0")
            if handler.get("JitterStrategy", "NONE") not in ("FULL", "NONE"):
                self.problem(name, f"{what}: JitterStrategy must be FULL or NONE")

    def template(self, name: str, key: str, template: Any, top: bool = True) -> None:
        if top and not isinstance(template, dict):
            self.problem(name, f"{key} must be an object (a payload template)")
            return
        if isinstance(template, list):
            for item in template:
                self.template(name, key, item, top=False)
        if not isinstance(template, dict):
            return
        stripped = [k[:-2] if k.endswith(".$") else k for k in template]
        for duplicate in {k for k in stripped if stripped.count(k) > 1}:
            self.problem(name, f"{key} has {duplicate!r} twice once '.$' is stripped")
        for field_name, value in template.items():
            if not field_name.endswith(".$"):
                self.template(name, key, value, top=False)
            elif not isinstance(value, str):
                self.problem(name, f"{key}: {field_name!r} must be a path or intrinsic function")
            elif value.startswith("$"):
                self.path_text(name, f"{key} {field_name!r}", value)
            else:
                self.intrinsic(name, f"{key} {field_name!r}", value)

    def intrinsic(self, name: str, where: str, text: str) -> None:
        try:
            function = _parse_intrinsic(text)
        except _PathSyntaxError as exc:
            self.problem(name, f"{where}: {exc}")
            return
        for called in _functions_in(function):
            if called in _UNSUPPORTED_FUNCTIONS:
                self.unsupported.append(f"state {name!r}: {called} is not supported")

    def path(self, name: str, holder: dict, key: str, *, reference: bool = False) -> None:
        self.path_text(name, key, holder[key], reference=reference)

    def path_text(self, name: str, where: str, text: Any, *, reference: bool = False) -> None:
        if not isinstance(text, str):
            self.problem(name, f"{where}: {text!r} is not a path (a string starting with '$')")
            return
        try:
            path = _parse_path(text)
        except _PathSyntaxError as exc:
            self.problem(name, f"{where}: {exc}")
            return
        if reference and not path.definite:
            self.problem(name, f"{where}: {text!r} is not a Reference Path")

    def result_path(self, name: str, holder: dict, key: str) -> None:
        text = holder[key]
        if text is None:
            return
        self.path_text(name, key, text, reference=True)
        if isinstance(text, str) and text.startswith("$$"):
            self.problem(name, f"{key} must not write into the context object ($$)")

    def positive_int(self, name: str | None, holder: dict, key: str, what: str = "") -> None:
        value = holder[key]
        if not (_is_int(value) and value > 0):
            self.problem(name, f"{what + ': ' if what else ''}{key} must be a positive integer")


def _functions_in(function: _Function) -> Iterator[str]:
    yield function.name
    for arg in function.args:
        if isinstance(arg, _Function):
            yield from _functions_in(arg)


def _terminal(state: Any) -> bool:
    return isinstance(state, dict) and (
        state.get("Type") in ("Succeed", "Fail") or state.get("End") is True
    )


# --- synthesized templates ----------------------------------------------------------------------

_PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::NoValue": "",
}


def resolve_cfn(value: Any, refs: Mapping[str, str] | None = None) -> Any:
    """``value`` with ``Ref``, ``Fn::GetAtt``, ``Fn::Join`` and ``Fn::Sub`` resolved.

    ``refs`` maps logical ids (``Ref``) and ``"Logical.Attr"`` (``Fn::GetAtt``) to values; the
    pseudo parameters default to us-east-1 in account 123456789012, and anything else unnamed
    becomes ``<Ref:Id>`` / ``<GetAtt:Id.Attr>``, so a test sees which resource a field names.
    """
    refs = dict(_PSEUDO, **(refs or {}))
    if isinstance(value, list):
        return [resolve_cfn(item, refs) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((function, argument),) = value.items()
        if function == "Ref":
            return refs.get(argument, f"<Ref:{argument}>")
        if function == "Fn::GetAtt":
            name = argument if isinstance(argument, str) else ".".join(argument)
            return refs.get(name, f"<GetAtt:{name}>")
        if function == "Fn::Join":
            separator, parts = argument
            return separator.join(str(resolve_cfn(part, refs)) for part in parts)
        if function == "Fn::Sub":
            text, names = (argument, {}) if isinstance(argument, str) else argument
            names = dict(refs, **{k: resolve_cfn(v, refs) for k, v in names.items()})
            text = re.sub(
                r"\$\{([^}!][^}]*)\}",
                lambda m: str(names.get(m.group(1), f"<Ref:{m.group(1)}>")),
                text,
            )
            return text.replace("${!", "${")
    return {key: resolve_cfn(item, refs) for key, item in value.items()}


def definition_from_template(
    properties: Mapping[str, Any], refs: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ASL definition of a synthesized ``AWS::StepFunctions::StateMachine``'s Properties."""
    substitutions = {
        key: str(resolve_cfn(value, refs))
        for key, value in properties.get("DefinitionSubstitutions", {}).items()
    }

    def substitute(text: str) -> str:
        return re.sub(r"\$\{([^}]+)\}", lambda m: substitutions.get(m.group(1), m.group(0)), text)

    if "Definition" in properties:
        definition = resolve_cfn(properties["Definition"], refs)
        return json.loads(substitute(json.dumps(definition)))
    return json.loads(substitute(str(resolve_cfn(properties["DefinitionString"], refs))))
