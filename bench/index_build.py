"""Build time and on-disk size of the embedded index at 185k documents, against SQLite FTS5.

The corpus of ``bench/search_latency.py`` (generator captions, 10% captionless, metadata,
embedding-like 512-d vectors): ``build_index`` writes it into a fresh folder (tantivy BM25, doc
store, filters, vectors and the faiss HNSW graph), timed in wall and CPU seconds with its text
and HNSW parts; the baseline, in the same run, is loading the captions into an SQLite FTS5 table
(``bench/search_latency.py``'s naive path). The index's size is given per document beyond the raw
vectors (on-disk bytes minus n·dim·4, divided by n), with each file's share.

Target (issue #12): build of 185k documents <= 45 s. ``--quick``: 20k documents, writes nothing.
Figures go under ``"index_build"`` in ``bench/results.json``.

    .venv/bin/python bench/index_build.py [--n 185000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from opensearch import write_section
from search_latency import NaivePath, make_corpus

from medsearch.index.embedded import build_index

RESULTS = Path(__file__).resolve().parent / "results.json"
DIM = 512
TARGET_S = 45.0


def sizes_by_part(gen_dir: Path) -> dict[str, int]:
    """On-disk bytes of a generation by top-level entry (``text/`` summed)."""
    parts: dict[str, int] = defaultdict(int)
    for path in gen_dir.rglob("*"):
        if path.is_file():
            parts[path.relative_to(gen_dir).parts[0]] += path.stat().st_size
    return dict(parts)


def main(argv: list[str] | None = None) -> int:
    """Build the index and the FTS5 table, print times, ratio and sizes; write the section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=185_000)
    parser.add_argument("--quick", action="store_true", help="20k documents, write nothing")
    args = parser.parse_args(argv)
    n = 20_000 if args.quick else args.n
    docs, vectors, _ = make_corpus(n, DIM, captionless=0.1, seed=0)
    with tempfile.TemporaryDirectory(prefix="medsearch-build-") as tmp:
        load_before = os.getloadavg()[0]
        started, cpu = time.perf_counter(), time.process_time()
        index = build_index(Path(tmp) / "index", docs)
        seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
        parts = index.info()["build_seconds"]
        gen_dir = Path(tmp) / "index" / index.generation
        sizes = sizes_by_part(gen_dir)
    started = time.perf_counter()
    NaivePath(docs, vectors)
    baseline_s = time.perf_counter() - started
    load = os.getloadavg()[0]
    raw = n * DIM * 4
    total = sum(sizes.values())
    beyond = (total - raw) / n
    print(
        f"build_index of {n:,} documents: {seconds:.1f} s wall, {cpu_s:.0f} CPU-s"
        f" (text {parts['text']:.1f} s, HNSW {parts['ann']:.1f} s); baseline SQLite FTS5 load"
        f" {baseline_s:.1f} s: the engine takes {seconds / baseline_s:.1f}x the baseline"
    )
    print(
        f"on disk {total / 2**20:.0f} MB; raw vectors {raw / 2**20:.0f} MB; beyond them"
        f" {beyond:.0f} bytes per document"
    )
    for name, size in sorted(sizes.items(), key=lambda item: -item[1]):
        print(f"  {name:<20} {size / 2**20:8.1f} MB  {size / n:8.0f} B/doc")
    verdict = "met" if seconds <= TARGET_S else "MISSED"
    print(
        f"target: build {seconds:.1f} s <= {TARGET_S:.0f} s: {verdict} (load average"
        f" {load_before:.1f} before, {load:.1f} after; times are indicative)"
    )
    if not args.quick:
        write_section(
            RESULTS,
            "index_build",
            {
                "date": datetime.now(UTC).date().isoformat(),
                "load_average": round(load, 2),
                "docs": n,
                "seconds": round(seconds, 1),
                "cpu_seconds": round(cpu_s, 1),
                "text_s": parts["text"],
                "hnsw_s": parts["ann"],
                "baseline": "SQLite FTS5 table load (in memory)",
                "baseline_s": round(baseline_s, 1),
                "ratio_to_baseline": round(seconds / baseline_s, 2),
                "bytes_on_disk": total,
                "bytes_per_doc": round(beyond),
                "bytes_per_doc_by_file": {k: round(v / n) for k, v in sizes.items()},
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
