"""How the hybrid fusion depth moves the ranking: each depth against depth 100, on real queries.

Each hybrid sub-query contributes its top N (:data:`medsearch.index.base.HYBRID_DEPTH` at least)
and min-max normalisation runs over those lists, so a smaller N is cheaper on every engine but
moves fused scores. This measures, on the embedded engine (the OpenSearch engine fuses the same
lists with the same rule), per depth: the mean share of the depth-100 top 10 kept, the worst
query's share, and R@10 beside depth 100's, on

- the demo: its corpus, trained model and 80 queries (``--demo DIR``, a ``medsearch demo``
  workdir; built there with ``medsearch demo --no-serve --workdir DIR`` if it is missing);
- MedPix 2.0 (``--medpix DIR``, default ``../shared/datasets/medpix``; skipped when absent): its
  1,850 captions and 602 diagnosis queries, vectors from the demo model.

The figures go under ``"fusion_depth"`` in ``bench/results.json``.

    .venv/bin/python bench/fusion_depth.py [--demo DIR] [--medpix DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

from opensearch import write_section  # noqa: E402

from medsearch.cli import main as cli  # noqa: E402
from medsearch.data.queries import read_queries  # noqa: E402
from medsearch.index.base import HYBRID_DEPTH  # noqa: E402
from medsearch.index.embedded import EmbeddedIndex  # noqa: E402
from medsearch.model.encoder import load_encoder  # noqa: E402
from medsearch.search_eval import depth_agreement  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results.json"
SECTION = "fusion_depth"
DEPTHS = (10, 30, 50, 90, 150)


def corpus_report(index_dir: Path, model: Path, queries: Path) -> dict[str, Any]:
    """Return :func:`depth_agreement` of one index, model and query file."""
    index = EmbeddedIndex.open(index_dir)
    encoder = load_encoder(str(model))
    return depth_agreement(index, encoder, read_queries(queries), sorted(set(DEPTHS)))


def main(argv: list[str] | None = None) -> int:
    """Measure each corpus, print the table and write the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=ROOT / "build" / "demo")
    parser.add_argument("--medpix", type=Path, default=ROOT.parent / "shared/datasets/medpix")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    demo = args.demo
    if not (demo / "index").is_dir():
        print(f"building the demo in {demo} ...", flush=True)
        if cli(["demo", "--no-serve", "--workdir", str(demo)]) != 0:
            return 1
    reports = {"demo": corpus_report(demo / "index", demo / "model", demo / "corpus/queries.jsonl")}
    manifest = args.medpix / "manifest.jsonl"
    if manifest.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            vectors, index = Path(tmp) / "vectors", Path(tmp) / "index"
            model = str(demo / "model")
            if cli(["vectorize", "--model", model, "--data", str(manifest), "--out", str(vectors)]):
                return 1
            if cli(
                ["index", "--data", str(manifest), "--vectors", str(vectors), "--index", str(index)]
            ):
                return 1
            reports["medpix"] = corpus_report(index, demo / "model", args.medpix / "queries.jsonl")
    else:
        print(f"MedPix not found at {args.medpix}: measured on the demo only")
    print(f"hybrid top-10 against depth 100 (default depth {HYBRID_DEPTH})")
    print("  corpus   depth  overlap  worst   R@10  (depth 100: R@10)")
    for name, report in reports.items():
        for depth, row in report["depths"].items():
            print(
                f"  {name:<8} {depth:>5}  {row['overlap']:7.3f}  {row['min_overlap']:5.2f} "
                f"{row['r@10']:6.3f}  ({report['reference_r@10']:.3f})"
            )
    write_section(args.results, SECTION, {"default_depth": HYBRID_DEPTH, **reports})
    print(f"wrote the {SECTION!r} section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
