"""What clients are told a model is called: the name a training run records, else its source
shown without disk paths or buckets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsearch.model.names import (
    TRAIN_CONFIG_FILE,
    default_model_name,
    recorded_model_name,
    shown_model_name,
)


@pytest.mark.parametrize(
    ("model_id", "shown"),
    [("colour-encoder", "colour-encoder"), ("openai/clip-vit-base-patch32",
      "openai/clip-vit-base-patch32"), ("/srv/models/ft-2026/", "ft-2026"),
     ("s3://bucket/models/run-1/onnx", "onnx"), ("./build/model", "model"), (None, None)],
)  # fmt: skip
def test_given_a_model_location_when_shown_then_no_disk_path(
    model_id: str | None, shown: str | None
) -> None:
    assert shown_model_name(model_id) == shown


@pytest.mark.parametrize(
    ("base", "name"),
    [("tiny", "medsearch-clip-tiny"),
     ("openai/clip-vit-base-patch32", "medsearch-clip-vit-base-patch32"),
     ("/srv/models/medsearch-clip-tiny", "medsearch-clip-tiny"),
     ("s3://bucket/models/pubmed-clip/", "medsearch-pubmed-clip")],
)  # fmt: skip
def test_given_a_base_when_no_name_given_then_the_trained_model_is_named_after_it(
    base: str, name: str
) -> None:
    assert default_model_name(base) == name


@pytest.mark.parametrize(
    ("content", "name"),
    [({"name": " chest-ct-v3 "}, "chest-ct-v3"), ({"base": "tiny"}, None),
     ({"name": "x" * 200}, None), ({"name": "bad\nname"}, None), ([1, 2], None), ("{", None)],
)  # fmt: skip
def test_given_a_training_record_when_read_then_its_name_or_none(
    tmp_path: Path, content: object, name: str | None
) -> None:
    text = content if isinstance(content, str) else json.dumps(content)
    (tmp_path / TRAIN_CONFIG_FILE).write_text(text)
    assert recorded_model_name(tmp_path) == name
    assert recorded_model_name(tmp_path / "absent") is None
