"""Student training throughput: our train.py against the plain original recipe
(CrossEncoderTrainer + sentence-transformers' MarginMSELoss, default batching, fp32), same
student, same triplets, same number of steps and batch size, alternating runs in one process.

Speed must not be bought with a worse model, so each run also reports its final training loss
(mean of the last 10% of steps) and the MarginMSE loss of the trained model on a fixed set of
held-out triplets, computed the same way (fp32, plain MarginMSELoss) for every run.

    python bench/train.py                       # builds teacher scores and triplets on first use
    python bench/train.py --max_steps 60 --repetitions 3
    python bench/train.py --random_bge_m3_shape --triplets T.jsonl   # on a GPU: the reference student's work

Triplets come from --triplets, or are made from --data (SemEval train by default) with the
all-MiniLM embedding teacher (cosine x 10) and create_triplets.py's default rule. Where bf16 is
fast (a recent GPU, some CPUs) the original recipe also runs in bf16, so ours is compared with it
at its best too. Ours runs with train.py's default length-grouped batches, and with
--batch_grouping query (a query's triplets batched together, the pairs they repeat scored once).
"""

from __future__ import annotations

import gc
import json
import logging
import random
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rerank_distill.cli import run_main  # noqa: E402
from rerank_distill.jsonl import read_jsonl  # noqa: E402

from bench.common import (  # noqa: E402
    SHARED_DATA,
    alternate,
    bench_parser,
    embedding_teacher_scores,
    machine,
    median,
    print_table,
    require_cuda,
    require_file,
    train_original_recipe,
    write_results,
)
from rerank_distill.student import bfloat16_is_fast  # noqa: E402
from rerank_distill.trainer import final_logged_loss  # noqa: E402


def make_triplets(work: Path, teacher: str, data: str) -> Path:
    import create_triplets

    # stage 1 reuses its finished scores of the same data (and refuses those of other data of the same
    # name); the triplets are remade each run, in seconds, so they always come from --data
    triplets = work / "train_triplets.jsonl"
    (scores,) = embedding_teacher_scores(teacher, [Path(data)], work)
    create_triplets.main(["--input_path", str(scores), "--output_path", str(triplets)])
    return triplets


def split_triplets(path: Path, held_out_share: float, work: Path) -> tuple[Path, list[dict]]:
    """Hold out whole queries for the fixed quality check; the rest is the training file."""
    # (not str.splitlines: it also splits at U+2028 and the like, which JSON lines keep raw inside strings)
    rows = [record for _, record in read_jsonl(path)]
    queries = sorted({row["query"] for row in rows})
    held_out = set(random.Random(0).sample(queries, max(1, int(held_out_share * len(queries)))))
    train_path = work / "bench_train_triplets.jsonl"
    train_path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["query"] not in held_out), encoding="utf-8")
    return train_path, [r for r in rows if r["query"] in held_out]


def random_bge_m3_shape(folder: Path, tokenizer_from: str) -> Path:
    """A randomly initialised one-logit cross-encoder of bge-reranker-v2-m3's shape (XLM-RoBERTa
    large: 24 layers, hidden 1024, 16 heads, vocabulary 250,002; built as a BERT, the same
    layers, so that ``tokenizer_from``'s BERT tokenizer fits it): the reference student's work per
    token without its weights, which cannot be downloaded here."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=250_002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        max_position_embeddings=514, type_vocab_size=2, num_labels=1,
    )  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    return folder


@torch.no_grad()
def held_out_loss(model_path: str, rows: list[dict], max_length: int) -> float:
    """Plain MarginMSELoss (fp32, eval mode) of a saved model on fixed triplets."""
    from sentence_transformers.cross_encoder import CrossEncoder
    from sentence_transformers.cross_encoder.losses import MarginMSELoss

    model = CrossEncoder(model_path, max_length=max_length, device="cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    loss = MarginMSELoss(model)
    total = 0.0
    for start in range(0, len(rows), 32):
        batch = rows[start : start + 32]
        inputs = [[r["query"] for r in batch], [r["positive"] for r in batch], [r["negative"] for r in batch]]
        total += loss(inputs, torch.tensor([r["score"] for r in batch], device=model.device)).item() * len(batch)
    return total / len(rows)


def original_recipe(student: str, train_path: Path, out: Path, steps: int, batch_size: int, max_length: int,
                    bf16: bool = False) -> dict:
    """The original recipe as written: CrossEncoder, MarginMSELoss, CrossEncoderTrainer, defaults."""
    trainer, result, seconds, _ = train_original_recipe(
        student, train_path, out, max_length=max_length, per_device_train_batch_size=batch_size, max_steps=steps,
        learning_rate=2e-5, warmup_steps=0.1, logging_steps=1, seed=12, bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    return {"seconds": seconds, "examples": steps * batch_size, "train_loss": result.training_loss,
            "final_loss": final_logged_loss(trainer.state.log_history)}


def ours(student: str, train_path: Path, out: Path, steps: int, batch_size: int, max_length: int, bf16: bool,
         pairs_per_forward: int, batch_grouping: str = "length") -> dict:
    import train

    summary = train.main([
        "--model_name_or_path", student, "--train_data", str(train_path), "--output_dir", str(out),
        "--max_length", str(max_length), "--per_device_train_batch_size", str(batch_size), "--max_steps", str(steps),
        "--learning_rate", "2e-5", "--warmup_steps", "0.1", "--logging_steps", "1", "--eval_strategy", "no",
        "--save_strategy", "no", "--report_to", "none", "--seed", "12", "--bf16", str(bf16).lower(),
        "--pairs_per_forward", str(pairs_per_forward), "--batch_grouping", batch_grouping,
        *([] if torch.cuda.is_available() else ["--use_cpu", "true"]),
    ])  # fmt: skip
    return {"seconds": summary["seconds"], "examples": summary["examples_trained"], "train_loss": summary["train_loss"],
            "final_loss": summary["final_loss"], "mean_real_tokens": summary["mean_real_tokens"],
            "mean_padded_tokens": summary["mean_padded_tokens"],
            "pairs_scored_per_triplet": summary["pairs_scored_per_example"]}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--student", default="output/bench_models/minilm-l6-cross-encoder", help="Student cross-encoder folder, trained by both paths.")
    parser.add_argument("--teacher", default="output/bench_models/all-minilm-l6-v2", help="Embedding teacher used to make triplets when --triplets is not given.")
    parser.add_argument("--data", default=str(SHARED_DATA / "train.jsonl"),
                        help="Ranking data the teacher scores into triplets when --triplets is not given.")
    parser.add_argument("--triplets", default=None, help="Triplets JSONL (create_triplets.py's format) to train on; unset: made from --data by --teacher into --work_dir.")
    parser.add_argument("--random_bge_m3_shape", action="store_true",
                        help="Train a random model of bge-reranker-v2-m3's shape (a GPU's work) instead of --student; "
                        "--student lends its tokenizer.")
    parser.add_argument("--work_dir", default="output/bench/train", help="Folder for the triplets made here and each run's model (deleted after the run).")
    parser.add_argument("--max_steps", type=int, default=40, help="Optimizer steps of every run.")
    parser.add_argument("--batch_size", type=int, default=16, help="Triplets per step, for both paths (the recipe's 16).")
    parser.add_argument("--max_length", type=int, default=256, help="Tokens per (query, passage) pair (the recipe's 256).")
    parser.add_argument("--repetitions", type=int, default=3, help="Timed runs of each path, alternated; the median is reported.")
    parser.add_argument("--warmup_repetitions", type=int, default=None,
                        help="Untimed rounds of every run before the timed ones (kept in the JSON as warmup_runs, left "
                        "out of the medians): a GPU's first runs pay for kernel selection and memory growth. Default: "
                        "1 on a GPU, 0 on a CPU.")
    parser.add_argument("--pairs_per_forward", type=int, default=16,
                        help="Ours: a batch's pairs in length-sorted forward passes of this many, as train.sh sets it; "
                        "a run with one pass a batch (0) is measured too.")
    parser.add_argument("--precisions", choices=("fp32", "bf16", "both"), default="both",
                        help="Which runs: fp32, bf16 (where bf16 is fast; a lent GPU's minutes go to the comparison "
                        "that matters there) or both.")
    parser.add_argument("--output_json", default=None, help="Default: bench/results/train_{cpu|cuda}.json, or beside it with the date and time where that file exists.")
    args = parser.parse_args()
    if args.random_bge_m3_shape:  # 560M parameters: minutes a step on a CPU
        require_cuda("--random_bge_m3_shape")
    require_file(args.triplets or args.data, "--triplets" if args.triplets else "--data")  # (models may be hub ids)
    logging.getLogger().setLevel(logging.WARNING)

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    triplets = Path(args.triplets) if args.triplets else make_triplets(work, args.teacher, args.data)
    train_path, held_out = split_triplets(triplets, 0.1, work)
    student = str(random_bge_m3_shape(work / "random-bge-m3-shape", args.student)) if args.random_bge_m3_shape else args.student
    bf16 = bfloat16_is_fast("cuda" if torch.cuda.is_available() else "cpu")
    runs_detail: dict[str, list[dict]] = {}

    def run(name, function):
        def timed_run():
            with tempfile.TemporaryDirectory(dir=work) as out:
                result = function(Path(out))
                result["held_out_loss"] = held_out_loss(out, held_out, args.max_length)
            runs_detail.setdefault(name, []).append(result)
            gc.collect()  # a GPU run's model and optimiser go before the next run's are made
            torch.cuda.empty_cache()
            return result["examples"] / result["seconds"]
        return timed_run

    common = (student, train_path)
    shape = (args.max_steps, args.batch_size, args.max_length)
    runs = {} if args.precisions == "bf16" else {
        "original recipe (fp32)": run("original", lambda out: original_recipe(*common, out, *shape)),
        "ours, fp32, one pass a batch": run("ours_fp32_one_pass", lambda out: ours(*common, out, *shape, False, 0)),
        "ours, fp32": run("ours_fp32", lambda out: ours(*common, out, *shape, False, args.pairs_per_forward)),
        "ours, fp32, query batches": run("ours_fp32_query", lambda out: ours(*common, out, *shape, False,
                                                                             args.pairs_per_forward, "query")),
    }
    if args.precisions == "bf16" and not bf16:
        raise SystemExit("error: --precisions bf16: bf16 is not fast on this machine's device")
    if bf16 and args.precisions != "fp32":
        runs["original recipe (bf16)"] = run("original_bf16", lambda out: original_recipe(*common, out, *shape, True))
        runs["ours, bf16"] = run("ours_bf16", lambda out: ours(*common, out, *shape, True, args.pairs_per_forward))
        runs["ours, bf16, query batches"] = run("ours_bf16_query", lambda out: ours(*common, out, *shape, True,
                                                                                   args.pairs_per_forward, "query"))
    warmup_repetitions = args.warmup_repetitions if args.warmup_repetitions is not None else int(torch.cuda.is_available())
    for _ in range(warmup_repetitions):
        for function in runs.values():
            function()
    warmup_runs = dict(runs_detail)
    runs_detail.clear()
    rates = alternate(runs, args.repetitions)
    rows = [(name, median(values)) for name, values in rates.items()]
    baseline = rows[0][0]  # the original recipe, in fp32 where that ran
    print_table(f"student training, {Path(student).name}, {args.max_steps} steps x {args.batch_size} triplets",
                rows, "triplets/s", baseline)
    print(f"\n{'run':<34} {'final train loss':>17} {'held-out loss':>14}")
    for (name, _), details in zip(rows, runs_detail.values()):
        print(f"{name:<34} {median([d['final_loss'] for d in details]):>17.4f} {median([d['held_out_loss'] for d in details]):>14.4f}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    written = write_results(args.output_json or f"bench/results/train_{device}.json", {
        "benchmark": "train", "machine": machine(), "student": Path(student).name, "steps": args.max_steps,
        "triplets": str(triplets), "data": None if args.triplets else args.data,
        "batch_size": args.batch_size, "max_length": args.max_length, "repetitions": args.repetitions,
        "warmup_repetitions": warmup_repetitions, "warmup_runs": warmup_runs,
        "pairs_per_forward": args.pairs_per_forward,
        "triplets_per_second": rates, "median_triplets_per_second": dict(rows),
        "precisions": args.precisions, "baseline": baseline,
        "ratio_to_original": {name: rate / dict(rows)[baseline] for name, rate in rows},
        "runs": runs_detail,
    })  # fmt: skip
    print("wrote", written)


if __name__ == "__main__":
    run_main(main)  # a user mistake: one error line, not a traceback
