"""Cold start of the search API Lambda for a ViT-B/32-sized CLIP: fp32 against int8 (the baseline
is fp32), each measured in fresh Python processes.

Builds a CLIP of ViT-B/32's shape with the project's tiny-model tools (random weights: load and
inference times do not depend on their values): 224 px images in 32 px patches, a 12-layer
768-wide vision transformer, a 12-layer 512-wide text transformer over 77 tokens with a
49,408-token embedding table, 512-d embeddings (about 151M parameters). ``export_onnx`` writes
both towers in fp32 and int8 into ``--workdir`` (kept: later runs reuse the export). Then, for
each precision, ``--runs`` fresh processes each measure:

- import: ``import lambdas.search_api.handler`` (settings read, app built: Lambda's init phase);
- build: what the service build spends on the model, the tokenizer and both ONNX sessions
  (:func:`medsearch.api.load_encoder` on the handler's settings); the S3 download and the
  index-record read that a real build also does are left out (no network here);
- the first text query and the first image (512x512, preprocessing included), then a second
  of each (warm);
- RSS after the import, and the process's peak RSS at the end.

In up to three interpreters: ``dev``, this environment (the repo, Python 3.11, with bytecode
caches); ``package``, the built ``build/search_api`` (``make lambda-package``) alone in the
runtime's CPython (python3.12) without bytecode, as Lambda runs it (the zip holds none and nothing
can write ``__pycache__`` into /var/task); ``package+pyc``, the same with python3.12 bytecode
compiled beforehand outside the package (what shipping bytecode would buy). The package runs are
skipped where the build or python3.12 is missing.
Figures are medians over the runs. The measured process is pinned to ``--cpus`` cores (default 1:
a Lambda function gets one vCPU per 1,769 MB of memory, and onnxruntime uses every core it
has). The figures go under ``"cold_start"`` in
``bench/results.json`` (other sections are kept).

    .venv/bin/python bench/cold_start.py [--runs 3] [--workdir build/bench/cold_start]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Only the standard library at the top: the same file runs as the measured child process, in
# interpreters that have neither torch nor the repo on their path.
ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results.json"
WORKDIR = ROOT / "build" / "bench" / "cold_start"
MODEL_ID = "vit-b-32-shaped-random"
BASELINE = "fp32"
PRECISIONS = ("fp32", "int8")
CPUS_VARIABLE = "COLD_START_CPUS"
QUERY = "axial ct of the chest: spiculated nodule in the left lower lobe"
# What the fresh process reports, in the order of the printed table.
FIGURES = (
    "import_s",
    "build_s",
    "first_text_ms",
    "first_image_ms",
    "warm_text_ms",
    "warm_image_ms",
    "rss_after_import_mib",
    "peak_rss_mib",
)


# --- the measured process ------------------------------------------------------------------------


def status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), in MiB.

    ``VmHWM`` (peak resident set) rather than ``ru_maxrss``: the latter survives ``exec``, so a
    child started by this benchmark would report the parent's peak (the exporting model's).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(paths: list[str]) -> dict[str, float]:
    """Measure one cold start in this process (the environment names the model and precision)."""
    cpus = int(os.environ.get(CPUS_VARIABLE, "0"))
    if cpus:  # before anything starts a thread pool
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cpus])
    sys.path[:0] = paths
    started = time.perf_counter()
    import lambdas.search_api.handler as handler

    figures = {
        "import_s": time.perf_counter() - started,
        "rss_after_import_mib": status_mib("VmRSS"),
    }
    from medsearch.api import load_encoder

    started = time.perf_counter()
    encoder = load_encoder(handler.SETTINGS)
    figures["build_s"] = time.perf_counter() - started
    assert encoder is not None, "MEDSEARCH_MODEL is not set"
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    for when in ("first", "warm"):
        started = time.perf_counter()
        encoder.encode_texts([QUERY])
        figures[f"{when}_text_ms"] = (time.perf_counter() - started) * 1000
    for when in ("first", "warm"):
        started = time.perf_counter()
        encoder.encode_images([image])
        figures[f"{when}_image_ms"] = (time.perf_counter() - started) * 1000
    figures["peak_rss_mib"] = status_mib("VmHWM")
    return figures


def run_child(
    python: str, flags: list[str], paths: list[str], model: Path, int8: bool, cpus: int
) -> dict[str, float]:
    """Start a fresh interpreter on this file in child mode; return what it measured."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "MEDSEARCH_OPENSEARCH_URL": "https://search.example.com",
        "MEDSEARCH_OPENSEARCH_AUTH": "none",
        "MEDSEARCH_MODEL": str(model),
        "MEDSEARCH_ONNX_INT8": "true" if int8 else "false",
        "AWS_DEFAULT_REGION": "us-east-1",
        CPUS_VARIABLE: str(cpus),
    }
    command = [python, *flags, str(Path(__file__).resolve()), "--child", *paths]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"the measured process failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --- the model -----------------------------------------------------------------------------------


def build_export(workdir: Path) -> Path:
    """Build the ViT-B/32-shaped CLIP and export it (fp32 + int8), unless already there."""
    out = workdir / "onnx"
    if (out / "vision.int8.onnx").is_file():
        return out
    import numpy as np
    import torch

    from medsearch.data.synth import sample_attributes, write_caption
    from medsearch.model.loading import MODEL_CLASSES, ClipBundle
    from medsearch.model.onnx_export import export_onnx
    from medsearch.model.tiny import (
        TinyClipSpec,
        tiny_config,
        tiny_image_processor,
        train_tokenizer,
    )
    from tests.support.clip_folder import CONTEXT_LENGTH, SHAPES

    shape = SHAPES["vit-b-32"]
    text, vision = shape["text"], shape["vision"]
    spec = TinyClipSpec(
        image_size=vision["image_size"],
        vision="vit",
        patch_size=vision["patch_size"],
        vision_width=vision["hidden_size"],
        vision_layers=vision["layers"],
        vision_heads=vision["heads"],
        text_width=text["hidden_size"],
        text_layers=text["layers"],
        text_heads=text["heads"],
        max_text_length=CONTEXT_LENGTH,
        projection_dim=shape["projection_dim"],
        vocab_size=shape["vocab_size"],
    )
    rng = np.random.default_rng(0)
    captions = [write_caption(sample_attributes(rng), rng) for _ in range(2000)]
    tokenizer = train_tokenizer(captions, vocab_size=spec.vocab_size, max_length=CONTEXT_LENGTH)
    config: Any = tiny_config(tokenizer, spec)
    # The BPE learnt from synthetic captions is far smaller than CLIP's: keep CLIP's table size
    # (ids stay below it), so the text tower weighs what ViT-B/32's does.
    config.text_config.vocab_size = spec.vocab_size
    torch.manual_seed(0)
    model = MODEL_CLASSES[config.model_type](config)
    params = sum(p.numel() for p in model.parameters())
    print(f"built a ViT-B/32-shaped CLIP: {params / 1e6:.1f}M parameters; exporting ...")
    bundle = ClipBundle(model, tokenizer, tiny_image_processor(spec), MODEL_ID)
    started = time.perf_counter()
    export_onnx(bundle, out, int8=True, model_id=MODEL_ID)
    print(f"  exported (fp32 + int8) in {time.perf_counter() - started:.0f} s", flush=True)
    return out


def export_sizes(folder: Path) -> dict[str, float]:
    """MiB of what each precision's encoder downloads (its towers, tokenizer and small files)."""
    shared = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix != ".onnx")
    towers = {
        "fp32": ("text.onnx", "vision.onnx"),
        "int8": ("text.int8.onnx", "vision.int8.onnx"),
    }
    return {
        precision: round((shared + sum((folder / n).stat().st_size for n in names)) / 2**20, 1)
        for precision, names in towers.items()
    }


# --- the run -------------------------------------------------------------------------------------


def interpreters(runtime_dir: Path) -> dict[str, tuple[str, list[str], list[str]]]:
    """Each interpreter to measure in: (executable, flags, sys.path entries to put first)."""
    found = {"dev": (sys.executable, [], [str(ROOT)])}
    from lambdas.package import FUNCTIONS, RUNTIME_PROVIDED, find_runtime_python

    package = FUNCTIONS["search_api"].dest
    python = find_runtime_python()
    if python is None or not (package / "lambdas" / "search_api" / "handler.py").is_file():
        print("package: skipped (needs `make lambda-package` and python3.12)")
        return found
    # What the runtime provides beside the package (boto3, botocore), linked from here.
    import importlib

    for name in RUNTIME_PROVIDED:
        module_file = importlib.import_module(name).__file__
        assert module_file is not None
        (runtime_dir / name).symlink_to(Path(module_file).parent)
    paths = [str(package), str(runtime_dir)]
    # -I -S: only the standard library, the package and the runtime's modules; -B: no bytecode.
    found["package"] = (python, ["-I", "-S", "-B"], paths)
    # The same with bytecode compiled beforehand (kept outside the package): what shipping
    # python3.12 bytecode in the zip would give.
    prefix = f"pycache_prefix={runtime_dir / 'pycache'}"
    found["package+pyc"] = (python, ["-I", "-S", "-X", prefix], paths)
    return found


def write_section(path: Path, key: str, section: dict[str, Any]) -> None:
    """Set ``key`` in the JSON file at ``path`` to ``section``, keeping the other keys."""
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
    data[key] = section
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # other benchmarks write other keys: a reader never sees half a file


def median_figures(samples: list[dict[str, float]]) -> dict[str, float]:
    """Median of each figure over the runs, rounded for the results file."""
    out = {}
    for name in FIGURES:
        value = statistics.median(s[name] for s in samples)
        out[name] = round(value, 3 if name.endswith("_s") else 1)
    return out


def print_table(figures: dict[str, dict[str, dict[str, float]]]) -> None:
    """Print each interpreter's figures per precision, with int8 / fp32 ratios."""
    for where, by_precision in figures.items():
        print(f"\n{where}          " + "".join(f"{p:>10}" for p in PRECISIONS) + "   int8/fp32")
        for name in FIGURES:
            row = [by_precision[p][name] for p in PRECISIONS]
            base = by_precision[BASELINE][name]
            ratio = row[1] / base if base else float("inf")
            print(f"  {name:<22}" + "".join(f"{v:10.2f}" for v in row) + f"   {ratio:8.2f}x")


def main(argv: list[str] | None = None) -> int:
    """Build and export the model if needed, measure every interpreter and precision, write."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1:])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per measurement")
    parser.add_argument(
        "--cpus",
        type=int,
        default=1,
        help="cores the measured process may use (1: a 1,769 MB function's one vCPU; 0: all)",
    )
    parser.add_argument("--workdir", type=Path, default=WORKDIR, help="where the export is kept")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON file to update")
    parser.add_argument("--no-results", action="store_true", help="print only, write nothing")
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(1, str(ROOT))  # run as a script, sys.path[0] is bench/
    model = build_export(args.workdir)
    sizes = export_sizes(model)
    print(f"export: {model} ({', '.join(f'{p} {s:.0f} MiB' for p, s in sizes.items())})")
    figures: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as runtime_dir:
        for where, (python, flags, paths) in interpreters(Path(runtime_dir)).items():
            figures[where] = {}
            for precision in PRECISIONS:
                print(f"{where} {precision}: {args.runs} fresh processes ...", flush=True)
                if where.endswith("+pyc") and precision == PRECISIONS[0]:
                    run_child(python, flags, paths, model, False, args.cpus)  # writes the bytecode
                samples = [
                    run_child(python, flags, paths, model, precision == "int8", args.cpus)
                    for _ in range(args.runs)
                ]
                figures[where][precision] = median_figures(samples)
    print_table(figures)
    if not args.no_results:
        section = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": MODEL_ID,
            "cpus": os.cpu_count(),
            "cpus_measured": args.cpus or os.cpu_count(),
            "load_average": round(os.getloadavg()[0], 2),
            "runs": args.runs,
            "baseline": BASELINE,
            "download_mib": sizes,
            "interpreters": {
                "dev": f"Python {sys.version.split()[0]}, this environment, bytecode cached",
                "package": "python3.12 on build/search_api alone, no bytecode (as on Lambda)",
                "package+pyc": "the same with python3.12 bytecode compiled beforehand",
            },
            "figures": figures,
            "ratios_int8_over_fp32": {
                where: {
                    name: round(by["int8"][name] / by[BASELINE][name], 3)
                    for name in FIGURES
                    if by[BASELINE][name]
                }
                for where, by in figures.items()
            },
        }
        write_section(args.results, "cold_start", section)
        print(f"\nwritten under 'cold_start' in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
