"""Resident memory of a ``medsearch serve`` process at idle and after thousands of mixed requests.

The demo-sized setup of ``bench/load.py`` (2,000 synthetic documents, the tiny random-init CLIP,
image vectors, the embedded index; built once under ``build/bench/memory/``) served by
``bench/load.py``'s ``start_server``. The baseline is the process's own RSS at idle, once it
answers ``/health``; then ``--requests`` requests of ``bench/load.py``'s mix (text, vector,
hybrid, similar, uploads, hostile uploads, facets, health) from 8 concurrent clients, with the
RSS read from ``/proc/<pid>/status`` after each quarter, so growth that keeps climbing (a leak)
is told from a one-off warm-up (caches, lazy imports, allocator arenas). Every request must be
answered as ``bench/load.py`` judges it.

Target (issue #12): RSS growth after 5,000 requests < 10% of idle. ``--quick``: 1,000 requests,
writes nothing. Figures go under ``"memory"`` in ``bench/results.json``.

    .venv/bin/python bench/memory.py [--requests 5000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from load import MIX, Corpus, build_setup, load_corpus, make_request, start_server
from opensearch import write_section

RESULTS = Path(__file__).resolve().parent / "results.json"
WORKDIR = Path(__file__).resolve().parent.parent / "build" / "bench" / "memory"
DEMO_N = 2000
CLIENTS = 8
TARGET_GROWTH = 0.10


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def send(url: str, corpus: Corpus, count: int, seed: int) -> tuple[int, list[str]]:
    """Send ``count`` requests of the load mix from ``CLIENTS`` clients; (errors, examples)."""
    kinds, weights = list(MIX), list(MIX.values())
    errors: list[str] = []
    remaining = [count]

    async def client(client_seed: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(client_seed)
        while remaining[0] > 0:
            remaining[0] -= 1
            kind = rng.choices(kinds, weights)[0]
            method, path, kwargs = make_request(kind, corpus, rng)
            try:
                status = (await http.request(method, path, **kwargs)).status_code
                ok = 200 <= status < (500 if kind == "hostile" else 300)
            except httpx.HTTPError as exc:
                ok, status = False, type(exc).__name__
            if not ok:
                errors.append(f"{kind} {method} {path}: {status}")

    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(seed * 100 + i, http) for i in range(CLIENTS)))
    return len(errors), errors[:5]


def main(argv: list[str] | None = None) -> int:
    """Serve the demo-sized index, read RSS at idle and along the requests, write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="1,000 requests, write nothing")
    args = parser.parse_args(argv)
    total = 1000 if args.quick else args.requests
    WORKDIR.mkdir(parents=True, exist_ok=True)
    manifest, model_dir, index_dir = build_setup(WORKDIR, DEMO_N)
    corpus = load_corpus(manifest)
    process, url = start_server(index_dir, model_dir, WORKDIR / "server.log")
    try:
        time.sleep(1.0)
        idle = rss_mb(process.pid)
        print(f"server pid {process.pid}: idle RSS {idle:.1f} MB (the baseline)", flush=True)
        steps, errors, examples = [], 0, []
        started = time.perf_counter()
        for quarter in range(4):
            count = total // 4 + (total % 4 if quarter == 3 else 0)
            bad, some = asyncio.run(send(url, corpus, count, quarter))
            errors, examples = errors + bad, examples + some
            steps.append(round(rss_mb(process.pid), 1))
            done = total // 4 * (quarter + 1) if quarter < 3 else total
            print(
                f"  after {done:>5} requests: RSS {steps[-1]:.1f} MB"
                f" ({steps[-1] / idle - 1:+.1%} of idle)",
                flush=True,
            )
        wall = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=30)
    after = steps[-1]
    growth = after / idle - 1
    late = steps[-1] / steps[0] - 1
    load = round(os.getloadavg()[0], 2)
    verdict = "met" if growth < TARGET_GROWTH else "MISSED"
    print(
        f"{total} requests in {wall:.0f} s, {errors} errors; growth {growth:.1%} of idle"
        f" ({late:+.1%} from the first to the last quarter); target < {TARGET_GROWTH:.0%}:"
        f" {verdict}; load average {load}"
    )
    for example in examples:
        print(f"error: {example}")
    if not args.quick:
        write_section(
            RESULTS,
            "memory",
            {
                "date": datetime.now(UTC).date().isoformat(),
                "load_average": load,
                "docs": DEMO_N,
                "requests": total,
                "clients": CLIENTS,
                "errors": errors,
                "baseline": "the same process's RSS at idle",
                "idle_rss_mb": round(idle, 1),
                "rss_by_quarter_mb": steps,
                "after_rss_mb": after,
                "growth": round(growth, 4),
                "growth_last_three_quarters": round(late, 4),
            },
        )
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
