"""An evaluation report's HTML and PNG summaries: titles name the model, bars carry their values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from medsearch.report import draw_report, render_html, write_summary

FULL_POOL = {"r@1": 0.25, "r@5": 0.5, "r@10": 0.75, "mrr@10": 0.4, "median_rank": 3}


def _report(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "split": "test",
        "n": 8,
        "in_batch": {"batch_size": 4, "mrr@1": 0.5, "mrr@5": 0.625},
        "text_to_image": dict(FULL_POOL),
        "image_to_text": dict(FULL_POOL, **{"r@1": 0.125}),
    }


def test_given_model_at_absolute_path_when_rendered_then_title_names_only_its_folder() -> None:
    page = render_html(_report("/home/someone/runs/demo/model"))
    assert "<title>medsearch evaluation: model on test</title>" in page
    assert "/home/someone" not in page


def test_given_hub_model_id_when_rendered_then_title_keeps_the_id() -> None:
    page = render_html(_report("openai/clip-vit-base-patch32"))
    assert "openai/clip-vit-base-patch32 on test" in page


def test_given_report_when_drawn_then_every_bar_shows_its_value_and_legend_is_below() -> None:
    fig = draw_report(_report("/abs/path/model"))
    try:
        left, right = fig.axes
        # Then each bar carries its value as text: 2 in-batch bars, 2 x 4 full-pool bars
        assert [t.get_text() for t in left.texts] == ["0.50", "0.62"]
        assert len(right.texts) == 8 and "0.12" in [t.get_text() for t in right.texts]
        # and the legend sits below the plotting area, off the bars
        fig.canvas.draw()
        legend = right.get_legend().get_window_extent()
        assert legend.y1 <= right.get_window_extent().y0
        assert "/abs/path" not in fig.texts[0].get_text()
    finally:
        plt.close(fig)


def test_given_report_path_when_summarised_then_html_and_png_lie_beside_it(tmp_path: Path) -> None:
    written = write_summary(_report("m"), tmp_path / "test.json")
    assert [p.name for p in written] == ["test.html", "test.png"]
    assert all(p.stat().st_size > 0 for p in written)
