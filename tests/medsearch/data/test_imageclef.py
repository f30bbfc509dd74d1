"""The ImageCLEF 2017 caption-prediction importer, on a generated miniature of its layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from medsearch.cli import main
from medsearch.data.imageclef import import_imageclef, validation_size
from medsearch.data.manifest import read_manifest
from medsearch.errors import InvalidInputError


def save_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (40, 40, 40)).save(path)


def make_tree(root: Path) -> dict[str, list[str]]:
    """Write a miniature ImageCLEF 2017 tree; return the ids of each original folder."""
    train_ids = [f"1471-2105-{i}-S1-{i}" for i in range(30)]
    val_ids = [f"PMC{4000 + i}_F{i}" for i in range(6)]
    test_ids = [f"test-{i}" for i in range(4)]
    training = root / "training"
    lines = [
        f"{image_id}\tCT scan  of case {i}\tshowing a lesion"
        for i, image_id in enumerate(train_ids)
    ]
    lines += ["bad id!\tinvalid id", f"{train_ids[0]}\tduplicate line", "no-image-1\tcaption"]
    (training).mkdir(parents=True)
    (training / "CaptionPredictionTraining2017-Captions.csv").write_text("\n".join(lines) + "\n")
    # A concept-detection file in the same folder must not be read as captions.
    (training / "ConceptDetectionTraining2017-Concepts.csv").write_text(
        "".join(f"{i}\tC0040405;C0817096\n" for i in train_ids[:3])
    )
    for n, image_id in enumerate(train_ids):
        save_image(training / f"part{n % 3}" / "nested" / f"{image_id}.jpg")
    validation = root / "validation"
    validation.mkdir()
    (validation / "CaptionPredictionValidation2017-Captions.txt").write_text(
        "".join(f"{image_id}\tMRI of the knee {i}\n" for i, image_id in enumerate(val_ids))
    )
    for image_id in val_ids:
        save_image(validation / "images" / f"{image_id}.jpg")
    test = root / "test"
    test.mkdir()
    (test / "CaptionPredictionTesting2017-List.txt").write_text(
        "".join(f"{image_id}\n" for image_id in [*test_ids, "test-missing"])
    )
    for image_id in test_ids:
        save_image(test / "CaptionPredictionTesting2017" / f"{image_id}.png")
    return {"training": train_ids, "validation": val_ids, "test": test_ids}


def test_given_full_size_training_set_when_resplit_then_seed_counts() -> None:
    assert validation_size(164_614) == 16_461
    assert 164_614 - validation_size(164_614) == 148_153
    assert validation_size(19) == 2 and validation_size(15) == 2 and validation_size(14) == 1


def test_given_miniature_tree_when_imported_then_seed_resplit_and_bad_entries_reported(
    tmp_path: Path,
) -> None:
    # Given a miniature tree with an invalid id, a duplicate line and missing images
    ids = make_tree(tmp_path / "clef")
    out = tmp_path / "out" / "manifest.jsonl"
    # When imported
    result = import_imageclef(tmp_path / "clef", out, seed=7)
    # Then the original validation folder is the test split, training is cut 27:3,
    # and the test folder gives captionless records without a split
    records = {r.image_id: r for r in read_manifest(out)}
    assert result.counts == {
        "train": 27, "validation": 3, "test": 6, "captionless": 4, "records": 40
    }  # fmt: skip
    assert {i for i, r in records.items() if r.split == "test"} == set(ids["validation"])
    assert {i for i, r in records.items() if r.split is None} == set(ids["test"])
    assert all(records[i].caption is None for i in ids["test"])
    assert all(records[i].metadata["source_split"] == "test" for i in ids["test"])
    assert records[ids["training"][3]].caption == "CT scan of case 3 showing a lesion"
    assert records[ids["validation"][0]].metadata == {"source_split": "validation"}
    assert all(Path(r.image).is_file() for r in records.values())
    # And every left-out entry is reported with its reason, none of them fatal
    assert sorted(result.missing) == ["no-image-1", "test-missing"]
    reasons = {b.image_id: b.reason for b in result.bad}
    assert "invalid image_id" in reasons["bad id!"]
    assert "duplicate" in reasons[ids["training"][0]]
    assert "not found" in reasons["no-image-1"] and "not found" in reasons["test-missing"]
    assert result.report is not None
    report = [json.loads(line) for line in result.report.read_text().splitlines()]
    assert {line["image_id"] for line in report} == set(reasons)


def test_given_same_seed_when_imported_twice_then_same_split_and_other_seed_differs(
    tmp_path: Path,
) -> None:
    make_tree(tmp_path / "clef")

    def validation_ids(seed: int, name: str) -> set[str]:
        import_imageclef(tmp_path / "clef", tmp_path / name, seed=seed)
        return {r.image_id for r in read_manifest(tmp_path / name, split="validation")}

    first = validation_ids(1, "a.jsonl")
    assert first == validation_ids(1, "b.jsonl")
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert any(validation_ids(seed, f"s{seed}.jsonl") != first for seed in (2, 3, 4))


def test_given_tree_when_imported_through_cli_then_counts_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_tree(tmp_path / "clef")
    out = tmp_path / "m.jsonl"
    assert main(["import-imageclef", "--root", str(tmp_path / "clef"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "27 train, 3 validation, 6 test, 4 captionless" in printed
    assert "2 images missing on disk" in printed
    assert len(read_manifest(out)) == 40


def test_given_folder_that_is_not_imageclef_when_imported_then_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(InvalidInputError, match="not an ImageCLEF tree"):
        import_imageclef(tmp_path, tmp_path / "m.jsonl")
    assert main(["import-imageclef", "--root", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "not an ImageCLEF tree" in capsys.readouterr().err


def test_given_training_folder_without_caption_file_when_imported_then_clear_error(
    tmp_path: Path,
) -> None:
    save_image(tmp_path / "training" / "x.jpg")
    with pytest.raises(InvalidInputError, match="no tab-separated"):
        import_imageclef(tmp_path, tmp_path / "m.jsonl")
