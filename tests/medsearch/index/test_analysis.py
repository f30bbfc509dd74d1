"""The caption analysis: one definition of terms, an OpenSearch definition free of tantivy, and
the BM25 scale of each OpenSearch version (the node's own analysis: test_analysis_live.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medsearch.errors import SearchIndexError
from medsearch.index.analysis import (
    ANALYZER_NAME,
    LEGACY_BM25_FACTOR,
    OPENSEARCH_ANALYSIS,
    STOP_WORDS,
    TOKEN_SEPARATOR_PATTERN,
    analyze,
    bm25_scale_for_version,
    highlight_spans,
    word_terms,
)


def test_given_caption_when_analyzed_then_stop_words_and_possessive_go_and_stems_stay() -> None:
    assert analyze("The patient's lungs are opacified") == ["patient", "lung", "opacifi"]


def test_given_no_tantivy_when_opensearch_analysis_imported_then_it_loads() -> None:
    # Given: an interpreter where tantivy cannot be imported (the index loader Lambda ships none)
    script = (
        "import sys\n"
        "sys.modules['tantivy'] = None\n"
        "from medsearch.index.analysis import ANALYZER_NAME, OPENSEARCH_ANALYSIS\n"
        "print(ANALYZER_NAME, sorted(OPENSEARCH_ANALYSIS))\n"
    )
    # When: the OpenSearch analysis definition is imported
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    # Then: it loads and is the same definition
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [ANALYZER_NAME, *str(sorted(OPENSEARCH_ANALYSIS)).split()]


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("caption:femur", ["caption", "femur"]),  # no field syntax, on any engine
        ("HSV-1 encephalitis", ["hsv", "1", "enceph"]),
        ("a 3.5cm mass", ["3", "5cm", "mass"]),
        ("T2-weighted", ["t2", "weight"]),
        ("C5-C6 disc", ["c5", "c6", "disc"]),
        ('Takayasu"s arteritis', ["takayasu", "arter"]),
        ("the patient’s lungs", ["patient", "lung"]),
        ("x" * 300 + " femur", ["femur"]),  # tokens of 255 bytes or more are dropped
    ],
)
def test_given_punctuation_inside_words_when_analyzed_then_every_engine_splits_there(
    text: str, terms: list[str]
) -> None:
    assert analyze(text) == terms


def test_given_opensearch_analysis_then_it_splits_like_tantivy_and_keeps_its_stop_words() -> None:
    tokenizer = OPENSEARCH_ANALYSIS["analyzer"][ANALYZER_NAME]["tokenizer"]
    assert OPENSEARCH_ANALYSIS["tokenizer"][tokenizer] == {
        "type": "pattern",
        "pattern": TOKEN_SEPARATOR_PATTERN,
    }
    stop = OPENSEARCH_ANALYSIS["filter"]["medsearch_stop"]["stopwords"]
    assert set(stop) == set(STOP_WORDS) and "s" in stop


@pytest.mark.parametrize(
    ("number", "distribution"),
    [("2.19.1", "opensearch"), ("1.3.20", "opensearch"), ("7.10.2", None)],
)
def test_given_a_cluster_before_opensearch_3_then_scores_carry_the_legacy_factor(
    number: str, distribution: str | None
) -> None:
    # 7.10.2 without a distribution: OpenSearch 1.x-2.x in compatibility mode, or Elasticsearch 7
    assert bm25_scale_for_version(number, distribution) == LEGACY_BM25_FACTOR == 2.2


@pytest.mark.parametrize(("number", "distribution"), [("3.0.0", "opensearch"), ("8.15.0", None)])
def test_given_opensearch_3_then_scores_are_bm25similarity(
    number: str, distribution: str | None
) -> None:
    assert bm25_scale_for_version(number, distribution) == 1.0


def test_given_no_version_number_then_the_error_says_so() -> None:
    with pytest.raises(SearchIndexError, match="not an OpenSearch version"):
        bm25_scale_for_version("serverless")


def test_given_query_terms_when_highlighting_then_spans_mark_words_of_the_same_stem_only() -> None:
    # Given a caption with an inflected form, a stop word and a word that only contains a query
    # word — When highlighted for "tumour of the liver" — Then the spans are those of BM25's
    # matches: "tumours" (stem tumour) and both "liver"s, not "the" and not "livermore".
    caption = "Enhancing tumours in the liver; Livermore sign; LIVER."
    spans = highlight_spans(caption, word_terms("tumour of the liver"))
    assert [caption[start:end] for start, end in spans] == ["tumours", "liver", "LIVER"]
    assert spans[0] == (10, 17)


def test_given_a_caption_with_astral_characters_then_spans_count_code_points() -> None:
    caption = "\U0001f600 femur fracture"
    assert highlight_spans(caption, word_terms("fractures")) == [(8, 16)]


def test_given_only_stop_words_when_highlighting_then_nothing_is_marked() -> None:
    assert word_terms("the of and") == frozenset()
    assert highlight_spans("the femur of the patient", word_terms("the of")) == []


@pytest.mark.parametrize(
    "text",
    [
        "Enhancing tumours in the liver",
        "HSV-1 encephalitis, T2-weighted C5-C6 3.5cm",
        "the patient’s lungs are opacified; consolidation and effusions",
        "Takayasu's arteritis; metastases generously running",
    ],
)
def test_given_no_tantivy_when_terms_are_taken_then_they_are_tantivys(text: str) -> None:
    # Given an interpreter without tantivy (the search API Lambda) — When a text's terms are
    # taken word by word — Then they are the terms tantivy's analyzer gives the whole text.
    script = (
        "import sys, json\n"
        "sys.modules['tantivy'] = None\n"
        "from medsearch.index.analysis import word_terms\n"
        f"print(json.dumps(sorted(word_terms({text!r}))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == sorted(set(analyze(text)))
