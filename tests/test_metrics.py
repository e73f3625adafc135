"""Ranking metrics: each against a hand computation on a few candidates, ties averaged over (against
every order of the tied candidates, enumerated), and equality with sklearn (which sentence-transformers' reranking evaluator calls) on tie-free scores;
and what graded labels add: mean score per true grade and a label-predicting teacher's accuracy."""

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, ndcg_score

from rerank_distill.metrics import (
    average_precision,
    evaluate_rankings,
    graded_summary,
    label_accuracy,
    mean_score_per_grade,
    ndcg,
    per_query_metrics,
    queries_changed,
    reciprocal_rank,
    scores_needed,
    skip_reason,
    tied_groups,
)

LOG2_3 = math.log2(3)


def test_tied_groups_are_best_score_first_each_in_input_order():
    assert [group.tolist() for group in tied_groups([0.5, 0.9, 0.5, 0.9, 0.1])] == [[1, 3], [0, 2], [4]]


def test_a_tie_scores_the_mean_over_both_orders_whatever_the_data_sets_order():
    for labels in ([0, 1], [1, 0]):
        assert reciprocal_rank([0.5, 0.5], labels) == pytest.approx((1 + 1 / 2) / 2)
        assert average_precision([0.5, 0.5], labels) == pytest.approx((1 + 1 / 2) / 2)
        assert ndcg([0.5, 0.5], labels) == pytest.approx((1 + 1 / LOG2_3) / 2)


def test_a_model_that_scores_every_candidate_alike_earns_a_random_rankings_expectation():
    # one relevant among three: it sits at rank 1, 2 or 3 with chance 1/3 each
    expected = (1 + 1 / 2 + 1 / 3) / 3
    assert average_precision([0.0, 0.0, 0.0], [1, 0, 0]) == pytest.approx(expected)
    assert reciprocal_rank([0.0, 0.0, 0.0], [1, 0, 0]) == pytest.approx(expected)
    assert ndcg([0.0, 0.0, 0.0], [1, 0, 0]) == pytest.approx((1 + 1 / LOG2_3 + 1 / 2) / 3)


def test_reciprocal_rank_of_a_long_tied_list_sums_only_the_places_inside_the_top_k():
    # half of 20,000 tied candidates relevant: the first relevant one is at place j with chance about 2^-j
    # (a collapsed model on a long list, which once took seconds through exact counts of every place)
    expected = sum(0.5**j / j for j in range(1, 11))
    assert reciprocal_rank([0.0] * 20_000, [1] * 10_000 + [0] * 10_000) == pytest.approx(expected, abs=1e-3)
    assert reciprocal_rank([1.0] * 10 + [0.0] * 20_000, [0] * 10 + [1] * 10_000 + [0] * 10_000) == 0.0

def plain_metrics(order, labels, k):
    """AP, RR@k and NDCG@k of one fixed order, written out by hand."""
    ranked = [labels[i] for i in order]
    hit_ranks = [rank for rank, label in enumerate(ranked, 1) if label > 0]
    ap = sum(hits / rank for hits, rank in enumerate(hit_ranks, 1)) / len(hit_ranks) if hit_ranks else 0.0
    rr = 1 / hit_ranks[0] if hit_ranks and hit_ranks[0] <= k else 0.0
    dcg = sum(gain / math.log2(rank + 1) for rank, gain in enumerate(ranked[:k], 1))
    ideal = sum(gain / math.log2(rank + 1) for rank, gain in enumerate(sorted(labels, reverse=True)[:k], 1))
    return ap, rr, dcg / ideal if ideal else 0.0


def test_tied_metrics_equal_the_mean_over_every_order_of_the_tied_candidates():
    rng = np.random.default_rng(3)
    for _ in range(200):
        size, k = int(rng.integers(1, 7)), int(rng.integers(1, 6))
        scores = rng.integers(0, 3, size=size).astype(float)  # few distinct scores: many ties
        labels = rng.integers(0, 4, size=size).astype(float).tolist()
        orders = [order for order in itertools.permutations(range(size))
                  if all(scores[a] >= scores[b] for a, b in itertools.pairwise(order))]  # fmt: skip
        expected = np.mean([plain_metrics(order, labels, k) for order in orders], axis=0)
        got = (average_precision(scores, labels), reciprocal_rank(scores, labels, k), ndcg(scores, labels, k))
        np.testing.assert_allclose(got, expected, atol=1e-12)
        if size > 1 and max(labels) > 0:  # sklearn's NDCG averages ties the same way
            assert ndcg(scores, labels, k) == pytest.approx(ndcg_score([labels], [scores], k=k), abs=1e-12)


def test_scores_that_are_not_finite_are_refused():
    for metric in (average_precision, reciprocal_rank, ndcg):
        with pytest.raises(ValueError, match="not finite"):
            metric([float("nan"), 0.0, 1.0], [1, 0, 0])
    with pytest.raises(ValueError, match="not finite"):
        average_precision([float("nan"), 0.0], [0, 0])


def test_average_precision_is_mean_precision_at_each_relevant_rank():
    # relevant at ranks 1 and 3: (1/1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    # ranked order is 1, 3, 0, 2, so the relevant 3 and 0 sit at ranks 2 and 3: (1/2 + 2/3) / 2
    assert average_precision([0.7, 0.9, 0.6, 0.8], [1, 0, 0, 1]) == pytest.approx(7 / 12)


def test_average_precision_counts_any_positive_grade_as_relevant():
    # grades 2 and 1 are both relevant: ranks 1 (grade 1) and 3 (grade 2)
    assert average_precision([0.1, 0.5, 0.9], [2, 0, 1]) == pytest.approx(5 / 6)


def test_a_fractional_grade_above_zero_is_relevant_for_map_and_mrr():
    # the grade-0.5 candidate ranks 2nd: AP 1/2, RR 1/2
    assert average_precision([0.9, 0.5, 0.1], [0, 0.5, 0]) == pytest.approx(1 / 2)
    assert reciprocal_rank([0.9, 0.5, 0.1], [0, 0.5, 0]) == pytest.approx(1 / 2)


def test_average_precision_without_relevant_candidates_is_zero():
    assert average_precision([0.3, 0.2], [0, 0]) == 0.0


def test_reciprocal_rank_is_one_over_first_relevant_rank_within_k():
    scores, labels = [0.1, 0.2, 0.9, 0.8], [1, 0, 0, 0]  # the relevant candidate ranks 4th
    assert reciprocal_rank(scores, labels, k=10) == 0.25
    assert reciprocal_rank(scores, labels, k=3) == 0.0


def test_ndcg_uses_grades_as_linear_gains_and_log2_discounts():
    # ranked gains 0, 2, 1 against the ideal 2, 1, 0
    expected = (0 + 2 / LOG2_3 + 1 / 2) / (2 + 1 / LOG2_3 + 0)
    assert ndcg([0.9, 0.5, 0.1], [0, 2, 1]) == pytest.approx(expected)


def test_ndcg_counts_only_the_top_k():
    assert ndcg([3, 2, 1], [0, 0, 1], k=2) == 0.0
    assert ndcg([3, 2, 1], [0, 0, 1], k=3) == pytest.approx(1 / 2)


@pytest.mark.parametrize("scores", [[0.9, 0.5, 0.1, 0.0], [0.5, 0.5, 0.5, 0.0]])  # tie-free, and a tied group
def test_ndcg_of_finite_gains_whose_sum_overflows_is_that_of_the_gains_scaled_down(scores):
    # (a graded data set with grades near 1e308: summed, they were inf, and NDCG NaN in the report)
    assert ndcg(scores, [0, 1.7e308, 1.7e308, 0]) == pytest.approx(ndcg(scores, [0, 1, 1, 0]))


def test_ndcg_without_gain_is_zero_and_negative_gains_are_refused():
    assert ndcg([0.3, 0.2], [0, 0]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        ndcg([0.3, 0.2], [1, -1])


def test_metrics_equal_sklearn_on_random_tie_free_scores():
    rng = np.random.default_rng(0)
    for _ in range(300):
        size = int(rng.integers(2, 30))
        scores = rng.normal(size=size)  # continuous: no ties
        binary = rng.integers(0, 2, size=size)
        binary[rng.integers(size)] = 1
        grades = rng.integers(0, 4, size=size).astype(float)
        grades[rng.integers(size)] = 3.0
        assert average_precision(scores, binary) == pytest.approx(average_precision_score(binary, scores), abs=1e-12)
        for k in (5, 10):
            assert ndcg(scores, grades, k) == pytest.approx(ndcg_score([grades], [scores], k=k), abs=1e-12)


def test_skip_reason_names_what_the_query_lacks():
    assert skip_reason([1, 0]) is None
    assert skip_reason([0, 0]) == "no_positive"
    assert skip_reason([2, 1]) == "no_negative"
    assert skip_reason([]) == "no_positive"


def test_a_query_whose_one_candidate_is_relevant_has_no_negative():
    assert skip_reason([1]) == "no_negative"
    assert skip_reason([0]) == "no_positive"


def test_scores_are_needed_only_for_queries_the_protocol_ranks():
    assert scores_needed([1, 0], "mteb") and scores_needed([1, 0], "sentence-transformers")
    assert not scores_needed([0, 0], "mteb") and not scores_needed([0, 0], "sentence-transformers")  # skipped / 0
    assert not scores_needed([1, 1], "mteb") and scores_needed([1, 1], "sentence-transformers")


# A: perfect; B: the positive second (AP 1/2, RR 1/2, NDCG 1/log2(3)); C: no positive; D: no negative
QUERIES = [
    ([0.9, 0.1], [1, 0]),
    ([0.1, 0.9], [1, 0]),
    ([0.3, 0.2], [0, 0]),
    ([0.3, 0.2], [1, 1]),
]


def test_mteb_protocol_skips_queries_without_positive_or_negative_and_counts_why():
    result = evaluate_rankings(QUERIES, protocol="mteb")
    assert result["map"] == pytest.approx((1 + 1 / 2) / 2)
    assert result["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)
    assert result["ndcg@10"] == pytest.approx((1 + 1 / LOG2_3) / 2)
    assert result["queries_evaluated"] == 2
    assert result["queries_skipped"] == 2
    assert result["queries_skipped_by_reason"] == {"no_positive": 1, "no_negative": 1}
    assert result["queries_scored_zero"] == 0


def test_per_query_metrics_hold_each_models_values_and_none_for_a_skipped_query():
    labels = [labels for _, labels in QUERIES]
    before = [scores for scores, _ in QUERIES]
    after = [[0.1, 0.9], [0.9, 0.1], [0.0, 0.0], [0.0, 0.0]]  # the first two queries swap their rankings
    results = {"before": evaluate_rankings(zip(before, labels)), "after": evaluate_rankings(zip(after, labels))}
    rows = per_query_metrics(results)
    assert rows[0] == {"before": {"ap": 1.0, "rr@10": 1.0, "ndcg@10": 1.0},
                       "after": {"ap": 0.5, "rr@10": 0.5, "ndcg@10": pytest.approx(1 / LOG2_3)}}  # fmt: skip
    assert rows[1]["before"]["ap"] == 0.5 and rows[1]["after"]["ap"] == 1.0
    assert rows[2] is None and rows[3] is None  # no negative / no positive: the MTEB protocol skips them
    assert np.mean([row["before"]["ap"] for row in rows if row]) == evaluate_rankings(QUERIES)["map"]
    assert queries_changed(rows) == {"better": 1, "worse": 1, "same": 0}
    st_rows = per_query_metrics({"before": evaluate_rankings(zip(before, labels), "sentence-transformers")})
    assert st_rows[2]["before"] == {"ap": 0.0, "rr@10": 0.0, "ndcg@10": 0.0} and st_rows[3]["before"]["ap"] == 1.0


def test_queries_changed_counts_an_equal_ap_as_the_same_not_better():
    def row(before_ap, after_ap):
        return {"before": {"ap": before_ap}, "after": {"ap": after_ap}}

    rows = [row(0.5, 0.5), row(0.5, 1.0), row(1.0, 0.5), row(1 / 3, 1 / 3), None]
    assert queries_changed(rows) == {"better": 1, "worse": 1, "same": 2}


def test_sentence_transformers_protocol_counts_no_positive_as_zero_and_scores_no_negative():
    result = evaluate_rankings(QUERIES, protocol="sentence-transformers")
    assert result["map"] == pytest.approx((1 + 1 / 2 + 0 + 1) / 4)
    assert result["mrr@10"] == pytest.approx((1 + 1 / 2 + 0 + 1) / 4)
    assert result["ndcg@10"] == pytest.approx((1 + 1 / LOG2_3 + 0 + 1) / 4)
    assert result["queries_evaluated"] == 4
    assert result["queries_skipped"] == 0
    assert result["queries_scored_zero"] == 1


def test_evaluate_rankings_refuses_an_empty_mean_and_an_unknown_protocol():
    with pytest.raises(ValueError, match="no query left"):
        evaluate_rankings([([0.3, 0.2], [0, 0])], protocol="mteb")
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate_rankings(QUERIES, protocol="trec")


# --- graded labels ---------------------------------------------------------------------------------

ESCI = {"exact": 3.0, "substitute": 2.0, "complement": 1.0, "irrelevant": 0.0}


def probs(exact: float, substitute: float, complement: float, irrelevant: float) -> dict:
    return {"exact": exact, "substitute": substitute, "complement": complement, "irrelevant": irrelevant}


def test_mean_score_per_grade_averages_each_grade_and_lists_the_best_grade_first():
    result = mean_score_per_grade([1.0, 3.0, 0.5, -1.0, 2.0], [3, 3, 1, 0, 1])
    assert result == {"3": 2.0, "1": 1.25, "0": -1.0}
    assert list(result) == ["3", "1", "0"]
    assert mean_score_per_grade([0.2, 0.4], [0.5, 0.5]) == {"0.5": pytest.approx(0.3)}
    # grades that agree to six digits are still two grades, each with its own mean
    assert mean_score_per_grade([10.0, 4.0], [1.0, 1.000001]) == {"1.000001": 4.0, "1": 10.0}
    with pytest.raises(ValueError, match="3 scores but 2 grades"):
        mean_score_per_grade([1, 2, 3], [1, 0])


def test_mean_score_per_grade_of_huge_finite_scores_is_finite():
    # (their sum overflowed: evaluation.json held Infinity, which is no JSON)
    result = mean_score_per_grade([1.5e308, 1.5e308, 1.7e308, 0.0], [3, 3, 3, 0])
    assert result == {"3": pytest.approx(1.5e308 + 0.2e308 / 3), "0": 0.0}


def test_label_accuracy_compares_the_most_probable_labels_grade_with_the_true_grade():
    label_probs = [
        probs(0.7, 0.1, 0.1, 0.1),  # true 3, predicted exact (3): right
        probs(0.2, 0.5, 0.2, 0.1),  # true 3, predicted substitute (2): wrong
        probs(0.1, 0.1, 0.2, 0.6),  # true 0, predicted irrelevant (0): right
        probs(0.4, 0.4, 0.1, 0.1),  # true 2, a tie goes to the word listed first: exact (3): wrong
    ]
    result = label_accuracy(label_probs, [3, 3, 0, 2], ESCI)
    assert result == {
        "accuracy": 0.5,
        "correct": 2,
        "pairs": 4,
        "compared": "grade",
        "confusion": {"3": {"3": 1, "2": 1}, "2": {"3": 1}, "0": {"0": 1}},
    }


def test_label_accuracy_on_positive_negative_data_compares_relevance():
    label_probs = [
        probs(0.7, 0.1, 0.1, 0.1),  # true 1, predicted exact (3): relevant, right
        probs(0.1, 0.1, 0.6, 0.2),  # true 1, predicted complement (1): relevant, right
        probs(0.1, 0.1, 0.2, 0.6),  # true 0, predicted irrelevant (0): right
        probs(0.1, 0.6, 0.2, 0.1),  # true 0, predicted substitute (2): wrong
    ]
    result = label_accuracy(label_probs, [1, 1, 0, 0], ESCI, by_relevance=True)
    assert (result["accuracy"], result["correct"], result["compared"]) == (0.75, 3, "relevance")
    # graded data that happens to hold grades 1 and 0 only: complement (1) against exact (3) is wrong
    assert label_accuracy(label_probs, [1, 1, 0, 0], ESCI)["correct"] == 2
    assert result["confusion"] == {"1": {"3": 1, "1": 1}, "0": {"2": 1, "0": 1}}


def test_label_accuracy_refuses_a_word_without_grade_and_mismatched_lengths():
    with pytest.raises(ValueError, match="label word 'maybe' has no grade"):
        label_accuracy([{"yes": 0.5, "maybe": 0.5}], [1], {"yes": 1.0, "no": 0.0})
    with pytest.raises(ValueError, match="1 label_probs but 2 grades"):
        label_accuracy([probs(1, 0, 0, 0)], [3, 0], ESCI)


def test_graded_summary_counts_pairs_per_grade_and_means_each_models_scores():
    grades = [3, 0, 2, 0]
    summary = graded_summary(grades, {"before": [4.0, 2.0, 1.0, 0.0], "teacher": [2.5, 0.5, 2.0, 0.1]})
    assert summary == {
        "pairs_per_grade": {"3": 1, "2": 1, "0": 2},
        "mean_score_per_grade": {
            "before": {"3": 4.0, "2": 1.0, "0": 1.0},
            "teacher": {"3": 2.5, "2": 2.0, "0": pytest.approx(0.3)},
        },
    }


def test_graded_summary_adds_the_teachers_label_accuracy_and_the_grades_it_used():
    label_probs = [probs(0.9, 0, 0, 0.1), probs(0.1, 0, 0, 0.9), probs(0.1, 0.2, 0.6, 0.1), probs(0.6, 0, 0, 0.4)]
    summary = graded_summary([3, 0, 2, 0], {"teacher": [2.7, 0.3, 1.2, 1.8]}, label_probs, ESCI)
    assert summary["label_accuracy"] == {
        "teacher": {
            "accuracy": 0.5,
            "correct": 2,
            "pairs": 4,
            "compared": "grade",
            "confusion": {"3": {"3": 1}, "2": {"1": 1}, "0": {"3": 1, "0": 1}},
            "label_grades": ESCI,
        }
    }
