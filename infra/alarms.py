"""Alarms to an SNS topic: the API's 5xx and latency, the loader's dead letters and errors, and the
domain's health (cluster red/yellow, free storage, JVM memory pressure).

The topic is given by context (``alarmTopicArn``, e.g. one that pages the on-call); without it the
stack makes an encrypted topic of its own and outputs its ARN to subscribe to. Every alarm also
notifies when it returns to OK.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_opensearchservice as opensearch
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import DeployConfig

# Alarm when free storage on the fullest node drops below this share of its volume.
FREE_STORAGE_SHARE = 0.25
# OpenSearch Service blocks writes at 92% JVM memory pressure; warn well before.
JVM_PRESSURE_PERCENT = 80
MIB_PER_GIB = 1024


def encrypted_topic(scope: Construct, id: str, *, display_name: str) -> sns.Topic:
    """An SNS topic encrypted with AWS's key for SNS that refuses publishes without TLS."""
    return sns.Topic(
        scope,
        id,
        display_name=display_name,
        master_key=kms.Alias.from_alias_name(scope, f"{id}Key", "alias/aws/sns"),
        enforce_ssl=True,
    )


class Alarms(Construct):
    """CloudWatch alarms of the deployment, all sent to one topic."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeployConfig,
        stage: apigw.Stage,
        search_function: lambda_.IFunction,
        loader_function: lambda_.IFunction,
        dead_letters: sqs.IQueue,
        domain: opensearch.Domain,
    ) -> None:
        super().__init__(scope, id)
        if config.alarm_topic_arn:
            self.topic: sns.ITopic = sns.Topic.from_topic_arn(self, "Topic", config.alarm_topic_arn)
        else:
            self.topic = encrypted_topic(self, "Topic", display_name="medsearch alarms")
        five = Duration.minutes(5)
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        self._alarm(
            "Api5xx",
            stage.metric_server_error(period=five, statistic="Sum"),
            threshold=5,
            description="The search API answered 5 or more 5xx in 5 minutes",
        )
        self._alarm(
            "ApiLatency",
            stage.metric_latency(period=five, statistic="p99"),
            threshold=config.alarm_latency_ms,
            evaluation_periods=3,
            description=f"The search API's p99 latency above {config.alarm_latency_ms:g} ms "
            "for 15 minutes",
        )
        self._alarm(
            "LoaderDeadLetters",
            dead_letters.metric_approximate_number_of_messages_visible(
                period=five, statistic="Maximum"
            ),
            threshold=1,
            description="Transform outputs the loader could not load are in its dead-letter queue",
        )
        self._alarm(
            "LoaderErrors",
            loader_function.metric_errors(period=five, statistic="Sum"),
            threshold=1,
            description="The index loader failed",
        )
        self._alarm(
            "SearchErrors",
            search_function.metric_errors(period=five, statistic="Sum"),
            threshold=5,
            description="The search function failed 5 or more times in 5 minutes",
        )
        minute = Duration.minutes(1)
        self._alarm(
            "ClusterRed",
            domain.metric_cluster_status_red(period=minute, statistic="Maximum"),
            threshold=1,
            description="A primary shard of the search domain is unassigned (cluster red)",
        )
        self._alarm(
            "ClusterYellow",
            domain.metric_cluster_status_yellow(period=minute, statistic="Maximum"),
            threshold=1,
            evaluation_periods=15,
            description="A replica shard of the search domain has been unassigned for 15 "
            "minutes (cluster yellow)",
        )
        self._alarm(
            "FreeStorage",
            domain.metric_free_storage_space(period=minute, statistic="Minimum"),
            threshold=config.domain_volume_gib * MIB_PER_GIB * FREE_STORAGE_SHARE,
            comparison=cloudwatch.ComparisonOperator.LESS_THAN_OR_EQUAL_TO_THRESHOLD,
            description=f"A search node has {FREE_STORAGE_SHARE:.0%} or less of its volume free",
        )
        self._alarm(
            "JvmPressure",
            domain.metric_jvm_memory_pressure(period=minute, statistic="Maximum"),
            threshold=JVM_PRESSURE_PERCENT,
            evaluation_periods=5,
            description=f"JVM memory pressure at or above {JVM_PRESSURE_PERCENT}% for 5 "
            "minutes (writes are blocked at 92%)",
        )

    def _alarm(
        self,
        id: str,
        metric: cloudwatch.IMetric,
        *,
        threshold: float,
        description: str,
        evaluation_periods: int = 1,
        comparison: cloudwatch.ComparisonOperator = (
            cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
        ),
    ) -> None:
        """One alarm on ``metric`` that notifies the topic when it fires and when it clears."""
        alarm = cloudwatch.Alarm(
            self,
            id,
            metric=metric,
            threshold=threshold,
            evaluation_periods=evaluation_periods,
            comparison_operator=comparison,
            # No data (an idle API, an empty queue) is not a fault.
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
        action = actions.SnsAction(self.topic)
        alarm.add_alarm_action(action)
        alarm.add_ok_action(action)
        self.alarms[id] = alarm
