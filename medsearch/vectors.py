"""Vectors: the one L2-normalisation, the similarity space, and the encoder protocol.

Every encoder (torch, ONNX) and every engine (embedded, OpenSearch) goes through this module, so a
query vector and a corpus vector are always comparable: unit length, float32, ranked by cosine
(which, for unit vectors, is the inner product).

Comparable also means made by the same model: two models of the same dimension (a fine-tune and
its base) give vectors of the same shape whose cosines mean nothing across them. An encoder
therefore names its weights by a fingerprint (:func:`medsearch.model.encoder.weights_fingerprint`:
``sha256:`` and 16 hex digits over every weight's values), which ``vectorize`` stores beside the
vectors, indexing stores in the index, and the search service compares at startup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

# The similarity space both engines rank in. Vectors are unit length, so cosine == inner product.
SIMILARITY = "cosine"
_EPS = 1e-12


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm (zero rows stay zero) — the only normaliser."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        return normalize(array[None, :])[0]
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return (array / np.maximum(norms, _EPS)).astype(np.float32, copy=False)


@runtime_checkable
class Encoder(Protocol):
    """Turns texts and images into comparable unit vectors (torch and ONNX implement it)."""

    @property
    def model_id(self) -> str:
        """Where the model came from (folder, ``s3://`` prefix, hub id), stored beside vectors
        and named in operators' errors."""
        ...

    @property
    def name(self) -> str:
        """The model's name as clients see it (:mod:`medsearch.model.names`)."""
        ...

    @property
    def dim(self) -> int:
        """The embedding dimension."""
        ...

    @property
    def fingerprint(self) -> str | None:
        """A short hash of the model's weights (``sha256:`` + 16 hex digits), the same for the
        torch model and its ONNX export; None where unknown (an export from before fingerprints)."""
        ...

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Encode texts to float32 ``[n, dim]`` unit vectors."""
        ...

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Encode RGB images to float32 ``[n, dim]`` unit vectors."""
        ...


def encoder_fingerprint(encoder: Encoder) -> str | None:
    """Return the encoder's weight fingerprint, or None when it has none to give.

    Read leniently: an encoder written before fingerprints existed (an outside implementation, a
    test double) counts as one whose weights are unknown, which callers treat as an old index.
    """
    value = getattr(encoder, "fingerprint", None)
    return value if isinstance(value, str) and value else None
