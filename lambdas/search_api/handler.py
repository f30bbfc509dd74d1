"""Search API Lambda: the FastAPI app of :mod:`medsearch.api` behind API Gateway, via Mangum.

The app is the same one ``medsearch serve`` runs, with the OpenSearch engine and the ONNX encoder
(no torch in this function's package). Settings are read once per container from ``MEDSEARCH_*``
(:class:`~medsearch.settings.ServiceSettings`); the service is built on the first request that
needs it: the ONNX files named by ``MEDSEARCH_MODEL`` (an ``s3://`` prefix; the configured
precision only) are downloaded once into ``/tmp``, and the OpenSearch client is made with the
function role's credentials (SigV4). Until a run is published to the configured alias, every
request that reads the index is a 503 that names it.
Behind a named API Gateway stage the stage becomes the app's root path, so links and ``/docs``
carry it; ``MEDSEARCH_ROOT_PATH`` overrides that. Logs are Powertools JSON with the request's
correlation id, which is also returned as ``x-request-id``.

With SnapStart (python3.12+), the runtime's ``snapshot_restore_py`` runs two hooks registered
here: :func:`before_snapshot` builds the service while the version is published (model download,
ONNX sessions), so restored copies skip that work; :func:`after_restore` renews in every restored
copy what copies must not share: the OpenSearch client (its pooled sockets and the SigV4
credentials resolved before the snapshot, which may have expired by the time a copy is restored),
the S3 client, and the seed of the retry jitter.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.typing import LambdaContext
from mangum import Mangum
from starlette.types import Scope

from lambdas import opensearch_client
from medsearch import storage
from medsearch.api import LazyService, StagePath, build_service, create_app
from medsearch.constants import LAMBDA_MODEL_DIR, PROJECT, SEARCH_REQUEST_BUDGET_S
from medsearch.errors import ConfigError, MedsearchError, SearchIndexError
from medsearch.index.opensearch import OpenSearchConfig, OpenSearchIndex
from medsearch.model.onnx_encoder import download_export
from medsearch.search import SearchService
from medsearch.settings import ServiceSettings, load_settings

try:  # only inside the Lambda Python runtime (3.12+), which runs the hooks under SnapStart
    import snapshot_restore_py
except ImportError:
    snapshot_restore_py = None

logger = Logger(service=f"{PROJECT}-search-api")
MODEL_CACHE = Path(LAMBDA_MODEL_DIR)
# The engines of built services, whose clients a restored copy renews (see after_restore).
ENGINES: list[OpenSearchIndex] = []
# The model the built service loaded, resolved from MEDSEARCH_MODEL (a pointer or the model).
LOADED_MODEL: list[str | None] = []


def read_settings() -> tuple[ServiceSettings, str | None]:
    """Return this function's settings (OpenSearch engine, ONNX encoder) and any problem with
    them; a problem is reported by the API as 503 with the reason, not as a failed import."""
    try:
        return load_settings(engine="opensearch", encoder="onnx"), None
    except ConfigError as exc:
        return ServiceSettings.model_construct(), str(exc)


def make_client(settings: ServiceSettings) -> Any:
    """Return the OpenSearch client (tests replace this function to plug in a fake)."""
    assert settings.opensearch_url is not None  # the settings validator requires it
    user, password = settings.opensearch_basic_auth() or (None, None)
    return opensearch_client(
        settings.opensearch_url,
        auth=settings.opensearch_auth,
        service=settings.opensearch_service,
        region=settings.aws_region,
        username=user,
        password=password,
    )


def live_model(pointer: str) -> str | None:
    """The ONNX folder a live-model pointer (``models/live.json``, written by the pipeline when
    it publishes a run) names, or None while no run has been published."""
    if storage.is_s3(pointer):
        bucket, key = storage.split_s3(pointer)
        present = key in storage.object_store().list(bucket, key)
    else:
        present = Path(pointer).is_file()
    if not present:
        return None
    try:
        record = json.loads(storage.read_text(pointer))
    except (ValueError, MedsearchError) as exc:
        raise ConfigError(f"live model pointer {pointer} is unreadable: {exc}") from None
    model = record.get("model") if isinstance(record, dict) else None
    if not isinstance(model, str) or not model:
        raise ConfigError(f"live model pointer {pointer} names no model")
    return model


def resolve_model(settings: ServiceSettings) -> ServiceSettings:
    """Settings naming the model itself: a ``.json`` pointer is read (no model yet: text search
    only); anything else is the model."""
    model = settings.model
    if not model or not model.endswith(".json"):
        return settings
    return settings.model_copy(update={"model": live_model(model)})


def local_model(settings: ServiceSettings, cache: Path) -> ServiceSettings:
    """Fetch an ``s3://`` model's ONNX files (the configured precision only) once per container;
    return settings naming the local copy."""
    if not settings.model or not storage.is_s3(settings.model):
        return settings
    folder = download_export(settings.model, cache, int8=settings.onnx_int8)
    return settings.model_copy(update={"model": str(folder)})


def build() -> SearchService:
    """Build the search service on first use (model download, OpenSearch client)."""
    copy_config_to_registered_loggers(source_logger=logger, include={"medsearch"})
    if PROBLEM is not None:
        raise ConfigError(PROBLEM)
    resolved = resolve_model(SETTINGS)
    LOADED_MODEL[:] = [resolved.model]
    settings = local_model(resolved, MODEL_CACHE)
    # Every request, retries included, ends in time for the API's answer to beat the gateway.
    config = OpenSearchConfig(request_budget=SEARCH_REQUEST_BUDGET_S)
    index = OpenSearchIndex(make_client(settings), settings.opensearch_index, config=config)
    service = build_service(settings, index=index)
    ENGINES.append(index)
    return service


def before_snapshot() -> None:
    """SnapStart hook: build the service now, so copies restored from the snapshot answer their
    first request without downloading the model or loading the ONNX sessions.

    A failure is logged, not raised: raising would fail the version's publication, and the first
    request retries the build in each restored copy (see :func:`after_restore`).
    """
    try:
        app.state.service_provider()
    except SearchIndexError:
        logger.warning("search service not built before the snapshot; requests will build it")


def after_restore() -> None:
    """SnapStart hook: renew what restored copies must not share or what holds network state.

    New OpenSearch clients (a fresh connection pool, and credentials resolved again from the
    restored environment for SigV4); the S3 client is made again on first use; the jitter of the
    retry back-off is reseeded, so copies restored from one snapshot do not retry in lockstep. A
    service that could not be built before the snapshot is built on the first request, at once
    (the failure seen then is not held against the restored copy).
    """
    random.seed()
    storage.set_object_store(None)
    if LOADED_MODEL and model_changed():
        # The pipeline published a run with another model after this snapshot was taken (a
        # deploy can point the alias back at an older version): load the live one.
        logger.info("live model changed since the snapshot; rebuilding on first use")
        ENGINES.clear()
    try:
        clients = [make_client(SETTINGS) for _ in ENGINES]
    except Exception:
        # A hook that raises fails the restore; a service built afresh on the first request
        # answers 503 with the reason instead, and retries.
        logger.exception("no new OpenSearch client after the restore; rebuilding on first use")
        ENGINES.clear()
    if not ENGINES:
        app.state.service_provider = LazyService(build)
        return
    for engine, client in zip(ENGINES, clients, strict=True):
        engine.reconnect(client)


def model_changed() -> bool:
    """Whether the live-model pointer now names another model than the one loaded."""
    if not SETTINGS.model or not SETTINGS.model.endswith(".json"):
        return False
    try:
        return live_model(SETTINGS.model) != LOADED_MODEL[0]
    except Exception:
        logger.exception("live model pointer unreadable after the restore; keeping the model")
        return False


def register_snapstart_hooks() -> bool:
    """Register the SnapStart hooks with the runtime; False outside the Lambda runtime."""
    if snapshot_restore_py is None:
        return False
    snapshot_restore_py.register_before_snapshot(before_snapshot)
    snapshot_restore_py.register_after_restore(after_restore)
    return True


def stage_root_path(event: dict[str, Any]) -> str:
    """Return ``/<stage>`` when the request came through a named stage's own URL, else ''."""
    context = event.get("requestContext") or {}
    stage = context.get("stage")
    if not stage or stage == "$default":
        return ""
    # HTTP API (v2): rawPath; REST API (v1): requestContext.path. A custom domain drops the stage.
    path = event.get("rawPath") or context.get("path") or ""
    prefix = f"/{stage}"
    return prefix if path == prefix or path.startswith(prefix + "/") else ""


def event_root_path(scope: Scope) -> str:
    """The stage prefix of the API Gateway event behind a request (Mangum puts it in scope)."""
    return stage_root_path(scope.get("aws.event") or {})


SETTINGS, PROBLEM = read_settings()
app = create_app(SETTINGS, service_factory=build)
asgi_handler = Mangum(StagePath(app, event_root_path), lifespan="off")
register_snapstart_hooks()


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Answer one API Gateway (HTTP API v2 or REST v1) event."""
    response = asgi_handler(event, context)
    correlation_id = logger.get_correlation_id()
    if correlation_id:
        response.setdefault("headers", {})["x-request-id"] = correlation_id
    return response
