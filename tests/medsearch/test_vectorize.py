"""Tests for medsearch.vectorize: outputs, bad records, resume, model changes and read_vectors."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsearch.cli import main
from medsearch.data.manifest import Record, read_manifest
from medsearch.errors import ImageDecodeError, InvalidInputError
from medsearch.vectorize import read_vectors, vectorize
from medsearch.vectors import Encoder

DIM = 8


class HashEncoder:
    """A deterministic torch-free encoder: vectors are hashes of pixels or text (plus a seed)."""

    def __init__(
        self,
        model_id: str = "hash-model",
        seed: int = 0,
        fail_after: int | None = None,
        *,
        fingerprinted: bool = True,
    ) -> None:
        self._model_id = model_id
        self.seed = seed
        self.images_encoded = 0
        self.fail_after = fail_after  # images, to simulate an interruption
        self.fingerprinted = fingerprinted  # False: an encoder from before fingerprints

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def name(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return DIM

    @property
    def fingerprint(self) -> str | None:
        """The seed stands for the weights: same seed, same vectors."""
        return f"sha256:{self.seed:016x}" if self.fingerprinted else None

    def _vector(self, data: bytes) -> np.ndarray:
        digest = hashlib.sha256(bytes([self.seed]) + data).digest()
        raw = np.frombuffer(digest[: DIM * 2], dtype=np.int16).astype(np.float32)
        return raw / np.linalg.norm(raw)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return np.array([self._vector(t.encode()) for t in texts], dtype=np.float32)

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        if self.fail_after is not None and self.images_encoded + len(images) > self.fail_after:
            raise KeyboardInterrupt
        self.images_encoded += len(images)
        rows = [self._vector(im.convert("RGB").tobytes()) for im in images]
        return np.array(rows, dtype=np.float32).reshape(len(rows), DIM)


def write_png(path: Path, value: int) -> None:
    Image.new("RGB", (12, 10), (value, 255 - value, (value * 7) % 256)).save(path)


def make_manifest(folder: Path, n_good: int, *, bad: bool = True, start: int = 0) -> Path:
    """Write n_good PNGs and (optionally) four bad records into a manifest; return its path."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(start, start + n_good):
        write_png(images / f"g{i}.png", i * 9 % 256)
        lines.append({"image_id": f"g{i}", "image": f"images/g{i}.png", "caption": f"c {i}"})
    if bad:
        (images / "empty.png").write_bytes(b"")
        (images / "text.png").write_text("not an image at all\n")
        write_png(images / "whole.png", 3)
        data = (images / "whole.png").read_bytes()
        (images / "truncated.png").write_bytes(data[: len(data) // 2])
        for name in ("empty", "text", "truncated", "missing"):
            lines.append({"image_id": f"bad-{name}", "image": f"images/{name}.png", "caption": "x"})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def interrupt_run(records: Sequence[Record], out: Path, *, after: int) -> None:
    """Start a run in batches of 2 that dies (as on Ctrl-C) before encoding past ``after``."""
    with pytest.raises(KeyboardInterrupt):
        vectorize(HashEncoder(fail_after=after), records, out, batch_size=2)


def test_given_the_hash_encoder_then_it_follows_the_encoder_protocol() -> None:
    assert isinstance(HashEncoder(), Encoder)


def test_given_good_and_bad_images_when_vectorized_then_run_finishes_and_reports_bad(
    tmp_path: Path,
) -> None:
    # Given five readable images and a zero-byte, a non-image, a truncated and a missing file
    records = read_manifest(make_manifest(tmp_path / "data", 5))
    out = tmp_path / "vectors"
    # When
    result = vectorize(HashEncoder(), records, out, batch_size=2)
    # Then the run finishes with the good ones, in manifest order, unit float32
    ids, vectors, meta = read_vectors(out)
    assert ids == [f"g{i}" for i in range(5)]
    assert vectors.dtype == np.float32 and vectors.shape == (5, DIM)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert meta["model"] == "hash-model" and meta["dim"] == DIM and meta["count"] == 5
    assert "created" in meta
    assert (result.count, result.encoded, result.reused) == (5, 5, 0)
    # And every bad record is listed with a reason, in the result and the report file
    expected_bad = {"bad-empty", "bad-text", "bad-truncated", "bad-missing"}
    assert {b.image_id for b in result.bad} == expected_bad
    report = [json.loads(line) for line in (out / "bad_records.jsonl").read_text().splitlines()]
    assert {line["image_id"] for line in report} == expected_bad
    assert all(line["reason"] for line in report)
    assert not (out / ".partial").exists()


def test_given_a_bad_image_when_strict_then_the_run_stops_naming_it(tmp_path: Path) -> None:
    records = read_manifest(make_manifest(tmp_path / "data", 2))
    with pytest.raises(ImageDecodeError, match="bad-empty"):
        vectorize(HashEncoder(), records, tmp_path / "vectors", strict=True)


def test_given_a_finished_run_when_rerun_then_nothing_is_encoded_again(tmp_path: Path) -> None:
    records = read_manifest(make_manifest(tmp_path / "data", 5, bad=False))
    out = tmp_path / "vectors"
    first = vectorize(HashEncoder(), records, out)
    _, before, _ = read_vectors(out)
    # When
    encoder = HashEncoder()
    second = vectorize(encoder, records, out)
    # Then
    assert encoder.images_encoded == 0
    assert (second.encoded, second.reused, second.count) == (0, 5, first.count)
    assert np.array_equal(read_vectors(out)[1], before)


def test_given_an_interrupted_run_when_rerun_then_only_missing_images_are_encoded(
    tmp_path: Path,
) -> None:
    # Given a run over 7 images in batches of 2 that dies after 4 images (two batches)
    records = read_manifest(make_manifest(tmp_path / "data", 7, bad=False))
    out = tmp_path / "vectors"
    interrupt_run(records, out, after=4)
    assert not (out / "meta.json").exists()  # no finished output after an interruption
    # When
    encoder = HashEncoder()
    result = vectorize(encoder, records, out, batch_size=2)
    # Then only the three missing images are encoded, and the output equals a clean run's
    assert encoder.images_encoded == 3
    assert (result.encoded, result.reused) == (3, 4)
    clean = tmp_path / "clean"
    vectorize(HashEncoder(), records, clean, batch_size=3)
    ids, vectors, _ = read_vectors(out)
    clean_ids, clean_vectors, _ = read_vectors(clean)
    assert ids == clean_ids
    assert np.array_equal(vectors, clean_vectors)


def test_given_a_grown_manifest_when_rerun_then_only_new_images_are_encoded(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    out = tmp_path / "vectors"
    vectorize(HashEncoder(), read_manifest(make_manifest(data, 3, bad=False)), out)
    # Given two more records (the manifest now has 5) and one old record gone
    records = read_manifest(make_manifest(data, 5, bad=False))[1:]
    encoder = HashEncoder()
    result = vectorize(encoder, records, out)
    assert encoder.images_encoded == 2
    assert read_vectors(out)[0] == ["g1", "g2", "g3", "g4"]
    assert result.count == 4


def test_given_a_moved_image_when_rerun_then_its_vector_is_redone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = tmp_path / "vectors"
    records = read_manifest(make_manifest(data, 3, bad=False))
    vectorize(HashEncoder(), records, out)
    # Given g0 now points at another file
    write_png(data / "images" / "other.png", 200)
    moved = [Record("g0", str(data / "images" / "other.png"), "c 0"), *records[1:]]
    encoder = HashEncoder()
    vectorize(encoder, moved, out)
    assert encoder.images_encoded == 1


def test_given_vectors_of_another_model_when_rerun_then_refused_unless_overwrite(
    tmp_path: Path,
) -> None:
    records = read_manifest(make_manifest(tmp_path / "data", 3, bad=False))
    out = tmp_path / "vectors"
    vectorize(HashEncoder(), records, out)
    # Given the same model id but different weights (a model retrained in place)
    retrained = HashEncoder(seed=1)
    # When / Then
    with pytest.raises(InvalidInputError, match="another model"):
        vectorize(retrained, records, out)
    with pytest.raises(InvalidInputError, match="another model"):
        vectorize(HashEncoder("other-model", seed=2), records, out)
    result = vectorize(retrained, records, out, overwrite=True)
    assert (result.encoded, result.reused) == (3, 0)
    _, vectors, _ = read_vectors(out)
    assert np.allclose(vectors, retrained.encode_images([Image.open(r.image) for r in records]))


def test_given_an_interrupted_run_of_another_model_when_rerun_then_refused(
    tmp_path: Path,
) -> None:
    records = read_manifest(make_manifest(tmp_path / "data", 5, bad=False))
    out = tmp_path / "vectors"
    interrupt_run(records, out, after=2)
    with pytest.raises(InvalidInputError, match="unfinished run of another model"):
        vectorize(HashEncoder(seed=3), records, out, batch_size=2)


def test_given_vectors_of_other_weights_when_rerun_then_refused_naming_both_fingerprints(
    tmp_path: Path,
) -> None:
    # Given vectors of a model, its fingerprint stored beside them
    records = read_manifest(make_manifest(tmp_path / "data", 3, bad=False))
    out = tmp_path / "vectors"
    vectorize(HashEncoder(), records, out)
    _, _, meta = read_vectors(out)
    assert meta["fingerprint"] == HashEncoder().fingerprint
    # When another model of the same id and dimension (another fine-tune) vectorizes into it
    # Then it is refused, naming both weights, and nothing was encoded or changed
    other = HashEncoder(seed=1)
    with pytest.raises(InvalidInputError) as refused:
        vectorize(other, records, out)
    assert f"weights {HashEncoder().fingerprint}, this model's are {other.fingerprint}" in str(
        refused.value
    )
    assert other.images_encoded == 0
    assert read_vectors(out)[2]["fingerprint"] == HashEncoder().fingerprint


def test_given_the_same_weights_under_another_model_id_when_rerun_then_vectors_are_reused(
    tmp_path: Path,
) -> None:
    # Given vectors of a model, and the same weights loaded from elsewhere (a copy, an s3:// URL)
    records = read_manifest(make_manifest(tmp_path / "data", 3, bad=False))
    out = tmp_path / "vectors"
    vectorize(HashEncoder("models/run-7"), records, out)
    moved = HashEncoder("s3://bucket/models/run-7")
    # When it vectorizes into the folder, Then every vector is kept, under the new id
    result = vectorize(moved, records, out)
    assert (result.encoded, result.reused) == (0, 3) and moved.images_encoded == 0
    assert read_vectors(out)[2]["model"] == "s3://bucket/models/run-7"


def test_given_vectors_from_before_fingerprints_when_rerun_then_model_id_and_probe_decide(
    tmp_path: Path,
) -> None:
    # Given a folder written by an encoder without a fingerprint (as before they existed)
    records = read_manifest(make_manifest(tmp_path / "data", 3, bad=False))
    out = tmp_path / "vectors"
    vectorize(HashEncoder(fingerprinted=False), records, out)
    assert read_vectors(out)[2]["fingerprint"] is None
    # When the same model, now with a fingerprint, reruns, Then its vectors are reused
    assert vectorize(HashEncoder(), records, out).reused == 3
    # And a model of another id, or of other weights under the same id, is refused
    legacy = tmp_path / "legacy"
    vectorize(HashEncoder(fingerprinted=False), records, legacy)
    with pytest.raises(InvalidInputError, match="another model id"):
        vectorize(HashEncoder("other-model"), records, legacy)
    with pytest.raises(InvalidInputError, match="other vectors"):
        vectorize(HashEncoder(seed=1, fingerprinted=False), records, legacy)


def test_given_the_tiny_model_when_vectorized_then_meta_names_its_weights_and_others_are_refused(
    tmp_path: Path, tiny_model_dir: Path, synth_corpus: Path
) -> None:
    from medsearch.model.encoder import load_encoder
    from medsearch.model.loading import save_clip
    from medsearch.model.tiny import build_tiny_clip

    # Given a model folder and vectors it made
    records = read_manifest(make_manifest(tmp_path / "data", 3, bad=False))
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    encoder = load_encoder(str(model), device="cpu")
    out = tmp_path / "vectors"
    vectorize(encoder, records, out)
    assert read_vectors(out)[2]["fingerprint"] == encoder.fingerprint
    # When the folder is overwritten by another model of the same dimension (retrained in place)
    captions = [r.caption for r in read_manifest(synth_corpus) if r.caption]
    save_clip(build_tiny_clip(captions, seed=1), model)
    retrained = load_encoder(str(model), device="cpu")
    assert retrained.dim == encoder.dim and retrained.fingerprint != encoder.fingerprint
    # Then an incremental run refuses it, naming both weights
    with pytest.raises(InvalidInputError, match=f"weights {encoder.fingerprint}"):
        vectorize(retrained, records, out)


def test_given_jsonl_flag_when_vectorized_then_lines_match_the_npy(tmp_path: Path) -> None:
    records = read_manifest(make_manifest(tmp_path / "data", 4, bad=False))
    out = tmp_path / "vectors"
    vectorize(HashEncoder(), records, out, jsonl=True)
    lines = [json.loads(line) for line in (out / "vectors.jsonl").read_text().splitlines()]
    ids, vectors, _ = read_vectors(out)
    assert [line["image_id"] for line in lines] == ids
    assert set(lines[0]) == {"image_id", "vector"}
    assert np.allclose(np.array([line["vector"] for line in lines]), vectors, atol=1e-7)
    # And read_vectors reads the JSON Lines form too (file, or a folder of .jsonl.out parts)
    jl_ids, jl_vectors, jl_meta = read_vectors(out / "vectors.jsonl")
    assert jl_ids == ids and np.allclose(jl_vectors, vectors, atol=1e-7)
    assert jl_meta["dim"] == DIM
    parts = tmp_path / "transform"
    parts.mkdir()
    text = (out / "vectors.jsonl").read_text().splitlines(keepends=True)
    (parts / "a.jsonl.out").write_text("".join(text[:2]))
    (parts / "b.jsonl.out").write_text("".join(text[2:]))
    assert read_vectors(parts)[0] == ids
    # And a rerun without the flag removes the now stale JSON Lines file
    vectorize(HashEncoder(), records, out)
    assert not (out / "vectors.jsonl").exists()


def test_given_broken_vector_files_when_read_then_clear_errors(tmp_path: Path) -> None:
    records = read_manifest(make_manifest(tmp_path / "data", 2, bad=False))
    out = tmp_path / "vectors"
    vectorize(HashEncoder(), records, out)
    (out / "ids.json").write_text(json.dumps(["g0"]))
    with pytest.raises(InvalidInputError, match="ids"):
        read_vectors(out)
    bad_lines = tmp_path / "bad.jsonl"
    bad_lines.write_text('{"image_id": "a", "vector": [1, 0]}\n{"id": "b"}\n')
    with pytest.raises(InvalidInputError, match=r"bad\.jsonl:2"):
        read_vectors(bad_lines)
    with pytest.raises(InvalidInputError, match="no such"):
        read_vectors(tmp_path / "nowhere")


def test_given_the_cli_when_vectorize_runs_then_it_writes_the_folder(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the real tiny model and a manifest with good and bad images
    manifest = make_manifest(tmp_path / "data", 3)
    out = tmp_path / "vectors"
    # When
    args = ["vectorize", "--model", str(tiny_model_dir), "--data", str(manifest), "--out", str(out)]
    code = main([*args, "--jsonl"])
    # Then
    assert code == 0
    ids, vectors, meta = read_vectors(out)
    assert ids == ["g0", "g1", "g2"]
    assert vectors.shape == (3, meta["dim"])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert "skipped 4 unreadable records" in capsys.readouterr().out
    # And a rerun reuses everything
    assert main(args) == 0
    assert "0 encoded, 3 reused" in capsys.readouterr().out


# A vectorize run in its own process that SIGKILLs itself when a file is renamed onto
# ``out/<kill_at>`` (before that rename happens): a kill at an exact point of the assembly.
_KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from medsearch.data.manifest import read_manifest
from medsearch.vectorize import vectorize
from tests.medsearch.test_vectorize import HashEncoder

manifest, out, kill_at = sys.argv[1:4]
target = os.path.join(out, kill_at)
real_replace = os.replace

def replace(src, dst, *args, **kwargs):
    if os.fspath(dst) == target:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)

os.replace = replace
vectorize(HashEncoder(), read_manifest(manifest), Path(out), batch_size=2)
"""


@pytest.mark.parametrize(
    "kill_at",
    [
        ".assembly/vectors.npy",  # while the new set is written aside
        ".assembly/COMMIT",  # the new set complete but not marked so
        "vectors.npy",  # the first file moved into place
        "meta.json",  # the last one
    ],
)
def test_given_an_incremental_run_killed_while_assembling_when_rerun_then_every_vector_is_reused(
    tmp_path: Path, kill_at: str
) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    # Given a finished run over 3 images, and the manifest grown to 5
    out = tmp_path / "vectors"
    vectorize(HashEncoder(), read_manifest(make_manifest(tmp_path / "data", 3, bad=False)), out)
    manifest = make_manifest(tmp_path / "data", 5, bad=False)
    # When the incremental run is killed (SIGKILL) at a point of its assembly
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(manifest), str(out), kill_at],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    # Then the folder reads as the earlier complete output or the new one, never neither
    ids, vectors, meta = read_vectors(out)
    assert len(ids) == meta["count"] == len(vectors)
    assert ids in (["g0", "g1", "g2"], ["g0", "g1", "g2", "g3", "g4"])
    # and a rerun encodes nothing: the 3 earlier vectors and the 2 the killed run made are kept
    encoder = HashEncoder()
    result = vectorize(encoder, read_manifest(manifest), out)
    assert (result.encoded, result.reused, result.count) == (0, 5, 5)
    assert encoder.images_encoded == 0
    assert read_vectors(out)[0] == ["g0", "g1", "g2", "g3", "g4"]
    assert not (out / ".assembly").exists() and not (out / ".partial").exists()
