"""Stage 3: train the student cross-encoder on the teacher's scores (or on gold labels).

--loss picks what the one-logit student learns, and so which file --train_data is:
  margin_mse   triplets or n-tuples (create_triplets.py): margins s(q,pos) - s(q,neg) match the teacher's
  mse          stage 1's scores file: the logit s(q,p) matches the teacher's score
  bce_soft     stage 1's scores file: sigmoid(s(q,p)) matches sigmoid(teacher score / T)
  listwise_kl  listwise groups (create_triplets.py --format listwise): softmax over a query's list matches the teacher's
  bce_labels   labelled ranking data (MTEB, pos/neg, graded rows) or a scores file's gold labels; no teacher
  infonce      triplets or n-tuples: the positive wins the softmax over its group; no teacher scores
--teacher_temperature T divides teacher scores and margins by T first. Every Hugging Face training flag
works (--learning_rate, --bf16, --resume_from_checkpoint last, ...). Unless you pass them, train.py
evaluates and saves 10 times per run, keeps 2 checkpoints and makes the best the final model: best by MAP
on held-out training queries with gold labels (--selection_data, or the training file's own labels), else
by eval loss; --early_stopping_patience N stops after N evaluations without a better one. Never the test set.
Where fewer than 30 training queries would be held out, MAP would pick checkpoints by chance: every query
trains and the last step is final (--selection_metric picks otherwise; a labelled dev file of its own as
--selection_data is used whatever its size).
--max_train_seconds S stops after S seconds, with the learning-rate schedule and the evaluations fitted to them.
--output_dir gets the final model, its checkpoints, args.json and training_summary.json (what the run did).
Several GPUs: torchrun --nproc_per_node N train.py ...; a large student: accelerate launch with
configs/accelerate_fsdp.yaml, or --deepspeed configs/deepspeed_zero2.json.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rerank_distill.cli import command_line, interruption_behind, run_main, write_json, write_run_args
from rerank_distill.formats import INPUT_FORMATS
from rerank_distill.losses import LOSSES, build_loss
from rerank_distill.replicas import stop_with_launcher
from rerank_distill.run_folder import (
    PATH_SETTINGS,
    SUMMARY_FILE,
    claim_output_dir,
    clear_earlier_outputs,
    end_reached,
    held_out_record,
    path_identity,
    prepare_resume,
    resume_hint,
)
from rerank_distill.selection import (
    DEFAULT_EVAL_MAX_QUERIES,
    DEFAULT_EVAL_SHARE,
    MIN_SELECTION_QUERIES,
    SelectionEvaluator,
)
from rerank_distill.student import load_student
from rerank_distill.samplers import set_batch_sampler
from rerank_distill.trainer import (
    DistillationTrainer,
    EarlyStopping,
    TimeBudget,
    check_weights_finite,
    end_process_group,
    run_summary,
    summary_message,
    track_padding,
)
from rerank_distill.training import check_training_flags, load_data_and_selection, parse_training_args

logger = logging.getLogger("train")


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(
        metadata={"help": "Student model: a local folder or a hub id, e.g. BAAI/bge-reranker-v2-m3."}
    )
    train_data: str = field(metadata={"help": "Training data of the kind --loss trains on: JSONL (.gz), Parquet, a "
                                      "data-set folder DIR:SPLIT or a hub data set NAME[@REVISION]:SPLIT (so are "
                                      "--eval_data and --selection_data)."})
    loss: Literal[tuple(LOSSES)] = field(
        default="margin_mse",
        metadata={"help": "What the student learns: " + "; ".join(f"{name}: {spec.optimises}"
                                                                 for name, spec in LOSSES.items()) + "."},
    )
    teacher_temperature: float = field(
        default=1.0,
        metadata={"aliases": ["--temperature"],
                  "help": "Divide teacher scores (logits) and margins by this before the loss: above 1 softens "
                  "the targets, e.g. for a teacher far more confident than the student can be."},
    )
    input_format: Literal[tuple(INPUT_FORMATS)] = field(
        default="auto",
        metadata={"help": "Format of --train_data (and --eval_data) when it is ranking data (teacher scores or "
                  f"labelled lists for pointwise losses and bce_labels): {', '.join(INPUT_FORMATS)}; auto tells it, "
                  "and the kind of any other training file, from the fields."},
    )
    label_column: str | None = field(
        default=None,
        metadata={"help": "The grade column of labelled row-per-pair data (--train_data, --eval_data, "
                  "--selection_data); unset: esci_label, label, grade or relevance."},
    )
    selection_data: str | None = field(
        default=None,
        metadata={"help": "Candidate lists with gold labels to pick the best checkpoint by MAP: stage 1's scores "
                  "file of the training data (--eval_share of the queries it shares with training are held out "
                  "and never trained on) or a labelled dev file with queries of its own (all ranked; of several "
                  "it shares with training, --eval_share is held out too)."},
    )
    selection_metric: Literal["auto", "map", "loss", "last"] = field(
        default="auto",
        metadata={"help": "What picks the final model: map (the best checkpoint by held-out MAP), loss (by held-out "
                  "eval loss), last (no hold-out: every query trains, the last step is final) or auto: map when gold "
                  f"labels are at hand for at least {MIN_SELECTION_QUERIES} held-out queries (or a dev set of its "
                  "own), last when fewer (map still where evaluations are asked for: --eval_data, "
                  "--early_stopping_patience, --eval_share, --eval_steps, ...), loss without labels."},
    )
    max_train_seconds: float | None = field(
        default=None,
        metadata={"help": "Stop training after this many seconds of wall time (evaluations and checkpoints count), "
                  "with a last evaluation and checkpoint; the learning-rate schedule, and evaluations and "
                  "checkpoints set as shares of the run (the default tenth), follow whichever runs out first, these "
                  "seconds or the planned steps, so the rate still decays (to near its end where the budget holds "
                  "many steps). Unset: no limit."},
    )
    early_stopping_patience: int = field(
        default=0, metadata={"help": "Stop after this many evaluations without a better checkpoint (a resumed run "
                                     "carries on the count; resume with a larger one to train on, without "
                                     "--restore_callback_states_from_checkpoint, which restores the old one); 0: "
                                     "never."}
    )
    eval_data: str | None = field(
        default=None,
        metadata={"help": "Training-kind data for the eval loss (a dev split, never the test set); labelled "
                  "(scores with labels, or labelled lists) and without --selection_data, it also picks the best "
                  "checkpoint by MAP, as a dev set of its own. Empty: the held-out training queries' own rows."},
    )
    eval_share: float = field(
        default=DEFAULT_EVAL_SHARE,
        metadata={"help": "Share of the training queries held out for checkpoint selection (at least one query; all "
                  "its rows leave training): by MAP, of those the selection data labels with a positive and a "
                  "negative (the ones MAP can rank); by eval loss, of all distinct training queries."},
    )
    eval_max_queries: int = field(
        default=DEFAULT_EVAL_MAX_QUERIES,
        metadata={"help": "At most this many training queries are held out, whatever --eval_share says (0: no cap): "
                  "a thousand measure MAP to about +-0.007 (per-query AP spreads about 0.2 on SemEval), and more "
                  "would slow each evaluation and take queries from training."},
    )
    max_length: int = field(
        default=512, metadata={"help": "Tokens per (query, passage) pair; longer pairs are truncated."}
    )
    hub: Literal["huggingface", "modelscope"] = field(
        default="huggingface", metadata={"help": "Where hub ids of the model and data sets are fetched from."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Download cache for hub models and data sets."})
    fused_forward: bool = field(
        default=True,
        metadata={"help": "margin_mse: one forward pass over positive and negative pairs together (same loss, "
                  "faster). --no_fused_forward runs sentence-transformers' MarginMSELoss as is."},
    )
    pairs_per_forward: int = field(
        default=0,
        metadata={"help": "margin_mse (fused), listwise_kl, infonce: score a batch's (query, document) pairs in "
                  "forward passes of this many, sorted by length so each pads only to its own longest (same loss, "
                  "less padding: faster on CPUs, or where whole candidate lists mix short and long passages). "
                  "0: one forward pass per batch."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an --output_dir that holds an earlier run's checkpoints or final model, "
                  "deleting them before training (without it such a run stops, as it would mix the two runs' files)."},
    )
    batch_grouping: Literal["length", "query", "none"] = field(
        default="length",
        metadata={"help": "What each batch holds (ignored if you pass --batch_sampler): length: examples of "
                  "similar length (less padding); query: one query's examples together, so the documents its "
                  "triplets repeat are scored once a batch (margin_mse, infonce; about 2.7x fewer pairs with "
                  "create_triplets.py's --top_k 8 --num_negatives 4: 3.6x the original's speed on a CPU; in as many epochs a worse "
                  "student, in the same time, 1.85x the epochs, a better one, see bench/README.md); none: "
                  "sentence-transformers' random batches."},
    )


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    script, training, passed = parse_training_args(ScriptArguments, __doc__, argv)
    stop_with_launcher()  # a torchrun worker ends with torchrun, even one killed outright
    if not training.should_log:  # the other torchrun processes log warnings only
        logging.getLogger().setLevel(logging.WARNING)
    check_training_flags(script, training)
    data_sources = [script.train_data, script.selection_data, script.eval_data]
    with claim_output_dir(training.output_dir, script.model_name_or_path, data_sources):  # one run at a time there
        summary = train_student(script, training, passed, argv)
    end_process_group()
    return summary


def train_student(script, training, passed: dict, argv: list[str]) -> dict:
    """Train as ``main``'s arguments say, in the --output_dir it claimed; returns the run's summary."""
    set_batch_sampler(script.batch_grouping, training, passed)  # (before a resumed run's is compared)
    resume, resumed, digests = prepare_resume(script, training)
    budget = TimeBudget(script.max_train_seconds) if script.max_train_seconds is not None else None

    # Data first: a bad line fails in seconds, before any model download.
    kind, selection = load_data_and_selection(script, training, passed, resume)
    count = selection.counts()
    evaluated = ""
    if selection.eval is not None:
        evaluated = f"; eval loss on {count['eval_examples']} rows of {count['eval_queries']} queries"
    logger.info("--loss %s on %s: train %d rows of %d queries%s; best checkpoint %s", script.loss, kind,
                count["train_examples"], count["train_queries"], evaluated, selection.note)

    # where the Trainer will train it: each torchrun process's own GPU, or the CPU with --use_cpu
    # (sentence-transformers would pick cuda:LOCAL_RANK, which need not exist)
    model = load_student(script.model_name_or_path, script.hub, script.cache_dir, script.max_length, training.device,
                         training.seed)
    padding = track_padding(model)
    loss = build_loss(script.loss, model, script.fused_forward, script.pairs_per_forward)
    evaluator = SelectionEvaluator(selection.queries, training.per_device_eval_batch_size) if selection.queries else None
    callbacks = [EarlyStopping(script.early_stopping_patience, resumed)] if script.early_stopping_patience > 0 else []
    # the Trainer checks its flags as it is built (--push_to_hub), the optimizer's package and the schedule as
    # training starts (--optim, --lr_scheduler_type): all before an earlier run's files are deleted or its args.json
    # replaced
    trainer = DistillationTrainer(model=model, args=training, train_dataset=selection.train,
                                  eval_dataset=selection.eval, loss=loss, evaluator=evaluator, callbacks=callbacks,
                                  time_budget=budget, padding=padding)
    trainer.check_optimizer()
    trainer.check_scheduler()
    if resume is not None or script.overwrite_output_dir:  # only now, with the data, model and trainer checked
        clear_earlier_outputs(training.output_dir, fresh=resume is None)
    if training.should_save:
        write_run_args(Path(training.output_dir) / "args.json", command_line(__file__, argv), script=script,
                       training=training, data=digests,
                       resolved={"processes": training.world_size,
                                 "held_out_queries": held_out_record(selection.held_out),
                                 "paths": {key: path_identity(getattr(script, key)) for key in PATH_SETTINGS}})

    start_step = resumed.global_step if resumed else 0
    logger.info("training %s for %s", script.model_name_or_path,
                f"{training.max_steps} step{'s' * (training.max_steps != 1)}" if training.max_steps > 0
                else f"{training.num_train_epochs:g} epoch{'s' * (training.num_train_epochs != 1)}")
    started = time.perf_counter()
    if budget is not None:
        budget.start(resumed)
    # a run that ended at its checkpoint, its final save cut short, gets that save without a step more
    ended = resumed is not None and not trainer.sharded and end_reached(
        resumed, training.max_steps, training.num_train_epochs, script.max_train_seconds, script.early_stopping_patience)
    if ended:
        logger.info("%s is where the run ended (%s), but its final model was not saved: saving it", resume, ended)
    ended_at = None  # the step training ended at, once it has: an interruption then cut the final save short
    try:
        result = trainer.finish_ended_run(resume, resumed) if ended else trainer.train(resume_from_checkpoint=resume)
        ended_at = trainer.state.global_step
        seconds = time.perf_counter() - started
        check_weights_finite(trainer)
        trainer.save_model(training.output_dir)  # every process calls it; only the main one writes

        summary = {"loss": script.loss, "data_kind": kind,
                   **count,  # rows and queries of train and eval, the selection (MAP) queries and the held-out ones
                   "selection": selection.note,  # how the final model was to be picked, and why
                   **run_summary(trainer, result, seconds, start_step, script.early_stopping_patience > 0)}
        if training.should_save:
            write_json(Path(training.output_dir) / SUMMARY_FILE, summary)
    except BaseException as error:  # Ctrl-C, or under torchrun an error it left behind (see interruption_behind)
        if (stop := interruption_behind(error)) is None:
            raise
        if training.should_log:
            logger.warning(resume_hint(training.output_dir, ended_at))
        raise stop from None
    if training.should_save:
        with suppress(OSError):  # sentence-transformers' folder for its evaluators' files, which ours writes none of
            (Path(training.output_dir) / "eval").rmdir()
    logger.info(summary_message(summary, training.output_dir))
    return summary


if __name__ == "__main__":
    run_main(main)
