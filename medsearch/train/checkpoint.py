"""Per-epoch checkpoints: model, optimiser, scheduler, scaler, RNG states and progress.

Each is written atomically (a temporary file, then a rename), so a run killed mid-write, as on a
managed-spot interruption, always leaves the previous checkpoint whole to resume from.

A checkpoint folder may hold several runs: a SageMaker job always resumes from
``/opt/ml/checkpoints``, and a new job may reuse an earlier job's checkpoint URI. So each run
writes into its own ``run-<id>/`` subfolder, the id a hash of what defines the run's weights (its
:func:`run_identity`: base, training data, schedule and optimiser options). A run resumes only
its own checkpoints, refuses (with the differing options named) to resume another run's, and
prunes only its own files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medsearch import storage
from medsearch.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from medsearch.data.manifest import Record
    from medsearch.train.config import TrainConfig

log = logging.getLogger(__name__)

_NAME = re.compile(r"epoch-(\d{4,})\.pt")
KEEP = 2
RUN_FILE = "run.json"
BASE = "base"
# The options that decide a run's weights (with the base and the data). Device, workers, threads,
# precision, strictness and evaluation do not: a run may resume on other hardware.
RUN_OPTIONS = (
    "base",
    "epochs",
    "batch_size",
    "lr",
    "warmup",
    "schedule",
    "optimizer",
    "max_samples",
    "weight_decay",
    "grad_clip",
    "freeze_vision",
    "freeze_text",
    "augment",
    "caption_dropout",
    "seed",
)


def data_fingerprint(records: Sequence[Record]) -> str:
    """Hash the training pairs in order (ids and captions, not paths: the data may move)."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps([record.image_id, record.caption]).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def run_identity(config: TrainConfig, records: Sequence[Record]) -> dict[str, Any]:
    """Return what defines a run's weights: its base, data and schedule-defining options."""
    identity = {name: getattr(config, name) for name in RUN_OPTIONS}
    identity["data"] = data_fingerprint(records)
    return identity


def run_folder(folder: Path, identity: dict[str, Any]) -> Path:
    """Return the subfolder of ``folder`` that holds the checkpoints of the run ``identity``."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return Path(folder) / f"run-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def start_run(folder: Path, identity: dict[str, Any], *, resume: bool) -> Path:
    """Return the run's checkpoint folder, ready for a fresh run or for resuming.

    Resuming with no checkpoint of this run but one of another run in ``folder`` raises
    :class:`ConfigError` naming what differs: continuing it would train (or return) a model the
    options do not describe. A fresh run clears its own earlier checkpoints, whose higher epoch
    numbers would otherwise survive pruning and be resumed later.
    """
    run = run_folder(folder, identity)
    if resume and latest_checkpoint(run) is None:
        other = _latest_other_run(folder, run)
        if other is not None:
            raise ConfigError(f"cannot resume from {folder}: {_difference(other, identity)}")
    if not resume and run.is_dir():
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    storage.write_text(run / RUN_FILE, json.dumps(identity, indent=2, default=str) + "\n")
    return run


def _latest_other_run(folder: Path, run: Path) -> tuple[Path, dict[str, Any] | None] | None:
    """Return the newest other run's latest checkpoint with its identity (None: unknown)."""
    if not Path(folder).is_dir():
        return None
    found: list[tuple[float, Path, dict[str, Any] | None]] = []
    legacy = latest_checkpoint(Path(folder))
    if legacy is not None:
        found.append((legacy.stat().st_mtime, legacy, None))
    for sub in Path(folder).glob("run-*"):
        latest = latest_checkpoint(sub)
        if sub == run or latest is None:
            continue
        try:
            identity = json.loads((sub / RUN_FILE).read_text())
        except (OSError, ValueError):
            identity = None
        found.append((latest.stat().st_mtime, latest, identity))
    if not found:
        return None
    _, path, identity = max(found, key=lambda item: item[0])
    return path, identity


def _difference(other: tuple[Path, dict[str, Any] | None], identity: dict[str, Any]) -> str:
    path, theirs = other
    if theirs is None:
        return f"{path.name} belongs to a run whose options are not recorded; use another folder"
    changed = [
        f"{name} {theirs.get(name)!r} -> {identity[name]!r}"
        for name in identity
        if str(theirs.get(name)) != str(identity[name])
    ]
    return (
        f"its checkpoint {path.relative_to(path.parent.parent)} is of another run"
        f" ({', '.join(changed)}); give a new --checkpoint-dir or train without --resume"
    )


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
    """Write an epoch's checkpoint atomically and prune all but the run's newest few.

    ``folder`` is the run's own folder (:func:`start_run`), so no other run's file is pruned.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = checkpoint_path(folder, epoch)
    fd, tmp = storage.temp_file_beside(target)
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
