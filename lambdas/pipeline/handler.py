"""Pipeline Lambda: the plan, gate and unpack steps of the retrain-and-reindex state machine.

A few lines over :mod:`medsearch.pipeline`. Settings are parsed once per container from
``MEDSEARCH_*`` into :class:`PipelineSettings` and turned into the core's
:class:`~medsearch.pipeline.PipelineDefaults` (a bad environment fails the first invocation with
the variable's name). The state machine invokes it with one of:

* ``{"action": "plan", "input": {...}, "execution": "<execution name>"}`` → the plan
  (:func:`medsearch.pipeline.plan_run`; ``input`` is the execution input, may be absent);
* ``{"action": "gate", "plan": <plan>}`` → ``{"passed": true, "recallAt10": x,
  "liveRecallAt10": y | null}``, or the error ``GateFailed`` naming both figures; the report is
  kept as ``models/<run>/evaluation.json`` either way;
* ``{"action": "unpack", "plan": <plan>}`` → ``{"onnx": "s3://.../models/<run>/onnx", "files": n}``.

A bad event or input raises ``InvalidInputError`` (one line), which the state machine sees as the
error name. Logs are Powertools JSON (the core's loggers included): run ids, counts, figures and
locations, never captions.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from medsearch.constants import ONNX_SUBDIR, PROJECT
from medsearch.errors import InvalidInputError
from medsearch.pipeline import (
    GateFailed,
    HyperValue,
    PipelineDefaults,
    check_gate,
    plan_run,
    read_live_model,
    read_plan,
    read_report,
    unpack_model,
    write_evaluation,
)

PIPELINE_SERVICE = f"{PROJECT}-pipeline"
logger = Logger(service=PIPELINE_SERVICE)


class PipelineSettings(BaseSettings):
    """The pipeline steps' configuration, from ``MEDSEARCH_*`` environment variables (read once).

    The seven without a default are required; every other one left unset takes the core's default
    (:class:`~medsearch.pipeline.PipelineDefaults`), and an execution input overrides it per run.
    """

    model_config = SettingsConfigDict(env_prefix="MEDSEARCH_", frozen=True, extra="ignore")

    artifacts_bucket: str = Field(description="models/, vectors/ and jobs/ live here")
    data_bucket: str = Field(description="the corpus: manifests and images")
    sagemaker_role_arn: str = Field(description="the role SageMaker jobs run with")
    training_image: str = Field(description="the training container image URI")
    inference_image: str = Field(description="the batch-transform container image URI")
    training_source: str = Field(description="s3:// tar.gz of training_job/ (script mode)")
    batch_source: str = Field(description="s3:// tar.gz of batch_vectorize/")
    default_manifest: str | None = Field(
        None, description="the corpus manifest (default s3://<data bucket>/data/manifest.jsonl)"
    )
    aws_region: str | None = Field(
        None, validation_alias=AliasChoices("MEDSEARCH_AWS_REGION", "AWS_REGION")
    )
    train_instance_type: str | None = None
    train_instance_count: int | None = None
    train_volume_gib: int | None = None
    train_max_runtime_seconds: int | None = None
    train_spot: bool | None = None
    train_max_wait_seconds: int | None = None
    transform_instance_type: str | None = None
    transform_instance_count: int | None = None
    transform_max_payload_mb: int | None = None
    transform_batch_size: int | None = None
    transform_encoder: str | None = None
    records_per_part: int | None = None
    base_model: str | None = None
    hyperparameters: dict[str, HyperValue] | None = Field(None, description="a JSON object")
    min_recall_at_10: float | None = None
    load_timeout_minutes: int | None = None

    def defaults(self) -> PipelineDefaults:
        """Return the core's defaults: the fields set here over the core's own."""
        values = self.model_dump(exclude_none=True)
        for setting, name in RENAMED.items():
            if setting in values:
                values[name] = values.pop(setting)
        return PipelineDefaults(**values)


# Settings whose environment name differs from the core's field (PipelineDefaults).
RENAMED = {
    "sagemaker_role_arn": "role_arn",
    "default_manifest": "manifest_url",
    "aws_region": "region",
    "train_instance_type": "training_instance_type",
    "train_instance_count": "training_instance_count",
    "train_volume_gib": "training_volume_gib",
    "train_max_runtime_seconds": "max_runtime_seconds",
    "train_spot": "spot",
    "train_max_wait_seconds": "max_wait_seconds",
}


@lru_cache(maxsize=1)
def get_defaults() -> PipelineDefaults:
    """Return this container's defaults (the environment is parsed once)."""
    # The core logs through logging.getLogger(__name__): route it through Powertools. Done at
    # cold start, not at import, so importing has no side effect.
    copy_config_to_registered_loggers(source_logger=logger, include={"medsearch"})
    return PipelineSettings().defaults()  # type: ignore[call-arg]


def plan(event: dict[str, Any], defaults: PipelineDefaults) -> dict[str, Any]:
    """The plan step: the run's plan for the later states."""
    execution = event.get("execution")
    if not isinstance(execution, str) or not execution:
        raise InvalidInputError("a plan event needs 'execution' (the execution's name)")
    result = plan_run(event.get("input"), defaults, execution_name=execution)
    logger.info("run planned", extra={"run": result["run"], "records": result["records"]})
    return result


def gate(event: dict[str, Any], defaults: PipelineDefaults) -> dict[str, Any]:
    """The gate step: keep the report, then pass the model or raise ``GateFailed``."""
    run = read_plan(event.get("plan"), defaults.artifacts_bucket)
    report = read_report(run.report_url)
    kept = write_evaluation(report, run.model_prefix)
    live = read_live_model(defaults.artifacts_bucket)
    try:
        result = check_gate(report, live, min_recall_at_10=run.min_recall_at_10)
    except GateFailed as exc:
        logger.warning("gate failed", extra={"run": run.run, "reason": str(exc)})
        raise
    logger.info("gate passed", extra={"run": run.run, "evaluation": kept, **result})
    return result


def unpack(event: dict[str, Any], defaults: PipelineDefaults) -> dict[str, Any]:
    """The unpack step: the trained model's ONNX folder where the search API reads it."""
    run = read_plan(event.get("plan"), defaults.artifacts_bucket)
    files = unpack_model(run.model_data_url, run.model_prefix)
    result = {"onnx": run.model_prefix + ONNX_SUBDIR, "files": len(files)}
    logger.info("model unpacked", extra={"run": run.run, **result})
    return result


ACTIONS = {"plan": plan, "gate": gate, "unpack": unpack}


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Run the step the event's ``action`` names."""
    defaults = get_defaults()
    action = event.get("action") if isinstance(event, dict) else None
    step = ACTIONS.get(action) if isinstance(action, str) else None
    if step is None:
        raise InvalidInputError(f"action: {action!r} is not one of {', '.join(ACTIONS)}")
    return step(event, defaults)
