"""Stage 4: measure how well a cross-encoder reranks a labelled data set, before and after distillation.

Reports MAP, MRR@10 and NDCG@10 for each model (and for the teacher's own scores with
--teacher_scores), the change from before to after, as a table on stdout and as JSON.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from rerank_distill.cli import parse_args, run_main, write_run_args
from rerank_distill.errors import InputError
from rerank_distill.formats import INPUT_FORMATS, RankingQuery, iter_ranking_queries, iter_scored_pairs
from rerank_distill.hub import resolve_model
from rerank_distill.jsonl import AtomicWriter
from rerank_distill.metrics import PROTOCOL_RULES, evaluate_rankings, skip_reason
from rerank_distill.student import load_cross_encoder, score_ranking_queries

logger = logging.getLogger("rerank_distill.evaluation")
AT_K = 10
METRICS = ("map", f"mrr@{AT_K}", f"ndcg@{AT_K}")
TIES = "descending score, then the passage's position in the data set"


@dataclass
class EvaluationArguments:
    model_before_path: str = field(metadata={"help": "The model before distillation: a CrossEncoder folder or hub id."})
    dataset_path: str = field(
        metadata={"help": "Labelled test data: MTEB reranking JSONL(.gz), pos/neg or graded rows, or a hub "
                  "data set owner/name[:split]."}
    )
    model_after_path: str | None = field(
        default=None, metadata={"help": "The distilled model (e.g. output/model); omit to evaluate one model."}
    )
    output_path: str = field(
        default="output/evaluation.json",
        metadata={"help": "Where to write the JSON report; the run's arguments go beside it as <name>.args.json."},
    )
    teacher_scores: str | None = field(
        default=None,
        metadata={"help": "Stage 1's scores on the same data set: also report the teacher's own metrics, "
                  "the upper bound the student is chasing."},
    )
    protocol: Literal["mteb", "sentence-transformers"] = field(
        default="mteb",
        metadata={"help": "mteb: skip (and count) queries with no positive or no negative. sentence-transformers: "
                  "as its CrossEncoderRerankingEvaluator, a query with no positive scores 0 and stays in the mean."},
    )
    input_format: str = field(
        default="auto", metadata={"help": f"Format of --dataset_path: {', '.join(INPUT_FORMATS)}."}
    )
    hub: Literal["huggingface", "modelscope"] = field(
        default="huggingface", metadata={"help": "Where hub ids of models and data sets are fetched from."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Download cache for hub models and data sets."})
    batch_size: int = field(default=64, metadata={"help": "(query, passage) pairs per forward pass."})
    max_length: int | None = field(
        default=None, metadata={"help": "Truncate each pair to this many tokens; unset keeps the model's own limit."}
    )


def read_queries(args: EvaluationArguments) -> list[RankingQuery]:
    """The whole data set, validated, so bad input fails before any model is loaded."""
    queries = list(iter_ranking_queries(args.dataset_path, args.input_format, args.hub, args.cache_dir))
    for query in queries:
        if any(label < 0 for label in query.labels):
            raise InputError("relevance grades must be >= 0 (they are NDCG gains)", query.location)
    if args.protocol == "mteb" and all(skip_reason(query.labels) for query in queries):
        raise InputError("no query has both a positive and a negative: --protocol mteb has nothing to evaluate",
                         args.dataset_path)
    return queries


def teacher_scores_for(queries: list[RankingQuery], source: str) -> list[np.ndarray]:
    """The teacher's score for every candidate of every query; InputError for a pair it never scored."""
    scores: dict[tuple[str, str], float] = {}
    for pair in iter_scored_pairs(source):
        scores.setdefault((pair.query, pair.passage), pair.score)  # a repeated pair keeps its first score
    per_query = []
    for query in queries:
        missing = [passage for passage in query.passages if (query.query, passage) not in scores]
        if missing:
            raise InputError(
                f"{source} has no teacher score for passage {missing[0][:80]!r} of query {query.query[:80]!r} "
                f"({len(missing)} of this query's passages unscored); score this data set with generate_logits.py",
                query.location,
            )
        per_query.append(np.array([scores[(query.query, passage)] for passage in query.passages]))
    return per_query


def change(before: dict, after: dict) -> dict:
    """Absolute and relative change per metric (relative is null when the before value is 0)."""
    deltas = {name: after[name] - before[name] for name in METRICS}
    return {name: {"absolute": d, "relative": d / before[name] if before[name] else None} for name, d in deltas.items()}


def format_table(report: dict) -> str:
    """The report as a few lines for the terminal: one row per metric, one column per model."""
    columns = [name for name in ("before", "after", "teacher") if name in report]
    header = "metric    " + "".join(f"{name:>10}" for name in columns)
    lines = [header + ("    change  relative" if "change" in report else "")]
    for name in METRICS:
        row = f"{name.upper():<10}" + "".join(f"{report[column][name]:>10.4f}" for column in columns)
        if "change" in report:
            absolute, relative = report["change"][name].values()
            row += f"{absolute:>+10.4f}" + ("       n/a" if relative is None else f"{relative:>+10.2%}")
        lines.append(row)
    skipped = report["queries_skipped_by_reason"]
    lines.append(
        f"protocol {report['protocol']['name']}: {report['queries_evaluated']} of {report['queries']} queries "
        f"evaluated, {report['queries_skipped']} skipped ({skipped['no_positive']} no positive, "
        f"{skipped['no_negative']} no negative), {report['queries_scored_zero']} scored 0 for having no positive"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    (args,) = parse_args((EvaluationArguments,), __doc__, argv)
    started = time.time()
    queries = read_queries(args)
    labels = [query.labels for query in queries]
    teacher = teacher_scores_for(queries, args.teacher_scores) if args.teacher_scores else None
    models = {"before": args.model_before_path, **({"after": args.model_after_path} if args.model_after_path else {})}
    for path in models.values():  # a missing model fails now, not after minutes spent scoring the other one
        resolve_model(path, args.hub, args.cache_dir)

    results = {}
    for name, path in models.items():
        logger.info("scoring %d queries of %s with %s (%s)", len(queries), args.dataset_path, path, name)
        model = load_cross_encoder(path, args.hub, args.cache_dir, args.max_length)
        scores = score_ranking_queries(model, queries, args.batch_size)
        results[name] = evaluate_rankings(zip(scores, labels), args.protocol, AT_K)
        del model  # one model in memory at a time
    if teacher is not None:
        results["teacher"] = evaluate_rankings(zip(teacher, labels), args.protocol, AT_K)

    counts = ("queries_evaluated", "queries_skipped", "queries_skipped_by_reason", "queries_scored_zero")
    report = {
        "protocol": {"name": args.protocol, "rule": PROTOCOL_RULES[args.protocol], "at_k": AT_K, "ties": TIES},
        "dataset": args.dataset_path,
        "models": models,
        "teacher_scores": args.teacher_scores,
        "queries": len(queries),
        "pairs": sum(len(query.passages) for query in queries),
        **{key: results["before"][key] for key in counts},
        **{name: {metric: result[metric] for metric in METRICS} for name, result in results.items()},
    }
    if "after" in results:
        report["change"] = change(report["before"], report["after"])
    report["seconds"] = round(time.time() - started, 2)

    print(format_table(report))
    with AtomicWriter(args.output_path) as out:
        out.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_run_args(Path(args.output_path).with_suffix(".args.json"), script=args)
    logger.info(
        "wrote %s: %d queries (%d evaluated, %d skipped), %d pairs x %d models in %.1fs (%.0f pairs/s)",
        args.output_path, len(queries), report["queries_evaluated"], report["queries_skipped"], report["pairs"],
        len(models), report["seconds"], report["pairs"] * len(models) / max(report["seconds"], 1e-9),
    )  # fmt: skip
    return report


if __name__ == "__main__":
    run_main(main)
