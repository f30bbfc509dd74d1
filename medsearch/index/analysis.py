"""Caption analysis and BM25 scale shared by both engines: the one definition of "English text".

Terms: a caption is split into maximal runs of letters and digits (Unicode ``Alphabetic`` or
``Numeric``), tokens of 255 bytes or more are dropped, the rest lowercased, Lucene's English stop
words (plus a lone ``s``, what a possessive leaves after the split) removed, and each term stemmed
with Snowball English (Porter2). The embedded engine builds this with tantivy (its ``simple``
tokenizer is exactly the split above); :data:`OPENSEARCH_ANALYSIS` asks OpenSearch for the same
(a ``pattern`` tokenizer on ``[^\\p{IsAlphabetic}\\p{N}]+``, Java's spelling of that split), so a
caption or query has the same terms on every engine.

Why not OpenSearch's ``standard`` tokenizer (UAX#29): it keeps ``3.5cm``, ``caption:femur`` and
``e-mail`` whole but splits ``HSV-1``, so whether a query finds a caption depended on the
punctuation inside a token and on the engine. Splitting at every non-alphanumeric character makes
``3.5 cm`` find ``3.5cm``, ``T2-weighted`` find ``T2 weighted``, ``C5-C6`` find ``C5 C6``, and no
query text is ever read as field syntax. Lucene's ``length`` filter counts UTF-16 units, tantivy's
bytes: the two agree on ASCII; a non-ASCII word of 255 bytes or more but fewer characters, which no
caption has, is dropped by tantivy alone.

BM25 (k1 = 1.2, b = 0.75): every engine reports Lucene's ``BM25Similarity`` score, the textbook
formula without the constant ``(k1 + 1)`` factor (:data:`BM25_K1`, :data:`BM25_B`). Lucene's
``LegacyBM25Similarity``, OpenSearch's default before 3.0, and tantivy keep that factor, so their
raw scores are :data:`LEGACY_BM25_FACTOR` times larger; the engines divide it out with
:func:`bm25_scale_for_version`. The factor does not change any ranking or min-max fusion, only the
reported ``bm25_score``.

tantivy is imported only where the tantivy analyzer is built, so :data:`OPENSEARCH_ANALYSIS`
(all an OpenSearch index creator needs) imports without it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from medsearch.errors import SearchIndexError

if TYPE_CHECKING:
    import tantivy

log = logging.getLogger(__name__)

ANALYZER_NAME = "medsearch_en"
# tantivy drops tokens of this many UTF-8 bytes or more.
MAX_TOKEN_BYTES = 255
# The split of the module docstring, as a Java regex (OpenSearch's pattern tokenizer): Java's
# \p{IsAlphabetic} and \p{N} are Rust's char::is_alphabetic and is_numeric, which tantivy's
# simple tokenizer keeps together.
TOKEN_SEPARATOR_PATTERN = r"[^\p{IsAlphabetic}\p{N}]+"  # noqa: S105 (not a secret)
# The same split in Python, for the character offsets of words (see :func:`highlight_spans`).
_WORD = re.compile(r"[^\W_]+")
# Highlighting looks at most this many words of a text (a hit's caption is at most 1000
# characters, so this bounds the work on any text, not the work on a caption).
MAX_HIGHLIGHT_WORDS = 1000

BM25_K1 = 1.2
BM25_B = 0.75
# LegacyBM25Similarity (OpenSearch 1.x-2.x) and tantivy score BM25Similarity times this.
LEGACY_BM25_FACTOR = 1.0 + BM25_K1

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (OpenSearch's `_english_`).
LUCENE_ENGLISH_STOP_WORDS = (
    *("a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is"),
    *("it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there"),
    *("these", "they", "this", "to", "was", "will", "with"),
)
STOP_WORDS = (*LUCENE_ENGLISH_STOP_WORDS, "s")

# The same analysis for an OpenSearch index (settings.analysis), so both engines index alike.
OPENSEARCH_ANALYSIS: dict[str, Any] = {
    "tokenizer": {
        "medsearch_words": {"type": "pattern", "pattern": TOKEN_SEPARATOR_PATTERN},
    },
    "filter": {
        "medsearch_length": {"type": "length", "max": MAX_TOKEN_BYTES - 1},
        "medsearch_stop": {"type": "stop", "stopwords": list(STOP_WORDS)},
        "medsearch_stemmer": {"type": "stemmer", "language": "porter2"},
    },
    "analyzer": {
        ANALYZER_NAME: {
            "type": "custom",
            "tokenizer": "medsearch_words",
            "filter": ["medsearch_length", "lowercase", "medsearch_stop", "medsearch_stemmer"],
        }
    },
}


def bm25_scale_for_version(number: str, distribution: str | None = "opensearch") -> float:
    """Return how much larger than BM25Similarity the BM25 scores of indexes that a cluster of
    this version (``GET /``: ``version.number`` and ``version.distribution``) creates are.

    OpenSearch 3.0 made Lucene's ``BM25Similarity`` the default ``BM25`` (``LegacyBM25`` keeps the
    old one); every earlier OpenSearch scores with ``LegacyBM25Similarity``. Without a
    distribution the answer is Elasticsearch's, or OpenSearch 1.x-2.x answering "7.10.2" in
    compatibility mode (``compatibility.override_main_response_version``): legacy before 8.
    """
    try:
        major = int(number.strip().split(".", 1)[0])
    except ValueError:
        raise SearchIndexError(f"not an OpenSearch version number: {number!r}") from None
    modern_from = 3 if distribution == "opensearch" else 8
    return LEGACY_BM25_FACTOR if major < modern_from else 1.0


def build_analyzer() -> tantivy.TextAnalyzer:
    """Return the tantivy analyzer for captions and caption queries (see the module docstring)."""
    import tantivy

    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_BYTES))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.custom_stopword(list(STOP_WORDS)))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


@cache
def _shared_analyzer() -> tantivy.TextAnalyzer:
    """Build the analyzer once, on first use, for :func:`analyze`."""
    return build_analyzer()


def analyze(text: str) -> list[str]:
    """Return the index terms of a text, in order, duplicates kept (a ``match`` query's clauses)."""
    return list(_shared_analyzer().analyze(text))


@cache
def _word_analyzer() -> Callable[[str], list[str]] | None:
    """Return what analyses one word: tantivy's analyzer (the embedded engine's own), else the
    same chain in Python over ``snowballstemmer``'s English (Porter2) stemmer, for a process
    without tantivy (the search API Lambda, whose captions OpenSearch analysed with Porter2);
    None when neither is installed, so highlights are left out rather than guessed."""
    try:
        return _shared_analyzer().analyze
    except ImportError:
        pass
    try:
        import snowballstemmer  # type: ignore[import-untyped]
    except ImportError:
        log.warning("neither tantivy nor snowballstemmer is installed: no caption highlights")
        return None
    stemmer = snowballstemmer.stemmer("english")
    stop = frozenset(STOP_WORDS)

    def analyze_word(word: str) -> list[str]:
        lowered = word.lower()
        if len(word.encode("utf-8")) >= MAX_TOKEN_BYTES or lowered in stop:
            return []
        return [stemmer.stemWord(lowered)]

    return analyze_word


@lru_cache(maxsize=65_536)
def _word_terms(word: str) -> tuple[str, ...]:
    """Return one word's index terms (usually one stem; none for a stop word), memoised: the
    words of captions repeat across hits and queries."""
    analyzer = _word_analyzer()
    return tuple(analyzer(word)) if analyzer is not None else ()


def word_terms(text: str) -> frozenset[str]:
    """Return the distinct index terms of a text's first :data:`MAX_HIGHLIGHT_WORDS` words,
    word by word (what :func:`highlight_spans` looks for; needs no tantivy, see
    :func:`_word_analyzer`)."""
    terms: set[str] = set()
    for number, match in enumerate(_WORD.finditer(text)):
        if number >= MAX_HIGHLIGHT_WORDS:
            break
        terms.update(_word_terms(match.group()))
    return frozenset(terms)


def highlight_spans(text: str, terms: Collection[str]) -> list[tuple[int, int]]:
    """Return the ``[start, end)`` offsets (Unicode code points) of the words of ``text`` whose
    index term is one of ``terms`` (a query's terms), in order.

    ``terms`` come from :func:`word_terms` of the query. Each word is analysed by the engines'
    own analyzer, so "why it matched" marks what BM25 matched: ``tumours`` for ``tumour``, never
    a stop word, nor ``cystic`` for ``cyst`` (another stem, which BM25 does not match either).
    Python's ``[^\\W_]`` split agrees with tantivy's on letters and digits; where a word holds a
    character the two split differently (a combining mark), the analyzer splits it again and any
    of its terms counts.
    """
    wanted = frozenset(terms)
    if not wanted or not text:
        return []
    spans = []
    for number, match in enumerate(_WORD.finditer(text)):
        if number >= MAX_HIGHLIGHT_WORDS:
            break
        if not wanted.isdisjoint(_word_terms(match.group())):
            spans.append((match.start(), match.end()))
    return spans
