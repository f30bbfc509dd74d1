"""The hostile image corpus (``tests/support/hostile/images.py``) through every door it can enter.

Each case goes through ``decode_image`` (its size or its error); through ``medsearch vectorize``,
with the file cases (``/dev/zero``, a FIFO, a directory, an oversized file) as further records
(each failure is one bad record, the run goes on and vectorises the rest); and through the upload
endpoint of a real server on 127.0.0.1 with the tiny CLIP's torch encoder, over an index that
``medsearch index`` built of the good cases (200, or a 4xx with a message, never a 500).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medsearch.api import background_server, create_app
from medsearch.cli import main
from medsearch.data.images import MAX_ASPECT, decode_image
from medsearch.settings import ServiceSettings
from tests.support.hostile.images import CASES, FILE_CASES, ImageCase, upload_status

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on bad values

IDS = [case.name for case in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_given_a_hostile_image_when_decoded_then_its_size_or_its_error(case: ImageCase) -> None:
    if case.error is None:
        image = decode_image(case.data, name=case.name)
        assert (image.mode, image.size) == ("RGB", case.size)
        width, height = image.size
        assert max(width, height) <= MAX_ASPECT * min(width, height)
        return
    with pytest.raises(case.error) as raised:
        decode_image(case.data, name=case.name)
    assert type(raised.value) is case.error
    assert case.message in str(raised.value)
    assert str(raised.value).startswith(f"{case.name}: ")
    assert "\n" not in str(raised.value)


def test_given_the_corpus_when_listed_then_names_unique_and_every_outcome_present() -> None:
    names = [case.name for case in CASES]
    assert len(set(names)) == len(names)
    assert {upload_status(case) for case in CASES} == {200, 415, 422}
    assert all((case.error is None) == (case.size is not None) for case in CASES)


# --- vectorize, index and upload ------------------------------------------------------------------


def write_manifest(root: Path, cases: tuple[ImageCase, ...]) -> Path:
    """Every case as a file of a manifest under ``root``, one record each, in corpus order."""
    (root / "images").mkdir(parents=True)
    lines = []
    for case in cases:
        path = root / "images" / f"{case.name}.bin"
        path.write_bytes(case.data)
        record = {"image_id": case.name, "image": f"images/{path.name}", "caption": case.name}
        lines.append(json.dumps(record) + "\n")
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(lines))
    return manifest


@pytest.fixture(scope="module")
def hostile_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image cases, then the file cases (``/dev/zero``, a FIFO...) as records' locations."""
    root = tmp_path_factory.mktemp("hostile")
    manifest = write_manifest(root, CASES)
    (root / "files").mkdir()
    with manifest.open("a") as handle:
        for case in FILE_CASES:
            location = case.make(root / "files")
            record = {"image_id": case.name, "image": location, "caption": case.name}
            handle.write(json.dumps(record) + "\n")
    return manifest


@pytest.fixture(scope="module")
def hostile_vectors(
    hostile_manifest: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("hostile-vectors")
    model, data = str(tiny_model_dir), str(hostile_manifest)
    code = main(["vectorize", "--model", model, "--data", data, "--out", str(out)])
    assert code == 0
    return out


def test_given_the_corpus_when_vectorized_then_each_decode_error_is_one_bad_record(
    hostile_vectors: Path,
) -> None:
    bad = _bad_records(hostile_vectors)
    expected_bad = {case.name: case.message for case in CASES if case.error is not None}
    expected_bad.update({case.name: case.message for case in FILE_CASES})
    assert set(bad) == set(expected_bad)
    for name, reason in bad.items():
        assert expected_bad[name] in reason, (name, reason)
    ids = json.loads((hostile_vectors / "ids.json").read_text())
    assert ids == [case.name for case in CASES if case.error is None]


def _bad_records(folder: Path) -> dict[str, str]:
    lines = (folder / "bad_records.jsonl").read_text().splitlines()
    return {item["image_id"]: item["reason"] for item in map(json.loads, filter(None, lines))}


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API on a real server, over an index of the corpus's good images (its own vectorize
    run, so the uploads are tested whatever the hostile run does)."""
    root = tmp_path_factory.mktemp("hostile-served")
    data = str(write_manifest(root, tuple(c for c in CASES if c.error is None)))
    model, vectors, index = str(tiny_model_dir), str(root / "vectors"), str(root / "index")
    assert main(["vectorize", "--model", model, "--data", data, "--out", vectors]) == 0
    assert main(["index", "--data", data, "--vectors", vectors, "--index", index]) == 0
    settings = ServiceSettings(index_dir=index, model=model)
    with background_server(create_app(settings)) as url:
        yield url


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_given_a_hostile_image_when_uploaded_to_a_real_server_then_200_or_4xx_with_a_message(
    served: str, case: ImageCase
) -> None:
    files = {"file": (f"{case.name}.png", case.data, "image/png")}
    response = httpx.post(f"{served}/v1/search/image", files=files, timeout=60)
    assert response.status_code == upload_status(case), (case.name, response.text[:300])
    if response.status_code == 200:
        assert response.json()["results"], case.name
    else:
        detail = response.json()["error"]["message"]
        assert isinstance(detail, str) and len(detail) > 5
        if case.error is not None and response.status_code == 422 and case.data:
            assert case.message in detail, (case.name, detail)
