"""The data-set formats (rerank_distill/formats.py): each format read from a tiny file written here,
format detection from the fields, --input_format forcing, --label_column, and bad input failing
with file:line and the field."""

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rerank_distill.errors import InputError
from rerank_distill.formats import (
    ListOddities,
    check_outside_data_set_folders,
    detect_format,
    id_columns,
    iter_ranking_queries,
    iter_scored_pairs,
    label_probs_of,
    label_word_grades,
    local_files,
    source_stem,
)
from rerank_distill.toy import write_jsonl_records


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def as_tuples(source, **kwargs) -> list[tuple[str, list[str], list[float]]]:
    return [(q.query, q.passages, q.labels) for q in iter_ranking_queries(str(source), **kwargs)]


# ESCI-style graded rows: two queries, interleaved, letters and words mixed
GRADED_ROWS = [
    {"query": "usb cable", "item_text": "usb-c cable 1m", "esci_label": "E"},
    {"query": "red shoes", "item_text": "red running shoes", "esci_label": "E"},
    {"query": "usb cable", "item_text": "usb charger", "esci_label": "C"},
    {"query": "usb cable", "item_text": "hdmi cable", "esci_label": "S"},
    {"query": "red shoes", "item_text": "blue hat", "esci_label": "I"},
]
GRADED_QUERIES = [
    ("usb cable", ["usb-c cable 1m", "usb charger", "hdmi cable"], [3.0, 1.0, 2.0]),
    ("red shoes", ["red running shoes", "blue hat"], [3.0, 0.0]),
]


# --- each format -------------------------------------------------------------------------------


def test_mteb_records_list_positives_then_negatives_with_labels_one_and_zero(tmp_path):
    source = write_jsonl_records(tmp_path / "test.jsonl", [
        {"query": "q1", "positive": ["p1", "p2"], "negative": ["n1"]},
        {"query": "q2", "positive": "lone positive", "negative": []},
    ])  # fmt: skip
    queries = list(iter_ranking_queries(str(source)))
    assert [(q.query, q.passages, q.labels) for q in queries] == [
        ("q1", ["p1", "p2", "n1"], [1.0, 1.0, 0.0]),
        ("q2", ["lone positive"], [1.0]),
    ]
    assert queries[1].location == f"{source}:2"
    assert (queries[0].positives, queries[0].negatives) == (["p1", "p2"], ["n1"])


def test_pos_neg_records_read_like_mteb(tmp_path):
    source = write_jsonl_records(tmp_path / "pairs.jsonl", [{"query": "q", "pos": ["p"], "neg": ["n1", "n2"]}])
    assert as_tuples(source) == [("q", ["p", "n1", "n2"], [1.0, 0.0, 0.0])]


def test_graded_rows_map_esci_letters_to_grades_and_group_by_query_in_first_appearance_order(tmp_path):
    source = write_jsonl_records(tmp_path / "esci.jsonl", GRADED_ROWS)
    queries = list(iter_ranking_queries(str(source)))
    assert [(q.query, q.passages, q.labels) for q in queries] == GRADED_QUERIES
    assert [q.location for q in queries] == [f"{source}:1", f"{source}:2"]  # each query's first row


def test_graded_rows_accept_esci_words_numbers_numeric_strings_and_the_passage_field(tmp_path):
    source = write_jsonl_records(tmp_path / "graded.jsonl", [
        {"query": "q", "passage": "a", "label": "Exact"},
        {"query": "q", "passage": "b", "label": " irrelevant "},
        {"query": "q", "passage": "c", "label": 2},
        {"query": "q", "passage": "d", "label": "1"},
        {"query": "q", "passage": "e", "label": True},
        {"query": "q", "passage": "f", "label": False},
    ])  # fmt: skip
    assert as_tuples(source) == [("q", ["a", "b", "c", "d", "e", "f"], [3.0, 0.0, 2.0, 1.0, 1.0, 0.0])]


def test_graded_parquet_reads_like_the_same_rows_in_jsonl(tmp_path):
    columns = {name: [row[name] for row in GRADED_ROWS] for name in ("query", "item_text", "esci_label")}
    source = write_parquet(tmp_path / "esci.parquet", columns)
    queries = list(iter_ranking_queries(str(source)))
    assert [(q.query, q.passages, q.labels) for q in queries] == GRADED_QUERIES
    assert queries[1].location == f"{source}:2"  # row numbers count from 1, as lines do


def test_mteb_parquet_with_list_columns_is_read(tmp_path):
    source = write_parquet(tmp_path / "test.parquet", {"query": ["q"], "positive": [["p"]], "negative": [["n1", "n2"]]})
    assert as_tuples(source) == [("q", ["p", "n1", "n2"], [1.0, 0.0, 0.0])]


def test_a_list_a_record_lacks_is_read_as_empty_whether_left_out_or_null_as_parquet_holds_it(tmp_path):
    # a JSONL record may leave out "negative"; the same records as Parquet (pandas, datasets) hold it as null
    records = [{"query": "q", "positive": ["p"], "negative": ["n"]}, {"query": "r", "positive": ["p"]},
               {"query": "s", "negative": ["n"]}]
    jsonl = write_jsonl_records(tmp_path / "test.jsonl", records)
    parquet = write_parquet(tmp_path / "test.parquet", {"query": ["q", "r", "s"], "positive": [["p"], ["p"], None],
                                                        "negative": [["n"], None, ["n"]]})
    expected = [("q", ["p", "n"], [1.0, 0.0]), ("r", ["p"], [1.0]), ("s", ["n"], [0.0])]
    assert as_tuples(jsonl) == as_tuples(parquet) == expected


def test_a_record_whose_both_lists_are_null_is_refused_at_its_row(tmp_path):
    parquet = write_parquet(tmp_path / "test.parquet", {"query": ["q", "r"], "positive": [["p"], None],
                                                        "negative": [["n"], None]})
    with pytest.raises(InputError, match=re.escape(f'{parquet}:2: record has neither "positive" nor "negative"')):
        as_tuples(parquet)


def test_rows_naming_the_passage_field_differently_read_alike_as_jsonl_and_as_parquet_whose_other_column_is_null(
    tmp_path,
):
    rows = [{"query": "q", "passage": "a", "label": 1}, {"query": "q", "content": "b", "label": 0}]
    jsonl = write_jsonl_records(tmp_path / "test.jsonl", rows)
    parquet = write_parquet(tmp_path / "test.parquet", {"query": ["q", "q"], "passage": ["a", None],
                                                        "content": [None, "b"], "label": [1, 0]})
    assert as_tuples(jsonl) == as_tuples(parquet) == [("q", ["a", "b"], [1.0, 0.0])]
    no_passage = write_parquet(tmp_path / "none.parquet", {"query": ["q"], "passage": [None], "label": [1]})
    with pytest.raises(InputError, match=re.escape(f"{no_passage}:1: missing the passage field")):
        as_tuples(no_passage)


def test_teacher_scores_from_elsewhere_accept_content_and_numeric_string_scores(tmp_path):
    source = write_jsonl_records(tmp_path / "scores.jsonl", [
        {"query": "q", "content": "a", "score": "0.75"},
        {"query": "q", "content": "b", "score": -2, "source": "bm25"},
    ])  # fmt: skip
    pairs = list(iter_scored_pairs(str(source)))
    assert [(p.query, p.passage, p.score, p.label, p.line) for p in pairs] == [
        ("q", "a", 0.75, None, 1),
        ("q", "b", -2.0, None, 2),
    ]
    assert pairs[1].extra == {"source": "bm25"}  # unknown fields are kept, not dropped


def test_a_pair_with_two_different_passage_fields_is_refused_at_its_line_not_read_as_one_of_them(tmp_path):
    source = write_jsonl_records(tmp_path / "scores.jsonl", [
        {"query": "q", "passage": "a", "content": "a", "score": 1.0},  # the same text twice: one passage
        {"query": "q", "passage": "doc-17", "content": "the real text", "score": 0.5},
    ])  # fmt: skip
    with pytest.raises(InputError, match=rf'{source}:2: fields "passage" and "content" hold different passages'):
        list(iter_scored_pairs(str(source)))
    (pair,) = iter_scored_pairs(str(write_jsonl_records(tmp_path / "one.jsonl", [
        {"query": "q", "passage": "a", "content": "a", "score": 1.0}])))  # fmt: skip
    assert (pair.passage, pair.extra) == ("a", {})


def test_a_row_whose_label_fields_disagree_is_refused_at_its_line_unless_one_is_named(tmp_path):
    rows = [
        {"query": "q", "item_text": "a", "esci_label": "E", "label": 3},  # the same grade twice: one label
        {"query": "q", "item_text": "b", "esci_label": "I", "label": 1},
    ]
    source = write_jsonl_records(tmp_path / "graded.jsonl", rows)
    with pytest.raises(InputError, match=rf"{source}:2: row has relevance labels that disagree: \"esci_label\" "
                                         r"\('I', grade 0\), \"label\" \(1, grade 1\); name the one to read with "
                                         "--label_column"):
        list(iter_ranking_queries(str(source)))
    with pytest.raises(InputError, match="labels that disagree"):
        list(iter_scored_pairs(str(write_jsonl_records(tmp_path / "scores.jsonl",
                                                       [{**row, "score": 1.0} for row in rows]))))
    (query,) = iter_ranking_queries(str(source), label_column="label")
    assert query.labels == [3.0, 1.0]
    other = write_jsonl_records(tmp_path / "other.jsonl", [{"query": "q", "item_text": "a", "label": 1, "grade": "A"}])
    with pytest.raises(InputError, match=r'field "grade" must be a number .* got \'A\'; this row has several label '
                                         r"fields \(label, grade\): name the one to read with --label_column"):
        list(iter_ranking_queries(str(other)))
    assert next(iter_ranking_queries(str(other), label_column="label")).labels == [1.0]


def test_stage_one_output_keeps_the_gold_label_and_extra_fields(tmp_path):
    probs = {"exact": 0.7, "substitute": 0.1, "complement": 0.1, "irrelevant": 0.1}
    source = write_jsonl_records(tmp_path / "scores.jsonl", [
        {"query": "q", "passage": "a", "score": 1.5, "label": 3, "label_probs": probs},
    ])  # fmt: skip
    (pair,) = iter_scored_pairs(str(source))
    assert (pair.score, pair.label, pair.extra) == (1.5, 3.0, {"label_probs": probs})


def test_stage_one_output_with_labels_is_also_a_ranking_data_set(tmp_path):
    source = write_jsonl_records(tmp_path / "scores.jsonl", [
        {"query": "q", "passage": "a", "score": 1.5, "label": 1},
        {"query": "q", "passage": "b", "score": 0.5, "label": 0},
    ])  # fmt: skip
    assert as_tuples(source) == [("q", ["a", "b"], [1.0, 0.0])]


# --- detection and forcing --------------------------------------------------------------------


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"query": "q", "positive": ["p"], "negative": ["n"]}, "mteb"),
        ({"query": "q", "negative": ["n"]}, "mteb"),
        ({"query": "q", "pos": ["p"], "neg": ["n"]}, "pos_neg"),
        ({"query": "q", "pos": ["p"]}, "pos_neg"),
        ({"query": "q", "content": "c", "score": "0.3"}, "scores"),
        ({"query": "q", "passage": "p", "score": 1.0, "label": 1}, "scores"),
        ({"query": "q", "item_text": "t", "esci_label": "E"}, "graded"),
        ({"query": "q", "passage": "p", "relevance": 2}, "graded"),
    ],
)
def test_format_is_detected_from_the_fields(record, expected):
    assert detect_format(record, "data.jsonl", 1) == expected


def test_unrecognised_fields_fail_naming_file_line_fields_and_the_formats_expected(tmp_path):
    source = write_jsonl_records(tmp_path / "odd.jsonl", [{"question": "q", "answers": ["a"]}])
    with pytest.raises(InputError, match=rf"{source}:1: cannot tell the format from the fields \['answers', 'q"):
        list(iter_ranking_queries(str(source)))


@pytest.mark.parametrize("record", [{"query": "q", "pos": ["a"], "negative": ["b"]},
                                    {"query": "q", "positive": ["a"], "neg": ["b"]}])
def test_a_record_mixing_the_field_names_of_two_formats_is_refused_not_half_read(tmp_path, record):
    path = write_jsonl_records(tmp_path / "mixed.jsonl", [record])
    with pytest.raises(InputError, match=r'mixed.jsonl:1: record mixes "(pos|neg)" with the mteb format'):
        list(iter_ranking_queries(str(path)))


def test_a_later_record_in_the_other_formats_names_is_refused_naming_the_first_records_format(tmp_path):
    path = write_jsonl_records(tmp_path / "mixed.jsonl", [{"query": "q", "positive": ["a"], "negative": ["b"]},
                                                          {"query": "r", "pos": ["c"], "neg": ["d"]}])
    with pytest.raises(InputError, match=rf'mixed.jsonl:2: record uses "pos" / "neg", but the first record \({path}:1\) '
                                         r'used the mteb format\'s "positive" / "negative"'):
        list(iter_ranking_queries(str(path)))


@pytest.mark.parametrize("first, second", [("mteb", "graded"), ("graded", "mteb"), ("scores", "pos_neg")])
def test_a_later_record_of_a_query_a_line_among_rows_a_pair_or_the_reverse_is_named_as_another_format(tmp_path, first,
                                                                                                     second):
    records = {"mteb": {"query": "q", "positive": ["a"], "negative": ["b"]},
               "pos_neg": {"query": "q", "pos": ["a"], "neg": ["b"]},
               "graded": {"query": "q", "item_text": "a", "esci_label": "E"},
               "scores": {"query": "q", "passage": "a", "score": 1.5, "label": 1}}  # fmt: skip
    path = write_jsonl_records(tmp_path / "joined.jsonl", [records[first], records[second]])
    with pytest.raises(InputError, match=rf"joined.jsonl:2: this record is in the {second} format, but the first record "
                                         rf"\({path}:1\) is in the {first} format, and one source holds one format"):
        list(iter_ranking_queries(str(path)))


def test_a_broken_score_beside_a_label_suggests_reading_the_rows_as_graded_labels(tmp_path):
    rows = [{"query": "q", "item_text": "a", "esci_label": "E", "score": 12.5},  # a retriever's score, say
            {"query": "q", "item_text": "b", "esci_label": "I", "score": None}]  # fmt: skip
    path = write_jsonl_records(tmp_path / "bm25.jsonl", rows)
    with pytest.raises(InputError, match=r'bm25.jsonl:2: field "score" must be a number, got NoneType; if "score" holds '
                                         "no teacher score .* with --input_format graded$"):
        as_tuples(path)
    assert as_tuples(path, input_format="graded") == [("q", ["a", "b"], [3.0, 0.0])]


def test_rows_of_graded_labels_and_of_teacher_scores_with_labels_read_alike(tmp_path):
    path = write_jsonl_records(tmp_path / "rows.jsonl", [{"query": "q", "item_text": "a", "esci_label": "E"},
                                                         {"query": "q", "passage": "b", "score": 0.5, "label": 0}])
    assert as_tuples(path) == [("q", ["a", "b"], [3.0, 0.0])]


def test_lists_saved_as_text_are_read_as_one_passage_each_and_warned_about(tmp_path, caplog):
    records = [{"query": "q", "positive": '["a", "b"]', "negative": "['c']"},  # JSON, and Python as pandas writes it
               {"query": "r", "positive": ["[citation needed]", "[1, 2]"], "negative": ["[]"]}]  # fmt: skip
    path = write_jsonl_records(tmp_path / "export.jsonl", records)
    queries = list(iter_ranking_queries(str(path)))
    assert [query.passages for query in queries] == [['["a", "b"]', "['c']"], ["[citation needed]", "[1, 2]", "[]"]]
    ListOddities.found_in(queries).warn(str(path), "each is read as it is")
    assert (f"{path}: 3 passages that are the text of a list of texts (a list saved as a string, as a CSV export "
            f"writes it? Each is one passage here: store lists as JSON arrays) (first at {path}:1)") in caplog.text


def test_input_format_forces_the_reading_instead_of_detection(tmp_path):
    # a record carrying both spellings: detection refuses it (see above), --input_format reads the pair named
    record = {"query": "q", "positive": ["P"], "negative": [], "pos": ["p"], "neg": ["n"]}
    source = write_jsonl_records(tmp_path / "both.jsonl", [record])
    assert as_tuples(source, input_format="mteb") == [("q", ["P"], [1.0])]
    assert as_tuples(source, input_format="pos_neg") == [("q", ["p", "n"], [1.0, 0.0])]


@pytest.mark.parametrize(("record", "named", "holds"), [
    ({"query": "q", "pos": ["p"], "neg": ["n"]}, "mteb", "pos_neg"),
    ({"query": "q", "positive": ["p"], "negative": ["n"]}, "graded", "mteb"),
    ({"query": "q", "passage": "p", "label": 1}, "pos_neg", "graded"),
])  # fmt: skip
def test_forced_format_that_does_not_match_the_file_fails_at_the_first_record_naming_the_flag(tmp_path, record, named,
                                                                                              holds):
    # (it said only which field was missing, as if the data were broken, not the flag)
    source = write_jsonl_records(tmp_path / "pairs.jsonl", [record])
    with pytest.raises(InputError, match=rf"{source}:1: --input_format {named} reads .*, but this record has the "
                                         rf"fields .* \(the {holds} format\); leave --input_format out"):
        as_tuples(source, input_format=named)


def test_unknown_input_format_lists_the_choices(tmp_path):
    source = write_jsonl_records(tmp_path / "test.jsonl", [{"query": "q", "pos": ["p"], "neg": ["n"]}])
    with pytest.raises(InputError, match="unknown --input_format 'trec'; choose one of auto, mteb, pos_neg, graded"):
        as_tuples(source, input_format="trec")


# --- label_column -------------------------------------------------------------------------------


def test_label_column_names_the_grade_column_and_wins_over_the_usual_label_fields(tmp_path):
    source = write_jsonl_records(tmp_path / "graded.jsonl", [
        {"query": "q", "passage": "a", "label": "product", "my_grade": 2},
        {"query": "q", "passage": "b", "label": "product", "my_grade": "I"},
    ])  # fmt: skip
    assert as_tuples(source, label_column="my_grade") == [("q", ["a", "b"], [2.0, 0.0])]


def test_label_column_lets_detection_recognise_rows_with_an_unusual_label_name(tmp_path):
    source = write_jsonl_records(tmp_path / "graded.jsonl", [{"query": "q", "item_text": "a", "stars": 4}])
    with pytest.raises(InputError, match="cannot tell the format"):
        as_tuples(source)
    assert as_tuples(source, label_column="stars") == [("q", ["a"], [4.0])]


def test_row_missing_the_named_label_column_fails_naming_it(tmp_path):
    source = write_jsonl_records(tmp_path / "graded.jsonl", [
        {"query": "q", "passage": "a", "stars": 4},
        {"query": "q", "passage": "b", "label": 1},
    ])  # fmt: skip
    with pytest.raises(InputError, match=rf'{source}:2: this row has no relevance label \("stars" \(--label_column'):
        as_tuples(source, label_column="stars")


def test_label_column_on_one_query_a_line_data_is_read_as_lists_and_said_unread(tmp_path, caplog):
    source = write_jsonl_records(tmp_path / "mteb.jsonl", [{"query": "q", "positive": ["a"], "negative": ["b"],
                                                            "stars": 4}])
    assert as_tuples(source, label_column="stars") == [("q", ["a", "b"], [1.0, 0.0])]
    assert f"--label_column stars is not read in {source}: its mteb format labels a passage by the list" in caplog.text


# --- stage 2's outputs where ranking data or teacher scores belong --------------------------------

STAGE_TWO_RECORDS = {
    "triplets": {"query": "q", "positive": "p", "negative": "n", "score": 1.5},
    "ntuples": {"query": "q", "positive": "p", "negatives": ["n"], "scores": [1.0, 0.0]},
    "listwise": {"query": "q", "passages": ["p", "n"], "scores": [1.0, 0.0]},
}


@pytest.mark.parametrize("kind", STAGE_TWO_RECORDS)
@pytest.mark.parametrize("input_format", ["auto", "mteb"])
def test_stage_two_output_is_refused_as_ranking_data_naming_what_it_is(tmp_path, kind, input_format):
    source = write_jsonl_records(tmp_path / "records.jsonl", [STAGE_TWO_RECORDS[kind]])
    with pytest.raises(InputError, match=rf"{source}:1: this is a line of {kind} .*which train.py trains on\), but "
                                         "this stage reads ranking data"):
        as_tuples(source, input_format=input_format)


@pytest.mark.parametrize("record, message", [
    (STAGE_TWO_RECORDS["triplets"], "this is a line of triplets .* but this stage reads teacher scores"),
    ({"query": "q", "positive": ["p"], "negative": ["n"]}, "this is ranking data without teacher scores.* generate_logits.py"),
    ({"query": "q", "pos": ["p"], "neg": ["n"]}, "this is ranking data without teacher scores"),
    ({"query": "q", "item_text": "p", "esci_label": "E"}, "this is ranking data without teacher scores"),
])  # fmt: skip
def test_teacher_scores_readers_say_what_they_were_given_instead(tmp_path, record, message):
    source = write_jsonl_records(tmp_path / "records.jsonl", [record])
    with pytest.raises(InputError, match=rf"{source}:1: {message}"):
        list(iter_scored_pairs(str(source)))


# --- errors name file:line ---------------------------------------------------------------------


def test_bad_grade_fails_with_file_line_field_and_the_value(tmp_path):
    source = write_jsonl_records(tmp_path / "esci.jsonl", [GRADED_ROWS[0], {**GRADED_ROWS[1], "esci_label": "X"}])
    message = r"field \"esci_label\" must be a number or an ESCI label \(E, S, C, I\), got 'X'"
    with pytest.raises(InputError, match=rf"{source}:2: {message}"):
        as_tuples(source)


@pytest.mark.parametrize("grade", ["nan", 10**400])
def test_non_finite_grade_is_refused(tmp_path, grade):
    source = write_jsonl_records(tmp_path / "graded.jsonl", [{"query": "q", "passage": "a", "grade": grade}])
    with pytest.raises(InputError, match=rf'{source}:1: field "grade" must be a number'):
        as_tuples(source)


def test_a_negative_grade_is_refused_at_its_own_row_where_grades_are_gains(tmp_path):
    rows = [{"query": "q", "passage": "a", "grade": 1}, {"query": "q", "passage": "b", "grade": -1}]
    source = write_jsonl_records(tmp_path / "graded.jsonl", rows)
    assert as_tuples(source) == [("q", ["a", "b"], [1.0, -1.0])]
    with pytest.raises(InputError, match=rf'{source}:2: field "grade" is -1; relevance grades must be >= 0'):
        as_tuples(source, nonnegative_grades=True)


def test_bad_grade_in_parquet_names_the_file_and_row(tmp_path):
    columns = {"query": ["q", "q"], "item_text": ["a", "b"], "esci_label": ["E", "maybe"]}
    source = write_parquet(tmp_path / "esci.parquet", columns)
    with pytest.raises(InputError, match=rf"{source}:2: field \"esci_label\""):
        as_tuples(source)


def test_missing_passage_field_fails_naming_the_accepted_fields(tmp_path):
    source = write_jsonl_records(tmp_path / "graded.jsonl", [GRADED_ROWS[0], {"query": "q", "esci_label": "E"}])
    with pytest.raises(InputError, match=rf"{source}:2: missing the passage field \(one of passage, item_text"):
        as_tuples(source)


def test_graded_row_without_any_label_fails_at_its_line(tmp_path):
    unlabelled = {"query": "q", "item_text": "b", "esci_label": None}
    source = write_jsonl_records(tmp_path / "graded.jsonl", [GRADED_ROWS[0], unlabelled])
    with pytest.raises(InputError, match=rf"{source}:2: this row has no relevance label"):
        as_tuples(source)


def test_scores_without_labels_as_a_ranking_data_set_say_they_go_to_stage_two(tmp_path):
    source = write_jsonl_records(tmp_path / "scores.jsonl", [{"query": "q", "content": "a", "score": "0.3"}])
    with pytest.raises(InputError, match=rf"{source}:1: this row has no relevance label .*create_triplets.py"):
        as_tuples(source)


def test_scores_without_labels_as_the_data_set_to_evaluate_point_to_teacher_scores(tmp_path):
    # evaluation.py reads its --dataset_path so too: such a file is its --teacher_scores, not stage 2's alone
    source = write_jsonl_records(tmp_path / "test_scores.jsonl", [{"query": "q", "passage": "a", "score": 0.3,
                                                                   "label": None}])
    with pytest.raises(InputError, match=rf"{source}:1: this row has no relevance label .*or evaluation.py's "
                                         r"--teacher_scores beside the labelled data set it scores"):
        as_tuples(source)


def test_a_windows_file_with_byte_order_mark_and_crlf_reads_like_a_plain_one(tmp_path):
    records = [{"query": "q1", "positive": ["a"], "negative": ["b"]}, {"query": "q2", "positive": ["c"], "negative": []}]
    plain = write_jsonl_records(tmp_path / "plain.jsonl", records)
    windows = tmp_path / "windows.jsonl"
    windows.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n"))
    assert as_tuples(windows) == as_tuples(plain)
    old_mac = tmp_path / "old_mac.jsonl"  # lines ended by CR alone
    old_mac.write_bytes(plain.read_bytes().replace(b"\n", b"\r"))
    assert as_tuples(old_mac) == as_tuples(plain)


# --- a downloaded data-set folder: DIR[:SPLIT] ---------------------------------------------------

FOLDER_TRAIN = [{"query": "q1", "positive": ["a"], "negative": ["b"]}, {"query": "q2", "positive": ["c"], "negative": ["d"]}]
FOLDER_TEST = [{"query": "q3", "positive": ["e"], "negative": ["f", "g"]}]


@pytest.fixture
def dataset_folder(tmp_path):
    """A hub data set as `hf download --local-dir` leaves it: a split file at the top, another
    split sharded under data/, and a hidden cache folder to ignore."""
    folder = tmp_path / "so-reranking"
    (folder / "data").mkdir(parents=True)
    (folder / ".cache").mkdir()
    (folder / "train.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in FOLDER_TRAIN).encode()))
    write_parquet(folder / "data" / "test-00001-of-00002.parquet", {"query": ["q4"], "positive": [["h"]], "negative": [["i"]]})
    write_jsonl_records(folder / "data" / "test-00000-of-00002.jsonl", FOLDER_TEST)
    write_jsonl_records(folder / ".cache" / "train-stale.jsonl", FOLDER_TEST)
    (folder / "README.md").write_text("# a data set card", encoding="utf-8")
    return folder


def test_a_data_set_folder_reads_the_named_splits_files_in_path_order(dataset_folder):
    assert as_tuples(f"{dataset_folder}:train") == [("q1", ["a", "b"], [1.0, 0.0]), ("q2", ["c", "d"], [1.0, 0.0])]
    assert as_tuples(f"{dataset_folder}:test") == [("q3", ["e", "f", "g"], [1.0, 0.0, 0.0]), ("q4", ["h", "i"], [1.0, 0.0])]
    assert source_stem(f"{dataset_folder}:test") == "so-reranking_test"


def test_a_data_set_folder_needs_a_split_it_has(dataset_folder):
    with pytest.raises(InputError, match=rf"{dataset_folder}: this folder holds the splits \['test', 'train'\]; name one"):
        as_tuples(dataset_folder)
    with pytest.raises(InputError, match=rf"{dataset_folder}: this folder holds the splits \['test', 'train'\]; name one"):
        as_tuples(f"{dataset_folder}:")  # a split left empty is none named, never a hub id
    with pytest.raises(InputError, match=rf"{dataset_folder}: this folder has no split 'dev'"):
        as_tuples(f"{dataset_folder}:dev")
    (dataset_folder / "train.jsonl.gz").unlink()
    (dataset_folder / "data" / "test-00001-of-00002.parquet").unlink()
    assert as_tuples(dataset_folder) == [("q3", ["e", "f", "g"], [1.0, 0.0, 0.0])]  # its only split
    assert as_tuples(f"{dataset_folder}:") == as_tuples(dataset_folder)
    assert source_stem(str(dataset_folder)) == "so-reranking"


def test_a_data_set_folder_given_as_dot_or_dot_dot_is_named_by_its_own_name_not_a_hidden_one(dataset_folder,
                                                                                               monkeypatch):
    monkeypatch.chdir(dataset_folder / "data")
    assert source_stem("..:test") == source_stem(f"{dataset_folder}:test") == "so-reranking_test"
    monkeypatch.chdir(dataset_folder)
    assert source_stem(".:test") == "so-reranking_test"
    assert source_stem("./") == "so-reranking"


def test_a_linked_folder_inside_a_data_set_folder_is_read_once_and_a_link_above_does_not_loop(dataset_folder,
                                                                                                tmp_path):
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "data").symlink_to(dataset_folder / "data")  # its data kept elsewhere
    (linked / "data-again").symlink_to(dataset_folder / "data")
    (linked / "up").symlink_to(linked)
    assert as_tuples(f"{linked}:test") == as_tuples(f"{dataset_folder}:test")


def test_hidden_files_in_a_data_set_folder_are_not_data(tmp_path):
    folder = tmp_path / "copied"
    folder.mkdir()
    write_jsonl_records(folder / "test.jsonl", FOLDER_TEST)
    # macOS leaves ._NAME beside each file it copies; an editor leaves .#NAME
    (folder / "._test.jsonl").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (folder / ".#test.jsonl").write_text("not json", encoding="utf-8")
    assert as_tuples(folder) == as_tuples(f"{folder}:test") == [("q3", ["e", "f", "g"], [1.0, 0.0, 0.0])]


def test_a_parquet_conversion_folder_takes_the_split_from_the_numbered_files_folder(tmp_path):
    """The hub's Parquet conversion: CONFIG/SPLIT/0000.parquet."""
    folder = tmp_path / "converted"
    for split, rows in (("train", FOLDER_TRAIN), ("test", FOLDER_TEST)):
        (folder / "default" / split).mkdir(parents=True)
        write_parquet(folder / "default" / split / "0000.parquet", {key: [r[key] for r in rows] for key in rows[0]})
    assert as_tuples(f"{folder}:test") == [("q3", ["e", "f", "g"], [1.0, 0.0, 0.0])]
    assert [q for q, _, _ in as_tuples(f"{folder}:train")] == ["q1", "q2"]


def test_a_split_spread_over_configuration_folders_is_refused_not_mixed(tmp_path):
    folder = tmp_path / "two-configs"
    for config in ("en", "de"):
        (folder / config).mkdir(parents=True)
        write_jsonl_records(folder / config / "test.jsonl", FOLDER_TEST)
    with pytest.raises(InputError, match=rf"split 'test' has files in several folders \(de, en\): pass the one "
                                         rf"meant \(e.g. {folder / 'de'}:test\)"):
        as_tuples(f"{folder}:test")
    write_jsonl_records(folder / "test.jsonl", FOLDER_TEST)  # the top folder holds the others: only a file will do
    with pytest.raises(InputError, match=rf"several folders \(\., de, en\): pass the one meant \(e.g. {folder / 'de'}:test\)"):
        as_tuples(f"{folder}:test")
    assert as_tuples(f"{folder / 'en'}:test") == [("q3", ["e", "f", "g"], [1.0, 0.0, 0.0])]


def test_a_save_to_disk_folder_is_read_split_by_split(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(FOLDER_TRAIN), "test": Dataset.from_list(FOLDER_TEST)}).save_to_disk(
        tmp_path / "saved")
    Dataset.from_list(FOLDER_TEST).save_to_disk(tmp_path / "one")
    assert [q for q, _, _ in as_tuples(f"{tmp_path / 'saved'}:train")] == ["q1", "q2"]
    assert as_tuples(f"{tmp_path / 'saved'}:test") == as_tuples(tmp_path / "one") == [("q3", ["e", "f", "g"], [1.0, 0.0, 0.0])]
    assert [Path(path).suffix for path in local_files(f"{tmp_path / 'saved'}:test")] == [".arrow"]  # what a resume hashes
    with pytest.raises(InputError, match=r"this folder holds the splits \['test', 'train'\]; name one"):
        as_tuples(tmp_path / "saved")


def test_a_broken_line_of_a_save_to_disk_folder_names_the_arrow_file_and_row(tmp_path):
    from datasets import Dataset

    Dataset.from_list([*FOLDER_TRAIN, {"query": None, "positive": ["x"], "negative": ["y"]}]).save_to_disk(tmp_path / "one")
    with pytest.raises(InputError, match=r"data-00000-of-00001\.arrow:3: .*\"query\""):
        as_tuples(tmp_path / "one")


def test_a_split_whose_name_holds_a_dot_is_its_own_not_mixed_into_the_split_named_by_its_first_word(tmp_path):
    """push_to_hub names a split test.clean's files data/test.clean-00000-of-00001.parquet."""
    folder = tmp_path / "speech"
    (folder / "data").mkdir(parents=True)
    for split, rows in (("test.clean", FOLDER_TEST), ("test.other", FOLDER_TRAIN)):
        write_parquet(folder / "data" / f"{split}-00000-of-00001.parquet", {key: [r[key] for r in rows] for key in rows[0]})
    write_jsonl_records(folder / "test.jsonl", FOLDER_TEST[:1])
    assert as_tuples(f"{folder}:test.clean") == [("q3", ["e", "f", "g"], [1.0, 0.0, 0.0])]
    assert [q for q, _, _ in as_tuples(f"{folder}:test.other")] == ["q1", "q2"]
    assert [q for q, _, _ in as_tuples(f"{folder}:test")] == ["q3"]  # test.jsonl alone


def test_files_named_by_year_are_splits_of_their_own_not_numbered_parts(tmp_path):
    for year in ("2023", "2024"):
        write_jsonl_records(tmp_path / "years" / f"{year}.jsonl", FOLDER_TEST)
    with pytest.raises(InputError, match=r"holds the splits \['2023', '2024'\]"):
        as_tuples(tmp_path / "years")
    assert as_tuples(f"{tmp_path / 'years'}:2023") == [("q3", ["e", "f", "g"], [1.0, 0.0, 0.0])]


def test_a_split_held_twice_in_two_forms_is_refused_not_joined_twice(tmp_path):
    folder = tmp_path / "so"
    write_jsonl_records(folder / "test.jsonl", FOLDER_TEST)
    with gzip.open(folder / "test.jsonl.gz", "wt", encoding="utf-8") as copy:
        copy.write((folder / "test.jsonl").read_text(encoding="utf-8"))
    with pytest.raises(InputError, match=r"split 'test' holds test\.jsonl and test\.jsonl\.gz: the same data in two "
                                         r"forms\? Its files are joined, so keep one"):
        as_tuples(f"{folder}:test")


def test_a_split_held_as_jsonl_and_as_parquet_parts_is_refused_not_joined_twice(tmp_path):
    folder = tmp_path / "so"
    write_jsonl_records(folder / "test.jsonl", FOLDER_TEST)
    write_parquet(folder / "test-00000-of-00001.parquet", {key: [row[key] for row in FOLDER_TEST] for key in FOLDER_TEST[0]})
    with pytest.raises(InputError, match=r"split 'test' holds test\.jsonl and test-00000-of-00001\.parquet: the same "
                                         "data in two forms"):
        as_tuples(f"{folder}:test")


def test_a_split_name_with_a_colon_is_read_from_its_folder(tmp_path):
    from datasets import Dataset

    Dataset.from_list(FOLDER_TEST).save_to_disk(tmp_path / "sliced")
    state = tmp_path / "sliced" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "_split": "test[:5]"}), encoding="utf-8")
    assert as_tuples(f"{tmp_path / 'sliced'}:test[:5]") == [("q3", ["e", "f", "g"], [1.0, 0.0, 0.0])]


def test_a_file_with_a_colon_in_its_path_is_read_even_beside_a_folder_named_as_its_start(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    write_jsonl_records(tmp_path / "runs" / "other.jsonl", [{"query": "q9", "positive": ["x"], "negative": ["y"]}])
    write_jsonl_records(tmp_path / "runs:2" / "test.jsonl", FOLDER_TEST)  # not split "2/test.jsonl" of runs/
    assert as_tuples("runs:2/test.jsonl") == [("q3", ["e", "f", "g"], [1.0, 0.0, 0.0])]
    assert local_files("runs:2/test.jsonl") == ["runs:2/test.jsonl"]
    assert source_stem("runs:2/test.jsonl") == "test"


@pytest.mark.parametrize("source", ["runs:2/test.jsonl", "runs:2/so:test", r"C:\\data\\test.jsonl", "C:/data/test.jsonl"])
def test_a_missing_path_with_a_colon_is_reported_missing_not_fetched_from_a_hub(monkeypatch, tmp_path, source):
    monkeypatch.chdir(tmp_path)  # (nothing here: no runs:2/, no C:/)
    with pytest.raises(InputError, match="file not found; check the path") as error:
        as_tuples(source)
    assert "hub" not in str(error.value)


def test_a_parquet_file_with_damaged_data_pages_is_named_not_a_traceback(tmp_path):
    path = write_parquet(tmp_path / "rows.parquet", {"query": [f"query {i}" for i in range(200)],
                                                      "passage": [f"passage {i}" for i in range(200)],
                                                      "label": [i % 2 for i in range(200)]})
    data = bytearray(path.read_bytes())
    for i in range(8, len(data) // 2):  # the column chunks: the footer, which opening the file reads, stays whole
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"^{path}: cannot be read as Parquet after row 0 \("):
        as_tuples(path)


@pytest.mark.parametrize("state, message", [
    ("[]", "expected a JSON object with"),
    ('{"_data_files": [{"file": 1}]}', '"_data_files" must list'),
    ("{not json", "cannot read this save_to_disk file"),
])
def test_a_broken_save_to_disk_state_file_is_named(tmp_path, state, message):
    from datasets import Dataset

    Dataset.from_list(FOLDER_TEST).save_to_disk(tmp_path / "one")
    (tmp_path / "one" / "state.json").write_text(state, encoding="utf-8")
    with pytest.raises(InputError, match=f"^{tmp_path / 'one' / 'state.json'}: {re.escape(message)}"):
        as_tuples(tmp_path / "one")


def test_an_empty_or_cut_short_save_to_disk_data_set_is_refused(tmp_path):
    from datasets import Dataset

    Dataset.from_list(FOLDER_TEST).select([]).save_to_disk(tmp_path / "empty")
    with pytest.raises(InputError, match=rf"^{tmp_path / 'empty'}: split 'train' has no data files: the data set is empty"):
        as_tuples(tmp_path / "empty")
    Dataset.from_list(FOLDER_TRAIN * 50).save_to_disk(tmp_path / "cut")
    arrow = tmp_path / "cut" / "data-00000-of-00001.arrow"
    arrow.write_bytes(arrow.read_bytes()[:1500])
    with pytest.raises(InputError, match=rf"^{arrow}: cannot be read as an Arrow stream after row \d+"):
        as_tuples(tmp_path / "cut")


def test_a_save_to_disk_folder_that_also_holds_loose_data_files_is_refused(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"test": Dataset.from_list(FOLDER_TEST)}).save_to_disk(tmp_path / "saved")
    write_jsonl_records(tmp_path / "saved" / "validation.jsonl", FOLDER_TRAIN)
    with pytest.raises(InputError, match=r"written by save_to_disk but also holds data files \(validation\.jsonl\)"):
        as_tuples(f"{tmp_path / 'saved'}:test")


def test_a_revision_of_a_name_that_is_a_local_folder_is_refused_not_ignored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl_records(tmp_path / "owner" / "name" / "test.jsonl", FOLDER_TEST)
    with pytest.raises(InputError, match=r"^'owner/name' is a local folder, and @v2 names a revision of a hub data set"):
        as_tuples("owner/name@v2:test")
    with pytest.raises(InputError, match=r"^'/.*/owner/name' is a local folder, and @v2 names a revision of a hub"):
        as_tuples(f"{tmp_path}/owner/name@v2:test")  # a path, which is never tried on a hub, says the same
    assert as_tuples("owner/name:test") == [("q3", ["e", "f", "g"], [1.0, 0.0, 0.0])]


def test_nothing_may_be_written_inside_a_data_set_folder_being_read(tmp_path):
    write_jsonl_records(tmp_path / "so" / "train.jsonl", FOLDER_TRAIN)
    with pytest.raises(InputError, match=rf"--output_dir {tmp_path / 'so' / 'scores'} is inside the data-set folder"):
        check_outside_data_set_folders(tmp_path / "so" / "scores", [f"{tmp_path / 'so'}:train"], "--output_dir")
    check_outside_data_set_folders(tmp_path / "so-scores", [f"{tmp_path / 'so'}:train"], "--output_dir")  # beside it
    check_outside_data_set_folders(tmp_path / "so" / "x.jsonl", [str(tmp_path / "so" / "train.jsonl")], "--output_path")


def test_bad_input_in_a_data_set_folder_names_the_file_and_line(dataset_folder):
    broken = dataset_folder / "data" / "test-00000-of-00002.jsonl"
    broken.write_text(broken.read_text() + "{not json\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{broken}:2: not valid JSON"):
        as_tuples(f"{dataset_folder}:test")


def test_a_raw_control_character_in_a_string_is_named_with_its_column(tmp_path):
    source = tmp_path / "tab.jsonl"
    source.write_text('{"query": "a\tb", "positive": ["p"], "negative": ["n"]}\n', encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{source}:1: not valid JSON \(Invalid control character at column 13\)$"):
        as_tuples(source)


@pytest.mark.parametrize("line, message", [
    ('{"query": "z", "positive": ["a"], "negative": ["b"], "negative": ["c"]}',
     r'an object names the field \'negative\' twice \(JSON would keep only the last value\); keep one'),
    ('{"query": "z", "positive": ["a"], "negative": ["b"], "x": ' + "9" * 5000 + "}",
     r"not valid JSON for this reader \(Exceeds the limit .*digits"),
    ("[" * 200_000 + "]" * 200_000, r"not valid JSON for this reader \(nested too deeply\)"),
])
def test_json_that_would_lose_a_value_or_break_the_reader_is_refused_at_its_line(tmp_path, line, message):
    source = tmp_path / "odd.jsonl"
    source.write_text('{"query": "q", "positive": ["p"], "negative": ["n"]}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{source}:2: {message}"):
        as_tuples(source)


def test_a_long_bad_value_is_shown_cut_in_the_error():
    from rerank_distill.jsonl import get_number

    with pytest.raises(InputError, match=r"got the string 'xxxx.*\.\.\. \(200002 characters\)$") as error:
        get_number({"score": "x" * 200_000}, "score", "f.jsonl", 3)
    assert len(str(error.value)) < 200


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_jsonl_file_fails_saying_so(tmp_path, content):
    source = tmp_path / "empty.jsonl"
    source.write_text(content)
    with pytest.raises(InputError, match=rf"{source}: contains no records"):
        as_tuples(source)
    with pytest.raises(InputError, match=rf"{source}: contains no records"):
        list(iter_scored_pairs(str(source)))


def test_parquet_file_with_no_rows_fails_saying_so(tmp_path):
    source = write_parquet(tmp_path / "empty.parquet", {"query": [], "item_text": [], "esci_label": []})
    with pytest.raises(InputError, match=rf"{source}: contains no records"):
        as_tuples(source)


@pytest.mark.parametrize("score", ["NaN", "Infinity", '"nan"', '"-inf"', "1" + "0" * 400])  # the last: beyond float
def test_non_finite_score_fails_with_file_line_and_field(tmp_path, score):
    source = tmp_path / "scores.jsonl"
    lines = ['{"query": "q", "content": "a", "score": 1.0}', f'{{"query": "q", "content": "b", "score": {score}}}']
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf'{source}:2: field "score" is -?(nan|inf|10000).*must be finite'):
        list(iter_scored_pairs(str(source)))


@pytest.mark.parametrize(
    "score, message", [('"high"', "got the string 'high'"), ("true", "got a boolean"), ("[1]", "got list"),
                       ('"1_000"', "got the string '1_000'"), ('"\u0663"', "got the string")]  # an Arabic-Indic 3
)
def test_score_that_is_not_a_number_fails_with_file_line_and_field(tmp_path, score, message):
    source = tmp_path / "scores.jsonl"
    source.write_text(f'{{"query": "q", "content": "a", "score": {score}}}\n')
    with pytest.raises(InputError, match=rf'{source}:1: field "score" must be a number, {message}'):
        list(iter_scored_pairs(str(source)))


def test_scores_file_missing_the_score_says_what_it_expected(tmp_path):
    source = write_jsonl_records(tmp_path / "scores.jsonl", [{"query": "q", "passage": "a"}])
    with pytest.raises(InputError, match=rf'{source}:1: missing field "score".*generate_logits.py'):
        list(iter_scored_pairs(str(source)))


# --- graded-label teachers' label_probs ----------------------------------------------------------


def test_label_probs_must_be_a_non_empty_object_of_finite_numbers():
    assert label_probs_of({"exact": 0.9, "irrelevant": 0.1}, "s.jsonl", 3) == {"exact": 0.9, "irrelevant": 0.1}
    assert label_probs_of({"exact": "0.5", "irrelevant": 0.5}, "s.jsonl", 3) == {"exact": 0.5, "irrelevant": 0.5}
    with pytest.raises(InputError, match=r's.jsonl:3: field "label_probs" must be a non-empty object'):
        label_probs_of({}, "s.jsonl", 3)
    with pytest.raises(InputError, match=r's.jsonl:3: .*"exact" has nan'):
        label_probs_of({"exact": float("nan")}, "s.jsonl", 3)
    with pytest.raises(InputError, match=r's.jsonl:3: .*"exact" has \'high\''):
        label_probs_of({"exact": "high"}, "s.jsonl", 3)


def test_label_words_get_esci_grades_else_descending_grades_in_the_order_given():
    assert label_word_grades(["irrelevant", "exact", "complement", "substitute"]) == {
        "irrelevant": 0.0, "exact": 3.0, "complement": 1.0, "substitute": 2.0,
    }  # fmt: skip
    assert label_word_grades(["good", "ok", "bad"]) == {"good": 2.0, "ok": 1.0, "bad": 0.0}
    assert label_word_grades(["yes", "no"], [1, 0]) == {"yes": 1.0, "no": 0.0}
    with pytest.raises(InputError, match="give one grade per word"):
        label_word_grades(["yes", "no"], [1])
    for one_answer in (["yes", "yes"], ["yes"]):
        with pytest.raises(InputError, match="needs at least two different words"):
            label_word_grades(one_answer)


def test_esci_files_own_columns_are_graded_rows(tmp_path):
    rows = [{"query_id": 1, "query": "usb cable", "product_id": "B1", "product_title": "usb-c cable 1m",
             "product_locale": "us", "esci_label": "E"},
            {"query_id": 1, "query": "usb cable", "product_id": "B2", "product_title": "hdmi cable",
             "product_locale": "us", "esci_label": "I"}]  # fmt: skip
    source = write_jsonl_records(tmp_path / "esci.jsonl", rows)
    assert as_tuples(source) == [("usb cable", ["usb-c cable 1m", "hdmi cable"], [3.0, 0.0])]


def test_id_columns_are_the_named_ids_and_names_ending_in_underscore_or_dash_id():
    record = {"query": "q", "passage": "p", "label": 1, "qid": 3, "doc-id": "D7", "example_id": 10, "idea": "x",
              "valid": True}
    assert id_columns(record, "rows.jsonl", 1) == {"qid": 3, "doc-id": "D7", "example_id": 10}


def test_a_missing_id_read_as_nan_is_written_as_null_which_json_has():
    # (pandas and Parquet hold a missing number as NaN, which json.dumps would write as a bare NaN)
    record = {"query": "q", "passage": "p", "query_id": float("nan"), "product_id": "B1", "example_id": float("inf")}
    ids = id_columns(record, "rows.parquet", 2)
    assert ids == {"query_id": None, "product_id": "B1", "example_id": None}
    assert json.loads(json.dumps(ids, allow_nan=False)) == ids


@pytest.mark.parametrize("score, message", [("NaN", 'field "score" is nan'), ('"high"', 'field "score" must be a number'),
                                            ("true", 'field "score" must be a number, got a boolean')])
def test_a_broken_score_in_labelled_scores_read_as_ranking_data_is_refused_at_its_line(tmp_path, score, message):
    # (train.py's --selection_data, evaluation.py's data set: the gold labels rank, but a NaN teacher score there
    # passed unsaid, where the same file without labels, or read as teacher scores, stops at that line)
    source = tmp_path / "train_scores.jsonl"
    source.write_text('{"query": "q", "passage": "a", "score": 2.0, "label": 1}\n'
                      f'{{"query": "q", "passage": "b", "score": {score}, "label": 0}}\n', encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{source}:2: {message}"):
        as_tuples(source)


def test_a_missing_number_inside_a_list_or_object_of_ids_is_written_as_null_too():
    # (a list id read from Parquet or JSON with NaN in it was written as a bare NaN: a line json.loads(..., strict
    # JSON parsers) and jq refuse)
    record = {"query": "q", "passage": "p", "query_id": [1, float("nan")], "doc_id": {"a": float("-inf")}}
    ids = id_columns(record, "rows.parquet", 2)
    assert ids == {"query_id": [1, None], "doc_id": {"a": None}}
    assert json.loads(json.dumps(ids, allow_nan=False)) == ids


# --- writing outputs ---


def test_a_write_removes_temporary_files_that_killed_processes_of_this_machine_left(tmp_path):
    import socket
    import subprocess
    import sys

    from rerank_distill.jsonl import AtomicWriter

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    left_by_a_killed_run = tmp_path / f"out.jsonl.{host}.{int(ended.stdout)}.tmp"
    of_a_running_process = tmp_path / f"out.jsonl.{host}.{os.getppid()}.tmp"
    of_another_machine = tmp_path / f"out.jsonl.other-host.{int(ended.stdout)}.tmp"
    for path in (left_by_a_killed_run, of_a_running_process, of_another_machine):
        path.write_text("half a line", encoding="utf-8")

    with AtomicWriter(tmp_path / "out.jsonl") as out:
        out.write("{}\n")

    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["out.jsonl", of_a_running_process.name, of_another_machine.name])


@pytest.mark.parametrize("name", ["a" * 249 + ".jsonl", "é" * 124 + ".jsonl"], ids=["ascii", "two-byte-letters"])
def test_a_file_whose_name_fits_is_written_though_the_temporary_name_would_not(tmp_path, name):
    """NAME.HOST.PID.tmp, some 15 to 80 bytes longer than the name, failed with 'File name too long' (a traceback)."""
    from rerank_distill.jsonl import AtomicWriter, is_unfinished_write

    writer = AtomicWriter(tmp_path / name)
    assert len(os.fsencode(writer.tmp_path.name)) <= 255 and is_unfinished_write(writer.tmp_path.name)
    with writer as out:
        out.write("{}\n")
    assert [path.name for path in tmp_path.iterdir()] == [name]
    assert AtomicWriter(tmp_path / name).tmp_path.name != AtomicWriter(tmp_path / f"{name[:-6]}.json").tmp_path.name


def test_a_write_whose_final_name_is_a_folder_fails_naming_that_name_not_the_temporary_one(tmp_path):
    from rerank_distill.jsonl import AtomicWriter

    (tmp_path / "args.json").mkdir()  # found only at the rename, once everything is written
    with pytest.raises(IsADirectoryError) as failed, AtomicWriter(tmp_path / "args.json") as out:
        out.write("{}")
    assert failed.value.filename == str(tmp_path / "args.json")
    assert [path.name for path in tmp_path.iterdir()] == ["args.json"]  # the temporary file gone

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (POSIX)")
def test_a_pipe_as_input_is_refused_as_one_not_reported_missing(tmp_path):
    pipe = tmp_path / "piped.jsonl"
    os.mkfifo(pipe)  # what <(zcat ...) or /dev/stdin hands a stage: it exists, and can be read only once
    with pytest.raises(InputError, match=rf"{pipe}: is not a regular file \(a pipe or a device\?\): every stage "
                                         "reads its input more than once"):
        list(iter_ranking_queries(str(pipe)))


@pytest.mark.parametrize("name, content, message", [
    ("plain.jsonl.gz", b'{"query": "q", "positive": ["a"], "negative": ["b"]}\n', "is not gzip-compressed though its name ends in .gz"),
    ("packed.jsonl", gzip.compress(b'{"query": "q", "positive": ["a"], "negative": ["b"]}\n'), "is gzip-compressed but its name does not end in .gz"),
    ("table.jsonl", b"PAR1\x15\x04", "is a Parquet file but its name does not end in .parquet"),
    ("TRAIN.JSONL.GZ", gzip.compress(b'{"query": "q", "positive": ["a"], "negative": ["b"]}\n'),
     "is gzip-compressed but its name does not end in .gz (in lower case)"),
], ids=["plain-named-gz", "gzip-named-plain", "parquet-named-jsonl", "gzip-named-upper-case-gz"])
def test_a_file_whose_name_belies_its_content_is_refused_saying_which_it_is(tmp_path, name, content, message):
    # (else: a truncated archive, or a byte that is not UTF-8, which sends the user looking in the wrong place)
    source = tmp_path / name
    source.write_bytes(content)
    with pytest.raises(InputError, match=rf"^{source}: {re.escape(message)}"):
        as_tuples(source)


@pytest.mark.parametrize("name, compress, compression", [
    ("train.jsonl.bz2", "bz2", "bzip2"), ("train.jsonl.xz", "lzma", "xz"), ("train.jsonl.gz", "bz2", "bzip2"),
], ids=["bz2", "xz", "bz2-named-gz"])
def test_a_file_compressed_otherwise_than_gzip_is_refused_naming_its_compression(tmp_path, name, compress, compression):
    # (read as text it was "not UTF-8 (byte 0x..); save the file as UTF-8", which it already is)
    import importlib

    source = tmp_path / name
    source.write_bytes(importlib.import_module(compress).compress(b'{"query": "q", "positive": ["a"], "negative": ["b"]}\n'))
    with pytest.raises(InputError, match=rf"^{source}: is {compression}-compressed, which no stage reads"):
        as_tuples(source)


def test_a_gzip_file_of_several_members_reads_them_all(tmp_path):
    lines = [b'{"query": "q1", "positive": ["a"], "negative": ["b"]}\n', b'{"query": "q2", "positive": ["c"], "negative": ["d"]}\n']
    source = tmp_path / "joined.jsonl.gz"  # what `cat a.gz b.gz` makes
    source.write_bytes(gzip.compress(lines[0]) + gzip.compress(lines[1]))
    assert [query for query, _, _ in as_tuples(source)] == ["q1", "q2"]


def test_a_byte_order_mark_inside_the_file_is_named_at_its_line(tmp_path):
    line = b'{"query": "q", "positive": ["a"], "negative": ["b"]}\n'
    source = tmp_path / "joined.jsonl"  # two files saved by a Windows editor, joined with cat
    source.write_bytes(b"\xef\xbb\xbf" + line + b"\xef\xbb\xbf" + line)
    with pytest.raises(InputError, match=rf"^{source}:2: starts with a byte-order mark \(U\+FEFF"):
        as_tuples(source)


def test_a_parquet_decimal_score_or_grade_is_read_as_its_number(tmp_path):
    import decimal

    dec = [decimal.Decimal("1.5"), decimal.Decimal("0.25")]
    scores = write_parquet(tmp_path / "scores.parquet", {"query": ["q", "q"], "passage": ["a", "b"], "score": dec})
    assert [pair.score for pair in iter_scored_pairs(str(scores))] == [1.5, 0.25]
    graded = write_parquet(tmp_path / "graded.parquet", {"query": ["q", "q"], "passage": ["a", "b"], "grade": dec})
    assert as_tuples(graded) == [("q", ["a", "b"], [1.5, 0.25])]


def test_an_id_column_holding_a_lone_surrogate_is_refused_at_its_row_not_a_crash_on_writing(tmp_path):
    source = tmp_path / "graded.jsonl"
    source.write_text('{"query": "q", "passage": "a", "label": 1, "query_id": "x"}\n'
                      '{"query": "q", "passage": "b", "label": 0, "query_id": "cut \\ud83d"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{source}:2: id column 'query_id' holds a lone surrogate"):
        as_tuples(source)


@pytest.mark.parametrize("row, message", [
    ('"x\\ud800_id": 3', r"the name of id column 'x\\ud800_id' holds a lone surrogate"),
    ('"query_id": ["a", "cut \\ud83d"]', r"id column 'query_id' holds a lone surrogate"),
], ids=["in-its-name", "in-a-list"])
def test_a_lone_surrogate_in_an_id_columns_name_or_list_is_refused_at_its_row_not_a_crash_on_writing(tmp_path, row,
                                                                                                      message):
    # (stage 1 writes the id columns, names and all, beside each score: UTF-8 cannot hold half a surrogate pair,
    # and the write failed with a traceback once the teacher had scored the chunk)
    source = tmp_path / "graded.jsonl"
    source.write_text('{"query": "q", "passage": "a", "label": 1}\n'
                      f'{{"query": "q", "passage": "b", "label": 0, {row}}}\n', encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{source}:2: {message}"):
        as_tuples(source)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_disk_that_fills_at_the_writes_last_flush_leaves_no_temporary_file(tmp_path):
    from rerank_distill.jsonl import AtomicWriter

    writer = AtomicWriter(tmp_path / "out.jsonl")
    writer.tmp_path.symlink_to("/dev/full")  # the temporary file's writes fail as on a full disk
    with pytest.raises(OSError, match="No space left on device"):
        with writer as out:
            out.write("{}\n")  # held in the buffer: the disk is found full only when the file is closed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("records", [1, 10_000])  # found full at the close, or by a write in the block
def test_a_disk_that_fills_names_the_file_being_written_for_the_one_line_error(tmp_path, records):
    from rerank_distill.jsonl import AtomicWriter

    writer = AtomicWriter(tmp_path / "out.jsonl")
    writer.tmp_path.symlink_to("/dev/full")
    with pytest.raises(OSError, match="No space left on device") as failed:
        with writer as out:
            for _ in range(records):
                out.write("{}\n")
    assert failed.value.filename == str(tmp_path / "out.jsonl")


def test_a_write_the_disk_could_not_save_does_not_take_its_final_name(tmp_path, monkeypatch):
    import errno

    from rerank_distill.jsonl import AtomicWriter

    def fsync(fd):  # how a network file system or a quota reports the data it could not store
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="Disk quota exceeded"):
        with AtomicWriter(tmp_path / "out.jsonl") as out:
            out.write("{}\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("document, message", [
    ([{"query": "q", "positive": ["p"], "negative": ["n"]}] * 2,
     r"holds a JSON array of 2 records, not JSON lines \(one record a line\)"),
    ({"command": "python train.py ...", "script": {"train_data": "t.jsonl"}},
     r"is a run's arguments record \(the args\.json a stage writes beside its output\), not data"),
    ({"source": "train.jsonl", "made_with": {}, "counts": {}},
     r"is stage 1's run record \(\.run\.json\), not data: pass the scores file it sits beside"),
    ({"protocol": "mteb", "queries_evaluated": 3, "before": {"map": 0.5}},
     r"is evaluation\.py's report, not data"),
])
def test_a_whole_json_document_is_named_as_such_not_as_broken_json_lines(tmp_path, document, message):
    source = tmp_path / "data.jsonl"
    source.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")  # as the stages write their records
    with pytest.raises(InputError, match=rf"^{source}:1: {message}"):
        as_tuples(source)


def test_a_json_array_on_one_line_is_named_as_such(tmp_path):
    source = tmp_path / "data.json"
    source.write_text(json.dumps([{"query": "q", "positive": ["p"], "negative": ["n"]}] * 3), encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{source}:1: holds a JSON array of 3 records, not JSON lines"):
        as_tuples(source)


@pytest.mark.parametrize("name, separator", [("pairs.tsv", "\t"), ("pairs.csv", ",")])
def test_a_table_is_named_as_such_and_the_conversion_it_suggests_reads_back(tmp_path, name, separator):
    source = tmp_path / name
    rows = [["query", "item_text", "esci_label"], ["404", "page not found, again", "E"], ["404", "a map", "I"]]
    source.write_text("".join(separator.join(f'"{cell}"' for cell in row) + "\n" for row in rows), encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{source}:1: is a {name[-3:].upper()} table, not JSON lines") as error:
        as_tuples(source)
    command = re.search(r'python -c "(.*)"$', str(error.value)).group(1)
    subprocess.run([sys.executable, "-c", command], cwd=tmp_path, check=True)
    # (every column read as text: the query 404 stays a query, the letters grades)
    assert as_tuples(tmp_path / "FILE.jsonl") == [("404", ["page not found, again", "a map"], [3.0, 0.0])]


def test_a_folder_of_tables_no_stage_reads_names_them(tmp_path):
    download = tmp_path / "download"  # a hub data set kept as CSV and JSON files
    (download / "data").mkdir(parents=True)
    (download / "data" / "test.csv.gz").write_bytes(gzip.compress(b"query,passage,label\nq,p,1\n"))
    (download / "data" / "train.json").write_text('{"query": "q", "passage": "p", "label": 1}\n', encoding="utf-8")
    (download / "README.md").write_text("# a data set\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{download}: this folder holds no data files .* its \.csv, \.json files "
                                         r"are not read in a folder: pass one as a file"):
        as_tuples(f"{download}:test")


def test_a_model_folder_given_as_a_data_set_is_named_a_model(tmp_path):
    model = tmp_path / "model"  # what train.py writes: the model's files, its records, a checkpoint
    (model / "checkpoint-8").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "args.json", "training_summary.json"):
        (model / name).write_text("{}", encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{model}: is a model folder \(config\.json\), not a data set: pass the "
                                         r"data file \(JSONL, Parquet\) or data-set folder meant"):
        as_tuples(model)


def test_a_parquet_file_naming_a_column_twice_is_refused_not_read_as_its_last_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["usb"]), pa.array(["cable"]), pa.array(["E"]), pa.array(["x"])],
                                        names=["query", "item_text", "esci_label", "query"]), path)
    with pytest.raises(InputError, match=rf"^{path}: names the column 'query' twice"):
        as_tuples(path)


MTEB_RECORD = {"query": "r", "positive": ["a"], "negative": ["b"]}
POS_NEG_RECORD = {"query": "r", "pos": ["a"], "neg": ["b"]}


@pytest.mark.parametrize("first, misspelt, meant", [
    (MTEB_RECORD, {"query": "q", "positives": ["p"], "negative": ["n"]}, ("positives", "positive")),
    (MTEB_RECORD, {"query": "q", "positive": ["p"], "negatives": ["n"]}, ("negatives", "negative")),
    (POS_NEG_RECORD, {"query": "q", "pos": ["p"], "negs": ["n"]}, ("negs", "neg")),
])
def test_a_misspelt_list_field_is_refused_not_read_as_a_query_without_those_passages(tmp_path, first, misspelt, meant):
    source = write_jsonl_records(tmp_path / "d.jsonl", [first, misspelt])
    with pytest.raises(InputError, match=re.escape(f'{source}:2: field "{meant[0]}" is not read: did you mean '
                                                   f'"{meant[1]}"?')):
        as_tuples(source)


def test_fields_named_apart_from_the_candidate_lists_are_no_misspelling(tmp_path):
    source = write_jsonl_records(tmp_path / "d.jsonl", [
        {"query": "q", "positive": ["p"], "positive_ids": ["1"], "hard_negatives": ["h"]}])
    assert as_tuples(source) == [("q", ["p"], [1.0])]
