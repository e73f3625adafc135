"""Stage 1 as a whole: output contract, resuming after a crash, deduplication, shards, bad input."""

import errno
import gzip
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import generate_logits
from rerank_distill import teacher_runs
from rerank_distill.errors import InputError
from rerank_distill.formats import RankingQuery
from rerank_distill.scoring import (
    Shard,
    beside,
    is_finished,
    iter_chunks,
    output_path_for,
    resume_point,
    score_source,
    validate_source,
)
from rerank_distill.shards import merge_shards, names_model
from rerank_distill.teachers import TeacherScores, choose_backend
from rerank_distill.toy import read_jsonl_records, synthetic_ranking_data, write_jsonl_records


class CountingTeacher:
    """A stand-in teacher: score = length of the passage minus length of the query, and a record
    of every pair it was asked to score."""

    name = "counting"
    config = {"teacher_type": "counting"}

    def __init__(self, fail_on_call: int | None = None):
        self.calls: list[tuple[str, str]] = []
        self.fail_on_call = fail_on_call
        self.call_count = 0

    def score(self, queries, passages, progress=lambda n: None):
        self.call_count += 1
        if self.call_count == self.fail_on_call:
            raise KeyboardInterrupt
        self.calls.extend(zip(queries, passages))
        progress(len(queries))
        return TeacherScores(np.array([len(p) - len(q) + 0.5 * i for i, (q, p) in enumerate(zip(queries, passages))]))


def run_scoring(source, output, teacher, chunk_size=5, **kwargs):
    expected = validate_source(str(source), "auto", Shard())
    return score_source(str(source), output, [teacher], expected, chunk_size=chunk_size, show_progress=False, **kwargs)



def launch(launcher: str, *args: str, env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    """Run the repository's launcher ``launcher`` (generate_logits.sh, ...) with ``args`` in ``cwd``,
    its output captured."""
    script = Path(generate_logits.__file__).resolve().parent / launcher
    return subprocess.run(["bash", str(script), *args], env=env, cwd=cwd, capture_output=True, text=True, check=False)


def test_graded_rows_keep_their_id_columns_in_the_output_so_scores_join_back_to_them(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "esci.parquet"
    pq.write_table(pa.table({
        "example_id": [10, 11, 12, 13], "query": ["usb", "shoes", "usb", "usb"], "query_id": ["q1", "q2", "q1", "q1"],
        "product_id": ["B01", "B02", "B03", "B01"], "product_title": ["usb cable", "red shoes", "hdmi", "usb cable"],
        "product_description": ["long text", "", "", "long text"], "esci_label": ["E", "E", "I", "S"],
    }), source)
    output = tmp_path / "esci_scores.jsonl"
    run_scoring(source, output, CountingTeacher())
    lines = read_jsonl_records(output)
    assert [(line["query"], line["passage"], line["label"], line["example_id"], line["query_id"], line["product_id"])
            for line in lines] == [("usb", "usb cable", 3, 10, "q1", "B01"), ("usb", "hdmi", 0, 12, "q1", "B03"),
                                   ("usb", "usb cable", 2, 13, "q1", "B01"), ("shoes", "red shoes", 3, 11, "q2", "B02")]
    assert lines[0]["score"] == lines[2]["score"]  # the pair listed twice is scored once, each row keeps its ids
    assert not any("product_description" in line for line in lines)  # ids only: the output stays one line a pair
    table = pq.read_table(source).to_pydict()
    pq.write_table(pa.table({**table, "product_id": ["N01", "N02", "N03", "N01"]}), source)  # same pairs, new ids
    with pytest.raises(InputError, match="finished but was scored with other settings or input"):
        run_scoring(source, output, CountingTeacher())  # its lines would carry the old ids


def test_graded_labels_of_whole_and_fractional_grades_are_all_written_as_floats_so_datasets_loads_the_file(tmp_path):
    import datasets

    rows = [{"query": f"q{i}", "passage": f"p{i}{j}", "label": label}
            for i, labels in enumerate([[3, 0], [1, 0], [0.5, 0]]) for j, label in enumerate(labels)]
    source = write_jsonl_records(tmp_path / "graded.jsonl", rows)
    output = tmp_path / "graded_scores.jsonl"
    run_scoring(source, output, CountingTeacher(), chunk_size=2)
    with open(output, encoding="utf-8") as lines:
        labels = [re.search(r'"label": ([^,}]*)', line).group(1) for line in lines]
    assert labels == ["3.0", "0.0", "1.0", "0.0", "0.5", "0.0"]  # 3 and 0.5 in one file: one JSON type, not int and float
    # datasets reads a JSON file in blocks and casts each to the first one's types: a first block of
    # ints stopped it at the 0.5 ("Float value 0.500000 was truncated converting to int64")
    loaded = datasets.load_dataset("json", data_files=str(output), split="train", chunksize=256,
                                   cache_dir=str(tmp_path / "cache"))
    assert loaded["label"] == [3.0, 0.0, 1.0, 0.0, 0.5, 0.0]
    shard_output = tmp_path / "shard0.jsonl"  # the 0.5 is another shard's: this one writes floats all the same
    score_source(str(source), shard_output, [CountingTeacher()], validate_source(str(source), "auto", Shard(0, 3)),
                 shard=Shard(0, 3), show_progress=False)
    assert [line["label"] for line in read_jsonl_records(shard_output)] == [3.0, 0.0]
    assert '"label": 3.0' in shard_output.read_text()
    run_scoring(write_jsonl_records(tmp_path / "whole.jsonl", rows[:4]), tmp_path / "whole_scores.jsonl",
                CountingTeacher())
    assert [line["label"] for line in read_jsonl_records(tmp_path / "whole_scores.jsonl")] == [3, 0, 1, 0]
    assert '"label": 3}' in (tmp_path / "whole_scores.jsonl").read_text()  # whole grades only: written as ints


def test_blank_texts_passages_listed_again_and_query_texts_given_again_are_counted_before_a_teacher_loads(tmp_path):
    lists = [{"query": "dns", "positive": ["same"], "negative": ["same", "b", "b"]},
             {"query": "  ", "positive": [""], "negative": ["x"]},
             {"query": "dns", "positive": ["c"], "negative": ["d"]}]  # fmt: skip
    source = write_jsonl_records(tmp_path / "odd.jsonl", lists)
    summary = validate_source(str(source), "auto", Shard())
    odd = summary.oddities
    assert (odd.blank_queries, odd.blank_passages, odd.repeated_passages, odd.conflicting_labels,
            odd.repeated_queries) == (1, 1, 1, 1, 1)
    assert odd.first == {"blank_queries": f"{source}:2", "blank_passages": f"{source}:2",
                         "repeated_passages": f"{source}:1", "conflicting_labels": f"{source}:1",
                         "repeated_queries": f"{source}:3"}  # fmt: skip
    assert summary.pairs == 8  # kept, every one
    assert validate_source(str(source), "auto", Shard(), passages_as_queries=2).oddities.first == {}


def test_odd_passages_of_row_per_pair_data_are_found_at_their_own_rows(tmp_path):
    rows = [{"query": "q", "passage": "a", "label": 1}, {"query": "q", "passage": "b", "label": 0},
            {"query": "q", "passage": " ", "label": 0}, {"query": "q", "passage": "a", "label": 0}]  # fmt: skip
    source = write_jsonl_records(tmp_path / "graded.jsonl", rows)
    assert validate_source(str(source), "auto", Shard()).oddities.first == {
        "blank_passages": f"{source}:3", "conflicting_labels": f"{source}:4"}  # fmt: skip


def test_a_query_text_given_again_is_counted_in_the_shard_that_holds_the_repeat(tmp_path):
    lists = [{"query": "dns", "positive": ["a"], "negative": ["b"]}, {"query": "ntp", "positive": ["c"], "negative": []},
             {"query": "git", "positive": ["d"], "negative": []}, {"query": "dns", "positive": ["e"], "negative": []}]
    source = write_jsonl_records(tmp_path / "again.jsonl", lists)
    repeats = [validate_source(str(source), "auto", Shard(i, 2)).oddities.repeated_queries for i in range(2)]
    assert repeats == [0, 1]  # shard 1 holds the second "dns"; its first is shard 0's
    assert validate_source(str(source), "auto", Shard()).oddities.first["repeated_queries"] == f"{source}:4"


def test_grades_below_zero_are_counted_and_warned_about_before_a_teacher_loads(tmp_path, teacher_never_loads, caplog):
    rows = [{"query": "q", "passage": "a", "label": 1}, {"query": "q", "passage": "b", "label": -1},
            {"query": "r", "passage": "c", "label": -1}, {"query": "r", "passage": "d", "label": 0}]  # fmt: skip
    source = write_jsonl_records(tmp_path / "graded.jsonl", rows)
    summary = validate_source(str(source), "auto", Shard())
    assert (summary.negative_grades, summary.first_negative_grade) == (2, f"{source}:2")  # its own row

    caplog.set_level(logging.WARNING)
    with pytest.raises(teacher_never_loads):  # the warning comes first: scoring goes on, evaluation would refuse
        generate_logits.main(["--model_path", "m", "--input_path", str(source), "--output_dir", str(tmp_path / "o")])
    assert f"2 pairs have a grade below 0 (the first at {source}:2)" in caplog.text


@pytest.mark.parametrize("flags", [["--gpu_memory_utilization", "nan"], ["--label_grades", "3", "inf", "1", "0"]])
def test_a_float_flag_that_is_not_finite_is_refused_before_anything_is_written(ranking_file, tmp_path, flags):
    # unread by the teacher (or never checked), it was only warned about, and args.json got NaN or Infinity: no JSON
    output = tmp_path / "o"
    with pytest.raises(InputError, match=f"^{flags[0]} must be a finite number, got "):
        generate_logits.main(["--teacher_type", "cross_encoder", "--model_path", str(tmp_path / "m"), "--input_path",
                              str(ranking_file), "--output_dir", str(output), *flags])
    assert not output.exists()


def test_end_to_end_writes_one_line_per_pair_with_label(tiny_qwen3, ranking_file, tmp_path):
    summary = generate_logits.main([
        "--model_path", str(tiny_qwen3), "--input_path", str(ranking_file), "--output_dir", str(tmp_path / "scores"),
        "--batch_size", "4", "--no_show_progress",
    ])  # fmt: skip
    output = tmp_path / "scores" / "train_scores.jsonl"
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    records = [json.loads(line) for line in ranking_file.read_text().splitlines()]
    expected_pairs = [(r["query"], p, 1.0) for r in records for p in r["positive"]]
    expected_pairs += [(r["query"], n, 0.0) for r in records for n in r["negative"]]
    assert sorted((l["query"], l["passage"], l["label"]) for l in lines) == sorted(expected_pairs)
    assert all(set(line) == {"query", "passage", "score", "label"} for line in lines)
    assert all(type(line["label"]) is int for line in lines)  # written 1 and 0, as the issue's contract says
    assert len({line["score"] for line in lines}) > 1
    assert summary[str(output)]["pairs"] == len(expected_pairs)
    args = json.loads((tmp_path / "scores" / "args.json").read_text())
    assert args["script"]["model_path"] == [str(tiny_qwen3)] and args["resolved"]["backend"] == "hf"


def test_each_output_keeps_the_command_that_made_it_when_a_later_run_writes_the_folder(tmp_path, ranking_file,
                                                                                       tiny_cross_encoder):
    # args.json is the folder's last run's: a later run scoring another input there replaces it
    other = tmp_path / "test.jsonl"
    other.write_bytes(ranking_file.read_bytes())
    scores = tmp_path / "scores"
    commands = []
    for source in (ranking_file, other):
        commands.append(["--model_path", str(tiny_cross_encoder), "--teacher_type", "cross_encoder", "--input_path",
                         str(source), "--output_dir", str(scores), "--device", "cpu", "--no_show_progress"])
        generate_logits.main(commands[-1])
    for name, command in (("train_scores.jsonl", commands[0]), ("test_scores.jsonl", commands[1])):
        record = json.loads((scores / f"{name}.run.json").read_text())
        assert record["command"][1:] == command
    assert json.loads((scores / "args.json").read_text())["command"][1:] == commands[1]


def test_gzipped_input_gives_the_same_output_name_and_scores(tmp_path, ranking_file):
    gz = tmp_path / "train.jsonl.gz"
    gz.write_bytes(gzip.compress(ranking_file.read_bytes()))
    run_scoring(ranking_file, tmp_path / "a" / "train_scores.jsonl", CountingTeacher())
    run_scoring(gz, output_path_for(str(gz), tmp_path / "b"), CountingTeacher())
    assert (tmp_path / "b" / "train_scores.jsonl").read_bytes() == (tmp_path / "a" / "train_scores.jsonl").read_bytes()


def test_a_chunk_closes_once_it_holds_chunk_size_pairs_and_never_splits_a_query():
    queries = [RankingQuery(name, ["p"] * size, [0.0] * size) for name, size in (("a", 2), ("b", 1), ("c", 2), ("d", 1))]
    chunks = [[query.query for query in chunk] for chunk in iter_chunks(iter(queries), chunk_size=3)]
    assert chunks == [["a", "b"], ["c", "d"]]  # 2 + 1 pairs reach 3: the chunk closes there


def test_an_interrupt_just_after_the_progress_file_is_saved_reports_the_pairs_it_records(tmp_path, ranking_file,
                                                                                        caplog, monkeypatch):
    from rerank_distill import cli, scoring

    saves = []

    def write_json_then_interrupt(path, record):
        cli.write_json(path, record)
        saves.append(record)
        if len(saves) == 2:  # the second chunk saved and recorded, not yet in the run's own count
            raise KeyboardInterrupt

    monkeypatch.setattr(scoring, "write_json", write_json_then_interrupt)
    output = tmp_path / "train_scores.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_scoring(ranking_file, output, CountingTeacher(), chunk_size=3)
    partial = output.with_name(output.name + ".partial")
    saved = len(partial.read_text(encoding="utf-8").splitlines())
    assert saved == saves[-1]["done"]["pairs"] > saves[0]["done"]["pairs"]
    assert f"interrupted: {saved} of " in caplog.text


class SignalledInAFinalizer(CountingTeacher):
    """A teacher whose first call drops an object whose finalizer a SIGTERM lands in: Python prints the
    KeyboardInterrupt the signal raised there and goes on."""

    def score(self, queries, passages, progress=lambda n: None):
        if self.call_count == 0:
            class Dropped:
                def __del__(self):
                    os.kill(os.getpid(), signal.SIGTERM)

            Dropped()  # (its finalizer runs here, the signal's handler inside it)
        return super().score(queries, passages, progress)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop, as Python reports it
def test_a_stop_signal_python_dropped_in_a_finalizer_stops_the_run_at_the_next_chunk(tmp_path, ranking_file, caplog):
    from rerank_distill.cli import stops_as_ctrl_c

    whole = tmp_path / "whole" / "train_scores.jsonl"
    run_scoring(ranking_file, whole, CountingTeacher(), chunk_size=3)
    output = tmp_path / "stopped" / "train_scores.jsonl"
    with stops_as_ctrl_c(), pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        run_scoring(ranking_file, output, SignalledInAFinalizer(), chunk_size=3)
    partial = output.with_name(output.name + ".partial")
    saved = len(partial.read_text(encoding="utf-8").splitlines())
    assert 0 < saved < len(whole.read_text(encoding="utf-8").splitlines())  # the first chunk, and no more
    assert f"interrupted: {saved} of " in caplog.text
    run_scoring(ranking_file, output, CountingTeacher(), chunk_size=3)  # a new run: the signal stopped the one before
    assert output.read_bytes() == whole.read_bytes()


def test_identical_pairs_are_scored_once_and_every_line_is_kept(tmp_path):
    source = write_jsonl_records(tmp_path / "dup.jsonl", [
        {"query": "q1", "positive": ["a", "b"], "negative": ["a", "c"]},
        {"query": "q1", "positive": ["b"], "negative": []},
    ])  # fmt: skip
    teacher = CountingTeacher()
    stats = run_scoring(source, tmp_path / "dup_scores.jsonl", teacher, chunk_size=100)
    assert sorted(teacher.calls) == [("q1", "a"), ("q1", "b"), ("q1", "c")]
    lines = [json.loads(l) for l in (tmp_path / "dup_scores.jsonl").read_text().splitlines()]
    assert [(l["passage"], l["label"]) for l in lines] == [("a", 1.0), ("b", 1.0), ("a", 0.0), ("c", 0.0), ("b", 1.0)]
    assert lines[0]["score"] == lines[2]["score"] and lines[1]["score"] == lines[4]["score"]
    assert stats.duplicate_pairs_reused == 2


def test_the_log_says_the_run_wrote_every_pair_where_it_scored_a_repeated_pair_once(tiny_qwen3, tmp_path, caplog):
    source = write_jsonl_records(tmp_path / "dup.jsonl", [{"query": "q1", "positive": ["a", "b"], "negative": ["a"]}])
    with caplog.at_level(logging.INFO):
        generate_logits.main(["--model_path", str(tiny_qwen3), "--input_path", str(source), "--output_dir",
                              str(tmp_path / "scores"), "--no_show_progress"])  # fmt: skip
    assert "3 pairs (2 distinct scored, 1 duplicates reused" in caplog.text
    assert "this run wrote 3 of them" in caplog.text  # (it said "scored 3", beside "2 distinct scored")


def test_a_run_interrupted_and_rerun_equals_an_uninterrupted_run(tmp_path, ranking_file, caplog):
    whole = tmp_path / "whole" / "train_scores.jsonl"
    run_scoring(ranking_file, whole, CountingTeacher())
    resumed = tmp_path / "resumed" / "train_scores.jsonl"
    first = CountingTeacher(fail_on_call=4)
    with pytest.raises(KeyboardInterrupt):
        run_scoring(ranking_file, resumed, first)
    assert not resumed.exists()
    partial = resumed.with_name(resumed.name + ".partial")
    total = len(whole.read_text(encoding="utf-8").splitlines())
    saved = len(partial.read_text(encoding="utf-8").splitlines())
    assert f"interrupted: {saved} of {total} pairs for train_scores.jsonl are saved in {partial}" in caplog.text
    assert "run the same command again to continue" in caplog.text
    with open(partial, "a", encoding="utf-8") as out:  # a chunk half written when the crash came
        out.write('{"query": "half a li')
    second = CountingTeacher()
    stats = run_scoring(ranking_file, resumed, second)
    assert resumed.read_bytes() == whole.read_bytes()
    assert not partial.exists()
    assert set(first.calls).isdisjoint(second.calls)  # nothing scored twice
    assert stats.resumed_at_pair == len(first.calls)
    counts = json.loads(resumed.with_name(resumed.name + ".run.json").read_text())["counts"]
    assert counts["resumed_at_pair"] == len(first.calls) and counts["seconds_all_runs"] > counts["seconds"] > 0


class DiskFillsAfter:
    """A file opened for writing whose writes fail as on a full disk (ENOSPC, and no file name,
    as the operating system reports it) once ``room`` characters are written."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, text: str) -> int:
        if len(text) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(text)
        return self.file.write(text)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_disk_that_fills_while_a_chunk_is_written_stops_in_one_line_naming_the_file_and_a_rerun_continues(
        tmp_path, ranking_file, monkeypatch, capsys):
    from rerank_distill import scoring
    from rerank_distill.cli import run_main

    whole = tmp_path / "whole" / "train_scores.jsonl"
    run_scoring(ranking_file, whole, CountingTeacher())
    output = tmp_path / "full" / "train_scores.jsonl"
    partial = output.with_name(output.name + ".partial")

    def open_on_a_filling_disk(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)
        return DiskFillsAfter(file, room=len(whole.read_text()) // 2) if mode == "a" else file

    monkeypatch.setattr(scoring, "open", open_on_a_filling_disk, raising=False)
    with pytest.raises(SystemExit) as stopped:
        run_main(lambda: run_scoring(ranking_file, output, CountingTeacher()))
    assert stopped.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: {partial}: No space left on device: free some space and run the command again")
    monkeypatch.undo()  # room made
    assert run_scoring(ranking_file, output, CountingTeacher()).resumed_at_pair > 0
    assert output.read_bytes() == whole.read_bytes()


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGHUP"])  # a scheduler's stop before its kill; a closed terminal
def test_a_run_stopped_by_a_signal_saves_its_chunks_says_how_to_continue_and_a_rerun_finishes_it(
        tmp_path, ranking_file, caplog, capsys, stop):
    import signal

    from rerank_distill.cli import run_main

    whole = tmp_path / "whole" / "train_scores.jsonl"
    run_scoring(ranking_file, whole, CountingTeacher())
    output = tmp_path / "stopped" / "train_scores.jsonl"

    class StoppedTeacher(CountingTeacher):
        def score(self, queries, passages, progress=lambda n: None):
            if self.call_count == 3:
                # (the signal's default would end the process unsaid: pytest too)
                assert signal.getsignal(getattr(signal, stop)) is not signal.SIG_DFL, f"{stop} would kill the run"
                os.kill(os.getpid(), getattr(signal, stop))
            return super().score(queries, passages, progress)

    with pytest.raises(SystemExit) as stopped:
        run_main(lambda: run_scoring(ranking_file, output, StoppedTeacher()))
    assert stopped.value.code == 128 + getattr(signal, stop)
    assert "run the same command again to continue" in caplog.text
    assert capsys.readouterr().err.strip().endswith(f"interrupted ({stop})")
    assert signal.getsignal(getattr(signal, stop)) is signal.SIG_DFL  # the handler lasts as long as the run
    assert run_scoring(ranking_file, output, CountingTeacher()).resumed_at_pair > 0
    assert output.read_bytes() == whole.read_bytes()


def test_resuming_with_other_settings_is_refused(tmp_path, ranking_file):
    output = tmp_path / "train_scores.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_scoring(ranking_file, output, CountingTeacher(fail_on_call=2))
    with pytest.raises(InputError, match="other settings"):
        run_scoring(ranking_file, output, CountingTeacher(), chunk_size=7)
    run_scoring(ranking_file, output, CountingTeacher(), chunk_size=7, overwrite=True)
    assert output.exists()


def test_a_run_resumes_whatever_the_spelling_of_its_model_path_or_the_time_of_its_input(tmp_path, ranking_file,
                                                                                        monkeypatch):
    (tmp_path / "model").mkdir()
    output = tmp_path / "train_scores.jsonl"
    first = CountingTeacher(fail_on_call=2)
    first.config = {"teacher_type": "counting", "model_path": str(tmp_path / "model")}
    with pytest.raises(KeyboardInterrupt):
        run_scoring(ranking_file, output, first)
    os.utime(ranking_file, ns=(0, 0))  # touched: the same content at another time
    monkeypatch.chdir(tmp_path)
    second = CountingTeacher()
    second.config = {"teacher_type": "counting", "model_path": "./model/"}
    stats = run_scoring(ranking_file, output, second)
    assert stats.resumed_at_pair == len(first.calls) and set(first.calls).isdisjoint(second.calls)

    other = CountingTeacher(fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        run_scoring(ranking_file, tmp_path / "other_scores.jsonl", other)
    with pytest.raises(InputError, match=r"other settings or input \(differing: teachers: model_path, --chunk_size \(it began"):
        run_scoring(ranking_file, tmp_path / "other_scores.jsonl", second, chunk_size=7)


def test_several_teachers_resume_only_under_the_names_their_scores_are_keyed_by(tmp_path, ranking_file):
    def teachers(*names, fail_on_call=None):
        made = [CountingTeacher(fail_on_call) for _ in names]
        for teacher, name in zip(made, names):
            teacher.name = name  # (a model path spelled another way, through a link, names it otherwise)
        return made

    output = tmp_path / "train_scores.jsonl"
    expected = validate_source(str(ranking_file), "auto", Shard())
    with pytest.raises(KeyboardInterrupt):
        score_source(str(ranking_file), output, teachers("judge", "ce", fail_on_call=2), expected, chunk_size=5,
                     show_progress=False)  # fmt: skip
    with pytest.raises(InputError, match=r"unfinished run with other settings or input \(differing: teacher_names"):
        score_source(str(ranking_file), output, teachers("judge", "ce-link"), expected, chunk_size=5,
                     show_progress=False)  # fmt: skip
    score_source(str(ranking_file), output, teachers("judge", "ce"), expected, chunk_size=5, show_progress=False)
    assert {tuple(line["teacher_scores"]) for line in read_jsonl_records(output)} == {("judge", "ce")}


def test_an_unfinished_run_of_an_earlier_release_still_resumes(tmp_path, ranking_file):
    from rerank_distill.scoring import _legacy_fingerprint

    output = tmp_path / "train_scores.jsonl"
    first = CountingTeacher(fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        run_scoring(ranking_file, output, first)
    progress = output.with_name(output.name + ".progress.json")
    done = json.loads(progress.read_text())["done"]  # as an earlier release recorded it: a hash of the settings
    fingerprint = _legacy_fingerprint(str(ranking_file), [CountingTeacher.config], "auto", 5, Shard(), 0)
    progress.write_text(json.dumps({"fingerprint": fingerprint, "done": done}))
    second = CountingTeacher()
    assert run_scoring(ranking_file, output, second).resumed_at_pair == len(first.calls) > 0


def test_a_progress_record_cut_short_is_an_error_naming_it_not_a_traceback(tmp_path, ranking_file):
    output = tmp_path / "train_scores.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_scoring(ranking_file, output, CountingTeacher(fail_on_call=3))
    progress = output.with_name(output.name + ".progress.json")
    progress.write_text(progress.read_text()[:20])
    with pytest.raises(InputError, match=rf"^{progress}: not a record stage 1 wrote .*pass --overwrite to start"):
        run_scoring(ranking_file, output, CountingTeacher())


def test_an_unfinished_output_of_other_teachers_or_unreadable_is_refused_before_a_teacher_loads(
    tmp_path, ranking_file, teacher_never_loads
):
    from rerank_distill.scoring import model_identity

    output = tmp_path / "o" / "train_scores.jsonl"
    with pytest.raises(KeyboardInterrupt):  # a run of another teacher, stopped
        run_scoring(ranking_file, output, CountingTeacher(fail_on_call=3))
    argv = ["--model_path", "m", "--input_path", str(ranking_file), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(InputError, match=r"\.partial holds an unfinished run with other settings or input "
                                         r"\(differing: teachers: model_path, teachers: teacher_type\)"):
        generate_logits.main(argv)
    progress = output.with_name(output.name + ".progress.json")
    record = json.loads(progress.read_text())
    record["made_with"]["teachers"] = [{"teacher_type": "llm_yesno", "model_path": model_identity("m")}]
    progress.write_text(json.dumps(record))
    with pytest.raises(teacher_never_loads):  # this run's own teacher: it resumes
        generate_logits.main(argv)
    progress.write_text(progress.read_text()[:20])
    with pytest.raises(InputError, match=rf"^{progress}: not a record stage 1 wrote"):
        generate_logits.main(argv)
    assert output.with_name(output.name + ".partial").exists()


def test_an_input_edited_after_it_was_checked_never_finishes_under_the_checked_digest(tmp_path, ranking_file):
    expected = validate_source(str(ranking_file), "auto", Shard())  # checked; then, while a teacher loads, edited:
    records = read_jsonl_records(ranking_file)
    records[3]["positive"], records[3]["negative"] = records[3]["negative"], records[3]["positive"]
    write_jsonl_records(ranking_file, records)
    output = tmp_path / "train_scores.jsonl"
    with pytest.raises(InputError, match="changed while it was being scored: its content differs"):
        score_source(str(ranking_file), output, [CountingTeacher()], expected, chunk_size=5, show_progress=False)
    assert not output.exists()


def test_a_data_set_folders_split_is_scored_resumed_and_guarded_against_changed_files(tmp_path, ranking_file):
    folder = tmp_path / "so-reranking"
    (folder / "data").mkdir(parents=True)
    split_file = folder / "data" / "test-00000-of-00001.jsonl"
    shutil.copy(ranking_file, split_file)
    shutil.copy(ranking_file, folder / "train.jsonl")
    source = f"{folder}:test"
    output = output_path_for(source, tmp_path / "scores")
    assert output == tmp_path / "scores" / "so-reranking_test_scores.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_scoring(source, output, CountingTeacher(fail_on_call=2))
    split_file.write_text(ranking_file.read_text() + ranking_file.read_text().splitlines()[0] + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="other settings"):  # the split's file changed since the first run
        run_scoring(source, output, CountingTeacher())
    shutil.copy(ranking_file, split_file)  # the split as it was: the first run resumes where it stopped
    first, second = CountingTeacher(fail_on_call=2), CountingTeacher()
    with pytest.raises(KeyboardInterrupt):
        run_scoring(source, output, first, overwrite=True)
    assert 0 < len(first.calls) < 12 * 6
    assert run_scoring(source, output, second).resumed_at_pair == len(first.calls)
    assert set(first.calls).isdisjoint(second.calls) and len(first.calls) + len(second.calls) == 12 * 6
    run_scoring(ranking_file, tmp_path / "plain_scores.jsonl", CountingTeacher())
    assert output.read_bytes() == (tmp_path / "plain_scores.jsonl").read_bytes()


def test_a_finished_output_is_not_scored_again(tmp_path, ranking_file):
    output = tmp_path / "train_scores.jsonl"
    run_scoring(ranking_file, output, CountingTeacher())
    again = CountingTeacher()
    stats = run_scoring(ranking_file, output, again)
    assert stats.already_complete and again.calls == []


def test_a_rerun_of_a_finished_output_removes_the_progress_file_a_crash_as_it_finished_left(tmp_path, ranking_file):
    output = tmp_path / "train_scores.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_scoring(ranking_file, output, CountingTeacher(fail_on_call=2))
    progress = beside(output, ".progress.json")
    saved = progress.read_bytes()
    run_scoring(ranking_file, output, CountingTeacher())
    progress.write_bytes(saved)  # as a crash between the output's rename and the progress file's removal leaves it
    assert run_scoring(ranking_file, output, CountingTeacher()).already_complete
    assert not progress.exists()


def test_shards_merged_equal_a_single_run(tmp_path, ranking_file):
    single = tmp_path / "single"
    run_scoring(ranking_file, output_path_for(str(ranking_file), single), CountingTeacher())
    sharded = tmp_path / "sharded"
    for index in range(3):
        shard = Shard(index, 3)
        expected = validate_source(str(ranking_file), "auto", shard)
        score_source(str(ranking_file), output_path_for(str(ranking_file), sharded, shard), [CountingTeacher()],
                     expected, chunk_size=5, shard=shard, show_progress=False)  # fmt: skip
    merged, lines = merge_shards(str(ranking_file), sharded, 3)
    single_lines = (single / "train_scores.jsonl").read_text().splitlines()
    # A shard sees other chunk neighbours, so the stand-in's position-dependent scores differ;
    # compare everything else line by line.
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "score"}  # noqa: E731
    assert [strip(l) for l in merged.read_text().splitlines()] == [strip(l) for l in single_lines]
    assert lines == len(single_lines)


def test_shards_scored_and_merged_by_the_script_record_every_run(tmp_path, ranking_file, tiny_embedding_model, caplog):
    caplog.set_level(logging.INFO)
    flags = ["--model_path", str(tiny_embedding_model), "--teacher_type", "embedding", "--input_path",
             str(ranking_file), "--output_dir", str(tmp_path), "--device", "cpu", "--no_show_progress"]
    for index in range(2):
        generate_logits.main([*flags, "--shard", f"{index}/2"])
    generate_logits.main([*flags, "--merge_shards", "2"])

    assert (tmp_path / "train_scores.jsonl").exists()
    record = json.loads((tmp_path / "args.json").read_text())
    assert record["script"]["merge_shards"] == 2
    assert record["resolved"]["shard_records"] == ["args.shard-0-of-2.json", "args.shard-1-of-2.json"]
    assert all((tmp_path / name).exists() for name in record["resolved"]["shard_records"])
    merged_record = json.loads((tmp_path / "train_scores.jsonl.run.json").read_text())
    assert [command[1:] for command in merged_record["shard_commands"]] == [[*flags, "--shard", f"{i}/2"] for i in (0, 1)]
    pairs = sum(1 for _ in open(tmp_path / "train_scores.jsonl"))
    assert re.search(rf"train_scores.jsonl: 12 queries, {pairs} pairs \(\d+ distinct scored, \d+ duplicates reused, "
                     r"0 truncated to the teacher's max_length\); the slowest shard took", caplog.text)


def test_a_merge_warns_of_scoring_settings_other_than_its_shards_which_it_does_not_read(tmp_path, ranking_file,
                                                                                       tiny_embedding_model, caplog):
    flags = ["--model_path", str(tiny_embedding_model), "--teacher_type", "embedding", "--input_path",
             str(ranking_file), "--output_dir", str(tmp_path), "--device", "cpu", "--no_show_progress"]
    for index in range(2):
        generate_logits.main([*flags, "--shard", f"{index}/2", "--score_scale", "10"])
    generate_logits.main([*flags, "--merge_shards", "2", "--score_scale", "10", "--batch_size", "3"])
    assert "is not read" not in caplog.text  # the same scoring settings; how fast a run goes is its own
    generate_logits.main([*flags, "--merge_shards", "2", "--max_length", "99", "--score_scale", "3", "--overwrite"])
    assert "--max_length 99 is not read: a merge scores nothing, and the shards were scored with 2048 " \
           "(args.shard-0-of-2.json)" in caplog.text
    assert "--score_scale 3.0 is not read: a merge scores nothing, and the shards were scored with 10.0" in caplog.text


def test_a_merge_of_several_inputs_joins_none_where_a_later_inputs_shard_is_missing(tmp_path, ranking_file,
                                                                                     tiny_embedding_model):
    dev = write_jsonl_records(tmp_path / "dev.jsonl", synthetic_ranking_data(4, docs_per_query=3, seed=5))
    flags = ["--model_path", str(tiny_embedding_model), "--teacher_type", "embedding", "--output_dir",
             str(tmp_path / "scores"), "--device", "cpu", "--no_show_progress"]
    for index in range(2):
        generate_logits.main([*flags, "--input_path", str(ranking_file), "--shard", f"{index}/2"])
    generate_logits.main([*flags, "--input_path", str(dev), "--shard", "0/2"])  # dev's shard 1/2 never ran
    with pytest.raises(InputError, match="dev_scores.shard-1-of-2.jsonl is missing or unfinished"):
        generate_logits.main([*flags, "--input_path", str(ranking_file), str(dev), "--merge_shards", "2"])
    assert not (tmp_path / "scores" / "train_scores.jsonl").exists()


def test_a_merge_naming_other_teachers_than_scored_the_shards_is_refused_before_joining(
    tmp_path, ranking_file, tiny_embedding_model, tiny_cross_encoder, caplog
):
    """The merge's args.json records its --model_path and --teacher_type: naming a model that never
    scored a pair would leave a record that says another teacher made the scores."""
    flags = ["--input_path", str(ranking_file), "--output_dir", str(tmp_path), "--device", "cpu", "--no_show_progress"]
    teacher = ["--model_path", str(tiny_embedding_model), "--teacher_type", "embedding"]
    for index in range(2):
        generate_logits.main([*teacher, *flags, "--shard", f"{index}/2"])
    for other in (["--model_path", str(tiny_cross_encoder), "--teacher_type", "embedding"],
                  ["--model_path", str(tiny_embedding_model), "--teacher_type", "cross_encoder"],
                  ["--model_path", str(tiny_embedding_model), str(tiny_embedding_model), "--teacher_type", "embedding"],
                  ["--model_path", "org/another-model", "--teacher_type", "embedding"]):
        with pytest.raises(InputError, match=f"was scored with --model_path {re.escape(str(tiny_embedding_model))} "
                                             r"\(--teacher_type embedding\), not the teachers this merge names"):
            generate_logits.main([*other, *flags, "--merge_shards", "2"])
        assert not (tmp_path / "train_scores.jsonl").exists() and not (tmp_path / "args.json").exists()
    # the same folder however spelled is the same teacher
    generate_logits.main(["--model_path", f"{tiny_embedding_model}/", "--teacher_type", "embedding", *flags,
                          "--merge_shards", "2"])
    assert (tmp_path / "train_scores.jsonl").exists() and "is not read" not in caplog.text


def test_a_hub_id_names_the_download_folder_its_shards_record():
    assert names_model("Qwen/Qwen3-Reranker-8B", "models--Qwen--Qwen3-Reranker-8B/snapshots/abc123")
    assert names_model("Qwen/Qwen3-Reranker-8B@abc123", "models--Qwen--Qwen3-Reranker-8B/snapshots/abc123")
    assert names_model("Qwen/Qwen3-Reranker-8B", "/cache/modelscope/models/Qwen/Qwen3-Reranker-8B")
    assert names_model("BAAI/bge-reranker-v2.5", "/cache/modelscope/models/BAAI/bge-reranker-v2___5")
    assert not names_model("Qwen/Qwen3-Reranker-8B", "models--Qwen--Qwen3-Reranker-0.6B/snapshots/abc123")
    assert not names_model("Qwen/Qwen3-Reranker-8B", "models--Qwen--Qwen3-Reranker-8B-GPTQ/snapshots/abc123")


def test_a_merge_names_its_shards_folder_teacher_where_that_folder_is_gone(tmp_path):
    # a merge loads no model: run where the teacher's folder is not (a login node, or deleted once scored), the
    # very path the shards were scored with was taken for a hub id and refused
    gone = tmp_path / "models" / "judge"
    assert names_model(str(gone), str(gone))
    assert names_model(f"{gone}/", str(gone))
    assert names_model(str(tmp_path / "cache" / "models--Qwen--Q" / "snapshots" / "abc"), "models--Qwen--Q/snapshots/abc")
    assert not names_model(str(tmp_path / "models" / "other"), str(gone))


def test_an_overwrite_stopped_in_its_first_input_is_continued_by_the_same_command_without_overwrite(
    tmp_path, ranking_file, tiny_embedding_model, monkeypatch, caplog
):
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(ranking_file.read_text())
    flags = ["--model_path", str(tiny_embedding_model), "--teacher_type", "embedding", "--input_path",
             str(ranking_file), str(test_file), "--output_dir", str(tmp_path / "out"), "--device", "cpu",
             "--no_show_progress", "--chunk_size", "3"]
    generate_logits.main(flags)  # both finished, at the default --score_scale
    original = teacher_runs.score_source

    def stop_in_the_first_input(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(teacher_runs, "score_source", stop_in_the_first_input)
    with pytest.raises(KeyboardInterrupt):
        generate_logits.main([*flags, "--score_scale", "5", "--overwrite"])
    monkeypatch.setattr(teacher_runs, "score_source", original)
    # both old outputs went when the run began, so neither refuses the same command without --overwrite
    generate_logits.main([*flags, "--score_scale", "5"])
    for name in ("train_scores.jsonl", "test_scores.jsonl"):
        record = json.loads((tmp_path / "out" / f"{name}.run.json").read_text())
        assert record["made_with"]["teachers"][0]["score_scale"] == 5.0


def test_a_merge_leaves_no_unfinished_single_run_beside_its_output(tmp_path, ranking_file):
    single = output_path_for(str(ranking_file), tmp_path)
    with pytest.raises(KeyboardInterrupt):  # a single run stopped, then the shards made and joined
        run_scoring(ranking_file, single, CountingTeacher(fail_on_call=2))
    score_shards(ranking_file, tmp_path, 2)
    merged, _ = merge_shards(str(ranking_file), tmp_path, 2)
    assert merged == single and is_finished(merged)
    assert not single.with_name(single.name + ".partial").exists()
    again = CountingTeacher()
    assert run_scoring(ranking_file, single, again).already_complete and again.calls == []


def test_a_merge_keeps_a_finished_single_run_of_other_settings_unless_told_and_says_what_it_drops(tmp_path, ranking_file, caplog):
    class OtherTeacher(CountingTeacher):
        config = {**CountingTeacher.config, "max_length": 16}

    single = output_path_for(str(ranking_file), tmp_path)
    run_scoring(ranking_file, single, OtherTeacher())
    score_shards(ranking_file, tmp_path, 2)
    finished = single.read_bytes()
    with pytest.raises(InputError, match=r"is finished but was scored with other settings than the shards "
                                         r"\(differing: teachers: max_length\)"):
        merge_shards(str(ranking_file), tmp_path, 2)
    assert single.read_bytes() == finished
    caplog.set_level(logging.WARNING)
    merge_shards(str(ranking_file), tmp_path, 2, overwrite=True)  # asked for: the joined shards take its place
    assert "a finished single run with other settings (differing: teachers: max_length) is dropped" in caplog.text
    assert is_finished(single)
    record = json.loads(single.with_name(single.name + ".run.json").read_text())
    assert record["made_with"]["teachers"][0].get("max_length") != 16  # the record is the shards' now
    single.unlink()
    single.with_name(single.name + ".run.json").unlink()
    with pytest.raises(KeyboardInterrupt):  # stopped, with other settings: what the joined shards replace
        run_scoring(ranking_file, single, OtherTeacher(fail_on_call=2))
    merge_shards(str(ranking_file), tmp_path, 2)
    assert "an unfinished single run with other settings (differing: teachers: max_length) is dropped" in caplog.text
    assert is_finished(single)


def test_a_merge_killed_as_it_records_the_joined_file_leaves_no_file_without_its_record(tmp_path, ranking_file,
                                                                                      monkeypatch):
    import rerank_distill.shards as shards

    score_shards(ranking_file, tmp_path, 2)
    merge_shards(str(ranking_file), tmp_path, 2)
    joined = output_path_for(str(ranking_file), tmp_path)
    finished = joined.read_bytes()
    recorded = shards._merge_run_records

    def killed_once_written(*args, **kwargs):
        recorded(*args, **kwargs)
        raise KeyboardInterrupt  # a kill between the record and the joined file taking its name

    monkeypatch.setattr(shards, "_merge_run_records", killed_once_written)
    with pytest.raises(KeyboardInterrupt):
        merge_shards(str(ranking_file), tmp_path, 2)
    assert not joined.exists()  # (the file of before, left, would sit beside this run's record)
    monkeypatch.undo()
    merge_shards(str(ranking_file), tmp_path, 2)
    assert joined.read_bytes() == finished and is_finished(joined)


@pytest.mark.parametrize("other", [["--merge_shards", "2"], ["--data_parallel_size", "2"]])
def test_a_shard_goes_with_neither_a_merge_nor_replicas(tmp_path, ranking_file, other):
    with pytest.raises(InputError, match=f"--shard 0/2 scores one share in this process, {other[0]} handles"):
        generate_logits.main(["--model_path", "m", "--input_path", str(ranking_file), "--output_dir", str(tmp_path),
                              "--shard", "0/2", *other])


def score_shards(source, output_dir, count, teacher_for=lambda index: CountingTeacher()):
    for index in range(count):
        shard = Shard(index, count)
        expected = validate_source(str(source), "auto", shard)
        score_source(str(source), output_path_for(str(source), output_dir, shard), [teacher_for(index)], expected,
                     shard=shard, show_progress=False)  # fmt: skip


def test_shards_scored_with_different_settings_are_not_merged(tmp_path, ranking_file):
    class OtherTeacher(CountingTeacher):
        config = {**CountingTeacher.config, "max_length": 16}

    score_shards(ranking_file, tmp_path, 2, lambda index: OtherTeacher() if index else CountingTeacher())
    with pytest.raises(InputError, match=r"train_scores.shard-1-of-2.jsonl were scored with different settings "
                                         r"\(differing: teachers: max_length\)"):
        merge_shards(str(ranking_file), tmp_path, 2)
    assert not output_path_for(str(ranking_file), tmp_path).exists()


def test_shards_scored_from_model_folders_at_two_paths_are_not_merged_and_the_message_says_why(tmp_path,
                                                                                               ranking_file):
    def teacher_at(index):
        class CopiedTeacher(CountingTeacher):  # one model copied to another path on the second machine
            config = {**CountingTeacher.config, "model_path": str(tmp_path / f"machine-{index}" / "teacher")}
        return CopiedTeacher()

    score_shards(ranking_file, tmp_path, 2, teacher_at)
    with pytest.raises(InputError, match=r"differing: teachers: model_path\) \(teachers '.*machine-0/teacher' and "
                                         r"'.*machine-1/teacher': a model folder counts as the same model only at the "
                                         r"same path on every machine; a hub id names it by its commit anywhere\)"):
        merge_shards(str(ranking_file), tmp_path, 2)

def test_shards_that_differ_only_in_naming_the_format_that_was_detected_merge(tmp_path, ranking_file):
    for index, input_format in enumerate(["auto", "mteb"]):  # one machine named the format, the other did not
        shard = Shard(index, 2)
        score_source(str(ranking_file), output_path_for(str(ranking_file), tmp_path, shard), [CountingTeacher()],
                     validate_source(str(ranking_file), input_format, shard), input_format=input_format, shard=shard,
                     show_progress=False)  # fmt: skip
    merged, lines = merge_shards(str(ranking_file), tmp_path, 2)
    assert is_finished(merged) and lines == 12 * 6
    assert run_scoring(ranking_file, merged, CountingTeacher()).already_complete  # as a rerun compares it


def test_a_shard_without_the_record_the_others_have_is_not_merged(tmp_path, ranking_file):
    score_shards(ranking_file, tmp_path, 2)
    beside(output_path_for(str(ranking_file), tmp_path, Shard(1, 2)), ".run.json").unlink()  # copied without it
    with pytest.raises(InputError, match=r"train_scores.shard-1-of-2.jsonl has no train_scores.shard-1-of-2.jsonl.run.json "
                                         r"beside it, which the other shards have"):
        merge_shards(str(ranking_file), tmp_path, 2)
    assert not output_path_for(str(ranking_file), tmp_path).exists()


@pytest.mark.parametrize("edit", ["passage", "label"])
def test_shards_of_an_input_edited_since_are_not_merged(tmp_path, ranking_file, edit):
    score_shards(ranking_file, tmp_path, 2)
    records = read_jsonl_records(ranking_file)
    if edit == "passage":
        records[1]["negative"][0] = "edited since"
    else:  # the same pairs in the same order, but the first negative now listed as a positive
        records[1]["positive"].append(records[1]["negative"].pop(0))
    write_jsonl_records(ranking_file, records)
    message = "holds another pair than" if edit == "passage" else "was scored from other content than"
    with pytest.raises(InputError, match=message):
        merge_shards(str(ranking_file), tmp_path, 2)
    assert not output_path_for(str(ranking_file), tmp_path).exists()


def test_a_finished_output_split_into_shards_merges_back_to_itself_whatever_shard_files_were_there(tmp_path,
                                                                                                     ranking_file):
    from rerank_distill.shards import split_into_shards

    output = output_path_for(str(ranking_file), tmp_path)
    run_scoring(ranking_file, output, CountingTeacher(), command=["generate_logits.py", "--the", "run"])
    original, record = output.read_bytes(), json.loads(output.with_name(output.name + ".run.json").read_text())
    stale = output_path_for(str(ranking_file), tmp_path, Shard(0, 2))
    stale.write_text('{"query": "of another run"}\n')  # an earlier run's shard, finished without a record
    stale.with_name(stale.name + ".partial").write_text("")
    split_into_shards(str(ranking_file), tmp_path, 2)
    assert not stale.with_name(stale.name + ".partial").exists()
    merge_shards(str(ranking_file), tmp_path, 2)
    merged_record = json.loads(output.with_name(output.name + ".run.json").read_text())
    assert output.read_bytes() == original
    assert {k: merged_record[k] for k in ("made_with", "counts")} == {k: record[k] for k in ("made_with", "counts")}
    assert merged_record["command"] == record["command"] == ["generate_logits.py", "--the", "run"]


def test_a_merged_output_split_into_shards_for_replicas_keeps_its_shards_commands(tmp_path, ranking_file):
    # a run of replicas that adds another input splits the finished merged file and joins it again: its
    # record kept only a single run's "command", and the commands of the --shard runs that scored it were lost
    from rerank_distill.shards import split_into_shards

    commands = [["generate_logits.py", "--shard", f"{index}/2"] for index in range(2)]
    for index, command in enumerate(commands):
        shard = Shard(index, 2)
        score_source(str(ranking_file), output_path_for(str(ranking_file), tmp_path, shard), [CountingTeacher()],
                     validate_source(str(ranking_file), "auto", shard), chunk_size=5, shard=shard,
                     show_progress=False, command=command)  # fmt: skip
    merged, _ = merge_shards(str(ranking_file), tmp_path, 2)
    record_path = merged.with_name(merged.name + ".run.json")
    assert json.loads(record_path.read_text())["shard_commands"] == commands

    split_into_shards(str(ranking_file), tmp_path, 3)
    merge_shards(str(ranking_file), tmp_path, 3)
    assert json.loads(record_path.read_text())["shard_commands"] == commands

def test_a_chunk_of_queries_without_passages_is_counted_and_written_as_nothing(tmp_path):
    source = write_jsonl_records(tmp_path / "train.jsonl", [
        {"query": "q1", "positive": ["a"], "negative": ["b"]},
        {"query": "alone", "positive": [], "negative": []},
    ])  # fmt: skip
    output = tmp_path / "train_scores.jsonl"
    stats = run_scoring(source, output, CountingTeacher(), chunk_size=2)  # the second chunk holds "alone" only
    assert (stats.queries, stats.pairs) == (2, 2)
    assert [json.loads(line)["passage"] for line in output.read_text().splitlines()] == ["a", "b"]


def test_shards_without_pairs_merge_and_a_failed_merge_leaves_no_output(tmp_path, ranking_file):
    for index in range(20):  # more shards than the file's 12 queries: some hold nothing
        shard = Shard(index, 20)
        expected = validate_source(str(ranking_file), "auto", shard)
        score_source(str(ranking_file), output_path_for(str(ranking_file), tmp_path, shard), [CountingTeacher()],
                     expected, shard=shard, show_progress=False)  # fmt: skip
    merged, lines = merge_shards(str(ranking_file), tmp_path, 20)
    assert lines == len(merged.read_text().splitlines()) == 12 * 6
    assert json.loads(merged.with_name(merged.name + ".run.json").read_text())["made_with"]["pairs"] == 12 * 6
    merged.unlink()
    with open(output_path_for(str(ranking_file), tmp_path, Shard(0, 20)), "a") as shard_file:
        shard_file.write('{"query": "one line too many"}\n')
    with pytest.raises(InputError, match="more lines than"):
        merge_shards(str(ranking_file), tmp_path, 20)
    assert not merged.exists()


def test_a_second_run_on_the_same_output_is_refused_while_the_first_writes(tmp_path, ranking_file):
    from rerank_distill.scoring import claim_output

    output = tmp_path / "train_scores.jsonl"
    with claim_output(output):
        with pytest.raises(InputError, match="another run is writing"):
            with claim_output(output):
                pass
    with claim_output(output):  # free again once the first is done
        pass


def test_a_second_run_stops_before_loading_a_teacher_or_touching_the_first_runs_record(tmp_path, ranking_file, monkeypatch):
    from rerank_distill.scoring import claim_output

    monkeypatch.setattr(teacher_runs, "build_teachers", lambda *a, **k: pytest.fail("a teacher was loaded"))
    with claim_output(tmp_path / "o" / "train_scores.jsonl"):
        with pytest.raises(InputError, match="another run is writing"):
            generate_logits.main(["--model_path", "m", "--input_path", str(ranking_file), "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o" / "args.json").exists()


def test_a_run_begun_under_another_default_chunk_size_is_resumed_with_it(tmp_path, ranking_file):
    output = tmp_path / "train_scores.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_scoring(ranking_file, output, CountingTeacher(fail_on_call=2), chunk_size=7)
    expected = validate_source(str(ranking_file), "auto", Shard())
    assert resume_point(str(ranking_file), output, [CountingTeacher()], expected, chunk_sizes=[5, 7]).chunk_size == 7
    with pytest.raises(InputError, match="unfinished run with other settings"):  # none fits
        resume_point(str(ranking_file), output, [CountingTeacher()], expected, chunk_sizes=[5, 9])
    fresh = resume_point(str(ranking_file), tmp_path / "other.jsonl", [CountingTeacher()], expected, chunk_sizes=[5, 7])
    assert (fresh.chunk_size, fresh.done["pairs"]) == (5, 0)
    resumed = CountingTeacher()
    run_scoring(ranking_file, output, resumed, chunk_size=7)
    assert 0 < len(resumed.calls) < 12 * 6  # only what the first run left


def test_naming_the_format_that_was_detected_changes_nothing_a_rerun_or_resume_compares(tmp_path, ranking_file):
    output = tmp_path / "train_scores.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_scoring(ranking_file, output, CountingTeacher(fail_on_call=2), chunk_size=7)
    resumed = CountingTeacher()
    expected = validate_source(str(ranking_file), "mteb", Shard())
    stats = score_source(str(ranking_file), output, [resumed], expected, input_format="mteb", chunk_size=7,
                         show_progress=False)
    assert stats.resumed_at_pair > 0 and 0 < len(resumed.calls) < 12 * 6  # went on from where "auto" stopped
    assert score_source(str(ranking_file), output, [CountingTeacher()], validate_source(str(ranking_file), "auto", Shard()),
                        input_format="auto", chunk_size=7, show_progress=False).already_complete


def test_a_finished_output_from_other_settings_or_input_is_refused(tmp_path, ranking_file, monkeypatch):
    output = tmp_path / "train_scores.jsonl"
    run_scoring(ranking_file, output, CountingTeacher())
    made = json.loads(output.with_name(output.name + ".run.json").read_text())
    assert made["made_with"]["teachers"] == [CountingTeacher.config] and made["counts"]["pairs"] == 12 * 6

    class OtherTeacher(CountingTeacher):
        config = {"teacher_type": "counting", "model_path": "another"}

    with pytest.raises(InputError, match=r"finished but was scored with other settings or input \(differing: "
                                         r"teachers: model_path\)"):
        run_scoring(ranking_file, output, OtherTeacher())

    class SameModelSpelledOtherwise(CountingTeacher):  # a folder passed as ./m or /abs/m is one model
        config = {"teacher_type": "counting", "model_path": str(tmp_path / "m")}

    later = tmp_path / "later_scores.jsonl"
    run_scoring(ranking_file, later, SameModelSpelledOtherwise())
    monkeypatch.chdir(tmp_path)
    SameModelSpelledOtherwise.config = {"teacher_type": "counting", "model_path": "./m"}
    assert run_scoring(ranking_file, later, SameModelSpelledOtherwise()).already_complete
    # a finished file without its .run.json (copied here without it) cannot say how it was made: never reused
    later.with_name(later.name + ".run.json").unlink()
    with pytest.raises(InputError, match=r"later_scores.jsonl exists but has no later_scores.jsonl.run.json beside it"):
        run_scoring(ranking_file, later, SameModelSpelledOtherwise())
    assert not run_scoring(ranking_file, later, SameModelSpelledOtherwise(), overwrite=True).already_complete
    edited = ranking_file.read_text().replace('"negative": ["', '"negative": ["edited ', 1)
    original = ranking_file.read_text()
    ranking_file.write_text(edited)  # the same pairs, one passage's text changed: the content differs
    with pytest.raises(InputError, match=r"other settings or input \(differing: input_digest\)"):
        run_scoring(ranking_file, output, CountingTeacher())
    ranking_file.write_text(original)
    assert run_scoring(ranking_file, output, CountingTeacher()).already_complete
    with open(ranking_file, "a") as more:  # the input grew since
        more.write(json.dumps({"query": "new", "positive": ["p"], "negative": ["n"]}) + "\n")
    with pytest.raises(InputError, match=r"\(differing: input_digest, pairs\)"):
        run_scoring(ranking_file, output, CountingTeacher())
    assert run_scoring(ranking_file, output, CountingTeacher(), overwrite=True).pairs == 12 * 6 + 2


def test_merging_before_every_shard_finished_is_refused(tmp_path, ranking_file):
    with pytest.raises(InputError, match="shard file"):
        merge_shards(str(ranking_file), tmp_path, 2)


def test_the_teachers_metrics_against_the_gold_labels_are_those_of_its_scores(tmp_path):
    from rerank_distill.formats import iter_ranking_queries
    from rerank_distill.scoring import teacher_metrics

    data = write_jsonl_records(tmp_path / "data.jsonl", [
        {"query": "git", "positive": ["p1"], "negative": ["n1", "n2"]},
        {"query": "dns", "positive": ["p2", "p3"], "negative": ["n3"]},
        {"query": "tcp", "positive": ["p4"], "negative": []},  # no negative: the mteb protocol skips it
    ])  # fmt: skip
    output = write_jsonl_records(tmp_path / "data_scores.jsonl", [
        {"query": "git", "passage": "p1", "score": 0.2, "label": 1},
        {"query": "git", "passage": "n1", "score": 0.9, "label": 0},
        {"query": "git", "passage": "n2", "score": 0.1, "label": 0},
        {"query": "dns", "passage": "p2", "score": 0.7, "label": 1},
        {"query": "dns", "passage": "p3", "score": 0.1, "label": 1},
        {"query": "dns", "passage": "n3", "score": 0.5, "label": 0},
        {"query": "tcp", "passage": "p4", "score": 0.3, "label": 1},
    ])  # fmt: skip
    # git ranks n1 p1 n2: AP 1/2, RR 1/2, NDCG (1/log2 3) / 1
    # dns ranks p2 n3 p3: AP (1/1 + 2/3) / 2 = 5/6, RR 1, NDCG (1 + 1/log2 4) / (1 + 1/log2 3)
    log2_3 = np.log2(3)
    got = teacher_metrics(output, iter_ranking_queries(str(data), "auto"))
    assert got["map"] == pytest.approx((1 / 2 + 5 / 6) / 2)
    assert got["mrr@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert got["ndcg@10"] == pytest.approx((1 / log2_3 + 1.5 / (1 + 1 / log2_3)) / 2)
    assert (got["queries_evaluated"], got["queries_skipped"]) == (2, 1)
    write_jsonl_records(output, [{**line, "label": None} for line in read_jsonl_records(output)])  # no gold labels
    assert teacher_metrics(output, iter_ranking_queries(str(data), "auto")) is None
    output.write_text("")  # only queries without passages
    assert teacher_metrics(output, []) is None


def test_each_of_several_teachers_has_its_own_metrics_beside_the_combined_scores(tmp_path, caplog):
    from rerank_distill.formats import iter_ranking_queries
    from rerank_distill.scoring import log_teacher_metrics

    data = write_jsonl_records(tmp_path / "data.jsonl", [
        {"query": "git", "positive": ["p1"], "negative": ["n1", "n2"]},
        {"query": "dns", "positive": ["p2"], "negative": ["n3"]},
        {"query": "tcp", "positive": ["p4"], "negative": []},  # skipped for every teacher alike
    ])  # fmt: skip
    # (passage, label, combined, a, b): a ranks both positives first, b puts git's last and dns's first
    rows = [("p1", 1, 0.5, 3.0, -1.0), ("n1", 0, 0.9, 1.0, 2.0), ("n2", 0, 0.1, 0.0, 1.0),
            ("p2", 1, 0.8, 2.0, 5.0), ("n3", 0, 0.2, 1.0, 4.0), ("p4", 1, 0.3, 0.0, 0.0)]
    queries = ["git"] * 3 + ["dns"] * 2 + ["tcp"]
    output = write_jsonl_records(tmp_path / "data_scores.jsonl", [
        {"query": query, "passage": passage, "score": combined, "label": label, "teacher_scores": {"a": a, "b": b}}
        for query, (passage, label, combined, a, b) in zip(queries, rows)
    ])  # fmt: skip
    with caplog.at_level(logging.INFO):
        got = log_teacher_metrics(output, iter_ranking_queries(str(data), "auto"))
    # combined: git ranks n1 p1 n2 (AP 1/2), dns p2 first (AP 1); a: both first; b: git's p1 third (AP 1/3), dns 1
    log2_4 = np.log2(4)
    assert (got["map"], got["queries_evaluated"], got["queries_skipped"]) == (pytest.approx(3 / 4), 2, 1)
    assert got["teachers"]["a"] == {"map": 1.0, "mrr@10": 1.0, "ndcg@10": 1.0}
    assert got["teachers"]["b"] == pytest.approx({"map": (1 / 3 + 1) / 2, "mrr@10": (1 / 3 + 1) / 2,
                                                  "ndcg@10": (1 / log2_4 + 1) / 2})
    assert "the teachers' combined score against the gold labels: MAP 0.7500" in caplog.text
    assert "teacher a alone: MAP 1.0000" in caplog.text and "teacher b alone: MAP 0.6667" in caplog.text


def test_two_lists_of_one_query_text_side_by_side_are_two_rankings_as_evaluation_ranks_them(tmp_path):
    from rerank_distill.formats import iter_ranking_queries
    from rerank_distill.metrics import evaluate_rankings
    from rerank_distill.scoring import teacher_metrics

    data = write_jsonl_records(tmp_path / "data.jsonl", [
        {"query": "bank", "positive": ["p1"], "negative": ["n1"]},
        {"query": "bank", "positive": ["p2"], "negative": ["n2"]},
    ])  # fmt: skip
    output = write_jsonl_records(tmp_path / "data_scores.jsonl", [
        {"query": "bank", "passage": "p1", "score": 0.9, "label": 1},
        {"query": "bank", "passage": "n1", "score": 0.1, "label": 0},
        {"query": "bank", "passage": "p2", "score": 0.5, "label": 1},
        {"query": "bank", "passage": "n2", "score": 0.8, "label": 0},
    ])  # fmt: skip
    # stage 4 ranks each record's list apart: AP 1 and 1/2 (joined into one list of four it would be 5/6)
    expected = evaluate_rankings([([0.9, 0.1], [1, 0]), ([0.5, 0.8], [1, 0])], "mteb", 10)
    got = teacher_metrics(output, iter_ranking_queries(str(data), "auto"))
    assert (got["map"], got["queries_evaluated"]) == (expected["map"], 2) == (0.75, 2)


def test_shard_flag_is_checked():
    assert Shard.parse("1/4") == Shard(1, 4)
    with pytest.raises(InputError):
        Shard.parse("4/4")
    with pytest.raises(InputError):
        Shard.parse("half")
    with pytest.raises(InputError, match="N, the number of shards, must be at least 1"):
        Shard.parse("1/0")


def test_a_merge_of_one_shard_is_refused_and_leaves_the_scoring_runs_record(tmp_path, ranking_file):
    """A run of one shard writes the output under its own name, so --merge_shards 1 would join the
    output into itself and put a record of the merge (naming itself as the shard's record) in
    place of the args.json that names the teachers."""
    record = tmp_path / "args.json"
    record.write_text('{"command": ["generate_logits.py"]}')
    with pytest.raises(InputError, match="--merge_shards 1: a run of one shard writes the output itself"):
        generate_logits.main(["--model_path", "m", "--input_path", str(ranking_file), "--output_dir", str(tmp_path),
                              "--merge_shards", "1"])
    assert record.read_text() == '{"command": ["generate_logits.py"]}'


def test_a_teacher_that_gives_one_score_to_everything_stops_the_run(tmp_path, ranking_file):
    class ConstantTeacher(CountingTeacher):
        def score(self, queries, passages, progress=lambda n: None):
            return TeacherScores(np.full(len(queries), 0.73))

    with pytest.raises(InputError, match=r"same score \(0.73\); check that the model is a trained one") as stopped:
        run_scoring(ranking_file, tmp_path / "out.jsonl", ConstantTeacher())
    assert "vLLM" not in str(stopped.value)  # (the hint of a broken LLM judge's prompt is not this teacher's)


def test_a_resumed_run_still_checks_that_scores_vary_where_its_saved_chunks_could_not_show_it(tmp_path):
    class ConstantTeacher(CountingTeacher):
        def score(self, queries, passages, progress=lambda n: None):
            super().score(queries, passages, progress)  # (counts the call: the second one stops the run)
            return TeacherScores(np.full(len(queries), 0.73))

    source = write_jsonl_records(tmp_path / "d.jsonl", [  # a first chunk of one pair tells nothing of variation
        {"query": "a", "positive": ["p"], "negative": []}, {"query": "b", "positive": ["p"], "negative": ["n"]}])
    with pytest.raises(KeyboardInterrupt):
        run_scoring(source, tmp_path / "out.jsonl", ConstantTeacher(fail_on_call=2), chunk_size=1)
    with pytest.raises(InputError, match=r"same score \(0.73\)"):
        run_scoring(source, tmp_path / "out.jsonl", ConstantTeacher(), chunk_size=1)

def test_a_teacher_that_gives_a_pair_no_finite_score_stops_the_run_with_nothing_finished(tmp_path, ranking_file):
    class OverflowingTeacher(CountingTeacher):
        def score(self, queries, passages, progress=lambda n: None):
            scores = np.arange(len(queries), dtype=np.float64)
            scores[-1] = np.nan
            return TeacherScores(scores)

    with pytest.raises(InputError, match=r"gave 1 of \d+ pairs a score that is not finite \(nan; first: query"):
        run_scoring(ranking_file, tmp_path / "out.jsonl", OverflowingTeacher())
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"query": "q", "positive": ["a"], "negative": ["b"]}\n{"query": "q2", "positive": [\n', ":2: not valid JSON"),
        ('{"query": "q", "positive": ["a"], "negative": ["b"]}\n{"positive": ["a"], "negative": []}\n', ':2: missing field "query"'),
        ('{"query": "q", "positive": "a", "negative": [3]}\n', ':1: field "negative" must be a list of strings'),
        ("", "contains no records"),
        ('{"query": "q", "positive": [], "negative": []}\n' * 2, ": nothing to score: none of its 2 queries has a passage"),
        ('{"query": "q", "positive": [], "negative": []}\n', ": nothing to score: its one query has no passage"),
        ('{"query": "q", "positive": ["a"], "negative": []}\n' * 3 + '{"query": "caf\xe9"}\n', ":4: not UTF-8 (byte 0xe9 at character 15"),
        ('{"query": "q", "positive": ["a"], "negative": []}\n{"query": "cut \\ud83d", "positive": ["a"], "negative": []}\n',
         ':2: field "query" holds a lone surrogate \\ud83d'),
        ('{"query": "q", "passage": "a", "label": 1, "product_id": "\\udc00"}\n', ":1: id column 'product_id' holds a lone surrogate"),
    ],
)
def test_bad_input_stops_before_any_model_is_loaded(tmp_path, monkeypatch, content, message):
    source = tmp_path / "bad.jsonl"
    source.write_bytes(content.encode("latin-1" if "caf\xe9" in content else "utf-8"))
    monkeypatch.setattr(teacher_runs, "build_teachers", lambda *a: pytest.fail("model loaded before input was checked"))
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("(", r"\(").replace("\\u", r"\\u")) as error:
        generate_logits.main(["--model_path", "unused", "--input_path", str(source), "--output_dir", str(tmp_path / "o")])
    assert str(source) in str(error.value)
    assert not (tmp_path / "o" / "bad_scores.jsonl").exists()


def test_an_input_without_any_pair_is_refused_by_each_shards_run_as_by_a_single_run(tmp_path, teacher_never_loads):
    source = tmp_path / "train.jsonl"
    source.write_text('{"query": "q1", "positive": [], "negative": []}\n{"query": "q2", "positive": [], "negative": []}\n')
    for index in range(2):  # (each share alone would be an empty output; joined, an empty file stage 2 refuses)
        with pytest.raises(InputError, match="nothing to score: none of its 2 queries has a passage"):
            generate_logits.main(["--model_path", "m", "--input_path", str(source), "--output_dir", str(tmp_path / "o"),
                                  "--shard", f"{index}/2"])
    assert not (tmp_path / "o").exists()


def test_an_instruction_of_bytes_that_are_not_utf8_is_refused_before_any_model_is_loaded(tmp_path, monkeypatch,
                                                                                          ranking_file):
    monkeypatch.setattr(teacher_runs, "build_teachers", lambda *a: pytest.fail("model loaded before input was checked"))
    with pytest.raises(InputError, match=r"^--instruction holds a byte that is not UTF-8 \(0xe9 at character 4\)"):
        generate_logits.main(["--model_path", "unused", "--input_path", str(ranking_file), "--output_dir",
                              str(tmp_path / "o"), "--instruction", os.fsdecode(b"caf\xe9 questions")])


@pytest.mark.parametrize("flag_again", [False, True])
def test_two_inputs_that_would_write_one_output_file_are_both_named(tmp_path, ranking_file, flag_again):
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / ranking_file.name
    twin.write_bytes(ranking_file.read_bytes())
    inputs = [str(ranking_file), *(["--input_path"] if flag_again else []), str(twin)]  # (given again: added to)
    with pytest.raises(InputError, match=f"^--input_path {ranking_file} and {twin} would both write "
                                         f"{tmp_path / 'o' / 'train_scores.jsonl'} "):
        generate_logits.main(["--model_path", "m", "--input_path", *inputs, "--output_dir", str(tmp_path / "o")])


def test_an_input_that_is_also_one_of_its_outputs_is_refused_before_it_is_touched(tmp_path, ranking_file):
    (tmp_path / "o").mkdir()
    earlier = tmp_path / "o" / "train_scores.jsonl"  # an earlier run's scores, given as data to score
    earlier.write_bytes(ranking_file.read_bytes())
    with pytest.raises(InputError, match=f"^--output_dir's file {earlier} is an input of this run"):
        generate_logits.main(["--model_path", "m", "--input_path", str(ranking_file), str(earlier), "--output_dir",
                              str(tmp_path / "o"), "--overwrite"])  # fmt: skip
    assert earlier.read_bytes() == ranking_file.read_bytes()


def test_a_hub_model_that_cannot_be_fetched_leaves_no_output_folder(tmp_path, ranking_file):
    with pytest.raises(InputError, match="could not fetch model 'someone/some-reranker'"):
        generate_logits.main(["--model_path", "someone/some-reranker", "--input_path", str(ranking_file),
                              "--output_dir", str(tmp_path / "scores")])
    assert not (tmp_path / "scores").exists()


def test_a_missing_model_path_is_named(tmp_path, ranking_file):
    with pytest.raises(InputError, match="model path './no/such/model' does not exist"):
        generate_logits.main(["--model_path", "./no/such/model", "--input_path", str(ranking_file), "--output_dir", str(tmp_path)])


@pytest.mark.parametrize("teacher_type", ["llm_yesno", "cross_encoder", "embedding"])
def test_a_folder_that_holds_no_model_is_named(tmp_path, ranking_file, teacher_type):
    (tmp_path / "notes").mkdir()
    with pytest.raises(InputError, match=f"'{tmp_path / 'notes'}' holds no model: .*config.json"):
        generate_logits.main([
            "--teacher_type", teacher_type, "--model_path", str(tmp_path / "notes"),
            "--input_path", str(ranking_file), "--output_dir", str(tmp_path / "o"),
        ])  # fmt: skip
    assert not (tmp_path / "o" / "train_scores.jsonl").exists()


def test_an_llm_judge_without_weights_is_named(tmp_path, ranking_file, tiny_qwen3):
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    for file in tiny_qwen3.iterdir():
        if not file.name.endswith((".safetensors", ".bin")):
            shutil.copy(file, no_weights / file.name)
    with pytest.raises(InputError, match=f"cannot load a causal LM judge from '{no_weights}'"):
        generate_logits.main(["--model_path", str(no_weights), "--input_path", str(ranking_file), "--output_dir", str(tmp_path / "o")])


def test_a_judge_that_fails_to_load_leaves_the_output_it_would_overwrite(tmp_path, ranking_file, tiny_qwen3):
    output_dir = tmp_path / "o"
    generate_logits.main(["--model_path", str(tiny_qwen3), "--input_path", str(ranking_file),
                          "--output_dir", str(output_dir), "--no_show_progress"])  # fmt: skip
    finished = {path.name: path.read_bytes() for path in output_dir.iterdir()}
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    for file in tiny_qwen3.iterdir():
        if not file.name.endswith((".safetensors", ".bin")):
            shutil.copy(file, no_weights / file.name)

    with pytest.raises(InputError, match="cannot load a causal LM judge"):
        generate_logits.main(["--model_path", str(no_weights), "--input_path", str(ranking_file),
                              "--output_dir", str(output_dir), "--overwrite"])  # fmt: skip
    assert {path.name: path.read_bytes() for path in output_dir.iterdir()} == finished


@pytest.mark.parametrize("flag", ["--batch_size", "--chunk_size"])
def test_a_size_below_one_stops_the_run_before_anything_is_written(ranking_file, tmp_path, flag):
    with pytest.raises(InputError, match=f"^{flag} must be at least 1, got 0$"):
        generate_logits.main(["--model_path", "m", "--input_path", str(ranking_file), "--output_dir", str(tmp_path / "o"),
                              flag, "0"])  # fmt: skip
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("backend", ["auto", "vllm"])
def test_a_vllm_older_than_its_pooling_api_is_refused_with_what_to_do(monkeypatch, backend):
    monkeypatch.setattr("rerank_distill.teachers.vllm_installed", lambda: True)
    monkeypatch.setattr("rerank_distill.teachers.cuda_available", lambda: True)
    monkeypatch.setattr("importlib.metadata.version", lambda name: {"vllm": "0.10.2"}[name])
    with pytest.raises(InputError, match=r"^vLLM 0\.10\.2 is older than 0\.11\.1.*requirements-gpu.txt.*--backend hf"):
        choose_backend(backend)
    for accepted in ("0.33.0", "0.11.1rc1", "0.12.0.dev5+g1234"):  # a release's candidates count as it
        monkeypatch.setattr("importlib.metadata.version", lambda name, accepted=accepted: {"vllm": accepted}[name])
        assert choose_backend(backend) == "vllm"


def test_a_vllm_without_package_metadata_is_not_refused(monkeypatch):
    from importlib.metadata import PackageNotFoundError

    def no_metadata(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr("rerank_distill.teachers.vllm_installed", lambda: True)
    monkeypatch.setattr("rerank_distill.teachers.cuda_available", lambda: True)
    monkeypatch.setattr("importlib.metadata.version", no_metadata)
    assert choose_backend("vllm") == "vllm"


def test_a_backend_refused_leaves_no_output_folder(tmp_path, ranking_file, monkeypatch):
    monkeypatch.setattr("rerank_distill.teachers.vllm_installed", lambda: False)
    with pytest.raises(InputError, match="--backend vllm needs vLLM"):
        generate_logits.main(["--model_path", "m", "--backend", "vllm", "--input_path", str(ranking_file),
                              "--output_dir", str(tmp_path / "scores")])
    assert not (tmp_path / "scores").exists()


def test_scores_are_not_written_into_a_data_set_folder_being_read(tmp_path, ranking_file):
    folder = tmp_path / "so"
    folder.mkdir()
    shutil.copy(ranking_file, folder / "train.jsonl")
    with pytest.raises(InputError, match="is inside the data-set folder"):  # train_scores.jsonl: a split of its own
        generate_logits.main(["--model_path", "m", "--input_path", f"{folder}:train", "--output_dir", str(folder / "scores")])
    assert not (folder / "scores").exists()


def test_auto_backend_is_hf_without_vllm_or_gpu(monkeypatch):
    monkeypatch.setattr("rerank_distill.teachers.vllm_installed", lambda: False)
    assert choose_backend("auto") == "hf"
    with pytest.raises(InputError, match="requirements-gpu"):
        choose_backend("vllm")


def test_the_command_line_reports_bad_input_in_one_line(tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text("not json\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "generate_logits.py", "--model_path", "x", "--input_path", str(source), "--output_dir", str(tmp_path)],
        capture_output=True, text=True, cwd=os.path.dirname(generate_logits.__file__),
    )  # fmt: skip
    assert result.returncode == 2
    assert f"error: {source}:1: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_replicas_score_shards_in_parallel_and_join_them_in_input_order(tiny_qwen3, ranking_file, tmp_path):
    common = ["--model_path", str(tiny_qwen3), "--input_path", str(ranking_file), "--batch_size", "4", "--no_show_progress",
              "--device", "cpu"]  # two replicas on a CPU, also where one GPU is visible
    generate_logits.main([*common, "--output_dir", str(tmp_path / "one")])
    generate_logits.main([*common, "--output_dir", str(tmp_path / "two"), "--data_parallel_size", "2"])
    single = [json.loads(l) for l in (tmp_path / "one" / "train_scores.jsonl").read_text().splitlines()]
    joined = [json.loads(l) for l in (tmp_path / "two" / "train_scores.jsonl").read_text().splitlines()]
    assert [(l["query"], l["passage"], l["label"]) for l in joined] == [(l["query"], l["passage"], l["label"]) for l in single]
    np.testing.assert_allclose([l["score"] for l in joined], [l["score"] for l in single], atol=1e-5)
    assert (tmp_path / "two" / "logs" / "shard-1-of-2.log").exists()
    recorded = (tmp_path / "two" / "args.json").read_text()
    replicas = json.loads(recorded)["resolved"]["replica_records"]
    assert replicas == ["args.shard-0-of-2.json", "args.shard-1-of-2.json"]
    assert all((tmp_path / "two" / name).exists() for name in replicas)
    finished = (tmp_path / "two" / "train_scores.jsonl").stat().st_mtime_ns
    generate_logits.main([*common, "--output_dir", str(tmp_path / "two"), "--data_parallel_size", "3", "--batch_size", "7"])
    assert (tmp_path / "two" / "args.json").read_text() == recorded  # nothing to do: still the run that did the work
    assert (tmp_path / "two" / "train_scores.jsonl").stat().st_mtime_ns == finished
    assert not (tmp_path / "two" / "logs" / "shard-0-of-3.log").exists()
    with pytest.raises(InputError, match=r"other settings or input \(differing: teachers: max_length\)"):
        generate_logits.main([*common, "--output_dir", str(tmp_path / "two"), "--data_parallel_size", "2",
                              "--max_length", "300"])
    # a finished output and one still to score: the first is checked and kept, the second scored
    scored = (tmp_path / "two" / "train_scores.jsonl").read_text()
    generate_logits.main([*common, "--output_dir", str(tmp_path / "two"), "--data_parallel_size", "2",
                          "--passages_as_queries", "2"])
    assert (tmp_path / "two" / "train_scores.jsonl").read_text() == scored
    assert (tmp_path / "two" / "train_passages_as_queries_scores.jsonl").exists()
    # the same where the finished output was scored by a single run: its shares are split off, not scored again
    single_run = (tmp_path / "one" / "train_scores.jsonl").read_text()
    generate_logits.main([*common, "--output_dir", str(tmp_path / "one"), "--data_parallel_size", "2",
                          "--passages_as_queries", "2"])
    assert (tmp_path / "one" / "train_scores.jsonl").read_text() == single_run
    assert "train_scores.shard-0-of-2.jsonl is already complete" in (tmp_path / "one" / "logs" / "shard-0-of-2.log").read_text()


def test_replicas_are_started_without_data_parallel_size_whichever_spelling_the_command_used():
    from rerank_distill.replicas import without_flag

    # the parser takes --data-parallel-size for --data_parallel_size; left in a replica's command beside its
    # --shard, every replica stopped with "--shard ... --data_parallel_size handles every share"
    for given in (["--data-parallel-size", "2"], ["--data-parallel-size=2"], ["--data_parallel_size", "2"]):
        argv = ["--model_path", "m", *given, "--batch_size", "4"]
        assert without_flag(argv, "--data_parallel_size") == ["--model_path", "m", "--batch_size", "4"]


def test_a_run_with_another_number_of_shards_than_a_stopped_one_says_it_starts_over(tiny_qwen3, ranking_file,
                                                                                    tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("train_scores.shard-0-of-2.jsonl.partial", "train_scores.shard-1-of-2.jsonl.partial"):
        (out / name).write_text("")  # what a stopped --data_parallel_size 2 run leaves
    caplog.set_level(logging.WARNING)
    generate_logits.main(["--model_path", str(tiny_qwen3), "--input_path", str(ranking_file), "--output_dir", str(out),
                          "--no_show_progress", "--device", "cpu"])
    assert ("a stopped run with another number of shards left train_scores.shard-0-of-2.jsonl.partial, "
            "train_scores.shard-1-of-2.jsonl.partial; this run, with none, cannot continue them") in caplog.text
    assert (out / "train_scores.jsonl").exists()


def test_replicas_started_where_a_stopped_unsharded_run_left_its_chunks_say_they_start_over(ranking_file, tmp_path,
                                                                                           caplog):
    from rerank_distill.shards import warn_of_other_shard_counts

    output = tmp_path / "train_scores.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_scoring(ranking_file, output, CountingTeacher(fail_on_call=4))
    caplog.set_level(logging.WARNING)
    warn_of_other_shard_counts(output, 1)  # the same run again continues it: nothing to say
    assert "cannot continue" not in caplog.text
    warn_of_other_shard_counts(output, 2)  # --data_parallel_size 2 scores every query again, in shard files
    assert ("a stopped run with another number of shards left train_scores.jsonl.partial; this run, with 2 shards, "
            "cannot continue them") in caplog.text

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal (prctl) is Linux's")
@pytest.mark.parametrize("launcher_kind", ["run_replicas", "torchrun"])
def test_a_replica_stops_when_its_launcher_is_killed_outright(tmp_path, launcher_kind):
    # a launcher as run_replicas is one (it puts its own id in the replica's environment) or as torchrun is
    # one (a run id, and the worker in a session of its own): it starts a replica, then is SIGKILLed
    replica = ("from rerank_distill.replicas import stop_with_launcher; stop_with_launcher(); import time; "
               "print('ready', flush=True); time.sleep(120)")
    marker = "LAUNCHER_PID: str(os.getpid())" if launcher_kind == "run_replicas" else "'TORCHELASTIC_RUN_ID': 'none'"
    launcher = (f"import os, subprocess, sys, time; from rerank_distill.replicas import LAUNCHER_PID; "
                f"child = subprocess.Popen([sys.executable, '-c', {replica!r}], start_new_session=True, "
                f"env={{**os.environ, {marker}}}); "
                f"print(child.pid, flush=True); time.sleep(120)")
    started = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True,
                               cwd=os.path.dirname(generate_logits.__file__))
    replica_pid = int(started.stdout.readline())
    assert started.stdout.readline().strip() == "ready"
    started.kill()
    started.wait()

    def running(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        return state != "Z"  # (a zombie has ended; whoever adopted it may be slow to reap it)

    deadline = time.monotonic() + 20
    while running(replica_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(replica_pid)


# --- passages as queries ---------------------------------------------------------------------------


def test_passages_become_queries_against_the_rest_of_their_list_with_the_query_first():
    from rerank_distill.formats import RankingQuery
    from rerank_distill.scoring import derive_passage_queries

    query = RankingQuery("q", ["a", "b", "a", "q", "c"], [1.0, 0.0, 1.0, 0.0, 0.0], "train.jsonl:3")
    derived = list(derive_passage_queries([query], per_list=2))
    assert [(d.query, d.passages, d.labels) for d in derived] == [
        ("a", ["q", "b", "c"], [None, None, None]),  # duplicates and the query's own text counted once
        ("b", ["q", "a", "c"], [None, None, None]),
    ]
    assert derived[0].location == "train.jsonl:3 (passage as query)"
    assert [d.query for d in derive_passage_queries([query], per_list=100)] == ["a", "b", "c"]
    blank = RankingQuery("q", ["", "a", " ", "b"], [0.0] * 4, "train.jsonl:4")  # no query, and no slot taken
    assert [(d.query, d.passages) for d in derive_passage_queries([blank], per_list=2)] == [
        ("a", ["q", "", " ", "b"]), ("b", ["q", "", "a", " "])]


def test_passages_as_queries_go_to_a_file_of_their_own_and_leave_the_scores_file_unchanged(
    tiny_embedding_model, ranking_file, tmp_path
):
    common = ["--teacher_type", "embedding", "--model_path", str(tiny_embedding_model), "--input_path",
              str(ranking_file), "--device", "cpu", "--no_show_progress"]
    generate_logits.main([*common, "--output_dir", str(tmp_path / "plain")])
    summary = generate_logits.main([*common, "--output_dir", str(tmp_path / "both"), "--passages_as_queries", "2"])

    plain = (tmp_path / "plain" / "train_scores.jsonl").read_bytes()
    assert (tmp_path / "both" / "train_scores.jsonl").read_bytes() == plain
    derived_path = tmp_path / "both" / "train_passages_as_queries_scores.jsonl"
    lines = [json.loads(line) for line in derived_path.read_text().splitlines()]
    records = [json.loads(line) for line in ranking_file.read_text().splitlines()]
    expected = []
    for record in records:
        members = list(dict.fromkeys([record["query"], *record["positive"], *record["negative"]]))
        expected += [(p, other) for p in members[1:3] for other in members if other != p]
    assert [(l["query"], l["passage"]) for l in lines] == expected
    assert all(l["label"] is None and np.isfinite(l["score"]) for l in lines)
    assert summary[str(derived_path)]["pairs"] == len(expected)
    args = json.loads((tmp_path / "both" / "args.passages_as_queries.json").read_text())
    assert args["script"]["passages_as_queries"] == 2 and not (tmp_path / "both" / "args.json").exists()


def test_passages_as_queries_shards_merge_like_a_single_run(tmp_path, ranking_file):
    single = output_path_for(str(ranking_file), tmp_path / "single", passages_as_queries=3)
    expected = validate_source(str(ranking_file), "auto", Shard(), 3)
    score_source(str(ranking_file), single, [CountingTeacher()], expected, show_progress=False, passages_as_queries=3)
    for index in range(2):
        shard = Shard(index, 2)
        score_source(str(ranking_file), output_path_for(str(ranking_file), tmp_path / "sharded", shard, 3),
                     [CountingTeacher()], validate_source(str(ranking_file), "auto", shard, 3), shard=shard,
                     show_progress=False, passages_as_queries=3)  # fmt: skip
    merged, lines = merge_shards(str(ranking_file), tmp_path / "sharded", 2, passages_as_queries=3)
    assert merged.name == "train_passages_as_queries_scores.jsonl" and lines == expected.pairs
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "score"}  # noqa: E731
    assert [strip(l) for l in merged.read_text().splitlines()] == [strip(l) for l in single.read_text().splitlines()]


def test_the_launcher_checks_its_later_inputs_before_the_first_is_scored_with_passages_as_queries(
    tiny_embedding_model, ranking_file, tmp_path
):
    broken = tmp_path / "test.jsonl"
    broken.write_text(ranking_file.read_text() + "{not json\n")
    env = {**os.environ, "TEACHER": str(tiny_embedding_model), "TEACHER_TYPE": "embedding",
           "SCORES_DIR": str(tmp_path / "scores"), "INPUTS": f"{ranking_file} {broken}", "PASSAGES_AS_QUERIES": "2",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = launch("generate_logits.sh", "--device", "cpu", env=env, cwd=tmp_path)
    assert done.returncode == 2 and f"{broken}:{len(ranking_file.read_text().splitlines()) + 1}: not valid JSON" in done.stderr
    assert not (tmp_path / "scores").exists()  # the first input was not scored


@pytest.mark.parametrize("value", ["1.5", "08", "2 3", "yes"])
def test_the_launcher_refuses_passages_as_queries_that_is_no_whole_number(ranking_file, tmp_path, value):
    # bash's (( )) read 1.5, "2 3" and 08 (octal) as false after an error line, and scored without the lists
    env = {**os.environ, "INPUTS": f"{ranking_file} {ranking_file}", "PASSAGES_AS_QUERIES": value}
    done = launch("generate_logits.sh", "--model_path", "unused", "--check_inputs_only", env=env, cwd=tmp_path)
    if value == "08":  # a leading zero is no octal number to the user
        assert done.returncode == 0, done.stderr
        assert f"{ranking_file} (passages as queries)" in done.stderr
    else:
        assert done.returncode == 2 and done.stderr == (
            f"generate_logits.sh: PASSAGES_AS_QUERIES must be a whole number of passages (0: off), not '{value}'\n")


@pytest.mark.parametrize("flag", [["--passages_as_queries", "2"], ["--passages-as-queries=2"]])
def test_the_launcher_takes_passages_as_queries_on_its_command_line_for_the_first_input_only(ranking_file, tmp_path,
                                                                                               flag):
    # as PASSAGES_AS_QUERIES does: passed on to one run over INPUTS, it also made lists of the test data's passages
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(ranking_file.read_text())
    env = {**os.environ, "INPUTS": f"{ranking_file} {test_file}"}
    env.pop("PASSAGES_AS_QUERIES", None)
    done = launch("generate_logits.sh", "--model_path", "unused", "--check_inputs_only", *flag, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{ranking_file} (passages as queries)" in done.stderr
    assert f"{test_file}: " in done.stderr and f"{test_file} (passages as queries)" not in done.stderr


def test_the_launcher_says_how_to_give_a_path_with_a_space_its_lists_would_split(ranking_file, tmp_path):
    spaced = tmp_path / "my data" / "train.jsonl"
    spaced.parent.mkdir()
    spaced.write_bytes(ranking_file.read_bytes())
    launcher = ["generate_logits.sh", "--check_inputs_only"]
    refused = launch(*launcher, "--model_path", "unused", env={**os.environ, "INPUTS": str(spaced)}, cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr == (
        f"generate_logits.sh: INPUTS is one path with a space in it, '{spaced}', but it is a space-separated list; "
        f"give that path as a flag instead: ./generate_logits.sh --input_path '{spaced}'\n")
    # the flag the message names, which replaces INPUTS, is taken
    done = launch(*launcher, "--model_path", "unused", "--input_path", str(spaced),
                  env={**os.environ, "INPUTS": str(spaced)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    teacher = launch(*launcher,
                     env={**os.environ, "INPUTS": str(ranking_file), "TEACHER": str(spaced.parent)}, cwd=tmp_path)
    assert teacher.returncode == 2 and f"give that path as a flag instead: ./generate_logits.sh --model_path '{spaced.parent}'" in teacher.stderr
    # a path with a quote in it: the command given pastes as it is
    quoted = tmp_path / "it's mine" / "train.jsonl"
    quoted.parent.mkdir()
    quoted.write_bytes(ranking_file.read_bytes())
    refused = launch(*launcher, "--model_path", "unused", env={**os.environ, "INPUTS": str(quoted)}, cwd=tmp_path)
    command = refused.stderr.split("give that path as a flag instead: ", 1)[1]
    assert refused.returncode == 2 and shlex.split(command) == ["./generate_logits.sh", "--input_path", str(quoted)]


def test_the_launcher_reads_every_line_of_a_list_setting_given_over_several_lines(ranking_file, tmp_path):
    # INPUTS="$(ls data/*.jsonl)" or a list written over several lines: read -a took its first line alone, so the
    # other inputs (and teachers) were dropped without a word
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(ranking_file.read_text())
    env = {**os.environ, "INPUTS": f"\n{ranking_file}\n{test_file}\n", "TEACHER": "a\nb",
           "TEACHER_TYPE": "embedding\n embedding"}
    done = launch("generate_logits.sh", "--check_inputs_only", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # not "--teacher_type has 2 values for 1 --model_path values"
    assert f"{ranking_file}: " in done.stderr and f"{test_file}: " in done.stderr


def test_the_launcher_passes_an_instruction_that_begins_with_a_dash(ranking_file, tmp_path):
    # (an embedding teacher reads no instruction, so the script's warning shows the value that reached it)
    env = {**os.environ, "INPUTS": str(ranking_file), "INSTRUCTION": "-q: a question, find its twins",
           "TEACHER_TYPE": "embedding"}
    done = launch("generate_logits.sh", "--model_path", "unused", "--check_inputs_only", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # not "argument --instruction: expected one argument"
    assert "--instruction -q: a question, find its twins is not read" in done.stderr, done.stderr


def test_an_input_holding_teacher_scores_already_is_warned_about(ranking_file, tmp_path, caplog):
    # (with labels, as stage 1 writes them: scores without any are refused as no ranking data, pointing to stage 2)
    scores = write_jsonl_records(tmp_path / "train_scores.jsonl", [{"query": "q", "passage": "a", "score": 1.0, "label": 1},
                                                                 {"query": "q", "passage": "b", "score": 0.5, "label": 0}])
    generate_logits.main(["--model_path", "m", "--input_path", str(ranking_file), str(scores), "--output_dir",
                          str(tmp_path / "scores"), "--check_inputs_only"])  # fmt: skip
    warned = [record.getMessage() for record in caplog.records if "holds teacher scores already" in record.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(str(scores))


def test_check_inputs_only_reads_every_input_and_loads_no_teacher(ranking_file, tmp_path):
    checked = generate_logits.main(["--model_path", str(tmp_path / "no-such-model"), "--input_path", str(ranking_file),
                                    "--output_dir", str(tmp_path / "scores"), "--passages_as_queries", "2",
                                    "--check_inputs_only"])  # fmt: skip
    assert list(checked) == [str(ranking_file), f"{ranking_file} (passages as queries)"]
    assert checked[str(ranking_file)]["pairs"] == sum(
        len(r["positive"]) + len(r["negative"]) for r in map(json.loads, ranking_file.read_text().splitlines()))
    assert not (tmp_path / "scores").exists()
    with pytest.raises(InputError, match="--merge_shards joins finished shard files and --check_inputs_only reads"):
        generate_logits.main(["--model_path", "m", "--input_path", str(ranking_file), "--output_dir",
                              str(tmp_path / "scores"), "--merge_shards", "2", "--check_inputs_only"])  # fmt: skip


def test_a_merge_goes_without_replicas_which_join_their_shares_themselves(ranking_file, tmp_path):
    with pytest.raises(InputError, match="--merge_shards joins shard files scored already and --data_parallel_size"):
        generate_logits.main(["--model_path", "m", "--input_path", str(ranking_file), "--output_dir",
                              str(tmp_path / "scores"), "--merge_shards", "2", "--data_parallel_size", "2"])  # fmt: skip


def test_the_launcher_runs_no_check_ahead_of_a_run_that_scores_nothing(ranking_file, tmp_path):
    env = {**os.environ, "INPUTS": f"{ranking_file} {ranking_file}", "PASSAGES_AS_QUERIES": "2"}
    done = launch("generate_logits.sh", "--help", env=env, cwd=tmp_path)
    assert done.stdout.count("usage: generate_logits.py") == 1  # the first run's help ends the launcher


def test_the_launchers_score_passages_as_queries_for_the_first_input_and_stage_2_reads_them(
    tiny_embedding_model, ranking_file, tmp_path
):
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(ranking_file.read_text())
    scores, records = tmp_path / "scores", tmp_path / "records.jsonl"
    # (stage 2 reads its scores from stage 1's SCORES_DIR: one variable, one meaning, in every launcher)
    env = {**os.environ, "TEACHER": str(tiny_embedding_model), "TEACHER_TYPE": "embedding", "SCORES_DIR": str(scores),
           "INPUTS": f"{ranking_file} {test_file}", "PASSAGES_AS_QUERIES": "2", "TRIPLETS": str(records),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    for launcher, flags in (("generate_logits.sh", ["--device", "cpu", "--no_show_progress"]), ("create_triplets.sh", [])):
        done = launch(launcher, *flags, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "is not read" not in done.stderr  # a launcher passes only the flags its settings read

    assert sorted(path.name for path in scores.glob("*.jsonl")) == [
        "test_scores.jsonl", "train_passages_as_queries_scores.jsonl", "train_scores.jsonl"]  # fmt: skip
    # one run per file: the first input with its lists, then the rest
    with_lists = json.loads((scores / "args.passages_as_queries.json").read_text())["script"]
    assert with_lists["input_path"] == [str(ranking_file)] and with_lists["passages_as_queries"] == 2
    assert json.loads((scores / "args.json").read_text())["script"]["input_path"] == [str(test_file)]
    queries = {json.loads(line)["query"] for line in records.read_text().splitlines()}
    derived = {json.loads(line)["query"] for line in (scores / "train_passages_as_queries_scores.jsonl").open()}
    assert derived <= queries and len(queries) > len(derived)
    # a SCORES_DIR written with a ~ the shell left alone, as the stages read it: the home folder
    done = launch("create_triplets.sh", env={**env, "HOME": str(tmp_path), "SCORES_DIR": "~/scores"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "adding the passages-as-queries lists of ~/scores/train_passages_as_queries_scores.jsonl" in done.stderr
    # options that need gold labels on every line leave the unlabelled lists out
    done = launch("create_triplets.sh", "--label_margin", "1", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "leaving out" in done.stderr
    original = {json.loads(line)["query"] for line in ranking_file.read_text().splitlines()}
    assert {json.loads(line)["query"] for line in records.read_text().splitlines()} <= original
    # lists older than SCORES were left by an earlier run (on other data, maybe): left out, and said so
    os.utime(scores / "train_passages_as_queries_scores.jsonl", (0, 0))
    done = launch("create_triplets.sh", env=env, cwd=tmp_path)
    assert done.returncode == 0 and "older than" in done.stderr
    # nor with its other formats and positives; a size set empty is its default, not a setting given
    for settings in ({"FORMAT": "triplets"}, {"POSITIVES": "labels"}, {"FORMAT": "triplets", "GROUP_SIZE": ""},
                     {"POSITIVES": "labels", "TOP_K": ""}):  # fmt: skip
        done = launch("create_triplets.sh", env={**env, **settings}, cwd=tmp_path)
        assert done.returncode == 0 and "is not read" not in done.stderr, done.stderr
    done = launch("create_triplets.sh", "--format", "ntuples", env=env, cwd=tmp_path)
    assert done.returncode == 0 and "is not read" not in done.stderr, done.stderr
    # a setting the user gave is passed even where unread, and so warned about, not dropped unsaid
    done = launch("create_triplets.sh", env={**env, "NUM_NEGATIVES": "8"}, cwd=tmp_path)
    assert done.returncode == 0 and "--num_negatives 8 is not read" in done.stderr, done.stderr
    stage_1 = {key: value for key, value in env.items() if key != "TEACHER_TYPE"}
    for settings, flags, warned in (({}, ["--teacher_type", "embedding"], False),  # the command line's type counts
                                    ({"INSTRUCTION": "Find twins"}, [], True)):  # fmt: skip
        environment = {**stage_1, "TEACHER_TYPE": "embedding", **settings} if not flags else stage_1
        done = launch("generate_logits.sh", "--device", "cpu", "--no_show_progress", *flags, env=environment,
                      cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert ("--instruction Find twins is not read" in done.stderr) == warned, done.stderr
    assert {json.loads(line)["query"] for line in records.read_text().splitlines()} <= original
    # --input_path on the command line replaces SCORES and its lists, and the log says nothing of them
    done = launch("create_triplets.sh", "--input_path", str(scores / "test_scores.jsonl"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "passages-as-queries" not in done.stderr and "leaving out" not in done.stderr
    assert json.loads((tmp_path / "records.args.json").read_text())["script"]["input_path"] == [
        str(scores / "test_scores.jsonl")]


def test_several_teachers_move_the_progress_bar_by_their_share_as_each_scores():
    from rerank_distill.scoring import SharedProgress

    updates = []
    shared = SharedProgress(updates.append, teachers=2)
    for batch in (3, 3, 4):  # the first teacher's batches of 10 pairs
        shared(batch)
    assert sum(updates) == 5 and len(updates) == 3  # half the bar, moved as it went
    for batch in (5, 5):  # the second teacher's
        shared(batch)
    assert sum(updates) == 10 == shared.shown


@pytest.mark.parametrize("flag", [["--check_inputs_only"], ["--check_inputs_only=true"], ["--check-inputs-only=1"]])
def test_the_launcher_checks_each_input_once_for_a_check_inputs_only_run_in_any_spelling(ranking_file, tmp_path, flag):
    # the later inputs' check ahead of the first run is the run itself here; missed for --check_inputs_only=true
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(ranking_file.read_text())
    env = {**os.environ, "INPUTS": f"{ranking_file} {test_file}", "PASSAGES_AS_QUERIES": "2"}
    done = launch("generate_logits.sh", "--model_path", "unused", *flag, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(f"{test_file}: ") == 1, done.stderr


def test_a_folder_where_the_run_record_goes_is_refused_before_any_teacher_loads(tmp_path, ranking_file):
    (tmp_path / "args.json").mkdir()  # (found only once every pair was scored, where args.json is written)
    with pytest.raises(InputError, match=r"^--output_dir's run record .*args.json is a folder"):
        generate_logits.main(["--model_path", str(tmp_path / "no-model-needed"), "--input_path", str(ranking_file),
                              "--output_dir", str(tmp_path)])
    assert not (tmp_path / "train_scores.jsonl").exists()

def test_train_py_output_folder_as_output_dir_is_refused_before_its_args_json_is_replaced(tmp_path, ranking_file,
                                                                                        teacher_never_loads):
    model = tmp_path / "model"  # train.py's output: its args.json records how the model was trained (and resumes)
    model.mkdir()
    record = json.dumps({"command": ["train.py", "--model_name_or_path", "student"], "script": {}})
    (model / "args.json").write_text(record, encoding="utf-8")
    with pytest.raises(InputError, match=rf"^--output_dir {model} holds train.py's args.json, which this run would "
                                         r"replace: give stage 1 a folder of its own \(e.g. output/scores\)"):
        generate_logits.main(["--model_path", "teacher", "--input_path", str(ranking_file), "--output_dir", str(model)])
    assert (model / "args.json").read_text(encoding="utf-8") == record
    assert sorted(model.iterdir()) == [model / "args.json"]  # no scores among the model's files
