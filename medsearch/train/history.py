"""Training history: one JSON line per epoch, and the training-curve PNG drawn from it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medsearch import storage


def write_history(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write the whole history as JSON Lines (atomically, so a resumed run rewrites it whole)."""
    storage.write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def plot_history(rows: Sequence[dict[str, Any]], out: Path) -> Path:
    """Draw training loss and validation text→image R@k per epoch into a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    fig, loss_axis = plt.subplots(figsize=(7, 4), dpi=100)
    trained = [r for r in rows if r.get("loss") is not None]
    loss_axis.plot([r["epoch"] for r in trained], [r["loss"] for r in trained], "o-", color="C0")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("training loss", color="C0")
    scored = [r for r in rows if r.get("val")]
    if scored:
        recall_axis = loss_axis.twinx()
        for key, colour in (("r@1", "C1"), ("r@10", "C2")):
            recall_axis.plot(
                [r["epoch"] for r in scored],
                [r["val"]["text_to_image"][key] for r in scored],
                "s--",
                color=colour,
                label=f"val text→image {key.upper()}",
            )
        recall_axis.set_ylim(0, 1)
        recall_axis.set_ylabel("validation recall")
        recall_axis.legend(loc="center right")
    loss_axis.set_title("training curve")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
