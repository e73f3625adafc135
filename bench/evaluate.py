"""Evaluation throughput: our evaluation path (evaluation.py's scoring and metrics) against
sentence-transformers' CrossEncoderRerankingEvaluator, on the same model object, data and machine.

    python bench/evaluate.py                                     # SemEval-2016 dev, MiniLM-L6 cross-encoder
    python bench/evaluate.py --num_queries 6 --repetitions 1     # a quick check that it works

A run is everything after loading: score the data set's pairs and compute MAP, MRR@10 and NDCG@10
(under --protocol sentence-transformers, the evaluator's own handling, so both compute the same
thing). The rate is the data set's pairs / seconds for every run. The runs alternate and the median
of --repetitions is reported, with the ratio to the evaluator:

- "ours": what evaluation.py does: each distinct pair once, batches of similar token length,
  no scoring of queries whose metrics ignore scores (the evaluator skips those too);
- "ours, predict's character sort": the same without the token-length batches;
- "ours, batch N": other --batch_size values (--extra_batch_sizes);
- "ours, --dtype bfloat16": opt-in bf16 autocast, where the device has bf16 units (or, with
  --emulated_bfloat16, where it has none, to time what emulation costs); it changes scores
  slightly, so its metric differences are printed too.

It then checks that ours and the evaluator give the same metrics (to 1e-6) on the queries whose
scores have no ties: with ties, the evaluator's MAP takes a tied block as one threshold and its MRR
the order argsort leaves them in, while ours averages each metric over every order of the tied
passages (its NDCG, sklearn's, does the same).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rerank_distill.cli import run_main  # noqa: E402

from bench.common import SHARED_DATA, bench_parser, alternate, machine, median, print_table, timed, write_results  # noqa: E402
from rerank_distill.formats import iter_ranking_queries  # noqa: E402
from rerank_distill.metrics import evaluate_rankings, scores_needed  # noqa: E402
from rerank_distill.student import (  # noqa: E402
    bfloat16_is_fast,
    length_sorted_batches,
    load_cross_encoder,
    pair_token_lengths,
    score_ranking_queries,
)

PROTOCOL = "sentence-transformers"
METRICS = ("map", "mrr@10", "ndcg@10")
BASELINE = "sentence-transformers evaluator"
BF16 = "ours, --dtype bfloat16"


def evaluator_samples(queries) -> list[dict]:
    return [{"query": q.query, "positive": q.positives, "negative": q.negatives} for q in queries]


def ours(model, queries, batch_size: int, dtype: str = "float32", sort_by_tokens: bool = True):
    """evaluation.py's path for one model: the per-query scores and the metrics."""
    wanted = [scores_needed(q.labels, PROTOCOL) for q in queries]
    scores = score_ranking_queries(model, queries, batch_size, False, dtype, sort_by_tokens, wanted)
    return scores, evaluate_rankings(zip(scores, [q.labels for q in queries]), PROTOCOL, 10)


def tokens_through_model(model, queries, batch_size: int, by_tokens: bool) -> tuple[int, int]:
    """(real tokens, tokens with padding) the model processes for the pairs the protocol needs:
    work that does not depend on a busy machine. ``by_tokens``: our batches; else predict's, which
    sort by characters (the same np.argsort call as CrossEncoder.predict)."""
    pairs = list(dict.fromkeys((q.query, p) for q in queries if scores_needed(q.labels, PROTOCOL) for p in q.passages))
    lengths = pair_token_lengths(model.tokenizer, pairs, model.max_seq_length)
    if by_tokens:
        batches = length_sorted_batches(lengths, batch_size)
    else:
        order = np.argsort([-(len(query) + len(passage)) for query, passage in pairs])
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return int(lengths.sum()), int(sum(len(batch) * lengths[batch].max() for batch in batches))


def main() -> None:
    parser = bench_parser(__doc__)
    add = parser.add_argument
    add("--model_path", default="output/bench_models/minilm-l6-cross-encoder", help="CrossEncoder folder (one logit).")
    add("--data", default=str(SHARED_DATA / "dev.jsonl"), help="Binary-labelled ranking data (MTEB or pos/neg JSONL).")
    add("--num_queries", type=int, default=0, help="Use the first N queries (0: all).")
    add("--repetitions", type=int, default=3, help="Timed runs of each path, alternated; the median is reported.")
    add("--batch_size", type=int, default=64, help="Batch size of the evaluator and of ours (the evaluator's default).")
    add("--extra_batch_sizes", type=int, nargs="*", default=[16, 32], help="More batch sizes to time for ours.")
    add("--no_bfloat16", action="store_true", help="Leave out the bf16 run even where the device has bf16 units.")
    add("--emulated_bfloat16", action="store_true",
        help="Time the bf16 run also where the device has no bf16 units (emulated there: what it costs).")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="Where both paths run; default: cuda where present.")
    add("--output_json", default=None, help="Default: bench/results/evaluate_{device}.json")
    args = parser.parse_args()

    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    queries = list(iter_ranking_queries(args.data))[: args.num_queries or None]
    if any(label not in (0.0, 1.0) for q in queries for label in q.labels):
        sys.exit("error: the evaluator takes binary labels only; pass MTEB or pos/neg data")
    pairs = sum(len(q.passages) for q in queries)
    model = load_cross_encoder(args.model_path).to(args.device)
    model.activation_fn = torch.nn.Identity()  # the evaluator ranks logits too, so both see the same numbers
    evaluator = CrossEncoderRerankingEvaluator(evaluator_samples(queries), batch_size=args.batch_size, write_csv=False)
    unscored = sum(not scores_needed(q.labels, PROTOCOL) for q in queries)
    print(f"{len(queries)} queries, {pairs} pairs ({unscored} queries without a positive need no scores), "
          f"model {Path(args.model_path).name}, device {args.device}")  # fmt: skip

    outputs: dict[str, tuple] = {}

    def run(name, function):
        def timed_run():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds, result = timed(function)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            outputs[name] = result
            return pairs / seconds

        return timed_run

    paths = {
        BASELINE: lambda: evaluator(model),
        "ours": lambda: ours(model, queries, args.batch_size),
        "ours, predict's character sort": lambda: ours(model, queries, args.batch_size, sort_by_tokens=False),
        **{f"ours, batch {size}": lambda size=size: ours(model, queries, size) for size in args.extra_batch_sizes},
    }
    if not args.no_bfloat16 and (bfloat16_is_fast(args.device) or args.emulated_bfloat16):
        paths[BF16] = lambda: ours(model, queries, args.batch_size, "bfloat16")
    # warm-up of both sides on two queries, so neither's first timed run pays one-off costs
    ours(model, queries[:2], args.batch_size)
    CrossEncoderRerankingEvaluator(evaluator_samples(queries[:2]), batch_size=args.batch_size, write_csv=False)(model)
    rates = alternate({name: run(name, path) for name, path in paths.items()}, args.repetitions)
    rows = [(name, median(values)) for name, values in rates.items()]
    title = f"evaluation, {Path(args.model_path).name}, {args.device}, batch {args.batch_size}"
    print_table(title, rows, "pairs/s", BASELINE)

    # Work done, free of timing noise (the evaluator's pairs are ours: it skips no-positive queries too)
    padding = {
        f"batch {size}, {'token' if by_tokens else 'char'} sort": tokens_through_model(model, queries, size, by_tokens)
        for size in (args.batch_size, *args.extra_batch_sizes)
        for by_tokens in (False, True)
    }
    print("tokens through the model (real + padding):")
    for name, (real, padded) in padding.items():
        print(f"  {name:<28} {padded:>10}  padding {padded / real - 1:>6.1%}")

    # Same metrics: on the queries whose scores (ours, float32) have no ties, the evaluator again
    scores, _ = outputs["ours"]
    tie_free = [i for i, s in enumerate(scores) if np.isnan(s).all() or len(set(s.tolist())) == len(s)]
    subset = [queries[i] for i in tie_free]
    expected = CrossEncoderRerankingEvaluator(evaluator_samples(subset), batch_size=args.batch_size, write_csv=False)
    expected = expected(model)
    got = evaluate_rankings(zip([scores[i] for i in tie_free], [q.labels for q in subset]), PROTOCOL, 10)
    differences = {name: abs(float(got[name]) - float(expected[name])) for name in METRICS}
    same = max(differences.values()) <= 1e-6
    print(f"same metrics as the evaluator on {len(subset)} of {len(queries)} tie-free queries: "
          f"{'yes' if same else 'NO'} (largest difference {max(differences.values()):.1e})")  # fmt: skip
    metrics = {
        name: {m: float((result if name == BASELINE else result[1])[m]) for m in METRICS}
        for name, result in outputs.items()
    }
    if BF16 in outputs:
        shift = float(np.nanmax(np.abs(np.concatenate(outputs[BF16][0]) - np.concatenate(scores))))
        change = {m: metrics[BF16][m] - metrics["ours"][m] for m in METRICS}
        print(f"--dtype bfloat16 moves scores by up to {shift:.1e} and metrics by "
              + ", ".join(f"{m} {d:+.1e}" for m, d in change.items()))  # fmt: skip

    results = {
        "benchmark": "evaluate", "machine": machine(), "device": args.device, "model": Path(args.model_path).name,
        "data": args.data, "queries": len(queries), "pairs": pairs, "protocol": PROTOCOL,
        "repetitions": args.repetitions, "batch_size": args.batch_size,
        "pairs_per_second": rates, "median_pairs_per_second": dict(rows),
        "ratio_to_evaluator": {name: rate / dict(rows)[BASELINE] for name, rate in rows},
        "metrics": metrics,
        "tokens_real_and_padded": padding,
        "same_metrics_as_evaluator": {
            "tie_free_queries": len(subset), "largest_difference": max(differences.values()), "equal_to_1e-6": same,
        },
    }  # fmt: skip
    if BF16 in outputs:
        results["bfloat16_change"] = {"largest_score_difference": shift, "metrics": change}
    output = args.output_json or f"bench/results/evaluate_{args.device.split(':')[0]}.json"
    print("wrote", write_results(output, results))


if __name__ == "__main__":
    run_main(main)  # a user mistake: one error line, not a traceback
