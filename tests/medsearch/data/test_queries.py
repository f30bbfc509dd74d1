"""Query sets: the queries.jsonl format, its errors, and finding it beside a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsearch import storage
from medsearch.data.queries import (
    Query,
    parse_query,
    queries_beside,
    queries_path_beside,
    read_queries,
)
from medsearch.errors import InvalidInputError


def write_lines(path: Path, lines: list[object]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n", encoding="utf-8")
    return path


def test_given_relevant_list_when_read_then_each_has_grade_one(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "q.jsonl", [{"query": " lung nodule ", "relevant": ["a", "b"]}])
    assert read_queries(path) == [Query("lung nodule", {"a": 1, "b": 1})]


def test_given_both_keys_when_read_then_grades_win_and_list_adds_grade_one() -> None:
    query = parse_query({"query": "q", "relevant": ["a", "b"], "relevance": {"a": 2, "c": 0}})
    assert dict(query.relevance) == {"a": 2, "b": 1}
    assert query.relevant == ["a", "b"]


def test_given_graded_judgments_when_listed_then_most_relevant_first() -> None:
    query = parse_query({"query": "q", "relevance": {"x": 1, "y": 2, "z": 2.0}})
    assert query.relevant == ["y", "z", "x"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ([1, 2], "JSON object"),
        ({"relevant": ["a"]}, "'query' must be a non-empty string"),
        ({"query": "  ", "relevant": ["a"]}, "non-empty"),
        ({"query": "q"}, "needs 'relevant'"),
        ({"query": "q", "relevant": "a"}, "must be a list"),
        ({"query": "q", "relevant": ["bad id!"]}, "invalid image_id"),
        ({"query": "q", "relevance": ["a"]}, "must be an object"),
        ({"query": "q", "relevance": {"a": "high"}}, "non-negative integer"),
        ({"query": "q", "relevance": {"a": -1}}, "non-negative integer"),
        ({"query": "q", "relevance": {"a": True}}, "non-negative integer"),
    ],
)
def test_given_malformed_line_when_read_then_error_names_file_line_and_problem(
    tmp_path: Path, line: object, message: str
) -> None:
    path = write_lines(tmp_path / "q.jsonl", [{"query": "ok", "relevant": ["a"]}, line])
    with pytest.raises(InvalidInputError, match=r"q\.jsonl:2: ") as info:
        read_queries(path)
    assert message in str(info.value)


def test_given_invalid_json_when_read_then_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"query": "a", "relevant": ["x"]}\n{"query": \n', encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"q\.jsonl:2: not valid JSON"):
        read_queries(path)


def test_given_manifest_with_and_without_queries_when_looked_up_then_read_or_none(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("", encoding="utf-8")
    assert queries_beside(manifest) is None
    write_lines(tmp_path / "queries.jsonl", [{"query": "q", "relevant": ["a"]}])
    assert queries_path_beside(manifest) == str(tmp_path / "queries.jsonl")
    assert queries_beside(manifest) == [Query("q", {"a": 1})]


def test_given_s3_manifest_when_looked_up_then_queries_read_or_none(s3_bucket: str) -> None:
    manifest = f"s3://{s3_bucket}/run/manifest.jsonl"
    assert queries_beside(manifest) is None
    storage.write_text(f"s3://{s3_bucket}/run/queries.jsonl", '{"query": "q", "relevant": ["a"]}\n')
    assert queries_beside(manifest) == [Query("q", {"a": 1})]


def test_given_medpix_query_set_when_read_then_602_queries_with_known_images(
    medpix_dir: Path,
) -> None:
    from medsearch.data.manifest import read_manifest

    queries = queries_beside(medpix_dir / "manifest.jsonl")
    assert queries is not None and len(queries) == 602
    ids = {r.image_id for r in read_manifest(medpix_dir / "manifest.jsonl")}
    assert all(q.relevance and set(q.relevance) <= ids for q in queries)
