"""Stage 4: measure how well a cross-encoder reranks a labelled data set, before and after distillation.

Reports MAP, MRR@10 and NDCG@10 for each model (and for the teacher's own scores with
--teacher_scores), the change from before to after, as a table on stdout and as JSON. With graded
labels (a graded data set such as ESCI's E/S/C/I = 3/2/1/0, or more than two grades), or a teacher
that predicts label words (label_probs), it adds each model's mean score per true grade and, for
that teacher, its label accuracy. Tied scores are averaged over (see rerank_distill.metrics).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from rerank_distill.cli import (
    beside_output,
    check_finite,
    check_minimums,
    command_line,
    parse_args,
    refuse_shared_record,
    run_main,
    warn_unread,
    write_json,
    write_run_args,
)
from rerank_distill.errors import InputError
from rerank_distill.formats import (
    INPUT_FORMATS,
    ListOddities,
    RankingQuery,
    check_output_not_read,
    iter_ranking_queries,
    label_word_grades,
    teacher_scores_for,
)
from rerank_distill.jsonl import check_writable, sole_writer
from rerank_distill.metrics import evaluate_rankings, scores_needed, skip_reason
from rerank_distill.report import AT_K, build_report, format_table, graded_report, is_graded, write_per_query
from rerank_distill.scoring import label_words_to_read
from rerank_distill.student import bfloat16_is_fast, check_rerankers, load_cross_encoder, score_ranking_queries

logger = logging.getLogger("rerank_distill.evaluation")


@dataclass
class EvaluationArguments:
    model_before_path: str = field(metadata={"help": "The model before distillation: a CrossEncoder folder or hub id."})
    dataset_path: str = field(
        metadata={"help": "Labelled test data: MTEB reranking JSONL(.gz), pos/neg or graded rows, or a hub "
                  "data set owner/name[:split], or one downloaded into a folder, DIR:split; one in parts (MTEB v2: "
                  "corpus, queries, qrels, top_ranked) is joined into a query a record."}
    )
    model_after_path: str | None = field(
        default=None, metadata={"help": "The distilled model (e.g. output/model); omit to evaluate one model."}
    )
    output_path: str = field(
        default="output/evaluation.json",
        metadata={"help": "Where to write the JSON report; beside it go each query's metrics per model as "
                  "<name>.per_query.jsonl and the run's arguments as <name>.args.json."},
    )
    teacher_scores: str | None = field(
        default=None,
        metadata={"help": "Stage 1's scores on the same data set (a file, DIR:SPLIT or hub data set): also report "
                  "the teacher's own metrics, the upper bound the student is chasing."},
    )
    protocol: Literal["mteb", "sentence-transformers"] = field(
        default="mteb",
        metadata={"help": "mteb: skip (and count) queries with no positive or no negative. sentence-transformers: "
                  "as its CrossEncoderRerankingEvaluator, a query with no positive scores 0 and stays in the mean."},
    )
    input_format: str = field(
        default="auto", metadata={"help": f"Format of --dataset_path: {', '.join(INPUT_FORMATS)}."}
    )
    label_column: str | None = field(
        default=None,
        metadata={"help": "The grade column of row-per-pair data (default: esci_label, label, grade or relevance)."},
    )
    label_words: list[str] | None = field(
        default=None,
        metadata={"help": "A graded-label teacher's label words, best first (default: those stage 1 recorded in "
                  "the scores' .run.json, which given ones must match; else the keys of its label_probs, which must "
                  "then be ESCI's: exact/substitute/complement/irrelevant or E/S/C/I)."},
    )
    label_grades: list[float] | None = field(
        default=None,
        metadata={"help": "The grade of each --label_words word, same order (default: those stage 1 recorded, "
                  "which given ones must match; else ESCI's 3/2/1/0 for ESCI words, else len-1 down to 0)."},
    )
    hub: Literal["huggingface", "modelscope"] = field(
        default="huggingface", metadata={"help": "Where hub ids of models and data sets are fetched from."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Download cache for hub models and data sets."})
    batch_size: int = field(default=64, metadata={"help": "(query, passage) pairs per forward pass."})
    max_length: int | None = field(
        default=None, metadata={"help": "Truncate each pair to this many tokens; unset keeps the model's own limit."}
    )
    dtype: Literal["float32", "bfloat16"] = field(
        default="float32",
        metadata={"help": "bfloat16 runs the students under bf16 autocast (head in float32): several times faster "
                  "on GPUs and CPUs with bf16 units (elsewhere emulated, and slower), but scores move (up to a few "
                  "hundredths of their spread) and metrics can move in the 3rd decimal."},
    )


def read_queries(args: EvaluationArguments) -> list[RankingQuery]:
    """The whole data set, validated, so bad input fails before any model is loaded."""
    queries = list(iter_ranking_queries(
        args.dataset_path, args.input_format, args.hub, args.cache_dir, label_column=args.label_column,
        nonnegative_grades=True,
    ))  # fmt: skip
    if args.protocol == "mteb" and all(skip_reason(query.labels) for query in queries):
        raise InputError("no query has both a positive and a negative: --protocol mteb has nothing to evaluate",
                         args.dataset_path)
    ListOddities.found_in(queries).warn(args.dataset_path, "each is evaluated as it is")
    return queries


def check_report_paths(args: EvaluationArguments) -> None:
    """InputError where the report, or a file written beside it, cannot be written, or would
    destroy an input or land inside a model's folder (whose config.json it could overwrite)."""
    check_writable(args.output_path, "--output_path")
    beside_report = [beside_output(args.output_path, ending) for ending in (".per_query.jsonl", ".args.json")]
    for written in beside_report:  # (written after every model has scored, the report deleted first)
        check_writable(written, "--output_path's companion file")
    refuse_shared_record(args.output_path, "--output_path")
    sources = [args.dataset_path, *([args.teacher_scores] if args.teacher_scores else [])]
    for written in (args.output_path, *beside_report):
        check_output_not_read(written, sources, "--output_path")
        for name, model in (("before", args.model_before_path), ("after", args.model_after_path)):
            if model and Path(model).is_dir() and Path(written).resolve().is_relative_to(Path(model).resolve()):
                raise InputError(f"--output_path {args.output_path} is inside the model folder of --model_{name}_path "
                                 f"{model}: the report could overwrite its files (config.json); write it elsewhere")


def main(argv: list[str] | None = None) -> dict:
    (args,) = parse_args((EvaluationArguments,), __doc__, argv)
    check_minimums(args, batch_size=1, max_length=1)
    if args.label_words is not None:  # checked before any file is read, as stage 1 checks them
        label_word_grades(args.label_words, args.label_grades)
    check_finite(args)  # (--label_grades beside --label_words are checked above, with the words)
    check_report_paths(args)
    with sole_writer(Path(args.output_path)):  # one run at a time writes the report and its companions
        return evaluate(args, argv)


def evaluate(args: EvaluationArguments, argv: list[str] | None) -> dict:
    """Score the data set with each model, and write the report, its per-query file and args.json."""
    started = time.time()
    queries = read_queries(args)
    labels = [query.labels for query in queries]
    teacher = None
    if args.teacher_scores:
        words, grades = label_words_to_read(args.teacher_scores, args.label_words, args.label_grades)
        teacher = teacher_scores_for(queries, args.teacher_scores, words, grades, args.hub, args.cache_dir)
    if teacher is None or teacher.label_probs is None:  # (they were dropped in silence)
        warn_unread(args, dict.fromkeys(("label_words", "label_grades"), "only a label teacher's label_probs are read "
                                        "with them, and " + (f"{args.teacher_scores} has none" if teacher else
                                                             "no --teacher_scores is given")))
    models = {"before": args.model_before_path, **({"after": args.model_after_path} if args.model_after_path else {})}
    folders = check_rerankers(models, args.hub, args.cache_dir)

    graded = is_graded(queries, teacher)
    # the metrics never read the scores of queries the protocol skips; the graded means use every pair
    wanted = [graded or scores_needed(query.labels, args.protocol) for query in queries]
    scores = {}
    unscored = "; the protocol reads no scores of the others" if not all(wanted) else ""
    for name, path in models.items():
        logger.info("scoring %d of %d queries of %s with %s (%s)%s", sum(wanted), len(queries), args.dataset_path,
                    path, name, unscored)  # fmt: skip
        model = load_cross_encoder(folders[name], max_length=args.max_length)
        if args.dtype == "bfloat16" and not bfloat16_is_fast(model.device):
            logger.warning("%s has no bfloat16 units: --dtype bfloat16 is emulated and may be slower", model.device)
        scores[name] = score_ranking_queries(model, queries, args.batch_size, dtype=args.dtype, wanted=wanted)
        del model  # one model in memory at a time
        not_finite = sum(np.count_nonzero(~np.isfinite(s)) for s, keep in zip(scores[name], wanted) if keep)
        if not_finite:  # a NaN has no rank; left in, it would rank first or last by accident
            raise InputError(f"the {name} model gives {not_finite} pairs a score that is not finite (NaN or inf): "
                             "its weights are broken (did its training diverge?)", path)
    if teacher is not None:
        scores["teacher"] = teacher.per_query
    results = {name: evaluate_rankings(zip(by_query, labels), args.protocol, AT_K) for name, by_query in scores.items()}

    report, per_query = build_report(args.protocol, args.dataset_path, args.teacher_scores, queries, wanted,
                                     models, results)
    if "teacher" in results and report["teacher"]["map"] < report["before"]["map"]:
        logger.warning("the teacher's MAP (%.4f) is below the student's before training (%.4f): distilled from "
                       "it, the student learns to rank worse; check the teacher (its model, --instruction)",
                       report["teacher"]["map"], report["before"]["map"])
    if graded:  # binary data without label_probs: MAP, MRR and NDCG say it all
        report["graded"] = graded_report(queries, scores, teacher)
    report["seconds"] = round(time.time() - started, 2)

    print(format_table(report))
    # the report last, an earlier one gone first: a crash in between never leaves it beside another run's files
    Path(args.output_path).unlink(missing_ok=True)
    write_per_query(beside_output(args.output_path, ".per_query.jsonl"), queries, per_query)
    write_run_args(beside_output(args.output_path, ".args.json"), command_line(__file__, argv), script=args)
    write_json(args.output_path, report)
    scored = report["pairs_scored"] * len(models)
    logger.info(
        "wrote %s: %d queries (%d evaluated, %d skipped), %d of %d pairs scored by %s in %.1fs (%.0f pairs/s)",
        args.output_path, len(queries), report["queries_evaluated"], report["queries_skipped"], report["pairs_scored"],
        report["pairs"], f"each of {len(models)} models" if len(models) > 1 else "the model", report["seconds"],
        scored / max(report["seconds"], 1e-9),
    )  # fmt: skip
    return report


if __name__ == "__main__":
    run_main(main)
