"""Distillation quality: the original recipe against ours, with the same teacher scores, student,
data and training time, on SemEval-2016 CQA (train.jsonl trains, dev.jsonl evaluates).

1. The teacher is a real embedding model (--teacher, e.g. all-MiniLM-L6-v2): generate_logits.py
   scores train and dev as --score_scale x cosine similarity.
2. The original recipe: create_triplets.py's default rule (each of the 8 best-scored passages
   with the 4 ranked just below it), sentence-transformers' MarginMSELoss through a plain
   CrossEncoderTrainer, 1 epoch, lr 2e-5, batch 16, fp32, default batching, and its final model.
   Its training wall time is the budget.
3. Ours: create_triplets.py and train.py as a user runs them (--ours_triplet_flags,
   --ours_train_flags; the defaults are the best measured configuration, G2 in the README), on the
   training scores plus, with --passages_as_queries N, the teacher's scores of each training
   passage as a query against its list (more teacher work, timed and reported), and
   --max_train_seconds set to the recipe's measured time, so ours never trains longer (any
   checkpoint-selection evaluations included; train.py picks checkpoints only on held-out
   *training* queries, or keeps the last step when too few can be held out).
4. evaluation.py (MTEB protocol) on dev: the teacher's own scores, the student before training
   and each trained student. The share of the teacher is student MAP / teacher MAP.

Dev is only ever evaluated; no choice inside a run looks at it.

    python bench/quality.py                              # the comparison, seeds 12 13 14 (~2 h on 2 CPU cores)
    python bench/quality.py --seeds 12 --max_steps 4     # a quick check that the script works (numbers meaningless)
    python bench/quality.py --runs ours --budget_seconds 1100 --ours_train_flags "--loss listwise_kl ..."

Every run (recipe or ours, with its flags, seconds and dev metrics) is appended to --runs_log,
and the comparison is written to --output_json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import shutil
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rerank_distill.cli import run_main  # noqa: E402
from rerank_distill.run_folder import data_digest  # noqa: E402

from bench.common import (  # noqa: E402
    SHARED_DATA,
    bench_parser,
    embedding_teacher_scores,
    machine,
    timed,
    train_original_recipe,
    write_results,
)

METRICS = ("map", "mrr@10", "ndcg@10")
# The recipe's settings (the original scripts'), and what ours keeps equal to them.
RECIPE = {"epochs": 1, "learning_rate": 2e-5, "batch_size": 16, "max_length": 256, "warmup": 0.1,
          "top_k": 8, "num_negatives": 4}
# Ours: the best measured configuration (README, G2), written out as flags: the launchers' defaults
# plus passages as queries and 2 epochs planned (the recipe's time budget stops it sooner).
OURS_TRIPLET_FLAGS = "--format listwise --positives teacher --top_k 1 --group_size 32"
OURS_TRAIN_FLAGS = ("--loss listwise_kl --teacher_temperature 4 --learning_rate 1e-4 --num_train_epochs 2 "
                    "--per_device_train_batch_size 8 --pairs_per_forward 16")
# generate_logits.py --passages_as_queries for ours: every training passage (SemEval's lists hold
# 10) also queries the rest of its list, scored by the same teacher.
OURS_PASSAGES_AS_QUERIES = 32


def evaluate(model: str, data_dir: Path, dev_scores: Path, out: Path) -> dict:
    """evaluation.py on dev: the model's metrics (as "before") and the teacher's."""
    import evaluation

    report = evaluation.main([
        "--model_before_path", model, "--dataset_path", str(data_dir / "dev.jsonl"),
        "--teacher_scores", str(dev_scores), "--output_path", str(out), "--protocol", "mteb",
    ])  # fmt: skip
    return {"student": report["before"], "teacher": report["teacher"], "queries_evaluated": report["queries_evaluated"]}


def original_recipe(student: str, train_scores: Path, out: Path, seed: int, max_steps: int) -> dict:
    """The original recipe as written: default triplets, CrossEncoder, MarginMSELoss,
    CrossEncoderTrainer with its defaults, the final model. Seconds are trainer.train() alone."""
    import create_triplets

    triplets = out.parent / "recipe_triplets.jsonl"
    create_triplets.main(["--input_path", str(train_scores), "--output_path", str(triplets),
                          "--top_k", str(RECIPE["top_k"]), "--num_negatives", str(RECIPE["num_negatives"])])
    trainer, _, seconds, rows = train_original_recipe(
        student, triplets, out, max_length=RECIPE["max_length"], per_device_train_batch_size=RECIPE["batch_size"],
        num_train_epochs=RECIPE["epochs"], max_steps=max_steps, learning_rate=RECIPE["learning_rate"],
        warmup_steps=RECIPE["warmup"], seed=seed,
    )  # fmt: skip
    return {"seconds": round(seconds, 1), "steps": trainer.state.global_step, "train_rows": rows}


def ours(student: str, train_scores: Path, extra_scores: list[Path], out: Path, seed: int, budget: float | None,
         triplet_flags: str, train_flags: str, max_steps: int) -> dict:
    """create_triplets.py (on the training scores and ``extra_scores``, the passages-as-queries
    lists) then train.py with the given flags, as a user runs them. Seconds are train.py's
    training time (trainer.train(), its selection evaluations and checkpoints included)."""
    import create_triplets
    import train

    records = out.parent / "ours_train.jsonl"
    stage2 = create_triplets.main(["--input_path", str(train_scores), *map(str, extra_scores),
                                   "--output_path", str(records), *shlex.split(triplet_flags)])
    argv = [
        "--model_name_or_path", student, "--train_data", str(records), "--selection_data", str(train_scores),
        "--output_dir", str(out), "--max_length", str(RECIPE["max_length"]), "--seed", str(seed),
        "--report_to", "none", "--disable_tqdm", "true", "--overwrite_output_dir", *shlex.split(train_flags),
        *(["--max_train_seconds", f"{budget:.1f}"] if budget else []),
        *(["--max_steps", str(max_steps)] if max_steps > 0 else []),
        *([] if torch.cuda.is_available() else ["--use_cpu", "true"]),  # transformers refuses bf16 on CPU without it
    ]  # fmt: skip
    summary = train.main(argv)
    return {"seconds": summary["seconds"], "steps": summary["steps"], "train_rows": summary["train_examples"],
            "stopped_by_time": summary.get("stopped_by_time"), "best_checkpoint": summary["best_checkpoint"],
            "best_selection_map": summary["best_metric"], "create_triplets_seconds": stage2["seconds"],
            "records": stage2["records"]}


def folder_digest(folder: str | Path) -> str:
    """A digest of a model folder's files (hidden ones aside), by their relative paths and bytes."""
    folder = Path(folder)
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(path for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_setup(args, data_dir: Path) -> dict:
    """What a logged recipe run must share with this invocation for its time to be ours' budget and its
    metrics the comparison: the hardware, the student's and teacher's files, the data, the teacher's scale."""
    hardware = {key: value for key, value in machine().items() if key in ("cpu", "cpu_cores", "gpu")}
    return {**hardware, "student": folder_digest(args.student), "teacher": folder_digest(args.teacher),
            "data": [data_digest(str(data_dir / name)) for name in ("train.jsonl", "dev.jsonl")],
            "score_scale": args.score_scale}


def logged_recipe(path: Path, seed: int, max_steps: int, setup: dict) -> dict | None:
    """The latest recipe run of this seed and ``setup`` (run_setup's) in the runs log, so that ours
    can be compared with it without training the recipe again; None where there is none (runs
    logged before the setup was recorded never match: their machine and models are not known)."""
    runs = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    matching = [r for r in runs if r["name"] == "recipe" and r["seed"] == seed and r["max_steps"] == max_steps
                and r.get("setup") == setup]
    return matching[-1] if matching else None


def share(metrics: dict, teacher: dict) -> float:
    return metrics["map"] / teacher["map"]


def append_runs(path: Path, records: list[dict]) -> None:
    """Add this invocation's runs to the log of every run made (a JSON list)."""
    runs = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(runs + records, indent=2) + "\n", encoding="utf-8")


def print_table(teacher: dict, before: dict, results: dict[str, list[dict]]) -> None:
    """Teacher, before, and each trained run's mean over seeds (min-max in brackets)."""
    print(f"\n{'':<28}{'MAP':>8}{'MRR@10':>8}{'NDCG@10':>9}{'of teacher':>12}{'train s':>9}  seeds: MAP")
    print(f"{'teacher':<28}" + "".join(f"{teacher[m]:>8.4f}" for m in METRICS) + f"{1:>12.1%}")
    print(f"{'student before training':<28}" + "".join(f"{before[m]:>8.4f}" for m in METRICS)
          + f"{share(before, teacher):>12.1%}")
    for name, runs in results.items():
        mean = {m: statistics.mean(r["dev"][m] for r in runs) for m in METRICS}
        seconds = statistics.mean(r["seconds"] for r in runs)
        maps = ", ".join(f"{r['dev']['map']:.4f}" for r in runs)
        print(f"{name:<28}" + "".join(f"{mean[m]:>8.4f}" for m in METRICS) + f"{share(mean, teacher):>12.1%}"
              + f"{seconds:>9.0f}  {maps}")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--teacher", default="output/bench_models/all-minilm-l6-v2",
                        help="Embedding model (a local SentenceTransformer folder) that scores the pairs.")
    parser.add_argument("--score_scale", type=float, default=10.0, help="Teacher score = this x cosine.")
    parser.add_argument("--student", default="output/bench_models/minilm-l6-cross-encoder", help="Student cross-encoder folder, trained by both paths.")
    parser.add_argument("--data_dir", default=str(SHARED_DATA), help="Folder with train.jsonl and dev.jsonl.")
    parser.add_argument("--work_dir", default="output/bench/quality", help="Folder for the teacher's scores, the records and the models in training.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[12, 13, 14], help="Training seeds: each path trains once per seed.")
    parser.add_argument("--runs", nargs="+", choices=["recipe", "ours"], default=["recipe", "ours"], help="Which paths to train.")
    parser.add_argument("--budget_seconds", type=float, default=None,
                        help="Ours' --max_train_seconds when the recipe is not run; default: the recipe's own time, "
                        "measured in this run or, with --runs ours, taken from its latest run of the seed in --runs_log "
                        "made on this machine's hardware with the same student, teacher and data.")
    parser.add_argument("--ours_triplet_flags", default=OURS_TRIPLET_FLAGS, help="create_triplets.py flags for ours.")
    parser.add_argument("--ours_train_flags", default=OURS_TRAIN_FLAGS, help="train.py flags for ours.")
    parser.add_argument("--passages_as_queries", type=int, default=OURS_PASSAGES_AS_QUERIES,
                        help="Ours also trains on the teacher's scores of up to this many passages of each training "
                        "list as queries against the rest of it (generate_logits.py --passages_as_queries); 0: off.")
    parser.add_argument("--bf16", choices=["auto", "true", "false"], default="auto",
                        help="Ours in bf16: auto = where the device has bf16 units (the recipe is always fp32).")
    parser.add_argument("--max_steps", type=int, default=-1, help="Cut every training run short (smoke tests only).")
    parser.add_argument("--label", default="", help="A name for this invocation in the runs log.")
    parser.add_argument("--runs_log", default=None, help="JSON list every run is appended to, and where --runs ours "
                        "finds the recipe run of its seed. Default: bench/results/quality_runs.json, which a smoke run "
                        "(--max_steps) reads but appends nothing to.")
    parser.add_argument("--output_json", default="bench/results/quality.json", help="The table's figures, or beside "
                        "it with the date and time where that file exists.")
    args = parser.parse_args()
    runs_log = Path(args.runs_log or "bench/results/quality_runs.json")
    keep_runs = args.runs_log is not None or args.max_steps <= 0
    logging.getLogger().setLevel(logging.WARNING)
    from rerank_distill.student import bfloat16_is_fast

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = bfloat16_is_fast(device) if args.bf16 == "auto" else args.bf16 == "true"
    train_flags = f"{args.ours_train_flags} --bf16 {str(bf16).lower()}"
    work, data_dir = Path(args.work_dir), Path(args.data_dir)
    work.mkdir(parents=True, exist_ok=True)
    train_scores, dev_scores = embedding_teacher_scores(
        args.teacher, [data_dir / "train.jsonl", data_dir / "dev.jsonl"], work / "scores", args.score_scale
    )
    extra_scores, extra_teacher = [], {}
    if args.passages_as_queries:  # more teacher work for ours only: timed and reported
        seconds, paths = timed(lambda: embedding_teacher_scores(
            args.teacher, [data_dir / "train.jsonl"], work / "scores", args.score_scale, args.passages_as_queries))
        extra_scores = paths
        with open(paths[0], "rb") as lines:
            extra_teacher = {"pairs": sum(1 for _ in lines), "seconds": round(seconds, 1)}
        print(f"passages as queries: {extra_teacher['pairs']} more teacher pairs for ours ({seconds:.0f} s, 0 if "
              f"already scored)")
    start = evaluate(args.student, data_dir, dev_scores, work / "eval_before.json")
    teacher, before = start["teacher"], start["student"]
    print(f"teacher MAP {teacher['map']:.4f}; student before training {before['map']:.4f} "
          f"({share(before, teacher):.1%} of the teacher) on {start['queries_evaluated']} dev queries")

    results: dict[str, list[dict]] = {}
    log: list[dict] = []
    setup = run_setup(args, data_dir)
    for seed in args.seeds:
        budget = args.budget_seconds
        if "recipe" not in args.runs and (earlier := logged_recipe(runs_log, seed, args.max_steps, setup)):
            results.setdefault("recipe", []).append(earlier)  # shown and written, not logged again
            budget = budget or earlier["seconds"]
            print(f"seed {seed} recipe: from the runs log ({earlier['finished_at']}): dev MAP "
                  f"{earlier['dev']['map']:.4f}, trained {earlier['seconds']:.0f} s")
        if "ours" in args.runs and budget is None and "recipe" not in args.runs and args.max_steps <= 0:
            raise SystemExit(f"seed {seed}: no recipe run in {runs_log} on this machine with this student, teacher "
                             "and data to take ours' time budget from; add --runs recipe or give --budget_seconds")
        for name in sorted(args.runs, key=["recipe", "ours"].index):  # the recipe first: its time is ours' budget
            out = work / f"{name}_seed{seed}" / "model"
            shutil.rmtree(out, ignore_errors=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            if name == "recipe":
                run = original_recipe(args.student, train_scores, out, seed, args.max_steps)
                config = {"recipe": RECIPE}
                budget = run["seconds"]
            else:
                run = ours(args.student, train_scores, extra_scores, out, seed, budget, args.ours_triplet_flags,
                           train_flags, args.max_steps)
                config = {"triplet_flags": args.ours_triplet_flags, "train_flags": train_flags,
                          "passages_as_queries": args.passages_as_queries,
                          "passages_as_queries_teacher": extra_teacher, "max_train_seconds": budget}
            dev = evaluate(str(out), data_dir, dev_scores, out.parent / "evaluation.json")["student"]
            record = {"name": name, "label": args.label, "seed": seed, "setup": setup, **config, **run, "dev": dev,
                      "share_of_teacher_map": share(dev, teacher), "max_steps": args.max_steps,
                      "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            print(f"seed {seed} {name}: dev MAP {dev['map']:.4f} ({share(dev, teacher):.1%} of the teacher), "
                  f"trained {run['seconds']:.0f} s")
            results.setdefault(name, []).append(record)
            log.append(record)
            if keep_runs:
                append_runs(runs_log, [record])

    names = {"recipe": "original recipe", "ours": "ours"}
    print_table(teacher, before, {names[n]: runs for n, runs in results.items()})
    written = write_results(args.output_json, {
        "benchmark": "quality", "machine": machine(), "command": sys.argv, "teacher_model": Path(args.teacher).name,
        "score_scale": args.score_scale, "student": Path(args.student).name, "data": str(data_dir),
        "dev_queries_evaluated": start["queries_evaluated"], "teacher": teacher, "before": before,
        "share_before": share(before, teacher), "recipe": RECIPE, "ours_triplet_flags": args.ours_triplet_flags,
        "ours_train_flags": train_flags, "ours_passages_as_queries": args.passages_as_queries,
        "ours_passages_as_queries_teacher": extra_teacher, "seeds": args.seeds, "runs": [run for runs in results.values() for run in runs],
        "mean": {name: {**{m: statistics.mean(r["dev"][m] for r in runs) for m in METRICS},
                        "share_of_teacher_map": statistics.mean(r["share_of_teacher_map"] for r in runs),
                        "seconds": statistics.mean(r["seconds"] for r in runs)}
                 for name, runs in results.items()},
    })  # fmt: skip
    print("wrote", written, *(["and appended", len(log), "runs to", runs_log] if keep_runs else []))


if __name__ == "__main__":
    run_main(main)  # a user mistake: one error line, not a traceback
