"""The serverless pipeline end to end, locally: moto S3, SageMaker entry points, Lambda handlers.

Synthetic corpus uploaded to S3 → training job (``main([...])`` with ``SM_*`` folders, its channel
holding a manifest of ``s3://`` images) → the four batch-transform functions over the manifest,
split and batched as SageMaker does → the index loader Lambda on the S3 events of the ``*.out``
objects, into the suite's real OpenSearch node → the search API Lambda on API Gateway HTTP API (v2)
events, with the ONNX model it fetches from S3. No AWS account or network.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medsearch import storage
from medsearch.constants import JSONLINES, ONNX_SUBDIR
from medsearch.data.manifest import Record, read_manifest, write_manifest
from medsearch.index.opensearch import OpenSearchIndex
from tests.lambdas.test_search_api import call, cold_start, http_api_event
from tests.support.aws_events import LambdaContextStub, s3_event
from tests.support.fake_opensearch import patch_index_loader
from tests.support.opensearch_node import fresh_name

RUN = "run-1"
BATCH_LINES = 16  # records per transform request (BatchStrategy=MultiRecord)


def upload_corpus(corpus: Path, bucket: str) -> list[Record]:
    """Put the images in S3 and a manifest pointing at them beside; return its records."""
    base = f"s3://{bucket}/data/{RUN}"
    storage.upload_dir(corpus.parent / "images", f"{base}/images")
    storage.write_bytes(f"{base}/queries.jsonl", (corpus.parent / "queries.jsonl").read_bytes())
    records = [
        Record(r.image_id, f"{base}/images/{Path(r.image).name}", r.caption, r.split, r.metadata)
        for r in read_manifest(corpus)
    ]
    # One image is corrupt in S3: the pipeline must report it, not fail on it.
    storage.write_bytes(records[3].image, b"\x89PNG\r\n\x1a\n truncated")
    write_manifest(f"{base}/manifest.jsonl", records)
    # The training channel's S3 prefix: the same manifest, and the query set for evaluation.
    storage.write_bytes(
        f"s3://{bucket}/channels/train/manifest.jsonl", storage.read_bytes(f"{base}/manifest.jsonl")
    )
    storage.write_bytes(
        f"s3://{bucket}/channels/train/queries.jsonl", storage.read_bytes(f"{base}/queries.jsonl")
    )
    return records


def run_training(tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """SageMaker File mode copies the channel's objects locally; then the entry point runs."""
    from training_job.train import main

    channel = storage.download_prefix(f"s3://{bucket}/channels/train/", tmp_path / "channel")
    for name, folder in {"MODEL_DIR": "model", "OUTPUT_DATA_DIR": "output/data"}.items():
        monkeypatch.setenv(f"SM_{name}", str(tmp_path / folder))
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(channel))
    monkeypatch.setenv("SM_OUTPUT_DIR", str(tmp_path / "output"))
    monkeypatch.setenv("SM_NUM_GPUS", "0")
    monkeypatch.setenv("SM_HPS", json.dumps({"base": "tiny", "epochs": 3}))
    argv = ["--batch-size", "16", "--eval-each-epoch", "false", "--model-id", RUN]
    assert main([*argv, "--checkpoint-dir", str(tmp_path / "checkpoints")]) == 0
    return tmp_path / "model"


def run_batch_transform(model_dir: Path, bucket: str) -> list[str]:
    """Feed the manifest through the four functions in two input objects, as the job would;
    return the keys of the ``.out`` objects written."""
    from batch_vectorize.inference import input_fn, model_fn, output_fn, predict_fn

    model = model_fn(str(model_dir))
    lines = storage.read_text(f"s3://{bucket}/data/{RUN}/manifest.jsonl").splitlines()
    half = len(lines) // 2
    keys = []
    for part, chunk in enumerate([lines[:half], lines[half:]]):
        output = ""
        for start in range(0, len(chunk), BATCH_LINES):
            body = "\n".join(chunk[start : start + BATCH_LINES]).encode()
            rows = predict_fn(input_fn(body, JSONLINES), model)
            output += output_fn(rows, JSONLINES)
        key = f"vectors/{RUN}/part-{part}.jsonl.out"
        storage.write_text(f"s3://{bucket}/{key}", output)
        keys.append(key)
    return keys


@pytest.fixture
def alias(opensearch_client: Any) -> Iterator[str]:
    """A fresh alias on the node; its run indexes are deleted afterwards."""
    name = fresh_name()
    yield name
    opensearch_client.indices.delete(index=f"{name}-*", ignore_unavailable=True)


@pytest.mark.slow
@pytest.mark.live
def test_given_corpus_in_s3_when_the_whole_pipeline_runs_then_the_api_returns_ranked_results(
    synth_corpus: Path,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    opensearch_client: Any,
    alias: str,
) -> None:
    # Given the synthetic corpus in S3 (one image corrupt)
    records = upload_corpus(synth_corpus, s3_bucket)

    # When the training job runs on it
    model_dir = run_training(tmp_path, s3_bucket, monkeypatch)
    # Then it wrote the model, its ONNX encoders and the evaluation report
    assert (model_dir / ONNX_SUBDIR / "text.int8.onnx").is_file()
    report = json.loads((tmp_path / "output" / "data" / "evaluation.json").read_text())
    assert report["model"] == RUN and report["n"] > 0
    # (the model artifact goes to S3, where the API fetches its ONNX folder from)
    storage.upload_dir(model_dir / ONNX_SUBDIR, f"s3://{s3_bucket}/models/{RUN}/onnx")

    # When the batch transform embeds every manifest record
    keys = run_batch_transform(model_dir, s3_bucket)
    out_lines = [
        json.loads(line)
        for key in keys
        for line in storage.read_text(f"s3://{s3_bucket}/{key}").splitlines()
        if line.strip()
    ]
    # Then there is one line per record, in manifest order, the corrupt image as an error
    assert [row["image_id"] for row in out_lines] == [r.image_id for r in records]
    assert [row["image_id"] for row in out_lines if "error" in row] == [records[3].image_id]
    assert {row["model"] for row in out_lines if "vector" in row} == {RUN}

    # When the index loader Lambda receives the S3 events of the output objects
    for name, value in {
        "OPENSEARCH_URL": "https://search-medsearch.example.com",  # the node's client is patched in
        "OPENSEARCH_AUTH": "none",
        "OPENSEARCH_INDEX": alias,
        "OPENSEARCH_REPLICAS": "0",  # one node
        "MANIFEST_URL": f"s3://{s3_bucket}/data/{{run_id}}/manifest.jsonl",
        "RETRY_BACKOFF_BASE": "0",
    }.items():
        monkeypatch.setenv(f"MEDSEARCH_{name}", value)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "medsearch")
    patch_index_loader(monkeypatch, opensearch_client)
    import lambdas.index_loader.handler as loader

    answers = [loader.handler(s3_event(s3_bucket, [key]), LambdaContextStub()) for key in keys]
    # Then the run is indexed and published behind the alias
    assert answers[-1]["published"] == [f"{alias}-{RUN.lower()}"]
    live = OpenSearchIndex(opensearch_client, alias)
    assert live.count() == len(records)
    assert set(live.get_many([r.image_id for r in records])) == {r.image_id for r in records}

    # When the search API Lambda (int8 ONNX model from S3) gets HTTP API (v2) events
    monkeypatch.setenv("MEDSEARCH_MODEL", f"s3://{s3_bucket}/models/{RUN}/onnx/")
    monkeypatch.setenv("MEDSEARCH_ONNX_INT8", "true")
    # As the stack configures it: result images through the site's origin (infra/stack.py)
    site_images = "https://d111111abcdef8.cloudfront.net/api/images/{image_id}/file"
    monkeypatch.setenv("MEDSEARCH_IMAGE_BASE_URL", site_images)
    api = cold_start(monkeypatch, opensearch_client, tmp_path / "lambda-tmp")
    status, headers, health = call(api, http_api_event("/v1/health", rid="e2e-health"))
    # Then it serves the published index with the trained model
    assert status == 200, health
    assert health["documents"] == len(records) and health["model"] == RUN
    assert headers["x-request-id"] == "e2e-health"
    captions = [r.caption for r in records]
    target = next(r for r in records if r.caption and captions.count(r.caption) == 1)
    for mode in ("text", "vector", "hybrid"):
        query = {"q": target.caption or "", "mode": mode, "k": "10"}
        status, _, body = call(api, http_api_event("/v1/search", query, stage="prod"))
        # And every mode returns ranked results, the caption's own image among them where BM25
        # takes part (first in text mode)
        assert status == 200, body
        ranked = [hit["image_id"] for hit in body["results"]]
        scores = [hit["score"] for hit in body["results"]]
        assert len(scores) == 10 and scores == sorted(scores, reverse=True)
        first = body["results"][0]
        assert first["image_url"] == site_images.format(image_id=first["image_id"])
        if mode == "text":
            assert ranked[0] == target.image_id
        if mode == "hybrid":
            assert target.image_id in ranked
    shutil.rmtree(tmp_path / "lambda-tmp", ignore_errors=True)
