"""Endurance: a real ``medsearch serve`` process keeps its memory over thousands of requests.

A server in a subprocess (small real index, tiny CLIP) gets a warm-up of every kind of request,
then 5,000 more of the same mix (text, vector, hybrid, similar, uploads, hostile uploads,
record, facets, health) from a few concurrent clients; its resident set, read from /proc,
may grow by less than 10 % between the two. Every answer must be the expected one: 2xx, or a
4xx for the hostile uploads.
"""

from __future__ import annotations

import io
import random
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from medsearch.data.manifest import read_manifest
from tests.support.served_api import build_small_index, serve_process

WARM_UP = 600
REQUESTS = 5_000
CLIENTS = 6
MAX_GROWTH = 0.10


def rss_bytes(pid: int) -> int:
    """The resident set size of a process, from /proc/<pid>/status."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) * 1024


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, synth_corpus: Path, tiny_model_dir: Path
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``medsearch serve`` over a small real index, on a free port of 127.0.0.1."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc to read a process's memory")
    index_dir = build_small_index(synth_corpus, tiny_model_dir, tmp_path_factory.mktemp("rss"))
    argv = ["--index", str(index_dir), "--model", str(tiny_model_dir), "--host", "127.0.0.1"]
    with serve_process(argv) as served:
        yield served


def hostile_files(png: bytes) -> list[bytes]:
    """A truncated PNG, bytes that are no image, and a 100000x1 strip (valid, cropped)."""
    strip = io.BytesIO()
    Image.new("RGB", (100_000, 1), (90, 90, 90)).save(strip, format="PNG")
    return [png[: len(png) // 2], b"not an image " * 100, strip.getvalue()]


def requests_mix(manifest: Path, n: int, seed: int) -> list[tuple[str, str, dict[str, Any]]]:
    """``n`` requests of every kind, drawn with a fixed seed: (method, path, httpx kwargs)."""
    records = read_manifest(manifest)
    ids = [r.image_id for r in records]
    words = [w for r in records if r.caption for w in r.caption.split()]
    png = Path(records[0].image).read_bytes()
    hostile = hostile_files(png)
    rng = random.Random(seed)
    mix = []
    for _ in range(n):
        kind = rng.choice(
            ["text", "vector", "hybrid", "image", "image_text", "upload", "hostile", "record",
             "facets", "health"]
        )  # fmt: skip
        query = " ".join(rng.sample(words, 3))
        if kind in ("text", "vector", "hybrid"):
            params = {"q": query, "mode": kind, "k": rng.choice([10, 50])}
            mix.append(("GET", "/v1/search", {"params": params}))
        elif kind in ("image", "image_text"):
            mix.append(("GET", f"/v1/images/{rng.choice(ids)}/similar", {"params": {"mode": kind}}))
        elif kind in ("upload", "hostile"):
            data = png if kind == "upload" else rng.choice(hostile)
            files = {"file": ("u.png", data)}
            mix.append(("POST", "/v1/search/image", {"files": files, "params": {"q": query}}))
        elif kind == "record":
            mix.append(("GET", f"/v1/images/{rng.choice(ids)}", {}))
        else:
            mix.append(("GET", f"/{kind}", {}))
    return mix


def send_all(url: str, mix: list[tuple[str, str, dict[str, Any]]]) -> list[int]:
    """Send the requests from a few concurrent clients; return the statuses."""

    def send(chunk: list[tuple[str, str, dict[str, Any]]]) -> list[int]:
        with httpx.Client(base_url=url, timeout=60) as client:
            return [client.request(method, path, **kw).status_code for method, path, kw in chunk]

    chunks = [mix[i::CLIENTS] for i in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        return [status for statuses in pool.map(send, chunks) for status in statuses]


@pytest.mark.slow
def test_given_a_served_index_when_5000_mixed_requests_arrive_then_rss_grows_under_10_percent(
    server: tuple[str, subprocess.Popen[str]], synth_corpus: Path
) -> None:
    url, process = server
    # Given a server warmed up by every kind of request (caches, arenas, lazy imports)
    warm = send_all(url, requests_mix(synth_corpus, WARM_UP, seed=1))
    assert all(status < 500 for status in warm)
    before = rss_bytes(process.pid)
    # When 5,000 more of the same mix arrive
    statuses = send_all(url, requests_mix(synth_corpus, REQUESTS, seed=2))
    after = rss_bytes(process.pid)
    # Then every one is answered as expected, and the memory stays where it was
    assert len(statuses) == REQUESTS
    assert all(200 <= s < 300 or s in (413, 415, 422) for s in statuses), sorted(set(statuses))
    growth = (after - before) / before
    print(f"RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB ({growth:+.1%})")
    assert growth < MAX_GROWTH, f"RSS grew {growth:.1%}: {before} -> {after} bytes"
