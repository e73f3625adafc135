"""Training helpers for train.py: each kind of training file turned into the columns its loss
takes, the held-out queries and checkpoint selection by MAP, the defaults train.py adds to the
command line, padding statistics, a length-grouped batch sampler, a wall-time budget and the
trainer."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator
from sentence_transformers.base.sampler import DefaultBatchSampler
from sentence_transformers.cross_encoder import CrossEncoderTrainer
from torch import Tensor
from transformers import TrainerCallback

from rerank_distill.errors import InputError
from rerank_distill.formats import (
    RankingQuery,
    detect_format,
    iter_ranking_queries,
    iter_rows,
    iter_scored_pairs,
    label_of,
)
from rerank_distill.jsonl import get_number, get_text, get_text_list
from rerank_distill.losses import LOSSES
from rerank_distill.metrics import SKIP_REASONS, evaluate_rankings, skip_reason
from rerank_distill.student import score_ranking_queries

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Training data: one reader per kind of file, detected from the first record's fields
# ---------------------------------------------------------------------------------------------

DATA_KINDS = {
    "triplets": 'triplets {"query", "positive", "negative", "score"} (create_triplets.py)',
    "ntuples": 'n-tuples {"query", "positive", "negatives": [...], "scores": [...]} '
    "(create_triplets.py --format ntuples)",
    "listwise": 'listwise groups {"query", "passages": [...], "scores": [...]} (create_triplets.py --format listwise)',
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


def detect_data_kind(record: dict, path: str, line: int) -> str:
    """The kind of training file (a key of DATA_KINDS) one record belongs to, from its fields."""
    if "passages" in record:
        return "listwise"
    if "negatives" in record:
        return "ntuples"
    if "score" in record and isinstance(record.get("positive"), str) and isinstance(record.get("negative"), str):
        return "triplets"
    try:
        return "scores" if detect_format(record, path, line) == "scores" else "labelled"
    except InputError:
        kinds = "; ".join(DATA_KINDS.values())
        raise InputError(f"cannot tell the kind of training data from the fields {sorted(record)}; "
                         f"expected one of: {kinds}", path, line) from None


def first_record(source: str) -> tuple[str, int, dict]:
    """``(path, line, record)`` of a source's first record (InputError for a missing or empty file)."""
    for path, line, record in iter_rows(source):
        return path, line, record
    raise InputError("contains no records (the file is empty)", source)


def check_kind(loss: str, kind: str, path: str, line: int, fields: list[str]) -> None:
    """InputError naming the file, what it holds and what ``--loss`` needs, when they differ."""
    if kind not in LOSSES[loss].inputs:
        needs = " or ".join(DATA_KINDS[k] for k in LOSSES[loss].inputs)
        raise InputError(
            f"--loss {loss} trains on {needs}, but this file holds {DATA_KINDS[kind]} "
            f"(from the fields {fields} of line {line}); pass the matching file or another --loss", path
        )


def read_training_data(
    source: str, loss: str, teacher_temperature: float = 1.0, fused_forward: bool = True
) -> TrainingData:
    """Read and validate a whole training file for ``--loss loss`` (see LOSSES for the kinds each
    takes), with teacher scores and margins divided by ``teacher_temperature``.

    Raises InputError naming file:line and field for a bad record, for an empty or missing file,
    for a file of a kind the loss does not train on, and for n-tuples with differing negative
    counts where sentence-transformers' MarginMSELoss (``fused_forward`` False) would get them.
    """
    if not teacher_temperature > 0:
        raise InputError(f"--teacher_temperature must be positive, got {teacher_temperature}")
    path, line, record = first_record(source)
    kind = detect_data_kind(record, path, line)
    check_kind(loss, kind, path, line, sorted(record))
    if kind == "triplets":
        return _triplets(source, teacher_temperature)
    if kind == "ntuples":
        data = _ntuples(source, teacher_temperature)
        if data.ragged and loss == "margin_mse" and not fused_forward:
            raise InputError("the n-tuples have differing numbers of negatives, which only the fused MarginMSE "
                             "takes; drop --no_fused_forward", source)
        return data
    if kind == "listwise":
        return _listwise(source, teacher_temperature)
    if kind == "scores":
        return _pointwise_scores(source, loss, teacher_temperature)
    return _labelled(source)


def get_number_list(record: dict, name: str, path: str, line: int) -> list[float]:
    """The list-of-finite-numbers field ``name`` (numeric strings accepted; a lone number counts
    as a list of one, as get_text_list takes a lone string)."""
    values = record.get(name)
    if not isinstance(values, list):
        return [get_number(record, name, path, line)]  # or the error for a missing or non-number field
    return [get_number({name: value}, name, path, line) for value in values]


def soft_label(score: float, temperature: float) -> float:
    """sigmoid(score / temperature): a teacher logit as a probability target for BCE."""
    return 0.5 * (1.0 + math.tanh(score / temperature / 2))  # = sigmoid, without exp overflow


def rms(values: Iterable[float]) -> float | None:
    values = np.asarray(list(values), dtype=np.float64)
    return float(np.sqrt(np.mean(values**2))) if values.size else None


def within_query_deviations(groups: Iterable[Sequence[float]]) -> Iterator[float]:
    """Each score's distance from its query's mean score (what a ranking can learn from)."""
    for scores in groups:
        mean = sum(scores) / len(scores)
        yield from (score - mean for score in scores)


def _triplets(source: str, temperature: float) -> TrainingData:
    columns: dict[str, list] = {"query": [], "positive": [], "negative": [], "label": []}
    margins = []
    for path, line, record in iter_rows(source):
        for name in ("query", "positive", "negative"):
            columns[name].append(get_text(record, name, path, line))
        margins.append(get_number(record, "score", path, line))
    columns["label"] = [margin / temperature for margin in margins]
    return TrainingData("triplets", columns, teacher_spread=rms(margins))


def _ntuples(source: str, temperature: float) -> TrainingData:
    rows = []
    for path, line, record in iter_rows(source):
        query, positive = get_text(record, "query", path, line), get_text(record, "positive", path, line)
        negatives = get_text_list(record, "negatives", path, line)
        scores = get_number_list(record, "scores", path, line)
        if not negatives or len(scores) != 1 + len(negatives):
            raise InputError(
                f'"scores" must hold the positive\'s score then one per negative: {1 + len(negatives)} numbers '
                f"for {len(negatives)} negatives, got {len(scores)}", path, line
            )
        rows.append((query, positive, negatives, [scores[0] - score for score in scores[1:]]))
    width = max(len(negatives) for _, _, negatives, _ in rows)
    columns: dict[str, list] = {"query": [row[0] for row in rows], "positive": [row[1] for row in rows]}
    for i in range(width):
        columns[f"negative_{i + 1}"] = [negatives[i] if i < len(negatives) else "" for _, _, negatives, _ in rows]
    columns["label"] = [[m / temperature for m in margins] + [math.nan] * (width - len(margins))
                        for *_, margins in rows]
    ragged = any(len(negatives) < width for _, _, negatives, _ in rows)
    return TrainingData("ntuples", columns, rms(m for *_, margins in rows for m in margins), ragged)


def _listwise(source: str, temperature: float) -> TrainingData:
    columns: dict[str, list] = {"query": [], "passages": [], "label": []}
    groups = []
    for path, line, record in iter_rows(source):
        columns["query"].append(get_text(record, "query", path, line))
        passages = get_text_list(record, "passages", path, line)
        scores = get_number_list(record, "scores", path, line)
        if not passages or len(scores) != len(passages):
            raise InputError(f'"scores" must hold one number per passage: {len(passages)} passages, '
                             f"{len(scores)} scores", path, line)
        columns["passages"].append(passages)
        columns["label"].append([score / temperature for score in scores])
        groups.append(scores)
    return TrainingData("listwise", columns, teacher_spread=rms(within_query_deviations(groups)))


def _pointwise_scores(source: str, loss: str, temperature: float) -> TrainingData:
    columns: dict[str, list] = {"query": [], "passage": [], "label": []}
    by_query: dict[str, list[float]] = {}
    for pair in iter_scored_pairs(source):
        if loss == "bce_labels":
            if pair.label is None:
                raise InputError('no gold "label" in this pair; --loss bce_labels trains on gold labels '
                                 "(use --loss mse or bce_soft to train on the teacher's scores)", source, pair.line)
            target = 1.0 if pair.label > 0 else 0.0
        else:
            target = soft_label(pair.score, temperature) if loss == "bce_soft" else pair.score / temperature
        columns["query"].append(pair.query)
        columns["passage"].append(pair.passage)
        columns["label"].append(target)
        by_query.setdefault(pair.query, []).append(pair.score)
    spread = None if loss == "bce_labels" else rms(within_query_deviations(by_query.values()))
    return TrainingData("scores", columns, teacher_spread=spread)


def _labelled(source: str) -> TrainingData:
    columns: dict[str, list] = {"query": [], "passage": [], "label": []}
    for query in iter_ranking_queries(source):
        for passage, label in zip(query.passages, query.labels):
            columns["query"].append(query.query)
            columns["passage"].append(passage)
            columns["label"].append(1.0 if label > 0 else 0.0)
    return TrainingData("labelled", columns)


def teacher_spread_warning(data: TrainingData, source: str) -> str | None:
    """A warning when the teacher barely tells a query's candidates apart (a collapsed or
    mis-prompted teacher), else None. Measured on the raw teacher scores, before the temperature."""
    if data.teacher_spread is None or data.teacher_spread >= MIN_TEACHER_SPREAD:
        return None
    what = "margins" if data.kind in ("triplets", "ntuples") else "scores within a query"
    return (
        f"{source}: the teacher's {what} barely vary (root mean square {data.teacher_spread:.3g} logits, "
        f"below {MIN_TEACHER_SPREAD}); a collapsed or mis-prompted teacher gives the student almost nothing "
        "to learn: check stage 1's model, prompt and instruction"
    )


# ---------------------------------------------------------------------------------------------
# Held-out queries and checkpoint selection
# ---------------------------------------------------------------------------------------------


def held_out_queries(queries: Iterable[str], share: float, seed: int) -> set[str]:
    """The distinct queries held out for evaluation: ``round(share * distinct)``, at least one,
    and never all of them.

    The choice depends only on the query texts and the seed (the queries with the smallest
    SHA-256 of ``"seed:query"``), so every process of a torchrun job and every rerun agrees.
    """
    distinct = sorted(set(queries))
    if len(distinct) < 2:
        raise InputError(
            f"cannot hold out queries for checkpoint selection from {len(distinct)} distinct training queries; "
            "pass --eval_data (or --selection_data with queries of its own), or --eval_strategy no to train "
            "without evaluation"
        )
    if not 0.0 < share < 1.0:
        raise InputError(f"--eval_share must be between 0 and 1 (exclusive), got {share}")
    count = min(max(1, round(share * len(distinct))), len(distinct) - 1)

    def rank(query: str) -> str:
        return hashlib.sha256(f"{seed}:{query}".encode()).hexdigest()

    return set(sorted(distinct, key=rank)[:count])


def split_rows(dataset, held_out: set[str]):
    """(rows of other queries, rows of the held-out queries): whole queries on one side."""
    queries = dataset["query"]
    eval_rows = [i for i, query in enumerate(queries) if query in held_out]
    train_rows = [i for i, query in enumerate(queries) if query not in held_out]
    return dataset.select(train_rows), dataset.select(eval_rows)


def split_by_query(dataset, share: float, seed: int):
    """Split a data set into (train, eval) by whole queries (see held_out_queries): every row of
    a held-out query goes to eval, so no query is in both."""
    return split_rows(dataset, held_out_queries(dataset["query"], share, seed))


def read_selection_queries(source: str) -> tuple[list[RankingQuery], str]:
    """The queries of ``source`` that MAP can rank: each with its candidates and gold labels,
    and at least one positive and one negative. Returns ``(queries, note)``; queries is empty
    when the file has no gold labels or no such query, and the note says why."""
    path, line, record = first_record(source)
    kind = detect_data_kind(record, path, line)
    if kind not in RANKING_KINDS:
        return [], f"{source} holds {DATA_KINDS[kind]}, not candidate lists with gold labels"
    if kind == "scores" and label_of(record, path, line) is None:
        return [], f'{source} has teacher scores but no gold "label" field'
    queries, skipped = [], dict.fromkeys(SKIP_REASONS, 0)
    for query in iter_ranking_queries(source):
        reason = skip_reason(query.labels)
        if reason is None:
            queries.append(query)
        else:
            skipped[reason] += 1
    skips = f"{skipped['no_positive']} without a positive and {skipped['no_negative']} without a negative skipped"
    if not queries:
        return [], f"{source}: no query has both a positive and a negative ({skips})"
    return queries, f"{source}: {len(queries)} queries with a positive and a negative, {skips}"


COUNT_KEYS = ("train_examples", "train_queries", "eval_examples", "eval_queries")


@dataclass
class Selection:
    """How checkpoints are chosen: the data sets that train and evaluate, and the held-out queries."""

    train: object  # datasets.Dataset
    eval: object | None  # rows for eval_loss, or None
    queries: list[RankingQuery] = field(default_factory=list)  # ranked by MAP at each evaluation
    held_out: list[str] = field(default_factory=list)  # training queries kept out of training
    metric: str = "loss"  # metric_for_best_model
    note: str = ""  # why this metric, for the log

    def counts(self) -> dict:
        """Rows and distinct queries of train and eval (COUNT_KEYS), the number of queries ranked
        by MAP and the held-out training queries themselves."""
        sizes = [(len(s), len(set(s["query"]))) if s is not None else (0, 0) for s in (self.train, self.eval)]
        return {**dict(zip(COUNT_KEYS, [n for pair in sizes for n in pair])),
                "selection_queries": len(self.queries), "held_out_queries": self.held_out}


def plan_selection(
    train_set, train_kind: str, train_source: str, selection_data: str | None, selection_metric: str,
    eval_set, eval_share: float, seed: int,
) -> Selection:
    """Choose what picks the best checkpoint, and hold its queries out of training.

    MAP (``selection_metric`` "auto" or "map") ranks gold-labelled candidate lists: those of
    ``selection_data``, else of the training file itself when it is a scores or labelled file.
    Where those queries are also training queries, ``eval_share`` of them (held_out_queries) are
    held out: removed from training and ranked at each evaluation (their training rows give
    eval_loss unless ``eval_set`` is given). Where none is, the file is a dev set of its own and
    all its queries are ranked. Without gold labels, "auto" falls back to eval_loss ("map" stops).
    """
    queries: list[RankingQuery] = []
    note = "--selection_metric loss"
    if selection_metric != "loss":
        source = selection_data or (train_source if train_kind in RANKING_KINDS else None)
        if source is None:
            note = f"no --selection_data, and {train_kind} training data carries no gold labels"
        else:
            queries, note = read_selection_queries(source)
        if not queries and selection_metric == "map":
            raise InputError(f"--selection_metric map needs gold-labelled candidate lists: {note}")
    if not queries:
        held_out: list[str] = []
        if eval_set is None:
            train_set, eval_set = split_by_query(train_set, eval_share, seed)
            held_out = list(dict.fromkeys(eval_set["query"]))
        return Selection(train_set, eval_set, [], held_out, "loss", f"by eval_loss ({note})")

    training_queries = set(train_set["query"])
    shared = [query.query for query in queries if query.query in training_queries]
    if not shared:
        return Selection(train_set, eval_set, queries, [], "eval_selection_map",
                         f"by MAP on a dev set of its own ({note})")
    held = held_out_queries(shared, eval_share, seed)
    train_set, held_rows = split_rows(train_set, held)
    return Selection(
        train_set, held_rows if eval_set is None else eval_set, [q for q in queries if q.query in held],
        [query for query in dict.fromkeys(shared) if query in held], "eval_selection_map",
        f"by MAP on {len(held)} held-out training queries ({note})",
    )


class SelectionEvaluator(BaseEvaluator):
    """MAP, MRR@10 and NDCG@10 of the model's raw logits on held-out queries with gold labels, as
    CrossEncoderTrainer's evaluator (reported as ``eval_selection_map``, ...).

    Uses metrics.evaluate_rankings, as evaluation.py does: on queries with a positive and a
    negative (the only ones given here) it equals sentence-transformers'
    CrossEncoderRerankingEvaluator, with ties broken by position instead of averaged.
    """

    def __init__(self, queries: Sequence[RankingQuery], batch_size: int = 64, name: str = "selection"):
        super().__init__()
        self.queries, self.batch_size, self.name = list(queries), batch_size, name
        self.primary_metric = "map"

    def __call__(self, model, output_path: str | None = None, epoch: float = -1, steps: int = -1) -> dict:
        scores = score_ranking_queries(model, self.queries, self.batch_size, show_progress_bar=False)
        result = evaluate_rankings(zip(scores, [query.labels for query in self.queries]), protocol="mteb")
        metrics = {name: result[name] for name in ("map", "mrr@10", "ndcg@10")}
        logger.info("step %s: MAP %.4f, MRR@10 %.4f, NDCG@10 %.4f on %d selection queries", steps, metrics["map"],
                    metrics["mrr@10"], metrics["ndcg@10"], len(self.queries))
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics


# ---------------------------------------------------------------------------------------------
# Command-line defaults
# ---------------------------------------------------------------------------------------------


def passed_flags(argv: list[str]) -> dict[str, str | None]:
    """The flags present on a command line, by field name (``--eval-steps=5`` -> ``eval_steps``),
    each with the value written after it (None for a bare flag). ``--no_X`` counts as ``X``."""
    flags: dict[str, str | None] = {}
    for index, token in enumerate(argv):
        if not token.startswith("--"):
            continue
        name, equals, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if not equals:
            following = argv[index + 1] if index + 1 < len(argv) else None
            value = following if following is not None and not following.startswith("--") else None
        flags[name] = value
        if name.startswith("no_"):
            flags[name[3:]] = "false"
    return flags


def default_training_flags(passed: dict[str, str | None]) -> list[str]:
    """Training flags train.py adds in front of the user's own, for those the user did not pass.

    Evaluation and checkpoints run on one schedule (10 times per run unless set), the best
    checkpoint on the held-out queries becomes the final model (set_best_metric names the
    metric once the data are read), and only it and the latest checkpoint are kept. A flag the
    user passed is never changed; the other member of a pair (eval/save strategy, eval/save
    steps) follows it so that load_best_model_at_end stays valid.
    """
    flags: list[str] = []

    def add(name: str, value: str) -> None:
        if name not in passed:
            flags.extend([f"--{name}", value])

    eval_strategy = passed.get("eval_strategy")
    save_strategy = passed.get("save_strategy")
    if eval_strategy is None and save_strategy not in (None, "best", "no"):
        eval_strategy = save_strategy
    if save_strategy is None and eval_strategy not in (None, "no"):
        save_strategy = eval_strategy
    eval_strategy, save_strategy = eval_strategy or "steps", save_strategy or "steps"
    add("eval_strategy", eval_strategy)
    add("save_strategy", save_strategy)

    steps = passed.get("eval_steps") or passed.get("save_steps") or "0.1"  # a float < 1 is a share of all steps
    add("eval_steps", steps)
    add("save_steps", steps)
    add("logging_steps", "0.02")

    evaluating = eval_strategy != "no"
    checkpoints_follow_evals = save_strategy == "best" or (save_strategy == eval_strategy != "no")
    add("load_best_model_at_end", str(evaluating and checkpoints_follow_evals))
    add("save_total_limit", "2")  # the best checkpoint is always kept besides the latest
    # Under torchrun the Trainer turns on find_unused_parameters for a CrossEncoder, but the
    # model returns a BatchEncoding (not a dict) in which DDP finds no output tensors, so DDP
    # calls every parameter unused and backward fails ("marked ready twice"). Every parameter
    # of a cross-encoder gets a gradient at each step, so the search is not needed.
    add("ddp_find_unused_parameters", "False")
    return flags


def set_best_metric(training, passed: dict[str, str | None], metric: str) -> None:
    """Make ``metric`` (``eval_selection_map`` or ``loss``) pick the best checkpoint, unless the
    user passed --metric_for_best_model; higher is better for everything but a loss."""
    if "metric_for_best_model" not in passed:
        training.metric_for_best_model = metric
    if "greater_is_better" not in passed:
        training.greater_is_better = not training.metric_for_best_model.endswith("loss")


def resolve_checkpoint(value: str | None, output_dir: str) -> str | None:
    """--resume_from_checkpoint: a checkpoint folder, or 'last'/'true' for the newest in output_dir."""
    from pathlib import Path

    from transformers.trainer_utils import get_last_checkpoint

    if value is None:
        return None
    if value.lower() in ("last", "true"):
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise InputError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {output_dir}")
        return last
    if not (Path(value) / "trainer_state.json").is_file():
        raise InputError(f"--resume_from_checkpoint {value}: not a checkpoint folder (no trainer_state.json)")
    return value



# ---------------------------------------------------------------------------------------------
# Padding statistics of the training forward passes
# ---------------------------------------------------------------------------------------------


@dataclass
class PaddingStats:
    """Token counts over the training forward passes of one process (evaluation is not counted)."""

    pairs: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0

    def add(self, attention_mask: Tensor) -> None:
        self.pairs += attention_mask.shape[0]
        self.real_tokens += int(attention_mask.sum())
        self.padded_tokens += attention_mask.numel()

    def summary(self) -> dict[str, float]:
        """Mean real and padded tokens per pair (padded = the batch's sequence length) and the
        share of padding: what length-grouped batches shrink."""
        pairs = max(self.pairs, 1)
        return {
            "mean_real_tokens": round(self.real_tokens / pairs, 1),
            "mean_padded_tokens": round(self.padded_tokens / pairs, 1),
            "padding_share": round(1 - self.real_tokens / max(self.padded_tokens, 1), 3),
        }


def track_padding(model) -> PaddingStats:
    """Count the real and padded tokens of every training-mode forward pass of ``model``, whatever
    the loss (a forward pre-hook reads the attention mask in the features the loss tokenised,
    a transformers BatchEncoding)."""
    stats = PaddingStats()

    def count(module, args) -> None:
        features = args[0] if args else None
        if module.training and isinstance(features, Mapping) and "attention_mask" in features:
            stats.add(features["attention_mask"])

    model.register_forward_pre_hook(count)
    return stats


# ---------------------------------------------------------------------------------------------
# Batch sampler: batches of similar length
# ---------------------------------------------------------------------------------------------


def example_lengths(dataset) -> list[int]:
    """A cheap length per example in characters: its query plus its longest document, which is
    what the padded length of a one-pass batch follows."""
    documents = [list(dataset[name]) for name in dataset.column_names if name not in ("query", "label")]
    lengths = []
    for row, query in enumerate(dataset["query"]):
        longest = 0
        for column in documents:
            value = column[row]
            if isinstance(value, str):
                longest = max(longest, len(value))
            elif isinstance(value, list):  # a listwise group's passages
                longest = max([longest, *(len(passage) for passage in value)])
        lengths.append(len(query) + longest)
    return lengths


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, drop_last: bool = False, mega_batch_factor: int = 50
) -> list[list[int]]:
    """Batches of indices where each batch holds examples of similar length, so little padding.

    Shuffle all indices, sort each mega-batch of ``mega_batch_factor * batch_size`` by length
    (longest first), cut into batches and shuffle the batch order, keeping the batch with the
    longest example first so an out-of-memory error shows at step one, not hours in, and the
    one short batch last (dropped with drop_last), where accelerate expects it when it evens out
    batches across processes. Every index appears once; the order depends only on the seed (the
    sampler passes seed + epoch).
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    mega = batch_size * mega_batch_factor
    ordered: list[int] = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        ordered.extend(int(i) for i in sorted(chunk, key=lambda i: -lengths[i]))
    batches = [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]
    short = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    if drop_last:
        short = []
    if not batches:
        return short
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
    rest = [batches[b] for b in rng.permutation(len(batches)) if b != longest]
    return [batches[longest], *rest, *short]


class LengthGroupedBatchSampler(DefaultBatchSampler):
    """CrossEncoderTrainer batch sampler (training argument ``batch_sampler``) that yields
    length_grouped_batches of a training data set, reshuffled each epoch via set_epoch."""

    def __init__(
        self, dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None, seed: int = 0
    ):
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        self.lengths = example_lengths(dataset)

    def __iter__(self) -> Iterator[list[int]]:
        yield from length_grouped_batches(self.lengths, self.batch_size, self.seed + self.epoch, self.drop_last)

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)


# ---------------------------------------------------------------------------------------------
# A wall-time budget: --max_train_seconds
# ---------------------------------------------------------------------------------------------


class TimeBudget(TrainerCallback):
    """Keep training within ``seconds`` of wall time from its start (``start``, or the trainer's
    on_train_begin), evaluations and checkpoints included.

    Training stops at the first step end from which the longest step-to-step interval seen so
    far (a step plus an evaluation and a checkpoint, once one has happened) would reach the
    budget, with a last evaluation and checkpoint, so the last model can still be picked as the
    best and the run ends within the budget rather than one evaluation past it.

    The learning-rate schedule follows whichever runs out first, steps or time (``stretch``):
    the scheduler is shown the step matching ``max(steps done, share of the budget spent)`` of
    the planned run, so a warmup-then-decay schedule still reaches its end when time, not the
    step count, ends training, instead of stopping mid-decay at a high rate.
    """

    def __init__(self, seconds: float, clock=time.perf_counter) -> None:
        if not seconds > 0:
            raise InputError(f"--max_train_seconds must be positive, got {seconds}")
        self.seconds, self.clock = seconds, clock
        self.started: float | None = None
        self.last_step_end: float | None = None
        self.longest_interval = 0.0  # seconds between two step ends, evaluations and checkpoints included
        # share of the budget that will be spent once the next step ends, measured at the last step
        # end and the same on every process
        self.spent = 0.0
        self.stopped_training = False

    def start(self) -> None:
        """Start the clock now (train.py calls it just before trainer.train(), whose time it reports)."""
        self.started = self.last_step_end = self.clock()

    def stretch(self, scheduler, total_steps: int) -> bool:
        """Make a LambdaLR schedule (every schedule transformers builds is one) planned for
        ``total_steps`` follow the time budget too; False (and no change) for another kind."""
        if not hasattr(scheduler, "lr_lambdas"):
            return False

        def follow_time(planned):
            def rate(step: int) -> float:
                return planned(min(total_steps, max(step, math.ceil(self.spent * total_steps))))

            return rate

        scheduler.lr_lambdas = [follow_time(planned) for planned in scheduler.lr_lambdas]
        return True

    def on_train_begin(self, args, state, control, **kwargs):
        if self.started is None:
            self.start()

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        self.longest_interval = max(self.longest_interval, now - self.last_step_end)
        self.last_step_end = now
        self.spent = (now - self.started + self.longest_interval) / self.seconds
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # the slowest process's clock decides, so all stop at the same step with the same rate
            spent = torch.tensor([self.spent], device=args.device)
            torch.distributed.all_reduce(spent, op=torch.distributed.ReduceOp.MAX)
            self.spent = float(spent)
        if self.spent >= 1 and not control.should_training_stop:
            control.should_training_stop = self.stopped_training = True
            control.should_evaluate = control.should_evaluate or args.eval_strategy != "no"
            control.should_save = control.should_save or args.save_strategy not in ("no", "best")
        return control


class DistillationTrainer(CrossEncoderTrainer):
    """CrossEncoderTrainer that counts the examples it trains on (``examples_trained``, this
    process's), keeps to an optional ``time_budget`` (its learning-rate schedule fitted to it, see
    TimeBudget), and has two fixes for torchrun (no change on one process).

    - Only the main process writes checkpoints and the final model: transformers 5 calls
      ``_save`` on every process and checks ``should_save`` inside it, but sentence-transformers'
      ``_save`` override assumes it runs on the main process only, so all processes would write
      the same files at once.
    - Evaluation sees every eval example: sentence-transformers sets dataloader_drop_last so that
      every process gets the same number of full training batches, which for evaluation would
      drop the last batches (or all of a small eval set, leaving no eval_loss to pick the best
      checkpoint by and failing the run). Accelerate instead pads the last eval batch with
      repeated examples; as the loss is a batch mean, that one batch's share of eval_loss also
      averages in the repeats.
    """

    def __init__(self, *args, time_budget: TimeBudget | None = None, **kwargs) -> None:
        callbacks = [*(kwargs.pop("callbacks", None) or []), *([time_budget] if time_budget else [])]
        super().__init__(*args, callbacks=callbacks, **kwargs)
        self.examples_trained = 0
        self.time_budget = time_budget

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        fresh = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if fresh and self.time_budget is not None and not self.time_budget.stretch(scheduler, num_training_steps):
            logger.warning("--max_train_seconds: the %s schedule is not a LambdaLR, so it is not fitted to the time "
                           "budget (training still stops when the budget is spent)", type(scheduler).__name__)
        return scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.examples_trained += len(inputs["query"])  # every kind's first column
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if self.args.should_save:
            super()._save(output_dir, state_dict=state_dict)

    def get_batch_sampler(self, dataset, batch_size, drop_last, *args, **kwargs):
        if dataset is not self.train_dataset:
            drop_last = False
        return super().get_batch_sampler(dataset, batch_size, drop_last, *args, **kwargs)
