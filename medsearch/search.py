"""The search service: every query mode over one index and one (optional) encoder.

Modes: ``text`` (BM25 on captions), ``vector`` (the CLIP text vector), ``hybrid`` (both, fused with
weight ``alpha`` on the vector side), ``image`` (neighbours of a corpus image's stored vector, the
image itself excluded), ``image_text`` (that vector plus the image's caption as the BM25 query) and
``upload`` (an uploaded JPEG/PNG/DICOM, optionally with text, which makes it hybrid).

At startup the service checks that its encoder is the model the index's vectors came from: the
index records the weight fingerprint of that model (see :mod:`medsearch.vectors`), and an encoder
of other weights is refused even when its dimension matches, since a fine-tune and its base make
vectors of the same shape whose cosines mean nothing together. An index or encoder without a
fingerprint (built before they were stored) is accepted with a warning, its dimension checked.

Every request parameter is validated here, once, so the API, the CLI and the Lambda share the
rules and the messages; each rule raises a type from :mod:`medsearch.errors` that the API maps to
an HTTP status (422 invalid, 413 too large, 415 wrong type, 404 unknown id).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, Field

from medsearch.data.manifest import validate_image_id
from medsearch.errors import (
    ConfigError,
    ImageDecodeError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    SearchIndexError,
    StorageError,
    UnsupportedMediaTypeError,
)
from medsearch.fusion import check_alpha
from medsearch.index.analysis import highlight_spans, word_terms
from medsearch.index.base import (
    MAX_K,
    Document,
    Hit,
    IndexModel,
    RecordsModel,
    SearchIndex,
    SearchPage,
    SearchQuery,
)
from medsearch.vectors import Encoder, encoder_fingerprint

log = logging.getLogger(__name__)

Mode = Literal["text", "vector", "hybrid", "image", "image_text", "upload"]
TEXT_MODES: tuple[str, ...] = ("text", "vector", "hybrid")
SIMILAR_MODES: tuple[str, ...] = ("image", "image_text")
MODES: tuple[str, ...] = (*TEXT_MODES, *SIMILAR_MODES, "upload")

MAX_QUERY_CHARS = 512
DEFAULT_K = 10
DEFAULT_ALPHA = 0.5
# Deep paging costs every sub-query offset + k candidates; past 1000 results nobody reads on.
MAX_OFFSET = 1000
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_FILTER_FIELDS = 20
MAX_FILTER_VALUES = 50
MAX_FILTER_VALUE_CHARS = 256
# Request parameters of the search endpoints: a metadata field of one of these names can never be
# a filter (the parameter takes it), so it is neither offered as a facet nor accepted as a filter.
RESERVED_PARAMS = frozenset({"q", "mode", "alpha", "k", "offset"})
# A hit shows at most this much of its caption (the image record has all of it), so a page's
# size has a known bound: k <= MAX_K hits of at most this many characters each.
MAX_HIT_CAPTION_CHARS = 1000
# Likewise a hit's metadata: at most this many bytes of JSON, each text value at most
# MAX_HIT_METADATA_VALUE_CHARS characters (a bigger value is cut, or left out if not text).
MAX_HIT_METADATA_BYTES = 4096
MAX_HIT_METADATA_VALUE_CHARS = 256
# The characters a query may hold, as the OpenAPI schema states it: no control characters except
# tab, newline and carriage return (read as spaces), and at least one that is not whitespace.
_QUERY_CHAR = r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
QUERY_PATTERN = rf"^{_QUERY_CHAR}*[^\s\x00-\x1f\x7f-\x9f]{_QUERY_CHAR}*$"
# An upload's optional text: the same characters, and blank means "no text".
OPTIONAL_QUERY_PATTERN = rf"^{_QUERY_CHAR}*$"
# A range filter on a numeric field: ``<field>_min`` / ``<field>_max`` (inclusive bounds).
RANGE_SUFFIXES = ("_min", "_max")
# A range is answered as the field's values within it, matched exactly (the same on every
# engine); a field with more distinct values than this is refused a range.
MAX_RANGE_FIELD_VALUES = 10_000
# A value no metadata holds (it has a control character): a range that takes in no value.
NO_VALUE = "\x00none"
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
# How often an unknown filter field may trigger a fresh look at the index's fields.
FIELD_REFRESH_SECONDS = 5.0
# Tab, newline and carriage return in a query are whitespace (pasted text); other controls are not.
_WHITESPACE_CONTROLS = {"\t": " ", "\n": " ", "\r": " "}

ImageUrl = Callable[[Document], str | None]
# Filters as callers give them: a mapping, or the (name, value) pairs of a query string.
RawFilters = Mapping[str, Iterable[str]] | Iterable[tuple[str, str]] | None


# --- response models -----------------------------------------------------------------------------


class SearchResult(BaseModel):
    """One hit: the image, its caption (null when captionless), the fused and component scores."""

    image_id: str
    caption: str | None = Field(
        description=f"null for a captionless image; at most {MAX_HIT_CAPTION_CHARS} characters"
    )
    caption_truncated: bool = Field(
        default=False,
        description="the caption was cut to its first characters: GET /images/{image_id} has all",
    )
    score: float = Field(description="ranking score (raw BM25, cosine, or the fused score)")
    bm25_score: float | None = Field(description="raw BM25 score; null if not in the text list")
    vector_score: float | None = Field(description="cosine similarity; null if not in the kNN list")
    text_part: float | None = Field(
        default=None,
        description="fused hits: (1 - alpha) x the min-max normalised BM25 that fusion summed "
        "(text_part + vector_part = score); null when not fused here (one list alone, or "
        "OpenSearch's fusion pipeline)",
    )
    vector_part: float | None = Field(
        default=None,
        description="fused hits: alpha x the min-max normalised cosine that fusion summed",
    )
    highlights: list[tuple[int, int]] = Field(
        default_factory=list,
        description="[start, end) offsets (Unicode code points) in caption of the words whose "
        "stem is one of the query's stems, by the engines' own caption analysis",
    )
    low_confidence: bool | None = Field(
        default=None,
        description="text query modes: true when the hit is no caption match and its cosine is "
        "below the index's calibrated vector_floor; null where not judged (image modes, or an "
        "index that records no floor)",
    )
    metadata: dict[str, Any] = Field(
        description=f"at most {MAX_HIT_METADATA_BYTES} bytes of it as JSON; text values cut to "
        f"{MAX_HIT_METADATA_VALUE_CHARS} characters"
    )
    metadata_truncated: bool = Field(
        default=False,
        description="some metadata was cut or left out: GET /images/{image_id} has all of it",
    )
    image_url: str | None


class SearchResponse(BaseModel):
    """A page of results with the query as it was run and the total number of matches."""

    query: str | None = Field(
        description=(
            "text searched for (image_text: the source caption, cut to "
            f"{MAX_HIT_CAPTION_CHARS} characters)"
        )
    )
    mode: str
    alpha: float | None = Field(description="vector weight of a fused query; null if not fused")
    image_id: str | None = Field(default=None, description="source image of image modes")
    total: int = Field(description="matches of the whole query, the same on every page")
    total_relation: Literal["eq", "gte"] = Field(
        default="eq",
        description="eq: total is exact; gte: counting stopped at a bound, total is a lower bound",
    )
    best_match: Literal["good", "weak", "none"] | None = Field(
        default=None,
        description="text query modes: good = something matches (total > 0: caption matches, "
        "or cosines at or above vector_floor); weak = results, but every one low_confidence; "
        "none = no results; null where not judged (image modes, or vector modes of an index "
        "that records no floor)",
    )
    vector_floor: float | None = Field(
        default=None,
        description="the cosine this query's vector hits must reach to count as matches: the "
        "index's floor, calibrated on its own captions, plus the query's mean cosine over the "
        "corpus (null where the index records none); with it, vector and hybrid totals count only "
        "matches (text matches and hits at or above it, among each list's top candidates)",
    )
    offset: int
    k: int
    took_ms: float
    results: list[SearchResult]


class ImageRecord(BaseModel):
    """One indexed image as the API shows it (its vector is left out)."""

    image_id: str
    caption: str | None
    metadata: dict[str, Any]
    image_url: str | None
    has_vector: bool


class Health(BaseModel):
    """Liveness plus what the service runs on."""

    status: str
    documents: int
    model: str | None
    dim: int | None
    modes: list[str]


# --- validation: the one place for every request rule --------------------------------------------


def validate_query(q: object, *, name: str = "q") -> str:
    """Return the query stripped, or raise: 1-512 characters, not all whitespace, no control
    characters but tab, newline and carriage return (:data:`QUERY_PATTERN`, as the schema says).

    The rules hold for the text as sent, before stripping, so what the schema calls invalid is
    refused (a control character at an end is not stripped away into a valid query).
    """
    text = _query_characters(q, name).strip()
    if not text:
        raise InvalidInputError(f"{name} must not be empty: give 1-{MAX_QUERY_CHARS} characters")
    return text


def validate_optional_query(q: object, *, name: str = "q") -> str | None:
    """Return an optional query stripped, None when absent or blank; the same character and
    length rules as :func:`validate_query` (:data:`OPTIONAL_QUERY_PATTERN`)."""
    if q is None:
        return None
    return _query_characters(q, name).strip() or None


def _query_characters(q: object, name: str) -> str:
    """Return the query with tab, newline and carriage return as spaces, or raise: a string of
    at most 512 characters without other control characters."""
    if not isinstance(q, str):
        raise InvalidInputError(f"{name} must be a text string")
    if len(q) > MAX_QUERY_CHARS:
        raise InvalidInputError(
            f"{name} is {len(q)} characters long; shorten it to at most {MAX_QUERY_CHARS}"
        )
    for control, space in _WHITESPACE_CONTROLS.items():
        q = q.replace(control, space)
    bad = next((c for c in q if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise InvalidInputError(
            f"{name} contains the control character U+{ord(bad):04X}; remove it"
        )
    return q


def validate_k(k: object) -> int:
    """Return ``k`` or raise: an integer from 1 to 100."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= int(k) <= MAX_K:
        raise InvalidInputError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    return int(k)


def validate_offset(offset: object) -> int:
    """Return ``offset`` or raise: an integer from 0 to MAX_OFFSET (deep paging is refused)."""
    if (
        isinstance(offset, bool)
        or not isinstance(offset, int | np.integer)
        or not 0 <= int(offset) <= MAX_OFFSET
    ):
        raise InvalidInputError(f"offset must be an integer from 0 to {MAX_OFFSET}, got {offset!r}")
    return int(offset)


def validate_alpha(alpha: object) -> float:
    """Return ``alpha`` or raise: a finite number from 0 to 1 (the rule lives in fusion)."""
    if isinstance(alpha, bool):
        raise InvalidInputError(f"alpha must be a number between 0 and 1, got {alpha!r}")
    return check_alpha(alpha)  # type: ignore[arg-type]


def validate_mode(mode: object, allowed: Sequence[str]) -> str:
    """Return ``mode`` or raise naming the modes this endpoint accepts."""
    if not isinstance(mode, str) or mode not in allowed:
        raise InvalidInputError(f"mode must be one of {', '.join(allowed)}, got {mode!r}")
    return mode


def clean_filters(
    filters: RawFilters,
) -> dict[str, list[str]]:
    """Group raw filters into field -> values, dropping empty values and bounding their size.

    Accepts a mapping or the (name, value) pairs of a query string, so repeated parameters become
    several values of one field (OR within a field, AND across fields).
    """
    if not filters:
        return {}
    pairs: Iterable[tuple[str, Any]]
    if isinstance(filters, Mapping):
        pairs = (
            (name, value)
            for name, values in filters.items()
            for value in ([values] if isinstance(values, str) else values)
        )
    else:
        pairs = filters
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        if not isinstance(value, str):
            raise InvalidInputError(f"filter {name!r}: values must be text, got {value!r}")
        value = value.strip()
        if not value:  # an emptied form field means "no constraint", not "match nothing"
            continue
        if len(value) > MAX_FILTER_VALUE_CHARS or any(
            unicodedata.category(c) == "Cc" for c in value
        ):
            raise InvalidInputError(
                f"filter {name!r}: values must be 1-{MAX_FILTER_VALUE_CHARS} characters "
                "without control characters"
            )
        values = grouped.setdefault(name, [])
        if value not in values:
            values.append(value)
        if len(values) > MAX_FILTER_VALUES:
            raise InvalidInputError(
                f"filter {name!r}: at most {MAX_FILTER_VALUES} values per field"
            )
    if len(grouped) > MAX_FILTER_FIELDS:
        raise InvalidInputError(f"at most {MAX_FILTER_FIELDS} filter fields per query")
    return grouped


def validate_upload(data: object) -> bytes:
    """Return the upload's bytes or raise: non-empty, at most 10 MB, a JPEG, PNG or DICOM."""
    from medsearch.data.images import ACCEPTED_MEDIA_TYPES, sniff_media_type

    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInputError("file must be the uploaded image's bytes")
    data = bytes(data)
    if not data:
        raise InvalidInputError("file is empty: upload a JPEG, PNG or DICOM image")
    if len(data) > MAX_UPLOAD_BYTES:
        raise PayloadTooLargeError(
            f"file is {len(data)} bytes; the limit is {MAX_UPLOAD_BYTES} bytes (10 MB)"
        )
    media_type = sniff_media_type(data)
    if media_type not in ACCEPTED_MEDIA_TYPES:
        raise UnsupportedMediaTypeError(
            f"file is not an accepted image ({media_type or 'unknown type'}): "
            f"upload one of {', '.join(sorted(ACCEPTED_MEDIA_TYPES))}"
        )
    return data


def text_fingerprint(text: str) -> str:
    """Return what logs may say of a text a client sent or an index holds: its length and a
    short hash (enough to tell two apart or match a report), never the text itself."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"({len(text)} characters, sha256 {digest})"


def cut_caption(caption: str | None) -> tuple[str | None, bool]:
    """Return a caption cut to :data:`MAX_HIT_CAPTION_CHARS` and whether it was cut."""
    if caption is None or len(caption) <= MAX_HIT_CAPTION_CHARS:
        return caption, False
    return caption[: MAX_HIT_CAPTION_CHARS - 1] + "…", True


def cut_metadata(metadata: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Return a hit's metadata within :data:`MAX_HIT_METADATA_BYTES` of JSON, and whether any
    of it was cut: long text values are cut, other values too big and keys past the budget are
    left out (in their order), so a page's size is bounded whatever the records hold."""
    import json

    shown: dict[str, Any] = {}
    cut = False
    used = 2  # the braces
    for key, value in metadata.items():
        if isinstance(value, str) and len(value) > MAX_HIT_METADATA_VALUE_CHARS:
            value, cut = value[: MAX_HIT_METADATA_VALUE_CHARS - 1] + "…", True
        size = len(json.dumps({key: value}, ensure_ascii=False).encode("utf-8"))
        too_big = not isinstance(value, str) and size > MAX_HIT_METADATA_VALUE_CHARS + 64
        if too_big or used + size > MAX_HIT_METADATA_BYTES:
            cut = True
            continue
        shown[key] = value
        used += size  # counted with its own braces: an upper bound of what it adds
    return shown, cut


@runtime_checkable
class ListsFieldValues(Protocol):
    """An index that can list up to ``limit`` distinct values of one metadata field (OpenSearch;
    the embedded engine's ``facets([field])`` already lists all of them)."""

    def field_values(self, field: str, limit: int) -> dict[str, int]:
        """Return the field's values with their document counts, at most ``limit`` of them."""
        ...


def _number(text: str, name: str) -> float:
    """Return a range bound, or raise: a plain decimal number."""
    if not _NUMBER.fullmatch(text.strip()):
        raise InvalidInputError(f"filter {name!r}: a range bound must be a number, got {text!r}")
    return float(text)


@runtime_checkable
class ListsFilterFields(Protocol):
    """An index that can name every metadata field it filters on, facet or not (both engines)."""

    def filter_fields(self) -> list[str]:
        """Return the metadata fields whose values can be filtered on."""
        ...


def api_image_path(document: Document) -> str:
    """Return the API's own path to an image's bytes (relative: a base URL goes in front), under
    the API's version prefix."""
    return f"v1/images/{document.image_id}/file"


def _score(value: float | None) -> float | None:
    """Return a JSON-safe score: a finite float or None."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _low_confidence(hit: Hit, floor: float | None, caption_match: bool) -> bool:
    """Whether a hit of a text query is no match: not a caption match, and its cosine (if any)
    below the floor; a caption match is always a match (BM25 finds the query's words)."""
    if caption_match:
        return False
    if floor is None:
        return True  # text mode has no other evidence; vector modes pass a floor to be judged
    return hit.vector_score is None or hit.vector_score < floor


def _json_safe(value: Any) -> Any:
    """Return metadata fit for strict JSON: non-finite floats (NaN in a manifest) become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _display_name(name: str | None) -> str:
    """Return an upload's file name fit for an error message (clients choose it freely)."""
    if not name:
        return "upload"
    printable = "".join(c for c in name if unicodedata.category(c)[0] not in "CZ" or c == " ")
    return printable.strip()[:80] or "upload"


# --- the model check -----------------------------------------------------------------------------


def check_index_model(index: SearchIndex, encoder: Encoder) -> None:
    """Refuse (ConfigError, one line) an encoder whose weights are not those of the index's vectors.

    Fingerprints decide where both sides have one (the model ids may differ: the same weights in
    another folder, or their ONNX export); otherwise the dimension does, with a warning.
    """
    recorded = index.indexed_model() if isinstance(index, RecordsModel) else IndexModel()
    ours = encoder_fingerprint(encoder)
    if recorded.fingerprint and ours:
        if recorded.fingerprint != ours:
            raise ConfigError(
                f"the index holds vectors of model {recorded.model_id} (weights"
                f" {recorded.fingerprint}) but the model {encoder.model_id} has other weights"
                f" ({ours}): serve the model the index was built with, or rebuild the index"
            )
        return
    dim = index.dim
    if dim is None:
        return  # no vectors yet: nothing they could disagree with
    missing = "the index" if not recorded.fingerprint else f"the model {encoder.model_id}"
    log.warning(
        "%s records no weight fingerprint: cannot tell whether the model %s is the one the"
        " index's vectors (model %s) came from; only the dimension is checked",
        missing,
        encoder.model_id,
        recorded.model_id or "unknown",
    )
    if dim != encoder.dim:
        raise ConfigError(
            f"the index holds {dim}-d vectors but the model {encoder.model_id} makes"
            f" {encoder.dim}-d ones: serve the model the index was built with"
        )


# --- the service ---------------------------------------------------------------------------------


class SearchService:
    """Runs validated searches of every mode over a :class:`SearchIndex` and an optional encoder.

    An encoder that is not the model of the index's vectors is refused here, at startup
    (:func:`check_index_model`), not on the first query.
    """

    def __init__(
        self,
        index: SearchIndex,
        encoder: Encoder | None,
        *,
        image_url: ImageUrl | None = None,
    ) -> None:
        if encoder is not None:
            check_index_model(index, encoder)
        self.index = index
        self.encoder = encoder
        self.image_url: ImageUrl = image_url or api_image_path
        self._fields: frozenset[str] | None = None
        self._fields_at = 0.0
        self._fields_lock = threading.Lock()

    # --- information ---

    @property
    def model_id(self) -> str | None:
        """The encoder's model id, or None when the service runs text-only."""
        return self.encoder.model_id if self.encoder is not None else None

    @property
    def modes(self) -> list[str]:
        """The modes this service can run (vector modes need an encoder)."""
        if self.encoder is None:
            return ["text", *SIMILAR_MODES]
        return list(MODES)

    @property
    def default_mode(self) -> str:
        """Hybrid when a model is loaded, else text: the best mode the service can run."""
        return "hybrid" if self.encoder is not None else "text"

    def health(self) -> Health:
        """Return status, document count and model id (the index is asked, so it must answer)."""
        return Health(
            status="ok",
            documents=self.index.count(),
            model=self.encoder.name if self.encoder is not None else None,
            dim=self.index.dim,
            modes=self.modes,
        )

    def facets(self) -> dict[str, dict[str, int]]:
        """Return the index's facet fields with their values and document counts; a field named
        like a request parameter (``q``, ``k``, ``mode``...) is left out, as it cannot filter."""
        return {
            name: values
            for name, values in self.index.facets().items()
            if name not in RESERVED_PARAMS
        }

    def filter_fields(self, *, refresh: bool = False) -> frozenset[str]:
        """Return the filterable fields' names (cached; refreshed at most every few seconds).

        Every metadata field with scalar values filters by exact value, facet or not (a number
        by its JSON form: ``size_cm=4.6``), on both engines; request parameter names excepted.
        """
        with self._fields_lock:
            fresh = time.monotonic() - self._fields_at < FIELD_REFRESH_SECONDS
            if self._fields is not None and (not refresh or fresh):
                return self._fields
        index = self.index
        names = index.filter_fields() if isinstance(index, ListsFilterFields) else index.facets()
        fields = frozenset(names) - RESERVED_PARAMS
        with self._fields_lock:
            self._fields = fields
            self._fields_at = time.monotonic()
        return fields

    def check_filters(self, filters: RawFilters) -> dict[str, list[str]]:
        """Return cleaned filters, or raise naming unknown fields (a typo must not mean 0 hits)."""
        cleaned = clean_filters(filters)
        if not cleaned:
            return cleaned
        unknown = {name for name in cleaned if not self._known_filter(name)}
        if unknown:
            self.filter_fields(refresh=True)
            unknown = {name for name in cleaned if not self._known_filter(name)}
        if unknown:
            known = ", ".join(sorted(self.filter_fields())) or "none"
            raise InvalidInputError(
                f"unknown filter field(s) {', '.join(sorted(map(repr, unknown)))}; "
                f"filterable fields: {known} (a numeric one also as <field>_min, <field>_max)"
            )
        return self._ranges_as_values(cleaned)

    def _known_filter(self, name: str) -> bool:
        """Whether ``name`` is a filter field, or ``<field>_min`` / ``<field>_max`` of one."""
        fields = self.filter_fields()
        if name in fields:
            return True
        return name.endswith(RANGE_SUFFIXES) and name[:-4] in fields

    def _ranges_as_values(self, filters: dict[str, list[str]]) -> dict[str, list[str]]:
        """Replace ``<field>_min`` / ``<field>_max`` by the field's numeric values in the range
        (inclusive; several bounds: the tightest), so each engine matches them exactly."""
        fields = self.filter_fields()
        bounds: dict[str, list[float]] = {}
        out: dict[str, list[str]] = {}
        for name, values in filters.items():
            if name in fields or not name.endswith(RANGE_SUFFIXES):
                out[name] = values
                continue
            field, is_min = name[:-4], name.endswith("_min")
            low, high = bounds.setdefault(field, [-math.inf, math.inf])
            for value in values:
                number = _number(value, name)
                low, high = (max(low, number), high) if is_min else (low, min(high, number))
            bounds[field] = [low, high]
        for field, (low, high) in bounds.items():
            known = self._field_values(field)
            inside = [v for v in known if _NUMBER.fullmatch(v) and low <= float(v) <= high]
            if field in out:  # an exact filter on the same field as well: both must hold
                inside = [v for v in out[field] if v in inside]
            out[field] = inside or [NO_VALUE]
        return out

    def _field_values(self, field: str) -> list[str]:
        """Every distinct value of a field, or InvalidInputError when there are too many for a
        range to list."""
        index = self.index
        if isinstance(index, ListsFieldValues):
            values = index.field_values(field, MAX_RANGE_FIELD_VALUES + 1)
        else:
            values = index.facets([field]).get(field, {})
        if len(values) > MAX_RANGE_FIELD_VALUES:
            raise InvalidInputError(
                f"filter {field!r} has over {MAX_RANGE_FIELD_VALUES} distinct values: too many "
                "for a range; filter on exact values instead"
            )
        return list(values)

    def record(self, image_id: str) -> ImageRecord:
        """Return one image's record, or raise NotFoundError."""
        document = self._document(image_id)
        return ImageRecord(
            image_id=document.image_id,
            caption=document.caption,
            metadata=_json_safe(document.metadata),
            image_url=self.image_url(document),
            has_vector=document.vector is not None,
        )

    def image_file(self, image_id: str) -> tuple[bytes, str]:
        """Return an image's bytes and media type; DICOM is rendered to PNG, which browsers show."""
        # Every result thumbnail asks for its file: only the path is needed, not the vector.
        document = self._document(image_id, with_vector=False)
        from medsearch import storage
        from medsearch.data.images import decode_image, sniff_media_type

        if not document.image:
            raise NotFoundError(f"image {image_id!r} has no stored file")
        try:
            data = storage.read_bytes(document.image)
        except StorageError as exc:
            log.warning("image file of %s unreadable: %s", image_id, exc)
            raise NotFoundError(f"the file of image {image_id!r} is not available") from None
        media_type = sniff_media_type(data)
        if media_type in ("image/jpeg", "image/png"):
            return data, media_type
        try:
            image = decode_image(data, name=image_id)
        except ImageDecodeError as exc:
            log.warning("image file of %s undecodable: %s", image_id, exc)
            raise NotFoundError(f"the file of image {image_id!r} cannot be shown") from None
        import io

        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"

    # --- searches ---

    def search(
        self,
        q: str,
        *,
        mode: str | None = None,
        alpha: float = DEFAULT_ALPHA,
        k: int = DEFAULT_K,
        offset: int = 0,
        filters: RawFilters = None,
    ) -> SearchResponse:
        """Search by text: ``text`` (BM25), ``vector`` (CLIP text vector) or ``hybrid``."""
        started = time.perf_counter()
        # An empty mode is not "the default": the schema's enum does not hold it.
        mode = validate_mode(self.default_mode if mode is None else mode, TEXT_MODES)
        text = validate_query(q)
        page = self._page(alpha, k, offset, filters)
        vector = None
        if mode in ("vector", "hybrid"):
            vector = self._encoder(mode).encode_texts([text])[0]
        query = replace(
            page,
            text=text if mode in ("text", "hybrid") else None,
            vector=vector,
            vector_floor=self._vector_floor(vector),
        )
        return self._run(query, mode=mode, shown_query=text, image_id=None, started=started)

    def similar(
        self,
        image_id: str,
        *,
        mode: str = "image",
        alpha: float = DEFAULT_ALPHA,
        k: int = DEFAULT_K,
        offset: int = 0,
        filters: RawFilters = None,
    ) -> SearchResponse:
        """Find images like a corpus image: its stored vector (``image``), plus its caption as BM25
        query (``image_text``; a captionless image falls back to the vector alone); the image
        itself is never a result."""
        started = time.perf_counter()
        mode = validate_mode(mode, SIMILAR_MODES)
        page = self._page(alpha, k, offset, filters)
        document = self._document(image_id)
        if document.vector is None:
            raise InvalidInputError(
                f"image {image_id!r} has no vector, so it cannot be searched by similarity"
            )
        text = document.caption if mode == "image_text" else None
        query = replace(
            page,
            text=text,
            vector=np.asarray(document.vector, dtype=np.float32),
            exclude_ids=frozenset({document.image_id}),
        )
        return self._run(query, mode=mode, shown_query=text, image_id=image_id, started=started)

    def search_upload(
        self,
        data: bytes,
        *,
        filename: str | None = None,
        q: str | None = None,
        alpha: float = DEFAULT_ALPHA,
        k: int = DEFAULT_K,
        offset: int = 0,
        filters: RawFilters = None,
    ) -> SearchResponse:
        """Search with an uploaded JPEG/PNG/DICOM image; optional text ``q`` makes it hybrid."""
        from medsearch.data.images import decode_image

        started = time.perf_counter()
        text = validate_optional_query(q)
        page = self._page(alpha, k, offset, filters)
        payload = validate_upload(data)
        encoder = self._encoder("upload")
        image = decode_image(payload, name=_display_name(filename))
        query = replace(page, text=text, vector=encoder.encode_images([image])[0])
        return self._run(query, mode="upload", shown_query=text, image_id=None, started=started)

    # --- internals ---

    def _page(
        self,
        alpha: object,
        k: object,
        offset: object,
        filters: RawFilters,
    ) -> SearchQuery:
        """Validate what every mode shares into a query still without its text and vector."""
        return SearchQuery(
            alpha=validate_alpha(alpha),
            k=validate_k(k),
            offset=validate_offset(offset),
            filters=self.check_filters(filters),
        )

    def _vector_floor(self, vector: np.ndarray | None) -> float | None:
        """The raw cosine a text query vector's hits must reach to be matches, from the index's
        calibrated floor (:mod:`medsearch.relevance`); None without a vector or a floor.

        Asked per query, not at startup: the index may be rebuilt (or an alias moved) under a
        running service, and both engines answer from what they already hold.
        """
        index = self.index
        if vector is None or not isinstance(index, RecordsModel):
            return None
        floor = index.indexed_model().vector_floor
        if floor is None or len(floor.center) != vector.shape[0]:
            return None
        return round(floor.for_query(vector), 6)

    def _encoder(self, mode: str) -> Encoder:
        if self.encoder is None:
            # Worded for the API and the CLI alike: both say "mode" and "model".
            raise InvalidInputError(
                f"mode {mode!r} needs a model and none is loaded: search in mode 'text', "
                "or give a model"
            )
        return self.encoder

    def _document(self, image_id: str, *, with_vector: bool = True) -> Document:
        validate_image_id(image_id)
        if with_vector:
            document = self.index.get(image_id)
        else:
            document = self.index.get_many([image_id], with_vectors=False).get(image_id)
        if document is None:
            raise NotFoundError(f"no image with id {image_id!r}")
        return document

    def _search_index(self, query: SearchQuery, *, vector_from_model: bool) -> SearchPage:
        """Search the index; a query vector of the wrong size that this service's own model made
        is the service's fault (the index was rebuilt with another model), not the caller's."""
        try:
            return self.index.search(query)
        except InvalidInputError:
            dim, encoder = self.index.dim, self.encoder
            if vector_from_model and encoder is not None and dim not in (None, encoder.dim):
                raise SearchIndexError(
                    f"the index holds {dim}-d vectors but the model {encoder.model_id} makes "
                    f"{encoder.dim}-d ones: serve the model the index was built with"
                ) from None
            raise

    def _run(
        self,
        query: SearchQuery,
        *,
        mode: str,
        shown_query: str | None,
        image_id: str | None,
        started: float,
    ) -> SearchResponse:
        page = self._search_index(query, vector_from_model=mode in ("vector", "hybrid", "upload"))
        fused = query.text is not None and query.vector is not None
        # One lookup for the whole page; vectors are not shown, so they are not fetched.
        documents = self.index.get_many([hit.image_id for hit in page.hits], with_vectors=False)
        # The words to mark: the query's own index terms (for image_text, the source caption's).
        terms = word_terms(shown_query) if shown_query else frozenset()
        judged = mode == "text" or query.vector_floor is not None
        results = []
        for hit in page.hits:
            document = documents.get(hit.image_id)
            if document is None:  # deleted between the search and the lookup
                continue
            caption, truncated = cut_caption(document.caption)
            metadata, metadata_cut = cut_metadata(_json_safe(document.metadata))
            spans = highlight_spans(caption, terms) if caption else []
            # A hybrid hit beyond the text list's top N has no BM25 score, yet its caption may
            # match the query (it is counted in the total): its marked words say so.
            caption_match = hit.text_score is not None or (query.text is not None and bool(spans))
            results.append(
                SearchResult(
                    image_id=hit.image_id,
                    caption=caption,
                    caption_truncated=truncated,
                    score=_score(hit.score) or 0.0,
                    bm25_score=_score(hit.text_score),
                    vector_score=_score(hit.vector_score),
                    text_part=_score(hit.text_part),
                    vector_part=_score(hit.vector_part),
                    highlights=spans,
                    low_confidence=(
                        _low_confidence(hit, query.vector_floor, caption_match) if judged else None
                    ),
                    metadata=metadata,
                    metadata_truncated=metadata_cut,
                    image_url=self.image_url(document),
                )
            )
        best: Literal["good", "weak", "none"] | None = None
        if judged:
            best = "good" if page.total > 0 else "weak" if page.hits else "none"
        return SearchResponse(
            query=cut_caption(shown_query)[0],
            mode=mode,
            alpha=query.alpha if fused else None,
            image_id=image_id,
            total=page.total,
            total_relation=page.total_relation,
            best_match=best,
            vector_floor=query.vector_floor,
            offset=query.offset,
            k=query.k,
            took_ms=round((time.perf_counter() - started) * 1000.0, 3),
            results=results,
        )
