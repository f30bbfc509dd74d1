"""Properties of the search service's query checks (medsearch.search.validate_query and kin).

The API's OpenAPI schema states the query rule as ``QUERY_PATTERN`` with ``maxLength``; the
service enforces it in code. For any text the two agree, so a client that follows the schema is
never refused and what the schema forbids is never searched.
"""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from medsearch.errors import InvalidInputError
from medsearch.index.base import MAX_K
from medsearch.search import (
    MAX_OFFSET,
    MAX_QUERY_CHARS,
    QUERY_PATTERN,
    validate_alpha,
    validate_k,
    validate_offset,
    validate_query,
)

SCHEMA = re.compile(QUERY_PATTERN)
# Any code point (surrogates included: a JSON body may carry lone ones as \ud800 escapes).
ANY_TEXT = st.text(
    st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)),
    max_size=600,
)
CONTROLS = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in ("Cc", "Cs")]
REFUSED_CONTROLS = [c for c in CONTROLS if c not in "\t\n\r"]


def schema_accepts(q: str) -> bool:
    """What the schema allows; lone surrogates (no JSON Schema pattern can name them portably)
    are refused by the service alone."""
    surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in q)
    return len(q) <= MAX_QUERY_CHARS and SCHEMA.search(q) is not None and not surrogate


def accepted(q: str) -> str | None:
    try:
        return validate_query(q)
    except InvalidInputError:
        return None


@settings(deadline=None, max_examples=300)
@given(q=ANY_TEXT)
@example(q="\u2028")  # a line separator alone: whitespace, so empty
@example(q="\u200b")  # a zero-width space is not whitespace: a query
@example(q="a\n")  # $ may match before a final newline
@example(q="\x85x")  # NEL is a C1 control
@example(q="x\ud800")  # a lone surrogate
@example(q=" " * MAX_QUERY_CHARS + "x")
def test_given_any_text_when_validated_then_accepted_exactly_when_the_schema_allows_it(
    q: str,
) -> None:
    assert (accepted(q) is not None) == schema_accepts(q)


@settings(deadline=None, max_examples=300)
@given(q=ANY_TEXT)
def test_given_an_accepted_query_then_it_is_stripped_non_empty_control_free_and_stable(
    q: str,
) -> None:
    text = accepted(q)
    if text is None:
        return
    assert text and text == text.strip() and len(text) <= MAX_QUERY_CHARS
    assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in text)
    assert validate_query(text) == text


@settings(deadline=None)
@given(
    head=st.text(max_size=20),
    control=st.sampled_from(REFUSED_CONTROLS),
    tail=st.text(max_size=20),
)
def test_given_a_control_character_anywhere_when_validated_then_refused_naming_it(
    head: str, control: str, tail: str
) -> None:
    with pytest.raises(InvalidInputError, match=f"U\\+{ord(control):04X}|control character"):
        validate_query(head + control + tail + "x")


@given(value=st.one_of(st.integers(-5, MAX_K + 5), st.booleans(), st.floats(), st.text()))
def test_given_any_k_when_validated_then_only_integers_1_to_max_k(value: object) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_K
    if ok:
        assert validate_k(value) == value
    else:
        with pytest.raises(InvalidInputError):
            validate_k(value)


@given(value=st.one_of(st.integers(-5, MAX_OFFSET + 5), st.booleans(), st.floats()))
def test_given_any_offset_when_validated_then_only_integers_0_to_max_offset(value: object) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_OFFSET
    if ok:
        assert validate_offset(value) == value
    else:
        with pytest.raises(InvalidInputError):
            validate_offset(value)


@given(value=st.one_of(st.floats(), st.integers(-3, 3), st.booleans()))
def test_given_any_alpha_when_validated_then_only_finite_numbers_0_to_1(value: object) -> None:
    ok = not isinstance(value, bool) and value == value and 0 <= value <= 1  # type: ignore[operator]
    if ok:
        assert validate_alpha(value) == float(value)  # type: ignore[arg-type]
    else:
        with pytest.raises(InvalidInputError):
            validate_alpha(value)
