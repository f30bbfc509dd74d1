"""Training configuration: one typed dataclass, read from a JSON/YAML file and flags (flags win).

Fields left unset take the defaults of the chosen base: the reference fine-tuning run for
pretrained CLIPs (batch 64, lr 5e-5, 10 epochs, 50k samples per epoch) or the tuned settings of
the tiny model.
This module imports no torch, so the CLI can validate a configuration instantly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from medsearch import storage
from medsearch.errors import ConfigError, StorageError
from medsearch.model.names import check_model_name, default_model_name

TINY = "tiny"
# The base of real use; ``tiny`` trains from scratch where no pretrained weights can be had.
DEFAULT_BASE = "openai/clip-vit-base-patch32"
SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "adam")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _opt(help_text: str, default: Any = None, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help_text, **extra})


# Validation pool size: large enough that R@1/5/10 move by whole per-mille steps and land in the
# range of the usual retrieval protocols (Flickr30k 1k, COCO 5k test images), small enough to keep
# in memory (2,000 x 150,528 bytes = 301 MB of uint8 at 224 px) and to encode in seconds per epoch.
DEFAULT_VALIDATION_LIMIT = 2000


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; ``None`` means "the default of the chosen base"."""

    data: str = _opt("training manifest (.jsonl or .csv), local or s3://", default="")
    out: Path = field(
        default=Path(), metadata={"help": "output folder: final model, history.jsonl, curve PNG"}
    )
    base: str = _opt(
        "a Hugging Face id, a model folder, an s3:// prefix, or 'tiny' (a small CLIP from scratch)",
        default=DEFAULT_BASE,
    )
    name: str | None = _opt(
        "the model's name, shown by the API and the page (default: medsearch- + the base's name)"
    )
    epochs: int | None = _opt("passes over the (possibly cut) training set; 0 saves the base")
    batch_size: int | None = _opt("image-caption pairs per step (contrastive negatives)")
    lr: float | None = _opt("peak learning rate")
    warmup: float | None = _opt(
        "warm-up: a fraction of all steps (< 1) or a step count (>= 1); none with 'constant'"
    )
    schedule: str = _opt(
        "learning rate after warm-up: cosine or linear decay, or constant", default="cosine"
    )
    optimizer: str = _opt(
        "adamw (decoupled decay, CLIP's betas 0.9/0.98) or adam (torch's defaults, no decay)",
        default="adamw",
    )
    max_samples: int | None = _opt("cut each epoch to this many samples (0 = whole set)")
    weight_decay: float | None = _opt(
        "weight decay (never on biases, norms, logit_scale); adamw only"
    )
    grad_clip: float | None = _opt(
        "clip the global gradient norm to this (0 = off; default 1.0 with adamw, off with adam)"
    )
    precision: str = _opt("auto | fp32 | bf16 | fp16 (autocast on GPU only)", default="auto")
    freeze_vision: bool = _opt("keep the vision tower's weights fixed", default=False)
    freeze_text: bool = _opt("keep the text tower's weights fixed", default=False)
    augment: bool | None = _opt("light image augmentation (crop, brightness, contrast)")
    caption_dropout: float | None = _opt(
        "on half of the captions, drop each word with this probability (teaches short queries)"
    )
    seed: int = _opt("seed of initialisation, shuffling and augmentation", default=0)
    num_workers: int | None = _opt("image-loading worker processes (default: 0 on CPU)")
    device: str | None = _opt("torch device (default: cuda when present, else cpu)")
    eval_each_epoch: bool = _opt(
        "full-pool R@k on the validation split after every epoch", default=True
    )
    val_limit: int = _opt(
        "validation images scored each epoch: a seeded subset of the split, decoded once",
        default=DEFAULT_VALIDATION_LIMIT,
    )
    resume: bool = _opt(
        "continue from the latest checkpoint in the checkpoint folder", default=False
    )
    checkpoint_dir: Path | None = field(
        default=None, metadata={"help": "checkpoint folder (default: OUT/checkpoints)"}
    )
    strict: bool = _opt("stop at the first unreadable image instead of skipping it", default=False)
    threads: int | None = _opt("CPU threads for torch (tiny: 1; else torch's own choice, 0)")

    def resolved(self) -> TrainConfig:
        """Return a copy with the base's defaults filled in, validated."""
        defaults = TINY_DEFAULTS if self.is_tiny else PRETRAINED_DEFAULTS
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if self.schedule == "constant" and self.warmup is None:
            filled["warmup"] = 0.0  # a constant rate from the first step
        if self.grad_clip is None:
            # Plain Adam is the earlier recipe: no decay, no warm-up, no clipping.
            filled["grad_clip"] = 0.0 if self.optimizer == "adam" else 1.0
        if self.optimizer == "adam" and self.weight_decay is None:
            filled["weight_decay"] = 0.0
        if self.name is None:
            filled["name"] = default_model_name(self.base)
        if self.checkpoint_dir is None and self.out != Path():
            filled["checkpoint_dir"] = Path(self.out) / "checkpoints"
        config = dataclasses.replace(self, **filled)
        config.validate()
        return config

    @property
    def is_tiny(self) -> bool:
        """Whether the base is the from-scratch tiny model."""
        return self.base == TINY

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first unusable value."""
        if not self.data:
            raise ConfigError("no training data: give --data MANIFEST")
        if self.out == Path():
            raise ConfigError("no output folder: give --out DIR")
        if not self.base:
            raise ConfigError("base must not be empty: 'tiny', a model folder, hub id or s3://")
        if self.name is not None:
            try:
                check_model_name(self.name)
            except ValueError as exc:
                _check(False, "name", self.name, str(exc))
        _check(self.epochs is None or self.epochs >= 0, "epochs", self.epochs, ">= 0")
        _check(
            self.batch_size is None or self.batch_size >= 2, "batch_size", self.batch_size, ">= 2"
        )
        _check(self.lr is None or (_finite(self.lr) and self.lr > 0), "lr", self.lr, "> 0")
        _check(
            self.warmup is None or (_finite(self.warmup) and self.warmup >= 0),
            "warmup",
            self.warmup,
            ">= 0",
        )
        _check(self.schedule in SCHEDULES, "schedule", self.schedule, " or ".join(SCHEDULES))
        _check(self.precision in PRECISIONS, "precision", self.precision, " | ".join(PRECISIONS))
        _check(
            self.max_samples is None or self.max_samples >= 0,
            "max_samples",
            self.max_samples,
            ">= 0",
        )
        _check(
            self.weight_decay is None or (_finite(self.weight_decay) and self.weight_decay >= 0),
            "weight_decay",
            self.weight_decay,
            ">= 0",
        )
        _check(
            self.grad_clip is None or (_finite(self.grad_clip) and self.grad_clip >= 0),
            "grad_clip",
            self.grad_clip,
            ">= 0",
        )
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, " or ".join(OPTIMIZERS))
        if self.optimizer == "adam" and self.weight_decay:
            raise ConfigError(
                "weight_decay needs optimizer adamw: Adam's L2 penalty is not weight decay"
            )
        _check(
            self.caption_dropout is None
            or (_finite(self.caption_dropout) and 0 <= self.caption_dropout < 1),
            "caption_dropout",
            self.caption_dropout,
            "in [0, 1)",
        )
        _check(self.threads is None or self.threads >= 0, "threads", self.threads, ">= 0")
        _check(self.val_limit >= 1, "val_limit", self.val_limit, ">= 1")
        _check(
            self.num_workers is None or self.num_workers >= 0,
            "num_workers",
            self.num_workers,
            ">= 0",
        )
        if self.freeze_vision and self.freeze_text:
            raise ConfigError("freeze_vision and freeze_text together leave nothing to train")

    def to_json(self) -> dict[str, Any]:
        """Return the configuration as JSON-ready values (paths as strings)."""
        return {
            f.name: str(v) if isinstance(v, Path) else v
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }


# Pretrained bases: the reference fine-tuning run.
PRETRAINED_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 64,
    "lr": 5e-5,
    "warmup": 0.05,
    "max_samples": 50_000,
    "weight_decay": 0.1,
    "augment": False,
    "caption_dropout": 0.0,
    "threads": 0,
}
# The tiny model from scratch: a high learning rate, small batches (more steps per epoch), tuned
# on the default synthetic corpus (seed 0): test text→image R@10 0.956 after 10 epochs (untrained:
# 0.044), at about 11-12 s of one CPU thread per epoch.
TINY_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 32,
    "lr": 1e-3,
    "warmup": 0.05,
    "max_samples": 0,
    "weight_decay": 0.05,
    "augment": True,
    # Measured on the demo corpus and its query set: vector R@10 0.656 with 0.4, 0.545 without
    # (hybrid at alpha 0.5: 0.749 and 0.685); the from-scratch text tower has seen only
    # sentences otherwise.
    "caption_dropout": 0.4,
    # The tiny model's matrices are too small to gain from a second thread, and on a busy machine
    # OpenMP threads waiting on each other cost up to 10x (measured: 124 s vs 10 s per epoch).
    "threads": 1,
}


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _check(ok: bool, name: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{name} = {value!r} is not allowed: it must be {rule}")


_FIELDS = {f.name: f for f in fields(TrainConfig)}


def field_help() -> dict[str, str]:
    """Return each field's help text (the CLI builds its flags from it)."""
    return {name: f.metadata["help"] for name, f in _FIELDS.items()}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML mapping of field names (dashes or underscores) to values."""
    try:
        text = storage.read_text(path)
    except StorageError as exc:
        raise ConfigError(f"cannot read config file: {exc}") from None
    name = str(path).lower()
    try:
        if name.endswith((".yaml", ".yml")):
            import yaml  # only when a YAML file is given

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as exc:  # any parser error is the file's fault
        raise ConfigError(
            f"{path}: not valid {'YAML' if 'y' in name[-4:] else 'JSON'}: {exc}"
        ) from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: a config file must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in raw.items()}


def build_config(values: Mapping[str, Any]) -> TrainConfig:
    """Build a config from a mapping, converting and checking each value's type."""
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
    converted = {name: _convert(name, value) for name, value in values.items()}
    return TrainConfig(**converted)


def load_train_config(
    config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Merge a config file with overriding values (flags win) and resolve the base's defaults."""
    values: dict[str, Any] = dict(read_config_file(config_file)) if config_file else {}
    values.update({k: v for k, v in (overrides or {}).items()})
    return build_config(values).resolved()


def _convert(name: str, value: Any) -> Any:
    kind = _FIELDS[name].type
    if value is None:
        if "None" in str(kind):
            return None
        raise ConfigError(f"{name} needs a value")
    try:
        if name in {"out", "checkpoint_dir"}:
            if not isinstance(value, str | Path):
                raise TypeError
            return Path(value)
        if "bool" in str(kind):
            return to_bool(value)
        if "int" in str(kind):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if "float" in str(kind):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        expected = str(kind).replace(" | None", "")
        raise ConfigError(f"{name} = {value!r} is not a valid {expected}") from None


def to_bool(value: Any) -> bool:
    """Read a yes/no setting as flags, config files and SageMaker hyperparameters spell it."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(value)
