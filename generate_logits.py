"""Stage 1: the teacher scores every (query, passage) pair of one or more data sets.

For an LLM judge (Qwen3-Reranker) the score is logit("yes") - logit("no") after the official
prompt. Output for each input IN: OUTPUT_DIR/{IN's stem}_scores.jsonl, one line a pair:
{"query", "passage", "score", "label"} (label: the gold grade, 1 positive / 0 negative).
Rerunning the same command after a crash or Ctrl-C continues where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rerank_distill.cli import parse_args, run_main, write_run_args
from rerank_distill.errors import InputError
from rerank_distill.formats import INPUT_FORMATS
from rerank_distill.hub import resolve_model
from rerank_distill.prompts import DEFAULT_INSTRUCTION
from rerank_distill.scoring import Shard, merge_shards, output_path_for, score_source, validate_source
from rerank_distill.teachers import TEACHER_TYPES, build_teacher, choose_backend

logger = logging.getLogger("generate_logits")


@dataclass
class GenerateLogitsArguments:
    model_path: list[str] = field(metadata={"help": "Teacher model: local folder or hub id (e.g. Qwen/Qwen3-Reranker-8B). Give several to ensemble teachers."})
    input_path: list[str] = field(metadata={"help": "Data sets to score: MTEB reranking JSONL (.jsonl or .jsonl.gz, {query, positive, negative}), Parquet, or a hub data set NAME[:SPLIT]."})
    output_dir: str = field(metadata={"help": "Folder for {stem}_scores.jsonl files and args.json."})
    teacher_type: str = field(default="llm_yesno", metadata={"help": f"Kind of teacher: {', '.join(TEACHER_TYPES)}."})
    backend: Literal["auto", "vllm", "hf"] = field(default="auto", metadata={"help": "auto: vLLM when installed and a CUDA GPU is present, else transformers (hf)."})
    batch_size: int = field(default=32, metadata={"help": "Prompts per forward pass (hf backend)."})
    max_length: int = field(default=2048, metadata={"help": "Longest prompt in tokens; the query/document text is cut to fit, never the prompt's fixed parts."})
    instruction: str = field(default=DEFAULT_INSTRUCTION, metadata={"help": "The <Instruct> line of the judge prompt; set the task's own (e.g. 'Retrieve duplicate questions from StackOverflow forum')."})
    input_format: str = field(default="auto", metadata={"help": f"Input format, detected from the fields by default: {', '.join(INPUT_FORMATS)}."})
    chunk_size: int = field(default=20_000, metadata={"help": "Pairs per chunk of whole queries: the unit handed to the backend and of resuming after a crash."})
    shard: str | None = field(default=None, metadata={"help": "I/N: score only queries whose position modulo N is I (one process per GPU or machine); join with --merge_shards N."})
    merge_shards: int = field(default=0, metadata={"help": "N > 0: do no scoring, join the N finished shard files of each input into {stem}_scores.jsonl."})
    overwrite: bool = field(default=False, metadata={"help": "Score again even if an output (finished or partial) exists."})
    device: str | None = field(default=None, metadata={"help": "hf backend device (cuda, cuda:1, cpu); default: cuda if available."})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata={"help": "Weights' dtype; auto: bfloat16 on GPU, float32 on CPU."})
    prefix_cache: bool = field(default=True, metadata={"help": "hf backend: run the prompt prefix a query's documents share once and reuse its key/value cache."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM: GPUs one teacher replica is split over (only for teachers too big for one GPU)."})
    data_parallel_size: int = field(default=1, metadata={"help": "vLLM: teacher replicas, one per GPU (the fast way to use several GPUs)."})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM: share of GPU memory it may take."})
    hub: Literal["huggingface", "modelscope"] = field(default="huggingface", metadata={"help": "Where hub ids are fetched from."})
    cache_dir: str | None = field(default=None, metadata={"help": "Download cache for hub models and data sets."})
    show_progress: bool = field(default=True, metadata={"help": "Show a progress bar with pairs per second."})


def main(argv: list[str] | None = None) -> dict:
    (args,) = parse_args((GenerateLogitsArguments,), __doc__, argv)
    hub_args = {"hub": args.hub, "cache_dir": args.cache_dir}
    if args.merge_shards:
        for source in args.input_path:
            merged, lines = merge_shards(source, args.output_dir, args.merge_shards, args.input_format, hub_args)
            logger.info("merged %d shards into %s (%d pairs)", args.merge_shards, merged, lines)
        return {"merged": args.merge_shards}
    shard = Shard.parse(args.shard)
    outputs = [output_path_for(source, args.output_dir, shard) for source in args.input_path]
    if len(set(outputs)) != len(outputs):
        raise InputError("two inputs would write the same output file (same file name); rename one or score them separately")

    # Check every input before loading a model: a bad line should fail in seconds, not hours.
    expected = {}
    for source in args.input_path:
        expected[source] = validate_source(source, args.input_format, shard, **hub_args)
        logger.info("%s: %d queries, %d pairs%s", source, expected[source].queries, expected[source].pairs,
                    f" (shard {args.shard})" if args.shard else "")

    backend = choose_backend(args.backend)
    model_paths = [resolve_model(path, args.hub, args.cache_dir) for path in args.model_path]
    logger.info("teacher: %s on the %s backend", ", ".join(model_paths), backend)
    teachers = [build_teacher(args.teacher_type, path, backend, args) for path in model_paths]
    write_run_args(Path(args.output_dir) / "args.json", script=args, resolved={"backend": backend, "model_paths": model_paths})

    summary = {}
    for source, output in zip(args.input_path, outputs):
        stats = score_source(source, output, teachers, expected[source], args.input_format, args.chunk_size,
                             shard, args.overwrite, hub_args, args.show_progress)
        if not stats.already_complete:
            logger.info(
                "%s: %d queries, %d pairs (%d distinct scored, %d duplicates reused, %d truncated to %d tokens, "
                "%d queries without passages) in %.1f s, %.1f pairs/s%s",
                output, stats.queries, stats.pairs, stats.distinct_pairs_scored, stats.duplicate_pairs_reused,
                stats.truncated, args.max_length, expected[source].queries_without_passages, stats.seconds,
                stats.pairs_per_second, f"; resumed after {stats.resumed_at_pair} pairs" if stats.resumed_at_pair else "",
            )
        summary[str(output)] = {**vars(stats), "pairs_per_second": stats.pairs_per_second}
    return summary


if __name__ == "__main__":
    run_main(main)
