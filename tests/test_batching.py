"""Batches of similar length for scoring: every row once, in order, and a batch closes early
rather than pad."""

from rerank_distill.batching import length_batches


def test_length_batches_hold_every_row_once_in_order_and_at_most_batch_size():
    assert length_batches([10] * 10, batch_size=4) == [slice(0, 4), slice(4, 8), slice(8, 10)]


def test_a_batch_closes_early_rather_than_pad_a_longer_row():
    # a fifth row of 20 would pad the four rows of 10 to 100 tokens for 60 real ones
    assert length_batches([10, 10, 10, 10, 20, 20], batch_size=6, max_padding=0.05) == [slice(0, 4), slice(4, 6)]
    # a last row of 11 pads the nine rows of 10 by 9 tokens, under 10% of the 101 real ones
    assert length_batches([10] * 9 + [11], batch_size=10, max_padding=0.1) == [slice(0, 10)]


def test_a_batch_closes_early_only_once_it_holds_a_quarter_of_batch_size():
    # batch_size 8: two rows at least, so the 10-token row shares a batch with a 50-token one
    assert length_batches([10, 50, 50, 50], batch_size=8) == [slice(0, 2), slice(2, 4)]


def test_rows_sorted_longest_first_close_early_too():
    # the batch pads to its first, longest row: a third row of 5 would pad 25 real tokens to 30
    assert length_batches([10, 10, 5, 5], batch_size=4, max_padding=0.05) == [slice(0, 2), slice(2, 4)]
