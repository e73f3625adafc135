"""Ranking metrics for one query's candidates, and their mean over a data set under a named protocol.

Pure numpy. ``scores`` are any monotone score (logits or probabilities give the same numbers);
``labels`` are relevance grades: a label > 0 is relevant for MAP and MRR, and the grade itself is
the gain for NDCG (1/0 for binary data).

Tied scores are averaged over, not broken: each metric is its mean over every order of the tied
candidates (McSherry & Najork, "Computing information retrieval performance measures efficiently
in the presence of tied scores", ECIR 2008), computed in closed form. It depends neither on the
order of the data set nor on the labels of tied candidates, so a model that gives every candidate
one score earns what a random ranking earns in expectation, never the perfect marks that a
break by position would hand it where positives are listed first. On tie-free scores these are the
plain metrics, and they equal sentence-transformers' ``CrossEncoderRerankingEvaluator`` (which calls
sklearn's ``average_precision_score`` and ``ndcg_score``, and ``np.argsort(...)[::-1]`` for MRR);
with ties, NDCG still equals sklearn's (which averages the same way), while sklearn's AP counts a
tied block as one threshold and the evaluator's MRR takes whatever order ``np.argsort`` leaves.
(One more difference: the evaluator fails on a query with a single candidate, which sklearn's
``ndcg_score`` refuses; here such a query scores like any other.) Scores must be finite: a NaN
has no place in a ranking, and ValueError says so.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

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


def tied_groups(scores: Sequence[float]) -> list[np.ndarray]:
    """Candidate indices grouped by equal score, best score first (each group in input order).
    ValueError for a score that is not finite."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} of {scores.size} scores are not finite (NaN or inf)")
    order = np.argsort(-scores, kind="stable")
    starts = np.flatnonzero(np.diff(scores[order], prepend=np.inf))
    return np.split(order, starts[1:])


def average_precision(scores: Sequence[float], labels: Sequence[float], groups: list[np.ndarray] | None = None) -> float:
    """Average precision over the full ranking: the mean, over relevant candidates (label > 0), of
    the precision at each one's rank, averaged over the orders of tied candidates. 0.0 when no
    candidate is relevant. (``groups``: the scores' tied_groups where the caller has them.)"""
    groups = tied_groups(scores) if groups is None else groups  # also refuses a non-finite score
    relevant = np.asarray(labels, dtype=np.float64) > 0
    total = int(relevant.sum())
    if total == 0:
        return 0.0
    precision_sum, ranked, hits = 0.0, 0, 0
    for group in groups:
        size, found = len(group), int(relevant[group].sum())
        if found:
            # a relevant candidate at the group's j-th place (chance found/size) has, on average,
            # (j - 1)(found - 1)/(size - 1) of the group's other relevant ones above it
            places = np.arange(1, size + 1)
            above = (places - 1) * (found - 1) / (size - 1) if size > 1 else 0.0
            precision_sum += float(np.sum(found / size * (hits + 1 + above) / (ranked + places)))
        ranked, hits = ranked + size, hits + found
    return precision_sum / total


def reciprocal_rank(scores: Sequence[float], labels: Sequence[float], k: int = 10,
                    groups: list[np.ndarray] | None = None) -> float:
    """1 / rank of the first relevant candidate (label > 0) if it is in the top ``k``, else 0.0;
    averaged over the orders of tied candidates. (``groups`` as for average_precision.)"""
    relevant = np.asarray(labels, dtype=np.float64) > 0
    ranked = 0
    for group in tied_groups(scores) if groups is None else groups:
        size, found = len(group), int(relevant[group].sum())
        if found:
            # the first relevant one sits at the group's j-th place with chance C(size-j, found-1) / C(size, found);
            # only the places inside the top k count (a long tied list, a collapsed model's, stays cheap)
            orders = math.comb(size, found)
            return sum(math.comb(size - j, found - 1) / orders / (ranked + j)
                       for j in range(1, min(size - found + 1, k - ranked) + 1))
        ranked += size
    return 0.0


def ndcg(scores: Sequence[float], gains: Sequence[float], k: int = 10, groups: list[np.ndarray] | None = None) -> float:
    """NDCG@k with linear gains: DCG = sum over the top ``k`` of gain / log2(rank + 1), divided by
    the DCG of the candidates sorted by gain (as sklearn's ``ndcg_score`` computes it, ties
    included: a tied group's places each get the group's mean gain). Gains are floats (graded
    labels welcome); 0.0 when no gain is positive. (``groups`` as for average_precision.)"""
    gains = np.asarray(gains, dtype=np.float64)
    if (gains < 0).any():
        raise ValueError("NDCG gains must be non-negative")
    if gains.size and gains.max() > np.finfo(np.float64).max / (2 * gains.size):
        # finite gains whose sums would overflow to inf (grades near 1e308): NDCG, a ratio of sums of gains, is the
        # same for the gains scaled alike
        gains = gains / gains.max()
    groups = tied_groups(scores) if groups is None else groups
    discounts = 1.0 / np.log2(np.arange(2, min(k, len(gains)) + 2))
    ideal = float(np.sum(np.sort(gains)[::-1][:k] * discounts))
    if ideal == 0.0:
        return 0.0
    dcg, ranked = 0.0, 0
    for group in groups:
        if ranked >= k:
            break
        dcg += float(gains[group].mean() * discounts[ranked : ranked + len(group)].sum())
        ranked += len(group)
    return dcg / ideal


def skip_reason(labels: Sequence[float]) -> str | None:
    """``"no_positive"``, ``"no_negative"`` or None: why the MTEB protocol would skip this query
    (a query with no candidates at all counts as having no positive)."""
    labels = np.asarray(labels, dtype=np.float64)
    if not (labels > 0).any():
        return "no_positive"
    if (labels > 0).all():
        return "no_negative"
    return None


def scores_needed(labels: Sequence[float], protocol: str) -> bool:
    """Whether a query's metrics under ``protocol`` read its scores: not for a query the MTEB
    protocol skips, nor for a no-positive query that sentence-transformers' counts as 0."""
    reason = skip_reason(labels)
    return reason is None or (protocol == "sentence-transformers" and reason == "no_negative")


def query_metrics(
    scores: Sequence[float], labels: Sequence[float], protocol: str = "mteb", k: int = 10
) -> tuple[float, float, float] | None:
    """One query's (average precision, reciprocal rank within k, NDCG@k) under a protocol (see
    PROTOCOL_RULES): None for a query the protocol skips, zeros for a no-positive query that the
    sentence-transformers protocol keeps."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if len(scores) != len(labels):
        raise ValueError(f"a query has {len(scores)} scores but {len(labels)} labels")
    reason = skip_reason(labels)
    if protocol == "mteb" and reason is not None:
        return None
    if reason == "no_positive":
        return 0.0, 0.0, 0.0
    groups = tied_groups(scores)  # once for the three metrics
    return (average_precision(scores, labels, groups), reciprocal_rank(scores, labels, k, groups),
            ndcg(scores, labels, k, groups))


def evaluate_rankings(
    queries: Iterable[tuple[Sequence[float], Sequence[float]]], protocol: str = "mteb", k: int = 10
) -> dict:
    """Mean MAP, MRR@k and NDCG@k over ``(scores, labels)`` queries under a protocol (see
    PROTOCOL_RULES).

    Returns ``{"map", f"mrr@{k}", f"ndcg@{k}", "queries_evaluated", "queries_skipped",
    "queries_skipped_by_reason": {"no_positive", "no_negative"}, "queries_scored_zero", "per_query"}``;
    ``queries_scored_zero`` counts the no-positive queries the sentence-transformers protocol
    keeps in the mean as 0; ``per_query`` holds each query's ``query_metrics`` in input order (None
    where skipped). Raises ValueError when no query is left to average.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    per_query = []
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    scored_zero = 0
    for scores, labels in queries:
        metrics = query_metrics(scores, labels, protocol, k)
        per_query.append(metrics)
        reason = skip_reason(labels)
        if metrics is None:
            skipped[reason] += 1
        else:
            scored_zero += reason == "no_positive"
    evaluated = [metrics for metrics in per_query if metrics is not None]
    if not evaluated:
        raise ValueError("no query left to evaluate: every query lacks a positive or a negative")
    means = np.mean(np.asarray(evaluated), axis=0)
    return {
        "map": float(means[0]),
        f"mrr@{k}": float(means[1]),
        f"ndcg@{k}": float(means[2]),
        "queries_evaluated": len(evaluated),
        "queries_skipped": sum(skipped.values()),
        "queries_skipped_by_reason": skipped,
        "queries_scored_zero": scored_zero,
        "per_query": per_query,
    }


def per_query_metrics(results: dict[str, dict], k: int = 10) -> list[dict[str, dict[str, float]] | None]:
    """Each query's AP, RR@k and NDCG@k for every model, from ``{model: evaluate_rankings(...)}``,
    or None for a query the protocol skips: what lets a user find the queries a model lost."""
    names = ("ap", f"rr@{k}", f"ndcg@{k}")
    models = list(results)
    rows: list[dict[str, dict[str, float]] | None] = []
    for values in zip(*(results[model]["per_query"] for model in models)):
        skipped = any(value is None for value in values)
        rows.append(None if skipped else {model: dict(zip(names, value)) for model, value in zip(models, values)})
    return rows


def queries_changed(rows: Sequence[dict | None]) -> dict[str, int]:
    """How many evaluated queries the "after" model ranks better, worse or the same as the "before"
    one, by AP (``rows`` as per_query_metrics gives them)."""
    counts = {"better": 0, "worse": 0, "same": 0}
    for row in rows:
        if row is not None:
            delta = row["after"]["ap"] - row["before"]["ap"]
            counts["better" if delta > 1e-12 else "worse" if delta < -1e-12 else "same"] += 1
    return counts


def grade_name(grade: float) -> str:
    """A grade as a JSON key: ``3.0`` -> ``"3"``, ``0.5`` -> ``"0.5"``; as exact as the float
    (shortest round-trip digits), so two grades never share a key."""
    grade = float(grade)
    return str(int(grade)) if grade.is_integer() else repr(grade)


def mean_score_per_grade(scores: Sequence[float], grades: Sequence[float]) -> dict[str, float]:
    """The mean score of the candidates of each true grade, best grade first:
    ``{"3": 1.2, "2": 0.4, ...}`` (keys from ``grade_name``; the unit is the scores' own, e.g. logits).
    A model that orders grades well shows means that fall with the grade."""
    scores, grades = np.asarray(scores, dtype=np.float64), np.asarray(grades, dtype=np.float64)
    if scores.shape != grades.shape:
        raise ValueError(f"{scores.size} scores but {grades.size} grades")
    return {grade_name(g): _mean(scores[grades == g]) for g in sorted(set(grades.tolist()), reverse=True)}


def _mean(values: np.ndarray) -> float:
    """The mean of finite ``values``, finite too: their sum, which could overflow near 1e308, is taken
    of them divided by a power of two at least their count (exact, so otherwise the same mean)."""
    scale = 2.0 ** math.ceil(math.log2(len(values)))
    return float((values / scale).mean() * scale)


def label_accuracy(
    label_probs: Sequence[Mapping[str, float]], grades: Sequence[float], word_grades: Mapping[str, float],
    by_relevance: bool = False,
) -> dict:
    """How often a graded-label teacher's most probable label word has the true grade.

    ``label_probs`` holds one ``{word: probability}`` per candidate and ``word_grades`` maps each
    word to its grade; a tie in probability goes to the word listed first in ``word_grades``.
    ``by_relevance`` (for positive/negative data, whose 1 and 0 are no grades on the words' scale,
    such as ESCI's 3/2/1/0): a prediction counts as right when it agrees on relevance (grade > 0).
    Returns ``{"accuracy", "correct", "pairs", "compared", "confusion": {true grade: {predicted
    grade: count}}}`` (grades named by ``grade_name``; ``compared`` is "grade" or "relevance").
    Raises ValueError for a word ``word_grades`` lacks.
    """
    if len(label_probs) != len(grades):
        raise ValueError(f"{len(label_probs)} label_probs but {len(grades)} grades")
    rank = {word: i for i, word in enumerate(word_grades)}
    confusion: dict[str, dict[str, int]] = {}
    correct = 0
    for probs, grade in zip(label_probs, grades):
        unknown = [word for word in probs if word not in word_grades]
        if unknown:
            raise ValueError(f"label word {unknown[0]!r} has no grade (known: {', '.join(word_grades)})")
        predicted = word_grades[min(probs, key=lambda word: (-probs[word], rank[word]))]
        correct += (predicted > 0) == (grade > 0) if by_relevance else predicted == grade
        row = confusion.setdefault(grade_name(grade), {})
        row[grade_name(predicted)] = row.get(grade_name(predicted), 0) + 1
    order = sorted(confusion, key=float, reverse=True)
    return {
        "accuracy": correct / len(grades) if len(grades) else 0.0,
        "correct": int(correct),
        "pairs": len(grades),
        "compared": "relevance" if by_relevance else "grade",
        "confusion": {true: dict(sorted(confusion[true].items(), key=lambda kv: -float(kv[0]))) for true in order},
    }


def graded_summary(
    grades: Sequence[float],
    scores_by_model: Mapping[str, Sequence[float]],
    label_probs: Sequence[Mapping[str, float]] | None = None,
    word_grades: Mapping[str, float] | None = None,
    by_relevance: bool = False,
) -> dict:
    """What graded labels add to a report, over every pair (one grade and one score per pair):
    ``{"pairs_per_grade", "mean_score_per_grade": {model: {grade: mean}}}`` and, for a teacher
    that predicts label words (``label_probs`` with ``word_grades``), ``"label_accuracy":
    {"teacher": label_accuracy(...) + {"label_grades"}}``, compared by relevance (grade > 0) where
    ``by_relevance`` (positive/negative data, or grades off the teacher's label scale)."""
    counts = Counter(grade_name(grade) for grade in grades)
    summary = {
        "pairs_per_grade": {name: counts[name] for name in sorted(counts, key=float, reverse=True)},
        "mean_score_per_grade": {name: mean_score_per_grade(s, grades) for name, s in scores_by_model.items()},
    }
    if label_probs is not None and word_grades is not None:
        accuracy = label_accuracy(label_probs, grades, word_grades, by_relevance=by_relevance)
        summary["label_accuracy"] = {"teacher": {**accuracy, "label_grades": dict(word_grades)}}
    return summary
