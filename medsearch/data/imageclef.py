"""Importer for the ImageCLEF 2017 Caption Prediction data (the reference data set) into a manifest.

The tree has ``training/``, ``validation/`` and ``test/`` folders. Each holds tab-separated
``image_id<TAB>caption`` files (``*.csv``/``*.txt``/``*.tsv``; concept-detection files, whose
names mention "concept", are ignored) and nested image folders, where an image is found by its
file stem (= ``image_id``).

The reference resplit is reproduced:

- the original ``validation`` folder becomes ``test``;
- the original ``training`` folder is shuffled with a seeded RNG (ids sorted first, so the result
  does not depend on file order) and cut 90:10 into ``train``/``validation``, with
  ``validation = round(n / 10)``: 16,461 of 164,614 at full size, leaving 148,153 to train;
- the caption-less ``test`` folder becomes captionless records **without a split**: they are
  indexed and searchable by vector, but neither trained on nor evaluated (as ``test`` they would
  add 10,000 caption-less distractors to the reference test pool and change its protocol).

Every record keeps ``source_split`` (the original folder) as metadata. Images missing on disk,
invalid or duplicate ids are left out and reported (``<manifest stem>.bad_records.jsonl``), never
fatal.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medsearch.data.manifest import (
    BadRecord,
    Record,
    validate_image_id,
    write_manifest,
    write_report,
)
from medsearch.errors import InvalidInputError, ManifestError

log = logging.getLogger(__name__)

SOURCE_FOLDERS = ("training", "validation", "test")
CAPTION_SUFFIXES = {".csv", ".txt", ".tsv"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".dcm", ".tif", ".tiff", ".bmp", ".gif"}
VALIDATION_SHARE = 0.1
_HEADER_IDS = {"image_id", "id", "image", "imageid", "image id"}


@dataclass
class ImportResult:
    """What an import wrote: the manifest, per-split counts and what it had to leave out."""

    manifest: Path
    counts: dict[str, int]
    missing: list[str] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    report: Path | None = None


def validation_size(n: int) -> int:
    """Return how many of ``n`` training images go to validation: ``round(n / 10)``, half up."""
    return int(n * VALIDATION_SHARE + 0.5)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        log.warning("%s is not UTF-8; reading it as Latin-1", path)
        return data.decode("latin-1")


def _sample_lines(path: Path) -> list[str]:
    """Return the first non-empty lines of a candidate id or caption file ([] if not one)."""
    if path.suffix.lower() not in CAPTION_SUFFIXES or "concept" in path.name.lower():
        return []
    return [line for line in _read_text(path).splitlines()[:20] if line.strip()]


def _is_caption_file(path: Path) -> bool:
    lines = _sample_lines(path)
    return bool(lines) and all("\t" in line for line in lines)


def find_caption_files(folder: Path) -> list[Path]:
    """Return the tab-separated caption files under a folder (sorted; "caption" names first)."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and _is_caption_file(p)]
    named = [p for p in files if "caption" in p.name.lower()]
    return named or files


def find_id_lists(folder: Path) -> list[Path]:
    """Return plain id lists (one image id per line, no tab) under a folder, e.g. a test list."""
    found = []
    for path in sorted(folder.rglob("*")):
        lines = _sample_lines(path) if path.is_file() else []
        if lines and not any("\t" in line for line in lines):
            found.append(path)
    return found


def index_images(folder: Path) -> dict[str, Path]:
    """Map image stem → path for every image file below a folder (first in sorted order wins)."""
    images: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in images:
                log.warning("image %s found twice; using %s", path.stem, images[path.stem])
                continue
            images[path.stem] = path
    return images


def read_captions(path: Path) -> list[tuple[str, str, str]]:
    """Return ``(image_id, caption, where)`` rows of one tab-separated caption file."""
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        image_id, _, caption = line.partition("\t")
        image_id = image_id.strip()
        if number == 1 and image_id.lower() in _HEADER_IDS:
            continue
        rows.append((image_id, " ".join(caption.split()), f"{path}:{number}"))
    return rows


def import_imageclef(root: Path, out: Path, seed: int = 42) -> ImportResult:
    """Turn an ImageCLEF 2017 caption-prediction tree into a manifest with the reference resplit."""
    root, out = Path(root), Path(out)
    folders = {name: root / name for name in SOURCE_FOLDERS}
    if not any(folder.is_dir() for folder in folders.values()):
        raise InvalidInputError(
            f"{root} has none of the folders {', '.join(SOURCE_FOLDERS)}: not an ImageCLEF tree"
        )
    bad: list[BadRecord] = []
    missing: list[str] = []
    seen: set[str] = set()
    # (image_id, caption or None, source folder, image path)
    entries: list[tuple[str, str | None, str, Path]] = []

    def accept(image_id: str, where: str) -> bool:
        try:
            validate_image_id(image_id)
        except ManifestError as exc:
            bad.append(BadRecord(image_id or "?", f"{where}: {exc}"))
            return False
        if image_id in seen:
            bad.append(BadRecord(image_id, f"{where}: duplicate image_id"))
            return False
        return True

    for source in ("training", "validation"):
        folder = folders[source]
        if not folder.is_dir():
            log.warning("%s: no %s/ folder", root, source)
            continue
        caption_files = find_caption_files(folder)
        if not caption_files:
            raise InvalidInputError(f"{folder}: no tab-separated image_id<TAB>caption file found")
        images = index_images(folder)
        for path in caption_files:
            for image_id, caption, where in read_captions(path):
                if not accept(image_id, where):
                    continue
                image = images.get(image_id)
                if image is None:
                    missing.append(image_id)
                    bad.append(BadRecord(image_id, f"{where}: image file not found under {folder}"))
                    continue
                seen.add(image_id)
                entries.append((image_id, caption or None, source, image))

    test_folder = folders["test"]
    if test_folder.is_dir():
        images = index_images(test_folder)
        listed: list[tuple[str, str]] = []
        for path in find_id_lists(test_folder) + find_caption_files(test_folder):
            listed += [(image_id, where) for image_id, _, where in read_captions(path)]
        for image_id, where in listed:
            if image_id not in images and image_id not in seen:
                missing.append(image_id)
                bad.append(
                    BadRecord(image_id, f"{where}: image file not found under {test_folder}")
                )
                seen.add(image_id)  # report a missing test image once
        for image_id, image in images.items():
            if accept(image_id, str(image)):
                seen.add(image_id)
                entries.append((image_id, None, "test", image))

    splits = _resplit([e[0] for e in entries if e[2] == "training"], seed)
    records = []
    for entry_id, text, source, path in entries:
        split = {"validation": "test", "test": None}.get(source, splits.get(entry_id))
        records.append(Record(entry_id, str(path.resolve()), text, split, {"source_split": source}))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(out, records)
    counts = Counter(r.split or "none" for r in records)
    result = ImportResult(
        manifest=out,
        counts={
            "train": counts["train"],
            "validation": counts["validation"],
            "test": counts["test"],
            "captionless": sum(1 for r in records if r.caption is None),
            "records": len(records),
        },
        missing=missing,
        bad=bad,
    )
    if bad:
        result.report = out.with_name(out.stem + ".bad_records.jsonl")
        write_report(result.report, bad)
        log.warning("%d ImageCLEF entries left out (see %s)", len(bad), result.report)
    return result


def _resplit(training_ids: list[str], seed: int) -> dict[str, str]:
    """Split the original training ids 90:10 into train/validation by a seeded shuffle."""
    ids = sorted(training_ids)
    random.Random(seed).shuffle(ids)
    n_validation = validation_size(len(ids))
    return {
        image_id: "validation" if i < n_validation else "train" for i, image_id in enumerate(ids)
    }
