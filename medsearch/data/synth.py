"""A synthetic captioned corpus whose captions can be recovered from the pixels.

Every image is rendered from a handful of attributes, and its caption is written from the same
attributes in varied, ImageCLEF-like wording, so a small CLIP trained from scratch on a few CPU
minutes can learn the mapping, and retrieval quality can be judged from the attributes alone:

- ``modality``: X-ray (grayscale projection: bright bone, dark lungs, no frame), CT (round
  reconstruction disc with a scanner table under the body), MRI (bright fat and fluid, dark bone,
  coil shading, texture and a faint blue tint) or ultrasound (a speckled fan from the top edge).
- ``body_region``: chest, head, abdomen, knee, hand or pelvis, each with its own coarse anatomy.
- ``finding``: nodule (``size`` small/large with a size in cm, ``count`` single/two/multiple),
  fracture, effusion (``size`` small/large) or none, with ``laterality`` left/right.

Laterality follows the radiological convention throughout: the patient's left is the image's
right. Trunk regions carry a laterality only with a finding (on that side); the knee and the hand
always have one (the limb imaged), shown by the mirrored anatomy (fibula, thumb) and by a finding
on that side.

The query set (``queries.jsonl``) is judged from attributes over the whole corpus, so captionless
images count as relevant too; every query has at least one fully relevant image in the test split,
and an evaluation keeps only the judgments of the split it evaluates. Grades: 2 when every query
attribute matches; 1 when region and finding match and exactly one of modality, laterality, size
or count does not (only for queries with three or more attributes). ``relevant`` lists every image
with a grade, ``relevance`` holds the grades, and ``attributes`` records what the query asks for
(readers ignore it).

Contrast is chosen so findings stand apart within each modality: lesions are bright (hyperechoic
on ultrasound) inside a dark halo, fluid is dark on CT and ultrasound but bright on X-ray and MRI,
and a fracture is a lucent gap with a displaced fragment and surrounding swelling (bright oedema
on MRI). Findings are drawn large enough for a small model to see them at 64 px.

Captions are sentences, or (``TERSE_FRACTION`` of them) short phrases such as "Right rib
fracture, CT."; half of the phrases do not name the modality, as real captions often do not. A
caption never contradicts its image: every attribute it names is the image's own.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medsearch.data.manifest import Record, write_manifest
from medsearch.errors import ConfigError

log = logging.getLogger(__name__)

MODALITIES = ("X-ray", "CT", "MRI", "ultrasound")
REGIONS = ("chest", "head", "abdomen", "knee", "hand", "pelvis")
FINDINGS = ("nodule", "fracture", "effusion", "none")
FINDING_WEIGHTS = (0.35, 0.2, 0.2, 0.25)
LIMBS = ("knee", "hand")
COUNTS = ("single", "two", "multiple")
SIZES = ("small", "large")

# Captions written as a short phrase (see _terse_caption); the rest are sentences.
TERSE_FRACTION = 0.35

# Attributes that, when a query names them, must match for any relevance at all.
_PRIMARY = ("body_region", "finding")


@dataclass(frozen=True)
class SynthConfig:
    """Size, seed and split of a synthetic corpus (the defaults are the demo corpus)."""

    n: int = 2000
    seed: int = 0
    captionless_fraction: float = 0.1
    image_size: int = 64
    train_fraction: float = 0.8
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    n_queries: int = 80

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"synth: n must be at least 1, got {self.n}")
        if not 0.0 <= self.captionless_fraction <= 1.0:
            raise ConfigError(
                f"synth: captionless fraction must be in [0, 1], got {self.captionless_fraction}"
            )
        if not 16 <= self.image_size <= 1024:
            raise ConfigError(f"synth: image size must be 16-1024 pixels, got {self.image_size}")
        fractions = (self.train_fraction, self.validation_fraction, self.test_fraction)
        if min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
            raise ConfigError(f"synth: split fractions must be >= 0 and sum to 1, got {fractions}")
        if self.n_queries < 0:
            raise ConfigError(f"synth: n_queries must be >= 0, got {self.n_queries}")


@dataclass(frozen=True)
class Attributes:
    """What an image shows: the ground truth for its caption, its pixels and query relevance."""

    modality: str
    body_region: str
    finding: str
    laterality: str | None = None
    size: str | None = None
    count: str | None = None
    size_cm: float | None = None

    def metadata(self) -> dict[str, Any]:
        """Return the manifest metadata (absent attributes are left out)."""
        values = {
            "modality": self.modality,
            "body_region": self.body_region,
            "finding": self.finding,
            "laterality": self.laterality,
            "size": self.size,
            "count": self.count,
            "size_cm": self.size_cm,
        }
        return {k: v for k, v in values.items() if v is not None}


def sample_attributes(rng: np.random.Generator) -> Attributes:
    """Draw one image's attributes (findings weighted so that 'none' is a minority)."""
    modality = str(rng.choice(MODALITIES))
    region = str(rng.choice(REGIONS))
    finding = str(rng.choice(FINDINGS, p=FINDING_WEIGHTS))
    side = str(rng.choice(("left", "right")))
    # Trunk regions have a side only through a finding; a limb always is a left or right one.
    laterality = None if finding == "none" and region not in LIMBS else side
    size = count = None
    size_cm = None
    if finding == "nodule":
        size = str(rng.choice(SIZES))
        count = str(rng.choice(COUNTS, p=(0.5, 0.25, 0.25)))
        low, high = (0.5, 1.5) if size == "small" else (3.5, 6.0)
        size_cm = round(float(rng.uniform(low, high)), 1)
    elif finding == "effusion":
        size = str(rng.choice(SIZES))
    return Attributes(modality, region, finding, laterality, size, count, size_cm)


# --- rendering -----------------------------------------------------------------------------------

# Tissue intensities per modality (0 black .. 1 white): the same anatomy looks different in each.
_PALETTES: dict[str, dict[str, float]] = {
    "X-ray": {
        "air": 0.03, "soft": 0.32, "lung": 0.1, "bone": 0.92, "fluid": 0.62, "lesion": 0.8,
        "organ": 0.36, "gas": 0.08, "brain": 0.38, "csf": 0.36, "edema": 0.12,
    },
    "CT": {
        "air": 0.0, "soft": 0.42, "lung": 0.04, "bone": 1.0, "fluid": 0.24, "lesion": 0.74,
        "organ": 0.56, "gas": 0.0, "brain": 0.46, "csf": 0.2, "edema": 0.1,
    },
    "MRI": {
        "air": 0.0, "soft": 0.36, "lung": 0.03, "bone": 0.08, "fluid": 0.97, "lesion": 0.8,
        "organ": 0.28, "gas": 0.0, "brain": 0.52, "csf": 0.88, "edema": 0.95,
    },
    "ultrasound": {
        "air": 0.0, "soft": 0.45, "lung": 0.22, "bone": 0.95, "fluid": 0.02, "lesion": 0.9,
        "organ": 0.55, "gas": 0.8, "brain": 0.4, "csf": 0.05, "edema": 0.25,
    },
}  # fmt: skip

Layer = tuple[np.ndarray, str]


@dataclass
class _Canvas:
    """Pixel coordinates (x right, y down, both in [-1, 1] before jitter) and painted layers."""

    x: np.ndarray
    y: np.ndarray
    pixels: int
    layers: list[Layer] = field(default_factory=list)

    def _edge(self, signed: np.ndarray) -> np.ndarray:
        # Signed distance (normalised units, positive inside) → anti-aliased coverage of ~1 pixel.
        return np.clip(signed * self.pixels / 2 + 0.5, 0.0, 1.0)

    def _local(self, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = self.x - cx, self.y - cy
        c, s = math.cos(angle), math.sin(angle)
        return dx * c + dy * s, -dx * s + dy * c

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
        """Coverage of a filled ellipse."""
        u, v = self._local(cx, cy, angle)
        d = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
        return self._edge((1.0 - d) * min(rx, ry))

    def rect(self, cx: float, cy: float, hw: float, hh: float, angle: float = 0.0) -> np.ndarray:
        """Coverage of a filled, rotated rectangle (half width ``hw``, half height ``hh``)."""
        u, v = self._local(cx, cy, angle)
        return self._edge(hw - np.abs(u)) * self._edge(hh - np.abs(v))

    def ring(self, cx: float, cy: float, rx: float, ry: float, width: float) -> np.ndarray:
        """Coverage of an elliptical ring of the given thickness."""
        outer = self.ellipse(cx, cy, rx, ry)
        inner = self.ellipse(cx, cy, rx - width, ry - width)
        return np.clip(outer - inner, 0.0, 1.0)

    def paint(self, mask: np.ndarray, tissue: str) -> None:
        """Add a layer over everything painted so far."""
        self.layers.append((mask, tissue))


@dataclass(frozen=True)
class _Sites:
    """Where a region puts findings on a side: lesion box, fractured bone, effusion shape."""

    lesion: tuple[float, float, float, float]  # centre x, centre y, half extent x, half extent y
    fracture: tuple[float, float, float, float]  # centre x, centre y, bone angle, bone half width
    effusion: Callable[[_Canvas, str], np.ndarray]


def _chest(c: _Canvas, side: int, limb: int) -> _Sites:
    c.paint(c.ellipse(0, 0.05, 0.9, 0.82), "soft")
    for sx in (-1, 1):
        c.paint(c.ellipse(sx * 0.42, 0.0, 0.3, 0.58), "lung")
    c.paint(c.ellipse(0.1, 0.25, 0.27, 0.26), "soft")  # heart, to the patient's left
    c.paint(c.rect(0, 0.05, 0.05, 0.8), "bone")
    for sx in (-1, 1):
        c.paint(c.rect(sx * 0.36, -0.68, 0.3, 0.035, sx * 0.25), "bone")  # clavicles
        for ry in (-0.3, 0.05, 0.4):
            c.paint(c.rect(sx * 0.45, ry, 0.3, 0.03, -sx * 0.3), "bone")  # ribs

    def effusion(cv: _Canvas, size: str) -> np.ndarray:
        level = 0.2 if size == "small" else -0.15
        lung = cv.ellipse(side * 0.42, 0.0, 0.31, 0.6)
        meniscus = cv._edge(cv.y - level - 0.25 * np.abs(cv.x - side * 0.42))
        return lung * meniscus

    return _Sites((side * 0.42, -0.05, 0.16, 0.3), (side * 0.45, 0.05, -side * 0.3, 0.05), effusion)


def _head(c: _Canvas, side: int, limb: int) -> _Sites:
    c.paint(c.ellipse(0, 0, 0.72, 0.86), "soft")
    c.paint(c.ellipse(0, 0, 0.64, 0.78), "brain")
    c.paint(c.ring(0, 0, 0.66, 0.8, 0.08), "bone")
    for sx in (-1, 1):
        c.paint(c.ellipse(sx * 0.1, -0.05, 0.06, 0.2, sx * 0.3), "csf")  # ventricles

    def effusion(cv: _Canvas, size: str) -> np.ndarray:
        width = 0.15 if size == "small" else 0.28
        crescent = cv.ellipse(0, 0, 0.58, 0.72) - cv.ellipse(side * width, 0, 0.58, 0.72)
        return np.clip(crescent, 0, 1) * cv._edge(side * cv.x)

    return _Sites((side * 0.32, 0.0, 0.14, 0.35), (side * 0.62, -0.3, side * 1.2, 0.05), effusion)


def _abdomen(c: _Canvas, side: int, limb: int) -> _Sites:
    c.paint(c.ellipse(0, 0.05, 0.92, 0.72), "soft")
    c.paint(c.ellipse(-0.38, -0.12, 0.36, 0.34), "organ")  # liver, on the patient's right
    c.paint(c.ellipse(0.45, -0.2, 0.18, 0.14), "organ")  # spleen
    for sx in (-1, 1):
        c.paint(c.ellipse(sx * 0.32, 0.32, 0.1, 0.16), "organ")  # kidneys
        c.paint(c.rect(sx * 0.8, -0.3, 0.14, 0.03, sx * 0.6), "bone")  # lower ribs
    c.paint(c.ellipse(0, 0.52, 0.12, 0.11), "bone")  # vertebra
    for gx, gy in ((0.1, 0.0), (0.22, 0.18), (-0.05, 0.25)):
        c.paint(c.ellipse(gx, gy, 0.06, 0.05), "gas")

    def effusion(cv: _Canvas, size: str) -> np.ndarray:
        rx, ry = (0.18, 0.14) if size == "small" else (0.3, 0.26)
        return cv.ellipse(side * 0.55, 0.1, rx, ry, side * 0.4)

    return _Sites((side * 0.4, 0.05, 0.2, 0.2), (side * 0.8, -0.3, side * 0.6, 0.04), effusion)


def _knee(c: _Canvas, side: int, limb: int) -> _Sites:
    c.paint(c.rect(0, 0, 0.5, 1.1), "soft")
    c.paint(c.rect(0, -0.55, 0.19, 0.5), "bone")  # femur
    c.paint(c.ellipse(0, -0.1, 0.33, 0.14), "bone")  # condyles
    c.paint(c.ellipse(0, 0.12, 0.31, 0.08), "bone")  # tibial plateau
    c.paint(c.rect(0, 0.55, 0.16, 0.45), "bone")  # tibia
    c.paint(c.rect(limb * 0.32, 0.5, 0.055, 0.4), "bone")  # fibula: lateral, so it mirrors
    c.paint(c.rect(0, 0.01, 0.3, 0.02), "soft")  # joint space

    def effusion(cv: _Canvas, size: str) -> np.ndarray:
        ry = 0.2 if size == "small" else 0.34
        return cv.ellipse(side * 0.3, -0.35, 0.16, ry)

    return _Sites((side * 0.15, -0.35, 0.06, 0.2), (side * 0.2, 0.13, 0.0, 0.1), effusion)


def _hand(c: _Canvas, side: int, limb: int) -> _Sites:
    c.paint(c.rect(0, 0.5, 0.4, 0.38), "soft")  # palm
    fingers = (-0.27, -0.09, 0.09, 0.27)
    for fx in fingers:
        c.paint(c.rect(fx, -0.32, 0.075, 0.46), "soft")
    c.paint(c.rect(-limb * 0.5, 0.18, 0.08, 0.3, limb * 0.7), "soft")  # thumb on the lateral side
    for fx in fingers:
        c.paint(c.rect(fx, 0.45, 0.035, 0.3), "bone")  # metacarpals
        for py, ph in ((-0.05, 0.12), (-0.35, 0.12), (-0.62, 0.09)):
            c.paint(c.rect(fx, py, 0.03, ph), "bone")  # phalanges
    c.paint(c.rect(-limb * 0.46, 0.22, 0.03, 0.24, limb * 0.7), "bone")

    def effusion(cv: _Canvas, size: str) -> np.ndarray:
        r = 0.13 if size == "small" else 0.2
        return cv.ellipse(side * 0.27, 0.12, r, r * 1.3)

    return _Sites((side * 0.27, 0.3, 0.05, 0.25), (side * 0.27, 0.45, 0.0, 0.06), effusion)


def _pelvis(c: _Canvas, side: int, limb: int) -> _Sites:
    c.paint(c.ellipse(0, 0, 0.95, 0.8), "soft")
    for sx in (-1, 1):
        c.paint(c.ring(sx * 0.42, -0.3, 0.36, 0.3, 0.09), "bone")  # iliac wings
        c.paint(c.ring(sx * 0.2, 0.45, 0.17, 0.13, 0.06), "bone")  # obturator rings
        c.paint(c.ellipse(sx * 0.66, 0.3, 0.14, 0.14), "bone")  # femoral heads
        c.paint(c.rect(sx * 0.74, 0.62, 0.08, 0.25, sx * 0.3), "bone")  # femoral necks
    c.paint(c.rect(0, -0.25, 0.12, 0.3), "bone")  # sacrum

    def effusion(cv: _Canvas, size: str) -> np.ndarray:
        r = 0.24 if size == "small" else 0.34
        return np.clip(
            cv.ellipse(side * 0.66, 0.3, r, r) - cv.ellipse(side * 0.66, 0.3, 0.15, 0.15), 0, 1
        )

    return _Sites((side * 0.42, -0.3, 0.15, 0.12), (side * 0.74, 0.6, side * 0.3, 0.09), effusion)


_REGION_PAINTERS: dict[str, Callable[[_Canvas, int, int], _Sites]] = {
    "chest": _chest,
    "head": _head,
    "abdomen": _abdomen,
    "knee": _knee,
    "hand": _hand,
    "pelvis": _pelvis,
}


def _paint_finding(c: _Canvas, attrs: Attributes, sites: _Sites, rng: np.random.Generator) -> None:
    # Findings are drawn large and with a rim of contrast, so that a small model sees them at
    # 64 px: tried at half these sizes, a model trained for minutes learned modality and region
    # but could not tell a finding from a normal image (4-way accuracy under 0.5).
    if attrs.finding == "nodule":
        cx, cy, ex, ey = sites.lesion
        count = {"single": 1, "two": 2}.get(attrs.count or "single") or int(rng.integers(3, 5))
        radius = 0.13 + 0.05 * (attrs.size_cm or 1.0)
        for i in range(count):
            if count == 1:
                dx, dy = rng.uniform(-ex, ex) * 0.3, rng.uniform(-ey, ey) * 0.3
            else:  # spread along the box so several lesions stay apart
                dy = -1.2 * ey + 2.4 * ey * (i + 0.5) / count
                dx = rng.uniform(-ex, ex) * 0.5
            r = radius * (1.0 if i == 0 else rng.uniform(0.8, 1.0))
            # A dark halo around a bright lesion: it stands out from any surrounding tissue.
            c.paint(c.ellipse(cx + dx, cy + dy, r + 0.05, r + 0.05), "air")
            c.paint(c.ellipse(cx + dx, cy + dy, r, r), "lesion")
    elif attrs.finding == "fracture":
        cx, cy, angle, half = sites.fracture
        cross = angle + math.pi / 2 + rng.uniform(-0.3, 0.3)  # oblique gap across the bone
        # Swelling and marrow oedema around the break (dark on X-ray and CT, bright on MRI).
        c.paint(c.ellipse(cx, cy, 0.3, 0.3), "edema")
        c.paint(c.rect(cx, cy, 0.3, 0.07, cross), "air")
        # Displaced fragment: a step-off of the bone beyond the gap.
        shift = 0.18 * rng.choice((-1, 1))
        fx = cx + 0.14 * math.cos(angle) - shift * math.sin(angle)
        fy = cy + 0.14 * math.sin(angle) + shift * math.cos(angle)
        c.paint(c.rect(fx, fy, 0.12, max(half, 0.08), angle + rng.uniform(-0.3, 0.3)), "bone")
    elif attrs.finding == "effusion":
        c.paint(sites.effusion(c, attrs.size or "small"), "fluid")
        # and a collection at the finding site, sized by the effusion's size
        cx, cy, _, _ = sites.lesion
        rx, ry = (0.3, 0.42) if attrs.size == "large" else (0.2, 0.28)
        c.paint(c.ellipse(cx, cy, rx, ry), "fluid")


def _finish(attrs: Attributes, c: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Composite the layers in the modality's palette and add the modality's frame and noise."""
    palette = _PALETTES[attrs.modality]
    size = c.pixels
    image = np.full((size, size), palette["air"], dtype=np.float64)
    for mask, tissue in c.layers:
        image += (palette[tissue] * rng.uniform(0.93, 1.07) - image) * mask
    # Screen coordinates without the anatomy's jitter, for frames that belong to the device.
    grid = (np.arange(size) + 0.5) / size * 2 - 1
    sx, sy = np.meshgrid(grid, grid)
    if attrs.modality == "X-ray":
        # Projection softness, and collimator shutters: unexposed film is bright at the borders.
        image = (
            image + np.roll(image, 1, 0) + np.roll(image, 1, 1) + np.roll(image, (1, 1), (0, 1))
        ) / 4
        image = image * rng.uniform(0.85, 1.1) + rng.normal(0, 0.02, image.shape)
        left, right, top, bottom = rng.uniform(0.8, 0.93, 4)
        shutter = (sx < -left) | (sx > right) | (sy < -top) | (sy > bottom)
        image = np.where(shutter, 0.8 + rng.normal(0, 0.02, image.shape), image)
    elif attrs.modality == "CT":
        disc = np.clip((0.97 - np.hypot(sx, sy)) * size / 2 + 0.5, 0, 1)
        image = image * disc
        table = np.clip((0.03 - np.abs(sy - 0.9 - 0.08 * sx**2)) * size / 2 + 0.5, 0, 1)
        image = np.maximum(image, 0.5 * table * (np.abs(sx) < 0.75))
        image += rng.normal(0, 0.03, image.shape)
    elif attrs.modality == "MRI":
        coarse = rng.normal(0, 1, (6, 6))
        texture = np.kron(coarse, np.ones((size // 6 + 1, size // 6 + 1)))[:size, :size]
        bias = 1.1 - 0.25 * (sy + 1) / 2 + 0.1 * sx * rng.choice((-1, 1))
        image = image * bias * (1 + 0.06 * texture) + np.abs(rng.normal(0, 0.025, image.shape))
    else:  # ultrasound: speckled fan from a probe at the top edge, darker with depth
        ax, ay = sx, sy + 1.1
        depth = np.hypot(ax, ay)
        theta = np.arctan2(ax, ay)
        fan = np.clip((0.65 - np.abs(theta)) * size / 2, 0, 1) * np.clip(
            (2.0 - depth) * size / 2, 0, 1
        )
        fan *= np.clip((depth - 0.2) * size / 2, 0, 1)
        speckle = rng.rayleigh(1.0, image.shape) / math.sqrt(math.pi / 2)  # mean 1
        image = (0.08 + image) * (0.55 + 0.45 * speckle) * fan * (1.15 - 0.35 * depth / 2)
        ticks = (np.abs(sx - 0.9) < 0.03) & (np.mod(sy + 1, 0.25) < 0.06)
        image = np.where(ticks, 0.85, image)
    image = np.clip(image, 0.0, 1.0)
    if attrs.modality == "MRI":
        tint = np.array([0.9, 0.95, 1.0]) * rng.uniform(0.97, 1.03)
        return np.round(np.clip(image[..., None] * tint, 0.0, 1.0) * 255).astype(np.uint8)
    return np.round(image * 255).astype(np.uint8)


def render_image(attrs: Attributes, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render an image (uint8, ``size×size`` gray or ``size×size×3`` for MRI) from attributes."""
    grid = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(grid, grid)
    # Jitter the whole anatomy (shift, scale, small rotation) so no two images are identical.
    scale = rng.uniform(0.9, 1.08)
    angle = rng.uniform(-0.1, 0.1)
    dx, dy = rng.uniform(-0.06, 0.06, 2)
    c, s = math.cos(angle), math.sin(angle)
    u, v = (x - dx) / scale, (y - dy) / scale
    canvas = _Canvas(u * c + v * s, -u * s + v * c, size)
    side = 1 if attrs.laterality == "left" else -1  # patient's left = image right
    limb = side if attrs.body_region in LIMBS else 1
    sites = _REGION_PAINTERS[attrs.body_region](canvas, side, limb)
    _paint_finding(canvas, attrs, sites, rng)
    return _finish(attrs, canvas, rng)


# --- captions -------------------------------------------------------------------------------------

_MODALITY_WORDS = {
    "X-ray": ("X-ray", "radiograph", "plain film", "plain radiograph", "XR", "x-ray"),
    "CT": ("CT", "computed tomography", "CT scan", "contrast-enhanced CT", "non-contrast CT"),
    "MRI": ("MRI", "MR", "magnetic resonance imaging", "T2-weighted MRI", "MR image"),
    "ultrasound": ("ultrasound", "US", "sonography", "sonogram", "ultrasonography"),
}
_PLANES = {
    "X-ray": ("PA", "AP", "frontal"),
    "CT": ("axial", "coronal"),
    "MRI": ("axial", "coronal", "sagittal"),
    "ultrasound": ("transverse", "longitudinal"),
}
_REGION_NOUNS = {
    "chest": ("chest", "thorax"),
    "head": ("head", "brain"),
    "abdomen": ("abdomen",),
    "knee": ("knee",),
    "hand": ("hand",),
    "pelvis": ("pelvis",),
}
_REGION_ADJECTIVES = {
    "chest": ("chest", "thoracic"),
    "head": ("head", "brain", "cranial"),
    "abdomen": ("abdominal", "abdomen"),
    "knee": ("knee",),
    "hand": ("hand",),
    "pelvis": ("pelvic", "pelvis"),
}
_LESION_PLACES = {
    "chest": ("lung", "hemithorax", "lower lobe"),
    "head": ("hemisphere", "parietal lobe", "frontal lobe"),
    "abdomen": ("abdomen", "kidney", "upper quadrant"),
    "knee": ("distal femur", "femoral condyle"),
    "hand": ("metacarpal", "hand"),
    "pelvis": ("iliac bone", "hemipelvis"),
}
_BONES = {
    "chest": ("rib", "posterior rib"),
    "head": ("skull", "parietal bone"),
    "abdomen": ("lower rib", "rib"),
    "knee": ("tibial plateau", "proximal tibia"),
    "hand": ("fifth metacarpal", "metacarpal"),
    "pelvis": ("femoral neck", "proximal femur"),
}
_EFFUSIONS = {
    "chest": ("pleural effusion", "effusion", "pleural fluid collection"),
    "head": ("subdural effusion", "subdural fluid collection", "extra-axial effusion"),
    "abdomen": ("fluid collection", "effusion", "free fluid"),
    "knee": ("joint effusion", "knee effusion", "effusion"),
    "hand": ("joint effusion", "effusion", "soft tissue fluid collection"),
    "pelvis": ("hip joint effusion", "effusion", "fluid collection"),
}
_NORMAL = ("normal", "unremarkable", "no acute abnormality", "within normal limits")
_VERBS = ("demonstrates", "shows", "reveals", "with", "depicts")
_EXTRAS = (
    "Patient is a {age}-year-old {sex}.",
    "{age} year old {sex}.",
    "Compare with prior examination.",
    "Follow-up imaging recommended.",
    "Findings confirmed at surgery.",
    "Image courtesy of the department of radiology.",
)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _side_word(rng: np.random.Generator, laterality: str | None, short_ok: bool = True) -> str:
    if laterality is None:
        return ""
    words = [laterality, laterality, f"{laterality}-sided"]
    if short_ok:
        words.append(laterality[0].upper())
    return _pick(rng, words)


def _nodule_phrase(attrs: Attributes, rng: np.random.Generator) -> str:
    count = attrs.count or "single"
    plural = count != "single"
    if attrs.size == "small":
        nouns: tuple[str, ...] = ("nodule", "lesion", "nodular opacity")
        size_words = ["small", f"{attrs.size_cm:.1f} cm", f"{attrs.size_cm:.1f}-cm"]
        if (attrs.size_cm or 1.0) < 1.0:
            size_words.append("subcentimeter")
    else:
        nouns = ("mass", "lesion", "nodule")
        size_words = ["large", f"{attrs.size_cm:.1f} cm", f"{round(attrs.size_cm or 4):.0f} cm"]
    if attrs.body_region == "chest":
        nouns = (*nouns, "pulmonary nodule" if attrs.size == "small" else "lung mass")
    noun = _pick(rng, nouns)
    if plural:
        noun = noun[:-4] + "masses" if noun.endswith("mass") else noun + "s"
        size_words = [w for w in size_words if "cm" not in w] or ["small"]
    count_word = {
        "single": _pick(rng, ("a", "a solitary", "a single")),
        "two": _pick(rng, ("two", "2")),
        "multiple": _pick(rng, ("multiple", "several", "numerous")),
    }[count]
    size_word = _pick(rng, size_words)
    side = _side_word(rng, attrs.laterality)
    place = _pick(rng, _LESION_PLACES[attrs.body_region])
    form = int(rng.integers(3))
    if form == 0:
        phrase = f"{count_word} {size_word} {side} {place} {noun}"
    elif form == 1:
        phrase = f"{count_word} {size_word} {noun} in the {side} {place}"
    else:
        phrase = f"{count_word} {noun} ({size_word}) in the {side} {place}"
    return phrase.replace("a a", "a")


def _fracture_phrase(attrs: Attributes, rng: np.random.Generator) -> str:
    bone = _pick(rng, _BONES[attrs.body_region])
    side = _side_word(rng, attrs.laterality)
    form = int(rng.integers(4))
    if form == 0:
        return f"a fracture of the {side} {bone}"
    if form == 1:
        return f"a {side} {bone} fracture"
    if form == 2:
        return f"a displaced fracture through the {side} {bone}"
    return f"an acute {side} {bone} fracture"


def _effusion_phrase(attrs: Attributes, rng: np.random.Generator) -> str:
    noun = _pick(rng, _EFFUSIONS[attrs.body_region])
    size_words = (
        ("small", "trace", "minimal")
        if attrs.size == "small"
        else ("large", "massive", "moderate-to-large")
    )
    size = _pick(rng, size_words)
    side = _side_word(rng, attrs.laterality, short_ok=False)
    form = int(rng.integers(3))
    if form == 0:
        return f"a {size} {side} {noun}"
    if form == 1:
        return f"a {size} {noun} on the {side}"
    return f"a {size} {noun} ({side})"


def _finding_phrase(attrs: Attributes, rng: np.random.Generator) -> str:
    """Describe the image's finding (not 'none'), with single spaces."""
    phrase = {
        "nodule": _nodule_phrase,
        "fracture": _fracture_phrase,
        "effusion": _effusion_phrase,
    }[attrs.finding](attrs, rng)
    return " ".join(phrase.split())


def _terse_caption(attrs: Attributes, rng: np.random.Generator) -> str:
    """Write a short caption ("Right rib fracture, CT."); half of them leave out the modality.

    Real captions are often a phrase, and often do not name the modality: text search cannot
    tell those images' modality, while their pixels still show it.
    """
    region = _pick(rng, _REGION_ADJECTIVES[attrs.body_region])
    if attrs.body_region in LIMBS:
        region = f"{_side_word(rng, attrs.laterality, short_ok=False)} {region}"
    if attrs.finding == "none":
        core = f"{_pick(rng, _NORMAL)} {region}"
    else:
        phrase = re.sub(r"^(a|an) ", "", _finding_phrase(attrs, rng))
        core = phrase if rng.random() < 0.5 else f"{region}: {phrase}"
    if rng.random() < 0.5:
        core = f"{core}, {_pick(rng, _MODALITY_WORDS[attrs.modality])}"
    return " ".join(f"{core[0].upper()}{core[1:]}.".split())


def write_caption(attrs: Attributes, rng: np.random.Generator) -> str:
    """Write a caption for the attributes, in one of many wordings (synonyms, order, noise)."""
    if rng.random() < TERSE_FRACTION:
        return _terse_caption(attrs, rng)
    modality = _pick(rng, _MODALITY_WORDS[attrs.modality])
    region = _pick(rng, _REGION_NOUNS[attrs.body_region])
    adjective = _pick(rng, _REGION_ADJECTIVES[attrs.body_region])
    plane = _pick(rng, _PLANES[attrs.modality])
    if attrs.body_region in LIMBS:
        # The limb's side belongs to the region: "MRI of the left knee".
        side = _side_word(rng, attrs.laterality, short_ok=False)
        region = f"{side} {region}"
        adjective = f"{side} {adjective}"
    if attrs.finding == "none":
        normal = _pick(rng, _NORMAL)
        form = int(rng.integers(4))
        if form == 0:
            text = f"{normal.capitalize()} {adjective} {modality}."
        elif form == 1:
            text = f"{plane.capitalize()} {modality} of the {region}: {normal}."
        elif form == 2:
            text = f"{modality} of the {region} is {normal}."
        else:
            text = f"{adjective.capitalize()} {modality} ({plane}), {normal}."
    else:
        finding = _finding_phrase(attrs, rng)
        form = int(rng.integers(6))
        arrow = _pick(rng, (" (arrow)", " (arrows)", " (arrowhead)", "", "", ""))
        if form == 0:
            text = f"{modality} of the {region} {_pick(rng, _VERBS)} {finding}{arrow}."
        elif form == 1:
            text = f"{finding[0].upper()}{finding[1:]} on {modality} of the {region}{arrow}."
        elif form == 2:
            text = f"{adjective.capitalize()} {modality}: {finding}{arrow}."
        elif form == 3:
            noted = _pick(rng, ("noted", "seen", "identified"))
            text = f"There is {finding} {noted} on this {adjective} {modality}{arrow}."
        elif form == 4:
            text = (
                f"{plane.capitalize()} {modality} image of the {region} showing {finding}{arrow}."
            )
        else:
            text = f"{finding[0].upper()}{finding[1:]}{arrow}, {adjective} {modality}."
    text = text[0].upper() + text[1:]
    if rng.random() < 0.3:
        extra = _pick(rng, _EXTRAS).format(
            age=int(rng.integers(18, 90)), sex=_pick(rng, ("man", "woman", "male", "female"))
        )
        text = f"{extra} {text}" if rng.random() < 0.5 else f"{text} {extra}"
    return " ".join(text.split())


# --- queries -------------------------------------------------------------------------------------

_QUERY_MODALITY = {
    "X-ray": ("X-ray", "radiograph"),
    "CT": ("CT", "computed tomography"),
    "MRI": ("MRI", "MR"),
    "ultrasound": ("ultrasound",),
}
_QUERY_PLACE = {
    "chest": "lung",
    "head": "brain",
    "abdomen": "abdominal",
    "knee": "knee",
    "hand": "hand",
    "pelvis": "pelvic",
}
_QUERY_KINDS = (
    ("modality", "body_region"),
    ("body_region", "finding"),
    ("modality", "finding"),
    ("body_region", "finding", "laterality"),
    ("modality", "body_region", "finding", "laterality"),
    ("body_region", "finding", "size"),
    ("modality", "body_region", "finding", "count"),
    ("modality", "body_region", "finding"),
)


def _query_text(wanted: Mapping[str, str], rng: np.random.Generator) -> str:
    """Phrase a query from attributes the way a radiologist would type it."""
    modality = _pick(rng, _QUERY_MODALITY[wanted["modality"]]) if "modality" in wanted else None
    region = wanted.get("body_region")
    finding = wanted.get("finding")
    side = f"{wanted['laterality']} " if "laterality" in wanted else ""
    if finding is None:
        return _pick(rng, (f"{modality} of the {region}", f"{region} {modality}"))
    if finding == "none":
        return f"normal {region}" + (f" {modality}" if modality else "")
    word = "mass" if finding == "nodule" and wanted.get("size") == "large" else finding
    before = ""
    if "count" in wanted:
        before = {"single": "solitary ", "two": "two ", "multiple": "multiple "}[wanted["count"]]
        if wanted["count"] != "single":
            word = "masses" if word == "mass" else f"{word}s"
    if "size" in wanted and finding != "nodule":
        before += f"{wanted['size']} "
    if region is None:
        where = f"{before}{word}"
    elif finding == "nodule":
        where = f"{before}{side}{_QUERY_PLACE[region]} {word}"
    elif finding == "effusion" and region == "chest":
        where = f"{before}{side}pleural {word}"
    elif finding == "fracture" and region == "chest":
        where = f"{before}{side}rib {word}"
    else:
        where = f"{before}{word} of the {side}{region}"
    return f"{where} on {modality}" if modality else where


def judge_relevance(wanted: Mapping[str, str], attrs: Attributes) -> int:
    """Grade an image for a query's attributes: 2 all match, 1 one secondary mismatch, else 0."""
    values = attrs.metadata()
    misses = [key for key, value in wanted.items() if values.get(key) != value]
    if not misses:
        return 2
    if len(wanted) >= 3 and len(misses) == 1 and misses[0] not in _PRIMARY:
        return 1
    return 0


def build_queries(
    attributes: Sequence[Attributes],
    ids: Sequence[str],
    splits: Sequence[str],
    n_queries: int,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Build attribute queries with graded judgments over the whole corpus.

    Candidates come from test-split images (so each query has a fully relevant test image), are
    spread evenly over the query kinds, and are judged against every image in the corpus.
    """
    pool = [a for a, s in zip(attributes, splits, strict=True) if s == "test"] or list(attributes)
    by_kind: list[list[dict[str, str]]] = []
    for kind in _QUERY_KINDS:
        seen: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        for attrs in pool:
            values = attrs.metadata()
            if any(values.get(k) is None for k in kind):
                continue
            # "Normal" needs a region to mean anything, and has no side, size or count.
            if (
                values["finding"] == "none"
                and "finding" in kind
                and ("body_region" not in kind or len(kind) > 3)
            ):
                continue
            wanted = {k: str(values[k]) for k in kind}
            seen.setdefault(tuple(sorted(wanted.items())), wanted)
        candidates = list(seen.values())
        order = rng.permutation(len(candidates))
        by_kind.append([candidates[i] for i in order])
    chosen: list[dict[str, str]] = []
    while len(chosen) < n_queries and any(by_kind):
        for bucket in by_kind:
            if bucket and len(chosen) < n_queries:
                chosen.append(bucket.pop())
    queries: list[dict[str, Any]] = []
    texts: set[str] = set()
    for wanted in chosen:
        text = _query_text(wanted, rng)
        if text in texts:
            continue
        texts.add(text)
        relevance = {
            image_id: grade
            for image_id, attrs in zip(ids, attributes, strict=True)
            if (grade := judge_relevance(wanted, attrs)) > 0
        }
        queries.append(
            {
                "query": text,
                "relevant": list(relevance),
                "relevance": relevance,
                "attributes": wanted,
            }
        )
    return queries


# --- the corpus ----------------------------------------------------------------------------------


def assign_splits(n: int, config: SynthConfig, rng: np.random.Generator) -> list[str]:
    """Assign splits by a seeded shuffle, with exact counts (validation and test rounded)."""
    n_val = round(n * config.validation_fraction)
    n_test = min(round(n * config.test_fraction), n - n_val)
    labels = ["validation"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    order = rng.permutation(n)
    return [labels[int(i)] for i in order]


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def write_synthetic_corpus(out: Path, config: SynthConfig) -> Path:
    """Write a corpus (manifest, PNG images, queries) under ``out``; return the manifest path.

    The output depends only on the config: the same seed writes the same bytes.
    """
    out = Path(out)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(config.seed)
    attr_seq, split_seq, caption_seq, pixel_seq, query_seq = root.spawn(5)
    attr_rng = np.random.default_rng(attr_seq)
    attributes = [sample_attributes(attr_rng) for _ in range(config.n)]
    splits = assign_splits(config.n, config, np.random.default_rng(split_seq))
    caption_rng = np.random.default_rng(caption_seq)
    n_captionless = round(config.n * config.captionless_fraction)
    captionless = set(caption_rng.choice(config.n, size=n_captionless, replace=False).tolist())
    width = max(5, len(str(config.n - 1)))
    ids = [f"synth-{i:0{width}d}" for i in range(config.n)]
    records: list[Record] = []
    pixel_seqs = pixel_seq.spawn(config.n)
    for i, (image_id, attrs, split) in enumerate(zip(ids, attributes, splits, strict=True)):
        pixel_rng = np.random.default_rng(pixel_seqs[i])
        path = images_dir / f"{image_id}.png"
        path.write_bytes(_png(render_image(attrs, config.image_size, pixel_rng)))
        caption = write_caption(attrs, caption_rng)
        records.append(
            Record(
                image_id=image_id,
                image=str(path.resolve()),
                caption=None if i in captionless else caption,
                split=split,
                metadata=attrs.metadata(),
            )
        )
    manifest = out / "manifest.jsonl"
    write_manifest(manifest, records)
    queries = build_queries(
        attributes, ids, splits, config.n_queries, np.random.default_rng(query_seq)
    )
    (out / "queries.jsonl").write_text(
        "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in queries), encoding="utf-8"
    )
    log.info(
        "wrote %d images (%d captionless) and %d queries to %s",
        config.n,
        n_captionless,
        len(queries),
        out,
    )
    return manifest
