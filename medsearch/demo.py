"""The one-command demo: synth → train → evaluate → vectorize → index → evaluate-search → serve.

Each step is the same ``medsearch`` subcommand a user would run, so the demo exercises the real
pipeline. A step leaves a marker only once it has succeeded; a rerun skips finished steps and
redoes an interrupted one together with everything after it (their inputs may have changed).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medsearch.errors import MedsearchError

log = logging.getLogger(__name__)

RunCommand = Callable[[Sequence[str]], int]


@dataclass(frozen=True)
class DemoLayout:
    """Where the demo keeps each step's output below its working folder."""

    workdir: Path

    @property
    def corpus(self) -> Path:
        """The synthetic corpus folder (manifest, images, queries)."""
        return self.workdir / "corpus"

    @property
    def manifest(self) -> Path:
        """The corpus manifest."""
        return self.corpus / "manifest.jsonl"

    @property
    def model(self) -> Path:
        """The trained tiny CLIP."""
        return self.workdir / "model"

    @property
    def report(self) -> Path:
        """The test-split evaluation report."""
        return self.workdir / "reports" / "test.json"

    @property
    def search_report(self) -> Path:
        """The search modes' scores on the corpus's query set."""
        return self.workdir / "reports" / "search.json"

    @property
    def vectors(self) -> Path:
        """The image vectors of the whole corpus."""
        return self.workdir / "vectors"

    @property
    def index(self) -> Path:
        """The embedded search index."""
        return self.workdir / "index"

    def marker(self, step: str) -> Path:
        """The file that records a finished step."""
        return self.workdir / ".steps" / step


@dataclass(frozen=True)
class Step:
    """One demo step: its name, the subcommand that runs it and the output it owns."""

    name: str
    argv: Callable[[DemoLayout], list[str]]
    output: Callable[[DemoLayout], Path]


STEPS: tuple[Step, ...] = (
    Step("synth", lambda d: ["synth", "--out", str(d.corpus)], lambda d: d.corpus),
    Step(
        "train",
        lambda d: ["train", "--data", str(d.manifest), "--out", str(d.model), "--base", "tiny"],
        lambda d: d.model,
    ),
    Step(
        "evaluate",
        lambda d: [
            "evaluate", "--model", str(d.model), "--data", str(d.manifest),
            "--split", "test", "--out", str(d.report),
        ],
        lambda d: d.report,
    ),
    Step(
        "vectorize",
        lambda d: ["vectorize", "--model", str(d.model), "--data", str(d.manifest), "--out",
                   str(d.vectors), "--overwrite"],
        lambda d: d.vectors,
    ),
    Step(
        "index",
        lambda d: ["index", "--data", str(d.manifest), "--vectors", str(d.vectors),
                   "--index", str(d.index)],
        lambda d: d.index,
    ),
    Step(
        "evaluate-search",
        lambda d: ["evaluate-search", "--index", str(d.index), "--model", str(d.model),
                   "--queries", str(d.corpus / "queries.jsonl"), "--sweep",
                   "--out", str(d.search_report)],
        lambda d: d.search_report,
    ),
)  # fmt: skip


def build_demo(
    workdir: Path, run: RunCommand, *, echo: Callable[[str], None] = print
) -> DemoLayout:
    """Run every build step not yet finished (and all after the first unfinished one)."""
    layout = DemoLayout(workdir.resolve())
    redo = False
    for number, step in enumerate(STEPS, start=1):
        marker = layout.marker(step.name)
        if marker.exists() and not redo:
            echo(f"[{number}/{len(STEPS)}] {step.name}: done, reusing {step.output(layout)}")
            continue
        redo = True
        echo(f"[{number}/{len(STEPS)}] {step.name} ...")
        marker.unlink(missing_ok=True)
        output = step.output(layout)
        if step.name == "train" and output.exists():
            # A half-trained folder would be resumed with another corpus's tokenizer: start over.
            shutil.rmtree(output)
        status = run(step.argv(layout))
        if status != 0:
            raise MedsearchError(f"demo step {step.name!r} failed (exit status {status})")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("ok\n")
    return layout


def serve_argv(layout: DemoLayout, host: str, port: int) -> list[str]:
    """The ``serve`` command line over the demo's index and model."""
    return [
        "serve", "--index", str(layout.index), "--model", str(layout.model),
        "--host", host, "--port", str(port),
    ]  # fmt: skip
