"""Pair selection for stage 2: turn one query's teacher-scored passages into training records
(triplets, n-tuples or listwise groups), and group a stream of scored pairs by query without
holding the file in memory.

Selection is a chain of small pure functions, each replaceable on its own:

1. ``rank_by_score``: order the passages by teacher score, best first (ties: input order); a
   passage listed again for its query takes no part (its first listing does);
2. ``choose_positive_ranks``: which ranks act as positives (``teacher``: the ``top_k`` best;
   ``labels``: those with a gold label > 0; ``both``: the union);
3. ``choose_negative_ranks``: which ranks below a positive act as its negatives (``hardest``: the
   ones just below it; ``random``: a seeded uniform draw from all below it; ``mixed``: half each);
4. ``margin_skip_reason``: whether a (positive, negative) pair is usable (a margin > 0 and >=
   ``min_margin``); a skipped negative is not replaced by another one;
5. ``format_records``: the output lines (``triplets``, ``ntuples`` or ``listwise``).

``select`` runs steps 1-4 for one query. Margins are always the teacher's, in its logit units:
``score(positive) - score(negative)``, whichever rule chose the positive; ``lift_labelled``
may first correct those scores with gold labels (``--label_margin``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Literal, get_args

import numpy as np

from rerank_distill.errors import InputError
from rerank_distill.formats import ScoredPair
from rerank_distill.jsonl import dumps, finite_number, shown

logger = logging.getLogger(__name__)

OutputFormat = Literal["triplets", "ntuples", "listwise"]
PositiveRule = Literal["teacher", "labels", "both"]
NegativeRule = Literal["hardest", "random", "mixed"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)

# Why a candidate pair, a positive or a whole query gives nothing; the keys of the skip Counter.
SKIP_REPEATED_PASSAGE = "repeated_passages"  # a query's passage listed again: only its first listing counts
SKIP_NON_POSITIVE_MARGIN = "non_positive_margin"  # pairs whose scores tie
SKIP_BELOW_MIN_MARGIN = "below_min_margin"  # pairs with 0 < margin < --min_margin
SKIP_GRADED_AS_HIGH = "negatives_graded_as_high"  # a passage below a labelled positive with as high a gold grade
SKIP_POSITIVE_WITHOUT_NEGATIVES = "positives_without_negatives"  # nothing usable ranked below
SKIP_NO_POSITIVES = "queries_without_positives"  # --positives labels: no passage labelled > 0
SKIP_TOO_FEW_PASSAGES = "queries_with_fewer_than_2_passages"  # different passages
SKIP_REASONS = (
    SKIP_REPEATED_PASSAGE,
    SKIP_NON_POSITIVE_MARGIN,
    SKIP_BELOW_MIN_MARGIN,
    SKIP_GRADED_AS_HIGH,
    SKIP_POSITIVE_WITHOUT_NEGATIVES,
    SKIP_NO_POSITIVES,
    SKIP_TOO_FEW_PASSAGES,
)


@dataclass(frozen=True)
class SelectionRules:
    """How one query's positives and negatives are chosen; the defaults are the first recipe
    (the 8 best, each with the 4 passages ranked just below it)."""

    top_k: int = 8  # positives under the teacher rule
    num_negatives: int = 4  # negatives per positive (a listwise group's size minus one)
    positives: PositiveRule = "teacher"
    negatives: NegativeRule = "hardest"
    min_margin: float = 0.0  # in the teacher's logit units
    seed: int = 42  # for random and mixed negatives


@dataclass(frozen=True)
class Selection:
    """One positive and the negatives kept for it, as indices into the query's passages;
    negatives are ordered best-scored first, and each scores strictly below the positive."""

    positive: int
    negatives: tuple[int, ...]


def lift_labelled(scores: Sequence[float], labels: Sequence[float], margin: float) -> list[float]:
    """The teacher's scores corrected by the gold labels: each grade's passages are shifted up,
    together, until the lowest of them scores ``margin`` above the highest passage of any lower
    grade. Within a grade the teacher's order and margins stay as they were; a grade the teacher
    already ranks above all lower ones (by ``margin``) is not moved. So a student trained on the
    result learns the teacher's fine order and never a teacher mistake the labels contradict."""
    lifted = [float(score) for score in scores]
    highest_below: float | None = None
    for grade in sorted(set(labels)):
        members = [index for index, label in enumerate(labels) if label == grade]
        if highest_below is not None:
            lowest = min(lifted[index] for index in members)
            shift = max(0.0, highest_below + margin - lowest)
            # rounded below it (large scores, or a margin under the scores' spacing, where the shift may round to 0):
            # on by the sums' rounding step, not the shift's own ulp, which can be 10^15 times finer
            rounding_step = math.ulp(max(abs(lowest), abs(highest_below), shift))
            while (lowest + shift) - highest_below < margin:
                shift += rounding_step
            for index in members:
                lifted[index] += shift
        top = max(lifted[index] for index in members)
        highest_below = top if highest_below is None else max(highest_below, top)
    return lifted


def rank_by_score(scores: Sequence[float]) -> list[int]:
    """Indices of ``scores`` from the highest score to the lowest; equal scores keep input order,
    so the ranking (and every record after it) is the same on every run."""
    return sorted(range(len(scores)), key=lambda index: -scores[index])  # sorted() is stable


def choose_positive_ranks(
    order: Sequence[int], labels: Sequence[float | None] | None, top_k: int, rule: PositiveRule
) -> list[int]:
    """The ranks (0 = best, positions in ``order``) that act as positives, best first.

    ``teacher``: the ``top_k`` best, never the last-ranked passage (nothing lies below it to pair
    with). ``labels``: every passage whose gold label is > 0, wherever the teacher ranks it
    (``top_k`` is not used). ``both``: the union of the two. ``labels[i]`` is passage i's grade;
    the label rules need one for every passage (ValueError otherwise; the stage checks first).
    """
    teacher = set(range(min(top_k, len(order) - 1))) if rule in ("teacher", "both") else set()
    labelled: set[int] = set()
    if rule in ("labels", "both"):
        if labels is None or any(labels[index] is None for index in order):
            raise ValueError(f"--positives {rule} needs a gold label for every passage")
        labelled = {rank for rank, index in enumerate(order) if labels[index] > 0}
    return sorted(teacher | labelled)


def next_lower_ranks(positive_rank: int, num_passages: int, num_negatives: int) -> range:
    """The ``num_negatives`` ranks just below ``positive_rank`` (fewer near the bottom of the list)."""
    return range(positive_rank + 1, min(positive_rank + 1 + num_negatives, num_passages))


def choose_negative_ranks(
    positive_rank: int,
    num_passages: int,
    num_negatives: int,
    rule: NegativeRule,
    rng: random.Random | None = None,
) -> list[int]:
    """The ranks that act as negatives for the positive at ``positive_rank``, best first; all of
    them lie below it, and there are ``num_negatives`` or, near the bottom, all that lie below.

    ``hardest``: the ranks just below the positive. ``random``: drawn uniformly without
    replacement from every rank below it, with ``rng``. ``mixed``: the hardest
    ``num_negatives - num_negatives // 2`` (hard negatives carry most of the signal, so they
    get the odd one), then ``num_negatives // 2`` drawn from the ranks below those.
    """
    hardest_count = {"hardest": num_negatives, "random": 0, "mixed": num_negatives - num_negatives // 2}[rule]
    hardest = list(next_lower_ranks(positive_rank, num_passages, hardest_count))
    rest = range(positive_rank + 1 + len(hardest), num_passages)
    draw_count = min(num_negatives - hardest_count, len(rest))
    if draw_count == 0:
        return hardest
    if rng is None:
        raise ValueError(f"--negatives {rule} needs a random generator")
    return hardest + sorted(rng.sample(rest, draw_count))


def query_rng(seed: int, query: str) -> random.Random:
    """The random generator for one query's draws, seeded from ``(seed, query)``: a query gets the
    same negatives on every run and whatever other queries the file holds or in which order."""
    digest = hashlib.blake2b(f"{seed}\n{query}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def margin_skip_reason(margin: float, min_margin: float = 0.0) -> str | None:
    """Why a (positive, negative) pair must not be used, or None when it is usable: a margin of
    zero or less (tied scores) has no direction for the student to learn; a margin below
    ``min_margin`` (logit units) is a near-tie that is mostly the teacher's noise. (Two listings
    of one text never meet here: ``select`` keeps a passage's first listing only.)
    """
    if not margin > 0:
        return SKIP_NON_POSITIVE_MARGIN
    if margin < min_margin * (1 - 1e-9):  # (0.3 - 0.1 is 0.19999999999999998: at --min_margin 0.2, kept)
        return SKIP_BELOW_MIN_MARGIN
    return None


def graded_as_high(labels: Sequence[float | None] | None, positive: int, negative: int, rule: PositiveRule) -> bool:
    """Whether a negative must not face a positive the gold labels chose (``--positives labels`` or
    ``both``): its grade is as high as the positive's, so the pair would teach the student to put
    the positive above a passage the labels rank at least as high (an exact match as the negative
    of a substitute, say). The teacher's own positives (a grade of 0, or none) face whatever it
    ranked below them."""
    if rule == "teacher" or labels is None or labels[positive] is None or labels[negative] is None:
        return False
    return labels[positive] > 0 and labels[negative] >= labels[positive]


def first_listings(passages: Sequence[str]) -> list[int]:
    """Indices of each distinct passage's first listing, in input order."""
    first: dict[str, int] = {}
    for index, passage in enumerate(passages):
        first.setdefault(passage, index)
    return list(first.values())


def select(
    passages: Sequence[str],
    scores: Sequence[float],
    labels: Sequence[float | None] | None,
    rules: SelectionRules,
    rng: random.Random | None = None,
) -> tuple[list[Selection], Counter]:
    """Positives and their usable negatives for one query.

    ``scores`` are the teacher's logits, ``labels`` the gold grades (None when the input has
    none), ``rng`` the query's generator for random and mixed negatives (see ``query_rng``).
    Returns the selections ordered by the positive's rank, and a Counter of skips keyed by
    ``SKIP_*``: passages listed again (a repeat of a text would pair with itself or teach two
    margins for one pair, so only the first listing, with its score, takes part); pairs with a
    margin that is not positive or below ``rules.min_margin``; positives left without a negative;
    and 1 for a query with fewer than two different passages or with no positive.
    """
    if len(passages) != len(scores):
        raise ValueError(f"{len(passages)} passages but {len(scores)} scores")
    skipped: Counter = Counter()
    kept = set(first_listings(passages))
    if len(kept) < len(passages):
        skipped[SKIP_REPEATED_PASSAGE] += len(passages) - len(kept)
    if len(kept) < 2:
        skipped[SKIP_TOO_FEW_PASSAGES] += 1
        return [], skipped
    order = [index for index in rank_by_score(scores) if index in kept]
    positive_ranks = choose_positive_ranks(order, labels, rules.top_k, rules.positives)
    if not positive_ranks:
        skipped[SKIP_NO_POSITIVES] += 1
        return [], skipped
    selections = []
    for positive_rank in positive_ranks:
        positive = order[positive_rank]
        # the passages below it that may face it: the labels rule out those graded as high (they are passed
        # over, so the next lower-graded ones take their places, and counted); near-ties stay in and are skipped
        below = [index for index in order[positive_rank + 1:]
                 if not graded_as_high(labels, positive, index, rules.positives)]
        skipped[SKIP_GRADED_AS_HIGH] += len(order) - positive_rank - 1 - len(below)
        kept = []
        # (ranks within ``below``, all of which lie under the positive: as if it stood at rank -1 there)
        for negative_rank in choose_negative_ranks(-1, len(below), rules.num_negatives, rules.negatives, rng):
            negative = below[negative_rank]
            reason = margin_skip_reason(scores[positive] - scores[negative], rules.min_margin)
            if reason is not None:
                skipped[reason] += 1
            else:
                kept.append(negative)
        if kept:
            selections.append(Selection(positive, tuple(kept)))
        else:
            skipped[SKIP_POSITIVE_WITHOUT_NEGATIVES] += 1
    return selections, skipped


# --- output records ---


def triplet_records(query: str, passages: Sequence[str], scores: Sequence[float], selection: Selection) -> list[dict]:
    """One ``{"query", "positive", "negative", "score"}`` line per negative, where ``score`` is
    the teacher margin score(positive) - score(negative) in logit units."""
    positive = selection.positive
    return [
        {"query": query, "positive": passages[positive], "negative": passages[n], "score": scores[positive] - scores[n]}
        for n in selection.negatives
    ]


def ntuple_record(query: str, passages: Sequence[str], scores: Sequence[float], selection: Selection) -> dict:
    """``{"query", "positive", "negatives": [...], "scores": [s_pos, s_neg1, ...]}`` with the raw
    teacher logits (training takes the margins), negatives best-scored first. A tuple holds
    fewer than ``num_negatives`` negatives near the bottom of the ranking or after skips."""
    return {
        "query": query,
        "positive": passages[selection.positive],
        "negatives": [passages[n] for n in selection.negatives],
        "scores": [scores[selection.positive], *(scores[n] for n in selection.negatives)],
    }


def listwise_record(
    query: str,
    passages: Sequence[str],
    scores: Sequence[float],
    labels: Sequence[float | None] | None,
    selection: Selection,
) -> dict:
    """``{"query", "passages": [...], "scores": [...], "labels": [...]}``: the positive first, then
    its negatives best-scored first, with raw teacher logits and, when every passage of the
    group has one, the gold grades (``labels`` is left out otherwise)."""
    group = [selection.positive, *selection.negatives]
    record = {
        "query": query,
        "passages": [passages[i] for i in group],
        "scores": [scores[i] for i in group],
    }
    if labels is not None and all(labels[i] is not None for i in group):
        record["labels"] = [labels[i] for i in group]
    return record


def format_records(
    output_format: OutputFormat,
    query: str,
    passages: Sequence[str],
    scores: Sequence[float],
    labels: Sequence[float | None] | None,
    selections: Iterable[Selection],
) -> list[dict]:
    """The output lines of one query's selections in ``output_format``: a triplet per (positive,
    negative) pair, or an n-tuple or a listwise group per positive, in the selections' order."""
    records: list[dict] = []
    for selection in selections:
        if output_format == "triplets":
            records.extend(triplet_records(query, passages, scores, selection))
        elif output_format == "ntuples":
            records.append(ntuple_record(query, passages, scores, selection))
        elif output_format == "listwise":
            records.append(listwise_record(query, passages, scores, labels, selection))
        else:
            raise ValueError(f"unknown output format {output_format!r}; choose one of {OUTPUT_FORMATS}")
    return records


# --- a whole file: every query's records ---


def unread_flags(output_format: OutputFormat, positives: PositiveRule, negatives: NegativeRule,
                 label_margin: float | None) -> dict[str, str]:
    """The create_triplets.py flags these rules never read, each with why (flag name -> reason)."""
    unread = {}
    if positives == "teacher" and label_margin is None and output_format != "listwise":
        unread["label_column"] = (f"{output_format} read gold labels only for --positives labels or both and "
                                  "--label_margin")
    if output_format == "listwise":
        unread["num_negatives"] = "listwise groups take --group_size - 1 negatives"
    else:
        unread["group_size"] = f"it sizes listwise groups only, not {output_format}"
    if positives == "labels":
        unread["top_k"] = "--positives labels takes the gold-labelled passages, not the teacher's top"
    if negatives == "hardest":
        unread["seed"] = "it seeds random and mixed negatives only"
    return unread


def require_labels(pairs: Iterable[ScoredPair], flag: str, label_column: str | None = None) -> Iterator[ScoredPair]:
    """Pass the pairs on, stopping at the first one without a gold label (``flag`` needs them; they
    are read from ``label_column``, by default "label")."""
    for pair in pairs:
        if pair.label is None:
            raise InputError(
                f'{flag} needs a gold label on every line, but this one has no "{label_column or "label"}" (or it is '
                "null). Stage 1 keeps labels when its input has them (e.g. MTEB positive/negative lists), but "
                "passages scored "
                "as queries have none: leave such files out, or for unlabelled data "
                + ("use --positives teacher" if flag.startswith("--positives") else f"drop {flag}"),
                pair.path,
                pair.line,
            )
        yield pair


def write_records(
    groups: Iterable[QueryGroup], out: IO[str], rules: SelectionRules, output_format: OutputFormat,
    label_margin: float | None, source: str,
) -> Counter:
    """Select and write every group's records (scores first corrected by the gold labels when
    ``label_margin`` is set, see lift_labelled); returns counts of queries, pairs, records, the
    (positive, negative) pairs in them, queries the labels corrected and skips by reason.
    Raises InputError, naming ``source``, when not one record could be made."""
    counts: Counter = Counter()
    # raised once every group is read: in a first pass over input not grouped by query, a group may be
    # only part of its query's lines, whose whole list pairs other passages (QueriesNotGrouped comes first)
    overflow: InputError | None = None
    first_blank = None  # where the first blank query or passage text is: paired as it is, but said
    for group in groups:
        counts.update(queries=1, pairs=len(group.passages))
        blank = {"blank_queries": int(not group.query.strip()),
                 "blank_passages": sum(not passage.strip() for passage in group.passages)}  # fmt: skip
        if any(blank.values()):
            counts.update(blank)
            first_blank = first_blank or f"{group.path or source}:{group.line}"
        group = combined_again(group)
        if len(kept := first_listings(group.passages)) < len(group.passages):
            # repeats go before the labels correct the scores, or a repeat's other label would move them
            counts.update({SKIP_REPEATED_PASSAGE: len(group.passages) - len(kept)})
            group = QueryGroup(group.query, [group.passages[i] for i in kept], [group.scores[i] for i in kept],
                               [group.labels[i] for i in kept], group.line, group.path)
        scores = group.scores
        if label_margin is not None:
            scores = lift_labelled(group.scores, group.labels, label_margin)
            counts.update(queries_corrected_by_labels=int(scores != group.scores))
        selections, skipped = select(group.passages, scores, group.labels, rules, query_rng(rules.seed, group.query))
        records = format_records(output_format, group.query, group.passages, scores, group.labels, selections)
        for record in records:
            # scores near 1e308: their margin (a triplet's score; the widest of a list's) overflows
            numbers = record["scores"] if "scores" in record else [record["score"]]
            if not math.isfinite(max(numbers) - min(numbers) if len(numbers) > 1 else numbers[0]):
                overflow = overflow or InputError(f"the teacher scores of query {group.query[:60]!r} overflow in a "
                                                  f"margin ({numbers[:4]}); rescale them", group.path or source,
                                                  group.line)
                continue
            out.write(dumps(record) + "\n")
        counts.update(records=len(records))
        counts.update(pairs_kept=sum(len(s.negatives) for s in selections))
        in_records = {index for selection in selections for index in (selection.positive, *selection.negatives)}
        counts.update(passages_in_no_record=len(group.passages) - len(in_records))  # (repeats counted above)
        counts.update(skipped)
    if overflow is not None:
        raise overflow
    if first_blank:
        logger.warning("%s: %d blank query texts and %d blank passages (the first in the query at %s) are paired as "
                       "they are: clean the data if they are mistakes", source, counts["blank_queries"],
                       counts["blank_passages"], first_blank)
    if counts["records"] == 0:
        # raised while the output is still a temporary file, so nothing that looks complete is left
        reasons = ", ".join(f"{counts[reason]} {reason}" for reason in SKIP_REASONS if counts[reason])
        raise InputError(
            f"no {output_format} could be made from {counts['queries']} queries ({counts['pairs']} pairs); "
            f"skipped: {reasons or 'nothing'}. Each query needs at least two different passages with "
            "different teacher scores (and, with --min_margin, scores further apart than it)",
            source,
        )
    return counts


def run_summary(counts: Counter, output_format: OutputFormat, label_margin: float | None, input_grouped: bool,
                seconds: float) -> dict:
    """What a create_triplets run did, from write_records' counts, as recorded beside its output."""
    return {
        "format": output_format,
        **{key: counts[key] for key in ("queries", "pairs", "records", "pairs_kept")},
        # below every positive's negatives, not drawn, only in skipped pairs, or of a query skipped whole: with the
        # repeats, what no record holds
        "passages_in_no_record": counts["passages_in_no_record"],
        "skipped": {reason: counts[reason] for reason in SKIP_REASONS},
        "queries_corrected_by_labels": counts["queries_corrected_by_labels"] if label_margin is not None else None,
        "input_grouped": input_grouped,
        "seconds": round(seconds, 3),
    }


def summary_message(summary: dict, output_path: str) -> str:
    """One log line for a run_summary: what was written, from what, and what was skipped."""
    seconds = summary["seconds"]
    corrected = summary["queries_corrected_by_labels"]
    return (f"Wrote {summary['records']} records ({summary['format']}; {summary['pairs_kept']} positive-negative "
            f"pairs) from {summary['queries']} queries ({summary['pairs']} pairs, "
            f"{summary['pairs'] / max(seconds, 1e-9):.0f} pairs/s) to {output_path} in {seconds:.1f} s; skipped: "
            + ", ".join(f"{count} {reason}" for reason, count in summary["skipped"].items())
            + f"; {summary['passages_in_no_record']} passages are in no record (further down the list than any "
            "positive's negatives, passed over by a random draw, only in skipped pairs, or of a query skipped whole)"
            + ("" if corrected is None
               else f"; gold labels corrected the teacher's scores (order or margins) in {corrected} queries"))


def teacher_scores_of(pair: ScoredPair) -> dict | None:
    """A line's ``teacher_scores`` (several teachers: ``{teacher: score}``), or None where it has
    none; InputError at the line where it is not a map of finite numbers."""
    value = pair.extra.get("teacher_scores")
    if value is None:
        return None
    scores = {teacher: finite_number(score) for teacher, score in value.items()} if isinstance(value, dict) else {}
    if not scores or None in scores.values():  # (numeric strings count, as for "score")
        raise InputError(f'field "teacher_scores" must map each teacher to a finite number, got {shown(value)}',
                         pair.path, pair.line)
    return scores


def combined_again(group: QueryGroup) -> QueryGroup:
    """Several teachers: the group's combined scores made again over the whole group, as stage 1
    makes them over a list (the mean of each teacher's z-scores within it; see
    scoring.zscore_by_query). Where lines of one query text come from several lists (records or
    files: a passage scored as a query is also a query of the data), stage 1 standardised each
    list apart, and their combined scores are on different scales; for one list this gives the
    same scores back."""
    from rerank_distill.scoring import combine_teachers

    by_line = group.teacher_scores
    if not by_line or any(scores is None or scores.keys() != by_line[0].keys() for scores in by_line):
        return group
    if len(by_line[0]) < 2:  # one teacher: stage 1 keeps its raw logits as the score, with nothing to combine
        return group
    by_teacher = [np.array([scores[name] for scores in by_line], dtype=np.float64) for name in by_line[0]]
    combined = combine_teachers(by_teacher, np.zeros(len(by_line), dtype=np.int64))
    return replace(group, scores=[float(score) for score in combined])


# --- grouping a stream of scored pairs by query ---


@dataclass
class QueryGroup:
    """One query's scored candidates, in the order the input gave them."""

    query: str
    passages: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # teacher logits, parallel to passages
    labels: list[float | None] = field(default_factory=list)  # gold grades (None: the line had none)
    line: int = 0  # input line of the query's first pair, for messages
    path: str = ""  # and its file
    # several teachers: each line's {teacher: score}, which the combined score was made from (None: none)
    teacher_scores: list[dict | None] = field(default_factory=list)


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
            group = QueryGroup(pair.query, line=pair.line, path=pair.path)
        group.passages.append(pair.passage)
        group.scores.append(pair.score)
        group.labels.append(pair.label)
        group.teacher_scores.append(teacher_scores_of(pair))
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
            line = json.dumps([pair.query, pair.passage, pair.score, pair.label, pair.line, pair.path,
                               teacher_scores_of(pair)], ensure_ascii=False)
            # (a file name of bytes that are not UTF-8 holds lone surrogates: surrogateescape gives the bytes back)
            encoded = line.encode("utf-8", "surrogateescape") + b"\n"
            spill.write(encoded)
            offset += len(encoded)
        for offsets in index.values():
            group: QueryGroup | None = None
            for offset in offsets:
                spill.seek(offset)
                query, passage, score, label, line_number, path, teacher_scores = json.loads(
                    spill.readline().decode("utf-8", "surrogateescape"))
                group = group or QueryGroup(query, line=line_number, path=path)
                group.passages.append(passage)
                group.scores.append(score)
                group.labels.append(label)
                group.teacher_scores.append(teacher_scores)
            yield group
