"""The search API: a FastAPI app factory shared by the local server and the Lambda (via Mangum).

``create_app`` does no work that needs a disk or a model: the :class:`SearchService` is built on
the first request that needs it (through the ``get_service`` dependency, which tests replace with
``app.dependency_overrides``) and then reused. Request rules live in :mod:`medsearch.search`;
this module only parses HTTP, and maps the core's errors to status codes in one table
(:data:`ERROR_STATUS`). Anything a client sends ends in a 4xx with a message saying what to fix;
a 500 means a fault in the server, and is logged.

Paths are under ``/v1`` (:data:`API_PREFIX`); the unversioned paths of earlier releases answer
the same, marked deprecated and left out of the schema. Every error has the one body of
:mod:`medsearch.api_errors`. Keys and rate limits of a local server: :mod:`medsearch.api_keys`.

Filters: every query parameter other than the endpoint's own is a metadata filter
(``?modality=CT&modality=MRI&plane=axial`` = (CT or MRI) and axial). A field the index does not
know is a 422 that lists the filterable fields, because a misspelt field silently giving no
results is worse than an error; an empty value (``?modality=``) sets no constraint. A numeric
field also filters by an inclusive range, ``?size_cm_min=2&size_cm_max=5``.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path as FilePath
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medsearch import __version__
from medsearch.api_errors import (
    ERROR_CODES,
    error_response,
    field_of,
    openapi_errors,
    validation_field,
)
from medsearch.constants import API_PREFIX
from medsearch.errors import (
    ConfigError,
    InvalidInputError,
    MedsearchError,
    NotFoundError,
    PayloadTooLargeError,
    SearchIndexError,
    StorageError,
    UnsupportedMediaTypeError,
)
from medsearch.index.base import MAX_K, Document, SearchIndex
from medsearch.search import (
    DEFAULT_ALPHA,
    DEFAULT_K,
    MAX_OFFSET,
    MAX_QUERY_CHARS,
    MAX_UPLOAD_BYTES,
    OPTIONAL_QUERY_PATTERN,
    QUERY_PATTERN,
    RESERVED_PARAMS,
    SIMILAR_MODES,
    TEXT_MODES,
    Health,
    ImageRecord,
    ImageUrl,
    SearchResponse,
    SearchService,
    api_image_path,
    text_fingerprint,
    validate_alpha,
    validate_k,
    validate_offset,
    validate_optional_query,
)
from medsearch.settings import ServiceSettings, load_settings

if TYPE_CHECKING:
    from medsearch.vectors import Encoder

log = logging.getLogger(__name__)

ServiceFactory = Callable[[], SearchService]

# The one mapping from the core's errors to HTTP: first match wins (subclasses come first).
ERROR_STATUS: tuple[tuple[type[MedsearchError], int], ...] = (
    (PayloadTooLargeError, 413),
    (UnsupportedMediaTypeError, 415),
    (NotFoundError, 404),
    (InvalidInputError, 422),
    (SearchIndexError, 503),
    (StorageError, 503),
    (MedsearchError, 500),
)
# The whole request may carry a little multipart overhead beyond the 10 MB file; bodies past this
# are refused while they stream in, before anything is buffered.
MAX_BODY_BYTES = MAX_UPLOAD_BYTES + 256 * 1024
_TOO_LARGE = f"request body too large: uploads are limited to {MAX_UPLOAD_BYTES} bytes (10 MB)"
# After a failed start, requests get 503 for a while instead of retrying a slow load each time.
RETRY_START_SECONDS = 10.0
# Parameters of each endpoint; every other query parameter is a metadata filter.
SEARCH_PARAMS = RESERVED_PARAMS
SIMILAR_PARAMS = frozenset({"mode", "alpha", "k", "offset"})
UPLOAD_PARAMS = frozenset({"q", "alpha", "k", "offset"})
# Connections queued before the server accepts them (uvicorn's default).
LISTEN_BACKLOG = 2048
# An image id as the schema states it (the rule of medsearch.data.manifest.validate_image_id).
IMAGE_ID_PATTERN = r"^(?!\.\.?$)[A-Za-z0-9._-]{1,128}$"


class StagePath:
    """Tell the app the path prefix it is served under (an API Gateway stage such as ``/prod``).

    Mangum strips the stage from the path and leaves ``root_path`` empty; with the prefix put
    back into ``root_path``, the docs' links point at the stage again (image links are relative,
    or absolute under the configured ``public_base_url``: never made from the request). The prefix
    is fixed (configured), or worked out per request from its scope (the Lambda edge reads it
    from the API Gateway event).
    """

    def __init__(self, app: ASGIApp, root_path: str | Callable[[Scope], str]) -> None:
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Set ``root_path`` on requests whose server did not set one."""
        if scope["type"] in ("http", "websocket") and not scope.get("root_path"):
            root = self.root_path if isinstance(self.root_path, str) else self.root_path(scope)
            if root:
                scope = {**scope, "root_path": root}
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over the limit with a JSON 413, before they are buffered.

    A declared Content-Length over the limit is answered at once; a body without one (chunked)
    is counted as it streams, and the request fails with 413 when it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared length, then count the streamed bytes."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(413, _TOO_LARGE, field="file")(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(status_code=413, detail=_TOO_LARGE)
            return message

        await self.app(scope, counted, send)


def status_for(exc: BaseException) -> int:
    """Return the HTTP status of a core error (500 for anything not in the table)."""
    for error_type, status in ERROR_STATUS:
        if isinstance(exc, error_type):
            return status
    return 500


# --- building the service from settings ---------------------------------------------------------


def image_url_for(settings: ServiceSettings) -> ImageUrl | None:
    """Return how result image URLs are made: the API's own file route unless a base URL is set.

    ``image_base_url`` may be a template with ``{image_id}`` and/or ``{name}`` (the stored file's
    name), e.g. ``https://cdn.example.org/images/{name}``; a plain base gets the name appended.
    Without one, links go to the API's file route: absolute under ``public_base_url`` when it is
    configured, else relative to the API's base URL. They are never built from a request's
    ``Host`` header: a client could point every link of a shared or cached answer anywhere.
    """
    template = settings.image_base_url
    if not template:
        public = settings.public_base_url
        if not public:
            return None
        return lambda document: f"{public}/{api_image_path(document)}"
    if "{" not in template:
        template = template.rstrip("/") + "/{name}"

    def image_url(document: Document) -> str | None:
        name = (document.image or "").replace("\\", "/").rsplit("/", 1)[-1] or document.image_id
        return template.format(image_id=document.image_id, name=name)

    return image_url


def open_index(settings: ServiceSettings) -> SearchIndex:
    """Open the configured engine's index (the engine is imported only now).

    OpenSearch with SigV4 needs AWS credentials, which only the Lambda edge creates: it opens the
    index itself and passes it to :func:`build_service`.
    """
    if settings.engine == "embedded":
        if not settings.index_dir:
            raise ConfigError("no index configured: set MEDSEARCH_INDEX_DIR or pass --index")
        from medsearch.index.embedded import open_index as open_embedded

        return open_embedded(settings.index_dir)
    if settings.opensearch_auth == "sigv4":
        raise ConfigError(
            "an OpenSearch index with SigV4 auth is opened by the caller with AWS credentials; "
            "use MEDSEARCH_OPENSEARCH_AUTH=basic|none here"
        )
    from medsearch.index.opensearch import OpenSearchIndex

    assert settings.opensearch_url is not None  # the settings validator requires it
    return OpenSearchIndex.from_url(
        settings.opensearch_url,
        settings.opensearch_index,
        http_auth=settings.opensearch_basic_auth(),
    )


def load_encoder(settings: ServiceSettings) -> Encoder | None:
    """Load the configured encoder, or None when no model is set (text search only)."""
    if not settings.model:
        return None
    if settings.encoder == "onnx":
        from medsearch.model.onnx_encoder import load_onnx_encoder

        return load_onnx_encoder(settings.model, int8=settings.onnx_int8)
    from medsearch.model.encoder import load_encoder as load_torch_encoder

    return load_torch_encoder(settings.model)


def build_service(settings: ServiceSettings, *, index: SearchIndex | None = None) -> SearchService:
    """Open the index (unless given) and load the model the settings name; check that they fit."""
    index = index if index is not None else open_index(settings)
    encoder = load_encoder(settings)
    if encoder is not None and index.dim is not None and encoder.dim != index.dim:
        raise ConfigError(
            f"model {encoder.model_id} makes {encoder.dim}-d vectors but the index holds "
            f"{index.dim}-d vectors: use the model the index was built with"
        )
    return SearchService(index, encoder, image_url=image_url_for(settings))


class LazyService:
    """Builds the service on first use, once, thread-safely; a failed start is retried later."""

    def __init__(self, factory: ServiceFactory) -> None:
        self._factory = factory
        self._service: SearchService | None = None
        self._lock = threading.Lock()
        self._failure: tuple[float, str] | None = None

    def __call__(self) -> SearchService:
        """Return the service, building it now if needed; SearchIndexError (503) if that fails."""
        if self._service is not None:
            return self._service
        with self._lock:
            if self._service is not None:
                return self._service
            if self._failure and time.monotonic() - self._failure[0] < RETRY_START_SECONDS:
                raise SearchIndexError(self._failure[1])
            try:
                self._service = self._factory()
            except Exception as exc:
                log.exception("search service failed to start")
                reason = str(exc) if isinstance(exc, MedsearchError) else type(exc).__name__
                # Clients are told why, but not where the server keeps its files (the log has it).
                message = f"the search service is not available: {without_disk_paths(reason)}"
                self._failure = (time.monotonic(), message)
                raise SearchIndexError(message) from exc
            self._failure = None
            return self._service


_DISK_PATH = re.compile(r"(?<![\w:/.~-])(?:~|\.{1,2})?(?:/[\w.@+-]+)+/([\w.@+-]+)/?")


def without_disk_paths(text: str) -> str:
    """Return ``text`` with each absolute or relative disk path shown by its last part only
    (``/srv/models/ft-2026`` -> ``ft-2026``); URLs (``s3://``, ``https://``) are left alone."""
    return _DISK_PATH.sub(r"\1", text)


def get_service(request: Request) -> SearchService:
    """Dependency: the app's search service (tests override it via ``app.dependency_overrides``)."""
    return request.app.state.service_provider()  # type: ignore[no-any-return]


ServiceDep = Annotated[SearchService, Depends(get_service)]


# --- request helpers -----------------------------------------------------------------------------


def _filters(request: Request, own: frozenset[str]) -> list[tuple[str, str]]:
    """Return the query parameters that are not the endpoint's own: the metadata filters."""
    return [(name, value) for name, value in request.query_params.multi_items() if name not in own]


def _range(low: float, high: float) -> dict[str, Any]:
    """OpenAPI bounds of a parameter whose rule the service enforces (documented, not doubled)."""
    return {"minimum": low, "maximum": high}


def _optional(extra: dict[str, Any]) -> Any:
    """Schema of an optional form field or parameter: its type and ``extra``, without the null
    branch pydantic adds for ``X | None`` (a form field or query string has no null: leaving
    it out is how it is omitted, and a client sending "null" would be refused)."""

    def edit(schema: dict[str, Any]) -> None:
        branches = schema.pop("anyOf", None) or []
        schema.update(next((b for b in branches if b.get("type") != "null"), {}))
        schema.update(extra)

    return edit


UPLOAD_TEXT = {"maxLength": MAX_QUERY_CHARS, "pattern": OPTIONAL_QUERY_PATTERN}


Q = Annotated[
    str,
    Query(
        description=(
            f"search text, 1-{MAX_QUERY_CHARS} characters, not only whitespace; no control "
            "characters but tab, newline and carriage return (read as spaces)"
        ),
        json_schema_extra={"minLength": 1, "maxLength": MAX_QUERY_CHARS, "pattern": QUERY_PATTERN},
        openapi_examples={"findings": {"value": "pneumothorax chest x-ray"}},
    ),
]
ImageId = Annotated[
    str,
    Path(
        description="1-128 characters from A-Z a-z 0-9 . _ - (not . or ..)",
        json_schema_extra={"pattern": IMAGE_ID_PATTERN, "minLength": 1, "maxLength": 128},
        openapi_examples={"an image": {"value": "MPX1009_synpic46283"}},
    ),
]
Alpha = Annotated[
    float,
    Query(
        description="vector weight of a fused query (0 = BM25 only)",
        json_schema_extra=_range(0, 1),
        openapi_examples={"balanced": {"value": 0.5}},
    ),
]
K = Annotated[
    int,
    Query(
        description=f"results per page (offset + k <= {MAX_OFFSET + MAX_K})",
        json_schema_extra=_range(1, MAX_K),
        openapi_examples={"a page": {"value": DEFAULT_K}},
    ),
]
Offset = Annotated[
    int,
    Query(
        description="results to skip (paging)",
        json_schema_extra=_range(0, MAX_OFFSET),
        openapi_examples={"second page": {"value": DEFAULT_K}},
    ),
]
# Every operation's error responses (the shared Error schema); uploads add 400, 413 and 415.
ERROR_RESPONSES = openapi_errors(401, 404, 405, 422, 429, 500, 503)


# Response examples of the operations (shapes of real answers, shortened).
SEARCH_EXAMPLE: dict[str, Any] = {
    "query": "pneumothorax chest x-ray",
    "mode": "hybrid",
    "alpha": 0.5,
    "image_id": None,
    "total": 42,
    "total_relation": "eq",
    "best_match": "good",
    "vector_floor": 0.22,
    "offset": 0,
    "k": 10,
    "took_ms": 18.4,
    "results": [
        {
            "image_id": "MPX1009_synpic46283",
            "caption": "Chest x-ray: large right pneumothorax with mediastinal shift.",
            "caption_truncated": False,
            "score": 0.87,
            "bm25_score": 12.3,
            "vector_score": 0.31,
            "text_part": 0.5,
            "vector_part": 0.37,
            "highlights": [[25, 37]],
            "low_confidence": False,
            "metadata": {"modality": "XR", "plane": "frontal"},
            "metadata_truncated": False,
            "image_url": "v1/images/MPX1009_synpic46283/file",
        }
    ],
}
RECORD_EXAMPLE: dict[str, Any] = {
    "image_id": "MPX1009_synpic46283",
    "caption": "Chest x-ray: large right pneumothorax with mediastinal shift.",
    "metadata": {"modality": "XR", "plane": "frontal"},
    "image_url": "v1/images/MPX1009_synpic46283/file",
    "has_vector": True,
}
FACETS_EXAMPLE: dict[str, Any] = {
    "modality": {"CT": 120, "MRI": 85, "XR": 64},
    "plane": {"axial": 150, "frontal": 60},
}
HEALTH_EXAMPLE: dict[str, Any] = {
    "status": "ok",
    "documents": 269,
    "model": "medsearch-clip-ft",
    "dim": 512,
    "modes": ["text", "vector", "hybrid", "image", "image_text"],
}
# The headers an alias path's answers carry.
DEPRECATION = frozenset({"deprecation", "link"})
API_DESCRIPTION = f"""\
Medical image search: BM25 on captions, CLIP vectors, or a weighted hybrid.

**Paths.** Every operation is under `{API_PREFIX}`. The unversioned paths of earlier releases
(`/search`, `/images/{{id}}`...) still answer the same, with a `Deprecation: true` header and a
`Link` to the `{API_PREFIX}` path; they are not listed here.

**Filters.** Any query parameter other than an operation's own is a metadata filter on that
field; repeat it for several values (`?modality=CT&modality=MRI&plane=axial` = (CT or MRI) and
axial). A numeric field also filters by an inclusive range (`?size_cm_min=2&size_cm_max=5`). The
fields depend on the index, so they are not listed here: `GET {API_PREFIX}/facets` lists them with
their values and counts. An unknown field is a 422 that lists the known ones; an empty value sets
no constraint.

**Paging.** `k` results per page (1-{MAX_K}) after skipping `offset` (0-{MAX_OFFSET}): the
deepest result a query reaches is number offset + k <= {MAX_OFFSET + MAX_K}. `total` counts the
matches of the whole query, the same on every page; `total_relation` says whether it is exact
(`eq`) or a lower bound (`gte`, where an engine stopped counting).

**Errors.** Every error has the body `{{"error": {{"code", "message", "field"}}}}` (the `Error`
schema); `code` is one of: {", ".join(f"`{code}`" for code in ERROR_CODES)}. `field` names the
parameter to fix, or is null.

**Keys.** The deployed API needs an `X-API-Key` header on every operation (403 without one);
a local server does where `MEDSEARCH_API_KEYS` is set (401). Over a key's rate: 429 with
`Retry-After`.
"""


def _example(example: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entry of a 200 answer's JSON example."""
    return {200: {"content": {"application/json": {"example": example}}}}


# --- the app -------------------------------------------------------------------------------------


def create_app(
    settings: ServiceSettings | None = None,
    *,
    service_factory: ServiceFactory | None = None,
) -> FastAPI:
    """Return the API app; the service is built lazily from ``service_factory`` or ``settings``.

    ``settings`` defaults to the environment (``MEDSEARCH_*``); it also supplies the web folder,
    CORS origins and the stage path (``root_path``) when the factory is given.
    """
    settings = settings if settings is not None else load_settings()
    factory = service_factory or (lambda: build_service(settings))
    app = FastAPI(
        title="medsearch",
        version=__version__,
        description=API_DESCRIPTION,
        docs_url=None,  # served below from the installed Swagger UI files, not a CDN
        redoc_url=None,  # ReDoc exists only as a CDN script
    )
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    keys = settings.api_keys.get_secret_value().strip() if settings.api_keys else ""
    if keys or settings.rate_limit is not None:
        from medsearch.api_keys import KeyCheck, load_keys

        app.add_middleware(
            KeyCheck,
            keys=load_keys(keys) if keys else None,
            rate=settings.rate_limit,
            burst=settings.rate_burst,
        )
    if settings.root_path:
        app.add_middleware(StagePath, root_path=settings.root_path)
    app.state.service_provider = LazyService(factory)
    _add_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["Retry-After"],
        )
    router = _api_router()
    app.include_router(router, prefix=API_PREFIX)
    app.include_router(router, include_in_schema=False, dependencies=[Depends(_deprecated)])
    from swagger_ui_bundle import swagger_ui_path

    from medsearch.api_docs import add_docs

    add_docs(app, FilePath(swagger_ui_path))
    if keys:
        _declare_key(app)
    web_dir = settings.web_dir
    if web_dir is not None and FilePath(web_dir).is_dir():
        from fastapi.staticfiles import StaticFiles

        # The page answers only what no API route does: as the router's fallback rather than a
        # mount at "/", a wrong method on an API path (GET /v1/search/image) is the API's 405
        # with its Allow header, not the static files' 404 or 405.
        app.router.default = StaticFiles(directory=web_dir, html=True)
    else:

        @app.get("/", include_in_schema=False)
        def root() -> RedirectResponse:
            return RedirectResponse(url=f"{settings.root_path}/docs")

    return app


def _deprecated(request: Request, response: Response) -> None:
    """Mark an answer of an unversioned alias path: deprecated, with its /v1 successor."""
    response.headers["Deprecation"] = "true"
    root, path = request.scope.get("root_path", ""), request.scope["path"]
    if root and path.startswith(f"{root}/"):  # a server that keeps the prefix in the path
        path = path[len(root) :]
    successor = f"{root}{API_PREFIX}{path}"
    response.headers["Link"] = f'<{successor}>; rel="successor-version"'


def _declare_key(app: FastAPI) -> None:
    """State in the OpenAPI document that the operations need ``X-API-Key`` (keys configured)."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain()
            schema.setdefault("components", {})["securitySchemes"] = {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
            }
            for path, operations in schema["paths"].items():
                if path != f"{API_PREFIX}/health":
                    for operation in operations.values():
                        operation["security"] = [{"ApiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _api_router() -> APIRouter:
    """The API's operations, once: served under /v1 and, hidden from the schema, unversioned."""
    router = APIRouter()

    @router.get(
        "/health",
        response_model=Health,
        tags=["service"],
        responses={**ERROR_RESPONSES, **_example(HEALTH_EXAMPLE)},
    )
    def health(service: ServiceDep) -> Health:
        """Status, number of indexed documents and the model id (503 if the index is down)."""
        return service.health()

    @router.get(
        "/search",
        response_model=SearchResponse,
        tags=["search"],
        responses={**ERROR_RESPONSES, **_example(SEARCH_EXAMPLE)},
    )
    def search(
        request: Request,
        service: ServiceDep,
        q: Q,
        mode: Annotated[
            str | None,
            Query(
                description="text (BM25), vector (CLIP) or hybrid; default hybrid with a model",
                json_schema_extra=_optional({"enum": list(TEXT_MODES)}),
                openapi_examples={"hybrid": {"value": "hybrid"}},
            ),
        ] = None,
        alpha: Alpha = DEFAULT_ALPHA,
        k: K = DEFAULT_K,
        offset: Offset = 0,
    ) -> SearchResponse:
        """Search captions and images by text; other query parameters filter on metadata."""
        response = service.search(
            q, mode=mode, alpha=alpha, k=k, offset=offset, filters=_filters(request, SEARCH_PARAMS)
        )
        return response

    @router.post(
        "/search/image",
        response_model=SearchResponse,
        tags=["search"],
        # No examples here (the README has a client): schemathesis's examples phase sends an
        # operation's examples, and a schema cannot give the one thing an upload needs, the
        # bytes of a real image.
        responses={**ERROR_RESPONSES, **openapi_errors(400, 413, 415)},
    )
    def search_image(
        request: Request,
        service: ServiceDep,
        file: Annotated[
            UploadFile,
            # format binary too: clients and checkers that predate 3.1's contentMediaType
            # then know the field is bytes, not text
            File(
                description="JPEG, PNG or DICOM, at most 10 MB",
                json_schema_extra={"format": "binary"},
            ),
        ],
        q_form: Annotated[
            str | None,
            Form(
                alias="q",
                description="optional text: hybrid (blank: none)",
                json_schema_extra=_optional(UPLOAD_TEXT),
            ),
        ] = None,
        alpha_form: Annotated[
            float | None, Form(alias="alpha", json_schema_extra=_optional(_range(0, 1)))
        ] = None,
        k_form: Annotated[
            int | None, Form(alias="k", json_schema_extra=_optional(_range(1, MAX_K)))
        ] = None,
        offset_form: Annotated[
            int | None, Form(alias="offset", json_schema_extra=_optional(_range(0, MAX_OFFSET)))
        ] = None,
        q: Annotated[
            str | None,
            Query(
                description="as the form field q",
                json_schema_extra=_optional(UPLOAD_TEXT),
            ),
        ] = None,
        alpha: Annotated[
            float | None,
            Query(
                description="as the form field alpha",
                json_schema_extra=_optional(_range(0, 1)),
            ),
        ] = None,
        k: Annotated[
            int | None,
            Query(
                description="as the form field k",
                json_schema_extra=_optional(_range(1, MAX_K)),
            ),
        ] = None,
        offset: Annotated[
            int | None,
            Query(
                description="as the form field offset",
                json_schema_extra=_optional(_range(0, MAX_OFFSET)),
            ),
        ] = None,
    ) -> SearchResponse:
        """Search by an uploaded image (multipart ``file``); ``q``, ``alpha``, ``k`` and ``offset``
        may be form fields or query parameters (form wins); other query parameters filter."""
        # A value that loses to its form field is still checked: an invalid parameter is
        # refused wherever it is, not silently ignored.
        _check_unused(q=q, alpha=alpha, k=k, offset=offset)
        # Read one byte past the limit: enough to tell "too large" without holding more.
        data = file.file.read(MAX_UPLOAD_BYTES + 1)
        response = service.search_upload(
            data,
            filename=file.filename,
            q=q_form if q_form is not None else q,
            alpha=_first(alpha_form, alpha, DEFAULT_ALPHA),
            k=_first(k_form, k, DEFAULT_K),
            offset=_first(offset_form, offset, 0),
            filters=_filters(request, UPLOAD_PARAMS),
        )
        return response

    @router.get(
        "/images/{image_id}",
        response_model=ImageRecord,
        tags=["images"],
        responses={**ERROR_RESPONSES, **_example(RECORD_EXAMPLE)},
    )
    def image_record(service: ServiceDep, image_id: ImageId) -> ImageRecord:
        """One image's record: caption, metadata and image URL."""
        return service.record(image_id)

    @router.get(
        "/images/{image_id}/file",
        tags=["images"],
        responses={
            **ERROR_RESPONSES,
            200: {
                "description": "the image's bytes",
                "content": {"image/png": {}, "image/jpeg": {}},
            },
        },
        response_class=Response,
    )
    def image_file(service: ServiceDep, image_id: ImageId, marks: Response) -> Response:
        """The image itself (JPEG or PNG; DICOM is rendered to PNG)."""
        data, media_type = service.image_file(image_id)
        # A returned response leaves out the headers dependencies set (an alias's deprecation).
        kept = {name: value for name, value in marks.headers.items() if name in DEPRECATION}
        return Response(
            content=data,
            media_type=media_type,
            headers={
                "Cache-Control": "public, max-age=3600",
                "X-Content-Type-Options": "nosniff",
                **kept,
            },
        )

    @router.get(
        "/images/{image_id}/similar",
        response_model=SearchResponse,
        tags=["search"],
        responses={**ERROR_RESPONSES, **_example({**SEARCH_EXAMPLE, "query": None})},
    )
    def similar(
        request: Request,
        service: ServiceDep,
        image_id: ImageId,
        mode: Annotated[
            str,
            Query(
                description="image: by its vector; image_text: its vector and caption (hybrid)",
                json_schema_extra={"enum": list(SIMILAR_MODES)},
                openapi_examples={"image": {"value": "image"}},
            ),
        ] = "image",
        alpha: Alpha = DEFAULT_ALPHA,
        k: K = DEFAULT_K,
        offset: Offset = 0,
    ) -> SearchResponse:
        """Images similar to an indexed image (the image itself excluded)."""
        response = service.similar(
            image_id,
            mode=mode,
            alpha=alpha,
            k=k,
            offset=offset,
            filters=_filters(request, SIMILAR_PARAMS),
        )
        return response

    @router.get(
        "/facets", tags=["search"], responses={**ERROR_RESPONSES, **_example(FACETS_EXAMPLE)}
    )
    def facets(service: ServiceDep) -> dict[str, dict[str, int]]:
        """Filterable metadata fields, each with its values and their document counts."""
        return service.facets()

    return router


def _check_unused(*, q: str | None, alpha: float | None, k: int | None, offset: int | None) -> None:
    """Validate an upload's query parameters by the service's rules, given or not a form value."""
    validate_optional_query(q)
    if alpha is not None:
        validate_alpha(alpha)
    if k is not None:
        validate_k(k)
    if offset is not None:
        validate_offset(offset)


def _first(*values: Any) -> Any:
    return next(value for value in values if value is not None)


# --- errors: the one place they become HTTP ------------------------------------------------------


def _add_error_handlers(app: FastAPI) -> None:
    """Answer every error with the one body of :mod:`medsearch.api_errors`."""

    @app.exception_handler(MedsearchError)
    async def medsearch_error(request: Request, exc: MedsearchError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            # The kind and a fingerprint only: a message can hold what the request carried.
            log.error(
                "%s %s failed: %s %s",
                request.method,
                request.url.path,
                type(exc).__name__,
                text_fingerprint(str(exc)),
            )
        message = str(exc)
        return error_response(status, message, field=field_of(message) if status < 500 else None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        message = "; ".join(_describe(error) for error in errors) or "invalid request"
        return error_response(422, message, field=validation_field(errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Starlette's own: unknown paths (404), wrong methods (405, with Allow), bad multipart
        # bodies (400) and the streamed body limit (413).
        if exc.status_code == 413:
            return error_response(413, _TOO_LARGE, field="file", headers=exc.headers)
        message = exc.detail if isinstance(exc.detail, str) and exc.detail else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such path: {request.url.path} (the API's paths are under /v1)"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("allow") or (exc.headers or {}).get("Allow")
            message = f"{request.method} is not allowed here" + (
                f"; use {allowed}" if allowed else ""
            )
        return error_response(exc.status_code, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Last resort: a genuine server fault, logged with its traceback; no details to clients.
        log.exception("%s %s: unexpected error", request.method, request.url.path)
        return error_response(500, "internal server error")


def _describe(error: Any) -> str:
    """Say which parameter is wrong and how: ``k: Input should be a valid integer (got 'abc')``."""
    loc = [str(part) for part in error.get("loc", ()) if part not in ("query", "body", "path")]
    name = ".".join(loc) or "request"
    message = str(error.get("msg", "invalid"))
    raw = error.get("input")
    if isinstance(raw, str | int | float) and error.get("type") != "missing":
        shown = repr(raw)
        message += f" (got {shown[:40]}{'…' if len(shown) > 40 else ''})"
    return f"{name}: {message}"


# --- serving -------------------------------------------------------------------------------------


def _listen(host: str, port: int) -> socket.socket:
    """Bind a listening socket; a port in use is a ConfigError with one clear line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # The protocol given, not left 0: accepted connections inherit it, and asyncio turns Nagle's
    # algorithm off (TCP_NODELAY) only on sockets that say IPPROTO_TCP. Without it each response
    # after the first on a kept-alive connection waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    # Listening now, not when uvicorn starts: a client told the URL (on_ready) may connect at
    # once, and is queued in the backlog instead of refused while the server starts up.
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_server(
    app: FastAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the app with uvicorn until interrupted (``medsearch serve``); port 0 = a free one.

    ``on_ready`` gets the base URL once the port is bound, before requests are served.
    """
    import uvicorn

    sock = _listen(host, port)
    try:
        # Keep idle connections longer than clients and proxies do (browsers, load balancers:
        # about 60 s), so the server never closes one just as a client reuses it for a request.
        config = uvicorn.Config(
            app, log_level="info", access_log=False, lifespan="off", timeout_keep_alive=75
        )
        if on_ready is not None:
            on_ready(_url(sock))
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


class BackgroundServer:
    """A real uvicorn server in a thread (port 0 = a free one), for tests and benches."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self._socket = _listen(host, port)
        self.url = _url(self._socket)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self, timeout: float = 20.0) -> BackgroundServer:
        """Start serving and wait until the server accepts requests."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()


@contextmanager
def background_server(app: FastAPI, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run the app on a real server for the duration of a ``with`` block; yield its base URL."""
    server = BackgroundServer(app, host=host, port=port).start()
    try:
        yield server.url
    finally:
        server.stop()
