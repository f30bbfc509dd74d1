"""The vector floor: when a text query's CLIP cosine is evidence of a match, learned per corpus.

A kNN list always has a nearest image, so without a floor a nonsense query ("zzzqqq") gets ten
confident-looking results and a vector total of the whole corpus. Raw cosines cannot be compared
with one threshold: CLIP's text and image vectors lie in two cones apart (the modality gap), and
how close a text's vector comes to *every* image depends on the text. On the demo corpus a
nonsense query's best cosine (0.68-0.75) was above the worst best cosine of a real query (0.70).
So the floor is set on the **centred cosine** ``cos(t, v) - t · m``, where ``m`` is the mean of
the corpus's image vectors (``t · m`` is t's mean cosine over the corpus): how much closer an
image is to the text than the corpus's average image. There the demo's nonsense queries top out
at 0.38-0.52 and real queries start at 0.46 (median of their best: 0.72).

Calibration (:func:`calibrate_floor`), at vectorize time, on the corpus's own captions: for a
sample of captioned images, the centred cosine of each caption's text vector with its own image
(matching pairs) and with every other sampled image (non-matching pairs). The floor is the
threshold that maximises Youden's J = TPR - FPR between the two distributions: the point where
one more step up would drop a larger share of true pairs than of false ones. It needs no labels
but the captions, no tuning constant, and one text batch of at most :data:`CALIBRATION_PAIRS`
captions. Non-matching pairs include captions of the same finding (a templated corpus repeats
them), which makes their distribution heavier on the right and the floor, if anything, high;
it is applied only to mark confidence and count totals, never to drop a result, so a real
query's ranking (and R@k) is the same with it.

At query time a text query ``t`` has the raw cosine floor ``floor + t · m``
(:meth:`VectorFloor.for_query`), which both engines compare with the cosines they already
report. Image queries (similar, upload) are not judged: image-to-image cosines are another
distribution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Captions encoded to calibrate: the pairs' share of the corpus is what matters, not their number.
CALIBRATION_PAIRS = 512
MIN_CALIBRATION_PAIRS = 8


@dataclass(frozen=True)
class VectorFloor:
    """A corpus's calibrated floor on the centred cosine, with what it was learned from.

    ``center``: the mean image vector ``m``; ``floor``: the centred-cosine threshold;
    ``matched``/``unmatched``: the shares of matching and non-matching calibration pairs at or
    above it (TPR, FPR); ``pairs``: how many captions were sampled.
    """

    floor: float
    center: tuple[float, ...]
    matched: float
    unmatched: float
    pairs: int

    def for_query(self, vector: np.ndarray) -> float:
        """Return the raw cosine a unit query vector's hits must reach: ``floor + t · m``."""
        return float(self.floor + np.dot(np.asarray(vector, dtype=np.float64), self.center))

    def to_json(self) -> dict[str, Any]:
        """Return the floor as JSON-ready values (an index's meta or record stores them)."""
        return {
            "floor": round(self.floor, 6),
            "center": [round(float(x), 7) for x in self.center],
            "matched": round(self.matched, 4),
            "unmatched": round(self.unmatched, 4),
            "pairs": self.pairs,
        }

    @classmethod
    def from_json(cls, data: object, dim: int | None = None) -> VectorFloor | None:
        """Return a stored floor, or None where it is missing or unusable (wrong dimension,
        non-finite values): an index without a usable floor is simply not judged."""
        if not isinstance(data, Mapping):
            return None
        try:
            floor = float(data["floor"])
            center = tuple(float(x) for x in data["center"])
            matched, unmatched = float(data.get("matched", 0.0)), float(data.get("unmatched", 0.0))
            pairs = int(data.get("pairs", 0))
        except (KeyError, TypeError, ValueError):
            return None
        if not center or (dim is not None and len(center) != dim):
            return None
        if not all(math.isfinite(x) for x in (floor, *center)):
            return None
        return cls(floor, center, matched, unmatched, pairs)


def calibrate_floor(
    caption_vectors: np.ndarray, image_vectors: np.ndarray, all_image_vectors: np.ndarray
) -> VectorFloor | None:
    """Learn the floor from matching pairs (row i of ``caption_vectors`` is the text vector of
    the caption of row i of ``image_vectors``) against all non-matching pairs among them; the
    centre is the mean of ``all_image_vectors`` (the whole corpus). None with too few pairs."""
    texts = np.asarray(caption_vectors, dtype=np.float64)
    images = np.asarray(image_vectors, dtype=np.float64)
    count = texts.shape[0]
    if count < MIN_CALIBRATION_PAIRS or images.shape != texts.shape:
        return None
    center = np.asarray(all_image_vectors, dtype=np.float64).mean(axis=0)
    centred = texts @ images.T - (texts @ center)[:, None]
    same = np.eye(count, dtype=bool)
    matched, unmatched = np.sort(centred[same]), np.sort(centred[~same])
    # Youden's J over every observed score as a threshold: TPR(t) - FPR(t), shares at or above t.
    thresholds = np.unique(np.concatenate([matched, unmatched]))
    tpr = 1.0 - np.searchsorted(matched, thresholds, side="left") / matched.size
    fpr = 1.0 - np.searchsorted(unmatched, thresholds, side="left") / unmatched.size
    best = int(np.argmax(tpr - fpr))
    return VectorFloor(
        floor=float(thresholds[best]),
        center=tuple(float(x) for x in center),
        matched=float(tpr[best]),
        unmatched=float(fpr[best]),
        pairs=count,
    )


def sample_pairs(
    ids: Sequence[str], captions: Mapping[str, str | None], *, limit: int = CALIBRATION_PAIRS
) -> list[int]:
    """Return the positions (in ``ids``) of up to ``limit`` captioned images, spread evenly over
    the corpus and the same on every run (no random state: a rerun calibrates alike)."""
    captioned = [i for i, image_id in enumerate(ids) if captions.get(image_id)]
    if len(captioned) <= limit:
        return captioned
    step = len(captioned) / limit
    return [captioned[int(j * step)] for j in range(limit)]
