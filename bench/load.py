"""Load test of the local server: N concurrent clients for a fixed time, mixed search modes.

It builds a small real setup (synthetic corpus → tiny random-init CLIP → image vectors → embedded
index; reused from ``--workdir`` on a rerun), starts ``medsearch serve`` in a subprocess on
127.0.0.1 (a free port), and runs ``--clients`` concurrent clients for ``--duration`` seconds
(each loop checks the deadline, so the run stops by itself). Requests mix every mode: text,
vector, hybrid, similar images (image, image_text), uploads, facets, and GET /health, whose
latency under the same load is the baseline the search latencies are divided by.

Hostile uploads ride in the mix too: a truncated PNG, a 100000x1 PNG strip, bytes that are no
image, and a PNG header claiming 400 megapixels. Each must be answered, and by a 4xx where it is
refused (the strip is a valid image and may be searched): a 5xx or a dropped connection is an
error like any other.

Prints requests, errors (must be 0: a non-2xx for an ordinary request, a 5xx or transport error
for a hostile one), p50/p99 per kind and overall, and throughput, and writes them under
``"load"`` in ``bench/results.json`` (other sections kept); exits 1 if there were errors.
``--quick`` is a short check (10 clients, 10 s) that writes nothing.

    python bench/load.py [--duration 60] [--clients 50] [--n 300] [--workdir DIR] [--url URL]
                         [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from opensearch import write_section

RESULTS = Path(__file__).resolve().parent / "results.json"
SECTION = "load"

# Share of each request kind in the mix (weights).
MIX: dict[str, float] = {
    "text": 0.25,
    "vector": 0.15,
    "hybrid": 0.25,
    "image": 0.10,
    "image_text": 0.08,
    "upload": 0.05,
    "hostile": 0.02,
    "facets": 0.05,
    "health": 0.05,
}
BASELINE = "health"


@dataclass
class Corpus:
    """What the clients need to build requests: queries, image ids, upload payloads."""

    queries: list[str]
    image_ids: list[str]
    uploads: list[tuple[str, bytes]]
    hostile: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Tally:
    """Latencies (seconds) per request kind, and the errors seen."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    examples: list[str] = field(default_factory=list)
    # Hostile uploads' answers by status: refusals are 4xx, the valid strip may be a 200.
    hostile_statuses: dict[int, int] = field(default_factory=lambda: defaultdict(int))


def build_setup(workdir: Path, n: int, *, serve: bool = True) -> tuple[Path, Path, Path]:
    """Build (or reuse) corpus, tiny model and index under ``workdir``; return their paths.

    Without ``serve`` (a server at ``--url`` is loaded) only the corpus is needed: the requests
    are built from it, so the model and index are not made."""
    from medsearch.data.manifest import read_manifest
    from medsearch.data.synth import SynthConfig, write_synthetic_corpus
    from medsearch.indexing import index_manifest
    from medsearch.model.encoder import load_encoder
    from medsearch.model.loading import save_clip
    from medsearch.model.tiny import build_tiny_clip
    from medsearch.vectorize import vectorize

    corpus_dir, model_dir = workdir / "corpus", workdir / "model"
    vectors_dir, index_dir = workdir / "vectors", workdir / "index"
    manifest = corpus_dir / "manifest.jsonl"
    started = time.perf_counter()
    if not manifest.exists():
        manifest = write_synthetic_corpus(corpus_dir, SynthConfig(n=n, seed=0, n_queries=40))
    records = read_manifest(manifest)
    if serve and not (model_dir / "config.json").exists():
        save_clip(build_tiny_clip([r.caption for r in records if r.caption], seed=0), model_dir)
    if serve and not (index_dir / "CURRENT").exists():
        vectorize(load_encoder(str(model_dir)), records, vectors_dir, progress=False)
        index_manifest(manifest, vectors_dir, index_dir)
    print(f"setup: {len(records)} documents ready in {time.perf_counter() - started:.1f} s")
    return manifest, model_dir, index_dir


def load_corpus(manifest: Path) -> Corpus:
    """Read queries (the corpus' query set plus caption fragments), ids and a few upload files."""
    from medsearch.data.manifest import read_manifest
    from medsearch.data.queries import queries_beside

    records = read_manifest(manifest)
    queries = [q.query for q in queries_beside(manifest) or []]
    rng = random.Random(0)
    for record in records:
        if record.caption and len(queries) < 200:
            words = record.caption.split()
            start = rng.randrange(max(1, len(words) - 3))
            queries.append(" ".join(words[start : start + rng.randint(2, 5)]))
    uploads = [(Path(r.image).name, Path(r.image).read_bytes()) for r in records[:8]]
    return Corpus(
        queries=queries,
        image_ids=[r.image_id for r in records],
        uploads=uploads,
        hostile=hostile_uploads(uploads[0][1]),
    )


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def hostile_uploads(png: bytes) -> list[tuple[str, bytes]]:
    """Uploads a server must refuse with a 4xx or survive: ``png`` cut in half, a 100000x1 PNG,
    bytes that are no image, and a PNG header claiming 20000x20000 pixels (a bomb)."""
    from PIL import Image

    strip = io.BytesIO()
    Image.new("RGB", (100_000, 1), (120, 60, 30)).save(strip, format="PNG")
    header = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )
    return [
        ("truncated.png", png[: len(png) // 2]),
        ("strip.png", strip.getvalue()),
        ("notes.png", b"these bytes are no image at all\n" * 64),
        ("bomb.png", bomb),
    ]


def start_server(index_dir: Path, model_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start ``medsearch serve`` on 127.0.0.1 with a free port; return the process and its URL."""
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "medsearch.cli", "serve", "--index", str(index_dir),
         "--model", str(model_dir), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()  # "medsearch serve: http://127.0.0.1:PORT ..." once bound
    match = re.search(r"http://127\.0\.0\.1:\d+", line)
    if not match:
        process.kill()
        raise SystemExit(f"server did not start: {line!r}; see {log_path}")
    url = match.group(0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"server at {url} never became healthy; see {log_path}")


def make_request(kind: str, corpus: Corpus, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    """Return (method, path, httpx kwargs) for one request of ``kind``."""
    k = rng.choice((10, 10, 10, 20, 50))
    offset = rng.choice((0, 0, 0, 10))
    if kind in ("text", "vector", "hybrid"):
        params = {"q": rng.choice(corpus.queries), "mode": kind, "k": k, "offset": offset}
        if kind == "hybrid":
            params["alpha"] = rng.choice((0.3, 0.5, 0.7))
        return "GET", "/v1/search", {"params": params}
    if kind in ("image", "image_text"):
        image_id = rng.choice(corpus.image_ids)
        return "GET", f"/v1/images/{image_id}/similar", {"params": {"mode": kind, "k": k}}
    if kind in ("upload", "hostile"):
        name, data = rng.choice(corpus.uploads if kind == "upload" else corpus.hostile)
        params = {"k": k, **({"q": rng.choice(corpus.queries)} if rng.random() < 0.5 else {})}
        return "POST", "/v1/search/image", {"params": params, "files": {"file": (name, data)}}
    return "GET", f"/{kind}", {}


async def client_loop(
    client: httpx.AsyncClient, corpus: Corpus, seed: int, deadline: float, tally: Tally
) -> None:
    """One client: send requests back to back until the deadline."""
    rng = random.Random(seed)
    kinds, weights = list(MIX), list(MIX.values())
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        method, path, kwargs = make_request(kind, corpus, rng)
        started = time.perf_counter()
        try:
            response = await client.request(method, path, **kwargs)
            # A hostile upload is answered well by a refusal (4xx) or, if it is a valid image
            # after all (the strip), by results; a 5xx is a fault either way.
            ok = 200 <= response.status_code < (500 if kind == "hostile" else 300)
            if kind == "hostile":
                tally.hostile_statuses[response.status_code] += 1
            problem = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            ok, problem = False, f"{type(exc).__name__}: {exc}"
        tally.latencies[kind].append(time.perf_counter() - started)
        if not ok:
            tally.errors[kind] += 1
            if len(tally.examples) < 5:
                tally.examples.append(f"{method} {path}: {problem}")


async def run_load(url: str, corpus: Corpus, clients: int, duration: float) -> tuple[Tally, float]:
    """Run ``clients`` concurrent clients for ``duration`` seconds; return tally and wall time."""
    tally = Tally()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        started = time.monotonic()
        deadline = started + duration
        await asyncio.gather(
            *(client_loop(client, corpus, seed, deadline, tally) for seed in range(clients))
        )
        return tally, time.monotonic() - started


def figures(tally: Tally, wall: float, clients: int) -> dict[str, Any]:
    """The run's figures as they go into results.json: per kind and overall."""
    everything = [x for values in tally.latencies.values() for x in values]
    kinds: dict[str, Any] = {}
    for kind in [*MIX, "all"]:
        values = everything if kind == "all" else tally.latencies.get(kind, [])
        if not values:
            continue
        p50, p99 = (round(float(np.percentile(values, q)) * 1000, 1) for q in (50, 99))
        errors = sum(tally.errors.values()) if kind == "all" else tally.errors.get(kind, 0)
        kinds[kind] = {"requests": len(values), "errors": errors, "p50_ms": p50, "p99_ms": p99}
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(everything),
        "errors": sum(tally.errors.values()),
        "requests_per_s": round(len(everything) / wall, 1),
        "cpus": os.cpu_count(),
        "kinds": kinds,
        "hostile_statuses": {str(k): v for k, v in sorted(tally.hostile_statuses.items())},
    }


def report(tally: Tally, wall: float, clients: int) -> int:
    """Print the figures; return the number of errors."""
    everything = [x for values in tally.latencies.values() for x in values]
    requests, errors = len(everything), sum(tally.errors.values())
    baseline = np.percentile(tally.latencies[BASELINE], 50) if tally.latencies[BASELINE] else None
    print(f"\n{clients} clients, {wall:.1f} s: {requests} requests, {errors} errors, "
          f"{requests / wall:.1f} requests/s")  # fmt: skip
    print(f"{'kind':<12}{'requests':>9}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}  p50 vs /health")
    for kind in [*MIX, "all"]:
        values = everything if kind == "all" else tally.latencies.get(kind, [])
        if not values:
            continue
        p50, p99 = (float(np.percentile(values, q)) * 1000 for q in (50, 99))
        ratio = f"{p50 / (baseline * 1000):.2f}x" if baseline else "-"
        kind_errors = errors if kind == "all" else tally.errors.get(kind, 0)
        print(f"{kind:<12}{len(values):>9}{kind_errors:>8}{p50:>9.1f}{p99:>9.1f}  {ratio}")
    if tally.hostile_statuses:
        answers = ", ".join(f"{n} x {code}" for code, n in sorted(tally.hostile_statuses.items()))
        print(f"hostile uploads answered: {answers}")
    for example in tally.examples:
        print(f"error: {example}")
    return errors


def main(argv: list[str] | None = None) -> int:
    """Build or reuse the setup, start the server, run the load, report; 1 if any error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument(
        "--quick", action="store_true", help="10 clients for 10 s; results.json is left alone"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="figures go here")
    parser.add_argument("--n", type=int, default=300, help="synthetic corpus size")
    parser.add_argument("--workdir", type=Path, default=None, help="reuse/keep the setup here")
    parser.add_argument("--url", default=None, help="load an already running server instead")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.clients = 10.0, 10
    if args.duration <= 0 or args.clients < 1:
        parser.error("--duration must be > 0 and --clients >= 1")

    with tempfile.TemporaryDirectory(prefix="medsearch-load-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        manifest, model_dir, index_dir = build_setup(workdir, args.n, serve=args.url is None)
        corpus = load_corpus(manifest)
        process = None
        url = args.url
        if url is None:
            process, url = start_server(index_dir, model_dir, workdir / "server.log")
            print(f"server: {url} (pid {process.pid})")
        try:
            tally, wall = asyncio.run(run_load(url, corpus, args.clients, args.duration))
        finally:
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        errors = report(tally, wall, args.clients)
    if not args.quick:
        write_section(args.results, SECTION, figures(tally, wall, args.clients))
        print(f"wrote the {SECTION!r} section of {args.results}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
