"""Stage 2 (create_triplets.py, rerank_distill.triplets): hard-negative triplets from teacher scores."""

import json
import math
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

import create_triplets
from rerank_distill.errors import InputError
from rerank_distill.formats import ScoredPair
from rerank_distill.toy import read_jsonl_records, write_jsonl_records
from rerank_distill.triplets import (
    SKIP_BELOW_MIN_MARGIN,
    SKIP_GRADED_AS_HIGH,
    SKIP_REPEATED_PASSAGE,
    SKIP_NO_POSITIVES,
    SKIP_NON_POSITIVE_MARGIN,
    SKIP_POSITIVE_WITHOUT_NEGATIVES,
    SKIP_REASONS,
    SKIP_TOO_FEW_PASSAGES,
    QueriesNotGrouped,
    Selection,
    SelectionRules,
    choose_negative_ranks,
    choose_positive_ranks,
    format_records,
    iter_query_groups,
    iter_query_groups_indexed,
    lift_labelled,
    query_rng,
    rank_by_score,
    select,
)


def scores_file(path: Path, queries: dict[str, list[tuple[str, float]]]) -> Path:
    """Stage 1's format, each query's pairs on consecutive lines."""
    records = [
        {"query": query, "passage": passage, "score": score, "label": None}
        for query, pairs in queries.items()
        for passage, score in pairs
    ]
    return write_jsonl_records(path, records)


def run(tmp_path: Path, input_path: Path, *flags: str, name: str = "triplets.jsonl") -> tuple[dict, Path]:
    output = tmp_path / "out" / name
    summary = create_triplets.main(["--input_path", str(input_path), "--output_path", str(output), *flags])
    return summary, output


def labelled_file(path: Path, queries: dict[str, list[tuple[str, float, float | None]]]) -> Path:
    """Stage 1's format with gold labels: (passage, score, label) per line, grouped by query."""
    records = [
        {"query": query, "passage": passage, "score": score, "label": label}
        for query, rows in queries.items()
        for passage, score, label in rows
    ]
    return write_jsonl_records(path, records)


def skips(**counts: int) -> dict[str, int]:
    """The summary's skip counts: every reason, zero unless given."""
    return {reason: counts.get(reason, 0) for reason in SKIP_REASONS}


def chosen(passages, scores, labels=None, seed=0, **rules) -> tuple[list[tuple[str, list[str]]], Counter]:
    """``select``'s choice as (positive, [negatives]) texts, for readable expectations."""
    selections, skipped = select(passages, scores, labels, SelectionRules(**rules), query_rng(seed, "q"))
    return [(passages[s.positive], [passages[n] for n in s.negatives]) for s in selections], skipped


# --- the selection rule ---


def select_triplets(passages: list[str], scores: list[float], top_k: int, num_negatives: int):
    """The first recipe's triplets of one query, as stage 2 makes them: (positive, negative,
    margin) tuples in the order written, and the skip Counter."""
    selections, skipped = select(passages, scores, None, SelectionRules(top_k=top_k, num_negatives=num_negatives))
    records = format_records("triplets", "q", passages, scores, [None] * len(passages), selections)
    return [(r["positive"], r["negative"], r["score"]) for r in records], skipped


def test_each_top_k_positive_is_paired_with_the_passages_ranked_just_below_it():
    # ranked by score: a 4.5, b 3.0, c 1.25, d -0.5, e -2.0 (input order is shuffled)
    passages = ["c", "a", "e", "b", "d"]
    scores = [1.25, 4.5, -2.0, 3.0, -0.5]

    triplets, skipped = select_triplets(passages, scores, top_k=2, num_negatives=2)

    assert triplets == [
        ("a", "b", 1.5),
        ("a", "c", 3.25),
        ("b", "c", 1.75),
        ("b", "d", 3.5),
    ]
    assert skipped == Counter()


def test_defaults_use_eight_positives_with_four_negatives_each(tmp_path):
    # ten passages p0..p9 with scores 9..0: positives are ranks 0-7, negatives ranks i+1..i+4 (up to rank 9)
    scores = scores_file(tmp_path / "scores.jsonl", {"q": [(f"p{i}", float(9 - i)) for i in range(10)]})

    summary, output = run(tmp_path, scores)

    pairs = [(t["positive"], t["negative"]) for t in read_jsonl_records(output)]
    expected = [(f"p{i}", f"p{j}") for i in range(8) for j in range(i + 1, min(i + 5, 10))]
    assert pairs == expected
    assert len(expected) == 6 * 4 + 3 + 2
    assert summary["records"] == len(expected)


def test_equal_scores_keep_input_order():
    assert rank_by_score([1.0, 2.0, 2.0, 0.0]) == [1, 2, 0, 3]
    # b and c tie below a: the one written first is a's hard negative
    assert select_triplets(["a", "b", "c"], [2.0, 1.0, 1.0], top_k=1, num_negatives=1)[0] == [("a", "b", 1.0)]
    assert select_triplets(["a", "c", "b"], [2.0, 1.0, 1.0], top_k=1, num_negatives=1)[0] == [("a", "c", 1.0)]


def test_a_passage_listed_again_takes_part_once_with_its_first_listings_score():
    # "x" listed twice (scores 2 and 3): only its first listing, score 2, ranks; no pair of "x" with itself
    triplets, skipped = select_triplets(["y", "x", "x"], [1.0, 2.0, 3.0], top_k=2, num_negatives=2)

    assert triplets == [("x", "y", 1.0)]
    assert skipped == Counter({SKIP_REPEATED_PASSAGE: 1})


def test_repeats_never_give_one_triplet_twice():
    triplets, skipped = select_triplets(["a", "a", "b"], [3.0, 3.0, 1.0], top_k=8, num_negatives=4)
    assert (triplets, skipped) == ([("a", "b", 2.0)], Counter({SKIP_REPEATED_PASSAGE: 1}))


def test_a_query_whose_passages_are_all_one_text_has_too_few_passages():
    assert select_triplets(["x", "x"], [1.0, 2.0], top_k=8, num_negatives=4) == (
        [],
        Counter({SKIP_REPEATED_PASSAGE: 1, SKIP_TOO_FEW_PASSAGES: 1}),
    )


def test_tied_scores_are_skipped_as_non_positive_margins():
    triplets, skipped = select_triplets(["a", "b", "c"], [1.0, 1.0, 0.0], top_k=2, num_negatives=2)

    assert triplets == [("a", "c", 1.0), ("b", "c", 1.0)]
    assert skipped == Counter({SKIP_NON_POSITIVE_MARGIN: 1})


def test_a_positive_whose_every_negative_is_skipped_gives_no_record():
    # b's only negative, c, ties with it: b has nothing to face, so no group of b alone is written
    passages, scores = ["a", "b", "c"], [2.0, 1.0, 1.0]
    selections, skipped = select(passages, scores, None, SelectionRules(top_k=2, num_negatives=1))

    assert selections == [Selection(0, (1,))]
    assert skipped == Counter({SKIP_NON_POSITIVE_MARGIN: 1, SKIP_POSITIVE_WITHOUT_NEGATIVES: 1})
    assert format_records("listwise", "q", passages, scores, None, selections) == [
        {"query": "q", "passages": ["a", "b"], "scores": [2.0, 1.0]}
    ]


def test_fewer_passages_than_top_k_uses_what_there_is():
    triplets, skipped = select_triplets(["a", "b", "c"], [3.0, 2.0, 1.0], top_k=8, num_negatives=4)

    assert triplets == [("a", "b", 1.0), ("a", "c", 2.0), ("b", "c", 1.0)]
    assert skipped == Counter()


def test_top_k_and_num_negatives_of_one_give_one_triplet():
    assert select_triplets(["a", "b", "c"], [3.0, 2.0, 1.0], top_k=1, num_negatives=1)[0] == [("a", "b", 1.0)]


@pytest.mark.parametrize("passages", [[], ["alone"]])
def test_a_query_with_fewer_than_two_passages_is_counted_once(passages):
    scores = [1.0] * len(passages)
    assert select_triplets(passages, scores, top_k=8, num_negatives=4) == ([], Counter({SKIP_TOO_FEW_PASSAGES: 1}))


# --- the stage script ---


def test_the_progress_bar_counts_the_pairs_read_of_the_total_stage_1_recorded(tmp_path, capsys):
    scores = scores_file(tmp_path / "scores.jsonl", {"q1": [("a", 2.0), ("b", 1.0), ("c", 0.0)], "q2": [("d", 1.0)]})
    run(tmp_path, scores)
    assert "reading scores: 4pair [" in capsys.readouterr().err  # no record beside it: a count, no total
    Path(f"{scores}.run.json").write_text(json.dumps({"made_with": {"teachers": [{}]}, "counts": {"pairs": 4}}))
    run(tmp_path, scores)
    assert "4/4" in capsys.readouterr().err
    run(tmp_path, scores, "--no_show_progress")
    assert "reading scores" not in capsys.readouterr().err
    for counts in ({}, {"pairs": "4"}):  # a record edited by hand: the bar has no total, and the run goes on
        Path(f"{scores}.run.json").write_text(json.dumps({"made_with": {"teachers": [{}]}, "counts": counts}))
        run(tmp_path, scores)
        assert "reading scores: 4pair [" in capsys.readouterr().err


def test_writes_triplet_lines_with_the_teacher_margin_and_a_summary(tmp_path):
    scores = scores_file(
        tmp_path / "scores.jsonl",
        {
            "q1": [("low", -1.5), ("high", 2.5), ("dup", 1.0), ("dup", 0.5)],
            "q2": [("only", 0.25)],
        },
    )

    summary, output = run(tmp_path, scores, "--top_k", "2", "--num_negatives", "2")

    assert read_jsonl_records(output) == [  # "dup" takes part once, with its first listing's score
        {"query": "q1", "positive": "high", "negative": "dup", "score": 1.5},
        {"query": "q1", "positive": "high", "negative": "low", "score": 4.0},
        {"query": "q1", "positive": "dup", "negative": "low", "score": 2.5},
    ]
    counts = ("format", "queries", "pairs", "records", "pairs_kept", "passages_in_no_record", "skipped", "input_grouped")
    assert {k: summary[k] for k in counts} == {
        "format": "triplets",
        "queries": 2,
        "pairs": 5,
        "records": 3,
        "pairs_kept": 3,
        "passages_in_no_record": 1,  # q2's one passage; with the repeat of "dup", 5 pairs = 3 in records + 2
        "skipped": skips(**{SKIP_REPEATED_PASSAGE: 1, SKIP_TOO_FEW_PASSAGES: 1}),
        "input_grouped": True,
    }
    run_args = json.loads((tmp_path / "out" / "triplets.args.json").read_text())
    assert run_args["script"] == {
        "input_path": [str(scores)],
        "output_path": str(output),
        "format": "triplets",
        "positives": "teacher",
        "top_k": 2,
        "negatives": "hardest",
        "num_negatives": 2,
        "group_size": 8,
        "min_margin": 0.0,
        "label_margin": None,
        "label_column": None,
        "seed": 42,
        "hub": "huggingface",
        "cache_dir": None,
        "show_progress": True,
    }
    narrower, _ = run(tmp_path, scores, "--top_k", "1", "--num_negatives", "1")
    assert (narrower["pairs_kept"], narrower["passages_in_no_record"]) == (1, 2)  # "low" lies below high's one negative


@pytest.mark.parametrize(
    ("flags", "unread"),
    [
        (["--format", "listwise", "--num_negatives", "6"], ["--num_negatives 6"]),
        (["--group_size", "16"], ["--group_size 16"]),
        (["--positives", "labels", "--top_k", "2", "--seed", "7"], ["--top_k 2", "--seed 7"]),
        (["--format", "listwise", "--group_size", "16", "--negatives", "random", "--seed", "7"], []),
        (["--num_negatives", "4", "--group_size", "8"], []),  # the defaults, even given, ask for nothing
        (["--label_column", "label"], ["--label_column label"]),  # the teacher's top, its scores as they are
        (["--label_column", "label", "--format", "ntuples", "--positives", "both"], []),
        (["--label_column", "label", "--label_margin", "1"], []),
        (["--label_column", "label", "--format", "listwise"], []),  # its records keep the labels
    ],
)
def test_a_flag_these_settings_never_read_is_warned_about(tmp_path, caplog, flags, unread):
    scores = tmp_path / "scores.jsonl"
    write_jsonl_records(scores, [{"query": "q", "passage": p, "score": s, "label": int(s > 1)}
                                 for p, s in (("a", 2.0), ("b", 1.0), ("c", 0.0))])  # fmt: skip

    run(tmp_path, scores, *flags)

    warned = [record.getMessage() for record in caplog.records if "is not read" in record.getMessage()]
    assert [message.split(" is not read")[0] for message in warned] == unread


def test_the_same_input_gives_the_same_bytes(tmp_path):
    queries = {f"q{q}": [(f"passage {q}-{p}", ((q * 7 + p * 3) % 5) / 4) for p in range(9)] for q in range(6)}
    scores = scores_file(tmp_path / "scores.jsonl", queries)

    _, first = run(tmp_path, scores, name="first.jsonl")
    _, second = run(tmp_path, scores, name="second.jsonl")

    assert first.read_bytes() == second.read_bytes()


def test_a_gzipped_output_gives_the_same_bytes_every_time_and_names_itself_in_its_header(tmp_path):
    import gzip

    queries = {f"q{q}": [(f"passage {q}-{p}", ((q * 7 + p * 3) % 5) / 4) for p in range(9)] for q in range(6)}
    scores = scores_file(tmp_path / "scores.jsonl", queries)
    _, plain = run(tmp_path, scores)
    _, first = run(tmp_path / "gz", scores, name="triplets.jsonl.gz")  # (beside the plain one, a record of its own)
    packed = first.read_bytes()
    _, second = run(tmp_path / "gz", scores, name="triplets.jsonl.gz")

    assert second.read_bytes() == packed and gzip.decompress(packed) == plain.read_bytes()
    # RFC 1952: no modification time (so runs a second apart agree too), and FNAME, the name, after the header
    flags, mtime, name = packed[3], packed[4:8], packed[10:].split(b"\0", 1)[0]
    assert mtime == bytes(4) and flags & 0x08 and name == b"triplets.jsonl"


def test_numeric_string_scores_from_a_content_file(tmp_path):
    scores = write_jsonl_records(
        tmp_path / "other_tool.jsonl",
        [
            {"query": "q", "content": "good", "score": "2.5"},
            {"query": "q", "content": "bad", "score": " -1 "},
        ],
    )

    _, output = run(tmp_path, scores)

    assert read_jsonl_records(output) == [{"query": "q", "positive": "good", "negative": "bad", "score": 3.5}]


# --- the first recipe stays the default ---

CAFE_SCORES = [
    {"query": "which café?", "passage": "north", "score": 1.5, "label": 1},
    {"query": "which café?", "passage": "south", "score": -0.5, "label": 0},
    {"query": "which café?", "passage": "east", "score": 3.0, "label": 0},
    {"query": "which café?", "passage": "west", "score": 1.5, "label": 1},
    {"query": "which café?", "passage": "north", "score": 0.25, "label": 0},
    {"query": "which café?", "passage": "centre", "score": -2.0, "label": 0},
    {"query": "ünïcode ✓", "passage": "only one", "score": 1.0, "label": 1},
    {"query": "q3", "passage": "x", "score": 0.1, "label": 0},
    {"query": "q3", "passage": "y", "score": 0.3, "label": 1},
]


def test_default_flags_write_the_first_recipes_bytes(tmp_path):
    # Ranked: east 3.0, north 1.5, west 1.5 (tie: input order), south -0.5, centre -2.0; north's
    # second listing (0.25) takes no part. Positives are ranks 0-3 (top_k 8, but never the last),
    # each with the 4 ranks below it; the north-west tie is skipped. These are the first version's
    # bytes except where it let the repeated "north" in (a second east-north pair, margin 2.75).
    _, output = run(tmp_path, write_jsonl_records(tmp_path / "scores.jsonl", CAFE_SCORES))

    assert output.read_text(encoding="utf-8") == (
        '{"query": "which café?", "positive": "east", "negative": "north", "score": 1.5}\n'
        '{"query": "which café?", "positive": "east", "negative": "west", "score": 1.5}\n'
        '{"query": "which café?", "positive": "east", "negative": "south", "score": 3.5}\n'
        '{"query": "which café?", "positive": "east", "negative": "centre", "score": 5.0}\n'
        '{"query": "which café?", "positive": "north", "negative": "south", "score": 2.0}\n'
        '{"query": "which café?", "positive": "north", "negative": "centre", "score": 3.5}\n'
        '{"query": "which café?", "positive": "west", "negative": "south", "score": 2.0}\n'
        '{"query": "which café?", "positive": "west", "negative": "centre", "score": 3.5}\n'
        '{"query": "which café?", "positive": "south", "negative": "centre", "score": 1.5}\n'
        '{"query": "q3", "positive": "y", "negative": "x", "score": 0.19999999999999998}\n'
    )


# --- which passages are positives ---


@pytest.mark.parametrize(
    ("rule", "expected", "positives_without_negatives"),
    [
        # teacher: the top_k=1 best, east
        ("teacher", [("east", "north", 1.5), ("east", "west", 1.5), ("y", "x", 0.19999999999999998)], 0),
        # labels: north and west (its first listing, label 1, counts), wherever the teacher ranks
        # them; north's next rank, west, is graded as high, so it is passed over: both face south and centre
        ("labels", [("north", "south", 2.0), ("north", "centre", 3.5), ("west", "south", 2.0),
                    ("west", "centre", 3.5), ("y", "x", 0.19999999999999998)], 0),
        # both: the union, in rank order
        (
            "both",
            [("east", "north", 1.5), ("east", "west", 1.5), ("north", "south", 2.0), ("north", "centre", 3.5),
             ("west", "south", 2.0), ("west", "centre", 3.5), ("y", "x", 0.19999999999999998)],
            0,
        ),
    ],
)  # fmt: skip
def test_positives_from_the_teacher_the_gold_labels_or_both(tmp_path, rule, expected, positives_without_negatives):
    scores = write_jsonl_records(tmp_path / "scores.jsonl", CAFE_SCORES)

    summary, output = run(tmp_path, scores, "--positives", rule, "--top_k", "1", "--num_negatives", "2")

    assert [(t["positive"], t["negative"], t["score"]) for t in read_jsonl_records(output)] == expected
    assert summary["skipped"][SKIP_POSITIVE_WITHOUT_NEGATIVES] == positives_without_negatives


@pytest.mark.parametrize("rule", ["labels", "both"])
def test_a_labelled_positive_faces_only_passages_of_a_lower_grade(rule):
    # the teacher ranks the substitute (2) above the exact match (3): the substitute's negatives are the
    # complement and the irrelevant one, never the exact match; the teacher's own top passage in "both"
    # is the substitute, so nothing changes there
    passages, scores, labels = ["sub", "exact", "comp", "irr"], [4.0, 3.0, 2.0, 1.0], [2.0, 3.0, 1.0, 0.0]
    selections, skipped = chosen(passages, scores, labels, positives=rule, top_k=1, num_negatives=3)
    assert selections == [("sub", ["comp", "irr"]), ("exact", ["comp", "irr"]), ("comp", ["irr"])]
    assert skipped[SKIP_GRADED_AS_HIGH] == 1


def test_a_labelled_positive_gets_its_negatives_from_below_the_passages_graded_as_high_as_it():
    # five gold positives ranked above the two negatives: each gets both negatives (num_negatives 4), the
    # positives in between passed over, not taking the places of negatives (the audit's P1 got none)
    passages = ["P1", "P2", "P3", "P4", "P5", "N1", "N2"]
    scores, labels = [5.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.0], [1.0] * 5 + [0.0] * 2
    selections, skipped = chosen(passages, scores, labels, positives="labels", top_k=1, num_negatives=4)
    assert selections == [(p, ["N1", "N2"]) for p in passages[:5]]
    assert skipped[SKIP_GRADED_AS_HIGH] == 4 + 3 + 2 + 1 and skipped[SKIP_POSITIVE_WITHOUT_NEGATIVES] == 0
    selections, _ = chosen(passages, scores, labels, positives="labels", top_k=1, num_negatives=1)
    assert selections == [(p, ["N1"]) for p in passages[:5]]


def test_any_grade_above_zero_is_a_labelled_positive_and_top_k_does_not_limit_them():
    order = rank_by_score([5.0, 4.0, 3.0, 2.0, 1.0])
    labels = [0.0, 2.0, 0.0, 0.5, 1.0]

    assert choose_positive_ranks(order, labels, top_k=1, rule="labels") == [1, 3, 4]
    assert choose_positive_ranks(order, labels, top_k=1, rule="both") == [0, 1, 3, 4]
    assert choose_positive_ranks(order, labels, top_k=8, rule="teacher") == [0, 1, 2, 3]  # never the last


def test_a_query_without_a_labelled_positive_is_counted(tmp_path):
    scores = labelled_file(
        tmp_path / "scores.jsonl",
        {"all negative": [("a", 2.0, 0), ("b", 1.0, 0)], "one positive": [("c", 0.0, 0), ("d", 1.0, 1)]},
    )

    summary, output = run(tmp_path, scores, "--positives", "labels")

    assert read_jsonl_records(output) == [{"query": "one positive", "positive": "d", "negative": "c", "score": 1.0}]
    assert summary["skipped"] == skips(**{SKIP_NO_POSITIVES: 1})


@pytest.mark.parametrize("rule", ["labels", "both"])
def test_label_positives_on_input_without_labels_stop_with_a_clear_message(tmp_path, rule):
    scores = scores_file(tmp_path / "scores.jsonl", {"q": [("a", 2.0), ("b", 1.0)]})  # "label": null

    with pytest.raises(InputError) as raised:
        run(tmp_path, scores, "--positives", rule)

    assert str(raised.value).startswith(f"{scores}:1: --positives {rule} needs a gold label on every line")
    assert "--positives teacher" in str(raised.value)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_line_missing_its_label_is_named(tmp_path):
    scores = write_jsonl_records(
        tmp_path / "scores.jsonl",
        [{"query": "q", "passage": "a", "score": 2.0, "label": 1}, {"query": "q", "content": "b", "score": "1"}],
    )

    with pytest.raises(InputError, match=f"^{scores}:2: --positives labels needs a gold label"):
        run(tmp_path, scores, "--positives", "labels")
    starred = write_jsonl_records(tmp_path / "starred.jsonl", [{"query": "q", "passage": "a", "score": 2.0, "stars": 1},
                                                              {"query": "q", "passage": "b", "score": 1.0}])
    with pytest.raises(InputError, match=f'^{starred}:2: --positives labels needs a gold label on every line, but '
                                         'this one has no "stars"'):
        run(tmp_path, starred, "--positives", "labels", "--label_column", "stars")


def test_a_line_missing_its_label_in_a_data_set_folder_is_named_by_its_own_file(tmp_path):
    folder = tmp_path / "scores"
    first = [{"query": "q", "passage": "a", "score": 2.0, "label": 1}]
    write_jsonl_records(folder / "train-00000-of-00002.jsonl", first)
    second = write_jsonl_records(folder / "train-00001-of-00002.jsonl", [{"query": "q", "passage": "b", "score": 1.0}])

    with pytest.raises(InputError, match=f"^{second}:1: --positives labels needs a gold label"):
        run(tmp_path, Path(f"{folder}:train"), "--positives", "labels")


def test_a_label_column_names_the_gold_label_the_labelled_rules_read(tmp_path):
    rows = [{"query": "q", "passage": "a", "score": 2.0, "stars": 0}, {"query": "q", "passage": "b", "score": 1.0,
            "stars": 1}]  # fmt: skip
    scores = write_jsonl_records(tmp_path / "scores.jsonl", rows)

    with pytest.raises(InputError, match="needs a gold label"):
        run(tmp_path, scores, "--positives", "labels")
    run(tmp_path, scores, "--positives", "labels", "--label_column", "stars", "--label_margin", "1")

    assert read_jsonl_records(tmp_path / "out" / "triplets.jsonl") == [
        {"query": "q", "positive": "b", "negative": "a", "score": 1.0}]  # lifted 1 logit above the negative


# --- gold labels correcting the teacher (--label_margin) ---


def test_label_margin_lifts_the_labelled_positives_together_above_every_negative():
    # positives score 5, 3, 2; negatives 4, 1: the lowest positive (2) must reach 4 + 1, so all
    # three move up by 3 and keep their own margins; the negatives stay
    assert lift_labelled([5.0, 3.0, 4.0, 1.0, 2.0], [1, 1, 0, 0, 1], margin=1.0) == [8.0, 6.0, 4.0, 1.0, 5.0]


def test_label_margin_is_reached_even_where_large_scores_round_the_shift_down():
    # -4964097.061 + (8575156.052 + 1 - -4964097.061) rounds to 0.9999999981 above the negative
    lifted = lift_labelled([-4964097.061, 8575156.052], [1, 0], margin=1.0)
    assert lifted[0] - lifted[1] >= 1.0


def test_label_margin_below_the_scores_spacing_still_lifts_the_positive_and_ends():
    # 5 + 1e-17 rounds to 5: a tie was left tied (shift 0), and a positive one ulp under the
    # negative stepped its shift up by the shift's own ulp, some 10^15 steps to move the score once
    for positive in (5.0, math.nextafter(5.0, 0.0)):
        lifted = lift_labelled([positive, 5.0], [1, 0], margin=1e-17)
        assert lifted[0] - lifted[1] >= 1e-17 and lifted[1] == 5.0


def test_label_margin_leaves_a_teacher_the_labels_agree_with_alone():
    assert lift_labelled([6.0, 5.0, 3.5, 1.0], [1, 1, 0, 0], margin=1.5) == [6.0, 5.0, 3.5, 1.0]
    assert lift_labelled([6.0, 5.0], [1, 1], margin=1.0) == [6.0, 5.0]  # one grade: nothing to order


def test_label_margin_orders_graded_labels_grade_by_grade():
    # grades 0, 1, 3 (ESCI-like): grade 1 (score 1) must clear grade 0's best (2) by 0.5 -> +1.5;
    # grade 3 (scores 0 and 4) must then clear the best below it (2.5, the lifted grade 1) -> +3
    lifted = lift_labelled([2.0, 1.0, 0.0, 4.0, -1.0], [0, 1, 3, 3, 0], margin=0.5)
    assert lifted == [2.0, 2.5, 3.0, 7.0, -1.0]


def test_label_margin_writes_the_corrected_scores_and_counts_the_queries_it_changed(tmp_path):
    scores = labelled_file(tmp_path / "scores.jsonl", {
        "teacher wrong": [("p1", 5.0, 1), ("n1", 4.0, 0), ("p2", 2.0, 1), ("n2", 1.0, 0)],
        "teacher right": [("p3", 3.0, 1), ("n3", 0.0, 0)],
    })  # fmt: skip

    summary, output = run(tmp_path, scores, "--format", "listwise", "--top_k", "1", "--group_size", "8",
                          "--label_margin", "1")  # fmt: skip

    # p2 (2.0) must reach n1 (4.0) + 1: both positives move up by 3
    assert read_jsonl_records(output) == [
        {"query": "teacher wrong", "passages": ["p1", "p2", "n1", "n2"], "scores": [8.0, 5.0, 4.0, 1.0],
         "labels": [1.0, 1.0, 0.0, 0.0]},
        {"query": "teacher right", "passages": ["p3", "n3"], "scores": [3.0, 0.0], "labels": [1.0, 0.0]},
    ]  # fmt: skip
    assert summary["queries_corrected_by_labels"] == 1


def test_a_repeated_passage_is_dropped_before_the_labels_correct_the_scores(tmp_path):
    # "p" listed as a positive and again as a negative (stage 1 gives both listings one score): only
    # its first listing counts, so the labels agree with the teacher and nothing is lifted
    scores = labelled_file(tmp_path / "scores.jsonl", {"q": [("p", 2.0, 1), ("n", 1.0, 0), ("p", 2.0, 0)]})
    summary, output = run(tmp_path, scores, "--label_margin", "0.5")
    assert read_jsonl_records(output) == [{"query": "q", "positive": "p", "negative": "n", "score": 1.0}]
    assert summary["queries_corrected_by_labels"] == 0 and summary["pairs"] == 3
    assert summary["skipped"] == skips(**{SKIP_REPEATED_PASSAGE: 1})


def test_label_margin_on_input_without_labels_stops_with_a_clear_message(tmp_path):
    scores = scores_file(tmp_path / "scores.jsonl", {"q": [("a", 2.0), ("b", 1.0)]})  # "label": null

    with pytest.raises(InputError, match=f"^{scores}:1: --label_margin needs a gold label on every line") as raised:
        run(tmp_path, scores, "--label_margin", "1")
    assert str(raised.value).endswith("drop --label_margin")


# --- margins ---


def test_min_margin_drops_near_ties_and_counts_them():
    # a-b differ by 0.1 (below 0.5), a-c by exactly 1.0 (kept at min_margin 1), b-c tie
    passages, scores = ["a", "b", "c", "d"], [3.0, 2.9, 2.9, 1.0]

    assert chosen(passages, scores, top_k=2, num_negatives=3, min_margin=0.5) == (
        [("a", ["d"]), ("b", ["d"])],
        Counter({SKIP_BELOW_MIN_MARGIN: 2, SKIP_NON_POSITIVE_MARGIN: 1}),
    )
    assert chosen(["a", "b", "c"], [3.0, 2.0, 1.0], top_k=1, num_negatives=2, min_margin=1.0)[0] == [("a", ["b", "c"])]


def test_the_margin_is_the_teachers_even_when_labels_choose_the_positive():
    # the gold positive b is the teacher's second: its margin over c is 2.0 - 0.5, whatever its grade
    passages, scores, labels = ["a", "b", "c"], [3.0, 2.0, 0.5], [0.0, 3.0, 0.0]

    selections, _ = select(passages, scores, labels, SelectionRules(positives="labels"))

    assert format_records("triplets", "q", passages, scores, labels, selections) == [
        {"query": "q", "positive": "b", "negative": "c", "score": 1.5}
    ]


# --- which passages are negatives ---

TWELVE = [f"p{i}" for i in range(12)]  # p0 scores 11, p11 scores 0: rank i is p{i}
TWELVE_SCORES = [float(11 - i) for i in range(12)]


def test_random_negatives_are_a_seeded_draw_from_everything_below_the_positive():
    first, _ = chosen(TWELVE, TWELVE_SCORES, seed=1, top_k=2, num_negatives=3, negatives="random")
    again, _ = chosen(TWELVE, TWELVE_SCORES, seed=1, top_k=2, num_negatives=3, negatives="random")
    other, _ = chosen(TWELVE, TWELVE_SCORES, seed=2, top_k=2, num_negatives=3, negatives="random")

    assert first == again
    assert first != other
    for (positive, negatives), rank in zip(first + other, [0, 1, 0, 1]):
        assert positive == f"p{rank}"
        ranks = [int(n[1:]) for n in negatives]
        assert len(ranks) == 3 and ranks == sorted(set(ranks)) and ranks[0] > rank  # best first, all below


def test_queries_of_one_seed_draw_their_random_negatives_apart():
    # the draw is seeded by (seed, query): each of ten queries takes its own 3 of the 11 lower ranks
    def draw(query):
        return tuple(choose_negative_ranks(0, num_passages=12, num_negatives=3, rule="random", rng=query_rng(0, query)))

    draws = [draw(f"q{i}") for i in range(10)]
    # 165 possible draws: ten uniform ones rarely share one, never most of them
    assert len(set(draws)) >= 8, draws
    # and each is the query's own, whatever was drawn before it: the same again in the reverse order
    assert [draw(f"q{i}") for i in reversed(range(10))] == draws[::-1]


def test_random_negatives_reach_every_lower_rank_about_equally():
    # one positive above four candidates, one negative each, over 400 seeds: ~100 draws per rank
    draws = Counter(
        choose_negative_ranks(0, num_passages=5, num_negatives=1, rule="random", rng=query_rng(seed, "q"))[0]
        for seed in range(400)
    )

    assert sorted(draws) == [1, 2, 3, 4]
    assert all(60 <= count <= 140 for count in draws.values()), draws


def test_mixed_negatives_are_the_hardest_half_then_a_seeded_draw_from_below_them():
    one, _ = chosen(TWELVE, TWELVE_SCORES, seed=1, top_k=1, num_negatives=5, negatives="mixed")
    two, _ = chosen(TWELVE, TWELVE_SCORES, seed=2, top_k=1, num_negatives=5, negatives="mixed")

    for [(positive, negatives)] in (one, two):
        assert positive == "p0"
        assert negatives[:3] == ["p1", "p2", "p3"]  # 5 - 5 // 2 hardest: the odd one goes to them
        drawn = [int(n[1:]) for n in negatives[3:]]
        assert len(drawn) == 2 and drawn == sorted(set(drawn)) and drawn[0] >= 4
    assert one != two
    assert one == chosen(TWELVE, TWELVE_SCORES, seed=1, top_k=1, num_negatives=5, negatives="mixed")[0]


def test_near_the_bottom_every_rule_takes_all_that_lie_below():
    for rule in ("hardest", "random", "mixed"):
        assert choose_negative_ranks(2, num_passages=5, num_negatives=4, rule=rule, rng=query_rng(0, "q")) == [3, 4]
    assert choose_negative_ranks(0, num_passages=5, num_negatives=1, rule="mixed") == [1]  # one: the hardest


def test_random_negatives_give_the_same_bytes_for_a_seed_and_others_for_another(tmp_path):
    queries = {f"q{q}": [(f"passage {q}-{p}", float((q * 7 + p * 3) % 11)) for p in range(12)] for q in range(4)}
    scores = scores_file(tmp_path / "scores.jsonl", queries)
    flags = ("--negatives", "random", "--top_k", "2", "--num_negatives", "3")

    _, first = run(tmp_path, scores, *flags, "--seed", "7", name="first.jsonl")
    _, again = run(tmp_path, scores, *flags, "--seed", "7", name="again.jsonl")
    _, other = run(tmp_path, scores, *flags, "--seed", "8", name="other.jsonl")

    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_a_querys_random_negatives_do_not_depend_on_the_other_queries(tmp_path):
    q1 = {"q1": [(f"a{p}", float(-p)) for p in range(10)]}
    alone = scores_file(tmp_path / "alone.jsonl", q1)
    among = scores_file(tmp_path / "among.jsonl", {"q0": [(f"b{p}", float(p)) for p in range(10)], **q1})

    _, from_alone = run(tmp_path, alone, "--negatives", "random", name="alone.out.jsonl")
    _, from_among = run(tmp_path, among, "--negatives", "random", name="among.out.jsonl")

    assert read_jsonl_records(from_alone) == [t for t in read_jsonl_records(from_among) if t["query"] == "q1"]
    _, hardest = run(tmp_path, alone, name="hardest.out.jsonl")  # and they are a draw, not the ranks just below
    assert read_jsonl_records(from_alone) != read_jsonl_records(hardest)


# --- n-tuples and listwise groups ---


def test_ntuples_hold_one_positive_its_negatives_and_raw_teacher_scores(tmp_path):
    # ranked: a 4.5, b 3.0, c 1.25, d -0.5, e -2.0 (input order is shuffled)
    scores = scores_file(
        tmp_path / "scores.jsonl", {"q": [("c", 1.25), ("a", 4.5), ("e", -2.0), ("b", 3.0), ("d", -0.5)]}
    )

    summary, output = run(tmp_path, scores, "--format", "ntuples", "--top_k", "2", "--num_negatives", "2")

    assert read_jsonl_records(output) == [
        {"query": "q", "positive": "a", "negatives": ["b", "c"], "scores": [4.5, 3.0, 1.25]},
        {"query": "q", "positive": "b", "negatives": ["c", "d"], "scores": [3.0, 1.25, -0.5]},
    ]
    assert (summary["records"], summary["pairs_kept"]) == (2, 4)


def test_ntuples_leave_out_skipped_negatives(tmp_path):
    scores = write_jsonl_records(tmp_path / "scores.jsonl", CAFE_SCORES)

    _, output = run(tmp_path, scores, "--format", "ntuples", "--top_k", "2", "--num_negatives", "3")

    # north's next ranks are its tie (west), skipped, then south and centre
    assert read_jsonl_records(output) == [
        {"query": "which café?", "positive": "east", "negatives": ["north", "west", "south"],
         "scores": [3.0, 1.5, 1.5, -0.5]},
        {"query": "which café?", "positive": "north", "negatives": ["south", "centre"], "scores": [1.5, -0.5, -2.0]},
        {"query": "q3", "positive": "y", "negatives": ["x"], "scores": [0.3, 0.1]},
    ]  # fmt: skip


def test_listwise_groups_put_the_positive_first_with_its_gold_labels(tmp_path):
    scores = labelled_file(
        tmp_path / "scores.jsonl",
        {"q": [("c", 1.25, 0), ("a", 4.5, 2), ("e", -2.0, 0), ("b", 3.0, 1), ("d", -0.5, 0)]},
    )

    summary, output = run(tmp_path, scores, "--format", "listwise", "--positives", "labels", "--group_size", "3")

    # labelled positives a and b; each group is the positive, then its group_size - 1 hardest
    assert read_jsonl_records(output) == [
        {"query": "q", "passages": ["a", "b", "c"], "scores": [4.5, 3.0, 1.25], "labels": [2.0, 1.0, 0.0]},
        {"query": "q", "passages": ["b", "c", "d"], "scores": [3.0, 1.25, -0.5], "labels": [1.0, 0.0, 0.0]},
    ]
    assert (summary["records"], summary["pairs_kept"]) == (2, 4)


def test_listwise_groups_have_no_labels_when_the_input_has_none(tmp_path):
    scores = scores_file(tmp_path / "scores.jsonl", {"q": [("a", 2.0), ("b", 1.0)]})

    _, output = run(tmp_path, scores, "--format", "listwise")

    assert read_jsonl_records(output) == [{"query": "q", "passages": ["a", "b"], "scores": [2.0, 1.0]}]


def test_a_listwise_group_with_a_passage_missing_its_label_has_no_labels():
    records = format_records("listwise", "q", ["a", "b", "c"], [3.0, 2.0, 1.0], [1.0, None, 0.0],
                             [Selection(0, (1, 2))])
    assert records == [{"query": "q", "passages": ["a", "b", "c"], "scores": [3.0, 2.0, 1.0]}]


def test_group_size_caps_a_listwise_group_and_num_negatives_does_not(tmp_path):
    scores = scores_file(tmp_path / "scores.jsonl", {"q": [(f"p{i}", float(9 - i)) for i in range(10)]})

    summary, output = run(
        tmp_path, scores, "--format", "listwise", "--group_size", "4", "--num_negatives", "1", "--top_k", "9"
    )

    groups = [record["passages"] for record in read_jsonl_records(output)]
    # one group per positive (ranks 0-8), each the positive and up to 3 ranked below it
    assert groups == [[f"p{j}" for j in range(i, min(i + 4, 10))] for i in range(9)]
    assert max(map(len, groups)) == 4 and [len(g) for g in groups[-3:]] == [4, 3, 2]
    assert summary["records"] == 9


def test_an_interleaved_labelled_file_gives_the_same_groups_as_its_grouped_version(tmp_path):
    rows = [("q1", "a", 1.0, 1), ("q2", "x", 0.5, 0), ("q1", "b", 3.0, 0), ("q2", "y", 1.5, 1), ("q1", "c", 2.0, 0)]
    interleaved = write_jsonl_records(
        tmp_path / "interleaved.jsonl", [{"query": q, "passage": p, "score": s, "label": l} for q, p, s, l in rows]
    )
    grouped = write_jsonl_records(
        tmp_path / "grouped.jsonl",
        [{"query": q, "passage": p, "score": s, "label": l} for q, p, s, l in sorted(rows, key=lambda r: r[0])],
    )
    flags = ("--format", "listwise", "--positives", "both", "--top_k", "1")

    from_interleaved, interleaved_output = run(tmp_path, interleaved, *flags, name="i.jsonl")
    _, grouped_output = run(tmp_path, grouped, *flags, name="g.jsonl")

    assert from_interleaved["input_grouped"] is False
    assert interleaved_output.read_bytes() == grouped_output.read_bytes()
    assert read_jsonl_records(grouped_output)[0] == {
        "query": "q1", "passages": ["b", "c", "a"], "scores": [3.0, 2.0, 1.0], "labels": [0.0, 0.0, 1.0]
    }  # fmt: skip


# --- input not grouped by query ---


def interleaved_and_grouped(tmp_path: Path) -> tuple[Path, Path]:
    """The same lines twice: interleaved by query, and grouped in order of first appearance."""
    interleaved = [
        ("q1", "a", 1.0), ("q2", "x", 0.5), ("q1", "b", 3.0), ("q3", "m", 2.0),
        ("q2", "y", 1.5), ("q1", "c", 2.0), ("q3", "n", 2.0), ("q2", "z", -1.0), ("q1", "d", 3.0),
    ]  # fmt: skip
    grouped = sorted(interleaved, key=lambda row: ["q1", "q2", "q3"].index(row[0]))  # stable: keeps line order
    write = lambda path, rows: write_jsonl_records(path, [{"query": q, "passage": p, "score": s} for q, p, s in rows])
    return write(tmp_path / "interleaved.jsonl", interleaved), write(tmp_path / "grouped.jsonl", grouped)


def test_an_interleaved_file_gives_the_same_triplets_as_its_grouped_version(tmp_path):
    interleaved, grouped = interleaved_and_grouped(tmp_path)

    from_grouped, grouped_output = run(tmp_path, grouped, "--top_k", "2", "--num_negatives", "2", name="g.jsonl")
    from_interleaved, interleaved_output = run(
        tmp_path, interleaved, "--top_k", "2", "--num_negatives", "2", name="i.jsonl"
    )

    assert interleaved_output.read_bytes() == grouped_output.read_bytes()
    assert [t["query"] for t in read_jsonl_records(grouped_output)] == ["q1"] * 3 + ["q2"] * 3
    assert (from_grouped["input_grouped"], from_interleaved["input_grouped"]) == (True, False)
    q3_tie = skips(**{SKIP_NON_POSITIVE_MARGIN: 2, SKIP_POSITIVE_WITHOUT_NEGATIVES: 1})  # q3's two passages tie
    assert from_interleaved["skipped"] == from_grouped["skipped"] == q3_tie
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["g.args.json", "g.jsonl", "i.args.json", "i.jsonl"]


def test_a_regrouped_file_ends_with_a_progress_bar_of_every_pair_read(tmp_path, capsys):
    interleaved, _ = interleaved_and_grouped(tmp_path)
    Path(f"{interleaved}.run.json").write_text(json.dumps({"made_with": {"teachers": [{}]}, "counts": {"pairs": 9}}))

    run(tmp_path, interleaved)

    # the first pass stops at line 3 (q1 again); its bar, closed late, printed 3/9 after the second pass's 9/9
    bars = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "reading scores" in line]
    assert "9/9" in bars[-1]


def test_a_query_that_reappears_stops_the_streaming_grouper():
    pairs = [ScoredPair("q1", "a", 1.0, line=1), ScoredPair("q2", "b", 1.0, line=2), ScoredPair("q1", "c", 1.0, line=3)]

    with pytest.raises(QueriesNotGrouped) as raised:
        list(iter_query_groups(pairs))

    assert (raised.value.query, raised.value.line) == ("q1", 3)


def test_the_indexed_grouper_gathers_each_query_in_order_of_first_appearance(tmp_path):
    pairs = [
        ScoredPair("q2", "b", 0.5, label=1.0, line=1),
        ScoredPair("q1", "a", 1.0, line=2),
        ScoredPair("q2", "d", -0.1, label=0.0, line=3),
        ScoredPair("q1", "c", 2.0, label=2.0, line=4),
    ]

    groups = [
        (g.query, g.passages, g.scores, g.labels, g.line) for g in iter_query_groups_indexed(pairs, str(tmp_path))
    ]

    assert groups == [("q2", ["b", "d"], [0.5, -0.1], [1.0, 0.0], 1), ("q1", ["a", "c"], [1.0, 2.0], [None, 2.0], 2)]
    assert list(tmp_path.iterdir()) == []


def test_an_interleaved_file_whose_name_is_not_utf8_is_regrouped(tmp_path):
    import os

    # a Latin-1 file name reaches Python as a lone surrogate, which the regrouping's temporary file must hold
    name = tmp_path / os.fsdecode(b"caf\xe9.jsonl")
    scores = scores_file(name, {"q": [("a", 2.0)], "r": [("b", 1.0), ("d", 0.0)]})
    write_jsonl_records(name, [*read_jsonl_records(scores), {"query": "q", "passage": "c", "score": 1.0}])

    summary, output = run(tmp_path, name)

    assert summary["input_grouped"] is False
    assert [(r["query"], r["positive"], r["negative"]) for r in read_jsonl_records(output)] == [
        ("q", "a", "c"), ("r", "b", "d")]


# --- bad input ---


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"query": "q", "passage": "c", "score": "high"}', 'field "score" must be a number'),
        ('{"query": "q", "passage": "c", "score": NaN}', "finite"),
        ('{"query": "q", "passage": "c"}', 'missing field "score"'),
        ('{"query": "q", "passage": 3, "score": 1}', 'field "passage" must be a string'),
        ('{"query": "q", "passage": "c", "score": 1', "not valid JSON"),
    ],
)
def test_a_bad_line_is_an_error_naming_file_and_line_and_leaves_no_output(tmp_path, bad_line, message):
    scores = tmp_path / "scores.jsonl"
    good = '{"query": "q", "passage": "a", "score": 2}\n{"query": "q", "passage": "b", "score": 1}\n'
    scores.write_text(good + bad_line + "\n", encoding="utf-8")

    with pytest.raises(InputError, match=message) as raised:
        run(tmp_path, scores)

    assert str(raised.value).startswith(f"{scores}:3: ")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_bad_line_after_a_reappearing_query_leaves_no_output(tmp_path):
    interleaved, _ = interleaved_and_grouped(tmp_path)
    with interleaved.open("a", encoding="utf-8") as lines:
        lines.write('{"query": "q1", "passage": "e", "score": "?"}\n')

    with pytest.raises(InputError, match=f"{interleaved}:10: "):
        run(tmp_path, interleaved)

    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_input_without_any_usable_triplet_is_an_error_not_an_empty_file(tmp_path):
    scores = scores_file(tmp_path / "scores.jsonl", {"q1": [("a", 1.0), ("b", 1.0)], "q2": [("c", 0.0)]})

    with pytest.raises(InputError, match="no triplets could be made from 2 queries") as raised:
        run(tmp_path, scores)

    assert "1 non_positive_margin, 1 positives_without_negatives, 1 queries_with_fewer_than_2_passages" in str(
        raised.value
    )
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--top_k", "0", "--top_k must be at least 1"),
        ("--num_negatives", "0", "--num_negatives must be at least 1"),
        ("--group_size", "1", "--group_size must be at least 2"),
        ("--min_margin", "-0.5", "--min_margin must be 0 or more"),
        ("--min_margin", "nan", "--min_margin must be 0 or more"),
        ("--label_margin", "-1", "--label_margin must be above 0"),
        ("--label_margin", "0", "--label_margin must be above 0"),
        ("--label_margin", "inf", "--label_margin must be above 0 and finite"),
    ],
)
def test_out_of_range_settings_are_rejected(tmp_path, flag, value, message):
    scores = scores_file(tmp_path / "scores.jsonl", {"q": [("a", 1.0), ("b", 0.0)]})

    with pytest.raises(InputError, match=message):
        run(tmp_path, scores, flag, value)


def test_the_command_line_exits_2_with_a_one_line_message(tmp_path):
    scores = tmp_path / "scores.jsonl"
    scores.write_text('{"query": "q", "passage": "a", "score": 1}\n{"query": "q", "text": "b", "score": 0}\n')
    output = tmp_path / "out.jsonl"
    script = Path(create_triplets.__file__)

    result = subprocess.run(
        [sys.executable, str(script), "--input_path", str(scores), "--output_path", str(output)],
        check=False,
        capture_output=True,
        text=True,
    )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {scores}:2: missing the passage field")
    assert "Traceback" not in result.stderr
    assert not output.exists()


# --- memory ---


def large_scores_file(path: Path, num_queries: int) -> Path:
    """``num_queries`` queries of 30 passages of ~1 kB each, written grouped as stage 1 does."""
    filler = "lorem ipsum dolor sit amet " * 40
    with path.open("w", encoding="utf-8") as lines:
        for q in range(num_queries):
            for p in range(30):
                record = {"query": f"query {q}", "passage": f"{q}-{p} {filler}", "score": ((q + 7 * p) % 31) / 3}
                lines.write(json.dumps(record) + "\n")
    return path


def peak_bytes(tmp_path: Path, input_path: Path) -> int:
    tracemalloc.start()
    try:
        run(tmp_path, input_path, name=f"{input_path.stem}.triplets.jsonl")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_number_of_pairs(tmp_path):
    small = large_scores_file(tmp_path / "small.jsonl", num_queries=20)  # 600 pairs, ~0.7 MB
    large = large_scores_file(tmp_path / "large.jsonl", num_queries=200)  # 6,000 pairs, ~7 MB
    run(tmp_path, small, name="warm_up.jsonl")  # first-call imports and caches are not the stage's memory

    small_peak = peak_bytes(tmp_path, small)
    large_peak = peak_bytes(tmp_path, large)

    # holding the input would take ~10x; what may grow is a 16-byte digest per finished query
    assert large_peak <= 1.5 * small_peak, (small_peak, large_peak)


def test_several_input_files_are_read_as_one(tmp_path):
    first = scores_file(tmp_path / "a.jsonl", {"q1": [("low", -1.5), ("high", 2.5)], "q2": [("x", 1.0), ("y", 0.0)]})
    second = scores_file(tmp_path / "b.jsonl", {"q3": [("p", 3.0), ("n", 1.0)], "q1": [("late", 0.5)]})
    together = tmp_path / "together.jsonl"
    together.write_text(first.read_text() + second.read_text())

    output = tmp_path / "out" / "two.jsonl"
    summary = create_triplets.main(["--input_path", str(first), str(second), "--output_path", str(output), "--top_k", "1"])
    _, expected = run(tmp_path, together, "--top_k", "1", name="one.jsonl")
    assert output.read_text() == expected.read_text()
    assert summary["queries"] == 3 and not summary["input_grouped"]  # q1 comes back in the second file
    again = tmp_path / "out" / "flag_again.jsonl"  # the flag given twice: both files, not the last alone
    create_triplets.main(["--input_path", str(first), "--input_path", str(second), "--output_path", str(again),
                          "--top_k", "1"])
    assert again.read_text() == expected.read_text()


def test_a_failed_run_leaves_no_output_and_no_folder_it_made(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        create_triplets.main(["--input_path", str(tmp_path / "missing.jsonl"), "--output_path",
                              str(tmp_path / "made" / "here" / "triplets.jsonl")])
    assert list(tmp_path.iterdir()) == []


def test_a_run_record_path_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    """A folder named as the run record (OUT.args.json) stopped the run with a traceback once every record was written."""
    scores = scores_file(tmp_path / "scores.jsonl", {"q": [("a", 2.0), ("b", 1.0)]})
    (tmp_path / "out.args.json").mkdir()
    with pytest.raises(InputError, match="^--output_path's run record .*out.args.json is a folder; give a file name"):
        create_triplets.main(["--input_path", str(scores), "--output_path", str(tmp_path / "out.jsonl")])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.args.json", "scores.jsonl"]


def test_an_output_path_that_is_an_input_through_a_link_is_refused(tmp_path):
    scores = scores_file(tmp_path / "scores.jsonl", {"q": [("a", 2.0), ("b", 1.0)]})
    (tmp_path / "link.jsonl").symlink_to(scores)
    with pytest.raises(InputError, match="--output_path .*link.jsonl is an input of this run"):
        create_triplets.main(["--input_path", str(scores), "--output_path", str(tmp_path / "link.jsonl")])
    assert read_jsonl_records(scores)[0]["passage"] == "a"


def test_scores_of_different_teachers_are_not_mixed_into_one_file_of_records(tmp_path):
    first = scores_file(tmp_path / "train_scores.jsonl", {"q1": [("a", 2.0), ("b", 1.0)]})
    second = scores_file(tmp_path / "train_passages_as_queries_scores.jsonl", {"a": [("q1", 0.5), ("b", 0.1)]})
    for path, model in ((first, "judge"), (second, "embedder")):  # as stage 1 records what scored a file
        Path(f"{path}.run.json").write_text(json.dumps({"made_with": {"teachers": [{"model_path": model}]}}))
    with pytest.raises(InputError, match="were scored by different teachers or teacher settings"):
        create_triplets.main(["--input_path", str(first), str(second), "--output_path", str(tmp_path / "t.jsonl")])
    Path(f"{second}.run.json").write_text(json.dumps({"made_with": {"teachers": [{"model_path": "judge"}]}}))
    assert create_triplets.main(["--input_path", str(first), str(second), "--output_path",
                                 str(tmp_path / "t.jsonl")])["queries"] == 2


@pytest.mark.parametrize("record", ["{not json", "[1, 2]", '{"made_with": {"model": "m"}}'])
def test_a_run_record_stage_1_did_not_write_is_an_error_naming_it(tmp_path, record):
    first = scores_file(tmp_path / "train_scores.jsonl", {"q1": [("a", 2.0), ("b", 1.0)]})
    second = scores_file(tmp_path / "test_scores.jsonl", {"q2": [("c", 2.0), ("d", 1.0)]})
    Path(f"{second}.run.json").write_text(record)
    with pytest.raises(InputError, match=rf"^{second}.run.json: not a record stage 1 wrote .*delete the record if the "
                                         "output was made elsewhere"):
        create_triplets.main(["--input_path", str(first), str(second), "--output_path", str(tmp_path / "t.jsonl")])
    assert not (tmp_path / "t.jsonl").exists()


def test_teacher_scores_given_as_a_hub_data_set_are_fetched_through_the_hub_and_cache_given(monkeypatch, tmp_path):
    asked = []
    rows = [{"query": "q", "content": text, "score": score} for text, score in (("a", 3.0), ("b", 1.0), ("c", "0.5"))]
    monkeypatch.setattr("rerank_distill.hub.load_hub_dataset",
                        lambda name, split, hub, cache_dir: asked.append((name, split, hub, cache_dir)) or rows)
    create_triplets.main(["--input_path", "someone/scores:train", "--output_path", str(tmp_path / "t.jsonl"),
                          "--top_k", "1", "--hub", "modelscope", "--cache_dir", "/downloads"])
    assert asked == [("someone/scores", "train", "modelscope", "/downloads")]
    assert [(r["positive"], r["negative"], r["score"]) for r in read_jsonl_records(tmp_path / "t.jsonl")] == [
        ("a", "b", 2.0), ("a", "c", 2.5)]


def test_lists_of_one_query_text_scored_apart_by_several_teachers_are_combined_again_as_one(tmp_path):
    # Stage 1 standardised each list apart: A and C both lead their own list with a combined 1.0,
    # though both teachers score C far above A. Joined, the combined score is made over all four.
    def line(passage, first, second, combined):
        return {"query": "q", "passage": passage, "score": combined, "label": None,
                "teacher_scores": {"t1": first, "t2": second}}

    one = write_jsonl_records(tmp_path / "scores.jsonl", [line("A", 10.0, 5.0, 1.0), line("B", 0.0, 0.0, -1.0)])
    other = write_jsonl_records(tmp_path / "more_scores.jsonl", [line("C", 100.0, 50.0, 1.0), line("D", 99.0, 49.0, -1.0)])
    _, output = run(tmp_path, one, "--top_k", "1", "--num_negatives", "3")
    assert [(t["positive"], t["negative"]) for t in read_jsonl_records(output)] == [("A", "B")]  # one list: as it was
    assert read_jsonl_records(output)[0]["score"] == pytest.approx(2.0)

    summary = create_triplets.main(["--input_path", str(one), str(other), "--output_path", str(tmp_path / "both.jsonl"),
                                    "--top_k", "1", "--num_negatives", "3"])  # fmt: skip
    triplets = [(t["positive"], t["negative"]) for t in read_jsonl_records(tmp_path / "both.jsonl")]
    assert triplets == [("C", "D"), ("C", "A"), ("C", "B")] and summary["queries"] == 1


def test_teacher_scores_of_one_teacher_keep_the_margins_in_its_logits(tmp_path):
    # a map of one teacher (another tool's file): stage 1 combines nothing for one teacher, so neither does stage 2
    scores = write_jsonl_records(tmp_path / "scores.jsonl", [
        {"query": "q", "passage": passage, "score": score, "teacher_scores": {"ce": score}}
        for passage, score in [("a", 5.0), ("b", 3.0), ("c", 0.0)]])
    _, output = run(tmp_path, scores, "--top_k", "1")
    assert [(t["negative"], t["score"]) for t in read_jsonl_records(output)] == [("b", 2.0), ("c", 5.0)]


def test_a_margin_equal_to_min_margin_is_kept_whatever_the_float_rounding(tmp_path):
    scores = scores_file(tmp_path / "scores.jsonl", {"q": [("a", 0.3), ("b", 0.1)]})  # 0.3 - 0.1 < 0.2 in floats
    summary, _ = run(tmp_path, scores, "--min_margin", "0.2")
    assert summary["records"] == 1


def test_a_label_column_the_first_line_lacks_is_refused_there(tmp_path):
    scores = write_jsonl_records(tmp_path / "scores.jsonl", [{"query": "q", "passage": "a", "score": 1.0, "label": 1},
                                                           {"query": "q", "passage": "b", "score": 0.0, "label": 0}])
    with pytest.raises(InputError, match=r'scores.jsonl:1: the first line has no field "lable" \(--label_column\)'):
        run(tmp_path, scores, "--positives", "labels", "--label_column", "lable")


def test_a_label_column_these_settings_never_read_is_warned_about_not_looked_for(tmp_path, caplog):
    scores = write_jsonl_records(tmp_path / "scores.jsonl", [{"query": "q", "passage": "a", "score": 1.0},
                                                           {"query": "q", "passage": "b", "score": 0.0}])
    summary, _ = run(tmp_path, scores, "--label_column", "lable")  # the teacher's top: no label is read
    assert summary["records"] == 1
    assert any("--label_column lable is not read" in record.getMessage() for record in caplog.records)


def test_scores_whose_margin_overflows_are_refused_not_written_as_infinity(tmp_path):
    scores = write_jsonl_records(tmp_path / "scores.jsonl", [{"query": "q", "content": "A", "score": 1e308},
                                                           {"query": "q", "content": "B", "score": "-1e308"}])
    with pytest.raises(InputError, match="overflow in a margin"):
        run(tmp_path, scores)
    assert not (tmp_path / "out" / "triplets.jsonl").exists()
    for output_format in ("ntuples", "listwise"):  # which keep the scores, finite, but train on their margins
        with pytest.raises(InputError, match="overflow in a margin"):
            run(tmp_path, scores, "--format", output_format)



def test_an_interleaved_query_whose_first_lines_alone_would_overflow_gives_its_grouped_output(tmp_path):
    # q's first two lines alone pair a with b (margin 2e308: inf); its whole list pairs a with c (5e307)
    q_first = [{"query": "q", "content": "a", "score": 1e308}, {"query": "q", "content": "b", "score": -1e308}]
    r = [{"query": "r", "content": "x", "score": 1.0}, {"query": "r", "content": "y", "score": 0.0}]
    q_last = [{"query": "q", "content": "c", "score": 5e307}]
    interleaved = write_jsonl_records(tmp_path / "interleaved.jsonl", [*q_first, *r, *q_last])

    summary, output = run(tmp_path, interleaved, "--top_k", "1", "--num_negatives", "1")

    assert summary["input_grouped"] is False
    assert [(t["query"], t["positive"], t["negative"], t["score"]) for t in read_jsonl_records(output)] == [
        ("q", "a", "c", 5e307), ("r", "x", "y", 1.0)]


@pytest.mark.parametrize("grouped", [True, False])
def test_an_error_of_one_query_among_several_inputs_names_its_own_file_and_line(tmp_path, grouped):
    first = scores_file(tmp_path / "first.jsonl", {"q": [("a", 2.0), ("b", 1.0)]})
    pairs = [{"query": "r", "content": "A", "score": 1e308}, {"query": "r", "content": "B", "score": -1e308}]
    if not grouped:  # read through the index that regroups the queries
        pairs.append({"query": "q", "content": "c", "score": 0.0})
    second = write_jsonl_records(tmp_path / "second.jsonl", [{"query": "s", "content": "x", "score": 1.0}, *pairs])
    with pytest.raises(InputError, match=rf"^{second}:2: the teacher scores of query 'r' overflow"):
        create_triplets.main(["--input_path", str(first), str(second), "--output_path", str(tmp_path / "t.jsonl")])


def test_an_output_named_as_another_format_is_refused(tmp_path):
    scores = scores_file(tmp_path / "scores.jsonl", {"q": [("a", 2.0), ("b", 1.0)]})
    with pytest.raises(InputError, match=r"triplets.parquet: the records are written as JSONL; name it .jsonl"):
        run(tmp_path, scores, name="triplets.parquet")


@pytest.mark.parametrize("teacher_scores", [{"t1": "x", "t2": 1.0}, [1.0, 2.0], {"t1": None, "t2": 1.0}, {}])
def test_bad_teacher_scores_are_refused_at_their_line(tmp_path, teacher_scores):
    good = {"query": "q", "passage": "a", "score": 1.0, "label": None, "teacher_scores": {"t1": 1.0, "t2": 2.0}}
    scores = write_jsonl_records(tmp_path / "scores.jsonl", [good, {**good, "passage": "b", "teacher_scores": teacher_scores}])
    with pytest.raises(InputError, match=r'scores.jsonl:2: field "teacher_scores" must map each teacher to a finite'):
        run(tmp_path, scores)


def test_a_run_killed_as_it_records_itself_never_leaves_its_record_beside_an_earlier_output(tmp_path, monkeypatch):
    scores = labelled_file(tmp_path / "scores.jsonl", {"q": [("a", 3.0, 1), ("b", 2.0, 0), ("c", 1.0, 0)]})
    _, output = run(tmp_path, scores)  # triplets
    recorded = create_triplets.write_run_args

    def killed_once_written(*args, **kwargs):
        recorded(*args, **kwargs)
        raise KeyboardInterrupt  # a kill between the record and the output taking its name

    monkeypatch.setattr(create_triplets, "write_run_args", killed_once_written)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, scores, "--format", "listwise")

    assert json.loads(output.with_name("triplets.args.json").read_text())["script"]["format"] == "listwise"
    assert not output.exists()  # not the earlier run's triplets beside the listwise run's record
    assert not list(output.parent.glob("*.tmp"))


def test_an_output_path_of_bytes_that_are_not_utf8_is_written_and_recorded(tmp_path):
    import os

    scores = labelled_file(tmp_path / "scores.jsonl", {"q": [("a", 2.0, 1), ("b", 1.0, 0)]})
    # a Latin-1 file name reaches Python as a lone surrogate, which args.json must still hold
    output = tmp_path / os.fsdecode(b"caf\xe9.jsonl")
    create_triplets.main(["--input_path", str(scores), "--output_path", str(output)])
    assert read_jsonl_records(output)[0]["positive"] == "a"
    args = json.loads((tmp_path / os.fsdecode(b"caf\xe9.args.json")).read_text(encoding="utf-8"))
    assert args["script"]["output_path"] == str(output)


def test_stage_1_unfinished_output_is_refused_not_made_into_triplets(tmp_path):
    scores = tmp_path / "train_scores.jsonl"  # stage 1 stopped (or still runs): its pairs so far, and its progress
    partial = write_jsonl_records(scores.with_name(scores.name + ".partial"),
                                  [{"query": "q", "passage": "a", "score": 2.0, "label": 1},
                                   {"query": "q", "passage": "b", "score": 0.0, "label": 0}])
    scores.with_name(scores.name + ".progress.json").write_text('{"done": 2}', encoding="utf-8")
    output = tmp_path / "triplets.jsonl"
    with pytest.raises(InputError, match=rf"^{partial}: is stage 1's unfinished output .*run generate_logits.py again "
                                         rf"with the same flags to finish {scores}, then pass that"):
        create_triplets.main(["--input_path", str(partial), "--output_path", str(output)])
    with pytest.raises(InputError, match=rf"^{scores}: not found: stage 1 has not finished it \({partial} holds the "
                                         r"pairs scored so far\); run generate_logits.py again"):
        create_triplets.main(["--input_path", str(scores), "--output_path", str(output)])
    assert not output.exists()


def test_a_second_run_on_the_same_output_is_refused_while_the_first_writes(tmp_path):
    from rerank_distill.jsonl import only_writer

    scores = scores_file(tmp_path / "scores.jsonl", {"q": [("a", 2.0), ("b", 1.0)]})
    output = tmp_path / "out" / "triplets.jsonl"
    with only_writer(output):
        with pytest.raises(InputError, match=f"another run is writing {output} at this moment"):
            run(tmp_path, scores)
    run(tmp_path, scores)  # free again once the first is done
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["triplets.args.json", "triplets.jsonl"]


def test_an_output_whose_run_record_is_another_outputs_beside_it_is_refused(tmp_path):
    scores = scores_file(tmp_path / "scores.jsonl", {"q": [("a", 2.0), ("b", 1.0)]})
    _, plain = run(tmp_path, scores)
    with pytest.raises(InputError, match=r"its run record .*triplets.args.json is that of .*triplets.jsonl beside it"):
        run(tmp_path, scores, name="triplets.jsonl.gz")
    assert not (tmp_path / "out" / "triplets.jsonl.gz").exists()
    run(tmp_path, scores, "--top_k", "1")  # its own record: rewritten
    plain.unlink()
    run(tmp_path, scores, name="triplets.jsonl.gz")  # the other gone, its record is left to nothing


def test_blank_query_and_passage_texts_are_paired_as_they_are_but_said(tmp_path, caplog):
    scores = scores_file(tmp_path / "scores.jsonl", {"q": [("a", 2.0), (" ", 1.0)], "": [("b", 2.0), ("c", 1.0)]})
    summary, output = run(tmp_path, scores)
    assert summary["records"] == 2
    assert f"{scores}: 1 blank query texts and 1 blank passages (the first in the query at {scores}:1)" in caplog.text
    caplog.clear()
    run(tmp_path, scores_file(tmp_path / "clean.jsonl", {"q": [("a", 2.0), ("b", 1.0)]}))
    assert "blank" not in caplog.text
