"""Manifest files an ingestion may meet, built here, each with its expected outcome.

Every case is a file name (``.csv`` or ``.jsonl``: the reader picks the format by it), a builder
of its bytes, and what :func:`medsearch.data.manifest.read_manifest` must do with them: return
records with the given ids, or raise a :class:`~medsearch.errors.MedsearchError` whose message
matches ``error`` (a regular expression; most name the line). ``index_error`` is what
``medsearch index`` says on top (an empty manifest reads fine but never replaces an index).
``check`` asserts more about the records a case reads (a cut caption, a kept character).
The fuzzers under ``tests/fuzz/`` seed from these cases; a crash a fuzzer finds becomes one here.

Built at test time, not committed: a few MB in all (the huge-caption cases), each builder says
how its file is hostile.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsearch.data.manifest import CAPTION_BYTES_FIELD, MAX_CAPTION_BYTES, Record

Check = Callable[[Sequence[Record]], None]


@dataclass(frozen=True)
class ManifestCase:
    """One manifest file and its outcome: ``ids`` read in order, or ``error`` (a pattern)."""

    name: str
    filename: str
    build: Callable[[], bytes] = field(repr=False)
    ids: tuple[str, ...] | None = None
    error: str | None = None
    index_error: str | None = None
    check: Check | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        assert (self.ids is None) != (self.error is None), self.name

    @property
    def data(self) -> bytes:
        """The case's bytes (built once per process)."""
        return _built(self.build)

    def write(self, folder: Path) -> Path:
        """Write the case into ``folder`` under its file name; return the path."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.filename
        path.write_bytes(self.data)
        return path


@functools.cache
def _built(build: Callable[[], bytes]) -> bytes:
    return build()


# --- builders ------------------------------------------------------------------------------------


def jsonl(*rows: Any) -> Callable[[], bytes]:
    """JSON Lines of ``rows`` (each a dict, or a str written as the raw line)."""

    def build() -> bytes:
        lines = [
            row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows
        ]
        return "".join(line + "\n" for line in lines).encode("utf-8")

    return build


def raw(text: str | bytes, encoding: str = "utf-8") -> Callable[[], bytes]:
    """The bytes of ``text`` exactly (in ``encoding`` when it is text)."""
    return lambda: text if isinstance(text, bytes) else text.encode(encoding)


def row(image_id: str, caption: str | None = "a caption", **metadata: Any) -> dict[str, Any]:
    """A manifest row with an image named after its id."""
    return {"image_id": image_id, "image": f"images/{image_id}.png", "caption": caption, **metadata}


HEADER = "image_id,image,caption\n"
HUGE_WORDS = "chest nodule " * 800_000  # 10.4 MB of words
HUGE_WORD = "x" * 1_000_000  # a 1 MB line without a space


def _cut_caption(expected_bytes: int) -> Check:
    """The first record's caption is cut to the limit, its original size in its metadata."""

    def check(records: Sequence[Record]) -> None:
        caption = records[0].caption
        assert caption is not None and 0 < len(caption.encode()) <= MAX_CAPTION_BYTES
        assert records[0].metadata[CAPTION_BYTES_FIELD] == expected_bytes
        assert all(CAPTION_BYTES_FIELD not in r.metadata for r in records[1:])

    return check


def _caption_is(index: int, caption: str | None) -> Check:
    def check(records: Sequence[Record]) -> None:
        assert records[index].caption == caption, records[index].caption

    return check


# --- the cases -----------------------------------------------------------------------------------

EMPTY = r"no documents.*--allow-empty"

CASES: tuple[ManifestCase, ...] = (
    # CSV quoting: rows must never be folded into a caption.
    ManifestCase(
        "csv-unterminated-quote", "manifest.csv",
        raw(HEADER + 'a,a.png,"first\nb,b.png,second\nc,c.png,third\n'),
        error=r"manifest\.csv:2: not valid CSV .*a quote is never closed",
    ),
    ManifestCase(
        "csv-quote-closed-rows-later", "manifest.csv",
        raw(HEADER + 'a,a.png,"first\nb,b.png,second\nc,c.png,third"\nd,d.png,x\n'),
        error=r"manifest\.csv:2: a field spans lines",
    ),
    ManifestCase(
        "csv-text-after-closing-quote", "manifest.csv",
        raw(HEADER + 'a,a.png,ok\nb,b.png,"x"y\n'), error=r"manifest\.csv:3: not valid CSV",
    ),
    ManifestCase(
        "csv-unquoted-comma", "manifest.csv", raw(HEADER + "a,a.png,CT chest, axial\n"),
        error=r"manifest\.csv:2: 4 fields, the header has 3",
    ),
    ManifestCase(
        "csv-short-row", "manifest.csv", raw(HEADER + "a,a.png,x\nb,b.png\n"),
        error=r"manifest\.csv:3: 2 fields, the header has 3",
    ),
    ManifestCase(
        "csv-quoted-commas-and-quotes", "manifest.csv",
        raw(HEADER + 'a,a.png,"CT chest, axial ""lung"" window"\n'), ids=("a",),
        check=_caption_is(0, 'CT chest, axial "lung" window'),
    ),
    # Columns.
    ManifestCase(
        "csv-missing-image-column", "manifest.csv", raw("image_id,caption\na,x\n"),
        error=r"manifest\.csv:1: no column image in the header",
    ),
    ManifestCase(
        "csv-column-named-twice", "manifest.csv",
        raw("image_id,image,caption,caption\na,a.png,one,two\n"),
        error=r"manifest\.csv:1: column 'caption' is named twice",
    ),
    ManifestCase(
        "jsonl-missing-image", "manifest.jsonl",
        jsonl(row("a"), {"image_id": "b", "caption": "x"}),
        error=r"manifest\.jsonl:2: b: missing 'image'",
    ),
    ManifestCase(
        "jsonl-missing-image-id", "manifest.jsonl", jsonl({"image": "a.png"}),
        error=r"manifest\.jsonl:1: invalid image_id None",
    ),
    ManifestCase(
        "jsonl-path-traversal-id", "manifest.jsonl", jsonl(row("../etc")),
        error=r"manifest\.jsonl:1: invalid image_id '\.\./etc'",
    ),
    # Empty manifests: read as no records; never replace an index.
    ManifestCase("jsonl-empty-file", "manifest.jsonl", raw(""), ids=(), index_error=EMPTY),
    ManifestCase(
        "jsonl-blank-lines-only", "manifest.jsonl", raw("\n \n\t\n"), ids=(), index_error=EMPTY
    ),
    ManifestCase("csv-header-only", "manifest.csv", raw(HEADER), ids=(), index_error=EMPTY),
    ManifestCase("csv-empty-file", "manifest.csv", raw(""), ids=(), index_error=EMPTY),
    # Duplicate ids.
    ManifestCase(
        "jsonl-duplicate-id", "manifest.jsonl", jsonl(row("a"), row("b"), row("a")),
        error=r"manifest\.jsonl:3: duplicate image_id 'a'",
    ),
    ManifestCase(
        "csv-duplicate-id", "manifest.csv", raw(HEADER + "a,a.png,x\na,b.png,y\n"),
        error=r"manifest\.csv:3: duplicate image_id 'a'",
    ),
    # Size: captions are cut, never stored whole.
    ManifestCase(
        "jsonl-10mb-caption", "manifest.jsonl", jsonl(row("a", HUGE_WORDS), row("b")),
        ids=("a", "b"), check=_cut_caption(len(HUGE_WORDS.strip().encode())),
    ),
    ManifestCase(
        "csv-10mb-caption", "manifest.csv", raw(HEADER + f"a,a.png,{HUGE_WORDS}\nb,b.png,x\n"),
        ids=("a", "b"), check=_cut_caption(len(HUGE_WORDS.strip().encode())),
    ),
    ManifestCase(
        "jsonl-1mb-line-one-word", "manifest.jsonl", jsonl(row("a", HUGE_WORD)),
        ids=("a",), check=_cut_caption(len(HUGE_WORD)),
    ),
    # Encodings.
    ManifestCase(
        "jsonl-utf8-bom", "manifest.jsonl", lambda: b"\xef\xbb\xbf" + jsonl(row("a"))(),
        ids=("a",),
    ),
    ManifestCase(
        "csv-utf8-bom", "manifest.csv", raw("\ufeff" + HEADER + "a,a.png,x\n"), ids=("a",)
    ),
    ManifestCase(
        "jsonl-utf16", "manifest.jsonl", raw(json.dumps(row("a")) + "\n", "utf-16"),
        error=r"not UTF-8 text",
    ),
    ManifestCase(
        "csv-latin1", "manifest.csv", raw(HEADER + "a,a.png,Röntgen\n", "latin-1"),
        error=r"not UTF-8 text",
    ),
    ManifestCase(
        "binary-garbage", "manifest.jsonl", raw(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"),
        error=r"not UTF-8 text",
    ),
    # NUL characters.
    ManifestCase(
        "jsonl-escaped-nul-in-caption", "manifest.jsonl", jsonl(row("a", "x\u0000y")),
        error=r"manifest\.jsonl:1: a: a NUL character",
    ),
    ManifestCase(
        "csv-raw-nul-byte", "manifest.csv", raw(HEADER + "a,a.png,ok\nb,b.png,x\x00y\n"),
        error=r"manifest\.csv:3: b: a NUL character",
    ),
    # Line endings and separators.
    ManifestCase(
        "jsonl-crlf", "manifest.jsonl",
        raw("\r\n".join(json.dumps(r) for r in (row("a"), row("b"))) + "\r\n"), ids=("a", "b"),
    ),
    ManifestCase(
        "csv-crlf", "manifest.csv", raw("image_id,image,caption\r\na,a.png,x\r\nb,b.png,y\r\n"),
        ids=("a", "b"), check=_caption_is(1, "y"),
    ),
    ManifestCase(
        "jsonl-unicode-line-separators-in-caption", "manifest.jsonl",
        jsonl(row("a", "left\u2028right\u0085next\x0cpage"), row("b")), ids=("a", "b"),
        check=_caption_is(0, "left\u2028right\u0085next\x0cpage"),
    ),
    ManifestCase(
        "jsonl-no-final-newline", "manifest.jsonl",
        raw(json.dumps(row("a")) + "\n" + json.dumps(row("b"))), ids=("a", "b"),
    ),
    # Broken JSON Lines.
    ManifestCase(
        "jsonl-broken-line", "manifest.jsonl",
        jsonl(row("a"), '{"image_id": "b", "image": "b.png", "caption": "cut', row("c")),
        error=r"manifest\.jsonl:2: not valid JSON",
    ),
    ManifestCase(
        "jsonl-truncated-last-line", "manifest.jsonl",
        lambda: jsonl(row("a"))() + b'{"image_id": "b", "ima',
        error=r"manifest\.jsonl:2: not valid JSON",
    ),
    ManifestCase(
        "jsonl-two-objects-on-a-line", "manifest.jsonl",
        jsonl(json.dumps(row("a")) + json.dumps(row("b"))),
        error=r"manifest\.jsonl:1: not valid JSON \(Extra data\)",
    ),
    ManifestCase(
        "jsonl-key-given-twice", "manifest.jsonl",
        jsonl(row("a"), '{"image_id": "b", "image": "b.png", "caption": "x", "caption": "y"}'),
        error=r"manifest\.jsonl:2: key 'caption' is given twice",
    ),
    ManifestCase(
        "jsonl-nested-100000-deep", "manifest.jsonl",
        jsonl(row("a"), '{"image_id": "b", "image": "b.png", "m": ' + "[" * 100_000
              + "]" * 100_000 + "}"),
        error=r"manifest\.jsonl:2: JSON nested too deeply",
    ),
    ManifestCase(
        "jsonl-nested-500-deep-with-a-nul", "manifest.jsonl",
        jsonl('{"image_id": "a", "image": "a.png", "m": ' + "[" * 500 + '"\\u0000"'
              + "]" * 500 + "}"),
        error=r"manifest\.jsonl:1: a: a NUL character",
    ),
    ManifestCase(
        "jsonl-array-line", "manifest.jsonl", jsonl(row("a"), ["b", "b.png"]),
        error=r"manifest\.jsonl:2: a record must be a JSON object",
    ),
    ManifestCase(
        "jsonl-nan-metadata", "manifest.jsonl", jsonl('{"image_id": "a", "image": "a.png", '
                                                      '"age": NaN}'),
        error=r"manifest\.jsonl:1: NaN is not a number",
    ),
    ManifestCase(
        "jsonl-caption-not-text", "manifest.jsonl", jsonl(row("a", caption=None) | {"caption": 7}),
        error=r"manifest\.jsonl:1: a: 'caption' must be a string",
    ),
    ManifestCase(
        "jsonl-unknown-split", "manifest.jsonl", jsonl(row("a", split="dev")),
        error=r"manifest\.jsonl:1: a: split 'dev' is not one of",
    ),
    # Valid but unusual.
    ManifestCase(
        "jsonl-unicode-everywhere", "manifest.jsonl",
        jsonl(row("a", "Röntgen 胸部 🫁 \u200b", région="thorax", tags=["é", "ß"])), ids=("a",),
        check=_caption_is(0, "Röntgen 胸部 🫁 \u200b"),
    ),
    ManifestCase(
        "jsonl-captionless-and-whitespace-caption", "manifest.jsonl",
        jsonl(row("a", None), row("b", "   ")), ids=("a", "b"), check=_caption_is(1, None),
    ),
)  # fmt: skip


def case_ids() -> list[str]:
    """The cases' names, for ``pytest.mark.parametrize(ids=...)``."""
    return [case.name for case in CASES]
