"""The boto3 adapter behind :class:`medsearch.pipeline_runs.PipelineClient`.

Imported only when a `medsearch aws` command runs. Every AWS failure leaves this module as one of
the core's exception types with a one-line message: missing credentials or region and refused
permissions as ``ConfigError``, unknown stacks and executions as ``NotFoundError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from medsearch.errors import ConfigError, InvalidInputError, MedsearchError, NotFoundError
from medsearch.pipeline_runs import Execution, JobState

_CREDENTIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "ExpiredToken",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
    }
)
_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException"})
_NOT_FOUND_CODES = frozenset(
    {"ExecutionDoesNotExist", "StateMachineDoesNotExist", "ResourceNotFound"}
)
_DESCRIBE_JOB = {
    "training": ("describe_training_job", "TrainingJobName", "TrainingJobStatus"),
    "transform": ("describe_transform_job", "TransformJobName", "TransformJobStatus"),
}


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _error_message(exc: ClientError) -> str:
    return _one_line(exc.response.get("Error", {}).get("Message") or exc)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn botocore's errors raised while doing ``what`` into the core's, with one-line text."""
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise ConfigError(
            "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID, or run `aws configure`"
        ) from exc
    except ClientError as exc:
        code, message = _error_code(exc), _error_message(exc)
        if code in _CREDENTIAL_CODES:
            raise ConfigError(f"{what}: AWS refused the credentials: {message}") from exc
        if code in _DENIED_CODES:
            raise ConfigError(f"{what}: access denied: {message}") from exc
        if code in _NOT_FOUND_CODES or (code == "ValidationError" and "does not exist" in message):
            raise NotFoundError(f"{what}: {message}") from exc
        if code in {"InvalidArn", "InvalidName", "InvalidExecutionInput", "ValidationException"}:
            raise InvalidInputError(f"{what}: {message}") from exc
        if code == "ExecutionAlreadyExists":
            raise InvalidInputError(f"{what}: {message} (give another --name)") from exc
        raise MedsearchError(f"{what}: {code or 'error'}: {message}") from exc
    except BotoCoreError as exc:
        raise MedsearchError(f"{what}: {_one_line(exc)}") from exc


def _execution(item: dict[str, Any]) -> Execution:
    return Execution(
        arn=item["executionArn"],
        name=item["name"],
        status=item["status"],
        start=item["startDate"],
        stop=item.get("stopDate"),
        output=item.get("output"),
        error=item.get("error"),
        cause=item.get("cause"),
    )


class Boto3PipelineClient:
    """Step Functions, CloudFormation and SageMaker through boto3 (the usual credential chain)."""

    def __init__(self, region: str | None = None, *, session: Any | None = None) -> None:
        try:
            self._session = session or boto3.session.Session(region_name=region)
        except BotoCoreError as exc:  # an AWS_PROFILE that no config file names, for one
            raise ConfigError(_one_line(exc)) from exc
        self._clients: dict[str, Any] = {}

    def _client(self, service: str) -> Any:
        # One client per service, made on first use: `runs --state-machine` never needs
        # CloudFormation, and `start-pipeline` never needs SageMaker.
        if service not in self._clients:
            try:
                self._clients[service] = self._session.client(service)
            except NoRegionError as exc:
                raise ConfigError(
                    "no AWS region: give --region or set AWS_REGION / AWS_DEFAULT_REGION"
                ) from exc
            except BotoCoreError as exc:
                raise ConfigError(_one_line(exc)) from exc
        return self._clients[service]

    def stack_output(self, stack: str, key: str) -> str | None:
        """Return a stack's output value, ``None`` if it has no such output."""
        cloudformation = self._client("cloudformation")
        with _translated(f"stack {stack}"):
            stacks = cloudformation.describe_stacks(StackName=stack)["Stacks"]
        for output in stacks[0].get("Outputs", []) if stacks else []:
            if output.get("OutputKey") == key:
                return str(output["OutputValue"])
        return None

    def start_execution(self, state_machine_arn: str, name: str, payload: str) -> str:
        """Start an execution with a JSON input; return its ARN."""
        sfn = self._client("stepfunctions")
        with _translated(f"start {name}"):
            response = sfn.start_execution(
                stateMachineArn=state_machine_arn, name=name, input=payload
            )
        return str(response["executionArn"])

    def describe_execution(self, execution_arn: str) -> Execution:
        """Return an execution; raise ``NotFoundError`` if there is none."""
        sfn = self._client("stepfunctions")
        with _translated("execution"):
            return _execution(sfn.describe_execution(executionArn=execution_arn))

    def execution_history(self, execution_arn: str) -> Iterator[dict[str, Any]]:
        """Yield an execution's history events, page by page."""
        sfn = self._client("stepfunctions")
        pages = sfn.get_paginator("get_execution_history").paginate(
            executionArn=execution_arn,
            includeExecutionData=True,
            PaginationConfig={"PageSize": 1000},  # the most the service sends at once
        )
        with _translated("execution history"):
            for page in pages:
                yield from page.get("events", [])

    def list_executions(self, state_machine_arn: str, limit: int) -> list[Execution]:
        """Return the newest ``limit`` executions, newest first."""
        sfn = self._client("stepfunctions")
        pages = sfn.get_paginator("list_executions").paginate(
            stateMachineArn=state_machine_arn, PaginationConfig={"MaxItems": limit}
        )
        with _translated("executions"):
            # The service lists the newest first.
            items = [item for page in pages for item in page.get("executions", [])]
        return [_execution(item) for item in items[:limit]]

    def describe_job(self, kind: str, name: str) -> JobState:
        """Return a SageMaker job's status; a job that cannot be read gets a note, not an error."""
        method, name_key, status_key = _DESCRIBE_JOB[kind]
        try:
            job = getattr(self._client("sagemaker"), method)(**{name_key: name})
        except ClientError as exc:
            code, message = _error_code(exc), _error_message(exc)
            lowered = message.lower()
            if code in _DENIED_CODES:
                note = "access denied"
            elif "not find" in lowered or "not found" in lowered:
                # SageMaker answers a job it does not know with a ValidationException.
                note = "not found"
            else:
                note = f"{code}: {message}"
            return JobState(kind, name, note=note)
        except (BotoCoreError, MedsearchError) as exc:
            return JobState(kind, name, note=_one_line(exc))
        status = job.get(status_key)
        return JobState(kind, name, status=str(status) if status is not None else None)
