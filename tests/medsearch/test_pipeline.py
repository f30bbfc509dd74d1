"""The pipeline steps' core over moto S3: the plan's contract, the gate, the report and the unpack.

The plan's shape is what the state machine passes to SageMaker by JSONPath, so it is checked key
by key; archives are real ``tar.gz`` files built here and read as streams.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from medsearch import storage
from medsearch._s3 import Boto3Store
from medsearch.errors import ConfigError, InvalidInputError, MedsearchError
from medsearch.pipeline import (
    GateFailed,
    PipelineDefaults,
    check_gate,
    live_model_url,
    plan_run,
    read_live_model,
    read_plan,
    read_report,
    run_id_for,
    unpack_model,
    write_evaluation,
)

ARTIFACTS = "artifacts"
DATA = "corpus"
MANIFEST = f"s3://{DATA}/data/manifest.jsonl"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
CAPTIONS = [f"axial CT chest nodule case {i}" for i in range(7)]


def make_defaults(**overrides: Any) -> PipelineDefaults:
    values: dict[str, Any] = {
        "artifacts_bucket": ARTIFACTS,
        "data_bucket": DATA,
        "role_arn": "arn:aws:iam::123456789012:role/medsearch-jobs",
        "training_image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5",
        "inference_image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.5",
        "training_source": f"s3://{ARTIFACTS}/sources/training_job.tar.gz",
        "batch_source": f"s3://{ARTIFACTS}/sources/batch_vectorize.tar.gz",
        "region": "us-east-1",
    }
    values.update(overrides)
    return PipelineDefaults(**values)


def write_corpus(n: int = 7, *, queries: bool = True) -> None:
    """A manifest in the data bucket: relative image paths and one absolute s3:// image."""
    lines = [
        {"image_id": f"im{i}", "image": f"images/im{i}.png", "caption": CAPTIONS[i],
         "split": "test" if i % 3 == 0 else "train", "modality": "CT"}
        for i in range(n)
    ]  # fmt: skip
    lines[1]["image"] = f"s3://{DATA}/elsewhere/im1.png"
    storage.write_text(MANIFEST, "".join(json.dumps(line) + "\n" for line in lines))
    if queries:
        storage.write_text(
            f"s3://{DATA}/data/queries.jsonl", json.dumps({"query": "q", "relevant": ["im0"]})
        )


@pytest.fixture
def buckets(s3_bucket: str) -> str:
    """The data bucket (``corpus``, moto) and an ``artifacts`` bucket beside it."""
    import boto3

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=ARTIFACTS)
    return s3_bucket


def tar_gz(members: dict[str, bytes | None], *, links: dict[str, str] | None = None) -> bytes:
    """A gzipped tar of ``name -> bytes`` files (``None``: a folder) and symbolic links."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return buffer.getvalue()


class WatchedStore:
    """The moto store, recording each call; whole-object reads of archives are refused, so a
    test proves they were streamed."""

    def __init__(self, inner: Boto3Store) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    def get(self, bucket: str, key: str) -> bytes:
        self.calls.append(("get", key))
        if key.endswith(".tar.gz"):
            raise AssertionError(f"{key} read whole")
        return self.inner.get(bucket, key)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.calls.append(("put", key))
        self.inner.put(bucket, key, data)

    def list(self, bucket: str, prefix: str) -> Iterator[str]:
        return self.inner.list(bucket, prefix)

    def open(self, bucket: str, key: str) -> Any:
        self.calls.append(("open", key))
        return self.inner.open(bucket, key)

    def put_stream(self, bucket: str, key: str, stream: Any) -> None:
        self.calls.append(("put_stream", key))
        self.inner.put_stream(bucket, key, stream)


@pytest.fixture
def watched(buckets: str) -> WatchedStore:
    store = WatchedStore(storage.object_store())  # type: ignore[arg-type]
    storage.set_object_store(store)  # s3_bucket resets it afterwards
    return store


def keys(bucket: str, prefix: str = "") -> list[str]:
    return sorted(storage.object_store().list(bucket, prefix))


# --- plan: the contract ---------------------------------------------------------------------------


def test_given_defaults_when_planned_then_the_output_is_exactly_the_contract(buckets: str) -> None:
    write_corpus()
    plan = plan_run({}, make_defaults(), execution_name="nightly-0301", now=NOW)
    run = "nightly-0301"
    jobs, vectors = f"s3://{ARTIFACTS}/jobs/{run}", f"s3://{ARTIFACTS}/vectors/{run}"
    train_job = f"medsearch-train-{run}"
    assert plan == {
        "run": run,
        "manifest": MANIFEST,
        "runManifest": f"{vectors}/manifest.jsonl",
        "records": 7,
        "training": {
            "jobName": train_job,
            "roleArn": "arn:aws:iam::123456789012:role/medsearch-jobs",
            "image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5",
            "instanceType": "ml.g5.xlarge",
            "instanceCount": 1,
            "volumeGiB": 50,
            "maxRuntimeSeconds": 86400,
            "spot": True,
            "maxWaitSeconds": 172800,
            "checkpointUri": f"{jobs}/checkpoints/",
            "outputPath": jobs,
            "trainUri": f"{vectors}/",
            "hyperparameters": {
                "base": "openai/clip-vit-base-patch32",
                "sagemaker_program": "train.py",
                "sagemaker_submit_directory": f"s3://{ARTIFACTS}/sources/training_job.tar.gz",
                "sagemaker_region": "us-east-1",
            },
        },
        "modelDataUrl": f"{jobs}/{train_job}/output/model.tar.gz",
        "reportUrl": f"{jobs}/{train_job}/output/output.tar.gz",
        "model": {
            "name": f"medsearch-model-{run}",
            "image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.5",
            "roleArn": "arn:aws:iam::123456789012:role/medsearch-jobs",
            "environment": {
                "SAGEMAKER_PROGRAM": "inference.py",
                "SAGEMAKER_SUBMIT_DIRECTORY": f"s3://{ARTIFACTS}/sources/batch_vectorize.tar.gz",
                "SAGEMAKER_REGION": "us-east-1",
                "MEDSEARCH_ENCODER": "auto",
                "MEDSEARCH_BATCH_SIZE": "32",
                "MEDSEARCH_IMAGE_BASE": f"s3://{DATA}/data",
            },
        },
        "transform": {
            "jobName": f"medsearch-vectorize-{run}",
            "inputPrefix": f"{jobs}/transform-input/",
            "outputPath": f"{vectors}/",
            "instanceType": "ml.g4dn.xlarge",
            "instanceCount": 1,
            "maxPayloadMB": 6,
        },
        "gate": {"minRecallAt10": 0.0},
        "modelPrefix": f"s3://{ARTIFACTS}/models/{run}/",
        "outputPrefix": vectors,
        # the plan time + the training's limit with spot (48 h) + the load timeout (2 h)
        "loadDeadline": "2025-03-03T14:00:00Z",
    }
    assert isinstance(plan["gate"]["minRecallAt10"], float)
    assert all(isinstance(v, str) for v in plan["training"]["hyperparameters"].values())
    assert all(isinstance(v, str) for v in plan["model"]["environment"].values())
    for name in (train_job, plan["model"]["name"], plan["transform"]["jobName"]):
        assert JOB_NAME.match(name) and len(name) <= 63


def test_given_a_plan_then_the_run_manifest_and_transform_parts_are_written(
    buckets: str,
) -> None:
    write_corpus()
    plan = plan_run(
        {"transform": {"recordsPerPart": 3}}, make_defaults(), execution_name="r1", now=NOW
    )
    # The run manifest: every record, images absolute (the loader and the transform read it)
    lines = [json.loads(line) for line in storage.read_text(plan["runManifest"]).splitlines()]
    assert [line["image_id"] for line in lines] == [f"im{i}" for i in range(7)]
    assert lines[0]["image"] == f"s3://{DATA}/data/images/im0.png"
    assert lines[1]["image"] == f"s3://{DATA}/elsewhere/im1.png"
    assert lines[0]["caption"] == CAPTIONS[0] and lines[0]["modality"] == "CT"
    # The transform input: parts of 3 records, one {image_id, image} line per record
    assert keys(ARTIFACTS, "jobs/r1/transform-input/") == [
        f"jobs/r1/transform-input/part-0000{i}.jsonl" for i in range(3)
    ]
    parts = [
        [json.loads(line) for line in storage.read_text(f"{plan['transform']['inputPrefix']}{n}")
         .splitlines()]
        for n in ("part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl")
    ]  # fmt: skip
    assert [len(part) for part in parts] == [3, 3, 1]
    assert parts[0][0] == {"image_id": "im0", "image": f"s3://{DATA}/data/images/im0.png"}
    # The query set travels with the run manifest (the training job evaluates on it)
    assert keys(ARTIFACTS, "vectors/r1/") == [
        "vectors/r1/manifest.jsonl",
        "vectors/r1/queries.jsonl",
    ]
    assert plan["training"]["trainUri"] == f"s3://{ARTIFACTS}/vectors/r1/"


def test_given_an_80_character_execution_name_then_run_and_job_names_fit_sagemaker(
    buckets: str,
) -> None:
    write_corpus(queries=False)
    name = "Nightly_Retrain-2025-03-01T12:00:00.000Z-" + "a" * 39
    assert len(name) == 80
    plan = plan_run({}, make_defaults(), execution_name=name, now=NOW)
    run = plan["run"]
    assert len(run) <= 40 and re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", run)
    names = [plan["training"]["jobName"], plan["model"]["name"], plan["transform"]["jobName"]]
    assert [len(n) <= 63 and bool(JOB_NAME.match(n)) for n in names] == [True] * 3
    assert names[2] == f"medsearch-vectorize-{run}"
    # Another execution with the same first 40 characters is another run
    other = run_id_for(name[:-1] + "b")
    assert other != run and other[:31] == run[:31]


def test_checkpoints_are_unique_per_run_and_the_same_for_a_retried_attempt(buckets: str) -> None:
    write_corpus(queries=False)
    defaults = make_defaults()
    first = plan_run({}, defaults, execution_name="exec-A", now=NOW)
    retried = plan_run({}, defaults, execution_name="exec-A", now=NOW)
    other = plan_run({}, defaults, execution_name="exec-a", now=NOW)
    assert retried["training"]["checkpointUri"] == first["training"]["checkpointUri"]
    assert retried["run"] == first["run"]
    # Case folds into the run id (index names are lowercase), so the hash tells them apart
    assert other["run"] == "exec-a" and first["run"].startswith("exec-a-")
    assert other["training"]["checkpointUri"] != first["training"]["checkpointUri"]
    assert first["training"]["checkpointUri"].startswith(f"s3://{ARTIFACTS}/jobs/")


def test_given_input_then_it_overrides_the_defaults_field_by_field(buckets: str) -> None:
    write_corpus(queries=False)
    storage.write_text(f"s3://{DATA}/other/manifest.jsonl", storage.read_text(MANIFEST))
    defaults = make_defaults(
        hyperparameters={"epochs": 5, "lr": 5e-5}, min_recall_at_10=0.3, spot=True
    )
    request = {
        "manifest": f"s3://{DATA}/other/manifest.jsonl",
        "baseModel": "tiny",
        "hyperparameters": {"lr": 1e-4, "freeze-vision": True, "eval_split": "test"},
        "training": {"instanceType": "ml.g6.2xlarge", "spot": False, "maxRuntimeSeconds": 3600},
        "transform": {"instanceCount": 2, "maxPayloadMB": 12, "encoder": "onnx", "batchSize": 8},
        "gate": {"minRecallAt10": 0.5},
        "loadTimeoutMinutes": 30,
    }
    plan = plan_run(request, defaults, execution_name="r2", now=NOW)
    training = plan["training"]
    assert training["hyperparameters"] == {
        "epochs": "5",
        "lr": "0.0001",
        "freeze_vision": "true",
        "eval_split": "test",
        "base": "tiny",
        "sagemaker_program": "train.py",
        "sagemaker_submit_directory": f"s3://{ARTIFACTS}/sources/training_job.tar.gz",
        "sagemaker_region": "us-east-1",
    }
    assert (training["instanceType"], training["spot"], training["maxRuntimeSeconds"]) == (
        "ml.g6.2xlarge",
        False,
        3600,
    )
    assert training["volumeGiB"] == 50 and training["maxWaitSeconds"] == 172800
    assert plan["manifest"] == f"s3://{DATA}/other/manifest.jsonl"
    assert plan["model"]["environment"]["MEDSEARCH_IMAGE_BASE"] == f"s3://{DATA}/other"
    assert plan["model"]["environment"]["MEDSEARCH_ENCODER"] == "onnx"
    assert plan["model"]["environment"]["MEDSEARCH_BATCH_SIZE"] == "8"
    assert plan["transform"]["instanceCount"] == 2 and plan["transform"]["maxPayloadMB"] == 12
    assert plan["transform"]["instanceType"] == "ml.g4dn.xlarge"
    assert plan["gate"] == {"minRecallAt10": 0.5}
    # Without spot the deadline counts the runtime: 1 h + 30 min
    assert plan["loadDeadline"] == "2025-03-01T13:30:00Z"
    # A threshold of 0 in the input is a value, not "unset"
    zero = plan_run({"gate": {"minRecallAt10": 0}}, defaults, execution_name="r3", now=NOW)
    assert zero["gate"] == {"minRecallAt10": 0.0}


def test_given_a_longer_runtime_than_the_default_wait_then_the_wait_covers_it(
    buckets: str,
) -> None:
    write_corpus(queries=False)
    defaults = make_defaults(max_runtime_seconds=3600, max_wait_seconds=7200)
    plan = plan_run({"training": {"maxRuntimeSeconds": 10800}}, defaults, execution_name="r")
    assert plan["training"]["maxWaitSeconds"] == 10800 >= plan["training"]["maxRuntimeSeconds"]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"manifests": MANIFEST}, "input.manifests: Extra inputs are not permitted"),
        ({"training": {"gpus": 2}}, "input.training.gpus: Extra inputs are not permitted"),
        ({"training": {"instanceCount": "1"}}, "input.training.instanceCount: Input should be"),
        ({"training": {"instanceCount": 2}}, "input.training.instanceCount"),
        ({"training": {"spot": "yes"}}, "input.training.spot"),
        ({"training": {"volumeGiB": True}}, "input.training.volumeGiB"),
        ({"training": {"maxRuntimeSeconds": 10**8}}, "input.training.maxRuntimeSeconds"),
        ({"training": {"instanceType": "p3.2xlarge"}}, "input.training.instanceType"),
        (
            {"training": {"maxRuntimeSeconds": 7200, "maxWaitSeconds": 3600}},
            "maxWaitSeconds: 3600 is less than maxRuntimeSeconds 7200",
        ),
        ({"transform": {"maxPayloadMB": 101}}, "input.transform.maxPayloadMB"),
        ({"transform": {"recordsPerPart": 0}}, "input.transform.recordsPerPart"),
        ({"transform": {"encoder": "gpu"}}, "input.transform.encoder"),
        ({"gate": {"minRecallAt10": 1.5}}, "input.gate.minRecallAt10"),
        ({"gate": {"minRecallAt10": "0.5"}}, "input.gate.minRecallAt10"),
        ({"loadTimeoutMinutes": 0}, "input.loadTimeoutMinutes"),
        ({"manifest": "/data/manifest.jsonl"}, "must be an s3:// URI"),
        ({"manifest": "https://x/manifest.jsonl"}, "must be an s3:// URI"),
        ({"manifest": f"s3://{DATA}/data/"}, "not a prefix"),
        ({"manifest": "s3://someone-else/manifest.jsonl"}, "not in the data bucket"),
        ({"manifest": f"s3://{DATA}/data/missing.jsonl"}, "cannot read"),
        ({"hyperparameters": {"epoch": 3}}, "hyperparameters.epoch: unknown"),
        ({"hyperparameters": {"out": "/tmp"}}, "hyperparameters.out: not allowed"),
        ({"hyperparameters": {"base": "tiny"}}, "use baseModel"),
        ({"hyperparameters": {"sagemaker_program": "x.py"}}, "sagemaker_program: unknown"),
        ({"hyperparameters": {"seed": [1]}}, "input.hyperparameters.seed"),
        ({"hyperparameters": {"device": "x" * 2501}}, "longer than 2500"),
        ({"hyperparameters": {"lr": 1, "lr_": 2, "l-r": 3}}, "unknown"),
        ({"baseModel": "two words"}, "input.baseModel"),
        ("not an object", "input: must be a JSON object"),
    ],
)
def test_given_a_bad_input_then_plan_raises_one_line(
    buckets: str, request_: Any, message: str
) -> None:
    write_corpus(queries=False)
    with pytest.raises(MedsearchError) as raised:
        plan_run(request_, make_defaults(), execution_name="r")
    text = str(raised.value)
    assert message in text and "\n" not in text
    assert isinstance(raised.value, InvalidInputError) or "cannot read" in message
    # Nothing is written for a refused input
    assert keys(ARTIFACTS) == []


def test_given_a_bad_execution_name_then_plan_raises(buckets: str) -> None:
    write_corpus(queries=False)
    with pytest.raises(InvalidInputError, match="execution"):
        plan_run({}, make_defaults(), execution_name="  ")
    assert run_id_for("___") and re.fullmatch(r"[0-9a-f]{8}", run_id_for("___"))


def test_given_a_manifest_the_transform_cannot_read_then_plan_refuses_it(buckets: str) -> None:
    storage.write_text(MANIFEST, json.dumps({"image_id": "a", "image": "/local/a.png"}) + "\n")
    with pytest.raises(InvalidInputError, match=r"image of a is '/local/a\.png', not in S3"):
        plan_run({}, make_defaults(), execution_name="r")
    storage.write_text(MANIFEST, "\n")
    with pytest.raises(InvalidInputError, match="has no records"):
        plan_run({}, make_defaults(), execution_name="r")


def test_given_parts_of_an_earlier_plan_this_one_would_not_write_then_plan_refuses(
    buckets: str,
) -> None:
    write_corpus(queries=False)
    defaults = make_defaults()
    plan_run({"transform": {"recordsPerPart": 2}}, defaults, execution_name="r")  # 4 parts
    # A retried attempt of the same run with the same manifest rewrites the same parts
    plan_run({"transform": {"recordsPerPart": 2}}, defaults, execution_name="r")
    with pytest.raises(InvalidInputError, match=r"part-00001.jsonl.*start a new execution"):
        plan_run({"transform": {"recordsPerPart": 5000}}, defaults, execution_name="r")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"role_arn": "medsearch-jobs"}, "role_arn"),
        ({"training_source": "s3://a/training_job.zip"}, "training_source"),
        ({"batch_source": "/build/batch.tar.gz"}, "batch_source"),
        ({"artifacts_bucket": "Not_A_Bucket"}, "artifacts_bucket"),
        ({"training_image": ""}, "training_image"),
        ({"manifest_url": "s3://elsewhere/m.jsonl"}, "manifest_url"),
        ({"records_per_part": 0}, "defaults.transform.recordsPerPart"),
        ({"max_runtime_seconds": 7200, "max_wait_seconds": 3600}, "max_wait_seconds 3600 is less"),
        ({"hyperparameters": {"epochz": 1}}, "defaults: hyperparameters.epochz: unknown"),
        ({"transform_encoder": "cuda"}, "defaults.transform.encoder"),
    ],
)
def test_given_bad_defaults_then_they_are_a_config_error(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        make_defaults(**overrides)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_the_default_manifest_is_the_data_buckets_corpus() -> None:
    assert make_defaults().default_manifest == f"s3://{DATA}/data/manifest.jsonl"
    custom = make_defaults(manifest_url=f"s3://{DATA}/v2/manifest.jsonl")
    assert custom.default_manifest == f"s3://{DATA}/v2/manifest.jsonl"


def test_a_plan_reads_back_for_the_later_steps_and_a_foreign_one_does_not(buckets: str) -> None:
    write_corpus(queries=False)
    plan = plan_run({"gate": {"minRecallAt10": 0.25}}, make_defaults(), execution_name="r")
    run = read_plan(plan, ARTIFACTS)
    assert (run.run, run.report_url, run.model_data_url) == (
        "r",
        plan["reportUrl"],
        plan["modelDataUrl"],
    )
    assert run.model_prefix == f"s3://{ARTIFACTS}/models/r/" and run.min_recall_at_10 == 0.25
    for field, value in [
        ("modelPrefix", f"s3://{ARTIFACTS}/models/other/"),
        ("modelDataUrl", "s3://elsewhere/jobs/r/model.tar.gz"),
        ("reportUrl", f"s3://{ARTIFACTS}/jobs/r/../x/output.tar.gz"),
        ("run", "R/../x"),
        ("gate", {}),
    ]:
        with pytest.raises(InvalidInputError, match=f"plan.{field}"):
            read_plan({**plan, field: value}, ARTIFACTS)
    with pytest.raises(InvalidInputError, match="plan"):
        read_plan(None, ARTIFACTS)


# --- gate ---------------------------------------------------------------------------------------


def report(recall: float) -> dict[str, Any]:
    return {"model": "m", "text_to_image": {"r@1": 0.1, "r@10": recall}, "image_to_text": {}}


def test_given_a_model_over_the_threshold_and_no_live_model_then_it_passes() -> None:
    assert check_gate(report(0.5), None, min_recall_at_10=0.4) == {
        "passed": True,
        "recallAt10": 0.5,
        "liveRecallAt10": None,
    }


def test_given_a_model_below_the_threshold_then_the_gate_fails_naming_both() -> None:
    with pytest.raises(GateFailed, match=r"^text→image R@10 0.412 is below the minimum 0.5$"):
        check_gate(report(0.412), None, min_recall_at_10=0.5)


def test_given_a_better_live_model_then_the_gate_fails_naming_both_figures() -> None:
    live = {"run": "old", "model": "s3://a/models/old/onnx", "evaluation": report(0.455)}
    with pytest.raises(
        GateFailed, match=r"^text→image R@10 0.412 is below the live model's 0.455$"
    ):
        check_gate(report(0.412), live, min_recall_at_10=0.0)
    # As good as the live model passes (a rerun of the live run, too)
    assert check_gate(report(0.455), live, min_recall_at_10=0.0)["liveRecallAt10"] == 0.455
    assert check_gate(report(0.6), live, min_recall_at_10=0.5)["recallAt10"] == 0.6


def test_given_a_live_record_holding_the_gate_answer_then_its_figure_counts() -> None:
    # The state machine may keep the gate's answer that passed the live model as its evaluation
    live = {"run": "old", "evaluation": {"passed": True, "recallAt10": 0.7, "liveRecallAt10": None}}
    with pytest.raises(GateFailed, match=r"below the live model's 0\.7$"):
        check_gate(report(0.6), live, min_recall_at_10=0.0)


def test_given_a_report_or_live_record_without_the_figure_then_the_gate_says_so() -> None:
    with pytest.raises(InvalidInputError, match="evaluation report has no text→image R@10"):
        check_gate({"text_to_image": {}}, None, min_recall_at_10=0.0)
    with pytest.raises(InvalidInputError, match="live model"):
        check_gate(report(0.5), {"run": "old"}, min_recall_at_10=0.0)


def test_the_live_model_is_read_from_models_live_json_and_missing_means_none(
    buckets: str,
) -> None:
    assert read_live_model(ARTIFACTS) is None
    live = {"run": "old", "model": f"s3://{ARTIFACTS}/models/old/onnx", "evaluation": report(0.4)}
    storage.write_text(f"s3://{ARTIFACTS}/models/live.json", json.dumps(live))
    assert live_model_url(ARTIFACTS) == f"s3://{ARTIFACTS}/models/live.json"
    assert read_live_model(ARTIFACTS) == live
    storage.write_text(f"s3://{ARTIFACTS}/models/live.json", "{broken")
    with pytest.raises(InvalidInputError, match="not JSON"):
        read_live_model(ARTIFACTS)


# --- the report and the model, out of real archives ---------------------------------------------


OUTPUT_TAR = f"s3://{ARTIFACTS}/jobs/r/medsearch-train-r/output/output.tar.gz"
MODEL_TAR = f"s3://{ARTIFACTS}/jobs/r/medsearch-train-r/output/model.tar.gz"
PREFIX = f"s3://{ARTIFACTS}/models/r/"


def test_given_output_tar_gz_then_the_report_is_streamed_out_of_it(watched: WatchedStore) -> None:
    evaluation = report(0.42)
    archive = tar_gz(
        {"history.jsonl": b"{}\n" * 1000, "./evaluation.json": json.dumps(evaluation).encode()}
    )
    storage.write_bytes(OUTPUT_TAR, archive)
    assert read_report(OUTPUT_TAR) == evaluation
    assert ("open", OUTPUT_TAR.split("/", 3)[3]) in watched.calls
    # Kept beside the model
    url = write_evaluation(evaluation, PREFIX)
    assert url == f"{PREFIX}evaluation.json"
    assert json.loads(storage.read_text(url)) == evaluation


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (tar_gz({"data/evaluation.json": b"{}", "other.json": b"{}"}), "has no evaluation.json"),
        (tar_gz({"evaluation.json": b"[1, 2]"}), "is not a JSON object"),
        (b"not a gzip file", "is not a readable tar.gz"),
    ],
)
def test_given_an_output_archive_without_a_usable_report_then_read_report_fails(
    buckets: str, content: bytes, message: str
) -> None:
    storage.write_bytes(OUTPUT_TAR, content)
    with pytest.raises(InvalidInputError, match=message):
        read_report(OUTPUT_TAR)


def model_members(vision: bytes) -> dict[str, bytes | None]:
    return {
        "config.json": b"{}",
        "model.safetensors": b"weights" * 100,
        "onnx": None,
        "onnx/onnx_manifest.json": b'{"model_id": "m"}',
        "onnx/vision.onnx": vision,
        "onnx/int8": None,
        "onnx/int8/text.onnx": b"text tower",
    }


def test_given_model_tar_gz_then_only_the_onnx_folder_is_uploaded_as_streams(
    watched: WatchedStore,
) -> None:
    import os

    vision = os.urandom(9 * 1024 * 1024)  # over one upload part: a multipart upload
    storage.write_bytes(MODEL_TAR, tar_gz(model_members(vision)))
    written = unpack_model(MODEL_TAR, PREFIX)
    assert written == [
        f"{PREFIX}onnx/onnx_manifest.json",
        f"{PREFIX}onnx/vision.onnx",
        f"{PREFIX}onnx/int8/text.onnx",
    ]
    assert keys(ARTIFACTS, "models/") == [
        "models/r/onnx/int8/text.onnx",
        "models/r/onnx/onnx_manifest.json",
        "models/r/onnx/vision.onnx",
    ]
    assert storage.read_bytes(f"{PREFIX}onnx/vision.onnx") == vision
    assert storage.read_bytes(f"{PREFIX}onnx/int8/text.onnx") == b"text tower"
    # Streamed both ways: the archive opened as a stream, each file written as one
    model_key = MODEL_TAR.split("/", 3)[3]
    assert ("open", model_key) in watched.calls
    assert [key for kind, key in watched.calls if kind == "put" and key != model_key] == []
    assert [key for kind, key in watched.calls if kind == "put_stream"] == [
        "models/r/onnx/onnx_manifest.json",
        "models/r/onnx/vision.onnx",
        "models/r/onnx/int8/text.onnx",
    ]


@pytest.mark.parametrize(
    ("members", "links", "message"),
    [
        ({"config.json": b"{}", "model.safetensors": b"w"}, None, "has no onnx/ folder"),
        ({"onnx/vision.onnx": b"v"}, None, "has no onnx_manifest.json"),
        ({"onnx/onnx_manifest.json": b"{}", "onnx/../../evil.onnx": b"x"}, None, "escapes"),
        ({"/onnx/vision.onnx": b"x"}, None, "absolute"),
        ({"onnx/onnx_manifest.json": b"{}"}, {"onnx/vision.onnx": "/etc/passwd"}, "link"),
    ],
)
def test_given_a_model_archive_that_is_no_export_or_escapes_then_unpack_refuses_it(
    buckets: str, members: dict[str, bytes | None], links: dict[str, str] | None, message: str
) -> None:
    storage.write_bytes(MODEL_TAR, tar_gz(members, links=links))
    with pytest.raises(InvalidInputError, match=message):
        unpack_model(MODEL_TAR, PREFIX)
    # Nothing lands outside the run's model folder
    assert [k for k in keys(ARTIFACTS) if not k.startswith(("models/r/onnx/", "jobs/"))] == []


def test_given_a_local_folder_then_streams_read_and_write_files_too(tmp_path: Any) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(tar_gz({"onnx/onnx_manifest.json": b"{}", "onnx/a.onnx": b"a"}))
    written = unpack_model(str(archive), f"{tmp_path}/out/")
    assert written == [f"{tmp_path}/out/onnx/onnx_manifest.json", f"{tmp_path}/out/onnx/a.onnx"]
    assert (tmp_path / "out" / "onnx" / "a.onnx").read_bytes() == b"a"


class WholeObjectStore:
    """A store with only get/put/list (no streaming methods)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def get(self, bucket: str, key: str) -> bytes:
        return self.objects[key]

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.objects[key] = data

    def list(self, bucket: str, prefix: str) -> Iterator[str]:
        return iter([k for k in self.objects if k.startswith(prefix)])


def test_given_a_store_without_streams_then_open_read_and_write_stream_fall_back() -> None:
    store = WholeObjectStore()
    storage.set_object_store(store)
    try:
        storage.write_stream("s3://b/k", io.BytesIO(b"abc"))
        with storage.open_read("s3://b/k") as stream:
            assert stream.read() == b"abc"
    finally:
        storage.set_object_store(None)
    assert store.objects == {"k": b"abc"}


def test_the_pipeline_core_imports_without_torch_or_boto3(
    python_without: Callable[[set[str], str], subprocess.CompletedProcess[str]],
) -> None:
    result = python_without({"torch", "boto3", "botocore"}, "import medsearch.pipeline")
    assert result.returncode == 0, result.stderr
