"""The training loop: symmetric contrastive fine-tuning of a CLIP on a manifest.

One call, :func:`train`, does the whole run: base model (tiny from scratch, or a pretrained CLIP),
AdamW with selective weight decay, warm-up + cosine/linear schedule, shuffled epochs without
replacement (optionally cut to ``max_samples``), ``logit_scale`` clamped to ln 100, gradient
clipping, autocast on GPU, optional tower freezing, a checkpoint per epoch with resume, validation
full-pool R@k per epoch, ``history.jsonl`` and a training-curve PNG. The CLI, the demo and the
SageMaker entry point all call it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import CLIPModel, VisionTextDualEncoderModel

from medsearch import storage
from medsearch.data.manifest import BadRecord, Record, read_manifest, write_report
from medsearch.errors import ConfigError, ImageDecodeError, InvalidInputError
from medsearch.model.encoder import TorchEncoder, select_device
from medsearch.model.loading import ClipBundle, load_clip, save_clip
from medsearch.model.names import TRAIN_CONFIG_FILE
from medsearch.model.tiny import build_tiny_clip
from medsearch.train.checkpoint import (
    BASE,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    run_identity,
    save_checkpoint,
    start_run,
)
from medsearch.train.config import TrainConfig
from medsearch.train.data import Collate, EpochSampler, PairDataset, ValidationPixels
from medsearch.train.history import plot_history, write_history
from medsearch.train.schedule import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

MAX_LOGIT_SCALE = math.log(100.0)
HISTORY = "history.jsonl"
CURVE = "training_curve.png"
BAD_RECORDS = "bad_records.jsonl"
CONFIG = TRAIN_CONFIG_FILE


@dataclass
class TrainResult:
    """What a run produced: the model folder, per-epoch history and skipped records."""

    out: Path
    epochs: int
    history: list[dict[str, Any]]
    bad_records: list[BadRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def val_metrics(self) -> dict[str, Any] | None:
        """The last validation metrics, if any epoch was evaluated."""
        scored = [row["val"] for row in self.history if row.get("val")]
        return scored[-1] if scored else None


def split_records(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """Return (captioned training pairs, validation records); records without a split train."""
    train = [r for r in records if r.split in (None, "train") and r.has_caption]
    validation = [r for r in records if r.split == "validation"]
    return train, validation


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: text→image and image→text cross-entropy, averaged."""
    targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return 0.5 * (
        F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)
    )


def freeze_towers(model: torch.nn.Module, *, vision: bool, text: bool) -> None:
    """Stop gradients into the vision and/or text tower (with its projection).

    A frozen tower is also put in eval mode: batch-norm statistics are weights too, and would
    otherwise keep moving in training.
    """
    frozen: list[Any] = []
    if vision:
        frozen += [model.vision_model, model.visual_projection]
    if text:
        frozen += [model.text_model, model.text_projection]
    for module in frozen:
        module.requires_grad_(False)
        module.eval()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype for a precision setting; ``None`` means plain fp32."""
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            log.warning("%s autocast is for GPUs only; training in fp32 on %s", precision, device)
        return None
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def native_bf16(device: torch.device) -> bool:
    """Tell whether a CUDA device computes bf16 natively (Ampere, compute capability 8.0, on).

    ``torch.cuda.is_bf16_supported()`` also counts emulation, which on a T4 or V100 (the cheap
    spot GPUs) runs bf16 slower than fp32; there fp16 with a loss scale is the fast choice.
    """
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _base_bundle(config: TrainConfig, train_records: list[Record]) -> ClipBundle:
    if config.is_tiny:
        return build_tiny_clip([r.caption or "" for r in train_records], seed=config.seed)
    return load_clip(config.base)


def _validation_pixels(
    config: TrainConfig,
    bundle: ClipBundle,
    records: list[Record],
    workers: int,
    bad: dict[str, str],
) -> ValidationPixels | None:
    """Decode the validation subset once, in the loader's workers; its skips go to ``bad``.

    Every epoch then runs only the model over the cached pixels: decoding 16k validation images
    in the main process each epoch took longer than the epoch's training.
    """
    if not (config.eval_each_epoch and records):
        return None
    try:
        cache = ValidationPixels.build(
            records,
            bundle.image_processor,
            limit=config.val_limit,
            seed=config.seed,
            num_workers=workers,
            strict=config.strict,
        )
    except InvalidInputError as exc:
        log.warning("validation skipped: %s", exc)
        return None
    bad.update({b.image_id: b.reason for b in cache.bad})
    return cache


def _validate(encoder: TorchEncoder, cache: ValidationPixels | None) -> dict[str, Any] | None:
    """Full-pool R@k (both directions) and the in-batch table on the cached validation subset."""
    if cache is None:
        return None
    try:
        return cache.metrics(encoder)
    except InvalidInputError as exc:
        log.warning("validation skipped: %s", exc)
        return None


def _baseline_row(encoder: TorchEncoder, cache: ValidationPixels | None) -> dict[str, Any]:
    """Epoch 0: the untrained base, the baseline every later epoch is compared against."""
    return {"epoch": 0, "loss": None, "lr": 0.0, "val": _validate(encoder, cache), "time_s": 0.0}


def _batches(loader: torch.utils.data.DataLoader, *, desc: str) -> Iterator[Any]:
    yield from tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=None)


def train(config: TrainConfig) -> TrainResult:
    """Run a training job end to end and save the model (with tokenizer/processor) to ``out``."""
    config = config.resolved()
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(config)
    finally:
        torch.set_num_threads(threads)  # the caller's process keeps its own setting


def _train(config: TrainConfig) -> TrainResult:
    started = time.perf_counter()
    assert config.epochs is not None and config.batch_size is not None  # set by resolved()
    assert config.lr is not None and config.warmup is not None and config.checkpoint_dir
    out = Path(config.out)
    ckpt_dir = Path(config.checkpoint_dir)
    _seed_everything(config.seed)

    records = read_manifest(config.data)
    train_records, val_records = split_records(records)
    if config.epochs > 0 and not train_records:
        raise ConfigError(f"{config.data} has no captioned training records to train on")
    if config.epochs > 0 and len(train_records) < 2:
        raise ConfigError("contrastive training needs at least two captioned training records")
    device = select_device(config.device)

    identity = run_identity(config, train_records)
    run_dir = start_run(ckpt_dir, identity, resume=config.resume) if config.epochs > 0 else None
    latest = latest_checkpoint(run_dir) if run_dir is not None and config.resume else None
    if latest is not None and run_dir is not None and (run_dir / BASE).is_dir():
        bundle = load_clip(str(run_dir / BASE))
        bundle.source = config.base
    else:
        latest = None
        bundle = _base_bundle(config, train_records)
        if run_dir is not None:
            save_clip(bundle, run_dir / BASE)  # resume never needs the base (or the hub) again
    model = bundle.model
    torch.nn.Module.to(model, device)
    model.train()
    freeze_towers(model, vision=config.freeze_vision, text=config.freeze_text)
    encoder = TorchEncoder(bundle, device=device)

    history: list[dict[str, Any]] = []
    bad: dict[str, str] = {}
    bad_indices: set[int] = set()
    workers = config.num_workers
    if workers is None:
        # Decoding keeps a GPU waiting without workers; on CPU they would compete with the model.
        workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    if config.epochs == 0 or run_dir is None:
        cache = _validation_pixels(config, bundle, val_records, workers, bad)
        if config.eval_each_epoch and val_records:
            history.append(_baseline_row(encoder, cache))
        return _finish(config, bundle, history, bad, started, epochs=0)

    samples = len(train_records)
    if config.max_samples:
        samples = min(samples, config.max_samples)
    drop_last = samples >= config.batch_size
    steps_per_epoch = samples // config.batch_size if drop_last else 1
    total_steps = steps_per_epoch * config.epochs
    optimizer = build_optimizer(
        model, lr=config.lr, weight_decay=config.weight_decay or 0.0, optimizer=config.optimizer
    )
    scheduler = build_scheduler(
        optimizer, total_steps=total_steps, warmup=config.warmup, schedule=config.schedule
    )
    dtype = autocast_dtype(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    start_epoch = 0
    if latest is not None:
        state = load_checkpoint(latest)
        if state.get("run") != identity:
            raise ConfigError(f"cannot resume: {latest} was written by another run")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state["scaler"]:
            # An fp32 or bf16 run keeps no loss scale: resumed in fp16, the scaler starts afresh.
            scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        history = list(state["history"])
        bad = dict(state["bad"])
        bad_indices = {i for i, r in enumerate(train_records) if r.image_id in bad}
        start_epoch = int(state["epoch"])
        log.info("resuming from %s (epoch %d of %d)", latest, start_epoch, config.epochs)
    cache = _validation_pixels(config, bundle, val_records, workers, bad)
    if latest is None and config.eval_each_epoch and val_records:
        history.append(_baseline_row(encoder, cache))

    dataset = PairDataset(
        train_records,
        bundle.image_processor,
        augment=bool(config.augment),
        caption_dropout=float(config.caption_dropout or 0.0),
        seed=config.seed,
    )
    collate = Collate(bundle.tokenizer, bundle.max_text_length)
    sampler = EpochSampler(
        len(train_records), seed=config.seed, exclude=bad_indices, limit=config.max_samples or 0
    )
    # One loader for the whole run: its workers (and their decoders and imports) start once,
    # not once per epoch; the sampler hands each item its epoch.
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    for epoch in range(start_epoch, config.epochs):
        epoch_started = time.perf_counter()
        sampler.set_epoch(epoch)
        losses = []
        for batch in _batches(loader, desc=f"epoch {epoch + 1}/{config.epochs}"):
            for index, reason in batch.bad:
                if config.strict:
                    raise ImageDecodeError(reason, record=train_records[index].image_id)
                bad.setdefault(train_records[index].image_id, reason)
                bad_indices.add(index)
            if batch.pixel_values is None or len(batch.indices) < 2:
                continue
            losses.append(_step(model, batch, optimizer, scheduler, scaler, config, device, dtype))
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            # One device sync per epoch, not per step: the losses stay on the device until here.
            "loss": float(torch.stack(losses).mean().item()) if losses else None,
            "lr": float(scheduler.get_last_lr()[0]),
            "steps": len(losses),
            "logit_scale": float(model.logit_scale.exp().item()),
        }
        if config.eval_each_epoch and val_records:
            row["val"] = _validate(encoder, cache)
        row["time_s"] = round(time.perf_counter() - epoch_started, 3)
        history.append(row)
        _log_epoch(row, config.epochs)
        save_checkpoint(
            run_dir,
            epoch + 1,
            {
                "run": identity,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "history": history,
                "bad": bad,
                "config": config.to_json(),
            },
        )
        write_history(out / HISTORY, history)
    del loader  # its persistent workers stop here, before the model is saved
    return _finish(config, bundle, history, bad, started, config.epochs)


def _step(
    model: CLIPModel | VisionTextDualEncoderModel,
    batch: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    device: torch.device,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    autocast = (
        torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )
    with autocast:
        output = model(
            input_ids=batch.input_ids.to(device, non_blocking=True),
            attention_mask=batch.attention_mask.to(device, non_blocking=True),
            pixel_values=batch.pixel_values.to(device, non_blocking=True),
        )
        loss = contrastive_loss(output.logits_per_text.float())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config.grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    with torch.no_grad():
        # CLIP's temperature cap: beyond 100 the logits saturate and training destabilises.
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss.detach()


def _log_epoch(row: dict[str, Any], epochs: int) -> None:
    val = row.get("val") or {}
    t2i = val.get("text_to_image", {})
    log.info(
        "epoch %d/%d loss %s lr %.3g val t2i R@1 %s R@10 %s (%.1fs)",
        row["epoch"],
        epochs,
        f"{row['loss']:.4f}" if row["loss"] is not None else "-",
        row["lr"],
        f"{t2i['r@1']:.3f}" if t2i else "-",
        f"{t2i['r@10']:.3f}" if t2i else "-",
        row["time_s"],
    )


def _finish(
    config: TrainConfig,
    bundle: ClipBundle,
    history: list[dict[str, Any]],
    bad: dict[str, str],
    started: float,
    epochs: int,
) -> TrainResult:
    out = Path(config.out)
    bundle.model.cpu()
    save_clip(bundle, out)
    write_history(out / HISTORY, history)
    if history:
        plot_history(history, out / CURVE)
    storage.write_text(out / CONFIG, json.dumps(config.to_json(), indent=2) + "\n")
    bad_records = [BadRecord(image_id, reason) for image_id, reason in sorted(bad.items())]
    report = out / BAD_RECORDS
    if bad_records:
        write_report(report, bad_records)
        log.warning("%d unreadable records skipped; see %s", len(bad_records), report)
    else:
        report.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    log.info("saved the model to %s (%d epochs, %.1fs)", out, epochs, seconds)
    return TrainResult(out, epochs, history, bad_records, seconds)
