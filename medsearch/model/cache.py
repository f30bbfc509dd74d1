"""The local cache of ``s3://`` model folders, keyed by the ETags of the files loading reads.

A training job's model prefix holds far more than the model: checkpoints (GBs for a ViT-B/32),
history, reports, an ONNX export. Only the top-level files that ``from_pretrained`` reads are
fetched. The prefix is listed once per load; the cache folder is named by a hash of the URL and of
the chosen files' ETags, so a retrained model uploaded to the same prefix lands in a new folder
and an unchanged one is reused with no object read at all. Files are streamed to disk side by side
into a staging folder, a manifest is written last and the folder is renamed into place, so a
download that stops midway is never trusted; older folders of the same URL are then removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from medsearch import storage
from medsearch.errors import ConfigError, StorageError
from medsearch.model.names import TRAIN_CONFIG_FILE

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
# Written last into a complete folder: the URL and each file's ETag.
MANIFEST_FILE = ".complete"

# Top-level files that loading a model folder reads besides its weights.
MODEL_FILES = frozenset(
    {
        CONFIG_FILE,
        TRAIN_CONFIG_FILE,  # the model's recorded name
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
        "added_tokens.json",
        "preprocessor_config.json",
        "processor_config.json",
    }
)
_SAFETENSORS = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json")
_PICKLED = re.compile(r"pytorch_model(-\d{5}-of-\d{5})?\.bin|pytorch_model\.bin\.index\.json")
# One entry per weight format: a single file or the index of its shards.
_WEIGHT_ENTRIES = frozenset(
    {
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    }
)

# Files fetched at once; each large one is itself fetched in parallel parts by the store.
_WORKERS = 4


def select_model_files(names: Iterable[str]) -> list[str]:
    """Keep, of the names under a model prefix, the top-level files loading reads, sorted.

    Subfolders (``checkpoints/``, ``onnx/``) and run output (history, reports) are left out, and
    pickled weights too where safetensors exist, since transformers loads those first.
    """
    top = {name for name in names if name and "/" not in name}
    safetensors = {name for name in top if _SAFETENSORS.fullmatch(name)}
    weights = safetensors or {name for name in top if _PICKLED.fullmatch(name)}
    return sorted((top & MODEL_FILES) | weights)


def fetch_model(url: str, cache_root: Path) -> Path:
    """Return a local folder holding the model files under an ``s3://`` prefix, as they are now.

    One listing per call; the files are downloaded only when one of their ETags differs from
    every cached copy. A store that gives no ETags cannot prove a copy current, so its files are
    fetched every time. An object replaced between the listing and its download is cached under
    the old ETag, which the next listing no longer matches, so it is fetched again then.
    """
    base = url.rstrip("/")
    _, key = storage.split_s3(base)
    prefix = f"{key}/" if key else ""
    listing = {info.key[len(prefix) :]: info for info in storage.list_objects(f"{base}/")}
    if not listing:
        raise StorageError(f"nothing found under {base}")
    chosen = {name: listing[name] for name in select_model_files(listing)}
    if CONFIG_FILE not in chosen:
        raise ConfigError(f"{base} is not a model folder: it has no {CONFIG_FILE}")
    if not _WEIGHT_ENTRIES & chosen.keys():
        raise ConfigError(f"{base} has no model weights (model.safetensors or pytorch_model.bin)")
    manifest = {"url": base, "objects": {name: info.etag for name, info in chosen.items()}}
    url_key = _digest(base)
    dest = cache_root / f"{url_key}-{_digest(json.dumps(manifest, sort_keys=True))}"
    known = all(info.etag for info in chosen.values())
    if known and _is_complete(dest, manifest):
        log.debug("model from %s is cached in %s", base, dest)
        return dest
    cache_root.mkdir(parents=True, exist_ok=True)
    # Staged beside the destination so the final rename stays on one file system.
    staging = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".{dest.name}."))
    try:
        _download_all(base, {name: info.size for name, info in chosen.items()}, staging)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, sort_keys=True, indent=1))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    dest = _publish(staging, dest, manifest, reuse=known)
    _remove_older(cache_root, url_key, keep=dest)
    log.info("fetched %d model files from %s into %s", len(chosen), base, dest)
    return dest


def _download_all(base: str, sizes: Mapping[str, int | None], staging: Path) -> None:
    """Fetch the files side by side; the first failure cancels those not yet started."""
    with ThreadPoolExecutor(
        max_workers=min(_WORKERS, len(sizes)), thread_name_prefix="model-fetch"
    ) as pool:
        futures = [
            pool.submit(_download_one, f"{base}/{name}", staging / name, size)
            for name, size in sizes.items()
        ]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _download_one(url: str, path: Path, size: int | None) -> None:
    storage.download_file(url, path)
    got = path.stat().st_size
    # A stream cut short without an error must not pass for the whole file.
    if size is not None and got != size:
        raise StorageError(f"{url}: downloaded {got} bytes, the listing says {size}")


def _publish(staging: Path, dest: Path, manifest: Mapping[str, object], *, reuse: bool) -> Path:
    """Rename the staged folder into place; a copy of the same files published meanwhile by
    another process is kept and ours dropped."""
    if dest.exists():
        if reuse and _is_complete(dest, manifest):
            shutil.rmtree(staging, ignore_errors=True)
            return dest
        shutil.rmtree(dest, ignore_errors=True)
    try:
        os.replace(staging, dest)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if _is_complete(dest, manifest):
            return dest
        raise StorageError(f"cannot move the model into {dest}: {exc.strerror or exc}") from exc
    return dest


def _is_complete(folder: Path, manifest: Mapping[str, object]) -> bool:
    try:
        written = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    names = written.get("objects", {}) if isinstance(written, dict) else {}
    return written == manifest and all((folder / name).is_file() for name in names)


def _remove_older(cache_root: Path, url_key: str, *, keep: Path) -> None:
    """Bound the cache to one copy per URL: drop its other folders (and the single folder the
    earlier whole-prefix cache kept under the same URL hash)."""
    for path in cache_root.iterdir():
        if path != keep and (path.name == url_key or path.name.startswith(f"{url_key}-")):
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed the outdated model copy %s", path)


def _digest(text: str) -> str:
    # 16 hex digits, as the earlier cache named its folders, so its copy is found and removed.
    return hashlib.sha256(text.encode()).hexdigest()[:16]
