"""train.py's command line: the training flags it adds unless the user passes them, their parsing
with its own, the flags it refuses before anything is read, and how the final model is picked
(the evaluations, the metric, the queries held out for them)."""

from __future__ import annotations

import json
import logging

from huggingface_hub import constants
from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations
from transformers.trainer_utils import IntervalStrategy

from rerank_distill.cli import check_finite, check_minimums, parse_args
from rerank_distill.errors import InputError
from rerank_distill.losses import LOSSES
from rerank_distill.run_folder import check_resumed_hold_out, check_resumed_selection
from rerank_distill.selection import (
    EVALUATION_FLAGS,
    TRAINER_EVALUATION_FLAGS,
    CheckpointSelection,
    load_training_data,
    small_selection_warning,
)

logger = logging.getLogger(__name__)


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
    """Training flags train.py adds after the user's own, for those the user did not pass.

    Evaluation and checkpoints run on one schedule (10 times per run unless set), the best
    checkpoint on the held-out queries becomes the final model (set_best_metric names the
    metric once the data are read), and only it and the latest checkpoint are kept. A flag the
    user passed is never changed; the other member of a pair (eval/save strategy, eval/save
    steps) follows it so that load_best_model_at_end stays valid.
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


def parse_training_args(script_arguments: type, description: str, argv: list[str]):
    """train.py's command line: ``(script arguments, CrossEncoderTrainingArguments, the flags the
    user passed)``, with default_training_flags after the user's own (so argparse reports a bad value on the flag
    the user wrote, not on the other half of its pair that copied it); InputError for a flag
    combination transformers refuses, or for a missing or empty --output_dir."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments

    passed = passed_flags(argv)
    try:  # transformers checks flag combinations (e.g. mismatched strategies) with ValueError
        script, training = parse_args(
            (script_arguments, CrossEncoderTrainingArguments), description, argv + default_training_flags(passed),
            help_overrides={
                "resume_from_checkpoint": "Continue an interrupted run: a checkpoint folder, or last for the newest "
                "complete checkpoint-N in --output_dir. It must keep the run's data, model, loss and optimiser "
                "settings (its args.json); limits may be raised, speed flags changed.",
                "metric_for_best_model": "What picks the best checkpoint; unset, train.py sets it from "
                "--selection_metric: eval_selection_map (held-out MAP) or eval_loss.",
                "output_dir": "Required: where the final model, its checkpoints, args.json and training_summary.json "
                "go.",
                "batch_sampler": "sentence-transformers' batch sampler (one of the choices above). "
                "Unset, train.py's --batch_grouping chooses the batches (default length: examples of similar length); "
                "given, it replaces --batch_grouping.",
                "seed": "Random seed set at the beginning of training; here it also picks which training queries are "
                "held out (--eval_share) and a new relevance head's first weights.",
                "train_sampling_strategy": "Not read here: sentence-transformers batches with its own sampler, which "
                "--batch_grouping (or --batch_sampler) chooses.",
            },
            shown_defaults=default_training_values(),
        )
    except json.JSONDecodeError as error:  # a dict flag's value (--lr_scheduler_kwargs '{...}'), read as JSON
        named = [f"--{name} {value}" for name, value in passed.items() if (value or "").lstrip().startswith("{")]
        raise InputError(f"{' or '.join(named) or 'a dict flag'}: not JSON ({error})") from None
    except ValueError as error:
        raise InputError(" ".join(str(error).split())) from None  # one line (transformers lists what differs)
    if "output_dir" not in passed or not training.output_dir:  # (an empty one: --output_dir "$OUT" with OUT unset)
        raise InputError("--output_dir is required (the final model and checkpoints go there)")
    return script, training, passed


# How default_training_flags' value of a flag follows the other of its pair where the user passes that one (for --help)
FOLLOWS_ITS_PAIR = {
    "eval_strategy": ", or --save_strategy's where that is given and is not best or no",
    "save_strategy": ", or --eval_strategy's where that is given and is not no",
    "eval_steps": ", or --save_steps' where that is given",
    "save_steps": ", or --eval_steps' where that is given",
    "load_best_model_at_end": " where evaluations run and checkpoints follow them: one strategy for both, or "
                              "--save_strategy best; else False",
}


def default_training_values() -> dict[str, str]:
    """What default_training_flags sets where the user passes nothing, by field name (for --help), with
    how a flag of a pair follows the other where the user passes that (FOLLOWS_ITS_PAIR)."""
    flags = default_training_flags({})
    return {flag.removeprefix("--"): value + FOLLOWS_ITS_PAIR.get(flag.removeprefix("--"), "")
            for flag, value in zip(flags[::2], flags[1::2])}


def load_data_and_selection(script, training, passed: dict[str, str | None],
                            resume: str | None) -> tuple[str, CheckpointSelection]:
    """Read train.py's data and settle how its final model is picked: the training data's kind and
    its train / eval / selection split (selection.load_training_data), with ``training``'s flags
    set to match (no evaluations where no checkpoint is picked from them, else the metric that
    picks one) and checked against the run the checkpoint ``resume`` belongs to. ``passed``: the
    flags given on the command line."""
    evaluate = training.eval_strategy != "no"
    must_evaluate = script.early_stopping_patience > 0 or bool(EVALUATION_FLAGS & passed.keys())
    if evaluate and training.save_strategy == "no" and script.selection_metric == "auto" and not must_evaluate:
        evaluate = False  # no checkpoint to pick from: queries held out would only be lost to training
    kind, selection = load_training_data(script, training, evaluate, must_evaluate)
    if resume is not None:  # (a query held out by one half of the run, trained on by the other)
        check_resumed_hold_out(resume, selection.held_out)
    if training.eval_strategy != "no" and selection.metric == "last":  # (evaluate may be False by now, the flag not)
        if unread := [f"--{name}" for name in TRAINER_EVALUATION_FLAGS if name in passed]:
            logger.warning("%s %s not read: best checkpoint %s", ", ".join(unread), "are" if unread[1:] else "is",
                           selection.note)
        training.eval_strategy, training.load_best_model_at_end = IntervalStrategy.NO, False
    elif evaluate:
        set_best_metric(training, passed, selection)
        if resume is not None:
            check_resumed_selection(resume, training)
    if warning := small_selection_warning(selection):
        logger.warning(warning)
    return kind, selection


def set_best_metric(training, passed: dict[str, str | None], selection: CheckpointSelection) -> None:
    """Make the selection's metric (``eval_selection_map`` or ``loss``) pick the best checkpoint,
    unless the user passed --metric_for_best_model (InputError where theirs needs ranked queries
    the selection has none of, or is no metric its evaluations report); higher is better for
    everything but a loss."""
    if "metric_for_best_model" not in passed:
        training.metric_for_best_model = selection.metric
    elif "selection_" in training.metric_for_best_model and not selection.queries:
        raise InputError(f"--metric_for_best_model {training.metric_for_best_model} needs gold-labelled candidate "
                         f"lists to rank, and there are none: {selection.note}")
    # (the Trainer would stop at the first evaluation with a KeyError, the steps before it lost)
    elif training.metric_for_best_model.removeprefix("eval_") not in (reported := selection.evaluated_metrics()):
        raise InputError(f"--metric_for_best_model {training.metric_for_best_model} is not among the metrics the "
                         f"evaluations report here: {', '.join(f'eval_{name}' for name in reported)} (best checkpoint "
                         f"{selection.note})")
    if "greater_is_better" not in passed:
        training.greater_is_better = not training.metric_for_best_model.endswith("loss")
    # the note the log and training_summary.json give says what picks the final model, where the flags changed it
    if not training.load_best_model_at_end:
        why = "" if "load_best_model_at_end" in passed else ", as the eval and save schedules differ"
        selection.note = (f"none (--load_best_model_at_end false{why}): the last step is final; evaluations "
                          f"{selection.note} are logged")
    elif "metric_for_best_model" in passed and (training.metric_for_best_model.removeprefix("eval_")
                                               != selection.metric.removeprefix("eval_")):
        selection.note = f"by {training.metric_for_best_model} (--metric_for_best_model); evaluations {selection.note}"


def check_training_flags(script, training) -> None:
    """InputError for train.py flags (``script``: its ScriptArguments; ``training``: the training
    arguments) below their minimums or at odds with each other, before anything is read."""
    check_minimums(script, max_length=1, pairs_per_forward=0, early_stopping_patience=0, eval_max_queries=0)
    # (each failed with a traceback only as training started, after --overwrite_output_dir had cleared the folder)
    check_minimums(training, per_device_train_batch_size=1, per_device_eval_batch_size=1, gradient_accumulation_steps=1,
                   dataloader_num_workers=0)
    # argparse's float() takes "nan" and "inf": the optimizer or scheduler failed on them with a traceback,
    # --max_grad_norm nan turned clipping off, --weight_decay inf trained NaN weights, and args.json got
    # NaN or Infinity, which is no JSON
    for arguments in (script, training):
        check_finite(arguments, shown={"warmup_steps": "--warmup_steps (or --warmup_ratio)"})
    # transformers reads max_steps <= 0 as unset, except 0 itself, which crashed its logging schedule;
    # no epochs with no steps saved the untouched student as if it were trained
    if training.max_steps == 0:
        raise InputError("--max_steps 0 trains no step; pass a positive number of steps, or leave it out to train for "
                         "--num_train_epochs")
    if training.max_steps < 0 and not training.num_train_epochs > 0:
        raise InputError(f"--num_train_epochs {training.num_train_epochs:g} trains no step; pass a positive number of "
                         "epochs (or --max_steps N)")
    # (the Trainer creates the hub repository as it is built, after the data and the model are loaded)
    if training.push_to_hub and constants.HF_HUB_OFFLINE:
        raise InputError("--push_to_hub needs the hub, and HF_HUB_OFFLINE is set: unset it, or drop --push_to_hub "
                         "and upload the final model in --output_dir later")
    # (the Trainer stopped with a traceback as it was built, after the data and the model were loaded)
    trackers = set(training.report_to) - {"none", "all"}
    if unknown := sorted(trackers - INTEGRATION_TO_CALLBACK.keys()):
        raise InputError(f"--report_to {', '.join(unknown)}: no such tracker; one of {', '.join(INTEGRATION_TO_CALLBACK)}"
                         ", all (every one installed) or none")
    if missing := sorted(trackers - set(get_available_reporting_integrations())):
        raise InputError(f"--report_to {', '.join(missing)}: not installed (pip install the tracker's package), or "
                         "pass --report_to none")
    if script.early_stopping_patience > 0 and training.eval_strategy == "no":
        raise InputError("--early_stopping_patience needs evaluations to compare; drop --eval_strategy no")
    if script.early_stopping_patience > 0 and script.selection_metric == "last":
        raise InputError("--early_stopping_patience needs evaluations to compare; --selection_metric last has none")
    if script.selection_metric in ("map", "loss") and training.eval_strategy == "no":
        raise InputError(f"--selection_metric {script.selection_metric} picks a checkpoint by evaluations, and "
                         "--eval_strategy no runs none: drop one of them")
    if script.selection_metric in ("map", "loss") and training.save_strategy == "no":  # (it held queries out, and
        # evaluated them, for a final model that was the last step all the same)
        raise InputError(f"--selection_metric {script.selection_metric} picks the best of the checkpoints, and "
                         "--save_strategy no saves none: drop one of them (--selection_metric last trains on every "
                         "query and keeps the last step)")
    # a setting the loss does not read: a warning, not a refusal (a TEACHER_TEMPERATURE set for train.sh is passed
    # whatever the loss)
    if script.teacher_temperature != 1 and not LOSSES[script.loss].reads_teacher:
        logger.warning("--teacher_temperature %g does nothing here: --loss %s reads no teacher scores",
                       script.teacher_temperature, script.loss)
    passes = LOSSES[script.loss].pairs_per_example and (script.loss != "margin_mse" or script.fused_forward)
    if script.pairs_per_forward and not passes:
        logger.warning("--pairs_per_forward %d does nothing here: %s", script.pairs_per_forward,
                       "--no_fused_forward runs sentence-transformers' MarginMSELoss as is" if script.loss == "margin_mse"
                       else f"--loss {script.loss} scores one pair an example")
    if not script.fused_forward and script.loss != "margin_mse":
        logger.warning("--no_fused_forward does nothing here: only --loss margin_mse has a fused forward pass")
    if training.train_sampling_strategy != "random":  # (transformers' own; sentence-transformers never reads it)
        logger.warning("--train_sampling_strategy %s does nothing here: sentence-transformers batches with its own "
                       "sampler, chosen by --batch_grouping (or --batch_sampler)", training.train_sampling_strategy)
