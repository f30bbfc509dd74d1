"""HNSW recall@10 and search latency of the embedded engine at 185k and 1M vectors, against exact.

Embedding-like 512-d unit vectors (``normalise(z·A + ε)``, :mod:`medsearch.index.synthetic`, the
corpus of ``bench/search_latency.py``) and 200 query vectors drawn the same way. The baseline, in
the same run, is numpy exact inner-product top 10 (``vectors @ q``): its results are the truth
recall is judged on and its per-query time is what the graph's is divided by. Measured:

- at ``--n`` (default 185k): the engine built by ``build_index`` (vectors only) for each HNSW
  ``M`` in ``--m`` (default first: the engine's own setting), its build seconds (the HNSW part),
  and for each efSearch in ``--ef`` the recall@10 and the p50/p99 of the search part (one query
  on one thread, the engine's own ``_hnsw_top``); the default setting is also timed through
  ``EmbeddedIndex.search`` (ids mapped, sorted), and those figures are the top-level keys;
- at 1M (``--million``, on by default): the same for the cached 1M-document index of
  ``bench/scale.py`` (built once under ``build/bench/scale/``; its build seconds are the ones
  recorded when it was built), over an efSearch sweep on the built graph;
- on real model embeddings where the demo has been built (``build/demo``: its image vectors,
  queried with its model's text vectors of the corpus queries); skipped without it. The demo is
  under the engine's exact threshold, so a graph with the engine's settings is built on the side.

Sweep builds are cached under ``build/bench/ann/`` (a rerun reports the recorded build time).
Targets (issue #12): recall@10 >= 0.98 at 185k, >= 0.95 at 1M. ``--quick``: 20k vectors, no 1M,
writes nothing. Figures go under ``"ann"`` and ``"ann_1m"`` in ``bench/results.json``.

    .venv/bin/python bench/ann.py [--n 185000] [--m 16 32] [--ef 128 256 384 512 768] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from opensearch import write_section  # noqa: E402
from scale import cached_index  # noqa: E402
from search_latency import percentiles  # noqa: E402

from medsearch.index.base import Document, SearchQuery  # noqa: E402
from medsearch.index.embedded import (  # noqa: E402
    EmbeddedConfig,
    EmbeddedIndex,
    _hnsw_top,
    build_index,
)
from medsearch.index.synthetic import embedding_like_vectors  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results.json"
WORKDIR = ROOT / "build" / "bench" / "ann"
DEMO = ROOT / "build" / "demo"
DIM = 512
K = 10
DEFAULT = EmbeddedConfig()
TARGET_RECALL = {"185k": 0.98, "1m": 0.95}


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """The baseline: numpy exact inner-product top ``k`` slots per query (chunked over rows, so
    a memory-mapped 1M x 512 array is read once for all queries)."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_slots = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, vectors.shape[0], 100_000):
        scores = queries @ np.asarray(vectors[start : start + 100_000]).T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        merged_slots = np.concatenate([best_slots, top + start], axis=1)
        keep = np.argsort(-merged_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, keep, 1)
        best_slots = np.take_along_axis(merged_slots, keep, 1)
    return best_slots


def exact_p50_ms(vectors: np.ndarray, queries: np.ndarray) -> float:
    """p50 of one exact numpy top-k query (the baseline's latency), vectors already in memory."""
    samples = []
    for q in queries:
        started = time.perf_counter()
        scores = vectors @ q
        top = np.argpartition(-scores, K)[:K]
        _ = top[np.argsort(-scores[top])]
        samples.append(time.perf_counter() - started)
    return percentiles(samples)[0]


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    """Mean share of the exact top 10 that the approximate top 10 found."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def sweep_ef(hnsw: Any, queries: np.ndarray, truth: np.ndarray, efs: list[int]) -> dict[str, Any]:
    """Recall@10 and search-part p50/p99 of the graph at each efSearch (one thread per query)."""
    rows = {}
    for ef in efs:
        for q in queries[:5]:
            _hnsw_top(hnsw, q, K, ef, None)
        found, samples = [], []
        for q in queries:
            started = time.perf_counter()
            slots, _ = _hnsw_top(hnsw, q, K, ef, None)
            samples.append(time.perf_counter() - started)
            found.append(slots)
        p50, p99 = percentiles(samples)
        rows[str(ef)] = {
            "recall_at_10": round(recall(found, truth), 4),
            "p50_ms": round(p50, 3),
            "p99_ms": round(p99, 3),
        }
    return rows


def engine_search(index: EmbeddedIndex, queries: np.ndarray, truth_ids: list[set[str]]) -> dict:
    """Recall@10 and p50 through ``EmbeddedIndex.search`` (the engine's own settings)."""
    calls = [SearchQuery(vector=q, k=K) for q in queries]
    for call in calls[:5]:
        index.search(call)
    samples, hits = [], 0
    for call, truth in zip(calls, truth_ids, strict=True):
        started = time.perf_counter()
        page = index.search(call)
        samples.append(time.perf_counter() - started)
        hits += len({h.image_id for h in page.hits} & truth)
    p50, p99 = percentiles(samples)
    return {
        "recall_at_10": round(hits / (K * len(calls)), 4),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
    }


def vectors_index(path: Path, vectors: np.ndarray, m: int) -> tuple[EmbeddedIndex, float, bool]:
    """An engine index of the vectors alone with HNSW ``M`` = ``m``, built once; (index, HNSW
    build seconds, whether it was cached)."""
    cached = (path / "CURRENT").is_file()
    if cached:
        index = EmbeddedIndex.open(path)
        if index.count() != len(vectors) or index.config.hnsw_m != m:
            cached = False
    if not cached:
        docs = (
            Document(image_id=f"v{i:07d}", caption=None, vector=v) for i, v in enumerate(vectors)
        )
        index = build_index(path, docs, config=EmbeddedConfig(hnsw_m=m))
    return index, float(index.info()["build_seconds"]["ann"]), cached


def measure_size(
    label: str, n: int, ms: list[int], efs: list[int], queries: np.ndarray
) -> dict[str, Any]:
    """Build (or reuse) one index per M at ``n`` vectors and sweep efSearch on each."""
    vectors = embedding_like_vectors(n, DIM, seed=0)
    started = time.perf_counter()
    truth = exact_top(vectors, queries)
    print(
        f"[{label}] exact truth for {len(queries)} queries in {time.perf_counter() - started:.1f}s"
    )
    baseline = exact_p50_ms(vectors, queries[:50])
    settings: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for m in ms:
        index, build_s, cached = vectors_index(WORKDIR / f"{label}-m{m}", vectors, m)
        note = " (cached: recorded build time)" if cached else ""
        print(f"[{label}] M={m}: HNSW build {build_s:.1f} s{note}", flush=True)
        rows = sweep_ef(index._gen.hnsw, queries, truth, efs)
        settings[f"M{m}"] = {"build_s": round(build_s, 1), "build_cached": cached, "ef": rows}
        for ef, row in rows.items():
            print(
                f"  efSearch {ef:>4}: recall@10 {row['recall_at_10']:.4f}  p50 {row['p50_ms']:.3f}"
                f" ms  p99 {row['p99_ms']:.3f} ms  = {baseline / row['p50_ms']:.1f}x faster than"
                f" numpy exact ({baseline:.2f} ms)",
                flush=True,
            )
        if m == DEFAULT.hnsw_m:
            ids = [{f"v{s:07d}" for s in row} for row in truth]
            engine = engine_search(index, queries, ids)
            top = {"build_s": round(build_s, 1), **engine}
            print(f"[{label}] engine default (M {m}, efSearch {DEFAULT.ef_search}): {engine}")
    return {
        "docs": n,
        **top,
        "m": DEFAULT.hnsw_m,
        "ef_construction": DEFAULT.ef_construction,
        "ef_search": DEFAULT.ef_search,
        "baseline": "numpy exact top 10",
        "baseline_p50_ms": round(baseline, 2),
        "speedup_p50": round(baseline / top["p50_ms"], 1) if top else None,
        "sweep": settings,
    }


def measure_million(efs: list[int], queries: np.ndarray) -> dict[str, Any]:
    """The cached 1M-document index of ``bench/scale.py``: recall and latency over efSearch."""
    path = cached_index(1_000_000)
    index = EmbeddedIndex.open(path)
    gen_dir = path / (path / "CURRENT").read_text().strip()
    vectors = np.load(gen_dir / "vectors.npy", mmap_mode="r")
    rows_of = np.load(gen_dir / "vector_rows.npy")
    started = time.perf_counter()
    truth = exact_top(vectors, queries)
    print(f"[1m] exact truth for {len(queries)} queries in {time.perf_counter() - started:.1f} s")
    in_memory = np.asarray(vectors)
    baseline = exact_p50_ms(in_memory, queries[:20])
    del in_memory
    build_s = float(index.info()["build_seconds"]["ann"])
    rows = sweep_ef(index._gen.hnsw, queries, truth, efs)
    for ef, row in rows.items():
        print(
            f"  efSearch {ef:>4}: recall@10 {row['recall_at_10']:.4f}  p50 {row['p50_ms']:.3f} ms"
            f"  = {baseline / row['p50_ms']:.1f}x faster than numpy exact ({baseline:.1f} ms)",
            flush=True,
        )
    ids = [{index._gen.image_ids[int(rows_of[s])] for s in row} for row in truth]
    engine = engine_search(index, queries, ids)
    print(f"[1m] engine default (efSearch {DEFAULT.ef_search}): {engine}; build {build_s:.0f} s")
    return {
        "docs": index.count(),
        "build_s": round(build_s, 1),
        "build_recorded": "HNSW seconds recorded when the cached index was built",
        **engine,
        "baseline": "numpy exact top 10",
        "baseline_p50_ms": round(baseline, 2),
        "speedup_p50": round(baseline / engine["p50_ms"], 1),
        "sweep": {f"M{DEFAULT.hnsw_m}": {"ef": rows}},
    }


def measure_demo(efs: list[int]) -> dict[str, Any] | None:
    """Recall@10 on the demo's real image vectors, queried by its model's text vectors."""
    from medsearch.data.queries import queries_beside
    from medsearch.vectorize import read_vectors

    model, vectors_dir = DEMO / "model", DEMO / "vectors"
    manifest = DEMO / "corpus" / "manifest.jsonl"
    if not (model / "config.json").is_file() or not (vectors_dir / "vectors.npy").is_file():
        print(f"[demo] skipped: no trained demo model and vectors under {DEMO}")
        return None
    from medsearch.model.encoder import load_encoder

    _, vectors, _ = read_vectors(vectors_dir)
    texts = [q.query for q in queries_beside(manifest) or []][:200]
    queries = load_encoder(str(model)).encode_texts(texts)
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], DEFAULT.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = DEFAULT.ef_construction
    hnsw.add(np.ascontiguousarray(vectors, dtype=np.float32))
    truth = exact_top(vectors, queries)
    rows = sweep_ef(hnsw, queries, truth, efs)
    print(f"[demo] {len(vectors)} real vectors, {len(texts)} text queries: {rows}")
    return {"docs": len(vectors), "queries": len(texts), "ef": rows}


def main(argv: list[str] | None = None) -> int:
    """Run the sweeps, print recall and ratios against exact search, write the sections."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=185_000)
    parser.add_argument("--m", type=int, nargs="+", default=[DEFAULT.hnsw_m, 32])
    parser.add_argument("--ef", type=int, nargs="+", default=[128, 256, 384, 512, 768])
    parser.add_argument("--ef-1m", type=int, nargs="+", default=[384, 512, 768, 1024])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-million", action="store_true", help="skip the 1M index")
    parser.add_argument("--quick", action="store_true", help="20k vectors, no 1M, write nothing")
    args = parser.parse_args(argv)
    n = 20_000 if args.quick else args.n
    queries = embedding_like_vectors(args.queries, DIM, seed=7)
    WORKDIR.mkdir(parents=True, exist_ok=True)
    label = "185k" if n == 185_000 else str(n)
    ann = measure_size(label, n, args.m, args.ef, queries)
    demo = measure_demo(args.ef)
    if demo is not None:
        ann["demo_real_embeddings"] = demo
    load = round(os.getloadavg()[0], 2)
    ann.update(date=datetime.now(UTC).date().isoformat(), load_average=load)
    print(f"load average {load} on {os.cpu_count()} cores: absolute times are indicative")
    verdicts = [("185k", ann)]
    million = None
    if not args.quick and not args.no_million:
        million = measure_million(args.ef_1m, queries)
        million.update(date=ann["date"], load_average=round(os.getloadavg()[0], 2))
        verdicts.append(("1m", million))
    for key, section in verdicts:
        if key == "185k" and n != 185_000:
            continue
        met = "met" if section["recall_at_10"] >= TARGET_RECALL[key] else "MISSED"
        print(
            f"target: recall@10 at {key} {section['recall_at_10']:.4f} >= {TARGET_RECALL[key]}:"
            f" {met}"
        )
    if not args.quick:
        write_section(RESULTS, "ann", ann)
        if million is not None:
            write_section(RESULTS, "ann_1m", million)
    print(json.dumps({"ann_p50_ms": ann.get("p50_ms"), "recall": ann.get("recall_at_10")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
