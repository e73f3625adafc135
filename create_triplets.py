"""Stage 2: turn teacher scores into training records for distillation.

Reads stage 1's ``{"query", "passage", "score", "label"}`` lines (or another tool's
``{"query", "content", "score"}``) and ranks each query's passages by teacher score, first
corrected by the gold labels with ``--label_margin`` (labelled positives lifted above the
labelled negatives, the teacher's order kept within each). Positives
are the ``--top_k`` best (``--positives teacher``), the gold-labelled ones (``labels``) or both;
each is paired with ``--num_negatives`` passages ranked below it (``--negatives hardest``: just
below; ``random``: a seeded draw; ``mixed``: half each). A passage listed again for its query
takes part once (its first listing), and pairs with a margin not above zero (or below
``--min_margin``) are skipped; both are counted. ``--format`` writes
``triplets`` ``{"query", "positive", "negative", "score"}`` (score = teacher margin in logits),
``ntuples`` ``{"query", "positive", "negatives", "scores"}`` or ``listwise``
``{"query", "passages", "scores"[, "labels"]}`` groups of up to ``--group_size`` with the positive
first. Writes its arguments and counts beside the output (train_triplets.jsonl: train_triplets.args.json).
"""

import functools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from rerank_distill.cli import (
    beside_output,
    check_minimums,
    command_line,
    parse_args,
    refuse_shared_record,
    run_main,
    warn_unread,
    write_run_args,
)
from rerank_distill.errors import InputError
from rerank_distill.formats import ScoredPair, check_output_not_read, first_record, iter_scored_pairs
from rerank_distill.jsonl import AtomicWriter, check_writable, sole_writer
from rerank_distill.scoring import check_same_teachers, recorded_counts
from rerank_distill.triplets import (
    NegativeRule,
    OutputFormat,
    PositiveRule,
    QueriesNotGrouped,
    SelectionRules,
    iter_query_groups,
    iter_query_groups_indexed,
    require_labels,
    run_summary,
    summary_message,
    unread_flags,
    write_records,
)

logger = logging.getLogger("rerank_distill.create_triplets")


@dataclass
class TripletArguments:
    input_path: list[str] = field(
        metadata={
            "action": "extend",  # (the flag given again adds to the list)
            "help": 'Teacher scores from generate_logits.py: JSONL (or .jsonl.gz) lines {"query", '
            '"passage"|"content", "score"[, "label"]}; score may be a number or a numeric string. Several '
            "files (e.g. {stem}_scores.jsonl and {stem}_passages_as_queries_scores.jsonl) are read as one. A "
            "Parquet file, a data-set folder DIR:SPLIT or a hub data set NAME:SPLIT of such rows works too."
        }
    )
    output_path: str = field(
        metadata={"help": "Where to write the records (JSONL); the run's arguments go beside it as <name>.args.json."}
    )
    format: OutputFormat = field(
        default="triplets",
        metadata={
            "help": 'triplets: {"query", "positive", "negative", "score"} with score = teacher margin; '
            'ntuples: {"query", "positive", "negatives": [...], "scores": [positive, negative_1, ...]} '
            'with raw teacher scores, one per positive; listwise: {"query", "passages", "scores"'
            '[, "labels"]}, one group per positive: the positive first, then its negatives.'
        },
    )
    positives: PositiveRule = field(
        default="teacher",
        metadata={
            "help": "teacher: the --top_k best-scored passages; labels: the passages whose gold label is > 0 "
            "(needs labels on every input line), each paired only with passages of a lower grade (its negatives "
            "are chosen among those, passing over the ones graded as high); both: the union, where a teacher "
            "positive with a gold label of 0 still faces whatever the teacher ranks below it, labelled positives "
            "included. Margins are always the teacher's."
        },
    )
    top_k: int = field(
        default=8, metadata={"help": "How many of each query's best-scored passages the teacher rule takes."}
    )
    negatives: NegativeRule = field(
        default="hardest",
        metadata={
            "help": "hardest: the passages ranked just below the positive; random: drawn uniformly from all "
            "passages ranked below it (seeded by --seed and the query); mixed: half hardest (the odd one), "
            "half random from those below them."
        },
    )
    num_negatives: int = field(
        default=4, metadata={"help": "Negatives per positive for triplets and ntuples (listwise uses --group_size)."}
    )
    group_size: int = field(
        default=8,
        metadata={"help": "listwise only: passages per group, the positive included (so group_size - 1 negatives)."},
    )
    min_margin: float = field(
        default=0.0,
        metadata={
            "help": "Skip pairs whose teacher margin is below this (logit units): near-ties that are mostly "
            "teacher noise. 0 keeps every positive margin; tied scores are always skipped."
        },
    )
    label_margin: float | None = field(
        default=None,
        metadata={
            "help": "Correct the teacher with the gold labels before anything else (needs a label on every line): "
            "each grade's passages are lifted together until they score at least this many logits (> 0) above every "
            "passage of a lower grade, keeping the teacher's order and margins within a grade. The records then "
            "carry the corrected scores. Unset: the teacher's scores as they are."
        },
    )
    label_column: str | None = field(
        default=None,
        metadata={"help": "The gold-label field of the input lines (default: esci_label, label, grade or relevance, "
                          "the first a line has): what --positives labels/both and --label_margin read, and "
                          "--format listwise writes as its records' labels."},
    )
    seed: int = field(default=42, metadata={"help": "Seed for random and mixed negatives (same seed, same output)."})
    hub: Literal["huggingface", "modelscope"] = field(
        default="huggingface", metadata={"help": "Where an --input_path given as a hub data set is fetched from."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Download cache for hub data sets."})
    show_progress: bool = field(default=True, metadata={"help": "Show a progress bar with pairs read per second."})


def rules_from(args: TripletArguments) -> SelectionRules:
    """The selection rules the flags ask for; listwise groups take ``group_size - 1`` negatives."""
    num_negatives = args.group_size - 1 if args.format == "listwise" else args.num_negatives
    return SelectionRules(args.top_k, num_negatives, args.positives, args.negatives, args.min_margin, args.seed)


def main(argv: list[str] | None = None) -> dict:
    (args,) = parse_args((TripletArguments,), __doc__, argv)
    check_minimums(args, top_k=1, num_negatives=1, group_size=2)
    if args.label_margin is not None and not 0 < args.label_margin < float("inf"):  # at 0 a lifted positive would tie
        raise InputError(f"--label_margin must be above 0 and finite (logit units), got {args.label_margin}")
    if not 0 <= args.min_margin < float("inf"):
        raise InputError(f"--min_margin must be 0 or more and finite (logit units), got {args.min_margin}")
    if args.output_path.endswith((".parquet", ".arrow")):  # every reader would take it for that format
        raise InputError(f"--output_path {args.output_path}: the records are written as JSONL; name it .jsonl or "
                         ".jsonl.gz")
    unread = unread_flags(args.format, args.positives, args.negatives, args.label_margin)
    warn_unread(args, unread)
    check_output_not_read(args.output_path, args.input_path, "--output_path")
    check_writable(args.output_path, "--output_path")
    check_writable(beside_output(args.output_path, ".args.json"), "--output_path's run record")
    refuse_shared_record(args.output_path, "--output_path")
    check_same_teachers(args.input_path)
    # a misspelt column would read as no labels at all (one these settings never read is only warned about, above)
    for source in args.input_path if args.label_column and "label_column" not in unread else []:
        path, line, record = first_record(source, args.hub, args.cache_dir)
        if args.label_column not in record:
            raise InputError(f'the first line has no field "{args.label_column}" (--label_column); fields present: '
                             f"{sorted(record)}", path, line)

    def scored_pairs() -> Iterator[ScoredPair]:
        # the total where stage 1 recorded how many pairs each input holds (its .run.json; for the bar alone, so one
        # edited by hand or by another tool only leaves the bar without a total)
        recorded = [(recorded_counts(Path(path)) or {}).get("pairs") for path in args.input_path]
        total = sum(recorded) if all(type(pairs) is int for pairs in recorded) else None
        with tqdm(total=total, unit="pair", desc="reading scores", disable=not args.show_progress) as bar:
            for path in args.input_path:
                pairs = iter_scored_pairs(path, args.label_column, args.hub, args.cache_dir)
                if args.label_margin is not None:
                    pairs = require_labels(pairs, "--label_margin", args.label_column)
                elif args.positives != "teacher":
                    pairs = require_labels(pairs, f"--positives {args.positives}", args.label_column)
                for pair in pairs:
                    bar.update()  # (0.3 s in 600,000 pairs, of some 35 s of reading)
                    yield pair

    start = time.perf_counter()
    rules = rules_from(args)
    inputs = " + ".join(args.input_path)
    write_all = functools.partial(write_records, rules=rules, output_format=args.format,
                                  label_margin=args.label_margin, source=inputs)
    logger.info("Reading teacher scores from %s (%s)", inputs, rules)

    def record_run(counts, input_grouped: bool) -> dict:
        """Write the run's record beside its output just before the output takes its name, an earlier
        output gone first: a crash between the two never leaves this record beside another output."""
        summary = run_summary(counts, args.format, args.label_margin, input_grouped, time.perf_counter() - start)
        Path(args.output_path).unlink(missing_ok=True)
        write_run_args(beside_output(args.output_path, ".args.json"), command_line(__file__, argv), script=args,
                       rules=rules, summary=summary)
        return summary

    # Stage 1 writes each query's pairs on consecutive lines, so one streaming pass suffices and
    # memory holds one query's candidates. Nothing appears under the final name until the whole
    # input has been read and validated (AtomicWriter), and one run at a time writes it (sole_writer).
    with sole_writer(Path(args.output_path)):
        first_pass = scored_pairs()
        try:
            with AtomicWriter(args.output_path) as out:
                summary = record_run(write_all(iter_query_groups(first_pass), out), input_grouped=True)
        except QueriesNotGrouped as error:
            first_pass.close()  # its progress bar ends here, not after the second pass's, short of the total
            logger.info("%s: query %r (line %d of its file) appeared again after its lines had ended; the input is "
                        "not grouped by query, so it is regrouped through a temporary index: every line of one query "
                        "text, wherever it is, joins one list", inputs, error.query[:60], error.line)
            spill_dir = os.path.dirname(os.path.abspath(args.output_path))
            with AtomicWriter(args.output_path) as out:
                summary = record_run(write_all(iter_query_groups_indexed(scored_pairs(), spill_dir), out),
                                     input_grouped=False)
    logger.info(summary_message(summary, args.output_path))
    return summary


if __name__ == "__main__":
    run_main(main)
