"""Decoding memory is bounded: the worst images an upload of at most 10 MB can hold (just under the
50 MP limit, in the modes dearest a pixel) each decode within a fixed peak.

Measured as the peak resident set of a fresh interpreter per image (Linux's ``VmHWM``, reset to
the current size once the imports are done and the file is read): it counts what Pillow's,
pydicom's and numpy's C code allocate, which ``tracemalloc`` would not see. (``ru_maxrss`` would
not do: it survives ``exec`` and so starts at the size of the test process that forked.) The
growth from there is what the bound limits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medsearch.search import MAX_UPLOAD_BYTES
from tests.support.hostile.images import LARGE_CASES, ImageCase

REPO_ROOT = Path(__file__).resolve().parents[3]

# A 50 MP image is up to 200 MB decoded (4 bytes a pixel) and 150 MB as the RGB output: the bound
# allows both and 100 MB of working memory, not one more full-size copy. Measured, the worst are
# 16-bit RGBA and gray+alpha PNGs: 398 MB (950 MB before the strip-wise composite).
DECODE_PEAK_BYTES = 448 << 20

_MEASURE = """
import json, sys
from pathlib import Path
from medsearch.data.images import decode_image
import numpy, PIL.Image, pydicom, pydicom.pixels  # imported before the baseline

def high_water() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmHWM")

data = Path(sys.argv[1]).read_bytes()
Path("/proc/self/clear_refs").write_text("5")  # the high-water mark from here on
before = high_water()
image = decode_image(data, name="big")
after = high_water()
print(json.dumps({"size": list(image.size), "before": before, "after": after}))
"""


def measure(path: Path) -> dict[str, int | list[int]]:
    """Decode ``path`` in a fresh interpreter; return its size and peak RSS before and after."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, int | list[int]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("case", LARGE_CASES, ids=[case.name for case in LARGE_CASES])
def test_given_the_largest_image_an_upload_can_hold_when_decoded_then_memory_stays_bounded(
    case: ImageCase, tmp_path: Path
) -> None:
    # Given a file of at most 10 MB that decodes to just under 50 MP
    assert len(case.data) <= MAX_UPLOAD_BYTES
    path = tmp_path / case.name
    path.write_bytes(case.data)
    # When it is decoded in a fresh process
    result = measure(path)
    # Then it decodes, and the peak grows by no more than the bound
    assert tuple(result["size"]) == case.size  # type: ignore[arg-type]
    growth = int(result["after"]) - int(result["before"])  # type: ignore[call-overload]
    assert growth <= DECODE_PEAK_BYTES, f"{case.name}: decoding grew the peak by {growth >> 20} MB"
