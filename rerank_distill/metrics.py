"""Ranking metrics for one query's candidates, and their mean over a data set under a named protocol.

Pure numpy. ``scores`` are any monotone score (logits or probabilities give the same numbers);
``labels`` are relevance grades: a label > 0 is relevant for MAP and MRR, and the grade itself is
the gain for NDCG (1/0 for binary data).

Ties are broken deterministically: descending score, then the candidate's position in the data
set. sentence-transformers' ``CrossEncoderRerankingEvaluator`` calls sklearn's
``average_precision_score`` and ``ndcg_score``, which average over tied scores instead, and
``np.argsort(...)[::-1]`` for MRR; so our numbers equal the evaluator's on tie-free scores, and
may differ where a model gives two candidates of one query exactly the same score. (One more
difference: the evaluator fails on a query with a single candidate, which sklearn's ``ndcg_score``
refuses; here such a query scores like any other.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

PROTOCOLS = ("mteb", "sentence-transformers")
PROTOCOL_RULES = {
    "mteb": "queries with no positive or no negative are skipped and counted (as MTEB's reranking evaluation did)",
    "sentence-transformers": (
        "as CrossEncoderRerankingEvaluator: a query with no positive counts as 0 for every metric and stays "
        "in the mean; a query with no negative is scored normally"
    ),
}
SKIP_REASONS = ("no_positive", "no_negative")


def ranking_order(scores: Sequence[float]) -> np.ndarray:
    """Candidate indices best first: descending score, ties kept in their input order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def average_precision(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Average precision over the full ranking: the mean, over relevant candidates (label > 0), of
    the precision at each one's rank. 0.0 when no candidate is relevant."""
    relevant = np.asarray(labels, dtype=np.float64)[ranking_order(scores)] > 0
    if not relevant.any():
        return 0.0
    hits = np.cumsum(relevant)
    ranks = np.arange(1, len(relevant) + 1)
    return float(np.mean(hits[relevant] / ranks[relevant]))


def reciprocal_rank(scores: Sequence[float], labels: Sequence[float], k: int = 10) -> float:
    """1 / rank of the first relevant candidate (label > 0) if it is in the top ``k``, else 0.0."""
    relevant = np.asarray(labels, dtype=np.float64)[ranking_order(scores)][:k] > 0
    if not relevant.any():
        return 0.0
    return 1.0 / (int(np.argmax(relevant)) + 1)


def ndcg(scores: Sequence[float], gains: Sequence[float], k: int = 10) -> float:
    """NDCG@k with linear gains: DCG = sum over the top ``k`` of gain / log2(rank + 1), divided by
    the DCG of the candidates sorted by gain (as sklearn's ``ndcg_score`` computes it). Gains are
    floats (graded labels welcome); 0.0 when no gain is positive."""
    gains = np.asarray(gains, dtype=np.float64)
    if (gains < 0).any():
        raise ValueError("NDCG gains must be non-negative")
    discounts = 1.0 / np.log2(np.arange(2, min(k, len(gains)) + 2))
    ideal = float(np.sum(np.sort(gains)[::-1][:k] * discounts))
    if ideal == 0.0:
        return 0.0
    return float(np.sum(gains[ranking_order(scores)][:k] * discounts)) / ideal


def skip_reason(labels: Sequence[float]) -> str | None:
    """``"no_positive"``, ``"no_negative"`` or None: why the MTEB protocol would skip this query
    (a query with no candidates at all counts as having no positive)."""
    labels = np.asarray(labels, dtype=np.float64)
    if not (labels > 0).any():
        return "no_positive"
    if (labels > 0).all():
        return "no_negative"
    return None


def evaluate_rankings(
    queries: Iterable[tuple[Sequence[float], Sequence[float]]], protocol: str = "mteb", k: int = 10
) -> dict:
    """Mean MAP, MRR@k and NDCG@k over ``(scores, labels)`` queries under a protocol (see
    PROTOCOL_RULES).

    Returns ``{"map", f"mrr@{k}", f"ndcg@{k}", "queries_evaluated", "queries_skipped",
    "queries_skipped_by_reason": {"no_positive", "no_negative"}, "queries_scored_zero"}``;
    ``queries_scored_zero`` counts the no-positive queries the sentence-transformers protocol
    keeps in the mean as 0. Raises ValueError when no query is left to average.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    per_query = []
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    scored_zero = 0
    for scores, labels in queries:
        if len(scores) != len(labels):
            raise ValueError(f"a query has {len(scores)} scores but {len(labels)} labels")
        reason = skip_reason(labels)
        if protocol == "mteb" and reason is not None:
            skipped[reason] += 1
        elif reason == "no_positive":
            scored_zero += 1
            per_query.append((0.0, 0.0, 0.0))
        else:
            per_query.append(
                (average_precision(scores, labels), reciprocal_rank(scores, labels, k), ndcg(scores, labels, k))
            )
    if not per_query:
        raise ValueError("no query left to evaluate: every query lacks a positive or a negative")
    means = np.mean(np.asarray(per_query), axis=0)
    return {
        "map": float(means[0]),
        f"mrr@{k}": float(means[1]),
        f"ndcg@{k}": float(means[2]),
        "queries_evaluated": len(per_query),
        "queries_skipped": sum(skipped.values()),
        "queries_skipped_by_reason": skipped,
        "queries_scored_zero": scored_zero,
    }
