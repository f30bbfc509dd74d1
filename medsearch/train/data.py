"""Training data: captioned records as (pixels, caption) pairs, with light seeded augmentation.

Images go through the model's own image processor config by the fast path of
:mod:`medsearch.model.preprocess` (the processor's pixels without its numpy round trips), after a
JPEG draft decode (large JPEGs decoded at 1/2-1/8 scale): on 800x600 JPEGs a worker makes 2-3x
as many 224 px images a second as with decode + processor (bench/train_data.py).
Unreadable images are not fatal: the item comes back marked bad (with the reason) and the loop
skips and reports it, unless the run is strict. :class:`Batch` pins its tensors when the loader
asks (``pin_memory=True``), so host-to-device copies can overlap the step.

:class:`ValidationPixels` decodes and preprocesses a fixed, seeded subset of the validation
records once, in data-loader workers, and keeps the pixels as uint8; each epoch's validation then
only runs the model, and scores with the metric functions of :mod:`medsearch.evaluate`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance

from medsearch.data.images import load_record_images
from medsearch.data.manifest import BadRecord, Record
from medsearch.errors import ImageDecodeError, InvalidInputError
from medsearch.evaluate import IN_BATCH_SIZE, caption_groups, full_pool_metrics, in_batch_mrr
from medsearch.model.encoder import TorchEncoder, _eval_mode, pooled
from medsearch.model.preprocess import FastImageProcessor, OriginalImageProcessor, fast_processor
from medsearch.train.config import DEFAULT_VALIDATION_LIMIT
from medsearch.vectors import normalize

log = logging.getLogger(__name__)

# The augmentation crop keeps at least 75 % of the area at an aspect jitter of 1.1, so its short
# side can be 0.83 of the image's: a draft at 1/0.8 of the resize target still leaves the exact
# resize downscaling, never upscaling a drafted image.
AUGMENT_DRAFT_MARGIN = 1.25


def augment_image(image: Image.Image, rng: random.Random) -> Image.Image:
    """Randomly crop (75-100 % of the area) and jitter brightness and contrast.

    No flips: captions name laterality (left/right), which a mirror image would contradict.
    """
    width, height = image.size
    scale = rng.uniform(0.75, 1.0)
    aspect = rng.uniform(0.9, 1.1)
    w = max(1, min(width, round((scale * width * height * aspect) ** 0.5)))
    h = max(1, min(height, round((scale * width * height / aspect) ** 0.5)))
    left = rng.randint(0, width - w)
    top = rng.randint(0, height - h)
    image = image.crop((left, top, left + w, top + h))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
    return ImageEnhance.Contrast(image).enhance(rng.uniform(0.85, 1.15))


def drop_words(caption: str, rate: float, rng: random.Random) -> str:
    """On half of the calls, drop each word of ``caption`` with probability ``rate``.

    Users type short queries ("rib fracture", "left knee effusion") while captions are sentences.
    Training on word subsets as well as on whole captions teaches the text tower that a few words
    mean what they mean in a sentence. Never returns an empty caption.
    """
    words = caption.split()
    if not rate or len(words) < 2 or rng.random() < 0.5:
        return caption
    kept = [w for w in words if rng.random() >= rate]
    return " ".join(kept) if kept else rng.choice(words)


def epoch_order(n: int, *, seed: int, epoch: int, exclude: set[int], limit: int) -> list[int]:
    """Return one epoch's sample order: a seeded permutation without replacement, cut to limit."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = [i for i in torch.randperm(n, generator=generator).tolist() if i not in exclude]
    return order[:limit] if limit else order


class EpochSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """One epoch's order as ``(index, epoch)`` keys for :class:`PairDataset`.

    The sampler lives in the main process, so one data loader (with persistent workers) serves
    every epoch: :meth:`set_epoch` picks the next permutation, and ``exclude`` is read when an
    epoch starts, so records found unreadable are left out of the following epochs.
    """

    def __init__(self, n: int, *, seed: int, exclude: set[int], limit: int = 0) -> None:
        self.n = n
        self.seed = seed
        self.exclude = exclude
        self.limit = limit
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation the next iteration yields."""
        self.epoch = epoch

    def order(self) -> list[int]:
        """The current epoch's record indices, in order."""
        return epoch_order(
            self.n, seed=self.seed, epoch=self.epoch, exclude=self.exclude, limit=self.limit
        )

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(index, self.epoch) for index in self.order()])

    def __len__(self) -> int:
        return len(self.order())


@dataclass
class Item:
    """One loaded pair, or a bad record's reason (``pixels`` is then ``None``)."""

    index: int
    pixels: torch.Tensor | None
    caption: str
    reason: str | None = None


class PairDataset(torch.utils.data.Dataset):
    """Records as image-caption pairs; augmentation is seeded per (seed, epoch, index).

    Items are asked for by ``(index, epoch)`` (as :class:`EpochSampler` yields them), so the
    epoch travels with each request: data-loader workers that live across epochs hold their own
    copy of the dataset and would never see an epoch set on it. A bare index reads epoch 0.
    ``draft`` lets large JPEGs decode at a reduced DCT scale (training only; off for exact pixels).
    """

    def __init__(
        self,
        records: list[Record],
        image_processor: Any,
        *,
        augment: bool = False,
        caption_dropout: float = 0.0,
        seed: int = 0,
        draft: bool = True,
    ) -> None:
        self.records = records
        self.image_processor = image_processor
        self.processor = fast_processor(image_processor)
        self.draft_size: tuple[int, int] | None = None
        if draft and isinstance(self.processor, FastImageProcessor):
            margin = AUGMENT_DRAFT_MARGIN if augment else 1.0
            self.draft_size = self.processor.draft_size(margin)
        self.augment = augment
        self.caption_dropout = caption_dropout
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        record = self.records[index]
        caption = record.caption or ""
        bad: list[BadRecord] = []
        loaded = load_record_images([record], strict=False, bad=bad, draft_size=self.draft_size)
        if not loaded:
            return Item(index, None, caption, bad[0].reason if bad else "unreadable image")
        image = loaded[0][1]
        if self.augment:
            image = augment_image(image, random.Random(f"{self.seed}:{epoch}:{index}"))
        pixels = self.processor([image])[0]
        if self.caption_dropout:
            rng = random.Random(f"caption:{self.seed}:{epoch}:{index}")
            caption = drop_words(caption, self.caption_dropout, rng)
        return Item(index, pixels, caption)


@dataclass
class Batch:
    """A collated batch: tensors of the good items, and the bad items' (index, reason)."""

    indices: list[int]
    pixel_values: torch.Tensor | None
    input_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    bad: list[tuple[int, str]]

    def pin_memory(self) -> Batch:
        """Return the batch with its tensors in pinned memory.

        The data loader's ``pin_memory=True`` pins what has this method and passes anything else
        through unchanged: without it a dataclass batch is never pinned, and every
        ``.to(device, non_blocking=True)`` is a synchronous copy from pageable memory.
        """
        return replace(
            self,
            pixel_values=_pinned(self.pixel_values),
            input_ids=_pinned(self.input_ids),
            attention_mask=_pinned(self.attention_mask),
        )


def _pinned(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.pin_memory()


class Collate:
    """Stack pixels and tokenize captions (truncated to the text tower's length)."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: list[Item]) -> Batch:
        good = [it for it in items if it.pixels is not None]
        bad = [(it.index, it.reason or "unreadable") for it in items if it.pixels is None]
        if not good:
            return Batch([], None, None, None, bad)
        tokens = self.tokenizer(
            [it.caption for it in good],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return Batch(
            [it.index for it in good],
            torch.stack([it.pixels for it in good]),  # type: ignore[misc]
            tokens["input_ids"],
            tokens["attention_mask"],
            bad,
        )


# --- validation pixels, decoded once -------------------------------------------------------------


class _ValidationImages(torch.utils.data.Dataset):
    """Records to uint8 pixels (float16 where the processor is not reproduced), or a reason."""

    def __init__(
        self, records: Sequence[Record], processor: FastImageProcessor | OriginalImageProcessor
    ) -> None:
        self.records = records
        self.processor = processor

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        bad: list[BadRecord] = []
        # No draft: validation scores the model on the pixels search will give it.
        loaded = load_record_images([self.records[index]], strict=False, bad=bad)
        if not loaded:
            return index, None, bad[0].reason if bad else "unreadable image"
        image = loaded[0][1]
        if isinstance(self.processor, FastImageProcessor):
            return index, self.processor.to_uint8([image])[0], ""
        return index, self.processor([image])[0].to(torch.float16), ""


def choose_validation(records: Sequence[Record], limit: int, seed: int) -> list[Record]:
    """Return a seeded choice of at most ``limit`` records, in manifest order.

    Manifest order, because the in-batch protocol cuts consecutive batches: the whole split, when
    it fits, is then scored exactly as ``evaluate_model`` scores it.
    """
    if limit < 1:
        raise InvalidInputError("the validation limit must be at least 1")
    if len(records) <= limit:
        return list(records)
    chosen = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in chosen]


@dataclass
class ValidationPixels:
    """The validation subset's preprocessed pixels, decoded once and kept for every epoch.

    ``pixels`` is uint8 ``[n, 3, H, W]`` after resize and crop (normalised per batch on the
    model's device by the fast processor's table, so the model input equals the processor's bit
    for bit), or float16 model input when the processor's config is not reproduced. ``records``
    are the kept records in the order of ``pixels``; ``bad`` the ones whose image failed.
    """

    records: list[Record]
    pixels: torch.Tensor
    processor: FastImageProcessor | None
    bad: list[BadRecord]

    @classmethod
    def build(
        cls,
        records: Sequence[Record],
        image_processor: Any,
        *,
        limit: int = DEFAULT_VALIDATION_LIMIT,
        seed: int = 0,
        num_workers: int = 0,
        batch_size: int = 64,
        strict: bool = False,
    ) -> ValidationPixels:
        """Decode and preprocess a seeded choice of ``limit`` records in data-loader workers.

        Unreadable images go to ``bad`` (or raise when ``strict``), as in ``evaluate_model``.
        """
        chosen = choose_validation(records, limit, seed)
        # Exact resize (no reducing gap): validation must see the processor's own pixels.
        processor = fast_processor(image_processor, reducing_gap=None)
        loader = torch.utils.data.DataLoader(
            _ValidationImages(chosen, processor),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=list,  # items as they are: the loop below sorts good from bad
        )
        kept: list[Record] = []
        tensors: list[torch.Tensor] = []
        bad: list[BadRecord] = []
        for items in loader:
            for index, pixels, reason in items:
                record = chosen[index]
                if pixels is None:
                    if strict:
                        raise ImageDecodeError(reason, record=record.image_id)
                    log.warning("skipping %s: %s", record.image_id, reason)
                    bad.append(BadRecord(record.image_id, reason))
                    continue
                kept.append(record)
                tensors.append(pixels)
        if not tensors:
            raise InvalidInputError("no readable validation images")
        cache = cls(
            kept,
            torch.stack(tensors),
            processor if isinstance(processor, FastImageProcessor) else None,
            bad,
        )
        log.info(
            "validation pixels: %d of %d records (%d unreadable), %.1f MB in memory",
            len(kept),
            len(records),
            len(bad),
            cache.nbytes / 1e6,
        )
        return cache

    @property
    def nbytes(self) -> int:
        """Bytes the cached pixels hold."""
        return self.pixels.numel() * self.pixels.element_size()

    def batches(self, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
        """Yield float32 model input on ``device``, ``batch_size`` images at a time, in order."""
        for start in range(0, len(self.records), batch_size):
            chunk = self.pixels[start : start + batch_size].to(device, non_blocking=True)
            if self.processor is not None:
                yield self.processor.normalize(chunk)
            else:
                yield chunk.float()

    def encode_images(self, encoder: TorchEncoder, batch_size: int = IN_BATCH_SIZE) -> np.ndarray:
        """Encode the cached pixels to ``[n, dim]`` unit vectors, as ``encoder.encode_images``."""
        model = encoder.model
        chunks = []
        with _eval_mode(model), torch.inference_mode():
            for pixel_values in self.batches(batch_size, encoder.device):
                features = model.get_image_features(pixel_values=pixel_values)
                chunks.append(pooled(features).float().cpu().numpy())
        return normalize(np.concatenate(chunks))

    def metrics(self, encoder: TorchEncoder, batch_size: int = IN_BATCH_SIZE) -> dict[str, Any]:
        """Return full-pool R@k both ways and the in-batch table, as ``evaluate_model`` reports.

        The same metric functions, record order and rounding as ``evaluate_model``; only the
        image vectors come from the cache. Raises ``InvalidInputError`` without captions.
        """
        captions = [record.caption for record in self.records]
        groups = caption_groups(captions)
        captioned = np.flatnonzero(groups >= 0)
        if captioned.size == 0:
            raise InvalidInputError("no captioned images to evaluate: retrieval needs captions")
        images = self.encode_images(encoder, batch_size)
        texts = encoder.encode_texts([captions[i] or "" for i in captioned], batch_size)
        texts = normalize(texts)
        report: dict[str, Any] = {
            "in_batch": in_batch_mrr(
                images[captioned], texts, groups[captioned], batch_size=batch_size
            ),
        }
        report.update(full_pool_metrics(images, texts, captions))
        return _rounded(report)


def _rounded(value: Any) -> Any:
    """Round floats to 6 places, as the evaluation report does."""
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return round(value, 6) if isinstance(value, float) else value
