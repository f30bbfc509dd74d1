"""Every hostile manifest case through the reader and through `medsearch index` over a live index.

Expected: the case's records (and in the index, its documents), or one error line with exit 2
and the live index untouched (same generation, same documents). Cases: tests/support/hostile/.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsearch.cli import main
from medsearch.data.manifest import read_manifest
from medsearch.errors import MedsearchError
from medsearch.index.embedded import open_index
from tests.support.cli_output import one_line_error
from tests.support.hostile.manifests import CASES, ManifestCase, case_ids

LIVE_ID = "live-0"


@pytest.fixture(scope="module")
def vectors_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `vectorize` folder with one vector, of the live index's one document."""
    folder = tmp_path_factory.mktemp("hostile-vectors")
    np.save(folder / "vectors.npy", np.eye(1, 4, dtype=np.float32))
    (folder / "ids.json").write_text(json.dumps([LIVE_ID]))
    (folder / "meta.json").write_text(json.dumps({"model": "m", "dim": 4, "count": 1}))
    return folder


def index_argv(manifest: Path, vectors: Path, index: Path) -> list[str]:
    return ["index", "--data", str(manifest), "--vectors", str(vectors), "--index", str(index)]


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_given_a_hostile_manifest_when_read_then_its_records_or_an_error_naming_it(
    tmp_path: Path, case: ManifestCase
) -> None:
    manifest = case.write(tmp_path)
    if case.error is not None:
        with pytest.raises(MedsearchError, match=case.error):
            read_manifest(manifest)
        return
    records = read_manifest(manifest)
    assert tuple(r.image_id for r in records) == case.ids
    if case.check is not None:
        case.check(records)


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_given_a_live_index_when_a_hostile_manifest_is_indexed_then_documents_or_one_line_and_kept(
    tmp_path: Path, vectors_dir: Path, case: ManifestCase, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a live index of one document
    live = tmp_path / "live" / "manifest.jsonl"
    live.parent.mkdir()
    live.write_text(json.dumps({"image_id": LIVE_ID, "image": "x.png", "caption": "live"}) + "\n")
    index = tmp_path / "ix"
    assert main(index_argv(live, vectors_dir, index)) == 0
    generation = open_index(index).generation
    capsys.readouterr()
    # When the hostile manifest is indexed into it
    code = main(index_argv(case.write(tmp_path / "case"), vectors_dir, index))
    captured = capsys.readouterr()
    reopened = open_index(index)
    error = case.error or case.index_error
    if error is not None:
        # Then one line and exit 2, and the live index is the one it was
        assert code == 2
        assert re_search(error, one_line_error(captured.err, "index"))
        assert reopened.generation == generation and reopened.ids() == [LIVE_ID]
        return
    # Then the case's records are the index's documents, captions as the reader cut them
    assert code == 0, captured.err
    assert case.ids is not None
    assert sorted(reopened.ids()) == sorted(case.ids)
    records = read_manifest(tmp_path / "case" / case.filename)
    for record in records:
        document = reopened.get(record.image_id)
        assert document is not None and document.caption == record.caption
        assert dict(document.metadata) == dict(record.metadata)
    cut = sum(1 for r in records if "caption_original_bytes" in r.metadata)
    assert (f"captions cut to 16 KiB: {cut}" in captured.out) == (cut > 0)


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None
