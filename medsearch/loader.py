"""The index loader: batch-transform output (JSON Lines of vectors) into a run's search index.

For each ``*.out`` object the batch transform writes, :meth:`IndexLoader.load_object` streams the
lines (``{"image_id", "vector", "model", "dim"}`` or ``{"image_id", "error"}``), joins captions and
metadata from the run's manifest (read once per container), and upserts documents with
``_id = image_id`` into the run's own index (``<alias>-<run id>``), so a rerun after a crash
rewrites the same documents: no duplicates, no gaps.

Nothing here is fatal per record: malformed lines and ids the manifest does not know are reported
(and logged with their ids); a known image whose line has no usable vector (the transform could
not embed it, or the vector is malformed) is indexed by its caption alone and reported, so every
manifest record ends up in the index. Documents the index rejected leave the object incomplete
(:attr:`LoadResult.ok` is false), so the handler has its notification delivered again. After each
object a small report is written beside it (``<object>.loaded.json``); when the reports account
for every manifest record, the loader publishes the run: restores the index settings, checks the
document count (and that the run is not empty or much smaller than the live one: the shared
:mod:`medsearch.publish_guard`), asks the run index one text query and one kNN query with a
stored vector (a run index that cannot answer never goes live) and moves the read alias to the
new index in one atomic request (blue/green), pruning old runs. :meth:`IndexLoader.run_status`
tells a caller that waits for a run (the pipeline) how far its loading is.

The loader works on object URLs (:meth:`IndexLoader.load_objects`, then
:meth:`IndexLoader.publish_completed`); which objects an S3, SQS or SNS event names is the Lambda
handler's business, not this module's. S3 goes through :mod:`medsearch.storage`, the index through
the small :class:`RunIndex` protocol (implemented by
:class:`medsearch.index.opensearch.OpenSearchIndex`), so this module imports no AWS SDK, no
Powertools and no OpenSearch client; the Lambda handler wires them.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medsearch import storage
from medsearch.constants import TRANSFORM_OUTPUT_SUFFIX, VECTORS_PREFIX
from medsearch.data.manifest import BadRecord, Record, read_manifest
from medsearch.errors import InvalidInputError, MedsearchError, MergeRunning, SearchIndexError
from medsearch.index.base import Document, IndexModel, SearchIndex, SearchQuery, UpsertResult
from medsearch.publish_guard import DEFAULT_MAX_DROP, PublishGuardConfig, check_publish
from medsearch.vectors import normalize

log = logging.getLogger(__name__)

REPORT_SUFFIX = ".loaded.json"
VECTORIZE_ERROR = "vectorize error"
# The publish check's text query: a fixed text, so no caption (medical text) reaches a query, an
# error message or a log line.
SMOKE_TEXT = "medsearch publish check"
# How many of the run's ids the publish check looks through for a stored vector, and per lookup.
SMOKE_VECTOR_IDS = 1000
SMOKE_LOOKUP = 50
# Runs are told apart by the folder after the vectors prefix: ``vectors/<run id>/part-0.jsonl.out``.
DEFAULT_RUN_PATTERN = rf"(?:^|/){re.escape(VECTORS_PREFIX)}(?P<run_id>[A-Za-z0-9._-]+)/"


class RunIndex(SearchIndex, Protocol):
    """What the loader needs beyond :class:`SearchIndex`: create, load mode and publishing."""

    name: str

    def create(
        self,
        dim: int,
        *,
        loading: bool = True,
        alias: str | None = None,
        model: IndexModel | None = None,
    ) -> bool:
        """Create the index (idempotent; refused where it holds another model's vectors)."""
        ...

    def finish_load(self, *, merge_wait: float | None = None) -> None:
        """Refresh, merge (waiting at most ``merge_wait`` s), restore replicas."""
        ...

    def swap_alias(self, alias: str, *, keep: int | None = None) -> list[str]:
        """Point the alias at this index atomically; prune old ones."""
        ...

    def alias_targets(self, alias: str) -> list[str]:
        """The indexes the alias points at now."""
        ...

    def newer_live_index(self, alias: str) -> str | None:
        """A live index of a newer run, if any."""
        ...


# Physical index name -> engine on it, and (alias, run id) -> physical index name.
IndexFactory = Callable[[str], RunIndex]
IndexNamer = Callable[[str, str], str]


@dataclass(frozen=True)
class LoaderConfig:
    """Where runs live and how they are published; built once from the handler's settings."""

    manifest_url: str
    alias: str = "medsearch"
    run_pattern: str = DEFAULT_RUN_PATTERN
    auto_publish: bool = True
    batch_docs: int = 500
    # Share of the live run's documents a new run may lack before publishing needs force.
    max_drop: float = DEFAULT_MAX_DROP

    def __post_init__(self) -> None:
        PublishGuardConfig(max_drop=self.max_drop)  # refuses a share outside [0, 1]
        try:
            pattern = re.compile(self.run_pattern)
        except re.error as exc:
            raise InvalidInputError(f"run_pattern is not a regular expression: {exc}") from None
        if "run_id" not in pattern.groupindex:
            raise InvalidInputError("run_pattern needs a (?P<run_id>...) group")

    def run_id(self, url: str) -> str:
        """Return the run id of an output object (from its key), or raise."""
        key = storage.split_s3(url)[1] if storage.is_s3(url) else Path(url).as_posix()
        found = re.search(self.run_pattern, key)
        if not found:
            raise InvalidInputError(f"{url}: no run id in the key (pattern {self.run_pattern})")
        return found.group("run_id")

    def manifest_for(self, run_id: str) -> str:
        """Return the manifest location of a run (``{run_id}`` in the template is filled in)."""
        return self.manifest_url.replace("{run_id}", run_id)


@dataclass
class ObjectReport:
    """What loading one output object did, record by record."""

    url: str
    run_id: str
    index: str
    lines: int = 0
    written: int = 0
    vector_errors: list[BadRecord] = field(default_factory=list)
    malformed: list[BadRecord] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    failed: list[BadRecord] = field(default_factory=list)
    model: str | None = None
    fingerprint: str | None = None
    dim: int | None = None

    @property
    def complete(self) -> bool:
        """Whether every document the object holds is in the index (nothing to retry)."""
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        """Return the report written beside the object."""
        return {
            "url": self.url,
            "run_id": self.run_id,
            "index": self.index,
            "lines": self.lines,
            "written": self.written,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "vector_errors": [b.to_json() for b in self.vector_errors],
            "malformed": [b.to_json() for b in self.malformed],
            "unknown": self.unknown,
            "failed": [b.to_json() for b in self.failed],
        }


@dataclass
class LoadResult:
    """The outcome of loading a group of output objects (those one notification names)."""

    urls: list[str]
    reports: list[ObjectReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every object loaded completely (else the notification must be retried)."""
        return not self.errors and all(r.complete for r in self.reports)

    @property
    def failed_ids(self) -> list[str]:
        """The ids of the documents the index rejected (for the logs: ids, never captions)."""
        return [bad.image_id for r in self.reports for bad in r.failed]


def is_output_object(url: str) -> bool:
    """Whether a URL names a batch-transform output object (not a report or anything else)."""
    return url.endswith(TRANSFORM_OUTPUT_SUFFIX)


# --- output lines -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VectorLine:
    """One good output line: an id, its vector, and the model (and weights) that made it."""

    image_id: str
    vector: list[float]
    model: str | None
    fingerprint: str | None = None


def parse_line(line: str, where: str) -> VectorLine | BadRecord:
    """Parse one output line; a vector line or a :class:`BadRecord` saying what is wrong."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        return BadRecord(where, f"malformed line: not JSON ({exc.msg})")
    if not isinstance(raw, Mapping):
        return BadRecord(where, "malformed line: not a JSON object")
    image_id = raw.get("image_id")
    if not isinstance(image_id, str) or not image_id:
        return BadRecord(where, "malformed line: no image_id")
    if "error" in raw:
        return BadRecord(image_id, f"{VECTORIZE_ERROR}: {raw['error']}")
    vector = raw.get("vector")
    if (
        not isinstance(vector, list)
        or not vector
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vector)
    ):
        return BadRecord(image_id, f"malformed line {where}: vector must be a list of numbers")
    if not all(math.isfinite(x) for x in vector):
        return BadRecord(image_id, f"malformed line {where}: vector has NaN or infinity")
    dim = raw.get("dim")
    if dim is not None and dim != len(vector):
        return BadRecord(image_id, f"malformed line {where}: dim {dim} but {len(vector)} values")
    model, fingerprint = raw.get("model"), raw.get("fingerprint")
    return VectorLine(
        image_id,
        vector,
        model if isinstance(model, str) else None,
        fingerprint if isinstance(fingerprint, str) and fingerprint else None,
    )


def _lines(url: str) -> Iterator[tuple[int, str]]:
    text = storage.read_text(url)
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


# --- the loader ---------------------------------------------------------------------------------


class IndexLoader:
    """Loads output objects into run indexes and publishes complete runs.

    ``index_factory`` opens the engine on a physical index name; ``index_name`` maps (alias,
    run id) to that name. Manifests are cached per instance (one instance per container).
    """

    def __init__(
        self,
        config: LoaderConfig,
        index_factory: IndexFactory,
        index_name: IndexNamer,
        *,
        manifest_reader: Callable[[str], Sequence[Record]] = read_manifest,
    ) -> None:
        self.config = config
        self._open = index_factory
        self._name = index_name
        self._read_manifest = manifest_reader
        self._manifests: dict[str, dict[str, Record]] = {}
        self._created: set[tuple[str, str | None]] = set()

    def manifest(self, run_id: str) -> dict[str, Record]:
        """Return the run's manifest by id, read once and cached."""
        url = self.config.manifest_for(run_id)
        if url not in self._manifests:
            records = self._read_manifest(url)
            self._manifests = {url: {r.image_id: r for r in records}}  # one run at a time
            log.info("manifest %s: %d records", url, len(records))
        return self._manifests[url]

    def index_for(self, run_id: str) -> RunIndex:
        """Return the engine on a run's physical index."""
        return self._open(self._name(self.config.alias, run_id))

    def load_object(self, url: str) -> ObjectReport:
        """Load one output object into its run's index and write its report beside it."""
        run_id = self.config.run_id(url)
        index = self.index_for(run_id)
        report = ObjectReport(url=url, run_id=run_id, index=index.name)
        manifest = self.manifest(run_id)
        batch: list[Document] = []
        with_vector: set[str] = set()
        written: set[str] = set()  # ids, so a repeated line is one document
        for number, line in _lines(url):
            report.lines += 1
            parsed = parse_line(line, f"{url}:{number}")
            if isinstance(parsed, VectorLine) and report.dim is None:
                report.dim, report.model = len(parsed.vector), parsed.model
                report.fingerprint = parsed.fingerprint
            if isinstance(parsed, VectorLine) and len(parsed.vector) != report.dim:
                parsed = BadRecord(
                    parsed.image_id, f"{len(parsed.vector)}-d vector, expected {report.dim}"
                )
            elif isinstance(parsed, VectorLine) and parsed.fingerprint != report.fingerprint:
                # One index, one model: a vector of other weights would rank in another space.
                parsed = BadRecord(
                    parsed.image_id,
                    f"vector of weights {parsed.fingerprint}, expected {report.fingerprint}",
                )
            record = manifest.get(parsed.image_id)
            if record is None:
                if isinstance(parsed, VectorLine) or parsed.reason.startswith(VECTORIZE_ERROR):
                    report.unknown.append(parsed.image_id)
                else:
                    report.malformed.append(parsed)
                continue
            if isinstance(parsed, BadRecord):
                bad = report.vector_errors if parsed.reason.startswith(VECTORIZE_ERROR) else None
                (bad if bad is not None else report.malformed).append(parsed)
                # A known image without a usable vector: its caption stays searchable by text,
                # unless a good line of this object already gave it a vector.
                if record.image_id not in with_vector:
                    batch.append(_document(record, None))
            else:
                with_vector.add(record.image_id)
                batch.append(_document(record, parsed))
            if len(batch) >= self.config.batch_docs:
                self._write(index, batch, report, written)
                batch = []
        if batch:
            self._write(index, batch, report, written)
        report.written = len(written)
        self._log(report)
        storage.write_text(url + REPORT_SUFFIX, json.dumps(report.to_json()) + "\n")
        return report

    def _ensure_index(self, index: RunIndex, report: ObjectReport) -> None:
        """Create the run's index once per model (sized by the first vector), or find it there.

        The model id and weight fingerprint of the vectors go into the index; an object of other
        weights than the index records is refused by ``create``, so one run never mixes models.
        """
        key = (index.name, report.fingerprint)
        if key in self._created:
            return
        dim = report.dim
        if dim is None:
            dim = index.dim
            if dim is None:
                raise SearchIndexError(
                    f"{index.name} does not exist and no vector has sized it yet; retry later"
                )
        model = IndexModel(report.model, report.fingerprint) if report.dim is not None else None
        index.create(dim, loading=True, alias=self.config.alias, model=model)
        self._created.add(key)

    def _write(
        self, index: RunIndex, batch: list[Document], report: ObjectReport, written: set[str]
    ) -> None:
        self._ensure_index(index, report)
        result: UpsertResult = index.upsert(batch)
        failed = {image_id for image_id, _ in result.failed}
        written.update(d.image_id for d in batch if d.image_id not in failed)
        report.failed.extend(BadRecord(i, reason) for i, reason in result.failed)

    def _log(self, report: ObjectReport) -> None:
        # The extra keys make the line structured where a JSON formatter (Powertools) is used.
        log.info(
            "loaded %s into %s: %d lines, %d written, %d vectorize errors, %d malformed, "
            "%d unknown ids, %d failed",
            report.url,
            report.index,
            report.lines,
            report.written,
            len(report.vector_errors),
            len(report.malformed),
            len(report.unknown),
            len(report.failed),
            extra={
                "object": report.url,
                "index": report.index,
                "written": report.written,
                "failed": [b.to_json() for b in report.failed],
                "vector_errors": [b.to_json() for b in report.vector_errors],
                "malformed": [b.to_json() for b in report.malformed],
                "unknown_ids": report.unknown,
            },
        )
        for bad in report.vector_errors + report.malformed + report.failed:
            log.warning("record %s: %s", bad.image_id, bad.reason)
        if report.unknown:
            log.warning("ids not in the manifest: %s", ", ".join(report.unknown))

    def load_objects(self, urls: Iterable[str]) -> LoadResult:
        """Load output objects one by one; one that cannot be read is an error of the result.

        Publishing is a separate step (:meth:`publish_completed`), so a caller that loads several
        groups (an SQS batch) publishes each run once, after all of them.
        """
        result = LoadResult(urls=list(urls))
        for url in result.urls:
            try:
                result.reports.append(self.load_object(url))
            except MedsearchError as exc:
                log.error("cannot load %s: %s", url, exc)
                result.errors.append(f"{url}: {exc}")
        return result

    def publish_completed(
        self, reports: Iterable[ObjectReport], *, merge_wait: float | None = None
    ) -> list[str]:
        """Publish the runs of these objects that are complete now (with ``auto_publish``).

        Returns the physical index names published. A run that cannot be published is logged,
        not raised: its objects are loaded, and a later object (or a manual publish) retries.
        """
        if not self.config.auto_publish:
            return []
        prefixes = {r.run_id: r.url.rsplit("/", 1)[0] for r in reports}
        published: list[str] = []
        for run_id, prefix in prefixes.items():
            try:
                if self.publish(run_id, prefix, merge_wait=merge_wait):
                    published.append(self._name(self.config.alias, run_id))
            except MergeRunning as exc:
                log.info("run %s not published yet: %s", run_id, exc)
            except MedsearchError as exc:
                log.error("cannot publish run %s: %s", run_id, exc)
        return published

    def run_status(self, run_id: str, prefix: str) -> RunStatus:
        """Read the reports of a run's output prefix and tell whether the run is complete."""
        outputs, reports = _outputs_and_reports(prefix)
        status = RunStatus(run_id=run_id, objects=len(outputs), manifest=len(self.manifest(run_id)))
        for url in outputs:
            if url + REPORT_SUFFIX not in reports:
                status.missing.append(url)
                continue
            data = json.loads(storage.read_text(url + REPORT_SUFFIX))
            status.written += int(data.get("written", 0))
            if data.get("failed"):
                status.incomplete.append(url)
        return status

    def publish(
        self,
        run_id: str,
        prefix: str,
        *,
        force: bool = False,
        merge_wait: float | None = None,
    ) -> bool:
        """Publish a complete run: restore settings, merge, verify the count, swap the alias.

        Complete = every output object under ``prefix`` has a report without failures, and the
        reports wrote every manifest record (with or without a vector); ``force`` skips
        the manifest check (a transform over part of the manifest) and allows publishing an
        older run over a newer one (a rollback); without it, a late redelivery of an old run
        never replaces a newer live run. Raises if the index holds a different number of
        documents than the reports wrote, does not answer :meth:`check_answers`, or is empty or
        holds more than ``max_drop`` fewer documents than the live run
        (:mod:`medsearch.publish_guard`; ``force`` publishes it anyway); the alias stays where
        it was. A merge longer than ``merge_wait`` seconds raises
        :class:`MergeRunning` (the alias stays; publishing again waits for the merge).
        """
        status = self.run_status(run_id, prefix)
        if not status.ready(force=force):
            log.info("run %s not complete yet: %s", run_id, status.describe())
            return False
        index = self.index_for(run_id)
        alias = self.config.alias
        if index.name in index.alias_targets(alias):
            log.info("run %s is already live behind %s", run_id, alias)
            return True
        newer = None if force else index.newer_live_index(alias)
        if newer is not None:
            log.warning(
                "run %s not published: the newer %s is live behind %s", run_id, newer, alias
            )
            return False
        index.finish_load(merge_wait=merge_wait)
        count = index.count()
        if count != status.written:
            raise SearchIndexError(
                f"run {run_id}: index {index.name} has {count} documents, reports wrote "
                f"{status.written}; not publishing"
            )
        self.check_answers(run_id, index)
        live = self.live_count(index, alias)
        guard = PublishGuardConfig(max_drop=self.config.max_drop, allow_empty=force, force=force)
        check_publish(live, count, guard, what=f"alias {alias}", flags=("force", "force"))
        pruned = index.swap_alias(alias)  # the index's own config says how many runs to keep
        log.info(
            "published run %s: alias %s -> %s (%d documents); pruned %s",
            run_id,
            alias,
            index.name,
            count,
            ", ".join(pruned) or "nothing",
        )
        return True

    def live_count(self, index: RunIndex, alias: str) -> int | None:
        """Return the documents behind ``alias`` now (None: the alias points nowhere yet)."""
        targets = index.alias_targets(alias)
        return sum(self._open(target).count() for target in targets) if targets else None

    def check_answers(self, run_id: str, index: RunIndex) -> None:
        """Raise unless the run index answers a text query and, when the run has vectors, a kNN
        query with one of its stored vectors (finding at least that document's neighbours)."""
        try:
            index.search(SearchQuery(text=SMOKE_TEXT, k=1))
            vector = self._stored_vector(run_id, index)
            if vector is not None and not index.search(SearchQuery(vector=vector, k=1)).hits:
                raise SearchIndexError("a kNN query with a stored vector found nothing")
        except MedsearchError as exc:
            raise SearchIndexError(
                f"run {run_id}: index {index.name} does not answer queries ({exc}); not publishing"
            ) from exc
        kinds = "text and kNN" if vector is not None else "text"
        log.info("run %s: index %s answers %s queries", run_id, index.name, kinds)

    def _stored_vector(self, run_id: str, index: RunIndex) -> np.ndarray | None:
        """Return a vector the run index holds (from its first documents that have one)."""
        ids = list(self.manifest(run_id))[:SMOKE_VECTOR_IDS]
        for start in range(0, len(ids), SMOKE_LOOKUP):
            found = index.get_many(ids[start : start + SMOKE_LOOKUP], with_vectors=True)
            for document in found.values():
                if document.vector is not None:
                    return document.vector
        return None


@dataclass
class RunStatus:
    """How far a run's loading is: objects with reports, documents written, what is missing."""

    run_id: str
    objects: int
    manifest: int
    written: int = 0
    missing: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)

    def ready(self, *, force: bool = False) -> bool:
        """Whether the run can be published."""
        if self.objects == 0 or self.missing or self.incomplete:
            return False
        return force or self.written >= self.manifest

    def describe(self) -> str:
        """One line for the logs."""
        return (
            f"{self.objects} objects, {len(self.missing)} without report, "
            f"{len(self.incomplete)} with failures, {self.written} of {self.manifest} "
            "manifest records written"
        )

    def summary(self, records: int | None = None) -> dict[str, Any]:
        """Return ``{"complete", "failed", "objects", "loaded", "documents", "reason"}`` for a
        caller waiting on the run after its transform ended (``records``: the run's record count,
        default the manifest's).

        Complete: every output object has a report, none with rejected documents, and the reports
        wrote every record. Failed: a report has rejected documents, or every output object is
        loaded and records are still missing (nothing more will come). Otherwise loading goes on.
        """
        expected = self.manifest if records is None else records
        loaded = self.objects - len(self.missing)
        failed, complete = False, False
        if self.incomplete:
            failed = True
            names = ", ".join(url.rsplit("/", 1)[-1] for url in self.incomplete[:3])
            reason = (
                f"{len(self.incomplete)} of {self.objects} output objects have documents the "
                f"index rejected ({names})"
            )
        elif self.objects == 0:
            reason = "no output objects yet"
        elif self.missing:
            reason = (
                f"{loaded} of {self.objects} output objects loaded, {self.written} of "
                f"{expected} records written"
            )
        elif self.written < expected:
            failed = True
            reason = (
                f"all {self.objects} output objects are loaded but only {self.written} of "
                f"{expected} records were written"
            )
        else:
            complete = True
            reason = f"{self.written} of {expected} records loaded from {self.objects} objects"
        return {
            "complete": complete,
            "failed": failed,
            "objects": self.objects,
            "loaded": loaded,
            "documents": self.written,
            "reason": reason,
        }


def _document(record: Record, line: VectorLine | None) -> Document:
    """Join a manifest record with its vector (unit length, through the one normaliser)."""
    vector = None if line is None else normalize(np.asarray(line.vector, dtype=np.float32))
    return Document(
        image_id=record.image_id,
        caption=record.caption,
        vector=vector,
        image=record.image,
        metadata=dict(record.metadata),
    )


def _outputs_and_reports(prefix: str) -> tuple[list[str], set[str]]:
    """List the ``*.out`` objects and the report objects directly under a prefix."""
    names: Iterable[str]
    if storage.is_s3(prefix):
        bucket, key = storage.split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        names = (
            f"s3://{bucket}/{k}"
            for k in storage.object_store().list(bucket, key)
            if "/" not in k[len(key) :]
        )
    else:
        folder = Path(prefix)
        names = (str(p) for p in folder.iterdir() if p.is_file()) if folder.is_dir() else ()
    listed = sorted(names)
    outputs = [n for n in listed if is_output_object(n)]
    reports = {n for n in listed if n.endswith(TRANSFORM_OUTPUT_SUFFIX + REPORT_SUFFIX)}
    return outputs, reports


def publish_event(event: Mapping[str, Any]) -> tuple[str, bool] | None:
    """Return (output prefix, force) of a ``{"action": "publish", ...}`` request, else None.

    The request is this project's own payload (an operator invoking the loader by hand), not an
    AWS event format.
    """
    if event.get("action") != "publish":
        return None
    prefix = event.get("output_prefix")
    if not isinstance(prefix, str) or not prefix:
        raise InvalidInputError("a publish event needs 'output_prefix'")
    return prefix.rstrip("/"), bool(event.get("force", False))


def status_event(event: Mapping[str, Any]) -> tuple[str, int | None] | None:
    """Return (output prefix, record count) of a ``{"action": "status", ...}`` request, else None.

    Like the publish request, this project's own payload: the pipeline asks how far a run's
    loading is (``records`` is the run's record count; default: the run manifest's).
    """
    if event.get("action") != "status":
        return None
    prefix = event.get("output_prefix")
    if not isinstance(prefix, str) or not prefix:
        raise InvalidInputError("a status event needs 'output_prefix'")
    records = event.get("records")
    if records is not None and (
        isinstance(records, bool) or not isinstance(records, int) or records < 0
    ):
        raise InvalidInputError("'records' of a status event must be a count (>= 0)")
    return prefix.rstrip("/"), records
