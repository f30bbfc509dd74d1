"""The torch encoder: a CLIP model behind :class:`medsearch.vectors.Encoder`.

It is the reference implementation the ONNX encoder is checked against: batched, no gradients,
texts truncated to the model's maximum length, and every output normalised by
:func:`medsearch.vectors.normalize` (the one place vectors are made unit length).

:func:`weights_fingerprint` names a model's weights. It hashes the loaded weights, not a file:
a model loads from a folder, an ``s3://`` copy or the hub cache, saved as safetensors or not, in
fp32 or half precision, and the fingerprint must be the same for all of them and for the ONNX
export made from it, which records the same function's value when exporting. Measured on a 2-core
machine, sha256 over 600 MB of float32 weights (a ViT-B/32 CLIP) takes 0.6 s, the same as hashing
the safetensors file (0.7 s); anything cheaper (a file header, sampled tensors) would miss a
fine-tune that moved only some weights. It is computed once per encoder, when first asked.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from medsearch.errors import ConfigError
from medsearch.model.loading import ClipBundle, load_clip
from medsearch.model.preprocess import fast_processor
from medsearch.vectors import normalize

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

FINGERPRINT_PREFIX = "sha256:"
_FINGERPRINT_HEX = 16


def select_device(device: str | None = None) -> torch.device:
    """Return the requested torch device, or CUDA when present, else the CPU."""
    if device:
        try:
            chosen = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"unknown device {device!r}: {exc}") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available")
        return chosen
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pooled(output: object) -> torch.Tensor:
    """Return projected features from ``get_*_features`` (a tensor before transformers 5)."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output  # type: ignore[attr-defined]


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Return ``sha256:`` + 16 hex digits naming every value of the model's weights and buffers.

    Each tensor of the state dict is hashed with its shape, floating-point ones as float32 (so the
    same stored values give the same fingerprint in any precision they are loaded in, on any
    device), and the sorted set of those digests is hashed again: independent of parameter names,
    which transformers releases rename, and of tied weights being listed once or twice. Any
    changed value changes it (rounding a model to half precision does too: other vectors).
    """
    digests = set()
    for tensor in model.state_dict().values():
        value = tensor.detach()
        if value.is_floating_point():
            value = value.to(dtype=torch.float32)
        array = value.cpu().contiguous().numpy().reshape(-1)
        digest = hashlib.sha256(f"{array.dtype.str}{tuple(tensor.shape)}".encode())
        digest.update(memoryview(array).cast("B"))
        digests.add(digest.hexdigest())
    combined = hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()
    return FINGERPRINT_PREFIX + combined[:_FINGERPRINT_HEX]


class TorchEncoder:
    """Encodes texts and images with a CLIP model into float32 unit vectors."""

    def __init__(self, bundle: ClipBundle, *, device: str | torch.device | None = None) -> None:
        self.bundle = bundle
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.model = bundle.model
        torch.nn.Module.to(self.model, self.device)
        self._fingerprint: str | None = None
        # The processor's pixels bit for bit (exact resize), without its full-size numpy copies
        # of the image: a 50 MP upload's encode took 1.41 s and 473 MB over the decode's peak;
        # now 0.31 s and, once the model has run, nothing over it.
        self._image_processor = fast_processor(bundle.image_processor, reducing_gap=None)

    @property
    def model_id(self) -> str:
        """The model's source (folder, s3:// prefix or hub id)."""
        return self.bundle.source

    @property
    def name(self) -> str:
        """The model's name as clients see it (:attr:`ClipBundle.name`)."""
        return self.bundle.name

    @property
    def dim(self) -> int:
        """The embedding dimension."""
        return self.bundle.dim

    @property
    def fingerprint(self) -> str:
        """The :func:`weights_fingerprint` of the weights when first asked (an encoder serves
        fixed weights; the training loop, which changes them, never asks)."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Encode texts (truncated to the model's maximum length) to ``[n, dim]`` unit vectors."""
        texts = [str(t) for t in texts]
        chunks = []
        with _eval_mode(self.model), torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                inputs = self.bundle.tokenizer(
                    texts[start : start + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.bundle.max_text_length,
                    return_tensors="pt",
                ).to(self.device)
                features = self.model.get_text_features(
                    input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                )
                chunks.append(pooled(features).float().cpu().numpy())
        return self._finish(chunks)

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Encode PIL images (converted to RGB) to ``[n, dim]`` unit vectors."""
        chunks = []
        with _eval_mode(self.model), torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = [
                    im if im.mode == "RGB" else im.convert("RGB")
                    for im in images[start : start + batch_size]
                ]
                pixels = self._image_processor(batch)
                features = self.model.get_image_features(pixel_values=pixels.to(self.device))
                chunks.append(pooled(features).float().cpu().numpy())
        return self._finish(chunks)

    def _finish(self, chunks: list[np.ndarray]) -> np.ndarray:
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalize(np.concatenate(chunks))


class _eval_mode:
    """Put a module in eval mode for a block and restore every submodule's previous mode after.

    Per submodule, not just the top: during training a frozen tower stays in eval mode (its
    batch-norm statistics must not move), and a validation pass must not switch it back.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        # Only the submodules in train mode change; when serving, that is none of them.
        self.training = [m for m in module.modules() if m.training]

    def __enter__(self) -> None:
        for module in self.training:
            module.training = False

    def __exit__(self, *exc: object) -> None:
        for module in self.training:
            module.training = True


def load_encoder(source: str, *, device: str | None = None) -> TorchEncoder:
    """Load a CLIP (folder, s3:// prefix or hub id) as a torch encoder."""
    return TorchEncoder(load_clip(source), device=device)
