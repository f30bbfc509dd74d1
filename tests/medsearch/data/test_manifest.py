"""The manifest format: JSON Lines and CSV, validation errors, path resolution, the MedPix set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsearch import storage
from medsearch.data.manifest import (
    CAPTION_BYTES_FIELD,
    MAX_CAPTION_BYTES,
    Record,
    read_manifest,
    truncate_caption,
    write_manifest,
)
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


# --- what would lose or merge rows is refused, with the line -------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # An unterminated quote at the end: the csv module would read the rest as one caption.
        ('image_id,image,caption\na,a.png,"first\nb,b.png,second\nc,c.png,third\n',
         r"m\.csv:2: not valid CSV .*a quote is never closed"),
        # Closed again rows later: rows b and c would be folded into a's caption.
        ('image_id,image,caption\na,a.png,"first\nb,b.png,second\nc,c.png,third"\nd,d.png,x\n',
         r"m\.csv:2: a field spans lines"),
        ('image_id,image,caption\na,a.png,"ok"x\n', r"m\.csv:2: not valid CSV"),
        ("image_id,image,caption\na,a.png,CT chest, axial\n", r"m\.csv:2: 4 fields, the header"),
        ("image_id,image,caption\na,a.png\n", r"m\.csv:2: 2 fields, the header has 3"),
        ("image_id,image,caption,caption\na,a.png,x,y\n", r"m\.csv:1: column 'caption' is named"),
        ("id,image,caption\na,a.png,x\n", r"m\.csv:1: no column image_id in the header"),
        ("image_id,image,caption\nok,ok.png,x\nb,b.png,x\x00y\n", r"m\.csv:3: b: a NUL character"),
    ],
)  # fmt: skip
def test_given_a_csv_that_would_lose_rows_when_read_then_error_names_the_line(
    tmp_path: Path, text: str, message: str
) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(text, encoding="utf-8", newline="")
    with pytest.raises(ManifestError, match=message):
        read_manifest(manifest)


def test_given_csv_with_crlf_and_blank_lines_when_read_then_every_row(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b'image_id,image,caption\r\na,a.png,"x, y"\r\n\r\nb,b.png,z\r\n')
    assert [(r.image_id, r.caption) for r in read_manifest(manifest)] == [("a", "x, y"), ("b", "z")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"image_id": "a", "image": "a.png", "age": NaN}', r"m\.jsonl:2: NaN is not a number"),
        ('{"image_id": "a", "image": "a.png", "x": -Infinity}', r"m\.jsonl:2: -Infinity"),
        ('{"image_id": "a", "image": "a.png", "caption": "x\\u0000y"}', r"m\.jsonl:2: a: a NUL"),
        ('{"image_id": "a", "image": "a.png", "tags": ["\\u0000"]}', r"m\.jsonl:2: a: a NUL"),
    ],
)
def test_given_jsonl_with_values_no_engine_keeps_when_read_then_error_names_the_line(
    tmp_path: Path, line: str, message: str
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image_id": "ok", "image": "ok.png"}\n' + line + "\n")
    with pytest.raises(ManifestError, match=message):
        read_manifest(manifest)


def test_given_captions_with_unicode_line_separators_when_written_and_read_then_one_record_each(
    tmp_path: Path,
) -> None:
    # write_manifest keeps U+2028, U+0085 and \x0c raw (ensure_ascii=False); str.splitlines
    # would split the line there and call the manifest broken.
    records = [
        Record("a", str(tmp_path / "a.png"), "left\u2028right"),
        Record("b", str(tmp_path / "b.png"), "next\x85line\x0cfeed", metadata={"n": "x\u2029y"}),
    ]
    write_manifest(tmp_path / "m.jsonl", records)
    assert read_manifest(tmp_path / "m.jsonl") == records


# --- caption size -------------------------------------------------------------------------------


def test_given_a_huge_caption_when_read_then_cut_at_a_word_with_its_size_recorded(
    tmp_path: Path,
) -> None:
    caption = "chest " * 2_000_000  # 12 MB
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"image_id": "a", "image": "a.png", "caption": caption, "modality": "CT"},
        {"image_id": "b", "image": "b.png", "caption": "short"},
    ])  # fmt: skip
    big, small = read_manifest(manifest)
    assert big.caption is not None
    assert len(big.caption.encode()) <= MAX_CAPTION_BYTES
    assert len(big.caption.encode()) > 0.99 * MAX_CAPTION_BYTES
    assert big.caption.endswith("chest") and caption.startswith(big.caption)
    assert big.metadata == {"modality": "CT", CAPTION_BYTES_FIELD: len(caption.strip())}
    assert small.caption == "short" and small.metadata == {}


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("é" * 10, "é" * 4),  # 2-byte characters: never half of one
        ("ab 🫁🫁🫁", "ab 🫁"),  # a 4-byte character cut: dropped whole
        ("abcdefgh ij", "abcdefgh"),  # the last space within the limit keeps >= 3/4 of it
        ("abc defghijkl", "abc defgh"),  # a space too early: cut mid-word instead
        ("short", "short"),
    ],
)
def test_given_a_caption_over_the_limit_when_truncated_then_utf8_and_word_boundaries_hold(
    caption: str, expected: str
) -> None:
    assert truncate_caption(caption, limit=9) == expected
