"""Retrieval metrics: the classic in-batch MRR@k and the real full-pool R@k / MRR@k / median rank.

The metric functions work on unit vectors (numpy only), so they import without torch;
:func:`evaluate_model` runs an :class:`~medsearch.vectors.Encoder` over manifest records and
returns the report the ``evaluate`` command writes.

Rules every metric here follows (and the brute-force reference in the tests re-implements):

* **Rank** of a query is ``1 + the number of non-relevant pool items scoring >= the best relevant
  item``. A tie with a relevant item therefore counts against it (conservative and deterministic:
  a model that maps everything to one vector scores the worst rank, not a lucky one).
* **Identical captions are the same text.** After collapsing whitespace, captions that are equal
  produce equal text vectors, so ranking one above the other would be arbitrary; an item whose
  caption equals the query item's caption counts as relevant (in both directions and in-batch).
* **R@k** is the fraction of queries whose rank is ``<= k``; **MRR@k** averages ``1 / rank`` over
  queries, counting 0 where the rank is over ``k``; **median rank** is the median of ranks. ``k``
  larger than the pool is allowed (every query then hits).
* **Captionless items** are left out of text pools and text queries: text→image ranks every image
  (captionless ones are distractors), image→text ranks only captioned texts and only captioned
  images ask.
* **In-batch** (the classic protocol): captioned items in record order, cut into consecutive batches
  of ``batch_size`` (the last may be smaller); each image ranks the captions of its own batch;
  MRR@k is the mean over all images (so a small last batch weighs by its size).
* **Query sets**: nDCG@10 with exponential gain ``2**grade - 1`` and discount ``log2(rank + 1)``;
  R@10 is the fraction of a query's relevant images found in the top 10, out of
  ``min(#relevant, 10)`` so a perfect ranking scores 1. Relevant ids outside the evaluated images
  are ignored; a query with none inside is skipped. Ties in a ranking put lower grades first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from medsearch.data.images import load_record_images
from medsearch.errors import InvalidInputError
from medsearch.vectors import normalize

if TYPE_CHECKING:
    from medsearch.data.manifest import BadRecord, Record
    from medsearch.data.queries import Query
    from medsearch.vectors import Encoder

log = logging.getLogger(__name__)

IN_BATCH_SIZE = 64
IN_BATCH_KS = (1, 3, 5, 10, 20)
RECALL_KS = (1, 5, 10)
MRR_K = 10
QUERY_K = 10
# Rows of queries scored at once, so a large pool never needs an n×n matrix in memory.
_CHUNK = 1024


def caption_groups(captions: Sequence[str | None]) -> np.ndarray:
    """Return an int id per item, equal for identical captions (spacing aside), -1 if none."""
    ids: dict[str, int] = {}
    groups = np.full(len(captions), -1, dtype=np.int64)
    for i, caption in enumerate(captions):
        if caption is None:
            continue
        key = " ".join(caption.split())
        if not key:
            continue
        groups[i] = ids.setdefault(key, len(ids))
    return groups


def first_relevant_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Return each query's 1-based rank of its best relevant item (ties count against it).

    ``scores`` and ``relevant`` are ``[queries, pool]``; every query needs at least one relevant
    item in its row.
    """
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must be equal 2-D")
    if scores.shape[0] and not relevant.any(axis=1).all():
        raise ValueError("every query needs a relevant item in the pool")
    best = np.where(relevant, scores, -np.inf).max(axis=1, initial=-np.inf)
    beaten = (~relevant) & (scores >= best[:, None])
    return 1 + beaten.sum(axis=1)


def rank_metrics(ranks: np.ndarray, ks: Sequence[int] = RECALL_KS, mrr_k: int = MRR_K) -> dict:
    """Return R@k for each k, MRR@mrr_k and the median rank of 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.size == 0:
        raise ValueError("no queries to score")
    out: dict[str, float] = {f"r@{k}": float(np.mean(ranks <= k)) for k in ks}
    out[f"mrr@{mrr_k}"] = mrr_at(ranks, mrr_k)
    out["median_rank"] = float(np.median(ranks))
    return out


def mrr_at(ranks: np.ndarray, k: int) -> float:
    """Return the mean of 1/rank, counting 0 for ranks over k."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(np.where(ranks <= k, 1.0 / ranks, 0.0)))


def in_batch_mrr(
    image_vectors: np.ndarray,
    text_vectors: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    batch_size: int = IN_BATCH_SIZE,
    ks: Sequence[int] = IN_BATCH_KS,
) -> dict[str, Any]:
    """Return the classic table: image→caption MRR@k within consecutive batches of paired rows.

    Row i of both arrays is one captioned item; ``groups`` (from :func:`caption_groups`) marks
    identical captions, which count as relevant to each other.
    """
    images = np.asarray(image_vectors, dtype=np.float64)
    texts = np.asarray(text_vectors, dtype=np.float64)
    if images.shape != texts.shape:
        raise ValueError(f"paired vectors differ in shape: {images.shape} vs {texts.shape}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    n = images.shape[0]
    if n == 0:
        raise ValueError("no captioned items to score")
    groups = np.arange(n) if groups is None else np.asarray(groups)
    ranks = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        scores = images[start:stop] @ texts[start:stop].T
        g = groups[start:stop]
        ranks.append(first_relevant_ranks(scores, g[:, None] == g[None, :]))
    all_ranks = np.concatenate(ranks)
    out: dict[str, Any] = {"batch_size": batch_size}
    out.update({f"mrr@{k}": mrr_at(all_ranks, k) for k in ks})
    return out


def full_pool_metrics(
    image_vectors: np.ndarray,
    text_vectors: np.ndarray,
    captions: Sequence[str | None],
) -> dict[str, dict[str, float]]:
    """Return text→image and image→text R@1/5/10, MRR@10 and median rank over the whole pool.

    ``image_vectors`` has one row per item; ``text_vectors`` one row per captioned item, in item
    order (captionless items have no text).
    """
    images = np.asarray(image_vectors, dtype=np.float64)
    texts = np.asarray(text_vectors, dtype=np.float64)
    groups = caption_groups(captions)
    if images.shape[0] != len(captions):
        raise ValueError(f"{images.shape[0]} image vectors for {len(captions)} items")
    captioned = np.flatnonzero(groups >= 0)
    if texts.shape[0] != captioned.size:
        raise ValueError(f"{texts.shape[0]} text vectors for {captioned.size} captioned items")
    if captioned.size == 0:
        raise ValueError("no captioned items: full-pool retrieval needs captions")
    text_groups = groups[captioned]
    t2i, i2t = [], []
    for start in range(0, captioned.size, _CHUNK):
        rows = slice(start, start + _CHUNK)
        # text → image: all images are candidates; relevant = images with the same caption.
        scores = texts[rows] @ images.T
        t2i.append(first_relevant_ranks(scores, text_groups[rows, None] == groups[None, :]))
        # image → text: only captioned images ask, against the captioned texts.
        scores = images[captioned[rows]] @ texts.T
        i2t.append(first_relevant_ranks(scores, text_groups[rows, None] == text_groups[None, :]))
    return {
        "text_to_image": rank_metrics(np.concatenate(t2i)),
        "image_to_text": rank_metrics(np.concatenate(i2t)),
    }


def graded_metrics(top: np.ndarray, grades: np.ndarray, *, k: int = QUERY_K) -> tuple[float, float]:
    """Return (nDCG@k, R@k) of one ranking: ``top`` = grades of its first k hits, ``grades`` = all.

    The one definition of the query-set metrics, shared by model evaluation (rankings by vector)
    and search evaluation (rankings by an engine).
    """
    top = np.asarray(top, dtype=np.float64)[:k]
    grades = np.asarray(grades, dtype=np.float64)
    n_relevant = int((grades > 0).sum())
    if n_relevant == 0:
        raise ValueError("a ranking without any relevant item has no nDCG")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float(np.sum((2.0**top - 1.0) * discounts[: top.size]))
    ideal = np.sort(grades)[::-1][:k]
    idcg = float(np.sum((2.0**ideal - 1.0) * discounts[: ideal.size]))
    return dcg / idcg, float((top > 0).sum()) / min(n_relevant, k)


def query_metrics(
    query_vectors: np.ndarray,
    image_vectors: np.ndarray,
    image_ids: Sequence[str],
    relevances: Sequence[Mapping[str, float]],
    *,
    k: int = QUERY_K,
) -> dict[str, float] | None:
    """Return nDCG@k and R@k of text queries with graded judgments over the given images.

    Returns ``None`` when no query has a relevant image among ``image_ids``.
    """
    queries = np.asarray(query_vectors, dtype=np.float64)
    images = np.asarray(image_vectors, dtype=np.float64)
    if queries.shape[0] != len(relevances):
        raise ValueError(f"{queries.shape[0]} query vectors for {len(relevances)} queries")
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    ndcgs, recalls = [], []
    for vector, relevance in zip(queries, relevances, strict=True):
        grades = np.zeros(len(image_ids), dtype=np.float64)
        for image_id, grade in relevance.items():
            if image_id in position and grade > 0:
                grades[position[image_id]] = float(grade)
        n_relevant = int((grades > 0).sum())
        if n_relevant == 0:
            continue
        scores = images @ vector
        # Primary key: score descending; ties put lower grades first (conservative), then index.
        order = np.lexsort((np.arange(len(grades)), grades, -scores))[:k]
        ndcg, recall = graded_metrics(grades[order], grades, k=k)
        ndcgs.append(ndcg)
        recalls.append(recall)
    skipped = len(relevances) - len(ndcgs)
    if skipped:
        log.info("%d of %d queries have no relevant image here; skipped", skipped, len(relevances))
    if not ndcgs:
        return None
    return {f"ndcg@{k}": float(np.mean(ndcgs)), f"r@{k}": float(np.mean(recalls))}


# --- a model over manifest records ---------------------------------------------------------------


def evaluate_model(
    encoder: Encoder,
    records: Sequence[Record],
    *,
    queries: Sequence[Query] | None = None,
    batch_size: int = IN_BATCH_SIZE,
    split: str | None = None,
    strict: bool = False,
    bad: list[BadRecord] | None = None,
) -> dict[str, Any]:
    """Encode the records' images and captions and return the evaluation report.

    ``batch_size`` is both the in-batch protocol's batch and the encoding batch. Records whose
    image cannot be decoded are left out and appended to ``bad`` (or raise when ``strict``).
    """
    if batch_size < 1:
        raise InvalidInputError("batch_size must be at least 1")
    skipped: list[BadRecord] = [] if bad is None else bad
    kept: list[Record] = []
    image_chunks: list[np.ndarray] = []
    # Decode and encode batch by batch, so a large split never holds all its images at once.
    with tqdm(total=len(records), unit="img", desc="evaluate", disable=None) as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            pairs = load_record_images(batch, strict=strict, bad=skipped)
            if pairs:
                kept.extend(record for record, _ in pairs)
                vectors = encoder.encode_images([im for _, im in pairs], batch_size=batch_size)
                image_chunks.append(normalize(vectors))
            bar.update(len(batch))
    if skipped:
        log.warning("evaluate: %d records skipped (unreadable images)", len(skipped))
    if not kept:
        raise InvalidInputError("no readable images to evaluate")
    captions = [record.caption for record in kept]
    all_groups = caption_groups(captions)
    captioned = [i for i, group in enumerate(all_groups) if group >= 0]
    if not captioned:
        raise InvalidInputError("no captioned images to evaluate: retrieval needs captions")
    images = np.concatenate(image_chunks)
    caption_texts = [captions[i] or "" for i in captioned]
    texts = normalize(encoder.encode_texts(caption_texts, batch_size=batch_size))
    groups = all_groups[captioned]
    report: dict[str, Any] = {
        "model": encoder.model_id,
        "split": split if split is not None else _split_name(kept),
        "n": len(kept),
        "in_batch": in_batch_mrr(images[captioned], texts, groups, batch_size=batch_size),
    }
    report.update(full_pool_metrics(images, texts, captions))
    if queries:
        query_vectors = normalize(encoder.encode_texts([q.query for q in queries], batch_size))
        scores = query_metrics(
            query_vectors, images, [r.image_id for r in kept], [q.relevance for q in queries]
        )
        if scores is not None:
            report["queries"] = scores
        else:
            log.warning("evaluate: no query has a relevant image in this split; none reported")
    return _rounded(report)


def _split_name(records: Sequence[Record]) -> str | None:
    splits = {record.split for record in records}
    return splits.pop() if len(splits) == 1 else None


def _rounded(value: Any) -> Any:
    """Round floats for the report; a NaN or infinity here would be a bug, so it raises."""
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, float):
        if not np.isfinite(value):
            raise ValueError(f"metric is not finite: {value}")
        return round(value, 6)
    return value
