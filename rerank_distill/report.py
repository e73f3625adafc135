"""Stage 4's report: the change from one model to the other, the table on the terminal, and the
per-query lines that let a user find the queries a model lost."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rerank_distill.formats import RankingQuery
from rerank_distill.jsonl import AtomicWriter, dumps
from rerank_distill.metrics import skip_reason

AT_K = 10
METRICS = ("map", f"mrr@{AT_K}", f"ndcg@{AT_K}")


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
    lines.append(
        f"protocol {report['protocol']['name']}: {report['queries_evaluated']} of {report['queries']} queries "
        f"evaluated, {report['queries_skipped']} skipped ({skipped['no_positive']} no positive, "
        f"{skipped['no_negative']} no negative), {report['queries_scored_zero']} scored 0 for having no positive"
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
                + ("grade" if accuracy["compared"] == "grade" else "relevance (grade > 0; the data's grades are not on the teacher's label scale)")
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
