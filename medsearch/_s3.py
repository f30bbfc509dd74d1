"""The boto3 adapter behind :class:`medsearch.storage.ObjectStore`, imported only for s3:// URLs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from medsearch.errors import StorageError
from medsearch.storage import ObjectInfo

# Parts fetched at once for one large object; a few files download side by side, and botocore's
# connection pool holds 10 by default.
_DOWNLOAD_THREADS = 4
# botocore waits 60 s to connect and 60 s between two reads of a stalled response, and retries:
# a black-holed endpoint would hold an ingestion for minutes per image. Connections are made in
# milliseconds within a region and a stall of a few seconds is dead; retries stay (standard mode).
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 3  # in all, the first included


class Boto3Store:
    """S3 access through a boto3 client (region and credentials from the usual AWS chain)."""

    def __init__(self, client: Any | None = None) -> None:
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            )
            client = boto3.client("s3", config=config)
        self._client = client

    def get(self, bucket: str, key: str) -> bytes:
        """Return an object's bytes."""
        try:
            return self._client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:  # botocore's errors are not importable without botocore
            raise StorageError(f"cannot read s3://{bucket}/{key}: {exc}") from exc

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """Write an object."""
        try:
            self._client.put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as exc:
            raise StorageError(f"cannot write s3://{bucket}/{key}: {exc}") from exc

    def open(self, bucket: str, key: str) -> BinaryIO:
        """Return a stream of an object's bytes, read from S3 as it is consumed."""
        url = f"s3://{bucket}/{key}"
        try:
            body = self._client.get_object(Bucket=bucket, Key=key)["Body"]
        except Exception as exc:
            raise StorageError(f"cannot read {url}: {exc}") from exc
        return io.BufferedReader(_BodyReader(body, url), buffer_size=1 << 20)

    def put_stream(self, bucket: str, key: str, stream: BinaryIO) -> None:
        """Write an object from a stream, in parts (a multipart upload when it is large)."""
        from boto3.s3.transfer import TransferConfig

        try:
            # One thread: the parts are read from the stream in order, and a streamed archive
            # can only be read in order.
            self._client.upload_fileobj(
                stream, bucket, key, Config=TransferConfig(use_threads=False)
            )
        except Exception as exc:
            raise StorageError(f"cannot write s3://{bucket}/{key}: {exc}") from exc

    def list(self, bucket: str, prefix: str) -> Iterator[str]:
        """Yield every key under a prefix (all pages)."""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"]
        except Exception as exc:
            raise StorageError(f"cannot list s3://{bucket}/{prefix}: {exc}") from exc

    def list_info(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        """Yield every object under a prefix with the ETag and size the listing already holds."""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    etag = str(item.get("ETag", "")).strip('"') or None
                    yield ObjectInfo(item["Key"], etag, item.get("Size"))
        except Exception as exc:
            raise StorageError(f"cannot list s3://{bucket}/{prefix}: {exc}") from exc

    def download(self, bucket: str, key: str, path: Path) -> None:
        """Write an object into a local file through boto3's managed transfer, which streams it
        and fetches a large one in ranged parts on several threads."""
        from boto3.s3.transfer import TransferConfig

        try:
            self._client.download_file(
                bucket, key, str(path), Config=TransferConfig(max_concurrency=_DOWNLOAD_THREADS)
            )
        except Exception as exc:
            raise StorageError(f"cannot read s3://{bucket}/{key}: {exc}") from exc


class _BodyReader(io.RawIOBase):
    """An S3 response body as a raw stream whose read errors are ``StorageError``."""

    def __init__(self, body: Any, url: str) -> None:
        self._body = body
        self._url = url

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            data = self._body.read(len(buffer))
        except Exception as exc:
            raise StorageError(f"cannot read {self._url}: {exc}") from exc
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
