"""The s3:// model cache: only the files loading reads, refreshed when an ETag changes, streamed."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest

from medsearch import storage
from medsearch._s3 import Boto3Store
from medsearch.errors import ConfigError, StorageError
from medsearch.model.cache import MANIFEST_FILE, fetch_model, select_model_files

MODEL = {
    "config.json": b'{"model_type": "clip"}',
    "model.safetensors": b"weights-v1" * 100,
    "tokenizer.json": b"{}",
    "tokenizer_config.json": b"{}",
    "special_tokens_map.json": b"{}",
    "vocab.json": b"{}",
    "merges.txt": b"#version",
    "preprocessor_config.json": b"{}",
}
# What a training run leaves beside the model, none of which loading reads.
RUN_OUTPUT = {
    "checkpoints/epoch-0001.pt": b"checkpoint" * 1000,
    "history.jsonl": b"{}\n",
    "report.html": b"<html>",
    "onnx/manifest.json": b"{}",
}


def upload(bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        storage.write_bytes(f"s3://{bucket}/{prefix}/{name}", data)


def files_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


class WatchedStore:
    """The moto store, recording each call; whole-object reads are refused, so a test proves the
    files were streamed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    def get(self, bucket: str, key: str) -> bytes:
        raise AssertionError(f"{key} read whole into memory")

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.inner.put(bucket, key, data)

    def list(self, bucket: str, prefix: str) -> Iterator[str]:
        self.calls.append(("list", prefix))
        return self.inner.list(bucket, prefix)

    def list_info(self, bucket: str, prefix: str) -> Any:
        self.calls.append(("list_info", prefix))
        return self.inner.list_info(bucket, prefix)

    def download(self, bucket: str, key: str, path: Path) -> None:
        self.calls.append(("download", key))
        self.inner.download(bucket, key, path)

    def downloaded(self) -> Sequence[str]:
        """The names of the files downloaded, sorted."""
        return sorted(key.rsplit("/", 1)[-1] for call, key in self.calls if call == "download")


@pytest.fixture
def watched(s3_bucket: str) -> WatchedStore:
    store = WatchedStore(storage.object_store())
    # s3_bucket resets the store afterwards
    storage.set_object_store(store)  # type: ignore[arg-type]
    return store


@pytest.fixture
def s3_calls(s3_bucket: str) -> list[str]:
    """The S3 operations sent from here on, recorded by botocore's own event hooks."""
    sent: list[str] = []
    client = boto3.client("s3", region_name="us-east-1")
    client.meta.events.register("before-call.s3", lambda model, **_: sent.append(model.name))
    storage.set_object_store(Boto3Store(client))
    return sent


def test_given_run_folder_when_fetched_then_only_the_model_files_are_downloaded(
    watched: WatchedStore, s3_bucket: str, tmp_path: Path
) -> None:
    # Given a model prefix with a run's checkpoints, history and export beside the model, and a
    # neighbouring prefix that shares its name's start
    upload(s3_bucket, "runs/r1/model", {**MODEL, **RUN_OUTPUT})
    upload(s3_bucket, "runs/r1/model-old", MODEL)
    # When fetched
    folder = fetch_model(f"s3://{s3_bucket}/runs/r1/model/", tmp_path)
    # Then only the files loading reads arrive, with their content
    assert files_in(folder) == sorted([*MODEL, MANIFEST_FILE])
    assert watched.downloaded() == sorted(MODEL)
    assert (folder / "model.safetensors").read_bytes() == MODEL["model.safetensors"]
    assert not (folder / "checkpoints").exists()


def test_given_sharded_and_pickled_weights_when_selected_then_shards_index_and_no_pickle() -> None:
    names = [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "checkpoints/model.safetensors",
        "optimizer.pt",
        "history.jsonl",
    ]
    assert select_model_files(names) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    # Pickled weights are taken only where no safetensors exist
    assert select_model_files(["config.json", "pytorch_model.bin"]) == [
        "config.json",
        "pytorch_model.bin",
    ]


def test_given_retrained_weights_under_same_prefix_when_fetched_then_new_content_and_old_gone(
    s3_bucket: str, tmp_path: Path
) -> None:
    # Given a cached model
    url = f"s3://{s3_bucket}/models/clip"
    upload(s3_bucket, "models/clip", MODEL)
    first = fetch_model(url, tmp_path)
    # When a retrained weight file is uploaded to the same prefix
    upload(s3_bucket, "models/clip", {"model.safetensors": b"weights-v2" * 100})
    second = fetch_model(url, tmp_path)
    # Then the new weights are fetched into a new folder and the old copy is removed
    assert second != first
    assert (second / "model.safetensors").read_bytes() == b"weights-v2" * 100
    assert [p.name for p in tmp_path.iterdir()] == [second.name]


def test_given_unchanged_prefix_when_fetched_again_then_only_one_listing_is_sent(
    s3_bucket: str, s3_calls: list[str], tmp_path: Path
) -> None:
    url = f"s3://{s3_bucket}/models/clip"
    upload(s3_bucket, "models/clip", {**MODEL, **RUN_OUTPUT})
    s3_calls.clear()
    first = fetch_model(url, tmp_path)
    assert "GetObject" in s3_calls  # the hook sees the first download
    # When fetched again with nothing changed
    s3_calls.clear()
    second = fetch_model(url, tmp_path)
    # Then the same folder is used after a single listing, with no object read
    assert second == first
    assert s3_calls == ["ListObjectsV2"]


def test_given_large_weight_file_when_fetched_then_streamed_in_ranged_parts(
    s3_bucket: str, s3_calls: list[str], tmp_path: Path
) -> None:
    # Given weights over boto3's multipart threshold (8 MiB)
    weights = bytes(range(256)) * (9 * 4096)
    upload(s3_bucket, "models/big", {**MODEL, "model.safetensors": weights})
    ranges: list[str] = []
    client = storage.object_store()._client  # type: ignore[attr-defined]
    client.meta.events.register(
        "before-call.s3.GetObject",
        lambda params, **_: ranges.append(params["headers"].get("Range", "")),
    )
    # When fetched
    folder = fetch_model(f"s3://{s3_bucket}/models/big", tmp_path)
    # Then the file arrives whole, read in more than one ranged part
    assert (folder / "model.safetensors").read_bytes() == weights
    assert sum(r.startswith("bytes=") for r in ranges) >= 2


def test_given_store_without_download_when_fetched_then_streamed_through_open(
    s3_bucket: str, tmp_path: Path
) -> None:
    upload(s3_bucket, "models/clip", MODEL)
    inner = storage.object_store()
    opened: list[str] = []

    class StreamOnly:
        def get(self, bucket: str, key: str) -> bytes:
            raise AssertionError(f"{key} read whole into memory")

        def put(self, bucket: str, key: str, data: bytes) -> None:
            raise AssertionError("nothing is written")

        def list(self, bucket: str, prefix: str) -> Iterator[str]:
            return inner.list(bucket, prefix)

        def list_info(self, bucket: str, prefix: str) -> Any:
            return inner.list_info(bucket, prefix)  # type: ignore[attr-defined]

        def open(self, bucket: str, key: str) -> Any:
            opened.append(key.rsplit("/", 1)[-1])
            return inner.open(bucket, key)  # type: ignore[attr-defined]

    storage.set_object_store(StreamOnly())
    folder = fetch_model(f"s3://{s3_bucket}/models/clip", tmp_path)
    assert sorted(opened) == sorted(MODEL)
    assert (folder / "model.safetensors").read_bytes() == MODEL["model.safetensors"]


def test_given_several_files_when_fetched_then_downloaded_side_by_side(
    watched: WatchedStore, s3_bucket: str, tmp_path: Path
) -> None:
    upload(s3_bucket, "models/clip", MODEL)
    # Two downloads must be in flight at once for the barrier to open; one after the other,
    # the first waits alone and times out.
    barrier = threading.Barrier(2, timeout=10)
    inner = watched.inner

    def meet_then_download(bucket: str, key: str, path: Path) -> None:
        if key.endswith(("config.json", "model.safetensors")):
            barrier.wait()
        inner.download(bucket, key, path)

    watched.download = meet_then_download  # type: ignore[method-assign]
    folder = fetch_model(f"s3://{s3_bucket}/models/clip", tmp_path)
    assert files_in(folder) == sorted([*MODEL, MANIFEST_FILE])


def test_given_download_failing_midway_when_fetched_then_no_folder_is_trusted_later(
    watched: WatchedStore, s3_bucket: str, tmp_path: Path
) -> None:
    url = f"s3://{s3_bucket}/models/clip"
    upload(s3_bucket, "models/clip", MODEL)
    inner = watched.inner

    def cut_short(bucket: str, key: str, path: Path) -> None:
        if key.endswith("model.safetensors"):
            path.write_bytes(b"weig")
            raise StorageError(f"cannot read s3://{bucket}/{key}: connection reset")
        inner.download(bucket, key, path)

    # Given a fetch whose weight download breaks off after a few bytes
    watched.download = cut_short  # type: ignore[method-assign]
    with pytest.raises(StorageError, match="connection reset"):
        fetch_model(url, tmp_path)
    # Then nothing is left in the cache, not even the staging folder
    assert list(tmp_path.iterdir()) == []
    # And the next fetch downloads everything again
    del watched.download
    folder = fetch_model(url, tmp_path)
    assert (folder / "model.safetensors").read_bytes() == MODEL["model.safetensors"]


def test_given_folder_without_its_manifest_when_fetched_then_downloaded_again(
    s3_bucket: str, tmp_path: Path
) -> None:
    # Given a cache folder of the current files whose manifest is missing (a copy not finished)
    url = f"s3://{s3_bucket}/models/clip"
    upload(s3_bucket, "models/clip", MODEL)
    folder = fetch_model(url, tmp_path)
    (folder / MANIFEST_FILE).unlink()
    (folder / "model.safetensors").write_bytes(b"weig")
    # When fetched, then it is not trusted: the files are fetched again
    assert fetch_model(url, tmp_path) == folder
    assert (folder / "model.safetensors").read_bytes() == MODEL["model.safetensors"]


def test_given_truncated_stream_when_fetched_then_size_mismatch_is_an_error(
    watched: WatchedStore, s3_bucket: str, tmp_path: Path
) -> None:
    upload(s3_bucket, "models/clip", MODEL)
    inner = watched.inner

    def short(bucket: str, key: str, path: Path) -> None:
        inner.download(bucket, key, path)
        if key.endswith("model.safetensors"):
            path.write_bytes(path.read_bytes()[:10])

    watched.download = short  # type: ignore[method-assign]
    with pytest.raises(StorageError, match="downloaded 10 bytes"):
        fetch_model(f"s3://{s3_bucket}/models/clip", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_given_prefix_without_config_when_fetched_then_one_line_config_error(
    s3_bucket: str, tmp_path: Path
) -> None:
    upload(s3_bucket, "runs/r1", {"model.safetensors": b"w", **RUN_OUTPUT})
    with pytest.raises(ConfigError, match=r"it has no config\.json") as err:
        fetch_model(f"s3://{s3_bucket}/runs/r1", tmp_path)
    assert (
        str(err.value) == f"s3://{s3_bucket}/runs/r1 is not a model folder: it has no config.json"
    )
    assert list(tmp_path.iterdir()) == []


def test_given_config_without_weights_when_fetched_then_config_error(
    s3_bucket: str, tmp_path: Path
) -> None:
    upload(s3_bucket, "models/clip", {"config.json": b"{}", **RUN_OUTPUT})
    with pytest.raises(ConfigError, match="has no model weights"):
        fetch_model(f"s3://{s3_bucket}/models/clip", tmp_path)


def test_given_empty_prefix_when_fetched_then_storage_error(s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="nothing found under"):
        fetch_model(f"s3://{s3_bucket}/no/model", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_given_store_without_etags_when_fetched_twice_then_downloaded_both_times(
    s3_bucket: str, tmp_path: Path
) -> None:
    # Given a store that lists keys only: it cannot prove a copy current, so none is reused
    class KeysOnly(WatchedStore):
        list_info = None  # type: ignore[assignment]

    store = KeysOnly(storage.object_store())
    storage.set_object_store(store)  # type: ignore[arg-type]
    upload(s3_bucket, "models/clip", MODEL)
    fetch_model(f"s3://{s3_bucket}/models/clip", tmp_path)
    fetch_model(f"s3://{s3_bucket}/models/clip", tmp_path)
    assert store.downloaded() == sorted([*MODEL, *MODEL])
    assert len(list(tmp_path.iterdir())) == 1


def test_given_saved_clip_with_run_output_when_fetched_then_the_folder_loads(
    tiny_model_dir: Path, s3_bucket: str, tmp_path: Path
) -> None:
    from medsearch.model.loading import load_clip

    # Given a folder written by save_clip, uploaded with a run's output beside it
    url = f"s3://{s3_bucket}/runs/r2/model"
    storage.upload_dir(tiny_model_dir, url)
    upload(s3_bucket, "runs/r2/model", RUN_OUTPUT)
    # When fetched, then the selected files are enough to load the model
    folder = fetch_model(url, tmp_path)
    bundle = load_clip(str(folder))
    assert bundle.dim == load_clip(str(tiny_model_dir)).dim
    assert not (folder / "checkpoints").exists() and not (folder / "onnx").exists()
