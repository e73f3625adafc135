"""Teacher scoring throughput: our hf backend (and vLLM where installed on a GPU) against a
faithful re-implementation of the original loop, on the same model, pairs and machine.

The original loop: pairs in data order, batches of 8, each prompt built and tokenized on its
own, padded on the left, the full model run (output layer over the whole vocabulary at every
position) and logit(yes) - logit(no) read at the last position.

    python bench/teacher.py --model_path output/bench_models/smollm2-135m-instruct
    python bench/teacher.py --random_qwen3_8b --device cuda   # real 8B-shaped work without the weights

Prints pairs/s for each run and the ratio to the original, the median of --repetitions runs
taken alternately, the largest score difference from the original (speed must not change
scores), and writes the figures to --output_json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SHARED_DATA, alternate, machine, median, print_table, timed, write_results  # noqa: E402
from rerank_distill.formats import iter_ranking_queries  # noqa: E402
from rerank_distill.prompts import SUFFIX, YES_NO_SYSTEM, format_body, prompt_prefix  # noqa: E402


def original_scores(model, tokenizer, queries, documents, instruction, max_length, device) -> np.ndarray:
    """The original recipe's loop, kept as it was (minus its doubled end-of-turn marker)."""
    yes_id, no_id = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    prefix_ids = tokenizer.encode(prompt_prefix(YES_NO_SYSTEM), add_special_tokens=False)
    suffix_ids = tokenizer.encode(SUFFIX, add_special_tokens=False)
    tokenizer.padding_side = "left"
    scores = []
    for start in range(0, len(queries), 8):
        batch = []
        for query, document in zip(queries[start : start + 8], documents[start : start + 8]):
            body = tokenizer(
                format_body(instruction, query, document),
                truncation=True,
                max_length=max_length - len(prefix_ids) - len(suffix_ids),
                add_special_tokens=False,
            )["input_ids"]
            batch.append({"input_ids": prefix_ids + body + suffix_ids})
        inputs = tokenizer.pad(batch, padding=True, return_tensors="pt").to(device)
        with torch.no_grad():
            last = model(**inputs).logits[:, -1, :]
        scores.extend((last[:, yes_id] - last[:, no_id]).float().cpu().tolist())
    return np.array(scores)


def random_qwen3_8b(folder: Path, tokenizer_from: str) -> Path:
    """A randomly initialised model of Qwen3-8B's shape (36 layers, hidden 4096, GQA 32/8), saved
    with a borrowed tokenizer: real 8B work per token without downloading the weights."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    if (folder / "config.json").exists():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = Qwen3Config(
        vocab_size=151_669, hidden_size=4096, intermediate_size=12_288, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40_960,
        tie_word_embeddings=False, rope_theta=1_000_000,
    )  # fmt: skip
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default="output/bench_models/smollm2-135m-instruct", help="Causal LM teacher folder.")
    parser.add_argument("--random_qwen3_8b", action="store_true", help="Use a random model of Qwen3-8B's shape (GPU) instead of --model_path; --model_path lends its tokenizer.")
    parser.add_argument("--data", default=str(SHARED_DATA / "train.jsonl"), help="MTEB reranking JSONL to take queries from.")
    parser.add_argument("--num_queries", type=int, default=8, help="Queries to score per run (all their passages).")
    parser.add_argument("--repetitions", type=int, default=3, help="Timed runs of each path, alternated; the median is reported.")
    parser.add_argument("--batch_size", type=int, default=32, help="Our hf backend's batch size (the original is fixed at 8).")
    parser.add_argument("--max_length", type=int, default=2048, help="Prompt length limit for both paths.")
    parser.add_argument("--instruction", default="Retrieve questions that are duplicates of the given question")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output_json", default=None, help="Default: bench/results/teacher_{device}.json")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rerank_distill.teachers.llm_judge import YesNoJudge

    model_path = str(random_qwen3_8b(Path("output/bench_models/random-qwen3-8b"), args.model_path)) if args.random_qwen3_8b else args.model_path
    queries = list(iter_ranking_queries(args.data))[: args.num_queries]
    pair_queries = [q.query for q in queries for _ in q.passages]
    pair_docs = [p for q in queries for p in q.passages]
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    original_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(args.device).eval()
    ours = YesNoJudge(model_path, "hf", args.instruction, args.max_length, args.batch_size, args.device, "auto")
    ours_no_prefix_cache = YesNoJudge(model_path, "hf", args.instruction, args.max_length, args.batch_size, args.device, "auto", prefix_cache=False)
    prompt_ids, _ = ours.prompt.encode(pair_queries, pair_docs)
    print(f"{len(queries)} queries, {len(pair_docs)} pairs, mean prompt {np.mean([len(p) for p in prompt_ids]):.0f} tokens, device {args.device}")

    outputs: dict[str, np.ndarray] = {}

    def run(name, function):
        def timed_run():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds, scores = timed(function)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            outputs[name] = scores
            return len(pair_docs) / seconds
        return timed_run

    runs = {
        "original loop (batch 8)": run("original", lambda: original_scores(original_model, tokenizer, pair_queries, pair_docs, args.instruction, args.max_length, args.device)),
        "ours, no prefix cache": run("ours_plain", lambda: ours_no_prefix_cache.score(pair_queries, pair_docs).scores),
        "ours (hf backend)": run("ours", lambda: ours.score(pair_queries, pair_docs).scores),
    }
    try:
        import vllm  # noqa: F401

        if args.device.startswith("cuda"):
            del original_model
            vllm_judge = YesNoJudge(model_path, "vllm", args.instruction, args.max_length, args.batch_size)
            runs["ours (vLLM backend)"] = run("vllm", lambda: vllm_judge.score(pair_queries, pair_docs).scores)
    except ImportError:
        print("vLLM not installed: its row is left out")
    run_list = list(runs.items())
    rates = alternate({name: fn for name, fn in run_list}, args.repetitions)
    rows = [(name, median(values)) for name, values in rates.items()]
    print_table(f"teacher scoring, {Path(model_path).name}, {args.device}", rows, "pairs/s", "original loop (batch 8)")
    differences = {name: float(np.abs(scores - outputs["original"]).max()) for name, scores in outputs.items() if name != "original"}
    print("largest |score - original score|:", {k: f"{v:.2e}" for k, v in differences.items()})
    results = {
        "benchmark": "teacher", "machine": machine(), "device": args.device, "model": Path(model_path).name,
        "queries": len(queries), "pairs": len(pair_docs), "repetitions": args.repetitions, "batch_size": args.batch_size,
        "pairs_per_second": {name: values for name, values in rates.items()},
        "median_pairs_per_second": dict(rows),
        "ratio_to_original": {name: rate / dict(rows)["original loop (batch 8)"] for name, rate in rows},
        "max_abs_score_difference_from_original": differences,
    }  # fmt: skip
    print("wrote", write_results(args.output_json or f"bench/results/teacher_{args.device.split(':')[0]}.json", results))


if __name__ == "__main__":
    main()
