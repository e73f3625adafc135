"""train.py --max_train_seconds (rerank_distill.trainer.TimeBudget): training stops once the
budget is spent, after a last evaluation and checkpoint, and the learning-rate schedule follows
whichever runs out first, the planned steps or the time."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl, TrainerState, get_linear_schedule_with_warmup

import train
from rerank_distill.errors import InputError
from rerank_distill.trainer import TimeBudget


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def linear_schedule(total_steps: int, warmup_steps: int = 0):
    """transformers' linear schedule on an optimizer whose base rate is 1, so the rate is the factor."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)


def started_budget(seconds: float) -> tuple[TimeBudget, FakeClock]:
    clock = FakeClock()
    budget = TimeBudget(seconds, clock)
    budget.on_train_begin(None, None, None)  # the clock starts at 0
    return budget, clock


def step_ends(budget: TimeBudget, clock: FakeClock, *times: float, eval_delay: float = 0) -> TrainerControl:
    """Steps ending at these times; the control of the last one."""
    args = SimpleNamespace(eval_strategy="steps", save_strategy="steps", device="cpu", eval_delay=eval_delay)
    state = TrainerState(max_steps=10**6)
    for now in times:
        clock.now = now
        state.global_step += 1
        control = budget.on_step_end(args, state, TrainerControl())
    return control


@pytest.mark.parametrize(
    "times, step, expected",
    [
        # steps of 0.5 s: by the next step's end 1.5 s of 10 are spent; at step 10 of 100 the
        # time runs ahead, so the rate is the planned one of step 15: 1 - 15/100
        ((0.5, 1.0), 10, 0.85),
        ((0.5,), 60, 0.4),  # 1 s of 10 by the next step end, but 60 of 100 steps done: step 60's rate
        # an evaluation made one interval 3.5 s long: (4.5 + 3.5) / 10 spent, the rate of step 80
        ((0.5, 1.0, 4.5), 30, 0.2),
        ((0.5, 9.6), 30, 0.0),  # past the budget: the schedule's end
    ],
)
def test_the_learning_rate_follows_whichever_runs_out_first_steps_or_time(times, step, expected):
    budget, clock = started_budget(10.0)
    schedule = linear_schedule(total_steps=100)
    assert budget.stretch(schedule, total_steps=100)
    step_ends(budget, clock, *times)
    assert schedule.lr_lambdas[0](step) == pytest.approx(expected)


def test_warmup_is_also_passed_through_faster_when_time_runs_ahead():
    budget, clock = started_budget(100.0)
    schedule = linear_schedule(total_steps=100, warmup_steps=20)
    budget.stretch(schedule, total_steps=100)
    step_ends(budget, clock, 5.0)  # 10 s of 100 spent by the next step end: step 10, halfway up the warmup
    assert schedule.lr_lambdas[0](1) == pytest.approx(0.5)


def test_training_stops_at_the_step_end_from_which_one_more_step_would_reach_the_budget():
    budget, clock = started_budget(10.0)
    control = step_ends(budget, clock, *range(1, 9))  # a step a second: 8 + 1 s of 10 by the next end
    assert not (control.should_training_stop or control.should_evaluate or control.should_save)
    control = step_ends(budget, clock, 9)
    assert control.should_training_stop and control.should_evaluate and control.should_save
    assert budget.stopped_training


def test_an_evaluation_that_made_a_step_longer_is_kept_in_reserve():
    budget, clock = started_budget(10.0)
    assert not step_ends(budget, clock, 1, 2, 5, 6).should_training_stop  # 6 + 3 s of 10
    assert step_ends(budget, clock, 7).should_training_stop  # 7 + 3 s


def test_the_clock_starts_when_started_not_when_the_trainer_begins():
    clock = FakeClock()
    budget = TimeBudget(10.0, clock)
    budget.start()
    clock.now = 4.0
    budget.on_train_begin(None, None, None)  # the trainer's own setup took 4 s of the budget
    assert step_ends(budget, clock, 5.0).should_training_stop  # 5 + 5 s


def test_a_resumed_run_continues_the_budget_and_the_schedule_it_saved(tmp_path):
    budget, clock = started_budget(10.0)
    step_ends(budget, clock, 1.0, 4.0)  # 4 s spent, the longest step 3 s: 0.7 of the budget by the next end
    clock.now = 4.5
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()  # as the Trainer saves it: every ExportableState callback's state in trainer_state.json
    (checkpoint / "trainer_state.json").write_text(json.dumps({"stateful_callbacks": {"TimeBudget": budget.state()}}))

    resumed_clock = FakeClock()
    resumed_clock.now = 100.0  # another process, another clock
    resumed = TimeBudget(10.0, resumed_clock)
    resumed.start(TrainerState.load_from_json(str(checkpoint / "trainer_state.json")))
    assert resumed.spent == pytest.approx(0.7)  # the schedule goes on from there, not from 0
    schedule = linear_schedule(total_steps=100)
    resumed.stretch(schedule, total_steps=100)
    assert schedule.lr_lambdas[0](3) == pytest.approx(0.3)  # step 3's rate is that of 70 of 100 planned steps
    # 4.5 s were spent before: 3 more (with a longest step of 3 s in reserve) reach the budget
    assert not step_ends(resumed, resumed_clock, 101.0).should_training_stop  # 5.5 + 3 of 10
    assert step_ends(resumed, resumed_clock, 102.5).should_training_stop  # 7 + 3 of 10

    raised = TimeBudget(20.0, resumed_clock)  # resumed with twice the budget: the schedule is at 0.35 of it
    raised.start(TrainerState.load_from_json(str(checkpoint / "trainer_state.json")))
    assert raised.spent == pytest.approx(0.35)


def steps_evaluated(budget: TimeBudget, clock: FakeClock, step_times: list[float], max_steps: int,
                    start_step: int = 0, eval_delay: float = 0) -> list[int]:
    """The steps at whose end an evaluation falls due, with train.py's default intervals (a tenth of
    the run, as the Trainer counts them: every ceil(max_steps / 10) steps and at the planned end)."""
    args = SimpleNamespace(eval_strategy="steps", save_strategy="steps", eval_steps=0.1, save_steps=0.1,
                           device="cpu", eval_delay=eval_delay)
    every = -(-max_steps // 10)
    state = TrainerState(global_step=start_step, max_steps=max_steps, eval_steps=every, save_steps=every)
    budget.on_train_begin(args, state, None)
    evaluated = []
    for now in step_times:
        clock.now = now
        state.global_step += 1
        by_steps = state.global_step % every == 0 or state.global_step == max_steps  # DefaultFlowCallback's
        delayed = state.global_step < eval_delay
        trainers_own = TrainerControl(should_evaluate=by_steps and not delayed, should_save=by_steps)
        control = budget.on_step_end(args, state, trainers_own)
        assert control.should_save == control.should_evaluate or delayed  # one schedule for both
        if control.should_evaluate:
            evaluated.append(state.global_step)
        if control.should_training_stop:
            break
    return evaluated


def test_a_run_the_budget_cuts_short_still_evaluates_at_each_tenth_of_its_time():
    budget, clock = started_budget(100.0)
    # 1000 steps planned, a second each: by the step count a tenth is 100 steps, past the budget;
    # by time, step k ends with (k + 1) s of 100 spent, so a tenth is due at steps 9, 19, ...
    evaluated = steps_evaluated(budget, clock, [float(k) for k in range(1, 1001)], max_steps=1000)
    assert evaluated == [9, 19, 29, 39, 49, 59, 69, 79, 89, 99]  # the last: the budget's stop


def test_a_run_that_ends_by_its_steps_evaluates_where_the_trainer_would():
    budget, clock = started_budget(1000.0)
    evaluated = steps_evaluated(budget, clock, [float(k) for k in range(1, 25)], max_steps=24)
    assert evaluated == [3, 6, 9, 12, 15, 18, 21, 24]  # every ceil(24 / 10) steps, each once


def test_a_resumed_run_does_not_repeat_the_evaluations_it_had_made():
    budget, clock = started_budget(1000.0)
    evaluated = steps_evaluated(budget, clock, [float(k) for k in range(1, 11)], max_steps=20, start_step=10)
    assert evaluated == [12, 14, 16, 18, 20]


def test_evaluations_the_budget_makes_due_wait_for_eval_delay_as_the_trainers_own_do():
    budget, clock = started_budget(100.0)
    evaluated = steps_evaluated(budget, clock, [float(k) for k in range(1, 1001)], max_steps=1000, eval_delay=35)
    assert evaluated == [39, 49, 59, 69, 79, 89, 99]  # those due at steps 9, 19 and 29 are skipped, not moved


def test_the_budgets_last_evaluation_waits_for_eval_delay_but_its_checkpoint_is_still_saved():
    budget, clock = started_budget(10.0)
    control = step_ends(budget, clock, *range(1, 10), eval_delay=50)
    assert control.should_training_stop and control.should_save and not control.should_evaluate


def test_a_budget_must_be_positive():
    with pytest.raises(InputError, match="--max_train_seconds must be positive"):
        TimeBudget(0)


def test_train_stops_at_the_first_step_past_the_budget_and_the_last_model_is_evaluated(
    tiny_cross_encoder, tmp_path
):
    rows = [{"query": f"query {q}", "positive": f"answer to {q}", "negative": f"unrelated text {q} {n}", "score": 2.0}
            for q in range(6) for n in range(4)]  # fmt: skip
    data = tmp_path / "train_triplets.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    output = tmp_path / "model"
    summary = train.main([
        "--model_name_or_path", str(tiny_cross_encoder), "--train_data", str(data), "--output_dir", str(output),
        "--per_device_train_batch_size", "4", "--use_cpu", "--report_to", "none", "--disable_tqdm", "True",
        "--max_steps", "10", "--max_train_seconds", "1e-6",
    ])  # fmt: skip
    assert summary["steps"] == 1 and summary["stopped_by_time"] and not summary["stopped_early"]
    state = json.loads((output / "checkpoint-1" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "eval_loss" in entry] == [1]
    assert summary["best_checkpoint"].endswith("checkpoint-1")
    saved = json.loads((output / "checkpoint-1" / "trainer_state.json").read_text())["stateful_callbacks"]
    assert saved["TimeBudget"]["attributes"]["spent"] >= 1  # for a resume


# (--restore_callback_states_from_checkpoint: transformers would rebuild the budget from its saved state, anew)
@pytest.mark.parametrize("restore", [[], ["--restore_callback_states_from_checkpoint", "True"]])
def test_a_resumed_run_continues_its_budget_and_evaluates_at_each_tenth_of_its_time(tiny_cross_encoder, tmp_path, monkeypatch, restore):
    clock = FakeClock()

    class SecondPerStep(TimeBudget):  # every step takes one second of a 20 s budget
        def __init__(self, seconds):
            super().__init__(seconds, clock)

        def on_step_end(self, args, state, control, **kwargs):
            clock.now += 1.0
            return super().on_step_end(args, state, control, **kwargs)

    monkeypatch.setattr(train, "TimeBudget", SecondPerStep)
    rows = [{"query": f"query {q}", "positive": f"answer to {q}", "negative": f"unrelated text {q} {n}", "score": 2.0}
            for q in range(6) for n in range(4)]  # fmt: skip
    data = tmp_path / "train_triplets.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    output = tmp_path / "model"
    flags = ["--model_name_or_path", str(tiny_cross_encoder), "--train_data", str(data), "--output_dir", str(output),
             "--per_device_train_batch_size", "4", "--use_cpu", "--report_to", "none", "--disable_tqdm", "True",
             "--max_steps", "100", "--max_train_seconds", "20"]  # fmt: skip
    stop_before = 6
    original_step = train.DistillationTrainer.training_step

    def interrupt(self, *args, **kwargs):
        nonlocal stop_before
        stop_before -= 1
        if stop_before == 0:
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(train.DistillationTrainer, "training_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train.main(flags)  # stopped in step 6, after the checkpoint of step 5
    monkeypatch.setattr(train.DistillationTrainer, "training_step", original_step)
    summary = train.main([*flags, "--resume_from_checkpoint", "last", *restore])

    assert summary["stopped_by_time"] and (summary["resumed_from_step"], summary["steps"]) == (5, 19)
    state = json.loads((output / f"checkpoint-{summary['steps']}" / "trainer_state.json").read_text())
    # every 2 s of the 20 (not every 10 of the 100 planned steps), as an uninterrupted run evaluates
    assert [entry["step"] for entry in state["log_history"] if "eval_loss" in entry] == [1, 3, 5, 7, 9, 11, 13, 15,
                                                                                           17, 19]
