"""Index loader Lambda: S3 or SQS-wrapped S3 events for ``*.out`` objects → the run's index.

A few lines over :class:`medsearch.loader.IndexLoader`: settings are parsed once per container
into :class:`IndexLoaderSettings`, the OpenSearch client (SigV4 from the function's role) and the
loader are built once, and each event is handed to the core. SQS events answer with
``batchItemFailures`` (only the messages whose objects did not load completely come back); direct
S3 events raise on failure, so Lambda's asynchronous retries apply. A direct
``{"action": "publish", "output_prefix": "s3://...", "force": false}`` event publishes a run by
hand. Powertools gives structured logs (the core's loggers included), metrics and traces.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lambdas import opensearch_client
from medsearch.constants import PROJECT
from medsearch.index.opensearch import OpenSearchConfig, OpenSearchIndex, run_index_name
from medsearch.loader import (
    DEFAULT_RUN_PATTERN,
    EventResult,
    IndexLoader,
    LoaderConfig,
    is_sqs_event,
)
from medsearch.loader import publish_event as parse_publish_event
from medsearch.settings import check_opensearch_service

logger = Logger(service=f"{PROJECT}-index-loader")
metrics = Metrics(namespace=PROJECT, service="index-loader")
tracer = Tracer(service=f"{PROJECT}-index-loader")


class IndexLoaderSettings(BaseSettings):
    """The loader's configuration, from ``MEDSEARCH_*`` environment variables (read once)."""

    model_config = SettingsConfigDict(env_prefix="MEDSEARCH_", frozen=True, extra="ignore")

    opensearch_url: str = Field(description="OpenSearch endpoint URL")
    opensearch_index: str = Field("medsearch", description="the read alias runs are published to")
    opensearch_auth: Literal["sigv4", "basic", "none"] = "sigv4"
    opensearch_service: Literal["es"] = "es"
    _refuse_serverless = field_validator("opensearch_service", mode="before")(
        check_opensearch_service
    )
    opensearch_username: str | None = None
    opensearch_password: SecretStr | None = None
    aws_region: str | None = Field(
        None, validation_alias=AliasChoices("MEDSEARCH_AWS_REGION", "AWS_REGION")
    )
    manifest_url: str = Field(description="the run's manifest; '{run_id}' is filled in")
    run_pattern: str = Field(DEFAULT_RUN_PATTERN, description="regex with (?P<run_id>) on keys")
    auto_publish: bool = True
    keep_indexes: int = Field(2, ge=1)
    knn_engine: Literal["lucene", "faiss"] = "lucene"
    hnsw_m: int = Field(16, ge=2)
    hnsw_ef_construction: int = Field(128, ge=2)
    hnsw_ef_search: int = Field(128, ge=1)
    replicas: int = Field(1, ge=0)
    awareness_zones: int = Field(
        1, ge=1, description="3 on a Multi-AZ-with-standby domain: copies must be a multiple"
    )
    bulk_max_docs: int = Field(500, ge=1)
    bulk_max_bytes: int = Field(5 * 1024 * 1024, ge=1024)
    retry_max_attempts: int = Field(8, ge=1, description="tries per request on 429/5xx")
    retry_backoff_base: float = Field(0.2, ge=0, description="first back-off step, seconds")
    retry_backoff_max: float = Field(20.0, ge=0, description="largest back-off step, seconds")

    def engine_config(self) -> OpenSearchConfig:
        """Return the engine configuration these settings describe."""
        return OpenSearchConfig(
            engine=self.knn_engine,
            m=self.hnsw_m,
            ef_construction=self.hnsw_ef_construction,
            ef_search=self.hnsw_ef_search,
            replicas=self.replicas,
            awareness_zones=self.awareness_zones,
            keep_indexes=self.keep_indexes,
            bulk_max_docs=self.bulk_max_docs,
            bulk_max_bytes=self.bulk_max_bytes,
            max_attempts=self.retry_max_attempts,
            backoff_base=self.retry_backoff_base,
            backoff_max=self.retry_backoff_max,
        )

    def loader_config(self) -> LoaderConfig:
        """Return the loader configuration these settings describe."""
        return LoaderConfig(
            manifest_url=self.manifest_url,
            alias=self.opensearch_index,
            run_pattern=self.run_pattern,
            auto_publish=self.auto_publish,
            batch_docs=self.bulk_max_docs,
        )


def make_client(settings: IndexLoaderSettings) -> Any:
    """Return the OpenSearch client (tests replace this function to plug in a fake)."""
    password = settings.opensearch_password
    return opensearch_client(
        settings.opensearch_url,
        auth=settings.opensearch_auth,
        service=settings.opensearch_service,
        region=settings.aws_region,
        username=settings.opensearch_username,
        password=password.get_secret_value() if password else None,
    )


def build_loader(settings: IndexLoaderSettings, client: Any) -> IndexLoader:
    """Wire the core loader to an OpenSearch client."""
    engine = OpenSearchIndex(client, settings.opensearch_index, config=settings.engine_config())
    return IndexLoader(settings.loader_config(), engine.with_name, run_index_name)


@lru_cache(maxsize=1)
def get_loader() -> IndexLoader:
    """Return this container's loader (settings, client and manifest cache made once)."""
    # The core logs through logging.getLogger(__name__): route it through Powertools (JSON with
    # the invocation's keys). Done at cold start, not at import, so importing has no side effect.
    copy_config_to_registered_loggers(source_logger=logger, include={"medsearch"})
    settings = IndexLoaderSettings()  # type: ignore[call-arg]
    return build_loader(settings, make_client(settings))


def _record(result: EventResult) -> None:
    """Emit metrics and log every message that did not load completely."""
    reports = result.reports
    metrics.add_metric("ObjectsLoaded", MetricUnit.Count, len(reports))
    metrics.add_metric("DocumentsWritten", MetricUnit.Count, sum(r.written for r in reports))
    metrics.add_metric("DocumentsFailed", MetricUnit.Count, sum(len(r.failed) for r in reports))
    metrics.add_metric(
        "VectorizeErrors", MetricUnit.Count, sum(len(r.vector_errors) for r in reports)
    )
    metrics.add_metric("MalformedLines", MetricUnit.Count, sum(len(r.malformed) for r in reports))
    metrics.add_metric("UnknownIds", MetricUnit.Count, sum(len(r.unknown) for r in reports))
    metrics.add_metric("RunsPublished", MetricUnit.Count, len(result.published))
    # Each object's own report is logged, with its ids, by the core loader (IndexLoader._log).
    for message in result.messages:
        if not message.ok:
            logger.error(
                "message not loaded completely",
                extra={
                    "message_id": message.message_id,
                    "errors": message.errors,
                    "failed_ids": [b.image_id for r in message.reports for b in r.failed],
                },
            )


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Load the event's output objects; answer SQS with ``batchItemFailures``."""
    loader = get_loader()
    publish = parse_publish_event(event)
    if publish is not None:
        prefix, force = publish
        published = loader.publish(loader.config.run_id(prefix + "/"), prefix, force=force)
        metrics.add_metric("RunsPublished", MetricUnit.Count, int(published))
        return {"published": published}
    result = loader.handle(event)
    _record(result)
    if is_sqs_event(event):
        return {"batchItemFailures": result.batch_item_failures()}
    if result.failed:
        raise RuntimeError(
            f"{sum(not m.ok for m in result.messages)} S3 record(s) did not load completely"
        )
    return {"objects": len(result.reports), "published": result.published}
