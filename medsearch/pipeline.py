"""The retrain-and-reindex pipeline's own steps: plan a run, gate its model, unpack its ONNX folder.

A Step Functions state machine trains (SageMaker ``createTrainingJob.sync``), makes a model and
runs a batch transform between these steps, passing what :func:`plan_run` returns to the SageMaker
tasks by JSONPath, so the plan's field names are a contract (see :func:`plan_run`). The steps:

* **plan**: merge the execution input over :class:`PipelineDefaults`, validate every field (one
  line per error), name the run and its jobs, write the run manifest (every image an absolute
  ``s3://`` URI) to ``vectors/<run>/manifest.jsonl`` of the artifacts bucket and the transform's
  input parts to ``jobs/<run>/transform-input/part-00000.jsonl``...;
* **gate**: read the training job's report out of ``output.tar.gz`` (:func:`read_report`), keep it
  as ``models/<run>/evaluation.json`` and pass the model only if its text→image R@10 reaches the
  threshold and the live model's (``models/live.json``) (:func:`check_gate`);
* **unpack**: stream ``model.tar.gz`` and copy its ``onnx/`` members to ``models/<run>/onnx/``, the
  folder the search API serves (:func:`unpack_model`).

The run id comes from the execution name, so a retried attempt of one execution finds its own
checkpoints and files again, and a new execution never resumes another's. Everything goes through
:mod:`medsearch.storage`; no AWS SDK here (the Lambda handler wires it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medsearch import storage
from medsearch.constants import (
    BATCH_ENTRY_POINT,
    DATA_PREFIX,
    EVALUATION_REPORT,
    LIVE_MODEL_KEY,
    MODEL_PREFIX,
    ONNX_SUBDIR,
    PROJECT,
    TRAINING_ENTRY_POINT,
    VECTORS_PREFIX,
)
from medsearch.data.manifest import manifest_base, read_manifest
from medsearch.data.queries import QUERIES_FILE
from medsearch.errors import ConfigError, InvalidInputError, MedsearchError, StorageError
from medsearch.sagemaker_env import JOB_KEYS
from medsearch.train.config import TrainConfig

log = logging.getLogger(__name__)

# The artifacts bucket's prefix of SageMaker job outputs (infra.storage.JOBS_PREFIX, which the
# stack's lifecycle rule expires; the infra package is not importable from the runtime).
JOBS_PREFIX: Final = "jobs/"
TRANSFORM_INPUT: Final = "transform-input"
RUN_MANIFEST: Final = "manifest.jsonl"
DEFAULT_BASE_MODEL: Final = "openai/clip-vit-base-patch32"

# SageMaker's limits (CreateTrainingJob / CreateTransformJob / CreateModel API reference).
JOB_NAME_PATTERN: Final = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
JOB_NAME_MAX: Final = 63
HYPERPARAMETERS_MAX: Final = 100
HYPERPARAMETER_VALUE_MAX: Final = 2500
MAX_RUNTIME_LIMIT: Final = 28 * 24 * 3600  # 28 days
MAX_PAYLOAD_LIMIT_MB: Final = 100
ROLE_ARN_PATTERN: Final = r"arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+"
INSTANCE_TYPE_PATTERN: Final = r"ml\.[a-z0-9-]+\.[a-z0-9]+"
ENCODERS: Final = ("auto", "onnx", "torch")

RUN_ID_MAX: Final = 40
_HASH_CHARS = 8
_NOT_RUN_ID = re.compile(r"[^a-z0-9]+")
JOB_NAMES: Final = {
    "training": f"{PROJECT}-train-",
    "model": f"{PROJECT}-model-",
    "transform": f"{PROJECT}-vectorize-",
}
# Hyperparameters the pipeline sets itself: the data and output folders are the job's, the
# checkpoint folder is the one managed spot training syncs, the base comes from ``baseModel``.
_RESERVED_HYPERPARAMETERS = {"data", "out", "checkpoint_dir", "config", "base"}
HYPERPARAMETER_NAMES: Final = frozenset(
    {f.name for f in fields(TrainConfig)} - _RESERVED_HYPERPARAMETERS | JOB_KEYS
)
MAX_REPORT_BYTES: Final = 16 * 1024 * 1024

HyperValue = str | int | float | bool


class GateFailed(MedsearchError):
    """The trained model is worse than the threshold or the live model: it is not deployed."""


# --- defaults (from the handler's environment) ---------------------------------------------------


@dataclass(frozen=True)
class PipelineDefaults:
    """What a run uses unless its execution input says otherwise; built once from the handler's
    settings, validated here so a bad environment fails at cold start with one line."""

    artifacts_bucket: str
    data_bucket: str
    role_arn: str
    training_image: str
    inference_image: str
    training_source: str
    batch_source: str
    manifest_url: str | None = None
    region: str | None = None
    training_instance_type: str = "ml.g5.xlarge"
    training_instance_count: int = 1
    training_volume_gib: int = 50
    max_runtime_seconds: int = 24 * 3600
    spot: bool = True
    max_wait_seconds: int = 48 * 3600
    transform_instance_type: str = "ml.g4dn.xlarge"
    transform_instance_count: int = 1
    transform_max_payload_mb: int = 6
    transform_batch_size: int = 32
    transform_encoder: str = "auto"
    records_per_part: int = 5000
    base_model: str = DEFAULT_BASE_MODEL
    hyperparameters: Mapping[str, HyperValue] = field(default_factory=dict)
    min_recall_at_10: float = 0.0
    load_timeout_minutes: int = 120

    def __post_init__(self) -> None:
        for name in ("artifacts_bucket", "data_bucket"):
            if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", getattr(self, name)):
                raise ConfigError(f"{name} = {getattr(self, name)!r} is not an S3 bucket name")
        if not re.fullmatch(ROLE_ARN_PATTERN, self.role_arn):
            raise ConfigError(f"role_arn = {self.role_arn!r} is not an IAM role ARN")
        for name in ("training_image", "inference_image"):
            value = getattr(self, name)
            if not value or len(value) > 255 or re.search(r"\s", value):
                raise ConfigError(f"{name} = {value!r} is not a container image URI")
        for name in ("training_source", "batch_source"):
            value = getattr(self, name)
            # CDK uploads the archive as <hash>.gz (an asset keeps its last suffix); SageMaker
            # unpacks the object as a gzipped tar whatever its name.
            if not storage.is_s3(value) or not value.endswith((".tar.gz", ".gz")):
                raise ConfigError(f"{name} = {value!r} must be an s3:// URI of a gzipped tar")
        if self.manifest_url is not None:
            _check_manifest_url(self.manifest_url, self.data_bucket, ConfigError, "manifest_url")
        try:
            # The defaults are checked as a whole input would be: same rules, same messages.
            _RunInput.model_validate(_input_from_defaults(self))
        except ValidationError as exc:
            raise ConfigError(_one_line(exc, "defaults")) from None
        if self.max_wait_seconds < self.max_runtime_seconds:
            raise ConfigError(
                f"defaults: max_wait_seconds {self.max_wait_seconds} is less than "
                f"max_runtime_seconds {self.max_runtime_seconds}"
            )
        try:
            _hyperparameters(self.hyperparameters)
        except InvalidInputError as exc:
            raise ConfigError(f"defaults: {exc}") from None

    @property
    def default_manifest(self) -> str:
        """The corpus manifest a run reads when its input names none."""
        return self.manifest_url or f"s3://{self.data_bucket}/{DATA_PREFIX}manifest.jsonl"


# --- execution input ----------------------------------------------------------------------------


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _TrainingInput(_Input):
    instance_type: str | None = Field(
        None, alias="instanceType", pattern=f"^{INSTANCE_TYPE_PATTERN}$"
    )
    # The training job trains on one GPU of one instance (no distributed training).
    instance_count: int | None = Field(None, alias="instanceCount", ge=1, le=1)
    volume_gib: int | None = Field(None, alias="volumeGiB", ge=1, le=16384)
    max_runtime_seconds: int | None = Field(
        None, alias="maxRuntimeSeconds", ge=60, le=MAX_RUNTIME_LIMIT
    )
    spot: bool | None = None
    max_wait_seconds: int | None = Field(None, alias="maxWaitSeconds", ge=60)


class _TransformInput(_Input):
    instance_type: str | None = Field(
        None, alias="instanceType", pattern=f"^{INSTANCE_TYPE_PATTERN}$"
    )
    instance_count: int | None = Field(None, alias="instanceCount", ge=1, le=100)
    max_payload_mb: int | None = Field(None, alias="maxPayloadMB", ge=1, le=MAX_PAYLOAD_LIMIT_MB)
    records_per_part: int | None = Field(None, alias="recordsPerPart", ge=1, le=1_000_000)
    batch_size: int | None = Field(None, alias="batchSize", ge=1, le=4096)
    encoder: str | None = Field(None, pattern=f"^({'|'.join(ENCODERS)})$")


class _GateInput(_Input):
    min_recall_at_10: float | None = Field(None, alias="minRecallAt10", ge=0.0, le=1.0)


class _RunInput(_Input):
    manifest: str | None = Field(None, min_length=1, max_length=1024)
    base_model: str | None = Field(
        None, alias="baseModel", min_length=1, max_length=HYPERPARAMETER_VALUE_MAX, pattern=r"^\S+$"
    )
    hyperparameters: dict[str, HyperValue] | None = None
    training: _TrainingInput = _TrainingInput.model_validate({})
    transform: _TransformInput = _TransformInput.model_validate({})
    gate: _GateInput = _GateInput.model_validate({})
    load_timeout_minutes: int | None = Field(None, alias="loadTimeoutMinutes", ge=1, le=7 * 24 * 60)


def _input_from_defaults(defaults: PipelineDefaults) -> dict[str, Any]:
    """The defaults as an execution input (so one set of rules checks both)."""
    return {
        "baseModel": defaults.base_model,
        "hyperparameters": dict(defaults.hyperparameters),
        "training": {
            "instanceType": defaults.training_instance_type,
            "instanceCount": defaults.training_instance_count,
            "volumeGiB": defaults.training_volume_gib,
            "maxRuntimeSeconds": defaults.max_runtime_seconds,
            "spot": defaults.spot,
            "maxWaitSeconds": defaults.max_wait_seconds,
        },
        "transform": {
            "instanceType": defaults.transform_instance_type,
            "instanceCount": defaults.transform_instance_count,
            "maxPayloadMB": defaults.transform_max_payload_mb,
            "recordsPerPart": defaults.records_per_part,
            "batchSize": defaults.transform_batch_size,
            "encoder": defaults.transform_encoder,
        },
        "gate": {"minRecallAt10": float(defaults.min_recall_at_10)},
        "loadTimeoutMinutes": defaults.load_timeout_minutes,
    }


def _one_line(exc: ValidationError, root: str) -> str:
    """The first validation error as one line: where, what, and the value given."""
    error = exc.errors()[0]
    where = ".".join([root, *(str(part) for part in error["loc"])])
    message = f"{where}: {error['msg']}"
    if error["type"] != "missing" and "input" in error:
        given = repr(error["input"])
        message += f" (got {given[:80] + '...' if len(given) > 80 else given})"
    count = exc.error_count()
    if count > 1:
        message += f" (and {count - 1} more)"
    return message.replace("\n", " ")


def _check_manifest_url(url: str, data_bucket: str, error: type[Exception], where: str) -> None:
    if not storage.is_s3(url):
        raise error(f"{where} = {url!r} must be an s3:// URI")
    try:
        bucket, key = storage.split_s3(url)
    except StorageError:
        raise error(f"{where} = {url!r} is not an s3://bucket/key URI") from None
    if not key or key.endswith("/"):
        raise error(f"{where} = {url!r} must name a manifest object, not a prefix")
    if bucket != data_bucket:
        raise error(f"{where} = {url!r} is not in the data bucket {data_bucket!r}")


def _hyperparameters(values: Mapping[str, Any]) -> dict[str, str]:
    """Check hyperparameter names against the training job's and turn values into strings."""
    out: dict[str, str] = {}
    for raw_name, value in values.items():
        name = raw_name.replace("-", "_")
        if name in _RESERVED_HYPERPARAMETERS:
            hint = "use baseModel" if name == "base" else "the pipeline sets it"
            raise InvalidInputError(f"hyperparameters.{raw_name}: not allowed ({hint})")
        if name not in HYPERPARAMETER_NAMES:
            raise InvalidInputError(
                f"hyperparameters.{raw_name}: unknown (the training job takes "
                f"{', '.join(sorted(HYPERPARAMETER_NAMES))})"
            )
        if name in out:
            raise InvalidInputError(f"hyperparameters.{raw_name}: given twice")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        elif isinstance(value, str):
            text = value
        else:
            raise InvalidInputError(f"hyperparameters.{raw_name}: must be a string, number or bool")
        if len(text) > HYPERPARAMETER_VALUE_MAX:
            raise InvalidInputError(
                f"hyperparameters.{raw_name}: longer than {HYPERPARAMETER_VALUE_MAX} characters"
            )
        out[name] = text
    return out


@dataclass(frozen=True)
class _Limits:
    max_runtime: int
    max_wait: int
    spot: bool


def _merged_limits(defaults: PipelineDefaults, given: _RunInput) -> _Limits:
    """The training time limits after the merge: the wait covers the runtime (SageMaker's rule)."""
    runtime = given.training.max_runtime_seconds or defaults.max_runtime_seconds
    spot = defaults.spot if given.training.spot is None else given.training.spot
    wait = given.training.max_wait_seconds
    if wait is None:
        wait = max(defaults.max_wait_seconds, runtime)
    elif wait < runtime:
        raise InvalidInputError(
            f"input.training.maxWaitSeconds: {wait} is less than maxRuntimeSeconds {runtime}"
        )
    return _Limits(runtime, wait, spot)


# --- naming -------------------------------------------------------------------------------------


def check_run_input(request: Any) -> _RunInput:
    """Validate an execution input (what ``medsearch aws start-pipeline`` sends, or an
    EventBridge rule's): unknown keys, types and ranges; a bad one raises
    :class:`InvalidInputError` with one line."""
    if request is None:
        request = {}
    if not isinstance(request, Mapping):
        raise InvalidInputError("input: must be a JSON object")
    try:
        return _RunInput.model_validate(dict(request))
    except ValidationError as exc:
        raise InvalidInputError(_one_line(exc, "input")) from None


def run_id_for(execution_name: str) -> str:
    """Return the run id of an execution: its name in ``[a-z0-9-]``, at most 40 characters.

    Lowercase, because the run's search index (``<alias>-<run>``) is; a name that had to change
    (case, other characters, length) gets 8 hex characters of its hash, so two executions never
    share a run (nor its checkpoints), while every attempt of one execution gets the same.
    """
    if not isinstance(execution_name, str) or not execution_name.strip():
        raise InvalidInputError("execution: the execution name must be a non-empty string")
    cleaned = _NOT_RUN_ID.sub("-", execution_name.lower()).strip("-")
    if cleaned == execution_name and len(cleaned) <= RUN_ID_MAX:
        return cleaned
    digest = hashlib.sha256(execution_name.encode("utf-8")).hexdigest()[:_HASH_CHARS]
    head = cleaned[: RUN_ID_MAX - _HASH_CHARS - 1].rstrip("-")
    return f"{head}-{digest}" if head else digest


def job_name(kind: str, run_id: str) -> str:
    """Return the SageMaker name of a run's training job, model or transform job."""
    name = JOB_NAMES[kind] + run_id
    if len(name) > JOB_NAME_MAX or not JOB_NAME_PATTERN.fullmatch(name):
        raise InvalidInputError(f"{name!r} is not a valid SageMaker job name")
    return name


def live_model_url(artifacts_bucket: str) -> str:
    """Return ``s3://<artifacts>/models/live.json``, the record of the live model."""
    return f"s3://{artifacts_bucket}/{LIVE_MODEL_KEY}"


# --- plan ---------------------------------------------------------------------------------------


def plan_run(
    request: Mapping[str, Any] | None,
    defaults: PipelineDefaults,
    *,
    execution_name: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Plan one run: validate the execution input over the defaults, write the run manifest and
    the transform input, and return what every later state needs (the contract below).

    ``{"run", "manifest", "runManifest", "records", "training": {...}, "modelDataUrl",
    "reportUrl", "model": {...}, "transform": {...}, "gate": {"minRecallAt10"}, "modelPrefix",
    "outputPrefix", "loadDeadline"}``. ``loadDeadline`` is the plan time plus the training's
    time limit (its wait with spot) plus the load timeout, which has to cover the transform and
    the loading. A bad input raises :class:`InvalidInputError` with one line.
    """
    given = check_run_input(request)
    run = run_id_for(execution_name)
    manifest = given.manifest or defaults.default_manifest
    _check_manifest_url(manifest, defaults.data_bucket, InvalidInputError, "input.manifest")
    limits = _merged_limits(defaults, given)
    hyperparameters = _hyperparameters(
        {**defaults.hyperparameters, **(given.hyperparameters or {})}
    )
    training_name = job_name("training", run)
    base = f"s3://{defaults.artifacts_bucket}"
    output_path = f"{base}/{JOBS_PREFIX}{run}"
    vectors = f"{base}/{VECTORS_PREFIX}{run}"
    input_prefix = f"{output_path}/{TRANSFORM_INPUT}/"
    hyperparameters.update(
        {
            "base": given.base_model or defaults.base_model,
            "sagemaker_program": TRAINING_ENTRY_POINT,
            "sagemaker_submit_directory": defaults.training_source,
        }
    )
    if defaults.region:
        hyperparameters["sagemaker_region"] = defaults.region
    if len(hyperparameters) > HYPERPARAMETERS_MAX:
        raise InvalidInputError(f"hyperparameters: more than {HYPERPARAMETERS_MAX}")
    per_part = given.transform.records_per_part or defaults.records_per_part
    records = write_run_inputs(manifest, f"{vectors}/{RUN_MANIFEST}", input_prefix, per_part)
    environment = {
        "SAGEMAKER_PROGRAM": BATCH_ENTRY_POINT,
        "SAGEMAKER_SUBMIT_DIRECTORY": defaults.batch_source,
        "MEDSEARCH_ENCODER": given.transform.encoder or defaults.transform_encoder,
        "MEDSEARCH_BATCH_SIZE": str(given.transform.batch_size or defaults.transform_batch_size),
        # Every image in the input is absolute; the base is there for a line that is not.
        "MEDSEARCH_IMAGE_BASE": manifest_base(manifest),
    }
    if defaults.region:
        environment["SAGEMAKER_REGION"] = defaults.region
    started = (now or datetime.now(UTC)).astimezone(UTC)
    timeout = given.load_timeout_minutes or defaults.load_timeout_minutes
    training_limit = limits.max_wait if limits.spot else limits.max_runtime
    deadline = started + timedelta(seconds=training_limit, minutes=timeout)
    min_recall = given.gate.min_recall_at_10
    plan = {
        "run": run,
        "manifest": manifest,
        "runManifest": f"{vectors}/{RUN_MANIFEST}",
        "records": records,
        "training": {
            "jobName": training_name,
            "roleArn": defaults.role_arn,
            "image": defaults.training_image,
            "instanceType": given.training.instance_type or defaults.training_instance_type,
            "instanceCount": given.training.instance_count or defaults.training_instance_count,
            "volumeGiB": given.training.volume_gib or defaults.training_volume_gib,
            "maxRuntimeSeconds": limits.max_runtime,
            "spot": limits.spot,
            "maxWaitSeconds": limits.max_wait,
            "checkpointUri": f"{output_path}/checkpoints/",
            "outputPath": output_path,
            "trainUri": f"{vectors}/",
            "hyperparameters": hyperparameters,
        },
        "modelDataUrl": f"{output_path}/{training_name}/output/model.tar.gz",
        "reportUrl": f"{output_path}/{training_name}/output/output.tar.gz",
        "model": {
            "name": job_name("model", run),
            "image": defaults.inference_image,
            "roleArn": defaults.role_arn,
            "environment": environment,
        },
        "transform": {
            "jobName": job_name("transform", run),
            "inputPrefix": input_prefix,
            "outputPath": f"{vectors}/",
            "instanceType": given.transform.instance_type or defaults.transform_instance_type,
            "instanceCount": given.transform.instance_count or defaults.transform_instance_count,
            "maxPayloadMB": given.transform.max_payload_mb or defaults.transform_max_payload_mb,
        },
        "gate": {
            "minRecallAt10": float(defaults.min_recall_at_10 if min_recall is None else min_recall)
        },
        "modelPrefix": f"{base}/{MODEL_PREFIX}{run}/",
        "outputPrefix": vectors,
        "loadDeadline": deadline.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    log.info("planned run %s: %d records from %s", run, records, manifest)
    return plan


def part_name(number: int) -> str:
    """Return the name of a transform input part (its output is ``<name>.out``)."""
    return f"part-{number:05d}.jsonl"


def write_run_inputs(manifest: str, run_manifest: str, input_prefix: str, per_part: int) -> int:
    """Write the run manifest (images absolute) and the transform input parts; return the count.

    A query set beside the source manifest is copied beside the run manifest (the training job
    evaluates on it). Parts of an earlier plan of this run that this one would not rewrite are an
    error, not silently transformed.
    """
    records = read_manifest(manifest)
    if not records:
        raise InvalidInputError(f"{manifest} has no records")
    for record in records:
        if not storage.is_s3(record.image):
            raise InvalidInputError(
                f"{manifest}: image of {record.image_id} is {record.image!r}, not in S3 "
                "(use s3:// URIs or paths relative to the manifest)"
            )
    names = [part_name(i) for i in range(-(-len(records) // per_part))]
    stale = sorted(set(_names_under(input_prefix)) - set(names))
    if stale:
        raise InvalidInputError(
            f"{input_prefix} holds parts this plan does not write ({', '.join(stale[:3])}): "
            "the manifest changed since this run was planned; start a new execution"
        )
    lines = [json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records]
    storage.write_text(run_manifest, "".join(lines))
    for number, name in enumerate(names):
        chunk = records[number * per_part : (number + 1) * per_part]
        storage.write_text(
            storage.join(input_prefix, name),
            "".join(json.dumps({"image_id": r.image_id, "image": r.image}) + "\n" for r in chunk),
        )
    queries = storage.join(manifest_base(manifest), QUERIES_FILE)
    if _exists(queries):
        copy = storage.join(manifest_base(run_manifest), QUERIES_FILE)
        storage.write_bytes(copy, storage.read_bytes(queries))
    return len(records)


def _names_under(prefix: str) -> list[str]:
    """The object names directly under an ``s3://`` prefix."""
    bucket, key = storage.split_s3(prefix)
    return [
        k[len(key) :] for k in storage.object_store().list(bucket, key) if "/" not in k[len(key) :]
    ]


def _exists(url: str) -> bool:
    """Whether an object exists (by listing: a read error must not pass for a missing object)."""
    bucket, key = storage.split_s3(url)
    return key in storage.object_store().list(bucket, key)


# --- the later steps' view of the plan ------------------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    """What the gate and unpack steps read back from a plan (checked: they write under it)."""

    run: str
    report_url: str
    model_data_url: str
    model_prefix: str
    min_recall_at_10: float


def read_plan(plan: Any, artifacts_bucket: str) -> RunPlan:
    """Read the fields of a plan the later steps use; a plan that is not one of this pipeline's
    (a missing field, a location outside the run's folders of the artifacts bucket) raises."""
    if not isinstance(plan, Mapping):
        raise InvalidInputError("plan: must be the plan step's output (a JSON object)")

    def text(name: str) -> str:
        value = plan.get(name)
        if not isinstance(value, str) or not value:
            raise InvalidInputError(f"plan.{name}: missing or not a string")
        return value

    run = text("run")
    if len(run) > RUN_ID_MAX or not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", run):
        raise InvalidInputError(f"plan.run: {run!r} is not a run id")
    jobs = f"s3://{artifacts_bucket}/{JOBS_PREFIX}{run}/"
    model_prefix = text("modelPrefix")
    if model_prefix != f"s3://{artifacts_bucket}/{MODEL_PREFIX}{run}/":
        raise InvalidInputError(f"plan.modelPrefix: {model_prefix!r} is not the run's model folder")
    urls = {name: text(name) for name in ("reportUrl", "modelDataUrl")}
    for name, url in urls.items():
        if not url.startswith(jobs) or "/../" in url:
            raise InvalidInputError(f"plan.{name}: {url!r} is not under the run's {jobs}")
    gate = plan.get("gate")
    value = gate.get("minRecallAt10") if isinstance(gate, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidInputError("plan.gate.minRecallAt10: missing or not a number in [0, 1]")
    return RunPlan(run, urls["reportUrl"], urls["modelDataUrl"], model_prefix, float(value))


# --- gate ---------------------------------------------------------------------------------------


def _recall_at_10(report: Any, where: str) -> float:
    section = report.get("text_to_image") if isinstance(report, Mapping) else None
    value = section.get("r@10") if isinstance(section, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidInputError(f"{where} has no text→image R@10 (text_to_image.r@10)")
    return float(value)


def _live_recall(live: Mapping[str, Any]) -> float:
    """The live model's R@10: its ``evaluation`` is the report, or the gate's answer that passed
    it (``recallAt10``)."""
    evaluation = live.get("evaluation")
    if isinstance(evaluation, Mapping) and "text_to_image" not in evaluation:
        evaluation = {"text_to_image": {"r@10": evaluation.get("recallAt10")}}
    return _recall_at_10(evaluation, f"the live model ({LIVE_MODEL_KEY})")


def check_gate(
    report: Mapping[str, Any], live: Mapping[str, Any] | None, *, min_recall_at_10: float
) -> dict[str, Any]:
    """Pass a model whose text→image R@10 reaches ``min_recall_at_10`` and the live model's.

    ``live`` is ``models/live.json`` (``{"run", "model", "evaluation"}``, the evaluation being the
    live model's report or the gate answer that passed it), ``None`` when no model is live.
    Returns ``{"passed": True, "recallAt10", "liveRecallAt10"}``; raises :class:`GateFailed`
    naming both figures otherwise.
    """
    recall = _recall_at_10(report, "the evaluation report")
    live_recall = None if live is None else _live_recall(live)
    if recall < min_recall_at_10:
        raise GateFailed(f"text→image R@10 {recall:g} is below the minimum {min_recall_at_10:g}")
    if live_recall is not None and recall < live_recall:
        raise GateFailed(f"text→image R@10 {recall:g} is below the live model's {live_recall:g}")
    return {"passed": True, "recallAt10": recall, "liveRecallAt10": live_recall}


def read_live_model(artifacts_bucket: str) -> dict[str, Any] | None:
    """Return ``models/live.json``, or ``None`` when no model is live (no such object)."""
    url = live_model_url(artifacts_bucket)
    if not _exists(url):
        return None
    try:
        live = json.loads(storage.read_text(url))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{url} is not JSON: {exc.msg}") from None
    if not isinstance(live, dict):
        raise InvalidInputError(f"{url} must hold a JSON object")
    return live


def read_report(output_tar_url: str) -> dict[str, Any]:
    """Return ``evaluation.json`` out of a training job's ``output.tar.gz``, streamed."""
    try:
        with (
            storage.open_read(output_tar_url) as stream,
            tarfile.open(fileobj=stream, mode="r|gz") as archive,
        ):
            for member in archive:
                if _member_path(member.name) != EVALUATION_REPORT or not member.isfile():
                    continue
                if member.size > MAX_REPORT_BYTES:
                    raise InvalidInputError(f"{output_tar_url}: {EVALUATION_REPORT} is too large")
                handle = archive.extractfile(member)
                assert handle is not None  # a regular file
                text = handle.read().decode("utf-8")
                break
            else:
                raise InvalidInputError(f"{output_tar_url} has no {EVALUATION_REPORT}")
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{output_tar_url} is not a readable tar.gz: {exc}") from exc
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{EVALUATION_REPORT} in {output_tar_url}: {exc.msg}") from None
    if not isinstance(report, dict):
        raise InvalidInputError(f"{EVALUATION_REPORT} in {output_tar_url} is not a JSON object")
    return report


def write_evaluation(report: Mapping[str, Any], model_prefix: str) -> str:
    """Write the report as ``<model prefix>evaluation.json``; return its URL."""
    url = storage.join(model_prefix, EVALUATION_REPORT)
    storage.write_text(url, json.dumps(report, indent=2) + "\n")
    return url


# --- unpack -------------------------------------------------------------------------------------


def _member_path(name: str) -> str:
    """An archive member's path, normalised; raises for one that escapes the archive's root."""
    if name.startswith("/") or "\\" in name:
        raise InvalidInputError(f"archive member {name!r} has an absolute or Windows path")
    path = posixpath.normpath(name)
    if path == ".." or path.startswith("../"):
        raise InvalidInputError(f"archive member {name!r} escapes the archive")
    return path


def unpack_model(model_tar_url: str, dest_prefix: str) -> list[str]:
    """Copy the ``onnx/`` folder of a ``model.tar.gz`` to ``<dest_prefix>onnx/``; return the URLs.

    The archive is streamed member by member (``r|gz``) and each file uploaded as a stream, so
    neither the archive nor a tower is ever whole in memory. A member that would land outside
    the prefix (absolute, ``..``) or is a link refuses the archive; one without an ``onnx/``
    export (its manifest) is an error.
    """
    from medsearch.model.onnx_encoder import MANIFEST_FILE  # a name only; imports no runtime

    written: list[str] = []
    onnx_root = f"{ONNX_SUBDIR}/"
    try:
        with (
            storage.open_read(model_tar_url) as stream,
            tarfile.open(fileobj=stream, mode="r|gz") as archive,
        ):
            for member in archive:
                path = _member_path(member.name)
                if not path.startswith(onnx_root) or member.isdir():
                    continue
                if not member.isfile():
                    raise InvalidInputError(
                        f"{model_tar_url}: {member.name!r} is a link or special file"
                    )
                target = storage.join(dest_prefix, path)
                handle = archive.extractfile(member)
                assert handle is not None  # a regular file
                storage.write_stream(target, handle)
                written.append(target)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidInputError(f"{model_tar_url} is not a readable tar.gz: {exc}") from exc
    if not written:
        raise InvalidInputError(
            f"{model_tar_url} has no {onnx_root} folder: the training job exports it"
        )
    if storage.join(dest_prefix, ONNX_SUBDIR, MANIFEST_FILE) not in written:
        raise InvalidInputError(
            f"{model_tar_url}: {onnx_root} has no {MANIFEST_FILE}, so it is not an ONNX export"
        )
    log.info("unpacked %d ONNX files from %s to %s", len(written), model_tar_url, dest_prefix)
    return written
