"""Stage 2: turn teacher scores into hard-negative triplets for margin distillation.

Reads stage 1's ``{"query", "passage", "score", "label"}`` lines (or another tool's
``{"query", "content", "score"}``), ranks each query's passages by teacher score, pairs each
of the ``--top_k`` best with the ``--num_negatives`` passages ranked just below it, and writes
``{"query", "positive", "negative", "score"}`` lines where ``score`` is the teacher margin
score(positive) - score(negative) in logit units. Writes TRIPLETS.args.json beside the output.
"""

import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO

from rerank_distill.cli import parse_args, run_main, write_run_args
from rerank_distill.errors import InputError
from rerank_distill.formats import iter_scored_pairs
from rerank_distill.jsonl import AtomicWriter, dumps
from rerank_distill.triplets import (
    SKIP_IDENTICAL_TEXT,
    SKIP_NON_POSITIVE_MARGIN,
    SKIP_REASONS,
    SKIP_TOO_FEW_PASSAGES,
    QueriesNotGrouped,
    QueryGroup,
    iter_query_groups,
    iter_query_groups_indexed,
    select_triplets,
    triplet_record,
)

logger = logging.getLogger("rerank_distill.create_triplets")


@dataclass
class TripletArguments:
    input_path: str = field(
        metadata={
            "help": 'Teacher scores from generate_logits.py: JSONL (or .jsonl.gz) lines {"query", '
            '"passage"|"content", "score"}; score may be a number or a numeric string.'
        }
    )
    output_path: str = field(
        metadata={
            "help": 'Where to write the triplets, JSONL {"query", "positive", "negative", "score"} '
            "with score = teacher margin; the run's arguments go beside it as <name>.args.json."
        }
    )
    top_k: int = field(default=8, metadata={"help": "How many of each query's best-scored passages act as positives."})
    num_negatives: int = field(
        default=4,
        metadata={"help": "Hard negatives per positive: the passages ranked just below it (ranks i+1..i+N)."},
    )


def args_path_for(output_path: str) -> str:
    """``out/train_triplets.jsonl`` -> ``out/train_triplets.args.json`` (also for ``.jsonl.gz``)."""
    stem = output_path.removesuffix(".gz")
    for suffix in (".jsonl", ".json"):
        if stem.endswith(suffix):
            return stem.removesuffix(suffix) + ".args.json"
    return stem + ".args.json"


def write_triplets(groups: Iterable[QueryGroup], out: IO[str], args: TripletArguments) -> Counter:
    """Select and write the triplets of every group; returns counts of queries, pairs, triplets
    and skips by reason. Raises InputError when not one triplet could be made."""
    counts: Counter = Counter()
    for group in groups:
        triplets, skipped = select_triplets(group.passages, group.scores, args.top_k, args.num_negatives)
        for triplet in triplets:
            out.write(dumps(triplet_record(group.query, triplet)) + "\n")
        counts.update(queries=1, pairs=len(group.passages), triplets=len(triplets))
        counts.update(skipped)
    if counts["triplets"] == 0:
        # raised inside the AtomicWriter, so no empty file that looks complete is left behind
        raise InputError(
            f"no triplets could be made from {counts['queries']} queries ({counts['pairs']} pairs): "
            f"{counts[SKIP_TOO_FEW_PASSAGES]} queries have fewer than 2 passages, "
            f"{counts[SKIP_IDENTICAL_TEXT]} pairs had identical texts, {counts[SKIP_NON_POSITIVE_MARGIN]} "
            "pairs had tied scores; each query needs at least two different passages with different teacher scores",
            args.input_path,
        )
    return counts


def main(argv: list[str] | None = None) -> dict:
    (args,) = parse_args((TripletArguments,), __doc__, argv)
    if args.top_k < 1:
        raise InputError(f"--top_k must be at least 1, got {args.top_k}")
    if args.num_negatives < 1:
        raise InputError(f"--num_negatives must be at least 1, got {args.num_negatives}")
    if os.path.abspath(args.input_path) == os.path.abspath(args.output_path):
        raise InputError("--output_path is the same file as --input_path; choose another output path")

    start = time.perf_counter()
    logger.info(
        "Reading teacher scores from %s (top_k=%d, num_negatives=%d)", args.input_path, args.top_k, args.num_negatives
    )
    # Stage 1 writes each query's pairs on consecutive lines, so one streaming pass suffices and
    # memory holds one query's candidates. Nothing appears under the final name until the whole
    # input has been read and validated (AtomicWriter).
    input_grouped = True
    try:
        with AtomicWriter(args.output_path) as out:
            counts = write_triplets(iter_query_groups(iter_scored_pairs(args.input_path)), out, args)
    except QueriesNotGrouped as error:
        input_grouped = False
        logger.info(
            "%s:%d: query %r appeared again after its lines had ended; the input is not grouped by "
            "query, so it is regrouped through a temporary index",
            args.input_path,
            error.line,
            error.query[:60],
        )
        spill_dir = os.path.dirname(os.path.abspath(args.output_path))
        with AtomicWriter(args.output_path) as out:
            groups = iter_query_groups_indexed(iter_scored_pairs(args.input_path), spill_dir)
            counts = write_triplets(groups, out, args)
    seconds = time.perf_counter() - start

    summary = {
        "queries": counts["queries"],
        "pairs": counts["pairs"],
        "triplets": counts["triplets"],
        "skipped": {reason: counts[reason] for reason in SKIP_REASONS},
        "input_grouped": input_grouped,
        "seconds": round(seconds, 3),
    }
    write_run_args(args_path_for(args.output_path), script=args, summary=summary)
    skipped = summary["skipped"]
    logger.info(
        "Wrote %d triplets from %d queries (%d pairs, %.0f pairs/s) to %s in %.1f s; skipped: %d pairs with "
        "identical text, %d pairs with a non-positive margin, %d queries with fewer than 2 passages",
        summary["triplets"],
        summary["queries"],
        summary["pairs"],
        summary["pairs"] / max(seconds, 1e-9),
        args.output_path,
        seconds,
        skipped[SKIP_IDENTICAL_TEXT],
        skipped[SKIP_NON_POSITIVE_MARGIN],
        skipped[SKIP_TOO_FEW_PASSAGES],
    )
    return summary


if __name__ == "__main__":
    run_main(main)
