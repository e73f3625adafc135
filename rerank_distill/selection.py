"""Checkpoint selection for train.py: the training queries held out for evaluation, what picks the
best checkpoint (MAP on gold-labelled queries, the eval loss, or the last step), train.py's data read
and split accordingly, and the evaluator that ranks the held-out queries at each evaluation."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from rerank_distill.cli import beside_output, read_run_args, warn_unread
from rerank_distill.errors import InputError
from rerank_distill.formats import RankingQuery, first_record, iter_ranking_queries, iter_scored_pairs, label_of
from rerank_distill.losses import LOSSES
from rerank_distill.metrics import SKIP_REASONS, evaluate_rankings, skip_reason
from rerank_distill.report import METRICS as RANKING_METRICS  # stage 4's, reported here as selection_map, ...
from rerank_distill.student import in_float32, score_ranking_queries
from rerank_distill.training_data import (
    DATA_KINDS,
    RANKING_KINDS,
    column_values,
    detect_data_kind,
    one_sided_targets_warning,
    read_training_data,
    teacher_spread_warning,
)

logger = logging.getLogger(__name__)


def held_out_queries(queries: Iterable[str], share: float, seed: int, max_count: int = 0) -> set[str]:
    """The distinct queries held out for evaluation: ``round(share * distinct)``, at least one,
    at most ``max_count`` (0: no cap), and never all of them.

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
    count = min(max(1, round(share * len(distinct))), max_count or len(distinct), len(distinct) - 1)

    def rank(query: str) -> str:
        return hashlib.sha256(f"{seed}:{query}".encode()).hexdigest()

    return set(sorted(distinct, key=rank)[:count])


def split_rows(dataset, held_out: set[str]):
    """(rows of other queries, rows of the held-out queries): whole queries on one side."""
    queries = column_values(dataset, "query")
    eval_rows = [i for i, query in enumerate(queries) if query in held_out]
    train_rows = [i for i, query in enumerate(queries) if query not in held_out]
    return dataset.select(train_rows), dataset.select(eval_rows)


def split_by_query(dataset, share: float, seed: int, max_count: int = 0):
    """Split a data set into (train, eval, held-out queries) by whole queries (see held_out_queries):
    every row of a held-out query goes to eval, so no query is in both; and so do the rows whose
    query is one of its passages (see hold_out)."""
    held = held_out_queries(column_values(dataset, "query"), share, seed, max_count)
    return (*hold_out(dataset, held, passages_of(dataset, held)), held)


def passages_of(dataset, queries: set[str]) -> set[str]:
    """The texts the rows of ``queries`` rank (every text column but the query: positive, negative,
    passages, passage, ...)."""
    of_rows = column_values(dataset, "query")
    return {text for name in dataset.column_names if name not in ("query", "label")
            for query, value in zip(of_rows, column_values(dataset, name)) if query in queries
            for text in (value if isinstance(value, list) else [value]) if isinstance(text, str)}


def hold_out(dataset, held: set[str], passages: set[str]):
    """(rows of other queries, rows held out): those of the ``held`` queries, and those whose query is
    one of their ``passages``: a list of passages as queries (generate_logits.py --passages_as_queries)
    ranks a held-out query's candidates against each other, and the query among them, by the teacher."""
    passage_queries = passages - held
    dataset, held_rows = split_rows(dataset, held | passage_queries)
    if derived := sum(query in passage_queries for query in column_values(held_rows, "query")):
        logger.info("%d training rows whose query is a passage of a held-out query (lists of passages as queries) "
                    "are held out with it", derived)
    return dataset, held_rows


def read_selection_queries(source: str, input_format: str = "auto", label_column: str | None = None,
                           is_training_data: bool = False, hub: str = "huggingface",
                           cache_dir: str | None = None) -> tuple[list[RankingQuery], str]:
    """The queries of ``source`` that MAP can rank: each with its candidates and gold labels (a
    grade below 0 read as 0), and at least one positive and one negative. Returns ``(queries,
    note)``; queries is empty when the file has no gold labels or no such query, and the note says
    why. A scores file without gold labels is still read through for errors, unless
    ``is_training_data`` (read and checked already); a file of another kind is judged by its first
    line alone, and stage 2's output is an InputError. ``hub``/``cache_dir``: where a hub data set is fetched from."""
    path, line, record = first_record(source, hub, cache_dir)
    kind = detect_data_kind(record, path, line, input_format, label_column)
    if kind not in RANKING_KINDS:  # (only --selection_data can be such a file: training data of this kind is not read)
        raise InputError(f"--selection_data holds {DATA_KINDS[kind]}, not candidate lists with gold labels: pass stage "
                         "1's scores file of the training data (generate_logits.py's, which keeps the gold labels) or "
                         "a labelled dev file", path, line)
    if not carries_gold_labels(kind, record, path, line, label_column):
        if not is_training_data:  # a broken file is an error, used or not
            for _ in iter_scored_pairs(source, label_column, hub, cache_dir):
                pass
        note = f'{source} has teacher scores but no gold "{label_column or "label"}" field'
        if label_column and "label" in record:  # (--label_column set for the user's own data, in every launcher)
            note += (' (it has "label", the field stage 1 writes every gold grade to: --label_column names a column '
                     "of your own data, not of stage 1's output)")
        return [], note
    queries, skipped = [], dict.fromkeys(SKIP_REASONS, 0)
    for query in iter_ranking_queries(source, input_format, hub, cache_dir, label_column=label_column):
        reason = skip_reason(query.labels)
        if reason is None:
            # a grade below 0 is not relevant, as training reads it, and no NDCG gain (which must be >= 0)
            queries.append(replace(query, labels=[max(label, 0.0) for label in query.labels]))
        else:
            skipped[reason] += 1
    skips = f"{skipped['no_positive']} without a positive and {skipped['no_negative']} without a negative skipped"
    if not queries:
        return [], f"{source}: no query has both a positive and a negative ({skips})"
    return queries, f"{source}: {len(queries)} queries with a positive and a negative, {skips}"


# Below this many queries, MAP picks checkpoints mostly by chance: on SemEval's 8-10 held-out
# queries it chose a checkpoint worse on dev than the last one in 18 of 25 runs (bench/README.md).
MIN_SELECTION_QUERIES = 30

# train.py's --eval_share unless given: the share of training queries held out for checkpoint selection
DEFAULT_EVAL_SHARE = 0.05
# train.py's --eval_max_queries unless given. Per-query AP spreads about 0.2 (standard deviation of
# the embedding teacher's on SemEval: 0.19 dev, 0.23 train), so 1000 queries give MAP a standard
# error near 0.007, less for the difference of two checkpoints ranked on the same queries; more would
# cost each evaluation time and training its queries.
DEFAULT_EVAL_MAX_QUERIES = 1000

# Flags by which a user asks for evaluation (of held-out queries, or of a dev file: --eval_data), so "auto"
# never turns it off for them, even where no checkpoint is saved to pick from.
TRAINER_EVALUATION_FLAGS = ("eval_strategy", "eval_steps", "load_best_model_at_end", "metric_for_best_model")
EVALUATION_FLAGS = {*TRAINER_EVALUATION_FLAGS, "eval_share", "eval_max_queries", "eval_data"}

COUNT_KEYS = ("train_examples", "train_queries", "eval_examples", "eval_queries")



@dataclass
class CheckpointSelection:
    """How checkpoints are chosen: the data sets that train and evaluate, and the held-out queries."""

    train: object  # datasets.Dataset
    eval: object | None  # rows for eval_loss, or None
    queries: list[RankingQuery] = field(default_factory=list)  # ranked by MAP at each evaluation
    held_out: list[str] = field(default_factory=list)  # training queries kept out of training
    metric: str = "loss"  # metric_for_best_model, or "last": no evaluation, the last step is final
    note: str = ""  # why this metric, for the log

    def counts(self) -> dict:
        """Rows and distinct queries of train and eval (COUNT_KEYS), the number of queries ranked
        by MAP and the held-out training queries themselves."""
        sizes = [(len(rows), len(set(column_values(rows, "query")))) if rows is not None else (0, 0)
                 for rows in (self.train, self.eval)]
        return {**dict(zip(COUNT_KEYS, [n for pair in sizes for n in pair])),
                "selection_queries": len(self.queries), "held_out_queries": self.held_out}

    def evaluated_metrics(self) -> list[str]:
        """The metrics each evaluation reports (without the Trainer's ``eval_`` prefix): ``loss`` where
        there are eval rows, the SelectionEvaluator's where there are queries to rank."""
        return (["loss"] if self.eval is not None else []) + (
            [f"selection_{name}" for name in RANKING_METRICS] if self.queries else [])


def plan_selection(
    train_set, train_kind: str, train_source: str, selection_data: str | None, selection_metric: str,
    eval_set, eval_share: float, seed: int, must_evaluate: bool = False, input_format: str = "auto",
    label_column: str | None = None, hub: str = "huggingface", cache_dir: str | None = None,
    eval_max_queries: int = 0,
) -> CheckpointSelection:
    """Choose what picks the best checkpoint, and hold its queries out of training.

    MAP (``selection_metric`` "auto" or "map") ranks gold-labelled candidate lists: those of
    ``selection_data``, else of the training file itself when it is a scores or labelled file.
    Where those queries are also training queries, ``eval_share`` of them, at most
    ``eval_max_queries`` (held_out_queries), are held out: removed from training and ranked at each evaluation (their training rows give
    eval_loss unless ``eval_set`` is given). Queries that are not training queries are always
    ranked, whatever their number: a dev set of its own is ranked whole (sharing one query with
    training by chance, it holds nothing out). Without gold labels, "auto" falls back to eval_loss ("map" stops).

    "auto" holds out no fewer than MIN_SELECTION_QUERIES: with fewer, every query trains and the
    last step is final (metric "last"), unless ``eval_set`` is given or ``must_evaluate`` (early
    stopping, or evaluation flags the user passed). "last" always trains on every query.
    """
    if selection_metric == "last":
        return CheckpointSelection(train_set, None, metric="last", note="not picked (--selection_metric last): every "
                                   "query trains, the last step is final")
    queries: list[RankingQuery] = []
    note = "--selection_metric loss"
    may_go_unpicked = selection_metric == "auto" and eval_set is None and not must_evaluate
    if selection_metric != "loss":
        source = selection_data or (train_source if train_kind in RANKING_KINDS else None)
        if source is None:
            note = (f"no --selection_data, and {train_kind} training data is no candidate lists with gold labels to "
                    "rank")
        else:
            # --input_format names the training file's format; a dev file of its own is told by its fields
            queries, note = read_selection_queries(source, input_format if source == train_source else "auto",
                                                   label_column, is_training_data=source == train_source,
                                                   hub=hub, cache_dir=cache_dir)
        if queries:
            training_queries = set(column_values(train_set, "query"))
            shared = list(dict.fromkeys(query.query for query in queries if query.query in training_queries))
            own = sum(query.query not in training_queries for query in queries)
            # the file stage 2 made the training data from: its queries no training row has are queries stage 2
            # dropped (a teacher tie, --min_margin), never trained on but no dev set that the user chose
            dropped = own if own and selection_data and made_from(train_source, selection_data) else 0
            if len(shared) > 1:
                held = held_out_queries(shared, eval_share, seed, eval_max_queries)
            elif own or len(training_queries) == 1:  # shared by chance, or the only query there is to train on
                held = set()
            else:  # the one labelled training query: ranked, the others train
                held = set(shared)
            ranked = [query for query in queries if query.query not in training_queries or query.query in held]
            if not ranked:
                if may_go_unpicked:
                    return CheckpointSelection(train_set, None, metric="last", note="not picked: the one training "
                                               "query trains, the last step is final")
                queries, note = [], f"{source}'s one labelled query is the only training query"
        if not queries and selection_metric == "map":
            raise InputError(f"--selection_metric map needs gold-labelled candidate lists: {note}")
    if not queries:
        held_out: list[str] = []
        if eval_set is None:
            train_set, eval_set, held = split_by_query(train_set, eval_share, seed, eval_max_queries)
            held_out = [query for query in dict.fromkeys(column_values(eval_set, "query")) if query in held]
        return CheckpointSelection(train_set, eval_set, [], held_out, "loss", f"by eval_loss ({note})")

    if not shared:
        return CheckpointSelection(train_set, eval_set, queries, [], "eval_selection_map",
                                   f"by MAP on a dev set of its own ({note})")
    counted = f"{len(held)} held-out training queries" + (
        f" and {own} that stage 2 dropped" if dropped else f" and {own} of its own" if own else "")
    if may_go_unpicked and own == dropped and len(held) + dropped < MIN_SELECTION_QUERIES:
        return CheckpointSelection(train_set, None, metric="last", note=(
            f"not picked: MAP on {counted} (fewer than {MIN_SELECTION_QUERIES}) would pick checkpoints mostly by "
            "chance, so every query trains and the last step is final (--selection_metric map selects anyway; a "
            "larger --eval_share (or --eval_max_queries) or a labelled dev file as --selection_data gives selection its "
            "queries)"))
    held_passages = {passage for query in ranked if query.query in held for passage in query.passages}
    train_set, held_rows = hold_out(train_set, held, held_passages)
    return CheckpointSelection(train_set, held_rows if eval_set is None and held else eval_set, ranked,
                               [query for query in shared if query in held], "eval_selection_map",
                               f"by MAP on {counted} ({note})")


def made_from(train_source: str, scores_source: str) -> bool:
    """Whether create_triplets.py made ``train_source`` from ``scores_source``, as the arguments it
    wrote beside its output say (False where there are none: a file made elsewhere). Its paths are
    relative to the folder it ran in, which need not be this run's."""
    try:
        record = read_run_args(beside_output(train_source, ".args.json"))
        inputs = record["script"]["input_path"] if record else []
        ran_in = record.get("working_directory", "") if record else ""
        return any(os.path.samefile(os.path.join(ran_in, path), scores_source) for path in inputs)
    except (OSError, ValueError, KeyError, TypeError):  # no record, or a hub id that names no file
        return False


def load_training_data(script, training, evaluate: bool, must_evaluate: bool) -> tuple[str, CheckpointSelection]:
    """Read train.py's data (``script``: its ScriptArguments; ``training``: the training arguments)
    and split it: the training data's kind, and the train / eval / selection split (see
    plan_selection). Logs the warnings; InputError where not one batch would be left to train on."""
    show_progress = not training.disable_tqdm and training.process_index == 0  # one bar, as the Trainer's
    kind, selection = _load_training_data(script, evaluate, training.seed, must_evaluate, show_progress)
    if not evaluate and training.save_strategy == "no":
        selection.note = ("none (--save_strategy no keeps no checkpoint to pick from): every query trains, the "
                          "last step is final")
    if not selection.held_out:
        why = "--eval_data gives the eval loss" if selection.metric == "loss" else f"best checkpoint {selection.note}"
        warn_unread(script, dict.fromkeys(("eval_share", "eval_max_queries"), f"no training query is held out ({why})"))
    if selection.eval is None:  # (--eval_strategy no, or --selection_metric last: nothing is evaluated)
        warn_unread(script, {"eval_data": f"nothing is evaluated (best checkpoint {selection.note})"})
    if not evaluate or script.selection_metric in ("loss", "last"):  # (MAP picks no checkpoint: its lists go unread)
        warn_unread(script, {"selection_data": f"best checkpoint {selection.note}"})
    if not len(selection.train):  # (the Trainer ran no step and saved the untouched student as the final model)
        raise InputError(f"no training row is left: the {len(selection.held_out)} held-out queries, with the lists "
                         "whose query is one of their passages, take every row; lower --eval_share, pass --eval_data "
                         "or a --selection_data of queries of its own, or train on every query with --selection_metric "
                         "last", script.train_data)
    one_batch = training.per_device_train_batch_size * training.world_size
    if training.dataloader_drop_last and len(selection.train) < one_batch:
        # sentence-transformers drops the incomplete last batch under torchrun: no step would run
        raise InputError(f"{len(selection.train)} training rows are fewer than one batch of --per_device_train_batch_size "
                         f"{training.per_device_train_batch_size} x {training.world_size} processes, and the incomplete "
                         "last batch is dropped (always under torchrun), so no step would run; lower the batch size",
                         script.train_data)
    return kind, selection


def _load_training_data(script, evaluate: bool, seed: int, must_evaluate: bool,
                        show_progress: bool = False) -> tuple[str, CheckpointSelection]:
    where = {"hub": script.hub, "cache_dir": script.cache_dir}  # for data sets given as hub ids
    data = read_training_data(script.train_data, script.loss, script.teacher_temperature, script.fused_forward,
                              script.input_format, script.label_column, **where, show_progress=show_progress)
    for warning in (teacher_spread_warning(data, script.train_data, script.teacher_temperature),
                    one_sided_targets_warning(data, script.train_data, script.loss)):
        if warning:
            logger.warning(warning)
    if not evaluate:
        return data.kind, CheckpointSelection(data.to_dataset(), None, metric="last",
                                              note="none (--eval_strategy no): the last step is final")
    eval_set, selection_data = None, script.selection_data
    if script.eval_data:
        path, line, record = first_record(script.eval_data, **where)
        eval_kind = detect_data_kind(record, path, line, script.input_format, script.label_column)
        if eval_kind not in LOSSES[script.loss].inputs and carries_gold_labels(eval_kind, record, path, line,
                                                                               script.label_column):
            raise InputError(f"--eval_data holds {DATA_KINDS[eval_kind]}, on which --loss {script.loss} has no loss "
                             "to compute; to pick checkpoints by MAP on its gold labels, pass it as --selection_data",
                             script.eval_data)
        eval_data = read_training_data(script.eval_data, script.loss, script.teacher_temperature, script.fused_forward,
                                       script.input_format, script.label_column, **where)
        eval_set = eval_data.to_dataset()
        if selection_data is None and carries_gold_labels(eval_data.kind, record, path, line, script.label_column):
            selection_data = script.eval_data  # its gold labels pick by MAP, as a dev set
    selection = plan_selection(data.to_dataset(), data.kind, script.train_data, selection_data,
                               script.selection_metric, eval_set, script.eval_share, seed, must_evaluate,
                               script.input_format, script.label_column, **where,
                               eval_max_queries=script.eval_max_queries)
    if eval_set is not None and (overlap := set(column_values(selection.train, "query"))
                                             & set(column_values(eval_set, "query"))):
        logger.warning("%d queries of --eval_data are also training queries", len(overlap))
    return data.kind, selection


def carries_gold_labels(kind: str, record: dict, path: str, line: int, label_column: str | None) -> bool:
    """Whether data of ``kind`` whose first ``record`` this is carries gold labels per candidate:
    labelled lists do, a scores file where its first line has a label."""
    return kind == "labelled" or (kind == "scores" and label_of(record, path, line, label_column) is not None)


def small_selection_warning(selection: CheckpointSelection) -> str | None:
    """A warning when the checkpoint is picked by MAP on too few queries to tell checkpoints apart."""
    count = len(selection.queries)
    if selection.metric != "eval_selection_map" or count >= MIN_SELECTION_QUERIES:
        return None
    # --eval_share sizes held-out training queries only: a dev set of its own is ranked whole, whatever it is
    remedy = "Hold out more training queries (--eval_share, --eval_max_queries) or pass" if selection.held_out else "Pass"
    return (f"the best checkpoint is picked by MAP on only {count} queries, where one query moves MAP by up to "
            f"{1 / count:.2f}: a noisy choice. {remedy} a labelled dev file of {MIN_SELECTION_QUERIES}+ queries as "
            "--selection_data")


class SelectionEvaluator(BaseEvaluator):
    """MAP, MRR@10 and NDCG@10 of the model's raw logits on held-out queries with gold labels, as
    CrossEncoderTrainer's evaluator (reported as ``eval_selection_map``, ...).

    Uses metrics.evaluate_rankings, as evaluation.py does: on queries with a positive and a
    negative (the only ones given here) it equals sentence-transformers'
    CrossEncoderRerankingEvaluator where no scores tie (see metrics for ties).
    """

    def __init__(self, queries: Sequence[RankingQuery], batch_size: int = 64, name: str = "selection"):
        super().__init__()
        self.queries, self.batch_size, self.name = list(queries), batch_size, name
        self.primary_metric = "map"
        self.evaluated = False  # the same pairs at every evaluation: how many the max_length cuts is logged once

    def __call__(self, model, output_path: str | None = None, epoch: float = -1, steps: int = -1) -> dict:
        with in_float32(model):  # the scores evaluation.py gives the saved model
            scores = score_ranking_queries(model, self.queries, self.batch_size, show_progress_bar=False,
                                           log_cut=not self.evaluated)
        self.evaluated = True
        if all(np.isfinite(by_query).all() for by_query in scores):
            result = evaluate_rankings(zip(scores, [query.labels for query in self.queries]), protocol="mteb")
            metrics = {name: result[name] for name in RANKING_METRICS}
        else:  # a diverged model: the worst marks, so it is never chosen and early stopping can end the run
            logger.warning("step %s: the model gives scores that are not finite (NaN or inf): training has diverged "
                           "(a lower --learning_rate, or bf16 instead of fp16?); this evaluation counts as 0", steps)
            metrics = dict.fromkeys(RANKING_METRICS, 0.0)
        logger.info("step %s: MAP %.4f, MRR@10 %.4f, NDCG@10 %.4f on %d selection queries", steps, metrics["map"],
                    metrics["mrr@10"], metrics["ndcg@10"], len(self.queries))
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics
