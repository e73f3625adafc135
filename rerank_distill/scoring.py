"""Scoring a data set with teachers, safe to interrupt.

The input streams a chunk of whole queries at a time (``--chunk_size`` pairs); each chunk's
distinct pairs are scored once, its lines appended to ``OUT.partial`` and flushed to disk, and
only then is ``OUT.progress.json`` updated with the byte offset and counts. A rerun of the same
command truncates the partial file to that offset and continues with the next query, so no pair
is lost or written twice, and because chunk boundaries depend only on the input, the finished
file equals an uninterrupted run's. The final name appears only when every pair is written.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from rerank_distill.cli import stop_if_signalled, write_json
from rerank_distill.errors import InputError
from rerank_distill.formats import (
    ListOddities, RankingQuery, iter_ranking_queries, iter_scored_pairs, local_files, source_stem,
)
from rerank_distill.jsonl import dumps, naming_file, only_writer
from rerank_distill.teachers import LLM_TEACHER_TYPES

logger = logging.getLogger(__name__)


@dataclass
class Shard:
    """This process's share: queries whose position in the input is ``index`` modulo ``count``."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> "Shard":
        if not text:
            return cls()
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise InputError(f"--shard must look like I/N (for example 0/4), got '{text}'") from None
        if count < 1:  # (else "between 0 and -1" below, which names no fix)
            raise InputError(f"--shard {text}: N, the number of shards, must be at least 1")
        if not 0 <= index < count:
            raise InputError(f"--shard {text}: I must be between 0 and N-1")
        return cls(index, count)

    def takes(self, query_position: int) -> bool:
        return query_position % self.count == self.index

    def suffix(self) -> str:
        return "" if self.count == 1 else f".shard-{self.index}-of-{self.count}"


def beside(output_path: Path, suffix: str) -> Path:
    """A file stage 1 keeps next to an output: OUT.partial, OUT.progress.json, OUT.run.json, OUT.lock."""
    return output_path.with_name(output_path.name + suffix)


def remove_output(output_path: Path) -> None:
    """Delete an output and what stage 1 keeps beside it (--overwrite): finished or not, it is gone."""
    for suffix in ("", ".partial", ".progress.json", ".run.json"):
        beside(output_path, suffix).unlink(missing_ok=True)


def is_finished(output_path: Path) -> bool:
    """Whether stage 1 finished ``output_path``: it exists under its final name with no partial beside it."""
    return output_path.exists() and not beside(output_path, ".partial").exists()


def output_path_for(source: str, output_dir: str | Path, shard: Shard = Shard(), passages_as_queries: int = 0) -> Path:
    """``DIR/{stem}_scores.jsonl`` (``train.jsonl`` -> ``train_scores.jsonl``), with a shard suffix;
    ``DIR/{stem}_passages_as_queries_scores.jsonl`` for the lists derive_passage_queries makes."""
    derived = "_passages_as_queries" if passages_as_queries else ""
    return Path(output_dir) / f"{source_stem(source)}{derived}_scores{shard.suffix()}.jsonl"


def derive_passage_queries(queries: Iterable[RankingQuery], per_list: int) -> Iterator[RankingQuery]:
    """Each query's passages as queries of their own: up to ``per_list`` distinct passages of
    each list (in the input's order; blank ones are no query), each with the rest of its list as
    candidates, the original query first. They carry no gold labels (None), only what the
    teacher will say.

    Where passages are queries too (duplicate questions), this gives the student many more
    lists to learn the teacher from, at up to ``per_list`` x list length more teacher pairs.
    """
    for query in queries:
        members = list(dict.fromkeys([query.query, *query.passages]))
        for passage in [member for member in members[1:] if member.strip()][:per_list]:
            candidates = [member for member in members if member != passage]
            yield RankingQuery(passage, candidates, [None] * len(candidates), f"{query.location} (passage as query)")


def ranking_queries(source: str, input_format: str = "auto", read_args: dict | None = None,
                    passages_as_queries: int = 0) -> Iterator[RankingQuery]:
    """The queries stage 1 scores from ``source``: as they are, or (``passages_as_queries`` > 0)
    the lists derive_passage_queries makes from them. ``read_args`` go to iter_ranking_queries
    (hub, cache_dir, label_column)."""
    queries = iter_ranking_queries(source, input_format, **(read_args or {}))
    return derive_passage_queries(queries, passages_as_queries) if passages_as_queries else queries


@dataclass
class InputSummary:
    queries: int = 0
    pairs: int = 0
    queries_without_passages: int = 0
    negative_grades: int = 0  # pairs graded below 0, which evaluation refuses (NDCG gains)
    first_negative_grade: str = ""  # the record of the first one, "file:line"
    digest: str = ""  # of every query's text, passages and labels: a finished output of other input is refused
    # whether every gold label of the whole input (every shard's) is a whole number: written as 1 and 0 then, else
    # every one as a float (3.0, 0.5), as a file mixing 3 and 0.5 is one Arrow's schema inference (datasets) refuses
    whole_number_labels: bool = True
    oddities: ListOddities = field(default_factory=ListOddities)  # of the lists as given (not of passages as queries)

    def warn(self, source: str) -> None:
        """Log what in the input is kept but may surprise: grades below 0, repeated queries or passages."""
        if self.negative_grades:
            logger.warning("%s: %d pairs have a grade below 0 (the first at %s); training reads grades above 0 as "
                           "relevant and the rest as not, but evaluation.py refuses negative grades (they are NDCG "
                           "gains) and the teacher's metrics against them are not reported: map them to 0 if this "
                           "data is to be evaluated", source, self.negative_grades, self.first_negative_grade)
        self.oddities.warn(source, "each is kept as it is, a line of its own")


def validate_source(source: str, input_format: str, shard: Shard, passages_as_queries: int = 0,
                    **read_args) -> InputSummary:
    """Read the whole input once (checking every record) and count this shard's queries and pairs.
    An input with no pair at all is an InputError: its output would be an empty file that stage 2 refuses."""
    summary, content = InputSummary(), hashlib.blake2b(digest_size=16)
    all_queries = all_pairs = 0  # of every shard: an input with no pair is refused by each shard's run too
    for position, query in enumerate(ranking_queries(source, input_format, read_args, passages_as_queries)):
        all_queries, all_pairs = all_queries + 1, all_pairs + len(query.passages)
        summary.whole_number_labels = summary.whole_number_labels and all(map(is_whole_number, query.labels))
        if not shard.takes(position):
            summary.oddities.note_query_text(query)  # this shard's repeat of another's query is still a repeat
            continue
        summary.queries += 1
        summary.pairs += len(query.passages)
        summary.queries_without_passages += not query.passages
        if not passages_as_queries:
            summary.oddities.add(query)
        if negative := [index for index, label in enumerate(query.labels) if label is not None and label < 0]:
            summary.negative_grades += len(negative)
            summary.first_negative_grade = summary.first_negative_grade or query.passage_location(negative[0])
        content.update(query_bytes(query))
    summary.digest = content.hexdigest()
    if not all_pairs and not passages_as_queries:  # (a shard may hold none of its pairs, but not the whole input)
        queries = ("its one query has no passage" if all_queries == 1
                   else f"none of its {all_queries} queries has a passage")
        raise InputError(f"nothing to score: {queries}", source)
    return summary


def is_whole_number(label: float | None) -> bool:
    """Whether a gold label is written as a JSON integer (1, 3): a whole number that a float holds
    exactly and Arrow's int64 holds (None, no label, is no obstacle)."""
    return label is None or (float(label).is_integer() and abs(label) <= 2**53)


def query_bytes(query: RankingQuery) -> bytes:
    """What of a query its output depends on (text, passages, labels, and the rows' ids where it has
    any), for InputSummary.digest."""
    ids = [query.ids] if query.ids and any(query.ids) else []  # (a digest without ids is what it always was)
    return json.dumps([query.query, query.passages, query.labels, *ids]).encode("utf-8", "surrogatepass")


def iter_chunks(queries: Iterator[RankingQuery], chunk_size: int) -> Iterator[list[RankingQuery]]:
    """Whole queries, gathered until a chunk holds at least ``chunk_size`` pairs."""
    chunk, pairs = [], 0
    for query in queries:
        chunk.append(query)
        pairs += len(query.passages)
        if pairs >= chunk_size:
            yield chunk
            chunk, pairs = [], 0
    if chunk:
        yield chunk


# Scores closer than this (relative to their size, or absolute below 1) are alike: a float32 logit
# moves by ~1e-7 of itself with the batch it is scored in, which standardising would make a vote.
ALIKE_WITHIN = 1e-5


def zscore_by_query(scores: np.ndarray, query_ids: np.ndarray) -> np.ndarray:
    """Scores standardised within each query (mean 0, std 1; a query whose scores are all alike,
    within ALIKE_WITHIN, gets 0)."""
    out = np.zeros_like(scores, dtype=np.float64)
    for query_id in np.unique(query_ids):
        rows = query_ids == query_id
        size = max(1.0, float(np.abs(scores[rows]).max()))
        # divided by a power of two (exact, so the z-scores are the same) to below 2: the square the std
        # takes of scores from about 1e154 up would overflow, and every z-score of the query would be 0
        scale = 2.0 ** (math.frexp(size)[1] - 1)
        values = scores[rows] / scale
        spread = values.std()
        alike = spread <= ALIKE_WITHIN * size / scale
        out[rows] = 0.0 if alike else (values - values.mean()) / spread
    return out


def combine_teachers(scores_by_teacher: Sequence[np.ndarray], query_ids: np.ndarray) -> np.ndarray:
    """Several teachers' scores of the same pairs as one: the mean of each teacher's z-scores within
    each query (``query_ids``: each pair's query), since their scales differ (logits, cosines, grades)."""
    return np.mean([zscore_by_query(scores, query_ids) for scores in scores_by_teacher], axis=0)


@dataclass
class ScoringStats:
    queries: int = 0
    pairs: int = 0
    distinct_pairs_scored: int = 0
    duplicate_pairs_reused: int = 0
    truncated: int = 0  # distinct pairs cut to max_length; of several teachers, the most any one of them cut
    resumed_at_pair: int = 0
    seconds: float = 0.0
    already_complete: bool = False

    @property
    def pairs_per_second(self) -> float:
        return (self.pairs - self.resumed_at_pair) / self.seconds if self.seconds else 0.0


def _legacy_fingerprint(source: str, teacher_configs: list[dict], input_format: str, chunk_size: int, shard: Shard,
                        passages_as_queries: int, label_column: str | None = None) -> str:
    """What progress files of earlier releases recorded of a run's settings (a hash, with the input
    file's size and time), so their unfinished runs still resume."""
    described = {
        "source": os.path.abspath(source) if os.path.exists(source) else source,
        "teachers": teacher_configs,
        "input_format": input_format,
        "chunk_size": chunk_size,
        "shard": asdict(shard),
    }
    if passages_as_queries:
        described["passages_as_queries"] = passages_as_queries
    if label_column:
        described["label_column"] = label_column
    files = local_files(source)
    if files == [source]:
        stat = os.stat(source)
        described["source_size"], described["source_mtime_ns"] = stat.st_size, stat.st_mtime_ns
    elif files:  # a data-set folder's split
        described["source_files"] = [(os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _check_scores_vary(scores: np.ndarray, teacher) -> None:
    if len(scores) < 2:
        return
    if teacher.config.get("teacher_type") in LLM_TEACHER_TYPES:
        cause = ("the model or its prompt is broken (some vLLM releases did this for Qwen3-Reranker-8B: try "
                 "--backend hf on a few queries to compare)")
        check = "check the instruction and model"
    else:  # a head that never trained (a checkpoint saved without it) scores alike too
        cause = check = "check that the model is a trained one of this --teacher_type"
    if np.ptp(scores) == 0:
        raise InputError(f"teacher {teacher.name} gave every pair of the first chunk it scored the same score "
                         f"({scores[0]:.6g}); {cause}")
    if scores.std() < 0.05:
        logger.warning("teacher %s's scores barely vary (std %.4f on the first chunk it scored): a collapsed or "
                       "mis-prompted teacher teaches little; %s", teacher.name, scores.std(), check)


class SharedProgress:
    """The progress callback of ``teachers`` teachers that score the same pairs in turn: each moves
    ``progress`` (a pair count) by its share, so the bar advances while each works."""

    def __init__(self, progress: Callable[[int], None], teachers: int):
        self.progress, self.teachers = progress, teachers
        self.reported = self.shown = 0  # pairs the teachers reported, all together; pairs shown

    def __call__(self, pairs: int) -> None:
        self.reported += pairs
        if step := self.reported // self.teachers - self.shown:
            self.progress(step)
            self.shown += step


def _score_chunk(chunk: list[RankingQuery], teachers: list, progress, check_variation: bool,
                 whole_number_labels: bool = True) -> tuple[list[str], ScoringStats]:
    """Score a chunk's distinct pairs with every teacher and return its output lines."""
    stats = ScoringStats()
    index_of: dict[tuple[str, str], int] = {}
    pair_rows, query_ids = [], []
    for query_number, query in enumerate(chunk):
        for passage in query.passages:
            pair_rows.append(index_of.setdefault((query.query, passage), len(index_of)))
            query_ids.append(query_number)
    distinct = list(index_of)
    if not distinct:  # only queries without passages: nothing to score, nothing to write
        stats.queries = len(chunk)
        return [], stats
    queries, passages = [q for q, _ in distinct], [p for _, p in distinct]
    stats.distinct_pairs_scored = len(distinct)
    stats.duplicate_pairs_reused = len(pair_rows) - len(distinct)
    results = []
    shared = SharedProgress(progress, len(teachers))
    for teacher in teachers:
        result = teacher.score(queries, passages, shared)
        stats.truncated = max(stats.truncated, result.truncated)
        not_finite = np.flatnonzero(~np.isfinite(result.scores))
        if not_finite.size:
            first = not_finite[0]
            raise InputError(
                f"teacher {teacher.name} gave {len(not_finite)} of {len(queries)} pairs a score that is not finite "
                f"({result.scores[first]}; first: query {queries[first][:80]!r}): its weights are broken or overflow "
                "in --dtype (try --dtype float32 or bfloat16); the chunks before this one are kept"
            )
        if check_variation:
            _check_scores_vary(result.scores, teacher)
        results.append(result)
    rows = np.asarray(pair_rows)
    if len(teachers) == 1:
        combined = results[0].scores[rows]
    else:
        combined = combine_teachers([r.scores[rows] for r in results], np.asarray(query_ids))
    progress(len(distinct) - shared.shown)  # (none left where every teacher reported its pairs)
    lines, line_number = [], 0
    for query in chunk:
        for i, (label, passage) in enumerate(zip(query.labels, query.passages)):
            row = pair_rows[line_number]
            if label is not None:  # 1 and 0 as the source wrote them, not 1.0 and 0.0; all floats where one is 0.5
                label = int(label) if whole_number_labels else float(label)
            record = {"query": query.query, "passage": passage, "score": float(combined[line_number]), "label": label}
            if query.ids:
                record.update(query.ids[i])  # the row's own ids (formats.id_columns), to join back to it
            if len(teachers) > 1:
                record["teacher_scores"] = {t.name: float(r.scores[row]) for t, r in zip(teachers, results)}
            for teacher, result in zip(teachers, results):
                for name, values in result.fields.items():
                    key = name if len(teachers) == 1 else f"{teacher.name}/{name}"
                    record[key] = values[row]
            lines.append(dumps(record) + "\n")
            line_number += 1
    progress(stats.duplicate_pairs_reused)
    stats.queries, stats.pairs = len(chunk), len(lines)
    return lines, stats


def model_identity(model_path: str) -> str:
    """One name for one model however its path is spelled: the real path of a local folder, or for
    a hub download ``models--ORG--NAME/snapshots/COMMIT`` (and any subfolder of it) whatever cache holds it.
    Only a cache's repository folder (its name holds ``--``) is followed by snapshots/: a folder of one's
    own named so holds models of its own (snapshots/run1/a and snapshots/run1/b are two)."""
    parts = Path(model_path).resolve().parts
    for at in range(len(parts) - 2, 1, -1):
        if parts[at] == "snapshots" and "--" in parts[at - 1]:
            return "/".join(parts[at - 1 :])
    return str(Path(model_path).resolve())


def _made_with(teachers: list[dict], input_format: str, shard: Shard, passages_as_queries: int,
               expected: InputSummary, label_column: str | None = None, names: list[str] | None = None) -> dict:
    """What a finished output was scored with, compared on a rerun before it is reused: the teachers'
    settings (``teachers``: their configs, each model by model_identity; with several, their
    ``names``, the keys of each line's teacher_scores) and what was read, down to a digest of its
    content. (Not the input file's name or time, nor the chunk size: those change nothing.)"""
    configs = [{**config, **({"model_path": model_identity(config["model_path"])} if "model_path" in config else {})}
               for config in teachers]  # fmt: skip
    made_with = {"teachers": configs, "input_format": input_format, "shard": asdict(shard),
                 "passages_as_queries": passages_as_queries, "pairs": expected.pairs}  # fmt: skip
    if label_column:  # absent otherwise, so records of earlier releases still compare equal
        made_with["label_column"] = label_column
    if names and len(names) > 1:  # (absent for one teacher, for the same reason)
        made_with["teacher_names"] = names
    if expected.digest:
        made_with["input_digest"] = expected.digest
    return made_with


def _read_run_file(path: Path, what_to_do: str) -> dict:
    """The JSON object stage 1 wrote to ``path`` (a ``.run.json`` or ``.progress.json``); InputError
    naming the file, and saying ``what_to_do``, where it holds something else (edited, or another
    tool's file of that name)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"not a record stage 1 wrote ({error}); {what_to_do}", str(path)) from None
    if not isinstance(record, dict) or not isinstance(record.get("made_with", {}), dict):
        raise InputError(f"not a record stage 1 wrote (no JSON object with its made_with); {what_to_do}", str(path))
    return record


def run_record(output_path: Path) -> dict | None:
    """The ``OUT.run.json`` record of how a finished output was made, or None (none beside it)."""
    record_path = beside(output_path, ".run.json")
    if not record_path.exists():
        return None
    record = _read_run_file(record_path, f"score {output_path.name} again (--overwrite), or delete the record if the "
                                         "output was made elsewhere")
    if not isinstance(record.get("made_with", {}).get("teachers"), list):
        raise InputError(f"not a record stage 1 wrote (it names no teachers); score {output_path.name} again "
                         "(--overwrite), or delete the record if the output was made elsewhere", str(record_path))
    return record


def claim_output(output_path: Path):
    """only_writer for a stage 1 output (``OUT.lock``): one run writes it at a time."""
    return only_writer(output_path, hint=" (replicas of --data_parallel_size run as processes of their own)")


def counts_message(counts: dict, queries_without_passages: int | None = None) -> str:
    """What a stage 1 output holds, for the log: ``counts`` are ScoringStats' fields (as vars() or
    a .run.json's "counts" give them)."""
    without = "" if queries_without_passages is None else f", {queries_without_passages} queries without passages"
    return (f"{counts['queries']} queries, {counts['pairs']} pairs ({counts['distinct_pairs_scored']} distinct scored, "
            f"{counts['duplicate_pairs_reused']} duplicates reused, {counts['truncated']} truncated to the teacher's "
            f"max_length{without})")


def recorded_counts(output_path: Path) -> dict | None:
    """The counts a finished output's ``.run.json`` records (queries, pairs, distinct_pairs_scored,
    duplicate_pairs_reused, truncated, seconds_all_runs, ...), or None where it has no record."""
    return (run_record(Path(output_path)) or {}).get("counts")


def recorded_label_grades(score_file: str) -> tuple[list[str], list[float]] | None:
    """The label words and grades stage 1 scored ``score_file`` with (its ``.run.json``: the first
    graded-label teacher's, whose ``label_probs`` the file leads with), or None where there is no
    record or no such teacher."""
    record = run_record(Path(score_file)) or {}
    for teacher in record.get("made_with", {}).get("teachers", []):
        if "label_words" in teacher:
            return teacher["label_words"], teacher["label_grades"]
    return None


def label_words_to_read(score_file: str, words: list[str] | None, grades: list[float] | None) -> tuple:
    """The label words and grades to read ``score_file``'s label_probs with: those stage 1 recorded
    (InputError where ``words`` or ``grades``, --label_words and --label_grades, say otherwise),
    else the ones given (None: see teacher_scores_for)."""
    recorded = recorded_label_grades(score_file)
    if recorded is None:
        return words, grades
    if (words is not None or grades is not None) and (words or recorded[0], grades or recorded[1]) != recorded:
        raise InputError(f"--label_words {' '.join(words or recorded[0])} (grades {grades or recorded[1]}) are not "
                         f"those stage 1 scored with: {' '.join(recorded[0])}, graded {recorded[1]} (its .run.json); "
                         "leave --label_words and --label_grades out to use those", score_file)
    return recorded


def check_same_teachers(score_files: list[str]) -> None:
    """InputError where stage 1 scored these files (by their ``.run.json``) with different
    teachers or teacher settings: their scores are on different scales, and records that mix them
    teach noise (a passages-as-queries file left from another teacher's run, say). Files without
    a record (made elsewhere) are not compared."""
    recorded = [(path, record["made_with"]["teachers"]) for path in score_files
                if (record := run_record(Path(path))) is not None]  # fmt: skip
    for path, teachers in recorded[1:]:
        if differs := setting_differences({"teachers": recorded[0][1]}, {"teachers": teachers}, ["teachers"]):
            raise InputError(
                f"{recorded[0][0]} and {path} were scored by different teachers or teacher settings (differing: "
                f"{', '.join(differs)}; see their .run.json files), whose scores are not on one scale: rescore one "
                "as the other was, or make records from each on its own"
            )


# What records of earlier releases lack, so it is compared only where the record has it.
_RECORDED_SINCE = ("input_digest", "teacher_names")


# How the input was read (a format named or detected, a grade column named or found): where the
# same content was read either way (its digest), the difference changes no line of the output.
_HOW_INPUT_WAS_READ = ("input_format", "label_column")


def setting_differences(made: dict, made_with: dict, keys, same_content: bool | None = None) -> list[str]:
    """The names of ``keys`` whose values differ between two made_with records; for the teachers,
    each differing setting of each (``teachers: max_length``), or their number. How the input was
    read does not count where both read the same content: where both record the same digest of
    it, or ``same_content`` says so (a caller that checks their content itself)."""
    if same_content is None:
        same_content = bool(made.get("input_digest")) and made.get("input_digest") == made_with.get("input_digest")
    differs = []
    for key in sorted(keys):
        was, now = made.get(key), made_with.get(key)
        if was == now or (key in _HOW_INPUT_WAS_READ and same_content):
            continue
        if key == "teachers" and isinstance(was, list) and isinstance(now, list) and len(was) == len(now):
            differs += sorted({f"teachers: {name}" for old, new in zip(was, now)
                               for name in old.keys() | new.keys() if old.get(name) != new.get(name)})  # fmt: skip
        else:
            differs.append(key)
    return differs


def _check_finished(output_path: Path, made_with: dict, teacher_keys: tuple[str, ...] | None = None) -> None:
    """InputError unless the finished ``output_path`` was scored as this run would score it now,
    by its OUT.run.json record. A file without one (copied here without it, or written by another
    tool) cannot tell how it was made, so it is refused too, never reused. ``teacher_keys``
    compares only those settings of each teacher (what is known before the teachers load)."""
    record = run_record(output_path)
    if record is None:
        raise InputError(
            f"{output_path} exists but has no {beside(output_path, '.run.json').name} beside it to tell how it was "
            "scored (a copy without its record?); pass --overwrite to score it again, or choose another --output_dir"
        )
    made = _teacher_settings(record["made_with"], teacher_keys)
    differs = setting_differences(made, made_with, [key for key in made_with if key in made or key not in _RECORDED_SINCE])
    if differs:
        raise InputError(
            f"{output_path} is finished but was scored with other settings or input (differing: {', '.join(differs)}); "
            "pass --overwrite to score it again, or choose another --output_dir"
        )


def _teacher_settings(made_with: dict, teacher_keys: tuple[str, ...] | None) -> dict:
    """``made_with`` with only the ``teacher_keys`` settings of each teacher (all where None)."""
    teachers = made_with.get("teachers")
    if teacher_keys is None or not isinstance(teachers, list) or not all(isinstance(t, dict) for t in teachers):
        return made_with  # (a record edited out of shape differs as it is)
    return {**made_with, "teachers": [{key: t.get(key) for key in teacher_keys} for t in teachers]}


def _other_unfinished_run(output_path: Path, differs: list[str]) -> InputError:
    return InputError(
        f"{beside(output_path, '.partial')} holds an unfinished run with other settings or input (differing: "
        f"{', '.join(differs) or 'teachers, input or chunk size'}); rerun with the same arguments and input to "
        "resume it, or pass --overwrite to start over"
    )


def check_before_loading(output_path: Path, teacher_types: list[str], model_paths: list[str], expected: InputSummary,
                         input_format: str = "auto", shard: Shard = Shard(), passages_as_queries: int = 0,
                         label_column: str | None = None) -> None:
    """Refuse a finished output, or an unfinished one's progress file, made with other teachers or
    input, or unreadable, before any teacher loads (minutes for an 8B model): what score_source
    and resume_point check in full once they have, as far as the teacher types and models already tell."""
    output_path = Path(output_path)
    teachers = [{"teacher_type": kind, "model_path": path} for kind, path in zip(teacher_types, model_paths)]
    # as it reads back from JSON, to compare with what a progress file holds
    made_with = json.loads(json.dumps(_made_with(teachers, input_format, shard, passages_as_queries, expected,
                                                 label_column)))
    if is_finished(output_path):
        _check_finished(output_path, made_with, teacher_keys=("teacher_type", "model_path"))
    elif (saved := saved_progress(output_path)) is not None and saved.get("made_with"):  # (none: an earlier release's)
        made = _teacher_settings(saved["made_with"], ("teacher_type", "model_path"))
        if differs := setting_differences(made, made_with, made.keys() | made_with.keys()):
            raise _other_unfinished_run(output_path, differs)


@dataclass
class ResumePoint:
    """Where scoring an output starts: the chunk size, the counts earlier runs saved (zeros for a
    fresh start; None when the output is finished and is reused as it is), and what the run's
    progress file and ``.run.json`` record of how it is made (``made_with``)."""

    chunk_size: int
    done: dict | None
    made_with: dict


def resume_point(source: str, output_path: Path, teachers: list, expected: InputSummary, input_format: str = "auto",
                 chunk_sizes: Sequence[int] = (20_000,), shard: Shard = Shard(), overwrite: bool = False,
                 read_args: dict | None = None, passages_as_queries: int = 0) -> ResumePoint:
    """score_source's refusals without its work, so a run can stop before it records its arguments:
    InputError where a finished or partial ``output_path`` was made with other settings or input
    (by what its ``.run.json`` or ``.progress.json`` records: teachers, each model however its path
    is spelled, and a digest of the input's content, not its file's name or time). The chunk size
    is the first of ``chunk_sizes`` an unfinished run was begun with (so a run begun under another
    default --chunk_size resumes rather than being refused), else the first. With ``overwrite``
    nothing on disk counts: a fresh start."""
    output_path = Path(output_path)
    configs, label_column = [t.config for t in teachers], (read_args or {}).get("label_column")
    # as it reads back from JSON, to compare with what a progress file holds
    made_with = json.loads(json.dumps(_made_with(configs, input_format, shard, passages_as_queries, expected,
                                                 label_column, [t.name for t in teachers])))
    fresh = {"queries": 0, "pairs": 0, "bytes": 0, "truncated": 0, "distinct": 0, "reused": 0}
    start = ResumePoint(chunk_sizes[0], fresh, made_with)
    if overwrite:
        return start
    if is_finished(output_path):
        _check_finished(output_path, made_with)
        return replace(start, done=None)
    saved = saved_progress(output_path)
    if saved is None:
        return start
    made = saved.get("made_with", {})
    differs = setting_differences(made, made_with, made.keys() | made_with.keys())
    if made and not differs and saved.get("chunk_size") in chunk_sizes:
        return ResumePoint(saved["chunk_size"], saved["done"], made_with)
    if not made:  # a progress file of an earlier release
        for size in chunk_sizes:
            if saved.get("fingerprint") == _legacy_fingerprint(source, configs, input_format, size, shard,
                                                               passages_as_queries, label_column):
                return ResumePoint(size, saved["done"], made_with)
    if made and saved.get("chunk_size") not in chunk_sizes:
        differs.append(f"--chunk_size (it began with {saved.get('chunk_size')})")
    raise _other_unfinished_run(output_path, differs)


def score_source(
    source: str,
    output_path: Path,
    teachers: list,
    expected: InputSummary,
    input_format: str = "auto",
    chunk_size: int = 20_000,
    shard: Shard = Shard(),
    overwrite: bool = False,
    read_args: dict | None = None,
    show_progress: bool = True,
    passages_as_queries: int = 0,
    resume: ResumePoint | None = None,
    command: list[str] | None = None,
) -> ScoringStats:
    """Score every pair of ``source`` (this shard's share) into ``output_path``, resuming a
    previous run of the same command where it stopped; a finished output is reused if it was
    scored with the same settings and input, refused otherwise; beside it ``OUT.run.json`` records
    how it was made, and the ``command`` line that finished it (the run's args.json beside it is
    replaced by a later run into the same folder). Returns the counts of the whole file. (Hold
    claim_output around it.) ``resume`` is resume_point's answer for these arguments, where the
    caller has it; the chunk size is its."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if len({teacher.name for teacher in teachers}) != len(teachers):
        raise ValueError("teacher names must differ, or their teacher_scores overwrite each other (see unique_names)")
    output_path = Path(output_path)
    partial = beside(output_path, ".partial")
    progress_path = beside(output_path, ".progress.json")
    record_path = beside(output_path, ".run.json")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if overwrite:
        remove_output(output_path)
    if resume is None:
        resume = resume_point(source, output_path, teachers, expected, input_format, [chunk_size], shard, overwrite,
                              read_args, passages_as_queries)
    done = resume.done
    if done is None:
        logger.info("%s is already complete; skipping it (pass --overwrite to score it again)", output_path)
        progress_path.unlink(missing_ok=True)  # (left where a run stopped between finishing it and removing this)
        return ScoringStats(queries=expected.queries, pairs=expected.pairs, already_complete=True)
    if done["pairs"]:
        logger.info("resuming %s after %d queries (%d pairs)", output_path, done["queries"], done["pairs"])
    with open(partial, "a+b") as out:
        out.truncate(done["bytes"])  # drops a chunk that was half written when the run stopped
    stats = ScoringStats(resumed_at_pair=done["pairs"])
    started, earlier_seconds = time.perf_counter(), done.get("seconds", 0.0)  # progress files of old releases lack it
    read = hashlib.blake2b(digest_size=16)  # of what is scored: the input may change after it was checked

    def shard_queries() -> Iterator[RankingQuery]:
        for position, query in enumerate(ranking_queries(source, input_format, read_args, passages_as_queries)):
            if shard.takes(position):
                read.update(query_bytes(query))
                yield query

    queries = shard_queries()
    bar = tqdm(total=expected.pairs, initial=done["pairs"], unit="pair", desc=output_path.name, disable=not show_progress)
    # whether a chunk has shown the teacher's scores vary (progress files of old releases lack it: a chunk was saved)
    checked = done.get("variation_checked", done["pairs"] > 0)
    try:
        # (a warning while the bar is drawn, the teacher's scores barely varying, goes above it, not onto its line)
        with naming_file(partial), open(partial, "a", encoding="utf-8") as out, logging_redirect_tqdm():
            for chunk_number, chunk in enumerate(iter_chunks(queries, resume.chunk_size)):
                if chunk_number < done.get("chunks", 0):
                    continue
                stop_if_signalled()
                lines, chunk_stats = _score_chunk(chunk, teachers, bar.update, check_variation=not checked,
                                                  whole_number_labels=expected.whole_number_labels)
                checked = checked or chunk_stats.distinct_pairs_scored > 1
                out.write("".join(lines))
                out.flush()
                os.fsync(out.fileno())
                after_chunk = {
                    "chunks": chunk_number + 1,
                    "queries": done["queries"] + chunk_stats.queries,
                    "pairs": done["pairs"] + chunk_stats.pairs,
                    "bytes": out.tell(),
                    "truncated": done["truncated"] + chunk_stats.truncated,
                    "distinct": done["distinct"] + chunk_stats.distinct_pairs_scored,
                    "reused": done["reused"] + chunk_stats.duplicate_pairs_reused,
                    "seconds": earlier_seconds + time.perf_counter() - started,
                    "variation_checked": checked,
                }
                write_json(progress_path, {"made_with": resume.made_with, "chunk_size": resume.chunk_size,
                                           "done": after_chunk})
                done = after_chunk
    except KeyboardInterrupt:
        bar.close()  # before the warning, so the bar does not draw over it
        # what the progress file records: the pairs a rerun will not score again (an interrupt between its
        # replacement and ``done = after_chunk`` left ``done`` a chunk behind it)
        saved = json.loads(progress_path.read_text(encoding="utf-8"))["done"] if progress_path.exists() else done
        logger.warning("interrupted: %d of %d pairs for %s are saved in %s; run the same command again%s to "
                       "continue from there", saved["pairs"], expected.pairs, output_path.name, partial,
                       " without --overwrite" if overwrite else "")
        raise
    finally:
        bar.close()
    if done["pairs"] != expected.pairs:
        raise InputError(f"{source} changed while it was being scored ({done['pairs']} of {expected.pairs} pairs)")
    if expected.digest and read.hexdigest() != expected.digest:  # (edited while the teacher loaded, say)
        raise InputError(f"{source} changed while it was being scored: its content differs from what was checked "
                         "before; score it again with --overwrite")
    stats.seconds = time.perf_counter() - started
    stats.queries, stats.pairs, stats.truncated = done["queries"], done["pairs"], done["truncated"]
    stats.distinct_pairs_scored, stats.duplicate_pairs_reused = done["distinct"], done["reused"]
    counts = {key: value for key, value in asdict(stats).items() if key != "already_complete"}
    counts["seconds_all_runs"] = earlier_seconds + stats.seconds  # "seconds" are this run's, after resumed_at_pair
    write_json(record_path, {"source": source, "made_with": resume.made_with, "counts": counts,
                             **({"command": command} if command else {})})
    os.replace(partial, output_path)
    progress_path.unlink(missing_ok=True)
    return stats


def teacher_metrics(output_path: Path, lists: Iterable[RankingQuery]) -> dict | None:
    """The teacher's MAP, MRR@10 and NDCG@10 against the gold labels of a finished output, under
    the mteb protocol; None where its pairs have no gold labels (passages as queries: none has
    one), no query has both a positive and a negative, or a grade is below 0. Streams. Where
    several teachers scored it, ``"teachers"`` holds each one's MAP, MRR@10 and NDCG@10 beside the
    combined score's: which judge of an ensemble ranks best, and whether combining them helps.

    ``lists``: the input's queries as stage 1 scored them (ranking_queries): each one's lines are a
    ranking of their own, as evaluation.py ranks each record's list apart, even where two lists of
    one query text lie side by side (grouping lines by query text would join them)."""
    from rerank_distill.metrics import evaluate_rankings, query_metrics
    from rerank_distill.report import METRICS

    if not Path(output_path).stat().st_size:  # only queries without passages (or a shard with none)
        return None
    pairs = iter_scored_pairs(str(output_path))
    first = next(pairs)
    if first.label is None:
        return None
    teacher_names = list(first.extra.get("teacher_scores") or {})
    each_teachers_queries = {name: [] for name in teacher_names}  # query_metrics of each query, by teacher

    def rankings() -> Iterator[tuple[list[float], list[float]]]:  # one query's lines at a time
        lines = itertools.chain([first], pairs)
        for query in lists:  # stage 1 writes a line for each passage of each list, in order
            if query.passages:
                group = list(itertools.islice(lines, len(query.passages)))
                labels = [pair.label for pair in group]
                for name, per_query in each_teachers_queries.items():
                    per_query.append(query_metrics([pair.extra["teacher_scores"][name] for pair in group], labels))
                yield [pair.score for pair in group], labels

    try:
        result = evaluate_rankings(rankings(), "mteb", 10)
    except ValueError:  # no query with both a positive and a negative, or a grade below 0
        return None
    metrics = {key: value for key, value in result.items() if key != "per_query"}
    if teacher_names:  # (the same queries skipped as for the combined score: skipping reads only the labels)
        metrics["teachers"] = {
            name: dict(zip(METRICS, np.mean([m for m in per_query if m is not None], axis=0).tolist()))
            for name, per_query in each_teachers_queries.items()}
    return metrics


def log_teacher_metrics(output: Path, lists: Iterable[RankingQuery]) -> dict | None:
    """Log and return the teacher's metrics against the gold labels of a finished output (None
    where it has none): a bad teacher shows now, not after a student has been trained on it.
    ``lists`` as for teacher_metrics."""
    metrics = teacher_metrics(output, lists)
    if metrics:
        logger.info("%s: the %s against the gold labels: MAP %.4f, MRR@10 %.4f, NDCG@10 %.4f (%d queries with a "
                    "positive and a negative): what a student learning from it aims for", output,
                    "teachers' combined score" if "teachers" in metrics else "teacher", metrics["map"],
                    metrics["mrr@10"], metrics["ndcg@10"], metrics["queries_evaluated"])
        for name, its_metrics in metrics.get("teachers", {}).items():
            logger.info("%s: teacher %s alone: MAP %.4f, MRR@10 %.4f, NDCG@10 %.4f", output, name, its_metrics["map"],
                        its_metrics["mrr@10"], its_metrics["ndcg@10"])
    return metrics


def saved_progress(output_path: Path) -> dict | None:
    """A stopped run's ``.progress.json`` (what it had done, and with what), where its ``.partial`` is there too."""
    progress = beside(output_path, ".progress.json")
    if beside(output_path, ".partial").exists() and progress.exists():
        return _read_run_file(progress, "pass --overwrite to start that output over")
    return None
