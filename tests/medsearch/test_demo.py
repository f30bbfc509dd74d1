"""The one-command demo: it builds the pipeline, reuses finished steps, and the result is good.

The slow test runs the real `medsearch demo --no-serve` on the default synthetic corpus once, and
judges what a newcomer gets from it: the quality bar of the trained tiny CLIP (full-pool text→image
R@10 >= 0.6 and >= 3x the untrained model) and the search modes over the corpus's query
set (vector search finds captionless images BM25 cannot; hybrid at the default weight 0.5 is at
least as good as the better of text and vector, within 0.01).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from medsearch.cli import main
from medsearch.demo import STEPS, build_demo
from medsearch.errors import MedsearchError
from medsearch.search import DEFAULT_ALPHA

STEP_NAMES = [step.name for step in STEPS]


class Recorder:
    """A stand-in for the CLI that records which steps ran and can fail one of them."""

    def __init__(self, fail: str | None = None) -> None:
        self.ran: list[str] = []
        self.fail = fail

    def __call__(self, argv: Sequence[str]) -> int:
        self.ran.append(argv[0])
        return 1 if argv[0] == self.fail else 0


def test_given_fresh_workdir_when_built_then_every_step_runs_in_order(tmp_path: Path) -> None:
    run = Recorder()
    build_demo(tmp_path, run, echo=lambda _: None)
    assert run.ran == STEP_NAMES


def test_given_finished_demo_when_rebuilt_then_nothing_runs_again(tmp_path: Path) -> None:
    build_demo(tmp_path, Recorder(), echo=lambda _: None)
    again = Recorder()
    lines: list[str] = []
    build_demo(tmp_path, again, echo=lines.append)
    assert again.ran == []
    assert all("done, reusing" in line for line in lines)


def test_given_failed_step_when_rerun_then_it_and_all_later_steps_run(tmp_path: Path) -> None:
    # Given a build whose vectorize step failed
    with pytest.raises(MedsearchError, match="vectorize"):
        build_demo(tmp_path, Recorder(fail="vectorize"), echo=lambda _: None)
    # When it is run again
    rerun = Recorder()
    build_demo(tmp_path, rerun, echo=lambda _: None)
    # Then the finished steps are reused and the failed one is redone with everything after it
    assert rerun.ran == STEP_NAMES[STEP_NAMES.index("vectorize") :]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real demo built once with its defaults (no server)."""
    workdir = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--no-serve", "--workdir", str(workdir)]) == 0
    return workdir


@pytest.mark.slow
def test_given_built_demo_when_run_again_then_it_reuses_everything(
    demo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--no-serve", "--workdir", str(demo)]) == 0
    out = capsys.readouterr().out
    assert out.count("done, reusing") == len(STEPS)


@pytest.mark.slow
def test_given_demo_model_when_compared_to_untrained_then_it_clears_the_quality_bar(
    demo: Path,
) -> None:
    # Given the demo's trained model and the same tiny model saved untrained (--epochs 0)
    manifest = demo / "corpus" / "manifest.jsonl"
    baseline = demo / "baseline"
    assert (
        main(
            [
                "train",
                "--data",
                str(manifest),
                "--out",
                str(baseline),
                "--epochs",
                "0",
                "--base",
                "tiny",
            ]
        )
        == 0
    )
    report = baseline / "test.json"
    args = ["--data", str(manifest), "--split", "test", "--out", str(report)]
    assert main(["evaluate", "--model", str(baseline), *args]) == 0
    # When their full-pool text→image R@10 on the test split is compared
    trained = json.loads((demo / "reports" / "test.json").read_text())["text_to_image"]["r@10"]
    untrained = json.loads(report.read_text())["text_to_image"]["r@10"]
    print(f"test text→image R@10: trained {trained:.3f}, untrained {untrained:.3f}")
    # Then the trained model clears both bounds
    assert trained >= 0.6
    assert trained >= 3 * untrained


@pytest.mark.slow
def test_given_demo_index_when_modes_compared_then_vectors_and_hybrid_pay_off(demo: Path) -> None:
    report = json.loads((demo / "reports" / "search.json").read_text())
    modes, sweep = report["modes"], report["alpha_sweep"]
    print({mode: modes[mode] for mode in modes}, {a: row["r@10"] for a, row in sweep.items()})
    # Vector search finds relevant captionless images, which BM25 cannot see at all
    assert modes["text"]["captionless_found"] == 0
    assert modes["vector"]["captionless_found"] > 0
    # The hybrid curve runs from the text ranking (alpha 0) to the vector ranking (alpha 1)
    assert sweep["0"]["r@10"] == modes["text"]["r@10"]
    assert sweep["1"]["r@10"] == modes["vector"]["r@10"]
    # and at the default weight, the one users get, hybrid is as good as the better single mode
    # (within 0.01)
    assert report["alpha"] == DEFAULT_ALPHA == 0.5
    best = max(modes["text"]["r@10"], modes["vector"]["r@10"])
    assert modes["hybrid"]["r@10"] >= best - 0.01
    # Vectors are worth having on their own too: most of what text search finds
    assert modes["vector"]["r@10"] >= 0.8 * modes["text"]["r@10"]


@pytest.mark.slow
@pytest.mark.live
def test_given_demo_on_both_engines_when_queried_then_they_rank_alike(
    demo: Path, opensearch_client: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from medsearch.api import build_service
    from medsearch.data.manifest import read_manifest
    from medsearch.data.queries import read_queries
    from medsearch.index.opensearch import OpenSearchConfig, OpenSearchIndex
    from medsearch.search_eval import evaluate_search
    from medsearch.settings import load_settings
    from tests.support.opensearch_node import fresh_name

    # Given the demo's documents (same vectors, captions, metadata) in its embedded index and in
    # an OpenSearch index on the node, searched with the same model
    settings = load_settings(index_dir=str(demo / "index"), model=str(demo / "model"))
    embedded = build_service(settings)
    ids = [r.image_id for r in read_manifest(demo / "corpus" / "manifest.jsonl")]
    documents = embedded.index.get_many(ids)
    node = OpenSearchIndex(opensearch_client, fresh_name(), config=OpenSearchConfig(replicas=0))  # type: ignore[arg-type]
    try:
        node.create(next(d.vector for d in documents.values() if d.vector is not None).size)
        with node.loading():
            assert node.upsert(documents.values()).failed == []
        opensearch = build_service(settings, index=node)
        queries = read_queries(demo / "corpus" / "queries.jsonl")
        # When every demo query runs in every mode on both
        overlaps: dict[str, list[float]] = {}
        for mode in ("text", "vector", "hybrid"):
            for query in queries:
                a = {r.image_id for r in embedded.search(query.query, mode=mode).results}
                b = {r.image_id for r in opensearch.search(query.query, mode=mode).results}
                overlaps.setdefault(mode, []).append(len(a & b) / max(len(a), 1))
        reports = [evaluate_search(service, queries) for service in (embedded, opensearch)]
    finally:
        node.drop()
    # Then their top 10s overlap (>= 0.95 on average per mode) and R@10 is within 0.01
    with capsys.disabled():
        for mode, values in overlaps.items():
            r10 = [report["modes"][mode]["r@10"] for report in reports]
            print(
                f"\ndemo {mode}: mean top-10 overlap {sum(values) / len(values):.3f}, "
                f"R@10 embedded {r10[0]:.3f} / OpenSearch {r10[1]:.3f}",
                end="",
            )
    for mode, values in overlaps.items():
        assert sum(values) / len(values) >= 0.95, mode
        r10 = [report["modes"][mode]["r@10"] for report in reports]
        assert abs(r10[0] - r10[1]) <= 0.01, mode
