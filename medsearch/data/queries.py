"""Query sets: ``queries.jsonl`` beside a manifest, one judged text query per line.

A line is ``{"query": str, "relevant": [image_id, ...]}`` (every listed image has grade 1) and/or
``{"query": str, "relevance": {image_id: grade}}`` with integer grades (higher is more relevant);
when both are present, ``relevance`` wins for the images it names and ``relevant`` adds grade 1 for
the others. Grade 0 means "judged not relevant" and is dropped. Other keys are ignored.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medsearch import storage
from medsearch.data.manifest import manifest_base, validate_image_id
from medsearch.errors import InvalidInputError, ManifestError, StorageError

log = logging.getLogger(__name__)

QUERIES_FILE = "queries.jsonl"


@dataclass(frozen=True)
class Query:
    """A text query and its graded judgments (image id → grade ≥ 1)."""

    query: str
    relevance: Mapping[str, int] = field(default_factory=dict)

    @property
    def relevant(self) -> list[str]:
        """The ids of every image judged relevant, most relevant first."""
        return sorted(self.relevance, key=lambda image_id: -self.relevance[image_id])


def _grade(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def parse_query(raw: object, where: str = "") -> Query:
    """Build a query from one parsed line, or raise ``InvalidInputError`` saying what is wrong."""
    prefix = f"{where}: " if where else ""
    if not isinstance(raw, Mapping):
        raise InvalidInputError(f"{prefix}a query line must be a JSON object")
    text = raw.get("query")
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"{prefix}'query' must be a non-empty string")
    if "relevant" not in raw and "relevance" not in raw:
        raise InvalidInputError(f"{prefix}a query needs 'relevant' (ids) or 'relevance' (grades)")
    relevance: dict[str, int] = {}
    try:
        listed = raw.get("relevant", [])
        if not isinstance(listed, list):
            raise InvalidInputError("'relevant' must be a list of image ids")
        for image_id in listed:
            relevance[validate_image_id(image_id)] = 1
        graded = raw.get("relevance", {})
        if not isinstance(graded, Mapping):
            raise InvalidInputError("'relevance' must be an object of image id → grade")
        for image_id, value in graded.items():
            grade = _grade(value)
            if grade is None or grade < 0:
                raise InvalidInputError(
                    f"grade of {image_id!r} must be a non-negative integer, got {value!r}"
                )
            relevance[validate_image_id(image_id)] = grade
    except (InvalidInputError, ManifestError) as exc:
        raise InvalidInputError(f"{prefix}{exc}") from None
    return Query(text.strip(), {k: v for k, v in relevance.items() if v > 0})


def read_queries(path: str | os.PathLike[str]) -> list[Query]:
    """Read a ``queries.jsonl`` (local or ``s3://``); malformed lines are errors naming the line."""
    text = storage.read_text(path)
    queries: list[Query] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{where}: not valid JSON ({exc.msg})") from None
        queries.append(parse_query(raw, where))
    return queries


def queries_path_beside(manifest: str | os.PathLike[str]) -> str:
    """Return where the query set of a manifest lives: ``queries.jsonl`` in the same folder."""
    return storage.join(manifest_base(manifest), QUERIES_FILE)


def queries_beside(manifest: str | os.PathLike[str]) -> list[Query] | None:
    """Read the ``queries.jsonl`` beside a manifest, or return ``None`` when there is none."""
    path = queries_path_beside(manifest)
    if not storage.is_s3(path):
        if not os.path.isfile(path):
            return None
        return read_queries(path)
    try:
        return read_queries(path)
    except StorageError as exc:  # S3 has no cheap "exists": a missing object reads as an error
        log.info("no query set beside %s (%s)", manifest, exc)
        return None
