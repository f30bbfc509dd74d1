"""The shape every medsearch Lambda shares: its own role, log group, runtime and package.

Each function gets a role of its own (so the domain's access policy can name it) with only the
permissions its construct grants, a log group with a retention (JSON logs, as Powertools writes
them), X-Ray tracing, and its code from the folder its ``make`` target builds (``make
lambda-package``): the CDK app only zips that folder, so synth needs no torch and no pip.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.config import DeployConfig
from infra.nag import logical_id, suppress
from medsearch.constants import LAMBDA_RUNTIME

REPO = Path(__file__).resolve().parents[1]
# CDK's own runtime object (it knows, e.g., which runtimes support SnapStart): python3.12 →
# Runtime.PYTHON_3_12.
RUNTIME: lambda_.Runtime = getattr(
    lambda_.Runtime, LAMBDA_RUNTIME.upper().replace("PYTHON", "PYTHON_").replace(".", "_")
)


class MissingPackageError(FileNotFoundError):
    """A Lambda package folder that ``make lambda-package`` has not built."""


def package_path(relative: str) -> str:
    """The absolute path of a built Lambda package folder, checked to exist."""
    folder = REPO / relative
    if not (folder / "medsearch").is_dir():
        raise MissingPackageError(f"{relative} is not built: run `make lambda-package` first")
    return str(folder)


def lambda_role(scope: Construct, id: str, *, description: str) -> iam.Role:
    """A role only Lambda may assume, with no permissions until a construct grants them."""
    return iam.Role(
        scope, id, assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"), description=description
    )


def python_function(
    scope: Construct,
    id: str,
    *,
    config: DeployConfig,
    role: iam.Role,
    package: str,
    handler: str,
    memory_mib: int,
    timeout: Duration,
    environment: dict[str, str],
    description: str,
    **options: object,
) -> lambda_.Function:
    """A Python function on the project's runtime, logging JSON to its own log group."""
    removal = config.removal_policy
    log_group = logs.LogGroup(
        scope,
        f"{id}Logs",
        retention=logs.RetentionDays.THREE_MONTHS,
        removal_policy=removal,
    )
    function = lambda_.Function(
        scope,
        id,
        runtime=RUNTIME,
        architecture=lambda_.Architecture.X86_64,
        code=lambda_.Code.from_asset(package_path(package)),
        handler=handler,
        role=role,
        memory_size=memory_mib,
        timeout=timeout,
        environment=environment,
        description=description,
        log_group=log_group,
        logging_format=lambda_.LoggingFormat.JSON,
        tracing=lambda_.Tracing.ACTIVE,
        **options,  # type: ignore[arg-type]
    )
    log_group.grant_write(role)
    suppress(
        role,
        "AwsSolutions-IAM5",
        "Log streams are created per container (log-group:*), and X-Ray has no resource-level "
        "permissions (PutTraceSegments on *).",
        applies_to=["Resource::*", f"Resource::<{logical_id(log_group)}.Arn>:*"],
    )
    suppress(
        function,
        "AwsSolutions-L1",
        f"The packages are built and size-checked for {LAMBDA_RUNTIME} wheels "
        "(medsearch.constants.LAMBDA_RUNTIME); moving on is that constant and a rebuild.",
    )
    return function
