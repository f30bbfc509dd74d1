"""What a CLI error looks like on stderr: one line, beside the progress bars of model loading."""

from __future__ import annotations

import re

# A progress bar's line (transformers draws one while it loads a model's weights).
_BAR = re.compile(r"\d+%\|")


def one_line_error(err: str, command: str) -> str:
    """Assert that stderr is one error line of ``command`` (beside progress bars); return it."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not _BAR.search(line)]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"medsearch {command}: error:"), err
    return lines[0]
