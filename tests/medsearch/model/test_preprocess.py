"""The fast preprocessor: the processor's own pixels, bounded memory, and a draft that costs little.

Tolerances are the figures bench/train_data.py measured, with a small margin.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

from medsearch.data.images import decode_image
from medsearch.model.encoder import pooled
from medsearch.model.preprocess import (
    MAX_ASPECT,
    FastImageProcessor,
    OriginalImageProcessor,
    bound_aspect,
    fast_processor,
)
from medsearch.model.tiny import TinyClipSpec, build_tiny_clip, tiny_image_processor

PROCESSORS = {
    "clip-224": CLIPImageProcessorPil(),
    "tiny-64": tiny_image_processor(TinyClipSpec()),
    "exact-size": CLIPImageProcessorPil(
        size={"height": 240, "width": 200}, crop_size={"height": 224, "width": 224}
    ),
    "no-normalize": CLIPImageProcessorPil(do_normalize=False),
    "crop-larger-than-resize": CLIPImageProcessorPil(
        size={"shortest_edge": 200}, crop_size={"height": 224, "width": 224}
    ),
}
# (width, height): landscape, portrait, square, tiny, odd sizes and 19:1 (inside MAX_ASPECT).
SIZES = [(800, 600), (600, 800), (224, 224), (5, 3), (333, 517), (1900, 100), (31, 589)]


def scan_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth shapes on a gradient plus noise, RGB: image content, not white noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = 40 + 60 * x / width + 30 * y / height
    for _ in range(5):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(1, max(width, 4) / 2), rng.uniform(1, max(height, 4) / 2)
        image = np.where(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1, image + 70, image)
    channels = [image + rng.normal(0, 6, image.shape) + shift for shift in (0, 10, -10)]
    return Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8))


def original(processor: Any, images: list[Image.Image]) -> torch.Tensor:
    return processor(images=images, return_tensors="pt")["pixel_values"]


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_given_processor_config_when_fast_without_reducing_gap_then_pixels_equal_bit_for_bit(
    name: str,
) -> None:
    processor = PROCESSORS[name]
    fast = fast_processor(processor, reducing_gap=None)
    assert isinstance(fast, FastImageProcessor)
    images = [scan_like(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    for image in images:
        expected = original(processor, [image])
        got = fast([image])
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert torch.equal(got, expected), (name, image.size)
    # Batched, and in another Pillow mode: the same values.
    gray = [im.convert("L") for im in images[:3]]
    assert torch.equal(fast(gray), original(processor, gray))


def test_given_medpix_images_when_fast_then_equal_exactly_and_close_with_reducing_gap(
    medpix_dir: Path,
) -> None:
    files = sorted((medpix_dir / "images").glob("*.jpg"))[::90]
    images = [decode_image(f.read_bytes()) for f in files]
    for name in ("clip-224", "tiny-64"):
        processor = PROCESSORS[name]
        expected = original(processor, images)
        assert torch.equal(fast_processor(processor, reducing_gap=None)(images), expected)
        # The training default resizes in two steps past 3x: measured at most 0.15 over 400
        # MedPix images at 64 px (10 uint8 levels, on few pixels), none at 224 px, where
        # MedPix's 384 px is under 3x.
        diff = (fast_processor(processor)(images) - expected).abs()
        assert float(diff.max()) <= 0.16 and float(diff.mean()) < 0.005, name


def test_given_wrong_normalisation_or_crop_then_the_equivalence_check_would_fail() -> None:
    # The test above compares values exactly; these are the mistakes it has to catch.
    processor = PROCESSORS["clip-224"]
    image = scan_like(800, 600)
    expected = original(processor, [image])
    fast = fast_processor(processor, reducing_gap=None)
    assert isinstance(fast, FastImageProcessor)
    unnormalised = fast_processor(PROCESSORS["no-normalize"], reducing_gap=None)
    assert not torch.allclose(unnormalised([image]), expected, atol=0.1)
    shifted = fast.to_uint8([image.crop((2, 0, 800, 600))])
    assert not torch.allclose(fast.normalize(shifted), expected, atol=0.1)


def test_given_config_not_reproduced_when_fast_processor_then_original_behind_same_call() -> None:
    padded = CLIPImageProcessorPil(size={"shortest_edge": 224, "longest_edge": 300})
    no_crop = CLIPImageProcessorPil(do_center_crop=False)

    class Other:
        def __call__(self, images: list[Image.Image], return_tensors: str) -> dict:
            return {"pixel_values": torch.ones(len(images), 3, 8, 8)}

    for processor in (padded, no_crop, Other()):
        wrapped = fast_processor(processor)
        assert isinstance(wrapped, OriginalImageProcessor)
    image = scan_like(300, 200)
    assert torch.equal(fast_processor(padded)([image]), original(padded, [image]))
    assert torch.equal(fast_processor(Other())([image]), torch.ones(1, 3, 8, 8))


def test_given_extreme_aspect_when_preprocessed_then_resize_bounded_and_output_normal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a 100000x1 strip: a shortest-edge resize alone would make it 22,400,000x224 (15 GB).
    strip = Image.new("RGB", (100_000, 1), (90, 120, 150))
    assert bound_aspect(strip).size == (20, 1)
    assert bound_aspect(Image.new("RGB", (3, 1000))).size == (3, 60)
    assert bound_aspect(scan_like(1900, 100)).size == (1900, 100)  # inside the bound: untouched
    sizes: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def recording(self: Image.Image, size: Any, *args: Any, **kwargs: Any) -> Image.Image:
        sizes.append(tuple(size))
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording)
    fast = fast_processor(PROCESSORS["clip-224"])
    # When it is preprocessed
    pixels = fast([strip, Image.new("RGB", (1, 100_000), (90, 120, 150))])
    # Then every resize stays within MAX_ASPECT * 224 * 224 pixels, and the output is normal.
    assert sizes and all(w * h <= MAX_ASPECT * 224 * 224 for w, h in sizes)
    assert pixels.shape == (2, 3, 224, 224) and torch.isfinite(pixels).all()


def test_given_aspect_past_the_bound_when_preprocessed_then_close_to_the_original() -> None:
    # 30:1 is still affordable for the original: the centre crop leaves it nearly unchanged.
    processor = PROCESSORS["clip-224"]
    image = scan_like(3000, 100)
    diff = fast_processor(processor, reducing_gap=None)([image]) - original(processor, [image])
    assert float(diff.abs().mean()) < 0.05


def test_given_large_jpeg_when_drafted_then_decoded_smaller_but_never_below_target() -> None:
    fast = fast_processor(PROCESSORS["clip-224"])
    assert isinstance(fast, FastImageProcessor)
    assert fast.draft_size() == (224, 224)
    assert fast.draft_size(1.25) == (280, 280)
    data = jpeg(scan_like(800, 600))
    assert decode_image(data).size == (800, 600)  # no draft: the public behaviour
    assert decode_image(data, draft_size=(224, 224)).size == (400, 300)
    assert decode_image(data, draft_size=(64, 64)).size == (100, 75)
    assert decode_image(jpeg(scan_like(400, 300)), draft_size=(224, 224)).size == (400, 300)
    png = io.BytesIO()
    scan_like(800, 600).save(png, "PNG")
    assert decode_image(png.getvalue(), draft_size=(224, 224)).size == (800, 600)


def _embed(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.nn.functional.normalize(pooled(model.get_image_features(pixel_values=pixels)))


def _random_vit() -> CLIPModel:
    vision = {
        "image_size": 224,
        "patch_size": 32,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1},
        vision_config=vision,
        projection_dim=64,
    )
    return CLIPModel(config).eval()


def test_given_draft_decode_when_embedded_then_cosine_to_original_path_near_one() -> None:
    # Measured on MedPix scaled to 800x600: min cosine 0.99999 (224 px ViT), 0.9988 (tiny 64 px)
    # against 0.95 and 0.79 between different images; on these synthetic scans 0.9947 (tiny).
    tiny = build_tiny_clip(["a chest ct", "a knee mri"])
    cases = [
        (_random_vit(), PROCESSORS["clip-224"], 0.9999),
        (tiny.model, tiny.image_processor, 0.99),
    ]
    data = [jpeg(scan_like(800, 600, seed=s)) for s in range(6)]
    for model, processor, floor in cases:
        fast = fast_processor(processor)
        assert isinstance(fast, FastImageProcessor)
        old = original(processor, [decode_image(d) for d in data])
        new = fast([decode_image(d, draft_size=fast.draft_size()) for d in data])
        assert float((new - old).abs().max()) > 0  # the draft does change pixels
        old_vectors = _embed(model, old)
        cosines = (old_vectors * _embed(model, new)).sum(1)
        assert float(cosines.min()) >= floor
        # Different images are much further apart, so the floor is not met by any vector pair.
        between = (old_vectors @ old_vectors.T)[~torch.eye(len(data), dtype=torch.bool)]
        assert float(between.max()) < floor
