"""Token counts behind the teacher benchmark's explanations and its compute floor: for the pairs
bench/teacher.py scores with the same flags, the mean judge prompt, the prefix each query's
prompts share (run once by the hf backend and served by vLLM's prefix cache), the part all the
queries share, and the tokens a pair costs that no cache can serve: its own (the document and the
fixed suffix after it) plus its share of its query's prefix. The floor is the pairs per second an
8B model (2 x 8e9 FLOPs a token) would reach at --tflops of useful work.

    python bench/prompt_tokens.py --num_queries 32 --candidates_per_query 30 --output_json bench/results/prompt_tokens_30_candidates.json
    python bench/prompt_tokens.py --num_queries 32 --candidates_per_query 30 --titles_only \
        --output_json bench/results/prompt_tokens_30_candidates_titles.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rerank_distill.cli import run_main  # noqa: E402

from bench.common import SHARED_DATA, bench_parser, require_file, write_results  # noqa: E402
from bench.teacher import benchmark_queries  # noqa: E402
from rerank_distill.prompts import JudgePrompt  # noqa: E402
from rerank_distill.teachers.llm_hf import common_prefix_length  # noqa: E402


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--tokenizer", default="output/bench_models/smollm2-135m-instruct", help="Folder with the tokenizer that counts the prompt tokens.")
    parser.add_argument("--data", default=str(SHARED_DATA / "train.jsonl"), help="MTEB reranking JSONL to take queries from.")
    parser.add_argument("--num_queries", type=int, default=12, help="Queries to count (all their passages).")
    parser.add_argument("--candidates_per_query", type=int, default=0, help="If > 0, give each query this many candidates, as bench/teacher.py does.")
    parser.add_argument("--titles_only", action="store_true", help="Keep only the first line of every query and passage, as bench/teacher.py does.")
    parser.add_argument("--instruction", default="Retrieve questions that are duplicates of the given question",
                        help="bench/teacher.py's default.")
    parser.add_argument("--tflops", type=float, default=800, help="Useful dense bf16 TFLOP/s of the GPU.")
    parser.add_argument("--output_json", default=None, help="Also write the figures (and these flags) here.")
    args = parser.parse_args()
    require_file(args.tokenizer, "--tokenizer")
    require_file(args.data, "--data")

    from transformers import AutoTokenizer

    prompt = JudgePrompt(AutoTokenizer.from_pretrained(args.tokenizer), instruction=args.instruction, max_length=2048)
    queries = benchmark_queries(args.data, args.num_queries, args.candidates_per_query, args.titles_only)
    prompts, prefixes, uncached = [], [], []  # prefixes: each query's shared token ids
    for query in queries:
        ids, _ = prompt.encode([query.query] * len(query.passages), query.passages)
        # as the hf backend caches it: what the query's prompts share, the last token kept out
        shared = min(common_prefix_length(ids), min(map(len, ids)) - 1) if len(ids) > 1 else 0
        prompts += ids
        prefixes.append(ids[0][:shared])
        uncached += [len(p) - shared + shared / len(ids) for p in ids]
    per_pair = float(np.mean(uncached))
    print(f"{len(queries)} queries, {len(prompts)} pairs, mean prompt {np.mean([len(p) for p in prompts]):.1f} tokens")
    print(f"prefix each query's prompts share: mean {np.mean([len(p) for p in prefixes]):.1f} tokens; shared by all "
          f"queries: {common_prefix_length(prefixes)}; suffix after the document: {len(prompt.suffix_ids)}")
    floor = args.tflops * 1e12 / (16e9 * per_pair)
    print(f"uncached tokens a pair: {per_pair:.1f}; floor for an 8B model at {args.tflops:g} TFLOP/s: {floor:.0f} pairs/s")
    if args.output_json:
        figures = {"queries": len(queries), "pairs": len(prompts), "mean_prompt_tokens": float(np.mean([len(p) for p in prompts])),
                   "mean_query_prefix_tokens": float(np.mean([len(p) for p in prefixes])),
                   "prefix_shared_by_all_queries": common_prefix_length(prefixes), "suffix_tokens": len(prompt.suffix_ids),
                   "uncached_tokens_per_pair": per_pair, "floor_pairs_per_second_8b": floor}
        print(write_results(args.output_json, {"flags": vars(args), **figures}))


if __name__ == "__main__":
    run_main(main)  # a user mistake: one error line, not a traceback
