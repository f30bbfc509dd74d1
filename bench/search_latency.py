"""Search latency of the embedded engine against the naive path, measured in the same run.

Builds a corpus of ``--n`` documents (default 185k, MedPix scale) with captions written by the
synthetic generator (a share of them captionless) and embedding-like 512-d vectors
(``normalise(z·A + ε)``, see :mod:`medsearch.index.synthetic`), then times:

- build: the embedded index (tantivy + faiss HNSW, one atomic generation) vs the naive path
  (an SQLite FTS5 table; numpy exact search needs no build);
- the search part of text, vector and hybrid queries (no encoder: query vectors are given),
  p50 and p99 over ``--queries`` queries, for the engine and for the naive path: SQLite FTS5
  ``ORDER BY bm25`` + numpy exact top-k + the same :func:`medsearch.fusion.fuse`;
- the engine's vector recall@10 against exact search.

Targets: build <= 60 s, hybrid search part p50 <= 5 ms. ``--n 20000`` gives a quick run.
The machine may be shared: figures are only comparable within one run.

    .venv/bin/python bench/search_latency.py [--n 185000] [--queries 200] [--dim 512]
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medsearch.data.synth import build_queries, sample_attributes, write_caption
from medsearch.fusion import fuse
from medsearch.index.base import HYBRID_DEPTH, Document, SearchQuery
from medsearch.index.embedded import EmbeddedIndex, build_index
from medsearch.index.synthetic import embedding_like_vectors

TARGET_BUILD_S = 60.0
TARGET_HYBRID_P50_MS = 5.0


def make_corpus(
    n: int, dim: int, captionless: float, seed: int
) -> tuple[list[Document], np.ndarray, list[str]]:
    """Documents with generator-style captions and metadata, their vectors, and query texts."""
    rng = np.random.default_rng(seed)
    attributes = [sample_attributes(rng) for _ in range(n)]
    captions = [write_caption(a, rng) for a in attributes]
    missing = rng.random(n) < captionless
    vectors = embedding_like_vectors(n, dim, seed=seed)
    docs = [
        Document(
            image_id=f"img{i:07d}",
            caption=None if missing[i] else captions[i],
            vector=vectors[i],
            image=f"images/img{i:07d}.png",
            metadata=attributes[i].metadata(),
        )
        for i in range(n)
    ]
    # Query texts as the generator phrases them (judged on a slice: only the texts are used).
    head = attributes[:2000]
    ids = [d.image_id for d in docs[:2000]]
    queries = build_queries(head, ids, ["test"] * len(head), 200, rng)
    return docs, vectors, [q["query"] for q in queries]


class NaivePath:
    """The baseline: SQLite FTS5 BM25 (porter stemming) + numpy exact top-k + the same fusion."""

    def __init__(self, docs: list[Document], vectors: np.ndarray) -> None:
        self.ids = [d.image_id for d in docs]
        self.vectors = vectors
        self.db = sqlite3.connect(":memory:")
        self.db.execute("CREATE VIRTUAL TABLE fts USING fts5(caption, tokenize='porter unicode61')")
        with self.db:
            self.db.executemany(
                "INSERT INTO fts(rowid, caption) VALUES (?, ?)",
                ((i, d.caption) for i, d in enumerate(docs) if d.caption),
            )

    def text(self, query: str, k: int) -> list[tuple[str, float]]:
        words = [w for w in "".join(c if c.isalnum() else " " for c in query).split() if w]
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in words)
        rows = self.db.execute(
            "SELECT rowid, bm25(fts) FROM fts WHERE fts MATCH ? ORDER BY bm25(fts) LIMIT ?",
            (match, k),
        ).fetchall()
        return [(self.ids[row], -score) for row, score in rows]  # FTS5 bm25 is negated

    def vector(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        scores = self.vectors @ query
        top = np.argpartition(-scores, k)[:k]
        top = top[np.argsort(-scores[top])]
        return [(self.ids[i], float(scores[i])) for i in top]

    def hybrid(self, text: str, vector: np.ndarray, k: int, alpha: float) -> list:
        n = max(k, HYBRID_DEPTH)
        return fuse(self.text(text, n), self.vector(vector, n), alpha)[:k]


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    """Return (p50, p99) in milliseconds."""
    ms = sorted(s * 1000 for s in samples_s)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return statistics.median(ms), p99


def timed(calls: list[Callable[[], object]], warmup: int = 5) -> list[float]:
    """Run each call once (after a few warm-up calls) and return the durations in seconds."""
    for call in calls[:warmup]:
        call()
    out = []
    for call in calls:
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print build times, latencies, ratios and the targets' verdicts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=185_000, help="documents (185000 = MedPix scale)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--captionless", type=float, default=0.1, help="share without caption")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="index folder (default: temp)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    print(f"corpus: {args.n} documents, {args.dim}-d vectors, {args.captionless:.0%} captionless")
    started = time.perf_counter()
    docs, vectors, texts = make_corpus(args.n, args.dim, args.captionless, args.seed)
    print(f"  generated in {time.perf_counter() - started:.1f} s")
    texts = [texts[i % len(texts)] for i in range(args.queries)]
    query_vectors = embedding_like_vectors(args.queries, args.dim, seed=args.seed + 7)
    terms = [len(t.split()) for t in texts]
    print(f"  {args.queries} queries of {min(terms)}-{max(terms)} words, e.g. {texts[0]!r}")

    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp) / "index"
        started, cpu_started = time.perf_counter(), time.process_time()
        index = build_index(root, docs)
        build_s = time.perf_counter() - started
        # CPU seconds do not depend on what else runs on a shared machine (wall time does).
        build_cpu_s = time.process_time() - cpu_started
        load = os.getloadavg()[0]
        parts = index.info().get("build_seconds", {})
        started = time.perf_counter()
        index = EmbeddedIndex.open(root)
        open_s = time.perf_counter() - started
        started = time.perf_counter()
        naive = NaivePath(docs, vectors)
        naive_build_s = time.perf_counter() - started

        k, alpha = args.k, args.alpha
        modes = {
            "text": (
                [lambda t=t: index.search(SearchQuery(text=t, k=k)) for t in texts],
                [lambda t=t: naive.text(t, k) for t in texts],
            ),
            "vector": (
                [lambda v=v: index.search(SearchQuery(vector=v, k=k)) for v in query_vectors],
                [lambda v=v: naive.vector(v, k) for v in query_vectors],
            ),
            "hybrid": (
                [
                    lambda t=t, v=v: index.search(SearchQuery(text=t, vector=v, k=k, alpha=alpha))
                    for t, v in zip(texts, query_vectors, strict=True)
                ],
                [
                    lambda t=t, v=v: naive.hybrid(t, v, k, alpha)
                    for t, v in zip(texts, query_vectors, strict=True)
                ],
            ),
        }
        print()
        print(
            f"build: engine {build_s:.1f} s (text {parts.get('text', 0):.1f} s, "
            f"HNSW {parts.get('ann', 0):.1f} s, {index.info()['ann']}); "
            f"naive FTS5 {naive_build_s:.1f} s; opening the built index {open_s:.1f} s"
        )
        print(
            f"  engine build used {build_cpu_s:.0f} CPU-s on {os.cpu_count()} cores "
            f"(load average {load:.1f} at the end: the machine may be shared)"
        )
        print()
        print(f"search part, k={k} (ms)   engine p50   p99    naive p50    p99   p50 ratio")
        results = {}
        for mode, (engine_calls, naive_calls) in modes.items():
            e50, e99 = percentiles(timed(engine_calls))
            n50, n99 = percentiles(timed(naive_calls))
            results[mode] = e50
            print(
                f"  {mode:<22} {e50:10.2f} {e99:7.2f} {n50:11.2f} {n99:7.2f}"
                f"   naive/engine {n50 / e50:6.1f}x"
            )

        found = 0
        for v in query_vectors[:100]:
            got = {h.image_id for h in index.search(SearchQuery(vector=v, k=10)).hits}
            found += len(got & {i for i, _ in naive.vector(v, 10)})
        recall = found / (10 * min(100, len(query_vectors)))
        print()
        print(f"vector recall@10 vs exact: {recall:.3f}")
        ok_build = "yes" if build_s <= TARGET_BUILD_S else "NO"
        ok_hybrid = "yes" if results["hybrid"] <= TARGET_HYBRID_P50_MS else "NO"
        print(
            f"targets: build {build_s:.1f} s <= {TARGET_BUILD_S:.0f} s: {ok_build}; "
            f"hybrid p50 {results['hybrid']:.2f} ms <= {TARGET_HYBRID_P50_MS:.0f} ms: {ok_hybrid}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
