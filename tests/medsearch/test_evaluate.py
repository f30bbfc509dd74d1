"""Tests for medsearch.evaluate: metrics against a brute-force reference and hand-computed cases.

The reference below is written with plain Python loops and sorting, on purpose sharing no code
with medsearch.evaluate: a rank is the position of the first relevant item in a list sorted by
score (descending) where, among equal scores, non-relevant items come first — the same
conservative tie rule, reached by a different route.
"""

from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest

from medsearch.evaluate import (
    caption_groups,
    first_relevant_ranks,
    full_pool_metrics,
    in_batch_mrr,
    query_metrics,
    rank_metrics,
)

# --- the independent reference -------------------------------------------------------------------


def ref_dot(a: list[float], b: list[float]) -> float:
    total = 0.0
    for x, y in zip(a, b, strict=True):
        total += x * y
    return total


def ref_rank(scores: list[float], relevant: list[bool]) -> int:
    # Sort descending by score; on a tie the non-relevant item goes first (False < True).
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], relevant[j]))
    for position, j in enumerate(order, start=1):
        if relevant[j]:
            return position
    raise AssertionError("no relevant item")


def ref_same_caption(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    return a.split() == b.split() and bool(a.split())


def ref_summary(ranks: list[int]) -> dict[str, float]:
    out = {}
    for k in (1, 5, 10):
        out[f"r@{k}"] = sum(1 for r in ranks if r <= k) / len(ranks)
    out["mrr@10"] = sum(1.0 / r for r in ranks if r <= 10) / len(ranks)
    ordered = sorted(ranks)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        out["median_rank"] = float(ordered[middle])
    else:
        out["median_rank"] = (ordered[middle - 1] + ordered[middle]) / 2
    return out


def ref_full_pool(images: list[list[float]], texts: dict[int, list[float]], captions: list) -> dict:
    n = len(images)
    captioned = [i for i in range(n) if captions[i] is not None and captions[i].split()]
    t2i = []
    for q in captioned:
        scores = [ref_dot(texts[q], images[j]) for j in range(n)]
        relevant = [ref_same_caption(captions[q], captions[j]) for j in range(n)]
        t2i.append(ref_rank(scores, relevant))
    i2t = []
    for q in captioned:
        scores = [ref_dot(images[q], texts[j]) for j in captioned]
        relevant = [ref_same_caption(captions[q], captions[j]) for j in captioned]
        i2t.append(ref_rank(scores, relevant))
    return {"text_to_image": ref_summary(t2i), "image_to_text": ref_summary(i2t)}


def ref_in_batch(images, texts, captions, batch_size, ks=(1, 3, 5, 10, 20)) -> dict:
    reciprocal = {k: [] for k in ks}
    for start in range(0, len(images), batch_size):
        batch = list(range(start, min(start + batch_size, len(images))))
        for q in batch:
            scores = [ref_dot(images[q], texts[j]) for j in batch]
            relevant = [ref_same_caption(captions[q], captions[j]) or q == j for j in batch]
            rank = ref_rank(scores, relevant)
            for k in ks:
                reciprocal[k].append(1.0 / rank if rank <= k else 0.0)
    out: dict = {"batch_size": batch_size}
    for k in ks:
        out[f"mrr@{k}"] = sum(reciprocal[k]) / len(reciprocal[k])
    return out


def ref_queries(query_vectors, images, image_ids, relevances, k=10):
    ndcgs, recalls = [], []
    for vector, relevance in zip(query_vectors, relevances, strict=True):
        grades = [max(0.0, float(relevance.get(i, 0))) for i in image_ids]
        n_relevant = sum(1 for g in grades if g > 0)
        if n_relevant == 0:
            continue
        scores = [ref_dot(vector, image) for image in images]
        order = sorted(range(len(images)), key=lambda j: (-scores[j], grades[j], j))[:k]
        dcg = sum((2 ** grades[j] - 1) / math.log2(p + 2) for p, j in enumerate(order))
        ideal = sorted(grades, reverse=True)[:k]
        idcg = sum((2**g - 1) / math.log2(p + 2) for p, g in enumerate(ideal))
        ndcgs.append(dcg / idcg)
        recalls.append(sum(1 for j in order if grades[j] > 0) / min(n_relevant, k))
    if not ndcgs:
        return None
    return {f"ndcg@{k}": sum(ndcgs) / len(ndcgs), f"r@{k}": sum(recalls) / len(recalls)}


def assert_close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_close(actual[key], value)
        else:
            assert actual[key] == pytest.approx(value, abs=1e-12), key


def tie_heavy_case(seed: int, n: int, dim: int = 3, captionless: float = 0.2):
    """Small-integer vectors (exact arithmetic, many ties) and captions with duplicates."""
    rng = random.Random(seed)
    images = [[float(rng.choice((-1, 0, 1))) for _ in range(dim)] for _ in range(n)]
    captions = []
    for _ in range(n):
        if rng.random() < captionless:
            captions.append(None)
        else:
            captions.append(rng.choice(["a b", "a  b", "c", "d e", "f", "g", "h i j", "k", "l"]))
    texts = {
        i: [float(rng.choice((-1, 0, 1, 2))) for _ in range(dim)]
        for i in range(n)
        if captions[i] is not None
    }
    return images, texts, captions


def text_rows(texts: dict[int, list[float]], dim: int) -> np.ndarray:
    return np.array([texts[i] for i in sorted(texts)], dtype=np.float64).reshape(-1, dim)


# --- hand-computed cases -------------------------------------------------------------------------


def test_given_three_pairs_when_full_pool_then_hand_computed_ranks() -> None:
    # Given images i0=(1,0) i1=(0,1) i2=(.5,1) and texts t0=(1,0) t1=(.5,1) t2=(0,1)
    images = np.array([[1, 0], [0, 1], [0.5, 1]], dtype=np.float64)
    texts = np.array([[1, 0], [0.5, 1], [0, 1]], dtype=np.float64)
    # When
    result = full_pool_metrics(images, texts, ["a", "b", "c"])
    # Then t0 finds i0 first; t1 scores i1=1 < i2=1.25 → rank 2; t2 scores i2=1 = i1=1 → tie
    # counts against → rank 2. Ranks [1, 2, 2].
    expected = {"r@1": 1 / 3, "r@5": 1.0, "r@10": 1.0, "mrr@10": 2 / 3, "median_rank": 2.0}
    assert_close(result["text_to_image"], expected)
    # image→text: i0 → t0 first; i1 → t1=1, t2=1 (tie) → 2; i2 → t2=1 < t1=1.25 → 2.
    assert_close(result["image_to_text"], expected)


def test_given_a_single_item_when_scored_then_everything_is_perfect() -> None:
    result = full_pool_metrics(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]]), ["only"])
    perfect = {"r@1": 1.0, "r@5": 1.0, "r@10": 1.0, "mrr@10": 1.0, "median_rank": 1.0}
    assert_close(result, {"text_to_image": perfect, "image_to_text": perfect})
    assert in_batch_mrr(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]]))["mrr@1"] == 1.0


def test_given_a_collapsed_model_when_everything_ties_then_every_rank_is_the_worst() -> None:
    # Given every vector identical (a model that learned nothing) and 5 distinct captions
    images = np.ones((5, 4))
    texts = np.ones((5, 4))
    # When
    result = full_pool_metrics(images, texts, list("abcde"))
    # Then each relevant item loses all four ties: rank 5, never a lucky 1
    assert result["text_to_image"]["median_rank"] == 5.0
    assert result["text_to_image"]["r@1"] == 0.0
    assert result["text_to_image"]["r@5"] == 1.0  # k equal to the pool
    assert result["image_to_text"]["mrr@10"] == pytest.approx(0.2)


def test_given_k_larger_than_the_pool_when_scored_then_every_query_hits() -> None:
    ranks = first_relevant_ranks(np.array([[0.1, 0.9, 0.5]]), np.array([[True, False, False]]))
    assert ranks.tolist() == [3]
    summary = rank_metrics(ranks, ks=(1, 10, 1000), mrr_k=1000)
    assert summary == {
        "r@1": 0.0,
        "r@10": 1.0,
        "r@1000": 1.0,
        "mrr@1000": 1 / 3,
        "median_rank": 3.0,
    }


def test_given_captionless_items_when_full_pool_then_they_are_image_distractors_only() -> None:
    # Given item 1 has no caption, but its image is the best match for t0
    images = np.array([[1, 0], [2, 0], [0, 1]], dtype=np.float64)
    texts = np.array([[1, 0], [0, 1]], dtype=np.float64)  # for items 0 and 2
    # When
    result = full_pool_metrics(images, texts, ["a", None, "c"])
    # Then text→image: t0 ranks i1 (2) above i0 (1) → rank 2; t2 → i2 rank 1
    assert result["text_to_image"]["median_rank"] == 1.5
    assert result["text_to_image"]["r@1"] == 0.5
    # image→text: only i0 and i2 ask, only t0 and t2 answer: both rank 1
    assert result["image_to_text"]["r@1"] == 1.0


def test_given_identical_captions_when_scored_then_either_copy_counts() -> None:
    # Given two items share a caption (so their texts are the same vector)
    images = np.array([[1, 0], [0, 1]], dtype=np.float64)
    texts = np.array([[1, 1], [1, 1]], dtype=np.float64)
    result = full_pool_metrics(images, texts, ["same  caption", "same caption"])
    # Then ties between equal texts are not a loss: every query finds a relevant item first
    assert result["text_to_image"]["r@1"] == 1.0
    assert result["image_to_text"]["r@1"] == 1.0
    assert caption_groups(["x y", " x  y ", None, "", "z"]).tolist() == [0, 0, -1, -1, 1]


def test_given_batch_size_two_when_in_batch_then_last_small_batch_counts_per_item() -> None:
    # Given 3 pairs in batches [0, 1] and [2]; in the first batch image 0 prefers text 1
    images = np.array([[0, 1], [0, 1], [1, 0]], dtype=np.float64)
    texts = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float64)
    # When
    result = in_batch_mrr(images, texts, batch_size=2, ks=(1, 3))
    # Then ranks are [2, 1, 1] (item 2 alone in its batch): mrr@1 = 2/3, mrr@3 = 2.5/3
    assert result == {
        "batch_size": 2,
        "mrr@1": pytest.approx(2 / 3),
        "mrr@3": pytest.approx(2.5 / 3),
    }


def test_given_graded_judgments_when_query_metrics_then_hand_computed_ndcg() -> None:
    # Given scores i0=.9, i1=.5, i2=.7 and grades i1=2, i2=1: the ranking is i0, i2, i1
    images = np.array([[0.9], [0.5], [0.7]])
    query = np.array([[1.0]])
    relevance = [{"i1": 2, "i2": 1, "elsewhere": 3}]
    # When
    result = query_metrics(query, images, ["i0", "i1", "i2"], relevance)
    # Then DCG = 1/log2(3) + 3/2; ideal = 3 + 1/log2(3) ("elsewhere" is not in the pool)
    dcg = 1 / math.log2(3) + 3 / 2
    idcg = 3 + 1 / math.log2(3)
    assert result == {"ndcg@10": pytest.approx(dcg / idcg), "r@10": 1.0}
    # And at k=1 neither relevant image is in the top: R@1 = 0 of min(2, 1)
    assert query_metrics(query, images, ["i0", "i1", "i2"], relevance, k=1) == {
        "ndcg@1": 0.0,
        "r@1": 0.0,
    }


def test_given_queries_without_relevant_images_here_when_scored_then_skipped() -> None:
    images = np.eye(2)
    queries = np.eye(2)
    both = query_metrics(queries, images, ["a", "b"], [{"a": 1}, {"zz": 1}])
    assert both == {"ndcg@10": 1.0, "r@10": 1.0}
    assert query_metrics(queries, images, ["a", "b"], [{"zz": 1}, {"b": 0}]) is None


def test_given_a_tie_with_a_relevant_image_when_query_ranked_then_it_goes_last() -> None:
    images = np.array([[1.0], [1.0]])
    result = query_metrics(np.array([[1.0]]), images, ["rel", "other"], [{"rel": 1}], k=1)
    assert result == {"ndcg@1": 0.0, "r@1": 0.0}


def test_given_mismatched_inputs_when_scored_then_clear_errors() -> None:
    with pytest.raises(ValueError, match="text vectors"):
        full_pool_metrics(np.eye(2), np.eye(2)[:1], ["a", "b"])
    with pytest.raises(ValueError, match="no captioned"):
        full_pool_metrics(np.eye(2), np.zeros((0, 2)), [None, None])
    with pytest.raises(ValueError, match="relevant"):
        first_relevant_ranks(np.zeros((1, 2)), np.zeros((1, 2), dtype=bool))


# --- against the reference -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_given_tie_heavy_pools_when_full_pool_then_matches_reference(seed: int) -> None:
    # Given small-integer vectors (exact scores, many ties), duplicate and missing captions
    n = [1, 2, 3, 7, 20, 45][seed % 6]
    images, texts, captions = tie_heavy_case(seed, n)
    if not texts:
        captions[0], texts[0] = "a b", [1.0, 0.0, 0.0]
    # When / Then
    actual = full_pool_metrics(np.array(images), text_rows(texts, 3), captions)
    assert_close(actual, ref_full_pool(images, texts, captions))


@pytest.mark.parametrize(("n", "batch_size"), [(1, 64), (63, 64), (64, 64), (130, 64), (9, 4)])
def test_given_batches_with_a_short_tail_when_in_batch_then_matches_reference(
    n: int, batch_size: int
) -> None:
    # Given n captioned pairs (130 = two full batches of 64 and a tail of 2)
    rng = random.Random(n)
    images = [[float(rng.choice((-1, 0, 1))) for _ in range(3)] for _ in range(n)]
    texts = [[float(rng.choice((-1, 0, 1))) for _ in range(3)] for _ in range(n)]
    captions = [rng.choice(["x", "y", "z w", "v", "u", "t", "s"]) for _ in range(n)]
    # When
    actual = in_batch_mrr(
        np.array(images), np.array(texts), caption_groups(captions), batch_size=batch_size
    )
    # Then
    assert_close(actual, ref_in_batch(images, texts, captions, batch_size))


def test_given_random_unit_vectors_when_full_pool_then_matches_reference() -> None:
    # Given continuous scores (no ties), 150 items, duplicate and missing captions
    rng = np.random.default_rng(3)
    images = rng.normal(size=(150, 8))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts_all = images + 0.8 * rng.normal(size=images.shape)
    captions = [None if i % 7 == 0 else f"caption {i % 60}" for i in range(150)]
    texts = {i: texts_all[i].tolist() for i in range(150) if captions[i] is not None}
    actual = full_pool_metrics(images, text_rows(texts, 8), captions)
    assert_close(actual, ref_full_pool(images.tolist(), texts, captions))


@pytest.mark.parametrize("seed", range(6))
def test_given_graded_query_sets_when_scored_then_matches_reference(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([1, 4, 15, 30])
    images = [[float(rng.choice((-1, 0, 1))) for _ in range(3)] for _ in range(n)]
    ids = [f"img{i}" for i in range(n)]
    queries, relevances = [], []
    for _ in range(8):
        queries.append([float(rng.choice((-1, 0, 1, 2))) for _ in range(3)])
        pool = [*ids, "outside1", "outside2"]
        relevances.append({i: rng.choice([0, 1, 1, 2, 3]) for i in rng.sample(pool, min(4, n))})
    actual = query_metrics(np.array(queries), np.array(images), ids, relevances)
    expected = ref_queries(queries, images, ids, relevances)
    if expected is None:
        assert actual is None
    else:
        assert_close(actual, expected)


# --- evaluate_model, the summary files and the command -------------------------------------------


ISSUE_KEYS = {"model", "split", "n", "in_batch", "text_to_image", "image_to_text"}


class OracleEncoder:
    """A torch-free encoder that understands the test corpus exactly.

    Image k is a flat colour with red = 20*k; caption "finding k" names it. Both map to basis
    vector k, so full-pool retrieval is perfect unless the plumbing mixes rows up. Other texts
    (queries) map to the basis vector of the first digit they contain.
    """

    dim = 16
    model_id = "oracle"
    name = "oracle"

    def encode_texts(self, texts, batch_size: int = 64) -> np.ndarray:
        rows = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            digits = [int(word) for word in text.split() if word.isdigit()]
            rows[i, digits[0] if digits else 15] = 1.0
        return rows

    def encode_images(self, images, batch_size: int = 32) -> np.ndarray:
        rows = np.zeros((len(images), self.dim), dtype=np.float32)
        for i, image in enumerate(images):
            rows[i, image.convert("RGB").getpixel((0, 0))[0] // 20] = 1.0
        return rows


def oracle_records(folder, n: int, captionless: set[int] = frozenset(), bad: bool = False):
    from PIL import Image

    from medsearch.data.manifest import Record

    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for k in range(n):
        path = folder / f"img{k}.png"
        Image.new("RGB", (8, 8), (20 * k, 0, 0)).save(path)
        caption = None if k in captionless else f"finding {k}"
        records.append(Record(f"img{k}", str(path), caption, "test"))
    if bad:
        (folder / "empty.png").write_bytes(b"")
        records.insert(1, Record("broken", str(folder / "empty.png"), "finding 0", "test"))
    return records


def test_given_an_exact_encoder_when_evaluate_model_then_the_issue_shape_and_perfect_scores(
    tmp_path,
) -> None:
    from medsearch.data.manifest import BadRecord
    from medsearch.evaluate import evaluate_model

    # Given 6 items, one captionless, one unreadable image, and a small in-batch size
    records = oracle_records(tmp_path, 6, captionless={4}, bad=True)
    bad: list[BadRecord] = []
    # When
    report = evaluate_model(OracleEncoder(), records, batch_size=4, bad=bad)
    # Then exactly the report's documented keys (no "queries" without a query set)
    assert set(report) == ISSUE_KEYS
    assert report["model"] == "oracle" and report["split"] == "test" and report["n"] == 6
    assert set(report["in_batch"]) == {"batch_size", "mrr@1", "mrr@3", "mrr@5", "mrr@10", "mrr@20"}
    assert report["in_batch"]["batch_size"] == 4 and report["in_batch"]["mrr@1"] == 1.0
    perfect = {"r@1": 1.0, "r@5": 1.0, "r@10": 1.0, "mrr@10": 1.0, "median_rank": 1.0}
    assert report["text_to_image"] == perfect
    assert report["image_to_text"] == perfect
    assert [b.image_id for b in bad] == ["broken"]


def test_given_a_query_set_when_evaluate_model_then_queries_are_scored_within_the_split(
    tmp_path,
) -> None:
    from types import SimpleNamespace

    from medsearch.evaluate import evaluate_model

    records = oracle_records(tmp_path, 5)
    queries = [
        SimpleNamespace(query="show 2", relevance={"img2": 2, "img-other-split": 3}),
        SimpleNamespace(query="show 3", relevance={"img1": 1}),  # ranks img3 first: a miss
        SimpleNamespace(query="show 9", relevance={"not-here": 1}),  # skipped
    ]
    report = evaluate_model(OracleEncoder(), records, queries=queries)
    # img1 comes after img3 and the three zero-score images tie; ties put it last → rank 5
    ndcg_second = (1 / math.log2(6)) / 1.0
    assert report["queries"]["ndcg@10"] == pytest.approx((1.0 + ndcg_second) / 2, abs=1e-6)
    assert report["queries"]["r@10"] == 1.0


def test_given_a_swapped_encoder_when_evaluated_then_scores_drop(tmp_path) -> None:
    from medsearch.evaluate import evaluate_model

    class Shifted(OracleEncoder):
        def encode_texts(self, texts, batch_size: int = 64) -> np.ndarray:
            return np.roll(super().encode_texts(texts), 1, axis=1)

    report = evaluate_model(Shifted(), oracle_records(tmp_path, 5))
    assert report["text_to_image"]["r@1"] < 1.0
    assert report["in_batch"]["mrr@1"] < 1.0


def test_given_no_readable_or_captioned_images_when_evaluated_then_clear_errors(
    tmp_path,
) -> None:
    from medsearch.errors import InvalidInputError
    from medsearch.evaluate import evaluate_model

    with pytest.raises(InvalidInputError, match="captioned"):
        evaluate_model(OracleEncoder(), oracle_records(tmp_path, 3, captionless={0, 1, 2}))
    broken = oracle_records(tmp_path, 0, bad=True)
    with pytest.raises(InvalidInputError, match="readable"):
        evaluate_model(OracleEncoder(), broken)


def test_given_a_report_when_summarised_then_html_and_png_are_written(tmp_path) -> None:
    from medsearch.evaluate import evaluate_model
    from medsearch.report import write_summary

    report = evaluate_model(OracleEncoder(), oracle_records(tmp_path / "img", 4))
    written = write_summary(report, tmp_path / "report.json")
    assert [p.name for p in written] == ["report.html", "report.png"]
    page = (tmp_path / "report.html").read_text()
    assert "Full pool text→image" in page and "<table>" in page and "median_rank" in page
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_given_blocked_torch_when_evaluate_imported_then_it_loads(python_without) -> None:
    code = (
        "import medsearch.evaluate, medsearch.report, medsearch.vectorize\n"
        # The block must really hold, or this test could not fail.
        "try:\n    import torch\nexcept ImportError:\n    pass\n"
        "else:\n    raise SystemExit('torch was not blocked')\n"
    )
    result = python_without({"torch", "transformers"}, code)
    assert result.returncode == 0, result.stderr


def test_given_the_tiny_model_when_evaluate_command_runs_then_report_files_appear(
    tmp_path, tiny_model_dir, capsys
) -> None:
    import json

    from medsearch.cli import main
    from medsearch.data.manifest import write_manifest

    # Given a manifest with a test split (one unreadable image) and a query set beside it
    records = oracle_records(tmp_path / "images", 5, captionless={3}, bad=True)
    manifest = tmp_path / "manifest.jsonl"
    write_manifest(manifest, records)
    (tmp_path / "queries.jsonl").write_text(json.dumps({"query": "finding", "relevant": ["img2"]}))
    out = tmp_path / "out" / "report.json"
    # When
    command = ["evaluate", "--model", str(tiny_model_dir), "--data", str(manifest)]
    code = main([*command, "--split", "test", "--out", str(out)])
    # Then
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report) == {*ISSUE_KEYS, "queries"}
    assert report["n"] == 5 and report["split"] == "test"
    assert 1.0 <= report["text_to_image"]["median_rank"] <= 5.0
    assert (out.parent / "report.html").exists() and (out.parent / "report.png").exists()
    bad_lines = (out.parent / "report.bad_records.jsonl").read_text().splitlines()
    assert [json.loads(line)["image_id"] for line in bad_lines] == ["broken"]
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable" in printed
    # and counts print as integers, rates to 4 places
    in_batch = next(line for line in printed.splitlines() if line.startswith("in-batch"))
    assert (
        re.search(r"batch_size \d+(  |$)", in_batch)
        and ".0000" not in in_batch.split("batch_size")[1][:8]
    )
    # And a run where every image reads leaves no bad-records file (nor an earlier one)
    write_manifest(manifest, [r for r in records if r.image_id != "broken"])
    assert main([*command, "--split", "test", "--out", str(out)]) == 0
    assert not (out.parent / "report.bad_records.jsonl").exists()
    # And an empty split is a one-line user error, not a traceback
    assert main([*command, "--split", "validation", "--out", str(out)]) == 2
