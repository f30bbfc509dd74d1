"""The boto3 adapter behind :class:`medsearch.storage.ObjectStore`, imported only for s3:// URLs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from medsearch.errors import StorageError


class Boto3Store:
    """S3 access through a boto3 client (region and credentials from the usual AWS chain)."""

    def __init__(self, client: Any | None = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3")
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

    def list(self, bucket: str, prefix: str) -> Iterator[str]:
        """Yield every key under a prefix (all pages)."""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"]
        except Exception as exc:
            raise StorageError(f"cannot list s3://{bucket}/{prefix}: {exc}") from exc
