"""Triplet selection: turn one query's teacher-scored passages into (positive, hard negative,
margin) triplets, and group a stream of scored pairs by query without holding the file in memory.

The selection is a chain of small rules so that later options can replace one link:

1. ``rank_by_score``: order the passages by teacher score, best first (ties: input order);
2. ``top_k_positive_ranks``: which ranks act as positives (the ``top_k`` best);
3. ``next_lower_ranks``: which ranks act as each positive's hard negatives (the next few below it);
4. ``skip_reason``: whether a (positive, negative) pair is usable (different text, positive margin).

Margins are in the teacher's logit units: ``score(positive) - score(negative)``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from rerank_distill.formats import ScoredPair

# Reasons a candidate pair or a whole query gives no triplet; the keys of the skip Counter.
SKIP_IDENTICAL_TEXT = "identical_text"
SKIP_NON_POSITIVE_MARGIN = "non_positive_margin"
SKIP_TOO_FEW_PASSAGES = "queries_with_fewer_than_2_passages"
SKIP_REASONS = (SKIP_IDENTICAL_TEXT, SKIP_NON_POSITIVE_MARGIN, SKIP_TOO_FEW_PASSAGES)


@dataclass(frozen=True)
class Triplet:
    """A positive passage, a hard negative for it, and the teacher's margin between them."""

    positive: str
    negative: str
    margin: float  # score(positive) - score(negative), in the teacher's logit units; always > 0


def rank_by_score(scores: Sequence[float]) -> list[int]:
    """Indices of ``scores`` from the highest score to the lowest; equal scores keep input order,
    so the ranking (and every triplet after it) is the same on every run."""
    return sorted(range(len(scores)), key=lambda index: -scores[index])  # sorted() is stable


def top_k_positive_ranks(num_passages: int, top_k: int) -> range:
    """The ranks (0 = best) used as positives: the ``top_k`` best, or all when there are fewer."""
    return range(min(top_k, num_passages))


def next_lower_ranks(positive_rank: int, num_passages: int, num_negatives: int) -> range:
    """The ranks used as hard negatives for the positive at ``positive_rank``: the
    ``num_negatives`` ranks just below it (fewer near the bottom of the list)."""
    return range(positive_rank + 1, min(positive_rank + 1 + num_negatives, num_passages))


def skip_reason(positive: str, negative: str, margin: float) -> str | None:
    """Why a (positive, negative) pair must not become a triplet, or None when it is usable.

    Identical texts are checked first: a passage duplicated in a query's candidates teaches
    nothing whatever the two scores are. A margin of zero or less (tied scores) has no
    direction for the student to learn.
    """
    if positive == negative:
        return SKIP_IDENTICAL_TEXT
    if not margin > 0:
        return SKIP_NON_POSITIVE_MARGIN
    return None


def select_triplets(
    passages: Sequence[str], scores: Sequence[float], top_k: int, num_negatives: int
) -> tuple[list[Triplet], Counter]:
    """Hard-negative triplets for one query from its passages and their teacher scores.

    Each of the ``top_k`` best-scored passages is paired with the ``num_negatives`` passages
    ranked just below it. Returns the triplets, ordered by the positive's rank then the
    negative's, and a Counter of skips keyed by ``SKIP_*``: candidate pairs with identical
    text or a non-positive margin, and ``SKIP_TOO_FEW_PASSAGES`` = 1 for a query with fewer
    than two passages. Margins are in the teacher's logit units.
    """
    if len(passages) != len(scores):
        raise ValueError(f"{len(passages)} passages but {len(scores)} scores")
    skipped: Counter = Counter()
    if len(passages) < 2:
        skipped[SKIP_TOO_FEW_PASSAGES] += 1
        return [], skipped
    order = rank_by_score(scores)
    triplets = []
    for positive_rank in top_k_positive_ranks(len(order), top_k):
        positive = order[positive_rank]
        for negative_rank in next_lower_ranks(positive_rank, len(order), num_negatives):
            negative = order[negative_rank]
            margin = scores[positive] - scores[negative]
            reason = skip_reason(passages[positive], passages[negative], margin)
            if reason is not None:
                skipped[reason] += 1
                continue
            triplets.append(Triplet(passages[positive], passages[negative], margin))
    return triplets, skipped


def triplet_record(query: str, triplet: Triplet) -> dict:
    """The output line for one triplet: ``{"query", "positive", "negative", "score"}`` where
    ``score`` is the teacher margin (logit units)."""
    return {"query": query, "positive": triplet.positive, "negative": triplet.negative, "score": triplet.margin}


# --- grouping a stream of scored pairs by query ---


@dataclass
class QueryGroup:
    """One query's scored candidates, in the order the input gave them."""

    query: str
    passages: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # teacher logits, parallel to passages
    line: int = 0  # input line of the query's first pair, for messages


class QueriesNotGrouped(Exception):
    """A query reappeared after its run of consecutive lines had ended, so the input is not
    grouped by query; the caller should regroup with ``iter_query_groups_indexed``."""

    def __init__(self, query: str, line: int):
        super().__init__(f"line {line}: query {query[:60]!r} appears again after its lines had ended")
        self.query = query
        self.line = line


def query_key(query: str) -> bytes:
    """A 16-byte digest standing for a query, so remembering every query costs ~100 bytes each
    whatever its length (collision odds for a billion queries are about 1e-21)."""
    return hashlib.blake2b(query.encode("utf-8"), digest_size=16).digest()


def iter_query_groups(pairs: Iterable[ScoredPair]) -> Iterator[QueryGroup]:
    """Yield each run of consecutive pairs with the same query as one group.

    Holds one query's candidates plus a digest of each finished query, not the whole input.
    Raises QueriesNotGrouped when a query reappears after its run ended, rather than silently
    splitting it into two groups.
    """
    finished: set[bytes] = set()
    group: QueryGroup | None = None
    for pair in pairs:
        if group is None or pair.query != group.query:
            if group is not None:
                finished.add(query_key(group.query))
                yield group
            if query_key(pair.query) in finished:
                raise QueriesNotGrouped(pair.query, pair.line)
            group = QueryGroup(pair.query, line=pair.line)
        group.passages.append(pair.passage)
        group.scores.append(pair.score)
    if group is not None:
        yield group


def iter_query_groups_indexed(pairs: Iterable[ScoredPair], spill_dir: str | None = None) -> Iterator[QueryGroup]:
    """Yield every query's pairs as one group, in order of first appearance, for input that is
    not grouped by query. Each group equals what ``iter_query_groups`` gives for the same lines
    written grouped.

    The pairs are copied to an anonymous temporary file in ``spill_dir`` (the system's temp
    directory when None; it vanishes on exit, even on a crash) while an index keeps each
    line's byte offset per query; a second pass reads each query's lines back. Memory: one
    digest per query plus 8 bytes per pair.
    """
    index: dict[bytes, array] = {}  # insertion order = order of first appearance
    with tempfile.TemporaryFile(mode="w+b", dir=spill_dir) as spill:
        offset = 0
        for pair in pairs:
            index.setdefault(query_key(pair.query), array("q")).append(offset)
            # floats round-trip exactly through JSON (repr), so scores come back unchanged
            line = json.dumps([pair.query, pair.passage, pair.score, pair.line], ensure_ascii=False)
            encoded = line.encode("utf-8") + b"\n"
            spill.write(encoded)
            offset += len(encoded)
        for offsets in index.values():
            group: QueryGroup | None = None
            for offset in offsets:
                spill.seek(offset)
                query, passage, score, line_number = json.loads(spill.readline())
                group = group or QueryGroup(query, line=line_number)
                group.passages.append(passage)
                group.scores.append(score)
            yield group
