"""A damaged ``ids.json`` in a vectors folder: every command that reads the folder says so in one
line (``index``, ``load``), and a ``vectorize`` rerun into it redoes the vectors instead of
aborting."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from medsearch.cli import main
from tests.support.cli_output import one_line_error

# How an ids.json may be damaged: cut short, not UTF-8, gone, or not a list of ids.
DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: p.write_text(p.read_text()[:-3]),
    "not-utf8": lambda p: p.write_bytes(b"\xff\xfe[\x00"),
    "missing": lambda p: p.unlink(),
    "an-object": lambda p: p.write_text('{"ids": []}'),
    "empty": lambda p: p.write_text(""),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    """A two-image manifest and the vectors folder ``medsearch vectorize`` wrote for it."""
    root = tmp_path_factory.mktemp("ids")
    lines = []
    for i in range(2):
        Image.new("RGB", (8, 8), (40 * i, 90, 200)).save(root / f"{i}.png")
        lines.append(json.dumps({"image_id": f"i{i}", "image": f"{i}.png", "caption": "knee"}))
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    out = root / "vectors"
    model = str(tiny_model_dir)
    assert main(["vectorize", "--model", model, "--data", str(manifest), "--out", str(out)]) == 0
    return manifest, out


def damaged_copy(folder: tuple[Path, Path], tmp_path: Path, damage: str) -> Path:
    copy = tmp_path / "vectors"
    shutil.copytree(folder[1], copy)
    DAMAGE[damage](copy / "ids.json")
    return copy


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("command", ["index", "load"])
def test_given_a_damaged_ids_json_when_a_command_reads_the_folder_then_one_line_error(
    folder: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    damage: str,
) -> None:
    # Given a vectors folder whose ids.json is damaged
    vectors = damaged_copy(folder, tmp_path, damage)
    target = (
        ["--index", str(tmp_path / "index")]
        if command == "index"
        # The folder is read before the cluster is reached: no node answers on this port.
        else ["--opensearch-url", "http://127.0.0.1:9", "--opensearch-auth", "none"]
    )
    capsys.readouterr()
    # When the command reads it
    code = main([command, "--data", str(folder[0]), "--vectors", str(vectors), *target])
    # Then one line names the file, and the exit status is 2
    assert code == 2
    line = one_line_error(capsys.readouterr().err, command)
    assert "ids.json" in line
    assert not (tmp_path / "index").exists()


@pytest.mark.parametrize("damage", ["truncated", "not-utf8", "missing"])
def test_given_a_damaged_ids_json_when_vectorize_reruns_then_the_vectors_are_redone(
    folder: tuple[Path, Path], tmp_path: Path, tiny_model_dir: Path, damage: str
) -> None:
    vectors = damaged_copy(folder, tmp_path, damage)
    model, data = str(tiny_model_dir), str(folder[0])
    assert main(["vectorize", "--model", model, "--data", data, "--out", str(vectors)]) == 0
    assert json.loads((vectors / "ids.json").read_text()) == ["i0", "i1"]
