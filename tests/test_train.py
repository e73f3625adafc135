"""train.py and rerank_distill.training: the student trains on teacher margins, checkpoints are
picked on held-out queries only, runs resume, and the speed levers change no loss value."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from rerank_distill.errors import InputError
from rerank_distill.training import (
    FusedMarginMSELoss,
    LengthGroupedBatchSampler,
    TrackedMarginMSELoss,
    default_training_flags,
    held_out_queries,
    length_grouped_batches,
    passed_flags,
    split_by_query,
    triplets_dataset,
)

QUERIES = {
    "how do i undo a git commit": (
        ["use git reset --soft HEAD~1 to undo the last commit", "git revert makes a new commit that undoes one"],
        ["preheat the oven before you bake bread", "a visa is needed for some borders"],
    ),
    "python list versus tuple": (
        ["a tuple is immutable, a list is not"],
        ["change the brake fluid every two years", "dns maps names to addresses", "flour and sugar"],
    ),
    "why does my tcp socket hang": (
        ["the peer never closed the socket so recv blocks"],
        ["sql joins combine rows", "the dentist clinic opens at nine"],
    ),
    "best way to cook rice": (
        ["rinse the rice then boil it with salt"],
        ["kernel modules load at boot", "a passport lasts ten years"],
    ),
    "fix a flat tyre": (
        ["patch the tube or fit the spare tyre"],
        ["npm installs node packages", "fever can follow a vaccine"],
    ),
}


def hand_written_triplets() -> list[dict]:
    """Every (positive, negative) of each query above, with a teacher margin between 1 and 4."""
    rows = []
    for query, (positives, negatives) in QUERIES.items():
        for i, positive in enumerate(positives):
            for j, negative in enumerate(negatives):
                margin = 1.0 + (i + 2 * j) % 4
                rows.append({"query": query, "positive": positive, "negative": negative, "score": margin})
    return rows


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models train many times faster on one thread than with threads fighting for 2 cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def triplets_file(tmp_path) -> Path:
    return write_lines(tmp_path / "train_triplets.jsonl", hand_written_triplets())


def run_train(model, train_data, output_dir, *flags) -> dict:
    return train.main([
        "--model_name_or_path", str(model), "--train_data", str(train_data), "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "4", "--use_cpu", "--report_to", "none", "--disable_tqdm", "True",
        "--learning_rate", "1e-3", *flags,
    ])


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


# --- end to end -------------------------------------------------------------------------------


def test_training_saves_the_best_checkpoint_as_a_model_crossencoder_loads(
    tiny_cross_encoder, triplets_file, tmp_path
):
    from sentence_transformers import CrossEncoder

    out = tmp_path / "model"
    summary = run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "3")

    # Only the required flags and a step count: one query held out, eval and save every step.
    assert summary["eval_queries"] == 1
    assert summary["train_triplets"] + summary["eval_triplets"] == len(hand_written_triplets())
    assert summary["steps"] == 3
    record = json.loads((out / "args.json").read_text())
    assert record["script"]["train_data"] == str(triplets_file)
    training = record["training"]
    assert (training["eval_strategy"], training["save_strategy"]) == ("steps", "steps")
    assert training["eval_steps"] == training["save_steps"]
    assert training["load_best_model_at_end"] is True and training["metric_for_best_model"] == "loss"
    assert training["batch_sampler"].endswith("LengthGroupedBatchSampler'>")

    # The final model is the checkpoint with the lowest held-out eval_loss.
    state = json.loads((Path(summary["best_checkpoint"]) / "trainer_state.json").read_text())
    last_checkpoint = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    last_state = json.loads((last_checkpoint / "trainer_state.json").read_text())
    eval_losses = [entry["eval_loss"] for entry in last_state["log_history"] if "eval_loss" in entry]
    assert len(eval_losses) == 3
    assert summary["best_eval_loss"] == pytest.approx(min(eval_losses))
    assert state["global_step"] == 1 + eval_losses.index(min(eval_losses))
    final, best = weights(out), weights(Path(summary["best_checkpoint"]))
    assert all(torch.equal(final[name], best[name]) for name in final)

    pairs = [("how do i undo a git commit", "git reset"), ("fix a flat tyre", "bake bread")]
    scores = CrossEncoder(str(out)).predict(pairs)
    untrained = CrossEncoder(str(tiny_cross_encoder)).predict(pairs)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert not np.allclose(scores, untrained)


def test_resume_from_checkpoint_ends_with_the_same_model_as_an_uninterrupted_run(
    tiny_cross_encoder, triplets_file, tmp_path
):
    # 13 triplets in batches of 4 make 4 steps per epoch, so the resumed run starts inside the
    # second epoch; a constant learning rate, so the first run's shorter --max_steps does not
    # change its schedule.
    flags = ["--eval_strategy", "no", "--save_steps", "5", "--lr_scheduler_type", "constant"]
    straight = run_train(tiny_cross_encoder, triplets_file, tmp_path / "straight", "--max_steps", "6", *flags)
    run_train(tiny_cross_encoder, triplets_file, tmp_path / "resumed", "--max_steps", "5", *flags)
    resumed = run_train(
        tiny_cross_encoder, triplets_file, tmp_path / "resumed", "--max_steps", "6",
        "--resume_from_checkpoint", "last", *flags,
    )

    assert (resumed["resumed_from_step"], resumed["steps"], resumed["triplets_trained"]) == (5, 6, 4)
    assert straight["train_triplets"] == len(hand_written_triplets())  # no evaluation: nothing held out
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)
    assert not torch.equal(a["classifier.weight"], weights(tiny_cross_encoder)["classifier.weight"])


def test_eval_data_replaces_the_held_out_split(tiny_cross_encoder, triplets_file, tmp_path):
    dev = write_lines(tmp_path / "dev.jsonl", [{"query": "q", "positive": "p", "negative": "n", "score": 2.0}] * 3)
    summary = run_train(
        tiny_cross_encoder, triplets_file, tmp_path / "model", "--eval_data", str(dev), "--max_steps", "1"
    )
    assert (summary["train_triplets"], summary["eval_triplets"]) == (len(hand_written_triplets()), 3)


# --- defaults the user did not pass -----------------------------------------------------------


def test_passed_flags_reads_every_spelling_of_a_flag():
    argv = ["--eval-steps=5", "--save_strategy", "epoch", "--bf16", "--no_fused_forward", "--seed", "3"]
    assert passed_flags(argv) == {
        "eval_steps": "5", "save_strategy": "epoch", "bf16": None, "no_fused_forward": None, "fused_forward": "false",
        "seed": "3",
    }


def as_dict(flags: list[str]) -> dict[str, str]:
    return dict(zip(flags[::2], flags[1::2]))


def test_defaults_evaluate_and_save_on_one_schedule_and_keep_the_best():
    defaults = as_dict(default_training_flags({}))
    assert defaults["--eval_strategy"] == defaults["--save_strategy"] == "steps"
    assert defaults["--eval_steps"] == defaults["--save_steps"]
    assert defaults["--load_best_model_at_end"] == "True"
    assert defaults["--save_total_limit"] == "2"


def test_defaults_never_replace_a_flag_the_user_passed():
    passed = {"eval_strategy": "steps", "save_strategy": "steps", "eval_steps": "50", "save_steps": "100",
              "load_best_model_at_end": "False", "save_total_limit": "9", "logging_steps": "1",
              "ddp_find_unused_parameters": "True"}
    assert default_training_flags(passed) == []


@pytest.mark.parametrize(
    "passed, expected",
    [
        ({"save_strategy": "epoch"}, {"--eval_strategy": "epoch", "--load_best_model_at_end": "True"}),
        ({"eval_strategy": "epoch"}, {"--save_strategy": "epoch", "--load_best_model_at_end": "True"}),
        ({"save_steps": "200"}, {"--eval_steps": "200", "--load_best_model_at_end": "True"}),
        ({"eval_strategy": "no"}, {"--save_strategy": "steps", "--load_best_model_at_end": "False"}),
        ({"save_strategy": "no"}, {"--eval_strategy": "steps", "--load_best_model_at_end": "False"}),
        ({"save_strategy": "best"}, {"--eval_strategy": "steps", "--load_best_model_at_end": "True"}),
    ],
)
def test_defaults_follow_the_half_of_a_pair_the_user_set(passed, expected):
    defaults = as_dict(default_training_flags(passed))
    assert {name: defaults[name] for name in expected} == expected


# --- held-out split ---------------------------------------------------------------------------


def test_held_out_split_puts_whole_queries_on_one_side():
    rows = hand_written_triplets()
    train_set, eval_set = split_by_query(triplets_dataset(
        {"query": [r["query"] for r in rows], "positive": [r["positive"] for r in rows],
         "negative": [r["negative"] for r in rows], "label": [r["score"] for r in rows]}
    ), share=0.4, seed=7)

    assert set(train_set["query"]).isdisjoint(eval_set["query"])
    assert len(set(eval_set["query"])) == 2  # 40% of 5 queries
    for query in set(eval_set["query"]):
        assert eval_set["query"].count(query) == sum(r["query"] == query for r in rows)
    assert len(train_set) + len(eval_set) == len(rows)


def test_held_out_queries_depend_on_the_texts_and_seed_not_their_order():
    queries = [f"query number {i}" for i in range(200)]
    chosen = held_out_queries(queries, 0.05, seed=42)
    assert len(chosen) == 10
    shuffled = queries[:]
    random.Random(0).shuffle(shuffled)
    assert held_out_queries(shuffled + queries, 0.05, seed=42) == chosen
    assert held_out_queries(queries, 0.05, seed=43) != chosen


def test_held_out_split_keeps_at_least_one_query_on_each_side():
    assert len(held_out_queries(["a", "b", "c"], 0.01, seed=0)) == 1
    assert len(held_out_queries(["a", "b"], 0.9, seed=0)) == 1
    with pytest.raises(InputError, match="--eval_data"):
        held_out_queries(["only one query"] * 5, 0.05, seed=0)


# --- speed lever 1: one forward pass ----------------------------------------------------------


def loss_and_grads(loss_fn, model, inputs, labels):
    model.zero_grad()
    loss = loss_fn(inputs, labels)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "inputs, labels",
    [
        (
            [["undo a git commit", "cook rice", "why does the socket hang"],
             ["git reset --soft HEAD~1", "rinse the rice and boil it with a pinch of salt", "the peer never closed it"],
             ["bake bread", "kernel", "the dentist clinic opens at nine every weekday morning"]],
            torch.tensor([2.0, -0.5, 3.25]),
        ),
        (   # two negative columns, labels as raw teacher scores [positive, negative_1, negative_2]
            [["undo a git commit", "cook rice"], ["git reset", "boil the rice"], ["flour", "dns"], ["tcp port", "visa"]],
            torch.tensor([[5.0, 1.0, 0.5], [4.0, 3.5, -1.0]]),
        ),
    ],
)
def test_fused_loss_equals_margin_mse_loss_and_its_gradients(tiny_cross_encoder, inputs, labels):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.losses import MarginMSELoss

    model = CrossEncoder(str(tiny_cross_encoder), num_labels=1)
    # No dropout, so both see the same network; float64, so that float32 rounding, which differs
    # between the two padded batch shapes (about 1e-6 relative), cannot blur the comparison.
    model.eval().to(torch.float64)
    reference, reference_grads = loss_and_grads(MarginMSELoss(model), model, inputs, labels)
    fused, fused_grads = loss_and_grads(FusedMarginMSELoss(model), model, inputs, labels)

    assert fused == pytest.approx(reference, abs=1e-6)
    assert reference_grads.keys() == fused_grads.keys() and reference_grads
    for name, grad in reference_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, msg=name)


# --- speed lever 3: padding statistics -----------------------------------------------------------


def test_padding_stats_count_real_and_padded_tokens_of_training_batches(tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(tiny_cross_encoder), num_labels=1)
    inputs = [["git", "how do i cook rice"], ["git reset --soft", "rice"], ["flour", "a passport lasts ten years"]]
    pairs = [(q, d) for column in inputs[1:] for q, d in zip(inputs[0], column)]
    lengths = [int(model.preprocess([pair])["attention_mask"].sum()) for pair in pairs]

    for loss_fn, padded in [(FusedMarginMSELoss(model), 4 * max(lengths)),
                            (TrackedMarginMSELoss(model), 2 * max(lengths[:2]) + 2 * max(lengths[2:]))]:
        model.train()
        loss_fn(inputs, torch.tensor([1.0, 2.0]))
        model.eval()
        loss_fn(inputs, torch.tensor([1.0, 2.0]))  # evaluation is not counted
        stats = loss_fn.padding_stats
        assert (stats.triplets, stats.pairs, stats.real_tokens, stats.padded_tokens) == (2, 4, sum(lengths), padded)
        assert stats.summary()["mean_padded_tokens"] == round(padded / 4, 1)


# --- speed lever 2: length-grouped batches ------------------------------------------------------


def padding(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(len(batch) * max(lengths[i] for i in batch) - sum(lengths[i] for i in batch) for batch in batches)


def test_length_grouped_batches_hold_every_example_once_per_epoch():
    lengths = [int(x) for x in np.random.default_rng(0).integers(5, 500, size=1003)]
    epochs = [length_grouped_batches(lengths, 16, seed=epoch) for epoch in (0, 1)]
    for batches in epochs:
        assert sorted(i for batch in batches for i in batch) == list(range(1003))
        assert [len(b) for b in batches[:-1]] == [16] * 62 and len(batches[-1]) == 11  # the short batch last
        assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest batch first
    assert epochs[0] != epochs[1]
    assert length_grouped_batches(lengths, 16, seed=0) == epochs[0]

    dropped = length_grouped_batches(lengths, 16, seed=0, drop_last=True)
    flat = [i for batch in dropped for i in batch]
    assert len(dropped) == 62 and len(flat) == len(set(flat)) == 992


def test_length_grouped_batches_pad_far_less_than_random_batches():
    lengths = [int(x) for x in np.random.default_rng(1).lognormal(4.0, 0.8, size=4000)]
    order = np.random.default_rng(1).permutation(4000).tolist()
    random_batches = [order[i : i + 16] for i in range(0, 4000, 16)]
    assert padding(length_grouped_batches(lengths, 16, seed=1), lengths) < 0.2 * padding(random_batches, lengths)


def test_sampler_reshuffles_each_epoch_and_reports_its_length():
    rows = hand_written_triplets()
    dataset = triplets_dataset({"query": [r["query"] for r in rows], "positive": [r["positive"] for r in rows],
                                "negative": [r["negative"] for r in rows], "label": [r["score"] for r in rows]})
    sampler = LengthGroupedBatchSampler(dataset, batch_size=4, drop_last=False, seed=5)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert len(first) == len(sampler) == -(-len(rows) // 4)
    assert sorted(i for b in second for i in b) == list(range(len(rows))) and second != first
    sampler.set_epoch(0)
    assert list(sampler) == first


# --- bad input -----------------------------------------------------------------------------------


GOOD = {"query": "q", "positive": "p", "negative": "n", "score": 1.5}


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ({"query": "q", "positive": "p", "score": 1.0}, r':2: missing field "negative"'),
        ({**GOOD, "query": 7}, r':2: field "query" must be a string'),
        ({**GOOD, "score": "high"}, r":2: field \"score\" must be a number"),
        ('{"query": "q", "positive": "p", "negative": "n", "score": NaN}', r":2: field \"score\" is nan"),
        ("not json", r":2: not valid JSON"),
    ],
)
def test_a_bad_triplet_stops_the_run_before_any_model_is_loaded(tmp_path, bad_line, message):
    data = write_lines(tmp_path / "t.jsonl", [GOOD, bad_line])
    with pytest.raises(InputError, match=message):
        run_train(tmp_path / "no-such-model", data, tmp_path / "out")


def test_an_empty_triplets_file_is_an_error(tmp_path):
    data = write_lines(tmp_path / "t.jsonl", [])
    with pytest.raises(InputError, match="no records"):
        run_train(tmp_path / "no-such-model", data, tmp_path / "out")


def test_a_missing_checkpoint_is_an_error(triplets_file, tmp_path):
    with pytest.raises(InputError, match="no checkpoint"):
        run_train(tmp_path / "m", triplets_file, tmp_path / "out", "--resume_from_checkpoint", "last")
    with pytest.raises(InputError, match="not a checkpoint folder"):
        run_train(tmp_path / "m", triplets_file, tmp_path / "out", "--resume_from_checkpoint", str(tmp_path))


def test_command_line_error_is_one_line_and_exit_code_2(tmp_path):
    data = write_lines(tmp_path / "t.jsonl", [GOOD, {"query": "q"}])
    result = subprocess.run(
        [sys.executable, str(Path(train.__file__)), "--model_name_or_path", "m", "--train_data", str(data),
         "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {data}:2: missing field")
    assert "Traceback" not in result.stderr
