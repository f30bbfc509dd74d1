"""Training data: captioned records as (pixels, caption) pairs, with light seeded augmentation.

Images go through the model's own image processor, so training sees exactly what the encoder
sees at search time. Unreadable images are not fatal: the item comes back marked bad (with the
reason) and the loop skips and reports it, unless the run is strict.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageEnhance

from medsearch.data.images import load_record_images
from medsearch.data.manifest import BadRecord, Record


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


@dataclass
class Item:
    """One loaded pair, or a bad record's reason (``pixels`` is then ``None``)."""

    index: int
    pixels: torch.Tensor | None
    caption: str
    reason: str | None = None


class PairDataset(torch.utils.data.Dataset):
    """Records as image-caption pairs; augmentation is seeded per (seed, epoch, index)."""

    def __init__(
        self,
        records: list[Record],
        image_processor: Any,
        *,
        augment: bool = False,
        caption_dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.records = records
        self.image_processor = image_processor
        self.augment = augment
        self.caption_dropout = caption_dropout
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch, so augmentation differs per epoch but repeats on a resumed run."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Item:
        record = self.records[index]
        caption = record.caption or ""
        bad: list[BadRecord] = []
        loaded = load_record_images([record], strict=False, bad=bad)
        if not loaded:
            return Item(index, None, caption, bad[0].reason if bad else "unreadable image")
        image = loaded[0][1]
        if self.augment:
            image = augment_image(image, random.Random(f"{self.seed}:{self.epoch}:{index}"))
        pixels = self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
        if self.caption_dropout:
            rng = random.Random(f"caption:{self.seed}:{self.epoch}:{index}")
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
