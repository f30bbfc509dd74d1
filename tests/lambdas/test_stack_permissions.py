"""The loader and the search API, unchanged, with exactly the OpenSearch access the stack grants.

The domain's access policy is read from the synthesized CDK template and enforced by the fake
cluster as OpenSearch Service does (``es:ESHttp<Method>`` on ``<domain ARN>/<path>``,
:mod:`tests.support.domain_access`): the loader Lambda, configured from its function's environment
in the template, loads, publishes and prunes three runs with the loader role's grant; then every
search mode, facets, counts and uploads run with the search role's grant. Not one request may be
refused, and each grant refuses what belongs to the other.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medsearch.constants import INDEX_LOADER_HANDLER, SEARCH_REQUEST_BUDGET_S
from medsearch.index.opensearch import OpenSearchConfig, OpenSearchIndex
from medsearch.search import SearchService
from medsearch.vectors import normalize
from tests.infra.cfn import ACCOUNT, REGION, Cfn
from tests.lambdas.test_index_loader import write_run
from tests.support.aws_events import LambdaContextStub, sqs_event
from tests.support.domain_access import DomainAccess
from tests.support.fake_opensearch import FakeCluster, fake_client

DOMAIN_ARN = f"arn:aws:es:{REGION}:{ACCOUNT}:domain/medsearch"
# The loader's settings the test itself decides: where the fake cluster and moto bucket are.
LOCAL = ("MEDSEARCH_OPENSEARCH_URL", "MEDSEARCH_MANIFEST_URL")


@dataclass
class Recording:
    """A domain access policy that remembers what it refused."""

    access: DomainAccess
    refused: list[tuple[str, str]] = field(default_factory=list)

    def refusal(self, method: str, path: str) -> str | None:
        reason = self.access.refusal(method, path)
        if reason is not None:
            self.refused.append((method, path))
        return reason


@dataclass(frozen=True)
class Grants:
    """The stack's domain access policy and the two function roles it names."""

    statements: list[dict[str, Any]]
    loader: str
    search: str
    loader_env: dict[str, str]

    def as_role(self, principal: str) -> Recording:
        return Recording(DomainAccess(self.statements, DOMAIN_ARN, principal))


@pytest.fixture(scope="module")
def grants(small_stack: Any) -> Grants:
    cfn = Cfn(small_stack[1].to_json())
    _, domain = cfn.one("AWS::OpenSearchService::Domain")
    loader_fn = next(
        props
        for props in (cfn.props(k) for k in cfn.of_type("AWS::Lambda::Function"))
        if props.get("Handler") == INDEX_LOADER_HANDLER
    )
    return Grants(
        statements=cfn.resolve(domain["AccessPolicies"])["Statement"],
        loader=cfn.arn(cfn.logical_id_of("AWS::IAM::Role", "LoaderRole")),
        search=cfn.arn(cfn.logical_id_of("AWS::IAM::Role", "SearchRole")),
        loader_env=cfn.resolve(loader_fn["Environment"]["Variables"]),
    )


class TinyEncoder:
    """Three-dimensional vectors, like the loader test's runs: text by its length, images by
    their mean colour."""

    model_id = "tiny-3d"
    dim = 3

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        rows = [[1.0, float(len(t) % 5), 0.5] for t in texts]
        return normalize(np.asarray(rows, dtype=np.float32))

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        rows = [
            np.asarray(i.convert("RGB"), dtype=np.float32).mean(axis=(0, 1)) + 1 for i in images
        ]
        return normalize(np.asarray(rows, dtype=np.float32))


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def published(
    loader_handler: ModuleType,
    loader_env: str,
    cluster: FakeCluster,
    grants: Grants,
    monkeypatch: pytest.MonkeyPatch,
) -> Recording:
    """Three runs loaded by the loader Lambda from SQS, then published by its publish action,
    as the pipeline does, with the loader role's grant."""
    for name, value in grants.loader_env.items():
        if name not in LOCAL:
            monkeypatch.setenv(name, value)
    role = grants.as_role(grants.loader)
    cluster.access = role
    for run in ("run-1", "run-2", "run-3"):
        keys = write_run(loader_env, run)
        answer = loader_handler.handler(
            sqs_event(loader_env, [[key] for key in keys]), LambdaContextStub()
        )
        assert answer == {"batchItemFailures": []}
        # The stack's loader does not publish by itself: the pipeline asks it to, once loaded.
        published = loader_handler.handler(
            {"action": "publish", "output_prefix": f"s3://{loader_env}/vectors/{run}"},
            LambdaContextStub(),
        )
        assert published == {"published": True, "merging": False}
    return role


def test_the_loader_loads_publishes_and_prunes_runs_with_its_grant_alone(
    published: Recording, cluster: FakeCluster
) -> None:
    assert published.refused == []
    assert cluster.aliases == {"medsearch": {"medsearch-run-3"}}
    # Two runs kept (the live one and the one before), the oldest deleted.
    assert set(cluster.indexes) == {"medsearch-run-2", "medsearch-run-3"}
    # It did create, bulk-load, reconfigure, move the alias and delete: all of it granted.
    methods = {
        (r.method, r.path.split("/")[1].split("-")[0] if "/" in r.path else r.path)
        for r in cluster.requests
    }
    assert ("DELETE", "medsearch") in methods and ("POST", "_aliases") in methods


@pytest.mark.parametrize("hybrid", ["pipeline", "client"])
def test_every_search_mode_runs_with_the_search_grant_alone(
    published: Recording, cluster: FakeCluster, grants: Grants, hybrid: str
) -> None:
    role = grants.as_role(grants.search)
    cluster.access = role
    # As the search Lambda builds its index (lambdas/search_api/handler.py: build).
    config = OpenSearchConfig(request_budget=SEARCH_REQUEST_BUDGET_S, hybrid=hybrid)  # type: ignore[arg-type]
    service = SearchService(
        OpenSearchIndex(fake_client(cluster), "medsearch", config=config), TinyEncoder()
    )
    filters = [("modality", "MRI")]
    for mode in ("text", "vector", "hybrid"):
        answer = service.search("knee MRI case", mode=mode, filters=filters)
        assert answer.results, mode
    first = answer.results[0].image_id
    for mode in ("image", "image_text"):
        similar = service.similar(first, mode=mode)
        assert similar.results and first not in {r.image_id for r in similar.results}
    assert service.search_upload(png(), q="knee").results
    assert service.index.facets()["modality"] == {"MRI": 6}
    assert service.index.count() == 6 and service.index.dim == 3
    assert role.refused == []


def test_each_grant_refuses_what_belongs_to_the_other(
    published: Recording, cluster: FakeCluster, grants: Grants
) -> None:
    from opensearchpy.exceptions import AuthorizationException

    client = fake_client(cluster)
    cluster.access = grants.as_role(grants.search)
    for method, path in [
        ("POST", "/medsearch-run-3/_bulk"),
        ("PUT", "/medsearch-run-4"),
        ("POST", "/_aliases"),
        ("DELETE", "/medsearch-run-2"),
        ("GET", "/medsearch/_mapping"),
        ("PUT", "/_search/pipeline/p"),
        ("GET", "/"),
        ("POST", "/medsearch-run-2/_search"),  # a run index directly, not the alias
    ]:
        with pytest.raises(AuthorizationException):
            client.transport.perform_request(method, path, body={} if method != "GET" else None)
    cluster.access = grants.as_role(grants.loader)
    for method, path in [
        ("PUT", "/_cluster/settings"),
        ("PUT", "/_search/pipeline/p"),
        ("POST", "/other-index/_bulk"),
        ("DELETE", "/medsearch"),  # the alias's name, not a run index
    ]:
        with pytest.raises(AuthorizationException):
            client.transport.perform_request(method, path, body={})
