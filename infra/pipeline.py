"""The training pipeline: a Step Functions state machine from a manifest to a live index and model.

Plan → Train (SageMaker, ``.sync``) → Gate → Unpack the ONNX model → CreateModel → Vectorize
(batch transform, ``.sync``) → wait for the S3→SQS→loader path to load the run → Publish (the
loader verifies the run index, then swaps the alias) → Promote (``models/live.json``, a new
version of the search function, its ``live`` alias) → Notify. Any failure before Publish leaves
the live alias and the live model as they were; every failure is caught and sent to the runs
topic with its cause (the gate's names both figures), then the execution fails.

Loading reuses the deployed S3→SQS→loader path (its retries, dead-letter queue and partial batch
responses) instead of a Distributed Map of loader invocations: the transform's outputs are loaded
as they appear, by the same code as a run started by hand, and the state machine only polls the
loader's ``status`` until the run is complete, failed, or past its deadline.

The fixed parts of each SageMaker request (channel, metric definitions, batch strategy, content
types, the checkpoint folder) are in the definition, where the template tests read them; the
per-run values (job names, instance types, checkpoint URI) come from the Plan step.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from aws_cdk import Aws, Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from aws_cdk import custom_resources as cr
from constructs import Construct

from infra.alarms import encrypted_topic
from infra.config import DeployConfig
from infra.nag import logical_id, suppress
from medsearch.constants import (
    CHECKPOINT_DIR,
    JSONLINES,
    LIVE_MODEL_KEY,
    METRIC_DEFINITIONS,
    MODEL_PREFIX,
    PROJECT,
    TRAIN_CHANNEL,
)

# Step Functions names SageMaker's API errors "SageMaker.<exception>"; throttling and transient
# service errors are worth retrying with back-off, a failed job is not (States.TaskFailed).
SAGEMAKER_TRANSIENT = [
    "SageMaker.AmazonSageMakerException",
    "SageMaker.ThrottlingException",
    "ThrottlingException",
]
SAGEMAKER_RETRY = {
    "ErrorEquals": SAGEMAKER_TRANSIENT,
    "IntervalSeconds": 10,
    "BackoffRate": 2.0,
    "MaxAttempts": 5,
    "MaxDelaySeconds": 300,
    "JitterStrategy": "FULL",
}
LOAD_POLL = Duration.minutes(1)
# How often a publish whose run index is still merging is asked again.
MERGE_POLL = Duration.minutes(1)
# A SnapStart version is usable once its snapshot is taken (State "Active").
VERSION_POLL = Duration.seconds(30)


def _sagemaker_arn(kind: str, name: str = "medsearch-*") -> str:
    return f"arn:{Aws.PARTITION}:sagemaker:{Aws.REGION}:{Aws.ACCOUNT_ID}:{kind}/{name}"


def _events_rule(name: str) -> str:
    return f"arn:{Aws.PARTITION}:events:{Aws.REGION}:{Aws.ACCOUNT_ID}:rule/{name}"


def training_state() -> dict[str, Any]:
    """The training task: spot or on-demand by the plan, a checkpoint URI unique to the run."""
    training = "$.plan.training"
    return {
        "Type": "Task",
        "Resource": f"arn:{Aws.PARTITION}:states:::sagemaker:createTrainingJob.sync",
        "Parameters": {
            "TrainingJobName.$": f"{training}.jobName",
            "RoleArn.$": f"{training}.roleArn",
            "AlgorithmSpecification": {
                "TrainingImage.$": f"{training}.image",
                "TrainingInputMode": "File",
                "MetricDefinitions": [dict(m) for m in METRIC_DEFINITIONS],
            },
            "HyperParameters.$": f"{training}.hyperparameters",
            "InputDataConfig": [
                {
                    "ChannelName": TRAIN_CHANNEL,
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri.$": f"{training}.trainUri",
                            "S3DataDistributionType": "FullyReplicated",
                        }
                    },
                }
            ],
            "OutputDataConfig": {"S3OutputPath.$": f"{training}.outputPath"},
            "ResourceConfig": {
                "InstanceType.$": f"{training}.instanceType",
                "InstanceCount.$": f"{training}.instanceCount",
                "VolumeSizeInGB.$": f"{training}.volumeGiB",
            },
            "StoppingCondition": {
                "MaxRuntimeInSeconds.$": f"{training}.maxRuntimeSeconds",
                "MaxWaitTimeInSeconds.$": f"{training}.maxWaitSeconds",
            },
            "EnableManagedSpotTraining": True,
            # SageMaker syncs this folder to S3 and restores it into a restarted spot job.
            "CheckpointConfig": {
                "S3Uri.$": f"{training}.checkpointUri",
                "LocalPath": CHECKPOINT_DIR,
            },
        },
        "ResultSelector": {
            "status.$": "$.TrainingJobStatus",
            "modelArtifacts.$": "$.ModelArtifacts.S3ModelArtifacts",
            "billableSeconds.$": "$.BillableTimeInSeconds",
        },
        "ResultPath": "$.training",
        "Retry": [SAGEMAKER_RETRY],
    }


def on_demand(state: dict[str, Any]) -> dict[str, Any]:
    """The same training task without managed spot (MaxWaitTimeInSeconds is spot-only)."""
    copy = json.loads(json.dumps(state))
    params = copy["Parameters"]
    params["EnableManagedSpotTraining"] = False
    del params["StoppingCondition"]["MaxWaitTimeInSeconds.$"]
    return copy


def model_state() -> dict[str, Any]:
    """CreateModel: the trained artifacts with the batch handler's inference image and code."""
    return {
        "Type": "Task",
        "Resource": f"arn:{Aws.PARTITION}:states:::sagemaker:createModel",
        "Parameters": {
            "ModelName.$": "$.plan.model.name",
            "ExecutionRoleArn.$": "$.plan.model.roleArn",
            "PrimaryContainer": {
                "Image.$": "$.plan.model.image",
                "ModelDataUrl.$": "$.training.modelArtifacts",
                "Environment.$": "$.plan.model.environment",
            },
        },
        # Keep the run's state: a CustomState's JSON cannot say null, so the ARN goes aside.
        "ResultSelector": {"arn.$": "$.ModelArn"},
        "ResultPath": "$.sagemakerModel",
        "Retry": [SAGEMAKER_RETRY],
    }


def transform_state() -> dict[str, Any]:
    """Batch transform over the run's manifest parts: one JSON line in, one vector line out."""
    transform = "$.plan.transform"
    return {
        "Type": "Task",
        "Resource": f"arn:{Aws.PARTITION}:states:::sagemaker:createTransformJob.sync",
        "Parameters": {
            "TransformJobName.$": f"{transform}.jobName",
            "ModelName.$": "$.plan.model.name",
            "BatchStrategy": "MultiRecord",
            "MaxPayloadInMB.$": f"{transform}.maxPayloadMB",
            "TransformInput": {
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri.$": f"{transform}.inputPrefix",
                    }
                },
                "ContentType": JSONLINES,
                "SplitType": "Line",
            },
            "TransformOutput": {
                "S3OutputPath.$": f"{transform}.outputPath",
                "Accept": JSONLINES,
                "AssembleWith": "Line",
            },
            "TransformResources": {
                "InstanceType.$": f"{transform}.instanceType",
                "InstanceCount.$": f"{transform}.instanceCount",
            },
        },
        "ResultSelector": {"status.$": "$.TransformJobStatus"},
        "ResultPath": "$.transform",
        "Retry": [SAGEMAKER_RETRY],
    }


class Pipeline(Construct):
    """The state machine, its role, the runs topic, and the triggers that start it."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeployConfig,
        pipeline_function: lambda_.IFunction,
        loader_function: lambda_.IFunction,
        search_function: lambda_.Function,
        search_alias: lambda_.Alias,
        sagemaker_role: iam.IRole,
        data: s3.IBucket,
        artifacts: s3.IBucket,
    ) -> None:
        super().__init__(scope, id)
        self.topic = encrypted_topic(self, "Runs", display_name="medsearch pipeline runs")
        failed = sfn.Fail(self, "RunFailed", cause_path="$.error.Cause", error_path="$.error.Error")
        notify_failure = tasks.SnsPublish(
            self,
            "NotifyFailure",
            topic=self.topic,
            subject="medsearch run failed",
            message=sfn.TaskInput.from_object(
                {
                    "execution": sfn.JsonPath.string_at("$$.Execution.Name"),
                    "status": "FAILED",
                    "error": sfn.JsonPath.string_at("$.error.Error"),
                    "cause": sfn.JsonPath.string_at("$.error.Cause"),
                }
            ),
            result_path=sfn.JsonPath.DISCARD,
        ).next(failed)

        def catch(state: sfn.TaskStateBase | sfn.CustomState) -> None:
            state.add_catch(notify_failure, errors=["States.ALL"], result_path="$.error")

        def invoke(
            name: str, function: lambda_.IFunction, payload: dict[str, Any], result_path: str
        ) -> tasks.LambdaInvoke:
            """A Lambda task: the event is ``payload``, the function's answer goes to
            ``result_path``; Lambda's transient errors are retried, anything else is caught."""
            step = tasks.LambdaInvoke(
                self,
                name,
                lambda_function=function,
                payload=sfn.TaskInput.from_object(payload),
                payload_response_only=True,
                result_path=result_path,
                retry_on_service_exceptions=True,
            )
            catch(step)
            return step

        def failure(name: str, cause: str) -> sfn.Pass:
            """A run-ending condition found by a Choice: named, with its cause, then notified."""
            state = sfn.Pass(
                self,
                name,
                parameters={"Error": name, "Cause": cause},
                result_path="$.error",
            )
            state.next(notify_failure)
            return state

        on_plan = {"plan": sfn.JsonPath.object_at("$.plan")}
        on_run = {"output_prefix": sfn.JsonPath.string_at("$.plan.outputPrefix")}
        plan = invoke(
            "Plan",
            pipeline_function,
            {
                "action": "plan",
                "input": sfn.JsonPath.entire_payload,
                "execution": sfn.JsonPath.string_at("$$.Execution.Name"),
            },
            "$.plan",
        )
        spot_training = sfn.CustomState(self, "TrainOnSpot", state_json=training_state())
        demand_training = sfn.CustomState(
            self, "TrainOnDemand", state_json=on_demand(training_state())
        )
        for state in (spot_training, demand_training):
            catch(state)
        gate = invoke("Gate", pipeline_function, {"action": "gate", **on_plan}, "$.gate")
        unpack = invoke("UnpackModel", pipeline_function, {"action": "unpack", **on_plan}, "$.onnx")
        create_model = sfn.CustomState(self, "CreateModel", state_json=model_state())
        vectorize = sfn.CustomState(self, "Vectorize", state_json=transform_state())
        for state in (create_model, vectorize):
            catch(state)

        wait_for_load = sfn.Wait(self, "WaitForLoad", time=sfn.WaitTime.duration(LOAD_POLL))
        load_status = invoke(
            "LoadStatus",
            loader_function,
            {
                "action": "status",
                **on_run,
                "records": sfn.JsonPath.number_at("$.plan.records"),
            },
            "$.load",
        )

        def read_clock(name: str) -> sfn.Pass:
            """A Pass that puts the time it was entered at ``$.clock.now`` (for deadlines)."""
            return sfn.Pass(
                self,
                name,
                parameters={"now": sfn.JsonPath.string_at("$$.State.EnteredTime")},
                result_path="$.clock",
            )

        clock = read_clock("ReadClock")
        load_failed = failure("LoadFailed", sfn.JsonPath.string_at("$.load.reason"))
        load_timed_out = failure(
            "LoadTimedOut",
            sfn.JsonPath.format(
                "run not loaded by {}: {}",
                sfn.JsonPath.string_at("$.plan.loadDeadline"),
                sfn.JsonPath.string_at("$.load.reason"),
            ),
        )
        publish = invoke(
            "Publish",
            loader_function,
            {"action": "publish", **on_run, "force": False},
            "$.published",
        )
        not_published = failure("NotPublished", "the loader did not publish the run (see its logs)")
        # A run index's force-merge can outlast one loader invocation (about 9 minutes for 185k
        # documents on a 2-core node); the merge goes on in the domain, and publishing again
        # waits for it, within the load deadline.
        wait_for_merge = sfn.Wait(self, "WaitForMerge", time=sfn.WaitTime.duration(MERGE_POLL))
        merge_clock = read_clock("ReadMergeClock")
        merge_timed_out = failure(
            "MergeTimedOut",
            sfn.JsonPath.format(
                "run index still merging at the load deadline {}",
                sfn.JsonPath.string_at("$.plan.loadDeadline"),
            ),
        )

        live_model = sfn.Pass(
            self,
            "DescribeLiveModel",
            parameters={
                "run": sfn.JsonPath.string_at("$.plan.run"),
                "model": sfn.JsonPath.string_at("$.onnx.onnx"),
                "evaluation": sfn.JsonPath.object_at("$.gate"),
                "execution": sfn.JsonPath.string_at("$$.Execution.Id"),
            },
            result_path="$.live",
        )
        write_live = tasks.CallAwsService(
            self,
            "WriteLiveModel",
            service="s3",
            action="putObject",
            parameters={
                "Bucket": artifacts.bucket_name,
                "Key": LIVE_MODEL_KEY,
                "ContentType": "application/json",
                "Body": sfn.JsonPath.json_to_string(sfn.JsonPath.object_at("$.live")),
            },
            iam_resources=[artifacts.arn_for_objects(LIVE_MODEL_KEY)],
            iam_action="s3:PutObject",
            result_path=sfn.JsonPath.DISCARD,
        )
        publish_version = tasks.CallAwsService(
            self,
            "PublishSearchVersion",
            service="lambda",
            action="publishVersion",
            parameters={
                "FunctionName": search_function.function_name,
                "Description": sfn.JsonPath.format(
                    "model of run {}", sfn.JsonPath.string_at("$.plan.run")
                ),
            },
            iam_resources=[search_function.function_arn],
            result_selector={"version": sfn.JsonPath.string_at("$.Version")},
            result_path="$.searchVersion",
        )
        wait_version = sfn.Wait(self, "WaitForSnapshot", time=sfn.WaitTime.duration(VERSION_POLL))
        version_state = tasks.CallAwsService(
            self,
            "SearchVersionState",
            service="lambda",
            action="getFunctionConfiguration",
            parameters={
                "FunctionName": search_function.function_name,
                "Qualifier": sfn.JsonPath.string_at("$.searchVersion.version"),
            },
            iam_resources=[f"{search_function.function_arn}:*"],
            result_selector={"state": sfn.JsonPath.string_at("$.State")},
            result_path="$.searchVersionState",
        )
        move_alias = tasks.CallAwsService(
            self,
            "MoveSearchAlias",
            service="lambda",
            action="updateAlias",
            parameters={
                "FunctionName": search_function.function_name,
                "Name": search_alias.alias_name,
                "FunctionVersion": sfn.JsonPath.string_at("$.searchVersion.version"),
            },
            iam_resources=[search_alias.function_arn],
            result_path=sfn.JsonPath.DISCARD,
        )
        for step in (write_live, publish_version, version_state, move_alias):
            step.add_retry(
                errors=[
                    "Lambda.TooManyRequestsException",
                    "S3.SdkClientException",
                    "Lambda.ResourceConflictException",
                ],
                interval=Duration.seconds(5),
                backoff_rate=2,
                max_attempts=5,
            )
            catch(step)
        version_failed = failure(
            "SearchVersionFailed", "the search function's new version did not become active"
        )
        notify_success = tasks.SnsPublish(
            self,
            "NotifySuccess",
            topic=self.topic,
            subject="medsearch run published",
            message=sfn.TaskInput.from_object(
                {
                    "execution": sfn.JsonPath.string_at("$$.Execution.Name"),
                    "status": "SUCCEEDED",
                    "run": sfn.JsonPath.string_at("$.plan.run"),
                    "evaluation": sfn.JsonPath.object_at("$.gate"),
                    "documents": sfn.JsonPath.number_at("$.load.documents"),
                    "model": sfn.JsonPath.string_at("$.onnx.onnx"),
                    "searchVersion": sfn.JsonPath.string_at("$.searchVersion.version"),
                }
            ),
            result_path=sfn.JsonPath.DISCARD,
        )
        done = sfn.Succeed(self, "Published")
        notify_success.add_retry(
            errors=["SNS.ThrottledException", "SNS.InternalErrorException"],
            interval=Duration.seconds(5),
            backoff_rate=2,
            max_attempts=5,
        )
        # The run is live whether or not its notification gets out; a lost one shows in the
        # execution's history, and the run still ends published.
        notify_success.add_catch(done, errors=["States.ALL"], result_path="$.notifyError")

        promote = (
            live_model.next(write_live)
            .next(publish_version)
            .next(wait_version)
            .next(version_state)
            .next(
                sfn.Choice(self, "SnapshotReady?")
                .when(
                    sfn.Condition.string_equals("$.searchVersionState.state", "Active"),
                    move_alias.next(notify_success).next(done),
                )
                .when(
                    sfn.Condition.string_equals("$.searchVersionState.state", "Failed"),
                    version_failed,
                )
                .otherwise(wait_version)
            )
        )
        load_loop = (
            wait_for_load.next(load_status)
            .next(clock)
            .next(
                sfn.Choice(self, "Loaded?")
                .when(sfn.Condition.boolean_equals("$.load.failed", True), load_failed)
                .when(
                    sfn.Condition.boolean_equals("$.load.complete", True),
                    publish.next(
                        sfn.Choice(self, "Published?")
                        .when(
                            sfn.Condition.boolean_equals("$.published.published", True),
                            promote,
                        )
                        .when(
                            sfn.Condition.boolean_equals("$.published.merging", True),
                            wait_for_merge.next(merge_clock).next(
                                sfn.Choice(self, "MergeDeadline?")
                                .when(
                                    sfn.Condition.timestamp_greater_than_json_path(
                                        "$.clock.now", "$.plan.loadDeadline"
                                    ),
                                    merge_timed_out,
                                )
                                .otherwise(publish)
                            ),
                        )
                        .otherwise(not_published)
                    ),
                )
                .when(
                    sfn.Condition.timestamp_greater_than_json_path(
                        "$.clock.now", "$.plan.loadDeadline"
                    ),
                    load_timed_out,
                )
                .otherwise(wait_for_load)
            )
        )
        after_training = gate.next(unpack).next(create_model).next(vectorize).next(load_loop)
        definition = plan.next(
            sfn.Choice(self, "Spot?")
            .when(
                sfn.Condition.boolean_equals("$.plan.training.spot", True),
                spot_training.next(after_training),
            )
            .otherwise(demand_training.next(after_training))
        )
        self.logs = logs.LogGroup(
            self,
            "Logs",
            # Step Functions asks for log groups under this prefix (resource policy size limit).
            log_group_name=f"/aws/vendedlogs/states/{Aws.STACK_NAME}-pipeline",
            retention=logs.RetentionDays.THREE_MONTHS,
            removal_policy=config.removal_policy,
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            timeout=Duration.days(3),
            tracing_enabled=True,
            # Every event, without execution data: the states' inputs and outputs stay out of
            # the logs (they name documents and figures; the runs topic carries the figures).
            logs=sfn.LogOptions(
                destination=self.logs, level=sfn.LogLevel.ALL, include_execution_data=False
            ),
            comment="medsearch: manifest → fine-tuned model → vectors → live index",
        )
        self._grant(sagemaker_role)
        suppress(
            self.state_machine.role,
            "AwsSolutions-IAM5",
            "A Lambda task may invoke its function's versions and aliases (CDK's grant: "
            "<function>:*); the search function's versions are published by the Promote step.",
            applies_to=[
                f"Resource::<{logical_id(f)}.Arn>:*"
                for f in (pipeline_function, loader_function, search_function)
            ],
        )
        self._triggers(config, data)

    def _grant(self, sagemaker_role: iam.IRole) -> None:
        """What the CustomState SageMaker tasks need (CDK's typed tasks would add the same)."""
        role = self.state_machine.role
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="TrainingJobs",
                actions=[
                    "sagemaker:CreateTrainingJob",
                    "sagemaker:DescribeTrainingJob",
                    "sagemaker:StopTrainingJob",
                    "sagemaker:AddTags",
                ],
                resources=[_sagemaker_arn("training-job")],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="TransformJobsAndModels",
                actions=[
                    "sagemaker:CreateTransformJob",
                    "sagemaker:DescribeTransformJob",
                    "sagemaker:StopTransformJob",
                    "sagemaker:CreateModel",
                    "sagemaker:AddTags",
                ],
                resources=[_sagemaker_arn("transform-job"), _sagemaker_arn("model")],
            )
        )
        # .sync waits on the job through a managed EventBridge rule of Step Functions.
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="SyncRules",
                actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                resources=[
                    _events_rule("StepFunctionsGetEventsForSageMakerTrainingJobsRule"),
                    _events_rule("StepFunctionsGetEventsForSageMakerTransformJobsRule"),
                ],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="PassTheJobRole",
                actions=["iam:PassRole"],
                resources=[sagemaker_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
            )
        )
        suppress(
            role,
            "AwsSolutions-IAM5",
            "SageMaker jobs and models are named per run (medsearch-*); the Lambda tasks may "
            "invoke their function's versions (CDK's grant), X-Ray has no resource-level "
            "permissions, and log delivery needs its account-level actions on *.",
            applies_to=[
                "Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:<AWS::AccountId>:"
                "training-job/medsearch-*",
                "Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:<AWS::AccountId>:"
                "transform-job/medsearch-*",
                "Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:<AWS::AccountId>:"
                "model/medsearch-*",
                "Resource::*",
            ],
        )

    def _start_on_deploy(self, config: DeployConfig) -> None:
        """Start an execution while `cdk deploy` runs (context startPipeline=true), without
        waiting for it: a custom resource calls StartExecution when its name changes."""
        name = deploy_execution_name(config.training_data_version)
        call = cr.AwsSdkCall(
            service="SFN",
            action="startExecution",
            parameters={
                "stateMachineArn": self.state_machine.state_machine_arn,
                "name": name,
                "input": json.dumps({}),
            },
            physical_resource_id=cr.PhysicalResourceId.of(name),
        )
        self.deploy_start = cr.AwsCustomResource(
            self,
            "StartOnDeploy",
            on_create=call,
            on_update=call,
            install_latest_aws_sdk=False,
            policy=cr.AwsCustomResourcePolicy.from_statements(
                [
                    iam.PolicyStatement(
                        actions=["states:StartExecution"],
                        resources=[self.state_machine.state_machine_arn],
                    )
                ]
            ),
        )

    def _triggers(self, config: DeployConfig, data: s3.IBucket) -> None:
        """A new manifest under data/ starts a run for it (EventBridge)."""
        rule = events.Rule(
            self,
            "NewManifest",
            description="A new manifest in the data bucket starts a pipeline run for it",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={
                    "bucket": {"name": [data.bucket_name]},
                    "object": {"key": [{"wildcard": "data/*manifest.jsonl"}]},
                },
            ),
        )
        if config.start_pipeline:
            self._start_on_deploy(config)
        rule.add_target(
            targets.SfnStateMachine(
                self.state_machine,
                input=events.RuleTargetInput.from_object(
                    {
                        "manifest": "s3://"
                        + data.bucket_name
                        + "/"
                        + events.EventField.from_path("$.detail.object.key"),
                    }
                ),
            )
        )


def image_uri(template: str) -> str:
    """A container image URI from context, with the stack's region and URL suffix filled in."""
    return template.replace("{region}", Aws.REGION).replace("{suffix}", Aws.URL_SUFFIX)


def pipeline_function(
    scope: Construct,
    *,
    config: DeployConfig,
    data: s3.IBucket,
    artifacts: s3.IBucket,
    sagemaker: Any,
) -> lambda_.Function:
    """The Lambda behind Plan, Gate and UnpackModel, with the run's defaults from context."""
    from infra.functions import lambda_role, python_function
    from medsearch.constants import PIPELINE_HANDLER, PIPELINE_PACKAGE_DIR

    role = lambda_role(scope, "PipelineRole", description="medsearch pipeline steps")
    environment = pipeline_environment(config, data, artifacts, sagemaker)
    function = python_function(
        scope,
        "PipelineFunction",
        config=config,
        role=role,
        package=PIPELINE_PACKAGE_DIR,
        handler=PIPELINE_HANDLER,
        # Plan reads the whole manifest (1.6M records are a few hundred MB of Python objects).
        memory_mib=2048,
        timeout=Duration.minutes(15),
        environment=environment,
        description="medsearch pipeline: plan a run, gate its model, unpack its ONNX folder",
        # Unpacking streams the model archive; /tmp is not used for it.
    )
    # Reads the corpus manifest; writes the run's manifest, transform input and model files.
    data.grant_read(role, "data/*")
    for prefix in ("jobs/", "vectors/", MODEL_PREFIX):
        artifacts.grant_read_write(role, f"{prefix}*")
    suppress(
        role,
        "AwsSolutions-IAM5",
        "Prefix-scoped S3 grants: the corpus (data/*, read) and the run's jobs/, vectors/ and "
        "models/ objects, whose keys are per run.",
        applies_to=[
            "Action::s3:GetBucket*",
            "Action::s3:GetObject*",
            "Action::s3:List*",
            "Action::s3:DeleteObject*",
            "Action::s3:Abort*",
            f"Resource::<{logical_id(data)}.Arn>/data/*",
            *(
                f"Resource::<{logical_id(artifacts)}.Arn>/{p}*"
                for p in ("jobs/", "vectors/", MODEL_PREFIX)
            ),
        ],
    )
    return function


def pipeline_environment(
    config: DeployConfig, data: s3.IBucket, artifacts: s3.IBucket, sagemaker: Any
) -> dict[str, str]:
    """The pipeline Lambda's settings (lambdas/pipeline/handler.py: PipelineSettings)."""
    return {
        "MEDSEARCH_ARTIFACTS_BUCKET": artifacts.bucket_name,
        "MEDSEARCH_DATA_BUCKET": data.bucket_name,
        "MEDSEARCH_DEFAULT_MANIFEST": data.s3_url_for_object(config.manifest_key),
        "MEDSEARCH_SAGEMAKER_ROLE_ARN": sagemaker.role.role_arn,
        "MEDSEARCH_TRAINING_IMAGE": image_uri(config.training_image),
        "MEDSEARCH_INFERENCE_IMAGE": image_uri(config.inference_image),
        "MEDSEARCH_TRAINING_SOURCE": sagemaker.sources["training_job"].s3_object_url,
        "MEDSEARCH_BATCH_SOURCE": sagemaker.sources["batch_vectorize"].s3_object_url,
        "MEDSEARCH_BASE_MODEL": config.base_model,
        "MEDSEARCH_TRAIN_INSTANCE_TYPE": config.train_instance_type,
        "MEDSEARCH_TRAIN_VOLUME_GIB": str(config.train_volume_gib),
        "MEDSEARCH_TRAIN_MAX_RUNTIME_SECONDS": str(config.train_max_hours * 3600),
        "MEDSEARCH_TRAIN_SPOT": "true" if config.train_spot else "false",
        "MEDSEARCH_TRANSFORM_INSTANCE_TYPE": config.transform_instance_type,
        "MEDSEARCH_TRANSFORM_INSTANCE_COUNT": str(config.transform_instance_count),
        "MEDSEARCH_MIN_RECALL_AT_10": str(config.min_recall_at_10),
        "MEDSEARCH_LOAD_TIMEOUT_MINUTES": str(config.load_timeout_hours * 60),
        # The search API serves the int8 towers by default (SnapStart's /tmp holds them only).
        "MEDSEARCH_HYPERPARAMETERS": json.dumps({"int8": "true"} if config.onnx_int8 else {}),
        "POWERTOOLS_SERVICE_NAME": f"{PROJECT}-pipeline",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }


def deploy_execution_name(version: str | None, now: datetime | None = None) -> str:
    """The execution a deploy starts: one per training-data version (StartExecution with a name
    already used and the same input returns that execution, so a redeploy starts nothing), or
    one per synth without a version."""
    if version:
        cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", version)[:60]
        return f"deploy-{cleaned}"
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"deploy-{stamp}"
