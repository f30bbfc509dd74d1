"""Properties of manifest parsing: records written as JSON Lines or CSV read back equal.

Captions and metadata are arbitrary Unicode (no NUL, which the reader refuses, and no surrogates,
which UTF-8 cannot hold); CSV fields carry no line breaks (the reader refuses those: a caption
with line breaks goes in JSON Lines). Captions are drawn as the reader keeps them: stripped,
under the size limit, ``None`` for none.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from medsearch.data.manifest import (
    CAPTION_BYTES_FIELD,
    CORE_FIELDS,
    SPLITS,
    Record,
    read_manifest,
    truncate_caption,
    write_manifest,
)

IDS = st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True).filter(lambda i: i not in {".", ".."})
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=60)
LINE = st.text(
    st.characters(exclude_characters="\x00\r\n", exclude_categories=("Cs",)), max_size=60
)
KEYS = st.text(
    st.characters(exclude_characters="\x00\r\n", exclude_categories=("Cs",)), min_size=1
).filter(lambda k: k not in CORE_FIELDS and k != CAPTION_BYTES_FIELD)
# JSON metadata values as json.loads gives them back (finite floats, no None or "": dropped).
JSON_VALUES = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        TEXT.filter(bool),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)


def caption(text: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    """A caption as the reader keeps it: stripped, non-empty, or None."""
    return st.one_of(st.none(), text.map(str.strip).filter(bool))


@st.composite
def records(draw: st.DrawFn, *, csv_safe: bool) -> list[Record]:
    """Records with unique ids under ``folder`` (filled in by the test); metadata by format."""
    text = LINE if csv_safe else TEXT
    values = LINE.filter(bool) if csv_safe else JSON_VALUES
    ids = draw(st.lists(IDS, max_size=8, unique=True))
    return [
        Record(
            image_id=image_id,
            image=f"images/{image_id}.png",
            caption=draw(caption(text)),
            split=draw(st.one_of(st.none(), st.sampled_from(SPLITS))),
            metadata=draw(st.dictionaries(KEYS, values, max_size=4)),
        )
        for image_id in ids
    ]


def placed(rows: list[Record], folder: Path) -> list[Record]:
    """The records with their images resolved under ``folder``, as the reader returns them."""
    return [Record(r.image_id, str(folder / r.image), r.caption, r.split, r.metadata) for r in rows]


def write_csv(path: Path, rows: list[Record]) -> None:
    """Write records as a CSV manifest (every metadata key a column, empty where absent)."""
    keys = sorted({k for r in rows for k in r.metadata})
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["image_id", "image", "caption", "split", *keys])
    for r in rows:
        meta: dict[str, Any] = dict(r.metadata)
        writer.writerow(
            [r.image_id, r.image, r.caption or "", r.split or "", *(meta.get(k, "") for k in keys)]
        )
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")


@settings(deadline=None)
@given(rows=records(csv_safe=False))
@example(rows=[Record("a", "images/a.png", "left\u2028right\x85next", metadata={"k": "\x0c"})])
def test_given_any_records_when_written_as_jsonl_and_read_then_equal(rows: list[Record]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        expected = placed(rows, folder)
        write_manifest(folder / "manifest.jsonl", expected)
        assert read_manifest(folder / "manifest.jsonl") == expected


@settings(deadline=None)
@given(rows=records(csv_safe=True))
@example(rows=[Record("a", "images/a.png", 'say "x", then y', metadata={"a,b": ' "q" '})])
def test_given_any_records_when_written_as_csv_and_read_then_equal(rows: list[Record]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_csv(folder / "manifest.csv", rows)
        assert read_manifest(folder / "manifest.csv") == placed(rows, folder)


@given(
    text=st.text(st.characters(exclude_categories=("Cs",)), max_size=200),
    limit=st.integers(1, 120),
)
@example(text="ab 🫁🫁🫁", limit=9)
def test_given_any_caption_when_truncated_then_a_prefix_within_the_limit_never_mid_character(
    text: str, limit: int
) -> None:
    cut = truncate_caption(text, limit=limit)
    if len(text.encode("utf-8")) <= limit:
        assert cut == text
        return
    assert len(cut.encode("utf-8")) <= limit  # encodes: no half character
    assert text.startswith(cut) and cut == cut.rstrip()
    # Of what fits in the limit, only whitespace and at most its last quarter (to end at a word)
    # are given up, plus the bytes of a character the limit splits
    fits = text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")
    assert len(fits[len(cut) :].strip().encode("utf-8")) <= limit / 4 + 3
