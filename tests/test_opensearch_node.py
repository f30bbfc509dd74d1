"""The suite's own OpenSearch node leaves nothing behind, however its starting process ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.support.opensearch_node import missing_tools

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools())),
]

STARTER = """
import json, sys, time
from tests.support.opensearch_node import OpenSearchNode
node = OpenSearchNode(heap="256m")
node.start()
print(json.dumps({"pid": node.pid, "folder": str(node.log_path.parent), "url": node.url}))
sys.stdout.flush()
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has ended; only its parent (init, here) has not reaped it yet.
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "State:\tZ" in status.read_text())


def test_given_a_started_node_when_its_parent_is_killed_then_node_and_folder_go() -> None:
    # Given a process that started a node (and would hold it for 10 minutes)
    parent = subprocess.Popen(
        [sys.executable, "-c", STARTER], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    started = json.loads(parent.stdout.readline())
    node_pid, folder = started["pid"], Path(started["folder"])
    assert alive(node_pid) and folder.is_dir()
    # When that process is killed outright (no clean-up code of its own runs)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    # Then the node notices its input closed, stops, and deletes its folder
    deadline = time.monotonic() + 60
    while (alive(node_pid) or folder.exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(node_pid), "the node outlived its parent"
    assert not folder.exists(), f"{folder} was left behind"
