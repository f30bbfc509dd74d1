"""AWS Lambda entry points (``index_loader``, ``search_api``) and the edge code they share.

The handlers are a few lines over :mod:`medsearch`; AWS sessions and credentials are created here,
at the edge, never in the core. :func:`opensearch_client` is the one place a Lambda turns its
settings into an OpenSearch client (SigV4 from the function's role, basic auth, or none).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from opensearchpy import OpenSearch


def opensearch_client(
    url: str,
    *,
    auth: Literal["sigv4", "basic", "none"] = "sigv4",
    service: Literal["es"] = "es",
    region: str | None = None,
    username: str | None = None,
    password: str | None = None,
    **connect_kwargs: Any,
) -> OpenSearch:
    """Return an OpenSearch client: SigV4 with the role's credentials, basic auth, or none."""
    from medsearch.errors import ConfigError
    from medsearch.index.opensearch import connect

    if auth == "sigv4":
        import boto3  # the edge: the one place a session is made for OpenSearch

        session = boto3.Session(region_name=region) if region else boto3.Session()
        credentials = session.get_credentials()
        if credentials is None:
            raise ConfigError("SigV4 auth needs AWS credentials (none found)")
        return connect(
            url,
            credentials=credentials,
            region=region or session.region_name,
            service=service,
            **connect_kwargs,
        )
    if auth == "basic":
        if not username:
            raise ConfigError("basic auth needs a username (MEDSEARCH_OPENSEARCH_USERNAME)")
        return connect(url, http_auth=(username, password or ""), **connect_kwargs)
    return connect(url, **connect_kwargs)
