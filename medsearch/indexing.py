"""Indexing: join a manifest with the vectors written by ``vectorize`` and build an index.

Every manifest record is indexed: its caption for BM25, its vector (when ``vectorize`` produced
one) for kNN, its metadata for filters. Records without a vector stay searchable by text and are
reported; vectors whose id is not in the manifest are ignored and counted. The model id and the
weight fingerprint from the vectors' ``meta.json`` are stored in the index, so the service can
report the model and refuse, at startup, one whose weights are not those the vectors came from.

The join (:func:`read_index_input`) and its summary are shared by every engine: the embedded
index built here (:func:`index_manifest`) and the OpenSearch run index ``medsearch load`` fills.
Before an index replaces a live one, :mod:`medsearch.publish_guard` checks that it is not empty
and does not drop too many of the live one's documents (the live index stays as it was).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medsearch.data.manifest import (
    CAPTION_BYTES_FIELD,
    MAX_CAPTION_BYTES,
    Record,
    read_manifest,
)
from medsearch.errors import SearchIndexError
from medsearch.index.base import Document
from medsearch.publish_guard import PublishGuardConfig, check_publish
from medsearch.relevance import VectorFloor
from medsearch.vectorize import read_vectors

if TYPE_CHECKING:
    from medsearch.index.embedded import EmbeddedConfig

log = logging.getLogger(__name__)

MAX_CAPTION_KIB = MAX_CAPTION_BYTES // 1024


@dataclass
class IndexSummary:
    """What an indexing run wrote: counts, the records without a vector, and failures."""

    index: Path | str  # a folder (embedded) or a physical index name (OpenSearch)
    documents: int
    with_vector: int
    captionless: int
    model_id: str | None
    dim: int | None
    seconds: float
    without_vector: list[str] = field(default_factory=list)
    unknown_vectors: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    fingerprint: str | None = None
    # Captions cut to MAX_CAPTION_BYTES on reading (their original size is in their metadata).
    truncated_captions: int = 0

    def lines(self) -> list[str]:
        """Return the human-readable summary the CLI prints."""
        out = [
            f"indexed {self.documents} documents into {self.index} in {self.seconds:.1f} s",
            f"  with a vector: {self.with_vector} (model {self.model_id or 'unknown'}, "
            f"weights {self.fingerprint or 'unknown'}, "
            f"dim {self.dim if self.dim is not None else '-'})",
            f"  captionless (vector search only): {self.captionless}",
        ]
        if self.truncated_captions:
            out.append(
                f"  captions cut to {MAX_CAPTION_KIB} KiB: {self.truncated_captions} "
                f"(their original size is in metadata {CAPTION_BYTES_FIELD!r})"
            )
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


@dataclass(frozen=True)
class IndexInput:
    """A manifest joined with a ``vectorize`` output: the documents every engine indexes."""

    records: list[Record]
    ids: list[str]
    vectors: np.ndarray
    model_id: str | None
    # The weight fingerprint of the model that made the vectors (None: vectors from before them).
    fingerprint: str | None = None
    # The vectors' calibrated cosine floor (medsearch.relevance; None: vectors from before it).
    vector_floor: VectorFloor | None = None

    @property
    def dim(self) -> int | None:
        """The vectors' dimension, or None when there are none."""
        return int(self.vectors.shape[1]) if len(self.ids) else None

    def documents(self) -> Iterator[Document]:
        """Yield one Document per manifest record, with its vector where there is one."""
        return documents_from(self.records, self.ids, self.vectors)

    def summary(
        self,
        index: Path | str,
        *,
        documents: int,
        dim: int | None,
        seconds: float,
        failed: list[tuple[str, str]],
    ) -> IndexSummary:
        """Return what indexing these documents into ``index`` did (``failed``: id, reason)."""
        known = {r.image_id for r in self.records}
        with_vector = set(self.ids) & known
        failed_ids = {image_id for image_id, _ in failed}
        return IndexSummary(
            index=index,
            documents=documents,
            with_vector=len(with_vector - failed_ids),
            captionless=sum(
                1 for r in self.records if r.caption is None and r.image_id not in failed_ids
            ),
            model_id=self.model_id,
            dim=dim,
            seconds=seconds,
            without_vector=sorted(known - with_vector - failed_ids),
            unknown_vectors=len(set(self.ids) - known),
            failed=failed,
            fingerprint=self.fingerprint,
            truncated_captions=sum(1 for r in self.records if CAPTION_BYTES_FIELD in r.metadata),
        )


def read_index_input(
    manifest: str | os.PathLike[str], vectors: str | os.PathLike[str]
) -> IndexInput:
    """Read a manifest and the vectors ``vectorize`` wrote for it (raises on unusable input)."""
    records = read_manifest(manifest)
    ids, matrix, meta = read_vectors(Path(vectors))
    fingerprint = meta.get("fingerprint")
    return IndexInput(
        records=records,
        ids=ids,
        vectors=matrix,
        model_id=meta.get("model"),
        fingerprint=str(fingerprint) if fingerprint else None,
        vector_floor=VectorFloor.from_json(
            meta.get("vector_floor"), int(matrix.shape[1]) if len(ids) else None
        ),
    )


def index_manifest(
    manifest: str | os.PathLike[str],
    vectors: str | os.PathLike[str],
    index: str | os.PathLike[str],
    *,
    config: EmbeddedConfig | None = None,
    guard: PublishGuardConfig | None = None,
) -> IndexSummary:
    """Build the embedded index at ``index`` from a manifest and a ``vectorize`` output folder.

    Refused (the index left as it was) when the manifest is empty or has far fewer records than
    the live index has documents, as ``guard`` says (default: :class:`PublishGuardConfig`).
    """
    # Imported here: the join above serves the OpenSearch load too, which needs no faiss.
    from medsearch.index.embedded import build_index_with_result

    started = time.perf_counter()
    source = read_index_input(manifest, vectors)
    check_publish(
        live_document_count(index),
        len(source.records),
        guard or PublishGuardConfig(),
        what=f"the live index {index}",
    )
    built, result = build_index_with_result(
        index,
        source.documents(),
        model_id=source.model_id,
        fingerprint=source.fingerprint,
        config=config,
        vector_floor=source.vector_floor,
    )
    summary = source.summary(
        Path(index),
        documents=built.count(),
        dim=built.dim,
        seconds=time.perf_counter() - started,
        failed=result.failed,
    )
    log.info("index: %s", "; ".join(line.strip() for line in summary.lines()))
    return summary


def live_document_count(index: str | os.PathLike[str]) -> int | None:
    """Return the document count of the embedded index at ``index`` (None: there is none).

    An index that cannot be opened counts as none: there is nothing live to protect, and refusing
    would leave no way to rebuild a damaged index.
    """
    from medsearch.index.embedded import CURRENT, open_index

    if not (Path(index) / CURRENT).exists():
        return None
    try:
        return open_index(index).count()
    except SearchIndexError as exc:
        log.warning("index: the index at %s cannot be opened (%s); replacing it", index, exc)
        return None
