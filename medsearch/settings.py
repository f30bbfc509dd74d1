"""Service settings: the one place the search service's configuration is read from the environment.

Read once at the edge (``medsearch serve``, the Lambda handler) into a frozen
:class:`ServiceSettings` and passed down; nothing below reads ``os.environ``. Every field has an
environment variable ``MEDSEARCH_<FIELD>`` (``MEDSEARCH_INDEX_DIR``, ``MEDSEARCH_CORS_ORIGINS``...);
constructor arguments win over the environment, so the CLI's flags override it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Why `opensearch_service=aoss` is refused at start-up rather than failing on the first write.
SERVERLESS_REFUSAL = (
    "OpenSearch Serverless (service 'aoss') is not supported: its vector collections refuse "
    "documents with a custom _id, which idempotent loads, lookups by image id and leaving an "
    "image out of its own similar-image search rely on; use an OpenSearch Service domain ('es')"
)


def check_opensearch_service(value: object) -> object:
    """Refuse OpenSearch Serverless with its reason (a settings validator, run before parsing)."""
    if isinstance(value, str) and value.strip().lower() == "aoss":
        raise ValueError(SERVERLESS_REFUSAL)
    return value


class ServiceSettings(BaseSettings):
    """How the search service finds its index and model, and how the API presents itself."""

    model_config = SettingsConfigDict(
        env_prefix="MEDSEARCH_", frozen=True, extra="ignore", protected_namespaces=()
    )

    engine: Literal["embedded", "opensearch"] = Field(
        "embedded", description="embedded: one folder on disk; opensearch: a cluster"
    )
    index_dir: str | None = Field(None, description="embedded engine folder (local or s3://)")
    model: str | None = Field(
        None, description="model folder, Hugging Face id or s3:// prefix; none = text search only"
    )
    encoder: Literal["torch", "onnx"] = Field("torch", description="encoder implementation")
    onnx_int8: bool = Field(False, description="use the int8 ONNX towers")
    web_dir: Path | None = Field(None, description="static web page served at / (local mode)")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed to call the API (comma separated)"
    )
    image_base_url: str | None = Field(
        None,
        description=(
            "where result images are served from instead of the API's /images/{id}/file: a "
            "template with {image_id} and/or {name} (the stored file name), or a base URL that "
            "the file name is appended to"
        ),
    )
    root_path: str = Field("", description="path prefix the API is served under (API stage)")
    public_base_url: str | None = Field(
        None,
        description=(
            "the API's public URL (https://search.example.org/prod): result image links are "
            "made absolute with it; unset, they are relative to the API's base URL. Never "
            "taken from a request's Host header, which any client sets"
        ),
    )
    api_keys: SecretStr | None = Field(
        None,
        description=(
            "local server only (deployed, API Gateway checks keys): comma-separated API keys, "
            "or a file of their SHA-256 hex digests; set, the API's operations need X-API-Key"
        ),
    )
    rate_limit: float | None = Field(
        None, gt=0, description="local server only: requests a second per key (per client)"
    )
    rate_burst: int | None = Field(
        None, ge=1, description="requests a key may make at once (default: the rate, at least 1)"
    )
    opensearch_url: str | None = Field(None, description="OpenSearch endpoint URL")
    opensearch_index: str = Field("medsearch", description="OpenSearch index or alias")
    opensearch_auth: Literal["sigv4", "basic", "none"] = "sigv4"
    opensearch_username: str | None = Field(None, description="user name for basic auth")
    opensearch_password: SecretStr | None = Field(None, description="password for basic auth")
    opensearch_service: Literal["es"] = Field("es", description="SigV4 service name")
    aws_region: str | None = None

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    _refuse_serverless = field_validator("opensearch_service", mode="before")(
        check_opensearch_service
    )

    @field_validator("root_path")
    @classmethod
    def _clean_root_path(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        return value if not value or value.startswith("/") else f"/{value}"

    @field_validator("public_base_url")
    @classmethod
    def _check_public_base_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value.strip())
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.query
            or parts.fragment
        ):
            raise ValueError(
                "must be an http(s) URL with a host and no query, e.g. https://host/prod"
            )
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _engine_needs(self) -> ServiceSettings:
        if self.engine == "opensearch" and not self.opensearch_url:
            raise ValueError("engine 'opensearch' needs MEDSEARCH_OPENSEARCH_URL")
        return self

    def opensearch_basic_auth(self) -> tuple[str, str] | None:
        """The (user, password) pair for basic auth, or None when none is configured."""
        if self.opensearch_auth != "basic" or not self.opensearch_username:
            return None
        password = self.opensearch_password
        return self.opensearch_username, password.get_secret_value() if password else ""


def load_settings(**overrides: object) -> ServiceSettings:
    """Read settings from the environment with explicit overrides; bad values raise ConfigError."""
    from pydantic import ValidationError

    from medsearch.errors import ConfigError

    try:
        return ServiceSettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"invalid service settings: {problems}") from None
