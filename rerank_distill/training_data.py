"""Training files for train.py: each kind of file (triplets, n-tuples, listwise groups, teacher
scores, labelled lists) read into the columns its loss takes, and the warning for a teacher
that barely tells candidates apart."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from rerank_distill.errors import InputError
from rerank_distill.formats import (
    TRAINING_RECORDS,
    ListOddities,
    RankingQuery,
    ScoredPair,
    detect_format,
    iter_ranking_queries,
    iter_rows,
    iter_scored_pairs,
    training_record_kind,
    warn_label_column_unread,
)
from rerank_distill.jsonl import get_number, get_text, get_text_list
from rerank_distill.losses import LOSSES

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Training data: one reader per kind of file, detected from the first record's fields
# ---------------------------------------------------------------------------------------------

DATA_KINDS = {
    "triplets": f"triplets {TRAINING_RECORDS['triplets']} (create_triplets.py)",
    "ntuples": f"n-tuples {TRAINING_RECORDS['ntuples']} (create_triplets.py --format ntuples)",
    "listwise": f"listwise groups {TRAINING_RECORDS['listwise']} (create_triplets.py --format listwise)",
    "scores": 'teacher scores, one pair a line {"query", "passage"|"content", "score"} (generate_logits.py)',
    "labelled": 'labelled ranking data: MTEB {"query", "positive": [...], "negative": [...]}, '
    '{"query", "pos", "neg"} or graded rows {"query", "passage", "label"}',
}
RANKING_KINDS = ("scores", "labelled")  # kinds whose records can carry gold labels per candidate
# Below this root-mean-square within-query difference (in logits) a teacher barely tells
# candidates apart: sigmoid(0.1) - sigmoid(0) is 2.5 points of probability.
MIN_TEACHER_SPREAD = 0.1


@dataclass
class TrainingData:
    """The columns of one kind of training file as its loss takes them: ``query``, then the
    documents, then ``label`` (teacher margins, scores or targets, already divided by the teacher
    temperature)."""

    kind: str
    columns: dict[str, list]
    teacher_spread: float | None = None  # root-mean-square within-query difference of raw teacher scores
    ragged: bool = False  # n-tuples with differing negative counts (a missing one: "" with a NaN margin)

    def to_dataset(self):
        """A ``datasets.Dataset`` with the columns in order (CrossEncoderTrainer hands the text
        columns to the loss in column order)."""
        from datasets import Dataset

        return Dataset.from_dict(self.columns)


def column_values(dataset, name: str) -> list:
    """Every value of column ``name`` of a ``datasets.Dataset`` (its selected rows, in order), as a
    list: read whole through Arrow, which is about a hundred times faster than going through
    ``dataset[name]`` value by value (1.7 million triplets: seconds, not minutes, a pass)."""
    return dataset.with_format("arrow")[name].to_pylist()


def detect_data_kind(record: dict, path: str, line: int, input_format: str = "auto",
                     label_column: str | None = None) -> str:
    """The kind of training file (a key of DATA_KINDS) one record belongs to: from its fields, or
    for a named ``input_format`` (formats.INPUT_FORMATS), the kind that format is."""
    kind = training_record_kind(record)
    if input_format != "auto":
        if kind:  # stage 2's records, which no --input_format names: the flag is what is wrong
            raise InputError(f"this is a line of {DATA_KINDS[kind]}, but --input_format {input_format} names a "
                             "ranking-data format; leave --input_format out for this file", path, line)
        return "scores" if input_format == "scores" else "labelled"
    if kind:
        return kind
    try:
        return "scores" if detect_format(record, path, line, label_column) == "scores" else "labelled"
    except InputError:
        kinds = "; ".join(DATA_KINDS.values())
        raise InputError(f"cannot tell the kind of training data from the fields {sorted(record)}; "
                         f"expected one of: {kinds}", path, line) from None


def check_kind(loss: str, kind: str, path: str, line: int, fields: list[str]) -> None:
    """InputError naming the file, what it holds and what ``--loss`` needs, when they differ."""
    if kind not in LOSSES[loss].inputs:
        needs = " or ".join(DATA_KINDS[k] for k in LOSSES[loss].inputs)
        raise InputError(
            f"--loss {loss} trains on {needs}, but this file holds {DATA_KINDS[kind]} "
            f"(from the fields {fields} of line {line}); pass the matching file or another --loss", path
        )


def read_training_data(
    source: str, loss: str, teacher_temperature: float = 1.0, fused_forward: bool = True,
    input_format: str = "auto", label_column: str | None = None, hub: str = "huggingface",
    cache_dir: str | None = None, show_progress: bool = False,
) -> TrainingData:
    """Read and validate a whole training file for ``--loss loss`` (see LOSSES for the kinds each
    takes), with teacher scores and margins divided by ``teacher_temperature``. ``input_format``
    names a ranking-data format (else the kind is told from the fields) and ``label_column`` the
    grade column of labelled rows, as for iter_ranking_queries; ``hub``/``cache_dir``: where a hub
    data set is fetched from; ``show_progress``: a bar of the records read (millions take a minute).

    Raises InputError naming file:line and field for a bad record, for an empty or missing file,
    for a file of a kind the loss does not train on, and for n-tuples with differing negative
    counts where sentence-transformers' MarginMSELoss (``fused_forward`` False) would get them.
    """
    if not 0 < teacher_temperature < math.inf:  # (at inf every target would be 0: a student taught nothing)
        raise InputError(f"--teacher_temperature must be positive and finite, got {teacher_temperature}")
    rows = iter_rows(source, hub, cache_dir)  # one pass: its first record tells the kind, then all are read
    first = next(rows, None)
    if first is None:
        raise InputError("contains no records (the file is empty)", source)
    path, line, record = first
    kind = detect_data_kind(record, path, line, input_format, label_column)
    check_kind(loss, kind, path, line, sorted(record))
    rows = itertools.chain([first], rows)
    from tqdm.auto import tqdm

    def counted(items: Iterable, unit: str) -> Iterable:
        # the bar wraps what is read: scores and labelled data are read again, as pairs or queries, not as rows
        return tqdm(items, unit=unit, desc=f"reading {kind}", disable=not show_progress)

    if label_column and kind in ("triplets", "ntuples", "listwise"):
        warn_label_column_unread(label_column, path, f"{DATA_KINDS[kind]} carry no gold labels")
    if kind in ("triplets", "ntuples", "listwise"):
        rows = _warning_of_odd_records(rows, kind, source)
    if kind in ("triplets", "ntuples"):
        rows = counted(rows, "record")
        data = _triplets(rows, teacher_temperature) if kind == "triplets" else _ntuples(rows, teacher_temperature)
        if data.ragged and loss == "margin_mse" and not fused_forward:
            raise InputError("the n-tuples have differing numbers of negatives, which only the fused MarginMSE "
                             "takes; drop --no_fused_forward", source)
    elif kind == "listwise":
        data = _listwise(counted(rows, "record"), teacher_temperature)
    elif kind == "scores":
        data = _pointwise_scores(counted(iter_scored_pairs(source, label_column, hub, cache_dir), "pair"), loss,
                                 teacher_temperature, source, label_column)
    else:
        data = _labelled(counted(iter_ranking_queries(source, input_format, hub, cache_dir, label_column=label_column),
                                 "query"), source)
    if not LOSSES[loss].reads_teacher:  # how much scores it never reads vary is nothing to warn about
        data.teacher_spread = None
    return data


# The text fields of each kind of stage 2's records, the query first
TEXT_FIELDS = {"triplets": ("query", "positive", "negative"), "ntuples": ("query", "positive", "negatives"),
               "listwise": ("query", "passages")}


def _warning_of_odd_records(rows: Iterable[tuple[str, int, dict]], kind: str,
                            source: str) -> Iterator[tuple[str, int, dict]]:
    """``rows`` of stage 2's records of ``kind`` as they are, with a warning once they are read of the
    blank query and passage texts among them, of the records that list a passage twice (a triplet's
    positive as its negative: a margin between a passage and itself) and of the records that repeat
    an earlier one's texts: trained on as they are, but said, as every other reader says them (a file
    made by hand, or one file joined to itself; create_triplets.py warns of the blank texts it pairs,
    and writes no record twice nor pairs a text with itself). A field of another type is left to the
    reader. (A record is remembered by a hash of its texts: 1.4 to 2.2 microseconds a triplet, 18 MiB
    for 300,000 synthetic ones on a 2-core CPU, a small share of the time reading them takes.)"""
    fields = TEXT_FIELDS[kind]
    blank_queries = blank_passages = listing_twice = repeats = 0
    first_blank = first_listing_twice = first_repeat = None  # "path:line" of the first record of each
    seen: set[int] = set()
    for row in rows:
        record = row[2]
        texts = []
        for name in fields:
            value = record.get(name)
            if value.__class__ is list:
                texts += value
            else:
                texts.append(value)
        blank = [text.__class__ is str and not text.strip() for text in texts]
        if any(blank):
            blank_queries += blank[0]
            blank_passages += sum(blank[1:])
            first_blank = first_blank or f"{row[0]}:{row[1]}"
        try:
            texts_hash = hash(tuple(texts))
        except TypeError:  # (a dict where a text belongs: the reader names it)
            yield row
            continue
        if len(set(texts[1:])) < len(texts) - 1:
            listing_twice += 1
            first_listing_twice = first_listing_twice or f"{row[0]}:{row[1]}"
        if texts_hash in seen:
            repeats += 1
            first_repeat = first_repeat or f"{row[0]}:{row[1]}"
        seen.add(texts_hash)
        yield row
    if first_blank:
        logger.warning("%s: %d blank query texts and %d blank passages (the first in the record at %s) are trained "
                       "on as they are: clean the data if they are mistakes", source, blank_queries, blank_passages,
                       first_blank)
    if listing_twice:
        logger.warning("%s: %d records list a passage twice (the first at %s): a positive paired with itself has the "
                       "student match a margin between a passage and itself, and each copy in a group takes its own "
                       "share of the softmax; trained on as they are", source, listing_twice, first_listing_twice)
    if repeats:
        logger.warning("%s: %d records repeat the query and passages of an earlier one (the first at %s): each "
                       "trains again, weighing its pairs double; clean the data if they are mistakes (a file joined "
                       "to itself?)", source, repeats, first_repeat)


def get_number_list(record: dict, name: str, path: str, line: int) -> list[float]:
    """The list-of-finite-numbers field ``name`` (numeric strings accepted; a lone number counts
    as a list of one, as get_text_list takes a lone string)."""
    values = record.get(name)
    if not isinstance(values, list):
        return [get_number(record, name, path, line)]  # or the error for a missing or non-number field
    return [get_number({name: value}, name, path, line) for value in values]


# Training targets are float32 tensors: a larger number would become inf there.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def targets(values: Sequence[float], temperature: float, what: str, path: str, line: int) -> list[float]:
    """``values`` (teacher scores or margins, logits) divided by ``temperature``: the student's
    training targets. InputError where one is beyond float32's range (about 3.4e38) or, a margin of
    scores near 1e308, not finite."""
    divided = [value / temperature for value in values]
    if not all(abs(target) <= FLOAT32_MAX for target in divided):
        raise InputError(f"the teacher's {what} {[f'{value:.3g}' for value in values[:4]]} divided by "
                         f"--teacher_temperature {temperature:g} are beyond float32's range (about 3.4e38), in "
                         "which training runs; rescale them", path, line)
    return divided


def soft_label(score: float, temperature: float) -> float:
    """sigmoid(score / temperature): a teacher logit as a probability target for BCE."""
    return 0.5 * (1.0 + math.tanh(score / temperature / 2))  # = sigmoid, without exp overflow


def rms(values: Iterable[float]) -> float | None:
    """Root mean square of ``values``; None when there are none."""
    values = np.asarray(list(values), dtype=np.float64)
    return float(np.sqrt(np.mean(values**2))) if values.size else None


def within_query_deviations(groups: Iterable[Sequence[float]]) -> Iterator[float]:
    """Each score's distance from its query's mean score (what a ranking can learn from), over the
    queries with at least two candidates: a lone candidate's distance of 0 says nothing about the
    teacher, and counted in, queries of one pair would pull the spread toward 0."""
    for scores in groups:
        if len(scores) < 2:
            continue
        mean = sum(scores) / len(scores)
        yield from (score - mean for score in scores)


def _triplets(rows: Iterable[tuple[str, int, dict]], temperature: float) -> TrainingData:
    columns: dict[str, list] = {"query": [], "positive": [], "negative": [], "label": []}
    margins = []
    for path, line, record in rows:
        for name in ("query", "positive", "negative"):
            columns[name].append(get_text(record, name, path, line))
        margin = get_number(record, "score", path, line)
        margins.append(margin)
        columns["label"] += targets([margin], temperature, "margin", path, line)
    return TrainingData("triplets", columns, teacher_spread=rms(margins))


def _ntuples(records: Iterable[tuple[str, int, dict]], temperature: float) -> TrainingData:
    rows = []
    for path, line, record in records:
        query, positive = get_text(record, "query", path, line), get_text(record, "positive", path, line)
        negatives = get_text_list(record, "negatives", path, line)
        scores = get_number_list(record, "scores", path, line)
        if not negatives:
            raise InputError('"negatives" is empty: an n-tuple needs at least one negative', path, line)
        if len(scores) != 1 + len(negatives):
            raise InputError(
                f'"scores" must hold the positive\'s score then one per negative: {1 + len(negatives)} numbers '
                f"for {len(negatives)} negatives, got {len(scores)}", path, line
            )
        margins = [scores[0] - score for score in scores[1:]]
        rows.append((query, positive, negatives, margins, targets(margins, temperature, "margins", path, line)))
    width = max(len(negatives) for _, _, negatives, *_ in rows)
    columns: dict[str, list] = {"query": [row[0] for row in rows], "positive": [row[1] for row in rows]}
    for i in range(width):
        columns[f"negative_{i + 1}"] = [negatives[i] if i < len(negatives) else "" for _, _, negatives, *_ in rows]
    columns["label"] = [labels + [math.nan] * (width - len(labels)) for *_, labels in rows]
    ragged = any(len(negatives) < width for _, _, negatives, *_ in rows)
    return TrainingData("ntuples", columns, rms(m for *_, margins, _ in rows for m in margins), ragged)


def _listwise(rows: Iterable[tuple[str, int, dict]], temperature: float) -> TrainingData:
    columns: dict[str, list] = {"query": [], "passages": [], "label": []}
    groups = []
    for path, line, record in rows:
        columns["query"].append(get_text(record, "query", path, line))
        passages = get_text_list(record, "passages", path, line)
        scores = get_number_list(record, "scores", path, line)
        if len(passages) < 2:  # softmax over one passage is 1 whatever the scores: nothing to learn
            raise InputError(f'a listwise group needs at least two "passages" to rank, got {len(passages)}', path, line)
        if len(scores) != len(passages):
            raise InputError(f'"scores" must hold one number per passage: {len(passages)} passages, '
                             f"{len(scores)} scores", path, line)
        columns["passages"].append(passages)
        columns["label"].append(targets(scores, temperature, "scores", path, line))
        groups.append(scores)
    return TrainingData("listwise", columns, teacher_spread=rms(within_query_deviations(groups)))


def _pointwise_scores(pairs: Iterable[ScoredPair], loss: str, temperature: float, source: str,
                      label_column: str | None = None) -> TrainingData:
    columns: dict[str, list] = {"query": [], "passage": [], "label": []}
    by_query: dict[str, list[float]] = {}
    # each query's pairs, for the oddities _labelled warns about (a pair listed twice, with another label: the
    # student would train on contradictory targets unsaid)
    lists: dict[str, RankingQuery] = {}
    for pair in pairs:
        if loss == "bce_labels":
            if pair.label is None:
                raise InputError(f'no gold "{label_column or "label"}" in this pair; --loss bce_labels trains on '
                                 "gold labels (use --loss mse or bce_soft to train on the teacher's scores)",
                                 pair.path, pair.line)
            target = 1.0 if pair.label > 0 else 0.0
        else:
            target = (soft_label(pair.score, temperature) if loss == "bce_soft"
                      else targets([pair.score], temperature, "score", pair.path, pair.line)[0])
        columns["query"].append(pair.query)
        columns["passage"].append(pair.passage)
        columns["label"].append(target)
        by_query.setdefault(pair.query, []).append(pair.score)
        RankingQuery.row_list_in(lists, pair.query, f"{pair.path}:{pair.line}").add_row(
            pair.passage, pair.label, pair.path, pair.line)
    ListOddities.found_in(lists.values()).warn(source, "each trains as it is, a row of its own")
    return TrainingData("scores", columns, teacher_spread=rms(within_query_deviations(by_query.values())))


def _labelled(queries: Iterable[RankingQuery], source: str) -> TrainingData:
    columns: dict[str, list] = {"query": [], "passage": [], "label": []}
    oddities = ListOddities()  # a passage both positive and negative would train on contradictory targets unsaid
    for query in queries:
        oddities.add(query)
        for passage, label in zip(query.passages, query.labels):
            columns["query"].append(query.query)
            columns["passage"].append(passage)
            columns["label"].append(1.0 if label > 0 else 0.0)
    oddities.warn(source, "each trains as it is, a row of its own")
    return TrainingData("labelled", columns)


def one_sided_targets_warning(data: TrainingData, source: str, loss: str) -> str | None:
    """A warning when every bce_soft target sigmoid(score / temperature) lies on one side of 0.5: the
    scores are not logits centred on 0 (an llm_labels expected grade, a scaled cosine), and the
    student would learn that every pair is relevant, or none; else None."""
    targets = data.columns["label"] if loss == "bce_soft" else []
    if not targets or min(targets) < 0.5 < max(targets):
        return None
    verdict = "relevant" if min(targets) >= 0.5 else "irrelevant"
    return (
        f"{source}: every --loss bce_soft target sigmoid(score / temperature) is on one side of 0.5, so the student "
        f"learns that every pair is {verdict}; bce_soft reads scores as logits around 0 (an llm_yesno or "
        "cross_encoder teacher's): for expected grades or scaled cosines train with mse, margin_mse or listwise_kl"
    )


def teacher_spread_warning(data: TrainingData, source: str, temperature: float = 1.0) -> str | None:
    """A warning when the teacher barely tells a query's candidates apart (a collapsed or
    mis-prompted teacher), or when ``temperature`` flattens what it tells down to that, else None."""
    if data.teacher_spread is None:
        return None
    what = "margins" if data.kind in ("triplets", "ntuples") else "scores within a query"
    if data.teacher_spread < MIN_TEACHER_SPREAD:
        return (
            f"{source}: the teacher's {what} barely vary (root mean square {data.teacher_spread:.3g} logits, "
            f"below {MIN_TEACHER_SPREAD}); a collapsed or mis-prompted teacher gives the student almost nothing "
            "to learn: check stage 1's model, prompt and instruction"
        )
    if data.teacher_spread / temperature < MIN_TEACHER_SPREAD:
        return (
            f"{source}: divided by --teacher_temperature {temperature:g}, the teacher's {what} barely vary (root "
            f"mean square {data.teacher_spread:.3g} / {temperature:g} = {data.teacher_spread / temperature:.3g}, below "
            f"{MIN_TEACHER_SPREAD}), so the student gets almost nothing to learn; lower the temperature (train.sh's 4 "
            "suits scores on a 10 x cosine scale)"
        )
    return None
