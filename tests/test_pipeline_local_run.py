"""The training pipeline's state machine, run locally from manifest to published alias.

The definition is the one the CDK app synthesizes; :mod:`tests.support.asl` interprets it, and
every Task runs the real code behind it: the pipeline Lambda (plan, gate, unpack) and the loader
Lambda (status, publish) with the environment the stack gives them, moto S3 and SageMaker for
the jobs' records, the training entry point (tiny model, one epoch) for the training job, the
four batch-transform functions over the plan's input parts for the transform job, whose outputs
reach the loader as S3 notifications through SQS do, and a fake cluster that enforces the
loader role's access policy. A failing gate and a failing load must leave the live alias and the
live model where they were.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from medsearch import storage
from medsearch.constants import (
    INDEX_LOADER_HANDLER,
    LIVE_MODEL_KEY,
    PIPELINE_HANDLER,
)
from medsearch.data.manifest import Record, read_manifest, write_manifest
from tests.infra.cfn import Cfn
from tests.support import asl
from tests.support.aws_events import LambdaContextStub, sqs_event
from tests.support.domain_access import DomainAccess
from tests.support.fake_opensearch import FakeCluster, patch_index_loader

DATA, ARTIFACTS = "data", "artifacts"
TRAIN_RECORDS, EVAL_RECORDS = 28, 20
RECORDS = TRAIN_RECORDS + EVAL_RECORDS
DOMAIN_ARN = "arn:aws:es:eu-west-1:123456789012:domain/medsearch"


def function_env(cfn: Cfn, handler: str) -> tuple[str, dict[str, str]]:
    """A function's ARN and resolved environment in the template."""
    for logical, resource in cfn.of_type("AWS::Lambda::Function").items():
        props = resource["Properties"]
        if props.get("Handler") == handler:
            return cfn.arn(logical), cfn.resolve(props["Environment"]["Variables"])
    raise AssertionError(handler)


def direct(handler: Any) -> asl.Resource:
    """A Lambda task whose Resource is the function's ARN: the parameters are the event and the
    result is the function's answer; an exception is the error Lambda reports (its type)."""

    def invoke(parameters: Any, ctx: asl.Context) -> Any:
        try:
            return json.loads(json.dumps(handler(parameters, LambdaContextStub())))
        except Exception as exc:
            raise asl.TaskFailed(type(exc).__name__, str(exc)) from exc

    return invoke


def tar_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(folder)))
    return buffer.getvalue()


class Aws:
    """The AWS side of one execution: moto records, the jobs run for real, the fake cluster."""

    def __init__(
        self,
        tmp: Path,
        monkeypatch: pytest.MonkeyPatch,
        loader: ModuleType,
        cluster: FakeCluster,
    ) -> None:
        import boto3

        self.tmp, self.monkeypatch, self.loader, self.cluster = tmp, monkeypatch, loader, cluster
        self.sagemaker = boto3.client("sagemaker", region_name="us-east-1")
        self.s3 = boto3.client("s3", region_name="us-east-1")
        self.messages: list[dict[str, Any]] = []
        self.alias_moves: list[str] = []
        self.corrupt_outputs = False

    # --- SageMaker ---------------------------------------------------------------------------

    def train(self, params: dict[str, Any], ctx: asl.Context) -> dict[str, Any]:
        """createTrainingJob.sync: the job's record in moto, the entry point run on its channel
        (SageMaker File mode), its folders tarred where SageMaker puts them."""
        from training_job.train import main

        self.sagemaker.create_training_job(**params)
        job = params["TrainingJobName"]
        work = self.tmp / job
        (channel,) = params["InputDataConfig"]
        local = storage.download_prefix(channel["DataSource"]["S3DataSource"]["S3Uri"],
                                        work / "channel")  # fmt: skip
        hps = {k: v for k, v in params["HyperParameters"].items() if not k.startswith("sagemaker_")}
        for name, folder in {"MODEL_DIR": "model", "OUTPUT_DATA_DIR": "output/data"}.items():
            self.monkeypatch.setenv(f"SM_{name}", str(work / folder))
        self.monkeypatch.setenv("SM_CHANNEL_TRAIN", str(local))
        self.monkeypatch.setenv("SM_OUTPUT_DIR", str(work / "output"))
        self.monkeypatch.setenv("SM_NUM_GPUS", "0")
        self.monkeypatch.setenv("SM_HPS", json.dumps(hps))
        checkpoints = params["CheckpointConfig"]["S3Uri"] if "CheckpointConfig" in params else ""
        assert main(["--checkpoint-dir", str(work / "checkpoints")]) == 0
        out = f"{params['OutputDataConfig']['S3OutputPath']}/{job}/output"
        storage.write_bytes(f"{out}/model.tar.gz", tar_folder(work / "model"))
        storage.write_bytes(f"{out}/output.tar.gz", tar_folder(work / "output" / "data"))
        ctx.clock.advance(600)
        return {
            "TrainingJobStatus": "Completed",
            "ModelArtifacts": {"S3ModelArtifacts": f"{out}/model.tar.gz"},
            "BillableTimeInSeconds": 600,
            "CheckpointConfig": {"S3Uri": checkpoints},
        }

    def create_model(self, params: dict[str, Any], ctx: asl.Context) -> dict[str, Any]:
        self.sagemaker.create_model(**params)
        return {"ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/{params['ModelName']}"}

    def transform(self, params: dict[str, Any], ctx: asl.Context) -> dict[str, Any]:
        """createTransformJob.sync: the four functions over every input part (one .out per part,
        as SageMaker names them), then S3's notifications of the outputs through SQS."""
        from batch_vectorize.inference import input_fn, model_fn, output_fn, predict_fn

        self.sagemaker.create_transform_job(**params)
        model = self.sagemaker.describe_model(ModelName=params["ModelName"])
        data_url = model["PrimaryContainer"]["ModelDataUrl"]
        model_dir = self.tmp / "transform-model"
        shutil.rmtree(model_dir, ignore_errors=True)
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(data_url)), mode="r:gz") as tar:
            tar.extractall(model_dir, filter="data")
        for name, value in model["PrimaryContainer"]["Environment"].items():
            self.monkeypatch.setenv(name, value)
        loaded = model_fn(str(model_dir))
        source = params["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
        bucket, prefix = storage.split_s3(source)
        output = params["TransformOutput"]["S3OutputPath"]
        keys = []
        for key in sorted(storage.object_store().list(bucket, prefix)):
            body = storage.read_bytes(f"s3://{bucket}/{key}")
            lines = output_fn(predict_fn(input_fn(body, "application/jsonlines"), loaded),
                              "application/jsonlines")  # fmt: skip
            text = lines if isinstance(lines, str) else lines.decode()
            if self.corrupt_outputs:
                # Half the records' lines lost: everything written loads, but not every record.
                text = "".join(line + "\n" for line in text.splitlines()[::2])
            name = key.rsplit("/", 1)[-1] + ".out"
            storage.write_text(f"{output.rstrip('/')}/{name}", text)
            keys.append(f"{storage.split_s3(output)[1].rstrip('/')}/{name}")
        answer = self.loader.handler(sqs_event(ARTIFACTS, [[k] for k in keys]), LambdaContextStub())
        assert answer == {"batchItemFailures": []}
        ctx.clock.advance(300)
        return {"TransformJobStatus": "Completed"}

    # --- SNS, S3, Lambda's API ---------------------------------------------------------------

    def publish_message(self, params: dict[str, Any], ctx: asl.Context) -> dict[str, Any]:
        message = params["Message"]
        self.messages.append(json.loads(message) if isinstance(message, str) else message)
        return {"MessageId": f"m-{len(self.messages)}"}

    def put_object(self, params: dict[str, Any], ctx: asl.Context) -> dict[str, Any]:
        # The template names the bucket by its logical id; moto's is ARTIFACTS.
        assert params["Bucket"].startswith("StorageArtifacts")
        self.s3.put_object(**{**params, "Bucket": ARTIFACTS})
        return {"ETag": '"x"'}

    def publish_version(self, params: dict[str, Any], ctx: asl.Context) -> dict[str, Any]:
        return {"Version": "7", "State": "Pending"}

    def version_state(self, params: dict[str, Any], ctx: asl.Context) -> dict[str, Any]:
        assert params["Qualifier"] == "7"
        return {"State": "Active"}

    def update_alias(self, params: dict[str, Any], ctx: asl.Context) -> dict[str, Any]:
        self.alias_moves.append(params["FunctionVersion"])
        return {"Name": params["Name"]}


@pytest.fixture
def world(
    small_stack: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    synth_corpus: Path,
) -> Iterator[tuple[dict[str, Any], dict[str, asl.Resource], Aws, FakeCluster]]:
    """moto S3 and SageMaker with the corpus uploaded, both Lambdas configured from the stack's
    template, the fake cluster playing the loader role's policy, and every Task's resource."""
    import boto3
    from moto import mock_aws

    from medsearch._s3 import Boto3Store

    cfn = Cfn(small_stack[1].to_json())
    _, machine = cfn.one("AWS::StepFunctions::StateMachine")
    definition = json.loads(cfn.resolve(machine["DefinitionString"]))
    _, domain = cfn.one("AWS::OpenSearchService::Domain")
    policy = cfn.resolve(domain["AccessPolicies"])["Statement"]
    loader_role = cfn.arn(cfn.logical_id_of("AWS::IAM::Role", "LoaderRole"))
    pipeline_arn, pipeline_env = function_env(cfn, PIPELINE_HANDLER)
    loader_arn, loader_env = function_env(cfn, INDEX_LOADER_HANDLER)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        for bucket in (DATA, ARTIFACTS):
            s3.create_bucket(Bucket=bucket)
        storage.set_object_store(Boto3Store(s3))
        upload(synth_corpus)
        # The stack's environment, with moto's bucket names for the template's.
        buckets = {
            cfn.logical_id_of("AWS::S3::Bucket", "StorageData"): DATA,
            cfn.logical_id_of("AWS::S3::Bucket", "StorageArtifacts"): ARTIFACTS,
        }
        for env in (pipeline_env, loader_env):
            for name, value in env.items():
                for logical, real in buckets.items():
                    value = value.replace(logical, real)
                monkeypatch.setenv(name, value)
        monkeypatch.setenv("MEDSEARCH_OPENSEARCH_AUTH", "none")
        monkeypatch.setenv("MEDSEARCH_RETRY_BACKOFF_BASE", "0")
        cluster = FakeCluster(seed=5)
        cluster.access = DomainAccess(policy, DOMAIN_ARN, loader_role)
        import lambdas.index_loader.handler as loader
        import lambdas.pipeline.handler as pipeline

        patch_index_loader(monkeypatch, cluster)
        monkeypatch.setattr(pipeline, "get_defaults", pipeline.get_defaults.__wrapped__)
        aws = Aws(tmp_path, monkeypatch, loader, cluster)
        resources = {
            pipeline_arn: direct(pipeline.handler),
            loader_arn: direct(loader.handler),
            "arn:aws:states:::sagemaker:createTrainingJob.sync": aws.train,
            "arn:aws:states:::sagemaker:createModel": aws.create_model,
            "arn:aws:states:::sagemaker:createTransformJob.sync": aws.transform,
            "arn:aws:states:::sns:publish": aws.publish_message,
            "arn:aws:states:::aws-sdk:s3:putObject": aws.put_object,
            "arn:aws:states:::aws-sdk:lambda:publishVersion": aws.publish_version,
            "arn:aws:states:::aws-sdk:lambda:getFunctionConfiguration": aws.version_state,
            "arn:aws:states:::aws-sdk:lambda:updateAlias": aws.update_alias,
        }
        try:
            yield definition, resources, aws, cluster
        finally:
            storage.set_object_store(None)


def upload(corpus: Path) -> list[Record]:
    """A small corpus in the data bucket: images, a manifest relative to them, the queries."""
    base = f"s3://{DATA}/data"
    chosen = [r for r in read_manifest(corpus) if r.split == "train"][:TRAIN_RECORDS]
    chosen += [r for r in read_manifest(corpus) if r.split != "train"][:EVAL_RECORDS]
    for record in chosen:
        name = Path(record.image).name
        storage.write_bytes(f"{base}/images/{name}", Path(record.image).read_bytes())
    # Every held-out record in one test split: a pool of 20 makes R@10 a real figure.
    relative = [
        Record(
            r.image_id,
            f"images/{Path(r.image).name}",
            r.caption,
            "train" if r.split == "train" else "test",
            r.metadata,
        )
        for r in chosen
    ]
    write_manifest(f"{base}/manifest.jsonl", relative)
    storage.write_bytes(f"{base}/queries.jsonl", (corpus.parent / "queries.jsonl").read_bytes())
    return relative


# A tiny model, one epoch: minutes of GPU in production are seconds of CPU here.
TINY = {
    "baseModel": "tiny",
    "hyperparameters": {"epochs": "1", "batch_size": "16", "eval_each_epoch": "false"},
    "training": {"spot": False},
}


def live_alias(cluster: FakeCluster) -> set[str]:
    return cluster.aliases.get("medsearch", set())


def first_run_live(world: Any) -> tuple[set[str], str]:
    """Run the pipeline once to success; return the live alias targets and live model after it."""
    definition, resources, _, cluster = world
    first = asl.run(definition, TINY, resources, execution_name="retrain-1")
    assert first.status == "SUCCEEDED", first.cause
    return set(live_alias(cluster)), storage.read_text(f"s3://{ARTIFACTS}/{LIVE_MODEL_KEY}")


def test_a_run_goes_from_the_manifest_to_the_live_alias_and_model(world: Any) -> None:
    definition, resources, aws, cluster = world
    # The run index's merge takes longer than two loader invocations wait (240 s each of the
    # stub's 300 s): the publish answers "merging", and the pipeline asks again
    cluster.merge_seconds = 500.0
    execution = asl.run(definition, TINY, resources, execution_name="retrain-1")
    assert execution.status == "SUCCEEDED", (execution.error, execution.cause)
    run = execution.output["plan"]["run"]
    assert execution.states().count("WaitForMerge") == 2
    assert execution.states().count("Publish") == 3 and cluster.merge_seconds == 20.0
    # The run index holds every manifest record, and the alias moved to it.
    assert live_alias(cluster) == {f"medsearch-{run}"}
    assert len(cluster.documents("medsearch")) == RECORDS
    # The live model names the run's ONNX folder, which holds the int8 towers the API serves.
    live = json.loads(storage.read_text(f"s3://{ARTIFACTS}/{LIVE_MODEL_KEY}"))
    assert live["run"] == run and live["model"] == f"s3://{ARTIFACTS}/models/{run}/onnx"
    onnx = set(storage.object_store().list(ARTIFACTS, f"models/{run}/onnx/"))
    assert any(key.endswith("text.int8.onnx") for key in onnx)
    # A new search version, snapshotted with that model, took the live alias.
    assert aws.alias_moves == ["7"]
    (message,) = aws.messages
    assert message["status"] == "SUCCEEDED" and message["run"] == run
    assert message["documents"] == RECORDS
    # The states went in the order the definition promises, the load polled until complete.
    order = execution.states()
    assert order.index("Gate") < order.index("Vectorize") < order.index("Publish")
    assert order.index("Publish") < order.index("WriteLiveModel") < order.index("MoveSearchAlias")
    assert not execution.entered("TrainOnSpot") and execution.entered("TrainOnDemand")


def test_a_failing_gate_leaves_the_live_alias_and_model_untouched(world: Any) -> None:
    definition, resources, aws, cluster = world
    before_alias, before_model = first_run_live(world)
    # When a second run must beat an impossible bar
    # (an untrained model: its R@10 over the evaluation images is that of chance)
    untrained = {**TINY["hyperparameters"], "epochs": "0"}
    strict = {**TINY, "hyperparameters": untrained, "gate": {"minRecallAt10": 0.99}}
    second = asl.run(definition, strict, resources, execution_name="retrain-2")
    # Then it fails at the gate, with both figures in the cause
    assert second.status == "FAILED" and second.error == "GateFailed"
    assert "R@10" in (second.cause or "") and "0.99" in (second.cause or "")
    assert not second.entered("Vectorize") and not second.entered("Publish")
    assert live_alias(cluster) == before_alias
    assert storage.read_text(f"s3://{ARTIFACTS}/{LIVE_MODEL_KEY}") == before_model
    assert aws.alias_moves == ["7"]  # only the first run's
    assert aws.messages[-1]["status"] == "FAILED"
    assert aws.messages[-1]["error"] == "GateFailed"


def test_a_failing_load_leaves_the_live_alias_and_model_untouched(world: Any) -> None:
    definition, resources, aws, cluster = world
    before_alias, before_model = first_run_live(world)
    # When the second run's transform writes lines the loader cannot use
    aws.corrupt_outputs = True
    second = asl.run(definition, TINY, resources, execution_name="retrain-2")
    # Then the run fails without publishing
    assert second.status == "FAILED", second.states()
    assert second.error in {"LoadFailed", "LoadTimedOut", "SearchIndexError"}
    assert not second.entered("WriteLiveModel") and not second.entered("MoveSearchAlias")
    assert live_alias(cluster) == before_alias
    assert storage.read_text(f"s3://{ARTIFACTS}/{LIVE_MODEL_KEY}") == before_model
    assert aws.messages[-1]["status"] == "FAILED"
