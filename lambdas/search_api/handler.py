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
"""

from __future__ import annotations

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
from medsearch.api import StagePath, build_service, create_app
from medsearch.constants import LAMBDA_MODEL_DIR, PROJECT, SEARCH_REQUEST_BUDGET_S
from medsearch.errors import ConfigError
from medsearch.index.opensearch import OpenSearchConfig, OpenSearchIndex
from medsearch.model.onnx_encoder import download_export
from medsearch.search import SearchService
from medsearch.settings import ServiceSettings, load_settings

logger = Logger(service=f"{PROJECT}-search-api")
MODEL_CACHE = Path(LAMBDA_MODEL_DIR)


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
    settings = local_model(SETTINGS, MODEL_CACHE)
    # Every request, retries included, ends in time for the API's answer to beat the gateway.
    config = OpenSearchConfig(request_budget=SEARCH_REQUEST_BUDGET_S)
    index = OpenSearchIndex(make_client(settings), settings.opensearch_index, config=config)
    return build_service(settings, index=index)


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


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Answer one API Gateway (HTTP API v2 or REST v1) event."""
    response = asgi_handler(event, context)
    correlation_id = logger.get_correlation_id()
    if correlation_id:
        response.setdefault("headers", {})["x-request-id"] = correlation_id
    return response
