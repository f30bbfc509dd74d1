"""Embedding-like vectors for engine tests and benchmarks.

ANN recall can only be judged on vectors shaped like real embeddings: uniform random vectors in
512 dimensions are all nearly equidistant, so every method looks bad on them. Real embeddings lie
near a low-dimensional subspace; :func:`embedding_like_vectors` draws ``normalise(z·A + ε)`` with
``z`` Gaussian in ``rank`` dimensions, ``A`` a fixed random ``rank × dim`` matrix and small noise.
"""

from __future__ import annotations

import numpy as np

from medsearch.vectors import normalize

# The mixing matrix is fixed, so corpus and query vectors drawn with different seeds share it.
_MIXING_SEED = 1234


def embedding_like_vectors(
    n: int, dim: int = 512, *, rank: int = 32, noise: float = 0.1, seed: int = 0
) -> np.ndarray:
    """Return ``n`` unit float32 vectors near a fixed ``rank``-dimensional subspace of R^dim.

    ``noise`` is the norm of the isotropic noise relative to the (unit) signal.
    """
    mixing = np.random.default_rng(_MIXING_SEED).standard_normal((rank, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    signal = normalize(rng.standard_normal((n, rank)).astype(np.float32) @ mixing)
    jitter = rng.standard_normal((n, dim)).astype(np.float32) * (noise / np.sqrt(dim))
    return normalize(signal + jitter)
