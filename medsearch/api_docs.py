"""The API's /docs page, served from the installed ``swagger_ui_bundle``: no CDN, works offline.

``swagger_ui_bundle`` ships Swagger UI 4, which renders OpenAPI 3.0 only, while FastAPI writes
3.1. The page therefore reads a 3.0 rendering of the same document (:func:`openapi_30`), made
on request from the app's schema; ``/openapi.json`` stays the one 3.1 document clients and
validators read.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response

# Swagger UI's files, served by the app itself: /docs needs nothing from outside.
DOCS_ASSETS = "/docs-assets"
DOCS_SCHEMA = "/docs/openapi-3.0.json"
# The three files the page loads, and their media types.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def openapi_30(schema: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of an OpenAPI 3.1 document written as 3.0: nullable instead of a null
    type, ``format: binary`` for uploads, ``example`` for a schema's ``examples``, tuples as
    arrays of any of their item types. Only what FastAPI's documents use is rewritten."""
    document = _rewrite(copy.deepcopy(schema))
    document["openapi"] = "3.0.3"
    return document


def _rewrite(node: Any) -> Any:
    if isinstance(node, list):
        return [_rewrite(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _rewrite(value) for key, value in node.items()}
    for union in ("anyOf", "oneOf"):
        branches = node.get(union)
        if isinstance(branches, list) and {"type": "null"} in branches:
            rest = [branch for branch in branches if branch != {"type": "null"}]
            del node[union]
            node["nullable"] = True
            if len(rest) == 1 and "$ref" not in rest[0]:
                node = {**rest[0], **node}
            elif rest:
                node["allOf" if len(rest) == 1 else union] = rest
    if node.get("contentMediaType") == "application/octet-stream":
        del node["contentMediaType"]
        node["format"] = "binary"
    if isinstance(node.get("examples"), list):  # a schema's examples (a parameter's is a map)
        examples = node.pop("examples")
        if examples:
            node["example"] = examples[0]
    if "prefixItems" in node:
        items = node.pop("prefixItems")
        distinct = [item for index, item in enumerate(items) if item not in items[:index]]
        node["items"] = distinct[0] if len(distinct) == 1 else {"anyOf": distinct}
    return node


def add_docs(app: FastAPI, assets: Path) -> None:
    """Serve Swagger UI at /docs, its files from ``assets`` (``swagger_ui_bundle``'s folder).

    The files are routes of their own, not a static mount: behind an API Gateway stage the
    request path lacks the stage that ``root_path`` holds, which a mount's file lookup would
    count against the path.
    """
    for name, media_type in ASSETS.items():
        _add_asset(app, assets / name, media_type)

    @app.get(DOCS_SCHEMA, include_in_schema=False)
    def docs_schema(request: Request) -> JSONResponse:
        document = openapi_30(app.openapi())
        root = request.scope.get("root_path", "")
        if root:  # "Try it out" calls the API under its stage, as the 3.1 document says
            document["servers"] = [{"url": root}]
        return JSONResponse(document)

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{DOCS_SCHEMA}",
            title="medsearch API",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon-32x32.png",
        )


def _add_asset(app: FastAPI, path: Path, media_type: str) -> None:
    @app.get(f"{DOCS_ASSETS}/{path.name}", include_in_schema=False, name=f"docs-{path.name}")
    def asset() -> FileResponse:
        return FileResponse(
            path, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"}
        )
