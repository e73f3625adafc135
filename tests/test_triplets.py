"""Stage 2 (create_triplets.py, rerank_distill.triplets): hard-negative triplets from teacher scores."""

import json
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

import create_triplets
from rerank_distill.errors import InputError
from rerank_distill.formats import ScoredPair
from rerank_distill.triplets import (
    SKIP_IDENTICAL_TEXT,
    SKIP_NON_POSITIVE_MARGIN,
    SKIP_TOO_FEW_PASSAGES,
    QueriesNotGrouped,
    Triplet,
    iter_query_groups,
    iter_query_groups_indexed,
    rank_by_score,
    select_triplets,
)


def write_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def scores_file(path: Path, queries: dict[str, list[tuple[str, float]]]) -> Path:
    """Stage 1's format, each query's pairs on consecutive lines."""
    records = [
        {"query": query, "passage": passage, "score": score, "label": None}
        for query, pairs in queries.items()
        for passage, score in pairs
    ]
    return write_lines(path, records)


def run(tmp_path: Path, input_path: Path, *flags: str, name: str = "triplets.jsonl") -> tuple[dict, Path]:
    output = tmp_path / "out" / name
    summary = create_triplets.main(["--input_path", str(input_path), "--output_path", str(output), *flags])
    return summary, output


# --- the selection rule ---


def test_each_top_k_positive_is_paired_with_the_passages_ranked_just_below_it():
    # ranked by score: a 4.5, b 3.0, c 1.25, d -0.5, e -2.0 (input order is shuffled)
    passages = ["c", "a", "e", "b", "d"]
    scores = [1.25, 4.5, -2.0, 3.0, -0.5]

    triplets, skipped = select_triplets(passages, scores, top_k=2, num_negatives=2)

    assert triplets == [
        Triplet("a", "b", 1.5),
        Triplet("a", "c", 3.25),
        Triplet("b", "c", 1.75),
        Triplet("b", "d", 3.5),
    ]
    assert skipped == Counter()


def test_defaults_use_eight_positives_with_four_negatives_each(tmp_path):
    # ten passages p0..p9 with scores 9..0: positives are ranks 0-7, negatives ranks i+1..i+4 (up to rank 9)
    scores = scores_file(tmp_path / "scores.jsonl", {"q": [(f"p{i}", float(9 - i)) for i in range(10)]})

    summary, output = run(tmp_path, scores)

    pairs = [(t["positive"], t["negative"]) for t in read_lines(output)]
    expected = [(f"p{i}", f"p{j}") for i in range(8) for j in range(i + 1, min(i + 5, 10))]
    assert pairs == expected
    assert len(expected) == 6 * 4 + 3 + 2
    assert summary["triplets"] == len(expected)


def test_equal_scores_keep_input_order():
    assert rank_by_score([1.0, 2.0, 2.0, 0.0]) == [1, 2, 0, 3]
    # b and c tie below a: the one written first is a's hard negative
    assert select_triplets(["a", "b", "c"], [2.0, 1.0, 1.0], top_k=1, num_negatives=1)[0] == [Triplet("a", "b", 1.0)]
    assert select_triplets(["a", "c", "b"], [2.0, 1.0, 1.0], top_k=1, num_negatives=1)[0] == [Triplet("a", "c", 1.0)]


def test_pairs_with_identical_text_are_skipped_and_counted():
    triplets, skipped = select_triplets(["x", "x", "y"], [3.0, 2.0, 1.0], top_k=2, num_negatives=2)

    assert triplets == [Triplet("x", "y", 2.0), Triplet("x", "y", 1.0)]
    assert skipped == Counter({SKIP_IDENTICAL_TEXT: 1})


def test_identical_text_is_the_reason_even_when_the_scores_also_tie():
    assert select_triplets(["x", "x"], [1.0, 1.0], top_k=8, num_negatives=4) == ([], Counter({SKIP_IDENTICAL_TEXT: 1}))


def test_tied_scores_are_skipped_as_non_positive_margins():
    triplets, skipped = select_triplets(["a", "b", "c"], [1.0, 1.0, 0.0], top_k=2, num_negatives=2)

    assert triplets == [Triplet("a", "c", 1.0), Triplet("b", "c", 1.0)]
    assert skipped == Counter({SKIP_NON_POSITIVE_MARGIN: 1})


def test_fewer_passages_than_top_k_uses_what_there_is():
    triplets, skipped = select_triplets(["a", "b", "c"], [3.0, 2.0, 1.0], top_k=8, num_negatives=4)

    assert triplets == [Triplet("a", "b", 1.0), Triplet("a", "c", 2.0), Triplet("b", "c", 1.0)]
    assert skipped == Counter()


def test_top_k_and_num_negatives_of_one_give_one_triplet():
    assert select_triplets(["a", "b", "c"], [3.0, 2.0, 1.0], top_k=1, num_negatives=1)[0] == [Triplet("a", "b", 1.0)]


@pytest.mark.parametrize("passages", [[], ["alone"]])
def test_a_query_with_fewer_than_two_passages_is_counted_once(passages):
    scores = [1.0] * len(passages)
    assert select_triplets(passages, scores, top_k=8, num_negatives=4) == ([], Counter({SKIP_TOO_FEW_PASSAGES: 1}))


# --- the stage script ---


def test_writes_triplet_lines_with_the_teacher_margin_and_a_summary(tmp_path):
    scores = scores_file(
        tmp_path / "scores.jsonl",
        {
            "q1": [("low", -1.5), ("high", 2.5), ("dup", 1.0), ("dup", 0.5)],
            "q2": [("only", 0.25)],
        },
    )

    summary, output = run(tmp_path, scores, "--top_k", "2", "--num_negatives", "2")

    assert read_lines(output) == [
        {"query": "q1", "positive": "high", "negative": "dup", "score": 1.5},
        {"query": "q1", "positive": "high", "negative": "dup", "score": 2.0},
        {"query": "q1", "positive": "dup", "negative": "low", "score": 2.5},
    ]
    assert {k: summary[k] for k in ("queries", "pairs", "triplets", "skipped", "input_grouped")} == {
        "queries": 2,
        "pairs": 5,
        "triplets": 3,
        "skipped": {SKIP_IDENTICAL_TEXT: 1, SKIP_NON_POSITIVE_MARGIN: 0, SKIP_TOO_FEW_PASSAGES: 1},
        "input_grouped": True,
    }
    run_args = json.loads((tmp_path / "out" / "triplets.args.json").read_text())
    assert run_args["script"] == {
        "input_path": str(scores),
        "output_path": str(output),
        "top_k": 2,
        "num_negatives": 2,
    }


def test_the_same_input_gives_the_same_bytes(tmp_path):
    queries = {f"q{q}": [(f"passage {q}-{p}", ((q * 7 + p * 3) % 5) / 4) for p in range(9)] for q in range(6)}
    scores = scores_file(tmp_path / "scores.jsonl", queries)

    _, first = run(tmp_path, scores, name="first.jsonl")
    _, second = run(tmp_path, scores, name="second.jsonl")

    assert first.read_bytes() == second.read_bytes()


def test_numeric_string_scores_from_a_content_file(tmp_path):
    scores = write_lines(
        tmp_path / "other_tool.jsonl",
        [
            {"query": "q", "content": "good", "score": "2.5"},
            {"query": "q", "content": "bad", "score": " -1 "},
        ],
    )

    _, output = run(tmp_path, scores)

    assert read_lines(output) == [{"query": "q", "positive": "good", "negative": "bad", "score": 3.5}]


# --- input not grouped by query ---


def interleaved_and_grouped(tmp_path: Path) -> tuple[Path, Path]:
    """The same lines twice: interleaved by query, and grouped in order of first appearance."""
    interleaved = [
        ("q1", "a", 1.0), ("q2", "x", 0.5), ("q1", "b", 3.0), ("q3", "m", 2.0),
        ("q2", "y", 1.5), ("q1", "c", 2.0), ("q3", "n", 2.0), ("q2", "z", -1.0), ("q1", "d", 3.0),
    ]  # fmt: skip
    grouped = sorted(interleaved, key=lambda row: ["q1", "q2", "q3"].index(row[0]))  # stable: keeps line order
    write = lambda path, rows: write_lines(path, [{"query": q, "passage": p, "score": s} for q, p, s in rows])
    return write(tmp_path / "interleaved.jsonl", interleaved), write(tmp_path / "grouped.jsonl", grouped)


def test_an_interleaved_file_gives_the_same_triplets_as_its_grouped_version(tmp_path):
    interleaved, grouped = interleaved_and_grouped(tmp_path)

    from_grouped, grouped_output = run(tmp_path, grouped, "--top_k", "2", "--num_negatives", "2", name="g.jsonl")
    from_interleaved, interleaved_output = run(
        tmp_path, interleaved, "--top_k", "2", "--num_negatives", "2", name="i.jsonl"
    )

    assert interleaved_output.read_bytes() == grouped_output.read_bytes()
    assert [t["query"] for t in read_lines(grouped_output)] == ["q1"] * 3 + ["q2"] * 3
    assert (from_grouped["input_grouped"], from_interleaved["input_grouped"]) == (True, False)
    assert from_interleaved["skipped"] == from_grouped["skipped"] == {
        SKIP_IDENTICAL_TEXT: 0, SKIP_NON_POSITIVE_MARGIN: 2, SKIP_TOO_FEW_PASSAGES: 0,
    }  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["g.args.json", "g.jsonl", "i.args.json", "i.jsonl"]


def test_a_query_that_reappears_stops_the_streaming_grouper():
    pairs = [ScoredPair("q1", "a", 1.0, line=1), ScoredPair("q2", "b", 1.0, line=2), ScoredPair("q1", "c", 1.0, line=3)]

    with pytest.raises(QueriesNotGrouped) as raised:
        list(iter_query_groups(pairs))

    assert (raised.value.query, raised.value.line) == ("q1", 3)


def test_the_indexed_grouper_gathers_each_query_in_order_of_first_appearance(tmp_path):
    pairs = [
        ScoredPair("q2", "b", 0.5, line=1),
        ScoredPair("q1", "a", 1.0, line=2),
        ScoredPair("q2", "d", -0.1, line=3),
        ScoredPair("q1", "c", 2.0, line=4),
    ]

    groups = [(g.query, g.passages, g.scores, g.line) for g in iter_query_groups_indexed(pairs, str(tmp_path))]

    assert groups == [("q2", ["b", "d"], [0.5, -0.1], 1), ("q1", ["a", "c"], [1.0, 2.0], 2)]
    assert list(tmp_path.iterdir()) == []


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

    assert "1 queries have fewer than 2 passages" in str(raised.value)
    assert "1 pairs had tied scores" in str(raised.value)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("flag", ["--top_k", "--num_negatives"])
def test_counts_below_one_are_rejected(tmp_path, flag):
    scores = scores_file(tmp_path / "scores.jsonl", {"q": [("a", 1.0), ("b", 0.0)]})

    with pytest.raises(InputError, match=f"{flag} must be at least 1"):
        run(tmp_path, scores, flag, "0")


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
