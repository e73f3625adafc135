"""Stage 1: the teacher scores every (query, passage) pair of one or more data sets.

Teacher types (--teacher_type): llm_yesno (default; Qwen3-Reranker: logit("yes") - logit("no")
after the official prompt), llm_labels (an LLM judge's expected grade over graded label words),
cross_encoder (a CrossEncoder's raw logit), embedding (score_scale x cosine of embeddings).
Output for each input IN: OUTPUT_DIR/{IN's stem}_scores.jsonl, one line a pair:
{"query", "passage", "score", "label"} (label: the gold grade, 1 positive / 0 negative), plus
"label_probs" for llm_labels, and a graded row's id columns (query_id, product_id, ...). With
several --model_path teachers, "teacher_scores" holds each one's score (an llm_labels one's
"label_probs" are "NAME/label_probs") and "score" their mean after standardising each within its
query (z-scores).
With --passages_as_queries N, each query's passages also become queries of their own, scored against
the rest of their list into OUTPUT_DIR/{stem}_passages_as_queries_scores.jsonl (no gold labels):
more lists to train on, for tasks whose passages are queries too (duplicate questions).
Rerunning the same command after a crash or Ctrl-C continues where it stopped.
"""

from __future__ import annotations

import logging
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Literal

from rerank_distill.cli import check_finite, check_minimums, check_utf8_text, parse_args, run_main, warn_unread
from rerank_distill.formats import INPUT_FORMATS, check_outside_data_set_folders, local_files
from rerank_distill.hub import resolve_model
from rerank_distill.jsonl import check_not_an_input, check_writable, no_empty_folders_left
from rerank_distill.prompts import DEFAULT_INSTRUCTION
from rerank_distill.replicas import stop_with_launcher
from rerank_distill.scoring import Shard, check_before_loading, claim_output, validate_source
from rerank_distill.shards import warn_of_other_shard_counts
from rerank_distill.teacher_runs import (
    TeacherRun, merge_shard_files, refuse_another_stages_folder, refuse_conflicting_shard_flags, refuse_shared_outputs,
    score_with_replicas, score_with_teachers, warn_of_scores_input,
)
from rerank_distill.teachers import (
    DEFAULT_TEACHER_TYPE,
    LLM_TEACHER_TYPES,
    TEACHER_TYPES,
    check_device,
    check_teacher_options,
    choose_backend,
    teacher_types_for,
    unread_backend_flags,
    unread_teacher_flags,
)
from rerank_distill.teachers.embedding import DEFAULT_SCORE_SCALE
from rerank_distill.teachers.llm_judge import ESCI_LABEL_WORDS

logger = logging.getLogger("generate_logits")


@dataclass
class GenerateLogitsArguments:
    model_path: list[str] = field(
        metadata={
            "action": "extend",
            "help": "Teacher model: local folder or hub id (e.g. Qwen/Qwen3-Reranker-8B). Give several (--model_path "
                    "A B, or the flag again) to ensemble teachers.",
        },
    )
    input_path: list[str] = field(
        metadata={"action": "extend",  # (the flag given again adds to the list, as --model_path does)
                  "help": "Data sets to score: MTEB reranking JSONL (.jsonl or .jsonl.gz, {query, positive, "
                  "negative}), Parquet, a hub data set NAME[:SPLIT], or one downloaded into a folder, DIR:SPLIT; one "
                  "in parts (MTEB v2: corpus, queries, qrels, top_ranked) is joined into a query a record."},
    )
    output_dir: str = field(metadata={"help": "Folder for {stem}_scores.jsonl files (each with its .run.json) and the "
                                      "run's args.json (a --shard I/N run's: args.shard-I-of-N.json; with "
                                      "--passages_as_queries: args.passages_as_queries.json, or "
                                      "args.shard-I-of-N.passages_as_queries.json)."})
    teacher_type: list[str] | None = field(
        default=None,
        metadata={
            "action": "extend",
            "choices": TEACHER_TYPES,
            "metavar": "TYPE",
            "help": f"Kind of teacher ({', '.join(TEACHER_TYPES)}; default {DEFAULT_TEACHER_TYPE}): one for every "
                    "--model_path, or one per model in the same order.",
        },
    )
    backend: Literal["auto", "vllm", "hf"] = field(
        default="auto",
        metadata={"help": "LLM teachers: auto = vLLM when installed and a CUDA GPU is present, else transformers "
                  "(hf). Other teachers run on sentence-transformers."},
    )
    batch_size: int = field(default=32, metadata={"help": "Inputs per forward pass (vLLM batches by itself)."})
    max_length: int = field(
        default=2048,
        metadata={"help": "Longest input in tokens; the model's own limit (an LLM's positions) applies when smaller. "
                  "LLM judges: the query/document text is cut to fit, never the prompt's fixed parts."},
    )
    instruction: str = field(
        default=DEFAULT_INSTRUCTION,
        metadata={"help": "LLM judges: the <Instruct> line of the prompt; set the task's own (e.g. 'Retrieve "
                  "duplicate questions from StackOverflow forum')."},
    )
    label_words: list[str] = field(
        default_factory=lambda: list(ESCI_LABEL_WORDS),
        metadata={"help": "llm_labels: the judge's answer words, each one token of its tokenizer (default: Amazon "
                  "ESCI's labels, which many tokenizers split, SmolLM2's among them: there pass E S C I, with an "
                  "--instruction that says what each letter means)."},
    )
    label_grades: list[float] | None = field(
        default=None,
        metadata={"help": "llm_labels: the grade of each answer word, in the same order; score = expected grade. "
                  "Default: ESCI's 3 2 1 0 for ESCI's words, else len-1 down to 0 (best word first)."},
    )
    score_scale: float = field(
        default=DEFAULT_SCORE_SCALE,
        metadata={"help": "embedding: score = this x cosine similarity, so margins are on a cross-encoder logit's "
                  "scale."},
    )
    query_prompt: str | None = field(
        default=None,
        metadata={"help": "embedding: text put before each query instead of the model's own 'query' prompt "
                  "(Qwen3-Embedding wants $'Instruct: {task}\\nQuery:' in bash, with a real newline)."},
    )
    input_format: str = field(
        default="auto",
        metadata={
            "help": f"Input format: {', '.join(INPUT_FORMATS)}; auto tells it from the fields.",
        },
    )
    label_column: str | None = field(
        default=None,
        metadata={"help": "The grade column of graded row-per-pair input (default: esci_label, label, grade or "
                  "relevance); it becomes the output's label."},
    )
    chunk_size: int | None = field(
        default=None,
        metadata={"help": "Pairs per chunk of whole queries: the unit handed to the backend and of resuming after a "
                  "crash (Ctrl-C keeps every finished chunk). Default: 20000 with vLLM (it wants thousands of "
                  "prompts a call), 1000 otherwise."},
    )
    shard: str | None = field(
        default=None,
        metadata={"help": "I/N: score only queries whose position modulo N is I (one process per GPU or machine); "
                  "join with --merge_shards N."},
    )
    passages_as_queries: int = field(
        default=0,
        metadata={"help": "N > 0: also score each query's passages as queries of their own: up to N distinct "
                  "passages of each list (in input order), each against the rest of its list with the query first, "
                  "into {stem}_passages_as_queries_scores.jsonl (no gold labels). For tasks whose passages are "
                  "queries too (duplicate questions), many more lists for the student at up to N x list-length more "
                  "teacher pairs; give create_triplets.py both files. 0: off."},
    )
    merge_shards: int = field(
        default=0,
        metadata={"help": "N > 0: do no scoring, join the N finished shard files of each input into "
                  "{stem}_scores.jsonl."},
    )
    check_inputs_only: bool = field(
        default=False,
        metadata={"help": "Read and check every input, log its counts and oddities, and stop: no teacher is loaded, "
                  "nothing is written (generate_logits.sh checks its later inputs so before a first run scores for "
                  "hours)."},
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Score again even if an output (finished or partial) exists."}
    )
    device: str | None = field(
        default=None,
        metadata={"help": "Device of the hf backend and of cross_encoder/embedding teachers (cuda, cuda:1, cpu); "
                  "default: cuda if available. vLLM does not read it: choose its GPUs with CUDA_VISIBLE_DEVICES."},
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto",
        metadata={"help": "Weights' dtype; auto: bfloat16 on GPU, float32 on CPU (vLLM: the checkpoint's own, "
                  "float16 for a float32 one)."},
    )
    prefix_cache: bool = field(
        default=True,
        metadata={"help": "hf backend: run the prompt prefix a query's documents share once and reuse its key/value "
                  "cache."},
    )
    tensor_parallel_size: int = field(
        default=1,
        metadata={"help": "vLLM: GPUs one teacher replica is split over (only for teachers too big for one GPU)."},
    )
    data_parallel_size: int = field(
        default=1,
        metadata={"help": "Teacher replicas, one per GPU (x --tensor_parallel_size GPUs each): N processes each "
                  "score every N-th query, then the shards are joined. The fast way to use several GPUs."},
    )
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM: share of GPU memory it may take."})
    hub: Literal["huggingface", "modelscope"] = field(
        default="huggingface", metadata={"help": "Where hub ids are fetched from."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Download cache for hub models and data sets."})
    show_progress: bool = field(default=True, metadata={"help": "Show a progress bar with pairs per second."})


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    (args,) = parse_args((GenerateLogitsArguments,), __doc__, argv)
    stop_with_launcher()  # a replica of a --data_parallel_size run ends with the run that started it
    check_minimums(args, batch_size=1, max_length=1, chunk_size=1, tensor_parallel_size=1, data_parallel_size=1,
                   passages_as_queries=0, merge_shards=0)
    check_finite(args)
    check_utf8_text(args, "instruction", "query_prompt", "label_words")
    check_writable(args.output_dir, "--output_dir", folder=True)
    check_outside_data_set_folders(args.output_dir, args.input_path, "--output_dir")
    refuse_another_stages_folder(args.output_dir)
    # What is scored: each input as it is, then (--passages_as_queries) the lists made from it.
    inputs = [(source, derived) for source in args.input_path for derived in dict.fromkeys((0, args.passages_as_queries))]
    read_args = {"hub": args.hub, "cache_dir": args.cache_dir, "label_column": args.label_column}
    run = TeacherRun(args, __file__, argv, inputs, Shard.parse(args.shard), read_args)
    check_writable(run.record_path(run.shard), "--output_dir's run record")  # (written once the scoring is done)
    refuse_conflicting_shard_flags(args)
    input_files = [file for source in args.input_path for file in local_files(source)]
    for output in run.outputs:  # named here, not by the user, an output may be an input given by its path
        check_not_an_input(output, input_files, "--output_dir's file")
    if args.merge_shards:
        return merge_shard_files(run)
    run.teacher_types = teacher_types_for(args.model_path, args.teacher_type)
    warn_unread(args, unread_teacher_flags(run.teacher_types))
    check_teacher_options(run.teacher_types, args)
    check_device(args.device, args.data_parallel_size)
    refuse_shared_outputs(run)

    # Check every input before loading a model: a bad line should fail in seconds, not hours.
    for source, derived in inputs:
        run.expected[source, derived] = summary = validate_source(source, args.input_format, run.shard, derived,
                                                                  **read_args)
        summary.warn(source)
        if not derived:
            warn_of_scores_input(source, args.input_format, read_args)
        logger.info("%s%s: %d queries, %d pairs%s", source, " (passages as queries)" if derived else "",
                    summary.queries, summary.pairs, f" (shard {args.shard})" if args.shard else "")
    if args.check_inputs_only:
        return {f"{source}{' (passages as queries)' if derived else ''}": vars(summary)
                for (source, derived), summary in run.expected.items()}

    uses_llm = any(kind in LLM_TEACHER_TYPES for kind in run.teacher_types)
    run.backend = choose_backend(args.backend) if uses_llm else "sentence-transformers"
    warn_unread(args, unread_backend_flags(run.backend, args.data_parallel_size, run.teacher_types))
    # One run per output at a time, claimed before any teacher is fetched or loaded (minutes for an 8B
    # model); a run refused before it writes anything leaves no folder behind
    with no_empty_folders_left(args.output_dir), ExitStack() as claimed:
        for output in run.outputs:
            claimed.enter_context(claim_output(output))
        run.model_paths = [resolve_model(path, args.hub, args.cache_dir) for path in args.model_path]
        for output in run.outputs if run.shard.count == 1 else ():  # (a replica's output is its shard's own file)
            warn_of_other_shard_counts(output, args.data_parallel_size)
        for (source, derived), output in zip(inputs, run.outputs):  # a finished output of other teachers or input
            if not args.overwrite:
                check_before_loading(output, run.teacher_types, run.model_paths, run.expected[source, derived],
                                     args.input_format, run.shard, derived, args.label_column)
        if args.data_parallel_size > 1 and run.shard.count == 1:
            return score_with_replicas(run)
        return score_with_teachers(run)


if __name__ == "__main__":
    run_main(main)
