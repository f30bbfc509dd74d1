"""The publish guard (medsearch.publish_guard): which replacements of a live index it refuses."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from medsearch.errors import InvalidInputError
from medsearch.publish_guard import PublishGuardConfig, check_publish


def refused(live: int | None, new: int, config: PublishGuardConfig) -> bool:
    try:
        check_publish(live, new, config, what="the live index")
    except InvalidInputError:
        return True
    return False


@given(
    live=st.one_of(st.none(), st.integers(0, 10_000)),
    new=st.integers(0, 10_000),
    percent=st.integers(0, 100),
    allow_empty=st.booleans(),
    force=st.booleans(),
)
@example(live=100, new=71, percent=29, allow_empty=False, force=False)  # 0.29 * 100 < 29 in floats
@example(live=10, new=7, percent=30, allow_empty=False, force=False)
@example(live=3, new=2, percent=10, allow_empty=False, force=False)
def test_given_any_counts_and_a_share_in_percent_then_refused_exactly_as_the_rule_says(
    live: int | None, new: int, percent: int, allow_empty: bool, force: bool
) -> None:
    # A share given in percent is the user's decimal: a drop of exactly that share is allowed.
    config = PublishGuardConfig(max_drop=percent / 100, allow_empty=allow_empty, force=force)
    if new == 0:
        expected = not allow_empty
    else:
        expected = not force and bool(live) and (live - new) * 100 > live * percent  # type: ignore[operator]
    assert refused(live, new, config) == expected


@pytest.mark.parametrize("share", [-0.01, 1.01, float("nan"), float("inf")])
def test_given_a_share_outside_0_1_when_configured_then_refused(share: float) -> None:
    with pytest.raises(InvalidInputError, match="max drop must be a share in"):
        PublishGuardConfig(max_drop=share)


def test_given_a_refusal_then_the_message_names_the_counts_and_the_override() -> None:
    with pytest.raises(InvalidInputError) as info:
        check_publish(10, 5, PublishGuardConfig(), what="alias ms")
    assert str(info.value) == (
        "the new index would hold 5 documents, alias ms holds 10: 5 fewer, more than 10% of "
        "them; not published (give --force to publish it anyway)"
    )
