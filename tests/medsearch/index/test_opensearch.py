"""The OpenSearch engine without a server: request bodies, retries, lifecycle and parsing.

Request bodies are compared with golden JSON files in ``golden/`` (written from the documented
DSL: knn_vector mapping, match, knn with an efficient filter, hybrid + normalization-processor,
_bulk NDJSON, _aliases). ``MEDSEARCH_UPDATE_GOLDEN=1`` rewrites them; review the diff by hand.
Requests go through the real opensearch-py client into the in-memory fake cluster, where a test
needs what only the fake gives (the request sent, injected faults, another OpenSearch version);
each such test says why in its first line. Lifecycle tests run on the fake and the real node.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from index_contract import reference_bm25
from opensearchpy import RequestsHttpConnection

from medsearch.constants import API_GATEWAY_TIMEOUT_S, SEARCH_REQUEST_BUDGET_S
from medsearch.errors import ConfigError, InvalidInputError, MergeRunning, SearchIndexError
from medsearch.index.analysis import LEGACY_BM25_FACTOR
from medsearch.index.base import Document, IndexModel, SearchIndex, SearchQuery
from medsearch.index.opensearch import (
    RECORD_ID,
    OpenSearchConfig,
    OpenSearchIndex,
    build_alias_actions,
    build_index_body,
    build_knn_query,
    build_pipeline_body,
    connect,
    knn_score_to_cosine,
    run_index_name,
)
from medsearch.search import SearchService
from tests.support.fake_opensearch import FakeCluster, RecordedRequest, fake_client
from tests.support.opensearch_node import fresh_name

GOLDEN = Path(__file__).parent / "golden"
PythonWithout = Callable[[set[str], str], subprocess.CompletedProcess[str]]
DIM = 4


def unit(values: list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    return array / np.linalg.norm(array)


DOCS = [
    Document("a1", "Fracture of the left femur", unit([1, 0, 0, 0]), "s3://b/a1.png",
             {"modality": "X-ray", "region": "leg"}),
    Document("a2", "Lung nodule on CT", unit([0, 1, 0, 0]), "s3://b/a2.png",
             {"modality": "CT", "region": "chest"}),
    Document("a3", None, unit([1, 1, 0, 0]), "s3://b/a3.png", {"modality": "CT"}),
]  # fmt: skip


def assert_golden(name: str, actual: Any) -> None:
    """Compare a request body with ``golden/<name>.json`` (rewrite when asked to)."""
    path = GOLDEN / f"{name}.json"
    if os.environ.get("MEDSEARCH_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    assert actual == json.loads(path.read_text()), f"{name} differs from {path}"


class Clock:
    """A fake sleep that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster(seed=1)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_index(
    cluster: FakeCluster, clock: Clock, name: str = "medsearch-run1", **config: Any
) -> OpenSearchIndex:
    return OpenSearchIndex(
        fake_client(cluster), name, config=OpenSearchConfig(**config), sleep=clock, rng=lambda: 0.5
    )


@pytest.fixture
def loaded(cluster: FakeCluster, clock: Clock) -> OpenSearchIndex:
    """The three documents in a run index behind the alias ``medsearch``."""
    index = make_index(cluster, clock)
    index.create(DIM)
    with index.loading():
        assert index.upsert(DOCS).failed == []
    index.swap_alias("medsearch")
    cluster.requests.clear()
    return index.with_name("medsearch")


def last(cluster: FakeCluster, fragment: str, method: str | None = None) -> RecordedRequest:
    return cluster.requests_to(fragment, method)[-1]


def created(cluster: FakeCluster, name: str) -> RecordedRequest:
    """The request that created index ``name`` (its settings and mappings)."""
    return next(r for r in cluster.requests_to(f"/{name}", "PUT") if r.path == f"/{name}")


class Target:
    """Where a lifecycle test runs: the fake cluster or the real node, under a prefix of its own
    (the node is shared by the whole suite); the node's indexes are deleted afterwards."""

    def __init__(self, client: Any, prefix: str, clock: Clock) -> None:
        self.client, self.prefix, self.clock = client, prefix, clock

    def make(self, suffix: str = "run1", **config: Any) -> OpenSearchIndex:
        config.setdefault("replicas", 0)
        return OpenSearchIndex(
            self.client,
            f"{self.prefix}-{suffix}",
            config=OpenSearchConfig(**config),
            sleep=self.clock,
            rng=lambda: 0.5,
        )

    def settings(self, name: str) -> dict[str, str]:
        """The index-level settings as OpenSearch reports them (values as strings)."""
        answer = self.client.indices.get_settings(index=name)
        return {k: str(v) for k, v in answer[name]["settings"]["index"].items()}


@pytest.fixture(params=["fake", pytest.param("node", marks=pytest.mark.live)])
def target(request: pytest.FixtureRequest, cluster: FakeCluster, clock: Clock) -> Iterator[Target]:
    if request.param == "fake":
        yield Target(fake_client(cluster), "medsearch", clock)
        return
    client = request.getfixturevalue("opensearch_client")
    prefix = fresh_name()
    yield Target(client, prefix, clock)
    client.indices.delete(index=f"{prefix}-*", ignore_unavailable=True)


# --- the BM25 scale --------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "recorded"), [("2.19.1", LEGACY_BM25_FACTOR), ("3.1.0", 1.0)])
def test_given_any_cluster_version_when_text_searched_then_bm25_is_bm25similarity(
    version: str, recorded: float, clock: Clock
) -> None:
    # Fake: plays OpenSearch 3.x beside 2.19; the suite's node is 2.19 only.
    # Given a cluster scoring as OpenSearch `version` does (2.x: LegacyBM25Similarity, 2.2x)
    cluster = FakeCluster(version=version)
    index = make_index(cluster, clock)
    index.create(DIM)
    # Then the index record gives readers its scale
    record = last(cluster, "/medsearch-run1/_doc/", "PUT").body["index_record"]
    assert record["bm25_scale"] == pytest.approx(recorded)
    with index.loading():
        index.upsert(DOCS)
    # When a reader on an alias searches text
    index.swap_alias("medsearch")
    reader = OpenSearchIndex(fake_client(cluster), "medsearch")
    page = reader.search(SearchQuery(text="femur fracture lung", k=10))
    # Then the scores are BM25Similarity's, whatever the cluster's own scale
    expected = reference_bm25(
        {d.image_id: d.caption for d in DOCS if d.caption}, "femur fracture lung"
    )
    assert {h.image_id: h.text_score for h in page.hits} == pytest.approx(expected, rel=1e-6)


def test_given_an_index_without_a_record_then_it_reads_as_opensearch_2_from_its_mapping(
    target: Target,
) -> None:
    # Given a run index created before index records existed (by OpenSearch 2.x)
    index = target.make("old")
    body = build_index_body(DIM, OpenSearchConfig(replicas=0), loading=False)
    target.client.transport.perform_request("PUT", f"/{index.name}", body=body)
    index.upsert(DOCS)
    index.refresh()
    # Then its readers find its dimension in the mapping and divide out the legacy factor
    assert index.dim == DIM
    assert index.bm25_scale == LEGACY_BM25_FACTOR
    hit = index.search(SearchQuery(text="femur")).hits[0]
    captions = {d.image_id: d.caption for d in DOCS if d.caption}
    assert hit.text_score == pytest.approx(reference_bm25(captions, "femur")["a1"], rel=1e-3)


# --- golden request bodies -------------------------------------------------------------------


def test_given_a_dimension_when_index_created_then_mapping_matches_golden(
    cluster: FakeCluster, clock: Clock
) -> None:
    # Fake: compares the request sent, which only a recording server shows.
    index = make_index(cluster, clock)
    assert index.create(DIM) is True
    request = created(cluster, "medsearch-run1")
    assert request.path == "/medsearch-run1"
    assert_golden("create_index", request.body)
    mapping = request.body["mappings"]["properties"]["vector"]
    assert mapping["method"]["engine"] == "lucene"
    assert mapping["method"]["space_type"] == "cosinesimil"


def test_given_faiss_config_then_mapping_uses_inner_product(
    cluster: FakeCluster, clock: Clock
) -> None:
    # Fake: the node has no faiss libraries; this checks the request sent.
    index = make_index(cluster, clock, engine="faiss", m=32, ef_construction=256, ef_search=64)
    index.create(8, loading=False)
    body = created(cluster, "medsearch-run1").body
    method = body["mappings"]["properties"]["vector"]["method"]
    assert method == {
        "name": "hnsw",
        "engine": "faiss",
        "space_type": "innerproduct",
        "parameters": {"m": 32, "ef_construction": 256},
    }
    assert body["settings"]["index"]["knn.algo_param.ef_search"] == 64
    assert body["settings"]["index"]["number_of_replicas"] == 1  # not loading: live settings


def test_text_query_body_matches_golden(loaded: OpenSearchIndex, cluster: FakeCluster) -> None:
    # Fake: compares the request sent, which only a recording server shows.
    page = loaded.search(
        SearchQuery(text="femur fracture", k=5, offset=1, filters={"modality": ["X-ray", "CT"]})
    )
    request = last(cluster, "/_search")
    assert request.path == "/medsearch/_search"
    assert_golden("search_text", request.body)
    assert page.total == 1 and page.hits == []  # one match, page starts after it


def test_vector_query_body_with_filter_matches_golden(
    loaded: OpenSearchIndex, cluster: FakeCluster
) -> None:
    # Fake: compares the request sent, which only a recording server shows.
    cluster.requests.clear()
    page = loaded.search(
        SearchQuery(
            vector=unit([1, 0.2, 0, 0]),
            k=2,
            filters={"modality": ["CT"]},
            exclude_ids=frozenset({"a2"}),
        )
    )
    # One request: the kNN page and, filtered, the vector count beside it as an aggregation
    assert [r.path for r in cluster.requests if "_mget" not in r.path] == ["/medsearch/_search"]
    request = last(cluster, "/_search")
    assert_golden("search_vector", request.body)
    knn = request.body["query"]["knn"]["vector"]
    assert knn["k"] == 2 and "filter" in knn  # the page's end; efficient filtering inside knn
    assert [h.image_id for h in page.hits] == ["a3"]
    assert page.total == 1


def test_unfiltered_vector_and_hybrid_totals_come_from_the_index_record(
    loaded: OpenSearchIndex, cluster: FakeCluster
) -> None:
    # Fake: counts the requests sent and what they ask for.
    # Given a finished load (its record counts documents with a vector) and a read record
    vector = unit([0, 1, 0, 0])
    loaded.search(SearchQuery(vector=vector))
    cluster.requests.clear()
    # When unfiltered vector and hybrid queries run
    pages = [
        loaded.search(SearchQuery(vector=vector, k=2)),
        loaded.search(SearchQuery(text="lung", vector=vector, k=2)),
    ]
    # Then each is one request with no count in it, and the totals are the record's
    assert [r.path for r in cluster.requests] == ["/medsearch/_search", "/medsearch/_msearch"]
    for request in cluster.requests:
        bodies = request.body if isinstance(request.body, list) else [request.body]
        assert not any("aggs" in body for body in bodies if isinstance(body, dict))
    assert [page.total for page in pages] == [3, 3]


def test_hybrid_client_fusion_is_one_msearch_matching_golden(
    loaded: OpenSearchIndex, cluster: FakeCluster, clock: Clock
) -> None:
    # Fake: compares the requests sent, which only a recording server shows.
    loaded.search(SearchQuery(text="lung nodule", vector=unit([0, 1, 0, 0]), alpha=0.3, k=2))
    cluster.requests.clear()
    page = loaded.search(
        SearchQuery(text="lung nodule", vector=unit([0, 1, 0, 0]), alpha=0.3, k=2, offset=1)
    )
    assert [r.path for r in cluster.requests] == ["/medsearch/_msearch"]
    assert_golden("search_hybrid_msearch", cluster.requests[0].body)
    assert page.total == 3 and page.total_relation == "eq"


def test_hybrid_query_and_pipeline_match_golden(cluster: FakeCluster, clock: Clock) -> None:
    # Fake: compares the requests sent, which only a recording server shows.
    index = make_index(cluster, clock, hybrid="pipeline")
    index.create(DIM)
    with index.loading():
        assert index.upsert(DOCS).failed == []
    index.swap_alias("medsearch")
    reader = index.with_name("medsearch")
    reader.search(SearchQuery(text="lung", k=1))
    cluster.requests.clear()
    page = reader.search(SearchQuery(text="lung nodule", vector=unit([0, 1, 0, 0]), alpha=0.3, k=2))
    # One request: the fusion travels in it as a temporary pipeline (searching creates nothing,
    # so a role that may only read can run it), the breakdown as named sub-query scores
    assert [r.path for r in cluster.requests] == ["/medsearch/_search"]
    search = cluster.requests[0]
    assert search.params == {"include_named_queries_score": "true"}
    assert_golden("hybrid_pipeline", search.body.pop("search_pipeline"))
    assert_golden("search_hybrid", search.body)
    assert cluster.requests_to("/_search/pipeline") == [] and cluster.pipelines == {}
    assert all(h.text_score is not None or h.vector_score is not None for h in page.hits)


def test_bulk_body_is_ndjson_with_ids_matching_golden(cluster: FakeCluster, clock: Clock) -> None:
    # Fake: compares the request sent, which only a recording server shows.
    index = make_index(cluster, clock)
    index.create(DIM)
    index.upsert(DOCS[:2])
    request = last(cluster, "/_bulk")
    assert request.path == "/medsearch-run1/_bulk"
    assert_golden("bulk", request.body)
    assert [line["index"]["_id"] for line in request.body[::2]] == ["a1", "a2"]


def test_alias_swap_is_one_atomic_request_matching_golden(
    cluster: FakeCluster, clock: Clock
) -> None:
    # Fake: counts and compares the requests sent (the node runs the swap in test_opensearch_live).
    # Given run 1 live behind the alias
    first = make_index(cluster, clock, name="medsearch-run1")
    first.create(DIM)
    first.swap_alias("medsearch")
    # When run 2 is published
    second = first.with_name("medsearch-run2")
    second.create(DIM)
    second.swap_alias("medsearch")
    # Then one _aliases request takes the alias off every run (a pattern, not a list read
    # before, so a racing publish cannot leave two targets) and adds run 2
    request = last(cluster, "/_aliases")
    assert_golden("alias_swap", request.body)
    assert cluster.aliases == {"medsearch": {"medsearch-run2"}}


def test_given_two_publishes_racing_then_the_alias_has_one_target(target: Target) -> None:
    # Given runs a and b that both read the alias while run 0 was live
    alias = target.prefix
    runs = [target.make(name) for name in ("r0", "ra", "rb")]
    for run in runs:
        run.create(DIM, alias=alias)
    runs[0].swap_alias(alias)
    stale = runs[0].alias_targets(alias)
    # When both publish (each sends its swap after reading the same, now stale, targets)
    for run in runs[1:]:
        target.client.transport.perform_request(
            "POST", "/_aliases", body=build_alias_actions(alias, run.name, stale)
        )
    # Then the alias points at the last one alone, never at both
    assert runs[0].alias_targets(alias) == [runs[2].name]


# --- lifecycle -------------------------------------------------------------------------------


def test_create_is_idempotent_and_refuses_another_dimension(target: Target) -> None:
    index = target.make()
    assert index.create(DIM) is True
    assert index.create(DIM) is False
    with pytest.raises(SearchIndexError, match="4-d"):
        target.make().create(DIM + 1)


def test_given_a_run_created_for_a_model_then_readers_get_its_weights_and_others_are_refused(
    target: Target,
) -> None:
    # Given a run index created for the vectors of one model, and loaded
    model = IndexModel("models/run-7", "sha256:00112233aabbccdd")
    index = target.make()
    assert index.create(DIM, model=model) is True
    with index.loading():
        assert index.upsert(DOCS).failed == []
    # Then a reader gets the model from the index record (the finished load kept it)
    assert target.make().indexed_model() == model
    # And creating it again for the vectors of other weights is refused, naming both
    with pytest.raises(SearchIndexError, match=r"sha256:00112233aabbccdd.*sha256:ffeeddcc"):
        target.make().create(DIM, model=IndexModel("models/run-8", "sha256:ffeeddcc00000000"))
    assert target.make().create(DIM, model=model) is False
    # While a run created without a model (as before) records none
    assert target.make("run2").create(DIM) is True
    assert target.make("run2").indexed_model() == IndexModel()


def test_given_a_run_of_one_model_when_another_same_dim_model_serves_it_then_refused(
    target: Target,
) -> None:
    index = target.make()
    index.create(DIM, model=IndexModel("base", "sha256:1111111111111111"))
    with index.loading():
        index.upsert(DOCS)

    class Encoder:
        model_id, dim, fingerprint = "fine-tuned", DIM, "sha256:2222222222222222"

        def encode_texts(self, texts: Any, batch_size: int = 64) -> np.ndarray:
            return np.ones((len(texts), DIM), np.float32)

        def encode_images(self, images: Any, batch_size: int = 32) -> np.ndarray:
            return np.ones((len(images), DIM), np.float32)

    with pytest.raises(ConfigError, match=r"model base .* fine-tuned has other weights"):
        SearchService(index, Encoder())


def test_loading_hides_documents_until_finished_then_restores_settings(target: Target) -> None:
    index = target.make(replicas=2, refresh_interval="5s")
    index.create(DIM)
    with index.loading():
        assert target.settings(index.name)["refresh_interval"] == "-1"
        assert target.settings(index.name)["number_of_replicas"] == "0"
        index.upsert(DOCS)
        # Refresh is off while loading: search and count do not see the documents yet ...
        assert index.count() == 0
        # ... while get is real-time.
        assert index.get("a1") is not None
    assert index.count() == 3
    settings = target.settings(index.name)
    assert settings["refresh_interval"] == "5s" and settings["number_of_replicas"] == "2"


def test_loading_restores_settings_even_when_the_load_fails(target: Target) -> None:
    index = target.make()
    index.create(DIM)
    with pytest.raises(RuntimeError), index.loading():
        raise RuntimeError("load failed")
    assert target.settings(index.name)["refresh_interval"] == "1s"


def test_prune_keeps_the_newest_indexes_and_never_the_live_one(target: Target) -> None:
    alias = target.prefix
    # Given a run of another alias whose name shares the prefix (alias "<prefix>-v2")
    other = target.make("v2-r1")
    other.create(DIM, alias=f"{alias}-v2")
    for run in ("r1", "r2", "r3", "r4"):
        index = target.make(run)
        index.create(DIM, alias=alias)
        deleted = index.swap_alias(alias, keep=2)
    # Then only this alias's old runs go
    assert deleted == [f"{alias}-r2"]
    left = sorted(index.creation_dates(f"{alias}-*"))
    assert left == [f"{alias}-r3", f"{alias}-r4", f"{alias}-v2-r1"]
    assert index.alias_targets(alias) == [f"{alias}-r4"]


def test_given_date_like_metadata_when_indexed_then_it_filters_and_counts_as_a_value(
    target: Target,
) -> None:
    # Given metadata strings that OpenSearch's dynamic mapping would read as a date and a number
    index = target.make(refresh_writes=True)
    index.create(DIM)
    meta = {"study_date": "2019-05-03", "age": "60"}
    index.upsert([Document("d1", "lung nodule", unit([1, 0, 0, 0]), None, meta)])
    # Then they are facets and filters like any other value, as on the embedded engine
    assert index.facets() == {"age": {"60": 1}, "study_date": {"2019-05-03": 1}}
    query = SearchQuery(text="lung", filters={"study_date": ["2019-05-03"]})
    assert [h.image_id for h in index.search(query).hits] == ["d1"]


def test_given_thousands_of_words_when_searched_then_the_cluster_accepts_the_query(
    target: Target,
) -> None:
    # Given 2,000 words, and 3,000 with no separator but hyphens (1,024 clauses is the limit)
    index = target.make(refresh_writes=True)
    index.create(DIM)
    index.upsert(DOCS)
    # Then the cluster answers (no too_many_clauses), and the words still match
    assert index.search(SearchQuery(text="lung " * 2000)).total == 1
    assert index.search(SearchQuery(text="-".join(["femur"] * 3000))).total == 1
    assert index.search(SearchQuery(text="肺" * 5000 + " lung")).total == 1


def test_given_a_multi_az_with_standby_domain_then_no_request_leaves_a_copy_count_it_refuses(
    clock: Clock,
) -> None:
    # Fake: zone awareness needs three zones; the suite's node has one.
    # Given a domain forcing awareness over 3 zones, which refuses 0 or 1 replicas
    cluster = FakeCluster(awareness_zones=3)
    with pytest.raises(SearchIndexError, match="multiple of total awareness attributes"):
        make_index(cluster, clock).create(DIM)
    # When a run is created, loaded and published with the stack's layout (2 replicas, 3 zones)
    index = make_index(cluster, clock, name="medsearch-r2", replicas=2, awareness_zones=3)
    index.create(DIM)
    with index.loading():
        assert index.upsert(DOCS).failed == []
    index.swap_alias("medsearch")
    # Then every request kept 3 copies (replicas stay 2 while loading too) and the run is live
    replicas = {
        r.body["index"].get("number_of_replicas") for r in cluster.requests_to("/_settings", "PUT")
    }
    assert replicas - {None} == {2}
    assert cluster.indexes["medsearch-r2"].settings["number_of_replicas"] == 2
    assert index.with_name("medsearch").count() == len(DOCS)


def test_a_replica_count_the_layout_refuses_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="multiple of 3"):
        OpenSearchConfig(replicas=1, awareness_zones=3)
    assert OpenSearchConfig(replicas=0).load_replicas == 0
    assert OpenSearchConfig(replicas=5, awareness_zones=3).load_replicas == 5


def test_run_index_names_are_valid_opensearch_names() -> None:
    assert run_index_name("medsearch", "2024-06-01T12:00Z#A") == "medsearch-2024-06-01t12-00z-a"
    with pytest.raises(InvalidInputError):
        run_index_name("medsearch", "///")


# --- writes: partial failures and retries ----------------------------------------------------


def test_partial_bulk_failure_is_reported_and_throttled_items_resent(
    cluster: FakeCluster, clock: Clock
) -> None:
    # Fake: injects per-item bulk errors a node cannot be made to give.
    index = make_index(cluster, clock, refresh_writes=True)
    index.create(DIM)
    # Given a2 rejected once with 429 and a3 with a mapping error
    cluster.fail_items(["a2"], status=429)
    cluster.fail_items(["a3"], status=400)
    result = index.upsert(DOCS)
    # Then a2 is resent and lands; a3 is reported with its reason, not dropped
    assert result.written == 2
    # the kind of the rejection, not its reason, which can quote the document
    assert result.failed == [
        ("a3", "400 mapper_parsing_exception (reason of 8 characters not shown)")
    ]
    assert set(cluster.documents("medsearch-run1")) == {"a1", "a2"}
    resent = cluster.requests_to("/_bulk")[-1].body
    assert [line["index"]["_id"] for line in resent[::2]] == ["a2"]


def test_request_level_429_and_5xx_are_retried_with_bounded_exponential_backoff(
    cluster: FakeCluster, clock: Clock
) -> None:
    # Fake: injects 429/5xx answers a node cannot be made to give.
    index = make_index(cluster, clock, backoff_base=1.0, backoff_max=4.0)
    index.create(DIM)
    cluster.fail_requests(status=429, times=2, path="_bulk")
    cluster.fail_requests(status=503, times=2, path="_bulk")
    assert index.upsert(DOCS).written == 3
    # rng() = 0.5 -> delay = 0.75 * step, steps 1, 2, 4, 4 (capped)
    assert clock.delays == [0.75, 1.5, 3.0, 3.0]


def test_backoff_jitter_stays_within_half_to_full_step(cluster: FakeCluster) -> None:
    # Fake: injects 429 answers a node cannot be made to give.
    for value in (0.0, 0.999):
        index = OpenSearchIndex(
            fake_client(cluster),
            "x",
            config=OpenSearchConfig(backoff_base=2.0),
            rng=lambda v=value: v,
        )
        delay = index._backoff(3)  # step 8
        assert 4.0 <= delay <= 8.0


def test_retries_are_bounded_then_the_error_names_the_request(
    cluster: FakeCluster, clock: Clock
) -> None:
    # Fake: injects 5xx answers a node cannot be made to give.
    index = make_index(cluster, clock, max_attempts=3)
    index.create(DIM)
    cluster.fail_requests(status=429, times=10, path="_count")
    with pytest.raises(SearchIndexError, match="_count failed after 3 attempts"):
        index.count()
    assert len(clock.delays) == 2


def test_a_request_budget_ends_retries_in_time_for_the_gateway(cluster: FakeCluster) -> None:
    # Fake: injects 503 answers a node cannot be made to give.
    # Given a cluster that keeps answering 503, and the search API's budget per request
    cluster.fail_requests(503, times=100)
    clock = Clock()
    index = OpenSearchIndex(
        fake_client(cluster),
        "medsearch",
        config=OpenSearchConfig(request_budget=SEARCH_REQUEST_BUDGET_S, max_attempts=20),
        sleep=clock,
        rng=lambda: 0.5,
        clock=lambda: sum(clock.delays),
    )
    # When a search is sent — Then it gives up, naming the budget, before the budget is spent
    with pytest.raises(SearchIndexError, match="within its 8 s budget"):
        index.count()
    assert 0 < sum(clock.delays) < SEARCH_REQUEST_BUDGET_S
    assert 3 * SEARCH_REQUEST_BUDGET_S < API_GATEWAY_TIMEOUT_S
    # and every attempt's own timeout was what was left of the budget
    timeouts = cluster.timeouts
    assert timeouts[0] == SEARCH_REQUEST_BUDGET_S
    assert timeouts == sorted(timeouts, reverse=True) and len(timeouts) > 2


@pytest.mark.parametrize("mode", ["text", "vector", "hybrid-pipeline", "hybrid-client", "facets"])
@pytest.mark.parametrize(("failed", "timed_out"), [(1, False), (0, True)])
def test_a_partial_answer_is_an_error_not_a_short_page(
    cluster: FakeCluster, clock: Clock, mode: str, failed: int, timed_out: bool
) -> None:
    # Fake: a 200 with failed shards or timed_out comes from a node under load, not on demand.
    index = make_index(cluster, clock, hybrid="client" if mode == "hybrid-client" else "pipeline")
    index.create(DIM)
    with index.loading():
        index.upsert(DOCS)
    cluster.partial_results(failed_shards=failed, timed_out=timed_out)
    text = None if mode == "vector" else "lung fracture"
    vector = None if mode == "text" else unit([1, 0, 1, 0])
    with pytest.raises(SearchIndexError, match="only part of the index"):
        if mode == "facets":
            index.facets()
        else:
            index.search(SearchQuery(text=text, vector=vector))
    # and the next answer, whole again, is served
    assert index.search(SearchQuery(text="lung")).total == 1


def test_items_throttled_beyond_the_attempts_are_failed_not_dropped(
    cluster: FakeCluster, clock: Clock
) -> None:
    # Fake: injects per-item 429s a node cannot be made to give.
    index = make_index(cluster, clock, max_attempts=2)
    index.create(DIM)
    cluster.fail_items(["a1"], status=429, times=5)
    result = index.upsert(DOCS)
    assert result.written == 2
    assert result.failed == [("a1", "still rejected after 2 attempts")]


def test_client_errors_are_not_retried(cluster: FakeCluster, clock: Clock) -> None:
    # Fake: injects a 4xx answer and counts the attempts.
    index = make_index(cluster, clock)
    with pytest.raises(SearchIndexError, match="index_not_found"):
        index.count()
    assert clock.delays == []


def test_chunks_are_bounded_by_count_and_bytes(cluster: FakeCluster, clock: Clock) -> None:
    # Fake: counts and measures the bulk requests sent.
    index = make_index(cluster, clock, bulk_max_docs=2)
    index.create(DIM)
    index.upsert(DOCS)
    assert [len(r.body) // 2 for r in cluster.requests_to("/_bulk")] == [2, 1]
    cluster.requests.clear()
    by_bytes = make_index(cluster, clock, bulk_max_bytes=1024)
    long_docs = [Document(f"l{i}", "word " * 120, unit([1, 2, 3, i])) for i in range(3)]
    by_bytes.upsert(long_docs)
    bodies = [r.body for r in cluster.requests_to("/_bulk")]
    assert [len(b) // 2 for b in bodies] == [1, 1, 1]


def test_unencodable_vectors_fail_without_a_request(cluster: FakeCluster, clock: Clock) -> None:
    # Fake: proves no request was sent.
    index = make_index(cluster, clock)
    index.create(DIM)
    bad = [
        Document("nan", "x", np.array([np.nan, 0, 0, 1], dtype=np.float32)),
        Document("zero", "x", np.zeros(DIM, dtype=np.float32)),
    ]
    result = index.upsert(bad)
    assert [i for i, _ in result.failed] == ["nan", "zero"]
    assert cluster.requests_to("/_bulk") == []


def test_delete_counts_existing_documents(loaded: OpenSearchIndex, cluster: FakeCluster) -> None:
    # Fake: inspects the bulk request; the contract deletes on the node too.
    physical = loaded.with_name("medsearch-run1")
    assert physical.delete(["a1", "nope"]) == 1
    assert "a1" not in cluster.documents("medsearch")


# --- reads and parsing -----------------------------------------------------------------------


def test_get_returns_the_document_with_its_vector(loaded: OpenSearchIndex) -> None:
    # Fake: cheap; the contract reads documents back on the node too.
    doc = loaded.get("a1")
    assert doc is not None
    assert doc.caption == DOCS[0].caption and doc.image == DOCS[0].image
    assert dict(doc.metadata) == {"modality": "X-ray", "region": "leg"}
    np.testing.assert_allclose(doc.vector, DOCS[0].vector, atol=1e-6)
    assert loaded.get("missing") is None
    assert loaded.dim == DIM and loaded.count() == 3


def test_get_many_is_one_mget_and_can_leave_vectors_out(
    loaded: OpenSearchIndex, cluster: FakeCluster
) -> None:
    # Fake: counts the requests sent; the contract runs get_many on the node.
    found = loaded.get_many(["a2", "missing", "a1", "a2"], with_vectors=False)
    assert list(found) == ["a2", "a1"]
    assert found["a1"].caption == DOCS[0].caption and found["a1"].vector is None
    request = last(cluster, "/_mget")
    assert request.body == {"ids": ["a2", "missing", "a1"]}
    assert request.params.get("_source_excludes") == "vector"
    with_vectors = loaded.get_many(["a1"])
    np.testing.assert_allclose(with_vectors["a1"].vector, DOCS[0].vector, atol=1e-6)
    assert "_source_excludes" not in last(cluster, "/_mget").params
    assert loaded.get_many([]) == {}
    assert len(cluster.requests_to("/_mget")) == 2


def test_a_result_page_costs_one_lookup_without_vectors(
    loaded: OpenSearchIndex, cluster: FakeCluster
) -> None:
    # Fake: counts the requests sent.
    page = SearchService(loaded, None).search("fracture", mode="text", k=10)
    assert page.results and all(r.caption for r in page.results)
    # (besides the index record, read for the vector size and the filter fields, no document
    # is fetched alone)
    assert cluster.requests_to("/_doc/") == []
    (lookup,) = [r for r in cluster.requests_to("/_mget") if r.body["ids"] != [RECORD_ID]]
    assert lookup.params.get("_source_excludes") == "vector"
    assert lookup.body["ids"] == [r.image_id for r in page.results]


def test_engine_satisfies_the_protocol(loaded: OpenSearchIndex) -> None:
    assert isinstance(loaded, SearchIndex)


def test_facets_are_terms_aggregations(loaded: OpenSearchIndex, cluster: FakeCluster) -> None:
    # Fake: inspects the aggregation request; the contract counts facets on the node.
    facets = loaded.facets()
    assert facets == {"modality": {"CT": 2, "X-ray": 1}, "region": {"chest": 1, "leg": 1}}
    aggs = last(cluster, "/_search").body["aggs"]
    assert aggs["modality"] == {"terms": {"field": "metadata.modality", "size": 50}}
    assert loaded.facets(["region"]) == {"region": {"chest": 1, "leg": 1}}


@pytest.mark.parametrize("cosine", [-0.9, -0.2, 0.0, 0.35, 1.0])
def test_knn_scores_convert_back_to_cosine(cosine: float) -> None:
    # Given OpenSearch's documented score per space — Then the cosine comes back.
    faiss = 1 + cosine if cosine >= 0 else 1 / (1 - cosine)
    lucene = (1 + cosine) / 2
    assert knn_score_to_cosine(faiss, "innerproduct") == pytest.approx(cosine)
    assert knn_score_to_cosine(lucene, "cosinesimil") == pytest.approx(cosine)


def test_vector_hits_carry_cosines(loaded: OpenSearchIndex) -> None:
    # Fake: cheap; the contract checks cosines on the node too.
    query = unit([1, 0.5, 0, 0])
    page = loaded.search(SearchQuery(vector=query, k=3))
    expected = sorted(((float(d.vector @ query), d.image_id) for d in DOCS), reverse=True)
    assert [h.image_id for h in page.hits] == [i for _, i in expected]
    assert [h.vector_score for h in page.hits] == pytest.approx([c for c, _ in expected], abs=1e-6)


def test_pipeline_and_client_fusion_rank_alike(cluster: FakeCluster, clock: Clock) -> None:
    # Fake: many random corpora at no cost; the contract fuses both ways on the node.
    # Given the same index read through both hybrid paths
    rng = np.random.default_rng(5)
    docs = [
        Document(
            f"d{i}", f"lung nodule {'fracture ' * (i % 3)}case {i}", unit(rng.normal(size=DIM))
        )
        for i in range(30)
    ]
    writer = make_index(cluster, clock, refresh_writes=True)
    writer.create(DIM, loading=False)
    writer.upsert(docs)
    pipeline = writer.with_name("medsearch-run1")
    client = make_index(cluster, clock, hybrid="client")
    query = SearchQuery(text="fracture nodule", vector=unit(rng.normal(size=DIM)), alpha=0.4, k=7)
    # Then pages, totals, scores and component scores agree
    a, b = pipeline.search(query), client.search(query)
    assert a.total == b.total == 30
    assert [h.image_id for h in a.hits] == [h.image_id for h in b.hits]
    for x, y in zip(a.hits, b.hits, strict=True):
        assert x.score == pytest.approx(y.score, abs=1e-6)
        assert x.text_score == pytest.approx(y.text_score)
        assert x.vector_score == pytest.approx(y.vector_score)


def test_pipeline_weights_follow_alpha() -> None:
    weights = build_pipeline_body(0.7)["phase_results_processors"][0]["normalization-processor"][
        "combination"
    ]["parameters"]["weights"]
    assert weights == [0.3, 0.7] and sum(weights) == 1.0
    with pytest.raises(InvalidInputError):
        build_pipeline_body(1.5)


def test_search_validates_the_query(loaded: OpenSearchIndex) -> None:
    # Fake: refused before any request is sent.
    with pytest.raises(InvalidInputError, match="text, a vector"):
        loaded.search(SearchQuery())
    with pytest.raises(InvalidInputError, match="k must be"):
        loaded.search(SearchQuery(text="x", k=0))
    with pytest.raises(InvalidInputError, match="dimensions"):
        loaded.search(SearchQuery(vector=np.ones(DIM + 1, dtype=np.float32)))
    with pytest.raises(InvalidInputError, match="alpha"):
        loaded.search(SearchQuery(text="x", vector=unit([1, 0, 0, 0]), alpha=2.0))


# --- connecting ------------------------------------------------------------------------------


def test_connect_with_basic_auth_from_the_url() -> None:
    client = connect("https://admin:s%40cret@search.example.com:9200/prefix")
    connection = client.transport.get_connection()
    assert isinstance(connection, RequestsHttpConnection)
    assert connection.session.auth == ("admin", "s@cret")
    assert connection.host == "https://search.example.com:9200"
    assert connection.url_prefix == "/prefix"
    assert client.transport.max_retries == 0  # the engine retries with back-off itself


def test_connect_with_sigv4_signs_requests() -> None:
    # Given a credentials object made at the edge (botocore's, as a boto3 session returns)
    from botocore.credentials import Credentials

    client = connect(
        "https://vpc-domain.eu-west-1.es.amazonaws.com",
        credentials=Credentials("AKIDEXAMPLE", "secret"),
        region="eu-west-1",
        service="es",
    )
    auth = client.transport.get_connection().session.auth
    import requests

    prepared = requests.Request(
        "GET", "https://vpc-domain.eu-west-1.es.amazonaws.com/_count"
    ).prepare()
    signed = auth(prepared)
    assert signed.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/es/aws4_request" in signed.headers["Authorization"]


@pytest.mark.parametrize(
    ("url", "kwargs", "message"),
    [
        ("search.example.com", {}, "http"),
        ("https://h", {"credentials": object()}, "region"),
        ("https://h", {"credentials": object(), "http_auth": ("a", "b"), "region": "x"}, "either"),
        ("https://h", {"service": "aoss"}, "Serverless"),
    ],
)
def test_connect_rejects_bad_settings(url: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        connect(url, **kwargs)


def test_config_rejects_unknown_engine() -> None:
    with pytest.raises(ConfigError):
        OpenSearchConfig(engine="nmslib")  # type: ignore[arg-type]


def test_bulk_vectors_round_trip_float32_exactly() -> None:
    # Given float32 values of every magnitude — When written as bulk JSON — Then parsed back
    # as float32 they are bit-identical.
    rng = np.random.default_rng(0)
    vector = (rng.normal(size=512) * 10.0 ** rng.integers(-12, 3, size=512)).astype(np.float32)
    from medsearch.index.opensearch import build_bulk_lines

    _, source = build_bulk_lines(Document("v", "c", vector)).splitlines()
    back = np.asarray(json.loads(source)["vector"], dtype=np.float32)
    assert np.array_equal(back, vector)


def test_long_query_texts_stay_under_the_clause_limit(
    loaded: OpenSearchIndex, cluster: FakeCluster
) -> None:
    # Fake: compares the text sent (the node's answer: test_given_thousands_of_words...).
    # Given 2,000 words (OpenSearch refuses a match of more than 1,024 clauses)
    loaded.search(SearchQuery(text="lung " * 2000))
    sent = last(cluster, "/_search").body["query"]["match"]["caption"]["query"]
    # Then at most 1,000 words are sent, and short texts go unchanged
    assert len(sent.split()) == 1000
    loaded.search(SearchQuery(text="lung (nodule)*"))
    assert last(cluster, "/_search").body["query"]["match"]["caption"]["query"] == "lung (nodule)*"


@pytest.mark.parametrize(
    ("module", "blocked"),
    [
        ("medsearch.index.opensearch", {"torch", "tantivy", "faiss", "boto3", "botocore"}),
        ("medsearch.loader", {"torch", "tantivy", "faiss", "boto3", "botocore"}),
        # Lambda's runtime has boto3/botocore (Powertools uses them); the rest must stay out.
        ("lambdas.index_loader.handler", {"torch", "tantivy", "faiss"}),
    ],
)
def test_the_opensearch_path_imports_without_heavy_libraries(
    module: str, blocked: set[str], python_without: PythonWithout
) -> None:
    # The search API Lambda reads through this engine and ships no torch, tantivy or faiss.
    result = python_without(blocked, f"import {module}\n")
    assert result.returncode == 0, result.stderr


def test_given_tantivy_missing_when_a_run_index_body_is_built_then_it_has_the_analysis(
    python_without: PythonWithout,
) -> None:
    # The index loader Lambda creates run indexes and ships without tantivy.
    code = (
        "from medsearch.index.opensearch import OpenSearchConfig, build_index_body\n"
        "body = build_index_body(8, OpenSearchConfig())\n"
        "assert body['settings']['analysis'], body\n"
    )
    result = python_without({"tantivy", "torch", "faiss"}, code)
    assert result.returncode == 0, result.stderr


def test_given_opensearch_serverless_when_configured_then_both_lambdas_refuse_it_at_start() -> None:
    # Given service "aoss" for the search side and for the loader
    from lambdas.index_loader.handler import IndexLoaderSettings
    from medsearch.settings import load_settings

    with pytest.raises(ConfigError, match=r"Serverless .* custom _id"):
        load_settings(engine="opensearch", opensearch_url="https://h", opensearch_service="aoss")
    with pytest.raises(ValueError, match=r"Serverless .* custom _id"):
        IndexLoaderSettings(
            opensearch_url="https://h", manifest_url="s3://b/m.jsonl", opensearch_service="aoss"
        )


def test_ef_search_goes_with_each_knn_query_and_never_below_k() -> None:
    # The lucene engine ignores the index's ef_search setting: the query carries it.
    vector = unit([1, 0, 0, 0])
    assert build_knn_query(vector, 10, {}, ef_search=128)["knn"]["vector"]["method_parameters"] == {
        "ef_search": 128
    }
    deep = build_knn_query(vector, 300, {}, ef_search=128)["knn"]["vector"]
    assert deep["method_parameters"] == {"ef_search": 300}
    assert "method_parameters" not in build_knn_query(vector, 10, {})["knn"]["vector"]


def test_given_a_faiss_index_when_read_with_the_default_config_then_scores_are_cosines(
    cluster: FakeCluster, clock: Clock
) -> None:
    # Fake: the node has no faiss libraries.
    # Given a run built with faiss (inner product) and a reader configured for lucene
    run = make_index(cluster, clock, engine="faiss")
    run.create(DIM, alias="medsearch")
    with run.loading():
        run.upsert(DOCS)
    run.swap_alias("medsearch")
    reader = OpenSearchIndex(fake_client(cluster), "medsearch")
    assert reader.config.space_type == "cosinesimil"
    # Then the reader converts scores in the index's own space: vector_score is the cosine
    query = unit([1, 0.5, 0, 0])
    hits = reader.search(SearchQuery(vector=query, k=3)).hits
    expected = {d.image_id: float(np.dot(d.vector, query)) for d in DOCS}
    assert {h.image_id: h.vector_score for h in hits} == pytest.approx(expected, abs=1e-5)


def test_bulk_requests_in_flight_together_lose_no_document(
    cluster: FakeCluster, clock: Clock
) -> None:
    # Fake: throttles chosen items and fails a chosen request, which a healthy node never does.
    # Given two bulk requests in flight at a time, one document per request
    docs = [Document(f"c{i}", f"case {i}", unit([1, i, 0, 0])) for i in range(9)]
    index = make_index(cluster, clock, bulk_max_docs=1, bulk_concurrency=2)
    index.create(DIM)
    # When some items are throttled once, every document lands exactly once
    cluster.fail_items(["c2", "c5"], status=429, times=1)
    result = index.upsert(docs)
    assert (result.written, result.failed) == (9, [])
    index.refresh()
    assert index.count() == 9
    # And a request that fails for good stops the load with its error, not a silent gap
    cluster.fail_requests(status=400, times=1, path="_bulk")
    with pytest.raises(SearchIndexError, match="400"):
        index.upsert(docs)


def test_a_merge_longer_than_its_wait_goes_on_and_a_second_call_finishes_it(
    cluster: FakeCluster, clock: Clock
) -> None:
    # Fake: a merge needing more domain time than its caller waits is a slow node's behaviour.
    # Given a loaded run whose merge needs 50 s of domain time
    index = make_index(cluster, clock)
    index.create(DIM)
    index.begin_load()
    assert index.upsert(DOCS).failed == []
    cluster.merge_seconds = 50.0
    # When the load finishes waiting 30 s for it: MergeRunning, and the replicas wait too
    with pytest.raises(MergeRunning, match="goes on in the domain"):
        index.finish_load(merge_wait=30)
    assert cluster.indexes["medsearch-run1"].settings["number_of_replicas"] == 0
    # Then the next call waits out the rest and finishes the load
    index.finish_load(merge_wait=30)
    assert cluster.indexes["medsearch-run1"].settings["number_of_replicas"] == 1
    assert index.segments() == 1
    forcemerges = [r for r in cluster.requests if r.path.endswith("/_forcemerge")]
    assert len(forcemerges) == 2  # never retried as a failure
