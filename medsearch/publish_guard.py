"""The publish guard: a new index may not silently replace a live one with far fewer documents.

Every way an index goes live shares this one check: ``medsearch index`` (an embedded folder
rebuilt in place), ``medsearch load`` (an OpenSearch alias swapped to a new run index) and the
index loader's publish step (the pipeline's). An empty manifest, or one cut short upstream, would
otherwise publish an empty or half index, and the search would go on answering, from a fraction
of the corpus, with no error anywhere. The check compares the new index's document count with the
live one's (for an alias: the documents of the indexes it points at now):

- a new index without documents is refused unless ``allow_empty`` is given (which also allows
  it to replace a live index of any size);
- a new index with more than ``max_drop`` (a share) fewer documents than the live one is refused
  unless ``force`` is given (removing part of a corpus on purpose).

The module imports nothing heavy, so the loader Lambda uses it as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from medsearch.errors import InvalidInputError

# The share of the live index's documents a new index may lack without --force.
DEFAULT_MAX_DROP = 0.1


@dataclass(frozen=True)
class PublishGuardConfig:
    """How much a new index may shrink the live one (``max_drop``: a share in [0, 1])."""

    max_drop: float = DEFAULT_MAX_DROP
    allow_empty: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.max_drop, int | float) and 0.0 <= self.max_drop <= 1.0):
            raise InvalidInputError(f"max drop must be a share in [0, 1], got {self.max_drop!r}")


def check_publish(
    live: int | None,
    new: int,
    config: PublishGuardConfig,
    *,
    what: str,
    flags: tuple[str, str] = ("--allow-empty", "--force"),
) -> None:
    """Raise unless an index of ``new`` documents may replace ``what`` holding ``live`` (None:
    there is no live index). ``flags`` name the overrides in the message (empty, shrink)."""
    empty_flag, force_flag = flags
    if new == 0:
        if config.allow_empty:
            return  # emptying an index on purpose: the drop is the point
        held = f"{what} ({live} documents)" if live else what
        raise InvalidInputError(
            f"the new index would hold no documents: refusing to publish it as {held}; "
            f"give {empty_flag} to publish an empty index"
        )
    if config.force or not live:
        return
    # The share is a decimal the user wrote (0.29): 0.29 * 100 is 28.999999999999996 in floats,
    # so the product is rounded before the whole documents it allows are counted.
    allowed = math.floor(round(live * config.max_drop, 9))
    if live - new > allowed:
        raise InvalidInputError(
            f"the new index would hold {new} documents, {what} holds {live}: "
            f"{live - new} fewer, more than {config.max_drop:.0%} of them; not published "
            f"(give {force_flag} to publish it anyway)"
        )
