"""Index loader Lambda: S3 notifications of ``*.out`` objects (through SQS) → the run's index.

A few lines over :class:`medsearch.loader.IndexLoader`: settings are parsed once per container
into :class:`IndexLoaderSettings`, the OpenSearch client (SigV4 from the function's role) and the
loader are built once, and each event's object URLs are handed to the core. The events are read
here, with Powertools' data classes, so the core stays free of AWS formats:

* an SQS batch (``ReportBatchItemFailures`` on) goes through Powertools' ``BatchProcessor``: each
  message's body is an S3 notification (or one that SNS wrapped, raw delivery off); the message
  comes back in ``batchItemFailures`` exactly when one of its objects did not load completely or
  its body is not an S3 notification (after ``maxReceiveCount`` tries the queue's DLQ keeps it).
  The ``s3:TestEvent`` S3 sends when the notification is configured is acknowledged;
* a direct S3 notification (or an EventBridge "Object Created" event) raises when an object did
  not load completely, so Lambda's asynchronous retries apply;
* ``{"action": "publish", "output_prefix": "s3://...", "force": false}`` publishes a run by hand
  (``{"published": bool, "merging": bool}``; a run index that fails the publish check raises,
  the alias stays). The run index's force-merge may take longer than one invocation (about
  9 minutes for 185k documents on a 2-core node): a publish waits for it while the invocation
  has time, then answers ``merging: true``, and the merge goes on in the domain; the pipeline
  asks again until it is done;
* ``{"action": "status", "output_prefix": "s3://.../vectors/<run>", "records": N}`` tells the
  pipeline how far a run's loading is: ``{"complete", "failed", "objects", "loaded",
  "documents", "reason"}`` (:meth:`medsearch.loader.RunStatus.summary`).

Runs that became complete are published once per invocation, after every object is loaded.
Powertools gives structured logs (the core's loggers included; ids and counts, never captions),
metrics and traces, under :data:`~medsearch.constants.INDEX_LOADER_SERVICE` and
:data:`~medsearch.constants.METRICS_NAMESPACE`: those are passed to the constructors, and an
explicit argument wins over ``POWERTOOLS_SERVICE_NAME`` / ``POWERTOOLS_METRICS_NAMESPACE``, so the
names cannot drift from the constants the stack sets those variables from. The log level is left
to ``POWERTOOLS_LOG_LEVEL`` (INFO when unset).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes import (
    S3Event,
    S3EventBridgeNotificationEvent,
    SQSRecord,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lambdas import opensearch_client
from medsearch.constants import INDEX_LOADER_SERVICE, METRICS_NAMESPACE
from medsearch.errors import MergeRunning
from medsearch.index.opensearch import OpenSearchConfig, OpenSearchIndex, run_index_name
from medsearch.loader import (
    DEFAULT_RUN_PATTERN,
    IndexLoader,
    LoaderConfig,
    LoadResult,
    is_output_object,
    publish_event,
    status_event,
)
from medsearch.publish_guard import DEFAULT_MAX_DROP
from medsearch.settings import check_opensearch_service

logger = Logger(service=INDEX_LOADER_SERVICE)
metrics = Metrics(namespace=METRICS_NAMESPACE, service=INDEX_LOADER_SERVICE)
tracer = Tracer(service=INDEX_LOADER_SERVICE)
# One per container, as Powertools advises; it clears its state at the start of every batch. With
# every message failed it still answers batchItemFailures (raising would retry the same messages
# and lose the per-message answer).
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)

S3_TEST_EVENT = "s3:TestEvent"


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
    publish_max_drop: float = Field(
        DEFAULT_MAX_DROP,
        ge=0,
        le=1,
        description="share of the live run's documents a new run may lack and still publish",
    )

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
            max_drop=self.publish_max_drop,
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


class NotificationError(ValueError):
    """A message body or event that is not an S3 notification (a poison message: not retried
    into success, so SQS moves it to the DLQ after its tries)."""


class MessageNotLoaded(Exception):
    """Raised for an SQS message whose objects did not all load: the batch processor reports it."""


def object_urls(notification: dict[str, Any]) -> list[str]:
    """Return the ``s3://`` URLs of the ``*.out`` objects an S3 notification says were created.

    ``notification`` is an S3 event notification (``{"Records": [...]}``), an EventBridge "Object
    Created" event, or the ``s3:TestEvent`` message (no objects). Other objects under the prefix
    (the loader's own reports) and other event types are skipped; anything else raises
    :class:`NotificationError`.
    """
    if notification.get("Event") == S3_TEST_EVENT:
        logger.info("S3 test event acknowledged", extra={"bucket": notification.get("Bucket")})
        return []
    urls: list[str] = []
    try:
        if notification.get("source") == "aws.s3" and "detail" in notification:
            bridged = S3EventBridgeNotificationEvent(notification)
            if bridged.detail_type == "Object Created":
                detail = bridged.detail  # its object key is decoded by the data class
                urls.append(f"s3://{detail.bucket.name}/{detail.object.key}")
        elif isinstance(notification.get("Records"), list):
            for record in S3Event(notification).records:
                if not record.event_name.startswith("ObjectCreated:"):
                    continue
                # Keys in S3 notifications are URL-encoded ('+' for a space). S3Object.key is the
                # raw value (only S3Event.object_key, the first record's, is decoded): decode once.
                key = unquote_plus(record.s3.get_object.key)
                urls.append(f"s3://{record.s3.bucket.name}/{key}")
        else:
            raise NotificationError("not an S3 notification")
    except (KeyError, TypeError, AttributeError):
        raise NotificationError("malformed S3 notification") from None
    return [url for url in urls if is_output_object(url)]


def message_notification(record: SQSRecord) -> dict[str, Any]:
    """Return the S3 notification an SQS message carries, unwrapping an SNS envelope."""
    try:
        body = record.json_body
        if isinstance(body, dict) and body.get("Type") == "Notification":
            body = json.loads(record.decoded_nested_sns_event.message)
    except json.JSONDecodeError:
        raise NotificationError("message body is not JSON") from None
    except (KeyError, TypeError):
        raise NotificationError("SNS envelope without a message") from None
    if not isinstance(body, dict):
        raise NotificationError("message body is not a JSON object")
    return body


@dataclass
class _Batch:
    """One SQS batch: the record handler the processor calls, and what it loaded."""

    loader: IndexLoader
    results: list[LoadResult] = field(default_factory=list)
    failed: int = 0

    def load_message(self, record: SQSRecord) -> None:
        """Load one message's objects; raise (so it is reported) unless all loaded completely."""
        try:
            result = self.loader.load_objects(object_urls(message_notification(record)))
        except NotificationError as exc:
            self.failed += 1
            logger.error(
                "message is not an S3 notification",
                extra={"message_id": record.message_id, "errors": [str(exc)]},
            )
            raise
        except Exception:
            # Not one of the core's errors (those are per object, in the result): the processor
            # reports the message; say why here, as an uncaught exception would have.
            self.failed += 1
            logger.exception("message failed", extra={"message_id": record.message_id})
            raise
        self.results.append(result)
        if not result.ok:
            self.failed += 1
            _log_incomplete(record.message_id, result)
            raise MessageNotLoaded(record.message_id)


def _log_incomplete(message_id: str | None, result: LoadResult) -> None:
    # Each object's own report is logged, with its ids, by the core loader (IndexLoader._log).
    logger.error(
        "message not loaded completely",
        extra={"message_id": message_id, "errors": result.errors, "failed_ids": result.failed_ids},
    )


def _record(results: list[LoadResult], published: list[str], *, failed: int) -> None:
    """Emit the invocation's metrics."""
    reports = [r for result in results for r in result.reports]
    metrics.add_metric("ObjectsLoaded", MetricUnit.Count, len(reports))
    metrics.add_metric("DocumentsWritten", MetricUnit.Count, sum(r.written for r in reports))
    metrics.add_metric("DocumentsFailed", MetricUnit.Count, sum(len(r.failed) for r in reports))
    metrics.add_metric(
        "VectorizeErrors", MetricUnit.Count, sum(len(r.vector_errors) for r in reports)
    )
    metrics.add_metric("MalformedLines", MetricUnit.Count, sum(len(r.malformed) for r in reports))
    metrics.add_metric("UnknownIds", MetricUnit.Count, sum(len(r.unknown) for r in reports))
    metrics.add_metric("MessagesFailed", MetricUnit.Count, failed)
    metrics.add_metric("RunsPublished", MetricUnit.Count, len(published))


# What a publish needs after its merge: replicas, counts, the publish check and the alias swap.
PUBLISH_MARGIN_S = 60.0


def merge_wait(context: LambdaContext) -> float:
    """Seconds a publish may wait for its index's merge: what is left of this invocation, less
    what the steps after the merge need (:data:`PUBLISH_MARGIN_S`)."""
    return max(context.get_remaining_time_in_millis() / 1000 - PUBLISH_MARGIN_S, 1.0)


def _is_sqs_batch(event: dict[str, Any]) -> bool:
    """Tell an SQS batch (answered with ``batchItemFailures``) from a direct S3 event."""
    records = event.get("Records")
    first = records[0] if isinstance(records, list) and records else None
    return isinstance(first, dict) and first.get("eventSource") == "aws:sqs"


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Load the event's output objects; answer SQS with ``batchItemFailures``."""
    loader = get_loader()
    status = status_event(event)
    if status is not None:
        prefix, records = status
        summary = loader.run_status(loader.config.run_id(prefix + "/"), prefix).summary(records)
        logger.info("run status", extra={"output_prefix": prefix, **summary})
        return summary
    publish = publish_event(event)
    if publish is not None:
        prefix, force = publish
        run_id = loader.config.run_id(prefix + "/")
        try:
            done = loader.publish(run_id, prefix, force=force, merge_wait=merge_wait(context))
        except MergeRunning as exc:
            logger.info("run not published yet: its index is merging", extra={"reason": str(exc)})
            return {"published": False, "merging": True}
        metrics.add_metric("RunsPublished", MetricUnit.Count, int(done))
        return {"published": done, "merging": False}
    if _is_sqs_batch(event):
        batch = _Batch(loader)
        answer = process_partial_response(
            event=event, record_handler=batch.load_message, processor=processor, context=context
        )
        reports = [r for result in batch.results for r in result.reports]
        published = loader.publish_completed(reports, merge_wait=merge_wait(context))
        _record(batch.results, published, failed=batch.failed)
        return dict(answer)
    result = loader.load_objects(object_urls(event))
    published = loader.publish_completed(result.reports, merge_wait=merge_wait(context))
    _record([result], published, failed=int(not result.ok))
    if not result.ok:
        _log_incomplete(None, result)
        raise RuntimeError("the S3 event's objects did not load completely")
    return {"objects": len(result.reports), "published": published}
