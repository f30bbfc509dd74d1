"""A fast CLIP image preprocessor: the model's own image processor config, in fewer, cheaper steps.

transformers' PIL image processor converts every image to numpy, back to PIL for the resize, then
rescales in float64 and normalises in a second float32 pass: about 9 ms an 800x600 image, which
caps a data-loader worker near 100 images/s. The same output comes from one Pillow resize, one
Pillow crop and one table look-up per pixel (``uint8 -> float32``, per channel), the table being
built with the very numpy operations transformers runs, so every value of the output is equal bit
for bit to the original's on any RGB image with an aspect ratio within :data:`MAX_ASPECT`.

Two things the original does not do:

- **Bounded aspect ratio.** A resize to the shortest edge blows a long thin image up in
  proportion: a 100000x1 strip would become 22,400,000x224 pixels (15 GB) before the crop. The
  long side is first centre-cropped to :data:`MAX_ASPECT` times the short side, by the decoder's
  own :func:`~medsearch.data.images.bound_aspect` (which every decoded image has been through
  already; this repeats it for images that come from elsewhere). The crop keeps
  only the centre anyway, so beyond that ratio nothing of the output changes but a sub-pixel
  offset, and the resize buffer stays below ``MAX_ASPECT * edge**2`` pixels (3 MB at 224 px).
- **JPEG draft decoding** (:meth:`FastImageProcessor.draft_size`, used by the decoder in
  :mod:`medsearch.data.images`): the JPEG decoder scales by 1/2, 1/4 or 1/8 in the DCT when the
  image is at least twice the size asked for, before the exact resize. Those pixels are not the
  original's (the resize starts from another image), so it is for training only; evaluation and
  serving decode in full.

Only configurations this module reproduces get the fast path; :func:`fast_processor` hands any
other processor back wrapped, unchanged in behaviour.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

# Re-exported: the bound is the decoder's, and this module documents why the fast path keeps it.
from medsearch.data.images import MAX_ASPECT as MAX_ASPECT
from medsearch.data.images import bound_aspect as bound_aspect

log = logging.getLogger(__name__)

# Pillow's two-step resize (a box reduce by an integer factor, then the filter) for images this
# many times larger than the output. Measured on MedPix images scaled up, at 224 px: identical
# output below 6x (a 1344 px short side), at most 2 uint8 levels (mean 0.11) at 3000x2400, where
# it resizes 3.6x faster; a gap of 2 differs by up to 6 levels. At 64 px from MedPix's 384 px, at
# most 0.15 after normalisation (10 levels, on few pixels). ``None`` means an exact resize.
REDUCING_GAP = 3.0

ImageBatchProcessor = Callable[[Sequence[Image.Image]], torch.Tensor]


@dataclass(frozen=True)
class PreprocessConfig:
    """The steps of a CLIP image processor that the fast path reproduces, read from its config.

    ``shortest_edge`` (aspect kept) or ``resize_hw`` (exact height, width) or neither (no resize);
    ``crop_hw`` is the centre crop, so every output has the same shape.
    """

    shortest_edge: int | None
    resize_hw: tuple[int, int] | None
    crop_hw: tuple[int, int]
    resample: int
    rescale_factor: float | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None

    @property
    def output_hw(self) -> tuple[int, int]:
        """The (height, width) of every output image."""
        return self.crop_hw


def _field(value: Any, key: str) -> Any:
    """A key of a transformers size (``SizeDict`` in transformers 5, a dict before)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get(key)
    return getattr(value, key, None)


def _triple(value: Any) -> tuple[float, float, float] | None:
    if value is None:
        return None
    values = [float(v) for v in value] if isinstance(value, Sequence) else [float(value)] * 3
    return (values[0], values[1], values[2]) if len(values) == 3 else None


def preprocess_config(image_processor: Any) -> tuple[PreprocessConfig | None, str]:
    """Read the processor's config into a :class:`PreprocessConfig`, or say why it is not one.

    Only transformers' PIL backend with its own resize, crop and preprocessing steps is
    reproduced; the torchvision backend resizes differently, and a subclass may add steps.
    """
    try:
        from transformers.image_processing_backends import PilBackend
    except ImportError:  # transformers 4: the slow processors are not checked here
        return None, "transformers without the PIL image-processing backend"
    kind = type(image_processor)
    if not isinstance(image_processor, PilBackend):
        return None, f"{kind.__name__} is not transformers' PIL image processor"
    for step in ("_preprocess", "resize", "center_crop", "rescale", "normalize"):
        if getattr(kind, step) is not getattr(PilBackend, step):
            return None, f"{kind.__name__} overrides {step}"
    p: Any = image_processor  # its attributes are the config; transformers types few of them
    if getattr(p, "do_pad", None):
        return None, "padding"
    shortest_edge = resize_hw = None
    if p.do_resize:
        size = p.size
        edge, height, width = (_field(size, k) for k in ("shortest_edge", "height", "width"))
        others = [_field(size, k) for k in ("longest_edge", "max_height", "max_width")]
        if any(others):
            return None, f"resize to {size}"
        if edge and not (height or width):
            shortest_edge = int(edge)
        elif height and width and not edge:
            resize_hw = (int(height), int(width))
        else:
            return None, f"resize to {size}"
    crop_h, crop_w = _field(p.crop_size, "height"), _field(p.crop_size, "width")
    if not (p.do_center_crop and crop_h and crop_w):
        # Without a crop, outputs differ in shape and cannot be stacked; the original decides.
        return None, "no centre crop"
    mean, std = _triple(p.image_mean), _triple(p.image_std)
    if p.do_normalize and (mean is None or std is None):
        return None, "normalisation without three channel means and deviations"
    config = PreprocessConfig(
        shortest_edge=shortest_edge,
        resize_hw=resize_hw,
        crop_hw=(int(crop_h), int(crop_w)),
        resample=int(p.resample if p.resample is not None else Image.Resampling.BILINEAR),
        rescale_factor=float(p.rescale_factor) if p.do_rescale else None,
        mean=mean if p.do_normalize else None,
        std=std if p.do_normalize else None,
    )
    return config, ""


def pixel_table(config: PreprocessConfig) -> torch.Tensor:
    """Return the ``[3, 256]`` float32 table from a uint8 value to its rescaled, normalised value.

    Built with transformers' own operations and dtypes (float64 rescale, cast to float32, then
    ``(x - mean) / std`` in float32), so a look-up gives exactly the value it computes.
    """
    values = np.arange(256, dtype=np.uint8)[:, None].repeat(3, axis=1)  # [256, 3], channels last
    out: np.ndarray = values.astype(np.float32)
    if config.rescale_factor is not None:
        out = (values.astype(np.float64) * config.rescale_factor).astype(np.float32)
    if config.mean is not None and config.std is not None:
        mean = np.array(config.mean, dtype=np.float32)
        out = (out - mean) / np.array(config.std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(out.T, dtype=np.float32))


def resize_and_crop(
    image: Image.Image, config: PreprocessConfig, reducing_gap: float | None = None
) -> Image.Image:
    """Resize as the processor does (shortest edge or exact size) and centre-crop, in Pillow."""
    if config.shortest_edge is not None:
        image = bound_aspect(image)
        width, height = image.size
        edge = config.shortest_edge
        # transformers' get_resize_output_image_size: the long side is truncated, not rounded.
        if width <= height:
            size = (edge, int(edge * height / width))
        else:
            size = (int(edge * width / height), edge)
        if size != image.size:
            image = image.resize(size, resample=config.resample, reducing_gap=reducing_gap)
    elif config.resize_hw is not None:
        height, width = config.resize_hw
        if (width, height) != image.size:
            image = image.resize(
                (width, height), resample=config.resample, reducing_gap=reducing_gap
            )
    crop_h, crop_w = config.crop_hw
    width, height = image.size
    if (width, height) != (crop_w, crop_h):
        # The same offsets as transformers' centre crop; outside the image Pillow fills zeros,
        # as its padding does.
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
    return image


class FastImageProcessor:
    """Images to CLIP pixel values: Pillow resize and crop, then one table look-up per pixel.

    Picklable (no closures), so data-loader workers receive it as they receive the original.
    ``reducing_gap`` is Pillow's (see :data:`REDUCING_GAP`); ``None`` gives the original's pixels.
    """

    def __init__(self, config: PreprocessConfig, *, reducing_gap: float | None = None) -> None:
        self.config = config
        self.reducing_gap = reducing_gap
        self.table = pixel_table(config)
        # One flat table, indexed by value + 256 * channel: one gather for the whole batch.
        self._flat = self.table.reshape(-1)
        self._offsets = (torch.arange(3) * 256).view(1, 3, 1, 1)

    def to_uint8(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resize and crop to a uint8 ``[n, 3, H, W]`` tensor (4x smaller than float32 to keep)."""
        height, width = self.config.output_hw
        out = np.empty((len(images), 3, height, width), dtype=np.uint8)
        for i, image in enumerate(images):
            if image.mode != "RGB":
                image = image.convert("RGB")
            out[i] = np.asarray(resize_and_crop(image, self.config, self.reducing_gap)).transpose(
                2, 0, 1
            )
        return torch.from_numpy(out)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map uint8 ``[n, 3, H, W]`` pixels to float32 model input, on the pixels' device."""
        flat, offsets = self._flat.to(pixels.device), self._offsets.to(pixels.device)
        return flat[pixels.long() + offsets]

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Return float32 ``[n, 3, H, W]`` pixels, as ``processor(images)["pixel_values"]``."""
        return self.normalize(self.to_uint8(images))

    def draft_size(self, margin: float = 1.0) -> tuple[int, int]:
        """The (width, height) a JPEG decoder may draft down to and still feed the exact resize.

        Square, so it holds whatever EXIF orientation the decoder applies after drafting.
        ``margin`` > 1 leaves room for an augmentation crop taken before the resize.
        """
        config = self.config
        if config.shortest_edge is not None:
            side = config.shortest_edge
        elif config.resize_hw is not None:
            side = max(config.resize_hw)
        else:
            side = max(config.crop_hw)
        side = math.ceil(side * margin)
        return side, side


class OriginalImageProcessor:
    """The model's own processor behind the same call: for configurations not reproduced."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Return ``image_processor(images)["pixel_values"]`` as a float32 tensor."""
        batch = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        out = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
        return torch.as_tensor(out, dtype=torch.float32)


def fast_processor(
    image_processor: Any, *, reducing_gap: float | None = REDUCING_GAP
) -> FastImageProcessor | OriginalImageProcessor:
    """Return the fast equivalent of ``image_processor``, or the original where it differs.

    The default two-step resize is for training; pass ``reducing_gap=None`` for exact pixels.
    """
    if isinstance(image_processor, FastImageProcessor | OriginalImageProcessor):
        return image_processor
    config, reason = preprocess_config(image_processor)
    if config is None:
        log.info("image preprocessing through the model's own processor: %s", reason)
        return OriginalImageProcessor(image_processor)
    return FastImageProcessor(config, reducing_gap=reducing_gap)
