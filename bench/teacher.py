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

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rerank_distill.cli import run_main  # noqa: E402

from bench.common import SHARED_DATA, bench_parser, alternate, machine, median, print_table, require_cuda, require_file, timed, write_results  # noqa: E402
from rerank_distill.formats import iter_ranking_queries  # noqa: E402
from rerank_distill.prompts import SUFFIX, YES_NO_SYSTEM, format_body, prompt_prefix  # noqa: E402
from rerank_distill.student import bfloat16_is_fast  # noqa: E402


def original_scores(model, tokenizer, queries, documents, instruction, max_length, device, batch_size=8) -> np.ndarray:
    """The original recipe's loop, kept as it was (minus its doubled end-of-turn marker); other
    batch sizes only to show how far its bf16 scores move with the batch's padding alone."""
    yes_id, no_id = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    prefix_ids = tokenizer.encode(prompt_prefix(YES_NO_SYSTEM), add_special_tokens=False)
    suffix_ids = tokenizer.encode(SUFFIX, add_special_tokens=False)
    tokenizer.padding_side = "left"
    scores = []
    for start in range(0, len(queries), batch_size):
        batch = []
        for query, document in zip(queries[start : start + batch_size], documents[start : start + batch_size]):
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


def random_qwen3_8b(folder: Path, tokenizer_from: str, device: str):
    """A randomly initialised model of Qwen3-8B's shape (36 layers, hidden 4096, GQA 32/8) in
    bf16 on ``device``, and a folder with its config and a borrowed tokenizer: real 8B work per
    token without downloading the weights. Nothing is saved: every path shares this one model."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=151_669, hidden_size=4096, intermediate_size=12_288, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40_960,
        tie_word_embeddings=False, rope_theta=1_000_000,
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: 16 GB, not 32 then 16
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    return folder, model


def benchmark_queries(data: str, num_queries: int, candidates_per_query: int = 0, titles_only: bool = False) -> list:
    """The first ``num_queries`` queries of ``data`` as the benchmark scores them: with
    ``titles_only`` every text cut to its first line (SemEval's subject line); with
    ``candidates_per_query`` each list topped up with other queries' passages to that length."""
    queries = list(iter_ranking_queries(data))
    if titles_only:
        for query in queries:
            query.query = query.query.split("\n", 1)[0]
            query.passages = list(dict.fromkeys(p.split("\n", 1)[0] for p in query.passages))
    pool = [p for q in queries for p in q.passages]
    queries = queries[:num_queries]
    if candidates_per_query:
        for number, query in enumerate(queries):
            extra = [p for p in pool[number * 7 :] if p not in query.passages]
            query.passages = (query.passages + extra)[:candidates_per_query]
    return queries


def share_model(model) -> None:
    """Make every ``AutoModelForCausalLM.from_pretrained`` (the hf backend's too) return ``model``."""
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained = staticmethod(lambda *args, **kwargs: model)


def count_flops(paths: dict) -> None:
    """Print each path's floating-point operations for one scoring, and their ratio to the first's."""
    from torch.utils.flop_counter import FlopCounterMode

    counted = {}
    for name, function in paths.items():
        with FlopCounterMode(display=False) as counter:
            function()
        counted[name] = counter.get_total_flops()
    first = next(iter(counted.values()))
    for name, flops in counted.items():
        print(f"{name:<28} {flops / 1e9:>10,.0f} GFLOP  {flops / first:.2f}x the first")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--model_path", default="output/bench_models/smollm2-135m-instruct", help="Causal LM teacher folder.")
    parser.add_argument("--random_qwen3_8b", action="store_true", help="Use a random model of Qwen3-8B's shape (GPU) instead of --model_path; --model_path lends its tokenizer.")
    parser.add_argument("--data", default=str(SHARED_DATA / "train.jsonl"), help="MTEB reranking JSONL to take queries from.")
    parser.add_argument("--num_queries", type=int, default=8, help="Queries to score per run (all their passages).")
    parser.add_argument("--candidates_per_query", type=int, default=0, help="If > 0, give each query this many candidates, adding other queries' passages after its own (StackOverflowDupQuestions has about 30 a query, SemEval about 10).")
    parser.add_argument("--titles_only", action="store_true", help="Keep only the first line of every query and passage (SemEval's subject line): short texts like StackOverflowDupQuestions' titles, with --candidates_per_query 30 that data's shape.")
    parser.add_argument("--repetitions", type=int, default=3, help="Timed runs of each path, alternated; the median is reported.")
    parser.add_argument("--batch_size", type=int, default=32, help="Our hf backend's batch size (the original is fixed at 8).")
    parser.add_argument("--max_length", type=int, default=2048, help="Prompt length limit for both paths.")
    parser.add_argument("--instruction", default="Retrieve questions that are duplicates of the given question", help="The prompt's <Instruct> line, for both paths.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="Where both paths run (cuda, cuda:1, cpu); default: cuda where present.")
    parser.add_argument("--output_json", default=None, help="Default: bench/results/teacher_{device}[_{N}_candidates][_titles].json, or beside it with the date and time where that file exists.")
    parser.add_argument("--count_flops", action="store_true", help="Instead of timing: count the floating-point operations of one scoring by each path (torch.utils.flop_counter: matrix products and attention) and print them.")
    args = parser.parse_args()
    if args.device.startswith("cuda") or args.random_qwen3_8b:
        require_cuda(f"--device {args.device}" if args.device.startswith("cuda") else "--random_qwen3_8b")
    require_file(args.data, "--data")
    require_file(args.model_path, "--model_path")  # (a folder of bench/prepare_models.py; hub ids are not fetched)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rerank_distill.teachers.llm_judge import YesNoJudge

    model_path = args.model_path
    if args.random_qwen3_8b:
        folder, shared_model = random_qwen3_8b(Path("output/bench_models/random-qwen3-8b"), args.model_path, args.device)
        model_path = str(folder)
        share_model(shared_model)
    queries = benchmark_queries(args.data, args.num_queries, args.candidates_per_query, args.titles_only)
    pair_queries = [q.query for q in queries for _ in q.passages]
    pair_docs = [p for q in queries for p in q.passages]
    on_gpu = args.device.startswith("cuda")
    # Both paths run in the same precision: bfloat16 on a GPU; on a CPU float32 (exact), plus
    # bfloat16 rows where the CPU has native bf16 (it changes scores by more than float noise).
    dtypes = ["bfloat16"] if on_gpu else ["float32"] + (["bfloat16"] if bfloat16_is_fast("cpu") else [])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    original_models = {dtype: AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(args.device).eval() for dtype in dtypes}
    judges = {dtype: YesNoJudge(model_path, "hf", args.instruction, args.max_length, args.batch_size, args.device, dtype) for dtype in dtypes}
    judge_no_prefix_cache = YesNoJudge(model_path, "hf", args.instruction, args.max_length, args.batch_size, args.device, dtypes[0], prefix_cache=False)
    prompt_ids, _ = judges[dtypes[0]].prompt.encode(pair_queries, pair_docs)
    print(f"{len(queries)} queries, {len(pair_docs)} pairs, mean prompt {np.mean([len(p) for p in prompt_ids]):.0f} tokens, device {args.device}")

    if args.count_flops:
        count_flops({"original loop (batch 8)": lambda: original_scores(original_models[dtypes[0]], tokenizer, pair_queries, pair_docs, args.instruction, args.max_length, args.device),
                     "ours, no prefix cache": lambda: judge_no_prefix_cache.score(pair_queries, pair_docs),
                     "ours (hf backend)": lambda: judges[dtypes[0]].score(pair_queries, pair_docs)})
        return
    outputs: dict[str, np.ndarray] = {}

    def run(name, function):
        def timed_run():
            if on_gpu:
                torch.cuda.synchronize()
            seconds, scores = timed(function)
            if on_gpu:
                torch.cuda.synchronize()
            outputs[name] = scores
            return len(pair_docs) / seconds
        return timed_run

    baseline = f"original loop (batch 8, {dtypes[0]})"
    runs = {}
    for dtype in dtypes:
        model = original_models[dtype]
        runs[f"original loop (batch 8, {dtype})"] = run(f"original {dtype}", lambda model=model: original_scores(model, tokenizer, pair_queries, pair_docs, args.instruction, args.max_length, args.device))
        if dtype == "bfloat16" and on_gpu:  # its scores' distance from batch 8's is bf16's own noise
            runs[f"original loop (batch 16, {dtype})"] = run(f"original batch 16 {dtype}", lambda model=model: original_scores(model, tokenizer, pair_queries, pair_docs, args.instruction, args.max_length, args.device, 16))
        if dtype == dtypes[0]:
            runs[f"ours, no prefix cache ({dtype})"] = run(f"ours plain {dtype}", lambda: judge_no_prefix_cache.score(pair_queries, pair_docs).scores)
        runs[f"ours (hf backend, {dtype})"] = run(f"ours {dtype}", lambda judge=judges[dtype]: judge.score(pair_queries, pair_docs).scores)
    try:
        import vllm  # noqa: F401

        if on_gpu:
            # beside the hf paths' one model (shared, see share_model): a share of the GPU, and for the
            # random model (a folder without weights) vLLM's own random weights
            engine = {"gpu_memory_utilization": 0.45, "engine_args": {"load_format": "dummy"} if args.random_qwen3_8b else {}}
            try:
                vllm_judge = YesNoJudge(model_path, "vllm", args.instruction, args.max_length, args.batch_size,
                                        vllm_options=engine)  # fmt: skip
                vllm_judge.engine  # noqa: B018  (the engine starts here, after the hf models: its memory share)
                runs["ours (vLLM backend)"] = run("vllm", lambda: vllm_judge.score(pair_queries, pair_docs).scores)
            except Exception as error:  # the other rows still count; say why this one is missing
                print(f"vLLM could not start ({type(error).__name__}: {error}); its row is left out")
    except ImportError:
        print("vLLM not installed: its row is left out")
    # one untimed call of each path on a few pairs: the first call pays one-off costs (kernels, caches)
    few = slice(0, min(8, len(pair_docs)))
    for dtype in dtypes:
        for batch in (8, 16) if on_gpu else (8,):
            original_scores(original_models[dtype], tokenizer, pair_queries[few], pair_docs[few], args.instruction,
                            args.max_length, args.device, batch)  # fmt: skip
        judges[dtype].score(pair_queries[few], pair_docs[few])
    judge_no_prefix_cache.score(pair_queries[few], pair_docs[few])
    if "ours (vLLM backend)" in runs:
        vllm_judge.score(pair_queries[few], pair_docs[few])
        if args.random_qwen3_8b:
            print("vLLM runs on its own random weights here: its score differences below mean nothing")
    run_list = list(runs.items())
    rates = alternate({name: fn for name, fn in run_list}, args.repetitions)
    rows = [(name, median(values)) for name, values in rates.items()]
    print_table(f"teacher scoring, {Path(model_path).name}, {args.device}", rows, "pairs/s", baseline)
    reference = outputs[f"original {dtypes[0]}"]
    differences = {name: float(np.abs(scores - reference).max()) for name, scores in outputs.items() if scores is not reference}
    print(f"largest |score - original {dtypes[0]} score|:", {k: f"{v:.2e}" for k, v in differences.items()})
    print(f"original scores: standard deviation {reference.std():.3g}, range {np.ptp(reference):.3g} (the scale those differences sit on)")
    results = {
        "benchmark": "teacher", "machine": machine(), "device": args.device, "model": Path(model_path).name,
        "queries": len(queries), "pairs": len(pair_docs), "mean_prompt_tokens": float(np.mean([len(p) for p in prompt_ids])), "candidates_per_query": args.candidates_per_query or "as in the data", "titles_only": args.titles_only, "repetitions": args.repetitions, "batch_size": args.batch_size,
        "pairs_per_second": {name: values for name, values in rates.items()},
        "median_pairs_per_second": dict(rows),
        "baseline": baseline,
        "ratio_to_baseline": {name: rate / dict(rows)[baseline] for name, rate in rows},
        "max_abs_score_difference_from_baseline": differences,
        "baseline_score_std": float(reference.std()), "baseline_score_range": float(np.ptp(reference)),
    }  # fmt: skip
    default_name = f"teacher_{args.device.split(':')[0]}" + (f"_{args.candidates_per_query}_candidates" if args.candidates_per_query else "") + ("_titles" if args.titles_only else "")
    print("wrote", write_results(args.output_json or f"bench/results/{default_name}.json", results))


if __name__ == "__main__":
    run_main(main)  # a user mistake: one error line, not a traceback
