"""The losses train.py offers (``--loss``), what each trains on, and the three that are ours.

Where sentence-transformers has a loss that fits, it is used as is: ``MSELoss`` (mse),
``BinaryCrossEntropyLoss`` (bce_soft, bce_labels) and ``MarginMSELoss`` (margin_mse with
``--no_fused_forward``). Ours, each where it has none that fits:

- ``FusedMarginMSELoss``: MarginMSELoss with one forward pass over all pairs of a batch (or
  length-sorted passes of ``--pairs_per_forward`` pairs), and n-tuples whose negative counts
  differ (training_data.py pads the shorter ones with an empty text and a NaN margin; they are
  never scored and stay out of the mean).
- ``GroupInfoNCELoss``: softmax cross-entropy over a positive and its own hard negatives, the
  positive as target (bge-reranker's own training objective). sentence-transformers'
  MultipleNegativesRankingLoss always adds in-batch negatives, one more forward pass each, and
  cannot leave out the missing negatives of shorter n-tuples.
- ``ListwiseKLLoss``: sentence-transformers' ListNetLoss minus the teacher's entropy, so the value
  is KL(teacher || student) over each query's candidates: the same gradients, and 0 at a
  student that matches the teacher.

Teacher scores and margins reach every loss already divided by ``--teacher_temperature``
(training_data.py builds the labels), so no loss here has a temperature of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sentence_transformers.cross_encoder.losses import (
    BinaryCrossEntropyLoss,
    ListNetLoss,
    MarginMSELoss,
    MSELoss,
)
from sentence_transformers.util import batch_to_device
from torch import Tensor, nn


@dataclass(frozen=True)
class LossSpec:
    """What a ``--loss`` trains on and what it optimises."""

    inputs: tuple[str, ...]  # the data kinds it trains on, best first (see training_data.DATA_KINDS)
    optimises: str
    reads_teacher: bool = True  # whether the teacher's scores or margins are its targets
    pairs_per_example: bool = False  # scores several (query, document) pairs an example: --pairs_per_forward applies


LOSSES = {
    "margin_mse": LossSpec(
        ("triplets", "ntuples"),
        "MSE between the student's margin s(q,pos) - s(q,neg_i) and the teacher's, per negative",
        pairs_per_example=True,  # (fused: with --no_fused_forward, sentence-transformers' loss as is)
    ),
    "mse": LossSpec(("scores",), "MSE between the student's logit s(q,p) and the teacher's score"),
    "bce_soft": LossSpec(
        ("scores",), "binary cross-entropy of sigmoid(s(q,p)) against sigmoid(teacher score / temperature)"
    ),
    "listwise_kl": LossSpec(
        ("listwise",), "KL(softmax(teacher scores / temperature) || softmax(student logits)) over each query's list",
        pairs_per_example=True,
    ),
    "bce_labels": LossSpec(
        ("labelled", "scores"), "binary cross-entropy against gold labels (label > 0 is 1, else 0); no teacher",
        reads_teacher=False,
    ),
    "infonce": LossSpec(
        ("ntuples", "triplets"),
        "softmax cross-entropy over a positive and its hard negatives, the positive as target; no teacher scores",
        reads_teacher=False,
        pairs_per_example=True,
    ),
}


def build_loss(name: str, model, fused_forward: bool = True, pairs_per_forward: int = 0) -> nn.Module:
    """The loss module for ``--loss name`` (a key of LOSSES) on a one-logit CrossEncoder.
    ``pairs_per_forward`` > 0 scores a batch's pairs in length-sorted forward passes of that many
    (see score_pairs) in the losses that score many pairs per example (margin_mse fused,
    listwise_kl, infonce); 0 scores each batch in one pass."""
    if name == "margin_mse":
        return FusedMarginMSELoss(model, pairs_per_forward=pairs_per_forward) if fused_forward else MarginMSELoss(model)
    if name == "mse":
        return MSELoss(model)
    if name in ("bce_soft", "bce_labels"):  # both with float targets in [0, 1]
        return BinaryCrossEntropyLoss(model)
    if name == "listwise_kl":
        return ListwiseKLLoss(model, pairs_per_forward=pairs_per_forward)
    if name == "infonce":
        return GroupInfoNCELoss(model, pairs_per_forward=pairs_per_forward)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


# ---------------------------------------------------------------------------------------------
# One forward pass over every (query, document) pair of a batch
# ---------------------------------------------------------------------------------------------


def score_pairs(
    model, pairs: list[tuple[str, str]], prompt: str | None = None, task: str | None = None,
    pairs_per_forward: int = 0,
) -> Tensor:
    """One raw logit per (query, document) pair, in the order given, from a single tokenisation.

    A pair that comes more than once is scored once and its logit reused, gradient and all: the
    triplets of one query repeat its top documents (the default rule pairs each of 8 positives
    with 4 negatives), so a batch holding several of them scores fewer pairs. (In training mode
    the repeats then share one dropout draw.)

    ``pairs_per_forward`` <= 0 (or at least the number of distinct pairs): one forward pass over
    all of them. Otherwise the pairs are sorted by token length and scored in forward passes of
    that many, each padded only to its own longest pair. The logits are the same (padding is
    masked out), but a batch of whole candidate lists mixes short and long passages, and one pass
    pads every pair to the longest (about a third of the tokens of SemEval's lists), which costs
    the same compute as real tokens.
    """
    position: dict[tuple[str, str], int] = {}
    where = [position.setdefault((query, document), len(position)) for query, document in pairs]
    if len(position) < len(pairs):
        distinct = score_pairs(model, list(position), prompt, task, pairs_per_forward)
        return distinct[torch.tensor(where, device=distinct.device)]
    features = model.preprocess(pairs, prompt=prompt, task=task)
    if pairs_per_forward <= 0 or len(pairs) <= pairs_per_forward:
        return model(batch_to_device(features, model.device))["scores"].view(-1)
    lengths = features["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    # under torchrun the loss holds the DistributedDataParallel wrapper, which hides the tokenizer
    tokenizer = getattr(model, "module", model).tokenizer
    left_padded = getattr(tokenizer, "padding_side", "right") == "left"
    scores = []
    for rows in order.split(pairs_per_forward):
        width = int(lengths[rows].max())
        columns = slice(-width, None) if left_padded else slice(0, width)
        chunk = {
            name: value[rows][:, columns] if isinstance(value, Tensor) and value.dim() == 2 else value
            for name, value in features.items()
        }
        scores.append(model(batch_to_device(chunk, model.device))["scores"].view(-1))
    return torch.cat(scores)[torch.argsort(order)]


def score_groups(
    model, anchors: list[str], columns: list[list[str]], present: Tensor, prompt: str | None = None,
    task: str | None = None, pairs_per_forward: int = 0,
) -> Tensor:
    """Logits of each query against each document column from one tokenisation (see
    score_pairs), shaped (batch, columns): the logit of (anchors[b], columns[c][b]) where
    ``present[b, c]``, else 0 (a missing negative of a shorter n-tuple, never scored; the caller
    masks it)."""
    present = present.cpu()
    mask = present.tolist()
    pairs = [(query, column[b]) for c, column in enumerate(columns) for b, query in enumerate(anchors) if mask[b][c]]
    flat = score_pairs(model, pairs, prompt, task, pairs_per_forward)
    # Column by column, then row by row: the order masked_scatter fills a (columns, batch) mask in.
    return flat.new_zeros(present.T.shape).masked_scatter(present.T.to(flat.device), flat).T


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


def group_mask(margins: Tensor) -> Tensor:
    """Which documents of each row's group [positive, negative_1, ...] exist, shaped
    (batch, 1 + negatives): the positive always, a negative where its margin is not NaN."""
    negatives = ~margins.isnan()
    return torch.cat([torch.ones_like(negatives[:, :1]), negatives], dim=1)


class FusedMarginMSELoss(MarginMSELoss):
    """sentence-transformers' MarginMSELoss with one tokenisation and forward pass over the
    positive and all negative pairs together ((1 + n) * B pairs instead of 1 + n passes of B):
    fewer kernel launches and a fuller GPU. (With ``pairs_per_forward`` > 0, length-sorted passes
    of that many pairs instead: less padding, see score_pairs.)

    Equal to MarginMSELoss up to float rounding (attention masks keep the extra padding of the
    joint batch out of every real position). Also takes n-tuples with fewer negatives than the
    widest row: a missing negative has a NaN margin (and an empty text), is never scored, and the
    mean runs over the margins present.
    """

    def __init__(self, model, *args, pairs_per_forward: int = 0, **kwargs) -> None:
        super().__init__(model, *args, **kwargs)
        self.pairs_per_forward = pairs_per_forward

    def forward(self, inputs, labels, prompt=None, task=None) -> Tensor:
        anchors, documents = inputs[0], inputs[1:]
        labels = margin_labels(labels, len(anchors), len(documents) - 1).to(self.model.device).float()
        present = group_mask(labels)
        logits = score_groups(self.model, anchors, documents, present, prompt, task, self.pairs_per_forward)
        logits = self.activation_fn(logits)
        margins = logits[:, :1] - logits[:, 1:]
        dtype = torch.promote_types(margins.dtype, torch.float32)  # a float64 model's margins stay float64
        # The mean squared error over the margins present, as a masked mean: selecting them by
        # boolean indexing would make the CPU wait for the forward pass before it queues the backward.
        scored = present[:, 1:].to(margins.device)
        errors = torch.where(scored, margins.to(dtype) - labels.detach().nan_to_num().to(dtype), 0)
        return errors.square().sum() / scored.sum().clamp(min=1)  # (a batch with no negative at all: 0)


class GroupInfoNCELoss(nn.Module):
    """Softmax cross-entropy over each row's group [positive, negative_1, ..., negative_n] of raw
    logits with the positive as target: -log(exp(s_pos) / sum over the group of exp(s)), the
    mean over rows. One forward pass per batch (or length-sorted passes of ``pairs_per_forward``
    pairs, see score_pairs). The labels (teacher margins) only mark the
    missing negatives of shorter n-tuples (NaN), which are left out of the softmax."""

    def __init__(self, model, pairs_per_forward: int = 0) -> None:
        super().__init__()
        self.model = model
        self.cross_entropy = nn.CrossEntropyLoss()
        self.pairs_per_forward = pairs_per_forward

    def forward(self, inputs, labels, prompt=None, task=None) -> Tensor:
        anchors, documents = inputs[0], inputs[1:]
        present = group_mask(margin_labels(labels, len(anchors), len(documents) - 1))
        logits = score_groups(self.model, anchors, documents, present, prompt, task, self.pairs_per_forward)
        logits = logits.float().masked_fill(~present.to(logits.device), float("-inf"))
        return self.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))

    def get_config_dict(self) -> dict:
        return {}


class ListwiseKLLoss(ListNetLoss):
    """KL(p_teacher || p_student) per query, the mean over the batch: p = softmax over the query's
    candidates of teacher scores (already divided by the temperature) and of student logits.

    ListNetLoss computes the cross-entropy H(p_teacher, p_student) = KL + H(p_teacher); the
    teacher's entropy does not depend on the student, so the KL differs in value only: gradients,
    and so training, are ListNet's, and 0 means the student matches the teacher. The pairs of the
    whole batch come from one tokenisation, scored in one forward pass or in length-sorted passes
    of ``pairs_per_forward`` (see score_pairs).
    """

    def __init__(self, model, pairs_per_forward: int = 0) -> None:
        super().__init__(model, mini_batch_size=-1)
        self.pairs_per_forward = pairs_per_forward

    def forward(self, inputs, labels: list[Tensor], prompt=None, task=None) -> Tensor:
        queries, documents = inputs
        sizes = [len(docs) for docs in documents]
        if sizes != [len(scores) for scores in labels]:
            raise ValueError(f"documents per query {sizes} do not match scores per query {[len(x) for x in labels]}")
        pairs = [(query, document) for query, docs in zip(queries, documents) for document in docs]
        logits = self.activation_fn(score_pairs(self.model, pairs, prompt, task, self.pairs_per_forward).float())
        divergences = []
        for student, teacher in zip(logits.split(sizes), labels):
            log_p = torch.log_softmax(teacher.float().to(student.device), dim=0)
            divergences.append((log_p.exp() * (log_p - torch.log_softmax(student, dim=0))).sum())
        return torch.stack(divergences).mean()
