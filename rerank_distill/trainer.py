"""The trainer train.py runs: padding statistics of its forward passes, a wall-time budget
(--max_train_seconds), early stopping that survives a resume, and DistillationTrainer."""

from __future__ import annotations

import copy
import errno
import functools
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import SafetensorError
from sentence_transformers.cross_encoder import CrossEncoderTrainer
from sentence_transformers.cross_encoder.data_collator import CrossEncoderDataCollator
from torch import Tensor
from transformers import EarlyStoppingCallback, PreTrainedModel, Trainer, TrainerCallback, TrainerState
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy, TrainOutput

from rerank_distill.cli import stop_if_signalled
from rerank_distill.errors import InputError, first_line
from rerank_distill.jsonl import naming_file
from rerank_distill.long_texts import clip_long_texts
from rerank_distill.student import predicts_in_float32

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Padding statistics of the training forward passes
# ---------------------------------------------------------------------------------------------


@dataclass
class PaddingStats:
    """Token counts over the training forward passes of one process (evaluation is not counted)."""

    max_length: int | None = None
    pairs: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    pairs_at_max_length: int = 0  # filled the limit: cut, or (rarely) exactly that long

    def add(self, attention_mask: Tensor) -> None:
        real_per_pair = attention_mask.sum(dim=1)
        self.pairs += attention_mask.shape[0]
        self.real_tokens += int(real_per_pair.sum())
        self.padded_tokens += attention_mask.numel()
        if self.max_length:
            self.pairs_at_max_length += int((real_per_pair >= self.max_length).sum())

    def since(self, earlier: PaddingStats) -> dict[str, float]:
        """Mean real and padded tokens per pair of the passes after ``earlier`` (a copy taken then)."""
        pairs = self.pairs - earlier.pairs
        if pairs <= 0:
            return {}
        return {"tokens_per_pair": round((self.real_tokens - earlier.real_tokens) / pairs, 1),
                "padded_tokens_per_pair": round((self.padded_tokens - earlier.padded_tokens) / pairs, 1)}

    def summary(self) -> dict[str, float]:
        """Mean real and padded tokens per pair (padded = the batch's sequence length), the share
        of padding (what length-grouped batches shrink) and the share of pairs that filled
        ``max_length``, whose text beyond it the student never saw."""
        pairs = max(self.pairs, 1)
        return {
            "mean_real_tokens": round(self.real_tokens / pairs, 1),
            "mean_padded_tokens": round(self.padded_tokens / pairs, 1),
            "padding_share": round(1 - self.real_tokens / self.padded_tokens, 3) if self.padded_tokens else 0.0,
            "max_length": self.max_length,
            "share_at_max_length": round(self.pairs_at_max_length / pairs, 3),
        }


def track_padding(model) -> PaddingStats:
    """Count the real and padded tokens of every training-mode forward pass of ``model``, whatever
    the loss (a forward pre-hook reads the attention mask in the features the loss tokenised,
    a transformers BatchEncoding), and the pairs that filled the model's ``max_length``."""
    stats = PaddingStats(max_length=getattr(model, "max_seq_length", None))

    def count(module, args) -> None:
        features = args[0] if args else None
        if module.training and isinstance(features, Mapping) and "attention_mask" in features:
            stats.add(features["attention_mask"])

    model.register_forward_pre_hook(count)
    return stats


def final_logged_loss(log_history: list[dict], share: float = 0.1) -> float | None:
    """Mean of the last ``share`` of the logged training losses: where training ended up, less
    noisy than the last batch alone."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    if not losses:
        return None
    tail = losses[-max(1, round(share * len(losses))) :]
    return float(sum(tail) / len(tail))


def run_summary(trainer: DistillationTrainer, result, seconds: float, start_step: int, early_stopping: bool) -> dict:
    """What a finished ``trainer.train()`` did: steps, why it stopped, examples per second (all
    processes'), losses, the checkpoint picked, and the padding behind the speed. ``steps`` is the
    whole run's; a resumed run's train_loss, examples, seconds and padding are its own steps' only
    (after ``start_step``), as the Trainer's training_loss is."""
    state, args = trainer.state, trainer.args
    stopped_by_time = trainer.time_budget is not None and trainer.time_budget.stopped_training
    examples_trained = trainer.examples_trained * args.world_size  # this process's count, scaled
    padding = trainer.padding or PaddingStats()
    evaluated = args.eval_strategy != "no"
    return {
        "processes": args.world_size,
        "distributed_type": trainer.accelerator.distributed_type.value,  # NO, MULTI_GPU (DDP), FSDP, DEEPSPEED, ...
        "steps": state.global_step,
        "stopped_early": early_stopping and state.global_step < state.max_steps and not stopped_by_time,
        "stopped_by_time": stopped_by_time,
        "resumed_from_step": start_step,
        "examples_trained": examples_trained,
        "seconds": round(seconds, 3),  # (benchmarks divide by it)
        "examples_per_second": round(examples_trained / max(seconds, 1e-9), 1),
        "train_loss": result.training_loss,
        "final_loss": final_logged_loss(state.log_history),
        "metric_for_best_model": args.metric_for_best_model if evaluated else None,
        "best_checkpoint": state.best_model_checkpoint,
        "best_metric": state.best_metric,
        "final_model": ("best checkpoint" if state.best_model_checkpoint and args.load_best_model_at_end
                        and not trainer.best_model_error else "last step"),
        "best_model_error": trainer.best_model_error,
        **padding.summary(),  # tokens per pair: what the speed levers change
        # pairs through the model per example: 2 for a triplet, fewer where its batch repeats a pair (scored once)
        "pairs_scored_per_example": (round(padding.pairs / trainer.examples_trained, 2)
                                     if padding.pairs and trainer.examples_trained else None),
    }


def check_weights_finite(trainer: DistillationTrainer) -> None:
    """InputError where the model holds a NaN or infinite weight (a diverged run). The Trainer
    logs a NaN step's loss as its logging window's mean (logging_nan_inf_filter), so nothing else
    tells. Called on every process at once (FSDP and DeepSpeed hold shards): all of them stop, or none."""
    broken = sum(int(not torch.isfinite(weights).all()) for weights in trainer.model.parameters())
    # shards of the weights are added up; under DDP every process holds them all, counted once
    broken = int(trainer.accelerator.reduce(torch.tensor(broken, device=trainer.args.device),
                                            "sum" if trainer.sharded else "max"))
    if broken:
        raise InputError(
            f"training diverged: {broken} of the model's weight tensors are not finite (NaN or inf) at step "
            f"{trainer.state.global_step}, so neither a checkpoint of it nor a final model is saved; start again "
            "(--overwrite_output_dir) with a lower --learning_rate (or bf16 instead of fp16)",
            trainer.args.output_dir)


class DivergenceCheck(TrainerCallback):
    """Stop a run whose weights went NaN or infinite at its next log, evaluation or checkpoint
    (each step that has one, on every process alike), before that checkpoint is written, rather
    than train on for hours and save NaN checkpoints. (fp16's loss scaler skips a step whose
    gradients overflow; in fp32 or bf16 one such step makes every weight NaN.)"""

    def __init__(self, trainer: DistillationTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_log or control.should_evaluate or control.should_save:
            check_weights_finite(self.trainer)


class SignalledStop(TrainerCallback):
    """Stop at the next step a run whose stop signal Python dropped (see cli.stop_if_signalled)."""

    def on_step_end(self, args, state, control, **kwargs):
        stop_if_signalled()


def summary_message(summary: dict, output_dir: str) -> str:
    """The run's last log line, from ``run_summary``'s dict."""
    ended = ", stopped early" if summary["stopped_early"] else ", time budget spent" if summary["stopped_by_time"] else ""
    final = (f" = best checkpoint {summary['best_checkpoint']} ({summary['metric_for_best_model']} "
             f"{summary['best_metric']:.4g})" if summary["final_model"] == "best checkpoint" else
             " (last step: the best checkpoint failed to load)" if summary["best_model_error"] else " (last step)")
    # (a run that only saved the final model of an ended one trained no pair: no tokens to tell of)
    tokens = ""
    if summary["mean_padded_tokens"]:
        tokens = (f"; tokens per pair {summary['mean_real_tokens']:.1f} real of {summary['mean_padded_tokens']:.1f} "
                  f"padded ({100 * summary['padding_share']:.0f}% padding){_cut_note(summary)}")
    steps, this_run = summary["steps"], summary["steps"] - summary["resumed_from_step"]
    return (f"done: {steps} step{'s' if steps != 1 else ''} ({this_run} this run{ended}) in "
            f"{summary['seconds']:.1f} s, {summary['examples_per_second']:.1f} examples/s on "
            f"{summary['processes']} process(es){tokens}; final model {output_dir}{final}")


def _cut_note(summary: dict) -> str:
    share = summary.get("share_at_max_length") or 0
    if not share:
        return ""
    return (f"; {100 * share:.1f}% of pairs filled --max_length {summary['max_length']} and were cut there "
            "(raise it if their ends matter)")


# ---------------------------------------------------------------------------------------------
# A wall-time budget: --max_train_seconds
# ---------------------------------------------------------------------------------------------


class TimeBudget(TrainerCallback, ExportableState):
    """Keep training within ``seconds`` of wall time from its start (``start``, or the trainer's
    on_train_begin), evaluations and checkpoints included.

    Training stops at the first step end from which the longest step-to-step interval seen so
    far (a step plus an evaluation and a checkpoint, once one has happened) would reach the
    budget, with a last evaluation and checkpoint, so the last model can still be picked as the
    best and the run ends within the budget rather than one evaluation past it.

    The learning-rate schedule follows whichever runs out first, steps or time (``stretch``):
    the scheduler is shown the step matching ``max(steps done, share of the budget spent)`` of
    the planned run, so a warmup-then-decay schedule still reaches its end when time, not the
    step count, ends training, instead of stopping mid-decay at a high rate. So do evaluations
    and checkpoints given as shares of the run (train.py's default: every tenth): each falls due
    when the steps or the time reach its share, whichever first, so a run the budget cuts short
    still evaluates that many times instead of once or twice.
    """

    def __init__(self, seconds: float, clock=time.perf_counter) -> None:
        if not seconds > 0:
            raise InputError(f"--max_train_seconds must be positive, got {seconds}")
        self.seconds, self.clock = seconds, clock
        self.started: float | None = None
        self.last_step_end: float | None = None
        self.longest_interval = 0.0  # seconds between two step ends, evaluations and checkpoints included
        # share of the budget that will be spent once the next step ends, measured at the last step
        # end and the same on every process
        self.spent = 0.0
        self.stopped_training = False
        # evaluations and checkpoints due so far, by kind ("eval", "save"), where their interval is a share
        self.shares_due: dict[str, int] = {}

    @classmethod
    def saved(cls, state: TrainerState) -> dict | None:
        """What a checkpoint's ``state`` kept of a budget (``{"args", "attributes"}``, see ``state``),
        or None where it was saved without one."""
        return (state.stateful_callbacks or {}).get(cls.__name__)

    def start(self, resumed: TrainerState | None = None) -> None:
        """Start the clock now (train.py calls it just before trainer.train(), whose time it reports),
        or, resuming from a checkpoint (its ``resumed`` state) saved with a budget, as far back as
        that run had spent, so a resumed run neither gets the budget again nor restarts the
        schedule's decay."""
        self.started = self.last_step_end = self.clock()
        if resumed is None:
            return
        saved = self.saved(resumed)
        if saved:
            self.started -= saved["attributes"]["seconds_spent"]
            self.longest_interval = saved["attributes"]["longest_interval"]
            # the share of the budget it was saved under, as a share of this one (a raised budget: smaller)
            self.spent = saved["attributes"]["spent"] * saved["args"]["seconds"] / self.seconds
        else:
            logger.warning("--max_train_seconds: the checkpoint at step %d was saved without a budget, so the budget "
                           "counts from now", resumed.global_step)

    def state(self) -> dict:
        """What each checkpoint's trainer_state.json keeps of the budget (the Trainer asks every
        ExportableState callback as it saves), read back by ``start`` on a resume."""
        return {"args": {"seconds": self.seconds},
                "attributes": {"seconds_spent": 0.0 if self.started is None else self.clock() - self.started,
                               "spent": self.spent,
                               "longest_interval": self.longest_interval,
                               "stopped_training": self.stopped_training}}  # fmt: skip

    def stretch(self, scheduler, total_steps: int) -> bool:
        """Make a LambdaLR schedule (every schedule transformers builds is one) planned for
        ``total_steps`` follow the time budget too; False (and no change) for another kind."""
        if not hasattr(scheduler, "lr_lambdas"):
            return False

        def follow_time(planned):
            def rate(step: int) -> float:
                return planned(min(total_steps, max(step, math.ceil(self.spent * total_steps))))

            return rate

        scheduler.lr_lambdas = [follow_time(planned) for planned in scheduler.lr_lambdas]
        return True

    def on_train_begin(self, args, state, control, **kwargs):
        if self.started is None:
            self.start()
        if state is not None:  # (resumed: those the run had reached are past, not due)
            self.shares_due = {kind: self._due(state, kind, share) for kind, share in self._interval_shares(args).items()}

    @staticmethod
    def _interval_shares(args) -> dict[str, float]:
        """The evaluation and save intervals given as shares of the run (a float below 1), by kind."""
        shares = {}
        for kind, strategy in (("eval", args.eval_strategy), ("save", args.save_strategy)):
            steps = getattr(args, f"{kind}_steps", None)
            if strategy == "steps" and steps is not None and 0 < steps < 1:
                shares[kind] = steps
        return shares

    def _due(self, state: TrainerState, kind: str, share: float) -> int:
        """How many ``kind`` ("eval", "save") intervals of ``share`` the run has reached: by the
        Trainer's count of steps (every ceil(share x planned steps)) or by the budget spent, whichever is more."""
        return max(state.global_step // getattr(state, f"{kind}_steps"), math.floor(self.spent / share + 1e-9))

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        self.longest_interval = max(self.longest_interval, now - self.last_step_end)
        self.last_step_end = now
        self.spent = (now - self.started + self.longest_interval) / self.seconds
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # the slowest process's clock decides, so all stop at the same step with the same rate
            spent = torch.tensor([self.spent], device=args.device)
            torch.distributed.all_reduce(spent, op=torch.distributed.ReduceOp.MAX)
            self.spent = float(spent)
        # (--eval_delay skips the evaluations that fall due before it, as the Trainer's own schedule does)
        reached = (state.epoch or 0) if args.eval_strategy == "epoch" else state.global_step
        evaluation_delayed = reached < args.eval_delay
        for kind, share in self._interval_shares(args).items():
            due, made = self._due(state, kind, share), self.shares_due.get(kind, 0)
            if state.global_step < state.max_steps:  # (the planned end's own stays as the Trainer set it)
                # the Trainer's own (by step count) is kept only where the time has not already made it
                setattr(control, "should_evaluate" if kind == "eval" else "should_save",
                        due > made and not (kind == "eval" and evaluation_delayed))
            self.shares_due[kind] = max(due, made)
        if self.spent >= 1 and not control.should_training_stop:
            control.should_training_stop = self.stopped_training = True
            control.should_evaluate = control.should_evaluate or (args.eval_strategy != "no" and not evaluation_delayed)
            control.should_save = control.should_save or args.save_strategy not in ("no", "best")
        return control


# ---------------------------------------------------------------------------------------------
# Early stopping (--early_stopping_patience)
# ---------------------------------------------------------------------------------------------


def saved_early_stopping(state: TrainerState) -> dict | None:
    """What a checkpoint's ``state`` kept of early stopping (``{"args": {"early_stopping_patience",
    ...}, "attributes": {"early_stopping_patience_counter"}}``), or None."""
    saved = state.stateful_callbacks or {}
    return saved.get(EarlyStopping.__name__) or saved.get(EarlyStoppingCallback.__name__)  # (the latter: older runs)


class EarlyStopping(EarlyStoppingCallback):
    """transformers' early stopping after ``patience`` evaluations without a better metric, its
    count carried on from the checkpoint a run resumes from (``resumed``), so the resumed run stops
    where an uninterrupted one would, and a checkpoint saved where it stops the run (unless
    --save_strategy is no or best), so that a rerun finds the run ended there rather than resuming an
    earlier checkpoint to train the same steps again. (transformers restores the count only with
    --restore_callback_states_from_checkpoint, which also brings back the saved patience.)"""

    # (keyword names as transformers' own: --restore_callback_states_from_checkpoint builds it from its saved args)
    def __init__(self, early_stopping_patience: int = 1, resumed: TrainerState | None = None,
                 early_stopping_threshold: float | None = 0.0) -> None:
        super().__init__(early_stopping_patience, early_stopping_threshold)
        # the best metric of every evaluation so far, a checkpoint's or not: the state's best_metric is the best
        # checkpoint's only (DistillationTrainer._determine_best_metric)
        self.best_evaluation: float | None = None
        saved = saved_early_stopping(resumed) if resumed is not None else None
        if saved:
            self.early_stopping_patience_counter = saved["attributes"]["early_stopping_patience_counter"]
            self.best_evaluation = saved["attributes"].get("best_evaluation", resumed.best_metric)  # (older runs)

    def check_metric_value(self, args, state, control, metric_value):
        best_checkpoint, state.best_metric = state.best_metric, self.best_evaluation
        try:
            super().check_metric_value(args, state, control, metric_value)
        finally:
            state.best_metric = best_checkpoint
        better = np.greater if args.greater_is_better else np.less
        if self.best_evaluation is None or better(metric_value, self.best_evaluation):
            self.best_evaluation = float(metric_value)

    def state(self) -> dict:
        saved = super().state()
        saved["attributes"]["best_evaluation"] = self.best_evaluation
        return saved

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if self.early_stopping_patience_counter >= self.early_stopping_patience:
            control.should_save = control.should_save or args.save_strategy not in ("no", "best")


@dataclass
class ClippingDataCollator(CrossEncoderDataCollator):
    """CrossEncoderDataCollator whose batches carry each text cut to what the model reads of it
    (see long_texts), so a 20 MB document is not tokenized whole by the loss in every batch it is
    in."""

    tokenizer: object = None
    max_tokens: int | None = None

    def __call__(self, features: list[dict]) -> dict:
        batch = super().__call__(features)
        if self.tokenizer is not None:
            for name, rows in batch.items():
                if name != "label":
                    batch[name] = clip_column(self.tokenizer, rows, self.max_tokens)
        return batch


def clip_column(tokenizer, rows, max_tokens: int | None):
    """A batch's column with its texts cut by clip_long_texts: a string a row, or a list of them
    (listwise groups); any other column as it is."""
    if not isinstance(rows, list) or not rows:
        return rows
    if all(isinstance(row, str) for row in rows):
        return clip_long_texts(tokenizer, rows, max_tokens)
    if all(isinstance(row, list) and all(isinstance(text, str) for text in row) for row in rows):
        texts = iter(clip_long_texts(tokenizer, [text for row in rows for text in row], max_tokens))
        return [[next(texts) for _ in row] for row in rows]
    return rows


class DistillationTrainer(CrossEncoderTrainer):
    """CrossEncoderTrainer that counts the examples it trains on (``examples_trained``, this
    process's), keeps to an optional ``time_budget`` (its learning-rate schedule fitted to it, see
    TimeBudget), has three fixes for torchrun (no change on one process), two for sharded
    training with FSDP or DeepSpeed, one for --data_seed and one for training a finished run further.

    - Only the main process writes checkpoints and the final model: transformers 5 calls
      ``_save`` on every process and checks ``should_save`` inside it, but sentence-transformers'
      ``_save`` override assumes it runs on the main process only, so all processes would write
      the same files at once.
    - Evaluation sees every eval example: sentence-transformers sets dataloader_drop_last so that
      every process gets the same number of full training batches, which for evaluation would
      drop the last batches (or all of a small eval set, leaving no eval_loss to pick the best
      checkpoint by and failing the run). Accelerate instead pads the last eval batch with
      repeated examples; as the loss is a batch mean, that one batch's share of eval_loss also
      averages in the repeats.
    - An epoch resumed inside draws its batches in that epoch's order (_run_epoch).
    - Saving writes the full weights the sharded trainer gathers, not the live shards (_save).
    - Resuming and loading the best checkpoint go through transformers' FSDP / DeepSpeed loaders
      (_load_from_checkpoint); a best checkpoint that fails to load is reported, never claimed.
    - Batches carry texts cut to what the model reads of them (ClippingDataCollator).
    - ``--data_seed`` orders the batches where it is given (sentence-transformers passes ``--seed``).
    - A finished run trained further trains its first new step at the longer schedule's rate, not
      at the rate the old schedule ended at (_load_optimizer_and_scheduler).
    - A resumed run does not evaluate again at its start under --eval_on_start (train).
    - Only an evaluation with a checkpoint can be the best (_determine_best_metric).
    - The evaluator's scores are float32 under --bf16 on every process: sentence-transformers has the
      other torchrun processes score shares of its predict calls, outside its float32 context. So are
      the model card's usage-example scores, which would otherwise differ from the saved model's.
    """

    data_collator_class = ClippingDataCollator

    def __init__(self, *args, time_budget: TimeBudget | None = None, padding: PaddingStats | None = None,
                 **kwargs) -> None:
        callbacks = [*(kwargs.pop("callbacks", None) or []), *([time_budget] if time_budget else [])]
        self.train_batch_sampler = None  # set as the Trainer builds it: see _run_epoch
        super().__init__(*args, callbacks=callbacks, **kwargs)
        self.add_callback(DivergenceCheck(self))
        self.add_callback(SignalledStop())
        # the selection MAP in float32 on every torchrun process (predicts_in_float32), and the model card's usage
        # example scored as the saved float32 weights score it when loaded, not under --bf16's autocast
        predicts_in_float32(self.model)
        self.examples_trained = 0
        self.time_budget = time_budget
        self.best_model_error: str | None = None
        self.padding = padding
        self._padding_at_last_log = copy.copy(padding)

    def add_model_card_callback(self, default_args_dict: dict) -> None:
        # The model card tokenizes the first rows of each column for its statistics (through
        # model.preprocess) and keeps five pairs to score as its usage example when the model is saved:
        # both get texts cut as the batches' are, so neither tokenizes a 20 MB document whole.
        model = self.model
        preprocess = model.preprocess

        def preprocess_clipped(texts, *args, **kwargs):
            return preprocess(clip_column(model.tokenizer, texts, model.max_seq_length), *args, **kwargs)

        model.preprocess = preprocess_clipped
        try:
            super().add_model_card_callback(default_args_dict)
        finally:
            del model.preprocess
        card = model.model_card_data
        if getattr(card, "usage_examples", None):
            card.usage_examples = [clip_column(model.tokenizer, list(pair), model.max_seq_length)
                                   for pair in card.usage_examples]

    def get_data_collator(self, model, args, processing_class=None) -> CrossEncoderDataCollator:
        collator = super().get_data_collator(model, args, processing_class)
        if isinstance(collator, ClippingDataCollator):
            collator.tokenizer, collator.max_tokens = model.tokenizer, model.max_seq_length
        return collator

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        # --eval_on_start evaluates the untrained model at step 0; the Trainer does it on a resume too, at the
        # checkpoint's step, evaluated already: the log history got that step twice, and early stopping counted
        # it as one evaluation without a better model, so the resumed run stopped sooner than an uninterrupted one
        eval_on_start = self.args.eval_on_start
        if resume_from_checkpoint:
            self.args.eval_on_start = False
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self.args.eval_on_start = eval_on_start

    def _determine_best_metric(self, metrics: dict[str, float], trial) -> bool:
        # Only an evaluation with a checkpoint can become the final model. Counted too, one between checkpoints
        # (--eval_steps finer than --save_steps) held a best metric no checkpoint beat, and the last step became the
        # model instead of the best checkpoint saved. (--save_strategy best saves at each new best; no saves none.)
        if self.args.save_strategy not in (SaveStrategy.BEST, SaveStrategy.NO) and not self.control.should_save:
            return False
        return super()._determine_best_metric(metrics, trial)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Each training log also says how many real and padded tokens a pair carried since the
        last one: what length grouping and ``--pairs_per_forward`` change, as training goes."""
        if self.padding is not None and "loss" in logs:
            logs.update(self.padding.since(self._padding_at_last_log))
            self._padding_at_last_log = copy.copy(self.padding)
        if self.eval_dataset is None:  # the evaluator alone: sentence-transformers times an empty loop, "0 samples/s"
            for key in ("eval_samples_per_second", "eval_steps_per_second"):
                logs.pop(key, None)
        super().log(logs, start_time)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        fresh = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if fresh and self.time_budget is not None and not self.time_budget.stretch(scheduler, num_training_steps):
            logger.warning("--max_train_seconds: the %s schedule is not a LambdaLR, so it is not fitted to the time "
                           "budget (training still stops when the budget is spent)", type(scheduler).__name__)
        return scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.examples_trained += len(inputs["query"])  # every kind's first column
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def check_optimizer(self) -> None:
        """InputError where --optim needs a package that is not installed (bitsandbytes, galore_torch,
        schedulefree, ...), which the Trainer finds only as training starts."""
        try:
            self.get_optimizer_cls_and_kwargs(self.args, self.model)
        except ImportError as error:
            raise InputError(f"--optim {self.args.optim.value}: {error}") from None

    def check_scheduler(self) -> None:
        """InputError where --lr_scheduler_type cannot be built with --lr_scheduler_kwargs
        (cosine_with_min_lr without min_lr, warmup_stable_decay without num_decay_steps, a keyword
        the schedule does not take), which the Trainer finds only as training starts: it is built
        here, as the Trainer builds it, for a stand-in optimizer."""
        from transformers import get_scheduler

        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        try:
            get_scheduler(self.args.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=1, num_training_steps=10,
                          scheduler_specific_kwargs=self.args.lr_scheduler_kwargs)
        except (TypeError, ValueError) as error:
            raise InputError(f"--lr_scheduler_type {self.args.lr_scheduler_type.value} with --lr_scheduler_kwargs "
                             f"{json.dumps(self.args.lr_scheduler_kwargs or {})}: {first_line(error)}") from None

    @property
    def sharded(self) -> bool:
        """FSDP or DeepSpeed: the live model holds shards, and checkpoints keep them in files of their own."""
        return self.is_fsdp_enabled or self.is_deepspeed_enabled

    def finish_ended_run(self, checkpoint: str, state: TrainerState) -> TrainOutput:
        """What ``train()`` leaves where the run already ended at ``checkpoint`` (its loaded
        ``state``) but its final save was cut short: that checkpoint's state and weights, then the
        best checkpoint's where the run keeps the best (``train()`` would take one step more first).
        The result's training_loss is None: the loss of the steps behind the checkpoint is in its
        log history only."""
        self.state = state
        if self.time_budget is not None and (budget := TimeBudget.saved(self.state)):  # did the budget end the run?
            self.time_budget.stopped_training = budget["attributes"].get("stopped_training", False)
        self._load_from_checkpoint(checkpoint)
        if self.args.load_best_model_at_end and self.state.best_model_checkpoint:
            self._load_best_model()
        return TrainOutput(self.state.global_step, None, {})

    def _load_callback_state(self) -> None:
        # --restore_callback_states_from_checkpoint rebuilds each saved callback anew from its saved state; the
        # time budget restores itself (TimeBudget.start), and a rebuilt one would start the budget again, out of
        # reach of the schedule stretched to it and of the summary
        name = type(self.time_budget).__name__
        saved = self.state.stateful_callbacks.pop(name, None) if self.time_budget is not None else None
        try:
            super()._load_callback_state()
        finally:
            if saved is not None:  # (the checkpoints' states keep a place for it)
                self.state.stateful_callbacks[name] = saved
        # A resume may add --max_train_seconds or --early_stopping_patience to a run saved without them; the
        # Trainer's checkpoint save updates only the callback states the resumed one holds (KeyError for others)
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ExportableState):
                self.state.stateful_callbacks.setdefault(type(callback).__name__, callback.state())

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        # A finished run trained further (a larger --max_steps or --num_train_epochs) gets a longer
        # schedule, but the optimizer comes back with the rate the old one had reached (0 at its
        # end), which the scheduler replaces only after the first new step: set the new schedule's
        # rate now. On a plain resume it is the rate already there.
        scheduler = self.lr_scheduler
        if checkpoint is not None and isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            rates = [base * factor(scheduler.last_epoch)
                     for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
            for group, rate in zip(self.optimizer.param_groups, rates):
                group["lr"] = rate
            scheduler._last_lr = rates

    def _load_from_checkpoint(self, checkpoint: str, model=None) -> None:
        # sentence-transformers reloads its own checkpoint layout into the live model, which cannot
        # take sharded parameters (and it takes one argument where transformers passes two for FSDP);
        # transformers' own loader reads the FSDP / DeepSpeed files.
        if self.sharded:
            Trainer._load_from_checkpoint(self, checkpoint, model)
        else:
            super()._load_from_checkpoint(checkpoint)

    def _load_best_model(self) -> None:
        # sentence-transformers logs a failed load and goes on, so the run would report a best
        # checkpoint it does not hold; the failure is kept for the summary instead.
        checkpoint = self.state.best_model_checkpoint
        logger.info("loading the best checkpoint %s (%s %.4g)", checkpoint, self.args.metric_for_best_model,
                    self.state.best_metric)
        try:
            if self.sharded:
                Trainer._load_best_model(self)
            else:
                self._load_from_checkpoint(checkpoint)
                self.model.model_card_data.set_best_model_step(int(checkpoint.rsplit("-", 1)[-1]))
        except Exception as error:  # training is over: keep the last step rather than lose the run
            self.best_model_error = f"{type(error).__name__}: {error}"
            logger.error("could not load the best checkpoint %s (%s): the final model is the last step",
                         checkpoint, self.best_model_error)

    def _save_checkpoint(self, model, trial) -> None:
        folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        with save_failures_named(folder):
            super()._save_checkpoint(model, trial)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        with save_failures_named(output_dir or self.args.output_dir):
            super().save_model(output_dir, _internal_call)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if not self.args.should_save:
            return
        if state_dict is None:
            super()._save(output_dir)
            return
        # FSDP and DeepSpeed hand over the full weights gathered from every process, but
        # sentence-transformers' _save ignores them and writes the live model, whose tensors are
        # shards (FSDP: safetensors fails on them; ZeRO-3: empty placeholders).
        with saving_weights(self.model, state_dict):
            super()._save(output_dir)

    def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        if dataset is not self.train_dataset:
            drop_last = False
        # sentence-transformers seeds the batches with --seed; --data_seed, where given, is the data order's
        seed = self.args.data_seed if self.args.data_seed is not None else seed
        sampler = super().get_batch_sampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
        if dataset is self.train_dataset:
            self.train_batch_sampler = sampler
        return sampler

    def _run_epoch(self, *args, **kwargs):
        # The Trainer's set_epoch reaches the batch sampler through accelerate's wrappers, except in an
        # epoch resumed under torchrun: there the batch-skipping wrapper around the per-process one hides
        # it, and the resumed epoch would replay the first epoch's order (the run would differ from an
        # uninterrupted one). Setting it here, before the epoch's batches are drawn, covers every case.
        if self.train_batch_sampler is not None and "epoch" in kwargs:
            self.train_batch_sampler.set_epoch(kwargs["epoch"])
        return super()._run_epoch(*args, **kwargs)


def end_process_group() -> None:
    """Under torchrun, wait for every process to finish its run, then close the process group.
    A worker that exits with it open may abort in the interpreter's teardown (gloo's threads still
    hold tensors: "terminate called without an active exception"), and torchrun then kills the
    others, the main one perhaps while it writes the final model. Only after a run that succeeded:
    a process that failed never reaches the barrier, and closing the group there could hang."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# Free space below which a save that failed without saying why is taken to have found the disk full
NEARLY_FULL = 2**20


@contextmanager
def save_failures_named(folder: str) -> Iterator[None]:
    """A save into ``folder`` (a checkpoint, the final model) that the disk could not hold stops
    with an OSError naming the folder, which train.py reports in one line, and not with the
    traceback of the library that found it: safetensors raises its own error ('... (os error 28)'),
    torch.save a RuntimeError without the system's reason ('unexpected pos'; taken for a full disk
    where under NEARLY_FULL bytes are free), transformers' JSON writes an OSError naming no file."""
    try:
        with naming_file(folder):
            yield
    except (RuntimeError, SafetensorError) as error:
        if found := re.search(r"\(os error (\d+)\)", str(error)):
            number = int(found.group(1))
        elif _free_space(folder) < NEARLY_FULL:
            number = errno.ENOSPC
        else:
            raise
        raise OSError(number, os.strerror(number), folder) from error


def _free_space(folder: str) -> int:
    """Bytes free to this user on the file system of ``folder`` (or of its nearest existing parent)."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


@contextmanager
def saving_weights(model: torch.nn.Module, state_dict: Mapping[str, Tensor]) -> Iterator[None]:
    """While open, the transformers models inside ``model`` save_pretrained the weights of
    ``state_dict`` (keys as in ``model.state_dict()``) instead of their own tensors."""
    outermost = {}
    for prefix, module in model.named_modules():
        if isinstance(module, PreTrainedModel) and not any(prefix.startswith(f"{p}.") for p in outermost):
            outermost[prefix] = module
    covered = {key for key in state_dict for prefix in outermost if key.startswith(f"{prefix}.")}
    if uncovered := sorted(set(state_dict) - covered):
        raise RuntimeError(f"cannot save sharded weights outside a transformers model: {uncovered[:5]}")
    for prefix, module in outermost.items():
        own = {key[len(prefix) + 1 :]: value for key, value in state_dict.items() if key.startswith(f"{prefix}.")}
        module.save_pretrained = functools.partial(type(module).save_pretrained, module, state_dict=own)
    try:
        yield
    finally:
        for module in outermost.values():
            del module.save_pretrained
