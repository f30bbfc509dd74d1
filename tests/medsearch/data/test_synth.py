"""The synthetic corpus: determinism, caption/attribute agreement, splits, queries and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from medsearch.cli import main
from medsearch.data.images import load_image
from medsearch.data.manifest import read_manifest
from medsearch.data.queries import queries_beside
from medsearch.data.synth import (
    Attributes,
    SynthConfig,
    judge_relevance,
    render_image,
    write_synthetic_corpus,
)
from medsearch.errors import ConfigError

N = 120

# What a caption must say for each attribute value (word-bounded, case-sensitive where the
# abbreviation is, so "US" is ultrasound but "numerous" is not).
MODALITY_PATTERNS = {
    "X-ray": r"(?i:x-ray|radiograph|plain film)|\bXR\b",
    "CT": r"\bCT\b|(?i:computed tomography)",
    "MRI": r"\bMRI?\b|(?i:magnetic resonance)",
    "ultrasound": r"(?i:ultrasound|sonogra|ultrasonography)|\bUS\b",
}
REGION_PATTERNS = {
    "chest": r"(?i:chest|thora|lung|pleural|rib)",
    "head": r"(?i:head|brain|cranial|skull)",
    "abdomen": r"(?i:abdom)",
    "knee": r"(?i:knee)",
    "hand": r"(?i:hand)",
    "pelvis": r"(?i:pelvi)",
}
FINDING_PATTERNS = {
    "nodule": r"(?i:nodul|lesion|\bmass(es)?\b)",
    "fracture": r"(?i:fracture)",
    "effusion": r"(?i:effusion|fluid)",
    "none": r"(?i:normal|unremarkable|no acute abnormality)",
}
SIDE_PATTERNS = {"left": r"\b((?i:left)|L)\b", "right": r"\b((?i:right)|R)\b"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_corpus(
        tmp_path_factory.mktemp("synth"), SynthConfig(n=N, seed=3, n_queries=30)
    )


def test_given_same_config_when_written_twice_then_same_bytes(tmp_path: Path) -> None:
    config = SynthConfig(n=24, seed=11, n_queries=10)
    a, b = tmp_path / "a", tmp_path / "b"
    write_synthetic_corpus(a, config)
    write_synthetic_corpus(b, config)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 24 + 2
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    other = tmp_path / "c"
    write_synthetic_corpus(other, SynthConfig(n=24, seed=12, n_queries=10))
    assert (other / "manifest.jsonl").read_bytes() != (a / "manifest.jsonl").read_bytes()


def test_given_corpus_when_read_then_splits_captionless_and_metadata_as_configured(
    corpus: Path,
) -> None:
    records = read_manifest(corpus)
    assert len(records) == N
    splits = [r.split for r in records]
    assert (splits.count("train"), splits.count("validation"), splits.count("test")) == (96, 12, 12)
    captionless = [r for r in records if r.caption is None]
    assert len(captionless) == round(N * 0.1)
    for record in records:
        assert {"modality", "body_region", "finding"} <= set(record.metadata)
        assert Path(record.image).is_file()
        assert not Path(record.image).is_absolute() or record.image.startswith(str(corpus.parent))
    line = json.loads((corpus.parent / "manifest.jsonl").read_text().splitlines()[0])
    assert line["image"].startswith("images/")  # relative: the folder can move


def test_given_captions_when_checked_then_attributes_are_stated_and_none_contradicted(
    corpus: Path,
) -> None:
    without_modality = 0
    for record in read_manifest(corpus):
        if record.caption is None:
            continue
        text, meta = record.caption, record.metadata
        for patterns, key in (
            (MODALITY_PATTERNS, "modality"),
            (REGION_PATTERNS, "body_region"),
            (FINDING_PATTERNS, "finding"),
        ):
            stated = re.search(patterns[meta[key]], text)
            if key != "finding" and not stated:
                # Only short phrases leave the modality or the region out ("Left rib fracture.").
                without_modality += key == "modality"
                assert len(text.split()) <= 12 and not text.startswith("There"), (key, text)
            else:
                assert stated, (key, text)
            others = [v for k, v in patterns.items() if k != meta[key]]
            if key != "body_region":  # a region word may recur in detail ("knee effusion")
                assert not any(re.search(p, text) for p in others), (key, text)
        side = meta.get("laterality")
        if side is not None:
            assert re.search(SIDE_PATTERNS[side], text), text
            other = "right" if side == "left" else "left"
            assert not re.search(SIDE_PATTERNS[other], text), text
        if meta.get("count") == "multiple":
            assert re.search(r"(?i:multiple|several|numerous)", text), text
        if meta.get("count") == "two":
            assert re.search(r"\b((?i:two)|2)\b", text), text
        if meta.get("size") == "large":
            assert not re.search(r"(?i:small|trace|minimal|subcentimeter)", text), text
        if meta.get("size") == "small":
            assert not re.search(r"(?i:large|massive)", text), text
    captioned = sum(r.caption is not None for r in read_manifest(corpus))
    assert 0.05 * captioned < without_modality < 0.35 * captioned


def test_given_corpus_when_images_loaded_then_decodable_at_configured_size(corpus: Path) -> None:
    for record in read_manifest(corpus)[:10]:
        image = load_image(record.image, name=record.image_id)
        assert image.size == (64, 64)


def _mean_right_minus_left(attrs: Attributes, seeds: range) -> float:
    values = []
    for seed in seeds:
        pixels = render_image(attrs, 64, np.random.default_rng(seed)).astype(float)
        values.append(pixels[:, 32:].mean() - pixels[:, :32].mean())
    return float(np.mean(values))


@pytest.mark.parametrize("modality", ["X-ray", "CT", "MRI"])
def test_given_left_sided_nodule_when_rendered_then_it_is_on_the_image_right(
    modality: str,
) -> None:
    # Radiological convention: the patient's left is the image's right; nodules are bright
    # on these modalities, so the side holding them is brighter on average.
    def nodule(side: str) -> Attributes:
        return Attributes(modality, "abdomen", "nodule", side, "large", "single", 5.0)

    seeds = range(8)
    assert (
        _mean_right_minus_left(nodule("left"), seeds)
        > _mean_right_minus_left(nodule("right"), seeds) + 5
    )


def test_given_each_modality_when_rendered_then_looks_differ() -> None:
    def render(modality: str) -> np.ndarray:
        attrs = Attributes(modality, "chest", "none")
        return render_image(attrs, 64, np.random.default_rng(0)).astype(float)

    xray, ct, mri, us = (render(m) for m in ("X-ray", "CT", "MRI", "ultrasound"))
    assert xray[0, :].mean() > 150  # collimator shutters: unexposed film is bright
    assert ct[0, 0] < 10 and ct[-4:, 28:36].max() > 60  # dark corners, scanner table
    assert mri.ndim == 3 and mri[..., 2].mean() > mri[..., 0].mean()  # faint blue tint
    assert us[:8, :8].max() < 10 and us[6:14, 28:36].mean() > 20  # fan from the top centre


def test_given_query_attributes_when_judged_then_grades_follow_the_rules() -> None:
    image = Attributes("CT", "chest", "nodule", "left", "small", "single", 1.0)
    assert judge_relevance({"modality": "CT", "body_region": "chest"}, image) == 2
    assert judge_relevance({"modality": "MRI", "body_region": "chest"}, image) == 0
    wanted = {"modality": "CT", "body_region": "chest", "finding": "nodule", "laterality": "left"}
    assert judge_relevance(wanted, image) == 2
    assert judge_relevance({**wanted, "laterality": "right"}, image) == 1
    assert judge_relevance({**wanted, "laterality": "right", "modality": "MRI"}, image) == 0
    assert judge_relevance({**wanted, "body_region": "head"}, image) == 0
    assert judge_relevance({**wanted, "finding": "effusion"}, image) == 0


def test_given_query_set_when_read_then_judgments_match_metadata_and_include_captionless(
    corpus: Path,
) -> None:
    records = {r.image_id: r for r in read_manifest(corpus)}
    queries = queries_beside(corpus)
    assert queries is not None and 20 <= len(queries) <= 30
    assert len({q.query for q in queries}) == len(queries)
    lines = [json.loads(x) for x in (corpus.parent / "queries.jsonl").read_text().splitlines()]
    captionless_hits = 0
    for query, line in zip(queries, lines, strict=True):
        wanted = line["attributes"]
        expected = {}
        for image_id, record in records.items():
            meta = record.metadata
            attrs = Attributes(
                meta["modality"], meta["body_region"], meta["finding"],
                meta.get("laterality"), meta.get("size"), meta.get("count"), meta.get("size_cm"),
            )  # fmt: skip
            if grade := judge_relevance(wanted, attrs):
                expected[image_id] = grade
        assert dict(query.relevance) == expected
        assert sorted(line["relevant"]) == sorted(expected)
        assert any(g == 2 and records[i].split == "test" for i, g in expected.items())
        captionless_hits += sum(records[i].caption is None for i in expected)
    assert captionless_hits > 0


def test_given_cli_options_when_synth_runs_then_corpus_written_as_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "corpus"
    args = ["synth", "--out", str(out), "--n", "20", "--seed", "4"]
    assert main([*args, "--captionless", "0.5", "--image-size", "32"]) == 0
    assert str(out / "manifest.jsonl") in capsys.readouterr().out
    records = read_manifest(out / "manifest.jsonl")
    assert len(records) == 20 and sum(r.caption is None for r in records) == 10
    assert load_image(records[0].image).size == (32, 32)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"captionless_fraction": 1.5},
        {"image_size": 8},
        {"train_fraction": 0.5},
        {"n_queries": -1},
    ],
)
def test_given_bad_config_when_built_then_config_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        SynthConfig(**kwargs)  # type: ignore[arg-type]


def test_given_bad_cli_value_when_synth_runs_then_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["synth", "--out", str(tmp_path), "--captionless", "2"]) == 2
    assert "captionless fraction" in capsys.readouterr().err
