"""train.py's data work before its first step: read and check the triplets, split off the held-out
queries, count them and measure every example for the length-grouped batches. Each of those passes
reads whole columns of the data set: through Arrow (column_values, ours) or value by value through
``dataset[name]`` (how train.py read them before, the baseline), alternated in one process.

    python bench/data_loading.py                          # 300,000 synthetic triplets
    python bench/data_loading.py --triplets output/triplets/train_triplets.jsonl

Prints rows per second for each and the ratio; writes JSON.
"""

from __future__ import annotations

import random
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rerank_distill.cli import run_main  # noqa: E402
from rerank_distill.jsonl import AtomicWriter, dumps  # noqa: E402

from bench.common import alternate, bench_parser, machine, median, print_table, timed, write_results  # noqa: E402


def synthetic_triplets(path: Path, count: int, seed: int = 0) -> Path:
    """``count`` triplets of 10 per query, with texts of question length (8 and 60 words)."""
    rng = random.Random(seed)
    words = [f"word{i}" for i in range(5000)]
    with AtomicWriter(path) as out:
        for row in range(count):
            query = f"query {row // 10} " + " ".join(rng.choices(words, k=8))
            positive, negative = (" ".join(rng.choices(words, k=60)) for _ in range(2))
            out.write(dumps({"query": query, "positive": positive, "negative": negative,
                             "score": rng.uniform(0, 5)}) + "\n")
    return path


def data_work(triplets: Path, work: Path) -> int:
    """What train.py does with its data before the first step, at its own defaults (MarginMSE,
    checkpoints picked by the held-out share's eval loss, length-grouped batches)."""
    import train
    from rerank_distill.selection import load_training_data
    from rerank_distill.samplers import LengthGroupedBatchSampler
    from rerank_distill.training import parse_training_args

    script, training, _ = parse_training_args(train.ScriptArguments, train.__doc__, [
        "--model_name_or_path", "unused", "--train_data", str(triplets), "--output_dir", str(work / "model"),
        "--disable_tqdm", "true"])  # fmt: skip
    _, selection = load_training_data(script, training, True, False)
    selection.counts()
    LengthGroupedBatchSampler(selection.train, training.per_device_train_batch_size, False)
    return len(selection.train) + len(selection.eval)


def value_by_value(dataset, name: str) -> list:
    return list(dataset[name])


def column_value_readers() -> list[str]:
    """The modules that read columns through ``column_values`` (each binds its own name for it, so
    each must be patched; its own module too, for calls inside it): found, not listed, so that a
    function moving to another module neither leaves the baseline reading that module's columns
    through Arrow nor patches a name no longer there."""
    import train  # noqa: F401  (imports every module train.py's data work uses)
    from rerank_distill import samplers, selection  # noqa: F401
    from rerank_distill.training_data import column_values

    return sorted(name for name, module in list(sys.modules.items())
                  if name.startswith("rerank_distill.") and getattr(module, "column_values", None) is column_values)


def main() -> dict:
    parser = bench_parser(__doc__)
    parser.add_argument("--triplets", default=None, help="Triplets JSONL to load; unset: --rows synthetic ones.")
    parser.add_argument("--rows", type=int, default=300_000, help="Synthetic triplets when --triplets is not given.")
    parser.add_argument("--repetitions", type=int, default=3, help="Runs of each, alternated; the median is reported.")
    parser.add_argument("--output_json", default="bench/results/data_loading.json", help="Where the results go (beside "
                        "it with the date and time where that file exists).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        made = Path(work) / "triplets.jsonl"
        triplets = Path(args.triplets) if args.triplets else synthetic_triplets(made, args.rows)

        def rate(value_by_value_reads: bool):
            def run() -> float:
                with ExitStack() as patches:
                    for module in column_value_readers() if value_by_value_reads else ():
                        patches.enter_context(mock.patch(f"{module}.column_values", value_by_value))
                    seconds, rows = timed(lambda: data_work(triplets, Path(work)))
                return rows / seconds
            return run

        runs = {"value by value (before)": rate(True), "ours, whole columns": rate(False)}
        rates = alternate(runs, args.repetitions)
    rows = [(name, median(values)) for name, values in rates.items()]
    print_table(f"train.py's data work before its first step, {triplets.name if args.triplets else args.rows}",
                rows, "rows/s", "value by value (before)")
    written = write_results(args.output_json, {
        "benchmark": "data_loading", "machine": machine(), "triplets": args.triplets, "rows": args.rows,
        "repetitions": args.repetitions, "rows_per_second": rates, "median_rows_per_second": dict(rows),
        "ratio": dict(rows)["ours, whole columns"] / dict(rows)["value by value (before)"],
    })  # fmt: skip
    print("wrote", written)
    return rates


if __name__ == "__main__":
    run_main(main)
