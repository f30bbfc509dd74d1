"""One file layer for local paths and ``s3://`` URIs.

Readers and writers take URLs, so the same pipeline code runs on a laptop and in SageMaker or
Lambda. S3 goes through the :class:`ObjectStore` protocol; the boto3 adapter is imported lazily,
only when an ``s3://`` URL is actually used, so the core imports no AWS SDK. :func:`open_read` and
:func:`write_stream` move large files (model archives) as streams, never whole in memory, where the
store offers ``open`` and ``put_stream`` (the boto3 adapter does); other stores fall back to
``get`` and ``put``. :func:`list_objects` and :func:`download_file` serve caches that must tell a
changed object from an unchanged one (ETags, where the store offers ``list_info``) and fetch large
objects straight to disk (``download``, where offered; else the ``open`` stream).

:func:`read_bytes` (and :func:`read_text`) read locations that manifests and requests name, so
they are guarded: regular files only, opened without blocking, read no further than a ceiling
(:data:`DEFAULT_MAX_READ_BYTES` unless the caller gives a lower one).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from medsearch.errors import StorageError

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"
# The most :func:`read_bytes` reads whole into memory unless told otherwise: far above any
# manifest, JSON file or image, far below what takes a worker down. Images have their own,
# lower ceiling (``medsearch.data.images.DEFAULT_MAX_IMAGE_BYTES``).
DEFAULT_MAX_READ_BYTES = 1 << 30


class ObjectStore(Protocol):
    """The few object-store operations the core needs (implemented for S3 by a boto3 adapter)."""

    def get(self, bucket: str, key: str) -> bytes:
        """Return an object's bytes; raise ``StorageError`` if it cannot be read."""
        ...

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """Write an object."""
        ...

    def list(self, bucket: str, prefix: str) -> Iterator[str]:
        """Yield the keys under a prefix."""
        ...


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its key, and the ETag and size that tell one upload from the next
    (``None`` where the store cannot say)."""

    key: str
    etag: str | None = None
    size: int | None = None


_store: ObjectStore | None = None


def set_object_store(store: ObjectStore | None) -> None:
    """Install the S3 store (tests and Lambdas pass their own client); ``None`` resets it."""
    global _store
    _store = store


def object_store() -> ObjectStore:
    """Return the S3 store, creating the boto3 adapter on first use."""
    global _store
    if _store is None:
        from medsearch._s3 import Boto3Store  # lazy: boto3 only where s3:// is used

        _store = Boto3Store()
    return _store


def is_s3(url: str | os.PathLike[str]) -> bool:
    """Tell whether a location is an ``s3://`` URI."""
    return str(url).startswith(S3_SCHEME)


def split_s3(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into bucket and key."""
    if not is_s3(url):
        raise StorageError(f"not an s3:// URI: {url!r}")
    bucket, _, key = url[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise StorageError(f"s3 URI without a bucket: {url!r}")
    return bucket, key


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join a base location (path or s3 URI) with relative parts."""
    if is_s3(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base).joinpath(*parts))


def read_bytes(url: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_READ_BYTES) -> bytes:
    """Read a whole file or object of at most ``max_bytes``; anything else is a ``StorageError``.

    Locations come from manifests and requests, so the read is guarded: a local path must be a
    regular file (``/dev/zero`` would be read until memory runs out, a FIFO would block the
    run forever), opened without blocking, and both it and an object are read no further than
    one byte past the ceiling, whatever size they claim.
    """
    if is_s3(url):
        return _read_object(str(url), max_bytes)
    return _read_file(url, max_bytes)


def _too_large(url: str | os.PathLike[str], size: int | None, max_bytes: int) -> StorageError:
    shown = f"{size:,} bytes" if size is not None else f"over {max_bytes:,} bytes"
    return StorageError(f"cannot read {url}: it is {shown}, over the limit of {max_bytes:,} bytes")


def _read_file(url: str | os.PathLike[str], max_bytes: int) -> bytes:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; it changes
    # nothing for a regular file, and anything else is refused before a byte is read.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(url, flags)
    except OSError as exc:
        raise StorageError(f"cannot read {url}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StorageError(f"cannot read {url}: not a regular file ({_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise _too_large(url, info.st_size, max_bytes)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb", buffering=0) as handle:
        try:
            # The stated size plus one byte first (one read, no copy), then more in bounded
            # steps: a file may grow while it is read, and /proc files state a size of 0.
            return _read_bounded(handle, info.st_size + 1, max_bytes, url)
        except OSError as exc:
            raise StorageError(f"cannot read {url}: {exc.strerror or exc}") from exc


def _read_bounded(handle: IO[bytes], first: int, max_bytes: int, url: object) -> bytes:
    """Read ``handle`` to its end, failing once more than ``max_bytes`` have come."""
    parts: list[bytes] = []
    total, step = 0, first
    while True:
        chunk = handle.read(min(step, max_bytes + 1 - total))
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(str(url), None, max_bytes)
        step = 1 << 20


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def _read_object(url: str, max_bytes: int) -> bytes:
    """An object, streamed where the store can so that no more than the ceiling is held."""
    bucket, key = split_s3(url)
    store = object_store()
    opener = getattr(store, "open", None)
    if opener is None:
        data = store.get(bucket, key)
        if len(data) > max_bytes:
            raise _too_large(url, len(data), max_bytes)
        return data
    stream: BinaryIO = opener(bucket, key)
    try:
        return _read_bounded(stream, 1 << 20, max_bytes, url)
    except OSError as exc:
        raise StorageError(f"cannot read {url}: {exc}") from exc
    finally:
        stream.close()


def read_text(url: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_READ_BYTES) -> str:
    """Read a UTF-8 text file or object (of at most ``max_bytes``, as :func:`read_bytes`)."""
    data = read_bytes(url, max_bytes=max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StorageError(f"{url} is not UTF-8 text: {exc}") from exc


@functools.cache
def _file_mode() -> int:
    """The mode a plain ``open()`` gives a new file: 0o666 less the process's umask.

    ``mkstemp`` makes its file 0o600 whatever the umask, so output written through it (models,
    reports, vectors, an index's CURRENT) could not be read by a service running as another
    user. Read from /proc where it is (setting the umask to read it is not thread-safe).
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def temp_file_beside(path: Path) -> tuple[int, str]:
    """Create a temporary file next to ``path`` (for an atomic rename onto it), with the mode
    ``open()`` would give ``path``; return its descriptor and name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, _file_mode())
    except OSError:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def write_bytes(url: str | os.PathLike[str], data: bytes) -> None:
    """Write a whole file (atomically, through a temporary file and a rename) or object."""
    if is_s3(url):
        object_store().put(*split_s3(str(url)), data)
        return
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(url: str | os.PathLike[str], text: str) -> None:
    """Write a UTF-8 text file or object."""
    write_bytes(url, text.encode("utf-8"))


def open_read(url: str | os.PathLike[str]) -> BinaryIO:
    """Open a file or object as a binary stream read from the start (close it, or use ``with``).

    An object is streamed where the store can (``open(bucket, key)``), so reading a large archive
    member by member never holds the whole object in memory.
    """
    if is_s3(url):
        bucket, key = split_s3(str(url))
        store = object_store()
        opener = getattr(store, "open", None)
        if opener is None:
            return io.BytesIO(store.get(bucket, key))
        stream: BinaryIO = opener(bucket, key)
        return stream
    try:
        return open(url, "rb")  # the caller closes it
    except OSError as exc:
        raise StorageError(f"cannot read {url}: {exc.strerror or exc}") from exc


class _ForwardOnly(io.RawIOBase):
    """A read-only, non-seekable view of a stream: an upload must not try to seek in it (a
    member of a streamed tar archive claims to be seekable and is not)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def write_stream(url: str | os.PathLike[str], stream: IO[bytes]) -> None:
    """Write a file (atomically) or object from a binary stream read to its end.

    An object is uploaded in parts where the store can (``put_stream(bucket, key, stream)``), so
    only a part at a time is in memory.
    """
    if is_s3(url):
        bucket, key = split_s3(str(url))
        store = object_store()
        putter = getattr(store, "put_stream", None)
        if putter is None:
            store.put(bucket, key, stream.read())
        else:
            putter(bucket, key, _ForwardOnly(stream))
        return
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            shutil.copyfileobj(stream, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_objects(url: str) -> list[ObjectInfo]:
    """List the objects whose keys start with an ``s3://`` URL's key, in one pass.

    ETags and sizes come from the store's ``list_info`` (the boto3 adapter reads them from the
    listing itself, so no object is read); a store without it gives keys only.
    """
    bucket, prefix = split_s3(url)
    store = object_store()
    lister = getattr(store, "list_info", None)
    if lister is None:
        return [ObjectInfo(key) for key in store.list(bucket, prefix)]
    return list(lister(bucket, prefix))


def download_file(url: str, path: Path) -> None:
    """Copy one ``s3://`` object into a local file as a stream, never whole in memory.

    Through the store's ``download`` where it has one (the boto3 adapter's managed transfer
    fetches a large object in ranged parts on several threads), else through :func:`open_read`.
    """
    bucket, key = split_s3(url)
    store = object_store()
    downloader = getattr(store, "download", None)
    if downloader is not None:
        downloader(bucket, key, path)
        return
    try:
        with open_read(url) as stream, open(path, "wb") as handle:
            shutil.copyfileobj(stream, handle, 1 << 20)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def download_prefix(url: str, dest: Path, *, names: Collection[str] | None = None) -> Path:
    """Copy every object under an ``s3://`` prefix into ``dest`` once; later calls reuse it.

    ``names`` limits the copy to those keys (relative to the prefix), each of which must exist.
    A ``.complete`` marker is written last, so an interrupted download is redone, not trusted.
    """
    marker = dest / ".complete"
    if marker.exists():
        return dest
    bucket, prefix = split_s3(url)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Staged beside the destination so the final rename stays on one file system.
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    count = 0
    store = object_store()
    keys = store.list(bucket, prefix) if names is None else (prefix + name for name in names)
    try:
        for key in keys:
            relative = key[len(prefix) :]
            if not relative or relative.endswith("/"):
                continue
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.get(bucket, key))
            count += 1
        if count == 0:
            raise StorageError(f"nothing found under {url}")
        (staging / ".complete").write_text(url)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)
    log.info("downloaded %d objects from %s to %s", count, url, dest)
    return dest


def upload_dir(src: Path, url: str) -> int:
    """Copy every file below a local directory to an ``s3://`` prefix; return the file count."""
    bucket, prefix = split_s3(url)
    store = object_store()
    count = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        key = "/".join(filter(None, [prefix.rstrip("/"), path.relative_to(src).as_posix()]))
        store.put(bucket, key, path.read_bytes())
        count += 1
    return count
