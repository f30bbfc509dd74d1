"""Schemathesis hooks for the search API: a schema-valid upload carries a real image.

The OpenAPI schema can say that ``file`` is bytes, not that the bytes decode as a JPEG, PNG or
DICOM image, so a positive (schema-valid) case gets a small real PNG in place of the random
bytes; the API's 4xx for undecodable files is tested by the hostile-upload tests and the load
bench. Negative cases are left as generated. Loaded by the pytest test (import) and by the CLI
(``SCHEMATHESIS_HOOKS=tests/fuzz/schemathesis_hooks.py``).
"""

from __future__ import annotations

import io
from typing import Any

import schemathesis
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation

UPLOAD = ("POST", "/v1/search/image")


def small_png(colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A 24x24 PNG of one colour with a dark corner: decodes and encodes like a real image."""
    image = Image.new("RGB", (24, 24), colour)
    image.paste((10, 10, 10), (0, 0, 12, 12))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


PNG = small_png()


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """Put a real image into every schema-valid upload."""
    # The body's own mode counts: a case may be negative in its body only (a file that is not
    # bytes, a missing field), and a real image would then turn it into a valid request.
    meta = case.meta
    body = meta.components.get(ParameterLocation.BODY) if meta is not None else None
    positive = meta is None or (
        meta.generation.mode == GenerationMode.POSITIVE
        and (body is None or body.mode == GenerationMode.POSITIVE)
    )
    operation = (case.operation.method.upper(), case.operation.path)
    if positive and operation == UPLOAD and isinstance(case.body, dict):
        # In place: assigning case.body would make schemathesis judge the case again, against
        # the raw schema, and call its text query values ("1" for k) invalid.
        case.body["file"] = PNG
    return case
