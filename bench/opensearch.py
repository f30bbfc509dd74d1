"""The OpenSearch engine against the embedded engine (the baseline), on one corpus in one run.

Builds the corpus of ``bench/search_latency.py`` (``--docs`` documents, default 20,000: captions
by the synthetic generator, 10% captionless, embedding-like 512-d vectors) and times, for each
engine:

- bulk load, in documents per second: the embedded engine's ``build_index`` (one atomic
  generation) against ``OpenSearchIndex``: index create + ``upsert`` after ``begin_load`` (no
  refresh, no replicas, two bulk requests in flight) + ``finish_load`` (refresh, the
  force-merge to the segments the engine chooses, replicas, the record's counts);
- the search part of text, vector and hybrid queries (no encoder: query vectors are given),
  p50 and p99 over ``--queries`` queries after an untimed pass over them (``--warmup``), for the
  embedded engine and for OpenSearch in both hybrid modes: ``pipeline`` (the neural-search
  normalization processor) and ``client`` (both top-N lists in one ``_msearch``, fused by
  :mod:`medsearch.fusion`), beside the raw request of the same depth (:class:`RawRequests`) and
  the raw depth-10 hybrid, all taking turns query by query; the embedded engine is measured
  alone, before the node starts (taking turns with OpenSearch slowed it 2-3x: JVM, client and
  engine share the cores);
- vector recall@10 of each engine against exact search, how far the two hybrid modes agree, and
  the HTTP round trip of ``GET /`` (the floor under every OpenSearch latency).

Ratios are OpenSearch / embedded, so above 1 means OpenSearch is slower. OpenSearch runs on a
local node started the way the test suite starts it (``tests/support/opensearch_node.py``: Java
17 and Maven; a first build downloads about 60 MB) with a ``--heap`` heap, or on ``--url``, a
user's cluster (basic auth in the URL; the bench index is deleted at the end).
On one machine, client, node and the embedded engine share the cores: compare within a run.

The figures go under ``"opensearch"`` / ``"<docs>"`` in ``bench/results.json`` (other sections
and other sizes are kept): ``make bench`` runs 20,000 documents, and ``--docs 185000`` the
production size.

    .venv/bin/python bench/opensearch.py [--docs 20000] [--queries 200] [--url URL] [--heap 2g]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from medsearch.index.base import HYBRID_DEPTH, SearchIndex, SearchQuery
from medsearch.index.embedded import build_index
from medsearch.index.opensearch import (
    OpenSearchConfig,
    OpenSearchIndex,
    build_knn_query,
    build_match_query,
    build_pipeline_body,
    connect,
)
from medsearch.index.synthetic import embedding_like_vectors
from medsearch.vectors import normalize

# Run as a script, sys.path[0] is bench/ (for search_latency); the node helper lives in tests/.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

from search_latency import make_corpus, percentiles  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results.json"
SECTION = "opensearch"
MIN_DOCS = 20_000
MODES = ("text", "vector", "hybrid")
BASELINE = "embedded"
HYBRID_MODES = ("pipeline", "client")
RATIO_LABEL = f"opensearch/{BASELINE}"


class RawRequests:
    """The floor under the engine: one bare request per query, the engine's depth, no counts.

    text: ``match`` size k (total counted to 10,000, as OpenSearch does by default); vector:
    ``knn`` k = size = k; hybrid: one ``hybrid`` query through the normalization pipeline with
    both sub-queries at ``depth`` (:data:`HYBRID_DEPTH` by default, or 10: the cheapest
    hybrid request there is). Answers are not parsed into hits.
    """

    def __init__(self, client: Any, name: str, depth: int = HYBRID_DEPTH, ef_search: int = 128):
        self.client, self.name, self.depth, self.ef_search = client, name, depth, ef_search

    def search(self, query: SearchQuery) -> object:
        if query.vector is None:
            body: dict[str, Any] = {
                "query": build_match_query(query.text or "", {}),
                "size": query.k,
            }
        elif query.text is None:
            knn = build_knn_query(normalize(query.vector), query.k, {}, ef_search=self.ef_search)
            body = {"query": knn, "size": query.k}
        else:
            n = max(self.depth, query.k)
            vector = normalize(query.vector)
            queries = [
                build_match_query(query.text, {}),
                build_knn_query(vector, n, {}, ef_search=self.ef_search),
            ]
            body = {
                "query": {"hybrid": {"queries": queries}},
                "size": n,
                "search_pipeline": build_pipeline_body(query.alpha),
            }
        body["_source"] = False
        return self.client.transport.perform_request("POST", f"/{self.name}/_search", body=body)


def load_opensearch(index: OpenSearchIndex, docs: list, dim: int) -> tuple[float, float, int, int]:
    """Create the index, bulk-load ``docs`` and finish the load (refresh, force-merge, replicas,
    counts); return (total s, of which finishing s, written, failed)."""
    started = time.perf_counter()
    index.create(dim)
    index.begin_load()
    result = index.upsert(docs)
    finishing = time.perf_counter()
    index.finish_load()
    done = time.perf_counter()
    return done - started, done - finishing, result.written, len(result.failed)


def search_calls(
    index: SearchIndex, texts: list[str], vectors: np.ndarray, k: int, alpha: float
) -> dict[str, list[Callable[[], object]]]:
    """Return one list of search calls per mode, the same queries for every engine."""
    pairs = list(zip(texts, vectors, strict=True))
    return {
        "text": [lambda t=t: index.search(SearchQuery(text=t, k=k)) for t in texts],
        "vector": [lambda v=v: index.search(SearchQuery(vector=v, k=k)) for v in vectors],
        "hybrid": [
            lambda t=t, v=v: index.search(SearchQuery(text=t, vector=v, k=k, alpha=alpha))
            for t, v in pairs
        ],
    }


def measure(
    engines: dict[str, SearchIndex],
    texts: list[str],
    vectors: np.ndarray,
    *,
    k: int,
    alpha: float,
    warmup: int,
) -> dict[str, dict[str, dict[str, float]]]:
    """Return ``{engine: {mode: {"p50_ms", "p99_ms"}}}`` of the search part.

    The engines take turns query by query, so a load that drifts on a shared machine weighs on
    each of them alike and their ratios hold even where the absolute figures move.
    """
    calls = {name: search_calls(index, texts, vectors, k, alpha) for name, index in engines.items()}
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in engines}
    for mode in MODES:
        for name in engines:
            for call in calls[name][mode][:warmup]:
                call()
        samples: dict[str, list[float]] = {name: [] for name in engines}
        for i in range(len(texts)):
            for name in engines:
                started = time.perf_counter()
                calls[name][mode][i]()
                samples[name].append(time.perf_counter() - started)
        for name, durations in samples.items():
            p50, p99 = percentiles(durations)
            out[name][mode] = {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}
    return out


def round_trip(client: Any, count: int) -> dict[str, float]:
    """Return p50/p99 of ``GET /`` (ms): the HTTP floor under every OpenSearch figure."""
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        client.transport.perform_request("GET", "/")
        durations.append(time.perf_counter() - started)
    p50, p99 = percentiles(durations)
    return {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int) -> set[int]:
    """Return the rows of the ``k`` nearest unit vectors by cosine (numpy, exact)."""
    scores = vectors @ (query / np.linalg.norm(query))
    return {int(i) for i in np.argpartition(-scores, k)[:k]}


def recall_at_10(index: SearchIndex, vectors: np.ndarray, queries: np.ndarray) -> float:
    """Return the engine's vector recall@10 against exact search (image ids ``img<row>``)."""
    found = 0
    for query in queries:
        hits = index.search(SearchQuery(vector=query, k=10)).hits
        got = {int(h.image_id.removeprefix("img")) for h in hits}
        found += len(got & exact_top(vectors, query, 10))
    return found / (10 * len(queries))


def hybrid_agreement(
    first: SearchIndex, second: SearchIndex, texts: list[str], vectors: np.ndarray, alpha: float
) -> float:
    """Return the mean share of top-10 hybrid ids two engines (or modes) have in common."""
    shared = 0
    for text, vector in zip(texts, vectors, strict=True):
        query = SearchQuery(text=text, vector=vector, k=10, alpha=alpha)
        a = {h.image_id for h in first.search(query).hits}
        b = {h.image_id for h in second.search(query).hits}
        shared += len(a & b)
    return shared / (10 * len(texts))


def node_facts(client: Any) -> dict[str, Any]:
    """Return the cluster's version, node count and the first node's maximum heap in bytes."""
    info = client.transport.perform_request("GET", "/")
    nodes = client.transport.perform_request("GET", "/_nodes/stats/jvm")["nodes"]
    heap = next(iter(nodes.values()))["jvm"]["mem"]["heap_max_in_bytes"] if nodes else None
    return {"version": info["version"]["number"], "nodes": len(nodes), "heap_max_bytes": heap}


@contextlib.contextmanager
def opensearch_url(url: str | None, heap: str) -> Iterator[str]:
    """Yield ``url``, or start a local node with ``heap`` (as the test suite does) and yield it."""
    if url:
        yield url
        return
    from tests.support.opensearch_node import NodeUnavailable, OpenSearchNode

    print(f"starting a local OpenSearch node (heap {heap}) ...", flush=True)
    started = time.perf_counter()
    try:
        with OpenSearchNode(heap=heap) as node:
            assert node.url is not None
            print(f"  {node.url} up in {time.perf_counter() - started:.1f} s", flush=True)
            yield node.url
    except NodeUnavailable as exc:
        raise SystemExit(f"cannot start a local OpenSearch node: {exc}") from None


def write_section(path: Path, key: str, section: dict[str, Any]) -> None:
    """Set ``key`` in the JSON file at ``path`` to ``section``, keeping the other keys."""
    data: dict[str, Any] = {}
    if path.is_file():
        with contextlib.suppress(ValueError):
            data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    data[key] = section
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # a reader never sees a half-written file


def runs_by_size(path: Path) -> dict[str, Any]:
    """Return the recorded runs of this bench by document count (``{"20000": {...}, ...}``), so a
    run at one size keeps the figures of the others."""
    with contextlib.suppress(OSError, ValueError):
        section = json.loads(path.read_text()).get(SECTION)
        if isinstance(section, dict):
            return {k: v for k, v in section.items() if k.isdigit() and isinstance(v, dict)}
    return {}


def ratio(value: float, baseline: float) -> float:
    """Return ``value / baseline`` (infinite for a zero baseline)."""
    return value / baseline if baseline > 0 else float("inf")


def print_table(
    load: dict[str, dict[str, float]],
    search: dict[str, dict[str, dict[str, float]]],
    k: int,
) -> None:
    """Print bulk-load rates and search-part latencies with ratios against the embedded engine."""
    base = load[BASELINE]
    print()
    print(f"bulk load ({base['docs']:.0f} docs)       seconds     docs/s   {RATIO_LABEL}")
    for engine, figures in load.items():
        rate_ratio = ratio(figures["docs_per_s"], base["docs_per_s"])
        note = "(baseline)" if engine == BASELINE else f"{rate_ratio:.3f}x"
        print(f"  {engine:<22} {figures['seconds']:9.1f} {figures['docs_per_s']:10.0f}   {note}")
    print()
    print(f"search part, k={k} (ms)     p50       p99   {RATIO_LABEL}: p50    p99")
    for mode in MODES:
        print(f"  {mode}")
        e = search[BASELINE][mode]
        for engine, modes in search.items():
            f = modes[mode]
            if engine == BASELINE:
                note = "  (baseline)"
            else:
                r50, r99 = ratio(f["p50_ms"], e["p50_ms"]), ratio(f["p99_ms"], e["p99_ms"])
                note = f"{'':>{len(RATIO_LABEL) - 4}}{r50:8.1f}x {r99:6.1f}x"
            print(f"    {engine:<20} {f['p50_ms']:8.2f} {f['p99_ms']:9.2f} {note}")


def main(argv: list[str] | None = None) -> int:
    """Run both engines on one corpus, print the table and write the ``opensearch`` section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000, help="documents (sized for >= 20000)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up calls per mode (default: --queries)"
    )
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--captionless", type=float, default=0.1, help="share without caption")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", default=None, help="a running cluster instead of a local node")
    parser.add_argument("--heap", default="2g", help="heap of the local node")
    parser.add_argument("--no-verify-certs", action="store_true", help="for --url over https")
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="JSON file to update (runs below 20000 docs write only where this is given)",
    )
    parser.add_argument("--no-results", action="store_true", help="print only, write nothing")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = args.queries  # one untimed pass: the node's JIT needs hundreds of requests
    logging.basicConfig(level=logging.WARNING)
    if not args.url:
        from tests.support.opensearch_node import missing_tools

        problem = missing_tools()
        if problem is not None:
            # As the live tests do: skipped with the reason on a workstation, an error in CI.
            print(f"skipped: {problem}; or give --url of a running cluster")
            return 1 if os.environ.get("CI") == "true" else 0
    if args.docs < MIN_DOCS:
        print(f"note: {args.docs} documents is below the {MIN_DOCS} this benchmark is sized for")

    print(
        f"corpus: {args.docs} documents, {args.dim}-d vectors, {args.captionless:.0%} captionless"
    )
    started = time.perf_counter()
    docs, vectors, texts = make_corpus(args.docs, args.dim, args.captionless, args.seed)
    print(f"  generated in {time.perf_counter() - started:.1f} s")
    texts = [texts[i % len(texts)] for i in range(args.queries)]
    query_vectors = embedding_like_vectors(args.queries, args.dim, seed=args.seed + 7)
    n, k, alpha = len(docs), args.k, args.alpha
    load: dict[str, dict[str, float]] = {}
    recall: dict[str, float] = {}
    sample = query_vectors[:100]

    # The embedded build first, before the node starts, so no JVM shares the cores with it.
    with tempfile.TemporaryDirectory() as tmp:
        print("embedded: building ...", flush=True)
        started = time.perf_counter()
        embedded = build_index(Path(tmp) / "index", docs)
        seconds = time.perf_counter() - started
        load[BASELINE] = {"docs": n, "seconds": round(seconds, 2), "docs_per_s": round(n / seconds)}
        print(f"  built in {seconds:.1f} s; searching ...", flush=True)
        # Alone, before the node starts: taking turns with OpenSearch calls (whose JVM and client
        # run on the same cores and evict the caches) measured the embedded engine 2-3x slower.
        search = measure(
            {BASELINE: embedded}, texts, query_vectors, k=k, alpha=alpha, warmup=args.warmup
        )
        recall[BASELINE] = round(recall_at_10(embedded, vectors, sample), 3)

        with opensearch_url(args.url, args.heap) as url:
            verify = False if args.no_verify_certs else None
            client = connect(url, timeout=600, verify_certs=verify)
            name = f"medsearch-bench-{os.getpid()}-{int(time.time())}"
            base = OpenSearchConfig(replicas=0)
            engines: dict[str, SearchIndex] = {}
            for mode in HYBRID_MODES:
                config = replace(base, hybrid=mode)
                engines[f"opensearch-{mode}"] = OpenSearchIndex(client, name, config=config)
            loader = OpenSearchIndex(client, name, config=base)
            engines["raw"] = RawRequests(client, name)  # type: ignore[assignment]
            engines["raw-depth-10"] = RawRequests(client, name, depth=10)  # type: ignore[assignment]
            facts = node_facts(client)
            print(f"opensearch {facts['version']}: loading ...", flush=True)
            try:
                seconds, finish_s, written, failed = load_opensearch(loader, docs, args.dim)
                if written != n or loader.count() != n:
                    raise SystemExit(f"OpenSearch wrote {written} of {n} ({failed} failed)")
                load["opensearch"] = {
                    "docs": n,
                    "seconds": round(seconds, 2),
                    "docs_per_s": round(n / seconds),
                    "finish_load_s": round(finish_s, 2),
                    "segments": loader.segments(),
                    "bulk_concurrency": base.bulk_concurrency,
                }
                print(
                    f"  loaded in {seconds:.1f} s (finish_load with its merge {finish_s:.1f} s; "
                    f"{load['opensearch']['segments']} segments); searching ...",
                    flush=True,
                )
                search |= measure(
                    engines, texts, query_vectors, k=k, alpha=alpha, warmup=args.warmup
                )
                floor = round_trip(client, args.queries)
                recall["opensearch"] = round(recall_at_10(loader, vectors, sample), 3)
                agreement = hybrid_agreement(
                    engines["opensearch-pipeline"],
                    engines["opensearch-client"],
                    texts[:50],
                    query_vectors[:50],
                    alpha,
                )
            finally:
                loader.drop()
        load_average = os.getloadavg()[0]

    print_table(load, search, k)
    print()
    print(
        f"vector recall@10 vs exact: embedded {recall[BASELINE]:.3f}, "
        f"opensearch {recall['opensearch']:.3f}"
    )
    print(f"hybrid top-10 agreement, pipeline vs client: {agreement:.3f}")
    for engine in (f"opensearch-{mode}" for mode in HYBRID_MODES):
        same = {m: ratio(search[engine][m]["p50_ms"], search["raw"][m]["p50_ms"]) for m in MODES}
        shallow = ratio(
            search[engine]["hybrid"]["p50_ms"], search["raw-depth-10"]["hybrid"]["p50_ms"]
        )
        print(
            f"{engine} / raw request of the same depth (p50): "
            + ", ".join(f"{m} {r:.2f}x" for m, r in same.items())
            + f"; hybrid / raw depth-10 hybrid {shallow:.2f}x"
        )
    print(
        f"OpenSearch round trip (GET /, the HTTP floor): p50 {floor['p50_ms']:.2f} ms, "
        f"p99 {floor['p99_ms']:.2f} ms"
    )
    heap = args.heap if not args.url else f"{(facts['heap_max_bytes'] or 0) / 2**30:.1f}g"
    print(
        f"node: OpenSearch {facts['version']}, heap {heap}, {'--url' if args.url else 'local'}; "
        f"{os.cpu_count()} cores, load average {load_average:.1f} at the end (may be shared)"
    )

    section = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "docs": n,
        "dim": args.dim,
        "captionless": args.captionless,
        "queries": args.queries,
        "warmup": args.warmup,
        "k": k,
        "alpha": alpha,
        "baseline": BASELINE,
        "node": {
            "version": facts["version"],
            "heap": heap,
            "heap_max_bytes": facts["heap_max_bytes"],
            "nodes": facts["nodes"],
            "where": "url" if args.url else "local",
            "knn_engine": base.engine,
        },
        "cpus": os.cpu_count(),
        "load_average": round(load_average, 2),
        "load": load,
        "search_ms": search,
        "ratios": {
            "load_docs_per_s": round(
                ratio(load["opensearch"]["docs_per_s"], load[BASELINE]["docs_per_s"]), 4
            ),
            **{
                engine: {
                    mode: round(ratio(figures["p50_ms"], search[BASELINE][mode]["p50_ms"]), 2)
                    for mode, figures in modes.items()
                }
                for engine, modes in search.items()
                if engine != BASELINE
            },
        },
        "raw_ratios": {
            engine: {
                "vs_raw_same_depth": {
                    mode: round(
                        ratio(search[engine][mode]["p50_ms"], search["raw"][mode]["p50_ms"]), 3
                    )
                    for mode in MODES
                },
                "hybrid_vs_raw_depth_10": round(
                    ratio(
                        search[engine]["hybrid"]["p50_ms"],
                        search["raw-depth-10"]["hybrid"]["p50_ms"],
                    ),
                    3,
                ),
            }
            for engine in (f"opensearch-{mode}" for mode in HYBRID_MODES)
        },
        "hybrid_depth": HYBRID_DEPTH,
        "recall_at_10": recall,
        "round_trip_ms": floor,
        "hybrid_agreement_pipeline_client": round(agreement, 3),
    }
    if args.no_results:
        return 0
    if n < MIN_DOCS and args.results == RESULTS:
        # A quick try must not replace the recorded figures; an explicit --results still writes.
        print(f"not written to {RESULTS} (fewer than {MIN_DOCS} documents; give --results)")
        return 0
    write_section(args.results, SECTION, {**runs_by_size(args.results), str(n): section})
    print(f"wrote {SECTION!r} / {str(n)!r} of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
