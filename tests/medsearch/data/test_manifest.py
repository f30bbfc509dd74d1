"""The manifest format: JSON Lines and CSV, validation errors, path resolution, the MedPix set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsearch import storage
from medsearch.data.manifest import Record, read_manifest, write_manifest
from medsearch.errors import ManifestError


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    {"image_id": "a-1", "image": "images/a.png", "caption": "CT chest", "split": "train",
     "modality": "CT", "age": 60},
    {"image_id": "b.2", "image": "images/b.png", "caption": "", "split": "test"},
    {"image_id": "c_3", "image": "images/c.png", "split": "validation", "plane": ""},
]  # fmt: skip


def test_given_jsonl_when_read_then_records_with_resolved_paths_and_metadata(
    tmp_path: Path,
) -> None:
    manifest = write_jsonl(tmp_path / "data" / "manifest.jsonl", ROWS)
    records = read_manifest(manifest)
    assert [r.image_id for r in records] == ["a-1", "b.2", "c_3"]
    assert records[0].image == str(tmp_path / "data" / "images" / "a.png")
    assert records[0].metadata == {"modality": "CT", "age": 60}
    assert records[0].has_caption
    # An empty or missing caption is a captionless image; empty metadata values are dropped
    assert records[1].caption is None and records[2].caption is None
    assert records[2].metadata == {}
    assert [r.image_id for r in read_manifest(manifest, split="test")] == ["b.2"]


def test_given_csv_with_same_columns_when_read_then_same_records(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "\ufeffimage_id,image,caption,split,modality\n"
        'a-1,images/a.png,"CT chest, axial",train,CT\n'
        "b.2,/abs/b.png,,test,\n",
        encoding="utf-8",
    )
    records = read_manifest(manifest)
    assert records[0] == Record(
        "a-1", str(tmp_path / "images" / "a.png"), "CT chest, axial", "train", {"modality": "CT"}
    )
    assert records[1].image == "/abs/b.png" and records[1].caption is None
    assert records[1].metadata == {}


def test_given_absolute_and_s3_images_when_read_then_kept_as_given(tmp_path: Path) -> None:
    rows = [
        {"image_id": "a", "image": str(tmp_path / "x.png")},
        {"image_id": "b", "image": "s3://bucket/images/b.png"},
    ]
    records = read_manifest(write_jsonl(tmp_path / "m.jsonl", rows))
    assert [r.image for r in records] == [str(tmp_path / "x.png"), "s3://bucket/images/b.png"]
    assert records[0].split is None


def test_given_s3_manifest_when_read_then_relative_images_resolve_under_its_prefix(
    s3_bucket: str,
) -> None:
    storage.write_text(
        f"s3://{s3_bucket}/run/manifest.jsonl",
        json.dumps({"image_id": "a", "image": "images/a.png", "split": "train"}) + "\n",
    )
    (record,) = read_manifest(f"s3://{s3_bucket}/run/manifest.jsonl")
    assert record.image == f"s3://{s3_bucket}/run/images/a.png"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"image_id": "has space", "image": "x.png"}, "invalid image_id 'has space'"),
        ({"image_id": "x" * 129, "image": "x.png"}, "invalid image_id"),
        ({"image_id": "..", "image": "x.png"}, "'..'"),
        ({"image_id": 7, "image": "x.png"}, "invalid image_id 7"),
        ({"image": "x.png"}, "invalid image_id None"),
        ({"image_id": "a"}, "a: missing 'image'"),
        ({"image_id": "a", "image": "  "}, "a: missing 'image'"),
        ({"image_id": "a", "image": "x.png", "caption": 3}, "'caption' must be a string"),
        ({"image_id": "a", "image": "x.png", "split": "dev"}, "split 'dev' is not one of"),
        (["not", "an", "object"], "must be a JSON object"),
    ],
)
def test_given_bad_row_when_read_then_manifest_error_names_line(
    tmp_path: Path, row: object, message: str
) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image_id": "ok", "image": "ok.png"}, row])
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    assert f"{manifest}:2: " in str(info.value)
    assert message in str(info.value)


def test_given_duplicate_id_when_read_then_error_names_second_line(tmp_path: Path) -> None:
    rows = [{"image_id": "a", "image": "1.png"}, {"image_id": "a", "image": "2.png"}]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: duplicate image_id 'a'"):
        read_manifest(manifest)


def test_given_invalid_json_or_bad_csv_split_when_read_then_line_named(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image_id": "a", "image": "1.png"}\n\n{"image_id": \n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:3: not valid JSON"):
        read_manifest(manifest)
    csv_manifest = tmp_path / "m.csv"
    csv_manifest.write_text("image_id,image,split\na,1.png,training\n")
    with pytest.raises(ManifestError, match=r"m\.csv:2: a: split 'training'"):
        read_manifest(csv_manifest)


def test_given_unknown_split_filter_when_read_then_error(tmp_path: Path) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image_id": "a", "image": "1.png"}])
    with pytest.raises(ManifestError, match="split 'dev'"):
        read_manifest(manifest, split="dev")


def test_given_records_when_written_and_read_back_then_equal_and_paths_relative(
    tmp_path: Path,
) -> None:
    records = read_manifest(write_jsonl(tmp_path / "src" / "manifest.jsonl", ROWS))
    moved = [Record(r.image_id, str(tmp_path / "out" / "images" / Path(r.image).name),
                    r.caption, r.split, r.metadata) for r in records]  # fmt: skip
    target = tmp_path / "out" / "manifest.jsonl"
    write_manifest(target, moved)
    assert json.loads(target.read_text().splitlines()[0])["image"] == "images/a.png"
    assert read_manifest(target) == moved


def test_given_medpix_manifest_when_read_then_1850_valid_records(medpix_dir: Path) -> None:
    records = read_manifest(medpix_dir / "manifest.jsonl")
    assert len(records) == 1850
    assert {r.split for r in records} <= {"train", "validation", "test"}
    assert all(Path(r.image).is_absolute() and r.image.endswith(".jpg") for r in records)
    assert Path(records[0].image).is_file()
    assert all("modality" in r.metadata for r in records)
