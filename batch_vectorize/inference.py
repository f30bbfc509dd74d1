"""SageMaker batch-transform handler: image manifest lines → one vector (or error) line each.

The four functions the PyTorch / Hugging Face inference toolkits call; the work is in
:mod:`medsearch.batch_transform`. Run the transform with ``ContentType=application/jsonlines``,
``SplitType=Line``, ``BatchStrategy=MultiRecord``, ``Accept=application/jsonlines`` and
``AssembleWith=Line``. Environment (read once, in ``model_fn``): ``MEDSEARCH_ENCODER``
(auto | onnx | torch), ``MEDSEARCH_BATCH_SIZE``, ``MEDSEARCH_IMAGE_BASE`` (for relative paths).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from medsearch.batch_transform import (
    InputLine,
    TransformConfig,
    TransformModel,
    check_content_type,
    embed_lines,
    load_transform_model,
    parse_lines,
    to_jsonlines,
)

logging.getLogger("medsearch").setLevel(logging.INFO)


def model_fn(model_dir: str, context: Any = None) -> TransformModel:
    """Load the encoder from the model folder a training job wrote (``context``: newer
    toolkits pass one; unused)."""
    return load_transform_model(model_dir, TransformConfig.from_environ(os.environ))


def input_fn(body: bytes | str, content_type: str, context: Any = None) -> list[InputLine]:
    """Parse a JSON Lines request body into input lines (bad lines become error lines)."""
    check_content_type(content_type)
    return parse_lines(body)


def predict_fn(
    data: list[InputLine], model: TransformModel, context: Any = None
) -> list[dict[str, Any]]:
    """Embed the lines' images in batches; one output row per input line, same order."""
    return embed_lines(data, model)


def output_fn(prediction: list[dict[str, Any]], accept: str, context: Any = None) -> str:
    """Serialise the rows as JSON Lines."""
    check_content_type(accept)
    return to_jsonlines(prediction)
