"""Properties of the OpenSearch engine's bulk chunking, through ``upsert`` on the fake cluster.

For any documents and limits: every valid document is sent exactly once, in order; each bulk
request holds at most ``bulk_max_docs`` documents and ``bulk_max_bytes`` bytes, except a single
document larger than the byte limit, which goes alone in its own request (it is not split or
dropped); a request ends only when the next document would not fit; documents that cannot be
encoded (a zero vector) are returned as failed and never sent.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from medsearch.index.base import Document
from medsearch.index.opensearch import build_bulk_lines
from tests.support.fake_opensearch import FakeCluster, fake_index

DIM = 4
MAX_BYTES = 1024  # the least bulk_max_bytes the engine accepts
# Up to 1200 characters of 1-4 UTF-8 bytes, or JSON-escaped: near, at and over the byte limit.
LONG_CAPTIONS = st.builds(
    lambda n, c: c * n, st.integers(0, 1200), st.sampled_from(["a", "é", "🫁", "\n", '"'])
)


@st.composite
def documents(draw: st.DrawFn) -> list[Document]:
    """Documents with unique ids, captions from empty to over the byte limit, some vectors."""
    ids = draw(st.lists(st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True), max_size=25, unique=True))
    docs = []
    for image_id in ids:
        caption = draw(st.one_of(st.none(), st.text(max_size=40), LONG_CAPTIONS))
        kind = draw(st.sampled_from(["vector", "none", "zero"]))
        vector = None
        if kind == "vector":
            vector = np.array(draw(st.lists(st.floats(0.1, 1.0), min_size=DIM, max_size=DIM)))
        elif kind == "zero":
            vector = np.zeros(DIM)
        metadata = draw(
            st.dictionaries(st.sampled_from(["modality", "plane"]), st.text(max_size=5))
        )
        docs.append(Document(image_id, caption, vector, f"{image_id}.png", metadata))
    return docs


def size(doc: Document) -> int:
    """The bytes a document adds to a bulk body (its two NDJSON lines)."""
    return len(build_bulk_lines(doc).encode("utf-8"))


@settings(deadline=None, max_examples=60)
@given(docs=documents(), max_docs=st.integers(1, 6))
def test_given_any_documents_when_upserted_then_chunks_keep_order_limits_and_every_document_once(
    docs: list[Document], max_docs: int
) -> None:
    cluster = FakeCluster()
    index = fake_index(
        cluster, "bulk-props", bulk_max_docs=max_docs, bulk_max_bytes=MAX_BYTES, bulk_concurrency=1
    )
    index.create(DIM)
    result = index.upsert(docs)
    sendable = [d for d in docs if d.vector is None or np.any(d.vector)]
    assert sorted(i for i, _ in result.failed) == sorted(
        d.image_id for d in docs if d not in sendable
    )
    assert result.written == len(sendable)
    by_id = {d.image_id: d for d in docs}
    requests = [
        [line["index"]["_id"] for line in request.body[::2]]
        for request in cluster.requests_to("_bulk")
    ]
    # Every sendable document exactly once, in the order given
    assert [i for chunk in requests for i in chunk] == [d.image_id for d in sendable]
    for number, chunk in enumerate(requests):
        nbytes = sum(size(by_id[i]) for i in chunk)
        assert 1 <= len(chunk) <= max_docs
        # Within the byte limit, or one document that alone exceeds it
        assert nbytes <= MAX_BYTES or len(chunk) == 1
        if number + 1 < len(requests):
            # A request ends only when the next document would not fit in it
            following = by_id[requests[number + 1][0]]
            assert len(chunk) == max_docs or nbytes + size(following) > MAX_BYTES
    assert sorted(cluster.documents("bulk-props")) == sorted(d.image_id for d in sendable)
