"""The index loader core: batch-transform output in moto S3 → the OpenSearch engine (fake cluster).

Covers what the loader promises: a run killed midway and rerun gives exactly the
manifest's documents; a 429 storm ends with every document indexed; malformed lines and unknown
ids are reported, not fatal.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsearch import storage
from medsearch.data.manifest import BadRecord
from medsearch.errors import InvalidInputError
from medsearch.index.base import IndexModel
from medsearch.index.opensearch import OpenSearchConfig, OpenSearchIndex, run_index_name
from medsearch.loader import (
    REPORT_SUFFIX,
    IndexLoader,
    LoaderConfig,
    LoadResult,
    VectorLine,
    is_output_object,
    parse_line,
    publish_event,
)
from tests.support.fake_opensearch import FakeCluster, SimulatedCrash, fake_client

DIM = 8
N = 12
PARTS = 3
MANIFEST = "s3://corpus/data/{run_id}/manifest.jsonl"


def record_line(i: int) -> dict[str, object]:
    return {
        "image_id": f"img-{i:03d}",
        "image": f"images/img-{i:03d}.png",
        "caption": None if i % 5 == 4 else f"CT of the chest, nodule number {i}",
        "split": "test",
        "modality": "CT" if i % 2 else "MRI",
    }


def vector_for(i: int) -> list[float]:
    rng = np.random.default_rng(i)
    return [float(x) for x in rng.normal(size=DIM) * 3.0]  # not unit length: the loader normalises


def write_run(
    bucket: str, run_id: str = "run-1", extra: dict[int, list[str]] | None = None
) -> list[str]:
    """Write a manifest and PARTS output objects for a run; return the output keys."""
    manifest = "".join(json.dumps(record_line(i)) + "\n" for i in range(N))
    storage.write_text(f"s3://{bucket}/data/{run_id}/manifest.jsonl", manifest)
    keys = []
    for part in range(PARTS):
        lines = [
            json.dumps(
                {"image_id": f"img-{i:03d}", "vector": vector_for(i), "model": "tiny", "dim": DIM}
            )
            for i in range(part, N, PARTS)
        ]
        lines += (extra or {}).get(part, [])
        key = f"vectors/{run_id}/part-{part}.jsonl.out"
        storage.write_text(f"s3://{bucket}/{key}", "\n".join(lines) + "\n")
        keys.append(key)
    return keys


class Clock:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def make_loader(
    cluster: FakeCluster, clock: Clock | None = None, *, auto_publish: bool = True, **engine: object
) -> IndexLoader:
    """A loader as one Lambda container builds it (fresh caches), over the fake cluster."""
    config = OpenSearchConfig(bulk_max_docs=2, **engine)  # type: ignore[arg-type]
    base = OpenSearchIndex(fake_client(cluster), "medsearch", config=config, sleep=clock or Clock())
    loader_config = LoaderConfig(
        manifest_url=MANIFEST, alias="medsearch", batch_docs=3, auto_publish=auto_publish
    )
    return IndexLoader(loader_config, base.with_name, run_index_name)


def urls(bucket: str, keys: list[str]) -> list[str]:
    return [f"s3://{bucket}/{key}" for key in keys]


def load(loader: IndexLoader, bucket: str, keys: list[str]) -> tuple[LoadResult, list[str]]:
    """Load objects as the handler does for one notification, then publish what is complete."""
    result = loader.load_objects(urls(bucket, keys))
    return result, loader.publish_completed(result.reports)


def manifest_ids() -> set[str]:
    return {f"img-{i:03d}" for i in range(N)}


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster(seed=7)


# --- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"vector": [1.0]}', "no image_id"),
        ('{"image_id": "a", "vector": "1,2"}', "list of numbers"),
        ('{"image_id": "a", "vector": []}', "list of numbers"),
        ('{"image_id": "a", "vector": [1.0, true]}', "list of numbers"),
        ('{"image_id": "a", "vector": [1.0, NaN]}', "NaN"),
        ('{"image_id": "a", "vector": [1.0, 2.0], "dim": 3}', "dim 3"),
        ('{"image_id": "a", "error": "cannot identify image file"}', "vectorize error"),
    ],
)
def test_given_a_bad_output_line_when_parsed_then_the_reason_is_named(
    line: str, reason: str
) -> None:
    parsed = parse_line(line, "part-0.out:3")
    assert isinstance(parsed, BadRecord)
    assert reason in parsed.reason


def test_given_a_vector_line_when_parsed_then_id_vector_and_model_come_back() -> None:
    parsed = parse_line('{"image_id": "a", "vector": [1, 2.5], "model": "m", "dim": 2}', "x")
    assert parsed == VectorLine("a", [1, 2.5], "m")


def test_only_transform_output_objects_are_outputs() -> None:
    assert is_output_object("s3://corpus/vectors/run-1/part-0.jsonl.out")
    assert not is_output_object("s3://corpus/vectors/run-1/part-0.jsonl.out.loaded.json")
    assert not is_output_object("s3://corpus/vectors/run-1/part-0.jsonl")


def test_run_id_comes_from_the_key_and_fills_the_manifest_template() -> None:
    config = LoaderConfig(manifest_url=MANIFEST)
    assert config.run_id("s3://corpus/vectors/run-7/part-0.jsonl.out") == "run-7"
    assert config.manifest_for("run-7") == "s3://corpus/data/run-7/manifest.jsonl"
    with pytest.raises(InvalidInputError, match="no run id"):
        config.run_id("s3://corpus/elsewhere/part-0.jsonl.out")
    with pytest.raises(InvalidInputError, match="run_id"):
        LoaderConfig(manifest_url=MANIFEST, run_pattern="vectors/(.*)/")


def test_publish_event_needs_a_prefix() -> None:
    assert publish_event({"Records": []}) is None
    assert publish_event({"action": "publish", "output_prefix": "s3://b/vectors/r/"}) == (
        "s3://b/vectors/r",
        False,
    )
    with pytest.raises(InvalidInputError):
        publish_event({"action": "publish"})


# --- loading ------------------------------------------------------------------------------------


def test_given_a_run_when_every_object_loads_then_the_alias_serves_the_joined_documents(
    s3_bucket: str, cluster: FakeCluster
) -> None:
    keys = write_run(s3_bucket)
    loader = make_loader(cluster)
    # When the first objects arrive, the run is not published yet
    first, published = load(loader, s3_bucket, keys[:2])
    assert first.ok and published == []
    assert "medsearch" not in cluster.aliases
    # When the last one arrives
    last, published = load(loader, s3_bucket, keys[2:])
    assert last.ok and last.errors == []
    assert published == ["medsearch-run-1"]
    # Then the alias points at the run index, which holds the manifest joined with the vectors
    assert cluster.aliases == {"medsearch": {"medsearch-run-1"}}
    settings = cluster.indexes["medsearch-run-1"].settings
    assert settings["refresh_interval"] == "1s" and settings["number_of_replicas"] == 1
    index = OpenSearchIndex(fake_client(cluster), "medsearch")
    assert index.count() == N
    doc = index.get("img-003")
    assert doc is not None
    assert doc.caption == "CT of the chest, nodule number 3"
    assert doc.image == "s3://corpus/data/run-1/images/img-003.png"
    assert dict(doc.metadata) == {"modality": "CT"}
    assert np.linalg.norm(doc.vector) == pytest.approx(1.0, abs=1e-5)
    assert index.get("img-004").caption is None  # type: ignore[union-attr]
    # And each object has its report beside it
    report = json.loads(storage.read_text(f"s3://{s3_bucket}/{keys[0]}{REPORT_SUFFIX}"))
    assert report["written"] == 4 and report["failed"] == [] and report["model"] == "tiny"


def test_acceptance_run_killed_midway_and_rerun_gives_exactly_the_manifest(
    s3_bucket: str, cluster: FakeCluster
) -> None:
    keys = write_run(s3_bucket)
    # Given a run killed after three bulk requests (mid-object, nothing published)
    cluster.crash_after(3, path="_bulk")
    with pytest.raises(SimulatedCrash):
        crashed = make_loader(cluster)
        for key in keys:
            load(crashed, s3_bucket, [key])
    partial = set(cluster.documents("medsearch-run-1"))
    assert 0 < len(partial) < N
    assert "medsearch" not in cluster.aliases
    # When the whole run is delivered again to a fresh container
    rerun = make_loader(cluster)
    results = [load(rerun, s3_bucket, [key]) for key in keys]
    # Then the index holds exactly the manifest's documents: no duplicates, no gaps
    assert all(result.ok for result, _ in results)
    assert set(cluster.documents("medsearch")) == manifest_ids()
    assert OpenSearchIndex(fake_client(cluster), "medsearch").count() == N
    assert [published for _, published in results] == [[], [], ["medsearch-run-1"]]


def test_acceptance_429_storm_ends_with_every_document_indexed(
    s3_bucket: str, cluster: FakeCluster
) -> None:
    keys = write_run(s3_bucket)
    clock = Clock()
    loader = make_loader(cluster, clock, max_attempts=12)
    # Given 40% of requests and bulk items answered with 429
    cluster.storm(0.4)
    result, published = load(loader, s3_bucket, keys)
    cluster.calm()
    # Then every document is indexed, after retries with back-off
    assert result.ok
    assert cluster.injected["request 429"] > 0 and cluster.injected["item 429"] > 0
    assert clock.delays and max(clock.delays) <= 20.0
    assert set(cluster.documents("medsearch-run-1")) == manifest_ids()
    assert published == ["medsearch-run-1"]


def test_acceptance_malformed_lines_and_unknown_ids_are_reported_not_fatal(
    s3_bucket: str, cluster: FakeCluster
) -> None:
    # Given an object with garbage lines, an unknown id and a known id with a malformed vector
    extra = {
        1: [
            "{not json",
            '{"vector": [1, 2]}',
            json.dumps({"image_id": "stranger", "vector": vector_for(1), "dim": DIM}),
            json.dumps({"image_id": "img-001", "vector": [1.0, 2.0]}),
        ]
    }
    keys = write_run(s3_bucket, extra=extra)
    result, published = load(make_loader(cluster), s3_bucket, keys)
    # Then the objects load completely, the problems are reported by id, and the run is published
    assert result.ok
    report = next(r for r in result.reports if r.url.endswith("part-1.jsonl.out"))
    assert report.unknown == ["stranger"]
    reasons = [(bad.image_id, bad.reason) for bad in report.malformed]
    assert any("not JSON" in reason for _, reason in reasons)
    assert any("no image_id" in reason for _, reason in reasons)
    assert ("img-001", "2-d vector, expected 8") in reasons
    assert set(cluster.documents("medsearch")) == manifest_ids()
    assert "stranger" not in cluster.documents("medsearch")
    assert published == ["medsearch-run-1"]


def _fingerprinted_object(bucket: str, part: int, weights: dict[int, str]) -> str:
    """Write output object ``part`` of run-1 whose line ``i`` names the weights ``weights[i]``."""
    lines = [
        json.dumps(
            {"image_id": f"img-{i:03d}", "vector": vector_for(i), "model": "m", "fingerprint": fp}
        )
        for i, fp in weights.items()
    ]
    key = f"vectors/run-1/part-{part}.jsonl.out"
    storage.write_text(f"s3://{bucket}/{key}", "\n".join(lines) + "\n")
    return key


def test_given_fingerprinted_lines_when_loaded_then_the_index_records_the_model_and_weights(
    s3_bucket: str, cluster: FakeCluster
) -> None:
    write_run(s3_bucket)
    # Given an object whose lines name weights "aaa", but one line names other weights
    key = _fingerprinted_object(s3_bucket, 0, {0: "aaa", 3: "bbb", 6: "aaa"})
    result, _ = load(make_loader(cluster), s3_bucket, [key])
    # Then the index records the model and weights of the object's vectors
    (report,) = result.reports
    assert report.fingerprint == "aaa"
    index = OpenSearchIndex(fake_client(cluster), "medsearch-run-1")
    assert index.indexed_model() == IndexModel("m", "aaa")
    # and the vector of other weights is refused (its caption stays searchable without it)
    assert [(b.image_id, b.reason) for b in report.malformed] == [
        ("img-003", "vector of weights bbb, expected aaa")
    ]
    assert index.get("img-003").vector is None  # type: ignore[union-attr]
    assert index.get("img-006").vector is not None  # type: ignore[union-attr]


def test_given_a_run_index_of_other_weights_when_an_object_loads_then_it_is_refused(
    s3_bucket: str, cluster: FakeCluster
) -> None:
    write_run(s3_bucket)
    first = _fingerprinted_object(s3_bucket, 0, {0: "aaa", 3: "aaa"})
    second = _fingerprinted_object(s3_bucket, 1, {1: "bbb", 4: "bbb"})
    loader = make_loader(cluster)
    assert load(loader, s3_bucket, [first])[0].ok
    # When an object of other weights arrives for the same run (same container or a fresh one)
    for fresh in (loader, make_loader(cluster)):
        result, published = load(fresh, s3_bucket, [second])
        # Then it is not loaded, and the error names both weights
        assert not result.ok and published == []
        assert "weights aaa" in result.errors[0] and "weights bbb" in result.errors[0]
    assert "img-001" not in cluster.documents("medsearch-run-1")


def test_vectorize_errors_index_the_caption_without_a_vector(
    s3_bucket: str, cluster: FakeCluster
) -> None:
    keys = write_run(s3_bucket)
    # Given the transform could not embed img-002: its line is an error line
    key = keys[2]
    lines = storage.read_text(f"s3://{s3_bucket}/{key}").splitlines()
    lines[0] = json.dumps({"image_id": "img-002", "error": "truncated image"})
    storage.write_text(f"s3://{s3_bucket}/{key}", "\n".join(lines) + "\n")
    result, published = load(make_loader(cluster), s3_bucket, keys)
    # Then it is reported and still found by text, with no vector
    errors = [bad for r in result.reports for bad in r.vector_errors]
    assert [(b.image_id, b.reason) for b in errors] == [
        ("img-002", "vectorize error: truncated image")
    ]
    doc = OpenSearchIndex(fake_client(cluster), "medsearch").get("img-002")
    assert doc is not None and doc.vector is None and doc.caption is not None
    assert result.ok and published == ["medsearch-run-1"]


def test_rejected_documents_leave_their_object_incomplete_and_a_reload_completes_the_run(
    s3_bucket: str, cluster: FakeCluster
) -> None:
    keys = write_run(s3_bucket)
    # Given one document rejected by the index (a mapping error, not retryable in place)
    cluster.fail_items(["img-004"], status=400)
    loader = make_loader(cluster)
    # When each object is loaded as its own notification
    results = [loader.load_objects([url]) for url in urls(s3_bucket, keys)]
    published = loader.publish_completed(r for result in results for r in result.reports)
    # Then only its object is incomplete, the ids are in the result, and nothing is published
    (failed,) = [result for result in results if not result.ok]
    assert failed.urls == urls(s3_bucket, keys[1:2]) and failed.errors == []
    assert failed.failed_ids == ["img-004"]
    assert published == [] and "medsearch" not in cluster.aliases
    # When that object is delivered again
    retry = loader.load_objects(failed.urls)
    # Then the run is complete and published
    assert retry.ok and retry.failed_ids == []
    assert loader.publish_completed(retry.reports) == ["medsearch-run-1"]
    assert set(cluster.documents("medsearch")) == manifest_ids()


def test_an_unreadable_object_is_an_error_of_its_result_not_an_exception(
    s3_bucket: str, cluster: FakeCluster
) -> None:
    keys = write_run(s3_bucket)
    missing = f"s3://{s3_bucket}/vectors/run-1/missing.jsonl.out"
    result = make_loader(cluster).load_objects([*urls(s3_bucket, keys[:1]), missing])
    assert not result.ok
    assert [e.split(": ", 1)[0] for e in result.errors] == [missing]
    assert [r.url for r in result.reports] == urls(s3_bucket, keys[:1])
    assert result.reports[0].complete


def test_without_auto_publish_complete_runs_wait_for_a_manual_publish(
    s3_bucket: str, cluster: FakeCluster
) -> None:
    keys = write_run(s3_bucket)
    loader = make_loader(cluster, auto_publish=False)
    result, published = load(loader, s3_bucket, keys)
    assert result.ok and published == [] and "medsearch" not in cluster.aliases
    assert loader.publish("run-1", f"s3://{s3_bucket}/vectors/run-1")
    assert cluster.aliases == {"medsearch": {"medsearch-run-1"}}


def test_a_new_run_swaps_the_alias_and_prunes_old_runs(
    s3_bucket: str, cluster: FakeCluster
) -> None:
    for run in ("run-1", "run-2", "run-3"):
        keys = write_run(s3_bucket, run_id=run)
        _, published = load(make_loader(cluster), s3_bucket, keys)
        assert published == [f"medsearch-{run}"]
    assert cluster.aliases == {"medsearch": {"medsearch-run-3"}}
    assert sorted(cluster.indexes) == ["medsearch-run-2", "medsearch-run-3"]  # keep 2


def test_given_engine_keeping_one_index_when_runs_published_then_only_the_live_one_is_left(
    s3_bucket: str, cluster: FakeCluster
) -> None:
    # The engine's keep_indexes (the handler's MEDSEARCH_KEEP_INDEXES) decides the pruning.
    for run in ("run-1", "run-2"):
        keys = write_run(s3_bucket, run_id=run)
        load(make_loader(cluster, keep_indexes=1), s3_bucket, keys)
    assert sorted(cluster.indexes) == ["medsearch-run-2"]


def test_manual_publish_with_force_covers_a_partial_transform(
    s3_bucket: str, cluster: FakeCluster
) -> None:
    keys = write_run(s3_bucket)
    loader = make_loader(cluster)
    load(loader, s3_bucket, keys[:1])
    # The other parts never arrive: only part 0 is under the prefix.
    for key in keys[1:]:
        _delete(s3_bucket, key)
    prefix = f"s3://{s3_bucket}/vectors/run-1"
    assert loader.publish("run-1", prefix) is False  # 4 of 12 manifest records
    assert loader.publish("run-1", prefix, force=True) is True
    assert cluster.aliases == {"medsearch": {"medsearch-run-1"}}


def _delete(bucket: str, key: str) -> None:
    import boto3

    boto3.client("s3", region_name="us-east-1").delete_object(Bucket=bucket, Key=key)


def test_a_late_redelivery_of_an_old_run_never_replaces_a_newer_live_run(
    s3_bucket: str, cluster: FakeCluster
) -> None:
    # Given run 1 and then run 2 published
    old_keys = write_run(s3_bucket, run_id="run-1")
    load(make_loader(cluster), s3_bucket, old_keys)
    new_keys = write_run(s3_bucket, run_id="run-2")
    load(make_loader(cluster), s3_bucket, new_keys)
    # When an object of run 1 is delivered again
    late, published = load(make_loader(cluster), s3_bucket, old_keys[:1])
    # Then it loads, but the alias stays on run 2
    assert late.ok and published == []
    assert cluster.aliases == {"medsearch": {"medsearch-run-2"}}
    # And a forced publish rolls back on purpose
    assert make_loader(cluster).publish("run-1", f"s3://{s3_bucket}/vectors/run-1", force=True)
    assert cluster.aliases == {"medsearch": {"medsearch-run-1"}}


def test_given_a_live_run_when_a_much_smaller_run_completes_then_not_published_unless_forced(
    s3_bucket: str, cluster: FakeCluster
) -> None:
    # Given run 1 (12 documents) live
    load(make_loader(cluster), s3_bucket, write_run(s3_bucket, run_id="run-1"))
    # When run 2, whose manifest was cut to 5 records upstream, loads completely
    rows = [record_line(i) for i in range(5)]
    storage.write_text(
        f"s3://{s3_bucket}/data/run-2/manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows)
    )
    lines = [
        json.dumps({"image_id": r["image_id"], "vector": vector_for(i), "model": "tiny"})
        for i, r in enumerate(rows)
    ]
    key = "vectors/run-2/part-0.jsonl.out"
    storage.write_text(f"s3://{s3_bucket}/{key}", "\n".join(lines) + "\n")
    result, published = load(make_loader(cluster), s3_bucket, [key])
    # Then it is loaded but not published: the alias still serves run 1's 12 documents
    assert result.ok and published == []
    assert cluster.aliases == {"medsearch": {"medsearch-run-1"}}
    loader = make_loader(cluster)
    with pytest.raises(InvalidInputError, match="would hold 5 documents, alias medsearch holds 12"):
        loader.publish("run-2", f"s3://{s3_bucket}/vectors/run-2")
    # And a forced publish (removing records on purpose) goes through
    assert loader.publish("run-2", f"s3://{s3_bucket}/vectors/run-2", force=True)
    assert cluster.aliases == {"medsearch": {"medsearch-run-2"}}


def test_given_a_max_drop_outside_0_1_when_configuring_the_loader_then_refused() -> None:
    with pytest.raises(InvalidInputError, match="max drop must be a share in"):
        LoaderConfig(manifest_url=MANIFEST, max_drop=-0.1)
