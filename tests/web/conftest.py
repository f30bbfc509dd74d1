"""Fixtures of the browser tests: the real app over a real small index, and Debian's Chromium.

The server is the real thing end to end: a synthetic corpus, a tiny random-init CLIP, its image
vectors, the embedded engine on disk, ``medsearch.api`` on uvicorn at 127.0.0.1 (free port)
serving ``web/`` at ``/``. The browser is Debian's ``chromium`` driven by Playwright through
``executable_path`` (no Playwright browser download; the machine has no outside network).
"""

from __future__ import annotations

import http.server
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# No network, no GPU, nothing that phones home: the test must behave the same on any machine.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO_ROOT = Path(__file__).resolve().parents[2]
WEB_DIR = REPO_ROOT / "web"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="session")
def web_index(
    tmp_path_factory: pytest.TempPathFactory, synth_corpus: Path, tiny_model_dir: Path
) -> Path:
    """Build the embedded index of the synthetic corpus with the tiny model's image vectors."""
    from medsearch.data.manifest import read_manifest
    from medsearch.indexing import index_manifest
    from medsearch.model.encoder import load_encoder
    from medsearch.vectorize import vectorize

    vectors_dir = tmp_path_factory.mktemp("web-vectors")
    encoder = load_encoder(str(tiny_model_dir))
    vectorize(encoder, read_manifest(synth_corpus), vectors_dir, progress=False)
    index_dir = tmp_path_factory.mktemp("web-index")
    index_manifest(synth_corpus, vectors_dir, index_dir)
    return index_dir


@pytest.fixture(scope="session")
def web_server(web_index: Path, tiny_model_dir: Path) -> Iterator[str]:
    """Serve the real API and the page on 127.0.0.1 (free port); yield the base URL."""
    from medsearch.api import background_server, create_app
    from medsearch.settings import ServiceSettings

    settings = ServiceSettings(index_dir=str(web_index), model=str(tiny_model_dir), web_dir=WEB_DIR)
    with background_server(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="session")
def static_site(
    tmp_path_factory: pytest.TempPathFactory, web_index: Path, tiny_model_dir: Path
) -> Iterator[tuple[str, str]]:
    """The page hosted apart from the API, as on S3/CloudFront: a plain static server with
    ``config.json`` naming the API, and the API allowing that origin (CORS). Yields both URLs."""
    import functools
    import shutil
    import threading

    from medsearch.api import background_server, create_app
    from medsearch.settings import ServiceSettings

    site = tmp_path_factory.mktemp("static-site")
    shutil.copytree(WEB_DIR, site, dirs_exist_ok=True)
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    page_origin = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    settings = ServiceSettings(
        index_dir=str(web_index), model=str(tiny_model_dir), cors_origins=[page_origin]
    )
    try:
        with background_server(create_app(settings)) as api_url:
            (site / "config.json").write_text(json.dumps({"apiBaseUrl": api_url}))
            yield page_origin, api_url
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files without a log line per request."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright; skip (with the reason) where it is not installed.

    Module-scoped: Playwright's sync API runs an event loop in this thread until it stops, and
    tests collected after the page tests (the Lambda handler runs asyncio) need it stopped.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed: run `make browser` (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def open_tab(browser: Any, base_url: str) -> Iterator[Any]:
    """Yield a fresh tab on ``base_url``; JavaScript errors on the page fail the test."""
    context = browser.new_context(viewport={"width": 1360, "height": 900}, base_url=base_url)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.set_default_timeout(15_000)
    yield tab
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(browser: Any, web_server: str) -> Iterator[Any]:
    """A fresh tab on the embedded-engine server."""
    yield from open_tab(browser, web_server)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder for screenshots (gitignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
