"""Human-readable summaries of an evaluation report: a PNG chart and a small static HTML table.

Both are written beside the report JSON (``REPORT.png``, ``REPORT.html``). matplotlib is imported
only when the chart is drawn (Agg backend, no display needed); without it the HTML still appears.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

from medsearch import storage
from medsearch.model.names import shown_model_name

log = logging.getLogger(__name__)

_SECTIONS = (
    ("in_batch", "In-batch image→caption (seed protocol)"),
    ("text_to_image", "Full pool text→image"),
    ("image_to_text", "Full pool image→text"),
    ("queries", "Query set"),
)


def write_summary(report: dict[str, Any], report_path: Path) -> list[Path]:
    """Write the HTML table and the PNG chart beside ``report_path``; return the files written."""
    report_path = Path(report_path)
    written = []
    html_path = report_path.with_suffix(".html")
    storage.write_text(html_path, render_html(report))
    written.append(html_path)
    png_path = report_path.with_suffix(".png")
    try:
        plot_report(report, png_path)
        written.append(png_path)
    except ImportError:
        log.warning("matplotlib is not installed; no %s", png_path.name)
    return written


def render_html(report: dict[str, Any]) -> str:
    """Return a self-contained HTML page with one table per metric group."""
    title = f"medsearch evaluation: {model_name(report.get('model'))} on {report.get('split')}"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2rem;color:#222}"
        "table{border-collapse:collapse;margin:0 0 1.5rem}"
        "th,td{border:1px solid #ccc;padding:.3rem .7rem;text-align:right}"
        "th{background:#f3f3f3}caption{text-align:left;font-weight:600;padding:.3rem 0}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{int(report.get('n', 0))} images evaluated.</p>",
    ]
    for key, label in _SECTIONS:
        section = report.get(key)
        if not isinstance(section, dict):
            continue
        header = "".join(f"<th>{html.escape(str(name))}</th>" for name in section)
        cells = "".join(f"<td>{_format(value)}</td>" for value in section.values())
        parts.append(
            f"<table><caption>{html.escape(label)}</caption>"
            f"<tr>{header}</tr><tr>{cells}</tr></table>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Draw in-batch MRR@k and full-pool R@k / MRR@10 bars into a PNG."""
    import matplotlib.pyplot as plt

    fig = draw_report(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_report(report: dict[str, Any]) -> Any:
    """Return the report's bar chart as a matplotlib figure (the caller saves and closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    in_batch = {k: v for k, v in report["in_batch"].items() if k.startswith("mrr@")}
    bars = left.bar(list(in_batch), list(in_batch.values()), color="#4c72b0")
    label_bars(left, bars)
    left.set_ylabel("score")
    left.set_title(f"In-batch MRR@k (batch {report['in_batch'].get('batch_size')})")
    names = ["r@1", "r@5", "r@10", "mrr@10"]
    width = 0.38
    directions = (
        ("text_to_image", "text→image", "#dd8452"),
        ("image_to_text", "image→text", "#55a868"),
    )
    for offset, (key, label, color) in enumerate(directions):
        values = [report[key][name] for name in names]
        positions = [i + (offset - 0.5) * width for i in range(len(names))]
        label_bars(right, right.bar(positions, values, width, label=label, color=color))
    right.set_xticks(range(len(names)), names)
    right.set_title(f"Full pool ({report['n']} images)")
    # Below the axes, so the legend never covers a bar or its label.
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.suptitle(f"{model_name(report.get('model'))} · {report.get('split')}", fontsize=10)
    fig.tight_layout()
    return fig


def model_name(model: object) -> str:
    """The model's folder name (or hub id), so a title does not leak where the files lie."""
    return (shown_model_name(str(model)) if model else None) or "model"


def label_bars(axis: Any, bars: Any) -> None:
    """Write each bar's value above it, so a reader need not estimate it from the axis."""
    axis.bar_label(bars, fmt="%.2f", padding=2, fontsize=8)
    axis.set_ylim(0, 1.1)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))
