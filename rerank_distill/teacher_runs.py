"""generate_logits.py's runs: the outputs one run writes, and how it fills them: with teachers in
this process, with one replica per GPU (--data_parallel_size) whose shard files are then joined, or
by joining the shard files of earlier --shard I/N runs (--merge_shards N); and each run's record,
``args*.json``, beside the outputs."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rerank_distill.cli import command_line, read_run_args, run_made_by, to_jsonable, warn_unread, write_run_args
from rerank_distill.errors import InputError
from rerank_distill.formats import detect_format, first_record
from rerank_distill.jsonl import no_empty_folders_left, shown
from rerank_distill.replicas import run_replicas
from rerank_distill.scoring import (
    InputSummary,
    Shard,
    claim_output,
    counts_message,
    is_finished,
    log_teacher_metrics,
    output_path_for,
    ranking_queries,
    remove_output,
    resume_point,
    score_source,
)
from rerank_distill.shards import merge_all_shards, refuse_other_teachers, shard_outputs, split_into_shards
from rerank_distill.teachers import build_teachers, teacher_types_for

logger = logging.getLogger("generate_logits")


@dataclass
class TeacherRun:
    """One run of generate_logits.py: its parsed arguments (``args``), the script and argv it ran as
    (replicas run the script again), and what it scores: ``inputs``, the (source,
    passages_as_queries) streams, each into its output in ``outputs``; ``expected`` is each one's
    checked InputSummary, ``teacher_types``, ``backend`` and ``model_paths`` (local folders) the
    teachers' once chosen."""

    args: Any
    script: str
    argv: list[str]
    inputs: list[tuple[str, int]]
    shard: Shard
    read_args: dict
    expected: dict[tuple[str, int], InputSummary] = field(default_factory=dict)
    teacher_types: list[str] = field(default_factory=list)
    backend: str = ""
    model_paths: list[str] = field(default_factory=list)

    @property
    def outputs(self) -> list[Path]:
        return [output_path_for(source, self.args.output_dir, self.shard, derived) for source, derived in self.inputs]

    @property
    def command(self) -> list[str]:
        return command_line(self.script, self.argv)

    def record_path(self, shard: Shard) -> Path:
        """``args.json``, or for a shard ``args.shard-I-of-N.json``, in --output_dir; a run with
        passages as queries adds ``.passages_as_queries`` (generate_logits.sh scores its first input
        so and the others in a second run, and each run's record keeps its own name)."""
        derived = ".passages_as_queries" if self.args.passages_as_queries else ""
        return Path(self.args.output_dir) / f"args{shard.suffix()}{derived}.json"

    def record(self, shard: Shard, **resolved) -> None:
        """Write this run's arguments, command and ``resolved`` settings to record_path(shard)."""
        write_run_args(self.record_path(shard), self.command, script=self.args, resolved=resolved)


def refuse_conflicting_shard_flags(args) -> None:
    """InputError for --shard, --merge_shards and --data_parallel_size given in a way that cannot work."""
    if args.shard and (args.merge_shards or args.data_parallel_size > 1):
        other = "--merge_shards" if args.merge_shards else "--data_parallel_size"
        raise InputError(f"--shard {args.shard} scores one share in this process, {other} handles every share: "
                         "pass one of them")
    if args.merge_shards == 1:  # its one "shard" is the output itself: a merge would only replace its args.json
        raise InputError("--merge_shards 1: a run of one shard writes the output itself, there is nothing to join; "
                         "pass the N of the --shard I/N runs to join")
    if args.merge_shards and args.check_inputs_only:
        raise InputError("--merge_shards joins finished shard files and --check_inputs_only reads the inputs only: "
                         "pass one of them")
    if args.merge_shards and args.data_parallel_size > 1:
        raise InputError("--merge_shards joins shard files scored already and --data_parallel_size scores every share "
                         "and joins them itself: pass one of them")


def refuse_another_stages_folder(output_dir: str) -> None:
    """InputError where ``output_dir`` holds another stage's ``args.json`` (train.py's, beside its
    model), which this run's own record would replace."""
    made_by = run_made_by(Path(output_dir) / "args.json")
    if made_by and made_by.endswith(".py") and made_by != "generate_logits.py":
        raise InputError(f"--output_dir {output_dir} holds {made_by}'s args.json, which this run would replace: give "
                         "stage 1 a folder of its own (e.g. output/scores)")


def warn_of_scores_input(source: str, input_format: str, read_args: dict) -> None:
    """Warn where ``source`` holds teacher scores already (a scores file, stage 1's output among them):
    scoring it again replaces them, where create_triplets.py would read them as they are."""
    if input_format == "auto":
        path, line, record = first_record(source, read_args["hub"], read_args["cache_dir"])
        input_format = detect_format(record, path, line, read_args["label_column"])
    if input_format == "scores":
        logger.warning("%s holds teacher scores already (its \"score\" field): this run scores its pairs again and "
                       "does not keep them; scores to train on as they are go to create_triplets.py instead", source)


def refuse_shared_outputs(run: TeacherRun) -> None:
    """InputError where two inputs would write one output (their names give the same stem)."""
    outputs = run.outputs
    for index, output in enumerate(outputs):
        if output in outputs[:index]:
            raise InputError(f"--input_path {run.inputs[outputs.index(output)][0]} and {run.inputs[index][0]} would "
                             f"both write {output} (their names give the same output name); rename one, or score "
                             "them in runs with different --output_dir")


def merge_shard_files(run: TeacherRun) -> dict:
    """--merge_shards N: join each input's N finished shard files into its output, and record the run."""
    args = run.args
    teacher_types = teacher_types_for(args.model_path, args.teacher_type)
    for source, derived in run.inputs:
        refuse_other_teachers(shard_outputs(source, args.output_dir, args.merge_shards, derived)[1][0],
                              args.model_path, teacher_types)
    warn_of_settings_unread_by_merge(run)
    with no_empty_folders_left(args.output_dir), ExitStack() as claimed:  # no run may write what is being joined
        for output in run.outputs:
            claimed.enter_context(claim_output(output))
        merged = merge_all_shards(run.inputs, args.output_dir, args.merge_shards, args.input_format, run.read_args,
                                  args.overwrite)
        # the shards' runs' records hold their teachers
        run.record(Shard(), shard_records=[run.record_path(Shard(i, args.merge_shards)).name
                                           for i in range(args.merge_shards)])
        return merged


# generate_logits.py's settings that change no score: where, how fast and how a run goes (the others, scoring
# settings, a merge's own may differ from its shards' only in vain: it scores nothing)
RUN_SETTINGS = ("input_path", "output_dir", "shard", "merge_shards", "check_inputs_only", "overwrite", "backend",
                "batch_size", "chunk_size", "device", "prefix_cache", "tensor_parallel_size", "data_parallel_size",
                "gpu_memory_utilization", "hub", "cache_dir", "show_progress")


def warn_of_settings_unread_by_merge(run: TeacherRun) -> None:
    """Warn about each scoring setting given to a --merge_shards run that differs from the one its
    first shard was scored with (its args.shard-0-of-N.json): the merge's args.json records it, though
    no pair was scored so (the shards' own records, which it names, say how they were)."""
    shard_record = run.record_path(Shard(0, run.args.merge_shards))
    scored_with = (read_run_args(shard_record) or {}).get("script", {})
    warn_unread(run.args, {name: f"a merge scores nothing, and the shards were scored with {shown(scored_with[name])} "
                                 f"({shard_record.name})"
                           for name, value in to_jsonable(run.args).items()
                           if name in scored_with and scored_with[name] != value
                           and name not in (*RUN_SETTINGS, "model_path", "teacher_type")})  # (refuse_other_teachers')


def score_with_replicas(run: TeacherRun) -> dict:
    """--data_parallel_size N: N replicas each score every N-th query of every input (resuming
    their shard files), then the shards are joined. Finished outputs are checked in full, as a
    single run checks them, and split into shard files the replicas find done. The caller holds
    the outputs' locks."""
    args, outputs = run.args, run.outputs
    if args.overwrite:  # gone now, as a single run deletes them: else a stopped rerun would find them finished
        for output in outputs:
            remove_output(output)
    finished = [is_finished(output) for output in outputs]
    if any(finished):
        done = [i for i, ended in enumerate(finished) if ended]
        checked = score_with_teachers(replace(run, inputs=[run.inputs[i] for i in done]))
        if all(finished):
            return checked
        release_gpu_memory()  # of the cross-encoder or embedding teachers that checked them: the replicas' now
        for i in done:
            source, derived = run.inputs[i]
            split_into_shards(source, args.output_dir, args.data_parallel_size, args.input_format, run.read_args,
                              derived)
            logger.info("%s is finished: split into %d shard files for the replicas to skip", outputs[i],
                        args.data_parallel_size)
    total = sum(summary.pairs for summary in run.expected.values())
    count = args.data_parallel_size
    run_replicas(run.script, run.argv, count, args.tensor_parallel_size, args.output_dir, run.inputs, total,
                 args.show_progress, on_cpu=args.device == "cpu")
    # each replica wrote args.shard-I-of-N.json with the teachers it built
    run.record(Shard(), model_paths=run.model_paths, teacher_types=run.teacher_types,
               replica_records=[run.record_path(Shard(i, count)).name for i in range(count)])
    return merge_all_shards(run.inputs, args.output_dir, count, args.input_format, run.read_args, args.overwrite)


def release_gpu_memory() -> None:
    """Free the memory of models no longer referenced, and hand what PyTorch keeps cached on the GPU
    back to the driver, where other processes can take it."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_initialized():
        # cuBLAS keeps its workspaces (tens of MiB a GPU) through empty_cache: this call alone hands them
        # back (private in PyTorch 2.11, public later; absent from CPU builds)
        clear_workspaces = getattr(torch.cuda, "clear_cublas_workspaces", None) or getattr(
            torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear_workspaces is not None:
            clear_workspaces()
        torch.cuda.empty_cache()


def score_with_teachers(run: TeacherRun) -> dict:
    """Load the teachers on the run's backend, check the outputs against them, record the run's
    arguments, and score each input into its output; returns each output's counts and speed."""
    args, outputs = run.args, run.outputs
    teachers = build_teachers(run.model_paths, run.teacher_types, run.backend, args, given_names=args.model_path)
    for teacher in teachers:
        logger.info("teacher %s: %s", teacher.name, teacher.config)
    # unset: 20000 pairs for vLLM, 1000 otherwise, or 20000 (every backend's default once) to resume a run begun so
    chunk_sizes = [args.chunk_size] if args.chunk_size else [20_000] if run.backend == "vllm" else [1_000, 20_000]
    jobs = [dict(source=source, output_path=output, teachers=teachers, expected=run.expected[source, derived],
                 input_format=args.input_format, shard=run.shard, overwrite=args.overwrite, read_args=run.read_args,
                 passages_as_queries=derived) for (source, derived), output in zip(run.inputs, outputs)]  # fmt: skip
    resumes = [resume_point(**job, chunk_sizes=chunk_sizes) for job in jobs]
    # args.json stays the record of the run that made the outputs where this one is refused or has nothing to do
    if any(resume.done is not None for resume in resumes):
        for teacher in teachers:  # an LLM judge's weights now: a load error writes and deletes nothing
            teacher.load()
        run.record(run.shard, backend=run.backend, chunk_size={str(o): r.chunk_size for o, r in zip(outputs, resumes)},
                   model_paths=run.model_paths, teachers={t.name: t.config for t in teachers})

    if args.overwrite:  # all now, not each in its turn: a rerun without --overwrite after a stop finds none of them
        for output in outputs:
            remove_output(output)
    summary = {}
    for job, resume, (source, derived), output in zip(jobs, resumes, run.inputs, outputs):
        stats = score_source(**job, resume=resume, show_progress=args.show_progress, command=run.command)
        expected = run.expected[source, derived]
        if not stats.already_complete:
            # (wrote, not scored: the pairs it wrote count each duplicate the distinct-scored count leaves out)
            logger.info("%s: %s; this run wrote %d of them%s in %.1f s, %.1f pairs/s", output,
                        counts_message(vars(stats), expected.queries_without_passages),
                        stats.pairs - stats.resumed_at_pair,
                        f" (resumed after {stats.resumed_at_pair})" if stats.resumed_at_pair else "", stats.seconds,
                        stats.pairs_per_second)
        summary[str(output)] = {**vars(stats), "pairs_per_second": stats.pairs_per_second}
        if not stats.already_complete and run.shard.count == 1:  # a shard's share: reported once merged
            lists = ranking_queries(source, args.input_format, run.read_args, derived)  # read again only if labelled
            summary[str(output)]["teacher_metrics"] = log_teacher_metrics(output, lists)
    return summary
