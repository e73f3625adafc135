"""Peak memory of the streaming stages against input size: teacher scoring (generate_logits.py)
and triplet building (create_triplets.py) on an input and on the same input repeated ten times
(queries made distinct), each in a fresh process. Streaming holds one chunk of queries at a time,
so the 10x peak should stay within 1.5x of the 1x peak.

    python bench/memory.py                       # tiny local teacher: measures data handling, fast
    python bench/memory.py --model_path output/bench_models/smollm2-135m-instruct --times 5

Prints peak resident memory (MiB) for each stage and size and the ratio; writes JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rerank_distill.cli import run_main  # noqa: E402
from rerank_distill.jsonl import read_jsonl  # noqa: E402

from bench.common import SHARED_DATA, bench_parser, machine, write_results  # noqa: E402

# Runs one stage's main() in this fresh process and prints its own peak RSS in KiB: VmHWM, the high
# water mark of this program's memory. Not getrusage's ru_maxrss: on Linux that survives exec, so
# it would count the pages this benchmark's own process (torch loaded) held when it forked the child.
# ``setup`` runs first (bench/long_document.py turns a feature off there), and the stage's own seconds are printed too.
PEAK_RSS_RUNNER = """
import sys, time
sys.path.insert(0, {root!r})
{setup}
import importlib
stage = importlib.import_module({stage!r})
started = time.perf_counter()
stage.main({argv!r})
print("SECONDS", time.perf_counter() - started)
with open("/proc/self/status") as status:
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
print("PEAK_RSS_KIB", peak)
"""


def repeated_input(source: Path, times: int, target: Path) -> Path:
    """The source's records ``times`` over, each copy's queries suffixed so none repeats."""
    # (not str.splitlines: it also splits at U+2028 and the like, which JSON lines keep raw inside strings)
    records = [record for _, record in read_jsonl(source)]
    with open(target, "w", encoding="utf-8") as out:
        for copy in range(times):
            for record in records:
                out.write(json.dumps({**record, "query": f"{record['query']} (copy {copy})"}, ensure_ascii=False) + "\n")
    return target


def peak_rss_mib(stage: str, argv: list[str]) -> float:
    """Peak resident memory (MiB) of ``stage``'s main(argv) in a fresh process."""
    return run_measured(stage, argv)[0]


def run_measured(stage: str, argv: list[str], setup: str = "") -> tuple[float, float]:
    """Peak resident memory (MiB) and seconds of ``stage``'s main(argv) in a fresh process that
    runs the Python code ``setup`` first."""
    code = PEAK_RSS_RUNNER.format(root=str(ROOT), stage=stage, argv=argv, setup=setup)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{result.stderr[-3000:]}")
    lines = result.stdout.splitlines()

    def printed(name: str) -> str:
        return next(line.split()[1] for line in lines if line.startswith(name + " "))

    return int(printed("PEAK_RSS_KIB")) / 1024, float(printed("SECONDS"))


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--model_path", default=None, help="Teacher (causal LM); default: a tiny random Qwen3 built here.")
    parser.add_argument("--data", default=str(SHARED_DATA / "train.jsonl"), help="MTEB reranking JSONL: the 1x input, copied --times times for the large one.")
    parser.add_argument("--times", type=int, default=10, help="How many copies make the large input.")
    parser.add_argument("--chunk_size", type=int, default=2000, help="Pairs per scoring chunk.")
    parser.add_argument("--output_json", default="bench/results/memory.json", help="The figures, or beside it with the date and time where that file exists.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model_path
        if model is None:
            from rerank_distill.toy import build_tiny_qwen3

            model = str(build_tiny_qwen3(tmp / "tiny-qwen3", hidden_size=64))
        inputs = {1: repeated_input(Path(args.data), 1, tmp / "x1.jsonl"), args.times: repeated_input(Path(args.data), args.times, tmp / f"x{args.times}.jsonl")}
        peaks: dict[str, dict[int, float]] = {"generate_logits": {}, "create_triplets": {}}
        for times, source in inputs.items():
            out_dir = tmp / f"scores{times}"
            peaks["generate_logits"][times] = peak_rss_mib("generate_logits", [
                "--model_path", model, "--input_path", str(source), "--output_dir", str(out_dir),
                "--backend", "hf", "--batch_size", "16", "--max_length", "512", "--chunk_size", str(args.chunk_size),
                "--no_show_progress",
            ])  # fmt: skip
            scores = out_dir / f"{source.stem}_scores.jsonl"
            peaks["create_triplets"][times] = peak_rss_mib("create_triplets", [
                "--input_path", str(scores), "--output_path", str(tmp / f"triplets{times}.jsonl"),
            ])  # fmt: skip
            pairs = sum(1 for _ in open(scores, encoding="utf-8"))
            print(f"{times:>3}x input: {pairs} pairs; peak RSS generate_logits {peaks['generate_logits'][times]:.0f} MiB, "
                  f"create_triplets {peaks['create_triplets'][times]:.0f} MiB")
    ratios = {stage: values[args.times] / values[1] for stage, values in peaks.items()}
    for stage, ratio in ratios.items():
        print(f"{stage}: peak RSS at {args.times}x input = {ratio:.3f} x the 1x peak (target <= 1.5)")
    written = write_results(args.output_json, {
        "benchmark": "memory", "machine": machine(), "model": Path(model).name if args.model_path else "tiny random Qwen3 (hidden 64)",
        "data": args.data, "times": args.times, "chunk_size": args.chunk_size,
        "peak_rss_mib": {stage: {f"{k}x": v for k, v in values.items()} for stage, values in peaks.items()},
        "ratio": ratios,
    })  # fmt: skip
    print("wrote", written)


if __name__ == "__main__":
    run_main(main)  # a user mistake: one error line, not a traceback
