"""The ImageCLEF 2017 caption-prediction importer, on a generated miniature of its layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from medsearch import storage
from medsearch.cli import main
from medsearch.data.imageclef import import_imageclef, validation_size
from medsearch.data.images import load_image
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


def test_given_validation_images_in_top_level_folder_when_imported_then_test_split_filled(
    tmp_path: Path,
) -> None:
    # Given the layout where the validation images ship in a top-level
    # ConceptDetectionValidation2017/ folder beside validation/ (which holds only the captions)
    root = tmp_path / "clef"
    ids = make_tree(root)
    (root / "validation" / "images").rename(root / "ConceptDetectionValidation2017")
    # When imported
    result = import_imageclef(root, tmp_path / "m.jsonl", seed=7)
    # Then the original validation images are found and make the test split
    assert result.counts["test"] == 6
    test_ids = {r.image_id for r in read_manifest(tmp_path / "m.jsonl", split="test")}
    assert test_ids == set(ids["validation"])


def test_given_validation_captions_without_images_when_imported_then_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given validation captions whose images are in neither layout
    root = tmp_path / "clef"
    make_tree(root)
    for image in (root / "validation" / "images").iterdir():
        image.unlink()
    out = tmp_path / "m.jsonl"
    # When imported, Then it fails naming the folders looked in, and writes no manifest
    with pytest.raises(InvalidInputError, match="no image") as caught:
        import_imageclef(root, out)
    message = str(caught.value)
    assert "\n" not in message
    assert str(root / "validation") in message
    assert str(root / "ConceptDetectionValidation2017") in message
    assert not out.exists()
    # And the CLI ends with that one line and exit status 2
    assert main(["import-imageclef", "--root", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ConceptDetectionValidation2017" in err


def test_given_imported_output_folder_when_moved_then_manifest_reads_and_images_load(
    tmp_path: Path,
) -> None:
    # Given an import whose output folder is outside the ImageCLEF tree
    make_tree(tmp_path / "clef")
    import_imageclef(tmp_path / "clef", tmp_path / "out" / "manifest.jsonl", seed=7)
    # When the output folder is moved elsewhere and the tree is gone from where it was
    (tmp_path / "clef").rename(tmp_path / "gone")
    (tmp_path / "elsewhere").mkdir()
    moved = (tmp_path / "out").rename(tmp_path / "elsewhere" / "moved")
    # Then every image path is relative to the manifest's folder, inside it
    lines = [json.loads(line) for line in (moved / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 40
    assert all(
        not Path(line["image"]).is_absolute() and ".." not in Path(line["image"]).parts
        for line in lines
    )
    # And the manifest reads and its images load from the new place
    records = read_manifest(moved / "manifest.jsonl")
    assert all(Path(r.image).is_relative_to(moved) for r in records)
    assert all(load_image(r.image).size == (8, 8) for r in records)


def test_given_output_folder_inside_tree_when_imported_then_images_referenced_in_place(
    tmp_path: Path,
) -> None:
    # Given a manifest written at the root of the tree
    root = tmp_path / "clef"
    ids = make_tree(root)
    import_imageclef(root, root / "manifest.jsonl", seed=7)
    # Then images are referenced where they are, relative to the root, and nothing is copied
    lines = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    image = {line["image_id"]: line["image"] for line in lines}
    assert image[ids["validation"][0]] == f"validation/images/{ids['validation'][0]}.jpg"
    assert not (root / "images").exists()


def test_given_output_folder_copied_to_s3_when_read_then_images_resolve_under_prefix(
    tmp_path: Path, s3_bucket: str
) -> None:
    # Given an imported output folder copied as is under an s3:// prefix
    make_tree(tmp_path / "clef")
    out = tmp_path / "out"
    import_imageclef(tmp_path / "clef", out / "manifest.jsonl", seed=7)
    prefix = f"s3://{s3_bucket}/clef-run"
    for path in out.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"{prefix}/{path.relative_to(out).as_posix()}", path.read_bytes())
    # When read from S3, Then every image resolves under that prefix and loads
    records = read_manifest(f"{prefix}/manifest.jsonl")
    assert len(records) == 40
    assert all(r.image.startswith(f"{prefix}/images/") for r in records)
    assert load_image(records[0].image).size == (8, 8)
