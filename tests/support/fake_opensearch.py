"""An in-memory OpenSearch for tests: a real opensearch-py client over a fake connection.

:class:`FakeCluster` keeps indexes, aliases and search pipelines in dicts and answers the REST
calls the OpenSearch engine makes (index create/settings/mapping/refresh, ``_bulk``, ``_doc``,
``_mget``, ``_count``, ``_search``, ``_msearch``, ``_aliases``, ``_search/pipeline``) with the
documented semantics, so tests of the engine, the loader and the API see real behaviour:

- ``GET /`` names the version the cluster plays (``FakeCluster(version=...)``, default 2.19.1).
- BM25 (k1 1.2, b 0.75) over the caption terms of :mod:`medsearch.index.analysis`, scored as the
  version creating the index does: ``LegacyBM25Similarity`` (times k1 + 1) before 3.0,
  ``BM25Similarity`` from 3.0, as OpenSearch's default ``BM25`` similarity; ``match`` is an
  OR of the terms; ``bool`` (must/filter/should/must_not), ``terms``, ``term``, ``ids``,
  ``exists``, ``match_all``; ``knn`` with efficient filtering (exact, scores as OpenSearch's
  ``innerproduct``/``cosinesimil`` spaces); ``hybrid`` through a stored pipeline's
  ``normalization-processor``; ``terms`` aggregations; ``from``/``size``; exact totals.
- ``refresh_interval: -1`` is honoured: search and count see only refreshed documents, while
  ``GET _doc`` and ``_mget`` (with ``_source_excludes``) are real-time, as in OpenSearch.
- Roles: ``cluster.role = "search"`` plays the search API's read-only role of an Amazon
  OpenSearch Service domain with fine-grained access control: only ``_search``, ``_msearch``,
  ``_mget`` and ``_count`` are allowed; anything else (``_mapping``, ``_field_caps``, ``GET _doc``,
  ``PUT _search/pipeline``, settings, ``GET /``, writes) is a 403 ``security_exception``.
  ``cluster.role = "loader"`` plays the loader's role: everything on indexes (create, write,
  settings, mappings, aliases) and ``GET /``, but no cluster-level change (``_cluster``,
  ``_search/pipeline``, ``_snapshot``, ``_plugins``).
  ``cluster.access = DomainAccess(...)`` (:mod:`tests.support.domain_access`) enforces an IAM
  access policy instead, such as the one the CDK app gives the domain.
- Faults for resilience tests: :meth:`FakeCluster.fail_requests` (request-level 429/5xx),
  :meth:`FakeCluster.fail_items` (per-item bulk errors), :meth:`FakeCluster.storm` (random 429s on
  requests and bulk items) and :meth:`FakeCluster.crash_after` (raises :class:`SimulatedCrash`, a
  ``BaseException``, like a process killed mid-run).

Use::

    cluster = FakeCluster()
    client = fake_client(cluster)                 # an opensearchpy.OpenSearch
    index = OpenSearchIndex(client, "medsearch", sleep=lambda s: None)
    index = fake_index(cluster, "medsearch")      # the same in one call
    patch_index_loader(monkeypatch, cluster)      # the loader Lambda writes into this cluster
    ...
    cluster.requests                              # every request: method, path, params, body
    cluster.documents("medsearch")                # what an index or alias holds (real-time)
"""

from __future__ import annotations

import fnmatch
import json
import math
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from opensearchpy import Connection, OpenSearch
from opensearchpy.exceptions import ConnectionTimeout

from medsearch.index.analysis import BM25_B as B
from medsearch.index.analysis import BM25_K1 as K1
from medsearch.index.analysis import analyze as _analyze
from medsearch.index.analysis import bm25_scale_for_version

if TYPE_CHECKING:
    from medsearch.index.opensearch import OpenSearchIndex


MIN_SCORE, SINGLE_RESULT_SCORE = 0.001, 1.0


# OpenSearch's default dynamic_date_formats: strict_date_optional_time, yyyy/MM/dd [HH:mm:ss] Z.
_DATE = re.compile(r"^\d{4}(-\d{2}-\d{2}(T[\d:.]+(Z|[+-]\d{2}:?\d{2})?)?|/\d{2}/\d{2}( [\d:]+)?)$")


class SimulatedCrash(BaseException):
    """Raised by the fake to stop a run dead, as a killed Lambda or container would."""


@dataclass
class RecordedRequest:
    """One request as the server saw it: body parsed from JSON, or a list for NDJSON bodies."""

    method: str
    path: str
    params: dict[str, Any]
    body: Any


@dataclass
class FakeIndex:
    """One index: settings, mappings, real-time docs and the refreshed (searchable) view."""

    name: str
    settings: dict[str, Any]
    mappings: dict[str, Any]
    created: int
    # How much larger than BM25Similarity this index scores (set by the creating version).
    bm25_factor: float = 1.0
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    visible: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Lucene segments: a refresh that publishes changes writes one; a force-merge joins them.
    segments: int = 0

    @property
    def refresh_disabled(self) -> bool:
        return str(self.settings.get("refresh_interval", "1s")) == "-1"

    def write(self, image_id: str, source: dict[str, Any] | None) -> None:
        if source is None:
            self.docs.pop(image_id, None)
        else:
            self.docs[image_id] = source
        if not self.refresh_disabled:
            self.refresh()

    def refresh(self) -> None:
        if self.visible != self.docs:
            self.segments += 1
        self.visible = dict(self.docs)

    def vector_spec(self) -> dict[str, Any]:
        for spec in self.mappings.get("properties", {}).values():
            if spec.get("type") == "knn_vector":
                return spec
        return {}


class HttpError(Exception):
    """An error answer: status code and OpenSearch-style error body."""

    def __init__(self, status: int, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.body = {"error": {"type": kind, "reason": reason}, "status": status}


@dataclass
class _Fault:
    status: int
    remaining: int
    path: str
    body: str = ""
    method: str = ""


class FakeCluster:
    """The in-memory cluster shared by every fake connection made for it."""

    def __init__(self, seed: int = 0, version: str = "2.19.1", awareness_zones: int = 1) -> None:
        self.version = version
        self.role = "admin"  # or "search": the search API's read-only role (module docstring)
        # An IAM access policy to enforce instead of a role: anything with a ``refusal(method,
        # path)`` (tests.support.domain_access.DomainAccess, from the CDK app's template).
        self.access: Any = None
        # Multi-AZ with standby forces zone awareness over 3 zones (awareness_zones=3).
        self.awareness_zones = awareness_zones
        self.indexes: dict[str, FakeIndex] = {}
        self.aliases: dict[str, set[str]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.merges: list[tuple[str, int]] = []
        # Seconds of domain time the next force-merges need: a request waiting less times out
        # (the merge goes on, and the time it waited is spent), as a client giving up does.
        self.merge_seconds = 0.0
        self._lock = threading.RLock()
        self.requests: list[RecordedRequest] = []
        self.timeouts: list[float | None] = []  # each request's client timeout, in seconds
        self._faults: list[_Fault] = []
        self._item_faults: dict[str, list[int]] = {}
        self._storm_rate = 0.0
        self._partial: list[tuple[int, bool]] = []
        self._rng = random.Random(seed)
        self._clock = 0
        self._crash_after: tuple[str, int] | None = None
        self.injected = Counter[str]()

    # -- fault injection --

    def fail_requests(
        self, status: int = 429, times: int = 1, path: str = "", body: str = "", method: str = ""
    ) -> None:
        """Answer the next ``times`` requests whose path contains ``path`` (and whose body
        contains ``body``, and whose method is ``method`` when given) with ``status``."""
        self._faults.append(_Fault(status, times, path, body, method))

    def fail_items(self, image_ids: Iterable[str], status: int = 429, times: int = 1) -> None:
        """Reject these ids in bulk ``times`` times with ``status`` (400 = mapping error)."""
        for image_id in image_ids:
            self._item_faults.setdefault(image_id, []).extend([status] * times)

    def partial_results(
        self, *, failed_shards: int = 1, timed_out: bool = False, times: int = 1
    ) -> None:
        """Answer the next ``times`` searches with only part of the shards, or timed out (a
        node under load, a shard relocating), as a 200 with ``_shards.failed`` / ``timed_out``."""
        self._partial = [(failed_shards, timed_out)] * times

    def storm(self, rate: float) -> None:
        """From now on answer a ``rate`` share of requests and of bulk items with 429."""
        self._storm_rate = rate

    def crash_after(self, requests: int, path: str = "_bulk") -> None:
        """Raise :class:`SimulatedCrash` on the request after ``requests`` matching ones."""
        self._crash_after = (path, requests)

    def calm(self) -> None:
        """Remove every injected fault."""
        self._faults.clear()
        self._item_faults.clear()
        self._storm_rate = 0.0
        self._crash_after = None

    # -- queries for assertions --

    def documents(self, name: str) -> dict[str, dict[str, Any]]:
        """Return the real-time documents of an index or alias (``_id`` -> ``_source``), the
        engine's index record left out (it describes the index; it is no image)."""
        from medsearch.index.opensearch import RECORD_ID

        out: dict[str, dict[str, Any]] = {}
        for index in self._resolve(name):
            out.update(index.docs)
        out.pop(RECORD_ID, None)
        return out

    def requests_to(self, fragment: str, method: str | None = None) -> list[RecordedRequest]:
        """Return the recorded requests whose path contains ``fragment``."""
        return [
            r
            for r in self.requests
            if fragment in r.path and (method is None or r.method == method)
        ]

    # -- the server --

    def handle(
        self, method: str, path: str, params: Mapping[str, Any] | None, body: bytes | None
    ) -> tuple[int, Any]:
        """Answer one HTTP request: (status, JSON-able body); one at a time, as the engine may
        send bulk requests from several threads."""
        with self._lock:
            return self._handle(method, path, params, body)

    def _handle(
        self, method: str, path: str, params: Mapping[str, Any] | None, body: bytes | None
    ) -> tuple[int, Any]:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        parsed: Any = None
        if text:
            if path.endswith(("/_bulk", "/_msearch")):
                parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                parsed = json.loads(text)
        params = dict(params or {})
        self.requests.append(RecordedRequest(method, path, params, parsed))
        if self._crash_after is not None and self._crash_after[0] in path:
            fragment, left = self._crash_after
            if left <= 0:
                self._crash_after = None
                raise SimulatedCrash(f"crashed before {method} {path}")
            self._crash_after = (fragment, left - 1)
        refusal = self._refusal(method, path)
        if refusal is not None:
            return 403, _error(403, "security_exception", refusal)
        for fault in self._faults:
            if (
                fault.remaining > 0
                and fault.path in path
                and fault.body in (text or "")
                and fault.method in ("", method)
            ):
                fault.remaining -= 1
                self.injected[f"request {fault.status}"] += 1
                return fault.status, _error(fault.status, "injected", "injected fault")
        if self._storm_rate and self._rng.random() < self._storm_rate:
            self.injected["request 429"] += 1
            return 429, _error(429, "too_many_requests", "injected storm")
        try:
            return 200, self._route(method, path, params, parsed)
        except HttpError as exc:
            return exc.status, exc.body

    def _refusal(self, method: str, path: str) -> str | None:
        """Why the current role may not make this request, or None (see the module docstring)."""
        if self.access is not None:
            return self.access.refusal(method, path)
        parts = [p for p in path.split("/") if p]
        if self.role == "loader":
            cluster_level = parts[:1] in (["_cluster"], ["_snapshot"], ["_plugins"], ["_nodes"])
            if not (cluster_level or parts[:2] == ["_search", "pipeline"]):
                return None
        elif self.role != "search":
            return None
        action = parts[1] if len(parts) >= 2 else (parts[0] if parts else "")
        reads = {"_search", "_msearch", "_mget", "_count"}
        if action in reads and method in ("GET", "POST") and parts[0] != "_search":
            return None
        return (
            f"no permissions for [{method} /{'/'.join(parts)}] and User "
            "[name=medsearch-search-api, backend_roles=[search]]"
        )

    def _route(self, method: str, path: str, params: dict[str, Any], body: Any) -> Any:
        parts = [p for p in path.split("/") if p]
        if not parts and method == "GET":
            return {"version": {"distribution": "opensearch", "number": self.version}}
        if parts == ["_aliases"]:
            return self._update_aliases(body)
        if len(parts) == 2 and parts[0] == "_alias":
            return self._get_alias(parts[1])
        if parts[:2] == ["_search", "pipeline"] and len(parts) == 3:
            if method == "PUT":
                self.pipelines[parts[2]] = body
                return {"acknowledged": True}
            if parts[2] not in self.pipelines:
                raise HttpError(404, "resource_not_found_exception", f"pipeline {parts[2]}")
            return {parts[2]: self.pipelines[parts[2]]}
        if len(parts) == 1:
            return self._index_op(method, parts[0], body)
        target, action = parts[0], parts[1]
        if action == "_update" and len(parts) == 3 and method == "POST":
            return self._update_doc(target, unquote(parts[2]), body)
        if action == "_doc" and len(parts) == 3:
            if method == "PUT":
                return self._put_doc(target, unquote(parts[2]), body)
            return self._get_doc(target, unquote(parts[2]))
        handlers: dict[str, Callable[[], Any]] = {
            "_settings": lambda: self._settings(method, target, body),
            "_mapping": lambda: self._get_mapping(target),
            "_refresh": lambda: self._refresh(target),
            "_bulk": lambda: self._bulk(target, body),
            "_count": lambda: self._count(target, body),
            "_search": lambda: self._search(target, body or {}, params),
            "_msearch": lambda: self._msearch(target, body),
            "_mget": lambda: self._mget(target, body, params),
            "_field_caps": lambda: self._field_caps(target, params),
            "_forcemerge": lambda: self._forcemerge(target, params),
            "_segments": lambda: self._segments(target),
        }
        if action not in handlers:
            raise HttpError(400, "illegal_argument_exception", f"unsupported {method} {path}")
        return handlers[action]()

    # -- indexes and aliases --

    def _resolve(self, name: str, *, must_exist: bool = True) -> list[FakeIndex]:
        found: list[FakeIndex] = []
        for pattern in name.split(","):
            if pattern in self.aliases:
                found.extend(self.indexes[i] for i in sorted(self.aliases[pattern]))
            elif any(c in pattern for c in "*?"):
                found.extend(self.indexes[i] for i in sorted(fnmatch.filter(self.indexes, pattern)))
            elif pattern in self.indexes:
                found.append(self.indexes[pattern])
            elif must_exist:
                raise HttpError(404, "index_not_found_exception", f"no such index [{pattern}]")
        return found

    def _index_op(self, method: str, name: str, body: Any) -> Any:
        if method == "HEAD":
            self._resolve(name)
            return {}
        if method == "DELETE":
            for index in self._resolve(name):
                del self.indexes[index.name]
                for members in self.aliases.values():
                    members.discard(index.name)
            self.aliases = {a: m for a, m in self.aliases.items() if m}
            return {"acknowledged": True}
        if method == "PUT":
            if name in self.indexes or name in self.aliases:
                raise HttpError(
                    400, "resource_already_exists_exception", f"index [{name}] already exists"
                )
            body = body or {}
            settings = dict(body.get("settings", {}).get("index", {}))
            self._check_copies({"number_of_replicas": 1, **settings})
            mappings = body.get("mappings", {})
            vector = next(
                (
                    s
                    for s in mappings.get("properties", {}).values()
                    if s.get("type") == "knn_vector"
                ),
                None,
            )
            if vector is not None and not settings.get("knn"):
                raise HttpError(400, "mapper_parsing_exception", "knn_vector needs index.knn")
            self._clock += 1
            self.indexes[name] = FakeIndex(
                name,
                settings,
                mappings,
                created=self._clock,
                bm25_factor=bm25_scale_for_version(self.version),
            )
            return {"acknowledged": True, "index": name}
        raise HttpError(405, "method_not_allowed", f"{method} /{name}")

    def _check_copies(self, settings: Mapping[str, Any]) -> None:
        """Refuse replica counts a zone-aware domain (Multi-AZ with standby) refuses."""
        if "number_of_replicas" not in settings or self.awareness_zones == 1:
            return
        copies = 1 + int(settings["number_of_replicas"])
        if copies % self.awareness_zones:
            raise HttpError(
                400,
                "validation_exception",
                f"Validation Failed: 1: expected total copies needs to be a multiple of total "
                f"awareness attributes [{self.awareness_zones}];",
            )

    def _settings(self, method: str, name: str, body: Any) -> Any:
        indexes = self._resolve(name)
        if method == "PUT":
            update = (body or {}).get("index", {})
            self._check_copies(update)
            for index in indexes:
                index.settings.update(update)
            return {"acknowledged": True}
        return {
            index.name: {
                "settings": {"index": {**index.settings, "creation_date": str(index.created)}}
            }
            for index in indexes
        }

    def _get_mapping(self, name: str) -> Any:
        out = {}
        for index in self._resolve(name):
            mappings = json.loads(json.dumps(index.mappings))
            # Dynamic metadata fields appear in the mapping once documents used them.
            metadata: dict[str, Any] = {}
            detect_dates = index.mappings.get("date_detection", True) is not False
            for source in index.docs.values():
                for key, value in (source.get("metadata") or {}).items():
                    # The first value decides, and OpenSearch maps date-like strings as dates
                    # before any dynamic template for strings applies (unless date_detection off).
                    is_date = detect_dates and isinstance(value, str) and _DATE.match(value)
                    metadata.setdefault(key, {"type": "date" if is_date else "keyword"})
            if metadata:
                mappings.setdefault("properties", {}).setdefault("metadata", {})["properties"] = (
                    metadata
                )
            out[index.name] = {"mappings": mappings}
        return out

    def _refresh(self, name: str) -> Any:
        for index in self._resolve(name):
            index.refresh()
        return {"_shards": {"total": 1, "successful": 1, "failed": 0}}

    def _get_alias(self, alias: str) -> Any:
        if alias not in self.aliases:
            raise HttpError(404, "aliases_not_found_exception", f"alias [{alias}] missing")
        return {name: {"aliases": {alias: {}}} for name in sorted(self.aliases[alias])}

    def _update_aliases(self, body: Any) -> Any:
        aliases = {a: set(m) for a, m in self.aliases.items()}
        for action in body["actions"]:
            ((kind, spec),) = action.items()
            members = aliases.setdefault(spec["alias"], set())
            if kind == "remove" and any(c in spec["index"] for c in "*?"):
                # A pattern removes the alias from the matching indexes that hold it.
                members.difference_update(fnmatch.filter(members, spec["index"]))
                continue
            if spec["index"] not in self.indexes:
                raise HttpError(404, "index_not_found_exception", spec["index"])
            if kind == "add":
                members.add(spec["index"])
            elif kind == "remove":
                members.discard(spec["index"])  # OpenSearch 2.x: must_exist defaults to false
        # All actions apply together, or none (the request is atomic).
        self.aliases = {a: m for a, m in aliases.items() if m}
        return {"acknowledged": True}

    def _write_index(self, name: str) -> FakeIndex:
        indexes = self._resolve(name)
        if len(indexes) != 1:
            raise HttpError(400, "illegal_argument_exception", f"{name} is not one index")
        return indexes[0]

    # -- documents --

    def _put_doc(self, name: str, image_id: str, source: Any) -> Any:
        index = self._write_index(name)
        self._check_source(index, source)
        existed = image_id in index.docs
        index.write(image_id, source)
        return {
            "_index": index.name,
            "_id": image_id,
            "result": "updated" if existed else "created",
        }

    def _update_doc(self, name: str, image_id: str, body: Any) -> Any:
        """A partial update (``doc``): objects merged key by key, as OpenSearch merges them."""
        index = self._write_index(name)
        if image_id not in index.docs:
            raise HttpError(404, "document_missing_exception", f"[{image_id}]: document missing")

        def merge(into: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
            out = dict(into)
            for key, value in new.items():
                old = out.get(key)
                both = isinstance(old, dict) and isinstance(value, Mapping)
                out[key] = merge(old, value) if both else value
            return out

        index.write(image_id, merge(index.docs[image_id], body["doc"]))
        return {"_index": index.name, "_id": image_id, "result": "updated"}

    def _forcemerge(self, name: str, params: Mapping[str, Any]) -> Any:
        target = int(params.get("max_num_segments", 1))
        indexes = self._resolve(name)
        for index in indexes:
            index.segments = min(index.segments, max(target, 1))
        self.merges.append((name, target))
        return {"_shards": {"total": len(indexes), "successful": len(indexes), "failed": 0}}

    def _segments(self, name: str) -> Any:
        """``GET _segments``: one primary shard per index with its segments."""
        return {
            "indices": {
                index.name: {
                    "shards": {
                        "0": [
                            {
                                "routing": {"primary": True},
                                "segments": {f"_{i}": {} for i in range(index.segments)},
                            }
                        ]
                    }
                }
                for index in self._resolve(name)
            }
        }

    def _field_caps(self, name: str, params: Mapping[str, Any]) -> Any:
        """Field capabilities: each mapped field's type, for the ``fields`` patterns asked."""
        patterns = str(params.get("fields", "*")).split(",")
        fields: dict[str, Any] = {}
        for info in self._get_mapping(name).values():

            def walk(properties: Mapping[str, Any], prefix: str) -> None:
                for field_name, spec in properties.items():
                    path = prefix + field_name
                    kind = spec.get("type", "object")
                    if any(fnmatch.fnmatchcase(path, p) for p in patterns):
                        fields[path] = {kind: {"type": kind, "searchable": kind != "object"}}
                    walk(spec.get("properties", {}), path + ".")

            walk(info["mappings"].get("properties", {}), "")
        return {"indices": [i.name for i in self._resolve(name)], "fields": fields}

    def _get_doc(self, name: str, image_id: str) -> Any:
        index = self._write_index(name)
        if image_id not in index.docs:
            raise HttpError(404, "not_found", image_id) from None
        return {
            "_index": index.name,
            "_id": image_id,
            "found": True,
            "_source": index.docs[image_id],
        }

    def _mget(self, name: str, body: Any, params: dict[str, Any]) -> Any:
        ids = body.get("ids", []) if isinstance(body, dict) else []
        try:
            index = self._write_index(name)
        except HttpError as exc:
            # As OpenSearch: a 200 whose every document carries the index's error.
            return {"docs": [{"_index": name, "_id": i, "error": exc.body["error"]} for i in ids]}
        excluded = set(str(params.get("_source_excludes") or "").split(",")) - {""}
        included = set(str(params.get("_source_includes") or "").split(",")) - {""}
        docs = []
        for image_id in ids:
            if image_id not in index.docs:
                docs.append({"_index": index.name, "_id": image_id, "found": False})
                continue
            source = {
                k: v
                for k, v in index.docs[image_id].items()
                if k not in excluded and (not included or k in included)
            }
            docs.append({"_index": index.name, "_id": image_id, "found": True, "_source": source})
        return {"docs": docs}

    def _bulk(self, name: str, lines: list[Any]) -> Any:
        index = self._write_index(name)
        items: list[dict[str, Any]] = []
        position = 0
        while position < len(lines):
            ((kind, meta),) = lines[position].items()
            position += 1
            source = None
            if kind in ("index", "create"):
                source = lines[position]
                position += 1
            image_id = str(meta["_id"])
            outcome: dict[str, Any] = {"_index": index.name, "_id": image_id}
            status = self._item_fault(image_id)
            try:
                if status is not None:
                    kinds = {429: "es_rejected_execution_exception"}
                    raise HttpError(
                        status, kinds.get(status, "mapper_parsing_exception"), "injected"
                    )
                if kind == "delete":
                    existed = image_id in index.docs
                    index.write(image_id, None)
                    outcome.update(
                        status=200 if existed else 404, result="deleted" if existed else "not_found"
                    )
                else:
                    self._check_source(index, source)
                    existed = image_id in index.docs
                    index.write(image_id, source)
                    outcome.update(
                        status=200 if existed else 201, result="updated" if existed else "created"
                    )
            except HttpError as exc:
                outcome.update(status=exc.status, error=exc.body["error"])
            items.append({kind: outcome})
        errors = any(next(iter(i.values())).get("error") for i in items)
        return {"took": 1, "errors": errors, "items": items}

    def _item_fault(self, image_id: str) -> int | None:
        queued = self._item_faults.get(image_id)
        if queued:
            self.injected[f"item {queued[0]}"] += 1
            return queued.pop(0)
        if self._storm_rate and self._rng.random() < self._storm_rate:
            self.injected["item 429"] += 1
            return 429
        return None

    def _check_source(self, index: FakeIndex, source: dict[str, Any]) -> None:
        properties = index.mappings.get("properties", {})
        if index.mappings.get("dynamic") == "strict":
            unknown = set(source) - set(properties)
            if unknown:
                raise HttpError(400, "strict_dynamic_mapping_exception", f"fields {unknown}")
        for name, spec in properties.items():
            if spec.get("type") == "knn_vector" and name in source:
                vector = source[name]
                if not isinstance(vector, list) or len(vector) != spec["dimension"]:
                    raise HttpError(
                        400,
                        "mapper_parsing_exception",
                        f"Vector dimension mismatch. Expected: {spec['dimension']}",
                    )

    # -- search --

    def _count(self, name: str, body: Any) -> Any:
        query = (body or {}).get("query", {"match_all": {}})
        docs = self._visible(name)
        return {"count": len(_Evaluator(docs, self._index_for(name)).matching(query))}

    def _visible(self, name: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for index in self._resolve(name):
            out.update(index.visible)
        return out

    def _index_for(self, name: str) -> FakeIndex | None:
        indexes = self._resolve(name)
        return indexes[0] if indexes else None

    def _msearch(self, name: str, lines: list[Any]) -> Any:
        responses = []
        for header, body in zip(lines[::2], lines[1::2], strict=True):
            target = header.get("index", name)
            try:
                responses.append({**self._search(target, body, {}), "status": 200})
            except HttpError as exc:
                responses.append(exc.body)
        return {"took": 1, "responses": responses}

    def _search(self, name: str, body: dict[str, Any], params: dict[str, Any]) -> Any:
        docs = self._visible(name)
        evaluator = _Evaluator(docs, self._index_for(name))
        query = body.get("query", {"match_all": {}})
        offset, size = int(body.get("from", 0)), int(body.get("size", 10))
        if "hybrid" in query:
            pipeline_id = params.get("search_pipeline") or body.get("search_pipeline")
            # A stored pipeline by id, or a temporary one in the request body.
            pipeline = pipeline_id if isinstance(pipeline_id, dict) else None
            if isinstance(pipeline_id, str):
                pipeline = self.pipelines.get(pipeline_id)
            if pipeline is None:
                raise HttpError(400, "illegal_argument_exception", "hybrid needs a search pipeline")
            scored = evaluator.hybrid(query["hybrid"], pipeline, offset + size)
        else:
            scores = evaluator.matching(query)
            if "image_id" in json.dumps(body.get("sort", [])):  # [_score desc, image_id asc]
                scored = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
            else:
                scored = sorted(scores.items(), key=lambda item: -item[1])
        total = len(scored)
        page = scored[offset : offset + size]
        source = body.get("_source", True)
        named = evaluator.named_queries(query) if params.get("include_named_queries_score") else {}
        homes = self._homes(name)
        hits = []
        for image_id, score in page:
            hit: dict[str, Any] = {"_index": homes.get(image_id, name), "_id": image_id}
            hit["_score"] = score
            if source is not False:
                hit["_source"] = docs[image_id]
            if named:
                scores_of = {n: m[image_id] for n, m in named.items() if image_id in m}
                hit["matched_queries"] = scores_of
            hits.append(hit)
        failed, timed_out = self._partial.pop(0) if self._partial else (0, False)
        shards: dict[str, Any] = {"total": 1 + failed, "successful": 1, "failed": failed}
        if failed:
            reason = {"type": "node_not_connected_exception", "reason": "injected shard failure"}
            shards["failures"] = [{"shard": 1, "index": name, "reason": reason}] * failed
        answer: dict[str, Any] = {
            "took": 1,
            "timed_out": timed_out,
            "_shards": shards,
            "hits": {"hits": hits},
        }
        # track_total_hits: exact up to 10,000 by default, a bound, every match (true), or none.
        track = body.get("track_total_hits", 10_000)
        if track is True:
            answer["hits"]["total"] = {"value": total, "relation": "eq"}
        elif track is not False:
            bound = int(track)
            relation = "gte" if total > bound else "eq"
            answer["hits"]["total"] = {"value": min(total, bound), "relation": relation}
        if "aggs" in body or "aggregations" in body:
            matched = evaluator.matching(query) if "hybrid" not in query else dict(scored)
            answer["aggregations"] = evaluator.aggregations(
                body.get("aggs") or body["aggregations"], matched
            )
        return answer

    def _homes(self, name: str) -> dict[str, str]:
        """Image id -> the physical index holding it (hits name it, not the alias)."""
        return {i: index.name for index in self._resolve(name) for i in index.visible}


class _Evaluator:
    """Evaluates the query DSL subset over a set of documents (exact, like a tiny Lucene)."""

    def __init__(self, docs: Mapping[str, dict[str, Any]], index: FakeIndex | None) -> None:
        self.docs = docs
        self.index = index
        self._stats: dict[str, tuple[dict[str, list[str]], float]] = {}

    def matching(self, query: Mapping[str, Any]) -> dict[str, float]:
        """Return id -> score for every matching document."""
        ((kind, spec),) = query.items()
        method = getattr(self, f"_q_{kind}", None)
        if method is None:
            raise HttpError(400, "parsing_exception", f"unknown query [{kind}]")
        return method(spec)

    def _q_match_all(self, spec: Any) -> dict[str, float]:
        return dict.fromkeys(self.docs, 1.0)

    def _q_bool(self, spec: Mapping[str, Any]) -> dict[str, float]:
        def clauses(key: str) -> list[Any]:
            value = spec.get(key, [])
            return value if isinstance(value, list) else [value]

        candidates = set(self.docs)
        scores = dict.fromkeys(candidates, 0.0)
        for clause in clauses("must"):
            matched = self.matching(clause)
            candidates &= matched.keys()
            for image_id in candidates:
                scores[image_id] += matched[image_id]
        for clause in clauses("filter"):
            candidates &= self.matching(clause).keys()
        for clause in clauses("must_not"):
            candidates -= self.matching(clause).keys()
        should = clauses("should")
        if should:
            required = spec.get("minimum_should_match")
            if required is None:
                required = 0 if clauses("must") or clauses("filter") else 1
            hits: Counter[str] = Counter()
            for clause in should:
                matched = self.matching(clause)
                for image_id in candidates & matched.keys():
                    hits[image_id] += 1
                    scores[image_id] += matched[image_id]
            candidates = {i for i in candidates if hits[i] >= int(required)}
        return {image_id: scores[image_id] for image_id in candidates}

    def _field(self, source: Mapping[str, Any], path: str) -> Any:
        value: Any = source
        for part in path.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return None
            value = value[part]
        return value

    def _keywords(self, source: Mapping[str, Any], path: str) -> set[str]:
        value = self._field(source, path)
        if value is None:
            return set()
        values = value if isinstance(value, list) else [value]
        return {str(v).lower() if isinstance(v, bool) else str(v) for v in values}

    def _q_terms(self, spec: Mapping[str, Any]) -> dict[str, float]:
        ((path, values),) = spec.items()
        wanted = {str(v) for v in values}
        return {i: 1.0 for i, s in self.docs.items() if self._keywords(s, path) & wanted}

    def _q_term(self, spec: Mapping[str, Any]) -> dict[str, float]:
        ((path, value),) = spec.items()
        value = value.get("value") if isinstance(value, Mapping) else value
        return self._q_terms({path: [value]})

    def _q_ids(self, spec: Mapping[str, Any]) -> dict[str, float]:
        return {i: 1.0 for i in spec["values"] if i in self.docs}

    def _q_exists(self, spec: Mapping[str, Any]) -> dict[str, float]:
        return {i: 1.0 for i, s in self.docs.items() if self._field(s, spec["field"]) is not None}

    def _terms_of(self, path: str) -> tuple[dict[str, list[str]], float]:
        if path not in self._stats:
            terms = {
                i: _analyze(value)
                for i, s in self.docs.items()
                if isinstance(value := self._field(s, path), str)
            }
            average = sum(map(len, terms.values())) / len(terms) if terms else 0.0
            self._stats[path] = (terms, average)
        return self._stats[path]

    def _q_match(self, spec: Mapping[str, Any]) -> dict[str, float]:
        ((path, options),) = spec.items()
        options = options if isinstance(options, Mapping) else {"query": options}
        query_terms = _analyze(str(options["query"]))
        operator = str(options.get("operator", "or")).lower()
        terms, average = self._terms_of(path)
        n = len(terms)
        frequencies = {t: Counter(doc_terms) for t, doc_terms in terms.items()}
        document_frequency = {
            term: sum(1 for c in frequencies.values() if term in c) for term in set(query_terms)
        }
        scores: dict[str, float] = {}
        for image_id, counts in frequencies.items():
            present = [t for t in query_terms if t in counts]
            if not present or (operator == "and" and len(set(present)) < len(set(query_terms))):
                continue
            length = sum(counts.values())
            score = 0.0
            for term in query_terms:
                tf = counts.get(term, 0)
                if not tf:
                    continue
                df = document_frequency[term]
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf / (tf + K1 * (1 - B + B * length / (average or 1.0)))
            scores[image_id] = score * (self.index.bm25_factor if self.index else 1.0)
        return scores

    def _q_knn(self, spec: Mapping[str, Any]) -> dict[str, float]:
        ((path, options),) = spec.items()
        query = [float(x) for x in options["vector"]]
        vector_spec = self.index.vector_spec() if self.index else {}
        if vector_spec and len(query) != vector_spec.get("dimension"):
            raise HttpError(400, "illegal_argument_exception", "query vector dimension mismatch")
        space = vector_spec.get("method", {}).get("space_type", "innerproduct")
        allowed = set(self.matching(options["filter"])) if "filter" in options else set(self.docs)
        scored = []
        for image_id in allowed:
            vector = self._field(self.docs[image_id], path)
            if vector is None:
                continue
            dot = sum(a * b for a, b in zip(query, vector, strict=True))
            if space == "cosinesimil":
                norm = math.sqrt(sum(a * a for a in query) * sum(b * b for b in vector)) or 1.0
                score = (1 + dot / norm) / 2
            else:  # innerproduct, as the faiss engine scores it
                score = 1 + dot if dot >= 0 else 1 / (1 - dot)
            scored.append((image_id, score))
        scored.sort(key=lambda item: -item[1])
        return dict(scored[: int(options["k"])])

    def hybrid(
        self, spec: Mapping[str, Any], pipeline: Mapping[str, Any], depth: int
    ) -> list[tuple[str, float]]:
        """Run each sub-query for its top ``depth``, then the pipeline's normalization-processor."""
        processor = pipeline["phase_results_processors"][0]["normalization-processor"]
        technique = processor.get("normalization", {}).get("technique", "min_max")
        combination = processor.get("combination", {})
        if technique != "min_max" or combination.get("technique", "arithmetic_mean") != (
            "arithmetic_mean"
        ):
            raise HttpError(400, "illegal_argument_exception", "fake supports min_max/mean only")
        queries = spec["queries"]
        weights = combination.get("parameters", {}).get("weights") or [1.0] * len(queries)
        if len(weights) != len(queries) or abs(sum(weights) - 1.0) > 1e-6:
            raise HttpError(400, "illegal_argument_exception", "weights must match and sum to 1")
        normalised: list[dict[str, float]] = []
        for sub in queries:
            ranked = sorted(self.matching(sub).items(), key=lambda item: -item[1])[:depth]
            if not ranked:
                normalised.append({})
                continue
            low, high = ranked[-1][1], ranked[0][1]
            values = {}
            for image_id, score in ranked:
                if high == low:
                    values[image_id] = SINGLE_RESULT_SCORE
                else:
                    values[image_id] = (score - low) / (high - low) or MIN_SCORE
            normalised.append(values)
        union = set().union(*normalised)
        combined = {
            i: sum(w * n.get(i, 0.0) for w, n in zip(weights, normalised, strict=True))
            / sum(weights)
            for i in union
        }
        return sorted(combined.items(), key=lambda item: -item[1])

    def named_queries(self, query: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        """Each named clause (``_name``) of a hybrid or bool query -> the scores it gives."""
        ((kind, spec),) = query.items()
        clauses = spec.get("queries", []) if kind == "hybrid" else [query]
        out: dict[str, dict[str, float]] = {}
        for clause in clauses:
            ((clause_kind, clause_spec),) = clause.items()
            inner = clause_spec if clause_kind == "bool" else next(iter(clause_spec.values()))
            if isinstance(inner, Mapping) and "_name" in inner:
                out[str(inner["_name"])] = self.matching(clause)
        return out

    def aggregations(self, aggs: Mapping[str, Any], matched: Mapping[str, float]) -> dict[str, Any]:
        """Answer ``terms``, ``filter`` and ``global`` aggregations (with sub-aggregations)."""
        out: dict[str, Any] = {}
        for name, spec in aggs.items():
            if "global" in spec or "filter" in spec:
                if "global" in spec:
                    within = dict.fromkeys(self.docs, 1.0)
                else:
                    chosen = self.matching(spec["filter"])
                    within = {i: s for i, s in matched.items() if i in chosen}
                out[name] = {"doc_count": len(within)}
                if spec.get("aggs"):
                    out[name] |= self.aggregations(spec["aggs"], within)
                continue
            terms = spec["terms"]
            counts: Counter[str] = Counter()
            for image_id in matched:
                counts.update(self._keywords(self.docs[image_id], terms["field"]))
            ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            out[name] = {
                "buckets": [{"key": k, "doc_count": c} for k, c in ordered[: terms.get("size", 10)]]
            }
        return out


def _error(status: int, kind: str, reason: str) -> dict[str, Any]:
    return {"error": {"type": kind, "reason": reason}, "status": status}


class FakeConnection(Connection):
    """An opensearch-py connection answering from a :class:`FakeCluster`, not the network."""

    def __init__(self, host: str = "fake", port: int | None = 9200, **kwargs: Any) -> None:
        self.cluster: FakeCluster = kwargs.pop("cluster")
        for unused in ("http_auth", "verify_certs", "use_ssl", "ssl_show_warn"):
            kwargs.pop(unused, None)
        super().__init__(host=host, port=port, **kwargs)

    def perform_request(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        timeout: float | None = None,
        ignore: Iterable[int] = (),
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, str], str]:
        self.cluster.timeouts.append(timeout)
        cluster = self.cluster
        if url.endswith("/_forcemerge") and timeout is not None and cluster.merge_seconds > timeout:
            cluster.merge_seconds -= timeout
            cluster.requests.append(RecordedRequest(method, url, dict(params or {}), None))
            raise ConnectionTimeout("TIMEOUT", f"read timed out after {timeout} s", None)
        status, answer = self.cluster.handle(method, url, params, body)
        raw = json.dumps(answer)
        if not 200 <= status < 300 and status not in tuple(ignore):
            self._raise_error(status, raw, "application/json")
        return status, {"content-type": "application/json"}, raw


def fake_client(cluster: FakeCluster) -> OpenSearch:
    """Return a real opensearch-py client whose requests go to ``cluster`` (no retries below)."""
    return OpenSearch(
        hosts=[{"host": "fake", "port": 9200}],
        connection_class=FakeConnection,
        cluster=cluster,
        max_retries=0,
    )


def fake_index(cluster: FakeCluster, name: str = "medsearch", **config: Any) -> OpenSearchIndex:
    """Return the OpenSearch engine on ``name`` in ``cluster``: no waiting between retries."""
    from medsearch.index.opensearch import OpenSearchConfig, OpenSearchIndex

    return OpenSearchIndex(
        fake_client(cluster), name, config=OpenSearchConfig(**config), sleep=lambda _: None
    )


def client_for(target: FakeCluster | OpenSearch) -> OpenSearch:
    """A client for a fake cluster, or the given client of a real one (the suite's node)."""
    return fake_client(target) if isinstance(target, FakeCluster) else target


def patch_index_loader(monkeypatch: Any, target: FakeCluster | OpenSearch) -> None:
    """Make the index loader Lambda talk to ``target``, a fake cluster or a real cluster's client
    (a fresh loader, undone after the test).

    Set the handler's environment first (``MEDSEARCH_OPENSEARCH_URL``, ``MEDSEARCH_MANIFEST_URL``,
    ``MEDSEARCH_OPENSEARCH_AUTH=none``; ``MEDSEARCH_RETRY_BACKOFF_BASE=0`` to skip waiting).
    """
    import logging
    from functools import lru_cache

    import lambdas.index_loader.handler as handler

    # The handler routes the core's loggers through Powertools at cold start; undo it afterwards.
    core = logging.getLogger("medsearch")
    for attribute in ("propagate", "handlers", "level"):
        monkeypatch.setattr(core, attribute, getattr(core, attribute))
    monkeypatch.setattr(handler, "make_client", lambda settings: client_for(target))
    monkeypatch.setattr(handler, "get_loader", lru_cache(maxsize=1)(handler.get_loader.__wrapped__))
