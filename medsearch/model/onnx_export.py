"""Export a CLIP's text and vision towers to ONNX for the torch-free :class:`OnnxEncoder`.

Each tower is exported with its projection, so the graphs output exactly what
``get_text_features`` / ``get_image_features`` return (unnormalised; the encoder normalises).
Batch (and, for text, sequence) dimensions are dynamic. The exporter is torch's
``torch.export``-based one (``dynamo=True``, the default and maintained path since torch 2.9,
with onnxscript); the legacy TorchScript exporter is kept as a fallback because it is deprecated
but still handles graphs the new one rejects. Every export is checked against torch on inputs of
a different shape than the ones it was traced with, so a wrong dynamic axis fails here, not in
production. ``--int8`` adds dynamically quantised copies (onnxruntime, int8 weights).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medsearch.errors import ConfigError, StorageError
from medsearch.model.encoder import pooled, weights_fingerprint
from medsearch.model.loading import ClipBundle, load_clip
from medsearch.model.names import shown_model_name
from medsearch.model.onnx_encoder import (
    MANIFEST_FILE,
    PREPROCESS_FILE,
    TEXT_INPUTS,
    TEXT_MODEL,
    TEXT_MODEL_INT8,
    TEXT_OUTPUT,
    TOKENIZER_FILE,
    VISION_INPUT,
    VISION_MODEL,
    VISION_MODEL_INT8,
    VISION_OUTPUT,
    OnnxManifest,
    PreprocessConfig,
)

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
MAX_IR_VERSION = 9
EXPORTERS = ("dynamo", "torchscript")
# An export whose outputs differ more than this from torch's (cosine) is refused.
MIN_EXPORT_COSINE = 0.9999
_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


class _TextTower(torch.nn.Module):
    """The text tower plus projection: token ids and mask to text features."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return pooled(
            self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        )


class _VisionTower(torch.nn.Module):
    """The vision tower plus projection: preprocessed pixels to image features."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pooled(self.model.get_image_features(pixel_values=pixel_values))


@dataclass(frozen=True)
class _Tower:
    """One tower to export: the module and the names and dynamic axes of its graph."""

    module: torch.nn.Module
    input_names: list[str]
    output_name: str
    dynamic: dict[str, dict[int, str]]


def export_onnx(
    model: str | ClipBundle,
    out: str | os.PathLike[str],
    *,
    int8: bool = False,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    model_id: str | None = None,
) -> OnnxManifest:
    """Write both towers (+ int8 copies), tokenizer, preprocessing and manifest to ``out``.

    ``model`` is a model source (folder, ``s3://`` prefix, hub id) or a loaded bundle; ``model_id``
    names the model in the manifest (default: its source); the manifest also records the model's
    :func:`~medsearch.model.encoder.weights_fingerprint`. The folder is written aside and swapped
    in, so an interrupted export never leaves a half-written folder behind.
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown ONNX exporter {exporter!r}: use one of {', '.join(EXPORTERS)}")
    bundle = model if isinstance(model, ClipBundle) else load_clip(model)
    model_on_cpu: Any = bundle.model  # transformers' typing of .to() is narrower than the call
    clip = model_on_cpu.to("cpu").float().eval()
    # The torch model's fingerprint, so vectors it made accept this export's queries.
    fingerprint = weights_fingerprint(clip)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    staging.chmod(0o755)  # mkdtemp makes it private; the export is meant to be shared
    try:
        text_inputs = _sample_texts(
            bundle, ["a chest x-ray", "an axial ct of the abdomen, no mass"]
        )
        check_texts = _sample_texts(bundle, ["mri", "x " * 400, "ultrasound of the left kidney"])
        pixels = _sample_pixels(bundle, 2, seed=0)
        check_pixels = _sample_pixels(bundle, 3, seed=1)
        # The wrappers are made in eval mode: the torchscript exporter restores a module's mode
        # when done, recursively, and a wrapper left in train mode would put the model's batch
        # norm back into train mode for the checks below and for the caller.
        text = _Tower(
            _TextTower(clip).eval(),
            list(TEXT_INPUTS),
            TEXT_OUTPUT,
            {name: {0: "batch", 1: "sequence"} for name in TEXT_INPUTS},
        )
        vision = _Tower(
            _VisionTower(clip).eval(),
            [VISION_INPUT],
            VISION_OUTPUT,
            {VISION_INPUT: {0: "batch"}},
        )
        used = _export_tower(
            text, text_inputs, staging / TEXT_MODEL, opset=opset, exporter=exporter
        )
        _export_tower(vision, (pixels,), staging / VISION_MODEL, opset=opset, exporter=used)
        _check_tower(text, check_texts, staging / TEXT_MODEL)
        _check_tower(vision, (check_pixels,), staging / VISION_MODEL)
        if int8:
            quantize_int8(staging / TEXT_MODEL, staging / TEXT_MODEL_INT8)
            quantize_int8(staging / VISION_MODEL, staging / VISION_MODEL_INT8)
        write_tokenizer(bundle, staging / TOKENIZER_FILE)
        preprocess = preprocess_config(bundle)
        (staging / PREPROCESS_FILE).write_text(json.dumps(preprocess.to_json(), indent=2) + "\n")
        manifest = OnnxManifest(
            model_id=model_id or bundle.source,
            dim=bundle.dim,
            opset=opset,
            exporter=used,
            int8=int8,
            fingerprint=fingerprint,
            # An id given to the export (a pipeline run's) names it; else the model's own name.
            name=shown_model_name(model_id) if model_id else bundle.name,
        )
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s to %s (%s exporter, opset %d)", manifest.model_id, target, used, opset)
    return manifest


def _sample_texts(bundle: ClipBundle, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = bundle.tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=bundle.max_text_length,
        return_tensors="pt",
    )
    return encoded["input_ids"].long(), encoded["attention_mask"].long()


def _sample_pixels(bundle: ClipBundle, n: int, *, seed: int) -> torch.Tensor:
    """Preprocess a few random-noise images through the model's own image processor."""
    rng = np.random.default_rng(seed)
    images = [
        Image.fromarray(rng.integers(0, 256, (90 + 7 * i, 120, 3), dtype=np.uint8))
        for i in range(n)
    ]
    return bundle.image_processor(images=images, return_tensors="pt")["pixel_values"].float()


def _export_tower(
    tower: _Tower, inputs: tuple[torch.Tensor, ...], path: Path, *, opset: int, exporter: str
) -> str:
    """Export one tower; return the exporter that succeeded (dynamo falls back to torchscript)."""
    if exporter == "dynamo":
        try:
            _export_dynamo(tower, inputs, path, opset)
            return "dynamo"
        except Exception as exc:
            log.warning("dynamo ONNX export of %s failed (%s); using torchscript", path.name, exc)
    _export_torchscript(tower, inputs, path, opset)
    return "torchscript"


def _export_dynamo(tower: _Tower, inputs: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    # Named dims (not Dim.AUTO): if tracing had to specialise an axis, export fails loudly here.
    dims: dict[str, Any] = {}
    shapes = {
        name: {
            axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in axes.items()
        }
        for name, axes in tower.dynamic.items()
    }
    with (
        torch.no_grad(),
        warnings.catch_warnings(),
        _quiet("onnx_ir", "onnxscript", "torch.onnx"),
        # Warns once per export that torchvision's operators are not registered: not used here.
        _quiet(_REGISTRATION_LOGGER, level=logging.ERROR),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            tower.module,
            inputs,
            input_names=tower.input_names,
            output_names=[tower.output_name],
            dynamic_shapes=shapes,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("the exporter returned no program")
    program.save(str(path), external_data=False)
    _cap_ir_version(path)


def _cap_ir_version(path: Path) -> None:
    """Write IR version 9 where the graph allows it, so onnxruntime 1.16 loads the model too.

    onnxruntime 1.16 is the last release with manylinux2014 wheels, the ones that run on the
    python3.11 Lambda runtime (Amazon Linux 2); opset 18 graphs need nothing from IR 10.
    """
    import onnx

    model = onnx.load(str(path))
    if model.ir_version > MAX_IR_VERSION and not model.functions:
        model.ir_version = MAX_IR_VERSION
        onnx.save(model, str(path))


@contextlib.contextmanager
def _quiet(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Keep the exporters' per-pass INFO chatter out of the user's log for a block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), level))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export_torchscript(
    tower: _Tower, inputs: tuple[torch.Tensor, ...], path: Path, opset: int
) -> None:
    axes: dict[str, dict[int, str]] = {**tower.dynamic, tower.output_name: {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower.module,
            inputs,
            str(path),
            input_names=tower.input_names,
            output_names=[tower.output_name],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )


def _check_tower(tower: _Tower, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    """Run the exported graph beside torch on new shapes; refuse an export that disagrees."""
    import onnxruntime as ort

    with torch.no_grad():
        expected = tower.module(*inputs).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {n: t.numpy() for n, t in zip(tower.input_names, inputs, strict=True)}
    got = session.run(None, feed)[0]
    cosine = float(np.min(_cosine_rows(expected, got)))
    if got.shape != expected.shape or cosine < MIN_EXPORT_COSINE:
        raise ConfigError(
            f"ONNX export of {path.name} disagrees with torch (shape {got.shape} vs"
            f" {expected.shape}, min cosine {cosine:.6f})"
        )
    log.debug("%s matches torch: min cosine %.7f", path.name, cosine)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from medsearch.vectors import normalize

    return np.sum(normalize(a) * normalize(b), axis=1)


def quantize_int8(source: Path, target: Path) -> None:
    """Write a dynamically quantised copy of an ONNX model (int8 weights, float inputs/outputs)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # onnxruntime logs a pre-processing hint through the root logger on every call; mute it.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        # MatMul/Gemm only: they hold nearly all weights, and the patch-embedding Conv would
        # become ConvInteger with int8 weights, which onnxruntime 1.16 (Lambda) cannot run.
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
    finally:
        root.setLevel(level)


def write_tokenizer(bundle: ClipBundle, path: Path) -> None:
    """Save the fast tokenizer with truncation and padding set as the torch encoder calls it."""
    from tokenizers import Tokenizer

    backend = getattr(bundle.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError("the model's tokenizer has no fast (tokenizers) backend to export")
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.enable_truncation(max_length=bundle.max_text_length)
    pad_id = bundle.tokenizer.pad_token_id
    pad_token = bundle.tokenizer.pad_token
    if pad_id is None or pad_token is None:
        raise ConfigError("the model's tokenizer has no padding token")
    tokenizer.enable_padding(pad_id=int(pad_id), pad_token=str(pad_token))
    tokenizer.save(str(path))


def preprocess_config(bundle: ClipBundle) -> PreprocessConfig:
    """Describe the model's image processor (and text length) in ``preprocess.json`` terms."""
    processor = bundle.image_processor

    def get(name: str, default: Any = None) -> Any:
        return getattr(processor, name, default)

    size = _size_dict(get("size"))
    crop = _size_dict(get("crop_size"))
    if not get("do_resize", True):
        resize, shortest, height, width = "none", None, None, None
    elif size.get("shortest_edge"):
        if size.get("longest_edge"):
            raise ConfigError("image processors with a longest_edge limit are not supported")
        resize, shortest, height, width = "shortest_edge", int(size["shortest_edge"]), None, None
    elif size.get("height") and size.get("width"):
        resize, shortest, height, width = "exact", None, int(size["height"]), int(size["width"])
    else:
        raise ConfigError(f"unsupported image processor size {size}")
    center_crop = bool(get("do_center_crop", False))
    if center_crop and not (crop.get("height") and crop.get("width")):
        raise ConfigError(f"unsupported image processor crop size {crop}")
    resample = get("resample", 3)
    resample_name = _RESAMPLE_NAMES.get(int(getattr(resample, "value", resample)))
    if resample_name is None:
        raise ConfigError(f"unsupported resampling filter {resample!r}")
    rescale = float(get("rescale_factor")) if get("do_rescale", True) else None
    normalise = get("do_normalize", True)
    mean, std = get("image_mean"), get("image_std")
    return PreprocessConfig(
        max_length=bundle.max_text_length,
        resize=resize,
        shortest_edge=shortest,
        height=height,
        width=width,
        resample=resample_name,
        center_crop=center_crop,
        crop_height=int(crop.get("height") or height or shortest or 0),
        crop_width=int(crop.get("width") or width or shortest or 0),
        rescale_factor=rescale,
        mean=_three(mean) if normalise else None,
        std=_three(std) if normalise else None,
    )


def _size_dict(size: Any) -> dict[str, Any]:
    """Return a processor size (a dict, transformers' SizeDict or an int) as a plain dict."""
    if size is None:
        return {}
    if isinstance(size, int):
        return {"height": size, "width": size}
    if isinstance(size, dict):
        return {k: v for k, v in size.items() if v is not None}
    keys = ("shortest_edge", "longest_edge", "height", "width")
    return {k: getattr(size, k) for k in keys if getattr(size, k, None) is not None}


def _three(values: Any) -> tuple[float, float, float]:
    items = [float(values)] * 3 if isinstance(values, int | float) else [float(v) for v in values]
    if len(items) != 3:
        raise ConfigError(f"expected 3 channel values, got {values!r}")
    return items[0], items[1], items[2]


def _swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging`` (an existing folder moves aside first)."""
    if target.exists() and not target.is_dir():
        raise StorageError(f"cannot write the ONNX export: {target} is a file")
    if target.exists():
        aside = target.with_name(f".{target.name}.old")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(target, aside)
        os.replace(staging, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staging, target)
