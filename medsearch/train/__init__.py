"""Training: the contrastive fine-tuning loop, its configuration, schedules and checkpoints.

``from medsearch.train import TrainConfig, train`` is the whole interface. The loop (and with it
torch) is imported on first use, so reading and validating a configuration stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medsearch.train.config import TrainConfig, load_train_config

if TYPE_CHECKING:
    from medsearch.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_train_config", "train"]


def __getattr__(name: str) -> Any:
    if name in {"train", "TrainResult"}:
        from medsearch.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
