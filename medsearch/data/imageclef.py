"""Importer for the ImageCLEF 2017 Caption Prediction data (the reference data set) into a manifest.

The tree has ``training/``, ``validation/`` and ``test/`` folders. Each holds tab-separated
``image_id<TAB>caption`` files (``*.csv``/``*.txt``/``*.tsv``; concept-detection files, whose
names mention "concept", are ignored) and nested image folders, where an image is found by its
file stem (= ``image_id``). The images of a folder may also sit in a top-level folder named as
the data set ships them (``ConceptDetectionValidation2017/``, ``CaptionPredictionTraining2017/``,
...); both layouts are searched. A folder whose captions match no image at all is an error, never
an empty split.

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

Image paths in the manifest are relative to its folder, so the output folder can move (or be
copied under an ``s3://`` prefix) as a whole: images below that folder are referenced in place,
others are hard-linked (copied where the file system cannot link) into its ``images/`` folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
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
from medsearch.errors import InvalidInputError, ManifestError, StorageError

log = logging.getLogger(__name__)

SOURCE_FOLDERS = ("training", "validation", "test")
# The top-level folders the data set's archives unpack to, per original folder.
TOP_LEVEL_FOLDERS = {
    source: tuple(f"{task}{word}2017" for task in ("CaptionPrediction", "ConceptDetection"))
    for source, word in (
        ("training", "Training"),
        ("validation", "Validation"),
        ("test", "Testing"),
    )
}
IMAGES_FOLDER = "images"
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


def image_folders(root: Path, source: str) -> list[Path]:
    """Return where an original folder's images may be: nested in it, then top-level folders."""
    return [root / source, *(root / name for name in TOP_LEVEL_FOLDERS[source])]


def index_images(*folders: Path) -> dict[str, Path]:
    """Map image stem → path for every image file below the folders (first found wins)."""
    images: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                if path.stem in images:
                    log.warning("image %s found twice; using %s", path.stem, images[path.stem])
                    continue
                images[path.stem] = path
    return images


def place_image(image: Path, image_id: str, out_dir: Path) -> Path:
    """Return the image's path inside ``out_dir``: in place if below it, else linked or copied."""
    image = image.resolve()
    if image.is_relative_to(out_dir):
        return image
    target = out_dir / IMAGES_FOLDER / f"{image_id}{image.suffix}"
    try:
        if target.exists():
            if os.path.samefile(image, target):
                return target
            target.unlink()
        try:
            os.link(image, target)
        except OSError:  # another file system, or one without hard links
            shutil.copy2(image, target)
    except OSError as exc:
        raise StorageError(f"cannot place {image} at {target}: {exc.strerror or exc}") from exc
    return target


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
    searched = {name: image_folders(root, name) for name in SOURCE_FOLDERS}
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
        looked_in = [f for f in searched[source] if f.is_dir()]
        places = " or ".join(str(f) for f in looked_in)
        images = index_images(*looked_in)
        captioned = found = 0
        for path in caption_files:
            for image_id, caption, where in read_captions(path):
                if not accept(image_id, where):
                    continue
                captioned += 1
                image = images.get(image_id)
                if image is None:
                    missing.append(image_id)
                    bad.append(BadRecord(image_id, f"{where}: image file not found under {places}"))
                    continue
                found += 1
                seen.add(image_id)
                entries.append((image_id, caption or None, source, image))
        if captioned and not found:
            raise InvalidInputError(
                f"{source}: no image of its {captioned} captioned ids found; looked in "
                + ", ".join(str(f) for f in searched[source])
            )

    test_folder = folders["test"]
    if test_folder.is_dir():
        test_places = [f for f in searched["test"] if f.is_dir()]
        images = index_images(*test_places)
        listed: list[tuple[str, str]] = []
        for path in find_id_lists(test_folder) + find_caption_files(test_folder):
            listed += [(image_id, where) for image_id, _, where in read_captions(path)]
        for image_id, where in listed:
            if image_id not in images and image_id not in seen:
                missing.append(image_id)
                bad.append(
                    BadRecord(
                        image_id,
                        f"{where}: image file not found under "
                        + " or ".join(str(f) for f in test_places),
                    )
                )
                seen.add(image_id)  # report a missing test image once
        for image_id, image in images.items():
            if accept(image_id, str(image)):
                seen.add(image_id)
                entries.append((image_id, None, "test", image))

    splits = _resplit([e[0] for e in entries if e[2] == "training"], seed)
    out_dir = out.parent.resolve()
    (out_dir / IMAGES_FOLDER).mkdir(parents=True, exist_ok=True)
    records = []
    for entry_id, text, source, path in entries:
        split = {"validation": "test", "test": None}.get(source, splits.get(entry_id))
        location = place_image(path, entry_id, out_dir).relative_to(out_dir).as_posix()
        records.append(Record(entry_id, location, text, split, {"source_split": source}))
    with contextlib.suppress(OSError):  # left empty when every image was below out_dir
        (out_dir / IMAGES_FOLDER).rmdir()
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
