"""Quality exploration: many configurations of ours x seeds, each trained for its planned epochs
(no time budget), reporting dev MAP of both the model checkpoint selection chose and the last
step, so configurations and selection rules can be compared cheaply on a GPU before the ones
that matter are confirmed under the recipe's time budget with bench/quality.py.

Same teacher (embedding model, 10 x cosine), student and data as bench/quality.py; dev is only
evaluated. Each (configuration, seed) runs in its own process, --workers at a time (several
share one GPU well: the student is small).

    python bench/quality_sweep.py --configs bench/quality_sweep.json --seeds 12 13 14 --workers 6
    python bench/quality_sweep.py --only D --seeds 12 --max_steps 2      # a quick check that it works

Writes one JSON per run under --output_dir/runs and a summary to --output_json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rerank_distill.cli import run_main  # noqa: E402

from bench.common import SHARED_DATA, bench_parser, embedding_teacher_scores, machine, write_results  # noqa: E402
from bench.quality import evaluate, share  # noqa: E402


def uses_bf16(choice: str) -> bool:
    """--bf16 auto|true|false as a yes or no: auto where the device has bf16 units."""
    import torch

    from rerank_distill.student import bfloat16_is_fast

    return bfloat16_is_fast("cuda" if torch.cuda.is_available() else "cpu") if choice == "auto" else choice == "true"


def passages_as_queries_dir(scores: Path, per_list: int) -> Path:
    """Where the passages-as-queries lists of up to ``per_list`` passages a list are scored: one
    folder for each value, as configurations may ask for different ones."""
    return scores / f"passages_as_queries_{per_list}"


def run_one(name: str, config: dict, seed: int, args) -> dict:
    """create_triplets.py and train.py for one configuration and seed, then evaluation.py on dev
    for the final model (what selection chose) and the last checkpoint."""
    import torch

    import create_triplets
    import train

    data_dir, scores = Path(args.data_dir), Path(args.output_dir) / "scores"
    work = Path(args.work_dir) / f"{name}_seed{seed}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    inputs = [scores / "train_scores.jsonl"]
    if config.get("passages_as_queries"):
        inputs.append(passages_as_queries_dir(scores, config["passages_as_queries"])
                      / "train_passages_as_queries_scores.jsonl")
    records = work / "records.jsonl"
    create_triplets.main(["--input_path", *map(str, inputs), "--output_path", str(records),
                          *shlex.split(config["triplet_flags"])])
    out = work / "model"
    summary = train.main([
        "--model_name_or_path", args.student, "--train_data", str(records), "--selection_data", str(inputs[0]),
        "--output_dir", str(out), "--max_length", "256", "--seed", str(seed), "--report_to", "none",
        "--disable_tqdm", "true", "--bf16", str(uses_bf16(args.bf16)).lower(), "--overwrite_output_dir", *shlex.split(config["train_flags"]),
        *(["--max_steps", str(args.max_steps)] if args.max_steps > 0 else []),
        *([] if torch.cuda.is_available() else ["--use_cpu", "true"]),
    ])  # fmt: skip
    dev_scores = scores / "dev_scores.jsonl"
    chosen = evaluate(str(out), data_dir, dev_scores, work / "eval_chosen.json")
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    last = evaluate(str(checkpoints[-1]), data_dir, dev_scores, work / "eval_last.json") if checkpoints else chosen
    shutil.rmtree(work, ignore_errors=True)
    return {"name": name, "seed": seed, **config, "steps": summary["steps"], "seconds": summary["seconds"],
            "chosen_checkpoint": summary["best_checkpoint"],
            "last_checkpoint": checkpoints[-1].name if checkpoints else None,
            "teacher": chosen["teacher"], "dev_chosen": chosen["student"], "dev_last": last["student"]}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--configs", default=str(ROOT / "bench" / "quality_sweep.json"),
                        help='JSON {name: {"triplet_flags", "train_flags"[, "passages_as_queries": N]}}.')
    parser.add_argument("--only", nargs="*", help="Run only these configurations.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[12, 13, 14], help="Training seeds: each configuration trains once per seed.")
    parser.add_argument("--workers", type=int, default=1, help="Runs at once.")
    parser.add_argument("--teacher", default="output/bench_models/all-minilm-l6-v2", help="Embedding teacher folder (score = 10 x cosine).")
    parser.add_argument("--student", default="output/bench_models/minilm-l6-cross-encoder", help="Student cross-encoder folder.")
    parser.add_argument("--data_dir", default=str(SHARED_DATA), help="Folder with train.jsonl and dev.jsonl.")
    parser.add_argument("--output_dir", default="output/bench/quality_sweep", help="Folder for the teacher's scores and each run's result.")
    parser.add_argument("--bf16", choices=["auto", "true", "false"], default="auto", help="Train in bf16: auto = where the device has bf16 units (the recorded sweep ran on an H200, in bf16).")
    parser.add_argument("--work_dir", default=None, help="Models in training (default: OUTPUT_DIR/work).")
    parser.add_argument("--max_steps", type=int, default=-1, help="Cut every run short (smoke tests only).")
    parser.add_argument("--output_json", default="bench/results/quality_sweep.json", help="The sweep's figures, or beside it with the date and time where that file exists.")
    parser.add_argument("--run", nargs=2, metavar=("NAME", "SEED"), help=argparse.SUPPRESS)  # one run, in a worker
    args = parser.parse_args()
    args.work_dir = args.work_dir or str(Path(args.output_dir) / "work")
    configs = json.loads(Path(args.configs).read_text(encoding="utf-8"))
    runs_dir = Path(args.output_dir) / "runs"
    if args.run:
        name, seed = args.run[0], int(args.run[1])
        result = run_one(name, configs[name], seed, args)
        write_results(runs_dir / f"{name}_seed{seed}.json", result, keep_existing=False)  # read back below
        return

    if unknown := [name for name in args.only or () if name not in configs]:
        raise SystemExit(f"--only {' '.join(unknown)}: no such configuration in {args.configs}; it has "
                         f"{', '.join(configs)}")
    data_dir, scores = Path(args.data_dir), Path(args.output_dir) / "scores"
    embedding_teacher_scores(args.teacher, [data_dir / "train.jsonl", data_dir / "dev.jsonl"], scores)
    names = args.only or list(configs)
    for per_list in sorted({configs[name].get("passages_as_queries", 0) for name in names} - {0}):
        embedding_teacher_scores(args.teacher, [data_dir / "train.jsonl"], passages_as_queries_dir(scores, per_list),
                                 passages_as_queries=per_list)
    jobs = [(name, seed) for seed in args.seeds for name in names]

    def launch(job: tuple[str, int]) -> dict | None:
        name, seed = job
        log = Path(args.output_dir) / "logs" / f"{name}_seed{seed}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        worker = [sys.executable, __file__, "--configs", args.configs, "--student", args.student, "--data_dir",
                  args.data_dir, "--output_dir", args.output_dir, "--work_dir", args.work_dir,
                  "--max_steps", str(args.max_steps), "--bf16", args.bf16, "--run", name, str(seed)]  # fmt: skip
        with open(log, "w", encoding="utf-8") as out:
            code = subprocess.run(worker, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
        path = runs_dir / f"{name}_seed{seed}.json"
        if code != 0 or not path.exists():
            print(f"{name:>16} seed {seed}: failed (exit {code}), see {log}", flush=True)
            return None
        result = json.loads(path.read_text(encoding="utf-8"))
        print(f"{name:>16} seed {seed}: dev MAP chosen {result['dev_chosen']['map']:.4f}, last "
              f"{result['dev_last']['map']:.4f} ({result['steps']} steps, {result['seconds']:.0f} s)", flush=True)
        return result

    with ThreadPoolExecutor(args.workers) as pool:
        results = [r for r in pool.map(launch, jobs) if r is not None]
    if not results:
        raise SystemExit("no run finished")
    teacher = results[0]["teacher"]
    print(f"\n{'configuration':<16}{'seeds':>6}{'MAP chosen':>12}{'MAP last':>10}{'last, of teacher':>18}")
    summary = {}
    for name in names:
        runs = [r for r in results if r["name"] == name]
        if runs:
            chosen = statistics.mean(r["dev_chosen"]["map"] for r in runs)
            last = statistics.mean(r["dev_last"]["map"] for r in runs)
            summary[name] = {"seeds": [r["seed"] for r in runs], "map_chosen": chosen, "map_last": last,
                             "share_last": last / teacher["map"], "share_chosen": chosen / teacher["map"]}
            print(f"{name:<16}{len(runs):>6}{chosen:>12.4f}{last:>10.4f}{share({'map': last}, teacher):>18.1%}")
    written = write_results(args.output_json, {"benchmark": "quality_sweep", "machine": machine(), "command": sys.argv,
                                     "teacher": teacher, "configs": configs, "summary": summary, "runs": results})
    print("wrote", written)


if __name__ == "__main__":
    run_main(main)  # a user mistake: one error line, not a traceback
