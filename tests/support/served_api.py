"""A small real search setup served over HTTP, for the API fuzzing and endurance tests.

The synthetic corpus and the tiny CLIP of ``tests/conftest.py`` are vectorized and indexed by the
embedded engine (the real ``vectorize`` and ``index_manifest``), so what is served is the path a
deployment runs: tantivy BM25, faiss vectors, the ONNX-free torch encoder, uploads decoded.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

READY = re.compile(r"http://127\.0\.0\.1:\d+")


@contextmanager
def serve_process(
    argv: list[str], *, stderr: IO[str] | int = subprocess.DEVNULL
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run ``medsearch serve ARGV --port 0`` in its own process, as a user starts it; yield its
    base URL (from the ready line) and the process, and stop it afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "medsearch.cli", "serve", *argv, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the ready line, or "" when the server ended
        match = READY.search(line)
        assert match, f"medsearch serve did not start: {line!r}"
        yield match.group(0), process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def build_small_index(manifest: Path, model_dir: Path, out: Path) -> Path:
    """Vectorize the corpus of ``manifest`` with the model and index it under ``out``; return
    the index folder (reused when it is already there)."""
    from medsearch.data.manifest import read_manifest
    from medsearch.indexing import index_manifest
    from medsearch.model.encoder import load_encoder
    from medsearch.vectorize import vectorize

    index_dir = out / "index"
    if not (index_dir / "CURRENT").exists():
        vectors = out / "vectors"
        vectorize(load_encoder(str(model_dir)), read_manifest(manifest), vectors, progress=False)
        index_manifest(manifest, vectors, index_dir)
    return index_dir


class StatusCounter:
    """ASGI middleware counting the responses by status: how many requests a client made and
    how many the server failed (5xx), seen from the server's side."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.statuses: Counter[int] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; count the status of its response."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.statuses[int(message["status"])] += 1
            await send(message)

        await self.app(scope, receive, counted)

    @property
    def requests(self) -> int:
        """Responses sent so far."""
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        """Responses with a 5xx status."""
        return sum(n for status, n in self.statuses.items() if status >= 500)
