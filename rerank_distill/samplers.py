"""Training batch samplers for CrossEncoderTrainer (training argument ``batch_sampler``):
batches of similar length, or of one query's examples, reshuffled each epoch."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
from sentence_transformers.base.sampler import DefaultBatchSampler

from rerank_distill.training_data import column_values

logger = logging.getLogger(__name__)


def example_lengths(dataset) -> list[int]:
    """A cheap length per example in characters: its query plus its longest document, which is
    what the padded length of a one-pass batch follows."""
    documents = [column_values(dataset, name) for name in dataset.column_names if name not in ("query", "label")]
    lengths = []
    for row, query in enumerate(column_values(dataset, "query")):
        longest = 0
        for column in documents:
            value = column[row]
            if isinstance(value, str):
                longest = max(longest, len(value))
            elif isinstance(value, list):  # a listwise group's passages
                longest = max([longest, *(len(passage) for passage in value)])
        lengths.append(len(query) + longest)
    return lengths


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, drop_last: bool = False, mega_batch_factor: int = 50
) -> list[list[int]]:
    """Batches of indices where each batch holds examples of similar length, so little padding.

    Shuffle all indices, sort each mega-batch of ``mega_batch_factor * batch_size`` by length
    (longest first) and cut it into batches; then arrange_batches. Every index appears once; the
    order depends only on the seed (the sampler passes seed + epoch).
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    mega = batch_size * mega_batch_factor
    ordered: list[int] = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        ordered.extend(int(i) for i in sorted(chunk, key=lambda i: -lengths[i]))
    return arrange_batches(ordered, lengths, batch_size, rng, drop_last)


def query_grouped_batches(
    queries: list[str], lengths: list[int], batch_size: int, seed: int, drop_last: bool = False
) -> list[list[int]]:
    """Batches of indices where each query's examples sit together (queries in a random order,
    each one's examples shuffled), then arrange_batches. A query's triplets repeat its top
    documents, and score_pairs scores a repeated pair once: with create_triplets.py's default
    rule a batch of 16 triplets of one query holds about 12 distinct pairs instead of 32."""
    rng = np.random.default_rng(seed)
    rows_of: dict[str, list[int]] = {}
    for row, query in enumerate(queries):
        rows_of.setdefault(query, []).append(row)
    groups = [rows_of[query] for query in sorted(rows_of)]
    ordered: list[int] = []
    for group in rng.permutation(len(groups)):
        rows = groups[group]
        ordered.extend(int(rows[i]) for i in rng.permutation(len(rows)))
    return arrange_batches(ordered, lengths, batch_size, rng, drop_last)


def arrange_batches(
    ordered: list[int], lengths: list[int], batch_size: int, rng: np.random.Generator, drop_last: bool
) -> list[list[int]]:
    """Cut ``ordered`` into batches and shuffle their order, keeping the batch with the longest
    example first so an out-of-memory error shows at step one, not hours in, and the one short
    batch last (dropped with drop_last), where accelerate expects it when it evens out batches
    across processes."""
    batches = [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]
    short = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    if drop_last:
        short = []
    if not batches:
        return short
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
    rest = [batches[b] for b in rng.permutation(len(batches)) if b != longest]
    return [batches[longest], *rest, *short]


class LengthGroupedBatchSampler(DefaultBatchSampler):
    """CrossEncoderTrainer batch sampler (training argument ``batch_sampler``) that yields
    length_grouped_batches of a training data set, reshuffled each epoch via set_epoch."""

    def __init__(
        self, dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None, seed: int = 0
    ):
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        self.lengths = example_lengths(dataset)

    def __iter__(self) -> Iterator[list[int]]:
        yield from length_grouped_batches(self.lengths, self.batch_size, self.seed + self.epoch, self.drop_last)

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)


class QueryGroupedBatchSampler(LengthGroupedBatchSampler):
    """The same, with query_grouped_batches."""

    def __init__(self, dataset, *args, **kwargs):
        super().__init__(dataset, *args, **kwargs)
        self.queries = column_values(dataset, "query")

    def __iter__(self) -> Iterator[list[int]]:
        yield from query_grouped_batches(self.queries, self.lengths, self.batch_size, self.seed + self.epoch,
                                         self.drop_last)


BATCH_SAMPLERS = {"length": LengthGroupedBatchSampler, "query": QueryGroupedBatchSampler}


def set_batch_sampler(batch_grouping: str, training, passed: dict[str, str | None]) -> None:
    """Set ``training.batch_sampler`` to the sampler train.py's --batch_grouping names, unless the
    command line (``passed``) names one of its own with --batch_sampler, which wins (said where both
    are given); "none" leaves sentence-transformers' random batches."""
    if batch_grouping != "none" and "batch_sampler" not in passed:
        training.batch_sampler = BATCH_SAMPLERS[batch_grouping]
    elif batch_grouping != "none" and "batch_grouping" in passed:
        logger.warning("--batch_grouping %s is not read: --batch_sampler %s chooses the batches", batch_grouping,
                       passed["batch_sampler"])
