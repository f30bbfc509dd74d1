"""Training pairs and validation pixels: dropout repeats per seed, pixels are the processor's own,
batches pin, and cached validation scores as evaluate_model does."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data._utils.pin_memory import pin_memory

import medsearch.train.data as data_module
from medsearch.data.images import load_image
from medsearch.data.manifest import Record, read_manifest
from medsearch.errors import ImageDecodeError, InvalidInputError
from medsearch.evaluate import evaluate_model
from medsearch.model.encoder import TorchEncoder
from medsearch.model.preprocess import FastImageProcessor
from medsearch.model.tiny import TinyClipSpec, build_tiny_clip, tiny_image_processor
from medsearch.train.data import (
    Batch,
    Collate,
    PairDataset,
    ValidationPixels,
    choose_validation,
    drop_words,
)

CAPTION = "Axial CT of the chest shows a 2 cm nodule in the right lower lobe."


def test_given_rate_when_words_dropped_then_half_the_captions_shorten_to_their_own_words() -> None:
    rng = random.Random(0)
    outputs = [drop_words(CAPTION, 0.4, rng) for _ in range(2000)]
    whole = sum(o == CAPTION for o in outputs) / len(outputs)
    assert 0.45 < whole < 0.6  # half untouched (plus the rare subset that keeps every word)
    words = CAPTION.split()
    for output in outputs:
        kept = output.split()
        assert kept, "never empty"
        # a subsequence of the caption's words, in their order
        it = iter(words)
        assert all(w in it for w in kept), output
    shortened = [len(o.split()) for o in outputs if o != CAPTION]
    assert 0.5 * len(words) < sum(shortened) / len(shortened) < 0.7 * len(words)


def test_given_no_rate_or_one_word_when_dropped_then_unchanged() -> None:
    rng = random.Random(0)
    assert all(drop_words(CAPTION, 0.0, rng) == CAPTION for _ in range(50))
    assert all(drop_words("effusion", 0.9, rng) == "effusion" for _ in range(50))


def test_given_dataset_with_dropout_when_read_twice_then_same_captions_per_epoch(
    synth_corpus: Path,
) -> None:
    records = [r for r in read_manifest(synth_corpus) if r.caption][:40]
    processor = tiny_image_processor(TinyClipSpec())

    def captions(epoch: int) -> list[str]:
        dataset = PairDataset(records, processor, caption_dropout=0.5, seed=3)
        return [dataset[(i, epoch)].caption for i in range(len(records))]

    first = captions(0)
    assert first == captions(0)  # a resumed run sees the same captions
    assert first != captions(1)  # another epoch sees other subsets
    assert sum(c != r.caption for c, r in zip(first, records, strict=True)) >= 10


# --- the fast data path ---------------------------------------------------------------------------


def _validation(synth_corpus: Path) -> list[Record]:
    return [r for r in read_manifest(synth_corpus) if r.split == "validation"]


def test_given_dataset_without_augmentation_then_pixels_are_the_processors_own(
    synth_corpus: Path,
) -> None:
    records = [r for r in read_manifest(synth_corpus) if r.caption][:8]
    processor = tiny_image_processor(TinyClipSpec())
    dataset = PairDataset(records, processor)
    assert isinstance(dataset.processor, FastImageProcessor)
    assert dataset.draft_size == (64, 64)
    assert PairDataset(records, processor, augment=True).draft_size == (80, 80)
    for i, record in enumerate(records):
        image = load_image(record.image)
        expected = processor(images=[image], return_tensors="pt")["pixel_values"][0]
        assert torch.equal(dataset[i].pixels, expected)


def test_given_unreadable_image_when_read_then_item_marked_bad_and_collated_aside(
    synth_corpus: Path, tmp_path: Path
) -> None:
    records = [r for r in read_manifest(synth_corpus) if r.caption][:3]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xffnot a jpeg")
    records[1] = replace(records[1], image=str(broken))
    bundle = build_tiny_clip([r.caption or "" for r in records])
    dataset = PairDataset(records, bundle.image_processor)
    items = [dataset[i] for i in range(3)]
    assert items[1].pixels is None and items[1].reason
    batch = Collate(bundle.tokenizer, bundle.max_text_length)(items)
    assert batch.indices == [0, 2] and [i for i, _ in batch.bad] == [1]
    assert batch.pixel_values is not None and batch.pixel_values.shape == (2, 3, 64, 64)


def test_given_loader_with_pin_memory_when_batch_pinned_then_its_tensors_go_through_pinning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a batch (pinning itself needs a GPU; the loader's pin step is called directly)
    batch = Batch([0, 1], torch.zeros(2, 3, 4, 4), torch.ones(2, 5), torch.ones(2, 5), [(2, "x")])
    pinned: list[torch.Tensor] = []

    def pin(tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is not None:
            pinned.append(tensor)
        return tensor

    monkeypatch.setattr(data_module, "_pinned", pin)
    # When the loader's pin_memory step meets it
    out = pin_memory(batch)
    # Then it is still a Batch, every tensor was pinned, and the bookkeeping is kept
    assert isinstance(out, Batch) and out.indices == [0, 1] and out.bad == [(2, "x")]
    assert [id(t) for t in pinned] == [
        id(batch.pixel_values),
        id(batch.input_ids),
        id(batch.attention_mask),
    ]
    assert Batch([], None, None, None, [(0, "bad")]).pin_memory().pixel_values is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a GPU")
def test_given_cuda_when_loader_pins_then_batch_tensors_are_pinned(synth_corpus: Path) -> None:
    records = [r for r in read_manifest(synth_corpus) if r.caption][:4]
    bundle = build_tiny_clip([r.caption or "" for r in records])
    loader = torch.utils.data.DataLoader(
        PairDataset(records, bundle.image_processor),
        batch_size=4,
        collate_fn=Collate(bundle.tokenizer, bundle.max_text_length),
        pin_memory=True,
    )
    batch = next(iter(loader))
    assert batch.pixel_values.is_pinned() and batch.input_ids.is_pinned()


def test_given_validation_split_when_cached_then_metrics_equal_evaluate_model(
    synth_corpus: Path,
) -> None:
    records = _validation(synth_corpus)
    bundle = build_tiny_clip([r.caption or "" for r in read_manifest(synth_corpus) if r.caption])
    encoder = TorchEncoder(bundle, device="cpu")
    # When the whole split fits under the limit
    cache = ValidationPixels.build(records, bundle.image_processor, num_workers=1)
    # Then the cached pixels are the processor's, and the report is evaluate_model's
    assert cache.records == records and cache.bad == []
    assert cache.pixels.dtype == torch.uint8
    assert cache.nbytes == len(records) * 3 * 64 * 64
    expected = bundle.image_processor(
        images=[load_image(r.image) for r in records], return_tensors="pt"
    )["pixel_values"]
    assert torch.equal(torch.cat(list(cache.batches(4, torch.device("cpu")))), expected)
    report = evaluate_model(encoder, records)
    assert cache.metrics(encoder) == {
        key: report[key] for key in ("text_to_image", "image_to_text", "in_batch")
    }
    np.testing.assert_allclose(
        cache.encode_images(encoder), encoder.encode_images([load_image(r.image) for r in records])
    )


def test_given_limit_when_cached_then_seeded_subset_in_manifest_order(synth_corpus: Path) -> None:
    records = [r for r in read_manifest(synth_corpus) if r.caption]
    first = choose_validation(records, 10, seed=1)
    assert first == choose_validation(records, 10, seed=1)
    assert first != choose_validation(records, 10, seed=2)
    order = {r.image_id: i for i, r in enumerate(records)}
    assert [order[r.image_id] for r in first] == sorted(order[r.image_id] for r in first)
    cache = ValidationPixels.build(records, tiny_image_processor(TinyClipSpec()), limit=10, seed=1)
    assert cache.records == first and cache.pixels.shape == (10, 3, 64, 64)
    with pytest.raises(InvalidInputError):
        choose_validation(records, 0, seed=1)


def test_given_unreadable_validation_image_when_cached_then_reported_or_raised_when_strict(
    synth_corpus: Path, tmp_path: Path
) -> None:
    records = _validation(synth_corpus)[:4]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    records[2] = replace(records[2], image=str(broken))
    processor = tiny_image_processor(TinyClipSpec())
    cache = ValidationPixels.build(records, processor)
    assert [b.image_id for b in cache.bad] == [records[2].image_id]
    assert cache.records == [records[0], records[1], records[3]]
    with pytest.raises(ImageDecodeError):
        ValidationPixels.build(records, processor, strict=True)
