"""train.py and rerank_distill's training, training_data and trainer modules: each kind of
training file is read into what its loss takes, checkpoints are picked by MAP (or loss) on
held-out queries that are never trained on, early stopping stops, runs resume, and the speed
levers change no loss value."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import logging
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

import create_triplets
import train
from rerank_distill.errors import InputError
from rerank_distill.losses import FusedMarginMSELoss
from rerank_distill.run_folder import newest_checkpoint, resolve_checkpoint, resume_hint, resumed_state
from rerank_distill.selection import (
    SelectionEvaluator,
    load_training_data,
    held_out_queries,
    made_from,
    plan_selection,
    read_selection_queries,
    small_selection_warning,
    split_by_query,
)
from rerank_distill.toy import read_jsonl_records, synthetic_ranking_data, write_jsonl_records
from rerank_distill.samplers import LengthGroupedBatchSampler, length_grouped_batches, query_grouped_batches
from rerank_distill.trainer import track_padding
from rerank_distill.training import default_training_flags, passed_flags
from rerank_distill.training_data import (
    MIN_TEACHER_SPREAD,
    TrainingData,
    read_training_data,
    teacher_spread_warning,
)

pytestmark = pytest.mark.usefixtures("one_thread")

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


def hand_written_scores() -> list[dict]:
    """Stage 1's output for the queries above: every candidate with a teacher score and its gold label."""
    rows = []
    for query, (positives, negatives) in QUERIES.items():
        rows += [{"query": query, "passage": p, "score": 3.0 - i, "label": 1} for i, p in enumerate(positives)]
        rows += [{"query": query, "passage": n, "score": -1.0 - j, "label": 0} for j, n in enumerate(negatives)]
    return rows


@pytest.fixture
def triplets_file(tmp_path) -> Path:
    return write_jsonl_records(tmp_path / "train_triplets.jsonl", hand_written_triplets())


@pytest.fixture
def scores_file(tmp_path) -> Path:
    return write_jsonl_records(tmp_path / "train_scores.jsonl", hand_written_scores())


def run_train(model, train_data, output_dir, *flags) -> dict:
    return train.main([
        "--model_name_or_path", str(model), "--train_data", str(train_data), "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "4", "--use_cpu", "--report_to", "none", "--disable_tqdm", "True",
        "--learning_rate", "1e-3", *flags,
    ])


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def eval_history(output_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) of every evaluation, from the last checkpoint's trainer state."""
    last_checkpoint = max(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((last_checkpoint / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry[metric]) for entry in history if metric in entry]


@pytest.fixture
def trained_queries(monkeypatch) -> set[str]:
    """Every query the loss sees in a training step (not in evaluation) of runs in this test."""
    seen: set[str] = set()
    original = train.DistillationTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        if model.training:
            seen.update(inputs["query"])
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(train.DistillationTrainer, "compute_loss", spy)
    return seen


# --- end to end -------------------------------------------------------------------------------


def test_without_gold_labels_the_best_checkpoint_by_eval_loss_becomes_the_model(
    tiny_cross_encoder, triplets_file, tmp_path
):
    from sentence_transformers import CrossEncoder

    out = tmp_path / "model"
    summary = run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "3")

    # Only the required flags and a step count: one query held out, eval and save every step.
    assert summary["eval_queries"] == 1 and len(summary["held_out_queries"]) == 1
    assert summary["train_examples"] + summary["eval_examples"] == len(hand_written_triplets())
    assert summary["steps"] == 3
    record = json.loads((out / "args.json").read_text())
    assert record["script"]["train_data"] == str(triplets_file) and record["script"]["loss"] == "margin_mse"
    training = record["training"]
    assert (training["eval_strategy"], training["save_strategy"]) == ("steps", "steps")
    assert training["eval_steps"] == training["save_steps"]
    assert training["load_best_model_at_end"] is True and training["metric_for_best_model"] == "loss"
    assert training["greater_is_better"] is False
    assert training["batch_sampler"].endswith("LengthGroupedBatchSampler'>")

    # The final model is the checkpoint with the lowest held-out eval_loss.
    eval_losses = eval_history(out, "eval_loss")
    assert [step for step, _ in eval_losses] == [1, 2, 3]
    best_step, best_loss = min(eval_losses, key=lambda entry: entry[1])
    assert summary["best_metric"] == pytest.approx(best_loss)
    assert summary["best_checkpoint"] == str(out / f"checkpoint-{best_step}")
    final, best = weights(out), weights(Path(summary["best_checkpoint"]))
    assert all(torch.equal(final[name], best[name]) for name in final)

    pairs = [("how do i undo a git commit", "git reset"), ("fix a flat tyre", "bake bread")]
    scores = CrossEncoder(str(out)).predict(pairs)
    untrained = CrossEncoder(str(tiny_cross_encoder)).predict(pairs)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert not np.allclose(scores, untrained)


def test_the_checkpoint_with_the_best_held_out_map_becomes_the_model_and_its_queries_are_never_trained_on(
    tiny_cross_encoder, triplets_file, scores_file, tmp_path, trained_queries
):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    out = tmp_path / "model"
    summary = run_train(tiny_cross_encoder, triplets_file, out, "--selection_data", str(scores_file),
                        "--eval_share", "0.4", "--max_steps", "6", "--learning_rate", "5e-3")

    held_out = summary["held_out_queries"]
    assert len(held_out) == 2 == summary["selection_queries"]  # 40% of the 5 training queries
    assert trained_queries == set(QUERIES) - set(held_out)
    assert summary["metric_for_best_model"] == "eval_selection_map"
    assert not (out / "eval").exists()  # sentence-transformers' empty folder for evaluator files is not left behind

    maps = eval_history(out, "eval_selection_map")
    assert [step for step, _ in maps] == [1, 2, 3, 4, 5, 6]
    best_step, best_map = max(maps, key=lambda entry: entry[1])  # the first of equal bests, as the Trainer keeps
    assert best_step != 6  # so the final model is not simply the last step's
    assert summary["best_checkpoint"] == str(out / f"checkpoint-{best_step}")
    final, best, last = weights(out), weights(out / f"checkpoint-{best_step}"), weights(out / "checkpoint-6")
    assert all(torch.equal(final[name], best[name]) for name in final)
    assert not all(torch.equal(final[name], last[name]) for name in final)

    # The final model's MAP on the held-out queries, by sentence-transformers' own evaluator.
    samples = [{"query": q, "positive": QUERIES[q][0], "negative": QUERIES[q][1]} for q in held_out]
    assert CrossEncoderRerankingEvaluator(samples)(CrossEncoder(str(out)))["map"] == pytest.approx(best_map, abs=1e-6)
    assert summary["best_metric"] == pytest.approx(best_map)


def test_with_evaluations_between_checkpoints_the_best_saved_checkpoint_becomes_the_model(
    tiny_cross_encoder, triplets_file, scores_file, tmp_path, monkeypatch
):
    # --eval_steps 1 --save_steps 2: the best MAP is at step 1, which has no checkpoint. Counted as the best, it
    # left no checkpoint better than it, so the last step became the model, not checkpoint-2, the best one saved
    maps = {1: 0.9, 2: 0.5, 3: 0.6, 4: 0.4}
    monkeypatch.setattr(train.SelectionEvaluator, "__call__", lambda self, model, output_path=None, epoch=-1, steps=-1:
                        {f"selection_{name}": maps[steps] for name in ("map", "mrr@10", "ndcg@10")})
    out = tmp_path / "model"
    summary = run_train(tiny_cross_encoder, triplets_file, out, "--selection_data", str(scores_file),
                        "--eval_share", "0.4", "--selection_metric", "map", "--max_steps", "4",
                        "--eval_steps", "1", "--save_steps", "2", "--learning_rate", "5e-3")

    assert [step for step, _ in eval_history(out, "eval_selection_map")] == [1, 2, 3, 4]
    assert (summary["final_model"], summary["best_checkpoint"]) == ("best checkpoint", str(out / "checkpoint-2"))
    assert summary["best_metric"] == pytest.approx(0.5)
    final, best = weights(out), weights(out / "checkpoint-2")
    assert all(torch.equal(final[name], best[name]) for name in final)


def test_under_bf16_training_steps_run_in_bf16_and_checkpoints_are_ranked_in_float32(
    tiny_cross_encoder, triplets_file, scores_file, tmp_path, monkeypatch
):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    import rerank_distill.selection as selection

    head_dtypes, phase = {"training": set(), "selection": set()}, ["training"]
    original_init, original_scoring = CrossEncoder.__init__, selection.score_ranking_queries

    def record(module, inputs, output) -> None:
        if torch.is_grad_enabled() == (phase[0] == "training"):  # (not the eval loss: no grad, and no choice)
            head_dtypes[phase[0]].add(output.dtype)

    def record_the_head(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.model.classifier.register_forward_hook(record)

    def selection_scoring(*args, **kwargs):
        phase[0] = "selection"
        try:
            return original_scoring(*args, **kwargs)
        finally:
            phase[0] = "training"

    with monkeypatch.context() as patch:
        patch.setattr(CrossEncoder, "__init__", record_the_head)
        patch.setattr(selection, "score_ranking_queries", selection_scoring)
        out = tmp_path / "model"
        summary = run_train(tiny_cross_encoder, triplets_file, out, "--selection_data", str(scores_file),
                            "--eval_share", "0.4", "--selection_metric", "map", "--max_steps", "3", "--bf16", "true")

    assert head_dtypes == {"training": {torch.bfloat16}, "selection": {torch.float32}}
    # so the MAP that picked the model is the one it scores when loaded and ranked in float32
    samples = [{"query": q, "positive": QUERIES[q][0], "negative": QUERIES[q][1]} for q in summary["held_out_queries"]]
    assert CrossEncoderRerankingEvaluator(samples)(CrossEncoder(str(out)))["map"] == pytest.approx(
        summary["best_metric"], abs=1e-6)


def test_the_model_cards_example_scores_are_what_the_saved_model_gives_after_bf16_training(
    tiny_cross_encoder, triplets_file, tmp_path
):
    # with no held-out evaluator, the card scored its usage example under the bf16 autocast that --bf16 wraps
    # the model in: its printed scores were not those CrossEncoder(path).predict gives on the float32 weights
    from sentence_transformers import CrossEncoder

    out = tmp_path / "model"
    run_train(tiny_cross_encoder, triplets_file, out, "--selection_metric", "last", "--save_strategy", "no",
              "--max_steps", "2", "--bf16", "true")

    card = (out / "README.md").read_text(encoding="utf-8")
    pairs = ast.literal_eval(re.search(r"pairs = (\[.*?\n\])", card, re.S).group(1))
    printed = [float(x) for x in re.search(r"print\(scores\)\n# \[(.*?)\]", card, re.S).group(1).split()]
    assert printed == pytest.approx(CrossEncoder(str(out)).predict(pairs).tolist(), abs=1e-4)  # (printed to 4 places)


def test_with_too_few_queries_to_select_by_every_query_trains_and_the_last_step_is_the_model(
    tiny_cross_encoder, triplets_file, scores_file, tmp_path, trained_queries
):
    out = tmp_path / "model"
    summary = run_train(tiny_cross_encoder, triplets_file, out, "--selection_data", str(scores_file),
                        "--max_steps", "4")  # 5% of 5 queries: 1 would be held out, far below 30

    assert summary["held_out_queries"] == [] and summary["selection_queries"] == 0
    assert trained_queries == set(QUERIES)
    assert summary["metric_for_best_model"] is None and summary["best_checkpoint"] is None
    assert eval_history(out, "eval_selection_map") == [] and eval_history(out, "eval_loss") == []
    final, last = weights(out), weights(out / "checkpoint-4")
    assert all(torch.equal(final[name], last[name]) for name in final)


def test_early_stopping_stops_at_the_first_evaluations_without_a_better_map(
    tiny_cross_encoder, triplets_file, scores_file, tmp_path
):
    out = tmp_path / "model"
    summary = run_train(tiny_cross_encoder, triplets_file, out, "--selection_data", str(scores_file),
                        "--eval_share", "0.4", "--max_steps", "40", "--eval_steps", "1",
                        "--early_stopping_patience", "2", "--learning_rate", "5e-3")

    maps = [value for _, value in eval_history(out, "eval_selection_map")]
    assert summary["stopped_early"] and summary["steps"] == len(maps) < 40
    best_before = [max(maps[: i + 1]) for i in range(len(maps))]
    # Each of the last two evaluations failed to beat the best before it; no earlier two in a row did.
    assert maps[-1] <= best_before[-2] and maps[-2] <= best_before[-3]
    assert not any(maps[i] <= best_before[i - 1] and maps[i + 1] <= best_before[i] for i in range(1, len(maps) - 2))


def interrupt_training_at_step(patch, step: int) -> None:
    """Make train.py's trainer raise KeyboardInterrupt (a Ctrl-C) in its ``step``-th training step."""
    steps = []
    original_step = train.DistillationTrainer.training_step

    def interrupt(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == step:
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    patch.setattr(train.DistillationTrainer, "training_step", interrupt)


def test_a_resumed_run_carries_on_its_early_stopping_count_and_stops_where_an_uninterrupted_one_does(
    tiny_cross_encoder, triplets_file, scores_file, tmp_path, monkeypatch
):
    flags = ["--selection_data", str(scores_file), "--eval_share", "0.4", "--max_steps", "40", "--eval_steps", "1",
             "--save_steps", "1", "--early_stopping_patience", "2", "--learning_rate", "5e-3",
             "--lr_scheduler_type", "constant"]
    straight = run_train(tiny_cross_encoder, triplets_file, tmp_path / "straight", *flags)
    stop = straight["steps"]
    assert straight["stopped_early"] and stop < 40

    # Interrupted in the step after the first of the two evaluations without a better MAP: the
    # checkpoint it resumes from has counted one.
    with monkeypatch.context() as patch:
        interrupt_training_at_step(patch, stop)
        with pytest.raises(KeyboardInterrupt):
            run_train(tiny_cross_encoder, triplets_file, tmp_path / "resumed", *flags)
    resumed = run_train(tiny_cross_encoder, triplets_file, tmp_path / "resumed", *flags, "--resume_from_checkpoint",
                        "last")

    assert (resumed["resumed_from_step"], resumed["steps"], resumed["stopped_early"]) == (stop - 1, stop, True)
    assert resumed["best_checkpoint"].endswith(Path(straight["best_checkpoint"]).name)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)
    # The same patience has nothing left to train; a larger one trains on.
    with pytest.raises(InputError, match=rf"2 evaluations without a better model by step {stop}: "
                                         r"--early_stopping_patience 2 stops there"):
        run_train(tiny_cross_encoder, triplets_file, tmp_path / "straight", *flags, "--resume_from_checkpoint", "last")
    more = run_train(tiny_cross_encoder, triplets_file, tmp_path / "straight", *flags, "--early_stopping_patience", "3",
                     "--resume_from_checkpoint", "last")  # (the flag given last counts)
    assert more["resumed_from_step"] == stop and more["steps"] > stop


def test_a_resumed_run_under_eval_on_start_does_not_evaluate_its_checkpoint_again(
    tiny_cross_encoder, triplets_file, tmp_path, monkeypatch
):
    flags = ["--max_steps", "4", "--eval_steps", "1", "--eval_on_start", "true", "--early_stopping_patience", "3",
             "--learning_rate", "1e-4"]
    straight = run_train(tiny_cross_encoder, triplets_file, tmp_path / "straight", *flags)
    with monkeypatch.context() as patch:
        interrupt_training_at_step(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            run_train(tiny_cross_encoder, triplets_file, tmp_path / "resumed", *flags)
    resumed = run_train(tiny_cross_encoder, triplets_file, tmp_path / "resumed", *flags, "--resume_from_checkpoint",
                        "last")

    # the start's evaluation is step 0's, made once; evaluating checkpoint-2 again counted one evaluation
    # without a better model towards early stopping
    a, b = eval_history(tmp_path / "straight", "eval_loss"), eval_history(tmp_path / "resumed", "eval_loss")
    assert [step for step, _ in b] == [step for step, _ in a] == [0, 1, 2, 3, 4]
    assert [value for _, value in b] == pytest.approx([value for _, value in a], abs=1e-5)
    assert (resumed["resumed_from_step"], resumed["steps"]) == (2, straight["steps"])

    def stopping(out):
        return json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["stateful_callbacks"][
            "EarlyStopping"]["attributes"]

    assert stopping(tmp_path / "resumed") == stopping(tmp_path / "straight")


def test_a_resume_that_restores_the_callback_states_restores_early_stopping(tiny_cross_encoder, triplets_file,
                                                                           tmp_path):
    out = tmp_path / "model"
    run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "2", "--eval_steps", "1",
              "--early_stopping_patience", "9")
    # resumed with another patience: the restored callback is the saved one, patience 9 and all
    summary = run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "4", "--eval_steps", "1",
                        "--early_stopping_patience", "1", "--resume_from_checkpoint", "last",
                        "--restore_callback_states_from_checkpoint", "True")
    assert (summary["resumed_from_step"], summary["steps"]) == (2, 4)
    saved = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["stateful_callbacks"]
    assert saved["EarlyStopping"]["args"]["early_stopping_patience"] == 9


@pytest.mark.parametrize("added, callback", [(["--max_train_seconds", "600"], "TimeBudget"),
                                             (["--early_stopping_patience", "5"], "EarlyStopping")])
def test_a_resume_may_add_a_time_budget_or_early_stopping_its_checkpoint_was_saved_without(
    tiny_cross_encoder, triplets_file, tmp_path, added, callback
):
    out = tmp_path / "model"
    run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "2", "--eval_steps", "1")
    summary = run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "4", "--eval_steps", "1",
                        "--resume_from_checkpoint", "last", *added)

    assert (summary["resumed_from_step"], summary["steps"]) == (2, 4)
    saved = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["stateful_callbacks"]
    assert callback in saved  # for the next resume


def test_early_stopping_saves_a_checkpoint_where_it_stops_so_a_rerun_finds_the_run_ended(
    tiny_cross_encoder, triplets_file, scores_file, tmp_path
):
    out = tmp_path / "model"
    flags = ["--selection_data", str(scores_file), "--eval_share", "0.4", "--max_steps", "40", "--eval_steps", "1",
             "--save_steps", "25", "--early_stopping_patience", "1", "--learning_rate", "5e-3"]
    summary = run_train(tiny_cross_encoder, triplets_file, out, *flags)

    assert summary["stopped_early"] and summary["steps"] < 25
    assert (out / f"checkpoint-{summary['steps']}").exists()  # saved though no save was due
    with pytest.raises(InputError, match=r"evaluations without a better model by step"):
        run_train(tiny_cross_encoder, triplets_file, out, *flags, "--resume_from_checkpoint", "last")
    with pytest.raises(InputError, match=r"holds checkpoints of an earlier run, which ended"):
        run_train(tiny_cross_encoder, triplets_file, out, *flags)


# (transformers deletes the last checkpoint of a run that ends with --save_total_limit 1 and keeps the best;
# --save_strategy best saves none where the run stops)
@pytest.mark.parametrize("keep_best_only", [["--save_total_limit", "1"], ["--save_strategy", "best"]])
def test_a_run_that_ended_past_its_newest_checkpoint_is_not_resumed_from_it_to_train_again(
    tiny_cross_encoder, triplets_file, scores_file, tmp_path, keep_best_only
):
    out = tmp_path / "model"
    flags = ["--selection_data", str(scores_file), "--eval_share", "0.4", "--max_steps", "40", "--eval_steps", "1",
             "--early_stopping_patience", "1", "--learning_rate", "5e-3", *keep_best_only]
    summary = run_train(tiny_cross_encoder, triplets_file, out, *flags)
    assert summary["stopped_early"]
    assert [p.name for p in out.glob("checkpoint-*")] == [Path(summary["best_checkpoint"]).name]  # an earlier step

    ended = rf"ended at step {summary['steps']}"
    with pytest.raises(InputError, match=ended):
        run_train(tiny_cross_encoder, triplets_file, out, *flags, "--resume_from_checkpoint", "last")
    with pytest.raises(InputError, match=ended):
        run_train(tiny_cross_encoder, triplets_file, out, *flags)
    assert json.loads((out / "training_summary.json").read_text()) == json.loads(json.dumps(summary))


def test_a_max_length_beyond_the_students_positions_is_capped_at_its_limit_not_a_crash(tiny_cross_encoder, tmp_path,
                                                                                        caplog):
    long_passage = " ".join(["alpha beta gamma"] * 400)  # far over the tiny student's 512 positions
    triplets = write_jsonl_records(tmp_path / "long.jsonl", [
        *hand_written_triplets(), {"query": "q", "positive": long_passage, "negative": "short", "score": 2.0}])
    summary = run_train(tiny_cross_encoder, triplets, tmp_path / "out", "--max_length", "4096", "--max_steps", "4",
                        "--eval_strategy", "no", "--per_device_train_batch_size", "16")
    assert summary["steps"] == 4
    assert f"--max_length 4096 is beyond what '{tiny_cross_encoder}' takes: pairs are cut to its limit of 512" in caplog.text


def test_labelled_training_data_holds_out_its_own_queries_for_map(
    tiny_cross_encoder, ranking_file, tmp_path, trained_queries
):
    from rerank_distill.formats import iter_ranking_queries

    summary = run_train(tiny_cross_encoder, ranking_file, tmp_path / "model", "--loss", "bce_labels",
                        "--eval_share", "0.25", "--per_device_train_batch_size", "32", "--num_train_epochs", "1")

    queries = list(iter_ranking_queries(str(ranking_file)))
    rankable = {q.query for q in queries if q.positives and q.negatives}
    assert len(rankable) == 10 and len(summary["held_out_queries"]) == round(0.25 * 10)
    assert set(summary["held_out_queries"]) <= rankable
    assert trained_queries == {q.query for q in queries} - set(summary["held_out_queries"])
    assert summary["metric_for_best_model"] == "eval_selection_map" and summary["data_kind"] == "labelled"


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

    assert (resumed["resumed_from_step"], resumed["steps"], resumed["examples_trained"]) == (5, 6, 4)
    assert straight["train_examples"] == len(hand_written_triplets())  # no evaluation: nothing held out
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)
    assert not torch.equal(a["classifier.weight"], weights(tiny_cross_encoder)["classifier.weight"])


def test_a_checkpoint_saved_without_its_optimizer_state_is_refused_as_a_run_to_continue(
    tiny_cross_encoder, triplets_file, tmp_path
):
    # --save_only_model keeps weights only: the Trainer would resume with a fresh optimizer and its
    # schedule started again from step 0, in silence
    flags = ["--eval_strategy", "no", "--save_steps", "1", "--save_only_model"]
    run_train(tiny_cross_encoder, triplets_file, tmp_path / "out", "--max_steps", "2", *flags)
    with pytest.raises(InputError, match=r"checkpoint-2 was saved with --save_only_model: .*no optimizer"):
        run_train(tiny_cross_encoder, triplets_file, tmp_path / "out", "--max_steps", "4",
                  "--resume_from_checkpoint", "last", *flags)


def test_an_interrupted_run_names_the_checkpoint_to_resume_from(
    tiny_cross_encoder, triplets_file, tmp_path, monkeypatch, caplog
):
    interrupt_training_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run_train(tiny_cross_encoder, triplets_file, tmp_path / "model", "--max_steps", "5", "--eval_strategy", "no",
                  "--save_steps", "1")
    assert f"newest checkpoint is {tmp_path / 'model' / 'checkpoint-2'}" in caplog.text
    assert "--resume_from_checkpoint last" in caplog.text


@pytest.mark.parametrize("save_strategy", ["steps", "no"])
def test_a_run_stopped_while_saving_its_final_model_says_how_to_save_it(tiny_cross_encoder, triplets_file, tmp_path,
                                                                       monkeypatch, caplog, save_strategy):
    # a Ctrl-C once training had ended, as the final model was saved, said "interrupted" and nothing more
    out = tmp_path / "model"
    flags = ["--max_steps", "3", "--eval_strategy", "no", "--save_steps", "1", "--save_strategy", save_strategy]
    save_model = train.DistillationTrainer.save_model

    def stopped_after_the_weights(self, output_dir=None, _internal_call=False):
        save_model(self, output_dir, _internal_call)
        if Path(output_dir) == out:  # the final model's weights written, the summary not
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train.DistillationTrainer, "save_model", stopped_after_the_weights)
        with pytest.raises(KeyboardInterrupt):
            run_train(tiny_cross_encoder, triplets_file, out, *flags)
    if save_strategy == "no":  # nothing to save it from, and a plain rerun would stop at its files
        assert "with no checkpoint in" in caplog.text and "--overwrite_output_dir to train again" in caplog.text
        assert run_train(tiny_cross_encoder, triplets_file, out, *flags, "--overwrite_output_dir")["steps"] == 3
        return
    assert (f"interrupted while saving the final model: the newest checkpoint, {out / 'checkpoint-3'}, is where "
            "training ended; run the same command with --resume_from_checkpoint last") in caplog.text
    again = run_train(tiny_cross_encoder, triplets_file, out, *flags, "--resume_from_checkpoint", "last")
    assert (again["resumed_from_step"], again["steps"]) == (3, 3)


def test_a_run_stopped_while_saving_its_first_checkpoint_says_to_start_over_with_overwrite_output_dir(
    tiny_cross_encoder, triplets_file, tmp_path, monkeypatch, caplog
):
    # it said to run the same command to start again, which then stopped at the checkpoint left half saved
    from transformers import TrainerState

    out, flags = tmp_path / "model", ["--max_steps", "3", "--eval_strategy", "no", "--save_steps", "2"]

    def stopped_while_saving(self, json_path):  # (the Trainer writes trainer_state.json last)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(TrainerState, "save_to_json", stopped_while_saving)
        with pytest.raises(KeyboardInterrupt):
            run_train(tiny_cross_encoder, triplets_file, out, *flags)
    assert (f"interrupted before a checkpoint was saved whole in {out} (checkpoint-2 left unfinished, nothing to "
            "resume from); run the same command with --overwrite_output_dir to start again") in caplog.text
    with pytest.raises(InputError, match="holds only unfinished checkpoints"):
        run_train(tiny_cross_encoder, triplets_file, out, *flags)
    assert run_train(tiny_cross_encoder, triplets_file, out, *flags, "--overwrite_output_dir")["steps"] == 3


def test_a_run_stopped_while_torchrun_processes_share_an_evaluation_says_interrupted_and_how_to_resume(
    tiny_cross_encoder, triplets_file, tmp_path, monkeypatch, caplog
):
    # torchrun stops every process at once; the main one, stopped inside the evaluator whose scoring the others
    # share, then failed in sentence-transformers' cleanup, a collective with the processes already gone: a
    # 100-line 'Connection closed by peer' traceback instead of the interruption and the resume hint
    def stopped_in_shared_evaluation(self, *args, **kwargs):
        try:
            raise KeyboardInterrupt("SIGTERM")
        finally:
            raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:26277")

    monkeypatch.setattr(train.SelectionEvaluator, "__call__", stopped_in_shared_evaluation)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        run_train(tiny_cross_encoder, triplets_file, tmp_path / "model", "--max_steps", "5", "--selection_metric",
                  "map", "--selection_data", str(write_jsonl_records(tmp_path / "s.jsonl", hand_written_scores())),
                  "--eval_share", "0.4", "--eval_steps", "2", "--save_steps", "1", "--load_best_model_at_end", "false")
    assert f"newest checkpoint is {tmp_path / 'model' / 'checkpoint-1'}" in caplog.text
    assert "--resume_from_checkpoint last" in caplog.text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop, as Python reports it
def test_a_stop_signal_python_dropped_in_a_finalizer_stops_training_at_the_end_of_that_step(
    tiny_cross_encoder, triplets_file, tmp_path, monkeypatch, caplog
):
    import signal

    from rerank_distill.cli import stops_as_ctrl_c

    original_step = train.DistillationTrainer.training_step
    steps = []

    class Dropped:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # Python prints the KeyboardInterrupt raised here and goes on

    def step_that_drops_a_signal(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == 2:
            Dropped()
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(train.DistillationTrainer, "training_step", step_that_drops_a_signal)
    with stops_as_ctrl_c(), pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        run_train(tiny_cross_encoder, triplets_file, tmp_path / "model", "--max_steps", "6", "--eval_strategy", "no",
                  "--save_steps", "1")
    assert len(steps) == 2
    assert "--resume_from_checkpoint last" in caplog.text


def test_an_interrupted_run_of_weights_only_checkpoints_says_it_cannot_go_on(
    tiny_cross_encoder, triplets_file, tmp_path, monkeypatch, caplog
):
    interrupt_training_at_step(monkeypatch, 3)
    flags = ["--max_steps", "5", "--eval_strategy", "no", "--save_steps", "1", "--save_only_model"]
    with pytest.raises(KeyboardInterrupt):
        run_train(tiny_cross_encoder, triplets_file, tmp_path / "model", *flags)
    assert f"newest checkpoint, {tmp_path / 'model' / 'checkpoint-2'} was saved with --save_only_model" in caplog.text
    assert "--resume_from_checkpoint last" not in caplog.text
    with pytest.raises(InputError, match=r"holds checkpoints of an earlier run \(checkpoint-1, checkpoint-2\); the "
                                         r"newest, .*checkpoint-2 was saved with --save_only_model"):
        run_train(tiny_cross_encoder, triplets_file, tmp_path / "model", *flags)


# checkpoint-9's trainer_state.json: none yet, empty, cut short, or no object
@pytest.mark.parametrize("left_state", [None, "", '{"best_metric": null, "global_st', '["global_step"]'])
def test_resuming_from_the_last_checkpoint_passes_over_one_left_half_saved(tmp_path, caplog, left_state):
    for step, state in ((3, '{"global_step": 3}'), (6, '{"global_step": 6}'), (9, left_state)):  # stopped saving 9
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    if left_state is not None:
        with pytest.raises(InputError, match=r"checkpoint-9: its trainer_state.json is cut short .* pass 'last' to set "
                                             r"it aside"):
            resolve_checkpoint(str(tmp_path / "checkpoint-9"), str(tmp_path))
    assert "checkpoint-6" in resume_hint(str(tmp_path))
    assert "checkpoint-9 is incomplete" in caplog.text
    assert resolve_checkpoint("last", str(tmp_path)) == str(tmp_path / "checkpoint-6")
    # set aside, so the resumed run's checkpoints are the newest and rotation keeps them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-6", "incomplete-checkpoint-9"]
    (tmp_path / "checkpoint-9").mkdir()  # the resumed run stopped while saving the same step again
    assert resolve_checkpoint("last", str(tmp_path)) == str(tmp_path / "checkpoint-6")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-6", "incomplete-checkpoint-9"]


def test_a_folder_of_unfinished_checkpoints_only_is_no_run_to_continue(triplets_file, tmp_path):
    (tmp_path / "out" / "incomplete-checkpoint-5").mkdir(parents=True)
    with pytest.raises(InputError, match=r"holds only unfinished checkpoints of an earlier run \(incomplete-checkpoint-5"
                                         r"\), nothing to resume from: start over with --overwrite_output_dir"):
        run_train(tmp_path / "no-such-model", triplets_file, tmp_path / "out")


def test_resuming_a_run_stopped_while_saving_its_first_checkpoint_names_it_and_says_to_start_over(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()  # no trainer_state.json: the run stopped while saving it
    # (the message said only that there was no checkpoint-* folder, beside the one it had just renamed)
    with pytest.raises(InputError, match=r"no complete checkpoint-\* folder in .*, only incomplete-checkpoint-5 \(the run "
                                         r"stopped while saving it, set aside\): .* --overwrite_output_dir$"):
        resolve_checkpoint("last", str(tmp_path))
    with pytest.raises(InputError, match="only incomplete-checkpoint-5"):  # a second try says the same
        resolve_checkpoint("last", str(tmp_path))


def test_a_disk_that_fills_while_a_checkpoint_is_saved_stops_in_one_line_and_the_run_resumes(
    tiny_cross_encoder, triplets_file, tmp_path, monkeypatch, capsys
):
    from rerank_distill import trainer
    from rerank_distill.cli import run_main

    flags = ["--max_steps", "3", "--eval_strategy", "no", "--save_steps", "1"]
    save = torch.save

    def save_on_a_filling_disk(obj, path, *args, **kwargs):
        if str(path).endswith(os.path.join("checkpoint-2", "optimizer.pt")):  # as torch.save reports a full disk
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 93248 vs 93140")
        return save(obj, path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", save_on_a_filling_disk)
        patch.setattr(trainer, "_free_space", lambda folder: 0)
        with pytest.raises(SystemExit) as stopped:
            run_main(lambda: run_train(tiny_cross_encoder, triplets_file, tmp_path / "out", *flags))
    assert stopped.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: {tmp_path / 'out' / 'checkpoint-2'}: No space left on device: free some space and run the command "
        "again")
    resumed = run_train(tiny_cross_encoder, triplets_file, tmp_path / "out", *flags, "--resume_from_checkpoint", "last")
    assert (resumed["resumed_from_step"], resumed["steps"]) == (1, 3)
    assert (tmp_path / "out" / "incomplete-checkpoint-2").is_dir()


@pytest.mark.parametrize("error, kept", [
    (OSError(28, "No space left on device"), False),  # transformers' JSON writes: no file named
    (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), False),
    (RuntimeError("unexpected pos 576 vs 534"), True),  # torch.save's, with room on the disk: no full disk to blame
])
def test_a_save_the_disk_could_not_hold_names_its_folder(tmp_path, error, kept):
    from rerank_distill.trainer import save_failures_named

    with pytest.raises(type(error) if kept else OSError) as failed:
        with save_failures_named(str(tmp_path / "checkpoint-4")):
            raise error
    if not kept:
        assert (failed.value.errno, failed.value.filename) == (28, str(tmp_path / "checkpoint-4"))


def test_an_interrupted_run_without_a_checkpoint_says_to_start_again(tmp_path):
    assert "start again" in resume_hint(str(tmp_path / "never_created"))
    (tmp_path / "empty").mkdir()
    assert "start again" in resume_hint(str(tmp_path / "empty"))


def test_eval_data_replaces_the_held_out_split(tiny_cross_encoder, triplets_file, tmp_path):
    dev = write_jsonl_records(tmp_path / "dev.jsonl", [{"query": "q", "positive": "p", "negative": "n", "score": 2.0}] * 3)
    summary = run_train(
        tiny_cross_encoder, triplets_file, tmp_path / "model", "--eval_data", str(dev), "--max_steps", "1"
    )
    assert (summary["train_examples"], summary["eval_examples"]) == (len(hand_written_triplets()), 3)


def test_without_checkpoints_to_pick_from_every_query_trains_unless_evaluation_is_asked_for(
    tiny_cross_encoder, triplets_file, tmp_path
):
    summary = run_train(tiny_cross_encoder, triplets_file, tmp_path / "model", "--max_steps", "1",
                        "--save_strategy", "no")  # fmt: skip
    assert summary["held_out_queries"] == [] and summary["train_examples"] == len(hand_written_triplets())
    assert summary["final_model"] == "last step" and "--save_strategy no" in summary["selection"]

    watched = run_train(tiny_cross_encoder, triplets_file, tmp_path / "watched", "--max_steps", "1",
                        "--save_strategy", "no", "--eval_strategy", "steps")  # fmt: skip
    assert len(watched["held_out_queries"]) == 1  # eval loss on held-out queries, as asked, for the log
    dev = write_jsonl_records(tmp_path / "dev.jsonl", [{"query": "d", "positive": "p", "negative": "n", "score": 2.0}])
    on_dev = run_train(tiny_cross_encoder, triplets_file, tmp_path / "on_dev", "--max_steps", "1",
                       "--save_strategy", "no", "--eval_data", str(dev))  # fmt: skip
    # eval loss on the dev file given, for the log (it was read for nothing and never evaluated)
    assert on_dev["held_out_queries"] == [] and on_dev["eval_examples"] == 1 and "eval_loss" in str(on_dev)


def test_a_labelled_eval_data_picks_by_map_as_a_dev_set_and_every_training_query_trains(
    tiny_cross_encoder, ranking_file, tmp_path, trained_queries
):
    from rerank_distill.formats import iter_ranking_queries

    dev_queries = synthetic_ranking_data(6, docs_per_query=4, seed=11)
    dev = write_jsonl_records(tmp_path / "dev.jsonl", [{**record, "query": f"dev {record['query']}"}
                                                       for record in dev_queries])  # fmt: skip
    summary = run_train(tiny_cross_encoder, ranking_file, tmp_path / "model", "--loss", "bce_labels",
                        "--eval_data", str(dev), "--per_device_train_batch_size", "32", "--num_train_epochs", "1")

    assert summary["held_out_queries"] == [] and trained_queries == {q.query for q in iter_ranking_queries(str(ranking_file))}
    assert summary["metric_for_best_model"] == "eval_selection_map"
    assert "by MAP on a dev set of its own" in summary["selection"] and str(dev) in summary["selection"]
    assert summary["selection_queries"] == sum(1 for q in iter_ranking_queries(str(dev)) if q.positives and q.negatives)


def test_evaluations_by_a_dev_set_alone_log_no_eval_speed_of_0_samples_per_second(tiny_cross_encoder, ranking_file,
                                                                                   tmp_path):
    dev_queries = synthetic_ranking_data(6, docs_per_query=4, seed=11)
    dev = write_jsonl_records(tmp_path / "dev.jsonl", [{**record, "query": f"dev {record['query']}"}
                                                       for record in dev_queries])  # fmt: skip
    summary = run_train(tiny_cross_encoder, ranking_file, tmp_path / "model", "--loss", "bce_labels",
                        "--selection_data", str(dev), "--max_steps", "2")
    state = json.loads((tmp_path / "model" / "checkpoint-2" / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if "eval_selection_map" in entry]
    assert summary["eval_examples"] == 0 and evaluations  # the selection evaluator ran, with no eval data set
    assert not any("eval_samples_per_second" in entry for entry in evaluations)


def test_an_eval_data_without_gold_labels_leaves_selection_to_the_training_files_labels(scores_file, tmp_path):
    dev = write_jsonl_records(tmp_path / "dev.jsonl", [{"query": "dev q", "passage": p, "score": s, "label": None}
                                                       for p, s in (("a", 1.0), ("b", 0.0))])  # fmt: skip
    script = train.ScriptArguments("unused", str(scores_file), eval_data=str(dev), loss="mse", selection_metric="map",
                                   eval_share=0.4)
    _, selection = load_training_data(script, SimpleNamespace(
        per_device_train_batch_size=1, world_size=1, dataloader_drop_last=False, seed=0, disable_tqdm=True,
        process_index=0), True, False)
    assert selection.metric == "eval_selection_map" and str(scores_file) in selection.note


def test_an_eval_data_of_labelled_scores_picks_by_map_as_a_dev_set(scores_file, tmp_path):
    # (a name with "label" in it once reached the label check as its record)
    dev = write_jsonl_records(tmp_path / "labelled_dev.jsonl", [{"query": f"dev {q}", "passage": p, "score": s,
                                                                 "label": label} for q in "xy"
                                                                for p, s, label in (("a", 1.0, 1), ("b", 0.0, 0))])
    script = train.ScriptArguments("unused", str(scores_file), eval_data=str(dev), loss="mse", selection_metric="map",
                                   eval_share=0.4)
    _, selection = load_training_data(script, SimpleNamespace(
        per_device_train_batch_size=1, world_size=1, dataloader_drop_last=False, seed=0, disable_tqdm=True,
        process_index=0), True, False)
    assert selection.metric == "eval_selection_map" and "by MAP on a dev set of its own" in selection.note
    assert {query.query for query in selection.queries} == {"dev x", "dev y"} and selection.held_out == []


@pytest.mark.parametrize("dev_set", [True, False])
def test_an_eval_share_that_holds_out_nothing_is_warned_about_and_not_offered_as_the_remedy(scores_file, tmp_path,
                                                                                            caplog, dev_set):
    # a labelled dev set of its own is ranked whole, and --selection_metric last holds out nothing: no share is taken
    dev = write_jsonl_records(tmp_path / "dev.jsonl", [{"query": f"dev {q}", "passage": p, "score": s, "label": label}
                                                       for q in "xy" for p, s, label in (("a", 1.0, 1), ("b", 0.0, 0))])
    script = train.ScriptArguments("unused", str(scores_file), selection_data=str(dev) if dev_set else None,
                                   loss="mse", selection_metric="map" if dev_set else "last", eval_share=0.4)
    with caplog.at_level(logging.WARNING):
        _, selection = load_training_data(script, SimpleNamespace(
            per_device_train_batch_size=1, world_size=1, dataloader_drop_last=False, seed=0, disable_tqdm=True,
            process_index=0), True, False)
    assert selection.held_out == [] and "--eval_share 0.4 is not read: no training query is held out" in caplog.text
    if dev_set:
        assert "--eval_share" not in small_selection_warning(selection)


@pytest.mark.parametrize(("selection_metric", "evaluate", "why"), [
    ("last", True, "not picked (--selection_metric last)"),
    ("auto", False, "none (--eval_strategy no)"),
])
def test_an_eval_data_that_nothing_evaluates_is_warned_about(triplets_file, tmp_path, caplog, selection_metric,
                                                            evaluate, why):
    dev = write_jsonl_records(tmp_path / "dev.jsonl", [{"query": "d", "positive": "p", "negative": "n", "score": 2.0}])
    script = train.ScriptArguments("unused", str(triplets_file), eval_data=str(dev), selection_metric=selection_metric)
    with caplog.at_level(logging.WARNING):
        _, selection = load_training_data(script, SimpleNamespace(
            per_device_train_batch_size=1, world_size=1, dataloader_drop_last=False, seed=0, disable_tqdm=True,
            process_index=0, save_strategy="steps"), evaluate, True)
    assert selection.eval is None
    assert f"--eval_data {dev} is not read: nothing is evaluated (best checkpoint {why}" in caplog.text


@pytest.mark.parametrize(("selection_metric", "evaluate", "unread"), [
    ("last", True, True), ("loss", True, True), ("auto", False, True), ("auto", True, False), ("map", True, False),
])
def test_selection_data_that_no_map_selection_reads_is_warned_about(scores_file, tmp_path, caplog, selection_metric,
                                                                   evaluate, unread):
    dev = write_jsonl_records(tmp_path / "dev.jsonl", [{"query": f"dev {q}", "passage": p, "score": s, "label": label}
                                                       for q in "xy" for p, s, label in (("a", 1.0, 1), ("b", 0.0, 0))])
    script = train.ScriptArguments("unused", str(scores_file), selection_data=str(dev), loss="mse",
                                   selection_metric=selection_metric)
    with caplog.at_level(logging.WARNING):
        _, selection = load_training_data(script, SimpleNamespace(
            per_device_train_batch_size=1, world_size=1, dataloader_drop_last=False, seed=0, disable_tqdm=True,
            process_index=0, save_strategy="steps"), evaluate, False)
    assert (f"--selection_data {dev} is not read: best checkpoint {selection.note}" in caplog.text) == unread
    assert bool(selection.queries) == (not unread)


def test_evaluation_flags_that_selection_metric_last_never_reads_are_warned_about(tiny_cross_encoder, triplets_file,
                                                                                  tmp_path, caplog):
    out = tmp_path / "model"
    with caplog.at_level(logging.WARNING):
        run_train(tiny_cross_encoder, triplets_file, out, "--selection_metric", "last", "--eval_strategy", "steps",
                  "--eval_steps", "1", "--max_steps", "2")
    assert eval_history(out, "eval_loss") == []
    assert ("--eval_strategy, --eval_steps are not read: best checkpoint not picked (--selection_metric last)"
            in caplog.text)


def test_selection_without_evaluations_is_refused_and_an_unread_temperature_is_warned_about(tmp_path, triplets_file,
                                                                                          caplog):
    with pytest.raises(InputError, match="--selection_metric map picks a checkpoint by evaluations, and --eval_strategy "
                                         "no runs none"):
        run_train(tmp_path / "no-such-model", triplets_file, tmp_path / "a", "--selection_metric", "map",
                  "--eval_strategy", "no")
    with pytest.raises(InputError, match="--selection_metric loss picks the best of the checkpoints, and "
                                         "--save_strategy no saves none"):
        run_train(tmp_path / "no-such-model", triplets_file, tmp_path / "c", "--selection_metric", "loss",
                  "--save_strategy", "no")
    with pytest.raises(InputError):  # (stopped at the model, after the warning)
        run_train(tmp_path / "no-such-model", triplets_file, tmp_path / "b", "--loss", "infonce",
                  "--teacher_temperature", "4")
    assert "--teacher_temperature 4 does nothing here: --loss infonce reads no teacher scores" in caplog.text


@pytest.mark.parametrize(("flags", "message"), [
    (("--max_steps", "0"), "--max_steps 0 trains no step"),
    (("--num_train_epochs", "0"), "--num_train_epochs 0 trains no step"),
])
def test_a_run_of_no_steps_is_refused_before_any_work(tmp_path, triplets_file, flags, message):
    # (--max_steps 0 crashed in transformers' logging schedule; no epochs saved the untrained student as the model)
    with pytest.raises(InputError, match=message):
        run_train(tmp_path / "no-such-model", triplets_file, tmp_path / "model", *flags)
    assert not (tmp_path / "model").exists()


def test_push_to_hub_in_offline_mode_is_refused_before_any_work(tmp_path, triplets_file, monkeypatch):
    # (it failed with huggingface_hub's traceback once the data and the model were loaded)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError, match="--push_to_hub needs the hub, and HF_HUB_OFFLINE is set"):
        run_train(tmp_path / "no-such-model", triplets_file, tmp_path / "model", "--push_to_hub")
    assert not (tmp_path / "model").exists()


def test_a_labelled_eval_data_the_loss_cannot_take_is_pointed_to_selection_data(tmp_path, triplets_file, ranking_file):
    with pytest.raises(InputError, match=rf"{ranking_file}: --eval_data holds labelled ranking data.*, on which --loss "
                                         r"margin_mse has no loss to compute; .* pass it as --selection_data"):
        run_train(tmp_path / "no-such-model", triplets_file, tmp_path / "model", "--eval_data", str(ranking_file))


def test_lists_of_a_held_out_querys_passages_are_held_out_with_it(tmp_path):
    from datasets import Dataset

    from rerank_distill.selection import plan_selection

    lists = [{"query": f"q{i}", "positive": [f"p{i}"], "negative": [f"n{i}", f"m{i}"]} for i in range(6)]
    labelled = write_jsonl_records(tmp_path / "train.jsonl", lists)
    # the training lists: each query's, and (passages as queries) one of each passage against the rest
    rows = [{"query": record["query"], "passages": [record["positive"][0], record["negative"][0]], "scores": [2.0, 0.0]}
            for record in lists]
    rows += [{"query": f"p{i}", "passages": [f"q{i}", f"n{i}"], "scores": [3.0, 1.0]} for i in range(6)]
    selection = plan_selection(Dataset.from_list(rows), "listwise", str(tmp_path / "lists.jsonl"), str(labelled),
                               "map", None, 0.34, 0, False)  # fmt: skip
    held = set(selection.held_out)
    assert len(held) == 2
    held_passages = {f"p{query[1:]}" for query in held}
    assert not ({*held, *held_passages} & set(selection.train["query"]))
    assert set(selection.eval["query"]) == held | held_passages


def test_lists_of_a_held_out_querys_passages_are_held_out_with_it_when_eval_loss_picks():
    from rerank_distill.selection import plan_selection

    # triplets without gold labels (eval loss picks), and (passages as queries) one of each positive against the rest
    rows = [{"query": f"q{i}", "positive": f"p{i}", "negative": f"n{i}", "score": 2.0} for i in range(6)]
    rows += [{"query": f"p{i}", "positive": f"q{i}", "negative": f"n{i}", "score": 1.0} for i in range(6)]
    selection = plan_selection(triplets_dataset(rows), "triplets", "t.jsonl", None, "auto", None, 2 / 12, 0, True)
    held = set(selection.held_out)
    assert len(held) == 2 and selection.metric == "loss"
    # p_i's list ranks q_i and n_i: held out with whichever of q_i or p_i was drawn (and vice versa)
    partners = {f"p{q[1:]}" if q.startswith("q") else f"q{q[1:]}" for q in held}
    assert set(selection.eval["query"]) == held | partners
    assert not ({*held, *partners} & set(selection.train["query"]))
    assert len(selection.train) + len(selection.eval) == len(rows)


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


def test_help_says_a_default_of_a_pair_follows_the_other_half_the_user_set(capsys):
    # it showed --save_steps' default as 0.1 alone, where --eval_steps 50 makes it 50
    with pytest.raises(SystemExit):
        train.main(["--help"])
    options = {chunk.split()[0]: " ".join(chunk.split()) for chunk in capsys.readouterr().out.split("\n  --")[1:]}
    for flag, other in [("eval_strategy", "save_strategy"), ("save_strategy", "eval_strategy"),
                        ("eval_steps", "save_steps"), ("save_steps", "eval_steps")]:
        default = as_dict(default_training_flags({}))[f"--{flag}"]
        followed = as_dict(default_training_flags({other: "epoch" if "strategy" in other else "7"}))[f"--{flag}"]
        assert followed != default and f"(default here: {default}, or --{other}" in options[flag]
    assert "(default here: True where evaluations run and checkpoints follow them" in options["load_best_model_at_end"]


@pytest.mark.parametrize("flag", ["--eval_steps=abc", "--save-steps=1x", "--save_strategy=bogus"])
def test_a_bad_value_is_reported_on_the_flag_the_user_wrote_not_on_the_half_copied_from_it(flag, capsys):
    # the other half of the pair takes the value (--save_steps abc), and argparse named the flag never written
    with pytest.raises(SystemExit) as stopped:
        train.main(["--model_name_or_path", "m", "--train_data", "t", "--output_dir", "o", flag])
    written = flag.split("=")[0].replace("-", "_").lstrip("_")
    assert stopped.value.code == 2 and f"argument --{written}/" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--output_dir", ""], ["--output-dir="]])
def test_an_empty_output_dir_is_refused_as_a_missing_one(flag, tmp_path, monkeypatch):
    # (--output_dir "$OUT" with OUT unset): args.json went into the current folder, then a traceback
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="--output_dir is required"):
        train.main(["--model_name_or_path", "m", "--train_data", "t", *flag])
    assert list(tmp_path.iterdir()) == []


# --- reading each kind of training file --------------------------------------------------------


def triplets_dataset(rows: list[dict]):
    return TrainingData("triplets", {"query": [r["query"] for r in rows], "positive": [r["positive"] for r in rows],
                                     "negative": [r["negative"] for r in rows],
                                     "label": [r["score"] for r in rows]}).to_dataset()


def test_triplets_become_margin_labels_divided_by_the_teacher_temperature(tmp_path):
    path = write_jsonl_records(tmp_path / "t.jsonl", [{"query": "q", "positive": "p", "negative": "n", "score": 3.0},
                                              {"query": "q", "positive": "p", "negative": "m", "score": "1.5"}])
    data = read_training_data(str(path), "margin_mse", teacher_temperature=2.0)
    assert data.kind == "triplets" and not data.ragged
    assert data.columns == {"query": ["q", "q"], "positive": ["p", "p"], "negative": ["n", "m"], "label": [1.5, 0.75]}
    assert list(data.to_dataset().column_names) == ["query", "positive", "negative", "label"]


def test_ntuples_become_one_column_per_negative_and_their_margins(tmp_path):
    path = write_jsonl_records(tmp_path / "n.jsonl", [
        {"query": "q1", "positive": "p1", "negatives": ["a", "b", "c"], "scores": [4.0, 3.0, 1.0, 0.0]},
        {"query": "q2", "positive": "p2", "negatives": ["d"], "scores": [2.0, 2.5]},
    ])
    data = read_training_data(str(path), "margin_mse")
    assert data.kind == "ntuples" and data.ragged
    assert list(data.columns) == ["query", "positive", "negative_1", "negative_2", "negative_3", "label"]
    assert (data.columns["negative_1"], data.columns["negative_3"]) == (["a", "d"], ["c", ""])  # "" for missing
    first, second = data.columns["label"]
    assert first == [1.0, 3.0, 4.0] and second[0] == -0.5 and np.isnan(second[1:]).all()


def test_ntuple_margins_are_divided_by_the_teacher_temperature(tmp_path):
    path = write_jsonl_records(tmp_path / "n.jsonl", [
        {"query": "q", "positive": "p", "negatives": ["a", "b"], "scores": [4.0, 3.0, "1.0"]},
    ])
    data = read_training_data(str(path), "margin_mse", teacher_temperature=2.0)
    assert data.columns["label"] == [[0.5, 1.5]]  # margins 1 and 3, halved


def test_listwise_groups_keep_their_scores_divided_by_the_temperature(tmp_path):
    path = write_jsonl_records(tmp_path / "l.jsonl", [
        {"query": "q", "passages": ["p", "a", "b"], "scores": [3.0, 1.0, -1.0], "labels": [1, 0, 0]},
    ])
    data = read_training_data(str(path), "listwise_kl", teacher_temperature=0.5)
    assert data.columns == {"query": ["q"], "passages": [["p", "a", "b"]], "label": [[6.0, 2.0, -2.0]]}


@pytest.mark.parametrize("loss, temperature, record", [
    ("margin_mse", 1.0, {"query": "q", "positive": "p", "negative": "n", "score": 5e38}),
    ("margin_mse", 0.5, {"query": "q", "positive": "p", "negative": "n", "score": 2e38}),  # 4e38 once divided
    ("margin_mse", 1.0, {"query": "q", "positive": "p", "negatives": ["n"], "scores": [1e308, -1e308]}),  # inf margin
    ("listwise_kl", 1.0, {"query": "q", "passages": ["p", "n"], "scores": [1e39, 0.0]}),
    ("mse", 1.0, {"query": "q", "passage": "p", "score": -1e39}),
])
def test_teacher_numbers_beyond_float32_are_refused_at_their_line_not_trained_on_as_infinity(tmp_path, loss,
                                                                                             temperature, record):
    path = write_jsonl_records(tmp_path / "t.jsonl", [record])
    with pytest.raises(InputError, match=r"t.jsonl:1: .*beyond float32's range"):
        read_training_data(str(path), loss, teacher_temperature=temperature)


@pytest.mark.parametrize("loss, temperature, labels", [
    ("mse", 2.0, [1.0, -2.0, 0.0]),
    ("bce_soft", 2.0, [1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(2.0)), 0.5]),
    ("bce_labels", 2.0, [1.0, 0.0, 1.0]),  # gold grades: 2 counts as relevant
])
def test_a_scores_file_becomes_pairs_with_the_target_of_each_pointwise_loss(tmp_path, loss, temperature, labels):
    path = write_jsonl_records(tmp_path / "s.jsonl", [
        {"query": "q", "passage": "p", "score": 2.0, "label": 1},
        {"query": "q", "passage": "n", "score": -4.0, "label": 0},
        {"query": "r", "passage": "x", "score": 0.0, "label": 2},
    ])
    data = read_training_data(str(path), loss, temperature)
    assert (data.kind, data.columns["query"], data.columns["passage"]) == ("scores", ["q", "q", "r"], ["p", "n", "x"])
    assert data.columns["label"] == pytest.approx(labels)


@pytest.mark.parametrize("rows, loss, counted", [
    ([{"query": "q", "passage": "p", "score": 2.0}, {"query": "q", "passage": "n", "score": -4.0}], "mse", "2pair"),
    ([{"query": "q", "positive": ["p"], "negative": ["n"]}, {"query": "r", "positive": ["x"], "negative": ["y"]}],
     "bce_labels", "2query"),
    ([{"query": "q", "positive": "p", "negative": "n", "score": 1.0}], "margin_mse", "1record"),
])
def test_the_reading_bar_counts_what_was_read_in_every_kind_of_file(tmp_path, capsys, rows, loss, counted):
    read_training_data(str(write_jsonl_records(tmp_path / "d.jsonl", rows)), loss, show_progress=True)
    assert f": {counted} [" in capsys.readouterr().err  # not "0record" beside a file read another way


@pytest.mark.parametrize("rows", [
    [{"query": "q", "positive": ["p"], "negative": ["n", "m"]}],
    [{"query": "q", "pos": ["p"], "neg": ["n", "m"]}],
    [{"query": "q", "passage": "p", "label": 2}, {"query": "q", "passage": "n", "label": 0},
     {"query": "q", "passage": "m", "label": "I"}],  # graded rows, an ESCI letter among them
])
def test_labelled_ranking_data_becomes_pairs_labelled_one_and_zero(tmp_path, rows):
    data = read_training_data(str(write_jsonl_records(tmp_path / "d.jsonl", rows)), "bce_labels")
    assert data.kind == "labelled" and data.teacher_spread is None
    assert data.columns == {"query": ["q"] * 3, "passage": ["p", "n", "m"], "label": [1.0, 0.0, 0.0]}


def test_labelled_training_data_with_a_passage_both_positive_and_negative_is_trained_as_it_is_and_warned_of(
        tmp_path, caplog):
    path = str(write_jsonl_records(tmp_path / "d.jsonl", [{"query": "q", "positive": ["p"], "negative": ["p", " "]}]))
    with caplog.at_level(logging.WARNING):
        data = read_training_data(path, "bce_labels")
    assert data.columns["label"] == [1.0, 0.0, 0.0]
    assert (f"{path}: 1 blank passages (first at {path}:1); 1 passages listed again in their query's list with "
            f"another label (first at {path}:1); each trains as it is") in caplog.text


@pytest.mark.parametrize("loss", ["bce_labels", "mse"])
def test_a_scores_file_with_a_pair_listed_twice_or_blank_is_trained_as_it_is_and_warned_of(tmp_path, caplog, loss):
    # stage 1's output of the labelled data above: a line a listing, each with its own label
    lines = [{"query": "q", "passage": "p", "score": 1.0, "label": 1},
             {"query": "q", "passage": "p", "score": 1.0, "label": 0},
             {"query": "q", "passage": " ", "score": -1.0, "label": 0}]  # fmt: skip
    path = str(write_jsonl_records(tmp_path / "s.jsonl", lines))
    with caplog.at_level(logging.WARNING):
        data = read_training_data(path, loss)
    assert len(data.columns["label"]) == 3
    assert (f"{path}: 1 blank passages (first at {path}:3); 1 passages listed again in their query's list with "
            f"another label (first at {path}:2); each trains as it is") in caplog.text


@pytest.mark.parametrize("score", [{"score": 1.5}, {}])  # a scores file with labels, and labelled rows
def test_a_fractional_gold_grade_above_zero_is_a_relevant_target_for_bce_labels(tmp_path, score):
    rows = [{"query": "q", "passage": "p", "label": 0.5, **score}, {"query": "q", "passage": "n", "label": 0, **score}]
    data = read_training_data(str(write_jsonl_records(tmp_path / "d.jsonl", rows)), "bce_labels")
    assert data.columns["label"] == [1.0, 0.0]


def test_a_named_format_and_label_column_read_graded_rows_the_fields_alone_would_not(tmp_path):
    rows = [{"query": "q", "passage": "p", "stars": 3}, {"query": "q", "passage": "n", "stars": 0}]
    path = str(write_jsonl_records(tmp_path / "d.jsonl", rows))
    with pytest.raises(InputError, match="cannot tell the kind of training data"):
        read_training_data(path, "bce_labels")
    data = read_training_data(path, "bce_labels", input_format="graded", label_column="stars")
    assert data.columns == {"query": ["q", "q"], "passage": ["p", "n"], "label": [1.0, 0.0]}


@pytest.mark.parametrize("first, message", [
    ({"query": "q", "positive": None, "negative": "n", "score": 1.0}, 'field "positive" must be a string'),
    ({"query": "q", "positive": "p", "negative": 5, "score": 1.0}, 'field "negative" must be a string, got int'),
    ({"query": "q", "negative": "n", "score": 1.0}, 'missing field "positive"'),
    ({"query": "q", "positive": "p", "scores": [1.0, 0.0]}, 'missing field "negatives"'),
])  # fmt: skip
def test_a_broken_first_training_record_is_named_at_its_field_not_taken_for_labelled_data(tmp_path, first, message):
    # (the first record tells the file's kind: a triplet with a null text is no MTEB record of lists)
    path = write_jsonl_records(tmp_path / "records.jsonl", [first, {"query": "q", "positive": "p", "negative": "n",
                                                                    "score": 1.0}])
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}:1: {message}"):
        read_training_data(str(path), "margin_mse")


def test_a_named_ranking_format_on_stage_2s_records_blames_the_flag(triplets_file):
    with pytest.raises(InputError, match=r"train_triplets.jsonl:1: this is a line of triplets .* but --input_format "
                                         r"mteb names a ranking-data format; leave --input_format out"):
        read_training_data(str(triplets_file), "margin_mse", input_format="mteb")


def test_train_passes_input_format_and_label_column_to_training_and_selection(tiny_cross_encoder, tmp_path):
    rows = [{"query": f"q{i}", "passage": f"{kind} {i}", "stars": grade}
            for i in range(40) for kind, grade in (("good", 2), ("bad", 0))]  # fmt: skip
    path = write_jsonl_records(tmp_path / "d.jsonl", rows)
    summary = run_train(tiny_cross_encoder, path, tmp_path / "out", "--loss", "bce_labels", "--input_format", "graded",
                        "--label_column", "stars", "--eval_share", "0.75", "--max_steps", "1")  # fmt: skip
    assert summary["data_kind"] == "labelled" and summary["selection"].startswith("by MAP on 30 held-out")
    dev = write_jsonl_records(tmp_path / "dev.jsonl", rows[:10])  # the eval loss's own file, same columns
    summary = run_train(tiny_cross_encoder, path, tmp_path / "out2", "--loss", "bce_labels", "--input_format", "graded",
                        "--label_column", "stars", "--eval_data", str(dev), "--max_steps", "1")  # fmt: skip
    assert summary["eval_examples"] == 10


@pytest.mark.parametrize("loss, record, found", [
    ("mse", {"query": "q", "positive": "p", "negative": "n", "score": 1.0}, "triplets"),
    ("margin_mse", {"query": "q", "passage": "p", "score": 1.0}, "teacher scores"),
    ("listwise_kl", {"query": "q", "positive": "p", "negatives": ["n"], "scores": [1.0, 0.0]}, "n-tuples"),
    ("bce_soft", {"query": "q", "positive": ["p"], "negative": ["n"]}, "labelled ranking data"),
    ("bce_labels", {"query": "q", "passages": ["p", "n"], "scores": [1.0, 0.0]}, "listwise groups"),
])
def test_a_file_of_the_wrong_kind_names_what_it_holds_and_what_the_loss_needs(tmp_path, loss, record, found):
    path = write_jsonl_records(tmp_path / "data.jsonl", [record])
    with pytest.raises(InputError) as error:
        run_train(tmp_path / "no-such-model", path, tmp_path / "out", "--loss", loss)
    message = str(error.value)
    assert message.startswith(f"{path}: --loss {loss} trains on ") and f"this file holds {found}" in message


def test_bce_labels_on_a_scores_file_without_gold_labels_is_an_error(tmp_path):
    path = write_jsonl_records(tmp_path / "s.jsonl", [{"query": "q", "passage": "p", "score": 1.0, "label": 1},
                                              {"query": "q", "passage": "n", "score": 0.0}])
    with pytest.raises(InputError, match=r's.jsonl:2: no gold "label"'):
        read_training_data(str(path), "bce_labels")


def test_an_ntuple_needs_one_score_per_passage(tmp_path):
    record = {"query": "q", "positive": "p", "negatives": ["a", "b"], "scores": [1.0, 0.0]}
    path = write_jsonl_records(tmp_path / "n.jsonl", [record])
    with pytest.raises(InputError, match=r"n.jsonl:1: .*3 numbers for 2 negatives, got 2"):
        read_training_data(str(path), "margin_mse")
    empty = write_jsonl_records(tmp_path / "e.jsonl", [{**record, "negatives": [], "scores": [3.0]}])
    with pytest.raises(InputError, match=r'e.jsonl:1: "negatives" is empty: an n-tuple needs at least one negative'):
        read_training_data(str(empty), "margin_mse")


@pytest.mark.parametrize("loss, records", [
    ("listwise_kl", [{"query": "q", "passages": ["a", "b"], "scores": [1.0, 0.0]},
                     {"query": "r", "passages": ["a", "b", "a"], "scores": [1.0, 0.0, 1.0]},
                     {"query": "s", "passages": ["c", "c"], "scores": [2.0, 2.0]}]),
    ("margin_mse", [{"query": "q", "positive": "a", "negative": "b", "score": 1.0},
                    {"query": "r", "positive": "a", "negative": "a", "score": 1.0},
                    {"query": "s", "positive": "c", "negative": "c", "score": 0.5}]),
    ("margin_mse", [{"query": "q", "positive": "a", "negatives": ["b", "c"], "scores": [1.0, 0.0, 0.0]},
                    {"query": "r", "positive": "a", "negatives": ["b", "a"], "scores": [1.0, 0.0, 0.0]},
                    {"query": "s", "positive": "a", "negatives": ["b", "b"], "scores": [1.0, 0.0, 0.0]}]),
])
def test_records_that_list_a_passage_twice_are_counted_in_a_warning_and_kept(tmp_path, caplog, loss, records):
    path = write_jsonl_records(tmp_path / "l.jsonl", records)
    caplog.set_level(logging.WARNING)
    data = read_training_data(str(path), loss)
    assert f"{path}: 2 records list a passage twice (the first at {path}:2)" in caplog.text
    assert len(data.columns["query"]) == 3


def test_a_listwise_group_of_one_passage_is_refused_at_its_line(tmp_path):
    path = write_jsonl_records(tmp_path / "l.jsonl", [{"query": "q", "passages": ["a", "b"], "scores": [1.0, 0.0]},
                                                      {"query": "r", "passages": "a", "scores": 1.0}])
    with pytest.raises(InputError, match=r"l.jsonl:2: a listwise group needs at least two \"passages\" to rank, got 1"):
        read_training_data(str(path), "listwise_kl")


def test_selection_data_without_labels_is_still_read_through_for_errors(tmp_path):
    rows = [{"query": "q", "passage": "a", "score": 1.0}, "not json"]
    with pytest.raises(InputError, match=r"s.jsonl:2: not valid JSON"):
        plan(hand_written_triplets(), str(write_jsonl_records(tmp_path / "s.jsonl", rows)))


def test_differing_negative_counts_need_the_fused_loss(tmp_path):
    path = write_jsonl_records(tmp_path / "n.jsonl", [
        {"query": "q", "positive": "p", "negatives": ["a", "b"], "scores": [1.0, 0.0, 0.5]},
        {"query": "r", "positive": "p", "negatives": ["a"], "scores": [1.0, 0.0]},
    ])
    with pytest.raises(InputError, match="drop --no_fused_forward"):
        run_train(tmp_path / "no-such-model", path, tmp_path / "out", "--no_fused_forward")
    even = write_jsonl_records(tmp_path / "even.jsonl", [
        {"query": "q", "positive": "p", "negatives": ["a"], "scores": [1.0, 0.0]},
        {"query": "r", "positive": "p", "negatives": ["b"], "scores": [1.0, 0.5]},
    ])
    with pytest.raises(InputError, match="n.jsonl.*drop --no_fused_forward"):  # eval data too
        run_train(tmp_path / "no-such-model", even, tmp_path / "out", "--no_fused_forward", "--eval_data", str(path))


def test_a_teacher_whose_scores_barely_vary_is_warned_about(tmp_path):
    flat = write_jsonl_records(tmp_path / "flat.jsonl", [
        {"query": "q", "passage": p, "score": -3.0 + 0.01 * i, "label": 0} for i, p in enumerate("abcd")
    ] + [{"query": "r", "passage": "e", "score": 5.0, "label": 1}])  # far from q's scores, but alone in its query
    warning = teacher_spread_warning(read_training_data(str(flat), "mse"), str(flat))
    assert warning.startswith(f"{flat}: the teacher's scores within a query barely vary")
    good = write_jsonl_records(tmp_path / "good.jsonl", [{"query": "q", "positive": "p", "negative": "n", "score": 2.0}])
    assert teacher_spread_warning(read_training_data(str(good), "margin_mse"), str(good)) is None
    tiny = write_jsonl_records(tmp_path / "tiny.jsonl", [{"query": "q", "positive": "p", "negative": "n", "score": 0.05}])
    assert MIN_TEACHER_SPREAD > 0.05 and "margins barely vary" in teacher_spread_warning(
        read_training_data(str(tiny), "margin_mse"), str(tiny))
    # margins of 0.3 are plenty, but not after a temperature of 4
    modest = write_jsonl_records(tmp_path / "modest.jsonl", [{"query": "q", "positive": "p", "negative": "n", "score": 0.3}])
    data = read_training_data(str(modest), "margin_mse")
    assert teacher_spread_warning(data, str(modest), temperature=1) is None
    assert teacher_spread_warning(read_training_data(str(modest), "infonce", 4.0), str(modest), 4.0) is None
    assert "divided by --teacher_temperature 4, the teacher's margins barely vary (root mean square 0.3 / 4 = 0.075" in \
        teacher_spread_warning(data, str(modest), temperature=4)


def test_queries_with_one_candidate_do_not_dilute_the_teachers_spread_within_a_query(tmp_path):
    """A lone candidate has no within-query difference to measure: counting it as a deviation of 0
    would pull a well-spread teacher's root mean square under the threshold and warn of a collapse."""
    rows = [{"query": f"lone {i}", "passage": "x", "score": float(i)} for i in range(8)]
    rows += [{"query": "q", "passage": "a", "score": 0.0}, {"query": "q", "passage": "b", "score": 0.4}]
    path = write_jsonl_records(tmp_path / "s.jsonl", rows)
    data = read_training_data(str(path), "mse")
    assert data.teacher_spread == pytest.approx(0.2)  # q's deviations from its mean: -0.2 and +0.2
    assert teacher_spread_warning(data, str(path)) is None
    alone = write_jsonl_records(tmp_path / "alone.jsonl", rows[:8])  # nothing within a query to measure
    assert read_training_data(str(alone), "mse").teacher_spread is None


def test_bce_soft_on_scores_that_are_not_logits_around_zero_is_warned_about(tmp_path):
    from rerank_distill.training_data import one_sided_targets_warning

    grades = write_jsonl_records(tmp_path / "grades.jsonl", [  # llm_labels' expected grades lie in [0, 3]
        {"query": "q", "passage": p, "score": score} for p, score in zip("abc", [0.2, 1.5, 2.9])])
    warning = one_sided_targets_warning(read_training_data(str(grades), "bce_soft"), str(grades), "bce_soft")
    assert warning.startswith(f"{grades}: every --loss bce_soft target sigmoid(score / temperature) is on one side of "
                              "0.5, so the student learns that every pair is relevant")
    assert one_sided_targets_warning(read_training_data(str(grades), "mse"), str(grades), "mse") is None
    logits = write_jsonl_records(tmp_path / "logits.jsonl", [
        {"query": "q", "passage": p, "score": score} for p, score in zip("abc", [-2.0, 0.5, 3.0])])
    assert one_sided_targets_warning(read_training_data(str(logits), "bce_soft"), str(logits), "bce_soft") is None


def test_the_teacher_temperature_must_be_positive(triplets_file, tmp_path):
    with pytest.raises(InputError, match="--teacher_temperature must be positive"):
        run_train(tmp_path / "m", triplets_file, tmp_path / "out", "--temperature", "0")


@pytest.mark.parametrize("temperature", [float("inf"), float("nan")])
def test_an_infinite_teacher_temperature_is_refused_not_trained_on_as_all_zero_targets(triplets_file, temperature):
    with pytest.raises(InputError, match="--teacher_temperature must be positive and finite"):
        read_training_data(str(triplets_file), "margin_mse", teacher_temperature=temperature)


# --- held-out queries and checkpoint selection ------------------------------------------------


def test_held_out_split_puts_whole_queries_on_one_side():
    rows = hand_written_triplets()
    train_set, eval_set, held = split_by_query(triplets_dataset(rows), share=0.4, seed=7)

    assert set(train_set["query"]).isdisjoint(eval_set["query"])
    assert len(set(eval_set["query"])) == 2 and set(eval_set["query"]) == held  # 40% of 5 queries
    for query in set(eval_set["query"]):
        assert list(eval_set["query"]).count(query) == sum(r["query"] == query for r in rows)
    assert len(train_set) + len(eval_set) == len(rows)


def test_held_out_queries_depend_on_the_texts_and_seed_not_their_order():
    queries = [f"query number {i}" for i in range(200)]
    chosen = held_out_queries(queries, 0.05, seed=42)
    assert len(chosen) == 10
    shuffled = queries[:]
    random.Random(0).shuffle(shuffled)
    assert held_out_queries(shuffled + queries, 0.05, seed=42) == chosen
    assert held_out_queries(queries, 0.05, seed=43) != chosen


def test_held_out_share_of_the_queries_is_rounded_to_the_nearest_count():
    queries = [f"query {i}" for i in range(10)]
    assert len(held_out_queries(queries, 0.28, seed=0)) == 3  # 2.8 queries
    assert len(held_out_queries(queries, 0.22, seed=0)) == 2  # 2.2 queries


def test_held_out_queries_are_capped_at_max_count_and_the_cap_keeps_the_first_by_hash():
    queries = [f"query {i}" for i in range(400)]
    capped = held_out_queries(queries, 0.05, seed=0, max_count=7)
    assert len(capped) == 7 and capped <= held_out_queries(queries, 0.05, seed=0)  # 20 uncapped
    assert len(held_out_queries(queries, 0.05, seed=0, max_count=0)) == 20  # 0: no cap


def test_selection_by_map_holds_out_at_most_eval_max_queries(scores_file):
    selection = plan_selection(triplets_dataset(hand_written_triplets()), "triplets", "train.jsonl", str(scores_file),
                               "map", None, 0.4, 7, eval_max_queries=1)
    assert len(selection.held_out) == 1 and [query.query for query in selection.queries] == selection.held_out
    assert set(selection.train["query"]) == set(QUERIES) - set(selection.held_out)


def test_held_out_queries_are_those_with_the_smallest_hash_of_seed_and_text():
    # SHA-256 of "0:d" < "0:a" < "0:c" < "0:b"
    assert held_out_queries(["a", "b", "c", "d"], 0.5, seed=0) == {"d", "a"}


def test_held_out_split_keeps_at_least_one_query_on_each_side():
    assert len(held_out_queries(["a", "b", "c"], 0.01, seed=0)) == 1
    assert len(held_out_queries(["a", "b"], 0.9, seed=0)) == 1
    with pytest.raises(InputError, match="--eval_data"):
        held_out_queries(["only one query"] * 5, 0.05, seed=0)


def plan(train_rows, selection_data, metric="auto", kind="triplets", train_source="train.jsonl"):
    return plan_selection(triplets_dataset(train_rows), kind, train_source, selection_data, metric, None, 0.4, 7)


def test_selection_by_map_holds_out_queries_of_the_scores_file_and_their_candidate_lists(scores_file):
    selection = plan(hand_written_triplets(), str(scores_file), metric="map")
    assert selection.metric == "eval_selection_map" and len(selection.held_out) == 2
    assert [query.query for query in selection.queries] == selection.held_out
    for query in selection.queries:  # every candidate of the query, with its gold label
        positives, negatives = QUERIES[query.query]
        assert (query.positives, query.negatives) == (positives, negatives)
    assert set(selection.train["query"]) == set(QUERIES) - set(selection.held_out)
    assert set(selection.eval["query"]) == set(selection.held_out)  # their triplets give eval_loss


def test_selection_skips_queries_without_a_positive_or_a_negative(tmp_path):
    rows = hand_written_scores() + [{"query": "no positive here", "passage": "x", "score": 1.0, "label": 0},
                                    {"query": "only positives", "passage": "y", "score": 1.0, "label": 1}]
    triplets = hand_written_triplets() + [{"query": q, "positive": "a", "negative": "b", "score": 1.0}
                                          for q in ("no positive here", "only positives")]
    selection = plan(triplets, str(write_jsonl_records(tmp_path / "s.jsonl", rows)), metric="map")
    assert "1 without a positive and 1 without a negative skipped" in selection.note
    assert {"no positive here", "only positives"} <= set(selection.train["query"])  # never held out


def test_a_dev_file_with_queries_of_its_own_is_ranked_whole_and_removes_nothing_from_training(tmp_path):
    dev = write_jsonl_records(tmp_path / "dev.jsonl", [
        {"query": "a dev question", "positive": ["p"], "negative": ["n", "m"]},
        {"query": "another", "positive": [], "negative": ["n"]},
    ])  # fmt: skip
    selection = plan(hand_written_triplets(), str(dev))
    assert selection.metric == "eval_selection_map" and selection.held_out == [] and selection.eval is None
    assert [query.query for query in selection.queries] == ["a dev question"]
    assert len(selection.train) == len(hand_written_triplets())


@pytest.mark.parametrize("shared", [1, 3])
def test_a_dev_file_sharing_queries_with_training_still_ranks_all_of_its_own(tmp_path, shared):
    overlap = [{"query": q, "positive": p, "negative": n} for q, (p, n) in list(QUERIES.items())[:shared]]
    dev = write_jsonl_records(tmp_path / "dev.jsonl", [
        {"query": "a dev question", "positive": ["p"], "negative": ["n", "m"]},
        {"query": "another dev question", "positive": ["p"], "negative": ["n"]},
        *overlap,
    ])  # fmt: skip
    selection = plan(hand_written_triplets(), str(dev))
    ranked = [query.query for query in selection.queries]
    assert selection.metric == "eval_selection_map" and ranked[:2] == ["a dev question", "another dev question"]
    # one shared query cannot be split: it trains; of several, a share is held out, ranked and never trained on
    assert ranked[2:] == selection.held_out and len(selection.held_out) == (0 if shared == 1 else 1)
    assert set(selection.train["query"]) == set(QUERIES) - set(selection.held_out)
    assert f"{len(selection.held_out)} held-out training queries and 2 of its own" in selection.note


def test_queries_stage_2_dropped_from_the_selection_file_it_made_the_triplets_from_are_no_dev_set_of_its_own(tmp_path):
    scores = hand_written_scores()
    tied = next(iter(QUERIES))  # the teacher tied all its candidates: stage 2 makes no pair of them
    scores = [{**row, "score": 0.0} if row["query"] == tied else row for row in scores]
    scores_path = write_jsonl_records(tmp_path / "train_scores.jsonl", scores)
    triplets_path = tmp_path / "train_triplets.jsonl"
    create_triplets.main(["--input_path", str(scores_path), "--output_path", str(triplets_path)])
    triplets = read_jsonl_records(triplets_path)
    assert tied not in {row["query"] for row in triplets}

    selection = plan_selection(triplets_dataset(triplets), "triplets", str(triplets_path), str(scores_path), "auto",
                               None, 0.4, 7)
    # 2 held-out training queries and the dropped one are far below 30: every query trains, as without it
    assert selection.metric == "last" and selection.held_out == [] and "fewer than 30" in selection.note
    assert "1 that stage 2 dropped" in selection.note and len(selection.train) == len(triplets)


def test_stage_2_run_from_another_folder_is_known_to_have_made_the_triplets_from_its_relative_input(
    tmp_path, monkeypatch
):
    (tmp_path / "data").mkdir()
    write_jsonl_records(tmp_path / "data" / "scores.jsonl", hand_written_scores())
    monkeypatch.chdir(tmp_path / "data")
    create_triplets.main(["--input_path", "scores.jsonl", "--output_path", "triplets.jsonl"])
    monkeypatch.chdir(tmp_path)  # train.py runs from another folder
    assert made_from("data/triplets.jsonl", "data/scores.jsonl")
    assert not made_from("data/triplets.jsonl", str(write_jsonl_records(tmp_path / "scores.jsonl", [])))


def test_a_selection_file_sharing_one_training_query_holds_it_out_only_when_map_is_asked_for(tmp_path, scores_file):
    one = write_jsonl_records(tmp_path / "one.jsonl", hand_written_scores()[:3])  # the first query's candidates
    first = next(iter(QUERIES))
    auto = plan(hand_written_triplets(), str(one))
    assert auto.metric == "last" and auto.held_out == [] and len(auto.train) == len(hand_written_triplets())
    asked = plan(hand_written_triplets(), str(one), metric="map")
    assert asked.metric == "eval_selection_map" and asked.held_out == [first]
    assert [query.query for query in asked.queries] == [first] and first not in set(asked.train["query"])
    only = [row for row in hand_written_triplets() if row["query"] == first]  # nothing else to train on
    assert plan(only, str(one)).metric == "last"
    with pytest.raises(InputError, match="one labelled query is the only training query"):
        plan(only, str(one), metric="map")


def test_a_label_column_names_the_gold_label_of_a_scores_file(tmp_path):
    rows = [{"query": r["query"], "passage": r["passage"], "score": r["score"], "stars": r["label"]}
            for r in hand_written_scores()]  # fmt: skip
    path = str(write_jsonl_records(tmp_path / "s.jsonl", rows))
    with pytest.raises(InputError, match='no gold "label"'):
        read_training_data(path, "bce_labels")
    data = read_training_data(path, "bce_labels", label_column="stars")
    assert data.columns["label"] == [1.0 if row["stars"] else 0.0 for row in rows]
    selection = plan_selection(triplets_dataset(hand_written_triplets()), "triplets", "train.jsonl", path, "map", None,
                               0.4, 7, label_column="stars")
    assert selection.metric == "eval_selection_map" and len(selection.queries) == 2


def test_a_label_column_on_triplets_is_said_unread(tmp_path, caplog):
    path = str(write_jsonl_records(tmp_path / "t.jsonl", hand_written_triplets()))
    read_training_data(path, "margin_mse", label_column="stars")
    assert f"--label_column stars is not read in {path}: triplets" in caplog.text


def test_a_label_column_read_in_stage_1s_output_says_it_writes_every_grade_as_label(scores_file):
    selection = plan_selection(triplets_dataset(hand_written_triplets()), "triplets", "train.jsonl", str(scores_file),
                               "auto", None, 0.4, 7, label_column="rel")
    assert selection.metric == "loss" and selection.queries == []
    assert ('no gold "rel" field (it has "label", the field stage 1 writes every gold grade to: --label_column names '
            "a column of your own data, not of stage 1's output)") in selection.note


def test_without_gold_labels_selection_falls_back_to_eval_loss_and_says_why(tmp_path):
    unlabelled = write_jsonl_records(
        tmp_path / "s.jsonl", [{k: v for k, v in r.items() if k != "label"} for r in hand_written_scores()]
    )
    selection = plan(hand_written_triplets(), str(unlabelled))
    assert selection.metric == "loss" and selection.queries == [] and 'no gold "label"' in selection.note
    assert len(selection.held_out) == 2 and set(selection.eval["query"]) == set(selection.held_out)
    with pytest.raises(InputError, match='--selection_metric map needs gold-labelled .*no gold "label"'):
        plan(hand_written_triplets(), str(unlabelled), metric="map")
    assert "no --selection_data" in plan(hand_written_triplets(), None).note


def test_stage_2_output_given_as_selection_data_is_refused_not_passed_over(triplets_file):
    # a triplets file has no candidate lists with gold labels: the run used to fall back to eval_loss, said at INFO
    with pytest.raises(InputError, match=rf"^{triplets_file}:1: --selection_data holds triplets .*create_triplets"
                                         r".*, not candidate lists with gold labels: pass stage 1's scores file"):
        plan(hand_written_triplets(), str(triplets_file))


def test_a_selection_by_map_on_few_queries_warns_that_it_is_noisy(scores_file):
    selection = plan(hand_written_triplets(), str(scores_file), metric="map")  # 2 held-out queries
    warning = small_selection_warning(selection)
    assert warning.startswith("the best checkpoint is picked by MAP on only 2 queries, where one query moves MAP")
    assert "--eval_share" in warning and "--selection_data" in warning
    selection.queries = selection.queries * 15  # 30 queries
    assert small_selection_warning(selection) is None
    assert small_selection_warning(plan(hand_written_triplets(), str(scores_file), metric="loss")) is None


def many_queries(count: int) -> tuple[list[dict], list[dict]]:
    """(scores rows with gold labels, triplets) for ``count`` queries of one positive and one negative."""
    scores, triplets = [], []
    for i in range(count):
        query, positive, negative = f"question {i}", f"answer {i}", f"unrelated {i}"
        scores += [{"query": query, "passage": positive, "score": 2.0, "label": 1},
                   {"query": query, "passage": negative, "score": 0.0, "label": 0}]
        triplets.append({"query": query, "positive": positive, "negative": negative, "score": 2.0})
    return scores, triplets


def test_auto_selects_by_map_from_30_held_out_queries_and_else_keeps_the_last_step(tmp_path, scores_file):
    few = plan(hand_written_triplets(), str(scores_file))  # 2 held-out queries
    assert few.metric == "last" and few.held_out == [] and few.queries == [] and few.eval is None
    assert len(few.train) == len(hand_written_triplets()) and "fewer than 30" in few.note

    scores, triplets = many_queries(75)
    enough = plan(triplets, str(write_jsonl_records(tmp_path / "s.jsonl", scores)))  # 40% of 75 = 30
    assert enough.metric == "eval_selection_map" and len(enough.held_out) == len(enough.queries) == 30
    assert len(enough.train) == 45

    # Early stopping (or evaluation flags the user passed) needs the held-out queries, however few.
    asked = plan_selection(triplets_dataset(hand_written_triplets()), "triplets", "train.jsonl", str(scores_file),
                           "auto", None, 0.4, 7, must_evaluate=True)
    assert asked.metric == "eval_selection_map" and len(asked.held_out) == 2


def test_a_resume_with_edited_selection_data_is_refused(tiny_cross_encoder, triplets_file, scores_file, tmp_path):
    # the held-out queries come from it: edited, another query could be held out after training on it
    out = tmp_path / "out"
    run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "2", "--save_steps", "1", "--eval_steps", "1",
              "--selection_data", str(scores_file), "--selection_metric", "map")  # fmt: skip
    rows = hand_written_scores()
    write_jsonl_records(scores_file, [{**rows[0], "label": 0}, *rows[1:]])
    with pytest.raises(InputError, match=r"\(differing: the content of --selection_data;"):
        run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "3", "--resume_from_checkpoint", "last",
                  "--eval_steps", "1", "--selection_data", str(scores_file), "--selection_metric", "map")  # fmt: skip


def test_a_best_model_metric_that_ranks_queries_needs_labelled_ones(tiny_cross_encoder, triplets_file, tmp_path):
    with pytest.raises(InputError, match="--metric_for_best_model eval_selection_map needs gold-labelled"):
        run_train(tiny_cross_encoder, triplets_file, tmp_path / "out", "--max_steps", "1",
                  "--metric_for_best_model", "eval_selection_map")  # fmt: skip


def test_a_best_model_metric_the_evaluations_do_not_report_is_refused_before_training(tiny_cross_encoder, triplets_file,
                                                                                     ranking_file, tmp_path):
    # a dev file of its own ranks by MAP and holds out no training rows: no evaluation reports an eval loss
    with pytest.raises(InputError, match="--metric_for_best_model eval_loss is not among the metrics the evaluations "
                                         "report here: eval_selection_map, eval_selection_mrr@10"):
        run_train(tiny_cross_encoder, triplets_file, tmp_path / "out", "--max_steps", "1",
                  "--selection_data", str(ranking_file), "--metric_for_best_model", "eval_loss")  # fmt: skip
    with pytest.raises(InputError, match="--metric_for_best_model eval_MAP is not among"):
        run_train(tiny_cross_encoder, triplets_file, tmp_path / "out", "--max_steps", "1",
                  "--selection_data", str(ranking_file), "--metric_for_best_model", "eval_MAP")  # fmt: skip
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_selection_metric_last_holds_nothing_out(tmp_path):
    scores, triplets = many_queries(75)
    selection = plan(triplets, str(write_jsonl_records(tmp_path / "s.jsonl", scores)), metric="last")
    assert selection.metric == "last" and selection.held_out == [] and len(selection.train) == 75


def test_selection_metric_loss_ignores_the_selection_data(scores_file):
    selection = plan(hand_written_triplets(), str(scores_file), metric="loss")
    assert selection.metric == "loss" and selection.queries == []


def test_selection_evaluator_equals_sentence_transformers_reranking_evaluator(tiny_cross_encoder, ranking_file):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    from rerank_distill.formats import iter_ranking_queries

    queries = [q for q in iter_ranking_queries(str(ranking_file)) if q.positives and q.negatives]
    model = CrossEncoder(str(tiny_cross_encoder), num_labels=1)
    ours = SelectionEvaluator(queries)(model)
    theirs = CrossEncoderRerankingEvaluator(
        [{"query": q.query, "positive": q.positives, "negative": q.negatives} for q in queries], write_csv=False
    )(model)
    for name in ("map", "mrr@10", "ndcg@10"):
        assert ours[f"selection_{name}"] == pytest.approx(theirs[name], abs=1e-6)


def test_selection_evaluator_logs_the_pairs_max_length_cuts_once_not_at_every_evaluation(tiny_cross_encoder, caplog):
    from rerank_distill.formats import RankingQuery
    from rerank_distill.student import load_cross_encoder

    model = load_cross_encoder(str(tiny_cross_encoder), max_length=16)
    queries = [RankingQuery("q", ["word " * 50, "rice"], [1.0, 0.0])]
    evaluator = SelectionEvaluator(queries)
    with caplog.at_level("INFO", logger="rerank_distill.student"):
        for step in (1, 2, 3):
            evaluator(model, steps=step)
    assert caplog.text.count("filled the model's max_length of 16 tokens") == 1


def test_selection_reads_grades_below_0_as_not_relevant_as_training_does(tiny_cross_encoder, tmp_path):
    from sentence_transformers import CrossEncoder

    rows = [{"query": "q", "passage": "a", "grade": 2}, {"query": "q", "passage": "b", "grade": -1},
            {"query": "q", "passage": "c", "grade": 0}]  # fmt: skip
    queries, _ = read_selection_queries(str(write_jsonl_records(tmp_path / "graded.jsonl", rows)))
    assert [query.labels for query in queries] == [[2.0, 0.0, 0.0]]
    # (the grade -1 went to NDCG as a gain, which stopped training with a traceback at its first evaluation)
    metrics = SelectionEvaluator(queries)(CrossEncoder(str(tiny_cross_encoder), num_labels=1))
    assert 0.0 < metrics["selection_ndcg@10"] <= 1.0


def test_selection_evaluator_gives_a_diverged_model_zero_so_it_is_never_chosen(tiny_cross_encoder, ranking_file, caplog):
    import torch
    from sentence_transformers import CrossEncoder

    from rerank_distill.formats import iter_ranking_queries

    queries = [q for q in iter_ranking_queries(str(ranking_file)) if q.positives and q.negatives]
    model = CrossEncoder(str(tiny_cross_encoder), num_labels=1)
    with torch.no_grad():
        model.model.classifier.bias.fill_(float("nan"))
    assert SelectionEvaluator(queries)(model) == {f"selection_{name}": 0.0 for name in ("map", "mrr@10", "ndcg@10")}
    assert "training has diverged" in caplog.text


def test_a_run_whose_weights_diverge_to_nan_stops_at_once_and_saves_no_nan_model(tiny_cross_encoder, triplets_file,
                                                                                 tmp_path):
    # (the Trainer logs a NaN step's loss as its window's mean: the run logged loss 0, exited 0 and saved
    # a model whose every weight was NaN as its final model, with a training_summary.json; then it went on
    # to the end of its planned steps, saving NaN checkpoints, before that was caught)
    with pytest.raises(InputError, match=r"training diverged: .* weight tensors are not finite .* at step (\d+),"
                       r" .* --learning_rate") as stopped:
        run_train(tiny_cross_encoder, triplets_file, tmp_path / "out", "--learning_rate", "1e6", "--max_steps", "40",
                  "--logging_steps", "1", "--save_steps", "1")
    step = int(re.search(r"at step (\d+),", str(stopped.value)).group(1))
    assert step < 40
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert not (tmp_path / "out" / "training_summary.json").exists()
    checkpoints = sorted((tmp_path / "out").glob("checkpoint-*"))
    assert all(int(path.name.split("-")[1]) < step for path in checkpoints)
    assert all(torch.isfinite(tensor).all() for path in checkpoints for tensor in weights(path).values())


@pytest.mark.parametrize("flag, value, named", [
    ("--learning_rate", "nan", "--learning_rate"),  # (the optimizer's ValueError traceback, after an earlier run was deleted)
    ("--warmup_ratio", "nan", "--warmup_steps (or --warmup_ratio)"),  # (a traceback in the scheduler)
    ("--max_grad_norm", "nan", "--max_grad_norm"),  # (no clipping, in silence)
    ("--weight_decay", "inf", "--weight_decay"),  # (a whole run trained to NaN weights)
    ("--max_train_seconds", "inf", "--max_train_seconds"),  # (args.json held Infinity, which is no JSON)
])
def test_a_float_flag_that_is_not_finite_is_refused_before_anything_is_read(tmp_path, flag, value, named):
    with pytest.raises(InputError, match="^" + re.escape(f"{named} must be a finite number, got {value}") + "$"):
        run_train(tmp_path / "m", tmp_path / "missing.jsonl", tmp_path / "out", flag, value)
    assert not (tmp_path / "out").exists()


def test_early_stopping_without_evaluation_is_an_error(triplets_file, tmp_path):
    with pytest.raises(InputError, match="--early_stopping_patience needs evaluations"):
        run_train(tmp_path / "m", triplets_file, tmp_path / "out", "--early_stopping_patience", "2",
                  "--eval_strategy", "no")
    with pytest.raises(InputError, match="--early_stopping_patience needs evaluations"):
        run_train(tmp_path / "m", triplets_file, tmp_path / "out", "--early_stopping_patience", "2",
                  "--selection_metric", "last")


# --- padding statistics ---------------------------------------------------------------------------


def test_padding_stats_count_real_and_padded_tokens_of_training_forward_passes_only(tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(tiny_cross_encoder), num_labels=1)
    stats = track_padding(model)
    inputs = [["git", "how do i cook rice"], ["git reset --soft", "rice"], ["flour", "a passport lasts ten years"]]
    pairs = [(q, d) for column in inputs[1:] for q, d in zip(inputs[0], column)]
    lengths = [int(model.preprocess([pair])["attention_mask"].sum()) for pair in pairs]

    loss_fn = FusedMarginMSELoss(model)
    model.train()
    loss_fn(inputs, torch.tensor([1.0, 2.0]))
    model.eval()
    loss_fn(inputs, torch.tensor([1.0, 2.0]))  # evaluation is not counted
    model.predict(pairs)
    assert (stats.pairs, stats.real_tokens, stats.padded_tokens) == (4, sum(lengths), 4 * max(lengths))
    assert stats.summary()["mean_padded_tokens"] == round(max(lengths), 1)


def test_padding_stats_count_the_pairs_cut_at_max_length(tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(tiny_cross_encoder), num_labels=1, max_length=8)
    stats = track_padding(model)
    inputs = [["git", "rice"], ["flour", "rice"], ["git reset soft keeps your changes staged", "a passport lasts ten years"]]
    pairs = [(q, d) for column in inputs[1:] for q, d in zip(inputs[0], column)]
    full_lengths = [len(model.tokenizer(q, d)["input_ids"]) for q, d in pairs]
    model.train()
    FusedMarginMSELoss(model)(inputs, torch.tensor([1.0, 2.0]))
    cut = sum(length >= 8 for length in full_lengths)
    assert 0 < cut < len(pairs)  # the inputs mix pairs under and over the limit
    assert stats.pairs_at_max_length == cut
    assert stats.summary()["share_at_max_length"] == cut / len(pairs) and stats.summary()["max_length"] == 8


def test_each_training_log_says_the_tokens_per_pair_since_the_last_one(tiny_cross_encoder, triplets_file, tmp_path):
    out = tmp_path / "out"
    summary = run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "4", "--logging_steps", "2",
                        "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "4")
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    logs = [entry for entry in history if "loss" in entry]
    assert len(logs) == 2
    assert all(entry["tokens_per_pair"] <= entry["padded_tokens_per_pair"] for entry in logs)
    # equal numbers of pairs in each half, so the run's means are the mean of the two logs (each rounded to 0.1)
    assert np.mean([entry["tokens_per_pair"] for entry in logs]) == pytest.approx(summary["mean_real_tokens"], abs=0.11)
    assert np.mean([e["padded_tokens_per_pair"] for e in logs]) == pytest.approx(summary["mean_padded_tokens"], abs=0.11)


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


def test_query_grouped_batches_keep_each_querys_examples_together():
    rng = np.random.default_rng(2)
    queries = [f"q{int(i)}" for i in rng.integers(0, 40, size=601)]
    lengths = [int(x) for x in rng.integers(5, 500, size=601)]
    epochs = [query_grouped_batches(queries, lengths, 16, seed=epoch) for epoch in (0, 1)]
    for batches in epochs:
        assert sorted(i for batch in batches for i in batch) == list(range(601))
        assert [len(b) for b in batches[:-1]] == [16] * 37 and len(batches[-1]) == 9  # the short batch last
        assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest batch first
        # contiguous runs of queries cut into batches: a query spills into a second batch only at a cut,
        # so the (batch, query) incidences are at most the queries plus the cuts
        incidences = sum(len({queries[i] for i in batch}) for batch in batches)
        assert incidences <= len(set(queries)) + len(batches) - 1
    assert epochs[0] != epochs[1] and query_grouped_batches(queries, lengths, 16, seed=0) == epochs[0]
    dropped = query_grouped_batches(queries, lengths, 16, seed=0, drop_last=True)
    assert [len(b) for b in dropped] == [16] * 37


def test_batch_grouping_query_trains_with_the_query_grouped_sampler(tiny_cross_encoder, triplets_file, tmp_path):
    run_train(tiny_cross_encoder, triplets_file, tmp_path / "model", "--max_steps", "2", "--eval_strategy", "no",
              "--batch_grouping", "query")  # fmt: skip
    recorded = json.loads((tmp_path / "model" / "args.json").read_text())
    assert recorded["script"]["batch_grouping"] == "query"
    assert recorded["training"]["batch_sampler"].endswith("QueryGroupedBatchSampler'>")
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_batch_grouping_given_beside_batch_sampler_is_warned_about(tiny_cross_encoder, triplets_file, tmp_path,
                                                                    caplog):
    caplog.set_level(logging.WARNING)  # (--batch_sampler wins, and --batch_grouping was dropped unsaid)
    run_train(tiny_cross_encoder, triplets_file, tmp_path / "model", "--max_steps", "1", "--eval_strategy", "no",
              "--batch_grouping", "query", "--batch_sampler", "no_duplicates")  # fmt: skip
    recorded = json.loads((tmp_path / "model" / "args.json").read_text())
    assert recorded["training"]["batch_sampler"] == "no_duplicates"
    assert "--batch_grouping query is not read: --batch_sampler no_duplicates" in caplog.text


def test_data_seed_orders_the_batches_where_it_is_given(tiny_cross_encoder, triplets_file, tmp_path):
    trained = {}
    for name, flags in (("default", []), ("data_seed", ["--data_seed", "7"]), ("again", ["--data_seed", "7"])):
        run_train(tiny_cross_encoder, triplets_file, tmp_path / name, "--max_steps", "2", "--eval_strategy", "no",
                  *flags)  # fmt: skip
        trained[name] = weights(tmp_path / name)
    assert any(not torch.equal(trained["default"][k], trained["data_seed"][k]) for k in trained["default"])
    assert all(torch.equal(trained["data_seed"][k], trained["again"][k]) for k in trained["default"])


def test_sampler_reshuffles_each_epoch_and_reports_its_length():
    rows = hand_written_triplets()
    dataset = triplets_dataset(rows)
    sampler = LengthGroupedBatchSampler(dataset, batch_size=4, drop_last=False, seed=5)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert len(first) == len(sampler) == -(-len(rows) // 4)
    assert sorted(i for b in second for i in b) == list(range(len(rows))) and second != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_example_length_is_the_query_plus_its_longest_document_of_any_kind():
    from rerank_distill.samplers import example_lengths

    dataset = TrainingData("ntuples", {"query": ["ab", "abc"], "positive": ["x", "xyz12"],
                                       "negative_1": ["12345", "1"], "negative_2": ["1", ""],
                                       "label": [[1.0, 1.0], [1.0, float("nan")]]}).to_dataset()
    assert example_lengths(dataset) == [2 + 5, 3 + 5]
    groups = TrainingData("listwise", {"query": ["q"], "passages": [["a", "abcd", "ab"]], "label": [[1.0, 0.0, 0.0]]})
    assert example_lengths(groups.to_dataset()) == [1 + 4]


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
    data = write_jsonl_records(tmp_path / "t.jsonl", [GOOD, bad_line])
    with pytest.raises(InputError, match=message):
        run_train(tmp_path / "no-such-model", data, tmp_path / "out")


def test_training_data_smaller_than_one_kept_batch_is_an_error_not_a_run_of_no_steps(triplets_file, tmp_path):
    # torchrun always drops each process's incomplete last batch; one process does when told to
    with pytest.raises(InputError, match=f"{triplets_file}: .* training rows are fewer than one batch .* no step"):
        run_train(tmp_path / "no-model-needed", triplets_file, tmp_path / "out", "--per_device_train_batch_size",
                  "1000", "--dataloader_drop_last", "true")


@pytest.mark.parametrize("loss, kind", [("mse", "scores"), ("margin_mse", "triplets")])
def test_a_hold_out_that_leaves_no_training_row_is_an_error_not_a_run_of_no_steps(tmp_path, loss, kind):
    # each query's list ranks the other queries' texts, so whichever query is held out takes every row with it
    queries = ["q0", "q1", "q2"]
    others = [[other for other in queries if other != query] for query in queries]
    if kind == "scores":
        rows = [{"query": query, "content": passage, "score": 1.0 - j, "label": int(j == 0)}
                for query, passages in zip(queries, others) for j, passage in enumerate(passages)]
        flags = ["--loss", loss, "--selection_metric", "map"]
    else:
        rows = [{"query": query, "positive": a, "negative": b, "score": 1.0} for query, (a, b) in zip(queries, others)]
        flags = ["--loss", loss]
    data = write_jsonl_records(tmp_path / "train.jsonl", rows)
    with pytest.raises(InputError, match="no training row is left"):
        run_train(tmp_path / "no-model-needed", data, tmp_path / "out", *flags)


@pytest.mark.parametrize("flag, value", [("--max_length", "0"), ("--pairs_per_forward", "-1"),
                                         ("--early_stopping_patience", "-2"), ("--eval_max_queries", "-1")])
def test_a_flag_below_its_minimum_is_an_error_before_anything_is_read(triplets_file, tmp_path, flag, value):
    with pytest.raises(InputError, match=f"{flag} must be at least"):
        run_train(tmp_path / "no-such-model", triplets_file, tmp_path / "out", flag, value)
    assert not (tmp_path / "out").exists()


def test_an_output_dir_that_is_a_file_is_an_error(triplets_file, tmp_path):
    with pytest.raises(InputError, match=f"^--output_dir {triplets_file} is a file; give a folder"):
        run_train(tmp_path / "no-model-needed", triplets_file, triplets_file)
    (tmp_path / "gone").symlink_to(tmp_path / "missing")
    with pytest.raises(InputError, match="gone is a link to .*missing, which does not exist"):
        run_train(tmp_path / "no-model-needed", triplets_file, tmp_path / "gone" / "out")


def test_an_empty_triplets_file_is_an_error(tmp_path):
    data = write_jsonl_records(tmp_path / "t.jsonl", [])
    with pytest.raises(InputError, match="no records"):
        run_train(tmp_path / "no-such-model", data, tmp_path / "out")


def test_the_newest_checkpoint_is_the_highest_step_not_the_last_name_in_text_order(tmp_path):
    for step in (9, 10):  # "checkpoint-9" sorts after "checkpoint-10" as text
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert newest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")


def test_a_missing_checkpoint_is_an_error(triplets_file, tmp_path):
    with pytest.raises(InputError, match="no checkpoint"):
        run_train(tmp_path / "m", triplets_file, tmp_path / "out", "--resume_from_checkpoint", "last")
    with pytest.raises(InputError, match="not a checkpoint folder"):
        run_train(tmp_path / "m", triplets_file, tmp_path / "out", "--resume_from_checkpoint", str(tmp_path))


def test_a_fresh_run_stops_at_an_earlier_runs_checkpoints_or_deletes_them_when_told(tiny_cross_encoder, triplets_file,
                                                                                   tmp_path):
    earlier = tmp_path / "out" / "checkpoint-20"
    earlier.mkdir(parents=True)
    (earlier / "trainer_state.json").write_text(json.dumps({"global_step": 20, "max_steps": 40}))
    (earlier / "rng_state.pth").write_bytes(b"")  # (as a full checkpoint has: one saved with --save_only_model has none)
    with pytest.raises(InputError, match=r"holds checkpoints of an earlier run \(checkpoint-20\): continue it with "
                                         "--resume_from_checkpoint last, start over with --overwrite_output_dir"):
        run_train(tmp_path / "no-such-model", triplets_file, tmp_path / "out")
    with pytest.raises(InputError, match="pass one of them"):
        run_train(tiny_cross_encoder, triplets_file, tmp_path / "out", "--overwrite_output_dir",
                  "--resume_from_checkpoint", "last")
    with pytest.raises(InputError, match="no-such-model"):  # a run that fails its checks deletes nothing
        run_train(tmp_path / "no-such-model", triplets_file, tmp_path / "out", "--overwrite_output_dir")
    assert earlier.exists()
    (tmp_path / "out" / "args.json").write_text(json.dumps({"command": ["train.py"]}))  # as the earlier run left it
    (tmp_path / "out" / "teacher-checkpoint-notes").mkdir()  # no checkpoint, though its name has the word
    summary = run_train(tiny_cross_encoder, triplets_file, tmp_path / "out", "--max_steps", "1",
                        "--overwrite_output_dir")
    assert summary["steps"] == 1 and not earlier.exists() and (tmp_path / "out" / "teacher-checkpoint-notes").exists()


def uninstalled_tracker() -> str:
    from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    missing = sorted(INTEGRATION_TO_CALLBACK.keys() - set(get_available_reporting_integrations()))
    if not missing:
        pytest.skip("every tracker transformers knows is installed")
    return missing[0]


# (each stopped with a traceback from the Trainer: a ValueError, a RuntimeError, an ImportError)
@pytest.mark.parametrize("flags, message", [
    (["--report_to", "no-such-tracker"], r"^--report_to no-such-tracker: no such tracker; one of .*wandb.*, all .* none$"),
    (["--report_to", "wandb,tensorboard"], r"^--report_to wandb,tensorboard: no such tracker"),  # one a run
    (["--report_to", uninstalled_tracker], r"^--report_to {}: not installed \(pip install"),
    (["--optim", "adamw_bnb_8bit"], r"^--optim adamw_bnb_8bit: You need to install `bitsandbytes`"),
])
def test_a_run_the_trainer_refuses_to_set_up_is_told_why_and_keeps_the_earlier_run_it_was_to_overwrite(
        tiny_cross_encoder, triplets_file, tmp_path, flags, message):
    if flags[1] == "adamw_bnb_8bit" and importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed: the optimizer sets up")
    if callable(flags[1]):
        flags = [flags[0], flags[1]()]
        message = message.format(flags[1])
    out = tmp_path / "out"
    run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "1")
    earlier = sorted(p.name for p in out.iterdir())
    args_before = (out / "args.json").read_text()
    with pytest.raises(InputError, match=message):
        run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "1", "--overwrite_output_dir", *flags)
    assert sorted(p.name for p in out.iterdir()) == earlier  # its checkpoints and final model are still there
    assert (out / "args.json").read_text() == args_before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite_output_dir"]])
def test_a_folder_of_files_no_training_run_made_is_refused_as_output_dir_and_left_as_it_was(tiny_cross_encoder,
                                                                                          triplets_file, tmp_path,
                                                                                          overwrite):
    project = tmp_path / "project"  # say, --output_dir . in one's project
    project.mkdir()
    (project / "README.md").write_text("my project")
    (project / "args.json").write_text('{"command": ["my_tool.py"]}')
    with pytest.raises(InputError, match=r"project holds files that are not a training run's \(README.md, args.json\), "
                                         "which the run would overwrite"):
        run_train(tiny_cross_encoder, triplets_file, project, "--max_steps", "1", *overwrite)
    assert sorted(p.name for p in project.iterdir()) == ["README.md", "args.json"]
    assert (project / "README.md").read_text() == "my project"


def test_a_checkpoint_continued_into_another_folder_is_refused_where_that_folder_holds_files_of_its_own(
        tiny_cross_encoder, triplets_file, tmp_path):
    flags = ["--max_steps", "2", "--eval_strategy", "no", "--save_steps", "1"]
    run_train(tiny_cross_encoder, triplets_file, tmp_path / "run", *flags)
    checkpoint = str(tmp_path / "run" / "checkpoint-1")
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my project")
    with pytest.raises(InputError, match=r"project holds files that are not a training run's \(README.md\)"):
        run_train(tiny_cross_encoder, triplets_file, project, *flags, "--resume_from_checkpoint", checkpoint)
    assert sorted(p.name for p in project.iterdir()) == ["README.md"]
    assert (project / "README.md").read_text() == "my project"
    # another run's folder: its checkpoints would be taken for this one's (rotated, resumed from)
    run_train(tiny_cross_encoder, triplets_file, tmp_path / "other", *flags, "--learning_rate", "5e-4")
    with pytest.raises(InputError, match=r"other holds checkpoints of an earlier run"):
        run_train(tiny_cross_encoder, triplets_file, tmp_path / "other", *flags, "--resume_from_checkpoint", checkpoint)
    # a new folder takes it
    summary = run_train(tiny_cross_encoder, triplets_file, tmp_path / "new", *flags, "--resume_from_checkpoint",
                        checkpoint)
    assert (summary["resumed_from_step"], summary["steps"]) == (1, 2)


def test_another_torchrun_processs_files_being_written_in_the_output_dir_are_no_foreign_files(tmp_path):
    from rerank_distill.jsonl import AtomicWriter, is_unfinished_write
    from rerank_distill.run_folder import refuse_foreign_files

    out = tmp_path / "out"  # the instant another process's check_writable probe exists (a race seen under torchrun)
    (out / ".write-check.k2x9q1").mkdir(parents=True)
    (out / "args.json.node-1.example.org.4242.tmp").write_text("{")  # or its args.json, before it takes its name
    refuse_foreign_files(str(out))
    assert is_unfinished_write(AtomicWriter(out / "args.json").tmp_path.name)  # the name this machine's writer uses
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"holds files that are not a training run's \(notes.txt\)"):
        refuse_foreign_files(str(out))


def test_a_second_run_into_an_output_dir_being_written_stops_at_once(tiny_cross_encoder, triplets_file, tmp_path):
    from rerank_distill.run_folder import claim_output_dir

    with claim_output_dir(str(tmp_path / "out"), str(tiny_cross_encoder)):  # a first run, training
        with pytest.raises(InputError, match=r"another run is writing .*out at this moment"):
            run_train(tiny_cross_encoder, triplets_file, tmp_path / "out", "--max_steps", "1")
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train.lock"]  # nothing of the second's
    assert run_train(tiny_cross_encoder, triplets_file, tmp_path / "out", "--max_steps", "1")["steps"] == 1
    assert not (tmp_path / "out" / "train.lock").exists()


def test_a_run_that_ended_is_not_resumed_for_nothing_and_its_folder_says_so(tiny_cross_encoder, triplets_file,
                                                                             tmp_path):
    out = tmp_path / "out"
    run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "2", "--save_steps", "1", "--eval_strategy", "no")
    with pytest.raises(InputError, match=r"already reached the end this command asks for \(step 2 of --max_steps 2\), "
                                         r"and its final model is saved: to train further raise that limit"):
        run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "2", "--resume_from_checkpoint", "last")
    with pytest.raises(InputError, match=r"holds checkpoints of an earlier run, which ended \(checkpoint-1, "
                                         r"checkpoint-2; at step 2 of 2\): start over with"):
        run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "2")
    summary = run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "3", "--resume_from_checkpoint", "last",
                        "--eval_strategy", "no")  # fmt: skip
    assert (summary["resumed_from_step"], summary["steps"]) == (3 - 1, 3)
    (out / "training_summary.json").unlink()  # as if the run was stopped while saving its final model
    (out / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"which ended \(.*\) but was stopped before its final model was saved: "
                                         r"pass --resume_from_checkpoint last to save it"):
        run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "3", "--eval_strategy", "no")
    summary = run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "3", "--resume_from_checkpoint", "last",
                        "--eval_strategy", "no")  # fmt: skip
    # it makes that save, of the checkpoint where the run ended, without a step more
    assert (summary["resumed_from_step"], summary["steps"], summary["examples_trained"]) == (3, 3, 0)
    assert (out / "training_summary.json").exists() and not (out / "checkpoint-4").exists()
    final, ended_at = weights(out), weights(out / "checkpoint-3")
    assert all(torch.equal(final[name], ended_at[name]) for name in ended_at)


def test_a_finished_run_trained_further_follows_the_longer_schedule_from_its_first_new_step(
        tiny_cross_encoder, triplets_file, tmp_path):
    out = tmp_path / "out"
    linear = ("--eval_strategy", "no", "--logging_steps", "1", "--lr_scheduler_type", "linear", "--warmup_steps", "0")
    run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "4", "--save_steps", "2", *linear)
    run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "5", "--resume_from_checkpoint", "last", *linear)
    state = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())
    rates = {entry["step"]: entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry}
    # step 5 of 5 trains at 1e-3 x (1 - 4/5); the optimizer came back at the end of the 4-step schedule,
    # rate 0, and step 5 trained at that (changing no weight) before this was fixed
    assert rates[5] == pytest.approx(2e-4)
    before, after = weights(out / "checkpoint-4"), weights(out)
    assert not all(torch.equal(before[name], after[name]) for name in before)


def test_a_cut_short_final_save_of_a_run_that_selects_saves_its_best_checkpoint(tiny_cross_encoder, scores_file,
                                                                                 tmp_path):
    out = tmp_path / "out"
    flags = ["--loss", "mse", "--max_steps", "4", "--eval_steps", "1", "--save_steps", "1", "--selection_metric", "loss"]
    first = run_train(tiny_cross_encoder, scores_file, out, *flags)
    (out / "training_summary.json").unlink()
    (out / "model.safetensors").unlink()
    again = run_train(tiny_cross_encoder, scores_file, out, *flags, "--resume_from_checkpoint", "last")
    assert again["steps"] == 4 and again["best_checkpoint"] == first["best_checkpoint"]
    final, best = weights(out), weights(Path(first["best_checkpoint"]))
    assert all(torch.equal(final[name], best[name]) for name in best)


def test_a_cut_short_final_save_of_a_run_its_time_budget_ended_still_says_so(tiny_cross_encoder, triplets_file,
                                                                             tmp_path):
    out = tmp_path / "out"
    flags = ["--max_train_seconds", "1", "--num_train_epochs", "100000", "--eval_strategy", "no"]
    first = run_train(tiny_cross_encoder, triplets_file, out, *flags)
    assert first["stopped_by_time"]
    (out / "training_summary.json").unlink()
    again = run_train(tiny_cross_encoder, triplets_file, out, *flags, "--resume_from_checkpoint", "last")
    assert (again["steps"], again["stopped_by_time"], again["stopped_early"]) == (first["steps"], True, False)


def test_a_student_without_a_relevance_head_gets_the_same_new_head_on_every_run(tiny_embedding_model, triplets_file,
                                                                               tmp_path, caplog):
    caplog.set_level(logging.INFO)
    for run_dir in ("first", "second"):
        run_train(tiny_embedding_model, triplets_file, tmp_path / run_dir, "--max_steps", "1", "--eval_strategy", "no")
    assert "holds an embedding model: the student's relevance head starts new" in caplog.text
    first, second = weights(tmp_path / "first"), weights(tmp_path / "second")
    assert first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def test_a_student_saved_in_bfloat16_trains_float32_weights_and_is_saved_in_float32(tiny_cross_encoder, triplets_file,
                                                                                     tmp_path):
    # transformers keeps a checkpoint's own dtype: such a student trained bf16 weights, no float32 master copy
    import shutil

    from transformers import AutoModelForSequenceClassification

    student = shutil.copytree(tiny_cross_encoder, tmp_path / "bf16-student")
    AutoModelForSequenceClassification.from_pretrained(student, dtype=torch.bfloat16).save_pretrained(student)
    run_train(student, triplets_file, tmp_path / "out", "--max_steps", "1", "--eval_strategy", "no")
    assert {tensor.dtype for tensor in weights(tmp_path / "out").values()} == {torch.float32}


def test_a_resume_with_fewer_epochs_than_its_checkpoint_trained_is_refused(tiny_cross_encoder, triplets_file, tmp_path):
    import shutil

    out = tmp_path / "out"  # (the Trainer ended such a run at once and saved its checkpoint as final)
    flags = ["--eval_strategy", "no", "--save_steps", "1"]
    run_train(tiny_cross_encoder, triplets_file, out, "--num_train_epochs", "2", *flags)
    last = max(out.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    shutil.rmtree(last)  # as if the run stopped one step before its end
    (out / "training_summary.json").unlink()
    resumed = max(out.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    epoch = json.loads((resumed / "trainer_state.json").read_text())["epoch"]
    assert 1 < epoch < 2
    with pytest.raises(InputError, match=f"{resumed.name} is at epoch {epoch:.4g}, past --num_train_epochs 1: resume "
                                         "with --num_train_epochs 2 \\(its run's\\) or more"):
        run_train(tiny_cross_encoder, triplets_file, out, "--num_train_epochs", "1", "--resume_from_checkpoint", "last",
                  *flags)


def test_a_checkpoint_resumed_away_from_its_runs_args_json_is_warned_about(tiny_cross_encoder, triplets_file, tmp_path,
                                                                           caplog):
    import shutil

    run_train(tiny_cross_encoder, triplets_file, tmp_path / "run", "--max_steps", "2", "--save_steps", "1",
              "--eval_strategy", "no")
    copied = shutil.copytree(tmp_path / "run" / "checkpoint-1", tmp_path / "copied" / "checkpoint-1")
    run_train(tiny_cross_encoder, triplets_file, tmp_path / "out", "--max_steps", "2", "--eval_strategy", "no",
              "--resume_from_checkpoint", str(copied))
    assert "holds no args.json of the run its checkpoint comes from" in caplog.text


@pytest.mark.parametrize("flags, problem", [
    (["--lr_scheduler_type", "cosine_with_min_lr"], "One of min_lr or min_lr_rate should be set"),
    (["--lr_scheduler_type", "warmup_stable_decay"], "num_decay_steps"),
    (["--lr_scheduler_kwargs", '{"foo": 1}'], "unexpected keyword argument 'foo'"),
])  # fmt: skip
def test_a_schedule_that_cannot_be_built_is_refused_before_an_earlier_run_is_deleted(tiny_cross_encoder, triplets_file,
                                                                                     tmp_path, flags, problem):
    out = tmp_path / "out"
    run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "1", "--eval_strategy", "no")
    with pytest.raises(InputError, match=f"^--lr_scheduler_type .* with --lr_scheduler_kwargs .*{problem}"):
        run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "1", "--overwrite_output_dir", *flags)
    assert (out / "model.safetensors").exists()


@pytest.mark.parametrize("flag, value, minimum", [
    ("--gradient_accumulation_steps", "0", 1), ("--per_device_train_batch_size", "0", 1),
    ("--dataloader_num_workers", "-1", 0),
])  # fmt: skip
def test_a_training_flag_below_its_minimum_is_refused_before_anything_is_read(tmp_path, flag, value, minimum):
    with pytest.raises(InputError, match=f"^{flag} must be at least {minimum}, got {value}"):
        run_train(tmp_path / "no-model", tmp_path / "no-data", tmp_path / "out", flag, value)


def test_a_dict_flag_that_is_not_json_is_named(tmp_path):
    with pytest.raises(InputError, match="^--lr_scheduler_kwargs {bad: not JSON"):
        run_train(tmp_path / "no-model", tmp_path / "no-data", tmp_path / "out", "--lr_scheduler_kwargs", "{bad")


def test_the_summary_says_the_last_step_is_final_where_load_best_model_at_end_is_off(tiny_cross_encoder, triplets_file,
                                                                                    tmp_path):
    summary = run_train(tiny_cross_encoder, triplets_file, tmp_path / "out", "--max_steps", "2", "--eval_steps", "1",
                        "--save_steps", "1", "--load_best_model_at_end", "false")
    assert summary["final_model"] == "last step"
    assert summary["selection"].startswith("none (--load_best_model_at_end false): the last step is final; "
                                           "evaluations by eval_loss")


def test_training_into_a_data_set_folder_it_reads_is_refused(tiny_cross_encoder, triplets_file, tmp_path):
    # as the other stages refuse it (README: no stage writes inside a data-set folder it reads)
    folder = tmp_path / "data-set"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(triplets_file.read_bytes())
    with pytest.raises(InputError, match=f"--output_dir {folder / 'model'} is inside the data-set folder {folder}"):
        run_train(tiny_cross_encoder, f"{folder}:train", folder / "model", "--max_steps", "1")
    assert not (folder / "model").exists()


def test_training_into_the_students_own_folder_is_refused(tiny_cross_encoder, triplets_file, tmp_path):
    with pytest.raises(InputError, match="is in --output_dir .*: training would overwrite or delete the model"):
        run_train(tiny_cross_encoder, triplets_file, tiny_cross_encoder, "--overwrite_output_dir")
    assert (tiny_cross_encoder / "model.safetensors").exists()
    (tmp_path / "here").mkdir()
    with pytest.MonkeyPatch.context() as patch:  # a hub id is no folder inside ".": refused for its own reason only
        patch.chdir(tmp_path / "here")
        with pytest.raises(InputError, match="needs the modelscope package"):
            run_train("BAAI/no-such-model", triplets_file, ".", "--hub", "modelscope")
    inside = tmp_path / "out" / "checkpoint-6"  # a checkpoint of the run in --output_dir as the student
    inside.mkdir(parents=True)
    with pytest.raises(InputError, match="is in --output_dir .*, --resume_from_checkpoint"):
        run_train(inside, triplets_file, tmp_path / "out", "--overwrite_output_dir")


def test_a_new_run_never_leaves_an_earlier_runs_final_model_beside_its_own_checkpoints(tiny_cross_encoder,
                                                                                       triplets_file, tmp_path):
    out = tmp_path / "out"
    run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "1", "--eval_strategy", "no", "--save_strategy",
              "no")  # fmt: skip
    assert not list(out.glob("checkpoint-*")) and (out / "model.safetensors").exists()
    with pytest.raises(InputError, match="holds the final model of an earlier run: start over with --overwrite_output"):
        run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "1")

    class Interrupted(Exception):
        pass

    def stop_before_saving(*args, **kwargs):
        raise Interrupted

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train.DistillationTrainer, "train", stop_before_saving)
        with pytest.raises(Interrupted):
            run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "1", "--overwrite_output_dir")
    assert not (out / "model.safetensors").exists() and not (out / "training_summary.json").exists()


def test_a_resume_with_other_settings_or_edited_data_is_refused(tiny_cross_encoder, triplets_file, tmp_path,
                                                                monkeypatch):
    out = tmp_path / "out"
    run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "2", "--save_steps", "1", "--eval_strategy", "no")
    resume = ["--max_steps", "3", "--resume_from_checkpoint", "last", "--eval_strategy", "no"]
    with pytest.raises(InputError, match=r"other settings \(differing: --loss, --learning_rate; see its args.json\)"):
        run_train(tiny_cross_encoder, triplets_file, out, *resume, "--loss", "infonce", "--learning_rate", "5e-4")
    rows = hand_written_triplets()
    write_jsonl_records(triplets_file, [{**rows[0], "score": 9.0}, *rows[1:]])
    with pytest.raises(InputError, match=r"\(differing: the content of --train_data;"):
        run_train(tiny_cross_encoder, triplets_file, out, *resume)
    write_jsonl_records(triplets_file, rows)
    record_path = out / "args.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "resolved": {"processes": 2}}))  # as a run of torchrun's 2 left it
    with pytest.raises(InputError, match=r"\(differing: the number of processes \(2, now 1"):
        run_train(tiny_cross_encoder, triplets_file, out, *resume)
    record_path.write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"\(differing: --optim, --max_grad_norm;"):  # the optimiser's state is kept
        run_train(tiny_cross_encoder, triplets_file, out, *resume, "--optim", "sgd", "--max_grad_norm", "0.5")
    # sentence-transformers' own flags of what a batch holds, what its texts begin with, each module's learning rate
    with pytest.raises(InputError, match=r"\(differing: --batch_sampler, --prompts, --learning_rate_mapping;"):
        run_train(tiny_cross_encoder, triplets_file, out, *resume, "--batch_sampler", "no_duplicates", "--prompts",
                  "query: ", "--learning_rate_mapping", '{"classifier": 0.01}')
    with pytest.raises(InputError, match="checkpoint-2 is at step 2, past --max_steps 1: resume with --max_steps 2"):
        run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "1", "--resume_from_checkpoint", "last",
                  "--eval_strategy", "no")  # fmt: skip
    with pytest.raises(InputError, match=r"out holds a run made with other settings \(differing: --loss"):
        # a checkpoint named by its path is checked against its own run's args.json, wherever this one writes
        run_train(tiny_cross_encoder, triplets_file, tmp_path / "elsewhere", "--max_steps", "3", "--loss", "infonce",
                  "--resume_from_checkpoint", str(out / "checkpoint-2"), "--eval_strategy", "no")  # fmt: skip
    # the same model and data spelled otherwise (relative to another working directory, through a link) are the run's
    (tmp_path / "student_link").symlink_to(tiny_cross_encoder)
    monkeypatch.chdir(triplets_file.parent)
    assert run_train(tmp_path / "student_link", f"./{triplets_file.name}", out, *resume, "--logging_steps",
                     "1")["steps"] == 3


def test_a_resume_with_other_scheduler_optimiser_or_batching_arguments_is_refused(tiny_cross_encoder, triplets_file,
                                                                                   tmp_path):
    out = tmp_path / "out"
    flags = ["--eval_strategy", "no", "--save_steps", "1", "--lr_scheduler_type", "cosine_with_min_lr"]
    run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "2", "--lr_scheduler_kwargs", '{"min_lr": 1e-5}',
              *flags)
    with pytest.raises(InputError, match=r"other settings \(differing: --lr_scheduler_kwargs, --optim_args, "
                                         r"--dataloader_drop_last;"):
        run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "3", "--resume_from_checkpoint", "last",
                  "--lr_scheduler_kwargs", '{"min_lr": 5e-4}', "--optim_args", "foreach=False",
                  "--dataloader_drop_last", *flags)


@pytest.mark.parametrize("other", [["--metric_for_best_model", "eval_loss"], ["--greater_is_better", "false"]])
def test_a_resume_that_would_pick_the_best_checkpoint_by_another_metric_is_refused(tiny_cross_encoder, triplets_file,
                                                                                   scores_file, tmp_path, other):
    # (the best metric its checkpoint kept, a MAP, would be compared with the other metric's values)
    out = tmp_path / "out"
    flags = ["--selection_data", str(scores_file), "--eval_share", "0.4", "--selection_metric", "map",
             "--eval_steps", "1"]
    run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "2", *flags)
    with pytest.raises(InputError, match=rf"other settings \(differing: {other[0]}"):
        run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "3", *flags, "--resume_from_checkpoint",
                  "last", *other)
    assert run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "3", *flags, "--resume_from_checkpoint",
                     "last", "--metric_for_best_model", "eval_selection_map")["steps"] == 3  # the same one, named


# (--eval_strategy no trains on every query: the one run trained on queries the other held out and ranked)
@pytest.mark.parametrize("evaluated_first", [True, False])
def test_a_resume_that_would_hold_out_other_training_queries_is_refused(tiny_cross_encoder, triplets_file, scores_file,
                                                                         tmp_path, trained_queries, evaluated_first):
    out = tmp_path / "out"
    flags = ["--selection_data", str(scores_file), "--eval_share", "0.4", "--eval_steps", "1"]
    not_evaluated = ["--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "1"]
    first = run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "2", *flags,
                      *([] if evaluated_first else not_evaluated))
    trained = set(trained_queries)
    with pytest.raises(InputError, match=r"differing: the training queries held out for checkpoint selection "
                                         rf"\({len(first['held_out_queries'])} then, \d+ now"):
        run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "3", *flags, "--resume_from_checkpoint",
                  "last", *(not_evaluated if evaluated_first else []))
    assert trained_queries == trained  # refused before a step
    resumed = run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "3", *flags, "--resume_from_checkpoint",
                        "last", *([] if evaluated_first else not_evaluated))
    assert (resumed["steps"], resumed["held_out_queries"]) == (3, first["held_out_queries"])


def test_the_flags_a_resume_may_change_are_train_flags_and_every_other_one_must_match():
    from rerank_distill.run_folder import RESUME_MAY_CHANGE

    flags = {spec.name for spec in dataclasses.fields(train.ScriptArguments)}
    assert set(RESUME_MAY_CHANGE) < flags
    assert {"loss", "teacher_temperature", "train_data", "max_length"} <= flags - set(RESUME_MAY_CHANGE)


def test_a_run_of_a_share_of_an_epoch_resumes_for_the_rest_of_a_longer_one(tiny_cross_encoder, triplets_file, tmp_path):
    out = tmp_path / "out"
    first = run_train(tiny_cross_encoder, triplets_file, out, "--num_train_epochs", "0.5", "--save_steps", "1",
                      "--eval_strategy", "no")  # fmt: skip
    with pytest.raises(InputError, match=r"\(--num_train_epochs 0.5 done in \d+ steps\)"):
        run_train(tiny_cross_encoder, triplets_file, out, "--num_train_epochs", "0.5", "--resume_from_checkpoint", "last")
    summary = run_train(tiny_cross_encoder, triplets_file, out, "--num_train_epochs", "1", "--resume_from_checkpoint",
                        "last", "--eval_strategy", "no")  # fmt: skip
    assert summary["resumed_from_step"] == first["steps"] < summary["steps"]


def test_a_resumed_run_takes_the_step_counts_its_checkpoint_resolved_its_shares_to(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps(
        {"global_step": 10, "max_steps": 20, "logging_steps": 1, "eval_steps": 2, "save_steps": 2}))  # fmt: skip
    (tmp_path / "rng_state.pth").touch()  # a full checkpoint's (not --save_only_model's)
    training = SimpleNamespace(max_steps=20, num_train_epochs=3.0, logging_steps=0.02, eval_steps=0.1, save_steps=5,
                               output_dir=str(tmp_path))
    assert resumed_state(str(tmp_path), training, None).global_step == 10
    # 0.02 and 0.1 of 20 steps are what the checkpoint holds; 5 was a count already, and stays
    assert (training.logging_steps, training.eval_steps, training.save_steps) == (1, 2, 5)
    longer = SimpleNamespace(max_steps=40, num_train_epochs=3.0, logging_steps=0.02, eval_steps=0.1, save_steps=0.1,
                             output_dir=str(tmp_path))
    resumed_state(str(tmp_path), longer, None)
    assert (longer.logging_steps, longer.eval_steps) == (0.02, 0.1)  # another length: left to transformers


def test_a_run_whose_time_budget_was_spent_is_not_resumed_with_the_same_budget():
    from transformers import TrainerState

    from rerank_distill.run_folder import end_reached

    state = TrainerState(global_step=7, max_steps=100, num_train_epochs=2, stateful_callbacks={"TimeBudget": {
        "args": {"seconds": 20.0}, "attributes": {"stopped_training": True}}})  # fmt: skip
    assert end_reached(state, 100, 2, 20.0) == "--max_train_seconds 20 spent at step 7"
    assert end_reached(state, 100, 2, 60.0) is None  # a larger budget: more to train
    assert end_reached(state, 100, 2, None) is None  # no budget now
    assert end_reached(state, 0, 2, None) is None  # epochs not done


def test_command_line_error_is_one_line_and_exit_code_2(tmp_path):
    data = write_jsonl_records(tmp_path / "t.jsonl", [GOOD, {"query": "q"}])
    result = subprocess.run(
        [sys.executable, str(Path(train.__file__)), "--model_name_or_path", "m", "--train_data", str(data),
         "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {data}:2: missing field")
    assert "Traceback" not in result.stderr


def torchrun_train(model, train_data, output_dir, *flags, check: bool = True) -> subprocess.CompletedProcess:
    """train.py under torchrun with two CPU processes over gloo (the multi-GPU path without GPUs);
    fails the test, showing the errors, unless it exits 0 (or ``check`` is False)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(train.__file__)), "--model_name_or_path", str(model), "--train_data", str(train_data),
               "--output_dir", str(output_dir), "--max_length", "32", "--ddp_backend", "gloo", "--use_cpu", "true",
               "--report_to", "none", "--disable_tqdm", "true", *flags]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, check=False)
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower() and "ChildFailedError" not in line]
    assert result.returncode == 0 or not check, "\n".join(errors[:20]) + "\n" + result.stderr[-2000:]
    return result


def test_torchrun_with_two_processes_trains_one_model_on_both_shares(tiny_cross_encoder, tmp_path):
    """train.py under torchrun, two CPU processes over gloo (the multi-GPU path without GPUs): the
    batches are split between them, evaluation and the time budget's shared clock run on both,
    and only the main process writes the one final model. Each batch's 8 pairs go in forward
    passes of 3 (--pairs_per_forward), which reaches the tokenizer through the DDP wrapper."""
    triplets = write_jsonl_records(tmp_path / "triplets.jsonl", hand_written_triplets())
    out = tmp_path / "out"
    result = torchrun_train(tiny_cross_encoder, triplets, out, "--max_steps", "4", "--per_device_train_batch_size", "4",
                            "--eval_steps", "2", "--max_train_seconds", "600", "--pairs_per_forward", "3")

    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["processes"] == 2 and summary["distributed_type"] == "MULTI_CPU"
    assert summary["steps"] == 4
    assert summary["examples_trained"] == 4 * 4 * 2  # per-process batch x steps x processes
    assert summary["metric_for_best_model"] == "loss" and summary["best_checkpoint"]  # both evaluated
    assert result.stderr.count("done: 4 steps") == 1  # the other process logs warnings only
    assert not list(out.glob("*.tmp"))
    from sentence_transformers.cross_encoder import CrossEncoder

    before = CrossEncoder(str(tiny_cross_encoder)).predict([("fix a flat tyre", "patch the tube")])
    after = CrossEncoder(str(out)).predict([("fix a flat tyre", "patch the tube")])
    assert not np.allclose(before, after)


def test_a_torchrun_run_resumed_inside_its_second_epoch_ends_with_the_same_model_as_an_uninterrupted_one(
    tiny_cross_encoder, triplets_file, tmp_path
):
    # 13 triplets: 6 batches of 2 a process shared by 2 processes make 3 steps an epoch, so step 5 lies inside the
    # second, whose order the resumed run must draw as the second epoch's (accelerate's batch-skipping wrapper
    # hides the batch sampler from the Trainer's set_epoch); a constant learning rate, as max_steps differs
    flags = ["--per_device_train_batch_size", "2", "--eval_strategy", "no", "--save_steps", "5",
             "--lr_scheduler_type", "constant"]
    torchrun_train(tiny_cross_encoder, triplets_file, tmp_path / "straight", "--max_steps", "6", *flags)
    torchrun_train(tiny_cross_encoder, triplets_file, tmp_path / "resumed", "--max_steps", "5", *flags)
    torchrun_train(tiny_cross_encoder, triplets_file, tmp_path / "resumed", "--max_steps", "6",
                   "--resume_from_checkpoint", "last", *flags)

    summary = json.loads((tmp_path / "resumed" / "training_summary.json").read_text())
    assert (summary["resumed_from_step"], summary["steps"]) == (5, 6)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)


def test_torchrun_with_bf16_picks_checkpoints_by_the_float32_map_a_single_process_measures(tiny_cross_encoder, tmp_path):
    # sentence-transformers shares the selection evaluator's scoring between the processes; the other process
    # scored its share under the bf16 autocast --bf16 wraps the model in, so MAP was half bf16, half float32
    data = write_jsonl_records(tmp_path / "labelled.jsonl", synthetic_ranking_data(40, docs_per_query=8, seed=5))
    flags = ["--loss", "bce_labels", "--selection_metric", "map", "--eval_share", "0.5", "--max_steps", "1",
             "--learning_rate", "0", "--max_length", "32"]  # (the untrained weights at every evaluation)
    single = run_train(tiny_cross_encoder, data, tmp_path / "one", *flags)
    torchrun_train(tiny_cross_encoder, data, tmp_path / "two", *flags, "--bf16", "true",
                   "--per_device_train_batch_size", "2")
    summary = json.loads((tmp_path / "two" / "training_summary.json").read_text())
    assert summary["metric_for_best_model"] == single["metric_for_best_model"] == "eval_selection_map"
    assert summary["held_out_queries"] == single["held_out_queries"]
    assert summary["best_metric"] == pytest.approx(single["best_metric"], abs=1e-6)


def test_a_torchrun_run_that_diverged_counts_each_non_finite_weight_tensor_once(tiny_cross_encoder, scores_file,
                                                                                tmp_path):
    # every process holds all the weights under torchrun (DDP): the counts of both were added, and the message
    # named twice as many non-finite tensors as the model has
    from sentence_transformers.cross_encoder import CrossEncoder

    result = torchrun_train(tiny_cross_encoder, scores_file, tmp_path / "out", "--loss", "mse", "--learning_rate",
                            "1e12", "--max_steps", "20", "--logging_steps", "1", "--per_device_train_batch_size", "2",
                            check=False)
    assert result.returncode != 0
    counts = {int(n) for n in re.findall(r"training diverged: (\d+) of the model's weight tensors", result.stderr)}
    tensors = len(list(CrossEncoder(str(tiny_cross_encoder), num_labels=1, device="cpu").parameters()))
    assert counts and all(0 < count <= tensors for count in counts), (counts, tensors)


def test_a_finished_run_closes_its_process_group_after_every_process_is_done(tmp_path):
    # a torchrun worker that exited with its gloo group open sometimes aborted in teardown (1 resumed run in 10),
    # and torchrun then killed the main process, perhaps as it wrote the model
    import torch.distributed as dist

    from rerank_distill.trainer import end_process_group

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    end_process_group()
    assert not dist.is_initialized()
    end_process_group()  # one process, never grouped: nothing to close


def test_sharded_training_saves_the_gathered_weights_not_the_live_tensors(tiny_cross_encoder, tmp_path):
    """Under FSDP or DeepSpeed the trainer hands _save the full weights gathered from all
    processes while the live model holds shards: those gathered weights are what gets written."""
    from sentence_transformers.cross_encoder import CrossEncoder

    from rerank_distill.trainer import saving_weights

    model = CrossEncoder(str(tiny_cross_encoder), num_labels=1, device="cpu")
    gathered = {key: value * 2 + 1 for key, value in model.state_dict().items()}
    live = {key: value.clone() for key, value in model.state_dict().items()}
    with saving_weights(model, gathered):
        model.save_pretrained(str(tmp_path / "saved"))
    saved = CrossEncoder(str(tmp_path / "saved"), num_labels=1, device="cpu").state_dict()
    assert saved.keys() == gathered.keys()
    assert all(torch.equal(saved[key], gathered[key]) for key in gathered)
    assert all(torch.equal(value, live[key]) for key, value in model.state_dict().items())  # live model untouched
    model.save_pretrained(str(tmp_path / "after"))  # and saving is back to normal once closed
    after = CrossEncoder(str(tmp_path / "after"), num_labels=1, device="cpu").state_dict()
    assert all(torch.equal(after[key], live[key]) for key in live)
    with pytest.raises(RuntimeError, match="outside a transformers model"):
        with saving_weights(model, {**gathered, "1.extra.weight": torch.zeros(1)}):
            pass


def test_a_best_checkpoint_that_fails_to_load_is_reported_not_claimed(
    tiny_cross_encoder, triplets_file, tmp_path, monkeypatch
):
    """sentence-transformers only logs a failed load of the best checkpoint; the run must then
    say its final model is the last step's, and why."""
    from rerank_distill.trainer import DistillationTrainer

    def fail_to_load(self, checkpoint, model=None):
        raise OSError(f"{checkpoint} is unreadable")

    monkeypatch.setattr(DistillationTrainer, "_load_from_checkpoint", fail_to_load)
    out = tmp_path / "model"
    summary = run_train(tiny_cross_encoder, triplets_file, out, "--max_steps", "3")
    assert summary["best_checkpoint"] and summary["final_model"] == "last step"
    assert summary["best_model_error"].startswith("OSError: ") and "unreadable" in summary["best_model_error"]
    last = weights(out / "checkpoint-3")
    assert all(torch.equal(value, last[name]) for name, value in weights(out).items())
    assert json.loads((out / "training_summary.json").read_text())["final_model"] == "last step"


def test_the_launcher_trains_on_what_stage_2_wrote_and_selects_with_stage_1s_scores(tiny_cross_encoder, tmp_path):
    """train.sh with its variables exported as the README says: TRIPLETS (stage 2's output) is what it
    trains on, SCORES (stage 1's scores of the training data) what it picks checkpoints with, where
    it exists; a default that does not exist is left out with a warning, and extra flags win."""
    triplets = write_jsonl_records(tmp_path / "triplets.jsonl", hand_written_triplets())
    scores = write_jsonl_records(tmp_path / "scores" / "train_scores.jsonl", hand_written_scores())
    env = {**os.environ, "STUDENT": str(tiny_cross_encoder), "TRIPLETS": str(triplets), "SCORES": str(scores),
           "MODEL_DIR": str(tmp_path / "model"), "LOSS": "margin_mse", "MAX_LENGTH": "32", "BATCH_SIZE": "4",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    launcher = Path(train.__file__).with_name("train.sh")
    done = subprocess.run(["bash", str(launcher), "--max_steps", "1", "--selection_metric", "map"], env=env,
                          cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "model" / "args.json").read_text())
    assert record["script"]["train_data"] == str(triplets) and record["script"]["selection_data"] == str(scores)
    assert record["script"]["loss"] == "margin_mse" and record["training"]["max_steps"] == 1

    done = subprocess.run(["bash", str(launcher), "--max_steps", "1", "--overwrite_output_dir"],
                          env={**env, "SCORES": str(tmp_path / "none.jsonl")}, cwd=tmp_path, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0 and "the default SELECTION_DATA" in done.stderr
    assert json.loads((tmp_path / "model" / "args.json").read_text())["script"]["selection_data"] is None
    assert json.loads((tmp_path / "model" / "args.json").read_text())["script"]["teacher_temperature"] == 1.0

    # the command line's --selection_data replaces the default, unwarned; a temperature set is passed for any loss
    done = subprocess.run(["bash", str(launcher), "--max_steps", "1", "--overwrite_output_dir", "--selection_data",
                           str(scores)], env={**env, "SCORES": str(tmp_path / "none.jsonl"), "TEACHER_TEMPERATURE": "2"},
                          cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and "the default SELECTION_DATA" not in done.stderr, done.stderr[-2000:]
    script = json.loads((tmp_path / "model" / "args.json").read_text())["script"]
    assert (script["selection_data"], script["teacher_temperature"]) == (str(scores), 2.0)
    # one set empty is the default, as for every setting (it was taken as set, and margin_mse trained at 4)
    done = subprocess.run(["bash", str(launcher), "--max_steps", "1", "--overwrite_output_dir"],
                          env={**env, "TEACHER_TEMPERATURE": ""}, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "model" / "args.json").read_text())["script"]["teacher_temperature"] == 1.0


@pytest.mark.parametrize(("flags", "warning"), [
    (["--loss", "mse", "--pairs_per_forward", "4"], "--pairs_per_forward 4 does nothing here: --loss mse scores one pair"),
    (["--no_fused_forward", "--pairs_per_forward", "4"], "--pairs_per_forward 4 does nothing here: --no_fused_forward"),
    (["--loss", "bce_soft", "--no_fused_forward"], "--no_fused_forward does nothing here: only --loss margin_mse"),
    (["--loss", "listwise_kl", "--pairs_per_forward", "4"], None),
    (["--train_sampling_strategy", "sequential"], "--train_sampling_strategy sequential does nothing here"),
])  # fmt: skip
def test_a_forward_pass_flag_the_loss_never_reads_is_warned_about(tmp_path, scores_file, caplog, flags, warning):
    with pytest.raises(InputError):  # (stopped at the data or the model, after the warning; it was dropped unsaid)
        run_train(tmp_path / "no-such-model", scores_file, tmp_path / "model", *flags)
    warned = [record.getMessage() for record in caplog.records if "does nothing here" in record.getMessage()]
    assert [message[:len(warning)] for message in warned] == ([] if warning is None else [warning])


@pytest.mark.parametrize(("loss", "flags"), [("mse", []), ("margin_mse", ["--no_fused_forward"]),
                                            ("margin_mse", ["--fused_forward", "false"])])
def test_the_launcher_passes_its_default_pairs_per_forward_only_to_losses_that_read_it(tmp_path, scores_file, loss,
                                                                                      flags):
    # (margin_mse with --no_fused_forward was given it, and warned of a setting the user never made)
    env = {**os.environ, "STUDENT": str(tmp_path / "no-such-model"), "TRAIN_DATA": str(scores_file), "LOSS": loss,
           "SELECTION_DATA": "", "MODEL_DIR": str(tmp_path / "model"), "HF_HUB_OFFLINE": "1"}
    launcher = Path(train.__file__).with_name("train.sh")
    done = subprocess.run(["bash", str(launcher), *flags], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and "does nothing" not in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("value", ["1.5", "all"])
def test_the_launcher_refuses_num_gpus_that_is_no_whole_number(tmp_path, value):
    # bash's (( )) read 1.5 (or 08, a bad octal number) as false after an error line, and trained in one process
    launcher = Path(train.__file__).with_name("train.sh")
    done = subprocess.run(["bash", str(launcher), "--max_steps", "1"], env={**os.environ, "NUM_GPUS": value},
                          cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert (done.returncode, done.stderr) == (2, f"train.sh: NUM_GPUS must be a whole number of GPUs, not '{value}'\n")


def test_data_sets_given_as_hub_ids_are_fetched_through_the_hub_and_cache_train_py_was_given(monkeypatch, tmp_path):
    from rerank_distill.selection import load_training_data
    from rerank_distill.training import parse_training_args

    asked = []
    rows = {"train": [{"query": f"q{i}", "passage": f"p{i}{j}", "score": float(j), "label": int(j == 0)}
                      for i in range(4) for j in range(3)],
            "dev": [{"query": "d", "positive": ["a"], "negative": ["b", "c"]}]}

    def load_hub_dataset(name, split, hub, cache_dir):
        asked.append((name, split, hub, cache_dir))
        return rows[split]

    monkeypatch.setattr("rerank_distill.hub.load_hub_dataset", load_hub_dataset)
    script, training, _ = parse_training_args(train.ScriptArguments, "", [
        "--model_name_or_path", "unused", "--train_data", "someone/scores:train", "--selection_data", "someone/so:dev",
        "--loss", "mse", "--hub", "modelscope", "--cache_dir", "/downloads", "--output_dir", str(tmp_path), "--use_cpu"])
    kind, selection = load_training_data(script, training, evaluate=True, must_evaluate=False)
    assert kind == "scores" and len(selection.train) == 12 and [q.query for q in selection.queries] == ["d"]
    assert {(name, split) for name, split, *_ in asked} == {("someone/scores", "train"), ("someone/so", "dev")}
    assert {(hub, cache_dir) for _, _, hub, cache_dir in asked} == {("modelscope", "/downloads")}


@pytest.mark.parametrize("loss, records", [
    ("margin_mse", [{"query": "q", "positive": "p", "negative": "n", "score": 1.0},
                    {"query": " ", "positive": "p", "negative": "", "score": 1.0}]),
    ("margin_mse", [{"query": "q", "positive": "p", "negatives": ["n"], "scores": [1.0, 0.0]},
                    {"query": "\t", "positive": "p", "negatives": ["n", " "], "scores": [1.0, 0.0, 0.0]}]),
    ("listwise_kl", [{"query": "q", "passages": ["p", "n"], "scores": [1.0, 0.0]},
                     {"query": "", "passages": ["p", "  "], "scores": [1.0, 0.0]}]),
])
def test_blank_texts_in_triplets_ntuples_or_listwise_groups_are_trained_as_they_are_and_warned_of(
        tmp_path, caplog, loss, records):
    path = str(write_jsonl_records(tmp_path / "t.jsonl", records))
    with caplog.at_level(logging.WARNING):
        data = read_training_data(path, loss)
    assert len(data.columns["query"]) == 2
    assert (f"{path}: 1 blank query texts and 1 blank passages (the first in the record at {path}:2) are trained on "
            "as they are") in caplog.text


@pytest.mark.parametrize("loss, record, again", [
    ("margin_mse", {"query": "q", "positive": "p", "negative": "n", "score": 1.0}, {"score": 2.0}),
    ("margin_mse", {"query": "q", "positive": "p", "negatives": ["n"], "scores": [1.0, 0.0]}, {"negatives": "n"}),
    ("listwise_kl", {"query": "q", "passages": ["p", "n"], "scores": [1.0, 0.0]}, {}),
])
def test_records_repeating_an_earlier_ones_texts_are_trained_as_they_are_and_warned_of(tmp_path, caplog, loss, record,
                                                                                        again):
    other = {**record, "query": "r"}
    path = str(write_jsonl_records(tmp_path / "t.jsonl", [record, other, {**record, **again}, record]))
    with caplog.at_level(logging.WARNING):
        data = read_training_data(path, loss)
    assert len(data.columns["query"]) == 4
    assert f"{path}: 2 records repeat the query and passages of an earlier one (the first at {path}:3)" in caplog.text
