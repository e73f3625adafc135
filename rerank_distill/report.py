"""Stage 4's report: its JSON, the change from one model to the other, the table on the terminal, and the
per-query lines that let a user find the queries a model lost."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rerank_distill.formats import RankingQuery, TeacherRanking
from rerank_distill.jsonl import AtomicWriter, dumps
from rerank_distill.metrics import PROTOCOL_RULES, graded_summary, per_query_metrics, queries_changed, skip_reason

logger = logging.getLogger(__name__)

AT_K = 10
METRICS = ("map", f"mrr@{AT_K}", f"ndcg@{AT_K}")
TIES = "averaged: each metric is its mean over every order of the tied passages"


def change(before: dict, after: dict) -> dict:
    """Absolute and relative change per metric (relative is null when the before value is 0)."""
    deltas = {name: after[name] - before[name] for name in METRICS}
    return {name: {"absolute": d, "relative": d / before[name] if before[name] else None} for name, d in deltas.items()}


def share_of_teacher(report: dict) -> dict:
    """Each model's metrics as a share of the teacher's (null where the teacher's is 0): how close
    the student came to what it was taught."""
    return {
        model: {name: report[model][name] / report["teacher"][name] if report["teacher"][name] else None
                for name in METRICS}
        for model in ("before", "after") if model in report
    }  # fmt: skip


def _binary(queries: Sequence[RankingQuery]) -> bool:
    """Whether the gold labels are 1 and 0 alone, relevant or not in whatever file they come (unless
    they are ESCI's C and I): no grades on a label teacher's scale (ESCI's 3/2/1/0), so its prediction
    is right when it agrees on relevance."""
    return {grade for query in queries for grade in query.labels} <= {0.0, 1.0} and not any(
        query.esci_labels for query in queries)


def is_graded(queries: Sequence[RankingQuery], teacher: TeacherRanking | None) -> bool:
    """Whether the report adds the graded part (graded_report): graded data, more than two grades,
    or a label teacher's label probabilities. For binary data without them MAP, MRR and NDCG say it all."""
    return (queries[0].source_format == "graded" or not _binary(queries)
            or (teacher is not None and teacher.label_probs is not None))


def graded_report(queries: Sequence[RankingQuery], scores: dict[str, list], teacher: TeacherRanking | None) -> dict:
    """The report's "graded" part (graded_summary) from every pair's gold grade and each model's
    scores (name -> one array per query), with the teacher's label accuracy where it has labels."""
    grades = [grade for query in queries for grade in query.labels]
    flat = {name: np.concatenate(by_query) for name, by_query in scores.items()}
    teacher_labels = (teacher.label_probs, teacher.label_grades) if teacher else (None, None)
    binary = _binary(queries)
    off_scale = sorted(set(grades) - set(teacher.label_grades.values())) if teacher and teacher.label_grades else []
    if off_scale and not binary:  # a predicted grade can never equal those: compare relevance instead
        logger.warning("the data's grades %s are not among the teacher's label grades %s: its label accuracy "
                       "counts agreement on relevance (grade > 0) only", off_scale, teacher.label_grades)
    return graded_summary(grades, flat, *teacher_labels, by_relevance=binary or bool(off_scale))


def build_report(protocol: str, dataset_path: str, teacher_scores: str | None, queries: Sequence[RankingQuery],
                 wanted: Sequence[bool], models: dict[str, str], results: dict[str, dict]) -> tuple[dict, list[dict]]:
    """The report (stage 4's JSON: protocol, counts, each model's metrics, the change and the
    share of the teacher where there are those) and its per-query metrics, from ``results``:
    metrics.evaluate_rankings' of each model ("before", "after") and of the teacher; ``wanted``
    says which queries the models scored."""
    counts = ("queries_evaluated", "queries_skipped", "queries_skipped_by_reason", "queries_scored_zero")
    report = {
        "protocol": {"name": protocol, "rule": PROTOCOL_RULES[protocol], "at_k": AT_K, "ties": TIES},
        "dataset": dataset_path,
        "models": models,
        "teacher_scores": teacher_scores,
        "queries": len(queries),
        "pairs": sum(len(query.passages) for query in queries),
        "pairs_scored": sum(len(query.passages) for query, keep in zip(queries, wanted) if keep),
        **{key: results["before"][key] for key in counts},
        **{name: {metric: result[metric] for metric in METRICS} for name, result in results.items()},
    }
    per_query = per_query_metrics(results, AT_K)
    if "after" in results:
        report["change"] = change(report["before"], report["after"])
        report["queries_changed"] = queries_changed(per_query)
    if "teacher" in results:
        report["share_of_teacher"] = share_of_teacher(report)
    return report, per_query


def format_table(report: dict) -> str:
    """The report as a few lines for the terminal: one row per metric, one column per model, and
    for graded data one row per grade with each model's mean score."""
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
    # (only the sentence-transformers protocol keeps a query with no positive, as 0: under mteb the count is always 0)
    scored_zero = report["queries_scored_zero"]
    lines.append(
        f"protocol {report['protocol']['name']}: {report['queries_evaluated']} of {report['queries']} queries "
        f"evaluated, {report['queries_skipped']} skipped ({skipped['no_positive']} no positive, "
        f"{skipped['no_negative']} no negative)"
        + (f", {scored_zero} scored 0 for having no positive" if scored_zero else "")
    )
    if "share_of_teacher" in report:
        shares = ", ".join(f"{model} {share['map']:.1%}" for model, share in report["share_of_teacher"].items()
                           if share["map"] is not None)  # fmt: skip
        lines.append(f"share of the teacher's MAP: {shares or 'none (the teacher scores MAP 0)'}")
    if "queries_changed" in report:
        better, worse, same = report["queries_changed"].values()
        lines.append(f"after against before, by each query's AP: {better} better, {worse} worse, {same} the same")
    if "graded" in report:
        graded = report["graded"]
        lines += [f"\nmean score per true grade (all {report['pairs']} pairs)", "grade         pairs" + header[10:]]
        for grade, pairs in graded["pairs_per_grade"].items():
            means = "".join(f"{graded['mean_score_per_grade'][column][grade]:>10.4f}" for column in columns)
            lines.append(f"{grade:<9}{pairs:>10}{means}")
        if "label_accuracy" in graded:
            accuracy = graded["label_accuracy"]["teacher"]
            lines.append(
                f"teacher label accuracy {accuracy['accuracy']:.4f}: its most probable label has the true "
                + ("grade" if accuracy["compared"] == "grade" else "relevance (grade > 0: the data's labels are "
                   "relevant or not, or off the teacher's label scale)")
                + f" for {accuracy['correct']} of {accuracy['pairs']} pairs"
            )
    return "\n".join(lines)


def write_per_query(path: str | Path, queries: Sequence[RankingQuery], per_query: Sequence[dict | None]) -> None:
    """One JSON line per query, in data-set order: its text, how many candidates it has, why the
    protocol skipped it (or null), and each model's AP, RR@10 and NDCG@10 (see per_query_metrics)."""
    with AtomicWriter(path) as out:
        for query, row in zip(queries, per_query):
            skipped = skip_reason(query.labels) if row is None else None
            record = {"query": query.query, "candidates": len(query.passages), "skipped": skipped, **(row or {})}
            out.write(dumps(record) + "\n")
