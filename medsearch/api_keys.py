"""API keys and rate limits of a local server: an opt-in check in front of the API's operations.

Deployed, API Gateway checks keys and throttles through usage plans (``infra/search_api.py``) and
the app does neither. A local server (``medsearch serve``) does, where configured:

- ``MEDSEARCH_API_KEYS``: comma-separated keys (each 20+ characters, as API Gateway wants), or the
  path of a file of their SHA-256 hashes, one hex digest a line (``#`` comments), so the keys
  themselves need not sit on the server's disk. Requests to an operation without a known
  ``X-API-Key`` get 401. Only hashes are kept; a key is compared with every stored hash with
  :func:`hmac.compare_digest`, so the time taken says nothing about which key is near; keys are
  never logged.
- ``MEDSEARCH_RATE_LIMIT`` (requests per second) and ``MEDSEARCH_RATE_BURST``: a token bucket per
  key (per client address without keys) answers 429 with ``Retry-After`` when it is empty.

``/health``, ``/docs``, the OpenAPI document and the page's static files stay open: a load
balancer's probe and the page itself need no key.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from medsearch.api_errors import error_response
from medsearch.constants import API_KEY_HEADER
from medsearch.errors import ConfigError

# API Gateway's own minimum, so a key that works locally can be imported into a usage plan.
MIN_KEY_CHARS = 20
# Buckets kept for clients without keys (by address): the oldest go first, memory stays bounded.
MAX_ANONYMOUS_BUCKETS = 10_000
# The operations a key is asked for (a path under the stage, versioned or an alias).
_OPERATION = re.compile(r"^(?:/v1)?/(?:search|images|facets)(?:/|$)")
_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> bytes:
    """Return the SHA-256 digest a key is stored and compared as."""
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class KeyRing:
    """The digests of the accepted keys."""

    digests: tuple[bytes, ...]

    def match(self, key: str | None) -> bytes | None:
        """Return the digest of ``key`` if it is one of the ring's, else None (constant time
        over the ring: every digest is compared, whatever matches)."""
        if not key:
            return None
        presented = hash_key(key)
        found = None
        for digest in self.digests:
            if hmac.compare_digest(presented, digest):
                found = digest
        return found


def load_keys(setting: str) -> KeyRing:
    """Read ``MEDSEARCH_API_KEYS``: a file of hex SHA-256 digests, or comma-separated keys."""
    value = setting.strip()
    path = Path(value).expanduser()
    if path.is_file():
        digests = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            text = line.split("#", 1)[0].strip().lower()
            if not text:
                continue
            if not _HEX_DIGEST.match(text):
                raise ConfigError(
                    f"API key file {path.name}, line {number}: not a SHA-256 hex digest "
                    "(64 characters 0-9 a-f; make one with: printf %s KEY | sha256sum)"
                )
            digests.append(bytes.fromhex(text))
        if not digests:
            raise ConfigError(f"API key file {path.name} holds no key digest")
        return KeyRing(tuple(digests))
    if "/" in value or value.startswith("~"):
        raise ConfigError(f"API key file {path.name} does not exist")
    keys = [key.strip() for key in value.split(",") if key.strip()]
    if not keys:
        raise ConfigError("MEDSEARCH_API_KEYS is empty: give keys or a file of their digests")
    if any(len(key) < MIN_KEY_CHARS for key in keys):
        raise ConfigError(f"every API key must be at least {MIN_KEY_CHARS} characters long")
    return KeyRing(tuple(hash_key(key) for key in keys))


@dataclass
class TokenBucket:
    """``rate`` tokens a second up to ``burst``; a request takes one."""

    rate: float
    burst: int
    tokens: float = field(init=False)
    updated: float = field(init=False, default=-1.0)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self, now: float) -> float:
        """Take a token: 0.0 when one was there, else the seconds until one will be."""
        if self.updated >= 0:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class KeyCheck:
    """ASGI middleware: 401 without a known key, 429 over the rate, on the API's operations."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyRing | None,
        rate: float | None,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.keys = keys
        self.rate = rate
        self.burst = burst if burst is not None else max(1, math.ceil(rate or 1))
        self.clock = clock
        self._buckets: OrderedDict[bytes | str, TokenBucket] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Let open paths and CORS preflights through; check the key and the rate of the rest."""
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not self._guarded(scope):
            await self.app(scope, receive, send)
            return
        client: bytes | str = ""
        if self.keys is not None:
            headers = dict(scope.get("headers") or ())
            presented = headers.get(API_KEY_HEADER.encode("latin-1"), b"").decode("latin-1")
            digest = self.keys.match(presented)
            if digest is None:
                message = f"this API needs a valid {API_KEY_HEADER} header"
                await error_response(401, message)(scope, receive, send)
                return
            client = digest
        elif scope.get("client"):
            client = str(scope["client"][0])
        if self.rate is not None:
            wait = self._bucket(client).take(self.clock())
            if wait > 0:
                seconds = max(1, math.ceil(wait))
                message = f"over the rate of {self.rate:g} requests a second; retry in {seconds} s"
                response = error_response(429, message, headers={"Retry-After": str(seconds)})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _guarded(self, scope: Scope) -> bool:
        path: str = scope.get("path", "")
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return bool(_OPERATION.match(path))

    def _bucket(self, client: bytes | str) -> TokenBucket:
        bucket = self._buckets.get(client)
        if bucket is None:
            assert self.rate is not None  # only asked for when a rate is set
            bucket = self._buckets[client] = TokenBucket(self.rate, self.burst)
            if len(self._buckets) > MAX_ANONYMOUS_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
        return bucket
