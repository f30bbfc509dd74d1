"""The training data path against the old one (decode + transformers' image processor), one run.

On the same images, for each image set:

- **throughput per worker**, single-threaded as in a data-loader worker: the old path (full JPEG
  decode + ``CLIPImageProcessorPil``) against the new (draft decode + the fast preprocessor with
  its reducing gap), in images/s, with the ratio;
- **equivalence**: the largest pixel difference of the fast preprocessor against the original,
  exact (no reducing gap) and as training runs it; and the smallest cosine between image
  embeddings of the old and the new path, for the tiny CLIP (64 px) and a random-init CLIP ViT
  (224 px, patch 32, 4 layers of width 256), beside the mean cosine between different images
  (random-init towers map all images close together; that is the scale to read them against).

Image sets: MedPix JPEGs as they are (``--medpix``, at most 384 px: no draft applies at 224 px),
and 800x600 JPEGs (quality 90): MedPix images scaled up, or synthetic images written by this
script when MedPix is absent.

Then **validation per epoch at 16k images**: before, every validation image decoded and
preprocessed in the main process each epoch, then encoded; after, the cached uint8 pixels
(:class:`medsearch.train.data.ValidationPixels`) normalised and encoded. The encoder is a random-
init ViT-B/32-shaped vision tower (hidden 768, 12 layers, patch 32, 224 px) on this machine's
CPU; decode and forward are timed on a subset and scaled to 16,000 images (printed as such). On
a GPU the forward shrinks by orders of magnitude and the decode, which the cache removes, is what
remains of "before".

The figures go under ``"train_data"`` in ``bench/results.json`` (other sections are kept).

    .venv/bin/python bench/train_data.py [--full] [--medpix DIR]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from opensearch import write_section  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import (  # noqa: E402
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from medsearch.data.images import decode_image  # noqa: E402
from medsearch.data.manifest import Record  # noqa: E402
from medsearch.model.encoder import pooled  # noqa: E402
from medsearch.model.preprocess import FastImageProcessor, fast_processor  # noqa: E402
from medsearch.model.tiny import TinyClipSpec, build_tiny_clip, tiny_image_processor  # noqa: E402
from medsearch.train.data import ValidationPixels  # noqa: E402
from medsearch.vectors import normalize  # noqa: E402
from tests.support.clip_folder import SHAPES  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results.json"
SECTION = "train_data"
VALIDATION_N = 16_000


def synthetic_jpegs(n: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """Smooth shapes on a gradient with mild noise, as JPEG: content a DCT treats like a scan."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for _ in range(n):
        image = 40 + 60 * x / width + 30 * y / height
        for _ in range(6):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            rx, ry = rng.uniform(20, width / 3), rng.uniform(20, height / 3)
            inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
            image = np.where(inside, image + rng.uniform(-60, 90), image)
        image = image + rng.normal(0, 6, image.shape)
        gray = np.clip(image, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(gray).convert("RGB").save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def image_sets(medpix: Path, n: int) -> dict[str, list[bytes]]:
    """The JPEG bytes of each image set (see the module docstring)."""
    files = sorted((medpix / "images").glob("*.jpg")) if medpix.is_dir() else []
    if not files:
        print(f"MedPix not found at {medpix}: synthetic 800x600 JPEGs only")
        return {"synthetic_800x600": synthetic_jpegs(n, (800, 600))}
    step = max(1, len(files) // n)
    raw = [f.read_bytes() for f in files[::step][:n]]
    scaled = []
    for data in raw:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        buffer = io.BytesIO()
        image.resize((800, 600), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
        scaled.append(buffer.getvalue())
    return {"medpix": raw, "medpix_800x600": scaled}


def per_second(fn: Callable[[bytes], Any], items: list[bytes], rounds: int = 2) -> float:
    """Items per second of ``fn``, best of ``rounds`` passes (a busy machine only slows)."""
    fn(items[0])
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - started)
    return len(items) / best


def random_vit(seed: int = 0) -> tuple[CLIPModel, CLIPImageProcessorPil]:
    """A random-init CLIP with a small ViT (224 px, patch 32) and CLIP's default processor."""
    vision = {
        "image_size": 224,
        "patch_size": 32,
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
    }
    text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1}
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=128))
    return model.eval(), CLIPImageProcessorPil()


def embed(model: Any, pixels: torch.Tensor) -> np.ndarray:
    """Unit image embeddings of float32 model input."""
    with torch.inference_mode():
        return normalize(pooled(model.get_image_features(pixel_values=pixels)).numpy())


def measure_set(name: str, items: list[bytes], models: dict[str, tuple[Any, Any]]) -> dict:
    """Throughput and equivalence of the old and the new path on one image set."""
    row: dict[str, Any] = {"images": len(items)}
    sizes = [Image.open(io.BytesIO(d)).size for d in items]
    row["median_size"] = [
        int(np.median([s[0] for s in sizes])),
        int(np.median([s[1] for s in sizes])),
    ]
    for model_name, (model, processor) in models.items():
        fast = fast_processor(processor)
        exact = fast_processor(processor, reducing_gap=None)
        assert isinstance(fast, FastImageProcessor) and isinstance(exact, FastImageProcessor)
        draft = fast.draft_size()

        def old(data: bytes, processor: Any = processor) -> torch.Tensor:
            image = decode_image(data)
            return processor(images=[image], return_tensors="pt")["pixel_values"]

        def new(data: bytes, fast: FastImageProcessor = fast, draft: Any = draft) -> torch.Tensor:
            return fast([decode_image(data, draft_size=draft)])

        old_rate, new_rate = per_second(old, items), per_second(new, items)
        full = [decode_image(d) for d in items]
        reference = torch.cat([old(d) for d in items])
        diff_exact = float((exact(full) - reference).abs().max())
        diff_gap = float((fast(full) - reference).abs().max())
        old_vectors = embed(model, reference)
        cosines = (old_vectors * embed(model, torch.cat([new(d) for d in items]))).sum(1)
        # How alike two different images look to this model: a random-init tower maps all
        # images close together, so the cosines above mean something only beside this one.
        between = old_vectors @ old_vectors.T
        between_mean = float(between[~np.eye(len(items), dtype=bool)].mean())
        row[model_name] = {
            "old_images_per_s": round(old_rate, 1),
            "new_images_per_s": round(new_rate, 1),
            "ratio": round(new_rate / old_rate, 2),
            "draft_size": list(draft),
            "max_abs_diff_exact": diff_exact,
            "max_abs_diff_reducing_gap": diff_gap,
            "min_cosine_new_vs_old": round(float(cosines.min()), 6),
            "mean_cosine_new_vs_old": round(float(cosines.mean()), 6),
            "mean_cosine_between_images": round(between_mean, 6),
        }
        r = row[model_name]
        print(
            f"{name:>16} {model_name:>10}: old {old_rate:7.1f} img/s, new {new_rate:7.1f} img/s"
            f" ({r['ratio']:.2f}x); max |diff| exact {diff_exact:.2g}, with reducing gap"
            f" {diff_gap:.3g}; cosine new vs old min {r['min_cosine_new_vs_old']:.6f}"
            f" mean {r['mean_cosine_new_vs_old']:.6f} (between images {between_mean:.4f})",
            flush=True,
        )
    return row


def vit_b32_tower() -> CLIPVisionModelWithProjection:
    """A random-init vision tower shaped like CLIP ViT-B/32 (88M parameters)."""
    shape = SHAPES["vit-b-32"]
    vision = shape["vision"]
    config = CLIPVisionConfig(
        hidden_size=vision["hidden_size"],
        intermediate_size=4 * vision["hidden_size"],
        num_hidden_layers=vision["layers"],
        num_attention_heads=vision["heads"],
        patch_size=vision["patch_size"],
        image_size=vision["image_size"],
        projection_dim=shape["projection_dim"],
    )
    torch.manual_seed(0)
    return CLIPVisionModelWithProjection(config).eval()


def measure_validation(items: list[bytes], subset: int, batch: int) -> dict[str, Any]:
    """Validation per epoch before (decode every epoch) and after (cached pixels), scaled to 16k."""
    processor = CLIPImageProcessorPil()
    tower = vit_b32_tower()
    chosen = (items * (subset // len(items) + 1))[:subset]
    with tempfile.TemporaryDirectory() as tmp:
        records = []
        for i, data in enumerate(chosen):
            path = Path(tmp) / f"{i}.jpg"
            path.write_bytes(data)
            records.append(
                Record(image_id=str(i), image=str(path), caption="c", split="validation")
            )

        def forward(pixels: torch.Tensor) -> None:
            with torch.inference_mode():
                tower(pixel_values=pixels)

        # Before: what evaluate_model does per epoch, in the main process.
        started = time.perf_counter()
        prep_s = 0.0
        for start in range(0, subset, batch):
            t0 = time.perf_counter()
            images = [
                decode_image(Path(r.image).read_bytes()) for r in records[start : start + batch]
            ]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            prep_s += time.perf_counter() - t0
            forward(pixels)
        before_s = time.perf_counter() - started
        # The cache, built once (two workers here), then each epoch's forward on it.
        t0 = time.perf_counter()
        cache = ValidationPixels.build(records, processor, limit=subset, num_workers=2)
        build_s = time.perf_counter() - t0
        started = time.perf_counter()
        for pixels in cache.batches(batch, torch.device("cpu")):
            forward(pixels)
        after_s = time.perf_counter() - started
    scale = VALIDATION_N / subset
    out = {
        "measured_images": subset,
        "encoder": "random-init ViT-B/32-shaped vision tower (768 wide, 12 layers, 224 px), CPU",
        "threads": torch.get_num_threads(),
        "before_epoch_s_16k": round(before_s * scale, 1),
        "before_decode_preprocess_s_16k": round(prep_s * scale, 1),
        "after_epoch_s_16k": round(after_s * scale, 1),
        "ratio": round(before_s / after_s, 2),
        "cache_build_once_s_16k": round(build_s * scale, 1),
        "cache_bytes_16k": int(cache.nbytes * scale),
        "cache_bytes_default_limit_2000": int(cache.nbytes / subset * 2000),
    }
    gb_16k, mb_2000 = out["cache_bytes_16k"] / 1e9, out["cache_bytes_default_limit_2000"] / 1e6
    print(
        f"validation per epoch, {subset} images measured, scaled to {VALIDATION_N:,}:"
        f" before {out['before_epoch_s_16k']} s"
        f" (decode + preprocess {out['before_decode_preprocess_s_16k']} s of it),"
        f" after {out['after_epoch_s_16k']} s (forward only), {out['ratio']}x;"
        f" the cache builds once in {out['cache_build_once_s_16k']} s"
        f" and holds {gb_16k:.2f} GB at 16k ({mb_2000:.0f} MB at the default 2,000)",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure every image set and the validation epoch, print them and write the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="more images (several minutes)")
    parser.add_argument("--medpix", type=Path, default=ROOT.parent / "shared/datasets/medpix")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n, subset = (400, 256) if args.full else (100, 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a data-loader worker runs single-threaded
    tiny = build_tiny_clip(["a chest ct", "a knee mri"], spec=TinyClipSpec())
    models = {
        "tiny_64px": (tiny.model.eval(), tiny_image_processor(TinyClipSpec())),
        "vit_224px": random_vit(),
    }
    sets = {
        name: measure_set(name, items, models) for name, items in image_sets(args.medpix, n).items()
    }
    torch.set_num_threads(threads)
    validation = measure_validation(list(image_sets(args.medpix, 32).values())[-1], subset, 32)
    section = {
        "mode": "full" if args.full else "quick",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "per_worker": sets,
        "validation": validation,
    }
    write_section(args.results, SECTION, section)
    print(f"wrote the {SECTION!r} section of {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
