"""Hybrid latency and resident memory of the embedded engine at 10k, 100k and 1M documents.

For each size, a fresh process opens a cached index of ``bench/search_latency.py``'s corpus
(generator captions, metadata, embedding-like 512-d vectors; built once under
``build/bench/scale/index-<n>``, the 185k one is ``bench/query_latency.py``'s) and times the
search part of ``--queries`` hybrid queries (no encoder: query vectors are given), then reports
its resident memory (``VmRSS``, with the anonymous and file-backed shares: the HNSW graph and
the vectors are memory-mapped, so their pages count once touched). The queries run twice: the
p50 is the second pass (steady state), the first pass is reported beside it (it pages the index
in, from disk when the page cache holds none of it). Baselines in the same run:
the smallest size for latency (how cost grows against n) and a process that imported the
engine and opened nothing for memory. Figures go under ``"scale"`` in ``bench/results.json``.

Target (issue #12): hybrid p50 at 1M <= 20 ms. The 1M build takes minutes on 2 cores (once);
``--quick`` measures 10k and 100k only and writes nothing.

    .venv/bin/python bench/scale.py [--sizes 10000 100000 1000000] [--queries 200] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from opensearch import write_section  # noqa: E402
from search_latency import make_corpus, percentiles  # noqa: E402

from medsearch.index.synthetic import embedding_like_vectors  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results.json"
WORKDIR = ROOT / "build" / "bench" / "scale"
SIZES = (10_000, 100_000, 1_000_000)
DIM = 512
TARGET_1M_HYBRID_P50_MS = 20.0


def cached_index(n: int, workdir: Path = WORKDIR) -> Path:
    """The index folder of the ``n``-document benchmark corpus, built once (185k: query_latency's).

    The corpus is only generated when the index has to be built (1M documents take minutes).
    ``bench/query_latency.py`` is imported here, not at the top: it brings torch, which would
    count in every probe's memory."""
    from query_latency import WORKDIR as QUERY_LATENCY_DIR
    from query_latency import build_corpus_index

    for base in (QUERY_LATENCY_DIR, workdir):
        if (base / f"index-{n}" / "CURRENT").is_file():
            return base / f"index-{n}"
    workdir.mkdir(parents=True, exist_ok=True)
    index, *_ = build_corpus_index(workdir, n)
    return index


def memory_mb() -> dict[str, float]:
    """This process's resident memory (total, anonymous, file-backed) and peak, in MB."""
    fields = {"VmRSS": "rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb", "VmHWM": "peak_mb"}
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            out[fields[key]] = round(int(value.split()[0]) / 1024, 1)
    return out


def probe(index_path: Path | None, queries: int) -> dict[str, Any]:
    """Run in a fresh process: open the index, time hybrid queries, return figures and memory.

    Without an index it only imports the engine: the memory baseline."""
    from medsearch.index.base import SearchQuery
    from medsearch.index.embedded import EmbeddedIndex

    if index_path is None:
        return memory_mb()
    _, _, texts = make_corpus(2000, DIM, captionless=0.1, seed=0)
    texts = (texts * (queries // len(texts) + 1))[:queries]
    vectors = embedding_like_vectors(queries, DIM, seed=7)
    started = time.perf_counter()
    index = EmbeddedIndex.open(index_path)
    open_s = time.perf_counter() - started
    calls = [SearchQuery(text=t, vector=v, k=10) for t, v in zip(texts, vectors, strict=True)]
    # Two passes: the first pages the memory-mapped graph and vectors in as it goes (cold when
    # the page cache holds none of the index), the second is the steady state the p50 reports.
    passes = []
    for _ in range(2):
        samples = []
        for call in calls:
            started = time.perf_counter()
            index.search(call)
            samples.append(time.perf_counter() - started)
        passes.append(percentiles(samples))
    (cold50, cold99), (p50, p99) = passes
    # The two halves of a hybrid query, to tell which one grows with n.
    parts = {}
    for part, plan in (
        ("text", [SearchQuery(text=c.text, k=c.k) for c in calls]),
        ("vector", [SearchQuery(vector=c.vector, k=c.k) for c in calls]),
    ):
        samples = []
        for call in plan:
            started = time.perf_counter()
            index.search(call)
            samples.append(time.perf_counter() - started)
        parts[f"{part}_p50_ms"] = round(percentiles(samples)[0], 2)
    return {
        "docs": index.count(),
        "open_s": round(open_s, 2),
        "hybrid_p50_ms": round(p50, 2),
        "hybrid_p99_ms": round(p99, 2),
        "first_pass_p50_ms": round(cold50, 2),
        "first_pass_p99_ms": round(cold99, 2),
        **parts,
        **memory_mb(),
    }


def run_probe(index_path: Path | None, queries: int) -> dict[str, Any]:
    """Run :func:`probe` in a fresh interpreter, so each size's memory is its own."""
    argv = [sys.executable, __file__, "--probe", str(index_path or ""), "--queries", str(queries)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Build or reuse each size's index, probe it in a fresh process, print growth, write."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="10k and 100k only, write nothing")
    parser.add_argument("--build-only", action="store_true", help="build the indexes and stop")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe is not None:
        print(json.dumps(probe(Path(args.probe) if args.probe else None, args.queries)))
        return 0
    sizes = [s for s in args.sizes if s <= 100_000] if args.quick else sorted(args.sizes)
    paths = {}
    for n in sizes:
        started = time.perf_counter()
        paths[n] = cached_index(n)
        print(f"index of {n:,} documents: {paths[n]} ({time.perf_counter() - started:.0f} s)")
    if args.build_only:
        return 0
    bare = run_probe(None, 0)
    print(f"baseline: a process that imported the engine and opened nothing: {bare['rss_mb']} MB")
    rows: dict[str, Any] = {}
    base_n = sizes[0]
    for n in sizes:
        row = run_probe(paths[n], args.queries)
        row["rss_over_bare_mb"] = round(row["rss_mb"] - bare["rss_mb"], 1)
        rows[str(n)] = row
        first = rows[str(base_n)]
        print(
            f"{n:>9,} docs: hybrid p50 {row['hybrid_p50_ms']:.2f} ms"
            f" (p99 {row['hybrid_p99_ms']:.2f})"
            f" = {row['hybrid_p50_ms'] / first['hybrid_p50_ms']:.2f}x the {base_n:,} index for"
            f" {n / base_n:.0f}x the documents; RSS {row['rss_mb']:.0f} MB (anon"
            f" {row['anon_mb']:.0f}, file {row['file_mb']:.0f}); opened in {row['open_s']} s;"
            f" first pass p50 {row['first_pass_p50_ms']:.2f} ms; text alone"
            f" {row['text_p50_ms']:.2f} ms, vector alone {row['vector_p50_ms']:.2f} ms",
            flush=True,
        )
    load = round(os.getloadavg()[0], 2)
    print(f"load average {load} on {os.cpu_count()} cores: absolute times are indicative")
    if "1000000" in rows:
        p50 = rows["1000000"]["hybrid_p50_ms"]
        verdict = "met" if p50 <= TARGET_1M_HYBRID_P50_MS else "MISSED"
        print(f"target: 1M hybrid p50 {p50:.2f} ms <= {TARGET_1M_HYBRID_P50_MS:.0f} ms: {verdict}")
    if not args.quick:
        section = {
            "date": datetime.now(UTC).date().isoformat(),
            "load_average": load,
            "queries": args.queries,
            "baseline": f"latency: the {base_n} index; memory: a bare process",
            "bare_rss_mb": bare["rss_mb"],
            **rows,
        }
        write_section(RESULTS, "scale", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
