"""A model's name as clients see it (the API's ``/v1/health``, the page's header).

A trained folder records the name it was given (``train --name``, by default one made from the
base) in its ``train_config.json``; every loader reads it from there, so the page says
``medsearch-clip-vit-base-patch32`` rather than the last part of wherever the folder happens to
lie ("model"). A model trained elsewhere has no such record: a Hugging Face id is shown as it
is, a folder or ``s3://`` prefix by its last part only (where it lies on the server's disk or in
which bucket is not the clients' business). No torch imports: the ONNX encoder uses this too.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

# The training run's options, written beside the model it made (its name among them).
TRAIN_CONFIG_FILE = "train_config.json"
# The prefix of the names this project gives the models it trains.
NAME_PREFIX = "medsearch-"
# The longest name recorded or shown (a header, not a paragraph).
MAX_NAME_LENGTH = 80


def shown_model_name(model_id: str | None) -> str | None:
    """Return a model id fit to show clients: a Hugging Face id as it is, a folder or ``s3://``
    prefix by its last part only."""
    if not model_id:
        return model_id
    local = model_id.startswith(("/", ".", "~")) or "\\" in model_id or ":" in model_id
    if not local and model_id.count("/") <= 1:
        return model_id  # org/name on the hub
    return PurePosixPath(model_id.replace("\\", "/").rstrip("/")).name or None


def default_model_name(base: str) -> str:
    """The name a model trained from ``base`` gets unless told otherwise: ``medsearch-`` and the
    base's own name (``openai/clip-vit-base-patch32`` → ``medsearch-clip-vit-base-patch32``,
    ``tiny`` → ``medsearch-clip-tiny``); a base that already has such a name keeps it."""
    if base == "tiny":
        return f"{NAME_PREFIX}clip-tiny"
    shown = shown_model_name(base) or "clip"
    last = shown.rsplit("/", 1)[-1]
    return last if last.startswith(NAME_PREFIX) else f"{NAME_PREFIX}{last}"


def check_model_name(name: str) -> str:
    """Return ``name`` stripped, or raise ``ValueError`` saying what a name may hold."""
    text = name.strip()
    if not text or len(text) > MAX_NAME_LENGTH or not text.isprintable():
        raise ValueError(f"1-{MAX_NAME_LENGTH} printable characters")
    return text


def recorded_model_name(folder: Path) -> str | None:
    """The name recorded in ``folder``'s training config, or None (no record, or none usable:
    a name is something to show, so a damaged record hides it rather than failing the load)."""
    try:
        recorded = json.loads((Path(folder) / TRAIN_CONFIG_FILE).read_text()).get("name")
        return check_model_name(recorded) if isinstance(recorded, str) else None
    except (OSError, ValueError, AttributeError):
        return None
