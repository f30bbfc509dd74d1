"""Start and watch the retrain-and-reindex pipeline, a Step Functions state machine.

The core sees executions, their input and their history as plain data. AWS sits behind the
:class:`PipelineClient` protocol; its boto3 adapter (:mod:`medsearch._pipeline_aws`) is imported
only when a command actually talks to AWS, so the core imports no AWS SDK.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from medsearch.constants import PROJECT
from medsearch.errors import ConfigError, InvalidInputError, NotFoundError

log = logging.getLogger(__name__)

# The CloudFormation output of the stack that names the state machine, and the variable that
# names it instead (for a pipeline deployed outside the stack).
PIPELINE_OUTPUT = "PipelineArn"
PIPELINE_ARN_ENV = "MEDSEARCH_PIPELINE_ARN"
DEFAULT_STACK = PROJECT
# Seconds between two describe_execution calls while waiting: a pipeline step takes minutes.
POLL_SECONDS = 5.0
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"})
# The keys of the pipeline's output JSON that `status` reports.
FIGURE_KEYS = ("gate", "recallAt10", "published")
# SageMaker jobs a task state may start, by the parameter that names them.
JOB_PARAMETERS = {"TrainingJobName": "training", "TransformJobName": "transform"}

# StartExecution's name rule: 1-80 characters, none of them whitespace, brackets < > { } [ ],
# wildcards ? *, the special characters " # % \ ^ | ~ ` $ & , ; : /, control characters
# (U+0000-001F, U+007F-009F), U+FFFE-FFFF or surrogates.
NAME_MAX = 80
_BAD_NAME_CHARS = re.compile(
    r"[\s<>{}\[\]?*\"#%\\^|~`$&,;:/\x00-\x1f\x7f-\x9f\ufffe\uffff\ud800-\udfff]"
)


@dataclass(frozen=True)
class PipelineRunConfig:
    """What one pipeline run is asked to do; ``None`` leaves the state machine's default."""

    manifest: str | None = None
    base: str | None = None
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    min_recall_at_10: float | None = None
    train_instance_type: str | None = None
    spot: bool | None = None

    def execution_input(self) -> dict[str, Any]:
        """Return the execution input: only the keys given, in the shape the pipeline's Plan
        step reads (:func:`medsearch.pipeline.check_run_input`), hyperparameters as text."""
        payload: dict[str, Any] = {}
        training: dict[str, Any] = {}
        if self.manifest is not None:
            payload["manifest"] = self.manifest
        if self.base is not None:
            payload["baseModel"] = self.base
        if self.hyperparameters:
            payload["hyperparameters"] = {k: str(v) for k, v in self.hyperparameters.items()}
        if self.min_recall_at_10 is not None:
            payload["gate"] = {"minRecallAt10": self.min_recall_at_10}
        if self.train_instance_type is not None:
            training["instanceType"] = self.train_instance_type
        if self.spot is not None:
            training["spot"] = self.spot
        if training:
            payload["training"] = training
        return payload


@dataclass(frozen=True)
class Execution:
    """One execution of the state machine, as Step Functions describes it."""

    arn: str
    name: str
    status: str
    start: dt.datetime
    stop: dt.datetime | None = None
    output: str | None = None
    error: str | None = None
    cause: str | None = None

    @property
    def done(self) -> bool:
        """Whether the execution has ended (succeeded, failed, timed out or aborted)."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class JobState:
    """A SageMaker job an execution started: its status, or why it could not be read."""

    kind: str
    name: str
    status: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class RunStatus:
    """Everything `medsearch aws status` reports about one execution."""

    execution: Execution
    step: str | None
    jobs: list[JobState]
    figures: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """Return the status as a JSON-ready object (times in ISO 8601, UTC)."""
        ex = self.execution
        return {
            "name": ex.name,
            "executionArn": ex.arn,
            "status": ex.status,
            "startDate": iso_time(ex.start),
            "stopDate": iso_time(ex.stop),
            "step": self.step,
            "jobs": [
                {"kind": j.kind, "name": j.name, "status": j.status, "note": j.note}
                for j in self.jobs
            ],
            "figures": self.figures,
            "error": ex.error,
            "cause": ex.cause,
        }


class PipelineClient(Protocol):
    """The few Step Functions, CloudFormation and SageMaker calls the pipeline commands need."""

    def stack_output(self, stack: str, key: str) -> str | None:
        """Return a stack's output value, ``None`` if it has no such output."""
        ...

    def start_execution(self, state_machine_arn: str, name: str, payload: str) -> str:
        """Start an execution with a JSON input; return its ARN."""
        ...

    def describe_execution(self, execution_arn: str) -> Execution:
        """Return an execution; raise ``NotFoundError`` if there is none."""
        ...

    def execution_history(self, execution_arn: str) -> Iterator[dict[str, Any]]:
        """Yield an execution's history events (Step Functions' shape), page by page."""
        ...

    def list_executions(self, state_machine_arn: str, limit: int) -> list[Execution]:
        """Return the newest ``limit`` executions, newest first."""
        ...

    def describe_job(self, kind: str, name: str) -> JobState:
        """Return a SageMaker job's status (``kind``: training or transform), never raising."""
        ...


def check_execution_name(name: str) -> str:
    """Return ``name`` if Step Functions accepts it as an execution name, else raise."""
    if not 1 <= len(name) <= NAME_MAX:
        raise InvalidInputError(
            f"--name {name!r}: an execution name has 1 to {NAME_MAX} characters, not {len(name)}"
        )
    bad = _BAD_NAME_CHARS.search(name)
    if bad:
        raise InvalidInputError(
            f"--name {name!r}: {bad.group()!r} is not allowed in an execution name "
            '(no whitespace, brackets, wildcards, " # % \\ ^ | ~ ` $ & , ; : / or control '
            "characters)"
        )
    return name


def default_execution_name(now: dt.datetime) -> str:
    """Return the name of a run started at ``now``: ``run-<UTC yyyymmdd-HHMMSS>``."""
    return "run-" + now.astimezone(dt.UTC).strftime("%Y%m%d-%H%M%S")


def parse_hyperparameters(items: Sequence[str]) -> dict[str, str]:
    """Turn ``KEY=VALUE`` items into SageMaker hyperparameters (text values; the last one wins)."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"--hyperparameter {item!r}: write it as KEY=VALUE")
        parsed[key.strip()] = value
    return parsed


def execution_arn_for(state_machine_arn: str, name_or_arn: str) -> str:
    """Return the ARN of an execution given by ARN or by its name on the state machine."""
    if name_or_arn.startswith("arn:"):
        return name_or_arn
    head, sep, machine = state_machine_arn.rpartition(":stateMachine:")
    if not sep or not machine:
        raise ConfigError(f"not a state machine ARN: {state_machine_arn!r}")
    return f"{head}:execution:{machine.split(':')[0]}:{name_or_arn}"


def resolve_state_machine(
    client: PipelineClient, *, flag: str | None, env: str | None, stack: str
) -> str:
    """Return the state machine's ARN: the flag, else the variable, else the stack's output."""
    if flag:
        return flag
    if env:
        return env
    arn = client.stack_output(stack, PIPELINE_OUTPUT)
    if not arn:
        raise ConfigError(
            f"stack {stack} has no output {PIPELINE_OUTPUT} (is the pipeline deployed?): "
            f"give --state-machine ARN or set {PIPELINE_ARN_ENV}"
        )
    return arn


def latest_execution(client: PipelineClient, state_machine_arn: str) -> Execution:
    """Return the newest execution of the state machine, described in full."""
    newest = client.list_executions(state_machine_arn, 1)
    if not newest:
        raise NotFoundError(f"state machine {state_machine_arn} has no executions yet")
    return client.describe_execution(newest[0].arn)


def current_step(events: Iterable[dict[str, Any]]) -> str | None:
    """Return the name of the state entered last (the running step, or the one it ended in).

    "Last" is the highest event id, whatever order the events come in: not every implementation
    of the API honours ``reverseOrder``.
    """
    latest: tuple[int, str] | None = None
    for position, event in enumerate(events):
        if not str(event.get("type", "")).endswith("StateEntered"):
            continue
        name = event.get("stateEnteredEventDetails", {}).get("name")
        order = int(event.get("id", position))
        if name is not None and (latest is None or order >= latest[0]):
            latest = (order, str(name))
    return latest[1] if latest else None


def job_names(events: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """Return the SageMaker jobs (kind, name) that the history's task states started, in order."""
    found: list[tuple[str, str]] = []
    for event in events:
        details = event.get("taskScheduledEventDetails")
        if not details:
            continue
        try:
            parameters = json.loads(details.get("parameters") or "{}")
        except json.JSONDecodeError:
            continue
        if not isinstance(parameters, dict):
            continue
        for key, kind in JOB_PARAMETERS.items():
            name = parameters.get(key)
            if isinstance(name, str) and (kind, name) not in found:
                found.append((kind, name))
    return found


def output_figures(output: str | None) -> dict[str, Any]:
    """Return the gate, recall@10 and published figures of an execution's output, those present.

    ``recallAt10`` may also sit inside ``gate`` (the gate step's result kept under that key).
    """
    if not output:
        return {}
    try:
        parsed = json.loads(output)
    except json.JSONDecodeError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    found = dict(parsed)
    gate = parsed.get("gate")
    if "recallAt10" not in found and isinstance(gate, dict) and "recallAt10" in gate:
        # The gate step's own result ({"passed", "recallAt10", ...}) holds the figure.
        found["recallAt10"] = gate["recallAt10"]
    return {key: found[key] for key in FIGURE_KEYS if key in found}


def describe_run(client: PipelineClient, execution: Execution) -> RunStatus:
    """Gather an execution's step, its SageMaker jobs' states and its output figures."""
    events = list(client.execution_history(execution.arn))
    jobs = [client.describe_job(kind, name) for kind, name in job_names(events)]
    return RunStatus(
        execution=execution,
        step=current_step(events),
        jobs=jobs,
        figures=output_figures(execution.output),
    )


def watch_execution(
    client: PipelineClient,
    execution_arn: str,
    *,
    on_change: Callable[[Execution, str | None], None],
    poll_seconds: float = POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> Execution:
    """Poll an execution until it ends; call ``on_change`` whenever its status or step changes."""
    seen: tuple[str, str | None] | None = None
    while True:
        execution = client.describe_execution(execution_arn)
        step = current_step(client.execution_history(execution_arn))
        if (execution.status, step) != seen:
            seen = (execution.status, step)
            on_change(execution, step)
        if execution.done:
            return execution
        sleep(poll_seconds)


def iso_time(moment: dt.datetime | None) -> str | None:
    """Return a time as ISO 8601 in UTC (``None`` stays ``None``)."""
    return moment.astimezone(dt.UTC).isoformat() if moment is not None else None
