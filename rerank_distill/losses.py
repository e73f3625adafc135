"""The losses train.py offers (``--loss``), what each trains on, and the three that are ours.

Where sentence-transformers has a loss that fits, it is used as is: ``MSELoss`` (mse),
``BinaryCrossEntropyLoss`` (bce_soft, bce_labels) and ``MarginMSELoss`` (margin_mse with
``--no_fused_forward``). Ours, each where it has none that fits:

- ``FusedMarginMSELoss``: MarginMSELoss with ONE forward pass over all pairs of a batch, and
  n-tuples whose negative counts differ (training.py pads the shorter ones with an empty text
  and a NaN margin; they are never scored and stay out of the mean).
- ``GroupInfoNCELoss``: softmax cross-entropy over a positive and its own hard negatives, the
  positive as target (bge-reranker's own training objective). sentence-transformers'
  MultipleNegativesRankingLoss always adds in-batch negatives, one more forward pass each, and
  cannot leave out the missing negatives of shorter n-tuples.
- ``ListwiseKLLoss``: sentence-transformers' ListNetLoss minus the teacher's entropy, so the value
  is KL(teacher || student) over each query's candidates: the same gradients, and 0 at a
  student that matches the teacher.

Teacher scores and margins reach every loss already divided by ``--teacher_temperature``
(training.py builds the labels), so no loss here has a temperature of its own.
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
    inputs: tuple[str, ...]  # the data kinds it trains on, best first (see training.DATA_KINDS)
    optimises: str


LOSSES = {
    "margin_mse": LossSpec(
        ("triplets", "ntuples"),
        "MSE between the student's margin s(q,pos) - s(q,neg_i) and the teacher's, per negative",
    ),
    "mse": LossSpec(("scores",), "MSE between the student's logit s(q,p) and the teacher's score"),
    "bce_soft": LossSpec(
        ("scores",), "binary cross-entropy of sigmoid(s(q,p)) against sigmoid(teacher score / temperature)"
    ),
    "listwise_kl": LossSpec(
        ("listwise",), "KL(softmax(teacher scores / temperature) || softmax(student logits)) over each query's list"
    ),
    "bce_labels": LossSpec(
        ("labelled", "scores"), "binary cross-entropy against gold labels (label > 0 is 1, else 0); no teacher"
    ),
    "infonce": LossSpec(
        ("ntuples", "triplets"),
        "softmax cross-entropy over a positive and its hard negatives, the positive as target; no teacher scores",
    ),
}


def build_loss(name: str, model, fused_forward: bool = True) -> nn.Module:
    """The loss module for ``--loss name`` (a key of LOSSES) on a one-logit CrossEncoder."""
    if name == "margin_mse":
        return FusedMarginMSELoss(model) if fused_forward else MarginMSELoss(model)
    if name == "mse":
        return MSELoss(model)
    if name in ("bce_soft", "bce_labels"):  # both with float targets in [0, 1]
        return BinaryCrossEntropyLoss(model)
    if name == "listwise_kl":
        return ListwiseKLLoss(model)
    if name == "infonce":
        return GroupInfoNCELoss(model)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


# ---------------------------------------------------------------------------------------------
# One forward pass over every (query, document) pair of a batch
# ---------------------------------------------------------------------------------------------


def score_pairs(model, pairs: list[tuple[str, str]], prompt: str | None = None, task: str | None = None) -> Tensor:
    """One raw logit per (query, document) pair, from a single tokenisation and forward pass."""
    features = model.preprocess(pairs, prompt=prompt, task=task)
    features = batch_to_device(features, model.device)
    return model(features)["scores"].view(-1)


def score_groups(
    model, anchors: list[str], columns: list[list[str]], present: Tensor, prompt: str | None = None,
    task: str | None = None,
) -> Tensor:
    """Logits of each query against each document column in one forward pass, shaped
    (batch, columns): the logit of (anchors[b], columns[c][b]) where ``present[b, c]``, else 0
    (a missing negative of a shorter n-tuple, never scored; the caller masks it)."""
    present = present.cpu()
    mask = present.tolist()
    pairs = [(query, column[b]) for c, column in enumerate(columns) for b, query in enumerate(anchors) if mask[b][c]]
    flat = score_pairs(model, pairs, prompt, task)
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
    """sentence-transformers' MarginMSELoss with ONE tokenisation and forward pass over the
    positive and all negative pairs together ((1 + n) * B pairs instead of 1 + n passes of B):
    fewer kernel launches and a fuller GPU.

    Equal to MarginMSELoss up to float rounding (attention masks keep the extra padding of the
    joint batch out of every real position). Also takes n-tuples with fewer negatives than the
    widest row: a missing negative has a NaN margin (and an empty text), is never scored, and the
    mean runs over the margins present.
    """

    def forward(self, inputs, labels, prompt=None, task=None) -> Tensor:
        anchors, documents = inputs[0], inputs[1:]
        labels = margin_labels(labels, len(anchors), len(documents) - 1).to(self.model.device).float()
        present = group_mask(labels)
        logits = self.activation_fn(score_groups(self.model, anchors, documents, present, prompt, task))
        margins = logits[:, :1] - logits[:, 1:]
        return self.loss_fct(margins[present[:, 1:]], labels.detach()[present[:, 1:]])


class GroupInfoNCELoss(nn.Module):
    """Softmax cross-entropy over each row's group [positive, negative_1, ..., negative_n] of raw
    logits with the positive as target: -log(exp(s_pos) / sum over the group of exp(s)), the
    mean over rows. One forward pass per batch. The labels (teacher margins) only mark the
    missing negatives of shorter n-tuples (NaN), which are left out of the softmax."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.cross_entropy = nn.CrossEntropyLoss()

    def forward(self, inputs, labels, prompt=None, task=None) -> Tensor:
        anchors, documents = inputs[0], inputs[1:]
        present = group_mask(margin_labels(labels, len(anchors), len(documents) - 1))
        logits = score_groups(self.model, anchors, documents, present, prompt, task)
        logits = logits.float().masked_fill(~present.to(logits.device), float("-inf"))
        return self.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))

    def get_config_dict(self) -> dict:
        return {}


class ListwiseKLLoss(ListNetLoss):
    """KL(p_teacher || p_student) per query, the mean over the batch: p = softmax over the query's
    candidates of teacher scores (already divided by the temperature) and of student logits.

    ListNetLoss computes the cross-entropy H(p_teacher, p_student) = KL + H(p_teacher); the
    teacher's entropy does not depend on the student, so subtracting it changes the value only:
    gradients, and so training, are ListNet's. The whole batch goes through one forward pass.
    """

    def __init__(self, model) -> None:
        super().__init__(model, mini_batch_size=-1)  # <= 0: one forward pass over all pairs

    def forward(self, inputs, labels: list[Tensor], prompt=None, task=None) -> Tensor:
        cross_entropy = super().forward(inputs, labels, prompt=prompt, task=task)
        entropies = []
        for scores in labels:
            log_p = torch.log_softmax(scores.float(), dim=0)
            entropies.append(-(log_p.exp() * log_p).sum())
        return cross_entropy - torch.stack(entropies).mean().to(cross_entropy.device)
