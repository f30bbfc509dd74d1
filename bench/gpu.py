"""GPU figures for training and vectorizing a ViT-B/32-shaped CLIP, in one short run.

A random-init CLIP with the tower shapes of ``openai/clip-vit-base-patch32`` (built by
``tests/support/clip_folder.py``: 12-layer 512-wide text tower over 77 tokens, ViT-B/32 at
224 px, 512-d projections; the compute of the real checkpoint) is measured on the GPU:

- **train**: samples/s of the training loop's own step (``medsearch.train.loop._step``: autocast,
  loss scale, clipping, AdamW, schedule) at batch 64 and 256, in bf16 and fp16, on inputs
  already on the device (the GPU's side alone), after warm-up steps;
- **loader**: images/s of the training data loader (``PairDataset`` + ``Collate``, pinned,
  persistent workers) with 4, 8 and 16 workers at batch 256, over 800x600 JPEGs (MedPix images
  scaled up where ``--medpix`` exists, else synthetic ones): what the GPU side can be fed;
- **vectorize**: images/s end to end (decode included) of ``medsearch.vectorize.vectorize`` (the
  command's path: the torch encoder in fp32, batch 256), and of a pipelined variant over the
  same images: decode + preprocessing in data-loader workers, bf16 autocast forward at batch 256,
  with the smallest cosine between the two's vectors.

Baselines named in the output: the fp32 step for training, one worker for the loader, the
command's path for vectorizing. Without CUDA the script says so and exits 0 (``--device cpu
--quick`` runs every part at toy sizes, to check the script itself). Figures go under ``"gpu"``
in ``bench/results.json`` (other sections are kept).

    .venv/bin/python bench/gpu.py [--quick] [--medpix DIR] [--images 2048]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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

from medsearch.data.manifest import Record  # noqa: E402
from medsearch.data.synth import sample_attributes, write_caption  # noqa: E402
from medsearch.model.encoder import TorchEncoder, pooled  # noqa: E402
from medsearch.model.loading import load_clip  # noqa: E402
from medsearch.model.preprocess import FastImageProcessor, fast_processor  # noqa: E402
from medsearch.train.config import TrainConfig  # noqa: E402
from medsearch.train.data import Collate, PairDataset  # noqa: E402
from medsearch.train.loop import _step  # noqa: E402
from medsearch.train.schedule import build_optimizer, build_scheduler  # noqa: E402
from medsearch.vectorize import vectorize  # noqa: E402
from medsearch.vectors import normalize  # noqa: E402
from tests.support.clip_folder import build_clip_folder  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results.json"
MEDPIX = ROOT.parent / "shared" / "datasets" / "medpix"
SIZE = (800, 600)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, run: Callable[[], object], repeats: int) -> float:
    """Seconds per call of ``run`` (device work included), median of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _captions(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [write_caption(sample_attributes(rng), rng) for _ in range(n)]


def _jpegs(folder: Path, n: int, medpix: Path | None) -> list[Record]:
    """Write ``n`` 800x600 JPEGs (MedPix images scaled up, else synthetic) and their records."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(medpix.rglob("*.jpg"))[:n] if medpix and medpix.is_dir() else []
    rng = np.random.default_rng(0)
    captions = _captions(n)
    records = []
    for i in range(n):
        if sources:
            image = Image.open(sources[i % len(sources)]).convert("RGB").resize(SIZE)
        else:
            noise = rng.integers(0, 255, size=(SIZE[1] // 8, SIZE[0] // 8, 3), dtype=np.uint8)
            image = Image.fromarray(noise).resize(SIZE, Image.Resampling.BICUBIC)
        path = folder / f"img-{i:05d}.jpg"
        image.save(path, quality=90)
        records.append(Record(image_id=f"img-{i:05d}", image=str(path), caption=captions[i]))
    return records


# --- train -----------------------------------------------------------------------------------


def measure_train(
    model_dir: Path, device: torch.device, batches: list[int], steps: int
) -> dict[str, Any]:
    """Training samples/s of the loop's step per (batch, precision), fp32 as the baseline."""
    rows: dict[str, Any] = {}
    precisions = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if device.type != "cuda":
        precisions = {"fp32": None}
    for batch in batches:
        for name, dtype in precisions.items():
            bundle = load_clip(str(model_dir))
            model = bundle.model.to(device).train()
            optimizer = build_optimizer(model, lr=5e-5, weight_decay=0.1, optimizer="adamw")
            scheduler = build_scheduler(
                optimizer, total_steps=10_000, warmup=0.05, schedule="cosine"
            )
            scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
            config = TrainConfig(data="-", out=Path("-"), grad_clip=1.0)
            vocab = bundle.model.config.text_config.vocab_size
            size = bundle.model.config.vision_config.image_size
            inputs = _TrainBatch(
                torch.randint(0, vocab, (batch, 77), device=device),
                torch.ones(batch, 77, dtype=torch.long, device=device),
                torch.randn(batch, 3, size, size, device=device),
            )
            step = functools.partial(
                _step, model, inputs, optimizer, scheduler, scaler, config, device, dtype
            )
            try:
                for _ in range(3):  # warm-up: kernels chosen, allocator settled
                    step()
                seconds = _timed(device, step, steps)
                peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
                rows[f"batch_{batch}_{name}"] = {
                    "samples_per_s": round(batch / seconds, 1),
                    "step_ms": round(seconds * 1000, 2),
                    "peak_gpu_mb": round(peak / 1e6),
                }
            except torch.OutOfMemoryError:
                rows[f"batch_{batch}_{name}"] = {"error": "out of GPU memory"}
            del model, optimizer, scheduler, inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            print(f"train batch {batch} {name}: {rows[f'batch_{batch}_{name}']}", flush=True)
    for batch in batches:
        base = rows.get(f"batch_{batch}_fp32", {}).get("samples_per_s")
        for name in ("bf16", "fp16"):
            row = rows.get(f"batch_{batch}_{name}", {})
            if base and "samples_per_s" in row:
                row["speedup_vs_fp32"] = round(row["samples_per_s"] / base, 2)
    return rows


class _TrainBatch:
    """The fields of a collated batch that the step reads."""

    def __init__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> None:
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.pixel_values = pixel_values


# --- loader ----------------------------------------------------------------------------------


def measure_loader(
    model_dir: Path, records: list[Record], device: torch.device, workers: list[int], batch: int
) -> dict[str, Any]:
    """Images/s of the training loader per worker count (one worker is the baseline)."""
    bundle = load_clip(str(model_dir))
    dataset = PairDataset(records, bundle.image_processor)
    collate = Collate(bundle.tokenizer, bundle.max_text_length)
    rows: dict[str, Any] = {}
    for count in sorted({1, *workers}):
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch,
            shuffle=False,
            collate_fn=collate,
            num_workers=count,
            pin_memory=device.type == "cuda",
            persistent_workers=True,
            prefetch_factor=4,
        )
        first = iter(loader)
        next(first)  # workers started and warm
        del first
        started = time.perf_counter()
        images = 0
        for item in loader:
            pixels = item.pixel_values.to(device, non_blocking=True)
            images += pixels.shape[0]
        _sync(device)
        seconds = time.perf_counter() - started
        rows[f"workers_{count}"] = {"images_per_s": round(images / seconds, 1), "images": images}
        print(f"loader {count} workers: {rows[f'workers_{count}']}", flush=True)
        del loader
    base = rows["workers_1"]["images_per_s"]
    for row in rows.values():
        row["speedup_vs_1_worker"] = round(row["images_per_s"] / base, 2)
    return rows


# --- vectorize -------------------------------------------------------------------------------


class _Pixels(torch.utils.data.Dataset):
    """Records to exact model input (uint8, the fast processor's table) in loader workers."""

    def __init__(self, records: list[Record], image_processor: Any) -> None:
        self.records = records
        self.processor = _exact_processor(image_processor)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.records[index].image) as image:
            return self.processor.to_uint8([image.convert("RGB")])[0]


def _exact_processor(image_processor: Any) -> FastImageProcessor:
    processor = fast_processor(image_processor, reducing_gap=None)
    if not isinstance(processor, FastImageProcessor):
        raise SystemExit("gpu: the model's image processor is not one the fast path reproduces")
    return processor


def _pipelined(
    encoder: TorchEncoder, records: list[Record], workers: int, batch: int
) -> Iterator[np.ndarray]:
    device = encoder.device
    processor = _exact_processor(encoder.bundle.image_processor)
    loader = torch.utils.data.DataLoader(
        _Pixels(records, encoder.bundle.image_processor),
        batch_size=batch,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        for pixels in loader:
            values = processor.normalize(pixels.to(device, non_blocking=True))
            features = encoder.model.get_image_features(pixel_values=values)
            yield pooled(features).float().cpu().numpy()


def measure_vectorize(
    model_dir: Path, records: list[Record], device: torch.device, workers: int, batch: int
) -> dict[str, Any]:
    """Images/s end to end: the command's path against the pipelined bf16 variant."""
    encoder = TorchEncoder(load_clip(str(model_dir)), device=device)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        vectorize(encoder, records, Path(out), batch_size=batch, progress=False)
        command_s = time.perf_counter() - started
        reference = np.load(Path(out) / "vectors.npy")
    started = time.perf_counter()
    vectors = normalize(np.concatenate(list(_pipelined(encoder, records, workers, batch))))
    pipelined_s = time.perf_counter() - started
    cosines = np.sum(vectors * reference, axis=1)
    row = {
        "images": len(records),
        "batch": batch,
        "command_images_per_s": round(len(records) / command_s, 1),
        "pipelined_workers": workers,
        "pipelined_images_per_s": round(len(records) / pipelined_s, 1),
        "speedup": round(command_s / pipelined_s, 2),
        "min_cosine_pipelined_vs_command": round(float(cosines.min()), 6),
    }
    print(f"vectorize: {row}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: check the script")
    parser.add_argument("--medpix", type=Path, default=MEDPIX, help="MedPix folder (optional)")
    parser.add_argument("--images", type=int, default=2048, help="images for loader/vectorize")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu: no CUDA device here: nothing measured", flush=True)
        return 0
    device = torch.device(args.device)
    quick = args.quick
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shape = "small" if quick else "vit-b-32"
        model_dir = build_clip_folder(root / "model", _captions(500), shape=shape)
        records = _jpegs(root / "images", 64 if quick else args.images, args.medpix)
        section: dict[str, Any] = {
            "date": datetime.now(UTC).date().isoformat(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "model": f"random-init CLIP, {shape} shapes",
            "mode": "quick" if quick else "full",
            "train": measure_train(
                model_dir, device, [8, 16] if quick else [64, 256], 2 if quick else 10
            ),
            "loader": measure_loader(
                model_dir, records, device, [2] if quick else [4, 8, 16], 16 if quick else 256
            ),
            "vectorize": measure_vectorize(
                model_dir, records, device, 2 if quick else 8, 16 if quick else 256
            ),
        }
    if not quick:
        write_section(RESULTS, "gpu", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
