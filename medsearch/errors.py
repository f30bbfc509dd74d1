"""The core's exception types, in one module.

The API maps them to HTTP status codes in one place, the CLI to a one-line message and a non-zero
exit, and the index loader to per-record failures; nothing else needs to know about them.
"""

from __future__ import annotations


class MedsearchError(Exception):
    """Base class for every error the core raises on purpose."""


class InvalidInputError(MedsearchError, ValueError):
    """Input that the caller can fix: a bad argument, a malformed record or query (HTTP 422)."""


class ConfigError(InvalidInputError):
    """A configuration file, flag or environment setting that cannot be used."""


class ManifestError(InvalidInputError):
    """A manifest (or one of its records) that does not follow the manifest format."""


class ImageDecodeError(InvalidInputError):
    """An image that cannot be decoded: truncated, empty, not an image, or a decompression bomb."""

    def __init__(self, message: str, *, record: str | None = None) -> None:
        self.record = record
        super().__init__(f"{record}: {message}" if record else message)


class ImageTooLargeError(ImageDecodeError):
    """An image whose pixel count is over the decompression-bomb limit."""


class PayloadTooLargeError(InvalidInputError):
    """An upload over the size limit (HTTP 413)."""


class UnsupportedMediaTypeError(InvalidInputError):
    """An upload of a type the service does not accept (HTTP 415)."""


class NotFoundError(MedsearchError, LookupError):
    """A document, image or artifact that does not exist (HTTP 404)."""


class SearchIndexError(MedsearchError):
    """An index that cannot be opened, built or written (HTTP 503 in the API)."""


class MergeRunning(SearchIndexError):
    """A run index's force-merge outlasted the wait given to it; it runs on in the domain, and
    asking again waits for it (a publish to retry later, not a failure)."""


class StorageError(MedsearchError):
    """A file or object that cannot be read or written."""
