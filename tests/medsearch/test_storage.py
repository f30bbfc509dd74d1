"""The file layer: local paths and s3:// URIs go through the same calls."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from medsearch import storage
from medsearch._s3 import CONNECT_TIMEOUT_S, MAX_ATTEMPTS, READ_TIMEOUT_S, Boto3Store
from medsearch.data.images import DEFAULT_MAX_IMAGE_BYTES
from medsearch.errors import StorageError
from tests.support.hostile.images import FILE_CASES, FileCase


def test_given_local_path_when_written_then_read_back_and_no_temp_left(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.txt"
    storage.write_text(target, "héllo")
    assert storage.read_text(target) == "héllo"
    assert [p.name for p in target.parent.iterdir()] == ["b.txt"]


def test_given_missing_file_when_read_then_storage_error_names_it(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"nope\.txt"):
        storage.read_bytes(tmp_path / "nope.txt")


def test_given_s3_uri_when_split_then_bucket_and_key() -> None:
    assert storage.split_s3("s3://bucket/a/b.jpg") == ("bucket", "a/b.jpg")
    assert storage.join("s3://bucket/run/", "images", "x.png") == "s3://bucket/run/images/x.png"
    with pytest.raises(StorageError):
        storage.split_s3("s3:///key")


def test_given_s3_objects_when_read_and_written_then_same_api_as_local(s3_bucket: str) -> None:
    storage.write_text(f"s3://{s3_bucket}/dir/x.txt", "payload")
    assert storage.read_text(f"s3://{s3_bucket}/dir/x.txt") == "payload"
    with pytest.raises(StorageError, match="missing"):
        storage.read_bytes(f"s3://{s3_bucket}/missing")


def test_given_s3_prefix_when_downloaded_twice_then_copied_once(
    s3_bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"\x00\x01")
    assert storage.upload_dir(src, f"s3://{s3_bucket}/model") == 2

    dest = storage.download_prefix(f"s3://{s3_bucket}/model", tmp_path / "cache" / "m")
    assert (dest / "sub" / "w.bin").read_bytes() == b"\x00\x01"
    # A second call trusts the completed copy and does not touch S3 again.
    storage.set_object_store(None)
    assert storage.download_prefix("s3://other/none", dest) == dest


def test_given_empty_prefix_when_downloaded_then_error_and_no_cache(
    s3_bucket: str, tmp_path: Path
) -> None:
    with pytest.raises(StorageError, match="nothing found"):
        storage.download_prefix(f"s3://{s3_bucket}/absent", tmp_path / "cache" / "m")
    assert not (tmp_path / "cache" / "m").exists()


def test_given_names_when_prefix_downloaded_then_only_those_and_missing_one_is_an_error(
    s3_bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name in ("a.json", "b.bin", "sub/c.txt"):
        (src / name).write_text(name)
    storage.upload_dir(src, f"s3://{s3_bucket}/model")

    dest = storage.download_prefix(
        f"s3://{s3_bucket}/model", tmp_path / "cache" / "m", names=["a.json", "sub/c.txt"]
    )
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        ".complete",
        "a.json",
        "sub/c.txt",
    ]
    # A listed name that is absent fails the whole copy and leaves nothing half-written behind.
    with pytest.raises(StorageError, match=r"missing\.bin"):
        storage.download_prefix(
            f"s3://{s3_bucket}/model", tmp_path / "cache" / "n", names=["a.json", "missing.bin"]
        )
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["m"]


# --- the read guard ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", FILE_CASES, ids=[case.name for case in FILE_CASES])
def test_given_no_file_to_read_whole_when_read_then_storage_error_before_reading(
    case: FileCase, tmp_path: Path
) -> None:
    # Given a location that is /dev/zero, a FIFO, a directory, an oversized file... (the corpus)
    location = case.make(tmp_path)
    unblock = _unblock_fifo_later(location)
    try:
        # When it is read as an image is, Then a StorageError says why, at once
        with pytest.raises(StorageError, match=re.escape(case.message)):
            storage.read_bytes(location, max_bytes=DEFAULT_MAX_IMAGE_BYTES)
    finally:
        unblock.set()


def _unblock_fifo_later(location: str) -> threading.Event:
    """For a FIFO: once the test is over, open its writing end (without blocking), so that a
    reader that blocked in open() returns and the test fails instead of hanging the suite."""
    done = threading.Event()
    if not (os.path.exists(location) and stat.S_ISFIFO(os.stat(location).st_mode)):
        return done

    def writer() -> None:
        while not done.wait(0.5):
            try:
                os.close(os.open(location, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader yet (ENXIO): the guard did not open it
                continue

    threading.Thread(target=writer, daemon=True).start()
    return done


def test_given_a_file_at_the_ceiling_when_read_then_whole_and_one_byte_more_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)
    assert storage.read_bytes(path, max_bytes=1000) == b"x" * 1000
    with pytest.raises(StorageError, match="1,000 bytes, over the limit of 999 bytes"):
        storage.read_bytes(path, max_bytes=999)


def test_given_a_proc_file_that_states_size_zero_when_read_then_its_content_comes() -> None:
    # /proc files are regular files of stated size 0: the reader must not trust the size
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("no /proc")
    assert storage.read_bytes(status).startswith(b"Name:")
    with pytest.raises(StorageError, match="over the limit of 10 bytes"):
        storage.read_bytes(status, max_bytes=10)


def test_given_an_object_over_the_ceiling_when_read_then_refused_and_under_it_read(
    s3_bucket: str,
) -> None:
    storage.write_bytes(f"s3://{s3_bucket}/big.bin", b"y" * 3000)
    assert storage.read_bytes(f"s3://{s3_bucket}/big.bin", max_bytes=3000) == b"y" * 3000
    with pytest.raises(StorageError, match="over the limit of 2,999 bytes"):
        storage.read_bytes(f"s3://{s3_bucket}/big.bin", max_bytes=2999)


def test_given_the_boto3_store_when_created_then_s3_calls_have_short_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the adapter built as the CLI and the Lambdas build it (no client passed)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = Boto3Store()
    # Then a black-holed endpoint costs seconds, not botocore's default minutes
    config = store._client.meta.config
    assert config.connect_timeout == CONNECT_TIMEOUT_S <= 10
    assert config.read_timeout == READ_TIMEOUT_S <= 60
    assert config.retries["total_max_attempts"] == MAX_ATTEMPTS


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_given_a_umask_when_outputs_are_written_then_their_mode_is_what_open_would_give(
    tmp_path: Path, umask: int, mode: int
) -> None:
    # In a fresh process, so the umask is the process's from its start (as a service runs)
    script = textwrap.dedent(
        f"""
        import os, sys
        os.umask({umask:#o})
        from pathlib import Path
        from medsearch import storage
        from medsearch.index.embedded import build_index
        from medsearch.index.base import Document
        out = Path(sys.argv[1])
        storage.write_text(out / "report.json", "{{}}")
        with open(out / "stream.bin", "wb") as handle:
            handle.write(b"x")
        with open(out / "stream.bin", "rb") as handle:
            storage.write_stream(out / "copy.bin", handle)
        build_index(out / "index", [Document("a", "a caption", None)])
        """
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=120)
    for name in ("report.json", "copy.bin", "index/CURRENT"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
