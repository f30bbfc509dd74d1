"""The caption analysis: one definition of terms, and an OpenSearch definition free of tantivy."""

from __future__ import annotations

import subprocess
import sys

from medsearch.index.analysis import ANALYZER_NAME, OPENSEARCH_ANALYSIS, analyze


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
