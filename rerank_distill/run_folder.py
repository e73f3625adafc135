"""A training run's --output_dir: one run at a time in it, what an earlier run left there
(checkpoints, final model, args.json), and resuming from its checkpoints with the same settings."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerState

from rerank_distill.cli import read_run_args, run_made_by, to_jsonable
from rerank_distill.errors import InputError
from rerank_distill.formats import check_outside_data_set_folders, local_files
from rerank_distill.jsonl import check_writable, is_unfinished_write, no_empty_folders_left, only_writer
from rerank_distill.trainer import TimeBudget, saved_early_stopping

logger = logging.getLogger(__name__)


def state_saved(checkpoint: str | Path) -> bool:
    """Whether a checkpoint folder's trainer_state.json is whole. The Trainer writes it last, and in
    place, so a run stopped while saving leaves it missing, empty or cut short."""
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and isinstance(state.get("global_step"), int)


def newest_checkpoint(output_dir: str, set_aside_incomplete: bool = False) -> str | None:
    """The newest complete checkpoint-* folder in ``output_dir`` (one whose trainer_state.json,
    which the Trainer writes last, is whole: a run stopped while saving leaves a newer folder
    without it, or with it cut short), or None when there is none (yet). ``set_aside_incomplete``
    renames such a folder to ``incomplete-checkpoint-N`` (on the main process), as the Trainer
    would otherwise keep it as the newest checkpoint and delete the resumed run's own in its place
    (save_total_limit)."""
    steps = {p: p.name.removeprefix("checkpoint-") for p in Path(output_dir).glob("checkpoint-*") if p.is_dir()}
    folders = [folder for folder, step in steps.items() if step.isdigit()]
    for folder in sorted(folders, key=lambda folder: int(steps[folder]), reverse=True):
        if state_saved(folder):
            return str(folder)
        if set_aside_incomplete and is_main_process():
            aside = folder.with_name(f"incomplete-{folder.name}")
            if aside.exists():  # set aside once already, by a run stopped while saving the same step
                shutil.rmtree(aside)
            folder.rename(aside)
            logger.warning("%s is incomplete (the run stopped while saving it): set aside as incomplete-%s",
                           folder, folder.name)
        else:
            logger.warning("%s is incomplete (the run stopped while saving it); it is passed over", folder)
    return None


def earlier_checkpoints(output_dir: str) -> list[Path]:
    """The checkpoint folders a run left in ``output_dir`` (``incomplete-checkpoint-N`` included)."""
    folders = [p for p in Path(output_dir).glob("*checkpoint-*")
               if p.is_dir() and re.fullmatch(r"(incomplete-)?checkpoint-\d+", p.name)]  # fmt: skip
    return sorted(folders, key=lambda p: (p.name.startswith("incomplete"), len(p.name), p.name))  # 9 before 10


SUMMARY_FILE = "training_summary.json"  # written last, once the final model is saved: the run ended
# What makes a folder load as a model (with the summary, what a fresh run clears away)
FINAL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors", "pytorch_model.bin")


def earlier_final_model(output_dir: str) -> list[Path]:
    """The files of a final model an earlier run saved in ``output_dir``: its weights and summary."""
    folder = Path(output_dir)
    return sorted(p for pattern in (SUMMARY_FILE, *FINAL_WEIGHTS) for p in folder.glob(pattern) if p.is_file())


# Held in --output_dir while a run writes there (claim_output_dir)
TRAIN_LOCK = "train.lock"


@contextmanager
def claim_output_dir(output_dir: str, model_path: str, data_sources: list[str] = ()) -> Iterator[None]:
    """Check --output_dir (check_output_dir), then, on the process that writes files, hold its
    train.lock for the block: a second run into the same folder stops at once instead of mixing
    its checkpoints, args.json and model with the first's. A run refused before it wrote anything
    leaves no folder behind."""
    check_output_dir(output_dir, model_path, data_sources)
    if not is_main_process():
        yield
        return
    with no_empty_folders_left(output_dir), only_writer(Path(output_dir), Path(output_dir) / TRAIN_LOCK, hint=(
            " (a run killed a moment ago keeps its lock until its data-loader workers exit, a few seconds)")):
        yield


def prepare_resume(script, training) -> tuple[str | None, TrainerState | None, dict[str, str | None]]:
    """Where train.py's run starts: the checkpoint it resumes from and that checkpoint's state
    (None, None for a fresh start; see resolve_checkpoint and resumed_state), and the digests of
    its data files (--train_data, --selection_data, --eval_data) where they are compared with the
    resumed run's (check_resume_settings, by the args.json beside the checkpoint) or recorded."""
    resume = resolve_checkpoint(training.resume_from_checkpoint, training.output_dir, script.overwrite_output_dir)
    resumed = resumed_state(resume, training, script.max_train_seconds, script.early_stopping_patience)
    digests = {}
    if resume is not None or training.should_save:  # (every torchrun process would read the whole files)
        by_source: dict[str, str | None] = {}  # a file given for two flags (training and selection) is read once
        for flag in ("train_data", "selection_data", "eval_data"):
            if source := getattr(script, flag):
                if source not in by_source:
                    by_source[source] = data_digest(source)
                digests[f"{flag}_digest"] = by_source[source]
    if resume is not None:
        check_resume_settings(str(Path(resume).parent), script, training, digests)
    return resume, resumed, digests


def check_output_dir(output_dir: str, model_path: str, data_sources: list[str] = ()) -> None:
    """InputError where ``output_dir`` cannot be written, holds the student's own folder (training
    would overwrite the model it starts from, or --overwrite_output_dir delete it) or lies inside
    the folder of a ``DIR:SPLIT`` data set among ``data_sources`` (check_outside_data_set_folders)."""
    check_writable(output_dir, "--output_dir", folder=True)
    check_outside_data_set_folders(output_dir, [source for source in data_sources if source], "--output_dir")
    if Path(model_path).exists() and Path(model_path).resolve().is_relative_to(Path(output_dir).resolve()):
        raise InputError(f"--model_name_or_path {model_path} is in --output_dir {output_dir}: training would overwrite "
                         "or delete the model it starts from; choose another --output_dir (or, to continue a run from "
                         "its checkpoint, --resume_from_checkpoint)")


def resolve_checkpoint(value: str | None, output_dir: str, overwrite: bool = False) -> str | None:
    """--resume_from_checkpoint: a checkpoint folder, or 'last'/'true' for the newest in output_dir.

    A fresh run (``value`` None) must not share output_dir with an earlier run's checkpoints: the
    Trainer would rotate its own away in their place, and "resume from the newest" would pick one
    of theirs; nor with its final model, which would pass for this run's until this one ends. So
    they stop it (InputError), unless ``overwrite`` (--overwrite_output_dir: the caller deletes
    them with clear_earlier_outputs once its input has passed its checks). Nor may a checkpoint of
    another folder continue into one: there, output_dir must be one a fresh run could take."""
    if value is not None and overwrite:
        raise InputError("--overwrite_output_dir starts over and --resume_from_checkpoint continues: pass one of them")
    if value is None:  # a fresh run; --overwrite_output_dir deletes what an earlier one left
        if not overwrite:
            refuse_earlier_run(output_dir)
        refuse_foreign_files(output_dir)
        return None
    if value.lower() in ("last", "true"):
        last = newest_checkpoint(output_dir, set_aside_incomplete=True)
        if last is None:
            if aside := [p.name for p in earlier_checkpoints(output_dir) if p.name.startswith("incomplete-")]:
                raise InputError(f"--resume_from_checkpoint {value}: no complete checkpoint-* folder in {output_dir}, "
                                 f"only {', '.join(aside)} (the run stopped while saving it, set aside): there is "
                                 "nothing to resume, start again with --overwrite_output_dir")
            raise InputError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {output_dir}")
        return last
    if not (Path(value) / "trainer_state.json").is_file():
        raise InputError(f"--resume_from_checkpoint {value}: not a checkpoint folder (no trainer_state.json)")
    if not state_saved(value):
        raise InputError(f"--resume_from_checkpoint {value}: its trainer_state.json is cut short (the run stopped while "
                         "saving it): pass 'last' to set it aside and resume from the newest whole one")
    if Path(value).resolve().parent != Path(output_dir).resolve():  # continued into another folder: as a fresh run's
        refuse_earlier_run(output_dir)
        refuse_foreign_files(output_dir)
    return value


def refuse_foreign_files(output_dir: str) -> None:
    """InputError where ``output_dir`` holds files and no train.py run made it (it has no args.json
    of one): a fresh run would overwrite them with its own (config.json, README.md, args.json, ...),
    and --overwrite_output_dir deletes only what a run left."""
    folder = Path(output_dir)
    if not folder.is_dir() or run_made_by(folder / "args.json") == "train.py":
        return
    runs = {TRAIN_LOCK, *(path.name for path in (*earlier_checkpoints(output_dir), *earlier_final_model(output_dir)))}
    # (another torchrun process's file being written, args.json's say, is not yet the run's by name)
    entries = sorted(path.name for path in folder.iterdir() if path.name not in runs and not is_unfinished_write(path.name))
    if not entries:  # (what a run left without its args.json, refuse_earlier_run speaks of)
        return
    raise InputError(f"{output_dir} holds files that are not a training run's ({', '.join(entries[:4])}"
                     f"{', ...' if len(entries) > 4 else ''}), which the run would overwrite with its model and "
                     "records: choose a new or empty --output_dir")


def refuse_earlier_run(output_dir: str) -> None:
    """InputError where ``output_dir`` holds an earlier run's checkpoints or final model (see
    resolve_checkpoint), saying what to do: resume it, or where it ended, raise its limits first."""
    earlier = earlier_checkpoints(output_dir)
    if not earlier:
        if earlier_final_model(output_dir):
            raise InputError(f"{output_dir} holds the final model of an earlier run: start over with "
                             "--overwrite_output_dir (deletes it) or choose another --output_dir")
        return
    names = f"{', '.join(p.name for p in earlier[:3])}{', ...' if len(earlier) > 3 else ''}"
    last = newest_checkpoint(output_dir)
    if last is None:  # only folders a stop while saving left unfinished: nothing to resume from
        raise InputError(f"{output_dir} holds only unfinished checkpoints of an earlier run ({names}), nothing to "
                         "resume from: start over with --overwrite_output_dir (deletes them) or choose another "
                         "--output_dir")
    state = TrainerState.load_from_json(str(Path(last) / "trainer_state.json"))
    refuse_resuming_before_the_end(output_dir, state)
    budget, stopping = TimeBudget.saved(state), saved_early_stopping(state)
    seconds = budget["args"]["seconds"] if budget else None
    patience = stopping["args"]["early_stopping_patience"] if stopping else 0
    # ended as it was planned? (its own limits: not necessarily flags that run was given)
    if end_reached(state, state.max_steps, state.num_train_epochs, seconds, patience):
        if not final_model_saved(output_dir, state):  # stopped while saving it
            raise InputError(
                f"{output_dir} holds checkpoints of an earlier run, which ended ({names}; at step {state.global_step} "
                f"of {state.max_steps}) but was stopped before its final model was saved: pass --resume_from_checkpoint "
                "last to save it, or start over with --overwrite_output_dir (deletes them)")
        raise InputError(
            f"{output_dir} holds checkpoints of an earlier run, which ended ({names}; at step {state.global_step} of "
            f"{state.max_steps}): start over with --overwrite_output_dir (deletes them) or choose another "
            "--output_dir; to train it further, raise --max_steps, --num_train_epochs, --max_train_seconds or "
            "--early_stopping_patience (whichever ended it) and "
            "pass --resume_from_checkpoint last"
        )
    if weights_only(last):
        raise InputError(f"{output_dir} holds checkpoints of an earlier run ({names}); the newest, {cannot_go_on(last)}")
    raise InputError(
        f"{output_dir} holds checkpoints of an earlier run ({names}): continue it with --resume_from_checkpoint "
        "last, start over with --overwrite_output_dir (deletes them), or choose another --output_dir"
    )


def final_model_step(output_dir: str) -> int | None:
    """The step at which the run in ``output_dir`` ended and saved its final model (its
    training_summary.json, written last), or None where it has saved none."""
    summary = Path(output_dir) / SUMMARY_FILE
    return json.loads(summary.read_text(encoding="utf-8")).get("steps", 0) if summary.exists() else None


def final_model_saved(output_dir: str, state: TrainerState) -> bool:
    """Whether the run in ``output_dir`` saved its final model after the checkpoint of ``state``."""
    step = final_model_step(output_dir)
    return step is not None and step >= state.global_step


def refuse_resuming_before_the_end(output_dir: str, state: TrainerState) -> None:
    """InputError where the run in ``output_dir`` ended and saved its final model past the step of
    the checkpoint of ``state``: its newer checkpoints are gone (transformers deletes all but the best
    once a run with --save_total_limit 1 ends; --save_strategy best saves none where it stops), so
    resuming would train again the steps behind the final model, and replace it."""
    step = final_model_step(output_dir)
    if step is not None and step > state.global_step:
        raise InputError(
            f"the run in {output_dir} ended at step {step} and saved its final model, but its checkpoints reach "
            f"only step {state.global_step} (it kept no later one): there is nothing to continue; start over with "
            "--overwrite_output_dir (deletes them) or choose another --output_dir"
        )


def end_reached(state: TrainerState, max_steps: int, num_train_epochs: float, max_train_seconds: float | None,
                early_stopping_patience: int = 0) -> str | None:
    """Which limit a run resumed from ``state`` with these limits has already reached, so it would
    have nothing left to train (the Trainer would take one more step anyway), or None."""
    stopping = saved_early_stopping(state)
    if stopping and early_stopping_patience > 0:
        evaluations = stopping["attributes"]["early_stopping_patience_counter"]
        if evaluations >= early_stopping_patience:
            return (f"{evaluations} evaluations without a better model by step {state.global_step}: "
                    f"--early_stopping_patience {early_stopping_patience} stops there")
    if max_steps > 0 and state.global_step >= max_steps:
        return f"step {state.global_step} of --max_steps {max_steps}"
    if max_steps <= 0 and 0 < state.max_steps <= state.global_step and (state.epoch or 0) >= num_train_epochs - 1e-9:
        return f"--num_train_epochs {num_train_epochs:g} done in {state.global_step} steps"
    budget = TimeBudget.saved(state)
    if budget and budget["attributes"].get("stopped_training") and max_train_seconds is not None:
        if max_train_seconds <= budget["args"]["seconds"]:
            return f"--max_train_seconds {budget['args']['seconds']:g} spent at step {state.global_step}"
    return None


def resumed_state(checkpoint: str | None, training, max_train_seconds: float | None,
                  early_stopping_patience: int = 0) -> TrainerState | None:
    """The TrainerState a run resumes from (None for a fresh run); InputError where the checkpoint
    already reached what this command asks for and the run it ended saved its final model (its
    training_summary.json): there is nothing left to do. (Where that final save was cut short,
    the resume makes it.)

    Logging, evaluation and save intervals given as shares of the run (train.py's 0.02 and 0.1)
    are set to the step counts the checkpoint resolved them to, where the run's length is the
    same: transformers takes the checkpoint's counts on a resume anyway, and compares the share
    with them to warn on every resume that the arguments changed. (Under --max_train_seconds only the
    logging interval: the budget reads evaluation and save shares as shares.)"""
    if checkpoint is None:
        return None
    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    if 0 < training.max_steps < state.global_step:
        raise InputError(f"{checkpoint} is at step {state.global_step}, past --max_steps {training.max_steps}: resume "
                         f"with --max_steps {state.max_steps} (its run's) or more")
    # (the Trainer ended such a run at once, 0 steps, and saved it as final)
    if training.max_steps <= 0 and (state.epoch or 0) > training.num_train_epochs + 1e-6:
        raise InputError(f"{checkpoint} is at epoch {state.epoch:.4g}, past --num_train_epochs "
                         f"{training.num_train_epochs:g}: resume with --num_train_epochs {state.num_train_epochs:g} "
                         "(its run's) or more")
    refuse_resuming_before_the_end(training.output_dir, state)
    ended = end_reached(state, training.max_steps, training.num_train_epochs, max_train_seconds,
                        early_stopping_patience)
    if ended and final_model_saved(training.output_dir, state):
        raise InputError(
            f"{checkpoint} already reached the end this command asks for ({ended}), and its final model is saved: "
            "to train further raise that limit; to start over pass --overwrite_output_dir instead of "
            "--resume_from_checkpoint"
        )
    # the Trainer resumes from weights alone with a fresh optimizer and its schedule from step 0, saying nothing
    if not ended and weights_only(checkpoint):
        raise InputError(cannot_go_on(checkpoint))
    if training.max_steps in (-1, 0, state.max_steps):
        # (under a time budget, evaluations and checkpoints given as shares stay shares: TimeBudget makes
        # them due by the time spent too, which it reads from the share)
        names = ("logging_steps",) if max_train_seconds is not None else ("logging_steps", "eval_steps", "save_steps")
        for name in names:
            share, steps = getattr(training, name), getattr(state, name)
            if share is not None and 0 < share < 1 and steps == math.ceil(share * state.max_steps):
                setattr(training, name, steps)
    return state


# What a resumed run may change: the time limit, early stopping, and flags of speed, hub access and
# overwriting. Every other flag of train.py's own must match the run it continues (its data, model, loss
# and their settings: a flag added later must match too, unless listed here); of Hugging Face's training
# flags, those of the optimisation and of what a step's batch holds must (a resumed epoch skips the batches
# already trained by count: with batches made otherwise it would skip other examples).
RESUME_MAY_CHANGE = ("max_train_seconds", "early_stopping_patience", "fused_forward", "pairs_per_forward",
                     "overwrite_output_dir", "hub", "cache_dir")
RESUME_MUST_MATCH_TRAINING = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                              "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "weight_decay", "seed",
                              "optim", "optim_args", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                              "data_seed", "dataloader_drop_last",
                              # sentence-transformers': what a batch holds, what each text begins with, and each
                              # module's learning rate (another number of parameter groups failed with a traceback)
                              "batch_sampler", "prompts", "learning_rate_mapping")


# The train.py settings that name a model or data on disk: compared by what they name
PATH_SETTINGS = ("model_name_or_path", "train_data", "selection_data", "eval_data")


def path_identity(value: str | None) -> str | None:
    """One name for what a path setting names however it is spelled (``./m``, ``m``, a link to it):
    a local file's or folder's real path (a folder's ``:SPLIT`` kept); a hub id or None as it is."""
    if not value or os.path.exists(value):
        return os.path.realpath(value) if value else value
    folder, colon, split = value.rpartition(":")
    return os.path.realpath(folder) + colon + split if colon and os.path.isdir(folder) else value


def data_digest(source: str) -> str | None:
    """A digest of the bytes of a data source's local files (None for a hub data set)."""
    files = local_files(source)
    if not files:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        with open(path, "rb") as data:
            for block in iter(lambda: data.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_resume_settings(run_dir: str, script, training, data_digests: dict[str, str | None]) -> None:
    """InputError where a resumed run differs from the run it continues (its args.json in
    ``run_dir``, the folder of the checkpoint) in a setting that must match (see RESUME_MAY_CHANGE),
    the content of a data file (``data_digests``: prepare_resume's) or the number of processes: the
    model would be half one run, half another (a query held out by one trained by the other), and
    args.json would describe only the second."""
    recorded = read_run_args(Path(run_dir) / "args.json")
    if recorded is None:  # (a checkpoint copied out of its run's folder, say)
        logger.warning("%s holds no args.json of the run its checkpoint comes from: this command's settings cannot be "
                       "compared with that run's; resume with the flags it was trained with", run_dir)
        return
    current = {"script": to_jsonable(script), "training": to_jsonable(training)}
    # paths by what they name where the record has it (a run's own folder and files, spelled another way or
    # from another working directory, are the same run's)
    named = recorded.get("resolved", {}).get("paths", {})
    current["script"].update({key: path_identity(current["script"].get(key)) for key in named})
    recorded = {**recorded, "script": {**recorded.get("script", {}), **named}}
    must_match = {"script": [key for key in current["script"] if key not in RESUME_MAY_CHANGE],
                  "training": RESUME_MUST_MATCH_TRAINING}
    differs = [f"--{key}" for section, keys in must_match.items() for key in keys
               if key in recorded.get(section, {}) and recorded[section][key] != current[section][key]]
    for key, digest in data_digests.items():
        flag = f"--{key.removesuffix('_digest')}"
        was = recorded.get("data", {}).get(key)
        if was and digest and was != digest and flag not in differs:
            differs.append(f"the content of {flag}")
    processes = recorded.get("resolved", {}).get("processes", training.world_size)  # (not in older records)
    if processes != training.world_size:  # a step's examples are per process: the batch would change
        differs.append(f"the number of processes ({processes}, now {training.world_size}: torchrun's --nproc_per_node)")
    refuse_differing(run_dir, differs)


def check_resumed_selection(checkpoint: str, training) -> None:
    """InputError where a resumed run would pick its best checkpoint by another metric, or the other
    way round, than the run it continues (its args.json beside ``checkpoint``), once train.py has
    set them (set_best_metric): the best metric the checkpoint kept would be compared with the
    other one's values."""
    record = read_run_args(Path(checkpoint).parent / "args.json")
    if record is None:
        return
    recorded = record.get("training", {})
    refuse_differing(str(Path(checkpoint).parent),
                     [f"--{key}" for key in ("metric_for_best_model", "greater_is_better")
                      if key in recorded and recorded[key] != getattr(training, key)])


def held_out_record(held_out: list[str]) -> dict:
    """What args.json keeps of the training queries held out for checkpoint selection: their number
    and a digest of their texts (in any order), for check_resumed_hold_out."""
    digest = hashlib.blake2b(digest_size=16)
    for query in sorted(held_out):
        digest.update(query.encode() + b"\0")
    return {"count": len(held_out), "digest": digest.hexdigest()}


def check_resumed_hold_out(checkpoint: str, held_out: list[str]) -> None:
    """InputError where a resumed run would hold out other training queries (``held_out``) than the
    run it continues (its args.json beside ``checkpoint``): evaluation turned off (--eval_strategy no,
    --save_strategy no) or on (evaluation flags, early stopping) changes them where the data and
    --eval_share do not, and the model would train on queries the other half held out and ranked."""
    record = read_run_args(Path(checkpoint).parent / "args.json")
    recorded = (record or {}).get("resolved", {}).get("held_out_queries")  # (not in older records)
    if recorded is None or recorded["digest"] == held_out_record(held_out)["digest"]:
        return
    refuse_differing(str(Path(checkpoint).parent), [
        f"the training queries held out for checkpoint selection ({recorded['count']} then, {len(held_out)} now: "
        "evaluation flags, --save_strategy and --early_stopping_patience decide whether any are)"])


def refuse_differing(run_dir: str, differs: list[str]) -> None:
    """InputError naming the settings (``differs``) in which a resumed run differs from the run in ``run_dir``."""
    if differs:
        raise InputError(
            f"{run_dir} holds a run made with other settings (differing: {', '.join(differs)}; see its args.json): "
            "resume it with the same ones, or start over with --overwrite_output_dir"
        )


def clear_earlier_outputs(output_dir: str, fresh: bool) -> None:
    """Before a run trains (on the main process): a fresh one (--overwrite_output_dir) deletes the
    checkpoints and final model an earlier run left; a resumed one its training_summary.json, which
    says the folder's final model is the run's last word (written again when this run ends)."""
    if not is_main_process():
        return
    if not fresh:
        (Path(output_dir) / SUMMARY_FILE).unlink(missing_ok=True)
        return
    checkpoints, final_model = earlier_checkpoints(output_dir), earlier_final_model(output_dir)
    for folder in checkpoints:
        shutil.rmtree(folder)
    for file in final_model:
        file.unlink()
    if checkpoints or final_model:
        logger.info("--overwrite_output_dir: deleted %d checkpoints%s of an earlier run in %s", len(checkpoints),
                    " and its final model" if final_model else "", output_dir)


def is_main_process() -> bool:
    """Whether this is torchrun's rank 0 (or no torchrun at all): the one process that changes files."""
    return os.environ.get("RANK", "0") == "0"


def weights_only(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` was saved with --save_only_model: no optimizer, schedule or random state
    to go on from (the random state, saved with every full checkpoint, tells them apart)."""
    return not any(Path(checkpoint).glob("rng_state*.pth"))


def cannot_go_on(checkpoint: str | Path) -> str:
    """Why a run cannot continue from a weights_only ``checkpoint``, and what to do instead."""
    return (f"{checkpoint} was saved with --save_only_model: it holds the weights but no optimizer, learning-rate "
            "schedule or random state, so the run cannot go on as it was; start over with --overwrite_output_dir, or "
            f"train from its weights as a new run (--model_name_or_path {checkpoint}, another --output_dir)")


def resume_hint(output_dir: str, ended_at: int | None = None) -> str:
    """What to do after an interrupted training run: resume from its newest checkpoint, or start
    over when none was saved yet or it holds weights only. ``ended_at``: the step training had ended
    at where the run was stopped after it, while it saved its final model (None: while it trained)."""
    last = newest_checkpoint(output_dir)
    if last is None:  # (a rerun of the same command would stop at what the run left half saved: refuse_earlier_run)
        if unfinished := [p.name for p in earlier_checkpoints(output_dir)]:
            return (f"interrupted before a checkpoint was saved whole in {output_dir} ({', '.join(unfinished[:3])} "
                    "left unfinished, nothing to resume from); run the same command with --overwrite_output_dir to "
                    "start again")
        if ended_at is not None and earlier_final_model(output_dir):
            return (f"interrupted while saving the final model, with no checkpoint in {output_dir} to save it from; "
                    "run the same command with --overwrite_output_dir to train again")
        return f"interrupted before the first checkpoint was saved in {output_dir}; run the same command to start again"
    if ended_at is not None and Path(last).name == f"checkpoint-{ended_at}":  # (a weights-only one serves too)
        return (f"interrupted while saving the final model: the newest checkpoint, {last}, is where training ended; "
                "run the same command with --resume_from_checkpoint last (and without --overwrite_output_dir) to save "
                "the final model from it")
    if weights_only(last):
        return f"interrupted: the newest checkpoint, {cannot_go_on(last)}"
    return (f"interrupted: the newest checkpoint is {last}; run the same command with "
            "--resume_from_checkpoint last (and without --overwrite_output_dir) to continue from it")
