"""Per-epoch checkpoints: model, optimiser, scheduler, scaler, RNG states and progress.

Each is written atomically (a temporary file, then a rename), so a run killed mid-write, as on a
managed-spot interruption, always leaves the previous checkpoint whole to resume from.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsearch.errors import StorageError

log = logging.getLogger(__name__)

_NAME = re.compile(r"epoch-(\d{4,})\.pt")
KEEP = 2


def checkpoint_path(folder: Path, epoch: int) -> Path:
    """Return the checkpoint file of an epoch (1-based: written after that epoch)."""
    return folder / f"epoch-{epoch:04d}.pt"


def latest_checkpoint(folder: Path) -> Path | None:
    """Return the checkpoint of the highest epoch in ``folder``, if any."""
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return max(found)[1] if found else None


def rng_state() -> dict[str, Any]:
    """Capture every random generator a run draws from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the generators captured by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, epoch: int, state: dict[str, Any]) -> Path:
    """Write an epoch's checkpoint atomically and prune all but the newest few."""
    folder.mkdir(parents=True, exist_ok=True)
    target = checkpoint_path(folder, epoch)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.")
    os.close(fd)
    try:
        torch.save({**state, "epoch": epoch, "rng": rng_state()}, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    older = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name)))
    for _, path in older[:-KEEP]:
        path.unlink(missing_ok=True)
    log.info("checkpoint %s", target)
    return target


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    try:
        # weights_only=False: the file holds RNG states and history, written by this code only.
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise StorageError(f"cannot read checkpoint {path}: {exc}") from None
