"""The deployment's options: CDK context (``cdk.json`` or ``cdk deploy -c key=value``) → one model.

Read once in ``app.py`` into a frozen :class:`DeployConfig` and passed to every construct, so no
construct reads context itself. ``-c`` values arrive as strings; pydantic turns ``"3"`` into 3 and
``"true"`` into True, and a bad value stops the synth with one line naming the key. The defaults
cost little for a first deploy (one small data node, no dedicated masters, one zone); the README's
"Deploy to AWS" section lists every key and a large layout.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from aws_cdk import RemovalPolicy
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medsearch.constants import PROJECT

# Amazon OpenSearch Service domain names: 3–28 characters, a lowercase letter first, then
# lowercase letters, digits and hyphens.
DOMAIN_NAME = re.compile(r"^[a-z][a-z0-9-]{2,27}$")
# Index names are lowercase; the run indexes are ``<alias>-<run id>``.
ALIAS_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
# T2/T3 instances support neither Multi-AZ with standby nor dedicated-master layouts at scale.
BURSTABLE = re.compile(r"^t[23]\.")
# /tmp for a float32 ViT-B/32 model's ONNX towers (about 600 MB) with room to spare.
SEARCH_TMP_FP32_MIB = 2048


class ConfigError(ValueError):
    """A context value the app cannot deploy (one line, naming the key)."""


class DeployConfig(BaseModel):
    """Every option of the deployment, with defaults for a small first deploy."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    # --- search domain ---------------------------------------------------------------------
    domain_name: str = Field(PROJECT, alias="domainName")
    domain_instance_type: str = Field("t3.medium.search", alias="domainInstanceType")
    domain_instance_count: int = Field(1, ge=1, le=80, alias="domainInstanceCount")
    domain_volume_gib: int = Field(20, ge=10, le=16384, alias="domainVolumeGiB")
    domain_master_type: str | None = Field(None, alias="domainMasterType")
    domain_master_count: int = Field(3, alias="domainMasterCount")
    domain_zones: int = Field(1, ge=1, le=3, alias="domainZones")
    domain_standby: bool = Field(False, alias="domainStandby")
    # Copies of each shard beyond the primary; None = follow the layout (see index_replicas).
    replicas: int | None = Field(None, ge=0, le=5, alias="indexReplicas")
    alias: str = Field(PROJECT, alias="indexAlias")
    # Principals (role ARNs) that get full access to the domain's data plane, for operators.
    admin_role_arns: tuple[str, ...] = Field((), alias="domainAdminRoleArns")

    # --- search API ------------------------------------------------------------------------
    api_rate_limit: float = Field(50, gt=0, alias="apiRateLimit")
    api_burst_limit: int = Field(100, ge=1, alias="apiBurstLimit")
    customer_rate_limit: float = Field(10, gt=0, alias="customerRateLimit")
    customer_burst_limit: int = Field(20, ge=1, alias="customerBurstLimit")
    customer_quota_per_day: int = Field(10_000, ge=1, alias="customerQuotaPerDay")
    site_rate_limit: float = Field(20, gt=0, alias="siteRateLimit")
    site_burst_limit: int = Field(40, ge=1, alias="siteBurstLimit")
    # One API key per customer name, in the customers' usage plan.
    api_clients: tuple[str, ...] = Field((), alias="apiClients")
    # The ONNX folder's key prefix in the artifacts bucket (e.g. models/<run>/onnx); none =
    # text search only until a model is trained.
    model_prefix: str | None = Field(None, alias="modelPrefix")
    onnx_int8: bool = Field(True, alias="onnxInt8")
    search_memory_mib: int = Field(2048, ge=512, le=10240, alias="searchMemoryMiB")
    snap_start: bool = Field(True, alias="snapStart")

    # --- index loader ----------------------------------------------------------------------
    manifest_key: str = Field("data/manifest.jsonl", alias="manifestKey")
    loader_concurrency: int = Field(2, ge=2, le=100, alias="loaderConcurrency")
    loader_memory_mib: int = Field(1024, ge=256, le=10240, alias="loaderMemoryMiB")
    loader_timeout_min: int = Field(10, ge=1, le=15, alias="loaderTimeoutMinutes")
    loader_batch_size: int = Field(5, ge=1, le=10, alias="loaderBatchSize")
    loader_max_receives: int = Field(5, ge=1, le=1000, alias="loaderMaxReceives")

    # --- training pipeline -------------------------------------------------------------------
    # SageMaker's PyTorch deep learning containers (AWS's registry account for most regions;
    # `{region}` and `{suffix}` are filled in). Override with an image of your own.
    training_image: str = Field(
        "763104351884.dkr.ecr.{region}.{suffix}/pytorch-training:"
        "2.6.0-gpu-py312-cu126-ubuntu22.04-sagemaker",
        alias="trainingImage",
    )
    inference_image: str = Field(
        "763104351884.dkr.ecr.{region}.{suffix}/pytorch-inference:"
        "2.6.0-gpu-py312-cu124-ubuntu22.04-sagemaker",
        alias="inferenceImage",
    )
    base_model: str = Field("openai/clip-vit-base-patch32", alias="baseModel")
    train_instance_type: str = Field("ml.g5.xlarge", alias="trainInstanceType")
    train_volume_gib: int = Field(50, ge=5, le=16384, alias="trainVolumeGiB")
    train_max_hours: int = Field(24, ge=1, le=672, alias="trainMaxHours")
    train_spot: bool = Field(True, alias="trainSpot")
    transform_instance_type: str = Field("ml.g4dn.xlarge", alias="transformInstanceType")
    transform_instance_count: int = Field(1, ge=1, le=100, alias="transformInstanceCount")
    min_recall_at_10: float = Field(0.0, ge=0, le=1, alias="minRecallAt10")
    load_timeout_hours: int = Field(12, ge=1, le=72, alias="loadTimeoutHours")
    # Start a run during `cdk deploy`: once per trainingDataVersion (or on every deploy without).
    start_pipeline: bool = Field(False, alias="startPipeline")
    training_data_version: str | None = Field(None, alias="trainingDataVersion")

    # --- storage, alarms ---------------------------------------------------------------------
    vectors_retention_days: int = Field(180, ge=1, alias="vectorsRetentionDays")
    job_output_retention_days: int = Field(30, ge=1, alias="jobOutputRetentionDays")
    log_retention_days: int = Field(90, ge=1, alias="logRetentionDays")
    alarm_topic_arn: str | None = Field(None, alias="alarmTopicArn")
    alarm_latency_ms: float = Field(5000, gt=0, alias="alarmLatencyMs")
    # "retain" keeps buckets and the domain when the stack is deleted (data is not lost by a
    # teardown by mistake); "destroy" removes the domain and log groups (buckets must be emptied).
    removal: Literal["retain", "destroy"] = Field("retain", alias="removalPolicy")

    @model_validator(mode="after")
    def _check_layout(self) -> DeployConfig:
        if not DOMAIN_NAME.match(self.domain_name):
            raise ValueError(
                f"domainName {self.domain_name!r}: 3-28 of a-z, 0-9 and '-', starting with a letter"
            )
        if not ALIAS_NAME.match(self.alias):
            raise ValueError(f"indexAlias {self.alias!r}: lowercase letters, digits, '_' and '-'")
        if self.domain_instance_count % self.domain_zones:
            raise ValueError(
                f"domainInstanceCount {self.domain_instance_count} must be a multiple of "
                f"domainZones {self.domain_zones} (the nodes spread evenly over the zones)"
            )
        if self.domain_master_type and self.domain_master_count not in (3, 5):
            raise ValueError("domainMasterCount must be 3 or 5")
        if self.domain_standby:
            if self.domain_zones != 3 or not self.domain_master_type:
                raise ValueError(
                    "domainStandby (Multi-AZ with standby) needs domainZones 3 and "
                    "domainMasterType (three dedicated masters)"
                )
            if BURSTABLE.match(self.domain_instance_type):
                raise ValueError("domainStandby does not support T2/T3 instance types")
        replicas = self.index_replicas
        if replicas > self.domain_instance_count - 1:
            raise ValueError(
                f"indexReplicas {replicas} needs at least {replicas + 1} data nodes "
                f"(domainInstanceCount is {self.domain_instance_count})"
            )
        if (replicas + 1) % self.awareness_zones:
            raise ValueError(
                f"indexReplicas {replicas}: Multi-AZ with standby needs a multiple of 3 copies "
                "(indexReplicas 2 or 5)"
            )
        if self.snap_start and not self.onnx_int8:
            raise ValueError(
                "snapStart with a float32 model: SnapStart allows at most 512 MB of /tmp and "
                "the ViT-B/32 float32 towers take about 600 MB; set onnxInt8=true (about 150 "
                "MB) or snapStart=false"
            )
        if self.model_prefix is not None and (
            self.model_prefix.startswith(("/", "s3:")) or ".." in self.model_prefix
        ):
            raise ValueError("modelPrefix is a key prefix in the artifacts bucket (models/...)")
        return self

    @property
    def removal_policy(self) -> RemovalPolicy:
        """What deleting the stack does to buckets, the domain and log groups."""
        return RemovalPolicy.RETAIN if self.removal == "retain" else RemovalPolicy.DESTROY

    @property
    def awareness_zones(self) -> int:
        """Zones the engine must spread copies over (3 with standby: copies a multiple of 3)."""
        return 3 if self.domain_standby else 1

    @property
    def index_replicas(self) -> int:
        """Replicas of the run index: given, or one copy per zone (0 on a single node)."""
        if self.replicas is not None:
            return self.replicas
        if self.domain_standby:
            return 2
        return min(self.domain_zones, self.domain_instance_count) - 1

    @property
    def search_tmp_mib(self) -> int:
        """The search function's /tmp: 512 MB (all SnapStart allows) for int8 towers (about
        230 MB), more for float32 ones (about 580 MB), which only run without SnapStart."""
        return 512 if self.onnx_int8 else SEARCH_TMP_FP32_MIB

    @property
    def dedicated_masters(self) -> int:
        """Dedicated master nodes (0 without a master instance type)."""
        return self.domain_master_count if self.domain_master_type else 0


def _as_tuple(value: Any) -> Any:
    """``-c apiClients=a,b`` arrives as one string; cdk.json may give a list."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


LIST_KEYS = ("apiClients", "domainAdminRoleArns")


def load_config(context: dict[str, Any]) -> DeployConfig:
    """Return the deployment's options from CDK context; a bad value raises :class:`ConfigError`."""
    known = {field.alias or name for name, field in DeployConfig.model_fields.items()}
    values = {key: value for key, value in context.items() if key in known}
    for key in LIST_KEYS:
        if key in values:
            values[key] = _as_tuple(values[key])
    # Empty strings from `-c key=` mean "not set".
    values = {key: value for key, value in values.items() if value != ""}
    try:
        return DeployConfig(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = " " + ".".join(str(p) for p in error["loc"]) if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid context{where}: {message}") from None
