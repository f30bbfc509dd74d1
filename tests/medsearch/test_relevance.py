"""The vector floor: calibration on matching vs non-matching caption pairs, and its storage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsearch.relevance import VectorFloor, calibrate_floor, sample_pairs
from medsearch.vectors import normalize


def _pairs(count: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image vectors sharing a common offset (CLIP's cone) and caption vectors near their own."""
    rng = np.random.default_rng(seed)
    common = np.ones(dim, dtype=np.float32)
    images = normalize(rng.standard_normal((count, dim)).astype(np.float32) + 2 * common)
    texts = normalize(
        images - 1.5 * common / np.sqrt(dim) + noise * rng.standard_normal((count, dim))
    )
    return texts.astype(np.float32), images


def test_given_matching_and_other_pairs_when_calibrated_then_the_floor_separates_them() -> None:
    # Given captions whose vectors lie near their own image's — When calibrated — Then almost
    # every matching pair clears the floor and almost no non-matching one does.
    texts, images = _pairs(200, 32, 0.05, seed=1)
    floor = calibrate_floor(texts, images, images)
    assert floor is not None and floor.pairs == 200
    assert floor.matched >= 0.95 and floor.unmatched <= 0.05
    centre = images.mean(axis=0)
    own = np.einsum("ij,ij->i", texts, images) - texts @ centre
    assert np.mean(own >= floor.floor) == pytest.approx(floor.matched)


def test_given_a_query_when_its_floor_is_taken_then_the_centre_shifts_it() -> None:
    # The raw cosine floor of a query t is floor + t · m: a text close to every image (the
    # common direction) must clear a higher raw cosine than one close to none.
    floor = VectorFloor(0.2, (0.5, 0.0), 0.9, 0.1, 10)
    assert floor.for_query(np.array([1.0, 0.0])) == pytest.approx(0.7)
    assert floor.for_query(np.array([0.0, 1.0])) == pytest.approx(0.2)


def test_given_too_few_captions_when_calibrated_then_there_is_no_floor() -> None:
    texts, images = _pairs(4, 8, 0.05, seed=2)
    assert calibrate_floor(texts, images, images) is None


def test_given_a_stored_floor_when_read_back_then_it_is_the_same() -> None:
    texts, images = _pairs(50, 8, 0.1, seed=3)
    floor = calibrate_floor(texts, images, images)
    assert floor is not None
    again = VectorFloor.from_json(json.loads(json.dumps(floor.to_json())), 8)
    assert again is not None and again.floor == pytest.approx(floor.floor, abs=1e-6)
    assert np.allclose(again.center, floor.center, atol=1e-6)


@pytest.mark.parametrize(
    "stored",
    [
        None,
        "0.5",
        {"floor": 0.5},
        {"floor": "high", "center": [0.1, 0.2]},
        {"floor": float("nan"), "center": [0.1, 0.2]},
        {"floor": 0.5, "center": [0.1, 0.2, 0.3]},  # another dimension than the index's
        {"floor": 0.5, "center": []},
    ],
)
def test_given_an_unusable_stored_floor_when_read_then_it_is_none(stored: object) -> None:
    assert VectorFloor.from_json(stored, 2) is None


def test_given_ids_when_sampled_then_only_captioned_ones_spread_over_the_corpus() -> None:
    ids = [f"i{n}" for n in range(10)]
    captions = {image_id: (None if n % 2 else "a caption") for n, image_id in enumerate(ids)}
    assert sample_pairs(ids, captions) == [0, 2, 4, 6, 8]
    assert sample_pairs(ids, captions, limit=2) == [0, 4]


def test_given_a_manifest_when_vectorized_and_indexed_then_the_index_records_the_floor(
    tmp_path: Path,
) -> None:
    # Given ten captioned images — When vectorized and indexed (the CLI's own functions) —
    # Then the vectors' meta.json holds a floor calibrated on those captions, and the embedded
    # index built from them records the same one.
    from medsearch.data.manifest import read_manifest
    from medsearch.index.embedded import open_index
    from medsearch.indexing import index_manifest
    from medsearch.vectorize import read_vectors, vectorize
    from tests.medsearch.test_vectorize import HashEncoder, make_manifest

    manifest = make_manifest(tmp_path / "data", 10, bad=False)
    vectorize(HashEncoder(), read_manifest(manifest), tmp_path / "vectors")
    _, _, meta = read_vectors(tmp_path / "vectors")
    stored = VectorFloor.from_json(meta["vector_floor"], 8)
    assert stored is not None and stored.pairs == 10
    index_manifest(manifest, tmp_path / "vectors", tmp_path / "index")
    assert open_index(tmp_path / "index").indexed_model().vector_floor == stored


def test_given_an_opensearch_run_created_with_a_floor_then_readers_get_it() -> None:
    from medsearch.index.base import Document, IndexModel
    from medsearch.index.opensearch import OpenSearchIndex
    from tests.support.fake_opensearch import FakeCluster, fake_client

    floor = VectorFloor.from_json(VectorFloor(0.25, (0.5, 0.5), 0.9, 0.1, 20).to_json(), 2)
    assert floor is not None
    cluster = FakeCluster()
    index = OpenSearchIndex(fake_client(cluster), "run-1")
    assert index.create(2, model=IndexModel("m", "sha256:00", floor))
    with index.loading():
        assert index.upsert([Document("a", "a caption", np.array([1.0, 0.0]))]).failed == []
    assert OpenSearchIndex(fake_client(cluster), "run-1").indexed_model().vector_floor == floor
