"""rerank_distill.losses with the labels training_data.py builds: each loss's value on a small fixed batch
equals the formula computed by hand from the model's own logits, and every --loss trains a model
CrossEncoder loads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from rerank_distill.losses import LOSSES, FusedMarginMSELoss, ListwiseKLLoss, build_loss
from rerank_distill.toy import write_jsonl_records
from rerank_distill.training_data import read_training_data

pytestmark = pytest.mark.usefixtures("one_thread")

Q1, Q2, Q3 = "how do i undo a git commit", "best way to cook rice", "why does my tcp socket hang"
P1, P2, P3 = "git reset --soft HEAD~1 undoes the commit", "rinse the rice then boil it", "the peer never closed it"
N1, N2, N3, N4 = "preheat the oven", "a visa is needed for some borders", "dns maps names", "flour and sugar"


@pytest.fixture(scope="module")
def model(tiny_cross_encoder):
    """The tiny student in eval mode (no dropout) and float64 (its one-logit head still computes in
    float32), so the loss's padded batch and the hand computation's one-pair batches agree to
    float32 rounding, far below the 1e-6 relative tolerance used here. On the CPU, also where a
    GPU is present (test_gpu.py trains on a GPU)."""
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(tiny_cross_encoder), num_labels=1, device="cpu").eval().to(torch.float64)


def logit(model, query: str, passage: str) -> float:
    """The model's raw logit for one pair, scored alone (no other pair in its batch)."""
    return float(model.predict([(query, passage)], activation_fn=torch.nn.Identity(), convert_to_numpy=True)[0])


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def loss_on_file(model, path: str, loss_name: str, temperature: float = 1.0, **loss_kwargs) -> float:
    """The loss over the whole file as one batch, collated as CrossEncoderTrainer collates it."""
    from sentence_transformers.cross_encoder.data_collator import CrossEncoderDataCollator

    dataset = read_training_data(path, loss_name, temperature).to_dataset()
    batch = CrossEncoderDataCollator(preprocess_fn=model.preprocess)([dataset[i] for i in range(len(dataset))])
    labels = batch.pop("label")
    labels = [row.to(model.device) for row in labels] if isinstance(labels, list) else labels.to(model.device)
    with torch.no_grad():
        return build_loss(loss_name, model, **loss_kwargs)(list(batch.values()), labels).item()


# --- each loss equals its formula -------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
def test_margin_mse_on_triplets_is_the_mean_squared_margin_error(model, tmp_path, fused):
    rows = [(Q1, P1, N1, 2.5), (Q2, P2, N2, -1.0), (Q3, P3, N3, 4.0)]
    path = write_jsonl_records(tmp_path / "t.jsonl", [{"query": q, "positive": p, "negative": n, "score": m}
                                              for q, p, n, m in rows])
    expected = np.mean([((logit(model, q, p) - logit(model, q, n)) - m / 2.0) ** 2 for q, p, n, m in rows])
    assert loss_on_file(model, path, "margin_mse", 2.0, fused_forward=fused) == pytest.approx(expected, rel=1e-6)


def test_margin_mse_on_ntuples_uses_every_negative_and_skips_the_missing_ones(model, tmp_path):
    rows = [(Q1, P1, [N1, N2, N3], [5.0, 1.0, 0.5, -2.0]), (Q2, P2, [N4], [3.0, 3.5])]
    path = write_jsonl_records(tmp_path / "n.jsonl", [{"query": q, "positive": p, "negatives": n, "scores": s}
                                              for q, p, n, s in rows])
    errors = [
        ((logit(model, q, p) - logit(model, q, negative)) - (scores[0] - score)) ** 2
        for q, p, negatives, scores in rows for negative, score in zip(negatives, scores[1:])
    ]
    assert len(errors) == 4  # three margins of the first row, one of the second
    assert loss_on_file(model, path, "margin_mse") == pytest.approx(np.mean(errors), rel=1e-6)


def test_mse_regresses_each_logit_on_the_teacher_score(model, tmp_path):
    rows = [(Q1, P1, 3.0), (Q1, N1, -2.0), (Q2, P2, 0.5)]
    path = write_jsonl_records(tmp_path / "s.jsonl", [{"query": q, "passage": p, "score": s, "label": 1} for q, p, s in rows])
    expected = np.mean([(logit(model, q, p) - s / 4.0) ** 2 for q, p, s in rows])
    assert loss_on_file(model, path, "mse", 4.0) == pytest.approx(expected, rel=1e-6)


def test_bce_soft_targets_are_the_teachers_probabilities_at_the_temperature(model, tmp_path):
    rows = [(Q1, P1, 3.0), (Q1, N1, -2.0), (Q2, P2, "0.5")]  # a numeric-string score, as {"content"} files have
    path = write_jsonl_records(tmp_path / "s.jsonl", [{"query": q, "content": p, "score": s} for q, p, s in rows])
    expected = np.mean([
        -(sigmoid(float(s) / 2.0) * math.log(sigmoid(logit(model, q, p)))
          + (1 - sigmoid(float(s) / 2.0)) * math.log(1 - sigmoid(logit(model, q, p))))
        for q, p, s in rows
    ])
    assert loss_on_file(model, path, "bce_soft", 2.0) == pytest.approx(expected, rel=1e-6)


def test_bce_labels_trains_on_gold_labels_with_graded_ones_counted_relevant(model, tmp_path):
    path = write_jsonl_records(tmp_path / "graded.jsonl", [
        {"query": Q1, "passage": P1, "grade": 2}, {"query": Q1, "passage": N1, "grade": 0},
        {"query": Q1, "passage": N2, "grade": 0}, {"query": Q2, "passage": P2, "grade": 1},
    ])  # fmt: skip
    pairs = [(Q1, P1, 1), (Q1, N1, 0), (Q1, N2, 0), (Q2, P2, 1)]  # grade 2 is relevant: a target of 1
    expected = np.mean([-math.log(sigmoid(logit(model, q, p)) if y else 1 - sigmoid(logit(model, q, p)))
                        for q, p, y in pairs])
    assert loss_on_file(model, path, "bce_labels") == pytest.approx(expected, rel=1e-6)


def test_listwise_kl_is_the_kl_divergence_from_the_teachers_softmax(model, tmp_path):
    rows = [(Q1, [P1, N1, N2], [4.0, 1.0, -1.0]), (Q2, [P2, N3], [2.0, 2.5])]  # lists of different lengths
    path = write_jsonl_records(tmp_path / "l.jsonl", [{"query": q, "passages": p, "scores": s} for q, p, s in rows])

    def softmax(values):
        e = np.exp(np.asarray(values) - np.max(values))
        return e / e.sum()

    kls = []
    for query, passages, scores in rows:
        teacher = softmax(np.asarray(scores) / 3.0)
        student = softmax([logit(model, query, passage) for passage in passages])
        kls.append(float(np.sum(teacher * np.log(teacher / student))))
    assert loss_on_file(model, path, "listwise_kl", 3.0) == pytest.approx(np.mean(kls), rel=1e-6)


def test_infonce_is_the_cross_entropy_of_the_positive_within_its_own_group(model, tmp_path):
    rows = [(Q1, P1, [N1, N2], [5.0, 1.0, 0.5]), (Q2, P2, [N3], [3.0, 1.0])]
    path = write_jsonl_records(tmp_path / "n.jsonl", [{"query": q, "positive": p, "negatives": n, "scores": s}
                                              for q, p, n, s in rows])
    expected = np.mean([
        -logit(model, q, p) + math.log(sum(math.exp(logit(model, q, d)) for d in [p, *negatives]))
        for q, p, negatives, _ in rows
    ])
    assert loss_on_file(model, path, "infonce") == pytest.approx(expected, rel=1e-6)


# --- our losses against sentence-transformers' ---------------------------------------------------


def loss_and_grads(loss_fn, model, inputs, labels):
    """The loss and its gradients, with the labels on the model's device as the trainer puts them."""
    labels = [row.to(model.device) for row in labels] if isinstance(labels, list) else labels.to(model.device)
    model.zero_grad()
    loss = loss_fn(inputs, labels)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "inputs, labels",
    [
        ([[Q1, Q2, Q3], [P1, P2, P3], [N1, N2, "the dentist clinic opens at nine every weekday morning"]],
         torch.tensor([2.0, -0.5, 3.25])),
        (   # two negative columns, labels as raw teacher scores [positive, negative_1, negative_2]
            [[Q1, Q2], [P1, P2], [N1, N2], [N3, N4]],
            torch.tensor([[5.0, 1.0, 0.5], [4.0, 3.5, -1.0]]),
        ),
    ],
)
def test_fused_margin_mse_equals_sentence_transformers_margin_mse_and_its_gradients(tiny_cross_encoder, inputs, labels):
    """In float32: sentence-transformers' MarginMSELoss casts its labels to float32, which the
    backward pass of a float64 model rejects in some torch releases (2.11). The joint batch pads
    differently from the reference's separate ones, so gradients agree to float32 rounding."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.losses import MarginMSELoss

    model = CrossEncoder(str(tiny_cross_encoder), num_labels=1, device="cpu").eval()
    reference, reference_grads = loss_and_grads(MarginMSELoss(model), model, inputs, labels)
    fused, fused_grads = loss_and_grads(FusedMarginMSELoss(model), model, inputs, labels)

    assert fused == pytest.approx(reference, rel=1e-6)
    assert reference_grads.keys() == fused_grads.keys() and reference_grads
    for name, grad in reference_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=5e-5, msg=name)


def test_a_pair_repeated_in_a_batch_is_scored_once_with_the_reference_loss_and_gradients(tiny_cross_encoder):
    """One query's triplets repeat its documents: (Q1, P1), (Q1, N1) and (Q1, N2) come twice each
    below ((Q1, N1) once as a positive, once as a negative), so 5 distinct pairs of 8 are scored,
    and the loss and gradients are sentence-transformers' MarginMSELoss's, which scores all 8."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.losses import MarginMSELoss

    model = CrossEncoder(str(tiny_cross_encoder), num_labels=1, device="cpu").eval()
    inputs = [[Q1, Q1, Q1, Q2], [P1, P1, N1, P2], [N1, N2, N2, N1]]
    labels = torch.tensor([2.0, 3.5, 0.75, -1.0])
    reference, reference_grads = loss_and_grads(MarginMSELoss(model), model, inputs, labels)
    scored: list[int] = []
    hook = model.register_forward_pre_hook(lambda module, args: scored.append(args[0]["attention_mask"].shape[0]))
    fused, fused_grads = loss_and_grads(FusedMarginMSELoss(model, pairs_per_forward=2), model, inputs, labels)
    hook.remove()

    assert sum(scored) == 5
    assert fused == pytest.approx(reference, rel=1e-6)
    assert reference_grads.keys() == fused_grads.keys() and reference_grads
    for name, grad in reference_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=5e-5, msg=name)


def test_fused_margin_mse_of_n_tuples_missing_a_negative_is_the_mean_over_the_margins_present(tiny_cross_encoder):
    """A shorter n-tuple's missing negative (NaN margin, empty text) is never scored and counts in
    neither the sum nor the mean; its gradient is finite. By hand: one-pair logits of the same model."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(tiny_cross_encoder), num_labels=1, device="cpu").eval()
    inputs = [[Q1, Q2], [P1, P2], [N1, N2], [N3, ""]]
    margins = torch.tensor([[1.0, 2.5], [-0.5, float("nan")]])
    loss, grads = loss_and_grads(FusedMarginMSELoss(model), model, inputs, margins)

    with torch.no_grad():
        logit = {pair: model.model(**model.preprocess([pair]))["logits"].item() for pair in
                 [(Q1, P1), (Q1, N1), (Q1, N3), (Q2, P2), (Q2, N2)]}  # fmt: skip
    by_hand = [(logit[Q1, P1] - logit[Q1, N1] - 1.0) ** 2, (logit[Q1, P1] - logit[Q1, N3] - 2.5) ** 2,
               (logit[Q2, P2] - logit[Q2, N2] + 0.5) ** 2]  # fmt: skip
    assert loss == pytest.approx(sum(by_hand) / 3, rel=1e-5)
    assert grads and all(torch.isfinite(grad).all() for grad in grads.values())


def test_listwise_kl_has_listnets_gradients_and_differs_by_the_teacher_entropy(model):
    from sentence_transformers.cross_encoder.losses import ListNetLoss

    inputs = [[Q1, Q2], [[P1, N1, N2], [P2, N3]]]
    labels = [torch.tensor([4.0, 1.0, -1.0]), torch.tensor([0.5, 0.0])]
    listnet, listnet_grads = loss_and_grads(ListNetLoss(model), model, inputs, labels)
    kl, kl_grads = loss_and_grads(ListwiseKLLoss(model), model, inputs, labels)

    entropy = np.mean([float(-(torch.softmax(x, 0) * torch.log_softmax(x, 0)).sum()) for x in labels])
    assert listnet - kl == pytest.approx(entropy, rel=1e-6)
    for name, grad in listnet_grads.items():
        torch.testing.assert_close(kl_grads[name], grad, msg=name)


def forward_widths(model) -> tuple[list[int], object]:
    """The padded width of every forward pass of ``model`` (a list filled as it runs), and the hook."""
    widths: list[int] = []
    hook = model.register_forward_pre_hook(lambda module, args: widths.append(args[0]["attention_mask"].shape[1]))
    return widths, hook


def test_pairs_per_forward_scores_in_length_sorted_passes_padded_to_their_own_longest(model):
    from rerank_distill.losses import score_pairs

    long = "the dentist clinic opens at nine every weekday morning and closes late on fridays"
    pairs = [(Q1, P1), (Q2, long), (Q3, N1), (Q1, long + " " + long), (Q2, N3)]
    lengths = [len(model.tokenizer(q, d)["input_ids"]) for q, d in pairs]
    widths, hook = forward_widths(model)
    with torch.no_grad():
        one_pass = score_pairs(model, pairs)
        chunked = score_pairs(model, pairs, pairs_per_forward=2)
    hook.remove()
    by_length = sorted(lengths, reverse=True)
    # one pass pads all five to the longest; then passes of 2, 2 and 1 pairs, longest first
    assert widths == [max(lengths), by_length[0], by_length[2], by_length[4]]
    torch.testing.assert_close(chunked, one_pass)  # the same logits, back in the order given


@pytest.mark.parametrize("loss_name, inputs, labels", [
    ("listwise_kl", [[Q1, Q2], [[P1, N1, N2, N4], [P2, N3]]], [torch.tensor([4.0, 1.0, -1.0, 0.0]), torch.tensor([0.5, 0.0])]),
    ("margin_mse", [[Q1, Q2], [P1, P2], [N1, N2], [N3, N4]], torch.tensor([[5.0, 1.0, 0.5], [4.0, 3.5, -1.0]])),
    ("infonce", [[Q1, Q2], [P1, P2], [N1, N2], [N3, N4]], torch.tensor([[5.0, 1.0, 0.5], [4.0, 3.5, -1.0]])),
])
def test_pairs_per_forward_changes_no_loss_value_or_gradient(model, loss_name, inputs, labels):
    widths, hook = forward_widths(model)
    whole, whole_grads = loss_and_grads(build_loss(loss_name, model), model, inputs, labels)
    passes_whole = len(widths)
    chunked, chunked_grads = loss_and_grads(build_loss(loss_name, model, pairs_per_forward=3), model, inputs, labels)
    hook.remove()
    # six distinct pairs: one pass, then two passes of three (the chunking did happen)
    assert (passes_whole, len(widths) - passes_whole) == (1, 2)
    assert chunked == pytest.approx(whole, rel=1e-6)
    assert whole_grads.keys() == chunked_grads.keys() and whole_grads
    for name, grad in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, msg=name)


def test_every_loss_is_built_for_the_data_kinds_it_names():
    assert set(LOSSES) == {"margin_mse", "mse", "bce_soft", "listwise_kl", "bce_labels", "infonce"}
    assert LOSSES["margin_mse"].inputs[0] == "triplets"  # the default recipe


# --- every loss trains end to end ----------------------------------------------------------------


def training_file(kind: str, tmp_path: Path) -> str:
    """Six queries of the given kind: a positive and three negatives each (n-tuples: two or three)."""
    queries = [(f"question {i} about {topic}", f"answer about {topic}", [f"text on {other}" for other in others])
               for i, (topic, *others) in enumerate([
                   ("git", "oven", "visa", "tyre"), ("rice", "dns", "kernel", "fever"),
                   ("sockets", "flour", "passport", "clutch"), ("python", "garlic", "hotel", "brake"),
                   ("sql", "luggage", "dentist", "pepper"), ("bash", "taxi", "butter", "diet")])]
    rows = []
    for query, positive, negatives in queries:
        scores = [3.0, 1.0, 0.0, -1.5]
        if kind == "triplets":
            rows += [{"query": query, "positive": positive, "negative": n, "score": 3.0 - s}
                     for n, s in zip(negatives, scores[1:])]
        elif kind == "ntuples":  # every other one with a negative fewer, as create_triplets.py writes them
            keep = 3 - len(rows) % 2
            rows.append({"query": query, "positive": positive, "negatives": negatives[:keep], "scores": scores[:keep + 1]})
        elif kind == "listwise":
            rows.append({"query": query, "passages": [positive, *negatives], "scores": scores})
        elif kind == "scores":
            rows += [{"query": query, "passage": p, "score": s, "label": int(p == positive)}
                     for p, s in zip([positive, *negatives], scores)]
        else:
            rows.append({"query": query, "positive": [positive], "negative": negatives})
    return str(write_jsonl_records(tmp_path / f"{kind}.jsonl", rows))


@pytest.mark.parametrize("loss_name, kind", [
    ("margin_mse", "ntuples"), ("mse", "scores"), ("bce_soft", "scores"), ("listwise_kl", "listwise"),
    ("bce_labels", "labelled"), ("infonce", "ntuples"), ("infonce", "triplets"),
])
def test_each_loss_trains_a_model_crossencoder_loads(tiny_cross_encoder, tmp_path, loss_name, kind):
    from safetensors.torch import load_file
    from sentence_transformers import CrossEncoder

    out = tmp_path / "model"
    summary = train.main([
        "--model_name_or_path", str(tiny_cross_encoder), "--train_data", training_file(kind, tmp_path),
        "--loss", loss_name, "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-2", "--eval_strategy", "no", "--use_cpu", "--report_to", "none",
        "--disable_tqdm", "True",
    ])
    assert (summary["loss"], summary["data_kind"], summary["steps"]) == (loss_name, kind, 2)
    assert summary["examples_trained"] == 4 and summary["mean_padded_tokens"] > 0
    trained, untrained = load_file(str(out / "model.safetensors")), load_file(str(tiny_cross_encoder / "model.safetensors"))
    assert any(not torch.equal(trained[name], untrained[name]) for name in trained)
    scores = CrossEncoder(str(out)).predict([("question 0 about git", "answer about git")])
    assert np.isfinite(scores).all()
