"""The manifest: the one input format of every pipeline (JSON Lines, or CSV with the same columns).

A record names an image (``image_id``, ``image``), its ``caption`` (missing or empty means a
captionless image) and its ``split``; every other key is kept as metadata for filters.
Relative image paths are resolved against the manifest's own location, so a manifest and its
``images/`` folder can move together (locally or under an ``s3://`` prefix).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsearch import storage
from medsearch.errors import ManifestError

SPLITS = ("train", "validation", "test")
ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
CORE_FIELDS = ("image_id", "image", "caption", "split")


def validate_image_id(image_id: object) -> str:
    """Return a valid image id or raise: ids become file names and URL paths, so they are strict."""
    if not isinstance(image_id, str) or not ID_PATTERN.fullmatch(image_id):
        raise ManifestError(
            f"invalid image_id {image_id!r}: use 1-128 characters from A-Z a-z 0-9 . _ -"
        )
    if image_id in {".", ".."}:
        raise ManifestError(f"invalid image_id {image_id!r}: '.' and '..' are not ids")
    return image_id


@dataclass(frozen=True)
class Record:
    """One manifest line: an image, its caption (``None`` if captionless), split and metadata."""

    image_id: str
    image: str
    caption: str | None = None
    split: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_caption(self) -> bool:
        """Whether the record has a caption (captionless images stay searchable by vector)."""
        return self.caption is not None

    def to_json(self, base: str | None = None) -> dict[str, Any]:
        """Return the manifest line, the image path made relative to ``base`` where possible."""
        image = self.image
        if base is not None and not storage.is_s3(image) and not storage.is_s3(base):
            with contextlib.suppress(ValueError):  # not below base: keep it absolute
                image = Path(image).relative_to(Path(base)).as_posix()
        line: dict[str, Any] = {"image_id": self.image_id, "image": image}
        line["caption"] = self.caption
        if self.split is not None:
            line["split"] = self.split
        line.update(self.metadata)
        return line


@dataclass
class BadRecord:
    """A record a pipeline skipped, with the reason (written to the run's report)."""

    image_id: str
    reason: str

    def to_json(self) -> dict[str, str]:
        """Return the report line."""
        return {"image_id": self.image_id, "reason": self.reason}


def parse_record(raw: Mapping[str, Any], base: str, where: str = "") -> Record:
    """Build a record from one manifest row, resolving the image against the manifest's folder."""
    prefix = f"{where}: " if where else ""
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{prefix}a record must be a JSON object")
    try:
        image_id = validate_image_id(raw.get("image_id"))
    except ManifestError as exc:
        raise ManifestError(f"{prefix}{exc}") from None
    image = raw.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ManifestError(f"{prefix}{image_id}: missing 'image'")
    caption = raw.get("caption")
    if caption is not None and not isinstance(caption, str):
        raise ManifestError(f"{prefix}{image_id}: 'caption' must be a string")
    caption = caption.strip() if caption else None
    split = raw.get("split") or None
    if split is not None and split not in SPLITS:
        raise ManifestError(
            f"{prefix}{image_id}: split {split!r} is not one of {', '.join(SPLITS)}"
        )
    metadata = {k: v for k, v in raw.items() if k not in CORE_FIELDS and v not in (None, "")}
    return Record(image_id, resolve_image(image.strip(), base), caption or None, split, metadata)


def resolve_image(image: str, base: str) -> str:
    """Resolve an image location: ``s3://`` and absolute paths stay, relative ones join ``base``."""
    if storage.is_s3(image) or os.path.isabs(image):
        return image
    return storage.join(base, image)


def manifest_base(manifest: str | os.PathLike[str]) -> str:
    """Return the folder relative image paths are resolved against."""
    text = str(manifest)
    if storage.is_s3(text):
        return text.rsplit("/", 1)[0]
    return str(Path(text).resolve().parent)


def iter_rows(manifest: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, raw row) from a JSON Lines or CSV manifest."""
    text = storage.read_text(manifest)
    name = str(manifest)
    if name.lower().endswith(".csv"):
        for number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            yield f"{name}:{number}", {k: v for k, v in row.items() if k is not None}
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{name}:{number}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{name}:{number}: not valid JSON ({exc.msg})") from None


def read_manifest(manifest: str | os.PathLike[str], split: str | None = None) -> list[Record]:
    """Read and validate a whole manifest; duplicate ids and malformed rows are errors.

    Manifest errors are structural (the file is wrong), unlike unreadable images, which pipelines
    skip and report.
    """
    if split is not None and split not in SPLITS:
        raise ManifestError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    base = manifest_base(manifest)
    records: list[Record] = []
    seen: set[str] = set()
    for where, raw in iter_rows(manifest):
        record = parse_record(raw, base, where)
        if record.image_id in seen:
            raise ManifestError(f"{where}: duplicate image_id {record.image_id!r}")
        seen.add(record.image_id)
        if split is None or record.split == split:
            records.append(record)
    return records


def write_manifest(path: str | os.PathLike[str], records: Iterable[Record]) -> None:
    """Write records as JSON Lines, with image paths relative to the manifest where possible."""
    base = manifest_base(path)
    lines = (json.dumps(r.to_json(base), ensure_ascii=False) for r in records)
    storage.write_text(path, "".join(line + "\n" for line in lines))


def write_report(path: str | os.PathLike[str], bad: Iterable[BadRecord]) -> None:
    """Write skipped records (id and reason) as JSON Lines."""
    storage.write_text(path, "".join(json.dumps(b.to_json()) + "\n" for b in bad))
