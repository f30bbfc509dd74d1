"""The search service on OpenSearch with only the search API's read-only role, over a run that
the loader published with its own role.

An Amazon OpenSearch Service domain with fine-grained access control gives the search Lambda a
role limited to search, ``_msearch``, ``_mget`` and ``_count``; the fake cluster enforces that
role (the suite's node has no security plugin). Every mode, facets and
filters must work with it: nothing on the search path may read mappings, create search
pipelines or ask the cluster itself.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import ColourEncoder

from medsearch.index.base import Document
from medsearch.index.opensearch import OpenSearchConfig, OpenSearchIndex
from medsearch.search import SearchService
from tests.support.fake_opensearch import FakeCluster, fake_client


@pytest.fixture
def read_only(corpus: list[Document]) -> FakeCluster:
    """A run published with the loader's role, then the cluster switched to the search role."""
    cluster = FakeCluster()
    cluster.role = "loader"
    run = OpenSearchIndex(fake_client(cluster), "medsearch-r1", config=OpenSearchConfig())
    run.create(len(next(d.vector for d in corpus if d.vector is not None)), alias="medsearch")
    with run.loading():
        assert run.upsert(corpus).failed == []
    run.swap_alias("medsearch")
    cluster.role = "search"
    cluster.requests.clear()
    return cluster


@pytest.mark.parametrize("hybrid", ["pipeline", "client"])
def test_given_the_read_only_role_then_every_mode_facet_and_filter_answers(
    read_only: FakeCluster, encoder: ColourEncoder, make_upload: Any, hybrid: str
) -> None:
    config = OpenSearchConfig(hybrid=hybrid)  # type: ignore[arg-type]
    index = OpenSearchIndex(fake_client(read_only), "medsearch", config=config)
    service = SearchService(index, encoder)
    filters = [("modality", "CT"), ("modality", "MRI")]
    answers = [
        service.search("red lung nodule", mode=mode, filters=filters)
        for mode in ("text", "vector", "hybrid")
    ]
    assert all(a.results for a in answers)
    assert all(r.metadata["modality"] in ("CT", "MRI") for a in answers for r in a.results)
    first = answers[0].results[0].image_id
    for mode in ("image", "image_text"):
        similar = service.similar(first, mode=mode)
        assert similar.results and first not in {r.image_id for r in similar.results}
    assert service.search_upload(make_upload("red"), q="nodule").results
    assert service.index.facets()["modality"]["CT"] >= 1
    assert service.index.count() > 0 and service.index.dim == encoder.dim
    # and nothing was refused on the way
    assert not [r for r in read_only.requests if r.path == "/" or "_mapping" in r.path]
    assert not read_only.requests_to("/_search/pipeline")


def test_the_fake_refuses_what_the_read_only_role_may_not_do(read_only: FakeCluster) -> None:
    client = fake_client(read_only)
    from opensearchpy.exceptions import AuthorizationException

    for method, path in [
        ("GET", "/medsearch/_mapping"),
        ("GET", "/medsearch/_field_caps"),
        ("GET", "/medsearch/_doc/x"),
        ("PUT", "/_search/pipeline/p"),
        ("GET", "/"),
        ("POST", "/medsearch/_bulk"),
        ("PUT", "/medsearch/_settings"),
    ]:
        with pytest.raises(AuthorizationException):
            client.transport.perform_request(method, path, body={} if method != "GET" else None)


def test_the_loader_role_may_change_indexes_but_nothing_cluster_wide(
    read_only: FakeCluster,
) -> None:
    read_only.role = "loader"
    client = fake_client(read_only)
    from opensearchpy.exceptions import AuthorizationException

    assert client.transport.perform_request("GET", "/medsearch/_mapping")
    for path in ("/_cluster/settings", "/_search/pipeline/p"):
        with pytest.raises(AuthorizationException):
            client.transport.perform_request("PUT", path, body={})
