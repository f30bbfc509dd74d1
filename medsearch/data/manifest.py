"""The manifest: the one input format of every pipeline (JSON Lines, or CSV with the same columns).

A record names an image (``image_id``, ``image``), its ``caption`` (missing or empty means a
captionless image) and its ``split``; every other key is kept as metadata for filters.
Relative image paths are resolved against the manifest's own location, so a manifest and its
``images/`` folder can move together (locally or under an ``s3://`` prefix).

A manifest is read whole or refused, never partly: an unterminated CSV quote would otherwise
fold the rows after it into one caption (the index then silently lacks them), so a CSV field may
not span lines (a caption with line breaks goes in a JSON Lines manifest), every row has the
header's number of fields, and the header names each column once. JSON Lines are split on
``\n`` only, so a caption holding U+2028 or another Unicode line separator stays one record.
NUL characters and non-finite numbers (``NaN``) are refused: no engine stores them faithfully;
so is a JSON object naming a key twice (JSON parsers keep one value silently).
A caption over :data:`MAX_CAPTION_BYTES` (UTF-8) is cut at a word boundary, and the record's
metadata keeps its original size as :data:`CAPTION_BYTES_FIELD`, so every engine stores a bounded
caption and a hit says that its caption was cut.
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
# Captions longer than this (UTF-8 bytes) are cut: each hit returns its caption, so one 10 MB
# caption would make every page that finds it 10 MB. MedPix's longest is under 2 KB.
MAX_CAPTION_BYTES = 16 * 1024
# Metadata field of a record whose caption was cut: the caption's original size in UTF-8 bytes.
CAPTION_BYTES_FIELD = "caption_original_bytes"
# A cut at the last space is preferred when it keeps at least this share of the limit.
_WORD_CUT_SHARE = 0.75


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
    _check_no_nul(raw, f"{prefix}{image_id}")
    if caption:
        cut = truncate_caption(caption)
        if cut != caption:
            metadata[CAPTION_BYTES_FIELD] = len(caption.encode("utf-8"))
            caption = cut
    return Record(image_id, resolve_image(image.strip(), base), caption or None, split, metadata)


def truncate_caption(caption: str, limit: int = MAX_CAPTION_BYTES) -> str:
    """Return ``caption`` cut to at most ``limit`` UTF-8 bytes, at a word boundary if one is near.

    The cut never splits a character; it falls on the last whitespace when that keeps at least
    three quarters of the limit (a caption of one huge "word" is cut mid-word instead).
    """
    data = caption.encode("utf-8")
    if len(data) <= limit:
        return caption
    head = data[:limit].decode("utf-8", errors="ignore")  # drops a split trailing character
    space = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    if space >= 0 and len(head[:space].encode("utf-8")) >= _WORD_CUT_SHARE * limit:
        head = head[:space]
    return head.rstrip()


def _check_no_nul(value: Any, where: str) -> None:
    """Refuse NUL characters anywhere in a row: a binary or UTF-16 file read as text has them,
    and neither engine keeps them (tantivy and OpenSearch drop or reject them). Iterative, as a
    JSON value may be nested as deep as the parser allows."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ManifestError(
                    f"{where}: a NUL character in a field (a binary or UTF-16 file?)"
                )
        elif isinstance(item, Mapping):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


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
        yield from _csv_rows(text, name)
        return
    # "\n" only: str.splitlines also splits at U+2028, U+0085, \x0c..., which JSON strings (and
    # write_manifest, with ensure_ascii=False) may hold raw.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_refuse_constant, object_pairs_hook=_one_value)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{name}:{number}: not valid JSON ({exc.msg})") from None
        except ValueError as exc:
            raise ManifestError(f"{name}:{number}: {exc}") from None
        except RecursionError:
            raise ManifestError(f"{name}:{number}: JSON nested too deeply") from None
        yield f"{name}:{number}", row


def _one_value(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build a JSON object, refusing a key given twice (json keeps the last one silently, so a
    second ``caption`` would replace the first unseen, as a CSV column named twice would)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"key {key!r} is given twice in one object")
        obj[key] = value
    return obj


def _refuse_constant(name: str) -> Any:
    """Refuse JSON's non-standard NaN and Infinity: no engine indexes them as numbers."""
    raise ValueError(f"{name} is not a number a manifest may hold")


def _csv_rows(text: str, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, row) of a CSV manifest, refusing what would lose or merge rows."""
    # The csv module refuses fields over 128 KiB (a process-wide limit); a long caption is cut
    # like one in JSON Lines instead. Raised only, to the size of a text already in memory.
    if csv.field_size_limit() < len(text):
        csv.field_size_limit(len(text))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    line = 1  # where the current row starts (reader.line_num is where it ends)
    try:
        header = next(reader, None)
        if header is None:
            return
        _check_header(header, name)
        line = reader.line_num + 1
        for row in reader:
            where = f"{name}:{line}"
            if any("\n" in cell or "\r" in cell for cell in row):
                raise ManifestError(
                    f"{where}: a field spans lines (an unterminated quote?); "
                    "captions with line breaks go in a JSON Lines manifest"
                )
            line = reader.line_num + 1
            if not row:  # a blank line
                continue
            if len(row) != len(header):
                raise ManifestError(
                    f"{where}: {len(row)} fields, the header has {len(header)} (an unquoted comma?)"
                )
            yield where, dict(zip(header, row, strict=True))
    except csv.Error as exc:
        # The csv module's own words for a quote still open at the end of the file.
        hint = "; a quote is never closed" if "unexpected end of data" in str(exc) else ""
        raise ManifestError(f"{name}:{line}: not valid CSV ({exc}{hint})") from None


def _check_header(header: list[str], name: str) -> None:
    """Refuse a CSV header without the required columns, or naming one twice."""
    where = f"{name}:1"
    if any("\n" in cell or "\r" in cell for cell in header):
        raise ManifestError(f"{where}: a header field spans lines (an unterminated quote?)")
    seen: set[str] = set()
    for column in header:
        if column in seen:
            raise ManifestError(f"{where}: column {column!r} is named twice")
        seen.add(column)
    missing = [c for c in ("image_id", "image") if c not in seen]
    if missing:
        raise ManifestError(f"{where}: no column {' or '.join(missing)} in the header")


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
