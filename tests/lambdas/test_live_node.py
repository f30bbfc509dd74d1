"""The Lambdas on a real OpenSearch node: the index loader bulk-loading batch-transform output from
moto S3, a blue/green alias swap while searches run, and the search API answering from the node.

Both handlers run as in AWS (``handler(event, context)`` on S3, SQS and API Gateway events); only
their ``make_client`` seam is pointed at the suite's node (``opensearch_client`` in
tests/conftest.py) instead of a SigV4 client. Every alias made here is ``medsearch-test-*`` and
every index behind it is deleted afterwards (a test's teardown checks the alias is gone).
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medsearch import storage
from medsearch.data.manifest import Record, read_manifest, write_manifest
from medsearch.index.base import Document
from medsearch.index.opensearch import RECORD_ID, OpenSearchConfig, OpenSearchIndex
from medsearch.model.onnx_encoder import OnnxEncoder
from medsearch.vectors import normalize
from tests.lambdas.test_search_api import onnx_dir  # noqa: F401  (the ONNX export, reused)
from tests.support.aws_events import (
    LambdaContextStub,
    http_api_request,
    multipart_form,
    s3_event,
    sqs_event,
)

pytestmark = pytest.mark.live

BUCKET = "corpus"
MODEL_URL = f"s3://{BUCKET}/models/live/onnx/"
MODEL_ID = "tiny-api"  # the id test_search_api's export gives the model
SERVED_N = 24  # the records the search API tests are served
SERVED_ERROR = 5  # the transform could not embed this record: indexed by its caption alone
SWAP_RUNS = (10, 16)  # records of the first and the second run of the swap test
SWAP_AFTER = 8  # answers the querying thread collects after it first sees the second run
SWAP_MAX_QUERIES = 2000  # the querying thread's bound on requests...
SWAP_WAIT_S = 120.0  # ...and on waiting (a bound, never an assertion on time)


# --- the corpus as the batch transform leaves it -------------------------------------------------


@dataclass(frozen=True)
class Transform:
    """Corpus records and their batch-transform output lines (vectors of the served model)."""

    records: list[Record]
    rows: dict[str, dict[str, Any]]
    dim: int


@pytest.fixture(scope="module")
def transform(onnx_dir: Path, synth_corpus: Path) -> Transform:  # noqa: F811
    """The first corpus records with their ``*.out`` lines, embedded by the served ONNX model."""
    encoder = OnnxEncoder(onnx_dir)
    records = read_manifest(synth_corpus)[:SERVED_N]
    vectors = encoder.encode_images([Image.open(r.image) for r in records])
    rows = {
        r.image_id: {"image_id": r.image_id, "vector": v.tolist(), "model": MODEL_ID, "dim": v.size}
        for r, v in zip(records, vectors, strict=True)
    }
    return Transform(records, rows, encoder.dim)


def write_run(
    run_id: str, records: Sequence[Record], transform: Transform, *, errors: Sequence[str] = ()
) -> list[str]:
    """Write a run's manifest and two ``*.out`` objects to S3 as the pipeline does; return the
    objects' keys. Ids in ``errors`` get the transform's error line instead of a vector."""
    write_manifest(f"s3://{BUCKET}/data/{run_id}/manifest.jsonl", records)
    half = (len(records) + 1) // 2
    keys = []
    for part, chunk in enumerate([records[:half], records[half:]]):
        lines = [
            {"image_id": r.image_id, "error": "cannot identify image file"}
            if r.image_id in errors
            else transform.rows[r.image_id]
            for r in chunk
        ]
        key = f"vectors/{run_id}/part-{part}.jsonl.out"
        storage.write_text(f"s3://{BUCKET}/{key}", "".join(json.dumps(x) + "\n" for x in lines))
        keys.append(key)
    return keys


def fresh_run() -> str:
    return f"run-{uuid.uuid4().hex[:8]}"


# --- AWS, the node and the two Lambdas -----------------------------------------------------------


@pytest.fixture(scope="module")
def aws(opensearch_url: str, onnx_dir: Path) -> Iterator[str]:  # noqa: F811
    """Moto S3 with the ONNX model, and the Lambdas' environment as the stack sets it, for the
    whole module; returns the bucket."""
    import logging

    import boto3
    from moto import mock_aws

    from medsearch._s3 import Boto3Store

    with ExitStack() as stack:
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "MEDSEARCH_OPENSEARCH_URL": opensearch_url,  # the client itself is patched in
            "MEDSEARCH_OPENSEARCH_AUTH": "none",
            "MEDSEARCH_MANIFEST_URL": f"s3://{BUCKET}/data/{{run_id}}/manifest.jsonl",
            "MEDSEARCH_REPLICAS": "0",  # one node: a replica would never be assigned
            "MEDSEARCH_BULK_MAX_DOCS": "5",  # several bulk requests per object
            "MEDSEARCH_MODEL": MODEL_URL,
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "medsearch",
        }.items():
            patch.setenv(name, value)
        # Both handlers route the core's loggers through Powertools at cold start: undo after.
        core = logging.getLogger("medsearch")
        for attribute in ("propagate", "handlers", "level"):
            patch.setattr(core, attribute, getattr(core, attribute))
        stack.enter_context(mock_aws())
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        storage.set_object_store(Boto3Store(client))
        stack.callback(storage.set_object_store, None)
        storage.upload_dir(onnx_dir, MODEL_URL.rstrip("/"))
        yield BUCKET


def fresh_alias() -> str:
    return f"medsearch-test-{uuid.uuid4().hex[:10]}"


def drop_alias(client: Any, alias: str) -> None:
    """Delete every run index of ``alias`` (which removes the alias); check nothing is left."""
    names = list(client.indices.get(index=f"{alias}-*", allow_no_indices=True))
    if names:
        client.indices.delete(index=",".join(names))
    assert not client.indices.exists_alias(name=alias), f"alias {alias} left behind"
    assert not client.indices.get(index=f"{alias}-*", allow_no_indices=True)


@pytest.fixture
def alias(opensearch_client: Any) -> Iterator[str]:
    """A fresh read alias for one test; its run indexes are deleted afterwards."""
    name = fresh_alias()
    yield name
    drop_alias(opensearch_client, name)


def loader_lambda(patch: pytest.MonkeyPatch, client: Any, alias: str) -> ModuleType:
    """The index loader handler as a new container would run it, publishing to ``alias`` on the
    node (the seam ``patch_index_loader`` uses for the fake: ``make_client``)."""
    import lambdas.index_loader.handler as handler

    patch.setenv("MEDSEARCH_OPENSEARCH_INDEX", alias)
    patch.setattr(handler, "make_client", lambda settings: client)
    patch.setattr(handler, "get_loader", lru_cache(maxsize=1)(handler.get_loader.__wrapped__))
    return handler


def search_lambda(patch: pytest.MonkeyPatch, client: Any, alias: str, cache: Path) -> ModuleType:
    """The search API handler imported afresh (a cold start) on ``alias`` of the node, with its
    model from S3 (downloaded into ``cache`` once, as into the container's /tmp)."""
    import lambdas.search_api.handler as module

    patch.setenv("MEDSEARCH_OPENSEARCH_INDEX", alias)
    handler = importlib.reload(module)
    patch.setattr(handler, "make_client", lambda settings: client)
    patch.setattr(handler, "MODEL_CACHE", cache)
    return handler


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lambda-tmp")


def call(handler: ModuleType, event: dict[str, Any]) -> tuple[int, Any]:
    """Invoke the search API; return the status and the body (parsed if JSON, as every answer
    but an image file is). No answer may be a 500 or carry a traceback, whatever was asked."""
    response = handler.handler(event, LambdaContextStub(function_name="medsearch-search-api"))
    status, body = response["statusCode"], response["body"]
    assert status != 500 and "Traceback" not in body, body
    if (response.get("headers") or {}).get("content-type", "").startswith("application/json"):
        return status, json.loads(body)
    assert status == 200 and response["isBase64Encoded"], response
    return status, body


def get(handler: ModuleType, path: str, *query: tuple[str, str]) -> tuple[int, Any]:
    return call(handler, http_api_request("GET", path, query))


def upload(
    handler: ModuleType,
    data: bytes,
    *query: tuple[str, str],
    fields: dict[str, str] | None = None,
    filename: str = "scan.png",
    media_type: str = "image/png",
) -> tuple[int, Any]:
    """POST /search/image with a multipart file, as the web page sends it."""
    body, content_type = multipart_form(fields or {}, {"file": (filename, data, media_type)})
    event = http_api_request(
        "POST", "/v1/search/image", query, body=body, content_type=content_type
    )
    return call(handler, event)


def live_documents(client: Any, alias: str) -> dict[str, dict[str, Any]]:
    """Every image document behind ``alias`` (refreshed first; the engine's index record left
    out), ``_source`` by id."""
    client.indices.refresh(index=alias)
    images = {"bool": {"must_not": [{"ids": {"values": [RECORD_ID]}}]}}
    answer = client.search(index=alias, body={"query": images, "size": 1000})
    assert answer["hits"]["total"]["value"] == len(answer["hits"]["hits"])
    return {hit["_id"]: hit["_source"] for hit in answer["hits"]["hits"]}


def alias_targets(client: Any, alias: str) -> list[str]:
    return sorted(client.indices.get_alias(name=alias))


def png_bytes(path: str, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


# --- 1. the index loader Lambda -------------------------------------------------------------------


def test_given_transform_output_when_loaded_then_the_run_is_live_and_a_rerun_changes_nothing(
    aws: str,
    alias: str,
    opensearch_client: Any,
    transform: Transform,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = opensearch_client
    # Given a run's manifest (12 records, captionless ones among them) and its two output objects,
    # one record the transform could not embed
    run, records = fresh_run(), transform.records[:12]
    failed = records[SERVED_ERROR].image_id
    assert any(r.caption is None for r in records)
    keys = write_run(run, records, transform, errors=[failed])
    run_index = f"{alias}-{run}"
    loader = loader_lambda(monkeypatch, client, alias)
    # When the first object's S3 notification arrives
    answer = loader.handler(s3_event(aws, keys[:1]), LambdaContextStub())
    # Then its documents are in the run's index, which is not published yet
    assert answer == {"objects": 1, "published": []}
    assert client.indices.exists(index=run_index)
    assert not client.indices.exists_alias(name=alias)
    # When the second arrives through SQS (with the bucket's s3:TestEvent message beside it)
    event = sqs_event(aws, [keys[1:]])
    answer = loader.handler(event, LambdaContextStub())
    # Then nothing is retried and the alias points at the run's index alone
    assert answer == {"batchItemFailures": []}
    assert alias_targets(client, alias) == [run_index]
    # And every manifest record is there: caption, metadata and the normalised vector (none for
    # the record the transform failed on)
    documents = live_documents(client, alias)
    assert set(documents) == {r.image_id for r in records}
    for record in records:
        source = documents[record.image_id]
        assert source.get("caption") == record.caption
        assert source.get("metadata", {}) == dict(record.metadata)
        if record.image_id == failed:
            assert "vector" not in source
        else:
            expected = normalize(np.asarray(transform.rows[record.image_id]["vector"]))
            np.testing.assert_allclose(source["vector"], expected, rtol=1e-6, atol=1e-7)
    # And the load-time settings were undone before publishing
    settings = client.indices.get_settings(index=run_index)[run_index]["settings"]["index"]
    assert settings["refresh_interval"] == "1s" and settings["number_of_replicas"] == "0"

    # When both objects are delivered again, to a new container (a redelivery after a timeout)
    loader = loader_lambda(monkeypatch, client, alias)
    event = sqs_event(aws, [keys[:1], keys[1:]])
    answer = loader.handler(event, LambdaContextStub())
    # Then the same documents are live, no more and no fewer, behind the same index
    assert answer == {"batchItemFailures": []}
    assert alias_targets(client, alias) == [run_index]
    assert live_documents(client, alias) == documents
    assert OpenSearchIndex(client, alias).count() == len(records)


# --- 2. a new generation while queries run -------------------------------------------------------


def test_given_searches_running_when_a_new_run_is_published_then_each_sees_one_whole_run(
    aws: str,
    alias: str,
    opensearch_client: Any,
    transform: Transform,
    model_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = opensearch_client
    sizes = {"first": SWAP_RUNS[0], "second": SWAP_RUNS[1]}
    runs = {name: fresh_run() for name in sizes}
    # Given a first run live behind the alias (the second run holds more of the same records)
    first_keys = write_run(runs["first"], transform.records[: sizes["first"]], transform)
    second_keys = write_run(runs["second"], transform.records[: sizes["second"]], transform)
    loader = loader_lambda(monkeypatch, client, alias)
    for key in first_keys:
        loader.handler(s3_event(aws, [key]), LambdaContextStub())
    assert alias_targets(client, alias) == [f"{alias}-{runs['first']}"]
    api = search_lambda(monkeypatch, client, alias, model_cache)
    assert get(api, "/v1/health")[1]["documents"] == sizes["first"]

    # And a thread querying the alias through the search API: counts and vector searches, whose
    # totals are the whole run's document count
    answers: list[tuple[str, int, Any]] = []
    problems: list[BaseException] = []
    seen_first, seen_second, stop = threading.Event(), threading.Event(), threading.Event()

    def query_loop() -> None:
        # Mangum runs each request on the thread's event loop; Lambda calls it on the main thread
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        after = 0
        try:
            for number in range(SWAP_MAX_QUERIES):
                if stop.is_set():
                    return
                if number % 2:
                    status, body = get(api, "/v1/search", ("q", "knee MRI"), ("mode", "vector"))
                    figure = body.get("total") if status == 200 else body
                    if status == 200:
                        assert len(body["results"]) == min(10, figure), body
                else:
                    status, body = get(api, "/v1/health")
                    figure = body.get("documents") if status == 200 else body
                answers.append(("search" if number % 2 else "health", status, figure))
                if figure == sizes["first"]:
                    seen_first.set()
                if figure == sizes["second"]:
                    seen_second.set()
                    after += 1
                    if after >= SWAP_AFTER:
                        return
        except BaseException as exc:  # reported by the main thread
            problems.append(exc)
        finally:
            seen_first.set()
            seen_second.set()  # never leave the main thread waiting
            loop.close()

    thread = threading.Thread(target=query_loop, name="swap-queries", daemon=True)
    thread.start()
    try:
        assert seen_first.wait(SWAP_WAIT_S)
        # When the second run's objects arrive one by one while the searches go on
        published = [
            loader.handler(s3_event(aws, [key]), LambdaContextStub()) for key in second_keys
        ]
        assert seen_second.wait(SWAP_WAIT_S)
    except BaseException:
        stop.set()
        raise
    finally:
        thread.join(SWAP_WAIT_S)
    assert not thread.is_alive() and not problems, problems
    # Then the second run was published by its last object
    assert [answer["published"] for answer in published] == [[], [f"{alias}-{runs['second']}"]]
    assert alias_targets(client, alias) == [f"{alias}-{runs['second']}"]
    # And no search failed, and each one saw one whole run: the first until the swap, the second
    # from then on (never an empty or a partly loaded index)
    assert [a for a in answers if a[1] != 200] == []
    figures = [figure for _, _, figure in answers]
    assert set(figures) == set(sizes.values()), answers
    swap = figures.index(sizes["second"])
    assert set(figures[:swap]) == {sizes["first"]} and set(figures[swap:]) == {sizes["second"]}
    # And the first run is kept for a rollback (two runs by default)
    assert client.indices.exists(index=f"{alias}-{runs['first']}")


# --- 3. the search API Lambda on the node ---------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """The alias the search API tests are served, and what the loader put behind it."""

    alias: str
    records: list[Record]
    without_vector: str


@pytest.fixture(scope="module")
def served(aws: str, opensearch_client: Any, transform: Transform) -> Iterator[Served]:
    """A run of ``SERVED_N`` records loaded and published by the loader Lambda, for the module."""
    name = fresh_alias()
    records = transform.records
    failed = records[SERVED_ERROR].image_id
    keys = write_run(fresh_run(), records, transform, errors=[failed])
    try:
        with pytest.MonkeyPatch.context() as patch:
            loader = loader_lambda(patch, opensearch_client, name)
            answers = [loader.handler(s3_event(aws, [key]), LambdaContextStub()) for key in keys]
        assert answers[-1]["published"], answers
        yield Served(name, records, failed)
    finally:
        drop_alias(opensearch_client, name)


@pytest.fixture
def api(
    served: Served, opensearch_client: Any, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> ModuleType:
    """The search API Lambda, cold-started on the served alias."""
    return search_lambda(monkeypatch, opensearch_client, served.alias, model_cache)


def unique_caption(served: Served) -> Record:
    captions = [r.caption for r in served.records]
    return next(
        r
        for r in served.records
        if r.caption and captions.count(r.caption) == 1 and r.image_id != served.without_vector
    )


def test_given_the_live_alias_then_text_vector_and_hybrid_searches_rank_from_the_node(
    api: ModuleType, served: Served, transform: Transform
) -> None:
    # When /health is asked
    status, health = get(api, "/v1/health")
    # Then it counts every loaded record, with the model's dimension
    assert status == 200, health
    assert health["documents"] == SERVED_N and health["dim"] == transform.dim
    assert health["model"] == MODEL_ID
    target = unique_caption(served)
    ids = {r.image_id for r in served.records}
    for mode in ("text", "vector", "hybrid"):
        # When a caption is searched in each mode
        status, body = get(
            api, "/v1/search", ("q", target.caption or ""), ("mode", mode), ("k", "5")
        )
        # Then five ranked results come back; the caption's own image first where BM25 counts
        assert status == 200, body
        scores = [hit["score"] for hit in body["results"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        assert {hit["image_id"] for hit in body["results"]} <= ids
        if mode != "vector":
            assert body["results"][0]["image_id"] == target.image_id
            assert body["results"][0]["bm25_score"] > 0
        if mode == "vector":
            assert body["total"] == SERVED_N - 1  # every record with a vector
        if mode == "hybrid":
            assert body["alpha"] == 0.5
    # When a metadata filter with two values is added
    wanted = sorted({str(r.metadata["modality"]) for r in served.records})[:2]
    query = [("q", "lesion"), ("mode", "hybrid"), *(("modality", m) for m in wanted)]
    status, body = get(api, "/v1/search", *query)
    # Then only those modalities come back
    assert status == 200, body
    assert body["results"] and {hit["metadata"]["modality"] for hit in body["results"]} <= set(
        wanted
    )
    # And /facets lists the fields with their counts
    status, facets = get(api, "/v1/facets")
    assert status == 200 and sum(facets["modality"].values()) == SERVED_N


def test_given_an_uploaded_image_then_its_own_record_ranks_first_alone_and_with_text(
    api: ModuleType, served: Served
) -> None:
    target = unique_caption(served)
    data = png_bytes(target.image)
    # When the image is uploaded (multipart, as the web page sends it)
    status, body = upload(api, data)
    # Then the record it came from is the nearest image, at cosine 1
    assert status == 200, body
    assert body["mode"] == "upload" and body["alpha"] is None
    assert body["results"][0]["image_id"] == target.image_id
    assert body["results"][0]["vector_score"] == pytest.approx(1.0, abs=1e-4)
    # When its caption comes with it (form fields), the search is hybrid and still finds it
    status, body = upload(api, data, fields={"q": target.caption or "", "alpha": "0.3", "k": "3"})
    assert status == 200, body
    assert body["alpha"] == 0.3 and len(body["results"]) == 3
    assert body["results"][0]["image_id"] == target.image_id
    # And a JPEG with a filter on its own modality is answered from that modality only
    modality = str(target.metadata["modality"])
    jpeg = png_bytes(target.image, "JPEG")
    query = ("modality", modality)
    status, body = upload(api, jpeg, query, filename="scan.jpg", media_type="image/jpeg")
    assert status == 200, body
    assert {hit["metadata"]["modality"] for hit in body["results"]} == {modality}


SYNTAX = 'caption:(lung AND "nodule) OR /reg[ex/ ~2 ^3 * ? \\ + - && || ! {} []'


@pytest.mark.parametrize("mode", ["text", "vector", "hybrid"])
@pytest.mark.parametrize("q", [SYNTAX, "*:*", '"', "( ) [ ] { } ! ^ ~ ?"])
def test_given_query_syntax_characters_then_they_are_searched_as_plain_text(
    api: ModuleType, mode: str, q: str
) -> None:
    # When a query holds OpenSearch query-string syntax (never parsed: it is a match query)
    status, body = get(api, "/v1/search", ("q", q), ("mode", mode))
    # Then it is answered like any text: no error, and no syntax taking effect ("*:*" matches no
    # caption, so text search finds nothing rather than everything)
    assert status == 200, body
    if mode == "text" and not any(ch.isalnum() for ch in q):
        assert body["total"] == 0 and body["results"] == []
    if mode == "vector":
        assert len(body["results"]) == 10


LONG = "nodule " * 1428  # 9,996 characters
TOO_LONG = (LONG + "lung")[:10_000]


@pytest.mark.parametrize(
    ("method", "path", "query", "status", "detail"),
    [
        ("GET", "/v1/search", [("q", TOO_LONG), ("mode", "text")], 422, "10000 characters long"),
        ("GET", "/v1/search", [("q", TOO_LONG), ("mode", "vector")], 422, "10000 characters long"),
        ("GET", "/v1/search", [("q", TOO_LONG), ("mode", "hybrid")], 422, "10000 characters long"),
        ("POST", "/v1/search/image", [("q", TOO_LONG)], 422, "10000 characters long"),
        ("GET", "/v1/search", [("q", "lung"), ("organ", "liver")], 422, "unknown filter field"),
        ("POST", "/v1/search/image", [("organ", "liver")], 422, "unknown filter field"),
        ("GET", "/v1/search", [("q", "lung"), ("mode", "fuzzy")], 422, "mode must be one of"),
        ("GET", "/v1/search", [("q", "lung"), ("k", "0")], 422, "k must be"),
        ("GET", "/v1/search", [("q", "lung"), ("alpha", "2")], 422, "alpha must be"),
        ("GET", "/v1/search", [("q", " ")], 422, "q must not be empty"),
        ("GET", "/v1/images/no-such-image", [], 404, "no image with id"),
    ],
)
def test_given_bad_input_then_a_4xx_says_what_to_fix(
    api: ModuleType,
    served: Served,
    method: str,
    path: str,
    query: list[tuple[str, str]],
    status: int,
    detail: str,
) -> None:
    if method == "POST":
        answer = upload(api, png_bytes(served.records[0].image), *query)
    else:
        answer = get(api, path, *query)
    assert answer[0] == status and detail in answer[1]["error"]["message"], answer


def test_given_a_bad_filter_or_record_then_the_answer_says_which(
    api: ModuleType, served: Served
) -> None:
    # A filter on an unknown field lists the fields the index has
    status, body = get(api, "/v1/search", ("q", "lung"), ("organ", "liver"))
    assert (
        status == 422
        and "'organ'" in body["error"]["message"]
        and "modality" in body["error"]["message"]
    )
    # A value with query syntax in a known field is an exact term: nothing matches, no error
    status, body = get(api, "/v1/search", ("q", "lung"), ("modality", 'CT" OR *'), ("mode", "text"))
    assert status == 200 and body["total"] == 0, body
    # Similar images of the record the transform could not embed: it has no vector to search by
    status, body = get(api, f"/v1/images/{served.without_vector}/similar")
    assert status == 422 and "has no vector" in body["error"]["message"], body
    # and of a record with one, with an unknown filter field: the same 422 as a search
    vector_id = served.records[0].image_id
    status, body = get(api, f"/v1/images/{vector_id}/similar", ("organ", "liver"))
    assert status == 422 and "unknown filter field" in body["error"]["message"], body


@pytest.mark.parametrize(
    ("data", "filename", "status", "detail"),
    [
        (b"%PDF-1.7 not an image", "report.pdf", 415, "not an accepted image"),
        (b"\x89PNG\r\n\x1a\n truncated", "scan.png", 422, "scan.png: cannot read image"),
        (b"", "empty.png", 422, "file is empty"),
    ],
)
def test_given_an_upload_that_is_not_a_usable_image_then_a_4xx_says_so(
    api: ModuleType, data: bytes, filename: str, status: int, detail: str
) -> None:
    answer = upload(api, data, filename=filename)
    assert answer[0] == status and detail in answer[1]["error"]["message"], answer


def test_given_no_api_path_sends_a_raw_vector_then_a_model_and_index_of_other_dims_is_a_clear_503(
    opensearch_client: Any,
    alias: str,
    aws: str,
    transform: Transform,
    model_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every vector the API searches with is made by its own model (text or upload) or read from
    # the index (similar images): a wrong dimension can only come from a model and an index that
    # do not belong together. Given an alias whose index holds 3-d vectors
    small_run(opensearch_client, alias, "run-3d", transform, dim=3)
    # When the search API with the 128-d model starts on it
    api = search_lambda(monkeypatch, opensearch_client, alias, model_cache)
    for request in ("vector", "upload", "text", "health"):
        # Then every request is a 503 that names the model and both dimensions
        status, body = ask(api, request, transform)
        assert status == 503, body
        assert f"{MODEL_ID} makes 128-d vectors" in body["error"]["message"], body
        assert "holds 3-d vectors" in body["error"]["message"], body


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("GET", "/v1/health", []),
        ("GET", "/v1/search", [("q", "knee"), ("mode", "text")]),
        ("GET", "/v1/search", [("q", "knee"), ("mode", "vector")]),
        ("GET", "/v1/search", [("q", "knee"), ("mode", "hybrid")]),
        ("GET", "/v1/search", [("q", "knee"), ("modality", "MRI")]),
        ("POST", "/v1/search/image", []),
        ("GET", "/v1/images/synth-00001", []),
        ("GET", "/v1/images/synth-00001/similar", []),
        ("GET", "/v1/facets", []),
    ],
)
def test_given_the_alias_does_not_exist_then_every_request_is_a_503_that_names_it(
    opensearch_client: Any,
    aws: str,
    served: Served,
    model_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
    query: list[tuple[str, str]],
) -> None:
    # Given a search API configured with an alias nothing was ever published to
    missing = fresh_alias()
    api = search_lambda(monkeypatch, opensearch_client, missing, model_cache)
    # When it is asked anything
    if method == "POST":
        answer = upload(api, png_bytes(served.records[0].image), *query)
    else:
        answer = get(api, path, *query)
    # Then it answers 503, naming the missing index
    assert answer[0] == 503 and missing in answer[1]["error"]["message"], answer
    assert not opensearch_client.indices.exists(index=missing)  # and made nothing there


# --- 4. a warm search API when the alias changes under it ----------------------------------------


def small_run(
    client: Any, alias: str, run_id: str, transform: Transform, dim: int | None = None
) -> None:
    """Publish a run of four corpus records (their model's vectors, or ``dim``-d ones) to
    ``alias`` directly, as the loader leaves it."""
    index = OpenSearchIndex(client, f"{alias}-{run_id}", config=OpenSearchConfig(replicas=0))
    index.create(dim or transform.dim)
    docs = [
        Document(
            r.image_id,
            r.caption,
            np.asarray(transform.rows[r.image_id]["vector"]) if dim is None else np.ones(dim),
            r.image,
            dict(r.metadata),
        )
        for r in transform.records[:4]
    ]
    with index.loading():
        assert not index.upsert(docs).failed
    index.swap_alias(alias)


REQUESTS = ("health", "text", "vector", "hybrid", "upload", "record", "file", "similar", "facets")


def ask(api: ModuleType, request: str, transform: Transform) -> tuple[int, Any]:
    """Send one of :data:`REQUESTS` to the search API."""
    record = transform.records[0]
    if request == "upload":
        return upload(api, png_bytes(record.image))
    path, query = {
        "health": ("/v1/health", []),
        "text": ("/v1/search", [("q", "knee"), ("mode", "text")]),
        "vector": ("/v1/search", [("q", "knee"), ("mode", "vector")]),
        "hybrid": ("/v1/search", [("q", "knee"), ("mode", "hybrid")]),
        "record": (f"/v1/images/{record.image_id}", []),
        "file": (f"/v1/images/{record.image_id}/file", []),
        "similar": (f"/v1/images/{record.image_id}/similar", []),
        "facets": ("/v1/facets", []),
    }[request]
    return get(api, path, *query)


Answers = tuple[str, dict[str, tuple[int, Any]]]  # the alias, and each request's answer


def answers_after(
    client: Any, transform: Transform, cache: Path, change: Callable[[str], None]
) -> Answers:
    """Serve a run of the model's vectors, ask every request once (warming every cache), apply
    ``change`` to the alias, and return each request's answer after it."""
    name = fresh_alias()
    try:
        small_run(client, name, "run-a", transform)
        with pytest.MonkeyPatch.context() as patch:
            api = search_lambda(patch, client, name, cache)
            before = {request: ask(api, request, transform) for request in REQUESTS}
            assert {r: a[0] for r, a in before.items()} == dict.fromkeys(REQUESTS, 200), before
            change(name)
            return name, {request: ask(api, request, transform) for request in REQUESTS}
    finally:
        drop_alias(client, name)


@pytest.fixture(scope="module")
def after_delete(
    opensearch_client: Any, aws: str, transform: Transform, model_cache: Path
) -> Answers:
    """A warm API's answers after the index behind its alias was deleted (by hand, or a
    restore), which takes the alias with it."""

    def delete(alias: str) -> None:
        opensearch_client.indices.delete(index=f"{alias}-run-a")

    return answers_after(opensearch_client, transform, model_cache, delete)


@pytest.fixture(scope="module")
def after_dim_swap(
    opensearch_client: Any, aws: str, transform: Transform, model_cache: Path
) -> Answers:
    """A warm API's answers after a run of another model (3-d vectors) went live, before the
    API's own model was replaced."""

    def publish_3d(alias: str) -> None:
        small_run(opensearch_client, alias, "run-b", transform, dim=3)

    return answers_after(opensearch_client, transform, model_cache, publish_3d)


@pytest.mark.parametrize(
    "request_name",
    ["health", "text", "vector", "hybrid", "upload", "record", "file", "similar", "facets"],
)
def test_given_a_warm_api_when_the_index_behind_its_alias_is_deleted_then_a_503_names_it(
    after_delete: Answers, request_name: str
) -> None:
    # Then each request is a 503 that names the missing alias, not a 404 or an empty answer
    alias, answers = after_delete
    status, body = answers[request_name]
    assert status == 503 and alias in body["error"]["message"], (status, body)


@pytest.mark.parametrize(
    "request_name",
    ["health", "text", "record", "file", "facets", "vector", "hybrid", "upload", "similar"],
)
def test_given_a_warm_api_when_a_run_of_another_dimension_goes_live_then_vector_requests_say_so(
    after_dim_swap: Answers, request_name: str
) -> None:
    # Then what does not need the model goes on (similar images search the new run by its own
    # stored vectors), and what needs the model's vectors is a 503 naming both dimensions, in a
    # sentence rather than the node's raw error
    status, body = after_dim_swap[1][request_name]
    if request_name in ("vector", "hybrid", "upload"):
        detail = body["error"]["message"]
        assert status == 503 and "3-d" in detail and "128-d" in detail, (status, body)
        assert "root_cause" not in detail, body
    else:
        assert status == 200, body
