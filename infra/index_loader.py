"""The index loader: transform output in S3 → SQS → the loader Lambda → the run's index.

S3 sends an object-created notification for every ``vectors/…*.out`` key of the artifacts bucket
to a queue; the queue feeds the loader with partial batch responses (only the messages whose
objects did not load come back), a visibility timeout of six times the function's timeout (so a
message is not delivered twice while a slow load is still running) and a dead-letter queue after
``loaderMaxReceives`` tries. Reserved concurrency, and the same maximum on the event source, keep
the loader from flooding the domain with bulk requests.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as notifications
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import DeployConfig
from infra.functions import python_function
from infra.nag import logical_id, suppress
from medsearch.constants import (
    INDEX_LOADER_HANDLER,
    INDEX_LOADER_PACKAGE_DIR,
    INDEX_LOADER_SERVICE,
    METRICS_NAMESPACE,
    TRANSFORM_OUTPUT_SUFFIX,
    VECTORS_PREFIX,
)
from medsearch.loader import REPORT_SUFFIX
from medsearch.pipeline import RUN_MANIFEST

# SQS redelivers a message whose visibility lapses; six times the function's timeout is what
# Lambda's docs ask of a queue that feeds a function (batching window and retries included).
VISIBILITY_FACTOR = 6


class IndexLoader(Construct):
    """The loader function, its queue and dead-letter queue, and the S3 notification."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeployConfig,
        role: iam.Role,
        artifacts: s3.IBucket,
        opensearch_url: str,
    ) -> None:
        super().__init__(scope, id)
        timeout = Duration.minutes(config.loader_timeout_min)
        self.dead_letters = sqs.Queue(
            self,
            "DeadLetters",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        suppress(
            self.dead_letters,
            "AwsSolutions-SQS3",
            "This is the dead-letter queue of the loader's queue; its depth raises an alarm.",
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=Duration.seconds(timeout.to_seconds() * VISIBILITY_FACTOR),
            retention_period=Duration.days(4),
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dead_letters, max_receive_count=config.loader_max_receives
            ),
        )
        self.environment = {
            "MEDSEARCH_OPENSEARCH_URL": opensearch_url,
            "MEDSEARCH_OPENSEARCH_INDEX": config.alias,
            # Each run's manifest sits beside its vectors (the pipeline's Plan step writes it
            # there); the pipeline publishes a run once it has checked it.
            "MEDSEARCH_MANIFEST_URL": artifacts.s3_url_for_object(
                f"{VECTORS_PREFIX}{{run_id}}/{RUN_MANIFEST}"
            ),
            "MEDSEARCH_AUTO_PUBLISH": "false",
            "MEDSEARCH_REPLICAS": str(config.index_replicas),
            "MEDSEARCH_AWARENESS_ZONES": str(config.awareness_zones),
            "POWERTOOLS_SERVICE_NAME": INDEX_LOADER_SERVICE,
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            "POWERTOOLS_LOG_LEVEL": "INFO",
        }
        self.function = python_function(
            self,
            "Function",
            config=config,
            role=role,
            package=INDEX_LOADER_PACKAGE_DIR,
            handler=INDEX_LOADER_HANDLER,
            memory_mib=config.loader_memory_mib,
            timeout=timeout,
            environment=self.environment,
            description="Loads batch-transform vectors into the run's OpenSearch index",
            reserved_concurrent_executions=config.loader_concurrency,
        )
        self.function.add_event_source(
            sources.SqsEventSource(
                self.queue,
                batch_size=config.loader_batch_size,
                report_batch_item_failures=True,
                max_concurrency=config.loader_concurrency,
            )
        )
        artifacts.add_event_notification(
            s3.EventType.OBJECT_CREATED,
            notifications.SqsDestination(self.queue),
            s3.NotificationKeyFilter(prefix=VECTORS_PREFIX, suffix=TRANSFORM_OUTPUT_SUFFIX),
        )
        # Reads the run's manifest and outputs and writes a report beside each output
        # (<object>.loaded.json); nothing in the data bucket.
        artifacts.grant_read(role, f"{VECTORS_PREFIX}*")
        artifacts.grant_put(role, f"{VECTORS_PREFIX}*{REPORT_SUFFIX}")
        self.role = role
        suppress(
            role,
            "AwsSolutions-IAM5",
            "Scoped to the vectors/ prefix (outputs in, reports out) and the object actions "
            "grant_read/grant_put need (s3:GetObject*, s3:List*, s3:Abort*).",
            applies_to=[
                "Action::s3:GetBucket*",
                "Action::s3:GetObject*",
                "Action::s3:List*",
                "Action::s3:Abort*",
                f"Resource::<{logical_id(artifacts)}.Arn>/{VECTORS_PREFIX}*",
                f"Resource::<{logical_id(artifacts)}.Arn>/{VECTORS_PREFIX}*{REPORT_SUFFIX}",
            ],
        )
