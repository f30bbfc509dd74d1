"""The batch-transform handler, called through its four functions on JSON Lines payloads."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_vectorize.inference import input_fn, model_fn, output_fn, predict_fn
from medsearch import storage
from medsearch.errors import ConfigError, UnsupportedMediaTypeError
from medsearch.model.encoder import weights_fingerprint
from medsearch.model.loading import load_clip
from medsearch.model.onnx_encoder import OnnxEncoder
from medsearch.model.onnx_export import export_onnx

JSONL = "application/jsonlines"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A folder shaped like a training job's output: the CLIP at the root, ONNX in onnx/."""
    folder = tmp_path_factory.mktemp("job") / "model"
    shutil.copytree(tiny_model_dir, folder)
    export_onnx(str(folder), folder / "onnx", exporter="torchscript", model_id="tiny-bt")
    return folder


def _png(color: tuple[int, int, int], size: tuple[int, int] = (70, 50)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _transform(model_dir: Path, lines: list[str], content_type: str = JSONL) -> list[dict]:
    """Run the four functions as the inference toolkit does; return the parsed output lines."""
    model = model_fn(str(model_dir))
    body = ("\n".join(lines) + "\n").encode()
    output = output_fn(predict_fn(input_fn(body, content_type), model), JSONL)
    assert output.endswith("\n")
    return [json.loads(line) for line in output.splitlines()]


def test_given_mixed_good_and_bad_records_then_one_line_each_in_order(
    model_dir: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given images in S3, an inline image and every kind of bad record
    monkeypatch.setenv("MEDSEARCH_BATCH_SIZE", "2")  # several encoder batches per request
    red, blue = _png((200, 20, 20)), _png((20, 20, 200), (40, 90))
    storage.write_bytes(f"s3://{s3_bucket}/img/red.png", red)
    storage.write_bytes(f"s3://{s3_bucket}/img/blue.png", blue)
    storage.write_bytes(f"s3://{s3_bucket}/img/broken.png", red[:60])
    lines = [
        json.dumps({"image_id": "red", "image": f"s3://{s3_bucket}/img/red.png", "caption": "x"}),
        json.dumps({"image_id": "missing", "image": f"s3://{s3_bucket}/img/nope.png"}),
        json.dumps({"image_id": "inline", "image_b64": base64.b64encode(blue).decode()}),
        "{not json",
        json.dumps({"image_id": "broken", "image": f"s3://{s3_bucket}/img/broken.png"}),
        json.dumps({"image_id": "../etc", "image": f"s3://{s3_bucket}/img/red.png"}),
        json.dumps({"image_id": "noimage"}),
        json.dumps({"image_id": "badb64", "image_b64": "***"}),
        json.dumps({"image_id": "relative", "image": "images/red.png"}),
        json.dumps({"image_id": "blue", "image": f"s3://{s3_bucket}/img/blue.png"}),
    ]
    # When the batch goes through the four functions
    rows = _transform(model_dir, lines)
    # Then there is one output line per input line, in the same order
    assert [r["image_id"] for r in rows] == [
        "red",
        "missing",
        "inline",
        None,
        "broken",
        "../etc",
        "noimage",
        "badb64",
        "relative",
        "blue",
    ]
    good = {r["image_id"]: r for r in rows if "vector" in r}
    assert set(good) == {"red", "inline", "blue"}
    for row in good.values():
        assert row["model"] == "tiny-bt" and row["dim"] == len(row["vector"])
        assert np.linalg.norm(row["vector"]) == pytest.approx(1.0, abs=1e-5)
        assert "error" not in row
    # And each bad line says what is wrong, without a vector
    errors = {r["image_id"]: r["error"] for r in rows if "error" in r}
    assert "nope.png" in errors["missing"]
    assert "not valid JSON" in errors[None]
    assert "broken" in errors["broken"]
    assert "invalid image_id" in errors["../etc"]
    assert "neither" in errors["noimage"]
    assert "base64" in errors["badb64"] and errors["badb64"].startswith("badb64:")
    assert "MEDSEARCH_IMAGE_BASE" in errors["relative"]
    # And the vectors are the ONNX encoder's for the same images (inline == the S3 copy)
    expected = OnnxEncoder(model_dir / "onnx").encode_images(
        [Image.open(io.BytesIO(red)), Image.open(io.BytesIO(blue))]
    )
    np.testing.assert_allclose(good["red"]["vector"], expected[0], atol=1e-5)
    np.testing.assert_allclose(good["blue"]["vector"], expected[1], atol=1e-5)
    np.testing.assert_allclose(good["inline"]["vector"], good["blue"]["vector"], atol=1e-6)


def test_given_image_base_then_relative_manifest_paths_resolve(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(_png((10, 200, 10)))
    monkeypatch.setenv("MEDSEARCH_IMAGE_BASE", str(tmp_path))
    rows = _transform(model_dir, [json.dumps({"image_id": "a", "image": "images/a.png"})])
    assert len(rows) == 1 and len(rows[0]["vector"]) == rows[0]["dim"]


def test_given_torch_encoder_chosen_then_same_vectors_and_model_name(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.png").write_bytes(_png((120, 60, 30), (64, 80)))
    line = json.dumps({"image_id": "a", "image": str(tmp_path / "a.png")})
    onnx_row = _transform(model_dir, [line])[0]
    monkeypatch.setenv("MEDSEARCH_ENCODER", "torch")
    torch_row = _transform(model_dir, [line])[0]
    assert torch_row["model"] == onnx_row["model"] == "tiny-bt"
    assert float(np.dot(torch_row["vector"], onnx_row["vector"])) >= 0.999
    # and both name the same weights: the export carries the model's fingerprint
    fingerprint = weights_fingerprint(load_clip(str(model_dir)).model)
    assert torch_row["fingerprint"] == onnx_row["fingerprint"] == fingerprint


def test_given_other_content_types_then_rejected_and_charset_accepted(model_dir: Path) -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="application/jsonlines"):
        input_fn(b'{"image_id": "a"}', "text/csv")
    with pytest.raises(UnsupportedMediaTypeError):
        output_fn([], "application/json")
    parsed = input_fn(b'{"image_id": "a", "image": "s3://b/k"}\r\n\n', f"{JSONL}; charset=utf-8")
    assert [(p.image_id, p.image) for p in parsed] == [("a", "s3://b/k")]


def test_given_bad_settings_or_folder_then_model_fn_says_what_to_fix(
    model_dir: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSEARCH_BATCH_SIZE", "0")
    with pytest.raises(ConfigError, match="MEDSEARCH_BATCH_SIZE"):
        model_fn(str(model_dir))
    monkeypatch.delenv("MEDSEARCH_BATCH_SIZE")
    monkeypatch.setenv("MEDSEARCH_ENCODER", "tensorflow")
    with pytest.raises(ConfigError, match="MEDSEARCH_ENCODER"):
        model_fn(str(model_dir))
    monkeypatch.setenv("MEDSEARCH_ENCODER", "onnx")
    with pytest.raises(ConfigError, match="no ONNX export"):
        model_fn(str(tiny_model_dir))
