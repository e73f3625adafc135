"""Stage 1 across processes and machines: ``--shard I/N`` runs each score a deterministic share of
the queries into a file of their own, and ``--merge_shards N`` joins those files back into the one
output an unsharded run writes, after checking that every shard was scored with the same settings
from the same input. A finished output can also be split into the shard files a run of replicas
(``--data_parallel_size``) continues from."""

from __future__ import annotations

import glob
import hashlib
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from rerank_distill.cli import write_json
from rerank_distill.errors import InputError
from rerank_distill.formats import RankingQuery
from rerank_distill.hub import split_revision
from rerank_distill.jsonl import AtomicWriter, dumps, read_jsonl
from rerank_distill.scoring import (
    Shard,
    beside,
    counts_message,
    is_finished,
    log_teacher_metrics,
    model_identity,
    output_path_for,
    query_bytes,
    ranking_queries,
    recorded_counts,
    run_record,
    saved_progress,
    setting_differences,
)

logger = logging.getLogger(__name__)


def warn_of_other_shard_counts(output_path: Path, num_shards: int) -> None:
    """Warn where a stopped run with another number of shards (--data_parallel_size, --shard I/M, or
    none) left unfinished files of ``output_path``: a run with ``num_shards`` shares (1: none) cannot
    continue them, so it starts its own from the beginning, and theirs stay until removed (an
    unsharded run's until the shards are joined)."""
    pattern = f"{glob.escape(output_path.stem)}.shard-*-of-*{glob.escape(output_path.suffix)}.partial"
    ours = f"-of-{num_shards}{output_path.suffix}.partial"
    others = sorted(path.name for path in output_path.parent.glob(pattern) if not path.name.endswith(ours))
    if num_shards > 1 and saved_progress(output_path):  # a stopped unsharded run's: dropped once the shards join
        others.insert(0, beside(output_path, ".partial").name)
    if others:
        logger.warning("%s: a stopped run with another number of shards left %s; this run, with %s, cannot continue "
                       "them and starts from the beginning (rerun with that run's --data_parallel_size or --shard to "
                       "continue it instead, or delete its files)", output_path, ", ".join(others),
                       f"{num_shards} shards" if num_shards > 1 else "none")


def _finished_shards(source: str, output_dir: str | Path, num_shards: int, passages_as_queries: int):
    """``(shards, shard paths, merged path, shards' run records)`` of one input (see shard_outputs);
    InputError where a shard file is missing or unfinished, or the shards were scored with differing
    settings."""
    shards, paths, merged = shard_outputs(source, output_dir, num_shards, passages_as_queries)
    for path in paths:
        if not path.exists():
            raise InputError(f"shard file {path} is missing or unfinished; run that shard to completion first")
    return shards, paths, merged, _shard_run_records(paths)


def merge_shards(source: str, output_dir: str | Path, num_shards: int, input_format: str = "auto", read_args=None,
                 passages_as_queries: int = 0, overwrite: bool = False) -> tuple[Path, int]:
    """Join ``num_shards`` finished shard files back into input order as ``{stem}_scores.jsonl``
    (or the passages-as-queries file, see output_path_for). InputError, with nothing written,
    where the shards were scored with differing settings or the input has changed since, or
    (unless ``overwrite``) a finished output of other settings is in the way.

    Streams: shard ``k % N`` holds query ``k``'s lines. Returns the merged path and its line count.
    """
    shards, paths, merged, records = _finished_shards(source, output_dir, num_shards, passages_as_queries)
    single_run, finished = _single_run_made_with(merged), is_finished(merged)
    differs = []
    if records and single_run:
        differs = _differing_settings(single_run, records[0]["made_with"], _settings(single_run).keys())
    if differs and finished and not overwrite:
        raise InputError(f"{merged} is finished but was scored with other settings than the shards (differing: "
                         f"{', '.join(differs)}); pass --overwrite to join them in its place")
    # a shard may hold no pairs at all (fewer queries than shards, or only empty lists)
    readers = [_lines(path) for path in paths]
    lines, content = 0, hashlib.blake2b(digest_size=16)
    shard_contents = [hashlib.blake2b(digest_size=16) for _ in shards]
    with AtomicWriter(merged) as out:  # written under its final name only if every check below passes
        for index, query in _shares(source, input_format, read_args, passages_as_queries, shard_contents):
            content.update(query_bytes(query))
            reader, path = readers[index], paths[index]
            for passage in query.passages:
                try:
                    line_number, record = next(reader)
                except StopIteration:
                    raise InputError(f"ends early: it does not match {source}", str(path)) from None
                if record.get("query") != query.query or record.get("passage") != passage:
                    raise InputError(f"holds another pair than {query.location}; were shards made from another input "
                                     "(or was it edited since)?", str(path), line_number)
                out.write(dumps(record) + "\n")
                lines += 1
        for reader, path in zip(readers, paths):
            if next(reader, None) is not None:
                raise InputError(f"has more lines than {source} has pairs for this shard", str(path))
        for record, shard_content, path in zip(records or (), shard_contents, paths):
            if record["made_with"].get("input_digest", shard_content.hexdigest()) != shard_content.hexdigest():
                raise InputError(f"was scored from other content than {source} holds now (its labels, say): rescore "
                                 "it with its --shard flag and --overwrite", str(path))
        # the record before the joined file takes its name, and an earlier file of that name gone before the
        # record: a crash between them never leaves the joined file without its record, nor it beside another file
        merged.unlink(missing_ok=True)
        if records:
            _merge_run_records(records, merged, lines, content.hexdigest())
    if differs:  # a stopped single run's, or a finished one --overwrite replaces
        logger.warning("%s: %s single run with other settings (differing: %s) is dropped; the joined shards replace "
                       "it", merged, "a finished" if finished else "an unfinished", ", ".join(differs))
    for stale in (beside(merged, ".partial"), beside(merged, ".progress.json")):  # an unsharded run's, stopped
        stale.unlink(missing_ok=True)  # (left, they would make the merged file look unfinished)
    return merged, lines


def refuse_other_teachers(shard_path: Path, model_paths: list[str], teacher_types: list[str]) -> None:
    """InputError where the --model_path and --teacher_type given to a merge do not name the
    teachers ``shard_path`` was scored with (its ``.run.json``; nothing to compare without one): the
    merge's args.json would record teachers that never scored a pair. Nothing is loaded or fetched:
    a hub id is matched against the download folder it names."""
    record = run_record(shard_path)
    if record is None:
        return
    scored_with = [(teacher["teacher_type"], teacher["model_path"]) for teacher in record["made_with"]["teachers"]]
    if len(scored_with) == len(model_paths) and all(
        kind == given_kind and names_model(given, identity)
        for (kind, identity), given_kind, given in zip(scored_with, teacher_types, model_paths)
    ):
        return
    teachers = ", ".join(f"--model_path {identity} (--teacher_type {kind})" for kind, identity in scored_with)
    raise InputError(f"shard file {shard_path} was scored with {teachers}, not the teachers this merge names; pass "
                     "those, so that args.json records what scored the pairs")


def names_model(model_path: str, identity: str) -> bool:
    """True where ``model_path`` (a folder, or a hub id) names the model a record knows by its
    model_identity: a hub id, by the download folder it names in a Hugging Face cache
    (``models--ORG--NAME/snapshots/...``) or a ModelScope one (``.../ORG/NAME``, dots as ``___``).
    A folder that is gone (a merge loads nothing: run where it is not, or once it is deleted) is
    still the one it names."""
    if model_identity(model_path) == identity:
        return True
    if Path(model_path).exists():
        return False
    repo = split_revision(model_path)[0]
    return (identity.startswith(f"models--{repo.replace('/', '--')}/")
            or identity.endswith((f"/{repo}", f"/{repo.replace('.', '___')}")))


def merge_all_shards(inputs: list[tuple[str, int]], output_dir: str | Path, num_shards: int, input_format: str,
                     read_args: dict, overwrite: bool = False) -> dict:
    """Join each (source, passages_as_queries) input's ``num_shards`` finished shard files into
    its output (see merge_shards), and log its counts and the teacher's metrics. Every input's shards
    are checked finished and alike first: a merge stopped at its second input would leave the first
    joined and the run's record unwritten."""
    for source, derived in inputs:
        _finished_shards(source, output_dir, num_shards, derived)
    for source, derived in inputs:
        merged, lines = merge_shards(source, output_dir, num_shards, input_format, read_args, derived,
                                     overwrite=overwrite)
        logger.info("merged %d shards into %s (%d pairs)", num_shards, merged, lines)
        if counts := recorded_counts(merged):  # (shards of an older release recorded none)
            seconds = counts.get("seconds_all_runs", counts["seconds"])
            logger.info("%s: %s; the slowest shard took %.1f s, %.1f pairs/s in all", merged, counts_message(counts),
                        seconds, counts["pairs"] / max(seconds, 1e-9))
        log_teacher_metrics(merged, ranking_queries(source, input_format, read_args, derived))
    return {"merged": num_shards}


def split_into_shards(source: str, output_dir: str | Path, num_shards: int, input_format: str = "auto",
                      read_args=None, passages_as_queries: int = 0) -> None:
    """Write the N shard files of a finished, checked output: what merge_shards joins back into
    the same file, so replicas of a run that adds other inputs find this one's shares done. Any
    shard files already there (of another run, finished or not) are replaced: only the output is
    known to be right. Each shard's ``.run.json`` says what that shard's own run would have; the
    first keeps the output's counts whole (a merge sums them back)."""
    shards, paths, merged = shard_outputs(source, output_dir, num_shards, passages_as_queries)
    record = run_record(merged)
    if record is None:
        raise InputError(f"{merged} is finished but has no .run.json (an earlier release's): score the other inputs "
                         "in a run of their own")
    contents = [hashlib.blake2b(digest_size=16) for _ in shards]
    pairs = [0] * num_shards
    lines = _lines(merged)
    with ExitStack() as stack:
        outs = [stack.enter_context(AtomicWriter(path)) for path in paths]
        for index, query in _shares(source, input_format, read_args, passages_as_queries, contents):
            for _ in query.passages:
                outs[index].write(dumps(next(lines)[1]) + "\n")
                pairs[index] += 1
        # An earlier run's shard files go first, so no crash leaves one beside the record of another.
        for index, (shard, path) in enumerate(zip(shards, paths)):
            for stale in (path, beside(path, ".partial"), beside(path, ".progress.json")):
                stale.unlink(missing_ok=True)
            made_with = {**record["made_with"], "shard": asdict(shard), "pairs": pairs[index]}
            if "input_digest" in made_with:
                made_with["input_digest"] = contents[index].hexdigest()
            counts = record["counts"] if index == 0 else {key: 0 for key in record["counts"]}
            # (a merge gives them back: the command that finished it, or an earlier merge's shards' commands)
            kept = {key: record[key] for key in ("command", "shard_commands") if key in record}
            write_json(beside(path, ".run.json"), {"source": record["source"], "made_with": made_with, "counts": counts,
                                                   **kept})


def shard_outputs(source: str, output_dir: str | Path, num_shards: int,
                  passages_as_queries: int = 0) -> tuple[list[Shard], list[Path], Path]:
    """The ``num_shards`` shares of ``source``, their output files, and the output they join into."""
    shards = [Shard(i, num_shards) for i in range(num_shards)]
    paths = [output_path_for(source, output_dir, shard, passages_as_queries) for shard in shards]
    return shards, paths, output_path_for(source, output_dir, passages_as_queries=passages_as_queries)


def _lines(output_path: Path) -> Iterator[tuple[int, dict]]:
    """read_jsonl of a finished output, which may be empty (a shard with no pairs, or only queries
    without passages): read_jsonl refuses an empty file as bad input."""
    return read_jsonl(output_path) if output_path.stat().st_size else iter(())


def _shares(source: str, input_format: str, read_args, passages_as_queries: int, digests: list) -> Iterator[tuple[int, RankingQuery]]:
    """Each query of ``source`` with the index of the shard that takes it (its position modulo
    ``len(digests)``), added to that shard's digest as the shard's own run adds it (validate_source)."""
    for position, query in enumerate(ranking_queries(source, input_format, read_args, passages_as_queries)):
        index = position % len(digests)
        digests[index].update(query_bytes(query))
        yield index, query


# What differs from one share of a run to another: the rest of a made_with record are the run's settings.
_SHARE_KEYS = ("shard", "pairs", "input_digest")


def _settings(made_with: dict) -> dict:
    """A made_with record's settings, the same for every share of one run (teachers, input format, ...)."""
    return {key: value for key, value in made_with.items() if key not in _SHARE_KEYS}


def _differing_settings(made: dict, made_with: dict, keys) -> list[str]:
    """setting_differences of two made_with records' settings (_settings) over ``keys``. How the input
    was read (a format named or detected) does not count where both record a digest of what they
    read, as for a rerun: the merge checks each shard's digest against its share of the input as it
    reads it, so shards that pass read the same content."""
    return setting_differences(_settings(made), _settings(made_with), keys,
                               same_content=bool(made.get("input_digest") and made_with.get("input_digest")))


def _single_run_made_with(output_path: Path) -> dict | None:
    """What an unsharded run of ``output_path`` was made with: a finished one's (``.run.json``) or a
    stopped one's (``.progress.json``); None where neither records it."""
    if is_finished(output_path):
        return (run_record(output_path) or {}).get("made_with")
    return (saved_progress(output_path) or {}).get("made_with")


def _shard_run_records(shard_paths: list[Path]) -> list[dict] | None:
    """Each shard's ``.run.json``, or None if none has one (an older release's); InputError where
    the shards were scored with differing teachers or settings, or only some have one (a shard
    copied without it may come from another run, which nothing could then check)."""
    records = [run_record(path) for path in shard_paths]
    if all(record is None for record in records):
        return None
    if None in records:
        lacking = shard_paths[records.index(None)]
        raise InputError(f"shard file {lacking} has no {beside(lacking, '.run.json').name} beside it, which the other "
                         "shards have (it records what scored the shard): copy it along with the shard, or score "
                         "that shard again with --overwrite")
    for record, path in zip(records[1:], shard_paths[1:]):
        first, this = records[0]["made_with"], record["made_with"]
        if differs := _differing_settings(first, this, _settings(first).keys() | _settings(this).keys()):
            models = sorted({teacher.get("model_path") for made in (first, this) for teacher in made["teachers"]})
            # (a local folder is known by its real path, not its content, which nothing reads whole)
            where = (f" (teachers {' and '.join(map(repr, models))}: a model folder counts as the same model only at "
                     "the same path on every machine; a hub id names it by its commit anywhere)"
                     if "teachers: model_path" in differs else "")
            raise InputError(
                f"shard files {shard_paths[0]} and {path} were scored with different settings (differing: "
                f"{', '.join(differs)}){where}; rescore the odd ones with the same flags as the others and --overwrite"
            )
    return records


def _merge_run_records(records: list[dict], merged: Path, pairs: int, input_digest: str) -> None:
    """The merged file's ``.run.json``: the shards' settings as one unsharded run, their counts
    summed (the longest shard's seconds)."""
    made_with = {**records[0]["made_with"], "shard": asdict(Shard()), "pairs": pairs}
    if "input_digest" in made_with:  # the whole input's, as an unsharded run computes it
        made_with["input_digest"] = input_digest
    # the shards ran side by side: the longest one's time (a record of an older release has no
    # seconds_all_runs: its seconds are all its runs' that it kept)
    for record in records:
        record["counts"].setdefault("seconds_all_runs", record["counts"]["seconds"])
    counts = {key: (max if key.startswith("seconds") else sum)(r["counts"][key] for r in records)
              for key in records[0]["counts"]}
    commands = []  # that finished the shards: one where all were one (a finished output split into shards)
    for record in records:
        for command in [record["command"]] if "command" in record else record.get("shard_commands", []):
            if command not in commands:
                commands.append(command)
    made_by = {} if not commands else {"command": commands[0]} if len(commands) == 1 else {"shard_commands": commands}
    write_json(beside(merged, ".run.json"), {"source": records[0]["source"], "made_with": made_with,
                                             "counts": counts, "merged_shards": len(records), **made_by})
