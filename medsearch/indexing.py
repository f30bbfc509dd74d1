"""Indexing: join a manifest with the vectors written by ``vectorize`` and build an index.

Every manifest record is indexed: its caption for BM25, its vector (when ``vectorize`` produced
one) for kNN, its metadata for filters. Records without a vector stay searchable by text and are
reported; vectors whose id is not in the manifest are ignored and counted. The model id from the
vectors' ``meta.json`` is stored in the index, so the service can report it and refuse a model
whose vectors do not match.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsearch.data.manifest import Record, read_manifest
from medsearch.index.base import Document
from medsearch.index.embedded import EmbeddedConfig, build_index_with_result
from medsearch.vectorize import read_vectors

log = logging.getLogger(__name__)


@dataclass
class IndexSummary:
    """What an indexing run wrote: counts, the records without a vector, and failures."""

    index: Path
    documents: int
    with_vector: int
    captionless: int
    model_id: str | None
    dim: int | None
    seconds: float
    without_vector: list[str] = field(default_factory=list)
    unknown_vectors: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Return the human-readable summary the CLI prints."""
        out = [
            f"indexed {self.documents} documents into {self.index} in {self.seconds:.1f} s",
            f"  with a vector: {self.with_vector} (model {self.model_id or 'unknown'}, "
            f"dim {self.dim if self.dim is not None else '-'})",
            f"  captionless (vector search only): {self.captionless}",
        ]
        if self.without_vector:
            shown = ", ".join(self.without_vector[:5])
            extra = len(self.without_vector) - 5
            more = f" and {extra} more" if extra > 0 else ""
            out.append(
                f"  without a vector (text search only): {len(self.without_vector)}: {shown}{more}"
            )
        if self.unknown_vectors:
            out.append(f"  vectors of ids not in the manifest (ignored): {self.unknown_vectors}")
        for image_id, reason in self.failed[:10]:
            out.append(f"  failed {image_id}: {reason}")
        if len(self.failed) > 10:
            out.append(f"  ... {len(self.failed) - 10} more failures")
        return out


def documents_from(
    records: Sequence[Record], ids: Sequence[str], vectors: np.ndarray
) -> Iterator[Document]:
    """Yield one Document per record, with its vector when ``ids`` has one for it."""
    slot = {image_id: i for i, image_id in enumerate(ids)}
    for record in records:
        i = slot.get(record.image_id)
        yield Document(
            image_id=record.image_id,
            caption=record.caption,
            vector=vectors[i] if i is not None else None,
            image=record.image,
            metadata=dict(record.metadata),
        )


def index_manifest(
    manifest: str | os.PathLike[str],
    vectors: str | os.PathLike[str],
    index: str | os.PathLike[str],
    *,
    config: EmbeddedConfig | None = None,
) -> IndexSummary:
    """Build the embedded index at ``index`` from a manifest and a ``vectorize`` output folder."""
    started = time.perf_counter()
    records = read_manifest(manifest)
    ids, matrix, meta = read_vectors(Path(vectors))
    model_id = meta.get("model")
    known = {r.image_id for r in records}
    with_vector = set(ids) & known
    built, result = build_index_with_result(
        index, documents_from(records, ids, matrix), model_id=model_id, config=config
    )
    failed_ids = {image_id for image_id, _ in result.failed}
    summary = IndexSummary(
        index=Path(index),
        documents=built.count(),
        with_vector=len(with_vector - failed_ids),
        captionless=sum(1 for r in records if r.caption is None and r.image_id not in failed_ids),
        model_id=model_id,
        dim=built.dim,
        seconds=time.perf_counter() - started,
        without_vector=sorted(known - with_vector - failed_ids),
        unknown_vectors=len(set(ids) - known),
        failed=result.failed,
    )
    log.info("index: %s", "; ".join(line.strip() for line in summary.lines()))
    return summary
