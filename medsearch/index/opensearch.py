"""The OpenSearch engine: :class:`SearchIndex` on an OpenSearch domain (the one opensearch-py user).

Layout of a deployment:

- One physical index per pipeline run (``<alias>-<run id>``), created with the mapping of
  :func:`build_index_body`: captions as ``text`` (the analysis of :mod:`medsearch.index.analysis`,
  so BM25 terms match the embedded engine), the CLIP vector as an HNSW ``knn_vector``, metadata
  as ``keyword`` fields under ``metadata.*`` and the image location stored.
- The vector space is ``lucene``/``cosinesimil`` by default: its score ``(1 + cos) / 2`` is affine
  in the cosine, so the search pipeline's min-max fusion ranks exactly like :mod:`medsearch.fusion`
  and the embedded engine. ``faiss``/``innerproduct`` (unit vectors: inner product = cosine) is
  faster on large indexes, but its score is ``1 + cos`` only for positive cosines (``1 / (1 - cos)``
  below zero), so fused rankings can differ slightly where cosines are negative.
- Loading runs with ``refresh_interval: -1`` and no replicas (:meth:`OpenSearchIndex.loading`),
  or with the published replicas where the domain forces zone awareness (Multi-AZ with standby:
  every index's copies must be a multiple of its zones, so 0 replicas is refused);
  the settings are restored afterwards, then one ``_aliases`` request moves the read alias to the
  new index atomically (blue/green) and old run indexes are pruned.
- Every request goes through one retry policy: 429 and 5xx answers and connection errors are
  retried with exponential back-off and jitter, a bounded number of times (and within
  ``request_budget`` seconds where set). Bulk items rejected with 429 are resent; other per-item
  errors come back in :class:`UpsertResult.failed`. This is hand-written rather than
  opensearch-py's ``helpers.streaming_bulk`` and the client's ``retry_on_status``: those retry
  a 5xx answer to a whole bulk request not at all (streaming_bulk) or without back-off, jitter
  or a time budget (the transport), and sleep for real, so the 429-storm and budget guarantees
  could not be tested without waiting. Index, alias and settings calls go through the same
  policy, so they use the raw transport rather than ``indices.*`` helpers.
- With several shards, each hybrid sub-query of the pipeline path returns its top N from every
  shard and the normalization processor fuses those (at most shards x N per list), while client
  fusion normalises the global top N: the two agree on the head of the ranking and may differ in
  its tail, where a document is in one list's top N on its shard but not overall.

What readers need to know of a run index is in one small document in it, the index record
(``_id`` :data:`RECORD_ID`, which no image id can be; :func:`build_index_record`): vector
dimension, engine and space, the BM25 scale, the model that made the vectors (its id and weight
fingerprint, which the search service compares with its encoder at startup), and (written when a
load finishes) the metadata fields to filter on. Readers fetch it with ``_mget``, so the search
side needs no more than search, ``_msearch``, ``_mget`` and ``_count``: never ``_mapping`` or a
cluster permission. The record has no caption, vector or metadata, so no search, facet or vector
count sees it, and :meth:`OpenSearchIndex.count` leaves it out.

Scores: BM25 scores are reported as Lucene's ``BM25Similarity`` computes them, the same on every
engine (:mod:`medsearch.index.analysis`): the record says how much larger the creating cluster's
raw scores are (2.2 for OpenSearch before 3.0, whose default is ``LegacyBM25Similarity``; 1 from
3.0), and readers divide by it. kNN scores are
converted back from OpenSearch's score to the cosine (see :func:`knn_score_to_cosine`), so hits
carry the same numbers as the embedded engine.

Every query is one request. Text: a ``match`` whose total is counted up to
``total_hits_limit`` (then ``total_relation="gte"``). Vector: a ``knn`` cut at the page's end.
Hybrid (``hybrid="client"``, the default): one ``_msearch`` of both sub-queries' top N, fused
by :mod:`medsearch.fusion`, so each hit has the raw scores it was fused from and the ranking is
the embedded engine's; or (``hybrid="pipeline"``) one hybrid query through a temporary search
pipeline sent in the request itself, with the ``normalization-processor`` (``min_max``,
``arithmetic_mean``, weights ``[1 - alpha, alpha]``, alpha rounded to :data:`ALPHA_DECIMALS`
decimals) and named sub-queries whose scores come back per hit; searching needs read
permissions only either way (no ``PUT _search/pipeline``, a cluster permission). Vector and
hybrid totals build on counts a finished load writes into the index record (documents with a
vector, captioned ones without); filtered queries count in an aggregation of the same request.
A query with a ``vector_floor`` (a text query on an index that records one) counts its total
from the lists instead (:func:`medsearch.fusion.confident_total`): a vector query asks for the
top ``candidates``, and a hybrid one is fused client-side on either setting, since only the two
lists tell which documents clear the floor. Client-fused hits carry the weighted parts of
their score (``text_part``, ``vector_part``); pipeline-fused ones do not.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

import numpy as np
from opensearchpy import OpenSearch, RequestsHttpConnection
from opensearchpy.exceptions import ConnectionError as TransportConnectionError
from opensearchpy.exceptions import ConnectionTimeout, TransportError
from opensearchpy.helpers.signer import RequestsAWSV4SignerAuth

from medsearch import fusion
from medsearch.errors import ConfigError, InvalidInputError, MergeRunning, SearchIndexError
from medsearch.index.analysis import (
    ANALYZER_NAME,
    LEGACY_BM25_FACTOR,
    OPENSEARCH_ANALYSIS,
    bm25_scale_for_version,
)
from medsearch.index.base import (
    MAX_K,
    Document,
    Filters,
    Hit,
    IndexModel,
    SearchPage,
    SearchQuery,
    TotalRelation,
    UpsertResult,
)
from medsearch.relevance import VectorFloor
from medsearch.settings import SERVERLESS_REFUSAL
from medsearch.vectors import normalize

log = logging.getLogger(__name__)

# Field names in the OpenSearch documents.
ID_FIELD = "image_id"
TEXT_FIELD = "caption"
VECTOR_FIELD = "vector"
IMAGE_FIELD = "image"
METADATA_FIELD = "metadata"
RECORD_FIELD = "index_record"
# The index record's id: a colon is never in an image id ([A-Za-z0-9._-]), so none collides.
RECORD_ID = "medsearch:index"
# Names of the hybrid sub-queries (their scores come back per hit) and of the count aggregations.
TEXT_QUERY_NAME = "text"
VECTOR_QUERY_NAME = "vector"
VECTORS_AGG = "vectors"
NO_VECTOR_AGG = "no_vector"

# A finished run index is merged to segments of at most this many documents per shard. kNN
# search visits every segment's graph: at 185k 512-d documents on one 2-core node, kNN top 10
# took 47 ms p50 over the 15 segments a load leaves, 25-29 ms over 4-8, 18 ms over one; the merge
# rebuilds the graphs (minutes at that size, once per run), so one segment up to this size.
MERGE_DOCS_PER_SEGMENT = 200_000
# Seconds one force-merge request may take (it runs on even if the client gives up).
MERGE_TIMEOUT_S = 3600
# Hybrid pipelines are cached per alpha at this precision (weights must sum to exactly 1).
ALPHA_DECIMALS = 2
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# A match query makes one clause per term; OpenSearch refuses more than 1024 (max_clause_count),
# so longer query texts are cut after this many words.
MAX_QUERY_TERMS = 1000
_WORD = re.compile(r"[^\W_]+")
# OpenSearch index names: lowercase, none of \ / * ? " < > | space , # and no leading - _ +.
_INDEX_NAME_BAD = re.compile(r"[^a-z0-9._-]+")

Engine = Literal["faiss", "lucene"]
HybridMode = Literal["pipeline", "client"]

# Each engine's similarity space for unit vectors (both rank by cosine).
SPACE_TYPES: dict[str, str] = {"faiss": "innerproduct", "lucene": "cosinesimil"}


@dataclass(frozen=True)
class OpenSearchConfig:
    """How indexes are built, loaded and queried (defaults suit a small single-node domain)."""

    engine: Engine = "lucene"
    m: int = 16
    ef_construction: int = 128
    ef_search: int = 128
    shards: int = 1
    replicas: int = 1
    # Zones whose number the domain makes every index's total copies (1 + replicas) a multiple
    # of: 3 for Multi-AZ with standby, else 1. The stack knows its layout and sets it.
    awareness_zones: int = 1
    refresh_interval: str = "1s"
    # "client": one _msearch of both top-N lists, fused by medsearch.fusion (exact component
    # scores, the embedded engine's ranking, no plugin needed); "pipeline": one hybrid query
    # fused by neural-search's normalization processor. Both take one round trip; client is the
    # cheaper (bench/opensearch.py) and the default.
    hybrid: HybridMode = "client"
    bulk_max_docs: int = 500
    # Bulk requests in flight at once: one shard indexes each request on one thread, so a second
    # request keeps a second core busy (measured 1.4x the documents/s on a 2-core node).
    bulk_concurrency: int = 2
    # Totals are counted exactly up to this many matches, then reported as a lower bound ("gte"),
    # as OpenSearch itself does by default: an exact count visits every match.
    total_hits_limit: int = 10_000
    bulk_max_bytes: int = 5 * 1024 * 1024
    max_attempts: int = 8
    backoff_base: float = 0.2
    backoff_max: float = 20.0
    keep_indexes: int = 2
    facet_size: int = 50
    # Seconds one request may take, its retries included (None: only max_attempts bounds it).
    # The search API sets it so that an answer comes before API Gateway's timeout.
    request_budget: float | None = None
    # Refresh after every upsert/delete call (read-your-writes for tests and small admin edits);
    # bulk loads leave it off and refresh once in finish_load.
    refresh_writes: bool = False

    def __post_init__(self) -> None:
        if self.engine not in SPACE_TYPES:
            raise ConfigError(f"engine must be one of {sorted(SPACE_TYPES)}, got {self.engine!r}")
        if self.hybrid not in ("pipeline", "client"):
            raise ConfigError(f"hybrid must be 'pipeline' or 'client', got {self.hybrid!r}")
        for name in (
            "m",
            "ef_construction",
            "ef_search",
            "shards",
            "bulk_max_docs",
            "bulk_concurrency",
            "total_hits_limit",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.replicas < 0 or self.keep_indexes < 1 or self.max_attempts < 1:
            raise ConfigError("replicas must be >= 0, keep_indexes and max_attempts >= 1")
        if self.awareness_zones < 1 or (1 + self.replicas) % self.awareness_zones:
            raise ConfigError(
                f"{self.replicas} replicas make {1 + self.replicas} copies of each shard, which a "
                f"domain with {self.awareness_zones} awareness zones refuses: give replicas so "
                f"that 1 + replicas is a multiple of {self.awareness_zones}"
            )
        if self.bulk_max_bytes < 1024:
            raise ConfigError("bulk_max_bytes must be at least 1024")
        if self.request_budget is not None and self.request_budget <= 0:
            raise ConfigError("request_budget must be positive seconds (or None)")

    @property
    def load_replicas(self) -> int:
        """Replicas while bulk loading: none where the domain allows one copy, else the same."""
        return 0 if self.awareness_zones == 1 else self.replicas

    @property
    def space_type(self) -> str:
        """The kNN space of the configured engine."""
        return SPACE_TYPES[self.engine]


# --- connecting ---------------------------------------------------------------------------------


def connect(
    url: str,
    *,
    http_auth: Any | None = None,
    credentials: Any | None = None,
    region: str | None = None,
    service: Literal["es"] = "es",
    timeout: float = 30.0,
    verify_certs: bool | None = None,
    connection_class: type | None = None,
    **connection_kwargs: Any,
) -> OpenSearch:
    """Return a client for ``url`` with SigV4 (``credentials`` + ``region``) or basic auth.

    ``credentials`` is a botocore credentials object made by the caller (the Lambda edge), so this
    module creates no AWS session; ``http_auth`` may be any auth object or a ``(user, password)``
    pair; ``https://user:password@host`` also gives basic auth. Certificates are verified for
    https unless ``verify_certs=False`` (a self-managed test cluster). Transport-level retries are
    off: :class:`OpenSearchIndex` retries with back-off itself.
    """
    if service != "es":
        raise ConfigError(SERVERLESS_REFUSAL)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"OpenSearch URL must be http(s)://host[:port], got {url!r}")
    if credentials is not None:
        if http_auth is not None:
            raise ConfigError("give either credentials (SigV4) or http_auth, not both")
        if not region:
            raise ConfigError("SigV4 needs the AWS region of the domain")
        http_auth = RequestsAWSV4SignerAuth(credentials, region, service)
    elif http_auth is None and parts.username:
        http_auth = (unquote(parts.username), unquote(parts.password or ""))
    use_ssl = parts.scheme == "https"
    host = {"host": parts.hostname, "port": parts.port or (443 if use_ssl else 80)}
    if parts.path.strip("/"):
        host["url_prefix"] = parts.path.strip("/")
    return OpenSearch(
        hosts=[host],
        http_auth=http_auth,
        use_ssl=use_ssl,
        verify_certs=use_ssl if verify_certs is None else verify_certs,
        ssl_show_warn=verify_certs is not False,
        connection_class=connection_class or RequestsHttpConnection,
        timeout=timeout,
        max_retries=0,
        retry_on_timeout=False,
        **connection_kwargs,
    )


def run_index_name(alias: str, run_id: str) -> str:
    """Return the physical index of a pipeline run: ``<alias>-<run id>``, lowercased and cleaned."""
    cleaned = _INDEX_NAME_BAD.sub("-", f"{alias}-{run_id}".lower()).strip("-_.+")
    if not cleaned or cleaned == alias.lower() or len(cleaned.encode()) > 255:
        raise InvalidInputError(f"cannot make an index name from alias {alias!r}, run {run_id!r}")
    return cleaned


# --- request bodies (pure functions: tested against golden JSON) -------------------------------


def build_index_body(
    dim: int,
    config: OpenSearchConfig,
    *,
    loading: bool = True,
    alias: str | None = None,
) -> dict[str, Any]:
    """Return the settings and mappings of a run index (no replicas, no refresh while loading).

    The mapping's ``_meta`` records, for the loader, the published settings and the alias whose
    run this is (pruning deletes only that alias's runs).
    """
    if dim < 1:
        raise InvalidInputError(f"vector dimension must be positive, got {dim}")
    settings: dict[str, Any] = {
        "index": {
            "knn": True,
            "knn.algo_param.ef_search": config.ef_search,
            "number_of_shards": config.shards,
            "number_of_replicas": config.load_replicas if loading else config.replicas,
            "refresh_interval": "-1" if loading else config.refresh_interval,
        },
        "analysis": OPENSEARCH_ANALYSIS,
    }
    keyword = {"type": "keyword"}
    mappings: dict[str, Any] = {
        "dynamic": "strict",
        # Metadata strings stay strings: a dynamically detected date ("2019-05-03") would drop
        # out of facets and filters, which the embedded engine keeps as plain values.
        "date_detection": False,
        "numeric_detection": False,
        "_meta": {
            "medsearch": {
                "replicas": config.replicas,
                "refresh": config.refresh_interval,
                **({"alias": alias} if alias is not None else {}),
            }
        },
        "properties": {
            ID_FIELD: keyword,
            TEXT_FIELD: {"type": "text", "analyzer": ANALYZER_NAME},
            IMAGE_FIELD: {"type": "keyword", "index": False},
            VECTOR_FIELD: {
                "type": "knn_vector",
                "dimension": dim,
                "method": {
                    "name": "hnsw",
                    "engine": config.engine,
                    "space_type": config.space_type,
                    "parameters": {"m": config.m, "ef_construction": config.ef_construction},
                },
            },
            # Any metadata key is accepted; every scalar becomes a keyword (filters and facets).
            METADATA_FIELD: {"type": "object", "dynamic": True},
            # The index record's content: kept in _source, never indexed.
            RECORD_FIELD: {"type": "object", "enabled": False},
        },
        "dynamic_templates": [
            {
                f"metadata_{kind}": {
                    "path_match": f"{METADATA_FIELD}.*",
                    "match_mapping_type": kind,
                    "mapping": keyword,
                }
            }
            for kind in ("string", "long", "double", "boolean")
        ],
    }
    return {"settings": settings, "mappings": mappings}


def build_index_record(
    dim: int, config: OpenSearchConfig, bm25_scale: float, model: IndexModel | None = None
) -> dict[str, Any]:
    """Return the ``_source`` of the index record: what a reader needs to search this index
    (``bm25_scale``: :func:`bm25_scale_for_version` of the cluster creating it; ``model``: the
    model that made the vectors, recorded where known)."""
    record: dict[str, Any] = {
        "dim": dim,
        "engine": config.engine,
        "space_type": config.space_type,
        "bm25_scale": bm25_scale,
    }
    if model is not None and model.model_id is not None:
        record["model_id"] = model.model_id
    if model is not None and model.fingerprint is not None:
        record["model_fingerprint"] = model.fingerprint
    if model is not None and model.vector_floor is not None:
        record["vector_floor"] = model.vector_floor.to_json()
    return {RECORD_FIELD: record}


def build_pipeline_body(alpha: float) -> dict[str, Any]:
    """Return the search pipeline fusing [BM25, kNN] with weights [1 - alpha, alpha]."""
    vector_weight = round(fusion.check_alpha(alpha), ALPHA_DECIMALS)
    text_weight = round(1.0 - vector_weight, ALPHA_DECIMALS)
    return {
        "description": f"medsearch hybrid fusion, alpha {vector_weight}",
        "phase_results_processors": [
            {
                "normalization-processor": {
                    "normalization": {"technique": "min_max"},
                    "combination": {
                        "technique": "arithmetic_mean",
                        "parameters": {"weights": [text_weight, vector_weight]},
                    },
                }
            }
        ],
    }


def build_filter(filters: Filters, exclude_ids: Iterable[str] = ()) -> dict[str, Any] | None:
    """Return a ``bool`` filter: ``terms`` per metadata field (AND across fields), ids left out."""
    clauses = [
        {"terms": {f"{METADATA_FIELD}.{name}": [str(v) for v in values]}}
        for name, values in sorted(filters.items())
    ]
    excluded = sorted(exclude_ids)
    if not clauses and not excluded:
        return None
    body: dict[str, Any] = {}
    if clauses:
        body["filter"] = clauses
    if excluded:
        body["must_not"] = [{"ids": {"values": excluded}}]
    return {"bool": body}


def bounded_text(text: str) -> str:
    """Return the query text cut after ``MAX_QUERY_TERMS`` words (the cluster's clause limit)."""
    for count, word in enumerate(_WORD.finditer(text), start=1):
        if count == MAX_QUERY_TERMS:
            return text[: word.end()]
    return text


def build_match_query(
    text: str, filters: Filters, exclude_ids: Iterable[str] = ()
) -> dict[str, Any]:
    """Return a BM25 ``match`` on the caption (OR of the terms) with the filters beside it."""
    match = {"match": {TEXT_FIELD: {"query": bounded_text(text), "operator": "or"}}}
    restriction = build_filter(filters, exclude_ids)
    if restriction is None:
        return match
    return {"bool": {"must": [match], **restriction["bool"]}}


def build_knn_query(
    vector: np.ndarray,
    k: int,
    filters: Filters,
    exclude_ids: Iterable[str] = (),
    *,
    ef_search: int | None = None,
) -> dict[str, Any]:
    """Return a ``knn`` query with the filters inside it (efficient filtering: k hits survive).

    ``ef_search`` goes with the query (``method_parameters``, k-NN 2.16+): the lucene engine
    ignores the index setting ``knn.algo_param.ef_search`` and would search with ``k`` alone.
    """
    body: dict[str, Any] = {"vector": vector_to_json(vector), "k": k}
    if ef_search is not None:
        body["method_parameters"] = {"ef_search": max(ef_search, k)}
    restriction = build_filter(filters, exclude_ids)
    if restriction is not None:
        body["filter"] = restriction
    return {"knn": {VECTOR_FIELD: body}}


def build_search_body(
    query: Mapping[str, Any],
    size: int,
    offset: int = 0,
    *,
    total_hits: int | bool = False,
    by_id: bool = False,
) -> dict[str, Any]:
    """Return a search request for ids and scores only (no ``_source``).

    ``total_hits``: count matches exactly up to this many (``True``: all of them), or not at all
    (``False``: the default, for sub-queries whose total comes from elsewhere). ``by_id``: equal
    scores in image_id order, as every engine ranks them; BM25 ties are common (short captions
    alike), and without it the cut at ``size`` follows Lucene's document order, which bulk
    requests in flight together and merges shuffle (measured +2-6 % on a match query).
    """
    body: dict[str, Any] = {
        "query": dict(query),
        "from": offset,
        "size": size,
        "_source": False,
        "track_total_hits": total_hits,
    }
    if by_id:
        body["sort"] = [{"_score": "desc"}, {ID_FIELD: "asc"}]
    return body


def build_hybrid_body(query: SearchQuery, *, ef_search: int | None = None) -> dict[str, Any]:
    """Return the hybrid request: [match, knn] each with its own top N, the page cut client-side.

    Both sub-queries return their top ``query.candidates`` (``size`` = N from 0, knn ``k`` = N),
    exactly the lists :mod:`medsearch.fusion` normalises, so this works on every neural-search
    version without ``pagination_depth``. The sub-queries are named (:data:`TEXT_QUERY_NAME`,
    :data:`VECTOR_QUERY_NAME`) so that, with ``include_named_queries_score``, each hit carries
    its BM25 and kNN scores in the same answer.
    """
    assert query.text is not None and query.vector is not None
    n = query.candidates
    hybrid = {
        "hybrid": {
            "queries": [
                _named(
                    build_match_query(query.text, query.filters, query.exclude_ids), TEXT_QUERY_NAME
                ),
                _named(
                    build_knn_query(
                        query.vector, n, query.filters, query.exclude_ids, ef_search=ef_search
                    ),
                    VECTOR_QUERY_NAME,
                ),
            ]
        }
    }
    return build_search_body(hybrid, size=n)


def _named(query: dict[str, Any], name: str) -> dict[str, Any]:
    """Return ``query`` with ``_name`` set on a ``bool``, or in the field of a match or knn."""
    ((kind, spec),) = query.items()
    (spec if kind == "bool" else next(iter(spec.values())))["_name"] = name
    return query


def build_vector_count_aggs(query: SearchQuery) -> dict[str, Any]:
    """Return an aggregation counting the documents with a vector that pass the query's filters.

    ``global`` ignores the query it rides on (a kNN query matches only its top k), so this gives
    a vector query's total in the same request.
    """
    restriction = build_filter(query.filters, query.exclude_ids)
    exists: dict[str, Any] = {"exists": {"field": VECTOR_FIELD}}
    if restriction is not None:
        exists = {"bool": {**restriction["bool"], "must": [exists]}}
    return {VECTORS_AGG: {"global": {}, "aggs": {VECTORS_AGG: {"filter": exists}}}}


def build_no_vector_aggs() -> dict[str, Any]:
    """Return an aggregation counting the matched documents that have no vector.

    On a text query (or a hybrid one, whose vector side matches only documents with a vector),
    these are the text matches a vector query cannot reach: hybrid total = filtered documents
    with a vector + this count.
    """
    return {
        NO_VECTOR_AGG: {"filter": {"bool": {"must_not": [{"exists": {"field": VECTOR_FIELD}}]}}}
    }


def build_facts_body() -> dict[str, Any]:
    """Return the search counting what every query's total builds on, once per load: documents
    with a vector, and captioned documents without one."""
    return {
        "size": 0,
        "track_total_hits": False,
        "query": {"bool": {"must_not": [{"ids": {"values": [RECORD_ID]}}]}},
        "aggs": {
            "vectors": {"filter": {"exists": {"field": VECTOR_FIELD}}},
            "captioned_without_vector": {
                "filter": {
                    "bool": {
                        "must": [{"exists": {"field": TEXT_FIELD}}],
                        "must_not": [{"exists": {"field": VECTOR_FIELD}}],
                    }
                }
            },
        },
    }


def build_bulk_lines(doc: Document) -> str:
    """Return the two NDJSON lines that index one document with ``_id = image_id``."""
    action = json.dumps({"index": {"_id": doc.image_id}}, separators=(",", ":"))
    source = json.dumps(document_source(doc, vector=False), separators=(",", ":"))
    if doc.vector is not None:
        # The vector is spliced in as text: formatting floats dominates the cost of a bulk body.
        source = f'{source[:-1]},"{VECTOR_FIELD}":{vector_json_text(doc.vector)}}}'
    return action + "\n" + source + "\n"


def vector_json_text(vector: np.ndarray) -> str:
    """Return a float32 vector as a JSON array with 9 significant digits (exact for float32).

    Measured at about 3.8x faster than ``json.dumps(vector_to_json(v))`` (shortest float32
    decimals) for 512 floats; that matters at 185k documents.
    """
    values = np.asarray(vector, dtype=np.float32).ravel().tolist()
    return "[" + ",".join(format(x, ".9g") for x in values) + "]"


def build_alias_actions(
    alias: str, index: str, current: Iterable[str] = ()
) -> dict[str, list[dict[str, Any]]]:
    """Return one ``_aliases`` request moving ``alias`` to ``index`` alone, atomically.

    The alias leaves every run index (``<alias>-*``) by pattern, not by a list read beforehand,
    so two publishes racing each other still leave exactly one target (the last one wins);
    ``current`` targets outside the pattern are removed by name.
    """
    pattern = f"{alias}-*"
    actions: list[dict[str, Any]] = [{"remove": {"index": pattern, "alias": alias}}]
    actions += [
        {"remove": {"index": old, "alias": alias}}
        for old in sorted(current)
        if old != index and not fnmatch.fnmatchcase(old, pattern)
    ]
    actions.append({"add": {"index": index, "alias": alias}})
    return {"actions": actions}


def vector_to_json(vector: np.ndarray) -> list[float]:
    """Return a float32 vector as the shortest decimals that round-trip (half a double's JSON)."""
    return [float(str(x)) for x in np.asarray(vector, dtype=np.float32).ravel()]


def document_source(doc: Document, *, vector: bool = True) -> dict[str, Any]:
    """Return the ``_source`` stored for a document (optionally without the vector)."""
    source: dict[str, Any] = {ID_FIELD: doc.image_id}
    if doc.caption is not None:
        source[TEXT_FIELD] = doc.caption
    if doc.image is not None:
        source[IMAGE_FIELD] = doc.image
    if vector and doc.vector is not None:
        source[VECTOR_FIELD] = vector_to_json(doc.vector)
    if doc.metadata:
        source[METADATA_FIELD] = dict(doc.metadata)
    return source


def document_from_source(image_id: str, source: Mapping[str, Any]) -> Document:
    """Rebuild a :class:`Document` from a stored ``_source``."""
    vector = source.get(VECTOR_FIELD)
    return Document(
        image_id=str(source.get(ID_FIELD, image_id)),
        caption=source.get(TEXT_FIELD),
        vector=None if vector is None else np.asarray(vector, dtype=np.float32),
        image=source.get(IMAGE_FIELD),
        metadata=dict(source.get(METADATA_FIELD) or {}),
    )


def knn_score_to_cosine(score: float, space_type: str) -> float:
    """Invert OpenSearch's kNN score to the cosine of unit vectors (documented per space)."""
    if space_type == "innerproduct":
        # faiss: score = 1 + dot for dot >= 0, else 1 / (1 - dot).
        return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score
    if space_type == "cosinesimil":
        return 2.0 * score - 1.0  # score = (1 + cos) / 2
    raise ConfigError(f"no cosine conversion for space {space_type!r}")


def _vector_problem(vector: np.ndarray | None) -> str | None:
    """Return why a vector cannot be stored (JSON has no NaN; zero vectors have no direction)."""
    if vector is None:
        return None
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        return "vector must be a non-empty 1-d array"
    if not np.all(np.isfinite(array)):
        return "vector has NaN or infinite values"
    if not np.any(array):
        return "vector is all zeros"
    return None


# --- the engine ----------------------------------------------------------------------------------


class _MissingIndex(SearchIndexError):
    """The index or alias read does not exist (a 503 to the API, like any SearchIndexError)."""


@dataclass(frozen=True)
class _Layout:
    """What readers take from an index record: vector dimension, BM25 scale, vector space, and
    the counts totals build on (None where the record has none: counted per query)."""

    dim: int | None
    bm25_scale: float
    space_type: str | None = None
    index: str | None = None  # the physical index the record was read from
    vectors: int | None = None
    captioned_without_vector: int | None = None
    read_at: float = 0.0
    model: IndexModel = field(default_factory=IndexModel)


# How long a reader trusts what it read of an index record: an alias that moved to a new run is
# noticed at once (a hit from another index), in-place edits by another process within this.
LAYOUT_TTL_S = 60.0


@dataclass(frozen=True)
class Refused:
    """An error answer the caller chose to handle (``ignore=``): its status and body."""

    status: int
    info: Any


class OpenSearchIndex:
    """:class:`SearchIndex` over one OpenSearch index or alias (``name``).

    Readers open it on the alias; the loader opens it on a run's physical index, creates it with
    :meth:`create`, writes inside :meth:`loading` and publishes with :meth:`swap_alias`.
    ``sleep``, ``rng`` and ``clock`` drive the retry back-off and the request budget (tests pass
    fakes, so nothing really waits).
    """

    def __init__(
        self,
        client: OpenSearch,
        name: str,
        *,
        config: OpenSearchConfig | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.name = name
        self.config = config or OpenSearchConfig()
        self._sleep = sleep
        self._rng = rng
        self._clock = clock
        self._layout: _Layout | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        name: str,
        *,
        config: OpenSearchConfig | None = None,
        **connect_kwargs: Any,
    ) -> OpenSearchIndex:
        """Open ``name`` on the domain at ``url`` (auth arguments as for :func:`connect`)."""
        return cls(connect(url, **connect_kwargs), name, config=config)

    def reconnect(self, client: OpenSearch) -> None:
        """Send further requests through ``client`` and close the old one's pooled connections
        (a process restored from a memory snapshot must not reuse the snapshot's sockets or
        credentials); what was read of the index is kept."""
        previous, self._client = self._client, client
        with suppress(Exception):  # a dead pool may fail to close; it is dropped
            previous.transport.close()

    def with_name(self, name: str) -> OpenSearchIndex:
        """Return the same engine (client, config, retry policy) on another index or alias."""
        return OpenSearchIndex(
            self._client,
            name,
            config=self.config,
            sleep=self._sleep,
            rng=self._rng,
            clock=self._clock,
        )

    # -- transport with retries --

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        *,
        ignore: Sequence[int] = (),
        timeout: float | None = None,
    ) -> Any:
        """Send one request; retry 429/5xx/connection errors with capped, jittered back-off.

        With ``config.request_budget``, each attempt's timeout is what is left of the budget and
        no retry starts that would end after it. With ``timeout``, each attempt waits that long
        and a timeout is raised to the caller (``ConnectionTimeout``), never retried: the caller
        chose how long to wait.
        """
        attempts = self.config.max_attempts
        budget = self.config.request_budget
        deadline = None if budget is None else self._clock() + budget
        for attempt in range(1, attempts + 1):
            query = dict(params or {})
            if deadline is not None:
                query["request_timeout"] = max(deadline - self._clock(), 0.001)
            if timeout is not None:
                query["request_timeout"] = timeout
            try:
                return self._client.transport.perform_request(method, path, params=query, body=body)
            except ConnectionTimeout:
                if timeout is not None:
                    raise
                reason = "connection timed out"
            except TransportConnectionError as exc:
                reason = f"connection error: {exc}"
            except TransportError as exc:
                status = exc.status_code
                if isinstance(status, int) and status in ignore:
                    return Refused(status, exc.info)
                if status not in RETRY_STATUSES:
                    raise SearchIndexError(
                        f"OpenSearch {method} {path} failed: {status} {_error_text(exc, path)}"
                    ) from exc
                reason = f"{status} {_error_text(exc, path)}"
            delay = self._backoff(attempt)
            if deadline is not None and self._clock() + delay >= deadline:
                raise SearchIndexError(
                    f"OpenSearch {method} {path} failed within its {budget:g} s budget "
                    f"({attempt} attempts): {reason}"
                )
            if attempt == attempts:
                raise SearchIndexError(
                    f"OpenSearch {method} {path} failed after {attempts} attempts: {reason}"
                )
            log.warning(
                "OpenSearch %s %s: %s; retry %d in %.2fs", method, path, reason, attempt, delay
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        """Exponential back-off with equal jitter: half the step fixed, half random."""
        step = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
        return step / 2 + self._rng() * step / 2

    # -- lifecycle --

    def exists(self) -> bool:
        """Tell whether the index (or alias) exists."""
        return bool(self._client.transport.perform_request("HEAD", f"/{self.name}"))

    def create(
        self,
        dim: int,
        *,
        loading: bool = True,
        alias: str | None = None,
        model: IndexModel | None = None,
    ) -> bool:
        """Create the index for ``dim``-d vectors; return False if it already existed (same dim).

        ``alias``: the alias this is a run of, recorded so :meth:`prune` deletes only that
        alias's runs, never another pipeline's index that merely shares the name prefix.
        ``model``: the model whose vectors will be loaded, recorded for the search service; an
        existing index that records other weights is refused, like one of another dimension.
        """
        body = build_index_body(dim, self.config, loading=loading, alias=alias)
        record = build_index_record(dim, self.config, self._cluster_bm25_scale(), model)
        answer = self._request("PUT", f"/{self.name}", body, ignore=(400,))
        if isinstance(answer, Refused):
            error = json.dumps(answer.info)
            if "resource_already_exists_exception" not in error:
                raise SearchIndexError(f"cannot create index {self.name}: {error}")
            layout = self._read_layout()
            if layout.dim is not None and layout.dim != dim:
                raise SearchIndexError(
                    f"index {self.name} holds {layout.dim}-d vectors, cannot load {dim}-d ones"
                )
            held, new = layout.model.fingerprint, model.fingerprint if model else None
            if held and new and held != new:
                raise SearchIndexError(
                    f"index {self.name} holds vectors of {layout.model.model_id} (weights {held}),"
                    f" cannot load those of {model.model_id if model else None} (weights {new})"
                )
            return False
        # Real-time get sees it at once; searches never match it (no caption, vector, metadata).
        self._request("PUT", f"/{self.name}/_doc/{quote(RECORD_ID, safe='')}", record)
        self._layout = None  # read back from the record on first use
        log.info("created index %s (%d-d, %s)", self.name, dim, self.config.engine)
        return True

    def _missing_index(self) -> SearchIndexError:
        """The error for a read of an index or alias that does not exist (yet, or any more)."""
        return _MissingIndex(
            f"OpenSearch index or alias {self.name!r} does not exist: publish a run to it first"
        )

    def _cluster_bm25_scale(self) -> float:
        """Return the BM25 scale of indexes this cluster creates, from its version (``GET /``)."""
        answer = self._request("GET", "/")
        version = answer.get("version", {}) if isinstance(answer, Mapping) else {}
        return bm25_scale_for_version(str(version.get("number", "")), version.get("distribution"))

    def begin_load(self) -> None:
        """Turn off refresh, and replicas where allowed, while bulk loading (faster indexing)."""
        self._put_settings(
            {"refresh_interval": "-1", "number_of_replicas": self.config.load_replicas}
        )

    def finish_load(self, *, merge_wait: float | None = None) -> None:
        """Make a load searchable and cheap to search: refresh, merge segments, restore replicas,
        and record what readers count on.

        The merge runs before the replicas come back, so they copy merged segments instead of
        merging themselves; each kNN query searches every segment's graph, so fewer segments is
        faster search (:func:`merge_target` says how few, from the document count). A merge
        longer than ``merge_wait`` seconds raises :class:`MergeRunning` and leaves the replicas
        for the call that finds it done.
        """
        self._put_settings({"refresh_interval": self.config.refresh_interval})
        self.refresh()
        self._record_load_facts()
        self.refresh()  # the record's new version goes into the merged segment, not a new one
        self.merge(wait=merge_wait)
        self._put_settings({"number_of_replicas": self.config.replicas})

    def merge(self, segments: int | None = None, *, wait: float | None = None) -> float:
        """Force-merge to ``segments`` per shard (default :func:`merge_target`); return seconds.

        Waits at most ``wait`` seconds (default :data:`MERGE_TIMEOUT_S`), then raises
        :class:`MergeRunning`: a merge goes on in the domain when its caller stops waiting, and
        a second force-merge of the index waits for the running one, so asking again (a publish
        retried later) resumes the wait instead of starting over. A merged index merges in no
        time. A 429 or 5xx is retried as any request is; a wait that ends is not: that would
        only queue more merges.
        """
        docs = self.count()
        target = merge_target(docs, self.config.shards) if segments is None else segments
        timeout = MERGE_TIMEOUT_S if wait is None else max(wait, 1.0)
        started = self._clock()
        try:
            self._request(
                "POST",
                f"/{self.name}/_forcemerge",
                params={"max_num_segments": target},
                timeout=timeout,
            )
        except ConnectionTimeout:
            log.info("merging %s to %d segment(s) goes on past %.0f s", self.name, target, timeout)
            raise MergeRunning(
                f"{self.name}: merging {docs} documents to {target} segment(s) per shard takes "
                f"longer than {timeout:.0f} s; it goes on in the domain, publish again to wait"
            ) from None
        self.refresh()  # searchers move to the merged segments and the old ones are freed
        seconds = self._clock() - started
        log.info(
            "merged %s to %d segment(s) per shard (%d documents) in %.1f s",
            self.name,
            target,
            docs,
            seconds,
        )
        return seconds

    def segments(self) -> int:
        """Return how many Lucene segments the index has (every shard's, primaries only)."""
        answer = self._request("GET", f"/{self.name}/_segments")
        total = 0
        for index in (answer.get("indices") or {}).values():
            for copies in (index.get("shards") or {}).values():
                primaries = [c for c in copies if (c.get("routing") or {}).get("primary", True)]
                total += sum(len(c.get("segments") or {}) for c in primaries)
        return total

    def _record_load_facts(self) -> None:
        """Add what readers need of a finished load to the index record: the metadata fields the
        load created and the counts totals build on (documents with a vector, captioned ones
        without), so no query counts them again.

        ``_field_caps`` is a read the loader has; readers then need only ``_mget`` for it.
        """
        record, _ = self._fetch_record_item()
        if record is None:
            return  # an index from before records: readers ask _field_caps themselves
        record["filter_fields"] = self._field_caps_metadata()
        counts = self._search(build_facts_body()).get("aggregations", {})
        for name in ("vectors", "captioned_without_vector"):
            record[name] = int(counts.get(name, {}).get("doc_count", 0))
        # No refresh: readers fetch the record with _mget, which is real-time, and no search
        # can match it.
        self._request(
            "PUT", f"/{self.name}/_doc/{quote(RECORD_ID, safe='')}", {RECORD_FIELD: record}
        )
        self._layout = None

    def _forget_counts(self) -> None:
        """Drop the record's counts after a write: until the next load counts them again,
        readers count per query (an update of a record-less index is ignored)."""
        body = {"doc": {RECORD_FIELD: {"vectors": None, "captioned_without_vector": None}}}
        path = f"/{self.name}/_update/{quote(RECORD_ID, safe='')}"
        self._request("POST", path, body, ignore=(404,))
        self._layout = None

    def _after_write(self) -> None:
        """Keep the record's counts true after an upsert or delete."""
        if self.config.refresh_writes:
            self.refresh()
            self._record_load_facts()
        else:
            self._forget_counts()

    def _fetch_record(self) -> dict[str, Any] | None:
        """Return the index record's content (``_mget``), or None if the index has none."""
        return self._fetch_record_item()[0]

    def _fetch_record_item(self) -> tuple[dict[str, Any] | None, str | None]:
        """Return the index record's content (or None) and the physical index it is in."""
        answer = self._request(
            "POST",
            f"/{self.name}/_mget",
            {"ids": [RECORD_ID]},
            {"_source_includes": RECORD_FIELD},
            ignore=(404,),
        )
        if isinstance(answer, Refused):
            if _is_missing_index(answer.info):
                raise self._missing_index()
            return None, None
        for item in answer.get("docs", []) if isinstance(answer, dict) else []:
            if _is_missing_index(item):
                raise self._missing_index()
            record = (item.get("_source") or {}).get(RECORD_FIELD)
            if item.get("found") and isinstance(record, dict) and "dim" in record:
                return dict(record), item.get("_index")
        return None, None

    @contextmanager
    def loading(self) -> Iterator[OpenSearchIndex]:
        """Context manager around a bulk load: :meth:`begin_load`, then :meth:`finish_load`.

        The settings are restored even if the load fails, so a broken run never leaves an index
        without replicas behind.
        """
        self.begin_load()
        try:
            yield self
        finally:
            self.finish_load()

    def refresh(self) -> None:
        """Make every written document visible to search and count."""
        self._request("POST", f"/{self.name}/_refresh")

    def _put_settings(self, settings: Mapping[str, Any]) -> None:
        self._request("PUT", f"/{self.name}/_settings", {"index": dict(settings)})

    def alias_targets(self, alias: str) -> list[str]:
        """Return the indexes an alias points at (empty if the alias does not exist)."""
        answer = self._request("GET", f"/_alias/{alias}", ignore=(404,))
        if isinstance(answer, Refused) or not isinstance(answer, dict):
            return []
        return sorted(name for name, info in answer.items() if isinstance(info, dict))

    def swap_alias(self, alias: str, *, keep: int | None = None) -> list[str]:
        """Point ``alias`` at this index in one atomic request, then prune old run indexes.

        Keeps the ``keep`` newest runs of ``alias`` (this one included; default from the
        config) so a bad run can be rolled back by swapping again; returns the deleted names.
        """
        current = self.alias_targets(alias)
        self._request("POST", "/_aliases", build_alias_actions(alias, self.name, current))
        log.info("alias %s -> %s (was %s)", alias, self.name, ", ".join(current) or "unset")
        return self.prune(alias, keep=keep)

    def prune(self, alias: str, *, keep: int | None = None) -> list[str]:
        """Delete all but the ``keep`` newest run indexes of ``alias`` (never the live ones).

        Only indexes created as runs of ``alias`` (:meth:`create`) count: ``medsearch-*`` also
        matches ``medsearch-v2-<run>`` of another alias, which is never touched.
        """
        keep = self.config.keep_indexes if keep is None else keep
        runs = self.runs_of(alias)
        if not runs:
            return []
        created = self.creation_dates(",".join(runs))
        live = set(self.alias_targets(alias)) | {self.name}
        newest_first = sorted(created, key=lambda name: (created[name], name), reverse=True)
        doomed = [n for n in newest_first[max(keep, 1) :] if n not in live]
        if doomed:
            self._request("DELETE", "/" + ",".join(doomed))
            log.info("pruned old indexes: %s", ", ".join(doomed))
        return doomed

    def runs_of(self, alias: str) -> list[str]:
        """Return the indexes created as runs of ``alias`` (from their mappings' ``_meta``)."""
        answer = self._request("GET", f"/{alias}-*/_mapping", ignore=(404,))
        if isinstance(answer, Refused) or not isinstance(answer, dict):
            return []
        return sorted(
            name
            for name, info in answer.items()
            if isinstance(info, dict)
            and info.get("mappings", {}).get("_meta", {}).get("medsearch", {}).get("alias") == alias
        )

    def creation_dates(self, pattern: str) -> dict[str, int]:
        """Return the creation time (ms since the epoch) of each index matching ``pattern``."""
        answer = self._request("GET", f"/{pattern}/_settings", ignore=(404,))
        if isinstance(answer, Refused) or not isinstance(answer, dict):
            return {}
        return {
            name: int(info.get("settings", {}).get("index", {}).get("creation_date", 0))
            for name, info in answer.items()
            if isinstance(info, dict)
        }

    def newer_live_index(self, alias: str) -> str | None:
        """Return an index behind ``alias`` created after this one (a newer run is live), if any."""
        live = [name for name in self.alias_targets(alias) if name != self.name]
        if not live:
            return None
        created = self.creation_dates(",".join([self.name, *live]))
        mine = created.get(self.name, 0)
        newer = sorted(name for name in live if created.get(name, 0) > mine)
        return newer[0] if newer else None

    def drop(self) -> None:
        """Delete this physical index (tests and clean-up)."""
        self._request("DELETE", f"/{self.name}", ignore=(404,))

    # -- writes --

    def upsert(self, documents: Iterable[Document]) -> UpsertResult:
        """Insert or replace documents by ``image_id`` in bounded bulk chunks.

        Items rejected with 429 are resent with back-off; other per-item errors (and documents
        that cannot be encoded) are returned in ``failed`` with the reason, never dropped.
        """
        result = UpsertResult()
        try:
            self._send_chunks(self._chunks(documents, result), result)
        finally:
            self._after_write()
        return result

    def _send_chunks(self, chunks: Iterator[list[tuple[str, str]]], result: UpsertResult) -> None:
        """Send chunks with up to ``bulk_concurrency`` in flight.

        Each chunk counts into its own result, merged here on one thread; on a failure the
        chunks in flight are still awaited and counted, then the first error is raised.
        """
        width = self.config.bulk_concurrency
        if width == 1:
            for chunk in chunks:
                self._send_chunk(chunk, result)
            return

        def send(chunk: list[tuple[str, str]]) -> UpsertResult:
            part = UpsertResult()
            self._send_chunk(chunk, part)
            return part

        def settle(futures: Iterable[Future[UpsertResult]]) -> None:
            errors = []
            for future in futures:
                try:
                    part = future.result()
                except Exception as exc:
                    errors.append(exc)
                    continue
                result.written += part.written
                result.failed.extend(part.failed)
            if errors:
                raise errors[0]

        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="bulk") as pool:
            in_flight: set[Future[UpsertResult]] = set()
            try:
                for chunk in chunks:
                    if len(in_flight) >= width:
                        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        settle(done)
                    in_flight.add(pool.submit(send, chunk))
            except BaseException:
                with suppress(Exception):
                    settle(in_flight)
                raise
            settle(in_flight)

    def _chunks(
        self, documents: Iterable[Document], result: UpsertResult
    ) -> Iterator[list[tuple[str, str]]]:
        """Group (image_id, NDJSON lines) by count and bytes; bad documents go to ``failed``."""
        chunk: list[tuple[str, str]] = []
        size = 0
        dim = self.dim
        for doc in documents:
            problem = _vector_problem(doc.vector)
            if problem is not None:
                result.failed.append((doc.image_id, problem))
                continue
            if doc.vector is not None and dim is not None and np.size(doc.vector) != dim:
                raise InvalidInputError(
                    f"{doc.image_id}: vector has {np.size(doc.vector)} dimensions, "
                    f"the index has {dim}"
                )
            lines = build_bulk_lines(doc)
            nbytes = len(lines.encode("utf-8"))
            if chunk and (
                len(chunk) >= self.config.bulk_max_docs
                or size + nbytes > self.config.bulk_max_bytes
            ):
                yield chunk
                chunk, size = [], 0
            chunk.append((doc.image_id, lines))
            size += nbytes
        if chunk:
            yield chunk

    def _send_chunk(self, chunk: list[tuple[str, str]], result: UpsertResult) -> None:
        """Send one bulk chunk; resend 429 items until they land or attempts run out."""
        pending = chunk
        for attempt in range(1, self.config.max_attempts + 1):
            body = "".join(lines for _, lines in pending)
            answer = self._request("POST", f"/{self.name}/_bulk", body)
            retry: list[tuple[str, str]] = []
            items = answer.get("items", [])
            if len(items) != len(pending):
                raise SearchIndexError(
                    f"bulk answer has {len(items)} items for {len(pending)} documents"
                )
            for (image_id, lines), item in zip(pending, items, strict=True):
                outcome = next(iter(item.values()))
                status = int(outcome.get("status", 500))
                if 200 <= status < 300:
                    result.written += 1
                elif status in RETRY_STATUSES:
                    retry.append((image_id, lines))
                else:
                    result.failed.append((image_id, f"{status} {_item_error(outcome)}"))
            if not retry:
                return
            if attempt == self.config.max_attempts:
                break
            delay = self._backoff(attempt)
            log.warning("bulk: %d items throttled; resending in %.2fs", len(retry), delay)
            self._sleep(delay)
            pending = retry
        for image_id, _ in retry:
            result.failed.append(
                (image_id, f"still rejected after {self.config.max_attempts} attempts")
            )

    def delete(self, image_ids: Iterable[str]) -> int:
        """Remove documents; return how many existed."""
        ids = sorted(set(image_ids))
        if not ids:
            return 0
        body = "".join(
            json.dumps({"delete": {"_id": image_id}}, separators=(",", ":")) + "\n"
            for image_id in ids
        )
        answer = self._request("POST", f"/{self.name}/_bulk", body)
        deleted = 0
        for item in answer.get("items", []):
            outcome = item.get("delete", {})
            if outcome.get("result") == "deleted":
                deleted += 1
            elif int(outcome.get("status", 500)) not in (200, 404):
                raise SearchIndexError(
                    f"cannot delete {outcome.get('_id')}: {_item_error(outcome)}"
                )
        self._after_write()
        return deleted

    # -- reads --

    def get(self, image_id: str) -> Document | None:
        """Return one document (with its vector) or ``None`` (one ``_mget``, a read the search
        role has, like every read here)."""
        return self.get_many([image_id]).get(image_id)

    def get_many(
        self, image_ids: Sequence[str], *, with_vectors: bool = True
    ) -> dict[str, Document]:
        """Return the documents that exist among ``image_ids``, by id, with one ``_mget``.

        Like ``GET _doc``, ``_mget`` is real-time: it sees writes not yet refreshed.
        """
        wanted = list(dict.fromkeys(i for i in image_ids if isinstance(i, str)))
        if not wanted:
            return {}
        params = {} if with_vectors else {"_source_excludes": VECTOR_FIELD}
        answer = self._request("POST", f"/{self.name}/_mget", {"ids": wanted}, params)
        found = {}
        for item in answer.get("docs", []) if isinstance(answer, dict) else []:
            if _is_missing_index(item):  # _mget answers 200 with an error per document
                raise self._missing_index()
            if item.get("found"):
                document = document_from_source(item["_id"], item.get("_source") or {})
                found[document.image_id] = document
        return found

    def count(self) -> int:
        """Return the number of (refreshed) documents, the index record left out."""
        body = {"query": {"bool": {"must_not": [{"ids": {"values": [RECORD_ID]}}]}}}
        return int(self._request("POST", f"/{self.name}/_count", body)["count"])

    @property
    def dim(self) -> int | None:
        """The vector dimension from the mapping, or ``None`` if the index does not exist."""
        return self._read_layout().dim

    @property
    def bm25_scale(self) -> float:
        """How much larger than ``BM25Similarity`` this index's raw BM25 scores are."""
        return self._read_layout().bm25_scale

    def indexed_model(self) -> IndexModel:
        """Return the model id and weight fingerprint the index record names (empty for a run
        created without them, or one from before index records)."""
        return self._read_layout().model

    def _read_layout(self) -> _Layout:
        """Read the index record once (not while the index is missing): dimension, space, scale.

        An index written before records existed is read from its mapping (which needs the
        mapping permission the loader has); its scores are OpenSearch 2.x's.
        """
        layout = self._layout
        if layout is not None and self._clock() - layout.read_at < LAYOUT_TTL_S:
            return layout
        try:
            record, index = self._fetch_record_item()
        except _MissingIndex:
            return _Layout(dim=None, bm25_scale=LEGACY_BM25_FACTOR)  # nothing to cache yet
        if record is None:
            return self._read_layout_from_mapping()
        space = str(record.get("space_type", self.config.space_type))
        if space not in SPACE_TYPES.values():
            raise SearchIndexError(f"{self.name} uses the vector space {space!r}, not one of ours")
        self._layout = _Layout(
            dim=int(record["dim"]),
            bm25_scale=float(record["bm25_scale"]),
            space_type=space,
            index=index,
            vectors=_count_or_none(record.get("vectors")),
            captioned_without_vector=_count_or_none(record.get("captioned_without_vector")),
            read_at=self._clock(),
            model=IndexModel(
                _text_or_none(record.get("model_id")),
                _text_or_none(record.get("model_fingerprint")),
                VectorFloor.from_json(record.get("vector_floor"), int(record["dim"])),
            ),
        )
        return self._layout

    def _read_layout_from_mapping(self) -> _Layout:
        answer = self._request("GET", f"/{self.name}/_mapping", ignore=(404,))
        if isinstance(answer, Refused) or not isinstance(answer, dict):
            return _Layout(dim=None, bm25_scale=LEGACY_BM25_FACTOR)
        dims: set[int] = set()
        spaces: set[str] = set()
        for info in answer.values():
            vector = info.get("mappings", {}).get("properties", {}).get(VECTOR_FIELD, {})
            if "dimension" in vector:
                dims.add(int(vector["dimension"]))
                spaces.add(str(vector.get("method", {}).get("space_type", "cosinesimil")))
        if len(dims) > 1 or len(spaces) > 1:
            raise SearchIndexError(f"{self.name} spans indexes with different vector layouts")
        if not dims:
            return _Layout(dim=None, bm25_scale=LEGACY_BM25_FACTOR)
        self._layout = _Layout(dims.pop(), LEGACY_BM25_FACTOR, spaces.pop(), read_at=self._clock())
        return self._layout

    def facets(
        self, fields: Sequence[str] | None = None, *, size: int | None = None
    ) -> dict[str, dict[str, int]]:
        """Return metadata fields with their values and counts (``terms`` aggregations of
        ``size`` buckets each, the configured facet size by default)."""
        names = list(fields) if fields is not None else self._metadata_fields()
        if not names:
            return {}
        buckets = size if size is not None else self.config.facet_size
        aggs = {
            name: {"terms": {"field": f"{METADATA_FIELD}.{name}", "size": buckets}}
            for name in names
        }
        answer = self._search({"size": 0, "aggs": aggs, "track_total_hits": False})
        out: dict[str, dict[str, int]] = {}
        for name in names:
            buckets = answer.get("aggregations", {}).get(name, {}).get("buckets", [])
            values = {str(b["key"]): int(b["doc_count"]) for b in buckets}
            if values:
                out[name] = values
        return out

    def field_values(self, field: str, limit: int) -> dict[str, int]:
        """Return up to ``limit`` distinct values of a metadata field with their counts (a
        ``terms`` aggregation): what a range filter is answered with."""
        return self.facets([field], size=limit).get(field, {})

    def filter_fields(self) -> list[str]:
        """Return every metadata field with scalar values: each is a keyword, so each filters by
        exact value (a number by its JSON form), as on the embedded engine."""
        return self._metadata_fields()

    def _metadata_fields(self) -> list[str]:
        """Return the keyword fields under ``metadata`` (dotted paths for nested objects): from
        the index record (read each time: the alias may have moved to a run with other fields),
        or, for a record without them, from ``_field_caps``."""
        record = self._fetch_record()
        if record is not None and isinstance(record.get("filter_fields"), list):
            return [str(name) for name in record["filter_fields"]]
        return self._field_caps_metadata()

    def _field_caps_metadata(self) -> list[str]:
        """The keyword fields under ``metadata`` by ``_field_caps`` (a read, unlike _mapping)."""
        answer = self._request(
            "GET",
            f"/{self.name}/_field_caps",
            params={"fields": f"{METADATA_FIELD}.*"},
            ignore=(404,),
        )
        if isinstance(answer, Refused):
            raise self._missing_index()
        prefix = f"{METADATA_FIELD}."
        return sorted(
            name[len(prefix) :]
            for name, kinds in (answer.get("fields") or {}).items()
            if name.startswith(prefix) and isinstance(kinds, Mapping) and "keyword" in kinds
        )

    # -- search --

    def search(self, query: SearchQuery) -> SearchPage:
        """Rank documents for a text (BM25), vector (kNN) or hybrid query, one page at a time."""
        query = self._checked(query)
        try:
            if query.vector is None:
                return self._search_text(query)
            if query.text is None:
                return self._search_vector(query)
            # A floored total needs both top lists, which only client fusion sees (the pipeline
            # returns the fused page alone): such a query is fused here on either setting.
            if self.config.hybrid == "client" or query.vector_floor is not None:
                return self._search_hybrid_client(query)
            return self._search_hybrid_pipeline(query)
        except SearchIndexError:
            # The alias may have moved to a run of another dimension since the layout was read.
            known = self._layout
            self._layout = None
            if query.vector is not None and known is not None and self.dim != known.dim:
                raise InvalidInputError(
                    f"query vector has {query.vector.shape[0]} dimensions, the index has {self.dim}"
                ) from None
            raise

    def _checked(self, query: SearchQuery) -> SearchQuery:
        """Validate a query; return it with the vector as unit float32."""
        text = query.text
        if text is None and query.vector is None:
            raise InvalidInputError("a search needs a text, a vector or both")
        if not 1 <= query.k <= MAX_K:
            raise InvalidInputError(f"k must be between 1 and {MAX_K}, got {query.k}")
        if query.offset < 0:
            raise InvalidInputError(f"offset must be >= 0, got {query.offset}")
        fusion.check_alpha(query.alpha)
        vector = query.vector
        if vector is not None:
            vector = np.asarray(vector, dtype=np.float32)
            problem = _vector_problem(vector)
            if problem is not None:
                raise InvalidInputError(f"query {problem}")
            if self.dim is not None and vector.shape[0] != self.dim:
                self._layout = None  # an alias may have moved to a run of another model
                if self.dim is not None and vector.shape[0] != self.dim:
                    raise InvalidInputError(
                        f"query vector has {vector.shape[0]} dimensions, the index has {self.dim}"
                    )
            vector = normalize(vector)
        return replace(query, vector=vector)

    def _search(self, body: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> Any:
        return _complete(self._request("POST", f"/{self.name}/_search", body, params))

    def _msearch(self, bodies: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Run several searches in one round trip; a failed sub-search is an error."""
        payload = "".join(
            "{}\n" + json.dumps(body, separators=(",", ":")) + "\n" for body in bodies
        )
        answer = self._request("POST", f"/{self.name}/_msearch", payload)
        responses = answer.get("responses", [])
        for response in responses:
            if "error" in response:
                status = response.get("status")
                reason = _error_kind(response["error"])
                raise SearchIndexError(f"OpenSearch search failed: {status} {reason}")
            _complete(response)
        return responses

    def _search_text(self, query: SearchQuery) -> SearchPage:
        """One search: the page, and the total counted up to ``total_hits_limit``."""
        assert query.text is not None
        body = build_search_body(
            build_match_query(query.text, query.filters, query.exclude_ids),
            query.k,
            query.offset,
            total_hits=self.config.total_hits_limit,
            by_id=True,
        )
        answer = self._search(body)
        hits = []
        for h in answer["hits"]["hits"]:
            bm25 = self._bm25(h["_score"])
            hits.append(Hit(image_id=h["_id"], score=bm25, text_score=bm25))
        total, relation = _total(answer)
        return SearchPage(hits=fusion.sort_hits(hits), total=total, total_relation=relation)

    def _bm25(self, score: float) -> float:
        return float(score) / self.bm25_scale

    def _cosine(self, score: float) -> float:
        # The space the index was built with (its record), not this reader's configuration.
        space = self._read_layout().space_type or self.config.space_type
        return knn_score_to_cosine(float(score), space)

    def _counts(self, query: SearchQuery) -> _Layout | None:
        """Return the layout when its counts give this query's total (no filter, no exclusion:
        the counts are of the whole index), else None: the request counts for itself."""
        if query.filters or query.exclude_ids:
            return None
        layout = self._read_layout()
        if layout.vectors is None or layout.captioned_without_vector is None:
            return None
        return layout

    def _total_from(
        self,
        query: SearchQuery,
        counts: _Layout | None,
        answers: Sequence[Mapping[str, Any]],
    ) -> int:
        """Return the total of a vector or hybrid query: documents with a vector (after
        filters), plus, for hybrid, text matches without a vector; from the index record
        where it holds them for the index that answered, else from the request's aggregations.

        If the hits came from another index than the record read (the alias moved to a new
        run), the record is read again, once: a query racing the swap itself may then show the
        new run's total beside the old run's hits, never an error.
        """
        answered = {h.get("_index") for a in answers for h in a["hits"]["hits"]} - {None}
        if counts is not None and counts.index is not None and answered - {counts.index}:
            self._layout = None
            counts = self._counts(query)
        aggs: dict[str, Any] = {}
        for answer in answers:
            aggs.update(answer.get("aggregations") or {})
        wanted = self._count_aggs(query, counts)
        if wanted.keys() - aggs.keys():
            # The record read again has no counts (the new run is still loading): count now.
            body: dict[str, Any] = {"size": 0, "track_total_hits": False, "aggs": wanted}
            if NO_VECTOR_AGG in wanted:
                assert query.text is not None
                body["query"] = build_match_query(query.text, query.filters, query.exclude_ids)
            aggs.update(self._search(body).get("aggregations") or {})
        # Each count comes from the aggregation asked for it, else from the record.
        if VECTORS_AGG in wanted:
            vectors = int(aggs[VECTORS_AGG][VECTORS_AGG]["doc_count"])
        else:
            assert counts is not None and counts.vectors is not None
            vectors = counts.vectors
        without = int(aggs[NO_VECTOR_AGG]["doc_count"]) if NO_VECTOR_AGG in wanted else 0
        return vectors + without

    def _count_aggs(self, query: SearchQuery, counts: _Layout | None) -> dict[str, Any]:
        """The aggregations a vector or hybrid request needs for its total (none where the
        index record has the counts)."""
        aggs: dict[str, Any] = {}
        if counts is None:
            aggs |= build_vector_count_aggs(query)
        hybrid = query.text is not None and query.vector is not None
        if hybrid and (counts is None or counts.captioned_without_vector != 0):
            aggs |= build_no_vector_aggs()
        return aggs

    def _search_vector(self, query: SearchQuery) -> SearchPage:
        """One search: the kNN page (``k`` = the page's end) and, where the record cannot give
        it, the filtered vector count as an aggregation."""
        assert query.vector is not None
        end = query.offset + query.k
        floor = query.vector_floor
        if floor is not None:
            return self._search_vector_floored(query, floor)
        knn = build_knn_query(
            query.vector, end, query.filters, query.exclude_ids, ef_search=self.config.ef_search
        )
        counts = self._counts(query)
        body = build_search_body(knn, query.k, query.offset)
        if aggs := self._count_aggs(query, counts):
            body["aggs"] = aggs
        answer = self._search(body)
        hits = []
        for h in answer["hits"]["hits"]:
            cosine = self._cosine(h["_score"])
            hits.append(Hit(image_id=h["_id"], score=cosine, vector_score=cosine))
        total = self._total_from(query, counts, [answer])
        return SearchPage(hits=fusion.sort_hits(hits), total=total)

    def _search_vector_floored(self, query: SearchQuery, floor: float) -> SearchPage:
        """One search of the top ``candidates``: the page is cut from them and the total counts
        those at or above the floor (:func:`fusion.confident_total`), as on the embedded engine;
        no count aggregation is needed."""
        assert query.vector is not None
        n = query.candidates
        knn = build_knn_query(
            query.vector, n, query.filters, query.exclude_ids, ef_search=self.config.ef_search
        )
        answer = self._search(build_search_body(knn, n))
        scored = [(h["_id"], self._cosine(h["_score"])) for h in answer["hits"]["hits"]]
        ranked = fusion.sort_hits(Hit(i, s, vector_score=s) for i, s in scored)
        total, relation = fusion.confident_total((), 0, "eq", scored, n, floor)
        end = query.offset + query.k
        return SearchPage(hits=ranked[query.offset : end], total=total, total_relation=relation)

    def _search_hybrid_client(self, query: SearchQuery) -> SearchPage:
        """One ``_msearch``: each sub-query's top N (raw BM25, cosine), fused here."""
        assert query.text is not None and query.vector is not None
        n = query.candidates
        floor = query.vector_floor
        counts = self._counts(query)
        # With a floor the total comes from the lists and the text list's own count.
        aggs = self._count_aggs(query, counts) if floor is None else {}
        text_body = build_search_body(
            build_match_query(query.text, query.filters, query.exclude_ids),
            n,
            by_id=True,
            total_hits=False if floor is None else self.config.total_hits_limit,
        )
        knn_body = build_search_body(
            build_knn_query(
                query.vector, n, query.filters, query.exclude_ids, ef_search=self.config.ef_search
            ),
            n,
        )
        if NO_VECTOR_AGG in aggs:
            text_body["aggs"] = {NO_VECTOR_AGG: aggs.pop(NO_VECTOR_AGG)}
        if aggs:
            knn_body["aggs"] = aggs
        text, vector = self._msearch([text_body, knn_body])
        text_list = [(h["_id"], self._bm25(h["_score"])) for h in text["hits"]["hits"]]
        vector_list = [(h["_id"], self._cosine(h["_score"])) for h in vector["hits"]["hits"]]
        end = query.offset + query.k
        fused = fusion.fuse(text_list, vector_list, query.alpha, limit=end)
        if floor is None:
            total = self._total_from(query, counts, [text, vector])
            return SearchPage(hits=fused[query.offset : end], total=total)
        text_total, text_relation = _total(text)
        total, relation = fusion.confident_total(
            [i for i, _ in text_list], text_total, text_relation, vector_list, n, floor
        )
        return SearchPage(hits=fused[query.offset : end], total=total, total_relation=relation)

    def _search_hybrid_pipeline(self, query: SearchQuery) -> SearchPage:
        """One hybrid search through a temporary normalization pipeline; each hit's BM25 and kNN
        scores come back as its named sub-queries' scores.

        A named query's score is the document's own: a hit from the kNN list whose caption
        also matches carries its BM25 score even where it was not among the text list's top N
        (client fusion reports only the scores it fused). The processor returns only the fused
        score, so these hits have no ``text_part``/``vector_part``. A query with a
        ``vector_floor`` does not come here: its total needs both top lists (client fusion).
        """
        counts = self._counts(query)
        body = build_hybrid_body(query, ef_search=self.config.ef_search)
        body["search_pipeline"] = build_pipeline_body(query.alpha)  # temporary: read-only role
        if aggs := self._count_aggs(query, counts):
            body["aggs"] = aggs
        answer = self._search(body, {"include_named_queries_score": "true"})
        hits = []
        for h in answer["hits"]["hits"]:
            named = h.get("matched_queries")
            scores = named if isinstance(named, Mapping) else {}
            text_score, vector_score = scores.get(TEXT_QUERY_NAME), scores.get(VECTOR_QUERY_NAME)
            hits.append(
                Hit(
                    image_id=h["_id"],
                    score=float(h["_score"]),
                    text_score=None if text_score is None else self._bm25(text_score),
                    vector_score=None if vector_score is None else self._cosine(vector_score),
                )
            )
        fused = fusion.sort_hits(hits)
        total = self._total_from(query, counts, [answer])
        return SearchPage(hits=fused[query.offset : query.offset + query.k], total=total)


def merge_target(docs: int, shards: int = 1) -> int:
    """Return the segments per shard a finished run index is merged to."""
    per_shard = -(-max(docs, 1) // max(shards, 1))
    return max(1, -(-per_shard // MERGE_DOCS_PER_SEGMENT))


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _count_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _total(answer: Mapping[str, Any]) -> tuple[int, TotalRelation]:
    """Return a search answer's total and whether it is exact (``eq``) or a lower bound."""
    total = answer.get("hits", {}).get("total", 0)
    if isinstance(total, Mapping):
        relation: TotalRelation = "gte" if total.get("relation") == "gte" else "eq"
        return int(total["value"]), relation
    return int(total), "eq"


def _describe_error(error: Any) -> str:
    """Return ``type: reason`` of an OpenSearch error, from its root cause where it names one
    (a search's own reason is often just "all shards failed"); never the node ids and uuids."""
    if not isinstance(error, Mapping):
        return str(error)
    causes = error.get("root_cause")
    if isinstance(causes, list) and causes and isinstance(causes[0], Mapping):
        error = causes[0]
    while isinstance(error.get("caused_by"), Mapping):
        error = error["caused_by"]
    return f"{error.get('type', '')}: {error.get('reason', '')}".strip(": ")


def _complete(answer: Any) -> Any:
    """Return a search answer, or raise if it covers only part of the index.

    OpenSearch answers 200 when some shards failed or the search timed out, with what the rest
    found: taken as whole, a page would silently miss documents and its total would be low.
    """
    if not isinstance(answer, Mapping):
        return answer
    shards = answer.get("_shards") or {}
    failed = int(shards.get("failed", 0) or 0)
    if failed or answer.get("timed_out"):
        failures = shards.get("failures") or [{}]
        reason = _error_kind(failures[0].get("reason", {})) if failed else "timed out"
        log.warning(
            "partial search answer: %d of %s shards failed, timed out %s (%s)",
            failed,
            shards.get("total", "?"),
            bool(answer.get("timed_out")),
            reason,
        )
        timed = ", timed out" if answer.get("timed_out") else ""
        raise SearchIndexError(
            f"OpenSearch answered for only part of the index ({failed} of "
            f"{shards.get('total', '?')} shards failed{timed}: {reason}); try again"
        )
    return answer


def _is_missing_index(answer: Any) -> bool:
    """Tell whether an error answer (or an ``_mget`` item) says the index does not exist."""
    error = answer.get("error") if isinstance(answer, Mapping) else None
    return isinstance(error, Mapping) and error.get("type") == "index_not_found_exception"


def _error_kind(error: Any) -> str:
    """Return an OpenSearch error's type, its causes' types, and its reason's length only.

    Errors of requests that carry documents or queries can quote them ("Preview of field's
    value: ...", a query's text): what reaches logs, load reports and clients must not, so the
    reason itself is never shown.
    """
    if not isinstance(error, Mapping):
        return f"error (reason of {len(str(error))} characters not shown)"
    causes = error.get("root_cause")
    if isinstance(causes, list) and causes and isinstance(causes[0], Mapping):
        error = causes[0]
    types = [str(error.get("type") or "error")]
    reason = str(error.get("reason") or "")
    if types[0] in _INDEX_ERRORS:
        return f"{types[0]}: {reason}"  # their reason names the index, nothing a client sent
    while isinstance(error.get("caused_by"), Mapping):
        error = error["caused_by"]
        types.append(str(error.get("type") or "error"))
    return f"{' caused by '.join(types)} (reason of {len(reason)} characters not shown)"


# Errors about an index itself, whose reason quotes only the index's name: shown whole.
_INDEX_ERRORS = frozenset(
    {"index_not_found_exception", "index_closed_exception", "resource_already_exists_exception"}
)
# Requests whose errors may quote documents or query text: only the error's kind is shown.
_DATA_ENDPOINTS = frozenset(
    {"_bulk", "_search", "_msearch", "_mget", "_doc", "_count", "_update", "_delete_by_query"}
)


def _error_text(exc: TransportError, path: str = "") -> str:
    """Describe a failed request: its error's kind only where the request carried data."""
    info = exc.info
    error = info.get("error", info) if isinstance(info, Mapping) else exc.error
    if _DATA_ENDPOINTS & set(path.split("?")[0].split("/")):
        return _error_kind(error)
    return _describe_error(error) if isinstance(error, Mapping) else str(error)


def _item_error(outcome: Mapping[str, Any]) -> str:
    """Describe a rejected bulk item by its error's kind (its reason can quote the document)."""
    error = outcome.get("error")
    if isinstance(error, Mapping):
        return _error_kind(error)
    return "unknown error" if not error else _error_kind(error)
