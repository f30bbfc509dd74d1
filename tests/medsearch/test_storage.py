"""The file layer: local paths and s3:// URIs go through the same calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsearch import storage
from medsearch.errors import StorageError


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
