"""The embedded engine: BM25 (tantivy) + kNN (faiss HNSW, exact fallback) in one folder.

Libraries were picked by measurement on a 2-core machine at 185k MedPix-like captions (top 100
of 3-6 term queries, while choosing): SQLite FTS5 ``ORDER BY bm25`` 32-118 ms, bm25s 1-8 ms,
tantivy 0.3-1.5 ms, so BM25 runs in tantivy. Its BM25 is Lucene's (k1 = 1.2, b = 0.75, the same
idf and length normalisation, one-byte length norms), only multiplied by the constant ``k1 + 1``,
which is divided out so ``text_score`` is ``BM25Similarity``'s, as on every engine
(:mod:`medsearch.index.analysis`). Captions are analysed
by :mod:`medsearch.index.analysis`; a query is built from the analysed terms as an OR of term
clauses (what OpenSearch's ``match`` query does), never through tantivy's query parser, so no
query text can be read as syntax. Captionless documents are not in the text index at all, so the
document count and average length that BM25 uses are those of captioned documents, as in Lucene.
Vectors: faiss HNSW (M 16, efConstruction 40). Its recall@10 on embedding-like vectors at 185k,
measured while choosing: 0.91 at efSearch 128, 0.977 at 256, 0.991 at 384, 0.996 at 512 (about
3 ms), so efSearch is 384. IVF-Flat (1024 lists) built in 9 s but reached only 0.80 at nprobe 64
on such vectors, and PCA-128 or 8-bit codes under the graph saved too little build time to pay
for their complexity. Collections up to ``EmbeddedConfig.exact_below`` vectors, and selective
filters, are searched exactly (faiss brute force).

``bench/search_latency.py`` at 185k documents (one full run on a quiet machine, p50 of the search
part, top 10): build 38.5 s (text 2.0 s, HNSW 31.1 s); text 0.53 ms against 71.8 ms for SQLite
FTS5, vector 2.49 ms against 18.3 ms for numpy exact search, hybrid 3.62 ms against 115 ms;
vector recall@10 0.989 against exact search.

On-disk layout (``<index>/``)::

    CURRENT              name of the live generation (replaced atomically with os.replace)
    .lock                flock held by a writer while it builds
    gen-000007/          one complete, immutable generation
      meta.json          format, count, dim, model_id, model_fingerprint (the weights that
                         made the vectors), vector_floor (their calibrated cosine floor),
                         facet fields, ANN kind (written last)
      docs.jsonl         one row per document, sorted by image_id:
                         {"image_id", "caption", "image", "metadata"}
      docs_offsets.npy   int64 [n + 1]: byte offset of each row's line (rows parsed on demand)
      image_ids.json     the rows' image ids, in row order
      filters.json       [field, term, count] of every metadata term, most common first
      filter_rows.npy    int64: the rows of each term, concatenated in filters.json's order
      vectors.npy        float32 [m, dim] unit vectors of the rows that have one
      vector_rows.npy    int64 [m]: row of each vector
      hnsw.faiss         faiss IndexHNSWFlat (inner product) over vectors.npy, when m > exact_below
      text/              tantivy index of the captioned rows (row, caption, image_id, filter terms)
    .gen-000008.tmp/     a generation being written (removed by the next writer if left behind)

Every write (bulk build, upsert, delete) writes a whole new generation aside, then points CURRENT
at it, so a crash at any moment (even SIGKILL) leaves the previous generation whole and readable,
and a reader sees either the old or the new generation, never a mix. The previous generation is
kept so a reader that has just read CURRENT can still open it; older ones are removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import mmap
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import tantivy

from medsearch import storage
from medsearch.data.manifest import validate_image_id
from medsearch.errors import InvalidInputError, MedsearchError, SearchIndexError
from medsearch.fusion import check_alpha, confident_total, fuse
from medsearch.index.analysis import (
    ANALYZER_NAME,
    LEGACY_BM25_FACTOR,
    analyze,
    build_analyzer,
)
from medsearch.index.base import (
    MAX_K,
    Document,
    Filters,
    Hit,
    IndexModel,
    SearchPage,
    SearchQuery,
    TotalRelation,
    UpsertResult,
)
from medsearch.relevance import VectorFloor
from medsearch.vectors import normalize

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CURRENT = "CURRENT"
LOCK = ".lock"
GEN_PATTERN = re.compile(r"gen-(\d{6})")
TMP_PATTERN = re.compile(r"\.gen-(\d{6})\.tmp")
# Deepest result a query may page to (OpenSearch's default index.max_result_window).
MAX_RESULT_WINDOW = 10_000
# tantivy scores like LegacyBM25Similarity: BM25Similarity times (k1 + 1).
_TANTIVY_BM25_FACTOR = LEGACY_BM25_FACTOR
_FILTER_SEP = "\x1f"
_NO_VECTOR_TERM = "\x00novector"
_TEXT_HEAP_BYTES = 256 * 1024 * 1024
# One query is answered on one thread: on two busy cores, OpenMP's fork/join made a single
# exact or HNSW search 10-30x slower (measured 52 ms vs 1.8 ms for 20k x 512). Builds, which do
# parallelise, take every core while they run.
_BUILD_THREADS = faiss.omp_get_max_threads()
faiss.omp_set_num_threads(1)


@dataclass(frozen=True)
class EmbeddedConfig:
    """Build and search settings of the embedded engine (stored with each generation).

    facet_fields: metadata fields offered as facets; ``None`` picks them automatically: fields
    whose values are strings or booleans (lists of them count value by value) with at most
    ``facet_max_values`` distinct values, so free text, ids and numbers such as ages (even
    written as strings) are left out.
    Every metadata field can be filtered on, facet or not.
    """

    hnsw_m: int = 16
    ef_construction: int = 40
    ef_search: int = 384
    exact_below: int = 10_000
    exact_fraction: float = 0.1
    facet_fields: tuple[str, ...] | None = None
    facet_max_values: int = 50

    def to_json(self) -> dict[str, Any]:
        """Return the settings as JSON-ready values (stored in meta.json)."""
        data = asdict(self)
        data["facet_fields"] = list(self.facet_fields) if self.facet_fields is not None else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmbeddedConfig:
        """Rebuild settings stored by :meth:`to_json` (unknown keys are ignored)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if known.get("facet_fields") is not None:
            known["facet_fields"] = tuple(known["facet_fields"])
        return cls(**known)


# --- metadata terms ------------------------------------------------------------------------------


def metadata_terms(value: Any) -> list[str]:
    """Return the filterable string forms of a metadata value (lists count element by element)."""
    if value is None:
        return []
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, str | int | float):
        return [str(value)]
    if isinstance(value, list | tuple):
        return [term for item in value for term in metadata_terms(item)]
    return []  # nested objects are kept but not filterable


_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")


def _facet_candidate(value: Any) -> bool:
    """Tell whether a value is categorical: a non-numeric string, a bool, or a list of them."""
    if isinstance(value, list | tuple):
        return all(_facet_candidate(item) for item in value)
    if isinstance(value, str):
        return not _NUMBER.fullmatch(value.strip())
    return isinstance(value, bool)


def choose_facet_fields(metadata: Sequence[Mapping[str, Any]], max_values: int) -> list[str]:
    """Pick the categorical metadata fields with at most ``max_values`` distinct values."""
    values: dict[str, set[str]] = {}
    rejected: set[str] = set()
    for meta in metadata:
        for key, value in meta.items():
            if key in rejected:
                continue
            if not _facet_candidate(value):
                rejected.add(key)
                values.pop(key, None)
                continue
            seen = values.setdefault(key, set())
            seen.update(metadata_terms(value))
            if len(seen) > max_values:
                rejected.add(key)
                values.pop(key, None)
    return sorted(values)


# --- one generation, loaded ----------------------------------------------------------------------


class _DocStore:
    """Each row's caption, image and metadata, parsed from its ``docs.jsonl`` line when asked.

    Opening a generation then reads only the ids and the lines' byte offsets: parsing every
    line took about a second at 185k documents, most of ``medsearch serve``'s start, while a
    request reads the ten rows of its page. The file is memory-mapped (shared page cache, no
    copy). A generation written before the offsets were stored is parsed whole into ``rows``.
    """

    def __init__(
        self,
        *,
        data: mmap.mmap | None = None,
        offsets: np.ndarray | None = None,
        rows: list[dict[str, Any]] | None = None,
    ) -> None:
        self._data = data
        self._offsets = offsets
        self._rows = rows

    @classmethod
    def mapped(cls, path: Path, offsets: np.ndarray) -> _DocStore:
        """Map ``path``, whose row ``i`` is the bytes ``offsets[i]:offsets[i + 1]``."""
        if offsets.shape[0] < 1 or int(offsets[-1]) == 0:
            return cls(rows=[])
        with path.open("rb") as handle:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        if len(data) != int(offsets[-1]):
            raise SearchIndexError(
                f"cannot read {path}: {len(data)} bytes, its rows end at {int(offsets[-1])}"
            )
        return cls(data=data, offsets=offsets)

    def row(self, row: int) -> dict[str, Any]:
        """Return row ``row``'s ``{"caption", "image", "metadata"}`` (a fresh dict)."""
        if self._rows is not None:
            return dict(self._rows[row])
        assert self._data is not None and self._offsets is not None
        line = self._data[int(self._offsets[row]) : int(self._offsets[row + 1])]
        doc = json.loads(line)
        return {
            "caption": doc.get("caption"),
            "image": doc.get("image"),
            "metadata": doc.get("metadata") or {},
        }


@dataclass
class _Filters:
    """Metadata terms to their rows (for filters) and every field's value counts (facets)."""

    postings: dict[tuple[str, str], np.ndarray]
    # Every metadata field's values with their document counts, most common first.
    value_counts: dict[str, dict[str, int]]


@dataclass
class _Generation:
    """Everything a reader needs from one immutable generation.

    ``filters`` is built on the first filtered query or facet request (from ``filters.json`` and
    ``filter_rows.npy`` where the generation has them, else from every row's metadata), so an
    index opens without reading them.
    """

    name: str
    path: Path
    meta: dict[str, Any]
    config: EmbeddedConfig
    image_ids: list[str]
    docs: _DocStore
    vectors: np.ndarray  # [m, dim] float32
    vector_rows: np.ndarray  # [m] int64
    row_vector: np.ndarray  # [n] int64, -1 where a row has no vector
    hnsw: Any | None
    text_index: tantivy.Index | None
    searcher: tantivy.Searcher | None
    schema: tantivy.Schema | None
    row_of: dict[str, int] = field(default_factory=dict)
    any_captioned_without_vector: bool = False
    _filters: _Filters | None = None
    _filters_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def dim(self) -> int | None:
        """The vector dimension, or None when the generation has no vectors."""
        dim = self.meta.get("dim")
        return int(dim) if dim is not None else None

    @property
    def filters(self) -> _Filters:
        """The metadata postings and value counts, read once on first use."""
        if self._filters is None:
            with self._filters_lock:
                if self._filters is None:
                    self._filters = _read_filters(self)
        return self._filters

    @property
    def postings(self) -> dict[tuple[str, str], np.ndarray]:
        """Rows per (field, term)."""
        return self.filters.postings

    @property
    def value_counts(self) -> dict[str, dict[str, int]]:
        """Every field's values with their document counts, most common first."""
        return self.filters.value_counts


def _build_filters(metadata: Iterable[Mapping[str, Any]]) -> _Filters:
    """Postings and value counts from every row's metadata, in row order."""
    rows_of: dict[tuple[str, str], list[int]] = {}
    for row, meta_row in enumerate(metadata):
        for key, value in meta_row.items():
            for term in set(metadata_terms(value)):
                rows_of.setdefault((key, term), []).append(row)
    postings = {key: np.asarray(rows, dtype=np.int64) for key, rows in rows_of.items()}
    value_counts: dict[str, dict[str, int]] = {}
    # One pass over the postings, most common value first, ties by value.
    for (key, term), rows in sorted(rows_of.items(), key=lambda kv: (-len(kv[1]), kv[0][1])):
        value_counts.setdefault(key, {})[term] = len(rows)
    return _Filters(postings, value_counts)


def _write_filters(gen_dir: Path, filters: _Filters) -> None:
    """Store the postings: ``filters.json`` lists [field, term, count] in value-count order and
    ``filter_rows.npy`` holds the rows of each, concatenated in that order."""
    table = [
        (key, term, count)
        for key, counts in filters.value_counts.items()
        for term, count in counts.items()
    ]
    rows = [filters.postings[(key, term)] for key, term, _ in table]
    flat = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    np.save(gen_dir / "filter_rows.npy", flat.astype(np.int64, copy=False))
    (gen_dir / "filters.json").write_text(json.dumps(table, ensure_ascii=False), "utf-8")


def _read_filters(gen: _Generation) -> _Filters:
    """Read the stored postings, or rebuild them from the rows where none are stored."""
    table_path = gen.path / "filters.json"
    if not table_path.is_file():
        return _build_filters(gen.docs.row(row)["metadata"] for row in range(len(gen.image_ids)))
    try:
        table = json.loads(table_path.read_text("utf-8"))
        flat = np.load(gen.path / "filter_rows.npy")
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"cannot read the filters of {gen.path}: {exc}") from exc
    postings: dict[tuple[str, str], np.ndarray] = {}
    value_counts: dict[str, dict[str, int]] = {}
    start = 0
    for key, term, count in table:
        postings[(key, term)] = flat[start : start + count]
        value_counts.setdefault(key, {})[term] = count
        start += count
    if start != flat.shape[0]:
        raise SearchIndexError(f"the filters of {gen.path} are corrupt: row counts disagree")
    return _Filters(postings, value_counts)


def _read_generation(gen_dir: Path) -> _Generation:
    """Load one generation folder; raise SearchIndexError if any part is missing or unreadable."""
    try:
        meta = json.loads((gen_dir / "meta.json").read_text("utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            raise SearchIndexError(
                f"index generation {gen_dir} has format {meta.get('format')!r}, "
                f"this version reads {FORMAT_VERSION}: rebuild it with `medsearch index`"
            )
        config = EmbeddedConfig.from_json(meta.get("config", {}))
        image_ids, docs = _read_docs(gen_dir)
        if len(image_ids) != meta["count"]:
            raise SearchIndexError(
                f"index generation {gen_dir} is corrupt: {len(image_ids)} documents, "
                f"meta.json says {meta['count']}"
            )
        vectors = np.load(gen_dir / "vectors.npy", mmap_mode="r")
        vector_rows = np.load(gen_dir / "vector_rows.npy")
        if vectors.shape[0] != vector_rows.shape[0]:
            raise SearchIndexError(f"index generation {gen_dir} is corrupt: vector count mismatch")
        hnsw = None
        if (gen_dir / "hnsw.faiss").exists():
            # Memory-mapped: the graph and its vectors are paged in as searches touch them, and
            # shared with other processes serving the same index (0.04 s instead of 0.3 s at
            # 185k documents).
            hnsw = faiss.read_index(str(gen_dir / "hnsw.faiss"), faiss.IO_FLAG_MMAP_IFC)
            if hnsw.ntotal != vectors.shape[0]:
                raise SearchIndexError(f"index generation {gen_dir} is corrupt: HNSW size mismatch")
        text_index = tantivy.Index.open(str(gen_dir / "text"))
        text_index.register_tokenizer(ANALYZER_NAME, build_analyzer())
    except SearchIndexError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise SearchIndexError(f"cannot read index generation {gen_dir}: {exc}") from exc
    row_vector = np.full(len(image_ids), -1, dtype=np.int64)
    row_vector[vector_rows] = np.arange(vector_rows.shape[0], dtype=np.int64)
    gen = _Generation(
        name=gen_dir.name,
        path=gen_dir,
        meta=meta,
        config=config,
        image_ids=image_ids,
        docs=docs,
        vectors=vectors,
        vector_rows=vector_rows,
        row_vector=row_vector,
        hnsw=hnsw,
        text_index=text_index,
        searcher=text_index.searcher(),
        schema=text_index.schema,
    )
    gen.row_of = {image_id: row for row, image_id in enumerate(image_ids)}
    stored = meta.get("captioned_without_vector")
    if isinstance(stored, bool):
        gen.any_captioned_without_vector = stored
    else:
        gen.any_captioned_without_vector = any(
            docs.row(row)["caption"] is not None and row_vector[row] < 0
            for row in range(len(image_ids))
        )
    return gen


def _read_docs(gen_dir: Path) -> tuple[list[str], _DocStore]:
    """The ids, and the rows: mapped where the generation stores ids and offsets, else parsed."""
    ids_path, offsets_path = gen_dir / "image_ids.json", gen_dir / "docs_offsets.npy"
    if ids_path.is_file() and offsets_path.is_file():
        image_ids = json.loads(ids_path.read_text("utf-8"))
        offsets = np.load(offsets_path)
        if offsets.shape[0] != len(image_ids) + 1:
            raise SearchIndexError(f"index generation {gen_dir} is corrupt: offsets disagree")
        return image_ids, _DocStore.mapped(gen_dir / "docs.jsonl", offsets)
    image_ids = []
    rows = []
    with (gen_dir / "docs.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            image_ids.append(doc["image_id"])
            rows.append(
                {
                    "caption": doc.get("caption"),
                    "image": doc.get("image"),
                    "metadata": doc.get("metadata") or {},
                }
            )
    return image_ids, _DocStore(rows=rows)


# --- writing a generation ------------------------------------------------------------------------


def _text_schema() -> tantivy.Schema:
    """Return the tantivy schema: a row fast field, the analysed caption and raw filter terms."""
    builder = tantivy.SchemaBuilder()
    builder.add_integer_field("row", stored=False, indexed=False, fast=True)
    # Term frequencies are enough: BM25 needs no positions, and the index builds faster.
    builder.add_text_field(
        "caption", stored=False, tokenizer_name=ANALYZER_NAME, index_option="freq"
    )
    builder.add_text_field("image_id", stored=False, tokenizer_name="raw", index_option="basic")
    builder.add_text_field("filter", stored=False, tokenizer_name="raw", index_option="basic")
    return builder.build()


def _filter_term(key: str, value: str) -> str:
    return f"{key}{_FILTER_SEP}{value}"


def _write_generation(
    gen_dir: Path,
    docs: Sequence[_Row],
    vectors: np.ndarray,
    dim: int | None,
    model: IndexModel,
    config: EmbeddedConfig,
) -> None:
    """Write a complete generation into ``gen_dir`` (a fresh temporary folder); meta.json last."""
    gen_dir.mkdir(parents=True)
    started = time.perf_counter()
    vector_rows = np.asarray([row for row, doc in enumerate(docs) if doc.has_vector], np.int64)
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    with (gen_dir / "docs.jsonl").open("wb") as handle:
        for row, doc in enumerate(docs):
            line = {
                "image_id": doc.image_id,
                "caption": doc.caption,
                "image": doc.image,
                "metadata": doc.metadata,
            }
            data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
            handle.write(data)
            offsets[row + 1] = offsets[row] + len(data)
    # What a reader opens with: the ids and where each row's line starts (see _DocStore).
    np.save(gen_dir / "docs_offsets.npy", offsets)
    (gen_dir / "image_ids.json").write_text(
        json.dumps([doc.image_id for doc in docs], ensure_ascii=False), "utf-8"
    )
    _write_filters(gen_dir, _build_filters(doc.metadata for doc in docs))
    np.save(gen_dir / "vectors.npy", vectors)
    np.save(gen_dir / "vector_rows.npy", vector_rows)

    schema = _text_schema()
    (gen_dir / "text").mkdir()
    text_index = tantivy.Index(schema, path=str(gen_dir / "text"))
    text_index.register_tokenizer(ANALYZER_NAME, build_analyzer())
    # One thread and a large heap: one segment, written in row order.
    writer = text_index.writer(heap_size=_TEXT_HEAP_BYTES, num_threads=1)
    for row, doc in enumerate(docs):
        if doc.caption is None:
            continue
        terms = [_filter_term(k, t) for k, v in doc.metadata.items() for t in metadata_terms(v)]
        if not doc.has_vector:
            terms.append(_NO_VECTOR_TERM)
        writer.add_document(
            tantivy.Document(row=row, caption=doc.caption, image_id=doc.image_id, filter=terms)
        )
    writer.commit()
    writer.wait_merging_threads()
    text_s = time.perf_counter() - started

    ann = "exact"
    ann_started = time.perf_counter()
    if vectors.shape[0] > config.exact_below:
        ann = "hnsw"
        hnsw = faiss.IndexHNSWFlat(vectors.shape[1], config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = config.ef_construction
        hnsw.hnsw.efSearch = config.ef_search
        faiss.omp_set_num_threads(_BUILD_THREADS)
        try:
            hnsw.add(np.ascontiguousarray(vectors))
        finally:
            faiss.omp_set_num_threads(1)
        faiss.write_index(hnsw, str(gen_dir / "hnsw.faiss"))
    facet_fields = (
        list(config.facet_fields)
        if config.facet_fields is not None
        else choose_facet_fields([doc.metadata for doc in docs], config.facet_max_values)
    )
    meta = {
        "format": FORMAT_VERSION,
        "count": len(docs),
        "vectors": int(vectors.shape[0]),
        "dim": dim,
        "model_id": model.model_id,
        "model_fingerprint": model.fingerprint,
        "vector_floor": model.vector_floor.to_json() if model.vector_floor else None,
        "ann": ann,
        "facet_fields": facet_fields,
        "captioned_without_vector": any(d.caption is not None and not d.has_vector for d in docs),
        "config": config.to_json(),
        "build_seconds": {
            "text": round(text_s, 3),
            "ann": round(time.perf_counter() - ann_started, 3),
            "total": round(time.perf_counter() - started, 3),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta_path = gen_dir / "meta.json"
    with meta_path.open("w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    log.info(
        "wrote %s: %d documents, %d vectors (%s) in %.1f s (text %.1f s)",
        gen_dir.name,
        len(docs),
        vectors.shape[0],
        ann,
        time.perf_counter() - started,
        text_s,
    )


@dataclass(frozen=True)
class _Row:
    """A validated document ready to be written (vector kept separately, in row order)."""

    image_id: str
    caption: str | None
    image: str | None
    metadata: dict[str, Any]
    has_vector: bool


def _check_vector(image_id: str, vector: Any, dim: int | None) -> np.ndarray:
    """Return a unit float32 vector or raise InvalidInputError naming the document."""
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1:
        raise InvalidInputError(f"{image_id}: vector must be one-dimensional, got {array.shape}")
    if dim is not None and array.shape[0] != dim:
        raise InvalidInputError(
            f"{image_id}: vector has dimension {array.shape[0]}, the index holds {dim}"
        )
    return array


# --- the engine ----------------------------------------------------------------------------------


class EmbeddedIndex:
    """The default engine: one folder on disk, implementing the SearchIndex protocol.

    Open an existing index with :meth:`open`, or :meth:`create` an empty one; :func:`build_index`
    writes a whole corpus in one generation.
    """

    def __init__(self, path: str | os.PathLike[str], generation: _Generation) -> None:
        self.path = Path(path)
        self._gen = generation
        self._write_lock = threading.Lock()

    # constructors

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> EmbeddedIndex:
        """Open the live generation of an index folder; SearchIndexError if missing or corrupt."""
        return cls(path, _load_current(Path(path)))

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        model_id: str | None = None,
        fingerprint: str | None = None,
        config: EmbeddedConfig | None = None,
    ) -> EmbeddedIndex:
        """Open the index at ``path``, or create an empty one there if the folder holds none."""
        root = Path(path)
        if (root / CURRENT).exists():
            return cls.open(root)
        return build_index(root, [], model_id=model_id, fingerprint=fingerprint, config=config)

    # properties

    @property
    def dim(self) -> int | None:
        """The vector dimension, or ``None`` while the index holds no vectors."""
        return self._gen.dim

    @property
    def model_id(self) -> str | None:
        """The id of the model whose vectors the index holds (reported by the API)."""
        return self._gen.meta.get("model_id")

    def indexed_model(self) -> IndexModel:
        """Return the model id, weight fingerprint and calibrated cosine floor of the live
        generation's vectors."""
        fingerprint = self._gen.meta.get("model_fingerprint")
        floor = VectorFloor.from_json(self._gen.meta.get("vector_floor"), self.dim)
        return IndexModel(self.model_id, str(fingerprint) if fingerprint else None, floor)

    @property
    def generation(self) -> str:
        """The name of the generation this object reads."""
        return self._gen.name

    @property
    def config(self) -> EmbeddedConfig:
        """The settings the live generation was built with."""
        return self._gen.config

    def info(self) -> dict[str, Any]:
        """Return the live generation's meta.json (count, dim, model_id, ANN kind, facet fields)."""
        return dict(self._gen.meta)

    def reload(self) -> bool:
        """Switch to the newest generation if another writer replaced it; return whether it did."""
        name = _read_current_name(self.path)
        if name == self._gen.name:
            return False
        self._gen = _load_current(self.path)
        return True

    # reads

    def count(self) -> int:
        """Return the number of documents."""
        return len(self._gen.image_ids)

    def get(self, image_id: str) -> Document | None:
        """Return one document (with its vector) or ``None``."""
        return self._document(self._gen, image_id, with_vector=True)

    def get_many(
        self, image_ids: Sequence[str], *, with_vectors: bool = True
    ) -> dict[str, Document]:
        """Return the documents that exist among ``image_ids``, by id (one generation for all)."""
        gen = self._gen
        found = {}
        for image_id in image_ids:
            document = self._document(gen, image_id, with_vector=with_vectors)
            if document is not None:
                found[image_id] = document
        return found

    @staticmethod
    def _document(gen: _Generation, image_id: str, *, with_vector: bool) -> Document | None:
        row = gen.row_of.get(image_id) if isinstance(image_id, str) else None
        if row is None:
            return None
        slot = int(gen.row_vector[row]) if with_vector else -1
        vector = np.array(gen.vectors[slot], dtype=np.float32) if slot >= 0 else None
        doc = gen.docs.row(row)
        return Document(
            image_id=image_id,
            caption=doc["caption"],
            vector=vector,
            image=doc["image"],
            metadata=dict(doc["metadata"]),
        )

    def ids(self) -> list[str]:
        """Return every image_id, sorted."""
        return list(self._gen.image_ids)

    def facets(self, fields: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
        """Return filterable fields with their values and document counts (most common first).

        Without ``fields``, the generation's facet fields (see :class:`EmbeddedConfig`); with
        them, exactly those fields (an unknown field has no values).
        """
        gen = self._gen
        names = gen.meta.get("facet_fields", []) if fields is None else fields
        return {name: dict(gen.value_counts.get(name, {})) for name in names}

    def filter_fields(self) -> list[str]:
        """Return every metadata field with scalar values: each filters by exact value (a number
        by its JSON form), facet or not, as on the OpenSearch engine."""
        return sorted(self._gen.value_counts)

    def search(self, query: SearchQuery) -> SearchPage:
        """Rank documents for a text, vector or hybrid query (see :class:`SearchPage` for total)."""
        gen = self._gen
        _check_page(query)
        alpha = check_alpha(query.alpha)
        # A text that analyses to no terms (blank, only stop words) matches nothing, like `match`.
        text = query.text
        if text is not None and not isinstance(text, str):
            raise InvalidInputError(f"query text must be a string, got {type(text).__name__}")
        vector = self._query_vector(query.vector, gen) if query.vector is not None else None
        if text is None and query.vector is None:
            raise InvalidInputError("a search needs a query text, a vector or both")
        filters = _check_filters(query.filters)
        excluded = [gen.row_of[i] for i in query.exclude_ids if i in gen.row_of]
        end = query.offset + query.k

        text_query = (
            self._text_query(gen, text, filters, query.exclude_ids) if text is not None else None
        )

        floor = query.vector_floor
        relation: TotalRelation = "eq"
        if text is not None and query.vector is None:
            text_hits, total = self._text_top(gen, text_query, end)
            hits = [Hit(i, s, text_score=s) for i, s in text_hits]
        elif text is None:
            # With a floor the total is counted over the candidates, so that many are ranked.
            n = end if floor is None else query.candidates
            vector_hits, total = self._vector_top(gen, vector, n, filters, excluded)
            hits = [Hit(i, s, vector_score=s) for i, s in vector_hits[:end]]
            if floor is not None:
                total, relation = confident_total((), 0, "eq", vector_hits, n, floor)
        else:
            n = query.candidates
            text_hits, text_total = self._text_top(gen, text_query, n)
            vector_hits, vector_total = self._vector_top(gen, vector, n, filters, excluded)
            hits = fuse(text_hits, vector_hits, alpha, limit=end)
            if floor is not None:
                total, relation = confident_total(
                    [i for i, _ in text_hits], text_total, "eq", vector_hits, n, floor
                )
            else:
                # Union of both match sets: every vector document, plus text matches without one.
                total = vector_total + self._count_text_without_vector(gen, text_query, text_total)
        return SearchPage(hits=hits[query.offset : end], total=total, total_relation=relation)

    # writes

    def upsert(self, documents: Iterable[Document]) -> UpsertResult:
        """Insert or replace documents by ``image_id`` (idempotent), writing a new generation.

        Each call rewrites the whole generation (a bulk build's cost); batch documents together.
        Dimension mismatches raise InvalidInputError; other bad documents are reported in
        ``failed`` and the rest are written.
        """
        with self._write_lock, _writer_lock(self.path):
            current = self._live_generation()
            result = _write_merged(self.path, current, documents, (), current.config)
            self._gen = _load_current(self.path)
        return result

    def delete(self, image_ids: Iterable[str]) -> int:
        """Remove documents by image_id, writing a new generation; return how many existed."""
        wanted = {i for i in image_ids if isinstance(i, str)}
        with self._write_lock, _writer_lock(self.path):
            current = self._live_generation()
            existing = [i for i in wanted if i in current.row_of]
            if existing:
                _write_merged(self.path, current, (), existing, current.config)
                self._gen = _load_current(self.path)
            else:
                self._gen = current
        return len(existing)

    # internals

    def _live_generation(self) -> _Generation:
        """The generation CURRENT names: the one already loaded unless another writer replaced it.

        Called under the writer lock, so CURRENT cannot change meanwhile; generations are
        immutable, so the loaded one needs no second read.
        """
        if _read_current_name(self.path) == self._gen.name:
            return self._gen
        return _load_current(self.path)

    def _query_vector(self, vector: Any, gen: _Generation) -> np.ndarray:
        array = _check_vector("query", vector, gen.dim)
        if not np.all(np.isfinite(array)):
            raise InvalidInputError("query vector has non-finite values")
        if not np.any(array):
            raise InvalidInputError("query vector is all zeros")
        return normalize(array)

    def _text_query(
        self,
        gen: _Generation,
        text: str,
        filters: Filters,
        exclude_ids: Iterable[str],
    ) -> tantivy.Query | None:
        terms = analyze(text)
        if not terms or gen.schema is None:
            return None
        schema = gen.schema
        # OpenSearch `match`: one SHOULD term clause per analysed token (duplicates kept).
        match = tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(schema, "caption", t)) for t in terms]
        )
        clauses = [(tantivy.Occur.Must, match)]
        musts: list[tantivy.Query] = []
        for key, values in filters.items():
            musts.append(
                tantivy.Query.boolean_query(
                    [
                        (
                            tantivy.Occur.Should,
                            tantivy.Query.term_query(schema, "filter", _filter_term(key, v)),
                        )
                        for v in values
                    ]
                )
            )
        # Filters restrict, they do not score: a constant 0 keeps BM25 scores untouched.
        clauses.extend((tantivy.Occur.Must, tantivy.Query.const_score_query(q, 0.0)) for q in musts)
        clauses.extend(
            (tantivy.Occur.MustNot, tantivy.Query.term_query(schema, "image_id", image_id))
            for image_id in exclude_ids
        )
        if len(clauses) == 1:
            return match
        return tantivy.Query.boolean_query(clauses)

    def _text_top(
        self, gen: _Generation, query: tantivy.Query | None, n: int
    ) -> tuple[list[tuple[str, float]], int]:
        if query is None or gen.searcher is None:
            return [], 0
        result = gen.searcher.search(query, limit=n, count=True)
        if not result.hits:
            return [], _match_count(result)
        rows = gen.searcher.fast_field_values("row", [address for _, address in result.hits])
        scored = [
            (gen.image_ids[int(row or 0)], float(score) / _TANTIVY_BM25_FACTOR)
            for (score, _), row in zip(result.hits, rows, strict=True)
        ]
        # tantivy breaks score ties by document order, which is image_id order: keep it explicit.
        scored.sort(key=lambda pair: (-pair[1], pair[0]))
        return scored, _match_count(result)

    def _count_text_without_vector(
        self, gen: _Generation, text_query: tantivy.Query | None, text_total: int
    ) -> int:
        if text_total == 0 or not gen.any_captioned_without_vector or gen.searcher is None:
            return 0
        if text_query is None or gen.schema is None:
            return 0
        no_vector = tantivy.Query.term_query(gen.schema, "filter", _NO_VECTOR_TERM)
        query = tantivy.Query.boolean_query(
            [
                (tantivy.Occur.Must, text_query),
                (tantivy.Occur.Must, tantivy.Query.const_score_query(no_vector, 0.0)),
            ]
        )
        return _match_count(gen.searcher.search(query, limit=1, count=True))

    def _allowed_vectors(
        self, gen: _Generation, filters: Filters, excluded_rows: Sequence[int]
    ) -> np.ndarray:
        """Boolean mask over vector slots for filters and exclusions."""
        allowed = np.ones(len(gen.image_ids), dtype=bool)
        for key, values in filters.items():
            field_mask = np.zeros(len(gen.image_ids), dtype=bool)
            for value in values:
                rows = gen.postings.get((key, value))
                if rows is not None:
                    field_mask[rows] = True
            allowed &= field_mask
        if excluded_rows:
            allowed[np.asarray(excluded_rows, dtype=np.int64)] = False
        return allowed[gen.vector_rows]

    def _vector_top(
        self,
        gen: _Generation,
        vector: np.ndarray | None,
        n: int,
        filters: Filters,
        excluded_rows: Sequence[int],
    ) -> tuple[list[tuple[str, float]], int]:
        m = gen.vectors.shape[0]
        if vector is None or m == 0:
            return [], 0
        skip: set[int] = set()
        if filters:
            allowed = self._allowed_vectors(gen, filters, excluded_rows)
        else:
            # Exclusions alone (the source image of a similarity search) are dropped from an
            # unrestricted search for that many more: a mask would copy every vector (exact) or
            # filter the whole graph (HNSW) for one or two left-out images.
            allowed = None
            rows = np.asarray(excluded_rows, dtype=np.int64)
            skip = {int(slot) for slot in gen.row_vector[rows] if slot >= 0}
        total = m - len(skip) if allowed is None else int(allowed.sum())
        if total == 0:
            return [], 0
        k = min(n, total)
        config = gen.config
        if gen.hnsw is None:
            slots, scores = _exact_top(gen.vectors, vector, k + len(skip), allowed)
        elif allowed is None:
            wide = k + len(skip)
            slots, scores = _hnsw_top(gen.hnsw, vector, wide, max(config.ef_search, wide), None)
        elif total <= max(config.exact_fraction * m, min(config.exact_below, m)):
            # A selective filter: an exact scan of the few allowed vectors is fast and exact.
            slots, scores = _exact_top(gen.vectors, vector, k, allowed)
        else:
            # HNSW visits filtered-out nodes too: widen the beam in proportion to what is left out.
            fraction = total / m
            ef = min(4096, math.ceil(max(config.ef_search, k) / fraction))
            slots, scores = _hnsw_top(gen.hnsw, vector, k, ef, allowed)
        pairs = [
            (gen.image_ids[int(gen.vector_rows[s])], float(score))
            for s, score in zip(slots, scores, strict=True)
            if int(s) not in skip
        ]
        pairs.sort(key=lambda pair: (-pair[1], pair[0]))
        return pairs[:k], total


def _match_count(result: tantivy.SearchResult) -> int:
    """Return how many documents matched a tantivy search (asked for with ``count=True``)."""
    return int(getattr(result, "count", 0) or 0)  # `count` is missing from tantivy's type stub


def _exact_top(
    vectors: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top k over all vectors or over the allowed slots.

    faiss's brute-force kernel, not numpy: ``vectors @ query`` through this machine's BLAS was
    5-10x slower for one query.
    """
    candidates = None if allowed is None else np.flatnonzero(allowed)
    base = vectors if candidates is None else np.ascontiguousarray(vectors[candidates])
    k = min(k, base.shape[0])
    scores, labels = faiss.knn(
        query[None, :].astype(np.float32), base, k, metric=faiss.METRIC_INNER_PRODUCT
    )
    keep = labels[0] >= 0
    top, top_scores = labels[0][keep], scores[0][keep]
    slots = top if candidates is None else candidates[top]
    return slots, top_scores


def _hnsw_top(
    hnsw: Any, query: np.ndarray, k: int, ef: int, allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate inner-product top k from the HNSW graph, optionally restricted to a bitmap."""
    params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
    params.efSearch = int(ef)
    bitmap = None
    if allowed is not None:
        bitmap = np.packbits(allowed, bitorder="little")
        params.sel = faiss.IDSelectorBitmap(allowed.shape[0], faiss.swig_ptr(bitmap))
    distances, labels = hnsw.search(query[None, :], k, params=params)
    keep = labels[0] >= 0
    del bitmap  # the selector points into it until the search is done
    return labels[0][keep], distances[0][keep]


def _check_page(query: SearchQuery) -> None:
    if not isinstance(query.k, int) or isinstance(query.k, bool) or not 1 <= query.k <= MAX_K:
        raise InvalidInputError(f"k must be an integer from 1 to {MAX_K}, got {query.k!r}")
    if not isinstance(query.offset, int) or isinstance(query.offset, bool) or query.offset < 0:
        raise InvalidInputError(f"offset must be a non-negative integer, got {query.offset!r}")
    if query.offset + query.k > MAX_RESULT_WINDOW:
        raise InvalidInputError(
            f"offset + k must be at most {MAX_RESULT_WINDOW}, got {query.offset + query.k}"
        )


def _check_filters(filters: Filters) -> dict[str, list[str]]:
    checked: dict[str, list[str]] = {}
    for key, values in (filters or {}).items():
        if isinstance(values, str):
            values = [values]
        values = [str(v) for v in values]
        if not values:
            raise InvalidInputError(f"filter {key!r} needs at least one value")
        checked[str(key)] = values
    return checked


# --- generations on disk -------------------------------------------------------------------------


def _read_current_name(root: Path) -> str:
    if not root.is_dir():
        raise SearchIndexError(f"no index at {root}: build one with `medsearch index`")
    try:
        name = (root / CURRENT).read_text("utf-8").strip()
    except FileNotFoundError:
        raise SearchIndexError(
            f"no index at {root} (no {CURRENT} file): build one with `medsearch index`"
        ) from None
    except OSError as exc:
        raise SearchIndexError(f"cannot read {root / CURRENT}: {exc}") from exc
    if not GEN_PATTERN.fullmatch(name):
        raise SearchIndexError(f"index at {root} is corrupt: {CURRENT} names {name!r}")
    return name


def _load_current(root: Path) -> _Generation:
    """Load the generation CURRENT names, retrying if writers swapped it while it was read."""
    attempts = 3
    for attempt in range(attempts):
        name = _read_current_name(root)
        try:
            if not (root / name).is_dir():
                raise SearchIndexError(f"index at {root} is corrupt: {name} is missing")
            return _read_generation(root / name)
        except SearchIndexError:
            # Two quick writes may remove the generation a reader has just picked: try the new one.
            if attempt + 1 < attempts and _read_current_name(root) != name:
                continue
            raise
    raise AssertionError("unreachable")


@contextmanager
def _writer_lock(root: Path) -> Iterator[None]:
    """Hold the folder's write lock (one writer at a time, across processes)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK).open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _generation_numbers(root: Path) -> list[int]:
    numbers = []
    for entry in root.iterdir():
        match = GEN_PATTERN.fullmatch(entry.name) or TMP_PATTERN.fullmatch(entry.name)
        if match:
            numbers.append(int(match.group(1)))
    return numbers


def _publish(root: Path, tmp_dir: Path, number: int) -> str:
    """Move a finished generation into place, point CURRENT at it and drop old generations."""
    name = f"gen-{number:06d}"
    os.replace(tmp_dir, root / name)
    previous = None
    with suppress(SearchIndexError):
        previous = _read_current_name(root)
    storage.write_text(root / CURRENT, name + "\n")
    dir_fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for entry in root.iterdir():
        if entry.name in {name, previous} or not entry.is_dir():
            continue
        if GEN_PATTERN.fullmatch(entry.name) or TMP_PATTERN.fullmatch(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
    return name


def _prepare(
    documents: Iterable[Document], dim: int | None
) -> tuple[dict[str, tuple[_Row, np.ndarray | None]], list[tuple[str, str]], int | None]:
    """Validate incoming documents: (id -> row and unit vector, failures, dimension).

    Vectors are checked and normalised in one numpy pass: a per-document loop would cost more
    than the text index at 185k documents.
    """
    rows: dict[str, tuple[_Row, np.ndarray | None]] = {}
    failed: list[tuple[str, str]] = []
    pending: list[tuple[int, _Row, np.ndarray]] = []
    last: dict[str, int] = {}  # position of each id's last valid version: the one that wins
    for position, doc in enumerate(documents):
        raw_id = getattr(doc, "image_id", None)
        try:
            image_id = validate_image_id(raw_id)
        except InvalidInputError as exc:
            failed.append((str(raw_id), str(exc)))
            continue
        if doc.caption is not None and not isinstance(doc.caption, str):
            failed.append((image_id, "caption must be a string or null"))
            continue
        caption = doc.caption.strip() if doc.caption else None
        metadata = dict(doc.metadata or {})
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as exc:
            failed.append((image_id, f"metadata is not JSON-serialisable: {exc}"))
            continue
        row = _Row(image_id, caption or None, doc.image, metadata, doc.vector is not None)
        last[image_id] = position
        if doc.vector is None:
            rows[image_id] = (row, None)
            continue
        array = _check_vector(image_id, doc.vector, dim)
        dim = int(array.shape[0])
        pending.append((position, row, array))
    if pending:
        matrix = np.stack([array for _, _, array in pending])
        finite = np.isfinite(matrix).all(axis=1)
        nonzero = np.any(matrix != 0, axis=1)
        matrix = normalize(np.where(finite[:, None], matrix, 0.0))
        for i, (position, row, _) in enumerate(pending):
            if not finite[i]:
                failed.append((row.image_id, "vector has non-finite values"))
            elif not nonzero[i]:
                failed.append((row.image_id, "vector is all zeros"))
            elif last[row.image_id] == position:
                rows[row.image_id] = (row, matrix[i])
    return rows, failed, dim


def _write_merged(
    root: Path,
    current: _Generation | None,
    documents: Iterable[Document],
    deleted: Iterable[str],
    config: EmbeddedConfig,
    model: IndexModel | None = None,
) -> UpsertResult:
    """Write a generation = current documents - deleted + documents; caller holds the lock.

    ``model``: the model that made the vectors; None keeps what the current generation records.
    """
    dim = current.dim if current is not None else None
    incoming, failed, dim = _prepare(documents, dim)
    gone = set(deleted)
    if current is not None and not incoming and not gone:
        return UpsertResult(written=0, failed=failed)  # nothing to change: keep the generation
    merged: dict[str, tuple[_Row, np.ndarray | None]] = {}
    if current is not None:
        for row, image_id in enumerate(current.image_ids):
            if image_id in gone or image_id in incoming:
                continue
            slot = int(current.row_vector[row])
            vector = np.asarray(current.vectors[slot]) if slot >= 0 else None
            doc = current.docs.row(row)
            merged[image_id] = (
                _Row(image_id, doc["caption"], doc["image"], doc["metadata"], slot >= 0),
                vector,
            )
        if model is None:
            fingerprint = current.meta.get("model_fingerprint")
            floor = VectorFloor.from_json(current.meta.get("vector_floor"), current.dim)
            model = IndexModel(current.meta.get("model_id"), fingerprint or None, floor)
    merged.update(incoming)
    ordered = sorted(merged)
    docs = [merged[i][0] for i in ordered]
    with_vectors = [v for i in ordered if (v := merged[i][1]) is not None]
    if with_vectors:
        vectors = np.stack(with_vectors).astype(np.float32, copy=False)
    else:
        vectors = np.zeros((0, dim or 0), dtype=np.float32)
    numbers = _generation_numbers(root)
    number = max(numbers, default=0) + 1
    tmp_dir = root / f".gen-{number:06d}.tmp"
    try:
        _write_generation(tmp_dir, docs, vectors, dim, model or IndexModel(), config)
        _publish(root, tmp_dir, number)
    except MedsearchError:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise SearchIndexError(f"cannot write index at {root}: {exc}") from exc
    return UpsertResult(written=len(incoming), failed=failed)


def build_index(
    path: str | os.PathLike[str],
    documents: Iterable[Document],
    *,
    model_id: str | None = None,
    fingerprint: str | None = None,
    config: EmbeddedConfig | None = None,
    vector_floor: VectorFloor | None = None,
) -> EmbeddedIndex:
    """Build a whole index from documents in one new generation, replacing what ``path`` held.

    ``model_id`` and ``fingerprint`` name the model that made the vectors (the search service
    refuses another one). The swap is atomic: until the new generation is complete, readers (and
    a crash) see the old one. Invalid documents are skipped and logged; use
    :func:`build_index_with_result` to get them back.
    """
    index, _ = build_index_with_result(
        path,
        documents,
        model_id=model_id,
        fingerprint=fingerprint,
        config=config,
        vector_floor=vector_floor,
    )
    return index


def build_index_with_result(
    path: str | os.PathLike[str],
    documents: Iterable[Document],
    *,
    model_id: str | None = None,
    fingerprint: str | None = None,
    config: EmbeddedConfig | None = None,
    vector_floor: VectorFloor | None = None,
) -> tuple[EmbeddedIndex, UpsertResult]:
    """Like :func:`build_index`, also returning how many documents were written and which failed
    (``vector_floor``: the vectors' calibrated floor, stored in meta.json)."""
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise SearchIndexError(f"index path {root} exists and is not a folder")
    model = IndexModel(model_id, fingerprint, vector_floor)
    with _writer_lock(root):
        result = _write_merged(root, None, documents, (), config or EmbeddedConfig(), model)
        index = EmbeddedIndex(root, _load_current(root))
    for image_id, reason in result.failed:
        log.warning("skipped %s: %s", image_id, reason)
    return index, result


def open_index(
    path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None
) -> EmbeddedIndex:
    """Open an embedded index folder, local or ``s3://`` (its live generation copied once into
    ``cache_dir``).

    Raises SearchIndexError if it is missing or corrupt.
    """
    if storage.is_s3(path):
        url = str(path).rstrip("/")
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        base = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir())
        local = base / "medsearch-index" / digest
        try:
            name = storage.read_text(storage.join(url, CURRENT)).strip()
            # Only the live generation: the folder also keeps the previous one for its readers,
            # and a generation never changes, so a cached copy of it stays valid.
            if GEN_PATTERN.fullmatch(name):
                storage.download_prefix(storage.join(url, name), local / name)
        except MedsearchError as exc:
            raise SearchIndexError(f"cannot fetch index {url}: {exc}") from exc
        if not GEN_PATTERN.fullmatch(name):
            raise SearchIndexError(f"index at {url} is corrupt: {CURRENT} names {name!r}")
        storage.write_text(local / CURRENT, name + "\n")
        return EmbeddedIndex.open(local)
    return EmbeddedIndex.open(path)


__all__ = [
    "EmbeddedConfig",
    "EmbeddedIndex",
    "build_index",
    "build_index_with_result",
    "choose_facet_fields",
    "metadata_terms",
    "open_index",
]
