"""Training helpers for train.py: triplets into a data set, the held-out split by query, the
defaults train.py adds to the command line, and two speed levers that change no loss value:
a MarginMSE loss with one forward pass per batch and a length-grouped batch sampler."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from sentence_transformers.base.sampler import DefaultBatchSampler
from sentence_transformers.cross_encoder import CrossEncoderTrainer
from sentence_transformers.cross_encoder.losses import MarginMSELoss
from torch import Tensor

from rerank_distill.errors import InputError
from rerank_distill.jsonl import get_number, get_text, read_jsonl

logger = logging.getLogger(__name__)

TRIPLET_COLUMNS = ("query", "positive", "negative", "label")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def read_triplets(path: str) -> dict[str, list]:
    """Read and validate a whole triplets file (``{"query", "positive", "negative", "score"}``).

    Returns columns ``query``, ``positive``, ``negative`` (strings) and ``label`` (the teacher
    margin, a logit difference). Raises InputError naming file:line and field for a bad record,
    and for an empty or missing file.
    """
    columns: dict[str, list] = {name: [] for name in TRIPLET_COLUMNS}
    for line, record in read_jsonl(path):
        for name in ("query", "positive", "negative"):
            columns[name].append(get_text(record, name, path, line))
        columns["label"].append(get_number(record, "score", path, line))
    return columns


def triplets_dataset(columns: dict[str, list]):
    """A ``datasets.Dataset`` with columns query, positive, negative, label in that order
    (CrossEncoderTrainer hands the text columns to the loss in column order)."""
    from datasets import Dataset

    return Dataset.from_dict({name: columns[name] for name in TRIPLET_COLUMNS})


def held_out_queries(queries: list[str], share: float, seed: int) -> set[str]:
    """The distinct queries held out for evaluation: ``round(share * distinct)``, at least one,
    and never all of them.

    The choice depends only on the query texts and the seed (the queries with the smallest
    SHA-256 of ``"seed:query"``), so every process of a torchrun job and every rerun agrees.
    """
    distinct = sorted(set(queries))
    if len(distinct) < 2:
        raise InputError(
            f"cannot hold out evaluation queries from {len(distinct)} distinct training queries; "
            "pass --eval_data, or --eval_strategy no to train without evaluation"
        )
    if not 0.0 < share < 1.0:
        raise InputError(f"--eval_share must be between 0 and 1 (exclusive), got {share}")
    count = min(max(1, round(share * len(distinct))), len(distinct) - 1)

    def rank(query: str) -> str:
        return hashlib.sha256(f"{seed}:{query}".encode()).hexdigest()

    return set(sorted(distinct, key=rank)[:count])


def split_by_query(dataset, share: float, seed: int):
    """Split a triplets data set into (train, eval) by whole queries (see held_out_queries):
    every triplet of a held-out query goes to eval, so no query is in both."""
    queries = dataset["query"]
    held_out = held_out_queries(queries, share, seed)
    eval_rows = [i for i, query in enumerate(queries) if query in held_out]
    train_rows = [i for i, query in enumerate(queries) if query not in held_out]
    return dataset.select(train_rows), dataset.select(eval_rows)


# ---------------------------------------------------------------------------------------------
# Command-line defaults
# ---------------------------------------------------------------------------------------------


def passed_flags(argv: list[str]) -> dict[str, str | None]:
    """The flags present on a command line, by field name (``--eval-steps=5`` -> ``eval_steps``),
    each with the value written after it (None for a bare flag). ``--no_X`` counts as ``X``."""
    flags: dict[str, str | None] = {}
    for index, token in enumerate(argv):
        if not token.startswith("--"):
            continue
        name, equals, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if not equals:
            following = argv[index + 1] if index + 1 < len(argv) else None
            value = following if following is not None and not following.startswith("--") else None
        flags[name] = value
        if name.startswith("no_"):
            flags[name[3:]] = "false"
    return flags


def default_training_flags(passed: dict[str, str | None]) -> list[str]:
    """Training flags train.py adds in front of the user's own, for those the user did not pass.

    Evaluation and checkpoints run on one schedule (10 times per run unless set), the checkpoint
    with the lowest held-out eval_loss becomes the final model, and only it and the latest
    checkpoint are kept. A flag the user passed is never changed; the other member of a pair
    (eval/save strategy, eval/save steps) follows it so that load_best_model_at_end stays valid.
    """
    flags: list[str] = []

    def add(name: str, value: str) -> None:
        if name not in passed:
            flags.extend([f"--{name}", value])

    eval_strategy = passed.get("eval_strategy")
    save_strategy = passed.get("save_strategy")
    if eval_strategy is None and save_strategy not in (None, "best", "no"):
        eval_strategy = save_strategy
    if save_strategy is None and eval_strategy not in (None, "no"):
        save_strategy = eval_strategy
    eval_strategy, save_strategy = eval_strategy or "steps", save_strategy or "steps"
    add("eval_strategy", eval_strategy)
    add("save_strategy", save_strategy)

    steps = passed.get("eval_steps") or passed.get("save_steps") or "0.1"  # a float < 1 is a share of all steps
    add("eval_steps", steps)
    add("save_steps", steps)
    add("logging_steps", "0.02")

    evaluating = eval_strategy != "no"
    checkpoints_follow_evals = save_strategy == "best" or (save_strategy == eval_strategy != "no")
    add("load_best_model_at_end", str(evaluating and checkpoints_follow_evals))
    add("save_total_limit", "2")  # the best checkpoint is always kept besides the latest
    # Under torchrun the Trainer turns on find_unused_parameters for a CrossEncoder, but the
    # model returns a BatchEncoding (not a dict) in which DDP finds no output tensors, so DDP
    # calls every parameter unused and backward fails ("marked ready twice"). Every parameter
    # of a cross-encoder gets a gradient at each step, so the search is not needed.
    add("ddp_find_unused_parameters", "False")
    return flags


# ---------------------------------------------------------------------------------------------
# Loss: MarginMSE with padding statistics, and the one-forward-pass variant
# ---------------------------------------------------------------------------------------------


@dataclass
class PaddingStats:
    """Token counts over the training forward passes of one process (evaluation is not counted)."""

    triplets: int = 0
    pairs: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0

    def add(self, attention_mask: Tensor) -> None:
        self.pairs += attention_mask.shape[0]
        self.real_tokens += int(attention_mask.sum())
        self.padded_tokens += attention_mask.numel()

    def summary(self) -> dict[str, float]:
        """Mean real and padded tokens per pair (padded = the batch's sequence length) and the
        share of padding: what length-grouped batches shrink."""
        pairs = max(self.pairs, 1)
        return {
            "mean_real_tokens": round(self.real_tokens / pairs, 1),
            "mean_padded_tokens": round(self.padded_tokens / pairs, 1),
            "padding_share": round(1 - self.real_tokens / max(self.padded_tokens, 1), 3),
        }


def margin_labels(labels: Tensor | list[Tensor], batch_size: int, num_negatives: int) -> Tensor:
    """Teacher margins shaped (batch, negatives), accepting what MarginMSELoss accepts: one margin
    per triplet, margins per negative, or raw scores [positive, negative_1, ...] per row."""
    # Mirrors sentence_transformers.cross_encoder.losses.MarginMSELoss.forward.
    if isinstance(labels, list):
        labels = torch.stack(labels)
    if labels.shape == (batch_size, num_negatives + 1):
        labels = labels[:, 0].unsqueeze(1) - labels[:, 1:]
    if labels.shape == (batch_size,):
        labels = labels.unsqueeze(1)
    if labels.shape != (batch_size, num_negatives):
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match {(batch_size, num_negatives)}")
    return labels


class TrackedMarginMSELoss(MarginMSELoss):
    """sentence-transformers' MarginMSELoss (one forward pass for the positives, one per negative
    column), counting real and padded tokens of training batches in ``self.padding_stats``."""

    def __init__(self, model, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.padding_stats = PaddingStats()

    def forward(self, inputs, labels, prompt=None, task=None) -> Tensor:
        if self.model.training:
            self.padding_stats.triplets += len(inputs[0])
        return super().forward(inputs, labels, prompt=prompt, task=task)

    def logits_from_pairs(self, pairs, prompt=None, task=None) -> Tensor:
        from sentence_transformers.util import batch_to_device

        features = self.model.preprocess(pairs, prompt=prompt, task=task)
        if self.model.training:
            self.padding_stats.add(features["attention_mask"])
        features = batch_to_device(features, self.model.device)
        return self.activation_fn(self.model(features)["scores"].view(-1))


class FusedMarginMSELoss(TrackedMarginMSELoss):
    """The same loss with ONE tokenisation and forward pass over the positive and negative pairs
    together (2B pairs instead of two passes of B): fewer kernel launches and a fuller GPU.

    Equal to MarginMSELoss up to float rounding: attention masks keep the extra padding of the
    joint batch out of every real position.
    """

    def forward(self, inputs, labels, prompt=None, task=None) -> Tensor:
        anchors, documents = inputs[0], inputs[1:]
        batch_size = len(anchors)
        labels = margin_labels(labels, batch_size, len(documents) - 1)
        if self.model.training:
            self.padding_stats.triplets += batch_size
        pairs = [pair for column in documents for pair in zip(anchors, column)]
        logits = self.logits_from_pairs(pairs, prompt=prompt, task=task).view(len(documents), batch_size)
        margins = logits[0].unsqueeze(1) - logits[1:].T
        return self.loss_fct(margins, labels.detach().float())


# ---------------------------------------------------------------------------------------------
# Batch sampler: batches of similar length
# ---------------------------------------------------------------------------------------------


def triplet_lengths(dataset) -> list[int]:
    """A cheap length per triplet in characters: query plus its longer document, which is what
    the padded length of a fused positive+negative batch follows."""
    return [
        len(query) + max(len(positive), len(negative))
        for query, positive, negative in zip(dataset["query"], dataset["positive"], dataset["negative"])
    ]


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, drop_last: bool = False, mega_batch_factor: int = 50
) -> list[list[int]]:
    """Batches of indices where each batch holds examples of similar length, so little padding.

    Shuffle all indices, sort each mega-batch of ``mega_batch_factor * batch_size`` by length
    (longest first), cut into batches and shuffle the batch order, keeping the batch with the
    longest example first so an out-of-memory error shows at step one, not hours in, and the
    one short batch last (dropped with drop_last), where accelerate expects it when it evens out
    batches across processes. Every index appears once; the order depends only on the seed (the
    sampler passes seed + epoch).
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    mega = batch_size * mega_batch_factor
    ordered: list[int] = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        ordered.extend(int(i) for i in sorted(chunk, key=lambda i: -lengths[i]))
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
    length_grouped_batches of a triplets data set, reshuffled each epoch via set_epoch."""

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
        self.lengths = triplet_lengths(dataset)

    def __iter__(self) -> Iterator[list[int]]:
        yield from length_grouped_batches(self.lengths, self.batch_size, self.seed + self.epoch, self.drop_last)

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)


class DistillationTrainer(CrossEncoderTrainer):
    """CrossEncoderTrainer with two fixes for torchrun (no change on one process).

    - Only the main process writes checkpoints and the final model: transformers 5 calls
      ``_save`` on every process and checks ``should_save`` inside it, but sentence-transformers'
      ``_save`` override assumes it runs on the main process only, so all processes would write
      the same files at once.
    - Evaluation sees every eval triplet: sentence-transformers sets dataloader_drop_last so that
      every process gets the same number of full training batches, which for evaluation would
      drop the last batches (or all of a small eval set, leaving no eval_loss to pick the best
      checkpoint by and failing the run). Accelerate instead pads the last eval batch with
      repeated triplets; as the loss is a batch mean, that one batch's share of eval_loss also
      averages in the repeats.
    """

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if self.args.should_save:
            super()._save(output_dir, state_dict=state_dict)

    def get_batch_sampler(self, dataset, batch_size, drop_last, *args, **kwargs):
        if dataset is not self.train_dataset:
            drop_last = False
        return super().get_batch_sampler(dataset, batch_size, drop_last, *args, **kwargs)
