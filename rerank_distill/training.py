"""Checkpoint selection and command-line defaults for train.py: the held-out training queries,
selection by their MAP, the flags train.py adds unless the user passes them, and resuming."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator
from transformers import TrainerState

from rerank_distill.cli import check_minimums, parse_args, to_jsonable, warn_unread
from rerank_distill.errors import InputError
from rerank_distill.formats import (
    RankingQuery,
    first_record,
    iter_ranking_queries,
    iter_scored_pairs,
    label_of,
    local_files,
)
from rerank_distill.jsonl import WRITE_CHECK_PREFIX, check_writable, no_empty_folders_left, only_writer
from rerank_distill.losses import LOSSES
from rerank_distill.metrics import SKIP_REASONS, evaluate_rankings, skip_reason
from rerank_distill.student import in_float32, score_ranking_queries
from rerank_distill.trainer import TimeBudget, saved_early_stopping
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

# ---------------------------------------------------------------------------------------------
# Held-out queries and checkpoint selection
# ---------------------------------------------------------------------------------------------


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
    """Split a data set into (train, eval) by whole queries (see held_out_queries): every row of
    a held-out query goes to eval, so no query is in both."""
    return split_rows(dataset, held_out_queries(column_values(dataset, "query"), share, seed, max_count))


def read_selection_queries(source: str, input_format: str = "auto", label_column: str | None = None,
                           is_training_data: bool = False, hub: str = "huggingface",
                           cache_dir: str | None = None) -> tuple[list[RankingQuery], str]:
    """The queries of ``source`` that MAP can rank: each with its candidates and gold labels,
    and at least one positive and one negative. Returns ``(queries, note)``; queries is empty
    when the file has no gold labels or no such query, and the note says why. A scores file
    without gold labels is still read through for errors, unless ``is_training_data`` (read and
    checked already); a file of another kind is judged by its first line alone. ``hub``/``cache_dir``:
    where a hub data set is fetched from."""
    path, line, record = first_record(source, hub, cache_dir)
    kind = detect_data_kind(record, path, line, input_format, label_column)
    if kind not in RANKING_KINDS:
        return [], f"{source} holds {DATA_KINDS[kind]}, not candidate lists with gold labels"
    if not carries_gold_labels(kind, record, path, line, label_column):
        if not is_training_data:  # a broken file is an error, used or not
            for _ in iter_scored_pairs(source, label_column, hub, cache_dir):
                pass
        return [], f'{source} has teacher scores but no gold "{label_column or "label"}" field'
    queries, skipped = [], dict.fromkeys(SKIP_REASONS, 0)
    for query in iter_ranking_queries(source, input_format, hub, cache_dir, label_column=label_column):
        reason = skip_reason(query.labels)
        if reason is None:
            queries.append(query)
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
# train.py's --eval_max_queries unless given. Checkpoints are compared on the same queries, so the
# noise in their MAP difference falls well below one query-set's own (per-query AP spreads about
# 0.3: ±0.01 for 1000 queries); more would cost each evaluation time and training its queries.
DEFAULT_EVAL_MAX_QUERIES = 1000

# Flags by which a user asks for held-out evaluation, so "auto" never turns it off for them.
EVALUATION_FLAGS = {"eval_strategy", "eval_steps", "load_best_model_at_end", "metric_for_best_model", "eval_share",
                    "eval_max_queries"}

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
            train_set, eval_set = split_by_query(train_set, eval_share, seed, eval_max_queries)
            held_out = list(dict.fromkeys(column_values(eval_set, "query")))
        return CheckpointSelection(train_set, eval_set, [], held_out, "loss", f"by eval_loss ({note})")

    if not shared:
        return CheckpointSelection(train_set, eval_set, queries, [], "eval_selection_map",
                                   f"by MAP on a dev set of its own ({note})")
    counted = f"{len(held)} held-out training queries" + (f" and {own} of its own" if own else "")
    if may_go_unpicked and not own and len(held) < MIN_SELECTION_QUERIES:
        return CheckpointSelection(train_set, None, metric="last", note=(
            f"not picked: MAP on {counted} (fewer than {MIN_SELECTION_QUERIES}) would pick checkpoints mostly by "
            "chance, so every query trains and the last step is final (--selection_metric map selects anyway; a "
            "larger --eval_share or a labelled dev file as --selection_data gives selection its queries)"))
    # Lists made of a held-out query's passages (--passages_as_queries) rank its own candidates
    # against each other, and the query among them, with the teacher's scores: held out with it.
    held_passages = {passage for query in ranked if query.query in held for passage in query.passages} - held
    train_set, held_rows = split_rows(train_set, held | held_passages)
    if derived := sum(query in held_passages for query in column_values(held_rows, "query")):
        logger.info("%d training rows whose query is a passage of a held-out query (lists of passages as queries) "
                    "are held out with it", derived)
    return CheckpointSelection(train_set, held_rows if eval_set is None and held else eval_set, ranked,
                               [query for query in shared if query in held], "eval_selection_map",
                               f"by MAP on {counted} ({note})")


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
    remedy = "Hold out more training queries (--eval_share) or pass" if selection.held_out else "Pass"
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

    def __call__(self, model, output_path: str | None = None, epoch: float = -1, steps: int = -1) -> dict:
        with in_float32(model):  # the scores evaluation.py gives the saved model
            scores = score_ranking_queries(model, self.queries, self.batch_size, show_progress_bar=False)
        if all(np.isfinite(by_query).all() for by_query in scores):
            result = evaluate_rankings(zip(scores, [query.labels for query in self.queries]), protocol="mteb")
            metrics = {name: result[name] for name in ("map", "mrr@10", "ndcg@10")}
        else:  # a diverged model: the worst marks, so it is never chosen and early stopping can end the run
            logger.warning("step %s: the model gives scores that are not finite (NaN or inf): training has diverged "
                           "(a lower --learning_rate, or bf16 instead of fp16?); this evaluation counts as 0", steps)
            metrics = dict.fromkeys(("map", "mrr@10", "ndcg@10"), 0.0)
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


def parse_training_args(script_arguments: type, description: str, argv: list[str]):
    """train.py's command line: ``(script arguments, CrossEncoderTrainingArguments, the flags the
    user passed)``, with default_training_flags in front of the user's own; InputError for a flag
    combination transformers refuses, or for a missing --output_dir."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments

    passed = passed_flags(argv)
    try:  # transformers checks flag combinations (e.g. mismatched strategies) with ValueError
        script, training = parse_args(
            (script_arguments, CrossEncoderTrainingArguments), description, default_training_flags(passed) + argv,
            help_overrides={
                "resume_from_checkpoint": "Continue an interrupted run: a checkpoint folder, or last for the newest "
                "complete checkpoint-N in --output_dir. It must keep the run's data, model, loss and optimiser "
                "settings (its args.json); limits may be raised, speed flags changed.",
                "metric_for_best_model": "What picks the best checkpoint; unset, train.py sets it from "
                "--selection_metric: eval_selection_map (held-out MAP) or eval_loss.",
                "output_dir": "Required: where the final model, its checkpoints, args.json and training_summary.json "
                "go.",
            },
            shown_defaults=default_training_values(),
        )
    except ValueError as error:
        raise InputError(str(error)) from None
    if "output_dir" not in passed:
        raise InputError("--output_dir is required (the final model and checkpoints go there)")
    return script, training, passed


def default_training_values() -> dict[str, str]:
    """What default_training_flags sets where the user passes nothing, by field name (for --help)."""
    flags = default_training_flags({})
    return {flag.removeprefix("--"): value for flag, value in zip(flags[::2], flags[1::2])}


def set_best_metric(training, passed: dict[str, str | None], selection: CheckpointSelection) -> None:
    """Make the selection's metric (``eval_selection_map`` or ``loss``) pick the best checkpoint,
    unless the user passed --metric_for_best_model (InputError where theirs needs ranked queries
    the selection has none of); higher is better for everything but a loss."""
    if "metric_for_best_model" not in passed:
        training.metric_for_best_model = selection.metric
    elif "selection_" in training.metric_for_best_model and not selection.queries:
        raise InputError(f"--metric_for_best_model {training.metric_for_best_model} needs gold-labelled candidate "
                         f"lists to rank, and there are none: {selection.note}")
    if "greater_is_better" not in passed:
        training.greater_is_better = not training.metric_for_best_model.endswith("loss")


def state_saved(checkpoint: str | Path) -> bool:
    """Whether a checkpoint folder's trainer_state.json is whole. The Trainer writes it last, and in
    place, so a run stopped while saving leaves it missing, empty or cut short."""
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and isinstance(state.get("global_step"), int)


def newest_checkpoint(output_dir: str, set_aside_incomplete: bool = False) -> str | None:
    """The newest complete checkpoint-* folder in ``output_dir`` (one whose trainer_state.json,
    which the Trainer writes last, is whole: a run stopped while saving leaves a newer folder
    without it, or with it cut short), or None when there is none (yet). ``set_aside_incomplete``
    renames such a folder to ``incomplete-checkpoint-N`` (on the main process), as the Trainer
    would otherwise keep it as the newest checkpoint and delete the resumed run's own in its place
    (save_total_limit)."""
    steps = {p: p.name.removeprefix("checkpoint-") for p in Path(output_dir).glob("checkpoint-*") if p.is_dir()}
    folders = [folder for folder, step in steps.items() if step.isdigit()]
    for folder in sorted(folders, key=lambda folder: int(steps[folder]), reverse=True):
        if state_saved(folder):
            return str(folder)
        if set_aside_incomplete and is_main_process():
            aside = folder.with_name(f"incomplete-{folder.name}")
            if aside.exists():  # set aside once already, by a run stopped while saving the same step
                shutil.rmtree(aside)
            folder.rename(aside)
            logger.warning("%s is incomplete (the run stopped while saving it): set aside as incomplete-%s",
                           folder, folder.name)
        else:
            logger.warning("%s is incomplete (the run stopped while saving it); it is passed over", folder)
    return None


def earlier_checkpoints(output_dir: str) -> list[Path]:
    """The checkpoint folders a run left in ``output_dir`` (``incomplete-checkpoint-N`` included)."""
    folders = [p for p in Path(output_dir).glob("*checkpoint-*")
               if p.is_dir() and re.fullmatch(r"(incomplete-)?checkpoint-\d+", p.name)]  # fmt: skip
    return sorted(folders, key=lambda p: (p.name.startswith("incomplete"), len(p.name), p.name))  # 9 before 10


SUMMARY_FILE = "training_summary.json"  # written last, once the final model is saved: the run ended
# What makes a folder load as a model (with the summary, what a fresh run clears away)
FINAL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors", "pytorch_model.bin")


def earlier_final_model(output_dir: str) -> list[Path]:
    """The files of a final model an earlier run saved in ``output_dir``: its weights and summary."""
    folder = Path(output_dir)
    return sorted(p for pattern in (SUMMARY_FILE, *FINAL_WEIGHTS) for p in folder.glob(pattern) if p.is_file())


def check_training_flags(script, training) -> None:
    """InputError for train.py flags (``script``: its ScriptArguments; ``training``: the training
    arguments) below their minimums or at odds with each other, before anything is read."""
    check_minimums(script, max_length=1, pairs_per_forward=0, early_stopping_patience=0, eval_max_queries=0)
    # transformers reads max_steps <= 0 as unset, except 0 itself, which crashed its logging schedule;
    # no epochs with no steps saved the untouched student as if it were trained
    if training.max_steps == 0:
        raise InputError("--max_steps 0 trains no step; pass a positive number of steps, or leave it out to train for "
                         "--num_train_epochs")
    if training.max_steps < 0 and not training.num_train_epochs > 0:
        raise InputError(f"--num_train_epochs {training.num_train_epochs:g} trains no step; pass a positive number of "
                         "epochs (or --max_steps N)")
    if script.early_stopping_patience > 0 and training.eval_strategy == "no":
        raise InputError("--early_stopping_patience needs evaluations to compare; drop --eval_strategy no")
    if script.early_stopping_patience > 0 and script.selection_metric == "last":
        raise InputError("--early_stopping_patience needs evaluations to compare; --selection_metric last has none")
    if script.selection_metric in ("map", "loss") and training.eval_strategy == "no":
        raise InputError(f"--selection_metric {script.selection_metric} picks a checkpoint by evaluations, and "
                         "--eval_strategy no runs none: drop one of them")
    if script.selection_metric in ("map", "loss") and training.save_strategy == "no":  # (it held queries out, and
        # evaluated them, for a final model that was the last step all the same)
        raise InputError(f"--selection_metric {script.selection_metric} picks the best of the checkpoints, and "
                         "--save_strategy no saves none: drop one of them (--selection_metric last trains on every "
                         "query and keeps the last step)")
    # a setting the loss does not read: a warning, not a refusal (a TEACHER_TEMPERATURE set for train.sh is passed
    # whatever the loss)
    if script.teacher_temperature != 1 and not LOSSES[script.loss].reads_teacher:
        logger.warning("--teacher_temperature %g does nothing here: --loss %s reads no teacher scores",
                       script.teacher_temperature, script.loss)
    passes = LOSSES[script.loss].pairs_per_example and (script.loss != "margin_mse" or script.fused_forward)
    if script.pairs_per_forward and not passes:
        logger.warning("--pairs_per_forward %d does nothing here: %s", script.pairs_per_forward,
                       "--no_fused_forward runs sentence-transformers' MarginMSELoss as is" if script.loss == "margin_mse"
                       else f"--loss {script.loss} scores one pair an example")
    if not script.fused_forward and script.loss != "margin_mse":
        logger.warning("--no_fused_forward does nothing here: only --loss margin_mse has a fused forward pass")


# Held in --output_dir while a run writes there (claim_output_dir)
TRAIN_LOCK = "train.lock"


@contextmanager
def claim_output_dir(output_dir: str, model_path: str) -> Iterator[None]:
    """Check --output_dir (check_output_dir), then, on the process that writes files, hold its
    train.lock for the block: a second run into the same folder stops at once instead of mixing
    its checkpoints, args.json and model with the first's. A run refused before it wrote anything
    leaves no folder behind."""
    check_output_dir(output_dir, model_path)
    if not is_main_process():
        yield
        return
    with no_empty_folders_left(output_dir), only_writer(Path(output_dir), Path(output_dir) / TRAIN_LOCK):
        yield


def prepare_resume(script, training) -> tuple[str | None, TrainerState | None, dict[str, str | None]]:
    """Where train.py's run starts: the checkpoint it resumes from and that checkpoint's state
    (None, None for a fresh start; see resolve_checkpoint and resumed_state), and the digests of
    its data files (--train_data, --selection_data, --eval_data) where they are compared with the
    resumed run's (check_resume_settings, by the args.json beside the checkpoint) or recorded."""
    resume = resolve_checkpoint(training.resume_from_checkpoint, training.output_dir, script.overwrite_output_dir)
    resumed = resumed_state(resume, training, script.max_train_seconds, script.early_stopping_patience)
    digests = {}
    if resume is not None or training.should_save:  # (every torchrun process would read the whole files)
        by_source: dict[str, str | None] = {}  # a file given for two flags (training and selection) is read once
        for flag in ("train_data", "selection_data", "eval_data"):
            if source := getattr(script, flag):
                if source not in by_source:
                    by_source[source] = data_digest(source)
                digests[f"{flag}_digest"] = by_source[source]
    if resume is not None:
        check_resume_settings(str(Path(resume).parent), script, training, digests)
    return resume, resumed, digests


def check_output_dir(output_dir: str, model_path: str) -> None:
    """InputError where ``output_dir`` cannot be written or holds the student's own folder
    (training would overwrite the model it starts from, or --overwrite_output_dir delete it)."""
    check_writable(output_dir, "--output_dir", folder=True)
    if Path(model_path).exists() and Path(model_path).resolve().is_relative_to(Path(output_dir).resolve()):
        raise InputError(f"--model_name_or_path {model_path} is in --output_dir {output_dir}: training would overwrite "
                         "or delete the model it starts from; choose another --output_dir (or, to continue a run from "
                         "its checkpoint, --resume_from_checkpoint)")


def resolve_checkpoint(value: str | None, output_dir: str, overwrite: bool = False) -> str | None:
    """--resume_from_checkpoint: a checkpoint folder, or 'last'/'true' for the newest in output_dir.

    A fresh run (``value`` None) must not share output_dir with an earlier run's checkpoints: the
    Trainer would rotate its own away in their place, and "resume from the newest" would pick one
    of theirs; nor with its final model, which would pass for this run's until this one ends. So
    they stop it (InputError), unless ``overwrite`` (--overwrite_output_dir: the caller deletes
    them with clear_earlier_outputs once its input has passed its checks)."""
    if value is not None and overwrite:
        raise InputError("--overwrite_output_dir starts over and --resume_from_checkpoint continues: pass one of them")
    if value is None:  # a fresh run; --overwrite_output_dir deletes what an earlier one left
        if not overwrite:
            refuse_earlier_run(output_dir)
        refuse_foreign_files(output_dir)
        return None
    if value.lower() in ("last", "true"):
        last = newest_checkpoint(output_dir, set_aside_incomplete=True)
        if last is None:
            raise InputError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {output_dir}")
        return last
    if not (Path(value) / "trainer_state.json").is_file():
        raise InputError(f"--resume_from_checkpoint {value}: not a checkpoint folder (no trainer_state.json)")
    if not state_saved(value):
        raise InputError(f"--resume_from_checkpoint {value}: its trainer_state.json is cut short (the run stopped while "
                         "saving it): pass 'last' to set it aside and resume from the newest whole one")
    return value


def refuse_foreign_files(output_dir: str) -> None:
    """InputError where ``output_dir`` holds files and no train.py run made it (it has no args.json
    of one): a fresh run would overwrite them with its own (config.json, README.md, args.json, ...),
    and --overwrite_output_dir deletes only what a run left."""
    folder = Path(output_dir)
    if not folder.is_dir() or made_by_train_py(folder / "args.json"):
        return
    runs = {TRAIN_LOCK, *(path.name for path in (*earlier_checkpoints(output_dir), *earlier_final_model(output_dir)))}
    entries = sorted(path.name for path in folder.iterdir()
                     if path.name not in runs and not path.name.startswith(WRITE_CHECK_PREFIX))
    if not entries:  # (what a run left without its args.json, refuse_earlier_run speaks of)
        return
    raise InputError(f"{output_dir} holds files that are not a training run's ({', '.join(entries[:4])}"
                     f"{', ...' if len(entries) > 4 else ''}), which the run would overwrite with its model and "
                     "records: choose a new or empty --output_dir")


def made_by_train_py(args_file: Path) -> bool:
    """Whether ``args_file`` is the args.json of a train.py run."""
    try:
        return json.loads(args_file.read_text(encoding="utf-8"))["command"][0] == "train.py"
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False


def refuse_earlier_run(output_dir: str) -> None:
    """InputError where ``output_dir`` holds an earlier run's checkpoints or final model (see
    resolve_checkpoint), saying what to do: resume it, or where it ended, raise its limits first."""
    earlier = earlier_checkpoints(output_dir)
    if not earlier:
        if earlier_final_model(output_dir):
            raise InputError(f"{output_dir} holds the final model of an earlier run: start over with "
                             "--overwrite_output_dir (deletes it) or choose another --output_dir")
        return
    names = f"{', '.join(p.name for p in earlier[:3])}{', ...' if len(earlier) > 3 else ''}"
    last = newest_checkpoint(output_dir)
    if last is None:  # only folders a stop while saving left unfinished: nothing to resume from
        raise InputError(f"{output_dir} holds only unfinished checkpoints of an earlier run ({names}), nothing to "
                         "resume from: start over with --overwrite_output_dir (deletes them) or choose another "
                         "--output_dir")
    state = TrainerState.load_from_json(str(Path(last) / "trainer_state.json"))
    budget, stopping = TimeBudget.saved(state), saved_early_stopping(state)
    seconds = budget["args"]["seconds"] if budget else None
    patience = stopping["args"]["early_stopping_patience"] if stopping else 0
    # ended as it was planned? (its own limits: not necessarily flags that run was given)
    if end_reached(state, state.max_steps, state.num_train_epochs, seconds, patience):
        if not final_model_saved(output_dir, state):  # stopped while saving it
            raise InputError(
                f"{output_dir} holds checkpoints of an earlier run, which ended ({names}; at step {state.global_step} "
                f"of {state.max_steps}) but was stopped before its final model was saved: pass --resume_from_checkpoint "
                "last to save it, or start over with --overwrite_output_dir (deletes them)")
        raise InputError(
            f"{output_dir} holds checkpoints of an earlier run, which ended ({names}; at step {state.global_step} of "
            f"{state.max_steps}): start over with --overwrite_output_dir (deletes them) or choose another "
            "--output_dir; to train it further, raise --max_steps, --num_train_epochs, --max_train_seconds or "
            "--early_stopping_patience (whichever ended it) and "
            "pass --resume_from_checkpoint last"
        )
    raise InputError(
        f"{output_dir} holds checkpoints of an earlier run ({names}): continue it with --resume_from_checkpoint "
        "last, start over with --overwrite_output_dir (deletes them), or choose another --output_dir"
    )


def final_model_saved(output_dir: str, state: TrainerState) -> bool:
    """Whether the run in ``output_dir`` saved its final model after the checkpoint of ``state``:
    its training_summary.json, written last, counts that many steps."""
    summary = Path(output_dir) / SUMMARY_FILE
    return summary.exists() and json.loads(summary.read_text(encoding="utf-8")).get("steps", 0) >= state.global_step


def end_reached(state: TrainerState, max_steps: int, num_train_epochs: float, max_train_seconds: float | None,
                early_stopping_patience: int = 0) -> str | None:
    """Which limit a run resumed from ``state`` with these limits has already reached, so it would
    have nothing left to train (the Trainer would take one more step anyway), or None."""
    stopping = saved_early_stopping(state)
    if stopping and early_stopping_patience > 0:
        evaluations = stopping["attributes"]["early_stopping_patience_counter"]
        if evaluations >= early_stopping_patience:
            return (f"{evaluations} evaluations without a better model by step {state.global_step}: "
                    f"--early_stopping_patience {early_stopping_patience} stops there")
    if max_steps > 0 and state.global_step >= max_steps:
        return f"step {state.global_step} of --max_steps {max_steps}"
    if max_steps <= 0 and 0 < state.max_steps <= state.global_step and (state.epoch or 0) >= num_train_epochs - 1e-9:
        return f"--num_train_epochs {num_train_epochs:g} done in {state.global_step} steps"
    budget = TimeBudget.saved(state)
    if budget and budget["attributes"].get("stopped_training") and max_train_seconds is not None:
        if max_train_seconds <= budget["args"]["seconds"]:
            return f"--max_train_seconds {budget['args']['seconds']:g} spent at step {state.global_step}"
    return None


def resumed_state(checkpoint: str | None, training, max_train_seconds: float | None,
                  early_stopping_patience: int = 0) -> TrainerState | None:
    """The TrainerState a run resumes from (None for a fresh run); InputError where the checkpoint
    already reached what this command asks for and the run it ended saved its final model (its
    training_summary.json): there is nothing left to do. (Where that final save was cut short,
    the resume makes it.)

    Logging, evaluation and save intervals given as shares of the run (train.py's 0.02 and 0.1)
    are set to the step counts the checkpoint resolved them to, where the run's length is the
    same: transformers takes the checkpoint's counts on a resume anyway, and compares the share
    with them to warn on every resume that the arguments changed."""
    if checkpoint is None:
        return None
    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    if 0 < training.max_steps < state.global_step:
        raise InputError(f"{checkpoint} is at step {state.global_step}, past --max_steps {training.max_steps}: resume "
                         f"with --max_steps {state.max_steps} (its run's) or more")
    ended = end_reached(state, training.max_steps, training.num_train_epochs, max_train_seconds,
                        early_stopping_patience)
    if ended and final_model_saved(training.output_dir, state):
        raise InputError(
            f"{checkpoint} already reached the end this command asks for ({ended}), and its final model is saved: "
            "to train further raise that limit; to start over pass --overwrite_output_dir instead of "
            "--resume_from_checkpoint"
        )
    if training.max_steps in (-1, 0, state.max_steps):
        for name in ("logging_steps", "eval_steps", "save_steps"):
            share, steps = getattr(training, name), getattr(state, name)
            if share is not None and 0 < share < 1 and steps == math.ceil(share * state.max_steps):
                setattr(training, name, steps)
    return state


# What a resumed run may change: the time limit, early stopping, and flags of speed, hub access and
# overwriting. Every other flag of train.py's own must match the run it continues (its data, model, loss
# and their settings: a flag added later must match too, unless listed here); of Hugging Face's training
# flags, those of the optimisation must.
RESUME_MAY_CHANGE = ("max_train_seconds", "early_stopping_patience", "fused_forward", "pairs_per_forward",
                     "overwrite_output_dir", "hub", "cache_dir")
RESUME_MUST_MATCH_TRAINING = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                              "lr_scheduler_type", "warmup_steps", "weight_decay", "seed", "optim", "adam_beta1",
                              "adam_beta2", "adam_epsilon", "max_grad_norm", "data_seed")


# The train.py settings that name a model or data on disk: compared by what they name
PATH_SETTINGS = ("model_name_or_path", "train_data", "selection_data", "eval_data")


def path_identity(value: str | None) -> str | None:
    """One name for what a path setting names however it is spelled (``./m``, ``m``, a link to it):
    a local file's or folder's real path (a folder's ``:SPLIT`` kept); a hub id or None as it is."""
    if not value or os.path.exists(value):
        return os.path.realpath(value) if value else value
    folder, colon, split = value.rpartition(":")
    return os.path.realpath(folder) + colon + split if colon and os.path.isdir(folder) else value


def data_digest(source: str) -> str | None:
    """A digest of the bytes of a data source's local files (None for a hub data set)."""
    files = local_files(source)
    if not files:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        with open(path, "rb") as data:
            for block in iter(lambda: data.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_resume_settings(run_dir: str, script, training, data_digests: dict[str, str | None]) -> None:
    """InputError where a resumed run differs from the run it continues (its args.json in
    ``run_dir``, the folder of the checkpoint) in a setting that must match (see RESUME_MAY_CHANGE),
    the content of a data file (``data_digests``: prepare_resume's) or the number of processes: the
    model would be half one run, half another (a query held out by one trained by the other), and
    args.json would describe only the second."""
    recorded_path = Path(run_dir) / "args.json"
    if not recorded_path.exists():
        return
    recorded = json.loads(recorded_path.read_text(encoding="utf-8"))
    current = {"script": to_jsonable(script), "training": to_jsonable(training)}
    # paths by what they name where the record has it (a run's own folder and files, spelled another way or
    # from another working directory, are the same run's)
    named = recorded.get("resolved", {}).get("paths", {})
    current["script"].update({key: path_identity(current["script"].get(key)) for key in named})
    recorded = {**recorded, "script": {**recorded.get("script", {}), **named}}
    must_match = {"script": [key for key in current["script"] if key not in RESUME_MAY_CHANGE],
                  "training": RESUME_MUST_MATCH_TRAINING}
    differs = [f"--{key}" for section, keys in must_match.items() for key in keys
               if key in recorded.get(section, {}) and recorded[section][key] != current[section][key]]
    for key, digest in data_digests.items():
        flag = f"--{key.removesuffix('_digest')}"
        was = recorded.get("data", {}).get(key)
        if was and digest and was != digest and flag not in differs:
            differs.append(f"the content of {flag}")
    processes = recorded.get("resolved", {}).get("processes", training.world_size)  # (not in older records)
    if processes != training.world_size:  # a step's examples are per process: the batch would change
        differs.append(f"the number of processes ({processes}, now {training.world_size}: torchrun's --nproc_per_node)")
    if differs:
        raise InputError(
            f"{run_dir} holds a run made with other settings (differing: {', '.join(differs)}; see its args.json): "
            "resume it with the same ones, or start over with --overwrite_output_dir"
        )


def clear_earlier_outputs(output_dir: str, fresh: bool) -> None:
    """Before a run trains (on the main process): a fresh one (--overwrite_output_dir) deletes the
    checkpoints and final model an earlier run left; a resumed one its training_summary.json, which
    says the folder's final model is the run's last word (written again when this run ends)."""
    if not is_main_process():
        return
    if not fresh:
        (Path(output_dir) / SUMMARY_FILE).unlink(missing_ok=True)
        return
    checkpoints, final_model = earlier_checkpoints(output_dir), earlier_final_model(output_dir)
    for folder in checkpoints:
        shutil.rmtree(folder)
    for file in final_model:
        file.unlink()
    if checkpoints or final_model:
        logger.info("--overwrite_output_dir: deleted %d checkpoints%s of an earlier run in %s", len(checkpoints),
                    " and its final model" if final_model else "", output_dir)


def is_main_process() -> bool:
    """Whether this is torchrun's rank 0 (or no torchrun at all): the one process that changes files."""
    return os.environ.get("RANK", "0") == "0"


def resume_hint(output_dir: str) -> str:
    """What to do after an interrupted training run: resume from its newest checkpoint, or start
    over when none was saved yet."""
    last = newest_checkpoint(output_dir)
    if last is None:
        return f"interrupted before the first checkpoint was saved in {output_dir}; run the same command to start again"
    return (f"interrupted: the newest checkpoint is {last}; run the same command with "
            "--resume_from_checkpoint last (and without --overwrite_output_dir) to continue from it")
