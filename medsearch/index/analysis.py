"""Caption analysis shared by the BM25 side of both engines: the one definition of "English text".

OpenSearch's ``english`` analyzer is standard tokenizer → possessive ``'s`` removal → lowercase →
Lucene's English stop words → Porter stemming. The embedded engine (tantivy) builds the closest
analyzer tantivy offers: split on non-alphanumerics → drop tokens over 255 bytes → lowercase →
the same Lucene stop words (plus a lone ``s``, which is what a possessive leaves after the split) →
Snowball English (Porter2) stemming. Porter2 is also what :data:`OPENSEARCH_ANALYSIS` asks
OpenSearch for (``stemmer`` filter, language ``porter2``), so both engines index the same terms
for ordinary captions; they can still differ on tokens the standard tokenizer keeps whole
(``3.5cm``, ``e-mail``), which a simple split breaks apart.

tantivy is imported only where the tantivy analyzer is built, so :data:`OPENSEARCH_ANALYSIS`
(all an OpenSearch index creator needs) imports without it.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tantivy

ANALYZER_NAME = "medsearch_en"
MAX_TOKEN_BYTES = 255

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (OpenSearch's `_english_`).
LUCENE_ENGLISH_STOP_WORDS = (
    *("a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is"),
    *("it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there"),
    *("these", "they", "this", "to", "was", "will", "with"),
)
STOP_WORDS = (*LUCENE_ENGLISH_STOP_WORDS, "s")

# The same analysis for an OpenSearch index (settings.analysis), so both engines stem alike.
OPENSEARCH_ANALYSIS: dict[str, Any] = {
    "filter": {
        "medsearch_possessive": {"type": "stemmer", "language": "possessive_english"},
        "medsearch_stop": {"type": "stop", "stopwords": "_english_"},
        "medsearch_stemmer": {"type": "stemmer", "language": "porter2"},
    },
    "analyzer": {
        ANALYZER_NAME: {
            "type": "custom",
            "tokenizer": "standard",
            "filter": ["medsearch_possessive", "lowercase", "medsearch_stop", "medsearch_stemmer"],
        }
    },
}


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
