"""The core imports no AWS SDK, and the serving modules import without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Modules of the request path: they must import in a Lambda that has neither torch nor boto3.
TORCH_FREE = [
    "medsearch.storage",
    "medsearch.vectors",
    "medsearch.data.manifest",
    "medsearch.cli",
    "medsearch.pipeline_runs",
    "medsearch.settings",
    "medsearch.search",
    "medsearch.search_eval",
    "medsearch.api",
    "medsearch.index.embedded",
    "medsearch.index.opensearch",
]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_given_blocked_sdks_when_core_module_imported_then_it_loads(module: str) -> None:
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'boto3', 'botocore', 'sagemaker'}:\n"
        "            raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"import {module}\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
